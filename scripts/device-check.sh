#!/usr/bin/env bash
# Checks and measures the cuda backend on a lent GPU machine (H100/H200, driver 580 =
# CUDA 13.0). Runs in the repository root from what scripts/device-prepare.sh built and
# staged on the development machine; nothing is downloaded. Prepare, then run it with the
# device tool exactly as:
#
#   bash scripts/device-prepare.sh                                   # here, once per change
#   run(command="bash scripts/device-check.sh", carry=[".carry", ".gl"], timeout_s=560)
#
# It takes about 6-8 minutes (later steps are skipped when time runs short) and writes full
# logs under $OUT; the reply's tail ends with one summary table.
#   0. the machine; unpack the binaries; start writing a Llama-2-7B-shaped f16 model with 6
#      layers in the background (make-model is single-threaded: 32 layers take too long)
#   1. device-to-device copy bandwidth through torch (the decode ceiling)
#   2. the core unit tests on the GPU: a random model in every weight format (f32 f16 bf16
#      q8_0 q4_0 q4_1 gptq4 q4_k q6_k, odd widths) against the CPU backend: prefill, 24
#      decode steps (graphs, split attention), a second prefill; again with tensor cores and
#      graphs off; plus NVRTC on this machine compiling the kernels
#   3. CLI parity on random models (make-model): `yangtuo logits` cuda vs cpu, compared with
#      numpy (max|Δ| ≤ 1e-3·max|logit| for f32, 1e-2 for f16/bf16, 1e-1 for GGUF quantized
#      models, where the CPU rounds activations to 8 bits, and for one token so does cuda),
#      and `yangtuo generate --ids ... --max-tokens 32 --json` with identical ids on cuda
#      and cpu (a random model may stop early at its EOS id: both must stop at the same place)
#   4. `yangtuo bench` pp512 / tg128 (3 repetitions) on the Llama-2-7B-shaped model, f16,
#      Q4_0 and Q4_K (`yangtuo quantize`, the four in parallel), with 2 and 6 layers
#      (config.json trimmed; the file keeps 6), extrapolated per layer to 32 layers; on cuda,
#      and on wgpu through Vulkan (YT_WGPU=0 skips it; it starts only before 400 s) when the
#      carried loader finds the driver; there also the wgpu fusion tests (fused = unfused
#      bits, 8 dispatches per decode layer), Q4_0 with fusion off (YANGTUO_WGPU_FUSE=0) and
#      batched decode of 1, 8 and 32 sequences (--parallel), and profiles of a decode token
#      by kernel (bench --profile, 6 layers): F16 and Q4_0 fused, Q4_0 with the norms apart
#      (YANGTUO_WGPU_FUSE=epilogues), unfused, and unfused with int8 x (YANGTUO_WGPU_Q8X=1);
#      Q4_K unfused and with int8 x
#      and on cuda each kernel's duration under Nsight Compute (ncu, where it is installed)
#   5. the table: backend, type, layers, pp512 tok/s, tg128 tok/s, weight GB per token,
#      achieved GB/s (weight bytes per token × tg tok/s) and % of the copy bandwidth
set -uo pipefail
ROOT=$PWD
OUT=${OUT:-/tmp/yt-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/device-check.log") 2>&1
T0=$(date +%s)
el() { echo $(($(date +%s) - T0)); }
step() { printf '\n==> [%ss] %s\n' "$(el)" "$*"; }
before() { [ "$(el)" -lt "$1" ]; } # still under $1 seconds
W=/tmp/yt
B=$W/bin
M=$W/models
L=$W/logs # per-command logs, packed into $OUT/logs.tar.gz at the end (8 files come back)
mkdir -p "$B" "$M" "$L"
export RUST_LOG=${RUST_LOG:-info} RUST_BACKTRACE=1
# the PTX compiled at prepare time (this machine then needs no NVRTC for the CLI runs)
export XDG_CACHE_HOME=$ROOT/.carry/cache
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

step "machine"
nvidia-smi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.memory,driver_version --format=csv
nvcc --version 2>/dev/null | tail -2
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
nproc
free -g | head -2
df -h /tmp | tail -1
cat .carry/commit 2>/dev/null
python3 - <<'EOF'
import lzma, os, shutil, glob
for f in glob.glob('.carry/bin/*.xz'):
    dst = os.path.join('/tmp/yt/bin', os.path.basename(f)[:-3])
    with lzma.open(f) as src, open(dst, 'wb') as out:
        shutil.copyfileobj(src, out)
    os.chmod(dst, 0o755)
print(sorted(os.listdir('/tmp/yt/bin')))
EOF
SP=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)
NVRTC_DIR=$(dirname "$(find "$SP/nvidia" -name 'libnvrtc.so.*' 2>/dev/null | head -1)" 2>/dev/null)
echo "NVRTC here: $NVRTC_DIR ($(ls "$NVRTC_DIR" 2>/dev/null | grep nvrtc | tr '\n' ' '))"

