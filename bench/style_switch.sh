#!/bin/bash
# bench/style_switch.sh: switching a loaded SD1.5-config model (random weights) to a set of three
# style LoRAs (rank 32 on every attention, feed-forward and projection layer of the UNet and the
# text encoder; 0.8, 0.5, 0.3), merged from pristine weights, then to another set: mood
# (bench_style_switch) against diffusers' load_lora_weights + set_adapters + fuse_lora (and
# unfuse + unload before the second set), both on $THREADS threads (default 2). The goal is a
# switch under 1 s. The model and LoRAs are written once by tools/sd15_pipeline_reference.py
# under ${MOOD_BENCH_CACHE:-/tmp/mood-bench} (about 2.5 GB).
# Usage: bench/style_switch.sh [MOOD_BINARY]   (bench_style_switch is looked up beside it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
THREADS=${THREADS:-2}
BENCH=$(dirname "$MOOD")/bench/bench_style_switch
PY=${PYTHON:-$root/tools/.venv/bin/python}
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}
"$PY" "$root/tools/sd15_pipeline_reference.py" make "$cache" 2>/dev/null
l=$cache/loras
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mood_out=$("$BENCH" "$cache/sd15" $l/style1.safetensors $l/style2.safetensors \
    $l/style3.safetensors $l/style4.safetensors $l/style5.safetensors $l/style6.safetensors)
torch_out=$("$PY" "$root/tools/sd15_pipeline_reference.py" switch "$cache" --threads "$THREADS" \
    2>/dev/null)
field() { awk -v k="$1" '$1 == k { print $2 }'; }
echo "Switching an SD1.5 model to three rank-32 style LoRAs, $THREADS threads ($(lscpu |
    awk -F': +' '/Model name/ { print $2; exit }'))"
printf 'mood:      first set %8.1f ms   switch %8.1f ms   back %8.1f ms   runtime set %8.1f ms\n' \
    "$(field first_set_ms <<<"$mood_out")" "$(field switch_ms <<<"$mood_out")" \
    "$(field switch_back_ms <<<"$mood_out")" "$(field runtime_set_ms <<<"$mood_out")"
printf 'diffusers: first set %8.1f ms   switch %8.1f ms\n' \
    "$(field torch_first_set_ms <<<"$torch_out")" "$(field torch_switch_ms <<<"$torch_out")"
awk -v m="$(field switch_ms <<<"$mood_out")" -v t="$(field torch_switch_ms <<<"$torch_out")" \
    'BEGIN { printf "mood / diffusers switch time: %.2fx (goal: mood under 1000 ms)\n", m / t }'
