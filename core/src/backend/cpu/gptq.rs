//! `dst[m, n] = x[m, k] · W[n, k]ᵀ` for GPTQ 4-bit weights (`Gptq4`, repacked at load by
//! weights/gptq.rs) with f32 activations, exactly: each block of 32 is decoded to `q − z`
//! (small integers, exact in f32) once, dotted with every token's 32 inputs, and scaled
//! by `d`. Threads split the output rows.

use super::parallel::SharedOut;
use super::simd::dot;
use candle_core::utils::barrier_pool;
use half::f16;

/// Blocks of 20 bytes: d and z as f16, then 16 bytes of nibbles (element i low, 16 + i high).
pub fn matmul((m, k, n): (usize, usize, usize), x: &[f32], w: &[u8], dst: &mut [f32]) {
    let rb = k / 32 * 20;
    let out = SharedOut::new(dst);
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
