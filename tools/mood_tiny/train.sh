#!/usr/bin/env bash
# tools/mood_tiny/train.sh: reproduces data/mood-tiny, the small base model mood ships.
#
#   1. tools/mood_tiny/init_model.py writes the untrained model (diffusers' / transformers' own
#      initialisation, seed 0): see that file for the architecture;
#   2. the 1,417 Noto emoji of ../shared/data/emoji (64 x 64) with their captions (the Unicode
#      names, as kohya sidecar .txt files) are the training set;
#   3. `mood train --full --te` trains every weight of the UNet and of the text encoder (AdamW,
#      fp32 master weights, constant learning rate after a warmup) on them, checkpointing every
#      200 steps: run this script again to continue an interrupted run (--resume; it ends with
#      the same weights), or with more steps to train on;
#   4. with COOLDOWN (a second argument), a cooldown follows: a new run of COOLDOWN steps from the
#      weights step 3 wrote, its learning rate decaying linearly from the same 4e-4 to zero
#      (the warmup-stable-decay recipe: a constant rate finds the basin, the decay settles into
#      it, and the small per-patch errors of the constant-rate weights, a visible 4-pixel grid in
#      the images, fade); it checkpoints and resumes like step 3;
#   5. the result is written in float16 to data/mood-tiny (the folder `mood demo` registers),
#      with its model card (tools/mood_tiny/MODEL_CARD.md: what it is, licences, attribution).
#
# usage: tools/mood_tiny/train.sh [STEPS [COOLDOWN]]   (default 8000, no cooldown; WORK=/path for the work folder,
#        default /tmp/mood-tiny-work; MOOD=path/to/mood, default build/mood)
# The command, seed and the time taken are recorded in data/mood-tiny/TRAINING.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
STEPS=${1:-8000}
COOLDOWN=${2:-0}
WORK=${WORK:-/tmp/mood-tiny-work}
MOOD=${MOOD:-build/mood}
PY=${PYTHON:-tools/.venv/bin/python}
DATA=${MOOD_DATA_EMOJI:-$root/../shared/data/emoji}
out=data/mood-tiny

mkdir -p "$WORK"
[ -f "$WORK/init/model_index.json" ] || "$PY" tools/mood_tiny/init_model.py "$WORK/init" --seed 0
if [ ! -f "$WORK/noto/.complete" ]; then
    mkdir -p "$WORK/noto"
    tail -n +2 "$DATA/captions.tsv" | while IFS=$'\t' read -r code caption _; do
        ln -sf "$DATA/noto/$code.png" "$WORK/noto/$code.png"
        printf '%s\n' "$caption" >"$WORK/noto/$code.txt"
    done
    touch "$WORK/noto/.complete"
fi

resume=()
[ -f "$WORK/model.checkpoint.safetensors" ] && resume=(--resume)
# Constant learning rate after a warmup, so that a run can be stopped at any checkpoint or
# continued past its planned steps (a cosine schedule fixes the length in advance). The loss is
# the plain x0 error at every noise level (--min-snr 0): min-SNR-5 weighs the x0 error by the
# SNR, which is under 0.1 for every t above 500 with these betas, so the noisy half of the steps,
# where the layout and the prompt's subject are decided, would get almost no gradient (a run
# with it still drew the same image for every prompt after 600 steps).
cmd=("$MOOD" train --full --te --name mood-tiny --model "$WORK/init" --board "$WORK/noto"
    -o "$WORK/model" --res 64 --no-flip --batch 32 --steps "$STEPS" --lr 4e-4 --warmup 200
    --noise-offset 0 --min-snr 0 --caption-dropout 0.1 --seed 0 --checkpoint-every 200 "${resume[@]}")
# Every invocation, finished or stopped (Ctrl-C, SIGTERM: the trainer keeps a checkpoint), leaves
# a line in the record: a model trained over several sittings shows each one's time.
[ -f "$WORK/TRAINING.md" ] || printf '# How data/mood-tiny was made\n\n' >"$WORK/TRAINING.md"
start=$(date +%s)
finished=0
stage=model
record() {
    local step
    step=$("$PY" -c 'import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]
print(json.loads(f.read(n))["__metadata__"]["mood.train.step"])' \
        "$WORK/$stage.checkpoint.safetensors" 2>/dev/null || echo "the end")
    echo "- $(date -u '+%Y-%m-%d %H:%M') UTC: \`tools/mood_tiny/train.sh $*\` ran" \
        "$(($(date +%s) - start)) s on $(lscpu | awk -F': +' '/Model name/ { print $2; exit }')" \
        "($(nproc) threads) and $([ "$finished" = 1 ] && echo "finished" || echo "stopped")" \
        "at step $step$([ "$stage" = cooled ] && echo " of the cooldown")" >>"$WORK/TRAINING.md"
}
# the record is written however the script ends (a signal to it or to the trainer included)
args="$STEPS$([ "$COOLDOWN" -gt 0 ] && echo " $COOLDOWN")"
trap 'record "$args"' EXIT
trap 'exit 130' INT TERM
"${cmd[@]}"
result=model
shown="${cmd[*]}"
if [ "$COOLDOWN" -gt 0 ]; then
    # the cooldown's own run, from the weights above (seed 1: other draws than the first steps')
    resume=()
    [ -f "$WORK/cooled.checkpoint.safetensors" ] && resume=(--resume)
    stage=cooled
    cmd=("$MOOD" train --full --te --name mood-tiny --model "$WORK/model" --board "$WORK/noto"
        -o "$WORK/cooled" --res 64 --no-flip --batch 32 --steps "$COOLDOWN" --lr 4e-4
        --schedule linear --warmup 100 --noise-offset 0 --min-snr 0 --caption-dropout 0.1
        --seed 1 --checkpoint-every 200 "${resume[@]}")
    "${cmd[@]}"
    shown="$shown"$'\n\n    '"${cmd[*]}"
    result=cooled
fi
finished=1
trap - EXIT
record "$args"

rm -rf "$out.new"
cp -r "$WORK/$result" "$out.new"
cp "$WORK/model.loss.png" "$out.new/loss.png"
cp "$WORK/model.loss.csv" "$out.new/loss.csv"
if [ "$result" = cooled ]; then
    cp "$WORK/cooled.loss.png" "$out.new/cooldown-loss.png"
    cp "$WORK/cooled.loss.csv" "$out.new/cooldown-loss.csv"
fi
cp tools/mood_tiny/MODEL_CARD.md "$out.new/README.md"
shown=${shown//"$MOOD "/"mood "} # the commands without this machine's paths
# shellcheck disable=SC2016 # a literal $WORK
shown=${shown//"$WORK"/'$WORK'}
{
    echo
    echo "Each line above is one sitting; the trainer commands of the last (seed 0 for the"
    echo "initialisation and the training; --resume continues a stopped run to the same weights;"
    echo "\$WORK is the script's work folder; a cooldown's run, second, starts from the first's"
    echo "weights):"
    echo
    echo "    $shown"
} >"$out.new/TRAINING.md.tail"
cat "$WORK/TRAINING.md" "$out.new/TRAINING.md.tail" >"$out.new/TRAINING.md"
rm "$out.new/TRAINING.md.tail"
rm -rf "$out" && mv "$out.new" "$out"
echo "wrote $out"
