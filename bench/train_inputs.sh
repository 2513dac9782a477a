# bench/train_inputs.sh: what the LoRA training-step benchmarks train on, made the same way for
# train_step.sh (the CPU) and gpu.sh (the GPU), and gpu.sh's generation model. Source it.
# shellcheck shell=bash

# sd15_model PYTHON CACHE: unless $MODEL already names a diffusers folder, makes CACHE/sd15, the
# random-weight SD1.5-config pipeline (tools/sd15_pipeline_reference.py's make_pipeline: fp16
# files, about 2 GB; skipped when it exists) and sets MODEL to it. Non-zero when it could not.
sd15_model() {
    local py=$1 cache=$2 here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    if [ -z "${MODEL:-}" ]; then
        MODEL=$cache/sd15
        "$py" -c 'import sys; sys.path.insert(0, sys.argv[1])
import sd15_pipeline_reference as r; r.make_pipeline(sys.argv[2])' \
            "$here/../tools" "$MODEL" 2>/dev/null || return 1
    fi
}

# train_inputs PYTHON CACHE SIZE: sd15_model, then the one-image board CACHE/train-board-SIZE
# (train_step_reference.py board; skipped when it exists) in BOARD. Non-zero when either could
# not be made.
train_inputs() {
    local py=$1 cache=$2 size=$3 here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    sd15_model "$py" "$cache" || return 1
    BOARD=$cache/train-board-$size
    "$py" "$here/train_step_reference.py" board "$BOARD" --size "$size"
}
