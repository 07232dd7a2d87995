//! yangtuo for Node.js: the native half of the npm package `yangtuo`.
//!
//! Every call that touches the model runs on its own worker thread and reports back through
//! one threadsafe function, in order: items (text deltas, load progress), then exactly one
//! result or error (`events`). The JavaScript half in `lib/` turns that into promises, async
//! iterators and `AbortSignal`s; it holds no engine logic.

mod cancel;
mod errors;
mod events;
mod llama;
mod options;
mod session;
mod testing;

pub use cancel::CancelToken;
pub use llama::NativeLlama;
pub use session::NativeSession;

/// Runs when Node loads the addon, before any engine thread exists.
#[napi_derive::module_init]
fn clamp_threads() {
    if let Some(warning) = yangtuo::backend::cpu::clamp_thread_env() {
        eprintln!("(yangtuo) Warning: {warning}");
    }
}
