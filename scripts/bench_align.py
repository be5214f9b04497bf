#!/usr/bin/env python3
"""Time the reference weight matching (fixtures/reference_weight_matching.py)
and, optionally, `polymerge align` on the same model pairs.

    python3 scripts/bench_align.py                          # reference only
    python3 scripts/bench_align.py --polymerge target/release/polymerge
    python3 scripts/bench_align.py --polymerge target/release/polymerge --f64

The reference multiplies in f32 by default, like the paper's code (JAX's
default dtype): f32 GEMMs for the similarity matrices, scipy's
linear_sum_assignment for the assignments.  --f64 runs it in its former f64
mode (f64 tensors and GEMMs), which is slower and was the reference of the
README's first speed table.

Cases:
  random-4x2048  two random-init MLPs (torch default nn.Linear init,
                 torch.manual_seed 0 and 1): 64 -> 2048 -> 2048 -> 2048 ->
                 2048 -> 10, i.e. 4 hidden layers of 2048 and 5 Linear layers.
                 Tensor names follow nn.Sequential with ReLUs between the Linear
                 layers (default, --naming sequential):
                     layers.0.weight [2048, 64]    layers.0.bias [2048]
                     layers.2.weight [2048, 2048]  ...
                     layers.8.weight [10, 2048]    layers.8.bias [10]
                 (--naming contiguous gives layers.0 .. layers.4 instead).
                 Permutation groups: layers.0, layers.2, layers.4, layers.6.
                 Written to a temporary directory (or --keep DIR).
  digits-w512    fixtures/mlp/run_seed0.safetensors vs run_seed1.safetensors
                 (run `python3 fixtures/generate_mlp.py` first).

For each case the reference CLI is run as a subprocess (rng seed 0, its own
numpy group order; --same-order gives it polymerge's SplitMix64 order); its
in-process algorithm time ("seconds", excluding imports and loading) and the
subprocess wall time are reported.  With --polymerge PATH, `PATH align A B -o
OUT --json` is timed (wall) on the same pair; the objective is taken from its
JSON output when a key named like "objective_after"/"objective" is found and
is also recomputed here from OUT (a safetensors file of the aligned B, or a
polymerge-perm/1 JSON) as sum_t <A_t, OUT_t> in float64.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
import reference_weight_matching as rwm  # noqa: E402

REF_CLI = ROOT / "fixtures" / "reference_weight_matching.py"


def make_random_pair(outdir: Path, width: int, hidden: int, naming: str):
    import torch
    import torch.nn as nn
    from safetensors.torch import save_file

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            dims = [64] + [width] * hidden + [10]
            mods = []
            for i in range(len(dims) - 1):
                mods.append(nn.Linear(dims[i], dims[i + 1]))
                if i + 2 < len(dims):
                    mods.append(nn.ReLU())
            self.layers = nn.Sequential(*mods)

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        sd = {k: v.detach().contiguous() for k, v in Net().state_dict().items()}
        if naming == "contiguous":
            sd = {f"layers.{int(k.split('.')[1]) // 2}.{k.split('.')[2]}": v for k, v in sd.items()}
        p = outdir / f"random_{hidden}x{width}_seed{seed}.safetensors"
        save_file(sd, str(p), metadata={"format": "pt"})
        paths.append(p)
    return paths


def run_reference(a: Path, b: Path, outdir: Path, seed: int, max_iter: int, f64: bool,
                  same_order: bool):
    perm_out = outdir / f"ref_{a.stem}__{b.stem}.perm.json"
    cmd = [sys.executable, str(REF_CLI), str(a), str(b), "--seed", str(seed),
           "--max-iter", str(max_iter), "--no-perms", "--perm-out", str(perm_out)]
    if f64:
        cmd.append("--f64")
    if same_order:
        cmd += ["--order", "polymerge"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"reference failed:\n{proc.stderr}")
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    rep["wall"] = wall
    rep["perm_file"] = str(perm_out)
    return rep


def find_objective(obj):
    """Look for an 'objective after' number anywhere in polymerge's JSON."""
    preferred = ("objective_after", "objective_final", "objective")
    if isinstance(obj, dict):
        for key in preferred:
            v = obj.get(key)
            if isinstance(v, (int, float)):
                return float(v)
            if isinstance(v, dict):
                for k2 in ("after", "final", "value"):
                    if isinstance(v.get(k2), (int, float)):
                        return float(v[k2])
        for v in obj.values():
            r = find_objective(v)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = find_objective(v)
            if r is not None:
                return r
    return None


def objective_of_output(a: Path, b: Path, out: Path):
    """sum_t <A_t, OUT_t>: OUT is the aligned B (safetensors) or a perm file."""
    from safetensors.numpy import load_file

    if not out.exists():
        return None
    head = out.read_bytes()[:1]
    pa = load_file(str(a))
    if head == b"{":
        doc = json.loads(out.read_text())
        groups = doc.get("groups", doc)
        pb = load_file(str(b))
        spec = rwm.linear_chain_spec(list(pa))
        aligned = rwm.apply_permutation(spec, {g: np.asarray(p) for g, p in groups.items()}, pb)
    else:
        aligned = load_file(str(out))
    return rwm.objective(pa, aligned)


