//! Test support: random-weight Llama models written as Hugging Face folders, and
//! candle-transformers' Llama (in f32) as the reference the project did not write.

pub mod fake_hub;
pub mod fuzz;
pub mod reference;

use half::{bf16, f16};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Shape and options of a random model.
#[derive(Debug, Clone)]
pub struct Spec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub max_pos: usize,
    pub theta: f64,
    pub tie: bool,
    pub dtype: Dtype,
    pub eps: f64,
    /// `rope_scaling` as it appears in config.json.
    pub rope_scaling: Option<serde_json::Value>,
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            hidden: 64,
            intermediate: 160,
            layers: 2,
            heads: 4,
            kv_heads: 4,
            vocab: 300,
            max_pos: 512,
            theta: 10000.0,
            tie: false,
            dtype: Dtype::F32,
            eps: 1e-5,
            rope_scaling: None,
            seed: 1,
        }
    }
}

/// A small deterministic generator (splitmix64 + Box–Muller), so models are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A fresh, empty folder under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("yangtuo-test-{}-{}-{name}", std::process::id(), n));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("unsupported test dtype {other:?}"),
    }
}

impl Spec {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn config_json(&self) -> serde_json::Value {
        let mut c = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_pos,
            "rms_norm_eps": self.eps,
            "rope_theta": self.theta,
            "tie_word_embeddings": self.tie,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": match self.dtype { Dtype::F16 => "float16", Dtype::BF16 => "bfloat16", _ => "float32" },
        });
        if let Some(s) = &self.rope_scaling {
            c["rope_scaling"] = s.clone();
        }
        c
    }

    /// Every tensor as (name, shape, init): init > 0 is the std of normal weights, init < 0
    /// marks a norm vector (1 + 0.2·N(0,1)). Weights are scaled so activations stay O(1) and
    /// attention is far from uniform: random but not degenerate.
    pub fn layout(&self) -> Vec<(String, Vec<usize>, f64)> {
        let hd = self.head_dim();
        let (d, f) = (self.hidden, self.intermediate);
        let s = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab, d],
            1.0,
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((
                format!("{p}.self_attn.q_proj.weight"),
                vec![self.heads * hd, d],
                2.0 * s(d),
            ));
            out.push((
                format!("{p}.self_attn.k_proj.weight"),
                vec![self.kv_heads * hd, d],
                2.0 * s(d),
            ));
            out.push((
                format!("{p}.self_attn.v_proj.weight"),
                vec![self.kv_heads * hd, d],
                s(d),
            ));
            out.push((
                format!("{p}.self_attn.o_proj.weight"),
                vec![d, self.heads * hd],
                s(d),
            ));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d], s(d)));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![f, d], s(d)));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![d, f], s(f)));
        }
        if !self.tie {
            out.push(("lm_head.weight".into(), vec![self.vocab, d], 2.0 * s(d)));
        }
        out.push(("model.norm.weight".into(), vec![d], -1.0));
        for l in 0..self.layers {
            out.push((
                format!("model.layers.{l}.input_layernorm.weight"),
                vec![d],
                -1.0,
            ));
            out.push((
                format!("model.layers.{l}.post_attention_layernorm.weight"),
                vec![d],
                -1.0,
            ));
        }
        out
    }

    /// Every tensor of the model as (name, shape, f32 values), in `layout` order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = Rng::new(self.seed);
        self.layout()
            .into_iter()
            .map(|(n, shape, init)| {
                let v = values(&mut rng, shape.iter().product(), init);
                (n, shape, v)
            })
            .collect()
    }

    /// Write `config.json` and the weights: `model.safetensors`, or `shards` shards plus
    /// `model.safetensors.index.json`. Tensors are generated and written one at a time, so
    /// models of billions of parameters need no more memory than their largest tensor.
    pub fn write(&self, dir: &Path, shards: usize) {
        use std::io::Write;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&self.config_json()).unwrap(),
        )
        .unwrap();
        let layout = self.layout();
        let shards = shards.max(1);
        let per = layout.len().div_ceil(shards);
        let dtype_name = match self.dtype {
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            _ => "F32",
        };
        let elem = if self.dtype == Dtype::F32 { 4 } else { 2 };
        let mut rng = Rng::new(self.seed);
        let mut weight_map = BTreeMap::new();
        for (i, group) in layout.chunks(per).enumerate() {
            let file = if shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, shards)
            };
            let mut header = serde_json::Map::new();
            let mut off = 0usize;
            for (n, shape, _) in group {
                let len = shape.iter().product::<usize>() * elem;
                header.insert(n.clone(), serde_json::json!({"dtype": dtype_name, "shape": shape, "data_offsets": [off, off + len]}));
                off += len;
                weight_map.insert(n.clone(), file.clone());
            }
            let mut h = serde_json::Value::Object(header).to_string();
            while (8 + h.len()) % 8 != 0 {
                h.push(' ');
            }
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(&file)).unwrap());
            f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
            f.write_all(h.as_bytes()).unwrap();
            for (_, shape, init) in group {
                let v = values(&mut rng, shape.iter().product(), *init);
                f.write_all(&encode(&v, self.dtype)).unwrap();
            }
            f.flush().unwrap();
        }
        if shards > 1 {
            let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        }
    }

    /// Write the model into a fresh temp folder and return it.
    pub fn write_temp(&self, name: &str) -> PathBuf {
        let d = temp_dir(name);
        self.write(&d, 1);
        d
    }
}

fn values(rng: &mut Rng, n: usize, init: f64) -> Vec<f32> {
    if init < 0.0 {
        (0..n).map(|_| (1.0 + 0.2 * rng.normal()) as f32).collect()
    } else {
        (0..n).map(|_| (rng.normal() * init) as f32).collect()
    }
}

/// Random token ids in 3..vocab (avoiding BOS/EOS so continuations are not cut short).
pub fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| 3 + r.below(vocab - 3) as u32).collect()
}

/// max |a − b| over max |b|, and whether both have the same shape.
pub fn rel_max_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "logit shapes differ");
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
    assert!(err.is_finite(), "non-finite logits");
    err / scale
}

/// The `yangtuo` CLI of the same build as the running test or tool
/// (`<target>/<profile>/yangtuo`; tests run from `<profile>/deps`, tools from `<profile>`).
pub fn cli_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().expect("a binary in a folder");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("<target>/<profile>/deps");
    }
    let bin = dir.join(format!("yangtuo{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the CLI binary {} is missing: build it first with `cargo build --release -p yangtuo-cli` \
         (same profile and CARGO_TARGET_DIR as the tests)",
        bin.display()
    );
    bin
}

/// The error a chat request with `extra` fields (over one user message, 4 tokens) ends in:
/// refused when checked, else when generated. Panics if it succeeds.
pub fn chat_request_error(llama: &yangtuo::Llama, extra: &serde_json::Value) -> yangtuo::Error {
    use yangtuo::api::{Endpoint, Request};
    let mut req =
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    req.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    Request::from_json(Endpoint::Chat, req.to_string().as_bytes())
        .and_then(|r| {
            llama
                .prepare(&r, &yangtuo::SamplingParams::default())
                .map(|_| ())
        })
        .and_then(|_| {
            llama
                .openai_json(Endpoint::Chat, &req.to_string(), None, &mut |_| {
                    yangtuo::Flow::Continue
                })
                .map(|_| ())
        })
        .expect_err("the request was answered")
}
