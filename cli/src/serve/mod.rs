//! `yangtuo serve --model M [--host 127.0.0.1] [--port 8080] [--parallel N]`: an
//! OpenAI-compatible HTTP server (axum). `api` is the wire format, `jobs` runs generations,
//! `routes` the endpoints.

mod api;
mod jobs;
mod routes;

use crate::args::ModelArgs;
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;
use yangtuo::{Error, Result, SamplingParams};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Chat template: llama2 | llama2-chinese (default: the model's own, else llama2).
    #[arg(long)]
    template: Option<String>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Generations at once; more requests wait in a queue. Each running one holds its own KV
    /// cache (2 GiB for a 7B model at 4096 positions in f16).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
}

pub fn run(a: Args) -> Result<()> {
    if a.parallel == 0 {
        return Err(Error::arg("parallel", "must be at least 1"));
    }
    // load before the runtime starts: the loader blocks
    let llama = crate::progress::load_llama(&a.model, a.template.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Device(format!("cannot start the server runtime: {e}")))?;
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let app = Arc::new(routes::App {
        jobs: jobs::Jobs {
            llama,
            slots: Arc::new(tokio::sync::Semaphore::new(a.parallel)),
            parallel: a.parallel,
            stats: Default::default(),
        },
        model: a.model.model.to_string_lossy().into_owned(),
        started,
        sampling: SamplingParams::default(),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .fallback(routes::not_found)
        .with_state(app);
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Device(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::Device(e.to_string()))?;
        log::info!("serving {} on http://{local}/v1 ({} parallel)", a.model.model.display(), a.parallel);
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                log::info!("shutting down");
            })
            .await
            .map_err(|e| Error::Device(format!("server error: {e}")))
    })?;
    // generations still running on blocking threads are abandoned
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
