//! Causal GQA attention on the CPU: one work item per (query token, head) with the plain
//! loop below (the readable reference for every GPU kernel), or on AVX2 + FMA the scores of
//! a head's queries as one product with the cached keys (dense.rs), then softmax and values
//! per query (avx2.rs). The cache holds f32 or f16 (`KvElem`); both compute in f32.

#[cfg(target_arch = "x86_64")]
mod avx2;

use super::parallel::{SharedOut, par_for};
use super::simd::dot;
use crate::backend::AttnShape;
use crate::weights::WeightFormat;
use half::f16;

/// An element of a KV cache, widened to f32 as attention reads it.
pub trait KvElem: Copy + Send + Sync + bytemuck::Pod + 'static {
    /// The same bytes as a weight format, for dense.rs's product with the keys.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the keys' product is x86-64's
    const FORMAT: WeightFormat;
    fn to_f32(self) -> f32;
    /// q · k, in f32.
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// Eight elements from `p`, widened.
    ///
    /// # Safety
    /// AVX2 and F16C are present; eight elements are readable at p.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f32 {
    const FORMAT: WeightFormat = WeightFormat::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl KvElem for f16 {
    const FORMAT: WeightFormat = WeightFormat::F16;
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (F16C for the conversion).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
}

/// Rows of f32 `stride` apart.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
}

/// One layer's cached keys and values, `[positions, stride]`.
pub struct Cache<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub stride: usize,
}

impl<T> Clone for Cache<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Cache<'_, T> {}

/// `out[t, h] = Σ_p softmax_p(q[t, h] · k[p, g] / √head_dim) · v[p, g]` over p ≤ pos + t, g
/// the kv head of h, for the n queries at positions pos..pos+n; out rows `out_cols` apart.
pub fn attention<T: KvElem>(
    q: Rows,
    cache: Cache<T>,
    n: usize,
    pos: usize,
    s: AttnShape,
    out: &mut [f32],
    out_cols: usize,
) {
    let head = AttnHead {
        q,
        cache,
        pos,
        s,
        out_cols,
        dst: SharedOut::new(out),
    };
    #[cfg(target_arch = "x86_64")]
    let wide = s.head_dim.is_multiple_of(8) && super::simd::Features::chosen().avx2;
    #[cfg(target_arch = "x86_64")]
    if wide {
        // Per head, its queries' scores as one matrix product with the cached keys, then
        // softmax and values per query. Decode takes this path too, so that a query's bits
        // do not depend on how many queries share its call: a prompt in any chunks, or
        // decoded token by token beside other sequences, leaves the same cache and logits.
        par_for(s.n_heads, |h| {
            // SAFETY: the features and head_dim were checked.
            unsafe { head.heads_avx2(h, n) }
        });
        return;
    }
    // One work item per (query token, head); each writes its own head_dim slice of `out`.
    par_for(n * s.n_heads, |item| head.attend(item));
}

/// The causal attention of one (query token, head) work item.
struct AttnHead<'a, T> {
    q: Rows<'a>,
    cache: Cache<'a, T>,
    pos: usize,
    s: AttnShape,
    out_cols: usize,
    dst: SharedOut,
}

