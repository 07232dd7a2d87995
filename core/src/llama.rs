//! `Llama`: a loaded model with its tokenizer and chat template, and the calls every
//! binding wraps: `chat`, streaming chat, `generate`, `session`, `tokenize`.
//!
//! One function assembles a `Llama` from its parts, `Llama::from_parts`: weights on a
//! device, the files that give its tokenizer and chat template, and `LoadOptions`.
//! `Llama::load` (a path or a Hugging Face repo id) and the browser's streaming loader
//! both end there.

use crate::backend::KvDtype;
use crate::chat::fit::drop_oldest_turns;
use crate::chat::{ChatTemplate, Message, own_template};
use crate::device::BackendChoice;
use crate::generate::{
    Cached, Completion, ContextOverflow, Flow, GenerateOptions, Generation, Piece,
};
use crate::runner::Runner;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightFormat;
use crate::weights::gguf::GgufFile;
use crate::{Config, Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(not(target_arch = "wasm32"))]
use {crate::weights::builder::LoadProgress, crate::weights::source::ModelFiles, std::path::Path};

/// Idle session states kept for reuse (each holds a KV cache).
const POOL_SIZE: usize = 2;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub backend: BackendChoice,
    /// `llama2`, `llama2-chinese`; `None` uses the model's own template, else `llama2`.
    pub template: Option<String>,
    /// Quantize f16/f32/bf16 weights while loading.
    pub quantize: Option<WeightFormat>,
    /// KV cache length; default min(trained context, 4096).
    pub ctx_len: Option<usize>,
    /// How the KV cache stores keys and values; `None` (auto): the backend's
    /// `auto_kv_dtype` (f16 on wgpu with shader-f16, else f32). Ignored by `from_parts`,
    /// whose runner was made already.
    pub kv_cache_dtype: Option<KvDtype>,
    /// Tokens per prefill batch.
    pub max_batch: usize,
    /// Above 1: continuous batching (`Llama::enable_batching`), so concurrent generations
    /// from this many threads share each decode step. Needs threads: not in the browser.
    pub parallel: usize,
    /// The jinja template that describes `tools` in the system prompt (chat/tools.rs);
    /// `None` is `chat::tools::DEFAULT_TEMPLATE`.
    pub tool_template: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            backend: BackendChoice::Auto,
            template: None,
            quantize: None,
            ctx_len: None,
            kv_cache_dtype: None,
            max_batch: 512,
            parallel: 1,
            tool_template: None,
        }
    }
}

impl LoadOptions {
    /// Checked before any weight is read (`load`), and by `from_parts`.
    fn validate(&self) -> Result<()> {
        if self.max_batch == 0 {
            return Err(Error::arg("max_batch", "must be at least 1"));
        }
        if self.ctx_len == Some(0) {
            return Err(Error::arg("ctx_len", "must be at least 1"));
        }
        if self.parallel == 0 {
            return Err(Error::arg("parallel", "must be at least 1"));
        }
        if let Some(t) = &self.tool_template {
            minijinja::Environment::new()
                .template_from_str(t)
                .map_err(|e| Error::arg("tool_template", e.to_string()))?;
        }
        Ok(())
    }
}

/// Where a model's tokenizer and chat template come from, besides a GGUF's header.
pub enum TokenizerFiles<'a> {
    /// A model folder: tokenizer.model (preferred) or tokenizer.json, and
    /// tokenizer_config.json, whose `chat_template` is the model's own. A folder without a
    /// tokenizer gives a model that runs on token ids only.
    #[cfg(not(target_arch = "wasm32"))]
    Dir(&'a Path),
    /// The same files as bytes (a browser's download). Without a tokenizer, the GGUF's
    /// vocabulary is required.
    Bytes {
        tokenizer: Option<&'a [u8]>,
        tokenizer_config: Option<&'a str>,
    },
    /// Nothing beside the weights: a GGUF file, which carries both.
    None,
}

