//! The CPU backend: plain loops over f32. The matrix products are register-tiled SIMD
//! kernels for f32/f16/bf16 (cpu_dense_gemm.rs) and Q8_0/Q4_0/Q4_K/Q6_K (cpu_q8_gemm.rs,
//! with prompts through cpu_q8_rows.rs), GPTQ's below, and candle's ggml kernels for Q4_1
//! and for CPUs without AVX2; attention takes cpu_attention.rs on AVX2. The plain loops
//! here are the fallback and the readable reference for every GPU kernel.

use super::cpu_dense_gemm as dense_gemm;
#[cfg(target_arch = "x86_64")]
use super::cpu_q8_gemm as q8_gemm;
use super::{AttnShape, Backend};
use crate::Result;
use crate::weights::{Blob, RopeStyle, WeightData, WeightFormat};
use candle_core::utils::barrier_pool;
use half::f16;
use std::sync::Arc;

pub struct Cpu;

pub struct CpuAct {
    data: Vec<f32>,
    cols: usize,
}

#[derive(Clone)]
pub struct CpuMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    bytes: Blob,
    /// Column permutation (GPTQ act order): the product gathers `x[perm]` first.
    perm: Option<Arc<Vec<u32>>>,
}

pub struct CpuKv {
    data: Vec<f32>,
    kv_dim: usize,
}

/// Run `f` over `0..n` split across candle's worker pool (the one its matmuls use, so the
/// two never compete for the same cores).
fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    barrier_pool().execute_chunked(n, |r| r.for_each(&f));
}

/// A `*mut f32` that worker threads may share because each writes disjoint elements.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
/// Bytes of one block of prompt inputs, kept in a core's L2 while a thread's weight rows
/// pass over it (the tiled products of cpu_dense_gemm.rs and cpu_q8_gemm.rs).
pub(super) const L2_BUDGET: usize = 256 * 1024;

impl SharedOut {
    pub(super) fn new(dst: &mut [f32]) -> Self {
        SharedOut(dst.as_mut_ptr())
    }

    #[cfg(target_arch = "x86_64")]
    fn ptr(self) -> *mut f32 {
        self.0
    }

    /// SAFETY: callers write disjoint ranges from different threads.
    pub(super) unsafe fn slice(self, start: usize, len: usize) -> &'static mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// `dst[m, n] = x[m, k] · W[n, k]ᵀ` through [`q8_gemm`], threads splitting the output rows.
#[cfg(target_arch = "x86_64")]
fn matmul_q8(mkn: (usize, usize, usize), format: WeightFormat, x: &[f32], w: &[u8], dst: &mut [f32]) {
    let xq = q8_gemm::quantize_acts(x);
    let isa = q8_gemm::Isa::detect();
    let out = SharedOut::new(dst);
    // work items of whole groups of 16 rows (cpu_q8_rows.rs)
    let n = mkn.2;
    barrier_pool().execute_chunked(n.div_ceil(16), |groups| {
        let rows = groups.start * 16..(groups.end * 16).min(n);
        // SAFETY: each work item owns its output columns `rows`.
        unsafe { q8_gemm::matmul_rows(isa, format, mkn, &xq, w, rows, out.ptr()) }
    });
}

/// `dst[m, n] = x[m, k] · W[n, k]ᵀ` for `Gptq4` W with f32 activations, exactly: each block
/// of 32 is decoded to `q − z` (small integers, exact in f32) once, dotted with every
/// token's 32 inputs, and scaled by `d`. Threads split the output rows.
fn matmul_gptq4((m, k, n): (usize, usize, usize), x: &[f32], w: &[u8], dst: &mut [f32]) {
    let rb = k / 32 * 20;
    let out = SharedOut(dst.as_mut_ptr());
    barrier_pool().execute_chunked(n, |rows| {
        let mut acc = vec![0f32; m];
        let mut q = [0f32; 32];
        for r in rows {
            acc.fill(0.0);
            for (b, blk) in w[r * rb..(r + 1) * rb].chunks_exact(20).enumerate() {
                let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let z = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                for (j, v) in blk[4..].iter().enumerate() {
                    q[j] = (v & 15) as f32 - z;
                    q[j + 16] = (v >> 4) as f32 - z;
                }
                for (t, a) in acc.iter_mut().enumerate() {
                    *a += d * dot(&q, &x[t * k + b * 32..t * k + b * 32 + 32]);
                }
            }
            for (t, a) in acc.iter().enumerate() {
                // SAFETY: this work item alone writes column r of dst.
                unsafe { out.slice(t * n + r, 1)[0] = *a };
            }
        }
    });
}

/// Dot product in eight lanes, so that it vectorizes (a plain `sum()` must keep the
/// sequential order and stays scalar). Inlined, so that it takes its callers' features.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// The causal attention of one (query token, head) work item, from `Cpu::attention`.
struct AttnHead<'a> {
    q: &'a CpuAct,
    kc: &'a CpuKv,
    vc: &'a CpuKv,
    pos: usize,
    s: AttnShape,
    out_cols: usize,
    dst: SharedOut,
}

