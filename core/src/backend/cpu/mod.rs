//! The CPU backend: plain loops over f32 for the small ops (the readable reference for
//! every GPU kernel), and for the matrix products register-tiled SIMD kernels picked at
//! run time.
//!
//! Files, each a kernel that imports only the leaves `simd.rs` (instruction sets, detected
//! once; shared SIMD helpers) and `parallel.rs` (threads, shared output, cache budget):
//! - `dense.rs`: f32/f16/bf16 weights, f32 activations;
//! - `q8/`: Q4_0/Q8_0/Q4_K/Q6_K with int8 activations on AVX2, AVX-VNNI or AVX-512 VNNI
//!   (x86-64);
//! - `gptq.rs`: GPTQ 4-bit;
//! - `ggml.rs`: candle's kernels, for Q4_1 and CPUs without AVX2;
//! - `attention/`: causal GQA attention, the plain loop and the AVX2 kernels.

mod attention;
mod dense;
mod ggml;
mod gptq;
mod parallel;
pub use parallel::clamp_thread_env;
#[cfg(target_arch = "x86_64")]
mod q8;
mod simd;

use super::{AttnShape, Backend, KvDtype};
use crate::Result;
use crate::weights::{Blob, RopeStyle, WeightData, WeightFormat};
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
    /// Rows packed eight at a time (Q4_0, Q8_0, Q4_K, Q6_K: q8/packed.rs) rather than the file's layout.
    packed: bool,
    /// Column permutation (GPTQ act order): the product gathers `x[perm]` first.
    perm: Option<Arc<Vec<u32>>>,
}

pub struct CpuKv {
    data: KvData,
    kv_dim: usize,
}

/// A cache's elements, as `KvDtype` says.
enum KvData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl KvData {
    /// Write f32 values at `to`, rounded to f16 in an f16 cache.
    fn store(&mut self, to: std::ops::Range<usize>, from: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        match self {
            KvData::F32(d) => d[to].copy_from_slice(from),
            KvData::F16(d) => d[to].convert_from_f32_slice(from),
        }
    }
}

impl Backend for Cpu {
    type Act = CpuAct;
    type Matrix = CpuMatrix;
    type Kv = CpuKv;

    fn name(&self) -> String {
        let threads = candle_core::utils::get_num_threads();
        let isa = match simd::Isa::detect() {
            None if cfg!(target_arch = "x86_64") => "no AVX2: candle's kernels",
            None if cfg!(target_feature = "simd128") => "wasm32 simd128",
            None => std::env::consts::ARCH,
            Some(simd::Isa::Avx512Vnni) => "AVX-512 VNNI",
            Some(simd::Isa::AvxVnni) => "AVX-VNNI",
            Some(simd::Isa::Avx2) => "AVX2",
        };
        let threads = if threads == 1 {
            "1 thread".to_string()
        } else {
            format!("{threads} threads")
        };
        format!("cpu ({threads}, {isa})")
    }

    fn upload_matrix(&self, _name: &str, w: &WeightData) -> Result<CpuMatrix> {
        #[cfg(target_arch = "x86_64")]
        if q8::packs(w.format) {
            let packed = q8::pack(w.format, &w.bytes, w.rows, w.cols);
            w.bytes.release_pages();
            return Ok(CpuMatrix {
                format: w.format,
                rows: w.rows,
                cols: w.cols,
                bytes: Blob::from_vec(packed),
                packed: true,
                perm: w.perm.clone(),
            });
        }
        // Mapped bytes are used in place; only a misaligned tensor is copied.
        Ok(CpuMatrix {
            format: w.format,
            rows: w.rows,
            cols: w.cols,
            bytes: w.bytes.aligned(8),
            packed: false,
            perm: w.perm.clone(),
        })
    }

    fn alloc(&self, _name: &str, rows: usize, cols: usize) -> Result<CpuAct> {
        Ok(CpuAct {
            data: vec![0.0; rows * cols],
            cols,
        })
    }

