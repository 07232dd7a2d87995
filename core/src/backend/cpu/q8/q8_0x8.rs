//! Q8_0 packed eight rows at a time (packed.rs has the why and the driver).
//!
//! Layout, per group of eight rows g and block b (32 weights), at `(g · nb + b) · 272`:
//!   bytes 0..16    the eight rows' f16 scales d, row r at 2r;
//!   bytes 16..272  eight chunks c of 32 bytes: row r's weights 4c..4c+4 at 16 + 32c + 4r,
//!                  each stored as q + 128 (a byte with its top bit flipped) for the
//!                  unsigned side of `vpdpbusd`.
//! The kernels are block32.rs's, with offset 128 (the integer part is exact: at most
//! 32 · 255 · 128 before the offset comes off).

use super::block32::{block32_tile_kernel, block32_wide_kernel};
use super::blocks::{QK, QuantizedActs};
use super::packed::{Packed, ROWS, Tile, dispatch, kernels, packed_tests};
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

macro_rules! tile_kernel {
    ($($t:tt)*) => {
        block32_tile_kernel!(|p: *const u8| -> [__m256i; 8] {
            std::array::from_fn(|c| _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i))
        }, 128; $($t)*);
    };
}

macro_rules! wide_kernel {
    ($($t:tt)*) => {
        block32_wide_kernel!(|p: *const u8, q: *const u8| -> [__m512i; 8] {
            std::array::from_fn(|c| {
                let at = 16 + 32 * c;
                _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(p.add(at) as *const __m256i)),
                    _mm256_loadu_si256(q.add(at) as *const __m256i),
                    1,
                )
            })
        }, 128; $($t)*);
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

packed_tests!(Q8_0x8, Q8_0);
