//! Prompts through Q8_0 weights with the rows in the lanes: the product of
//! row.rs (same int8 activations, same math, see mod.rs) for 16 rows at a time on
//! AVX-512 VNNI and 8 on AVX2 (with AVX-VNNI where present).
//!
//! The 32 weights of a block of a row group are transposed in registers into eight
//! vectors, vector c holding weights 4c..4c+4 of every row (lane l: row σ(l)), so that
//!   dot(acc, vector c, broadcast of the token's inputs 4c..4c+4)
//! adds four products to each row's own lane. A block's sum then needs no horizontal
//! reduction: one conversion and two FMAs scale all the rows. A block is unpacked once for
//! a tile of tokens.
//!
//! The dot is `vpdpbusd` (u8 × i8 in groups of four into i32), or on plain AVX2 `maddubs`
//! (pairs into i16) and `madd`: a pair of Q4 nibbles times int8 inputs is at most
//! 2 · 15 · 128, and Q8_0 there takes the sign trick (|q| times x with q's sign), at most
//! 2 · 128 · 127. AVX-512 has no sign trick: q + 128 goes in unsigned, and 128 · scale
//! becomes the min.
//!
//! Q4_0 and Q4_K are instead transposed once at load time (packed.rs), which let decode
//! catch up with llama.cpp; Q8_0 is still transposed here, on the mapped file. Packing it
//! too is the same change, not made yet.

// the loops index lanes, rows and vectors of several arrays at once
#![allow(clippy::needless_range_loop)]

use super::blocks::{QK, QuantizedActs};
use crate::backend::cpu::simd::Isa;
use crate::weights::WeightFormat;
use std::arch::x86_64::*;

