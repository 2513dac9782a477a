#!/bin/bash
# bench/unet.sh: one UNet forward at the SD1.5 config (860M parameters, random float16 weights
# loaded as float32), 64x64 latent, batch 2, 77 context tokens, on the CPU: mood_unet_forward
# (bench_unet) against diffusers' UNet2DConditionModel on torch CPU, both on $THREADS threads
# (default 2), one warm-up then the median of $RUNS runs (default 3). Prints both times, their
# ratio, and how far each output is from diffusers' reference output (float32, all threads).
# The model and inputs are written once by tools/unet_sd15_reference.py under
# ${MOOD_BENCH_CACHE:-/tmp/mood-bench}/unet-sd15 (1.7 GB) and reused.
# Needs: tools/.venv (torch, diffusers), ~8 GB of memory.
# Usage: bench/unet.sh [MOOD_BINARY] [RUNS]   (defaults: build/mood, 3; bench_unet is looked up
# beside it in bench/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
RUNS=${2:-3}
THREADS=${THREADS:-2}
BENCH_UNET=$(dirname "$MOOD")/bench/bench_unet
PY=${PYTHON:-$root/tools/.venv/bin/python}
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}/unet-sd15
io="$cache/io_2x64x77.safetensors"

"$PY" "$root/tools/unet_sd15_reference.py" make "$cache" --batch 2 --size 64 --tokens 77 \
    2>/dev/null
cat "$cache/unet/diffusion_pytorch_model.safetensors" >/dev/null # warm the page cache

export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# OpenBLAS names the kernel set it chose on stderr with OPENBLAS_VERBOSE=2 ("Core: SkylakeX").
# OpenBLAS 0.3.21 does not know every CPU model and then falls back to its slowest (Prescott,
# SSE3) kernels; bench_unet, like the mood command, then restarts itself with OPENBLAS_CORETYPE
# set to what the CPU runs (SkylakeX, Haswell), unless OPENBLAS_CORETYPE is set already.
mood_out=$(OPENBLAS_VERBOSE=2 "$BENCH_UNET" "$cache/unet" "$io" "$RUNS" 2>&1)
torch_out=$("$PY" "$root/tools/unet_sd15_reference.py" time "$cache" --batch 2 --size 64 \
    --tokens 77 --threads "$THREADS" --runs "$RUNS" 2>/dev/null)
field() { awk -v k="$1" '$1 == k { v = $2 } END { print v }'; }
mood_ms=$(field mood_ms <<<"$mood_out")
torch_ms=$(field torch_ms <<<"$torch_out")

echo "SD1.5 UNet forward, 64x64 latent, batch 2, 77 tokens, $THREADS threads ($(lscpu |
    awk -F': +' '/Model name/ { print $2; exit }'))"
printf 'mood (bench_unet):         %9.1f ms   rel. error vs diffusers %s   (load %s ms, OpenBLAS %s)\n' \
    "$mood_ms" "$(field mood_rel_err <<<"$mood_out")" "$(field mood_load_ms <<<"$mood_out")" \
    "$(field Core: <<<"$mood_out")"
printf 'diffusers (torch CPU):     %9.1f ms   rel. error vs reference %s\n' "$torch_ms" \
    "$(field torch_rel_err <<<"$torch_out")"
awk -v m="$mood_ms" -v t="$torch_ms" 'BEGIN { printf "mood / torch time: %.2fx\n", m / t }'
