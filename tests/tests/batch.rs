//! Batch invariance of `Runner::forward_batch`: a sequence decoded in a batch with others
//! gets exactly the logits it gets alone (bit for bit on the CPU), whatever the others are,
//! while sequences join (after their own prefill) and leave mid-batch.

use safetensors::Dtype;
use std::sync::Arc;
use yangtuo::backend::KvDtype;
use yangtuo::backend::cpu::Cpu;
use yangtuo::model::Model;
use yangtuo::runner::{Runner, SessionState};
use yangtuo::sampler::argmax;
use yangtuo::weights::WeightFormat;
use yangtuo::weights::quantize::Quantizing;
use yangtuo::weights::source::ModelFiles;
use yangtuo_tests::{Spec, random_ids};

fn spec(dtype: Dtype) -> Spec {
    Spec {
        hidden: 256,
        intermediate: 768,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 300,
        dtype,
        seed: 7,
        ..Spec::default()
    }
}

fn cpu_model(spec: &Spec, quantize: Option<WeightFormat>, name: &str) -> Arc<dyn Runner> {
    model_on(Cpu, spec, quantize, name)
}

fn model_on<B: yangtuo::backend::Backend>(
    backend: B,
    spec: &Spec,
    quantize: Option<WeightFormat>,
    name: &str,
) -> Arc<dyn Runner> {
    let dir = spec.write_temp(name);
    let mut files = ModelFiles::open(&dir).unwrap();
    let mut progress = |_: yangtuo::LoadProgress| {};
    let model = match quantize {
        None => Model::load(&mut files, backend, 0, &mut progress).unwrap(),
        Some(f) => Model::load(
            &mut Quantizing::new(&mut files, f).unwrap(),
            backend,
            0,
            &mut progress,
        )
        .unwrap(),
    };
    let _ = std::fs::remove_dir_all(dir);
    model.into_runner()
}

const CTX: usize = 160;
const STEPS: usize = 12;

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
    let mut batch = r
        .new_state(
            0,
            yangtuo::backend::DECODE_ROWS,
            yangtuo::backend::DECODE_ROWS,
        )
        .unwrap();
    // caches side by side, as a batch's pool holds them (one attention dispatch on wgpu)
    let mut fresh = r.new_states(seqs.len(), CTX, 64, 1).unwrap().into_iter();
    let mut states: Vec<Option<SessionState>> = seqs.iter().map(|_| None).collect();
    let mut logits: Vec<Vec<Vec<f32>>> = seqs.iter().map(|_| vec![]).collect();
    for step in 0.. {
        // joiners prefill on their own state, as a scheduler's prefill step does
        for (i, q) in seqs.iter().enumerate() {
            if q.join == step {
                let mut s = fresh.next().unwrap();
                r.forward(&mut s, &q.prompt, 0, 1).unwrap();
                logits[i].push(pollster::block_on(r.logits(&s, 1)).unwrap());
                states[i] = Some(s);
            }
        }
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| states[i].is_some() && logits[i].len() <= seqs[i].last)
            .collect();
        if active.is_empty() && seqs.iter().all(|q| q.join < step) {
            break;
        }
        if active.is_empty() {
            continue;
        }
        let tokens: Vec<[u32; 1]> = active
            .iter()
            .map(|&i| [argmax(logits[i].last().unwrap())])
            .collect();
        let mut taken: Vec<(usize, SessionState)> = active
            .iter()
            .map(|&i| (i, states[i].take().unwrap()))
            .collect();
        let mut rows: Vec<(&mut SessionState, &[u32], usize)> = taken
            .iter_mut()
            .zip(&tokens)
            .map(|((i, s), t)| (s, &t[..], seqs[*i].prompt.len() + logits[*i].len() - 1))
            .collect();
        r.forward_batch(&mut batch, &mut rows, active.len())
            .unwrap();
        let all = pollster::block_on(r.logits(&batch, active.len())).unwrap();
        for (row, (i, s)) in taken.into_iter().enumerate() {
            logits[i].push(all[row * vocab..(row + 1) * vocab].to_vec());
            states[i] = Some(s);
        }
    }
    logits
}