# the big model for step 4, written while steps 1-3 run
(
  "$B/make-model" --out "$M/l6-f16" --shape llama2-7b --layers 6 --dtype f16 --seed 7 &&
    mkdir -p "$M/l2-f16" && ln -sf "$M/l6-f16/model.safetensors" "$M/l2-f16/model.safetensors" &&
    python3 -c "import json; c = json.load(open('$M/l6-f16/config.json')); c['num_hidden_layers'] = 2; json.dump(c, open('$M/l2-f16/config.json', 'w'))" &&
    {
      for l in 2 6; do
        for q in q4_0 q4_k; do "$B/yangtuo" quantize "$M/l$l-f16" "$M/l$l-$q.gguf" --type $q & done
      done
      wait
    } &&
    echo "big models ready at $(el)s"
) >"$L/make-7b.log" 2>&1 &
BIG=$!

step "1. device-to-device copy bandwidth (torch, 2 GiB buffers, median of 20)"
python3 - <<'EOF' | tee "$L/copy-bw.txt"
import torch
n = 2 << 30
a = torch.empty(n, dtype=torch.uint8, device='cuda'); a.random_(0, 255)
b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
ts = []
for _ in range(20):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); b.copy_(a); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
ts.sort(); t = ts[len(ts) // 2]
print(f"copy_bw_GBps {2 * n / t / 1e9:.1f}  (read + write, median {t * 1e3:.3f} ms for {n >> 20} MiB)")
EOF
COPY_BW=$(awk '/copy_bw_GBps/ {print $2}' "$L/copy-bw.txt")
note "copy bandwidth: ${COPY_BW:-?} GB/s (read + write)"

step "2. core unit tests on the GPU (every op and format vs the CPU backend)"
timeout 240 "$B/yangtuo-core-tests" backend::cuda --nocapture --test-threads=1 2>&1 | tee "$L/unit.log" | grep -vE '^\[|^$'
grep -q "skipped: no CUDA device" "$L/unit.log" && note "unit tests: NO CUDA DEVICE FOUND"
grep -q "test result: ok" "$L/unit.log" && note "unit tests (cuda vs cpu, all formats): ok" || note "unit tests (cuda vs cpu, all formats): FAILED (see unit.log)"
# every op against f64 loops, the f16 KV cache's store and attention included (not yet run on a GPU)
timeout 120 "$B/yangtuo-core-tests" backend::conformance::cuda --nocapture --test-threads=1 2>&1 | tee "$L/conformance.log" | grep -vE '^\[|^$'
grep -q "test result: ok. 1 passed" "$L/conformance.log" && note "op conformance (f32 and f16 KV caches): ok" || note "op conformance: FAILED (see conformance.log)"
YANGTUO_CUDA_MMA=0 YANGTUO_CUDA_GRAPH=0 YANGTUO_TEST_FORMATS=F16,Q4_0,Q4K,Gptq4 timeout 120 \
  "$B/yangtuo-core-tests" backend::cuda::tests::forward --nocapture 2>&1 | tee "$L/unit-nomma-nograph.log" | grep -vE '^\[|^$'
grep -q "test result: ok" "$L/unit-nomma-nograph.log" && note "unit tests, f32 prefill kernel and no graphs: ok" || note "unit tests, f32 prefill kernel and no graphs: FAILED"
if [ -n "$NVRTC_DIR" ]; then
  YANGTUO_NVRTC_DIR=$NVRTC_DIR timeout 60 "$B/yangtuo-core-tests" backend::cuda::nvrtc::tests::kernels_compile_with_nvrtc --nocapture 2>&1 | tee "$L/nvrtc.log" | grep -E "compute_|result|panicked"
  # and the whole path (compile here, JIT, run) once without the carried PTX
  mkdir -p "$W/fresh-cache"
  XDG_CACHE_HOME=$W/fresh-cache YANGTUO_NVRTC_DIR=$NVRTC_DIR YANGTUO_TEST_FORMATS=Q4_0 timeout 90 \
    "$B/yangtuo-core-tests" backend::cuda::tests::forward --nocapture 2>&1 | tee -a "$L/nvrtc.log" | grep -E "cuda |Q4_0|result"
  [ "$(grep -c "test result: ok" "$L/nvrtc.log")" -ge 2 ] && note "NVRTC on this machine compiles and runs the kernels: ok" || note "NVRTC on this machine: FAILED (see nvrtc.log)"
fi

step "3. CLI parity on random models: logits and greedy ids, cuda vs cpu"
ids() { python3 -c "import random; random.seed($3); print(','.join(str(random.randrange(3, $1)) for _ in range($2)))"; }
cmp_npy() { # cuda.npy cpu.npy tolerance label
  python3 - "$@" <<'EOF'
import sys, numpy as np
tol, label = float(sys.argv[3]), sys.argv[4]
try:
    a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
except Exception as e:
    print(f"FAIL {label}: {e}"); sys.exit()
ok = a.shape == b.shape and np.isfinite(a).all()
err = float(np.abs(a - b).max() / np.abs(b).max()) if ok else float('inf')
ok = ok and err <= tol
print(f"{'ok  ' if ok else 'FAIL'} {label}: logits {a.shape} max|Δ|/max|logit| = {err:.2e} (tolerance {tol:g})")
EOF
}
parity() { # model tolerance label [logit ids] [generate]; $KV: both backends' KV cache dtype
  local m=$1 tol=$2 label=$3 n=${4:-40} gen=${5:-yes}
  local v
  v=$(python3 -c "import json; print(json.load(open('$m/config.json'))['vocab_size'])" 2>/dev/null || echo 256)
  local I
  I=$(ids "$v" "$n" 11)
  local tag
  tag=$(echo "$label" | tr -c 'a-zA-Z0-9_.-' '_')
  for be in cuda cpu; do
    timeout 120 "$B/yangtuo" logits -m "$m" --backend $be ${KV:+--kv-cache-dtype "$KV"} --ids "$I" --out "$W/$tag-$be.npy" >"$L/p-$tag-$be.log" 2>&1 ||
      echo "logits on $be failed: $(tail -2 "$L/p-$tag-$be.log")"
  done
  cmp_npy "$W/$tag-cuda.npy" "$W/$tag-cpu.npy" "$tol" "$label" | tee -a "$SUMMARY"
  if [ "$gen" = yes ]; then
    local P
    P=$(ids "$v" 8 12)
    for be in cuda cpu; do
      timeout 120 "$B/yangtuo" generate -m "$m" --backend $be ${KV:+--kv-cache-dtype "$KV"} --ids "$P" --max-tokens 32 --json 2>>"$L/p-$tag-$be.log" | tail -1 >"$W/$tag-$be.json"
    done
    python3 - "$W/$tag-cuda.json" "$W/$tag-cpu.json" "$label" <<'EOF' | tee -a "$SUMMARY"
import sys, json
try:
    a, b = (json.load(open(f))['ids'] for f in sys.argv[1:3])
except Exception as e:
    print(f"FAIL {sys.argv[3]}: generate: {e}"); sys.exit()
same = a == b
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
# (a random model may stop early at its EOS id; both must stop at the same place)
print(f"{'ok  ' if same and a else 'FAIL'} {sys.argv[3]}: greedy ids (max 32) {'identical' if same else f'differ from position {first}'}, {len(a)} vs {len(b)}")
EOF
  fi
}
mk() { [ -d "$M/$1" ] || "$B/make-model" --out "$M/$1" "${@:2}" >/dev/null 2>&1; }
mk mha-f32 --hidden 256 --intermediate 688 --layers 3 --heads 8 --kv-heads 8 --vocab 1000 --seed 1
mk gqa-f16 --hidden 512 --intermediate 1376 --layers 3 --heads 8 --kv-heads 2 --vocab 2000 --dtype f16 --seed 2
mk odd-f32 --hidden 80 --intermediate 200 --layers 2 --heads 5 --kv-heads 5 --vocab 1003 --seed 4
mk odd-f16 --hidden 72 --intermediate 132 --layers 2 --heads 6 --kv-heads 2 --vocab 517 --dtype f16 --seed 5
mk bf16-tied --hidden 256 --intermediate 512 --layers 2 --heads 4 --kv-heads 4 --vocab 700 --dtype bf16 --tie --seed 3
mk tiny-f16 --shape tinyllama --layers 2 --dtype f16 --seed 6
parity "$M/mha-f32" 1e-3 "mha f32"
parity "$M/gqa-f16" 1e-2 "gqa f16"
parity "$M/odd-f32" 1e-3 "odd f32 (hidden 80, vocab 1003)"
parity "$M/odd-f16" 1e-2 "odd f16 gqa (hidden 72, head_dim 12)"
parity "$M/bf16-tied" 1e-2 "bf16 tied"
parity "$M/tiny-f16" 1e-2 "tinyllama-shaped f16 (2 layers), 600 ids" 600
# CUDA's f16 KV cache (compiled and NVRTC-checked, never run before a GPU session), against the CPU's
KV=f16 parity "$M/tiny-f16" 1e-2 "tinyllama-shaped f16, f16 KV caches, 600 ids" 600
# the f16 model: the CPU reference rounds activations to f16 (~1e-3), as in the other f16 rows
YANGTUO_CUDA_MMA=0 parity "$M/gqa-f16" 1e-2 "gqa f16, f32 prefill kernel" 40 no
YANGTUO_CUDA_GRAPH=0 parity "$M/gqa-f16" 1e-2 "gqa f16, no graphs"
for q in q4_0 q4_1 q8_0 q4_k q6_k; do
  before 330 || break
  [ -f "$M/gqa-$q.gguf" ] || "$B/yangtuo" quantize "$M/gqa-f16" "$M/gqa-$q.gguf" --type $q >>"$L/quantize.log" 2>&1
  # loose: the CPU quantizes activations to 8 bits for these (the unit tests of step 2 hold
  # the same formats to CPU results on identical f32 activations)
  parity "$M/gqa-$q.gguf" 1e-1 "gqa $q gguf (mixed with f16 where widths don't divide)" 40 no
  # one id: the one-token (decode) products, on 8-bit activations on both backends
  case $q in q4_0 | q4_k) parity "$M/gqa-$q.gguf" 1e-1 "gqa $q gguf, one token (decode kernels)" 1 no ;; esac