impl AttnHead<'_> {
    /// Query t of head h.
    fn query(&self, t: usize, h: usize) -> &[f32] {
        let (hd, row) = (self.s.head_dim, t * self.q.cols);
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
        let kv_dim = self.kc.kv_dim;
        let kv_off = self.kv_off(h);
        let qv = self.query(t, h);
        let len = self.pos + t + 1;
        let scale = self.scale();
        // scores of this query against every cached key up to its own position
        let mut att = vec![0f32; len];
        let mut max = f32::NEG_INFINITY;
        for (p, a) in att.iter_mut().enumerate() {
            *a = dot(qv, &self.kc.data[p * kv_dim + kv_off..p * kv_dim + kv_off + hd]) * scale;
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
            let vv = &self.vc.data[p * kv_dim + kv_off..p * kv_dim + kv_off + hd];
            let w = a / sum;
            for (oi, vi) in o.iter_mut().zip(vv) {
                *oi += w * vi;
            }
        }
    }

    /// `attend` for the n query tokens of head h at once, on AVX2 + FMA: the scores of up
    /// to 64 queries against all the keys they see are one product of the queries with the
    /// cached keys read in place (cpu_dense_gemm.rs, at matrix-product speed instead of a
    /// dot product per key), then softmax and values per query (cpu_attention.rs). Keys
    /// past a query's own position get a score and are left out of its softmax.
    ///
    /// # Safety
    /// AVX2 and FMA are present; head_dim is a multiple of 8.
    #[cfg(target_arch = "x86_64")]
    unsafe fn prompt_avx2(&self, h: usize, n: usize) {
        const QUERIES: usize = 64;
        let hd = self.s.head_dim;
        let kv_dim = self.kc.kv_dim;
        let (scale, kv_off) = (self.scale(), self.kv_off(h));
        let (k, v) = (&self.kc.data[kv_off..], &self.vc.data[kv_off..]);
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
            dense_gemm::matmul_f32_strided_serial((nq, hd, len), &qs[..nq * hd], k, kv_dim, sc);
            for j in 0..nq {
                let t = t0 + j;
                // SAFETY: work item h alone writes head h's outputs; the caches hold
                // pos + t + 1 rows; the features are the caller's contract.
                unsafe {
                    let row = &mut sc[j * len..j * len + self.pos + t + 1];
                    super::cpu_attention::attend_scored(row, v, kv_dim, self.out(t, h));
                }
            }
        }
    }

    /// `attend` on AVX2 + FMA (cpu_attention.rs).
    ///
    /// # Safety
    /// AVX2 and FMA are present; head_dim is a multiple of 8.
    #[cfg(target_arch = "x86_64")]
    unsafe fn attend_avx2(&self, item: usize) {
        let (t, h) = (item / self.s.n_heads, item % self.s.n_heads);
        let kv_off = self.kv_off(h);
        let (k, v) = (&self.kc.data[kv_off..], &self.vc.data[kv_off..]);
        // SAFETY: this is the work item of (t, h); the caches hold pos + t + 1 rows; the
        // features are the caller's contract.
        unsafe {
            let len = self.pos + t + 1;
            super::cpu_attention::attend(self.query(t, h), k, v, self.kc.kv_dim, len, self.scale(), self.out(t, h))
        }
    }
}

impl Backend for Cpu {
    type Act = CpuAct;
    type Matrix = CpuMatrix;
    type Kv = CpuKv;

    fn name(&self) -> String {
        let threads = candle_core::utils::get_num_threads();
        #[cfg(target_arch = "x86_64")]
        let isa = match q8_gemm::Isa::detect() {
            _ if !q8_gemm::Isa::Avx2.present() => "no AVX2: candle's kernels",
            q8_gemm::Isa::Avx512Vnni => "AVX-512 VNNI",
            q8_gemm::Isa::AvxVnni => "AVX-VNNI",
            q8_gemm::Isa::Avx2 => "AVX2",
        };
        #[cfg(not(target_arch = "x86_64"))]
        let isa = std::env::consts::ARCH;
        format!("cpu ({threads} threads, {isa})")
    }

    fn upload_matrix(&self, _name: &str, w: &WeightData) -> Result<CpuMatrix> {
        // Mapped bytes are used in place; only a misaligned tensor is copied.
        Ok(CpuMatrix { format: w.format, rows: w.rows, cols: w.cols, bytes: w.bytes.aligned(8), perm: w.perm.clone() })
    }

    fn alloc(&self, _name: &str, rows: usize, cols: usize) -> Result<CpuAct> {
        Ok(CpuAct { data: vec![0.0; rows * cols], cols })
    }

    fn alloc_kv(&self, _name: &str, max_seq: usize, kv_dim: usize) -> Result<CpuKv> {
        Ok(CpuKv { data: vec![0.0; max_seq * kv_dim], kv_dim })
    }

    fn write(&self, dst: &mut CpuAct, data: &[f32]) {
        dst.data[..data.len()].copy_from_slice(data);
    }

