//! Token log-probabilities in OpenAI's two shapes: chat's `logprobs.content[]` (token,
//! logprob, UTF-8 bytes, top alternatives) and the legacy completions' parallel lists
//! (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
//!
//! A byte-fallback token (咖 is three of them) holds part of a character: its `bytes` are
//! exact and its `token` spells the bytes as `\xNN`, as OpenAI does.

use crate::generate::TokenLogprob;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use serde::ser::{Serialize, SerializeMap, Serializer};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContentLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[i].logprobs` of a chat completion or chunk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ContentLogprob>,
}

/// A token's text for logprobs: its UTF-8, or `\xNN` per byte where it is not whole UTF-8.
fn token_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|b| format!("\\x{b:02x}")).collect(),
    }
}

fn top(tok: &Tokenizer, id: u32, logprob: f32) -> TopLogprob {
    let bytes = tok.token_bytes(id);
    TopLogprob {
        token: token_text(&bytes),
        logprob,
        bytes,
    }
}

impl ChatLogprobs {
    pub fn new(tok: &Tokenizer, entries: &[TokenLogprob]) -> ChatLogprobs {
        let content = entries
            .iter()
            .map(|e| {
                let TopLogprob {
                    token,
                    logprob,
                    bytes,
                } = top(tok, e.id, e.logprob);
                let top_logprobs = e.top.iter().map(|&(id, lp)| top(tok, id, lp)).collect();
                ContentLogprob {
                    token,
                    logprob,
                    bytes,
                    top_logprobs,
                }
            })
            .collect();
        ChatLogprobs { content }
    }
}

/// `choices[i].logprobs` of a legacy text completion.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, its alternatives as `{token: logprob}`, best first.
    pub top_logprobs: Vec<Alternatives>,
    /// Where each token's text starts in the answer, in characters (a token inside a
    /// character starts where the character does).
    pub text_offset: Vec<usize>,
}

/// A token's alternatives, serialized as one JSON object in rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternatives(pub Vec<(String, f32)>);

impl Serialize for Alternatives {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl TextLogprobs {
    /// For `entries` whose text starts `offset` characters into the answer.
    pub fn new(tok: &Tokenizer, entries: &[TokenLogprob], offset: usize) -> TextLogprobs {
        let mut decoder = StreamDecoder::new();
        let mut at = offset;
        let mut out = TextLogprobs {
            tokens: vec![],
            token_logprobs: vec![],
            top_logprobs: vec![],
            text_offset: vec![],
        };
        for e in entries {
            out.tokens.push(token_text(&tok.token_bytes(e.id)));
            out.token_logprobs.push(e.logprob);
            out.top_logprobs.push(Alternatives(
                e.top
                    .iter()
                    .map(|&(id, lp)| (token_text(&tok.token_bytes(id)), lp))
                    .collect(),
            ));
            out.text_offset.push(at);
            at += decoder
                .push(tok, e.id)
                .map(|t| t.chars().count())
                .unwrap_or(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_characters_spell_their_bytes() {
        assert_eq!(token_text(&[0xe5]), "\\xe5");
        assert_eq!(token_text(" 咖".as_bytes()), " 咖");
    }

    #[test]
    fn alternatives_keep_their_rank_order() {
        let a = Alternatives(vec![("b".into(), -0.5), ("a".into(), -1.0)]);
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"b":-0.5,"a":-1.0}"#);
    }
}
