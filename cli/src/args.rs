//! Arguments shared by several subcommands.

use clap::Args as ClapArgs;
use std::path::PathBuf;
use yangtuo::api::{Params, Stop};
use yangtuo::{
    BackendChoice, Error, GenerateOptions, LoadOptions, Result, SamplingParams, WeightFormat,
};

#[derive(ClapArgs, Debug, Clone)]
pub struct ModelArgs {
    /// A model folder (config.json + *.safetensors + tokenizer), a .gguf file, or a Hugging Face
    /// repo id: `owner/name` (safetensors) or `owner/name:Q4_K_M` (one GGUF file of the repo),
    /// downloaded into the Hugging Face cache (HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// auto | wgpu | cuda | cpu (default: $YANGTUO_BACKEND, else auto).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Quantize f16/bf16/f32 weights while loading: q4_0 | q8_0 | q4_k.
    #[arg(long)]
    pub quantize: Option<String>,
    /// Context length (KV cache positions); default min(trained context, 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// How the KV cache stores keys and values: auto | f16 | f32. auto: f16 on a GPU that
    /// computes in f16 (wgpu with shader-f16), else f32; f16 halves the cache.
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: String,
    /// A jinja template that describes a request's `tools` in the system prompt (README,
    /// "Tool calls"; it gets `system`, `tools` and `tool_choice`).
    #[arg(long)]
    pub tool_template: Option<PathBuf>,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the answer inside this JSON Schema (a file), as `response_format: json_schema`.
    #[arg(long, conflicts_with = "grammar")]
    pub json_schema: Option<PathBuf>,
    /// Keep the answer inside this grammar (a file, llguidance's Lark dialect).
    #[arg(long)]
    pub grammar: Option<PathBuf>,
}

impl SamplingArgs {
    /// Generation options through core's one check of a request (`Params::check`), over
    /// `base` for the flags left out (chat uses Meta's 0.6/0.9, generate greedy).
    pub fn options(
        &self,
        base: &SamplingParams,
        max_tokens: usize,
        stop: Vec<String>,
    ) -> Result<GenerateOptions> {
        let seed = self.seed.map(|s| {
            i64::try_from(s).map_err(|_| Error::arg("seed", format!("must be below 2^63, got {s}")))
        });
        let params = Params {
            // a cap: anything past i64 is "no cap" (the context bounds it)
            max_tokens: Some(i64::try_from(max_tokens).unwrap_or(i64::MAX)),
            temperature: self.temperature.map(f64::from),
            top_p: self.top_p.map(f64::from),
            top_k: self.top_k.map(|k| k as i64),
            min_p: self.min_p.map(f64::from),
            repetition_penalty: self.repetition_penalty.map(f64::from),
            seed: seed.transpose()?,
            stop: Some(Stop::Many(stop)),
            response_format: self
                .json_schema
                .as_deref()
                .map(json_schema_format)
                .transpose()?,
            grammar: self
                .grammar
                .as_deref()
                .map(|p| std::fs::read_to_string(p).map_err(|e| Error::io(p, e)))
                .transpose()?,
            ..Params::default()
        };
        Ok(params.check(base)?.opts)
    }
}

/// `response_format` for the JSON Schema in the file at `path`.
fn json_schema_format(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::arg(
            "json_schema",
            format!("{} is not JSON: {e}", path.display()),
        )
    })?;
    Ok(serde_json::json!({"type": "json_schema", "json_schema": {"name": "cli", "schema": schema}}))
}

/// A `--type` / `--quantize` name (core's `FromStr`), an error naming `arg`.
pub fn parse_format(s: &str, arg: &'static str) -> Result<WeightFormat> {
    s.parse::<WeightFormat>().map_err(|e| match e {
        Error::InvalidArg { msg, .. } => Error::arg(arg, msg),
        other => other,
    })
}

impl ModelArgs {
    pub fn load_options(&self, template: Option<String>) -> Result<LoadOptions> {
        Ok(LoadOptions {
            backend: self.backend.parse::<BackendChoice>()?,
            template,
            quantize: self
                .quantize
                .as_deref()
                .map(|q| parse_format(q, "quantize"))
                .transpose()?,
            ctx_len: self.ctx,
            kv_cache_dtype: yangtuo::parse_kv_dtype(&self.kv_cache_dtype)?,
            tool_template: self
                .tool_template
                .as_deref()
                .map(|p| std::fs::read_to_string(p).map_err(|e| Error::io(p, e)))
                .transpose()?,
            ..LoadOptions::default()
        })
    }
}

/// "1,5,9" → [1, 5, 9]
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| Error::arg("ids", format!("`{t}` is not a token id")))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|v| {
            if v.is_empty() {
                Err(Error::arg("ids", "no ids given"))
            } else {
                Ok(v)
            }
        })
}
