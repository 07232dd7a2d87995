//! GPTQ 4-bit checkpoints as AutoGPTQ writes them (e.g. `FlagAlpha/Llama2-Chinese-13b-Chat-4bit`),
//! computed packed: each linear layer is repacked on load, one tensor at a time, into
//! `WeightFormat::Gptq4` blocks, never into a float copy.
//!
//! On disk, for each linear layer `P` (`model.layers.N.self_attn.q_proj`, ...), with
//! `out × in` the float weight's shape and `G` the number of groups:
//!   `P.qweight` i32 `[in/8, out]`: eight 4-bit q per word along the input, low nibble first
//!   `P.qzeros`  i32 `[G, out/8]`:  eight 4-bit zeros per word along the output
//!   `P.scales`  f16 `[G, out]`
//!   `P.g_idx`   i32 `[in]`:        the group of each input column
//! and `W[o, i] = scales[g, o] · (q[i, o] − (zero[g, o] + 1))` with `g = g_idx[i]` (AutoGPTQ's
//! "v1" format stores zeros minus one; `checkpoint_format: gptq_v2` stores them as they are).
//!
//! Repacked: the columns are stably sorted by group (`perm`), so with `desc_act` each group
//! is contiguous, and every output row becomes `in/32` blocks of `(d, z, 16 nibble bytes)`
//! over the sorted columns. The matrix carries `perm`; backends gather `x[perm]` before the
//! product. Without `desc_act` (`g_idx[i] = i / group_size`) the sort is the identity and no
//! permutation is stored. Embeddings, norms and unquantized layers pass through as floats.

use super::safetensors::{RawTensor, SafetensorsFiles};
use super::source::float_weight;
use super::{Blob, RopeStyle, TensorId, WeightData, WeightFormat};
use crate::weights::builder::WeightSource;
use crate::{Config, Error, Result};
use candle_core::utils::barrier_pool;
use half::f16;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// `quantize_config.json` (or `quantization_config` in `config.json`), as far as it matters.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqConfig {
    pub bits: u32,
    /// Input columns per group; `None` is AutoGPTQ's `-1`, one group over the whole input.
    pub group_size: Option<usize>,
    pub desc_act: bool,
    pub sym: bool,
    /// Added to each stored zero nibble: 1 for AutoGPTQ's v1 format, 0 for `gptq_v2`.
    pub zero_offset: u32,
    /// Where it was read from (for messages); the folder itself when inferred from tensors.
    pub origin: PathBuf,
}

