//! The CUDA backend on a GPU: one-token products against f64 references, and whole models
//! against the CPU backend. Both skip where there is no CUDA device.

use super::lower::q8_format;
use super::nvrtc::FORMATS;
use super::{Cuda, CudaAct, CudaMatrix};
use crate::Config;
use crate::backend::Backend;
use crate::model::Model;
use crate::testing::{RandomSource, config, random};
use crate::weights::{Blob, RopeStyle, WeightData, WeightFormat};

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-9);
    let d = a.iter().zip(b).fold(0f64, |d, (x, y)| {
        if x.is_nan() || y.is_nan() {
            f64::INFINITY
        } else {
            d.max((x - y).abs() as f64)
        }
    });
    d / m
}

/// The Q8 activations the kernels make of `x` (kernels.cu, `q8_block`), as the values
/// x̃_i = d_b · q_i they stand for, and each value's rounding bound d_b / 2.
fn q8_round(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (mut xq, mut half) = (vec![], vec![]);
    for b in x.chunks(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (id, d) = (127.0 / amax, amax / 127.0);
        for v in b {
            xq.push(if amax > 0.0 {
                (v * id).round_ties_even() as f64 * d as f64
            } else {
                0.0
            });
            half.push(d as f64 / 2.0);
        }
    }
    (xq, half)
}

