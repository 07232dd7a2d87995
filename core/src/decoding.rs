//! One sequence's generation after its prompt, one token at a time: choose the next token
//! from its logits (EOS masked with `ignore_eos`, logprobs of the model's own distribution),
//! then decode, match stop strings and stream. Both the one-sequence loop (generate.rs)
//! and the batch scheduler (batch.rs) drive it, so a sequence behaves the same in either.

use crate::Result;
use crate::chat::StopMatcher;
use crate::generate::{
    Completion, FinishReason, Flow, GenerateOptions, Piece, Timings, TokenLogprob, Usage,
};
use crate::runner::{Runner, SessionState};
use crate::sampler::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};

pub(crate) use crate::grammar::Constraint;

pub(crate) struct Decoding<'a> {
    tokenizer: &'a Tokenizer,
    eos_ids: &'a [u32],
    opts: GenerateOptions,
    max_new: usize,
    sampler: Sampler,
    /// The prompt and the answer so far (for the repetition penalty).
    history: Vec<u32>,
    prompt_len: usize,
    ids: Vec<u32>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    text: String,
    logprobs: Vec<TokenLogprob>,
    /// Logprobs not yet sent with a piece.
    unsent: usize,
    timings: Timings,
    t0: f64,
    t_first: Option<f64>,
    /// The grammar the answer must stay in, if any.
    constraint: Option<Constraint>,
}

impl<'a> Decoding<'a> {
    /// `tokens` more of the prompt came from a cache (another sequence's), not computed.
    pub fn took_cached(&mut self, tokens: usize) {
        self.timings.prefill_tokens -= tokens;
    }

    /// After `prompt`, of which `prefilled` tokens ran (the rest came from a cached prefix),
    /// started at time `t0`.
    pub fn new(
        tokenizer: &'a Tokenizer,
        eos_ids: &'a [u32],
        opts: GenerateOptions,
        prompt: &[u32],
        prefilled: usize,
        max_new: usize,
        t0: f64,
    ) -> Self {
        let stops = StopMatcher::new(&opts.stop);
        Decoding {
            tokenizer,
            eos_ids,
            sampler: Sampler::new(opts.sampling.clone()),
            opts,
            max_new,
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            ids: vec![],
            decoder: StreamDecoder::new(),
            stops,
            text: String::new(),
            logprobs: vec![],
            unsent: 0,
            timings: Timings {
                prefill_tokens: prefilled,
                ..Default::default()
            },
            t0,
            t_first: None,
            constraint: None,
        }
    }

    /// Keep the answer inside `constraint`'s grammar from the first token.
    pub fn constrain(&mut self, constraint: Option<Constraint>) {
        self.constraint = constraint;
    }

    /// Whether the next token needs the logits; if not, the device's argmax is the token.
    pub fn needs_logits(&self) -> bool {
        self.opts.logprobs.is_some()
            || self.opts.ignore_eos
            || !self.sampler.params.is_greedy()
            || self.constraint.is_some()
    }

    /// The next token after the last position `state` ran (its logits row 0).
    pub async fn next_token(&mut self, runner: &dyn Runner, state: &SessionState) -> Result<u32> {
        if self.needs_logits() {
            self.pick(&mut runner.logits(state, 1).await?)
        } else {
            runner.argmax(state, 0).await
        }
    }

    /// The next token from the last position's logits.
    pub fn pick(&mut self, logits: &mut [f32]) -> Result<u32> {
        Ok(match self.opts.logprobs {
            None => {
                self.mask(logits)?;
                self.sampler.sample(logits, &self.history)
            }
            Some(top) => {
                // logprobs are the model's, before the masks
                let mut masked = logits.to_vec();
                self.mask(&mut masked)?;
                let next = self.sampler.sample(&mut masked, &self.history);
                if !self.eos_ids.contains(&next) {
                    self.logprobs.push(TokenLogprob::of(logits, next, top));
                    self.unsent += 1;
                }
                next
            }
        })
    }

    /// What the grammar and `ignore_eos` leave out, at −∞, before any sampling.
    fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        if let Some(c) = &mut self.constraint {
            c.mask(logits)?;
        }
        // a complete grammar leaves only EOS, which ends the answer even with ignore_eos
        let only_eos = || {
            self.constraint.is_some()
                && logits
                    .iter()
                    .enumerate()
                    .all(|(i, l)| *l == f32::NEG_INFINITY || self.eos_ids.contains(&(i as u32)))
        };
        if self.opts.ignore_eos && !only_eos() {
            for &id in self.eos_ids {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// Take `next` (chosen at time `now`): stream its text; `Some` when the answer ends
    /// with it. Otherwise the caller feeds `next` back at position `pos()`.
    pub fn accept(
        &mut self,
        next: u32,
        now: f64,
        on_piece: &mut dyn FnMut(Piece) -> Flow,
    ) -> Result<Option<FinishReason>> {
        if self.t_first.is_none() {
            self.t_first = Some(now);
            self.timings.prefill_s = now - self.t0;
            self.timings.ttft_s = now - self.t0;
        }
        if self.eos_ids.contains(&next) {
            return Ok(Some(FinishReason::Stop));
        }
        if let Some(c) = &mut self.constraint {
            c.accept(next)?;
        }
        self.ids.push(next);
        self.history.push(next);
        let (piece, stopped) = self.stops.push(&self.decoder.push(self.tokenizer, next)?);
        let flow = self.emit(&piece, on_piece);
        if stopped || flow == Flow::Stop {
            return Ok(Some(FinishReason::Stop));
        }
        if self.ids.len() >= self.max_new {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
    }

    /// Tokens in the answer so far.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Where the last accepted token goes in the cache.
    pub fn pos(&self) -> usize {
        self.prompt_len + self.ids.len() - 1
    }

    /// Where the next token goes in the cache.
    pub fn next_pos(&self) -> usize {
        self.prompt_len + self.ids.len()
    }

    fn emit(&mut self, piece: &str, on_piece: &mut dyn FnMut(Piece) -> Flow) -> Flow {
        if piece.is_empty() {
            return Flow::Continue;
        }
        self.text.push_str(piece);
        let fresh = &self.logprobs[self.logprobs.len() - self.unsent..];
        self.unsent = 0;
        on_piece(Piece {
            text: piece,
            logprobs: fresh,
        })
    }

    /// The answer, ended for `finish` at time `now`: what the decoder and the stop matcher
    /// still hold is streamed first.
    pub fn finish(
        mut self,
        finish: FinishReason,
        now: f64,
        on_piece: &mut dyn FnMut(Piece) -> Flow,
    ) -> Result<Completion> {
        let (piece, stopped) = self.stops.push(&self.decoder.finish(self.tokenizer)?);
        self.emit(&piece, on_piece);
        if !stopped {
            let rest = self.stops.finish();
            self.emit(&rest, on_piece);
        }
        let mut timings = self.timings;
        timings.decode_tokens = self.ids.len().saturating_sub(1);
        timings.decode_s = now - self.t_first.unwrap_or(now);
        let (prompt_tokens, completion_tokens) = (self.prompt_len, self.ids.len());
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        };
        Ok(Completion {
            text: self.text,
            finish_reason: finish,
            usage,
            ids: self.ids,
            timings,
            dropped_turns: 0,
            logprobs: self.logprobs,
        })
    }
}
