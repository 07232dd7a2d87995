//! Q4_0 packed eight rows at a time (packed.rs has the why and the driver).
//!
//! Layout, per group of eight rows g and block b (32 weights), at `(g · nb + b) · 144`:
//!   bytes 0..16    the eight rows' f16 scales d, row r at 2r;
//!   bytes 16..144  four chunks c of 32 bytes, row r's packed bytes 4c..4c+4 at 16 + 32c + 4r
//!                  (packed byte j holds weight j in its low nibble and 16 + j in its high).
//! So the low nibbles of chunk c are weights 4c..4c+4 of every row, one row per i32 lane.
//! The kernels are block32.rs's, with offset 8.

use super::block32::{block32_tile_kernel, block32_wide_kernel};
use super::blocks::{QK, QuantizedActs};
use super::packed::{Packed, ROWS, Tile, dispatch, kernels, packed_tests};
use crate::backend::cpu::simd::Isa;
use std::arch::x86_64::*;

/// Bytes of one packed block of eight rows (the file's block is 18: d and 16 bytes).
const BYTES: usize = ROWS * 18;

pub struct Q4_0x8;

impl Packed for Q4_0x8 {
    const QK: usize = QK;
    const FILE: usize = 18;
    const BYTES: usize = BYTES;

    fn place(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
        for c in 0..4 {
            dst[16 + 32 * c + 4 * r..][..4].copy_from_slice(&src[2 + 4 * c..][..4]);
        }
    }

    fn take(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[..2].copy_from_slice(&src[2 * r..2 * r + 2]);
        for c in 0..4 {
            dst[2 + 4 * c..][..4].copy_from_slice(&src[16 + 32 * c + 4 * r..][..4]);
        }
    }

    dispatch!();
}

// Chunk c's low nibbles are weights 4c..4c+4 of each row, its high nibbles 16 + 4c..
macro_rules! tile_kernel {
    ($($t:tt)*) => {
        block32_tile_kernel!(|p: *const u8| {
            let low = _mm256_set1_epi8(0x0f);
            let mut w = [_mm256_setzero_si256(); 8];
            for c in 0..4 {
                let v = _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i);
                w[c] = _mm256_and_si256(v, low);
                w[4 + c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            }
            w
        }, 8; $($t)*);
    };
}

macro_rules! wide_kernel {
    ($($t:tt)*) => {
        block32_wide_kernel!(|p: *const u8, q: *const u8| {
            let low = _mm512_set1_epi8(0x0f);
            let mut w = [_mm512_setzero_si512(); 8];
            for c in 0..4 {
                let at = 16 + 32 * c;
                let v = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(p.add(at) as *const __m256i)),
                    _mm256_loadu_si256(q.add(at) as *const __m256i),
                    1,
                );
                w[c] = _mm512_and_si512(v, low);
                w[4 + c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            }
            w
        }, 8; $($t)*);
    };
}

kernels!();

packed_tests!(Q4_0x8, Q4_0);