/// 12 sequences of mixed prompt lengths, joining and leaving.
fn scenario(vocab: usize) -> Vec<Seq> {
    // up to 11 at once: past the 8-token tiles of the CPU's products
    let lens = [3, 17, 40, 9, 64, 1, 5, 33, 12, 2, 7, 21];
    let join = [0, 0, 2, 5, 0, 7, 1, 1, 0, 3, 0, 4];
    let last = [STEPS, 6, STEPS, 3, STEPS, 4, 8, STEPS, STEPS, 5, 2, STEPS];
    (0..lens.len())
        .map(|i| Seq {
            prompt: random_ids(lens[i], vocab, 100 + i as u64),
            join: join[i],
            last: last[i],
        })
        .collect()
}

fn check_invariance(dtype: Dtype, quantize: Option<WeightFormat>) {
    let spec = spec(dtype);
    let r = cpu_model(&spec, quantize, &format!("batch-{dtype:?}-{quantize:?}"));
    let seqs = scenario(spec.vocab);
    against_alone(&*r, &seqs, &format!("{dtype:?}/{quantize:?}"), 0.0);
}

/// The scenario batched against each sequence alone: max |Δlogit| at most `tolerance` times
/// the largest logit (0: bit for bit).
fn against_alone(r: &dyn Runner, seqs: &[Seq], what: &str, tolerance: f32) {
    let got = batched(r, seqs);
    for (i, q) in seqs.iter().enumerate() {
        let want = alone(r, &q.prompt);
        assert_eq!(got[i].len(), q.last + 1, "sequence {i}");
        for (step, (g, w)) in got[i].iter().zip(&want).enumerate() {
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
            let err = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let same = if tolerance == 0.0 {
                g == w
            } else {
                err <= tolerance * scale
            };
            assert!(
                same,
                "{what}: sequence {i} (prompt {}), step {step}: batched logits differ from alone by {err}",
                q.prompt.len()
            );
        }
    }
}

