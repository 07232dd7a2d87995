//! A llama model in GGUF, both ways. Reading: [`GgufFile::config`] takes the hyperparameters
//! from the `llama.*` keys (with llama.cpp's defaults where a key is optional) and
//! [`GgufFile::weight`] finds a [`TensorId`]'s tensor under its llama.cpp name
//! ([`TensorId::gguf_name`]), checking its dims. Writing: [`GgufWriter::llama`] sets the
//! same keys with the value types llama.cpp requires, [`GgufTensorSpec::weight`] names and
//! sizes each tensor, [`llama_file_type`] gives `general.file_type`, and
//! [`permute_rows_for_gguf`] puts Q and K rows in the order llama.cpp's converter does
//! (which is why GGUF models use [`RopeStyle::Interleaved`]). The vocabulary is in `vocab.rs`.

use super::{GgufFile, GgufTensorSpec, GgufTokenizer, GgufValue, GgufWriter};
use crate::config::RopeScaling;
use crate::weights::{Blob, LayerTensor, RopeStyle, TensorId, WeightData, WeightFormat};
use crate::{Config, Error, Result};
use std::path::Path;

/// llama.cpp's `llama_ftype` values for `general.file_type`.
pub mod file_type {
    pub const ALL_F32: u32 = 0;
    pub const MOSTLY_F16: u32 = 1;
    pub const MOSTLY_Q4_0: u32 = 2;
    pub const MOSTLY_Q4_1: u32 = 3;
    pub const MOSTLY_Q8_0: u32 = 7;
    pub const MOSTLY_Q4_K_S: u32 = 14;
    pub const MOSTLY_Q4_K_M: u32 = 15;
    pub const MOSTLY_Q6_K: u32 = 18;
    pub const MOSTLY_BF16: u32 = 32;
}

/// `general.file_type` for a model whose large matrices are mostly `format`.
pub fn llama_file_type(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::F32 => file_type::ALL_F32,
        WeightFormat::F16 => file_type::MOSTLY_F16,
        WeightFormat::BF16 => file_type::MOSTLY_BF16,
        WeightFormat::Q8_0 => file_type::MOSTLY_Q8_0,
        WeightFormat::Q4_0 => file_type::MOSTLY_Q4_0,
        WeightFormat::Q4_1 => file_type::MOSTLY_Q4_1,
        WeightFormat::Q4K => file_type::MOSTLY_Q4_K_M,
        WeightFormat::Q6K => file_type::MOSTLY_Q6_K,
        // not a ggml type; `GgufTensorSpec::weight` refuses it, so no file is ever written
        WeightFormat::Gptq4 => file_type::MOSTLY_Q4_1,
    }
}

impl GgufFile {
    /// How RoPE pairs dimensions in this file's Q and K: llama.cpp's converter permutes
    /// their rows so rotary pairs are adjacent.
    pub fn rope_style(&self) -> RopeStyle {
        RopeStyle::Interleaved
    }

