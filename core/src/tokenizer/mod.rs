//! Text to token ids and back.
//!
//! Two implementations behind one enum:
//! - `SentencePiece`: a native reader and BPE encoder for `tokenizer.model` (and for GGUF
//!   vocabularies), matching the `sentencepiece` library id for id;
//! - `Hf`: Hugging Face `tokenizer.json` through the `tokenizers` crate (features
//!   `hf-tokenizer` or `wasm`), matching `tokenizer.encode(text, add_special_tokens=False)`.
//!
//! Neither adds BOS/EOS: the chat template decides where they go. `StreamDecoder` turns ids
//! into text one id at a time without splitting a character.

pub mod sentencepiece;
mod stream;

pub use sentencepiece::{PieceType, SentencePiece};
pub use stream::StreamDecoder;

use crate::{Error, Result};
use std::path::Path;

/// A tokenizer loaded from `tokenizer.model`, `tokenizer.json`, or a GGUF vocabulary.
// Loaded once per model, so the unboxed SentencePiece variant's size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Tokenizer {
    SentencePiece(SentencePiece),
    #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
    Hf(Box<tokenizers::Tokenizer>),
    /// A model shipped without tokenizer files: it runs on token ids only. Encoding is an
    /// error; decoding gives no text.
    Absent {
        vocab_size: usize,
    },
}

impl Tokenizer {
    /// Loads `tokenizer.model`, `tokenizer.json`, or a folder holding either. A folder with
    /// both uses `tokenizer.model`.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        if path.is_dir() {
            let model = path.join("tokenizer.model");
            let json = path.join("tokenizer.json");
            return match (model.is_file(), json.is_file()) {
                (true, has_json) => {
                    if has_json {
                        log::info!(
                            "{}: has both tokenizer.model and tokenizer.json; using tokenizer.model",
                            path.display()
                        );
                    }
                    Tokenizer::from_file(&model)
                }
                (false, true) => Tokenizer::from_file(&json),
                (false, false) => Err(Error::load(
                    path,
                    "no tokenizer.model or tokenizer.json in this folder",
                )),
            };
        }
        let bytes = crate::files::read_capped(path, crate::files::TOKENIZER_CAP)
            .map_err(crate::files::as_load_error)?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            || looks_like_json(&bytes);
        if is_json {
            Tokenizer::from_json(&bytes).map_err(|e| with_path(path, e))
        } else {
            Ok(Tokenizer::SentencePiece(
                SentencePiece::from_bytes(&bytes).map_err(|e| with_path(path, e))?,
            ))
        }
    }

    /// Loads a tokenizer from the bytes of `tokenizer.model` or `tokenizer.json` (for the
    /// web, where there are no paths).
    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        if looks_like_json(bytes) {
            Tokenizer::from_json(bytes)
        } else {
            Ok(Tokenizer::SentencePiece(SentencePiece::from_bytes(bytes)?))
        }
    }

    #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
    fn from_json(bytes: &[u8]) -> Result<Tokenizer> {
        let t = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokenizer::Hf(Box::new(t)))
    }

    #[cfg(not(any(feature = "hf-tokenizer", feature = "wasm")))]
    fn from_json(_bytes: &[u8]) -> Result<Tokenizer> {
        Err(Error::Tokenizer(
            "tokenizer.json needs yangtuo's `hf-tokenizer` feature; use tokenizer.model instead"
                .into(),
        ))
    }

    /// Token ids for `text`, without BOS or EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::SentencePiece(sp) => Ok(sp.encode(text)),
            Tokenizer::Absent { .. } => Err(Error::Tokenizer(
                "this model has no tokenizer (tokenizer.model or tokenizer.json); give token ids instead".into(),
            )),
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => {
                let enc = t.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// Text for `ids`; control and special tokens (BOS, EOS) produce nothing. An id outside
    /// the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(Error::arg(
                "ids",
                format!("token id {id} is outside the vocabulary of {n}"),
            ));
        }
        match self {
            Tokenizer::SentencePiece(sp) => Ok(sp.decode(ids)),
            Tokenizer::Absent { .. } => Ok(String::new()),
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => t
                .decode(ids, true)
                .map_err(|e| Error::Tokenizer(e.to_string())),
        }
    }

    /// Number of token ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::SentencePiece(sp) => sp.vocab_size(),
            Tokenizer::Absent { vocab_size } => *vocab_size,
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => t.get_vocab_size(true),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(sp) => sp.bos_id(),
            Tokenizer::Absent { .. } => None,
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => t.token_to_id("<s>"),
        }
    }

    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(sp) => sp.eos_id(),
            Tokenizer::Absent { .. } => None,
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => t.token_to_id("</s>"),
        }
    }

    /// The texts that `encode` turns into special tokens (a tokenizer.json's special added
    /// tokens: `<s>`, `<|end|>`, ...). SentencePiece never does, so it has none.
    pub fn special_texts(&self) -> Vec<String> {
        match self {
            Tokenizer::SentencePiece(_) | Tokenizer::Absent { .. } => vec![],
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => t
                .get_added_vocabulary()
                .get_added_tokens_decoder()
                .values()
                .filter(|a| a.special)
                .map(|a| a.content.clone())
                .collect(),
        }
    }

    /// The vocabulary entry for `id`, as stored (`▁` for spaces, `<0xNN>` for bytes).
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        match self {
            Tokenizer::SentencePiece(sp) => sp.id_to_piece(id).map(str::to_string),
            Tokenizer::Absent { .. } => None,
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => t.id_to_token(id),
        }
    }

    /// The bytes `id` adds to decoded text when it is not the first token (a space for
    /// `▁`, one byte for a `<0xNN>` token, nothing for a control token).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match self {
            Tokenizer::SentencePiece(sp) => sp.token_bytes(id),
            Tokenizer::Absent { .. } => Vec::new(),
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => {
                if let Some(b) = self.byte_value(id) {
                    return vec![b];
                }
                let piece = t.id_to_token(id).unwrap_or_default();
                if t.get_added_vocabulary().is_special_token(&piece) {
                    Vec::new()
                } else {
                    piece.replace('▁', " ").into_bytes()
                }
            }
        }
    }

    /// The byte a `<0xNN>` byte-fallback token stands for.
    pub(crate) fn byte_value(&self, id: u32) -> Option<u8> {
        match self {
            Tokenizer::SentencePiece(sp) => sp.byte_value(id),
            Tokenizer::Absent { .. } => None,
            #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
            Tokenizer::Hf(t) => {
                let piece = t.id_to_token(id)?;
                let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
                if hex.len() == 2 {
                    u8::from_str_radix(hex, 16).ok()
                } else {
                    None
                }
            }
        }
    }
}

