//! Models by Hugging Face id in the browser: the ES module lists a repo through the Hub's
//! HTTP API and fetches files from `/{repo}/resolve/main/{file}`; which files, and what a
//! failed request means, is core's (`yangtuo::repo_files`), as for the native hub.

use crate::error::{arg, to_js};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use yangtuo::repo_files::{RepoSpec, Wanted, choose, web_http_error};

#[derive(Serialize)]
struct Id {
    repo: String,
    quant: Option<String>,
}

#[derive(Serialize)]
struct Choice {
    repo: String,
    /// The one GGUF file, or else the folder's files (config, tokenizer, weights or index).
    gguf: Option<String>,
    files: Vec<String>,
}

/// `owner/name[:QUANT]` → `{ repo, quant }`, or `undefined` for anything else (a URL).
#[wasm_bindgen(js_name = parseRepoId)]
pub fn parse_repo_id(spec: &str) -> JsValue {
    match RepoSpec::parse(spec) {
        Some(r) if !yangtuo::repo_files::is_gguf(spec) => {
            serde_wasm_bindgen::to_value(&Id { repo: r.repo, quant: r.quant }).unwrap_or(JsValue::UNDEFINED)
        }
        _ => JsValue::UNDEFINED,
    }
}

/// The files to fetch for `spec`, given every path the repo lists.
#[wasm_bindgen(js_name = chooseRepoFiles)]
pub fn choose_repo_files(spec: &str, paths: Vec<String>) -> Result<JsValue, JsValue> {
    let repo = RepoSpec::parse(spec).ok_or_else(|| arg("model", format!("`{spec}` is not a repo id (owner/name[:QUANT])")))?;
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let choice = match choose(spec, &repo, &paths).map_err(to_js)? {
        Wanted::Gguf(f) => Choice { repo: repo.repo, gguf: Some(f), files: vec![] },
        Wanted::Folder(files) => Choice { repo: repo.repo, gguf: None, files },
    };
    serde_wasm_bindgen::to_value(&choice).map_err(|e| arg("model", e))
}

/// The error for a failed hub request (`file` undefined: the repo's file list).
#[wasm_bindgen(js_name = hubHttpError)]
pub fn hub_http_error(spec: &str, file: Option<String>, status: u16, endpoint: &str) -> JsValue {
    let repo = RepoSpec::parse(spec).unwrap_or(RepoSpec { repo: spec.to_string(), quant: None });
    to_js(web_http_error(spec, &repo, file.as_deref(), status, endpoint))
}