impl GptqConfig {
    /// The GPTQ config of a folder: `quantize_config.json`, else `config.json`'s
    /// `quantization_config` with `quant_method: gptq`, else, if the folder holds `.qweight`
    /// tensors, AutoGPTQ's defaults for 4-bit (group size taken from the tensors). `None`
    /// for a float checkpoint.
    pub fn find(dir: &Path, files: &SafetensorsFiles) -> Result<Option<GptqConfig>> {
        let qc = dir.join("quantize_config.json");
        if qc.exists() {
            let text = crate::files::read_text(&qc, crate::files::JSON_CAP)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::load(&qc, format!("invalid JSON: {e}")))?;
            return Self::from_json(&v, &qc).map(Some);
        }
        let cfg = dir.join("config.json");
        if let Ok(text) = crate::files::read_text(&cfg, crate::files::JSON_CAP) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(q) = v.get("quantization_config").filter(|q| q.is_object()) {
                match q.get("quant_method").and_then(|m| m.as_str()) {
                    Some("gptq") => return Self::from_json(q, &cfg).map(Some),
                    Some("awq") => {
                        return Err(Error::load(
                            &cfg,
                            "AWQ checkpoints are not supported (only GPTQ 4-bit and GGUF)",
                        ));
                    }
                    _ => {}
                }
            }
        }
        if files.names().any(|n| n.ends_with(".qweight")) {
            log::warn!(
                "{}: `.qweight` tensors but no quantize_config.json; assuming AutoGPTQ 4-bit (v1)",
                dir.display()
            );
            return Ok(Some(GptqConfig {
                bits: 4,
                group_size: None,
                desc_act: false,
                sym: true,
                zero_offset: 1,
                origin: dir.to_path_buf(),
            }));
        }
        Ok(None)
    }

    /// Parse and check a config: 4 bits, group size a multiple of 32 or -1, a known format.
    pub fn from_json(v: &serde_json::Value, origin: &Path) -> Result<GptqConfig> {
        let bad = |m: String| Err(Error::load(origin, m));
        if let Some(m) = v.get("quant_method").and_then(|m| m.as_str()) {
            if m != "gptq" {
                return bad(format!("quant_method `{m}` is not supported (only gptq)"));
            }
        }
        let Some(bits) = v.get("bits").and_then(|b| b.as_u64()) else {
            return bad("GPTQ config has no `bits`".into());
        };
        if bits != 4 {
            return bad(format!(
                "GPTQ checkpoints with bits = {bits} are not supported: yangtuo computes 4-bit GPTQ only"
            ));
        }
        let group_size = match v.get("group_size").and_then(|g| g.as_i64()).unwrap_or(-1) {
            -1 => None,
            g if g > 0 && g % 32 == 0 => Some(g as usize),
            g => {
                return bad(format!(
                    "GPTQ group_size {g} is not supported: it must be a multiple of 32, or -1"
                ));
            }
        };
        let flag = |k: &str, default: bool| v.get(k).and_then(|b| b.as_bool()).unwrap_or(default);
        if flag("is_marlin_format", false) {
            return bad(
                "Marlin-format GPTQ checkpoints are not supported (only AutoGPTQ's gptq format)"
                    .into(),
            );
        }
        let zero_offset = match v
            .get("checkpoint_format")
            .and_then(|f| f.as_str())
            .unwrap_or("gptq")
        {
            "gptq" => 1,
            "gptq_v2" => 0,
            other => {
                return bad(format!(
                    "GPTQ checkpoint_format `{other}` is not supported (gptq or gptq_v2)"
                ));
            }
        };
        Ok(GptqConfig {
            bits: bits as u32,
            group_size,
            desc_act: flag("desc_act", false),
            sym: flag("sym", true),
            zero_offset,
            origin: origin.to_path_buf(),
        })
    }
}

/// The four tensors of one quantized linear layer, checked against each other and the config.
struct Layer<'a> {
    prefix: String,
    rows: usize,
    cols: usize,
    groups: usize,
    qweight: &'a RawTensor,
    qzeros: &'a RawTensor,
    scales: &'a RawTensor,
    g_idx: Option<&'a RawTensor>,
}

/// A GPTQ folder: safetensors plus the quantization config. A `WeightSource` that repacks
/// each quantized layer when it is requested.
pub struct GptqFiles {
    dir: PathBuf,
    files: SafetensorsFiles,
    pub quant: GptqConfig,
    config: Config,
}

fn word(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([
        bytes[4 * i],
        bytes[4 * i + 1],
        bytes[4 * i + 2],
        bytes[4 * i + 3],
    ])
}

