#!/usr/bin/env bash
# Two (or more) polymerge builds aligning the 0.49 B LLaMA pair of
# scripts/bench_align_llama.sh, one after the other, then whether they found
# the same permutations, objectives and aligned bytes.
#
#   scripts/bench_align_llama_compare.sh DIR NAME=BINARY [NAME=BINARY ...]
#
# Each run's report, permutations and summary are kept as DIR/report-NAME.json,
# DIR/found-NAME.perm.json and printed; the aligned file's SHA-256 after each.
set -euo pipefail
DIR=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
names=()
for spec in "$@"; do
  name=${spec%%=*}
  bin=${spec#*=}
  names+=("$name")
  echo "== $name ($bin) $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  POLYMERGE=$bin bash "$ROOT/scripts/bench_align_llama.sh" "$DIR"
  cp "$DIR/report.json" "$DIR/report-$name.json"
  cp "$DIR/found.perm.json" "$DIR/found-$name.perm.json"
  sha256sum "$DIR/b_aligned.safetensors"
done
python3 - "$DIR" "${names[@]}" <<'PY'
import json, sys
d, names = sys.argv[1], sys.argv[2:]
reports = {n: json.load(open(f"{d}/report-{n}.json")) for n in names}
perms = {n: json.load(open(f"{d}/found-{n}.perm.json"))["groups"] for n in names}
for n, r in reports.items():
    print(f"{n}: objective {r['objective_before']!r} -> {r['objective_after']!r}, "
          f"alignment {r['seconds']:.1f} s")
first = names[0]
for n in names[1:]:
    print(f"{n} vs {first}: same permutations: {perms[n] == perms[first]}, "
          f"same objective: {reports[n]['objective_after'] == reports[first]['objective_after']}")
PY
