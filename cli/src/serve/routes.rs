//! The endpoints: `/v1/chat/completions`, `/v1/completions` (each whole or streamed as
//! server-sent events), `/v1/models` and `/health`.

use super::api::ApiError;
use super::jobs::{Event, Jobs};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;
use yangtuo::SamplingParams;
use yangtuo::api::{Answer, Endpoint, Prepared, Request};

pub struct App {
    pub jobs: Jobs,
    /// The name clients see in `model` (the `--model` argument as given).
    pub model: String,
    pub started: u64,
    /// Sampling for fields a request leaves out (Meta's 0.6 / 0.9).
    pub sampling: SamplingParams,
    /// The most messages a chat request may carry.
    pub max_messages: usize,
}

pub async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Response {
    answer(app, Endpoint::Chat, body).await
}

pub async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    answer(app, Endpoint::Text, body).await
}

/// A request checked and rendered by core before it queues: every error the caller can
/// cause is a 400 now, never a failure after waiting.
fn prepare(app: &App, endpoint: Endpoint, body: &[u8]) -> Result<Prepared, ApiError> {
    let req = Request::from_json(endpoint, body).map_err(|e| ApiError::from_engine(&e))?;
    if let Request::Chat(c) = &req
        && c.messages.len() > app.max_messages
    {
        let msg = format!(
            "{} messages is more than this server takes ({})",
            c.messages.len(),
            app.max_messages
        );
        return Err(ApiError::invalid(msg, Some("messages")));
    }
    let mut prepared = app.jobs.llama.prepare(&req, &app.sampling).map_err(|e| {
        let mut e = ApiError::from_engine(&e);
        if e.code == Some("context_length_exceeded") && endpoint == Endpoint::Text {
            e.param = Some("prompt".into());
        }
        e
    })?;
    // clients see the model by the name it is served under
    prepared.meta.model.clone_from(&app.model);
    Ok(prepared)
}

async fn answer(app: Arc<App>, endpoint: Endpoint, body: Bytes) -> Response {
    // parsing, the chat template and tokenizing run on a blocking thread: a huge prompt or
    // a slow template must not hold up the threads that answer everyone else
    let checked = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || prepare(&app, endpoint, &body)).await
    };
    let prepared = match checked
        .unwrap_or_else(|e| Err(ApiError::server(format!("the request check failed: {e}"))))
    {
        Ok(p) => p,
        Err(e) => {
            app.jobs.stats.requests.inc();
            log::info!("rejected ({}): {}", e.status.as_u16(), e.message);
            return e.into_response();
        }
    };
    let stream = prepared.stream();
    let rx = app.jobs.submit(prepared);
    if stream {
        return axum::response::Sse::new(sse(rx))
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    match finish(rx).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The answer at the end of the events.
async fn finish(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Answer, ApiError> {
    while let Some(ev) = rx.recv().await {
        if let Event::Done(r) = ev {
            return r;
        }
    }
    Err(ApiError::server("the generation ended without a result"))
}

/// The events of a streamed answer: core's chunks as they come, an error body if the
/// generation failed, then `[DONE]`. Dropping the stream (the client went away) drops
/// `rx`, which stops the generation.
fn sse(rx: mpsc::UnboundedReceiver<Event>) -> impl Stream<Item = Result<Sse, Infallible>> {
    enum St {
        Open(mpsc::UnboundedReceiver<Event>),
        /// `[DONE]` is next.
        Done,
        End,
    }
    let data = |s: String| Ok(Sse::default().data(s));
    stream::unfold(St::Open(rx), move |st| async move {
        match st {
            St::Open(mut rx) => Some(match rx.recv().await {
                Some(Event::Chunk(json)) => (data(json), St::Open(rx)),
                Some(Event::Done(Ok(_))) => (data("[DONE]".into()), St::End),
                Some(Event::Done(Err(e))) => (data(e.body().to_string()), St::Done),
                None => (
                    data(
                        ApiError::server("the generation ended without a result")
                            .body()
                            .to_string(),
                    ),
                    St::Done,
                ),
            }),
            St::Done => Some((data("[DONE]".into()), St::End)),
            St::End => None,
        }
    })
}

pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": app.model, "object": "model", "created": app.started, "owned_by": "yangtuo"}
    ]}))
}

pub async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    let s = &app.jobs.stats;
    let llama = &app.jobs.llama;
    Json(json!({
        "status": "ok",
        "model": app.model,
        "device": llama.device(),
        "context_length": llama.context_length(),
        "parallel": app.jobs.parallel,
        "running": s.running.get(),
        "queued": s.queued.get(),
        "requests": s.requests.get(),
        "completed": s.completed.get(),
        "cancelled": s.cancelled.get(),
        "failed": s.failed.get(),
        "prompt_tokens": s.prompt_tokens.get(),
        "completion_tokens": s.completion_tokens.get(),
    }))
}

/// Prometheus' text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let headers = [(
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8",
    )];
    let batch = app.jobs.llama.batch_stats();
    (headers, app.jobs.stats.render(batch)).into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {uri}; this server has /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics"
    ))
}
