#!/usr/bin/env python3
"""Time polymerge's assignment solver against scipy side by side.

Generates dense n×n score matrices with a fixed seed, writes them as raw
little-endian f64 files into a temporary directory, and for each one times

* scipy.optimize.linear_sum_assignment(S, maximize=True) in this process, and
* polymerge::assignment::maximize via `examples/lap_bench.rs` (the solve
  alone is timed inside the binary; reading the file is not),
* optionally pathfinding::kuhn_munkres (scores scaled by 1e6 to i64) via
  `lap_bench --kuhn-munkres`.

Both exact solvers must agree on the optimal score to a relative 1e-9
(the script exits non-zero otherwise). The result is a Markdown table with
the ratio scipy_time / polymerge_time (> 1 means polymerge is faster), for
wall time and for the CPU time of the solving thread (scipy:
time.thread_time(); polymerge: /proc/thread-self/schedstat), which is less
disturbed when other processes compete for the cores. Each solver solves
the same matrix at least --repeats times and for at least --min-time
seconds in one process (the solve only, the matrix already in memory); the
table gives the best wall time and the mean CPU time per solve. For the warm cases the table also gives
polymerge's cold solve of the same matrix. kuhn_munkres is timed once; it
solves the integer-rounded problem, so its score is not compared.

Cases:
  uniform     S[i, j] ~ U[0, 1)
  similarity  S = A Bᵀ, A ~ N(0, 1)^(n×d), B = (A + 0.5·N(0, 1))[π] for a
              random row permutation π (d = 128): strongly diagonal after
              un-permuting (the optimum recovers π)
  weak-sim    the same with d = 64 and noise 2.0: only ~75% of π is
              recoverable, like matching independently trained networks
  ties        uniform, with 10% of the rows set to all zeros (dead units)
  warm        uniform S' = S + (0.1/n)·U[-1, 1); polymerge gets the optimal
              permutation of S as warm-start hint, scipy solves S' cold
  warm-sim    weak-sim S' = S + 0.02·std(S)·N(0, 1), hint = optimum of S
              (~4% of the rows change)

Example:
  python3 scripts/bench_assignment.py --sizes 1024 2048 4096 \
      --kuhn-munkres-sizes 1024 2048
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

SEED = 20240607
CASES = ("uniform", "similarity", "weak-sim", "ties", "warm", "warm-sim")
KUHN_MUNKRES_CASES = ("uniform", "ties")


def rng_for(case: str, n: int) -> np.random.Generator:
    return np.random.default_rng([SEED, CASES.index(case), n])


def similarity(rng: np.random.Generator, n: int, d: int = 128, noise: float = 0.5) -> np.ndarray:
    a = rng.standard_normal((n, d))
    b = (a + noise * rng.standard_normal((n, d)))[rng.permutation(n)]
    return a @ b.T


def make_case(case: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (scores, warm_hint or None)."""
    rng = rng_for(case, n)
    if case == "uniform":
        return rng.random((n, n)), None
    if case == "similarity":
        return similarity(rng, n), None
    if case == "weak-sim":
        return similarity(rng, n, d=64, noise=2.0), None
    if case == "ties":
        s = rng.random((n, n))
        s[rng.choice(n, size=n // 10, replace=False)] = 0.0
        return s, None
    if case == "warm":
        s = rng.random((n, n))
        _, hint = linear_sum_assignment(s, maximize=True)
        return s + (0.1 / n) * rng.uniform(-1.0, 1.0, (n, n)), hint
    if case == "warm-sim":
        s = similarity(rng, n, d=64, noise=2.0)
        _, hint = linear_sum_assignment(s, maximize=True)
        return s + 0.02 * s.std() * rng.standard_normal((n, n)), hint
    raise ValueError(case)


def run_rust(binary: Path, matrix: Path, n: int, extra: list[str], timeout: float) -> dict:
    out = subprocess.run(
        [str(binary), str(matrix), str(n), *extra],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return json.loads(out.stdout)


def time_scipy(s: np.ndarray, repeats: int, min_time: float) -> tuple[float, float, float]:
    """Best wall time and mean thread-CPU time per solve over at least
    `repeats` solves and `min_time` seconds, and the score."""
    wall = float("inf")
    runs = 0
    c0, t_start = time.thread_time(), time.perf_counter()
    while runs < repeats or time.perf_counter() - t_start < min_time:
        t0 = time.perf_counter()
        r, c = linear_sum_assignment(s, maximize=True)
        wall = min(wall, time.perf_counter() - t0)
        runs += 1
    cpu = (time.thread_time() - c0) / runs
    return wall, cpu, float(s[r, c].sum())


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--kuhn-munkres-sizes", type=int, nargs="*", default=[],
                   help="sizes at which to also time pathfinding::kuhn_munkres (uniform, ties)")
    p.add_argument("--kuhn-munkres-timeout", type=float, default=600.0)
    p.add_argument("--repeats", type=int, default=3,
                   help="least number of solves per timing (both solvers)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="least total seconds of solves per timing (both solvers)")
    p.add_argument("--binary", type=Path, default=None,
                   help="lap_bench binary (default: build it with cargo --release)")
    args = p.parse_args()

    root = Path(__file__).resolve().parent.parent
    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "lap_bench"],
                       cwd=root, check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
        binary = target / "release" / "examples" / "lap_bench"

    rows = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="lap-bench-") as tmp:
        for case in args.cases:
            for n in args.sizes:
                s, hint = make_case(case, n)
                matrix = Path(tmp) / f"{case}-{n}.bin"
                s.astype("<f8").tofile(matrix)
                repeat = ["--repeat", str(args.repeats), "--min-time", str(args.min_time)]
                warm = []
                if hint is not None:
                    hint_path = Path(tmp) / f"{case}-{n}.perm"
                    np.asarray(hint, dtype="<u8").tofile(hint_path)
                    warm = ["--warm", str(hint_path)]

                sp_wall, sp_cpu, sp_score = time_scipy(s, args.repeats, args.min_time)
                pm = run_rust(binary, matrix, n, warm + repeat, timeout=3600)
                cold = run_rust(binary, matrix, n, repeat, timeout=3600) if warm else None
                rel = abs(sp_score - pm["score"]) / max(abs(sp_score), 1e-300)
                ok = rel <= 1e-9
                failures += not ok
                km = None
                if case in KUHN_MUNKRES_CASES and n in args.kuhn_munkres_sizes:
                    try:
                        km = run_rust(binary, matrix, n, ["--kuhn-munkres"],
                                      timeout=args.kuhn_munkres_timeout)["seconds"]
                    except subprocess.TimeoutExpired:
                        km = float("inf")
                row = {
                    "case": case, "n": n,
                    "scipy": sp_wall, "pm": pm["seconds"],
                    "scipy_cpu": sp_cpu, "pm_cpu": pm["cpu_seconds"],
                    "cold": cold["seconds"] if cold else None,
                    "cold_cpu": cold["cpu_seconds"] if cold else None,
                    "km": km, "rel": rel, "ok": ok,
                }
                rows.append(row)
                print(f"{case:>10} n={n:>5}  scipy {sp_wall:8.4f} s  polymerge {pm['seconds']:8.4f} s"
                      f"  ratio {sp_wall / pm['seconds']:6.2f}"
                      + (f"  (cold {cold['seconds']:.4f} s)" if cold else "")
                      + (f"  kuhn_munkres {km:.3f} s" if km is not None else "")
                      + f"  rel.diff {rel:.1e} {'ok' if ok else 'MISMATCH'}",
                      file=sys.stderr, flush=True)
                matrix.unlink()

    print("| case | n | scipy (s) | polymerge (s) | scipy / polymerge "
          "| scipy CPU (s) | polymerge CPU (s) | CPU ratio | polymerge cold (s) "
          "| polymerge cold CPU (s) | kuhn_munkres (s) | score rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cpu_ratio = (f"{r['scipy_cpu'] / r['pm_cpu']:.2f}"
                     if r["pm_cpu"] else "–")
        km = "–" if r["km"] is None else (
            f"> {args.kuhn_munkres_timeout:.0f}" if r["km"] == float("inf") else f"{r['km']:.3f}")
        print(f"| {r['case']} | {r['n']} | {r['scipy']:.4f} | {r['pm']:.4f} | "
              f"{r['scipy'] / r['pm']:.2f} | {r['scipy_cpu']:.4f} | {fmt(r['pm_cpu'])} | "
              f"{cpu_ratio} | {fmt(r['cold'])} | {fmt(r['cold_cpu'])} | {km} | "
              f"{r['rel']:.1e}{'' if r['ok'] else ' MISMATCH'} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
