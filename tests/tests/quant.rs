//! Quantized models (issue "Quantized models"), against references the project did not
//! write: gguf-py (llama.cpp's Python package) for every block format, numpy in float64 for
//! products, and candle-transformers' Llama for whole models.
//!
//! 1. Kernels: every weight format's matrix product (decode n = 1 → matvec kernel, prefill
//!    n = 3 and 70 → tiled matmul kernel) and embedding gather, on wgpu (with and without
//!    shader-f16) and the CPU, on odd shapes. Weights are quantized (or, for K-quants,
//!    randomly encoded) and decoded by gguf-py.
//! 2. GGUF end to end: `tests/py/hf_to_gguf.py` converts a random Hugging Face model as
//!    llama.cpp's converter does (Q/K rows permuted) and writes the decoded weights back as a
//!    Hugging Face folder; yangtuo on the GGUF must match candle on that folder.
//! 3. `yangtuo quantize`: gguf-py reads its output back; yangtuo runs it; in-load
//!    quantization (`LoadOptions.quantize`) gives the same model.
//! 4. Bad GGUF input gives `Error::ModelLoad`, never a panic.
//! 5. Memory: weights stay in their block format, mapped in place on the CPU.
//!
//! Python comes from `YANGTUO_PYTHON`, else /root/.cache/yt-venv/bin/python; without either
//! the tests that need it print "skipping: no python with gguf" and pass. The tests that run
//! the CLI use `YANGTUO_BIN` if set, else build `yangtuo-cli` into this test's target folder.

use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use yangtuo::LoadProgress;
use yangtuo::backend::Backend;
use yangtuo::backend::cpu::Cpu;
use yangtuo::backend::wgpu::Wgpu;
use yangtuo::backend::wgpu::matrix::layout;
use yangtuo::model::Model;
use yangtuo::runner::Runner;
use yangtuo::weights::builder::WeightSource;
use yangtuo::weights::quantize::Quantizing;
use yangtuo::weights::source::ModelFiles;
use yangtuo::weights::{Blob, TensorId, WeightData, WeightFormat};
use yangtuo::{BackendChoice, Error, LoadOptions};
use yangtuo_tests::reference::Reference;
use yangtuo_tests::{Spec, random_ids, rel_max_err, temp_dir};

// ---------------------------------------------------------------------------------------
// Python, the CLI, devices
// ---------------------------------------------------------------------------------------

/// `YANGTUO_PYTHON`, else the project venv, else None (the caller skips).
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

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> OsString {
    s.as_ref().to_os_string()
}

/// Run `tests/py/<script>` with `args`; panics with its output if it fails. Returns stdout.
fn run_py(py: &Path, script: &str, args: &[OsString]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script);
    let out = Command::new(py)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `yangtuo` binary: `YANGTUO_BIN`, else built (a no-op when up to date) into the
/// target folder this test runs from, so a test never runs a stale CLI. None (the caller
/// skips) when there is no cargo to build it with.
fn yangtuo_bin() -> Option<PathBuf> {
    static BIN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("YANGTUO_BIN") {
            if !p.is_empty() {
                return Some(p.into());
            }
        }
        // this test is <target>/<profile>/deps/quant-<hash>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent()?.parent()?.to_path_buf();
        let target = profile_dir.parent()?.to_path_buf();
        let profile = profile_dir.file_name()?.to_string_lossy().into_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "yangtuo-cli", "--bin", "yangtuo"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            p => {
                cmd.args(["--profile", p]);
            }
        }
        let status = match cmd.status() {
            Ok(s) => s,
            Err(e) => {
                println!("skipping: cannot run cargo to build the CLI ({e}); set YANGTUO_BIN");
                return None;
            }
        };
        assert!(status.success(), "building yangtuo-cli failed");
        Some(profile_dir.join(format!("yangtuo{}", std::env::consts::EXE_SUFFIX)))
    })
    .clone()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dev {
    Cpu,
    /// wgpu with shader-f16 where the adapter has it
    Wgpu,
    /// wgpu's f32 path (browsers without shader-f16)
    WgpuF32,
}

const DEVS: [Dev; 3] = [Dev::Cpu, Dev::Wgpu, Dev::WgpuF32];

fn gpu(dev: Dev) -> Wgpu {
    pollster::block_on(Wgpu::with_f16(dev == Dev::Wgpu)).expect("no wgpu adapter")
}

fn progress() -> impl FnMut(LoadProgress) {
    |_: LoadProgress| {}
}

/// The bounds here measure the weights' quantization, so the KV cache stays f32 on every
/// device (wgpu's auto with shader-f16 is f16, whose own rounding parity.rs and the op
/// conformance suite check).
fn runner(source: &mut dyn WeightSource, dev: Dev) -> Arc<dyn Runner> {
    let mut p = progress();
    match dev {
        Dev::Cpu => Model::load(source, Cpu, 0, &mut p).unwrap().into_runner(),
        _ => {
            let mut m = Model::load(source, gpu(dev), 0, &mut p).unwrap();
            m.kv_dtype = yangtuo::KvDtype::F32;
            m.into_runner()
        }
    }
}

/// A model folder or .gguf on `dev`, optionally quantized while loading.
fn load(path: &Path, dev: Dev, quantize: Option<WeightFormat>) -> Arc<dyn Runner> {
    let mut files = ModelFiles::open(path).unwrap();
    match quantize {
        None => runner(&mut files, dev),
        Some(f) => runner(&mut Quantizing::new(&mut files, f).unwrap(), dev),
    }
}

/// Logits at every position of one batched prefill.
fn logits_all(r: &dyn Runner, ids: &[u32]) -> Vec<f32> {
    let mut s = r.new_state(ids.len() + 8, ids.len(), ids.len()).unwrap();
    r.forward(&mut s, ids, 0, ids.len()).unwrap();
    pollster::block_on(r.logits(&s, ids.len())).unwrap()
}

/// Greedy continuation, one decode step (n = 1) per token.
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

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

