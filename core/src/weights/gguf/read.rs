//! Parsing a GGUF file into a [`GgufFile`]: header, metadata and tensor infos, each checked
//! as it is read (counts and lengths against the bytes that remain, tensor extents against
//! the file's length), so corrupt input fails with a message naming what was being read.
//! Tensor bytes stay in the blob the file was parsed from. What the keys mean for a llama
//! model is in `llama.rs` and `vocab.rs`.

use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufArray, GgufType, GgufValue, MAX_DIMS, align_up,
    ggml_block_size, tensor_n_bytes,
};
use crate::error::printable;
use crate::weights::{Blob, WeightFormat};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Deepest nesting of arrays inside arrays the reader accepts.
const MAX_ARRAY_DEPTH: usize = 8;

/// A tensor as described in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// `[ne0, ne1, ...]`: `ne0` is the contiguous (column) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Relative to the start of the data section.
    pub offset: u64,
    /// Size in bytes; `None` for a type id ggml does not define (not checked against the file).
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    /// `WeightFormat` of this tensor, if yangtuo computes with its type.
    pub fn format(&self) -> Option<WeightFormat> {
        WeightFormat::from_ggml_type(self.ggml_type)
    }

    pub fn type_name(&self) -> String {
        WeightFormat::ggml_type_name(self.ggml_type)
    }
}

/// A parsed GGUF file. Tensor bytes stay in the blob it was parsed from.
pub struct GgufFile {
    path: PathBuf,
    blob: Blob,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::load(self.path, msg)
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let rem = self.remaining();
        if n > rem as u64 {
            return Err(self.err(format!(
                "truncated GGUF file: it ends while reading {what} (at byte {} of {}, {} more bytes needed); \
                 the file is incomplete or corrupt",
                self.pos,
                self.buf.len(),
                n - rem as u64
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated or corrupt GGUF file: {what} is a string of {len} bytes, but only {} bytes of the \
                 file remain",
                self.remaining()
            )));
        }
        let b = self.take(len, what)?;
        // GGUF strings are UTF-8; a stray invalid byte should not make a model unusable.
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// `n` items of at least `min_each` bytes each must fit in what remains.
    fn count(&self, n: u64, min_each: u64, what: &str, unit: &str) -> Result<usize> {
        match n.checked_mul(min_each) {
            Some(need) if need <= self.remaining() as u64 => Ok(n as usize),
            _ => Err(self.err(format!(
                "truncated or corrupt GGUF file: {what} claims {n} {unit}, which cannot fit in the {} bytes \
                 that remain",
                self.remaining()
            ))),
        }
    }

    fn value_type(&mut self, what: &str) -> Result<GgufType> {
        let id = self.u32(what)?;
        GgufType::from_id(id).ok_or_else(|| {
            self.err(format!(
                "corrupt GGUF file: {what} has unknown value type {id}"
            ))
        })
    }

    fn value(&mut self, ty: GgufType, what: &str) -> Result<GgufValue> {
        Ok(match ty {
            GgufType::U8 => GgufValue::U8(self.fixed::<1>(what)?[0]),
            GgufType::I8 => GgufValue::I8(self.fixed::<1>(what)?[0] as i8),
            GgufType::U16 => GgufValue::U16(u16::from_le_bytes(self.fixed(what)?)),
            GgufType::I16 => GgufValue::I16(i16::from_le_bytes(self.fixed(what)?)),
            GgufType::U32 => GgufValue::U32(self.u32(what)?),
            GgufType::I32 => GgufValue::I32(i32::from_le_bytes(self.fixed(what)?)),
            GgufType::F32 => GgufValue::F32(f32::from_le_bytes(self.fixed(what)?)),
            GgufType::Bool => GgufValue::Bool(self.fixed::<1>(what)?[0] != 0),
            GgufType::String => GgufValue::String(self.string(what)?),
            GgufType::Array => GgufValue::Array(self.array(what, 0)?),
            GgufType::U64 => GgufValue::U64(self.u64(what)?),
            GgufType::I64 => GgufValue::I64(i64::from_le_bytes(self.fixed(what)?)),
            GgufType::F64 => GgufValue::F64(f64::from_le_bytes(self.fixed(what)?)),
        })
    }

