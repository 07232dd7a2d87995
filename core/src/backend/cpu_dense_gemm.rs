//! `dst[m, n] = x[m, k] · W[n, k]ᵀ` for f32, f16 and bf16 weights with f32 activations:
//! the CPU backend's product for unquantized models, in prefill and decode.
//!
//! Why not candle's: its f16/bf16 products round the activations to 16 bits first (up to
//! ~1e-3 relative error in the logits), and they take one (token, row) dot product at a
//! time, so a prompt of m tokens streams the weights from memory m times. Here a weight
//! row is read once and applied to `TOKENS` tokens held in registers.

use super::cpu::SharedOut;
use crate::weights::WeightFormat;
use candle_core::utils::barrier_pool;
use half::f16;

/// The register tile of a prompt: weight rows × tokens, one f32x8 accumulator each.
const ROWS: usize = 2;
const TOKENS: usize = 4;

pub fn matmul(
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[u8],
    dst: &mut [f32],
) {
    assert!(matches!(
        format,
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16
    ));
    let size = format.block_bytes();
    assert!(w.len() >= n * k * size && x.len() >= m * k && dst.len() >= m * n);
    let out = SharedOut::new(dst);
    let row = |r: usize| &w[r * k * size..(r + 1) * k * size];
    // SAFETY (the writes below): a work item alone writes the columns of its rows.
    let put = |t: usize, r: usize, v: f32| unsafe { out.slice(t * n + r, 1)[0] = v };
    // long prompts in blocks of tokens whose inputs stay in L2 (see cpu_q8_gemm.rs)
    let block = (super::cpu::L2_BUDGET / (4 * k)).max(TOKENS) / TOKENS * TOKENS;
    let simd = avx2_present();
    barrier_pool().execute_chunked(n.div_ceil(ROWS), |groups| {
        for first in (0..m).step_by(block) {
            let end = (first + block).min(m);
            for g in groups.clone() {
                let r0 = g * ROWS;
                let mut t = first;
                if r0 + ROWS <= n {
                    while t + TOKENS <= end {
                        let tile = dot_tile::<ROWS, TOKENS>(
                            simd,
                            format,
                            std::array::from_fn(|i| row(r0 + i)),
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
                // what is left (decode is all of it): one row and token at a time
                for r in r0..(r0 + ROWS).min(n) {
                    for t in t..end {
                        let [[v]] = dot_tile::<1, 1>(simd, format, [row(r)], &x[t * k..(t + 1) * k]);
                        put(t, r, v);
                    }
                }
            }
        }
    });
}

/// Whether this CPU has what `avx2::dot_tile` uses.
fn avx2_present() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    #[allow(unreachable_code)]
    false
}

/// `W_i · x_j` for the R weight rows `ws` (k weights each, in `format`) and the T rows
/// x_j of `xs`; `simd` is [`avx2_present`].
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn dot_tile<const R: usize, const T: usize>(
    simd: bool,
    format: WeightFormat,
    ws: [&[u8]; R],
    xs: &[f32],
) -> [[f32; T]; R] {
    let k = xs.len() / T;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the features were checked; each w holds k weights, xs T rows of k.
        unsafe {
            return match format {
                WeightFormat::F32 => avx2::dot_tile::<avx2::F32, R, T>(ws, xs, k),
                WeightFormat::F16 => avx2::dot_tile::<avx2::F16, R, T>(ws, xs, k),
                _ => avx2::dot_tile::<avx2::BF16, R, T>(ws, xs, k),
            };
        }
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            (0..k)
                .map(|c| weight(format, ws[i], c) * xs[j * k + c])
                .sum()
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

    /// One FMA per eight weights, row and token; each load of weights or inputs serves
    /// several FMAs. A single token and row (decode) gets four accumulators, so that FMA
    /// latency does not bound it.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // u, j, i index several arrays at once
    pub unsafe fn dot_tile<W: Load8, const R: usize, const T: usize>(
        ws: [&[u8]; R],
        xs: &[f32],
        k: usize,
    ) -> [[f32; T]; R] {
        let lanes = if R * T == 1 { 4 } else { 1 };
        let mut acc = [[[_mm256_setzero_ps(); 4]; T]; R];
        let body = k / (8 * lanes) * (8 * lanes);
        let mut c = 0;
        while c < body {
            for u in 0..lanes {
                // SAFETY: c + 8u + 8 ≤ k; each w holds k weights and xs T rows of k.
                unsafe {
                    let wv: [__m256; R] = std::array::from_fn(|i| {
                        W::load8(ws[i].as_ptr().add((c + 8 * u) * W::BYTES))
                    });
                    for j in 0..T {
                        let xv = _mm256_loadu_ps(xs.as_ptr().add(j * k + c + 8 * u));
                        for i in 0..R {
                            acc[i][j][u] = _mm256_fmadd_ps(wv[i], xv, acc[i][j][u]);
                        }
                    }
                }
            }
            c += 8 * lanes;
        }
        std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let a = &acc[i][j];
                let v = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
                let tail: f32 = (body..k)
                    .map(|c| weight(W::FORMAT, ws[i], c) * xs[j * k + c])
                    .sum();
                super::super::cpu_q8_gemm::hsum(v) + tail
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile path (2×4 tiles, leftover rows and tokens, the decode path, a k that is
    /// not a multiple of 8 or 32) against an f64 loop over the same weights.
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
                let mut dst = vec![0f32; m * n];
                matmul(format, (m, k, n), &x, &w, &mut dst);
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
                            "{format:?} {m}x{k}x{n} [{t},{r}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