fn read_f32(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn read_f64(p: &Path) -> Vec<f64> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn format_of(name: &str) -> WeightFormat {
    match name {
        "f32" => WeightFormat::F32,
        "f16" => WeightFormat::F16,
        "bf16" => WeightFormat::BF16,
        "q8_0" => WeightFormat::Q8_0,
        "q4_0" => WeightFormat::Q4_0,
        "q4_1" => WeightFormat::Q4_1,
        "q4_k" => WeightFormat::Q4K,
        "q6_k" => WeightFormat::Q6K,
        other => panic!("unknown format {other}"),
    }
}

/// ggml's name of a format, as gguf-py prints it.
fn ggml_name(f: WeightFormat) -> String {
    WeightFormat::ggml_type_name(f.ggml_type())
}

// ---------------------------------------------------------------------------------------
// 1. Kernels
// ---------------------------------------------------------------------------------------

/// Token counts: decode (the matvec kernel), and prefill below and above one 64-token tile
/// of the matmul kernel.
const NS: [usize; 3] = [1, 3, 70];

/// wgpu computes in f32 from exactly the stored weights: ‖Δ‖/‖ref‖ and max|Δ|/max|ref|
/// within 1e-4 of the float64 product of gguf-py's decoded weights.
const WGPU_TOL: f64 = 1e-4;

struct Case {
    name: String,
    format: WeightFormat,
    rows: usize,
    cols: usize,
    n_max: usize,
    w: WeightData,
    /// gguf-py's decoding, [rows, cols]
    deq: Vec<f32>,
    /// activations [n_max, cols]
    x: Vec<f32>,
    /// x · deqᵀ in float64, [n_max, rows]
    want: Vec<f64>,
}

fn kernel_cases(types: &[&str]) -> Option<Vec<Case>> {
    let py = python()?;
    let dir = temp_dir("kernels");
    let mut args = vec![os(&dir)];
    args.extend(types.iter().map(os));
    run_py(&py, "kernel_data.py", &args);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = manifest
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ty = c["type"].as_str().unwrap();
            let (rows, cols) = (
                c["rows"].as_u64().unwrap() as usize,
                c["cols"].as_u64().unwrap() as usize,
            );
            let base = dir.join(c["base"].as_str().unwrap());
            let format = format_of(ty);
            let name = format!("{ty} [{rows}, {cols}]");
            let bytes = std::fs::read(base.with_extension("w")).unwrap();
            Case {
                w: WeightData::new(format, rows, cols, Blob::from_vec(bytes), &name).unwrap(),
                deq: read_f32(&base.with_extension("deq")),
                x: read_f32(&base.with_extension("x")),
                want: read_f64(&base.with_extension("ref")),
                n_max: c["n_max"].as_u64().unwrap() as usize,
                name,
                format,
                rows,
                cols,
            }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Some(cases)
}

/// Rows the embedding test gathers: first, last, middle, a repeat.
fn embed_ids(rows: usize) -> Vec<u32> {
    vec![
        0,
        (rows - 1) as u32,
        (rows / 2) as u32,
        1,
        (rows - 1) as u32,
        (17 % rows) as u32,
    ]
}

struct Outputs {
    /// (n, out[n, rows])
    products: Vec<(usize, Vec<f32>)>,
    /// out[embed_ids.len(), cols]
    embed: Vec<f32>,
}

/// Run one case's products and gather through the Backend trait. Outputs start as NaN, so
/// an element a kernel forgets to write cannot pass for a right one.
fn run_case<B: Backend>(b: &B, c: &Case) -> Outputs {
    let m = b.upload_matrix(&c.name, &c.w).unwrap();
    let mut x = b.alloc("x", c.n_max, c.cols).unwrap();
    b.write(&mut x, &c.x);
    let mut products = vec![];
    for n in NS {
        let mut out = b.alloc("out", c.n_max, c.rows).unwrap();
        b.write(&mut out, &vec![f32::NAN; c.n_max * c.rows]);
        b.matmul(&x, n, &m, &mut out);
        products.push((n, pollster::block_on(b.read(&out, n)).unwrap()));
    }
    let ids = embed_ids(c.rows);
    let mut e = b.alloc("embed", ids.len(), c.cols).unwrap();
    b.write(&mut e, &vec![f32::NAN; ids.len() * c.cols]);
    b.embed(&m, &ids, &mut e);
    let embed = pollster::block_on(b.read(&e, ids.len())).unwrap();
    Outputs { products, embed }
}

/// (‖Δ‖/‖ref‖, max|Δ|/max|ref|); infinite if anything is not finite.
fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    if got.iter().any(|v| !v.is_finite()) {
        return (f64::INFINITY, f64::INFINITY);
    }
    let (mut d2, mut r2, mut dmax, mut rmax) = (0f64, 0f64, 0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        let d = *g as f64 - w;
        d2 += d * d;
        r2 += w * w;
        dmax = dmax.max(d.abs());
        rmax = rmax.max(w.abs());
    }
    (d2.sqrt() / r2.sqrt(), dmax / rmax)
}

