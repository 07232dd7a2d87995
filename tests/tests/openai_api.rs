//! Core's OpenAI-shaped calls (`Llama::prepare` / `run`): token logprobs against
//! candle-transformers' Llama (log-softmax of its logits), streamed logprobs equal to the
//! whole answer's, the legacy completions' parallel lists, and a cancel that keeps the
//! answer so far (`finish_reason: "abort"`).
//!
//! Models are random f32 Llamas with the real Llama 2 tokenizer from `tests/data`.

use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use yangtuo::api::{Answer, Endpoint, Request};
use yangtuo::{BackendChoice, Flow, GenerateOptions, Llama, LoadOptions, Message, SamplingParams};
use yangtuo_tests::Spec;
use yangtuo_tests::reference::Reference;

fn spec() -> Spec {
    Spec {
        vocab: 32000,
        max_pos: 512,
        seed: 41,
        ..Spec::default()
    }
}

/// A random model folder with the Llama 2 tokenizer, and the model loaded on the CPU.
fn model(name: &str) -> (PathBuf, Llama) {
    let shared = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/tokenizers/llama2/tokenizer.model"
    ));
    assert!(
        shared.is_file(),
        "tests/data (the tokenizers the tests need) is missing from the repository"
    );
    let dir = spec().write_temp(name);
    std::fs::copy(&shared, dir.join("tokenizer.model")).unwrap();
    let opts = LoadOptions {
        backend: BackendChoice::Cpu,
        ..LoadOptions::default()
    };
    let llama = Llama::load(&dir, &opts, &mut |_| {}).unwrap();
    (dir, llama)
}

/// Run a JSON request; the answer and every streamed chunk, as JSON.
fn run(
    llama: &Llama,
    endpoint: Endpoint,
    req: Value,
    cancel: Option<&AtomicBool>,
) -> (Value, Vec<Value>) {
    let req = Request::from_json(endpoint, req.to_string().as_bytes()).unwrap();
    let prepared = llama.prepare(&req, &SamplingParams::default()).unwrap();
    let mut chunks = vec![];
    let answer = llama
        .run(prepared, cancel, &mut |c| {
            chunks.push(serde_json::to_value(c).unwrap());
            Flow::Continue
        })
        .unwrap();
    (serde_json::to_value(&answer).unwrap(), chunks)
}

fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

