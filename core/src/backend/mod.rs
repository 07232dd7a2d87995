//! The small trait of ops every backend implements. `model.rs` writes the Llama forward
//! pass once in terms of these; a backend supplies buffers and kernels.
//!
//! Conventions: activations are f32, row-major `[rows, cols]`; an op works on the first `n`
//! rows of its buffers. Outputs are `&mut`, so an op never reads and writes one buffer
//! through two names. Ops are infallible once buffers exist: device errors surface at the
//! next `read`/`argmax`, which are async because the browser has no blocking readback.

#[cfg(feature = "cpu")]
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod layout;
pub mod profile;
#[cfg(feature = "wgpu")]
pub mod wgpu;
// pollster, which the suite blocks on, is a native-only dependency
#[cfg(all(test, not(target_arch = "wasm32")))]
mod conformance;

use crate::Result;
use crate::weights::{RopeStyle, WeightData};
use std::future::Future;
use std::pin::Pin;

/// The most sequences a batched decode step runs in one forward (the batch scheduler's
/// limit; the CPU's products are batch-invariant at any size, ARCHITECTURE.md).
pub const DECODE_ROWS: usize = 32;

/// How a KV cache stores keys and values. f16 halves the cache (a 7B model's 4096
/// positions: 2 GiB instead of 4) and the bytes attention reads; attention still computes
/// in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        })
    }
}

/// `auto` is `None`: each backend's `auto_kv_dtype`.
pub fn parse_kv_dtype(s: &str) -> Result<Option<KvDtype>> {
    match s.to_ascii_lowercase().as_str() {
        "auto" | "" => Ok(None),
        "f32" | "fp32" | "float32" => Ok(Some(KvDtype::F32)),
        "f16" | "fp16" | "float16" | "half" => Ok(Some(KvDtype::F16)),
        other => Err(crate::Error::arg(
            "kv_cache_dtype",
            format!("`{other}` is not one of auto, f16, f32"),
        )),
    }
}

/// One sequence of a batch at one layer, for `Backend::attend`: its rows first..first+n of
/// k, v, q and out (positions pos..pos+n) and that layer's caches of the sequence.
pub struct SeqKv<'a, B: Backend> {
    pub k: &'a mut B::Kv,
    pub v: &'a mut B::Kv,
    pub first: usize,
    pub n: usize,
    pub pos: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

