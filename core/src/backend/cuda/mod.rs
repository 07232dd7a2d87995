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
//! aligned, as `shaders/weights_*.wgsl` document), so no second host copy of a tensor
//! exists. GPTQ act-order matrices keep their column permutation on the device and gather
//! `x[perm]` before the product.

use super::{AttnShape, Backend};
use crate::weights::{RopeStyle, WeightData, WeightFormat};
use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError, result, sys};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Weight formats with kernels, and their names in `kernels.cu` (`mv_<name>`, ...).
const FORMATS: [(WeightFormat, &str); 9] = [
    (WeightFormat::F32, "f32"),
    (WeightFormat::F16, "f16"),
    (WeightFormat::BF16, "bf16"),
    (WeightFormat::Q8_0, "q8_0"),
    (WeightFormat::Q4_0, "q4_0"),
    (WeightFormat::Q4_1, "q4_1"),
    (WeightFormat::Gptq4, "gptq4"),
    (WeightFormat::Q4K, "q4_k"),
    (WeightFormat::Q6K, "q6_k"),
];

fn format_index(f: WeightFormat) -> Option<usize> {
    FORMATS.iter().position(|(g, _)| *g == f)
}

/// Ops recorded before a flush is forced (bounds the memory a long recording holds).
const MAX_OPS: usize = 8192;
/// Upload-arena bytes before a flush is forced.
const MAX_ARENA: usize = 64 << 20;
/// Host bytes per copy when uploading weights.
const UPLOAD_CHUNK: usize = 16 << 20;
/// CUDA graphs kept for replay (decode, and a repeated prefill length or two).
const MAX_GRAPHS: usize = 4;
/// Flushes remembered when looking for a launch list seen before.
const RECENT: usize = 3;

/// Bytes per row of a matrix in GPU layout: payload (16-byte aligned) and scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub wrow: usize,
    pub srow: usize,
}

/// The GPU layout of a `[_, cols]` matrix in `format` (see the header of `kernels.cu`).
pub fn layout(format: WeightFormat, cols: usize) -> Option<Layout> {
    let nb = cols / 32;
    let (wrow, srow) = match format {
        WeightFormat::F32 => ((cols * 4).next_multiple_of(16), 0),
        WeightFormat::F16 | WeightFormat::BF16 => ((cols * 2).next_multiple_of(16), 0),
        WeightFormat::Q8_0 => (nb * 32, nb * 2),
        WeightFormat::Q4_0 => (nb * 16, nb * 2),
        WeightFormat::Q4_1 | WeightFormat::Gptq4 => (nb * 16, nb * 4),
        WeightFormat::Q4K => (cols / 256 * 144, 0),
        WeightFormat::Q6K => (cols / 256 * 208, cols / 256 * 2),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(Layout { wrow, srow })
}

/// Write rows `r0..r1` of `w` in GPU layout: payload rows into `payload`, scales into `scales`.
pub fn repack_rows(w: &WeightData, lay: Layout, r0: usize, r1: usize, payload: &mut [u8], scales: &mut [u8]) {
    let f = w.format;
    let src_row = f.row_bytes(w.cols, "").expect("validated at load");
    let bb = f.block_bytes();
    for (i, r) in (r0..r1).enumerate() {
        let src = &w.bytes[r * src_row..(r + 1) * src_row];
        let dst = &mut payload[i * lay.wrow..(i + 1) * lay.wrow];
        let sc = &mut scales[i * lay.srow..(i + 1) * lay.srow];
        match f {
            // (d, qs) / (d, m, qs) / (d, z, qs) → quants to the payload, the head to the scales
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Gptq4 => {
                let head = if f == WeightFormat::Q4_1 || f == WeightFormat::Gptq4 { 4 } else { 2 };
                let body = bb - head;
                for (b, blk) in src.chunks_exact(bb).enumerate() {
                    sc[b * head..(b + 1) * head].copy_from_slice(&blk[..head]);
                    dst[b * body..(b + 1) * body].copy_from_slice(&blk[head..]);
                }
            }
            // (ql, qh, scales, d) → the first 208 bytes to the payload, d to the scales
            WeightFormat::Q6K => {
                for (b, blk) in src.chunks_exact(bb).enumerate() {
                    dst[b * 208..(b + 1) * 208].copy_from_slice(&blk[..208]);
                    sc[b * 2..(b + 1) * 2].copy_from_slice(&blk[208..]);
                }
            }
            // float rows (zero-padded to 16 bytes) and Q4_K as stored
            _ => {
                dst[..src.len()].copy_from_slice(src);
                dst[src.len()..].fill(0);
            }
        }
    }
}

/// The NVRTC options for `arch` (`compute_80`, ...).
fn compile_options(arch: &str) -> CompileOptions {
    CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("yangtuo_kernels.cu".into()),
        ..Default::default()
    }
}

/// Load NVRTC (and its builtins library, which it opens by name) from `YANGTUO_NVRTC_DIR`,
/// so cudarc's later look-up by name finds the already loaded library.
fn preload_nvrtc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::env::var("YANGTUO_NVRTC_DIR") else { return };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            log::warn!("YANGTUO_NVRTC_DIR={dir} cannot be read");
            return;
        };
        let mut names: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                (n.starts_with("libnvrtc.so") || n.starts_with("libnvrtc-builtins.so")) && !n.contains(".alt.")
            })
            .collect();
        // builtins first: NVRTC opens them by soname at its first compile
        names.sort_by_key(|p| !p.to_string_lossy().contains("builtins"));
        for p in names {
            // SAFETY: loading NVRTC runs only its initializers; the handle is kept for the
            // life of the process (cudarc holds NVRTC as long).
            let lib = unsafe {
                libloading::os::unix::Library::open(Some(&p), libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL)
            };
            match lib {
                Ok(lib) => std::mem::forget(lib),
                Err(e) => log::warn!("loading {}: {e}", p.display()),
            }
        }
    });
}

/// Whether NVRTC can be loaded (after `YANGTUO_NVRTC_DIR`).
pub fn nvrtc_available() -> bool {
    preload_nvrtc();
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, e.g. (13, 0).
pub fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compile `kernels.cu` to PTX for `arch` (`compute_80`, `compute_90`, ...). Needs NVRTC,
/// not a GPU.
pub fn compile(arch: &str) -> std::result::Result<Ptx, String> {
    if !nvrtc_available() {
        return Err("NVRTC (libnvrtc.so) was not found: set YANGTUO_NVRTC_DIR or LD_LIBRARY_PATH to a folder \
                    holding it (the CUDA toolkit's lib64, or pip's nvidia/cu13/lib from `pip install \
                    nvidia-cuda-nvrtc`)"
            .into());
    }
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, compile_options(arch)).map_err(|e| match e {
        CompileError::CompileError { log, .. } => format!("kernels.cu does not compile for {arch}:\n{}", log.to_string_lossy()),
        other => format!("NVRTC: {other:?}"),
    })
}

