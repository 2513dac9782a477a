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
#   4. the result is written in float16 to data/mood-tiny (the folder `mood demo` registers).
#
# usage: tools/mood_tiny/train.sh [STEPS]   (default 8000; WORK=/path for the work folder,
#        default /tmp/mood-tiny-work; MOOD=path/to/mood, default build/mood)
# The command, seed and the time taken are recorded in data/mood-tiny/TRAINING.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
STEPS=${1:-8000}
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
# continued past its planned steps (a cosine schedule fixes the length in advance).
cmd=("$MOOD" train --full --te --name mood-tiny --model "$WORK/init" --board "$WORK/noto"
    -o "$WORK/model" --res 64 --no-flip --batch 32 --steps "$STEPS" --lr 4e-4 --warmup 200
    --noise-offset 0 --caption-dropout 0.1 --seed 0 --checkpoint-every 200 "${resume[@]}")
start=$(date +%s)
"${cmd[@]}"
took=$(($(date +%s) - start))

rm -rf "$out.new"
cp -r "$WORK/model" "$out.new"
cp "$WORK/model.loss.png" "$out.new/loss.png"
cp "$WORK/model.loss.csv" "$out.new/loss.csv"
[ -f "$WORK/TRAINING.md" ] || printf '# How data/mood-tiny was made\n\n' >"$WORK/TRAINING.md"
{
    echo "- command: \`tools/mood_tiny/train.sh $STEPS\`, which ran:"
    echo "  \`${cmd[*]}\`"
    echo "- seed: 0 (initialisation and training)"
    echo "- machine: $(lscpu | awk -F': +' '/Model name/ { print $2; exit }'), $(nproc) threads"
    echo "- time: ${took} s for this invocation, which ended at step $STEPS ($(date -u +%Y-%m-%d))"
} >>"$WORK/TRAINING.md"
cp "$WORK/TRAINING.md" "$out.new/TRAINING.md"
rm -rf "$out" && mv "$out.new" "$out"
echo "wrote $out"
