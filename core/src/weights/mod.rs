//! Weight storage: formats, tensor names, and byte blobs borrowed from mapped files.
//!
//! Loaders (`safetensors`, `gguf`, `gptq`) turn files into a `ModelFiles`: a config plus a
//! list of `TensorEntry`s naming where each weight's bytes live. Backends receive
//! `WeightData` one tensor at a time, so no loader ever holds a second full copy.

pub mod blob;
pub mod format;
/// Parsing works on any byte blob (browsers included); only `GgufFile::open` and
/// `GgufWriter::write_file` touch the file system.
pub mod gguf;
#[cfg(not(target_arch = "wasm32"))]
pub mod quantize;
#[cfg(not(target_arch = "wasm32"))]
pub mod safetensors;
#[cfg(not(target_arch = "wasm32"))]
pub mod source;

pub use blob::Blob;
pub use format::WeightFormat;

use crate::{Error, Result};

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
            TensorId::Norm | TensorId::Layer(_, LayerTensor::AttnNorm) | TensorId::Layer(_, LayerTensor::FfnNorm)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl WeightData {
    pub fn new(format: WeightFormat, rows: usize, cols: usize, bytes: Blob, name: &str) -> Result<Self> {
        let want = format.row_bytes(cols, name)? * rows;
        if bytes.len() != want {
            return Err(Error::load(
                name,
                format!("{format:?} tensor of shape [{rows}, {cols}] needs {want} bytes, found {}", bytes.len()),
            ));
        }
        Ok(WeightData { format, rows, cols, bytes })
    }

    /// Decode row `r` into f32 (for embeddings and norms, and for tests).
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let rb = self.format.row_bytes(self.cols, "").expect("validated at construction");
        let mut out = vec![0f32; self.cols];
        self.format.dequantize(&self.bytes[r * rb..(r + 1) * rb], &mut out);
        out
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.format.dequantize(&self.bytes, &mut out);
        out
    }
}
