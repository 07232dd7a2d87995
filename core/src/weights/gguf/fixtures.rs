//! Test fixtures shared by the gguf tests: a tiny llama model as our writer writes it
//! (every tensor type yangtuo computes with, extra keys of every value type, an odd-sized
//! and a 3-D tensor), a small file for the corruption tests, and helpers to parse bytes and
//! get error messages.

use super::{
    GgufArray, GgufFile, GgufTensorSpec, GgufTokenizer, GgufWriter, llama_file_type,
    permute_rows_for_gguf,
};
use crate::config::RopeScaling;
use crate::testing::Rng;
use crate::weights::{Blob, LayerTensor, TensorId, WeightData, WeightFormat};
use crate::{Config, Result};
use std::path::{Path, PathBuf};

pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("yangtuo-gguf-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn tiny_config() -> Config {
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

pub(super) fn vocab(n: usize) -> Vec<String> {
    let mut t: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    t.extend((0..16).map(|i| format!("<0x{i:02X}>")));
    t.extend(
        ["▁the", "é", "中文", "▁a", "b", "\n", "🦙"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut i = 0;
    while t.len() < n {
        t.push(format!("tok{i}"));
        i += 1;
    }
    t.truncate(n);
    t
}

pub(super) fn tiny_tokenizer(n: usize) -> GgufTokenizer {
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

pub(super) fn format_for(id: TensorId) -> WeightFormat {
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

pub(super) const TEMPLATE: &str =
    "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}";

/// Our writer's version of a tiny llama model, plus extra keys of every type and two
/// extra tensors (an odd-sized one, to exercise padding, and a 3-D one).
pub(super) fn tiny_model() -> (GgufWriter, Vec<GgufTensorSpec>, Vec<Vec<u8>>) {
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
        .set(
            "test.nested",
            vec![GgufArray::I32(vec![1, 2, 3]), GgufArray::I32(vec![4])],
        );
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut specs = Vec::new();
    let mut datas = Vec::new();
    for id in TensorId::all(&cfg) {
        let f = format_for(id);
        let [rows, cols] = id.expected_shape(&cfg);
        let src: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
        let mut bytes = crate::weights::ggml::quantize(f, &src);
        if let TensorId::Layer(_, t @ (LayerTensor::Wq | LayerTensor::Wk)) = id {
            let heads = if t == LayerTensor::Wq {
                cfg.n_heads
            } else {
                cfg.n_kv_heads
            };
            bytes =
                permute_rows_for_gguf(&bytes, f.row_bytes(cols, "").unwrap(), heads, cfg.head_dim);
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

pub(super) fn to_bytes(w: &GgufWriter, specs: &[GgufTensorSpec], datas: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = w
        .write_to(&mut out, Path::new("mem.gguf"), specs, |i, _| Ok(&datas[i]))
        .unwrap();
    assert_eq!(n as usize, out.len());
    out
}

pub(super) fn parse(bytes: &[u8]) -> Result<GgufFile> {
    GgufFile::parse(Blob::from_vec(bytes.to_vec()), Path::new("test.gguf"))
}

pub(super) fn weight_err(r: Result<WeightData>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

pub(super) fn err_of(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// A small file: a few keys, a vocabulary, and three tensors whose last one ends the file.
pub(super) fn small_file() -> (Vec<u8>, Vec<GgufTensorSpec>) {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama")
        .set("test.u32", 7u32)
        .set("test.str", "hello");
    w.set("tokenizer.ggml.tokens", vocab(20));
    let specs = vec![
        GgufTensorSpec::new("a.weight", vec![32, 2], 8, 68),
        GgufTensorSpec::new("b.weight", vec![5], 0, 20),
        GgufTensorSpec::new("c.weight", vec![16], 0, 64),
    ];
    let datas: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| (0..s.n_bytes).map(|i| i as u8).collect())
        .collect();
    (to_bytes(&w, &specs, &datas), specs)
}

/// Position of tensor `name`'s offset field in the tensor infos.
pub(super) fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let p = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    p + name.len() + 4 + 8 * n_dims + 4
}
