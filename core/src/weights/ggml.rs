//! ggml block formats on the host: decode and encode, through candle's ggml-compatible
//! blocks (`candle_core::quantized::k_quants`), which read the bytes exactly as GGUF
//! stores them. (The CPU backend's products through the same blocks are in
//! backend/cpu/ggml.rs.)

use crate::weights::WeightFormat;
use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, GgmlType,
};
use half::{bf16, f16};
use std::borrow::Cow;

/// View `bytes` as blocks of `T`, copying only if the bytes are misaligned for `T`.
pub(crate) fn as_blocks<T: GgmlType>(bytes: &[u8]) -> Cow<'_, [T]> {
    let size = std::mem::size_of::<T>();
    assert_eq!(
        bytes.len() % size,
        0,
        "byte length is not a whole number of blocks"
    );
    let n = bytes.len() / size;
    if (bytes.as_ptr() as usize) % std::mem::align_of::<T>() == 0 {
        // SAFETY: every `GgmlType` block is `repr(C)` plain data (integers and floats) for
        // which any bit pattern is valid; length and alignment were checked above.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, n) })
    } else {
        let mut v: Vec<T> = (0..n).map(|_| T::zeros()).collect();
        // SAFETY: as above; `v` owns exactly `bytes.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len())
        };
        Cow::Owned(v)
    }
}

fn blocks_to_bytes<T>(v: Vec<T>) -> Vec<u8> {
    let len = v.len() * std::mem::size_of::<T>();
    let mut out = vec![0u8; len];
    // SAFETY: `T` is a plain-data ggml block; we copy its bytes out.
    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr() as *const u8, out.as_mut_ptr(), len) };
    out
}

fn decode<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
    T::to_float(&as_blocks::<T>(bytes), out)
}

fn encode<T: GgmlType>(src: &[f32]) -> Vec<u8> {
    let mut blocks: Vec<T> = (0..src.len() / T::BLCK_SIZE).map(|_| T::zeros()).collect();
    T::from_float(src, &mut blocks);
    blocks_to_bytes(blocks)
}

/// Decode whole blocks of a quantized format.
pub fn dequantize(format: WeightFormat, bytes: &[u8], out: &mut [f32]) {
    match format {
        WeightFormat::Q8_0 => decode::<BlockQ8_0>(bytes, out),
        WeightFormat::Q4_0 => decode::<BlockQ4_0>(bytes, out),
        WeightFormat::Q4_1 => decode::<BlockQ4_1>(bytes, out),
        WeightFormat::Q4K => decode::<BlockQ4K>(bytes, out),
        WeightFormat::Q6K => decode::<BlockQ6K>(bytes, out),
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 | WeightFormat::Gptq4 => {
            format.dequantize(bytes, out)
        }
    }
}

/// Round-to-nearest into `Gptq4` blocks (asymmetric, range widened to include 0 as GPTQ's
/// quantizer does). Real GPTQ weights come repacked from checkpoints (`weights::gptq`); this
/// encoder exists so the format is total and kernels can be tested on any matrix.
fn encode_gptq4(src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / 32 * 20);
    for blk in src.chunks_exact(32) {
        let lo = blk.iter().fold(0f32, |m, v| m.min(*v));
        let hi = blk.iter().fold(0f32, |m, v| m.max(*v));
        let d = f16::from_f32(if hi > lo { (hi - lo) / 15.0 } else { 1.0 });
        let df = d.to_f32();
        let z = (-lo / df).round().clamp(0.0, 15.0);
        let q: Vec<u8> = blk
            .iter()
            .map(|v| (v / df + z).round().clamp(0.0, 15.0) as u8)
            .collect();
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&f16::from_f32(z).to_le_bytes());
        out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    }
    out
}

/// Encode rows of f32 into `format` (a whole number of blocks).
pub fn quantize(format: WeightFormat, src: &[f32]) -> Vec<u8> {
    match format {
        WeightFormat::F32 => bytemuck::cast_slice(src).to_vec(),
        WeightFormat::F16 => src
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        WeightFormat::BF16 => src
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        WeightFormat::Q8_0 => encode::<BlockQ8_0>(src),
        WeightFormat::Q4_0 => encode::<BlockQ4_0>(src),
        WeightFormat::Q4_1 => encode::<BlockQ4_1>(src),
        WeightFormat::Q4K => encode::<BlockQ4K>(src),
        WeightFormat::Q6K => encode::<BlockQ6K>(src),
        WeightFormat::Gptq4 => encode_gptq4(src),
    }
}
