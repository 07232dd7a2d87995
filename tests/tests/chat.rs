//! End-to-end tests of the chat layer: templates against Meta's reference prompt ids,
//! validation errors, streaming, stop strings, seeded sampling, sessions, finish reasons,
//! the Llama2-Chinese and jinja templates, and the `yangtuo` CLI's tokenize, eval,
//! generate and chat commands.
//!
//! Models are random-weight Llama models (`Spec`) with a real tokenizer from `tests/data`
//! copied into their folder; they run on the `cpu` backend, a few also on `wgpu`. Where a
//! test needs a known answer (Chinese text arriving as byte tokens, EOS), it uses a
//! "scripted" model: weights that make the model a lookup table from the current token to
//! the next, so its answer is fixed whatever the sampling.
//!
//! Needs:
//! - `tests/data` (tokenizers, golden files, eval questions); without it every test fails,
//!   naming the folder.
//! - For the CLI tests, the `yangtuo` binary of the same profile, built first:
//!   `cargo build --release -p yangtuo-cli` (CI does this before the tests).
//! - Optionally Python with `sentencepiece` (`$YANGTUO_PYTHON`, else
//!   `/root/.cache/yt-venv/bin/python`) as an independent encoder in the Llama2-Chinese test.

use safetensors::Dtype;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use yangtuo::chat::{ChatTemplate, StopMatcher};
use yangtuo::tokenizer::{StreamDecoder, Tokenizer};
use yangtuo::{
    BackendChoice, Completion, Error, FinishReason, Flow, GenerateOptions, Llama, LoadOptions,
    Message, SamplingParams,
};
use yangtuo_tests::{Spec, cli_bin};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

fn shared_dir() -> Option<PathBuf> {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data"));
    d.join("tokenizers").is_dir().then_some(d)
}

/// The shared data folder; a test without it fails (the test command and CI always have it).
macro_rules! shared_or_fail {
    () => {
        match shared_dir() {
            Some(d) => d,
            None => panic!("tests/data (the tokenizers and goldens the tests need) is missing from the repository"),
        }
    };
}

const LLAMA2: &str = "llama2";
const CHINESE: &str = "chinese-llama2";
const BOS: u32 = 1;
const EOS: u32 = 2;

fn vocab_of(tokenizer: &str) -> usize {
    if tokenizer == CHINESE { 55296 } else { 32000 }
}

/// A model folder that is deleted when dropped (also when the test panics).
struct TempModel(PathBuf);

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempModel {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A small random f32 model with the full vocabulary of `tokenizer`.
fn spec(tokenizer: &str, seed: u64) -> Spec {
    Spec {
        hidden: 64,
        intermediate: 160,
        layers: 2,
        heads: 4,
        kv_heads: 4,
        vocab: vocab_of(tokenizer),
        max_pos: 1024,
        dtype: Dtype::F32,
        seed,
        ..Spec::default()
    }
}

fn copy_tokenizer(shared: &Path, tokenizer: &str, dir: &Path) {
    std::fs::copy(
        shared
            .join("tokenizers")
            .join(tokenizer)
            .join("tokenizer.model"),
        dir.join("tokenizer.model"),
    )
    .unwrap();
}

/// A random model folder with `tokenizer`'s tokenizer.model.
fn random_model(shared: &Path, name: &str, tokenizer: &str, seed: u64) -> TempModel {
    let dir = TempModel(spec(tokenizer, seed).write_temp(name));
    copy_tokenizer(shared, tokenizer, &dir);
    dir
}

fn opts(backend: BackendChoice, template: Option<&str>, ctx: Option<usize>) -> LoadOptions {
    LoadOptions {
        backend,
        template: template.map(str::to_string),
        ctx_len: ctx,
        ..LoadOptions::default()
    }
}

fn load(dir: &Path, o: &LoadOptions) -> Llama {
    Llama::load(dir, o, &mut |_| {}).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn load_cpu(dir: &Path) -> Llama {
    load(dir, &opts(BackendChoice::Cpu, None, None))
}

fn greedy(max: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: Some(max),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    }
}

fn sampled(max: usize, temperature: f32, seed: u64) -> GenerateOptions {
    GenerateOptions {
        max_tokens: Some(max),
        sampling: SamplingParams {
            temperature,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        ..Default::default()
    }
}

/// `chat_stream`, returning the completion and every delta.
fn stream(llama: &Llama, msgs: &[Message], o: &GenerateOptions) -> (Completion, Vec<String>) {
    let mut deltas = vec![];
    let c = llama
        .chat_stream(msgs, o, None, &mut |t| {
            deltas.push(t.to_string());
            Flow::Continue
        })
        .unwrap();
    (c, deltas)
}

fn conversation() -> Vec<Message> {
    vec![
        Message::system("You are a helpful assistant."),
        Message::user("What is the capital of France?"),
        Message::assistant("Paris."),
        Message::user("And of Italy?"),
    ]
}

/// Golden lines as (messages, ids).
fn chat_golden(shared: &Path, tokenizer: &str) -> Vec<(Vec<Message>, Vec<u32>)> {
    let path = shared
        .join("golden")
        .join(format!("chat-{tokenizer}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                serde_json::from_value(v["messages"].clone()).unwrap(),
                serde_json::from_value(v["ids"].clone()).unwrap(),
            )
        })
        .collect()
}

/// Text and ids of every delta of a StreamDecoder over `ids`.
fn token_pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut dec = StreamDecoder::new();
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
    let rest = dec.finish(tok).unwrap();
    pieces.last_mut().expect("some ids").push_str(&rest);
    pieces
}

// --- the scripted model -------------------------------------------------------------------

/// Write `tensors` as one safetensors file of f32.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (n, shape, v) in tensors {
        header.insert(n.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + v.len() * 4]}));
        off += v.len() * 4;
    }
    let mut h = serde_json::Value::Object(header).to_string();
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    for (_, _, v) in tensors {
        for x in v {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    f.flush().unwrap();
}

/// A model that, after the token `start`, answers exactly `answer` and then EOS.
///
/// Every attention and MLP output projection is zero, so the last hidden state is the
/// current token's embedding. Token i of the chain `start, answer...` embeds as the unit
/// vector e_i, and the lm_head row of its successor is 10·e_i: after the final norm that
/// successor's logit is ~80 and every other logit 0, so greedy and sampled decoding (at any
/// sane temperature) give the same answer. The chain's tokens must be distinct.
fn scripted_model(
    shared: &Path,
    name: &str,
    tokenizer: &str,
    start: u32,
    answer: &[u32],
) -> TempModel {
    let spec = spec(tokenizer, 99);
    let chain: Vec<u32> = std::iter::once(start)
        .chain(answer.iter().copied())
        .collect();
    let next: Vec<u32> = answer.iter().copied().chain(std::iter::once(EOS)).collect();
    assert!(
        chain.len() <= spec.hidden,
        "a chain of {} tokens needs hidden >= that",
        chain.len()
    );
    let mut sorted = chain.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        chain.len(),
        "scripted chain tokens must be distinct: {chain:?}"
    );
    assert!(!chain.contains(&EOS));
    let d = spec.hidden;
    let mut tensors = spec.tensors();
    for (n, _, v) in tensors.iter_mut() {
        if n.ends_with("o_proj.weight") || n.ends_with("down_proj.weight") {
            v.iter_mut().for_each(|x| *x = 0.0);
        } else if n == "model.norm.weight" {
            v.iter_mut().for_each(|x| *x = 1.0);
        } else if n == "model.embed_tokens.weight" {
            for (i, &t) in chain.iter().enumerate() {
                let row = &mut v[t as usize * d..(t as usize + 1) * d];
                row.iter_mut().for_each(|x| *x = 0.0);
                row[i] = 1.0;
            }
        } else if n == "lm_head.weight" {
            v.iter_mut().for_each(|x| *x = 0.0);
            for (i, &t) in next.iter().enumerate() {
                v[t as usize * d + i] = 10.0;
            }
        }
    }
    let dir = TempModel(yangtuo_tests::temp_dir(name));
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&spec.config_json()).unwrap(),
    )
    .unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    copy_tokenizer(shared, tokenizer, &dir);
    dir
}

