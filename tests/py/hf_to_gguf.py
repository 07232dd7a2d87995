"""A Hugging Face llama folder to GGUF, as llama.cpp's convert_hf_to_gguf.py does it for
`LlamaForCausalLM`, with gguf-py's GGUFWriter:

    hf_to_gguf.py HF_DIR OUT.gguf --type f16|q8_0|q4_0|q4_1|q4_k_m
                  [--dequant-dir DIR] [--override GGUF_NAME=TYPE ...]

* metadata: the keys TextModel/LlamaModel.set_gguf_parameters write (block count, context,
  embedding and feed-forward lengths, head counts, rope base and dimension count, rms eps,
  vocab size, file type, linear rope scaling), and the vocabulary of `tokenizer.model` as
  `_set_vocab_sentencepiece` writes it (padded with [PAD<id>] to vocab_size). Without a
  tokenizer.model a byte-fallback vocabulary (<unk>, <s>, </s>, <0x00>..<0xFF>, pieces) of
  vocab_size tokens is written, so the file still loads as a model with a tokenizer.
* tensors: llama.cpp's names; q_proj and k_proj rows permuted with LlamaModel.permute
  (n_head = num_key_value_heads for K); norms (1-D) in F32; matrices in `--type`, where
  `q4_k_m` is llama-quantize's Q4_K_M mix for a model this small: Q6_K for output,
  attn_v and ffn_down, Q4_K for the rest (K-quant blocks from ggml_blocks.encode, since
  gguf-py cannot quantize K-quants). A matrix whose rows are not whole blocks is F16.
  `--override` forces one tensor's type (a type without an encoder, such as q5_k, gets
  random valid blocks).
* `--dequant-dir`: a second Hugging Face folder whose weights are the GGUF's tensors decoded
  by gguf-py (`gguf.quants.dequantize`) and un-permuted back to Hugging Face row order, as
  float32 safetensors: the exact model the GGUF holds, for a float reference to run.

Prints a JSON summary: per tensor its GGUF type and relative quantization error.
"""

import argparse
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

from ggml_blocks import TYPES, decode, encode, hf_to_gguf_name, load_hf, permute, random_blocks, save_hf, unpermute

FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
}


def tensor_type(gguf_name, kind):
    if kind == "q4_k_m":
        if gguf_name == "output.weight" or gguf_name.endswith((".attn_v.weight", ".ffn_down.weight")):
            return T.Q6_K
        return T.Q4_K
    return TYPES[kind]


def set_vocab(w, folder, vocab_size):
    """`_set_vocab_sentencepiece` (tokenizer.model present) or a byte-fallback stand-in."""
    path = os.path.join(folder, "tokenizer.model")
    NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6
    if os.path.exists(path):
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor()
        sp.LoadFromFile(path)
        tokens, scores, types = [], [], []
        for i in range(sp.vocab_size()):
            tokens.append(sp.IdToPiece(i).encode("utf-8"))
            scores.append(sp.GetScore(i))
            t = NORMAL
            if sp.IsUnknown(i):
                t = UNKNOWN
            elif sp.IsControl(i):
                t = CONTROL
            elif sp.IsUnused(i):
                t = UNUSED
            elif sp.IsByte(i):
                t = BYTE
            types.append(t)
        bos, eos, unk = sp.bos_id(), sp.eos_id(), sp.unk_id()
    else:
        tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
        types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
        i = 0
        while len(tokens) < vocab_size:
            tokens.append(f"\u2581t{i}".encode())
            types.append(NORMAL)
            i += 1
        tokens, types = tokens[:vocab_size], types[:vocab_size]
        scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
        scores = scores[:vocab_size]
        bos, eos, unk = 1, 2, 0
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(UNUSED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_unk_token_id(unk)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("out")
    ap.add_argument("--type", default="f16", choices=sorted(FILE_TYPES))
    ap.add_argument("--dequant-dir")
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    overrides = dict(o.split("=", 1) for o in a.override)
    rng = np.random.default_rng(a.seed)

    cfg, hf = load_hf(a.hf_dir)
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    hidden = cfg["hidden_size"]

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(os.path.basename(os.path.normpath(a.hf_dir)))
    # TextModel.set_gguf_parameters
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(FILE_TYPES[a.type])
    # LlamaModel.set_gguf_parameters
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(hidden // n_head)
    rs = cfg.get("rope_scaling") or {}
    if rs.get("type", rs.get("rope_type")) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    set_vocab(w, a.hf_dir, cfg["vocab_size"])

    summary = []
    dequant = {}
    for hf_name in sorted(hf):
        data = hf[hf_name]
        name = hf_to_gguf_name(hf_name)
        if hf_name.endswith("q_proj.weight"):
            heads = n_head
        elif hf_name.endswith("k_proj.weight"):
            heads = n_kv
        else:
            heads = None
        if heads is not None:
            data = permute(data, heads)
        if data.ndim <= 1 or name.endswith("_norm.weight"):
            qt = T.F32
        elif name in overrides:
            qt = TYPES[overrides[name]]
        else:
            qt = tensor_type(name, a.type)
        block = gguf.GGML_QUANT_SIZES[qt][0]
        if data.ndim == 2 and data.shape[1] % block != 0:
            qt = T.F16
        if qt == T.Q5_K:
            stored = random_blocks(qt, *data.shape, rng)
        else:
            stored = encode(data, qt)
        w.add_tensor(name, stored, raw_dtype=qt if stored.dtype == np.uint8 else None)
        back = decode(stored, qt).reshape(data.shape)
        if heads is not None:
            back = unpermute(back, heads)
        dequant[hf_name] = back
        err = float(np.linalg.norm(back - hf[hf_name]) / max(np.linalg.norm(hf[hf_name]), 1e-30))
        summary.append({"name": name, "type": qt.name, "shape": list(data.shape), "rel_err": err})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if a.dequant_dir:
        save_hf(a.dequant_dir, cfg, dequant)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
