//! Q4_0 repacked at load time eight rows at a time, and its product with int8
//! activations (the math of mod.rs): decode and prompts alike.
//!
//! Layout, per group of eight rows g and block b (32 weights), at `(g · nb + b) · 144`:
//!   bytes 0..16    the eight rows' f16 scales d, row r at 2r;
//!   bytes 16..144  four chunks c of 32 bytes, row r's packed bytes 4c..4c+4 at 16 + 32c + 4r
//!                  (packed byte j holds weight j in its low nibble and 16 + j in its high).
//! So the low nibbles of chunk c are weights 4c..4c+4 of every row, one row per i32 lane,
//! and one `vpdpbusd` with the token's inputs 4c..4c+4 broadcast adds four products to
//! each row's own lane: no horizontal sums, and one conversion and one FMA scale eight
//! rows. Rows past n (the last group) are zeros.
//!
//! Per token and row the sum runs over the blocks in order with one accumulator:
//!   acc = fma(f32(Σ nibble · qx − 8 · Σ qx), d · dx, acc)
//! (the integer part is exact), whatever the tile of tokens it shares: a token's product
//! has the same bits alone, in a decode batch or in a prompt of any length.
//!
//! Why repack (llama.cpp does the same for Q4_0 on x86 and ARM): in the file's order a
//! block's products end up in eight lanes of one row, and summing them across lanes
//! costs as many instructions as the products themselves. Decode ran at 0.6–0.8× llama.cpp
//! that way. The copy replaces the mapped pages (cpu/mod.rs releases them).

use super::blocks::{QK, QuantizedActs};
use crate::backend::cpu::parallel::{L2_BUDGET, SharedOut};
use crate::backend::cpu::simd::Isa;
use candle_core::utils::barrier_pool;
use std::arch::x86_64::*;

/// Rows per packed group: the i32 lanes of a 256-bit vector.
pub const ROWS: usize = 8;
/// Bytes of the file's Q4_0 block: an f16 scale and 16 bytes of nibbles.
const BLOCK: usize = 18;
/// Bytes of one packed block of eight rows.
const PACKED: usize = ROWS * BLOCK;

/// Whether this CPU runs the packed product (AVX2 at least).
pub fn supported() -> bool {
    Isa::Avx2.present()
}

/// Bytes of n rows of k weights, packed (n rounded up to whole groups).
pub fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(ROWS) * (k / QK) * PACKED
}

