#!/bin/bash
# bench/train_step.sh: one LoRA training step at SD1.5's config (random weights), 512x512 (SIZE),
# batch 1, rank 16 (RANK), alpha = rank (ALPHA; the recipe's lora_alpha=args.rank), float32 on
# the CPU, both on $THREADS threads (default 2): mood's trainer (mood_train_run, what `mood train`
# runs, through bench_train_step) against diffusers' LoRA recipe (examples/text_to_image/
# train_text_to_image_lora.py: PEFT on the UNet, torch.optim.AdamW) reproduced by
# bench/train_step_reference.py, in the same run. Each side: one warm-up step, then the median of
# $RUNS (default 3); peak resident memory of each process (getrusage, loading included).
#
# What a step contains. Both: noise and timestep draws, noisy latents, the UNet forward with the
# LoRA on to_q/to_k/to_v/to_out.0 of every attention (mood --targets attn: the same 128 modules;
# the script checks that both count the same modules and values), MSE loss, backward into the
# LoRA factors, clipping by global norm (1.0), AdamW (lr 1e-4, weight decay 1e-2), the constant
# schedule. That is the "step" compared. Beyond it, the recipe encodes the image with the VAE
# (latent_dist.sample() * scaling) and the caption with the text encoder at EVERY step (and loads
# and transforms the image); mood caches both once per image before training. Those parts are
# timed apart: the recipe's inside its step, mood's with bench_train_step encode (one VAE encode,
# one text-encoder pass). "full" = step + those per-step extras.
# Gradient checkpointing: off by default on both sides (mood turns it on when memory is short,
# mood__train_tape_flags); with TORCH_CKPT=1 (default) each side is also timed with it (the
# recipe's --gradient_checkpointing, mood train --gradient-checkpointing on).
# The model is bench/gen.sh's (tools/sd15_pipeline_reference.py's pipeline, under
# ${MOOD_BENCH_CACHE:-/tmp/mood-bench}/sd15, made by bench/train_inputs.sh, which gpu.sh's
# training step shares); MODEL=DIR takes another diffusers SD1-layout folder (e.g.
# MODEL=tests/fixtures/pipeline/tiny-sd SIZE=64 RUNS=2 to check the plumbing in seconds).
# Needs tools/.venv (torch, diffusers, peft); at 512x512 about 10 GB of memory and ~5 minutes.
# Usage: bench/train_step.sh [MOOD_BINARY]   (default build/mood; bench_train_step beside it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
RUNS=${RUNS:-3}
THREADS=${THREADS:-2}
SIZE=${SIZE:-512}
RANK=${RANK:-16}
ALPHA=${ALPHA:-$RANK}
TORCH_CKPT=${TORCH_CKPT:-1}
BENCH=$(dirname "$MOOD")/bench/bench_train_step
PY=${PYTHON:-$root/tools/.venv/bin/python}
REF=$here/train_step_reference.py
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}
# shellcheck source=bench/train_inputs.sh
. "$here/train_inputs.sh"
train_inputs "$PY" "$cache" "$SIZE" # sets MODEL (unless given) and BOARD
board=$BOARD
heads=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_attention_heads"])' \
    "$MODEL/text_encoder/config.json")
