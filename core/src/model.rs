//! The Llama forward pass, written once for every backend.
//!
//! State is split by lifetime, as in llama2.c: `Config` (hyperparameters), `Weights`
//! (read-only, shared by every session) and `State` (scratch buffers plus the KV cache,
//! one per session).

use crate::backend::{AttnShape, Backend, KvDtype, SeqKv};
use crate::runner::{Locked, Runner};
use crate::weights::builder::{LoadProgress, ModelBuilder, WeightSource};
use crate::weights::{RopeStyle, TensorId};
use crate::{Config, Error, Result};
use std::future::Future;
use std::pin::Pin;
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
    /// How new sessions' KV caches store keys and values (default: the backend's auto).
    pub kv_dtype: KvDtype,
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
            progress(LoadProgress {
                tensor: &id.gguf_name(),
                done_bytes: done,
                total_bytes,
            });
        }
        b.finish()
    }

    /// This model behind the backend-erased `Runner` the chat layer uses, with the lock
    /// that keeps two sessions' work from interleaving on its device.
    pub fn into_runner(self) -> Arc<dyn Runner> {
        Arc::new(Locked::new(self))
    }

    /// A fresh session: scratch for up to `max_batch` tokens per forward, a KV cache of
    /// `ctx_len` positions (none for a batch's scratch, whose sequences bring their own),
    /// and logits for up to `logit_rows` positions per forward.
    pub fn new_state(
        &self,
        ctx_len: usize,
        max_batch: usize,
        logit_rows: usize,
    ) -> Result<State<B>> {
        let mut states = self.new_states(1, ctx_len, max_batch, logit_rows)?;
        Ok(states.pop().expect("one state was made"))
    }

    /// `count` sessions as `new_state` makes them, whose KV caches the backend places side
    /// by side where that lets one dispatch serve all of them in a batch (`alloc_kv_slots`).
    pub fn new_states(
        &self,
        count: usize,
        ctx_len: usize,
        max_batch: usize,
        logit_rows: usize,
    ) -> Result<Vec<State<B>>> {
        let c = &self.config;
        let b = &self.backend;
        // per layer, one cache of every session
        let mut per_layer = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            if ctx_len == 0 {
                break;
            }
            let slots = |what: &str| {
                b.alloc_kv_slots(
                    &format!("{what} cache {l}"),
                    count,
                    ctx_len,
                    c.kv_dim(),
                    self.kv_dtype,
                )
            };
            let (ks, vs) = (slots("k")?, slots("v")?);
            per_layer.push(ks.into_iter().zip(vs));
        }
        (0..count)
            .map(|_| {
                let layers = per_layer
                    .iter_mut()
                    .map(|l| l.next().expect("count caches per layer"))
                    .collect();
                Ok(State {
                    scratch: self.new_scratch(max_batch, logit_rows)?,
                    kv: Kv { layers, ctx_len },
                })
            })
            .collect()
    }

    fn new_scratch(&self, max_batch: usize, logit_rows: usize) -> Result<Scratch<B>> {
        let c = &self.config;
        let b = &self.backend;
        let (nb, lr) = (max_batch.max(1), logit_rows.clamp(1, max_batch.max(1)));
        Ok(Scratch {
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
            max_batch: nb,
            logit_rows: lr,
        })
    }

    /// Run `tokens` at positions `pos..`, leaving logits of the last `rows_out` tokens in
    /// `state.logits` (at most `state.logit_rows`). Prompts longer than `max_batch` run in
    /// chunks. The KV cache keeps every position for later calls.
    pub fn forward(
        &self,
        s: &mut State<B>,
        tokens: &[u32],
        pos: usize,
        rows_out: usize,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::arg("tokens", "nothing to run"));
        }
        let rows_out = rows_out.clamp(1, s.scratch.logit_rows.min(tokens.len()));
        let mut start = 0;
        while start < tokens.len() {
            let n = chunk_end(start, tokens.len(), s.scratch.max_batch) - start;
            let last_chunk = start + n == tokens.len();
            let mut one = [Rows {
                kv: &mut s.kv,
                tokens: &tokens[start..start + n],
                pos: pos + start,
            }];
            self.forward_batch(
                &mut s.scratch,
                &mut one,
                if last_chunk { rows_out.min(n) } else { 0 },
            )?;
            start += n;
        }
        Ok(())
    }

    /// One forward of several sequences together: each sequence's tokens are rows of one
    /// batch (in the order given), so every weight matrix is read once for all of them,
    /// while each sequence's keys and values go to, and its attention reads, its own cache.
    /// Logits of the batch's last `rows_out` rows land in `scratch.logits`; a scheduler puts
    /// the sequences that need logits (one row each when decoding) last.
    pub fn forward_batch(
        &self,
        s: &mut Scratch<B>,
        seqs: &mut [Rows<'_, B>],
        rows_out: usize,
    ) -> Result<()> {
        let c = &self.config;
        let total: usize = seqs.iter().map(|r| r.tokens.len()).sum();
        if total == 0 {
            return Err(Error::arg("tokens", "nothing to run"));
        }
        if total > s.max_batch {
            return Err(Error::arg(
                "tokens",
                format!("{total} rows do not fit a batch of {}", s.max_batch),
            ));
        }
        if rows_out > s.logit_rows.min(total) {
            return Err(Error::arg(
                "rows_out",
                format!(
                    "{rows_out} logit rows; the batch holds {}",
                    s.logit_rows.min(total)
                ),
            ));
        }
        for r in seqs.iter() {
            if r.pos + r.tokens.len() > r.kv.ctx_len {
                return Err(Error::ContextLength {
                    prompt: r.pos + r.tokens.len(),
                    requested: 0,
                    context: r.kv.ctx_len,
                });
            }
            if r.kv.layers.len() != c.n_layers {
                return Err(Error::arg(
                    "session",
                    "a batch's scratch holds no KV cache to run",
                ));
            }
            if let Some(bad) = r.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(Error::arg(
                    "ids",
                    format!(
                        "token id {bad} is out of range for vocab size {}",
                        c.vocab_size
                    ),
                ));
            }
        }
        self.forward_rows(s, seqs, total, rows_out, false);
        Ok(())
    }

    /// Greedy decode ahead of the host (`Backend::argmax_ahead`): the next token is the
    /// argmax of the last forward's logits row 0, and its forward at `pos` is recorded before
    /// the future gives the token back. `None` where the backend cannot, or `pos` is past
    /// the cache (the caller then reads the token and runs it as usual). If the caller does
    /// not keep the token (an end of answer), position `pos` holds keys and values its
    /// cache's tokens do not name, which the next prompt writes over.
    pub fn forward_ahead<'a>(
        &'a self,
        s: &mut State<B>,
        pos: usize,
    ) -> Option<Pin<Box<dyn Future<Output = Result<u32>> + 'a>>> {
        if pos >= s.kv.ctx_len || s.kv.layers.len() != self.config.n_layers {
            return None;
        }
        let sc = &mut s.scratch;
        let read = (self.backend).argmax_ahead(&sc.logits, 0, &self.weights.embed, &mut sc.x)?;
        let mut one = [Rows {
            kv: &mut s.kv,
            // the id is on the device, embedded already; this only counts the row
            tokens: &[0],
            pos,
        }];
        self.forward_rows(sc, &mut one, 1, 1, true);
        Some(read)
    }

    /// The layers and head over `n` rows; `embedded`: `s.x` holds the rows' embeddings
    /// already (`forward_ahead`), else they are looked up from the rows' tokens.
    fn forward_rows(
        &self,
        s: &mut Scratch<B>,
        seqs: &mut [Rows<'_, B>],
        n: usize,
        rows_out: usize,
        embedded: bool,
    ) {
        let (b, c, w) = (&self.backend, &self.config, &self.weights);
        let eps = c.norm_eps as f32;
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };

        // token embeddings, and the rotary angles of each row's position
        let ids: Vec<u32> = seqs.iter().flat_map(|r| r.tokens.iter().copied()).collect();
        let angles: Vec<f32> = seqs
            .iter()
            .flat_map(|r| c.rope_table(r.pos, r.tokens.len()))
            .collect();
        // the decode rows (a sequence's one token), which a scheduler puts last: a backend
        // whose sums depend on the batch sums them as one token alone (`matmul_batch`)
        let lone = seqs
            .iter()
            .rev()
            .take_while(|r| r.tokens.len() == 1)
            .count();
        if !embedded {
            b.embed(&w.embed, &ids, &mut s.x);
        }
        b.write(&mut s.rope, &angles);

        for (l, lw) in w.layers.iter().enumerate() {
            // attention rmsnorm
            b.rms_norm(&s.x, 0, n, &lw.attn_norm, eps, &mut s.xb);
            // qkv matmuls: x (n, dim) @ Wqᵀ -> q (n, q_dim), etc.
            b.matmul_batch(&s.xb, n, lone, &lw.wq, &mut s.q);
            b.matmul_batch(&s.xb, n, lone, &lw.wk, &mut s.k);
            b.matmul_batch(&s.xb, n, lone, &lw.wv, &mut s.v);
            // RoPE: rotate q and k by position
            b.rope(&mut s.q, n, c.n_heads, c.head_dim, &s.rope, self.rope_style);
            b.rope(
                &mut s.k,
                n,
                c.n_kv_heads,
                c.head_dim,
                &s.rope,
                self.rope_style,
            );
            // per sequence: save its keys and values to its kv cache, then causal
            // multi-head attention over that cache (GQA: heads share kv heads)
            let mut first = 0;
            let mut attending: Vec<SeqKv<B>> = seqs
                .iter_mut()
                .map(|r| {
                    let (k, v) = &mut r.kv.layers[l];
                    let seq = SeqKv {
                        k,
                        v,
                        first,
                        n: r.tokens.len(),
                        pos: r.pos,
                    };
                    first += seq.n;
                    seq
                })
                .collect();
            b.attend(&s.k, &s.v, &s.q, &mut attending, shape, &mut s.att);
            // output projection, then residual connection
            b.matmul_batch(&s.att, n, lone, &lw.wo, &mut s.xb2);
            b.add(&mut s.x, &s.xb2, n * c.dim);
            // ffn rmsnorm
            b.rms_norm(&s.x, 0, n, &lw.ffn_norm, eps, &mut s.xb);
            // SwiGLU: w2(silu(w1(x)) * w3(x))
            b.matmul_batch(&s.xb, n, lone, &lw.w1, &mut s.hb);
            b.matmul_batch(&s.xb, n, lone, &lw.w3, &mut s.hb2);
            b.silu_mul(&mut s.hb, &s.hb2, n * c.hidden_dim);
            b.matmul_batch(&s.hb, n, lone, &lw.w2, &mut s.xb2);
            // residual connection
            b.add(&mut s.x, &s.xb2, n * c.dim);
        }

        if rows_out > 0 {
            // final rmsnorm of the last rows_out rows, then the classifier into logits
            b.rms_norm(&s.x, n - rows_out, rows_out, &w.norm, eps, &mut s.xb);
            let lone_out = lone.min(rows_out);
            b.matmul_batch(&s.xb, rows_out, lone_out, &w.output, &mut s.logits);
        }
    }
}

