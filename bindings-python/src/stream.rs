//! `TextStream`: the iterator of text deltas that `chat(..., stream=True)` returns. The
//! deltas concatenate to exactly the non-streamed answer; after the last one, `.result`
//! holds the full result (finish reason, usage). Closing or dropping the stream early stops
//! the generation at the next token (a session keeps the partial answer).

use crate::errors::{panicked, to_py};
use crate::results::{self, Kind};
use crate::worker::{Msg, Started, Worker};
use pyo3::prelude::*;
use std::sync::{Mutex, PoisonError};
use yangtuo::Completion;

#[pyclass(module = "yangtuo", frozen)]
pub struct TextStream {
    started: Started<Completion>,
    kind: Kind,
    model: String,
    result: Mutex<Option<Py<PyAny>>>,
}

impl TextStream {
    /// Wait for the worker's first message (the first delta, or an error) and wrap it.
    pub fn start(
        py: Python<'_>,
        worker: Worker<Completion>,
        kind: Kind,
        model: String,
    ) -> PyResult<TextStream> {
        Ok(TextStream {
            started: Started::start(py, worker)?,
            kind,
            model,
            result: Mutex::new(None),
        })
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            match self.started.next(py)? {
                Some(Msg::Text(t)) => return Ok(Some(t)),
                Some(Msg::Done(r)) => {
                    let c = r.map_err(|e| to_py(py, e))?;
                    let r = results::to_py(py, self.kind, &self.model, c)?;
                    *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                    return Ok(None);
                }
                Some(Msg::Panicked(m)) => return Err(panicked(py, &m)),
                Some(Msg::Progress(..)) => {}
                None => return Ok(None),
            }
        }
    }

    /// Stop the generation now (at the next token) and wait for it to end.
    fn close(&self, py: Python<'_>) {
        self.started.worker.close(py);
    }

    /// The full `ChatResult` / `CompletionResult` once the stream is exhausted, else `None`.
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|r| r.clone_ref(py))
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.close(py);
        false
    }
}

/// A started generation as Python sees it: a `TextStream` when streaming, else the result.
pub fn finish(
    py: Python<'_>,
    worker: Worker<Completion>,
    stream: bool,
    kind: Kind,
    model: String,
) -> PyResult<Py<PyAny>> {
    if stream {
        Ok(Py::new(py, TextStream::start(py, worker, kind, model)?)?.into_any())
    } else {
        let c = worker.wait(py)?;
        results::to_py(py, kind, &model, c)
    }
}
