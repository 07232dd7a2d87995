//! Q4_K packed eight rows at a time (packed.rs has the why and the driver).
//!
//! ggml's block_q4_K (256 weights, 144 bytes): d, dmin (f16), 12 bytes of 6-bit scales
//! sc_j and mins m_j of the eight sub-blocks j of 32, then 128 bytes: bytes 32i..32i+32
//! hold sub-block 2i in their low nibbles and 2i + 1 in their high ones. A weight is
//! d · sc_j · q − dmin · m_j.
//!
//! Layout, per group of eight rows g and super-block s, at `(g · ns + s) · 1184`:
//!   bytes 0..16      the rows' d (f16, row r at 2r), 16..32 their dmin;
//!   bytes 32..96     sc_j of row r at 32 + 8j + r (decoded to a byte), 96..160 m_j likewise;
//!   bytes 160..1184  row r's bytes 32i + 4c..+4 at 160 + 256i + 32c + 4r (i < 4, c < 8).
//! Per token and row, over the sub-blocks in order (activation block j of 32 has dx_j and
//! xsum_j = dx_j Σ qx):
//!   acc = fma(f32(sc_j · Σ q · qx), d · dx_j, acc);  acc = fnmadd(dmin · m_j, xsum_j, acc)
//! (the integer part is exact: |Σ q · qx| ≤ 32 · 15 · 128, times sc ≤ 63).

use super::blocks::{QK, QuantizedActs};
use super::packed::{Packed, ROWS, Tile, dispatch, kernels, packed_tests};
use crate::backend::cpu::simd::Isa;
use std::arch::x86_64::*;

/// Bytes of one packed super-block of eight rows (the file's is 144: 32 more for the
/// scales and mins decoded to bytes).
const BYTES: usize = ROWS * 144 + 32;
const DMIN: usize = 16;
const SC: usize = 32;
const MIN: usize = 96;
const QS: usize = 160;

pub struct Q4Kx8;

/// The six-bit scales and mins of the eight sub-blocks, from their 12 packed bytes (as
/// ggml's `get_scale_min_k4`).
fn scales(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], m[j]) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        };
    }
    (sc, m)
}

/// The 12 packed bytes of `scales`' result.
fn pack_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4);
    }
    q
}

impl Packed for Q4Kx8 {
    const QK: usize = 256;
    const FILE: usize = 144;
    const BYTES: usize = BYTES;

    fn place(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
        dst[DMIN + 2 * r..DMIN + 2 * r + 2].copy_from_slice(&src[2..4]);
        let (sc, m) = scales(&src[4..16]);
        for j in 0..8 {
            dst[SC + 8 * j + r] = sc[j];
            dst[MIN + 8 * j + r] = m[j];
        }
        for i in 0..4 {
            for c in 0..8 {
                dst[QS + 256 * i + 32 * c + 4 * r..][..4]
                    .copy_from_slice(&src[16 + 32 * i + 4 * c..][..4]);
            }
        }
    }

    fn take(src: &[u8], r: usize, dst: &mut [u8]) {
        dst[..2].copy_from_slice(&src[2 * r..2 * r + 2]);
        dst[2..4].copy_from_slice(&src[DMIN + 2 * r..DMIN + 2 * r + 2]);
        let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
        for j in 0..8 {
            sc[j] = src[SC + 8 * j + r];
            m[j] = src[MIN + 8 * j + r];
        }
        dst[4..16].copy_from_slice(&pack_scales(&sc, &m));
        for i in 0..4 {
            for c in 0..8 {
                dst[16 + 32 * i + 4 * c..][..4]
                    .copy_from_slice(&src[QS + 256 * i + 32 * c + 4 * r..][..4]);
            }
        }
    }