/// What a model carries that turns its chats into ids: the tokenizer, and the chat
/// template it names, if any.
pub struct ChatFormat {
    pub tokenizer: Tokenizer,
    /// A GGUF's or tokenizer_config.json's jinja `chat_template`.
    pub own_template: Option<ChatTemplate>,
}

impl ChatFormat {
    /// The rules of [`Llama::from_parts`]. Read before any weight loads, so a bad
    /// tokenizer fails fast.
    #[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
    pub fn read(
        gguf: Option<&GgufFile>,
        files: TokenizerFiles,
        vocab_size: usize,
    ) -> Result<ChatFormat> {
        let (tokenizer, own_template) = match files {
            #[cfg(not(target_arch = "wasm32"))]
            TokenizerFiles::Dir(dir) => {
                if !dir.join("tokenizer.model").exists() && !dir.join("tokenizer.json").exists() {
                    log::warn!(
                        "{}: no tokenizer.model or tokenizer.json; the model runs on token ids only",
                        dir.display()
                    );
                    (Tokenizer::Absent { vocab_size }, None)
                } else {
                    let tok = Tokenizer::from_file(dir)?;
                    let own = own_template::from_dir(dir, &tok);
                    (tok, own)
                }
            }
            TokenizerFiles::Bytes {
                tokenizer,
                tokenizer_config,
            } => {
                let tok = match (tokenizer, gguf) {
                    (Some(bytes), _) => Tokenizer::from_bytes(bytes)?,
                    (None, Some(g)) => crate::weights::gguf::tokenizer(g)?,
                    (None, None) => {
                        return Err(Error::arg(
                            "tokenizer",
                            "this model has no tokenizer: pass tokenizer.model or tokenizer.json",
                        ));
                    }
                };
                let own = match (tokenizer_config, gguf) {
                    (Some(cfg), _) => own_template::from_tokenizer_config(cfg, &tok),
                    (None, Some(g)) => own_template::from_gguf(g, &tok),
                    _ => None,
                };
                (tok, own)
            }
            TokenizerFiles::None => {
                let g = gguf.ok_or_else(|| {
                    Error::arg(
                        "tokenizer",
                        "no tokenizer found: neither tokenizer files nor a GGUF vocabulary",
                    )
                })?;
                let tok = crate::weights::gguf::tokenizer(g)?;
                let own = own_template::from_gguf(g, &tok);
                (tok, own)
            }
        };
        Ok(ChatFormat {
            tokenizer,
            own_template,
        })
    }

    /// The tokenizer and template of a model on disk: a GGUF's header, or the files of a
    /// model folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn of_files(files: &ModelFiles) -> Result<ChatFormat> {
        let tokenizer_files = match files.dir() {
            Some(dir) if files.gguf().is_none() => TokenizerFiles::Dir(dir),
            _ => TokenizerFiles::None,
        };
        ChatFormat::read(files.gguf(), tokenizer_files, files.config.vocab_size)
    }
}

/// The most KV cache one sequence may ask for: past any machine yangtuo runs on, so a
/// context this large is a typo or an attack, refused before anything is allocated.
const MAX_KV_BYTES: u64 = 1 << 40;

/// The KV cache of one sequence of `ctx_len` tokens (keys and values of every layer, as
/// `dtype`), in checked arithmetic; an error names the bytes a context needs when it is
/// past reason.
fn kv_bytes(c: &Config, ctx_len: usize, dtype: KvDtype) -> Result<u64> {
    let elem = dtype.bytes();
    let bytes = (c.n_layers as u64)
        .checked_mul(2 * elem as u64)
        .and_then(|b| b.checked_mul(c.kv_dim() as u64))
        .and_then(|b| b.checked_mul(ctx_len as u64))
        .filter(|b| *b <= MAX_KV_BYTES);
    bytes.ok_or_else(|| {
        let need = (c.n_layers * 2 * elem * c.kv_dim()) as f64 * ctx_len as f64;
        Error::arg("ctx_len", format!("a context of {ctx_len} tokens needs {need:.3e} bytes of KV cache per sequence; at most 1 TiB"))
    })
}

