//! What the CUDA backend records and how recorded work runs: device buffers and matrices,
//! the ops each `Backend` call appends (`Op`, with host data staged in the upload arena),
//! the recorder that holds them until a flush, and the stream that runs lowered launches one
//! by one or as CUDA graphs captured from a launch list seen before.
//!
//! Fusion (fuse.rs) and lowering (lower.rs) sit between recording and running; mod.rs's
//! flush joins them.

use crate::backend::layout::Layout;
use crate::backend::{AttnShape, KvDtype};
use crate::weights::{RopeStyle, WeightFormat};
use crate::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaGraph, CudaSlice, CudaStream, DevicePtr, DriverError, result, sys,
};
use std::ffi::c_void;
use std::sync::Arc;

/// CUDA graphs kept for replay (decode, and a repeated prefill length or two).
const MAX_GRAPHS: usize = 4;
/// Flushes remembered when looking for a launch list seen before.
const RECENT: usize = 3;

pub(super) fn driver_error(what: &str, e: DriverError) -> Error {
    Error::Device(format!("cuda: {what}: {e}"))
}

/// A device allocation and its address.
pub struct Buf {
    /// `None` only for the stand-ins of the unit tests.
    _mem: Option<CudaSlice<u8>>,
    pub(super) ptr: u64,
    pub(super) bytes: usize,
}

pub(super) type BufRef = Arc<Buf>;

#[cfg(test)]
impl Buf {
    /// A stand-in at address `ptr` with no memory behind it, for tests that never launch.
    pub(super) fn fake(ptr: u64) -> BufRef {
        Arc::new(Buf {
            _mem: None,
            ptr,
            bytes: 1 << 20,
        })
    }
}

pub struct CudaAct {
    pub(super) buf: BufRef,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

pub struct CudaKv {
    pub(super) buf: BufRef,
    pub(super) max_seq: usize,
    pub(super) kv_dim: usize,
    pub(super) dtype: KvDtype,
}

pub struct MatrixInner {
    pub(super) format: WeightFormat,
    /// The index of `format` in the per-format kernel tables (nvrtc.rs's `FORMATS`).
    pub(super) fi: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) lay: Layout,
    pub(super) payload: BufRef,
    pub(super) scales: Option<BufRef>,
    pub(super) perm: Option<BufRef>,
}

impl MatrixInner {
    pub(super) fn s_ptr(&self) -> u64 {
        self.scales.as_ref().unwrap_or(&self.payload).ptr
    }
}

#[derive(Clone)]
pub struct CudaMatrix(pub(super) Arc<MatrixInner>);

/// The context and the one stream every copy and launch runs on (ordered by hand: no
/// per-buffer events).
pub(super) struct Device {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
}

