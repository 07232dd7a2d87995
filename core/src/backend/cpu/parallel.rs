//! How the CPU kernels split work over the cores: candle's worker pool, a shared output
//! that threads write in disjoint parts, and the per-core cache budget that sizes blocks
//! of prompt tokens. A leaf, as simd.rs.

use candle_core::utils::barrier_pool;

/// Bytes of one block of prompt inputs, kept in a core's L2 while a thread's weight rows
/// pass over it (the tiled products of dense.rs and q8/).
pub const L2_BUDGET: usize = 256 * 1024;

/// Run `f` over `0..n` split across candle's worker pool (the one its matmuls use, so the
/// two never compete for the same cores).
pub fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    barrier_pool().execute_chunked(n, |r| r.for_each(&f));
}

/// A `*mut f32` that worker threads may share because each writes disjoint elements.
#[derive(Clone, Copy)]
pub struct SharedOut(*mut f32);
// SAFETY: users write disjoint ranges (the contract of `slice`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub fn new(dst: &mut [f32]) -> Self {
        SharedOut(dst.as_mut_ptr())
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn ptr(self) -> *mut f32 {
        self.0
    }

    /// SAFETY: callers write disjoint ranges from different threads.
    pub unsafe fn slice(self, start: usize, len: usize) -> &'static mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}
