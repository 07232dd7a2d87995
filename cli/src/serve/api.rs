//! The OpenAI wire format: request bodies (parsed and checked before any work), response and
//! chunk objects, and the error body `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
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
            Error::InvalidArg { name, msg } => ApiError::invalid(format!("`{name}` {msg}"), Some(name)),
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

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    /// `[{"type": "text", "text": "..."}]`
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Fields shared by both endpoints; unknown fields are ignored, as OpenAI's are.
#[derive(Deserialize)]
struct Common {
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<Stop>,
    seed: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<InMessage>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Prompt,
}

/// What a request asks for, checked.
pub struct Request<P> {
    pub prompt: P,
    pub opts: GenerateOptions,
    pub stream: bool,
    pub include_usage: bool,
}

/// A JSON object, or a 400.
fn parse(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid("the request body is empty; send a JSON object", None));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(ApiError::invalid("the request body must be a JSON object", None)),
        Err(e) => Err(ApiError::invalid(format!("the request body is not valid JSON: {e}"), None)),
    }
}

/// The fields of `T` from a request object, or a 400 that names the field at fault.
fn fields<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(format!("invalid request body: {inner}"), None)
        } else {
            let param = path.split(['.', '[']).next().unwrap_or(&path).to_string();
            ApiError::invalid(format!("invalid `{path}`: {inner}"), Some(&param))
        }
    })
}

impl Common {
    fn check(self, default_sampling: &SamplingParams) -> Result<(GenerateOptions, bool, bool), ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(format!("`n` must be 1 (one choice per request), got {n}"), Some("n")));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        if let Some((name, m)) = max_tokens
            && m < 1
        {
            return Err(ApiError::invalid(format!("`{name}` must be at least 1, got {m}"), Some(name)));
        }
        let stop = match self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid("`stop` strings must not be empty", Some("stop")));
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(default_sampling.temperature),
            top_p: self.top_p.unwrap_or(default_sampling.top_p),
            seed: self.seed.map(|s| s as u64).or(default_sampling.seed),
            ..default_sampling.clone()
        };
        sampling.validate().map_err(|e| ApiError::from_engine(&e))?;
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.unwrap_or_default().include_usage.unwrap_or(false);
        let opts = GenerateOptions {
            max_tokens: max_tokens.map(|(_, m)| m as usize),
            sampling,
            stop,
            allow_control_tokens: false,
        };
        Ok((opts, stream, include_usage))
    }
}

/// `POST /v1/chat/completions`: messages with roles the template checks later.
pub fn chat_request(body: &[u8], default_sampling: &SamplingParams) -> Result<Request<Vec<Message>>, ApiError> {
    let v = parse(body)?;
    let b: ChatBody = fields(&v)?;
    let common: Common = fields(&v)?;
    if b.messages.is_empty() {
        return Err(ApiError::invalid("`messages` must not be empty", Some("messages")));
    }
    let mut messages = vec![];
    for (i, m) in b.messages.into_iter().enumerate() {
        let content = match m.content {
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut t = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(s)) => t.push_str(&s),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}]: content parts of type `{kind}` are not supported (text only)"),
                                Some("messages"),
                            ));
                        }
                    }
                }
                t
            }
            None => return Err(ApiError::invalid(format!("messages[{i}]: `content` is missing"), Some("messages"))),
        };
        messages.push(Message { role: m.role, content });
    }
    let (opts, stream, include_usage) = common.check(default_sampling)?;
    Ok(Request { prompt: messages, opts, stream, include_usage })
}

/// `POST /v1/completions`: one prompt string.
pub fn completion_request(body: &[u8], default_sampling: &SamplingParams) -> Result<Request<String>, ApiError> {
    let v = parse(body)?;
    let b: CompletionBody = fields(&v)?;
    let common: Common = fields(&v)?;
    let prompt = match b.prompt {
        Prompt::One(p) => p,
        Prompt::List(mut v) if v.len() == 1 => v.remove(0),
        Prompt::List(v) => {
            return Err(ApiError::invalid(
                format!("`prompt` must be one string, got a list of {}", v.len()),
                Some("prompt"),
            ));
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("`prompt` must not be empty", Some("prompt")));
    }
    let (opts, stream, include_usage) = common.check(default_sampling)?;
    Ok(Request { prompt, opts, stream, include_usage })
}

/// The kind of endpoint, for the shapes of its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// Fields every object of one response carries.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub kind: Kind,
}

fn usage(c: &Completion) -> Value {
    json!({"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens,
           "total_tokens": c.usage.total_tokens})
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// The whole answer.
    pub fn response(&self, c: &Completion) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": c.text},
                                 "logprobs": null, "finish_reason": c.finish_reason.as_str()}),
            Kind::Text => {
                json!({"index": 0, "text": c.text, "logprobs": null, "finish_reason": c.finish_reason.as_str()})
            }
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
               "choices": [choice], "usage": usage(c), "system_fingerprint": null})
    }

    /// One streamed piece: the first chat chunk carries the role, the last the finish reason.
    pub fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>, with_usage: bool) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
        };
        let mut v = json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
                           "choices": [choice], "system_fingerprint": null});
        if with_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The chunk `stream_options.include_usage` adds: no choices, the usage.
    pub fn usage_chunk(&self, c: &Completion) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
               "choices": [], "usage": usage(c), "system_fingerprint": null})
    }
}