def run_polymerge(exe: str, a: Path, b: Path, outdir: Path, seed: int):
    out = outdir / f"polymerge_{a.stem}__{b.stem}.safetensors"
    cmd = [exe, "align", str(a), str(b), "-o", str(out), "--json", "--force", "--seed", str(seed)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rep = {"wall": wall, "returncode": proc.returncode, "cmd": " ".join(cmd)}
    if proc.returncode != 0:
        rep["error"] = (proc.stderr or proc.stdout)[-2000:]
        return rep
    parsed = None
    text = proc.stdout.strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        for line in reversed(text.splitlines()):
            try:
                parsed = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    rep["json"] = parsed
    rep["objective_reported"] = find_objective(parsed) if parsed is not None else None
    try:
        rep["objective_recomputed"] = objective_of_output(a, b, out)
    except Exception as e:  # unknown output format: report, don't fail
        rep["objective_recomputed"] = None
        rep["recompute_error"] = repr(e)
    return rep


def fmt(v, spec=".6g"):
    return "-" if v is None else format(v, spec)


def bench_case(name, a, b, args, outdir):
    print(f"\n== {name}: {a.name} vs {b.name}", flush=True)
    ref = run_reference(a, b, outdir, args.seed, args.max_iter, args.f64, args.same_order)
    print(f"reference : {ref['precision']}, {ref['order']} order, "
          f"algorithm {ref['seconds']:.3f} s (cpu {ref['cpu_seconds']:.3f} s), "
          f"process wall {ref['wall']:.3f} s, "
          f"{ref['sweeps']} sweeps, objective {ref['objective_before']:.6f} -> "
          f"{ref['objective_after']:.6f}", flush=True)
    row = {"case": name, "a": str(a), "b": str(b), "reference": ref}
    if args.polymerge:
        pm = run_polymerge(args.polymerge, a, b, outdir, args.seed)
        row["polymerge"] = pm
        if pm.get("returncode") != 0:
            print(f"polymerge : FAILED (rc {pm['returncode']}) after {pm['wall']:.3f} s:\n"
                  f"{pm.get('error', '')}", flush=True)
        else:
            js = pm.get("json") or {}
            pm_alg = js.get("seconds") if isinstance(js.get("seconds"), (int, float)) else None
            print(f"polymerge : wall {pm['wall']:.3f} s (algorithm {fmt(pm_alg, '.3f')} s, "
                  f"{js.get('sweeps', '-')} sweeps), objective reported "
                  f"{fmt(pm['objective_reported'], '.6f')}, recomputed "
                  f"{fmt(pm['objective_recomputed'], '.6f')}", flush=True)
            row["ratio_ref_wall_over_polymerge_wall"] = ref["wall"] / pm["wall"]
            row["ratio_ref_algorithm_over_polymerge_wall"] = ref["seconds"] / pm["wall"]
            alg = ""
            if pm_alg:
                row["ratio_ref_algorithm_over_polymerge_algorithm"] = ref["seconds"] / pm_alg
                alg = (f", algorithm / algorithm = "
                       f"{row['ratio_ref_algorithm_over_polymerge_algorithm']:.2f}x")
            print(f"ratio     : reference wall / polymerge wall = "
                  f"{row['ratio_ref_wall_over_polymerge_wall']:.2f}x "
                  f"(reference algorithm-only / polymerge wall = "
                  f"{row['ratio_ref_algorithm_over_polymerge_wall']:.2f}x{alg})", flush=True)
            obj = pm["objective_recomputed"] if pm["objective_recomputed"] is not None \
                else pm["objective_reported"]
            if obj is not None:
                rel = (obj - ref["objective_after"]) / abs(ref["objective_after"])
                row["objective_rel_diff_polymerge_vs_reference"] = rel
                print(f"objective : polymerge {obj:.6f} vs reference "
                      f"{ref['objective_after']:.6f} (rel. diff {rel:+.2e})", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description="benchmark weight matching: reference vs polymerge")
    ap.add_argument("--polymerge", help="path of a polymerge binary (optional)")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--hidden-layers", type=int, default=4)
    ap.add_argument("--naming", choices=("sequential", "contiguous"), default="sequential")
    ap.add_argument("--seed", type=int, default=0, help="group-order seed (both tools)")
    ap.add_argument("--f64", action="store_true",
                    help="reference in f64 (default: f32 GEMMs, like the paper's code)")
    ap.add_argument("--same-order", action="store_true",
                    help="reference visits groups in polymerge's order (SplitMix64)")
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--keep", help="write the models and outputs here instead of a temp dir")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--json-out", help="write all results as JSON here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_align_") as tmp:
        outdir = Path(args.keep) if args.keep else Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        rows = []
        if not args.skip_random:
            t0 = time.perf_counter()
            a, b = make_random_pair(outdir, args.width, args.hidden_layers, args.naming)
            print(f"generated random pair in {time.perf_counter() - t0:.1f} s under {outdir}")
            rows.append(bench_case(f"random-{args.hidden_layers}x{args.width}", a, b, args, outdir))
        if not args.skip_digits:
            a = ROOT / "fixtures" / "mlp" / "run_seed0.safetensors"
            b = ROOT / "fixtures" / "mlp" / "run_seed1.safetensors"
            if a.exists() and b.exists():
                rows.append(bench_case("digits-w512", a, b, args, outdir))
            else:
                print("\n(digits pair missing: run python3 fixtures/generate_mlp.py)")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
