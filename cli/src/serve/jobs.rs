//! Running generations: at most `--parallel` at once (a semaphore; the rest wait in its
//! queue), each on a blocking thread so the async runtime stays free, its text pieces sent
//! through a channel. A receiver that goes away (the client disconnected) stops the
//! generation: the text callback returns `Flow::Stop` and the cancel flag is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use yangtuo::{Completion, Error, Flow, GenerateOptions, Llama};

/// What a generation reports.
pub enum Event {
    Text(String),
    Done(Result<Completion, Error>),
}

/// The prompt of a job.
pub enum Input {
    /// Rendered chat ids.
    Ids(Vec<u32>),
    /// Raw text (BOS, then the text).
    Text(String),
}

/// Counters shown by `GET /health`.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    /// Generations stopped because their client went away.
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

pub struct Jobs {
    pub llama: Arc<Llama>,
    pub slots: Arc<Semaphore>,
    pub parallel: usize,
    pub stats: Arc<Stats>,
}

impl Jobs {
    /// Queue a generation; its events arrive on the returned receiver. Dropping the receiver
    /// cancels it, queued or running.
    pub fn submit(&self, id: String, input: Input, opts: GenerateOptions) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (llama, slots, stats) = (self.llama.clone(), self.slots.clone(), self.stats.clone());
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.queued.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let permit = tokio::select! {
                p = slots.acquire_owned() => p,
                _ = tx.closed() => {
                    stats.queued.fetch_sub(1, Ordering::Relaxed);
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    log::info!("{id}: client gone while queued");
                    return;
                }
            };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            let Ok(permit) = permit else { return };
            stats.running.fetch_add(1, Ordering::Relaxed);
            let waited = t0.elapsed().as_secs_f64();
            let cancel = Arc::new(AtomicBool::new(false));
            // a client that goes away sets the cancel flag, even between text pieces
            let watch = {
                let (tx, cancel) = (tx.clone(), cancel.clone());
                tokio::spawn(async move {
                    tx.closed().await;
                    cancel.store(true, Ordering::Relaxed);
                })
            };
            let run = {
                let (tx, cancel) = (tx.clone(), cancel.clone());
                tokio::task::spawn_blocking(move || {
                    let mut on_text = |t: &str| match tx.send(Event::Text(t.to_string())) {
                        Ok(()) => Flow::Continue,
                        Err(_) => Flow::Stop,
                    };
                    match input {
                        Input::Ids(ids) => llama.complete_ids(&ids, &opts, Some(&cancel), &mut on_text),
                        Input::Text(p) => llama.generate(&p, &opts, Some(&cancel), &mut on_text),
                    }
                })
            };
            let r = run.await.unwrap_or_else(|e| Err(Error::Device(format!("the generation thread failed: {e}"))));
            drop(permit);
            watch.abort();
            stats.running.fetch_sub(1, Ordering::Relaxed);
            let secs = t0.elapsed().as_secs_f64();
            let gone = tx.is_closed() || cancel.load(Ordering::Relaxed);
            match &r {
                Ok(c) => {
                    stats.prompt_tokens.fetch_add(c.usage.prompt_tokens as u64, Ordering::Relaxed);
                    stats.completion_tokens.fetch_add(c.usage.completion_tokens as u64, Ordering::Relaxed);
                    let counter = if gone { &stats.cancelled } else { &stats.completed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "{id}: {} prompt + {} completion tokens in {secs:.2} s (queued {waited:.2} s), {:.1} tok/s, {}{}",
                        c.usage.prompt_tokens,
                        c.usage.completion_tokens,
                        c.timings.decode_tok_s(),
                        c.finish_reason.as_str(),
                        if gone { ", client gone: stopped" } else { "" }
                    );
                }
                Err(Error::Cancelled) => {
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    log::info!("{id}: client gone after {secs:.2} s: stopped");
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    log::warn!("{id}: failed after {secs:.2} s: {e}");
                }
            }
            let _ = tx.send(Event::Done(r));
        });
        rx
    }
}
