"""Reference data of the matrix-product kernel tests: `kernel_data.py OUT_DIR [TYPE ...]`.

For every case (ggml type, rows, cols) it writes, under OUT_DIR:
  <i>.w    the weight bytes exactly as GGUF stores them (row-major, `rows` rows)
  <i>.deq  those weights decoded by gguf-py, float32 [rows, cols]
  <i>.x    activations, float32 [N_MAX, cols]
  <i>.ref  x · deqᵀ computed in float64, [N_MAX, rows]
and cases.json listing {"type", "rows", "cols", "n_max", "base"} per case (`base` = <i>).

Weights: Q8_0, Q4_0, Q4_1 and BF16 are quantized from Gaussian rows by gguf-py itself;
gguf-py 0.19 has no K-quant encoder, so Q4_K and Q6_K are random valid blocks (every bit
pattern of quants and 6/8-bit sub-scales, f16 super-scales in [0.001, 0.01]).
"""

import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

from ggml_blocks import random_blocks

N_MAX = 70

# Rows are deliberately not multiples of 4, 16 or 64 (tile sizes); columns are whole blocks
# of each format (7 or 24 blocks of 32, 1 or 3 super-blocks of 256), and float formats also
# take a row length (100) that is not a multiple of the 8-wide GPU unit.
CASES = []
for name in ["f32", "f16", "bf16"]:
    CASES += [(name, 37, 100), (name, 101, 224), (name, 1003, 224)]
for name in ["q8_0", "q4_0", "q4_1"]:
    CASES += [(name, 37, 224), (name, 101, 768), (name, 1003, 224)]
for name in ["q4_k", "q6_k"]:
    CASES += [(name, 37, 768), (name, 101, 256), (name, 1003, 768)]

TYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q4_k": T.Q4_K, "q6_k": T.Q6_K}


def main():
    out = sys.argv[1]
    only = set(sys.argv[2:])  # type names to include; all when none are given
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240601)
    manifest = []
    for i, (name, rows, cols) in enumerate(CASES):
        qt = TYPES[name]
        if only and name not in only:
            continue
        if qt in (T.Q4_K, T.Q6_K):
            raw = random_blocks(qt, rows, cols, rng)
        else:
            w = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
            if qt == T.F32:
                raw = w
            elif qt == T.F16:
                raw = w.astype(np.float16)
            else:
                raw = gguf.quants.quantize(w, qt)
        raw = np.ascontiguousarray(raw)
        deq = np.ascontiguousarray(gguf.quants.dequantize(raw, qt), dtype=np.float32).reshape(rows, cols)
        x = rng.standard_normal((N_MAX, cols)).astype(np.float32)
        ref = x.astype(np.float64) @ deq.astype(np.float64).T
        base = os.path.join(out, str(i))  # the manifest names files relative to OUT_DIR
        raw.tofile(base + ".w")
        deq.tofile(base + ".deq")
        x.tofile(base + ".x")
        ref.astype(np.float64).tofile(base + ".ref")
        manifest.append({"type": name, "rows": rows, "cols": cols, "n_max": N_MAX, "base": str(i)})
    json.dump(manifest, open(os.path.join(out, "cases.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