/// wgpu (lavapipe here, with and without shader-f16) batches the same way, bit for bit:
/// each decode row sums in matvec.wgsl's order, the lone token's, in groups of 8 tokens
/// (so a step of 11 takes two), with the sequences' caches side by side, stored and
/// attended in one dispatch each per layer. (With the tiled matmul.wgsl for the decode rows
/// instead, the logits differ by 5e-6 of the largest.)
#[test]
fn batched_decode_on_wgpu_matches_alone() {
    // the down projection's 4096 columns are 128 units of 32 weights: each of a row's 32
    // threads takes four at a time, the matvec's main loop, as well as its tail
    let spec = Spec {
        intermediate: 4096,
        ..spec(Dtype::F16)
    };
    // the browser's f32 path, and shader-f16 with its f16 KV cache (lavapipe has it)
    for f16 in [false, true] {
        for quantize in [None, Some(WeightFormat::Q4_0), Some(WeightFormat::Q4K)] {
            let gpu = pollster::block_on(yangtuo::backend::wgpu::Wgpu::with_f16(f16)).unwrap();
            let r = model_on(
                gpu,
                &spec,
                quantize,
                &format!("batch-wgpu-{f16}-{quantize:?}"),
            );
            let what = format!("wgpu (f16 {f16}, {quantize:?}), up to 11 at once");
            against_alone(&*r, &scenario(spec.vocab), &what, 0.0);
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

/// An f16 KV cache (`kv_cache_dtype`): batch invariance holds on the CPU as with f32 (one
/// kernel reads the cache for any batch), the logits stay within f16's rounding of the f32
/// cache's, and the cache takes half the memory.
#[test]
fn f16_kv_cache_is_batch_invariant_near_f32_and_half_the_size() {
    let spec = spec(Dtype::F16);
    let dir = spec.write_temp("batch-kv-f16");
    let load = |kv| {
        let mut m = Model::load(&mut ModelFiles::open(&dir).unwrap(), Cpu, 0, &mut |_| {}).unwrap();
        assert_eq!(m.kv_dtype, KvDtype::F32, "the CPU's auto is f32");
        m.kv_dtype = kv;
        m.into_runner()
    };
    let (r16, r32) = (load(KvDtype::F16), load(KvDtype::F32));
    against_alone(&*r16, &scenario(spec.vocab), "f16 KV cache", 0.0);
    let mut worst = 0f32;
    for q in scenario(spec.vocab) {
        for (a, b) in alone(&*r16, &q.prompt).iter().zip(alone(&*r32, &q.prompt)) {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
            let err = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            worst = worst.max(err / scale);
        }
    }
    eprintln!("f16 cache vs f32: max |Δlogit| = {worst:.2e} of the largest");
    // keys and values rounded to 11 bits (2^-11 = 4.9e-4 relative) move the logits by
    // about that much, not by a broken cache's order of magnitude
    assert!(
        worst < 5e-3,
        "f16 cache logits differ from f32's by {worst} of the largest"
    );
    assert!(worst > 0.0, "an f16 cache that rounds nothing is not one");

    let opts = |kv| yangtuo::LoadOptions {
        backend: yangtuo::BackendChoice::Cpu,
        kv_cache_dtype: kv,
        ..Default::default()
    };
    let llama_dir = llama_dir("batch-kv-f16-llama");
    let (l16, l32) = (
        yangtuo::Llama::load(&llama_dir, &opts(Some(KvDtype::F16)), &mut |_| {}).unwrap(),
        yangtuo::Llama::load(&llama_dir, &opts(None), &mut |_| {}).unwrap(),
    );
    assert_eq!(
        (l16.kv_dtype(), l32.kv_dtype()),
        (KvDtype::F16, KvDtype::F32)
    );
    assert_eq!(2 * l16.kv_bytes_per_sequence(), l32.kv_bytes_per_sequence());
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(llama_dir);
}

/// A model folder with random weights and the real Llama 2 tokenizer, for [`llama`].
fn llama_dir(name: &str) -> std::path::PathBuf {
    let tokenizer = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/tokenizers/llama2/tokenizer.model"
    ));
    assert!(
        tokenizer.is_file(),
        "tests/data (the tokenizers the tests need) is missing from the repository"
    );
    let dir = Spec {
        vocab: 32000,
        ..spec(Dtype::F32)
    }
    .write_temp(name);
    std::fs::copy(&tokenizer, dir.join("tokenizer.model")).unwrap();
    dir
}

/// A `Llama` on the CPU with the real Llama 2 tokenizer, Q4_0.
fn llama(dir: &std::path::Path) -> yangtuo::Llama {
    llama_on(dir, yangtuo::BackendChoice::Cpu)
}

fn llama_on(dir: &std::path::Path, backend: yangtuo::BackendChoice) -> yangtuo::Llama {
    let opts = yangtuo::LoadOptions {
        backend,
        quantize: Some(WeightFormat::Q4_0),
        ..Default::default()
    };
    yangtuo::Llama::load(dir, &opts, &mut |_| {}).unwrap()
}

/// Request i's sampling in the scheduler tests: greedy for even i, seeded at 0.8 for odd.
fn greedy_or_seeded(i: usize) -> yangtuo::SamplingParams {
    if i.is_multiple_of(2) {
        yangtuo::SamplingParams::greedy()
    } else {
        yangtuo::SamplingParams {
            temperature: 0.8,
            seed: Some(i as u64),
            ..Default::default()
        }
    }
}

/// The scheduler end to end: eight threads chat at once on a batching `Llama` (greedy and
/// seeded sampling, mixed prompt lengths, prompts chunked into others' decode steps, one
/// cancelled mid-answer, one stopped by its callback); each answer equals the same request
/// alone on a `Llama` without batching.
#[test]
fn concurrent_chats_batch_and_answer_as_alone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use yangtuo::{Flow, GenerateOptions, Message};
    let dir = llama_dir("batch-llama");
    // question 3 is over 100 tokens: its prompt rides along in several decode steps
    let long = "Tell me a story about a llama in Peru, in three parts: the mountains, the market, the way home. ".repeat(4);
    let questions = [
        "hi",
        "咖啡的作用是什么?",
        "羊驼吃什么？请详细回答。",
        long.as_str(),
        "1+1=?",
        "你好",
        "写一首关于长城的诗",
        "why",
    ];
    let opts = |i: usize| GenerateOptions {
        max_tokens: Some(12 + 3 * i),
        sampling: greedy_or_seeded(i),
        ignore_eos: i == 3,
        ..Default::default()
    };
    let alone = llama(&dir);
    let want: Vec<_> = (0..questions.len())
        .map(|i| {
            alone
                .chat(&[Message::user(questions[i])], &opts(i))
                .unwrap()
        })
        .collect();
    drop(alone);

    let batched = llama(&dir);
    batched.enable_batching(8).unwrap();
    let cancel = AtomicBool::new(false);
    let got: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..questions.len())
            .map(|i| {
                let (b, cancel) = (&batched, &cancel);
                s.spawn(move || {
                    let mut pieces = 0;
                    let mut on_text = |_: &str| {
                        pieces += 1;
                        if i == 5 && pieces == 3 {
                            cancel.store(true, Ordering::Relaxed);
                        }
                        if i == 6 && pieces == 4 {
                            Flow::Stop
                        } else {
                            Flow::Continue
                        }
                    };
                    let c = if i == 5 { Some(cancel) } else { None };
                    b.chat_stream(&[Message::user(questions[i])], &opts(i), c, &mut on_text)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        match i {
            5 => assert!(matches!(g, Err(yangtuo::Error::Cancelled)), "{g:?}"),
            6 => {
                let g = g.as_ref().unwrap();
                assert_eq!(g.finish_reason, yangtuo::FinishReason::Stop);
                assert!(
                    w.text.starts_with(&g.text) && g.ids.len() <= w.ids.len(),
                    "{:?} vs {:?}",
                    g.text,
                    w.text
                );
            }
            _ => {
                let g = g.as_ref().unwrap();
                assert_eq!(
                    g.ids, w.ids,
                    "question {i}: batched answer differs from alone"
                );
                assert_eq!(g.text, w.text);
                assert_eq!(g.finish_reason, w.finish_reason);
            }
        }
    }
    let stats = batched.batch_stats().expect("batching is on");
    assert!(
        stats.sequences > stats.steps,
        "{stats:?}: no forward pass carried two sequences"
    );
    // the scheduler stays usable after the cancel
    assert_eq!(
        batched
            .chat(&[Message::user(questions[0])], &opts(0))
            .unwrap()
            .ids,
        want[0].ids
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The scheduler on wgpu (lavapipe): five chats at once, their caches side by side in the
/// pool `enable_batching` fills, each prompt riding along in the others' decode steps; every
/// answer, greedy or seeded, equals the same request alone (what runs of a prompt after
/// the template prefix it shares with another is two tokens or more, so it sums as the
/// whole prompt does alone).
#[test]
fn concurrent_chats_on_wgpu_batch_and_answer_as_alone() {
    use yangtuo::{GenerateOptions, Message};
    let dir = llama_dir("batch-llama-wgpu");
    let questions = [
        "Tell me a story about a llama in Peru, in three parts.",
        "咖啡的作用是什么？请详细回答，并举例说明。",
        "羊驼吃什么？它们生活在哪里？请详细回答。",
        "What is the capital of France, and why is it famous?",
        "写一首关于长城的诗，要有四句，每句七个字。",
    ];
    let opts = |i: usize| GenerateOptions {
        max_tokens: Some(8 + 2 * i),
        sampling: greedy_or_seeded(i),
        ignore_eos: true,
        ..Default::default()
    };
    let ask = |l: &yangtuo::Llama, i: usize| l.chat(&[Message::user(questions[i])], &opts(i));
    let alone = llama_on(&dir, yangtuo::BackendChoice::Wgpu);
    let want: Vec<_> = (0..questions.len())
        .map(|i| ask(&alone, i).unwrap())
        .collect();
    drop(alone);
    let batched = llama_on(&dir, yangtuo::BackendChoice::Wgpu);
    batched.enable_batching(8).unwrap();
    let got: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..questions.len())
            .map(|i| {
                let b = &batched;
                s.spawn(move || ask(b, i))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let g = g.as_ref().unwrap();
        assert_eq!(
            g.ids, w.ids,
            "question {i}: batched answer differs from alone"
        );
    }
    let stats = batched.batch_stats().expect("batching is on");
    assert!(
        stats.sequences > stats.steps,
        "{stats:?}: no forward pass carried two sequences"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// On a GPU the pool keeps the states `enable_batching` made side by side: when it is full,
/// one made apart (for a third request at once) gives way to them.
#[test]
fn a_full_pool_keeps_the_caches_side_by_side() {
    let dir = llama_dir("batch-pool-wgpu");
    let l = llama_on(&dir, yangtuo::BackendChoice::Wgpu);
    l.enable_batching(2).unwrap();
    let taken: Vec<_> = (0..3).map(|_| l.take_state(&[]).unwrap()).collect();
    let made: Vec<bool> = taken.iter().map(|c| c.state.side_by_side).collect();
    assert_eq!(made, [true, true, false]);
    for c in taken.into_iter().rev() {
        l.put_state(c); // the one apart first
    }
    let kept: Vec<bool> = (0..2)
        .map(|_| l.take_state(&[]).unwrap().state.side_by_side)
        .collect();
    assert_eq!(kept, [true, true]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Prefix reuse is exact on the CPU and on wgpu: a prompt whose first 40 tokens are another
/// request's cached KV (only its last 3 run, alone or riding in another sequence's decode
/// steps) answers with the same tokens and log-probabilities, bit for bit, as the same
/// prompt run cold in one piece; with batching and without. So do the same prompt sent
/// again, and a next turn whose prompt holds the first answer. (On wgpu a prompt's rows
/// take the tiled kernel whatever their number, so the 3-token tail sums as it does inside
/// the 43-token prompt; with MULTI for prompts of up to 8 tokens, as before, this failed.
/// A decoded token sums in matvec's order there, so wgpu reuses only positions computed as
/// prompt rows, and runs at least two tokens: reusing all but the last token of the same
/// prompt, or the decoded answer, the logprobs differed in the last bits.)
#[test]
fn a_reused_prefix_gives_the_bits_of_a_cold_prompt() {
    for backend in [yangtuo::BackendChoice::Cpu, yangtuo::BackendChoice::Wgpu] {
        reused_prefix_against_cold(backend);
    }
}

fn reused_prefix_against_cold(backend: yangtuo::BackendChoice) {
    use yangtuo::{Flow, GenerateOptions, SamplingParams};
    let llama = |dir: &std::path::Path| llama_on(dir, backend);
    let dir = llama_dir(&format!("batch-prefix-{backend:?}"));
    let opts = GenerateOptions {
        max_tokens: Some(16),
        sampling: SamplingParams::greedy(),
        logprobs: Some(2),
        ignore_eos: true,
        ..Default::default()
    };
    let (shared, other) = (random_ids(40, 32000, 5), random_ids(9, 32000, 6));
    let longer: Vec<u32> = shared.iter().chain(&[7, 8, 9]).copied().collect();
    for batching in [false, true] {
        let warm = llama(&dir);
        if batching {
            warm.enable_batching(4).unwrap();
        }
        let run = |ids: &[u32]| {
            warm.complete_ids(ids, &opts, None, &mut |_| Flow::Continue)
                .unwrap()
        };
        // Two requests at a time, twice: the pool then holds `shared`'s cache and `other`'s,
        // and each later prompt takes the one sharing its longest prefix, whichever thread
        // asks first.
        std::thread::scope(|s| {
            let o = s.spawn(|| run(&other));
            run(&shared);
            o.join().unwrap();
        });
        let reused = std::thread::scope(|s| {
            // with batching, `other` decodes while `longer`'s tail runs
            let o = s.spawn(|| run(&other));
            let reused = run(&longer);
            o.join().unwrap();
            reused
        });
        assert_eq!(
            reused.timings.prefill_tokens, 3,
            "the cached prefix was not reused"
        );
        let cold = llama(&dir)
            .complete_ids(&longer, &opts, None, &mut |_| Flow::Continue)
            .unwrap();
        assert_eq!(cold.timings.prefill_tokens, longer.len());
        let what = format!("{backend:?}, batching {batching}");
        same_bits(&reused, &cold, &what);
        let exact = backend == yangtuo::BackendChoice::Cpu;
        let again = run(&longer);
        assert_eq!(again.timings.prefill_tokens, if exact { 1 } else { 2 });
        same_bits(&again, &cold, &format!("{what}, the same prompt again"));
        let turn: Vec<u32> = (longer.iter().chain(&again.ids).chain(&[10, 11, 12]))
            .copied()
            .collect();
        let next = run(&turn);
        let answer_and_3 = again.ids.len() + 3;
        if exact {
            assert!(
                next.timings.prefill_tokens < answer_and_3,
                "the answer was not reused"
            );
        } else {
            assert_eq!(next.timings.prefill_tokens, answer_and_3);
        }
        let cold = llama(&dir)
            .complete_ids(&turn, &opts, None, &mut |_| Flow::Continue)
            .unwrap();
        same_bits(&next, &cold, &format!("{what}, a turn holding an answer"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The same tokens, with the same log-probabilities to the bit.
fn same_bits(got: &yangtuo::Completion, want: &yangtuo::Completion, what: &str) {
    assert_eq!(got.ids, want.ids, "{what}");
    assert_eq!(got.logprobs.len(), want.logprobs.len(), "{what}");
    for (g, w) in got.logprobs.iter().zip(&want.logprobs) {
        assert_eq!(
            g.logprob.to_bits(),
            w.logprob.to_bits(),
            "{what}: {g:?} vs {w:?}"
        );
    }
}

/// Requests sent at once with the same long system prefix: the first computes it, and
/// the others copy its keys and values from that live sequence (`usage`'s cached tokens)
/// instead of computing them again; each answer has the bits of the same request run
/// cold, alone.
#[test]
fn a_live_prefix_is_shared_by_requests_sent_at_once() {
    use yangtuo::{Flow, GenerateOptions, SamplingParams};
    let dir = llama_dir("batch-live-prefix");
    let opts = GenerateOptions {
        max_tokens: Some(48),
        sampling: SamplingParams::greedy(),
        logprobs: Some(1),
        ignore_eos: true,
        ..Default::default()
    };
    let system = random_ids(100, 32000, 11);
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            system
                .iter()
                .copied()
                .chain(random_ids(5, 32000, 20 + i))
                .collect()
        })
        .collect();
    let shared = llama(&dir);
    shared.enable_batching(4).unwrap();
    let start = std::sync::Barrier::new(prompts.len());
    let answers: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let (shared, start, opts) = (&shared, &start, &opts);
                s.spawn(move || {
                    start.wait();
                    shared
                        .complete_ids(p, opts, None, &mut |_| Flow::Continue)
                        .unwrap()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut computed: Vec<usize> = answers.iter().map(|a| a.timings.prefill_tokens).collect();
    computed.sort();
    assert_eq!(computed, [5, 5, 105], "prompt tokens each request computed");
    let cold = llama(&dir);
    for (p, a) in prompts.iter().zip(&answers) {
        let c = cold
            .complete_ids(p, &opts, None, &mut |_| Flow::Continue)
            .unwrap();
        assert_eq!(a.ids, c.ids);
        for (x, y) in a.logprobs.iter().zip(&c.logprobs) {
            assert_eq!(x.logprob.to_bits(), y.logprob.to_bits(), "{x:?} vs {y:?}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// On wgpu a greedy answer that reads no logits decodes ahead of the host (each token's
/// forward recorded before the token is read back): its tokens and text are those of the
/// same request decoding a token at a time (asking for logprobs reads the logits, so that
/// one does), whether the length limit or a stop string ends it (the last token's forward
/// then goes unused), and a later request on that cache answers as on a fresh model.
#[test]
fn decoding_ahead_on_wgpu_answers_as_token_by_token() {
    use yangtuo::{FinishReason, Flow, GenerateOptions, SamplingParams};
    let dir = llama_dir("batch-ahead");
    let wgpu = || llama_on(&dir, yangtuo::BackendChoice::Wgpu);
    let ahead = wgpu();
    let greedy = GenerateOptions {
        max_tokens: Some(24),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let by_token = |o: &GenerateOptions| GenerateOptions {
        logprobs: Some(1),
        ..o.clone()
    };
    let run = |l: &yangtuo::Llama, ids: &[u32], o: &GenerateOptions| {
        l.complete_ids(ids, o, None, &mut |_| Flow::Continue)
            .unwrap()
    };
    let prompt = random_ids(20, 32000, 31);
    let long = run(&ahead, &prompt, &greedy);
    assert_eq!(long.finish_reason, FinishReason::Length);
    let want = run(&wgpu(), &prompt, &by_token(&greedy));
    assert_eq!((&long.ids, &long.text), (&want.ids, &want.text));

    // a stop string from the middle of that answer ends the same answer early
    let chars: Vec<char> = long.text.chars().collect();
    let stop = GenerateOptions {
        stop: vec![chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect()],
        ..greedy.clone()
    };
    let stopped = run(&ahead, &prompt, &stop);
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(stopped.ids.len() < long.ids.len());
    let want = run(&wgpu(), &prompt, &by_token(&stop));
    assert_eq!((&stopped.ids, &stopped.text), (&want.ids, &want.text));

    // the cache it leaves (with a position run ahead past its tokens) serves the next turn
    let turn: Vec<u32> = (prompt.iter().chain(&stopped.ids).chain(&[5, 6, 7]))
        .copied()
        .collect();
    let next = run(&ahead, &turn, &greedy);
    assert!(
        next.timings.prefill_tokens < turn.len(),
        "nothing was reused"
    );
    assert_eq!(next.ids, run(&wgpu(), &turn, &greedy).ids);
    let _ = std::fs::remove_dir_all(dir);
}
