//! End-to-end tests of the format against its reference implementation: files gguf-py
//! writes are read here (metadata of every type, the vocabulary, every tensor decoded to
//! gguf-py's values), files written here are read back by gguf-py (same keys, types and
//! bytes), and our writer round-trips through our reader and `ModelFiles`. The gguf-py
//! tests are skipped when no Python with `gguf` is found (`YANGTUO_PYTHON`).

use super::fixtures::*;
use super::{GgufArray, GgufFile, GgufValue};
use crate::weights::{Blob, LayerTensor, RopeStyle, TensorId, WeightFormat};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let out = Command::new(py)
        .arg(&file)
        .args(args)
        .output()
        .expect("cannot run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert_eq!(
        v("test.nested"),
        GgufValue::from(vec![GgufArray::I32(vec![1, 2, 3]), GgufArray::I32(vec![4])])
    );
    assert_eq!(v("test.floats"), GgufValue::from(vec![0.5f32, -1.5]));
    assert_eq!(f.get_f32("llama.rope.scaling.factor"), Some(4.0));

    // Tokenizer data.
    let tok = tiny_tokenizer(32);
    assert_eq!(f.tokens().unwrap(), tok.tokens);
    assert_eq!(f.scores().unwrap(), tok.scores.clone().unwrap());
    assert_eq!(f.token_types().unwrap(), tok.token_types.clone().unwrap());
    assert_eq!(
        (f.bos_id(), f.eos_id(), f.unk_id()),
        (Some(1), Some(2), Some(0))
    );
    assert_eq!(f.add_bos(), Some(true));
    assert_eq!(f.add_eos(), None);
    assert_eq!(f.tokenizer_model(), Some("llama"));
    assert_eq!(
        f.chat_template().as_deref(),
        Some("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    );

    // Tensors: types, dims, bytes, and decoding against gguf-py's.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("manifest.json")).unwrap())
            .unwrap();
    let manifest = manifest.as_array().unwrap();
    assert_eq!(f.tensors().len(), manifest.len());
    assert_eq!(TensorId::all(&cfg).len(), manifest.len());
    let mut seen_types = std::collections::BTreeSet::new();
    for m in manifest {
        let name = m["name"].as_str().unwrap();
        let ty = m["type"].as_u64().unwrap() as u32;
        let mut dims: Vec<u64> = m["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        dims.reverse();
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type, ty, "{name}");
        assert_eq!(info.dims, dims, "{name}");
        let bytes = std::fs::read(dir.0.join(format!("{name}.bin"))).unwrap();
        assert_eq!(&f.tensor_bytes(name).unwrap()[..], &bytes[..], "{name}");

        let id = TensorId::all(&cfg)
            .into_iter()
            .find(|id| format!("{}.weight", id.gguf_name()) == name)
            .unwrap();
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
        println!(
            "{name} ({}): worst relative difference {worst:e}",
            WeightFormat::ggml_type_name(ty)
        );
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
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_close(a, b))
        }
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
        let got = fields
            .get(k)
            .unwrap_or_else(|| panic!("gguf-py does not see `{k}`"));
        let (types, value) = py_view(v);
        let got_types: Vec<&str> = got["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(got_types, types, "types of `{k}`");
        assert!(
            json_close(&got["value"], &value),
            "`{k}`: gguf-py reads {} but we wrote {value}",
            got["value"]
        );
    }
    // Spot checks against llama.cpp's expectations.
    assert_eq!(fields["llama.context_length"]["types"][0], "UINT32");
    assert_eq!(
        fields["llama.attention.layer_norm_rms_epsilon"]["types"][0],
        "FLOAT32"
    );
    assert_eq!(
        fields["tokenizer.ggml.tokens"]["value"]
            .as_array()
            .unwrap()
            .len(),
        32
    );
    assert_eq!(fields["tokenizer.ggml.tokens"]["value"][31], "[PAD31]");

    let tensors = read["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), specs.len());
    for ((t, s), d) in tensors.iter().zip(&specs).zip(&datas) {
        assert_eq!(t["name"], s.name.as_str());
        assert_eq!(
            t["type"].as_u64().unwrap() as u32,
            s.ggml_type,
            "{}",
            s.name
        );
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
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
    tok.tokens
        .extend(["[PAD30]".to_string(), "[PAD31]".to_string()]);
    tok.scores.as_mut().unwrap().extend([-1000.0, -1000.0]);
    tok.token_types.as_mut().unwrap().extend([5, 5]);
    // The vocabulary, key by key: what `tokenizer` builds a `Tokenizer` from.
    assert_eq!(f.tokenizer_model(), Some(tok.model.as_str()));
    assert_eq!(f.tokens().unwrap(), tok.tokens);
    assert_eq!((f.scores(), f.token_types()), (tok.scores, tok.token_types));
    assert_eq!(
        (f.bos_id(), f.eos_id(), f.unk_id(), f.pad_id()),
        (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id)
    );
    assert_eq!((f.add_bos(), f.add_eos()), (tok.add_bos, tok.add_eos));
    assert_eq!(f.chat_template().as_deref(), Some(TEMPLATE));
    for (s, d) in specs.iter().zip(&datas) {
        let info = f.tensor_info(&s.name).unwrap();
        assert_eq!(
            (&info.dims, info.ggml_type, info.n_bytes),
            (&s.dims, s.ggml_type, Some(s.n_bytes))
        );
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
    assert_eq!(
        q.as_ptr() as usize - blob.as_ptr() as usize,
        f.data_offset() + info.offset as usize
    );
}

#[test]
fn model_files_open_gguf_paths() {
    let dir = TempDir::new("modelfiles");
    let (w, specs, datas) = tiny_model();
    let path = dir.0.join("Tiny.Q4_K_M.GGUF");
    w.write_file(&path, &specs, |i, _| Ok(datas[i].clone()))
        .unwrap();
    let files = crate::weights::source::ModelFiles::open(&path).unwrap();
    assert_eq!(files.config, tiny_config());
    assert_eq!(files.rope_style, RopeStyle::Interleaved);
    assert!(files.gguf().is_some());
    assert_eq!(files.gguf().unwrap().tokens().unwrap().len(), 32);
    let wq = files.weight(TensorId::Layer(0, LayerTensor::Wq)).unwrap();
    let i = specs
        .iter()
        .position(|s| s.name == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(&wq.bytes[..], &datas[i][..]);
    assert_eq!(wq.format, WeightFormat::Q4K);
    assert!(files.total_bytes() > 0);
}
