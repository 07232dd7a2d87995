//! The wgpu backend: every op is a WGSL compute shader from `shaders/`.
//!
//! Ops are recorded, not run: each appends a dispatch (or a host-to-device copy) to a
//! command list, with its parameters in one slot of a uniform ring. The list is submitted
//! every `SUBMIT_GROUP` commands, so the GPU works while the host records the rest, and at
//! a readback. Readback is async because a browser cannot block on the GPU.
//!
//! The ops a decode step records around its one-token products are held back and fused
//! into them (fuse.rs, matvec.wgsl): eight dispatches per layer instead of sixteen.
//!
//! The KV caches of a batch's pool sit side by side in one buffer per layer
//! (`alloc_kv_slots`), and a table of rows (kv_rows.wgsl) tells the store and attention
//! kernels where each row's cache starts, so a decode step of many sequences stores and
//! attends in one dispatch each per layer (`attend`).
//!
//! A decode step allocates nothing on the device: host data (token ids, rotary angles)
//! rides in an upload ring written once per submit, token ids live in one buffer, readback
//! reuses one staging buffer, and bind groups are cached per (kernel, buffers). A cached
//! bind group holds its buffers alive, so a dropped activation or KV cache hands its buffer
//! to `released`, and the next submit drops the bind groups that name it.

mod device;
mod fuse;
pub mod kernels;
pub mod matrix;
mod params;
#[cfg(test)]
mod tests;
mod timer;

use self::device::Gpu;
pub use self::fuse::Fusing;
use self::fuse::{Matvec, Op, fuse};
use self::kernels::{Compiled, Fusion, Kernel, PARAMS_SIZE};
use self::matrix::rows_per_chunk;
use self::params::{
    Argmax, Attention, AttentionCombine, Elementwise, Gather, KvRow, QuantizeQ8, RmsNorm, Rope,
    StoreKv, Weights,
};
use self::timer::{Tag, Timer};
use super::layout::{Layout, layout, repack_rows};
use super::profile::Profile;
use super::{AttnShape, Backend, KvDtype, SeqKv};
use crate::weights::{RopeStyle, WeightData, WeightFormat};
use crate::{Error, Result};
use bytemuck::Zeroable;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Dispatches recorded between two submits before the ring wraps and forces a submit.
const RING_SLOTS: u64 = 4096;
/// Commands recorded before they are submitted without waiting for a readback: the GPU
/// starts on the first layers while the host records the rest (a 7B decode step is about
/// 260 dispatches, so four or five submits).
const SUBMIT_GROUP: usize = 64;
/// Tokens per workgroup of matvec.wgsl under MULTI (its TOKENS).
const MATVEC_TOKENS: usize = 8;

pub struct Wgpu {
    gpu: Gpu,
    slot: u64,
    kernels: Mutex<HashMap<Kernel, Arc<Compiled>>>,
    rec: Mutex<Recorder>,
    dummy: wgpu::Buffer,
    /// Stand-ins for matvec.wgsl's two writable bindings when it fuses nothing there.
    dummy_rw: [wgpu::Buffer; 2],
    argmax_out: wgpu::Buffer,
    /// Ops held back until their neighbours are known (fuse.rs), lowered at the next op
    /// that cannot fuse, readback or allocation.
    pending: Mutex<Vec<Op>>,
    /// What of `pending` is fused before lowering (`YANGTUO_WGPU_FUSE`: 0, epilogues, all).
    fusing: Mutex<Fusing>,
    /// Whether plain one-token products of Q4_0, Q8_0 and Q4_K run over int8 x̂ (matvec_q8.wgsl):
    /// an experiment for timing on a GPU, off unless `YANGTUO_WGPU_Q8X=1` or `set_q8x`.
    q8x: AtomicBool,
    /// The int8 x̂ of those products (quantize_q8.wgsl), grown as needed.
    xq: Mutex<Option<wgpu::Buffer>>,
    /// Whether greedy decode runs ahead of the host (`argmax_ahead`; `YANGTUO_WGPU_AHEAD=0`
    /// turns it off, for timing what it gains).
    ahead: bool,
    /// Dispatches recorded so far, for tests that count a step's.
    dispatched: AtomicUsize,
    /// Scratch for `x[perm]` ahead of column-permuted (GPTQ act-order) products, grown as needed.
    gathered: Mutex<Option<wgpu::Buffer>>,
    /// Partial results of split decode attention (attention.wgsl), grown as needed.
    attn_parts: Mutex<Option<wgpu::Buffer>>,
    /// The table of cache rows the KV kernels read (kv_rows.wgsl), grown as needed.
    kv_rows: Mutex<Option<wgpu::Buffer>>,
    /// Where a copy between two caches in one buffer goes through, grown as needed.
    kv_copy: Mutex<Option<wgpu::Buffer>>,
    /// The token ids `embed` reads, grown as needed.
    ids: Mutex<Option<wgpu::Buffer>>,
    /// The mappable buffer readbacks copy into, grown as needed (taken while in use).
    staging: Mutex<Option<wgpu::Buffer>>,
    /// Buffers of dropped activations and KV caches, whose cached bind groups go at the
    /// next submit.
    released: Released,
    /// Device timestamps per dispatch while profiling (`set_profiling`).
    timer: Mutex<Option<Timer>>,
    error: Arc<Mutex<Option<String>>>,
}

enum Cmd {
    Dispatch {
        kernel: Arc<Compiled>,
        bind: wgpu::BindGroup,
        slot: u32,
        groups: [u32; 3],
        /// What a profile tallies it under, and the weight bytes it reads.
        tag: Tag,
        weight_bytes: u64,
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
    /// A copy out of the upload ring, whose buffer is known only at submit.
    Upload {
        ring_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
}

struct Recorder {
    params: Vec<u8>,
    params_buf: wgpu::Buffer,
    /// Host data recorded since the last submit, copied to `upload_buf` at the submit.
    uploads: Vec<u8>,
    upload_buf: Option<wgpu::Buffer>,
    cmds: Vec<Cmd>,
    binds: HashMap<(Kernel, Vec<(wgpu::Buffer, u64, u64)>), wgpu::BindGroup>,
}

type Released = Arc<Mutex<Vec<wgpu::Buffer>>>;

/// Hands a buffer to `Wgpu::released` when its owner (an activation or KV cache) drops.
struct Release {
    buf: wgpu::Buffer,
    to: Released,
}

impl Drop for Release {
    fn drop(&mut self) {
        release_into(&self.to, self.buf.clone());
    }
}

/// Add `buf` to the list whose bind groups the next submit forgets.
fn release_into(list: &Released, buf: wgpu::Buffer) {
    list.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
}

pub struct WgpuAct {
    buf: wgpu::Buffer,
    cols: usize,
    /// `None` for a borrowed view of a backend-owned scratch buffer.
    _release: Option<Release>,
}

/// One layer's K or V cache of a sequence: rows base.. of `buf`, which the caches of other
/// sequences may share (`alloc_kv_slots`), so that one dispatch serves them all. A
/// sequence's K and V caches sit at the same base.
pub struct WgpuKv {
    buf: wgpu::Buffer,
    base: usize,
    kv_dim: usize,
    dtype: KvDtype,
    /// The buffer goes when the last cache in it does.
    _release: Arc<Release>,
}

struct Chunk {
    buf: wgpu::Buffer,
    row0: usize,
    rows: usize,
    payload_size: u64,
    scales_offset: u64,
    scales_size: u64,
}

pub struct MatrixInner {
    format: WeightFormat,
    cols: usize,
    lay: Layout,
    chunks: Vec<Chunk>,
    /// The column permutation (u32 per column) of a GPTQ act-order matrix.
    perm: Option<wgpu::Buffer>,
}

impl MatrixInner {
    fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.rows).sum()
    }
}

