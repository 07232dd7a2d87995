//! `yangtuo bench`: prompt processing (pp) and text generation (tg) speed, time to first
//! token and peak RSS, printed as a llama-bench style table. A benchmark, not a test.

use crate::args::ModelArgs;
use std::time::Instant;
use yangtuo::weights::TensorId;
use yangtuo::weights::source::ModelFiles;
use yangtuo::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens for the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens for the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Prefill batch size.
    #[arg(short = 'b', long, default_value_t = 512)]
    batch: usize,
    /// Tokens already in the KV cache when each test starts, as llama-bench's -d: the speed
    /// deep into a long chat, where attention reads the whole cache every token.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    depth: usize,
    /// Batched text generation at these numbers of sequences (`1,2,4,8,16`): each decode
    /// step runs one token of every sequence in one forward, as `serve --parallel` does.
    /// Reports aggregate and per-sequence tok/s (`tgN xP`).
    #[arg(long, value_delimiter = ',')]
    parallel: Vec<usize>,
    /// Also time constrained decoding: tg through the generation loop with this JSON Schema
    /// (a file) against the same loop free, both sampled (temperature 1, EOS ignored until
    /// the schema is complete), to report the grammar mask's cost per token.
    #[arg(long)]
    json_schema: Option<std::path::PathBuf>,
    /// Then decode the tg test's tokens once more with the device timing each kernel
    /// (wgpu where the device has timestamp queries): time per token by kernel, the
    /// products' weight bandwidth, and the kernels' total against the device's span and the
    /// unprofiled wall clock.
    #[arg(long)]
    profile: bool,
    /// Print JSON lines instead of the table.
    #[arg(long)]
    json: bool,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

