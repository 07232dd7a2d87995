//! One weight row at a time against a tile of tokens (decode, Q6_K, and the rows and
//! tokens the row-group kernel of group.rs leaves over). The math is in mod.rs's doc.

use super::blocks::{QK, QuantizedActs, f16_at};
use crate::backend::cpu::simd::{Isa, hsum};
use crate::weights::WeightFormat;
use std::arch::x86_64::*;

/// Tokens per register tile.
pub const TILE: usize = 8;

/// `out[j] = W_r · x_(t0+j)` for the weight row `wr` and `tokens` (1, 2, 4 or [`TILE`])
/// tokens from t0. Each token's sum runs in the same order at every tile size, so a token's
/// product does not depend on how many others share it (batch invariance).
///
/// # Safety
/// `isa` is present; `format` is one of mod.rs's [`super::supports`]; `wr` is one row of k
/// weights and x holds the tokens.
#[allow(clippy::too_many_arguments)]
pub unsafe fn products(
    isa: Isa,
    format: WeightFormat,
    wr: &[u8],
    x: &QuantizedActs,
    k: usize,
    t0: usize,
    tokens: usize,
    out: &mut [f32; TILE],
) {
    // SAFETY: passed on from the caller.
    unsafe {
        match (format, tokens) {
            (WeightFormat::Q8_0, TILE) => row::<Q8_0, TILE>(isa, wr, x, k, t0, out),
            (WeightFormat::Q8_0, 4) => row::<Q8_0, 4>(isa, wr, x, k, t0, out),
            (WeightFormat::Q8_0, 2) => row::<Q8_0, 2>(isa, wr, x, k, t0, out),
            (WeightFormat::Q8_0, _) => row::<Q8_0, 1>(isa, wr, x, k, t0, out),
            (_, TILE) => row::<Q6K, TILE>(isa, wr, x, k, t0, out),
            (_, 4) => row::<Q6K, 4>(isa, wr, x, k, t0, out),
            (_, 2) => row::<Q6K, 2>(isa, wr, x, k, t0, out),
            (_, _) => row::<Q6K, 1>(isa, wr, x, k, t0, out),
        }
    }
}

/// `out[j] = W_r · x_(t0+j)` for the weight row `wr` and tokens `t0 .. t0 + T`: whole
/// groups of eight blocks, then the tail.
///
/// # Safety
/// `isa` is present; `wr` is one row of k weights and x holds tokens t0..t0+T.
unsafe fn row<F: Format, const T: usize>(
    isa: Isa,
    wr: &[u8],
    x: &QuantizedActs,
    k: usize,
    t0: usize,
    out: &mut [f32; TILE],
) {
    let nb = k / QK;
    let whole = nb / 8 * 8;
    // SAFETY: passed on from the caller.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); T];
        match isa {
            Isa::Avx512Vnni if !F::HAS_LANE => {
                row_tile_avx512::<F, T, true>(wr, x, k, t0, 0..whole, &mut acc);
                row_tile_avx512::<F, T, false>(wr, x, k, t0, whole..nb, &mut acc);
            }
            // Q6_K's per-16 lane scales: the 256-bit kernel, with AVX-512's 32 registers
            Isa::Avx512Vnni => {
                row_tile_vnni512::<F, T, true>(wr, x, k, t0, 0..whole, &mut acc);
                row_tile_vnni512::<F, T, false>(wr, x, k, t0, whole..nb, &mut acc);
            }
            Isa::AvxVnni => {
                row_tile_vnni::<F, T, true>(wr, x, k, t0, 0..whole, &mut acc);
                row_tile_vnni::<F, T, false>(wr, x, k, t0, whole..nb, &mut acc);
            }
            Isa::Avx2 => {
                row_tile_avx2::<F, T, true>(wr, x, k, t0, 0..whole, &mut acc);
                row_tile_avx2::<F, T, false>(wr, x, k, t0, whole..nb, &mut acc);
            }
        }
        for j in 0..T {
            out[j] = hsum(acc[j]);
        }
    }
}

/// Up to eight blocks of 32 weights, unpacked: `w = scale · lane · q − min` (module doc).
struct Blocks {
    q: [__m256i; 8],
    scale: [f32; 8],
    min: [f32; 8],
    /// Per i32 lane of a block's dot product (lanes 0..4 are weights 0..16).
    lane: [__m256i; 8],
}

impl Blocks {
    /// All zero: blocks a load leaves out (the tail of a 32-weight format) add nothing.
    #[inline(always)]
    fn zeroed() -> Blocks {
        // SAFETY: AVX is present wherever the kernels run.
        let zero = unsafe { _mm256_setzero_si256() };
        Blocks {
            q: [zero; 8],
            scale: [0.0; 8],
            min: [0.0; 8],
            lane: [zero; 8],
        }
    }
}

