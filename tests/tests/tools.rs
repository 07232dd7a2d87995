//! Tool calls (chat/tools.rs) through the one OpenAI-shaped entry point, on a random-weight
//! model whose unconstrained output is noise: with `tool_choice` required or named, every
//! answer is a call to an offered tool with arguments its schema accepts; with `auto`, a
//! call or plain text; streamed, the call arrives whole with `finish_reason: "tool_calls"`;
//! a history with calls and results renders; malformed tools are refused by name. Python's
//! `jsonschema` checks the arguments too (bindings-python/tests/test_tools.py).

use serde_json::{Value, json};
use std::path::PathBuf;
use yangtuo::api::{Endpoint, Request};
use yangtuo::{BackendChoice, Flow, Llama, LoadOptions, SamplingParams};
use yangtuo_tests::Spec;

fn model(name: &str, tool_template: Option<&str>) -> (PathBuf, Llama) {
    let shared = PathBuf::from(format!(
        "{}/data/tokenizers/llama2/tokenizer.model",
        env!("CARGO_MANIFEST_DIR")
    ));
    assert!(
        shared.is_file(),
        "tests/data (the tokenizers the tests need) is missing from the repository"
    );
    let dir = Spec {
        vocab: 32000,
        max_pos: 1024,
        seed: 23,
        ..Spec::default()
    }
    .write_temp(name);
    std::fs::copy(&shared, dir.join("tokenizer.model")).unwrap();
    let opts = LoadOptions {
        backend: BackendChoice::Cpu,
        quantize: Some(yangtuo::weights::WeightFormat::Q4_0),
        tool_template: tool_template.map(str::to_string),
        ..LoadOptions::default()
    };
    (dir.clone(), Llama::load(&dir, &opts, &mut |_| {}).unwrap())
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "查询城市天气",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 6},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add",
            "parameters": {"type": "object", "properties": {
                "a": {"type": "integer", "minimum": -99, "maximum": 99},
                "b": {"type": "integer", "minimum": -99, "maximum": 99}},
                "required": ["a", "b"], "additionalProperties": false}}}
    ])
}

/// The call's arguments hold its tool's schema (checked by hand here; by `jsonschema` in
/// the Python tests).
fn check_call(call: &Value) {
    assert_eq!(call["type"], "function", "{call}");
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_")),
        "{call}"
    );
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    let o = args.as_object().unwrap();
    match call["function"]["name"].as_str().unwrap() {
        "get_weather" => {
            assert!(
                o["city"].as_str().is_some_and(|c| c.chars().count() <= 6),
                "{call}"
            );
            assert!(
                ["celsius", "fahrenheit"].contains(&o["unit"].as_str().unwrap()),
                "{call}"
            );
            assert_eq!(o.len(), 2, "{call}");
        }
        "add" => {
            assert!(
                ["a", "b"]
                    .iter()
                    .all(|k| o[*k].as_i64().is_some_and(|v| (-99..=99).contains(&v))),
                "{call}"
            );
            assert_eq!(o.len(), 2, "{call}");
        }
        other => panic!("called {other}: {call}"),
    }
}

