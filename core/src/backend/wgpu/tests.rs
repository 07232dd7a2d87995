//! Fusion on a device (lavapipe in CI): driven through `Model::forward`, so a change to the
//! forward pass that loses a fusion fails here, as does a fused kernel that computes
//! anything but what the ops it replaces compute.

use super::{Fusing, Wgpu};
use crate::backend::{Backend, KvDtype};
use crate::model::Model;
use crate::testing::{RandomSource, config};
use crate::weights::{RopeStyle, WeightFormat};

/// A two-layer model (dim 256, head_dim 64, GQA 4/2) of random `format` weights.
fn model(gpu: Wgpu, format: WeightFormat, style: RopeStyle, kv: KvDtype) -> Model<Wgpu> {
    let mut source = RandomSource {
        config: config(256, 512, 4, 2, 256, false),
        format,
        style,
        dequantized: false,
        seed: 7,
    };
    let mut m = Model::load(&mut source, gpu, 0, &mut |_| {}).unwrap();
    m.kv_dtype = kv;
    m
}

/// The logits of a 5-token prompt and then each of `decode` tokens, one at a time.
fn logits(m: &Model<Wgpu>, decode: usize) -> Vec<Vec<f32>> {
    let b = &m.backend;
    let mut s = m.new_state(64, 8, 1).unwrap();
    let mut all = vec![];
    m.forward(&mut s, &[1, 20, 30, 40, 50], 0, 1).unwrap();
    all.push(pollster::block_on(b.read(&s.scratch.logits, 1)).unwrap());
    for t in 0..decode {
        m.forward(&mut s, &[(60 + 17 * t as u32) % 256], 5 + t, 1)
            .unwrap();
        all.push(pollster::block_on(b.read(&s.scratch.logits, 1)).unwrap());
    }
    all
}

#[test]
fn fused_decode_gives_the_unfused_bits() {
    let cases = [
        (
            WeightFormat::Q4_0,
            RopeStyle::Interleaved,
            KvDtype::F16,
            true,
        ),
        (WeightFormat::F16, RopeStyle::Half, KvDtype::F32, true),
        (WeightFormat::Q4K, RopeStyle::Half, KvDtype::F16, true),
        (
            WeightFormat::Q8_0,
            RopeStyle::Interleaved,
            KvDtype::F32,
            false,
        ),
        (WeightFormat::Q6K, RopeStyle::Half, KvDtype::F16, false),
    ];
    for (format, style, kv, f16) in cases {
        let Ok(gpu) = pollster::block_on(Wgpu::with_f16(f16)) else {
            eprintln!("no wgpu adapter; skipped");
            return;
        };
        let m = model(gpu, format, style, kv);
        let run = |fusing| {
            m.backend.set_fusing(fusing);
            logits(&m, 6)
        };
        let unfused = run(Fusing::Off);
        for fusing in [Fusing::All, Fusing::Epilogues] {
            let fused = run(fusing);
            for (step, (a, b)) in fused.iter().zip(&unfused).enumerate() {
                let differ = a
                    .iter()
                    .zip(b)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{format:?} {style:?} {kv:?} cache (f16 shaders {f16}), {fusing:?}: \
                     step {step}: {differ} logits differ"
                );
                assert!(a.iter().all(|x| x.is_finite()));
            }
        }
    }
}

#[test]
fn a_decode_layer_is_eight_dispatches() {
    let Ok(gpu) = pollster::block_on(Wgpu::new()) else {
        eprintln!("no wgpu adapter; skipped");
        return;
    };
    let m = model(
        gpu,
        WeightFormat::Q4_0,
        RopeStyle::Interleaved,
        KvDtype::F16,
    );
    let layers = m.config.n_layers;
    let b = &m.backend;
    b.set_fusing(Fusing::All);
    let mut s = m.new_state(64, 8, 1).unwrap();
    m.forward(&mut s, &[1, 2, 3], 0, 1).unwrap();
    pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
    let mut step = |pos: usize| {
        let before = b.dispatch_count();
        m.forward(&mut s, &[4], pos, 1).unwrap();
        pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
        b.dispatch_count() - before
    };
    // per layer: q (norm, rope), k (rope, store), v (store), attention, o (+ residual),
    // gate (norm), up (SwiGLU), down (+ residual); then embed, the head (final norm) and
    // the argmax
    assert_eq!(step(3), 8 * layers + 3);
    b.set_fusing(Fusing::Epilogues);
    // the norms apart: 10 per layer, and embed, final norm, head, argmax
    assert_eq!(step(4), 10 * layers + 4);
    b.set_fusing(Fusing::Off);
    // each op its own: 16 per layer, and embed, final norm, head, argmax
    assert_eq!(step(5), 16 * layers + 4);
}

