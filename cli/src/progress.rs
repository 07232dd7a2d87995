//! Loading with a progress bar on a terminal.

use crate::args::ModelArgs;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use yangtuo::LoadProgress;
use yangtuo::{Llama, Result};

pub fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({eta}) {prefix}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A callback that drives `pb` from load progress.
pub fn on_progress(pb: &ProgressBar) -> impl FnMut(LoadProgress) + '_ {
    move |p: LoadProgress| {
        pb.set_length(p.total_bytes.max(1));
        pb.set_position(p.done_bytes);
        pb.set_prefix(p.tensor.to_string());
    }
}

/// The model as a local path: a path as given, a Hugging Face repo id through the cache
/// (downloading what is missing, with a bar per file).
pub fn resolve(m: &ModelArgs) -> Result<PathBuf> {
    let Some(spec) = m.model.to_str().filter(|_| !m.model.exists()) else {
        return Ok(m.model.clone());
    };
    let pb = bar(0, "download");
    let mut current = String::new();
    let r = yangtuo::hub::resolve_model(spec, &mut |p| {
        if p.file != current {
            current = p.file.clone();
            if p.done_bytes < p.total_bytes {
                let line = format!(
                    "downloading {} ({:.1} MiB)",
                    p.file,
                    p.total_bytes as f64 / (1 << 20) as f64
                );
                if pb.is_hidden() {
                    log::info!("{line}")
                } else {
                    pb.println(line)
                }
            }
            pb.reset();
            pb.set_prefix(p.file.clone());
        }
        pb.set_length(p.total_bytes.max(1));
        pb.set_position(p.done_bytes);
    });
    pb.finish_and_clear();
    let path = r?;
    if path != m.model {
        log::info!("{spec}: {}", path.display());
    }
    Ok(path)
}

pub fn load_llama(m: &ModelArgs, template: Option<String>) -> Result<Arc<Llama>> {
    let opts = m.load_options(template)?;
    let path = resolve(m)?;
    let pb = bar(0, "loading");
    let llama = Llama::load(&path, &opts, &mut on_progress(&pb));
    pb.finish_and_clear();
    let llama = llama?;
    log::info!("device: {}", llama.device());
    Ok(Arc::new(llama))
}

/// Only the model (no tokenizer or template), for commands that work on token ids.
pub fn load_runner(m: &ModelArgs) -> Result<Arc<dyn yangtuo::Runner>> {
    let opts = m.load_options(None)?;
    let mut files = yangtuo::weights::source::ModelFiles::open(&resolve(m)?)?;
    let total = files.total_bytes() as u64;
    let pb = bar(total, "loading");
    let mut cb = on_progress(&pb);
    let r = match opts.quantize {
        None => pollster::block_on(yangtuo::device::load_runner(
            &mut files,
            opts.backend,
            opts.kv_cache_dtype,
            total,
            &mut cb,
        )),
        Some(f) => {
            let mut q = yangtuo::weights::quantize::Quantizing::new(&mut files, f)?;
            pollster::block_on(yangtuo::device::load_runner(
                &mut q,
                opts.backend,
                opts.kv_cache_dtype,
                total,
                &mut cb,
            ))
        }
    };
    drop(cb);
    pb.finish_and_clear();
    let r = r?;
    log::info!("device: {}", r.device());
    Ok(r)
}
