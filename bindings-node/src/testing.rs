//! A hook for the package's own tests: proves a Rust panic, on the JavaScript thread or on a
//! worker, becomes an `INTERNAL` error and never takes the process down.

use crate::errors::{Failure, guard};
use crate::events::{Callback, Sink};
use napi::bindgen_prelude::*;
use napi_derive::napi;

#[napi(
    js_name = "__testPanic",
    ts_args_type = "onWorker: boolean, onEvent: (err: Error | null, item: null, result: null) => void"
)]
pub fn test_panic(env: Env, on_worker: bool, on_event: Callback<'_>) -> Result<()> {
    guard(&env, || {
        if !on_worker {
            panic!("test panic on the JavaScript thread");
        }
        let sink =
            Sink::<Null, Null>::new(&on_event).map_err(|e| Failure::arg("onEvent", e.reason))?;
        sink.spawn("yangtuo-test-panic", |_| {
            panic!("test panic on a worker thread")
        })
    })
}