impl Device {
    /// Allocate `bytes` on the device (zeroed in stream order when `zero`), turning an
    /// allocation failure into a typed error that names it.
    pub(super) fn buf(&self, what: &str, bytes: usize, zero: bool) -> Result<BufRef> {
        let (ctx, stream) = (&self.ctx, &self.stream);
        let n = bytes.max(16).next_multiple_of(16);
        // SAFETY: the memory is written (zeroed or uploaded) before any kernel reads it.
        let mem = unsafe { stream.alloc::<u8>(n) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
                Error::OutOfMemory {
                    what: what.into(),
                    bytes: n as u64,
                    msg: format!("{} MiB free of {} MiB", free >> 20, total >> 20),
                }
            } else {
                driver_error(&format!("allocating {what} ({n} bytes)"), e)
            }
        })?;
        let ptr = mem.device_ptr(stream).0;
        if zero {
            // SAFETY: `ptr` is this allocation, n bytes long.
            unsafe { result::memset_d8_async(ptr, 0, n, stream.cu_stream()) }
                .map_err(|e| driver_error(&format!("zeroing {what}"), e))?;
        }
        Ok(Arc::new(Buf {
            _mem: Some(mem),
            ptr,
            bytes: n,
        }))
    }

    /// Copy host bytes to `dst + offset`. Pageable memory is staged by the driver before
    /// this returns, so `src` may be reused at once.
    pub(super) fn upload(&self, dst: u64, src: &[u8], what: &str) -> Result<()> {
        // SAFETY: callers pass a range inside one allocation.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_error(&format!("uploading {what}"), e))
    }

    /// A scratch buffer of at least `bytes`, grown (and replaced) when too small; a replaced
    /// buffer goes to `retired`, as work already recorded may still use it.
    pub(super) fn scratch(
        &self,
        slot: &mut Option<BufRef>,
        retired: &mut Vec<BufRef>,
        what: &str,
        bytes: usize,
        zero: bool,
    ) -> Result<u64> {
        if slot.as_ref().is_none_or(|b| b.bytes < bytes) {
            let new = self.buf(what, bytes.next_power_of_two(), zero)?;
            retired.extend(slot.replace(new));
        }
        Ok(slot.as_ref().map(|b| b.ptr).unwrap_or(0))
    }

    /// Run a flush's launch list, and remember it among the last few flushes' (a list seen
    /// again is captured as a graph; see `run_list`).
    pub(super) fn run(&self, rec: &mut Recorder, launches: &[Launch]) -> Result<()> {
        let key = encode(launches);
        let result = self.run_list(rec, launches, &key);
        if !rec.recent.contains(&key) {
            if rec.recent.len() >= RECENT {
                rec.recent.pop_front();
            }
            rec.recent.push_back(key);
        }
        result
    }

    /// With graphs on, a launch list equal to one of the last few flushes' is captured and
    /// replayed from then on.
    fn run_list(&self, rec: &mut Recorder, launches: &[Launch], key: &[u64]) -> Result<()> {
        if rec.graphs_on {
            if let Some(g) = rec.graphs.iter().find(|g| g.key == key) {
                return g
                    .exec
                    .launch()
                    .map_err(|e| driver_error("launching a graph", e));
            }
            if rec.recent.iter().any(|k| k.as_slice() == key) {
                match self.capture(launches) {
                    Ok(exec) => {
                        exec.launch()
                            .map_err(|e| driver_error("launching a graph", e))?;
                        if rec.graphs.len() >= MAX_GRAPHS {
                            rec.graphs.remove(0);
                        }
                        rec.graphs.push(Graph {
                            key: key.to_vec(),
                            exec,
                        });
                        return Ok(());
                    }
                    Err(e) => {
                        log::warn!(
                            "cuda: graph capture failed ({e}); launching kernels one by one from now on"
                        );
                        rec.graphs_on = false;
                    }
                }
            }
        }
        for l in launches {
            self.launch(l)?;
        }
        Ok(())
    }

    fn capture(&self, launches: &[Launch]) -> Result<CudaGraph> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| driver_error("beginning a capture", e))?;
        let mut failed = None;
        for l in launches {
            if let Err(e) = self.launch(l) {
                failed = Some(e);
                break;
            }
        }
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        if let Some(e) = failed {
            return Err(e);
        }
        graph
            .map_err(|e| driver_error("ending a capture", e))?
            .ok_or_else(|| Error::Device("cuda: empty graph".into()))
    }

    fn launch(&self, l: &Launch) -> Result<()> {
        match l {
            Launch::Kernel {
                f,
                grid,
                block,
                args,
            } => {
                let mut ptrs: Vec<*mut c_void> = args
                    .iter()
                    .map(|a| a as *const u64 as *mut c_void)
                    .collect();
                // SAFETY: `args` match the kernel's parameters (written next to each kernel's
                // lowering in lower.rs) and point at live allocations held by the recorded ops.
                unsafe {
                    result::launch_kernel(
                        f.0,
                        (grid[0], grid[1], grid[2]),
                        (*block, 1, 1),
                        0,
                        self.stream.cu_stream(),
                        &mut ptrs,
                    )
                }
                .map_err(|e| driver_error("launching a kernel", e))
            }
            Launch::Copy { dst, src, bytes } => {
                // SAFETY: both ranges lie inside live allocations (checked when recorded).
                unsafe { result::memcpy_dtod_async(*dst, *src, *bytes, self.stream.cu_stream()) }
                    .map_err(|e| driver_error("copying", e))
            }
        }
    }

    /// Wait for the stream; surfaces any asynchronous error.
    pub(super) fn sync(&self, rec: &mut Recorder) -> Result<()> {
        let r = self
            .stream
            .synchronize()
            .map_err(|e| driver_error("running the recorded work", e));
        rec.inflight.clear();
        rec.retired.clear();
        r
    }
}

