//! Running generations: at most `--parallel` at once (a semaphore; the rest wait in its
//! queue), each on a blocking thread so the async runtime stays free, its chunks sent
//! through a channel. A receiver that goes away (the client disconnected) stops the
//! generation through core's cancel flag; so does `--request-timeout`, counted from
//! arrival: a request still queued then gets a 503, a running one ends with the text so
//! far and `finish_reason: "abort"`.

use super::api::ApiError;
use super::metrics::Stats;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use yangtuo::api::{Answer, Prepared};
use yangtuo::{Error, FinishReason, Flow, Llama};

/// What a generation reports.
pub enum Event {
    /// A streamed chunk's JSON.
    Chunk(String),
    Done(Result<Answer, ApiError>),
}

pub struct Jobs {
    pub llama: Arc<Llama>,
    pub slots: Arc<Semaphore>,
    pub parallel: usize,
    pub stats: Arc<Stats>,
    /// From arrival to the end of the answer; `None` is no limit.
    pub timeout: Option<Duration>,
}

impl Jobs {
    /// Queue a generation; its events arrive on the returned receiver. Dropping the receiver
    /// cancels it, queued or running.
    pub fn submit(&self, prepared: Prepared) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (llama, slots, stats) = (self.llama.clone(), self.slots.clone(), self.stats.clone());
        let id = prepared.meta.id.clone();
        let t0 = Instant::now();
        let deadline = self.timeout.map(|t| tokio::time::Instant::from_std(t0) + t);
        stats.requests.inc();
        stats.queued.inc();
        tokio::spawn(async move {
            let permit = tokio::select! {
                // a free slot wins over a deadline that passed meanwhile: the answer then
                // ends at once, as `abort`
                biased;
                p = slots.acquire_owned() => p,
                _ = tx.closed() => {
                    stats.queued.dec();
                    stats.cancelled.inc();
                    log::info!("{id}: client gone while queued");
                    return;
                }
                _ = until(deadline) => {
                    stats.queued.dec();
                    stats.timed_out.inc();
                    log::info!("{id}: timed out while queued");
                    let _ = tx.send(Event::Done(Err(ApiError::timeout(t0.elapsed()))));
                    return;
                }
            };
            stats.queued.dec();
            let Ok(permit) = permit else { return };
            stats.running.inc();
            let waited = t0.elapsed().as_secs_f64();
            let cancel = Arc::new(AtomicBool::new(false));
            let timed_out = Arc::new(AtomicBool::new(false));
            // a client that goes away, or the deadline, sets the cancel flag
            let watch = {
                let (tx, cancel, timed_out) = (tx.clone(), cancel.clone(), timed_out.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tx.closed() => {}
                        _ = until(deadline) => timed_out.store(true, Ordering::Relaxed),
                    }
                    cancel.store(true, Ordering::Relaxed);
                })
            };
            let run = {
                let (tx, cancel, stats) = (tx.clone(), cancel.clone(), stats.clone());
                tokio::task::spawn_blocking(move || {
                    let mut last: Option<Instant> = None;
                    let mut on_chunk = |c: &yangtuo::api::Chunk| {
                        if !c.text().is_empty() {
                            let now = Instant::now();
                            if let Some(prev) = last.replace(now) {
                                stats.inter_token.observe((now - prev).as_secs_f64());
                            }
                        }
                        let json = serde_json::to_string(c).unwrap_or_default();
                        // a client gone before the watcher saw it: a cancel (an abort,
                        // counted as one), not the end of the answer
                        if tx.send(Event::Chunk(json)).is_err() {
                            cancel.store(true, Ordering::Relaxed);
                        }
                        Flow::Continue
                    };
                    llama.run(prepared, Some(&cancel), &mut on_chunk)
                })
            };
            let r = run.await.unwrap_or_else(|e| {
                Err(Error::Device(format!("the generation thread failed: {e}")))
            });
            drop(permit);
            watch.abort();
            stats.running.dec();
            let secs = t0.elapsed().as_secs_f64();
            let gone = tx.is_closed();
            match &r {
                Ok(a) => {
                    let (usage, timings) = (a.usage(), a.timings());
                    stats.prompt_tokens.inc_by(usage.prompt_tokens as u64);
                    stats.ttft.observe(timings.ttft_s);
                    stats
                        .completion_tokens
                        .inc_by(usage.completion_tokens as u64);
                    let aborted = a.finish_reason() == Some(FinishReason::Abort);
                    let (counter, note) = match (aborted, timed_out.load(Ordering::Relaxed)) {
                        (true, true) => (&stats.timed_out, ", timed out: stopped"),
                        (true, false) if gone => (&stats.cancelled, ", client gone: stopped"),
                        _ => (&stats.completed, ""),
                    };
                    counter.inc();
                    log::info!(
                        "{id}: {} prompt + {} completion tokens in {secs:.2} s (queued {waited:.2} s), {:.1} tok/s, {}{note}",
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        timings.decode_tok_s(),
                        a.finish_reason().map_or("?", FinishReason::as_str),
                    );
                }
                Err(e) => {
                    stats.failed.inc();
                    log::warn!("{id}: failed after {secs:.2} s: {e}");
                }
            }
            let _ = tx.send(Event::Done(r.map_err(|e| ApiError::from_engine(&e))));
        });
        rx
    }
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