#[derive(Clone)]
pub struct WgpuMatrix(Arc<MatrixInner>);

/// A storage buffer binding: (buffer, offset, size).
type Bind = (wgpu::Buffer, u64, u64);

fn whole(b: &wgpu::Buffer) -> Bind {
    (b.clone(), 0, b.size())
}

/// Append the kv_rows.wgsl entries of one sequence's rows first..first+n at positions
/// pos.. of a cache starting at row `base`; `parts` counts the split entries so far.
/// Decode over a long context splits the keys into up to MAX_SPLITS chunks of at least
/// MIN_SPLIT, each a workgroup of its own, merged by attention_combine.wgsl: one workgroup
/// per head would leave most of a GPU idle (32 heads, 100+ cores). How a row splits depends
/// only on its own sequence, so it sums in the same order in any batch.
fn kv_rows_of(
    rows: &mut Vec<KvRow>,
    parts: &mut usize,
    first: usize,
    n: usize,
    pos: usize,
    base: usize,
) {
    const MAX_SPLITS: usize = 16;
    const MIN_SPLIT: usize = 256;
    let len = pos + n;
    let chunk = if n == 1 && len > MIN_SPLIT {
        len.div_ceil(MAX_SPLITS).next_multiple_of(64).max(MIN_SPLIT)
    } else {
        len
    };
    let splits = len.div_ceil(chunk);
    for t in 0..n {
        rows.push(KvRow {
            row: (first + t) as u32,
            base: base as u32,
            pos: (pos + t) as u32,
            chunk: chunk as u32,
            splits: splits as u32,
            part: *parts as u32,
        });
        if splits > 1 {
            *parts += 1;
        }
    }
}

impl Wgpu {
    /// Open the best adapter (see `device::open`), using shader-f16 where it has it.
    pub async fn new() -> Result<Wgpu> {
        Self::with_f16(true).await
    }

