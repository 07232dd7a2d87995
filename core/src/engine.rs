//! `Llama`: a loaded model with its tokenizer and chat template, and the calls every
//! binding wraps: `chat`, streaming chat, `generate`, `session`, `tokenize`.

use crate::chat::{ChatTemplate, Message};
use crate::generate::{Cached, Completion, Flow, GenerateOptions, Generation};
use crate::runner::Runner;
use crate::tokenizer::Tokenizer;
use crate::{Config, Error, Result};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Idle session states kept for reuse (each holds a KV cache).
const POOL_SIZE: usize = 2;

pub struct Llama {
    runner: Arc<dyn Runner>,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    ctx_len: usize,
    max_batch: usize,
    bos: u32,
    eos_ids: Vec<u32>,
    pool: Mutex<Vec<Cached>>,
}

impl Llama {
    /// Assemble from parts (the loaders in `open.rs` call this).
    pub fn from_parts(
        runner: Arc<dyn Runner>,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        ctx_len: usize,
        max_batch: usize,
    ) -> Result<Llama> {
        let c = runner.config();
        if tokenizer.vocab_size() > c.vocab_size {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has {} ids but the model only {} logits",
                tokenizer.vocab_size(),
                c.vocab_size
            )));
        }
        let bos = tokenizer.bos_id().or(c.bos_id).unwrap_or(1);
        let mut eos_ids = c.eos_ids.clone();
        eos_ids.extend(tokenizer.eos_id());
        eos_ids.dedup();
        let ctx_len = ctx_len.max(1);
        Ok(Llama {
            runner,
            tokenizer: Arc::new(tokenizer),
            template,
            ctx_len,
            max_batch: max_batch.max(1),
            bos,
            eos_ids,
            pool: Mutex::new(vec![]),
        })
    }

    pub fn config(&self) -> &Config {
        self.runner.config()
    }
    pub fn device(&self) -> String {
        self.runner.device()
    }
    pub fn runner(&self) -> &Arc<dyn Runner> {
        &self.runner
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }
    pub fn context_length(&self) -> usize {
        self.ctx_len
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    /// The prompt ids `chat` would run for `messages`.
    pub fn render(&self, messages: &[Message], allow_control: bool) -> Result<Vec<u32>> {
        self.template.render(&self.tokenizer, self.bos, self.eos_ids[0], messages, allow_control)
    }

    /// A fresh or pooled session state; prefers the one sharing the longest prefix.
    pub fn take_state(&self, prompt: &[u32]) -> Result<Cached> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let best = (0..pool.len()).max_by_key(|&i| pool[i].tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count());
        if let Some(i) = best {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        Ok(Cached { state: self.runner.new_state(self.ctx_len, self.max_batch, 1)?, tokens: vec![] })
    }

    pub fn put_state(&self, c: Cached) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push(c);
        }
    }

    /// Generate after `prompt` ids on a pooled state, streaming text to `on_text`.
    pub async fn complete_ids_async(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        // parameters and length are checked before any device work
        opts.sampling.validate()?;
        crate::generate::budget(prompt.len(), opts.max_tokens, self.ctx_len)?;
        let mut cache = self.take_state(prompt)?;
        let r = self.run_on(&mut cache, prompt, opts, cancel, on_text).await;
        self.put_state(cache);
        r
    }

    pub(crate) async fn run_on(
        &self,
        cache: &mut Cached,
        prompt: &[u32],
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        let g = Generation {
            runner: self.runner.as_ref(),
            tokenizer: &self.tokenizer,
            eos_ids: &self.eos_ids,
            opts,
            cancel,
            clock: crate::generate::now,
        };
        g.run(cache, prompt, on_text).await
    }

    pub async fn chat_async(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        let prompt = self.render(messages, opts.allow_control_tokens)?;
        self.complete_ids_async(&prompt, opts, cancel, on_text).await
    }

    /// Raw completion of `prompt` text (BOS, then the text; no template).
    pub async fn generate_async(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        let mut ids = vec![self.bos];
        ids.extend(self.tokenizer.encode(prompt)?);
        self.complete_ids_async(&ids, opts, cancel, on_text).await
    }

    /// A multi-turn conversation that keeps its KV cache between turns.
    pub fn session(self: &Arc<Self>, system: Option<String>) -> crate::session::ChatSession {
        crate::session::ChatSession::new(self.clone(), system)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Llama {
    /// `chat_async`, blocking. The answer with `finish_reason` and `usage`.
    pub fn chat(&self, messages: &[Message], opts: &GenerateOptions) -> Result<Completion> {
        pollster::block_on(self.chat_async(messages, opts, None, &mut |_| Flow::Continue))
    }

    /// `chat_async`, blocking, streaming text pieces to `on_text`; stops early when
    /// `on_text` returns `Flow::Stop` or `cancel` is set.
    pub fn chat_stream(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        pollster::block_on(self.chat_async(messages, opts, cancel, on_text))
    }

    pub fn generate(&self, prompt: &str, opts: &GenerateOptions, cancel: Option<&AtomicBool>, on_text: &mut dyn FnMut(&str) -> Flow) -> Result<Completion> {
        pollster::block_on(self.generate_async(prompt, opts, cancel, on_text))
    }

    pub fn complete_ids(&self, prompt: &[u32], opts: &GenerateOptions, cancel: Option<&AtomicBool>, on_text: &mut dyn FnMut(&str) -> Flow) -> Result<Completion> {
        pollster::block_on(self.complete_ids_async(prompt, opts, cancel, on_text))
    }
}
