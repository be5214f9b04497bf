#!/usr/bin/env python3
"""Cost of the basin check on transformer-size pairs.

Writes two random checkpoints with GPT-2-style tensor names (``--layers``
blocks of width ``--d-model``, vocabulary ``--vocab``, dtype ``--dtype``) into
a temporary directory, then times (warm page cache, best of ``--repeat``, wall and CPU seconds):

* ``polymerge basin A B --matching never --json`` (the streaming pass alone,
  ``check_seconds``),
* ``polymerge avg A B -o OUT`` with the check (default) and with
  ``--no-basin-check``: the difference is what the check adds to ``avg``.

    cargo build --release
    python3 scripts/bench_basin.py [--layers 12 --d-model 768 --dtype f32]

numpy + safetensors only.
"""

from __future__ import annotations

import argparse
import os
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent


def model(rng, layers: int, d: int, vocab: int, dtype) -> dict:
    t = {"wte.weight": rng.standard_normal((vocab, d), dtype=np.float32) * 0.02,
         "wpe.weight": rng.standard_normal((1024, d), dtype=np.float32) * 0.01}
    for i in range(layers):
        p = f"h.{i}."
        t[p + "ln_1.weight"] = np.ones(d, np.float32)
        t[p + "ln_1.bias"] = np.zeros(d, np.float32)
        t[p + "attn.c_attn.weight"] = rng.standard_normal((3 * d, d), dtype=np.float32) * 0.02
        t[p + "attn.c_attn.bias"] = np.zeros(3 * d, np.float32)
        t[p + "attn.c_proj.weight"] = rng.standard_normal((d, d), dtype=np.float32) * 0.02
        t[p + "attn.c_proj.bias"] = np.zeros(d, np.float32)
        t[p + "ln_2.weight"] = np.ones(d, np.float32)
        t[p + "ln_2.bias"] = np.zeros(d, np.float32)
        t[p + "mlp.c_fc.weight"] = rng.standard_normal((4 * d, d), dtype=np.float32) * 0.02
        t[p + "mlp.c_fc.bias"] = np.zeros(4 * d, np.float32)
        t[p + "mlp.c_proj.weight"] = rng.standard_normal((d, 4 * d), dtype=np.float32) * 0.02
        t[p + "mlp.c_proj.bias"] = np.zeros(d, np.float32)
    t["ln_f.weight"] = np.ones(d, np.float32)
    t["ln_f.bias"] = np.zeros(d, np.float32)
    if dtype == "bf16":
        # safetensors.numpy has no bfloat16: store f16 bits instead (same size).
        t = {k: v.astype(np.float16) for k, v in t.items()}
    elif dtype == "f16":
        t = {k: v.astype(np.float16) for k, v in t.items()}
    return t


def timed(cmd) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds user+sys, stdout) of a child process."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in (0, 3, 4):
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{p.stderr}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return dt, cpu, p.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--polymerge", default=str(ROOT / "target/release/polymerge"))
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        params = 0
        for seed, name in ((1, "a"), (2, "b")):
            m = model(np.random.default_rng(seed), args.layers, args.d_model, args.vocab, args.dtype)
            params = sum(v.size for v in m.values())
            save_file(m, str(tmp / f"{name}.safetensors"))
            del m
        a, b, out = tmp / "a.safetensors", tmp / "b.safetensors", tmp / "out.safetensors"
        size = a.stat().st_size
        pm = args.polymerge
        # warm the page cache
        timed([pm, "basin", a, b, "--matching", "never", "--json"])
        basin_wall, basin_cpu, check = [], [], []
        for _ in range(args.repeat):
            dt, cpu, so = timed([pm, "basin", a, b, "--matching", "never", "--json"])
            basin_wall.append(dt)
            basin_cpu.append(cpu)
            check.append(json.loads(so)["check_seconds"])
        runs = {"with": ([], []), "without": ([], [])}
        for _ in range(args.repeat):
            for key, extra in (("with", []), ("without", ["--no-basin-check"])):
                dt, cpu, _ = timed([pm, "avg", a, b, "-o", out, "--force", "-q", *extra])
                runs[key][0].append(dt)
                runs[key][1].append(cpu)
        r = {
            "params": params, "dtype": args.dtype, "bytes_per_file": size,
            "load_average_1min": os.getloadavg()[0],
            "basin_streaming_pass_s": min(check), "basin_wall_s": min(basin_wall),
            "basin_cpu_s": min(basin_cpu),
            "avg_with_check_wall_s": min(runs["with"][0]),
            "avg_without_check_wall_s": min(runs["without"][0]),
            "avg_with_check_cpu_s": min(runs["with"][1]),
            "avg_without_check_cpu_s": min(runs["without"][1]),
            "check_read_GB_s": 2 * size / min(check) / 1e9,
        }
        print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