    fn type_err(&self, key: &str, want: &str, v: &GgufValue) -> Error {
        self.err(format!(
            "metadata `{key}` should be {want}, found {}",
            v.type_description()
        ))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a non-negative integer", v)),
        }
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u32()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a u32", v)),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a float", v)),
        }
    }

    /// The model's hyperparameters, from the `llama.*` and `tokenizer.ggml.*` keys.
    pub fn config(&self) -> Result<Config> {
        let arch = match self.get("general.architecture") {
            Some(GgufValue::String(s)) => s.as_str(),
            Some(v) => return Err(self.type_err("general.architecture", "a string", v)),
            None => {
                return Err(self
                    .err("metadata key `general.architecture` is missing; is this a model file?"));
            }
        };
        if arch != "llama" {
            return Err(self.err(format!(
                "unsupported architecture `{arch}` (general.architecture): yangtuo runs `llama` models"
            )));
        }
        let dim = self.req_usize("llama.embedding_length")?;
        let n_heads = self.req_usize("llama.attention.head_count")?;
        if n_heads == 0 {
            return Err(self.err("`llama.attention.head_count` must be positive"));
        }
        let n_kv_heads = self
            .opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(n_heads);
        let key_length = self.opt_usize("llama.attention.key_length")?;
        let rot = self.opt_usize("llama.rope.dimension_count")?;
        let head_dim = key_length.or(rot).unwrap_or(dim / n_heads);
        if let Some(r) = rot {
            if r != head_dim {
                return Err(self.err(format!(
                    "`llama.rope.dimension_count` is {r} but heads are {head_dim} wide: partial rotary \
                     embeddings are not supported"
                )));
            }
        }
        let norm_eps = self
            .opt_f64("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| {
                self.err("metadata key `llama.attention.layer_norm_rms_epsilon` is missing")
            })?;
        let rope_theta = self.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0);
        let rope_scaling = self.rope_scaling()?;
        let vocab_size = match self.opt_usize("llama.vocab_size")? {
            Some(v) => v,
            None => match self.get_array("tokenizer.ggml.tokens") {
                Some(a) => a.len(),
                None => match self.tensor_info("token_embd.weight") {
                    Some(t) if t.dims.len() >= 2 => usize::try_from(t.dims[1]).map_err(|_| {
                        self.err("tensor `token_embd.weight` has an absurd row count")
                    })?,
                    _ => {
                        return Err(self.err(
                            "cannot tell the vocabulary size: no `llama.vocab_size`, no `tokenizer.ggml.tokens` \
                             and no 2-D `token_embd.weight`",
                        ));
                    }
                },
            },
        };
        let hidden_dim = self.req_usize("llama.feed_forward_length")?;
        let n_layers = self.req_usize("llama.block_count")?;
        // Each layer has 9 tensors; a corrupt count must not size allocations downstream.
        if n_layers.saturating_mul(LayerTensor::ALL.len()) > self.tensors().len() {
            return Err(self.err(format!(
                "`llama.block_count` says {n_layers} layers, but the file holds only {} tensors",
                self.tensors().len()
            )));
        }
        // Keep every matrix size far from overflow, so shape arithmetic downstream is safe.
        // (1 << 48 on 64-bit; on 32-bit wasm, what the address space allows)
        const LIMIT: usize = if usize::BITS >= 64 {
            1 << (usize::BITS - 16)
        } else {
            usize::MAX >> 1
        };
        let sane = [
            n_heads.checked_mul(head_dim),
            n_kv_heads.checked_mul(head_dim),
            n_heads
                .checked_mul(head_dim)
                .and_then(|q| q.checked_mul(dim)),
            vocab_size.checked_mul(dim),
            hidden_dim.checked_mul(dim),
        ]
        .iter()
        .all(|p| p.is_some_and(|p| p <= LIMIT));
        if !sane {
            return Err(self.err(format!(
                "absurd model dimensions (dim {dim}, heads {n_heads}×{head_dim}, kv heads {n_kv_heads}, \
                 feed-forward {hidden_dim}, vocab {vocab_size}); the file is corrupt"
            )));
        }
        let cfg = Config {
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            max_seq_len: self.req_usize("llama.context_length")?,
            norm_eps,
            rope_theta,
            rope_scaling,
            tie_embeddings: self.tensor_info("output.weight").is_none(),
            bos_id: Some(self.opt_u32("tokenizer.ggml.bos_token_id")?.unwrap_or(1)),
            eos_ids: vec![self.opt_u32("tokenizer.ggml.eos_token_id")?.unwrap_or(2)],
        };
        cfg.validate(self.path())?;
        Ok(cfg)
    }

    fn rope_scaling(&self) -> Result<RopeScaling> {
        let factor = |f: f64| -> Result<RopeScaling> {
            // llama.cpp reads a factor of 0 (or none) as "no scaling".
            if f == 0.0 || f == 1.0 {
                Ok(RopeScaling::None)
            } else if f.is_finite() && f > 0.0 {
                Ok(RopeScaling::Linear { factor: f })
            } else {
                Err(self.err(format!(
                    "`llama.rope.scaling.factor` must be positive, found {f}"
                )))
            }
        };
        match self.get("llama.rope.scaling.type") {
            None => match self.opt_f64("llama.rope.scale_linear")? {
                // The key older converters wrote.
                Some(f) => factor(f),
                None => Ok(RopeScaling::None),
            },
            Some(GgufValue::String(kind)) => match kind.as_str() {
                "none" => Ok(RopeScaling::None),
                "linear" => factor(self.opt_f64("llama.rope.scaling.factor")?.unwrap_or(0.0)),
                other => Err(self.err(format!(
                    "unsupported rope scaling `{other}` (llama.rope.scaling.type); supported: none, linear"
                ))),
            },
            Some(v) => Err(self.type_err("llama.rope.scaling.type", "a string", v)),
        }
    }

    /// One model tensor, checked against `config`'s shape, as stored.
    pub fn weight(&self, id: TensorId, config: &Config) -> Result<WeightData> {
        self.weight_from(id, config, None)
    }

    /// As `weight`, with the tensor's bytes supplied by the caller (a streamed download)
    /// instead of read from the file.
    pub fn weight_from(
        &self,
        id: TensorId,
        config: &Config,
        bytes: Option<Blob>,
    ) -> Result<WeightData> {
        let name = format!("{}.weight", id.gguf_name());
        let t = self
            .tensor_info(&name)
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        let format = t.format().ok_or_else(|| {
            self.err(format!(
                "tensor `{name}` has type {}, which yangtuo does not support (supported: F32, F16, BF16, \
                 Q8_0, Q4_0, Q4_1, Q4_K, Q6_K); re-quantize the model to one of these",
                t.type_name()
            ))
        })?;
        // llama.cpp writes norms as F32 (F16 at most); a quantized norm is a relabelled tensor
        if id.is_vector() && !matches!(format, WeightFormat::F32 | WeightFormat::F16) {
            return Err(self.err(format!(
                "tensor `{name}` is a norm stored as {format:?}; norms are F32 or F16"
            )));
        }
        let [rows, cols] = id.expected_shape(config);
        let want: Vec<u64> = if id.is_vector() {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        // As llama.cpp does, missing trailing dims count as 1.
        let n = t.dims.len().max(want.len());
        let same = (0..n)
            .all(|i| t.dims.get(i).copied().unwrap_or(1) == want.get(i).copied().unwrap_or(1));
        if !same {
            return Err(self.err(format!(
                "tensor `{name}` has dims {:?} but the metadata implies {want:?} (GGUF order: columns first)",
                t.dims
            )));
        }
        let bytes = match bytes {
            Some(b) => b,
            None => self.tensor_bytes(&name)?,
        };
        WeightData::new(format, rows, cols, bytes, &name)
    }
}