    /// An array: element type, count, elements.
    fn array(&mut self, what: &str, depth: usize) -> Result<GgufArray> {
        let et = self.value_type(what)?;
        let n = self.u64(what)?;
        let n = self.count(n, et.min_size(), what, "array elements")?;
        macro_rules! scalars {
            ($t:ty, $v:ident) => {{
                const S: usize = std::mem::size_of::<$t>();
                let b = self.take((n * S) as u64, what)?;
                GgufArray::$v(
                    b.chunks_exact(S)
                        .map(|c| {
                            let mut a = [0u8; S];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match et {
            GgufType::U8 => GgufArray::U8(self.take(n as u64, what)?.to_vec()),
            GgufType::I8 => GgufArray::I8(
                self.take(n as u64, what)?
                    .iter()
                    .map(|b| *b as i8)
                    .collect(),
            ),
            GgufType::Bool => {
                GgufArray::Bool(self.take(n as u64, what)?.iter().map(|b| *b != 0).collect())
            }
            GgufType::U16 => scalars!(u16, U16),
            GgufType::I16 => scalars!(i16, I16),
            GgufType::U32 => scalars!(u32, U32),
            GgufType::I32 => scalars!(i32, I32),
            GgufType::F32 => scalars!(f32, F32),
            GgufType::U64 => scalars!(u64, U64),
            GgufType::I64 => scalars!(i64, I64),
            GgufType::F64 => scalars!(f64, F64),
            GgufType::String => {
                // `count` bounded n by the remaining bytes / 8.
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                GgufArray::String(v)
            }
            GgufType::Array => {
                if depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "corrupt GGUF file: {what} nests arrays more than {MAX_ARRAY_DEPTH} deep"
                    )));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array(what, depth + 1)?);
                }
                GgufArray::Array(v)
            }
        })
    }
}

