//! `--backend auto` (core/src/device.rs): CUDA where its driver and NVRTC are found, then a
//! real GPU through wgpu, then the CPU backend. A software adapter (lavapipe, SwiftShader)
//! runs the same kernels 50-100x slower than the CPU backend on the same cores, so auto
//! never takes it; `--backend wgpu` still does.

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
fn auto_picks_cuda_then_a_real_gpu_then_the_cpu_never_a_software_adapter() {
    let dir = Spec {
        seed: 41,
        ..Spec::default()
    }
    .write_temp("auto");
    let model = dir.to_str().unwrap();
    let (auto, log) = generate(model, "auto");
    assert!(auto.status.success(), "{log}");
    // what this machine offers decides what auto must pick
    let (cuda, _) = generate(model, "cuda");
    let (wgpu, wgpu_log) = generate(model, "wgpu");
    let software = wgpu_log
        .lines()
        .any(|l| l.contains("wgpu device:") && l.contains("(Cpu,"));
    let want = if cuda.status.success() {
        "cuda"
    } else if wgpu.status.success() && !software {
        "wgpu"
    } else {
        "cpu"
    };
    assert!(
        device(&log).starts_with(want),
        "auto should run on {want}, ran on {}:\n{log}",
        device(&log)
    );
    if software {
        // explicitly asked for, the software adapter still runs
        assert!(wgpu.status.success(), "{wgpu_log}");
        assert!(log.contains("skipping the software adapter"), "{log}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