    fn embed(&self, table: &CpuMatrix, ids: &[u32], out: &mut CpuAct) {
        let rb = table.format.row_bytes(table.cols, "").expect("checked at load");
        for (t, &id) in ids.iter().enumerate() {
            let row = &table.bytes[id as usize * rb..(id as usize + 1) * rb];
            table.format.dequantize(row, &mut out.data[t * table.cols..(t + 1) * table.cols]);
        }
    }

    fn rms_norm(&self, x: &CpuAct, first: usize, n: usize, w: &CpuAct, eps: f32, out: &mut CpuAct) {
        let d = x.cols;
        for t in 0..n {
            let xr = &x.data[(first + t) * d..(first + t + 1) * d];
            let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for ((o, xv), wv) in out.data[t * d..(t + 1) * d].iter_mut().zip(xr).zip(&w.data[..d]) {
                *o = xv * inv * wv;
            }
        }
    }

    fn matmul(&self, x: &CpuAct, n: usize, w: &CpuMatrix, out: &mut CpuAct) {
        let k = w.cols;
        // W[:, perm] · x[perm]: gather each row of x into the matrix's column order
        let gathered: Vec<f32>;
        let xs = match &w.perm {
            None => &x.data[..n * k],
            Some(perm) => {
                gathered = (0..n).flat_map(|t| perm.iter().map(move |&c| x.data[t * x.cols + c as usize])).collect();
                &gathered[..]
            }
        };
        let dst = &mut out.data[..n * w.rows];
        match w.format {
            f @ (WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16) => {
                dense_gemm::matmul(f, (n, k, w.rows), xs, &w.bytes, dst)
            }
            WeightFormat::Gptq4 => matmul_gptq4((n, k, w.rows), xs, &w.bytes, dst),
            #[cfg(target_arch = "x86_64")]
            f if q8_gemm::supports(f) => matmul_q8((n, k, w.rows), f, xs, &w.bytes, dst),
            f => crate::quant::matmul(f, (n, k, w.rows), xs, &w.bytes, dst),
        }
    }

    fn rope(&self, x: &mut CpuAct, n: usize, n_heads: usize, head_dim: usize, table: &CpuAct, style: RopeStyle) {
        let half = head_dim / 2;
        for t in 0..n {
            let angles = &table.data[t * head_dim..(t + 1) * head_dim];
            for h in 0..n_heads {
                let v = &mut x.data[t * x.cols + h * head_dim..t * x.cols + (h + 1) * head_dim];
                for i in 0..half {
                    let (c, s) = (angles[2 * i], angles[2 * i + 1]);
                    let (a, b) = match style {
                        RopeStyle::Half => (i, i + half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1) = (v[a], v[b]);
                    v[a] = x0 * c - x1 * s;
                    v[b] = x0 * s + x1 * c;
                }
            }
        }
    }

    fn store_kv(&self, k: &CpuAct, v: &CpuAct, n: usize, pos: usize, kc: &mut CpuKv, vc: &mut CpuKv) {
        let d = kc.kv_dim;
        kc.data[pos * d..(pos + n) * d].copy_from_slice(&k.data[..n * d]);
        vc.data[pos * d..(pos + n) * d].copy_from_slice(&v.data[..n * d]);
    }

    fn attention(&self, q: &CpuAct, kc: &CpuKv, vc: &CpuKv, n: usize, pos: usize, s: AttnShape, out: &mut CpuAct) {
        let dst = SharedOut(out.data.as_mut_ptr());
        let head = AttnHead { q, kc, vc, pos, s, out_cols: out.cols, dst };
        #[cfg(target_arch = "x86_64")]
        let wide = s.head_dim.is_multiple_of(8) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(target_arch = "x86_64")]
        if wide && n >= 4 {
            // A prompt: per head, its queries' scores as one matrix product with the cached
            // keys, then softmax and values per query.
            par_for(s.n_heads, |h| {
                // SAFETY: the features and head_dim were checked.
                unsafe { head.prompt_avx2(h, n) }
            });
            return;
        }
        // One work item per (query token, head); each writes its own head_dim slice of `out`.
        par_for(n * s.n_heads, |item| {
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: the features and head_dim were checked.
                return unsafe { head.attend_avx2(item) };
            }
            head.attend(item)
        });
    }

    fn silu_mul(&self, gate: &mut CpuAct, up: &CpuAct, len: usize) {
        for (g, u) in gate.data[..len].iter_mut().zip(&up.data[..len]) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct, len: usize) {
        for (a, b) in x.data[..len].iter_mut().zip(&y.data[..len]) {
            *a += b;
        }
    }

    async fn argmax(&self, x: &CpuAct, row: usize) -> Result<u32> {
        let r = &x.data[row * x.cols..(row + 1) * x.cols];
        let mut best = 0;
        for (i, v) in r.iter().enumerate() {
            if *v > r[best] {
                best = i;
            }
        }
        Ok(best as u32)
    }

    async fn read(&self, x: &CpuAct, rows: usize) -> Result<Vec<f32>> {
        Ok(x.data[..rows * x.cols].to_vec())
    }
}
