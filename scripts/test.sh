#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs every test:
# Rust (core, CLI, cross-crate parity against candle-transformers / sentencepiece /
# gguf-py), the CUDA build, Python, Node, and the browser package in headless Chromium.
# Idempotent: installed pieces are skipped; builds stay warm in $CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
export WASM_TARGET_DIR="${WASM_TARGET_DIR:-$CARGO_TARGET_DIR-wasm}"
VENV="${YANGTUO_VENV:-$HOME/.cache/yangtuo-venv}"
export YANGTUO_PYTHON="$VENV/bin/python"
export YANGTUO_MAKE_MODEL="$CARGO_TARGET_DIR/release/make-model"
export YANGTUO_CLI="$CARGO_TARGET_DIR/release/yangtuo"
# lavapipe's Vulkan loader warns without a runtime dir
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/yangtuo-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
WASM_BINDGEN_VERSION=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' bindings-wasm/Cargo.toml)

step() { printf '\n==> %s\n' "$*"; }
count_passed() { grep -Eo 'test result: ok\. [0-9]+ passed' "$1" | awk '{s+=$4} END {print s+0}'; }

step "system packages: lavapipe (Vulkan on the CPU) and Chromium (WebGPU tests)"
missing=()
# (installed, not just known to dpkg: a removed package keeps its config files and a status)
for p in mesa-vulkan-drivers chromium; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

step "rust: wasm32 target and wasm-bindgen-cli $WASM_BINDGEN_VERSION"
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
fi

step "python venv ($VENV) with the reference packages"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt

step "build: CLI and test tools"
cargo build --release -p yangtuo-cli -p yangtuo-tests --bins
# `cargo install --path cli` is how the README puts `yangtuo` on PATH (it reuses this build)
install_root=$(mktemp -d)
cargo install --locked --quiet --path cli --root "$install_root"
"$install_root/bin/yangtuo" --version
rm -rf "$install_root"

step "rust tests"
log=$(mktemp)
cargo test --release --workspace --exclude yangtuo-node --exclude yangtuo-python 2>&1 | tee "$log"
rust_passed=$(count_passed "$log")

step "python package: the abi3 wheel, tested in fresh venvs (Python 3.11, and 3.9 where present) with no cargo on PATH"
"$VENV/bin/pip" install -q --disable-pip-version-check "maturin>=1.9,<2"
rm -rf dist/python
"$VENV/bin/maturin" build --release -m bindings-python/Cargo.toml -o dist/python
wheel=$(ls dist/python/yangtuo-*.whl)
# a Python of version $1: on PATH, or one pyenv installed but did not select
python_of() {
  if "python$1" --version >/dev/null 2>&1; then command -v "python$1"; return; fi
  ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1" 2>/dev/null | tail -1
}
for v in 3.11 3.9; do
  py=$(python_of "$v")
  if [ -z "$py" ]; then echo "note: no Python $v here; the wheel is tested on the others"; continue; fi
  venv=$(mktemp -d)/venv
  "$py" -m venv "$venv"
  # Ray Serve (tests/test_ray.py: a local cluster, replicas, a killed one, autoscaling) on 3.11
  extras=langchain; [ "$v" = 3.11 ] && extras=langchain,ray
  # the bare PATH: nothing of Rust's can be found, as on a user's machine
  env PATH="$venv/bin:/usr/bin:/bin" "$venv/bin/pip" install -q --disable-pip-version-check "$wheel[$extras]" pytest openai jsonschema numpy
  env PATH="$venv/bin:/usr/bin:/bin" "$venv/bin/python" -m pytest -q bindings-python/tests
  rm -rf "$(dirname "$venv")"
done

step "node package"
(cd bindings-node && npm ci --no-audit --no-fund && npm run build \
  && node --test test/api.test.mjs test/openai.test.mjs test/requests.test.mjs test/runtime.test.mjs test/errors.test.mjs test/parity.test.mjs test/package.test.mjs)

step "browser package (wasm + WebGPU in headless Chromium)"
bash scripts/build-wasm.sh
(cd bindings-wasm && npm ci --no-audit --no-fund && node --test --test-concurrency=1 test/browser.test.mjs test/engine.test.mjs)

# the CLI, the Python wheel and the Node addon all build the CUDA backend by default; here
# its kernels also compile, through NVRTC, for the lent GPUs' architectures
step "CUDA backend: builds without a GPU or toolkit; kernels compile with NVRTC"
# NVRTC from pip, pinned to the CUDA 13.0 of the lent GPUs' driver (../shared/CUDA.md)
"$VENV/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-nvrtc==13.0.*"
YANGTUO_NVRTC_DIR=$(dirname "$(find "$VENV" -name 'libnvrtc.so.*' | head -1)")
export YANGTUO_NVRTC_DIR
cargo test --release -p yangtuo --features cuda cuda 2>&1 | tee "$log"
cuda_passed=$(count_passed "$log")
rm -f "$log"
[ "$cuda_passed" -gt 0 ] || { echo "the CUDA checks ran no test" >&2; exit 1; }

# a green run that ran nothing is a failure
[ "$rust_passed" -gt 100 ] || { echo "only $rust_passed rust tests ran" >&2; exit 1; }
step "all tests passed (rust: $rust_passed, cuda build checks: $cuda_passed, plus python, node and browser suites)"