/// Every quantized format's one-token products, as decode lowers them (q/k/v fused after
/// a norm that writes the Q8 activations, a lone matrix after quantize_q8, gate/up fused
/// with SwiGLU, a product of glu's output that glu quantized, a column-permuted matrix
/// whose gather quantize_q8 does; rows split over one to four warps), against f64
/// references: on the same 8-bit activations to f32 accumulation (1e-4 of the largest
/// output), and on the unrounded activations within the exact bound of 8-bit rounding,
/// |W·x − W·x̃| ≤ Σ_i |w_i| · d_b(i) / 2. (Attention's Q8 output for o is exercised by
/// forward_matches_cpu_in_every_format.) Skipped without a CUDA device.
#[test]
fn q8_products_match_reference() {
    let gpu = match Cuda::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            return;
        }
    };
    use pollster::block_on as b;
    // 17 super-blocks: in every format some lanes take one unit more than others
    let cols = 4352;
    let formats = [
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Gptq4,
        WeightFormat::Q4K,
        WeightFormat::Q6K,
    ];
    let mut failures = vec![];
    for (fi, &f) in formats.iter().enumerate() {
        let seed = 1000 + 10 * fi as u64;
        let mat = |rows: usize, s: u64, permuted: bool| {
            let data = random(s, rows * cols, 1.5 / (cols as f32).sqrt());
            let w = WeightData::new(
                f,
                rows,
                cols,
                Blob::from_vec(crate::weights::ggml::quantize(f, &data)),
                "w",
            )
            .unwrap();
            if !permuted {
                return w;
            }
            let r = random(s + 1, cols, 1.0);
            let mut perm: Vec<u32> = (0..cols as u32).collect();
            perm.sort_by(|a, b| r[*a as usize].total_cmp(&r[*b as usize]));
            w.with_perm(perm, "w").unwrap()
        };
        // (matrix, rows): q, k, v (odd counts, so a warp's two rows straddle matrices),
        // a lone one, gate, up, a permuted one
        let ws = [
            mat(37, seed, false),
            mat(20, seed + 2, false),
            mat(9, seed + 3, false),
            mat(37, seed + 4, false),
            mat(37, seed + 5, false),
            mat(37, seed + 6, false),
            mat(37, seed + 7, true),
        ];
        // and a SwiGLU whose gate feeds a product (glu writes its Q8 activations)
        let (g2, u2) = (mat(256, seed + 10, false), mat(256, seed + 11, false));
        let down = {
            let data = random(seed + 12, 29 * 256, 0.1);
            WeightData::new(
                f,
                29,
                256,
                Blob::from_vec(crate::weights::ggml::quantize(f, &data)),
                "w",
            )
            .unwrap()
        };
        let ms: Vec<CudaMatrix> = ws
            .iter()
            .map(|w| gpu.upload_matrix("w", w).unwrap())
            .collect();
        let act = |rows: usize, c: usize| gpu.alloc("a", rows, c).unwrap();
        let (mut x0, mut xb, mut xw, mut normw) =
            (act(1, cols), act(1, cols), act(1, cols), act(1, cols));
        let mut outs: Vec<CudaAct> = ws.iter().map(|w| act(1, w.rows)).collect();
        let xv = random(seed + 8, cols, 2.0);
        let nv: Vec<f32> = random(seed + 9, cols, 0.5)
            .iter()
            .map(|v| 1.0 + v)
            .collect();
        gpu.write(&mut x0, &xv);
        gpu.write(&mut xw, &xv);
        gpu.write(&mut normw, &nv);
        gpu.rms_norm(&x0, 0, 1, &normw, 1e-5, &mut xb);
        for i in 0..3 {
            gpu.matmul(&xb, 1, &ms[i], &mut outs[i]);
        }
        gpu.matmul(&xw, 1, &ms[4], &mut outs[4]);
        gpu.matmul(&xw, 1, &ms[5], &mut outs[5]);
        let (g_out, rest) = outs.split_at_mut(5);
        gpu.silu_mul(&mut g_out[4], &rest[0], 37);
        gpu.matmul(&xw, 1, &ms[3], &mut g_out[3]);
        gpu.matmul(&xw, 1, &ms[6], &mut rest[1]);
        let (mg2, mu2, mdown) = (
            gpu.upload_matrix("w", &g2).unwrap(),
            gpu.upload_matrix("w", &u2).unwrap(),
            gpu.upload_matrix("w", &down).unwrap(),
        );
        let (mut og, mut ou, mut od) = (act(1, 256), act(1, 256), act(1, 29));
        gpu.matmul(&xw, 1, &mg2, &mut og);
        gpu.matmul(&xw, 1, &mu2, &mut ou);
        gpu.silu_mul(&mut og, &ou, 256);
        gpu.matmul(&og, 1, &mdown, &mut od);
        let xn = b(gpu.read(&xb, 1)).unwrap();
        let mut got: Vec<Vec<f32>> = outs.iter().map(|o| b(gpu.read(o, 1)).unwrap()).collect();
        let gate2 = b(gpu.read(&og, 1)).unwrap();
        got.push(b(gpu.read(&od, 1)).unwrap());
        // references: (8-bit activations, unrounded, bound) per output row
        let reference = |w: &WeightData, x: &[f32]| -> Vec<(f64, f64, f64)> {
            let logical = w.to_f32();
            let perm: Vec<usize> = w.perm.as_ref().map_or((0..w.cols).collect(), |p| {
                p.iter().map(|&i| i as usize).collect()
            });
            // the kernels see the stored column order: x[perm], quantized in that order
            let xs: Vec<f32> = perm.iter().map(|&i| x[i]).collect();
            let (xq, half) = q8_round(&xs);
            logical
                .chunks(w.cols)
                .map(|row| {
                    let mut t = (0f64, 0f64, 0f64);
                    for (i, &pi) in perm.iter().enumerate() {
                        let wv = row[pi] as f64;
                        t.0 += wv * xq[i];
                        t.1 += wv * xs[i] as f64;
                        t.2 += wv.abs() * half[i];
                    }
                    t
                })
                .collect()
        };
        let mut refs: Vec<Vec<(f64, f64, f64)>> = (0..3).map(|i| reference(&ws[i], &xn)).collect();
        refs.extend((3..7).map(|i| reference(&ws[i], &xv)));
        refs.push(reference(&down, &gate2));
        // gate = silu(g) · u, on each reference
        let silu = |g: f64, u: f64| g / (1.0 + (-g).exp()) * u;
        refs[4] = refs[4]
            .iter()
            .zip(&refs[5])
            .map(|(g, u)| {
                (
                    silu(g.0, u.0),
                    silu(g.1, u.1),
                    (silu(g.1 + g.2, u.1) - silu(g.1, u.1)).abs()
                        + (silu(g.1, u.1 + u.2) - silu(g.1, u.1)).abs()
                        + g.2 * u.2,
                )
            })
            .collect();
        let names = ["q", "k", "v", "lone", "gate", "up", "permuted", "after glu"];
        let (mut worst_q8, mut worst_bound) = (0f64, 0f64);
        for (i, (g, r)) in got.iter().zip(&refs).enumerate() {
            let scale = r.iter().fold(1e-30f64, |m, t| m.max(t.0.abs()));
            for (row, (v, t)) in g.iter().zip(r).enumerate() {
                let v = *v as f64;
                let e_q8 = (v - t.0).abs() / scale;
                // the bound plus the accumulation allowance; gate's bound is a first-order one
                let e_bound =
                    (v - t.1).abs() / (t.2 * if i == 4 { 1.5 } else { 1.0 } + 1e-4 * scale);
                worst_q8 = worst_q8.max(e_q8);
                worst_bound = worst_bound.max(e_bound);
                if !(e_q8 <= 1e-4 && e_bound <= 1.0) {
                    failures.push(format!(
                        "{f:?} {} row {row}: got {v}, want {} (8-bit activations), {} ± {} (exact)",
                        names[i], t.0, t.1, t.2
                    ));
                }
            }
        }
        println!(
            "{f:?}: max |Δ| vs 8-bit reference {worst_q8:.2e} of max |out|, vs exact {:.0}% of the 8-bit rounding bound",
            100.0 * worst_bound
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(8)]
    );
}