done

step "4. bench (pp512, tg128) on the Llama-2-7B-shaped model"
if before 420; then
  while kill -0 $BIG 2>/dev/null && before 400; do sleep 5; done
fi
cat "$L/make-7b.log"
BENCH=$OUT/bench.jsonl
: >"$BENCH"
bench() { # backend model type layers [start no later than this many seconds]
  local be=$1 m=$2 ty=$3 l=$4 last=${5:-470} label=${BE_LABEL:-$1}
  [ -e "$m" ] || return
  before "$last" || { echo "skipped $be $ty $l layers: out of time"; return; }
  echo "-- $be $ty $l layers"
  local left=$((490 - $(el)))
  timeout $((left < 120 ? left : 120)) "$B/yangtuo" bench -m "$m" --backend "$be" -p 512 -n 128 -r 3 --json 2>>"$L/bench-$be.log" |
    python3 -c "import sys, json
for l in sys.stdin:
    j = json.loads(l); j.update(be='$label', ty='$ty', layers=$l); print(json.dumps(j))" | tee -a "$BENCH"
}
for l in 2 6; do
  bench cuda "$M/l$l-f16" F16 $l
  bench cuda "$M/l$l-q4_0.gguf" Q4_0 $l
  bench cuda "$M/l$l-q4_k.gguf" Q4_K $l
