//! `yangtuo serve` end to end, on a small random model on the CPU: OpenAI-shaped errors (400
//! for malformed JSON, wrong roles, a prompt over the context, bad parameters) after which the
//! server keeps serving; `/health` and `/v1/models`; a client that disconnects mid-stream
//! stops its generation; then `tests/py/test_server.py` drives it with the official `openai`
//! client (non-streamed and streamed chat equal to the library's greedy answer, and a load
//! test of 32 concurrent streamed requests with p50/p99 latency).
//!
//! The model runs as Q8_0 (`--quantize q8_0`): its products are the same for a prompt run
//! whole and for one continued on a pooled KV cache, so a seed gives one answer whatever ran
//! before (f16 weights take a GEMM for prompts whose rounding differs from the one-row path).
//!
//! Needs `tests/data` (a real tokenizer) and the `yangtuo` binary of the same profile
//! (`cargo build --release -p yangtuo-cli`); the Python part needs `openai` in
//! `$YANGTUO_PYTHON` (else `/root/.cache/yt-venv/bin/python`, else `python3`) and is skipped,
//! loudly, without it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use yangtuo::{
    BackendChoice, Flow, GenerateOptions, Llama, LoadOptions, Message, SamplingParams, WeightFormat,
};
use yangtuo_tests::{Spec, cli_bin};

fn shared_dir() -> PathBuf {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data"));
    assert!(
        d.join("tokenizers").is_dir(),
        "tests/data (the tokenizers and goldens the tests need) is missing from the repository"
    );
    d
}

const CTX: usize = 1024;

