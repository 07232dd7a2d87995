//! Writing a GGUF v3 file. [`GgufWriter`] holds the metadata in the order it was set; the
//! tensor infos ([`GgufTensorSpec`]: name, dims, type, byte length) are given up front and
//! checked before anything is written, then each tensor's bytes are asked for one at a time,
//! so a whole model is never held in memory. [`GgufWriter::write_file`] writes to a
//! temporary name and renames, so a failure never leaves a partial file behind. The keys of
//! a llama model come from [`GgufWriter::llama`] (in `llama.rs`).

use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufArray, GgufValue, MAX_DIMS, MAX_TENSOR_NAME, align_up,
    tensor_n_bytes,
};
use crate::weights::WeightFormat;
use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

/// One tensor to write: name, GGUF dims (`[cols, rows]` for a matrix), type and size.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub n_bytes: u64,
}

impl GgufTensorSpec {
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ggml_type: u32, n_bytes: u64) -> Self {
        GgufTensorSpec {
            name: name.into(),
            dims,
            ggml_type,
            n_bytes,
        }
    }
}

/// Builds a GGUF v3 file: metadata first, then tensors streamed one at a time.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    kv: Vec<(String, GgufValue)>,
}

// `pub(super)` with `put_value`: the reader's tests build malformed files with them.
pub(super) fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => each!(v),
        GgufArray::U16(v) => each!(v),
        GgufArray::I16(v) => each!(v),
        GgufArray::U32(v) => each!(v),
        GgufArray::I32(v) => each!(v),
        GgufArray::F32(v) => each!(v),
        GgufArray::Bool(v) => out.extend(v.iter().map(|b| *b as u8)),
        GgufArray::String(v) => v.iter().for_each(|s| put_string(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        GgufArray::U64(v) => each!(v),
        GgufArray::I64(v) => each!(v),
        GgufArray::F64(v) => each!(v),
    }
}

