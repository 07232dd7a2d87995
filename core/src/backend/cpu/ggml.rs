//! The CPU backend's fallback products: candle's ggml kernels
//! (`candle_core::quantized::k_quants`), for Q4_1 and for CPUs without AVX2 (aarch64
//! builds take these for every quantized format).

use crate::weights::WeightFormat;
use crate::weights::ggml::as_blocks;
use candle_core::quantized::k_quants::{
    self, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, GgmlType,
};
use half::{bf16, f16};

/// `dst[m, n] = lhs[m, k] · W[n, k]ᵀ` with W in `format`, multi-threaded. Quantized formats
/// quantize `lhs` to Q8 blocks first (Q8_0, or Q8_K for k-quants), as llama.cpp does: the
/// error bound of these products is that of the Q8 activation quantization. `Gptq4` is the
/// exception: it keeps f32 activations, here in a plain single-threaded loop (the CPU
/// backend has the threaded kernel; this one is its reference).
pub fn matmul(
    format: WeightFormat,
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    w: &[u8],
    dst: &mut [f32],
) {
    fn go<T: GgmlType>(mkn: (usize, usize, usize), lhs: &[f32], w: &[u8], dst: &mut [f32]) {
        k_quants::matmul::<T>(mkn, lhs, &as_blocks::<T>(w), dst)
            .expect("shapes checked by the caller")
    }
    let mkn = (m, k, n);
    match format {
        WeightFormat::F32 => go::<f32>(mkn, lhs, w, dst),
        WeightFormat::F16 => go::<f16>(mkn, lhs, w, dst),
        WeightFormat::BF16 => go::<bf16>(mkn, lhs, w, dst),
        WeightFormat::Q8_0 => go::<BlockQ8_0>(mkn, lhs, w, dst),
        WeightFormat::Q4_0 => go::<BlockQ4_0>(mkn, lhs, w, dst),
        WeightFormat::Q4_1 => go::<BlockQ4_1>(mkn, lhs, w, dst),
        WeightFormat::Q4K => go::<BlockQ4K>(mkn, lhs, w, dst),
        WeightFormat::Q6K => go::<BlockQ6K>(mkn, lhs, w, dst),
        WeightFormat::Gptq4 => {
            let rb = k / 32 * 20;
            let mut row = vec![0f32; k];
            for r in 0..n {
                format.dequantize(&w[r * rb..(r + 1) * rb], &mut row);
                for t in 0..m {
                    dst[t * n + r] = row
                        .iter()
                        .zip(&lhs[t * k..(t + 1) * k])
                        .map(|(a, b)| a * b)
                        .sum();
                }
            }
        }
    }
}
