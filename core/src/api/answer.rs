//! The answer every front end returns, serializing to OpenAI's JSON: `ChatCompletion` and,
//! streamed, `ChatCompletionChunk`s; `TextCompletion` for raw completions. Each adds
//! yangtuo's `timings` (prefill and decode speed) as an extra field, as llama.cpp's server
//! does. Front ends pass these through and add nothing.

use super::logprobs::{ChatLogprobs, TextLogprobs};
use crate::chat::tools::ToolCall;
use crate::generate::{Completion, FinishReason, Timings};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// The fields every object of one answer shares.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    /// A fresh id (`chatcmpl-…` / `cmpl-…`, unique in this process) and the time now.
    pub fn new(prefix: &str, model: &str) -> Meta {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let created = unix_now();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Meta {
            id: format!("{prefix}-{created:x}{n:06x}"),
            created,
            model: model.to_string(),
        }
    }
}

fn unix_now() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    #[cfg(target_arch = "wasm32")]
    {
        (js_sys::Date::now() / 1000.0) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV came from a cache (an earlier turn, a shared system prompt).
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl From<&Completion> for Usage {
    fn from(c: &Completion) -> Usage {
        Usage {
            prompt_tokens: c.usage.prompt_tokens,
            completion_tokens: c.usage.completion_tokens,
            total_tokens: c.usage.total_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: c
                    .usage
                    .prompt_tokens
                    .saturating_sub(c.timings.prefill_tokens),
            },
        }
    }
}

/// The answer's message: its text, or (`content: null`) the tool call it makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: FinishReason,
}

/// `object: "chat.completion"`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    #[serde(flatten)]
    pub meta: Meta,
    pub object: &'static str,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
    pub timings: Timings,
}

impl ChatCompletion {
    /// The answer `c`; with `call`, a tool call (`c.finish_reason` is then `ToolCalls`).
    pub fn new(
        meta: Meta,
        c: &Completion,
        call: Option<ToolCall>,
        logprobs: Option<ChatLogprobs>,
    ) -> ChatCompletion {
        let message = match call {
            Some(call) => AssistantMessage {
                role: "assistant",
                content: None,
                tool_calls: Some(vec![call]),
            },
            None => AssistantMessage {
                role: "assistant",
                content: Some(c.text.clone()),
                tool_calls: None,
            },
        };
        ChatCompletion {
            meta,
            object: "chat.completion",
            choices: vec![ChatChoice {
                index: 0,
                message,
                logprobs,
                finish_reason: c.finish_reason,
            }],
            usage: Usage::from(c),
            system_fingerprint: None,
            timings: c.timings,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A streamed tool call: the whole call in one delta, at `index` 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(flatten)]
    pub call: ToolCall,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// `object: "chat.completion.chunk"`: the first carries the role, then one per piece of
/// text, the last the finish reason (and the timings); with `include_usage`, a final
/// chunk with no choices carries the usage and every other has `usage: null`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    #[serde(flatten)]
    pub meta: Meta,
    pub object: &'static str,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

impl ChatCompletionChunk {
    fn with(
        meta: &Meta,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<FinishReason>,
        include_usage: bool,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            meta: meta.clone(),
            object: "chat.completion.chunk",
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            usage: include_usage.then_some(None),
            system_fingerprint: None,
            timings: None,
        }
    }

    /// The first chunk: the assistant's role and empty content.
    pub fn role(meta: &Meta, include_usage: bool) -> ChatCompletionChunk {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            tool_calls: None,
        };
        ChatCompletionChunk::with(meta, delta, None, None, include_usage)
    }

    /// A piece of the answer's text, with its tokens' logprobs if asked.
    pub fn text(
        meta: &Meta,
        text: &str,
        logprobs: Option<ChatLogprobs>,
        include_usage: bool,
    ) -> ChatCompletionChunk {
        let delta = Delta {
            role: None,
            content: Some(text.to_string()),
            tool_calls: None,
        };
        ChatCompletionChunk::with(meta, delta, logprobs, None, include_usage)
    }