/// A pointer to the output that worker threads share; each writes its own rows.
#[derive(Clone, Copy)]
struct SharedBytes(*mut u8);
unsafe impl Send for SharedBytes {}
unsafe impl Sync for SharedBytes {}
impl SharedBytes {
    /// SAFETY: callers write disjoint ranges from different threads.
    unsafe fn slice(self, start: usize, len: usize) -> &'static mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

impl GptqFiles {
    /// Wrap an opened folder, checking every quantized layer's tensors (names, dtypes,
    /// shapes) up front, so a bad checkpoint fails before anything is uploaded.
    pub fn open(
        dir: &Path,
        files: SafetensorsFiles,
        quant: GptqConfig,
        config: &Config,
    ) -> Result<Self> {
        let g = GptqFiles {
            dir: dir.to_path_buf(),
            files,
            quant,
            config: config.clone(),
        };
        if g.files.get("model.embed_tokens.qweight").is_some() {
            return Err(Error::load(
                dir,
                "quantized embeddings (`model.embed_tokens.qweight`) are not supported",
            ));
        }
        let mut any = false;
        for id in TensorId::all(config) {
            let quantized = g.layer(id)?.is_some();
            let p = id.hf_name();
            if !quantized
                && matches!(id, TensorId::Layer(..))
                && !id.is_vector()
                && g.files.get(&format!("{p}.weight")).is_none()
            {
                return Err(Error::load(
                    dir,
                    format!("tensor `{p}.qweight` is missing (and there is no float `{p}.weight`)"),
                ));
            }
            any |= quantized;
        }
        if !any {
            return Err(Error::load(
                dir,
                "GPTQ config found, but no `.qweight` tensors for any Llama linear layer",
            ));
        }
        log::info!(
            "GPTQ {}-bit, group size {}, desc_act {}, sym {} ({})",
            g.quant.bits,
            g.quant
                .group_size
                .map_or("-1".to_string(), |s| s.to_string()),
            g.quant.desc_act,
            g.quant.sym,
            g.quant.origin.display()
        );
        Ok(g)
    }

    fn err(&self, t: Option<&RawTensor>, msg: String) -> Error {
        Error::load(t.map_or(self.dir.as_path(), |t| t.file.as_path()), msg)
    }

