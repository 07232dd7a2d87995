//! `NativeSession`: the engine's `ChatSession` (a conversation that keeps its KV cache),
//! one turn at a time, each on a worker thread.

use crate::cancel::CancelToken;
use crate::errors::{Failure, guard};
use crate::events::Callback;
use crate::llama::spawn_generation;
use crate::options::{ChatMessage, from_js};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use yangtuo::{ChatSession, Message};

#[napi]
pub struct NativeSession {
    inner: Arc<Shared>,
}

struct Shared {
    chat: Mutex<ChatSession>,
    /// A turn is running; the next must wait for it.
    busy: AtomicBool,
    /// The history as of the last finished turn, readable while a turn runs.
    messages: Mutex<Vec<Message>>,
}

impl Shared {
    fn chat(&self) -> MutexGuard<'_, ChatSession> {
        self.chat.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn publish(&self, chat: &ChatSession) {
        *self.messages.lock().unwrap_or_else(|p| p.into_inner()) = chat.messages().to_vec();
    }
}

/// Marks the session busy until dropped: after the turn, or when it never starts.
struct Turn(Arc<Shared>);

impl Turn {
    fn claim(shared: &Arc<Shared>) -> std::result::Result<Turn, Failure> {
        if shared.busy.swap(true, Ordering::AcqRel) {
            return Err(Failure::arg(
                "session",
                "a turn is still running on this session: await it before the next",
            ));
        }
        Ok(Turn(shared.clone()))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

impl NativeSession {
    pub fn new(chat: ChatSession) -> NativeSession {
        let messages = Mutex::new(chat.messages().to_vec());
        NativeSession {
            inner: Arc::new(Shared {
                chat: Mutex::new(chat),
                busy: AtomicBool::new(false),
                messages,
            }),
        }
    }
}

#[napi]
impl NativeSession {
    /// Send a user message; the answer joins the history when the turn succeeds.
    #[napi(
        ts_args_type = "text: string, options: GenerateOptions | undefined | null, token: CancelToken, stream: boolean, onEvent: (err: Error | null, delta: string | null, result: Completion | null) => void"
    )]
    pub fn send(
        &self,
        env: Env,
        text: Unknown<'_>,
        options: Unknown<'_>,
        token: &CancelToken,
        stream: bool,
        on_event: Callback<'_>,
    ) -> Result<()> {
        let text: String = guard(&env, || from_js("text", text))?;
        let turn = guard(&env, || Turn::claim(&self.inner))?;
        spawn_generation(
            &env,
            "yangtuo-session",
            options,
            token,
            stream,
            on_event,
            move |opts, cancel, on_text| {
                let shared = &turn.0;
                let mut chat = shared.chat();
                let r = chat.send(&text, opts, Some(cancel), on_text);
                shared.publish(&chat);
                r
            },
        )
    }

    /// The conversation so far: the system prompt, then user and assistant turns.
    #[napi(getter)]
    pub fn messages(&self) -> Vec<ChatMessage> {
        self.inner
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(ChatMessage::from)
            .collect()
    }

    /// Forget the conversation; the system prompt stays.
    #[napi]
    pub fn reset(&self, env: Env) -> Result<()> {
        guard(&env, || {
            let _turn = Turn::claim(&self.inner)?;
            let mut chat = self.inner.chat();
            chat.reset();
            self.inner.publish(&chat);
            Ok(())
        })
    }
}
