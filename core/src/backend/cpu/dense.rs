//! `dst[m, n] = x[m, k] · W[n, k]ᵀ` for f32, f16 and bf16 weights with f32 activations:
//! the CPU backend's product for unquantized models, in prefill and decode.
//!
//! Why not candle's: its f16/bf16 products round the activations to 16 bits first (up to
//! ~1e-3 relative error in the logits), and they take one (token, row) dot product at a
//! time, so a prompt of m tokens streams the weights from memory m times. Here a weight
//! row is read once and applied to `TOKENS` tokens held in registers.

use super::parallel::{L2_BUDGET, SharedOut};
use super::simd::Features;
use crate::weights::WeightFormat;
use candle_core::utils::barrier_pool;
use half::f16;

/// The instruction set a product runs on, checked once per product.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Simd {
    Scalar,
    /// AVX2 + FMA + F16C: 8 lanes and 16 registers, a 2×4 tile (3×4 spills).
    Avx2,
    /// AVX-512F: 16 lanes and 32 registers, a 6×4 tile (24 accumulators, 6 weight vectors,
    /// one input vector; 4×4 ran 12 % slower).
    Avx512,
}

/// The tile this CPU takes (simd.rs detects it once; a product runs per matrix, many
/// times per token).
fn simd() -> Simd {
    Simd::within(Features::chosen())
}

impl Simd {
    fn within(f: Features) -> Simd {
        if f.avx512 {
            Simd::Avx512
        } else if f.avx2 {
            Simd::Avx2
        } else {
            Simd::Scalar
        }
    }
}

/// Tokens per register tile (ROWS depends on the instruction set).
const TOKENS: usize = 4;

pub fn matmul(
    format: WeightFormat,
    mkn: (usize, usize, usize),
    x: &[f32],
    w: &[u8],
    dst: &mut [f32],
) {
    matmul_on(
        simd(),
        format,
        mkn,
        x,
        w,
        Rows {
            stride: mkn.1,
            parallel: true,
        },
        dst,
    )
}

/// As [`matmul`] for f32 or f16 weights whose rows lie `stride` elements apart (the keys
/// of one head in a KV cache), on the calling thread alone (for a caller that is already
/// one of the pool's workers).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // attention's prompt path is x86-64's
pub fn matmul_strided_serial(
    format: WeightFormat,
    mkn: (usize, usize, usize),
    x: &[f32],
    w: &[u8],
    stride: usize,
    dst: &mut [f32],
) {
    let rows = Rows {
        stride,
        parallel: false,
    };
    matmul_on(simd(), format, mkn, x, w, rows, dst)
}

/// Where the weight rows are, and whether the product may use the thread pool.
#[derive(Clone, Copy)]
struct Rows {
    /// Elements from one row's start to the next's (≥ k).
    stride: usize,
    parallel: bool,
}

fn matmul_on(
    simd: Simd,
    format: WeightFormat,
    mkn: (usize, usize, usize),
    x: &[f32],
    w: &[u8],
    rows: Rows,
    dst: &mut [f32],
) {
    match simd {
        Simd::Avx512 => matmul_tiled::<6>(simd, format, mkn, x, w, rows, dst),
        _ => matmul_tiled::<2>(simd, format, mkn, x, w, rows, dst),
    }
}

