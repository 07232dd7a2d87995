//! The generation loop: prefill the prompt, then sample, decode and stream one token at a
//! time until EOS, a stop string, `max_tokens`, or a cancel.

use crate::decoding::{Constraint, Decoding};
use crate::runner::{Runner, SessionState};
use crate::sampler::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a chat does when its history no longer fits the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextOverflow {
    /// Fail with `Error::ContextLength`, naming the sizes.
    Error,
    /// Drop the oldest whole user/assistant turns (the system prompt stays) until the new
    /// prompt and a reserve for the answer fit. Sessions' default.
    TruncateOldest,
}

impl std::str::FromStr for ContextOverflow {
    type Err = Error;
    fn from_str(s: &str) -> Result<ContextOverflow> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "error" => Ok(ContextOverflow::Error),
            "truncate-oldest" | "truncate" => Ok(ContextOverflow::TruncateOldest),
            other => Err(Error::arg(
                "context_overflow",
                format!("`{other}` is not one of truncate-oldest, error"),
            )),
        }
    }
}

/// Per-call generation options.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// At most this many new tokens (a cap, not a reservation: generation also stops, with
    /// `FinishReason::Length`, when the context is full); `None` fills the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings; they are not part of the answer.
    pub stop: Vec<String>,
    /// Accept template control strings (`[INST]`, `<s>`, ...) inside message content.
    pub allow_control_tokens: bool,
    /// When a chat's messages outgrow the context; `None` is the call's default
    /// (`TruncateOldest` for sessions, `Error` for a one-shot chat).
    pub context_overflow: Option<ContextOverflow>,
    /// Report each generated token's log-probability and this many of the most likely
    /// alternatives (`Completion::logprobs`); `None` reports nothing.
    pub logprobs: Option<usize>,
    /// Never end at the end-of-sequence token, only at `max_tokens`, a stop string or the
    /// end of the context (vLLM's and llama.cpp's `ignore_eos`): fixed-length answers for
    /// benchmarks and tests. EOS is masked out before sampling, so it never appears.
    pub ignore_eos: bool,
    /// Keep the answer inside this grammar (JSON Schema, any JSON object, Lark): see
    /// grammar.rs. Not in the wasm build yet, where it is an error.
    pub grammar: Option<crate::grammar::Grammar>,
}

/// The most alternatives a token's logprobs may list (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability under the model: the log-softmax of its raw
/// logits (before temperature, penalties or truncation, as OpenAI and vLLM report them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The most likely tokens at this position and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `chosen`'s log-probability in `logits`, and the `top` most likely tokens (ties by id).
    pub fn of(logits: &[f32], chosen: u32, top: usize) -> TokenLogprob {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        let lp = |id: u32| (logits[id as usize] as f64 - log_sum) as f32;
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let order = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let top = top.min(ids.len());
        if top > 0 && top < ids.len() {
            ids.select_nth_unstable_by(top - 1, order);
        }
        ids.truncate(top);
        ids.sort_by(order);
        TokenLogprob {
            id: chosen,
            logprob: lp(chosen),
            top: ids.into_iter().map(|i| (i, lp(i))).collect(),
        }
    }
}

/// A piece of streamed answer text, with the logprobs of the tokens that produced it
/// (empty unless asked for; a token whose text is held back, as a possible stop string,
/// reports with the next piece).
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub logprobs: &'a [TokenLogprob],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    /// Cancelled (an abort signal, a timeout, a client gone): the answer so far. The
    /// OpenAI-shaped calls return it; the others turn it into `Error::Cancelled`.
    Abort,
    /// The answer is a tool call (OpenAI-shaped chat requests with `tools`).
    #[serde(rename = "tool_calls")]
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    /// Prompt tokens actually run (a reused KV prefix is not run again).
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    /// Seconds from the call to the first sampled token.
    pub ttft_s: f64,
    pub decode_tokens: usize,
    pub decode_s: f64,
}

