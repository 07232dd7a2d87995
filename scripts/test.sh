#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs every test.
# Idempotent: installed pieces are skipped, the cargo build stays warm in $CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
VENV="${YANGTUO_VENV:-$HOME/.cache/yangtuo-venv}"
export YANGTUO_PYTHON="$VENV/bin/python"
# lavapipe's Vulkan loader warns without a runtime dir
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/yangtuo-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

step() { printf '\n==> %s\n' "$*"; }

step "system packages (lavapipe for the wgpu tests)"
missing=()
for p in mesa-vulkan-drivers; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

step "python venv ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt

step "build"
cargo build --release -p yangtuo-cli -p yangtuo-tests --bins

step "rust tests (core, cli, cross-crate)"
log=$(mktemp)
cargo test --release --workspace 2>&1 | tee "$log"
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
rm -f "$log"
# a green run that ran nothing is a failure
[ "$passed" -gt 50 ] || { echo "only $passed rust tests ran" >&2; exit 1; }
echo "rust: $passed tests passed"

step "all tests passed"
