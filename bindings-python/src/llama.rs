//! `yangtuo.Llama`: a loaded model. Concurrent calls on one `Llama` run in parallel, each with
//! its own KV cache (core pools them); device work is interleaved token by token.

use crate::args::{self, GenArgs};
use crate::errors::{IntoPy, call, invalid, panicked};
use crate::openai;
use crate::progress::Progress;
use crate::results::Kind;
use crate::session::PySession;
use crate::stream;
use crate::worker::{Msg, Worker, text_sink};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::path::PathBuf;
use std::sync::Arc;
use yangtuo::Llama;
use yangtuo::api::Endpoint;

#[pyclass(module = "yangtuo", name = "Llama", frozen)]
pub struct PyLlama {
    pub inner: Arc<Llama>,
    /// The model path as given: the `model` field of results.
    pub model: String,
}

#[pymethods]
impl PyLlama {
    #[new]
    #[pyo3(signature = (model, backend = "auto", quantize = None, template = None, n_ctx = None, progress = None, parallel = 1, tool_template = None, kv_cache_dtype = "auto"))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        backend: &str,
        quantize: Option<&str>,
        template: Option<String>,
        n_ctx: Option<i64>,
        progress: Option<&Bound<'_, PyAny>>,
        parallel: i64,
        tool_template: Option<String>,
        kv_cache_dtype: &str,
    ) -> PyResult<Self> {
        let opts = args::load_options(
            py,
            backend,
            quantize,
            template,
            n_ctx,
            parallel,
            tool_template,
            kv_cache_dtype,
        )?;
        let progress = Progress::new(progress)?;
        let path = model.clone();
        let worker = Worker::spawn(move |tx, _| {
            let mut on_progress = |p: yangtuo::LoadProgress| {
                let _ = tx.send(Msg::Progress(
                    p.done_bytes,
                    p.total_bytes,
                    p.tensor.to_string(),
                ));
            };
            Llama::load(&path, &opts, &mut on_progress)
        })?;
        // core's load has no cancel flag: on Ctrl-C (or a failing callback) the load is
        // abandoned and finishes, unused, on its thread
        let r = (|| loop {
            match worker.next(py)? {
                Some(Msg::Progress(done, total, tensor)) => {
                    progress.update(py, done, total, &tensor)?
                }
                Some(Msg::Done(r)) => return r.py_err(py),
                Some(Msg::Panicked(m)) => return Err(panicked(py, &m)),
                Some(Msg::Text(_)) => {}
                None => return Err(panicked(py, "the loading thread ended without a result")),
            }
        })();
        progress.finish();
        Ok(PyLlama {
            inner: Arc::new(r?),
            model: model.to_string_lossy().into_owned(),
        })
    }

    /// Chat: `messages` is a list of `{"role", "content"}` dicts (system?, then user and
    /// assistant alternating, ending with user). Returns a `ChatResult`, or with
    /// `stream=True` a `TextStream` of text deltas.
    #[pyo3(signature = (messages, max_tokens = None, temperature = 0.6, top_p = 0.9, top_k = None, min_p = None,
        repetition_penalty = None, seed = None, stop = None, stream = false, allow_control_tokens = false, context_overflow = None,
        response_format = None, grammar = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
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
        let msgs = args::messages(messages)?;
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
        let llama = self.inner.clone();
        let worker = Worker::spawn(move |tx, cancel| {
            llama.chat_stream(&msgs, &opts, Some(cancel), &mut text_sink(tx, stream))
        })?;
        stream::finish(py, worker, stream, Kind::Chat, self.model.clone())
    }

    /// Raw completion (no chat template): `prompt` is text (BOS is added) or a list of token
    /// ids (used as given). Returns a `CompletionResult`, or a `TextStream` with `stream=True`.
    #[pyo3(signature = (prompt, max_tokens = None, temperature = 0.6, top_p = 0.9, top_k = None, min_p = None,
        repetition_penalty = None, seed = None, stop = None, stream = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        max_tokens: Option<i64>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<i64>,
        min_p: Option<f32>,
        repetition_penalty: Option<f32>,
        seed: Option<i64>,
        stop: Option<Bound<'py, PyAny>>,
        stream: bool,
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
            allow_control_tokens: true,
            context_overflow: None,
            response_format: None,
            grammar: None,
        }
        .options(py)?;
        let llama = self.inner.clone();
        let worker = if prompt.is_instance_of::<PyString>() {
            let text: String = prompt.extract()?;
            Worker::spawn(move |tx, cancel| {
                llama.generate(&text, &opts, Some(cancel), &mut text_sink(tx, stream))
            })?
        } else {
            let ids = token_ids(prompt)?;
            Worker::spawn(move |tx, cancel| {
                llama.complete_ids(&ids, &opts, Some(cancel), &mut text_sink(tx, stream))
            })?
        };
        stream::finish(py, worker, stream, Kind::Text, self.model.clone())
    }

    /// OpenAI's chat completion, as llama-cpp-python's `create_chat_completion`: the
    /// keywords are OpenAI's fields (`max_tokens`, `temperature`, `top_p`, `top_k`, `min_p`,
    /// `repeat_penalty`, `seed`, `stop`, `stream`, ...); an unsupported one raises
    /// `InvalidArgumentError` naming it. Returns the `chat.completion` dict, or with
    /// `stream=True` an iterator of `chat.completion.chunk` dicts.
    #[pyo3(signature = (messages, **kwargs))]
    fn create_chat_completion(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let stream = is_stream(kwargs)?;
        let body = openai::request_json(py, "messages", messages, kwargs)?;
        openai::finish(
            py,
            openai::run(self.inner.clone(), Endpoint::Chat, body)?,
            stream,
        )
    }

    /// OpenAI's text completion, as llama-cpp-python's `create_completion` (BOS, then the
    /// prompt; no template). Returns the `text_completion` dict, or an iterator of them.
    #[pyo3(signature = (prompt, **kwargs))]
    fn create_completion(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let stream = is_stream(kwargs)?;
        let body = openai::request_json(py, "prompt", prompt, kwargs)?;
        openai::finish(
            py,
            openai::run(self.inner.clone(), Endpoint::Text, body)?,
            stream,
        )
    }

    /// `llm(prompt, **kwargs)` is `create_completion`, as in llama-cpp-python.
    #[pyo3(signature = (prompt, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.create_completion(py, prompt, kwargs)
    }

    /// A multi-turn conversation that keeps its KV cache between turns.
    #[pyo3(signature = (system = None))]
    fn session(&self, system: Option<String>) -> PySession {
        PySession::new(self.inner.session(system), self.model.clone())
    }

    /// Token ids of `text` (no BOS).
    fn tokenize(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        call(py, || self.inner.tokenize(text))
    }

    fn detokenize(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = token_ids(ids)?;
        call(py, || self.inner.detokenize(&ids))
    }

    /// The prompt ids `chat` runs for `messages` (the chat template, rendered and tokenized).
    #[pyo3(signature = (messages, allow_control_tokens = false))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        allow_control_tokens: bool,
    ) -> PyResult<Vec<u32>> {
        let msgs = args::messages(messages)?;
        call(py, || self.inner.render(&msgs, allow_control_tokens))
    }

    /// The context length (KV cache positions).
    #[getter]
    fn n_ctx(&self) -> usize {
        self.inner.context_length()
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.config().vocab_size
    }

    /// `(steps, sequences)`: the forward passes the batch scheduler ran and the sequences in
    /// them, so `sequences / steps` is the mean batch (`None` unless `parallel` > 1).
    #[getter]
    fn batch_stats(&self) -> Option<(u64, u64)> {
        self.inner.batch_stats().map(|s| (s.steps, s.sequences))
    }

    /// The device the model runs on, e.g. `cpu` or the GPU's name.
    #[getter]
    fn device(&self) -> String {
        self.inner.device()
    }

    /// The chat template's name: `llama2`, `llama2-chinese` or `jinja` (the model's own).
    #[getter]
    fn template(&self) -> String {
        self.inner.template().name().to_string()
    }

    #[getter]
    fn model_path(&self) -> String {
        self.model.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Llama(model={:?}, device={:?}, n_ctx={}, template={:?})",
            self.model,
            self.device(),
            self.n_ctx(),
            self.template()
        )
    }
}

/// Whether `stream=True` was passed (core checks the value's type; this only picks the
/// return shape).
fn is_stream(kwargs: Option<&Bound<'_, pyo3::types::PyDict>>) -> PyResult<bool> {
    match kwargs.map(|k| k.get_item("stream")).transpose()?.flatten() {
        Some(v) => Ok(v.is_truthy()?),
        None => Ok(false),
    }
}

/// A list of token ids; a negative or too large id is an `InvalidArgumentError`.
fn token_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    let py = obj.py();
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "expected a list of int token ids, got a str",
        ));
    }
    let ids: Vec<i64> = obj
        .extract()
        .map_err(|_| PyTypeError::new_err("expected a list of int token ids"))?;
    ids.into_iter()
        .map(|i| {
            u32::try_from(i).map_err(|_| invalid(py, "ids", format!("`{i}` is not a token id")))
        })
        .collect()
}
