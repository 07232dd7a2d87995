//! `NativeLlama`: a loaded model. Loading and every generation run on worker threads, so the
//! event loop stays free; concurrent calls are safe (the engine gives each its own pooled KV
//! state and serialises device steps per token).

use crate::cancel::CancelToken;
use crate::errors::{Failure, guard};
use crate::events::{Callback, Sink};
use crate::options::{
    ChatMessage, Completion, GenerateOptions, LoadOptions, LoadProgress, from_js,
};
use crate::session::NativeSession;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use yangtuo::api::Endpoint;
use yangtuo::{Flow, Llama, Message};

#[napi]
pub struct NativeLlama {
    inner: Arc<Llama>,
}

/// Run one generation on a worker: text deltas as items when `stream`, then the completion.
pub fn spawn_generation(
    env: &Env,
    name: &str,
    options: Unknown<'_>,
    token: &CancelToken,
    stream: bool,
    on_event: Callback<'_>,
    run: impl FnOnce(
        &yangtuo::GenerateOptions,
        &AtomicBool,
        &mut dyn FnMut(&str) -> Flow,
    ) -> yangtuo::Result<yangtuo::Completion>
    + Send
    + 'static,
) -> Result<()> {
    guard(env, || {
        let opts = from_js::<Option<GenerateOptions>>("options", options)?
            .unwrap_or_default()
            .into_core()?;
        let cancel = token.flag();
        let sink = Sink::<String, Completion>::new(&on_event)
            .map_err(|e| Failure::arg("onEvent", e.reason))?;
        sink.spawn(name, move |sink| {
            // an AbortSignal that fired before the worker started: no device work at all
            if cancel.load(Ordering::Relaxed) {
                return Err(yangtuo::Error::Cancelled.into());
            }
            let mut on_text = |piece: &str| {
                if stream {
                    sink.item(piece.to_string());
                }
                Flow::Continue
            };
            Ok(run(&opts, &cancel, &mut on_text)?.into())
        })
    })
}