impl GgufTensorSpec {
    /// The llama.cpp name, dims and size of model tensor `id` stored as `format`.
    pub fn weight(id: TensorId, format: WeightFormat, config: &Config) -> Result<Self> {
        let name = format!("{}.weight", id.gguf_name());
        if !format.is_ggml() {
            return Err(Error::load(
                &name,
                format!("{format:?} is not a ggml type and cannot be written to GGUF"),
            ));
        }
        let [rows, cols] = id.expected_shape(config);
        let n_bytes = (format.row_bytes(cols, &name)? * rows) as u64;
        let dims = if id.is_vector() {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        Ok(GgufTensorSpec {
            name,
            dims,
            ggml_type: format.ggml_type(),
            n_bytes,
        })
    }
}

impl GgufWriter {
    /// Metadata of a llama model, with llama.cpp's key names and value types (u32 for
    /// integers, f32 for floats, as llama.cpp requires). `file_type` is a `llama_ftype`
    /// (see [`llama_file_type`]). A vocabulary shorter than `vocab_size` is padded with
    /// `[PAD{id}]` tokens as llama.cpp's converter does.
    pub fn llama(
        config: &Config,
        name: &str,
        file_type: u32,
        tokenizer: Option<GgufTokenizer>,
        chat_template: Option<&str>,
    ) -> Result<Self> {
        let c = config;
        let origin = Path::new(if name.is_empty() { "gguf" } else { name });
        let u32_of = |what: &str, v: usize| {
            u32::try_from(v)
                .map_err(|_| Error::load(origin, format!("{what} {v} does not fit GGUF's u32")))
        };
        let mut w = GgufWriter::new();
        w.set("general.architecture", "llama");
        if !name.is_empty() {
            w.set("general.name", name);
        }
        w.set("general.file_type", file_type);
        w.set("general.quantization_version", 2u32);
        w.set("llama.vocab_size", u32_of("vocab_size", c.vocab_size)?);
        w.set(
            "llama.context_length",
            u32_of("context length", c.max_seq_len)?,
        );
        w.set("llama.embedding_length", u32_of("dim", c.dim)?);
        w.set("llama.block_count", u32_of("n_layers", c.n_layers)?);
        w.set(
            "llama.feed_forward_length",
            u32_of("hidden_dim", c.hidden_dim)?,
        );
        w.set(
            "llama.rope.dimension_count",
            u32_of("head_dim", c.head_dim)?,
        );
        w.set("llama.attention.head_count", u32_of("n_heads", c.n_heads)?);
        w.set(
            "llama.attention.head_count_kv",
            u32_of("n_kv_heads", c.n_kv_heads)?,
        );
        if c.n_heads == 0 || c.head_dim != c.dim / c.n_heads {
            w.set(
                "llama.attention.key_length",
                u32_of("head_dim", c.head_dim)?,
            );
            w.set(
                "llama.attention.value_length",
                u32_of("head_dim", c.head_dim)?,
            );
        }
        w.set("llama.attention.layer_norm_rms_epsilon", c.norm_eps as f32);
        w.set("llama.rope.freq_base", c.rope_theta as f32);
        match c.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                w.set("llama.rope.scaling.type", "linear");
                w.set("llama.rope.scaling.factor", factor as f32);
            }
            RopeScaling::Dynamic { .. } => {
                return Err(Error::load(
                    origin,
                    "dynamic NTK rope scaling has no GGUF equivalent (llama.cpp knows none, linear and yarn); \
                     export the model without rope_scaling, or with linear scaling",
                ));
            }
        }
        w.set(
            "tokenizer.ggml.model",
            tokenizer
                .as_ref()
                .map(|t| t.model.as_str())
                .unwrap_or("llama"),
        );
        let bos = tokenizer.as_ref().and_then(|t| t.bos_id).or(c.bos_id);
        let eos = tokenizer
            .as_ref()
            .and_then(|t| t.eos_id)
            .or(c.eos_ids.first().copied());
        if let Some(t) = tokenizer {
            let n = t.tokens.len();
            if n > c.vocab_size {
                return Err(Error::load(
                    origin,
                    format!(
                        "the tokenizer has {n} tokens but the model's vocab_size is {}",
                        c.vocab_size
                    ),
                ));
            }
            for (what, len) in [
                ("scores", t.scores.as_ref().map(|s| s.len())),
                ("token types", t.token_types.as_ref().map(|s| s.len())),
            ] {
                if let Some(len) = len {
                    if len != n {
                        return Err(Error::load(
                            origin,
                            format!("the tokenizer has {n} tokens but {len} {what}"),
                        ));
                    }
                }
            }
            let mut tokens = t.tokens;
            let mut scores = t.scores.unwrap_or_else(|| vec![0.0; n]);
            let mut types = t.token_types.unwrap_or_else(|| vec![1; n]);
            for id in n..c.vocab_size {
                tokens.push(format!("[PAD{id}]"));
                scores.push(-1000.0);
                types.push(5);
            }
            w.set("tokenizer.ggml.tokens", tokens);
            w.set("tokenizer.ggml.scores", scores);
            w.set("tokenizer.ggml.token_type", types);
            w.set("tokenizer.ggml.unknown_token_id", t.unk_id.unwrap_or(0));
            if let Some(p) = t.pad_id {
                w.set("tokenizer.ggml.padding_token_id", p);
            }
            if let Some(b) = t.add_bos {
                w.set("tokenizer.ggml.add_bos_token", b);
            }
            if let Some(b) = t.add_eos {
                w.set("tokenizer.ggml.add_eos_token", b);
            }
        }
        if let Some(b) = bos {
            w.set("tokenizer.ggml.bos_token_id", b);
        }
        if let Some(e) = eos {
            w.set("tokenizer.ggml.eos_token_id", e);
        }
        if let Some(t) = chat_template {
            w.set("tokenizer.chat_template", t);
        }
        Ok(w)
    }
}