/// One session: scratch buffers and its KV cache.
pub struct State<B: Backend> {
    pub scratch: Scratch<B>,
    pub kv: Kv<B>,
}

/// One sequence's rows of a batched forward: its tokens at positions `pos..`, and its cache.
pub struct Rows<'a, B: Backend> {
    pub kv: &'a mut Kv<B>,
    pub tokens: &'a [u32],
    pub pos: usize,
}

/// A sequence's keys and values, per layer.
pub struct Kv<B: Backend> {
    layers: Vec<(B::Kv, B::Kv)>, // per layer: (max_seq, n_kv_heads * head_dim) keys, values
    pub ctx_len: usize,
}

impl<B: Backend> Kv<B> {
    /// Take positions `positions` of every layer from `src` (a prefix computed by another
    /// sequence with the same tokens there).
    pub fn copy_from(&mut self, backend: &B, src: &Kv<B>, positions: std::ops::Range<usize>) {
        assert!(
            positions.end <= self.ctx_len.min(src.ctx_len),
            "copy past a KV cache"
        );
        for ((k, v), (sk, sv)) in self.layers.iter_mut().zip(&src.layers) {
            backend.copy_kv(sk, k, positions.clone());
            backend.copy_kv(sv, v, positions.clone());
        }
    }
}

