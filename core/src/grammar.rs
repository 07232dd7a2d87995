//! Constrained decoding: every next token must keep the answer inside a grammar (a JSON
//! Schema, any JSON object, or a Lark grammar), through llguidance, the library llama.cpp
//! and vLLM use; no grammar engine of our own. Its token trie is built once per model from
//! the model's own vocabulary (`Tokenizer::token_bytes`), so SentencePiece's byte-fallback
//! pieces and a 55296-piece Chinese vocabulary are covered as they are. The sampler sees
//! the grammar's mask before temperature and top-p: a token the grammar does not allow has
//! a logit of −∞, for greedy and seeded sampling alike. The same code runs in the browser.

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;

/// What an answer must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON Schema (`{"type": "json_schema", "json_schema": {"schema": …}}`).
    JsonSchema(serde_json::Value),
    /// A grammar in llguidance's Lark dialect (the request's `grammar` field).
    Lark(String),
    /// A tool call's grammar, in Lark (`ToolUse::grammar`, from the request's `tools`).
    ToolCall(String),
}

impl Grammar {
    /// The request field an error about this grammar names.
    pub fn field(&self) -> &'static str {
        match self {
            Grammar::Lark(_) => "grammar",
            Grammar::ToolCall(_) => "tools",
            _ => "response_format",
        }
    }
}

fn top_level(grammar: &Grammar) -> TopLevelGrammar {
    match grammar {
        Grammar::JsonObject => {
            TopLevelGrammar::from_json_schema(serde_json::json!({ "type": "object" }))
        }
        Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
        Grammar::Lark(lark) | Grammar::ToolCall(lark) => TopLevelGrammar::from_lark(lark.clone()),
    }
}

/// A model's vocabulary as llguidance reads it: made once per model (its trie of 32000
/// pieces takes tens of milliseconds), shared by every constrained request.
pub struct Vocab {
    factory: ParserFactory,
    /// Ids at or past this are not in the tokenizer (padding rows of the output matrix).
    size: usize,
}

impl Vocab {
    pub fn new(tokenizer: &Tokenizer, eos: u32) -> Result<Vocab> {
        let size = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..size as u32)
            .map(|id| match tokenizer.token_bytes(id) {
                // a control token (BOS, EOS): special to llguidance, never text
                b if b.is_empty() => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend(tokenizer.id_to_piece(id).unwrap_or_default().bytes());
                    w
                }
                b => b,
            })
            .collect();
        let mut info = TokRxInfo::new(size as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Tokenizer(format!("llguidance cannot read the vocabulary: {e}")))?;
        factory.quiet();
        Ok(Vocab { factory, size })
    }

    /// A fresh matcher for `grammar`; a grammar llguidance cannot compile (an unsupported
    /// JSON Schema keyword, a Lark syntax error) is an `InvalidArg` naming the field, with
    /// llguidance's message.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint> {
        let invalid = |e: String| Error::arg(grammar.field(), e);
        let parser = self
            .factory
            .create_parser(top_level(grammar))
            .map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(e));
        }
        Ok(Constraint {
            matcher,
            size: self.size,
        })
    }
}

/// One answer's position in its grammar.
pub struct Constraint {
    matcher: Matcher,
    size: usize,
}

impl Constraint {
    /// Set the logit of every token the grammar does not allow next to −∞ (once the
    /// grammar is complete, only EOS stays).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| Error::arg("grammar", format!("the grammar failed: {e}")))?;
        let mut any = false;
        for (id, l) in logits.iter_mut().enumerate() {
            if id < self.size && allowed.is_allowed(id as u32) {
                any |= *l > f32::NEG_INFINITY;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            return Err(Error::arg(
                "grammar",
                "no token of the vocabulary can continue the answer",
            ));
        }
        Ok(())
    }

    /// Advance past `token`, which `mask` allowed.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.matcher
            .consume_token(token)
            .map_err(|e| Error::arg("grammar", format!("the grammar failed: {e}")))
    }
}
