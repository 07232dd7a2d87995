//! The fuzz targets of tests/src/fuzz.rs in the test command: a fixed seed and at most
//! `CAP` inputs per target (60 s in all at most, `YANGTUO_FUZZ_SECS`), so every machine
//! runs the same inputs and a failure is a regression, never a roll of the dice.
//! Exploration with fresh seeds is `scripts/fuzz.sh` (an hour per target);
//! `YANGTUO_FUZZ_SEED` runs another seed here.

#[global_allocator]
static ALLOC: yangtuo_tests::fuzz::Limited = yangtuo_tests::fuzz::Limited;

const SEED: u64 = 20261206;
const CAP: usize = 1500;

#[test]
fn parsers_survive_mutated_inputs() {
    let secs = std::env::var("YANGTUO_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    let seed = std::env::var("YANGTUO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    yangtuo_tests::fuzz::campaign(secs, CAP, &[], seed);
}
