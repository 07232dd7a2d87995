//! Structured output through llguidance: answers of a random-weight model, which would
//! otherwise be noise, parse as JSON and satisfy their schema (greedy, seeded and batched
//! sampling, the Llama 2 and Chinese-LLaMA-2 vocabularies, byte-fallback pieces), a Lark
//! grammar holds, and a schema llguidance cannot compile is an error naming the field.
//! The Python reference `jsonschema` checks the same through the server (tests/py/test_server.py).

use serde_json::{Value, json};
use std::path::PathBuf;
use yangtuo::api::Endpoint;
use yangtuo::grammar::Grammar;
use yangtuo::{BackendChoice, Flow, GenerateOptions, Llama, LoadOptions, Message, SamplingParams};
use yangtuo_tests::Spec;

/// A random Q4_0 model folder with a real tokenizer from `tests/data`, loaded on the CPU.
fn model(name: &str, tokenizer: &str, vocab: usize) -> (PathBuf, Llama) {
    let shared = PathBuf::from(format!(
        "{}/data/tokenizers/{tokenizer}/tokenizer.model",
        env!("CARGO_MANIFEST_DIR")
    ));
    assert!(
        shared.is_file(),
        "tests/data (the tokenizers the tests need) is missing from the repository"
    );
    let dir = Spec {
        vocab,
        max_pos: 512,
        seed: 17,
        ..Spec::default()
    }
    .write_temp(name);
    std::fs::copy(&shared, dir.join("tokenizer.model")).unwrap();
    let opts = LoadOptions {
        backend: BackendChoice::Cpu,
        quantize: Some(yangtuo::weights::WeightFormat::Q4_0),
        ..LoadOptions::default()
    };
    let llama = Llama::load(&dir, &opts, &mut |_| {}).unwrap();
    (dir, llama)
}

/// Bounded, so that a random model finishes it: short strings, small numbers, few items.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pet": {"enum": ["羊驼", "llama", "猫"]},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}
        },
        "required": ["name", "age", "pet"],
        "additionalProperties": false
    })
}

/// `answer` is a JSON object that `person_schema` accepts.
fn check_person(answer: &str) {
    let v: Value = serde_json::from_str(answer.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {answer}"));
    assert!(
        o.keys()
            .all(|k| ["name", "age", "pet", "tags"].contains(&k.as_str())),
        "{answer}"
    );
    assert!(
        o["name"].as_str().is_some_and(|s| s.chars().count() <= 8),
        "{answer}"
    );
    assert!(o["age"].as_u64().is_some_and(|a| a <= 150), "{answer}");
    assert!(
        ["羊驼", "llama", "猫"].contains(&o["pet"].as_str().unwrap_or("")),
        "{answer}"
    );
    if let Some(t) = o.get("tags") {
        assert!(
            t.as_array()
                .is_some_and(|t| t.len() <= 3 && t.iter().all(Value::is_boolean)),
            "{answer}"
        );
    }
}

fn opts(grammar: Grammar, sampling: SamplingParams) -> GenerateOptions {
    GenerateOptions {
        max_tokens: Some(300),
        sampling,
        grammar: Some(grammar),
        ..Default::default()
    }
}

#[test]
fn json_schema_answers_parse_and_hold_on_both_vocabularies() {
    for (tokenizer, vocab) in [("llama2", 32000), ("chinese-llama2", 55296)] {
        let (dir, llama) = model(&format!("grammar-{tokenizer}"), tokenizer, vocab);
        let q = [Message::user("介绍一个人，用 JSON。")];
        for sampling in [
            SamplingParams::greedy(),
            SamplingParams {
                temperature: 1.0,
                seed: Some(3),
                ..Default::default()
            },
        ] {
            let c = llama
                .chat(&q, &opts(Grammar::JsonSchema(person_schema()), sampling))
                .unwrap();
            assert_eq!(
                c.finish_reason,
                yangtuo::FinishReason::Stop,
                "{tokenizer}: {:?}",
                c.text
            );
            check_person(&c.text);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn batched_answers_hold_their_own_schemas() {
    let (dir, llama) = model("grammar-batched", "llama2", 32000);
    llama.enable_batching(4).unwrap();
    let yes_no = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false});
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let (llama, yes_no) = (&llama, yes_no.clone());
                s.spawn(move || {
                    let schema = if i % 2 == 0 { person_schema() } else { yes_no };
                    let sampling = SamplingParams {
                        temperature: 0.9,
                        seed: Some(i),
                        ..Default::default()
                    };
                    (
                        i,
                        llama
                            .chat(
                                &[Message::user("hi")],
                                &opts(Grammar::JsonSchema(schema), sampling),
                            )
                            .unwrap()
                            .text,
                    )
                })
            })
            .collect();
        for h in handles {
            let (i, text) = h.join().unwrap();
            if i % 2 == 0 {
                check_person(&text);
            } else {
                let v: Value =
                    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
                assert!(
                    v["ok"].is_boolean() && v.as_object().unwrap().len() == 1,
                    "{text}"
                );
            }
        }
    });
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_lark_grammar_and_the_openai_fields() {
    let (dir, llama) = model("grammar-lark", "llama2", 32000);
    let lark = Grammar::Lark(
        r#"start: ("是" | "否") "，" NUM
NUM: /[0-9]{1,3}/"#
            .into(),
    );
    let c = llama
        .chat(
            &[Message::user("?")],
            &opts(
                lark,
                SamplingParams {
                    temperature: 1.0,
                    seed: Some(9),
                    ..Default::default()
                },
            ),
        )
        .unwrap();
    let (word, num) = c
        .text
        .split_once('，')
        .unwrap_or_else(|| panic!("{:?}", c.text));
    assert!(
        ["是", "否"].contains(&word)
            && (1..=3).contains(&num.len())
            && num.bytes().all(|b| b.is_ascii_digit()),
        "{:?}",
        c.text
    );

    // OpenAI's response_format through the one JSON entry point
    let req = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, "seed": 5,
                     "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": person_schema(), "strict": true}}});
    let answer: Value = serde_json::from_str(
        &llama
            .openai_json(Endpoint::Chat, &req.to_string(), None, &mut |_| {
                Flow::Continue
            })
            .unwrap(),
    )
    .unwrap();
    check_person(answer["choices"][0]["message"]["content"].as_str().unwrap());

    // what cannot be compiled, or is malformed, is refused by name before any generation
    for (bad, field) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (json!({"grammar": "start: ("}), "grammar"),
        // llama.cpp's GBNF is named as such
        (json!({"grammar": "root ::= \"yes\" | \"no\""}), "grammar"),
    ] {
        let err = yangtuo_tests::chat_request_error(&llama, &bad);
        assert!(
            matches!(&err, yangtuo::Error::InvalidArg { name, .. } if name == field),
            "{bad}: {err}"
        );
        if bad.to_string().contains("::=") {
            assert!(
                err.to_string().contains("GBNF") && err.to_string().contains("gbnf_to_lark"),
                "{err}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
