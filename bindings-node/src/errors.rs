//! Engine errors and panics as JavaScript `Error`s with a stable `code` (`MODEL_LOAD`,
//! `TEMPLATE`, `CONTEXT_LENGTH`, `INVALID_ARG`, `DEVICE`, `ABORTED`, `INTERNAL`), plus
//! `index` for template errors and `name = 'AbortError'` for cancellations.

use napi::bindgen_prelude::*;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// An error on its way to JavaScript; plain data, so it can cross threads.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    /// The offending message's position, for `TEMPLATE`.
    pub index: Option<usize>,
}

impl From<yangtuo::Error> for Failure {
    fn from(e: yangtuo::Error) -> Failure {
        let index = match &e {
            yangtuo::Error::Template { index, .. } => Some(*index),
            _ => None,
        };
        let message = match &e {
            yangtuo::Error::Cancelled => "the operation was aborted".to_string(),
            other => other.to_string(),
        };
        Failure {
            code: e.code(),
            message,
            index,
        }
    }
}

impl Failure {
    pub fn arg(name: &'static str, msg: impl Into<String>) -> Failure {
        yangtuo::Error::arg(name, msg).into()
    }

    /// A Rust panic: reported, never allowed to unwind into Node.
    pub fn panic(payload: Box<dyn std::any::Any + Send>) -> Failure {
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Failure {
            code: "INTERNAL",
            message: format!("internal error (a Rust panic in yangtuo): {what}"),
            index: None,
        }
    }

    /// The JavaScript `Error` object.
    pub fn to_js<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        let mut obj = env.create_error(napi::Error::new(Status::GenericFailure, &self.message))?;
        obj.set_named_property("code", self.code)?;
        if let Some(i) = self.index {
            obj.set_named_property("index", i as u32)?;
        }
        if self.code == "ABORTED" {
            obj.set_named_property("name", "AbortError")?;
        }
        Ok(obj)
    }

    /// As a `napi::Error` that throws exactly this object.
    pub fn throw(&self, env: &Env) -> napi::Error {
        match self.to_js(env) {
            Ok(obj) => napi::Error::from(obj.to_unknown()),
            Err(e) => e,
        }
    }
}

/// Run synchronous work on the JavaScript thread: engine errors become coded `Error`s and a
/// panic becomes an `INTERNAL` error instead of aborting the process.
pub fn guard<T>(env: &Env, f: impl FnOnce() -> std::result::Result<T, Failure>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(f)) => Err(f.throw(env)),
        Err(p) => Err(Failure::panic(p).throw(env)),
    }
}
