//! One op-level test suite over the `Backend` trait, written once and run on every backend
//! this build has (burn's "testgen" idea): the CPU, wgpu on both its shader-f16 and f32
//! paths, and CUDA when built with `--features cuda` and a device opens.
//!
//! Each op is checked against a plain f64 loop written here, on small odd shapes: weight rows
//! that are not a multiple of 8, columns that are not a multiple of 4, grouped-query
//! attention, prompts (n > 1) and decode (n = 1) at positions past 0, a decode long enough
//! for wgpu's split attention, and every weight format with and without a GPTQ column
//! permutation. Outputs start as NaN, so an element an op forgets to write cannot pass.
//!
//! This localizes a fault to one op; whole models against candle are tests/tests/parity.rs,
//! and every format against gguf-py's own decoders is tests/tests/quant.rs.

use super::{AttnShape, Backend, KvDtype, SeqKv};
use crate::testing::Rng;
use crate::weights::{Blob, RopeStyle, WeightData, WeightFormat};

/// f32's unit roundoff, 2⁻²⁴.
const U: f64 = f32::EPSILON as f64 / 2.0;
/// f16's, 2⁻¹¹: an f16 KV cache's rounding, which a device may do its own way (WGSL leaves
/// pack2x16float's rounding to the device), allowed once more on top of the reference's.
const U16: f64 = 1.0 / 2048.0;

/// `xs` as an f16 KV cache holds them (round to nearest even), or as they are.
fn stored(xs: &[f32], dtype: KvDtype) -> Vec<f32> {
    match dtype {
        KvDtype::F32 => xs.to_vec(),
        KvDtype::F16 => xs
            .iter()
            .map(|x| half::f16::from_f32(*x).to_f32())
            .collect(),
    }
}

/// How a backend's matrix products round their inputs, which sets their error bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Products {
    /// f32 activations times exactly the stored weights (wgpu).
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    Exact,
    /// llama.cpp's scheme (cpu/): 8-bit activations for the ggml block formats (blocks of
    /// 32; the bound allows Q8_K's 256 for K-quants, which candle's fallback uses), f32
    /// activations for the float formats.
    #[cfg_attr(not(feature = "cpu"), allow(dead_code))]
    Cpu,
    /// cuda/: 8-bit activations in blocks of 32 for quantized decode; f16 tensor-core tiles
    /// (activations and decoded weights) for prompts of any format but f32.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda,
    /// wgpu with `set_q8x`: one-token Q4_0, Q8_0 and Q4_K products over 8-bit activations
    /// in blocks of 32 (the scale kept in f32), every other product as `Exact`.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    WgpuQ8x,
}

/// What a product's inputs go through before the f32 arithmetic.
#[derive(Debug, Clone, Copy)]
enum Inputs {
    F32,
    /// Activations (and, with `weights`, the decoded weights) rounded to f16.
    F16 {
        weights: bool,
    },
    /// Activations quantized to 8 bits in blocks of `block`.
    Q8 {
        block: usize,
    },
}

fn inputs(p: Products, f: WeightFormat, n: usize) -> Inputs {
    use WeightFormat::*;
    match (p, f) {
        (Products::WgpuQ8x, Q4_0 | Q8_0 | Q4K) if n == 1 => Inputs::Q8 { block: 32 },
        (Products::Exact | Products::WgpuQ8x, _)
        | (Products::Cpu, F32 | F16 | BF16 | Gptq4)
        | (Products::Cuda, F32) => Inputs::F32,
        (Products::Cpu, Q4K | Q6K) => Inputs::Q8 { block: 256 },
        (Products::Cpu, _) => Inputs::Q8 { block: 32 },
        (Products::Cuda, F16 | BF16) if n == 1 => Inputs::F32,
        (Products::Cuda, _) if n == 1 => Inputs::Q8 { block: 32 },
        (Products::Cuda, _) => Inputs::F16 { weights: true },
    }
}

