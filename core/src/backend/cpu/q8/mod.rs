//! `dst[m, n] = x[m, k] · W[n, k]ᵀ` for Q4_0, Q8_0, Q4_K and Q6_K weights on x86-64 with
//! AVX2, AVX-VNNI or AVX-512 VNNI: the CPU backend's product for these formats.
//!
//! Like llama.cpp, the activations are first quantized to int8 in blocks of 32 with one
//! f32 scale `dx` each (blocks.rs), so each block product is an exact integer dot product
//! that one f32 FMA scales. The weights are repacked at load eight rows at a time
//! (packed.rs has the why and the driver; one file per format has its layout and kernels):
//!   Q4_0 (q4_0x8.rs): w = d · (nibble − 8);
//!   Q8_0 (q8_0x8.rs): w = d · q;
//!   Q4_K (q4_kx8.rs): w = d · sc_j · nibble − dmin · m_j, per sub-block j of 32;
//!   Q6_K (q6_kx8.rs): w = d · sc_i · (six bits − 32), per 16 weights i.
//! Every offset (8, 128, 32) comes off in integers, so the integer part stays exact.
//!
//! Why not candle's `k_quants::matmul`: it calls one block-row `vec_dot` per (token, row),
//! so a prompt of m tokens unpacks every weight block m times and prefill runs no faster
//! than decode. Here a packed block is loaded once for a tile of up to eight tokens.

// x86-64 only (cpu/mod.rs): elsewhere the CPU backend uses candle's kernels.

mod block32;
mod blocks;
mod packed;
mod q4_0x8;
mod q4_kx8;
mod q6_kx8;
mod q8_0x8;

use crate::weights::WeightFormat;

/// Whether `format` is packed eight rows at a time at load (packed.rs) on this CPU: then
/// [`pack`] makes the copy, [`matmul`] multiplies by it.
pub fn packs(format: WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::Q4_0 | WeightFormat::Q8_0 | WeightFormat::Q4K | WeightFormat::Q6K
    ) && packed::supported()
}

/// Calls `$f::<the format's packing>($args)` for a format that [`packs`].
macro_rules! each_format {
    ($format:expr, $f:ident($($arg:expr),*)) => {
        match $format {
            WeightFormat::Q4_0 => packed::$f::<q4_0x8::Q4_0x8>($($arg),*),
            WeightFormat::Q8_0 => packed::$f::<q8_0x8::Q8_0x8>($($arg),*),
            WeightFormat::Q4K => packed::$f::<q4_kx8::Q4Kx8>($($arg),*),
            WeightFormat::Q6K => packed::$f::<q6_kx8::Q6Kx8>($($arg),*),
            f => unreachable!("{f:?} is not packed"),
        }
    };
}

/// The packed copy of n rows of k weights `w` in `format` (one that [`packs`]).
pub fn pack(format: WeightFormat, w: &[u8], n: usize, k: usize) -> Vec<u8> {
    each_format!(format, pack(w, n, k))
}

/// Row r of a matrix [`pack`] made, in the file's layout.
pub fn unpack_row(format: WeightFormat, w: &[u8], k: usize, r: usize) -> Vec<u8> {
    each_format!(format, unpack_row(w, k, r))
}

/// `dst[m, n] = x[m, k] · W[n, k]ᵀ` for W in `format`, packed by [`pack`].
pub fn matmul(
    mkn: (usize, usize, usize),
    format: WeightFormat,
    x: &[f32],
    w: &[u8],
    dst: &mut [f32],
) {
    each_format!(format, matmul(mkn, x, w, dst))
}
