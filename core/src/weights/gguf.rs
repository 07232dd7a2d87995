//! GGUF (llama.cpp's model format), versions 2 and 3, little-endian: reader and writer.
//!
//! The reader parses from a [`Blob`] (a memory-mapped file on native targets, a byte vector
//! in a browser); tensors are sub-slices of that blob, never copied. Every count and length
//! in the file is checked against the bytes that remain before anything is allocated, so a
//! truncated or corrupt file gives an [`Error::ModelLoad`] naming what was being read, never
//! a panic or a huge allocation.
//!
//! The writer streams: tensor infos (names, dims, types, byte lengths) are given up front,
//! then each tensor's bytes are asked for one at a time, so a whole model is never held in
//! memory. Files go to a temporary name in the same folder and are renamed at the end.
//!
//! Layout (all little-endian):
//! ```text
//! "GGUF" u32 version, u64 n_tensors, u64 n_kv
//! n_kv × (string key, u32 value type, value)
//! n_tensors × (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
//! padding to `general.alignment` (default 32), then the data section; offsets are
//! relative to its start. A string is u64 length + UTF-8 bytes; an array is u32 element
//! type + u64 count + elements (an element that is itself an array repeats type + count).
//! ```
//! GGUF dims are `[ne0, ne1, ...]`, `ne0` being the contiguous dimension: a `[rows, cols]`
//! matrix has dims `[cols, rows]`.

use super::{Blob, LayerTensor, RopeStyle, TensorId, WeightData, WeightFormat};
use crate::config::RopeScaling;
use crate::{Config, Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent, and the one the writer uses.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// llama.cpp refuses tensor names of `GGML_MAX_NAME` (64) bytes or more.
pub const MAX_TENSOR_NAME: usize = 63;
/// Deepest nesting of arrays inside arrays the reader accepts.
const MAX_ARRAY_DEPTH: usize = 8;

/// llama.cpp's `llama_ftype` values for `general.file_type`.
pub mod file_type {
    pub const ALL_F32: u32 = 0;
    pub const MOSTLY_F16: u32 = 1;
    pub const MOSTLY_Q4_0: u32 = 2;
    pub const MOSTLY_Q4_1: u32 = 3;
    pub const MOSTLY_Q8_0: u32 = 7;
    pub const MOSTLY_Q4_K_S: u32 = 14;
    pub const MOSTLY_Q4_K_M: u32 = 15;
    pub const MOSTLY_Q6_K: u32 = 18;
    pub const MOSTLY_BF16: u32 = 32;
}

/// `general.file_type` for a model whose large matrices are mostly `format`.
pub fn llama_file_type(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::F32 => file_type::ALL_F32,
        WeightFormat::F16 => file_type::MOSTLY_F16,
        WeightFormat::BF16 => file_type::MOSTLY_BF16,
        WeightFormat::Q8_0 => file_type::MOSTLY_Q8_0,
        WeightFormat::Q4_0 => file_type::MOSTLY_Q4_0,
        WeightFormat::Q4_1 => file_type::MOSTLY_Q4_1,
        WeightFormat::Q4K => file_type::MOSTLY_Q4_K_M,
        WeightFormat::Q6K => file_type::MOSTLY_Q6_K,
        // not a ggml type; `GgufTensorSpec::weight` refuses it, so no file is ever written
        WeightFormat::Gptq4 => file_type::MOSTLY_Q4_1,
    }
}

/// `(weights per block, bytes per block)` of every ggml type id GGUF files use, including
/// those yangtuo cannot compute with, so their extent in the file can still be checked.
pub fn ggml_block_size(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 40),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

