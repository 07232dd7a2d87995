//! Q8_0 packed eight rows at a time (packed.rs has the why and the driver).
//!
//! Layout, per group of eight rows g and block b (32 weights), at `(g · nb + b) · 272`:
//!   bytes 0..16    the eight rows' f16 scales d, row r at 2r;
//!   bytes 16..272  eight chunks c of 32 bytes: row r's weights 4c..4c+4 at 16 + 32c + 4r,
//!                  each stored as q + 128 (a byte with its top bit flipped) for the
//!                  unsigned side of `vpdpbusd`.
//! Per token and row the sum runs over the blocks in order with one accumulator:
//!   acc = fma(f32(Σ (q + 128) · qx − 128 · Σ qx), d · dx, acc)
//! (the integer part is exact: at most 32 · 255 · 128 before the offset comes off).

use super::blocks::{QK, QuantizedActs};
use super::packed::{Packed, ROWS, Tile, dispatch, kernels};
use crate::backend::cpu::simd::Isa;
use std::arch::x86_64::*;

/// Bytes of one packed block of eight rows (the file's block is 34: d and 32 int8).
const BYTES: usize = ROWS * 34;

pub struct Q8_0x8;

impl Packed for Q8_0x8 {
    const QK: usize = QK;
    const FILE: usize = 34;
    const BYTES: usize = BYTES;

    fn place(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
        for c in 0..8 {
            for (i, q) in src[2 + 4 * c..][..4].iter().enumerate() {
                dst[16 + 32 * c + 4 * r + i] = q ^ 0x80;
            }
        }
    }

    fn take(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[..2].copy_from_slice(&src[2 * r..2 * r + 2]);
        for c in 0..8 {
            for (i, q) in src[16 + 32 * c + 4 * r..][..4].iter().enumerate() {
                dst[2 + 4 * c + i] = q ^ 0x80;
            }
        }
    }

    dispatch!();
}

/// One kernel: the tokens `$j` of the tile, each with its accumulator `$acc` (named, not
/// an array: indexed in a loop LLVM kept a tile of eight on the stack). `$dot(acc, w, x)`
/// adds u8 `w` times i8 `x` over groups of four bytes to the eight i32 of `acc`.
macro_rules! tile_kernel {
    ($name:ident, $features:literal, $dot:expr, $($j:literal $acc:ident),+) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            packed: &[u8],
            x: &QuantizedActs,
            k: usize,
            g: usize,
            t0: usize,
            at: usize,
            out: &mut Tile,
        ) {
            let nb = k / QK;
            let zero = _mm256_setzero_si256();
            let group = packed.as_ptr().wrapping_add(g * nb * BYTES);
            $( let mut $acc = _mm256_setzero_ps(); )+
            for b in 0..nb {
                // SAFETY: block b of group g and of the tile's tokens lie inside `packed`
                // and `x` (matmul_groups asserted the lengths).
                unsafe {
                    let p = group.add(b * BYTES);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                    let w: [__m256i; 8] = std::array::from_fn(|c| {
                        _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i)
                    });
                    $(
                        let blk = (t0 + $j) * nb + b;
                        let words = x.qs.as_ptr().add(blk * QK) as *const i32;
                        let word = |i: usize| _mm256_set1_epi32(words.add(i).read_unaligned());
                        // two chains, so that each dot waits on one of two
                        let mut s0 = $dot(zero, w[0], word(0));
                        let mut s1 = $dot(zero, w[1], word(1));
                        for i in (2..8).step_by(2) {
                            s0 = $dot(s0, w[i], word(i));
                            s1 = $dot(s1, w[i + 1], word(i + 1));
                        }
                        // weight = d · ((q + 128) − 128): the 128 comes off in integers, exactly
                        let s = _mm256_sub_epi32(
                            _mm256_add_epi32(s0, s1),
                            _mm256_set1_epi32(128 * x.qsum[blk]),
                        );
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d[blk]));
                        $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, $acc);
                    )+
                }
            }
            // SAFETY: stores to the caller's arrays, eight f32 from `at` (0 or 8).
            unsafe { $( _mm256_storeu_ps(out[$j][at..].as_mut_ptr(), $acc); )+ }
        }
    };
}

