//! The chat template a model carries: a GGUF's `tokenizer.chat_template`, or the
//! `chat_template` of its tokenizer_config.json; and the rule that picks between that, an
//! explicit choice and `llama2`.

use super::ChatTemplate;
use crate::Result;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::GgufFile;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// An explicit template name wins; then the model's own; then `llama2`.
pub fn choose(explicit: Option<&str>, own: Option<ChatTemplate>) -> Result<ChatTemplate> {
    let t = match explicit {
        Some(name) => ChatTemplate::by_name(name)?,
        None => own.unwrap_or(ChatTemplate::Llama2),
    };
    log::info!("chat template: {}", t.name());
    Ok(t)
}

/// The jinja template a GGUF carries (`tokenizer.chat_template`).
pub fn from_gguf(g: &GgufFile, tok: &Tokenizer) -> Option<ChatTemplate> {
    let source = g.chat_template()?;
    Some(ChatTemplate::Jinja {
        source,
        bos: piece(tok, tok.bos_id(), "<s>"),
        eos: piece(tok, tok.eos_id(), "</s>"),
    })
}

/// The jinja `chat_template` in the text of a `tokenizer_config.json`, if any.
pub fn from_tokenizer_config(tokenizer_config: &str, tok: &Tokenizer) -> Option<ChatTemplate> {
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
        Some(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .unwrap_or(default),
        None => default,
    };
    Some(ChatTemplate::Jinja {
        source,
        bos: token("bos_token", piece(tok, tok.bos_id(), "<s>")),
        eos: token("eos_token", piece(tok, tok.eos_id(), "</s>")),
    })
}

/// The jinja `chat_template` of the tokenizer_config.json in `dir` (or beside the file
/// `dir`), if any.
#[cfg(not(target_arch = "wasm32"))]
pub fn from_dir(dir: &Path, tok: &Tokenizer) -> Option<ChatTemplate> {
    let path = if dir.is_dir() {
        dir.join("tokenizer_config.json")
    } else {
        dir.parent()?.join("tokenizer_config.json")
    };
    from_tokenizer_config(
        &crate::files::read_text(&path, crate::files::JSON_CAP).ok()?,
        tok,
    )
}

/// The text of token `id`, else `default`.
fn piece(tok: &Tokenizer, id: Option<u32>, default: &str) -> String {
    id.and_then(|i| tok.id_to_piece(i))
        .unwrap_or(default.into())
}