/// A JSON document starts with `{` after optional whitespace; a `ModelProto` starts with the
/// key of field 1 (0x0A).
fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Names the file in a tokenizer error.
fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", path.display())),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::sentencepiece::tests::shared_dir;

    #[test]
    fn folder_prefers_tokenizer_model() {
        let Some(shared) = shared_dir() else { return };
        let tok = Tokenizer::from_file(&shared.join("tokenizers/llama2")).unwrap();
        assert!(matches!(tok, Tokenizer::SentencePiece(_)));
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.vocab_size()),
            (Some(1), Some(2), 32000)
        );
        assert_eq!(tok.id_to_piece(13).as_deref(), Some("<0x0A>"));
        let tok = Tokenizer::from_file(&shared.join("tokenizers/chinese-llama2")).unwrap();
        assert_eq!(tok.vocab_size(), 55296);
    }

    #[test]
    fn load_errors() {
        let e = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.model")).unwrap_err();
        assert!(matches!(e, Error::ModelLoad { .. }), "{e}");
        let e = Tokenizer::from_bytes(b"\x0a\x05garbage").unwrap_err();
        assert!(matches!(e, Error::Tokenizer(_)), "{e}");
        let Some(shared) = shared_dir() else { return };
        let tok = Tokenizer::from_file(&shared.join("tokenizers/llama2/tokenizer.model")).unwrap();
        assert!(matches!(
            tok.decode(&[1, 32000]),
            Err(Error::InvalidArg { .. })
        ));
    }

    /// Every line of the Llama 2 golden file through `tokenizer.json` (HF `tokenizers`), and
    /// both tokenizers agree on decoding it.
    #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
    #[test]
    fn golden_llama2_hf() {
        use crate::tokenizer::sentencepiece::tests::golden;
        let Some(shared) = shared_dir() else { return };
        let tok = Tokenizer::from_file(&shared.join("tokenizers/llama2/tokenizer.json")).unwrap();
        assert!(matches!(tok, Tokenizer::Hf(_)));
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.vocab_size()),
            (Some(1), Some(2), 32000)
        );
        let sp = Tokenizer::from_file(&shared.join("tokenizers/llama2/tokenizer.model")).unwrap();
        let lines = golden(&shared, "tokenize-llama2.jsonl");
        let mut matched = 0;
        for (i, (text, ids)) in lines.iter().enumerate() {
            assert_eq!(&tok.encode(text).unwrap(), ids, "line {}: {text:?}", i + 1);
            assert_eq!(&sp.encode(text).unwrap(), ids, "line {}: {text:?}", i + 1);
            matched += 1;
        }
        eprintln!(
            "llama2: {matched}/{} golden lines match (tokenizer.json, HF)",
            lines.len()
        );
    }
}
