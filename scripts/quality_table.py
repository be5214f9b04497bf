#!/usr/bin/env python3
"""README quality table (issue 9, item 6): for every independently trained
pair, the PyTorch-measured naive and aligned loss barriers, polymerge's
weight-matching objective against the numpy+scipy reference port's
(`fixtures/reference_weight_matching.py`, the paper's Algorithm 1 in f32, on
the same spec and seed), and the basin verdicts.

    python scripts/measure_pairs.py --polymerge target/release/polymerge \
        --only seed0~seed1 --only seed0~seed2 --only seed1~seed2
    python scripts/quality_table.py --polymerge target/release/polymerge [--json-out q.json]

Reads the measurements from `target/measure_pairs/pairs.json` (the default
--work of measure_pairs.py), runs the reference port on each pair with the
spec polymerge used (`polymerge spec A`, or the pair's user spec), and prints
a Markdown table. `before` is the aligned barrier of the committed
`fixtures/trained/pairs.json` (measured with an earlier polymerge); the
basin verdict is this binary's `polymerge basin A B_aligned` on the aligned
copy measure_pairs.py wrote.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--polymerge", required=True)
    ap.add_argument("--pairs", type=Path, default=ROOT / "target" / "measure_pairs" / "pairs.json")
    ap.add_argument("--committed", type=Path, default=ROOT / "fixtures" / "trained" / "pairs.json")
    ap.add_argument("--work", type=Path, default=ROOT / "target" / "measure_pairs",
                    help="measure_pairs.py's --work (holds the aligned copies)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    rows = [r for r in json.loads(args.pairs.read_text())["pairs"]
            if r.get("kind") == "independent" and "aligned" in r]
    before = {r["id"]: r for r in json.loads(args.committed.read_text())["pairs"]}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            a, b = ROOT / r["a"], ROOT / r["b"]
            spec_path = r.get("align_spec")
            if spec_path is None:
                spec_path = Path(tmp) / "spec.json"
                spec_path.write_text(subprocess.run([args.polymerge, "spec", str(a)], check=True,
                                                    capture_output=True, text=True).stdout)
            spec = rwm.load_spec(ROOT / spec_path)
            pa = rwm.read_checkpoint(a).floats()
            pb = rwm.read_checkpoint(b).floats()
            t = time.time()
            try:
                ref = rwm.weight_matching(pa, pb, spec, seed=0, precision="f32")["objective_after"]
            except rwm.ReferenceError as e:  # e.g. BERT's cls transform: residual on both axes
                print(f"{r['id']}: reference port: {e}", file=sys.stderr)
                ref = None
            naive = r["naive"]["barrier"]
            al = r["aligned"]["path"]["barrier"]
            old = before.get(r["id"], {}).get("aligned", {}).get("path", {}).get("barrier")
            # The basin verdict of this binary on the aligned copy measure_pairs.py wrote.
            tag = r["id"].replace("/", "__").replace("~", "__").replace(" ", "_")
            bal = args.work / f"{tag}.safetensors"
            code = subprocess.run([args.polymerge, "basin", str(a), str(bal), "--json"], capture_output=True).returncode
            verdict = {0: "connected", 3: "disconnected", 4: "uncertain"}.get(code, f"exit {code}")
            row = {"id": r["id"], "naive": naive, "aligned": al, "pct": 100 * al / naive if naive > 0 else None,
                   "before": old, "objective_before": r["aligned"]["objective_before"],
                   "objective": r["aligned"]["objective_after"], "reference": ref,
                   "reference_seconds": round(time.time() - t, 1),
                   "max_heads_churn": r["aligned"].get("max_heads_churn"),
                   "basin_aligned": verdict}
            out.append(row)
            print(f"{row['id']}: reference {row['reference']}, polymerge {row['objective']:.1f}", file=sys.stderr)
    print("| pair | naive barrier | aligned barrier | % of naive | before (old align) | objective: polymerge | reference port | Δ | basin (aligned) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in out:
        pct = "–" if x["pct"] is None else f"{x['pct']:.0f}%"
        old = "–" if x["before"] is None else f"{x['before']:.3f}"
        if x["reference"] is None:
            ref, d = "n/a¹", "–"
        else:
            ref = f"{x['reference']:.1f}"
            d = f"{100 * (x['objective'] - x['reference']) / abs(x['reference']):+.2f}%"
        print(f"| {x['id']} | {x['naive']:.3f} | {x['aligned']:.3f} | {pct} | {old} | {x['objective']:.1f} | "
              f"{ref} | {d} | {x['basin_aligned']} |")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