/// The largest error a product of decoded weight row `w` with activations `x` (both in the
/// stored column order, where the activation blocks are) may have. The rounding of the
/// inputs follows tests/tests/quant.rs's `cpu_bound`, which derives each term; on top, f32
/// products and sums in any order and an ulp or so of decoding each weight.
fn product_bound(p: Products, f: WeightFormat, n: usize, x: &[f32], w: &[f32]) -> f64 {
    let abs = |v: &f32| v.abs() as f64;
    let wx: f64 = x.iter().zip(w).map(|(a, b)| abs(a) * abs(b)).sum();
    let mut bound = (2 * x.len() + 8) as f64 * U * wx;
    match inputs(p, f, n) {
        Inputs::F32 => {}
        Inputs::F16 { weights } => {
            // relative 2⁻¹¹, or 2⁻²⁵ absolute among f16 subnormals
            let r = |v: &f32| abs(v) * 2f64.powi(-11) + 2f64.powi(-25);
            bound += x
                .iter()
                .zip(w)
                .map(|(a, b)| r(a) * abs(b) + if weights { r(b) * abs(a) } else { 0.0 })
                .sum::<f64>();
        }
        Inputs::Q8 { block } => {
            // d = amax/127 rounded to f16, q = round(x/d): x is off by ≤ d/2 + 127·|d − f16(d)|
            let rel = (0.5 + 127.0 * 2f64.powi(-11)) / 127.0 * 1.001;
            // formats with a block offset (Q4_1's m, Q4_K's mins, GPTQ's zero) multiply it
            // by a block sum of the activations kept in f16; |offset| ≤ 2·max|w| of the block
            let offset = matches!(
                f,
                WeightFormat::Q4_1 | WeightFormat::Q4K | WeightFormat::Gptq4
            );
            for (xb, wb) in x.chunks(block).zip(w.chunks(block)) {
                let amax = |v: &[f32]| v.iter().map(abs).fold(0f64, f64::max);
                bound += amax(xb) * rel * wb.iter().map(abs).sum::<f64>();
                if offset {
                    bound +=
                        2.0 * amax(wb) * xb.iter().map(abs).sum::<f64>() * 2f64.powi(-10) * 1.01;
                }
            }
        }
    }
    bound
}

fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.f32() * scale).collect()
}

/// The suite on one backend: every op's worst error is printed, and misses collected.
struct Suite<'a, B: Backend> {
    b: &'a B,
    name: String,
    products: Products,
    rng: Rng,
    failures: Vec<String>,
}

impl<'a, B: Backend> Suite<'a, B> {
    fn new(b: &'a B, name: &str, products: Products) -> Self {
        println!("{name}: {}", b.name());
        Suite {
            b,
            name: name.into(),
            products,
            rng: Rng(0x5eed_c0de_f00d),
            failures: vec![],
        }
    }

