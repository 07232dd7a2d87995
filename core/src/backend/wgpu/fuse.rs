//! Fusion of a decode step's ops into matvec.wgsl's fused products.
//!
//! The backend defers the ops that can fuse (norms, one-token products, RoPE, the KV store,
//! adds, SwiGLU) and lowers them when an op that cannot (attention, an upload, a readback)
//! comes. `fuse` first merges neighbours that the forward pass emits for one token:
//! - the RMSNorm into the first product that reads it (the norm's output is still written);
//! - the residual add into the output and down projections;
//! - SwiGLU into the up projection, right after the gate's;
//! - q's RoPE into q's product; k's RoPE and the KV store into k's and v's.
//!
//! A decode layer then takes eight dispatches instead of sixteen (seven products and the
//! attention, plus its combine at long contexts); ten with `Fusing::Epilogues`, which
//! leaves the norms apart. Every rule checks the buffers, so a fused
//! product writes exactly what the ops it replaces would, in the same arithmetic: the
//! results are the unfused ones bit for bit (tests.rs checks that on a device).

use super::WgpuMatrix;
use super::kernels::Fusion;
use crate::backend::KvDtype;
use crate::weights::RopeStyle;

type Buf = wgpu::Buffer;

/// Which of a decode step's ops fuse into its products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusing {
    /// Every op dispatched on its own: sixteen dispatches per layer.
    Off,
    /// What follows a product (RoPE, the KV store, adds, SwiGLU) fused into it; each norm
    /// still its own dispatch: ten per layer. The norm folded into a product is found again
    /// by every workgroup of it.
    Epilogues,
    /// The norms too: eight per layer.
    All,
}

/// matvec.wgsl's rows per workgroup: a half-style RoPE needs a head's rows in whole groups.
const ROWS: usize = 8;

/// An op whose dispatch waits to see its neighbours.
pub(super) enum Op {
    Norm {
        x: Buf,
        cols: usize,
        first: usize,
        n: usize,
        w: Buf,
        eps: f32,
        out: Buf,
    },
    Matvec(Matvec),
    Rope {
        x: Buf,
        x_cols: usize,
        n: usize,
        heads: usize,
        hd: usize,
        table: Buf,
        style: RopeStyle,
    },
    StoreKv {
        k: Buf,
        v: Buf,
        first: usize,
        n: usize,
        pos: usize,
        kv_dim: usize,
        kc: Buf,
        vc: Buf,
        dtype: KvDtype,
    },
    Add {
        x: Buf,
        y: Buf,
        len: usize,
    },
    SiluMul {
        gate: Buf,
        up: Buf,
        len: usize,
    },
}

/// A one-token product, out[0, r] = W[r] · x[x_row], and what is fused into it; or, with
/// `tokens`, rows x_row.. of a batch (at most 8), each summed as a lone token is, into the
/// same rows of out, with nothing fused.
pub(super) struct Matvec {
    pub m: WgpuMatrix,
    pub tokens: Option<usize>,
    /// The input; with `norm`, the norm's input, whose row is normed first.
    pub x: Buf,
    pub x_cols: usize,
    pub x_row: usize,
    pub out: Buf,
    pub out_cols: usize,
    pub norm: Option<NormIn>,
    pub rope: Option<RopeOut>,
    /// The output row's cache, position and dtype.
    pub kv: Option<(Buf, usize, KvDtype)>,
    /// The residual stream the output is added to.
    pub add: Option<Buf>,
    /// The gate that becomes silu(gate) · out.
    pub silu: Option<Buf>,
}

/// The RMSNorm folded into a product: weight, eps, and where its output still goes.
pub(super) struct NormIn {
    pub w: Buf,
    pub eps: f32,
    pub out: Buf,
}

pub(super) struct RopeOut {
    pub table: Buf,
    pub hd: usize,
    pub style: RopeStyle,
}

impl Matvec {
    pub fn plain(m: WgpuMatrix, x: Buf, x_cols: usize, out: Buf, out_cols: usize) -> Matvec {
        Matvec {
            m,
            tokens: None,
            x,
            x_cols,
            x_row: 0,
            out,
            out_cols,
            norm: None,
            rope: None,
            kv: None,
            add: None,
            silu: None,
        }
    }

    pub fn fusion(&self) -> Fusion {
        Fusion {
            norm: self.norm.is_some(),
            rope: self.rope.as_ref().map(|r| r.style),
            kv: self.kv.as_ref().map(|k| k.2),
            add: self.add.is_some(),
            silu: self.silu.is_some(),
            multi: self.tokens.is_some(),
        }
    }

    /// One dispatch over the whole matrix (fused kernels need every row in one binding).
    fn whole(&self) -> bool {
        self.m.0.chunks.len() == 1 && self.m.0.perm.is_none() && self.tokens.is_none()
    }

    fn no_epilogue(&self) -> bool {
        self.rope.is_none() && self.kv.is_none() && self.add.is_none() && self.silu.is_none()
    }

    /// The buffers the product reads as its input.
    fn reads(&self, b: &Buf) -> bool {
        *b == self.x || self.norm.as_ref().is_some_and(|n| n.out == *b)
    }