/// The server process, killed when dropped; its log collected from stderr.
struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &Path, parallel: usize) -> Server {
        Server::start_with(model, parallel, &[])
    }

    fn start_with(model: &Path, parallel: usize, extra: &[&str]) -> Server {
        let mut child = Command::new(cli_bin())
            .args([
                "serve",
                "--model",
                model.to_str().unwrap(),
                "--backend",
                "cpu",
                "--port",
                "0",
            ])
            .args([
                "--ctx",
                &CTX.to_string(),
                "--parallel",
                &parallel.to_string(),
                "--quantize",
                "q8_0",
            ])
            .args(extra)
            .env_remove("YANGTUO_BACKEND")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        let _ = tx.send(port.parse::<u16>().unwrap());
                    }
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let port = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!("the server did not start:\n{}", log.lock().unwrap());
            });
        Server { child, port, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    body: String,
    /// The status line and headers, lowercased.
    head: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn send(port: u16, method: &str, path: &str, body: &str) -> TcpStream {
    send_with(port, method, path, body, "")
}

/// `headers`: extra header lines, each ending in \r\n.
fn send_with(port: u16, method: &str, path: &str, body: &str, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// One request on its own connection, the whole answer (chunked bodies joined).
fn http(port: u16, method: &str, path: &str, body: &str) -> Resp {
    http_with(port, method, path, body, "")
}

fn http_with(port: u16, method: &str, path: &str, body: &str, headers: &str) -> Resp {
    let mut s = send_with(port, method, path, body, headers);
    let mut raw = vec![];
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    Resp {
        status,
        body,
        head: lower,
    }
}

fn post(port: u16, path: &str, body: &str) -> Resp {
    http(port, "POST", path, body)
}

fn health(port: u16) -> serde_json::Value {
    http(port, "GET", "/health", "").json()
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

fn assert_400(r: &Resp, param: Option<&str>, words: &[&str]) {
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["type"], "invalid_request_error", "{e}");
    let msg = e["message"].as_str().unwrap();
    for w in words {
        assert!(msg.contains(w), "`{w}` not in {msg}");
    }
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{e}");
    }
    assert!(e.get("code").is_some(), "{e}");
}

/// A random model with the Llama 2 tokenizer, removed when the guard drops.
fn tiny_model() -> (PathBuf, Cleanup) {
    let shared = shared_dir();
    let d = yangtuo_tests::temp_dir("serve-model");
    let spec = Spec {
        hidden: 64,
        intermediate: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 32000,
        max_pos: 4096,
        dtype: safetensors::Dtype::F16,
        seed: 23,
        ..Spec::default()
    };
    spec.write(&d, 1);
    for f in ["tokenizer.model", "tokenizer.json"] {
        std::fs::copy(shared.join("tokenizers/llama2").join(f), d.join(f)).unwrap();
    }
    (d.clone(), Cleanup(d))
}

fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("YANGTUO_PYTHON").map(PathBuf::from),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn serve_openai_api() {
    let (model, _cleanup) = tiny_model();

    // the library's greedy answers, which the server must reproduce
    let opts = LoadOptions {
        backend: BackendChoice::Cpu,
        ctx_len: Some(CTX),
        quantize: Some(WeightFormat::Q8_0),
        ..Default::default()
    };
    let llama = Llama::load(&model, &opts, &mut |_| {}).unwrap();
    let greedy = |n| GenerateOptions {
        max_tokens: Some(n),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let messages = vec![
        Message::system("你是一个乐于助人的助手。"),
        Message::user("羊驼吃什么？"),
    ];
    let chat = llama.chat(&messages, &greedy(24)).unwrap();
    let prompt = "Once upon a time";
    let completion = llama
        .generate(prompt, &greedy(16), None, &mut |_| Flow::Continue)
        .unwrap();
    drop(llama);

    let server = Server::start(&model, 4);
    let port = server.port;

    // health and models
    let h = health(port);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["context_length"], CTX);
    let m = http(port, "GET", "/v1/models", "").json();
    // the model's name, never the server's paths
    assert_eq!(
        m["data"][0]["id"],
        model.file_name().unwrap().to_str().unwrap()
    );

    // a whole answer in OpenAI's shape, equal to the library's
    let body = serde_json::json!({"model": "x", "messages": [
        {"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "羊驼吃什么？"}],
        "max_tokens": 24, "temperature": 0});
    let r = post(port, "/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["content"], chat.text);
    assert_eq!(
        v["choices"][0]["finish_reason"],
        chat.finish_reason.as_str()
    );
    assert_eq!(v["usage"]["prompt_tokens"], chat.usage.prompt_tokens);
    assert_eq!(
        v["usage"]["completion_tokens"],
        chat.usage.completion_tokens
    );
    assert!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"].is_number(),
        "{v}"
    );

    // streamed: role first, then content, then the finish reason, usage, [DONE]
    let mut sb = body.clone();
    sb["stream"] = true.into();
    sb["stream_options"] = serde_json::json!({"include_usage": true});
    let r = post(port, "/v1/chat/completions", &sb.to_string());
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, chat.text);
    let n = chunks.len();
    assert_eq!(
        chunks[n - 2]["choices"][0]["finish_reason"],
        chat.finish_reason.as_str()
    );
    assert_eq!(chunks[n - 1]["choices"], serde_json::json!([]));
    assert_eq!(
        chunks[n - 1]["usage"]["completion_tokens"],
        chat.usage.completion_tokens
    );
    // the same prompt again: its KV came from the pooled cache (all but the last token)
    assert_eq!(
        chunks[n - 1]["usage"]["prompt_tokens_details"]["cached_tokens"],
        chat.usage.prompt_tokens - 1
    );
    assert!(
        chunks[n - 2]["timings"]["decode_s"].is_number(),
        "{}",
        chunks[n - 2]
    );

    // the same seeded request again (now on a pooled KV cache holding its prompt): same answer
    let seeded = serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "seed": 3, "temperature": 1.0});
    let first = post(port, "/v1/chat/completions", &seeded.to_string()).json();
    let again = post(port, "/v1/chat/completions", &seeded.to_string()).json();
    assert_eq!(
        first["choices"][0]["message"]["content"],
        again["choices"][0]["message"]["content"]
    );

    // a raw completion
    let r = post(
        port,
        "/v1/completions",
        &serde_json::json!({"prompt": prompt, "max_tokens": 16, "temperature": 0}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], completion.text);
    assert_eq!(r.json()["object"], "text_completion");

    // bad requests: 400 with an OpenAI error body, and the server keeps serving
    assert_400(
        &post(
            port,
            "/v1/chat/completions",
            "{\"messages\": [{\"role\": \"user\", ",
        ),
        None,
        &["not valid JSON"],
    );
    assert_400(
        &post(port, "/v1/chat/completions", "not json at all"),
        None,
        &["JSON"],
    );
    let wrong_role = serde_json::json!({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]});
    assert_400(
        &post(port, "/v1/chat/completions", &wrong_role.to_string()),
        Some("messages"),
        &["messages[1]"],
    );
    let bad_role = serde_json::json!({"messages": [{"role": "wizard", "content": "hi"}]});
    assert_400(
        &post(port, "/v1/chat/completions", &bad_role.to_string()),
        Some("messages"),
        &["messages[0]"],
    );
    let long = "羊驼 ".repeat(CTX);
    let too_long =
        serde_json::json!({"messages": [{"role": "user", "content": long}], "stream": true});
    let r = post(port, "/v1/chat/completions", &too_long.to_string());
    assert_400(&r, Some("messages"), &["context"]);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    let r = post(
        port,
        "/v1/completions",
        &serde_json::json!({"prompt": long}).to_string(),
    );
    assert_400(&r, Some("prompt"), &["context"]);
    for (field, value) in [
        ("temperature", serde_json::json!(-1)),
        ("top_p", serde_json::json!(0)),
        ("max_tokens", serde_json::json!(0)),
    ] {
        let mut b = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
        b[field] = value;
        assert_400(
            &post(port, "/v1/chat/completions", &b.to_string()),
            Some(field),
            &[field],
        );
    }
    let r = post(
        port,
        "/v1/chat/completions",
        &serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})
            .to_string(),
    );
    assert_400(&r, Some("temperature"), &["temperature"]);
    let r = post(
        port,
        "/v1/chat/completions",
        &serde_json::json!({"messages": "hi"}).to_string(),
    );
    assert_400(&r, Some("messages"), &["messages"]);
    // every field is honoured or refused by name, never ignored
    for (field, value, words) in [
        ("frobnicate", serde_json::json!(1), "not a supported field"),
        ("n", serde_json::json!(2), "must be 1"),
        ("top_logprobs", serde_json::json!(3), "logprobs: true"),
        (
            "response_format",
            serde_json::json!({"type": "xml"}),
            "response_format",
        ),
        ("grammar", serde_json::json!("start: ("), "grammar"),
        (
            "tools",
            serde_json::json!([{"type": "function", "function": {"name": "f g"}}]),
            "function.name",
        ),
        (
            "tool_choice",
            serde_json::json!("sometimes"),
            "none, auto, required",
        ),
        ("frequency_penalty", serde_json::json!(0.5), "not supported"),
        ("seed", serde_json::json!(-2), "-1 for a random seed"),
        ("top_k", serde_json::json!(0), "at least 1"),
    ] {
        let mut b = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
        b[field] = value;
        assert_400(
            &post(port, "/v1/chat/completions", &b.to_string()),
            Some(field),
            &[words],
        );
    }
    for (field, value) in [
        ("seed", serde_json::json!(-1)),
        ("top_k", serde_json::json!(5)),
        ("min_p", serde_json::json!(0.05)),
        ("repetition_penalty", serde_json::json!(1.1)),
        ("response_format", serde_json::json!({"type": "text"})),
        (
            "response_format",
            serde_json::json!({"type": "json_object"}),
        ),
        ("model", serde_json::json!("anything")),
        ("user", serde_json::json!("u1")),
        ("logprobs", serde_json::json!(true)),
    ] {
        let mut b =
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        b[field] = value;
        let r = post(port, "/v1/chat/completions", &b.to_string());
        assert_eq!(r.status, 200, "{field}: {}", r.body);
    }
    // the shared request set (the bindings check theirs against this server's answers)
    let suite: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/requests/openai.json"
    )))
    .unwrap();
    for case in suite["cases"].as_array().unwrap() {
        let path = if case["endpoint"] == "chat" {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let r = post(port, path, &case["request"].to_string());
        let name = &case["name"];
        match case["expect"]["error"].as_str() {
            Some(field) => assert_400(&r, Some(field), &[field]),
            None if case["request"]["stream"] == true => {
                assert_eq!(r.status, 200, "{name}: {}", r.body);
                let ev = events(&r.body);
                assert_eq!(ev.last().unwrap(), "[DONE]", "{name}");
                let first: serde_json::Value = serde_json::from_str(&ev[0]).unwrap();
                assert_eq!(first["object"], case["expect"]["object"], "{name}");
            }
            None => {
                assert_eq!(r.status, 200, "{name}: {}", r.body);
                assert_eq!(r.json()["object"], case["expect"]["object"], "{name}");
            }
        }
    }
    assert_eq!(http(port, "GET", "/v1/nothing", "").status, 404);
    let r = post(port, "/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200, "still serving after errors");
    assert_eq!(r.json()["choices"][0]["message"]["content"], chat.text);

    // a client that disconnects mid-stream stops its generation
    let before = health(port);
    let long_answer = serde_json::json!({"messages": [{"role": "user", "content": "讲一个很长的故事。"}],
        "max_tokens": CTX - 64, "temperature": 0.8, "seed": 5, "stream": true, "ignore_eos": true});
    let mut s = send(
        port,
        "POST",
        "/v1/chat/completions",
        &long_answer.to_string(),
    );
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while seen.matches("data: ").count() < 3 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    let t0 = Instant::now();
    let after = loop {
        let h = health(port);
        if h["cancelled"].as_u64() > before["cancelled"].as_u64() && h["running"] == 0 {
            break h;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the generation did not stop: {h}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let generated = after["completion_tokens"].as_u64().unwrap()
        - before["completion_tokens"].as_u64().unwrap();
    assert!(
        generated < (CTX as u64 - 64) / 2,
        "stopped early: {generated} tokens generated"
    );
    assert!(server.log().contains("client gone"), "{}", server.log());
    assert_eq!(after["completed"], before["completed"]);

    // every request is logged with its token counts and speed
    assert!(
        server.log().contains(" completion tokens in ") && server.log().contains("tok/s"),
        "{}",
        server.log()
    );

    // the official client, and the load test
    let Some(py) = python() else {
        panic!(
            "no Python with the `openai` package (set YANGTUO_PYTHON, or pip install -r tests/requirements.txt): the test command installs it"
        )
    };
    let expected = yangtuo_tests::temp_dir("serve-expected").join("expected.json");
    let msgs: Vec<_> = messages
        .iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    std::fs::write(
        &expected,
        serde_json::json!({"chat": {"messages": msgs, "max_tokens": 24, "text": chat.text},
                           "completion": {"prompt": prompt, "max_tokens": 16, "text": completion.text}})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(&py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/py/test_server.py"))
        .args([
            "--base-url",
            &format!("http://127.0.0.1:{port}/v1"),
            "--expected",
            expected.to_str().unwrap(),
        ])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(expected.parent().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "test_server.py failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(stdout.contains("p50") && stdout.contains("p99"));
    let h = health(port);
    assert_eq!(h["running"], 0);
    assert_eq!(h["queued"], 0);

    // Prometheus: the counters /health shows, and the latency histograms
    let m = http(port, "GET", "/metrics", "");
    assert_eq!(m.status, 200);
    for name in [
        "yangtuo_requests_total",
        "yangtuo_completion_tokens_total",
        "yangtuo_queue_depth 0",
        "yangtuo_time_to_first_token_seconds_bucket",
        "yangtuo_inter_token_latency_seconds_count",
    ] {
        assert!(m.body.contains(name), "{name} not in\n{}", m.body);
    }
    let completed = h["completed"].as_u64().unwrap();
    assert!(
        m.body
            .contains(&format!("yangtuo_requests_completed_total {completed}")),
        "{}",
        m.body
    );
    // --parallel 4 and 32 concurrent streams: some steps carried several sequences
    let count = |name: &str| -> u64 {
        let line = m.body.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{}", m.body))
    };
    let (steps, sequences) = (
        count("yangtuo_batch_steps_total "),
        count("yangtuo_batch_sequences_total "),
    );
    assert!(
        steps > 0 && sequences > steps,
        "{steps} steps, {sequences} sequences"
    );
}

/// A server safe to expose: Bearer auth on /v1 (401 in OpenAI's shape), CORS only for the
/// origins named, limits on the body and the message count.
#[test]
fn serve_auth_cors_and_limits() {
    let (model, _cleanup) = tiny_model();
    let server = Server::start_with(
        &model,
        1,
        &[
            "--api-key",
            "s3cret",
            "--cors-origin",
            "http://app.example",
            "--max-body",
            "4096",
            "--max-messages",
            "3",
        ],
    );
    let port = server.port;
    let chat =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            .to_string();
    let key = "Authorization: Bearer s3cret\r\n";
    // no key, a wrong key: 401 with OpenAI's body; the right key: 200
    for headers in ["", "Authorization: Bearer nope\r\n"] {
        let r = http_with(port, "POST", "/v1/chat/completions", &chat, headers);
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        assert_eq!(
            http_with(port, "GET", "/v1/models", "", headers).status,
            401
        );
    }
    assert_eq!(
        http_with(port, "POST", "/v1/chat/completions", &chat, key).status,
        200
    );
    assert_eq!(http_with(port, "GET", "/v1/models", "", key).status, 200);
    // /health stays open, for load balancers
    assert_eq!(http(port, "GET", "/health", "").status, 200);
    // CORS: the named origin is allowed (preflight included), another is not
    let pre = http_with(
        port,
        "OPTIONS",
        "/v1/chat/completions",
        "",
        "Origin: http://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization,content-type\r\n",
    );
    assert!(
        pre.head
            .contains("access-control-allow-origin: http://app.example"),
        "{}",
        pre.head
    );
    let other = http_with(
        port,
        "POST",
        "/v1/chat/completions",
        &chat,
        &format!("{key}Origin: http://evil.example\r\n"),
    );
    assert!(
        !other.head.contains("access-control-allow-origin"),
        "{}",
        other.head
    );
    // limits: more messages than allowed is a 400 naming `messages`; a body over the limit a 413
    let many: Vec<_> = (0..5)
        .map(|i| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "x"}))
        .collect();
    let r = http_with(
        port,
        "POST",
        "/v1/chat/completions",
        &serde_json::json!({"messages": many}).to_string(),
        key,
    );
    assert_400(&r, Some("messages"), &["messages"]);
    let big = serde_json::json!({"messages": [{"role": "user", "content": "x".repeat(8192)}]})
        .to_string();
    let r = http_with(port, "POST", "/v1/chat/completions", &big, key);
    assert_eq!(r.status, 413);
    // the HTTP layers' own errors carry OpenAI's body too
    assert_eq!(
        r.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        r.body
    );
    let r = http_with(port, "GET", "/v1/chat/completions", "", key);
    assert_eq!(
        (r.status, &r.json()["error"]["type"]),
        (405, &serde_json::json!("invalid_request_error")),
        "{}",
        r.body
    );
    assert_eq!(
        http_with(port, "POST", "/v1/chat/completions", &chat, key).status,
        200,
        "still serving"
    );
}

/// Hostile connections cannot outlast the server: idle and half-sent ones are closed after
/// the header timeout (10 s), a huge Content-Length with no body is answered, `/health`
/// answers within a second throughout, and `--max-connections` caps what is open.
#[test]
fn serve_closes_idle_and_half_sent_connections() {
    let (model, _cleanup) = tiny_model();
    let server = Server::start_with(
        &model,
        1,
        &["--max-connections", "64", "--max-body", "4096"],
    );
    let port = server.port;
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut idle: Vec<TcpStream> = (0..40).map(|_| connect()).collect();
    for (i, s) in idle.iter_mut().enumerate() {
        // half of them start a request and never finish its headers
        if i % 2 == 0 {
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        }
    }
    // a body promised and never sent: over --max-body, refused at once
    let mut huge = connect();
    huge.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(http(port, "GET", "/health", "").status, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "/health took {:?} beside 40 idle connections",
        t0.elapsed()
    );
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 64];
    let n = huge.read(&mut head).unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    // the idle and half-sent connections are closed by the server within the timeout
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue, // a 408 before the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "a connection stayed open");
    }
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    // past the cap, a new connection waits for a free slot instead of failing the server
    let held: Vec<TcpStream> = (0..64).map(|_| connect()).collect();
    let waiting = std::thread::spawn(move || http(port, "GET", "/health", "").status);
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    assert_eq!(waiting.join().unwrap(), 200);
}

/// `--request-timeout`: a generation past it ends with the text so far and
/// `finish_reason: "abort"`, counted in the metrics.
#[test]
fn serve_request_timeout() {
    let (model, _cleanup) = tiny_model();
    let server = Server::start_with(&model, 1, &["--request-timeout", "0.001"]);
    let body = serde_json::json!({"messages": [{"role": "user", "content": "讲一个很长的故事。"}], "max_tokens": CTX - 64, "ignore_eos": true});
    let r = post(server.port, "/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["choices"][0]["finish_reason"],
        "abort",
        "{}",
        r.body
    );
    let mut sb = body.clone();
    sb["stream"] = true.into();
    let ev = events(&post(server.port, "/v1/chat/completions", &sb.to_string()).body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let finish: serde_json::Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "abort", "{ev:?}");
    let m = http(server.port, "GET", "/metrics", "");
    assert!(
        m.body.contains("yangtuo_requests_timed_out_total 2"),
        "{}",
        m.body
    );
    assert!(server.log().contains("timed out"), "{}", server.log());
}

/// `--kv-memory`: `--parallel` is lowered to the KV caches the budget holds (this model's
/// are 2 layers × K and V × 32 floats × 1024 positions = 512 KiB each); a budget that holds
/// none is an error naming the flag, before the server listens.
#[test]
fn serve_kv_memory() {
    let (model, _cleanup) = tiny_model();
    let server = Server::start_with(&model, 8, &["--kv-memory", "1MiB"]);
    assert_eq!(health(server.port)["parallel"], 2, "{}", server.log());
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    assert_eq!(
        post(server.port, "/v1/chat/completions", &body.to_string()).status,
        200
    );
    drop(server);
    let out = Command::new(cli_bin())
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--backend",
            "cpu",
            "--port",
            "0",
        ])
        .args(["--ctx", &CTX.to_string(), "--kv-memory", "100KiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kv-memory") && err.contains("524288"), "{err}");
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Eight concurrent 1.9 MB prompts each get their 400 (too long for the context) within
/// seconds, and `/health` answers within a second throughout: the byte length is checked
/// before tokenizing, and preparing a request runs off the async threads (issue 18 found
/// 4–18 s per request and 17.7 s for `/health`).
#[test]
fn serve_stays_responsive_under_huge_prompts() {
    let (model, _cleanup) = tiny_model();
    let server = Server::start(&model, 1);
    let port = server.port;
    let content = "咖啡的作用是什么? ".repeat(1_900_000 / 25);
    let body =
        serde_json::json!({"messages": [{"role": "user", "content": content}], "max_tokens": 4})
            .to_string();
    let t0 = Instant::now();
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                (post(port, "/v1/chat/completions", &body), t.elapsed())
            })
        })
        .collect();
    let mut slowest_health = Duration::ZERO;
    while senders.iter().any(|s| !s.is_finished()) {
        let t = Instant::now();
        assert_eq!(http(port, "GET", "/health", "").status, 200);
        slowest_health = slowest_health.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in senders {
        let (r, took) = s.join().unwrap();
        assert_400(&r, None, &["context"]);
        assert!(
            took < Duration::from_secs(5),
            "a huge prompt took {took:?} to refuse"
        );
    }
    assert!(
        slowest_health < Duration::from_secs(1),
        "/health took {slowest_health:?} under load"
    );
    eprintln!(
        "8 huge prompts refused in {:?}; slowest /health {slowest_health:?}",
        t0.elapsed()
    );
}
