//! What the int8 kernels of this folder share: the activations quantized to int8 blocks,
//! and the decoding of Q4_K's packed scales. A leaf.

use half::f16;

/// Weights (and inputs) per block.
pub const QK: usize = 32;

/// Activations quantized to int8 blocks of 32, token-major: `qs[t*k + i]`, and per block
/// `d[t*k/32 + b]`, `sum[..] = d · Σ qs` (for the min term of Q4_K) and `qsum[..] = Σ qs`
/// (for Q4_0's, in integers).
pub struct QuantizedActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<f32>,
    pub qsum: Vec<i32>,
}

/// Quantize each 32-value block of `x` (m rows of k) to int8 with scale `max|x| / 127`,
/// rounding to nearest: the same rule as ggml's `quantize_row_q8_0` (whose scale is then
/// stored as f16; here it stays f32).
pub fn quantize_acts(x: &[f32]) -> QuantizedActs {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK];
    let mut sum = vec![0f32; x.len() / QK];
    let mut qsum = vec![0i32; x.len() / QK];
    for ((((blk, q), d), sum), qsum) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(&mut d)
        .zip(&mut sum)
        .zip(&mut qsum)
    {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in q.iter_mut().zip(blk) {
            *q = (v * id).round() as i8;
        }
        *qsum = q.iter().map(|&q| q as i32).sum::<i32>();
        *sum = *d * *qsum as f32;
    }
    QuantizedActs { qs, d, sum, qsum }
}

pub fn f16_at(p: *const u8) -> f32 {
    // SAFETY: callers pass the address of an in-bounds f16.
    f16::from_bits(u16::from_le_bytes(unsafe { [*p, *p.add(1)] })).to_f32()
}

/// Test support: `got[t * n + r]` against an f64 loop over the same int8 inputs and the
/// dequantized weights `wd` (n rows of k): the products' only error is f32 accumulation.
#[cfg(test)]
pub fn assert_near_f64(
    x: &QuantizedActs,
    wd: &[f32],
    (m, k, n): (usize, usize, usize),
    got: &[f32],
    what: &str,
) {
    for t in 0..m {
        for r in 0..n {
            let want: f64 = (0..k)
                .map(|i| {
                    wd[r * k + i] as f64 * x.d[(t * k + i) / QK] as f64 * x.qs[t * k + i] as f64
                })
                .sum();
            let g = got[t * n + r] as f64;
            assert!(
                (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{what} {m}x{k}x{n} [{t},{r}]: {g} vs {want}"
            );
        }
    }
}