/// Bytes a tensor of `ggml_type` with these GGUF dims occupies; `Err` says why not
/// (unknown type, overflow, or rows that are not a whole number of blocks).
fn tensor_n_bytes(dims: &[u64], ggml_type: u32) -> Result<u64, String> {
    let (be, bb) = ggml_block_size(ggml_type)
        .ok_or_else(|| format!("has unknown ggml type {}", WeightFormat::ggml_type_name(ggml_type)))?;
    let mut n: u64 = 1;
    for d in dims {
        n = n.checked_mul(*d).ok_or_else(|| format!("has dims {dims:?} whose element count overflows"))?;
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % be != 0 {
        return Err(format!(
            "has rows of {ne0} weights, not a whole number of {}-weight {} blocks",
            be,
            WeightFormat::ggml_type_name(ggml_type)
        ));
    }
    (n / be).checked_mul(bb).ok_or_else(|| format!("has dims {dims:?} whose byte size overflows"))
}

// ---------------------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------------------

/// GGUF metadata value types, with their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufType {
    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn from_id(id: u32) -> Option<Self> {
        use GgufType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// gguf-py's name (`GGUFValueType`): `UINT8`, `FLOAT32`, `STRING`, `ARRAY`, ...
    pub fn name(self) -> &'static str {
        use GgufType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// The fewest bytes one value of this type takes in a file (for bounding counts).
    fn min_size(self) -> u64 {
        use GgufType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored by element type. Arrays of arrays hold each inner array with
/// its own element type, as the format does (llama.cpp itself refuses nested arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufValue {
    pub fn ty(&self) -> GgufType {
        match self {
            GgufValue::U8(_) => GgufType::U8,
            GgufValue::I8(_) => GgufType::I8,
            GgufValue::U16(_) => GgufType::U16,
            GgufValue::I16(_) => GgufType::I16,
            GgufValue::U32(_) => GgufType::U32,
            GgufValue::I32(_) => GgufType::I32,
            GgufValue::F32(_) => GgufType::F32,
            GgufValue::Bool(_) => GgufType::Bool,
            GgufValue::String(_) => GgufType::String,
            GgufValue::Array(_) => GgufType::Array,
            GgufValue::U64(_) => GgufType::U64,
            GgufValue::I64(_) => GgufType::I64,
            GgufValue::F64(_) => GgufType::F64,
        }
    }

    /// Any integer type, as i128 (so every u64 and i64 fits).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v as i128,
            GgufValue::I8(v) => v as i128,
            GgufValue::U16(v) => v as i128,
            GgufValue::I16(v) => v as i128,
            GgufValue::U32(v) => v as i128,
            GgufValue::I32(v) => v as i128,
            GgufValue::U64(v) => v as i128,
            GgufValue::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// Any integer type whose value fits a u64.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer type whose value fits a u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i128().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer type whose value fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// F32 or F64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// F32 or F64 (narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        self.as_f64().map(|v| v as f32)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (arrays nested as they are; non-finite floats become null).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            GgufValue::U8(v) => J::from(*v),
            GgufValue::I8(v) => J::from(*v),
            GgufValue::U16(v) => J::from(*v),
            GgufValue::I16(v) => J::from(*v),
            GgufValue::U32(v) => J::from(*v),
            GgufValue::I32(v) => J::from(*v),
            GgufValue::F32(v) => J::from(*v as f64),
            GgufValue::Bool(v) => J::from(*v),
            GgufValue::String(v) => J::from(v.as_str()),
            GgufValue::Array(a) => a.to_json(),
            GgufValue::U64(v) => J::from(*v),
            GgufValue::I64(v) => J::from(*v),
            GgufValue::F64(v) => J::from(*v),
        }
    }

    /// A short description for error messages (`UINT32`, `ARRAY of STRING`).
    pub fn type_description(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("ARRAY of {}", a.elem_type().name()),
            v => v.ty().name().to_string(),
        }
    }
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufType {
        match self {
            GgufArray::U8(_) => GgufType::U8,
            GgufArray::I8(_) => GgufType::I8,
            GgufArray::U16(_) => GgufType::U16,
            GgufArray::I16(_) => GgufType::I16,
            GgufArray::U32(_) => GgufType::U32,
            GgufArray::I32(_) => GgufType::I32,
            GgufArray::F32(_) => GgufType::F32,
            GgufArray::Bool(_) => GgufType::Bool,
            GgufArray::String(_) => GgufType::String,
            GgufArray::Array(_) => GgufType::Array,
            GgufArray::U64(_) => GgufType::U64,
            GgufArray::I64(_) => GgufType::I64,
            GgufArray::F64(_) => GgufType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            GgufArray::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            GgufArray::I32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_u32s(&self) -> Option<&[u32]> {
        match self {
            GgufArray::U32(v) => Some(v),
            _ => None,
        }
    }

    /// Elements of any integer type, as i64 (None if one does not fit or the array is not
    /// of integers).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|x| f(*x)).collect()
        }
        match self {
            GgufArray::U8(v) => conv(v, |x| Some(x as i64)),
            GgufArray::I8(v) => conv(v, |x| Some(x as i64)),
            GgufArray::U16(v) => conv(v, |x| Some(x as i64)),
            GgufArray::I16(v) => conv(v, |x| Some(x as i64)),
            GgufArray::U32(v) => conv(v, |x| Some(x as i64)),
            GgufArray::I32(v) => conv(v, |x| Some(x as i64)),
            GgufArray::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            GgufArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// Elements of F32 or F64 arrays, as f32.
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        match self {
            GgufArray::F32(v) => Some(v.clone()),
            GgufArray::F64(v) => Some(v.iter().map(|x| *x as f32).collect()),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        fn list<T: Copy>(v: &[T], f: impl Fn(T) -> J) -> J {
            J::Array(v.iter().map(|x| f(*x)).collect())
        }
        match self {
            GgufArray::U8(v) => list(v, J::from),
            GgufArray::I8(v) => list(v, J::from),
            GgufArray::U16(v) => list(v, J::from),
            GgufArray::I16(v) => list(v, J::from),
            GgufArray::U32(v) => list(v, J::from),
            GgufArray::I32(v) => list(v, J::from),
            GgufArray::F32(v) => list(v, |x| J::from(x as f64)),
            GgufArray::Bool(v) => list(v, J::from),
            GgufArray::String(v) => J::Array(v.iter().map(|s| J::from(s.as_str())).collect()),
            GgufArray::Array(v) => J::Array(v.iter().map(|a| a.to_json()).collect()),
            GgufArray::U64(v) => list(v, J::from),
            GgufArray::I64(v) => list(v, J::from),
            GgufArray::F64(v) => list(v, J::from),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for GgufValue {
            fn from(x: $t) -> Self { GgufValue::$v(x) }
        }
        impl From<Vec<$t>> for GgufArray {
            fn from(x: Vec<$t>) -> Self { GgufArray::$v(x) }
        }
        impl From<Vec<$t>> for GgufValue {
            fn from(x: Vec<$t>) -> Self { GgufValue::Array(GgufArray::$v(x)) }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool,
    String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for GgufValue {
    fn from(x: &str) -> Self {
        GgufValue::String(x.to_string())
    }
}

impl From<GgufArray> for GgufValue {
    fn from(x: GgufArray) -> Self {
        GgufValue::Array(x)
    }
}

impl From<Vec<GgufArray>> for GgufValue {
    fn from(x: Vec<GgufArray>) -> Self {
        GgufValue::Array(GgufArray::Array(x))
    }
}

// ---------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------

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
        GgufType::from_id(id).ok_or_else(|| self.err(format!("corrupt GGUF file: {what} has unknown value type {id}")))
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
            GgufType::I8 => GgufArray::I8(self.take(n as u64, what)?.iter().map(|b| *b as i8).collect()),
            GgufType::Bool => GgufArray::Bool(self.take(n as u64, what)?.iter().map(|b| *b != 0).collect()),
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
                    return Err(
                        self.err(format!("corrupt GGUF file: {what} nests arrays more than {MAX_ARRAY_DEPTH} deep"))
                    );
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

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl GgufFile {
    /// Memory-map and parse a `.gguf` file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Self> {
        let blob = super::safetensors::map_file(path)?;
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
                return Err(r.err("this GGUF file is big-endian; yangtuo reads little-endian GGUF files only"));
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
            let what = format!("metadata `{key}`");
            let ty = r.value_type(&what)?;
            let value = r.value(ty, &what)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.err(format!("corrupt GGUF file: metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.get(meta_index.get("general.alignment").copied().unwrap_or(usize::MAX)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u32() {
                Some(a) if a != 0 && a.is_power_of_two() => a as usize,
                _ => {
                    return Err(r.err(format!("`general.alignment` must be a power of two (u32), found {v:?}")));
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor info {i}"))?;
            let what = format!("the info of tensor `{name}`");
            let n_dims = r.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(r.err(format!(
                    "corrupt GGUF file: tensor `{name}` has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
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
                Err(m) => return Err(r.err(format!("corrupt GGUF file: tensor `{name}` {m}"))),
            };
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.err(format!("corrupt GGUF file: tensor `{name}` appears twice")));
            }
            tensors.push(GgufTensorInfo { name, dims, ggml_type, offset, n_bytes });
        }

        let data_offset = align_up(r.pos as u64, alignment as u64).unwrap_or(u64::MAX);
        for t in &tensors {
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes.unwrap_or(0)));
            if end.is_none_or(|e| e > file_len) {
                let size = t.n_bytes.map(|n| format!("{n} bytes")).unwrap_or_else(|| "its data".into());
                return Err(r.err(format!(
                    "truncated or corrupt GGUF file: tensor `{}` ({size} at offset {} of the data section, \
                     which starts at byte {data_offset}) runs past the end of the file ({file_len} bytes)",
                    t.name, t.offset
                )));
            }
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

    fn err(&self, msg: impl Into<String>) -> Error {
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
        let t = self.tensor_info(name).ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        let n = t.n_bytes.ok_or_else(|| {
            self.err(format!("tensor `{name}` has type {}, which yangtuo does not know", t.type_name()))
        })?;
        // `parse` checked data_offset + offset + n <= file length; a header-only parse holds
        // a prefix of the file.
        let start = self.data_offset + t.offset as usize;
        if start + n as usize > self.blob.len() {
            return Err(self.err(format!("tensor `{name}` is not in the bytes read so far")));
        }
        Ok(self.blob.slice(start, n as usize))
    }

    /// How RoPE pairs dimensions in this file's Q and K: llama.cpp's converter permutes
    /// their rows so rotary pairs are adjacent.
    pub fn rope_style(&self) -> RopeStyle {
        RopeStyle::Interleaved
    }

    fn type_err(&self, key: &str, want: &str, v: &GgufValue) -> Error {
        self.err(format!("metadata `{key}` should be {want}, found {}", v.type_description()))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.type_err(key, "a non-negative integer", v)),
        }
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u32().map(Some).ok_or_else(|| self.type_err(key, "a u32", v)),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.type_err(key, "a float", v)),
        }
    }

    /// The model's hyperparameters, from the `llama.*` and `tokenizer.ggml.*` keys.
    pub fn config(&self) -> Result<Config> {
        let arch = match self.get("general.architecture") {
            Some(GgufValue::String(s)) => s.as_str(),
            Some(v) => return Err(self.type_err("general.architecture", "a string", v)),
            None => return Err(self.err("metadata key `general.architecture` is missing; is this a model file?")),
        };
        if arch != "llama" {
            return Err(self.err(format!(
                "unsupported architecture `{arch}` (general.architecture): yangtuo runs `llama` models"
            )));
        }
        let dim = self.req_usize("llama.embedding_length")?;
        let n_heads = self.req_usize("llama.attention.head_count")?;
        if n_heads == 0 {
            return Err(self.err("`llama.attention.head_count` must be positive"));
        }
        let n_kv_heads = self.opt_usize("llama.attention.head_count_kv")?.unwrap_or(n_heads);
        let key_length = self.opt_usize("llama.attention.key_length")?;
        let rot = self.opt_usize("llama.rope.dimension_count")?;
        let head_dim = key_length.or(rot).unwrap_or(dim / n_heads);
        if let Some(r) = rot {
            if r != head_dim {
                return Err(self.err(format!(
                    "`llama.rope.dimension_count` is {r} but heads are {head_dim} wide: partial rotary \
                     embeddings are not supported"
                )));
            }
        }
        let norm_eps = self
            .opt_f64("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| self.err("metadata key `llama.attention.layer_norm_rms_epsilon` is missing"))?;
        let rope_theta = self.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0);
        let rope_scaling = self.rope_scaling()?;
        let vocab_size = match self.opt_usize("llama.vocab_size")? {
            Some(v) => v,
            None => match self.get_array("tokenizer.ggml.tokens") {
                Some(a) => a.len(),
                None => match self.tensor_info("token_embd.weight") {
                    Some(t) if t.dims.len() >= 2 => usize::try_from(t.dims[1])
                        .map_err(|_| self.err("tensor `token_embd.weight` has an absurd row count"))?,
                    _ => {
                        return Err(self.err(
                            "cannot tell the vocabulary size: no `llama.vocab_size`, no `tokenizer.ggml.tokens` \
                             and no 2-D `token_embd.weight`",
                        ));
                    }
                },
            },
        };
        let hidden_dim = self.req_usize("llama.feed_forward_length")?;
        let n_layers = self.req_usize("llama.block_count")?;
        // Each layer has 9 tensors; a corrupt count must not size allocations downstream.
        if n_layers.saturating_mul(LayerTensor::ALL.len()) > self.tensors.len() {
            return Err(self.err(format!(
                "`llama.block_count` says {n_layers} layers, but the file holds only {} tensors",
                self.tensors.len()
            )));
        }
        // Keep every matrix size far from overflow, so shape arithmetic downstream is safe.
        // (1 << 48 on 64-bit; on 32-bit wasm, what the address space allows)
        const LIMIT: usize = if usize::BITS >= 64 { 1 << (usize::BITS - 16) } else { usize::MAX >> 1 };
        let sane = [
            n_heads.checked_mul(head_dim),
            n_kv_heads.checked_mul(head_dim),
            n_heads.checked_mul(head_dim).and_then(|q| q.checked_mul(dim)),
            vocab_size.checked_mul(dim),
            hidden_dim.checked_mul(dim),
        ]
        .iter()
        .all(|p| p.is_some_and(|p| p <= LIMIT));
        if !sane {
            return Err(self.err(format!(
                "absurd model dimensions (dim {dim}, heads {n_heads}×{head_dim}, kv heads {n_kv_heads}, \
                 feed-forward {hidden_dim}, vocab {vocab_size}); the file is corrupt"
            )));
        }
        let cfg = Config {
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            max_seq_len: self.req_usize("llama.context_length")?,
            norm_eps,
            rope_theta,
            rope_scaling,
            tie_embeddings: self.tensor_info("output.weight").is_none(),
            bos_id: Some(self.opt_u32("tokenizer.ggml.bos_token_id")?.unwrap_or(1)),
            eos_ids: vec![self.opt_u32("tokenizer.ggml.eos_token_id")?.unwrap_or(2)],
        };
        cfg.validate(&self.path)?;
        Ok(cfg)
    }

    fn rope_scaling(&self) -> Result<RopeScaling> {
        let factor = |f: f64| -> Result<RopeScaling> {
            // llama.cpp reads a factor of 0 (or none) as "no scaling".
            if f == 0.0 || f == 1.0 {
                Ok(RopeScaling::None)
            } else if f.is_finite() && f > 0.0 {
                Ok(RopeScaling::Linear { factor: f })
            } else {
                Err(self.err(format!("`llama.rope.scaling.factor` must be positive, found {f}")))
            }
        };
        match self.get("llama.rope.scaling.type") {
            None => match self.opt_f64("llama.rope.scale_linear")? {
                // The key older converters wrote.
                Some(f) => factor(f),
                None => Ok(RopeScaling::None),
            },
            Some(GgufValue::String(kind)) => match kind.as_str() {
                "none" => Ok(RopeScaling::None),
                "linear" => factor(self.opt_f64("llama.rope.scaling.factor")?.unwrap_or(0.0)),
                other => Err(self.err(format!(
                    "unsupported rope scaling `{other}` (llama.rope.scaling.type); supported: none, linear"
                ))),
            },
            Some(v) => Err(self.type_err("llama.rope.scaling.type", "a string", v)),
        }
    }

    /// One model tensor, checked against `config`'s shape, as stored.
    pub fn weight(&self, id: TensorId, config: &Config) -> Result<WeightData> {
        self.weight_from(id, config, None)
    }

    /// As `weight`, with the tensor's bytes supplied by the caller (a streamed download)
    /// instead of read from the file.
    pub fn weight_from(&self, id: TensorId, config: &Config, bytes: Option<Blob>) -> Result<WeightData> {
        let name = format!("{}.weight", id.gguf_name());
        let t = self.tensor_info(&name).ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        let format = t.format().ok_or_else(|| {
            self.err(format!(
                "tensor `{name}` has type {}, which yangtuo does not support (supported: F32, F16, BF16, \
                 Q8_0, Q4_0, Q4_1, Q4_K, Q6_K); re-quantize the model to one of these",
                t.type_name()
            ))
        })?;
        let [rows, cols] = id.expected_shape(config);
        let want: Vec<u64> = if id.is_vector() { vec![cols as u64] } else { vec![cols as u64, rows as u64] };
        // As llama.cpp does, missing trailing dims count as 1.
        let n = t.dims.len().max(want.len());
        let same = (0..n).all(|i| t.dims.get(i).copied().unwrap_or(1) == want.get(i).copied().unwrap_or(1));
        if !same {
            return Err(self.err(format!(
                "tensor `{name}` has dims {:?} but the metadata implies {want:?} (GGUF order: columns first)",
                t.dims
            )));
        }
        let bytes = match bytes {
            Some(b) => b,
            None => self.tensor_bytes(&name)?,
        };
        WeightData::new(format, rows, cols, bytes, &name)
    }

    /// `tokenizer.ggml.tokens`.
    pub fn tokens(&self) -> Option<Vec<String>> {
        self.get_strings("tokenizer.ggml.tokens").map(|s| s.to_vec())
    }

    /// `tokenizer.ggml.scores` (F32, or F64 narrowed).
    pub fn scores(&self) -> Option<Vec<f32>> {
        self.get_array("tokenizer.ggml.scores").and_then(|a| a.to_f32s())
    }

    /// `tokenizer.ggml.token_type` (llama.cpp: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte).
    pub fn token_types(&self) -> Option<Vec<i32>> {
        self.get_array("tokenizer.ggml.token_type")
            .and_then(|a| a.to_i64s())
            .and_then(|v| v.into_iter().map(|x| i32::try_from(x).ok()).collect())
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.bos_token_id")
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.eos_token_id")
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.unknown_token_id")
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.get_u32("tokenizer.ggml.padding_token_id")
    }

    /// `tokenizer.ggml.add_bos_token`, if present.
    pub fn add_bos(&self) -> Option<bool> {
        self.get_bool("tokenizer.ggml.add_bos_token")
    }

    /// `tokenizer.ggml.add_eos_token`, if present.
    pub fn add_eos(&self) -> Option<bool> {
        self.get_bool("tokenizer.ggml.add_eos_token")
    }

    /// `tokenizer.ggml.model`: `llama` for SentencePiece vocabularies.
    pub fn tokenizer_model(&self) -> Option<&str> {
        self.get_str("tokenizer.ggml.model")
    }

    /// `tokenizer.chat_template` (Jinja).
    pub fn chat_template(&self) -> Option<String> {
        self.get_str("tokenizer.chat_template").map(|s| s.to_string())
    }

    /// The vocabulary and special ids, if the file has `tokenizer.ggml.tokens`.
    pub fn tokenizer(&self) -> Option<GgufTokenizer> {
        Some(GgufTokenizer {
            model: self.tokenizer_model().unwrap_or("llama").to_string(),
            tokens: self.tokens()?,
            scores: self.scores(),
            token_types: self.token_types(),
            bos_id: self.bos_id(),
            eos_id: self.eos_id(),
            unk_id: self.unk_id(),
            pad_id: self.pad_id(),
            add_bos: self.add_bos(),
            add_eos: self.add_eos(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

/// A SentencePiece vocabulary as llama.cpp stores it (`tokenizer.ggml.*`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`, `llama` for SentencePiece.
    pub model: String,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

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
        GgufTensorSpec { name: name.into(), dims, ggml_type, n_bytes }
    }

    /// The llama.cpp name, dims and size of model tensor `id` stored as `format`.
    pub fn weight(id: TensorId, format: WeightFormat, config: &Config) -> Result<Self> {
        let name = format!("{}.weight", id.gguf_name());
        if !format.is_ggml() {
            return Err(Error::load(&name, format!("{format:?} is not a ggml type and cannot be written to GGUF")));
        }
        let [rows, cols] = id.expected_shape(config);
        let n_bytes = (format.row_bytes(cols, &name)? * rows) as u64;
        let dims = if id.is_vector() { vec![cols as u64] } else { vec![cols as u64, rows as u64] };
        Ok(GgufTensorSpec { name, dims, ggml_type: format.ggml_type(), n_bytes })
    }
}

/// Builds a GGUF v3 file: metadata first, then tensors streamed one at a time.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    kv: Vec<(String, GgufValue)>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
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

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
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

    /// Metadata of a llama model, with llama.cpp's key names and value types (u32 for
    /// integers, f32 for floats, as llama.cpp requires). `file_type` is a `llama_ftype`
    /// (see [`llama_file_type`]). A vocabulary shorter than `vocab_size` is padded with
    /// `[PAD{id}]` tokens as llama.cpp's converter does.
    pub fn llama(
        config: &Config,
        name: &str,
        file_type: u32,
        tokenizer: Option<GgufTokenizer>,
        chat_template: Option<&str>,
    ) -> Result<Self> {
        let c = config;
        let origin = Path::new(if name.is_empty() { "gguf" } else { name });
        let u32_of = |what: &str, v: usize| {
            u32::try_from(v).map_err(|_| Error::load(origin, format!("{what} {v} does not fit GGUF's u32")))
        };
        let mut w = GgufWriter::new();
        w.set("general.architecture", "llama");
        if !name.is_empty() {
            w.set("general.name", name);
        }
        w.set("general.file_type", file_type);
        w.set("general.quantization_version", 2u32);
        w.set("llama.vocab_size", u32_of("vocab_size", c.vocab_size)?);
        w.set("llama.context_length", u32_of("context length", c.max_seq_len)?);
        w.set("llama.embedding_length", u32_of("dim", c.dim)?);
        w.set("llama.block_count", u32_of("n_layers", c.n_layers)?);
        w.set("llama.feed_forward_length", u32_of("hidden_dim", c.hidden_dim)?);
        w.set("llama.rope.dimension_count", u32_of("head_dim", c.head_dim)?);
        w.set("llama.attention.head_count", u32_of("n_heads", c.n_heads)?);
        w.set("llama.attention.head_count_kv", u32_of("n_kv_heads", c.n_kv_heads)?);
        if c.n_heads == 0 || c.head_dim != c.dim / c.n_heads {
            w.set("llama.attention.key_length", u32_of("head_dim", c.head_dim)?);
            w.set("llama.attention.value_length", u32_of("head_dim", c.head_dim)?);
        }
        w.set("llama.attention.layer_norm_rms_epsilon", c.norm_eps as f32);
        w.set("llama.rope.freq_base", c.rope_theta as f32);
        match c.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                w.set("llama.rope.scaling.type", "linear");
                w.set("llama.rope.scaling.factor", factor as f32);
            }
            RopeScaling::Dynamic { .. } => {
                return Err(Error::load(
                    origin,
                    "dynamic NTK rope scaling has no GGUF equivalent (llama.cpp knows none, linear and yarn); \
                     export the model without rope_scaling, or with linear scaling",
                ));
            }
        }
        w.set("tokenizer.ggml.model", tokenizer.as_ref().map(|t| t.model.as_str()).unwrap_or("llama"));
        let bos = tokenizer.as_ref().and_then(|t| t.bos_id).or(c.bos_id);
        let eos = tokenizer.as_ref().and_then(|t| t.eos_id).or(c.eos_ids.first().copied());
        if let Some(t) = tokenizer {
            let n = t.tokens.len();
            if n > c.vocab_size {
                return Err(Error::load(
                    origin,
                    format!("the tokenizer has {n} tokens but the model's vocab_size is {}", c.vocab_size),
                ));
            }
            for (what, len) in [
                ("scores", t.scores.as_ref().map(|s| s.len())),
                ("token types", t.token_types.as_ref().map(|s| s.len())),
            ] {
                if let Some(len) = len {
                    if len != n {
                        return Err(Error::load(origin, format!("the tokenizer has {n} tokens but {len} {what}")));
                    }
                }
            }
            let mut tokens = t.tokens;
            let mut scores = t.scores.unwrap_or_else(|| vec![0.0; n]);
            let mut types = t.token_types.unwrap_or_else(|| vec![1; n]);
            for id in n..c.vocab_size {
                tokens.push(format!("[PAD{id}]"));
                scores.push(-1000.0);
                types.push(5);
            }
            w.set("tokenizer.ggml.tokens", tokens);
            w.set("tokenizer.ggml.scores", scores);
            w.set("tokenizer.ggml.token_type", types);
            w.set("tokenizer.ggml.unknown_token_id", t.unk_id.unwrap_or(0));
            if let Some(p) = t.pad_id {
                w.set("tokenizer.ggml.padding_token_id", p);
            }
            if let Some(b) = t.add_bos {
                w.set("tokenizer.ggml.add_bos_token", b);
            }
            if let Some(b) = t.add_eos {
                w.set("tokenizer.ggml.add_eos_token", b);
            }
        }
        if let Some(b) = bos {
            w.set("tokenizer.ggml.bos_token_id", b);
        }
        if let Some(e) = eos {
            w.set("tokenizer.ggml.eos_token_id", e);
        }
        if let Some(t) = chat_template {
            w.set("tokenizer.chat_template", t);
        }
        Ok(w)
    }

    /// Header, metadata and tensor infos, padded to the alignment; checks every spec.
    fn header(&self, tensors: &[GgufTensorSpec], path: &Path) -> Result<Vec<u8>> {
        let bad = |m: String| Error::load(path, m);
        let align = DEFAULT_ALIGNMENT as u64;
        let mut names = std::collections::HashSet::new();
        for t in tensors {
            if t.name.len() > MAX_TENSOR_NAME {
                return Err(bad(format!("tensor name `{}` is longer than {MAX_TENSOR_NAME} bytes", t.name)));
            }
            if !names.insert(t.name.as_str()) {
                return Err(bad(format!("tensor `{}` is listed twice", t.name)));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
                return Err(bad(format!("tensor `{}` has {} dims (1 to {MAX_DIMS} allowed)", t.name, t.dims.len())));
            }
            let want = tensor_n_bytes(&t.dims, t.ggml_type).map_err(|m| bad(format!("tensor `{}` {m}", t.name)))?;
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
        let kv: Vec<&(String, GgufValue)> = self.kv.iter().filter(|(k, _)| k != "general.alignment").collect();
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
    pub fn write_to<W, B, F>(&self, out: &mut W, path: &Path, tensors: &[GgufTensorSpec], mut data: F) -> Result<u64>
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
                    format!("tensor `{}`: got {} bytes of data, its info says {}", t.name, b.len(), t.n_bytes),
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
            let file = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
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

/// Reorder the rows of a Hugging Face Q or K matrix (`n_head × head_dim` rows of
/// `row_bytes` bytes each) the way llama.cpp's converter does:
/// `w.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2).reshape(rows, cols)`, so the
/// rotary pair `(i, i + head_dim/2)` becomes rows `(2i, 2i+1)`. For K, `n_head` is the
/// number of KV heads. Whole rows move, so any block format works.
///
/// Panics if `rows_bytes` is not `n_head * head_dim * row_bytes` long or `head_dim` is odd.
pub fn permute_rows_for_gguf(rows_bytes: &[u8], row_bytes: usize, n_head: usize, head_dim: usize) -> Vec<u8> {
    assert!(head_dim % 2 == 0, "head_dim {head_dim} must be even");
    assert_eq!(rows_bytes.len(), n_head * head_dim * row_bytes, "Q/K matrix size does not match its heads");
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(rows_bytes.len());
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + j * half + i;
                out.extend_from_slice(&rows_bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use std::process::Command;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let p = std::env::temp_dir().join(format!("yangtuo-gguf-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `YANGTUO_PYTHON`, else the project venv, else None (the test is skipped).
    fn python() -> Option<PathBuf> {
        if let Ok(p) = std::env::var("YANGTUO_PYTHON") {
            if !p.is_empty() {
                return Some(p.into());
            }
        }
        let venv = Path::new("/root/.cache/yt-venv/bin/python");
        if venv.exists() {
            return Some(venv.into());
        }
        println!("skipping: no python with gguf");
        None
    }

    fn run_python(py: &Path, dir: &Path, script: &str, args: &[&Path]) {
        let file = dir.join("script.py");
        std::fs::write(&file, script).unwrap();
        let out = Command::new(py).arg(&file).args(args).output().expect("cannot run python");
        assert!(
            out.status.success(),
            "python failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    use crate::testing::Rng;

    fn tiny_config() -> Config {
        Config {
            dim: 256,
            hidden_dim: 512,
            n_layers: 1,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            vocab_size: 32,
            max_seq_len: 128,
            norm_eps: 1e-5f32 as f64,
            rope_theta: 500000.0,
            rope_scaling: RopeScaling::Linear { factor: 4.0 },
            tie_embeddings: false,
            bos_id: Some(1),
            eos_ids: vec![2],
        }
    }

    fn vocab(n: usize) -> Vec<String> {
        let mut t: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        t.extend((0..16).map(|i| format!("<0x{i:02X}>")));
        t.extend(["▁the", "é", "中文", "▁a", "b", "\n", "🦙"].iter().map(|s| s.to_string()));
        let mut i = 0;
        while t.len() < n {
            t.push(format!("tok{i}"));
            i += 1;
        }
        t.truncate(n);
        t
    }

    fn tiny_tokenizer(n: usize) -> GgufTokenizer {
        let tokens = vocab(n);
        let types = (0..n)
            .map(|i| {
                if i == 0 {
                    2
                } else if i < 3 {
                    3
                } else if i < 19 {
                    6
                } else {
                    1
                }
            })
            .collect();
        GgufTokenizer {
            model: "llama".into(),
            scores: Some((0..n).map(|i| -(i as f32) * 0.5).collect()),
            token_types: Some(types),
            tokens,
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            pad_id: None,
            add_bos: Some(true),
            add_eos: Some(false),
        }
    }

    fn format_for(id: TensorId) -> WeightFormat {
        match id {
            TensorId::Embed => WeightFormat::F16,
            TensorId::Output => WeightFormat::Q6K,
            TensorId::Norm => WeightFormat::F32,
            TensorId::Layer(_, t) => match t {
                LayerTensor::AttnNorm | LayerTensor::FfnNorm => WeightFormat::F32,
                LayerTensor::Wq => WeightFormat::Q4K,
                LayerTensor::Wk => WeightFormat::Q6K,
                LayerTensor::Wv => WeightFormat::Q8_0,
                LayerTensor::Wo => WeightFormat::Q4_0,
                LayerTensor::W1 => WeightFormat::Q4_1,
                LayerTensor::W2 => WeightFormat::BF16,
                LayerTensor::W3 => WeightFormat::Q4K,
            },
        }
    }

    const TEMPLATE: &str = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}";

    /// Our writer's version of a tiny llama model, plus extra keys of every type and two
    /// extra tensors (an odd-sized one, to exercise padding, and a 3-D one).
    fn tiny_model() -> (GgufWriter, Vec<GgufTensorSpec>, Vec<Vec<u8>>) {
        let cfg = tiny_config();
        let mut w = GgufWriter::llama(
            &cfg,
            "tiny llama",
            llama_file_type(WeightFormat::Q4K),
            Some(tiny_tokenizer(30)),
            Some(TEMPLATE),
        )
        .unwrap();
        w.set("test.u8", 200u8)
            .set("test.i8", -100i8)
            .set("test.u16", 60000u16)
            .set("test.i16", -30000i16)
            .set("test.i32", -2_000_000_000i32)
            .set("test.u64", (1u64 << 63) + 5)
            .set("test.i64", -(1i64 << 40))
            .set("test.f64", 0.1f64)
            .set("test.bool", false)
            .set("test.u32s", vec![1u32, 2, 3])
            .set("test.empty", Vec::<u32>::new())
            .set("test.nested", vec![GgufArray::I32(vec![1, 2, 3]), GgufArray::I32(vec![4])]);
        let mut rng = Rng(0x9E3779B97F4A7C15);
        let mut specs = Vec::new();
        let mut datas = Vec::new();
        for id in TensorId::all(&cfg) {
            let f = format_for(id);
            let [rows, cols] = id.expected_shape(&cfg);
            let src: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
            let mut bytes = crate::weights::ggml::quantize(f, &src);
            if let TensorId::Layer(_, t @ (LayerTensor::Wq | LayerTensor::Wk)) = id {
                let heads = if t == LayerTensor::Wq { cfg.n_heads } else { cfg.n_kv_heads };
                bytes = permute_rows_for_gguf(&bytes, f.row_bytes(cols, "").unwrap(), heads, cfg.head_dim);
            }
            specs.push(GgufTensorSpec::weight(id, f, &cfg).unwrap());
            datas.push(bytes);
            if id == TensorId::Layer(0, LayerTensor::AttnNorm) {
                specs.push(GgufTensorSpec::new("test.odd", vec![3], 1, 6));
                datas.push(vec![0, 60, 0, 188, 0, 0]);
                let cube: Vec<f32> = (0..24).map(|i| i as f32).collect();
                specs.push(GgufTensorSpec::new("test.cube", vec![2, 3, 4], 0, 96));
                datas.push(bytemuck::cast_slice(&cube).to_vec());
            }
        }
        (w, specs, datas)
    }

    fn to_bytes(w: &GgufWriter, specs: &[GgufTensorSpec], datas: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = w.write_to(&mut out, Path::new("mem.gguf"), specs, |i, _| Ok(&datas[i])).unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        GgufFile::parse(Blob::from_vec(bytes.to_vec()), Path::new("test.gguf"))
    }

    fn weight_err(r: Result<WeightData>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn err_of(bytes: &[u8]) -> String {
        match parse(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    // ---------------------------------------------------------------- gguf-py -> us

    const PY_WRITE: &str = r#"
import sys, json, os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

out = sys.argv[1]
rng = np.random.default_rng(1234)
dim, hidden, n_heads, n_kv, head_dim, ctx = 256, 512, 4, 2, 64, 128
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(16)] + ["\u2581the", "\u00e9", "\u4e2d\u6587", "\u2581a", "b", "\n", "\U0001F999"]
tokens += [f"tok{i}" for i in range(32 - len(tokens))]
vocab = len(tokens)

def rand_blocks(qt, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qt]
    nb = rows * cols // block
    b = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    def put_f16(col):
        v = rng.uniform(0.001, 0.01, size=nb).astype(np.float16)
        b[:, col:col + 2] = v.view(np.uint8).reshape(nb, 2)
    if qt == T.Q4_K:
        put_f16(0); put_f16(2)   # d, dmin
    elif qt == T.Q6_K:
        put_f16(208)             # d
    else:
        raise ValueError(qt)
    return b.reshape(rows, cols // block * size)

def make(qt, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    if qt == T.F32: return x
    if qt == T.F16: return x.astype(np.float16)
    try:
        return gguf.quants.quantize(x, qt)
    except NotImplementedError:
        # this gguf-py cannot quantize k-quants: random blocks with sane scales instead
        return rand_blocks(qt, *shape)

tensors = [
    ("token_embd.weight", T.F16, (vocab, dim)),
    ("blk.0.attn_norm.weight", T.F32, (dim,)),
    ("blk.0.attn_q.weight", T.Q4_K, (n_heads * head_dim, dim)),
    ("blk.0.attn_k.weight", T.Q6_K, (n_kv * head_dim, dim)),
    ("blk.0.attn_v.weight", T.Q8_0, (n_kv * head_dim, dim)),
    ("blk.0.attn_output.weight", T.Q4_0, (dim, n_heads * head_dim)),
    ("blk.0.ffn_norm.weight", T.F32, (dim,)),
    ("blk.0.ffn_gate.weight", T.Q4_K, (hidden, dim)),
    ("blk.0.ffn_down.weight", T.Q6_K, (dim, hidden)),
    ("blk.0.ffn_up.weight", T.Q8_0, (hidden, dim)),
    ("output_norm.weight", T.F32, (dim,)),
    ("output.weight", T.Q4_0, (vocab, dim)),
]

w = gguf.GGUFWriter(os.path.join(out, "model.gguf"), "llama")
w.add_name("tiny llama")
w.add_context_length(ctx)
w.add_embedding_length(dim)
w.add_block_count(1)
w.add_feed_forward_length(hidden)
w.add_head_count(n_heads)
w.add_head_count_kv(n_kv)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(500000.0)
w.add_rope_dimension_count(head_dim)
w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
w.add_rope_scaling_factor(4.0)
w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores([-0.5 * i for i in range(vocab)])
w.add_token_types([2, 3, 3] + [6] * 16 + [1] * (vocab - 19))
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_add_bos_token(True)
w.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4000000000)
w.add_int32("test.i32", -2000000000)
w.add_float32("test.f32", 1.5)
w.add_bool("test.bool", True)
w.add_string("test.str", "h\u00e9llo \u4e2d\u6587")
w.add_uint64("test.u64", 2**63 + 5)
w.add_int64("test.i64", -2**40)
w.add_float64("test.f64", 0.1)
w.add_array("test.nested", [[1, 2, 3], [4]])
w.add_array("test.floats", [0.5, -1.5])

manifest = []
for name, qt, shape in tensors:
    data = make(qt, shape)
    w.add_tensor(name, data, raw_dtype=qt if data.dtype == np.uint8 else None)
    data.tofile(os.path.join(out, name + ".bin"))
    gguf.quants.dequantize(data, qt).astype(np.float32).tofile(os.path.join(out, name + ".f32"))
    manifest.append({"name": name, "type": int(qt), "shape": list(shape)})
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))
"#;

    #[test]
    fn reads_what_gguf_py_writes() {
        let Some(py) = python() else { return };
        let dir = TempDir::new("pywrite");
        run_python(&py, &dir.0, PY_WRITE, &[&dir.0]);
        let f = GgufFile::open(&dir.0.join("model.gguf")).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_offset() % 32, 0);
        let cfg = f.config().unwrap();
        assert_eq!(cfg, tiny_config());
        assert_eq!(f.rope_style(), RopeStyle::Interleaved);

        // Metadata of every type.
        let v = |k: &str| f.get(k).unwrap_or_else(|| panic!("missing {k}")).clone();
        assert_eq!(v("general.architecture"), GgufValue::from("llama"));
        assert_eq!(v("general.name"), GgufValue::from("tiny llama"));
        assert_eq!(f.get_u32("general.file_type"), Some(15));
        assert_eq!(v("test.u8"), GgufValue::U8(200));
        assert_eq!(v("test.i8"), GgufValue::I8(-100));
        assert_eq!(v("test.u16"), GgufValue::U16(60000));
        assert_eq!(v("test.i16"), GgufValue::I16(-30000));
        assert_eq!(v("test.u32"), GgufValue::U32(4_000_000_000));
        assert_eq!(v("test.i32"), GgufValue::I32(-2_000_000_000));
        assert_eq!(v("test.f32"), GgufValue::F32(1.5));
        assert_eq!(v("test.bool"), GgufValue::Bool(true));
        assert_eq!(v("test.str"), GgufValue::from("héllo 中文"));
        assert_eq!(v("test.u64"), GgufValue::U64((1 << 63) + 5));
        assert_eq!(v("test.i64"), GgufValue::I64(-(1 << 40)));
        assert_eq!(v("test.f64"), GgufValue::F64(0.1));
        assert_eq!(v("test.nested"), GgufValue::from(vec![GgufArray::I32(vec![1, 2, 3]), GgufArray::I32(vec![4])]));
        assert_eq!(v("test.floats"), GgufValue::from(vec![0.5f32, -1.5]));
        assert_eq!(f.get_f32("llama.rope.scaling.factor"), Some(4.0));

        // Tokenizer data.
        let tok = tiny_tokenizer(32);
        assert_eq!(f.tokens().unwrap(), tok.tokens);
        assert_eq!(f.scores().unwrap(), tok.scores.clone().unwrap());
        assert_eq!(f.token_types().unwrap(), tok.token_types.clone().unwrap());
        assert_eq!((f.bos_id(), f.eos_id(), f.unk_id()), (Some(1), Some(2), Some(0)));
        assert_eq!(f.add_bos(), Some(true));
        assert_eq!(f.add_eos(), None);
        assert_eq!(f.tokenizer_model(), Some("llama"));
        assert_eq!(
            f.chat_template().as_deref(),
            Some("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
        );

        // Tensors: types, dims, bytes, and decoding against gguf-py's.
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.0.join("manifest.json")).unwrap()).unwrap();
        let manifest = manifest.as_array().unwrap();
        assert_eq!(f.tensors().len(), manifest.len());
        assert_eq!(TensorId::all(&cfg).len(), manifest.len());
        let mut seen_types = std::collections::BTreeSet::new();
        for m in manifest {
            let name = m["name"].as_str().unwrap();
            let ty = m["type"].as_u64().unwrap() as u32;
            let mut dims: Vec<u64> = m["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            dims.reverse();
            let info = f.tensor_info(name).unwrap();
            assert_eq!(info.ggml_type, ty, "{name}");
            assert_eq!(info.dims, dims, "{name}");
            let bytes = std::fs::read(dir.0.join(format!("{name}.bin"))).unwrap();
            assert_eq!(&f.tensor_bytes(name).unwrap()[..], &bytes[..], "{name}");

            let id = TensorId::all(&cfg).into_iter().find(|id| format!("{}.weight", id.gguf_name()) == name).unwrap();
            let w = f.weight(id, &cfg).unwrap();
            assert_eq!(w.format.ggml_type(), ty);
            assert_eq!([w.rows, w.cols], id.expected_shape(&cfg));
            let reference: Vec<f32> = std::fs::read(dir.0.join(format!("{name}.f32")))
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let ours = w.to_f32();
            assert_eq!(ours.len(), reference.len());
            let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
            let mut worst = 0f32;
            for (a, b) in ours.iter().zip(&reference) {
                let d = (a - b).abs();
                // 1e-6 relative; values within float noise of zero are compared to the
                // tensor's scale instead.
                assert!(d <= 1e-6 * b.abs().max(scale * 1e-3), "{name}: {a} vs {b}");
                worst = worst.max(d / b.abs().max(scale * 1e-3));
            }
            println!("{name} ({}): worst relative difference {worst:e}", WeightFormat::ggml_type_name(ty));
            seen_types.insert(WeightFormat::ggml_type_name(ty));
        }
        assert_eq!(seen_types.len(), 6, "{seen_types:?}");
    }

    // ---------------------------------------------------------------- us -> gguf-py

    const PY_READ: &str = r#"
import sys, json, os
import gguf
path, out = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(path)
fields = {k: {"types": [t.name for t in f.types], "value": f.contents()} for k, f in r.fields.items()}
tensors = []
for t in r.tensors:
    with open(os.path.join(out, t.name + ".bin"), "wb") as fh:
        fh.write(t.data.tobytes())
    tensors.append({"name": t.name, "type": int(t.tensor_type), "shape": [int(x) for x in t.shape],
                    "n_bytes": int(t.n_bytes), "n_elements": int(t.n_elements)})
json.dump({"fields": fields, "tensors": tensors, "alignment": int(r.alignment), "data_offset": int(r.data_offset)},
          open(os.path.join(out, "read.json"), "w"))
"#;

    /// What gguf-py's `ReaderField` reports: the type chain and the flattened contents.
    fn py_view(v: &GgufValue) -> (Vec<&'static str>, serde_json::Value) {
        fn elem_types(a: &GgufArray, out: &mut Vec<&'static str>) {
            match a {
                GgufArray::Array(inner) => {
                    out.push("ARRAY");
                    if let Some(first) = inner.first() {
                        elem_types(first, out);
                    }
                }
                a if a.is_empty() => {}
                a => out.push(a.elem_type().name()),
            }
        }
        fn flat(a: &GgufArray, out: &mut Vec<serde_json::Value>) {
            match a {
                GgufArray::Array(inner) => inner.iter().for_each(|i| flat(i, out)),
                a => out.extend(a.to_json().as_array().unwrap().iter().cloned()),
            }
        }
        match v {
            GgufValue::Array(a) => {
                let mut types = vec!["ARRAY"];
                if !a.is_empty() {
                    match a {
                        GgufArray::Array(_) => elem_types(a, &mut types),
                        a => types.push(a.elem_type().name()),
                    }
                }
                let mut items = Vec::new();
                flat(a, &mut items);
                (types, serde_json::Value::Array(items))
            }
            v => (vec![v.ty().name()], v.to_json()),
        }
    }

    fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (a, b) {
            (J::Number(x), J::Number(y)) if x.is_f64() || y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
            }
            (J::Array(x), J::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_close(a, b)),
            _ => a == b,
        }
    }

    #[test]
    fn gguf_py_reads_what_we_write() {
        let Some(py) = python() else { return };
        let dir = TempDir::new("pyread");
        let (w, specs, datas) = tiny_model();
        let path = dir.0.join("ours.gguf");
        w.write_file(&path, &specs, |i, s| {
            assert_eq!(s.name, specs[i].name);
            Ok(datas[i].as_slice())
        })
        .unwrap();
        let out = dir.0.join("read");
        std::fs::create_dir_all(&out).unwrap();
        run_python(&py, &dir.0, PY_READ, &[&path, &out]);
        let read: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("read.json")).unwrap()).unwrap();
        assert_eq!(read["alignment"], 32);
        assert_eq!(read["data_offset"].as_u64().unwrap() % 32, 0);

        let fields = read["fields"].as_object().unwrap();
        assert_eq!(fields["GGUF.version"]["value"], 3);
        assert_eq!(fields["GGUF.tensor_count"]["value"], specs.len());
        let mut expected: Vec<(String, GgufValue)> = w.metadata().to_vec();
        expected.push(("general.alignment".into(), GgufValue::U32(32)));
        assert_eq!(fields["GGUF.kv_count"]["value"], expected.len());
        assert_eq!(fields.len(), expected.len() + 3);
        for (k, v) in &expected {
            let got = fields.get(k).unwrap_or_else(|| panic!("gguf-py does not see `{k}`"));
            let (types, value) = py_view(v);
            let got_types: Vec<&str> = got["types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
            assert_eq!(got_types, types, "types of `{k}`");
            assert!(json_close(&got["value"], &value), "`{k}`: gguf-py reads {} but we wrote {value}", got["value"]);
        }
        // Spot checks against llama.cpp's expectations.
        assert_eq!(fields["llama.context_length"]["types"][0], "UINT32");
        assert_eq!(fields["llama.attention.layer_norm_rms_epsilon"]["types"][0], "FLOAT32");
        assert_eq!(fields["tokenizer.ggml.tokens"]["value"].as_array().unwrap().len(), 32);
        assert_eq!(fields["tokenizer.ggml.tokens"]["value"][31], "[PAD31]");

        let tensors = read["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), specs.len());
        for ((t, s), d) in tensors.iter().zip(&specs).zip(&datas) {
            assert_eq!(t["name"], s.name.as_str());
            assert_eq!(t["type"].as_u64().unwrap() as u32, s.ggml_type, "{}", s.name);
            let shape: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            assert_eq!(shape, s.dims, "{}", s.name);
            assert_eq!(t["n_bytes"].as_u64().unwrap(), s.n_bytes, "{}", s.name);
            let bytes = std::fs::read(out.join(format!("{}.bin", s.name))).unwrap();
            assert!(bytes == *d, "{}: bytes differ", s.name);
        }
    }

    // ---------------------------------------------------------------- round trip, no python

    #[test]
    fn our_writer_round_trips_through_our_reader() {
        let (w, specs, datas) = tiny_model();
        let bytes = to_bytes(&w, &specs, &datas);
        let f = parse(&bytes).unwrap();
        let mut expected = w.metadata().to_vec();
        expected.push(("general.alignment".into(), GgufValue::U32(32)));
        assert_eq!(f.metadata(), &expected[..]);
        let cfg = f.config().unwrap();
        assert_eq!(cfg, tiny_config());
        let mut tok = tiny_tokenizer(30);
        tok.tokens.extend(["[PAD30]".to_string(), "[PAD31]".to_string()]);
        tok.scores.as_mut().unwrap().extend([-1000.0, -1000.0]);
        tok.token_types.as_mut().unwrap().extend([5, 5]);
        assert_eq!(f.tokenizer().unwrap(), tok);
        assert_eq!(f.chat_template().as_deref(), Some(TEMPLATE));
        for (s, d) in specs.iter().zip(&datas) {
            let info = f.tensor_info(&s.name).unwrap();
            assert_eq!((&info.dims, info.ggml_type, info.n_bytes), (&s.dims, s.ggml_type, Some(s.n_bytes)));
            assert_eq!(info.offset % 32, 0);
            assert_eq!(&f.tensor_bytes(&s.name).unwrap()[..], &d[..]);
        }
        for id in TensorId::all(&cfg) {
            let wd = f.weight(id, &cfg).unwrap();
            assert_eq!(wd.format, format_for(id));
        }
        // Tensors are views into the parsed blob, not copies.
        let blob = Blob::from_vec(bytes.clone());
        let f = GgufFile::parse(blob.clone(), Path::new("mem.gguf")).unwrap();
        let info = f.tensor_info("blk.0.attn_q.weight").unwrap();
        let q = f.tensor_bytes("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.as_ptr() as usize - blob.as_ptr() as usize, f.data_offset() + info.offset as usize);
    }

    #[test]
    fn model_files_open_gguf_paths() {
        let dir = TempDir::new("modelfiles");
        let (w, specs, datas) = tiny_model();
        let path = dir.0.join("Tiny.Q4_K_M.GGUF");
        w.write_file(&path, &specs, |i, _| Ok(datas[i].clone())).unwrap();
        let files = super::super::source::ModelFiles::open(&path).unwrap();
        assert_eq!(files.config, tiny_config());
        assert_eq!(files.rope_style, RopeStyle::Interleaved);
        assert!(files.gguf().is_some());
        assert_eq!(files.gguf().unwrap().tokens().unwrap().len(), 32);
        let wq = files.weight(TensorId::Layer(0, LayerTensor::Wq)).unwrap();
        let i = specs.iter().position(|s| s.name == "blk.0.attn_q.weight").unwrap();
        assert_eq!(&wq.bytes[..], &datas[i][..]);
        assert_eq!(wq.format, WeightFormat::Q4K);
        assert!(files.total_bytes() > 0);
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = TempDir::new("failwrite");
        let (w, specs, datas) = tiny_model();
        let path = dir.0.join("out.gguf");
        let r = w.write_file(&path, &specs, |i, s| {
            if i == 3 { Err(Error::load(&s.name, "source went away")) } else { Ok(datas[i].clone()) }
        });
        assert!(r.unwrap_err().to_string().contains("source went away"));
        // Wrong byte counts are refused too.
        let r = w.write_file(&path, &specs, |i, _| Ok(datas[i][1..].to_vec()));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("token_embd.weight") && e.contains("bytes"), "{e}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0, "temporary files were left behind");
        // A bad spec is refused before any file is created.
        let mut bad = specs.clone();
        bad[0].n_bytes += 1;
        let e = w.write_file(&path, &bad, |i, _| Ok(datas[i].clone())).unwrap_err().to_string();
        assert!(e.contains("token_embd.weight"), "{e}");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    }

    #[test]
    fn permute_matches_llama_cpp_reshape() {
        // w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols), one byte per row.
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rows_for_gguf(&rows, 1, 2, 4), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permute_rows_for_gguf(&rows, 1, 1, 8), vec![0, 4, 1, 5, 2, 6, 3, 7]);
        let wide: Vec<u8> = (0..16).collect();
        assert_eq!(permute_rows_for_gguf(&wide, 2, 2, 4), vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
    }

    // ---------------------------------------------------------------- errors

    /// A small file: a few keys, a vocabulary, and three tensors whose last one ends the file.
    fn small_file() -> (Vec<u8>, Vec<GgufTensorSpec>) {
        let mut w = GgufWriter::new();
        w.set("general.architecture", "llama").set("test.u32", 7u32).set("test.str", "hello");
        w.set("tokenizer.ggml.tokens", vocab(20));
        let specs = vec![
            GgufTensorSpec::new("a.weight", vec![32, 2], 8, 68),
            GgufTensorSpec::new("b.weight", vec![5], 0, 20),
            GgufTensorSpec::new("c.weight", vec![16], 0, 64),
        ];
        let datas: Vec<Vec<u8>> = specs.iter().map(|s| (0..s.n_bytes).map(|i| i as u8).collect()).collect();
        (to_bytes(&w, &specs, &datas), specs)
    }

    #[test]
    fn bad_magic_and_versions() {
        let (bytes, _) = small_file();
        assert!(err_of(b"").contains("not a GGUF file"));
        assert!(err_of(b"GG").contains("not a GGUF file"));
        let mut b = bytes.clone();
        b[..4].copy_from_slice(b"GGML");
        assert!(err_of(&b).contains("not a GGUF file"));
        let e = err_of(b"{\"__metadata__\": {}}");
        assert!(e.contains("not a GGUF file") && e.starts_with("test.gguf: "), "{e}");
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
            assert!(parse(&bytes[..cut]).is_err(), "a file cut at byte {cut} parsed");
        }
        // The messages say what was being read.
        let e = err_of(&bytes[..12]);
        assert!(e.contains("truncated") && e.contains("header"), "{e}");
        let key = bytes.windows(8).position(|w| w == b"test.str").unwrap();
        let e = err_of(&bytes[..key + 14]);
        assert!(e.contains("truncated") && e.contains("metadata `test.str`"), "{e}");
        let tok = bytes.windows(6).position(|w| w == b"<0x0A>").unwrap();
        let e = err_of(&bytes[..tok + 2]);
        assert!(e.contains("truncated") && e.contains("tokenizer.ggml.tokens"), "{e}");
        let info = bytes.windows(8).position(|w| w == b"b.weight").unwrap();
        let e = err_of(&bytes[..info + 10]);
        assert!(e.contains("truncated") && e.contains("tensor `b.weight`"), "{e}");
        let e = err_of(&bytes[..f.data_offset() + 10]);
        assert!(e.contains("a.weight") && e.contains("past the end"), "{e}");
        let e = err_of(&bytes[..bytes.len() - 1]);
        assert!(e.contains(&specs[2].name) && e.contains("past the end"), "{e}");
    }

    /// Position of tensor `name`'s offset field in the tensor infos.
    fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
        let p = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
        p + name.len() + 4 + 8 * n_dims + 4
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
            assert!(e.contains("tensor `b.weight`") && e.contains("past the end"), "{off}: {e}");
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
            assert!(e.contains("metadata `k`") && (e.contains("claims") || e.contains("truncated")), "{e}");
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
        let at = b.windows(17).position(|w| w == b"general.alignment").unwrap() + 17 + 4;
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
    fn unsupported_tensor_types_are_named() {
        let cfg = tiny_config();
        let (w, mut specs, mut datas) = tiny_model();
        let i = specs.iter().position(|s| s.name == "blk.0.attn_q.weight").unwrap();
        specs[i].ggml_type = 13; // Q5_K: 176 bytes per 256 weights
        specs[i].n_bytes = 256 * 256 / 256 * 176;
        datas[i] = vec![0; specs[i].n_bytes as usize];
        let f = parse(&to_bytes(&w, &specs, &datas)).unwrap();
        let e = weight_err(f.weight(TensorId::Layer(0, LayerTensor::Wq), &cfg));
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("Q5_K"), "{e}");
        // ModelFiles-level config still loads; other tensors still work.
        assert!(f.weight(TensorId::Layer(0, LayerTensor::Wk), &cfg).is_ok());

        // A type id ggml does not define: parsed, but refused on use.
        let mut b = to_bytes(&w, &specs, &datas);
        let at = offset_field(&b, "blk.0.attn_q.weight", 2) - 4;
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        let f = parse(&b).unwrap();
        let e = weight_err(f.weight(TensorId::Layer(0, LayerTensor::Wq), &cfg));
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("type 99"), "{e}");
    }

    #[test]
    fn config_errors_are_clear() {
        let cfg = tiny_config();
        let (w, specs, datas) = tiny_model();
        let with = |f: &dyn Fn(&mut GgufWriter)| {
            let mut w = w.clone();
            f(&mut w);
            parse(&to_bytes(&w, &specs, &datas)).unwrap().config()
        };
        let e = with(&|w| {
            w.set("general.architecture", "falcon");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported architecture `falcon`"), "{e}");
        let e = with(&|w| {
            w.set("llama.rope.scaling.type", "yarn");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported rope scaling `yarn`"), "{e}");
        let e = with(&|w| {
            w.remove("llama.block_count");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("`llama.block_count` is missing"), "{e}");
        let e = with(&|w| {
            w.set("llama.embedding_length", "big");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("`llama.embedding_length` should be a non-negative integer, found STRING"), "{e}");
        let e = with(&|w| {
            w.set("llama.attention.head_count", 1u64 << 60);
            w.set("llama.attention.head_count_kv", 1u64 << 60);
            w.remove("llama.rope.dimension_count");
            w.set("llama.attention.key_length", 64u32);
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("absurd"), "{e}");
        let e = with(&|w| {
            w.set("llama.block_count", 1u64 << 40);
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("1099511627776 layers"), "{e}");
        // Defaults: no kv head count, no freq base, no scaling, vocab from the tokens.
        let c = with(&|w| {
            w.remove("llama.attention.head_count_kv");
            w.remove("llama.rope.freq_base");
            w.remove("llama.rope.scaling.type");
            w.remove("llama.rope.scaling.factor");
            w.remove("llama.vocab_size");
            w.remove("llama.rope.dimension_count");
            w.remove("tokenizer.ggml.bos_token_id");
        })
        .unwrap();
        assert_eq!((c.n_kv_heads, c.rope_theta, c.rope_scaling), (4, 10000.0, RopeScaling::None));
        assert_eq!((c.vocab_size, c.head_dim, c.bos_id), (32, 64, Some(1)));
        // Tied embeddings: no output.weight.
        let n = specs.len() - 1;
        assert_eq!(specs[n].name, "output.weight");
        let f = parse(&to_bytes(&w, &specs[..n], &datas[..n])).unwrap();
        assert!(f.config().unwrap().tie_embeddings);
        // Shapes are checked against the metadata.
        let mut w2 = w.clone();
        w2.set("llama.vocab_size", 31u32);
        let f = parse(&to_bytes(&w2, &specs, &datas)).unwrap();
        let c2 = f.config().unwrap();
        let e = weight_err(f.weight(TensorId::Embed, &c2));
        assert!(e.contains("token_embd.weight") && e.contains("[256, 32]") && e.contains("[256, 31]"), "{e}");
        let f = parse(&to_bytes(&w, &specs, &datas)).unwrap();
        let e = weight_err(f.weight(TensorId::Layer(3, LayerTensor::Wq), &cfg));
        assert!(e.contains("`blk.3.attn_q.weight` is missing"), "{e}");
        // Dynamic NTK scaling cannot be written.
        let mut dynamic = cfg.clone();
        dynamic.rope_scaling = RopeScaling::Dynamic { factor: 8.0, original_max: 4096 };
        assert!(GgufWriter::llama(&dynamic, "x", 1, None, None).is_err());
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
                let _ = f.tokenizer();
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
        let keys_end = bytes.windows(21).position(|w| w == b"tokenizer.ggml.tokens").unwrap();
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
