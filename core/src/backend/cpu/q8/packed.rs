//! Weights repacked at load time eight rows at a time, and the product's driver: the
//! formats (q4_0x8.rs, q8_0x8.rs, q4_kx8.rs, q6_kx8.rs) say where a row's block goes and bring their kernels;
//! this file packs, splits the row groups over the threads and the tokens into tiles.
//!
//! In a packed block, row r's four weights of a kind sit in i32 lane r of a 256-bit vector,
//! so one `vpdpbusd` with the token's four inputs broadcast adds four products to each
//! row's own lane: no horizontal sums, and one conversion and one FMA scale eight rows (or
//! sixteen: two groups side by side in 512-bit vectors, for tiles of several tokens on
//! AVX-512). Each (token, row) is summed over its blocks in order with one accumulator, in
//! every tile, so a token's product has the same bits alone, in a decode batch or in a
//! prompt of any length.
//!
//! Why repack (llama.cpp does the same on x86 and ARM): in the file's order a block's
//! products end up in eight lanes of one row, and summing them across lanes costs as many
//! instructions as the products themselves; decode ran at 0.6-0.8x llama.cpp that way. The
//! copy replaces the mapped pages (cpu/mod.rs lets them go).

use super::blocks::{QuantizedActs, quantize_acts};
use crate::backend::cpu::parallel::{L2_BUDGET, SharedOut};
use crate::backend::cpu::simd::Isa;
use candle_core::utils::barrier_pool;

/// Rows per packed group: the i32 lanes of a 256-bit vector.
pub const ROWS: usize = 8;

/// Products of up to eight tokens with two groups of rows: `out[j][r]`.
pub type Tile = [[f32; 2 * ROWS]; 8];

/// A weight format packed eight rows at a time.
pub trait Packed {
    /// Weights per block (32, or 256 for a k-quant's super-block).
    const QK: usize;
    /// Bytes of one block of one row in the file.
    const FILE: usize;
    /// Bytes of one packed block of eight rows.
    const BYTES: usize;
    /// Put row r's file block `src` into the packed block `dst`.
    fn place(src: &[u8], r: usize, dst: &mut [u8]);
    /// Row r of the packed block `src`, back in the file's layout.
    fn take(src: &[u8], r: usize, dst: &mut [u8]);
    /// `out[j][at + r]` = row 8g + r times token t0 + j, for `tokens` (1, 2, 4, or 8 with
    /// AVX-512 VNNI) tokens.
    ///
    /// # Safety
    /// `isa` is present; group g and the tokens exist (the driver checked the lengths).
    #[allow(clippy::too_many_arguments)]
    unsafe fn one_group(
        isa: Isa,
        packed: &[u8],
        x: &QuantizedActs,
        k: usize,
        g: usize,
        t0: usize,
        tokens: usize,
        at: usize,
        out: &mut Tile,
    );
    /// `out[j][r]` = row 8g + r (r < 16: groups g and g + 1) times token t0 + j, for
    /// `tokens` (2, 4 or 8) tokens, in 512-bit vectors; the same bits as `one_group`.
    ///
    /// # Safety
    /// AVX-512 VNNI is present; groups g, g + 1 and the tokens exist.
    unsafe fn two_groups(
        packed: &[u8],
        x: &QuantizedActs,
        k: usize,
        g: usize,
        t0: usize,
        tokens: usize,
        out: &mut Tile,
    );
}

/// Whether this CPU runs the packed products (AVX2 at least).
pub fn supported() -> bool {
    Isa::Avx2.present()
}

/// Bytes of n rows of k weights, packed (n rounded up to whole groups; the rows past n are
/// zeros).
pub fn packed_len<P: Packed>(n: usize, k: usize) -> usize {
    n.div_ceil(ROWS) * (k / P::QK) * P::BYTES
}

