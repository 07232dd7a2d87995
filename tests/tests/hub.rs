//! Models by Hugging Face repo id (`core/src/hub.rs`) against a local stand-in for the Hub
//! (`yangtuo_tests::fake_hub`): download into the standard cache and chat; load again offline
//! with the server gone; pick one GGUF by its quant; resume a download the server cut off (in
//! the same run and from a previous run's `.incomplete`) or that stalled past
//! `YANGTUO_HUB_TIMEOUT`; and clear `ModelLoad` errors for a
//! gated repo (401), a missing one (404), no network, and an offline cache miss.
//!
//! `HF_ENDPOINT`, `HF_HOME` and `HF_HUB_OFFLINE` are process-wide, so every test here holds
//! one lock while it sets them (and the CLI runs get theirs per process).
//!
//! Needs `tests/data` (a real tokenizer; skipped without it) and, for the GGUF and CLI cases,
//! the `yangtuo` binary of the same profile (`cargo build --release -p yangtuo-cli`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use yangtuo::hub::{HubProgress, resolve_model};
use yangtuo::{BackendChoice, Error, GenerateOptions, Llama, LoadOptions, Message, SamplingParams};
use yangtuo_tests::fake_hub::{FakeHub, oid};
use yangtuo_tests::{Spec, cli_bin};

fn shared_dir() -> Option<PathBuf> {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data"));
    d.join("tokenizers").is_dir().then_some(d)
}

macro_rules! shared_or_skip {
    () => {
        match shared_dir() {
            Some(d) => d,
            None => panic!("tests/data (the tokenizers and goldens the tests need) is missing from the repository"),
        }
    };
}

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// The Hub's environment variables for one test, restored when dropped. Holding it
/// serialises the tests of this file.
struct HubEnv {
    saved: Vec<(&'static str, Option<OsString>)>,
    _lock: MutexGuard<'static, ()>,
}

const VARS: [&str; 9] = [
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "NO_PROXY",
    "no_proxy",
    "YANGTUO_HUB_TIMEOUT",
];

impl HubEnv {
    fn new(endpoint: &str, home: &Path) -> HubEnv {
        let lock = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let saved = VARS.iter().map(|k| (*k, std::env::var_os(k))).collect();
        let mut e = HubEnv { saved, _lock: lock };
        for k in VARS {
            e.set(k, None);
        }
        e.set("HF_ENDPOINT", Some(endpoint));
        e.set("HF_HOME", Some(home.to_str().unwrap()));
        e.set("NO_PROXY", Some("127.0.0.1,localhost"));
        e.set("no_proxy", Some("127.0.0.1,localhost"));
        e
    }