/// The last id of every llama2-template prompt: `]` of `[/INST]`.
const INST_END: u32 = 29962;
const COFFEE_ANSWER: &str = "咖的作用是什么？";

// --- the CLI --------------------------------------------------------------------------------

/// The `yangtuo` binary next to this test's profile folder (`<target>/<profile>/yangtuo`).
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the CLI with `args`, feeding `stdin` from a thread (outputs can exceed a pipe buffer).
fn cli(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(cli_bin())
        .args(args)
        .env_remove("YANGTUO_BACKEND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

// --- Python sentencepiece, as an encoder the project did not write ------------------------

fn python() -> Option<(PathBuf, bool)> {
    if let Ok(p) = std::env::var("YANGTUO_PYTHON") {
        if !p.is_empty() {
            return Some((PathBuf::from(p), true));
        }
    }
    let p = PathBuf::from("/root/.cache/yt-venv/bin/python");
    p.is_file().then_some((p, false))
}

/// `sentencepiece.encode` of each text, or None when no Python with sentencepiece is found
/// (an error when `$YANGTUO_PYTHON` names one explicitly).
fn py_encode(model: &Path, texts: &[String]) -> Option<Vec<Vec<u32>>> {
    let (py, explicit) = python()?;
    let script = "import sys, json, sentencepiece as spm\n\
                  sp = spm.SentencePieceProcessor(model_file=sys.argv[1])\n\
                  print(json.dumps([sp.encode(t) for t in json.load(sys.stdin)]))";
    let mut child = match Command::new(&py)
        .args(["-c", script, model.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if !explicit => {
            eprintln!(
                "note: {} not runnable ({e}); skipping the Python cross-check",
                py.display()
            );
            return None;
        }
        Err(e) => panic!("YANGTUO_PYTHON={}: {e}", py.display()),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(texts).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!explicit, "YANGTUO_PYTHON={} failed: {err}", py.display());
        eprintln!(
            "note: Python sentencepiece unavailable ({err}); skipping the Python cross-check"
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

// ---------------------------------------------------------------------------------------
// 1. Chat goldens and `yangtuo tokenize`
// ---------------------------------------------------------------------------------------

/// Every golden conversation renders to Meta's reference `chat_completion` prompt ids,
/// token for token, with one BOS per turn and never two in a row.
#[test]
fn chat_goldens_render_token_exact() {
    let shared = shared_or_fail!();
    for tokenizer in [LLAMA2, CHINESE] {
        let dir = random_model(&shared, &format!("golden-{tokenizer}"), tokenizer, 1);
        let llama = load(&dir, &opts(BackendChoice::Cpu, Some("llama2"), None));
        assert_eq!(llama.template(), &ChatTemplate::Llama2);
        let lines = chat_golden(&shared, tokenizer);
        assert!(
            lines.len() >= 10,
            "{tokenizer}: only {} golden lines",
            lines.len()
        );
        for (i, (msgs, want)) in lines.iter().enumerate() {
            let got = llama.render(msgs, false).unwrap();
            assert_eq!(&got, want, "{tokenizer} chat golden line {}", i + 1);
            assert_eq!(got[0], BOS, "line {}", i + 1);
            assert!(
                !got.windows(2).any(|w| w == [BOS, BOS]),
                "double BOS on line {}",
                i + 1
            );
            let users = msgs.iter().filter(|m| m.role == "user").count();
            assert_eq!(
                got.iter().filter(|&&t| t == BOS).count(),
                users,
                "one BOS per turn, line {}",
                i + 1
            );
        }
        eprintln!("{tokenizer}: {} chat golden lines match", lines.len());
    }
}

/// `yangtuo tokenize --chat` reproduces the chat goldens line by line.
#[test]
fn cli_tokenize_chat_goldens() {
    let shared = shared_or_fail!();
    for tokenizer in [LLAMA2, CHINESE] {
        let input = std::fs::read_to_string(
            shared
                .join("golden")
                .join(format!("chat-{tokenizer}.jsonl")),
        )
        .unwrap();
        let model = shared
            .join("tokenizers")
            .join(tokenizer)
            .join("tokenizer.model");
        let r = cli(
            &["tokenize", "--tokenizer", model.to_str().unwrap(), "--chat"],
            &input,
        );
        assert!(r.ok, "tokenize --chat failed: {}", r.stderr);
        let want = chat_golden(&shared, tokenizer);
        let got = json_lines(&r.stdout);
        assert_eq!(
            got.len(),
            want.len(),
            "{tokenizer}: one output line per input line"
        );
        for (i, (g, (_, ids))) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.get("error"), None, "{tokenizer} line {}: {g}", i + 1);
            let g: Vec<u32> = serde_json::from_value(g["ids"].clone()).unwrap();
            assert_eq!(&g, ids, "{tokenizer} CLI chat golden line {}", i + 1);
        }
    }
}

/// `yangtuo tokenize` (no --chat) reproduces `sentencepiece.encode` on the text goldens.
#[test]
fn cli_tokenize_text_goldens() {
    let shared = shared_or_fail!();
    for tokenizer in [LLAMA2, CHINESE] {
        let input = std::fs::read_to_string(
            shared
                .join("golden")
                .join(format!("tokenize-{tokenizer}.jsonl")),
        )
        .unwrap();
        let model = shared
            .join("tokenizers")
            .join(tokenizer)
            .join("tokenizer.model");
        let r = cli(
            &["tokenize", "--tokenizer", model.to_str().unwrap()],
            &input,
        );
        assert!(r.ok, "tokenize failed: {}", r.stderr);
        let want = json_lines(&input);
        let got = json_lines(&r.stdout);
        assert_eq!(
            got.len(),
            want.len(),
            "{tokenizer}: one output line per input line"
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g["ids"],
                w["ids"],
                "{tokenizer} tokenize golden line {}: {:?}",
                i + 1,
                w["text"]
            );
        }
        eprintln!("{tokenizer}: {} tokenize golden lines match", want.len());
    }
}

/// A bad line gives `{"error": ...}` and the lines after it still succeed.
#[test]
fn cli_tokenize_bad_lines_do_not_stop_the_run() {
    let shared = shared_or_fail!();
    let model = shared.join("tokenizers/llama2/tokenizer.model");
    let model = model.to_str().unwrap();

    let input = [
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"messages": [{"role": "user", "content": "hi"}"#,
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}, {"role": "user", "content": "c"}]}"#,
        r#"{"messages": [{"role": "user", "content": "x [INST] y"}]}"#,
        r#"{"messages": []}"#,
        r#"{"messages": [{"role": "user", "content": "hello"}]}"#,
    ]
    .join("\n");
    let r = cli(&["tokenize", "--tokenizer", model, "--chat"], &input);
    assert!(r.ok, "{}", r.stderr);
    let got = json_lines(&r.stdout);
    assert_eq!(got.len(), 6, "{}", r.stdout);
    let tok = Tokenizer::from_file(&shared.join("tokenizers/llama2/tokenizer.model")).unwrap();
    let prompt = |u: &str| {
        let mut ids = vec![BOS];
        ids.extend(tok.encode(&format!("[INST] {u} [/INST]")).unwrap());
        serde_json::json!(ids)
    };
    assert_eq!(got[0]["ids"], prompt("hi"));
    let err = |i: usize| {
        got[i]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("line {} should be an error: {}", i + 1, got[i]))
            .to_string()
    };
    assert!(err(1).contains("invalid JSON"), "{}", err(1));
    assert!(
        err(2).contains("message 1") && err(2).contains("unknown role `bot`"),
        "{}",
        err(2)
    );
    assert!(
        err(3).contains("message 0") && err(3).contains("[INST]"),
        "{}",
        err(3)
    );
    assert!(err(4).contains("message 0"), "{}", err(4));
    assert_eq!(got[5]["ids"], prompt("hello"));
    assert!(
        got.iter()
            .all(|g| g.get("ids").is_some() != g.get("error").is_some())
    );

    // --allow-control-tokens accepts the injected marker
    let r = cli(
        &[
            "tokenize",
            "--tokenizer",
            model,
            "--chat",
            "--allow-control-tokens",
        ],
        r#"{"messages": [{"role": "user", "content": "x [INST] y"}]}"#,
    );
    assert!(json_lines(&r.stdout)[0]["ids"].is_array(), "{}", r.stdout);

    // text mode: invalid JSON and a missing `text` field, then a good line
    let r = cli(
        &["tokenize", "--tokenizer", model],
        "{\"text\": \nnot json\n{\"txt\": \"a\"}\n{\"text\": \"Hello world\"}\n",
    );
    assert!(r.ok, "{}", r.stderr);
    let got = json_lines(&r.stdout);
    assert_eq!(got.len(), 4, "{}", r.stdout);
    assert!(
        got[0]["error"].is_string() && got[1]["error"].is_string() && got[2]["error"].is_string(),
        "{}",
        r.stdout
    );
    assert_eq!(
        got[3]["ids"],
        serde_json::json!(tok.encode("Hello world").unwrap())
    );
}

