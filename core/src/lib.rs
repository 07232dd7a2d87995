//! yangtuo (羊驼): Llama 2 chat models on wgpu (Vulkan, Metal, DX12, WebGPU), CUDA and CPU.
//!
//! A token's path: `chat(messages)` renders the chat template into token ids
//! (`tokenizer`, `chat`), `model::Model::forward` runs them through a `backend::Backend`,
//! and the sampler picks the next id from the logits, until a stop condition.

pub mod backend;
pub mod config;
pub mod error;
pub mod model;
pub mod quant;
pub mod weights;

pub use config::{Config, RopeScaling};
pub use error::{Error, Result};
