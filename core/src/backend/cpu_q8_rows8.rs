//! Eight weight rows at a time on AVX2 (with AVX-VNNI where present), for Q4_0, Q8_0 and
//! Q4_K: the 256-bit twin of cpu_q8_rows16.rs (see its doc), for CPUs without AVX-512.
//! The 32 weights of a block of 8 rows are transposed into eight vectors, vector c holding
//! weights 4c..4c+4 of every row (lane l: row σ(l)), and each product with the broadcast
//! inputs adds to a row's own lane: no horizontal reduction.
//!
//! Without VNNI a product is `maddubs` (u8 × i8 pairs into i16) and `madd` (into i32).
//! A pair of Q4 nibbles times int8 inputs is at most 2 · 15 · 128 and fits an i16; Q8_0
//! takes the sign trick (|w| times x with w's sign), at most 2 · 127 · 127.

// the loops index lanes, rows and vectors of several arrays at once
#![allow(clippy::needless_range_loop)]

use super::cpu_q8_gemm::{QK, QuantizedActs, q4k_scales};
use std::arch::x86_64::*;

/// Rows per group.
pub const ROWS: usize = 8;
/// Tokens per register tile. With 8 weight vectors that is more accumulators than AVX2 has
/// registers left, but the spills cost less than transposing for fewer tokens (4 or 16 ran
/// 10-30 % slower on Q4_0).
const TILE: usize = 8;
/// The fewest tokens worth transposing for (the callers take another path for fewer).
pub const MIN_TOKENS: usize = TILE;

/// Lane l holds row σ(l) = 2·(l mod 4) + l / 4.
const SIGMA: [u32; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Row r is in lane σ⁻¹(r).
const SIGMA_INV: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Block b of eight rows, unpacked: `w = scale · q − min` per lane (row).
struct Block8 {
    chunks: [__m256i; 8],
    scale: __m256,
    min: __m256,
}

/// A weight format read eight rows at a time.
trait Format8 {
    /// q is signed (Q8_0): the products take the sign trick.
    const SIGNED: bool = false;
    /// Per-group state kept across blocks (Q4_K's decoded scales of a super-block).
    type Scratch: Default;
    /// Block b (32 weights) of the rows starting at `rows`, `row_bytes` apart.
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block8, scratch: &mut Self::Scratch);
}

/// Word j (bytes 4j..4j+4) of the 16 bytes at `at + r · stride` for each row r, in
/// vector j, lane l holding row σ(l): 4×4 transposes of 32-bit words per 128-bit lane.
#[inline(always)]
unsafe fn transpose(at: *const u8, stride: usize) -> [__m256i; 4] {
    unsafe {
        let row = |r: usize| _mm_loadu_si128(at.add(r * stride) as *const __m128i);
        // a_q, 128-bit lane c: row 2q + c
        let mut a = [_mm256_setzero_si256(); 4];
        for q in 0..4 {
            a[q] = _mm256_set_m128i(row(2 * q + 1), row(2 * q));
        }
        let t0 = _mm256_unpacklo_epi32(a[0], a[1]);
        let t1 = _mm256_unpackhi_epi32(a[0], a[1]);
        let t2 = _mm256_unpacklo_epi32(a[2], a[3]);
        let t3 = _mm256_unpackhi_epi32(a[2], a[3]);
        [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ]
    }
}

/// The f16 at `at + σ(l) · stride` in lane l, as f32.
#[inline(always)]
unsafe fn halves(at: *const u8, stride: usize) -> __m256 {
    let mut bits = [0u16; 8];
    for l in 0..8 {
        bits[l] = unsafe { (at.add(SIGMA[l] as usize * stride) as *const u16).read_unaligned() };
    }
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const __m128i)) }
}

#[inline(always)]
unsafe fn low_nibbles(v: __m256i) -> __m256i {
    unsafe { _mm256_and_si256(v, _mm256_set1_epi8(0x0f)) }
}

#[inline(always)]
unsafe fn high_nibbles(v: __m256i) -> __m256i {
    unsafe { _mm256_and_si256(_mm256_srli_epi16::<4>(v), _mm256_set1_epi8(0x0f)) }
}

