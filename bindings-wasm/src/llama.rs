//! `WasmLlama` and `WasmSession`: core's `chat` as promises, text deltas through a callback,
//! cancellation through a `CancelToken` checked every token.

use crate::error::{arg, to_js};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use yangtuo::{ChatSession, Completion, Flow, GenerateOptions, Llama, Message, SamplingParams};

/// Options of `chat`, as JavaScript passes them (camelCase); they go through core's one
/// check of a request (`Params::check`), with Meta's defaults for what is left out.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ChatOpts {
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
    seed: Option<i64>,
    /// A string or a list of strings.
    stop: Option<yangtuo::api::Stop>,
    allow_control_tokens: Option<bool>,
    /// `truncate-oldest` (a session's default) or `error` (a one-shot chat's).
    context_overflow: Option<String>,
}

impl ChatOpts {
    fn parse(v: JsValue) -> Result<GenerateOptions, JsValue> {
        let o: ChatOpts = if v.is_undefined() || v.is_null() {
            ChatOpts::default()
        } else {
            serde_wasm_bindgen::from_value(v).map_err(|e| arg("options", e))?
        };
        let params = yangtuo::api::Params {
            max_tokens: o.max_tokens,
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            min_p: o.min_p,
            repetition_penalty: o.repetition_penalty,
            seed: o.seed,
            stop: o.stop,
            context_overflow: o.context_overflow,
            ..Default::default()
        };
        let mut opts = params.check(&SamplingParams::default()).map_err(to_js)?.opts;
        opts.allow_control_tokens = o.allow_control_tokens.unwrap_or(false);
        Ok(opts)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatResult {
    content: String,
    finish_reason: &'static str,
    usage: Usage,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    ttft_s: f64,
    /// The oldest turns left out so the chat fits the context.
    dropped_turns: usize,
}

fn result(c: Completion) -> Result<JsValue, JsValue> {
    let r = ChatResult {
        finish_reason: c.finish_reason.as_str(),
        usage: Usage {
            prompt_tokens: c.usage.prompt_tokens,
            completion_tokens: c.usage.completion_tokens,
            total_tokens: c.usage.total_tokens,
        },
        prefill_tok_s: c.timings.prefill_tok_s(),
        decode_tok_s: c.timings.decode_tok_s(),
        ttft_s: c.timings.ttft_s,
        dropped_turns: c.dropped_turns,
        content: c.text,
    };
    serde_wasm_bindgen::to_value(&r).map_err(|e| arg("result", e))
}

fn messages(v: JsValue) -> Result<Vec<Message>, JsValue> {
    serde_wasm_bindgen::from_value(v).map_err(|e| arg("messages", format!("expected [{{role, content}}, ...]: {e}")))
}

/// Calls `f(delta)` for each piece of text; a throwing callback stops generation.
fn sink(f: Option<js_sys::Function>) -> impl FnMut(&str) -> Flow {
    move |d: &str| match &f {
        Some(f) if f.call1(&JsValue::NULL, &JsValue::from_str(d)).is_err() => Flow::Stop,
        _ => Flow::Continue,
    }
}

#[wasm_bindgen]
#[derive(Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

#[wasm_bindgen]
impl CancelToken {
    #[wasm_bindgen(constructor)]
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[wasm_bindgen]
pub struct WasmLlama {
    inner: Arc<Llama>,
}

impl WasmLlama {
    pub fn new(l: Llama) -> WasmLlama {
        WasmLlama { inner: Arc::new(l) }
    }
}

#[wasm_bindgen]
impl WasmLlama {
    /// Resolves to `{ content, finishReason, usage, ... }`; `on_delta` receives text pieces.
    pub fn chat(&self, messages_js: JsValue, opts: JsValue, on_delta: Option<js_sys::Function>, cancel: &CancelToken) -> js_sys::Promise {
        let llama = self.inner.clone();
        let cancel = cancel.0.clone();
        future_to_promise(async move {
            let msgs = messages(messages_js)?;
            let opts = ChatOpts::parse(opts)?;
            let c = llama.chat_async(&msgs, &opts, Some(&cancel), &mut sink(on_delta)).await.map_err(to_js)?;
            result(c)
        })
    }

    /// An OpenAI-shaped request as JSON (`kind` `chat` or `text`), checked by core. Resolves
    /// to the answer's JSON; with `stream` each chunk's JSON goes to `on_chunk`.
    pub fn openai(&self, kind: String, request: String, on_chunk: Option<js_sys::Function>, cancel: &CancelToken) -> js_sys::Promise {
        let llama = self.inner.clone();
        let cancel = cancel.0.clone();
        future_to_promise(async move {
            let endpoint = kind.parse::<yangtuo::api::Endpoint>().map_err(to_js)?;
            let mut send = sink(on_chunk);
            let answer = llama.openai_json_async(endpoint, &request, Some(&cancel), &mut |c| send(&c)).await.map_err(to_js)?;
            Ok(JsValue::from_str(&answer))
        })
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.inner.tokenize(text).map_err(to_js)
    }

    pub fn detokenize(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        self.inner.detokenize(&ids).map_err(to_js)
    }

    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.inner.device()
    }

    #[wasm_bindgen(getter, js_name = nCtx)]
    pub fn n_ctx(&self) -> usize {
        self.inner.context_length()
    }

    /// `{ steps, sequences }`: the forward passes the batch scheduler ran and the
    /// conversations in them (`null` unless loaded with `parallel` > 1).
    #[wasm_bindgen(getter, js_name = batchStats)]
    pub fn batch_stats(&self) -> JsValue {
        let Some(s) = self.inner.batch_stats() else { return JsValue::NULL };
        let o = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&o, &"steps".into(), &(s.steps as f64).into());
        let _ = js_sys::Reflect::set(&o, &"sequences".into(), &(s.sequences as f64).into());
        o.into()
    }

    #[wasm_bindgen(getter)]
    pub fn template(&self) -> String {
        self.inner.template().name().to_string()
    }

    pub fn session(&self, system: Option<String>) -> WasmSession {
        WasmSession { inner: Rc::new(RefCell::new(self.inner.session(system))) }
    }
}

#[wasm_bindgen]
pub struct WasmSession {
    inner: Rc<RefCell<ChatSession>>,
}

#[wasm_bindgen]
impl WasmSession {
    pub fn chat(&self, text: String, opts: JsValue, on_delta: Option<js_sys::Function>, cancel: &CancelToken) -> js_sys::Promise {
        let session = self.inner.clone();
        let cancel = cancel.0.clone();
        future_to_promise(async move {
            let opts = ChatOpts::parse(opts)?;
            let mut s = session.try_borrow_mut().map_err(|_| arg("session", "this session is already answering"))?;
            let c = s.send_async(&text, &opts, Some(&cancel), &mut sink(on_delta)).await.map_err(to_js)?;
            result(c)
        })
    }

    pub fn reset(&self) -> Result<(), JsValue> {
        let mut s = self.inner.try_borrow_mut().map_err(|_| arg("session", "this session is answering"))?;
        s.reset();
        Ok(())
    }

    /// The conversation so far, as `[{ role, content }]`.
    #[wasm_bindgen(getter)]
    pub fn messages(&self) -> Result<JsValue, JsValue> {
        let s = self.inner.try_borrow().map_err(|_| arg("session", "this session is answering"))?;
        serde_wasm_bindgen::to_value(s.messages()).map_err(|e| arg("messages", e))
    }
}
