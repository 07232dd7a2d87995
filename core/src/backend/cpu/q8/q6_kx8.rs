//! Q6_K packed eight rows at a time (packed.rs has the why and the driver).
//!
//! ggml's block_q6_K (256 weights, 210 bytes): ql[128] (low four bits), qh[64] (high two
//! bits), scales[16] (i8, one per 16 weights), d (f16). A weight is d · sc[w / 16] · (q − 32)
//! with q = low | high << 4. In half h (weights 128h..128h + 128): ql[64h + l] holds weight
//! 128h + l in its low nibble and 128h + 64 + l in its high one (l < 64); qh[32h + l] holds
//! the high bits of weights 128h + 32m + l in its bits 2m, 2m + 1 (m < 4). So sub-block j
//! (weights 32j..32j + 32; h = j / 4, m = j % 4) is the nibble m / 2 of ql[64h + 32(m % 2)..]
//! and the crumb m of qh[32h..].
//!
//! Layout, per group of eight rows g and super-block s, at `(g · ns + s) · 1680` (the
//! file's eight blocks, rearranged; no byte more):
//!   bytes 0..16       the rows' d (f16, row r at 2r);
//!   bytes 16..144     sc[i] of row r at 16 + 8i + r;
//!   bytes 144..1680   per half h at 144 + 768h, three chunks of 256 bytes: row r's
//!                     ql[64h + 4c..+4], qh[32h + 4c..+4], ql[64h + 32 + 4c..+4] at
//!                     32c + 4r in the first, second, third (c < 8).
//! The chunks lie in the order the kernel first reads them (sub-block 4h needs the first
//! two, 4h + 1 the third), so a group streams forward through memory: with the qh bytes
//! after all the ql bytes, decode ran at 16 GB/s on one core instead of 23 (the hardware
//! prefetcher lost the jumps between the two).
//! Per token and row, over the sub-blocks in order (activation block j of 32 has dx_j and
//! the sums X of its two halves' int8 inputs):
//!   acc = fma(f32(Σ_halves sc · (Σ q · qx − 32 X)), d · dx_j, acc)
//! (the integer part is exact: each half is at most 16 · 32 · 128 = 2^16, times |sc| ≤ 128).

use super::blocks::{QK, QuantizedActs};
use super::packed::{Packed, ROWS, Tile, dispatch, kernels, packed_tests};
use crate::backend::cpu::simd::Isa;
use std::arch::x86_64::*;

const FILE: usize = 210;
const BYTES: usize = ROWS * FILE;
const SC: usize = 16;
/// Where the quant bits start: half h's chunks at HALF + 768h.
const HALF: usize = 144;

pub struct Q6Kx8;

/// Each chunk of 32 quant bytes: (where its packed chunk starts, where it is in the file).
fn chunks() -> [(usize, usize); 6] {
    [0, 1]
        .map(|h| {
            let at = HALF + 768 * h;
            [
                (at, 64 * h),
                (at + 256, 128 + 32 * h),
                (at + 512, 64 * h + 32),
            ]
        })
        .as_flattened()
        .try_into()
        .expect("six chunks")
}

impl Packed for Q6Kx8 {
    const QK: usize = 256;
    const FILE: usize = FILE;
    const BYTES: usize = BYTES;

    fn place(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[2 * r..2 * r + 2].copy_from_slice(&src[208..210]);
        for i in 0..16 {
            dst[SC + 8 * i + r] = src[192 + i];
        }
        for (at, from) in chunks() {
            for c in 0..8 {
                dst[at + 32 * c + 4 * r..][..4].copy_from_slice(&src[from + 4 * c..][..4]);
            }
        }
    }

    fn take(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[208..210].copy_from_slice(&src[2 * r..2 * r + 2]);
        for i in 0..16 {
            dst[192 + i] = src[SC + 8 * i + r];
        }
        for (at, from) in chunks() {
            for c in 0..8 {
                dst[from + 4 * c..][..4].copy_from_slice(&src[at + 32 * c + 4 * r..][..4]);
            }
        }
    }

