//! `fuzz [SECONDS] [TARGET ...]`: the fuzz targets of tests/src/fuzz.rs for longer than the
//! test command's minute (scripts/fuzz.sh). `YANGTUO_FUZZ_SEED` repeats a run.

#[global_allocator]
static ALLOC: yangtuo_tests::fuzz::Limited = yangtuo_tests::fuzz::Limited;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = match args.first().and_then(|s| s.parse().ok()) {
        Some(s) => {
            args.remove(0);
            s
        }
        None => 3600.0,
    };
    let only = args;
    let seed = std::env::var("YANGTUO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    yangtuo_tests::fuzz::campaign(secs, usize::MAX, &only, seed);
}
