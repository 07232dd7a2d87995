//! `dst[m, n] = x[m, k] · W[n, k]ᵀ` for Q4_0, Q8_0, Q4_K and Q6_K weights on x86-64 with
//! AVX2, AVX-VNNI or AVX-512 VNNI: the CPU backend's product for these formats. Prompts of
//! Q4_0, Q8_0 and Q4_K go through the row-group kernel of cpu_q8_rows.rs; decode, Q6_K and
//! the rows and tokens left over take the per-row kernels here.
//!
//! Like llama.cpp, the activations are first quantized to int8 in blocks of 32 with one
//! f32 scale `dx` each, so each block product is an exact integer dot product. Every
//! weight format is read as blocks of 32 int8 values `q` with
//!   w = scale · lane · q − min
//! where `scale` and `min` are f32 per block of 32 (min is 0 except for Q4_0 and Q4_K), and `lane`
//! is an integer per 16 weights (1 except for Q6_K, whose scales are per 16). Then
//!   Σ_i w_i · x_i = scale · dx · Σ_i lane · q_i · qx_i  −  min · dx · Σ_i qx_i
//! Q4_0: q = nibble (16 bytes: element i in the low nibble of byte i, 16 + i in the high
//! one), scale = d, min = 8d. Q8_0: q = the int8, scale = d. Q4_K (256 weights): q = a nibble
//! (low nibbles of 32 bytes for even sub-blocks, high for odd), scale = d · sc_j and
//! min = dmin · m_j from the 6-bit packed scales. Q6_K (256): q = (4 low bits | 2 high
//! bits << 4) − 32, scale = d, lane = the int8 scale of each 16.
//!
//! Why not candle's `k_quants::matmul`: it calls one block-row `vec_dot` per (token, row),
//! so a prompt of m tokens unpacks every weight block m times and prefill runs no faster
//! than decode. Here eight blocks of a row are unpacked once and applied to `TILE` tokens,
//! a row is read from memory once for the whole prompt, and the eight blocks' integer sums
//! are reduced into one vector before the float scaling.
//!
//! The products use the `maddubs` sign trick: |q| (unsigned) times qx carrying q's sign.
//! |q| ≤ 127 and |qx| ≤ 127, so a pair sum is at most 32258 and the i16 never saturates.
//! (Q4_0's and Q4_K's nibbles are never negative and go in as they are.)

// x86-64 only (backend/mod.rs): elsewhere the CPU backend uses candle's kernels.

use super::cpu_q8_rows as grouped;
use crate::weights::WeightFormat;
use half::f16;
use std::arch::x86_64::*;

/// Tokens per register tile.
const TILE: usize = 8;
pub(super) const QK: usize = 32;

/// Activations quantized to int8 blocks of 32, token-major: `qs[t*k + i]`, and per block
/// `d[t*k/32 + b]` and `sum[..] = d · Σ qs` (for the min term of Q4_K).
pub struct QuantizedActs {
    pub(super) qs: Vec<i8>,
    pub(super) d: Vec<f32>,
    pub(super) sum: Vec<f32>,
}

/// Quantize each 32-value block of `x` (m rows of k) to int8 with scale `max|x| / 127`,
/// rounding to nearest: the same rule as ggml's `quantize_row_q8_0` (whose scale is then
/// stored as f16; here it stays f32).
pub fn quantize_acts(x: &[f32]) -> QuantizedActs {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK];
    let mut sum = vec![0f32; x.len() / QK];
    for (((blk, q), d), sum) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(&mut d)
        .zip(&mut sum)
    {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in q.iter_mut().zip(blk) {
            *q = (v * id).round() as i8;
        }
        *sum = *d * q.iter().map(|&q| q as i32).sum::<i32>() as f32;
    }
    QuantizedActs { qs, d, sum }
}

/// Whether [`matmul_rows`] can run `format` on this CPU.
pub fn supports(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::Q4_0 | WeightFormat::Q8_0 | WeightFormat::Q4K | WeightFormat::Q6K)
        && Isa::Avx2.present()
}

/// The instructions a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub enum Isa {
    Avx2,
    /// AVX-VNNI (Zen 4, Alder Lake and later): `vpdpbusd` on 256 bits.
    AvxVnni,
    /// AVX-512 VNNI (+BW, VL): two blocks per `vpdpbusd`, 32 registers.
    Avx512Vnni,
}

