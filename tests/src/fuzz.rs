//! A mutation fuzzer on stable Rust for the parsers that read untrusted input: the GGUF
//! reader (with the config, vocabulary and chat template it carries), the safetensors
//! header and config.json, the tokenizer.model protobuf, the tokenizer on arbitrary text,
//! chat-template rendering, and the request JSON. Not coverage-guided (cargo-fuzz needs
//! nightly and sanitizer builds, past CI's budget): each input is a seed from the corpus
//! (tests/fuzz/corpus/<target>/, plus seeds made here) with a few random mutations: bit
//! flips, random bytes, cut, repeated or spliced ranges, and integer fields set to
//! extremes (0, 1, 2^31, u32::MAX, u64::MAX), which is what finds header overflows.
//!
//! A target must return (an `Err` is fine) within `SLOW` and allocate no more than
//! `ALLOC_LIMIT` at once: `Watchdog` and the test binary's allocator enforce both by
//! aborting, after `run` has written the input to `last-input` for the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The most one input may take.
pub const SLOW: Duration = Duration::from_secs(5);
/// The largest single allocation an input may cause.
pub const ALLOC_LIMIT: usize = 1 << 30;

/// xorshift64*: small, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const EXTREMES: [u64; 8] = [
    0,
    1,
    0x7f,
    0xff,
    1 << 31,
    u32::MAX as u64,
    1 << 62,
    u64::MAX,
];

/// `seed` with 1 to 4 random mutations; `other` is a second corpus item to splice from.
pub fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len().max(1));
        match rng.below(8) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = rng.next() as u8,
            2 => b.truncate(at),
            3 if !b.is_empty() => {
                // an integer field (1, 2, 4 or 8 bytes) set to an extreme
                let width = 1 << rng.below(4);
                let v = EXTREMES[rng.below(EXTREMES.len())].to_le_bytes();
                let end = (at + width).min(b.len());
                b[at..end].copy_from_slice(&v[..end - at]);
            }
            4 if !b.is_empty() => {
                let len = rng.below(64.min(b.len() - at) + 1);
                let piece = b[at..at + len].to_vec();
                for _ in 0..1 + rng.below(8) {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            5 if !b.is_empty() => {
                let len = rng.below(b.len() - at + 1);
                b.drain(at..at + len);
            }
            6 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below((other.len() - from).min(256) + 1);
                b.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => b.insert(at.min(b.len()), rng.next() as u8),
        }
    }
    b
}

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    /// Seeds besides the checked-in corpus.
    pub seeds: Vec<Vec<u8>>,
    /// Parse `input`; any `Result` is fine, a panic is not.
    pub run: Box<dyn Fn(&[u8]) + Send + Sync>,
}

/// Aborts the process when one input runs past `SLOW`, naming the input's file.
pub struct Watchdog {
    started_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watchdog {
    pub fn start(report: PathBuf) -> Watchdog {
        let started_ms = Arc::new(AtomicU64::new(u64::MAX));
        let epoch = Instant::now();
        let s = started_ms.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let t = s.load(Ordering::Relaxed);
                if t != u64::MAX && epoch.elapsed().as_millis() as u64 > t + SLOW.as_millis() as u64
                {
                    eprintln!(
                        "fuzz: an input ran past {SLOW:?}; it is in {}",
                        report.display()
                    );
                    std::process::abort();
                }
            }
        });
        Watchdog { started_ms, epoch }
    }
    fn begin(&self) {
        self.started_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn end(&self) {
        self.started_ms.store(u64::MAX, Ordering::Relaxed);
    }
}

