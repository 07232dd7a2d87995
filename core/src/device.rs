//! Choosing the device a model runs on (`auto`, `YANGTUO_BACKEND`) and loading its
//! weights onto that backend.

use crate::backend::KvDtype;
use crate::model::Model;
use crate::runner::Runner;
use crate::weights::builder::{LoadProgress, WeightSource};
use crate::{Error, Result};
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// CUDA (an NVIDIA GPU with its driver and NVRTC), then a real GPU through wgpu, then
    /// the CPU backend; a software wgpu adapter (lavapipe, SwiftShader) only in a build
    /// without the CPU backend.
    #[default]
    Auto,
    Wgpu,
    Cpu,
    Cuda,
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "wgpu" | "gpu" => Ok(BackendChoice::Wgpu),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(Error::arg(
                "backend",
                format!("`{other}` is not one of auto, wgpu, cuda, cpu"),
            )),
        }
    }
}

impl BackendChoice {
    /// The explicit choice, else `YANGTUO_BACKEND`, else auto.
    pub fn resolve(self) -> Result<BackendChoice> {
        match self {
            BackendChoice::Auto => match std::env::var("YANGTUO_BACKEND") {
                Ok(v) if !v.is_empty() => v.parse(),
                _ => Ok(BackendChoice::Auto),
            },
            other => Ok(other),
        }
    }
}

fn boxed<B: crate::backend::Backend>(
    source: &mut dyn WeightSource,
    backend: B,
    kv_dtype: Option<KvDtype>,
    total: u64,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Arc<dyn Runner>> {
    let mut model = Model::load(source, backend, total, progress)?;
    if let Some(d) = kv_dtype {
        model.kv_dtype = d;
    }
    log::info!(
        "loaded on {} ({} KV cache)",
        crate::backend::Backend::name(&model.backend),
        model.kv_dtype
    );
    Ok(model.into_runner())
}

/// Load `source` onto the chosen backend. `total` is the byte count for progress.
/// `kv`: how its sessions' KV caches store keys and values (`None`: the backend's auto).
pub async fn load_runner(
    source: &mut dyn WeightSource,
    choice: BackendChoice,
    kv: Option<KvDtype>,
    total: u64,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Arc<dyn Runner>> {
    let choice = choice.resolve()?;
    match choice {
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu => boxed(
            source,
            crate::backend::wgpu::Wgpu::new().await?,
            kv,
            total,
            progress,
        ),
        #[cfg(feature = "cpu")]
        BackendChoice::Cpu => boxed(source, crate::backend::cpu::Cpu, kv, total, progress),
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => boxed(
            source,
            crate::backend::cuda::Cuda::new()?,
            kv,
            total,
            progress,
        ),
        BackendChoice::Auto => {
            // CUDA where the driver and NVRTC are found (an NVIDIA GPU), then a real GPU
            // through wgpu, then the CPU backend. A software adapter (lavapipe,
            // SwiftShader) runs the same kernels on the same cores 50-100x slower than the
            // CPU backend, so auto takes it only in a build without one; `--backend wgpu`
            // still reaches it.
            #[cfg(feature = "cuda")]
            match crate::backend::cuda::Cuda::new() {
                Ok(cuda) => return boxed(source, cuda, kv, total, progress),
                Err(e) => log::info!("cuda unavailable ({e})"),
            }
            #[cfg(feature = "wgpu")]
            match crate::backend::wgpu::Wgpu::new().await {
                Ok(gpu) if gpu.is_real_gpu() => return boxed(source, gpu, kv, total, progress),
                #[cfg(not(feature = "cpu"))]
                Ok(gpu) => {
                    log::warn!(
                        "no hardware GPU: running on the software adapter {}",
                        crate::backend::Backend::name(&gpu)
                    );
                    return boxed(source, gpu, kv, total, progress);
                }
                #[cfg(feature = "cpu")]
                Ok(gpu) => log::info!(
                    "skipping the software adapter {} (`--backend wgpu` runs on it); the CPU \
                     backend is 50-100x faster on the same cores",
                    crate::backend::Backend::name(&gpu)
                ),
                Err(e) => log::info!("wgpu unavailable ({e})"),
            }
            #[cfg(feature = "cpu")]
            return boxed(source, crate::backend::cpu::Cpu, kv, total, progress);
            #[allow(unreachable_code)]
            Err(Error::Device("no backend available in this build".into()))
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::Device(format!(
            "backend {other:?} is not available in this build{}",
            if other == BackendChoice::Cuda {
                " (build with `--features cuda`)"
            } else {
                ""
            }
        ))),
    }
}
