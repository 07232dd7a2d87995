#!/usr/bin/env bash
# Fuzz every parser for longer than the test command's minute: an hour per target by
# default (FUZZ_SECS per target), one target after another, each with a fresh seed.
#   bash scripts/fuzz.sh                 # all targets, 3600 s each
#   FUZZ_SECS=600 bash scripts/fuzz.sh gguf request
# A failure leaves the input in the path the run prints; YANGTUO_FUZZ_SEED repeats a run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
cargo build --release -p yangtuo-cli -p yangtuo-tests --bins
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors tokenizer-model tokenizer-text chat-template request)
for t in "${targets[@]}"; do
  "$CARGO_TARGET_DIR/release/fuzz" "${FUZZ_SECS:-3600}" "$t"
done