/// The corpus of `target`: its checked-in files, then its generated seeds.
pub fn corpus(repo: &Path, t: &Target) -> Vec<Vec<u8>> {
    let dir = repo.join("tests/fuzz/corpus").join(t.name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    out.extend(t.seeds.iter().cloned());
    assert!(
        !out.is_empty(),
        "fuzz target {} has no corpus in {}",
        t.name,
        dir.display()
    );
    out
}

/// Mutate and run `t` for `budget`; returns how many inputs ran. Each input is first
/// written to `report` so an abort (a hang, a huge allocation) leaves it behind. A panic
/// fails with the input saved beside it.
pub fn run(
    t: &Target,
    corpus: &[Vec<u8>],
    budget: Duration,
    cap: usize,
    seed: u64,
    report: &Path,
    dog: &Watchdog,
) -> usize {
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut n = 0;
    // the seeds as they are, then mutants
    let mut next = corpus.iter().cloned().collect::<Vec<_>>().into_iter();
    while t0.elapsed() < budget && n < cap {
        let input = next.next().unwrap_or_else(|| {
            let a = &corpus[rng.below(corpus.len())];
            let b = &corpus[rng.below(corpus.len())];
            mutate(a, b, &mut rng)
        });
        let _ = std::fs::write(report, &input);
        dog.begin();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(&input)));
        dog.end();
        if r.is_err() {
            let kept = report.with_extension(format!("{}-panic", t.name));
            let _ = std::fs::write(&kept, &input);
            panic!(
                "fuzz target {} panicked on an input (seed {seed}, input {n}); it is in {}",
                t.name,
                kept.display()
            );
        }
        n += 1;
    }
    n
}

/// The targets, with seeds made from `shared` (the real tokenizers) and a random model.
pub fn targets(shared: &Path) -> Vec<Target> {
    use yangtuo::api::{ChatRequest, CompletionRequest};
    use yangtuo::chat::{ChatTemplate, Message};
    use yangtuo::weights::Blob;
    use yangtuo::weights::gguf::GgufFile;

    let tokenizer_model =
        std::fs::read(shared.join("tokenizers/llama2/tokenizer.model")).unwrap_or_default();
    // the tokenizer-text target's tokenizer is the repository's own small model, so it never
    // depends on tests/data
    let repo_model = include_bytes!("../fuzz/corpus/tokenizer-model/tiny-bpe.model");
    let sp = Arc::new(
        yangtuo::tokenizer::Tokenizer::from_bytes(repo_model)
            .expect("tests/fuzz's tiny-bpe.model loads"),
    );
    let gguf_seed = tiny_gguf(shared);
    let safetensors_seed = tiny_safetensors();
    let config_seed = crate::Spec::default()
        .config_json()
        .to_string()
        .into_bytes();

    vec![
        Target {
            name: "gguf",
            seeds: vec![gguf_seed],
            run: Box::new(|b| {
                let Ok(g) = GgufFile::parse(Blob::from_vec(b.to_vec()), Path::new("fuzz.gguf"))
                else {
                    return;
                };
                let _ = g.config();
                if let Ok(tok) = yangtuo::weights::gguf::tokenizer(&g) {
                    if let Some(t) = yangtuo::chat::own_template::from_gguf(&g, &tok) {
                        let _ = t.check_limits();
                    }
                }
            }),
        },
        Target {
            name: "safetensors",
            seeds: vec![safetensors_seed, config_seed],
            run: Box::new(|b| {
                // the 8-byte length, then the JSON header; or a config.json
                if b.len() >= 8 {
                    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                    if let Some(header) = b.get(8..8usize.saturating_add(n)) {
                        let _ = yangtuo::weights::safetensors::parse_header(
                            header,
                            Path::new("fuzz.safetensors"),
                        );
                    }
                }
                let _ = yangtuo::config::HfConfig::from_json(
                    &String::from_utf8_lossy(b),
                    Path::new("config.json"),
                );
            }),
        },
        Target {
            name: "tokenizer-model",
            seeds: vec![tokenizer_model],
            run: Box::new(|b| {
                if let Ok(t) = yangtuo::tokenizer::Tokenizer::from_bytes(b) {
                    let _ = t.encode("羊驼 llama <s>\u{0}");
                }
            }),
        },
        Target {
            name: "tokenizer-text",
            seeds: vec!["羊驼吃什么？ Hello <s>[INST]".as_bytes().to_vec()],
            run: Box::new(move |b| {
                let text = String::from_utf8_lossy(b);
                if let Ok(ids) = sp.encode(&text) {
                    let _ = sp.decode(&ids);
                }
            }),
        },
        Target {
            name: "chat-template",
            seeds: vec![],
            run: Box::new(|b| {
                let source = String::from_utf8_lossy(b).into_owned();
                let t = ChatTemplate::Jinja {
                    source,
                    bos: "<s>".into(),
                    eos: "</s>".into(),
                };
                let _ = t.check_limits();
                let tok = yangtuo::tokenizer::Tokenizer::Absent { vocab_size: 8 };
                let chat = [
                    Message::system("s"),
                    Message::user("羊驼"),
                    Message::assistant("a"),
                    Message::user("q"),
                ];
                let _ = t.render(&tok, 1, 2, &chat, false);
            }),
        },
        Target {
            name: "request",
            seeds: vec![],
            run: Box::new(|b| {
                if let Ok(r) = ChatRequest::from_json(b) {
                    let _ = r.params.check(&Default::default());
                }
                if let Ok(r) = CompletionRequest::from_json(b) {
                    let _ = r
                        .params
                        .check_for(&Default::default(), yangtuo::api::Endpoint::Text);
                }
            }),
        },
    ]
}