/// Where the PTX of `arch` is cached: `$XDG_CACHE_HOME/yangtuo` (else `~/.cache/yangtuo`),
/// named by a hash of the source and the compile options, so an edited kernel never loads
/// stale code. A PTX file compiled elsewhere can be placed there ahead of time
/// (scripts/device-prepare.sh does), and then no NVRTC is needed at all.
pub fn cache_file(base: Option<&std::path::Path>, arch: &str) -> Option<std::path::PathBuf> {
    // FNV-1a, stable across builds (unlike std's hasher)
    let mut h: u64 = 0xcbf29ce484222325;
    for b in SOURCE.bytes().chain(compile_options(arch).options.join(" ").into_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let base = match base {
        Some(b) => b.to_path_buf(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?,
    };
    Some(base.join("yangtuo").join(format!("kernels-{arch}-{h:016x}.ptx")))
}

/// Write `ptx` to `file` (atomically; failures only cost a recompile next time).
pub fn write_cache(file: &std::path::Path, ptx: &Ptx) {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let ok = file.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok())
        && std::fs::write(&tmp, ptx.to_src()).is_ok()
        && std::fs::rename(&tmp, file).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The kernels' PTX for `arch`: from the cache when there (true), else compiled by NVRTC
/// and cached (false).
fn compile_cached(arch: &str) -> Result<(Ptx, bool)> {
    let file = cache_file(None, arch);
    if let Some(src) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        return Ok((Ptx::from_src(src), true));
    }
    let t = std::time::Instant::now();
    let ptx = compile(arch).map_err(Error::Device)?;
    log::info!("cuda: compiled the kernels for {arch} in {:.1} s", t.elapsed().as_secs_f64());
    if let Some(file) = file {
        write_cache(&file, &ptx);
    }
    Ok((ptx, false))
}

fn driver_error(what: &str, e: DriverError) -> Error {
    Error::Device(format!("cuda: {what}: {e}"))
}

/// A kernel handle (valid while the module lives, which the backend holds).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Func(sys::CUfunction);
// SAFETY: a CUfunction is an immutable handle; the driver API is thread-safe.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

struct Kernels {
    _module: Arc<CudaModule>,
    mv: [Func; 9],
    glu: [Func; 9],
    mmtc: [Func; 9],
    mm: [Func; 9],
    embed: [Func; 9],
    rms_norm: Func,
    add_rms_norm: Func,
    rope: Func,
    store_kv: Func,
    rope_store: Func,
    attention: Func,
    silu_mul: Func,
    add: Func,
    gather: Func,
    argmax: Func,
    quantize_q8: Func,
}

impl Kernels {
    fn load(module: Arc<CudaModule>) -> Result<Kernels> {
        let f = |name: &str| -> Result<Func> {
            let func = module.load_function(name).map_err(|e| driver_error(&format!("kernel {name}"), e))?;
            Ok(Func(func.cu_function()))
        };
        let per = |prefix: &str| -> Result<[Func; 9]> {
            let v = FORMATS.iter().map(|(_, n)| f(&format!("{prefix}_{n}"))).collect::<Result<Vec<_>>>()?;
            Ok(v.try_into().unwrap_or_else(|_| unreachable!()))
        };
        Ok(Kernels {
            mv: per("mv")?,
            glu: per("glu")?,
            mmtc: per("mmtc")?,
            mm: per("mm")?,
            embed: per("embed")?,
            rms_norm: f("rms_norm")?,
            add_rms_norm: f("add_rms_norm")?,
            rope: f("rope")?,
            store_kv: f("store_kv")?,
            rope_store: f("rope_store")?,
            attention: f("attention")?,
            silu_mul: f("silu_mul")?,
            add: f("add")?,
            gather: f("gather")?,
            argmax: f("argmax")?,
            quantize_q8: f("quantize_q8")?,
            _module: module,
        })
    }
}

/// A device allocation and its address.
pub struct Buf {
    /// `None` only for the stand-ins of the unit tests.
    _mem: Option<CudaSlice<u8>>,
    ptr: u64,
    bytes: usize,
}

type BufRef = Arc<Buf>;

pub struct CudaAct {
    buf: BufRef,
    rows: usize,
    cols: usize,
}

pub struct CudaKv {
    buf: BufRef,
    max_seq: usize,
    kv_dim: usize,
}

pub struct MatrixInner {
    format: WeightFormat,
    fi: usize,
    rows: usize,
    cols: usize,
    lay: Layout,
    payload: BufRef,
    scales: Option<BufRef>,
    perm: Option<BufRef>,
}

impl MatrixInner {
    fn s_ptr(&self) -> u64 {
        self.scales.as_ref().unwrap_or(&self.payload).ptr
    }
}

#[derive(Clone)]
pub struct CudaMatrix(Arc<MatrixInner>);

/// One recorded op. Arena offsets point into the batch's upload arena.
enum Op {
    Write { dst: BufRef, arena: usize, bytes: usize },
    Embed { m: CudaMatrix, ids: usize, n: usize, out: BufRef, out_cols: usize },
    /// RMSNorm, with the residual add `x += add` first when fused.
    Norm { x: BufRef, cols: usize, first: usize, n: usize, w: BufRef, eps: f32, out: BufRef, add: Option<BufRef> },
    Matmul { x: BufRef, x_cols: usize, n: usize, m: CudaMatrix, out: BufRef, out_cols: usize },
    /// One-token products of up to three matrices of one format and width sharing x.
    Matvec { x: BufRef, mats: Vec<(CudaMatrix, BufRef)> },
    /// gate = silu(W_gate · x) · (W_up · x), up = W_up · x, for one token.
    Glu { x: BufRef, gate: (CudaMatrix, BufRef), up: (CudaMatrix, BufRef) },
    Rope { x: BufRef, x_cols: usize, n: usize, heads: usize, hd: usize, table: BufRef, style: RopeStyle },
    StoreKv { k: BufRef, v: BufRef, n: usize, pos: usize, kv_dim: usize, kc: BufRef, vc: BufRef },
    /// RoPE of q and k, then the store of k and v.
    RopeStore { q: BufRef, q_cols: usize, q_heads: usize, kv: [BufRef; 4], kv_heads: usize, table: BufRef, n: usize, hd: usize, style: RopeStyle, pos: usize },
    Attention { q: BufRef, q_cols: usize, kc: BufRef, vc: BufRef, max_seq: usize, kv_dim: usize, n: usize, pos: usize, shape: AttnShape, out: BufRef, out_cols: usize },
    SiluMul { gate: BufRef, up: BufRef, len: usize },
    Add { x: BufRef, y: BufRef, len: usize },
    Argmax { x: BufRef, cols: usize, row: usize },
}

/// A lowered op: a kernel launch (arguments as 8-byte slots; 4-byte parameters read the
/// low half) or a device-to-device copy.
enum Launch {
    Kernel { f: Func, grid: [u32; 3], block: u32, args: Vec<u64> },
    Copy { dst: u64, src: u64, bytes: usize },
}

/// A captured launch list and its key (the launch list itself).
struct Graph {
    key: Vec<u64>,
    exec: CudaGraph,
}
// SAFETY: graphs are only touched under the recorder's mutex.
unsafe impl Send for Graph {}

struct Recorder {
    ops: Vec<Op>,
    arena: Vec<u8>,
    /// (position, arena offset) of the last position uploaded in this batch.
    pos_slot: Option<(usize, usize)>,
    arena_dev: Option<BufRef>,
    /// Scratch for x[perm] ahead of a column-permuted product.
    gather: Option<BufRef>,
    /// The Q8 activations of one-token products (kernels.cu): two slots (glu reads one and
    /// writes the other), sized for the widest product of a flush before it is lowered, so
    /// the addresses hold for the whole launch list (and a captured graph).
    q8: Option<BufRef>,
    /// glu's per-32-row arrival counters when it writes Q8 activations (zero between runs).
    glu_counters: Option<BufRef>,
    /// Scratch buffers replaced by larger ones, kept until the stream has been synchronized
    /// (launches recorded before the replacement may still read them).
    retired: Vec<BufRef>,
    /// Attention partials (split decode) and the per-head arrival counters.
    part: Option<BufRef>,
    counters: Option<BufRef>,
    graphs: Vec<Graph>,
    /// The launch lists of the last few flushes (a decode step alternates with readbacks).
    recent: std::collections::VecDeque<Vec<u64>>,
    graphs_on: bool,
    /// Ops launched since the last synchronize (their buffers stay alive until then).
    inflight: Vec<Op>,
    error: Option<Error>,
}

pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    sms: usize,
    mma: bool,
    desc: String,
    argmax_out: BufRef,
    rec: Mutex<Recorder>,
}

/// Allocate `bytes` on the device (zeroed in stream order when `zero`), turning an
/// allocation failure into a typed error that names it.
fn alloc_buf(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, what: &str, bytes: usize, zero: bool) -> Result<BufRef> {
    let n = bytes.max(16).next_multiple_of(16);
    // SAFETY: the memory is written (zeroed or uploaded) before any kernel reads it.
    let mem = unsafe { stream.alloc::<u8>(n) }.map_err(|e| {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let (free, total) = ctx.mem_get_info().unwrap_or((0, 0));
            Error::OutOfMemory { what: what.into(), bytes: n as u64, msg: format!("{} MiB free of {} MiB", free >> 20, total >> 20) }
        } else {
            driver_error(&format!("allocating {what} ({n} bytes)"), e)
        }
    })?;
    let ptr = mem.device_ptr(stream).0;
    if zero {
        // SAFETY: `ptr` is this allocation, n bytes long.
        unsafe { result::memset_d8_async(ptr, 0, n, stream.cu_stream()) }.map_err(|e| driver_error(&format!("zeroing {what}"), e))?;
    }
    Ok(Arc::new(Buf { _mem: Some(mem), ptr, bytes: n }))
}

fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(v.as_str(), "0" | "false" | "no" | "off"),
        Err(_) => default,
    }
}

fn arg_f(v: f32) -> u64 {
    v.to_bits() as u64
}

fn grid1(threads: usize, block: usize) -> [u32; 3] {
    [threads.div_ceil(block).max(1) as u32, 1, 1]
}

