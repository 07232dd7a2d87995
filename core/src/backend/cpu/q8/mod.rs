//! `dst[m, n] = x[m, k] · W[n, k]ᵀ` for Q4_0, Q8_0, Q4_K and Q6_K weights on x86-64 with
//! AVX2, AVX-VNNI or AVX-512 VNNI: the CPU backend's product for these formats. Q4_0 is
//! repacked at load and has its own kernel (q4_0x8.rs). Prompts of Q8_0 and Q4_K go
//! through the row-group kernel of group.rs; decode, Q6_K and the rows and tokens left
//! over take the per-row kernels of row.rs.
//!
//! Like llama.cpp, the activations are first quantized to int8 in blocks of 32 with one
//! f32 scale `dx` each, so each block product is an exact integer dot product. Every
//! weight format is read as blocks of 32 int8 values `q` with
//!   w = scale · lane · q − min
//! where `scale` and `min` are f32 per block of 32 (min is 0 except for Q4_0 and Q4_K), and `lane`
//! is an integer per 16 weights (1 except for Q6_K, whose scales are per 16). Then
//!   Σ_i w_i · x_i = scale · dx · Σ_i lane · q_i · qx_i  −  min · dx · Σ_i qx_i
//! Q4_0: q = nibble (16 bytes: element i in the low nibble of byte i, 16 + i in the high
//! one), scale = d, min = 8d. Q8_0: q = the int8, scale = d. Q4_K (256 weights): q = a nibble
//! (low nibbles of 32 bytes for even sub-blocks, high for odd), scale = d · sc_j and
//! min = dmin · m_j from the 6-bit packed scales. Q6_K (256): q = (4 low bits | 2 high
//! bits << 4) − 32, scale = d, lane = the int8 scale of each 16.
//!
//! Why not candle's `k_quants::matmul`: it calls one block-row `vec_dot` per (token, row),
//! so a prompt of m tokens unpacks every weight block m times and prefill runs no faster
//! than decode. Here eight blocks of a row are unpacked once and applied to `TILE` tokens,
//! a row is read from memory once for the whole prompt, and the eight blocks' integer sums
//! are reduced into one vector before the float scaling.
//!
//! The products use the `maddubs` sign trick: |q| (unsigned) times qx carrying q's sign.
//! |q| ≤ 127 and |qx| ≤ 127, so a pair sum is at most 32258 and the i16 never saturates.
//! (Q4_0's and Q4_K's nibbles are never negative and go in as they are.)

// x86-64 only (backend/mod.rs): elsewhere the CPU backend uses candle's kernels.
//!
//! Files: blocks.rs (the int8 inputs, shared), packed.rs (formats repacked eight rows at a
//! time at load: the driver) with q4_0x8.rs (Q4_0), row.rs (one
//! weight row at a time: decode, Q6_K, leftovers), group.rs (rows in the SIMD lanes:
//! prompts). This file picks between the last two and splits the rows over the threads.

// x86-64 only (cpu/mod.rs): elsewhere the CPU backend uses candle's kernels.

mod blocks;
mod group;
mod packed;
mod q4_0x8;
mod q4_kx8;
mod row;

use super::parallel::{L2_BUDGET, SharedOut};
use super::simd::Isa;
use crate::weights::WeightFormat;
pub use blocks::{QuantizedActs, quantize_acts};
use candle_core::utils::barrier_pool;

/// Whether `format` is packed eight rows at a time at load (packed.rs) on this CPU: then
/// [`pack`] makes the copy, [`matmul_packed`] multiplies by it.
pub fn packs(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::Q4_0 | WeightFormat::Q4K) && packed::supported()
}

/// The packed copy of n rows of k weights `w` in `format` (one that [`packs`]).
pub fn pack(format: WeightFormat, w: &[u8], n: usize, k: usize) -> Vec<u8> {
    match format {
        WeightFormat::Q4_0 => packed::pack::<q4_0x8::Q4_0x8>(w, n, k),
        _ => packed::pack::<q4_kx8::Q4Kx8>(w, n, k),
    }
}