done
# where a cuda decode token's time goes: Nsight Compute's duration of every kernel (no
# counters, clocks as found) over a short decode of the 6-layer Q4_0 model, by kernel name
if command -v ncu >/dev/null && before 340 && [ -e "$M/l6-q4_0.gguf" ]; then
  YANGTUO_CUDA_GRAPH=0 timeout 60 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    --print-units base --log-file "$L/ncu-cuda-q4_0.csv" "$B/yangtuo" bench -m "$M/l6-q4_0.gguf" \
    --backend cuda -p 0 -n 4 -r 1 >"$L/ncu-cuda-q4_0.out" 2>&1
  # 5 decode forwards (the warm-up's one and tg4); the warm-up's 2-token prompt is counted too
  python3 scripts/device/ncu_table.py "$L/ncu-cuda-q4_0.csv" 5 | sed 's/^/cuda ncu l6 q4_0: /' >>"$SUMMARY"
fi
# wgpu through Vulkan, with the carried loader (YT_WGPU=0 skips it)
if [ "${YT_WGPU:-1}" != 1 ]; then
  echo "wgpu bench skipped (YT_WGPU=0)"
elif ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
if [ "${YT_WGPU:-1}" != 1 ]; then
  :
elif WGPU_BACKEND=vulkan timeout 60 "$B/yangtuo" logits -m "$M/odd-f16" --backend wgpu --ids 1,2,3 --out "$W/wgpu-probe.npy" >"$L/wgpu-probe.log" 2>&1; then
  grep -h "device:" "$L/wgpu-probe.log" | tail -1
  # the fused decode kernels (matvec.wgsl's variants) give the unfused bits on this GPU too,
  # a decode layer is eight dispatches, decoding ahead gives the bits of argmax then forward,
  # and the op suite (a batch's decode rows with the bits of each row alone) passes
  WGPU_BACKEND=vulkan timeout 90 "$B/yangtuo-core-tests" backend::wgpu::tests backend::conformance::wgpu \
    --test-threads=1 >"$L/wgpu-fusion.log" 2>&1
  grep -q "test result: ok\." "$L/wgpu-fusion.log" && note "wgpu tests (fusion, dispatches, decoding ahead, op suite): ok" || note "wgpu tests: FAILED (see wgpu-fusion.log)"
  for l in 2 6; do
    # (later than the cuda rows, so that the whole run stays under 8 minutes)
    WGPU_BACKEND=vulkan bench wgpu "$M/l$l-f16" F16 $l 400
    WGPU_BACKEND=vulkan bench wgpu "$M/l$l-q4_0.gguf" Q4_0 $l 400
  done
  # where a decode token's time goes on this GPU (bench --profile): each kernel's device
  # time and weight bandwidth, the device's gaps between kernels, and the unprofiled wall
  # clock (the rest is the host). Q4_0 four ways: fused as users run it; the norms apart
  # (10 dispatches a layer instead of 8, but no workgroup finds the norm again: on lavapipe
  # that made decode 2x faster); unfused; unfused with int8 x (matvec_q8.wgsl's integer
  # dots against the float units, product by product)
  profile() { # label model [env...]
    local label=$1 m=$2
    shift 2
    before 450 && [ -e "$m" ] || return
    env "$@" WGPU_BACKEND=vulkan timeout 40 "$B/yangtuo" bench -m "$m" --backend wgpu -p 0 -n 32 \
      -r 1 --profile 2>>"$L/bench-wgpu.log" >"$L/profile-$label.txt"
    sed -n '/^device time per decode token/,/^wall clock/p' "$L/profile-$label.txt" |
      sed "s/^/wgpu profile $label: /" >>"$SUMMARY"
  }
  profile q4_0-fused "$M/l6-q4_0.gguf"
  profile f16-fused "$M/l6-f16"
  profile q4_0-epilogues "$M/l6-q4_0.gguf" YANGTUO_WGPU_FUSE=epilogues
  profile q4_0-unfused "$M/l6-q4_0.gguf" YANGTUO_WGPU_FUSE=0
  profile q4_0-int8x "$M/l6-q4_0.gguf" YANGTUO_WGPU_FUSE=0 YANGTUO_WGPU_Q8X=1
  profile q4_k-unfused "$M/l6-q4_k.gguf" YANGTUO_WGPU_FUSE=0
  profile q4_k-int8x "$M/l6-q4_k.gguf" YANGTUO_WGPU_FUSE=0 YANGTUO_WGPU_Q8X=1
  # what fusion gained: the same model with every op dispatched on its own
  for l in 2 6; do
    BE_LABEL=wgpu-unfused YANGTUO_WGPU_FUSE=0 WGPU_BACKEND=vulkan bench wgpu "$M/l$l-q4_0.gguf" Q4_0 $l 430
  done
  # what decoding ahead gained: each token read back before the next one's forward is recorded
  BE_LABEL=wgpu-no-ahead YANGTUO_WGPU_AHEAD=0 WGPU_BACKEND=vulkan bench wgpu "$M/l6-q4_0.gguf" Q4_0 6 440
  # batched decode on wgpu: 1, 8 and 32 sequences stepping together (the MULTI matvec,
  # a unit of weights decoded once per 8 tokens), aggregate and per-sequence tok/s
  if before 450 && [ -e "$M/l2-q4_0.gguf" ]; then
    WGPU_BACKEND=vulkan timeout 60 "$B/yangtuo" bench -m "$M/l2-q4_0.gguf" --backend wgpu -p 16 -n 32 -r 2 \
      --parallel 1,8,32 2>>"$L/bench-wgpu.log" | tee "$L/bench-wgpu-parallel.txt"
    grep -E "x(1|8|32) aggregate" "$L/bench-wgpu-parallel.txt" | sed 's/^/wgpu Q4_0 2 layers: /' >>"$SUMMARY"
  fi