/// The packed copy of `w`, n rows of k weights in the file's layout. The cores share the
/// copying (it is most of the load time of a mapped file).
pub fn pack<P: Packed>(w: &[u8], n: usize, k: usize) -> Vec<u8> {
    let nb = k / P::QK;
    assert!(k % P::QK == 0 && w.len() >= n * nb * P::FILE);
    let mut out = vec![0u8; packed_len::<P>(n, k)];
    if out.is_empty() {
        return out; // no rows or no columns
    }
    let groups = n.div_ceil(ROWS);
    let threads = candle_core::utils::get_num_threads().clamp(1, groups.max(1));
    let per_thread = groups.div_ceil(threads).max(1) * nb * P::BYTES;
    std::thread::scope(|scope| {
        for (i, part) in out.chunks_mut(per_thread).enumerate() {
            let first = i * per_thread / P::BYTES;
            scope.spawn(move || {
                for (j, dst) in part.chunks_exact_mut(P::BYTES).enumerate() {
                    let (g, b) = ((first + j) / nb, (first + j) % nb);
                    for r in 0..ROWS.min(n - g * ROWS) {
                        P::place(&w[((g * ROWS + r) * nb + b) * P::FILE..][..P::FILE], r, dst);
                    }
                }
            });
        }
    });
    out
}

/// Row r of a packed matrix of k columns, back in the file's layout (for `embed`).
pub fn unpack_row<P: Packed>(packed: &[u8], k: usize, r: usize) -> Vec<u8> {
    let nb = k / P::QK;
    let (g, lane) = (r / ROWS, r % ROWS);
    let mut out = vec![0u8; nb * P::FILE];
    for (b, dst) in out.chunks_exact_mut(P::FILE).enumerate() {
        P::take(&packed[(g * nb + b) * P::BYTES..][..P::BYTES], lane, dst);
    }
    out
}

/// `dst[m, n] = x[m, k] · W[n, k]ᵀ` for W packed by [`pack`], threads splitting the row
/// groups. Needs AVX2 ([`supported`]).
pub fn matmul<P: Packed>(
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    packed: &[u8],
    dst: &mut [f32],
) {
    let xq = quantize_acts(x);
    let isa = Isa::detect().expect("the caller checked AVX2");
    let out = SharedOut::new(dst);
    barrier_pool().execute_chunked(n.div_ceil(ROWS), |groups| {
        // SAFETY: each work item owns its groups' output columns.
        unsafe { matmul_groups::<P>(isa, (m, k, n), &xq, packed, groups, out.ptr()) }
    });
}

/// Row groups `groups` of `dst[m, n]` (row-major, n columns).
///
/// # Safety
/// `isa` is present; `dst` points at `m * n` writable f32 that no other thread writes in
/// these groups' columns.
pub unsafe fn matmul_groups<P: Packed>(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    x: &QuantizedActs,
    packed: &[u8],
    groups: std::ops::Range<usize>,
    dst: *mut f32,
) {
    assert!(isa.present() && k % P::QK == 0 && x.qs.len() == m * k);
    assert!(packed.len() >= packed_len::<P>(n, k) && groups.end <= n.div_ceil(ROWS));
    let wide = isa == Isa::Avx512Vnni;
    let widest = if wide { 8 } else { 4 };
    // Long prompts go in blocks of tokens whose int8 inputs stay in L2 while this work
    // item's rows pass over them.
    let block = (L2_BUDGET / k).max(widest) / widest * widest;
    for first in (0..m).step_by(block) {
        let end = (first + block).min(m);
        let mut g = groups.start;
        while g < groups.end {
            // Two groups in 512-bit vectors for tiles of several tokens (half the
            // instructions; a lane's arithmetic is the same, so are its bits). One token
            // is bound by memory, and stays in 256 bits.
            let span = if wide && g + 1 < groups.end { 2 } else { 1 };
            let mut t = first;
            while t < end {
                let tile = [8, 4, 2, 1]
                    .into_iter()
                    .find(|&s| s <= widest && end - t >= s)
                    .unwrap_or(1);
                let mut products = [[0f32; 2 * ROWS]; 8];
                if span == 2 && tile > 1 {
                    // SAFETY: AVX-512 VNNI is present; groups g, g + 1 and the tokens exist.
                    unsafe { P::two_groups(packed, x, k, g, t, tile, &mut products) };
                } else {
                    for half in 0..span {
                        // SAFETY: the ISA is present; group g + half and the tokens exist.
                        unsafe {
                            P::one_group(
                                isa,
                                packed,
                                x,
                                k,
                                g + half,
                                t,
                                tile,
                                half * ROWS,
                                &mut products,
                            )
                        };
                    }
                }
                let rows = (span * ROWS).min(n - g * ROWS);
                for (i, lanes) in products[..tile].iter().enumerate() {
                    // SAFETY: the caller owns these columns; t + i < m.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(dst.add((t + i) * n + g * ROWS), rows)
                    };
                    row.copy_from_slice(&lanes[..rows]);
                }
                t += tile;
            }
            g += span;
        }
    }
}

