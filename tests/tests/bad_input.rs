//! Bad input gets a clear, typed error that names the file or value, never a panic: through
//! the library and through the CLI (whose exit code is 1 with `error: ...`).

use std::path::{Path, PathBuf};
use std::process::Command;
use yangtuo::weights::source::ModelFiles;
use yangtuo::{Error, Llama, LoadOptions};
use yangtuo_tests::{Spec, cli_bin, temp_dir};

/// Run the CLI; it must fail cleanly (exit 1, one `error:` line, no panic) and say `want`.
fn cli_fails(args: &[&str], env: &[(&str, &str)], want: &str) {
    let out = Command::new(cli_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        err.contains("error:") && err.contains(want),
        "{args:?}: expected `{want}` in: {err}"
    );
}

fn load_err(path: &Path) -> Error {
    let opts = LoadOptions {
        backend: yangtuo::BackendChoice::Cpu,
        ..Default::default()
    };
    match Llama::load(path, &opts, &mut |_| {}) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

fn model(name: &str) -> PathBuf {
    Spec {
        seed: 31,
        ..Spec::default()
    }
    .write_temp(name)
}

#[test]
fn missing_files_are_named() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(
        matches!(e, Error::ModelLoad { .. }) && e.to_string().contains("/nonexistent/model"),
        "{e}"
    );
    let dir = temp_dir("empty");
    let e = load_err(&dir).to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(
        dir.join("config.json"),
        Spec::default().config_json().to_string(),
    )
    .unwrap();
    let e = load_err(&dir).to_string();
    assert!(e.contains("safetensors"), "{e}");
    cli_fails(
        &[
            "generate",
            "--model",
            "/nonexistent/m",
            "--ids",
            "1",
            "--backend",
            "cpu",
        ],
        &[],
        "/nonexistent/m",
    );
}

#[test]
fn pickle_checkpoints_are_refused_with_how_to_convert() {
    let dir = temp_dir("pickle");
    std::fs::write(
        dir.join("config.json"),
        Spec::default().config_json().to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"\x80\x02not unpickled").unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("pytorch_model.bin")
            && e.contains("never unpickles")
            && e.contains("safe_serialization"),
        "{e}"
    );
}

#[test]
fn unknown_model_type_is_named() {
    let dir = model("mistral");
    let mut c = Spec::default().config_json();
    c["model_type"] = "mistral".into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("model_type `mistral`") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn shapes_that_disagree_with_the_config_name_the_tensor() {
    let dir = model("shape");
    let mut c = Spec::default().config_json();
    c["intermediate_size"] = 128.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[160, 64]") && e.contains("[128, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = model("trunc");
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    let files = ModelFiles::open(&dir);
    assert!(files.is_err());
}

#[test]
fn out_of_range_ids_are_named() {
    let dir = model("ids");
    cli_fails(
        &[
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1,300,2",
            "--out",
            "/tmp/x.npy",
            "--backend",
            "cpu",
        ],
        &[],
        "300",
    );
    cli_fails(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1,x",
            "--backend",
            "cpu",
        ],
        &[],
        "`x`",
    );
    cli_fails(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "5,99999",
            "--backend",
            "cpu",
        ],
        &[],
        "99999",
    );
    cli_fails(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1,2",
            "--kv-cache-dtype",
            "f8",
            "--backend",
            "cpu",
        ],
        &[],
        "kv_cache_dtype",
    );
}

#[test]
fn no_adapter_found_is_a_clear_device_error() {
    let dir = model("adapter");
    cli_fails(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1",
            "--backend",
            "wgpu",
        ],
        &[("WGPU_ADAPTER_NAME", "no-such-gpu")],
        "WGPU_ADAPTER_NAME=no-such-gpu matches none",
    );
    cli_fails(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1",
            "--backend",
            "tpu",
        ],
        &[],
        "`tpu`",
    );
}

#[test]
fn over_long_prompts_fail_before_any_work() {
    let dir = model("ctx");
    cli_fails(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            &["1"; 16].join(","),
            "--max-tokens",
            "10",
            "--ctx",
            "16",
            "--backend",
            "cpu",
        ],
        &[],
        "context length exceeded",
    );
}

