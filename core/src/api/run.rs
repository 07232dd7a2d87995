//! Running one OpenAI-shaped request, in two steps so a server can refuse a bad request
//! before it queues it: `Llama::prepare` checks the fields and renders the prompt (every
//! error the caller can cause happens here, before any device work), `Llama::run_async`
//! generates, streaming chunks. A cancel ends the answer with `finish_reason: "abort"`
//! and the text so far.

use super::logprobs::{ChatLogprobs, TextLogprobs};
use super::{
    ChatCompletion, ChatCompletionChunk, ChatRequest, Checked, CompletionRequest, Endpoint, Meta,
    TextCompletion,
};
use crate::generate::{ContextOverflow, Flow, Piece, Timings, TokenLogprob, Usage};
use crate::sampler::SamplingParams;
use crate::{FinishReason, Llama, Result};
use serde::Serialize;
use std::sync::atomic::AtomicBool;

/// A chat or a completions request.
#[derive(Debug, Clone)]
pub enum Request {
    Chat(ChatRequest),
    Text(CompletionRequest),
}

impl Request {
    /// Parse a JSON request body for `endpoint`.
    pub fn from_json(endpoint: Endpoint, body: &[u8]) -> Result<Request> {
        Ok(match endpoint {
            Endpoint::Chat => Request::Chat(ChatRequest::from_json(body)?),
            Endpoint::Text => Request::Text(CompletionRequest::from_json(body)?),
        })
    }
}

/// A request that passed every check, its prompt rendered: what `run_async` takes.
#[derive(Debug, Clone)]
pub struct Prepared {
    endpoint: Endpoint,
    prompt: Vec<u32>,
    dropped_turns: usize,
    max_new: usize,
    pub checked: Checked,
    pub meta: Meta,
}

impl Prepared {
    pub fn stream(&self) -> bool {
        self.checked.stream
    }
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }
}

/// A whole answer.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Chat(ChatCompletion),
    Text(TextCompletion),
}

/// One streamed object.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Chunk {
    Chat(ChatCompletionChunk),
    Text(TextCompletion),
}

impl Chunk {
    /// The answer text this chunk adds.
    pub fn text(&self) -> &str {
        let text = match self {
            Chunk::Chat(c) => c.choices.first().and_then(|c| c.delta.content.as_deref()),
            Chunk::Text(c) => c.choices.first().map(|c| c.text.as_str()),
        };
        text.unwrap_or_default()
    }
}

impl Answer {
    pub fn finish_reason(&self) -> Option<FinishReason> {
        match self {
            Answer::Chat(c) => c.choices.first().map(|c| c.finish_reason),
            Answer::Text(c) => c.choices.first().and_then(|c| c.finish_reason),
        }
    }
    pub fn usage(&self) -> Usage {
        let u = match self {
            Answer::Chat(c) => Some(c.usage),
            Answer::Text(c) => c.usage.flatten(),
        };
        u.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        })
        .unwrap_or_default()
    }
    pub fn timings(&self) -> Timings {
        match self {
            Answer::Chat(c) => c.timings,
            Answer::Text(c) => c.timings.unwrap_or_default(),
        }
    }
}

impl Llama {
    /// Check `req` (with `defaults` for the sampling fields it leaves out) and render its
    /// prompt against the context.
    pub fn prepare(&self, req: &Request, defaults: &SamplingParams) -> Result<Prepared> {
        let (endpoint, params) = match req {
            Request::Chat(r) => (Endpoint::Chat, &r.params),
            Request::Text(r) => (Endpoint::Text, &r.params),
        };
        let checked = params.check_for(defaults, endpoint)?;
        let (prompt, dropped_turns) = match req {
            Request::Chat(r) => {
                let described;
                let messages = match &checked.tools {
                    Some(t) => {
                        described = t.with_system_prompt(&r.messages, self.tool_template())?;
                        &described
                    }
                    None => &r.messages,
                };
                let (ids, _, dropped) =
                    self.fit(messages, &checked.opts, ContextOverflow::Error)?;
                (ids, dropped)
            }
            Request::Text(r) => (self.raw_prompt(&r.prompt)?, 0),
        };
        let max_new = checked.opts.check(prompt.len(), self.context_length())?;
        let prefix = if endpoint == Endpoint::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        let meta = Meta::new(prefix, params.model.as_deref().unwrap_or(self.name()));
        Ok(Prepared {
            endpoint,
            prompt,
            dropped_turns,
            max_new,
            checked,
            meta,
        })
    }