/// The bound on decode logits (max|Δ| / max|logit|) for quantized weights, whose products
/// read 8-bit activations while the CPU reference computes in f32. Rounding x to
/// d_b·round(x/d_b), d_b = max|x_b| / 127, leaves a uniform error of RMS d_b/√12 per
/// element: about 0.5% of the RMS of Gaussian-like activations (max|x_b| ≈ 2.1σ for 32
/// values), and so about 0.5% relative error on each product. The logits of the test
/// model depend on 15 products in sequence (2 layers × 7, and the output head), whose
/// independent errors add up to about √15 · 0.5% ≈ 2% of the logits' spread (measured in
/// the emulator: 2.1e-2 for Q4_0, 2.7e-2 for Q4_K). The bound allows about 2× that; a
/// wrong product (a kernel or a stale Q8 buffer) moves logits by O(1). Near-ties among
/// the logits may then flip, so the greedy check only asks that no step misses the CPU's
/// choice where the CPU's lead exceeds twice that step's largest deviation (there a miss
/// cannot come from the deviation).
const Q8_LOGIT_TOL: f64 = 6e-2;

/// A whole model on the GPU against the CPU backend with the same (decoded) weights:
/// a 70-token prefill (two token tiles), 24 decode steps (graphs, split attention), and a
/// second 9-token prefill at position 94. Every format, both RoPE styles, GQA, odd
/// widths. Skipped without a CUDA device.
#[test]
fn forward_matches_cpu_in_every_format() {
    let cuda_for = || match Cuda::new() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    };
    let Some(first) = cuda_for() else { return };
    println!("{}", first.name());
    drop(first);
    let mut cases: Vec<(WeightFormat, Config, RopeStyle)> = FORMATS
        .iter()
        .enumerate()
        .map(|(i, (f, _))| {
            let style = if i % 2 == 0 {
                RopeStyle::Half
            } else {
                RopeStyle::Interleaved
            };
            (*f, config(256, 512, 4, 2, 300, i == 3), style)
        })
        .collect();
    // odd widths: float formats with a tail (head_dim 12, hidden 132, vocab 517)
    cases.push((
        WeightFormat::F16,
        config(72, 132, 6, 2, 517, false),
        RopeStyle::Half,
    ));
    cases.push((
        WeightFormat::F32,
        config(80, 200, 5, 5, 1003, true),
        RopeStyle::Interleaved,
    ));
    // YANGTUO_TEST_FORMATS=F16,Q4K runs some of the cases
    let only = std::env::var("YANGTUO_TEST_FORMATS").ok();
    let mut failures = vec![];
    for (i, (f, c, style)) in cases.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| {
            !o.split(',')
                .any(|x| x.eq_ignore_ascii_case(&format!("{f:?}")))
        }) {
            continue;
        }
        let src = |dequantized| RandomSource {
            config: c.clone(),
            format: f,
            style,
            dequantized,
            seed: 100 + i as u64,
        };
        let mut progress = |_: crate::LoadProgress| {};
        let gpu = Model::load(&mut src(false), cuda_for().unwrap(), 0, &mut progress).unwrap();
        let cpu = Model::load(&mut src(true), crate::backend::cpu::Cpu, 0, &mut progress).unwrap();
        let (mut sg, mut sc) = (
            gpu.new_state(256, 128, 128).unwrap(),
            cpu.new_state(256, 128, 128).unwrap(),
        );
        let ids: Vec<u32> = random(7 + i as u64, 70, 1.0)
            .iter()
            .map(|r| ((r.abs() * 1e4) as usize % c.vocab_size) as u32)
            .collect();
        use pollster::block_on as b;
        // prefill: tensor cores round operands to f16 except for f32 weights
        let tol_prefill: f64 = if f == WeightFormat::F32 || !gpu.backend.mma {
            2e-4
        } else {
            1e-2
        };
        gpu.forward(&mut sg, &ids, 0, 70).unwrap();
        cpu.forward(&mut sc, &ids, 0, 70).unwrap();
        let (lg, lc) = (
            b(gpu.backend.read(&sg.scratch.logits, 70)).unwrap(),
            b(cpu.backend.read(&sc.scratch.logits, 70)).unwrap(),
        );
        let e_pre = max_rel(&lg, &lc);
        // decode, both fed the CPU's greedy choice
        let mut e_dec = 0f64;
        let mut next = b(cpu.backend.argmax(&sc.scratch.logits, 69)).unwrap();
        let (mut agree, mut clear_misses) = (0, 0);
        for step in 0..24 {
            gpu.forward(&mut sg, &[next], 70 + step, 1).unwrap();
            cpu.forward(&mut sc, &[next], 70 + step, 1).unwrap();
            let (lg, lc) = (
                b(gpu.backend.read(&sg.scratch.logits, 1)).unwrap(),
                b(cpu.backend.read(&sc.scratch.logits, 1)).unwrap(),
            );
            e_dec = e_dec.max(max_rel(&lg, &lc));
            let (ag, ac) = (
                b(gpu.backend.argmax(&sg.scratch.logits, 0)).unwrap(),
                b(cpu.backend.argmax(&sc.scratch.logits, 0)).unwrap(),
            );
            agree += (ag == ac) as usize;
            // a miss where the CPU's best logit leads its second by more than twice the
            // largest |Δ| of this step cannot come from that deviation
            let dmax = lg
                .iter()
                .zip(&lc)
                .fold(0f32, |m, (a, c)| m.max((a - c).abs()));
            let second = lc
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != ac as usize)
                .fold(f32::NEG_INFINITY, |m, (_, v)| m.max(*v));
            clear_misses += (ag != ac && lc[ac as usize] - second > 2.0 * dmax) as usize;
            next = ac;
        }
        // a second prefill chunk at a later position
        let more: Vec<u32> = ids[..9].to_vec();
        gpu.forward(&mut sg, &more, 94, 9).unwrap();
        cpu.forward(&mut sc, &more, 94, 9).unwrap();
        let e_more = max_rel(
            &b(gpu.backend.read(&sg.scratch.logits, 9)).unwrap(),
            &b(cpu.backend.read(&sc.scratch.logits, 9)).unwrap(),
        );
        // Float formats: decode computes in f32, but attends over keys and values the
        // prefill wrote. Quantized formats: decode's products round their inputs to 8 bits
        // (q8_products_match_reference holds each product to that rounding exactly), and
        // so does the second prefill's attention over the keys and values decode wrote.
        let q8 = q8_format(f);
        let tol_dec = if q8 {
            tol_prefill.max(Q8_LOGIT_TOL)
        } else {
            tol_prefill.max(2e-4)
        };
        let tol_more = if q8 { tol_dec } else { tol_prefill };
        let greedy_ok = if q8 { clear_misses == 0 } else { agree >= 23 };
        let ok = e_pre <= tol_prefill && e_dec <= tol_dec && e_more <= tol_more && greedy_ok;
        println!(
            "{f:?} dim {} {style:?}: prefill {e_pre:.2e}, decode {e_dec:.2e}, second prefill {e_more:.2e}, argmax agrees {agree}/24 (clear misses {clear_misses}) {}",
            c.dim,
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            failures.push(format!("{f:?} (dim {})", c.dim));
        }
    }
    assert!(
        failures.is_empty(),
        "cuda differs from cpu for {failures:?}"
    );
}
