#!/usr/bin/env bash
# Alignment at scale: a LLaMA-style pair of 0.49 B parameters (d_model 2048,
# FFN 5632, 8 layers, 16 heads, 4 KV heads, bf16; B sharded in three files).
#
#   scripts/bench_align_llama.sh [DIR]        (default DIR=/tmp/polymerge-llama)
#
# 1. generates the pair with scripts/make_llama_align_pair.py (B = A permuted
#    in every group + 5% noise; ~2 GB of disk, ~4 min) unless DIR has it;
# 2. runs `polymerge align A B` with all groups, to convergence, under
#    /usr/bin/time -v (peak RSS), saving the JSON report and permutations;
# 3. prints time per group kind and per sweep, the similarity/assignment
#    split, peak RSS, and how many units landed where they belong.
set -euo pipefail
DIR=${1:-/tmp/polymerge-llama}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${POLYMERGE:-$ROOT/target/release/polymerge}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release)
[ -f "$DIR/truth.perm.json" ] || python3 "$ROOT/scripts/make_llama_align_pair.py" "$DIR"
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install -y time)"; exit 1; }
/usr/bin/time -v "$BIN" align "$DIR/a" "$DIR/b" -o "$DIR/b_aligned.safetensors" --force \
    --save-perm "$DIR/found.perm.json" --json >"$DIR/report.json" 2>"$DIR/time.txt"
python3 "$ROOT/scripts/bench_align_llama_report.py" "$DIR"
