//! `--backend auto` (core/src/load.rs): a real GPU through wgpu, then CUDA, then wgpu on any
//! adapter, then the CPU backend. A software adapter (lavapipe, SwiftShader) is chosen with a
//! warning that the CPU backend is 50-100x faster on the same cores.

use std::process::{Command, Output};
use yangtuo_tests::{Spec, cli_bin};

fn generate(model: &str, backend: &str) -> (Output, String) {
    let out = Command::new(cli_bin())
        .args([
            "generate",
            "--model",
            model,
            "--ids",
            "1,2,3",
            "--max-tokens",
            "2",
            "--backend",
            backend,
        ])
        .env("RUST_LOG", "info")
        .env_remove("YANGTUO_BACKEND")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// The `device: ...` line the CLI logs for the backend it ran on.
fn device(log: &str) -> &str {
    log.lines()
        .filter_map(|l| l.split_once("] device: ").map(|(_, d)| d))
        .last()
        .unwrap_or("")
}

#[test]
fn auto_picks_a_real_gpu_then_any_wgpu_adapter_then_the_cpu() {
    let dir = Spec {
        seed: 41,
        ..Spec::default()
    }
    .write_temp("auto");
    let model = dir.to_str().unwrap();
    let (auto, log) = generate(model, "auto");
    assert!(auto.status.success(), "{log}");
    // what wgpu offers on this machine decides what auto must pick
    let (wgpu, wgpu_log) = generate(model, "wgpu");
    let software = wgpu_log
        .lines()
        .any(|l| l.contains("wgpu device:") && l.contains("(Cpu,"));
    if wgpu.status.success() {
        assert!(
            device(&log).starts_with("wgpu"),
            "wgpu has an adapter, auto ran on {}",
            device(&log)
        );
        assert_eq!(software, device(&log).contains("(Cpu,"), "{log}");
        if software {
            assert!(log.contains("`--backend cpu` is 50-100x faster"), "{log}");
        }
    } else {
        assert!(
            device(&log).starts_with("cpu"),
            "auto ran on {}:\n{log}",
            device(&log)
        );
    }
}
