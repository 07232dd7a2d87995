//! Lowering: each recorded op (after fusion) to the kernel launches that compute it, with
//! the kernel handles it picks from and the Q8-activation plumbing of one-token products
//! (which op writes the Q8 activations the next product reads).

use super::nvrtc::FORMATS;
use super::record::{CudaMatrix, Device, Func, Launch, MatrixInner, Op, Recorder, driver_error};
use crate::backend::KvDtype;
use crate::weights::{RopeStyle, WeightFormat};
use crate::{Error, Result};
use cudarc::driver::CudaModule;
use std::sync::Arc;

/// Every kernel of kernels.cu, by op (and by weight format where it reads a matrix, in
/// `FORMATS` order).
pub(super) struct Kernels {
    _module: Arc<CudaModule>,
    mv: [Func; 9],
    glu: [Func; 9],
    mmtc: [Func; 9],
    mm: [Func; 9],
    embed: [Func; 9],
    rms_norm: Func,
    add_rms_norm: Func,
    rope: Func,
    /// Per KV cache dtype: [f32, f16].
    store_kv: [Func; 2],
    rope_store: [Func; 2],
    attention: [Func; 2],
    silu_mul: Func,
    add: Func,
    gather: Func,
    argmax: Func,
    quantize_q8: Func,
}

impl Kernels {
    pub(super) fn load(module: Arc<CudaModule>) -> Result<Kernels> {
        let f = |name: &str| -> Result<Func> {
            let func = module
                .load_function(name)
                .map_err(|e| driver_error(&format!("kernel {name}"), e))?;
            Ok(Func(func.cu_function()))
        };
        let per = |prefix: &str| -> Result<[Func; 9]> {
            let v = FORMATS
                .iter()
                .map(|(_, n)| f(&format!("{prefix}_{n}")))
                .collect::<Result<Vec<_>>>()?;
            Ok(v.try_into().unwrap_or_else(|_| unreachable!()))
        };
        Ok(Kernels {
            mv: per("mv")?,
            glu: per("glu")?,
            mmtc: per("mmtc")?,
            mm: per("mm")?,
            embed: per("embed")?,
            rms_norm: f("rms_norm")?,
            add_rms_norm: f("add_rms_norm")?,
            rope: f("rope")?,
            store_kv: [f("store_kv")?, f("store_kv_f16")?],
            rope_store: [f("rope_store")?, f("rope_store_f16")?],
            attention: [f("attention")?, f("attention_f16")?],
            silu_mul: f("silu_mul")?,
            add: f("add")?,
            gather: f("gather")?,
            argmax: f("argmax")?,
            quantize_q8: f("quantize_q8")?,
            _module: module,
        })
    }
}

/// What lowering reads: the device's kernels and facts, and the state the ops of one flush
/// share.
pub(super) struct LowerCx<'a> {
    pub(super) k: &'a Kernels,
    /// For the scratch buffers some launches need (kept in the recorder).
    pub(super) dev: &'a Device,
    /// Multiprocessors: how far decode attention and small products split.
    pub(super) sms: usize,
    /// Prefill products on tensor cores.
    pub(super) mma: bool,
    /// Where argmax writes its result.
    pub(super) argmax_out: u64,
    /// The device copy of the upload arena.
    pub(super) arena: u64,
    /// The two slots of the Q8-activation scratch (0 when no op of the flush needs it).
    pub(super) q8: [u64; 2],
    /// Set by an op (a norm, attention, glu) that also wrote the Q8 activations of its output
    /// (x, where) for the op after it.
    pub(super) q8_of: Option<(u64, u64)>,
}