    /// The quantized tensors of `id`, checked; `None` if `id` is stored as a float tensor.
    fn layer(&self, id: TensorId) -> Result<Option<Layer<'_>>> {
        if id.is_vector() || id == TensorId::Embed {
            return Ok(None);
        }
        let prefix = id.hf_name();
        let Some(qweight) = self.files.get(&format!("{prefix}.qweight")) else {
            return Ok(None);
        };
        let [rows, cols] = id.expected_shape(&self.config);
        let need = |s: &str| {
            self.files.get(&format!("{prefix}.{s}")).ok_or_else(|| {
                self.err(
                    Some(qweight),
                    format!("tensor `{prefix}.{s}` is missing (`{prefix}.qweight` is present)"),
                )
            })
        };
        let (qzeros, scales) = (need("qzeros")?, need("scales")?);
        let g_idx = self.files.get(&format!("{prefix}.g_idx"));
        let check = |t: &RawTensor,
                     suffix: &str,
                     dtypes: &[Dtype],
                     shape: &[usize]|
         -> Result<()> {
            if !dtypes.contains(&t.dtype) {
                return Err(self.err(
                    Some(t),
                    format!(
                        "tensor `{prefix}.{suffix}` has dtype {:?}, expected {:?}",
                        t.dtype, dtypes[0]
                    ),
                ));
            }
            if t.shape != shape {
                return Err(self.err(
                    Some(t),
                    format!("tensor `{prefix}.{suffix}` has shape {:?} but config.json implies {shape:?}", t.shape),
                ));
            }
            Ok(())
        };
        if cols % 32 != 0 || rows % 8 != 0 {
            return Err(self.err(
                Some(qweight),
                format!(
                    "`{prefix}` is [{rows}, {cols}]: GPTQ 4-bit needs in % 32 == 0 and out % 8 == 0"
                ),
            ));
        }
        if qweight.shape.len() == 2 && qweight.shape[1] == rows && qweight.shape[0] * 8 != cols {
            let bits = (qweight.shape[0] * 32).checked_div(cols).unwrap_or(0);
            if qweight.shape[0] * 32 == bits * cols && bits != 4 {
                return Err(self.err(
                    Some(qweight),
                    format!("tensor `{prefix}.qweight` is packed {bits}-bit; yangtuo computes 4-bit GPTQ only"),
                ));
            }
        }
        check(
            qweight,
            "qweight",
            &[Dtype::I32, Dtype::U32],
            &[cols / 8, rows],
        )?;
        let groups = scales.shape.first().copied().unwrap_or(0);
        check(scales, "scales", &[Dtype::F16], &[groups, rows])?;
        check(
            qzeros,
            "qzeros",
            &[Dtype::I32, Dtype::U32],
            &[groups, rows / 8],
        )?;
        let want_groups = self.quant.group_size.map_or(1, |s| cols.div_ceil(s));
        let inferred = self.quant.origin == self.dir;
        if groups == 0 || (!inferred && groups != want_groups) {
            return Err(self.err(
                Some(scales),
                format!(
                    "tensor `{prefix}.scales` has {groups} groups, but {cols} columns in groups of {} make {want_groups}",
                    self.quant.group_size.map_or("-1 (all)".to_string(), |s| s.to_string())
                ),
            ));
        }
        match g_idx {
            Some(t) => check(t, "g_idx", &[Dtype::I32], &[cols])?,
            None if self.quant.desc_act => {
                return Err(self.err(Some(qweight), format!("tensor `{prefix}.g_idx` is missing")));
            }
            None => {}
        }
        if let Some(b) = self.files.get(&format!("{prefix}.bias")) {
            let zero = match b.dtype {
                Dtype::F16 | Dtype::BF16 => b
                    .bytes
                    .chunks_exact(2)
                    .all(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7fff) == 0),
                Dtype::F32 => b
                    .bytes
                    .chunks_exact(4)
                    .all(|c| (word(c, 0) & 0x7fff_ffff) == 0),
                _ => false,
            };
            if !zero {
                return Err(self.err(
                    Some(b),
                    format!(
                        "tensor `{prefix}.bias` is non-zero: Llama's linear layers have no bias"
                    ),
                ));
            }
        }
        Ok(Some(Layer {
            prefix,
            rows,
            cols,
            groups,
            qweight,
            qzeros,
            scales,
            g_idx,
        }))
    }

    /// Repack one layer into `Gptq4` blocks over group-sorted columns.
    fn repack(&self, l: &Layer) -> Result<WeightData> {
        let (rows, cols) = (l.rows, l.cols);
        // the group of every input column
        let g_idx: Vec<u32> = match l.g_idx {
            Some(t) => (0..cols).map(|i| word(&t.bytes, i)).collect(),
            None => {
                let gs = self.quant.group_size.unwrap_or(cols / l.groups).max(1);
                (0..cols).map(|i| (i / gs) as u32).collect()
            }
        };
        if let Some(i) = g_idx.iter().position(|&g| g as usize >= l.groups) {
            return Err(self.err(
                l.g_idx,
                format!(
                    "tensor `{}.g_idx` puts column {i} in group {} of {}",
                    l.prefix, g_idx[i] as i32, l.groups
                ),
            ));
        }
        // stable sort by group: each group's columns become contiguous
        let mut perm: Vec<u32> = (0..cols as u32).collect();
        perm.sort_by_key(|&c| g_idx[c as usize]);
        let mut block_group = Vec::with_capacity(cols / 32);
        for (b, blk) in perm.chunks_exact(32).enumerate() {
            let g = g_idx[blk[0] as usize];
            if blk.iter().any(|&c| g_idx[c as usize] != g) {
                return Err(self.err(
                    l.g_idx,
                    format!(
                        "tensor `{}.g_idx`: sorted columns {}..{} span several groups; group sizes must be multiples of 32",
                        l.prefix,
                        32 * b,
                        32 * b + 32
                    ),
                ));
            }
            block_group.push(g as usize);
        }
        // where each input column's nibble goes in a repacked row: byte offset and shift
        let mut slot = vec![(0u32, 0u8); cols];
        for (s, &c) in perm.iter().enumerate() {
            let j = s % 32;
            slot[c as usize] = (
                ((s / 32) * 20 + 4 + j % 16) as u32,
                if j >= 16 { 4 } else { 0 },
            );
        }
        let rb = cols / 32 * 20;
        let mut out = vec![0u8; rows * rb];
        let dst = SharedBytes(out.as_mut_ptr());
        let (qw, qz, sc) = (
            &l.qweight.bytes[..],
            &l.qzeros.bytes[..],
            &l.scales.bytes[..],
        );
        let zero_offset = self.quant.zero_offset;
        const TILE: usize = 32;
        let fill = |t: usize| {
            let (r0, r1) = (t * TILE, ((t + 1) * TILE).min(rows));
            // SAFETY: tile t alone writes rows r0..r1 of `out`, which outlives the pool call.
            let tile = unsafe { dst.slice(r0 * rb, (r1 - r0) * rb) };
            // block headers: d from scales, z from the packed zeros (+1 in the v1 format)
            for (i, o) in (r0..r1).enumerate() {
                let row = &mut tile[i * rb..(i + 1) * rb];
                for (b, &g) in block_group.iter().enumerate() {
                    let zn = (word(qz, g * (rows / 8) + o / 8) >> (4 * (o % 8))) & 15;
                    let z = f16::from_f32((zn + zero_offset) as f32);
                    row[b * 20..b * 20 + 2]
                        .copy_from_slice(&sc[(g * rows + o) * 2..(g * rows + o) * 2 + 2]);
                    row[b * 20 + 2..b * 20 + 4].copy_from_slice(&z.to_le_bytes());
                }
            }
            // nibbles: qweight row k holds input columns 8k..8k+8 of every output
            for k in 0..cols / 8 {
                for (i, o) in (r0..r1).enumerate() {
                    let w = word(qw, k * rows + o);
                    let row = &mut tile[i * rb..(i + 1) * rb];
                    for n in 0..8 {
                        let (off, sh) = slot[8 * k + n];
                        row[off as usize] |= (((w >> (4 * n)) & 15) as u8) << sh;
                    }
                }
            }
        };
        barrier_pool().execute_chunked(rows.div_ceil(TILE), |ts| ts.for_each(&fill));
        let name = format!("{}.qweight", l.prefix);
        let w = WeightData::new(WeightFormat::Gptq4, rows, cols, Blob::from_vec(out), &name)?;
        if perm.iter().enumerate().all(|(i, &c)| i == c as usize) {
            Ok(w)
        } else {
            w.with_perm(perm, &name)
        }
    }

    /// One tensor: quantized layers repacked, everything else as stored.
    pub fn weight(&self, id: TensorId) -> Result<WeightData> {
        match self.layer(id)? {
            Some(l) => self.repack(&l),
            None => float_weight(&self.files, &self.dir, id, &self.config),
        }
    }

    /// The size `weight(id)` will have, without repacking anything.
    pub fn weight_bytes(&self, id: TensorId) -> Option<usize> {
        match self.layer(id).ok()? {
            Some(l) => Some(l.rows * l.cols / 32 * 20),
            None => float_weight(&self.files, &self.dir, id, &self.config)
                .ok()
                .map(|w| w.bytes.len()),
        }
    }
}