#[napi]
impl NativeLlama {
    /// Load a model folder or `.gguf` on a worker thread; `onEvent(err, progress, llama)`.
    #[napi(
        ts_args_type = "path: string, options: LoadOptions | undefined | null, onEvent: (err: Error | null, progress: LoadProgress | null, llama: NativeLlama | null) => void"
    )]
    pub fn load(
        env: Env,
        path: Unknown<'_>,
        options: Unknown<'_>,
        on_event: Callback<'_>,
    ) -> Result<()> {
        guard(&env, || {
            let path: String = from_js("path", path)?;
            let opts = from_js::<Option<LoadOptions>>("options", options)?
                .unwrap_or_default()
                .into_core()?;
            let sink = Sink::<LoadProgress, NativeLlama>::new(&on_event)
                .map_err(|e| Failure::arg("onEvent", e.reason))?;
            sink.spawn("yangtuo-load", move |sink| {
                let llama = Llama::load(&path, &opts, &mut |p| sink.item(p.into()))?;
                Ok(NativeLlama {
                    inner: Arc::new(llama),
                })
            })
        })
    }

    /// Chat over `messages` (the model's chat template applies).
    #[napi(
        ts_args_type = "messages: ChatMessage[], options: GenerateOptions | undefined | null, token: CancelToken, stream: boolean, onEvent: (err: Error | null, delta: string | null, result: Completion | null) => void"
    )]
    pub fn chat(
        &self,
        env: Env,
        messages: Unknown<'_>,
        options: Unknown<'_>,
        token: &CancelToken,
        stream: bool,
        on_event: Callback<'_>,
    ) -> Result<()> {
        let messages: Vec<Message> =
            guard(&env, || from_js::<Vec<ChatMessage>>("messages", messages))?
                .into_iter()
                .map(Message::from)
                .collect();
        let llama = self.inner.clone();
        spawn_generation(
            &env,
            "yangtuo-chat",
            options,
            token,
            stream,
            on_event,
            move |opts, cancel, on_text| llama.chat_stream(&messages, opts, Some(cancel), on_text),
        )
    }

    /// Raw completion of `prompt`: BOS, then the text; no chat template.
    #[napi(
        ts_args_type = "prompt: string, options: GenerateOptions | undefined | null, token: CancelToken, stream: boolean, onEvent: (err: Error | null, delta: string | null, result: Completion | null) => void"
    )]
    pub fn generate(
        &self,
        env: Env,
        prompt: Unknown<'_>,
        options: Unknown<'_>,
        token: &CancelToken,
        stream: bool,
        on_event: Callback<'_>,
    ) -> Result<()> {
        let prompt: String = guard(&env, || from_js("prompt", prompt))?;
        let llama = self.inner.clone();
        spawn_generation(
            &env,
            "yangtuo-generate",
            options,
            token,
            stream,
            on_event,
            move |opts, cancel, on_text| llama.generate(&prompt, opts, Some(cancel), on_text),
        )
    }

    /// Continue exactly these prompt ids (no BOS added, no template), as `yangtuo generate --ids`.
    #[napi(
        ts_args_type = "ids: number[], options: GenerateOptions | undefined | null, token: CancelToken, stream: boolean, onEvent: (err: Error | null, delta: string | null, result: Completion | null) => void"
    )]
    pub fn complete_ids(
        &self,
        env: Env,
        ids: Unknown<'_>,
        options: Unknown<'_>,
        token: &CancelToken,
        stream: bool,
        on_event: Callback<'_>,
    ) -> Result<()> {
        let ids: Vec<u32> = guard(&env, || from_js("ids", ids))?;
        let llama = self.inner.clone();
        spawn_generation(
            &env,
            "yangtuo-complete",
            options,
            token,
            stream,
            on_event,
            move |opts, cancel, on_text| llama.complete_ids(&ids, opts, Some(cancel), on_text),
        )
    }

    /// An OpenAI-shaped request (`chat.completions.create`'s, as JSON text; `kind` is
    /// `chat` or `text`), checked by core. Each chunk (JSON) is an item when the request
    /// streams; the result is the whole answer (JSON).
    #[napi(
        ts_args_type = "kind: 'chat' | 'text', request: string, token: CancelToken, onEvent: (err: Error | null, chunk: string | null, answer: string | null) => void"
    )]
    pub fn openai(
        &self,
        env: Env,
        kind: String,
        request: String,
        token: &CancelToken,
        on_event: Callback<'_>,
    ) -> Result<()> {
        let llama = self.inner.clone();
        let cancel = token.flag();
        guard(&env, || {
            let sink = Sink::<String, String>::new(&on_event)
                .map_err(|e| Failure::arg("onEvent", e.reason))?;
            let endpoint = kind.parse::<Endpoint>()?;
            sink.spawn("yangtuo-openai", move |sink| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(yangtuo::Error::Cancelled.into());
                }
                let mut send = |chunk: String| {
                    sink.item(chunk);
                    Flow::Continue
                };
                Ok(llama.openai_json(endpoint, &request, Some(&cancel), &mut send)?)
            })
        })
    }

    /// A conversation that keeps its KV cache between turns.
    #[napi]
    pub fn session(&self, system: Option<String>) -> NativeSession {
        NativeSession::new(Llama::session(&self.inner, system))
    }

    /// Token ids of `text` (no BOS).
    #[napi(ts_args_type = "text: string")]
    pub fn tokenize(&self, env: Env, text: Unknown<'_>) -> Result<Vec<u32>> {
        guard(&env, || {
            Ok(self.inner.tokenize(&from_js::<String>("text", text)?)?)
        })
    }

    #[napi(ts_args_type = "ids: number[]")]
    pub fn detokenize(&self, env: Env, ids: Unknown<'_>) -> Result<String> {
        guard(&env, || {
            Ok(self.inner.detokenize(&from_js::<Vec<u32>>("ids", ids)?)?)
        })
    }

    /// The KV cache length in tokens: prompt plus answer must fit.
    #[napi(getter)]
    pub fn n_ctx(&self) -> u32 {
        self.inner.context_length() as u32
    }

    /// The device the model runs on, e.g. `cpu (16 threads)` or a GPU's name.
    #[napi(getter)]
    pub fn device(&self) -> String {
        self.inner.device()
    }

    #[napi(getter)]
    pub fn vocab_size(&self) -> u32 {
        self.inner.config().vocab_size as u32
    }

    /// The forward passes the batch scheduler ran and the sequences in them (`null` unless
    /// loaded with `parallel` > 1).
    #[napi(getter)]
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.inner.batch_stats().map(|s| BatchStats {
            steps: s.steps as f64,
            sequences: s.sequences as f64,
        })
    }
}

/// core's `BatchStats`: `sequences / steps` is the mean batch.
#[napi(object)]
pub struct BatchStats {
    pub steps: f64,
    pub sequences: f64,
}
