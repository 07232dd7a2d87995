"""Shared helpers of the quantization tests: encoders for the formats gguf-py cannot
quantize (Q4_K, Q6_K), random valid blocks, llama.cpp's Q/K row permutation, and
safetensors input/output.

Everything decodes through gguf-py (`gguf.quants.dequantize`), which is the reference: an
encoder here only has to produce valid blocks, and `encode` checks its own output against
gguf-py's decoder, so a packing mistake fails loudly instead of producing a silent
reference that agrees with nothing.
"""

import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

QK_K = 256

TYPES = {
    "f32": T.F32,
    "f16": T.F16,
    "bf16": T.BF16,
    "q8_0": T.Q8_0,
    "q4_0": T.Q4_0,
    "q4_1": T.Q4_1,
    "q4_k": T.Q4_K,
    "q5_k": T.Q5_K,
    "q6_k": T.Q6_K,
}


def f16_bytes(v):
    """f16 values [n] -> bytes [n, 2]."""
    return np.asarray(v, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def encode_q4_k(x):
    """Q4_K blocks of rows `x` [rows, cols] (cols a multiple of 256), ggml's layout:
    d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
    Each sub-block of 32 takes scale (max - min) / 15 and min -min (min clipped to <= 0),
    both re-quantized to 6 bits against the super-block's d = max scale / 63 and
    dmin = max min / 63 (a simpler search than ggml's make_qkx2_quants, same format)."""
    rows, cols = x.shape
    b = x.reshape(-1, 8, 32).astype(np.float32)
    nb = b.shape[0]
    mn = np.minimum(b.min(axis=-1), 0.0)
    mx = b.max(axis=-1)
    scale = (mx - mn) / 15.0
    mins = -mn
    d = (scale.max(axis=-1) / 63.0).astype(np.float16)
    dmin = (mins.max(axis=-1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32), dmin.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(d32[:, None] > 0, np.rint(scale / d32[:, None]), 0).clip(0, 63).astype(np.uint8)
        lm = np.where(dmin32[:, None] > 0, np.rint(mins / dmin32[:, None]), 0).clip(0, 63).astype(np.uint8)
        sc = d32[:, None] * ls.astype(np.float32)
        m = dmin32[:, None] * lm.astype(np.float32)
        q = np.where(sc[..., None] > 0, np.rint((b + m[..., None]) / sc[..., None]), 0).clip(0, 15).astype(np.uint8)
    scales = np.zeros((nb, 12), dtype=np.uint8)
    for j in range(8):
        if j < 4:
            scales[:, j] = ls[:, j]
            scales[:, j + 4] = lm[:, j]
        else:
            scales[:, j + 4] = (ls[:, j] & 0xF) | ((lm[:, j] & 0xF) << 4)
            scales[:, j - 4] |= (ls[:, j] >> 4) << 6
            scales[:, j] |= (lm[:, j] >> 4) << 6
    # sub-blocks 2i and 2i+1 share 32 bytes: low nibbles, then high nibbles
    q = q.reshape(nb, 4, 2, 32)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(nb, 128)
    blocks = np.concatenate([f16_bytes(d), f16_bytes(dmin), scales, qs], axis=1)
    return blocks.reshape(rows, cols // QK_K * 144)


def encode_q6_k(x):
    """Q6_K blocks of rows `x`: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8
    scales (one per 16 weights), f16 d. Scales are signed as ggml's: the value of largest
    magnitude in each group of 16 maps to -32."""
    rows, cols = x.shape
    b = x.reshape(-1, 16, 16).astype(np.float32)
    nb = b.shape[0]
    imax = np.abs(b).argmax(axis=-1)[..., None]
    vmax = np.take_along_axis(b, imax, axis=-1)[..., 0]
    s = vmax / -32.0
    smax = np.abs(s).max(axis=-1)
    d = (smax / 127.0).astype(np.float16)
    d32 = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(d32[:, None] > 0, np.rint(s / d32[:, None]), 0).clip(-128, 127).astype(np.int8)
        eff = d32[:, None] * ls.astype(np.float32)
        q = np.where(eff[..., None] != 0, np.rint(b / eff[..., None]), 0).clip(-32, 31).astype(np.int16) + 32
    L = q.reshape(nb, 2, 4, 32).astype(np.uint8)  # half, group of 32, l
    ql = np.zeros((nb, 2, 64), dtype=np.uint8)
    ql[:, :, :32] = (L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4)
    ql[:, :, 32:] = (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    blocks = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), ls.view(np.uint8).reshape(nb, 16), f16_bytes(d)], axis=1)
    return blocks.reshape(rows, cols // QK_K * 210)


def random_blocks(qt, rows, cols, rng):
    """Random bytes in every field, with f16 super-block scales in [0.001, 0.01]: valid
    blocks whose quants and sub-scales take every bit pattern (for kernel tests)."""
    block, size = gguf.GGML_QUANT_SIZES[qt]
    nb = rows * cols // block
    b = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)

    def put_f16(col):
        b[:, col:col + 2] = f16_bytes(rng.uniform(0.001, 0.01, size=nb))

    if qt in (T.Q4_K, T.Q5_K):
        put_f16(0)
        put_f16(2)  # d, dmin
    elif qt == T.Q6_K:
        put_f16(208)  # d
    else:
        raise ValueError(f"no random blocks for {qt.name}")
    return b.reshape(rows, cols // block * size)


def encode(x, qt):
    """Rows `x` [rows, cols] (f32) into ggml type `qt`: a numpy array gguf-py's writer takes
    (f32, f16, or uint8 bytes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qt == T.F32:
        return x
    if qt == T.F16:
        return x.astype(np.float16)
    if qt == T.Q4_K:
        out = encode_q4_k(x)
    elif qt == T.Q6_K:
        out = encode_q6_k(x)
    else:
        return gguf.quants.quantize(x, qt)
    # our own encoder: prove gguf-py decodes it to (nearly) the input
    back = gguf.quants.dequantize(out, qt)
    err = np.linalg.norm(back - x) / max(np.linalg.norm(x), 1e-30)
    limit = 0.12 if qt == T.Q4_K else 0.03
    assert err < limit, f"{qt.name} encoder: relative error {err:.3f} >= {limit}"
    return out


def decode(data, qt):
    """gguf-py's decoder, as float32 [rows, cols]."""
    if qt == T.F32:
        return np.asarray(data, dtype=np.float32)
    if qt == T.F16:
        return np.asarray(data).view(np.float16).astype(np.float32) if data.dtype == np.uint8 else data.astype(np.float32)
    return gguf.quants.dequantize(data, qt).astype(np.float32)


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (rows of Q or K)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    """The inverse of `permute`: GGUF row order back to Hugging Face's."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_hf(folder):
    """config.json and every tensor of a Hugging Face folder, as float32 numpy arrays."""
    from safetensors.numpy import load_file

    cfg = json.load(open(os.path.join(folder, "config.json")))
    tensors = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            for k, v in load_file(os.path.join(folder, f)).items():
                tensors[k] = v.astype(np.float32)
    return cfg, tensors


def save_hf(folder, cfg, tensors):
    """A Hugging Face folder of float32 safetensors (what the candle reference loads)."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    cfg = dict(cfg, torch_dtype="float32")
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"), indent=2)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))


def hf_to_gguf_name(name):
    """A Hugging Face llama tensor name to llama.cpp's (gguf-py's tensor name map)."""
    table = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in table:
        return table[name]
    parts = name.split(".")
    assert parts[0] == "model" and parts[1] == "layers", name
    layer = parts[2]
    rest = ".".join(parts[3:])
    sub = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
    }[rest]
    return f"blk.{layer}.{sub}"