    fn set(&mut self, k: &str, v: Option<&str>) {
        // SAFETY: every test of this binary holds ENV_LOCK while the environment changes, and
        // the library reads it only inside calls made under the same lock.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

impl Drop for HubEnv {
    fn drop(&mut self) {
        for (k, v) in std::mem::take(&mut self.saved) {
            // SAFETY: as in `set`; the lock is still held.
            unsafe {
                match v {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
        }
    }
}

/// A folder deleted when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str) -> Temp {
        Temp(yangtuo_tests::temp_dir(name))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Temp {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A small random Llama with Llama 2's tokenizer, as a Hugging Face folder.
fn tiny_model(shared: &Path, shards: usize, seed: u64) -> Temp {
    let d = Temp::new("hub-model");
    let spec = Spec {
        hidden: 64,
        intermediate: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 32000,
        dtype: safetensors::Dtype::F16,
        seed,
        ..Spec::default()
    };
    spec.write(&d, shards);
    for f in ["tokenizer.model", "tokenizer.json"] {
        std::fs::copy(shared.join("tokenizers/llama2").join(f), d.join(f)).unwrap();
    }
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .unwrap();
    d
}

/// The files of a folder as a repo's files.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn cpu() -> LoadOptions {
    LoadOptions {
        backend: BackendChoice::Cpu,
        ..LoadOptions::default()
    }
}

fn answer(llama: &Llama) -> String {
    let opts = GenerateOptions {
        max_tokens: Some(12),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let c = llama.chat(&[Message::user("你好，羊驼！")], &opts).unwrap();
    format!("{:?}", c.ids)
}

fn load(spec: &str) -> yangtuo::Result<Llama> {
    Llama::load(spec, &cpu(), &mut |_| {})
}

fn resolve(spec: &str) -> yangtuo::Result<PathBuf> {
    resolve_model(spec, &mut |_: HubProgress| {})
}

fn load_error(spec: &str) -> String {
    match load(spec) {
        Ok(_) => panic!("{spec}: loaded, but an error was expected"),
        Err(e @ Error::ModelLoad { .. }) => {
            eprintln!("{spec}: {e}");
            e.to_string()
        }
        Err(e) => panic!("{spec}: expected a ModelLoad error, got {e:?}"),
    }
}

/// `yangtuo generate --model MODEL` (4 tokens, JSON) with `HF_HOME=home` and `env`.
fn cli_generate(model: &str, home: &Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(cli_bin())
        .args([
            "generate",
            "--model",
            model,
            "--backend",
            "cpu",
            "--prompt",
            "hi",
            "--max-tokens",
            "4",
            "--json",
        ])
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("YANGTUO_BACKEND")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A free port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn downloads_into_the_cache_then_works_offline() {
    let shared = shared_or_skip!();
    let model = tiny_model(&shared, 1, 7);
    let mut files = files_of(&model);
    files.push(("pytorch_model.bin".into(), b"never downloaded".to_vec()));
    files.push(("README.md".into(), b"# tiny".to_vec()));
    let hub = FakeHub::start();
    hub.add_repo("owner/tiny", files, false);
    let commit = hub.repo("owner/tiny").unwrap().commit;
    let home = Temp::new("hf-home");
    let mut env = HubEnv::new(&hub.endpoint(), &home);

    let want = answer(&Llama::load(&*model, &cpu(), &mut |_| {}).unwrap());
    let mut events = vec![];
    let llama = Llama::load("owner/tiny", &cpu(), &mut |p| {
        events.push((p.tensor.to_string(), p.done_bytes, p.total_bytes))
    })
    .unwrap();
    assert_eq!(
        answer(&llama),
        want,
        "the downloaded model answers as the original"
    );
    let st = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(
        events
            .iter()
            .any(|(t, d, n)| t == "download model.safetensors" && *d == st && *n == st),
        "download progress reaches the file size"
    );

    // the standard layout: refs/main → commit, snapshot links into blobs
    let repo = home.join("hub/models--owner--tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    let snap = repo.join("snapshots").join(&commit);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let p = snap.join(f);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(model.join(f)).unwrap(),
            "{f}"
        );
        #[cfg(unix)]
        {
            let target = std::fs::read_link(&p).unwrap();
            assert_eq!(
                target,
                Path::new("../../blobs").join(oid(&std::fs::read(model.join(f)).unwrap())),
                "{f}"
            );
        }
    }
    assert!(
        !snap.join("pytorch_model.bin").exists() && !snap.join("README.md").exists(),
        "only what loading needs"
    );
    assert!(
        !hub.requests()
            .iter()
            .any(|r| r.contains("pytorch_model.bin"))
    );

    // the CLI downloads too, into its own cache, and says so
    let cli_home = Temp::new("hf-home");
    let out = cli_generate(
        "owner/tiny",
        &cli_home,
        &[("HF_ENDPOINT", &hub.endpoint()), ("NO_PROXY", "127.0.0.1")],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "yangtuo generate --model owner/tiny: {log}"
    );
    assert!(log.contains("downloading model.safetensors"), "{log}");
    assert!(
        cli_home
            .join("hub/models--owner--tiny/snapshots")
            .join(&commit)
            .join("model.safetensors")
            .is_file()
    );

    // the server is gone: offline mode reads the cache, and so does a failed connection
    hub.stop();
    env.set("HF_HUB_OFFLINE", Some("1"));
    assert_eq!(
        answer(&load("owner/tiny").unwrap()),
        want,
        "HF_HUB_OFFLINE=1 loads from the cache"
    );
    env.set("HF_HUB_OFFLINE", None);
    assert_eq!(
        answer(&load("owner/tiny").unwrap()),
        want,
        "an unreachable hub falls back to the cache"
    );

    let out = cli_generate("owner/tiny", &home, &[("HF_HUB_OFFLINE", "1")]);
    assert!(
        out.status.success(),
        "yangtuo generate --model owner/tiny: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 4);
}

#[test]
fn picks_one_gguf_by_quant() {
    let shared = shared_or_skip!();
    let model = tiny_model(&shared, 1, 11);
    let out = Temp::new("hub-gguf");
    let mut files = vec![("README.md".to_string(), b"# GGUF".to_vec())];
    for q in ["q8_0", "q4_0"] {
        let path = out.join(format!("tiny.{}.gguf", q.to_uppercase()));
        let st = Command::new(cli_bin())
            .args([
                "quantize",
                model.to_str().unwrap(),
                path.to_str().unwrap(),
                "--type",
                q,
            ])
            .env_remove("YANGTUO_BACKEND")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "quantize: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        files.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&path).unwrap(),
        ));
    }
    // a decoy: loading it would fail
    files.push(("tiny.Q4_K_M.gguf".into(), b"not a gguf file".to_vec()));
    let hub = FakeHub::start();
    hub.add_repo("owner/tiny-GGUF", files, false);
    let home = Temp::new("hf-home");
    let _env = HubEnv::new(&hub.endpoint(), &home);

    let path = resolve("owner/tiny-GGUF:q8_0").unwrap();
    assert!(path.ends_with("tiny.Q8_0.gguf"), "{}", path.display());
    let want = answer(&Llama::load(out.join("tiny.Q8_0.gguf"), &cpu(), &mut |_| {}).unwrap());
    assert_eq!(answer(&load("owner/tiny-GGUF:Q8_0").unwrap()), want);
    let gets: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET") && r.contains("/resolve/"))
        .collect();
    assert!(
        gets.iter().all(|r| r.contains("tiny.Q8_0.gguf")),
        "only the picked file is downloaded: {gets:?}"
    );

    let e = load_error("owner/tiny-GGUF:Q5_K_M");
    assert!(
        e.contains("Q5_K_M") && e.contains("Q8_0") && e.contains("Q4_0") && e.contains("Q4_K_M"),
        "{e}"
    );
    let e = load_error("owner/tiny-GGUF");
    assert!(e.contains(":QUANT") && e.contains("Q8_0"), "{e}");
}

#[test]
fn a_stalled_download_resumes_after_the_timeout() {
    let shared = shared_or_skip!();
    let model = tiny_model(&shared, 2, 17);
    let hub = FakeHub::start();
    hub.add_repo("owner/tiny-stalled", files_of(&model), false);
    let home = Temp::new("hf-home");
    let mut env = HubEnv::new(&hub.endpoint(), &home);
    env.set("YANGTUO_HUB_TIMEOUT", Some("0.5"));
    let shard = "model-00001-of-00002.safetensors";
    let bytes = std::fs::read(model.join(shard)).unwrap();
    let half = bytes.len() / 2;
    hub.stall_once(shard, half);
    let t0 = std::time::Instant::now();
    let dir = resolve("owner/tiny-stalled").unwrap();
    assert!(
        t0.elapsed().as_secs_f64() < 8.0,
        "the stall was not cut short: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        std::fs::read(dir.join(shard)).unwrap(),
        bytes,
        "the resumed file is byte-exact"
    );
    let log = hub.requests();
    assert!(
        log.iter().any(|r| r.contains(shard) && r.ends_with(&format!("bytes={half}-{}", bytes.len() - 1))),
        "a Range request continued after the stall: {log:?}"
    );
}

#[test]
fn resumes_an_interrupted_download() {
    let shared = shared_or_skip!();
    let model = tiny_model(&shared, 2, 13);
    let hub = FakeHub::start();
    hub.add_repo("owner/tiny-sharded", files_of(&model), false);
    let commit = hub.repo("owner/tiny-sharded").unwrap().commit;
    let home = Temp::new("hf-home");
    let _env = HubEnv::new(&hub.endpoint(), &home);
    let shard = "model-00002-of-00002.safetensors";
    let bytes = std::fs::read(model.join(shard)).unwrap();
    let half = bytes.len() / 2;

    // the connection drops halfway through a shard: the download continues from there
    hub.cut_once(shard, half);
    let dir = resolve("owner/tiny-sharded").unwrap();
    assert_eq!(
        dir,
        home.join("hub/models--owner--tiny-sharded/snapshots")
            .join(&commit)
    );
    assert_eq!(
        std::fs::read(dir.join(shard)).unwrap(),
        bytes,
        "the resumed file is byte-exact"
    );
    let log = hub.requests();
    assert!(
        log.iter().any(|r| r.starts_with("GET")
            && r.contains(shard)
            && r.ends_with(&format!("bytes={half}-{}", bytes.len() - 1))),
        "a Range request continued the cut file: {log:?}"
    );
    let want = answer(&Llama::load(&*model, &cpu(), &mut |_| {}).unwrap());
    assert_eq!(answer(&load("owner/tiny-sharded").unwrap()), want);

    // a previous run stopped a third of the way: its .incomplete file is continued
    let home2 = Temp::new("hf-home");
    let _env = {
        drop(_env);
        HubEnv::new(&hub.endpoint(), &home2)
    };
    let blobs = home2.join("hub/models--owner--tiny-sharded/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let third = bytes.len() / 3;
    std::fs::write(
        blobs.join(format!("{}.incomplete", oid(&bytes))),
        &bytes[..third],
    )
    .unwrap();
    let dir = resolve("owner/tiny-sharded").unwrap();
    assert_eq!(std::fs::read(dir.join(shard)).unwrap(), bytes);
    assert!(!blobs.join(format!("{}.incomplete", oid(&bytes))).exists());
    let log = hub.requests();
    assert!(
        log.iter().any(
            |r| r.contains(shard) && r.ends_with(&format!("bytes={third}-{}", bytes.len() - 1))
        ),
        "{log:?}"
    );

    // a server that ignores Range sends the whole file again: the partial one is not spliced
    let home3 = Temp::new("hf-home");
    let _env = {
        drop(_env);
        HubEnv::new(&hub.endpoint(), &home3)
    };
    let blobs = home3.join("hub/models--owner--tiny-sharded/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        blobs.join(format!("{}.incomplete", oid(&bytes))),
        &bytes[..third],
    )
    .unwrap();
    hub.ignore_ranges(true);
    let dir = resolve("owner/tiny-sharded").unwrap();
    hub.ignore_ranges(false);
    assert_eq!(std::fs::read(dir.join(shard)).unwrap(), bytes);
}

#[test]
fn clear_errors() {
    let shared = shared_or_skip!();
    let model = tiny_model(&shared, 1, 17);
    let hub = FakeHub::start();
    hub.add_repo("meta-llama/gated", files_of(&model), true);
    hub.add_repo(
        "owner/bin-only",
        vec![
            ("config.json".into(), b"{}".to_vec()),
            ("pytorch_model.bin".into(), vec![0; 16]),
        ],
        false,
    );
    let home = Temp::new("hf-home");
    let mut env = HubEnv::new(&hub.endpoint(), &home);

    let e = load_error("meta-llama/gated");
    assert!(
        e.contains("401") && e.contains("HF_TOKEN") && e.contains("license"),
        "gated: {e}"
    );
    env.set("HF_TOKEN", Some("hf_test"));
    let e = load_error("meta-llama/gated");
    assert!(
        e.contains("401") && e.contains("accept") && e.contains("license"),
        "gated with a token: {e}"
    );
    env.set("HF_TOKEN", None);

    let e = load_error("owner/missing");
    assert!(
        e.contains("404") && e.contains("owner/missing") && e.contains("not a local file"),
        "missing: {e}"
    );

    let e = load_error("owner/bin-only");
    assert!(
        e.contains(".bin") && e.contains("safetensors"),
        "bin only: {e}"
    );

    env.set(
        "HF_ENDPOINT",
        Some(&format!("http://127.0.0.1:{}", closed_port())),
    );
    let e = load_error("owner/tiny");
    assert!(
        e.contains("cannot reach") && e.contains("HF_ENDPOINT"),
        "no network: {e}"
    );

    env.set("HF_HUB_OFFLINE", Some("1"));
    let e = load_error("owner/tiny");
    assert!(
        e.contains("HF_HUB_OFFLINE") && e.contains("does not hold it"),
        "offline miss: {e}"
    );

    // a path that does not exist and is no repo id keeps the loader's own message
    let e = load_error("no/such/model/folder");
    assert!(e.contains("no such file or directory"), "{e}");
}