impl GgufFile {
    /// Memory-map and parse a `.gguf` file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Self> {
        let blob = crate::weights::safetensors::map_file(path)?;
        Self::parse(blob, path)
    }

    /// Parse a whole GGUF file held in `blob`; `path` names it in errors.
    pub fn parse(blob: Blob, path: &Path) -> Result<Self> {
        let len = blob.len() as u64;
        Self::parse_header(blob, len, path)
    }

    /// Parse the header at the start of a file of `file_len` bytes of which `blob` holds a
    /// prefix (a browser streaming the file). Tensor offsets are checked against `file_len`;
    /// `tensor_bytes` works only for tensors inside the prefix.
    pub fn parse_header(blob: Blob, file_len: u64, path: &Path) -> Result<Self> {
        let buf: &[u8] = &blob;
        let mut r = Reader { buf, pos: 0, path };
        if buf.len() < 4 || buf[..4] != GGUF_MAGIC {
            let head = &buf[..buf.len().min(4)];
            return Err(r.err(format!(
                "not a GGUF file: it starts with {:?} instead of \"GGUF\"",
                String::from_utf8_lossy(head)
            )));
        }
        r.pos = 4;
        let version = r.u32("the header (version)")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(r.err(
                    "GGUF version 1 is not supported (it predates llama.cpp's August 2023 format); \
                     re-convert the model with a current llama.cpp",
                ));
            }
            v if v & 0xFFFF == 0 && matches!(v.swap_bytes(), 2 | 3) => {
                return Err(r.err(
                    "this GGUF file is big-endian; yangtuo reads little-endian GGUF files only",
                ));
            }
            v => return Err(r.err(format!("unsupported GGUF version {v} (supported: 2 and 3)"))),
        }
        let n_tensors = r.u64("the header (tensor count)")?;
        let n_kv = r.u64("the header (metadata count)")?;
        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info
        // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        let n_kv = r.count(n_kv, 13, "the header", "metadata entries")?;
        let n_tensors = r.count(n_tensors, 24, "the header", "tensors")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&format!("the key of metadata entry {i}"))?;
            // keys and names are the file's: escaped and cut before any message shows them
            let shown = printable(&key, 120);
            let what = format!("metadata `{shown}`");
            let ty = r.value_type(&what)?;
            let value = r.value(ty, &what)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.err(format!(
                    "corrupt GGUF file: metadata key `{shown}` appears twice"
                )));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.get(
            meta_index
                .get("general.alignment")
                .copied()
                .unwrap_or(usize::MAX),
        ) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u32() {
                Some(a) if a != 0 && a.is_power_of_two() => a as usize,
                _ => {
                    return Err(r.err(format!(
                        "`general.alignment` must be a power of two (u32), found {v:?}"
                    )));
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor info {i}"))?;
            let shown = printable(&name, 120);
            let what = format!("the info of tensor `{shown}`");
            let n_dims = r.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(r.err(format!(
                    "corrupt GGUF file: tensor `{shown}` has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let ggml_type = r.u32(&what)?;
            let offset = r.u64(&what)?;
            let n_bytes = match tensor_n_bytes(&dims, ggml_type) {
                Ok(n) => Some(n),
                Err(_) if ggml_block_size(ggml_type).is_none() => None,
                Err(m) => return Err(r.err(format!("corrupt GGUF file: tensor `{shown}` {m}"))),
            };
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.err(format!("corrupt GGUF file: tensor `{shown}` appears twice")));
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_bytes,
            });
        }

        let data_offset = align_up(r.pos as u64, alignment as u64).unwrap_or(u64::MAX);
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes.unwrap_or(0)));
            if end.is_none_or(|e| e > file_len) {
                let size = t
                    .n_bytes
                    .map(|n| format!("{n} bytes"))
                    .unwrap_or_else(|| "its data".into());
                return Err(r.err(format!(
                    "truncated or corrupt GGUF file: tensor `{}` ({size} at offset {} of the data section, \
                     which starts at byte {data_offset}) runs past the end of the file ({file_len} bytes)",
                    printable(&t.name, 120),
                    t.offset
                )));
            }
        }
        // Every GGUF writer aligns each tensor and gives it bytes of its own: a file whose
        // tensors are misaligned or share bytes is corrupt, however consistent it looks.
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
        for t in &tensors {
            if t.offset % alignment as u64 != 0 {
                return Err(r.err(format!(
                    "corrupt GGUF file: tensor `{}` starts at offset {}, not a multiple of the alignment {alignment}",
                    printable(&t.name, 120),
                    t.offset
                )));
            }
            // within the file (checked above), so the sum cannot overflow
            spans.push((t.offset, t.offset + t.n_bytes.unwrap_or(0), &t.name));
        }
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(r.err(format!(
                "corrupt GGUF file: tensors `{}` and `{}` share bytes of the data section",
                printable(w[0].2, 120),
                printable(w[1].2, 120)
            )));
        }
        // The gap before the data is zero padding; anything else is tensor infos the header's
        // count left out (one short read the last info as data and gave NaN logits).
        let infos_end = r.pos;
        if let Some(gap) = usize::try_from(data_offset)
            .ok()
            .and_then(|d| buf.get(infos_end..d))
            && gap.iter().any(|b| *b != 0)
        {
            return Err(r.err(format!(
                "corrupt GGUF file: the {} bytes between the tensor infos and the data are not padding \
                 (does the header's tensor count, {n_tensors}, match the file?)",
                gap.len()
            )));
        }
        // Every tensor ends within the file, so with any tensor present data_offset fits too.
        let data_offset = data_offset.min(file_len) as usize;

        Ok(GgufFile {
            path: path.to_path_buf(),
            blob,
            version,
            alignment,
            data_offset,
            metadata,
            meta_index,
            tensors,
            tensor_index,
        })
    }

    pub(super) fn err(&self, msg: impl Into<String>) -> Error {
        Error::load(&self.path, msg)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|i| &self.metadata[*i].1)
    }

    /// An integer of any type that fits a u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|v| v.as_u32())
    }

    /// An F32 or F64.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(|v| v.as_f32())
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.as_bool())
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    pub fn get_array(&self, key: &str) -> Option<&GgufArray> {
        self.get(key).and_then(|v| v.as_array())
    }

    pub fn get_strings(&self, key: &str) -> Option<&[String]> {
        self.get_array(key).and_then(|a| a.as_strings())
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|i| &self.tensors[*i])
    }

    /// The stored bytes of tensor `name`, whatever its type (if ggml defines its size).
    pub fn tensor_bytes(&self, name: &str) -> Result<Blob> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        let n = t.n_bytes.ok_or_else(|| {
            self.err(format!(
                "tensor `{name}` has type {}, which yangtuo does not know",
                t.type_name()
            ))
        })?;
        // `parse` checked data_offset + offset + n <= file length; a header-only parse holds
        // a prefix of the file.
        let start = self.data_offset + t.offset as usize;
        if start + n as usize > self.blob.len() {
            return Err(self.err(format!("tensor `{name}` is not in the bytes read so far")));
        }
        Ok(self.blob.slice(start, n as usize))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::Rng;
    use crate::weights::TensorId;
    use crate::weights::gguf::fixtures::*;
    use crate::weights::gguf::write::{put_string, put_value};
    use crate::weights::gguf::{GgufWriter, tokenizer};

    #[test]
    fn bad_magic_and_versions() {
        let (bytes, _) = small_file();
        assert!(err_of(b"").contains("not a GGUF file"));
        assert!(err_of(b"GG").contains("not a GGUF file"));
        let mut b = bytes.clone();
        b[..4].copy_from_slice(b"GGML");
        assert!(err_of(&b).contains("not a GGUF file"));
        let e = err_of(b"{\"__metadata__\": {}}");
        assert!(
            e.contains("not a GGUF file") && e.starts_with("test.gguf: "),
            "{e}"
        );
        let version = |v: [u8; 4]| {
            let mut b = bytes.clone();
            b[4..8].copy_from_slice(&v);
            err_of(&b)
        };
        assert!(version(1u32.to_le_bytes()).contains("version 1 is not supported"));
        assert!(version(4u32.to_le_bytes()).contains("unsupported GGUF version 4"));
        assert!(version(3u32.to_be_bytes()).contains("big-endian"));
        // Version 2 has the same layout as 3.
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse(&b).unwrap().version(), 2);
    }

    #[test]
    fn truncated_anywhere_is_an_error() {
        let (bytes, specs) = small_file();
        let f = parse(&bytes).unwrap();
        let last = f.tensors().last().unwrap();
        let end = f.data_offset() + last.offset as usize + last.n_bytes.unwrap() as usize;
        assert_eq!(end, bytes.len());
        for cut in 0..end {
            assert!(
                parse(&bytes[..cut]).is_err(),
                "a file cut at byte {cut} parsed"
            );
        }
        // The messages say what was being read.
        let e = err_of(&bytes[..12]);
        assert!(e.contains("truncated") && e.contains("header"), "{e}");
        let key = bytes.windows(8).position(|w| w == b"test.str").unwrap();
        let e = err_of(&bytes[..key + 14]);
        assert!(
            e.contains("truncated") && e.contains("metadata `test.str`"),
            "{e}"
        );
        let tok = bytes.windows(6).position(|w| w == b"<0x0A>").unwrap();
        let e = err_of(&bytes[..tok + 2]);
        assert!(
            e.contains("truncated") && e.contains("tokenizer.ggml.tokens"),
            "{e}"
        );
        let info = bytes.windows(8).position(|w| w == b"b.weight").unwrap();
        let e = err_of(&bytes[..info + 10]);
        assert!(
            e.contains("truncated") && e.contains("tensor `b.weight`"),
            "{e}"
        );
        let e = err_of(&bytes[..f.data_offset() + 10]);
        assert!(e.contains("a.weight") && e.contains("past the end"), "{e}");
        let e = err_of(&bytes[..bytes.len() - 1]);
        assert!(
            e.contains(&specs[2].name) && e.contains("past the end"),
            "{e}"
        );
    }

    #[test]
    fn offsets_outside_the_file() {
        let (bytes, _) = small_file();
        let len = bytes.len() as u64;
        for off in [len, len - 70, u64::MAX - 10, u64::MAX] {
            let mut b = bytes.clone();
            let at = offset_field(&b, "b.weight", 1);
            b[at..at + 8].copy_from_slice(&off.to_le_bytes());
            let e = err_of(&b);
            assert!(
                e.contains("tensor `b.weight`") && e.contains("past the end"),
                "{off}: {e}"
            );
        }
        // Dims whose product overflows.
        let mut b = bytes.clone();
        let at = offset_field(&b, "a.weight", 2) - 4 - 16;
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = err_of(&b);
        assert!(e.contains("a.weight") && e.contains("overflow"), "{e}");
        // Rows that are not whole blocks.
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&31u64.to_le_bytes());
        let e = err_of(&b);
        assert!(e.contains("a.weight") && e.contains("Q8_0 blocks"), "{e}");
    }

    fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }

    #[test]
    fn absurd_counts_and_lengths() {
        let e = err_of(&header(u64::MAX, 0));
        assert!(e.contains("claims") && e.contains("tensors"), "{e}");
        let e = err_of(&header(0, 1 << 40));
        assert!(e.contains("claims") && e.contains("metadata"), "{e}");
        // A key longer than the file.
        let mut b = header(0, 1);
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        let e = err_of(&b);
        assert!(e.contains("string of 4611686018427387904 bytes"), "{e}");
        // Arrays with more elements than bytes left, of every element type.
        for (ty, n) in [(4u32, 1u64 << 61), (8, 1 << 60), (9, 3), (0, u64::MAX)] {
            let mut b = header(0, 1);
            put_string(&mut b, "k");
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&[0; 20]);
            let e = err_of(&b);
            assert!(
                e.contains("metadata `k`") && (e.contains("claims") || e.contains("truncated")),
                "{e}"
            );
        }
        // Arrays nested without end.
        let mut b = header(0, 1);
        put_string(&mut b, "deep");
        b.extend_from_slice(&9u32.to_le_bytes());
        for _ in 0..100 {
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
        }
        b.extend_from_slice(&[0; 64]);
        assert!(err_of(&b).contains("nests arrays"));
        // Unknown value type.
        let mut b = header(0, 1);
        put_string(&mut b, "k");
        b.extend_from_slice(&77u32.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        assert!(err_of(&b).contains("unknown value type 77"));
        // Too many dims.
        let mut b = header(1, 0);
        put_string(&mut b, "t");
        b.extend_from_slice(&5u32.to_le_bytes());
        b.extend_from_slice(&[1; 64]);
        assert!(err_of(&b).contains("5 dimensions"));
        // Alignment that is not a power of two; duplicate keys and tensors.
        let mut w = GgufWriter::new();
        w.set("x", 1u32);
        let mut b = to_bytes(&w, &[], &[]);
        let at = b
            .windows(17)
            .position(|w| w == b"general.alignment")
            .unwrap()
            + 17
            + 4;
        b[at..at + 4].copy_from_slice(&48u32.to_le_bytes());
        assert!(err_of(&b).contains("power of two"));
        let mut b = header(0, 2);
        for _ in 0..2 {
            put_string(&mut b, "dup");
            put_value(&mut b, &GgufValue::U8(1));
        }
        assert!(err_of(&b).contains("`dup` appears twice"));
        let mut b = header(2, 0);
        for _ in 0..2 {
            put_string(&mut b, "t");
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
        }
        assert!(err_of(&b).contains("tensor `t` appears twice"));
    }

    #[test]
    fn random_corruption_never_panics() {
        let (bytes, _) = small_file();
        let f = parse(&bytes).unwrap();
        let header_end = f.data_offset();
        let cfg = tiny_config();
        let mut rng = Rng(42);
        let mut ok = 0;
        for _ in 0..5000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(header_end);
                b[at] = match rng.below(3) {
                    0 => rng.next() as u8,
                    1 => 0xFF,
                    _ => b[at] ^ (1 << rng.below(8)),
                };
            }
            if let Ok(f) = parse(&b) {
                ok += 1;
                let _ = f.config();
                let _ = tokenizer(&f);
                for t in f.tensors() {
                    let _ = f.tensor_bytes(&t.name);
                }
                for id in TensorId::all(&cfg) {
                    let _ = f.weight(id, &cfg);
                }
            }
        }
        assert!(ok > 0);

        // The same on a whole model, mostly hitting the `llama.*` keys, which come first.
        let (w, specs, datas) = tiny_model();
        let bytes = to_bytes(&w, &specs, &datas);
        let header_end = parse(&bytes).unwrap().data_offset();
        let keys_end = bytes
            .windows(21)
            .position(|w| w == b"tokenizer.ggml.tokens")
            .unwrap();
        let mut configs = 0;
        for i in 0..1500 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(if i % 4 == 0 { header_end } else { keys_end });
                b[at] = match rng.below(3) {
                    0 => rng.next() as u8,
                    1 => 0xFF,
                    _ => b[at] ^ (1 << rng.below(8)),
                };
            }
            let Ok(f) = parse(&b) else { continue };
            let Ok(cfg) = f.config() else { continue };
            configs += 1;
            for id in TensorId::all(&cfg).into_iter().take(64) {
                if let Ok(w) = f.weight(id, &cfg) {
                    let _ = w.row_f32(0);
                }
            }
        }
        assert!(configs > 0);
    }
}
