//! `yangtuo eval`: every question of an eval set through `chat()`, written as the markdown
//! table the Llama2-Chinese community publishes (`| 一级分类 | 二级分类 | 问题 | 答案 |`), with
//! tokens and seconds per answer and a summary line.

use crate::args::{ModelArgs, SamplingArgs};
use std::fmt::Write as _;
use std::path::PathBuf;
use yangtuo::{Error, Flow, Message, Result, SamplingParams};

/// The system prompt of the community's Llama 2 chat evaluation (meta_eval_7B.md).
pub const COMMUNITY_SYSTEM: &str = "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature. The answer always been translate into Chinese language.\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.\nThe answer always been translate into Chinese language.";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// JSON lines of {"category", "subcategory", "question"}.
    #[arg(long)]
    questions: PathBuf,
    /// The markdown report to write.
    #[arg(long)]
    out: PathBuf,
    /// System prompt (default: the community eval's).
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    template: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
}

struct Question {
    category: String,
    subcategory: String,
    question: String,
}

fn read_questions(path: &PathBuf) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut qs = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Error::arg(
                "questions",
                format!("{}:{}: invalid JSON: {e}", path.display(), i + 1),
            )
        })?;
        let field = |k: &str| v.get(k).and_then(|s| s.as_str()).unwrap_or("").to_string();
        if field("question").is_empty() {
            return Err(Error::arg(
                "questions",
                format!("{}:{}: no `question`", path.display(), i + 1),
            ));
        }
        qs.push(Question {
            category: field("category"),
            subcategory: field("subcategory"),
            question: field("question"),
        });
    }
    Ok(qs)
}

/// A table cell: pipes escaped, line breaks as <br>.
fn cell(s: &str) -> String {
    s.trim()
        .replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace('\n', "<br>")
}

pub fn run(a: Args) -> Result<()> {
    let mut qs = read_questions(&a.questions)?;
    if let Some(n) = a.limit {
        qs.truncate(n);
    }
    let llama = crate::progress::load_llama(&a.model, a.template.clone())?;
    let system = a
        .system
        .clone()
        .unwrap_or_else(|| COMMUNITY_SYSTEM.to_string());
    // a fixed seed by default, so a report can be reproduced
    let opts = a.sampling.options(
        &SamplingParams {
            seed: Some(42),
            ..SamplingParams::default()
        },
        a.max_tokens,
        vec![],
    )?;
    let pb = indicatif::ProgressBar::new(qs.len() as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("eval [{bar:40}] {pos}/{len} ({eta})")
            .expect("valid template"),
    );
    let mut md = String::new();
    let _ = writeln!(md, "# yangtuo eval: {}\n", a.model.model.display());
    let _ = writeln!(
        md,
        "device: {} · template: {} · system prompt: community eval\n",
        llama.device(),
        llama.template().name()
    );
    md.push_str(
        "| 一级分类 | 二级分类 | 问题 | 答案 | tokens | 秒 |\n|---|---|---|---|---:|---:|\n",
    );
    let (mut tokens, mut seconds, mut truncated) = (0usize, 0f64, 0usize);
    for q in &qs {
        let msgs = [
            Message::system(system.clone()),
            Message::user(q.question.clone()),
        ];
        let t = std::time::Instant::now();
        let c = llama.chat_stream(&msgs, &opts, None, &mut |_| Flow::Continue);
        let dt = t.elapsed().as_secs_f64();
        let (answer, n) = match c {
            Ok(c) => {
                truncated += usize::from(c.finish_reason == yangtuo::FinishReason::Length);
                (c.text, c.usage.completion_tokens)
            }
            Err(e) => (format!("(error: {e})"), 0),
        };
        tokens += n;
        seconds += dt;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {n} | {dt:.1} |",
            cell(&q.category),
            cell(&q.subcategory),
            cell(&q.question),
            cell(&answer)
        );
        pb.inc(1);
    }
    pb.finish_and_clear();
    let _ = writeln!(
        md,
        "\n**Summary**: {} questions, {tokens} answer tokens in {seconds:.1} s ({:.2} tok/s overall), {truncated} answers cut at max_tokens.",
        qs.len(),
        tokens as f64 / seconds.max(1e-9)
    );
    std::fs::write(&a.out, md).map_err(|e| Error::io(&a.out, e))?;
    eprintln!("wrote {} ({} questions)", a.out.display(), qs.len());
    Ok(())
}
