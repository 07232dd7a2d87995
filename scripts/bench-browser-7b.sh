#!/usr/bin/env bash
# Issue 19's 7B proof: a random-weight Llama-2-7B-shaped Q4_0 GGUF (32 layers, vocab 32000,
# about 3.8 GB) loaded in headless Chromium over WebGPU (SwiftShader here). Prints one row
# of bench/browser-7b.md: load time, wasm memory peak, Chromium's peak RSS, one token.
# Needs about 18 GB of free disk while it makes the file (the f16 folder is removed after).
#   bash scripts/bench-browser-7b.sh [DIR]      # DIR keeps the GGUF between runs
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
dir="${1:-${TMPDIR:-/tmp}/yangtuo-7b}"
gguf="$dir/llama-2-7b-random.Q4_0.gguf"
mkdir -p "$dir"
if [ ! -f "$gguf" ]; then
  cargo build --release -q -p yangtuo-cli -p yangtuo-tests --bins
  tok="${YANGTUO_SHARED:-tests/data}/tokenizers/llama2"
  "$CARGO_TARGET_DIR/release/make-model" --out "$dir/f16" --shape llama2-7b --dtype f16 --seed 7 --tokenizer "$tok"
  "$CARGO_TARGET_DIR/release/yangtuo" quantize "$dir/f16" "$gguf" --type q4_0
  rm -rf "$dir/f16"
fi
[ -f bindings-wasm/pkg/yangtuo_wasm.js ] || bash scripts/build-wasm.sh
(cd bindings-wasm && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && node bench/load.mjs "$gguf" "${@:2}")