impl Timings {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_s.max(1e-9)
    }
    pub fn decode_tok_s(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_s.max(1e-9)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Generated ids, EOS excluded.
    pub ids: Vec<u32>,
    pub timings: Timings,
    /// Oldest user/assistant turns left out so the prompt fits (`ContextOverflow::TruncateOldest`).
    pub dropped_turns: usize,
    /// One per id in `ids` when `GenerateOptions::logprobs` asked; else empty.
    pub logprobs: Vec<TokenLogprob>,
}

impl Completion {
    /// The completion, or `Error::Cancelled` if it was aborted: for calls whose callers
    /// expect a cancel to be an error.
    pub fn unless_aborted(self) -> Result<Completion> {
        if self.finish_reason == FinishReason::Abort {
            Err(Error::Cancelled)
        } else {
            Ok(self)
        }
    }
}

/// What a streaming consumer wants after a piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A session's device state plus the ids whose keys and values it holds, so a later
/// prompt that starts the same way skips that prefix.
pub struct Cached {
    pub state: SessionState,
    pub tokens: Vec<u32>,
    /// How many of `tokens`, from the first, were computed as rows of a prompt chunk of two
    /// tokens or more (or copied from such): all a prompt may reuse where a decoded token's
    /// sums differ from a prompt row's (`Runner::decode_sums_as_prompt`).
    prompted: usize,
}

/// Seconds since an arbitrary start (`performance.now()` has no std equivalent on the web).
pub fn now() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static T0: OnceLock<std::time::Instant> = OnceLock::new();
        T0.get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs_f64()
    }
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now() / 1000.0
    }
}

/// Everything the loop needs besides the model.
pub(crate) struct Generation<'a> {
    pub runner: &'a dyn Runner,
    pub tokenizer: &'a Tokenizer,
    pub eos_ids: &'a [u32],
    pub opts: &'a GenerateOptions,
    pub cancel: Option<&'a AtomicBool>,
    /// Clock for timings (injected so the web build can pass `performance.now()`).
    pub clock: fn() -> f64,
}

impl GenerateOptions {
    /// The one check of a request, before any device work: the sampling parameters, and
    /// the prompt against the context. Returns the most tokens it may generate.
    pub fn check(&self, prompt: usize, ctx: usize) -> Result<usize> {
        self.sampling.validate()?;
        if let Some(n) = self.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(Error::arg(
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
        budget(prompt, self.max_tokens, ctx)
    }
}

/// Check a prompt against the context, and work out the token budget: `max_tokens` is a
/// cap, and what the context has left is the other. A prompt that leaves no room for one
/// token is an error.
pub fn budget(prompt: usize, max_tokens: Option<usize>, ctx: usize) -> Result<usize> {
    if max_tokens == Some(0) {
        return Err(Error::arg("max_tokens", "must be at least 1"));
    }
    if prompt == 0 {
        return Err(Error::arg("prompt", "the prompt is empty"));
    }
    if prompt + 1 > ctx {
        return Err(Error::ContextLength {
            prompt,
            requested: 1,
            context: ctx,
        });
    }
    Ok(max_tokens.unwrap_or(usize::MAX).min(ctx - prompt))
}

impl Generation<'_> {
    /// Run `prompt` on `cache` and generate at most `max_new` tokens (from
    /// `GenerateOptions::check`); `on_piece` receives each piece of answer text.
    pub async fn run(
        &self,
        cache: &mut Cached,
        prompt: &[u32],
        max_new: usize,
        constraint: Option<Constraint>,
        on_piece: &mut dyn FnMut(Piece) -> Flow,
    ) -> Result<Completion> {
        let t0 = (self.clock)();
        let common = cache.prefill(self.runner, prompt)?;
        let mut seq = Decoding::new(
            self.tokenizer,
            self.eos_ids,
            self.opts.clone(),
            prompt,
            prompt.len() - common,
            max_new,
            t0,
        );
        seq.constrain(constraint);
        #[cfg(target_arch = "wasm32")]
        let mut last_yield = t0;
        let finish = loop {
            #[cfg(target_arch = "wasm32")]
            if self.runner.on_cpu() && (self.clock)() - last_yield > crate::event_loop::YIELD_EVERY
            {
                crate::event_loop::sleep(0).await;
                last_yield = (self.clock)();
            }
            if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                break FinishReason::Abort;
            }
            // Greedy with nothing to read from the logits, on a GPU: the token's forward is
            // recorded before the token comes back, so the device runs it while the host
            // handles the token (if the answer ends there, that forward goes unused).
            let ahead = match seq.needs_logits() {
                true => None,
                false => (self.runner).forward_ahead(&mut cache.state, seq.next_pos()),
            };
            let (next, fed) = match ahead {
                Some(read) => (read.await?, true),
                None => (seq.next_token(self.runner, &cache.state).await?, false),
            };
            if let Some(finish) = seq.accept(next, (self.clock)(), on_piece)? {
                break finish;
            }
            // feed the token back: its key and value join the cache
            if !fed {
                (self.runner).forward(&mut cache.state, &[next], seq.pos(), 1)?;
            }
            cache.decoded(next);
        };
        seq.finish(finish, (self.clock)(), on_piece)
    }
}