#[test]
fn chat_logprobs_are_the_reference_models_log_softmax() {
    let (dir, llama) = model("logprobs-chat");
    let messages = [Message::user("咖啡的作用是什么?")];
    let req = json!({"messages": [{"role": "user", "content": "咖啡的作用是什么?"}],
                     "max_tokens": 10, "temperature": 0, "logprobs": true, "top_logprobs": 5});
    let (answer, _) = run(&llama, Endpoint::Chat, req.clone(), None);
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    let greedy = GenerateOptions {
        max_tokens: Some(10),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let ids = llama.chat(&messages, &greedy).unwrap().ids;
    assert_eq!(content.len(), ids.len());
    assert_eq!(answer["usage"]["completion_tokens"], ids.len());

    // the reference's log-softmax at each generated position
    let prompt = llama.render(&messages, false).unwrap();
    let all: Vec<u32> = prompt.iter().chain(&ids).cloned().collect();
    let reference = Reference::load(&spec(), &dir, None);
    let logits = reference.logits_all(&all[..all.len() - 1]);
    let vocab = spec().vocab;
    let tok = llama.tokenizer();
    for (i, (entry, id)) in content.iter().zip(&ids).enumerate() {
        let pos = prompt.len() - 1 + i;
        let row = &logits[pos * vocab..(pos + 1) * vocab];
        let want = log_softmax(row);
        let scale = row.iter().fold(0f64, |m, l| m.max(l.abs()));
        let tol = 2e-3 * scale.max(1.0);
        let got = entry["logprob"].as_f64().unwrap();
        assert!(
            (got - want[*id as usize]).abs() <= tol,
            "token {i}: logprob {got} vs reference {}",
            want[*id as usize]
        );
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, tok.token_bytes(*id), "token {i}: bytes");
        // the five best, best first, with the reference's values
        let mut best = want.clone();
        best.sort_by(|a, b| b.total_cmp(a));
        let top: Vec<f64> = entry["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        assert_eq!(top.len(), 5);
        for (g, w) in top.iter().zip(&best) {
            assert!(
                (g - w).abs() <= tol,
                "token {i}: top logprobs {top:?} vs reference {:?}",
                &best[..5]
            );
        }
        // greedy: the chosen token is the best
        assert_eq!(entry["top_logprobs"][0]["logprob"], entry["logprob"]);
    }

    // streamed: the chunks' logprobs, in order, are the whole answer's
    let (_, chunks) = run(&llama, Endpoint::Chat, req.clone(), None);
    assert!(chunks.is_empty(), "without stream: true nothing streams");
    let mut streamed_req = req.clone();
    streamed_req["stream"] = json!(true);
    let (whole, chunks) = run(&llama, Endpoint::Chat, streamed_req, None);
    let streamed: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    // (the same tokens; the values to float noise, as this run's prompt came from the cache)
    let tokens = |v: &[Value]| {
        v.iter()
            .map(|t| {
                (
                    t["token"].clone(),
                    t["top_logprobs"].as_array().unwrap().len(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(tokens(&streamed), tokens(&content));
    for (s, c) in streamed.iter().zip(&content) {
        assert!(
            (s["logprob"].as_f64().unwrap() - c["logprob"].as_f64().unwrap()).abs() < 1e-4,
            "{s} vs {c}"
        );
    }
    assert_eq!(whole["choices"][0]["logprobs"]["content"], json!(streamed));
    // without logprobs the field is null
    let (plain, _) = run(
        &llama,
        Endpoint::Chat,
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        None,
    );
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn completion_logprobs_are_parallel_lists_with_character_offsets() {
    let (dir, llama) = model("logprobs-text");
    let req = json!({"prompt": "羊驼是", "max_tokens": 12, "temperature": 0, "logprobs": 3});
    let (answer, _) = run(&llama, Endpoint::Text, req.clone(), None);
    let choice = &answer["choices"][0];
    let lp = &choice["logprobs"];
    let n = answer["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[key].as_array().unwrap().len(), n, "{key}");
    }
    let text: Vec<char> = choice["text"].as_str().unwrap().chars().collect();
    let offsets: Vec<usize> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap() as usize)
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]) && offsets.last().is_none_or(|&o| o <= text.len())
    );
    for (i, t) in lp["tokens"].as_array().unwrap().iter().enumerate() {
        let t = t.as_str().unwrap();
        // a whole-UTF-8 token's text is where its offset says (the answer's first space aside)
        if !t.starts_with("\\x") && i > 0 {
            let at: String = text[offsets[i]..].iter().collect();
            assert!(
                at.starts_with(t),
                "token {i} {t:?} at {} of {:?}",
                offsets[i],
                choice["text"]
            );
        }
        let alts = lp["top_logprobs"][i].as_object().unwrap();
        assert!(alts.len() <= 3 && !alts.is_empty());
    }
    // streamed: the same lists, piece by piece
    let mut streamed_req = req;
    streamed_req["stream"] = json!(true);
    let (_, chunks) = run(&llama, Endpoint::Text, streamed_req, None);
    let mut tokens = vec![];
    let mut offs = vec![];
    for c in &chunks {
        if let Some(l) = c["choices"][0]["logprobs"].as_object() {
            tokens.extend(l["tokens"].as_array().unwrap().clone());
            offs.extend(
                l["text_offset"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_u64().unwrap() as usize),
            );
        }
    }
    assert_eq!(json!(tokens), lp["tokens"]);
    assert_eq!(offs, offsets);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn logprobs_fields_are_checked_per_endpoint() {
    let (dir, llama) = model("logprobs-check");
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let refused = |endpoint, req: Value| {
        let req = Request::from_json(endpoint, req.to_string().as_bytes()).unwrap();
        llama
            .prepare(&req, &SamplingParams::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        refused(
            Endpoint::Chat,
            json!({"messages": msgs, "logprobs": true, "top_logprobs": 21})
        )
        .contains("top_logprobs")
    );
    assert!(
        refused(Endpoint::Chat, json!({"messages": msgs, "top_logprobs": 2}))
            .contains("logprobs: true")
    );
    assert!(
        refused(Endpoint::Chat, json!({"messages": msgs, "logprobs": 3})).contains("true or false")
    );
    assert!(refused(Endpoint::Text, json!({"prompt": "a", "logprobs": true})).contains("count"));
    assert!(refused(Endpoint::Text, json!({"prompt": "a", "logprobs": -1})).contains("logprobs"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_cancelled_answer_keeps_its_text_and_says_abort() {
    let (dir, llama) = model("abort");
    let cancel = AtomicBool::new(false);
    let req = json!({"messages": [{"role": "user", "content": "讲一个故事"}], "max_tokens": 40,
                     "temperature": 0, "stream": true, "logprobs": true});
    let req = Request::from_json(Endpoint::Chat, req.to_string().as_bytes()).unwrap();
    let prepared = llama.prepare(&req, &SamplingParams::default()).unwrap();
    let mut streamed = String::new();
    let mut pieces = 0;
    let mut finish = None;
    let answer = llama
        .run(prepared, Some(&cancel), &mut |c| {
            streamed.push_str(c.text());
            if !c.text().is_empty() {
                pieces += 1;
            }
            if pieces == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
            let v = serde_json::to_value(c).unwrap();
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
            Flow::Continue
        })
        .unwrap();
    let Answer::Chat(a) = answer else {
        panic!("a chat answer")
    };
    assert_eq!(a.choices[0].finish_reason.as_str(), "abort");
    assert_eq!(finish.as_deref(), Some("abort"));
    assert_eq!(a.choices[0].message.content, Some(streamed));
    assert!(a.usage.completion_tokens >= 3 && a.usage.completion_tokens < 40);
    assert_eq!(
        a.choices[0].logprobs.as_ref().unwrap().content.len(),
        a.usage.completion_tokens
    );
    // the short forms still report a cancel as an error
    cancel.store(true, Ordering::Relaxed);
    let greedy = GenerateOptions {
        max_tokens: Some(4),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    assert!(matches!(
        llama.chat_stream(&[Message::user("hi")], &greedy, Some(&cancel), &mut |_| {
            Flow::Continue
        }),
        Err(yangtuo::Error::Cancelled)
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// `ignore_eos`: with the model's greedy first token declared its end-of-sequence, a plain
/// request stops at once, and one with `ignore_eos` runs to `max_tokens` without ever
/// producing it, while its logprobs still report the model's own (unmasked) distribution.
#[test]
fn ignore_eos_runs_to_max_tokens() {
    let (dir, llama) = model("ignore-eos");
    let ask =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0});
    let greedy = GenerateOptions {
        max_tokens: Some(1),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let eos = llama.chat(&[Message::user("hi")], &greedy).unwrap().ids[0];
    drop(llama);

    let config = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["eos_token_id"] = json!(eos);
    std::fs::write(&config, c.to_string()).unwrap();
    let llama = Llama::load(
        &dir,
        &LoadOptions {
            backend: BackendChoice::Cpu,
            ..LoadOptions::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let (stopped, _) = run(&llama, Endpoint::Chat, ask.clone(), None);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(stopped["usage"]["completion_tokens"], 0);

    for temperature in [0.0, 0.7] {
        let mut req = ask.clone();
        req["ignore_eos"] = json!(true);
        req["temperature"] = json!(temperature);
        req["seed"] = json!(3);
        req["logprobs"] = json!(true);
        req["top_logprobs"] = json!(1);
        let (a, _) = run(&llama, Endpoint::Chat, req, None);
        assert_eq!(a["choices"][0]["finish_reason"], "length", "{a}");
        assert_eq!(a["usage"]["completion_tokens"], 8);
        let content = a["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 8);
        let eos_text = llama.tokenizer().token_bytes(eos);
        // the first position's most likely token is still EOS: the mask is not in the logprobs
        let top = &content[0]["top_logprobs"][0];
        let top_bytes: Vec<u8> = top["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(top_bytes, eos_text, "{a}");
        assert!(top["logprob"].as_f64().unwrap() >= content[0]["logprob"].as_f64().unwrap());
    }
    let _ = std::fs::remove_dir_all(dir);
}