/// Peak resident set size of this process, in bytes (Linux).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn run(mut a: Args) -> Result<()> {
    if a.repetitions == 0 {
        return Err(Error::arg("repetitions", "must be at least 1"));
    }
    if a.profile && a.n_gen < 2 {
        return Err(Error::arg(
            "profile",
            "profiles the tg test's decode: give -n 2 or more",
        ));
    }
    a.model.model = crate::progress::resolve(&a.model)?;
    // describe the model: size, parameters, dominant weight type
    let files = ModelFiles::open(&a.model.model)?;
    let c = files.config.clone();
    // the cache the tests need, checked before anything loads
    let ctx = a
        .depth
        .checked_add(a.n_prompt)
        .and_then(|n| n.checked_add(a.n_gen))
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| Error::arg("n-depth", "depth + prompt + generated tokens overflow"))?
        .max(3);
    let kv = yangtuo::parse_kv_dtype(&a.model.kv_cache_dtype)?.unwrap_or_default();
    yangtuo::llama::check_context(&c, ctx, kv)?;
    let mut size = 0u64;
    let mut params = 0u64;
    let mut by_format = std::collections::BTreeMap::<String, u64>::new();
    for id in TensorId::all(&c) {
        let w = files.weight(id)?;
        size += w.bytes.len() as u64;
        params += (w.rows * w.cols) as u64;
        *by_format.entry(format!("{:?}", w.format)).or_default() += w.bytes.len() as u64;
    }
    drop(files);
    let ty = a
        .model
        .quantize
        .clone()
        .map(|q| q.to_uppercase())
        .unwrap_or_else(|| {
            by_format
                .iter()
                .max_by_key(|(_, b)| **b)
                .map(|(f, _)| f.to_uppercase())
                .unwrap_or_default()
        });
    let model_desc = format!("llama {:.2}B {ty}", params as f64 / 1e9);

    let t_load = Instant::now();
    // the constrained test needs the tokenizer: then the whole Llama, else the model alone
    let llama = match a.json_schema {
        Some(_) => Some(crate::progress::load_llama(&a.model, None)?),
        None => None,
    };
    let r = match &llama {
        Some(l) => l.runner().clone(),
        None => crate::progress::load_runner(&a.model)?,
    };
    let load_s = t_load.elapsed().as_secs_f64();
    // a device that cannot time its kernels fails before the tests, not after
    if a.profile && !r.set_profiling(false) {
        crate::bench_profile::unable(&*r)?;
    }
    let mut s = r.new_state(ctx, a.batch.max(1), 1)?;
    let vocab = c.vocab_size as u32;
    let token = |i: usize| 3 + (i as u32 * 7919) % (vocab - 3);

    // warm-up: compile kernels and touch every weight once
    r.forward(&mut s, &[token(0), token(1)], 0, 1)?;
    pollster::block_on(r.argmax(&s, 0))?;
    r.forward(&mut s, &[token(2)], 2, 1)?;
    pollster::block_on(r.argmax(&s, 0))?;

    // the cache the tests start from (not timed): positions 0..depth, which no test overwrites
    let d = a.depth;
    if d > 0 {
        let context: Vec<u32> = (0..d).map(|i| token(i + 11)).collect();
        r.forward(&mut s, &context, 0, 1)?;
    }
    let at_depth = if d > 0 {
        format!(" @ d{d}")
    } else {
        String::new()
    };

    let mut rows = vec![];
    let mut ttft = vec![];
    if a.n_prompt > 0 {
        let prompt: Vec<u32> = (0..a.n_prompt).map(token).collect();
        let mut tps = vec![];
        for _ in 0..a.repetitions {
            let t = Instant::now();
            r.forward(&mut s, &prompt, d, 1)?;
            pollster::block_on(r.argmax(&s, 0))?;
            let dt = t.elapsed().as_secs_f64();
            tps.push(a.n_prompt as f64 / dt);
            ttft.push(dt);
        }
        rows.push((format!("pp{}{at_depth}", a.n_prompt), mean_std(&tps)));
    }
    if a.n_gen > 0 {
        let mut tps = vec![];
        for _ in 0..a.repetitions {
            // greedy decode as an answer runs it: on a GPU each token's forward is recorded
            // before the token is read back (`Runner::forward_ahead`)
            let t = Instant::now();
            r.forward(&mut s, &[token(5)], d, 1)?;
            greedy(&*r, &mut s, d + 1..d + a.n_gen)?;
            tps.push(a.n_gen as f64 / t.elapsed().as_secs_f64());
        }
        rows.push((format!("tg{}{at_depth}", a.n_gen), mean_std(&tps)));
    }
    let profile = if a.profile {
        let wall = rows
            .iter()
            .find(|r| r.0.starts_with("tg"))
            .map(|r| 1.0 / r.1.0);
        let n = a.n_gen - 1;
        // the first token settled before the device times the n after it
        r.forward(&mut s, &[token(5)], d, 1)?;
        pollster::block_on(r.argmax(&s, 0))?;
        let p = crate::bench_profile::profiled(&*r, || greedy(&*r, &mut s, d + 1..d + 1 + n))?;
        Some((p, n, wall))
    } else {
        None
    };
    for &p in &a.parallel {
        if p == 0 || p > yangtuo::backend::DECODE_ROWS {
            return Err(Error::arg(
                "parallel",
                format!(
                    "each must be 1..={}, got {p}",
                    yangtuo::backend::DECODE_ROWS
                ),
            ));
        }
        // p sequences with their own caches, each at the same depth, stepping together; the
        // caches side by side as a server's pool holds them (one attention dispatch on wgpu)
        let mut seqs = r.new_states(p, ctx, 16, 1)?;
        for (i, st) in seqs.iter_mut().enumerate() {
            r.forward(
                st,
                &(0..d.max(1)).map(|j| token(j + 11 + i)).collect::<Vec<_>>(),
                0,
                1,
            )?;
        }
        let mut batch = r.new_state(0, p, p)?;
        let (mut agg, mut per) = (vec![], vec![]);
        for _ in 0..a.repetitions {
            let t = Instant::now();
            for step in 0..a.n_gen.max(1) {
                let ids: Vec<[u32; 1]> = (0..p).map(|i| [token(step * 31 + i)]).collect();
                let mut rows: Vec<(&mut yangtuo::SessionState, &[u32], usize)> = seqs
                    .iter_mut()
                    .zip(&ids)
                    .map(|(st, t)| (st, &t[..], d.max(1) + step))
                    .collect();
                r.forward_batch(&mut batch, &mut rows, p)?;
                pollster::block_on(r.logits(&batch, p))?;
            }
            let dt = t.elapsed().as_secs_f64();
            agg.push((p * a.n_gen.max(1)) as f64 / dt);
            per.push(a.n_gen.max(1) as f64 / dt);
        }
        rows.push((
            format!("tg{} x{p} aggregate{at_depth}", a.n_gen),
            mean_std(&agg),
        ));
        rows.push((
            format!("tg{} x{p} per sequence{at_depth}", a.n_gen),
            mean_std(&per),
        ));
    }
    if let (Some(llama), Some(path)) = (&llama, &a.json_schema) {
        rows.extend(constrained(llama, path, a.n_gen.max(1), a.repetitions)?);
    }
    let rss = peak_rss();
    let device = r.device();
    if a.json {
        for (test, (m, sd)) in &rows {
            let j = serde_json::json!({
                "model": model_desc, "size_bytes": size, "params": params, "backend": device,
                "test": test, "tok_s": m, "tok_s_std": sd, "load_s": load_s,
                "ttft_s": if ttft.is_empty() { None } else { Some(mean_std(&ttft).0) },
                "peak_rss_bytes": rss,
            });
            println!("{j}");
        }
        if let Some((p, n, wall)) = &profile {
            crate::bench_profile::print(p, *n, *wall, true);
        }
        return Ok(());
    }
    println!("| model | size | params | backend | test | t/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: |");
    for (test, (m, sd)) in &rows {
        println!(
            "| {model_desc} | {} | {:.2} B | {device} | {test} | {m:.2} ± {sd:.2} |",
            gib(size),
            params as f64 / 1e9
        );
    }
    println!();
    if !ttft.is_empty() {
        let (m, sd) = mean_std(&ttft);
        println!(
            "time to first token (pp{}{at_depth}): {:.3} ± {:.3} s",
            a.n_prompt, m, sd
        );
    }
    if let Some((p, n, wall)) = &profile {
        crate::bench_profile::print(p, *n, *wall, false);
        println!();
    }
    println!("load: {load_s:.2} s");
    if let Some(b) = rss {
        println!("peak RSS: {}", gib(b));
    }
    Ok(())
}