// ---------------------------------------------------------------------------------------
// 2. Validation errors
// ---------------------------------------------------------------------------------------

fn template_index(r: yangtuo::Result<Completion>) -> usize {
    match r {
        Err(Error::Template { index, .. }) => index,
        Err(e) => panic!("expected Error::Template, got {e:?}"),
        Ok(c) => panic!("expected Error::Template, got an answer {:?}", c.text),
    }
}

#[test]
fn invalid_conversations_are_template_errors_with_the_index() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "validate", LLAMA2, 2);
    let llama = Arc::new(load_cpu(&dir));
    let o = greedy(1);
    let (s, u, a) = (Message::system, Message::user, Message::assistant);
    let cases: Vec<(&str, Vec<Message>, usize)> = vec![
        ("empty", vec![], 0),
        (
            "unknown role",
            vec![s("sys"), u("q"), Message::new("tool", "x"), u("q")],
            2,
        ),
        (
            "unknown role first",
            vec![Message::new("bot", "x"), u("q")],
            0,
        ),
        (
            "system not first",
            vec![u("q"), a("a"), s("sys"), u("q")],
            2,
        ),
        ("system second", vec![u("q"), s("sys")], 1),
        ("two users in a row", vec![s("sys"), u("q"), u("q2")], 2),
        (
            "two assistants in a row",
            vec![u("q"), a("a"), a("b"), u("q")],
            2,
        ),
        ("ends with assistant", vec![s("sys"), u("q"), a("a")], 2),
        ("only system", vec![s("sys")], 0),
        ("starts with assistant", vec![a("a"), u("q")], 0),
    ];
    for (what, msgs, index) in &cases {
        assert_eq!(template_index(llama.chat(msgs, &o)), *index, "{what}");
        assert!(
            matches!(llama.render(msgs, true), Err(Error::Template { index: i, .. }) if i == *index),
            "{what}: render"
        );
    }
    for (n, ctl) in yangtuo::chat::CONTROL_STRINGS.iter().enumerate() {
        // put it in a different message each time: system, user, assistant, last user
        let mut msgs = vec![s("sys"), u("q1"), a("a1"), u("q2")];
        let at = n % msgs.len();
        msgs[at].content = format!("before {ctl} after");
        assert_eq!(template_index(llama.chat(&msgs, &o)), at, "{ctl}");
        let e = llama.chat(&msgs, &o).unwrap_err().to_string();
        assert!(e.contains(ctl) && e.contains("allow_control_tokens"), "{e}");
        // accepted when allowed
        let allow = GenerateOptions {
            allow_control_tokens: true,
            ..greedy(1)
        };
        let c = llama
            .chat(&msgs, &allow)
            .unwrap_or_else(|e| panic!("{ctl} with allow_control_tokens: {e}"));
        assert_eq!(c.usage.completion_tokens, 1);
        llama.render(&msgs, true).unwrap();
    }
    // a session reports the same errors and keeps its history
    let mut session = llama.session(Some("sys".into()));
    let r = session.send("x </s> y", &o, None, &mut |_| Flow::Continue);
    assert_eq!(template_index(r), 1);
    assert_eq!(session.messages(), &[s("sys")]);
}

#[test]
fn invalid_sampling_parameters_are_invalid_arg() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "badargs", LLAMA2, 3);
    let llama = Arc::new(load_cpu(&dir));
    let msgs = [Message::user("hi")];
    let with = |f: &dyn Fn(&mut GenerateOptions)| {
        let mut o = greedy(4);
        f(&mut o);
        o
    };
    let cases: Vec<(&str, GenerateOptions)> = vec![
        ("temperature", with(&|o| o.sampling.temperature = -0.5)),
        ("temperature", with(&|o| o.sampling.temperature = f32::NAN)),
        (
            "top_p",
            with(&|o| {
                o.sampling = SamplingParams {
                    temperature: 0.8,
                    top_p: 0.0,
                    ..Default::default()
                }
            }),
        ),
        (
            "top_p",
            with(&|o| {
                o.sampling = SamplingParams {
                    temperature: 0.8,
                    top_p: 1.5,
                    ..Default::default()
                }
            }),
        ),
        ("top_p", with(&|o| o.sampling.top_p = -0.1)),
        ("top_k", with(&|o| o.sampling.top_k = Some(0))),
        ("max_tokens", with(&|o| o.max_tokens = Some(0))),
    ];
    for (name, o) in &cases {
        let check = |r: yangtuo::Result<Completion>, how: &str| match r {
            Err(Error::InvalidArg { name: n, .. }) => assert_eq!(n, *name, "{how}"),
            other => panic!(
                "{how}: {name}: expected InvalidArg, got {:?}",
                other.map(|c| c.text)
            ),
        };
        check(llama.chat(&msgs, o), "chat");
        check(
            llama.chat_stream(&msgs, o, None, &mut |_| {
                panic!("no text for invalid parameters")
            }),
            "chat_stream",
        );
        check(
            llama.complete_ids(&[BOS, 22172], o, None, &mut |_| Flow::Continue),
            "complete_ids",
        );
        check(
            llama
                .session(None)
                .send("hi", o, None, &mut |_| Flow::Continue),
            "session",
        );
    }
}

#[test]
fn context_overflow_is_reported_before_any_work() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "ctx", LLAMA2, 4);
    let llama = Arc::new(load(&dir, &opts(BackendChoice::Cpu, None, Some(64))));
    assert_eq!(llama.context_length(), 64);
    let msgs = [Message::user(
        "Tell me a long story about a llama who lived in the mountains of Peru.",
    )];
    let n = llama.render(&msgs, false).unwrap().len();
    assert!(n < 64 && n + 40 > 64, "prompt of {n} tokens");
    let check = |r: yangtuo::Result<Completion>, prompt: usize| match r {
        Err(Error::ContextLength {
            prompt: p,
            requested: q,
            context,
        }) => {
            assert_eq!((p, q, context), (prompt, 1, 64));
        }
        other => panic!("expected ContextLength, got {:?}", other.map(|c| c.text)),
    };
    // max_tokens is a cap, not a reservation: prompt + max_tokens past the context runs,
    // and stops with `length` when the context is full
    let c = llama.chat(&msgs, &greedy(40)).unwrap();
    assert!(c.usage.total_tokens <= 64);
    if c.finish_reason == FinishReason::Length {
        assert!(
            c.usage.total_tokens == 64 || c.usage.completion_tokens == 40,
            "{:?}",
            c.usage
        );
    }
    let c = llama
        .complete_ids(&vec![BOS; 60], &greedy(40), None, &mut |_| Flow::Continue)
        .unwrap();
    assert_eq!(
        (c.usage.total_tokens, c.finish_reason),
        (64, FinishReason::Length)
    );
    // a prompt that leaves no room for one token fails before any work, naming the sizes
    check(
        llama.complete_ids(&vec![BOS; 64], &greedy(1), None, &mut |_| {
            panic!("no tokens")
        }),
        64,
    );
    let long = [Message::user("llama ".repeat(80))];
    let ln = llama.render(&long, false).unwrap().len();
    check(
        llama.chat(
            &long,
            &GenerateOptions {
                max_tokens: None,
                ..greedy(1)
            },
        ),
        ln,
    );
    // a session too: the error leaves the history as it was (one message cannot be truncated)
    let mut session = llama.session(None);
    check(
        session.send(&long[0].content, &greedy(4), None, &mut |_| {
            panic!("no tokens")
        }),
        ln,
    );
    assert!(session.messages().is_empty());
    // and exactly filling the context is fine
    let c = llama.chat(&msgs, &greedy(64 - n)).unwrap();
    assert!(c.usage.total_tokens <= 64);
}

