//! Weight storage: formats, tensor names, and byte blobs borrowed from mapped files.
//!
//! Loaders (`safetensors`, `gguf`, `gptq`) turn files into a `ModelFiles`: a config plus a
//! list of `TensorEntry`s naming where each weight's bytes live. Backends receive
//! `WeightData` one tensor at a time, so no loader ever holds a second full copy.

pub mod blob;
pub mod builder;
pub mod format;
/// ggml block formats: decode and encode (candle's blocks).
pub mod ggml;
pub mod gguf;
#[cfg(not(target_arch = "wasm32"))]
pub mod gptq;
#[cfg(not(target_arch = "wasm32"))]
pub mod quantize;
pub mod safetensors;
#[cfg(not(target_arch = "wasm32"))]
pub mod source;
pub mod stream;

pub use blob::Blob;
pub use format::WeightFormat;

use crate::{Error, Result};
use std::sync::Arc;

/// The role a tensor plays in the model, independent of the checkpoint's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorId {
    Embed,
    Layer(usize, LayerTensor),
    Norm,
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerTensor {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    Wo,
    FfnNorm,
    /// gate_proj
    W1,
    /// down_proj
    W2,
    /// up_proj
    W3,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 9] = [
        LayerTensor::AttnNorm,
        LayerTensor::Wq,
        LayerTensor::Wk,
        LayerTensor::Wv,
        LayerTensor::Wo,
        LayerTensor::FfnNorm,
        LayerTensor::W1,
        LayerTensor::W2,
        LayerTensor::W3,
    ];
}

impl TensorId {
    /// Hugging Face name, without the `.weight` suffix.
    pub fn hf_name(&self) -> String {
        match self {
            TensorId::Embed => "model.embed_tokens".into(),
            TensorId::Norm => "model.norm".into(),
            TensorId::Output => "lm_head".into(),
            TensorId::Layer(i, t) => {
                let s = match t {
                    LayerTensor::AttnNorm => "input_layernorm",
                    LayerTensor::Wq => "self_attn.q_proj",
                    LayerTensor::Wk => "self_attn.k_proj",
                    LayerTensor::Wv => "self_attn.v_proj",
                    LayerTensor::Wo => "self_attn.o_proj",
                    LayerTensor::FfnNorm => "post_attention_layernorm",
                    LayerTensor::W1 => "mlp.gate_proj",
                    LayerTensor::W2 => "mlp.down_proj",
                    LayerTensor::W3 => "mlp.up_proj",
                };
                format!("model.layers.{i}.{s}")
            }
        }
    }

    /// llama.cpp (GGUF) name, without the `.weight` suffix.
    pub fn gguf_name(&self) -> String {
        match self {
            TensorId::Embed => "token_embd".into(),
            TensorId::Norm => "output_norm".into(),
            TensorId::Output => "output".into(),
            TensorId::Layer(i, t) => {
                let s = match t {
                    LayerTensor::AttnNorm => "attn_norm",
                    LayerTensor::Wq => "attn_q",
                    LayerTensor::Wk => "attn_k",
                    LayerTensor::Wv => "attn_v",
                    LayerTensor::Wo => "attn_output",
                    LayerTensor::FfnNorm => "ffn_norm",
                    LayerTensor::W1 => "ffn_gate",
                    LayerTensor::W2 => "ffn_down",
                    LayerTensor::W3 => "ffn_up",
                };
                format!("blk.{i}.{s}")
            }
        }
    }

    /// The `[rows, cols]` shape this tensor must have (vectors have one row).
    pub fn expected_shape(&self, c: &crate::Config) -> [usize; 2] {
        match self {
            TensorId::Embed | TensorId::Output => [c.vocab_size, c.dim],
            TensorId::Norm => [1, c.dim],
            TensorId::Layer(_, t) => match t {
                LayerTensor::AttnNorm | LayerTensor::FfnNorm => [1, c.dim],
                LayerTensor::Wq => [c.q_dim(), c.dim],
                LayerTensor::Wk | LayerTensor::Wv => [c.kv_dim(), c.dim],
                LayerTensor::Wo => [c.dim, c.q_dim()],
                LayerTensor::W1 | LayerTensor::W3 => [c.hidden_dim, c.dim],
                LayerTensor::W2 => [c.dim, c.hidden_dim],
            },
        }
    }

    pub fn is_vector(&self) -> bool {
        matches!(
            self,
            TensorId::Norm
                | TensorId::Layer(_, LayerTensor::AttnNorm)
                | TensorId::Layer(_, LayerTensor::FfnNorm)
        )
    }