    fn alloc_kv(
        &self,
        _name: &str,
        max_seq: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> Result<CpuKv> {
        let len = max_seq * kv_dim;
        Ok(CpuKv {
            data: match dtype {
                KvDtype::F32 => KvData::F32(vec![0.0; len]),
                KvDtype::F16 => KvData::F16(vec![half::f16::ZERO; len]),
            },
            kv_dim,
        })
    }

    fn write(&self, dst: &mut CpuAct, data: &[f32]) {
        dst.data[..data.len()].copy_from_slice(data);
    }

    fn embed(&self, table: &CpuMatrix, ids: &[u32], out: &mut CpuAct) {
        let rb = table
            .format
            .row_bytes(table.cols, "")
            .expect("checked at load");
        for (t, &id) in ids.iter().enumerate() {
            let out = &mut out.data[t * table.cols..(t + 1) * table.cols];
            if table.packed {
                #[cfg(target_arch = "x86_64")]
                {
                    let row = q8::unpack_row(table.format, &table.bytes, table.cols, id as usize);
                    table.format.dequantize(&row, out);
                }
            } else {
                let row = &table.bytes[id as usize * rb..(id as usize + 1) * rb];
                table.format.dequantize(row, out);
            }
        }
    }

    fn rms_norm(&self, x: &CpuAct, first: usize, n: usize, w: &CpuAct, eps: f32, out: &mut CpuAct) {
        let d = x.cols;
        for t in 0..n {
            let xr = &x.data[(first + t) * d..(first + t + 1) * d];
            let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for ((o, xv), wv) in out.data[t * d..(t + 1) * d]
                .iter_mut()
                .zip(xr)
                .zip(&w.data[..d])
            {
                *o = xv * inv * wv;
            }
        }
    }

    /// Each row's sums run in one order whatever shares the product (tests/tests/batch.rs).
    fn decode_sums_as_prompt(&self) -> bool {
        true
    }

    fn matmul(&self, x: &CpuAct, n: usize, w: &CpuMatrix, out: &mut CpuAct) {
        let k = w.cols;
        // W[:, perm] · x[perm]: gather each row of x into the matrix's column order
        let gathered: Vec<f32>;
        let xs = match &w.perm {
            None => &x.data[..n * k],
            Some(perm) => {
                gathered = (0..n)
                    .flat_map(|t| perm.iter().map(move |&c| x.data[t * x.cols + c as usize]))
                    .collect();
                &gathered[..]
            }
        };
        let dst = &mut out.data[..n * w.rows];
        match w.format {
            #[cfg(target_arch = "x86_64")]
            f if w.packed => q8::matmul((n, k, w.rows), f, xs, &w.bytes, dst),
            f @ (WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16) => {
                dense::matmul(f, (n, k, w.rows), xs, &w.bytes, dst)
            }
            WeightFormat::Gptq4 => gptq::matmul((n, k, w.rows), xs, &w.bytes, dst),
            f => ggml::matmul(f, (n, k, w.rows), xs, &w.bytes, dst),
        }
    }

    fn rope(
        &self,
        x: &mut CpuAct,
        n: usize,
        n_heads: usize,
        head_dim: usize,
        table: &CpuAct,
        style: RopeStyle,
    ) {
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

    fn store_kv(
        &self,
        k: &CpuAct,
        v: &CpuAct,
        first: usize,
        n: usize,
        pos: usize,
        kc: &mut CpuKv,
        vc: &mut CpuKv,
    ) {
        let d = kc.kv_dim;
        let (rows, to) = (first * d..(first + n) * d, pos * d..(pos + n) * d);
        kc.data.store(to.clone(), &k.data[rows.clone()]);
        vc.data.store(to, &v.data[rows]);
    }

    fn copy_kv(&self, src: &CpuKv, cache: &mut CpuKv, positions: std::ops::Range<usize>) {
        let d = cache.kv_dim;
        let range = positions.start * d..positions.end * d;
        match (&mut cache.data, &src.data) {
            (KvData::F32(to), KvData::F32(from)) => to[range.clone()].copy_from_slice(&from[range]),
            (KvData::F16(to), KvData::F16(from)) => to[range.clone()].copy_from_slice(&from[range]),
            _ => unreachable!("one model's caches share a dtype"),
        }
    }

    fn attention(
        &self,
        q: &CpuAct,
        kc: &CpuKv,
        vc: &CpuKv,
        first: usize,
        n: usize,
        pos: usize,
        s: AttnShape,
        out: &mut CpuAct,
    ) {
        let queries = attention::Rows {
            data: &q.data[first * q.cols..],
            stride: q.cols,
        };
        let dst = &mut out.data[first * out.cols..];
        let stride = kc.kv_dim;
        match (&kc.data, &vc.data) {
            (KvData::F32(k), KvData::F32(v)) => {
                let cache = attention::Cache { k, v, stride };
                attention::attention(queries, cache, n, pos, s, dst, out.cols)
            }
            (KvData::F16(k), KvData::F16(v)) => {
                let cache = attention::Cache { k, v, stride };
                attention::attention(queries, cache, n, pos, s, dst, out.cols)
            }
            _ => unreachable!("a layer's keys and values are allocated with one dtype"),
        }
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
