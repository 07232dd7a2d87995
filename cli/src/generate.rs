//! `yangtuo generate --model DIR (--prompt TEXT | --ids 1,5,9) --max-tokens N [--json]`.
//! Greedy unless `--temperature` says otherwise.

use crate::args::{ModelArgs, SamplingArgs, parse_ids};
use std::io::Write;
use yangtuo::{Error, Flow, GenerateOptions, Result, SamplingParams};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to continue (BOS is added; no chat template).
    #[arg(long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// Comma-separated prompt token ids, used as given.
    #[arg(long)]
    ids: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object: {"ids", "text", "prefill_tok_s", "decode_tok_s", ...}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let prompt_ids = a.ids.as_deref().map(parse_ids).transpose()?;
    if prompt_ids.is_none() && a.prompt.is_none() {
        return Err(Error::arg("prompt", "give --prompt TEXT or --ids 1,5,9"));
    }
    let llama = crate::progress::load_llama(&a.model, None)?;
    let opts = GenerateOptions {
        allow_control_tokens: true,
        ..a.sampling
            .options(&SamplingParams::greedy(), a.max_tokens, a.stop.clone())?
    };
    let stream = !a.json;
    let mut on_text = |t: &str| {
        if stream {
            print!("{t}");
            let _ = std::io::stdout().flush();
        }
        Flow::Continue
    };
    let c = match (&prompt_ids, &a.prompt) {
        (Some(ids), _) => llama.complete_ids(ids, &opts, None, &mut on_text)?,
        (None, Some(p)) => llama.generate(p, &opts, None, &mut on_text)?,
        _ => unreachable!(),
    };
    if a.json {
        let out = serde_json::json!({
            "ids": c.ids,
            "text": c.text,
            "finish_reason": c.finish_reason.as_str(),
            "usage": c.usage,
            "prefill_tok_s": c.timings.prefill_tok_s(),
            "decode_tok_s": c.timings.decode_tok_s(),
            "ttft_s": c.timings.ttft_s,
            "device": llama.device(),
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "[{} tokens, prefill {:.1} tok/s, decode {:.1} tok/s, {}]",
            c.usage.completion_tokens,
            c.timings.prefill_tok_s(),
            c.timings.decode_tok_s(),
            c.finish_reason.as_str()
        );
    }
    Ok(())
}