/// Config numbers past any real Llama, and contexts past any machine, are refused at load
/// within a second, before anything is allocated (issue 18: 10^7 layers took 1.4 GiB and
/// 36 s; `--ctx 288230376151711744` panicked; `--ctx 1000000000` aborted on 256 GB).
#[test]
fn absurd_configs_and_contexts_are_refused_at_once() {
    let t0 = std::time::Instant::now();
    for (key, value, want) in [
        (
            "num_hidden_layers",
            serde_json::json!(10_000_000u64),
            "num_hidden_layers",
        ),
        (
            "num_hidden_layers",
            serde_json::json!(100_000_000u64),
            "num_hidden_layers",
        ),
        ("vocab_size", serde_json::json!(1u64 << 40), "vocab_size"),
        ("rms_norm_eps", serde_json::json!(1e308), "rms_norm_eps"),
        ("rope_theta", serde_json::json!(1e300), "rope_theta"),
    ] {
        let dir = model(&format!("absurd-{key}"));
        let mut c = Spec::default().config_json();
        c[key] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        let e = load_err(&dir).to_string();
        assert!(e.contains(want), "{key}: {e}");
        let _ = std::fs::remove_dir_all(dir);
    }
    let dir = model("absurd-ctx");
    for ctx in [288230376151711744usize, usize::MAX, 1_000_000_000] {
        let opts = LoadOptions {
            backend: yangtuo::BackendChoice::Cpu,
            ctx_len: Some(ctx),
            ..Default::default()
        };
        match Llama::load(&dir, &opts, &mut |_| {}) {
            Err(Error::InvalidArg { name, msg }) => assert!(
                name == "ctx_len" && msg.contains("KV cache"),
                "{ctx}: {msg}"
            ),
            other => panic!("ctx {ctx}: {:?}", other.map(|_| ())),
        }
    }
    let huge = usize::MAX.to_string();
    let m = dir.to_str().unwrap();
    cli_fails(
        &[
            "generate",
            "--model",
            m,
            "--ids",
            "1",
            "--backend",
            "cpu",
            "--ctx",
            &huge,
        ],
        &[],
        "ctx",
    );
    cli_fails(
        &[
            "bench",
            "--model",
            m,
            "--backend",
            "cpu",
            "-d",
            "9223372036854775808",
        ],
        &[],
        "ctx",
    );
    cli_fails(
        &[
            "bench",
            "--model",
            m,
            "--backend",
            "cpu",
            "-d",
            &huge,
            "-p",
            "8",
        ],
        &[],
        "n-depth",
    );
    // a max_tokens past any context is a cap the context bounds, not an overflow
    let out = Command::new(cli_bin())
        .args([
            "generate",
            "--model",
            m,
            "--ids",
            "1",
            "--backend",
            "cpu",
            "--max-tokens",
            &huge,
            "--ctx",
            "8",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed().as_secs() < 10, "{:?}", t0.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}

/// `RAYON_NUM_THREADS=100000` crashed candle's pool; it is clamped, with a warning.
#[test]
fn an_absurd_thread_count_is_clamped() {
    let dir = model("threads");
    let out = Command::new(cli_bin())
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1",
            "--max-tokens",
            "2",
            "--backend",
            "cpu",
        ])
        .env("RAYON_NUM_THREADS", "100000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("RAYON_NUM_THREADS=100000"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A NaN in a norm or in the first layer's weights turned every answer into NaN logits and
/// `⁇`; it is refused at load, naming the tensor.
#[test]
fn a_nan_weight_is_refused_at_load() {
    for (tensor, gguf_name) in [
        ("model.norm.weight", "output_norm"),
        ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v"),
    ] {
        let dir = model("nan-weight");
        let path = dir.join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let table = yangtuo::weights::safetensors::parse_header(&bytes[8..8 + n], &path).unwrap();
        let (_, dtype, _, start, _) = table.iter().find(|t| t.0 == tensor).unwrap().clone();
        let nan: &[u8] = match dtype {
            safetensors::Dtype::F32 => &[0x00, 0x00, 0xc0, 0x7f],
            safetensors::Dtype::F16 => &[0x00, 0x7e],
            _ => &[0xc0, 0x7f],
        };
        let at = 8 + n + start + 64; // a few weights in
        bytes[at..at + nan.len()].copy_from_slice(nan);
        std::fs::write(&path, bytes).unwrap();
        let e = load_err(&dir).to_string();
        assert!(e.contains(gguf_name) && e.contains("NaN"), "{tensor}: {e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
