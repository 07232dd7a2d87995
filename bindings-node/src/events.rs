//! Worker threads that report to JavaScript through one threadsafe function, strictly in
//! order: any number of items, then exactly one outcome. The JS callback is
//! `(error, item, result) => void`: `(null, item, null)` per item, then `(null, null, result)`
//! or `(error, null, null)`. One queue for both means no item ever arrives after the result.

use crate::errors::Failure;
use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::{
    ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use std::panic::{AssertUnwindSafe, catch_unwind};

pub enum Event<I, R> {
    Item(I),
    Done(std::result::Result<R, Failure>),
}

/// The callback's three arguments, built on the JavaScript thread.
pub struct Args<I, R>(Event<I, R>);

impl<I: ToNapiValue, R: ToNapiValue> JsValuesTupleIntoVec for Args<I, R> {
    fn into_vec(self, raw: sys::napi_env) -> Result<Vec<sys::napi_value>> {
        let env = Env::from_raw(raw);
        let null = || unsafe { Null::to_napi_value(raw, Null) };
        Ok(match self.0 {
            Event::Item(item) => vec![null()?, unsafe { I::to_napi_value(raw, item)? }, null()?],
            Event::Done(Ok(r)) => vec![null()?, null()?, unsafe { R::to_napi_value(raw, r)? }],
            Event::Done(Err(f)) => vec![f.to_js(&env)?.raw(), null()?, null()?],
        })
    }
}

/// The JavaScript callback, as the native functions receive it.
pub type Callback<'a> = Function<'a, (), UnknownReturnValue>;

type Tsfn<I, R> = ThreadsafeFunction<Event<I, R>, UnknownReturnValue, Args<I, R>, Status, false>;

/// Where a worker sends its items.
pub struct Sink<I: ToNapiValue + 'static, R: ToNapiValue + 'static>(Tsfn<I, R>);

impl<I: ToNapiValue + Send + 'static, R: ToNapiValue + Send + 'static> Sink<I, R> {
    pub fn new(callback: &Callback<'_>) -> Result<Sink<I, R>> {
        let tsfn = callback
            .build_threadsafe_function::<Event<I, R>>()
            .build_callback(|ctx| Ok(Args(ctx.value)))?;
        Ok(Sink(tsfn))
    }

    pub fn item(&self, item: I) {
        // the queue is unbounded, so this never blocks; it fails only while Node shuts down
        self.0
            .call(Event::Item(item), ThreadsafeFunctionCallMode::NonBlocking);
    }

    fn done(self, outcome: std::result::Result<R, Failure>) {
        self.0
            .call(Event::Done(outcome), ThreadsafeFunctionCallMode::Blocking);
    }

    /// Run `work` on a new thread; its result, error or panic is the last event.
    pub fn spawn<F>(self, name: &str, work: F) -> std::result::Result<(), Failure>
    where
        F: FnOnce(&Sink<I, R>) -> std::result::Result<R, Failure> + Send + 'static,
    {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let outcome = match catch_unwind(AssertUnwindSafe(|| work(&self))) {
                    Ok(r) => r,
                    Err(p) => Err(Failure::panic(p)),
                };
                self.done(outcome);
            })
            .map(|_| ())
            .map_err(|e| Failure {
                code: "INTERNAL",
                message: format!("could not start a worker thread: {e}"),
                index: None,
            })
    }
}
