//! `yangtuo serve --model M [--host 127.0.0.1] [--port 8080] [--parallel N]`: an
//! OpenAI-compatible HTTP server (axum). `api` is the wire format, `jobs` runs generations,
//! `routes` the endpoints.

mod api;
mod conn;
mod jobs;
mod metrics;
mod routes;
mod security;

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
    /// Generations at once; more requests wait in a queue. Above 1 they run continuously
    /// batched: every decode step of all of them is one forward pass (at most 32 rows; more
    /// wait for a place). Each running one holds its own KV cache (2 GiB for a 7B model at
    /// 4096 positions in f16); on a GPU all N are allocated at the start, side by side, so
    /// a step's attention is one dispatch for all of them.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// A budget for the KV caches, in bytes (`8GiB`, `512MiB` or a number): `--parallel`
    /// is lowered to the sequences whose caches fit it (each holds its whole context), and
    /// more requests wait in the queue. Default: no budget, `--parallel` caches.
    #[arg(long, value_parser = parse_bytes)]
    kv_memory: Option<u64>,
    /// Require `Authorization: Bearer KEY` on every /v1 route (401 otherwise).
    #[arg(long, env = "YANGTUO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Allow browser pages from this origin (repeatable; `*` for any). No CORS by default.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// The largest request body, in bytes (413 above).
    #[arg(long, default_value_t = 4 << 20)]
    max_body: usize,
    /// The most messages one chat request may carry (400 above).
    #[arg(long, default_value_t = 4096)]
    max_messages: usize,
    /// The most connections open at once; more wait to be accepted. Each has 10 s to send
    /// its headers (also between requests on a kept-alive connection) and 30 s its body.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// The name clients see in `model` (vLLM's flag); default: the model file's or folder's
    /// name (never its full path), or the Hugging Face repo id as given.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Seconds from a request's arrival to the end of its answer (0: no limit). Queued
    /// past it: 503; running past it: the text so far, `finish_reason: "abort"`.
    #[arg(long, default_value_t = 600.0)]
    request_timeout: f64,
}

pub fn run(a: Args) -> Result<()> {
    if a.max_connections == 0 {
        return Err(Error::arg("max_connections", "must be at least 1"));
    }
    if a.parallel == 0 {
        return Err(Error::arg("parallel", "must be at least 1"));
    }
    if a.api_key.as_deref().is_some_and(str::is_empty) {
        return Err(Error::arg("api-key", "must not be empty"));
    }
    if !(a.request_timeout >= 0.0 && a.request_timeout.is_finite()) {
        return Err(Error::arg(
            "request-timeout",
            "must be a number of seconds >= 0",
        ));
    }
    let cors = security::cors(&a.cors_origins)?;
    let loopback = matches!(a.host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]");
    if !loopback && a.api_key.is_none() {
        log::warn!(
            "listening on {} without --api-key: anyone who can reach this address can use the model",
            a.host
        );
    }
    // load before the runtime starts: the loader blocks
    let llama = crate::progress::load_llama(&a.model, a.template.clone())?;
    let per_sequence = llama.kv_bytes_per_sequence();
    let parallel = match a.kv_memory {
        None => a.parallel,
        Some(budget) => {
            let fit = (budget / per_sequence.max(1)) as usize;
            if fit == 0 {
                return Err(Error::arg(
                    "kv-memory",
                    format!(
                        "{budget} bytes hold no sequence: one KV cache of {} positions is {per_sequence} bytes (lower --ctx)",
                        llama.context_length()
                    ),
                ));
            }
            if fit < a.parallel {
                log::info!(
                    "--kv-memory {budget} holds {fit} KV caches of {per_sequence} bytes: {fit} parallel"
                );
            }
            a.parallel.min(fit)
        }
    };
    if parallel > 1 {
        llama.enable_batching(parallel)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Device(format!("cannot start the server runtime: {e}")))?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let app = Arc::new(routes::App {
        jobs: jobs::Jobs {
            llama,
            slots: Arc::new(tokio::sync::Semaphore::new(parallel)),
            parallel,
            stats: Default::default(),
            timeout: (a.request_timeout > 0.0)
                .then(|| std::time::Duration::from_secs_f64(a.request_timeout)),
        },
        model: served_name(&a),
        started,
        sampling: SamplingParams::default(),
        max_messages: a.max_messages,
    });
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(a.api_key.clone()),
            security::require_key,
        ));
    let mut router = Router::new()
        .merge(v1)
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(a.max_body))
        // a Content-Length over the limit is refused before any of the body is read
        .layer(tower_http::limit::RequestBodyLimitLayer::new(a.max_body))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            conn::BODY_TIMEOUT,
        ))
        .layer(axum::middleware::map_response(api::openai_errors))
        .with_state(app);
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Device(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Device(e.to_string()))?;
        log::info!(
            "serving {} on http://{local}/v1 ({parallel} parallel)",
            a.model.model.display()
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            log::info!("shutting down");
        };
        conn::serve(listener, router, a.max_connections, shutdown).await;
        Ok::<_, Error>(())
    })?;
    // generations still running on blocking threads are abandoned
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// What `/v1/models`, `/health` and answers call the model: no local path beyond its name.
fn served_name(a: &Args) -> String {
    let m = &a.model.model;
    match &a.served_model_name {
        Some(name) => name.clone(),
        None if m.exists() => m
            .file_name()
            .unwrap_or(m.as_os_str())
            .to_string_lossy()
            .into_owned(),
        None => m.to_string_lossy().into_owned(),
    }
}

/// `8GiB`, `512MiB`, `64KiB` or a plain number of bytes.
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(
        s.find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len()),
    );
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (like 8GiB, 512MiB or 1000000)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown unit `{other}` (use KiB, MiB, GiB or TiB)")),
    };
    let bytes = n * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < 1.8e19) {
        return Err(format!("`{s}` is not a size in bytes"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        for bad in ["", "GiB", "-1GiB", "8 parsecs", "0", "1e400"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