    /// The matrix products (and embedding) only.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    fn products(b: &'a B, name: &str, products: Products) {
        let mut s = Suite::new(b, name, products);
        s.matmul_and_embed();
        s.finish();
    }

    fn run(b: &'a B, name: &str, products: Products) {
        let mut s = Suite::new(b, name, products);
        s.matmul_and_embed();
        s.rms_norm();
        s.rope();
        s.attention();
        s.attend();
        s.copy_kv();
        s.elementwise();
        s.argmax();
        s.finish();
    }

    fn finish(&self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} misses:\n{}",
            self.name,
            self.failures.len(),
            self.failures.join("\n")
        );
    }

    fn act(&self, rows: usize, cols: usize, data: &[f32]) -> B::Act {
        let mut a = self.b.alloc("test", rows, cols).unwrap();
        self.b.write(&mut a, data);
        a
    }

    /// An output buffer full of NaN.
    fn nan(&self, rows: usize, cols: usize) -> B::Act {
        self.act(rows, cols, &vec![f32::NAN; rows * cols])
    }

    fn read(&self, a: &B::Act, rows: usize) -> Vec<f32> {
        pollster::block_on(self.b.read(a, rows)).unwrap()
    }

    /// Record max |got − want| / bound(i) over the elements (infinite where got is not
    /// finite); a miss above 1.
    fn check(&mut self, what: &str, got: &[f32], want: &[f64], bound: impl Fn(usize) -> f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let (mut worst, mut at, mut max_d) = (0f64, 0, 0f64);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let d = (*g as f64 - w).abs();
            let r = if !g.is_finite() {
                f64::INFINITY
            } else if d == 0.0 {
                0.0
            } else {
                d / bound(i)
            };
            max_d = max_d.max(d);
            if r > worst {
                (worst, at) = (r, i);
            }
        }
        let line = format!(
            "{}: {what}: max|Δ|/bound {worst:.2e}, max|Δ| {max_d:.2e}",
            self.name
        );
        println!("{line}");
        if !(worst <= 1.0) {
            self.failures.push(format!(
                "{line}; element {at}: got {}, want {}",
                got[at], want[at]
            ));
        }
    }

    /// Check with a bound of `tol` times the largest |want|.
    fn check_rel(&mut self, what: &str, got: &[f32], want: &[f64], tol: f64) {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        self.check(what, got, want, |_| tol * scale);
    }

    /// matmul for n = 1 (decode), 5 and 66 (past a 64-token tile), a batch of 2 prompt
    /// rows and 11 decode rows (`matmul_batch`), and embed, in every weight format, on 37
    /// rows (not a multiple of 8 or 16): float rows of 75 columns, three blocks of 32, or
    /// two of 256. Where a backend's sums do not depend on the batch (not CUDA's), each
    /// decode row has the bits of the same row alone.
    fn matmul_and_embed(&mut self) {
        use WeightFormat::*;
        const ROWS: usize = 37;
        // (rows, decode rows among them); on wgpu 11 decode rows are two token groups of
        // matvec.wgsl's MULTI, the other products are tiled
        const NS: [(usize, usize); 4] = [(1, 0), (5, 0), (13, 11), (66, 0)];
        const N_MAX: usize = 66;
        let cases = [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4K, Q6K, Gptq4]
            .into_iter()
            .map(|f| (f, false))
            .chain([(Gptq4, true)]);
        for (f, permuted) in cases {
            let cols = match f.block_elems() {
                1 => 75,
                32 => 96,
                _ => 512,
            };
            let name = format!("{f:?}{}", if permuted { " permuted" } else { "" });
            let src = random(&mut self.rng, ROWS * cols, 1.0);
            let mut w = WeightData::new(
                f,
                ROWS,
                cols,
                Blob::from_vec(crate::weights::ggml::quantize(f, &src)),
                &name,
            )
            .unwrap();
            let mut perm: Vec<u32> = (0..cols as u32).collect();
            if permuted {
                for i in (1..cols).rev() {
                    perm.swap(i, self.rng.below(i + 1));
                }
                w = w.with_perm(perm.clone(), &name).unwrap();
            }
            // stored order: the bytes as decoded; logical order: what the product means
            let mut stored = vec![0f32; ROWS * cols];
            f.dequantize(&w.bytes, &mut stored);
            let logical = w.to_f32();
            let m = self.b.upload_matrix(&name, &w).unwrap();
            let xs = random(&mut self.rng, N_MAX * cols, 1.0);
            let x = self.act(N_MAX, cols, &xs);
            for (n, lone) in NS {
                let mut out = self.nan(N_MAX, ROWS);
                self.b.matmul_batch(&x, n, lone, &m, &mut out);
                let got = self.read(&out, n);
                // wgpu sums rows that do not start on a vec4 tiled, as models never have;
                // the int8 products are for a lone token only, not batch-invariant
                let invariant = matches!(self.products, Products::Exact | Products::Cpu);
                if invariant && cols.is_multiple_of(4) {
                    for t in n - lone..n {
                        let alone = self.act(1, cols, &xs[t * cols..(t + 1) * cols]);
                        let mut out = self.nan(1, ROWS);
                        self.b.matmul(&alone, 1, &m, &mut out);
                        let want = self.read(&out, 1);
                        let got = &got[t * ROWS..(t + 1) * ROWS];
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "matmul {name}: decode row {t} of {n}: {got:?} alone {want:?}"
                        );
                    }
                }
                let mut want = vec![0f64; n * ROWS];
                let mut bound = vec![0f64; n * ROWS];
                for t in 0..n {
                    let xt = &xs[t * cols..(t + 1) * cols];
                    let gathered: Vec<f32> = perm.iter().map(|&c| xt[c as usize]).collect();
                    for r in 0..ROWS {
                        let wl = &logical[r * cols..(r + 1) * cols];
                        want[t * ROWS + r] =
                            wl.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                        bound[t * ROWS + r] = product_bound(
                            self.products,
                            f,
                            n,
                            &gathered,
                            &stored[r * cols..(r + 1) * cols],
                        );
                    }
                }
                self.check(
                    &format!("matmul {name} [{ROWS}, {cols}] n={n}"),
                    &got,
                    &want,
                    |i| bound[i],
                );
            }
            if permuted {
                continue; // backends disagree on embedding a permuted table; models never do
            }
            // embed: the decoded rows (f32 arithmetic on the same scales), a repeated id
            let ids = [0, ROWS as u32 - 1, 18, 1, ROWS as u32 - 1, 17];
            let mut out = self.nan(ids.len(), cols);
            self.b.embed(&m, &ids, &mut out);
            let got = self.read(&out, ids.len());
            let want: Vec<f64> = ids
                .iter()
                .flat_map(|&i| w.row_f32(i as usize))
                .map(f64::from)
                .collect();
            self.check_rel(&format!("embed {name}"), &got, &want, 1e-6);
        }
    }

    /// Rows `first..first + n` of x, for a prompt's rows from an offset and decode's last.
    /// f32 sums of 75 squares are within (75 + a few)·2⁻²⁴ ≈ 5e-6: bound 1e-5 of max|out|.
    fn rms_norm(&mut self) {
        let (rows, cols, eps) = (6, 75, 1e-5f32);
        let xs = random(&mut self.rng, rows * cols, 3.0);
        let ws = random(&mut self.rng, cols, 1.0);
        let (x, w) = (self.act(rows, cols, &xs), self.act(1, cols, &ws));
        for (first, n) in [(2, 3), (5, 1), (0, 6)] {
            let mut out = self.nan(rows, cols);
            self.b.rms_norm(&x, first, n, &w, eps, &mut out);
            let got = self.read(&out, n);
            let mut want = vec![];
            for t in first..first + n {
                let row = &xs[t * cols..(t + 1) * cols];
                let ms = row.iter().map(|v| *v as f64 * *v as f64).sum::<f64>() / cols as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                want.extend(
                    row.iter()
                        .zip(&ws)
                        .map(|(a, b)| *a as f64 * inv * *b as f64),
                );
            }
            self.check_rel(&format!("rms_norm first={first} n={n}"), &got, &want, 1e-5);
        }
    }

    /// 3 heads of 10 (5 pairs) in rows of 36, whose 6 spare columns must stay as they are;
    /// a prompt at position 7 and a decode step at 11, both styles. x·cos − y·sin in f32:
    /// within a few 2⁻²⁴ of max|x|: bound 1e-6 of max|out|.
    fn rope(&mut self) {
        let (n_heads, hd, cols) = (3, 10, 36);
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            for (pos, n) in [(7, 4), (11, 1)] {
                let xs = random(&mut self.rng, n * cols, 2.0);
                let table: Vec<f32> = (0..n)
                    .flat_map(|t| {
                        (0..hd / 2).flat_map(move |j| {
                            let a = (pos + t) as f64 * 10000f64.powf(-2.0 * j as f64 / hd as f64);
                            [a.cos() as f32, a.sin() as f32]
                        })
                    })
                    .collect();
                let mut x = self.act(n, cols, &xs);
                let tab = self.act(n, hd, &table);
                self.b.rope(&mut x, n, n_heads, hd, &tab, style);
                let got = self.read(&x, n);
                let mut want: Vec<f64> = xs.iter().map(|v| *v as f64).collect();
                for t in 0..n {
                    for h in 0..n_heads {
                        for j in 0..hd / 2 {
                            let (a, b) = match style {
                                RopeStyle::Half => (j, j + hd / 2),
                                RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                            };
                            let (ia, ib) = (t * cols + h * hd + a, t * cols + h * hd + b);
                            let (c, s) = (
                                table[(t * hd / 2 + j) * 2] as f64,
                                table[(t * hd / 2 + j) * 2 + 1] as f64,
                            );
                            let (x0, x1) = (xs[ia] as f64, xs[ib] as f64);
                            want[ia] = x0 * c - x1 * s;
                            want[ib] = x0 * s + x1 * c;
                        }
                    }
                }
                self.check_rel(
                    &format!("rope {style:?} pos={pos} n={n}"),
                    &got,
                    &want,
                    1e-6,
                );
            }
        }
    }

    /// Random keys and values (scale 1) and queries (scale 2) of `rows` rows: on the host,
    /// and on the device.
    fn random_kvq(
        &mut self,
        rows: usize,
        kv_dim: usize,
        q_dim: usize,
    ) -> ([Vec<f32>; 3], [B::Act; 3]) {
        let ks = random(&mut self.rng, rows * kv_dim, 1.0);
        let vs = random(&mut self.rng, rows * kv_dim, 1.0);
        let qs = random(&mut self.rng, rows * q_dim, 2.0);
        let acts = [
            self.act(rows, kv_dim, &ks),
            self.act(rows, kv_dim, &vs),
            self.act(rows, q_dim, &qs),
        ];
        ([ks, vs, qs], acts)
    }

    /// store_kv then attention, as a model's steps run them: a prompt of 5 at 0, a second
    /// chunk of 3 at 5, a decode step at 8, a long chunk of 281 at 9 (several 64-query
    /// blocks), a decode at 289 (over 256 keys: wgpu splits it), each reading back what the
    /// ones before stored. Grouped-query (4 heads on 2 kv heads of 16; 3 on 1 of 12). The
    /// sequence's rows start at row 0, 1 or 2 of q, k, v and out, as in a batch of several
    /// sequences; out's other rows must stay as they were.
    fn attention(&mut self) {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            self.attention_in(dtype);
        }
    }

    /// `attention` with caches of `dtype`.
    fn attention_in(&mut self, dtype: KvDtype) {
        const MAX_SEQ: usize = 300;
        let steps = [(0, 5), (5, 3), (8, 1), (9, 281), (289, 1)];
        // an f16 cache rounds each key and value once more than the reference's rounding
        let u16 = if dtype == KvDtype::F16 { U16 } else { 0.0 };
        for s in [
            AttnShape {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 16,
            },
            AttnShape {
                n_heads: 3,
                n_kv_heads: 1,
                head_dim: 12,
            },
        ] {
            let (hd, q_dim, kv_dim) = (
                s.head_dim,
                s.n_heads * s.head_dim,
                s.n_kv_heads * s.head_dim,
            );
            let mut kc = self.b.alloc_kv("k", MAX_SEQ, kv_dim, dtype).unwrap();
            let mut vc = self.b.alloc_kv("v", MAX_SEQ, kv_dim, dtype).unwrap();
            let (mut kref, mut vref) = (vec![0f32; MAX_SEQ * kv_dim], vec![0f32; MAX_SEQ * kv_dim]);
            for (step, (pos, n)) in steps.into_iter().enumerate() {
                let first = step % 3;
                let rows = first + n;
                let ([ks, vs, qs], [k, v, q]) = self.random_kvq(rows, kv_dim, q_dim);
                let (ks, vs, qs) = (
                    &ks[first * kv_dim..],
                    &vs[first * kv_dim..],
                    &qs[first * q_dim..],
                );
                self.b.store_kv(&k, &v, first, n, pos, &mut kc, &mut vc);
                kref[pos * kv_dim..(pos + n) * kv_dim].copy_from_slice(&stored(ks, dtype));
                vref[pos * kv_dim..(pos + n) * kv_dim].copy_from_slice(&stored(vs, dtype));
                let mut out = self.nan(rows, q_dim);
                self.b.attention(&q, &kc, &vc, first, n, pos, s, &mut out);
                let all = self.read(&out, rows);
                if !all[..first * q_dim].iter().all(|v| v.is_nan()) {
                    self.failures.push(format!(
                        "{}: attention pos={pos} n={n} first={first} wrote rows before `first`",
                        self.name
                    ));
                }
                let got = all[first * q_dim..].to_vec();
                let (mut want, mut bound) = (vec![0f64; n * q_dim], vec![0f64; n * q_dim]);
                let scale = 1.0 / (hd as f32).sqrt();
                for t in 0..n {
                    for h in 0..s.n_heads {
                        let q = &qs[t * q_dim + h * hd..][..hd];
                        let off = h / (s.n_heads / s.n_kv_heads) * hd;
                        let len = pos + t + 1;
                        // (score, Σ|q·k| scaled: what the score's f32 error and exp's scale with)
                        let dots: Vec<(f64, f64)> = (0..len)
                            .map(|p| {
                                let key = &kref[p * kv_dim + off..][..hd];
                                let prods = key
                                    .iter()
                                    .zip(q)
                                    .map(|(a, b)| *a as f64 * *b as f64 * scale as f64);
                                prods.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()))
                            })
                            .collect();
                        let scores: Vec<f64> = dots.iter().map(|d| d.0).collect();
                        let smax = dots.iter().map(|d| d.1).fold(0f64, f64::max);
                        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = scores.iter().map(|v| (v - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        // softmax weights off by: the scores' f32 error (hd·2⁻²⁴·smax, twice:
                        // numerator and sum), exp (WGSL allows 3 + 2|x| ulp), the sums over
                        // len; bound twice that
                        let rel = U * (2.0 * len as f64 + (2.0 * hd as f64 + 8.0) * smax + 16.0)
                            + u16 * (2.0 * smax + 1.0);
                        for i in 0..hd {
                            let o = t * q_dim + h * hd + i;
                            want[o] = (0..len)
                                .map(|p| e[p] / z * vref[p * kv_dim + off + i] as f64)
                                .sum();
                            bound[o] = 2.0
                                * rel
                                * (0..len)
                                    .map(|p| e[p] / z * (vref[p * kv_dim + off + i] as f64).abs())
                                    .sum::<f64>();
                        }
                    }
                }
                let what = format!(
                    "attention ({dtype} cache) {}/{}x{hd} pos={pos} n={n}",
                    s.n_heads, s.n_kv_heads
                );
                self.check(&what, &got, &want, |i| bound[i]);
            }
        }
    }

    /// `attend` over a batch of four sequences, three in caches side by side
    /// (`alloc_kv_slots`, one dispatch on wgpu) and one alone: a 5-row prompt chunk at 40,
    /// decodes at 290 and 270 (split on wgpu) and at 10, after copies of a prefix from the
    /// first cache into two others, against each sequence's `store_kv` and `attention` on caches of
    /// its own: bit for bit, and out's rows written by nobody stay NaN.
    fn attend(&mut self) {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            self.attend_in(dtype);
        }
    }

    fn attend_in(&mut self, dtype: KvDtype) {
        const MAX_SEQ: usize = 300;
        let s = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
        };
        let (q_dim, kv_dim) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        // (rows, position) of each sequence's batch rows; what it holds before
        let seqs = [(5, 40), (1, 290), (1, 270), (1, 10)];
        let rows = 1 + seqs.iter().map(|q| q.0).sum::<usize>(); // row 0 is nobody's
        let alloc = |count| {
            let k = self
                .b
                .alloc_kv_slots("k", count, MAX_SEQ, kv_dim, dtype)
                .unwrap();
            let v = self
                .b
                .alloc_kv_slots("v", count, MAX_SEQ, kv_dim, dtype)
                .unwrap();
            k.into_iter().zip(v).collect::<Vec<_>>()
        };
        let mut side_by_side = alloc(3);
        side_by_side.extend(alloc(1));
        let mut apart: Vec<_> = (0..4).flat_map(|_| alloc(1)).collect();
        // each sequence's past, then a shared prefix copied from the first's cache into the
        // third's (the same buffer on wgpu) and the fourth's (another)
        for (i, &(_, pos)) in seqs.iter().enumerate() {
            let ks = random(&mut self.rng, pos * kv_dim, 1.0);
            let vs = random(&mut self.rng, pos * kv_dim, 1.0);
            let (k, v) = (self.act(pos, kv_dim, &ks), self.act(pos, kv_dim, &vs));
            for caches in [&mut side_by_side, &mut apart] {
                let (kc, vc) = &mut caches[i];
                self.b.store_kv(&k, &v, 0, pos, 0, kc, vc);
            }
        }
        for caches in [&mut side_by_side, &mut apart] {
            let ([first, _, third], [fourth]) = caches.split_at_mut(3) else {
                unreachable!()
            };
            for to in [third, fourth] {
                self.b.copy_kv(&first.0, &mut to.0, 2..9);
                self.b.copy_kv(&first.1, &mut to.1, 2..9);
            }
        }
        let (_, [k, v, q]) = self.random_kvq(rows, kv_dim, q_dim);
        let mut outs = vec![];
        for (batched, caches) in [(true, &mut side_by_side), (false, &mut apart)] {
            let mut out = self.nan(rows, q_dim);
            let mut first = 1;
            let mut batch: Vec<SeqKv<B>> = vec![];
            for ((kc, vc), &(n, pos)) in caches.iter_mut().zip(&seqs) {
                if batched {
                    batch.push(SeqKv {
                        k: kc,
                        v: vc,
                        first,
                        n,
                        pos,
                    });
                } else {
                    self.b.store_kv(&k, &v, first, n, pos, kc, vc);
                    self.b.attention(&q, kc, vc, first, n, pos, s, &mut out);
                }
                first += n;
            }
            if batched {
                self.b.attend(&k, &v, &q, &mut batch, s, &mut out);
            }
            outs.push(self.read(&out, rows));
        }
        let (got, want) = (&outs[0], &outs[1]);
        if !got[..q_dim].iter().all(|v| v.is_nan()) {
            self.failures.push(format!(
                "{}: attend ({dtype} cache) wrote a row outside its sequences",
                self.name
            ));
        }
        let same = got[q_dim..]
            .iter()
            .zip(&want[q_dim..])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            self.failures.push(format!(
                "{}: attend ({dtype} cache) of four sequences differs from each alone",
                self.name
            ));
        }
        println!("  attend ({dtype} cache), 4 sequences: bit-identical {same}");
    }

    /// copy_kv of positions 3..9 from one cache into a zeroed one, then the whole of that
    /// into a third: attention with a zero query weighs every position alike, so its
    /// output at position p is the mean of values 0..=p, which shows the copied rows and
    /// the zeros around them (p = 9 reads the first row past the copy).
    fn copy_kv(&mut self) {
        for dtype in [KvDtype::F32, KvDtype::F16] {
            self.copy_kv_in(dtype);
        }
    }

    fn copy_kv_in(&mut self, dtype: KvDtype) {
        let shape = AttnShape {
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 8,
        };
        let (kv_dim, len) = (16, 12);
        let alloc = |name| self.b.alloc_kv(name, len, kv_dim, dtype).unwrap();
        let (mut src_k, mut src_v, mut k, mut v) = (alloc("k"), alloc("v"), alloc("k"), alloc("v"));
        let (mut k2, mut v2) = (alloc("k"), alloc("v"));
        let ks = random(&mut self.rng, len * kv_dim, 1.0);
        let vs = random(&mut self.rng, len * kv_dim, 1.0);
        let (ka, va) = (self.act(len, kv_dim, &ks), self.act(len, kv_dim, &vs));
        let (vs, tol) = (
            stored(&vs, dtype),
            if dtype == KvDtype::F16 { 1e-3 } else { 1e-5 },
        );
        let zeros = self.act(len, kv_dim, &vec![0.0; len * kv_dim]);
        self.b.store_kv(&ka, &va, 0, len, 0, &mut src_k, &mut src_v);
        self.b.store_kv(&zeros, &zeros, 0, len, 0, &mut k, &mut v);
        self.b.copy_kv(&src_k, &mut k, 3..9);
        self.b.copy_kv(&src_v, &mut v, 3..9);
        self.b.copy_kv(&k, &mut k2, 0..len);
        self.b.copy_kv(&v, &mut v2, 0..len);
        let q = self.act(1, kv_dim, &vec![0.0; kv_dim]);
        for p in [2, 3, 8, 9] {
            let mut out = self.nan(1, kv_dim);
            self.b.attention(&q, &k2, &v2, 0, 1, p, shape, &mut out);
            let got = self.read(&out, 1);
            let want: Vec<f64> = (0..kv_dim)
                .map(|i| {
                    let copied = (3..9.min(p + 1)).map(|r| vs[r * kv_dim + i] as f64);
                    copied.sum::<f64>() / (p + 1) as f64
                })
                .collect();
            self.check(
                &format!("copy_kv ({dtype} cache) then attention at {p}"),
                &got,
                &want,
                |_| tol,
            );
        }
    }

    /// silu_mul and add over 300 elements (past one 256-thread group) of rows of 301, whose
    /// last element must stay as it is. add is exact in f32; silu_mul within exp's
    /// 3 + 2|g| ulp, WGSL's 2.5-ulp division and a few more roundings.
    fn elementwise(&mut self) {
        let (cols, len) = (301, 300);
        let gs = random(&mut self.rng, cols, 8.0);
        let us = random(&mut self.rng, cols, 2.0);
        let up = self.act(1, cols, &us);
        let mut gate = self.act(1, cols, &gs);
        self.b.silu_mul(&mut gate, &up, len);
        let got = self.read(&gate, 1);
        let mut want: Vec<f64> = gs.iter().map(|&g| g as f64).collect();
        for i in 0..len {
            let g = gs[i] as f64;
            want[i] = g / (1.0 + (-g).exp()) * us[i] as f64;
        }
        self.check("silu_mul", &got, &want, |i| {
            (10.0 + 2.0 * (gs[i] as f64).abs()) * U * want[i].abs()
        });
        let mut x = self.act(1, cols, &gs);
        self.b.add(&mut x, &up, len);
        let got = self.read(&x, 1);
        let want: Vec<f64> = (0..cols)
            .map(|i| {
                if i < len {
                    (gs[i] + us[i]) as f64
                } else {
                    gs[i] as f64
                }
            })
            .collect();
        self.check("add", &got, &want, |_| 0.0);
    }

    /// Rows of 300 (past one 256-thread group); ties go to the first index, in another
    /// thread's stride, and the row offset counts.
    fn argmax(&mut self) {
        let cols = 300;
        let mut xs = random(&mut self.rng, 3 * cols, 1.0);
        xs[cols..2 * cols]
            .iter_mut()
            .for_each(|v| *v = *v * 0.5 - 2.0); // all negative
        for (r, i) in [(1, 270), (1, 285), (2, 3), (2, 259)] {
            xs[r * cols + i] = if r == 1 { -0.25 } else { 5.0 };
        }
        xs[5] = 9.0; // row 0's max, larger than any other row's
        let x = self.act(3, cols, &xs);
        for (row, want) in [(0, 5), (1, 270), (2, 3)] {
            let got = pollster::block_on(self.b.argmax(&x, row)).unwrap();
            println!("{}: argmax row {row}: {got} (want {want})", self.name);
            if got != want {
                self.failures.push(format!(
                    "{}: argmax of row {row} is {got}, want {want}",
                    self.name
                ));
            }
        }
    }
}

