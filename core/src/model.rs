//! The Llama forward pass, written once for every backend.
//!
//! State is split by lifetime, as in llama2.c: `Config` (hyperparameters), `Weights`
//! (read-only, shared by every session) and `State` (scratch buffers plus the KV cache,
//! one per session).

use crate::backend::{AttnShape, Backend};
use crate::runner::{Locked, Runner};
use crate::weights::builder::{LoadProgress, ModelBuilder, WeightSource};
use crate::weights::{RopeStyle, TensorId};
use crate::{Config, Error, Result};
use std::sync::Arc;

pub struct LayerWeights<B: Backend> {
    pub(crate) attn_norm: B::Act, // (1, dim)
    pub(crate) wq: B::Matrix,     // (n_heads * head_dim, dim)
    pub(crate) wk: B::Matrix,     // (n_kv_heads * head_dim, dim)
    pub(crate) wv: B::Matrix,     // (n_kv_heads * head_dim, dim)
    pub(crate) wo: B::Matrix,     // (dim, n_heads * head_dim)
    pub(crate) ffn_norm: B::Act,  // (1, dim)
    pub(crate) w1: B::Matrix,     // (hidden_dim, dim)  gate
    pub(crate) w2: B::Matrix,     // (dim, hidden_dim)  down
    pub(crate) w3: B::Matrix,     // (hidden_dim, dim)  up
}

pub struct Weights<B: Backend> {
    pub(crate) embed: B::Matrix, // (vocab, dim)
    pub(crate) layers: Vec<LayerWeights<B>>,
    pub(crate) norm: B::Act,      // (1, dim)
    pub(crate) output: B::Matrix, // (vocab, dim), the embedding itself when tied
}

/// A loaded model: config, backend and weights. Shared by every session (`State`).
pub struct Model<B: Backend> {
    pub config: Config,
    pub rope_style: RopeStyle,
    pub backend: B,
    pub(crate) weights: Weights<B>,
}

impl<B: Backend> Model<B> {
    /// Load every tensor of `source`, one at a time, onto `backend`.
    pub fn load(
        source: &mut dyn WeightSource,
        backend: B,
        total_bytes: u64,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let mut b = ModelBuilder::new(source.config().clone(), source.rope_style(), backend);
        let mut done = 0u64;
        for id in TensorId::all(source.config()) {
            let w = source.weight(id)?;
            b.add(id, &w)?;
            done += w.bytes.len() as u64;
            progress(LoadProgress { tensor: &id.gguf_name(), done_bytes: done, total_bytes });
        }
        b.finish()
    }

    /// This model behind the backend-erased `Runner` the chat layer uses, with the lock
    /// that keeps two sessions' work from interleaving on its device.
    pub fn into_runner(self) -> Arc<dyn Runner> {
        Arc::new(Locked::new(self))
    }