else
  note "wgpu through Vulkan unavailable: $(tail -1 "$L/wgpu-probe.log")"
fi

step "5. summary"
python3 - "$BENCH" "${COPY_BW:-0}" <<'EOF' | tee -a "$SUMMARY"
import sys, json, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bw = float(sys.argv[2])
d, h, v = 4096, 11008, 32000                 # Llama-2-7B
layer = 4 * d * d + 3 * d * h                # weights one decode token reads per layer
bpp = {'F16': 2.0, 'Q4_0': 18 / 32, 'Q4_K': 144 / 256}
def gb_per_token(ty, layers): return (layers * layer + v * d) * bpp[ty] / 1e9   # + the output matrix
r = collections.defaultdict(dict)
for j in rows:
    r[(j['be'], j['ty'])][(j['layers'], j['test'][:2])] = j['tok_s']
print()
print("Llama-2-7B shape (dim 4096, ffn 11008, vocab 32000), random weights. 2 and 6 layers measured;")
print("32 extrapolated: time per token = t(2) + 30 * (t(6) - t(2)) / 4. GB/s = weight bytes per token * tg tok/s.")
print()
print(f"| backend | type | layers | pp512 tok/s | tg128 tok/s | weights GB/token | achieved GB/s | % of copy bw ({bw:.0f} GB/s) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for (be, ty), m in sorted(r.items()):
    for layers in (2, 6, 32):
        if layers == 32:
            try:
                tg = 1 / (1 / m[(2, 'tg')] + 30 * (1 / m[(6, 'tg')] - 1 / m[(2, 'tg')]) / 4)
                pp = 1 / (1 / m[(2, 'pp')] + 30 * (1 / m[(6, 'pp')] - 1 / m[(2, 'pp')]) / 4)
            except KeyError:
                continue
            label = "32 (extrapolated)"
        else:
            tg, pp = m.get((layers, 'tg')), m.get((layers, 'pp'))
            if tg is None: continue
            label = str(layers)
        gb = gb_per_token(ty, layers)
        ach = gb * tg
        pct = f"{100 * ach / bw:.0f}%" if bw else "?"
        print(f"| {be} | {ty} | {label} | {pp:.0f} | {tg:.1f} | {gb:.2f} | {ach:.0f} | {pct} |")
EOF
tar -czf "$OUT/logs.tar.gz" -C "$W" logs bench 2>/dev/null || tar -czf "$OUT/logs.tar.gz" -C "$W" logs
echo
echo "==== checks ===="
grep -E "^(ok|FAIL)|unit tests|NVRTC|wgpu|copy bandwidth" "$SUMMARY" | grep -v "^wgpu profile" # profiles: summary.txt
echo "done in $(el)s; $OUT: device-check.log (everything), summary.txt, bench.jsonl, logs.tar.gz"
exec 1>&- 2>&- # let tee finish the log
sleep 1
