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
