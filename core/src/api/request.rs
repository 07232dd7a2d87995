//! The request every front end sends, in OpenAI's field names: `ChatRequest` for
//! `/v1/chat/completions`-shaped calls, `CompletionRequest` for raw text. Parsed from JSON
//! (the server's body, a Python call's keywords, a JS object) and checked once, here, with
//! one meaning per field and errors that name the field.
//!
//! A field that yangtuo does not implement is an error naming it, never silently ignored:
//! a caller who asks for tool calls or a JSON schema must not get unconstrained text
//! with a 200.

use super::Endpoint;
use crate::chat::Message;
use crate::chat::tools::{self, ToolUse};
use crate::generate::{GenerateOptions, MAX_TOP_LOGPROBS};
use crate::grammar::Grammar;
use crate::sampler::SamplingParams;
use crate::{Error, Result};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The fields both request kinds take. `None` is "not given": the front end's defaults
/// apply (Meta's temperature 0.6 and top_p 0.9 unless a server sets others).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Params {
    /// Accepted and not checked: one process serves one model.
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name for `max_tokens`; it wins when both are given.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    /// `repeat_penalty` is llama-cpp-python's name for it.
    #[serde(alias = "repeat_penalty")]
    pub repetition_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    /// A seed ≥ 0 makes sampling repeatable; -1 (llama.cpp's convention) or none is random.
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Chat: `true` reports each token's log-probability, `top_logprobs` (0-20) adds the
    /// most likely alternatives. Completions (legacy): the number of alternatives (0-20).
    pub logprobs: Option<Logprobs>,
    pub top_logprobs: Option<i64>,
    pub n: Option<i64>,
    pub response_format: Option<Value>,
    /// OpenAI's function tools; a call is constrained to one of them (chat/tools.rs).
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    /// Accepted; an answer makes at most one call.
    pub parallel_tool_calls: Option<bool>,
    /// Accepted for OpenAI clients; not used.
    pub user: Option<String>,
    /// yangtuo's: `truncate-oldest` leaves out the oldest turns that do not fit the
    /// context, `error` (a one-shot call's default) fails with the sizes.
    pub context_overflow: Option<String>,
    /// vLLM's and llama.cpp's: generate to `max_tokens` without stopping at EOS.
    pub ignore_eos: Option<bool>,
    /// llama.cpp's field, here in llguidance's Lark dialect: the answer must match it.
    pub grammar: Option<String>,
}

/// The names `Params` reads, for the unknown-field check.
const PARAMS: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "n",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "context_overflow",
    "ignore_eos",
    "grammar",
];

/// `logprobs`: a flag in chat requests, a count in legacy completions.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Logprobs {
    Flag(bool),
    Count(i64),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A chat request: `messages` plus the shared fields.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub params: Params,
}

/// A raw completion: BOS, then `prompt`, no template.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: String,
    pub params: Params,
}

/// A request's fields as the engine takes them.
#[derive(Debug, Clone)]
pub struct Checked {
    pub opts: GenerateOptions,
    pub stream: bool,
    /// Stream a last chunk with the usage (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The tools the model may call, and how (chat requests only).
    pub tools: Option<ToolUse>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    /// `[{"type": "text", "text": "..."}]`
    Parts(Vec<Map<String, Value>>),
}

impl ChatRequest {
    /// Parse a JSON request object.
    pub fn from_json(body: &[u8]) -> Result<ChatRequest> {
        ChatRequest::from_value(parse(body)?)
    }

    pub fn from_value(v: Value) -> Result<ChatRequest> {
        let mut obj = object(v)?;
        known_fields(&obj, &["messages"])?;
        let messages = obj
            .remove("messages")
            .ok_or_else(|| Error::arg("messages", "is required"))?;
        let Value::Array(list) = messages else {
            return Err(Error::arg("messages", "must be a list of {role, content}"));
        };
        if list.is_empty() {
            return Err(Error::arg("messages", "must not be empty"));
        }
        let mut calls = vec![];
        let messages = list
            .into_iter()
            .enumerate()
            .map(|(i, m)| message(i, m, &mut calls))
            .collect::<Result<_>>()?;
        Ok(ChatRequest {
            messages: tools::fold_results(messages),
            params: field("request", Value::Object(obj))?,
        })
    }
}

