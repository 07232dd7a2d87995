//! Model hyperparameters. `HfConfig` mirrors a Hugging Face `config.json`; `Config` is the
//! plain description the engine runs on. GGUF metadata is mapped into the same `Config`.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// How rotary position embeddings stretch past the trained context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions are divided by `factor` (Position Interpolation).
    Linear {
        factor: f64,
    },
    /// NTK-aware: once the sequence exceeds `original_max`, the base grows with it
    /// (transformers' `dynamic` rope type, used to stretch Llama 2 from 4K to 32K).
    Dynamic {
        factor: f64,
        original_max: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for (`max_position_embeddings`).
    pub max_seq_len: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_embeddings: bool,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
}

impl Config {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Rotary inverse frequencies for a forward pass whose sequence reaches `seq_len` tokens.
    pub fn rope_inv_freq(&self, seq_len: usize) -> Vec<f64> {
        let d = self.head_dim as f64;
        let (base, div) = match self.rope_scaling {
            RopeScaling::None => (self.rope_theta, 1.0),
            RopeScaling::Linear { factor } => (self.rope_theta, factor),
            RopeScaling::Dynamic {
                factor,
                original_max,
            } => {
                let s = seq_len.max(original_max) as f64;
                let grow = factor * s / original_max as f64 - (factor - 1.0);
                (self.rope_theta * grow.powf(d / (d - 2.0)), 1.0)
            }
        };
        (0..self.head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / d) / div)
            .collect()
    }

    /// `[n, head_dim/2, 2]` table of (cos, sin) for positions `pos..pos+n`, computed in f64.
    pub fn rope_table(&self, pos: usize, n: usize) -> Vec<f32> {
        let inv_freq = self.rope_inv_freq(pos + n);
        let mut t = Vec::with_capacity(n * inv_freq.len() * 2);
        for p in pos..pos + n {
            for f in &inv_freq {
                let a = p as f64 * f;
                t.push(a.cos() as f32);
                t.push(a.sin() as f32);
            }
        }
        t
    }

    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::load(origin, m));
        for (name, v) in [
            ("hidden_size", self.dim),
            ("intermediate_size", self.hidden_dim),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 || self.head_dim > 256 {
            return bad(format!(
                "head_dim {} must be even and at most 256",
                self.head_dim
            ));
        }
        // what any real Llama is within, so that a hostile file cannot ask for terabytes
        for (name, v, max) in [
            ("hidden_size", self.dim, 1 << 16),
            ("intermediate_size", self.hidden_dim, 1 << 18),
            ("num_hidden_layers", self.n_layers, 1024),
            ("num_attention_heads", self.n_heads, 1024),
            ("num_key_value_heads", self.n_kv_heads, 1024),
            ("vocab_size", self.vocab_size, 1 << 20),
            ("max_position_embeddings", self.max_seq_len, 1 << 24),
        ] {
            if v > max {
                return bad(format!("{name} is {v}; no Llama has more than {max}"));
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return bad(format!(
                "rms_norm_eps must be in (0, 1), got {}",
                self.norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta <= 1e12) {
            return bad(format!(
                "rope_theta must be in (0, 1e12], got {}",
                self.rope_theta
            ));
        }
        match self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. }
                if !(factor >= 1.0 && factor <= 1024.0) =>
            {
                return bad(format!(
                    "rope_scaling.factor must be in [1, 1024], got {factor}"
                ));
            }
            RopeScaling::Dynamic {
                original_max: 0, ..
            } => {
                return bad(
                    "rope_scaling.original_max_position_embeddings must be positive".into(),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// The subset of a Hugging Face `config.json` that a Llama model uses.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
    pub hidden_act: Option<String>,
}

fn default_max_pos() -> usize {
    4096
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = crate::files::read_text(path, crate::files::JSON_CAP)?;
        Self::from_json(&text, path)
    }

    /// Parse the text of a config.json; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Config> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| Error::load(path, format!("not a valid Llama config.json: {e}")))?;
        hf.into_config(path)
    }

    pub fn into_config(self, path: &Path) -> Result<Config> {
        match self.model_type.as_deref() {
            Some("llama") | None => {}
            Some(other) => {
                return Err(Error::load(
                    path,
                    format!("unsupported model_type `{other}`: yangtuo runs `llama` models"),
                ));
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(Error::load(
                    path,
                    format!("unsupported hidden_act `{act}` (expected silu)"),
                ));
            }
        }
        let rope_scaling =
            parse_rope_scaling(self.rope_scaling.as_ref(), self.max_position_embeddings)
                .map_err(|m| Error::load(path, m))?;
        let eos_ids = match &self.eos_token_id {
            None => vec![2],
            Some(serde_json::Value::Number(n)) => vec![n.as_u64().unwrap_or(2) as u32],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            Some(_) => return Err(Error::load(path, "eos_token_id must be a number or a list")),
        };
        if self.num_attention_heads == 0 {
            return Err(Error::load(path, "num_attention_heads must be positive"));
        }
        let cfg = Config {
            dim: self.hidden_size,
            hidden_dim: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads),
            vocab_size: self.vocab_size,
            max_seq_len: self.max_position_embeddings,
            norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            tie_embeddings: self.tie_word_embeddings,
            bos_id: Some(self.bos_token_id.unwrap_or(1)),
            eos_ids,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

/// `rope_scaling` as transformers writes it: `{"type"|"rope_type": "linear"|"dynamic", "factor": f}`.
pub fn parse_rope_scaling(
    v: Option<&serde_json::Value>,
    max_pos: usize,
) -> Result<RopeScaling, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|k| k.as_str())
        .unwrap_or("default");
    let factor = v.get("factor").and_then(|f| f.as_f64());
    let need_factor = || match factor {
        Some(f) if f >= 1.0 => Ok(f),
        _ => Err(format!(
            "rope_scaling `{kind}` needs a factor >= 1, got {v}"
        )),
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: need_factor()?,
        }),
        "dynamic" => {
            let original_max = v
                .get("original_max_position_embeddings")
                .and_then(|m| m.as_u64())
                .map(|m| m as usize)
                .unwrap_or(max_pos);
            Ok(RopeScaling::Dynamic {
                factor: need_factor()?,
                original_max,
            })
        }
        other => Err(format!(
            "unsupported rope_scaling type `{other}` (supported: linear, dynamic)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling) -> Config {
        Config {
            dim: 64,
            hidden_dim: 128,
            n_layers: 1,
            n_heads: 4,
            n_kv_heads: 4,
            head_dim: 16,
            vocab_size: 10,
            max_seq_len: 32,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: scaling,
            tie_embeddings: false,
            bos_id: Some(1),
            eos_ids: vec![2],
        }
    }

    #[test]
    fn dynamic_ntk_only_grows_past_the_trained_context() {
        let plain = cfg(RopeScaling::None).rope_inv_freq(64);
        let dynamic = cfg(RopeScaling::Dynamic {
            factor: 4.0,
            original_max: 32,
        });
        assert_eq!(dynamic.rope_inv_freq(32), plain);
        // Past 32 tokens the base grows, so the lowest frequencies shrink.
        assert!(dynamic.rope_inv_freq(64)[7] < plain[7]);
        assert_eq!(dynamic.rope_inv_freq(64)[0], 1.0);
    }

    #[test]
    fn rope_scaling_parses_both_key_spellings() {
        let v: serde_json::Value = serde_json::json!({"type": "linear", "factor": 2.0});
        assert_eq!(
            parse_rope_scaling(Some(&v), 4096),
            Ok(RopeScaling::Linear { factor: 2.0 })
        );
        let v: serde_json::Value = serde_json::json!({"rope_type": "dynamic", "factor": 8.0});
        assert_eq!(
            parse_rope_scaling(Some(&v), 4096),
            Ok(RopeScaling::Dynamic {
                factor: 8.0,
                original_max: 4096
            })
        );
        let v: serde_json::Value = serde_json::json!({"type": "yarn", "factor": 8.0});
        assert!(parse_rope_scaling(Some(&v), 4096).is_err());
    }
}
