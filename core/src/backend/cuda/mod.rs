//! The CUDA backend: every op is a kernel of `kernels.cu`, compiled by NVRTC for the GPU
//! in hand when the backend opens.
//!
//! **Why cudarc with dynamic loading.** The CUDA driver (`libcuda.so`) and NVRTC
//! (`libnvrtc.so`) are loaded at run time through cudarc (`dynamic-loading`, bindings for
//! CUDA 13.0, the lent GPUs' driver 580). So `cargo build --features cuda` needs no CUDA
//! toolkit and no GPU: CI builds it on a machine with neither, and the default build stays
//! CUDA-free. The kernels are compiled by NVRTC for the actual GPU (`compute_XY` of its
//! compute capability) once per process. The PTX is cached under `$XDG_CACHE_HOME/yangtuo`
//! (else `~/.cache/yangtuo`), named by a hash of the source, so a cached or pre-placed PTX
//! needs no NVRTC at all. NVRTC is found by name (`LD_LIBRARY_PATH`), or in
//! `YANGTUO_NVRTC_DIR` (e.g. pip's `nvidia/cu13/lib`), which is loaded first.
//! `YANGTUO_CUDA_DEVICE` picks the GPU (default 0).
//!
//! **Execution.** As in the wgpu backend, ops are recorded, not launched: each appends an
//! `Op` (holding its buffers alive), and host data (token ids, RoPE tables, positions) go
//! to an upload arena. `argmax`/`read` flush: one host-to-device copy of the arena, then
//! the ops lowered to kernel launches on one stream, then the readback. Lowering fuses
//! neighbours the forward pass always emits: the residual add into the next RMSNorm, the
//! q/k/v products into one launch, the gate/up products with SwiGLU, both RoPEs with the
//! KV-cache store (eight launches per layer for a decode step). Positions reach kernels
//! through the arena, never as launch arguments, so every decode step lowers to the same
//! launches; a launch list seen again within a few flushes is captured as a CUDA graph and
//! replayed from then on (`YANGTUO_CUDA_GRAPH=0` turns that off). Prefill products use
//! tensor cores (f16 operands, f32 accumulation) on sm_80+ except for f32 weights;
//! `YANGTUO_CUDA_MMA=0` uses the f32 tiled kernel throughout.
//!
//! **Decode with quantized weights** (every format but f32/f16/bf16) is memory-bound only if
//! the product is cheap per weight byte, so, as llama.cpp's MMVQ does, a one-token product's
//! input is quantized to 8 bits per block of 32 ("Q8 activations", in a two-slot scratch
//! buffer sized per flush) and the kernels take int8 dot products (`dp4a`) against the
//! weights' integer quants, two rows per warp (or per two or four warps for matrices of few
//! rows). The kernel that produces the input writes its Q8 activations as well when the
//! product comes right after it (the norms for q/k/v, gate/up and the output head,
//! attention for o, glu for down), so a layer still takes eight launches; otherwise a
//! `quantize_q8` launch does (and fuses GPTQ's gather). The result is W · x̃ with x̃ the
//! 8-bit rounding of x (error per element ≤ 1/254 of its block's max|x|), as the CPU
//! backend's Q8_0/Q8_K products; prefill is unchanged.
//!
//! **Weights** are uploaded one tensor at a time: rows that are already a multiple of 16
//! bytes (f16/bf16 widths divisible by 8, f32 by 4, Q4_K) straight from the mapped file,
//! the others repacked a slab of rows at a time (scales to their own array, quants 16-byte
//! aligned: the layout of `backend/layout.rs`, shared with wgpu), so no second host copy of
//! a tensor exists. GPTQ act-order matrices keep their column permutation on the device and
//! gather `x[perm]` before the product.
//!
//! **Files.** `nvrtc.rs` holds the kernels' source and compiles it (a leaf); `record.rs`
//! the buffers, the recorded ops and the stream that runs launches and CUDA graphs;
//! `fuse.rs` merges neighbouring ops; `lower.rs` turns ops into kernel launches. This file
//! opens the device, implements `Backend` by recording, and flushes: fuse, lower, run.

mod fuse;
mod lower;
mod nvrtc;
mod record;
#[cfg(test)]
mod tests;

pub use self::nvrtc::{SOURCE, cache_file, compile, nvrtc_available, nvrtc_version, write_cache};
pub use self::record::{Buf, CudaAct, CudaKv, CudaMatrix, MatrixInner};

