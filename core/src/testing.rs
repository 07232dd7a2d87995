//! Helpers for the unit tests.

use crate::weights::builder::WeightSource;
use crate::weights::{Blob, RopeStyle, TensorId, WeightData, WeightFormat};
use crate::{Config, Result, RopeScaling};

/// xorshift64*, for reproducible test data without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random weights for a small Llama, in `format` where the width allows (else f32).
/// `dequantized` hands out the same weights decoded to f32: the CPU reference then
/// computes with exactly the values the GPU decodes.
pub struct RandomSource {
    pub config: Config,
    pub format: WeightFormat,
    pub style: RopeStyle,
    pub dequantized: bool,
    pub seed: u64,
}

pub fn random(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(0x9E3779B97F4A7C15)
        .wrapping_add(0x2545F4914F6CDD1D);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

impl WeightSource for RandomSource {
    fn config(&self) -> &Config {
        &self.config
    }
    fn rope_style(&self) -> RopeStyle {
        self.style
    }
    fn weight(&mut self, id: TensorId) -> Result<WeightData> {
        let [rows, cols] = id.expected_shape(&self.config);
        let seed = self.seed
            ^ (id
                .gguf_name()
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
        let name = id.gguf_name();
        if id.is_vector() {
            let v: Vec<f32> = random(seed, cols, 0.2).iter().map(|x| 1.0 + x).collect();
            return WeightData::new(
                WeightFormat::F32,
                1,
                cols,
                Blob::from_vec(bytemuck::cast_slice(&v).to_vec()),
                &name,
            );
        }
        let f = if cols % self.format.block_elems() == 0 {
            self.format
        } else {
            WeightFormat::F32
        };
        let data = random(seed, rows * cols, 1.5 / (cols as f32).sqrt());
        let mut w = if f == WeightFormat::Gptq4 && matches!(id, TensorId::Layer(_, _)) {
            // stored in a permuted column order, as GPTQ act-order checkpoints are
            let perm: Vec<u32> = {
                let mut p: Vec<u32> = (0..cols as u32).collect();
                let r = random(seed + 1, cols, 1.0);
                p.sort_by(|a, b| r[*a as usize].total_cmp(&r[*b as usize]));
                p
            };
            let stored: Vec<f32> = (0..rows)
                .flat_map(|r| perm.iter().map(move |&c| (r, c)))
                .map(|(r, c)| data[r * cols + c as usize])
                .collect();
            WeightData::new(
                f,
                rows,
                cols,
                Blob::from_vec(crate::weights::ggml::quantize(f, &stored)),
                &name,
            )?
            .with_perm(perm, &name)?
        } else {
            WeightData::new(
                f,
                rows,
                cols,
                Blob::from_vec(crate::weights::ggml::quantize(f, &data)),
                &name,
            )?
        };
        if self.dequantized {
            let v = w.to_f32();
            w = WeightData::new(
                WeightFormat::F32,
                rows,
                cols,
                Blob::from_vec(bytemuck::cast_slice(&v).to_vec()),
                &name,
            )?;
        }
        Ok(w)
    }
}

/// A two-layer Llama of these sizes (head_dim = dim / heads).
pub fn config(
    dim: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    tie: bool,
) -> Config {
    Config {
        dim,
        hidden_dim: hidden,
        n_layers: 2,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: dim / heads,
        vocab_size: vocab,
        max_seq_len: 512,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        tie_embeddings: tie,
        bos_id: Some(1),
        eos_ids: vec![2],
    }
}
