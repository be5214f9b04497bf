#!/usr/bin/env python3
"""Benchmark `polymerge avg` against the I/O floor and the PyTorch reference.

    python3 scripts/bench_avg.py [DIR] [--size 0.49b|7b] [--reps 3] [--no-reference]
                                 [--polymerge NAME=BINARY ...] [--no-build]

1. `cargo build --release` (unless --no-build or binaries are given).
2. `scripts/make_llama_pair.py DIR --size SIZE` (default /tmp/polymerge-bench,
   /tmp/polymerge-bench-7b): two bf16 LLaMA-style checkpoints of 0.49 B
   params (A one file, B three shards + index), or with `--size 7b` of
   LLaMA-2-7B's shapes (6.7 B params, 13.5 GB each: ~27 GB of disk, more than
   this machine's page cache, so that run reads from disk; the PyTorch
   reference, which would need ~40 GB of memory, is skipped and the outputs
   are compared between the polymerge binaries instead). Cached: regenerated
   only when missing or outdated; `--clean` deletes the pair afterwards.
3. Warm cache for everyone: every input file is read once (`cat … >
   /dev/null`) before the first run, and every variant then runs once
   untimed (round 0). Nothing is dropped from the page cache (that would
   need root), so all variants read their inputs from memory.
4. `--reps` timed rounds; in each round every variant runs once, in the same
   order, under `/usr/bin/time -v`:
     floor      `cat INPUTS > /dev/null && cp A/model.safetensors OUT &&
                 sync OUT`: read both inputs once, write one copy of the
                 output's size, and fsync it (polymerge fsyncs its output
                 before the atomic rename, so the floor does the same
                 durability work; coreutils `sync FILE` is fsync(FILE)).
     polymerge  `polymerge avg A B -o OUT --force --quiet`
     no-basin   the last binary with `--no-basin-check`: the merge alone,
                without the basin check `avg` runs by default (if the
                binary has that option)
     reference  `python3 scripts/reference_avg.py OUT A B` (torch load_file,
                 f32 weighted sum, .to(bf16), save_file; no fsync)
   Before every run the previous output is deleted and `sync` flushes all
   dirty pages (both untimed), so no run pays for another's writeback. Each
   output is deleted after its run, once its digest (SHA-256 of every
   tensor's bytes, in name order, with dtypes and shapes) is taken in the
   last round, so DIR needs the pair plus one output.
5. A table of medians: wall seconds, CPU seconds (user + system), peak RSS
   (MiB, "Maximum resident set size"), wall / floor; every run; then a check
   that each polymerge output holds exactly the reference's tensors (names,
   dtypes, shapes, raw bytes) — or, without a reference, exactly the first
   binary's. `--json FILE` also saves all of it.

The exit status is 1 if outputs differ or a target is missed (median wall
≤ 0.8× median floor for 0.49b, ≤ 1.0× for 7b; peak RSS ≤ 128 MiB), else 0.

A binary given as `NAME=BINARY` may also be `NAME=ENV=VALUE,...:BINARY` to
run it with extra environment variables (for experiments).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = "/usr/bin/time"
WALL_TARGET = {"0.49b": 0.8, "7b": 1.0}
RSS_TARGET_MIB = 128


def run_timed(cmd: list[str], env: dict | None = None) -> dict:
    """Runs cmd under /usr/bin/time -v: wall s, cpu s (user+sys), rss MiB."""
    t0 = time.perf_counter()
    p = subprocess.run([TIME, "-v", *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    fields = {}
    for line in p.stderr.splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    try:
        cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
        rss = int(fields["Maximum resident set size (kbytes)"]) / 1024
    except (KeyError, ValueError):
        sys.exit(f"unexpected /usr/bin/time output:\n{p.stderr}")
    return {"wall": wall, "cpu": cpu, "rss": rss}


def header(path: str) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return 8 + n, json.loads(f.read(n))


def digest(path: str) -> str:
    """SHA-256 over every tensor (name, dtype, shape, raw bytes) in name order:
    equal digests mean the same tensors byte for byte, whatever the storage
    order and `__metadata__`."""
    start, h = header(path)
    h.pop("__metadata__", None)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        for name in sorted(h):
            t = h[name]
            sha.update(json.dumps([name, t["dtype"], t["shape"]]).encode())
            a, b = t["data_offsets"]
            for o in range(start + a, start + b, 1 << 26):
                sha.update(m[o:min(o + (1 << 26), start + b)])
        m.close()
    return sha.hexdigest()


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", help="default: /tmp/polymerge-bench[-7b]")
    ap.add_argument("--size", choices=sorted(WALL_TARGET), default="0.49b")
    ap.add_argument("--reps", type=int, default=None, help="default: 3 (0.49b), 1 (7b)")
    ap.add_argument("--clean", action="store_true", help="delete the generated pair afterwards")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the PyTorch reference (the equality check then uses "
                         "its output from an earlier run, if any)")
    ap.add_argument("--polymerge", action="append", metavar="NAME=BINARY",
                    help="polymerge binaries to compare (default: polymerge=target/release/polymerge)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write every measurement here")
    args = ap.parse_args()

    if not os.path.exists(TIME):
        sys.exit(f"{TIME} is missing: apt-get update && apt-get install -y time")
    binaries = []
    for spec in args.polymerge or ["polymerge=" + os.path.join(ROOT, "target/release/polymerge")]:
        name, _, rest = spec.partition("=")
        env = {}
        if ":" in rest:
            settings, _, rest = rest.partition(":")
            env = dict(kv.split("=", 1) for kv in settings.split(","))
        binaries.append((name, os.path.abspath(rest), env))
    if not args.no_build and not args.polymerge:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    big = args.size == "7b"
    if args.reps is None:
        args.reps = 1 if big else 3
    if big:
        args.no_reference = True
    d = os.path.abspath(args.dir or ("/tmp/polymerge-bench-7b" if big else "/tmp/polymerge-bench"))
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts/make_llama_pair.py"), d,
                    "--size", args.size], check=True)
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    inputs = sorted(os.path.join(a, f) for f in os.listdir(a) if f.endswith(".safetensors"))
    inputs += sorted(os.path.join(b, f) for f in os.listdir(b) if f.endswith(".safetensors"))
    out_dir = os.path.join(d, "out")
    os.makedirs(out_dir, exist_ok=True)

    # (name, command, output, extra environment)
    variants: list[tuple[str, list[str], str, dict]] = []
    floor_out = os.path.join(out_dir, "floor.safetensors")
    variants.append(("floor", ["sh", "-c", 'src=$1 dst=$2; shift 2; '
                               'cat "$@" > /dev/null && cp "$src" "$dst" && sync "$dst"',
                               "floor", os.path.join(a, "model.safetensors"), floor_out, *inputs],
                     floor_out, {}))
    for name, path, env in binaries:
        o = os.path.join(out_dir, f"{name}.safetensors")
        variants.append((name, [path, "avg", a, b, "-o", o, "--force", "--quiet"], o, env))
    # `avg` runs a basin check by default, unless told not to: also time the
    # merge alone.
    if binaries:
        path = binaries[-1][1]
        help_text = subprocess.run([path, "avg", "--help"], capture_output=True, text=True).stdout
        if "--no-basin-check" in help_text:
            o = os.path.join(out_dir, "no-basin.safetensors")
            variants.append(("no-basin", [path, "avg", a, b, "-o", o, "--force", "--quiet",
                                          "--no-basin-check"], o, {}))
    ref_out = os.path.join(out_dir, "reference.safetensors")
    if not args.no_reference:
        variants.append(("reference", [sys.executable, os.path.join(ROOT, "scripts/reference_avg.py"),
                                       ref_out, a, b], ref_out, {}))

    print(f"machine: {machine()}")
    print(f"inputs: {len(inputs)} files, {sum(os.path.getsize(p) for p in inputs) / 1e9:.2f} GB; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    results: dict[str, list[dict]] = {v[0]: [] for v in variants}
    digests: dict[str, str] = {}
    # Round 0 warms up (untimed); at 7b the inputs outgrow the page cache,
    # so there is nothing to warm and the round is skipped.
    for rnd in range(1 if big else 0, args.reps + 1):
        for name, cmd, out, env in variants:
            if os.path.exists(out):
                os.remove(out)
            subprocess.run(["sync"], check=True)
            r = run_timed(cmd, env)
            if rnd == args.reps and name != "floor":
                digests[name] = digest(out)
            if out != ref_out:
                os.remove(out)  # one output on disk at a time (13.5 GB at 7b)
            if rnd > 0:  # round 0 is the untimed warm-up
                results[name].append(r)
                print(f"  round {rnd} {name:>12}: {r['wall']:6.2f} s wall {r['cpu']:6.2f} s cpu "
                      f"{r['rss']:8.1f} MiB", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    floor = med("floor", "wall")
    target = WALL_TARGET[args.size]
    print()
    print(f"medians of {args.reps} runs")
    print(f"| {'variant':<12} | {'wall s':>6} | {'× floor':>7} | {'CPU s':>6} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 14}|{'-' * 8}|{'-' * 9}|{'-' * 8}|{'-' * 14}|")
    status = 0
    missed: list[str] = []
    for name, _, _, _ in variants:
        w, c, r = med(name, "wall"), med(name, "cpu"), med(name, "rss")
        print(f"| {name:<12} | {w:6.2f} | {w / floor:7.2f} | {c:6.2f} | {r:12.1f} |")
        if name not in ("floor", "reference") and (w > target * floor or r > RSS_TARGET_MIB):
            missed.append(name)
    print()
    print("every run (wall s / CPU s / peak RSS MiB):")
    for name, _, _, _ in variants:
        print(f"  {name:>12}: " + "  ".join(f"{r['wall']:.2f}/{r['cpu']:.2f}/{r['rss']:.0f}"
                                            for r in results[name]))
    print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "size": args.size, "reps": args.reps,
                       "results": results, "digests": digests}, f, indent=1)
    if "reference" not in digests and os.path.exists(ref_out):
        digests["reference"] = digest(ref_out)  # from an earlier run
    names = [v[0] for v in variants if v[0] not in ("floor", "reference")]
    base = "reference" if "reference" in digests else names[0]
    for name in names:
        if name == base:
            continue
        same = digests[name] == digests[base]
        print(f"{name}: {'identical to' if same else 'DIFFERS from'} {base} "
              f"(sha256 of every tensor {digests[name][:16]}…)")
        if not same:
            status = 1
    if base != "reference":
        print(f"no reference output: {base}'s output is the baseline")
    if args.clean:
        shutil.rmtree(d)
    verdict = f"missed by {', '.join(missed)}" if missed else "met"
    print(f"targets (wall ≤ {target}× floor, peak RSS ≤ {RSS_TARGET_MIB} MiB): {verdict}")
    return 1 if status or missed else 0


if __name__ == "__main__":
    sys.exit(main())