/// One recorded op. Arena offsets point into the batch's upload arena.
pub(super) enum Op {
    Write {
        dst: BufRef,
        arena: usize,
        bytes: usize,
    },
    /// `bytes` of `src` from `offset` to the same place in `dst` (on the device).
    Copy {
        src: BufRef,
        dst: BufRef,
        offset: usize,
        bytes: usize,
    },
    Embed {
        m: CudaMatrix,
        ids: usize,
        n: usize,
        out: BufRef,
        out_cols: usize,
    },
    /// RMSNorm, with the residual add `x += add` first when fused.
    Norm {
        x: BufRef,
        cols: usize,
        first: usize,
        n: usize,
        w: BufRef,
        eps: f32,
        out: BufRef,
        add: Option<BufRef>,
    },
    Matmul {
        x: BufRef,
        x_cols: usize,
        n: usize,
        m: CudaMatrix,
        out: BufRef,
        out_cols: usize,
    },
    /// One-token products of up to three matrices of one format and width sharing x.
    Matvec {
        x: BufRef,
        mats: Vec<(CudaMatrix, BufRef)>,
    },
    /// gate = silu(W_gate · x) · (W_up · x), up = W_up · x, for one token.
    Glu {
        x: BufRef,
        gate: (CudaMatrix, BufRef),
        up: (CudaMatrix, BufRef),
    },
    Rope {
        x: BufRef,
        x_cols: usize,
        n: usize,
        heads: usize,
        hd: usize,
        table: BufRef,
        style: RopeStyle,
    },
    /// Rows first..first + n of k and v to cache positions pos.. (pos: an arena slot).
    StoreKv {
        k: BufRef,
        v: BufRef,
        first: usize,
        n: usize,
        pos: usize,
        kv_dim: usize,
        kc: BufRef,
        vc: BufRef,
        dtype: KvDtype,
    },
    /// RoPE of q and k, then the store of k and v.
    RopeStore {
        q: BufRef,
        q_cols: usize,
        q_heads: usize,
        kv: [BufRef; 4],
        dtype: KvDtype,
        kv_heads: usize,
        table: BufRef,
        n: usize,
        hd: usize,
        style: RopeStyle,
        pos: usize,
    },
    /// Queries first..first + n of q into the same rows of out.
    Attention {
        q: BufRef,
        q_cols: usize,
        kc: BufRef,
        vc: BufRef,
        dtype: KvDtype,
        max_seq: usize,
        kv_dim: usize,
        first: usize,
        n: usize,
        pos: usize,
        shape: AttnShape,
        out: BufRef,
        out_cols: usize,
    },
    SiluMul {
        gate: BufRef,
        up: BufRef,
        len: usize,
    },
    Add {
        x: BufRef,
        y: BufRef,
        len: usize,
    },
    Argmax {
        x: BufRef,
        cols: usize,
        row: usize,
    },
}

/// The op each recording `Backend` method appends, built from its arguments (those that
/// carry host data or a position stage them in `rec`'s arena). Kept here, not in the
/// `Backend` impl, so the fusion test's recording backend (fuse.rs) records exactly what
/// the real one does.
impl Op {
    pub(super) fn write(rec: &mut Recorder, dst: &CudaAct, data: &[f32]) -> Op {
        let bytes = bytemuck::cast_slice::<f32, u8>(data);
        Op::Write {
            dst: dst.buf.clone(),
            arena: rec.stage(bytes),
            bytes: bytes.len(),
        }
    }