pub(super) fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    out.extend_from_slice(&v.ty().id().to_le_bytes());
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(a) => put_array(out, a),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key`, replacing an earlier value (keys keep their first position).
    /// `general.alignment` is always written as 32, whatever is set here.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<GgufValue>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.kv.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.kv.push((key, value)),
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<GgufValue> {
        let i = self.kv.iter().position(|(k, _)| k == key)?;
        Some(self.kv.remove(i).1)
    }

    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.kv
    }

    /// Header, metadata and tensor infos, padded to the alignment; checks every spec.
    fn header(&self, tensors: &[GgufTensorSpec], path: &Path) -> Result<Vec<u8>> {
        let bad = |m: String| Error::load(path, m);
        let align = DEFAULT_ALIGNMENT as u64;
        let mut names = std::collections::HashSet::new();
        for t in tensors {
            if t.name.len() > MAX_TENSOR_NAME {
                return Err(bad(format!(
                    "tensor name `{}` is longer than {MAX_TENSOR_NAME} bytes",
                    t.name
                )));
            }
            if !names.insert(t.name.as_str()) {
                return Err(bad(format!("tensor `{}` is listed twice", t.name)));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
                return Err(bad(format!(
                    "tensor `{}` has {} dims (1 to {MAX_DIMS} allowed)",
                    t.name,
                    t.dims.len()
                )));
            }
            let want = tensor_n_bytes(&t.dims, t.ggml_type)
                .map_err(|m| bad(format!("tensor `{}` {m}", t.name)))?;
            if want != t.n_bytes {
                return Err(bad(format!(
                    "tensor `{}`: {} dims {:?} take {want} bytes, not {}",
                    t.name,
                    WeightFormat::ggml_type_name(t.ggml_type),
                    t.dims,
                    t.n_bytes
                )));
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        let kv: Vec<&(String, GgufValue)> = self
            .kv
            .iter()
            .filter(|(k, _)| k != "general.alignment")
            .collect();
        out.extend_from_slice(&(kv.len() as u64 + 1).to_le_bytes());
        for (k, v) in kv {
            put_string(&mut out, k);
            put_value(&mut out, v);
        }
        put_string(&mut out, "general.alignment");
        put_value(&mut out, &GgufValue::U32(DEFAULT_ALIGNMENT as u32));
        let mut offset: u64 = 0;
        for t in tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(t.n_bytes)
                .and_then(|o| align_up(o, align))
                .ok_or_else(|| bad("tensor data larger than 2^64 bytes".into()))?;
        }
        out.resize(align_up(out.len() as u64, align).unwrap_or(0) as usize, 0);
        Ok(out)
    }

    /// Write the whole file to `out`: metadata, `tensors`' infos, then for each tensor in
    /// order the bytes `data(index, spec)` returns (exactly `spec.n_bytes` of them).
    /// `path` names the output in errors. Returns the bytes written.
    pub fn write_to<W, B, F>(
        &self,
        out: &mut W,
        path: &Path,
        tensors: &[GgufTensorSpec],
        mut data: F,
    ) -> Result<u64>
    where
        W: Write,
        B: AsRef<[u8]>,
        F: FnMut(usize, &GgufTensorSpec) -> Result<B>,
    {
        let header = self.header(tensors, path)?;
        let io = |e| Error::io(path, e);
        out.write_all(&header).map_err(io)?;
        let mut pos = header.len() as u64;
        let zeros = [0u8; DEFAULT_ALIGNMENT];
        for (i, t) in tensors.iter().enumerate() {
            let b = data(i, t)?;
            let b = b.as_ref();
            if b.len() as u64 != t.n_bytes {
                return Err(Error::load(
                    path,
                    format!(
                        "tensor `{}`: got {} bytes of data, its info says {}",
                        t.name,
                        b.len(),
                        t.n_bytes
                    ),
                ));
            }
            out.write_all(b).map_err(io)?;
            pos += t.n_bytes;
            let pad = (align_up(pos, DEFAULT_ALIGNMENT as u64).unwrap_or(pos) - pos) as usize;
            out.write_all(&zeros[..pad]).map_err(io)?;
            pos += pad as u64;
        }
        out.flush().map_err(io)?;
        Ok(pos)
    }

    /// [`write_to`](Self::write_to) a file: written to a temporary name in the same folder,
    /// synced, then renamed to `path`, so a failure never leaves a partial `path` behind.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_file<B, F>(&self, path: &Path, tensors: &[GgufTensorSpec], data: F) -> Result<u64>
    where
        B: AsRef<[u8]>,
        F: FnMut(usize, &GgufTensorSpec) -> Result<B>,
    {
        // Validate before creating anything.
        self.header(tensors, path)?;
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::load(path, "output path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let tmp = path.with_file_name(format!(".{file_name}.{}.partial", std::process::id()));
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            let n = self.write_to(&mut w, path, tensors, data)?;
            let file = w
                .into_inner()
                .map_err(|e| Error::io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            drop(file);
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::weights::gguf::fixtures::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = TempDir::new("failwrite");
        let (w, specs, datas) = tiny_model();
        let path = dir.0.join("out.gguf");
        let r = w.write_file(&path, &specs, |i, s| {
            if i == 3 {
                Err(Error::load(&s.name, "source went away"))
            } else {
                Ok(datas[i].clone())
            }
        });
        assert!(r.unwrap_err().to_string().contains("source went away"));
        // Wrong byte counts are refused too.
        let r = w.write_file(&path, &specs, |i, _| Ok(datas[i][1..].to_vec()));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("token_embd.weight") && e.contains("bytes"),
            "{e}"
        );
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(&dir.0).unwrap().count(),
            0,
            "temporary files were left behind"
        );
        // A bad spec is refused before any file is created.
        let mut bad = specs.clone();
        bad[0].n_bytes += 1;
        let e = w
            .write_file(&path, &bad, |i, _| Ok(datas[i].clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_embd.weight"), "{e}");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    }
}
