//! What this CPU offers the kernels, detected once, and the small SIMD helpers the kernels
//! share. A leaf: every kernel may import it; it imports none of them.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// The instruction sets the kernels use. Each kernel maps these to its own variants
/// (the dense product's tile width, the int8 products' [`Isa`]); the CPUID reads happen
/// only here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// AVX2 + FMA + F16C: every SIMD path needs at least these.
    pub avx2: bool,
    /// AVX-512F (with `avx2`): the dense products in 16 lanes.
    pub avx512: bool,
    /// AVX-VNNI (Zen 4, Alder Lake and later): `vpdpbusd` on 256 bits.
    pub avx_vnni: bool,
    /// AVX-512 F, BW, VL and VNNI (with `avx2`): two int8 blocks per `vpdpbusd`.
    pub avx512_vnni: bool,
}

impl Features {
    /// What the CPU has (the kernels' unit tests run every path listed here).
    pub fn present() -> Features {
        static PRESENT: OnceLock<Features> = OnceLock::new();
        *PRESENT.get_or_init(detect)
    }

    /// What the kernels use: [`Features::present`] less what the switches turn off.
    /// `YANGTUO_CPU_AVX512=0` leaves out AVX-512 and `YANGTUO_CPU_VNNI=0` the int8
    /// dot-product instructions, to measure or test the other paths on such a CPU.
    pub fn chosen() -> Features {
        static CHOSEN: OnceLock<Features> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let off = |var: &str| std::env::var(var).as_deref() == Ok("0");
            let mut f = Features::present();
            if off("YANGTUO_CPU_AVX512") {
                f.avx512 = false;
                f.avx512_vnni = false;
            }
            if off("YANGTUO_CPU_VNNI") {
                f.avx_vnni = false;
                f.avx512_vnni = false;
            }
            f
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    Features {
        avx2,
        avx512: avx2 && is_x86_feature_detected!("avx512f"),
        avx_vnni: avx2 && is_x86_feature_detected!("avxvnni"),
        avx512_vnni: avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

/// The instructions an int8 product (q8/) runs on.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Isa {
    Avx2,
    /// AVX-VNNI: `vpdpbusd` on 256 bits.
    AvxVnni,
    /// AVX-512 VNNI (+BW, VL): two blocks per `vpdpbusd`, 32 registers.
    Avx512Vnni,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni];

    /// The best of [`Features::chosen`]; `None` without AVX2.
    pub fn detect() -> Option<Isa> {
        Isa::best(Features::chosen())
    }

    /// Whether the CPU has it, switches aside.
    pub fn present(self) -> bool {
        self.within(Features::present())
    }

    fn best(f: Features) -> Option<Isa> {
        Isa::ALL.into_iter().rev().find(|isa| isa.within(f))
    }

    fn within(self, f: Features) -> bool {
        match self {
            Isa::Avx2 => f.avx2,
            Isa::AvxVnni => f.avx_vnni,
            Isa::Avx512Vnni => f.avx512_vnni,
        }
    }
}

/// The sum of the eight lanes, as ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)): `hsums`
/// repeats this tree for many vectors at once, so that the dense kernels' one-token and
/// many-token tiles give the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// `hsum` of each vector of `v` into `out`, bit for bit, eight vectors at a time through
/// one transpose (about a quarter of the instructions): for kernels that end many dot
/// products at once. Inlined, so that it takes its callers' features (AVX2).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn hsums(v: &[__m256], out: &mut [f32]) {
    for (vs, os) in v.chunks(8).zip(out.chunks_mut(8)) {
        // SAFETY: AVX2 is the caller's contract.
        unsafe {
            let mut eight = [_mm256_setzero_ps(); 8];
            eight[..vs.len()].copy_from_slice(vs);
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), hsum8(eight));
            os.copy_from_slice(&lanes[..os.len()]);
        }
    }
}

/// Lane i is `hsum(v[i])`: the same additions (a + b and b + a round alike), transposed.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum8(v: [__m256; 8]) -> __m256 {
    // SAFETY: AVX2 is the caller's contract.
    unsafe {
        // hsum's first step for a pair: [a.lo + a.hi | b.lo + b.hi], lanes s0..s3 each
        let ab = halves_added(v[0], v[1]);
        let cd = halves_added(v[2], v[3]);
        let ef = halves_added(v[4], v[5]);
        let gh = halves_added(v[6], v[7]);
        // then [s0 + s2, s1 + s3]: x = [a, a', c, c' | b, b', d, d'] (y: e, g | f, h)
        let x = _mm256_add_ps(
            _mm256_shuffle_ps::<0x44>(ab, cd),
            _mm256_shuffle_ps::<0xee>(ab, cd),
        );
        let y = _mm256_add_ps(
            _mm256_shuffle_ps::<0x44>(ef, gh),
            _mm256_shuffle_ps::<0xee>(ef, gh),
        );
        // then the two added: [a, c, e, g | b, d, f, h]
        let r = _mm256_add_ps(
            _mm256_shuffle_ps::<0x88>(x, y),
            _mm256_shuffle_ps::<0xdd>(x, y),
        );
        _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn halves_added(a: __m256, b: __m256) -> __m256 {
    // SAFETY: AVX is the caller's contract.
    unsafe {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    }
}

/// Dot product in eight lanes, so that it vectorizes (a plain `sum()` must keep the
/// sequential order and stays scalar). Inlined, so that it takes its callers' features.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (av, bv) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += av[i] * bv[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// `hsums` gives `hsum`'s bits for every vector, in any count (the dense kernels rely
    /// on it to sum a token alike at every tile size).
    #[test]
    fn hsums_equals_hsum_bit_for_bit() {
        if !Features::present().avx2 {
            return;
        }
        let mut rng = crate::testing::Rng(0x0bad_cafe);
        for count in [1, 3, 8, 13, 24] {
            // mixed magnitudes, so that the order of the additions shows in the bits
            let lanes: Vec<f32> = (0..count * 8)
                .map(|i| rng.f32() * [1e-3, 1.0, 1e4][i % 3])
                .collect();
            let v: Vec<__m256> = lanes
                .chunks(8)
                .map(|c| unsafe { _mm256_loadu_ps(c.as_ptr()) })
                .collect();
            let mut got = vec![0f32; count];
            unsafe { hsums_avx2(&v, &mut got) };
            for (i, g) in got.iter().enumerate() {
                let want = unsafe { hsum(v[i]) };
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "vector {i} of {count}: {g} vs {want}"
                );
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsums_avx2(v: &[__m256], out: &mut [f32]) {
        unsafe { hsums(v, out) }
    }
}