    dispatch!();
}

/// Where sub-block j's bits are: (its ql chunk's offset, whether in the high nibbles, its
/// qh chunk's offset, its crumb).
const fn sub_block(j: usize) -> (usize, bool, usize, usize) {
    let (h, m) = (j / 4, j % 4);
    (
        HALF + 768 * h + 512 * (m % 2),
        m >= 2,
        HALF + 768 * h + 256,
        m,
    )
}

/// `$body` once per sub-block, in order, with `$sub` a constant in each copy: its shifts
/// and offsets fold away. (As a loop, LLVM kept it rolled and chose the crumb's shift
/// through a jump table: a third of decode's time went to that branch.)
macro_rules! each_sub_block {
    ($sub:ident => $body:block) => {{
        const $sub: usize = 0;
        $body
    }
    {
        const $sub: usize = 1;
        $body
    }
    {
        const $sub: usize = 2;
        $body
    }
    {
        const $sub: usize = 3;
        $body
    }
    {
        const $sub: usize = 4;
        $body
    }
    {
        const $sub: usize = 5;
        $body
    }
    {
        const $sub: usize = 6;
        $body
    }
    {
        const $sub: usize = 7;
        $body
    }};
}

/// One kernel: the tokens `$j` of the tile, each with its accumulator `$acc`. `$dot(acc, w,
/// x)` adds u8 `w` times i8 `x` over groups of four bytes to the eight i32 of `acc`.
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
            let (ns, nb) = (k / 256, k / QK);
            let (low, high) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
            let zero = _mm256_setzero_si256();
            let group = packed.as_ptr().wrapping_add(g * ns * BYTES);
            $( let mut $acc = _mm256_setzero_ps(); )+
            for s in 0..ns {
                // SAFETY: super-block s of group g and the tile's tokens' blocks lie inside
                // `packed` and `x` (the driver asserted the lengths).
                unsafe {
                    let p = group.add(s * BYTES);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                    each_sub_block!(SUB => {
                        let (ql, nibble, qh, crumb) = sub_block(SUB);
                        let mut w = [zero; 8];
                        for c in 0..8 {
                            let v = _mm256_loadu_si256(p.add(ql + 32 * c) as *const __m256i);
                            let v = if nibble { _mm256_srli_epi16(v, 4) } else { v };
                            let h = _mm256_loadu_si256(p.add(qh + 32 * c) as *const __m256i);
                            // the crumb to bits 4-5 (16-bit shifts: the mask drops what
                            // crossed from the neighbouring byte)
                            let h = match crumb {
                                0 => _mm256_slli_epi16(h, 4),
                                1 => _mm256_slli_epi16(h, 2),
                                2 => h,
                                _ => _mm256_srli_epi16(h, 2),
                            };
                            w[c] = _mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(h, high));
                        }
                        let scales = |half: usize| {
                            let at = SC + 8 * (2 * SUB + half);
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(at) as *const __m128i))
                        };
                        let (sc0, sc1) = (scales(0), scales(1));
                        $(
                            let blk = (t0 + $j) * nb + 8 * s + SUB;
                            let words = x.qs.as_ptr().add(blk * QK) as *const i32;
                            let word = |i: usize| _mm256_set1_epi32(words.add(i).read_unaligned());
                            let mut s0 = $dot(zero, w[0], word(0));
                            let mut s1 = $dot(zero, w[4], word(4));
                            for i in 1..4 {
                                s0 = $dot(s0, w[i], word(i));
                                s1 = $dot(s1, w[i + 4], word(i + 4));
                            }
                            // q − 32: the 32 comes off in integers, exactly
                            let s0 = _mm256_sub_epi32(s0, _mm256_set1_epi32(32 * x.qsum16[2 * blk]));
                            let s1 = _mm256_sub_epi32(s1, _mm256_set1_epi32(32 * x.qsum16[2 * blk + 1]));
                            let q = _mm256_add_epi32(_mm256_mullo_epi32(s0, sc0), _mm256_mullo_epi32(s1, sc1));
                            let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d[blk]));
                            $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), scale, $acc);
                        )+
                    });
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
            let (ns, nb) = (k / 256, k / QK);
            let (low, high) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
            let zero = _mm512_setzero_si512();
            let first = packed.as_ptr().wrapping_add(g * ns * BYTES);
            let second = first.wrapping_add(ns * BYTES);
            $( let mut $acc = _mm512_setzero_ps(); )+
            for s in 0..ns {
                // SAFETY: super-block s of groups g, g + 1 and the tile's tokens' blocks lie
                // inside `packed` and `x` (the driver asserted the lengths).
                unsafe {
                    let (p, q) = (first.add(s * BYTES), second.add(s * BYTES));
                    let both = |at: usize| {
                        _mm512_inserti64x4(
                            _mm512_castsi256_si512(_mm256_loadu_si256(p.add(at) as *const __m256i)),
                            _mm256_loadu_si256(q.add(at) as *const __m256i),
                            1,
                        )
                    };
                    let d = _mm512_cvtph_ps(_mm256_set_m128i(
                        _mm_loadu_si128(q as *const __m128i),
                        _mm_loadu_si128(p as *const __m128i),
                    ));
                    each_sub_block!(SUB => {
                        let (ql, nibble, qh, crumb) = sub_block(SUB);
                        let mut w = [zero; 8];
                        for c in 0..8 {
                            let v = both(ql + 32 * c);
                            let v = if nibble { _mm512_srli_epi16(v, 4) } else { v };
                            let h = both(qh + 32 * c);
                            let h = match crumb {
                                0 => _mm512_slli_epi16(h, 4),
                                1 => _mm512_slli_epi16(h, 2),
                                2 => h,
                                _ => _mm512_srli_epi16(h, 2),
                            };
                            w[c] = _mm512_or_si512(_mm512_and_si512(v, low), _mm512_and_si512(h, high));
                        }
                        let scales = |half: usize| {
                            let at = SC + 8 * (2 * SUB + half);
                            _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(
                                _mm_loadl_epi64(p.add(at) as *const __m128i),
                                _mm_loadl_epi64(q.add(at) as *const __m128i),
                            ))
                        };
                        let (sc0, sc1) = (scales(0), scales(1));
                        $(
                            let blk = (t0 + $j) * nb + 8 * s + SUB;
                            let words = x.qs.as_ptr().add(blk * QK) as *const i32;
                            let word = |i: usize| _mm512_set1_epi32(words.add(i).read_unaligned());
                            let mut s0 = _mm512_dpbusd_epi32(zero, w[0], word(0));
                            let mut s1 = _mm512_dpbusd_epi32(zero, w[4], word(4));
                            for i in 1..4 {
                                s0 = _mm512_dpbusd_epi32(s0, w[i], word(i));
                                s1 = _mm512_dpbusd_epi32(s1, w[i + 4], word(i + 4));
                            }
                            let s0 = _mm512_sub_epi32(s0, _mm512_set1_epi32(32 * x.qsum16[2 * blk]));
                            let s1 = _mm512_sub_epi32(s1, _mm512_set1_epi32(32 * x.qsum16[2 * blk + 1]));
                            let q = _mm512_add_epi32(_mm512_mullo_epi32(s0, sc0), _mm512_mullo_epi32(s1, sc1));
                            let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d[blk]));
                            $acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), scale, $acc);
                        )+
                    });
                }
            }
            // SAFETY: stores to the caller's arrays of sixteen f32.
            unsafe { $( _mm512_storeu_ps(out[$j].as_mut_ptr(), $acc); )+ }
        }
    };
}

kernels!();

packed_tests!(Q6Kx8, Q6K);
