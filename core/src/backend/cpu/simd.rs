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
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
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

/// The sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Dot product in eight lanes, so that it vectorizes (a plain `sum()` must keep the
/// sequential order and stays scalar). Inlined, so that it takes its callers' features.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (av, bv) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += av[i] * bv[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