impl Isa {
    /// The best this CPU has; `YANGTUO_CPU_AVX512=0` and `YANGTUO_CPU_VNNI=0` step down
    /// (to measure or test the other paths on such a CPU).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let off = |var: &str| std::env::var(var).as_deref() == Ok("0");
            Isa::ALL
                .into_iter()
                .rev()
                .find(|isa| {
                    isa.present()
                        && !(*isa == Isa::Avx512Vnni && off("YANGTUO_CPU_AVX512"))
                        && !(*isa > Isa::Avx2 && off("YANGTUO_CPU_VNNI"))
                })
                .unwrap_or(Isa::Avx2)
        })
    }

    const ALL: [Isa; 3] = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni];

    pub fn present(self) -> bool {
        match self {
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            Isa::AvxVnni => Isa::Avx2.present() && is_x86_feature_detected!("avxvnni"),
            Isa::Avx512Vnni => {
                Isa::Avx2.present()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
        }
    }
}

/// Output rows `rows` of `dst[m, n]` (row-major, n columns) for weights `w` in `format`,
/// which must satisfy [`supports`], on `isa` (see [`Isa::detect`]). `w` holds all n rows;
/// k is a multiple of the block.
///
/// # Safety
/// `dst` must point at `m * n` writable f32 that no other thread writes in `rows`' columns.
pub unsafe fn matmul_rows(
    isa: Isa,
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    x: &QuantizedActs,
    w: &[u8],
    rows: std::ops::Range<usize>,
    dst: *mut f32,
) {
    assert!(supports(format) && k % format.block_elems() == 0 && x.qs.len() == m * k);
    assert!(isa.present());
    let row_bytes = k / format.block_elems() * format.block_bytes();
    assert!(w.len() >= n * row_bytes && rows.end <= n);
    // Long prompts go in blocks of tokens whose int8 inputs stay in L2 while every row of
    // this work item passes over them (512 tokens of 5632 inputs are 2.9 MB).
    let block = (super::cpu::L2_BUDGET / k).max(TILE) / TILE * TILE;
    for first in (0..m).step_by(block) {
        let end = (first + block).min(m);
        let mut whole = rows.start;
        // A tile's worth of tokens pays for the transposes; decode takes the path below.
        if grouped::supports(format) && end - first >= grouped::min_tokens(isa) {
            let size = grouped::rows(isa);
            while whole + size <= rows.end {
                // SAFETY: the ISA was checked; the caller's contract covers these rows.
                unsafe { grouped::matmul_group(isa, format, (k, n), x, w, row_bytes, whole, first..end, dst) };
                whole += size;
            }
        }
        for r in whole..rows.end {
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            let mut t = first;
            while t < end {
                let mut out = [0f32; TILE];
                let tile = if end - t >= TILE { TILE } else { 1 };
                // SAFETY: the features were checked (`isa.present()`); lengths above.
                unsafe {
                    match (format, tile) {
                        (WeightFormat::Q4_0, TILE) => {
                            row::<Q4_0, TILE>(isa, wr, x, k, t, &mut out)
                        }
                        (WeightFormat::Q4_0, _) => row::<Q4_0, 1>(isa, wr, x, k, t, &mut out),
                        (WeightFormat::Q8_0, TILE) => {
                            row::<Q8_0, TILE>(isa, wr, x, k, t, &mut out)
                        }
                        (WeightFormat::Q8_0, _) => row::<Q8_0, 1>(isa, wr, x, k, t, &mut out),
                        (WeightFormat::Q4K, TILE) => row::<Q4K, TILE>(isa, wr, x, k, t, &mut out),
                        (WeightFormat::Q4K, _) => row::<Q4K, 1>(isa, wr, x, k, t, &mut out),
                        (_, TILE) => row::<Q6K, TILE>(isa, wr, x, k, t, &mut out),
                        (_, _) => row::<Q6K, 1>(isa, wr, x, k, t, &mut out),
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
        Blocks { q: [zero; 8], scale: [0.0; 8], min: [0.0; 8], lane: [zero; 8] }
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

fn f16_at(p: *const u8) -> f32 {
    // SAFETY: callers pass the address of an in-bounds f16.
    f16::from_bits(u16::from_le_bytes(unsafe { [*p, *p.add(1)] })).to_f32()
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

struct Q4_0;
impl Format for Q4_0 {
    const BYTES: usize = 8 * 18;
    // d · (nibble − 8) = d · nibble − 8d: the nibble goes in unsigned and 8d is a min
    const HAS_MIN: bool = true;
    const UNSIGNED: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8, count: usize, b: &mut Blocks) {
        for i in 0..count {
            // SAFETY: block i < count lies inside the row.
            unsafe {
                let p = p.add(i * 18);
                let packed = _mm_loadu_si128(p.add(2) as *const __m128i);
                // low nibbles → elements 0..16 (lower lane), high nibbles → 16..32
                let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                b.q[i] = _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
                b.scale[i] = f16_at(p);
                b.min[i] = 8.0 * b.scale[i];
            }
        }
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

/// ggml's block_q4_K: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 of nibbles.
struct Q4K;
impl Format for Q4K {
    const BYTES: usize = 144;
    const HAS_MIN: bool = true;
    const UNSIGNED: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8, _count: usize, b: &mut Blocks) {
        // SAFETY: the super-block's 144 bytes lie inside the row.
        unsafe {
            (b.scale, b.min) = q4k_scales(p);
            for j in 0..8 {
                b.q[j] = nibbles32(p.add(16 + 32 * (j / 2)), j % 2 == 1);
            }
        }
    }
}

/// The scale d · sc_j and min dmin · m_j of each sub-block j of the Q4_K super-block at
/// `p` (its 6-bit scales and mins packed in 12 bytes, as ggml's `get_scale_min_k4`).
///
/// # Safety
/// `p` points at a whole super-block (144 bytes).
#[inline(always)]
pub(super) unsafe fn q4k_scales(p: *const u8) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = (f16_at(p), f16_at(unsafe { p.add(2) }));
    let sc = unsafe { std::slice::from_raw_parts(p.add(4), 12) };
    let (mut scale, mut min) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let (s, m) = if j < 4 {
            (sc[j] & 63, sc[j + 4] & 63)
        } else {
            ((sc[j + 4] & 0xf) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
        };
        scale[j] = d * s as f32;
        min[j] = dmin * m as f32;
    }
    (scale, min)
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

row_tile!(row_tile_vnni512, "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni", |a, b| {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
});

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
                if F::UNSIGNED { q } else { _mm512_xor_si512(q, _mm512_set1_epi8(-128)) }
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
        _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xdd))
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
            (_mm256_loadu_ps(x.d.as_ptr().add(first)), _mm256_loadu_ps(x.sum.as_ptr().add(first)))
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
    #[test]
    fn matches_the_integer_dot_product_on_odd_shapes() {
        for format in [
            WeightFormat::Q4_0,
            WeightFormat::Q8_0,
            WeightFormat::Q4K,
            WeightFormat::Q6K,
        ] {
            if !supports(format) {
                eprintln!("skipped: no AVX2 here");
                return;
            }
            let shapes: &[(usize, usize, usize)] = if format.block_elems() == 256 {
                // 300 tokens of 2048 inputs: three blocks of cpu::L2_BUDGET
                // and 16- and 8-row groups (cpu_q8_rows.rs) with leftover rows and tokens
                &[(1, 256, 1), (3, 512, 5), (9, 768, 4), (17, 2048, 3), (300, 2048, 2), (11, 512, 37), (20, 512, 33), (1, 2048, 32)]
            } else {
                &[
                    (1, 32, 1),
                    (3, 96, 5),
                    (7, 160, 9),
                    (9, 352, 4),
                    (13, 2048, 3),
                    (17, 8 * 32 + 32 * 3, 2),
                    (300, 2048, 2),
                    (11, 352, 37),
                    (1, 2048, 32),
                    (70, 2048, 17),
                ]
            };
            for &(m, k, n) in shapes {
                let mut rng = crate::testing::Rng(0x2545_f491);
                let mut rnd = || rng.f32();
                let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let w = crate::quant::quantize(format, &wf);
                let mut wd = vec![0f32; n * k];
                crate::quant::dequantize(format, &w, &mut wd);
                let xq = quantize_acts(&x);
                for isa in Isa::ALL.into_iter().filter(|isa| isa.present()) {
                    let mut dst = vec![0f32; m * n];
                    unsafe { matmul_rows(isa, format, (m, k, n), &xq, &w, 0..n, dst.as_mut_ptr()) };
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
                                "{format:?} {m}x{k}x{n} {isa:?} [{t},{r}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
