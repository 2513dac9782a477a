#!/bin/bash
# bench/bake.sh: `mood bake` against kohya sd-scripts' merge (networks/merge_lora.py
# merge_to_sd_model on torch CPU, float32, driven by bench/bake_reference.py) on an SD1.5-size
# UNet checkpoint (real LDM names and shapes, 860M random fp16 parameters, ~1.7 GB) and a rank-32
# LoRA/LoCon (attention, feed-forward, proj_in/out and ResnetBlock2D 3x3 convs, kohya names).
# Both run in this script on the same inputs with a warm page cache; prints wall time and peak
# RSS (/usr/bin/time -v "Maximum resident set size") of each, their ratios, and how far the two
# outputs differ (bench/bake_compare.py).
# Needs: tools/.venv (torch, safetensors, diffusers, transformers), a kohya sd-scripts checkout
# in $MOOD_SD_SCRIPTS (default /tmp/sd-scripts; cloned from the local mirror when absent), about
# 6 GB free in $TMPDIR and 8 GB of memory.
# Usage: bench/bake.sh [MOOD_BINARY] [RATIO]   (defaults: build/mood, 0.8)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
RATIO=${2:-0.8}
PY=${PYTHON:-$root/tools/.venv/bin/python}
export MOOD_SD_SCRIPTS=${MOOD_SD_SCRIPTS:-/tmp/sd-scripts}
if [ ! -f "$MOOD_SD_SCRIPTS/networks/merge_lora.py" ]; then
    if [ -z "${MOOD_SD_SCRIPTS_REPO:-}" ]; then
        echo "bench/bake.sh: needs a kohya-ss/sd-scripts checkout (commit 48d368fa) in" \
            "\$MOOD_SD_SCRIPTS, or a clone URL/path in \$MOOD_SD_SCRIPTS_REPO" >&2
        exit 2
    fi
    git clone -q "$MOOD_SD_SCRIPTS_REPO" "$MOOD_SD_SCRIPTS"
fi
tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/mood-bench-bake-XXXXXX")
trap 'rm -rf "$tmpdir"' EXIT

"$PY" "$here/bake_reference.py" make "$tmpdir" 2>/dev/null
ckpt="$tmpdir/sd15_unet.safetensors"
lora="$tmpdir/lora_r32.safetensors"

# Runs "$@" under /usr/bin/time -v; sets secs and rss_mb.
measure() {
    local log="$tmpdir/time.log"
    /usr/bin/time -v "$@" >"$tmpdir/out.log" 2>"$log" || {
        cat "$tmpdir/out.log" "$log" >&2
        return 1
    }
    secs=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0;
        for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$log")
    rss_mb=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$log")
}

cat "$ckpt" >/dev/null # warm the page cache for both
measure "$MOOD" bake --model "$ckpt" --lora "$lora:$RATIO" -o "$tmpdir/mood.safetensors"
mood_s=$secs mood_rss=$rss_mb
measure "$PY" "$here/bake_reference.py" merge "$ckpt" "$lora" "$RATIO" "$tmpdir/ref.safetensors"
ref_s=$secs ref_rss=$rss_mb

printf 'inputs: %s (%d bytes), %s (%d bytes), ratio %s\n' "$(basename "$ckpt")" \
    "$(stat -c %s "$ckpt")" "$(basename "$lora")" "$(stat -c %s "$lora")" "$RATIO"
printf 'mood bake:                   %7.1f s  peak RSS %6d MB\n' "$mood_s" "$mood_rss"
printf 'kohya merge_to_sd_model (CPU): %5.1f s  peak RSS %6d MB\n' "$ref_s" "$ref_rss"
awk -v a="$ref_s" -v b="$mood_s" -v c="$ref_rss" -v d="$mood_rss" \
    'BEGIN { printf "speed-up %.2fx, memory %.1fx less\n", a / b, c / d }'
"$PY" "$here/bake_compare.py" "$tmpdir/mood.safetensors" "$tmpdir/ref.safetensors" "$ckpt"