fn ask(llama: &Llama, extra: Value) -> Value {
    let mut req = json!({"messages": [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "北京天气怎么样？"}],
                         "tools": tools(), "max_tokens": 200});
    req.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_str(
        &llama
            .openai_json(Endpoint::Chat, &req.to_string(), None, &mut |_| {
                Flow::Continue
            })
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn required_and_named_choices_always_call_with_valid_arguments() {
    let (dir, llama) = model("tools-required", None);
    for seed in 0..6 {
        let a = ask(
            &llama,
            json!({"tool_choice": "required", "seed": seed, "temperature": 1.0}),
        );
        let choice = &a["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{a}");
        assert!(choice["message"]["content"].is_null(), "{a}");
        check_call(&choice["message"]["tool_calls"][0]);
    }
    let named = json!({"type": "function", "function": {"name": "add"}});
    for seed in 0..3 {
        let a = ask(
            &llama,
            json!({"tool_choice": named, "seed": seed, "temperature": 1.0}),
        );
        let call = &a["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "add", "{a}");
        check_call(call);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn auto_answers_in_text_or_with_a_valid_call() {
    let (dir, llama) = model("tools-auto", None);
    let (mut calls, mut texts) = (0, 0);
    for seed in 0..8 {
        let a = ask(&llama, json!({"seed": seed, "temperature": 1.0}));
        let choice = &a["choices"][0];
        match choice["message"]["tool_calls"].get(0) {
            Some(call) => {
                assert_eq!(choice["finish_reason"], "tool_calls", "{a}");
                check_call(call);
                calls += 1;
            }
            None => {
                let text = choice["message"]["content"].as_str().unwrap();
                assert!(!text.trim_start().starts_with('{'), "{a}");
                texts += 1;
            }
        }
    }
    eprintln!("auto: {calls} calls, {texts} text answers");
    // "none" is a plain chat: no call, whatever the text
    let a = ask(
        &llama,
        json!({"tool_choice": "none", "seed": 1, "max_tokens": 8}),
    );
    assert!(
        a["choices"][0]["message"].get("tool_calls").is_none()
            && a["choices"][0]["finish_reason"] != "tool_calls",
        "{a}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_streamed_call_arrives_whole_and_matches_the_answer() {
    let (dir, llama) = model("tools-stream", None);
    let whole = ask(
        &llama,
        json!({"tool_choice": "required", "seed": 4, "temperature": 1.0, "logprobs": true}),
    );
    let mut req = json!({"messages": [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "北京天气怎么样？"}],
                         "tools": tools(), "max_tokens": 200, "tool_choice": "required", "seed": 4, "temperature": 1.0,
                         "logprobs": true, "stream": true});
    let mut chunks = vec![];
    llama
        .openai_json(Endpoint::Chat, &req.to_string(), None, &mut |c| {
            chunks.push(serde_json::from_str::<Value>(&c).unwrap());
            Flow::Continue
        })
        .unwrap();
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(deltas[0]["role"], "assistant");
    let calls: Vec<&Value> = deltas.iter().filter_map(|d| d.get("tool_calls")).collect();
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert!(
        deltas
            .iter()
            .all(|d| d.get("content").is_none_or(|c| c == "")),
        "no text streams: {chunks:?}"
    );
    let call = &calls[0][0];
    assert_eq!(call["index"], 0);
    let want = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(
        (&call["function"], &call["type"]),
        (&want["function"], &want["type"])
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let streamed_logprobs: usize = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(
        streamed_logprobs,
        whole["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len()
    );

    // auto, streamed: text streams as text, a call as a call; the same as the whole answer
    for seed in 0..4 {
        req["tool_choice"] = json!("auto");
        req["seed"] = json!(seed);
        let whole = ask(
            &llama,
            json!({"seed": seed, "temperature": 1.0, "logprobs": true}),
        );
        let (mut text, mut call) = (String::new(), None);
        llama
            .openai_json(Endpoint::Chat, &req.to_string(), None, &mut |c| {
                let c: Value = serde_json::from_str(&c).unwrap();
                text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                if let Some(tc) = c["choices"][0]["delta"].get("tool_calls") {
                    call = Some(tc[0]["function"].clone());
                }
                Flow::Continue
            })
            .unwrap();
        let m = &whole["choices"][0]["message"];
        match call {
            Some(f) => assert_eq!(f, m["tool_calls"][0]["function"]),
            None => assert_eq!(text, m["content"].as_str().unwrap()),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn history_with_calls_and_results_renders_and_bad_tools_are_refused() {
    let template = "{{ system }} | {% for t in tools %}{{ t.name }};{% endfor %}";
    let (dir, llama) = model("tools-history", Some(template));
    let history = json!([
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"北京\",\"unit\":\"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "晴，25度"}
    ]);
    let req = json!({"messages": history, "tools": tools(), "max_tokens": 4, "seed": 1});
    let prepared = llama
        .prepare(
            &Request::from_json(Endpoint::Chat, req.to_string().as_bytes()).unwrap(),
            &SamplingParams::default(),
        )
        .unwrap();
    // the rendered turns, the tools described by the template the model was loaded with
    let Request::Chat(chat) =
        Request::from_json(Endpoint::Chat, req.to_string().as_bytes()).unwrap()
    else {
        unreachable!()
    };
    let roles: Vec<(&str, &str)> = chat
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("system", "sys"),
            ("user", "北京天气？"),
            (
                "assistant",
                "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"北京\",\"unit\":\"celsius\"}}"
            ),
            ("user", "Result of get_weather: 晴，25度"),
        ]
    );
    let mut described = chat.messages.clone();
    described[0].content = "sys | get_weather;add;".into();
    assert_eq!(
        prepared.prompt_tokens(),
        llama.render(&described, false).unwrap().len()
    );
    let a: Value = serde_json::from_str(
        &llama
            .openai_json(Endpoint::Chat, &req.to_string(), None, &mut |_| {
                Flow::Continue
            })
            .unwrap(),
    )
    .unwrap();
    assert!(a["choices"][0]["finish_reason"].is_string(), "{a}");

    for (bad, field) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}),
            "tools",
        ),
        (
            json!({"tools": tools(), "tool_choice": "always"}),
            "tool_choice",
        ),
        (
            json!({"tools": tools(), "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/nowhere"}}}],
                "tool_choice": "required"}),
            "tools",
        ),
    ] {
        let err = yangtuo_tests::chat_request_error(&llama, &bad);
        assert!(
            matches!(&err, yangtuo::Error::InvalidArg { name, .. } if name == field),
            "{bad}: {err}"
        );
    }
    let orphan = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}]});
    let err = Request::from_json(Endpoint::Chat, orphan.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("tool_call_id"), "{err}");
    let text = json!({"prompt": "hi", "tools": tools()});
    let err = Request::from_json(Endpoint::Text, text.to_string().as_bytes())
        .and_then(|r| llama.prepare(&r, &SamplingParams::default()).map(|_| ()))
        .unwrap_err();
    assert!(
        matches!(&err, yangtuo::Error::InvalidArg { name, .. } if name == "tools"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A random model never starts an `auto` answer with `{`, so the grammar itself is checked:
/// it takes a call to an offered tool or text, and nothing in between.
#[test]
fn the_auto_grammar_takes_a_call_or_text() {
    let (dir, llama) = model("tools-auto-grammar", None);
    let tools = tools();
    let auto = yangtuo::chat::tools::ToolUse::from_request(Some(&tools), None)
        .unwrap()
        .unwrap();
    let vocab = yangtuo::grammar::Vocab::new(llama.tokenizer(), 2).unwrap();
    let takes = |text: &str| {
        let mut c = vocab.constraint(&auto.grammar()).unwrap();
        llama
            .tokenizer()
            .encode(text)
            .unwrap()
            .into_iter()
            .all(|t| {
                let mut logits = vec![0.0f32; 32000];
                c.mask(&mut logits).is_ok() && logits[t as usize] == 0.0 && c.accept(t).is_ok()
            })
    };
    assert!(takes(r#"{"name":"add","arguments":{"a":1,"b":-2}}"#));
    assert!(takes(
        r#"{"name":"get_weather","arguments":{"city":"北京","unit":"celsius"}}"#
    ));
    assert!(takes("It is sunny {maybe}."));
    assert!(!takes(r#"{"name":"delete_everything","arguments":{}}"#));
    assert!(!takes(r#"{"name":"add","arguments":{"a":1000,"b":0}}"#));
    assert!(!takes(r#"{"weather": "sunny"}"#));
    let _ = std::fs::remove_dir_all(dir);
}