impl LowerCx<'_> {
    /// Append the launches of one op (`next` is the op after it). The argument lists mirror
    /// the kernel signatures in kernels.cu, in order.
    pub(super) fn lower(
        &mut self,
        op: &Op,
        next: Option<&Op>,
        rec: &mut Recorder,
        out: &mut Vec<Launch>,
    ) -> Result<()> {
        let k = self.k;
        let arena = self.arena;
        // (x, where) of Q8 activations the op before wrote for this op
        let q8_ready = self.q8_of.take();
        let kern = |f: Func, grid: [u32; 3], block: u32, args: Vec<u64>| Launch::Kernel {
            f,
            grid,
            block,
            args,
        };
        match op {
            Op::Write { bytes: 0, .. } => {}
            Op::Write {
                dst,
                arena: off,
                bytes,
            } => {
                out.push(Launch::Copy {
                    dst: dst.ptr,
                    src: arena + *off as u64,
                    bytes: *bytes,
                });
            }
            Op::Copy {
                src,
                dst,
                offset,
                bytes,
            } => {
                out.push(Launch::Copy {
                    dst: dst.ptr + *offset as u64,
                    src: src.ptr + *offset as u64,
                    bytes: *bytes,
                });
            }
            Op::Embed {
                m,
                ids,
                n,
                out: o,
                out_cols,
            } => {
                let m = &m.0;
                let perm = m.perm.as_ref().map_or(0, |p| p.ptr);
                // embed_F(w, s, perm, ids, out, cols, wrow, srow, out_stride)
                let grid = [m.cols.div_ceil(16).div_ceil(128) as u32, *n as u32, 1];
                let args = vec![
                    m.payload.ptr,
                    m.s_ptr(),
                    perm,
                    arena + *ids as u64,
                    o.ptr,
                    m.cols as u64,
                    m.lay.payload_row as u64,
                    m.lay.scales_row as u64,
                    *out_cols as u64,
                ];
                out.push(kern(k.embed[m.fi], grid, 128, args));
            }
            Op::Norm {
                x,
                cols,
                first,
                n,
                w,
                eps,
                out: o,
                add,
            } => {
                // a one-row norm read next by a quantized one-token product also writes the
                // product's Q8 activations (saves a quantize_q8 launch)
                let q8 = if *n == 1 {
                    self.feed_next(next, o.ptr, *cols, 0)
                } else {
                    0
                };
                match add {
                    // add_rms_norm(x, y, w, out, cols, eps, q8)
                    Some(y) => out.push(kern(
                        k.add_rms_norm,
                        [*n as u32, 1, 1],
                        256,
                        vec![x.ptr, y.ptr, w.ptr, o.ptr, *cols as u64, arg_f(*eps), q8],
                    )),
                    // rms_norm(x, w, out, cols, first, eps, q8)
                    None => out.push(kern(
                        k.rms_norm,
                        [*n as u32, 1, 1],
                        256,
                        vec![
                            x.ptr,
                            w.ptr,
                            o.ptr,
                            *cols as u64,
                            *first as u64,
                            arg_f(*eps),
                            q8,
                        ],
                    )),
                }
            }
            Op::Matmul {
                x,
                x_cols,
                n,
                m,
                out: o,
                out_cols,
            } => {
                let mi = &m.0;
                if *n == 1 && q8_format(mi.format) {
                    // quantize_q8 gathers x[perm] itself
                    let xq = self.q8_input(
                        x.ptr,
                        mi.perm.as_ref().map_or(0, |p| p.ptr),
                        mi.cols,
                        q8_ready,
                        out,
                    );
                    out.push(self.matvec_launch(xq, &[(m, o.ptr)]));
                    return Ok(());
                }
                let (xp, xs) = match &mi.perm {
                    None => (x.ptr, *x_cols),
                    Some(perm) => {
                        let mut slot = rec.gather.take();
                        let p = self.dev.scratch(
                            &mut slot,
                            &mut rec.retired,
                            "gather scratch",
                            n * mi.cols * 4,
                            false,
                        );
                        rec.gather = slot;
                        let p = p?;
                        // gather(perm, x, out, n, cols, x_stride)
                        let args = vec![
                            perm.ptr,
                            x.ptr,
                            p,
                            *n as u64,
                            mi.cols as u64,
                            *x_cols as u64,
                        ];
                        out.push(kern(k.gather, grid1(n * mi.cols, 256), 256, args));
                        (p, mi.cols)
                    }
                };
                if *n == 1 {
                    out.push(self.matvec_launch(xp, &[(m, o.ptr)]));
                } else {
                    // mm_F / mmtc_F(w, s, x, out, n, rows, cols, x_stride, out_stride, wrow, srow)
                    let args = vec![
                        mi.payload.ptr,
                        mi.s_ptr(),
                        xp,
                        o.ptr,
                        *n as u64,
                        mi.rows as u64,
                        mi.cols as u64,
                        xs as u64,
                        *out_cols as u64,
                        mi.lay.payload_row as u64,
                        mi.lay.scales_row as u64,
                    ];
                    let grid = [n.div_ceil(64) as u32, mi.rows.div_ceil(64) as u32, 1];
                    if self.mma && mi.format != WeightFormat::F32 {
                        out.push(kern(k.mmtc[mi.fi], grid, 128, args));
                    } else {
                        out.push(kern(k.mm[mi.fi], grid, 256, args));
                    }
                }
            }
            Op::Matvec { x, mats } => {
                let mats: Vec<(&CudaMatrix, u64)> = mats.iter().map(|(m, o)| (m, o.ptr)).collect();
                let m0 = &mats[0].0.0;
                let xp = if q8_format(m0.format) {
                    self.q8_input(x.ptr, 0, m0.cols, q8_ready, out)
                } else {
                    x.ptr
                };
                out.push(self.matvec_launch(xp, &mats));
            }
            Op::Glu { x, gate, up } => {
                let (g, u) = (&gate.0.0, &up.0.0);
                let xp = if q8_format(g.format) {
                    self.q8_input(x.ptr, 0, g.cols, q8_ready, out)
                } else {
                    x.ptr
                };
                // gate's Q8 activations for the product after (down), in the slot glu does not read
                let (q8, cnt) = if g.rows % 32 == 0 {
                    let q8 = self.feed_next(
                        next,
                        gate.1.ptr,
                        g.rows,
                        if xp == self.q8[0] { 1 } else { 0 },
                    );
                    let cnt = if q8 != 0 {
                        let mut slot = rec.glu_counters.take();
                        let c = self.dev.scratch(
                            &mut slot,
                            &mut rec.retired,
                            "glu counters",
                            g.rows / 32 * 4,
                            true,
                        );
                        rec.glu_counters = slot;
                        c?
                    } else {
                        0
                    };
                    (q8, cnt)
                } else {
                    (0, 0)
                };
                // glu_F(wg, sg, wu, su, gate, up, rows, x, cols, wrow, srow, q8, cnt): a row (pair) per warp
                let args = vec![
                    g.payload.ptr,
                    g.s_ptr(),
                    u.payload.ptr,
                    u.s_ptr(),
                    gate.1.ptr,
                    up.1.ptr,
                    g.rows as u64,
                    xp,
                    g.cols as u64,
                    g.lay.payload_row as u64,
                    g.lay.scales_row as u64,
                    q8,
                    cnt,
                ];
                out.push(kern(k.glu[g.fi], grid1(g.rows, 8), 256, args));
            }
            Op::Rope {
                x,
                x_cols,
                n,
                heads,
                hd,
                table,
                style,
            } => {
                // rope(x, table, n, n_heads, hd, stride, interleaved)
                let inter = (*style == RopeStyle::Interleaved) as u64;
                let args = vec![
                    x.ptr,
                    table.ptr,
                    *n as u64,
                    *heads as u64,
                    *hd as u64,
                    *x_cols as u64,
                    inter,
                ];
                out.push(kern(k.rope, grid1(n * heads * (hd / 2), 256), 256, args));
            }
            Op::StoreKv {
                k: kk,
                v,
                first,
                n,
                pos,
                kv_dim,
                kc,
                vc,
                dtype,
            } => {
                // store_kv(k, v, kc, vc, pos, n, kv_dim), from row `first` of k and v
                let row = (first * kv_dim * 4) as u64;
                let args = vec![
                    kk.ptr + row,
                    v.ptr + row,
                    kc.ptr,
                    vc.ptr,
                    arena + *pos as u64,
                    *n as u64,
                    *kv_dim as u64,
                ];
                out.push(kern(
                    k.store_kv[by_dtype(*dtype)],
                    grid1(n * kv_dim, 256),
                    256,
                    args,
                ));
            }
            Op::RopeStore {
                q,
                q_cols,
                q_heads,
                kv,
                dtype,
                kv_heads,
                table,
                n,
                hd,
                style,
                pos,
            } => {
                let [kb, vb, kc, vc] = kv;
                let inter = (*style == RopeStyle::Interleaved) as u64;
                let threads = n * q_heads * (hd / 2) + n * kv_heads * (hd / 2) + n * kv_heads * hd;
                // rope_store(q, q_heads, q_stride, k, v, kv_heads, table, n, hd, interleaved, kc, vc, pos)
                let args = vec![
                    q.ptr,
                    *q_heads as u64,
                    *q_cols as u64,
                    kb.ptr,
                    vb.ptr,
                    *kv_heads as u64,
                    table.ptr,
                    *n as u64,
                    *hd as u64,
                    inter,
                    kc.ptr,
                    vc.ptr,
                    arena + *pos as u64,
                ];
                out.push(kern(
                    k.rope_store[by_dtype(*dtype)],
                    grid1(threads, 256),
                    256,
                    args,
                ));
            }
            Op::Attention {
                q,
                q_cols,
                kc,
                vc,
                dtype,
                max_seq,
                kv_dim,
                first,
                n,
                pos,
                shape,
                out: o,
                out_cols,
            } => {
                let (nh, hd) = (shape.n_heads, shape.head_dim);
                if hd > 256 || shape.n_kv_heads == 0 || nh % shape.n_kv_heads != 0 {
                    return Err(Error::Device(format!(
                        "cuda: attention with head_dim {hd} (at most 256) and {nh}/{} heads is not supported",
                        shape.n_kv_heads
                    )));
                }
                // a decode step spreads each head over several blocks; a fixed count per
                // cache size keeps the launch the same at every position
                let splits = if *n == 1 {
                    (2 * self.sms)
                        .div_ceil(nh)
                        .clamp(1, 32)
                        .min((max_seq / 64).max(1))
                } else {
                    1
                };
                let (part, counters) = if splits > 1 {
                    let (mut p, mut c) = (rec.part.take(), rec.counters.take());
                    let pp = self.dev.scratch(
                        &mut p,
                        &mut rec.retired,
                        "attention partials",
                        n * nh * splits * (hd + 2) * 4,
                        false,
                    );
                    let cc = self.dev.scratch(
                        &mut c,
                        &mut rec.retired,
                        "attention counters",
                        n * nh * 4,
                        true,
                    );
                    (rec.part, rec.counters) = (p, c);
                    (pp?, cc?)
                } else {
                    (0, 0)
                };
                let scale = 1.0 / (hd as f32).sqrt();
                // the output's Q8 activations for a quantized product right after (o)
                // (rows first.. of q and out: one sequence's of a batch)
                let (q_row, o_ptr) = (
                    q.ptr + (first * q_cols * 4) as u64,
                    o.ptr + (first * out_cols * 4) as u64,
                );
                let q8 = if *n == 1 && hd % 32 == 0 {
                    self.feed_next(next, o_ptr, nh * hd, 0)
                } else {
                    0
                };
                // attention(q, kc, vc, out, part, counters, pos, n_heads, n_kv_heads, hd, q_stride, kv_dim, out_stride, scale, splits, q8)
                let args = vec![
                    q_row,
                    kc.ptr,
                    vc.ptr,
                    o_ptr,
                    part,
                    counters,
                    arena + *pos as u64,
                    nh as u64,
                    shape.n_kv_heads as u64,
                    hd as u64,
                    *q_cols as u64,
                    *kv_dim as u64,
                    *out_cols as u64,
                    arg_f(scale),
                    splits as u64,
                    q8,
                ];
                out.push(kern(
                    k.attention[by_dtype(*dtype)],
                    [nh as u32, *n as u32, splits as u32],
                    128,
                    args,
                ));
            }
            Op::SiluMul { gate, up, len } => {
                out.push(kern(
                    k.silu_mul,
                    grid1(*len, 256),
                    256,
                    vec![gate.ptr, up.ptr, *len as u64],
                ));
            }
            Op::Add { x, y, len } => {
                out.push(kern(
                    k.add,
                    grid1(*len, 256),
                    256,
                    vec![x.ptr, y.ptr, *len as u64],
                ));
            }
            Op::Argmax { x, cols, row } => {
                // argmax(x, result, cols, row)
                out.push(kern(
                    k.argmax,
                    [1, 1, 1],
                    1024,
                    vec![x.ptr, self.argmax_out, *cols as u64, *row as u64],
                ));
            }
        }
        Ok(())
    }

    /// Where a quantized one-token product finds the Q8 activations of x (x[perm]): where
    /// the op before wrote them (`ready`), else in slot 0 after a quantize_q8(x, perm, q, cols).
    fn q8_input(
        &self,
        x: u64,
        perm: u64,
        cols: usize,
        ready: Option<(u64, u64)>,
        out: &mut Vec<Launch>,
    ) -> u64 {
        match ready {
            Some((rx, at)) if rx == x && perm == 0 => at,
            _ => {
                out.push(Launch::Kernel {
                    f: self.k.quantize_q8,
                    grid: grid1(cols, 256),
                    block: 256,
                    args: vec![x, perm, self.q8[0], cols as u64],
                });
                self.q8[0]
            }
        }
    }

    /// mv_F(w0, s0, o0, rows0, w1, s1, o1, rows1, w2, s2, o2, rows2, x, cols, wrow, srow, ks)
    /// over up to three matrices of one format and width; x is the Q8 activations for the
    /// quantized formats (two rows per `ks` warps), else f32 (one row per warp).
    fn matvec_launch(&self, x: u64, mats: &[(&CudaMatrix, u64)]) -> Launch {
        let m0 = &mats[0].0.0;
        let mut args = Vec::with_capacity(16);
        let mut rows = 0;
        for i in 0..3 {
            match mats.get(i) {
                Some((m, o)) => {
                    args.extend([m.0.payload.ptr, m.0.s_ptr(), *o, m.0.rows as u64]);
                    rows += m.0.rows;
                }
                None => args.extend([m0.payload.ptr, m0.s_ptr(), mats[0].1, 0]),
            }
        }
        let ks = if q8_format(m0.format) {
            mv_split(rows, m0.cols / q8_unit(m0.format), self.sms)
        } else {
            1
        };
        args.extend([
            x,
            m0.cols as u64,
            m0.lay.payload_row as u64,
            m0.lay.scales_row as u64,
            ks as u64,
        ]);
        let per_block = if q8_format(m0.format) { 16 / ks } else { 8 };
        Launch::Kernel {
            f: self.k.mv[m0.fi],
            grid: grid1(rows, per_block),
            block: 256,
            args,
        }
    }

    /// The Q8 slot an op writing `cols` values at `x` should also write as Q8 activations:
    /// `slot` when `next` is a quantized one-token product that reads exactly them (and
    /// records that for it), else 0 (none).
    fn feed_next(&mut self, next: Option<&Op>, x: u64, cols: usize, slot: usize) -> u64 {
        match next.and_then(q8_product) {
            Some((px, m)) if px == x && m.cols == cols && m.perm.is_none() && cols % 32 == 0 => {
                self.q8_of = Some((x, self.q8[slot]));
                self.q8[slot]
            }
            _ => 0,
        }
    }
}

