//! Continuous batching: one task owns the model's forward passes and runs the decode
//! steps of every active sequence as one batch (`Runner::forward_batch`), so the weights are
//! read once per step for all of them. A request joins at the next step. Its prompt rides
//! along in the decode steps, a chunk of `step_prompt` tokens per step (chunked prefill),
//! so a long prompt delays the others by a chunk per step, never by the whole prompt; with
//! nobody decoding it runs alone in chunks of the session's `max_batch`. A finished or
//! cancelled sequence leaves at once.
//!
//! Callers stay on their own threads: `Batcher::generate` sends a job and relays its
//! pieces to the caller's callback, which therefore needs no `Send`. The task is a thread
//! natively and a task on the page's event loop in the browser (channel.rs). Each sequence keeps
//! its own sampler (its own RNG) and decodes with `Decoding`, as a lone request does. The
//! CPU's kernels are batch-invariant (a token's sums never depend on the other rows of its
//! product: ARCHITECTURE.md), so on the CPU a sequence's tokens do not depend on which
//! others share its steps, nor on how its prompt was chunked.

use crate::backend::DECODE_ROWS;
use crate::decoding::{Constraint, Decoding};
use crate::generate::{
    Cached, Completion, FinishReason, Flow, GenerateOptions, Piece, TokenLogprob, now,
};
use crate::model::chunk_end;
use crate::runner::{Runner, SessionState};
use crate::sampler::argmax;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

mod channel;
use channel::{CANCEL_POLL, EventTx, JobRx, JobTx, Next};

/// A job's `stop` flag: running, cancelled (`FinishReason::Abort`), or stopped by the
/// caller's callback (`FinishReason::Stop`).
const RUN: u8 = 0;
const ABORT: u8 = 1;
const STOP: u8 = 2;

struct Job {
    prompt: Vec<u32>,
    max_new: usize,
    opts: GenerateOptions,
    cache: Cached,
    constraint: Option<Constraint>,
    stop: Arc<AtomicU8>,
    events: EventTx<Event>,
}

enum Event {
    /// A piece of text, its tokens' logprobs, and how many tokens the answer has so far.
    Piece {
        text: String,
        logprobs: Vec<TokenLogprob>,
        tokens: usize,
    },
    /// The answer, and the cache to pool.
    Done(Result<Completion>, Cached),
}

/// How much the scheduler has batched: `sequences / steps` is the mean batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward passes the scheduler ran.
    pub steps: u64,
    /// Sequences in them, summed over the steps (a decode step of eight sequences with a
    /// prompt chunk riding along counts nine).
    pub sequences: u64,
}

#[derive(Default)]
struct Counters {
    steps: AtomicU64,
    sequences: AtomicU64,
}

/// The scheduler's handle; dropping it ends the scheduler once its sequences finish.
pub(crate) struct Batcher {
    jobs: JobTx<Job>,
    counters: Arc<Counters>,
}

