//! Python arguments → core types: messages, generation options, load options.

use crate::errors::{IntoPy, invalid};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyString, PyTuple};
use yangtuo::api::{Params, Stop};
use yangtuo::{BackendChoice, GenerateOptions, LoadOptions, Message, SamplingParams, WeightFormat};

/// `[{"role": str, "content": str}, ...]` → messages. Roles and order are core's to check
/// (a `TemplateError` naming the message); here only the shape.
pub fn messages(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Message>> {
    const SHAPE: &str = "a list of {\"role\": str, \"content\": str} dicts";
    if !(obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>()) {
        let hint = if obj.is_instance_of::<PyString>() {
            "; for one prompt pass [{\"role\": \"user\", \"content\": text}]"
        } else {
            ""
        };
        return Err(PyTypeError::new_err(format!(
            "messages must be {SHAPE}, got {}{hint}",
            type_name(obj)
        )));
    }
    let mut out = vec![];
    for (i, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        let m = item.cast::<PyMapping>().map_err(|_| {
            PyTypeError::new_err(format!(
                "messages[{i}] must be a dict with \"role\" and \"content\", got {}",
                type_name(&item)
            ))
        })?;
        let field = |key: &str| -> PyResult<String> {
            let v = match m.get_item(key) {
                Ok(v) => v,
                Err(_) => {
                    return Err(invalid(
                        obj.py(),
                        "messages",
                        format!("messages[{i}] has no \"{key}\""),
                    ));
                }
            };
            v.extract::<String>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "messages[{i}][\"{key}\"] must be a str, got {}",
                    type_name(&v)
                ))
            })
        };
        out.push(Message {
            role: field("role")?,
            content: field("content")?,
        });
    }
    Ok(out)
}

pub fn messages_to_py<'py>(py: Python<'py>, msgs: &[Message]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for m in msgs {
        let d = PyDict::new(py);
        d.set_item("role", &m.role)?;
        d.set_item("content", &m.content)?;
        list.append(d)?;
    }
    Ok(list)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The keyword arguments of `chat` and `generate`, as Python passed them.
pub struct GenArgs<'py> {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Bound<'py, PyAny>>,
    pub allow_control_tokens: bool,
    /// `truncate-oldest` or `error` (core's `ContextOverflow`); `None`: the call's default.
    pub context_overflow: Option<String>,
    /// OpenAI's `response_format` dict, and a Lark `grammar` (structured output).
    pub response_format: Option<Bound<'py, PyAny>>,
    pub grammar: Option<String>,
}

impl GenArgs<'_> {
    /// Core's options, through core's one check of a request (`Params::check`, Meta's
    /// defaults for what is left out); only `stop`'s Python types are read here.
    pub fn options(self, py: Python<'_>) -> PyResult<GenerateOptions> {
        let stop = match self.stop {
            None => None,
            Some(s) if s.is_instance_of::<PyString>() => Some(Stop::One(s.extract::<String>()?)),
            Some(s) => Some(Stop::Many(s.extract::<Vec<String>>().map_err(|_| {
                PyTypeError::new_err("stop must be a str or a list of str")
            })?)),
        };
        let response_format = match self.response_format {
            None => None,
            Some(f) => {
                let text: String = py.import("json")?.call_method1("dumps", (f,))?.extract()?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| PyTypeError::new_err(format!("response_format: {e}")))?,
                )
            }
        };
        let params = Params {
            response_format,
            grammar: self.grammar,
            max_tokens: self.max_tokens,
            temperature: self.temperature.map(f64::from),
            top_p: self.top_p.map(f64::from),
            top_k: self.top_k,
            min_p: self.min_p.map(f64::from),
            repetition_penalty: self.repetition_penalty.map(f64::from),
            seed: self.seed,
            stop,
            context_overflow: self.context_overflow,
            ..Params::default()
        };
        let mut opts = params.check(&SamplingParams::default()).py_err(py)?.opts;
        opts.allow_control_tokens = self.allow_control_tokens;
        Ok(opts)
    }
}

/// `Llama(...)` arguments → core's `LoadOptions`.
#[allow(clippy::too_many_arguments)]
pub fn load_options(
    py: Python<'_>,
    backend: &str,
    quantize: Option<&str>,
    template: Option<String>,
    n_ctx: Option<i64>,
    parallel: i64,
    tool_template: Option<String>,
    kv_cache_dtype: &str,
) -> PyResult<LoadOptions> {
    let parallel = usize::try_from(parallel).map_err(|_| {
        invalid(
            py,
            "parallel",
            format!("must be at least 1, got {parallel}"),
        )
    })?;
    let ctx_len = n_ctx
        .map(|n| {
            usize::try_from(n)
                .map_err(|_| invalid(py, "n_ctx", format!("must be at least 1, got {n}")))
        })
        .transpose()?;
    Ok(LoadOptions {
        backend: backend.parse::<BackendChoice>().py_err(py)?,
        template,
        quantize: quantize
            .map(|q| q.parse::<WeightFormat>())
            .transpose()
            .py_err(py)?,
        ctx_len,
        kv_cache_dtype: yangtuo::parse_kv_dtype(kv_cache_dtype).py_err(py)?,
        parallel,
        tool_template,
        ..LoadOptions::default()
    })
}
