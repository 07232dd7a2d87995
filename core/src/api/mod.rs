//! One request and one answer for every front end (CLI server, Python, Node, browser), in
//! OpenAI's shapes: a request is parsed and checked here once (`request.rs`), and the
//! answer serializes to OpenAI's JSON (`answer.rs`, token logprobs in `logprobs.rs`).
//! `Llama::prepare` and `Llama::run_async` (`run.rs`) run one.

mod answer;
mod http;
mod logprobs;
mod request;
mod run;

pub use answer::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChunkChoice, Delta, Meta,
    PromptTokensDetails, TextChoice, TextCompletion, ToolCallDelta, Usage,
};
pub use http::{body as error_body, http_error};
pub use logprobs::{Alternatives, ChatLogprobs, ContentLogprob, TextLogprobs, TopLogprob};
pub use request::{ChatRequest, Checked, CompletionRequest, Logprobs, Params, Stop, StreamOptions};
pub use run::{Answer, Chunk, Prepared, Request};

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
            other => Err(crate::Error::arg(
                "kind",
                format!("`{other}` is not one of chat, text"),
            )),
        }
    }
}

/// JSON text of an answer or a chunk (these types always serialize).
pub(crate) fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
