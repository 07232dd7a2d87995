//! `yangtuo chat`: an interactive REPL. The answer streams as it is generated; `/reset`
//! starts over, `/json` toggles JSON mode (every answer a JSON object), `/exit` (or end of
//! input) quits, Ctrl-C stops the current answer.

use crate::args::{ModelArgs, SamplingArgs};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use yangtuo::{Error, Flow, GenerateOptions, Result, SamplingParams};

/// The model `yangtuo chat` runs without `--model`: HFL's Chinese-Alpaca-2-7B (Llama 2 with a
/// Chinese-extended vocabulary, tuned to chat in the Llama 2 chat format), 4-bit Q4_K_M
/// (4.21 GB), downloaded once into the Hugging Face cache. See README.md for why.
pub const DEFAULT_MODEL: &str = "TheBloke/Chinese-Alpaca-2-7B-GGUF:Q4_K_M";
/// The system prompt Chinese-Alpaca-2 was tuned with (its authors' llama.cpp chat script).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant. 你是一个乐于助人的助手。";

#[derive(clap::Args)]
#[command(mut_arg("model", |a| a.required(false).default_value(DEFAULT_MODEL)))]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt (with the default model, default "You are a helpful assistant. 你是一个乐于助人的助手。").
    #[arg(long)]
    system: Option<String>,
    /// Chat template: llama2 | llama2-chinese (default: the model's own, else llama2).
    #[arg(long)]
    template: Option<String>,
    /// At most this many tokens per answer (a cap: an answer also ends when the context is full).
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// When the conversation outgrows the context: truncate-oldest (leave out the oldest
    /// turns, the system prompt stays) | error.
    #[arg(long, default_value = "truncate-oldest")]
    context_overflow: String,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: Args) -> Result<()> {
    let llama = crate::progress::load_llama(&a.model, a.template.clone())?;
    let system = match &a.system {
        None if a.model.model.as_os_str() == DEFAULT_MODEL => Some(DEFAULT_SYSTEM.to_string()),
        s => s.clone(),
    };
    let mut session = llama.session(system);
    let mut opts = GenerateOptions {
        context_overflow: Some(a.context_overflow.parse()?),
        ..a.sampling
            .options(&SamplingParams::default(), a.max_tokens, vec![])?
    };
    // Ctrl-C while answering cancels the answer; at the prompt it quits.
    let cancel = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicBool::new(false));
    {
        let (cancel, busy) = (cancel.clone(), busy.clone());
        ctrlc::set_handler(move || {
            if busy.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(130);
            }
        })
        .map_err(|e| Error::Device(format!("cannot install the Ctrl-C handler: {e}")))?;
    }
    eprintln!(
        "yangtuo chat on {} ({} template). /reset starts over, /json toggles JSON mode, /exit quits.",
        llama.device(),
        llama.template().name()
    );
    let free = opts.grammar.clone();
    let mut stdin = std::io::stdin().lock();
    loop {
        eprint!("\n> ");
        let Some(line) = crate::lines::next_line(&mut stdin) else {
            break;
        };
        let line = match line? {
            Ok(line) => line,
            Err(why) => {
                eprintln!("error: {why}");
                continue;
            }
        };
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            "/json" => {
                let json = Some(yangtuo::grammar::Grammar::JsonObject);
                let on = opts.grammar != json;
                opts.grammar = if on { json } else { free.clone() };
                eprintln!(
                    "(JSON mode {})",
                    if on {
                        "on: answers are JSON objects"
                    } else {
                        "off"
                    }
                );
                continue;
            }
            _ => {}
        }
        cancel.store(false, Ordering::SeqCst);
        busy.store(true, Ordering::SeqCst);
        let r = session.send(&line, &opts, Some(&cancel), &mut |t| {
            print!("{t}");
            let _ = std::io::stdout().flush();
            Flow::Continue
        });
        busy.store(false, Ordering::SeqCst);
        println!();
        match r {
            Ok(c) => {
                if c.dropped_turns > 0 {
                    eprintln!(
                        "[the chat outgrew the context: its {} oldest turn(s) were left out]",
                        c.dropped_turns
                    );
                }
                eprintln!(
                    "[{} tokens, {:.1} tok/s, first token {:.2} s]",
                    c.usage.completion_tokens,
                    c.timings.decode_tok_s(),
                    c.timings.ttft_s
                )
            }
            Err(Error::Cancelled) => eprintln!("[stopped]"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}
