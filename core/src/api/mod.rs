//! One request and one answer for every front end (CLI server, Python, Node, browser), in
//! OpenAI's shapes: a request is parsed and checked here once (`request.rs`), and the
//! answer serializes to OpenAI's JSON (`answer.rs`). `Llama::chat_completion` runs one.

mod answer;
mod request;

pub use answer::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChunkChoice, Delta, Meta, PromptTokensDetails,
    TextChoice, TextCompletion, Usage,
};
pub use request::{ChatRequest, Checked, CompletionRequest, Params, Stop, StreamOptions};

/// The two OpenAI endpoints a request can be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `chat.completions`: `messages`, the chat template applies.
    Chat,
    /// `completions`: a raw `prompt`.
    Text,
}

impl std::str::FromStr for Endpoint {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Endpoint> {
        match s {
            "chat" => Ok(Endpoint::Chat),
            "text" => Ok(Endpoint::Text),
            other => Err(crate::Error::arg("kind", format!("`{other}` is not one of chat, text"))),
        }
    }
}

/// JSON text of an answer or a chunk (these types always serialize).
pub(crate) fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
