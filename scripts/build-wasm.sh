#!/usr/bin/env bash
# Build bindings-wasm into bindings-wasm/pkg: cargo for wasm32, then wasm-bindgen --target web.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
WASM_TARGET_DIR="${WASM_TARGET_DIR:-$CARGO_TARGET_DIR-wasm}"
# simd128 for the CPU backend (browsers without WebGPU); every browser with WebGPU has it
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS:--C target-feature=+simd128}"
cargo build --manifest-path bindings-wasm/Cargo.toml --release --target wasm32-unknown-unknown --target-dir "$WASM_TARGET_DIR"
wasm-bindgen --target web --out-dir bindings-wasm/pkg "$WASM_TARGET_DIR/wasm32-unknown-unknown/release/yangtuo_wasm.wasm"
ls -la bindings-wasm/pkg
