//! The kernels of the formats with one f16 scale per block of 32 weights and an integer
//! offset (Q4_0: weight = d (nibble - 8); Q8_0: weight = d ((q + 128) - 128)). A format
//! brings how a packed block's eight vectors of weights come out of its bytes and its
//! offset; each (token, row) sums over the blocks in order with one accumulator:
//!   acc = fma(f32(Σ w · qx − offset · Σ qx), d · dx, acc)
//! (the integer part is exact). The packed block starts with the eight rows' f16 d.

/// One kernel for a `tile_kernel!` (packed.rs's `kernels!`): the tokens `$j` of the tile,
/// each with its accumulator `$acc` (named, not an array: indexed in a loop LLVM kept a
/// tile of eight on the stack). `$unpack(p)` gives a block's eight vectors of u8 weights,
/// vector c holding weights 4c..4c+4 of each row; `$dot(acc, w, x)` adds u8 `w` times i8 `x`
/// over groups of four bytes to the eight i32 of `acc`.
macro_rules! block32_tile_kernel {
    ($unpack:expr, $offset:literal; $name:ident, $features:literal, $dot:expr, $($j:literal $acc:ident),+) => {
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
                    let w: [__m256i; 8] = $unpack(p);
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
                        // the offset comes off in integers, exactly
                        let s = _mm256_sub_epi32(
                            _mm256_add_epi32(s0, s1),
                            _mm256_set1_epi32($offset * x.qsum[blk]),
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

/// As `block32_tile_kernel!` for groups g and g + 1 side by side in 512-bit vectors
/// (`$unpack(p, q)` takes both groups' blocks): each lane runs the same instructions on the
/// same values, so gives the same bits.
macro_rules! block32_wide_kernel {
    ($unpack:expr, $offset:literal; $name:ident, $($j:literal $acc:ident),+) => {
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
                    let w: [__m512i; 8] = $unpack(p, q);
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
                            _mm512_set1_epi32($offset * x.qsum[blk]),
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

pub(super) use {block32_tile_kernel, block32_wide_kernel};