/// A format's `one_group` and `two_groups`, over the kernel modules [`kernels!`] makes.
macro_rules! dispatch {
    () => {
        unsafe fn one_group(
            isa: Isa,
            packed: &[u8],
            x: &QuantizedActs,
            k: usize,
            g: usize,
            t0: usize,
            tokens: usize,
            at: usize,
            out: &mut Tile,
        ) {
            macro_rules! each_tile {
                ($isa:ident) => {
                    match tokens {
                        8 => $isa::tokens8(packed, x, k, g, t0, at, out),
                        4 => $isa::tokens4(packed, x, k, g, t0, at, out),
                        2 => $isa::tokens2(packed, x, k, g, t0, at, out),
                        _ => $isa::tokens1(packed, x, k, g, t0, at, out),
                    }
                };
            }
            // SAFETY: passed on from the caller.
            unsafe {
                match isa {
                    Isa::Avx512Vnni => each_tile!(vnni512),
                    Isa::AvxVnni => each_tile!(vnni),
                    Isa::Avx2 => each_tile!(avx2),
                }
            }
        }

        unsafe fn two_groups(
            packed: &[u8],
            x: &QuantizedActs,
            k: usize,
            g: usize,
            t0: usize,
            tokens: usize,
            out: &mut Tile,
        ) {
            // SAFETY: passed on from the caller.
            unsafe {
                match tokens {
                    8 => wide::tokens8(packed, x, k, g, t0, out),
                    4 => wide::tokens4(packed, x, k, g, t0, out),
                    _ => wide::tokens2(packed, x, k, g, t0, out),
                }
            }
        }
    };
}
pub(super) use dispatch;

/// The kernel modules of a format, from its `tile_kernel!` (one group in 256-bit vectors,
/// per instruction set; `$dot(acc, w, x)` adds u8 `w` times i8 `x` over groups of four
/// bytes to the eight i32 of `acc`) and `wide_kernel!` (two groups in 512 bits). A format
/// whose weights reach 255 brings its own AVX2 dot (`maddubs` would saturate).
macro_rules! kernels {
    () => {
        // A pair of weights below 64 (four or six bits) times int8 is at most 2 · 63 · 128:
        // `maddubs` never saturates.
        kernels!(avx2_dot: |acc, w, x| _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
        ));
    };
    (avx2_dot: $avx2_dot:expr) => {
        kernels!(avx2, "avx2,fma,f16c", $avx2_dot);
        kernels!(vnni, "avx2,fma,f16c,avxvnni", |acc, w, x| {
            _mm256_dpbusd_avx_epi32(acc, w, x)
        });
        kernels!(
            vnni512,
            "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
            |acc, w, x| _mm256_dpbusd_epi32(acc, w, x)
        );
        mod wide {
            use super::*;
            wide_kernel!(tokens2, 0 a0, 1 a1);
            wide_kernel!(tokens4, 0 a0, 1 a1, 2 a2, 3 a3);
            wide_kernel!(tokens8, 0 a0, 1 a1, 2 a2, 3 a3, 4 a4, 5 a5, 6 a6, 7 a7);
        }
    };
    ($isa:ident, $features:literal, $dot:expr) => {
        mod $isa {
            use super::*;
            tile_kernel!(tokens1, $features, $dot, 0 a0);
            tile_kernel!(tokens2, $features, $dot, 0 a0, 1 a1);
            tile_kernel!(tokens4, $features, $dot, 0 a0, 1 a1, 2 a2, 3 a3);
            tile_kernel!(tokens8, $features, $dot, 0 a0, 1 a1, 2 a2, 3 a3, 4 a4, 5 a5, 6 a6, 7 a7);
        }
    };
}
pub(super) use kernels;

