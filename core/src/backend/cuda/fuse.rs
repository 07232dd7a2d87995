//! Fusion: merging neighbouring recorded ops that the forward pass always emits into one
//! op that lowers to a single kernel (see the module docs in mod.rs). Runs on the ops of
//! a flush, before lowering.

use super::record::{BufRef, CudaMatrix, Op};
use std::sync::Arc;

/// A product that can join a fused one-token launch: one token, no column permutation.
fn fusable(op: &Op) -> Option<(&BufRef, &CudaMatrix, &BufRef)> {
    match op {
        Op::Matmul {
            x, n: 1, m, out, ..
        } if m.0.perm.is_none() => Some((x, m, out)),
        _ => None,
    }
}

fn same_kind(a: &CudaMatrix, b: &CudaMatrix) -> bool {
    a.0.format == b.0.format && a.0.cols == b.0.cols
}

/// Merge neighbouring ops into fused kernels (see the module docs). Each rule rewrites the
/// tail of `out` only when the fused kernel writes exactly what the ops it replaces would.
pub(super) fn fuse(ops: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        let op = match op {
            // residual add, then the RMSNorm of the same rows
            Op::Norm {
                x,
                cols,
                first: 0,
                n,
                w,
                eps,
                out: o,
                add: None,
            } => match out.last() {
                Some(Op::Add { x: ax, len, .. }) if Arc::ptr_eq(ax, &x) && *len == n * cols => {
                    let Some(Op::Add { y, .. }) = out.pop() else {
                        unreachable!()
                    };
                    Op::Norm {
                        x,
                        cols,
                        first: 0,
                        n,
                        w,
                        eps,
                        out: o,
                        add: Some(y),
                    }
                }
                _ => Op::Norm {
                    x,
                    cols,
                    first: 0,
                    n,
                    w,
                    eps,
                    out: o,
                    add: None,
                },
            },
            // one-token products sharing x: q, k, v (and gate, up)
            Op::Matmul {
                x,
                x_cols,
                n: 1,
                m,
                out: o,
                out_cols,
            } if m.0.perm.is_none() => {
                let joins = |mats: &[(CudaMatrix, BufRef)], px: &BufRef| {
                    Arc::ptr_eq(px, &x)
                        && mats.len() < 3
                        && same_kind(&mats[0].0, &m)
                        && mats.iter().all(|(_, po)| !Arc::ptr_eq(po, &o))
                };
                match out.last_mut() {
                    Some(Op::Matvec { x: px, mats }) if joins(mats, px) => {
                        mats.push((m, o));
                        continue;
                    }
                    Some(prev)
                        if fusable(prev).is_some_and(|(px, pm, po)| {
                            Arc::ptr_eq(px, &x) && same_kind(pm, &m) && !Arc::ptr_eq(po, &o)
                        }) =>
                    {
                        let Some(Op::Matmul {
                            x, m: pm, out: po, ..
                        }) = out.pop()
                        else {
                            unreachable!()
                        };
                        Op::Matvec {
                            x,
                            mats: vec![(pm, po), (m, o)],
                        }
                    }
                    _ => Op::Matmul {
                        x,
                        x_cols,
                        n: 1,
                        m,
                        out: o,
                        out_cols,
                    },
                }
            }
            // SwiGLU right after the gate and up products
            Op::SiluMul { gate, up, len } => match out.last() {
                Some(Op::Matvec { mats, .. })
                    if mats.len() == 2
                        && Arc::ptr_eq(&mats[0].1, &gate)
                        && Arc::ptr_eq(&mats[1].1, &up)
                        && mats[0].0.0.rows == len
                        && mats[1].0.0.rows == len =>
                {
                    let Some(Op::Matvec { x, mut mats }) = out.pop() else {
                        unreachable!()
                    };
                    let up_pair = mats.pop().expect("two");
                    let gate_pair = mats.pop().expect("two");
                    Op::Glu {
                        x,
                        gate: gate_pair,
                        up: up_pair,
                    }
                }
                _ => Op::SiluMul { gate, up, len },
            },
            // RoPE of q, RoPE of k, then the store of k and v
            Op::StoreKv {
                k,
                v,
                first,
                n,
                pos,
                kv_dim,
                kc,
                vc,
                dtype,
            } => {
                let l = out.len();
                let fits = l >= 2
                    && first == 0
                    && match (&out[l - 2], &out[l - 1]) {
                        (
                            Op::Rope {
                                x: q,
                                n: nq,
                                hd: hq,
                                table: tq,
                                style: sq,
                                ..
                            },
                            Op::Rope {
                                x: rk,
                                x_cols: kcols,
                                n: nk,
                                heads: kh,
                                hd: hk,
                                table: tk,
                                style: sk,
                            },
                        ) => {
                            Arc::ptr_eq(rk, &k)
                                && !Arc::ptr_eq(q, &k)
                                && !Arc::ptr_eq(q, &v)
                                && *nq == n
                                && *nk == n
                                && hq == hk
                                && Arc::ptr_eq(tq, tk)
                                && sq == sk
                                && *kcols == kv_dim
                                && kh * hk == kv_dim
                        }
                        _ => false,
                    };
                if fits {
                    let Some(Op::Rope {
                        heads: kv_heads, ..
                    }) = out.pop()
                    else {
                        unreachable!()
                    };
                    let Some(Op::Rope {
                        x: q,
                        x_cols: q_cols,
                        heads: q_heads,
                        hd,
                        table,
                        style,
                        ..
                    }) = out.pop()
                    else {
                        unreachable!()
                    };
                    Op::RopeStore {
                        q,
                        q_cols,
                        q_heads,
                        kv: [k, v, kc, vc],
                        dtype,
                        kv_heads,
                        table,
                        n,
                        hd,
                        style,
                        pos,
                    }
                } else {
                    Op::StoreKv {
                        k,
                        v,
                        first,
                        n,
                        pos,
                        kv_dim,
                        kc,
                        vc,
                        dtype,
                    }
                }
            }
            other => other,
        };
        out.push(op);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::nvrtc::format_index;
    use super::super::record::{Buf, CudaAct, CudaKv, MatrixInner, Recorder};
    use super::*;
    use crate::backend::layout::layout;
    use crate::backend::{AttnShape, Backend, KvDtype};
    use crate::model::Model;
    use crate::weights::builder::WeightSource;
    use crate::weights::{Blob, LayerTensor, RopeStyle, TensorId, WeightData, WeightFormat};
    use crate::{Config, Result, RopeScaling};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A backend that only records, on stand-in buffers: each op appends the `Op` the CUDA
    /// backend's appends (both build it with record.rs's constructors). Run through
    /// `Model::forward`, it yields the ops the forward pass really emits, in its order and
    /// on its buffers, so the tests below break when model.rs changes what fusion relies on.
    struct Tape {
        rec: Mutex<Recorder>,
        next_ptr: AtomicU64,
    }

    impl Tape {
        fn new() -> Tape {
            Tape {
                rec: Mutex::new(Recorder::new(false)),
                next_ptr: AtomicU64::new(1),
            }
        }

        fn buf(&self) -> BufRef {
            Buf::fake(self.next_ptr.fetch_add(1 << 20, Ordering::Relaxed))
        }

        fn push(&self, f: impl FnOnce(&mut Recorder) -> Op) {
            let mut rec = self.rec.lock().unwrap();
            let op = f(&mut rec);
            rec.ops.push(op);
        }

        /// The ops recorded since the last take (a flush's worth).
        fn take(&self) -> Vec<Op> {
            let mut rec = self.rec.lock().unwrap();
            rec.arena.clear();
            rec.pos_slot = None;
            std::mem::take(&mut rec.ops)
        }
    }

    impl Backend for Tape {
        type Act = CudaAct;
        type Matrix = CudaMatrix;
        type Kv = CudaKv;

        fn name(&self) -> String {
            "tape".into()
        }

        fn upload_matrix(&self, _: &str, w: &WeightData) -> Result<CudaMatrix> {
            Ok(CudaMatrix(Arc::new(MatrixInner {
                format: w.format,
                fi: format_index(w.format).unwrap(),
                rows: w.rows,
                cols: w.cols,
                lay: layout(w.format, w.cols),
                payload: self.buf(),
                scales: None,
                perm: w.perm.as_ref().map(|_| self.buf()),
            })))
        }

        fn alloc(&self, _: &str, rows: usize, cols: usize) -> Result<CudaAct> {
            Ok(CudaAct {
                buf: self.buf(),
                rows,
                cols,
            })
        }

        fn alloc_kv(
            &self,
            _: &str,
            max_seq: usize,
            kv_dim: usize,
            dtype: KvDtype,
        ) -> Result<CudaKv> {
            Ok(CudaKv {
                buf: self.buf(),
                max_seq,
                kv_dim,
                dtype,
            })
        }

        fn write(&self, dst: &mut CudaAct, data: &[f32]) {
            self.push(|rec| Op::write(rec, dst, data));
        }

        fn embed(&self, table: &CudaMatrix, ids: &[u32], out: &mut CudaAct) {
            self.push(|rec| Op::embed(rec, table, ids, out));
        }

        fn rms_norm(
            &self,
            x: &CudaAct,
            first: usize,
            n: usize,
            w: &CudaAct,
            eps: f32,
            out: &mut CudaAct,
        ) {
            self.push(|_| Op::rms_norm(x, first, n, w, eps, out));
        }

        fn matmul(&self, x: &CudaAct, n: usize, w: &CudaMatrix, out: &mut CudaAct) {
            self.push(|_| Op::matmul(x, n, w, out));
        }

        fn rope(
            &self,
            x: &mut CudaAct,
            n: usize,
            n_heads: usize,
            head_dim: usize,
            table: &CudaAct,
            style: RopeStyle,
        ) {
            self.push(|_| Op::rope(x, n, n_heads, head_dim, table, style));
        }

        fn store_kv(
            &self,
            k: &CudaAct,
            v: &CudaAct,
            first: usize,
            n: usize,
            pos: usize,
            kc: &mut CudaKv,
            vc: &mut CudaKv,
        ) {
            self.push(|rec| Op::store_kv(rec, k, v, first, n, pos, kc, vc));
        }

        fn copy_kv(&self, src: &CudaKv, cache: &mut CudaKv, positions: std::ops::Range<usize>) {
            let row = cache.kv_dim * 4;
            self.push(|_| Op::Copy {
                src: src.buf.clone(),
                dst: cache.buf.clone(),
                offset: positions.start * row,
                bytes: positions.len() * row,
            });
        }

        fn attention(
            &self,
            q: &CudaAct,
            kc: &CudaKv,
            vc: &CudaKv,
            first: usize,
            n: usize,
            pos: usize,
            shape: AttnShape,
            out: &mut CudaAct,
        ) {
            self.push(|rec| Op::attention(rec, q, kc, vc, first, n, pos, shape, out));
        }

        fn silu_mul(&self, gate: &mut CudaAct, up: &CudaAct, len: usize) {
            self.push(|_| Op::silu_mul(gate, up, len));
        }

        fn add(&self, x: &mut CudaAct, y: &CudaAct, len: usize) {
            self.push(|_| Op::add(x, y, len));
        }

        async fn argmax(&self, _: &CudaAct, _: usize) -> Result<u32> {
            unreachable!("the forward pass reads nothing back")
        }

        async fn read(&self, _: &CudaAct, _: usize) -> Result<Vec<f32>> {
            unreachable!("the forward pass reads nothing back")
        }
    }

    /// Zero weights of a two-layer model (the tape never reads them): gate and up in
    /// `ffn`, the other matrices in `f`.
    struct Zeros {
        config: Config,
        f: WeightFormat,
        ffn: WeightFormat,
    }

    impl WeightSource for Zeros {
        fn config(&self) -> &Config {
            &self.config
        }
        fn rope_style(&self) -> RopeStyle {
            RopeStyle::Half
        }
        fn weight(&mut self, id: TensorId) -> Result<WeightData> {
            let [rows, cols] = id.expected_shape(&self.config);
            let f = match id {
                _ if id.is_vector() => WeightFormat::F32,
                TensorId::Layer(_, LayerTensor::W1 | LayerTensor::W3) => self.ffn,
                _ => self.f,
            };
            WeightData::new(
                f,
                rows,
                cols,
                Blob::from_vec(vec![0; rows * f.row_bytes(cols, "")?]),
                &id.gguf_name(),
            )
        }
    }

    /// The ops one forward pass of `n` tokens at position `pos` records, logits of the last.
    fn forward_ops(f: WeightFormat, ffn: WeightFormat, n: usize, pos: usize) -> Vec<Op> {
        let config = Config {
            dim: 256,
            hidden_dim: 512,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            vocab_size: 256,
            max_seq_len: 512,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            tie_embeddings: false,
            bos_id: Some(1),
            eos_ids: vec![2],
        };
        let model =
            Model::load(&mut Zeros { config, f, ffn }, Tape::new(), 0, &mut |_| {}).unwrap();
        let mut state = model.new_state(64, 8, 1).unwrap();
        model.backend.take(); // the norm weights' uploads
        model.forward(&mut state, &vec![1; n], pos, 1).unwrap();
        model.backend.take()
    }

    fn kinds(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| match o {
                Op::Write { .. } => "write".into(),
                Op::Copy { .. } => "copy".into(),
                Op::Embed { .. } => "embed".into(),
                Op::Norm { add, .. } => if add.is_some() { "add+norm" } else { "norm" }.into(),
                Op::Matmul { .. } => "matmul".into(),
                Op::Matvec { mats, .. } => format!("matvec{}", mats.len()),
                Op::Glu { .. } => "glu".into(),
                Op::Rope { .. } => "rope".into(),
                Op::StoreKv { .. } => "store".into(),
                Op::RopeStore { .. } => "rope+store".into(),
                Op::Attention { .. } => "attention".into(),
                Op::SiluMul { .. } => "silu".into(),
                Op::Add { .. } => "add".into(),
                Op::Argmax { .. } => "argmax".into(),
            })
            .collect()
    }

    #[test]
    fn decode_layer_fuses_to_eight_launches() {
        // gate and up of another format than q, k, v still pair up
        for (f, ffn) in [
            (WeightFormat::Q4_0, WeightFormat::Q4_0),
            (WeightFormat::Q4K, WeightFormat::Q6K),
        ] {
            let got = kinds(&fuse(forward_ops(f, ffn, 1, 5)));
            #[rustfmt::skip]
            let want = [
                "embed", "write",
                // layer 0 (nothing to add before its first norm)
                "norm", "matvec3", "rope+store", "attention", "matmul", "add+norm", "glu", "matmul",
                // layer 1: the residual add of layer 0 joins its first norm
                "add+norm", "matvec3", "rope+store", "attention", "matmul", "add+norm", "glu", "matmul",
                // the last residual add joins the final norm (one row: all of them)
                "add+norm", "matmul",
            ];
            assert_eq!(got, want, "{f:?} / {ffn:?}");
        }
    }

    #[test]
    fn fusion_keeps_what_it_cannot_merge() {
        // prefill: only the adds join the norms and the RoPEs join the store; the final norm
        // of the last row only is not fused with the add before it
        let got = kinds(&fuse(forward_ops(
            WeightFormat::F16,
            WeightFormat::F16,
            7,
            0,
        )));
        #[rustfmt::skip]
        let want = [
            "embed", "write",
            "norm", "matmul", "matmul", "matmul", "rope+store", "attention", "matmul", "add+norm", "matmul", "matmul", "silu", "matmul",
            "add+norm", "matmul", "matmul", "matmul", "rope+store", "attention", "matmul", "add+norm", "matmul", "matmul", "silu", "matmul",
            "add", "norm", "matmul",
        ];
        assert_eq!(got, want);
    }
}
