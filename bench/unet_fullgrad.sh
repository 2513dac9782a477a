#!/bin/bash
# bench/unet_fullgrad.sh: one full-parameter training step of a small pixel-space UNet on the
# CPU, forward with a tape then backward into every weight's gradient (bench_unet_fullgrad:
# mood_unet_forward_train + mood_unet_backward_ex), against the same step in torch autograd with
# every parameter trainable (tools/unet_fullgrad_reference.py), both on $THREADS threads
# (default 2), batch $BATCH (default 32), 77 context tokens. Two models:
#   1. pixel: in/out channels 3, widths 32/64/128, attention at the lowest level and in the mid
#      block, context 128; 32 x 32 inputs;
#   2. mood-tiny (tools/mood_tiny/init_model.py's UNet): 48 channels (64 x 64 pixels as 4 x 4
#      patches), widths 64/128/128, context 64; 16 x 16 inputs.
# $ROUNDS rounds of (mood, torch), each a warm-up and the median of $RUNS steps; prints the
# medians over the rounds (wall clock), the ratio, mood's backward without the weight gradients
# (what they cost), and each side's CPU time per step on ONE thread (a figure that other load on
# a shared machine hardly changes; CPU1=0 skips it).
# Models and references are written once under ${MOOD_BENCH_CACHE:-/tmp/mood-bench} and reused.
# Needs tools/.venv (torch, diffusers), ~2 GB.
# Usage: bench/unet_fullgrad.sh [MOOD_BINARY]   (default build/mood; bench_unet_fullgrad beside it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
RUNS=${RUNS:-3}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
BATCH=${BATCH:-32}
CPU1=${CPU1:-1}
BENCH=$(dirname "$MOOD")/bench/bench_unet_fullgrad
PY=${PYTHON:-$root/tools/.venv/bin/python}
REF=$root/tools/unet_fullgrad_reference.py
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}

field() { awk -v k="$1" '$1 == k { v = $2 } END { print v }'; }
median() {
    tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
threads() { export OMP_NUM_THREADS=$1 OPENBLAS_NUM_THREADS=$1 MKL_NUM_THREADS=$1; }

echo "Full-parameter training step, batch $BATCH, 77 tokens," \
    "$THREADS threads ($(lscpu | awk -F': +' '/Model name/ { print $2; exit }'))"
for spec in pixel:32 mood-tiny:16; do
    config=${spec%%:*} size=${spec##*:}
    dir=$cache/unet-fullgrad-$config
    args=(--config "$config" --size "$size" --batch "$BATCH" --tokens 77)
    threads "$THREADS"
    "$PY" "$REF" make "$dir" "${args[@]}"
    io=$dir/io_${BATCH}x${size}x77.safetensors
    m_all="" f_all="" b_all="" n_all="" t_all="" tf_all="" tb_all=""
    for r in $(seq "$ROUNDS"); do
        out=$("$BENCH" "$dir/unet" "$io" "$RUNS")
        m_all+=" $(field mood_ms <<<"$out")" f_all+=" $(field mood_fwd_ms <<<"$out")"
        b_all+=" $(field mood_bwd_ms <<<"$out")" n_all+=" $(field mood_bwd_no_weights_ms <<<"$out")"
        tout=$("$PY" "$REF" time "$dir" "${args[@]}" --threads "$THREADS" --runs "$RUNS")
        t_all+=" $(field torch_ms <<<"$tout")" tf_all+=" $(field torch_fwd_ms <<<"$tout")"
        tb_all+=" $(field torch_bwd_ms <<<"$tout")"
    done
    m=$(median <<<"$m_all") t=$(median <<<"$t_all")
    echo "$config: ${size}x${size}, $(field weights <<<"$out") weights"
    printf '  mood:  %8.1f ms (forward %s, backward %s; backward without weight gradients %s;' \
        "$m" "$(median <<<"$f_all")" "$(median <<<"$b_all")" "$(median <<<"$n_all")"
    printf ' rounds:%s)  weight grads vs torch %s  %s MB\n' "$m_all" \
        "$(field mood_grad_rel_err <<<"$out")" "$(field mood_step_mb <<<"$out")"
    printf '  torch: %8.1f ms (forward %s, backward %s; rounds:%s)\n' "$t" \
        "$(median <<<"$tf_all")" "$(median <<<"$tb_all")" "$t_all"
    awk -v m="$m" -v t="$t" 'BEGIN { printf "  mood / torch time: %.2fx\n", m / t }'
    [ "$CPU1" = 0 ] || {
        threads 1
        mc=$(field mood_cpu_ms <<<"$("$BENCH" "$dir/unet" "$io" "$RUNS")")
        tc=$(field torch_cpu_ms <<<"$("$PY" "$REF" time "$dir" "${args[@]}" --threads 1 \
            --runs "$RUNS")")
        awk -v m="$mc" -v t="$tc" 'BEGIN {
            printf "  1 thread, CPU time per step: mood %.1f ms, torch %.1f ms: %.2fx\n",
                m, t, m / t
        }'
    }
done
