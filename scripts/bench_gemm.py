#!/usr/bin/env python3
"""The similarity GEMMs of weight matching: polymerge against numpy (OpenBLAS),
same shapes, same machine, interleaved in one run.

    python3 scripts/bench_gemm.py [--rounds 3] [--threads N]

Each round runs `cargo bench --bench similarity -- --json` (every shape of
`benches/similarity.rs`, best of 5 products each) and then the same products
in numpy (`A @ B.T` for units on axis 0, `A.T @ B` for axis 1; f32; best of
5), alternating, so both see the same load. The best per shape over all
rounds is reported, with polymerge / numpy. `--threads N` sets
RAYON_NUM_THREADS, MATMUL_NUM_THREADS and OPENBLAS_NUM_THREADS for both
(default: unset, every core). OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are
removed from numpy's environment so OpenBLAS picks its own kernels.
Target: polymerge ≥ 0.8 × numpy on every shape (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 0.8

NUMPY = r"""
import json, sys, time
import numpy as np
shapes = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
for s in shapes:
    a = (rng.random(s["shape"], dtype=np.float32) - 0.5) * 0.1
    b = (rng.random(s["shape"], dtype=np.float32) - 0.5) * 0.1
    f = (lambda: a @ b.T) if s["axis"] == 0 else (lambda: a.T @ b)
    n = s["n"]
    flops = 2.0 * n * n * (a.size // n)
    f()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    best = min(times)
    print(json.dumps({"name": s["name"], "gflops": flops / best / 1e9}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    if args.threads:
        for k in ("RAYON_NUM_THREADS", "MATMUL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(args.threads)
    subprocess.run(["cargo", "bench", "--bench", "similarity", "--no-run", "--quiet"], cwd=ROOT,
                   check=True)
    best: dict[str, dict] = {}
    order: list[str] = []
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "similarity", "--", "--json"],
                             cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
        shapes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for s in shapes:
            if s["name"] not in best:
                order.append(s["name"])
                best[s["name"]] = {**s, "polymerge": 0.0, "numpy": 0.0}
            best[s["name"]]["polymerge"] = max(best[s["name"]]["polymerge"], s["gflops"])
        out = subprocess.run([args.python, "-c", NUMPY, json.dumps(shapes)], env=env, check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            best[r["name"]]["numpy"] = max(best[r["name"]]["numpy"], r["gflops"])
        load.append(os.getloadavg()[0])
    print(f"{os.cpu_count()} CPUs, threads: {args.threads or 'all'}, best of {args.rounds} "
          f"interleaved rounds; load average {' → '.join(f'{x:.1f}' for x in load)}")
    print("| shape | n | member | L | polymerge GFLOP/s | numpy GFLOP/s | polymerge / numpy |")
    print("|---|---:|---|---:|---:|---:|---:|")
    missed = []
    for name in order:
        r = best[name]
        ratio = r["polymerge"] / r["numpy"]
        if ratio < TARGET:
            missed.append(name)
        n = r["n"]
        print(f"| {name} | {n} | {r['shape']} axis {r['axis']} | {r['shape'][0] * r['shape'][1] // n} "
              f"| {r['polymerge']:.1f} | {r['numpy']:.1f} | {ratio:.2f} |")
    print(f"target (≥ {TARGET} × numpy on every shape): "
          f"{'met' if not missed else 'missed on ' + ', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
