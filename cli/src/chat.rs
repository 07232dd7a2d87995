//! `yangtuo chat`: an interactive REPL. The answer streams as it is generated; `/reset`
//! starts over, `/exit` (or end of input) quits, Ctrl-C stops the current answer.

use crate::args::{ModelArgs, SamplingArgs};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use yangtuo::{Error, Flow, GenerateOptions, Result, SamplingParams};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Chat template: llama2 | llama2-chinese (default: the model's own, else llama2).
    #[arg(long)]
    template: Option<String>,
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: Args) -> Result<()> {
    let llama = crate::progress::load_llama(&a.model, a.template.clone())?;
    let mut session = llama.session(a.system.clone());
    let opts = GenerateOptions {
        max_tokens: Some(a.max_tokens),
        sampling: a.sampling.params(SamplingParams::default()),
        ..Default::default()
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
    eprintln!("yangtuo chat on {} ({} template). /reset starts over, /exit quits.", llama.device(), llama.template().name());
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("\n> ");
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| Error::io("stdin", e))?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                session.reset();
                eprintln!("(conversation cleared)");
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
            Ok(c) => eprintln!(
                "[{} tokens, {:.1} tok/s, first token {:.2} s]",
                c.usage.completion_tokens,
                c.timings.decode_tok_s(),
                c.timings.ttft_s
            ),
            Err(Error::Cancelled) => eprintln!("[stopped]"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}