/// Row r of a matrix [`pack`] made, in the file's layout.
pub fn unpack_row(format: WeightFormat, w: &[u8], k: usize, r: usize) -> Vec<u8> {
    match format {
        WeightFormat::Q4_0 => packed::unpack_row::<q4_0x8::Q4_0x8>(w, k, r),
        _ => packed::unpack_row::<q4_kx8::Q4Kx8>(w, k, r),
    }
}

/// [`matmul`] for a matrix [`pack`] made.
pub fn matmul_packed(
    mkn: (usize, usize, usize),
    format: WeightFormat,
    x: &[f32],
    w: &[u8],
    dst: &mut [f32],
) {
    match format {
        WeightFormat::Q4_0 => packed::matmul::<q4_0x8::Q4_0x8>(mkn, x, w, dst),
        _ => packed::matmul::<q4_kx8::Q4Kx8>(mkn, x, w, dst),
    }
}

/// Whether [`matmul`] can run `format`, in the file's layout, on this CPU.
pub fn supports(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::Q8_0 | WeightFormat::Q6K) && Isa::Avx2.present()
}

/// `dst[m, n] = x[m, k] · W[n, k]ᵀ` for W in `format` (which [`supports`]), threads
/// splitting the output rows.
pub fn matmul(
    mkn: (usize, usize, usize),
    format: WeightFormat,
    x: &[f32],
    w: &[u8],
    dst: &mut [f32],
) {
    let xq = quantize_acts(x);
    let isa = Isa::detect().expect("supports() checked AVX2");
    let out = SharedOut::new(dst);
    // work items of whole groups of 16 rows (group.rs)
    let n = mkn.2;
    barrier_pool().execute_chunked(n.div_ceil(16), |groups| {
        let rows = groups.start * 16..(groups.end * 16).min(n);
        // SAFETY: each work item owns its output columns `rows`.
        unsafe { matmul_rows(isa, format, mkn, &xq, w, rows, out.ptr()) }
    });
}

