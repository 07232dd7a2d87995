//! `yangtuo`: the command line. Each subcommand lives in its own file.

mod args;
mod bench;
mod bench_profile;
mod chat;
mod eval;
mod generate;
mod lines;
mod logits;
mod progress;
mod quantize;
mod serve;
mod tokenize;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "yangtuo",
    version,
    about = "Llama 2 chat models on wgpu, CUDA and CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive chat that streams the answer (/reset, /exit; Ctrl-C stops an answer).
    Chat(chat::Args),
    /// Generate a continuation of a prompt or of token ids.
    Generate(generate::Args),
    /// Write the logits at every position of a list of ids to a .npy file.
    Logits(logits::Args),
    /// Measure prompt processing and generation speed, like llama-bench.
    Bench(bench::Args),
    /// Answer every question of an eval set through chat() and write a markdown report.
    Eval(eval::Args),
    /// Tokenize JSON lines ({"text"} or {"messages"} with --chat) from stdin to stdout.
    Tokenize(tokenize::Args),
    /// Quantize a model into a GGUF file that llama.cpp and yangtuo both read.
    Quantize(quantize::Args),
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions).
    Serve(serve::Args),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp(None)
        .init();
    if let Some(warning) = yangtuo::backend::cpu::clamp_thread_env() {
        log::warn!("{warning}");
    }
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Chat(a) => chat::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Serve(a) => serve::run(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