/// A session outgrowing a small context drops its oldest whole turns and never errors;
/// each turn's prompt is the template over the turns kept. On cpu and wgpu.
#[test]
fn long_sessions_drop_their_oldest_turns() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "long-chat", LLAMA2, 5);
    for backend in [BackendChoice::Cpu, BackendChoice::Wgpu] {
        let llama = match Llama::load(&*dir, &opts(backend, None, Some(96)), &mut |_| {}) {
            Ok(l) => Arc::new(l),
            Err(e) if backend == BackendChoice::Wgpu => {
                eprintln!("skipping wgpu: {e}");
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        // lavapipe runs a turn about 50x slower than the CPU: fewer turns there, still many
        // past the first drop (a context of 96 fills within two turns)
        let turns = if backend == BackendChoice::Cpu {
            200
        } else {
            24
        };
        let mut session = llama.session(Some("You are a helpful assistant.".into()));
        let mut dropped = 0;
        for i in 0..turns {
            let c = session
                .send(
                    &format!("第{i}个问题：羊驼吃什么？"),
                    &greedy(1024),
                    None,
                    &mut |_| Flow::Continue,
                )
                .unwrap_or_else(|e| panic!("{backend:?} turn {i}: {e}"));
            dropped += c.dropped_turns;
            let msgs = session.messages();
            assert_eq!(msgs[0].role, "system");
            let kept = &msgs[..msgs.len() - 1];
            let want = llama.render(kept, false).unwrap();
            // the same ids as the template and the tokenizer give for the kept turns
            let mut ids = vec![BOS];
            ids.extend(
                llama
                    .tokenizer()
                    .encode(&format!(
                        "[INST] <<SYS>>\n{}\n<</SYS>>\n\n{} [/INST]",
                        kept[0].content, kept[1].content
                    ))
                    .unwrap(),
            );
            // (the first kept turn's text up to its closing `[/INST]`, whose last piece may
            // merge with an answer that follows)
            let n = ids.len() - 1;
            assert_eq!(&want[..n], &ids[..n], "{backend:?} turn {i}");
            assert_eq!(c.usage.prompt_tokens, want.len(), "{backend:?} turn {i}");
            assert!(c.usage.total_tokens <= 96);
        }
        assert!(
            dropped > 0,
            "{backend:?}: nothing was dropped in {turns} turns"
        );
        // the error policy still errors, with the numbers
        let mut o = greedy(8);
        o.context_overflow = Some(yangtuo::ContextOverflow::Error);
        let mut long = llama.session(None);
        for i in 0..3 {
            long.send(&format!("问题{i}"), &greedy(8), None, &mut |_| {
                Flow::Continue
            })
            .unwrap();
        }
        match long.send(&"咖啡 ".repeat(60), &o, None, &mut |_| Flow::Continue) {
            Err(Error::ContextLength {
                prompt,
                context: 96,
                ..
            }) => assert!(prompt > 48, "{prompt}"),
            other => panic!("expected ContextLength, got {:?}", other.map(|c| c.text)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. Streaming
// ---------------------------------------------------------------------------------------

/// The streamed deltas of a sampled chat concatenate to `chat()`'s text for the same seed.
#[test]
fn streamed_deltas_equal_chat_text() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "stream", LLAMA2, 5);
    let msgs = conversation();
    for (seed, max) in [(7u64, 16usize), (8, 16), (9, 32)] {
        let o = sampled(max, 0.8, seed);
        // a separate model for each call, so neither reuses the other's cache
        let (c, deltas) = stream(&load_cpu(&dir), &msgs, &o);
        let whole = load_cpu(&dir).chat(&msgs, &o).unwrap();
        assert_eq!(c.ids, whole.ids, "seed {seed}: same tokens");
        assert_eq!(
            deltas.concat(),
            whole.text,
            "seed {seed}: deltas vs chat() text"
        );
        assert_eq!(c.text, whole.text);
        let tok = load_cpu(&dir).tokenizer().clone();
        let decoded = tok.decode(&c.ids).unwrap();
        assert_eq!(
            deltas.concat(),
            decoded,
            "seed {seed}: the streamed text is decode(ids)"
        );
        assert!(deltas.iter().all(|d| !d.is_empty()));
        // U+FFFD only where decode itself has one (a byte that never completes a character)
        let fffd = |s: &str| s.matches('\u{FFFD}').count();
        assert_eq!(
            deltas.iter().map(|d| fffd(d)).sum::<usize>(),
            fffd(&decoded),
            "seed {seed}: {deltas:?}"
        );
        if fffd(&decoded) == 0 {
            assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')));
        }
        // the same Llama twice: the second call reuses the pooled cache of the first
        let llama = load_cpu(&dir);
        let a = llama.chat(&msgs, &o).unwrap();
        let (b, deltas_b) = stream(&llama, &msgs, &o);
        assert_eq!(
            (a.ids.clone(), a.text.clone()),
            (b.ids, deltas_b.concat()),
            "seed {seed}: with a reused cache"
        );
        assert_eq!(a.ids, whole.ids);
        eprintln!("seed {seed}: {:?} in {} deltas", whole.text, deltas.len());
    }
}

/// Chinese arriving as `<0xE5><0x92><0x96>` byte tokens streams as whole characters.
#[test]
fn streamed_byte_fallback_chinese() {
    let shared = shared_or_fail!();
    let tok = Tokenizer::from_file(&shared.join("tokenizers/llama2/tokenizer.model")).unwrap();
    let answer = tok.encode(COFFEE_ANSWER).unwrap();
    // ▁ <0xE5> <0x92> <0x96> 的 作 用 是 <0xE4> <0xBB> <0x80> 么 ？
    assert_eq!(
        &answer[1..4],
        &[0xE5 + 3, 0x92 + 3, 0x96 + 3],
        "咖 as byte tokens"
    );
    let dir = scripted_model(&shared, "coffee", LLAMA2, INST_END, &answer);
    let llama = load_cpu(&dir);
    let msgs = conversation();
    assert_eq!(llama.render(&msgs, false).unwrap().last(), Some(&INST_END));
    for o in [greedy(64), sampled(64, 0.8, 1), sampled(64, 1.0, 2)] {
        let (c, deltas) = stream(&llama, &msgs, &o);
        assert_eq!(c.ids, answer);
        assert_eq!(c.text, COFFEE_ANSWER);
        assert_eq!(c.finish_reason.as_str(), "stop", "ended by EOS");
        // each character whole, in its own delta; nothing for the leading ▁ and partial bytes
        assert_eq!(deltas, ["咖", "的", "作", "用", "是", "什", "么", "？"]);
        assert_eq!(llama.chat(&msgs, &o).unwrap().text, deltas.concat());
    }
}

/// The streaming machinery on its own: StreamDecoder into StopMatcher, as the loop uses them.
#[test]
fn stream_decoder_and_stop_matcher_pipeline() {
    let shared = shared_or_fail!();
    let tok = Tokenizer::from_file(&shared.join("tokenizers/llama2/tokenizer.model")).unwrap();
    let text = "咖啡的作用是什么？";
    let ids = tok.encode(text).unwrap();
    assert!(
        ids.iter().filter(|&&id| (3..259).contains(&id)).count() >= 9,
        "啡, 咖 and 什 are byte tokens: {ids:?}"
    );

    /// (deltas as the loop emits them, stopped)
    fn pipeline(tok: &Tokenizer, ids: &[u32], stops: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut dec = StreamDecoder::new();
        let mut m = StopMatcher::new(&stops);
        let mut out = vec![];
        for &id in ids {
            let (piece, stopped) = m.push(&dec.push(tok, id).unwrap());
            out.push(piece);
            if stopped {
                return (out, true);
            }
        }
        let (piece, stopped) = m.push(&dec.finish(tok).unwrap());
        out.push(piece);
        if !stopped {
            out.push(m.finish());
        }
        (out, stopped)
    }
    let nonempty = |v: &[String]| {
        v.iter()
            .filter(|d| !d.is_empty())
            .cloned()
            .collect::<Vec<_>>()
    };

    let (deltas, stopped) = pipeline(&tok, &ids, &[]);
    assert!(!stopped);
    assert_eq!(deltas.concat(), text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    assert_eq!(
        nonempty(&deltas),
        ["咖", "啡", "的", "作", "用", "是", "什", "么", "？"]
    );
    // 咖 comes with its third byte token, nothing before
    let third = ids.iter().position(|&id| id == 0x96 + 3).unwrap();
    assert!(deltas[..third].iter().all(|d| d.is_empty()), "{deltas:?}");
    assert_eq!(deltas[third], "咖");

    // stops: across two whole-piece tokens, across byte tokens, a single byte-built char
    for (stop, want) in [
        ("作用", "咖啡的"),
        ("是什", "咖啡的作用"),
        ("什么", "咖啡的作用是"),
        ("啡", "咖"),
        ("咖", ""),
        ("？", "咖啡的作用是什么"),
    ] {
        let (deltas, stopped) = pipeline(&tok, &ids, &[stop]);
        assert!(stopped, "{stop}");
        assert_eq!(deltas.concat(), want, "stop {stop}: {deltas:?}");
        assert!(
            deltas
                .iter()
                .all(|d| !d.contains('\u{FFFD}') && !d.contains(stop)),
            "{deltas:?}"
        );
    }
    // a stop that only starts like the text: held back, then released whole
    let (deltas, stopped) = pipeline(&tok, &ids, &["作为", "什么呢"]);
    assert!(!stopped);
    assert_eq!(deltas.concat(), text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    // "作" is held until "用" shows it is not "作为"; "什么" until "？" shows it is not "什么呢"
    let zuo = deltas.iter().position(|d| d.contains('作')).unwrap();
    assert_eq!(deltas[zuo], "作用", "{deltas:?}");
    let shen = deltas.iter().position(|d| d.contains('什')).unwrap();
    assert_eq!(deltas[shen], "什么？", "{deltas:?}");
    assert_eq!(
        shen,
        ids.len() - 1,
        "released by the last token: {deltas:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Stop strings split across tokens
// ---------------------------------------------------------------------------------------

#[test]
fn stop_string_split_across_tokens() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "stop", LLAMA2, 6);
    let llama = load_cpu(&dir);
    let msgs = conversation();
    let full = llama.chat(&msgs, &greedy(32)).unwrap();
    let pieces = token_pieces(llama.tokenizer(), &full.ids);
    assert_eq!(pieces.concat(), full.text);
    eprintln!("greedy answer: {:?} as {pieces:?}", full.text);

    // a boundary between two tokens with text where a stop string made of up to 2 characters
    // each side first occurs straddling it; preferably a few tokens in, so some answer is left
    let ends: Vec<usize> = pieces
        .iter()
        .scan(0, |end, p| {
            *end += p.len();
            Some(*end)
        })
        .collect(); // byte offset where each piece ends
    let n = pieces.len();
    let mut found = None;
    for k in (3.min(n)..n.saturating_sub(1)).chain(0..3.min(n.saturating_sub(1))) {
        let end = ends[k];
        let (left, right) = (&pieces[k], &pieces[k + 1]);
        if left.is_empty()
            || right.is_empty()
            || left.contains('\u{FFFD}')
            || right.contains('\u{FFFD}')
        {
            continue;
        }
        let l: String = left
            .chars()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let r: String = right.chars().take(2).collect();
        let stop = format!("{l}{r}");
        if stop.trim().is_empty() {
            continue;
        }
        let start = end - l.len();
        if full.text.find(&stop) == Some(start) {
            found = Some((k, stop, start));
            break;
        }
    }
    let (k, stop, start) =
        found.unwrap_or_else(|| panic!("no stop string straddles two tokens of {pieces:?}"));
    eprintln!("stop {stop:?} straddles tokens {k} and {}", k + 1);

    let o = GenerateOptions {
        stop: vec![stop.clone()],
        ..greedy(32)
    };
    let c = llama.chat(&msgs, &o).unwrap();
    assert_eq!(
        c.text,
        full.text[..start],
        "the answer ends right before the stop string"
    );
    assert!(!c.text.contains(&stop));
    assert_eq!(c.finish_reason.as_str(), "stop");
    assert_eq!(
        c.ids,
        full.ids[..k + 2],
        "generation ends with the token that completes the stop string"
    );
    assert_eq!(c.usage.completion_tokens, k + 2);

    let (s, deltas) = stream(&llama, &msgs, &o);
    assert_eq!(deltas.concat(), c.text);
    assert!(deltas.iter().all(|d| !d.contains(&stop)), "{deltas:?}");
    assert_eq!((s.finish_reason, s.ids), (c.finish_reason, c.ids.clone()));

    // with a second, never-matching stop string as well, and the stop given twice
    let o = GenerateOptions {
        stop: vec!["\u{1F999}never".into(), stop.clone(), stop.clone()],
        ..greedy(32)
    };
    assert_eq!(llama.chat(&msgs, &o).unwrap().text, c.text);

    // the scripted model: stops across whole pieces and across byte tokens, sampled
    let tok = llama.tokenizer();
    let answer = tok.encode(COFFEE_ANSWER).unwrap();
    let dir = scripted_model(&shared, "coffee-stop", LLAMA2, INST_END, &answer);
    let scripted = load_cpu(&dir);
    for (stop, want) in [
        ("作用", "咖的"),
        ("是什", "咖的作用"),
        ("咖的", ""),
        ("么？", "咖的作用是什"),
    ] {
        let o = GenerateOptions {
            stop: vec![stop.into()],
            ..sampled(64, 0.8, 3)
        };
        let (c, deltas) = stream(&scripted, &msgs, &o);
        assert_eq!(
            (c.text.as_str(), c.finish_reason.as_str()),
            (want, "stop"),
            "stop {stop}"
        );
        assert_eq!(deltas.concat(), want);
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')));
    }
}

// ---------------------------------------------------------------------------------------
// 5. Seeded sampling
// ---------------------------------------------------------------------------------------

#[test]
fn seeded_sampling_is_reproducible() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "seed", LLAMA2, 7);
    let msgs = conversation();
    let llama = load_cpu(&dir);
    let run = |seed| llama.chat(&msgs, &sampled(16, 1.0, seed)).unwrap();
    let (a, b) = (run(11), run(11));
    assert_eq!(a.ids, b.ids, "same seed, same model: same ids");
    assert_eq!(a.text, b.text);
    assert_eq!(
        load_cpu(&dir)
            .chat(&msgs, &sampled(16, 1.0, 11))
            .unwrap()
            .ids,
        a.ids,
        "same seed on a fresh load"
    );
    let others: Vec<Vec<u32>> = [12, 13, 14].into_iter().map(|s| run(s).ids).collect();
    for o in &others {
        assert_ne!(
            o, &a.ids,
            "different seeds at temperature 1.0 should give different ids"
        );
    }
    // the seed also fixes top-k/min-p/penalty sampling
    let mut o = sampled(16, 1.0, 21);
    o.sampling.top_k = Some(40);
    o.sampling.min_p = Some(0.01);
    o.sampling.repetition_penalty = Some(1.2);
    assert_eq!(
        llama.chat(&msgs, &o).unwrap().ids,
        llama.chat(&msgs, &o).unwrap().ids
    );
}

#[test]
fn same_seed_same_tokens_on_cpu_and_wgpu() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "cpu-wgpu", LLAMA2, 8);
    let msgs = conversation();
    let cpu = load_cpu(&dir);
    // both with f32 KV caches: wgpu's auto on lavapipe (shader-f16) is an f16 cache, whose
    // rounding moves logits by ~1e-3, enough to change a sampled token
    let f32_kv = yangtuo::LoadOptions {
        kv_cache_dtype: Some(yangtuo::KvDtype::F32),
        ..opts(BackendChoice::Wgpu, None, None)
    };
    let gpu = match Llama::load(&*dir, &f32_kv, &mut |_| {}) {
        Ok(l) => l,
        Err(e) => {
            // CI has lavapipe; a machine without any Vulkan/Metal/DX12 adapter cannot run this
            eprintln!("skipping the wgpu comparison: {e}");
            return;
        }
    };
    eprintln!("cpu: {}, wgpu: {}", cpu.device(), gpu.device());
    for o in [greedy(12), sampled(12, 1.0, 5), sampled(12, 0.8, 6)] {
        let (a, da) = stream(&cpu, &msgs, &o);
        let (b, db) = stream(&gpu, &msgs, &o);
        assert_eq!(a.ids, b.ids, "{:?}: cpu and wgpu differ", o.sampling);
        assert_eq!(da, db);
        assert_eq!(a.text, b.text);
    }
    // constrained greedy answers (a JSON Schema, a tool call's grammar) too
    let schema = serde_json::json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer",
        "minimum": 0, "maximum": 99}}, "required": ["ok", "n"], "additionalProperties": false});
    let tools =
        serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": schema}}]);
    let call = yangtuo::chat::tools::ToolUse::from_request(
        Some(&tools),
        Some(&serde_json::json!("required")),
    )
    .unwrap()
    .unwrap();
    for grammar in [
        yangtuo::grammar::Grammar::JsonSchema(schema.clone()),
        call.grammar(),
    ] {
        let o = GenerateOptions {
            grammar: Some(grammar),
            ..greedy(40)
        };
        let (a, b) = (cpu.chat(&msgs, &o).unwrap(), gpu.chat(&msgs, &o).unwrap());
        assert_eq!(
            (&a.ids, a.finish_reason),
            (&b.ids, b.finish_reason),
            "constrained: cpu {:?}, wgpu {:?}",
            a.text,
            b.text
        );
        assert!(a.text.trim_start().starts_with('{'), "{:?}", a.text);
    }
    // and a session across backends
    let (cpu, gpu) = (Arc::new(cpu), Arc::new(gpu));
    let (mut sc, mut sg) = (
        cpu.session(Some("Be brief.".into())),
        gpu.session(Some("Be brief.".into())),
    );
    for q in ["Hello!", "How are you?"] {
        let o = sampled(8, 0.9, 17);
        let a = sc.send(q, &o, None, &mut |_| Flow::Continue).unwrap();
        let b = sg.send(q, &o, None, &mut |_| Flow::Continue).unwrap();
        assert_eq!(a.ids, b.ids, "session turn {q:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 6. Session equivalence
// ---------------------------------------------------------------------------------------

fn session_matches_fresh_chat(o: &GenerateOptions, seed: u64) {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "session", LLAMA2, seed);
    let llama = Arc::new(load_cpu(&dir));
    let mut session = llama.session(Some("You are a helpful, concise assistant.".into()));
    let turns = [
        "Hello! Who are you?",
        "What is a llama?",
        "用中文回答：羊驼吃什么？",
    ];
    for (t, user) in turns.iter().enumerate() {
        let mut history = session.messages().to_vec();
        history.push(Message::user(*user));
        let mut deltas = String::new();
        let got = session
            .send(user, o, None, &mut |d| {
                deltas.push_str(d);
                Flow::Continue
            })
            .unwrap();
        // a fresh load per turn: no cache shared with the session or an earlier turn
        let fresh = load_cpu(&dir);
        let want = fresh.chat(&history, o).unwrap();
        assert_eq!(
            got.ids,
            want.ids,
            "turn {}: session and fresh chat() tokens differ",
            t + 1
        );
        assert_eq!(got.text, want.text, "turn {}", t + 1);
        assert_eq!(deltas, got.text);
        assert_eq!(got.usage, want.usage, "turn {}", t + 1);
        assert_eq!(
            got.usage.prompt_tokens,
            fresh.render(&history, false).unwrap().len()
        );
        // the session only ran what its cache did not hold
        if t > 0 {
            assert!(
                got.timings.prefill_tokens < want.timings.prefill_tokens,
                "turn {}: session prefilled {} tokens, a fresh chat {}",
                t + 1,
                got.timings.prefill_tokens,
                want.timings.prefill_tokens
            );
        }
        history.push(Message::assistant(got.text.clone()));
        assert_eq!(session.messages(), history.as_slice());
        eprintln!(
            "turn {}: {:?} (prefill {} of {})",
            t + 1,
            got.text,
            got.timings.prefill_tokens,
            got.usage.prompt_tokens
        );
    }
    // reset keeps the system prompt and starts over like a fresh chat
    session.reset();
    assert_eq!(session.messages().len(), 1);
    let got = session
        .send(turns[0], o, None, &mut |_| Flow::Continue)
        .unwrap();
    let want = load_cpu(&dir)
        .chat(
            &[
                Message::system("You are a helpful, concise assistant."),
                Message::user(turns[0]),
            ],
            o,
        )
        .unwrap();
    assert_eq!(got.ids, want.ids, "after reset");
}

#[test]
fn session_matches_fresh_chat_greedy() {
    session_matches_fresh_chat(&greedy(12), 9);
}

#[test]
fn session_matches_fresh_chat_sampled() {
    session_matches_fresh_chat(&sampled(12, 0.8, 1234), 10);
}

// ---------------------------------------------------------------------------------------
// 7. Finish reasons and usage
// ---------------------------------------------------------------------------------------

#[test]
fn finish_reason_and_usage() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "usage", LLAMA2, 11);
    let llama = load_cpu(&dir);
    let msgs = conversation();
    let prompt = llama.render(&msgs, false).unwrap().len();
    for o in [greedy(5), sampled(5, 0.8, 3)] {
        let c = llama.chat(&msgs, &o).unwrap();
        assert_eq!(c.finish_reason.as_str(), "length");
        assert_eq!(c.ids.len(), 5);
        assert_eq!(c.usage.completion_tokens, 5);
        assert_eq!(c.usage.prompt_tokens, prompt);
        assert_eq!(c.usage.total_tokens, prompt + 5);
        assert_eq!(c.timings.decode_tokens, 4);
        assert_eq!(serde_json::to_value(c.finish_reason).unwrap(), "length");
    }
    // EOS: the scripted model ends its answer with EOS, which is not part of the answer
    let answer = llama.tokenize(COFFEE_ANSWER).unwrap();
    let sdir = scripted_model(&shared, "coffee-eos", LLAMA2, INST_END, &answer);
    let scripted = load_cpu(&sdir);
    let c = scripted.chat(&msgs, &greedy(100)).unwrap();
    assert_eq!(c.finish_reason.as_str(), "stop");
    assert_eq!(serde_json::to_value(c.finish_reason).unwrap(), "stop");
    assert_eq!(c.ids, answer, "EOS is not among the ids");
    assert_eq!(c.usage.completion_tokens, answer.len());
    assert_eq!(c.usage.prompt_tokens, prompt);
    // max_tokens exactly the answer's length: the budget runs out before EOS is sampled
    let c = scripted.chat(&msgs, &greedy(answer.len())).unwrap();
    assert_eq!(
        (c.finish_reason.as_str(), c.ids.len()),
        ("length", answer.len())
    );
    // one more token, and EOS comes first
    let c = scripted.chat(&msgs, &greedy(answer.len() + 1)).unwrap();
    assert_eq!(
        (c.finish_reason.as_str(), c.ids.len()),
        ("stop", answer.len())
    );
    // a consumer that stops the stream
    let mut n = 0;
    let c = scripted
        .chat_stream(&msgs, &greedy(100), None, &mut |_| {
            n += 1;
            if n == 2 { Flow::Stop } else { Flow::Continue }
        })
        .unwrap();
    assert_eq!(c.text, "咖的");
    // cancel before the first token
    let cancel = std::sync::atomic::AtomicBool::new(true);
    assert!(matches!(
        scripted.chat_stream(&msgs, &greedy(4), Some(&cancel), &mut |_| Flow::Continue),
        Err(Error::Cancelled)
    ));
}

