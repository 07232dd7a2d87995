//! How the CPU kernels split work over the cores: candle's worker pool, a shared output
//! that threads write in disjoint parts, and the per-core cache budget that sizes blocks
//! of prompt tokens. A leaf, as simd.rs.

use candle_core::utils::barrier_pool;

/// Bytes of one block of prompt inputs, kept in a core's L2 while a thread's weight rows
/// pass over it (the tiled products of dense.rs and q8/).
pub const L2_BUDGET: usize = 256 * 1024;

/// The most worker threads `RAYON_NUM_THREADS` (which candle's pool reads) may ask for:
/// past the cores many times over it only costs memory, and 100000 crashed the pool.
fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Replace a `RAYON_NUM_THREADS` that asks for more than `max_threads` (or is not a
/// number) in this process's environment, and say what was done (the caller warns in its
/// runtime's way). `None` when it is fine or unset.
///
/// Call it once at start-up (the CLI's `main`, the Python and Node modules' init), before
/// candle's pool starts: that pool reads the variable once, when first used.
pub fn clamp_thread_env() -> Option<String> {
    let v = std::env::var("RAYON_NUM_THREADS").ok()?;
    let max = max_threads();
    match v.trim().parse::<usize>() {
        Ok(n) if n <= max => None,
        _ => {
            // SAFETY: called at start-up, while no thread of ours runs; the runtimes' own
            // threads (the Python interpreter's, libuv's) do not read the environment
            unsafe { std::env::set_var("RAYON_NUM_THREADS", max.to_string()) };
            Some(format!(
                "RAYON_NUM_THREADS={} is not a thread count this machine can use; using {max}",
                crate::error::printable(&v, 40)
            ))
        }
    }
}

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