/// Greedy decode at `positions`, each token the argmax of the last, as an answer runs it;
/// then the last token's argmax.
fn greedy(
    r: &dyn yangtuo::Runner,
    s: &mut yangtuo::SessionState,
    positions: std::ops::Range<usize>,
) -> Result<()> {
    for pos in positions {
        match r.forward_ahead(s, pos) {
            Some(read) => pollster::block_on(read).map(|_| ())?,
            None => {
                let next = pollster::block_on(r.argmax(s, 0))?;
                r.forward(s, &[next], pos, 1)?;
            }
        }
    }
    pollster::block_on(r.argmax(s, 0)).map(|_| ())
}

/// tg through `Llama::complete_ids`, free and under the JSON Schema at `path`: decode tok/s of
/// each (the same sampling, so the difference is the grammar's mask and its bookkeeping).
fn constrained(
    llama: &yangtuo::Llama,
    path: &std::path::Path,
    n_gen: usize,
    reps: usize,
) -> Result<Vec<(String, (f64, f64))>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let schema = serde_json::from_str(&text).map_err(|e| {
        Error::arg(
            "json_schema",
            format!("{} is not JSON: {e}", path.display()),
        )
    })?;
    let mut rows = vec![];
    for (name, grammar) in [
        ("free", None),
        (
            "json-schema",
            Some(yangtuo::grammar::Grammar::JsonSchema(schema)),
        ),
    ] {
        let opts = yangtuo::GenerateOptions {
            max_tokens: Some(n_gen),
            sampling: yangtuo::SamplingParams {
                temperature: 1.0,
                seed: Some(1),
                ..Default::default()
            },
            ignore_eos: true,
            grammar,
            ..Default::default()
        };
        let mut tps = vec![];
        for _ in 0..reps {
            let c = llama.generate("A person, as JSON:", &opts, None, &mut |_| {
                yangtuo::Flow::Continue
            })?;
            tps.push(c.timings.decode_tok_s());
        }
        rows.push((format!("tg{n_gen} sampled, {name}"), mean_std(&tps)));
    }
    Ok(rows)
}