/// Work items of ROWS weight rows; each passes its rows over a block of tokens, TOKENS
/// at a time, reading a row once per block.
#[allow(clippy::too_many_arguments)]
fn matmul_tiled<const ROWS: usize>(
    simd: Simd,
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[u8],
    Rows { stride, parallel }: Rows,
    dst: &mut [f32],
) {
    assert!(matches!(
        format,
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16
    ));
    let size = format.block_bytes();
    assert!(stride >= k && (n == 0 || w.len() >= ((n - 1) * stride + k) * size));
    assert!(x.len() >= m * k && dst.len() >= m * n);
    let out = SharedOut::new(dst);
    let row = |r: usize| &w[r * stride * size..(r * stride + k) * size];
    // SAFETY (the writes below): a work item alone writes the columns of its rows.
    let put = |t: usize, r: usize, v: f32| unsafe { out.slice(t * n + r, 1)[0] = v };
    // long prompts in blocks of tokens whose inputs stay in L2 (see q8/mod.rs)
    let block = (L2_BUDGET / (4 * k)).max(TOKENS) / TOKENS * TOKENS;
    let work = |groups: std::ops::Range<usize>| {
        for first in (0..m).step_by(block) {
            let end = (first + block).min(m);
            for g in groups.clone() {
                let r0 = g * ROWS;
                let mut t = first;
                // Every path keeps one accumulator per (row, token) (L = 1), so a token's
                // dot products are summed in the same order whether it shares a tile with
                // others or runs alone: a batch never changes a sequence's logits.
                if r0 + ROWS <= n {
                    let rows = std::array::from_fn(|i| row(r0 + i));
                    while t + TOKENS <= end {
                        let tile = dot_tile::<ROWS, TOKENS, 1>(
                            simd,
                            format,
                            rows,
                            &x[t * k..(t + TOKENS) * k],
                        );
                        for (i, dots) in tile.iter().enumerate() {
                            for (j, v) in dots.iter().enumerate() {
                                put(t + j, r0 + i, *v);
                            }
                        }
                        t += TOKENS;
                    }
                }
                // what is left (decode is all of it): one token at a time, the group's rows
                // together (their accumulators are the independent chains FMA latency needs)
                for t in t..end {
                    let xt = &x[t * k..(t + 1) * k];
                    if r0 + ROWS <= n {
                        let dots = dot_tile::<ROWS, 1, 1>(
                            simd,
                            format,
                            std::array::from_fn(|i| row(r0 + i)),
                            xt,
                        );
                        for (i, [v]) in dots.iter().enumerate() {
                            put(t, r0 + i, *v);
                        }
                    } else {
                        for r in r0..n {
                            let [[v]] = dot_tile::<1, 1, 1>(simd, format, [row(r)], xt);
                            put(t, r, v);
                        }
                    }
                }
            }
        }
    };
    if parallel {
        barrier_pool().execute_chunked(n.div_ceil(ROWS), work);
    } else {
        work(0..n.div_ceil(ROWS));
    }
}

/// `W_i · x_j` for the R weight rows `ws` (k weights each, in `format`) and the T rows
/// x_j of `xs`, on the instructions `simd` says the CPU has. Each dot product has L
/// accumulators: R·T·L of at least 8 keeps FMA latency from bounding a small tile (decode).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn dot_tile<const R: usize, const T: usize, const L: usize>(
    simd: Simd,
    format: WeightFormat,
    ws: [&[u8]; R],
    xs: &[f32],
) -> [[f32; T]; R] {
    let k = xs.len() / T;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `simd` was checked (`simd()`); each w holds k weights, xs T rows of k.
    unsafe {
        use WeightFormat::{F16, F32};
        match (simd, format) {
            (Simd::Avx512, F32) => return avx512::dot_tile::<avx512::F32, R, T, L>(ws, xs, k),
            (Simd::Avx512, F16) => return avx512::dot_tile::<avx512::F16, R, T, L>(ws, xs, k),
            (Simd::Avx512, _) => return avx512::dot_tile::<avx512::BF16, R, T, L>(ws, xs, k),
            (Simd::Avx2, F32) => return avx2::dot_tile::<avx2::F32, R, T, L>(ws, xs, k),
            (Simd::Avx2, F16) => return avx2::dot_tile::<avx2::F16, R, T, L>(ws, xs, k),
            (Simd::Avx2, _) => return avx2::dot_tile::<avx2::BF16, R, T, L>(ws, xs, k),
            (Simd::Scalar, _) => {}
        }
    }
    // eight partial sums, as the vector paths keep: fewer rounding steps, and a compiler
    // can vectorize it (this is the path off x86-64)
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let x = &xs[j * k..(j + 1) * k];
            let mut acc = [0f32; 8];
            for c in (0..k / 8 * 8).step_by(8) {
                for (l, a) in acc.iter_mut().enumerate() {
                    *a += weight(format, ws[i], c + l) * x[c + l];
                }
            }
            let tail: f32 = (k / 8 * 8..k)
                .map(|c| weight(format, ws[i], c) * x[c])
                .sum();
            acc.iter().sum::<f32>() + tail
        })
    })
}