/// The tests every packed format passes (`tests` below), for `$format` packed by `$packed`.
macro_rules! packed_tests {
    ($packed:ident, $format:ident) => {
        #[cfg(test)]
        mod packed_tests {
            use super::super::packed::tests as check;
            use crate::weights::WeightFormat::$format;

            #[test]
            fn unpacking_gives_the_file_rows_back() {
                check::unpacking_gives_the_file_rows_back::<super::$packed>($format);
            }

            #[test]
            fn a_token_gets_the_same_bits_alone_and_in_any_batch() {
                check::a_token_gets_the_same_bits_alone_and_in_any_batch::<super::$packed>($format);
            }

            #[test]
            fn matches_the_integer_dot_product() {
                check::matches_the_integer_dot_product::<super::$packed>($format);
            }
        }
    };
}
pub(super) use packed_tests;

/// The tests every packed format passes: the file's rows back from the packing, the same
/// bits alone and in any batch, and an f64 loop over the same quantized values.
#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::weights::WeightFormat;

    fn random(format: WeightFormat, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = crate::testing::Rng(seed);
        let wf: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
        crate::weights::ggml::quantize(format, &wf)
    }

    pub fn unpacking_gives_the_file_rows_back<P: Packed>(format: WeightFormat) {
        let (n, k) = (13, 3 * P::QK);
        let w = random(format, n, k, 7);
        let packed = pack::<P>(&w, n, k);
        let row = k / P::QK * P::FILE;
        assert!(pack::<P>(&[], 0, k).is_empty() && pack::<P>(&[], n, 0).is_empty());
        for r in 0..n {
            assert_eq!(
                unpack_row::<P>(&packed, k, r),
                w[r * row..(r + 1) * row],
                "row {r}"
            );
        }
    }

    pub fn a_token_gets_the_same_bits_alone_and_in_any_batch<P: Packed>(format: WeightFormat) {
        if !supported() {
            eprintln!("skipped: no AVX2 here");
            return;
        }
        let (k, n) = (if P::QK == 32 { 352 } else { 768 }, 37);
        let packed = pack::<P>(&random(format, n, k, 0x9e37_79b9), n, k);
        let mut rng = crate::testing::Rng(5);
        for m in [2, 3, 4, 5, 8, 9, 16, 17, 40, 800] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let xq = quantize_acts(&x);
            for isa in Isa::ALL.into_iter().filter(|isa| isa.present()) {
                let groups = 0..n.div_ceil(ROWS);
                let mut dst = vec![0f32; m * n];
                unsafe {
                    matmul_groups::<P>(
                        isa,
                        (m, k, n),
                        &xq,
                        &packed,
                        groups.clone(),
                        dst.as_mut_ptr(),
                    )
                };
                for t in 0..m {
                    let alone = quantize_acts(&x[t * k..(t + 1) * k]);
                    let mut one = vec![0f32; n];
                    unsafe {
                        matmul_groups::<P>(
                            isa,
                            (1, k, n),
                            &alone,
                            &packed,
                            groups.clone(),
                            one.as_mut_ptr(),
                        )
                    };
                    for r in 0..n {
                        assert_eq!(
                            dst[t * n + r].to_bits(),
                            one[r].to_bits(),
                            "m={m} {isa:?} token {t} row {r}"
                        );
                    }
                }
            }
        }
    }

    /// The kernel's only error is f32 accumulation. (gguf-py's dequantizers are the
    /// reference in tests/tests/quant.rs.)
    pub fn matches_the_integer_dot_product<P: Packed>(format: WeightFormat) {
        if !supported() {
            eprintln!("skipped: no AVX2 here");
            return;
        }
        let q = P::QK;
        for (m, k, n) in [
            (1, q, 1),
            (3, 3 * q, 5),
            (7, 5 * q, 9),
            (13, 2048, 3),
            (300, 2048, 17),
            (1, 2048, 32),
        ] {
            let mut rng = crate::testing::Rng(0x2545_f491);
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let w = random(format, n, k, 11);
            let mut wd = vec![0f32; n * k];
            crate::weights::ggml::dequantize(format, &w, &mut wd);
            let xq = quantize_acts(&x);
            let packed = pack::<P>(&w, n, k);
            for isa in Isa::ALL.into_iter().filter(|isa| isa.present()) {
                let mut dst = vec![0f32; m * n];
                let groups = 0..n.div_ceil(ROWS);
                unsafe {
                    matmul_groups::<P>(isa, (m, k, n), &xq, &packed, groups, dst.as_mut_ptr())
                };
                super::super::blocks::assert_near_f64(
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
