//! Running generations: at most `--parallel` at once (a semaphore; the rest wait in its
//! queue), each on a blocking thread so the async runtime stays free, its text pieces sent
//! through a channel. A receiver that goes away (the client disconnected) stops the
//! generation: the text callback returns `Flow::Stop` and the cancel flag is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use super::metrics::Stats;
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
        stats.requests.inc();
        stats.queued.inc();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let permit = tokio::select! {
                p = slots.acquire_owned() => p,
                _ = tx.closed() => {
                    stats.queued.dec();
                    stats.cancelled.inc();
                    log::info!("{id}: client gone while queued");
                    return;
                }
            };
            stats.queued.dec();
            let Ok(permit) = permit else { return };
            stats.running.inc();
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
                let (tx, cancel, stats) = (tx.clone(), cancel.clone(), stats.clone());
                tokio::task::spawn_blocking(move || {
                    let mut last: Option<Instant> = None;
                    let mut on_text = |t: &str| {
                        let now = Instant::now();
                        if let Some(prev) = last.replace(now) {
                            stats.inter_token.observe((now - prev).as_secs_f64());
                        }
                        match tx.send(Event::Text(t.to_string())) {
                            Ok(()) => Flow::Continue,
                            Err(_) => Flow::Stop,
                        }
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
            stats.running.dec();
            let secs = t0.elapsed().as_secs_f64();
            let gone = tx.is_closed() || cancel.load(Ordering::Relaxed);
            match &r {
                Ok(c) => {
                    stats.prompt_tokens.inc_by(c.usage.prompt_tokens as u64);
                    stats.ttft.observe(c.timings.ttft_s);
                    stats.completion_tokens.inc_by(c.usage.completion_tokens as u64);
                    let counter = if gone { &stats.cancelled } else { &stats.completed };
                    counter.inc();
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
                    stats.cancelled.inc();
                    log::info!("{id}: client gone after {secs:.2} s: stopped");
                }
                Err(e) => {
                    stats.failed.inc();
                    log::warn!("{id}: failed after {secs:.2} s: {e}");
                }
            }
            let _ = tx.send(Event::Done(r));
        });
        rx
    }
}