    /// The tool call the answer makes, whole, with its tokens' logprobs if asked.
    pub fn tool_call(
        meta: &Meta,
        call: ToolCall,
        logprobs: Option<ChatLogprobs>,
        include_usage: bool,
    ) -> ChatCompletionChunk {
        let delta = Delta {
            role: None,
            content: None,
            tool_calls: Some(vec![ToolCallDelta { index: 0, call }]),
        };
        ChatCompletionChunk::with(meta, delta, logprobs, None, include_usage)
    }

    /// The last chunk with a choice: the finish reason, the timings, and the logprobs of
    /// tokens whose text never streamed (a stop string's).
    pub fn finish(
        meta: &Meta,
        c: &Completion,
        logprobs: Option<ChatLogprobs>,
        include_usage: bool,
    ) -> ChatCompletionChunk {
        let mut chunk = ChatCompletionChunk::with(
            meta,
            Delta::default(),
            logprobs,
            Some(c.finish_reason),
            include_usage,
        );
        chunk.timings = Some(c.timings);
        chunk
    }

    /// After the finish chunk when `include_usage`: no choices, the usage.
    pub fn usage(meta: &Meta, c: &Completion) -> ChatCompletionChunk {
        ChatCompletionChunk {
            meta: meta.clone(),
            object: "chat.completion.chunk",
            choices: vec![],
            usage: Some(Some(Usage::from(c))),
            system_fingerprint: None,
            timings: None,
        }
    }

    /// The chunks that end a stream: the finish, then the usage if asked.
    pub fn last(
        meta: &Meta,
        c: &Completion,
        logprobs: Option<ChatLogprobs>,
        include_usage: bool,
    ) -> Vec<ChatCompletionChunk> {
        let mut v = vec![ChatCompletionChunk::finish(
            meta,
            c,
            logprobs,
            include_usage,
        )];
        if include_usage {
            v.push(ChatCompletionChunk::usage(meta, c));
        }
        v
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// `object: "text_completion"`, whole or as a streamed piece (then without usage unless
/// asked, as `ChatCompletionChunk`).
#[derive(Debug, Clone, Serialize)]
pub struct TextCompletion {
    #[serde(flatten)]
    pub meta: Meta,
    pub object: &'static str,
    pub choices: Vec<TextChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

impl TextCompletion {
    pub fn new(meta: Meta, c: &Completion, logprobs: Option<TextLogprobs>) -> TextCompletion {
        TextCompletion {
            meta,
            object: "text_completion",
            choices: vec![TextChoice {
                index: 0,
                text: c.text.clone(),
                logprobs,
                finish_reason: Some(c.finish_reason),
            }],
            usage: Some(Some(Usage::from(c))),
            system_fingerprint: None,
            timings: Some(c.timings),
        }
    }

    fn piece(
        meta: &Meta,
        text: &str,
        logprobs: Option<TextLogprobs>,
        finish: Option<FinishReason>,
        include_usage: bool,
    ) -> TextCompletion {
        TextCompletion {
            meta: meta.clone(),
            object: "text_completion",
            choices: vec![TextChoice {
                index: 0,
                text: text.to_string(),
                logprobs,
                finish_reason: finish,
            }],
            usage: include_usage.then_some(None),
            system_fingerprint: None,
            timings: None,
        }
    }

    /// A streamed piece of text, with its tokens' logprobs if asked.
    pub fn text(
        meta: &Meta,
        text: &str,
        logprobs: Option<TextLogprobs>,
        include_usage: bool,
    ) -> TextCompletion {
        TextCompletion::piece(meta, text, logprobs, None, include_usage)
    }

    /// The chunks that end a stream: the finish (with timings and the logprobs of tokens
    /// whose text never streamed), then the usage if asked.
    pub fn last(
        meta: &Meta,
        c: &Completion,
        logprobs: Option<TextLogprobs>,
        include_usage: bool,
    ) -> Vec<TextCompletion> {
        let mut finish =
            TextCompletion::piece(meta, "", logprobs, Some(c.finish_reason), include_usage);
        finish.timings = Some(c.timings);
        let mut v = vec![finish];
        if include_usage {
            v.push(TextCompletion {
                meta: meta.clone(),
                object: "text_completion",
                choices: vec![],
                usage: Some(Some(Usage::from(c))),
                system_fingerprint: None,
                timings: None,
            });
        }
        v
    }
}
