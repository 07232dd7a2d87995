//! `Llama.create_chat_completion` / `create_completion`: llama-cpp-python's names and
//! returns. The keywords go to core as one JSON request (`yangtuo::api`), where they are
//! checked; the answer comes back as OpenAI's dict, or with `stream=True` an iterator of
//! OpenAI chunk dicts. Nothing here interprets a field.

use crate::errors::{panicked, to_py};
use crate::worker::{Msg, Started, Worker};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use yangtuo::Flow;
use yangtuo::api::Endpoint;

/// `{first_key: first, **kwargs}` as JSON text, `None` values left out (llama-cpp-python's
/// "not given").
pub fn request_json(
    py: Python<'_>,
    first_key: &str,
    first: &Bound<'_, PyAny>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let d = PyDict::new(py);
    d.set_item(first_key, first)?;
    if let Some(kw) = kwargs {
        for (k, v) in kw.iter() {
            if !v.is_none() {
                d.set_item(k, v)?;
            }
        }
    }
    py.import("json")?.call_method1("dumps", (d,))?.extract()
}

fn loads(py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("json")?
        .call_method1("loads", (PyString::new(py, text),))?
        .unbind())
}

/// A request run on a worker: chunks (JSON) as `Msg::Text`, the answer (JSON) as the result.
pub fn run(
    llama: std::sync::Arc<yangtuo::Llama>,
    endpoint: Endpoint,
    body: String,
) -> PyResult<Worker<String>> {
    Worker::spawn(move |tx, cancel| {
        llama.openai_json(endpoint, &body, Some(cancel), &mut |chunk| match tx
            .send(Msg::Text(chunk))
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        })
    })
}

/// The answer dict, or with `stream` a `ChunkStream`.
pub fn finish(py: Python<'_>, worker: Worker<String>, stream: bool) -> PyResult<Py<PyAny>> {
    if !stream {
        return loads(py, &worker.wait(py)?);
    }
    Ok(Py::new(
        py,
        ChunkStream {
            started: Started::start(py, worker)?,
        },
    )?
    .into_any())
}

/// The iterator of OpenAI chunk dicts that `create_chat_completion(..., stream=True)`
/// returns. Closing or dropping it stops the generation at the next token.
#[pyclass(module = "yangtuo", frozen)]
pub struct ChunkStream {
    started: Started<String>,
}

#[pymethods]
impl ChunkStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        loop {
            match self.started.next(py)? {
                Some(Msg::Text(t)) => return loads(py, &t).map(Some),
                Some(Msg::Done(r)) => return r.map(|_| None).map_err(|e| to_py(py, e)),
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

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.close(py);
        false
    }
}
