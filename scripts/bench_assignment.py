#!/usr/bin/env python3
"""Time polymerge's assignment solver against scipy side by side.

Generates dense n×n score matrices with a fixed seed, writes them as raw
little-endian f64 files into a temporary directory, and for each one times

* scipy.optimize.linear_sum_assignment(S, maximize=True) in this process, and
* polymerge::assignment::maximize via `examples/lap_bench.rs` (the solve
  alone is timed inside the binary; reading the file is not),
* optionally pathfinding::kuhn_munkres (scores scaled by 1e6 to i64) via
  `lap_bench --kuhn-munkres`.

Both exact solvers must agree on the optimal score to a relative 1e-9. The
result is a Markdown table with the ratio scipy_time / polymerge_time
(> 1 means polymerge is faster). Timings are the best of --repeats runs.

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


def best_of(repeats: int, f):
    best = None
    for _ in range(repeats):
        r = f()
        if best is None or r[0] < best[0]:
            best = r
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--kuhn-munkres-sizes", type=int, nargs="*", default=[],
                   help="sizes at which to also time pathfinding::kuhn_munkres (uniform, ties)")
    p.add_argument("--kuhn-munkres-timeout", type=float, default=600.0)
    p.add_argument("--repeats", type=int, default=3)
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
                extra = []
                if hint is not None:
                    hint_path = Path(tmp) / f"{case}-{n}.perm"
                    np.asarray(hint, dtype="<u8").tofile(hint_path)
                    extra = ["--warm", str(hint_path)]

                def scipy_once():
                    t0 = time.perf_counter()
                    r, c = linear_sum_assignment(s, maximize=True)
                    t = time.perf_counter() - t0
                    return t, float(s[r, c].sum())

                def rust_once():
                    out = run_rust(binary, matrix, n, extra, timeout=3600)
                    return out["seconds"], out["score"]

                t_sp, score_sp = best_of(args.repeats, scipy_once)
                t_pm, score_pm = best_of(args.repeats, rust_once)
                rel = abs(score_sp - score_pm) / max(abs(score_sp), 1e-300)
                ok = rel <= 1e-9
                failures += not ok
                km = ""
                if case in KUHN_MUNKRES_CASES and n in args.kuhn_munkres_sizes:
                    try:
                        out = run_rust(binary, matrix, n, ["--kuhn-munkres"],
                                       timeout=args.kuhn_munkres_timeout)
                        km = f"{out['seconds']:.3f}"
                    except subprocess.TimeoutExpired:
                        km = f"> {args.kuhn_munkres_timeout:.0f}"
                rows.append((case, n, t_sp, t_pm, t_sp / t_pm, km, rel, ok))
                print(f"{case:>10} n={n:>5}  scipy {t_sp:8.4f} s  polymerge {t_pm:8.4f} s  "
                      f"ratio {t_sp / t_pm:6.2f}  kuhn_munkres {km or '-':>8}  "
                      f"rel.diff {rel:.1e} {'ok' if ok else 'MISMATCH'}",
                      file=sys.stderr, flush=True)
                matrix.unlink()

    print("| case | n | scipy (s) | polymerge (s) | scipy / polymerge | kuhn_munkres (s) | score rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case, n, t_sp, t_pm, ratio, km, rel, ok in rows:
        print(f"| {case} | {n} | {t_sp:.4f} | {t_pm:.4f} | {ratio:.2f} | {km or '–'} | "
              f"{rel:.1e}{'' if ok else ' MISMATCH'} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
