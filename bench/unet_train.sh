#!/bin/bash
# bench/unet_train.sh: one LoRA training step of the UNet on the CPU, forward with a tape then
# backward into the side paths' factors (bench_unet_train: mood_unet_forward_train +
# mood_unet_backward), against the same step in torch autograd with the base weights frozen
# (tools/unet_train_reference.py), both on $THREADS threads (default 2). Side paths: rank 8 on
# kohya's default targets (every Linear/Conv2d inside the transformers: 192 on SD1.5's layout).
#   1. a small SD1.5-layout UNet (widths 64/128/256/256), 32x32 latent, batch 1, 77 tokens: mood
#      with the full tape and with checkpointing, torch; $ROUNDS rounds of (mood, torch), each a
#      warm-up and the median of $RUNS steps; prints the medians over the rounds and the ratio;
#   2. SD1.5 itself (860M parameters): one step at a 16x16 latent (SD15_STEP=0 skips it), and the
#      memory of a step at 512x512 (64x64 latent, batch 1): mood's tape and backward pass
#      (mood_unet_train_memory, both modes) against the tensors torch autograd saves.
# Models and references are written once under ${MOOD_BENCH_CACHE:-/tmp/mood-bench} and reused
# (the SD1.5 one is bench/unet.sh's, 1.7 GB). Needs tools/.venv (torch, diffusers), ~16 GB.
# Usage: bench/unet_train.sh [MOOD_BINARY]   (default build/mood; bench_unet_train beside it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
RUNS=${RUNS:-3}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
BENCH=$(dirname "$MOOD")/bench/bench_unet_train
PY=${PYTHON:-$root/tools/.venv/bin/python}
REF=$root/tools/unet_train_reference.py
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}
small=$cache/unet-train-small
sd15=$cache/unet-sd15

export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
field() { awk -v k="$1" '$1 == k { v = $2 } END { print v }'; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

"$PY" "$REF" make "$small" --config small --size 32 --tokens 77 --rank 8
io=$small/io_1x32x77_r8.safetensors
m_all="" c_all="" t_all="" f_all="" b_all=""
for r in $(seq "$ROUNDS"); do
    out=$("$BENCH" "$small/unet" "$io" "$RUNS")
    m_all+=" $(field mood_ms <<<"$out")" f_all+=" $(field mood_fwd_ms <<<"$out")"
    b_all+=" $(field mood_bwd_ms <<<"$out")"
    c_all+=" $(field mood_ms <<<"$("$BENCH" "$small/unet" "$io" "$RUNS" checkpoint)")"
    t_all+=" $(field torch_ms <<<"$("$PY" "$REF" time "$small" --size 32 --tokens 77 --rank 8 \
        --threads "$THREADS" --runs "$RUNS")")"
done
m=$(median <<<"$m_all") c=$(median <<<"$c_all") t=$(median <<<"$t_all")
echo "LoRA training step, small SD1.5-layout UNet, 32x32 latent, batch 1, 77 tokens, rank 8," \
    "$THREADS threads ($(lscpu | awk -F': +' '/Model name/ { print $2; exit }'))"
printf 'mood, full tape:       %8.1f ms (forward %s, backward %s; rounds:%s)  grads vs torch %s  %s MB\n' \
    "$m" "$(median <<<"$f_all")" "$(median <<<"$b_all")" "$m_all" \
    "$(field mood_grad_rel_err <<<"$out")" "$(field mood_step_mb <<<"$out")"
printf 'mood, checkpointing:   %8.1f ms (rounds:%s)\n' "$c" "$c_all"
printf 'torch autograd:        %8.1f ms (rounds:%s)\n' "$t" "$t_all"
awk -v m="$m" -v t="$t" 'BEGIN { printf "mood / torch time: %.2fx\n", m / t }'

[ "${SD15_STEP:-1}" = 0 ] || {
    "$PY" "$REF" make "$sd15" --config sd15 --size 16 --tokens 77 --rank 8
    out=$("$BENCH" "$sd15/unet" "$sd15/io_1x16x77_r8.safetensors" 1)
    t=$(field torch_ms <<<"$("$PY" "$REF" time "$sd15" --config sd15 --size 16 --tokens 77 \
        --rank 8 --threads "$THREADS" --runs 1)")
    printf 'SD1.5 16x16 step: mood %s ms (forward %s, backward %s; grads vs torch %s), torch %s ms\n' \
        "$(field mood_ms <<<"$out")" "$(field mood_fwd_ms <<<"$out")" \
        "$(field mood_bwd_ms <<<"$out")" "$(field mood_grad_rel_err <<<"$out")" "$t"
}
mem=$("$BENCH" --memory "$sd15/unet" 1 64 64 77)
tm=$(field torch_saved_mb <<<"$("$PY" "$REF" memory "$sd15" --config sd15 --size 64 --tokens 77)")
printf 'SD1.5 512x512 step memory: mood tape %s MB + backward %s MB; checkpointing: %s + %s MB;' \
    "$(field tape_mb <<<"$mem")" "$(field backward_mb <<<"$mem")" \
    "$(field ckpt_tape_mb <<<"$mem")" "$(field ckpt_backward_mb <<<"$mem")"
printf ' torch saved tensors %s MB\n' "$tm"