    /// Generate the answer to a prepared request; with `stream`, its chunks go to
    /// `on_chunk` as the text arrives (chat: the role first; then the text pieces; then the
    /// finish reason, and the usage if asked). The whole answer is returned either way.
    pub async fn run_async(
        &self,
        p: Prepared,
        cancel: Option<&AtomicBool>,
        on_chunk: &mut dyn FnMut(&Chunk) -> Flow,
    ) -> Result<Answer> {
        let Prepared {
            endpoint,
            prompt,
            dropped_turns,
            max_new,
            checked,
            meta,
        } = p;
        let (stream, usage) = (checked.stream, checked.include_usage);
        let tools = checked.tools.as_ref();
        let tok = self.tokenizer();
        let want_logprobs = checked.opts.logprobs.is_some();
        let chat_logprobs =
            |entries: &[TokenLogprob]| want_logprobs.then(|| ChatLogprobs::new(tok, entries));
        // what has streamed: logprob entries, and characters (the legacy offsets count them)
        let (mut sent, mut chars, mut started) = (0, 0, false);
        // A tool call streams whole at the end, so its text is held back; with `auto` the
        // answer's first non-blank character says whether it is one.
        let mut is_call = tools.map_or(Some(false), |t| t.is_call(""));
        let (mut held, mut held_logprobs) = (String::new(), Vec::<TokenLogprob>::new());
        let mut on_piece = |p: Piece| -> Flow {
            if !stream {
                return Flow::Continue;
            }
            let (text, logprobs) = if is_call == Some(false) {
                (p.text, p.logprobs)
            } else {
                held.push_str(p.text);
                held_logprobs.extend_from_slice(p.logprobs);
                if is_call.is_none() {
                    is_call = tools.and_then(|t| t.is_call(&held));
                }
                if is_call != Some(false) {
                    return Flow::Continue;
                }
                (held.as_str(), held_logprobs.as_slice())
            };
            sent += logprobs.len();
            let chunk = match endpoint {
                Endpoint::Chat => {
                    if !std::mem::replace(&mut started, true)
                        && on_chunk(&Chunk::Chat(ChatCompletionChunk::role(&meta, usage)))
                            == Flow::Stop
                    {
                        return Flow::Stop;
                    }
                    Chunk::Chat(ChatCompletionChunk::text(
                        &meta,
                        text,
                        chat_logprobs(logprobs),
                        usage,
                    ))
                }
                Endpoint::Text => {
                    let lp = want_logprobs.then(|| TextLogprobs::new(tok, logprobs, chars));
                    chars += text.chars().count();
                    Chunk::Text(TextCompletion::text(&meta, text, lp, usage))
                }
            };
            let flow = on_chunk(&chunk);
            held.clear();
            held_logprobs.clear();
            flow
        };
        let mut c = self
            .complete_pieces(&prompt, max_new, &checked.opts, cancel, &mut on_piece)
            .await?;
        c.dropped_turns = dropped_turns;
        let call = match tools {
            Some(t) if c.finish_reason == FinishReason::Stop => {
                t.call_in(&c.text, meta.id.replacen("chatcmpl-", "call_", 1))
            }
            _ => None,
        };
        if call.is_some() {
            c.finish_reason = FinishReason::ToolCalls;
        }
        let mut rest = &c.logprobs[sent.min(c.logprobs.len())..];
        Ok(match endpoint {
            Endpoint::Chat => {
                if stream {
                    if !started {
                        on_chunk(&Chunk::Chat(ChatCompletionChunk::role(&meta, usage)));
                    }
                    // what was held back: the call, or text after all (a call cut short)
                    let last = match call.clone() {
                        Some(call) => Some(ChatCompletionChunk::tool_call(
                            &meta,
                            call,
                            chat_logprobs(rest),
                            usage,
                        )),
                        None if !held.is_empty() => Some(ChatCompletionChunk::text(
                            &meta,
                            &held,
                            chat_logprobs(rest),
                            usage,
                        )),
                        None => None,
                    };
                    if let Some(chunk) = last {
                        on_chunk(&Chunk::Chat(chunk));
                        rest = &[];
                    }
                    for chunk in ChatCompletionChunk::last(&meta, &c, chat_logprobs(rest), usage) {
                        on_chunk(&Chunk::Chat(chunk));
                    }
                }
                Answer::Chat(ChatCompletion::new(
                    meta,
                    &c,
                    call,
                    chat_logprobs(&c.logprobs),
                ))
            }
            Endpoint::Text => {
                if stream {
                    let lp = want_logprobs.then(|| TextLogprobs::new(tok, rest, chars));
                    for chunk in TextCompletion::last(&meta, &c, lp, usage) {
                        on_chunk(&Chunk::Text(chunk));
                    }
                }
                let lp = want_logprobs.then(|| TextLogprobs::new(tok, &c.logprobs, 0));
                Answer::Text(TextCompletion::new(meta, &c, lp))
            }
        })
    }

    /// An OpenAI-shaped request as JSON text, answered as JSON text: what the bindings,
    /// which all speak JSON with their runtimes, call. Meta's sampling defaults fill what
    /// the request leaves out; with `stream`, each chunk's JSON goes to `on_chunk`.
    pub async fn openai_json_async(
        &self,
        endpoint: Endpoint,
        request: &str,
        cancel: Option<&AtomicBool>,
        on_chunk: &mut dyn FnMut(String) -> Flow,
    ) -> Result<String> {
        let req = Request::from_json(endpoint, request.as_bytes())?;
        let prepared = self.prepare(&req, &SamplingParams::default())?;
        let answer = self
            .run_async(prepared, cancel, &mut |c| on_chunk(super::json(c)))
            .await?;
        Ok(super::json(&answer))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Llama {
    /// `run_async`, blocking.
    pub fn run(
        &self,
        p: Prepared,
        cancel: Option<&AtomicBool>,
        on_chunk: &mut dyn FnMut(&Chunk) -> Flow,
    ) -> Result<Answer> {
        pollster::block_on(self.run_async(p, cancel, on_chunk))
    }

    /// `openai_json_async`, blocking.
    pub fn openai_json(
        &self,
        endpoint: Endpoint,
        request: &str,
        cancel: Option<&AtomicBool>,
        on_chunk: &mut dyn FnMut(String) -> Flow,
    ) -> Result<String> {
        pollster::block_on(self.openai_json_async(endpoint, request, cancel, on_chunk))
    }
}
