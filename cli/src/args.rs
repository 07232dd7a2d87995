//! Arguments shared by several subcommands.

use clap::Args as ClapArgs;
use std::path::PathBuf;
use yangtuo::{BackendChoice, Error, LoadOptions, Result, SamplingParams, WeightFormat};

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
}

impl SamplingArgs {
    /// Sampling parameters over `base` (which differs: chat uses Meta's 0.6/0.9, generate greedy).
    pub fn params(&self, base: SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_p: self.top_p.unwrap_or(base.top_p),
            top_k: self.top_k.or(base.top_k),
            min_p: self.min_p.or(base.min_p),
            repetition_penalty: self.repetition_penalty.or(base.repetition_penalty),
            seed: self.seed.or(base.seed),
        }
    }
}

pub fn parse_format(s: &str) -> Result<WeightFormat> {
    match s.to_ascii_lowercase().as_str() {
        "q4_0" => Ok(WeightFormat::Q4_0),
        "q4_1" => Ok(WeightFormat::Q4_1),
        "q8_0" => Ok(WeightFormat::Q8_0),
        "q4_k" | "q4_k_m" | "q4k" => Ok(WeightFormat::Q4K),
        "q6_k" | "q6k" => Ok(WeightFormat::Q6K),
        "f16" => Ok(WeightFormat::F16),
        other => Err(Error::arg("type", format!("unknown type `{other}` (q4_0, q8_0, q4_k)"))),
    }
}

impl ModelArgs {
    pub fn load_options(&self, template: Option<String>) -> Result<LoadOptions> {
        Ok(LoadOptions {
            backend: self.backend.parse::<BackendChoice>()?,
            template,
            quantize: self.quantize.as_deref().map(parse_format).transpose()?,
            ctx_len: self.ctx,
            ..LoadOptions::default()
        })
    }
}

/// "1,5,9" → [1, 5, 9]
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| Error::arg("ids", format!("`{t}` is not a token id"))))
        .collect::<Result<Vec<_>>>()
        .and_then(|v| if v.is_empty() { Err(Error::arg("ids", "no ids given")) } else { Ok(v) })
}
