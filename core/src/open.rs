//! Opening a model path into a ready `Llama`: weights onto a backend, the tokenizer, and
//! the chat template (explicit choice, else the model's own, else `llama2`).

#[cfg(not(target_arch = "wasm32"))]
use crate::Error;
use crate::Result;
use crate::chat::ChatTemplate;
#[cfg(not(target_arch = "wasm32"))]
use crate::engine::Llama;
use crate::load::BackendChoice;
#[cfg(not(target_arch = "wasm32"))]
use crate::load::load_runner;
#[cfg(not(target_arch = "wasm32"))]
use crate::model::LoadProgress;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightFormat;
use crate::weights::gguf::GgufFile;
#[cfg(not(target_arch = "wasm32"))]
use crate::weights::source::ModelFiles;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub backend: BackendChoice,
    /// `llama2`, `llama2-chinese`; `None` uses the model's own template, else `llama2`.
    pub template: Option<String>,
    /// Quantize f16/f32/bf16 weights while loading.
    pub quantize: Option<WeightFormat>,
    /// KV cache length; default min(trained context, 4096).
    pub ctx_len: Option<usize>,
    /// Tokens per prefill batch.
    pub max_batch: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { backend: BackendChoice::Auto, template: None, quantize: None, ctx_len: None, max_batch: 512 }
    }
}

/// The tokenizer of a model: a GGUF's vocabulary, or the files in its folder.
#[cfg(not(target_arch = "wasm32"))]
pub fn open_tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    if let Some(g) = files.gguf() {
        return crate::weights::gguf::tokenizer(g);
    }
    let dir = files.dir().ok_or_else(|| Error::load(&files.path, "no tokenizer found"))?;
    if !dir.join("tokenizer.model").exists() && !dir.join("tokenizer.json").exists() {
        log::warn!("{}: no tokenizer.model or tokenizer.json; the model runs on token ids only", dir.display());
        return Ok(Tokenizer::Absent { vocab_size: files.config.vocab_size });
    }
    Tokenizer::from_file(dir)
}

/// The jinja template a GGUF carries (`tokenizer.chat_template`).
pub fn gguf_template(g: &GgufFile, tok: &Tokenizer) -> Option<ChatTemplate> {
    let piece = |id: Option<u32>, default: &str| id.and_then(|i| tok.id_to_piece(i)).unwrap_or(default.into());
    let source = g.chat_template()?;
    Some(ChatTemplate::Jinja { source, bos: piece(tok.bos_id(), "<s>"), eos: piece(tok.eos_id(), "</s>") })
}

/// The model's own jinja template, with its BOS/EOS strings.
#[cfg(not(target_arch = "wasm32"))]
pub fn model_template(files: &ModelFiles, tok: &Tokenizer) -> Option<ChatTemplate> {
    if let Some(g) = files.gguf() {
        return gguf_template(g, tok);
    }
    dir_template(files.dir()?, tok)
}

/// The jinja `chat_template` of a folder's `tokenizer_config.json`, if any.
#[cfg(not(target_arch = "wasm32"))]
pub fn dir_template(dir: &Path, tok: &Tokenizer) -> Option<ChatTemplate> {
    let path = if dir.is_dir() { dir.join("tokenizer_config.json") } else { dir.parent()?.join("tokenizer_config.json") };
    config_template(&std::fs::read_to_string(&path).ok()?, tok)
}

/// The jinja `chat_template` in the text of a `tokenizer_config.json`, if any.
pub fn config_template(tokenizer_config: &str, tok: &Tokenizer) -> Option<ChatTemplate> {
    let piece = |id: Option<u32>, default: &str| id.and_then(|i| tok.id_to_piece(i)).unwrap_or(default.into());
    let v: serde_json::Value = serde_json::from_str(tokenizer_config).ok()?;
    let source = match v.get("chat_template")? {
        serde_json::Value::String(s) => s.clone(),
        // a list of named templates: take "default"
        serde_json::Value::Array(a) => a
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))?
            .get("template")?
            .as_str()?
            .to_string(),
        _ => return None,
    };
    let token = |key: &str, default: String| match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string).unwrap_or(default),
        None => default,
    };
    Some(ChatTemplate::Jinja {
        source,
        bos: token("bos_token", piece(tok.bos_id(), "<s>")),
        eos: token("eos_token", piece(tok.eos_id(), "</s>")),
    })
}

/// An explicit template name wins; then the model's own; then `llama2`.
pub fn choose_template(explicit: Option<&str>, own: Option<ChatTemplate>) -> Result<ChatTemplate> {
    let t = match explicit {
        Some(name) => ChatTemplate::by_name(name)?,
        None => own.unwrap_or(ChatTemplate::Llama2),
    };
    log::info!("chat template: {}", t.name());
    Ok(t)
}

#[cfg(not(target_arch = "wasm32"))]
impl Llama {
    /// Load a model folder (config.json + safetensors + tokenizer) or a `.gguf` file; with the
    /// `hub` feature also a Hugging Face repo id (`owner/name`, `owner/name:Q4_K_M`), downloaded
    /// into the Hugging Face cache first (progress reports `download <file>`).
    pub async fn load_async(path: &Path, opts: &LoadOptions, progress: &mut dyn FnMut(LoadProgress)) -> Result<Llama> {
        #[cfg(feature = "hub")]
        let resolved = match path.to_str() {
            Some(spec) => crate::hub::resolve_model(spec, &mut |p| {
                let tensor = format!("download {}", p.file);
                progress(LoadProgress { tensor: &tensor, done_bytes: p.done_bytes, total_bytes: p.total_bytes })
            })?,
            None => path.to_path_buf(),
        };
        #[cfg(feature = "hub")]
        let path = resolved.as_path();
        let mut files = ModelFiles::open(path)?;
        if opts.max_batch == 0 {
            return Err(Error::arg("max_batch", "must be at least 1"));
        }
        let tokenizer = open_tokenizer(&files)?;
        let template = choose_template(opts.template.as_deref(), model_template(&files, &tokenizer))?;
        let ctx_len = opts.ctx_len.unwrap_or(files.config.max_seq_len.min(4096));
        if ctx_len == 0 {
            return Err(Error::arg("ctx_len", "must be at least 1"));
        }
        let total = files.total_bytes() as u64;
        let runner = match opts.quantize {
            None => load_runner(&mut files, opts.backend, total, progress).await?,
            Some(f) => {
                let mut q = crate::weights::quantize::Quantizing::new(&mut files, f)?;
                load_runner(&mut q, opts.backend, total, progress).await?
            }
        };
        Llama::from_parts(runner, tokenizer, template, ctx_len, opts.max_batch)
    }

    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions, progress: &mut dyn FnMut(LoadProgress)) -> Result<Llama> {
        pollster::block_on(Self::load_async(path.as_ref(), opts, progress))
    }
}