impl WeightSource for GptqFiles {
    fn config(&self) -> &Config {
        &self.config
    }
    fn rope_style(&self) -> RopeStyle {
        RopeStyle::Half
    }
    fn weight(&mut self, id: TensorId) -> Result<WeightData> {
        GptqFiles::weight(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::LayerTensor;
    use crate::weights::source::ModelFiles;
    use std::collections::HashMap;

    use crate::testing::Rng;

    /// One layer as AutoGPTQ packs it, plus the dense matrix its formula gives.
    struct Packed {
        qweight: Vec<u32>,
        qzeros: Vec<u32>,
        scales: Vec<f16>,
        g_idx: Vec<i32>,
        dense: Vec<f32>, // [rows, cols]
    }

    fn pack(
        rows: usize,
        cols: usize,
        group: Option<usize>,
        desc_act: bool,
        rng: &mut Rng,
    ) -> Packed {
        let gs = group.unwrap_or(cols);
        let groups = cols.div_ceil(gs);
        // act order: group g holds the columns at positions g·gs.. of a random permutation
        let mut order: Vec<usize> = (0..cols).collect();
        if desc_act {
            for i in (1..cols).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
        let mut g_idx = vec![0i32; cols];
        for (pos, &c) in order.iter().enumerate() {
            g_idx[c] = (pos / gs) as i32;
        }
        let q: Vec<u32> = (0..cols * rows).map(|_| rng.below(16) as u32).collect(); // [in, out]
        let zn: Vec<u32> = (0..groups * rows).map(|_| rng.below(16) as u32).collect(); // stored nibble
        let scales: Vec<f16> = (0..groups * rows)
            .map(|_| f16::from_f32(0.01 + 0.05 * rng.f32().abs()))
            .collect();
        let mut qweight = vec![0u32; cols / 8 * rows];
        for i in 0..cols {
            for o in 0..rows {
                qweight[(i / 8) * rows + o] |= q[i * rows + o] << (4 * (i % 8));
            }
        }
        let mut qzeros = vec![0u32; groups * rows / 8];
        for g in 0..groups {
            for o in 0..rows {
                qzeros[g * rows / 8 + o / 8] |= zn[g * rows + o] << (4 * (o % 8));
            }
        }
        let mut dense = vec![0f32; rows * cols];
        for o in 0..rows {
            for i in 0..cols {
                let g = g_idx[i] as usize;
                dense[o * cols + i] = scales[g * rows + o].to_f32()
                    * (q[i * rows + o] as f32 - (zn[g * rows + o] + 1) as f32);
            }
        }
        Packed {
            qweight,
            qzeros,
            scales,
            g_idx,
            dense,
        }
    }

    fn config_json(dim: usize, hidden: usize, vocab: usize) -> serde_json::Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": dim, "intermediate_size": hidden, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": vocab, "torch_dtype": "float16",
        })
    }

