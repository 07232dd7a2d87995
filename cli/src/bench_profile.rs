//! `yangtuo bench --profile`: decode with the device timing every kernel, printed per token.
//! Which of three costs a token's time is made of decides the fix: the kernels themselves
//! (their bandwidth against the card's), the device's gaps between kernels (fewer, fused
//! dispatches), or the host (wall clock minus the device's span: recording, submits).

use yangtuo::backend::profile::Profile;
use yangtuo::runner::Runner;
use yangtuo::{Error, Result};

/// `run` with the device timing every kernel: the profile of what it ran.
pub fn profiled(r: &dyn Runner, run: impl FnOnce() -> Result<()>) -> Result<Profile> {
    if !r.set_profiling(true) {
        unable(r)?;
    }
    let ran = run();
    let profile = r.take_profile();
    r.set_profiling(false);
    ran.map(|_| profile)
}

/// The error for a device that cannot time its kernels.
pub fn unable(r: &dyn Runner) -> Result<()> {
    Err(Error::arg(
        "profile",
        format!(
            "{} cannot time its kernels (wgpu on a device with timestamp queries can)",
            r.device()
        ),
    ))
}

/// The profile as a table per token; `wall_s` is an unprofiled token's wall time, if known.
pub fn print(p: &Profile, tokens: usize, wall_s: Option<f64>, json: bool) {
    let per = |x: f64| x / tokens as f64;
    let busy = p.busy_ns();
    if json {
        for k in &p.kernels {
            let j = serde_json::json!({
                "profile": k.name, "calls_per_token": per(k.calls as f64),
                "us_per_token": per(k.ns) / 1e3, "weight_gb_s": gb_s(k.weight_bytes, k.ns),
            });
            println!("{j}");
        }
        let j = serde_json::json!({
            "profile": "total", "busy_us_per_token": per(busy) / 1e3,
            "span_us_per_token": per(p.span_ns) / 1e3, "wall_us_per_token": wall_s.map(|w| w * 1e6),
        });
        println!("{j}");
        return;
    }
    println!("device time per decode token ({tokens} tokens profiled):");
    println!("| kernel | calls/token | µs/token | % of kernels | weights GB/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for k in &p.kernels {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} % | {} |",
            k.name,
            per(k.calls as f64),
            per(k.ns) / 1e3,
            100.0 * k.ns / busy.max(1.0),
            gb_s(k.weight_bytes, k.ns).map_or(String::new(), |g| format!("{g:.3}")),
        );
    }
    println!();
    println!("kernels: {:.1} µs/token", per(busy) / 1e3);
    println!(
        "device span (kernels and the gaps between them; one pass per kernel while profiling): {:.1} µs/token",
        per(p.span_ns) / 1e3
    );
    if let Some(w) = wall_s {
        println!("wall clock, unprofiled tg: {:.1} µs/token", w * 1e6);
    }
}

fn gb_s(bytes: u64, ns: f64) -> Option<f64> {
    (bytes > 0 && ns > 0.0).then(|| bytes as f64 / ns)
}
