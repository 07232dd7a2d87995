//! Uploading a model's tensors to a backend as they arrive: from a `WeightSource` (a
//! mapped file, a GPTQ repacker, in-load quantization) or a browser's stream, in any
//! order, then assembling the `Model` once every tensor is there.

use super::{LayerTensor, RopeStyle, TensorId, WeightData};
use crate::backend::Backend;
use crate::model::{LayerWeights, Model, Weights};
use crate::{Config, Error, Result};
use std::collections::HashMap;

/// Progress of a load, reported once per tensor.
#[derive(Debug, Clone)]
pub struct LoadProgress<'a> {
    pub tensor: &'a str,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Where a model's tensors come from: a mapped file, a GPTQ repacker, a browser download.
pub trait WeightSource {
    fn config(&self) -> &Config;
    fn rope_style(&self) -> RopeStyle;
    fn weight(&mut self, id: TensorId) -> Result<WeightData>;
}

/// Uploads tensors as they arrive, in any order (a browser streams them in file order),
/// then assembles the model once every tensor is there.
pub struct ModelBuilder<B: Backend> {
    config: Config,
    rope_style: RopeStyle,
    backend: B,
    matrices: HashMap<TensorId, B::Matrix>,
    vectors: HashMap<TensorId, B::Act>,
}

impl<B: Backend> ModelBuilder<B> {
    pub fn new(config: Config, rope_style: RopeStyle, backend: B) -> Self {
        ModelBuilder {
            config,
            rope_style,
            backend,
            matrices: HashMap::new(),
            vectors: HashMap::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Upload one tensor to the device; the caller may drop `w` right after.
    pub fn add(&mut self, id: TensorId, w: &WeightData) -> Result<()> {
        let [rows, cols] = id.expected_shape(&self.config);
        if (w.rows, w.cols) != (rows, cols) {
            return Err(Error::load(
                id.gguf_name(),
                format!("shape [{}, {}], expected [{rows}, {cols}]", w.rows, w.cols),
            ));
        }
        if id.is_vector() {
            let values = w.to_f32();
            // a norm is a few thousand numbers, so checking them is free; a NaN or inf there
            // turns every answer into NaN logits
            if let Some(bad) = values.iter().find(|x| !x.is_finite()) {
                return Err(Error::load(
                    id.gguf_name(),
                    format!("holds {bad}: a norm's weights must be finite numbers"),
                ));
            }
            let mut v = self.backend.alloc(&id.gguf_name(), 1, w.cols)?;
            self.backend.write(&mut v, &values);
            self.vectors.insert(id, v);
        } else {
            // A NaN or inf in a weight makes NaN logits and an answer of `⁇`. Scanning every
            // matrix would cost a pass over the file; the first layer's catch a file broken
            // by a bad conversion for one layer's share of that (1/32 of a 7B; not timed).
            if matches!(id, TensorId::Layer(0, _)) {
                if let Some(bad) = w.first_non_finite() {
                    return Err(Error::load(
                        id.gguf_name(),
                        format!("holds {bad}: weights must be finite numbers"),
                    ));
                }
            }
            self.matrices
                .insert(id, self.backend.upload_matrix(&id.gguf_name(), w)?);
        }
        Ok(())
    }

    /// Tensors still missing, in load order.
    pub fn missing(&self) -> Vec<TensorId> {
        TensorId::all(&self.config)
            .into_iter()
            .filter(|id| !self.matrices.contains_key(id) && !self.vectors.contains_key(id))
            .collect()
    }

    pub fn finish(mut self) -> Result<Model<B>> {
        if let Some(id) = self.missing().first() {
            return Err(Error::load(id.gguf_name(), "tensor missing from the model"));
        }
        let mut m = |id| self.matrices.remove(&id).expect("checked by missing()");
        let embed = m(TensorId::Embed);
        let output = if self.config.tie_embeddings {
            embed.clone()
        } else {
            m(TensorId::Output)
        };
        let mut layers = Vec::with_capacity(self.config.n_layers);
        for l in 0..self.config.n_layers {
            let id = |t| TensorId::Layer(l, t);
            layers.push(LayerWeights {
                attn_norm: self
                    .vectors
                    .remove(&id(LayerTensor::AttnNorm))
                    .expect("checked"),
                wq: m(id(LayerTensor::Wq)),
                wk: m(id(LayerTensor::Wk)),
                wv: m(id(LayerTensor::Wv)),
                wo: m(id(LayerTensor::Wo)),
                ffn_norm: self
                    .vectors
                    .remove(&id(LayerTensor::FfnNorm))
                    .expect("checked"),
                w1: m(id(LayerTensor::W1)),
                w2: m(id(LayerTensor::W2)),
                w3: m(id(LayerTensor::W3)),
            });
        }
        let norm = self.vectors.remove(&TensorId::Norm).expect("checked");
        let weights = Weights {
            embed,
            layers,
            norm,
            output,
        };
        Ok(Model {
            config: self.config,
            rope_style: self.rope_style,
            kv_dtype: self.backend.auto_kv_dtype(),
            backend: self.backend,
            weights,
        })
    }
}