    /// A fresh session: scratch for up to `max_batch` tokens per forward, a KV cache of
    /// `ctx_len` positions, and logits for up to `logit_rows` positions per forward.
    pub fn new_state(&self, ctx_len: usize, max_batch: usize, logit_rows: usize) -> Result<State<B>> {
        let c = &self.config;
        let b = &self.backend;
        let (nb, lr) = (max_batch.max(1), logit_rows.clamp(1, max_batch.max(1)));
        let mut kv = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            kv.push((
                b.alloc_kv(&format!("k cache {l}"), ctx_len, c.kv_dim())?,
                b.alloc_kv(&format!("v cache {l}"), ctx_len, c.kv_dim())?,
            ));
        }
        Ok(State {
            x: b.alloc("x", nb, c.dim)?,
            xb: b.alloc("xb", nb, c.dim)?,
            xb2: b.alloc("xb2", nb, c.dim)?,
            q: b.alloc("q", nb, c.q_dim())?,
            k: b.alloc("k", nb, c.kv_dim())?,
            v: b.alloc("v", nb, c.kv_dim())?,
            att: b.alloc("att", nb, c.q_dim())?,
            hb: b.alloc("hb", nb, c.hidden_dim)?,
            hb2: b.alloc("hb2", nb, c.hidden_dim)?,
            rope: b.alloc("rope", nb, c.head_dim)?,
            logits: b.alloc("logits", lr, c.vocab_size)?,
            kv,
            ctx_len,
            max_batch: nb,
            logit_rows: lr,
        })
    }

    /// Run `tokens` at positions `pos..`, leaving logits of the last `rows_out` tokens in
    /// `state.logits` (at most `state.logit_rows`). Prompts longer than `max_batch` run in
    /// chunks. The KV cache keeps every position for later calls.
    pub fn forward(&self, s: &mut State<B>, tokens: &[u32], pos: usize, rows_out: usize) -> Result<()> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(Error::arg("tokens", "nothing to run"));
        }
        if pos + tokens.len() > s.ctx_len {
            return Err(Error::ContextLength { prompt: pos + tokens.len(), requested: 0, context: s.ctx_len });
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::arg("ids", format!("token id {bad} is out of range for vocab size {}", c.vocab_size)));
        }
        let rows_out = rows_out.clamp(1, s.logit_rows.min(tokens.len()));
        let mut start = 0;
        while start < tokens.len() {
            let n = (tokens.len() - start).min(s.max_batch);
            let last_chunk = start + n == tokens.len();
            self.forward_chunk(s, &tokens[start..start + n], pos + start, if last_chunk { rows_out.min(n) } else { 0 });
            start += n;
        }
        Ok(())
    }

    fn forward_chunk(&self, s: &mut State<B>, tokens: &[u32], pos: usize, rows_out: usize) {
        let (b, c, w) = (&self.backend, &self.config, &self.weights);
        let n = tokens.len();
        let eps = c.norm_eps as f32;
        let shape = AttnShape { n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: c.head_dim };

        // token embeddings, and the rotary angles of positions pos..pos+n
        b.embed(&w.embed, tokens, &mut s.x);
        b.write(&mut s.rope, &c.rope_table(pos, n));

        for (l, lw) in w.layers.iter().enumerate() {
            // attention rmsnorm
            b.rms_norm(&s.x, 0, n, &lw.attn_norm, eps, &mut s.xb);
            // qkv matmuls: x (n, dim) @ Wqᵀ -> q (n, q_dim), etc.
            b.matmul(&s.xb, n, &lw.wq, &mut s.q);
            b.matmul(&s.xb, n, &lw.wk, &mut s.k);
            b.matmul(&s.xb, n, &lw.wv, &mut s.v);
            // RoPE: rotate q and k by position
            b.rope(&mut s.q, n, c.n_heads, c.head_dim, &s.rope, self.rope_style);
            b.rope(&mut s.k, n, c.n_kv_heads, c.head_dim, &s.rope, self.rope_style);
            // save key and value at positions pos..pos+n to the kv cache
            let (kc, vc) = &mut s.kv[l];
            b.store_kv(&s.k, &s.v, 0, n, pos, kc, vc);
            // causal multi-head attention over the cache (GQA: heads share kv heads)
            b.attention(&s.q, kc, vc, 0, n, pos, shape, &mut s.att);
            // output projection, then residual connection
            b.matmul(&s.att, n, &lw.wo, &mut s.xb2);
            b.add(&mut s.x, &s.xb2, n * c.dim);
            // ffn rmsnorm
            b.rms_norm(&s.x, 0, n, &lw.ffn_norm, eps, &mut s.xb);
            // SwiGLU: w2(silu(w1(x)) * w3(x))
            b.matmul(&s.xb, n, &lw.w1, &mut s.hb);
            b.matmul(&s.xb, n, &lw.w3, &mut s.hb2);
            b.silu_mul(&mut s.hb, &s.hb2, n * c.hidden_dim);
            b.matmul(&s.hb, n, &lw.w2, &mut s.xb2);
            // residual connection
            b.add(&mut s.x, &s.xb2, n * c.dim);
        }

        if rows_out > 0 {
            // final rmsnorm of the last rows_out tokens, then the classifier into logits
            b.rms_norm(&s.x, n - rows_out, rows_out, &w.norm, eps, &mut s.xb);
            b.matmul(&s.xb, rows_out, &w.output, &mut s.logits);
        }
    }
}

/// One session's scratch buffers and KV cache.
pub struct State<B: Backend> {
    x: B::Act,      // (max_batch, dim) residual stream
    xb: B::Act,     // (max_batch, dim) normed input of a sublayer
    xb2: B::Act,    // (max_batch, dim) sublayer output
    q: B::Act,      // (max_batch, n_heads * head_dim)
    k: B::Act,      // (max_batch, n_kv_heads * head_dim)
    v: B::Act,      // (max_batch, n_kv_heads * head_dim)
    att: B::Act,    // (max_batch, n_heads * head_dim) attention output
    hb: B::Act,     // (max_batch, hidden_dim)
    hb2: B::Act,    // (max_batch, hidden_dim)
    rope: B::Act,   // (max_batch, head_dim) cos, sin pairs
    pub logits: B::Act, // (logit_rows, vocab)
    kv: Vec<(B::Kv, B::Kv)>, // per layer: (max_seq, n_kv_heads * head_dim) keys, values
    pub ctx_len: usize,
    pub max_batch: usize,
    pub logit_rows: usize,
}
