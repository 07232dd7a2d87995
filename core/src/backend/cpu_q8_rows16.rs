//! Sixteen weight rows at a time on AVX-512 VNNI, for Q4_0, Q8_0 and Q4_K: the product of
//! cpu_q8_gemm.rs (same int8 activations, same math, see its doc) with the rows in the
//! lanes. The 32 weights of a block of 16 rows are transposed in registers into eight
//! vectors, vector c holding weights 4c..4c+4 of every row (lane l: row σ(l)), so that
//!   vpdpbusd(acc, vector c, broadcast of the token's inputs 4c..4c+4)
//! adds four products to each row's own lane. A block's sum then needs no horizontal
//! reduction: one conversion and two FMAs scale all sixteen rows. The weights of a block
//! are unpacked once for `TILE` tokens, as in cpu_q8_gemm.rs.
//!
//! Why the transpose happens here rather than once at load time (as llama.cpp repacks
//! Q4_0): the CPU backend computes on the mapped file, and a repacked copy would double
//! the resident size of the weights while the file's pages are cached.

// the loops index lanes, rows and vectors of several arrays at once
#![allow(clippy::needless_range_loop)]

use super::cpu_q8_gemm::{QK, QuantizedActs, q4k_scales};
use std::arch::x86_64::*;

/// Rows per group.
pub const ROWS: usize = 16;
/// The fewest tokens worth transposing for (the callers take another path for fewer).
pub const MIN_TOKENS: usize = HALF;
/// Tokens per register tile (16 accumulators beside the 8 weight vectors; 8 ran 4 % slower),
/// and a half tile for what is left.
const TILE: usize = 16;
const HALF: usize = 8;

/// The lane order of a transposed group: lane l holds row σ(l) = 4·(l mod 4) + l / 4
/// (an involution, so the same index vector puts results back in row order).
const SIGMA: [u32; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/// Block b of sixteen rows, unpacked: `w = scale · q − min` per lane (row), q as u8.
struct Block16 {
    chunks: [__m512i; 8],
    scale: __m512,
    min: __m512,
}

/// A weight format read sixteen rows at a time.
trait Format16 {
    /// Per-group state kept across blocks (Q4_K's decoded scales of a super-block).
    type Scratch: Default;
    /// Block b (32 weights) of the rows starting at `rows`, `row_bytes` apart.
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block16, scratch: &mut Self::Scratch);
}

/// Word j (bytes 4j..4j+4) of the 16 bytes at `at + r · stride` for each row r, in
/// vector j, lane l holding row σ(l): four 4×4 transposes of 32-bit words, one per 128-bit
/// lane. (No `from_fn` closures with AVX-512 intrinsics here or in the loads below: a
/// closure does not inherit the caller's target features, so they would not inline.)
#[inline(always)]
unsafe fn transpose(at: *const u8, stride: usize) -> [__m512i; 4] {
    unsafe {
        let row = |r: usize| _mm_loadu_si128(at.add(r * stride) as *const __m128i);
        // a_q, 128-bit lane c: row 4q + c
        let mut a = [_mm512_setzero_si512(); 4];
        for q in 0..4 {
            let z = _mm512_castsi128_si512(row(4 * q));
            let z = _mm512_inserti32x4::<1>(z, row(4 * q + 1));
            let z = _mm512_inserti32x4::<2>(z, row(4 * q + 2));
            a[q] = _mm512_inserti32x4::<3>(z, row(4 * q + 3));
        }
        let t0 = _mm512_unpacklo_epi32(a[0], a[1]); // words 0, 1 of a0, a1
        let t1 = _mm512_unpackhi_epi32(a[0], a[1]); // words 2, 3
        let t2 = _mm512_unpacklo_epi32(a[2], a[3]);
        let t3 = _mm512_unpackhi_epi32(a[2], a[3]);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    }
}

/// The f16 at `at + σ(l) · stride` in lane l, as f32.
#[inline(always)]
unsafe fn halves(at: *const u8, stride: usize) -> __m512 {
    let mut bits = [0u16; 16];
    for l in 0..16 {
        bits[l] = unsafe { (at.add(SIGMA[l] as usize * stride) as *const u16).read_unaligned() };
    }
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(bits.as_ptr() as *const __m256i)) }
}

#[inline(always)]
unsafe fn low_nibbles(v: __m512i) -> __m512i {
    unsafe { _mm512_and_si512(v, _mm512_set1_epi8(0x0f)) }
}

#[inline(always)]
unsafe fn high_nibbles(v: __m512i) -> __m512i {
    unsafe { _mm512_and_si512(_mm512_srli_epi16::<4>(v), _mm512_set1_epi8(0x0f)) }
}

pub struct Q4_0;
impl Format16 for Q4_0 {
    type Scratch = ();
    #[inline(always)]
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block16, _: &mut ()) {
        unsafe {
            let block = rows.add(b * 18);
            // byte i: weight i in the low nibble, 16 + i in the high one
            let z = transpose(block.add(2), row_bytes);
            for j in 0..4 {
                out.chunks[j] = low_nibbles(z[j]);
                out.chunks[4 + j] = high_nibbles(z[j]);
            }
            out.scale = halves(block, row_bytes);
            out.min = _mm512_mul_ps(out.scale, _mm512_set1_ps(8.0));
        }
    }
}