/// Refuse a context whose KV cache (one sequence) overflows, passes 1 TiB or passes the
/// machine's memory, before anything is allocated; the error names the bytes needed.
pub fn check_context(c: &Config, ctx_len: usize, dtype: KvDtype) -> Result<()> {
    let kv = kv_bytes(c, ctx_len, dtype)?;
    match memory_total() {
        Some(total) if kv > total => Err(Error::arg(
            "ctx_len",
            format!(
                "a context of {ctx_len} tokens needs {:.1} GiB of KV cache per sequence; this machine has {:.1} GiB of memory",
                kv as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            ),
        )),
        _ => Ok(()),
    }
}

/// The machine's memory (Linux: /proc/meminfo's MemTotal), if known.
fn memory_total() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = info
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

pub struct Llama {
    /// What answers name as their `model` (the path or repo id it was loaded from).
    name: String,
    runner: Arc<dyn Runner>,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    tool_template: Option<String>,
    /// The most bytes of text one token stands for (`check_bytes`).
    max_piece_bytes: usize,
    ctx_len: usize,
    max_batch: usize,
    bos: u32,
    eos_ids: Vec<u32>,
    pool: Mutex<Vec<Cached>>,
    /// Idle states kept for their prefixes (more when generations run batched).
    pool_size: AtomicUsize,
    /// The continuous-batching scheduler, once `enable_batching` started it.
    batcher: std::sync::OnceLock<crate::batch::Batcher>,
    /// The vocabulary as llguidance reads it, made on the first constrained request.
    vocab: std::sync::OnceLock<crate::grammar::Vocab>,
}

impl Llama {
    /// Assemble a `Llama`: `runner` holds the weights on a device (`Model::into_runner`);
    /// the tokenizer is `files`' (else the GGUF's vocabulary); the template is
    /// `opts.template`, else the model's own (tokenizer_config.json, else the GGUF's), else
    /// `llama2`; the context is `opts.ctx_len`, else min(trained context, 4096).
    pub fn from_parts(
        runner: Arc<dyn Runner>,
        gguf: Option<&GgufFile>,
        files: TokenizerFiles,
        opts: &LoadOptions,
    ) -> Result<Llama> {
        opts.validate()?;
        let chat = ChatFormat::read(gguf, files, runner.config().vocab_size)?;
        let template = own_template::choose(opts.template.as_deref(), chat.own_template)?;
        Llama::assemble(runner, chat.tokenizer, template, opts)
    }

    /// The last step of `from_parts` and `load`: the tokenizer checked against the model,
    /// BOS/EOS ids, the context.
    fn assemble(
        runner: Arc<dyn Runner>,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        opts: &LoadOptions,
    ) -> Result<Llama> {
        template.check_limits()?;
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
        let ctx_len = opts.ctx_len.unwrap_or(c.max_seq_len.min(4096));
        check_context(c, ctx_len, runner.kv_dtype())?;
        if ctx_len > c.max_seq_len {
            log::warn!(
                "a context of {ctx_len} tokens is past the {} the model was trained on: answers past it degrade",
                c.max_seq_len
            );
        }
        let max_piece_bytes = (0..tokenizer.vocab_size() as u32)
            .map(|id| tokenizer.token_bytes(id).len())
            .max()
            .unwrap_or(0)
            .max(1);
        let llama = Llama {
            name: "model".into(),
            runner,
            tokenizer: Arc::new(tokenizer),
            template,
            tool_template: opts.tool_template.clone(),
            max_piece_bytes,
            ctx_len,
            max_batch: opts.max_batch,
            bos,
            eos_ids,
            pool: Mutex::new(vec![]),
            pool_size: AtomicUsize::new(POOL_SIZE),
            batcher: std::sync::OnceLock::new(),
            vocab: std::sync::OnceLock::new(),
        };
        if opts.parallel > 1 {
            llama.enable_batching(opts.parallel)?;
        }
        Ok(llama)
    }

