#!/bin/bash
# bench/registry.sh: the registry's benchmarks (issue 3).
#  1. `mood import` of a 145 MB SDXL LoRA (bench/make_sdxl_lora.py, rank 30) into an empty
#     registry, against `sha256sum` of the same file: import hashes, validates and stores it.
#  2. `mood list --json` and `mood search` over a registry of N styles (default 10,000) built by
#     bench_registry, against the least a script pays for the same rows: one Python process that
#     reads them with the sqlite3 module.
# Usage: bench/registry.sh [MOOD_BINARY] [N] [RUNS]   (defaults: build/mood, 10000, 11)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
N=${2:-10000}
RUNS=${3:-11}
BENCH_REGISTRY=$(dirname "$MOOD")/bench/bench_registry
PY=${PYTHON:-$root/tools/.venv/bin/python}
. "$here/lib.sh"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mood-bench-registry-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- 1. import ----------------------------------------------------------------------------
lora="$tmp/sdxl_style.safetensors"
"$PY" "$here/make_sdxl_lora.py" "$lora" 2000 30 >/dev/null
cat "$lora" >/dev/null # warm the page cache for both sides
# Import writes and fsyncs a copy: start each run with no other writes pending (the generated file
# itself, earlier runs' copies), so that the run measures its own I/O only.
import_s=""
for n in 1 2 3; do
    sync
    t0=$(date +%s%N)
    MOOD_HOME="$tmp/import-$n" "$MOOD" import --offline "$lora" >/dev/null
    t1=$(date +%s%N)
    d=$(((t1 - t0) / 1000))
    if [ -z "$import_s" ] || [ "$d" -lt "$import_s" ]; then import_s=$d; fi
done
import_s=$(awk -v us="$import_s" 'BEGIN { printf "%.3f", us / 1e6 }')
RUNS_SAVED=$RUNS
RUNS=3
sha_s=$(best_s sha256sum "$lora")
RUNS=$RUNS_SAVED
size=$(stat -c %s "$lora")
printf 'import: %d bytes\n' "$size"
printf '  mood import:  %.3f s (best of 3)\n' "$import_s"
printf '  sha256sum:    %.3f s (best of 3)\n' "$sha_s"
printf '  ratio mood/sha256sum: %.2fx (goal <= 1.2x)\n' \
    "$(awk -v a="$import_s" -v b="$sha_s" 'BEGIN { print a / b }')"

# --- 2. list and search over N styles -----------------------------------------------------
home="$tmp/big"
t0=$(date +%s%N)
"$BENCH_REGISTRY" "$home" "$root/examples/loras/inkwash.safetensors" "$N"
t1=$(date +%s%N)
cat >"$tmp/ref.py" <<'PY'
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT * FROM styles ORDER BY name").fetchall()
print(json.dumps([list(map(str, r)) for r in rows])[:10])
PY
export MOOD_HOME="$home"
count=$("$MOOD" list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
list_ms=$(median_ms "$MOOD" list --json)
search_ms=$(median_ms "$MOOD" search ink --json)
ref_ms=$(median_ms "$PY" "$tmp/ref.py" "$home/registry.db")
printf 'registry: %s styles (built in %.1f s)\n' "$count" "$(awk -v d=$((t1 - t0)) 'BEGIN { print d / 1e9 }')"
printf '  mood list --json:        %7.1f ms (median of %d; goal < 50 ms)\n' "$list_ms" "$RUNS"
printf '  mood search ink --json:  %7.1f ms (median of %d; goal < 50 ms)\n' "$search_ms" "$RUNS"
printf '  python sqlite3, all style rows (reference): %.1f ms\n' "$ref_ms"
