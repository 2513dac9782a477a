#!/bin/bash
# bench/unet_sdxl.sh: one UNet forward at the SDXL config (stable-diffusion-xl-base-1.0's UNet,
# 2.57G parameters, random float16 weights loaded as float32), 64x64 latent, batch 2, 77 context
# tokens of width 2048 plus the text_time added conditioning (text_embeds 1280, time ids), on the
# CPU: mood_unet_forward (bench_unet) against diffusers' UNet2DConditionModel on torch CPU, both
# on $THREADS threads (default 2), one warm-up then the median of $RUNS runs (default 3). Prints
# both times, their ratio, and how far each output is from diffusers' reference output (float32).
# The model and inputs are written once by tools/unet_sdxl_reference.py under
# ${MOOD_BENCH_CACHE:-/tmp/mood-bench}/unet-sdxl (5.1 GB) and reused.
# Needs: tools/.venv (torch, diffusers), 5.1 GB of disk, ~15 GB of memory the first time (python
# making the model and its reference output), then ~11 GB (each side holds the 10.3 GB of float32
# weights, one after the other).
# SDXL_CONFIG=small runs the same on the reference script's small SDXL-shaped UNet (same block
# types and input widths, 50 MB; cache unet-sdxl-small): checks the plumbing in about a minute.
# Usage: bench/unet_sdxl.sh [MOOD_BINARY] [RUNS]   (defaults: build/mood, 3; bench_unet is looked
# up beside it in bench/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
RUNS=${2:-3}
THREADS=${THREADS:-2}
CONFIG=${SDXL_CONFIG:-full}
BENCH_UNET=$(dirname "$MOOD")/bench/bench_unet
PY=${PYTHON:-$root/tools/.venv/bin/python}
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}/unet-sdxl
[ "$CONFIG" = full ] || cache=$cache-$CONFIG
io="$cache/io_2x64x77.safetensors"
ref=(--config "$CONFIG" --batch 2 --size 64 --tokens 77)

"$PY" "$root/tools/unet_sdxl_reference.py" make "$cache" "${ref[@]}" 2>/dev/null
cat "$cache/unet/diffusion_pytorch_model.safetensors" >/dev/null # warm the page cache

export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# OpenBLAS names its kernel set on stderr with OPENBLAS_VERBOSE=2 (see bench/unet.sh).
mood_out=$(OPENBLAS_VERBOSE=2 "$BENCH_UNET" "$cache/unet" "$io" "$RUNS" 2>&1)
torch_out=$("$PY" "$root/tools/unet_sdxl_reference.py" time "$cache" "${ref[@]}" \
    --threads "$THREADS" --runs "$RUNS" 2>/dev/null)
field() { awk -v k="$1" '$1 == k { v = $2 } END { print v }'; }
mood_ms=$(field mood_ms <<<"$mood_out")
torch_ms=$(field torch_ms <<<"$torch_out")
if [ -z "$mood_ms" ] || [ -z "$torch_ms" ]; then
    echo "unet_sdxl.sh: a side failed:" >&2
    printf '%s\n%s\n' "$mood_out" "$torch_out" >&2
    exit 1
fi

echo "SDXL UNet forward ($CONFIG config), 64x64 latent, batch 2, 77 tokens, $THREADS threads" \
    "($(lscpu | awk -F': +' '/Model name/ { print $2; exit }'))"
printf 'mood (bench_unet):         %9.1f ms   rel. error vs diffusers %s   (load %s ms, OpenBLAS %s)\n' \
    "$mood_ms" "$(field mood_rel_err <<<"$mood_out")" "$(field mood_load_ms <<<"$mood_out")" \
    "$(field Core: <<<"$mood_out")"
printf 'diffusers (torch CPU):     %9.1f ms   rel. error vs reference %s\n' "$torch_ms" \
    "$(field torch_rel_err <<<"$torch_out")"
awk -v m="$mood_ms" -v t="$torch_ms" 'BEGIN { printf "mood / torch time: %.2fx\n", m / t }'