/// Weight i of a row in `format` (little-endian bytes).
fn weight(format: WeightFormat, w: &[u8], i: usize) -> f32 {
    match format {
        WeightFormat::F32 => f32::from_le_bytes(w[4 * i..4 * i + 4].try_into().unwrap()),
        WeightFormat::F16 => f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
        _ => f32::from_bits((u16::from_le_bytes([w[2 * i], w[2 * i + 1]]) as u32) << 16),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::weight;
    use crate::weights::WeightFormat;
    use std::arch::x86_64::*;

    /// A dense weight format: eight weights at `p` widened to f32.
    pub trait Load8 {
        const FORMAT: WeightFormat;
        const BYTES: usize;
        unsafe fn load8(p: *const u8) -> __m256;
    }
    pub struct F32;
    pub struct F16;
    pub struct BF16;
    impl Load8 for F32 {
        const FORMAT: WeightFormat = WeightFormat::F32;
        const BYTES: usize = 4;
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            unsafe { _mm256_loadu_ps(p as *const f32) }
        }
    }
    impl Load8 for F16 {
        const FORMAT: WeightFormat = WeightFormat::F16;
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
    }
    impl Load8 for BF16 {
        const FORMAT: WeightFormat = WeightFormat::BF16;
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            // bf16 is the top half of an f32
            unsafe {
                let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
            }
        }
    }

    /// Each tile's dot products from their eight-lane sums (`folded[i][j]`, row i, token
    /// j), plus the weights past `body` one by one. Every tile size ends its sums in this
    /// one way (simd::hsums, hsum's tree), so a token's product has the same bits whichever
    /// tile it ran in.
    #[inline(always)]
    pub unsafe fn ended<const R: usize, const T: usize>(
        folded: [[__m256; T]; R],
        format: WeightFormat,
        ws: [&[u8]; R],
        xs: &[f32],
        body: usize,
        k: usize,
    ) -> [[f32; T]; R] {
        let mut out = [[0f32; T]; R];
        // SAFETY: AVX2 is the caller's contract.
        unsafe { crate::backend::cpu::simd::hsums(folded.as_flattened(), out.as_flattened_mut()) };
        for i in 0..R {
            for j in 0..T {
                for c in body..k {
                    out[i][j] += weight(format, ws[i], c) * xs[j * k + c];
                }
            }
        }
        out
    }

    /// One FMA per eight weights, row and token; each load of weights or inputs serves
    /// several FMAs.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // u, j, i index several arrays at once
    pub unsafe fn dot_tile<W: Load8, const R: usize, const T: usize, const L: usize>(
        ws: [&[u8]; R],
        xs: &[f32],
        k: usize,
    ) -> [[f32; T]; R] {
        let mut acc = [[[_mm256_setzero_ps(); L]; T]; R];
        let body = k / (8 * L) * (8 * L);
        let mut c = 0;
        while c < body {
            for u in 0..L {
                // SAFETY: c + 8u + 8 ≤ k; each w holds k weights and xs T rows of k.
                unsafe {
                    // a loop, not array::from_fn: a closure does not take the target
                    // features, and LLVM may leave it out of line (F16 prompts ran at half speed)
                    let mut wv = [_mm256_setzero_ps(); R];
                    for i in 0..R {
                        wv[i] = W::load8(ws[i].as_ptr().add((c + 8 * u) * W::BYTES));
                    }
                    for j in 0..T {
                        let xv = _mm256_loadu_ps(xs.as_ptr().add(j * k + c + 8 * u));
                        for i in 0..R {
                            acc[i][j][u] = _mm256_fmadd_ps(wv[i], xv, acc[i][j][u]);
                        }
                    }
                }
            }
            c += 8 * L;
        }
        // loops, not closures, for the reason above
        let mut folded = [[_mm256_setzero_ps(); T]; R];
        for i in 0..R {
            for j in 0..T {
                let a = &acc[i][j];
                folded[i][j] = a[0];
                for u in 1..L {
                    folded[i][j] = _mm256_add_ps(folded[i][j], a[u]);
                }
            }
        }
        // SAFETY: AVX2 is enabled here.
        unsafe { ended(folded, W::FORMAT, ws, xs, body, k) }
    }
}

