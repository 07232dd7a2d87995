//! Streaming loads (the browser's path) give the same model as loading from disk, whatever
//! the chunk sizes, for safetensors and GGUF.

use std::path::Path;
use yangtuo::backend::cpu::Cpu;
use yangtuo::config::HfConfig;
use yangtuo::model::Model;
use yangtuo::runner::Runner;
use yangtuo::weights::source::ModelFiles;
use yangtuo::weights::stream::StreamLoader;
use yangtuo_tests::{Rng, Spec, random_ids};

fn logits(r: &dyn Runner, ids: &[u32]) -> Vec<f32> {
    let mut s = r.new_state(ids.len(), ids.len(), ids.len()).unwrap();
    r.forward(&mut s, ids, 0, ids.len()).unwrap();
    pollster::block_on(r.logits(&s, ids.len())).unwrap()
}

fn from_disk(path: &Path) -> Vec<f32> {
    let mut files = ModelFiles::open(path).unwrap();
    let m = Model::load(&mut files, Cpu, 0, &mut |_| {}).unwrap();
    logits(m.into_runner().as_ref(), &random_ids(12, 300, 5))
}

/// Feed `file` in random chunks of 1..max bytes.
fn stream(loader: &mut StreamLoader<Cpu>, file: &Path, max: usize, seed: u64) {
    let bytes = std::fs::read(file).unwrap();
    loader
        .begin_file(&file.to_string_lossy(), bytes.len() as u64)
        .unwrap();
    let mut rng = Rng::new(seed);
    let mut i = 0;
    while i < bytes.len() {
        let n = (1 + rng.below(max)).min(bytes.len() - i);
        loader.push(&bytes[i..i + n]).unwrap();
        i += n;
    }
    loader.end_file().unwrap();
}

#[test]
fn safetensors_stream_equals_disk_load() {
    let spec = Spec {
        seed: 21,
        ..Spec::default()
    };
    let dir = yangtuo_tests::temp_dir("stream-st");
    spec.write(&dir, 2);
    let want = from_disk(&dir);
    let config = HfConfig::from_json(
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
        &dir,
    )
    .unwrap();
    for (max, seed) in [(7, 1), (4096, 2), (1 << 20, 3)] {
        let mut l = StreamLoader::new(Cpu, Some(config.clone()));
        for shard in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ] {
            stream(&mut l, &dir.join(shard), max, seed);
        }
        let got = logits(
            l.finish().unwrap().into_runner().as_ref(),
            &random_ids(12, 300, 5),
        );
        assert_eq!(got, want, "chunks up to {max} bytes");
    }
}

#[test]
fn truncated_stream_is_an_error() {
    let spec = Spec {
        seed: 22,
        ..Spec::default()
    };
    let dir = spec.write_temp("stream-trunc");
    let config = HfConfig::from_json(
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
        &dir,
    )
    .unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut l = StreamLoader::new(Cpu, Some(config));
    l.begin_file("model.safetensors", bytes.len() as u64)
        .unwrap();
    l.push(&bytes[..bytes.len() - 10]).unwrap();
    let e = l.end_file().unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn gguf_stream_equals_disk_load() {
    // a GGUF written by `yangtuo quantize` (the CLI must be built first)
    let spec = Spec {
        hidden: 64,
        intermediate: 256,
        seed: 23,
        ..Spec::default()
    };
    let dir = spec.write_temp("stream-gguf");
    let cli = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("yangtuo");
    assert!(
        cli.exists(),
        "build the CLI first: cargo build --release -p yangtuo-cli"
    );
    let gguf = dir.join("m.gguf");
    let ok = std::process::Command::new(&cli)
        .args([
            "quantize",
            dir.to_str().unwrap(),
            gguf.to_str().unwrap(),
            "--type",
            "q8_0",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let want = from_disk(&gguf);
    for (max, seed) in [(13, 1), (1 << 16, 2)] {
        let mut l = StreamLoader::new(Cpu, None);
        stream(&mut l, &gguf, max, seed);
        let got = logits(
            l.finish().unwrap().into_runner().as_ref(),
            &random_ids(12, 300, 5),
        );
        assert_eq!(got, want, "chunks up to {max} bytes");
    }
}
