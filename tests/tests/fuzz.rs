//! The fuzz targets of tests/src/fuzz.rs, time-boxed for the test command: 60 s in all
//! (`YANGTUO_FUZZ_SECS`), a fresh seed each run (`YANGTUO_FUZZ_SEED` repeats one).
//! `scripts/fuzz.sh` runs the same targets for an hour each.

#[global_allocator]
static ALLOC: yangtuo_tests::fuzz::Limited = yangtuo_tests::fuzz::Limited;

#[test]
fn parsers_survive_mutated_inputs() {
    let secs = std::env::var("YANGTUO_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let seed = std::env::var("YANGTUO_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    yangtuo_tests::fuzz::campaign(secs, &[], seed);
}