use self::fuse::fuse;
use self::lower::{Kernels, LowerCx, q8_bytes, q8_product};
use self::nvrtc::{compile_cached, format_index};
use self::record::{BufRef, Device, Op, Recorder, driver_error};
use super::layout::{layout, repack_rows};
use super::{AttnShape, Backend, KvDtype};
use crate::weights::{RopeStyle, WeightData};
use crate::{Error, Result};
use cudarc::driver::{CudaContext, result, sys};
use std::sync::{Arc, Mutex};

/// Ops recorded before a flush is forced (bounds the memory a long recording holds).
const MAX_OPS: usize = 8192;
/// Upload-arena bytes before a flush is forced.
const MAX_ARENA: usize = 64 << 20;
/// Host bytes per copy when uploading weights.
const UPLOAD_CHUNK: usize = 16 << 20;

pub struct Cuda {
    dev: Device,
    k: Kernels,
    sms: usize,
    mma: bool,
    desc: String,
    argmax_out: BufRef,
    rec: Mutex<Recorder>,
}

fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(v.as_str(), "0" | "false" | "no" | "off"),
        Err(_) => default,
    }
}

impl Cuda {
    /// Open GPU `YANGTUO_CUDA_DEVICE` (default 0) and compile the kernels for it.
    pub fn new() -> Result<Cuda> {
        let ordinal = std::env::var("YANGTUO_CUDA_DEVICE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self::open(ordinal)
    }

    pub fn open(ordinal: usize) -> Result<Cuda> {
        // SAFETY: only tries to dlopen the driver by its candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Device(
                "no CUDA driver (libcuda.so) on this machine".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| driver_error("counting devices", e))?;
        if count <= ordinal as i32 {
            return Err(Error::Device(format!(
                "no CUDA device {ordinal} ({count} found)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_error("opening the device", e))?;
        // One stream, ordered by hand: no per-buffer events.
        // SAFETY: called before any allocation; every op runs on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("creating a stream", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_error("compute capability", e))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(1)
            .max(1) as usize;
        let arch = format!("compute_{major}{minor}");
        let (ptx, cached) = compile_cached(&arch)?;
        let module = match ctx.load_module(ptx) {
            Ok(m) => m,
            // a cached PTX this driver cannot load (made by a newer NVRTC): compile afresh
            Err(e) if cached => {
                log::warn!("cuda: cached kernels do not load ({e}); compiling them again");
                if let Some(f) = cache_file(None, &arch) {
                    let _ = std::fs::remove_file(f);
                }
                let (ptx, _) = compile_cached(&arch)?;
                ctx.load_module(ptx)
                    .map_err(|e| driver_error(&format!("loading the kernels ({arch})"), e))?
            }
            Err(e) => return Err(driver_error(&format!("loading the kernels ({arch})"), e)),
        };
        let k = Kernels::load(module)?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let mem = ctx.total_mem().unwrap_or(0);
        let mma = major >= 8 && env_flag("YANGTUO_CUDA_MMA", true);
        let graphs_on = env_flag("YANGTUO_CUDA_GRAPH", true);
        let mut driver = 0;
        // SAFETY: one out-pointer to a live integer.
        let _ = unsafe { sys::cuDriverGetVersion(&mut driver) };
        let desc = format!(
            "cuda {name} (sm_{major}{minor}, {sms} SMs, {:.1} GiB, driver {}.{}, {}, {}{})",
            mem as f64 / (1u64 << 30) as f64,
            driver / 1000,
            driver % 1000 / 10,
            if cached {
                "cached PTX".into()
            } else {
                nvrtc_version()
                    .map(|(a, b)| format!("nvrtc {a}.{b}"))
                    .unwrap_or_default()
            },
            if mma {
                "tensor-core prefill"
            } else {
                "f32 prefill"
            },
            if graphs_on { ", graphs" } else { "" },
        );
        log::info!("{desc}");
        let dev = Device { ctx, stream };
        let argmax_out = dev.buf("argmax result", 16, true)?;
        Ok(Cuda {
            dev,
            k,
            sms,
            mma,
            desc,
            argmax_out,
            rec: Mutex::new(Recorder::new(graphs_on)),
        })
    }

    fn record(&self, op: Op) {
        self.record_with(|_| op)
    }

    /// Record the op `f` builds (it may stage host data in the arena first).
    fn record_with(&self, f: impl FnOnce(&mut Recorder) -> Op) {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        let op = f(&mut rec);
        rec.ops.push(op);
        if rec.ops.len() >= MAX_OPS || rec.arena.len() >= MAX_ARENA {
            if let Err(e) = self.flush(&mut rec) {
                rec.error.get_or_insert(e);
            }
        }
    }

    /// Launch everything recorded: fused, lowered, and run on the stream (as a CUDA graph
    /// once the launch list has been seen before; see record.rs).
    fn flush(&self, rec: &mut Recorder) -> Result<()> {
        if let Some(e) = rec.error.take() {
            rec.ops.clear();
            rec.arena.clear();
            rec.pos_slot = None;
            return Err(e);
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))?;
        if rec.ops.is_empty() {
            return Ok(());
        }
        let ops = fuse(std::mem::take(&mut rec.ops));
        let arena = std::mem::take(&mut rec.arena);
        rec.pos_slot = None;
        let arena_ptr = if arena.is_empty() {
            0
        } else {
            let mut slot = rec.arena_dev.take();
            let ptr = self.dev.scratch(
                &mut slot,
                &mut rec.retired,
                "upload arena",
                arena.len().max(64 << 10),
                false,
            );
            rec.arena_dev = slot;
            let ptr = ptr?;
            self.dev.upload(ptr, &arena, "the upload arena")?;
            ptr
        };
        let q8_slot = ops
            .iter()
            .filter_map(q8_product)
            .map(|(_, m)| q8_bytes(m.cols).next_multiple_of(256))
            .max()
            .unwrap_or(0);
        let q8 = if q8_slot > 0 {
            let mut slot = rec.q8.take();
            let ptr = self.dev.scratch(
                &mut slot,
                &mut rec.retired,
                "Q8 activations",
                2 * q8_slot,
                false,
            );
            rec.q8 = slot;
            ptr?
        } else {
            0
        };
        let mut cx = LowerCx {
            k: &self.k,
            dev: &self.dev,
            sms: self.sms,
            mma: self.mma,
            argmax_out: self.argmax_out.ptr,
            arena: arena_ptr,
            q8: [q8, q8 + q8_slot as u64],
            q8_of: None,
        };
        let mut launches = Vec::with_capacity(ops.len() + 8);
        for (i, op) in ops.iter().enumerate() {
            cx.lower(op, ops.get(i + 1), rec, &mut launches)?;
        }
        let result = self.dev.run(rec, &launches);
        rec.inflight.extend(ops);
        rec.arena = arena;
        rec.arena.clear();
        result
    }
}

impl Backend for Cuda {
    type Act = CudaAct;
    type Matrix = CudaMatrix;
    type Kv = CudaKv;

    fn name(&self) -> String {
        self.desc.clone()
    }

    fn upload_matrix(&self, name: &str, w: &WeightData) -> Result<CudaMatrix> {
        let Some(fi) = format_index(w.format) else {
            return Err(Error::Device(format!(
                "cuda: {name}: {:?} weights are not supported by this backend",
                w.format
            )));
        };
        let lay = layout(w.format, w.cols);
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))?;
        let src_row = w.format.row_bytes(w.cols, name)?;
        let payload = self.dev.buf(name, w.rows * lay.payload_row, false)?;
        let scales = if lay.scales_row > 0 {
            Some(
                self.dev
                    .buf(&format!("{name} scales"), w.rows * lay.scales_row, false)?,
            )
        } else {
            None
        };
        if lay.scales_row == 0 && lay.payload_row == src_row {
            // stored as the kernels read it: straight from the (mapped) source
            for start in (0..w.bytes.len()).step_by(UPLOAD_CHUNK * 4) {
                let end = (start + UPLOAD_CHUNK * 4).min(w.bytes.len());
                self.dev
                    .upload(payload.ptr + start as u64, &w.bytes[start..end], name)?;
            }
        } else {
            let per = (UPLOAD_CHUNK / lay.payload_row.max(1)).max(1);
            let mut p = vec![0u8; per * lay.payload_row];
            let mut s = vec![0u8; per * lay.scales_row];
            for r0 in (0..w.rows).step_by(per) {
                let r1 = (r0 + per).min(w.rows);
                let (p, s) = (
                    &mut p[..(r1 - r0) * lay.payload_row],
                    &mut s[..(r1 - r0) * lay.scales_row],
                );
                repack_rows(w, r0, r1, p, s);
                self.dev
                    .upload(payload.ptr + (r0 * lay.payload_row) as u64, p, name)?;
                if let Some(sb) = &scales {
                    self.dev
                        .upload(sb.ptr + (r0 * lay.scales_row) as u64, s, name)?;
                }
            }
        }
        let perm = match &w.perm {
            Some(perm) => {
                let b = self
                    .dev
                    .buf(&format!("{name} perm"), perm.len() * 4, false)?;
                self.dev
                    .upload(b.ptr, bytemuck::cast_slice(perm.as_slice()), name)?;
                Some(b)
            }
            None => None,
        };
        Ok(CudaMatrix(Arc::new(MatrixInner {
            format: w.format,
            fi,
            rows: w.rows,
            cols: w.cols,
            lay,
            payload,
            scales,
            perm,
        })))
    }

    fn alloc(&self, name: &str, rows: usize, cols: usize) -> Result<CudaAct> {
        Ok(CudaAct {
            buf: self.dev.buf(name, rows * cols * 4, true)?,
            rows,
            cols,
        })
    }

    fn alloc_kv(
        &self,
        name: &str,
        max_seq: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> Result<CudaKv> {
        Ok(CudaKv {
            buf: self.dev.buf(name, max_seq * kv_dim * dtype.bytes(), true)?,
            max_seq,
            kv_dim,
            dtype,
        })
    }

    fn write(&self, dst: &mut CudaAct, data: &[f32]) {
        assert!(
            data.len() <= dst.rows * dst.cols,
            "write of {} values into a buffer of {}",
            data.len(),
            dst.rows * dst.cols
        );
        self.record_with(|rec| Op::write(rec, dst, data));
    }

    fn embed(&self, table: &CudaMatrix, ids: &[u32], out: &mut CudaAct) {
        self.record_with(|rec| Op::embed(rec, table, ids, out));
    }

    fn rms_norm(
        &self,
        x: &CudaAct,
        first: usize,
        n: usize,
        w: &CudaAct,
        eps: f32,
        out: &mut CudaAct,
    ) {
        self.record(Op::rms_norm(x, first, n, w, eps, out));
    }

    fn matmul(&self, x: &CudaAct, n: usize, w: &CudaMatrix, out: &mut CudaAct) {
        self.record(Op::matmul(x, n, w, out));
    }

    fn rope(
        &self,
        x: &mut CudaAct,
        n: usize,
        n_heads: usize,
        head_dim: usize,
        table: &CudaAct,
        style: RopeStyle,
    ) {
        self.record(Op::rope(x, n, n_heads, head_dim, table, style));
    }

    fn store_kv(
        &self,
        k: &CudaAct,
        v: &CudaAct,
        first: usize,
        n: usize,
        pos: usize,
        kc: &mut CudaKv,
        vc: &mut CudaKv,
    ) {
        assert!(
            pos + n <= kc.max_seq,
            "KV cache of {} positions cannot store {}..{}",
            kc.max_seq,
            pos,
            pos + n
        );
        self.record_with(|rec| Op::store_kv(rec, k, v, first, n, pos, kc, vc));
    }

    fn copy_kv(&self, src: &CudaKv, cache: &mut CudaKv, positions: std::ops::Range<usize>) {
        let row = cache.kv_dim * cache.dtype.bytes();
        self.record(Op::Copy {
            src: src.buf.clone(),
            dst: cache.buf.clone(),
            offset: positions.start * row,
            bytes: positions.len() * row,
        });
    }

    fn attention(
        &self,
        q: &CudaAct,
        kc: &CudaKv,
        vc: &CudaKv,
        first: usize,
        n: usize,
        pos: usize,
        shape: AttnShape,
        out: &mut CudaAct,
    ) {
        self.record_with(|rec| Op::attention(rec, q, kc, vc, first, n, pos, shape, out));
    }

    fn silu_mul(&self, gate: &mut CudaAct, up: &CudaAct, len: usize) {
        self.record(Op::silu_mul(gate, up, len));
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct, len: usize) {
        self.record(Op::add(x, y, len));
    }

    async fn argmax(&self, x: &CudaAct, row: usize) -> Result<u32> {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        rec.ops.push(Op::argmax(x, row));
        let flushed = self.flush(&mut rec);
        let mut v = [0u32; 1];
        let copied = flushed.and_then(|_| {
            // SAFETY: argmax_out holds at least 4 bytes.
            unsafe {
                result::memcpy_dtoh_async(&mut v, self.argmax_out.ptr, self.dev.stream.cu_stream())
            }
            .map_err(|e| driver_error("reading the argmax", e))
        });
        let synced = self.dev.sync(&mut rec);
        copied.and(synced)?;
        Ok(v[0])
    }

    async fn read(&self, x: &CudaAct, rows: usize) -> Result<Vec<f32>> {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        let flushed = self.flush(&mut rec);
        let mut v = vec![0f32; rows.min(x.rows) * x.cols];
        let copied = flushed.and_then(|_| {
            // SAFETY: the buffer holds rows·cols f32 (at least v's length).
            unsafe { result::memcpy_dtoh_async(&mut v[..], x.buf.ptr, self.dev.stream.cu_stream()) }
                .map_err(|e| driver_error("reading back", e))
        });
        let synced = self.dev.sync(&mut rec);
        copied.and(synced)?;
        Ok(v)
    }
}