    /// As `new`, but `allow_f16 = false` forces the f32 path (what browsers without
    /// shader-f16 run), so it can be tested on any adapter.
    pub async fn with_f16(allow_f16: bool) -> Result<Wgpu> {
        let gpu = device::open(allow_f16).await?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        gpu.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| e.to_string());
            }));
        let slot = (gpu.limits.min_uniform_buffer_offset_alignment as u64).max(PARAMS_SIZE);
        let params_buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params ring"),
            size: slot * RING_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let storage = |label, size| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let dummy = storage("dummy", 16);
        let dummy_rw = [storage("dummy xn", 16), storage("dummy aux", 16)];
        let argmax_out = storage("argmax", 16);
        // Fusion is on for native GPUs. Off on software adapters (lavapipe; tests turn it on
        // with `set_fusing`) and, until it is timed on a browser's GPU, in the browser: with
        // it, the browser demo's answer on SwiftShader ran past its 60 s timeout (twice,
        // after passing once). The cost is the fused norm, which every workgroup of a
        // product finds again: on lavapipe, decode with every fusion ran at half the speed
        // of none, with all but the norms (`Fusing::Epilogues`) at the same speed as none
        // (bench/lavapipe-2026-12-07-profile.txt).
        let native_gpu = cfg!(not(target_arch = "wasm32")) && gpu.is_real_gpu();
        let fusing = match std::env::var("YANGTUO_WGPU_FUSE").as_deref() {
            Ok("0") => Fusing::Off,
            Ok("epilogues") => Fusing::Epilogues,
            Ok(_) => Fusing::All,
            Err(_) if native_gpu => Fusing::All,
            Err(_) => Fusing::Off,
        };
        let ahead = std::env::var("YANGTUO_WGPU_AHEAD").map_or(true, |v| v != "0");
        let q8x = std::env::var("YANGTUO_WGPU_Q8X").is_ok_and(|v| v == "1");
        log::info!("wgpu device: {}", gpu.describe());
        Ok(Wgpu {
            slot,
            kernels: Mutex::new(HashMap::new()),
            rec: Mutex::new(Recorder {
                params: vec![],
                params_buf,
                uploads: vec![],
                upload_buf: None,
                cmds: vec![],
                binds: HashMap::new(),
            }),
            dummy,
            dummy_rw,
            argmax_out,
            pending: Mutex::new(vec![]),
            fusing: Mutex::new(fusing),
            ahead,
            q8x: AtomicBool::new(q8x),
            xq: Mutex::new(None),
            dispatched: AtomicUsize::new(0),
            gathered: Mutex::new(None),
            attn_parts: Mutex::new(None),
            kv_rows: Mutex::new(None),
            kv_copy: Mutex::new(None),
            ids: Mutex::new(None),
            staging: Mutex::new(None),
            released: Arc::default(),
            timer: Mutex::new(None),
            error,
            gpu,
        })
    }

    /// Wait for all recorded and submitted work; report any device error (out of memory,
    /// lost device) that happened meanwhile. The browser reports allocation failures
    /// asynchronously, so a loader calls this once the weights are uploaded.
    pub async fn sync(&self) -> Result<()> {
        self.readback(&self.argmax_out, 0, 4).await.map(|_| ())
    }

    /// Which of a decode step's neighbouring ops fuse into its products.
    pub fn set_fusing(&self, fusing: Fusing) {
        self.flush_ops();
        *self.fusing.lock().unwrap() = fusing;
    }

    /// Run plain one-token products of Q4_0, Q8_0 and Q4_K over int8 x̂ (matvec_q8.wgsl), or not
    /// (the default). Fused products never do, so this matters with fusion off.
    pub fn set_q8x(&self, on: bool) {
        self.flush_ops();
        self.q8x.store(on, Ordering::Relaxed);
    }

    /// Dispatches recorded since the backend opened.
    pub fn dispatch_count(&self) -> usize {
        self.flush_ops();
        self.dispatched.load(Ordering::Relaxed)
    }

    pub fn is_real_gpu(&self) -> bool {
        self.gpu.is_real_gpu()
    }

    /// The (buffers, bind groups) alive on the device, as wgpu-core counts them; `None` in
    /// the browser. A leak check: a decode step must leave both where it found them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn live_objects(&self) -> Option<(usize, usize)> {
        let hub = self.gpu.instance.generate_report()?.hub;
        Some((hub.buffers.num_allocated, hub.bind_groups.num_allocated))
    }

    fn kernel(&self, k: Kernel) -> Arc<Compiled> {
        let mut map = self.kernels.lock().unwrap();
        map.entry(k)
            .or_insert_with(|| kernels::compile(&self.gpu.device, k, self.gpu.f16))
            .clone()
    }

    /// Record one dispatch of `k` with `params` (the kernel's struct from params.rs) over
    /// `buffers` (bindings 1..).
    fn dispatch<P: bytemuck::Pod>(
        &self,
        k: Kernel,
        params: &P,
        buffers: Vec<Bind>,
        groups: [u32; 3],
    ) {
        self.dispatch_reading(k, params, buffers, groups, None, 0);
    }

    /// `dispatch` of a kernel that reads a weight matrix of `shape` (rows, cols), of which
    /// `weight_bytes` (for a profile).
    fn dispatch_reading<P: bytemuck::Pod>(
        &self,
        k: Kernel,
        params: &P,
        buffers: Vec<Bind>,
        groups: [u32; 3],
        shape: Option<(u32, u32)>,
        weight_bytes: u64,
    ) {
        // the shader sees only the PARAMS_SIZE window at the slot's start
        const { assert!(size_of::<P>() as u64 <= PARAMS_SIZE) };
        let kernel = self.kernel(k);
        debug_assert_eq!(buffers.len(), kernel.n_storage);
        let mut rec = self.rec.lock().unwrap();
        if rec.params.len() as u64 >= self.slot * RING_SLOTS || rec.cmds.len() >= SUBMIT_GROUP {
            self.submit(&mut rec, None);
        }
        let slot = rec.params.len() as u32;
        let mut bytes = vec![0u8; self.slot as usize];
        bytes[..size_of::<P>()].copy_from_slice(bytemuck::bytes_of(params));
        rec.params.extend_from_slice(&bytes);
        let key = (k, buffers);
        let bind = match rec.binds.get(&key) {
            Some(b) => b.clone(),
            None => {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &rec.params_buf,
                        offset: 0,
                        size: NonZeroU64::new(PARAMS_SIZE),
                    }),
                }];
                for (i, (buf, offset, size)) in key.1.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: buf,
                            offset: *offset,
                            size: NonZeroU64::new(*size),
                        }),
                    });
                }
                let b = self
                    .gpu
                    .device
                    .create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &kernel.layout,
                        entries: &entries,
                    });
                rec.binds.insert(key, b.clone());
                b
            }
        };
        rec.cmds.push(Cmd::Dispatch {
            kernel,
            bind,
            slot,
            groups,
            tag: (k, shape),
            weight_bytes,
        });
        self.dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// Hold `op` back until its neighbours are known.
    fn defer(&self, op: Op) {
        self.pending.lock().unwrap().push(op);
    }

    /// Fuse and record the held-back ops. Every op that cannot fuse calls this first, so
    /// the recorded order is the forward pass's.
    fn flush_ops(&self) {
        let ops = std::mem::take(&mut *self.pending.lock().unwrap());
        if ops.is_empty() {
            return;
        }
        let ops = match *self.fusing.lock().unwrap() {
            Fusing::Off => ops,
            Fusing::Epilogues => fuse(ops, false),
            Fusing::All => fuse(ops, true),
        };
        for op in ops {
            self.lower(op);
        }
    }

    fn lower(&self, op: Op) {
        match op {
            Op::Norm {
                x,
                cols,
                first,
                n,
                w,
                eps,
                out,
            } => {
                let params = RmsNorm {
                    n: n as u32,
                    cols: cols as u32,
                    first: first as u32,
                    eps,
                };
                self.dispatch(
                    Kernel::RmsNorm,
                    &params,
                    vec![whole(&x), whole(&w), whole(&out)],
                    [n as u32, 1, 1],
                );
            }
            Op::Matvec(mv) => self.lower_matvec(mv),
            Op::Rope {
                x,
                x_cols,
                n,
                heads,
                hd,
                table,
                style,
            } => {
                let (groups, gx) = self.linear_groups(n * heads * hd / 2);
                let params = Rope {
                    n: n as u32,
                    n_heads: heads as u32,
                    head_dim: hd as u32,
                    stride: x_cols as u32,
                    interleaved: (style == RopeStyle::Interleaved) as u32,
                    grid_x: gx,
                };
                self.dispatch(
                    Kernel::Rope,
                    &params,
                    vec![whole(&x), whole(&table)],
                    groups,
                );
            }
            Op::StoreKv {
                k,
                v,
                first,
                n,
                pos,
                kv_dim,
                kc,
                vc,
                dtype,
            } => {
                // `pos` counts from the buffer's start (the cache's base added)
                let mut rows = vec![];
                kv_rows_of(&mut rows, &mut 0, first, n, pos, 0);
                if let Some(table) = self.kv_rows_table(&rows) {
                    let caches = (&kc, &vc, dtype, kv_dim);
                    self.store_rows(&k, &v, caches, &table, rows.len());
                }
            }
            Op::Add { x, y, len } => self.elementwise(Kernel::Add, x, y, len),
            Op::SiluMul { gate, up, len } => self.elementwise(Kernel::SiluMul, gate, up, len),
        }
    }

    /// Upload `rows` as the table the KV kernels read; `None` if it cannot grow (the error
    /// is kept for the next readback).
    fn kv_rows_table(&self, rows: &[KvRow]) -> Option<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(rows);
        let table = self.scratch(&self.kv_rows, "kv rows", bytes.len() as u64)?;
        self.record_upload(&table, 0, bytes);
        Some(table)
    }

    /// store_kv.wgsl over the `n` entries of `table`, into `caches` (k, v, dtype, kv_dim).
    fn store_rows(
        &self,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        (kc, vc, dtype, kv_dim): (&wgpu::Buffer, &wgpu::Buffer, KvDtype, usize),
        table: &wgpu::Buffer,
        n: usize,
    ) {
        // one thread per word: two f16 elements, or one f32
        let (groups, gx) = self.linear_groups(n * kv_dim * dtype.bytes() / 4);
        let params = StoreKv {
            n: n as u32,
            kv_dim: kv_dim as u32,
            grid_x: gx,
        };
        let bufs = [k, v, kc, vc, table].map(whole).to_vec();
        self.dispatch(Kernel::StoreKv(dtype), &params, bufs, groups);
    }

    /// attention.wgsl over the entries `rows` (uploaded as `table`), `parts` of them split,
    /// then attention_combine.wgsl where any is.
    #[allow(clippy::too_many_arguments)]
    fn attend_rows(
        &self,
        q: &WgpuAct,
        kc: &WgpuKv,
        vc: &WgpuKv,
        table: &wgpu::Buffer,
        rows: &[KvRow],
        parts: usize,
        s: AttnShape,
        out: &mut WgpuAct,
    ) {
        let splits = rows.iter().map(|r| r.splits).max().unwrap_or(1);
        let scratch = if splits > 1 {
            let size = (parts * s.n_heads * splits as usize * (s.head_dim + 2) * 4) as u64;
            match self.scratch(&self.attn_parts, "attention scratch", size) {
                Some(b) => b,
                None => return, // the error is reported at the next readback
            }
        } else {
            self.dummy.clone()
        };
        let params = Attention {
            n: rows.len() as u32,
            n_heads: s.n_heads as u32,
            n_kv_heads: s.n_kv_heads as u32,
            head_dim: s.head_dim as u32,
            q_stride: q.cols as u32,
            kv_stride: kc.kv_dim as u32,
            out_stride: out.cols as u32,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
            splits,
        };
        let bufs = [&q.buf, &kc.buf, &vc.buf, &out.buf, &scratch, table]
            .map(whole)
            .to_vec();
        let (heads, n) = (s.n_heads as u32, rows.len() as u32);
        self.dispatch(
            Kernel::Attention(kc.dtype),
            &params,
            bufs,
            [heads, n, splits],
        );
        if splits > 1 {
            let params = AttentionCombine {
                n_heads: heads,
                head_dim: s.head_dim as u32,
                splits,
                out_stride: out.cols as u32,
            };
            let bufs = [&scratch, &out.buf, table].map(whole).to_vec();
            self.dispatch(Kernel::AttentionCombine, &params, bufs, [heads, n, 1]);
        }
    }

    fn elementwise(&self, k: Kernel, a: wgpu::Buffer, b: wgpu::Buffer, len: usize) {
        let (groups, gx) = self.linear_groups(len);
        let params = Elementwise {
            len: len as u32,
            grid_x: gx,
        };
        self.dispatch(k, &params, vec![whole(&a), whole(&b)], groups);
    }

    /// A matvec.wgsl product (one token with what is fused into it, or a batch's decode
    /// rows), per chunk of rows (fused products have one chunk).
    fn lower_matvec(&self, mv: Matvec) {
        let fusion = mv.fusion();
        let m = &mv.m.0;
        if fusion == Fusion::default()
            && kernels::has_q8_unit(m.format)
            && self.q8x.load(Ordering::Relaxed)
        {
            return self.lower_matvec_q8(mv);
        }
        let ro = |b: Option<&wgpu::Buffer>| whole(b.unwrap_or(&self.dummy));
        let xn = whole(mv.norm.as_ref().map_or(&self.dummy_rw[0], |n| &n.out));
        // the one writable binding the epilogues share: a cache, the residual or the gate
        let aux = (mv.kv.as_ref().map(|k| &k.0))
            .or(mv.add.as_ref())
            .or(mv.silu.as_ref());
        let extra = [
            ro(mv.norm.as_ref().map(|n| &n.w)),
            xn,
            ro(mv.rope.as_ref().map(|r| &r.table)),
            whole(aux.unwrap_or(&self.dummy_rw[1])),
        ];
        let io = Io {
            x: &mv.x,
            x_cols: mv.x_cols,
            out: &mv.out,
            out_cols: mv.out_cols,
            n: mv.tokens.unwrap_or(1),
        };
        let fused = Weights {
            x_row: mv.x_row as u32,
            eps: mv.norm.as_ref().map_or(0.0, |n| n.eps),
            head_dim: mv.rope.as_ref().map_or(0, |r| r.hd) as u32,
            pos: mv.kv.as_ref().map_or(0, |k| k.1) as u32,
            ..Weights::zeroed()
        };
        // ROWS = 8 rows per workgroup, and under MULTI one group of workgroups per
        // MATVEC_TOKENS tokens
        let kern = Kernel::Matvec(m.format, fusion);
        let token_groups = io.n.div_ceil(MATVEC_TOKENS) as u32;
        let grid = |c: &Chunk| {
            let (mut groups, grid_x) = self.folded(c.rows.div_ceil(8));
            groups[2] = token_groups;
            (groups, grid_x)
        };
        self.weight_dispatch(kern, &mv.m, io, grid, fused, &extra);
    }

    /// A one-token product with nothing fused over x̂ quantized to int8: quantize_q8.wgsl
    /// into the `xq` scratch, then matvec_q8.wgsl.
    fn lower_matvec_q8(&self, mv: Matvec) {
        let m = &mv.m.0;
        // rows of these formats are whole blocks of 32
        let blocks = m.cols / 32;
        let Some(xq) = self.scratch(&self.xq, "int8 x", (blocks * 48).max(48) as u64) else {
            return;
        };
        let quantize = QuantizeQ8 {
            cols: m.cols as u32,
            x_row: mv.x_row as u32,
            x_stride: mv.x_cols as u32,
        };
        let groups = [blocks.div_ceil(64).max(1) as u32, 1, 1];
        self.dispatch(
            Kernel::QuantizeQ8,
            &quantize,
            vec![whole(&mv.x), whole(&xq)],
            groups,
        );
        let io = Io {
            x: &xq,
            x_cols: 0,
            out: &mv.out,
            out_cols: mv.out_cols,
            n: 1,
        };
        let grid = |c: &Chunk| self.folded(c.rows.div_ceil(8));
        let kern = Kernel::MatvecQ8(m.format);
        self.weight_dispatch(kern, &mv.m, io, grid, Weights::zeroed(), &[]);
    }

    fn scales(&self, c: &Chunk) -> Bind {
        if c.scales_size > 0 {
            (c.buf.clone(), c.scales_offset, c.scales_size)
        } else {
            whole(&self.dummy)
        }
    }

    /// Groups for `items` work items of a 256-thread kernel, folded into 2-D past the
    /// per-dimension limit; returns (groups, grid_x).
    fn linear_groups(&self, items: usize) -> ([u32; 3], u32) {
        let groups = items.div_ceil(256).max(1) as u64;
        let max = self.gpu.limits.max_compute_workgroups_per_dimension as u64;
        let gx = groups.min(max);
        ([gx as u32, groups.div_ceil(gx) as u32, 1], gx as u32)
    }

    /// Fold `n` workgroups into 2-D; returns (groups, grid_x).
    fn folded(&self, n: usize) -> ([u32; 3], u32) {
        let max = self.gpu.limits.max_compute_workgroups_per_dimension as usize;
        let gx = n.clamp(1, max);
        ([gx as u32, n.div_ceil(gx).max(1) as u32, 1], gx as u32)
    }

    /// Rows `table[ids[t]]` into `out` for the `n` ids a device buffer holds (embed.wgsl).
    fn embed_ids(&self, table: &WgpuMatrix, ids: &WgpuAct, n: usize, out: &mut WgpuAct) {
        let groups = [table.0.cols.div_ceil(256) as u32, n as u32, 1];
        self.weight_dispatch(
            Kernel::Embed(table.0.format),
            table,
            Io::of(ids, out, n),
            |_| (groups, 0),
            Weights::zeroed(),
            &[],
        );
    }

    /// The greedy pick of x's `row` into `argmax_out` (argmax.wgsl).
    fn record_argmax(&self, x: &WgpuAct, row: usize) {
        self.flush_ops();
        self.dispatch(
            Kernel::Argmax,
            &Argmax {
                cols: x.cols as u32,
                row: row as u32,
            },
            vec![whole(&x.buf), whole(&self.argmax_out)],
            [1, 1, 1],
        );
    }

    /// Submit everything recorded, then `tail` (a copy to a readback buffer); the
    /// submission's index, if there was anything to submit.
    fn submit(
        &self,
        rec: &mut Recorder,
        tail: Option<(&wgpu::Buffer, u64, &wgpu::Buffer, u64)>,
    ) -> Option<wgpu::SubmissionIndex> {
        self.forget_released(rec);
        if rec.cmds.is_empty() && tail.is_none() {
            return None;
        }
        let (device, queue) = (&self.gpu.device, &self.gpu.queue);
        if !rec.params.is_empty() {
            queue.write_buffer(&rec.params_buf, 0, &rec.params);
        }
        let ring = self.upload_ring(rec);
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("forward"),
        });
        let mut timer = self.timer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = timer.as_mut() {
            t.reserve(device, rec.cmds.len());
        }
        // while profiling: each dispatch's tag and weight bytes, in the order of its stamps
        let mut stamped: Vec<(Tag, u64)> = vec![];
        let mut cmds = std::mem::take(&mut rec.cmds).into_iter().peekable();
        while cmds.peek().is_some() {
            match cmds.peek() {
                Some(Cmd::Copy { .. }) => {
                    if let Some(Cmd::Copy {
                        src,
                        src_offset,
                        dst,
                        dst_offset,
                        size,
                    }) = cmds.next()
                    {
                        enc.copy_buffer_to_buffer(&src, src_offset, &dst, dst_offset, size);
                    }
                    continue;
                }
                Some(Cmd::Upload { .. }) => {
                    if let (
                        Some(Cmd::Upload {
                            ring_offset,
                            dst,
                            dst_offset,
                            size,
                        }),
                        Some(ring),
                    ) = (cmds.next(), &ring)
                    {
                        enc.copy_buffer_to_buffer(ring, ring_offset, &dst, dst_offset, size);
                    }
                    continue;
                }
                _ => {}
            }
            // one pass for a run of dispatches, or one per dispatch with its stamps
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: timer.as_ref().and_then(|t| t.writes(stamped.len())),
            });
            while let Some(Cmd::Dispatch { .. }) = cmds.peek() {
                if let Some(Cmd::Dispatch {
                    kernel,
                    bind,
                    slot,
                    groups,
                    tag,
                    weight_bytes,
                }) = cmds.next()
                {
                    pass.set_pipeline(&kernel.pipeline);
                    pass.set_bind_group(0, &bind, &[slot]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    if timer.is_some() {
                        stamped.push((tag, weight_bytes));
                        break;
                    }
                }
            }
        }
        if let Some(t) = timer.as_ref() {
            t.resolve(&mut enc, stamped.len());
        }
        if let Some((src, src_off, dst, size)) = tail {
            enc.copy_buffer_to_buffer(src, src_off, dst, 0, size);
        }
        let index = queue.submit([enc.finish()]);
        rec.params.clear();
        if let Some(t) = timer.as_mut() {
            t.collect(device, index.clone(), &stamped);
        }
        Some(index)
    }

    /// Drop the cached bind groups that name a released buffer, so the buffer can go.
    fn forget_released(&self, rec: &mut Recorder) {
        let gone = std::mem::take(&mut *self.released.lock().unwrap_or_else(|p| p.into_inner()));
        if !gone.is_empty() {
            rec.binds
                .retain(|k, _| !k.1.iter().any(|(buf, _, _)| gone.contains(buf)));
        }
    }

    /// Write the recorded uploads to the ring (grown, doubling, if they do not fit) ahead
    /// of the command buffer that copies out of it; `None` if there were none or the ring
    /// could not grow (the error is kept for the readback).
    fn upload_ring(&self, rec: &mut Recorder) -> Option<wgpu::Buffer> {
        if rec.uploads.is_empty() {
            return None;
        }
        let need = rec.uploads.len() as u64;
        if rec.upload_buf.as_ref().is_none_or(|b| b.size() < need) {
            let want = need.max(rec.upload_buf.as_ref().map_or(0, |b| b.size() * 2));
            let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
            match self.create_buffer("upload ring", want, usage, false) {
                Ok(b) => rec.upload_buf = Some(b),
                Err(e) => {
                    self.keep_error(e);
                    rec.uploads.clear();
                    return None;
                }
            }
        }
        let ring = rec.upload_buf.clone()?;
        self.gpu.queue.write_buffer(&ring, 0, &rec.uploads);
        rec.uploads.clear();
        Some(ring)
    }

    fn release_on_drop(&self, buf: &wgpu::Buffer) -> Release {
        Release {
            buf: buf.clone(),
            to: self.released.clone(),
        }
    }

    /// Keep `e` for the next readback, which reports it (ops are infallible).
    fn keep_error(&self, e: Error) {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| e.to_string());
    }

    fn check_error(&self) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) if e.to_lowercase().contains("out of memory") => Err(Error::OutOfMemory {
                what: "GPU work".into(),
                bytes: 0,
                msg: e,
            }),
            Some(e) => Err(Error::Device(e)),
            None => Ok(()),
        }
    }

    /// Create a buffer, turning an allocation failure into a typed error that names it.
    fn create_buffer(
        &self,
        what: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        mapped: bool,
    ) -> Result<wgpu::Buffer> {
        let lim = &self.gpu.limits;
        if size > lim.max_buffer_size {
            return Err(Error::OutOfMemory {
                what: what.into(),
                bytes: size,
                msg: format!(
                    "the device's largest buffer is {} bytes",
                    lim.max_buffer_size
                ),
            });
        }
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: size.max(16).next_multiple_of(16),
            usage,
            mapped_at_creation: mapped,
        });
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::OutOfMemory {
                what: what.into(),
                bytes: size,
                msg: e.to_string(),
            });
        }
        Ok(buf)
    }

    fn storage(&self, what: &str, size: u64) -> Result<wgpu::Buffer> {
        // what dropped buffers still hold is freed first, for this one to take (held-back
        // ops first make the bind groups they need, which may name a dropped buffer)
        self.flush_ops();
        self.forget_released(&mut self.rec.lock().unwrap());
        if size > self.gpu.limits.max_storage_buffer_binding_size {
            return Err(Error::OutOfMemory {
                what: what.into(),
                bytes: size,
                msg: format!(
                    "the device binds at most {} MiB per buffer; use a shorter context or smaller batch",
                    self.gpu.limits.max_storage_buffer_binding_size >> 20
                ),
            });
        }
        self.create_buffer(
            what,
            size,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            false,
        )
    }

    /// Copy `bytes` into `dst` at `offset`, in order with the recorded dispatches.
    fn record_upload(&self, dst: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        // copies move whole 4-byte words
        let size = (bytes.len() as u64).next_multiple_of(4);
        let mut rec = self.rec.lock().unwrap();
        let ring_offset = rec.uploads.len() as u64;
        rec.uploads.extend_from_slice(bytes);
        rec.uploads.resize((ring_offset + size) as usize, 0);
        rec.cmds.push(Cmd::Upload {
            ring_offset,
            dst: dst.clone(),
            dst_offset: offset,
            size,
        });
    }

    /// Submit, copy `size` bytes of `src` from `offset` to a mappable buffer, and read them.
    async fn readback(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        self.read_ahead(src, offset, size).await
    }

    /// `readback` whose submit happens now, in the call; the future waits for the copy
    /// only, after submitting what was recorded in between (work the device then runs
    /// while the host handles the bytes).
    fn read_ahead(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> impl Future<Output = Result<Vec<u8>>> + use<'_> {
        let reuse = self.staging.lock().unwrap().take();
        let staging = match reuse {
            Some(b) if b.size() >= size => Ok(b),
            _ => self.create_buffer(
                "readback",
                size.max(4096),
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                false,
            ),
        };
        let copied = staging.as_ref().ok().map(|staging| {
            self.flush_ops();
            let mut rec = self.rec.lock().unwrap();
            self.submit(&mut rec, Some((src, offset, staging, size)))
        });
        async move {
            let staging = staging?;
            let copied = copied.flatten();
            // what was recorded since the copy goes to the device before the wait
            self.flush_ops();
            self.submit(&mut self.rec.lock().unwrap(), None);
            self.map_staging(staging, size, copied).await
        }
    }

    /// Map `staging` once submission `copied` (or everything submitted) has run, and read
    /// `size` bytes.
    async fn map_staging(
        &self,
        staging: wgpu::Buffer,
        size: u64,
        copied: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging
            .slice(..size)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        #[cfg(not(target_arch = "wasm32"))]
        self.gpu
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: copied,
                timeout: None,
            })
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        #[cfg(target_arch = "wasm32")]
        let _ = copied; // the browser maps once the copy has run
        let mapped = rx
            .await
            .map_err(|_| Error::Device("readback was cancelled".into()))?;
        self.check_error()?;
        mapped.map_err(|e| Error::Device(format!("readback failed: {e}")))?;
        let data = staging
            .slice(..size)
            .get_mapped_range()
            .map_err(|e| Error::Device(format!("readback failed: {e}")))?
            .to_vec();
        staging.unmap();
        // an early return above drops a buffer that may still be mapped; this one is clean
        let mut slot = self.staging.lock().unwrap();
        if slot.as_ref().is_none_or(|b| b.size() < staging.size()) {
            *slot = Some(staging);
        }
        Ok(data)
    }

    /// Record `out[t, i] = x[t, perm[i]]` for t < n into the gather scratch and return it as
    /// the product's input; `None` (with the error kept for the next readback) if the
    /// scratch cannot grow.
    fn gather(&self, x: &WgpuAct, n: usize, cols: usize, perm: &wgpu::Buffer) -> Option<WgpuAct> {
        let buf = self.scratch(&self.gathered, "gather scratch", (n * cols * 4) as u64)?;
        let (groups, gx) = self.linear_groups(n * cols);
        let params = Gather {
            n: n as u32,
            cols: cols as u32,
            x_stride: x.cols as u32,
            grid_x: gx,
        };
        self.dispatch(
            Kernel::Gather,
            &params,
            vec![whole(perm), whole(&x.buf), whole(&buf)],
            groups,
        );
        Some(WgpuAct {
            buf,
            cols,
            _release: None,
        })
    }

    /// The scratch buffer in `slot`, grown (at least doubling) to `size` bytes if smaller;
    /// `None` (with the error kept for the next readback) if it cannot grow.
    fn scratch(
        &self,
        slot: &Mutex<Option<wgpu::Buffer>>,
        what: &str,
        size: u64,
    ) -> Option<wgpu::Buffer> {
        let mut slot = slot.lock().unwrap();
        match slot.as_ref() {
            Some(b) if b.size() >= size => Some(b.clone()),
            old => {
                let cap = self.gpu.limits.max_storage_buffer_binding_size;
                let want = old.map_or(size, |b| {
                    size.max(b.size().saturating_mul(2)).min(cap).max(size)
                });
                let b = match self.storage(what, want) {
                    Ok(b) => b,
                    Err(e) => {
                        self.keep_error(e);
                        return None;
                    }
                };
                if let Some(old) = slot.replace(b.clone()) {
                    // recorded work keeps its own handle; only the cached bindings go
                    release_into(&self.released, old);
                }
                Some(b)
            }
        }
    }

    /// One dispatch of `kern` per chunk of `w`'s rows, over (payload, scales, x, out) and
    /// then `extra`; `fused` holds matvec.wgsl's own params (zero for the other kernels).
    fn weight_dispatch(
        &self,
        kern: Kernel,
        w: &WgpuMatrix,
        io: Io<'_>,
        grid: impl Fn(&Chunk) -> ([u32; 3], u32),
        fused: Weights,
        extra: &[Bind],
    ) {
        let m = &w.0;
        for c in &m.chunks {
            let (groups, grid_x) = grid(c);
            let params = Weights {
                n: io.n as u32,
                rows: c.rows as u32,
                cols: m.cols as u32,
                nb: m.lay.nb as u32,
                x_stride: io.x_cols as u32,
                out_stride: io.out_cols as u32,
                out_off: c.row0 as u32,
                grid_x,
                row0: c.row0 as u32,
                ..fused
            };
            let mut bufs = vec![
                (c.buf.clone(), 0, c.payload_size),
                self.scales(c),
                whole(io.x),
                whole(io.out),
            ];
            bufs.extend_from_slice(extra);
            // a product reads its chunk's weights; embed only the rows of its ids
            let weight_bytes = match kern {
                Kernel::Matvec(..) | Kernel::Matmul(_) | Kernel::MatvecQ8(_) => {
                    c.payload_size + c.scales_size
                }
                _ => 0,
            };
            let shape = Some((m.rows() as u32, m.cols as u32));
            self.dispatch_reading(kern, &params, bufs, groups, shape, weight_bytes);
        }
    }
}