/// The packed copy of `w`, n rows of k weights in the file's Q4_0 layout. The cores
/// share the copying (it is most of the load time of a mapped file).
pub fn pack(w: &[u8], n: usize, k: usize) -> Vec<u8> {
    let nb = k / QK;
    assert!(k % QK == 0 && w.len() >= n * nb * BLOCK);
    let mut out = vec![0u8; packed_len(n, k)];
    let groups = n.div_ceil(ROWS);
    let threads = candle_core::utils::get_num_threads().clamp(1, groups.max(1));
    let per_thread = groups.div_ceil(threads).max(1) * nb * PACKED;
    std::thread::scope(|scope| {
        for (i, part) in out.chunks_mut(per_thread).enumerate() {
            let first = i * per_thread / PACKED;
            scope.spawn(move || {
                for (j, dst) in part.chunks_exact_mut(PACKED).enumerate() {
                    let (g, b) = ((first + j) / nb, (first + j) % nb);
                    for r in 0..ROWS.min(n - g * ROWS) {
                        let src = &w[((g * ROWS + r) * nb + b) * BLOCK..][..BLOCK];
                        dst[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
                        for c in 0..4 {
                            dst[16 + 32 * c + 4 * r..][..4].copy_from_slice(&src[2 + 4 * c..][..4]);
                        }
                    }
                }
            });
        }
    });
    out
}

/// Row r of a packed matrix of k columns, back in the file's Q4_0 layout (for `embed`).
pub fn unpack_row(packed: &[u8], k: usize, r: usize) -> Vec<u8> {
    let nb = k / QK;
    let (g, lane) = (r / ROWS, r % ROWS);
    let mut out = vec![0u8; nb * BLOCK];
    for (b, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
        let src = &packed[(g * nb + b) * PACKED..][..PACKED];
        dst[..2].copy_from_slice(&src[2 * lane..2 * lane + 2]);
        for c in 0..4 {
            dst[2 + 4 * c..][..4].copy_from_slice(&src[16 + 32 * c + 4 * lane..][..4]);
        }
    }
    out
}

/// `dst[m, n] = x[m, k] · W[n, k]ᵀ` for W packed by [`pack`], threads splitting the row
/// groups. Needs AVX2 ([`supported`]).
pub fn matmul((m, k, n): (usize, usize, usize), x: &[f32], packed: &[u8], dst: &mut [f32]) {
    let xq = super::quantize_acts(x);
    let isa = Isa::detect().expect("the caller checked AVX2");
    let out = SharedOut::new(dst);
    barrier_pool().execute_chunked(n.div_ceil(ROWS), |groups| {
        // SAFETY: each work item owns its groups' output columns.
        unsafe { matmul_groups(isa, (m, k, n), &xq, packed, groups, out.ptr()) }
    });
}

/// Row groups `groups` of `dst[m, n]` (row-major, n columns).
///
/// # Safety
/// `isa` is present; `dst` points at `m * n` writable f32 that no other thread writes in
/// these groups' columns.
pub unsafe fn matmul_groups(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    x: &QuantizedActs,
    packed: &[u8],
    groups: std::ops::Range<usize>,
    dst: *mut f32,
) {
    assert!(isa.present() && k % QK == 0 && x.qs.len() == m * k);
    assert!(packed.len() >= packed_len(n, k) && groups.end <= n.div_ceil(ROWS));
    let wide = isa == Isa::Avx512Vnni;
    let widest = if wide { 8 } else { 4 };
    // Long prompts go in blocks of tokens whose int8 inputs stay in L2 while this work
    // item's rows pass over them.
    let block = (L2_BUDGET / k).max(widest) / widest * widest;
    for first in (0..m).step_by(block) {
        let end = (first + block).min(m);
        let mut g = groups.start;
        while g < groups.end {
            // Two groups in 512-bit vectors for tiles of several tokens (half the
            // instructions; a lane's arithmetic is the same, so are its bits). One token
            // is bound by memory, and stays in 256 bits.
            let span = if wide && g + 1 < groups.end { 2 } else { 1 };
            let mut t = first;
            while t < end {
                let tile = [8, 4, 2, 1]
                    .into_iter()
                    .find(|&s| s <= widest && end - t >= s)
                    .unwrap_or(1);
                let mut products = [[0f32; 2 * ROWS]; 8];
                for half in 0..span {
                    if span == 2 && tile > 1 {
                        // SAFETY: AVX-512 VNNI is present; groups g, g + 1 and the tokens exist.
                        unsafe { two_groups(packed, x, k, g, t, tile, &mut products) };
                        break;
                    }
                    // SAFETY: the ISA is present; group g + half and the tokens exist.
                    unsafe {
                        one_group(
                            isa,
                            packed,
                            x,
                            k,
                            g + half,
                            t,
                            tile,
                            half * ROWS,
                            &mut products,
                        )
                    };
                }
                let rows = (span * ROWS).min(n - g * ROWS);
                for (i, lanes) in products[..tile].iter().enumerate() {
                    // SAFETY: the caller owns these columns; t + i < m.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(dst.add((t + i) * n + g * ROWS), rows)
                    };
                    row.copy_from_slice(&lanes[..rows]);
                }
                t += tile;
            }
            g += span;
        }
    }
}

/// `out[j][at + r]` = row 8g + r times token t0 + j, for `tokens` (1, 2, 4 or 8) tokens.
///
/// # Safety
/// `isa` is present (8 tokens only with AVX-512 VNNI); group g and the tokens exist.
#[allow(clippy::too_many_arguments)]
unsafe fn one_group(
    isa: Isa,
    packed: &[u8],
    x: &QuantizedActs,
    k: usize,
    g: usize,
    t0: usize,
    tokens: usize,
    at: usize,
    out: &mut [[f32; 2 * ROWS]; 8],
) {
    macro_rules! each_tile {
        ($isa:ident) => {
            match tokens {
                8 => $isa::tokens8(packed, x, k, g, t0, at, out),
                4 => $isa::tokens4(packed, x, k, g, t0, at, out),
                2 => $isa::tokens2(packed, x, k, g, t0, at, out),
                _ => $isa::tokens1(packed, x, k, g, t0, at, out),
            }
        };
    }
    // SAFETY: passed on from the caller.
    unsafe {
        match isa {
            Isa::Avx512Vnni => each_tile!(vnni512),
            Isa::AvxVnni => each_tile!(vnni),
            Isa::Avx2 => each_tile!(avx2),
        }
    }
}

