//! The endpoints: `/v1/chat/completions`, `/v1/completions` (each whole or streamed as
//! server-sent events), `/v1/models` and `/health`.

use super::api::{self, ApiError, Kind, Meta};
use super::jobs::{Event, Input, Jobs};
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
use yangtuo::{Completion, GenerateOptions, SamplingParams, generate::budget};

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

impl App {
    fn meta(&self, kind: Kind) -> Meta {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Meta { meta: yangtuo::api::Meta::new(prefix, &self.model), kind }
    }

    /// A prompt that fits, with room for at least one token (before any queueing).
    fn check_length(&self, prompt: usize, opts: &GenerateOptions, param: &str) -> Result<(), ApiError> {
        budget(prompt, opts.max_tokens, self.jobs.llama.context_length()).map(|_| ()).map_err(|e| {
            let mut e = ApiError::from_engine(&e);
            if e.code == Some("context_length_exceeded") {
                e.param = Some(param.to_string());
            }
            e
        })
    }
}

pub async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let r = api::chat_request(&body, &app.sampling).and_then(|req| {
        if req.prompt.len() > app.max_messages {
            let msg = format!("{} messages is more than this server takes ({})", req.prompt.len(), app.max_messages);
            return Err(ApiError::invalid(msg, Some("messages")));
        }
        let ids =
            app.jobs.llama.render(&req.prompt, req.opts.allow_control_tokens).map_err(|e| ApiError::from_engine(&e))?;
        app.check_length(ids.len(), &req.opts, "messages")?;
        Ok((Input::Ids(ids), req))
    });
    match r {
        Ok((input, req)) => respond(&app, Kind::Chat, input, req.opts, req.stream, req.include_usage).await,
        Err(e) => reject(&app, e),
    }
}

pub async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let r = api::completion_request(&body, &app.sampling).and_then(|req| {
        let n = app.jobs.llama.tokenize(&req.prompt).map_err(|e| ApiError::from_engine(&e))?.len() + 1;
        app.check_length(n, &req.opts, "prompt")?;
        Ok(req)
    });
    match r {
        Ok(req) => respond(&app, Kind::Text, Input::Text(req.prompt), req.opts, req.stream, req.include_usage).await,
        Err(e) => reject(&app, e),
    }
}

fn reject(app: &App, e: ApiError) -> Response {
    app.jobs.stats.requests.inc();
    log::info!("rejected ({}): {}", e.status.as_u16(), e.message);
    e.into_response()
}

async fn respond(
    app: &App,
    kind: Kind,
    input: Input,
    opts: GenerateOptions,
    stream: bool,
    include_usage: bool,
) -> Response {
    let meta = app.meta(kind);
    let rx = app.jobs.submit(meta.meta.id.clone(), input, opts);
    if stream {
        return axum::response::Sse::new(sse(meta, rx, include_usage)).keep_alive(KeepAlive::default()).into_response();
    }
    match finish(rx).await {
        Ok(c) => Json(meta.response(&c)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The completion at the end of the events (the text pieces are in it too).
async fn finish(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Completion, ApiError> {
    while let Some(ev) = rx.recv().await {
        if let Event::Done(r) = ev {
            return r.map_err(|e| ApiError::from_engine(&e));
        }
    }
    Err(ApiError::server("the generation ended without a result"))
}

fn data(v: &Value) -> Result<Sse, Infallible> {
    Ok(Sse::default().data(v.to_string()))
}

/// The events of a streamed answer: role, content deltas, the finish reason, usage if asked,
/// then `[DONE]`. Dropping the stream (the client went away) drops `rx`, which stops the
/// generation.
fn sse(
    meta: Meta,
    rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = Result<Sse, Infallible>> {
    enum St {
        Start,
        Body,
        /// Chunks left to send before `[DONE]`.
        Last(std::vec::IntoIter<Value>),
        End,
    }
    stream::unfold((St::Start, rx), move |(st, mut rx)| {
        let meta = meta.clone();
        async move {
            match st {
                St::Start if meta.kind == Kind::Chat => Some((data(&meta.role_chunk(include_usage)), (St::Body, rx))),
                St::Start | St::Body => match rx.recv().await {
                    Some(Event::Text(t)) => Some((data(&meta.text_chunk(&t, include_usage)), (St::Body, rx))),
                    Some(Event::Done(Ok(c))) => {
                        let mut last = meta.last_chunks(&c, include_usage).into_iter();
                        let first = last.next().unwrap_or(Value::Null);
                        Some((data(&first), (St::Last(last), rx)))
                    }
                    Some(Event::Done(Err(e))) => {
                        Some((data(&ApiError::from_engine(&e).body()), (St::Last(vec![].into_iter()), rx)))
                    }
                    None => Some((
                        data(&ApiError::server("the generation ended without a result").body()),
                        (St::Last(vec![].into_iter()), rx),
                    )),
                },
                St::Last(mut rest) => match rest.next() {
                    Some(v) => Some((data(&v), (St::Last(rest), rx))),
                    None => Some((Ok(Sse::default().data("[DONE]")), (St::End, rx))),
                },
                St::End => None,
            }
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
    let headers = [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    (headers, app.jobs.stats.render()).into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {uri}; this server has /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics"
    ))
}