    pub(super) fn embed(rec: &mut Recorder, table: &CudaMatrix, ids: &[u32], out: &CudaAct) -> Op {
        Op::Embed {
            m: table.clone(),
            ids: rec.stage(bytemuck::cast_slice(ids)),
            n: ids.len(),
            out: out.buf.clone(),
            out_cols: out.cols,
        }
    }

    pub(super) fn rms_norm(
        x: &CudaAct,
        first: usize,
        n: usize,
        w: &CudaAct,
        eps: f32,
        out: &CudaAct,
    ) -> Op {
        Op::Norm {
            x: x.buf.clone(),
            cols: x.cols,
            first,
            n,
            w: w.buf.clone(),
            eps,
            out: out.buf.clone(),
            add: None,
        }
    }

    pub(super) fn matmul(x: &CudaAct, n: usize, w: &CudaMatrix, out: &CudaAct) -> Op {
        Op::Matmul {
            x: x.buf.clone(),
            x_cols: x.cols,
            n,
            m: w.clone(),
            out: out.buf.clone(),
            out_cols: out.cols,
        }
    }

    pub(super) fn rope(
        x: &CudaAct,
        n: usize,
        n_heads: usize,
        head_dim: usize,
        table: &CudaAct,
        style: RopeStyle,
    ) -> Op {
        Op::Rope {
            x: x.buf.clone(),
            x_cols: x.cols,
            n,
            heads: n_heads,
            hd: head_dim,
            table: table.buf.clone(),
            style,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_kv(
        rec: &mut Recorder,
        k: &CudaAct,
        v: &CudaAct,
        first: usize,
        n: usize,
        pos: usize,
        kc: &CudaKv,
        vc: &CudaKv,
    ) -> Op {
        let (k, v, kv_dim, dtype, kc, vc) = (
            k.buf.clone(),
            v.buf.clone(),
            kc.kv_dim,
            kc.dtype,
            kc.buf.clone(),
            vc.buf.clone(),
        );
        Op::StoreKv {
            k,
            v,
            first,
            n,
            pos: rec.pos_slot(pos),
            kv_dim,
            kc,
            vc,
            dtype,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        rec: &mut Recorder,
        q: &CudaAct,
        kc: &CudaKv,
        vc: &CudaKv,
        first: usize,
        n: usize,
        pos: usize,
        shape: AttnShape,
        out: &CudaAct,
    ) -> Op {
        Op::Attention {
            q: q.buf.clone(),
            q_cols: q.cols,
            kc: kc.buf.clone(),
            vc: vc.buf.clone(),
            dtype: kc.dtype,
            max_seq: kc.max_seq,
            kv_dim: kc.kv_dim,
            first,
            n,
            pos: rec.pos_slot(pos),
            shape,
            out: out.buf.clone(),
            out_cols: out.cols,
        }
    }

    pub(super) fn silu_mul(gate: &CudaAct, up: &CudaAct, len: usize) -> Op {
        Op::SiluMul {
            gate: gate.buf.clone(),
            up: up.buf.clone(),
            len,
        }
    }

    pub(super) fn add(x: &CudaAct, y: &CudaAct, len: usize) -> Op {
        Op::Add {
            x: x.buf.clone(),
            y: y.buf.clone(),
            len,
        }
    }

    pub(super) fn argmax(x: &CudaAct, row: usize) -> Op {
        Op::Argmax {
            x: x.buf.clone(),
            cols: x.cols,
            row,
        }
    }
}

/// A kernel handle (valid while the module lives, which the backend holds).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Func(pub(super) sys::CUfunction);
// SAFETY: a CUfunction is an immutable handle; the driver API is thread-safe.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

/// A lowered op: a kernel launch (arguments as 8-byte slots; 4-byte parameters read the
/// low half) or a device-to-device copy.
pub(super) enum Launch {
    Kernel {
        f: Func,
        grid: [u32; 3],
        block: u32,
        args: Vec<u64>,
    },
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
}

/// The launch list as numbers: equal lists launch the same work.
fn encode(launches: &[Launch]) -> Vec<u64> {
    let mut key = Vec::with_capacity(launches.len() * 12);
    for l in launches {
        match l {
            Launch::Kernel {
                f,
                grid,
                block,
                args,
            } => {
                key.extend([
                    0,
                    f.0 as u64,
                    grid[0] as u64,
                    grid[1] as u64,
                    grid[2] as u64,
                    *block as u64,
                    args.len() as u64,
                ]);
                key.extend_from_slice(args);
            }
            Launch::Copy { dst, src, bytes } => key.extend([1, *dst, *src, *bytes as u64]),
        }
    }
    key
}

/// A captured launch list and its key (the launch list itself).
struct Graph {
    key: Vec<u64>,
    exec: CudaGraph,
}
// SAFETY: graphs are only touched under the recorder's mutex.
unsafe impl Send for Graph {}

pub(super) struct Recorder {
    pub(super) ops: Vec<Op>,
    pub(super) arena: Vec<u8>,
    /// (position, arena offset) of the last position uploaded in this batch.
    pub(super) pos_slot: Option<(usize, usize)>,
    pub(super) arena_dev: Option<BufRef>,
    /// Scratch for x[perm] ahead of a column-permuted product.
    pub(super) gather: Option<BufRef>,
    /// The Q8 activations of one-token products (kernels.cu): two slots (glu reads one and
    /// writes the other), sized for the widest product of a flush before it is lowered, so
    /// the addresses hold for the whole launch list (and a captured graph).
    pub(super) q8: Option<BufRef>,
    /// glu's per-32-row arrival counters when it writes Q8 activations (zero between runs).
    pub(super) glu_counters: Option<BufRef>,
    /// Scratch buffers replaced by larger ones, kept until the stream has been synchronized
    /// (launches recorded before the replacement may still read them).
    pub(super) retired: Vec<BufRef>,
    /// Attention partials (split decode) and the per-head arrival counters.
    pub(super) part: Option<BufRef>,
    pub(super) counters: Option<BufRef>,
    graphs: Vec<Graph>,
    /// The launch lists of the last few flushes (a decode step alternates with readbacks).
    recent: std::collections::VecDeque<Vec<u64>>,
    graphs_on: bool,
    /// Ops launched since the last synchronize (their buffers stay alive until then).
    pub(super) inflight: Vec<Op>,
    pub(super) error: Option<Error>,
}

impl Recorder {
    /// An empty recorder; `graphs_on` lets flushes capture and replay CUDA graphs.
    pub(super) fn new(graphs_on: bool) -> Recorder {
        Recorder {
            ops: vec![],
            arena: vec![],
            pos_slot: None,
            arena_dev: None,
            gather: None,
            q8: None,
            glu_counters: None,
            retired: vec![],
            part: None,
            counters: None,
            graphs: vec![],
            recent: Default::default(),
            graphs_on,
            inflight: vec![],
            error: None,
        }
    }

    /// Append host data to the batch's upload arena (16-byte aligned); returns its offset.
    pub(super) fn stage(&mut self, bytes: &[u8]) -> usize {
        let off = self.arena.len().next_multiple_of(16);
        self.arena.resize(off, 0);
        self.arena.extend_from_slice(bytes);
        off
    }

    /// The arena offset of `pos` as a u32, shared by the ops of one forward chunk.
    pub(super) fn pos_slot(&mut self, pos: usize) -> usize {
        match self.pos_slot {
            Some((p, off)) if p == pos => off,
            _ => {
                let off = self.stage(&(pos as u32).to_le_bytes());
                self.pos_slot = Some((pos, off));
                off
            }
        }
    }
}