/// `out[j][r]` = row 8g + r (r < 16: groups g and g + 1) times token t0 + j, for `tokens`
/// (2, 4 or 8) tokens, in 512-bit vectors.
///
/// # Safety
/// AVX-512 VNNI is present; groups g, g + 1 and the tokens exist.
unsafe fn two_groups(
    packed: &[u8],
    x: &QuantizedActs,
    k: usize,
    g: usize,
    t0: usize,
    tokens: usize,
    out: &mut [[f32; 2 * ROWS]; 8],
) {
    // SAFETY: passed on from the caller.
    unsafe {
        match tokens {
            8 => wide::tokens8(packed, x, k, g, t0, out),
            4 => wide::tokens4(packed, x, k, g, t0, out),
            _ => wide::tokens2(packed, x, k, g, t0, out),
        }
    }
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
            out: &mut [[f32; 2 * ROWS]; 8],
        ) {
            let nb = k / QK;
            let low = _mm256_set1_epi8(0x0f);
            let zero = _mm256_setzero_si256();
            let group = packed.as_ptr().wrapping_add(g * nb * PACKED);
            $( let mut $acc = _mm256_setzero_ps(); )+
            for b in 0..nb {
                // SAFETY: block b of group g and of the tile's tokens lie inside `packed`
                // and `x` (matmul_groups asserted the lengths).
                unsafe {
                    let p = group.add(b * PACKED);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                    let mut w = [zero; 8];
                    for c in 0..4 {
                        let v = _mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i);
                        w[c] = _mm256_and_si256(v, low);
                        w[4 + c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    }
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
                        // weight = d · (nibble − 8): the 8 comes off in integers, exactly
                        let s = _mm256_sub_epi32(
                            _mm256_add_epi32(s0, s1),
                            _mm256_set1_epi32(8 * x.qsum[blk]),
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
            out: &mut [[f32; 2 * ROWS]; 8],
        ) {
            let nb = k / QK;
            let low = _mm512_set1_epi8(0x0f);
            let zero = _mm512_setzero_si512();
            let first = packed.as_ptr().wrapping_add(g * nb * PACKED);
            let second = first.wrapping_add(nb * PACKED);
            $( let mut $acc = _mm512_setzero_ps(); )+
            for b in 0..nb {
                // SAFETY: block b of groups g, g + 1 and of the tile's tokens lie inside
                // `packed` and `x` (matmul_groups asserted the lengths).
                unsafe {
                    let (p, q) = (first.add(b * PACKED), second.add(b * PACKED));
                    let d = _mm512_cvtph_ps(_mm256_set_m128i(
                        _mm_loadu_si128(q as *const __m128i),
                        _mm_loadu_si128(p as *const __m128i),
                    ));
                    let mut w = [zero; 8];
                    for c in 0..4 {
                        let v = _mm512_inserti64x4(
                            _mm512_castsi256_si512(_mm256_loadu_si256(p.add(16 + 32 * c) as *const __m256i)),
                            _mm256_loadu_si256(q.add(16 + 32 * c) as *const __m256i),
                            1,
                        );
                        w[c] = _mm512_and_si512(v, low);
                        w[4 + c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                    }
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
                            _mm512_set1_epi32(8 * x.qsum[blk]),
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

mod wide {
    use super::*;
    wide_kernel!(tokens2, 0 a0, 1 a1);
    wide_kernel!(tokens4, 0 a0, 1 a1, 2 a2, 3 a3);
    wide_kernel!(tokens8, 0 a0, 1 a1, 2 a2, 3 a3, 4 a4, 5 a5, 6 a6, 7 a7);
}

/// The four tiles for one instruction set.
macro_rules! isa_kernels {
    ($isa:ident, $features:literal, $dot:expr) => {
        mod $isa {
            use super::*;
            tile_kernel!(tokens1, $features, $dot, 0 a0);
            tile_kernel!(tokens2, $features, $dot, 0 a0, 1 a1);
            tile_kernel!(tokens4, $features, $dot, 0 a0, 1 a1, 2 a2, 3 a3);
            tile_kernel!(tokens8, $features, $dot, 0 a0, 1 a1, 2 a2, 3 a3, 4 a4, 5 a5, 6 a6, 7 a7);
        }
    };
}

// A pair of nibbles times int8 is at most 2 · 15 · 128: `maddubs` never saturates.
isa_kernels!(avx2, "avx2,fma,f16c", |acc, w, x| _mm256_add_epi32(
    acc,
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
));
isa_kernels!(vnni, "avx2,fma,f16c,avxvnni", |acc, w, x| {
    _mm256_dpbusd_avx_epi32(acc, w, x)
});
isa_kernels!(
    vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    |acc, w, x| _mm256_dpbusd_epi32(acc, w, x)
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightFormat;

    fn random_q4_0(n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = crate::testing::Rng(seed);
        let wf: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
        crate::weights::ggml::quantize(WeightFormat::Q4_0, &wf)
    }

    #[test]
    fn unpacking_a_row_gives_the_file_row_back() {
        let (n, k) = (13, 96);
        let w = random_q4_0(n, k, 7);
        let packed = pack(&w, n, k);
        for r in 0..n {
            assert_eq!(
                unpack_row(&packed, k, r),
                w[r * 54..(r + 1) * 54],
                "row {r}"
            );
        }
    }

    /// Batch invariance: a token's product has the same bits alone and in a batch of any
    /// size, with every tile and the L2 blocks of long prompts.
    #[test]
    fn a_token_gets_the_same_bits_alone_and_in_any_batch() {
        if !supported() {
            eprintln!("skipped: no AVX2 here");
            return;
        }
        let (k, n) = (352, 37);
        let w = random_q4_0(n, k, 0x9e37_79b9);
        let packed = pack(&w, n, k);
        let mut rng = crate::testing::Rng(5);
        for m in [2, 3, 4, 5, 8, 9, 16, 17, 40, 800] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let xq = super::super::quantize_acts(&x);
            for isa in Isa::ALL.into_iter().filter(|isa| isa.present()) {
                let groups = 0..n.div_ceil(ROWS);
                let mut dst = vec![0f32; m * n];
                unsafe {
                    matmul_groups(
                        isa,
                        (m, k, n),
                        &xq,
                        &packed,
                        groups.clone(),
                        dst.as_mut_ptr(),
                    )
                };
                for t in 0..m {
                    let alone = super::super::quantize_acts(&x[t * k..(t + 1) * k]);
                    let mut one = vec![0f32; n];
                    unsafe {
                        matmul_groups(
                            isa,
                            (1, k, n),
                            &alone,
                            &packed,
                            groups.clone(),
                            one.as_mut_ptr(),
                        )
                    };
                    for r in 0..n {
                        assert_eq!(
                            dst[t * n + r].to_bits(),
                            one[r].to_bits(),
                            "m={m} {isa:?} token {t} row {r}"
                        );
                    }
                }
            }
        }
    }

    /// Against a plain f64 loop over the same quantized values: the kernel's only error is
    /// f32 accumulation. (gguf-py's dequantizer is the reference in tests/tests/quant.rs.)
    #[test]
    fn matches_the_integer_dot_product_on_odd_shapes() {
        if !supported() {
            eprintln!("skipped: no AVX2 here");
            return;
        }
        for (m, k, n) in [
            (1, 32, 1),
            (3, 96, 5),
            (7, 160, 9),
            (13, 2048, 3),
            (300, 2048, 17),
            (1, 2048, 32),
        ] {
            let mut rng = crate::testing::Rng(0x2545_f491);
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let w = random_q4_0(n, k, 11);
            let mut wd = vec![0f32; n * k];
            crate::weights::ggml::dequantize(WeightFormat::Q4_0, &w, &mut wd);
            let xq = super::super::quantize_acts(&x);
            let packed = pack(&w, n, k);
            for isa in Isa::ALL.into_iter().filter(|isa| isa.present()) {
                let mut dst = vec![0f32; m * n];
                let groups = 0..n.div_ceil(ROWS);
                unsafe { matmul_groups(isa, (m, k, n), &xq, &packed, groups, dst.as_mut_ptr()) };
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
                            "{m}x{k}x{n} {isa:?} [{t},{r}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
