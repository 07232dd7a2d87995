//! `make-model --out DIR [--shape tinyllama|tiny] [--hidden N ...] [--dtype f16] [--tokenizer DIR]`:
//! write a random-weight Llama model as a Hugging Face folder, for tests and benchmarks.

use safetensors::Dtype;
use std::path::PathBuf;
use yangtuo_tests::Spec;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |k: &str, d: usize| {
        get(k)
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{k}: not a number")))
            .unwrap_or(d)
    };
    let out = PathBuf::from(get("--out").expect("--out DIR is required"));
    let base = match get("--shape").as_deref() {
        // TinyLlama-1.1B: the shape of the shared data set's bench/ANCHORS.md
        Some("tinyllama") => Spec {
            hidden: 2048,
            intermediate: 5632,
            layers: 22,
            heads: 32,
            kv_heads: 4,
            vocab: 32000,
            max_pos: 2048,
            ..Spec::default()
        },
        Some("llama2-7b") => Spec {
            hidden: 4096,
            intermediate: 11008,
            layers: 32,
            heads: 32,
            kv_heads: 32,
            vocab: 32000,
            max_pos: 4096,
            ..Spec::default()
        },
        _ => Spec::default(),
    };
    let spec = Spec {
        hidden: num("--hidden", base.hidden),
        intermediate: num("--intermediate", base.intermediate),
        layers: num("--layers", base.layers),
        heads: num("--heads", base.heads),
        kv_heads: num("--kv-heads", base.kv_heads),
        vocab: num("--vocab", base.vocab),
        max_pos: num("--max-pos", base.max_pos),
        seed: num("--seed", 1) as u64,
        tie: args.iter().any(|a| a == "--tie"),
        dtype: match get("--dtype").as_deref().unwrap_or("f32") {
            "f16" => Dtype::F16,
            "bf16" => Dtype::BF16,
            _ => Dtype::F32,
        },
        ..base
    };
    std::fs::create_dir_all(&out).unwrap();
    spec.write(&out, num("--shards", 1));
    if let Some(t) = get("--tokenizer") {
        for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json"] {
            let src = PathBuf::from(&t).join(f);
            if src.exists() {
                std::fs::copy(&src, out.join(f)).unwrap();
            }
        }
    }
    eprintln!("wrote {}", out.display());
}
