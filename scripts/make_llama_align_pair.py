#!/usr/bin/env python3
"""A LLaMA-style pair for the alignment benchmark (scripts/bench_align_llama.sh).

    python3 scripts/make_llama_align_pair.py DIR [--layers 8] [--noise 0.05]

writes

    DIR/a/model.safetensors + config.json               one file, bf16
    DIR/b/model-0000{1..3}-of-00003.safetensors         three shards, bf16
    DIR/b/model.safetensors.index.json + config.json
    DIR/truth.perm.json                                  polymerge-perm/1: the
        permutation per group that maps B back onto A

Shape: TinyLlama-like widths: vocab 32000, d_model 2048, FFN 5632, 16 heads,
4 KV heads (head_dim 128), untied lm_head, 8 layers: 491,792,384 parameters.

A: LLaMA's init (N(0, 0.02²) for matrices, RMSNorm weights 1 + N(0, 0.1²)
so that the residual group has something to match there too).
B: A permuted in every group polymerge infers for this architecture
(residual, per layer heads / query_heads / vo_dims / ffn; no Q/K dims under
RoPE), plus Gaussian noise of `--noise` × each tensor's std: a *permuted
noisy copy* rather than an independent init, so the benchmark also checks
that alignment recovers the permutation at this scale (an independent init
has no right answer to compare with, and its sweeps cost the same).

numpy only; written tensor by tensor (memory: a few tensors), bf16 by
round-to-nearest-even of the f32 values.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

VOCAB, D, FFN, HEADS, KV, LAYERS = 32000, 2048, 5632, 16, 4, 8
HD = D // HEADS


def tensors(layers: int, d=D, ffn=FFN, heads=HEADS, kv=KV, vocab=VOCAB):
    """[(name, shape)] of a LLaMA of these widths, in module order."""
    hd = d // heads
    out = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (heads * hd, d)),
            (p + "self_attn.k_proj.weight", (kv * hd, d)),
            (p + "self_attn.v_proj.weight", (kv * hd, d)),
            (p + "self_attn.o_proj.weight", (d, heads * hd)),
            (p + "mlp.gate_proj.weight", (ffn, d)),
            (p + "mlp.up_proj.weight", (ffn, d)),
            (p + "mlp.down_proj.weight", (d, ffn)),
            (p + "input_layernorm.weight", (d,)),
            (p + "post_attention_layernorm.weight", (d,)),
        ]
    out += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    return out


def bf16_bytes(x: np.ndarray) -> bytes:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r.tobytes()


def head_index(kv, grp, dim):
    g, hd = len(grp), len(dim)
    return ((kv[:, None, None] * g + grp[None, :, None]) * hd + dim[None, None, :]).reshape(-1)


def permuted_like_b(x: np.ndarray, name: str, groups: dict, hd: int) -> np.ndarray:
    """A's tensor `name` moved by `groups` (new unit u = A's unit q[u]):
    residual, and per layer heads, query heads per KV head (absent: one),
    within-head V/O dimensions and FFN units."""
    r = groups["residual"]
    if name.endswith("norm.weight"):
        return x[r]
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return x[:, r]
    i = name.split(".")[2]
    ident, zero = np.arange(hd), np.zeros(1, dtype=np.int64)
    kh, vo, f = (groups[f"layers.{i}.{k}"] for k in ("heads", "vo_dims", "ffn"))
    qg = groups.get(f"layers.{i}.query_heads", zero)
    if "q_proj" in name:
        return x[head_index(kh, qg, ident)][:, r]
    if "k_proj" in name:
        return x[head_index(kh, zero, ident)][:, r]
    if "v_proj" in name:
        return x[head_index(kh, zero, vo)][:, r]
    if "o_proj" in name:
        return x[r][:, head_index(kh, qg, vo)]
    if "gate_proj" in name or "up_proj" in name:
        return x[f][:, r]
    if "down_proj" in name:
        return x[r][:, f]
    raise ValueError(name)


def write_file(path: Path, items, produce, encode=bf16_bytes):
    """items: [(name, shape)]; produce(name) -> an array that `encode` turns
    into the tensor's bf16 bytes (default: f32 values, rounded). Header first."""
    header, off = {}, 0
    for name, shape in items:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, _ in items:
            f.write(encode(produce(name)))


def group_permutations(rng, layers: int, d: int, heads: int, hd: int, ffn: int, query_heads=None) -> dict:
    """B's permutation of every group (new unit u of B = A's unit q[u]), drawn
    from `rng` in this order: the residual stream, then per layer its `heads`
    (KV) heads, the query heads inside each KV head (if `query_heads`), the
    V/O dimensions shared by the layer's heads, the FFN units."""
    groups = {"residual": rng.permutation(d)}
    for i in range(layers):
        groups[f"layers.{i}.heads"] = rng.permutation(heads)
        if query_heads:
            groups[f"layers.{i}.query_heads"] = rng.permutation(query_heads)
        groups[f"layers.{i}.vo_dims"] = rng.permutation(hd)
        groups[f"layers.{i}.ffn"] = rng.permutation(ffn)
    return groups


def write_pair(out: Path, items, config: dict, groups: dict, a_tensor, b_tensor, write=write_file) -> None:
    """Writes the pair under `out`: a config.json each, A as one file (name
    order, as `safetensors` writes), B as three shards in module order with
    its index, and truth.perm.json (per group, the permutation mapping B
    back onto A); `write(path, items, produce)` writes one file."""
    for sub in ("a", "b"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write(out / "a" / "model.safetensors", sorted(items), a_tensor)
    per = (len(items) + 2) // 3
    shards = [items[k : k + per] for k in range(0, len(items), per)]
    weight_map = {}
    for k, part in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write(out / "b" / fname, sorted(part), b_tensor)
        weight_map.update({n: fname for n, _ in part})
    (out / "b" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1) + "\n"
    )
    inv = {k: np.argsort(v).tolist() for k, v in groups.items()}
    (out / "truth.perm.json").write_text(json.dumps({"format": "polymerge-perm/1", "groups": inv}) + "\n")
    print("parameters", sum(int(np.prod(s)) for _, s in items))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--noise", type=float, default=0.05)
    args = ap.parse_args()
    items = tensors(args.layers)
    shapes = dict(items)
    rng = np.random.default_rng(1234)
    groups = group_permutations(rng, args.layers, D, KV, HD, FFN, query_heads=HEADS // KV)

    def a_tensor(name):
        seed = int.from_bytes(name.encode()[-8:].ljust(8, b"\0"), "little") ^ len(name)
        g = np.random.default_rng([seed, 42])
        shape = shapes[name]
        if len(shape) == 1:
            return (1.0 + 0.1 * g.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        return (0.02 * g.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    def b_tensor(name):
        x = permuted_like_b(a_tensor(name), name, groups, HD)
        g = np.random.default_rng([len(name), sum(name.encode()), 7])
        std = float(x.std())
        return x + (args.noise * std) * g.standard_normal(x.shape, dtype=np.float32)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": D,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "num_hidden_layers": args.layers,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    write_pair(args.dir, items, config, groups, a_tensor, b_tensor)


if __name__ == "__main__":
    main()
