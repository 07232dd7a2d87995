//! yangtuo (羊驼): Llama 2 chat models on wgpu (Vulkan, Metal, DX12, WebGPU), CUDA and CPU.
//!
//! A token's path: `Llama::chat(messages)` renders the chat template into token ids
//! (`chat`, `tokenizer`), `model::Model::forward` runs them through a `backend::Backend`,
//! the sampler picks the next id from the logits (`sampler`, `generate`), and the stream
//! decoder turns ids back into text.

pub mod api;
pub mod backend;
mod batch;
pub mod chat;
pub mod config;
mod decoding;
pub mod device;
pub mod error;
#[cfg(target_arch = "wasm32")]
mod event_loop;
mod files;
pub mod generate;
pub mod grammar;
#[cfg(all(feature = "hub", not(target_arch = "wasm32")))]
pub mod hub;
pub mod llama;
pub mod model;
pub mod repo_files;
pub mod runner;
pub mod sampler;
pub mod session;
#[cfg(test)]
mod testing;
pub mod tokenizer;
pub mod weights;

pub use backend::{KvDtype, parse_kv_dtype};
pub use batch::BatchStats;
pub use chat::{ChatTemplate, Message};
pub use config::{Config, RopeScaling};
pub use device::BackendChoice;
pub use error::{Error, Result};
pub use generate::{
    Completion, ContextOverflow, FinishReason, Flow, GenerateOptions, Piece, TokenLogprob, Usage,
};
pub use llama::{ChatFormat, Llama, LoadOptions, TokenizerFiles};
pub use runner::{Runner, SessionState};
pub use sampler::SamplingParams;
pub use session::ChatSession;
pub use weights::WeightFormat;
pub use weights::builder::LoadProgress;