/// Reorder the rows of a Hugging Face Q or K matrix (`n_head × head_dim` rows of
/// `row_bytes` bytes each) the way llama.cpp's converter does:
/// `w.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2).reshape(rows, cols)`, so the
/// rotary pair `(i, i + head_dim/2)` becomes rows `(2i, 2i+1)`. For K, `n_head` is the
/// number of KV heads. Whole rows move, so any block format works.
///
/// Panics if `rows_bytes` is not `n_head * head_dim * row_bytes` long or `head_dim` is odd.
pub fn permute_rows_for_gguf(
    rows_bytes: &[u8],
    row_bytes: usize,
    n_head: usize,
    head_dim: usize,
) -> Vec<u8> {
    assert!(head_dim % 2 == 0, "head_dim {head_dim} must be even");
    assert_eq!(
        rows_bytes.len(),
        n_head * head_dim * row_bytes,
        "Q/K matrix size does not match its heads"
    );
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(rows_bytes.len());
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + j * half + i;
                out.extend_from_slice(&rows_bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::weights::gguf::fixtures::*;

    #[test]
    fn permute_matches_llama_cpp_reshape() {
        // w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols), one byte per row.
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(
            permute_rows_for_gguf(&rows, 1, 2, 4),
            vec![0, 2, 1, 3, 4, 6, 5, 7]
        );
        assert_eq!(
            permute_rows_for_gguf(&rows, 1, 1, 8),
            vec![0, 4, 1, 5, 2, 6, 3, 7]
        );
        let wide: Vec<u8> = (0..16).collect();
        assert_eq!(
            permute_rows_for_gguf(&wide, 2, 2, 4),
            vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
        );
    }

    #[test]
    fn unsupported_tensor_types_are_named() {
        let cfg = tiny_config();
        let (w, mut specs, mut datas) = tiny_model();
        let i = specs
            .iter()
            .position(|s| s.name == "blk.0.attn_q.weight")
            .unwrap();
        specs[i].ggml_type = 13; // Q5_K: 176 bytes per 256 weights
        specs[i].n_bytes = 256 * 256 / 256 * 176;
        datas[i] = vec![0; specs[i].n_bytes as usize];
        let f = parse(&to_bytes(&w, &specs, &datas)).unwrap();
        let e = weight_err(f.weight(TensorId::Layer(0, LayerTensor::Wq), &cfg));
        assert!(
            e.contains("blk.0.attn_q.weight") && e.contains("Q5_K"),
            "{e}"
        );
        // ModelFiles-level config still loads; other tensors still work.
        assert!(f.weight(TensorId::Layer(0, LayerTensor::Wk), &cfg).is_ok());

        // A type id ggml does not define: parsed, but refused on use.
        let mut b = to_bytes(&w, &specs, &datas);
        let at = offset_field(&b, "blk.0.attn_q.weight", 2) - 4;
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        let f = parse(&b).unwrap();
        let e = weight_err(f.weight(TensorId::Layer(0, LayerTensor::Wq), &cfg));
        assert!(
            e.contains("blk.0.attn_q.weight") && e.contains("type 99"),
            "{e}"
        );
    }

    #[test]
    fn config_errors_are_clear() {
        let cfg = tiny_config();
        let (w, specs, datas) = tiny_model();
        let with = |f: &dyn Fn(&mut GgufWriter)| {
            let mut w = w.clone();
            f(&mut w);
            parse(&to_bytes(&w, &specs, &datas)).unwrap().config()
        };
        let e = with(&|w| {
            w.set("general.architecture", "falcon");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported architecture `falcon`"), "{e}");
        let e = with(&|w| {
            w.set("llama.rope.scaling.type", "yarn");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported rope scaling `yarn`"), "{e}");
        let e = with(&|w| {
            w.remove("llama.block_count");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("`llama.block_count` is missing"), "{e}");
        let e = with(&|w| {
            w.set("llama.embedding_length", "big");
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`llama.embedding_length` should be a non-negative integer, found STRING"),
            "{e}"
        );
        let e = with(&|w| {
            w.set("llama.attention.head_count", 1u64 << 60);
            w.set("llama.attention.head_count_kv", 1u64 << 60);
            w.remove("llama.rope.dimension_count");
            w.set("llama.attention.key_length", 64u32);
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("absurd"), "{e}");
        let e = with(&|w| {
            w.set("llama.block_count", 1u64 << 40);
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("1099511627776 layers"), "{e}");
        // Defaults: no kv head count, no freq base, no scaling, vocab from the tokens.
        let c = with(&|w| {
            w.remove("llama.attention.head_count_kv");
            w.remove("llama.rope.freq_base");
            w.remove("llama.rope.scaling.type");
            w.remove("llama.rope.scaling.factor");
            w.remove("llama.vocab_size");
            w.remove("llama.rope.dimension_count");
            w.remove("tokenizer.ggml.bos_token_id");
        })
        .unwrap();
        assert_eq!(
            (c.n_kv_heads, c.rope_theta, c.rope_scaling),
            (4, 10000.0, RopeScaling::None)
        );
        assert_eq!((c.vocab_size, c.head_dim, c.bos_id), (32, 64, Some(1)));
        // Tied embeddings: no output.weight.
        let n = specs.len() - 1;
        assert_eq!(specs[n].name, "output.weight");
        let f = parse(&to_bytes(&w, &specs[..n], &datas[..n])).unwrap();
        assert!(f.config().unwrap().tie_embeddings);
        // Shapes are checked against the metadata.
        let mut w2 = w.clone();
        w2.set("llama.vocab_size", 31u32);
        let f = parse(&to_bytes(&w2, &specs, &datas)).unwrap();
        let c2 = f.config().unwrap();
        let e = weight_err(f.weight(TensorId::Embed, &c2));
        assert!(
            e.contains("token_embd.weight") && e.contains("[256, 32]") && e.contains("[256, 31]"),
            "{e}"
        );
        let f = parse(&to_bytes(&w, &specs, &datas)).unwrap();
        let e = weight_err(f.weight(TensorId::Layer(3, LayerTensor::Wq), &cfg));
        assert!(e.contains("`blk.3.attn_q.weight` is missing"), "{e}");
        // Dynamic NTK scaling cannot be written.
        let mut dynamic = cfg.clone();
        dynamic.rope_scaling = RopeScaling::Dynamic {
            factor: 8.0,
            original_max: 4096,
        };
        assert!(GgufWriter::llama(&dynamic, "x", 1, None, None).is_err());
    }
}
