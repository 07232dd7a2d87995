//! The JavaScript shapes of arguments and results (camelCase in JS), and their checked
//! conversion to and from the engine's types. Bad values are `INVALID_ARG` errors.

use crate::errors::Failure;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use yangtuo::{BackendChoice, SamplingParams, WeightFormat};

type Checked<T> = std::result::Result<T, Failure>;

/// Convert a JavaScript argument, reporting a wrong type as `INVALID_ARG` on `name`.
pub fn from_js<T: FromNapiValue>(name: &'static str, v: Unknown<'_>) -> Checked<T> {
    unsafe { T::from_napi_value(v.value().env, v.raw()) }.map_err(|e| Failure::arg(name, e.reason))
}

/// A whole number in `min..=2^53`, or `None`.
fn whole(name: &'static str, v: Option<f64>, min: f64) -> Checked<Option<u64>> {
    match v {
        None => Ok(None),
        Some(x)
            if x.is_finite() && x.fract() == 0.0 && x >= min && x <= 9_007_199_254_740_992.0 =>
        {
            Ok(Some(x as u64))
        }
        Some(x) => Err(Failure::arg(
            name,
            format!("must be a whole number >= {min}, got {x}"),
        )),
    }
}

#[napi(object)]
pub struct ChatMessage {
    #[napi(ts_type = "'system' | 'user' | 'assistant'")]
    pub role: String,
    pub content: String,
}

impl From<ChatMessage> for yangtuo::Message {
    fn from(m: ChatMessage) -> Self {
        yangtuo::Message::new(&m.role, m.content)
    }
}

impl From<&yangtuo::Message> for ChatMessage {
    fn from(m: &yangtuo::Message) -> Self {
        ChatMessage {
            role: m.role.clone(),
            content: m.content.clone(),
        }
    }
}

#[napi(object)]
#[derive(Default)]
pub struct LoadOptions {
    /// `auto` (default: CUDA on an NVIDIA GPU with its driver and NVRTC, then a hardware
    /// GPU through wgpu, then the CPU; never a software adapter), `wgpu`, `cuda` or `cpu`.
    pub backend: Option<String>,
    /// Quantize f16/bf16/f32 weights while loading: `q4_0`, `q4_1`, `q8_0`, `q4_k`, `q6_k`.
    pub quantize: Option<String>,
    /// `llama2` or `llama2-chinese`; default: the model's own template, else `llama2`.
    pub template: Option<String>,
    /// KV cache length in tokens; default min(trained context, 4096).
    pub n_ctx: Option<f64>,
    /// How the KV cache stores keys and values: `auto` (default: f16 on a GPU that computes
    /// in f16, else f32), `f16` (half the memory) or `f32`.
    pub kv_cache_dtype: Option<String>,
    /// Tokens per prefill batch (default 512).
    pub max_batch: Option<f64>,
    /// Above 1: concurrent generations share each decode step (continuous batching).
    pub parallel: Option<f64>,
    /// A jinja template that describes a request's `tools` in the system prompt.
    pub tool_template: Option<String>,
}

impl LoadOptions {
    pub fn into_core(self) -> Checked<yangtuo::LoadOptions> {
        let mut o = yangtuo::LoadOptions::default();
        if let Some(b) = self.backend {
            o.backend = b.parse::<BackendChoice>()?;
        }
        o.quantize = self
            .quantize
            .as_deref()
            .map(str::parse::<WeightFormat>)
            .transpose()?;
        o.template = self.template;
        o.tool_template = self.tool_template;
        o.ctx_len = whole("nCtx", self.n_ctx, 1.0)?.map(|n| n as usize);
        if let Some(d) = self.kv_cache_dtype {
            o.kv_cache_dtype = yangtuo::parse_kv_dtype(&d)?;
        }
        if let Some(b) = whole("maxBatch", self.max_batch, 1.0)? {
            o.max_batch = b as usize;
        }
        if let Some(p) = whole("parallel", self.parallel, 1.0)? {
            o.parallel = p as usize;
        }
        Ok(o)
    }
}

