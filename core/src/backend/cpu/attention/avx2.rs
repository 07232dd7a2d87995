//! One query's softmax and weighted sum of the values on AVX2 + FMA, from scores that
//! mod.rs computed as a product with the cached keys: the fast path of `Cpu::attention`,
//! whose plain loop (`AttnHead::attend` in mod.rs) is the reference.
//!
//! Why: at long contexts attention, not the weights, is most of the CPU's time per token
//! (2048 cached positions × 32 heads is 65k dot products per layer), and the plain loop,
//! even vectorized by the compiler, keeps the output in memory. Here the weighted sum of
//! the values keeps 64 output dims in registers while it passes over the keys.

use super::KvElem;
use std::arch::x86_64::*;

/// `out = Σ_p softmax(att)_p · v_p` over p < att.len(), value p at `v[p * stride..]`, for
/// scores already scaled; hd = out.len(). `att` is left holding the softmax's numerators.
///
/// # Safety
/// AVX2, FMA and F16C are present; hd is a multiple of 8; v holds att.len() rows of
/// `stride` (the last one may end after hd).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_scored<T: KvElem>(att: &mut [f32], v: &[T], stride: usize, out: &mut [f32]) {
    let (len, hd) = (att.len(), out.len());
    debug_assert!(hd.is_multiple_of(8) && len > 0 && v.len() >= (len - 1) * stride + hd);
    let nv = hd / 8;
    // SAFETY (all below): in bounds by the contract above.
    unsafe {
        // softmax: eight at a time, then the tail
        let body = len / 8 * 8;
        let mut max8 = _mm256_set1_ps(f32::NEG_INFINITY);
        for p in (0..body).step_by(8) {
            max8 = _mm256_max_ps(max8, _mm256_loadu_ps(att.as_ptr().add(p)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), max8);
        let max = att[body..]
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |m, a| m.max(*a));
        let mut sum8 = _mm256_setzero_ps();
        for p in (0..body).step_by(8) {
            let e = exp8(_mm256_sub_ps(
                _mm256_loadu_ps(att.as_ptr().add(p)),
                _mm256_set1_ps(max),
            ));
            _mm256_storeu_ps(att.as_mut_ptr().add(p), e);
            sum8 = _mm256_add_ps(sum8, e);
        }
        let mut sum = crate::backend::cpu::simd::hsum(sum8);
        for a in &mut att[body..] {
            *a = (*a - max).exp();
            sum += *a;
        }
        let inv = _mm256_set1_ps(1.0 / sum);
        // 64 dims at a time, then the rest
        let mut c = 0;
        while c + 8 <= nv {
            values::<T, 8>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            );
            c += 8;
        }
        match nv - c {
            0 => {}
            1 => values::<T, 1>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            ),
            2 => values::<T, 2>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            ),
            3 => values::<T, 3>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            ),
            4 => values::<T, 4>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            ),
            5 => values::<T, 5>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            ),
            6 => values::<T, 6>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            ),
            _ => values::<T, 7>(
                att,
                v.as_ptr().add(8 * c),
                stride,
                inv,
                out.as_mut_ptr().add(8 * c),
            ),
        }
    }
}

/// `out[..8M] = inv · Σ_p w[p] · v[p · stride..][..8M]`, the M vectors of the sum held in
/// registers across all the keys.
#[inline(always)]
unsafe fn values<T: KvElem, const M: usize>(
    w: &[f32],
    v: *const T,
    stride: usize,
    inv: __m256,
    out: *mut f32,
) {
    // SAFETY: the caller's rows p < w.len() hold 8M values at v + p · stride; out holds 8M.
    unsafe {
        let mut o = [_mm256_setzero_ps(); M];
        for (p, wp) in w.iter().enumerate() {
            let wv = _mm256_set1_ps(*wp);
            let row = v.add(p * stride);
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = _mm256_fmadd_ps(wv, T::load8(row.add(8 * i)), *oi);
            }
        }
        for (i, oi) in o.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * i), _mm256_mul_ps(*oi, inv));
        }
    }
}

/// e^x in each lane, for x ≤ 0 (softmax's arguments): Cephes' expf, x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by a degree-7 polynomial, 2^n into the exponent. Within 2 ulp of the
/// correctly rounded e^x; below −87 (where e^x is subnormal or zero) it returns e^−87.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: AVX2 and FMA are present in every caller.
    unsafe {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        // r = x − n·ln 2, with ln 2 in two parts so that the product is exact enough
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
    }
}

#[cfg(test)]
mod tests {
    /// exp8 against f64 over softmax's range: within 2 ulp (relative 2.4e-7).
    #[test]
    fn exp8_is_within_two_ulp() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        use std::arch::x86_64::*;
        let xs: Vec<f32> = (0..=87_000).map(|i| -(i as f32) / 1000.0).collect();
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            unsafe {
                _mm256_storeu_ps(
                    got.as_mut_ptr(),
                    super::exp8(_mm256_loadu_ps(chunk.as_ptr())),
                )
            };
            for (x, g) in chunk.iter().zip(got) {
                let want = (*x as f64).exp();
                assert!(
                    ((g as f64 - want) / want).abs() <= 2.4e-7,
                    "exp({x}) = {g}, want {want}"
                );
            }
        }
    }
}