    /// The name answers carry as `model`.
    pub fn with_name(mut self, name: impl Into<String>) -> Llama {
        self.name = name.into();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
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
    /// The jinja template that describes tools in the system prompt, if not the default.
    pub fn tool_template(&self) -> Option<&str> {
        self.tool_template.as_deref()
    }
    /// How the KV cache stores keys and values.
    pub fn kv_dtype(&self) -> KvDtype {
        self.runner.kv_dtype()
    }
    /// The device memory of one sequence's KV cache (keys and values of every layer, at
    /// every position of the context, as `kv_dtype`): what each parallel generation holds.
    pub fn kv_bytes_per_sequence(&self) -> u64 {
        kv_bytes(self.config(), self.ctx_len, self.runner.kv_dtype()).unwrap_or(u64::MAX)
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
        self.template.render(
            &self.tokenizer,
            self.bos,
            self.eos_ids[0],
            messages,
            allow_control,
        )
    }

    /// A fresh or pooled session state; prefers the one that can give `prompt` the longest
    /// prefix.
    pub fn take_state(&self, prompt: &[u32]) -> Result<Cached> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let exact = self.runner.decode_sums_as_prompt();
        let best = (0..pool.len()).max_by_key(|&i| pool[i].reusable(prompt, exact));
        if let Some(i) = best {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        let state = self.runner.new_state(self.ctx_len, self.max_batch, 1)?;
        Ok(Cached::new(state))
    }

    /// Pool `c` for its prefix. When the pool is full, a state whose cache sits beside the
    /// others' (`enable_batching` made them together on a GPU) takes the place of one that
    /// does not, so the batch keeps its one-dispatch attention.
    pub fn put_state(&self, c: Cached) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.pool_size.load(Ordering::Relaxed) {
            pool.push(c);
        } else if c.state.side_by_side
            && let Some(apart) = pool.iter_mut().find(|p| !p.state.side_by_side)
        {
            *apart = c;
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
        // parameters and length are checked once, before any device work
        let max_new = opts.check(prompt.len(), self.ctx_len)?;
        self.complete_pieces(prompt, max_new, opts, cancel, &mut |p| on_text(p.text))
            .await?
            .unless_aborted()
    }

    /// Generate at most `max_new` tokens (from `GenerateOptions::check`) after `prompt` on a
    /// pooled state; each piece comes with its tokens' logprobs, and a cancel ends the
    /// answer with `FinishReason::Abort`.
    pub(crate) async fn complete_pieces(
        &self,
        prompt: &[u32],
        max_new: usize,
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_piece: &mut dyn FnMut(Piece) -> Flow,
    ) -> Result<Completion> {
        let constraint = self.constraint(opts)?;
        let mut cache = self.take_state(prompt)?;
        if let Some(batcher) = self.batcher.get() {
            let (r, cache) = batcher
                .generate(cache, prompt, max_new, opts, constraint, cancel, on_piece)
                .await;
            if let Some(cache) = cache {
                self.put_state(cache);
            }
            return r;
        }
        let r = self
            .run_on(
                &mut cache, prompt, max_new, opts, constraint, cancel, on_piece,
            )
            .await;
        self.put_state(cache);
        r
    }

    /// Continuous batching from now on: generations on pooled states (`chat`, `generate`,
    /// `run`, every server request) from any number of threads join one scheduler thread,
    /// whose decode steps run all of them as one batch (batch.rs). Up to `parallel` idle
    /// states stay pooled for their prefixes. Sessions keep their own states and run alone.
    /// In the browser the scheduler is a task on the page's event loop, so concurrent
    /// `chat` promises batch too.
    pub fn enable_batching(&self, parallel: usize) -> Result<()> {
        self.pool_size
            .store(parallel.max(POOL_SIZE), Ordering::Relaxed);
        if self.batcher.get().is_some() {
            return Ok(());
        }
        let on_cpu = self.runner.on_cpu();
        if !on_cpu {
            // On a GPU the batch's sequences get caches side by side, made now, so that a
            // decode step's attention is one dispatch for all of them (Backend::attend);
            // a GPU server holds its KV memory from the start, as llama.cpp's does. The
            // CPU gains nothing from that and keeps allocating on demand.
            let states = self
                .runner
                .new_states(parallel, self.ctx_len, self.max_batch, 1)?;
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.clear();
            pool.extend(states.into_iter().map(Cached::new));
        }
        // Prompt tokens per decode step: on the CPU a 32-token chunk about doubles a step of
        // 8 sequences (1B model, 2 cores); a GPU takes a whole batch in a step's time.
        let step_prompt = if on_cpu {
            crate::backend::DECODE_ROWS
        } else {
            self.max_batch
        };
        let b = crate::batch::Batcher::start(
            self.runner.clone(),
            self.tokenizer.clone(),
            self.eos_ids.clone(),
            self.max_batch,
            step_prompt,
        )?;
        let _ = self.batcher.set(b);
        Ok(())
    }

    /// How much the scheduler has batched so far (`None` before `enable_batching`).
    pub fn batch_stats(&self) -> Option<crate::BatchStats> {
        self.batcher.get().map(|b| b.stats())
    }

    /// The matcher of `opts.grammar`, compiled against this model's vocabulary (made on the
    /// first constrained request); a grammar llguidance cannot compile is an `InvalidArg`.
    pub(crate) fn constraint(
        &self,
        opts: &GenerateOptions,
    ) -> Result<Option<crate::decoding::Constraint>> {
        if let Some(g) = &opts.grammar {
            let vocab = match self.vocab.get() {
                Some(v) => v,
                None => {
                    let v = crate::grammar::Vocab::new(&self.tokenizer, self.eos_ids[0])?;
                    self.vocab.get_or_init(|| v)
                }
            };
            return vocab.constraint(g).map(Some);
        }
        Ok(None)
    }

    /// Generate after `prompt` on `cache`; `max_new` comes from `GenerateOptions::check`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_on(
        &self,
        cache: &mut Cached,
        prompt: &[u32],
        max_new: usize,
        opts: &GenerateOptions,
        constraint: Option<crate::decoding::Constraint>,
        cancel: Option<&AtomicBool>,
        on_piece: &mut dyn FnMut(Piece) -> Flow,
    ) -> Result<Completion> {
        let g = Generation {
            runner: self.runner.as_ref(),
            tokenizer: &self.tokenizer,
            eos_ids: &self.eos_ids,
            opts,
            cancel,
            clock: crate::generate::now,
        };
        g.run(cache, prompt, max_new, constraint, on_piece).await
    }