#[napi(object)]
#[derive(Default)]
pub struct GenerateOptions {
    /// At most this many new tokens; default: until EOS or the end of the context.
    pub max_tokens: Option<f64>,
    /// 0 is greedy; default 0.6 (Meta's).
    pub temperature: Option<f64>,
    /// Default 0.9 (Meta's).
    pub top_p: Option<f64>,
    pub top_k: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<f64>,
    /// Stop before this string (or any of these); it is not part of the answer.
    pub stop: Option<Either<String, Vec<String>>>,
    /// Accept template control strings (`[INST]`, `<s>`, ...) inside message content.
    pub allow_control_tokens: Option<bool>,
    /// When the chat outgrows the context: `truncate-oldest` leaves out the oldest turns
    /// (a session's default), `error` fails with CONTEXT_LENGTH (a one-shot chat's default).
    #[napi(ts_type = "'truncate-oldest' | 'error'")]
    pub context_overflow: Option<String>,
}

impl GenerateOptions {
    /// Core's options, through core's one check of a request (`Params::check`, Meta's
    /// defaults for what is left out); only JavaScript's number types are read here.
    pub fn into_core(self) -> Checked<yangtuo::GenerateOptions> {
        let int = |name: &'static str, v: Option<f64>| -> Checked<Option<i64>> {
            match v {
                None => Ok(None),
                Some(x)
                    if x.is_finite() && x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_992.0 =>
                {
                    Ok(Some(x as i64))
                }
                Some(x) => Err(Failure::arg(
                    name,
                    format!("must be a whole number, got {x}"),
                )),
            }
        };
        let params = yangtuo::api::Params {
            max_tokens: int("maxTokens", self.max_tokens)?,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: int("topK", self.top_k)?,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: int("seed", self.seed)?,
            context_overflow: self.context_overflow,
            stop: self.stop.map(|s| match s {
                Either::A(one) => yangtuo::api::Stop::One(one),
                Either::B(many) => yangtuo::api::Stop::Many(many),
            }),
            ..Default::default()
        };
        let mut opts = params.check(&SamplingParams::default())?.opts;
        opts.allow_control_tokens = self.allow_control_tokens.unwrap_or(false);
        Ok(opts)
    }
}

#[napi(object)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[napi(object)]
pub struct Timings {
    /// Prompt tokens actually run (a cached prefix is not run again).
    pub prefill_tokens: u32,
    pub prefill_ms: f64,
    /// From the call to the first sampled token.
    pub ttft_ms: f64,
    pub decode_tokens: u32,
    pub decode_ms: f64,
}

#[napi(object)]
pub struct Completion {
    pub content: String,
    /// `stop`: EOS or a stop string; `length`: `maxTokens` or the end of the context.
    #[napi(ts_type = "'stop' | 'length'")]
    pub finish_reason: String,
    pub usage: Usage,
    /// The generated token ids (EOS excluded).
    pub ids: Vec<u32>,
    pub timings: Timings,
    /// The oldest turns left out so the chat fits the context.
    pub dropped_turns: u32,
}

impl From<yangtuo::Completion> for Completion {
    fn from(c: yangtuo::Completion) -> Self {
        let t = c.timings;
        Completion {
            content: c.text,
            finish_reason: c.finish_reason.as_str().into(),
            usage: Usage {
                prompt_tokens: c.usage.prompt_tokens as u32,
                completion_tokens: c.usage.completion_tokens as u32,
                total_tokens: c.usage.total_tokens as u32,
            },
            ids: c.ids,
            dropped_turns: c.dropped_turns as u32,
            timings: Timings {
                prefill_tokens: t.prefill_tokens as u32,
                prefill_ms: t.prefill_s * 1e3,
                ttft_ms: t.ttft_s * 1e3,
                decode_tokens: t.decode_tokens as u32,
                decode_ms: t.decode_s * 1e3,
            },
        }
    }
}

#[napi(object)]
pub struct LoadProgress {
    pub tensor: String,
    pub done_bytes: f64,
    pub total_bytes: f64,
}

impl From<yangtuo::LoadProgress<'_>> for LoadProgress {
    fn from(p: yangtuo::LoadProgress<'_>) -> Self {
        LoadProgress {
            tensor: p.tensor.into(),
            done_bytes: p.done_bytes as f64,
            total_bytes: p.total_bytes as f64,
        }
    }
}
