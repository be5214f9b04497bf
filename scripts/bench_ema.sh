#!/usr/bin/env bash
# Offline-EMA scale benchmark: N checkpoints (default 100) of a 100 MB
# (25 M f32 params) model, `polymerge ema --half-life` over all of them
# (default: with its basin check, in the same pass as the merge), against
# the floor of reading every input once and writing + fsyncing one output
# (`cat INPUTS > /dev/null && cp step-100 OUT && sync OUT`), side by side,
# warm page cache, medians of 3 rounds. Also runs under `ulimit -n 64` to
# show that 100 inputs need no more file descriptors than a handful (files
# are closed right after mapping).
#
#   bash scripts/bench_ema.sh [DIR] [N_CHECKPOINTS]     (default /tmp/polymerge-ema-bench, 100)
#
# PM=BINARY uses that binary instead of building target/release/polymerge;
# PM_BASE=BINARY also times an older build and checks that both write the
# same bytes. Targets: default `ema` ≤ 0.8× the floor, peak RSS ≤ 128 MiB.
#
# Needs: python3 with numpy + safetensors (to make the first checkpoint),
# /usr/bin/time (apt-get install -y time).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-/tmp/polymerge-ema-bench}"
n="${2:-100}"
mkdir -p "$dir"
if [ -z "${PM:-}" ]; then cargo build --release --quiet; fi
pm="${PM:-$PWD/target/release/polymerge}"
base="${PM_BASE:-}"
if [ ! -f "$dir/step-$(( n * 100 )).safetensors" ]; then
  python3 - "$dir" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
d = 2048
t = {f"layers.{i}.weight": rng.standard_normal((d, d), dtype=np.float32) for i in range(5)}
t["head.weight"] = rng.standard_normal((1024, d), dtype=np.float32)  # 25.2 M params, 100.7 MB
save_file(t, f"{sys.argv[1]}/step-100.safetensors", metadata={"format": "pt"})
PY
  for i in $(seq 2 "$n"); do cp "$dir/step-100.safetensors" "$dir/step-$(( i * 100 )).safetensors"; done
fi
files=()
for i in $(seq 1 "$n"); do files+=("$dir/step-$(( i * 100 )).safetensors"); done
echo "inputs: ${#files[@]} files, $(du -shc "${files[@]}" | tail -1 | cut -f1) in all; $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "${files[@]}" > /dev/null   # warm the page cache for every variant alike
log="$dir/times.txt"
: > "$log"
timed() {  # NAME CMD...: one timed run, "NAME wall_s rss_kib" appended to $log
  local name=$1; shift
  rm -f "$dir/out.safetensors"; sync
  /usr/bin/time -f "$name %e %M" -a -o "$log" "$@"
}
for rep in 1 2 3; do
  timed floor sh -c 'out=$1; shift; cat "$@" > /dev/null && cp "$1" "$out" && sync "$out"' \
    floor "$dir/out.safetensors" "${files[@]}"
  timed ema "$pm" ema "${files[@]}" --half-life 2000 -o "$dir/out.safetensors" --force --quiet
  cp "$dir/out.safetensors" "$dir/ema.safetensors"
  if [ -n "$base" ]; then
    timed ema-base "$base" ema "${files[@]}" --half-life 2000 -o "$dir/out.safetensors" --force --quiet
    cmp "$dir/out.safetensors" "$dir/ema.safetensors" && echo "rep $rep: ema-base output identical to ema's"
  fi
  timed ema-no-basin "$pm" ema "${files[@]}" --half-life 2000 --no-basin-check -o "$dir/out.safetensors" --force --quiet
  timed ema-f64 "$pm" ema "${files[@]}" --half-life 2000 --accum f64 -o "$dir/out.safetensors" --force --quiet
done
rm -f "$dir/out.safetensors" "$dir/ema.safetensors"
python3 - "$log" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, wall, rss = line.split()
    runs.setdefault(name, []).append((float(wall), int(rss) / 1024))
floor = statistics.median(w for w, _ in runs["floor"])
print("medians of 3 rounds")
print("| variant | wall s | × floor | peak RSS MiB |")
print("|---|---:|---:|---:|")
missed = []
for name, r in runs.items():
    w, m = statistics.median(x for x, _ in r), statistics.median(x for _, x in r)
    print(f"| {name} | {w:.2f} | {w / floor:.2f} | {m:.0f} |")
    if name == "ema" and (w > 0.8 * floor or m > 128):
        missed.append(name)
print("targets (ema ≤ 0.8× floor, peak RSS ≤ 128 MiB):", "missed" if missed else "met")
PY
( ulimit -n 64; "$pm" ema "${files[@]}" --half-life 2000 -o "$dir/ema.safetensors" --force --quiet && echo "ulimit -n 64: ok with ${#files[@]} inputs" )
rm -f "$dir/ema.safetensors"