/// Output rows `rows` of `dst[m, n]` (row-major, n columns) for weights `w` in `format`,
/// which must satisfy [`supports`], on `isa` (see [`Isa::detect`]). `w` holds all n rows;
/// k is a multiple of the block.
///
/// # Safety
/// `dst` must point at `m * n` writable f32 that no other thread writes in `rows`' columns.
pub unsafe fn matmul_rows(
    isa: Isa,
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    x: &QuantizedActs,
    w: &[u8],
    rows: std::ops::Range<usize>,
    dst: *mut f32,
) {
    assert!(supports(format) && k % format.block_elems() == 0 && x.qs.len() == m * k);
    assert!(isa.present());
    let row_bytes = k / format.block_elems() * format.block_bytes();
    assert!(w.len() >= n * row_bytes && rows.end <= n);
    // Long prompts go in blocks of tokens whose int8 inputs stay in L2 while every row of
    // this work item passes over them (512 tokens of 5632 inputs are 2.9 MB).
    let block = (L2_BUDGET / k).max(row::TILE) / row::TILE * row::TILE;
    for first in (0..m).step_by(block) {
        let end = (first + block).min(m);
        let mut whole = rows.start;
        // Enough tokens pay for the transposes. Either kernel sums each token alone in the
        // same order (group.rs), so which one runs changes no bits: a decode batch, a
        // prompt and a prompt's tail after a reused prefix agree token by token.
        if group::supports(format) && end - first >= group::min_tokens(isa) {
            let size = group::rows(isa);
            while whole + size <= rows.end {
                // SAFETY: the ISA was checked; the caller's contract covers these rows.
                unsafe {
                    group::matmul_group(
                        isa,
                        format,
                        (k, n),
                        x,
                        w,
                        row_bytes,
                        whole,
                        first..end,
                        dst,
                    )
                };
                whole += size;
            }
        }
        for r in whole..rows.end {
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            let mut t = first;
            while t < end {
                let mut out = [0f32; row::TILE];
                // the widest tile that fits (a decode batch of 2-7 shares its unpacking too)
                let tile = [row::TILE, 4, 2, 1]
                    .into_iter()
                    .find(|&s| end - t >= s)
                    .unwrap_or(1);
                // SAFETY: the features were checked (`isa.present()`); lengths above.
                unsafe { row::products(isa, format, wr, x, k, t, tile, &mut out) };
                for (i, v) in out[..tile].iter().enumerate() {
                    // SAFETY: the caller owns column r of dst; (t + i) < m.
                    unsafe { *dst.add((t + i) * n + r) = *v };
                }
                t += tile;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch invariance: a token's product has the same bits whether it runs alone (the
    /// per-row kernel) or among others in the row-group kernel, at every tile size and
    /// with the tail blocks of a row whose length is not a multiple of eight blocks.
    #[test]
    fn a_token_gets_the_same_bits_alone_and_in_any_batch() {
        for format in [WeightFormat::Q8_0, WeightFormat::Q6K] {
            if !supports(format) {
                eprintln!("skipped: no AVX2 here");
                return;
            }
            let k = if format.block_elems() == 256 {
                768
            } else {
                352
            };
            let n = 37; // two 16-row groups (four of 8) and leftover rows
            let mut rng = crate::testing::Rng(0x9e37_79b9);
            let wf: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
            let w = crate::weights::ggml::quantize(format, &wf);
            for m in [2, 4, 5, 8, 9, 16, 17, 33, 40] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
                let xq = quantize_acts(&x);
                for isa in Isa::ALL.into_iter().filter(|isa| isa.present()) {
                    let mut dst = vec![0f32; m * n];
                    unsafe { matmul_rows(isa, format, (m, k, n), &xq, &w, 0..n, dst.as_mut_ptr()) };
                    for t in 0..m {
                        let alone = quantize_acts(&x[t * k..(t + 1) * k]);
                        let mut one = vec![0f32; n];
                        unsafe {
                            matmul_rows(isa, format, (1, k, n), &alone, &w, 0..n, one.as_mut_ptr())
                        };
                        for r in 0..n {
                            assert_eq!(
                                dst[t * n + r].to_bits(),
                                one[r].to_bits(),
                                "{format:?} m={m} {isa:?} token {t} row {r}: {} in the batch, {} alone",
                                dst[t * n + r],
                                one[r]
                            );
                        }
                    }
                }
            }
        }
    }

    /// Against a plain f64 loop over the same quantized values: the kernel's only error is
    /// f32 accumulation. (The reference against gguf-py's dequantizers, which bounds the
    /// activation quantization too, is in tests/tests/quant.rs.)
    #[test]
    fn matches_the_integer_dot_product_on_odd_shapes() {
        for format in [WeightFormat::Q8_0, WeightFormat::Q6K] {
            if !supports(format) {
                eprintln!("skipped: no AVX2 here");
                return;
            }
            let shapes: &[(usize, usize, usize)] = if format.block_elems() == 256 {
                // 300 tokens of 2048 inputs: three blocks of parallel::L2_BUDGET
                // and 16- and 8-row groups (group.rs) with leftover rows and tokens
                &[
                    (1, 256, 1),
                    (3, 512, 5),
                    (9, 768, 4),
                    (17, 2048, 3),
                    (300, 2048, 2),
                    (11, 512, 37),
                    (20, 512, 33),
                    (1, 2048, 32),
                ]
            } else {
                &[
                    (1, 32, 1),
                    (3, 96, 5),
                    (7, 160, 9),
                    (9, 352, 4),
                    (13, 2048, 3),
                    (17, 8 * 32 + 32 * 3, 2),
                    (300, 2048, 2),
                    (11, 352, 37),
                    (1, 2048, 32),
                    (70, 2048, 17),
                ]
            };
            for &(m, k, n) in shapes {
                let mut rng = crate::testing::Rng(0x2545_f491);
                let mut rnd = || rng.f32();
                let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let w = crate::weights::ggml::quantize(format, &wf);
                let mut wd = vec![0f32; n * k];
                crate::weights::ggml::dequantize(format, &w, &mut wd);
                let xq = quantize_acts(&x);
                for isa in Isa::ALL.into_iter().filter(|isa| isa.present()) {
                    let mut dst = vec![0f32; m * n];
                    unsafe { matmul_rows(isa, format, (m, k, n), &xq, &w, 0..n, dst.as_mut_ptr()) };
                    super::blocks::assert_near_f64(
                        &xq,
                        &wd,
                        (m, k, n),
                        &dst,
                        &format!("{format:?} {isa:?}"),
                    );
                }
            }
        }
    }
}
