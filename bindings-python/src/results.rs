//! A core `Completion` as `yangtuo.ChatResult` / `yangtuo.CompletionResult` (dicts in
//! OpenAI's shape, defined in `python/yangtuo/_results.py`).

use pyo3::prelude::*;
use pyo3::types::PyDict;
use yangtuo::Completion;

#[derive(Clone, Copy)]
pub enum Kind {
    /// `chat`: a `ChatResult` (`chat.completion`).
    Chat,
    /// `generate`: a `CompletionResult` (`text_completion`).
    Text,
}

pub fn to_py(py: Python<'_>, kind: Kind, model: &str, c: Completion) -> PyResult<Py<PyAny>> {
    let usage = PyDict::new(py);
    usage.set_item("prompt_tokens", c.usage.prompt_tokens)?;
    usage.set_item("completion_tokens", c.usage.completion_tokens)?;
    usage.set_item("total_tokens", c.usage.total_tokens)?;
    let t = &c.timings;
    let timings = PyDict::new(py);
    timings.set_item("prefill_tokens", t.prefill_tokens)?;
    timings.set_item("prefill_s", t.prefill_s)?;
    timings.set_item("ttft_s", t.ttft_s)?;
    timings.set_item("decode_tokens", t.decode_tokens)?;
    timings.set_item("decode_s", t.decode_s)?;
    timings.set_item("prefill_tok_s", t.prefill_tok_s())?;
    timings.set_item("decode_tok_s", t.decode_tok_s())?;
    let d = PyDict::new(py);
    d.set_item("text", &c.text)?;
    d.set_item("finish_reason", c.finish_reason.as_str())?;
    d.set_item("usage", usage)?;
    d.set_item("ids", &c.ids)?;
    d.set_item("timings", timings)?;
    d.set_item("dropped_turns", c.dropped_turns)?;
    let class = match kind {
        Kind::Chat => "ChatResult",
        Kind::Text => "CompletionResult",
    };
    Ok(py
        .import("yangtuo._results")?
        .getattr(class)?
        .call_method1("_from_core", (d, model))?
        .unbind())
}