    /// Answer `messages`. With `ContextOverflow::TruncateOldest` (not the default here: a
    /// caller who sent the history expects it used) the oldest turns that do not fit are
    /// left out, and `dropped_turns` says how many.
    pub async fn chat_async(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        let (prompt, _, dropped) = self.fit(messages, opts, ContextOverflow::Error)?;
        let mut c = self
            .complete_ids_async(&prompt, opts, cancel, on_text)
            .await?;
        c.dropped_turns = dropped;
        Ok(c)
    }

    /// The prompt ids for `messages` under `opts.context_overflow` (else `default`): with
    /// `TruncateOldest`, the oldest whole turns are left out until the prompt and a reserve
    /// for the answer (`max_tokens`, at most half the context; a quarter when unset) fit.
    /// Returns the ids, the messages they render, and how many turns were left out.
    pub(crate) fn fit(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
        default: ContextOverflow,
    ) -> Result<(Vec<u32>, Vec<Message>, usize)> {
        let ctx = self.ctx_len;
        let render = |m: &[Message]| self.render(m, opts.allow_control_tokens);
        if opts.context_overflow.unwrap_or(default) == ContextOverflow::Error {
            self.check_bytes(messages.iter().map(|m| m.content.len()).sum(), opts)?;
        }
        let full = render(messages)?;
        let reserve = opts
            .max_tokens
            .unwrap_or(ctx / 4)
            .clamp(1, (ctx / 2).max(1));
        if opts.context_overflow.unwrap_or(default) == ContextOverflow::Error
            || full.len() + reserve <= ctx
        {
            return Ok((full, messages.to_vec(), 0));
        }
        let (kept, dropped) =
            drop_oldest_turns(messages, |m| Ok(render(m)?.len() + reserve <= ctx))?;
        let prompt = render(&kept)?;
        log::info!(
            "the chat outgrew the context ({ctx} tokens): left out its {dropped} oldest turn(s); the prompt is {} tokens",
            prompt.len()
        );
        Ok((prompt, kept, dropped))
    }