struct Q4_0;
impl Format8 for Q4_0 {
    type Scratch = ();
    #[inline(always)]
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block8, _: &mut ()) {
        unsafe {
            let block = rows.add(b * 18);
            // byte i: weight i in the low nibble, 16 + i in the high one
            let z = transpose(block.add(2), row_bytes);
            for j in 0..4 {
                out.chunks[j] = low_nibbles(z[j]);
                out.chunks[4 + j] = high_nibbles(z[j]);
            }
            out.scale = halves(block, row_bytes);
            out.min = _mm256_mul_ps(out.scale, _mm256_set1_ps(8.0));
        }
    }
}

struct Q8_0;
impl Format8 for Q8_0 {
    const SIGNED: bool = true;
    type Scratch = ();
    #[inline(always)]
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block8, _: &mut ()) {
        unsafe {
            let block = rows.add(b * 34);
            let (lo, hi) = (transpose(block.add(2), row_bytes), transpose(block.add(18), row_bytes));
            out.chunks[..4].copy_from_slice(&lo);
            out.chunks[4..].copy_from_slice(&hi);
            out.scale = halves(block, row_bytes);
            out.min = _mm256_setzero_ps();
        }
    }
}

struct Q4K;
/// The scales and mins of one super-block's eight sub-blocks, lanes in σ order.
#[derive(Default)]
struct Q4KScales {
    scale: [[f32; 8]; 8],
    min: [[f32; 8]; 8],
}
impl Format8 for Q4K {
    type Scratch = Q4KScales;
    #[inline(always)]
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block8, s: &mut Q4KScales) {
        unsafe {
            let superblock = rows.add(b / 8 * 144);
            if b.is_multiple_of(8) {
                for l in 0..8 {
                    let (scale, min) = q4k_scales(superblock.add(SIGMA[l] as usize * row_bytes));
                    for j in 0..8 {
                        (s.scale[j][l], s.min[j][l]) = (scale[j], min[j]);
                    }
                }
            }
            // sub-block j: the low (even j) or high nibbles of bytes 32·(j/2) .. + 32
            let j = b % 8;
            let bytes = superblock.add(16 + 32 * (j / 2));
            let (lo, hi) = (transpose(bytes, row_bytes), transpose(bytes.add(16), row_bytes));
            for c in 0..4 {
                let (first, second) = if j.is_multiple_of(2) {
                    (low_nibbles(lo[c]), low_nibbles(hi[c]))
                } else {
                    (high_nibbles(lo[c]), high_nibbles(hi[c]))
                };
                out.chunks[c] = first;
                out.chunks[4 + c] = second;
            }
            out.scale = _mm256_loadu_ps(s.scale[j].as_ptr());
            out.min = _mm256_loadu_ps(s.min[j].as_ptr());
        }
    }
}

/// Whether [`matmul_rows8`] takes `format`.
pub fn supports(format: crate::weights::WeightFormat) -> bool {
    use crate::weights::WeightFormat as F;
    matches!(format, F::Q4_0 | F::Q8_0 | F::Q4K)
}

