//! The browser's event loop, for the web build's long-running work: a generation on the
//! CPU backend never waits on anything, so it gives the page a turn now and then (a
//! repaint, a worker's abort message), and a caller waiting on the batch scheduler wakes on
//! a timer to look at its cancel flag.

use wasm_bindgen::JsCast;

/// How often a CPU loop gives the event loop a turn, in seconds: a timer's turn costs up
/// to 4 ms, so not every token.
pub const YIELD_EVERY: f64 = 0.03;

/// Resolves after `ms` milliseconds, through `setTimeout`: a macrotask turn, so the page
/// runs what it has queued. (Where there is no `setTimeout`, at once.)
pub async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => drop(f.call2(&global, &resolve, &ms.into())),
            None => drop(resolve.call0(&wasm_bindgen::JsValue::NULL)),
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
