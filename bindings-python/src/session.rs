//! `yangtuo.Session`: core's `ChatSession`, a conversation that keeps its KV cache between
//! turns. Turns run one at a time: a turn waits for the previous one (a stream still
//! generating included) to end.

use crate::args::{self, GenArgs};
use crate::errors::call;
use crate::results::Kind;
use crate::stream;
use crate::worker::{Worker, text_sink};
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use yangtuo::ChatSession;

#[pyclass(module = "yangtuo", name = "Session", frozen)]
pub struct PySession {
    inner: Arc<Mutex<ChatSession>>,
    model: String,
}

impl PySession {
    pub fn new(s: ChatSession, model: String) -> Self {
        PySession {
            inner: Arc::new(Mutex::new(s)),
            model,
        }
    }

    /// The session, locked with the GIL released (a running turn holds it).
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut ChatSession) -> T + Send,
    ) -> PyResult<T> {
        call(py, || Ok(f(&mut lock(&self.inner))))
    }
}

fn lock(m: &Mutex<ChatSession>) -> MutexGuard<'_, ChatSession> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[pymethods]
impl PySession {
    /// Send a user message; the answer joins the history. Returns a `ChatResult`, or a
    /// `TextStream` with `stream=True`. Same keyword arguments as `Llama.chat`.
    #[pyo3(signature = (user, max_tokens = None, temperature = 0.6, top_p = 0.9, top_k = None, min_p = None,
        repetition_penalty = None, seed = None, stop = None, stream = false, allow_control_tokens = false, context_overflow = None,
        response_format = None, grammar = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat<'py>(
        &self,
        py: Python<'py>,
        user: String,
        max_tokens: Option<i64>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<i64>,
        min_p: Option<f32>,
        repetition_penalty: Option<f32>,
        seed: Option<i64>,
        stop: Option<Bound<'py, PyAny>>,
        stream: bool,
        allow_control_tokens: bool,
        context_overflow: Option<String>,
        response_format: Option<Bound<'py, PyAny>>,
        grammar: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let opts = GenArgs {
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            seed,
            stop,
            allow_control_tokens,
            context_overflow,
            response_format,
            grammar,
        }
        .options(py)?;
        let inner = self.inner.clone();
        let worker = Worker::spawn(move |tx, cancel| {
            lock(&inner).send(&user, &opts, Some(cancel), &mut text_sink(tx, stream))
        })?;
        stream::finish(py, worker, stream, Kind::Chat, self.model.clone())
    }

    /// The conversation so far: a list of `{"role", "content"}` dicts.
    #[getter]
    fn messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let msgs = self.with(py, |s| s.messages().to_vec())?;
        args::messages_to_py(py, &msgs)
    }

    /// Forget the conversation (the system prompt stays).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.reset())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| s.messages().len())
    }
}