    dispatch!();
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
            let low = _mm256_set1_epi8(0x0f);
            let zero = _mm256_setzero_si256();
            let group = packed.as_ptr().wrapping_add(g * ns * BYTES);
            $( let mut $acc = _mm256_setzero_ps(); )+
            for s in 0..ns {
                // SAFETY: super-block s of group g and the tile's tokens' blocks lie inside
                // `packed` and `x` (the driver asserted the lengths).
                unsafe {
                    let p = group.add(s * BYTES);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(DMIN) as *const __m128i));
                    for sub in 0..8 {
                        let (i, high) = (sub / 2, sub % 2 == 1);
                        let mut w = [zero; 8];
                        for c in 0..8 {
                            let v = _mm256_loadu_si256(p.add(QS + 256 * i + 32 * c) as *const __m256i);
                            let v = if high { _mm256_srli_epi16(v, 4) } else { v };
                            w[c] = _mm256_and_si256(v, low);
                        }
                        let bytes = |at: usize| _mm_loadl_epi64(p.add(at + 8 * sub) as *const __m128i);
                        let sc = _mm256_cvtepu8_epi32(bytes(SC));
                        let min = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes(MIN))));
                        $(
                            let blk = (t0 + $j) * nb + 8 * s + sub;
                            let words = x.qs.as_ptr().add(blk * QK) as *const i32;
                            let word = |i: usize| _mm256_set1_epi32(words.add(i).read_unaligned());
                            let mut s0 = $dot(zero, w[0], word(0));
                            let mut s1 = $dot(zero, w[1], word(1));
                            for i in (2..8).step_by(2) {
                                s0 = $dot(s0, w[i], word(i));
                                s1 = $dot(s1, w[i + 1], word(i + 1));
                            }
                            let q = _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), sc);
                            let scale = _mm256_mul_ps(d, _mm256_set1_ps(x.d[blk]));
                            $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), scale, $acc);
                            $acc = _mm256_fnmadd_ps(min, _mm256_set1_ps(x.sum[blk]), $acc);
                        )+
                    }
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
            let low = _mm512_set1_epi8(0x0f);
            let zero = _mm512_setzero_si512();
            let first = packed.as_ptr().wrapping_add(g * ns * BYTES);
            let second = first.wrapping_add(ns * BYTES);
            $( let mut $acc = _mm512_setzero_ps(); )+
            for s in 0..ns {
                // SAFETY: super-block s of groups g, g + 1 and the tile's tokens' blocks lie
                // inside `packed` and `x` (the driver asserted the lengths).
                unsafe {
                    let (p, q) = (first.add(s * BYTES), second.add(s * BYTES));
                    let halves = |at: usize| {
                        _mm512_cvtph_ps(_mm256_set_m128i(
                            _mm_loadu_si128(q.add(at) as *const __m128i),
                            _mm_loadu_si128(p.add(at) as *const __m128i),
                        ))
                    };
                    let (d, dmin) = (halves(0), halves(DMIN));
                    for sub in 0..8 {
                        let (i, high) = (sub / 2, sub % 2 == 1);
                        let mut w = [zero; 8];
                        for c in 0..8 {
                            let at = QS + 256 * i + 32 * c;
                            let v = _mm512_inserti64x4(
                                _mm512_castsi256_si512(_mm256_loadu_si256(p.add(at) as *const __m256i)),
                                _mm256_loadu_si256(q.add(at) as *const __m256i),
                                1,
                            );
                            let v = if high { _mm512_srli_epi16(v, 4) } else { v };
                            w[c] = _mm512_and_si512(v, low);
                        }
                        let bytes = |at: usize| {
                            _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(
                                _mm_loadl_epi64(p.add(at + 8 * sub) as *const __m128i),
                                _mm_loadl_epi64(q.add(at + 8 * sub) as *const __m128i),
                            ))
                        };
                        let sc = bytes(SC);
                        let min = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(bytes(MIN)));
                        $(
                            let blk = (t0 + $j) * nb + 8 * s + sub;
                            let words = x.qs.as_ptr().add(blk * QK) as *const i32;
                            let word = |i: usize| _mm512_set1_epi32(words.add(i).read_unaligned());
                            let mut s0 = _mm512_dpbusd_epi32(zero, w[0], word(0));
                            let mut s1 = _mm512_dpbusd_epi32(zero, w[1], word(1));
                            for i in (2..8).step_by(2) {
                                s0 = _mm512_dpbusd_epi32(s0, w[i], word(i));
                                s1 = _mm512_dpbusd_epi32(s1, w[i + 1], word(i + 1));
                            }
                            let q = _mm512_mullo_epi32(_mm512_add_epi32(s0, s1), sc);
                            let scale = _mm512_mul_ps(d, _mm512_set1_ps(x.d[blk]));
                            $acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), scale, $acc);
                            $acc = _mm512_fnmadd_ps(min, _mm512_set1_ps(x.sum[blk]), $acc);
                        )+
                    }
                }
            }
            // SAFETY: stores to the caller's arrays of sixteen f32.
            unsafe { $( _mm512_storeu_ps(out[$j].as_mut_ptr(), $acc); )+ }
        }
    };
}

kernels!();

packed_tests!(Q4Kx8, Q4K);

#[cfg(test)]
mod tests {
    #[test]
    fn scales_pack_back_into_their_bytes() {
        for seed in 0..200u64 {
            let mut rng = crate::testing::Rng(seed + 1);
            let q: [u8; 12] = std::array::from_fn(|_| (rng.f32().to_bits() >> 7) as u8);
            let (sc, m) = super::scales(&q);
            assert_eq!(super::pack_scales(&sc, &m), q);
        }
    }
}