    /// A one-layer GPTQ folder; `skip` drops tensors by name, `quant` is quantize_config.json.
    /// Returns the dense matrices of the quantized layers by HF prefix.
    fn write_folder(
        dir: &Path,
        quant: serde_json::Value,
        group: Option<usize>,
        desc_act: bool,
        skip: &[&str],
    ) -> HashMap<String, Vec<f32>> {
        let (dim, hidden, vocab) = (64, 128, 16);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            config_json(dim, hidden, vocab).to_string(),
        )
        .unwrap();
        std::fs::write(dir.join("quantize_config.json"), quant.to_string()).unwrap();
        let cfg = crate::config::HfConfig::from_file(&dir.join("config.json")).unwrap();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![];
        let f16s = |n: usize, rng: &mut Rng| -> Vec<u8> {
            (0..n)
                .flat_map(|_| f16::from_f32(rng.f32()).to_le_bytes())
                .collect()
        };
        let mut dense = HashMap::new();
        for id in TensorId::all(&cfg) {
            let [rows, cols] = id.expected_shape(&cfg);
            let p = id.hf_name();
            if id.is_vector() {
                tensors.push((
                    format!("{p}.weight"),
                    Dtype::F16,
                    vec![cols],
                    f16s(cols, &mut rng),
                ));
            } else if matches!(id, TensorId::Embed | TensorId::Output) {
                tensors.push((
                    format!("{p}.weight"),
                    Dtype::F16,
                    vec![rows, cols],
                    f16s(rows * cols, &mut rng),
                ));
            } else {
                let pk = pack(rows, cols, group, desc_act, &mut rng);
                let groups = pk.scales.len() / rows;
                let u = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
                tensors.push((
                    format!("{p}.qweight"),
                    Dtype::I32,
                    vec![cols / 8, rows],
                    u(&pk.qweight),
                ));
                tensors.push((
                    format!("{p}.qzeros"),
                    Dtype::I32,
                    vec![groups, rows / 8],
                    u(&pk.qzeros),
                ));
                tensors.push((
                    format!("{p}.scales"),
                    Dtype::F16,
                    vec![groups, rows],
                    pk.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                ));
                tensors.push((
                    format!("{p}.g_idx"),
                    Dtype::I32,
                    vec![cols],
                    pk.g_idx.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ));
                dense.insert(p, pk.dense);
            }
        }
        tensors.retain(|t| !skip.contains(&t.0.as_str()));
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::tensor::serialize(views, None).unwrap();
        std::fs::write(dir.join("gptq_model-4bit-128g.safetensors"), bytes).unwrap();
        dense
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("yangtuo-gptq-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn quant(bits: u32, group: i64, desc_act: bool) -> serde_json::Value {
        serde_json::json!({"bits": bits, "group_size": group, "desc_act": desc_act, "sym": false, "damp_percent": 0.01})
    }