cat "$MODEL"/*/*.safetensors >/dev/null # warm the page cache for both sides' loading

export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
field() { awk -v k="$1" '$1 == k { v = $2 } END { print v }'; }
args=(--size "$SIZE" --rank "$RANK" --alpha "$ALPHA" --threads "$THREADS" --runs "$RUNS")

m=$("$BENCH" train "$MODEL" "$board" "$out/lora.safetensors" "$RUNS" "$SIZE" "$RANK" "$ALPHA")
mood_ckpt=$(field mood_checkpointing <<<"$m") # mood's own choice
mo=""                                          # and the other way, beside the recipe's two
[ "$TORCH_CKPT" = 0 ] ||
    mo=$(MOOD_BENCH_CHECKPOINTING=$([ "$mood_ckpt" = True ] && echo off || echo on) "$BENCH" \
        train "$MODEL" "$board" "$out/lora.safetensors" "$RUNS" "$SIZE" "$RANK" "$ALPHA")
e=$("$BENCH" encode "$MODEL" "$SIZE" "$RUNS" "$heads")
t=$("$PY" "$REF" time "$MODEL" "$board" "${args[@]}" 2>/dev/null)
tc=""
[ "$TORCH_CKPT" = 0 ] || tc=$("$PY" "$REF" time "$MODEL" "$board" "${args[@]}" --checkpointing \
    2>/dev/null)

for k in lora_modules lora_params; do
    if [ "$(field "mood_$k" <<<"$m")" != "$(field "torch_$k" <<<"$t")" ]; then
        echo "train_step.sh: $k differ: mood $(field "mood_$k" <<<"$m"), PEFT" \
            "$(field "torch_$k" <<<"$t")" >&2
        exit 1
    fi
done
ms=$(field mood_step_ms <<<"$m") mv=$(field mood_vae_ms <<<"$e") mt=$(field mood_te_ms <<<"$e")
mm=$(field mood_rss_mb <<<"$m")
ts=$(field torch_step_ms <<<"$t") tf=$(field torch_full_ms <<<"$t") tm=$(field torch_rss_mb <<<"$t")

echo "LoRA training step, $(basename "$MODEL") (SD1.5 layout), ${SIZE}x$SIZE, batch 1, rank $RANK" \
    "alpha $ALPHA on to_q/k/v/out.0 ($(field mood_lora_modules <<<"$m") modules," \
    "$(field mood_lora_params <<<"$m") values, both), AdamW, float32, $THREADS threads" \
    "($(lscpu | awk -F': +' '/Model name/ { print $2; exit }'))"
printf 'mood (mood_train_run, its default), gradient checkpointing %s:\n' "$mood_ckpt"
printf '  step %9.1f ms (steps %s; warm-up %s ms incl. the text cache)   peak RSS %6.0f MB\n' \
    "$ms" "$(field mood_steps_ms <<<"$m")" "$(field mood_first_step_ms <<<"$m")" "$mm"
printf '  cached once per image, not per step: VAE encode %.1f ms, text encoder %.1f ms' "$mv" "$mt"
printf ' (load %s ms, cache phase %s ms)\n' "$(field mood_load_ms <<<"$m")" \
    "$(field mood_cache_ms <<<"$m")"
[ -z "$mo" ] || printf 'mood, gradient checkpointing %s:\n  step %9.1f ms (steps %s)   peak RSS %6.0f MB\n' \
    "$(field mood_checkpointing <<<"$mo")" "$(field mood_step_ms <<<"$mo")" \
    "$(field mood_steps_ms <<<"$mo")" "$(field mood_rss_mb <<<"$mo")"
show_torch() { # label, output
    printf '%s:\n  step %9.1f ms (noise %s, forward+loss %s, backward %s, clip+AdamW %s; steps %s)' \
        "$1" "$(field torch_step_ms <<<"$2")" "$(field torch_noise_ms <<<"$2")" \
        "$(field torch_fwd_ms <<<"$2")" "$(field torch_bwd_ms <<<"$2")" \
        "$(field torch_opt_ms <<<"$2")" "$(field torch_steps_ms <<<"$2")"
    printf '   peak RSS %6.0f MB\n  per step also: VAE encode %s ms, text encoder %s ms, data %s ms' \
        "$(field torch_rss_mb <<<"$2")" "$(field torch_vae_ms <<<"$2")" \
        "$(field torch_te_ms <<<"$2")" "$(field torch_data_ms <<<"$2")"
    printf ' -> full recipe step %s ms\n' "$(field torch_full_ms <<<"$2")"
}
show_torch "diffusers + PEFT recipe (torch $("$PY" -c 'import torch; print(torch.__version__)'))" "$t"
[ -z "$tc" ] || show_torch "the recipe with --gradient_checkpointing" "$tc"
awk -v ms="$ms" -v ts="$ts" -v mm="$mm" -v tm="$tm" -v mv="$mv" -v mt="$mt" -v tf="$tf" 'BEGIN {
    printf "mood / torch: step %.2fx, peak memory %.2fx;", ms / ts, mm / tm
    printf " mood encoding at every step as the recipe (step + VAE + text) %.0f ms vs %.0f ms: %.2fx\n",
        ms + mv + mt, tf, (ms + mv + mt) / tf }'
# like against like: each side without checkpointing, then each with it
pair() { # label, mood output, torch output
    [ -n "$2" ] && [ -n "$3" ] || return 0
    awk -v l="$1" -v ms="$(field mood_step_ms <<<"$2")" -v mm="$(field mood_rss_mb <<<"$2")" \
        -v ts="$(field torch_step_ms <<<"$3")" -v tm="$(field torch_rss_mb <<<"$3")" \
        'BEGIN { printf "both %s checkpointing: mood / torch step %.2fx, peak memory %.2fx\n", l, ms / ts, mm / tm }'
}
if [ "$mood_ckpt" = True ]; then m_on=$m m_off=$mo; else m_on=$mo m_off=$m; fi
pair without "$m_off" "$t"
pair with "$m_on" "$tc"
# one line for bench/RESULTS.md
awk -v d="$(date +%Y-%m-%d\ %H:%M)" -v s="$SIZE" -v r="$RANK" -v ms="$ms" -v ts="$ts" -v tf="$tf" \
    -v mm="$mm" -v tm="$tm" -v tcs="$(field torch_step_ms <<<"$tc")" \
    -v tcm="$(field torch_rss_mb <<<"$tc")" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
    c = tcs == "" ? "—" : sprintf("%.0f ms, %.0f MB", tcs, tcm)
    printf "RESULTS: | %s, load %s | %sx%s r%d | mood %.0f ms, %.0f MB | recipe %.0f ms (full step %.0f ms), %.0f MB | recipe+ckpt %s | **%.2fx** time, %.2fx memory |\n",
        d, load, s, s, r, ms, mm, ts, tf, tm, c, ms / ts, mm / tm }'
