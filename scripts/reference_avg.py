#!/usr/bin/env python3
"""The PyTorch reference for `polymerge avg`: what users write in a notebook.

    python3 scripts/reference_avg.py OUT.safetensors A B [C ...] [--weights 1,1]

Each input is a .safetensors file, an index JSON, or a model directory (with
`model.safetensors` or `model.safetensors.index.json`). Every input is loaded
whole with `safetensors.torch.load_file` (shard by shard for an index), each
tensor is averaged as

    (sum(w * t.float() for w, t in zip(weights, ts)) / sum(weights)).to(dtype)

in the first input's tensor order and dtype, and the result is written with
`safetensors.torch.save_file` (metadata `format: pt`). Integer/bool tensors
are copied from the first input. This is the baseline of
`scripts/bench_avg.sh`; its numerics define polymerge's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file


def load(path: str) -> dict[str, torch.Tensor]:
    if os.path.isdir(path):
        idx = os.path.join(path, "model.safetensors.index.json")
        path = idx if os.path.exists(idx) else os.path.join(path, "model.safetensors")
    if path.endswith(".json"):
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
        base = os.path.dirname(path)
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(load_file(os.path.join(base, shard)))
        return out
    return load_file(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--weights", help="comma-separated, one per input (default: uniform)")
    args = ap.parse_args()
    weights = ([float(w) for w in args.weights.split(",")] if args.weights
               else [1.0] * len(args.inputs))
    if len(weights) != len(args.inputs):
        ap.error("one weight per input")

    states = [load(p) for p in args.inputs]
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, t0 in states[0].items():
            ts = [s[name] for s in states]
            if t0.is_floating_point():
                merged[name] = (sum(w * t.float() for w, t in zip(weights, ts))
                                / sum(weights)).to(t0.dtype)
            else:
                merged[name] = t0
    save_file(merged, args.output, metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