pub trait Backend: Sized + Send + Sync + 'static {
    /// An f32 activation buffer of fixed capacity `[rows, cols]`.
    type Act: Send + Sync;
    /// A weight matrix in its storage format (f32, f16, bf16 or a ggml block format).
    type Matrix: Clone + Send + Sync;
    /// One layer's K or V cache, `[max_seq, kv_dim]`.
    type Kv: Send + Sync;

    /// A one-line description of the device, for logs and benchmarks.
    fn name(&self) -> String;

    fn upload_matrix(&self, name: &str, w: &WeightData) -> Result<Self::Matrix>;
    fn alloc(&self, name: &str, rows: usize, cols: usize) -> Result<Self::Act>;
    /// One layer's K or V cache of `max_seq` rows of `kv_dim`, stored as `dtype`.
    fn alloc_kv(
        &self,
        name: &str,
        max_seq: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> Result<Self::Kv>;
    /// `count` caches as `alloc_kv` makes them, which the backend may place side by side so
    /// that `attend` serves them all in one dispatch (wgpu: one buffer, as many caches as
    /// one binding holds). The default allocates each alone.
    fn alloc_kv_slots(
        &self,
        name: &str,
        count: usize,
        max_seq: usize,
        kv_dim: usize,
        dtype: KvDtype,
    ) -> Result<Vec<Self::Kv>> {
        (0..count)
            .map(|_| self.alloc_kv(name, max_seq, kv_dim, dtype))
            .collect()
    }
    /// What a KV cache `auto` stores here: f16 where the device computes in f16 (wgpu with
    /// shader-f16), else f32. CUDA's f16 cache is compiled and NVRTC-checked but waits for
    /// a run on a GPU before it becomes CUDA's auto.
    fn auto_kv_dtype(&self) -> KvDtype {
        KvDtype::F32
    }
    /// Copy host data into the first `data.len()` elements of `dst`.
    fn write(&self, dst: &mut Self::Act, data: &[f32]);

    /// out[t] = table[ids[t]]
    fn embed(&self, table: &Self::Matrix, ids: &[u32], out: &mut Self::Act);
    /// out[r - first] = x[r] / rms(x[r]) * w, for r in first..first+n
    fn rms_norm(
        &self,
        x: &Self::Act,
        first: usize,
        n: usize,
        w: &Self::Act,
        eps: f32,
        out: &mut Self::Act,
    );
    /// out[n, rows(W)] = x[n, cols(W)] · Wᵀ
    fn matmul(&self, x: &Self::Act, n: usize, w: &Self::Matrix, out: &mut Self::Act);
    /// `matmul` of a batch whose last `lone` rows are each the only token of its sequence (a
    /// decode step's). A backend whose sums depend on how many rows share a product sums
    /// those rows as it sums one token alone, so a sequence's decode gets the same bits in
    /// any batch (wgpu). The default is `matmul`, for backends whose sums never depend on the
    /// batch (the CPU).
    fn matmul_batch(
        &self,
        x: &Self::Act,
        n: usize,
        lone: usize,
        w: &Self::Matrix,
        out: &mut Self::Act,
    ) {
        let _ = lone;
        self.matmul(x, n, w, out)
    }
    /// Whether a decode row's sums have the bits of the same token as a prompt row (the
    /// CPU: one order for every product). Where not (the default: wgpu sums decode rows in
    /// matvec.wgsl's order and prompt rows tiled; CUDA rounds them differently), a prompt
    /// reuses only cached positions computed as prompt rows (`Cached::reusable`).
    fn decode_sums_as_prompt(&self) -> bool {
        false
    }
    /// Rotate each head of x[t] by the angles in table[t] (`[n, head_dim/2, (cos, sin)]`).
    fn rope(
        &self,
        x: &mut Self::Act,
        n: usize,
        n_heads: usize,
        head_dim: usize,
        table: &Self::Act,
        style: RopeStyle,
    );
    /// k_cache[pos + t] = k[first + t], v_cache[pos + t] = v[first + t], for t < n. One
    /// sequence's rows of a batch (`first`: where they start) go to that sequence's cache.
    #[allow(clippy::too_many_arguments)]
    fn store_kv(
        &self,
        k: &Self::Act,
        v: &Self::Act,
        first: usize,
        n: usize,
        pos: usize,
        k_cache: &mut Self::Kv,
        v_cache: &mut Self::Kv,
    );
    /// cache[p] = src[p] for p in `positions`: a prefix one sequence computed, taken by
    /// another whose prompt starts the same way (the batch scheduler).
    fn copy_kv(&self, src: &Self::Kv, cache: &mut Self::Kv, positions: std::ops::Range<usize>);
    /// Causal attention of the n queries q[first + t] at positions pos + t over cache rows
    /// 0..=pos+t, into out[first + t]. Rows outside first..first+n are left as they are.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Act,
        k_cache: &Self::Kv,
        v_cache: &Self::Kv,
        first: usize,
        n: usize,
        pos: usize,
        shape: AttnShape,
        out: &mut Self::Act,
    );
    /// `store_kv` then `attention` for every sequence of a batch (one layer). A backend whose
    /// caches share buffers (`alloc_kv_slots`) runs all of those sequences in one dispatch
    /// each for the store and the attention; the default runs them in turn. Either way each
    /// sequence gets the bits it gets alone.
    fn attend(
        &self,
        k: &Self::Act,
        v: &Self::Act,
        q: &Self::Act,
        seqs: &mut [SeqKv<'_, Self>],
        shape: AttnShape,
        out: &mut Self::Act,
    ) {
        for s in seqs {
            self.store_kv(k, v, s.first, s.n, s.pos, s.k, s.v);
            self.attention(q, s.k, s.v, s.first, s.n, s.pos, shape, out);
        }
    }
    /// gate[i] = silu(gate[i]) * up[i], for i < len
    fn silu_mul(&self, gate: &mut Self::Act, up: &Self::Act, len: usize);
    /// x[i] += y[i], for i < len
    fn add(&self, x: &mut Self::Act, y: &Self::Act, len: usize);

    /// Index of the largest value in row `row` (first index on ties). Reads back 4 bytes.
    fn argmax(&self, x: &Self::Act, row: usize) -> impl Future<Output = Result<u32>>;
    /// Greedy decode ahead of the host: `argmax` of `logits`' row `row`, kept on the device
    /// and embedded from `table` into row 0 of `out` there, with its read-back submitted at
    /// once; the future gives the id. The caller records the token's forward before it
    /// awaits, so the device runs the forward while the host handles the token. `None`
    /// where the backend cannot (the default: the CPU, which has no device to keep busy).
    fn argmax_ahead<'a>(
        &'a self,
        logits: &Self::Act,
        row: usize,
        table: &Self::Matrix,
        out: &mut Self::Act,
    ) -> Option<Pin<Box<dyn Future<Output = Result<u32>> + 'a>>> {
        let _ = (logits, row, table, out);
        None
    }
    /// The first `rows` rows, to the host.
    fn read(&self, x: &Self::Act, rows: usize) -> impl Future<Output = Result<Vec<f32>>>;

    /// Time every kernel on the device from now on (`on`), or stop; false where the
    /// backend cannot (the default), and then nothing changes. Timing serializes the device
    /// with the host, so a profiled run's wall clock is not its speed.
    fn set_profiling(&self, on: bool) -> bool {
        let _ = on;
        false
    }
    /// What was timed since profiling began or since the last call, which starts it again.
    fn take_profile(&self) -> profile::Profile {
        profile::Profile::default()
    }
}