impl Cuda {
    /// Open GPU `YANGTUO_CUDA_DEVICE` (default 0) and compile the kernels for it.
    pub fn new() -> Result<Cuda> {
        let ordinal = std::env::var("YANGTUO_CUDA_DEVICE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        Self::open(ordinal)
    }

    pub fn open(ordinal: usize) -> Result<Cuda> {
        // SAFETY: only tries to dlopen the driver by its candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Device("no CUDA driver (libcuda.so) on this machine".into()));
        }
        let count = CudaContext::device_count().map_err(|e| driver_error("counting devices", e))?;
        if count <= ordinal as i32 {
            return Err(Error::Device(format!("no CUDA device {ordinal} ({count} found)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_error("opening the device", e))?;
        // One stream, ordered by hand: no per-buffer events.
        // SAFETY: called before any allocation; every op runs on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_error("creating a stream", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver_error("compute capability", e))?;
        let sms = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).unwrap_or(1).max(1) as usize;
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
                ctx.load_module(ptx).map_err(|e| driver_error(&format!("loading the kernels ({arch})"), e))?
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
            if cached { "cached PTX".into() } else { nvrtc_version().map(|(a, b)| format!("nvrtc {a}.{b}")).unwrap_or_default() },
            if mma { "tensor-core prefill" } else { "f32 prefill" },
            if graphs_on { ", graphs" } else { "" },
        );
        log::info!("{desc}");
        let argmax_out = alloc_buf(&ctx, &stream, "argmax result", 16, true)?;
        Ok(Cuda {
            ctx,
            stream,
            k,
            sms,
            mma,
            desc,
            argmax_out,
            rec: Mutex::new(Recorder {
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
            }),
        })
    }

    fn buf(&self, what: &str, bytes: usize, zero: bool) -> Result<BufRef> {
        alloc_buf(&self.ctx, &self.stream, what, bytes, zero)
    }

    /// Copy host bytes to `dst + offset`. Pageable memory is staged by the driver before
    /// this returns, so `src` may be reused at once.
    fn upload(&self, dst: u64, src: &[u8], what: &str) -> Result<()> {
        // SAFETY: callers pass a range inside one allocation.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(|e| driver_error(&format!("uploading {what}"), e))
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

    /// Append host data to the batch's upload arena (16-byte aligned); returns its offset.
    fn stage(rec: &mut Recorder, bytes: &[u8]) -> usize {
        let off = rec.arena.len().next_multiple_of(16);
        rec.arena.resize(off, 0);
        rec.arena.extend_from_slice(bytes);
        off
    }

    /// The arena offset of `pos` as a u32, shared by the ops of one forward chunk.
    fn pos_slot(rec: &mut Recorder, pos: usize) -> usize {
        match rec.pos_slot {
            Some((p, off)) if p == pos => off,
            _ => {
                let off = Self::stage(rec, &(pos as u32).to_le_bytes());
                rec.pos_slot = Some((pos, off));
                off
            }
        }
    }

    /// A scratch buffer of at least `bytes`, grown (and replaced) when too small; a replaced
    /// buffer goes to `retired`, as work already recorded may still use it.
    fn scratch(&self, slot: &mut Option<BufRef>, retired: &mut Vec<BufRef>, what: &str, bytes: usize, zero: bool) -> Result<u64> {
        if slot.as_ref().is_none_or(|b| b.bytes < bytes) {
            let new = self.buf(what, bytes.next_power_of_two(), zero)?;
            retired.extend(slot.replace(new));
        }
        Ok(slot.as_ref().map(|b| b.ptr).unwrap_or(0))
    }

    /// Launch everything recorded. With graphs on, a launch list equal to one of the last
    /// few flushes' is captured and replayed from then on.
    fn flush(&self, rec: &mut Recorder) -> Result<()> {
        if let Some(e) = rec.error.take() {
            rec.ops.clear();
            rec.arena.clear();
            rec.pos_slot = None;
            return Err(e);
        }
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the context", e))?;
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
            let ptr = self.scratch(&mut slot, &mut rec.retired, "upload arena", arena.len().max(64 << 10), false);
            rec.arena_dev = slot;
            let ptr = ptr?;
            self.upload(ptr, &arena, "the upload arena")?;
            ptr
        };
        let q8_slot = ops.iter().filter_map(q8_product).map(|(_, m)| q8_bytes(m.cols).next_multiple_of(256)).max().unwrap_or(0);
        let q8 = if q8_slot > 0 {
            let mut slot = rec.q8.take();
            let ptr = self.scratch(&mut slot, &mut rec.retired, "Q8 activations", 2 * q8_slot, false);
            rec.q8 = slot;
            ptr?
        } else {
            0
        };
        let mut cx = LowerCx { arena: arena_ptr, q8: [q8, q8 + q8_slot as u64], q8_of: None };
        let mut launches = Vec::with_capacity(ops.len() + 8);
        for (i, op) in ops.iter().enumerate() {
            self.lower(op, ops.get(i + 1), rec, &mut cx, &mut launches)?;
        }
        let key = encode(&launches);
        let result = self.run_list(rec, &launches, &key);
        if !rec.recent.contains(&key) {
            if rec.recent.len() >= RECENT {
                rec.recent.pop_front();
            }
            rec.recent.push_back(key);
        }
        rec.inflight.extend(ops);
        rec.arena = arena;
        rec.arena.clear();
        result
    }

    fn run_list(&self, rec: &mut Recorder, launches: &[Launch], key: &[u64]) -> Result<()> {
        if rec.graphs_on {
            if let Some(g) = rec.graphs.iter().find(|g| g.key == key) {
                return g.exec.launch().map_err(|e| driver_error("launching a graph", e));
            }
            if rec.recent.iter().any(|k| k.as_slice() == key) {
                match self.capture(launches) {
                    Ok(exec) => {
                        exec.launch().map_err(|e| driver_error("launching a graph", e))?;
                        if rec.graphs.len() >= MAX_GRAPHS {
                            rec.graphs.remove(0);
                        }
                        rec.graphs.push(Graph { key: key.to_vec(), exec });
                        return Ok(());
                    }
                    Err(e) => {
                        log::warn!("cuda: graph capture failed ({e}); launching kernels one by one from now on");
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
        graph.map_err(|e| driver_error("ending a capture", e))?.ok_or_else(|| Error::Device("cuda: empty graph".into()))
    }

    fn launch(&self, l: &Launch) -> Result<()> {
        match l {
            Launch::Kernel { f, grid, block, args } => {
                let mut ptrs: Vec<*mut c_void> = args.iter().map(|a| a as *const u64 as *mut c_void).collect();
                // SAFETY: `args` match the kernel's parameters (written next to each kernel's
                // lowering below) and point at live allocations held by the recorded ops.
                unsafe {
                    result::launch_kernel(f.0, (grid[0], grid[1], grid[2]), (*block, 1, 1), 0, self.stream.cu_stream(), &mut ptrs)
                }
                .map_err(|e| driver_error("launching a kernel", e))
            }
            Launch::Copy { dst, src, bytes } => {
                // SAFETY: both ranges lie inside live allocations (checked when recorded).
                unsafe { result::memcpy_dtod_async(*dst, *src, *bytes, self.stream.cu_stream()) }.map_err(|e| driver_error("copying", e))
            }
        }
    }

    /// Wait for the stream; surfaces any asynchronous error.
    fn sync(&self, rec: &mut Recorder) -> Result<()> {
        let r = self.stream.synchronize().map_err(|e| driver_error("running the recorded work", e));
        rec.inflight.clear();
        rec.retired.clear();
        r
    }

    /// Append the launches of one op (`next` is the op after it). The argument lists mirror
    /// the kernel signatures in kernels.cu, in order.
    fn lower(&self, op: &Op, next: Option<&Op>, rec: &mut Recorder, cx: &mut LowerCx, out: &mut Vec<Launch>) -> Result<()> {
        let k = &self.k;
        let arena = cx.arena;
        // (x, where) of Q8 activations the op before wrote for this op
        let q8_ready = cx.q8_of.take();
        let kern = |f: Func, grid: [u32; 3], block: u32, args: Vec<u64>| Launch::Kernel { f, grid, block, args };
        match op {
            Op::Write { bytes: 0, .. } => {}
            Op::Write { dst, arena: off, bytes } => {
                out.push(Launch::Copy { dst: dst.ptr, src: arena + *off as u64, bytes: *bytes });
            }
            Op::Embed { m, ids, n, out: o, out_cols } => {
                let m = &m.0;
                let perm = m.perm.as_ref().map_or(0, |p| p.ptr);
                // embed_F(w, s, perm, ids, out, cols, wrow, srow, out_stride)
                let grid = [m.cols.div_ceil(16).div_ceil(128) as u32, *n as u32, 1];
                let args = vec![m.payload.ptr, m.s_ptr(), perm, arena + *ids as u64, o.ptr, m.cols as u64, m.lay.wrow as u64, m.lay.srow as u64, *out_cols as u64];
                out.push(kern(k.embed[m.fi], grid, 128, args));
            }
            Op::Norm { x, cols, first, n, w, eps, out: o, add } => {
                // a one-row norm read next by a quantized one-token product also writes the
                // product's Q8 activations (saves a quantize_q8 launch)
                let q8 = if *n == 1 { cx.feed_next(next, o.ptr, *cols, 0) } else { 0 };
                match add {
                    // add_rms_norm(x, y, w, out, cols, eps, q8)
                    Some(y) => out.push(kern(k.add_rms_norm, [*n as u32, 1, 1], 256, vec![x.ptr, y.ptr, w.ptr, o.ptr, *cols as u64, arg_f(*eps), q8])),
                    // rms_norm(x, w, out, cols, first, eps, q8)
                    None => out.push(kern(k.rms_norm, [*n as u32, 1, 1], 256, vec![x.ptr, w.ptr, o.ptr, *cols as u64, *first as u64, arg_f(*eps), q8])),
                }
            }
            Op::Matmul { x, x_cols, n, m, out: o, out_cols } => {
                let mi = &m.0;
                if *n == 1 && q8_format(mi.format) {
                    // quantize_q8 gathers x[perm] itself
                    let xq = self.q8_input(x.ptr, mi.perm.as_ref().map_or(0, |p| p.ptr), mi.cols, q8_ready, cx, out);
                    out.push(self.matvec_launch(xq, &[(m, o.ptr)]));
                    return Ok(());
                }
                let (xp, xs) = match &mi.perm {
                    None => (x.ptr, *x_cols),
                    Some(perm) => {
                        let mut slot = rec.gather.take();
                        let p = self.scratch(&mut slot, &mut rec.retired, "gather scratch", n * mi.cols * 4, false);
                        rec.gather = slot;
                        let p = p?;
                        // gather(perm, x, out, n, cols, x_stride)
                        let args = vec![perm.ptr, x.ptr, p, *n as u64, mi.cols as u64, *x_cols as u64];
                        out.push(kern(k.gather, grid1(n * mi.cols, 256), 256, args));
                        (p, mi.cols)
                    }
                };
                if *n == 1 {
                    out.push(self.matvec_launch(xp, &[(m, o.ptr)]));
                } else {
                    // mm_F / mmtc_F(w, s, x, out, n, rows, cols, x_stride, out_stride, wrow, srow)
                    let args = vec![mi.payload.ptr, mi.s_ptr(), xp, o.ptr, *n as u64, mi.rows as u64, mi.cols as u64, xs as u64, *out_cols as u64, mi.lay.wrow as u64, mi.lay.srow as u64];
                    let grid = [n.div_ceil(64) as u32, mi.rows.div_ceil(64) as u32, 1];
                    if self.mma && mi.format != WeightFormat::F32 {
                        out.push(kern(k.mmtc[mi.fi], grid, 128, args));
                    } else {
                        out.push(kern(k.mm[mi.fi], grid, 256, args));
                    }
                }
            }
            Op::Matvec { x, mats } => {
                let mats: Vec<(&CudaMatrix, u64)> = mats.iter().map(|(m, o)| (m, o.ptr)).collect();
                let m0 = &mats[0].0.0;
                let xp = if q8_format(m0.format) { self.q8_input(x.ptr, 0, m0.cols, q8_ready, cx, out) } else { x.ptr };
                out.push(self.matvec_launch(xp, &mats));
            }
            Op::Glu { x, gate, up } => {
                let (g, u) = (&gate.0.0, &up.0.0);
                let xp = if q8_format(g.format) { self.q8_input(x.ptr, 0, g.cols, q8_ready, cx, out) } else { x.ptr };
                // gate's Q8 activations for the product after (down), in the slot glu does not read
                let (q8, cnt) = if g.rows % 32 == 0 {
                    let q8 = cx.feed_next(next, gate.1.ptr, g.rows, if xp == cx.q8[0] { 1 } else { 0 });
                    let cnt = if q8 != 0 {
                        let mut slot = rec.glu_counters.take();
                        let c = self.scratch(&mut slot, &mut rec.retired, "glu counters", g.rows / 32 * 4, true);
                        rec.glu_counters = slot;
                        c?
                    } else {
                        0
                    };
                    (q8, cnt)
                } else {
                    (0, 0)
                };
                // glu_F(wg, sg, wu, su, gate, up, rows, x, cols, wrow, srow, q8, cnt): a row (pair) per warp
                let args = vec![g.payload.ptr, g.s_ptr(), u.payload.ptr, u.s_ptr(), gate.1.ptr, up.1.ptr, g.rows as u64, xp, g.cols as u64, g.lay.wrow as u64, g.lay.srow as u64, q8, cnt];
                out.push(kern(k.glu[g.fi], grid1(g.rows, 8), 256, args));
            }
            Op::Rope { x, x_cols, n, heads, hd, table, style } => {
                // rope(x, table, n, n_heads, hd, stride, interleaved)
                let inter = (*style == RopeStyle::Interleaved) as u64;
                let args = vec![x.ptr, table.ptr, *n as u64, *heads as u64, *hd as u64, *x_cols as u64, inter];
                out.push(kern(k.rope, grid1(n * heads * (hd / 2), 256), 256, args));
            }
            Op::StoreKv { k: kk, v, n, pos, kv_dim, kc, vc } => {
                // store_kv(k, v, kc, vc, pos, n, kv_dim)
                let args = vec![kk.ptr, v.ptr, kc.ptr, vc.ptr, arena + *pos as u64, *n as u64, *kv_dim as u64];
                out.push(kern(k.store_kv, grid1(n * kv_dim, 256), 256, args));
            }
            Op::RopeStore { q, q_cols, q_heads, kv, kv_heads, table, n, hd, style, pos } => {
                let [kb, vb, kc, vc] = kv;
                let inter = (*style == RopeStyle::Interleaved) as u64;
                let threads = n * q_heads * (hd / 2) + n * kv_heads * (hd / 2) + n * kv_heads * hd;
                // rope_store(q, q_heads, q_stride, k, v, kv_heads, table, n, hd, interleaved, kc, vc, pos)
                let args = vec![q.ptr, *q_heads as u64, *q_cols as u64, kb.ptr, vb.ptr, *kv_heads as u64, table.ptr, *n as u64, *hd as u64, inter, kc.ptr, vc.ptr, arena + *pos as u64];
                out.push(kern(k.rope_store, grid1(threads, 256), 256, args));
            }
            Op::Attention { q, q_cols, kc, vc, max_seq, kv_dim, n, pos, shape, out: o, out_cols } => {
                let (nh, hd) = (shape.n_heads, shape.head_dim);
                if hd > 256 || shape.n_kv_heads == 0 || nh % shape.n_kv_heads != 0 {
                    return Err(Error::Device(format!("cuda: attention with head_dim {hd} (at most 256) and {nh}/{} heads is not supported", shape.n_kv_heads)));
                }
                // a decode step spreads each head over several blocks; a fixed count per
                // cache size keeps the launch the same at every position
                let splits = if *n == 1 { (2 * self.sms).div_ceil(nh).clamp(1, 32).min((max_seq / 64).max(1)) } else { 1 };
                let (part, counters) = if splits > 1 {
                    let (mut p, mut c) = (rec.part.take(), rec.counters.take());
                    let pp = self.scratch(&mut p, &mut rec.retired, "attention partials", n * nh * splits * (hd + 2) * 4, false);
                    let cc = self.scratch(&mut c, &mut rec.retired, "attention counters", n * nh * 4, true);
                    (rec.part, rec.counters) = (p, c);
                    (pp?, cc?)
                } else {
                    (0, 0)
                };
                let scale = 1.0 / (hd as f32).sqrt();
                // the output's Q8 activations for a quantized product right after (o)
                let q8 = if *n == 1 && hd % 32 == 0 { cx.feed_next(next, o.ptr, nh * hd, 0) } else { 0 };
                // attention(q, kc, vc, out, part, counters, pos, n_heads, n_kv_heads, hd, q_stride, kv_dim, out_stride, scale, splits, q8)
                let args = vec![q.ptr, kc.ptr, vc.ptr, o.ptr, part, counters, arena + *pos as u64, nh as u64, shape.n_kv_heads as u64, hd as u64, *q_cols as u64, *kv_dim as u64, *out_cols as u64, arg_f(scale), splits as u64, q8];
                out.push(kern(k.attention, [nh as u32, *n as u32, splits as u32], 128, args));
            }
            Op::SiluMul { gate, up, len } => {
                out.push(kern(k.silu_mul, grid1(*len, 256), 256, vec![gate.ptr, up.ptr, *len as u64]));
            }
            Op::Add { x, y, len } => {
                out.push(kern(k.add, grid1(*len, 256), 256, vec![x.ptr, y.ptr, *len as u64]));
            }
            Op::Argmax { x, cols, row } => {
                // argmax(x, result, cols, row)
                out.push(kern(k.argmax, [1, 1, 1], 1024, vec![x.ptr, self.argmax_out.ptr, *cols as u64, *row as u64]));
            }
        }
        Ok(())
    }

    /// Where a quantized one-token product finds the Q8 activations of x (x[perm]): where
    /// the op before wrote them (`ready`), else in slot 0 after a quantize_q8(x, perm, q, cols).
    fn q8_input(&self, x: u64, perm: u64, cols: usize, ready: Option<(u64, u64)>, cx: &LowerCx, out: &mut Vec<Launch>) -> u64 {
        match ready {
            Some((rx, at)) if rx == x && perm == 0 => at,
            _ => {
                out.push(Launch::Kernel { f: self.k.quantize_q8, grid: grid1(cols, 256), block: 256, args: vec![x, perm, cx.q8[0], cols as u64] });
                cx.q8[0]
            }
        }
    }

    /// mv_F(w0, s0, o0, rows0, w1, s1, o1, rows1, w2, s2, o2, rows2, x, cols, wrow, srow, ks)
    /// over up to three matrices of one format and width; x is the Q8 activations for the
    /// quantized formats (two rows per `ks` warps), else f32 (one row per warp).
    fn matvec_launch(&self, x: u64, mats: &[(&CudaMatrix, u64)]) -> Launch {
        let m0 = &mats[0].0.0;
        let mut args = Vec::with_capacity(16);
        let mut rows = 0;
        for i in 0..3 {
            match mats.get(i) {
                Some((m, o)) => {
                    args.extend([m.0.payload.ptr, m.0.s_ptr(), *o, m.0.rows as u64]);
                    rows += m.0.rows;
                }
                None => args.extend([m0.payload.ptr, m0.s_ptr(), mats[0].1, 0]),
            }
        }
        let ks = if q8_format(m0.format) { mv_split(rows, m0.cols / q8_unit(m0.format), self.sms) } else { 1 };
        args.extend([x, m0.cols as u64, m0.lay.wrow as u64, m0.lay.srow as u64, ks as u64]);
        let per_block = if q8_format(m0.format) { 16 / ks } else { 8 };
        Launch::Kernel { f: self.k.mv[m0.fi], grid: grid1(rows, per_block), block: 256, args }
    }
}

/// Lowering state shared by the ops of one flush.
struct LowerCx {
    /// The device copy of the upload arena.
    arena: u64,
    /// The two slots of the Q8-activation scratch (0 when no op of the flush needs it).
    q8: [u64; 2],
    /// Set by an op (a norm, attention, glu) that also wrote the Q8 activations of its output
    /// (x, where) for the op after it.
    q8_of: Option<(u64, u64)>,
}

impl LowerCx {
    /// The Q8 slot an op writing `cols` values at `x` should also write as Q8 activations:
    /// `slot` when `next` is a quantized one-token product that reads exactly them (and
    /// records that for it), else 0 (none).
    fn feed_next(&mut self, next: Option<&Op>, x: u64, cols: usize, slot: usize) -> u64 {
        match next.and_then(q8_product) {
            Some((px, m)) if px == x && m.cols == cols && m.perm.is_none() && cols % 32 == 0 => {
                self.q8_of = Some((x, self.q8[slot]));
                self.q8[slot]
            }
            _ => 0,
        }
    }
}

/// Whether one-token products of `f` read Q8 activations (every format but the float ones;
/// see kernels.cu).
fn q8_format(f: WeightFormat) -> bool {
    !matches!(f, WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16)
}

/// Columns per lane unit of a quantized format's one-token product (`QK` in kernels.cu).
fn q8_unit(f: WeightFormat) -> usize {
    match f {
        WeightFormat::Q4K => 64,
        WeightFormat::Q6K => 128,
        _ => 32,
    }
}

/// Warps per row pair (1, 2 or 4) of a quantized one-token product of `rows` rows of `units`
/// units: split a row's units over more warps while the product has fewer than 24 warps
/// per multiprocessor (fewer loads in flight than the memory needs) and each warp keeps at
/// least one unit per lane.
fn mv_split(rows: usize, units: usize, sms: usize) -> usize {
    let mut ks = 1;
    while ks < 4 && rows.div_ceil(2) * ks < 24 * sms && units >= 64 * ks {
        ks *= 2;
    }
    ks
}

/// Bytes of the Q8 activations of `cols` values: an int8 each, and (d, s) per block of 32.
fn q8_bytes(cols: usize) -> usize {
    cols + cols / 32 * 8
}

/// The input address and (first) matrix of an op that lowers to a product on Q8 activations.
fn q8_product(op: &Op) -> Option<(u64, &MatrixInner)> {
    match op {
        Op::Matmul { x, n: 1, m, .. } if q8_format(m.0.format) => Some((x.ptr, &m.0)),
        Op::Matvec { x, mats } if q8_format(mats[0].0.0.format) => Some((x.ptr, &mats[0].0.0)),
        Op::Glu { x, gate, .. } if q8_format(gate.0.0.format) => Some((x.ptr, &gate.0.0)),
        _ => None,
    }
}

/// The launch list as numbers: equal lists launch the same work.
fn encode(launches: &[Launch]) -> Vec<u64> {
    let mut key = Vec::with_capacity(launches.len() * 12);
    for l in launches {
        match l {
            Launch::Kernel { f, grid, block, args } => {
                key.extend([0, f.0 as u64, grid[0] as u64, grid[1] as u64, grid[2] as u64, *block as u64, args.len() as u64]);
                key.extend_from_slice(args);
            }
            Launch::Copy { dst, src, bytes } => key.extend([1, *dst, *src, *bytes as u64]),
        }
    }
    key
}

/// A product that can join a fused one-token launch: one token, no column permutation.
fn fusable(op: &Op) -> Option<(&BufRef, &CudaMatrix, &BufRef)> {
    match op {
        Op::Matmul { x, n: 1, m, out, .. } if m.0.perm.is_none() => Some((x, m, out)),
        _ => None,
    }
}

fn same_kind(a: &CudaMatrix, b: &CudaMatrix) -> bool {
    a.0.format == b.0.format && a.0.cols == b.0.cols
}

/// Merge neighbouring ops into fused kernels (see the module docs). Each rule rewrites the
/// tail of `out` only when the fused kernel writes exactly what the ops it replaces would.
fn fuse(ops: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        let op = match op {
            // residual add, then the RMSNorm of the same rows
            Op::Norm { x, cols, first: 0, n, w, eps, out: o, add: None } => match out.last() {
                Some(Op::Add { x: ax, len, .. }) if Arc::ptr_eq(ax, &x) && *len == n * cols => {
                    let Some(Op::Add { y, .. }) = out.pop() else { unreachable!() };
                    Op::Norm { x, cols, first: 0, n, w, eps, out: o, add: Some(y) }
                }
                _ => Op::Norm { x, cols, first: 0, n, w, eps, out: o, add: None },
            },
            // one-token products sharing x: q, k, v (and gate, up)
            Op::Matmul { x, x_cols, n: 1, m, out: o, out_cols } if m.0.perm.is_none() => {
                let joins = |mats: &[(CudaMatrix, BufRef)], px: &BufRef| {
                    Arc::ptr_eq(px, &x) && mats.len() < 3 && same_kind(&mats[0].0, &m) && mats.iter().all(|(_, po)| !Arc::ptr_eq(po, &o))
                };
                match out.last_mut() {
                    Some(Op::Matvec { x: px, mats }) if joins(mats, px) => {
                        mats.push((m, o));
                        continue;
                    }
                    Some(prev) if fusable(prev).is_some_and(|(px, pm, po)| Arc::ptr_eq(px, &x) && same_kind(pm, &m) && !Arc::ptr_eq(po, &o)) => {
                        let Some(Op::Matmul { x, m: pm, out: po, .. }) = out.pop() else { unreachable!() };
                        Op::Matvec { x, mats: vec![(pm, po), (m, o)] }
                    }
                    _ => Op::Matmul { x, x_cols, n: 1, m, out: o, out_cols },
                }
            }
            // SwiGLU right after the gate and up products
            Op::SiluMul { gate, up, len } => match out.last() {
                Some(Op::Matvec { mats, .. })
                    if mats.len() == 2
                        && Arc::ptr_eq(&mats[0].1, &gate)
                        && Arc::ptr_eq(&mats[1].1, &up)
                        && mats[0].0.0.rows == len
                        && mats[1].0.0.rows == len =>
                {
                    let Some(Op::Matvec { x, mut mats }) = out.pop() else { unreachable!() };
                    let up_pair = mats.pop().expect("two");
                    let gate_pair = mats.pop().expect("two");
                    Op::Glu { x, gate: gate_pair, up: up_pair }
                }
                _ => Op::SiluMul { gate, up, len },
            },
            // RoPE of q, RoPE of k, then the store of k and v
            Op::StoreKv { k, v, n, pos, kv_dim, kc, vc } => {
                let l = out.len();
                let fits = l >= 2
                    && match (&out[l - 2], &out[l - 1]) {
                        (
                            Op::Rope { x: q, n: nq, hd: hq, table: tq, style: sq, .. },
                            Op::Rope { x: rk, x_cols: kcols, n: nk, heads: kh, hd: hk, table: tk, style: sk },
                        ) => {
                            Arc::ptr_eq(rk, &k)
                                && !Arc::ptr_eq(q, &k)
                                && !Arc::ptr_eq(q, &v)
                                && *nq == n
                                && *nk == n
                                && hq == hk
                                && Arc::ptr_eq(tq, tk)
                                && sq == sk
                                && *kcols == kv_dim
                                && kh * hk == kv_dim
                        }
                        _ => false,
                    };
                if fits {
                    let Some(Op::Rope { heads: kv_heads, .. }) = out.pop() else { unreachable!() };
                    let Some(Op::Rope { x: q, x_cols: q_cols, heads: q_heads, hd, table, style, .. }) = out.pop() else { unreachable!() };
                    Op::RopeStore { q, q_cols, q_heads, kv: [k, v, kc, vc], kv_heads, table, n, hd, style, pos }
                } else {
                    Op::StoreKv { k, v, n, pos, kv_dim, kc, vc }
                }
            }
            other => other,
        };
        out.push(op);
    }
    out
}

impl Backend for Cuda {
    type Act = CudaAct;
    type Matrix = CudaMatrix;
    type Kv = CudaKv;

    fn name(&self) -> String {
        self.desc.clone()
    }

    fn upload_matrix(&self, name: &str, w: &WeightData) -> Result<CudaMatrix> {
        let (fi, lay) = match (format_index(w.format), layout(w.format, w.cols)) {
            (Some(fi), Some(lay)) => (fi, lay),
            _ => return Err(Error::Device(format!("cuda: {name}: {:?} weights are not supported by this backend", w.format))),
        };
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the context", e))?;
        let src_row = w.format.row_bytes(w.cols, name)?;
        let payload = self.buf(name, w.rows * lay.wrow, false)?;
        let scales = if lay.srow > 0 { Some(self.buf(&format!("{name} scales"), w.rows * lay.srow, false)?) } else { None };
        if lay.srow == 0 && lay.wrow == src_row {
            // stored as the kernels read it: straight from the (mapped) source
            for start in (0..w.bytes.len()).step_by(UPLOAD_CHUNK * 4) {
                let end = (start + UPLOAD_CHUNK * 4).min(w.bytes.len());
                self.upload(payload.ptr + start as u64, &w.bytes[start..end], name)?;
            }
        } else {
            let per = (UPLOAD_CHUNK / lay.wrow.max(1)).max(1);
            let mut p = vec![0u8; per * lay.wrow];
            let mut s = vec![0u8; per * lay.srow];
            for r0 in (0..w.rows).step_by(per) {
                let r1 = (r0 + per).min(w.rows);
                let (p, s) = (&mut p[..(r1 - r0) * lay.wrow], &mut s[..(r1 - r0) * lay.srow]);
                repack_rows(w, lay, r0, r1, p, s);
                self.upload(payload.ptr + (r0 * lay.wrow) as u64, p, name)?;
                if let Some(sb) = &scales {
                    self.upload(sb.ptr + (r0 * lay.srow) as u64, s, name)?;
                }
            }
        }
        let perm = match &w.perm {
            Some(perm) => {
                let b = self.buf(&format!("{name} perm"), perm.len() * 4, false)?;
                self.upload(b.ptr, bytemuck::cast_slice(perm.as_slice()), name)?;
                Some(b)
            }
            None => None,
        };
        Ok(CudaMatrix(Arc::new(MatrixInner { format: w.format, fi, rows: w.rows, cols: w.cols, lay, payload, scales, perm })))
    }

    fn alloc(&self, name: &str, rows: usize, cols: usize) -> Result<CudaAct> {
        Ok(CudaAct { buf: self.buf(name, rows * cols * 4, true)?, rows, cols })
    }

    fn alloc_kv(&self, name: &str, max_seq: usize, kv_dim: usize) -> Result<CudaKv> {
        Ok(CudaKv { buf: self.buf(name, max_seq * kv_dim * 4, true)?, max_seq, kv_dim })
    }

    fn write(&self, dst: &mut CudaAct, data: &[f32]) {
        assert!(data.len() <= dst.rows * dst.cols, "write of {} values into a buffer of {}", data.len(), dst.rows * dst.cols);
        let bytes = bytemuck::cast_slice::<f32, u8>(data);
        self.record_with(|rec| Op::Write { dst: dst.buf.clone(), arena: Self::stage(rec, bytes), bytes: bytes.len() });
    }

    fn embed(&self, table: &CudaMatrix, ids: &[u32], out: &mut CudaAct) {
        self.record_with(|rec| Op::Embed {
            m: table.clone(),
            ids: Self::stage(rec, bytemuck::cast_slice(ids)),
            n: ids.len(),
            out: out.buf.clone(),
            out_cols: out.cols,
        });
    }

    fn rms_norm(&self, x: &CudaAct, first: usize, n: usize, w: &CudaAct, eps: f32, out: &mut CudaAct) {
        self.record(Op::Norm { x: x.buf.clone(), cols: x.cols, first, n, w: w.buf.clone(), eps, out: out.buf.clone(), add: None });
    }

    fn matmul(&self, x: &CudaAct, n: usize, w: &CudaMatrix, out: &mut CudaAct) {
        self.record(Op::Matmul { x: x.buf.clone(), x_cols: x.cols, n, m: w.clone(), out: out.buf.clone(), out_cols: out.cols });
    }

    fn rope(&self, x: &mut CudaAct, n: usize, n_heads: usize, head_dim: usize, table: &CudaAct, style: RopeStyle) {
        self.record(Op::Rope { x: x.buf.clone(), x_cols: x.cols, n, heads: n_heads, hd: head_dim, table: table.buf.clone(), style });
    }

    fn store_kv(&self, k: &CudaAct, v: &CudaAct, n: usize, pos: usize, kc: &mut CudaKv, vc: &mut CudaKv) {
        assert!(pos + n <= kc.max_seq, "KV cache of {} positions cannot store {}..{}", kc.max_seq, pos, pos + n);
        self.record_with(|rec| Op::StoreKv {
            k: k.buf.clone(),
            v: v.buf.clone(),
            n,
            pos: Self::pos_slot(rec, pos),
            kv_dim: kc.kv_dim,
            kc: kc.buf.clone(),
            vc: vc.buf.clone(),
        });
    }

    fn attention(&self, q: &CudaAct, kc: &CudaKv, vc: &CudaKv, n: usize, pos: usize, shape: AttnShape, out: &mut CudaAct) {
        self.record_with(|rec| Op::Attention {
            q: q.buf.clone(),
            q_cols: q.cols,
            kc: kc.buf.clone(),
            vc: vc.buf.clone(),
            max_seq: kc.max_seq,
            kv_dim: kc.kv_dim,
            n,
            pos: Self::pos_slot(rec, pos),
            shape,
            out: out.buf.clone(),
            out_cols: out.cols,
        });
    }

    fn silu_mul(&self, gate: &mut CudaAct, up: &CudaAct, len: usize) {
        self.record(Op::SiluMul { gate: gate.buf.clone(), up: up.buf.clone(), len });
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct, len: usize) {
        self.record(Op::Add { x: x.buf.clone(), y: y.buf.clone(), len });
    }

    async fn argmax(&self, x: &CudaAct, row: usize) -> Result<u32> {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        rec.ops.push(Op::Argmax { x: x.buf.clone(), cols: x.cols, row });
        let flushed = self.flush(&mut rec);
        let mut v = [0u32; 1];
        let copied = flushed.and_then(|_| {
            // SAFETY: argmax_out holds at least 4 bytes.
            unsafe { result::memcpy_dtoh_async(&mut v, self.argmax_out.ptr, self.stream.cu_stream()) }.map_err(|e| driver_error("reading the argmax", e))
        });
        let synced = self.sync(&mut rec);
        copied.and(synced)?;
        Ok(v[0])
    }

    async fn read(&self, x: &CudaAct, rows: usize) -> Result<Vec<f32>> {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        let flushed = self.flush(&mut rec);
        let mut v = vec![0f32; rows.min(x.rows) * x.cols];
        let copied = flushed.and_then(|_| {
            // SAFETY: the buffer holds rows·cols f32 (at least v's length).
            unsafe { result::memcpy_dtoh_async(&mut v[..], x.buf.ptr, self.stream.cu_stream()) }.map_err(|e| driver_error("reading back", e))
        });
        let synced = self.sync(&mut rec);
        copied.and(synced)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, WeightSource};
    use crate::weights::{Blob, TensorId};
    use crate::{Config, RopeScaling};

    /// kernels.cu compiles for Ampere and Hopper. Needs NVRTC (YANGTUO_NVRTC_DIR or
    /// LD_LIBRARY_PATH), not a GPU; skipped with a message where NVRTC is absent.
    #[test]
    fn kernels_compile_with_nvrtc() {
        if !nvrtc_available() {
            eprintln!(
                "skipped: NVRTC not found (pip install 'nvidia-cuda-nvrtc==13.0.*' and set YANGTUO_NVRTC_DIR to its \
                 nvidia/cu13/lib)"
            );
            return;
        }
        for arch in ["compute_80", "compute_90"] {
            let t = std::time::Instant::now();
            let ptx = compile(arch).unwrap_or_else(|e| panic!("{e}"));
            let src = ptx.to_src();
            for (_, f) in FORMATS {
                for k in ["mv", "glu", "mmtc", "mm", "embed"] {
                    assert!(src.contains(&format!(".entry {k}_{f}(")), "{arch}: no kernel {k}_{f}");
                }
            }
            assert!(src.contains("mma.sync.aligned.m16n8k16"), "{arch}: no tensor-core product");
            assert!(src.contains(".entry quantize_q8(") && src.contains("dp4a.s32.s32"), "{arch}: no Q8-activation decode");
            // scripts/device-prepare.sh stages these for a GPU machine without NVRTC
            if let Some(base) = std::env::var_os("YANGTUO_PTX_OUT") {
                let file = cache_file(Some(std::path::Path::new(&base)), arch).unwrap();
                write_cache(&file, &ptx);
                println!("wrote {}", file.display());
            }
            println!("{arch}: {} KiB of PTX in {:.1} s (nvrtc {:?})", src.len() >> 10, t.elapsed().as_secs_f64(), nvrtc_version());
        }
    }

    fn fake(ptr: u64) -> BufRef {
        Arc::new(Buf { _mem: None, ptr, bytes: 1 << 20 })
    }

    fn fake_matrix(format: WeightFormat, rows: usize, cols: usize, ptr: u64) -> CudaMatrix {
        CudaMatrix(Arc::new(MatrixInner {
            format,
            fi: format_index(format).unwrap(),
            rows,
            cols,
            lay: layout(format, cols).unwrap(),
            payload: fake(ptr),
            scales: None,
            perm: None,
        }))
    }

    fn kinds(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| match o {
                Op::Write { .. } => "write".into(),
                Op::Embed { .. } => "embed".into(),
                Op::Norm { add, .. } => if add.is_some() { "add+norm" } else { "norm" }.into(),
                Op::Matmul { .. } => "matmul".into(),
                Op::Matvec { mats, .. } => format!("matvec{}", mats.len()),
                Op::Glu { .. } => "glu".into(),
                Op::Rope { .. } => "rope".into(),
                Op::StoreKv { .. } => "store".into(),
                Op::RopeStore { .. } => "rope+store".into(),
                Op::Attention { .. } => "attention".into(),
                Op::SiluMul { .. } => "silu".into(),
                Op::Add { .. } => "add".into(),
                Op::Argmax { .. } => "argmax".into(),
            })
            .collect()
    }

    /// The ops of one layer as model.rs records them, for `n` tokens.
    fn layer_ops(n: usize, f: WeightFormat, ffn_f: WeightFormat) -> Vec<Op> {
        let (x, xb, xb2, q, k, v, att, hb, hb2, rope, kc, vc) =
            (fake(1), fake(2), fake(3), fake(4), fake(5), fake(6), fake(7), fake(8), fake(9), fake(10), fake(11), fake(12));
        let (dim, hidden, hd) = (256, 512, 64);
        let mm = |x: &BufRef, m: CudaMatrix, out: &BufRef| Op::Matmul { x: x.clone(), x_cols: dim, n, m, out: out.clone(), out_cols: 0 };
        let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: hd };
        vec![
            Op::Add { x: x.clone(), y: xb2.clone(), len: n * dim },
            Op::Norm { x: x.clone(), cols: dim, first: 0, n, w: fake(20), eps: 1e-5, out: xb.clone(), add: None },
            mm(&xb, fake_matrix(f, 256, dim, 30), &q),
            mm(&xb, fake_matrix(f, 128, dim, 31), &k),
            mm(&xb, fake_matrix(f, 128, dim, 32), &v),
            Op::Rope { x: q.clone(), x_cols: 256, n, heads: 4, hd, table: rope.clone(), style: RopeStyle::Half },
            Op::Rope { x: k.clone(), x_cols: 128, n, heads: 2, hd, table: rope.clone(), style: RopeStyle::Half },
            Op::StoreKv { k: k.clone(), v: v.clone(), n, pos: 0, kv_dim: 128, kc: kc.clone(), vc: vc.clone() },
            Op::Attention { q: q.clone(), q_cols: 256, kc, vc, max_seq: 512, kv_dim: 128, n, pos: 0, shape, out: att.clone(), out_cols: 256 },
            mm(&att, fake_matrix(f, dim, 256, 33), &xb2),
            Op::Add { x: x.clone(), y: xb2.clone(), len: n * dim },
            Op::Norm { x: x.clone(), cols: dim, first: 0, n, w: fake(21), eps: 1e-5, out: xb.clone(), add: None },
            mm(&xb, fake_matrix(ffn_f, hidden, dim, 34), &hb),
            mm(&xb, fake_matrix(ffn_f, hidden, dim, 35), &hb2),
            Op::SiluMul { gate: hb.clone(), up: hb2.clone(), len: n * hidden },
            Op::Matmul { x: hb, x_cols: hidden, n, m: fake_matrix(f, dim, hidden, 36), out: xb2, out_cols: dim },
        ]
    }

    #[test]
    fn small_matrices_split_rows_over_warps() {
        // Llama-2-7B Q4_0 on 132 multiprocessors: q/k/v fill the GPU, o and down take two
        // warps per row pair; Q6_K's 32 units of a 4096 row stay whole; tiny products split
        // as far as their units allow
        assert_eq!(mv_split(3 * 4096, 4096 / 32, 132), 1);
        assert_eq!(mv_split(4096, 4096 / 32, 132), 2);
        assert_eq!(mv_split(4096, 11008 / 32, 132), 2);
        assert_eq!(mv_split(4096, 4096 / 128, 132), 1);
        assert_eq!(mv_split(64, 4096 / 32, 132), 4);
        assert_eq!(mv_split(64, 8, 132), 1);
    }

    #[test]
    fn decode_layer_fuses_to_eight_launches() {
        let got = kinds(&fuse(layer_ops(1, WeightFormat::Q4_0, WeightFormat::Q4_0)));
        assert_eq!(got, ["add+norm", "matvec3", "rope+store", "attention", "matmul", "add+norm", "glu", "matmul"]);
    }

    #[test]
    fn fusion_keeps_what_it_cannot_merge() {
        // prefill: only the add joins the norm and the RoPEs join the store
        let got = kinds(&fuse(layer_ops(7, WeightFormat::F16, WeightFormat::F16)));
        assert_eq!(
            got,
            ["add+norm", "matmul", "matmul", "matmul", "rope+store", "attention", "matmul", "add+norm", "matmul", "matmul", "silu", "matmul"]
        );
        // gate and up of another format than q, k, v still pair up
        let got = kinds(&fuse(layer_ops(1, WeightFormat::Q4K, WeightFormat::Q6K)));
        assert_eq!(got, ["add+norm", "matvec3", "rope+store", "attention", "matmul", "add+norm", "glu", "matmul"]);
        // a final norm of the last row only is not fused with the add before it
        let (x, y) = (fake(1), fake(2));
        let ops = vec![
            Op::Add { x: x.clone(), y, len: 4 * 256 },
            Op::Norm { x, cols: 256, first: 3, n: 1, w: fake(3), eps: 1e-5, out: fake(4), add: None },
        ];
        assert_eq!(kinds(&fuse(ops)), ["add", "norm"]);
    }

    #[test]
    fn q6_k_scales_move_out_of_the_blocks() {
        let mut block = (0..210).map(|i| i as u8).collect::<Vec<u8>>();
        block[208] = 0x00;
        block[209] = 0x3c;
        let w = WeightData::new(WeightFormat::Q6K, 1, 256, Blob::from_vec(block.clone()), "t").unwrap();
        let lay = layout(WeightFormat::Q6K, 256).unwrap();
        assert_eq!(lay, Layout { wrow: 208, srow: 2 });
        let (mut p, mut s) = (vec![0u8; lay.wrow], vec![0u8; lay.srow]);
        repack_rows(&w, lay, 0, 1, &mut p, &mut s);
        assert_eq!(p, block[..208]);
        assert_eq!(s, [0x00, 0x3c]);
        // odd f16 widths are padded to 16 bytes
        assert_eq!(layout(WeightFormat::F16, 72).unwrap(), Layout { wrow: 144, srow: 0 });
        assert_eq!(layout(WeightFormat::F32, 517).unwrap(), Layout { wrow: 2080, srow: 0 });
    }

    /// Random weights for a small Llama, in `format` where the width allows (else f32).
    /// `dequantized` hands out the same weights decoded to f32: the CPU reference then
    /// computes with exactly the values the GPU decodes.
    struct RandomSource {
        config: Config,
        format: WeightFormat,
        style: RopeStyle,
        dequantized: bool,
        seed: u64,
    }

    fn random(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(0x2545F4914F6CDD1D);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    impl WeightSource for RandomSource {
        fn config(&self) -> &Config {
            &self.config
        }
        fn rope_style(&self) -> RopeStyle {
            self.style
        }
        fn weight(&mut self, id: TensorId) -> Result<WeightData> {
            let [rows, cols] = id.expected_shape(&self.config);
            let seed = self.seed ^ (id.gguf_name().bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
            let name = id.gguf_name();
            if id.is_vector() {
                let v: Vec<f32> = random(seed, cols, 0.2).iter().map(|x| 1.0 + x).collect();
                return WeightData::new(WeightFormat::F32, 1, cols, Blob::from_vec(bytemuck::cast_slice(&v).to_vec()), &name);
            }
            let f = if cols % self.format.block_elems() == 0 { self.format } else { WeightFormat::F32 };
            let data = random(seed, rows * cols, 1.5 / (cols as f32).sqrt());
            let mut w = if f == WeightFormat::Gptq4 && matches!(id, TensorId::Layer(_, _)) {
                // stored in a permuted column order, as GPTQ act-order checkpoints are
                let perm: Vec<u32> = {
                    let mut p: Vec<u32> = (0..cols as u32).collect();
                    let r = random(seed + 1, cols, 1.0);
                    p.sort_by(|a, b| r[*a as usize].total_cmp(&r[*b as usize]));
                    p
                };
                let stored: Vec<f32> = (0..rows).flat_map(|r| perm.iter().map(move |&c| (r, c))).map(|(r, c)| data[r * cols + c as usize]).collect();
                WeightData::new(f, rows, cols, Blob::from_vec(crate::weights::ggml::quantize(f, &stored)), &name)?.with_perm(perm, &name)?
            } else {
                WeightData::new(f, rows, cols, Blob::from_vec(crate::weights::ggml::quantize(f, &data)), &name)?
            };
            if self.dequantized {
                let v = w.to_f32();
                w = WeightData::new(WeightFormat::F32, rows, cols, Blob::from_vec(bytemuck::cast_slice(&v).to_vec()), &name)?;
            }
            Ok(w)
        }
    }

    fn config(dim: usize, hidden: usize, heads: usize, kv_heads: usize, vocab: usize, tie: bool) -> Config {
        Config {
            dim,
            hidden_dim: hidden,
            n_layers: 2,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: dim / heads,
            vocab_size: vocab,
            max_seq_len: 512,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            tie_embeddings: tie,
            bos_id: Some(1),
            eos_ids: vec![2],
        }
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let m = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-9);
        let d = a.iter().zip(b).fold(0f64, |d, (x, y)| if x.is_nan() || y.is_nan() { f64::INFINITY } else { d.max((x - y).abs() as f64) });
        d / m
    }

    /// The Q8 activations the kernels make of `x` (kernels.cu, `q8_block`), as the values
    /// x̃_i = d_b · q_i they stand for, and each value's rounding bound d_b / 2.
    fn q8_round(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (mut xq, mut half) = (vec![], vec![]);
        for b in x.chunks(32) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (id, d) = (127.0 / amax, amax / 127.0);
            for v in b {
                xq.push(if amax > 0.0 { (v * id).round_ties_even() as f64 * d as f64 } else { 0.0 });
                half.push(d as f64 / 2.0);
            }
        }
        (xq, half)
    }

    /// Every quantized format's one-token products, as decode lowers them (q/k/v fused after
    /// a norm that writes the Q8 activations, a lone matrix after quantize_q8, gate/up fused
    /// with SwiGLU, a product of glu's output that glu quantized, a column-permuted matrix
    /// whose gather quantize_q8 does; rows split over one to four warps), against f64
    /// references: on the same 8-bit activations to f32 accumulation (1e-4 of the largest
    /// output), and on the unrounded activations within the exact bound of 8-bit rounding,
    /// |W·x − W·x̃| ≤ Σ_i |w_i| · d_b(i) / 2. (Attention's Q8 output for o is exercised by
    /// forward_matches_cpu_in_every_format.) Skipped without a CUDA device.
    #[test]
    fn q8_products_match_reference() {
        let gpu = match Cuda::new() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: no CUDA device ({e})");
                return;
            }
        };
        use pollster::block_on as b;
        // 17 super-blocks: in every format some lanes take one unit more than others
        let cols = 4352;
        let formats = [WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Gptq4, WeightFormat::Q4K, WeightFormat::Q6K];
        let mut failures = vec![];
        for (fi, &f) in formats.iter().enumerate() {
            let seed = 1000 + 10 * fi as u64;
            let mat = |rows: usize, s: u64, permuted: bool| {
                let data = random(s, rows * cols, 1.5 / (cols as f32).sqrt());
                let w = WeightData::new(f, rows, cols, Blob::from_vec(crate::weights::ggml::quantize(f, &data)), "w").unwrap();
                if !permuted {
                    return w;
                }
                let r = random(s + 1, cols, 1.0);
                let mut perm: Vec<u32> = (0..cols as u32).collect();
                perm.sort_by(|a, b| r[*a as usize].total_cmp(&r[*b as usize]));
                w.with_perm(perm, "w").unwrap()
            };
            // (matrix, rows): q, k, v (odd counts, so a warp's two rows straddle matrices),
            // a lone one, gate, up, a permuted one
            let ws = [mat(37, seed, false), mat(20, seed + 2, false), mat(9, seed + 3, false), mat(37, seed + 4, false), mat(37, seed + 5, false), mat(37, seed + 6, false), mat(37, seed + 7, true)];
            // and a SwiGLU whose gate feeds a product (glu writes its Q8 activations)
            let (g2, u2) = (mat(256, seed + 10, false), mat(256, seed + 11, false));
            let down = {
                let data = random(seed + 12, 29 * 256, 0.1);
                WeightData::new(f, 29, 256, Blob::from_vec(crate::weights::ggml::quantize(f, &data)), "w").unwrap()
            };
            let ms: Vec<CudaMatrix> = ws.iter().map(|w| gpu.upload_matrix("w", w).unwrap()).collect();
            let act = |rows: usize, c: usize| gpu.alloc("a", rows, c).unwrap();
            let (mut x0, mut xb, mut xw, mut normw) = (act(1, cols), act(1, cols), act(1, cols), act(1, cols));
            let mut outs: Vec<CudaAct> = ws.iter().map(|w| act(1, w.rows)).collect();
            let xv = random(seed + 8, cols, 2.0);
            let nv: Vec<f32> = random(seed + 9, cols, 0.5).iter().map(|v| 1.0 + v).collect();
            gpu.write(&mut x0, &xv);
            gpu.write(&mut xw, &xv);
            gpu.write(&mut normw, &nv);
            gpu.rms_norm(&x0, 0, 1, &normw, 1e-5, &mut xb);
            for i in 0..3 {
                gpu.matmul(&xb, 1, &ms[i], &mut outs[i]);
            }
            gpu.matmul(&xw, 1, &ms[4], &mut outs[4]);
            gpu.matmul(&xw, 1, &ms[5], &mut outs[5]);
            let (g_out, rest) = outs.split_at_mut(5);
            gpu.silu_mul(&mut g_out[4], &rest[0], 37);
            gpu.matmul(&xw, 1, &ms[3], &mut g_out[3]);
            gpu.matmul(&xw, 1, &ms[6], &mut rest[1]);
            let (mg2, mu2, mdown) = (gpu.upload_matrix("w", &g2).unwrap(), gpu.upload_matrix("w", &u2).unwrap(), gpu.upload_matrix("w", &down).unwrap());
            let (mut og, mut ou, mut od) = (act(1, 256), act(1, 256), act(1, 29));
            gpu.matmul(&xw, 1, &mg2, &mut og);
            gpu.matmul(&xw, 1, &mu2, &mut ou);
            gpu.silu_mul(&mut og, &ou, 256);
            gpu.matmul(&og, 1, &mdown, &mut od);
            let xn = b(gpu.read(&xb, 1)).unwrap();
            let mut got: Vec<Vec<f32>> = outs.iter().map(|o| b(gpu.read(o, 1)).unwrap()).collect();
            let gate2 = b(gpu.read(&og, 1)).unwrap();
            got.push(b(gpu.read(&od, 1)).unwrap());
            // references: (8-bit activations, unrounded, bound) per output row
            let reference = |w: &WeightData, x: &[f32]| -> Vec<(f64, f64, f64)> {
                let logical = w.to_f32();
                let perm: Vec<usize> = w.perm.as_ref().map_or((0..w.cols).collect(), |p| p.iter().map(|&i| i as usize).collect());
                // the kernels see the stored column order: x[perm], quantized in that order
                let xs: Vec<f32> = perm.iter().map(|&i| x[i]).collect();
                let (xq, half) = q8_round(&xs);
                logical
                    .chunks(w.cols)
                    .map(|row| {
                        let mut t = (0f64, 0f64, 0f64);
                        for (i, &pi) in perm.iter().enumerate() {
                            let wv = row[pi] as f64;
                            t.0 += wv * xq[i];
                            t.1 += wv * xs[i] as f64;
                            t.2 += wv.abs() * half[i];
                        }
                        t
                    })
                    .collect()
            };
            let mut refs: Vec<Vec<(f64, f64, f64)>> = (0..3).map(|i| reference(&ws[i], &xn)).collect();
            refs.extend((3..7).map(|i| reference(&ws[i], &xv)));
            refs.push(reference(&down, &gate2));
            // gate = silu(g) · u, on each reference
            let silu = |g: f64, u: f64| g / (1.0 + (-g).exp()) * u;
            refs[4] = refs[4]
                .iter()
                .zip(&refs[5])
                .map(|(g, u)| (silu(g.0, u.0), silu(g.1, u.1), (silu(g.1 + g.2, u.1) - silu(g.1, u.1)).abs() + (silu(g.1, u.1 + u.2) - silu(g.1, u.1)).abs() + g.2 * u.2))
                .collect();
            let names = ["q", "k", "v", "lone", "gate", "up", "permuted", "after glu"];
            let (mut worst_q8, mut worst_bound) = (0f64, 0f64);
            for (i, (g, r)) in got.iter().zip(&refs).enumerate() {
                let scale = r.iter().fold(1e-30f64, |m, t| m.max(t.0.abs()));
                for (row, (v, t)) in g.iter().zip(r).enumerate() {
                    let v = *v as f64;
                    let e_q8 = (v - t.0).abs() / scale;
                    // the bound plus the accumulation allowance; gate's bound is a first-order one
                    let e_bound = (v - t.1).abs() / (t.2 * if i == 4 { 1.5 } else { 1.0 } + 1e-4 * scale);
                    worst_q8 = worst_q8.max(e_q8);
                    worst_bound = worst_bound.max(e_bound);
                    if !(e_q8 <= 1e-4 && e_bound <= 1.0) {
                        failures.push(format!("{f:?} {} row {row}: got {v}, want {} (8-bit activations), {} ± {} (exact)", names[i], t.0, t.1, t.2));
                    }
                }
            }
            println!("{f:?}: max |Δ| vs 8-bit reference {worst_q8:.2e} of max |out|, vs exact {:.0}% of the 8-bit rounding bound", 100.0 * worst_bound);
        }
        assert!(failures.is_empty(), "{} mismatches, first: {:?}", failures.len(), &failures[..failures.len().min(8)]);
    }

    /// The bound on decode logits (max|Δ| / max|logit|) for quantized weights, whose products
    /// read 8-bit activations while the CPU reference computes in f32. Rounding x to
    /// d_b·round(x/d_b), d_b = max|x_b| / 127, leaves a uniform error of RMS d_b/√12 per
    /// element: about 0.5% of the RMS of Gaussian-like activations (max|x_b| ≈ 2.1σ for 32
    /// values), and so about 0.5% relative error on each product. The logits of the test
    /// model depend on 15 products in sequence (2 layers × 7, and the output head), whose
    /// independent errors add up to about √15 · 0.5% ≈ 2% of the logits' spread (measured in
    /// the emulator: 2.1e-2 for Q4_0, 2.7e-2 for Q4_K). The bound allows about 2× that; a
    /// wrong product (a kernel or a stale Q8 buffer) moves logits by O(1). Near-ties among
    /// the logits may then flip, so the greedy check only asks that no step misses the CPU's
    /// choice where the CPU's lead exceeds twice that step's largest deviation (there a miss
    /// cannot come from the deviation).
    const Q8_LOGIT_TOL: f64 = 6e-2;

    /// A whole model on the GPU against the CPU backend with the same (decoded) weights:
    /// a 70-token prefill (two token tiles), 24 decode steps (graphs, split attention), and a
    /// second 9-token prefill at position 94. Every format, both RoPE styles, GQA, odd
    /// widths. Skipped without a CUDA device.
    #[test]
    fn forward_matches_cpu_in_every_format() {
        let cuda_for = || match Cuda::new() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("skipped: no CUDA device ({e})");
                None
            }
        };
        let Some(first) = cuda_for() else { return };
        println!("{}", first.name());
        drop(first);
        let mut cases: Vec<(WeightFormat, Config, RopeStyle)> = FORMATS
            .iter()
            .enumerate()
            .map(|(i, (f, _))| {
                let style = if i % 2 == 0 { RopeStyle::Half } else { RopeStyle::Interleaved };
                (*f, config(256, 512, 4, 2, 300, i == 3), style)
            })
            .collect();
        // odd widths: float formats with a tail (head_dim 12, hidden 132, vocab 517)
        cases.push((WeightFormat::F16, config(72, 132, 6, 2, 517, false), RopeStyle::Half));
        cases.push((WeightFormat::F32, config(80, 200, 5, 5, 1003, true), RopeStyle::Interleaved));
        // YANGTUO_TEST_FORMATS=F16,Q4K runs some of the cases
        let only = std::env::var("YANGTUO_TEST_FORMATS").ok();
        let mut failures = vec![];
        for (i, (f, c, style)) in cases.into_iter().enumerate() {
            if only.as_ref().is_some_and(|o| !o.split(',').any(|x| x.eq_ignore_ascii_case(&format!("{f:?}")))) {
                continue;
            }
            let src = |dequantized| RandomSource { config: c.clone(), format: f, style, dequantized, seed: 100 + i as u64 };
            let mut progress = |_: crate::model::LoadProgress| {};
            let gpu = Model::load(&mut src(false), cuda_for().unwrap(), 0, &mut progress).unwrap();
            let cpu = Model::load(&mut src(true), crate::backend::cpu::Cpu, 0, &mut progress).unwrap();
            let (mut sg, mut sc) = (gpu.new_state(256, 128, 128).unwrap(), cpu.new_state(256, 128, 128).unwrap());
            let ids: Vec<u32> = random(7 + i as u64, 70, 1.0).iter().map(|r| ((r.abs() * 1e4) as usize % c.vocab_size) as u32).collect();
            use pollster::block_on as b;
            // prefill: tensor cores round operands to f16 except for f32 weights
            let tol_prefill: f64 = if f == WeightFormat::F32 || !gpu.backend.mma { 2e-4 } else { 1e-2 };
            gpu.forward(&mut sg, &ids, 0, 70).unwrap();
            cpu.forward(&mut sc, &ids, 0, 70).unwrap();
            let (lg, lc) = (b(gpu.backend.read(&sg.logits, 70)).unwrap(), b(cpu.backend.read(&sc.logits, 70)).unwrap());
            let e_pre = max_rel(&lg, &lc);
            // decode, both fed the CPU's greedy choice
            let mut e_dec = 0f64;
            let mut next = b(cpu.backend.argmax(&sc.logits, 69)).unwrap();
            let (mut agree, mut clear_misses) = (0, 0);
            for step in 0..24 {
                gpu.forward(&mut sg, &[next], 70 + step, 1).unwrap();
                cpu.forward(&mut sc, &[next], 70 + step, 1).unwrap();
                let (lg, lc) = (b(gpu.backend.read(&sg.logits, 1)).unwrap(), b(cpu.backend.read(&sc.logits, 1)).unwrap());
                e_dec = e_dec.max(max_rel(&lg, &lc));
                let (ag, ac) = (b(gpu.backend.argmax(&sg.logits, 0)).unwrap(), b(cpu.backend.argmax(&sc.logits, 0)).unwrap());
                agree += (ag == ac) as usize;
                // a miss where the CPU's best logit leads its second by more than twice the
                // largest |Δ| of this step cannot come from that deviation
                let dmax = lg.iter().zip(&lc).fold(0f32, |m, (a, c)| m.max((a - c).abs()));
                let second = lc.iter().enumerate().filter(|(i, _)| *i != ac as usize).fold(f32::NEG_INFINITY, |m, (_, v)| m.max(*v));
                clear_misses += (ag != ac && lc[ac as usize] - second > 2.0 * dmax) as usize;
                next = ac;
            }
            // a second prefill chunk at a later position
            let more: Vec<u32> = ids[..9].to_vec();
            gpu.forward(&mut sg, &more, 94, 9).unwrap();
            cpu.forward(&mut sc, &more, 94, 9).unwrap();
            let e_more = max_rel(&b(gpu.backend.read(&sg.logits, 9)).unwrap(), &b(cpu.backend.read(&sc.logits, 9)).unwrap());
            // Float formats: decode computes in f32, but attends over keys and values the
            // prefill wrote. Quantized formats: decode's products round their inputs to 8 bits
            // (q8_products_match_reference holds each product to that rounding exactly), and
            // so does the second prefill's attention over the keys and values decode wrote.
            let q8 = q8_format(f);
            let tol_dec = if q8 { tol_prefill.max(Q8_LOGIT_TOL) } else { tol_prefill.max(2e-4) };
            let tol_more = if q8 { tol_dec } else { tol_prefill };
            let greedy_ok = if q8 { clear_misses == 0 } else { agree >= 23 };
            let ok = e_pre <= tol_prefill && e_dec <= tol_dec && e_more <= tol_more && greedy_ok;
            println!(
                "{f:?} dim {} {style:?}: prefill {e_pre:.2e}, decode {e_dec:.2e}, second prefill {e_more:.2e}, argmax agrees {agree}/24 (clear misses {clear_misses}) {}",
                c.dim,
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(format!("{f:?} (dim {})", c.dim));
            }
        }
        assert!(failures.is_empty(), "cuda differs from cpu for {failures:?}");
    }
}
