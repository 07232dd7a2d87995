#!/usr/bin/env bash
# Build the CLI and chat. With no MODEL: `yangtuo chat` with its default model (Chinese-Alpaca-2-7B,
# Q4_K_M, 4.21 GB, downloaded once into the Hugging Face cache; see README.md). MODEL is a model
# folder, a .gguf file, or a Hugging Face repo id (owner/name, owner/name:Q4_K_M).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
case "${1:-}" in
  -h|--help)
    echo "usage: bash scripts/run.sh [MODEL] [yangtuo chat options]" >&2
    exit 0
    ;;
esac
cargo build --release -p yangtuo-cli
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  exec "$CARGO_TARGET_DIR/release/yangtuo" chat "$@"
fi
model=$1; shift
exec "$CARGO_TARGET_DIR/release/yangtuo" chat --model "$model" "$@"
