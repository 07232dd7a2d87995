//! yangtuo in the browser. A thin translation of core's API to JavaScript: the ES module in
//! `js/yangtuo.js` fetches and caches files and drives `WasmLoader`, which streams tensors
//! straight into WebGPU buffers; `WasmLlama` answers `chat`.

mod error;
mod hub;
mod llama;
mod loader;

pub use hub::{choose_repo_files, hub_http_error, parse_repo_id};
pub use llama::{CancelToken, WasmLlama, WasmSession};
pub use loader::WasmLoader;

use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    let _ = console_log::init_with_level(log::Level::Info);
}