#[cfg(feature = "cpu")]
#[test]
fn cpu() {
    Suite::run(&super::cpu::Cpu, "cpu", Products::Cpu);
}

/// Both kernel sets: native f16 where the adapter has shader-f16, and the f32 path that
/// browsers without it take. Fails without an adapter, as the other wgpu tests do.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu() {
    use super::wgpu::Wgpu;
    for f16 in [true, false] {
        let b = pollster::block_on(Wgpu::with_f16(f16))
            .unwrap_or_else(|e| panic!("no wgpu device: {e}"));
        Suite::run(
            &b,
            if f16 { "wgpu" } else { "wgpu f32 path" },
            Products::Exact,
        );
    }
    // the int8 experiment (matvec_q8.wgsl): its products only
    let b = pollster::block_on(Wgpu::new()).unwrap_or_else(|e| panic!("no wgpu device: {e}"));
    b.set_q8x(true);
    Suite::products(&b, "wgpu int8 x", Products::WgpuQ8x);
}

/// Skipped, with a note, where no CUDA device opens.
#[cfg(feature = "cuda")]
#[test]
fn cuda() {
    match super::cuda::Cuda::new() {
        Ok(b) => Suite::run(&b, "cuda", Products::Cuda),
        Err(e) => println!("cuda skipped: {e}"),
    }
}