/// A vector width and its instructions: what the kernel and the loads need. Everything is
/// `#[inline(always)]` without target features of its own, so it inlines into the
/// `#[target_feature]` kernels at the end of the file, where the intrinsics land. (No
/// closures over these: a closure would not inherit the features and not inline.)
trait Lanes {
    /// Rows per group: the i32 lanes of a vector.
    const ROWS: usize;
    /// Tokens per register tile (the next smaller tile is half of it).
    const TILE: usize;
    /// Signed q takes the sign trick (else q + 128 with a min, see the module doc).
    const SIGN_TRICK: bool;
    /// Lane l holds row SIGMA[l].
    const SIGMA: &'static [usize];
    type I: Copy;
    type F: Copy;
    unsafe fn zero() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    /// Word j (bytes 4j..4j+4) of the 16 bytes at `at + SIGMA[l] · stride` in lane l of
    /// vector j.
    unsafe fn transpose(at: *const u8, stride: usize) -> [Self::I; 4];
    /// The first ROWS values, as f32.
    unsafe fn from_f16(bits: &[u16; 16]) -> Self::F;
    /// Each byte + 128 (as u8).
    unsafe fn flip(v: Self::I) -> Self::I;
    /// The four bytes at `p` in every lane.
    unsafe fn broadcast(p: *const i32) -> Self::I;
    /// `acc` + Σ over groups of four bytes of u8 `w` times i8 `x`.
    unsafe fn dot(acc: Self::I, w: Self::I, x: Self::I) -> Self::I;
    /// (|w|, x with w's sign), for `dot` with signed w.
    unsafe fn sign_trick(w: Self::I, x: Self::I) -> (Self::I, Self::I);
    unsafe fn add(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn add_f(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn to_f(v: Self::I) -> Self::F;
    unsafe fn set_f(v: f32) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// a · b + c
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// c − a · b
    unsafe fn fnmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The lanes of `v` to `out[0..ROWS]` in row order.
    unsafe fn store_rows(out: *mut f32, v: Self::F);
}

/// 16 rows on AVX-512 (F, BW, VL, VNNI).
struct X16;
/// 8 rows on AVX2, with `vpdpbusd` if VNNI (AVX-VNNI).
struct X8<const VNNI: bool>;

impl Lanes for X16 {
    const ROWS: usize = 16;
    // 16 accumulators beside the 8 weight vectors fit the 32 registers (8 ran 4 % slower)
    const TILE: usize = 16;
    const SIGN_TRICK: bool = false;
    // 4×4 transposes of words in each 128-bit lane: lane 4c + q is row 4q + c
    const SIGMA: &'static [usize] = &[0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
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
    #[inline(always)]
    unsafe fn from_f16(bits: &[u16; 16]) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(bits.as_ptr() as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn flip(v: __m512i) -> __m512i {
        unsafe { _mm512_xor_si512(v, _mm512_set1_epi8(-128)) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const i32) -> __m512i {
        unsafe { _mm512_set1_epi32(p.read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        unsafe { _mm512_dpbusd_epi32(acc, w, x) }
    }
    #[inline(always)]
    unsafe fn sign_trick(w: __m512i, x: __m512i) -> (__m512i, __m512i) {
        // (unused: SIGN_TRICK is false) x negated where w < 0, zero where w = 0
        unsafe {
            let x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
            (
                _mm512_abs_epi8(w),
                _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(w, w), x),
            )
        }
    }
    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn add_f(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn to_f(v: __m512i) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(v) }
    }
    #[inline(always)]
    unsafe fn set_f(v: f32) -> __m512 {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store_rows(out: *mut f32, v: __m512) {
        // SIGMA is its own inverse
        unsafe {
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, v))
        }
    }
}

impl<const VNNI: bool> Lanes for X8<VNNI> {
    const ROWS: usize = 8;
    // more accumulators than AVX2 has registers left, but the spills cost less than
    // transposing for fewer tokens (4 or 16 ran 10-30 % slower on Q4_0, which q4_0x8.rs now runs)
    const TILE: usize = 8;
    const SIGN_TRICK: bool = true;
    // 4×4 transposes of words in each 128-bit lane: lane 4c + q is row 2q + c
    const SIGMA: &'static [usize] = &[0, 2, 4, 6, 1, 3, 5, 7];
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
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
    #[inline(always)]
    unsafe fn from_f16(bits: &[u16; 16]) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr() as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn flip(v: __m256i) -> __m256i {
        unsafe { _mm256_xor_si256(v, _mm256_set1_epi8(-128)) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const i32) -> __m256i {
        unsafe { _mm256_set1_epi32(p.read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        unsafe {
            if VNNI {
                _mm256_dpbusd_avx_epi32(acc, w, x)
            } else {
                _mm256_add_epi32(
                    acc,
                    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)),
                )
            }
        }
    }
    #[inline(always)]
    unsafe fn sign_trick(w: __m256i, x: __m256i) -> (__m256i, __m256i) {
        unsafe { (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn add_f(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn to_f(v: __m256i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(v) }
    }
    #[inline(always)]
    unsafe fn set_f(v: f32) -> __m256 {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store_rows(out: *mut f32, v: __m256) {
        unsafe {
            // row r is in lane SIGMA⁻¹[r]
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(v, order))
        }
    }
}

/// Block b of a row group, unpacked: `w = scale · q − min` per lane (row), q as u8 (or as
/// i8 for a signed format under the sign trick).
struct Block<L: Lanes> {
    chunks: [L::I; 8],
    scale: L::F,
    min: L::F,
}

/// A weight format read a row group at a time.
trait Format<L: Lanes> {
    /// q is signed (Q8_0).
    const SIGNED: bool = false;
    /// Per-group state kept across blocks (Q4_K's decoded scales of a super-block).
    type Scratch: Default;
    /// Block b (32 weights) of the rows starting at `rows`, `row_bytes` apart.
    unsafe fn load(
        rows: *const u8,
        row_bytes: usize,
        b: usize,
        out: &mut Block<L>,
        scratch: &mut Self::Scratch,
    );
}

/// The f16 at `at + SIGMA[l] · stride` in lane l, as f32.
#[inline(always)]
unsafe fn halves<L: Lanes>(at: *const u8, stride: usize) -> L::F {
    let mut bits = [0u16; 16];
    for l in 0..L::ROWS {
        bits[l] = unsafe { (at.add(L::SIGMA[l] * stride) as *const u16).read_unaligned() };
    }
    unsafe { L::from_f16(&bits) }
}

struct Q8_0;
impl<L: Lanes> Format<L> for Q8_0 {
    const SIGNED: bool = true;
    type Scratch = ();
    #[inline(always)]
    unsafe fn load(rows: *const u8, row_bytes: usize, b: usize, out: &mut Block<L>, _: &mut ()) {
        unsafe {
            let block = rows.add(b * 34);
            let (lo, hi) = (
                L::transpose(block.add(2), row_bytes),
                L::transpose(block.add(18), row_bytes),
            );
            out.chunks[..4].copy_from_slice(&lo);
            out.chunks[4..].copy_from_slice(&hi);
            out.scale = halves::<L>(block, row_bytes);
            out.min = L::zero_f();
            if !L::SIGN_TRICK {
                for c in &mut out.chunks {
                    *c = L::flip(*c);
                }
                out.min = L::mul(out.scale, L::set_f(128.0));
            }
        }
    }
}

/// Whether [`matmul_group`] takes `format`.
pub fn supports(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::Q8_0)
}

/// Rows per group on `isa`.
pub fn rows(isa: Isa) -> usize {
    if isa == Isa::Avx512Vnni {
        X16::ROWS
    } else {
        X8::<false>::ROWS
    }
}

/// The fewest tokens worth transposing for on `isa` (half a tile); callers take the
/// per-row kernel for fewer (decode).
pub fn min_tokens(isa: Isa) -> usize {
    if isa == Isa::Avx512Vnni {
        X16::TILE / 2
    } else {
        X8::<false>::TILE / 2
    }
}

/// Output rows `r0 .. r0 + rows(isa)` of `dst[m, n]` for `tokens`, weights `w` in `format`
/// (which [`supports`]), `row_bytes` per row.
///
/// # Safety
/// `isa` is present; `w` holds the rows; x holds the tokens; `dst` points at `m * n` f32
/// of which no other thread writes these rows' columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_group(
    isa: Isa,
    format: WeightFormat,
    (k, n): (usize, usize),
    x: &QuantizedActs,
    w: &[u8],
    row_bytes: usize,
    r0: usize,
    tokens: std::ops::Range<usize>,
    dst: *mut f32,
) {
    assert!(w.len() >= (r0 + rows(isa)) * row_bytes && r0 + rows(isa) <= n);
    macro_rules! run {
        ($kernel:ident, $tile:expr) => {{
            // SAFETY: passed on from the caller.
            unsafe {
                let rows = w.as_ptr().add(r0 * row_bytes);
                let mut t = tokens.start;
                while t < tokens.end {
                    // The last tile is padded with copies of the last token, whose products
                    // are dropped: that costs less than a transpose per leftover token, and
                    // no token's sums depend on the others in its tile.
                    let left = tokens.end - t;
                    let tile = [4, $tile / 2, $tile]
                        .into_iter()
                        .find(|&s| left <= s)
                        .unwrap_or($tile);
                    let out = dst.add(t * n + r0);
                    let a = (rows, row_bytes, x, k, t, left.min(tile), out, n);
                    match (format, tile) {
                        (_, 16) => $kernel::<Q8_0, 16>(a),
                        (_, 8) => $kernel::<Q8_0, 8>(a),
                        (_, _) => $kernel::<Q8_0, 4>(a),
                    }
                    t += tile;
                }
            }
        }};
    }
    match isa {
        Isa::Avx512Vnni => run!(tile_avx512, X16::TILE),
        Isa::AvxVnni => run!(tile_avxvnni, X8::<true>::TILE),
        Isa::Avx2 => run!(tile_avx2, X8::<false>::TILE),
    }
}

/// The arguments of a tile: the group's first row, row_bytes, x, k, the first token t0,
/// the tokens it holds (1..=T, the rest padding), where its outputs go (`dst[t0, r0]`),
/// and n.
type TileArgs<'a> = (
    *const u8,
    usize,
    &'a QuantizedActs,
    usize,
    usize,
    usize,
    *mut f32,
    usize,
);

/// `out[j·n + r] = W_r · x_(t0+j)` for a row group and the `valid` tokens from t0, in a
/// tile of T (the places past `valid` compute the last token again and are not stored).
#[inline(always)]
unsafe fn tile<L: Lanes, F: Format<L>, const T: usize>(
    (rows, row_bytes, x, k, t0, valid, out, n): TileArgs,
) {
    // the sign trick for signed q, else q goes in unsigned (with a min if it needs one)
    let trick = F::SIGNED && L::SIGN_TRICK;
    let nb = k / QK;
    // SAFETY (all below): the features are enabled by the caller (a `kernel!`); block b of
    // every row lies in the rows; tokens t0..t0+T of x exist; the caller owns the output
    // columns of the group for those tokens.
    unsafe {
        let mut blk = Block::<L> {
            chunks: [L::zero(); 8],
            scale: L::zero_f(),
            min: L::zero_f(),
        };
        let mut scratch = F::Scratch::default();
        // Batch invariance: each row's sum runs in row.rs's order, so a token gets the same
        // bits here as from the per-row kernel, at any tile and beside any other tokens.
        // There a row's block b goes to float lane b % 8 and the lanes meet in `hsum`'s
        // tree at the end; here each (token, b % 8) has its own accumulator of all the rows.
        let mut acc = [[L::zero_f(); 8]; T];
        for b in 0..nb {
            F::load(rows, row_bytes, b, &mut blk, &mut scratch);
            for j in 0..T {
                let i = (t0 + j.min(valid - 1)) * nb + b;
                let xq = x.qs.as_ptr().add(i * QK) as *const i32;
                // two chains, so that latency does not bound a single token
                let (mut even, mut odd) = (L::zero(), L::zero());
                for c in (0..8).step_by(2) {
                    let (mut w0, mut x0) = (blk.chunks[c], L::broadcast(xq.add(c)));
                    let (mut w1, mut x1) = (blk.chunks[c + 1], L::broadcast(xq.add(c + 1)));
                    if trick {
                        ((w0, x0), (w1, x1)) = (L::sign_trick(w0, x0), L::sign_trick(w1, x1));
                    }
                    even = L::dot(even, w0, x0);
                    odd = L::dot(odd, w1, x1);
                }
                let sums = L::to_f(L::add(even, odd));
                let a = acc.get_unchecked_mut(j).get_unchecked_mut(b % 8);
                *a = L::fmadd(sums, L::mul(blk.scale, L::set_f(*x.d.get_unchecked(i))), *a);
                if !trick {
                    *a = L::fnmadd(blk.min, L::set_f(*x.sum.get_unchecked(i)), *a);
                }
            }
        }
        for j in 0..valid {
            // simd::hsum's tree: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7))
            let p = &acc[j];
            let even = L::add_f(L::add_f(p[0], p[4]), L::add_f(p[2], p[6]));
            let odd = L::add_f(L::add_f(p[1], p[5]), L::add_f(p[3], p[7]));
            L::store_rows(out.add(j * n), L::add_f(even, odd));
        }
    }
}

/// `tile` compiled for one instruction set.
macro_rules! kernel {
    ($name:ident, $lanes:ty, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<F: Format<$lanes>, const T: usize>(a: TileArgs) {
            // SAFETY: passed on from the caller.
            unsafe { tile::<$lanes, F, T>(a) }
        }
    };
}
kernel!(
    tile_avx512,
    X16,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);
kernel!(tile_avxvnni, X8<true>, "avx2,fma,f16c,avxvnni");
kernel!(tile_avx2, X8<false>, "avx2,fma,f16c");