    /// Refuse text that cannot fit the context whatever it tokenizes to, before tokenizing
    /// it: no token covers more than `max_piece_bytes` of the text, so `bytes` of it are at
    /// least bytes / max_piece_bytes tokens. (A megabyte of prompt would otherwise be
    /// tokenized, seconds of a worker, only to be refused.)
    fn check_bytes(&self, bytes: usize, opts: &GenerateOptions) -> Result<()> {
        let at_least = bytes / self.max_piece_bytes;
        if at_least > self.ctx_len {
            return Err(Error::ContextLength {
                prompt: at_least,
                requested: opts.max_tokens.unwrap_or(1),
                context: self.ctx_len,
            });
        }
        Ok(())
    }

    /// Raw completion of `prompt` text (BOS, then the text; no template).
    pub async fn generate_async(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        self.complete_ids_async(&self.raw_prompt(prompt)?, opts, cancel, on_text)
            .await
    }

    /// The ids of a raw completion's prompt: BOS, then the text.
    pub(crate) fn raw_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.check_bytes(prompt.len(), &GenerateOptions::default())?;
        let mut ids = vec![self.bos];
        ids.extend(self.tokenizer.encode(prompt)?);
        Ok(ids)
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

    pub fn generate(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        pollster::block_on(self.generate_async(prompt, opts, cancel, on_text))
    }

    pub fn complete_ids(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        cancel: Option<&AtomicBool>,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion> {
        pollster::block_on(self.complete_ids_async(prompt, opts, cancel, on_text))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Llama {
    /// Load a model folder (config.json + safetensors + tokenizer) or a `.gguf` file; with the
    /// `hub` feature also a Hugging Face repo id (`owner/name`, `owner/name:Q4_K_M`), downloaded
    /// into the Hugging Face cache first (progress reports `download <file>`).
    pub async fn load_async(
        path: &Path,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Llama> {
        #[cfg(feature = "hub")]
        let resolved = match path.to_str() {
            Some(spec) => crate::hub::resolve_model(spec, &mut |p| {
                let tensor = format!("download {}", p.file);
                progress(LoadProgress {
                    tensor: &tensor,
                    done_bytes: p.done_bytes,
                    total_bytes: p.total_bytes,
                })
            })?,
            None => path.to_path_buf(),
        };
        #[cfg(feature = "hub")]
        let path = resolved.as_path();
        let mut files = ModelFiles::open(path)?;
        opts.validate()?;
        let chat = ChatFormat::of_files(&files)?;
        let template = own_template::choose(opts.template.as_deref(), chat.own_template)?;
        let total = files.total_bytes() as u64;
        let kv = opts.kv_cache_dtype;
        let runner = match opts.quantize {
            None => {
                crate::device::load_runner(&mut files, opts.backend, kv, total, progress).await?
            }
            Some(f) => {
                let mut q = crate::weights::quantize::Quantizing::new(&mut files, f)?;
                crate::device::load_runner(&mut q, opts.backend, kv, total, progress).await?
            }
        };
        Ok(Llama::assemble(runner, chat.tokenizer, template, opts)?
            .with_name(path.to_string_lossy()))
    }

    pub fn load(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Llama> {
        pollster::block_on(Self::load_async(path.as_ref(), opts, progress))
    }
}
