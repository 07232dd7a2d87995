//! In-load quantization: wraps a weight source and re-encodes each float matrix into a
//! block format as it is requested, a slab of rows at a time, so the whole model never
//! exists in f32.

use super::{Blob, RopeStyle, TensorId, WeightData, WeightFormat};
use crate::weights::builder::WeightSource;
use crate::{Config, Error, Result};

/// Rows converted per slab (bounds the f32 scratch to a few MiB).
const SLAB_ROWS: usize = 64;

pub struct Quantizing<'a> {
    inner: &'a mut dyn WeightSource,
    target: WeightFormat,
}

impl<'a> Quantizing<'a> {
    pub fn new(inner: &'a mut dyn WeightSource, target: WeightFormat) -> Result<Self> {
        if !matches!(
            target,
            WeightFormat::Q4_0
                | WeightFormat::Q8_0
                | WeightFormat::Q4K
                | WeightFormat::Q4_1
                | WeightFormat::Q6K
        ) {
            return Err(Error::arg(
                "quantize",
                format!("{target:?} is not a quantized format (q4_0, q8_0, q4_k)"),
            ));
        }
        Ok(Quantizing { inner, target })
    }
}

/// Re-encode `w` into `target`, or return it unchanged if it is a vector, already
/// quantized, or its rows are not a whole number of blocks.
///
/// GPTQ weights (`Gptq4`) are refused: they have no ggml type, and re-encoding them would
/// quantize twice. (Loading with in-load quantization keeps them as they are; see
/// `Quantizing`.)
pub fn quantize_weight(w: WeightData, target: WeightFormat, name: &str) -> Result<WeightData> {
    if w.format == WeightFormat::Gptq4 {
        return Err(Error::load(
            name,
            "GPTQ 4-bit weights have no GGUF (ggml) type and are not re-quantized; \
             convert the original float checkpoint instead",
        ));
    }
    if w.rows == 1 || w.format.is_quantized() {
        return Ok(w);
    }
    if w.cols % target.block_elems() != 0 {
        log::warn!(
            "{name}: {} columns are not a multiple of {}; kept as {:?}",
            w.cols,
            target.block_elems(),
            w.format
        );
        return Ok(w);
    }
    let src_row = w.format.row_bytes(w.cols, name)?;
    let mut out = Vec::with_capacity(target.row_bytes(w.cols, name)? * w.rows);
    let mut f = vec![0f32; SLAB_ROWS * w.cols];
    for r0 in (0..w.rows).step_by(SLAB_ROWS) {
        let n = SLAB_ROWS.min(w.rows - r0);
        let slab = &mut f[..n * w.cols];
        w.format
            .dequantize(&w.bytes[r0 * src_row..(r0 + n) * src_row], slab);
        out.extend(crate::weights::ggml::quantize(target, slab));
    }
    WeightData::new(target, w.rows, w.cols, Blob::from_vec(out), name)
}

impl WeightSource for Quantizing<'_> {
    fn config(&self) -> &Config {
        self.inner.config()
    }
    fn rope_style(&self) -> RopeStyle {
        self.inner.rope_style()
    }
    fn weight(&mut self, id: TensorId) -> Result<WeightData> {
        let w = self.inner.weight(id)?;
        if w.format == WeightFormat::Gptq4 {
            // already 4-bit: computed as stored
            return Ok(w);
        }
        quantize_weight(w, self.target, &id.gguf_name())
    }
}
