//! The SentencePiece vocabulary llama.cpp stores under `tokenizer.ggml.*`: one accessor per
//! key on [`GgufFile`]; [`tokenizer`], the one way to turn a file's vocabulary into a
//! [`Tokenizer`] (model loading and the browser both use it); and [`GgufTokenizer`], the
//! vocabulary [`GgufWriter::llama`](super::GgufWriter::llama) stores.

use super::GgufFile;
use crate::tokenizer::{SentencePiece, Tokenizer};
use crate::{Error, Result};

impl GgufFile {
    /// `tokenizer.ggml.tokens`.
    pub fn tokens(&self) -> Option<Vec<String>> {
        self.get_strings("tokenizer.ggml.tokens")
            .map(|s| s.to_vec())
    }

    /// `tokenizer.ggml.scores` (F32, or F64 narrowed).
    pub fn scores(&self) -> Option<Vec<f32>> {
        self.get_array("tokenizer.ggml.scores")
            .and_then(|a| a.to_f32s())
    }

    /// `tokenizer.ggml.token_type` (llama.cpp: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte).
    pub fn token_types(&self) -> Option<Vec<i32>> {
        self.get_array("tokenizer.ggml.token_type")
            .and_then(|a| a.to_i64s())
            .and_then(|v| v.into_iter().map(|x| i32::try_from(x).ok()).collect())
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.bos_token_id")
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.eos_token_id")
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.unknown_token_id")
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.padding_token_id")
    }

    /// `tokenizer.ggml.add_bos_token`, if present.
    pub fn add_bos(&self) -> Option<bool> {
        self.get_bool("tokenizer.ggml.add_bos_token")
    }

    /// `tokenizer.ggml.add_eos_token`, if present.
    pub fn add_eos(&self) -> Option<bool> {
        self.get_bool("tokenizer.ggml.add_eos_token")
    }

    /// `tokenizer.ggml.model`: `llama` for SentencePiece vocabularies.
    pub fn tokenizer_model(&self) -> Option<&str> {
        self.get_str("tokenizer.ggml.model")
    }

    /// `tokenizer.chat_template` (Jinja).
    pub fn chat_template(&self) -> Option<String> {
        self.get_str("tokenizer.chat_template")
            .map(|s| s.to_string())
    }
}

/// The SentencePiece tokenizer carried in a GGUF's `tokenizer.ggml.*` keys. Missing scores,
/// token types and BOS/EOS ids take llama.cpp's defaults for `llama` vocabularies (0,
/// normal, 1 and 2).
pub fn tokenizer(g: &GgufFile) -> Result<Tokenizer> {
    if let Some(m) = g.tokenizer_model().filter(|m| *m != "llama") {
        return Err(Error::load(
            g.path(),
            format!("tokenizer model `{m}` is not supported (expected llama)"),
        ));
    }
    let tokens = g
        .tokens()
        .ok_or_else(|| Error::load(g.path(), "no tokenizer.ggml.tokens in this GGUF"))?;
    let sp = SentencePiece::from_vocab(
        tokens,
        g.scores().unwrap_or_default(),
        g.token_types().unwrap_or_default(),
        Some(g.bos_id().unwrap_or(1)),
        Some(g.eos_id().unwrap_or(2)),
        g.unk_id(),
        true,
    )
    .map_err(|e| Error::load(g.path(), e.to_string()))?;
    Ok(Tokenizer::SentencePiece(sp))
}

/// A SentencePiece vocabulary as llama.cpp stores it (`tokenizer.ggml.*`): what
/// [`GgufWriter::llama`](super::GgufWriter::llama) writes. A file's vocabulary is read with
/// [`tokenizer`], or key by key with the accessors above.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`, `llama` for SentencePiece.
    pub model: String,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::weights::gguf::fixtures::*;

    #[test]
    fn tokenizer_reads_the_written_vocabulary() {
        let (w, specs, datas) = tiny_model();
        let f = parse(&to_bytes(&w, &specs, &datas)).unwrap();
        let tok = tokenizer(&f).unwrap();
        assert_eq!(tok.vocab_size(), 32);
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
        assert_eq!(tok.id_to_piece(19).as_deref(), Some("▁the"));
        assert_eq!(tok.id_to_piece(31).as_deref(), Some("[PAD31]"));
        // Anything but a SentencePiece vocabulary, or none at all, is refused by name.
        let refused = |w: &crate::weights::gguf::GgufWriter| {
            tokenizer(&parse(&to_bytes(w, &specs, &datas)).unwrap())
                .err()
                .expect("refused")
                .to_string()
        };
        let mut other = w.clone();
        other.set("tokenizer.ggml.model", "gpt2");
        let e = refused(&other);
        assert!(e.contains("tokenizer model `gpt2` is not supported"), "{e}");
        let mut none = w.clone();
        none.remove("tokenizer.ggml.tokens");
        let e = refused(&none);
        assert!(e.contains("no tokenizer.ggml.tokens"), "{e}");
    }
}