// ---------------------------------------------------------------------------------------
// 8. The llama2-chinese template
// ---------------------------------------------------------------------------------------

#[test]
fn llama2_chinese_template_by_hand() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "zh-template", CHINESE, 12);
    let llama = load(
        &dir,
        &opts(BackendChoice::Cpu, Some("llama2-chinese"), None),
    );
    assert_eq!(llama.template(), &ChatTemplate::Llama2Chinese);
    let (sys, q1, a1, q2) = (
        "你是一个乐于助人的助手。",
        "羊驼吃什么？",
        "羊驼吃草。 ",
        "  它们住在哪里？",
    );
    let msgs = [
        Message::system(sys),
        Message::user(q1),
        Message::assistant(a1),
        Message::user(q2),
    ];
    let segments = [
        format!("System: {sys}\n"),
        format!("Human: {q1}\n"),
        format!("Assistant: {a1}\n"),
        format!("Human: {q2}\n"),
    ];
    let last = "Assistant: ".to_string();
    let mut texts: Vec<String> = segments.to_vec();
    texts.push(last);
    let encoded: Vec<Vec<u32>> = texts.iter().map(|t| llama.tokenize(t).unwrap()).collect();
    if let Some(py) = py_encode(&dir.join("tokenizer.model"), &texts) {
        assert_eq!(
            py, encoded,
            "yangtuo and sentencepiece encode the segments alike"
        );
    }
    let mut want = vec![];
    for ids in &encoded[..4] {
        want.push(BOS);
        want.extend(ids);
        want.push(EOS);
    }
    want.push(BOS);
    want.extend(&encoded[4]);
    assert_eq!(llama.render(&msgs, false).unwrap(), want);
    // it generates from that prompt
    let c = llama.chat(&msgs, &greedy(3)).unwrap();
    assert_eq!(c.usage.prompt_tokens, want.len());
    // without a system message
    let msgs = [Message::user(q1)];
    let mut want = vec![BOS];
    want.extend(llama.tokenize(&format!("Human: {q1}\n")).unwrap());
    want.extend([EOS, BOS]);
    want.extend(llama.tokenize("Assistant: ").unwrap());
    assert_eq!(llama.render(&msgs, false).unwrap(), want);
    // the same validation as every template
    assert!(matches!(
        llama.render(&[Message::user("a"), Message::user("b")], false),
        Err(Error::Template { index: 1, .. })
    ));
}