impl Batcher {
    /// `step_prompt`: the prompt tokens that ride along in one decode step (at most
    /// `max_batch`).
    pub fn start(
        runner: Arc<dyn Runner>,
        tokenizer: Arc<Tokenizer>,
        eos_ids: Vec<u32>,
        max_batch: usize,
        step_prompt: usize,
    ) -> Result<Batcher> {
        let (tx, mut rx) = channel::jobs();
        let max_batch = max_batch.max(1);
        let counters = Arc::new(Counters::default());
        let parts = Parts {
            runner,
            tokenizer,
            eos_ids,
            chunk: max_batch,
            step_prompt: step_prompt.clamp(1, max_batch),
            counters: counters.clone(),
        };
        #[cfg(not(target_arch = "wasm32"))]
        std::thread::Builder::new()
            .name("yangtuo-batch".into())
            .spawn(move || {
                let s = parts.scheduler();
                // A panic (a bug) fails the generations in flight, whose channels it drops,
                // and the scheduler starts over for the next requests.
                while std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pollster::block_on(s.serve(&mut rx))
                }))
                .is_err()
                {
                    log::error!("the batch scheduler panicked; its generations in flight failed");
                }
            })
            .map_err(|e| Error::Device(format!("cannot start the batch scheduler: {e}")))?;
        #[cfg(target_arch = "wasm32")]
        wasm_bindgen_futures::spawn_local(async move { parts.scheduler().serve(&mut rx).await });
        Ok(Batcher { jobs: tx, counters })
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            steps: self.counters.steps.load(Ordering::Relaxed),
            sequences: self.counters.sequences.load(Ordering::Relaxed),
        }
    }

    /// Generate at most `max_new` tokens after `prompt` on `cache` in the shared batch,
    /// streaming pieces to `on_piece` on this thread. Returns the answer and the cache.
    #[allow(clippy::too_many_arguments)]
    pub async fn generate(
        &self,
        cache: Cached,
        prompt: &[u32],
        max_new: usize,
        opts: &GenerateOptions,
        constraint: Option<Constraint>,
        cancel: Option<&AtomicBool>,
        on_piece: &mut dyn FnMut(Piece) -> Flow,
    ) -> (Result<Completion>, Option<Cached>) {
        let stop = Arc::new(AtomicU8::new(RUN));
        let (events, mut rx) = channel::events();
        let job = Job {
            prompt: prompt.to_vec(),
            max_new,
            opts: opts.clone(),
            cache,
            constraint,
            stop: stop.clone(),
            events,
        };
        if let Err(e) = self.jobs.unbounded_send(job) {
            return (
                Err(Error::Device("the batch scheduler has stopped".into())),
                Some(e.into_inner().cache),
            );
        }
        // what the caller has been given, for an answer its callback stopped
        let (mut text, mut logprobs, mut tokens, mut stopped) = (String::new(), 0, 0, false);
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                stop.store(ABORT, Ordering::Relaxed);
            }
            match rx.next(CANCEL_POLL).await {
                Next::Event(Event::Piece {
                    text: piece,
                    logprobs: lp,
                    tokens: n,
                }) => {
                    if stopped {
                        continue;
                    }
                    text.push_str(&piece);
                    logprobs += lp.len();
                    tokens = n;
                    if on_piece(Piece {
                        text: &piece,
                        logprobs: &lp,
                    }) == Flow::Stop
                    {
                        stopped = true;
                        stop.store(STOP, Ordering::Relaxed);
                    }
                }
                Next::Event(Event::Done(result, cache)) => {
                    let result = result.map(|mut c| {
                        if stopped {
                            // the steps already running when the callback said stop
                            c.text = text;
                            c.finish_reason = FinishReason::Stop;
                            c.ids.truncate(tokens);
                            c.logprobs.truncate(logprobs);
                            c.usage.completion_tokens = c.ids.len();
                            c.usage.total_tokens = c.usage.prompt_tokens + c.ids.len();
                        }
                        c
                    });
                    return (result, Some(cache));
                }
                Next::Nothing => {}
                Next::Gone => {
                    return (
                        Err(Error::Device(
                            "the batch scheduler stopped during a generation".into(),
                        )),
                        None,
                    );
                }
            }
        }
    }
}

/// What the scheduler's task owns and lends its `Scheduler`.
struct Parts {
    runner: Arc<dyn Runner>,
    tokenizer: Arc<Tokenizer>,
    eos_ids: Vec<u32>,
    chunk: usize,
    step_prompt: usize,
    counters: Arc<Counters>,
}

impl Parts {
    fn scheduler(&self) -> Scheduler<'_> {
        Scheduler {
            runner: &*self.runner,
            tokenizer: &self.tokenizer,
            eos_ids: &self.eos_ids,
            chunk: self.chunk,
            step_prompt: self.step_prompt,
            counters: self.counters.clone(),
        }
    }
}

struct Scheduler<'a> {
    runner: &'a dyn Runner,
    tokenizer: &'a Tokenizer,
    eos_ids: &'a [u32],
    /// Prompt tokens per forward when a prompt runs alone (nobody is decoding).
    chunk: usize,
    /// Prompt tokens that ride along in a decode step.
    step_prompt: usize,
    counters: Arc<Counters>,
}

