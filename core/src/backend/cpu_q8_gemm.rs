//! `dst[m, n] = x[m, k] · W[n, k]ᵀ` for Q4_0 and Q8_0 weights on x86-64 with AVX2, the
//! kernel the CPU backend uses for both prefill and decode with these formats.
//!
//! Like llama.cpp, the activations are first quantized to Q8_0 blocks (32 int8 values and
//! one f32 scale `dx`), so each block product is an exact integer dot product:
//!   dst[t, r] = Σ_b  dw[r, b] · dx[t, b] · Σ_{i<32} qw[r, b, i] · qx[t, b, i]
//! with qw = nibble − 8 for Q4_0 (16 bytes: element i in the low nibble of byte i, element
//! 16 + i in the high one) and qw = the int8 itself for Q8_0.
//!
//! Why not candle's `k_quants::matmul`: it calls one block-row `vec_dot` per (token, row),
//! so a prompt of m tokens unpacks every weight block m times and prefill runs no faster
//! than decode. Here a weight block is unpacked once and applied to `TILE` tokens held in
//! registers, and a row is read from memory once for the whole prompt.
//!
//! The products use the `maddubs` sign trick: |qw| (unsigned) times qx carrying qw's sign.
//! |qw| ≤ 127 and |qx| ≤ 127, so a pair sum is at most 32258 and the i16 never saturates.

// Off x86-64 `supports` is false and the CPU backend uses candle's kernels instead.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use crate::weights::WeightFormat;
use half::f16;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Tokens per register tile: four f32x8 accumulators, plus the unpacked weight block.
const TILE: usize = 8;
const QK: usize = 32;

/// Activations quantized to Q8_0 blocks, token-major: `qs[t*k + i]`, `d[t*k/32 + b]`.
pub struct QuantizedActs {
    qs: Vec<i8>,
    d: Vec<f32>,
}

/// Quantize each 32-value block of `x` (m rows of k) to int8 with scale `max|x| / 127`,
/// rounding to nearest: the same rule as ggml's `quantize_row_q8_0` (whose scale is then
/// stored as f16; here it stays f32).
pub fn quantize_acts(x: &[f32]) -> QuantizedActs {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK];
    for ((blk, q), d) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(&mut d) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in q.iter_mut().zip(blk) {
            *q = (v * id).round() as i8;
        }
    }
    QuantizedActs { qs, d }
}

/// Whether [`matmul`] can run `format` on this CPU.
pub fn supports(format: WeightFormat) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(format, WeightFormat::Q4_0 | WeightFormat::Q8_0) {
        return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    }
    let _ = format;
    false
}

/// AVX-VNNI where the CPU has it, unless `YANGTUO_CPU_VNNI=0` (to measure or test the
/// AVX2 path on such a CPU).
#[cfg(target_arch = "x86_64")]
fn use_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        is_x86_feature_detected!("avxvnni")
            && std::env::var("YANGTUO_CPU_VNNI").as_deref() != Ok("0")
    })
}

/// Output rows `rows` of `dst[m, n]` (row-major, n columns) for weights `w` in `format`,
/// which must satisfy [`supports`]. `w` holds all n rows; k is a multiple of 32.
///
/// # Safety
/// `dst` must point at `m * n` writable f32 that no other thread writes in `rows`' columns.
pub unsafe fn matmul_rows(
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    x: &QuantizedActs,
    w: &[u8],
    rows: std::ops::Range<usize>,
    dst: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: passed on from the caller.
    unsafe {
        rows_x86(use_vnni(), format, (m, k, n), x, w, rows, dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, m, k, n, x, w, rows, dst);
        unreachable!("supports() is false off x86-64")
    }
}