impl Cached {
    pub fn new(state: SessionState) -> Cached {
        Cached {
            state,
            tokens: vec![],
            prompted: 0,
        }
    }

    /// How many leading tokens of `prompt` this cache can give it: their common prefix, but
    /// never the last prompt token (its logits come next). Where a decoded token's sums
    /// differ from a prompt row's (`exact` false: wgpu, CUDA), only positions computed as
    /// prompt rows, and at most all but two tokens of the prompt (one token alone sums as a
    /// decode row), so the prompt gets the bits it gets cold.
    pub(crate) fn reusable(&self, prompt: &[u32], exact: bool) -> usize {
        let common = (self.tokens.iter().zip(prompt))
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        if exact {
            common
        } else {
            common
                .min(self.prompted)
                .min(prompt.len().saturating_sub(2))
        }
    }

    /// Keep what `reusable` gives `prompt` and drop the rest; returns its length.
    pub(crate) fn reuse_prefix(&mut self, prompt: &[u32], exact: bool) -> usize {
        let common = self.reusable(prompt, exact);
        self.tokens.truncate(common);
        self.prompted = self.prompted.min(common);
        common
    }

    /// `tokens` ran as one prompt chunk after what the cache holds.
    pub(crate) fn ran_prompt(&mut self, tokens: &[u32]) {
        self.took_prompt_rows(tokens, tokens.len() >= 2);
    }

    /// `tokens` were copied after what the cache holds from positions another cache
    /// computed as prompt rows.
    pub(crate) fn copied_prompt(&mut self, tokens: &[u32]) {
        self.took_prompt_rows(tokens, true);
    }

    fn took_prompt_rows(&mut self, tokens: &[u32], as_prompt: bool) {
        if as_prompt && self.prompted == self.tokens.len() {
            self.prompted += tokens.len();
        }
        self.tokens.extend_from_slice(tokens);
    }

    /// `token` was decoded after what the cache holds.
    pub(crate) fn decoded(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// The cache's positions no longer match its tokens (a failed step).
    pub(crate) fn forget(&mut self) {
        self.tokens.clear();
        self.prompted = 0;
    }

    /// Run `prompt` on this cache, reusing what `reusable` allows. Returns how many prompt
    /// tokens were reused.
    pub(crate) fn prefill(&mut self, runner: &dyn Runner, prompt: &[u32]) -> Result<usize> {
        let common = self.reuse_prefix(prompt, runner.decode_sums_as_prompt());
        runner.forward(&mut self.state, &prompt[common..], common, 1)?;
        self.ran_prompt(&prompt[common..]);
        Ok(common)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_logprobs_are_a_log_softmax_with_the_best_first() {
        let logits = [1.0f32, 3.0, 3.0, -2.0, 0.5];
        let lp = TokenLogprob::of(&logits, 4, 3);
        let log_sum = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        assert!((lp.logprob as f64 - (0.5 - log_sum)).abs() < 1e-6);
        // ties rank by id
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        assert!(TokenLogprob::of(&logits, 0, 0).top.is_empty());
        assert_eq!(TokenLogprob::of(&logits, 0, 20).top.len(), 5);
    }
}
