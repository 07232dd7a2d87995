//! Open a model path (a Hugging Face folder or a `.gguf` file) into its config and weights.

use super::gguf::GgufFile;
use super::safetensors::{SafetensorsFiles, no_weights_message};
use super::{Blob, RopeStyle, TensorId, WeightData, WeightFormat};
use crate::config::HfConfig;
use crate::{Config, Error, Result};
use safetensors::Dtype;
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
}

impl ModelFiles {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::load(path, "no such file or directory"));
        }
        if path.is_dir() {
            let cfg_path = path.join("config.json");
            if !cfg_path.exists() {
                return Err(Error::load(path, "not a model folder: config.json is missing"));
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
            return Ok(ModelFiles {
                path: path.to_path_buf(),
                config,
                rope_style: RopeStyle::Half,
                kind: Kind::Safetensors(files),
            });
        }
        if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
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
            return Err(Error::load(path, no_weights_message(path.parent().unwrap_or(Path::new(".")))));
        }
        Err(Error::load(path, "expected a model folder (config.json + *.safetensors) or a .gguf file"))
    }

    /// The folder holding tokenizer files, if any.
    pub fn dir(&self) -> Option<&Path> {
        if self.path.is_dir() { Some(&self.path) } else { None }
    }

    /// The parsed GGUF file (metadata, vocabulary, chat template), for `.gguf` models.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.kind {
            Kind::Gguf(f) => Some(f),
            _ => None,
        }
    }

    /// One tensor, as stored, checked against the config's shape.
    pub fn weight(&self, id: TensorId) -> Result<WeightData> {
        let [rows, cols] = id.expected_shape(&self.config);
        match &self.kind {
            Kind::Safetensors(files) => {
                let name = format!("{}.weight", id.hf_name());
                let t = files.get(&name).ok_or_else(|| {
                    let hint = if id == TensorId::Output { " (or set tie_word_embeddings)" } else { "" };
                    Error::load(&self.path, format!("tensor `{name}` is missing{hint}"))
                })?;
                let format = match t.dtype {
                    Dtype::F32 => WeightFormat::F32,
                    Dtype::F16 => WeightFormat::F16,
                    Dtype::BF16 => WeightFormat::BF16,
                    other => {
                        return Err(Error::load(&t.file, format!("tensor `{name}` has unsupported dtype {other:?}")));
                    }
                };
                let shape_ok = if id.is_vector() { t.shape == [cols] } else { t.shape == [rows, cols] };
                if !shape_ok {
                    let want = if id.is_vector() { format!("[{cols}]") } else { format!("[{rows}, {cols}]") };
                    return Err(Error::load(
                        &t.file,
                        format!("tensor `{name}` has shape {:?} but config.json implies {want}", t.shape),
                    ));
                }
                WeightData::new(format, rows, cols, t.bytes.clone(), &name)
            }
            Kind::Gguf(file) => file.weight(id, &self.config),
        }
    }

    /// Bytes of every tensor the model needs, for progress bars and memory checks.
    pub fn total_bytes(&self) -> usize {
        TensorId::all(&self.config).iter().filter_map(|id| self.weight(*id).ok()).map(|w| w.bytes.len()).sum()
    }
}

impl WeightData {
    /// A copy of this tensor in another format (used for norms, which run in f32).
    pub fn converted(&self, format: WeightFormat) -> WeightData {
        if self.format == format {
            return self.clone();
        }
        let f = self.to_f32();
        WeightData {
            format,
            rows: self.rows,
            cols: self.cols,
            bytes: Blob::from_vec(crate::quant::quantize(format, &f)),
        }
    }
}

impl crate::model::WeightSource for ModelFiles {
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
