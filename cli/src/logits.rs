//! `yangtuo logits --model DIR --ids 1,5,9 --out FILE.npy`: float32 `[n_ids, vocab]`, the
//! logits after every position.

use crate::args::{ModelArgs, parse_ids};
use std::io::Write;
use std::path::PathBuf;
use yangtuo::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long)]
    ids: String,
    /// Output .npy file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let ids = parse_ids(&a.ids)?;
    let r = crate::progress::load_runner(&a.model)?;
    let vocab = r.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::arg(
            "ids",
            format!("token id {bad} is out of range for vocab size {vocab}"),
        ));
    }
    // logits of at most 64 MiB per read, so any vocabulary fits the device's bindings
    let rows = (64usize << 20) / (vocab * 4);
    let chunk = rows.clamp(1, 512);
    let mut s = r.new_state(ids.len(), chunk, chunk)?;
    let mut all = Vec::with_capacity(ids.len() * vocab);
    for (i, part) in ids.chunks(chunk).enumerate() {
        r.forward(&mut s, part, i * chunk, part.len())?;
        all.extend(pollster::block_on(r.logits(&s, part.len()))?);
    }
    write_npy(&a.out, &all, ids.len(), vocab)
}

/// NumPy .npy v1.0, little-endian float32, C order.
fn write_npy(path: &PathBuf, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64
    let total = (10 + header.len() + 1).next_multiple_of(64);
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut bytes = Vec::with_capacity(total + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&bytes).map_err(|e| Error::io(path, e))
}