/// A product's input and output buffers, their row widths, and its tokens.
struct Io<'a> {
    x: &'a wgpu::Buffer,
    x_cols: usize,
    out: &'a wgpu::Buffer,
    out_cols: usize,
    n: usize,
}

impl<'a> Io<'a> {
    fn of(x: &'a WgpuAct, out: &'a WgpuAct, n: usize) -> Io<'a> {
        Io {
            x: &x.buf,
            x_cols: x.cols,
            out: &out.buf,
            out_cols: out.cols,
            n,
        }
    }
}

impl Backend for Wgpu {
    type Act = WgpuAct;
    type Matrix = WgpuMatrix;
    type Kv = WgpuKv;

    fn name(&self) -> String {
        self.gpu.describe()
    }

    fn upload_matrix(&self, name: &str, w: &WeightData) -> Result<WgpuMatrix> {
        let lay = layout(w.format, w.cols);
        let lim = &self.gpu.limits;
        let per = rows_per_chunk(
            &lay,
            lim.max_storage_buffer_binding_size,
            lim.max_buffer_size,
        );
        let align = lim.min_storage_buffer_offset_alignment as u64;
        let mut chunks = vec![];
        let mut r0 = 0;
        while r0 < w.rows {
            let r1 = (r0 + per).min(w.rows);
            let payload_size = ((r1 - r0) * lay.payload_row) as u64;
            let scales_size = ((r1 - r0) * lay.scales_row) as u64;
            let scales_offset = payload_size.next_multiple_of(align);
            let size = scales_offset + scales_size.next_multiple_of(4);
            let what = if chunks.is_empty() && r1 == w.rows {
                name.to_string()
            } else {
                format!("{name} rows {r0}..{r1}")
            };
            let buf = self.create_buffer(&what, size, wgpu::BufferUsages::STORAGE, true)?;
            {
                // Mapped memory is write-only (it may be write-combined), so repack on the host.
                let mut host = vec![0u8; size as usize];
                let (payload, rest) = host.split_at_mut(payload_size as usize);
                let scales =
                    &mut rest[(scales_offset - payload_size) as usize..][..scales_size as usize];
                repack_rows(w, r0, r1, payload, scales);
                let mut view = buf
                    .slice(..)
                    .get_mapped_range_mut()
                    .map_err(|e| Error::Device(format!("mapping {what}: {e}")))?;
                view.slice(..host.len()).copy_from_slice(&host);
            }
            buf.unmap();
            chunks.push(Chunk {
                buf,
                row0: r0,
                rows: r1 - r0,
                payload_size,
                scales_offset,
                scales_size: scales_size.next_multiple_of(4),
            });
            r0 = r1;
        }
        let perm = match &w.perm {
            None => None,
            Some(p) => {
                let bytes: &[u8] = bytemuck::cast_slice(p.as_slice());
                let buf = self.create_buffer(
                    &format!("{name} perm"),
                    bytes.len() as u64,
                    wgpu::BufferUsages::STORAGE,
                    true,
                )?;
                buf.slice(..)
                    .get_mapped_range_mut()
                    .map_err(|e| Error::Device(format!("mapping {name} perm: {e}")))?
                    .slice(..bytes.len())
                    .copy_from_slice(bytes);
                buf.unmap();
                Some(buf)
            }
        };
        Ok(WgpuMatrix(Arc::new(MatrixInner {
            format: w.format,
            cols: w.cols,
            lay,
            chunks,
            perm,
        })))
    }

