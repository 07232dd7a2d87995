//! What the int8 kernels of this folder share: the activations quantized to int8 blocks
//! (and, for tests, the f64 reference). A leaf.

/// Weights (and inputs) per block.
pub const QK: usize = 32;

/// Activations quantized to int8 blocks of 32, token-major: `qs[t*k + i]`, and per block
/// `d[t*k/32 + b]`, `sum[..] = d · Σ qs` (for the min term of Q4_K) and `qsum[..] = Σ qs`
/// (for Q4_0's, in integers); `qsum16[t*k/16 + h]`, Σ qs over each half block (for Q6_K's
/// offset, whose scales are per 16).
pub struct QuantizedActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<f32>,
    pub qsum: Vec<i32>,
    pub qsum16: Vec<i32>,
}

/// Quantize each 32-value block of `x` (m rows of k) to int8 with scale `max|x| / 127`,
/// rounding to nearest: the same rule as ggml's `quantize_row_q8_0` (whose scale is then
/// stored as f16; here it stays f32).
pub fn quantize_acts(x: &[f32]) -> QuantizedActs {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK];
    let mut sum = vec![0f32; x.len() / QK];
    let mut qsum = vec![0i32; x.len() / QK];
    let mut qsum16 = vec![0i32; x.len() / 16];
    for (((((blk, q), d), sum), qsum), halves) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(&mut d)
        .zip(&mut sum)
        .zip(&mut qsum)
        .zip(qsum16.chunks_exact_mut(2))
    {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        *d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in q.iter_mut().zip(blk) {
            *q = (v * id).round() as i8;
        }
        for (half, q) in halves.iter_mut().zip(q.chunks_exact(QK / 2)) {
            *half = q.iter().map(|&q| q as i32).sum::<i32>();
        }
        *qsum = halves[0] + halves[1];
        *sum = *d * *qsum as f32;
    }
    QuantizedActs {
        qs,
        d,
        sum,
        qsum,
        qsum16,
    }
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