/// As `tile_kernel!` for groups g and g + 1 side by side in 512-bit vectors: each lane
/// runs the same instructions on the same values, so gives the same bits.
macro_rules! wide_kernel {
    ($name:ident, $($j:literal $acc:ident),+) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name(
            packed: &[u8],
            x: &QuantizedActs,
            k: usize,
            g: usize,
            t0: usize,
            out: &mut Tile,
        ) {
            let nb = k / QK;
            let zero = _mm512_setzero_si512();
            let first = packed.as_ptr().wrapping_add(g * nb * BYTES);
            let second = first.wrapping_add(nb * BYTES);
            $( let mut $acc = _mm512_setzero_ps(); )+
            for b in 0..nb {
                // SAFETY: block b of groups g, g + 1 and of the tile's tokens lie inside
                // `packed` and `x` (matmul_groups asserted the lengths).
                unsafe {
                    let (p, q) = (first.add(b * BYTES), second.add(b * BYTES));
                    let d = _mm512_cvtph_ps(_mm256_set_m128i(
                        _mm_loadu_si128(q as *const __m128i),
                        _mm_loadu_si128(p as *const __m128i),
                    ));
                    let w: [__m512i; 8] = std::array::from_fn(|c| {
                        _mm512_inserti64x4(
                            _mm512_castsi256_si512(_mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i)),
                            _mm256_loadu_si256(q.add(16 + 32 * c) as *const __m256i),
                            1,
                        )
                    });
                    $(
                        let blk = (t0 + $j) * nb + b;
                        let words = x.qs.as_ptr().add(blk * QK) as *const i32;
                        let word = |i: usize| _mm512_set1_epi32(words.add(i).read_unaligned());
                        let mut s0 = _mm512_dpbusd_epi32(zero, w[0], word(0));
                        let mut s1 = _mm512_dpbusd_epi32(zero, w[1], word(1));
                        for i in (2..8).step_by(2) {
                            s0 = _mm512_dpbusd_epi32(s0, w[i], word(i));
                            s1 = _mm512_dpbusd_epi32(s1, w[i + 1], word(i + 1));
                        }
                        let s = _mm512_sub_epi32(
                            _mm512_add_epi32(s0, s1),
                            _mm512_set1_epi32(128 * x.qsum[blk]),
                        );
                        let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d[blk]));
                        $acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, $acc);
                    )+
                }
            }
            // SAFETY: stores to the caller's arrays of sixteen f32.
            unsafe { $( _mm512_storeu_ps(out[$j].as_mut_ptr(), $acc); )+ }
        }
    };
}

// Bytes up to 255 would saturate `maddubs`' pair sums: the low seven bits and the top
// bit (0 or 128) go in two products, each pair at most 2 · 128 · 127 in size.
kernels!(avx2_dot: |acc, w, x| {
    let ones = _mm256_set1_epi16(1);
    let top = _mm256_set1_epi8(-128);
    let low = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_andnot_si256(top, w), x), ones);
    let high = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w, top), x), ones);
    _mm256_add_epi32(acc, _mm256_add_epi32(low, high))
});

#[cfg(test)]
mod tests {
    use super::super::packed::tests as check;
    use super::Q8_0x8;
    use crate::weights::WeightFormat::Q8_0;

    #[test]
    fn unpacking_gives_the_file_rows_back() {
        check::unpacking_gives_the_file_rows_back::<Q8_0x8>(Q8_0);
    }

    #[test]
    fn a_token_gets_the_same_bits_alone_and_in_any_batch() {
        check::a_token_gets_the_same_bits_alone_and_in_any_batch::<Q8_0x8>(Q8_0);
    }

    #[test]
    fn matches_the_integer_dot_product() {
        check::matches_the_integer_dot_product::<Q8_0x8>(Q8_0);
    }
}