/// A sequence in the batch.
struct Running<'a> {
    job: Job,
    seq: Decoding<'a>,
    /// Prompt tokens in the cache so far (prefill is done when it reaches the prompt).
    prefilled: usize,
    /// The token the next decode step feeds.
    next: u32,
}

/// What a prefill step left a sequence at.
enum Prefill {
    More,
    Decoding,
    Finished(FinishReason),
}

impl<'a> Scheduler<'a> {
    async fn serve(&self, jobs: &mut JobRx<Job>) {
        let mut batch: Option<SessionState> = None;
        let mut prefilling: VecDeque<Running<'a>> = VecDeque::new();
        let mut decoding: Vec<Running<'a>> = vec![];
        #[cfg(target_arch = "wasm32")]
        let mut last_yield = now();
        loop {
            // new requests join; with nothing to do, wait for one
            if prefilling.is_empty() && decoding.is_empty() {
                match jobs.recv().await {
                    Ok(job) => prefilling.push_back(self.admit(job)),
                    Err(_) => return,
                }
            }
            // In the browser the callers share this thread: give them (and the page) a
            // turn, as a lone generation does (a GPU's readback awaits anyway).
            #[cfg(target_arch = "wasm32")]
            if self.runner.on_cpu() && now() - last_yield > crate::event_loop::YIELD_EVERY {
                crate::event_loop::sleep(0).await;
                last_yield = now();
            }
            while let Ok(job) = jobs.try_recv() {
                prefilling.push_back(self.admit(job));
            }
            if decoding.is_empty() {
                // nobody waits for a token: the oldest prompt runs alone, at full speed
                if let Some(mut r) = prefilling.pop_front() {
                    if let Err(e) = self.share_prefix(&mut r, prefilling.iter()) {
                        self.finish(r, Err(e));
                        continue;
                    }
                    match self.prefill_chunk(&mut r).await {
                        Ok(Prefill::More) => prefilling.push_front(r),
                        Ok(Prefill::Decoding) => decoding.push(r),
                        Ok(Prefill::Finished(f)) => self.finish(r, Ok(f)),
                        Err(e) => self.finish(r, Err(e)),
                    }
                }
                continue;
            }
            self.step(&mut batch, &mut decoding, &mut prefilling).await;
        }
    }

