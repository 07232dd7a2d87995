#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), everything scripts/device-check.sh runs on a lent
# GPU machine, and stages it in .carry/ (git-ignored), compressed to fit the 64 MiB carry:
#   .carry/bin/yangtuo.xz             the CLI, built with `--features cuda`
#   .carry/bin/make-model.xz          random-model writer (tests crate)
#   .carry/bin/yangtuo-core-tests.xz  core's unit tests built with `--features cuda`
#   .carry/cache/yangtuo/*.ptx        the kernels compiled here by NVRTC 13.0 for compute_80
#                                     and compute_90 (device-check points XDG_CACHE_HOME here,
#                                     so the GPU machine needs no NVRTC; it still smoke-tests
#                                     its own NVRTC separately)
#   .gl/*.deb                         the Vulkan loader, for the wgpu comparison
# Needs: cargo (crates cached), pip (nvidia-cuda-nvrtc), apt (the loader .debs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/yangtuo-target}"
VENV="${YANGTUO_NVRTC_VENV:-$HOME/.cache/yt-venv}"
C=.carry
step() { printf '\n==> %s\n' "$*"; }

step "build: yangtuo CLI (--features cuda), make-model, core tests (--features cuda)"
cargo build --release -p yangtuo-cli --features cuda
cp "$CARGO_TARGET_DIR/release/yangtuo" /tmp/yangtuo-cuda.$$
cargo build --release -p yangtuo-tests --bin make-model
tests=$(cargo test --release -p yangtuo --features cuda --lib --no-run --message-format=json \
  | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "yangtuo":
        print(m["executable"])' | tail -1)
[ -x "$tests" ] || { echo "core test binary not found" >&2; exit 1; }

step "NVRTC (pip nvidia-cuda-nvrtc 13.0, matching the lent GPUs' driver 580)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-nvrtc==13.0.*"
NVRTC_DIR=$(dirname "$(find "$("$VENV/bin/python" -c 'import nvidia, os; print(nvidia.__path__[0])')" -name 'libnvrtc.so.*' | head -1)")
echo "NVRTC: $NVRTC_DIR"

step "stage .carry/"
rm -rf "$C"
mkdir -p "$C/bin" "$C/cache"
cp /tmp/yangtuo-cuda.$$ "$C/bin/yangtuo"
rm -f /tmp/yangtuo-cuda.$$
cp "$CARGO_TARGET_DIR/release/make-model" "$C/bin/make-model"
cp "$tests" "$C/bin/yangtuo-core-tests"
strip "$C"/bin/*
# the kernels' PTX, compiled (and checked) by the NVRTC unit test, into the carried cache
YANGTUO_NVRTC_DIR="$NVRTC_DIR" YANGTUO_PTX_OUT="$PWD/$C/cache" \
  "$C/bin/yangtuo-core-tests" backend::cuda::nvrtc::tests::kernels_compile_with_nvrtc --nocapture
ls "$C"/cache/yangtuo/*.ptx >/dev/null
xz -T0 -6 "$C"/bin/*
git rev-parse HEAD > "$C/commit" 2>/dev/null || true
git status --short > "$C/status" 2>/dev/null || true

step "Vulkan loader .debs (.gl/) for wgpu on the GPU machine"
grep -qxF '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

step "sizes (the working tree plus .carry and .gl must stay under 64 MiB)"
du -sh "$C" .gl
tree_kib=$(git ls-files -co --exclude-standard -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
carry_kib=$(du -sk "$C" .gl | awk '{s += $1} END {print s}')
echo "working tree ${tree_kib} KiB + carried ${carry_kib} KiB"
[ $((tree_kib + carry_kib)) -lt $((60 * 1024)) ] || { echo "too large to carry" >&2; exit 1; }
echo "ready: run scripts/device-check.sh on the GPU machine (see its header)"
