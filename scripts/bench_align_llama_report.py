#!/usr/bin/env python3
"""Summarises a bench_align_llama.sh run (DIR/report.json, DIR/time.txt,
DIR/found.perm.json vs DIR/truth.perm.json)."""
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

d = Path(sys.argv[1])
r = json.loads((d / "report.json").read_text())
t = (d / "time.txt").read_text()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
user = float(re.search(r"User time \(seconds\): (\S+)", t).group(1))
syst = float(re.search(r"System time \(seconds\): (\S+)", t).group(1))
by_kind = defaultdict(lambda: [0, 0.0, 0.0, 0, 0])
for g in r["groups"]:
    k = by_kind[g["kind"]]
    k[0] += 1
    k[1] += g["seconds_similarity"]
    k[2] += g["seconds_assignment"]
    k[3] += g["visits"]
    k[4] += g["skipped"]
sim = sum(v[1] for v in by_kind.values())
asg = sum(v[2] for v in by_kind.values())
print(f"process wall {wall}, user {user:.0f} s, sys {syst:.0f} s, peak RSS {rss / 1024:.0f} MiB")
print(f"alignment {r['seconds']:.1f} s, {r['sweeps']} sweeps (converged: {r['converged']})")
print("sweep seconds:", ", ".join(f"{s:.1f}" for s in r.get("sweep_seconds", [])))
print(f"similarity {sim:.1f} s, assignment {asg:.1f} s")
print(f"{'kind':<10} {'groups':>6} {'visits':>6} {'skipped':>7} {'sim s':>8} {'assign s':>9} {'per visit s':>11}")
for k, (n, s, a, v, sk) in sorted(by_kind.items()):
    print(f"{k:<10} {n:>6} {v:>6} {sk:>7} {s:>8.1f} {a:>9.1f} {(s + a) / max(v, 1):>11.2f}")
truth = json.loads((d / "truth.perm.json").read_text())["groups"]
found = json.loads((d / "found.perm.json").read_text())["groups"]
# The truth holds one within-head permutation per layer (shared by its
# heads); the default spec finds one per head (`NAME.0`, `NAME.1`, ...):
# each of those is compared with the shared one.
pairs = []
for k, v in truth.items():
    heads = [f for f in found if f.startswith(k + ".") and f[len(k) + 1:].isdigit()]
    pairs += [(k, v, found[k])] if k in found else [(f, v, found[f]) for f in sorted(heads)]
worst = min((sum(x == y for x, y in zip(v, f)) / len(v), k) for k, v, f in pairs)
total = sum(len(v) for _, v, _ in pairs)
right = sum(sum(x == y for x, y in zip(v, f)) for _, v, f in pairs)
print(f"units in place: {right}/{total}; worst group {worst[1]} {worst[0] * 100:.2f}%")
