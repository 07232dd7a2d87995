"""Quantize a float Hugging Face Llama folder into a GPTQ checkpoint laid out exactly as
AutoGPTQ writes it, plus a reference folder holding AutoGPTQ's dequantization of it.

    make_gptq.py SRC GPTQ_OUT REF_OUT --group-size 128|-1 --desc-act 0|1 --sym 0|1 --seed N

SRC is a folder from `Spec::write` (config.json + model.safetensors). For every linear layer
`model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}` the float `weight`
[out, in] is replaced by AutoGPTQ's four tensors:

    qweight  int32 [in/8, out]   8 nibbles per word along the input dim, low nibble first
    qzeros   int32 [G, out/8]    8 nibbles per word along the output dim, storing zero - 1
    scales   f16   [G, out]
    g_idx    int32 [in]          the group of each input column

with G = ceil(in / group_size) (1 for group_size -1). Quantization is plain round-to-nearest
per (output row, group) with GPTQ's quantizer ranges (asymmetric: [min(x, 0), max(x, 0)] in
15 steps; symmetric: zero 8); only the on-disk format matters here. With desc_act the
groups are taken over a random permutation of the input columns ("act order"), so g_idx is
not monotonic. Embeddings, norms and lm_head stay f16. quantize_config.json is written as
AutoGPTQ writes it; the weights file is named as AutoGPTQ names it.

REF_OUT gets the same config.json and a float32 model.safetensors whose linear weights are
AutoGPTQ's dequantization of the packed tensors (unpacking them again, independently of
the packing code above):

    W[out, in] = scales[g_idx[in], out] * (q[in, out] - (qzeros_nibble[g_idx[in], out] + 1))
"""

import argparse
import json
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

BITS = 4
MAXQ = 2**BITS - 1
LINEAR = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def quantize(w, group_size, desc_act, sym, rng):
    """RTN per (row, group). Returns intweight [in, out] in 0..15, scales [G, out] (f16),
    zeros [G, out] (ints 0..15) and g_idx [in]."""
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else group_size
    groups = (in_f + gs - 1) // gs
    if desc_act:
        order = rng.permutation(in_f)  # stands in for the Hessian-diagonal order
    else:
        order = np.arange(in_f)
    g_idx = np.empty(in_f, dtype=np.int32)
    g_idx[order] = np.arange(in_f) // gs
    scales = np.zeros((groups, out_f), dtype=np.float32)
    zeros = np.zeros((groups, out_f), dtype=np.int64)
    for g in range(groups):
        x = w[:, g_idx == g]
        xmin = np.minimum(x.min(axis=1), 0.0)
        xmax = np.maximum(x.max(axis=1), 0.0)
        if sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            xmin = np.where(xmin < 0, -xmax, xmin)
        both0 = (xmin == 0) & (xmax == 0)
        xmin[both0], xmax[both0] = -1.0, 1.0
        s = (xmax - xmin) / MAXQ
        scales[g] = s
        zeros[g] = np.full(out_f, (MAXQ + 1) // 2) if sym else np.round(-xmin / s)
    # AutoGPTQ keeps the scales in f16 and rounds the weights against them
    scales = scales.astype(np.float16)
    sc = scales.astype(np.float32)[g_idx]  # [in, out]
    zc = zeros[g_idx]  # [in, out]
    intweight = np.clip(np.round(w.T / sc + zc), 0, MAXQ).astype(np.uint32)
    return intweight, scales, zeros, g_idx


def pack(intweight, zeros):
    """AutoGPTQ's QuantLinear.pack, for 4 bits."""
    in_f, out_f = intweight.shape
    qweight = np.zeros((in_f // 32 * BITS, out_f), dtype=np.uint32)
    for row in range(qweight.shape[0]):
        for j in range(32 // BITS):
            qweight[row] |= intweight[row * 8 + j] << np.uint32(BITS * j)
    # v1 format: zeros minus one. (AutoGPTQ's own cast of -1 would smear ones over the
    # neighbouring nibbles; masking keeps it to its own nibble, which reads back as 16.)
    z = ((zeros - 1) & MAXQ).astype(np.uint32)
    qzeros = np.zeros((z.shape[0], z.shape[1] // 32 * BITS), dtype=np.uint32)
    for col in range(qzeros.shape[1]):
        for j in range(32 // BITS):
            qzeros[:, col] |= z[:, col * 8 + j] << np.uint32(BITS * j)
    return qweight.view(np.int32), qzeros.view(np.int32)


def dequantize(qweight, qzeros, scales, g_idx):
    """AutoGPTQ's dequantization (qlinear_cuda's torch path), in float32."""
    shifts = np.arange(0, 32, BITS, dtype=np.uint32)
    qw = qweight.view(np.uint32)
    weight = (qw[:, None, :] >> shifts[None, :, None]) & MAXQ  # [in/8, 8, out]
    weight = weight.reshape(-1, qw.shape[1]).astype(np.float32)  # [in, out]
    qz = qzeros.view(np.uint32)
    zeros = (qz[:, :, None] >> shifts[None, None, :]) & MAXQ  # [G, out/8, 8]
    zeros = zeros.reshape(qz.shape[0], -1).astype(np.float32) + 1  # [G, out]
    g = g_idx.astype(np.int64)
    w = scales.astype(np.float32)[g] * (weight - zeros[g])  # [in, out]
    return np.ascontiguousarray(w.T)  # [out, in]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("gptq_out")
    ap.add_argument("ref_out")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--desc-act", type=int, default=0)
    ap.add_argument("--sym", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    src = load_file(os.path.join(a.src, "model.safetensors"))
    for d in (a.gptq_out, a.ref_out):
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(a.src, "config.json"), os.path.join(d, "config.json"))

    gptq, ref = {}, {}
    for name in sorted(src):
        t = src[name]
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix and any(prefix.endswith(l) for l in LINEAR) and ".layers." in prefix:
            w = t.astype(np.float32)
            intweight, scales, zeros, g_idx = quantize(w, a.group_size, bool(a.desc_act), bool(a.sym), rng)
            qweight, qzeros = pack(intweight, zeros)
            gptq[prefix + ".qweight"] = qweight
            gptq[prefix + ".qzeros"] = qzeros
            gptq[prefix + ".scales"] = scales
            gptq[prefix + ".g_idx"] = g_idx
            ref[name] = dequantize(qweight, qzeros, scales, g_idx)
            # the packing round-trips: the reference is what was quantized
            want = scales.astype(np.float32)[g_idx] * (intweight.astype(np.float32) - zeros[g_idx].astype(np.float32))
            assert np.array_equal(ref[name], np.ascontiguousarray(want.T)), name
        else:
            gptq[name] = t.astype(np.float16)
            ref[name] = t.astype(np.float32)

    base = "gptq_model-4bit-%sg" % (a.group_size if a.group_size != -1 else "none")
    save_file(gptq, os.path.join(a.gptq_out, base + ".safetensors"), metadata={"format": "pt"})
    qc = {
        "bits": BITS,
        "group_size": a.group_size,
        "damp_percent": 0.01,
        "desc_act": bool(a.desc_act),
        "static_groups": False,
        "sym": bool(a.sym),
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": base,
    }
    with open(os.path.join(a.gptq_out, "quantize_config.json"), "w") as f:
        json.dump(qc, f, indent=2)
    save_file(ref, os.path.join(a.ref_out, "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