/// A small random model as GGUF bytes, through the project's writer, with the Llama 2
/// vocabulary and Hugging Face's Llama 2 chat template embedded (so the vocabulary and
/// template readers see mutants too). Empty if `shared` has no tokenizer.
fn tiny_gguf(shared: &Path) -> Vec<u8> {
    let spec = crate::Spec {
        hidden: 32,
        intermediate: 64,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        vocab: 32000,
        ..crate::Spec::default()
    };
    let dir = spec.write_temp("fuzz-seed");
    let out = dir.join("m.gguf");
    let copied = std::fs::copy(
        shared.join("tokenizers/llama2/tokenizer.model"),
        dir.join("tokenizer.model"),
    )
    .is_ok();
    let config = serde_json::json!({"chat_template": include_str!("../fuzz/corpus/chat-template/hf-llama2.jinja")});
    let _ = std::fs::write(dir.join("tokenizer_config.json"), config.to_string());
    let ok = copied
        && std::process::Command::new(crate::cli_bin())
            .arg("quantize")
            .arg(&dir)
            .arg(&out)
            .args(["--type", "q8_0"])
            .output()
            .is_ok_and(|o| o.status.success());
    let bytes = if ok {
        std::fs::read(&out).unwrap_or_default()
    } else {
        vec![]
    };
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// The first bytes of a random model's model.safetensors: its length prefix and header.
fn tiny_safetensors() -> Vec<u8> {
    let spec = crate::Spec {
        hidden: 32,
        intermediate: 64,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        vocab: 64,
        ..crate::Spec::default()
    };
    let dir = spec.write_temp("fuzz-seed-st");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let n = bytes
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    bytes[..(8 + n).min(bytes.len())].to_vec()
}

/// The allocator fuzz binaries install (`#[global_allocator]`): one allocation past
/// `ALLOC_LIMIT` fails, which aborts the process with the size, so a parser that trusts a
/// length field is caught instead of swapping the machine.
pub struct Limited;

// SAFETY: forwards to the system allocator, refusing only sizes it would be asked for.
unsafe impl std::alloc::GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// Run every target (or those named in `only`) for `secs` seconds in all, split evenly,
/// and at most `cap` inputs per target; prints inputs per target. What
/// `tests/tests/fuzz.rs` (a fixed seed and cap: the same inputs on every machine) and the
/// `fuzz` binary (a fresh seed, no cap: exploration) call.
pub fn campaign(secs: f64, cap: usize, only: &[String], seed: u64) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("YANGTUO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("tests/data"));
    let report = crate::temp_dir("fuzz").join("last-input");
    eprintln!(
        "fuzz: seed {seed}; each input is written to {} before it runs",
        report.display()
    );
    let dog = Watchdog::start(report.clone());
    let targets: Vec<Target> = targets(&shared)
        .into_iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t.name))
        .collect();
    assert!(!targets.is_empty(), "no fuzz target named {only:?}");
    let each = Duration::from_secs_f64(secs / targets.len() as f64);
    for (i, t) in targets.iter().enumerate() {
        let corpus = corpus(&repo, t);
        let t0 = Instant::now();
        let n = run(
            t,
            &corpus,
            each,
            cap,
            seed.wrapping_add(i as u64),
            &report,
            &dog,
        );
        eprintln!(
            "fuzz: {:<16} {n:>8} inputs in {:.1?}, no panic, hang or allocation over 1 GiB",
            t.name,
            t0.elapsed()
        );
    }
}
