//! Python arguments → core types: messages, generation options, load options.

use crate::errors::{IntoPy, invalid};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyString, PyTuple};
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
        return Err(PyTypeError::new_err(format!("messages must be {SHAPE}, got {}{hint}", type_name(obj))));
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
                Err(_) => return Err(invalid(obj.py(), "messages", format!("messages[{i}] has no \"{key}\""))),
            };
            v.extract::<String>().map_err(|_| {
                PyTypeError::new_err(format!("messages[{i}][\"{key}\"] must be a str, got {}", type_name(&v)))
            })
        };
        out.push(Message { role: field("role")?, content: field("content")? });
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
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
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
}

impl GenArgs<'_> {
    /// Core's options; `None` for temperature or top_p means Meta's defaults (0.6, 0.9).
    /// Ranges are core's to check, except what a Rust unsigned type cannot hold.
    pub fn options(self, py: Python<'_>) -> PyResult<GenerateOptions> {
        let count = |name: &'static str, v: Option<i64>| -> PyResult<Option<usize>> {
            v.map(|n| usize::try_from(n).map_err(|_| invalid(py, name, format!("must be at least 1, got {n}"))))
                .transpose()
        };
        let base = SamplingParams::default();
        let seed = self
            .seed
            .map(|s| {
                u64::try_from(s)
                    .map_err(|_| invalid(py, "seed", format!("must be >= 0, got {s} (None draws a random seed)")))
            })
            .transpose()?;
        let stop = match self.stop {
            None => vec![],
            Some(s) if s.is_instance_of::<PyString>() => vec![s.extract::<String>()?],
            Some(s) => {
                s.extract::<Vec<String>>().map_err(|_| PyTypeError::new_err("stop must be a str or a list of str"))?
            }
        };
        Ok(GenerateOptions {
            max_tokens: count("max_tokens", self.max_tokens)?,
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(base.temperature),
                top_p: self.top_p.unwrap_or(base.top_p),
                top_k: count("top_k", self.top_k)?,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed,
            },
            stop,
            allow_control_tokens: self.allow_control_tokens,
        })
    }
}

/// `Llama(...)` arguments → core's `LoadOptions`.
pub fn load_options(
    py: Python<'_>,
    backend: &str,
    quantize: Option<&str>,
    template: Option<String>,
    n_ctx: Option<i64>,
) -> PyResult<LoadOptions> {
    let ctx_len = n_ctx
        .map(|n| usize::try_from(n).map_err(|_| invalid(py, "n_ctx", format!("must be at least 1, got {n}"))))
        .transpose()?;
    Ok(LoadOptions {
        backend: backend.parse::<BackendChoice>().py_err(py)?,
        template,
        quantize: quantize.map(|q| weight_format(py, q)).transpose()?,
        ctx_len,
        ..LoadOptions::default()
    })
}

/// The names the CLI's `--quantize` takes.
fn weight_format(py: Python<'_>, s: &str) -> PyResult<WeightFormat> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "q4_0" => WeightFormat::Q4_0,
        "q4_1" => WeightFormat::Q4_1,
        "q8_0" => WeightFormat::Q8_0,
        "q4_k" | "q4_k_m" | "q4k" => WeightFormat::Q4K,
        "q6_k" | "q6k" => WeightFormat::Q6K,
        "f16" => WeightFormat::F16,
        other => {
            return Err(invalid(
                py,
                "quantize",
                format!("unknown format `{other}` (q4_0, q4_1, q8_0, q4_k, q6_k, f16)"),
            ));
        }
    })
}