pub struct Q8_0;
impl Format16 for Q8_0 {
    type Scratch = ();
    #[inline(always)]
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block16, _: &mut ()) {
        unsafe {
            let block = rows.add(b * 34);
            // q + 128 as u8, and 128 · scale as the min (cpu_q8_gemm::row_tile_avx512)
            let flip = _mm512_set1_epi8(-128);
            let (lo, hi) = (transpose(block.add(2), row_bytes), transpose(block.add(18), row_bytes));
            for j in 0..4 {
                out.chunks[j] = _mm512_xor_si512(lo[j], flip);
                out.chunks[4 + j] = _mm512_xor_si512(hi[j], flip);
            }
            out.scale = halves(block, row_bytes);
            out.min = _mm512_mul_ps(out.scale, _mm512_set1_ps(128.0));
        }
    }
}

pub struct Q4K;
/// The scales and mins of one super-block's eight sub-blocks, lanes in σ order.
#[derive(Default)]
pub struct Q4KScales {
    scale: [[f32; 16]; 8],
    min: [[f32; 16]; 8],
}
impl Format16 for Q4K {
    type Scratch = Q4KScales;
    #[inline(always)]
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block16, s: &mut Q4KScales) {
        unsafe {
            // ggml's block_q4_K: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 of nibbles
            let superblock = rows.add(b / 8 * 144);
            if b.is_multiple_of(8) {
                for l in 0..16 {
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
            out.scale = _mm512_loadu_ps(s.scale[j].as_ptr());
            out.min = _mm512_loadu_ps(s.min[j].as_ptr());
        }
    }
}

/// Whether [`matmul_rows16`] takes `format`.
pub fn supports(format: crate::weights::WeightFormat) -> bool {
    use crate::weights::WeightFormat as F;
    matches!(format, F::Q4_0 | F::Q8_0 | F::Q4K)
}

/// Output rows `r0 .. r0 + 16` of `dst[m, n]` for tokens `first .. end`, weights `w` in
/// `format` (which [`supports`]), `row_bytes` per row.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI are present; `w` holds rows r0..r0+16; x holds tokens first..end;
/// `dst` points at `m * n` f32 of which no other thread writes these rows' columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_rows16(
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
    // SAFETY: passed on from the caller.
    unsafe {
        let rows = w.as_ptr().add(r0 * row_bytes);
        let mut t = tokens.start;
        while t < tokens.end {
            let tile = match tokens.end - t {
                left if left >= TILE => TILE,
                left if left >= HALF => HALF,
                _ => 1,
            };
            let out = dst.add(t * n + r0);
            match (format, tile) {
                (F::Q4_0, TILE) => tile16::<Q4_0, TILE>(rows, row_bytes, x, k, t, out, n),
                (F::Q4_0, HALF) => tile16::<Q4_0, HALF>(rows, row_bytes, x, k, t, out, n),
                (F::Q4_0, _) => tile16::<Q4_0, 1>(rows, row_bytes, x, k, t, out, n),
                (F::Q8_0, TILE) => tile16::<Q8_0, TILE>(rows, row_bytes, x, k, t, out, n),
                (F::Q8_0, HALF) => tile16::<Q8_0, HALF>(rows, row_bytes, x, k, t, out, n),
                (F::Q8_0, _) => tile16::<Q8_0, 1>(rows, row_bytes, x, k, t, out, n),
                (_, TILE) => tile16::<Q4K, TILE>(rows, row_bytes, x, k, t, out, n),
                (_, HALF) => tile16::<Q4K, HALF>(rows, row_bytes, x, k, t, out, n),
                (_, _) => tile16::<Q4K, 1>(rows, row_bytes, x, k, t, out, n),
            }
            t += tile;
        }
    }
}

/// `out[j·n + r] = W_r · x_(t0+j)` for the 16 rows at `rows` and T tokens from t0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile16<F: Format16, const T: usize>(
    rows: *const u8,
    row_bytes: usize,
    x: &QuantizedActs,
    k: usize,
    t0: usize,
    out: *mut f32,
    n: usize,
) {
    let nb = k / QK;
    let zero = _mm512_setzero_si512();
    let mut blk = Block16 { chunks: [zero; 8], scale: _mm512_setzero_ps(), min: _mm512_setzero_ps() };
    let mut scratch = F::Scratch::default();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        // SAFETY (here and below): block b of every row lies in the rows; tokens t0..t0+T
        // of x exist (the caller's contract).
        unsafe {
            F::load(rows, row_bytes, b, &mut blk, &mut scratch);
            for j in 0..T {
                let i = (t0 + j) * nb + b;
                let xq = x.qs.as_ptr().add(i * QK) as *const i32;
                // two chains, so that vpdpbusd latency does not bound a single token
                let mut even = zero;
                let mut odd = zero;
                for c in (0..8).step_by(2) {
                    even = _mm512_dpbusd_epi32(even, blk.chunks[c], _mm512_set1_epi32(xq.add(c).read_unaligned()));
                    odd = _mm512_dpbusd_epi32(odd, blk.chunks[c + 1], _mm512_set1_epi32(xq.add(c + 1).read_unaligned()));
                }
                let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
                let dx = _mm512_set1_ps(*x.d.get_unchecked(i));
                acc[j] = _mm512_fmadd_ps(sums, _mm512_mul_ps(blk.scale, dx), acc[j]);
                acc[j] = _mm512_fnmadd_ps(blk.min, _mm512_set1_ps(*x.sum.get_unchecked(i)), acc[j]);
            }
        }
    }
    // SAFETY: SIGMA is 16 u32; the caller owns these 16 columns of rows t0..t0+T.
    unsafe {
        let order = _mm512_loadu_si512(SIGMA.as_ptr() as *const __m512i);
        for j in 0..T {
            _mm512_storeu_ps(out.add(j * n), _mm512_permutexvar_ps(order, acc[j]));
        }
    }
}
