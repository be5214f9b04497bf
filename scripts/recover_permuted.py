#!/usr/bin/env python3
"""Exact recovery of permuted copies at seeds 0-9 (the evidence for the
`--restarts` default, issue 9 item 2).

    python scripts/recover_permuted.py target/release/polymerge [RESTARTS]

For every committed permuted copy (trained GPT-2 permuted in every group and
per head, trained BERT, the random-init transformer fixtures), runs
`polymerge align A B --seed S --restarts RESTARTS` for S = 0..9 and counts
the seeds whose output equals A tensor for tensor. Prints a Markdown table.
"""
import json, subprocess, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file
B = sys.argv[1]
R = Path("/work/wt-align")
def load(d):
    d = Path(d)
    f = d / "model.safetensors" if d.is_dir() else d
    return load_file(str(f))
cases = [("trained gpt2 permuted", "fixtures/trained/gpt2/seed0", "fixtures/trained/gpt2/seed0_permuted", []),
         ("trained gpt2 per-head permuted", "fixtures/trained/gpt2/seed0", "fixtures/trained/gpt2/seed0_permuted_per_head", []),
         ("trained gpt2 per-head permuted, user spec", "fixtures/trained/gpt2/seed0", "fixtures/trained/gpt2/seed0_permuted_per_head", ["--spec", "fixtures/trained/gpt2/seed0_permuted_per_head_spec.json"]),
         ("trained bert permuted", "fixtures/trained/bert/seed0", "fixtures/trained/bert/seed0_permuted", []),
         ("trained bert permuted, shared user spec", "fixtures/trained/bert/seed0", "fixtures/trained/bert/seed0_permuted", ["--spec", "fixtures/trained/bert/spec.json"])]
for f in ("bert", "gpt2", "llama", "qwen2"):
    cases.append((f"random-init {f} permuted", f"fixtures/transformers/{f}/a", f"fixtures/transformers/{f}/permuted", []))
cases.append(("random-init llama per-head permuted", "fixtures/transformers/llama/a", "fixtures/transformers/llama/permuted_per_head", []))
restarts = sys.argv[2] if len(sys.argv) > 2 else "1"
out = {}
for name, a, b, extra in cases:
    A = load(R / a)
    ok, objs = [], []
    for seed in range(10):
        o = "/tmp/al/rec.safetensors"
        j = json.loads(subprocess.run([B, "align", a, b, "-o", o, "--force", "--json", "-q", "--seed", str(seed), "--restarts", restarts] + extra,
                                      cwd=R, check=True, capture_output=True, text=True).stdout)
        X = load(o)
        same = all(np.array_equal(A[k], X[k]) for k in A)
        ok.append(same); objs.append(round(j["objective_after"], 2))
    out[name] = (sum(ok), objs)
    print(f"| {name} | {sum(ok)}/10 | {min(objs)} – {max(objs)} |", flush=True)
