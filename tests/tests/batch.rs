//! Batch invariance of `Runner::forward_batch`: a sequence decoded in a batch with others
//! gets exactly the logits it gets alone (bit for bit on the CPU), whatever the others are,
//! while sequences join (after their own prefill) and leave mid-batch.

use safetensors::Dtype;
use std::sync::Arc;
use yangtuo::backend::cpu::Cpu;
use yangtuo::model::Model;
use yangtuo::runner::{Runner, SessionState};
use yangtuo::weights::WeightFormat;
use yangtuo::weights::quantize::Quantizing;
use yangtuo::weights::source::ModelFiles;
use yangtuo_tests::{Spec, random_ids};

fn spec(dtype: Dtype) -> Spec {
    Spec { hidden: 256, intermediate: 768, layers: 2, heads: 4, kv_heads: 2, vocab: 300, dtype, seed: 7, ..Spec::default() }
}

fn cpu_model(spec: &Spec, quantize: Option<WeightFormat>, name: &str) -> Arc<dyn Runner> {
    let dir = spec.write_temp(name);
    let mut files = ModelFiles::open(&dir).unwrap();
    let mut progress = |_: yangtuo::LoadProgress| {};
    let model = match quantize {
        None => Model::load(&mut files, Cpu, 0, &mut progress).unwrap(),
        Some(f) => Model::load(&mut Quantizing::new(&mut files, f).unwrap(), Cpu, 0, &mut progress).unwrap(),
    };
    let _ = std::fs::remove_dir_all(dir);
    model.into_runner()
}

const CTX: usize = 160;
const STEPS: usize = 12;

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The logits of each greedy step of `prompt` decoded alone: after the prompt, then after
/// each generated token.
fn alone(r: &dyn Runner, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut s = r.new_state(CTX, 64, 1).unwrap();
    r.forward(&mut s, prompt, 0, 1).unwrap();
    let mut steps = vec![pollster::block_on(r.logits(&s, 1)).unwrap()];
    for j in 0..STEPS {
        let next = argmax(steps.last().unwrap());
        r.forward(&mut s, &[next], prompt.len() + j, 1).unwrap();
        steps.push(pollster::block_on(r.logits(&s, 1)).unwrap());
    }
    steps
}

/// Sequence i joins at step `join[i]` and leaves after `last[i]` decode steps.
struct Seq {
    prompt: Vec<u32>,
    join: usize,
    last: usize,
}

fn batched(r: &dyn Runner, seqs: &[Seq]) -> Vec<Vec<Vec<f32>>> {
    let vocab = r.config().vocab_size;
    let mut batch = r.new_state(0, yangtuo::backend::DECODE_ROWS, yangtuo::backend::DECODE_ROWS).unwrap();
    let mut states: Vec<Option<SessionState>> = seqs.iter().map(|_| None).collect();
    let mut logits: Vec<Vec<Vec<f32>>> = seqs.iter().map(|_| vec![]).collect();
    for step in 0.. {
        // joiners prefill on their own state, as a scheduler's prefill step does
        for (i, q) in seqs.iter().enumerate() {
            if q.join == step {
                let mut s = r.new_state(CTX, 64, 1).unwrap();
                r.forward(&mut s, &q.prompt, 0, 1).unwrap();
                logits[i].push(pollster::block_on(r.logits(&s, 1)).unwrap());
                states[i] = Some(s);
            }
        }
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| states[i].is_some() && logits[i].len() <= seqs[i].last).collect();
        if active.is_empty() && seqs.iter().all(|q| q.join < step) {
            break;
        }
        if active.is_empty() {
            continue;
        }
        let tokens: Vec<[u32; 1]> = active.iter().map(|&i| [argmax(logits[i].last().unwrap())]).collect();
        let mut taken: Vec<(usize, SessionState)> = active.iter().map(|&i| (i, states[i].take().unwrap())).collect();
        let mut rows: Vec<(&mut SessionState, &[u32], usize)> = taken
            .iter_mut()
            .zip(&tokens)
            .map(|((i, s), t)| (s, &t[..], seqs[*i].prompt.len() + logits[*i].len() - 1))
            .collect();
        r.forward_batch(&mut batch, &mut rows, active.len()).unwrap();
        let all = pollster::block_on(r.logits(&batch, active.len())).unwrap();
        for (row, (i, s)) in taken.into_iter().enumerate() {
            logits[i].push(all[row * vocab..(row + 1) * vocab].to_vec());
            states[i] = Some(s);
        }
    }
    logits
}

fn check_invariance(dtype: Dtype, quantize: Option<WeightFormat>) {
    let spec = spec(dtype);
    let r = cpu_model(&spec, quantize, &format!("batch-{dtype:?}-{quantize:?}"));
    // up to 11 at once: past the 8-token tiles of the CPU's products
    let lens = [3, 17, 40, 9, 64, 1, 5, 33, 12, 2, 7, 21];
    let join = [0, 0, 2, 5, 0, 7, 1, 1, 0, 3, 0, 4];
    let last = [STEPS, 6, STEPS, 3, STEPS, 4, 8, STEPS, STEPS, 5, 2, STEPS];
    let seqs: Vec<Seq> = (0..lens.len())
        .map(|i| Seq { prompt: random_ids(lens[i], spec.vocab, 100 + i as u64), join: join[i], last: last[i] })
        .collect();
    let got = batched(&*r, &seqs);
    for (i, q) in seqs.iter().enumerate() {
        let want = alone(&*r, &q.prompt);
        assert_eq!(got[i].len(), q.last + 1, "sequence {i}");
        for (step, (g, w)) in got[i].iter().zip(&want).enumerate() {
            assert!(g == w, "{dtype:?}/{quantize:?}: sequence {i} (prompt {}), step {step}: batched logits differ from alone", q.prompt.len());
        }
    }
}

#[test]
fn batched_decode_is_bit_identical_to_alone_f32() {
    check_invariance(Dtype::F32, None);
}

#[test]
fn batched_decode_is_bit_identical_to_alone_f16() {
    check_invariance(Dtype::F16, None);
}

#[test]
fn batched_decode_is_bit_identical_to_alone_q4_0() {
    check_invariance(Dtype::F32, Some(WeightFormat::Q4_0));
}

#[test]
fn batched_decode_is_bit_identical_to_alone_q8_0_and_q4_k() {
    check_invariance(Dtype::F32, Some(WeightFormat::Q8_0));
    check_invariance(Dtype::F32, Some(WeightFormat::Q4K));
}