impl CompletionRequest {
    pub fn from_json(body: &[u8]) -> Result<CompletionRequest> {
        CompletionRequest::from_value(parse(body)?)
    }

    pub fn from_value(v: Value) -> Result<CompletionRequest> {
        let mut obj = object(v)?;
        known_fields(&obj, &["prompt"])?;
        let prompt = match obj.remove("prompt") {
            Some(Value::String(p)) => p,
            Some(Value::Array(mut list)) if list.len() == 1 && list[0].is_string() => {
                list.remove(0).as_str().unwrap_or_default().to_string()
            }
            Some(Value::Array(list)) => {
                return Err(Error::arg(
                    "prompt",
                    format!("must be one string, got a list of {}", list.len()),
                ));
            }
            Some(_) => return Err(Error::arg("prompt", "must be a string")),
            None => return Err(Error::arg("prompt", "is required")),
        };
        if prompt.is_empty() {
            return Err(Error::arg("prompt", "must not be empty"));
        }
        Ok(CompletionRequest {
            prompt,
            params: field("request", Value::Object(obj))?,
        })
    }
}

/// One message: `role`, and `content` as a string or text parts (`name` is accepted). An
/// assistant's `tool_calls` and a `tool` result (or a legacy `function` one) become text in
/// the convention of chat/tools.rs; `calls` collects (id, name) of the calls so far, which
/// a result's `tool_call_id` names.
fn message(i: usize, m: Value, calls: &mut Vec<(String, String)>) -> Result<Message> {
    let bad = |msg: String| Error::Template { index: i, msg };
    let Value::Object(mut m) = m else {
        return Err(bad("must be an object {role, content}".into()));
    };
    const FIELDS: &[&str] = &["role", "content", "name", "tool_calls", "tool_call_id"];
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!(
            "`{k}` is not a supported message field ({})",
            FIELDS.join(", ")
        )));
    }
    let role = match m.remove("role") {
        Some(Value::String(r)) => r,
        _ => return Err(bad("`role` must be a string".into())),
    };
    let content = match m
        .remove("content")
        .filter(|c| !c.is_null())
        .map(serde_json::from_value::<Content>)
    {
        Some(Ok(Content::Text(t))) => Some(t),
        Some(Ok(Content::Parts(parts))) => {
            let mut t = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(s)) => t.push_str(s),
                    (kind, _) => {
                        return Err(bad(format!(
                            "content parts of type `{}` are not supported (text only)",
                            kind.unwrap_or("?")
                        )));
                    }
                }
            }
            Some(t)
        }
        None => None,
        Some(Err(_)) => {
            return Err(bad(
                "`content` must be a string or a list of text parts".into()
            ));
        }
    };
    let call_list = m.remove("tool_calls").filter(|c| !c.is_null());
    match (role.as_str(), call_list) {
        ("assistant", Some(list)) => {
            let Value::Array(list) = list else {
                return Err(bad("`tool_calls` must be a list".into()));
            };
            let mut lines: Vec<String> = content
                .into_iter()
                .filter(|c| !c.trim().is_empty())
                .collect();
            for (k, call) in list.iter().enumerate() {
                let f = call.get("function");
                let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                let args = f.and_then(|f| f.get("arguments"));
                // OpenAI sends the arguments as JSON text; an object is taken as well
                let args = match args {
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
                    Some(v @ Value::Object(_)) => Some(v.clone()),
                    _ => None,
                };
                let (Some(name), Some(args)) = (name, args.filter(Value::is_object)) else {
                    return Err(bad(format!(
                        "tool_calls[{k}] must be {{id, type, function: {{name, arguments: a JSON object's text}}}}"
                    )));
                };
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    calls.push((id.to_string(), name.to_string()));
                }
                lines.push(tools::call_text(name, &args));
            }
            Ok(Message {
                role,
                content: lines.join("\n"),
            })
        }
        (_, Some(_)) => Err(bad("only an assistant message has `tool_calls`".into())),
        ("tool" | "function", None) => {
            let content = content.ok_or_else(|| bad("`content` is missing".into()))?;
            let by_id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .and_then(|id| calls.iter().rev().find(|(c, _)| c == id));
            let name = match (by_id, m.get("name").and_then(Value::as_str)) {
                (Some((_, name)), _) => name.clone(),
                (None, Some(name)) => name.to_string(),
                (None, None) => {
                    return Err(bad(
                        "a tool result needs the `tool_call_id` of an earlier call (or a `name`)"
                            .into(),
                    ));
                }
            };
            Ok(Message {
                role: "tool".into(),
                content: tools::result_text(&name, &content),
            })
        }
        (_, None) => match content {
            Some(content) => Ok(Message { role, content }),
            None => Err(bad("`content` is missing".into())),
        },
    }
}