/// [`matmul_rows`] with the choice of AVX-VNNI made by the caller.
#[cfg(target_arch = "x86_64")]
unsafe fn rows_x86(
    vnni: bool,
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    x: &QuantizedActs,
    w: &[u8],
    rows: std::ops::Range<usize>,
    dst: *mut f32,
) {
    assert!(supports(format) && k % QK == 0 && x.qs.len() == m * k);
    assert!(!vnni || is_x86_feature_detected!("avxvnni"));
    let row_bytes = k / QK * format.block_bytes();
    assert!(w.len() >= n * row_bytes && rows.end <= n);
    for r in rows {
        let wr = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut t = 0;
        while t < m {
            let mut out = [0f32; TILE];
            let tile = if m - t >= TILE { TILE } else { 1 };
            // SAFETY: the features were checked (`supports`, `vnni`); slices are in bounds.
            unsafe {
                macro_rules! go {
                    ($f:ident) => {
                        match (format, tile) {
                            (WeightFormat::Q4_0, TILE) => $f::<Q4_0, TILE>(wr, x, k, t, &mut out),
                            (WeightFormat::Q4_0, _) => $f::<Q4_0, 1>(wr, x, k, t, &mut out),
                            (_, TILE) => $f::<Q8_0, TILE>(wr, x, k, t, &mut out),
                            (_, _) => $f::<Q8_0, 1>(wr, x, k, t, &mut out),
                        }
                    };
                }
                if vnni {
                    go!(row_tile_vnni)
                } else {
                    go!(row_tile_avx2)
                }
            }
            for (i, v) in out[..tile].iter().enumerate() {
                // SAFETY: the caller owns column r of dst; (t + i) < m.
                unsafe { *dst.add((t + i) * n + r) = *v };
            }
            t += tile;
        }
    }
}

/// One weight block format: its byte size and how to read it as 32 signed int8 values.
#[cfg(target_arch = "x86_64")]
trait Block {
    const BYTES: usize;
    /// (scale, the 32 int8 values) of the block at `p`.
    unsafe fn load(p: *const u8) -> (f32, __m256i);
}

#[cfg(target_arch = "x86_64")]
struct Q4_0;
#[cfg(target_arch = "x86_64")]
struct Q8_0;

#[cfg(target_arch = "x86_64")]
fn scale_at(p: *const u8) -> f32 {
    // SAFETY: every block starts with its f16 scale; callers pass in-bounds blocks.
    f16::from_bits(u16::from_le_bytes(unsafe { [*p, *p.add(1)] })).to_f32()
}

#[cfg(target_arch = "x86_64")]
impl Block for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (f32, __m256i) {
        unsafe {
            let packed = _mm_loadu_si128(p.add(2) as *const __m128i);
            // low nibbles → elements 0..16 (lower lane), high nibbles → 16..32 (upper lane)
            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
            let nibbles = _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
            (scale_at(p), _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8)))
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Block for Q8_0 {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (f32, __m256i) {
        unsafe { (scale_at(p), _mm256_loadu_si256(p.add(2) as *const __m256i)) }
    }
}

/// `out[j] = Σ_b dw·dx · (qw · qx)` for one weight row `wr` and tokens `t0 .. t0 + T`.
/// `$dot(a, b)` sums u8 `a` times i8 `b` over groups of four bytes into eight i32.
macro_rules! row_tile {
    ($name:ident, $features:literal, $dot:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<B: Block, const T: usize>(
            wr: &[u8],
            x: &QuantizedActs,
            k: usize,
            t0: usize,
            out: &mut [f32; TILE],
        ) {
            let nb = k / QK;
            let mut acc = [_mm256_setzero_ps(); T];
            // Eight blocks at a time: their eight i32 lane-sums are reduced into one vector
            // (lane i = block i) before the float conversion and scaling, so those cost one
            // instruction per eight blocks instead of one per block.
            let mut b = 0;
            while b + 8 <= nb {
                // SAFETY: blocks b..b+8 of this row and of tokens t0..t0+T lie inside wr / x
                // (the caller asserted the lengths).
                unsafe {
                    let mut qw = [_mm256_setzero_si256(); 8];
                    let mut aw = [_mm256_setzero_si256(); 8];
                    let mut dw = [0f32; 8];
                    for i in 0..8 {
                        (dw[i], qw[i]) = B::load(wr.as_ptr().add((b + i) * B::BYTES));
                        aw[i] = _mm256_sign_epi8(qw[i], qw[i]);
                    }
                    let dw = _mm256_loadu_ps(dw.as_ptr());
                    for j in 0..T {
                        let first = (t0 + j) * nb + b;
                        let dot = |i: usize| {
                            let qx = _mm256_loadu_si256(
                                x.qs.as_ptr().add((first + i) * QK) as *const __m256i
                            );
                            $dot(aw[i], _mm256_sign_epi8(qx, qw[i]))
                        };
                        let sums = _mm256_cvtepi32_ps(sum_lanes_of_8(
                            dot(0),
                            dot(1),
                            dot(2),
                            dot(3),
                            dot(4),
                            dot(5),
                            dot(6),
                            dot(7),
                        ));
                        let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(first)));
                        acc[j] = _mm256_fmadd_ps(sums, scale, acc[j]);
                    }
                }
                b += 8;
            }
            for b in b..nb {
                // SAFETY: as above, for block b.
                unsafe {
                    let (dw, qw) = B::load(wr.as_ptr().add(b * B::BYTES));
                    let dw = _mm256_set1_ps(dw);
                    let aw = _mm256_sign_epi8(qw, qw);
                    for j in 0..T {
                        let block = (t0 + j) * nb + b;
                        let qx =
                            _mm256_loadu_si256(x.qs.as_ptr().add(block * QK) as *const __m256i);
                        let sums = _mm256_cvtepi32_ps($dot(aw, _mm256_sign_epi8(qx, qw)));
                        let scale =
                            _mm256_mul_ps(dw, _mm256_broadcast_ss(x.d.get_unchecked(block)));
                        acc[j] = _mm256_fmadd_ps(sums, scale, acc[j]);
                    }
                }
            }
            for j in 0..T {
                out[j] = hsum(acc[j]);
            }
        }
    };
}

