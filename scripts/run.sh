#!/usr/bin/env bash
# Build the CLI and chat with MODEL (a model folder or a .gguf file).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/run.sh MODEL [yangtuo chat options]" >&2
  exit 2
fi
cargo build --release -p yangtuo-cli
model=$1; shift
exec "$CARGO_TARGET_DIR/release/yangtuo" chat --model "$model" "$@"
