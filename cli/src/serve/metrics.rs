//! The server's counters, shared by `GET /health` (JSON) and `GET /metrics` (Prometheus'
//! text format, through the official client `prometheus-client`): requests by outcome,
//! tokens, queue depth, histograms of time to first token and of the time between
//! streamed pieces, and how much the batch scheduler batched.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct Stats {
    pub requests: Counter,
    pub completed: Counter,
    /// Generations stopped because their client went away.
    pub cancelled: Counter,
    /// Requests past `--request-timeout` (queued: refused; running: cut short).
    pub timed_out: Counter,
    pub failed: Counter,
    pub queued: Gauge,
    pub running: Gauge,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    /// Seconds from the start of a generation to its first token.
    pub ttft: Histogram,
    /// Seconds between two streamed pieces of one answer.
    pub inter_token: Histogram,
    /// The scheduler's own counts (core's `BatchStats`), brought up to date at each render.
    batch_steps: Counter,
    batch_sequences: Counter,
    /// Serialises those updates, so two scrapes at once do not both add the same steps.
    batch_sync: std::sync::Mutex<()>,
    registry: Registry,
}

impl Default for Stats {
    fn default() -> Stats {
        let s = Stats {
            requests: Counter::default(),
            completed: Counter::default(),
            cancelled: Counter::default(),
            timed_out: Counter::default(),
            failed: Counter::default(),
            queued: Gauge::default(),
            running: Gauge::default(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            // 1 ms .. 65 s
            ttft: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 0.5 ms .. 4 s
            inter_token: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            batch_steps: Counter::default(),
            batch_sequences: Counter::default(),
            batch_sync: std::sync::Mutex::new(()),
            registry: Registry::with_prefix("yangtuo"),
        };
        let mut r = Registry::with_prefix("yangtuo");
        r.register(
            "requests",
            "Requests received, rejected ones included",
            s.requests.clone(),
        );
        r.register(
            "requests_completed",
            "Generations that ran to their end",
            s.completed.clone(),
        );
        r.register(
            "requests_cancelled",
            "Generations stopped because the client went away",
            s.cancelled.clone(),
        );
        r.register(
            "requests_timed_out",
            "Requests past --request-timeout",
            s.timed_out.clone(),
        );
        r.register(
            "requests_failed",
            "Generations that failed",
            s.failed.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a generation slot",
            s.queued.clone(),
        );
        r.register("running", "Generations running", s.running.clone());
        r.register(
            "prompt_tokens",
            "Prompt tokens of finished generations",
            s.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Generated tokens",
            s.completion_tokens.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From a generation's start to its first token",
            s.ttft.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Between two streamed pieces of one answer",
            s.inter_token.clone(),
        );
        r.register(
            "batch_steps",
            "Forward passes the batch scheduler ran",
            s.batch_steps.clone(),
        );
        r.register(
            "batch_sequences",
            "Sequences in the batch scheduler's forward passes, summed (over batch_steps: the mean batch)",
            s.batch_sequences.clone(),
        );
        Stats { registry: r, ..s }
    }
}

impl Stats {
    /// Every metric in Prometheus' text format, with the batch counts of `batch` (the
    /// scheduler's, if batching is on).
    pub fn render(&self, batch: Option<yangtuo::BatchStats>) -> String {
        if let Some(b) = batch {
            let _g = self.batch_sync.lock().unwrap_or_else(|p| p.into_inner());
            self.batch_steps
                .inc_by(b.steps.saturating_sub(self.batch_steps.get()));
            self.batch_sequences
                .inc_by(b.sequences.saturating_sub(self.batch_sequences.get()));
        }
        let mut out = String::new();
        // writing into a String cannot fail
        let _ = encode(&mut out, &self.registry);
        out
    }
}
