"""Read a GGUF with gguf-py's GGUFReader and compare it with the Hugging Face folder it was
made from:

    check_gguf.py FILE.gguf HF_DIR [--dequant-dir DIR]

Prints JSON: the file's metadata (every key, as gguf-py decodes it), its tensors (name,
ggml type, GGUF dims) and, per tensor, the error of gguf-py's decoding of it (Q and K rows
un-permuted with the inverse of llama.cpp's permutation) against the Hugging Face tensor:
relative Frobenius error, and the largest |error| over the largest |weight| of its block.
With --dequant-dir, also writes the decoded, un-permuted weights as a float32 Hugging Face
folder (the exact model the GGUF holds).
"""

import argparse
import json

import numpy as np
import gguf

from ggml_blocks import hf_to_gguf_name, load_hf, save_hf, unpermute


def plain(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("hf_dir")
    ap.add_argument("--dequant-dir")
    a = ap.parse_args()

    r = gguf.GGUFReader(a.gguf)
    meta = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        v = plain(field.contents())
        if isinstance(v, list) and len(v) > 8:
            v = {"len": len(v), "head": v[:8]}
        meta[name] = v

    cfg, hf = load_hf(a.hf_dir)
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    by_gguf = {hf_to_gguf_name(k): k for k in hf}

    tensors = []
    dequant = {}
    for t in r.tensors:
        qt = gguf.GGMLQuantizationType(int(t.tensor_type))
        dims = [int(d) for d in t.shape]  # GGUF order: columns first
        shape = list(reversed(dims))
        data = np.asarray(t.data)
        back = gguf.quants.dequantize(data, qt).astype(np.float32).reshape(shape)
        entry = {"name": t.name, "type": qt.name, "dims": dims}
        hf_name = by_gguf.get(t.name)
        if hf_name is not None:
            if t.name.endswith(".attn_q.weight"):
                back = unpermute(back, n_head)
            elif t.name.endswith(".attn_k.weight"):
                back = unpermute(back, n_kv)
            want = hf[hf_name].reshape(shape)
            diff = back - want
            entry["rel_err"] = float(np.linalg.norm(diff) / max(np.linalg.norm(want), 1e-30))
            block = gguf.GGML_QUANT_SIZES[qt][0]
            if block > 1:
                cols = shape[-1]
                d = np.abs(diff).reshape(-1, cols // block, block).max(axis=-1)
                m = np.abs(want).reshape(-1, cols // block, block).max(axis=-1)
                entry["block_err"] = float((d / np.maximum(m, 1e-30)).max())
            dequant[hf_name] = back.reshape(hf[hf_name].shape)
        tensors.append(entry)
    if a.dequant_dir:
        missing = sorted(set(hf) - set(dequant))
        assert not missing, f"tensors missing from the GGUF: {missing}"
        save_hf(a.dequant_dir, cfg, dequant)
    print(json.dumps({"metadata": meta, "tensors": tensors}))


if __name__ == "__main__":
    main()
