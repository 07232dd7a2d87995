//! Loading a model from byte streams (a browser download), holding one tensor at a time.
//!
//! Files arrive front to back. Each file's header is parsed once enough bytes are in; after
//! that every tensor is handed to the `ModelBuilder` (and so to the GPU) as soon as its last
//! byte arrives, and its bytes are dropped. A 7B Q4 model never sits whole in wasm memory.

use super::builder::ModelBuilder;
use super::gguf::GgufFile;
use super::safetensors::{RawTensor, parse_header};
use super::{Blob, TensorId};
use crate::backend::Backend;
use crate::model::Model;
use crate::{Config, Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A GGUF header holds the vocabulary; grow the buffer to at most this before giving up.
const MAX_HEADER: usize = 256 << 20;

enum FileKind {
    Gguf,
    Safetensors,
}

/// One tensor of the current file: where it is and what it becomes.
struct Item {
    start: u64,
    len: u64,
    name: String,
    id: Option<TensorId>,
    raw: Option<(safetensors::Dtype, Vec<usize>)>,
}

pub struct StreamLoader<B: Backend> {
    backend: Option<B>,
    builder: Option<ModelBuilder<B>>,
    config: Option<Config>,
    gguf: Option<GgufFile>,
    // the file being streamed
    kind: Option<FileKind>,
    name: PathBuf,
    file_len: u64,
    /// Bytes received and not yet consumed; `buf[0]` is at file offset `pos`.
    buf: Vec<u8>,
    pos: u64,
    items: Vec<Item>,
    next: usize,
    header_done: bool,
    pub loaded_bytes: u64,
    pub current: String,
}

impl<B: Backend> StreamLoader<B> {
    /// `config` comes from config.json for safetensors models; GGUF files carry their own.
    pub fn new(backend: B, config: Option<Config>) -> Self {
        StreamLoader {
            backend: Some(backend),
            builder: None,
            config,
            gguf: None,
            kind: None,
            name: PathBuf::new(),
            file_len: 0,
            buf: vec![],
            pos: 0,
            items: vec![],
            next: 0,
            header_done: false,
            loaded_bytes: 0,
            current: String::new(),
        }
    }

    /// The GGUF header (vocabulary, chat template), once the last file is in: taken for
    /// `Llama::from_parts` before `finish` consumes the loader.
    pub fn take_gguf(&mut self) -> Option<GgufFile> {
        self.gguf.take()
    }

    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// Start the next file, `name` (ending in .gguf or .safetensors) of `len` bytes.
    pub fn begin_file(&mut self, name: &str, len: u64) -> Result<()> {
        if self.kind.is_some() {
            return Err(Error::arg(
                "file",
                format!("{} is still open", self.name.display()),
            ));
        }
        let lower = name.to_ascii_lowercase();
        let kind = if lower.ends_with(".gguf") {
            FileKind::Gguf
        } else if lower.ends_with(".safetensors") {
            if self.config.is_none() {
                return Err(Error::load(
                    name,
                    "safetensors weights need config.json first",
                ));
            }
            FileKind::Safetensors
        } else {
            return Err(Error::load(name, "expected a .gguf or .safetensors file"));
        };
        self.kind = Some(kind);
        self.name = PathBuf::from(name);
        self.file_len = len;
        self.buf.clear();
        self.pos = 0;
        self.items.clear();
        self.next = 0;
        self.header_done = false;
        Ok(())
    }

    /// Feed the next bytes of the current file.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.kind.is_none() {
            return Err(Error::arg("file", "push before begin_file"));
        }
        if self.pos + (self.buf.len() + chunk.len()) as u64 > self.file_len {
            return Err(Error::load(
                &self.name,
                format!("more bytes than the announced {}", self.file_len),
            ));
        }
        self.buf.extend_from_slice(chunk);
        if !self.header_done {
            self.try_header()?;
        }
        if self.header_done {
            self.drain_tensors()?;
        }
        Ok(())
    }

    /// The current file is complete.
    pub fn end_file(&mut self) -> Result<()> {
        let got = self.pos + self.buf.len() as u64;
        if got != self.file_len || !self.header_done || self.next < self.items.len() {
            return Err(Error::load(
                &self.name,
                format!(
                    "truncated download: {got} of {} bytes arrived",
                    self.file_len
                ),
            ));
        }
        self.kind = None;
        self.buf = vec![];
        Ok(())
    }

    fn try_header(&mut self) -> Result<()> {
        let have = self.buf.len();
        let all_in = self.pos + have as u64 == self.file_len;
        match self.kind {
            Some(FileKind::Gguf) => {
                // parse once a generous prefix is in; retry with more on a short read
                let want = (1usize << 20).min(self.file_len as usize);
                if have < want && !all_in {
                    return Ok(());
                }
                match GgufFile::parse_header(
                    Blob::from_vec(self.buf.clone()),
                    self.file_len,
                    &self.name,
                ) {
                    Ok(g) => {
                        let config = g.config()?;
                        let by_name: HashMap<String, TensorId> = TensorId::all(&config)
                            .into_iter()
                            .map(|id| (format!("{}.weight", id.gguf_name()), id))
                            .collect();
                        let data = g.data_offset() as u64;
                        self.items = g
                            .tensors()
                            .iter()
                            .map(|t| Item {
                                start: data + t.offset,
                                len: t.n_bytes.unwrap_or(0),
                                name: t.name.clone(),
                                id: by_name.get(&t.name).copied(),
                                raw: None,
                            })
                            .collect();
                        self.items.sort_by_key(|i| i.start);
                        let style = g.rope_style();
                        self.start_builder(config, style)?;
                        self.gguf = Some(g);
                        self.header_done = true;
                    }
                    Err(e) if !all_in && have < MAX_HEADER => {
                        log::debug!("GGUF header needs more than {have} bytes ({e})");
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(FileKind::Safetensors) => {
                if have < 8 {
                    return Ok(());
                }
                let n = u64::from_le_bytes(self.buf[..8].try_into().expect("8 bytes")) as usize;
                if n > MAX_HEADER || 8 + n as u64 > self.file_len {
                    return Err(Error::load(
                        &self.name,
                        "not a valid safetensors file (header length)",
                    ));
                }
                if have < 8 + n {
                    return Ok(());
                }
                let config = self.config.clone().expect("checked in begin_file");
                let by_name: HashMap<String, TensorId> = TensorId::all(&config)
                    .into_iter()
                    .map(|id| (format!("{}.weight", id.hf_name()), id))
                    .collect();
                let base = 8 + n as u64;
                self.items = parse_header(&self.buf[8..8 + n], &self.name)?
                    .into_iter()
                    .map(|(name, dtype, shape, s, e)| Item {
                        start: base + s as u64,
                        len: (e - s) as u64,
                        id: by_name.get(&name).copied(),
                        name,
                        raw: Some((dtype, shape)),
                    })
                    .collect();
                if let Some(last) = self.items.last() {
                    if last.start + last.len != self.file_len {
                        return Err(Error::load(
                            &self.name,
                            "safetensors header does not match the file size",
                        ));
                    }
                }
                if self.builder.is_none() {
                    self.start_builder(config, super::RopeStyle::Half)?;
                }
                self.header_done = true;
            }
            None => {}
        }
        Ok(())
    }

    fn start_builder(&mut self, config: Config, style: super::RopeStyle) -> Result<()> {
        if self.builder.is_some() {
            return Err(Error::load(
                &self.name,
                "a GGUF model is one file; got a second model file",
            ));
        }
        let backend = self
            .backend
            .take()
            .expect("backend present until the builder exists");
        self.config = Some(config.clone());
        self.builder = Some(ModelBuilder::new(config, style, backend));
        Ok(())
    }

    /// Hand every tensor whose bytes are all in to the builder, then drop consumed bytes.
    fn drain_tensors(&mut self) -> Result<()> {
        let end = self.pos + self.buf.len() as u64;
        let mut consumed = 0u64;
        while let Some(item) = self.items.get(self.next) {
            self.current = item.name.clone();
            if item.start + item.len > end {
                consumed = consumed.max(
                    item.start
                        .saturating_sub(self.pos)
                        .min(self.buf.len() as u64),
                );
                break;
            }
            let off = (item.start - self.pos) as usize;
            let bytes = Blob::from_vec(self.buf[off..off + item.len as usize].to_vec());
            if let Some(id) = item.id {
                let config = self.config.as_ref().expect("set with the header");
                let w = match (&item.raw, &self.gguf) {
                    (Some((dtype, shape)), _) => RawTensor {
                        dtype: *dtype,
                        shape: shape.clone(),
                        bytes,
                        file: self.name.clone(),
                    }
                    .to_weight(id, config)?,
                    (None, Some(g)) => g.weight_from(id, config, Some(bytes))?,
                    (None, None) => unreachable!("GGUF items come with the GGUF header"),
                };
                self.builder
                    .as_mut()
                    .expect("set with the header")
                    .add(id, &w)?;
            }
            self.loaded_bytes += item.len;
            consumed = item.start + item.len - self.pos;
            self.next += 1;
        }
        if self.next == self.items.len() {
            consumed = self.buf.len() as u64;
        }
        self.buf.drain(..consumed as usize);
        self.pos += consumed;
        Ok(())
    }

    /// Every file is in: the model, ready to run.
    pub fn finish(self) -> Result<Model<B>> {
        if self.kind.is_some() {
            return Err(Error::load(&self.name, "the last file was not completed"));
        }
        let b = self
            .builder
            .ok_or_else(|| Error::load(Path::new("model"), "no weights were streamed"))?;
        b.finish()
    }
}
