//! Streaming detokenization: text for each generated id as soon as it is complete.
//!
//! With byte fallback one character can take several ids (咖 is `<0xE5><0x92><0x96>` in the
//! Llama 2 vocabulary), so decoding ids one by one would split characters or print U+FFFD.
//! `StreamDecoder` keeps back the bytes of a character that is not complete yet and returns
//! it whole with its last byte. All `push` outputs plus `finish` equal `Tokenizer::decode`
//! of every id pushed.
//!
//! For SentencePiece the decoder carries the library's decoding state from id to id, so each
//! push costs O(1). For other tokenizers it decodes everything pushed so far and returns what
//! is new (O(n) per push), holding back an incomplete trailing byte sequence. One case there
//! cannot be exact: HF's `ByteFallback` decoder turns a whole run of byte tokens into U+FFFDs
//! when any byte of it is invalid, so a later bad byte rewrites characters already returned.
//! Then the streamed text differs from `decode` and `finish` logs a warning. SentencePiece
//! decodes each character of a byte run on its own and has no such case.

use super::Tokenizer;
use super::sentencepiece::{DecodeState, incomplete_utf8_tail};
use crate::{Error, Result};

/// Turns ids into text one at a time without splitting a UTF-8 character.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    /// SentencePiece: the decoding state carried between ids.
    state: DecodeState,
    /// Other tokenizers: every id pushed so far.
    ids: Vec<u32>,
    /// Other tokenizers: the text returned so far.
    emitted: String,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds one id and returns the text it completes (often empty while a character's bytes
    /// arrive). An id outside the vocabulary is an error and is not recorded.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        let n = tok.vocab_size();
        if id as usize >= n {
            return Err(Error::arg(
                "id",
                format!("token id {id} is outside the vocabulary of {n}"),
            ));
        }
        match tok {
            Tokenizer::SentencePiece(sp) if sp.can_stream() => {
                let mut out = Vec::new();
                sp.decode_push(&mut self.state, id, &mut out);
                sp.decode_flush(&mut self.state, &mut out, false);
                Ok(into_string(out))
            }
            _ => self.push_redecode(tok, id),
        }
    }

    /// Returns the rest of the text (bytes of an unfinished character become U+FFFD, as in
    /// `decode`) and resets the decoder for a new stream.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let rest = match tok {
            Tokenizer::SentencePiece(sp) if sp.can_stream() => {
                let mut out = Vec::new();
                sp.decode_flush(&mut self.state, &mut out, true);
                into_string(out)
            }
            _ => {
                let text = tok.decode(&self.ids)?;
                match text.strip_prefix(self.emitted.as_str()) {
                    Some(rest) => rest.to_string(),
                    None => {
                        // The decoder rewrote text it had already produced; what was returned
                        // cannot be taken back, so return everything after the common part.
                        let common = common_prefix(&self.emitted, &text);
                        log::warn!(
                            "streamed text diverged from the full decode after {common} bytes; \
                             the streamed output differs from decode()"
                        );
                        text[common..].to_string()
                    }
                }
            }
        };
        *self = StreamDecoder::new();
        Ok(rest)
    }

    /// Decodes all ids so far, except a trailing incomplete byte sequence, and returns what
    /// extends the text already returned.
    fn push_redecode(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let mut tail = Vec::with_capacity(3);
        for &id in self.ids.iter().rev().take(3) {
            match tok.byte_value(id) {
                Some(b) => tail.push(b),
                None => break,
            }
        }
        tail.reverse();
        let keep = incomplete_utf8_tail(&tail);
        let text = tok.decode(&self.ids[..self.ids.len() - keep])?;
        match text.strip_prefix(self.emitted.as_str()) {
            Some(new) => {
                let delta = new.to_string();
                self.emitted = text;
                Ok(delta)
            }
            None => {
                // Not an extension of what was returned (the decoder changed earlier text):
                // wait for later ids; `finish` settles the rest.
                log::debug!("decoded text is not an extension of the streamed text; holding back");
                Ok(String::new())
            }
        }
    }
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Length of the longest common prefix of `a` and `b` that ends on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::sentencepiece::tests::{golden, shared_dir};

    /// Streams `ids` and checks the contract: all deltas together are `decode(ids)`, and for
    /// SentencePiece after every push the text so far is exactly `decode(prefix)` without the
    /// U+FFFDs of a trailing incomplete byte sequence (so each character comes out with its
    /// last byte). HF's ByteFallback decoder writes a whole byte run as U+FFFDs while its end
    /// is incomplete, so for HF only the final text is compared. Returns the deltas.
    fn stream_checked(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let per_prefix = matches!(tok, Tokenizer::SentencePiece(_));
        let mut dec = StreamDecoder::new();
        let mut deltas = Vec::new();
        let mut so_far = String::new();
        for i in 0..ids.len() {
            let delta = dec.push(tok, ids[i]).unwrap();
            so_far.push_str(&delta);
            let prefix = &ids[..=i];
            let trailing: Vec<u8> = {
                let mut t: Vec<u8> = prefix
                    .iter()
                    .rev()
                    .take(3)
                    .map_while(|&id| tok.byte_value(id))
                    .collect();
                t.reverse();
                t
            };
            let held = incomplete_utf8_tail(&trailing);
            if !per_prefix {
                deltas.push(delta);
                continue;
            }
            let full = tok.decode(prefix).unwrap();
            let want = &full[..full.len() - held * '\u{FFFD}'.len_utf8()];
            assert_eq!(so_far, want, "after {} of {ids:?}", i + 1);
            assert!(full[want.len()..].chars().all(|c| c == '\u{FFFD}'));
            deltas.push(delta);
        }
        let rest = dec.finish(tok).unwrap();
        so_far.push_str(&rest);
        deltas.push(rest);
        assert_eq!(so_far, tok.decode(ids).unwrap(), "{ids:?}");
        deltas
    }

    fn load(file: &str) -> Option<Tokenizer> {
        let shared = shared_dir()?;
        Some(Tokenizer::from_file(&shared.join("tokenizers").join(file)).unwrap())
    }

    /// 咖 arrives as three byte pieces: nothing until the third, then 咖 at once.
    fn check_chinese_bytes(tok: &Tokenizer) {
        let text = "咖啡的作用是什么？";
        let ids = tok.encode(text).unwrap();
        // <0xNN> is id NN + 3 in the Llama 2 vocabulary.
        let bytes = [0xE5 + 3, 0x92 + 3, 0x96 + 3];
        assert_eq!(
            bytes.map(|id| tok.byte_value(id)),
            [Some(0xE5), Some(0x92), Some(0x96)]
        );
        let at = ids
            .windows(3)
            .position(|w| w == bytes)
            .expect("咖 as byte pieces");
        let deltas = stream_checked(tok, &ids);
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
        assert_eq!(deltas.concat(), text);
        let first = deltas.iter().position(|d| d.contains('咖')).unwrap();
        assert_eq!(
            first,
            at + 2,
            "咖 must come with its third byte: {deltas:?}"
        );
        assert!(
            deltas[..first]
                .iter()
                .all(|d| d.is_empty() || !d.contains('咖'))
        );
        assert_eq!(deltas[at], "");
        assert_eq!(deltas[at + 1], "");

        for text in ["😀👍🏽 emoji", "한국어 텍스트", " 咖啡", "咖"] {
            let ids = tok.encode(text).unwrap();
            let deltas = stream_checked(tok, &ids);
            assert!(
                deltas.iter().all(|d| !d.contains('\u{FFFD}')),
                "{text}: {deltas:?}"
            );
            assert_eq!(deltas.concat(), text);
        }
    }

    #[test]
    fn chinese_bytes_sentencepiece() {
        let Some(tok) = load("llama2/tokenizer.model") else {
            return;
        };
        check_chinese_bytes(&tok);
    }

    #[cfg(any(feature = "hf-tokenizer", feature = "wasm"))]
    #[test]
    fn chinese_bytes_hf() {
        let Some(tok) = load("llama2/tokenizer.json") else {
            return;
        };
        check_chinese_bytes(&tok);
    }

    /// Bytes that never complete a character still come out, as `decode` writes them.
    #[test]
    fn broken_bytes() {
        let Some(tok) = load("llama2/tokenizer.model") else {
            return;
        };
        let b = |x: u32| x + 3;
        let deltas = stream_checked(&tok, &[b(0xE5), b(0x92), 22172]);
        assert_eq!(deltas, ["", "", "\u{FFFD}\u{FFFD} hello", ""]);
        let deltas = stream_checked(&tok, &[22172, b(0xE5)]);
        assert_eq!(deltas, ["hello", "", "\u{FFFD}"]);
        let deltas = stream_checked(&tok, &[b(0x80), b(0xE5), b(0x92), b(0x96)]);
        assert_eq!(deltas, ["\u{FFFD}", "", "", "咖", ""]);
        let deltas = stream_checked(&tok, &[1, 29871, 29871, 22172, 2]);
        assert_eq!(deltas, ["", "", " ", " hello", "", ""]);
        let mut dec = StreamDecoder::new();
        assert!(dec.push(&tok, 32000).is_err());
    }

    /// Every golden line streams to exactly its decoded text, character by character.
    #[test]
    fn golden_lines_stream() {
        let Some(shared) = shared_dir() else { return };
        let mut files = vec![
            ("llama2/tokenizer.model", "tokenize-llama2.jsonl"),
            (
                "chinese-llama2/tokenizer.model",
                "tokenize-chinese-llama2.jsonl",
            ),
        ];
        if cfg!(any(feature = "hf-tokenizer", feature = "wasm")) {
            files.push(("llama2/tokenizer.json", "tokenize-llama2.jsonl"));
        }
        for (tok_file, golden_file) in files {
            let tok = Tokenizer::from_file(&shared.join("tokenizers").join(tok_file)).unwrap();
            for (text, ids) in golden(&shared, golden_file).iter() {
                let deltas = stream_checked(&tok, ids);
                assert_eq!(&deltas.concat(), text, "{tok_file}");
            }
        }
    }
}