impl<T: KvElem> AttnHead<'_, T> {
    /// Query t of head h.
    fn query(&self, t: usize, h: usize) -> &[f32] {
        let (hd, row) = (self.s.head_dim, t * self.q.stride);
        &self.q.data[row + h * hd..row + (h + 1) * hd]
    }

    /// Where head h's kv head starts in a cache row.
    fn kv_off(&self, h: usize) -> usize {
        (h / (self.s.n_heads / self.s.n_kv_heads)) * self.s.head_dim
    }

    fn scale(&self) -> f32 {
        1.0 / (self.s.head_dim as f32).sqrt()
    }

    /// The output of query t, head h.
    ///
    /// # Safety
    /// Only the work item of (t, h) writes it.
    unsafe fn out(&self, t: usize, h: usize) -> &'static mut [f32] {
        let hd = self.s.head_dim;
        // SAFETY: passed on from the caller.
        unsafe { self.dst.slice(t * self.out_cols + h * hd, hd) }
    }

    /// out[t, h] = Σ_p softmax_p(q[t, h] · k[p, g] / √head_dim) · v[p, g] over p ≤ pos + t,
    /// g the kv head of h; `item` = t · n_heads + h.
    #[inline(always)]
    fn attend(&self, item: usize) {
        let s = self.s;
        let hd = s.head_dim;
        let (t, h) = (item / s.n_heads, item % s.n_heads);
        let kv_dim = self.cache.stride;
        let kv_off = self.kv_off(h);
        let qv = self.query(t, h);
        let len = self.pos + t + 1;
        let scale = self.scale();
        // scores of this query against every cached key up to its own position
        let mut att = vec![0f32; len];
        let mut max = f32::NEG_INFINITY;
        for (p, a) in att.iter_mut().enumerate() {
            *a = T::dot(
                qv,
                &self.cache.k[p * kv_dim + kv_off..p * kv_dim + kv_off + hd],
            ) * scale;
            max = max.max(*a);
        }
        // softmax
        let mut sum = 0.0;
        for a in att.iter_mut() {
            *a = (*a - max).exp();
            sum += *a;
        }
        // weighted sum of the values
        // SAFETY: this is the work item of (t, h).
        let o = unsafe { self.out(t, h) };
        o.fill(0.0);
        for (p, a) in att.iter().enumerate() {
            let vv = &self.cache.v[p * kv_dim + kv_off..p * kv_dim + kv_off + hd];
            let w = a / sum;
            for (oi, vi) in o.iter_mut().zip(vv) {
                *oi += w * vi.to_f32();
            }
        }
    }

    /// `attend` for the n query tokens of head h at once, on AVX2 + FMA: the scores of up
    /// to 64 queries against all the keys they see are one product of the queries with the
    /// cached keys read in place (dense.rs, whose sums for a query do not depend on the
    /// other queries), then softmax and values per query (avx2.rs). Keys past a query's
    /// own position get a score and are left out of its softmax.
    ///
    /// # Safety
    /// AVX2 and FMA are present; head_dim is a multiple of 8.
    #[cfg(target_arch = "x86_64")]
    unsafe fn heads_avx2(&self, h: usize, n: usize) {
        const QUERIES: usize = 64;
        let hd = self.s.head_dim;
        let kv_dim = self.cache.stride;
        let (scale, kv_off) = (self.scale(), self.kv_off(h));
        let (k, v) = (&self.cache.k[kv_off..], &self.cache.v[kv_off..]);
        let mut qs = vec![0f32; QUERIES.min(n) * hd];
        let mut scores = vec![0f32; QUERIES.min(n) * (self.pos + n)];
        for t0 in (0..n).step_by(QUERIES) {
            let nq = QUERIES.min(n - t0);
            let len = self.pos + t0 + nq; // keys the block's last query sees
            for (j, qj) in qs.chunks_exact_mut(hd).take(nq).enumerate() {
                for (d, x) in qj.iter_mut().zip(self.query(t0 + j, h)) {
                    *d = x * scale;
                }
            }
            let sc = &mut scores[..nq * len];
            super::dense::matmul_strided_serial(
                T::FORMAT,
                (nq, hd, len),
                &qs[..nq * hd],
                bytemuck::cast_slice(k),
                kv_dim,
                sc,
            );
            for j in 0..nq {
                let t = t0 + j;
                // SAFETY: work item h alone writes head h's outputs; the caches hold
                // pos + t + 1 rows; the features are the caller's contract.
                unsafe {
                    let row = &mut sc[j * len..j * len + self.pos + t + 1];
                    avx2::attend_scored(row, v, kv_dim, self.out(t, h));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: KvElem>(
        q: &[f32],
        k: &[T],
        v: &[T],
        stride: usize,
        n: usize,
        pos: usize,
        s: AttnShape,
    ) -> Vec<f32> {
        let cols = s.n_heads * s.head_dim;
        let mut out = vec![0f32; n * cols];
        let cache = Cache { k, v, stride };
        attention(
            Rows {
                data: q,
                stride: cols,
            },
            cache,
            n,
            pos,
            s,
            &mut out,
            cols,
        );
        out
    }

    fn to_f16(xs: &[f32]) -> Vec<f16> {
        xs.iter().map(|x| f16::from_f32(*x)).collect()
    }

    /// Against an f64 softmax-attention loop, on head sizes of 1 to 17 vectors (the
    /// 64-dim blocks and every remainder) and key counts around the 8-key blocks; with an
    /// f16 cache, against the loop over the f16 values.
    #[test]
    fn matches_an_f64_loop() {
        for f16_cache in [false, true] {
            matches_an_f64_loop_in(f16_cache);
        }
    }

    fn matches_an_f64_loop_in(f16_cache: bool) {
        let mut rng = crate::testing::Rng(0x51ed_270b);
        for hd in (8..=136).step_by(8) {
            for len in [1, 7, 8, 9, 31, 200] {
                let stride = hd + 24;
                let s = AttnShape {
                    n_heads: 1,
                    n_kv_heads: 1,
                    head_dim: hd,
                };
                let q: Vec<f32> = (0..hd).map(|_| rng.f32()).collect();
                let k: Vec<f32> = (0..len * stride).map(|_| rng.f32()).collect();
                let v: Vec<f32> = (0..len * stride).map(|_| rng.f32()).collect();
                let (out, k, v) = if f16_cache {
                    let (k16, v16) = (to_f16(&k), to_f16(&v));
                    let wide = |x: &[f16]| x.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
                    let out = run(&q, &k16, &v16, stride, 1, len - 1, s);
                    (out, wide(&k16), wide(&v16))
                } else {
                    (run(&q, &k, &v, stride, 1, len - 1, s), k, v)
                };
                let scale = 1.0 / (hd as f64).sqrt();
                let sc: Vec<f64> = (0..len)
                    .map(|p| {
                        (0..hd)
                            .map(|i| q[i] as f64 * k[p * stride + i] as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    let want: f64 = (0..len).map(|p| e[p] / z * v[p * stride + i] as f64).sum();
                    assert!(
                        (out[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "f16 cache {f16_cache}, hd {hd} len {len} [{i}]: {} vs {want}",
                        out[i]
                    );
                }
            }
        }
    }

    /// Batch invariance: queries attended all at once (a prompt), in chunks, or one by one
    /// (decode) give the same bits, past the 64-query blocks and with grouped kv heads.
    #[test]
    fn a_query_gets_the_same_bits_in_any_chunk() {
        let mut rng = crate::testing::Rng(0x2f6b_1d3c);
        let k: Vec<f32> = (0..107 * 128).map(|_| rng.f32()).collect();
        let v: Vec<f32> = (0..107 * 128).map(|_| rng.f32()).collect();
        same_bits_in_any_chunk(&mut rng, &k, &v);
        same_bits_in_any_chunk(&mut rng, &to_f16(&k), &to_f16(&v));
    }

    fn same_bits_in_any_chunk<T: KvElem>(rng: &mut crate::testing::Rng, k: &[T], v: &[T]) {
        let s = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
        };
        let (pos, n) = (37, 70);
        let (cols, stride) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let q: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
        assert_eq!(k.len(), (pos + n) * stride);
        let all = run(&q, k, v, stride, n, pos, s);
        for chunk in [1, 2, 3, 5, 64] {
            for t0 in (0..n).step_by(chunk) {
                let m = chunk.min(n - t0);
                let part = run(&q[t0 * cols..(t0 + m) * cols], k, v, stride, m, pos + t0, s);
                for (i, (a, b)) in part.iter().zip(&all[t0 * cols..]).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "chunk {chunk}, query {} value {}: {a} vs {b}",
                        t0 + i / cols,
                        i % cols
                    );
                }
            }
        }
    }
}