/// The largest error the CPU product of weight row `r` with activation row `t` may have.
///
/// The CPU backend computes quantized products as llama.cpp does: the activations are first
/// quantized to 8 bits, then multiplied with the weight blocks in integers. So the error is
/// Σ_k |w_rk| · e_k, where e_k bounds the error of activation k:
/// * Q8_0, Q4_0 (activations in Q8_0) and Q4_1 (Q8_1): per block of 32, scale
///   d = amax/127 rounded to f16, q = round(x/d): e ≤ d/2 + 127·|d − f16(d)|
///   ≤ amax · (0.5 + 127·2⁻¹¹)/127 ≈ 0.0044·amax. Q4_1 also multiplies its block minimum m
///   by the f16 block sum s of the activations: a further |m|·Σ|x|·2⁻¹⁰ per block.
/// * Q4_K, Q6_K (activations in Q8_K): per block of 256, d = amax/127 in f32: e ≤ amax/254.
/// * F16: activations are rounded to f16: e ≤ |x|·2⁻¹¹.
/// * F32, BF16 (f32 activations): none.
///
/// Plus f32 rounding of the sums: 2k·2⁻²⁴·Σ|w x|. So the test asserts what quantizing the
/// activations can cost, not a tolerance fitted to what it happens to cost (measured: at
/// most 0.25 of this bound); `summary_bound` checks the whole output too.
fn cpu_bound(c: &Case, t: usize, r: usize) -> f64 {
    let k = c.cols;
    let x = &c.x[t * k..(t + 1) * k];
    let w = &c.deq[r * k..(r + 1) * k];
    let wx: f64 = w
        .iter()
        .zip(x)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    let mut bound = 2.0 * k as f64 * 2f64.powi(-24) * wx;
    let per_block = |block: usize, rel: f64| -> f64 {
        x.chunks(block)
            .zip(w.chunks(block))
            .map(|(xb, wb)| {
                let amax = xb.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
                amax * rel * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
            })
            .sum()
    };
    let q8_0 = (0.5 + 127.0 * 2f64.powi(-11)) / 127.0 * 1.001;
    bound += match c.format {
        WeightFormat::F32 | WeightFormat::BF16 => 0.0,
        WeightFormat::F16 => x
            .iter()
            .zip(w)
            .map(|(a, b)| ((a.abs() as f64) * 2f64.powi(-11) + 2f64.powi(-25)) * b.abs() as f64)
            .sum(),
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => per_block(32, q8_0),
        WeightFormat::Q4_1 => {
            // block b of row r: 20 bytes, f16 d then f16 m
            let rb = c.format.row_bytes(k, "").unwrap();
            let row = &c.w.bytes[r * rb..(r + 1) * rb];
            let sum_term: f64 = x
                .chunks(32)
                .zip(row.chunks(20))
                .map(|(xb, blk)| {
                    let m = half::f16::from_le_bytes([blk[2], blk[3]]).to_f64().abs();
                    m * xb.iter().map(|v| v.abs() as f64).sum::<f64>() * 2f64.powi(-10) * 1.01
                })
                .sum();
            per_block(32, q8_0) + sum_term
        }
        WeightFormat::Q4K | WeightFormat::Q6K => per_block(256, 1.001 / 254.0),
        #[allow(unreachable_patterns)]
        other => panic!("no CPU bound for {other:?}"),
    };
    bound
}

/// A looser, whole-output view of the same error: ‖Δ‖/‖ref‖ of the CPU product. 8-bit
/// activations cost ≈ 5e-3 (blocks of 32) to ≈ 7e-3 (Q8_K's blocks of 256 share one larger
/// scale), more where the weights' block offsets (Q4_K's mins) correlate the errors; f16
/// activations ≈ 2e-4; f32 activations only rounding.
fn summary_bound(f: WeightFormat) -> f64 {
    match f {
        WeightFormat::Q4K | WeightFormat::Q6K => 2e-2,
        WeightFormat::F16 => 1e-3,
        WeightFormat::F32 | WeightFormat::BF16 => 1e-5,
        _ => 1e-2,
    }
}

