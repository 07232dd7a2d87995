//! The OpenAI wire format: request bodies (parsed and checked before any work), response and
//! chunk objects, and the error body `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use yangtuo::api::{self, ChatRequest, CompletionRequest};
use yangtuo::{Completion, Error, GenerateOptions, Message, SamplingParams};

/// An error answered with an OpenAI-shaped body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: Some("not_found"), ..ApiError::invalid(message, None) }
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// An engine error: what the caller got wrong is a 400, the rest a 500.
    pub fn from_engine(e: &Error) -> ApiError {
        match e {
            Error::Template { index, msg } => ApiError::invalid(format!("messages[{index}]: {msg}"), Some("messages")),
            Error::ContextLength { .. } => {
                ApiError { code: Some("context_length_exceeded"), ..ApiError::invalid(e.to_string(), Some("messages")) }
            }
            Error::InvalidArg { name, msg } => ApiError::invalid(format!("`{name}` {msg}"), Some(name.as_ref())),
            Error::Tokenizer(_) => ApiError::invalid(e.to_string(), None),
            _ => ApiError::server(e.to_string()),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// What a request asks for, checked (by core: `yangtuo::api`).
pub struct Request<P> {
    pub prompt: P,
    pub opts: GenerateOptions,
    pub stream: bool,
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`.
pub fn chat_request(body: &[u8], default_sampling: &SamplingParams) -> Result<Request<Vec<Message>>, ApiError> {
    let req = ChatRequest::from_json(body).map_err(|e| ApiError::from_engine(&e))?;
    let c = req.params.check(default_sampling).map_err(|e| ApiError::from_engine(&e))?;
    Ok(Request { prompt: req.messages, opts: c.opts, stream: c.stream, include_usage: c.include_usage })
}

/// `POST /v1/completions`: one prompt string.
pub fn completion_request(body: &[u8], default_sampling: &SamplingParams) -> Result<Request<String>, ApiError> {
    let req = CompletionRequest::from_json(body).map_err(|e| ApiError::from_engine(&e))?;
    let c = req.params.check(default_sampling).map_err(|e| ApiError::from_engine(&e))?;
    Ok(Request { prompt: req.prompt, opts: c.opts, stream: c.stream, include_usage: c.include_usage })
}

/// The kind of endpoint, for the shapes of its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// The ids and shapes of one response; the objects are core's (`yangtuo::api`).
#[derive(Debug, Clone)]
pub struct Meta {
    pub meta: api::Meta,
    pub kind: Kind,
}

fn to_value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Meta {
    /// The whole answer.
    pub fn response(&self, c: &Completion) -> Value {
        match self.kind {
            Kind::Chat => to_value(api::ChatCompletion::new(self.meta.clone(), c)),
            Kind::Text => to_value(api::TextCompletion::new(self.meta.clone(), c)),
        }
    }

    /// The first chunk of a streamed chat answer: the role.
    pub fn role_chunk(&self, include_usage: bool) -> Value {
        to_value(api::ChatCompletionChunk::role(&self.meta, include_usage))
    }

    /// One streamed piece of text.
    pub fn text_chunk(&self, text: &str, include_usage: bool) -> Value {
        match self.kind {
            Kind::Chat => to_value(api::ChatCompletionChunk::text(&self.meta, text, include_usage)),
            Kind::Text => to_value(api::TextCompletion::text(&self.meta, text, include_usage)),
        }
    }

    /// The chunks that end a stream: the finish reason, then the usage if asked.
    pub fn last_chunks(&self, c: &Completion, include_usage: bool) -> Vec<Value> {
        match self.kind {
            Kind::Chat => api::ChatCompletionChunk::last(&self.meta, c, include_usage).into_iter().map(to_value).collect(),
            Kind::Text => api::TextCompletion::last(&self.meta, c, include_usage).into_iter().map(to_value).collect(),
        }
    }
}