    fn admit(&self, mut job: Job) -> Running<'a> {
        let common = job
            .cache
            .reuse_prefix(&job.prompt, self.runner.decode_sums_as_prompt());
        let mut seq = Decoding::new(
            self.tokenizer,
            self.eos_ids,
            job.opts.clone(),
            &job.prompt,
            job.prompt.len() - common,
            job.max_new,
            now(),
        );
        seq.constrain(job.constraint.take());
        Running {
            job,
            seq,
            prefilled: common,
            next: 0,
        }
    }

    /// Before r's next prompt chunk: the longest stretch of its prompt past what it holds
    /// that another live sequence's cache holds (the same system prompt in many requests,
    /// sent at once) is copied from there instead of computed. The copy is exact, and on
    /// the CPU it has the bits r would compute itself (a token's keys do not depend on how
    /// its prompt was chunked). The last prompt token always runs (its logits come next).
    fn share_prefix<'b>(
        &self,
        r: &mut Running<'a>,
        others: impl Iterator<Item = &'b Running<'a>>,
    ) -> Result<()>
    where
        'a: 'b,
    {
        let prompt = &r.job.prompt;
        let exact = self.runner.decode_sums_as_prompt();
        let best = others
            .map(|o| (o.job.cache.reusable(prompt, exact), o))
            .max_by_key(|(common, _)| *common);
        let Some((end, o)) = best.filter(|(end, _)| *end > r.prefilled) else {
            return Ok(());
        };
        let from = r.prefilled;
        let cache = &mut r.job.cache;
        self.runner
            .copy_prefix(&o.job.cache.state, &mut cache.state, from..end)?;
        cache.copied_prompt(&prompt[from..end]);
        r.seq.took_cached(end - from);
        r.prefilled = end;
        Ok(())
    }

    /// The caller's stop, if it asked for one.
    fn stopped(r: &Running) -> Option<FinishReason> {
        match r.job.stop.load(Ordering::Relaxed) {
            ABORT => Some(FinishReason::Abort),
            STOP => Some(FinishReason::Stop),
            _ => None,
        }
    }

    /// Run the next chunk of r's prompt, alone; after the last, choose its first token.
    async fn prefill_chunk(&self, r: &mut Running<'a>) -> Result<Prefill> {
        if let Some(f) = Self::stopped(r) {
            return Ok(Prefill::Finished(f));
        }
        let (start, len) = (r.prefilled, r.job.prompt.len());
        let end = chunk_end(start, len, self.chunk);
        let cache = &mut r.job.cache;
        self.runner
            .forward(&mut cache.state, &r.job.prompt[start..end], start, 1)?;
        self.counted(1);
        cache.ran_prompt(&r.job.prompt[start..end]);
        r.prefilled = end;
        if end < len {
            return Ok(Prefill::More);
        }
        let next = r.seq.next_token(self.runner, &cache.state).await?;
        Ok(match self.accept(r, next)? {
            Some(f) => Prefill::Finished(f),
            None => Prefill::Decoding,
        })
    }

    /// One decode step of every decoding sequence, as one batch, with the next chunk of the
    /// oldest prompt riding along; a prompt whose last chunk ran gets its first token and
    /// decodes from the next step.
    async fn step(
        &self,
        batch: &mut Option<SessionState>,
        decoding: &mut Vec<Running<'a>>,
        prefilling: &mut VecDeque<Running<'a>>,
    ) {
        let mut staying = Vec::with_capacity(decoding.len());
        for r in decoding.drain(..) {
            match Self::stopped(&r) {
                Some(f) => self.finish(r, Ok(f)),
                None => staying.push(r),
            }
        }
        *decoding = staying;
        while let Some(f) = prefilling.front().and_then(Self::stopped) {
            let r = prefilling.pop_front().expect("front() was Some");
            self.finish(r, Ok(f));
        }
        if decoding.is_empty() {
            return;
        }
        let mut riding = if decoding.len() < DECODE_ROWS {
            prefilling.pop_front()
        } else {
            None
        };
        if let Some(r) = riding.as_mut() {
            if let Err(e) = self.share_prefix(r, decoding.iter().chain(prefilling.iter())) {
                let r = riding.take().expect("as_mut() was Some");
                self.finish(r, Err(e));
            }
        }
        let chunk = riding
            .as_ref()
            .map(|r| r.prefilled..chunk_end(r.prefilled, r.job.prompt.len(), self.step_prompt));
        let finishing = riding
            .as_ref()
            .zip(chunk.clone())
            .is_some_and(|(r, c)| c.end == r.job.prompt.len());
        let n = decoding.len();
        let mut logits = match self
            .forward(
                batch,
                riding.as_mut().zip(chunk.clone()),
                decoding,
                finishing,
            )
            .await
        {
            Ok(l) => l,
            Err(e) => {
                let message = e.to_string();
                for mut r in decoding.drain(..).chain(riding) {
                    r.job.cache.forget();
                    self.finish(r, Err(Error::Device(message.clone())));
                }
                return;
            }
        };
        let vocab = logits.len() / (n + finishing as usize);
        let mut rows = logits.chunks_exact_mut(vocab);
        if let (Some(mut r), Some(chunk)) = (riding, chunk) {
            r.job.cache.ran_prompt(&r.job.prompt[chunk.clone()]);
            r.prefilled = chunk.end;
            if finishing {
                let row = rows.next().expect("the prompt's logits row");
                match self.next_from(&mut r, row) {
                    Ok(None) => decoding.push(r),
                    Ok(Some(f)) => self.finish(r, Ok(f)),
                    Err(e) => self.finish(r, Err(e)),
                }
            } else {
                prefilling.push_front(r);
            }
        }
        let joined = decoding.split_off(n);
        for (mut r, row) in std::mem::take(decoding).into_iter().zip(rows) {
            r.job.cache.decoded(r.next);
            match self.next_from(&mut r, row) {
                Ok(None) => decoding.push(r),
                Ok(Some(f)) => self.finish(r, Ok(f)),
                Err(e) => self.finish(r, Err(e)),
            }
        }
        decoding.extend(joined);
    }

    /// Give r its next token, chosen from its logits row (host argmax is the sampler's).
    fn next_from(&self, r: &mut Running<'a>, row: &mut [f32]) -> Result<Option<FinishReason>> {
        let next = if r.seq.needs_logits() {
            r.seq.pick(row)?
        } else {
            argmax(row)
        };
        self.accept(r, next)
    }

    /// The batch's forward: the riding prompt's chunk, then each decoding sequence's pending
    /// token at its position. The logits: the prompt's last row if `finishing`, then every
    /// decoding sequence's.
    async fn forward(
        &self,
        batch: &mut Option<SessionState>,
        riding: Option<(&mut Running<'a>, std::ops::Range<usize>)>,
        decoding: &mut [Running<'a>],
        finishing: bool,
    ) -> Result<Vec<f32>> {
        if batch.is_none() {
            *batch = Some(self.runner.new_state(
                0,
                DECODE_ROWS + self.step_prompt,
                DECODE_ROWS + 1,
            )?);
        }
        let batch = batch.as_mut().expect("made above");
        let tokens: Vec<[u32; 1]> = decoding.iter().map(|r| [r.next]).collect();
        let out = decoding.len() + finishing as usize;
        let mut rows: Vec<(&mut SessionState, &[u32], usize)> =
            Vec::with_capacity(decoding.len() + 1);
        if let Some((r, chunk)) = riding {
            let Job { prompt, cache, .. } = &mut r.job;
            rows.push((&mut cache.state, &prompt[chunk.clone()], chunk.start));
        }
        rows.extend(
            decoding
                .iter_mut()
                .zip(&tokens)
                .map(|(r, t)| (&mut r.job.cache.state, &t[..], r.seq.pos())),
        );
        self.counted(rows.len());
        self.runner.forward_batch(batch, &mut rows, out)?;
        self.runner.logits(batch, out).await
    }

    /// One forward pass of `sequences` sequences, for `BatchStats`.
    fn counted(&self, sequences: usize) {
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        self.counters
            .sequences
            .fetch_add(sequences as u64, Ordering::Relaxed);
    }

    /// Give r its next token; its text goes to the caller.
    fn accept(&self, r: &mut Running<'a>, next: u32) -> Result<Option<FinishReason>> {
        let mut pieces = vec![];
        let finish = r.seq.accept(next, now(), &mut |p| {
            pieces.push((p.text.to_string(), p.logprobs.to_vec()));
            Flow::Continue
        })?;
        r.next = next;
        for (text, logprobs) in pieces {
            if !r.job.events.send(Event::Piece {
                text,
                logprobs,
                tokens: r.seq.tokens(),
            }) {
                // the caller is gone (its thread unwound): nobody reads the rest
                r.job.stop.store(ABORT, Ordering::Relaxed);
            }
        }
        Ok(finish)
    }

    /// End r: the rest of its text, then its answer (or error) and its cache, to the caller.
    fn finish(&self, r: Running<'a>, how: Result<FinishReason>) {
        let Running { job, seq, .. } = r;
        let mut pieces = vec![];
        let result = how.and_then(|f| {
            seq.finish(f, now(), &mut |p| {
                pieces.push((p.text.to_string(), p.logprobs.to_vec()));
                Flow::Continue
            })
        });
        let tokens = result.as_ref().map_or(0, |c| c.ids.len());
        for (text, logprobs) in pieces {
            job.events.send(Event::Piece {
                text,
                logprobs,
                tokens,
            });
        }
        job.events.send(Event::Done(result, job.cache));
    }
}