fn arg_f(v: f32) -> u64 {
    v.to_bits() as u64
}

/// The index of a KV cache dtype in the per-dtype kernel pairs.
fn by_dtype(d: KvDtype) -> usize {
    match d {
        KvDtype::F32 => 0,
        KvDtype::F16 => 1,
    }
}

fn grid1(threads: usize, block: usize) -> [u32; 3] {
    [threads.div_ceil(block).max(1) as u32, 1, 1]
}

/// Whether one-token products of `f` read Q8 activations (every format but the float ones;
/// see kernels.cu).
pub(super) fn q8_format(f: WeightFormat) -> bool {
    !matches!(
        f,
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16
    )
}

/// Columns per lane unit of a quantized format's one-token product (`QK` in kernels.cu).
fn q8_unit(f: WeightFormat) -> usize {
    match f {
        WeightFormat::Q4K => 64,
        WeightFormat::Q6K => 128,
        _ => 32,
    }
}

/// Warps per row pair (1, 2 or 4) of a quantized one-token product of `rows` rows of `units`
/// units: split a row's units over more warps while the product has fewer than 24 warps
/// per multiprocessor (fewer loads in flight than the memory needs) and each warp keeps at
/// least one unit per lane.
fn mv_split(rows: usize, units: usize, sms: usize) -> usize {
    let mut ks = 1;
    while ks < 4 && rows.div_ceil(2) * ks < 24 * sms && units >= 64 * ks {
        ks *= 2;
    }
    ks
}