    /// Every tensor a model with this config needs, in load order.
    pub fn all(c: &crate::Config) -> Vec<TensorId> {
        let mut v = vec![TensorId::Embed];
        for l in 0..c.n_layers {
            v.extend(LayerTensor::ALL.iter().map(|t| TensorId::Layer(l, *t)));
        }
        v.push(TensorId::Norm);
        if !c.tie_embeddings {
            v.push(TensorId::Output);
        }
        v
    }
}

/// How a GGUF file orders the rows of Q and K inside each head. llama.cpp permutes them so
/// rotary pairs are adjacent; the engine rotates pairs `(2i, 2i+1)` for such files instead
/// of `(i, i+d/2)`. Attention scores are invariant to a permutation applied to both Q and
/// K, so no weight needs to be moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Hugging Face: rotate `(i, i + d/2)`.
    Half,
    /// llama.cpp / GGUF: rotate `(2i, 2i + 1)`.
    Interleaved,
}

/// One weight matrix (or vector, with one row) as stored: format, shape and bytes.
#[derive(Clone)]
pub struct WeightData {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Blob,
    /// A column permutation (GPTQ with `desc_act`): `bytes` hold `W[:, perm]`, so the product
    /// is `W[:, perm] · x[perm]` and backends gather `x[perm]` first. `None` is the identity.
    pub perm: Option<Arc<Vec<u32>>>,
}

impl WeightData {
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        bytes: Blob,
        name: &str,
    ) -> Result<Self> {
        let want = format.row_bytes(cols, name)? * rows;
        if bytes.len() != want {
            return Err(Error::load(
                name,
                format!(
                    "{format:?} tensor of shape [{rows}, {cols}] needs {want} bytes, found {}",
                    bytes.len()
                ),
            ));
        }
        Ok(WeightData {
            format,
            rows,
            cols,
            bytes,
            perm: None,
        })
    }

    /// Attach a column permutation (see `perm`); it must be a permutation of `0..cols`.
    pub fn with_perm(mut self, perm: Vec<u32>, name: &str) -> Result<Self> {
        if perm.len() != self.cols {
            return Err(Error::load(
                name,
                format!(
                    "permutation of {} columns for a matrix of {}",
                    perm.len(),
                    self.cols
                ),
            ));
        }
        let mut seen = vec![false; self.cols];
        for &p in &perm {
            if (p as usize) >= self.cols || std::mem::replace(&mut seen[p as usize], true) {
                return Err(Error::load(
                    name,
                    format!("column order is not a permutation of 0..{}", self.cols),
                ));
            }
        }
        self.perm = Some(Arc::new(perm));
        Ok(self)
    }

    /// Decode row `r` into f32, in the matrix's logical column order (tests' references).
    #[cfg(test)]
    pub(crate) fn row_f32(&self, r: usize) -> Vec<f32> {
        let rb = self
            .format
            .row_bytes(self.cols, "")
            .expect("validated at construction");
        let mut out = vec![0f32; self.cols];
        self.format
            .dequantize(&self.bytes[r * rb..(r + 1) * rb], &mut out);
        self.unpermute(&mut out);
        out
    }

    /// The first NaN or infinity among the weights, decoded a few rows at a time so a
    /// large matrix costs no large buffer.
    pub fn first_non_finite(&self) -> Option<f32> {
        let rb = self
            .format
            .row_bytes(self.cols, "")
            .expect("validated at construction");
        let rows_per_chunk = (1 << 16) / self.cols.max(1) + 1;
        let mut out = vec![0f32; rows_per_chunk * self.cols];
        for chunk in self.bytes.chunks(rows_per_chunk * rb) {
            let n = chunk.len() / rb * self.cols;
            self.format.dequantize(chunk, &mut out[..n]);
            if let Some(bad) = out[..n].iter().find(|x| !x.is_finite()) {
                return Some(*bad);
            }
        }
        None
    }

    /// The whole matrix in f32, in logical column order.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.format.dequantize(&self.bytes, &mut out);
        if self.perm.is_some() {
            for row in out.chunks_exact_mut(self.cols) {
                self.unpermute(row);
            }
        }
        out
    }

    /// Stored column order → logical: `row[perm[i]] = stored[i]`.
    fn unpermute(&self, row: &mut [f32]) {
        if let Some(p) = &self.perm {
            let stored = row.to_vec();
            for (v, &c) in stored.iter().zip(p.iter()) {
                row[c as usize] = *v;
            }
        }
    }
}

impl WeightData {
    /// A copy of this tensor in another format (used for norms, which run in f32).
    pub fn converted(&self, format: WeightFormat) -> WeightData {
        if self.format == format {
            return self.clone();
        }
        let f = self.to_f32();
        WeightData {
            format,
            rows: self.rows,
            cols: self.cols,
            bytes: Blob::from_vec(crate::weights::ggml::quantize(format, &f)),
            perm: None,
        }
    }
}
