//! `yangtuo._yangtuo`: the Python extension module. A thin translation of core's `Llama`
//! and `ChatSession`; the Python-shaped result and error classes live in `python/yangtuo`.
//!
//! Every core call runs on a worker thread (`worker.rs`) while the calling thread waits with
//! the GIL released, so other Python threads run and Ctrl-C stops a generation.

mod args;
mod errors;
mod llama;
mod openai;
mod progress;
mod results;
mod session;
mod stream;
mod worker;

use pyo3::prelude::*;

#[pymodule]
fn _yangtuo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    if let Some(warning) = yangtuo::backend::cpu::clamp_thread_env() {
        let category = m.py().get_type::<pyo3::exceptions::PyRuntimeWarning>();
        PyErr::warn(
            m.py(),
            &category,
            &std::ffi::CString::new(warning).unwrap_or_default(),
            1,
        )?;
    }
    m.add_class::<llama::PyLlama>()?;
    m.add_class::<session::PySession>()?;
    m.add_class::<stream::TextStream>()?;
    m.add_class::<openai::ChunkStream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