/// A weight format, read eight blocks of 32 at a time: for the k-quants that is one
/// super-block of 256.
trait Format {
    /// Bytes per eight blocks of 32.
    const BYTES: usize;
    const HAS_MIN: bool = false;
    const HAS_LANE: bool = false;
    /// q is never negative, so it can be the unsigned operand as it is (no sign trick).
    const UNSIGNED: bool = false;
    /// Blocks `0..count` of the group at `p` into `b` (count < 8 only for the 32-weight
    /// formats, at the end of a row).
    unsafe fn load(p: *const u8, count: usize, b: &mut Blocks);
}

/// The low (`high = false`) or high nibbles of 32 bytes at `p`, as bytes 0..=15.
#[inline(always)]
unsafe fn nibbles32(p: *const u8, high: bool) -> __m256i {
    unsafe {
        let v = _mm256_loadu_si256(p as *const __m256i);
        let v = if high { _mm256_srli_epi16(v, 4) } else { v };
        _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
    }
}

struct Q8_0;
impl Format for Q8_0 {
    const BYTES: usize = 8 * 34;
    #[inline(always)]
    unsafe fn load(p: *const u8, count: usize, b: &mut Blocks) {
        for i in 0..count {
            // SAFETY: block i < count lies inside the row.
            unsafe {
                let p = p.add(i * 34);
                b.q[i] = _mm256_loadu_si256(p.add(2) as *const __m256i);
                b.scale[i] = f16_at(p);
            }
        }
    }
}

/// ggml's block_q6_K: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, d.
struct Q6K;
impl Format for Q6K {
    const BYTES: usize = 210;
    const HAS_LANE: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8, _count: usize, b: &mut Blocks) {
        // SAFETY: the super-block's 210 bytes lie inside the row.
        unsafe {
            let d = f16_at(p.add(208));
            let scales = p.add(192) as *const i8;
            for j in 0..8 {
                // each half of 128 weights: ql[64] (sub-blocks 0, 1 low nibbles; 2, 3 high),
                // qh[32] (bits 2s..2s+2 for sub-block s)
                let (half, s) = (j / 4, j % 4);
                let low = nibbles32(p.add(64 * half + 32 * (s % 2)), s >= 2);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * half) as *const __m256i);
                let high = _mm256_and_si256(
                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * s as i32)),
                    _mm256_set1_epi8(3),
                );
                let q = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
                b.q[j] = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
                b.scale[j] = d;
                let (s0, s1) = (*scales.add(2 * j) as i32, *scales.add(2 * j + 1) as i32);
                b.lane[j] = _mm256_set_m128i(_mm_set1_epi32(s1), _mm_set1_epi32(s0));
            }
        }
    }
}