    fn open_err(dir: &Path) -> String {
        match ModelFiles::open(dir) {
            Ok(_) => panic!("{} opened", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn gptq_unpacks_to_autogptq_formula() {
        for (name, group, desc) in [
            ("g32", Some(32), false),
            ("g32-act", Some(32), true),
            ("gall", None, true),
            ("g64-act", Some(64), true),
        ] {
            let dir = temp(name);
            let dense = write_folder(
                &dir,
                quant(4, group.map_or(-1, |g| g as i64), desc),
                group,
                desc,
                &[],
            );
            let files = ModelFiles::open(&dir).unwrap();
            for t in [
                LayerTensor::Wq,
                LayerTensor::Wk,
                LayerTensor::Wo,
                LayerTensor::W1,
                LayerTensor::W2,
            ] {
                let id = TensorId::Layer(0, t);
                let w = files.weight(id).unwrap();
                assert_eq!(w.format, WeightFormat::Gptq4);
                // act order with more than one group permutes; otherwise the sort is the identity
                assert_eq!(
                    w.perm.is_some(),
                    desc && group.is_some_and(|g| g < w.cols),
                    "{name} {t:?}"
                );
                assert_eq!(w.to_f32(), dense[&id.hf_name()], "{name} {t:?}");
                let r = w.rows / 2;
                assert_eq!(
                    w.row_f32(r),
                    dense[&id.hf_name()][r * w.cols..(r + 1) * w.cols]
                );
            }
            let norm = files
                .weight(TensorId::Layer(0, LayerTensor::AttnNorm))
                .unwrap();
            assert_eq!(norm.format, WeightFormat::F16);
            assert!(files.total_bytes() > 0);
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn gptq_v2_zeros_are_stored_as_is() {
        let dir = temp("v2");
        let mut q = quant(4, 32, false);
        q["checkpoint_format"] = "gptq_v2".into();
        let dense = write_folder(&dir, q, Some(32), false, &[]);
        let files = ModelFiles::open(&dir).unwrap();
        let id = TensorId::Layer(0, LayerTensor::Wv);
        let got = files.weight(id).unwrap().to_f32();
        // v1 dense uses zero + 1; in v2 the same file means zero, so w grows by exactly d
        let w = files.weight(id).unwrap();
        let d = |r: usize, c: usize| {
            f16::from_le_bytes([
                w.bytes[r * 40 + (c / 32) * 20],
                w.bytes[r * 40 + (c / 32) * 20 + 1],
            ])
            .to_f32()
        };
        for (i, (a, b)) in got.iter().zip(&dense[&id.hf_name()]).enumerate() {
            assert_eq!(*a, b + d(i / 64, i % 64), "{i}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn gptq_8_bit_is_refused_clearly() {
        let dir = temp("bits8");
        write_folder(&dir, quant(8, 32, false), Some(32), false, &[]);
        let e = open_err(&dir);
        assert!(
            e.contains("bits = 8") && e.contains("4-bit GPTQ only"),
            "{e}"
        );
        let dir3 = temp("bits3");
        write_folder(&dir3, quant(3, 32, false), Some(32), false, &[]);
        assert!(open_err(&dir3).contains("bits = 3"));
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(dir3));
    }

    #[test]
    fn gptq_missing_qzeros_names_the_tensor() {
        let dir = temp("no-qzeros");
        write_folder(
            &dir,
            quant(4, 32, false),
            Some(32),
            false,
            &["model.layers.0.mlp.down_proj.qzeros"],
        );
        let e = open_err(&dir);
        assert!(
            e.contains("`model.layers.0.mlp.down_proj.qzeros` is missing"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn gptq_bad_configs_and_shapes_are_refused() {
        let dir = temp("group48");
        write_folder(&dir, quant(4, 48, false), Some(32), false, &[]);
        assert!(open_err(&dir).contains("group_size 48"));
        // the tensors hold groups of 32, the config says 64: shapes disagree
        let dir2 = temp("group-mismatch");
        write_folder(&dir2, quant(4, 64, false), Some(32), false, &[]);
        let e = open_err(&dir2);
        assert!(e.contains("q_proj.scales") && e.contains("groups"), "{e}");
        // config.json says a different hidden size than the tensors hold
        let dir3 = temp("shape");
        write_folder(&dir3, quant(4, 32, false), Some(32), false, &[]);
        let mut c = config_json(64, 96, 16);
        c["intermediate_size"] = 96.into();
        std::fs::write(dir3.join("config.json"), c.to_string()).unwrap();
        let e = open_err(&dir3);
        assert!(
            e.contains("gate_proj.qweight") && e.contains("config.json implies"),
            "{e}"
        );
        let mut m = quant(4, 32, false);
        m["checkpoint_format"] = "marlin".into();
        let dir4 = temp("marlin");
        write_folder(&dir4, m, Some(32), false, &[]);
        assert!(open_err(&dir4).contains("marlin"));
        for d in [dir, dir2, dir3, dir4] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn gptq_is_not_written_to_gguf() {
        let dir = temp("gguf");
        write_folder(&dir, quant(4, 32, false), Some(32), false, &[]);
        let files = ModelFiles::open(&dir).unwrap();
        let id = TensorId::Layer(0, LayerTensor::Wq);
        let Err(e) = crate::weights::quantize::quantize_weight(
            files.weight(id).unwrap(),
            WeightFormat::Q4_0,
            "q",
        ) else {
            panic!("GPTQ weights were re-quantized")
        };
        assert!(e.to_string().contains("GGUF"), "{e}");
        let e =
            crate::weights::gguf::GgufTensorSpec::weight(id, WeightFormat::Gptq4, &files.config)
                .unwrap_err();
        assert!(e.to_string().contains("not a ggml type"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The CPU backend's threaded product (with the x[perm] gather) against the dense matrix.
    #[cfg(feature = "cpu")]
    #[test]
    fn gptq_cpu_product_matches_dense() {
        use crate::backend::{Backend, cpu::Cpu};
        let dir = temp("cpu");
        let dense = write_folder(&dir, quant(4, 32, true), Some(32), true, &[]);
        let files = ModelFiles::open(&dir).unwrap();
        let id = TensorId::Layer(0, LayerTensor::W2);
        let w = files.weight(id).unwrap();
        assert!(w.perm.is_some());
        let (rows, cols, n) = (w.rows, w.cols, 5);
        let mut rng = Rng(7);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
        let m = Cpu.upload_matrix("w2", &w).unwrap();
        let mut xa = Cpu.alloc("x", n, cols).unwrap();
        Cpu.write(&mut xa, &x);
        let mut out = Cpu.alloc("out", n, rows).unwrap();
        let d = &dense[&id.hf_name()];
        for n in [1, n] {
            Cpu.matmul(&xa, n, &m, &mut out);
            let got = pollster::block_on(Cpu.read(&out, n)).unwrap();
            for t in 0..n {
                for r in 0..rows {
                    let want: f64 = (0..cols)
                        .map(|k| d[r * cols + k] as f64 * x[t * cols + k] as f64)
                        .sum();
                    assert!(
                        (got[t * rows + r] as f64 - want).abs() < 1e-5,
                        "t {t} r {r}: {} vs {want}",
                        got[t * rows + r]
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