/// The AVX-512 twin of `avx2`: sixteen lanes, and a tile of up to 32 registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::weights::WeightFormat;
    use std::arch::x86_64::*;

    /// A dense weight format: sixteen weights at `p` widened to f32.
    pub trait Load16 {
        const FORMAT: WeightFormat;
        const BYTES: usize;
        unsafe fn load16(p: *const u8) -> __m512;
    }
    pub struct F32;
    pub struct F16;
    pub struct BF16;
    impl Load16 for F32 {
        const FORMAT: WeightFormat = WeightFormat::F32;
        const BYTES: usize = 4;
        #[inline(always)]
        unsafe fn load16(p: *const u8) -> __m512 {
            unsafe { _mm512_loadu_ps(p as *const f32) }
        }
    }
    impl Load16 for F16 {
        const FORMAT: WeightFormat = WeightFormat::F16;
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn load16(p: *const u8) -> __m512 {
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
        }
    }
    impl Load16 for BF16 {
        const FORMAT: WeightFormat = WeightFormat::BF16;
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn load16(p: *const u8) -> __m512 {
            unsafe {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))
            }
        }
    }

    /// As `avx2::dot_tile`, sixteen weights per FMA.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // u, j, i index several arrays at once
    pub unsafe fn dot_tile<W: Load16, const R: usize, const T: usize, const L: usize>(
        ws: [&[u8]; R],
        xs: &[f32],
        k: usize,
    ) -> [[f32; T]; R] {
        let mut acc = [[[_mm512_setzero_ps(); L]; T]; R];
        let body = k / (16 * L) * (16 * L);
        let mut c = 0;
        while c < body {
            for u in 0..L {
                // SAFETY: c + 16u + 16 ≤ k; each w holds k weights and xs T rows of k.
                unsafe {
                    // a loop, not array::from_fn: a closure does not take the target
                    // features, and LLVM may leave it out of line (F16 prompts ran at half speed)
                    let mut wv = [_mm512_setzero_ps(); R];
                    for i in 0..R {
                        wv[i] = W::load16(ws[i].as_ptr().add((c + 16 * u) * W::BYTES));
                    }
                    for j in 0..T {
                        let xv = _mm512_loadu_ps(xs.as_ptr().add(j * k + c + 16 * u));
                        for i in 0..R {
                            acc[i][j][u] = _mm512_fmadd_ps(wv[i], xv, acc[i][j][u]);
                        }
                    }
                }
            }
            c += 16 * L;
        }
        // SAFETY: the features are enabled here.
        unsafe { ended(acc, W::FORMAT, ws, xs, body, k) }
    }

    /// The tile's sums: 16 lanes to 8, then as on AVX2. Out of line, so that the tile's
    /// loop keeps all 32 registers (inlined, its weights spilled: F16 prompts at 60 %).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline(never)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn ended<const R: usize, const T: usize, const L: usize>(
        acc: [[[__m512; L]; T]; R],
        format: WeightFormat,
        ws: [&[u8]; R],
        xs: &[f32],
        body: usize,
        k: usize,
    ) -> [[f32; T]; R] {
        let mut folded = [[_mm256_setzero_ps(); T]; R];
        for i in 0..R {
            for j in 0..T {
                let a = &acc[i][j];
                let mut v = a[0];
                for u in 1..L {
                    v = _mm512_add_ps(v, a[u]);
                }
                let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                folded[i][j] = _mm256_add_ps(_mm512_castps512_ps256(v), high);
            }
        }
        // SAFETY: AVX2 is enabled here.
        unsafe { super::avx2::ended(folded, format, ws, xs, body, k) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weight rows `stride` apart, on the calling thread (attention's keys in a KV cache):
    /// against an f64 loop, rows with padding between them.
    #[test]
    fn strided_rows_match_an_f64_loop() {
        let mut rng = crate::testing::Rng(0x1234_5678);
        for (m, k, n, stride) in [
            (1, 8, 1, 8),
            (5, 64, 13, 96),
            (9, 24, 7, 40),
            (64, 64, 300, 256),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let w: Vec<f32> = (0..(n - 1) * stride + k).map(|_| rng.f32()).collect();
            let mut dst = vec![0f32; m * n];
            let bytes = bytemuck::cast_slice(&w);
            matmul_strided_serial(WeightFormat::F32, (m, k, n), &x, bytes, stride, &mut dst);
            for t in 0..m {
                for r in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| x[t * k + i] as f64 * w[r * stride + i] as f64)
                        .sum();
                    let got = dst[t * n + r] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{k}x{n}/{stride} [{t},{r}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Every instruction set this CPU has and every tile path (whole tiles, leftover rows
    /// and tokens, the decode path, a k that is not a multiple of 16 or 32) against an f64
    /// loop over the same weights.
    #[test]
    fn matches_an_f64_loop_on_odd_shapes() {
        let mut rng = crate::testing::Rng(0x9e37_79b9);
        let mut rnd = || rng.f32();
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16] {
            for (m, k, n) in [
                (1, 7, 1),
                (1, 2048, 5),
                (4, 40, 2),
                (9, 101, 7),
                (13, 64, 3),
                (70, 2048, 3), // three blocks of inputs (L2_BUDGET)
                (9, 64, 13),   // two whole groups of 6 rows and one short one
            ] {
                let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let w: Vec<u8> = match format {
                    WeightFormat::F32 => wf.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    WeightFormat::F16 => wf
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    _ => wf
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                };
                for simd in [Simd::Avx512, Simd::Avx2, Simd::Scalar] {
                    if simd > Simd::within(Features::present()) {
                        continue; // this CPU lacks it
                    }
                    let mut dst = vec![0f32; m * n];
                    matmul_on(
                        simd,
                        format,
                        (m, k, n),
                        &x,
                        &w,
                        Rows {
                            stride: k,
                            parallel: true,
                        },
                        &mut dst,
                    );
                    for t in 0..m {
                        for r in 0..n {
                            let want: f64 = (0..k)
                                .map(|i| {
                                    weight(format, &w[r * k * format.block_bytes()..], i) as f64
                                        * x[t * k + i] as f64
                                })
                                .sum();
                            let got = dst[t * n + r] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{simd:?} {format:?} {m}x{k}x{n} [{t},{r}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Batch invariance: a token's products have the same bits alone (decode) as in a
    /// tile of tokens, on every instruction set, with a k that leaves a tail.
    #[test]
    fn a_token_gets_the_same_bits_alone_and_in_any_batch() {
        let mut rng = crate::testing::Rng(0x7f4a_7c15);
        let (k, n) = (200, 13);
        let wf: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
        let w: Vec<u8> = wf
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        for m in [2, 4, 5, 9] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            for simd in [Simd::Avx512, Simd::Avx2, Simd::Scalar] {
                if simd > Simd::within(Features::present()) {
                    continue;
                }
                let rows = Rows {
                    stride: k,
                    parallel: true,
                };
                let mut all = vec![0f32; m * n];
                matmul_on(simd, WeightFormat::F16, (m, k, n), &x, &w, rows, &mut all);
                for t in 0..m {
                    let mut one = vec![0f32; n];
                    matmul_on(
                        simd,
                        WeightFormat::F16,
                        (1, k, n),
                        &x[t * k..(t + 1) * k],
                        &w,
                        rows,
                        &mut one,
                    );
                    for r in 0..n {
                        assert_eq!(
                            all[t * n + r].to_bits(),
                            one[r].to_bits(),
                            "{simd:?} m={m} token {t} row {r}"
                        );
                    }
                }
            }
        }
    }
}
