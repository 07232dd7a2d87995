//! GPTQ 4-bit checkpoints, computed packed, against candle-transformers' Llama on the same
//! weights dequantized. `tests/py/make_gptq.py` quantizes a random f16 model and packs it as
//! AutoGPTQ does (qweight/qzeros/scales/g_idx, zeros stored minus one), and writes a float32
//! folder of AutoGPTQ's dequantization of those tensors: the reference the project did not
//! write the packing for. Tolerance: max|Δlogit| ≤ 1e-3·max|logit| and an identical 32-token
//! greedy continuation, on every backend.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use yangtuo::backend::{cpu::Cpu, wgpu::Wgpu};
use yangtuo::model::Model;
use yangtuo::runner::Runner;
use yangtuo::weights::source::ModelFiles;
use yangtuo::weights::{LayerTensor, TensorId, WeightFormat};
use yangtuo_tests::reference::Reference;
use yangtuo_tests::{Spec, random_ids, rel_max_err};

#[derive(Debug, Clone, Copy)]
enum Dev {
    Cpu,
    Wgpu,
    /// wgpu without shader-f16
    WgpuF32,
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
    println!("skipping: no python");
    None
}

fn load(dir: &Path, dev: Dev) -> Arc<dyn Runner> {
    let mut files = ModelFiles::open(dir).unwrap();
    let mut progress = |_: yangtuo::LoadProgress| {};
    match dev {
        Dev::Cpu => Model::load(&mut files, Cpu, 0, &mut progress)
            .unwrap()
            .into_runner(),
        Dev::Wgpu | Dev::WgpuF32 => {
            let gpu = pollster::block_on(Wgpu::with_f16(matches!(dev, Dev::Wgpu))).unwrap();
            Model::load(&mut files, gpu, 0, &mut progress)
                .unwrap()
                .into_runner()
        }
    }
}

fn logits_all(r: &dyn Runner, ids: &[u32]) -> Vec<f32> {
    let mut s = r.new_state(ids.len() + 8, ids.len(), ids.len()).unwrap();
    r.forward(&mut s, ids, 0, ids.len()).unwrap();
    pollster::block_on(r.logits(&s, ids.len())).unwrap()
}

fn greedy(r: &dyn Runner, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = r.new_state(prompt.len() + n + 1, 64, 1).unwrap();
    r.forward(&mut s, prompt, 0, 1).unwrap();
    let mut out = vec![];
    for i in 0..n {
        let next = pollster::block_on(r.argmax(&s, 0)).unwrap();
        out.push(next);
        r.forward(&mut s, &[next], prompt.len() + i, 1).unwrap();
    }
    out
}

fn spec(seed: u64) -> Spec {
    Spec {
        hidden: 256,
        intermediate: 512,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 500,
        dtype: safetensors::Dtype::F16,
        seed,
        ..Spec::default()
    }
}

/// Quantize `spec`'s random model with make_gptq.py, then run every backend on the GPTQ
/// folder against the reference on the dequantized one.
fn check(name: &str, group_size: i64, desc_act: bool, sym: bool, seed: u64) {
    let Some(py) = python() else { return };
    let spec = spec(seed);
    let src = spec.write_temp(&format!("{name}-src"));
    let (gptq, ref_dir) = (
        yangtuo_tests::temp_dir(&format!("{name}-gptq")),
        yangtuo_tests::temp_dir(&format!("{name}-ref")),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/make_gptq.py");
    let out = Command::new(&py)
        .arg(&script)
        .args([&src, &gptq, &ref_dir])
        .args([
            "--group-size",
            &group_size.to_string(),
            "--desc-act",
            &(desc_act as u8).to_string(),
        ])
        .args([
            "--sym",
            &(sym as u8).to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .expect("cannot run python");
    assert!(
        out.status.success(),
        "make_gptq.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // the GPTQ folder loads packed: every linear layer is Gptq4, permuted exactly under act order
    let files = ModelFiles::open(&gptq).unwrap();
    let q = &files.gptq().expect("detected as GPTQ").quant;
    assert_eq!(
        (q.bits, q.group_size, q.desc_act),
        (4, (group_size > 0).then_some(group_size as usize), desc_act)
    );
    for t in [
        LayerTensor::Wq,
        LayerTensor::Wk,
        LayerTensor::Wv,
        LayerTensor::Wo,
        LayerTensor::W1,
        LayerTensor::W2,
        LayerTensor::W3,
    ] {
        let w = files.weight(TensorId::Layer(1, t)).unwrap();
        assert_eq!(w.format, WeightFormat::Gptq4, "{t:?}");
        assert_eq!(w.perm.is_some(), desc_act && group_size > 0, "{t:?}");
    }
    assert_eq!(
        files.weight(TensorId::Embed).unwrap().format,
        WeightFormat::F16
    );
    assert_eq!(
        files.weight(TensorId::Output).unwrap().format,
        WeightFormat::F16
    );
    drop(files);

    let reference = Reference::load(&spec, &ref_dir, None);
    let ids = random_ids(20, spec.vocab, seed + 100);
    let want = reference.logits_all(&ids);
    let want_greedy = reference.greedy(&ids[..8], 32);
    for dev in [Dev::Cpu, Dev::Wgpu, Dev::WgpuF32] {
        let r = load(&gptq, dev);
        let got = logits_all(r.as_ref(), &ids);
        let err = rel_max_err(&got, &want);
        println!(
            "{name} {dev:?} [{}]: max|Δlogit|/max|logit| = {err:.2e}",
            r.device()
        );
        assert!(
            err <= 1e-3,
            "{name} on {dev:?}: relative error {err:.3e} > 1e-3"
        );
        let g = greedy(r.as_ref(), &ids[..8], 32);
        assert_eq!(
            g, want_greedy,
            "{name} on {dev:?}: greedy continuation differs"
        );
    }
    for d in [src, gptq, ref_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn gptq_group128() {
    check("gptq-g128", 128, false, false, 21);
}

#[test]
fn gptq_group128_desc_act() {
    check("gptq-g128-act", 128, true, false, 22);
}

#[test]
fn gptq_whole_row_group_sym_desc_act() {
    // group_size -1: one group over the whole input (act order then permutes nothing)
    check("gptq-gall", -1, true, true, 23);
}