impl Params {
    /// What `response_format` and `grammar` ask the answer to match: OpenAI's
    /// `{"type": "text" | "json_object"}` and `{"type": "json_schema", "json_schema":
    /// {"name", "schema", "strict"}}`, or a Lark grammar. Compiled later, against the
    /// model's vocabulary (grammar.rs).
    fn grammar(&self) -> Result<Option<Grammar>> {
        let format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(f) => match f.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(Grammar::JsonObject),
                Some("json_schema") => {
                    let schema = f
                        .get("json_schema")
                        .and_then(|j| j.get("schema"))
                        .filter(|s| s.is_object() || s.is_boolean());
                    match schema {
                        Some(s) => Some(Grammar::JsonSchema(s.clone())),
                        None => {
                            return Err(Error::arg(
                                "response_format",
                                "`json_schema.schema` must be a JSON Schema object",
                            ));
                        }
                    }
                }
                _ => {
                    return Err(Error::arg(
                        "response_format",
                        "`type` must be one of text, json_object, json_schema",
                    ));
                }
            },
        };
        match (format, &self.grammar) {
            (Some(_), Some(_)) => Err(Error::arg(
                "grammar",
                "cannot be combined with a JSON response_format",
            )),
            (f, None) => Ok(f),
            (None, Some(g)) if g.trim().is_empty() => Err(Error::arg("grammar", "is empty")),
            // llama.cpp's `grammar` takes GBNF; its rules read `name ::= …`, never Lark's
            (None, Some(g))
                if g.lines()
                    .any(|l| l.split('#').next().unwrap_or("").contains("::=")) =>
            {
                Err(Error::arg(
                    "grammar",
                    "looks like GBNF (llama.cpp's `name ::= ...` rules); this field takes llguidance's Lark dialect \
                 (`name: ...`); llguidance's gbnf_to_lark.py converts GBNF",
                ))
            }
            (None, Some(g)) => Ok(Some(Grammar::Lark(g.clone()))),
        }
    }

    pub fn check(&self, defaults: &SamplingParams) -> Result<Checked> {
        self.check_for(defaults, Endpoint::Chat)
    }

    /// How many alternatives to report per token, if logprobs are asked for: chat takes
    /// `logprobs: true` and `top_logprobs`, legacy completions a count in `logprobs`.
    fn logprobs(&self, endpoint: Endpoint) -> Result<Option<usize>> {
        let count = |name: &'static str, n: i64| {
            if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) {
                Ok(n as usize)
            } else {
                Err(Error::arg(
                    name,
                    format!("must be in 0..={MAX_TOP_LOGPROBS}, got {n}"),
                ))
            }
        };
        match (endpoint, self.logprobs, self.top_logprobs) {
            (Endpoint::Chat, Some(Logprobs::Flag(true)), top) => {
                Ok(Some(top.map_or(Ok(0), |n| count("top_logprobs", n))?))
            }
            (Endpoint::Chat, Some(Logprobs::Count(_)), _) => Err(Error::arg(
                "logprobs",
                "must be true or false in a chat request",
            )),
            (Endpoint::Chat, _, Some(_)) => {
                Err(Error::arg("top_logprobs", "needs `logprobs: true`"))
            }
            (Endpoint::Chat, _, None) => Ok(None),
            (Endpoint::Text, _, Some(_)) => Err(Error::arg(
                "top_logprobs",
                "is a chat field; completions take a count in `logprobs`",
            )),
            (Endpoint::Text, Some(Logprobs::Count(n)), None) => Ok(Some(count("logprobs", n)?)),
            (Endpoint::Text, Some(Logprobs::Flag(_)), None) => Err(Error::arg(
                "logprobs",
                "must be a count (0-20) in a completion request",
            )),
            (Endpoint::Text, None, None) => Ok(None),
        }
    }

    /// The one check of a request's fields for `endpoint`; `defaults` fill what it leaves out.
    pub fn check_for(&self, defaults: &SamplingParams, endpoint: Endpoint) -> Result<Checked> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(Error::arg(
                "n",
                format!("must be 1 (one choice per request), got {n}"),
            ));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        if let Some((name, m)) = max_tokens
            && m < 1
        {
            return Err(Error::arg(name, format!("must be at least 1, got {m}")));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(Error::arg(
                    name,
                    "is not supported; use repetition_penalty (CTRL-style, 1.1-1.3)",
                ));
            }
        }
        let mut grammar = self.grammar()?;
        let tools = ToolUse::from_request(self.tools.as_ref(), self.tool_choice.as_ref())?;
        if let Some(t) = &tools {
            if endpoint == Endpoint::Text {
                return Err(Error::arg("tools", "is a chat field"));
            }
            if let Some(g) = &grammar {
                return Err(Error::arg(
                    g.field(),
                    "cannot be combined with tools (unless tool_choice is none)",
                ));
            }
            grammar = Some(t.grammar());
        }
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.iter().any(|s| s.is_empty()) {
            return Err(Error::arg("stop", "strings must not be empty"));
        }
        let seed = match self.seed {
            None | Some(-1) => defaults.seed,
            Some(s) if s >= 0 => Some(s as u64),
            Some(s) => {
                return Err(Error::arg(
                    "seed",
                    format!("must be >= 0, or -1 for a random seed; got {s}"),
                ));
            }
        };
        let top_k = match self.top_k {
            None => defaults.top_k,
            Some(k) if k >= 1 => Some(k as usize),
            Some(k) => {
                return Err(Error::arg(
                    "top_k",
                    format!("must be at least 1 (or unset), got {k}"),
                ));
            }
        };
        let sampling = SamplingParams {
            temperature: self
                .temperature
                .map(|t| t as f32)
                .unwrap_or(defaults.temperature),
            top_p: self.top_p.map(|p| p as f32).unwrap_or(defaults.top_p),
            top_k,
            min_p: self.min_p.map(|p| p as f32).or(defaults.min_p),
            repetition_penalty: self
                .repetition_penalty
                .map(|p| p as f32)
                .or(defaults.repetition_penalty),
            seed,
        };
        sampling.validate()?;
        let opts = GenerateOptions {
            max_tokens: max_tokens.map(|(_, m)| m as usize),
            sampling,
            stop,
            allow_control_tokens: false,
            context_overflow: self
                .context_overflow
                .as_deref()
                .map(str::parse)
                .transpose()?,
            logprobs: self.logprobs(endpoint)?,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            grammar,
        };
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(Checked {
            opts,
            stream: self.stream.unwrap_or(false),
            include_usage,
            tools,
        })
    }
}

/// A JSON object from request bytes.
fn parse(body: &[u8]) -> Result<Value> {
    if body.is_empty() {
        return Err(Error::arg(
            "request",
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::arg("request", format!("is not valid JSON: {e}")))
}

fn object(v: Value) -> Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(Error::arg("request", "must be a JSON object")),
    }
}

/// Every key is one of `Params`' or the endpoint's own.
fn known_fields(obj: &Map<String, Value>, own: &[&str]) -> Result<()> {
    match obj
        .keys()
        .find(|k| !PARAMS.contains(&k.as_str()) && !own.contains(&k.as_str()))
    {
        Some(k) => Err(Error::arg(k.clone(), "is not a supported field")),
        None => Ok(()),
    }
}

/// `T` from `v`, or an error naming the field at fault.
fn field<T: DeserializeOwned>(what: &'static str, v: Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::arg(what, inner.to_string())
        } else {
            let name = path.split(['.', '[']).next().unwrap_or(&path).to_string();
            Error::arg(name, format!("invalid `{path}`: {inner}"))
        }
    })
}