row_tile!(row_tile_avx2, "avx2,fma", |a, b| _mm256_madd_epi16(
    _mm256_maddubs_epi16(a, b),
    _mm256_set1_epi16(1)
));
// AVX-VNNI (Zen 4, Alder Lake and later): one instruction, which also cannot saturate.
row_tile!(row_tile_vnni, "avx2,fma,avxvnni", |a, b| {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b)
});

/// Lane i of the result is the sum of the eight lanes of argument i.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn sum_lanes_of_8(
    p0: __m256i,
    p1: __m256i,
    p2: __m256i,
    p3: __m256i,
    p4: __m256i,
    p5: __m256i,
    p6: __m256i,
    p7: __m256i,
) -> __m256i {
    // per 128-bit half: [Σ0, Σ1, Σ2, Σ3] of that half's lanes, then the halves added
    let lo = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
    let hi = _mm256_hadd_epi32(_mm256_hadd_epi32(p4, p5), _mm256_hadd_epi32(p6, p7));
    _mm256_add_epi32(
        _mm256_permute2x128_si256(lo, hi, 0x20),
        _mm256_permute2x128_si256(lo, hi, 0x31),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain f64 loop over the same quantized values: the kernel's only error is
    /// f32 accumulation. (The reference against gguf-py's dequantizers, which bounds the
    /// activation quantization too, is in tests/tests/quant.rs.)
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn matches_the_integer_dot_product_on_odd_shapes() {
        for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
            if !supports(format) {
                eprintln!("skipped: no AVX2 here");
                return;
            }
            for (m, k, n) in [
                (1, 32, 1),
                (3, 96, 5),
                (7, 160, 9),
                (9, 352, 4),
                (13, 2048, 3),
                (17, 8 * 32 + 32 * 3, 2),
            ] {
                let mut s = 0x2545_f491_u32;
                let mut rnd = || {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    s as f32 / u32::MAX as f32 * 2.0 - 1.0
                };
                let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let w = crate::quant::quantize(format, &wf);
                let mut wd = vec![0f32; n * k];
                crate::quant::dequantize(format, &w, &mut wd);
                let xq = quantize_acts(&x);
                for vnni in [false, is_x86_feature_detected!("avxvnni")] {
                    let mut dst = vec![0f32; m * n];
                    unsafe { rows_x86(vnni, format, (m, k, n), &xq, &w, 0..n, dst.as_mut_ptr()) };
                    for t in 0..m {
                        for r in 0..n {
                            let want: f64 = (0..k)
                                .map(|i| {
                                    wd[r * k + i] as f64
                                        * xq.d[(t * k + i) / QK] as f64
                                        * xq.qs[t * k + i] as f64
                                })
                                .sum();
                            let got = dst[t * n + r] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{format:?} {m}x{k}x{n} vnni={vnni} [{t},{r}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
