//! candle-transformers' Llama on the CPU: the reference for every backend. It runs in f32
//! (candle's fused RMSNorm has no f64 kernel); its own error, ~1e-6, is far below the
//! tolerances checked against it.

use crate::Spec;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Config, Llama, Llama3RopeConfig, Llama3RopeType};
use std::path::Path;

pub struct Reference {
    model: Llama,
    config: Config,
}

impl Reference {
    /// Load the folder written by `spec.write`. `theta` overrides rope_theta (used to express
    /// dynamic NTK scaling, whose effective base for a given length is a plain theta).
    pub fn load(spec: &Spec, dir: &Path, theta: Option<f64>) -> Reference {
        // Linear scaling (divide every frequency by `factor`) is candle's llama3 rope with every
        // wavelength past the low-frequency cutoff: original_max 1, low_freq_factor 1.
        let rope_scaling = spec.rope_scaling.as_ref().and_then(|s| {
            let kind = s
                .get("type")
                .or(s.get("rope_type"))
                .and_then(|k| k.as_str())
                .unwrap_or("");
            (kind == "linear").then(|| Llama3RopeConfig {
                factor: s["factor"].as_f64().unwrap() as f32,
                low_freq_factor: 1.0,
                high_freq_factor: 1.0e9,
                original_max_position_embeddings: 1,
                rope_type: Llama3RopeType::Llama3,
            })
        });
        let config = Config {
            hidden_size: spec.hidden,
            intermediate_size: spec.intermediate,
            vocab_size: spec.vocab,
            num_hidden_layers: spec.layers,
            num_attention_heads: spec.heads,
            num_key_value_heads: spec.kv_heads,
            use_flash_attn: false,
            rms_norm_eps: spec.eps,
            rope_theta: theta.unwrap_or(spec.theta) as f32,
            bos_token_id: Some(1),
            eos_token_id: None,
            rope_scaling,
            max_position_embeddings: spec.max_pos.max(4096),
            tie_word_embeddings: spec.tie,
        };
        let files = [dir.join("model.safetensors")];
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu).unwrap()
        };
        Reference {
            model: Llama::load(vb, &config).unwrap(),
            config,
        }
    }

    fn cache(&self) -> Cache {
        Cache::new(true, DType::F32, &self.config, &Device::Cpu).unwrap()
    }

    fn run(&self, ids: &[u32], pos: usize, cache: &mut Cache) -> Vec<f64> {
        let input = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = self.model.forward(&input, pos, cache).unwrap();
        logits
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    }

    /// Logits at every position, `[ids.len() * vocab]`, fed one token at a time through the cache.
    pub fn logits_all(&self, ids: &[u32]) -> Vec<f64> {
        let mut cache = self.cache();
        ids.iter()
            .enumerate()
            .flat_map(|(p, id)| self.run(&[*id], p, &mut cache))
            .collect()
    }

    /// Logits at the last position of one forward pass over `ids`.
    pub fn logits_last(&self, ids: &[u32]) -> Vec<f64> {
        self.run(ids, 0, &mut self.cache())
    }

    /// Greedy continuation of `prompt` by `n` tokens.
    pub fn greedy(&self, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut cache = self.cache();
        let mut logits = self.run(prompt, 0, &mut cache);
        let mut out = vec![];
        for i in 0..n {
            let next = argmax(&logits);
            out.push(next);
            logits = self.run(&[next], prompt.len() + i, &mut cache);
        }
        out
    }
}

pub fn argmax(v: &[f64]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
