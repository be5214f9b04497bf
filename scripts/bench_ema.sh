#!/usr/bin/env bash
# Offline-EMA scale benchmark: 100 checkpoints of a 100 MB (25 M f32 params)
# model, `polymerge ema --half-life` over all of them, against the floor of
# reading every input once (cat > /dev/null), side by side, warm page cache.
# Also runs under `ulimit -n 64` to show that 100 inputs need no more file
# descriptors than a handful (files are closed right after mapping).
#
#   bash scripts/bench_ema.sh [DIR] [N_CHECKPOINTS]     (default /tmp/polymerge-ema-bench, 100)
#
# Needs: python3 with numpy + safetensors (to make the first checkpoint),
# /usr/bin/time (apt-get install -y time), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-/tmp/polymerge-ema-bench}"
n="${2:-100}"
mkdir -p "$dir"
cargo build --release --quiet
pm="$PWD/target/release/polymerge"
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
files=("$dir"/step-*.safetensors)
echo "inputs: ${#files[@]} files, $(du -shc "${files[@]}" | tail -1 | cut -f1) in all"
cat "${files[@]}" > /dev/null   # warm the page cache for every variant alike
for rep in 1 2 3; do
  /usr/bin/time -f "floor  rep $rep: %e s wall, %M KiB peak RSS" cat "${files[@]}" > /dev/null
  /usr/bin/time -f "ema    rep $rep: %e s wall, %M KiB peak RSS" "$pm" ema "${files[@]}" --half-life 2000 -o "$dir/ema.safetensors" --force --quiet
  /usr/bin/time -f "ema64f rep $rep: %e s wall, %M KiB peak RSS" "$pm" ema "${files[@]}" --half-life 2000 --accum f64 -o "$dir/ema.safetensors" --force --quiet
done
( ulimit -n 64; "$pm" ema "${files[@]}" --half-life 2000 -o "$dir/ema.safetensors" --force --quiet && echo "ulimit -n 64: ok with ${#files[@]} inputs" )