/// Output rows `r0 .. r0 + 8` of `dst[m, n]` for tokens `tokens`, weights `w` in `format`
/// (which [`supports`]), `row_bytes` per row; with AVX-VNNI if `vnni`.
///
/// # Safety
/// AVX2, FMA and F16C (and AVX-VNNI if `vnni`) are present; `w` holds rows r0..r0+8; x
/// holds the tokens; `dst` points at `m * n` f32 of which no other thread writes these
/// rows' columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_rows8(
    vnni: bool,
    format: crate::weights::WeightFormat,
    (k, n): (usize, usize),
    x: &QuantizedActs,
    w: &[u8],
    row_bytes: usize,
    r0: usize,
    tokens: std::ops::Range<usize>,
    dst: *mut f32,
) {
    use crate::weights::WeightFormat as F;
    assert!(w.len() >= (r0 + ROWS) * row_bytes && r0 + ROWS <= n);
    macro_rules! run {
        ($tile:ident) => {{
            // SAFETY: passed on from the caller.
            unsafe {
                let rows = w.as_ptr().add(r0 * row_bytes);
                let mut t = tokens.start;
                while t < tokens.end {
                    let tile = if tokens.end - t >= TILE { TILE } else { 1 };
                    let out = dst.add(t * n + r0);
                    match (format, tile) {
                        (F::Q4_0, TILE) => $tile::<Q4_0, TILE>(rows, row_bytes, x, k, t, out, n),
                        (F::Q4_0, _) => $tile::<Q4_0, 1>(rows, row_bytes, x, k, t, out, n),
                        (F::Q8_0, TILE) => $tile::<Q8_0, TILE>(rows, row_bytes, x, k, t, out, n),
                        (F::Q8_0, _) => $tile::<Q8_0, 1>(rows, row_bytes, x, k, t, out, n),
                        (_, TILE) => $tile::<Q4K, TILE>(rows, row_bytes, x, k, t, out, n),
                        (_, _) => $tile::<Q4K, 1>(rows, row_bytes, x, k, t, out, n),
                    }
                    t += tile;
                }
            }
        }};
    }
    if vnni { run!(tile8_vnni) } else { run!(tile8_avx2) }
}

/// `out[j·n + r] = W_r · x_(t0+j)` for the 8 rows at `rows` and T tokens from t0;
/// `$dot(acc, a, b)` adds u8 `a` times i8 `b` over groups of four bytes to the i32 `acc`.
macro_rules! tile8 {
    ($name:ident, $features:literal, $dot:expr) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<F: Format8, const T: usize>(
            rows: *const u8,
            row_bytes: usize,
            x: &QuantizedActs,
            k: usize,
            t0: usize,
            out: *mut f32,
            n: usize,
        ) {
            let nb = k / QK;
            let zero = _mm256_setzero_si256();
            let mut blk = Block8 { chunks: [zero; 8], scale: _mm256_setzero_ps(), min: _mm256_setzero_ps() };
            let mut scratch = F::Scratch::default();
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                // SAFETY (here and below): block b of every row lies in the rows; tokens
                // t0..t0+T of x exist (the caller's contract).
                unsafe {
                    F::load(rows, row_bytes, b, &mut blk, &mut scratch);
                    for j in 0..T {
                        let i = (t0 + j) * nb + b;
                        let xq = x.qs.as_ptr().add(i * QK) as *const i32;
                        // two chains, so that latency does not bound a single token
                        let mut even = zero;
                        let mut odd = zero;
                        for c in (0..8).step_by(2) {
                            for (sum, c) in [(&mut even, c), (&mut odd, c + 1)] {
                                let xb = _mm256_set1_epi32(xq.add(c).read_unaligned());
                                let w = blk.chunks[c];
                                *sum = if F::SIGNED {
                                    $dot(*sum, _mm256_sign_epi8(w, w), _mm256_sign_epi8(xb, w))
                                } else {
                                    $dot(*sum, w, xb)
                                };
                            }
                        }
                        let sums = _mm256_cvtepi32_ps(_mm256_add_epi32(even, odd));
                        let dx = _mm256_set1_ps(*x.d.get_unchecked(i));
                        acc[j] = _mm256_fmadd_ps(sums, _mm256_mul_ps(blk.scale, dx), acc[j]);
                        if !F::SIGNED {
                            acc[j] = _mm256_fnmadd_ps(blk.min, _mm256_set1_ps(*x.sum.get_unchecked(i)), acc[j]);
                        }
                    }
                }
            }
            // SAFETY: SIGMA_INV is 8 u32; the caller owns these 8 columns of rows t0..t0+T.
            unsafe {
                let order = _mm256_loadu_si256(SIGMA_INV.as_ptr() as *const __m256i);
                for j in 0..T {
                    _mm256_storeu_ps(out.add(j * n), _mm256_permutevar8x32_ps(acc[j], order));
                }
            }
        }
    };
}

tile8!(tile8_avx2, "avx2,fma,f16c", |acc, a, b| _mm256_add_epi32(
    acc,
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
));
tile8!(tile8_vnni, "avx2,fma,f16c,avxvnni", |acc, a, b| _mm256_dpbusd_avx_epi32(acc, a, b));