/// A decode step of S sequences whose caches sit side by side (`Model::new_states`) stores
/// and attends in one dispatch each per layer, whatever S; with caches apart, one each per
/// sequence. The logits are the same bits either way.
#[test]
fn a_batched_decode_step_attends_in_one_dispatch() {
    let Ok(gpu) = pollster::block_on(Wgpu::new()) else {
        eprintln!("no wgpu adapter; skipped");
        return;
    };
    let m = model(gpu, WeightFormat::Q4_0, RopeStyle::Half, KvDtype::F16);
    let (b, layers) = (&m.backend, m.config.n_layers);
    let mut batch = m.new_state(0, 8, 8).unwrap();
    // (dispatches, logits) of one decode step of `seqs`, each first prefilled alone
    let mut step = |seqs: &mut [crate::model::State<Wgpu>]| {
        for (i, s) in seqs.iter_mut().enumerate() {
            m.forward(s, &[1, 2 + i as u32], 0, 1).unwrap();
        }
        let tokens: Vec<[u32; 1]> = (0..seqs.len()).map(|i| [9 + i as u32]).collect();
        let mut rows: Vec<crate::model::Rows<Wgpu>> = seqs
            .iter_mut()
            .zip(&tokens)
            .map(|(s, t)| crate::model::Rows {
                kv: &mut s.kv,
                tokens: t,
                pos: 2,
            })
            .collect();
        let before = b.dispatch_count();
        m.forward_batch(&mut batch.scratch, &mut rows, tokens.len())
            .unwrap();
        let logits = pollster::block_on(b.read(&batch.scratch.logits, tokens.len())).unwrap();
        (b.dispatch_count() - before, logits)
    };
    let (two, _) = step(&mut m.new_states(2, 64, 8, 1).unwrap());
    let (six, side_by_side) = step(&mut m.new_states(6, 64, 8, 1).unwrap());
    let mut apart: Vec<_> = (0..6).map(|_| m.new_state(64, 8, 1).unwrap()).collect();
    let (six_apart, apart_logits) = step(&mut apart);
    assert_eq!(six, two, "the step's dispatches grew with its sequences");
    assert_eq!(six_apart, six + 2 * 5 * layers);
    assert!(
        side_by_side == apart_logits,
        "caches side by side changed the logits"
    );
}

/// Greedy decode ahead of the host (`Model::forward_ahead`: argmax, embedding and forward
/// recorded before the id is read back) picks the tokens, and leaves the logits bit for
/// bit, that reading each id and then running it does; fused and not, f16 shaders and not.
#[test]
fn decoding_ahead_gives_the_bits_of_argmax_then_forward() {
    for (f16, fusion) in [(true, Fusing::All), (false, Fusing::Off)] {
        let Ok(gpu) = pollster::block_on(Wgpu::with_f16(f16)) else {
            eprintln!("no wgpu adapter; skipped");
            return;
        };
        let m = model(gpu, WeightFormat::Q4_0, RopeStyle::Half, KvDtype::F16);
        m.backend.set_fusing(fusion);
        let b = &m.backend;
        let decode = |ahead: bool| {
            let mut s = m.new_state(64, 8, 1).unwrap();
            m.forward(&mut s, &[1, 20, 30, 40, 50], 0, 1).unwrap();
            let mut steps = vec![];
            for pos in 5..25 {
                let id = if ahead {
                    let read = m.forward_ahead(&mut s, pos).expect("wgpu decodes ahead");
                    pollster::block_on(read).unwrap()
                } else {
                    let id = pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
                    m.forward(&mut s, &[id], pos, 1).unwrap();
                    id
                };
                steps.push((
                    id,
                    pollster::block_on(b.read(&s.scratch.logits, 1)).unwrap(),
                ));
            }
            // past the cache there is nothing to run ahead
            assert!(m.forward_ahead(&mut s, 64).is_none());
            steps
        };
        let (ahead, after) = (decode(true), decode(false));
        for (step, ((i, a), (j, b))) in ahead.iter().zip(&after).enumerate() {
            assert_eq!(i, j, "f16 {f16}, fusion {fusion:?}: step {step}'s token");
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "f16 {f16}, fusion {fusion:?}: step {step}'s logits"
            );
        }
    }
}

/// The int8 experiment (matvec_q8.wgsl) quantizes x as the CPU backend does (ggml's rule,
/// the scale in f32), so the two products differ only in f32 rounding: a rounding rule off
/// at ties, or a nibble against the wrong int8, moves a product by ~1e-2 of its size.
#[cfg(feature = "cpu")]
#[test]
fn int8_x_products_match_the_cpu_backends() {
    use crate::backend::cpu::Cpu;
    use crate::testing::Rng;
    use crate::weights::{Blob, WeightData};
    let Ok(gpu) = pollster::block_on(Wgpu::new()) else {
        eprintln!("no wgpu adapter; skipped");
        return;
    };
    gpu.set_q8x(true);
    let mut rng = Rng(0x1a7);
    let (rows, cols) = (70, 1024);
    for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
        let src: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
        let bytes = crate::weights::ggml::quantize(format, &src);
        let w = WeightData::new(format, rows, cols, Blob::from_vec(bytes), "w").unwrap();
        // values on rounding ties: with max|x| = 127/32 a block's scale is 1/32 exactly
        let mut x: Vec<f32> = (0..cols).map(|_| rng.f32() * 3.0).collect();
        for blk in x.chunks_mut(32) {
            blk[0] = 127.0 / 32.0;
            blk[1] = 2.5 / 32.0;
            blk[2] = -10.5 / 32.0;
        }
        let on_gpu = product(&gpu, &w, &x);
        let on_cpu = product(&Cpu, &w, &x);
        let largest = on_cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = on_gpu
            .iter()
            .zip(&on_cpu)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 2e-6 * largest,
            "{format:?}: int8 products {worst} from the CPU's (largest {largest})"
        );
    }
    // and the experiment is what ran: a quantize and an int8 product per format
    assert_eq!(gpu.dispatch_count(), 4);
}

/// W · x on backend `b`, one token.
#[cfg(feature = "cpu")]
fn product<B: Backend>(b: &B, w: &crate::weights::WeightData, x: &[f32]) -> Vec<f32> {
    let m = b.upload_matrix("w", w).unwrap();
    let mut a = b.alloc("x", 1, w.cols).unwrap();
    b.write(&mut a, x);
    let mut out = b.alloc("out", 1, w.rows).unwrap();
    b.matmul(&a, 1, &m, &mut out);
    pollster::block_on(b.read(&out, 1)).unwrap()
}
