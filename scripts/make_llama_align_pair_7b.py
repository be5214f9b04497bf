#!/usr/bin/env python3
"""A 7B-shaped LLaMA pair for an end-to-end alignment run (issue 12, item 4).

    python3 scripts/make_llama_align_pair_7b.py DIR [--layers 32]

writes DIR/a/model.safetensors (one file), DIR/b/model-0000{1..3}-of-00003
.safetensors + index (B sharded in module order), a config.json for each, and
DIR/truth.perm.json (polymerge-perm/1: per group, the permutation that maps B
back onto A).

Shape: LLaMA-2-7B (d_model 4096, FFN 11008, 32 heads = 32 KV heads of 128,
32 layers, vocabulary 32000, untied LM head): 6,738,415,616 parameters,
13.5 GB of bf16 per model. A: random bf16 bit patterns (random sign and
mantissa, exponents for magnitudes in [2^-10, 2^-2), norm weights in [1, 2)),
one numpy PCG64 stream per tensor. B: A permuted in the residual stream,
every layer's heads, FFN units and V/O dimensions within heads (one
permutation shared by a layer's heads, a subset of the per-head symmetry
polymerge infers), then noise: the two lowest mantissa bits of every value
replaced by random ones (at most 3/128 relative, ~1% rms).

This is `make_llama_align_pair.py`'s construction at 7B scale with integer
bit operations instead of Gaussian floats, so generating runs near disk
speed (the Gaussian version would take about an hour at this size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_llama_align_pair import group_permutations, permuted_like_b, write_pair  # noqa: E402
from make_llama_align_pair import tensors as llama_tensors  # noqa: E402
from make_llama_align_pair import write_file as write_bf16_file  # noqa: E402

VOCAB, D, FFN, HEADS, HD = 32000, 4096, 11008, 32, 128


def tensors(layers: int):
    return llama_tensors(layers, d=D, ffn=FFN, heads=HEADS, kv=HEADS, vocab=VOCAB)


def a_bits(name: str, shape) -> np.ndarray:
    """A's tensor as bf16 bit patterns (uint16), deterministic per name."""
    g = np.random.default_rng([int.from_bytes(name.encode()[-8:].ljust(8, b"\0"), "little"), len(name), 42])
    u = g.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    if len(shape) == 1:  # [1, 2): exponent 127, random mantissa
        return (u & np.uint16(0x7F)) | np.uint16(127 << 7)
    exp = np.uint16(117) + ((u >> np.uint16(7)) & np.uint16(7))  # 2^-10 .. 2^-3
    return (u & np.uint16(0x807F)) | (exp << np.uint16(7))


def write_file(path: Path, items, produce) -> None:
    """`produce(name)` gives bf16 bit patterns, written as they are."""
    write_bf16_file(path, items, produce, encode=lambda x: np.ascontiguousarray(x).tobytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    items = tensors(args.layers)
    shapes = dict(items)
    rng = np.random.default_rng(1234)
    groups = group_permutations(rng, args.layers, D, HEADS, HD, FFN)

    def b_bits(name):
        x = permuted_like_b(a_bits(name, shapes[name]), name, groups, HD)
        g = np.random.default_rng([len(name), sum(name.encode()), 7])
        noise = g.integers(0, 4, size=x.shape, dtype=np.uint16)
        return (x & np.uint16(0xFFFC)) | noise

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
        "intermediate_size": FFN, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
        "num_hidden_layers": args.layers, "vocab_size": VOCAB, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    write_pair(args.dir, items, config, groups, lambda n: a_bits(n, shapes[n]), b_bits, write=write_file)


if __name__ == "__main__":
    main()