    fn alloc(&self, name: &str, rows: usize, cols: usize) -> Result<WgpuAct> {
        let buf = self.storage(name, (rows * cols * 4) as u64)?;
        Ok(WgpuAct {
            _release: Some(self.release_on_drop(&buf)),
            buf,
            cols,
        })
    }

    fn alloc_kv(
        &self,
        name: &str,
        max_seq: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> Result<WgpuKv> {
        let mut one = self.alloc_kv_slots(name, 1, max_seq, kv_dim, dtype)?;
        Ok(one.pop().expect("one cache was made"))
    }

    /// As many caches per buffer as one binding holds.
    fn alloc_kv_slots(
        &self,
        name: &str,
        count: usize,
        max_seq: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> Result<Vec<WgpuKv>> {
        if dtype == KvDtype::F16 && !kv_dim.is_multiple_of(2) {
            // kv_f16.wgsl packs a row's neighbours into words
            return Err(Error::arg(
                "kv_cache_dtype",
                format!("an f16 KV cache needs an even kv_dim, not {kv_dim}"),
            ));
        }
        let one = (max_seq * kv_dim * dtype.bytes()) as u64;
        let lim = &self.gpu.limits;
        let fit = lim.max_storage_buffer_binding_size.min(lim.max_buffer_size) / one.max(1);
        let per_buf = (fit as usize).clamp(1, count.max(1));
        let mut caches = Vec::with_capacity(count);
        while caches.len() < count {
            let take = per_buf.min(count - caches.len());
            let what = if take == 1 {
                name.to_string()
            } else {
                format!("{name} ({take} sequences)")
            };
            let buf = self.storage(&what, one * take as u64)?;
            let release = Arc::new(self.release_on_drop(&buf));
            caches.extend((0..take).map(|i| WgpuKv {
                buf: buf.clone(),
                base: i * max_seq,
                kv_dim,
                dtype,
                _release: release.clone(),
            }));
        }
        Ok(caches)
    }

    /// f16 where the shaders compute in f16 (shader-f16); the f32 path keeps f32.
    fn auto_kv_dtype(&self) -> KvDtype {
        if self.gpu.f16 {
            KvDtype::F16
        } else {
            KvDtype::F32
        }
    }

    fn write(&self, dst: &mut WgpuAct, data: &[f32]) {
        self.flush_ops();
        self.record_upload(&dst.buf, 0, bytemuck::cast_slice(data));
    }

    fn embed(&self, table: &WgpuMatrix, ids: &[u32], out: &mut WgpuAct) {
        self.flush_ops();
        let Some(buf) = self.scratch(&self.ids, "token ids", (ids.len() * 4) as u64) else {
            return; // the error is reported at the next readback
        };
        let ids_buf = WgpuAct {
            buf,
            cols: 1,
            _release: None,
        };
        self.record_upload(&ids_buf.buf, 0, bytemuck::cast_slice(ids));
        self.embed_ids(table, &ids_buf, ids.len(), out);
    }

    fn rms_norm(
        &self,
        x: &WgpuAct,
        first: usize,
        n: usize,
        w: &WgpuAct,
        eps: f32,
        out: &mut WgpuAct,
    ) {
        self.defer(Op::Norm {
            x: x.buf.clone(),
            cols: x.cols,
            first,
            n,
            w: w.buf.clone(),
            eps,
            out: out.buf.clone(),
        });
    }

    fn matmul(&self, x: &WgpuAct, n: usize, w: &WgpuMatrix, out: &mut WgpuAct) {
        self.matmul_batch(x, n, 0, w, out)
    }

    /// Decode rows sum in matvec.wgsl's order, the lone token's (MULTI), and a prompt's rows
    /// in the tiled matmul.wgsl's, whose sums do not depend on how many rows share a tile:
    /// so a decode row gets the same bits beside any number of others and any prompt
    /// chunk, and a prompt's rows those of the same prompt alone or cut into other chunks
    /// of two tokens or more (a one-token chunk is a lone token's product).
    fn matmul_batch(&self, x: &WgpuAct, n: usize, lone: usize, w: &WgpuMatrix, out: &mut WgpuAct) {
        if n == 1 && w.0.perm.is_none() {
            let mv = Matvec::plain(w.clone(), x.buf.clone(), x.cols, out.buf.clone(), out.cols);
            return self.defer(Op::Matvec(mv));
        }
        self.flush_ops();
        let gathered;
        let x = match &w.0.perm {
            None => x,
            Some(perm) => match self.gather(x, n, w.0.cols, perm) {
                Some(g) => {
                    gathered = g;
                    &gathered
                }
                None => return,
            },
        };
        // the rows before the decode rows: prompts of two tokens or more
        let tiled = match n - lone.min(n) {
            // MULTI reads x's rows as vec4s: rows must start on one (always in a model)
            _ if !x.cols.is_multiple_of(4) => n,
            // one token alone, as above (a column-permuted matrix's lands here)
            1 => 0,
            prompt => prompt,
        };
        if tiled > 0 {
            let ty = tiled.div_ceil(64) as u32;
            let grid = |c: &Chunk| ([c.rows.div_ceil(64) as u32, ty, 1], 0);
            let kern = Kernel::Matmul(w.0.format);
            self.weight_dispatch(kern, w, Io::of(x, out, tiled), grid, Weights::zeroed(), &[]);
        }
        if tiled < n {
            let mut mv = Matvec::plain(w.clone(), x.buf.clone(), x.cols, out.buf.clone(), out.cols);
            (mv.x_row, mv.tokens) = (tiled, Some(n - tiled));
            self.lower_matvec(mv);
        }
    }

    fn rope(
        &self,
        x: &mut WgpuAct,
        n: usize,
        n_heads: usize,
        head_dim: usize,
        table: &WgpuAct,
        style: RopeStyle,
    ) {
        self.defer(Op::Rope {
            x: x.buf.clone(),
            x_cols: x.cols,
            n,
            heads: n_heads,
            hd: head_dim,
            table: table.buf.clone(),
            style,
        });
    }

    fn copy_kv(&self, src: &WgpuKv, cache: &mut WgpuKv, positions: std::ops::Range<usize>) {
        self.flush_ops();
        debug_assert_eq!(src.dtype, cache.dtype, "one model's caches share a dtype");
        let row = (cache.kv_dim * cache.dtype.bytes()) as u64;
        let size = positions.len() as u64 * row;
        let src_offset = (src.base + positions.start) as u64 * row;
        let dst_offset = (cache.base + positions.start) as u64 * row;
        if size == 0 {
            return;
        }
        let mut copies = vec![];
        if src.buf == cache.buf {
            // WebGPU copies only between two buffers: two caches in one go through a third
            let Some(via) = self.scratch(&self.kv_copy, "kv copy", size) else {
                return; // the error is reported at the next readback
            };
            copies.push((src.buf.clone(), src_offset, via.clone(), 0));
            copies.push((via, 0, cache.buf.clone(), dst_offset));
        } else {
            copies.push((src.buf.clone(), src_offset, cache.buf.clone(), dst_offset));
        }
        let cmds = &mut self.rec.lock().unwrap().cmds;
        for (src, src_offset, dst, dst_offset) in copies {
            cmds.push(Cmd::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                size,
            });
        }
    }

    fn store_kv(
        &self,
        k: &WgpuAct,
        v: &WgpuAct,
        first: usize,
        n: usize,
        pos: usize,
        kc: &mut WgpuKv,
        vc: &mut WgpuKv,
    ) {
        debug_assert_eq!(kc.base, vc.base, "a sequence's caches share their base");
        self.defer(Op::StoreKv {
            k: k.buf.clone(),
            v: v.buf.clone(),
            first,
            n,
            pos: kc.base + pos,
            kv_dim: kc.kv_dim,
            kc: kc.buf.clone(),
            vc: vc.buf.clone(),
            dtype: kc.dtype,
        });
    }

    fn attention(
        &self,
        q: &WgpuAct,
        kc: &WgpuKv,
        vc: &WgpuKv,
        first: usize,
        n: usize,
        pos: usize,
        s: AttnShape,
        out: &mut WgpuAct,
    ) {
        self.flush_ops();
        let (mut rows, mut parts) = (vec![], 0);
        kv_rows_of(&mut rows, &mut parts, first, n, pos, kc.base);
        if let Some(table) = self.kv_rows_table(&rows) {
            self.attend_rows(q, kc, vc, &table, &rows, parts, s, out);
        }
    }

    /// The sequences whose caches share buffers (`alloc_kv_slots`) as one store and one
    /// attention dispatch; a sequence alone as `store_kv` and `attention`, which a decode
    /// step fuses. Both read a table of rows (kv_rows.wgsl) whose entries are what each
    /// sequence's own would be, so each gets the bits it gets alone.
    fn attend(
        &self,
        k: &WgpuAct,
        v: &WgpuAct,
        q: &WgpuAct,
        seqs: &mut [SeqKv<'_, Self>],
        shape: AttnShape,
        out: &mut WgpuAct,
    ) {
        let mut done = vec![false; seqs.len()];
        for i in 0..seqs.len() {
            if done[i] {
                continue;
            }
            let shares =
                |j: usize| seqs[j].k.buf == seqs[i].k.buf && seqs[j].v.buf == seqs[i].v.buf;
            let group: Vec<usize> = (i..seqs.len()).filter(|&j| !done[j] && shares(j)).collect();
            for &j in &group {
                done[j] = true;
            }
            if let [only] = group[..] {
                let s = &mut seqs[only];
                self.store_kv(k, v, s.first, s.n, s.pos, s.k, s.v);
                self.attention(q, s.k, s.v, s.first, s.n, s.pos, shape, out);
                continue;
            }
            self.flush_ops();
            let (mut rows, mut parts) = (vec![], 0);
            for &j in &group {
                let s = &seqs[j];
                debug_assert_eq!(s.k.base, s.v.base, "a sequence's caches share their base");
                kv_rows_of(&mut rows, &mut parts, s.first, s.n, s.pos, s.k.base);
            }
            let Some(table) = self.kv_rows_table(&rows) else {
                return; // the error is reported at the next readback
            };
            let (kc, vc) = (&*seqs[i].k, &*seqs[i].v);
            self.store_rows(
                &k.buf,
                &v.buf,
                (&kc.buf, &vc.buf, kc.dtype, kc.kv_dim),
                &table,
                rows.len(),
            );
            self.attend_rows(q, kc, vc, &table, &rows, parts, shape, out);
        }
    }

    fn silu_mul(&self, gate: &mut WgpuAct, up: &WgpuAct, len: usize) {
        self.defer(Op::SiluMul {
            gate: gate.buf.clone(),
            up: up.buf.clone(),
            len,
        });
    }

    fn add(&self, x: &mut WgpuAct, y: &WgpuAct, len: usize) {
        self.defer(Op::Add {
            x: x.buf.clone(),
            y: y.buf.clone(),
            len,
        });
    }

    async fn argmax(&self, x: &WgpuAct, row: usize) -> Result<u32> {
        self.record_argmax(x, row);
        self.readback(&self.argmax_out, 0, 4)
            .await
            .map(|b| first_u32(&b))
    }

    /// The id stays in `argmax_out`, which the embedding reads as its ids; the read-back's
    /// copy is submitted before the embedding and the forward the caller records next, and
    /// the future submits those before it waits for the copy alone.
    fn argmax_ahead<'a>(
        &'a self,
        logits: &WgpuAct,
        row: usize,
        table: &WgpuMatrix,
        out: &mut WgpuAct,
    ) -> Option<Pin<Box<dyn Future<Output = Result<u32>> + 'a>>> {
        if !self.ahead {
            return None;
        }
        self.record_argmax(logits, row);
        let read = self.read_ahead(&self.argmax_out, 0, 4);
        let ids = WgpuAct {
            buf: self.argmax_out.clone(),
            cols: 1,
            _release: None,
        };
        self.embed_ids(table, &ids, 1, out);
        Some(Box::pin(async move { read.await.map(|b| first_u32(&b)) }))
    }

