#!/bin/bash
# bench/inspect.sh: time of `mood inspect --json` on a generated SDXL LoRA of about 2,000 tensors
# (kohya names, rank 4, fp16; bench/make_sdxl_lora.py). The Python figure beside it is the least
# any Python tool pays to look at the same file: one process that opens it with safetensors'
# safe_open (numpy, so torch is not imported) and reads the metadata, the keys and every shape.
# Prints the median of RUNS runs (default 11) of each, in ms.
# Usage: bench/inspect.sh [MOOD_BINARY] [RUNS]   (defaults: build/mood, 11)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
RUNS=${2:-11}
PY=${PYTHON:-$root/tools/.venv/bin/python}
. "$here/lib.sh"
tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/mood-bench-inspect-XXXXXX")
trap 'rm -rf "$tmpdir"' EXIT
lora="$tmpdir/sdxl_lora.safetensors"
"$PY" "$here/make_sdxl_lora.py" "$lora" 2000 >/dev/null

"$MOOD" inspect --json "$lora" >"$tmpdir/out.json"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$tmpdir/out.json"

cat >"$tmpdir/ref.py" <<'PY'
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    meta = f.metadata()
    shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
print(len(shapes), len(meta))
PY

mood_ms=$(median_ms "$MOOD" inspect --json "$lora")
ref_ms=$(median_ms "$PY" "$tmpdir/ref.py" "$lora")
printf 'file: %s tensors, %d bytes\n' "$("$PY" -c 'import sys
from safetensors import safe_open
print(len(safe_open(sys.argv[1], "np").keys()))' "$lora")" "$(stat -c %s "$lora")"
printf 'mood inspect --json:                 %8.1f ms (median of %d)\n' "$mood_ms" "$RUNS"
printf 'python safe_open + shapes (reference): %6.1f ms (median of %d)\n' "$ref_ms" "$RUNS"
printf 'ratio reference/mood: %.1fx\n' "$(awk -v a="$ref_ms" -v b="$mood_ms" 'BEGIN { print a / b }')"
