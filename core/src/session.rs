//! `ChatSession`: multi-turn chat that keeps its KV cache between turns. Each turn renders
//! the whole conversation and runs only what the cache does not already hold, so an answer
//! is the one a fresh `chat()` over the same history gives. When the history outgrows the
//! context, the oldest whole turns are left out (`ContextOverflow::TruncateOldest`, the
//! default here) and stay out of the history.

use crate::Result;
use crate::chat::Message;
use crate::generate::{Cached, Completion, ContextOverflow, Flow, GenerateOptions};
use crate::llama::Llama;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub struct ChatSession {
    llama: Arc<Llama>,
    messages: Vec<Message>,
    cache: Option<Cached>,
}

impl ChatSession {
    pub fn new(llama: Arc<Llama>, system: Option<String>) -> ChatSession {
        let messages = system.into_iter().map(Message::system).collect();
        ChatSession {
            llama,
            messages,
            cache: None,
        }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Forget the conversation (the system prompt stays).
    pub fn reset(&mut self) {
        self.messages.retain(|m| m.role == "system");
    }

    /// Send a user message; the answer is appended to the history.
    pub async fn send_async(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        let mut msgs = self.messages.clone();
        msgs.push(Message::user(user));
        let (prompt, mut msgs, dropped) =
            self.llama
                .fit(&msgs, opts, ContextOverflow::TruncateOldest)?;
        let max_new = opts.check(prompt.len(), self.llama.context_length())?;
        let mut cache = match self.cache.take() {
            Some(c) => c,
            None => Cached::new(self.llama.take_state(&[])?.state),
        };
        let constraint = self.llama.constraint(opts)?;
        let r = self
            .llama
            .run_on(
                &mut cache,
                &prompt,
                max_new,
                opts,
                constraint,
                cancel,
                &mut |p| on_text(p.text),
            )
            .await;
        self.cache = Some(cache);
        let mut c = r?.unless_aborted()?;
        c.dropped_turns = dropped;
        msgs.push(Message::assistant(c.text.clone()));
        self.messages = msgs;
        Ok(c)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn send(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        pollster::block_on(self.send_async(user, opts, cancel, on_text))
    }
}