/// Check every case on every device; print a table and fail with every miss at once.
fn check_kernels(types: &[&str]) {
    let Some(cases) = kernel_cases(types) else {
        return;
    };
    let devs: Vec<(Dev, Option<Wgpu>)> = DEVS
        .iter()
        .map(|d| (*d, (*d != Dev::Cpu).then(|| gpu(*d))))
        .collect();
    for (dev, g) in &devs {
        if let Some(g) = g {
            println!("{dev:?}: {}", g.name());
        }
    }
    let mut failures = vec![];
    for c in &cases {
        for (dev, g) in &devs {
            let out = match g {
                None => run_case(&Cpu, c),
                Some(g) => run_case(g, c),
            };
            for (n, got) in &out.products {
                let want = &c.want[..n * c.rows];
                let (l2, mx) = errors(got, want);
                let mut line = format!(
                    "{:<20} {:<8} n={n:<3} ‖Δ‖/‖ref‖ {l2:.2e}  max|Δ|/max|ref| {mx:.2e}",
                    c.name,
                    format!("{dev:?}")
                );
                if *dev == Dev::Cpu {
                    // element-wise bound from quantizing the activations, and the summary ≤ 1e-2
                    let mut worst = 0f64;
                    for t in 0..*n {
                        for r in 0..c.rows {
                            let d = (got[t * c.rows + r] as f64 - want[t * c.rows + r]).abs();
                            let b = cpu_bound(c, t, r);
                            worst = worst.max(if d == 0.0 { 0.0 } else { d / b });
                        }
                    }
                    line += &format!("  max|Δ|/bound {worst:.2}");
                    let summary = summary_bound(c.format);
                    if !(worst <= 1.0 && l2 <= summary) {
                        failures.push(format!("{line}: exceeds the activation-quantization bound (summary ≤ {summary:.0e})"));
                    }
                } else if !(l2 <= WGPU_TOL && mx <= WGPU_TOL) {
                    failures.push(format!("{line}: exceeds {WGPU_TOL:.0e}"));
                }
                println!("{line}");
            }
            // the gather returns the decoded rows (f32 arithmetic on the same scales)
            let ids = embed_ids(c.rows);
            let want: Vec<f64> = ids
                .iter()
                .flat_map(|&i| f64s(&c.deq[i as usize * c.cols..(i as usize + 1) * c.cols]))
                .collect();
            let (_, mx) = errors(&out.embed, &want);
            println!(
                "{:<20} {:<8} embed max|Δ|/max|row| {mx:.2e}",
                c.name,
                format!("{dev:?}")
            );
            if !(mx <= 1e-6) {
                failures.push(format!(
                    "{} {dev:?} embed: max|Δ|/max|row| {mx:.2e} > 1e-6",
                    c.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kernel errors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn kernels_float_formats() {
    check_kernels(&["f32", "f16", "bf16"]);
}

#[test]
fn kernels_q8_0_q4_0_q4_1() {
    check_kernels(&["q8_0", "q4_0", "q4_1"]);
}

#[test]
fn kernels_k_quants() {
    check_kernels(&["q4_k", "q6_k"]);
}

// ---------------------------------------------------------------------------------------
// 2. GGUF end to end
// ---------------------------------------------------------------------------------------

/// A model whose every matrix has rows of whole K-quant super-blocks: hidden 256,
/// feed-forward 512, head_dim 64, GQA (4 query heads, 2 KV heads: K is permuted with the
/// KV head count), untied output. The vocabulary (320) holds a byte-fallback vocabulary.
fn small_spec(seed: u64) -> Spec {
    Spec {
        hidden: 256,
        intermediate: 512,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 320,
        seed,
        ..Spec::default()
    }
}

/// The CPU's logits are computed from 8-bit activations (f16 ones for F16 weights). Each of
/// the model's 15 products adds the ≈5e-3 relative error the kernel tests bound element by
/// element, and the errors compound through 2 layers of attention (sharp on these random
/// models) and SwiGLU: measured 2e-2 to 5e-2 of max|logit| (F16: ~1e-3). Bound: 1e-1
/// (F16: 1e-2). The wgpu checks (1e-3, no activation quantization) are the tight ones.
fn cpu_model_bound(kind: &str) -> f64 {
    if kind == "f16" { 1e-2 } else { 1e-1 }
}

/// Convert with hf_to_gguf.py; yangtuo on the GGUF against candle on the decoded weights.
fn gguf_end_to_end(kind: &str, seed: u64) {
    let Some(py) = python() else { return };
    let spec = small_spec(seed);
    let hf = spec.write_temp(&format!("e2e-{kind}"));
    let out = temp_dir(&format!("e2e-{kind}-gguf"));
    let gguf = out.join("model.gguf");
    let deq = out.join("dequant");
    let summary = run_py(
        &py,
        "hf_to_gguf.py",
        &[
            os(&hf),
            os(&gguf),
            os("--type"),
            os(kind),
            os("--dequant-dir"),
            os(&deq),
        ],
    );
    let summary: Value = serde_json::from_str(&summary).unwrap();
    let types: std::collections::BTreeSet<&str> = summary
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    println!("{kind}: tensor types {types:?}");

    let reference = Reference::load(&spec, &deq, None);
    let ids = random_ids(24, spec.vocab, seed + 100);
    let want = reference.logits_all(&ids);
    let prompt = &ids[..8];
    let want_greedy = reference.greedy(prompt, 32);
    let mut failures = vec![];
    for dev in DEVS {
        let r = load(&gguf, dev, None);
        let err = rel_max_err(&logits_all(r.as_ref(), &ids), &want);
        let g = greedy(r.as_ref(), prompt, 32);
        let same = g
            .iter()
            .zip(&want_greedy)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "gguf {kind} {dev:?}: max|Δlogit|/max|logit| = {err:.2e}, greedy agrees on {same}/32 tokens"
        );
        let bound = if dev == Dev::Cpu {
            cpu_model_bound(kind)
        } else {
            1e-3
        };
        if !(err <= bound) {
            failures.push(format!(
                "{dev:?}: relative logit error {err:.3e} > {bound:.0e}"
            ));
        }
        if dev != Dev::Cpu && g != want_greedy {
            failures.push(format!(
                "{dev:?}: greedy continuation differs after {same} tokens"
            ));
        }
    }
    assert!(failures.is_empty(), "gguf {kind}:\n{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(hf);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn gguf_f16_end_to_end() {
    gguf_end_to_end("f16", 21);
}

#[test]
fn gguf_q8_0_end_to_end() {
    gguf_end_to_end("q8_0", 22);
}

#[test]
fn gguf_q4_0_end_to_end() {
    gguf_end_to_end("q4_0", 23);
}

#[test]
fn gguf_q4_k_m_end_to_end() {
    gguf_end_to_end("q4_k_m", 24);
}

/// The public loader (`Llama::load`, with the GGUF's own vocabulary) runs the same model as
/// `ModelFiles` + `Model::load`.
#[test]
fn public_loader_runs_converted_gguf() {
    let Some(py) = python() else { return };
    let spec = small_spec(25);
    let hf = spec.write_temp("public");
    let out = temp_dir("public-gguf");
    let gguf = out.join("model.gguf");
    run_py(
        &py,
        "hf_to_gguf.py",
        &[os(&hf), os(&gguf), os("--type"), os("q4_0")],
    );
    let opts = LoadOptions {
        backend: BackendChoice::Cpu,
        ..LoadOptions::default()
    };
    let llama = yangtuo::Llama::load(&gguf, &opts, &mut progress()).unwrap();
    assert_eq!(llama.config().vocab_size, spec.vocab);
    assert_eq!(
        llama.tokenizer().id_to_piece(259).as_deref(),
        Some("\u{2581}t0")
    );
    let ids = random_ids(12, spec.vocab, 5);
    let a = logits_all(llama.runner().as_ref(), &ids);
    let b = logits_all(load(&gguf, Dev::Cpu, None).as_ref(), &ids);
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(hf);
    let _ = std::fs::remove_dir_all(out);
}

// ---------------------------------------------------------------------------------------
// 3. `yangtuo quantize`
// ---------------------------------------------------------------------------------------

/// Largest relative error (Frobenius) of a quantized matrix against the original weights,
/// for Gaussian rows: Q8_0 ~5e-3, Q4_0 ~8.6e-2, Q4_K ~7e-2 measured by gguf-py.
fn weight_rel_bound(f: WeightFormat) -> f64 {
    match f {
        WeightFormat::Q8_0 => 1e-2,
        WeightFormat::Q4_0 | WeightFormat::Q4K => 0.1,
        _ => unreachable!(),
    }
}

/// Per block: max|Δ| / max|w| (both formats scale blocks by their largest weight).
/// Q8_0: d = amax/127 rounded to f16, error ≤ d/2 + 127·|d − f16(d)| ≤ amax·(0.5 + 127·2⁻¹¹)/127.
/// Q4_0: d = max/−8; the opposite extreme clamps to 7, error ≤ |d| = amax/8, plus 8·|d − f16(d)|.
fn block_bound(f: WeightFormat) -> Option<f64> {
    match f {
        WeightFormat::Q8_0 => Some((0.5 + 127.0 * 2f64.powi(-11)) / 127.0 * 1.001),
        WeightFormat::Q4_0 => Some((1.0 + 8.0 * 2f64.powi(-11)) / 8.0 * 1.001),
        _ => None,
    }
}

/// ‖Δlogit‖/‖logit‖ of a quantized model against the float model, for weights of relative
/// error ε (the largest of the file's matrices, as gguf-py decodes them). These 2-layer
/// random models carry the weights' noise into the logits amplified about 4× (measured
/// 4.1-4.3× for Q8_0, Q4_0 and Q4_K on wgpu, whose own error is ~1e-6): bound 6ε, plus, on
/// the CPU, its 8-bit activations (`cpu_model_bound`). The tight check of the file is the
/// one against its decoded weights; this one shows it is the same model as the original
/// (a wrong row order or rotary pairing moves the logits by O(1)).
fn logit_bound(eps: f64, dev: Dev) -> f64 {
    6.0 * eps + if dev == Dev::Cpu { 5e-2 } else { 0.0 }
}

fn quantize_cli(ty: &str, format: WeightFormat, seed: u64) {
    let Some(py) = python() else { return };
    let Some(bin) = yangtuo_bin() else { return };
    let spec = small_spec(seed);
    let hf = spec.write_temp(&format!("cli-{ty}"));
    let out = temp_dir(&format!("cli-{ty}-out"));
    let gguf = out.join("model.gguf");
    let deq = out.join("dequant");
    let run = Command::new(&bin)
        .arg("quantize")
        .arg(&hf)
        .arg(&gguf)
        .args(["--type", ty])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "yangtuo quantize failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // gguf-py reads it: metadata, tensor names, types and shapes
    let report: Value = serde_json::from_str(&run_py(
        &py,
        "check_gguf.py",
        &[os(&gguf), os(&hf), os("--dequant-dir"), os(&deq)],
    ))
    .unwrap();
    let meta = &report["metadata"];
    let c = ModelFiles::open(&hf).unwrap().config;
    let want_meta = serde_json::json!({
        "general.architecture": "llama",
        "general.alignment": 32,
        "general.file_type": yangtuo::weights::gguf::llama_file_type(format),
        "llama.block_count": 2,
        "llama.context_length": spec.max_pos,
        "llama.embedding_length": 256,
        "llama.feed_forward_length": 512,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 64,
        "llama.vocab_size": spec.vocab,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    });
    for (k, v) in want_meta.as_object().unwrap() {
        assert_eq!(&meta[k], v, "{ty}: metadata `{k}`");
    }
    assert_eq!(meta["llama.rope.freq_base"].as_f64(), Some(spec.theta));
    assert!(
        (meta["llama.attention.layer_norm_rms_epsilon"]
            .as_f64()
            .unwrap()
            - spec.eps)
            .abs()
            < 1e-10
    );

    let tensors = report["tensors"].as_array().unwrap();
    let mut names: Vec<&str> = tensors
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let mut want_names: Vec<String> = TensorId::all(&c)
        .iter()
        .map(|id| format!("{}.weight", id.gguf_name()))
        .collect();
    names.sort();
    want_names.sort();
    assert_eq!(names, want_names, "{ty}: tensor names");
    let mut qk = 0;
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let id = *TensorId::all(&c)
            .iter()
            .find(|id| format!("{}.weight", id.gguf_name()) == name)
            .unwrap();
        let [rows, cols] = id.expected_shape(&c);
        let (want_ty, dims) = if id.is_vector() {
            ("F32".to_string(), vec![cols])
        } else {
            (ggml_name(format), vec![cols, rows])
        };
        assert_eq!(t["type"].as_str().unwrap(), want_ty, "{ty}: type of {name}");
        assert_eq!(t["dims"], serde_json::json!(dims), "{ty}: dims of {name}");
        // gguf-py's decoding, with Q and K un-permuted, is the original within the format's
        // error; a wrong row order would be off by ~√2
        let rel = t["rel_err"].as_f64().unwrap();
        if id.is_vector() {
            assert_eq!(rel, 0.0, "{ty}: {name} must be stored exactly");
            continue;
        }
        if name.contains("attn_q") || name.contains("attn_k") {
            qk += 1;
            println!(
                "{ty}: {name} decoded and un-permuted: relative error {rel:.3e}, per block {:.3e}",
                t["block_err"].as_f64().unwrap()
            );
        }
        assert!(
            rel <= weight_rel_bound(format),
            "{ty}: {name} relative error {rel:.3e}"
        );
        if let Some(b) = block_bound(format) {
            let be = t["block_err"].as_f64().unwrap();
            assert!(be <= b, "{ty}: {name} block error {be:.4e} > {b:.4e}");
        }
    }
    assert_eq!(qk, 4);
    let eps = tensors
        .iter()
        .filter(|t| t["type"] != "F32")
        .map(|t| t["rel_err"].as_f64().unwrap())
        .fold(0f64, f64::max);

    // yangtuo runs it: close to candle on the float model (quantization error), and to
    // candle on gguf-py's decoding of this very file (kernel error only)
    let ids = random_ids(24, spec.vocab, seed + 100);
    let want_float = Reference::load(&spec, &hf, None).logits_all(&ids);
    let want_exact = Reference::load(&spec, &deq, None).logits_all(&ids);
    let mut from_file = vec![];
    let mut failures = vec![];
    for dev in DEVS {
        let got = logits_all(load(&gguf, dev, None).as_ref(), &ids);
        let (l2_float, max_float) = errors(&got, &want_float);
        let e_exact = rel_max_err(&got, &want_exact);
        println!(
            "quantize {ty} {dev:?}: vs float model ‖Δ‖/‖ref‖ {l2_float:.2e} = {:.1}ε (max {max_float:.2e}), vs decoded model max {e_exact:.2e}",
            l2_float / eps
        );
        if !(l2_float <= logit_bound(eps, dev)) {
            failures.push(format!(
                "{dev:?}: ‖Δlogit‖/‖logit‖ {l2_float:.3e} from the float model > {:.2e}",
                logit_bound(eps, dev)
            ));
        }
        let exact_bound = if dev == Dev::Cpu {
            cpu_model_bound(ty)
        } else {
            1e-3
        };
        if !(e_exact <= exact_bound) {
            failures.push(format!(
                "{dev:?}: {e_exact:.3e} from the decoded model > {exact_bound:.0e}"
            ));
        }
        from_file.push((dev, got));
    }
    assert!(
        failures.is_empty(),
        "quantize {ty}:\n{}",
        failures.join("\n")
    );

    // in-load quantization is the same quantizer: the same model as the file
    for (dev, file_logits) in &from_file {
        let got = logits_all(load(&hf, *dev, Some(format)).as_ref(), &ids);
        let err = rel_max_err(&got, &f64s(file_logits));
        println!("quantize {ty} {dev:?}: in-load quantization vs the quantized file {err:.2e}");

        assert!(
            err <= inload_bound(*dev, ty),
            "{ty} {dev:?}: in-load quantization differs from the file by {err:.3e}"
        );
    }
    if format == WeightFormat::Q4_0 {
        // and through the public loader's option
        let opts = LoadOptions {
            backend: BackendChoice::Cpu,
            quantize: Some(format),
            ..LoadOptions::default()
        };
        let llama = yangtuo::Llama::load(&hf, &opts, &mut progress()).unwrap();
        let got = logits_all(llama.runner().as_ref(), &ids);
        let err = rel_max_err(&got, &f64s(&from_file[0].1));
        println!("quantize {ty}: LoadOptions.quantize vs the quantized file (cpu) {err:.2e}");
        assert!(err <= inload_bound(Dev::Cpu, ty));
    }
    let _ = std::fs::remove_dir_all(hf);
    let _ = std::fs::remove_dir_all(out);
}

/// In-load quantization and the file hold the same blocks; the file keeps Q/K rows permuted
/// and rotates interleaved pairs, so attention sums run in another order: f32 rounding only
/// (wgpu: measured 1e-6 of max|logit|; bound 1e-5). On the CPU the 8-bit activations absorb
/// such differences (the logits are usually bitwise identical), except where one falls on a
/// rounding boundary and flips a quantized activation: then that position and the ones
/// attending to it move by up to the activation-quantization error (measured once: 1.0e-2
/// from position 16 of 24 on, positions before it identical), so the CPU's bound is
/// `cpu_model_bound`.
fn inload_bound(dev: Dev, ty: &str) -> f64 {
    if dev == Dev::Cpu {
        cpu_model_bound(ty)
    } else {
        1e-5
    }
}

#[test]
fn quantize_cli_q4_0() {
    quantize_cli("q4_0", WeightFormat::Q4_0, 31);
}

#[test]
fn quantize_cli_q8_0() {
    quantize_cli("q8_0", WeightFormat::Q8_0, 32);
}

#[test]
fn quantize_cli_q4_k() {
    quantize_cli("q4_k", WeightFormat::Q4K, 33);
}

/// A quantized GGUF quantized again to another type holds that type (gguf-py reads it), and
/// is the original model within the first type's error.
#[test]
fn quantize_cli_requantizes_a_gguf() {
    let Some(py) = python() else { return };
    let Some(bin) = yangtuo_bin() else { return };
    let hf = Spec {
        vocab: 32000,
        ..small_spec(34)
    }
    .write_temp("cli-requant");
    // a GGUF carries its vocabulary, so the folder has a tokenizer
    let shared = PathBuf::from(format!(
        "{}/data/tokenizers/llama2/tokenizer.model",
        env!("CARGO_MANIFEST_DIR")
    ));
    std::fs::copy(&shared, hf.join("tokenizer.model")).unwrap();
    let out = temp_dir("cli-requant-out");
    let (q4, q8) = (out.join("m.q4_0.gguf"), out.join("m.q8_0.gguf"));
    for (input, output, ty) in [(&hf, &q4, "q4_0"), (&q4, &q8, "q8_0")] {
        let run = Command::new(&bin)
            .arg("quantize")
            .arg(input)
            .arg(output)
            .args(["--type", ty])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "quantize to {ty} failed:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let report: Value = serde_json::from_str(&run_py(
        &py,
        "check_gguf.py",
        &[os(&q8), os(&hf), os("--dequant-dir"), os(&out.join("deq"))],
    ))
    .unwrap();
    for t in report["tensors"].as_array().unwrap() {
        let (name, ty) = (t["name"].as_str().unwrap(), t["type"].as_str().unwrap());
        assert!(
            ty == "Q8_0" || (ty == "F32" && name.contains("norm")),
            "{name}: {ty}"
        );
        assert!(
            t["rel_err"].as_f64().unwrap() <= weight_rel_bound(WeightFormat::Q4_0),
            "{name}: {t}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&hf);
}

// ---------------------------------------------------------------------------------------
// 4. Bad GGUF input
// ---------------------------------------------------------------------------------------

/// Load through the public loader; a panic fails with the case named.
fn load_err(path: &Path, what: &str) -> String {
    let p = path.to_path_buf();
    let r = std::panic::catch_unwind(move || {
        let opts = LoadOptions {
            backend: BackendChoice::Cpu,
            ..LoadOptions::default()
        };
        yangtuo::Llama::load(&p, &opts, &mut progress()).map(|_| ())
    });
    match r {
        Err(_) => panic!("{what}: the loader panicked"),
        Ok(Ok(())) => panic!("{what}: loaded without error"),
        Ok(Err(Error::ModelLoad { path: p, msg })) => {
            assert_eq!(p, path, "{what}: the error names another path");
            msg
        }
        Ok(Err(e)) => panic!("{what}: expected Error::ModelLoad, got {e:?}"),
    }
}

#[test]
fn bad_gguf_input() {
    let Some(py) = python() else { return };
    let spec = small_spec(41);
    let hf = spec.write_temp("bad");
    let out = temp_dir("bad-gguf");
    let good = out.join("good.gguf");
    run_py(
        &py,
        "hf_to_gguf.py",
        &[os(&hf), os(&good), os("--type"), os("q4_0")],
    );
    let bytes = std::fs::read(&good).unwrap();
    let data_offset = yangtuo::weights::gguf::GgufFile::open(&good)
        .unwrap()
        .data_offset();

    // bad magic
    let path = out.join("magic.gguf");
    let mut b = bytes.clone();
    b[..4].copy_from_slice(b"GGML");
    std::fs::write(&path, &b).unwrap();
    let msg = load_err(&path, "bad magic");
    assert!(msg.contains("not a GGUF file"), "bad magic: {msg}");

    // truncated anywhere: in the header, the metadata, the tensor infos, the data
    let cuts = [
        0,
        3,
        4,
        10,
        23,
        100,
        1000,
        data_offset / 2,
        data_offset - 1,
        data_offset + 1,
        bytes.len() / 2,
        bytes.len() - 1,
    ];
    for cut in cuts {
        let path = out.join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = load_err(&path, &format!("truncated at {cut}"));
        println!("truncated at {cut}: {msg}");
        if cut >= data_offset {
            assert!(
                msg.contains("tensor `") && msg.contains("past the end"),
                "truncated at {cut}: {msg}"
            );
        }
        let _ = std::fs::remove_file(&path);
    }

    // self-consistent but corrupt: a tensor count one short, a misaligned or shared tensor
    // offset, a norm relabelled as Q8_0 (issue 18: these loaded and ran, some to NaN logits)
    let offset_field = |b: &[u8], name: &str| {
        let at = b
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap()
            + name.len();
        let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        at + 4 + 8 * n_dims + 4
    };
    let mut short = bytes.clone();
    let n = u64::from_le_bytes(short[8..16].try_into().unwrap());
    short[8..16].copy_from_slice(&(n - 1).to_le_bytes());
    let at = offset_field(&bytes, "blk.1.attn_q.weight");
    let mut misaligned = bytes.clone();
    let off = u64::from_le_bytes(misaligned[at..at + 8].try_into().unwrap());
    misaligned[at..at + 8].copy_from_slice(&(off + 1).to_le_bytes());
    let mut shared = bytes.clone();
    let other = offset_field(&bytes, "blk.1.attn_k.weight");
    let theirs: [u8; 8] = shared[other..other + 8].try_into().unwrap();
    shared[at..at + 8].copy_from_slice(&theirs);
    for (name, b, want) in [
        ("short", &short, "tensor count"),
        ("misaligned", &misaligned, "alignment"),
        ("shared", &shared, "share bytes"),
    ] {
        let path = out.join(format!("{name}.gguf"));
        std::fs::write(&path, b).unwrap();
        let msg = load_err(&path, name);
        assert!(msg.contains(want), "{name}: {msg}");
    }
    // a norm's type field relabelled from F32 (0) to Q8_0 (8): its bytes still fit
    let q8_norm = out.join("q8norm.gguf");
    let mut relabelled = bytes.clone();
    let ty = offset_field(&bytes, "blk.0.attn_norm.weight") - 4;
    assert_eq!(
        u32::from_le_bytes(relabelled[ty..ty + 4].try_into().unwrap()),
        0,
        "the norm is F32"
    );
    relabelled[ty..ty + 4].copy_from_slice(&8u32.to_le_bytes());
    std::fs::write(&q8_norm, &relabelled).unwrap();
    let msg = load_err(&q8_norm, "a Q8_0 norm");
    assert!(
        msg.contains("blk.0.attn_norm.weight") && msg.contains("norm"),
        "{msg}"
    );

    // an unsupported tensor type names the tensor and the type, on every backend
    let q5k = out.join("q5k.gguf");
    run_py(
        &py,
        "hf_to_gguf.py",
        &[
            os(&hf),
            os(&q5k),
            os("--type"),
            os("q4_0"),
            os("--override"),
            os("blk.1.ffn_up.weight=q5_k"),
        ],
    );
    let msg = load_err(&q5k, "Q5_K tensor");
    println!("Q5_K: {msg}");
    assert!(
        msg.contains("blk.1.ffn_up.weight") && msg.contains("Q5_K"),
        "Q5_K: {msg}"
    );
    for dev in [Dev::Wgpu] {
        let mut files = ModelFiles::open(&q5k).unwrap();
        match Model::load(&mut files, gpu(dev), 0, &mut progress()) {
            Err(Error::ModelLoad { msg, .. }) => assert!(
                msg.contains("blk.1.ffn_up.weight") && msg.contains("Q5_K"),
                "{msg}"
            ),
            Err(e) => panic!("Q5_K on {dev:?}: {e:?}"),
            Ok(_) => panic!("Q5_K on {dev:?}: loaded"),
        }
    }
    let _ = std::fs::remove_dir_all(hf);
    let _ = std::fs::remove_dir_all(out);
}

// ---------------------------------------------------------------------------------------
// 5. Memory
// ---------------------------------------------------------------------------------------

/// The GPU layout of every format holds exactly the block bytes (scales split off, never
/// decoded): a matrix on the GPU takes its GGUF size plus at most one alignment gap and
/// 16-byte rounding, never the 4 bytes per weight a dequantized copy would.
#[test]
fn gpu_layout_is_the_block_bytes() {
    let formats = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q4K,
        WeightFormat::Q6K,
    ];
    for f in formats {
        for cols in [256, 768, 4096, 11008] {
            if cols % f.block_elems() != 0 {
                continue;
            }
            let lay = layout(f, cols);
            let gpu_row = lay.payload_row + lay.scales_row;
            let file_row = f.row_bytes(cols, "").unwrap();
            assert_eq!(
                gpu_row, file_row,
                "{f:?} with {cols} columns: {gpu_row} bytes per row on the GPU, {file_row} in the file"
            );
        }
    }
}

/// A model of ~66M weights in Q4_0 (37 MB; 264 MB as f32), written by our GGUF writer with
/// random blocks, loaded and decoded in a child process that measures its anonymous memory:
/// the CPU holds one copy of the blocks, repacked eight rows at a time (the mapped pages
/// are let go), and wgpu holds the blocks; neither ever a dequantized copy.
#[test]
fn decode_keeps_weights_in_block_format() {
    if !cfg!(target_os = "linux") {
        println!("skipping: RssAnon is Linux-only");
        return;
    }
    let dir = temp_dir("memory");
    let path = dir.join("big.gguf");
    let (file_bytes, f32_bytes) = write_big_q4_0(&path);
    let exe = std::env::current_exe().unwrap();
    for dev in ["cpu", "wgpu"] {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "memory_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("YT_MEMORY_CHILD", &path)
            .env("YT_MEMORY_DEV", dev)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "memory child ({dev}) failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let growth: u64 = stdout
            .lines()
            .find_map(|l| l.split("anon growth bytes: ").nth(1))
            .unwrap_or_else(|| panic!("no measurement from the child:\n{stdout}"))
            .trim()
            .parse()
            .unwrap();
        println!(
            "{dev}: anonymous memory grew {:.1} MB loading and decoding a {:.1} MB Q4_0 model ({:.1} MB as f32)",
            growth as f64 / 1e6,
            file_bytes as f64 / 1e6,
            f32_bytes as f64 / 1e6
        );
        if dev == "cpu" {
            // one repacked copy of the Q4_0 blocks, the same size as the file's
            assert!(
                growth < file_bytes * 5 / 4,
                "cpu: anonymous memory grew {growth} bytes for {file_bytes} bytes of weights"
            );
        } else {
            // a software adapter keeps buffers in host memory: one copy of the blocks, and
            // the compiler's working set; a real GPU keeps them in its own memory
            assert!(
                growth < f32_bytes / 2,
                "wgpu: anonymous memory grew {growth} bytes; a dequantized copy is {f32_bytes}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Run by `decode_keeps_weights_in_block_format` in a child process (a no-op otherwise).
#[test]
fn memory_child() {
    let Ok(path) = std::env::var("YT_MEMORY_CHILD") else {
        return;
    };
    let dev = std::env::var("YT_MEMORY_DEV").unwrap();
    let rss_anon = || -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    };
    // warm up what the process needs anyway (thread pools, the device), before measuring
    let g = (dev == "wgpu").then(|| gpu(Dev::Wgpu));
    let before = rss_anon();
    let mut files = ModelFiles::open(Path::new(&path)).unwrap();
    let r = match g {
        None => runner(&mut files, Dev::Cpu),
        Some(g) => Model::load(&mut files, g, 0, &mut progress())
            .unwrap()
            .into_runner() as Arc<dyn Runner>,
    };
    let mut s = r.new_state(8, 1, 1).unwrap();
    for (pos, id) in [5u32, 9, 11].into_iter().enumerate() {
        r.forward(&mut s, &[id], pos, 1).unwrap();
        pollster::block_on(r.argmax(&s, 0)).unwrap();
    }
    let after = rss_anon();
    println!("anon growth bytes: {}", after.saturating_sub(before));
}

/// A Q4_0 GGUF of a 4-layer, dim 1024 model with random blocks (f16 scales 0.01): returns
/// (bytes of its tensors, bytes the same weights take as f32).
fn write_big_q4_0(path: &Path) -> (u64, u64) {
    use yangtuo::weights::gguf::{GgufTensorSpec, GgufWriter, llama_file_type};
    let c = yangtuo::Config {
        dim: 1024,
        hidden_dim: 2816,
        n_layers: 4,
        n_heads: 8,
        n_kv_heads: 8,
        head_dim: 128,
        vocab_size: 8000,
        max_seq_len: 256,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: yangtuo::RopeScaling::None,
        tie_embeddings: false,
        bos_id: Some(1),
        eos_ids: vec![2],
    };
    let w = GgufWriter::llama(&c, "big", llama_file_type(WeightFormat::Q4_0), None, None).unwrap();
    let ids = TensorId::all(&c);
    let fmt = |id: &TensorId| {
        if id.is_vector() {
            WeightFormat::F32
        } else {
            WeightFormat::Q4_0
        }
    };
    let specs: Vec<GgufTensorSpec> = ids
        .iter()
        .map(|id| GgufTensorSpec::weight(*id, fmt(id), &c).unwrap())
        .collect();
    let mut rng = yangtuo_tests::Rng::new(7);
    let (mut file_bytes, mut f32_bytes) = (0u64, 0u64);
    w.write_file(path, &specs, |i, spec| {
        let id = ids[i];
        let [rows, cols] = id.expected_shape(&c);
        file_bytes += spec.n_bytes;
        f32_bytes += (rows * cols * 4) as u64;
        if id.is_vector() {
            return Ok(vec![0x3f80_0000u32; cols]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>());
        }
        let mut b = vec![0u8; spec.n_bytes as usize];
        for blk in b.chunks_exact_mut(18) {
            blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            for byte in &mut blk[2..] {
                *byte = rng.next_u64() as u8;
            }
        }
        Ok(b)
    })
    .unwrap();
    (file_bytes, f32_bytes)
}
