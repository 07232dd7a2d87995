//! `yangtuo tokenize --tokenizer PATH [--chat] [--template NAME] < in.jsonl > out.jsonl`.
//! Text lines give `encode(text)` (no BOS/EOS, like `sentencepiece.encode`); chat lines give
//! the full prompt. A bad line gives `{"error": ...}` and the run goes on.

use std::io::Write;
use std::path::PathBuf;
use yangtuo::chat::{ChatTemplate, Message};
use yangtuo::tokenizer::Tokenizer;
use yangtuo::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// A tokenizer.model, a tokenizer.json, or a model folder.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Lines are {"messages": [...]}: output the chat prompt ids.
    #[arg(long)]
    chat: bool,
    /// Chat template: llama2 | llama2-chinese (default: the folder's own, else llama2).
    #[arg(long)]
    template: Option<String>,
    /// Accept template control strings inside message content.
    #[arg(long)]
    allow_control_tokens: bool,
}

fn line_ids(line: &str, a: &Args, tok: &Tokenizer, template: &ChatTemplate) -> Result<Vec<u32>> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::arg("line", format!("invalid JSON: {e}")))?;
    if a.chat {
        let msgs: Vec<Message> = serde_json::from_value(
            v.get("messages").cloned().unwrap_or_default(),
        )
        .map_err(|e| {
            Error::arg(
                "messages",
                format!("expected a list of {{role, content}}: {e}"),
            )
        })?;
        template.render(
            tok,
            tok.bos_id().unwrap_or(1),
            tok.eos_id().unwrap_or(2),
            &msgs,
            a.allow_control_tokens,
        )
    } else {
        let text = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::arg("text", "missing string field `text`"))?;
        tok.encode(text)
    }
}

pub fn run(a: Args) -> Result<()> {
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    let template = match &a.template {
        Some(n) => ChatTemplate::by_name(n)?,
        None => yangtuo::chat::own_template::from_dir(&a.tokenizer, &tok)
            .unwrap_or(ChatTemplate::Llama2),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut stdin = std::io::stdin().lock();
    while let Some(line) = crate::lines::next_line(&mut stdin) {
        let j = match line? {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => match line_ids(&line, &a, &tok, &template) {
                Ok(ids) => serde_json::json!({ "ids": ids }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            },
            Err(why) => serde_json::json!({ "error": why }),
        };
        writeln!(out, "{j}").map_err(|e| Error::io("stdout", e))?;
    }
    out.flush().map_err(|e| Error::io("stdout", e))
}
