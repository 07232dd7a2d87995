//! `WasmLoader`: files stream in chunk by chunk; each tensor goes to the GPU as soon as its
//! last byte arrives (core's `StreamLoader`), so wasm memory holds one tensor at a time.
//! Without WebGPU (Firefox, Safari, a blocklisted GPU) the CPU backend runs instead, with
//! the weights in wasm memory.

use crate::error::{arg, to_js};
use crate::llama::WasmLlama;
use std::path::Path;
use wasm_bindgen::prelude::*;
use yangtuo::backend::Backend;
use yangtuo::backend::cpu::Cpu;
use yangtuo::backend::wgpu::Wgpu;
use yangtuo::config::HfConfig;
use yangtuo::{Llama, LoadOptions, TokenizerFiles};
use yangtuo::weights::stream::StreamLoader;

enum Stream {
    Gpu(StreamLoader<Wgpu>),
    Cpu(StreamLoader<Cpu>),
}

/// `each!(stream, l => expr)`: `expr` on whichever loader it holds.
macro_rules! each {
    ($s:expr, $l:ident => $e:expr) => {
        match $s {
            Stream::Gpu($l) => $e,
            Stream::Cpu($l) => $e,
        }
    };
}

#[wasm_bindgen]
pub struct WasmLoader {
    inner: Option<Stream>,
    device: String,
}

#[wasm_bindgen]
impl WasmLoader {
    /// Open the device. `config_json` is the model's config.json (safetensors models);
    /// GGUF files carry their own. `backend`: `auto` (WebGPU, else the CPU), `webgpu` or
    /// `cpu`.
    pub async fn create(config_json: Option<String>, backend: Option<String>) -> Result<WasmLoader, JsValue> {
        let config = match config_json {
            Some(text) => Some(HfConfig::from_json(&text, Path::new("config.json")).map_err(to_js)?),
            None => None,
        };
        let gpu = match backend.as_deref().unwrap_or("auto") {
            "cpu" => None,
            "webgpu" => Some(Wgpu::new().await.map_err(to_js)?),
            "auto" => Wgpu::new().await.inspect_err(|e| log::warn!("yangtuo: no WebGPU ({e}); running on the CPU")).ok(),
            other => return Err(arg("backend", format!("`{other}`: expected auto, webgpu or cpu"))),
        };
        let (stream, device) = match gpu {
            Some(gpu) => {
                let name = gpu.name();
                (Stream::Gpu(StreamLoader::new(gpu, config)), name)
            }
            None => (Stream::Cpu(StreamLoader::new(Cpu, config)), Cpu.name()),
        };
        log::info!("yangtuo: {device}");
        Ok(WasmLoader { inner: Some(stream), device })
    }

    fn loader(&mut self) -> Result<&mut Stream, JsValue> {
        self.inner.as_mut().ok_or_else(|| arg("loader", "this loader has already finished"))
    }

    /// Start a file (`.gguf` or `.safetensors`) of `len` bytes.
    #[wasm_bindgen(js_name = beginFile)]
    pub fn begin_file(&mut self, name: &str, len: f64) -> Result<(), JsValue> {
        each!(self.loader()?, l => l.begin_file(name, len as u64)).map_err(to_js)
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        each!(self.loader()?, l => l.push(chunk)).map_err(to_js)
    }

    #[wasm_bindgen(js_name = endFile)]
    pub fn end_file(&mut self) -> Result<(), JsValue> {
        each!(self.loader()?, l => l.end_file()).map_err(to_js)
    }

    /// The tensor being received.
    #[wasm_bindgen(getter)]
    pub fn tensor(&self) -> String {
        self.inner.as_ref().map(|s| each!(s, l => l.current.clone())).unwrap_or_default()
    }

    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    /// Assemble the model. `tokenizer` is tokenizer.model or tokenizer.json bytes (GGUF
    /// models carry their vocabulary); `tokenizer_config` may hold a jinja chat_template.
    pub fn finish(
        &mut self,
        tokenizer: Option<Vec<u8>>,
        tokenizer_config: Option<String>,
        template: Option<String>,
        n_ctx: Option<usize>,
        parallel: Option<usize>,
        kv_cache_dtype: Option<String>,
    ) -> Result<js_sys::Promise, JsValue> {
        let kv = yangtuo::parse_kv_dtype(kv_cache_dtype.as_deref().unwrap_or("auto")).map_err(to_js)?;
        let loader = self.inner.take().ok_or_else(|| arg("loader", "this loader has already finished"))?;
        let device = self.device.clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let (runner, gguf) = match loader {
                Stream::Gpu(mut loader) => {
                    let weights = loader.loaded_bytes;
                    let gguf = loader.take_gguf();
                    let mut model = loader.finish().map_err(to_js)?;
                    model.kv_dtype = kv.unwrap_or(model.kv_dtype);
                    // the browser reports failed allocations asynchronously: wait for the uploads
                    if let Err(e) = model.backend.sync().await {
                        let mib = weights as f64 / (1 << 20) as f64;
                        let msg = format!("the model's {mib:.1} MiB of weights do not fit this GPU ({device}): {e}");
                        return Err(to_js(yangtuo::Error::Device(msg)));
                    }
                    (model.into_runner(), gguf)
                }
                Stream::Cpu(mut loader) => {
                    let gguf = loader.take_gguf();
                    let mut model = loader.finish().map_err(to_js)?;
                    model.kv_dtype = kv.unwrap_or(model.kv_dtype);
                    (model.into_runner(), gguf)
                }
            };
            let files = TokenizerFiles::Bytes { tokenizer: tokenizer.as_deref(), tokenizer_config: tokenizer_config.as_deref() };
            let parallel = parallel.unwrap_or(1);
            let opts = LoadOptions { template, ctx_len: n_ctx, parallel, ..LoadOptions::default() };
            let llama = Llama::from_parts(runner, gguf.as_ref(), files, &opts).map_err(to_js)?;
            Ok(WasmLlama::new(llama).into())
        }))
    }
}