    /// Can an elementwise op over `len` elements of this product's output `of` and of
    /// `other` (the residual, or the gate) join its epilogue?
    fn can_end_with(&self, of: &Buf, other: &Buf, len: usize) -> bool {
        self.out == *of
            && len == self.m.0.rows()
            && !self.reads(other)
            && other != of
            && self.whole()
            && self.no_epilogue()
    }

    /// Can the rows of this product (`heads` heads of `hd`) take a RoPE in its epilogue?
    fn rope_fits(&self, heads: usize, hd: usize, style: RopeStyle) -> bool {
        let rows_fit = match style {
            RopeStyle::Half => hd.is_multiple_of(ROWS),
            RopeStyle::Interleaved => hd.is_multiple_of(2),
        };
        self.whole() && self.no_epilogue() && self.m.0.rows() == heads * hd && rows_fit
    }
}

/// Merge neighbours (see the module docs). Each rule rewrites the tail of `out` only when
/// the fused product writes exactly what the ops it replaces would.
pub(super) fn fuse(ops: Vec<Op>, norms: bool) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        let op = match op {
            Op::Matvec(mut mv) => {
                if let Some(Op::Norm {
                    x,
                    cols,
                    first,
                    n: 1,
                    out: no,
                    ..
                }) = out.last()
                    && norms
                    && *no == mv.x
                    && *x != mv.out
                    && *cols == mv.m.0.cols
                    && cols.is_multiple_of(4)
                    && mv.whole()
                    && mv.norm.is_none()
                {
                    let (x, first) = (x.clone(), *first);
                    let Some(Op::Norm {
                        cols, w, eps, out, ..
                    }) = out.pop()
                    else {
                        unreachable!()
                    };
                    mv.norm = Some(NormIn { w, eps, out });
                    (mv.x, mv.x_cols, mv.x_row) = (x, cols, first);
                }
                Op::Matvec(mv)
            }
            Op::Add { x, y, len } => match out.last_mut() {
                Some(Op::Matvec(mv)) if mv.can_end_with(&y, &x, len) => {
                    mv.add = Some(x);
                    continue;
                }
                _ => Op::Add { x, y, len },
            },
            Op::SiluMul { gate, up, len } => match out.last_mut() {
                Some(Op::Matvec(mv)) if mv.can_end_with(&up, &gate, len) => {
                    mv.silu = Some(gate);
                    continue;
                }
                _ => Op::SiluMul { gate, up, len },
            },
            store @ Op::StoreKv { .. } => {
                if rope_store_fits(&out, &store) {
                    let Op::StoreKv {
                        pos, kc, vc, dtype, ..
                    } = store
                    else {
                        unreachable!()
                    };
                    let l = out.len();
                    let Some(Op::Rope {
                        table, hd, style, ..
                    }) = out.pop()
                    else {
                        unreachable!()
                    };
                    out.pop(); // q's rope: the same table, head_dim and style
                    let rope = || RopeOut {
                        table: table.clone(),
                        hd,
                        style,
                    };
                    let [q, k, v] = &mut out[l - 5..l - 2] else {
                        unreachable!()
                    };
                    let (Op::Matvec(q), Op::Matvec(k), Op::Matvec(v)) = (q, k, v) else {
                        unreachable!()
                    };
                    q.rope = Some(rope());
                    k.rope = Some(rope());
                    k.kv = Some((kc, pos, dtype));
                    v.kv = Some((vc, pos, dtype));
                    continue;
                }
                store
            }
            other => other,
        };
        out.push(op);
    }
    out
}

/// Does `out` end with q's, k's and v's products and the RoPEs of q and k, in the shapes
/// and on the buffers that `store` (a one-token KV store) continues?
fn rope_store_fits(out: &[Op], store: &Op) -> bool {
    let Op::StoreKv {
        k,
        v,
        first: 0,
        n: 1,
        kv_dim,
        ..
    } = store
    else {
        return false;
    };
    let Some([q, k_op, v_op, rope_q, rope_k]) = out.last_chunk::<5>() else {
        return false;
    };
    let (
        Op::Matvec(mq),
        Op::Matvec(mk),
        Op::Matvec(mv),
        Op::Rope {
            x: rq,
            n: 1,
            heads: hq,
            hd,
            table,
            style,
            ..
        },
        Op::Rope {
            x: rk,
            n: 1,
            heads: hk,
            hd: hd_k,
            table: table_k,
            style: style_k,
            ..
        },
    ) = (q, k_op, v_op, rope_q, rope_k)
    else {
        return false;
    };
    let outs = [&mq.out, &mk.out, &mv.out];
    *rq == mq.out
        && *rk == mk.out
        && mk.out == *k
        && mv.out == *v
        && hd == hd_k
        && table == table_k
        && style == style_k
        && mk.m.0.rows() == *kv_dim
        && mv.m.0.rows() == *kv_dim
        && mq.rope_fits(*hq, *hd, *style)
        && mk.rope_fits(*hk, *hd, *style)
        && mv.whole()
        && mv.no_epilogue()
        && mv.m.0.rows().is_multiple_of(2)
        && outs[0] != outs[1]
        && outs[0] != outs[2]
        && outs[1] != outs[2]
        && outs.iter().all(|o| !mk.reads(o) && !mv.reads(o))
}
