#!/usr/bin/env bash
# One permutation group of the 7B-shaped pair (scripts/make_llama_pair.py
# --size 7b) aligned end to end under /usr/bin/time -v: what one group visit
# costs at 7 B (similarity, assignment, memory) without the hours a whole
# alignment takes on two cores. Needs ~27 GB for the pair plus 13.5 GB for
# the aligned B (deleted afterwards).
#
#   scripts/bench_align_7b_group.sh [DIR] [GROUP]   (default /tmp/polymerge-bench-7b, layers.0.ffn)
set -euo pipefail
D=${1:-/tmp/polymerge-bench-7b}
GROUP=${2:-layers.0.ffn}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${POLYMERGE:-$ROOT/target/release/polymerge}
[ -f "$D/.complete" ] || python3 "$ROOT/scripts/make_llama_pair.py" "$D" --size 7b
/usr/bin/time -v "$BIN" align "$D/a" "$D/b" --groups "$GROUP" -o "$D/b_aligned.safetensors" --force \
  --json > "$D/align-group.json" 2> "$D/align-group.time"
grep -E "Elapsed|Maximum resident|User time|System time" "$D/align-group.time"
python3 - "$D/align-group.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"alignment {r['seconds']:.1f} s, {r['sweeps']} sweeps, objective "
      f"{r['objective_before']:.2f} -> {r['objective_after']:.2f}")
for g in r["groups"]:
    print(f"{g['name']} ({g['size']} units): {g['visits']} visit(s), similarity "
          f"{g['seconds_similarity']:.1f} s, assignment {g['seconds_assignment']:.1f} s, "
          f"churn {g['churn']:.4f}")
PY
rm -f "$D/b_aligned.safetensors"
