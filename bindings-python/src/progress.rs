//! Load progress: an indicatif bar on stderr (drawn only when stderr is a terminal, like the
//! CLI's), a Python callback, or nothing.

use indicatif::{ProgressBar, ProgressStyle};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBool;

pub enum Progress {
    Bar(ProgressBar),
    /// `callback(done_bytes, total_bytes, tensor_name)`
    Callback(Py<PyAny>),
    Off,
}

impl Progress {
    /// `None` or `True`: the bar; `False`: nothing; a callable: called once per tensor.
    pub fn new(arg: Option<&Bound<'_, PyAny>>) -> PyResult<Progress> {
        match arg {
            Some(a) if a.is_instance_of::<PyBool>() => Ok(if a.extract::<bool>()? {
                Progress::bar()
            } else {
                Progress::Off
            }),
            None => Ok(Progress::bar()),
            Some(a) if a.is_callable() => Ok(Progress::Callback(a.clone().unbind())),
            Some(_) => Err(PyTypeError::new_err(
                "progress must be a bool or a callable(done_bytes, total_bytes, tensor)",
            )),
        }
    }

    fn bar() -> Progress {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({eta}) {prefix}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message("loading");
        Progress::Bar(pb)
    }

    pub fn update(&self, py: Python<'_>, done: u64, total: u64, tensor: &str) -> PyResult<()> {
        match self {
            Progress::Bar(pb) => {
                pb.set_length(total.max(1));
                pb.set_position(done);
                pb.set_prefix(tensor.to_string());
            }
            Progress::Callback(f) => {
                f.call1(py, (done, total, tensor))?;
            }
            Progress::Off => {}
        }
        Ok(())
    }

    pub fn finish(&self) {
        if let Progress::Bar(pb) = self {
            pb.finish_and_clear();
        }
    }
}