/// The activations of one forward of up to `max_batch` rows.
pub struct Scratch<B: Backend> {
    x: B::Act,          // (max_batch, dim) residual stream
    xb: B::Act,         // (max_batch, dim) normed input of a sublayer
    xb2: B::Act,        // (max_batch, dim) sublayer output
    q: B::Act,          // (max_batch, n_heads * head_dim)
    k: B::Act,          // (max_batch, n_kv_heads * head_dim)
    v: B::Act,          // (max_batch, n_kv_heads * head_dim)
    att: B::Act,        // (max_batch, n_heads * head_dim) attention output
    hb: B::Act,         // (max_batch, hidden_dim)
    hb2: B::Act,        // (max_batch, hidden_dim)
    rope: B::Act,       // (max_batch, head_dim) cos, sin pairs
    pub logits: B::Act, // (logit_rows, vocab)
    pub max_batch: usize,
    pub logit_rows: usize,
}

/// The end of the prompt chunk from `start` of at most `size` tokens, of a prompt of `len`:
/// never one that leaves a single token for a chunk of its own (for `size` ≥ 3). A backend
/// whose sums depend on the batch (wgpu) sums a one-token chunk as a decode row, in another
/// order than the prompt rows around it, and the same prompt chunked from another start
/// (after a reused prefix) would not give that token the same bits.
pub(crate) fn chunk_end(start: usize, len: usize, size: usize) -> usize {
    let end = (start + size).min(len);
    if len - end == 1 && end - start >= 3 {
        end - 1
    } else {
        end
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_end;

    #[test]
    fn no_prompt_chunk_is_one_token_after_another() {
        let chunks = |len: usize, size: usize| {
            let (mut start, mut out) = (0, vec![]);
            while start < len {
                let end = chunk_end(start, len, size);
                out.push(end - start);
                start = end;
            }
            out
        };
        assert_eq!(chunks(513, 512), [511, 2]);
        assert_eq!(chunks(512, 512), [512]);
        assert_eq!(chunks(1025, 512), [512, 511, 2]);
        assert_eq!(chunks(7, 3), [3, 2, 2]);
        assert_eq!(chunks(1, 512), [1]);
        assert_eq!(chunks(3, 2), [2, 1]); // too small a chunk to avoid it
        for len in 2..200 {
            for size in 3..20 {
                let c = chunks(len, size);
                assert!(
                    c.iter().all(|&n| (2..=size).contains(&n)),
                    "{len} {size}: {c:?}"
                );
            }
        }
    }
}
