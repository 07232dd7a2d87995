//! Hugging Face safetensors checkpoints, single-file or sharded, memory-mapped.

use super::{Blob, TensorId, WeightData, WeightFormat};
use crate::Config;
use crate::{Error, Result};
use safetensors::Dtype;
#[cfg(not(target_arch = "wasm32"))]
use safetensors::SafeTensors;
#[cfg(not(target_arch = "wasm32"))]
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A tensor as stored in a safetensors file.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Blob,
    pub file: PathBuf,
}

impl RawTensor {
    /// This tensor as weight `id` (f32, f16 or bf16), checked against the config's shape.
    pub fn to_weight(&self, id: TensorId, config: &Config) -> Result<WeightData> {
        let [rows, cols] = id.expected_shape(config);
        let name = format!("{}.weight", id.hf_name());
        let format = match self.dtype {
            Dtype::F32 => WeightFormat::F32,
            Dtype::F16 => WeightFormat::F16,
            Dtype::BF16 => WeightFormat::BF16,
            other => {
                return Err(Error::load(
                    &self.file,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ));
            }
        };
        let shape_ok = if id.is_vector() {
            self.shape == [cols]
        } else {
            self.shape == [rows, cols]
        };
        if !shape_ok {
            let want = if id.is_vector() {
                format!("[{cols}]")
            } else {
                format!("[{rows}, {cols}]")
            };
            return Err(Error::load(
                &self.file,
                format!(
                    "tensor `{name}` has shape {:?} but config.json implies {want}",
                    self.shape
                ),
            ));
        }
        WeightData::new(format, rows, cols, self.bytes.clone(), &name)
    }
}

/// The tensor table of a safetensors header: (name, dtype, shape, byte range in the data
/// section). `header` is the JSON after the 8-byte length prefix.
pub fn parse_header(
    header: &[u8],
    origin: &Path,
) -> Result<Vec<(String, Dtype, Vec<usize>, usize, usize)>> {
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: Dtype,
        shape: Vec<usize>,
        data_offsets: (usize, usize),
    }
    let map: std::collections::HashMap<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| Error::load(origin, format!("not a valid safetensors header: {e}")))?;
    let mut out = vec![];
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let i: Info = serde_json::from_value(v)
            .map_err(|e| Error::load(origin, format!("safetensors header entry `{name}`: {e}")))?;
        if i.data_offsets.1 < i.data_offsets.0 {
            return Err(Error::load(
                origin,
                format!("tensor `{name}` has a negative byte range"),
            ));
        }
        out.push((name, i.dtype, i.shape, i.data_offsets.0, i.data_offsets.1));
    }
    out.sort_by_key(|t| t.3);
    Ok(out)
}

#[cfg(not(target_arch = "wasm32"))]
pub struct SafetensorsFiles {
    tensors: HashMap<String, RawTensor>,
}

/// Map a whole file read-only. The map lives as long as any `Blob` cut from it.
#[cfg(not(target_arch = "wasm32"))]
pub fn map_file(path: &Path) -> Result<Blob> {
    let file = crate::files::open_regular(path)?;
    // SAFETY: the map is read-only; a file changed underneath a running model is outside
    // what any mmap-based loader (llama.cpp, candle, safetensors) can defend against.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Blob::from_map(map))
}

#[cfg(not(target_arch = "wasm32"))]
impl SafetensorsFiles {
    /// Open `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = crate::files::read_text(&index, crate::files::JSON_CAP)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::load(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::load(&index, "missing `weight_map`"))?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::load(dir, no_weights_message(dir)));
            }
            found
        };
        let mut tensors = HashMap::new();
        for file in files {
            if !file.exists() {
                return Err(Error::load(
                    &file,
                    "shard listed in model.safetensors.index.json is missing",
                ));
            }
            let blob = map_file(&file)?;
            let (header_len, meta) = SafeTensors::read_metadata(&blob).map_err(|e| {
                Error::load(
                    &file,
                    format!("not a valid safetensors file ({e}); is it truncated?"),
                )
            })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let raw = RawTensor {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: blob.slice(base + s, e - s),
                    file: file.clone(),
                };
                tensors.insert(name, raw);
            }
        }
        Ok(SafetensorsFiles { tensors })
    }

    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
}

/// What to tell a user whose folder has no safetensors: pickles are refused, not loaded.
pub fn no_weights_message(dir: &Path) -> String {
    let pickles: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth"))
        .collect();
    if pickles.is_empty() {
        "no model.safetensors (or sharded *.safetensors with model.safetensors.index.json) and no .gguf given".into()
    } else {
        format!(
            "found only PyTorch pickle checkpoints ({}). yangtuo never unpickles files, since loading a \
             pickle can run arbitrary code. Convert them once with: python -c \"from transformers import \
             AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('{}').save_pretrained('{}-st', \
             safe_serialization=True)\"",
            pickles.join(", "),
            dir.display(),
            dir.display()
        )
    }
}
