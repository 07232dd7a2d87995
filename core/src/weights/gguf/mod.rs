//! GGUF (llama.cpp's model format), versions 2 and 3, little-endian: reader and writer.
//!
//! The reader parses from a [`Blob`](crate::weights::Blob) (a memory-mapped file on native
//! targets, a byte vector in a browser); tensors are sub-slices of that blob, never copied.
//! Every count and length in the file is checked against the bytes that remain before
//! anything is allocated, so a truncated or corrupt file gives an
//! [`Error::ModelLoad`](crate::Error::ModelLoad) naming what was being read, never a panic or
//! a huge allocation.
//!
//! The writer streams: tensor infos (names, dims, types, byte lengths) are given up front,
//! then each tensor's bytes are asked for one at a time, so a whole model is never held in
//! memory. Files go to a temporary name in the same folder and are renamed at the end.
//! Only [`GgufFile::open`] and [`GgufWriter::write_file`] touch the file system, so the
//! rest works in browsers too.
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
//!
//! The pieces. `value`, `read` and `write` are the format alone; what the `llama.*` and
//! `tokenizer.ggml.*` keys and the tensor names mean is in `llama` and `vocab`.
//! - `value.rs`: metadata values ([`GgufType`], [`GgufValue`], [`GgufArray`]) and their
//!   conversions from Rust types and to integers, floats, strings and JSON.
//! - `read.rs`: [`GgufFile`]: parsing and validating header, metadata and tensor infos;
//!   metadata lookups; tensor bytes.
//! - `write.rs`: [`GgufWriter`] and [`GgufTensorSpec`]: metadata serialization and the
//!   streaming, atomic file writer.
//! - `llama.rs`: a llama model both ways: [`GgufFile::config`] / [`GgufWriter::llama`],
//!   model tensors by llama.cpp name ([`GgufFile::weight`], [`GgufTensorSpec::weight`]),
//!   `general.file_type` ([`llama_file_type`]) and the Q/K row order of llama.cpp's
//!   converter ([`permute_rows_for_gguf`]).
//! - `vocab.rs`: the SentencePiece vocabulary: one accessor per `tokenizer.ggml.*` key,
//!   [`tokenizer()`] (the one way to get a [`Tokenizer`](crate::tokenizer::Tokenizer) from a
//!   file) and [`GgufTokenizer`] (the vocabulary the writer stores).
//!
//! This file holds what the reader and the writer share: the format's limits and the byte
//! size of ggml tensors. Unit tests sit with the code they test; `interop.rs` holds the
//! end-to-end tests (against gguf-py, and writer to reader) and `fixtures.rs` the shared
//! test model.

mod llama;
mod read;
mod value;
mod vocab;
mod write;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod fixtures;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod interop;

pub use llama::{file_type, llama_file_type, permute_rows_for_gguf};
pub use read::{GgufFile, GgufTensorInfo};
pub use value::{GgufArray, GgufType, GgufValue};
pub use vocab::{GgufTokenizer, tokenizer};
pub use write::{GgufTensorSpec, GgufWriter};

use super::WeightFormat;
use crate::Result;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent, and the one the writer uses.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// llama.cpp refuses tensor names of `GGML_MAX_NAME` (64) bytes or more.
pub const MAX_TENSOR_NAME: usize = 63;

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
    let (be, bb) = ggml_block_size(ggml_type).ok_or_else(|| {
        format!(
            "has unknown ggml type {}",
            WeightFormat::ggml_type_name(ggml_type)
        )
    })?;
    let mut n: u64 = 1;
    for d in dims {
        n = n
            .checked_mul(*d)
            .ok_or_else(|| format!("has dims {dims:?} whose element count overflows"))?;
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % be != 0 {
        return Err(format!(
            "has rows of {ne0} weights, not a whole number of {}-weight {} blocks",
            be,
            WeightFormat::ggml_type_name(ggml_type)
        ));
    }
    (n / be)
        .checked_mul(bb)
        .ok_or_else(|| format!("has dims {dims:?} whose byte size overflows"))
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}
