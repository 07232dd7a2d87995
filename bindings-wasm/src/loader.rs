//! `WasmLoader`: files stream in chunk by chunk; each tensor goes to the GPU as soon as its
//! last byte arrives (core's `StreamLoader`), so wasm memory holds one tensor at a time.

use crate::error::{arg, to_js};
use crate::llama::WasmLlama;
use std::path::Path;
use std::sync::Arc;
use wasm_bindgen::prelude::*;
use yangtuo::backend::wgpu::Wgpu;
use yangtuo::config::HfConfig;
use yangtuo::runner::Locked;
use yangtuo::tokenizer::Tokenizer;
use yangtuo::weights::stream::StreamLoader;

#[wasm_bindgen]
pub struct WasmLoader {
    inner: Option<StreamLoader<Wgpu>>,
    device: String,
}

#[wasm_bindgen]
impl WasmLoader {
    /// Open the WebGPU device. `config_json` is the model's config.json (safetensors
    /// models); GGUF files carry their own.
    pub async fn create(config_json: Option<String>) -> Result<WasmLoader, JsValue> {
        let config = match config_json {
            Some(text) => Some(HfConfig::from_json(&text, Path::new("config.json")).map_err(to_js)?),
            None => None,
        };
        let gpu = Wgpu::new().await.map_err(to_js)?;
        let device = yangtuo::backend::Backend::name(&gpu);
        log::info!("yangtuo: {device}");
        Ok(WasmLoader { inner: Some(StreamLoader::new(gpu, config)), device })
    }

    fn loader(&mut self) -> Result<&mut StreamLoader<Wgpu>, JsValue> {
        self.inner.as_mut().ok_or_else(|| arg("loader", "this loader has already finished"))
    }

    /// Start a file (`.gguf` or `.safetensors`) of `len` bytes.
    #[wasm_bindgen(js_name = beginFile)]
    pub fn begin_file(&mut self, name: &str, len: f64) -> Result<(), JsValue> {
        self.loader()?.begin_file(name, len as u64).map_err(to_js)
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        self.loader()?.push(chunk).map_err(to_js)
    }

    #[wasm_bindgen(js_name = endFile)]
    pub fn end_file(&mut self) -> Result<(), JsValue> {
        self.loader()?.end_file().map_err(to_js)
    }

    /// The tensor being received.
    #[wasm_bindgen(getter)]
    pub fn tensor(&self) -> String {
        self.inner.as_ref().map(|l| l.current.clone()).unwrap_or_default()
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
    ) -> Result<js_sys::Promise, JsValue> {
        let loader = self.inner.take().ok_or_else(|| arg("loader", "this loader has already finished"))?;
        let device = self.device.clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let weights = loader.loaded_bytes;
            let gguf_tok = loader.gguf().map(yangtuo::weights::gguf::tokenizer).transpose().map_err(to_js)?;
            let tok = match (tokenizer, gguf_tok) {
                (Some(bytes), _) => Tokenizer::from_bytes(&bytes).map_err(to_js)?,
                (None, Some(t)) => t,
                (None, None) => {
                    return Err(arg("tokenizer", "this model has no tokenizer: pass tokenizer.model or tokenizer.json"));
                }
            };
            let own = match (&tokenizer_config, loader.gguf()) {
                (Some(cfg), _) => yangtuo::open::config_template(cfg, &tok),
                (None, Some(g)) => yangtuo::open::gguf_template(g, &tok),
                _ => None,
            };
            let template = yangtuo::open::choose_template(template.as_deref(), own).map_err(to_js)?;
            let model = loader.finish().map_err(to_js)?;
            // the browser reports failed allocations asynchronously: wait for the uploads
            if let Err(e) = model.backend.sync().await {
                let mib = weights as f64 / (1 << 20) as f64;
                let msg = format!("the model's {mib:.1} MiB of weights do not fit this GPU ({device}): {e}");
                return Err(to_js(yangtuo::Error::Device(msg)));
            }
            let ctx = n_ctx.unwrap_or(model.config.max_seq_len.min(4096));
            let llama =
                yangtuo::Llama::from_parts(Arc::new(Locked::new(model)), tok, template, ctx, 256).map_err(to_js)?;
            Ok(WasmLlama::new(llama).into())
        }))
    }
}
