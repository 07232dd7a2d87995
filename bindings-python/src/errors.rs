//! core's `Error` as the exception classes of `yangtuo/_errors.py` (all `YangtuoError`s),
//! and Rust panics as `YangtuoError` instead of an aborted interpreter.

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::any::Any;
use yangtuo::Error;

/// The Python exception for a core error. `Cancelled` is Ctrl-C, so `KeyboardInterrupt`.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    if let Error::Cancelled = e {
        return PyKeyboardInterrupt::new_err("generation cancelled");
    }
    build(py, &e).unwrap_or_else(|err| err)
}

fn build(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let kw = PyDict::new(py);
    kw.set_item("code", e.code())?;
    let class = match e {
        Error::ModelLoad { .. } | Error::Io { .. } | Error::Tokenizer(_) => "ModelLoadError",
        Error::Template { index, .. } => {
            kw.set_item("index", index)?;
            "TemplateError"
        }
        Error::ContextLength {
            prompt,
            requested,
            context,
        } => {
            kw.set_item("prompt_tokens", prompt)?;
            kw.set_item("requested", requested)?;
            kw.set_item("context", context)?;
            "ContextLengthError"
        }
        Error::InvalidArg { name, .. } => {
            kw.set_item("name", name)?;
            "InvalidArgumentError"
        }
        Error::Device(_) | Error::OutOfMemory { .. } => "DeviceError",
        Error::Cancelled => unreachable!("handled by to_py"),
    };
    let value = py
        .import("yangtuo._errors")?
        .getattr(class)?
        .call((e.to_string(),), Some(&kw))?;
    // how `yangtuo serve` would answer it, for servers written in Python
    let (status, body) = yangtuo::api::http_error(e);
    value.setattr("http_status", status)?;
    value.setattr(
        "openai_error",
        py.import("json")?
            .call_method1("loads", (body.to_string(),))?,
    )?;
    Ok(PyErr::from_value(value))
}

/// An `InvalidArgumentError` for a parameter core never sees (negative counts, ...).
pub fn invalid(py: Python<'_>, name: &'static str, msg: impl Into<String>) -> PyErr {
    to_py(py, Error::arg(name, msg))
}

/// A caught Rust panic as a `YangtuoError`.
pub fn panicked(py: Python<'_>, msg: &str) -> PyErr {
    let made = || -> PyResult<PyErr> {
        let text = format!("internal error (a Rust panic; please report it): {msg}");
        Ok(PyErr::from_value(
            py.import("yangtuo._errors")?
                .getattr("YangtuoError")?
                .call1((text,))?,
        ))
    };
    made().unwrap_or_else(|_| PyRuntimeError::new_err(format!("yangtuo panicked: {msg}")))
}

pub fn panic_message(p: Box<dyn Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown panic".into()),
    }
}

/// Run a short core call on this thread with the GIL released; a panic becomes a
/// `YangtuoError` (long calls run on a `worker::Worker`).
pub fn call<T: Send>(py: Python<'_>, f: impl FnOnce() -> yangtuo::Result<T> + Send) -> PyResult<T> {
    match py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))) {
        Ok(r) => r.py_err(py),
        Err(p) => Err(panicked(py, &panic_message(p))),
    }
}

/// `Result<T, core Error>` → `PyResult<T>`.
pub trait IntoPy<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for yangtuo::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
