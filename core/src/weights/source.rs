//! Open a model path (a Hugging Face folder or a `.gguf` file) into its config and weights.

use super::gguf::GgufFile;
use super::gptq::{GptqConfig, GptqFiles};
use super::safetensors::{SafetensorsFiles, no_weights_message};
use super::{RopeStyle, TensorId, WeightData};
use crate::config::HfConfig;
use crate::{Config, Error, Result};
use std::path::{Path, PathBuf};

pub struct ModelFiles {
    pub path: PathBuf,
    pub config: Config,
    pub rope_style: RopeStyle,
    kind: Kind,
}

enum Kind {
    Safetensors(SafetensorsFiles),
    Gguf(GgufFile),
    /// A safetensors folder with GPTQ 4-bit layers, repacked as they are requested.
    Gptq(GptqFiles),
}

impl ModelFiles {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::load(path, "no such file or directory"));
        }
        if path.is_dir() {
            let cfg_path = path.join("config.json");
            if !cfg_path.exists() {
                return Err(Error::load(
                    path,
                    "not a model folder: config.json is missing",
                ));
            }
            let config = HfConfig::from_file(&cfg_path)?;
            let has_st = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"));
            if !has_st {
                return Err(Error::load(path, no_weights_message(path)));
            }
            let files = SafetensorsFiles::open(path)?;
            let kind = match GptqConfig::find(path, &files)? {
                Some(quant) => Kind::Gptq(GptqFiles::open(path, files, quant, &config)?),
                None => Kind::Safetensors(files),
            };
            return Ok(ModelFiles {
                path: path.to_path_buf(),
                config,
                rope_style: RopeStyle::Half,
                kind,
            });
        }
        if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let file = GgufFile::open(path)?;
            let config = file.config()?;
            return Ok(ModelFiles {
                path: path.to_path_buf(),
                config,
                rope_style: file.rope_style(),
                kind: Kind::Gguf(file),
            });
        }
        let name = path.to_string_lossy();
        if name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth") {
            return Err(Error::load(
                path,
                no_weights_message(path.parent().unwrap_or(Path::new("."))),
            ));
        }
        Err(Error::load(
            path,
            "expected a model folder (config.json + *.safetensors) or a .gguf file",
        ))
    }

    /// The folder holding tokenizer files, if any.
    pub fn dir(&self) -> Option<&Path> {
        if self.path.is_dir() {
            Some(&self.path)
        } else {
            None
        }
    }

    /// The parsed GGUF file (metadata, vocabulary, chat template), for `.gguf` models.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.kind {
            Kind::Gguf(f) => Some(f),
            _ => None,
        }
    }

    /// The GPTQ side of a GPTQ folder (its quantization config), if this is one.
    pub fn gptq(&self) -> Option<&GptqFiles> {
        match &self.kind {
            Kind::Gptq(g) => Some(g),
            _ => None,
        }
    }

    /// One tensor, as stored (GPTQ layers repacked), checked against the config's shape.
    pub fn weight(&self, id: TensorId) -> Result<WeightData> {
        match &self.kind {
            Kind::Safetensors(files) => float_weight(files, &self.path, id, &self.config),
            Kind::Gguf(file) => file.weight(id, &self.config),
            Kind::Gptq(g) => g.weight(id),
        }
    }

    /// Bytes of every tensor the model needs, for progress bars and memory checks.
    pub fn total_bytes(&self) -> usize {
        let ids = TensorId::all(&self.config);
        match &self.kind {
            // sizes from the tensor infos, without repacking
            Kind::Gptq(g) => ids.iter().filter_map(|id| g.weight_bytes(*id)).sum(),
            _ => ids
                .iter()
                .filter_map(|id| self.weight(*id).ok())
                .map(|w| w.bytes.len())
                .sum(),
        }
    }
}

/// Tensor `id` of a safetensors folder as stored (f32, f16 or bf16), checked against the
/// config's shape.
pub(crate) fn float_weight(
    files: &SafetensorsFiles,
    dir: &Path,
    id: TensorId,
    config: &Config,
) -> Result<WeightData> {
    let name = format!("{}.weight", id.hf_name());
    let t = files.get(&name).ok_or_else(|| {
        let hint = if id == TensorId::Output {
            " (or set tie_word_embeddings)"
        } else {
            ""
        };
        Error::load(dir, format!("tensor `{name}` is missing{hint}"))
    })?;
    t.to_weight(id, config)
}

impl super::builder::WeightSource for ModelFiles {
    fn config(&self) -> &Config {
        &self.config
    }
    fn rope_style(&self) -> RopeStyle {
        self.rope_style
    }
    fn weight(&mut self, id: TensorId) -> Result<WeightData> {
        ModelFiles::weight(self, id)
    }
}