    async fn read(&self, x: &WgpuAct, rows: usize) -> Result<Vec<f32>> {
        let size = (rows * x.cols * 4) as u64;
        let bytes = self.readback(&x.buf, 0, size.next_multiple_of(4)).await?;
        Ok(bytemuck::cast_slice::<u8, f32>(&bytes[..rows * x.cols * 4]).to_vec())
    }

    /// Where the device stamps time (TIMESTAMP_QUERY; not in the browser, which cannot wait
    /// for the stamps).
    fn set_profiling(&self, on: bool) -> bool {
        if !self.gpu.timestamps {
            return false;
        }
        self.flush_ops();
        // what was recorded before runs as it would have, untimed
        self.submit(&mut self.rec.lock().unwrap(), None);
        let mut timer = self.timer.lock().unwrap_or_else(|p| p.into_inner());
        match (on, timer.is_some()) {
            (true, false) => *timer = Some(Timer::new(&self.gpu.device, &self.gpu.queue)),
            (false, true) => *timer = None,
            _ => {}
        }
        true
    }

    fn take_profile(&self) -> Profile {
        self.flush_ops();
        self.submit(&mut self.rec.lock().unwrap(), None);
        let mut timer = self.timer.lock().unwrap_or_else(|p| p.into_inner());
        timer.as_mut().map(Timer::take).unwrap_or_default()
    }
}

/// The id a 4-byte read-back holds.
fn first_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