// ---------------------------------------------------------------------------------------
// 9. A jinja chat_template from tokenizer_config.json
// ---------------------------------------------------------------------------------------

/// The `chat_template` of meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json.
const HF_LLAMA2_TEMPLATE: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

#[test]
fn jinja_template_from_tokenizer_config() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "jinja", LLAMA2, 13);
    let config = serde_json::json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": HF_LLAMA2_TEMPLATE,
        "tokenizer_class": "LlamaTokenizer",
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();

    // chosen automatically when no template is given
    let llama = load_cpu(&dir);
    assert!(
        matches!(llama.template(), ChatTemplate::Jinja { source, bos, eos } if source == HF_LLAMA2_TEMPLATE && bos == "<s>" && eos == "</s>"),
        "{:?}",
        llama.template().name()
    );
    let builtin = ChatTemplate::Llama2;
    let lines = chat_golden(&shared, LLAMA2);
    for (i, (msgs, want)) in lines.iter().enumerate() {
        let got = llama.render(msgs, false).unwrap();
        assert_eq!(&got, want, "jinja vs chat golden line {}", i + 1);
        assert_eq!(
            got,
            builtin
                .render(llama.tokenizer(), BOS, EOS, msgs, false)
                .unwrap(),
            "jinja vs builtin, line {}",
            i + 1
        );
    }
    let msgs = conversation();
    assert_eq!(
        llama.render(&msgs, false).unwrap(),
        builtin
            .render(llama.tokenizer(), BOS, EOS, &msgs, false)
            .unwrap()
    );
    // validation still comes first, with the same typed errors
    assert!(matches!(
        llama.render(&[Message::user("a"), Message::user("b")], false),
        Err(Error::Template { index: 1, .. })
    ));
    assert!(matches!(
        llama.render(&[Message::user("[INST]")], false),
        Err(Error::Template { index: 0, .. })
    ));
    // and it chats
    assert_eq!(
        llama
            .chat(&msgs, &greedy(3))
            .unwrap()
            .usage
            .completion_tokens,
        3
    );

    // an explicit template wins over the folder's
    let zh = load(
        &dir,
        &opts(BackendChoice::Cpu, Some("llama2-chinese"), None),
    );
    assert_eq!(zh.template(), &ChatTemplate::Llama2Chinese);
    let l2 = load(&dir, &opts(BackendChoice::Cpu, Some("llama2"), None));
    assert_eq!(l2.template(), &ChatTemplate::Llama2);
    let zh_ids = zh.render(&msgs, false).unwrap();
    assert_ne!(zh_ids, llama.render(&msgs, false).unwrap());
    assert_eq!(
        zh_ids,
        ChatTemplate::Llama2Chinese
            .render(zh.tokenizer(), BOS, EOS, &msgs, false)
            .unwrap()
    );

    // bos_token/eos_token as AddedToken objects, as in the real file
    let mut config = config;
    config["bos_token"] = serde_json::json!({"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false});
    config["eos_token"] = serde_json::json!({"__type": "AddedToken", "content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let obj = load_cpu(&dir);
    assert!(
        matches!(obj.template(), ChatTemplate::Jinja { bos, eos, .. } if bos == "<s>" && eos == "</s>")
    );
    let (msgs, want) = &lines[1];
    assert_eq!(&obj.render(msgs, false).unwrap(), want);

    // `yangtuo tokenize --tokenizer DIR --chat` also takes the folder's template
    let input = std::fs::read_to_string(shared.join("golden/chat-llama2.jsonl")).unwrap();
    let r = cli(
        &["tokenize", "--tokenizer", dir.to_str().unwrap(), "--chat"],
        &input,
    );
    assert!(r.ok, "{}", r.stderr);
    for (i, (g, (_, want))) in json_lines(&r.stdout).iter().zip(&lines).enumerate() {
        assert_eq!(
            g["ids"],
            serde_json::json!(want),
            "CLI with the folder's jinja template, line {}",
            i + 1
        );
    }
}

// ---------------------------------------------------------------------------------------
// 10. `yangtuo eval` and `yangtuo generate`
// ---------------------------------------------------------------------------------------

#[test]
fn cli_eval_writes_the_community_report() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "eval", LLAMA2, 14);
    let report = dir.join("report.md");
    let questions = shared.join("eval/atombulb-questions.jsonl");
    let r = cli(
        &[
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--questions",
            questions.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
            "--backend",
            "cpu",
            "--limit",
            "3",
            "--max-tokens",
            "8",
        ],
        "",
    );
    assert!(r.ok, "eval failed ({:?}): {}", r.code, r.stderr);
    let md = std::fs::read_to_string(&report).unwrap();
    let lines: Vec<&str> = md.lines().collect();
    let h = lines
        .iter()
        .position(|l| l.starts_with("| 一级分类 | 二级分类 | 问题 | 答案 |"))
        .unwrap_or_else(|| panic!("no header in\n{md}"));
    let header: Vec<&str> = lines[h]
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        ["一级分类", "二级分类", "问题", "答案", "tokens", "秒"]
    );
    assert!(lines[h + 1].starts_with("|---"), "{}", lines[h + 1]);
    let rows: Vec<&str> = lines[h + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .copied()
        .collect();
    assert_eq!(rows.len(), 3, "{md}");
    let qs = json_lines(&std::fs::read_to_string(&questions).unwrap());
    for (row, q) in rows.iter().zip(&qs) {
        // cells are split on unescaped pipes
        let cells: Vec<String> = row
            .trim()
            .trim_matches('|')
            .replace("\\|", "\u{0}")
            .split('|')
            .map(|c| c.trim().replace('\u{0}', "|"))
            .collect();
        assert_eq!(cells.len(), 6, "{row}");
        assert_eq!(cells[0], q["category"].as_str().unwrap());
        assert_eq!(cells[1], q["subcategory"].as_str().unwrap());
        assert_eq!(
            cells[2],
            q["question"].as_str().unwrap().trim().replace('\n', "<br>")
        );
        let tokens: usize = cells[4]
            .parse()
            .unwrap_or_else(|_| panic!("tokens cell {:?}", cells[4]));
        assert!((1..=8).contains(&tokens), "{row}");
        let secs: f64 = cells[5].parse().unwrap();
        assert!(secs >= 0.0);
    }
    let summary = lines
        .iter()
        .find(|l| l.contains("**Summary**"))
        .unwrap_or_else(|| panic!("no summary in\n{md}"));
    assert!(summary.contains("3 questions"), "{summary}");
    assert!(summary.contains("tok/s"), "{summary}");
}

#[test]
fn cli_generate_json() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "generate", LLAMA2, 15);
    let r = cli(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1,5,9",
            "--max-tokens",
            "4",
            "--json",
            "--backend",
            "cpu",
        ],
        "",
    );
    assert!(r.ok, "generate failed: {}", r.stderr);
    let out = json_lines(&r.stdout);
    assert_eq!(out.len(), 1, "one JSON object on stdout: {}", r.stdout);
    let j = &out[0];
    let ids: Vec<u32> = serde_json::from_value(j["ids"].clone()).unwrap();
    assert!(j["text"].is_string(), "{j}");
    for k in ["prefill_tok_s", "decode_tok_s"] {
        let v = j[k].as_f64().unwrap_or_else(|| panic!("{k} in {j}"));
        assert!(v.is_finite() && v >= 0.0, "{k} = {v}");
    }
    // the same greedy continuation as the library
    let llama = load_cpu(&dir);
    let c = llama
        .complete_ids(
            &[1, 5, 9],
            &GenerateOptions {
                allow_control_tokens: true,
                ..greedy(4)
            },
            None,
            &mut |_| Flow::Continue,
        )
        .unwrap();
    assert_eq!(ids, c.ids);
    assert_eq!(j["text"].as_str().unwrap(), c.text);
    assert_eq!(
        j["finish_reason"].as_str().unwrap(),
        c.finish_reason.as_str()
    );
    assert_eq!(j["usage"]["prompt_tokens"], 3);
    assert_eq!(
        j["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        ids.len()
    );
    if c.finish_reason.as_str() == "length" {
        assert_eq!(ids.len(), 4);
    }
    // a bad id list is an error with a non-zero exit
    let r = cli(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--ids",
            "1,x",
            "--json",
            "--backend",
            "cpu",
        ],
        "",
    );
    assert!(!r.ok && r.stderr.contains("not a token id"), "{}", r.stderr);
    // --json-schema: the random model's continuation is JSON that holds the schema
    let schema = dir.join("schema.json");
    std::fs::write(&schema, r#"{"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["ok", "n"], "additionalProperties": false}"#).unwrap();
    let r = cli(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "JSON:",
            "--max-tokens",
            "100",
            "--json",
            "--backend",
            "cpu",
            "--json-schema",
            schema.to_str().unwrap(),
        ],
        "",
    );
    assert!(r.ok, "{}", r.stderr);
    let text = json_lines(&r.stdout)[0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(
        v["ok"].is_boolean()
            && v["n"].as_u64().is_some_and(|n| (1..=9).contains(&n))
            && v.as_object().unwrap().len() == 2,
        "{text}"
    );
    // a grammar that does not compile is refused by name
    std::fs::write(&schema, "start: (").unwrap();
    let r = cli(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "x",
            "--backend",
            "cpu",
            "--grammar",
            schema.to_str().unwrap(),
        ],
        "",
    );
    assert!(!r.ok && r.stderr.contains("grammar"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------
// 11. `yangtuo chat`
// ---------------------------------------------------------------------------------------

#[test]
fn cli_chat_repl() {
    let shared = shared_or_fail!();
    let dir = random_model(&shared, "repl", LLAMA2, 16);
    let r = cli(
        &[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--backend",
            "cpu",
            "--max-tokens",
            "4",
        ],
        "hi\n/reset\nhello\n/exit\n",
    );
    assert!(r.ok, "chat exited with {:?}: {}", r.code, r.stderr);
    assert_eq!(r.code, Some(0));
    // stats lines follow the "> " prompt on stderr: "> [4 tokens, 9.0 tok/s, first token 0.11 s]"
    let stats: Vec<&str> = r
        .stderr
        .lines()
        .filter_map(|l| {
            l.find("tokens, ")
                .map(|i| &l[l[..i].rfind('[').unwrap_or(0)..])
        })
        .collect();
    assert_eq!(
        stats.len(),
        2,
        "two answers' stats lines in stderr:\n{}",
        r.stderr
    );
    for s in &stats {
        assert!(
            s.starts_with('[') && s.contains("tok/s, first token") && s.ends_with(" s]"),
            "{s}"
        );
        let n: usize = s[1..s.find(' ').unwrap()]
            .parse()
            .unwrap_or_else(|_| panic!("{s}"));
        assert!((1..=4).contains(&n), "{s}");
    }
    assert!(r.stderr.contains("(conversation cleared)"), "{}", r.stderr);
    assert!(!r.stderr.contains("error:"), "{}", r.stderr);
    // /json: the next answer is a JSON object; /json again turns it off
    let r = cli(
        &[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--backend",
            "cpu",
            "--max-tokens",
            "200",
            "--temperature",
            "0",
        ],
        "/json\nhi\n/json\n",
    );
    assert!(
        r.ok && r.stderr.contains("(JSON mode on") && r.stderr.contains("(JSON mode off)"),
        "{}",
        r.stderr
    );
    // (any object may hold an endless string for a random model: the start is what is sure)
    let answer = r.stdout.lines().next().unwrap_or_default();
    assert!(answer.trim_start().starts_with('{'), "{answer:?}");
    // /reset made the second answer a fresh conversation: it is what a one-turn chat gives
    // for "hello" (chat's defaults are Meta's temperature 0.6 / top_p 0.9, unseeded, so
    // compare greedy runs instead)
    let r = cli(
        &[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--backend",
            "cpu",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ],
        "hi\n/reset\nhello\n",
    );
    assert!(r.ok, "{}", r.stderr);
    let llama = load_cpu(&dir);
    let hi = llama.chat(&[Message::user("hi")], &greedy(4)).unwrap().text;
    let hello = llama
        .chat(&[Message::user("hello")], &greedy(4))
        .unwrap()
        .text;
    assert_eq!(
        r.stdout,
        format!("{hi}\n{hello}\n"),
        "each answer streamed to stdout, then a newline"
    );
}