/// `out[j] = Σ_b w[b] · x_(t0+j)[b]` for one weight row `wr` and tokens `t0 .. t0 + T`.
/// `$dot(a, b)` sums u8 `a` times i8 `b` over groups of four bytes into eight i32.
macro_rules! row_tile {
    ($name:ident, $features:literal, $dot:expr) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<F: Format, const T: usize, const FULL: bool>(
            wr: &[u8],
            x: &QuantizedActs,
            k: usize,
            t0: usize,
            blocks: std::ops::Range<usize>,
            acc: &mut [__m256; T],
        ) {
            let nb = k / QK;
            let zero = _mm256_setzero_si256();
            let mut w = Blocks::zeroed();
            let mut abs = [zero; 8];
            for b in blocks.step_by(8) {
                // a constant 8 in the FULL instance, where everything below unrolls
                let count = if FULL { 8 } else { (nb - b).min(8) };
                // SAFETY: blocks b..b+count of this row and of tokens t0..t0+T lie inside
                // wr / x (the caller asserted the lengths).
                unsafe {
                    F::load(wr.as_ptr().add(b / 8 * F::BYTES), count, &mut w);
                    if !F::UNSIGNED {
                        for i in 0..8 {
                            abs[i] = _mm256_sign_epi8(w.q[i], w.q[i]);
                        }
                    }
                    let scale = _mm256_loadu_ps(w.scale.as_ptr());
                    let min = _mm256_loadu_ps(w.min.as_ptr());
                    for j in 0..T {
                        let first = (t0 + j) * nb + b;
                        let dot = |i: usize| {
                            if i >= count {
                                return zero;
                            }
                            let qx = _mm256_loadu_si256(
                                x.qs.as_ptr().add((first + i) * QK) as *const __m256i
                            );
                            let d = if F::UNSIGNED {
                                $dot(w.q[i], qx)
                            } else {
                                $dot(abs[i], _mm256_sign_epi8(qx, w.q[i]))
                            };
                            if F::HAS_LANE {
                                _mm256_mullo_epi32(d, w.lane[i])
                            } else {
                                d
                            }
                        };
                        let sums = sum_lanes_of_8(
                            dot(0),
                            dot(1),
                            dot(2),
                            dot(3),
                            dot(4),
                            dot(5),
                            dot(6),
                            dot(7),
                        );
                        let min = F::HAS_MIN.then_some(min);
                        acc[j] = scale_blocks(acc[j], sums, scale, min, x, first, count);
                    }
                }
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

row_tile!(
    row_tile_vnni512,
    "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni",
    |a, b| { _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b) }
);

/// As `row_tile!`, two blocks per 512-bit `vpdpbusd`, and for signed q (Q8_0) no sign
/// trick, which AVX-512 lacks: q + 128 goes in unsigned and 128 · scale becomes the min,
///   Σ (q + 128) · qx · scale · dx − 128 · scale · dx · Σ qx = Σ q · qx · scale · dx.
/// Not for formats with lane scales (Q6_K).
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::needless_range_loop)] // j indexes the tokens and acc at once
unsafe fn row_tile_avx512<F: Format, const T: usize, const FULL: bool>(
    wr: &[u8],
    x: &QuantizedActs,
    k: usize,
    t0: usize,
    blocks: std::ops::Range<usize>,
    acc: &mut [__m256; T],
) {
    debug_assert!(!F::HAS_LANE);
    let nb = k / QK;
    let mut w = Blocks::zeroed();
    for b in blocks.step_by(8) {
        let count = if FULL { 8 } else { (nb - b).min(8) };
        // SAFETY: blocks b..b+count of this row and of tokens t0..t0+T lie inside wr / x
        // (the caller asserted the lengths); the masked load reads only blocks < count.
        unsafe {
            F::load(wr.as_ptr().add(b / 8 * F::BYTES), count, &mut w);
            let pairs: [__m512i; 4] = std::array::from_fn(|p| {
                let q = _mm512_inserti64x4(_mm512_castsi256_si512(w.q[2 * p]), w.q[2 * p + 1], 1);
                if F::UNSIGNED {
                    q
                } else {
                    _mm512_xor_si512(q, _mm512_set1_epi8(-128))
                }
            });
            let scale = _mm256_loadu_ps(w.scale.as_ptr());
            let min = if F::UNSIGNED {
                _mm256_loadu_ps(w.min.as_ptr())
            } else {
                _mm256_mul_ps(scale, _mm256_set1_ps(128.0))
            };
            for j in 0..T {
                let first = (t0 + j) * nb + b;
                let dot = |p: usize| {
                    if 2 * p >= count {
                        return _mm512_setzero_si512();
                    }
                    let at = x.qs.as_ptr().add((first + 2 * p) * QK);
                    let qx = if 2 * p + 1 < count {
                        _mm512_loadu_si512(at as *const __m512i)
                    } else {
                        _mm512_maskz_loadu_epi8(u32::MAX as u64, at)
                    };
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), pairs[p], qx)
                };
                let sums = sum_lanes_of_4x2(dot(0), dot(1), dot(2), dot(3));
                let min = (F::HAS_MIN || !F::UNSIGNED).then_some(min);
                acc[j] = scale_blocks(acc[j], sums, scale, min, x, first, count);
            }
        }
    }
}

/// Lane b of the result is the sum of the eight lanes of block b, where argument p holds
/// blocks 2p (lanes 0..8) and 2p + 1 (lanes 8..16).
#[target_feature(enable = "avx512f")]
fn sum_lanes_of_4x2(p0: __m512i, p1: __m512i, p2: __m512i, p3: __m512i) -> __m256i {
    // 128-bit chunk c of `half(a, b)`: block c (of a's two and b's two) summed to 4 lanes
    let half = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4(a, b, 0x88),
            _mm512_shuffle_i32x4(a, b, 0xdd),
        )
    };
    let (lo, hi) = (half(p0, p1), half(p2, p3)); // blocks 0..4 and 4..8
    // per chunk c: [lo0+lo2, hi0+hi2, lo1+lo3, hi1+hi3], then its two halves added
    let t = _mm512_add_epi32(_mm512_unpacklo_epi32(lo, hi), _mm512_unpackhi_epi32(lo, hi));
    let t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
    // lane 4c of t is block c, lane 4c + 1 block 4 + c
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, t))
}

/// `acc + Σ_b (sums_b · scale_b · dx_b − min_b · xsum_b)` over the `count` blocks from
/// activation block `first`, lane b for block b: the float end of every 8-block product.
#[inline(always)]
unsafe fn scale_blocks(
    acc: __m256,
    sums: __m256i,
    scale: __m256,
    min: Option<__m256>,
    x: &QuantizedActs,
    first: usize,
    count: usize,
) -> __m256 {
    // SAFETY: the caller's blocks first..first + count exist; AVX2 and FMA are present.
    unsafe {
        let (dx, xsum) = if count == 8 {
            (
                _mm256_loadu_ps(x.d.as_ptr().add(first)),
                _mm256_loadu_ps(x.sum.as_ptr().add(first)),
            )
        } else {
            let (mut d, mut sum) = ([0f32; 8], [0f32; 8]);
            d[..count].copy_from_slice(&x.d[first..first + count]);
            sum[..count].copy_from_slice(&x.sum[first..first + count]);
            (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_ps(sum.as_ptr()))
        };
        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(scale, dx), acc);
        match min {
            Some(min) => _mm256_fnmadd_ps(min, xsum, acc),
            None => acc,
        }
    }
}

/// Lane i of the result is the sum of the eight lanes of argument i.
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