/// Bytes of the Q8 activations of `cols` values: an int8 each, and (d, s) per block of 32.
pub(super) fn q8_bytes(cols: usize) -> usize {
    cols + cols / 32 * 8
}

/// The input address and (first) matrix of an op that lowers to a product on Q8 activations.
pub(super) fn q8_product(op: &Op) -> Option<(u64, &MatrixInner)> {
    match op {
        Op::Matmul { x, n: 1, m, .. } if q8_format(m.0.format) => Some((x.ptr, &m.0)),
        Op::Matvec { x, mats } if q8_format(mats[0].0.0.format) => Some((x.ptr, &mats[0].0.0)),
        Op::Glu { x, gate, .. } if q8_format(gate.0.0.format) => Some((x.ptr, &gate.0.0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_matrices_split_rows_over_warps() {
        // Llama-2-7B Q4_0 on 132 multiprocessors: q/k/v fill the GPU, o and down take two
        // warps per row pair; Q6_K's 32 units of a 4096 row stay whole; tiny products split
        // as far as their units allow
        assert_eq!(mv_split(3 * 4096, 4096 / 32, 132), 1);
        assert_eq!(mv_split(4096, 4096 / 32, 132), 2);
        assert_eq!(mv_split(4096, 11008 / 32, 132), 2);
        assert_eq!(mv_split(4096, 4096 / 128, 132), 1);
        assert_eq!(mv_split(64, 4096 / 32, 132), 4);
        assert_eq!(mv_split(64, 8, 132), 1);
    }
}
