#!/usr/bin/env bash
# gpu.sh: everything a lent H100/H200 session runs for mood's CUDA backend, in one call
# (bench/README.md): builds mood with CUDA (Release, sm_90 only, ninja), runs `ctest -L cuda` and
# tools/gpu_check.sh, then times on the GPU (a) the LoRA merge of a rank-32 LoRA into an
# SDXL-size UNet's 722 attention / feed-forward / proj Linear weights (mood_cuda_op_lora_merge
# vs torch addmm_), (b) the SD1.5 UNet's heaviest ops at a 64x64 latent, batch 2 and 8, bf16
# (mood's conv2d_ex / linear_ex / attention_ex vs F.conv2d / F.linear / SDPA), (c) one SD1.5 UNet
# forward (64x64 latent, batch 2, 77 tokens) in fp32 and bf16, with and without CUDA graphs
# (bench_cuda_unet, its output checked against mood's CPU forward) vs diffusers'
# UNet2DConditionModel in the same dtype, (e) one LoRA training step
# at SD1.5's config (random weights, bench/train_inputs.sh's folder and board, as train_step.sh),
# 512x512, batch 1, rank 16 on to_q/k/v/out.0: mood's (bench_train_step with
# MOOD_BENCH_DEVICE=cuda: the UNet forward and backward on the GPU, in fp32 and in bf16 mixed
# precision, MOOD_BENCH_PRECISION; bf16 also with gradient checkpointing forced on,
# MOOD_BENCH_CHECKPOINTING=on; loss and AdamW on the CPU) against diffusers'
# train_text_to_image_lora recipe with PEFT (train_step_reference.py --device cuda) in fp32 (TF32
# off) and in bf16 (--mixed_precision bf16), each against the other's same precision, a warm-up and the
# median of TRAIN_RUNS (3) steps each, the GPU memory each process used sampled by nvidia-smi;
# needs transformers and peft beside torch (else skipped; their wheels may go in .whl/ too),
# TRAIN_STEP=0 skips it, (d) last, one whole generation at SD1.5's config (the same random model),
# 512x512, 20 steps Euler a, CFG 7: `mood gen` with MOOD_DEVICE=cuda (the UNet in bf16 on the
# GPU; the text encoder and the VAE decode on the CPU so far) against diffusers'
# StableDiffusionPipeline in bf16 on the GPU (tools/sd15_pipeline_reference.py time --device
# cuda): mood's first generation in its process against torch's first and warm (median of
# GEN_RUNS - 1 after it) ones, GPU memory as for (e); GEN=0 skips it. A short table is printed last; logs and full figures go to $OUT (8
# files at most: the device tool's limit).
#
#   bench/gpu.sh [BUILD_DIR]      (default build-gpu-bench; OUT defaults to BUILD_DIR/out)
#
# Without a GPU it configures, builds, runs `ctest -L cuda` (which skips) and exits 0 with
# "no GPU: GPU steps skipped". A diffusers wheel, if any, is taken from .whl/ (WHEELS=dir):
# installed with pip --no-index into /tmp/site; without one the diffusers parts are skipped.
# Exit status: 0 when every step that ran passed, 1 otherwise. BUDGET_S (570) bounds the whole
# run: each step's timeout is cut to what is left of it.
set -u
cd "$(dirname "$0")/.." || exit 1
B=${1:-build-gpu-bench}
OUT=${OUT:-$B/out}
WHEELS=${WHEELS:-.whl}
JOBS=${JOBS:-$(nproc)} # build jobs
mkdir -p "$OUT"
T0=$(date +%s)
declare -a SUMMARY
rc=0
note() { SUMMARY+=("$(printf '%-28s %s' "$1" "$2")"); }
elapsed() { echo $(($(date +%s) - T0)); }
# field KEY FILE: the value of the last "KEY value" line of FILE
field() { awk -v k="$1" '$1 == k { v = $2 } END { print v }' "$2"; }
# The device tool stops a command after 600 s: every step's timeout is cut to what is left of
# BUDGET_S, so a hung step still leaves the summary printed.
BUDGET_S=${BUDGET_S:-570}
tmo() {
    local left=$((BUDGET_S - $(elapsed) - 10))
    [ $left -lt 5 ] && left=5
    echo $(($1 < left ? $1 : left))
}

# ----- the machine ---------------------------------------------------------------------------
GPU=0
{
    date -u
    uname -m
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        GPU=1
        nvidia-smi
        nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
    else
        echo "nvidia-smi: no GPU listed"
    fi
    command -v nvcc >/dev/null && nvcc --version | tail -2
} >"$OUT/env.log" 2>&1
if [ $GPU = 1 ]; then
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
else
    GPU_NAME="none"
fi
echo "gpu.sh: GPU: $GPU_NAME; build dir $B; logs in $OUT"

# ----- build ---------------------------------------------------------------------------------
# cuDNN: the toolkit's, else the one PyTorch's pip wheels bring (nvidia-cudnn-cu13).
CUDNN_ARGS=()
if ! ls /usr/local/cuda/include/cudnn.h /usr/include/cudnn.h /usr/include/*/cudnn.h \
    >/dev/null 2>&1 && command -v python3 >/dev/null; then
    sp=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
    # shellcheck disable=SC2086
    h=$(find $sp -path '*nvidia*' -name cudnn.h 2>/dev/null | head -1)
    if [ -n "$h" ]; then
        cudnn=$(dirname "$(dirname "$h")")
        lib=$(find "$cudnn/lib" -name "libcudnn.so*" 2>/dev/null | sort | head -1)
        CUDNN_ARGS=(-DMOOD_CUDNN_INCLUDE_DIR="$cudnn/include" -DMOOD_CUDNN_LIBRARY="$lib")
        export LD_LIBRARY_PATH="$cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "gpu.sh: cuDNN from $cudnn ($lib)" | tee -a "$OUT/env.log"
    fi
fi
# Release, but C at -O2 as the default build: -O3 raises maybe-uninitialized warnings that
# -Werror (which tools/gpu_check.sh turns on in the same directory) would stop at.
build_ok=0
if timeout "$(tmo 120)" cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    "-DCMAKE_C_FLAGS_RELEASE=-O2 -DNDEBUG" -DCMAKE_CUDA_ARCHITECTURES=90 -DMOOD_CUDA=ON \
    -DMOOD_WERROR=ON -DMOOD_BUILD_BENCH=ON "${CUDNN_ARGS[@]}" >"$OUT/build.log" 2>&1 &&
    timeout "$(tmo 300)" cmake --build "$B" -j"$JOBS" \
        --target mood_cli test_cuda_ops test_cuda_unet test_cuda_unet_train test_device \
        test_train_steps test_train_full test_train_sdxl_te \
        bench_cuda_ops bench_cuda_unet bench_train_step \
        >>"$OUT/build.log" 2>&1; then
    build_ok=1
    note build "ok ($(elapsed) s)"
else
    tail -30 "$OUT/build.log"
    note build "FAILED (see build.log)"
    rc=1
fi

# ----- tests ---------------------------------------------------------------------------------
if [ $build_ok = 1 ]; then
    timeout "$(tmo 150)" ctest --test-dir "$B" -L cuda --output-on-failure >"$OUT/ctest_cuda.log" 2>&1
    t=$?
    grep -E "tests passed|Skipped|Failed|\*\*\*" "$OUT/ctest_cuda.log" | tail -5
    if [ $t -ne 0 ]; then
        note "ctest -L cuda" "FAILED (rc $t, see ctest_cuda.log)"
        rc=1
    elif grep -q "Not Run\|Skipped" "$OUT/ctest_cuda.log"; then
        note "ctest -L cuda" "skipped (no GPU)"
    else
        note "ctest -L cuda" "passed"
    fi
fi

if [ $GPU = 0 ]; then
    for s in "${SUMMARY[@]}"; do echo "$s"; done
    echo "no GPU: GPU steps skipped (gpu_check.sh, LoRA merge, op and UNet benchmarks, diffusers," \
        "training step)"
    [ $build_ok = 1 ] && exit 0
    exit 1
fi

if [ $build_ok = 1 ]; then
    timeout "$(tmo 150)" tools/gpu_check.sh "$B" >"$OUT/gpu_check.log" 2>&1
    t=$?
    tail -15 "$OUT/gpu_check.log"
    if [ $t -eq 0 ]; then note gpu_check.sh passed; else note gpu_check.sh "FAILED (rc $t)"; rc=1; fi
fi

# ----- benchmarks ----------------------------------------------------------------------------
BENCH=$B/bench/bench_cuda_ops
results=()
if [ $build_ok = 1 ] && [ -x "$BENCH" ]; then
    # both op batches go to one file (the device tool brings back 8 files at most)
    rm -f "$OUT/lora.txt" "$OUT/ops.txt"
    for run in "lora 32:lora.txt" "ops 2:ops.txt" "ops 8:ops.txt"; do
        args=${run%%:*} file=$OUT/${run##*:}
        # shellcheck disable=SC2086
        timeout "$(tmo 90)" "$BENCH" $args >"$OUT/run.tmp" 2>&1
        t=$?
        grep -v "^RESULT\|^LORASHAPE" "$OUT/run.tmp"
        cat "$OUT/run.tmp" >>"$file"
        rm -f "$OUT/run.tmp"
        if [ $t -eq 0 ]; then note "bench_cuda_ops $args" "ok"; else
            note "bench_cuda_ops $args" "FAILED (rc $t, see ${run##*:})"
            rc=1
        fi
    done
    results+=("$OUT/lora.txt" "$OUT/ops.txt")
fi
# the UNet forward: SD1.5 config, 64x64 latent, batch 2, 77 tokens; fp32 and bf16
UBENCH=$B/bench/bench_cuda_unet
if [ $build_ok = 1 ] && [ -x "$UBENCH" ]; then
    timeout "$(tmo 150)" "$UBENCH" 2 64 77 >"$OUT/unet.txt" 2>&1
    t=$?
    grep -v "^RESULT" "$OUT/unet.txt"
    if [ $t -eq 0 ]; then note "bench_cuda_unet 2 64 77" ok; else
        note "bench_cuda_unet 2 64 77" "FAILED (rc $t, see unet.txt)"
        rc=1
    fi
    results+=("$OUT/unet.txt")
fi
lora_ms=$(awk -F'\t' '$1 == "RESULT" && $2 == "lora_merge" {print $4}' "$OUT/lora.txt" 2>/dev/null)
if [ -n "$lora_ms" ]; then
    if awk -v m="$lora_ms" 'BEGIN {exit !(m < 100)}'; then
        note "lora_merge goal <100 ms" "met ($lora_ms ms)"
    else
        note "lora_merge goal <100 ms" "MISSED ($lora_ms ms)"
    fi
fi

# ----- diffusers: the UNet forward's reference (the table), the generation's and training's ------
{
    have_diffusers=0
    if ls "$WHEELS"/diffusers-*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl &&
            PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} python3 -c \
                'import diffusers; print("diffusers", diffusers.__version__)' && have_diffusers=1
    else
        echo "no diffusers wheel in $WHEELS/: diffusers parts skipped"
    fi
    echo "have_diffusers=$have_diffusers"
} >>"$OUT/env.log" 2>&1
grep -E "diffusers" "$OUT/env.log" | grep -v have_diffusers
if [ "$have_diffusers" = 1 ]; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    note "UNet forward vs diffusers" "in the table (unet_sd15_*)"
else
    note "UNet forward vs diffusers" "no diffusers: torch column NaN"
fi

# ----- torch on the same shapes, and the table -----------------------------------------------
# bf16 dense peak (shared/docs/engine-anchors.md §0/§6.1): H100 SXM and H200 989.4, H100 PCIe 756.
case "$GPU_NAME" in
*H100*PCIe*) PEAK=756 ;;
*H100* | *H200*) PEAK=989.4 ;;
*A100*) PEAK=312 ;;
*) PEAK=989.4 ; echo "gpu.sh: unknown card '$GPU_NAME': %peak against the H100's 989.4" ;;
esac
if [ ${#results[@]} -gt 0 ]; then
    PYTHONUNBUFFERED=1 timeout "$(tmo 200)" python3 bench/gpu_torch_ref.py "$PEAK" "${results[@]}" \
        >"$OUT/table.txt" 2>&1 || { note "torch reference" "FAILED (see table.txt)"; rc=1; }
fi

# ----- one LoRA training step vs diffusers + PEFT (train_text_to_image_lora) ------------------
# Its raw output goes to the end of table.txt, after a marker (the 8-file limit); the rows it
# adds to the printed table are in $TRAIN_ROWS.
TRAIN_ROWS=()
TRAIN_RUNS=${TRAIN_RUNS:-3}
TRAIN_SIZE=${TRAIN_SIZE:-512} # smaller only to check the plumbing
TRAIN_STEP=${TRAIN_STEP:-1}
# with_gpu_mem FILE CMD...: runs CMD (its status returned) while nvidia-smi samples the GPU's used
# memory every 100 ms, and writes to FILE the peak above what was in use before it started (MiB):
# the CUDA context and every library's workspace included, measured alike for both sides.
with_gpu_mem() {
    local f=$1 base pid t
    shift
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$f.samples" \
        2>/dev/null &
    pid=$!
    "$@"
    t=$?
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    awk -v b="$base" '$1 + 0 > m { m = $1 + 0 } END { print m - b }' "$f.samples" >"$f"
    rm -f "$f.samples"
    return $t
}
train_step() {
    local tmp py=python3 threads log=$OUT/table.txt m t32 t16 f model board ms
    tmp=$(mktemp -d) threads=$(nproc)
    val() { # field, or "-" where the run did not print it
        local v
        v=$(field "$1" "$2")
        echo "${v:--}"
    }
    echo "== training step raw output ==" >>"$log"
    # train_inputs (a function) in a child shell, so that timeout can bound it
    # shellcheck disable=SC2016
    MODEL="" timeout "$(tmo 150)" bash -c '. bench/train_inputs.sh && train_inputs "$@" &&
        echo "MODEL=$MODEL BOARD=$BOARD"' _ "$py" "${MOOD_BENCH_CACHE:-/tmp/mood-bench}" \
        "$TRAIN_SIZE" \
        >"$tmp/inputs" 2>&1
    f=$?
    cat "$tmp/inputs" >>"$log"
    if [ $f -ne 0 ]; then
        note "train step" "FAILED making the model (rc $f, see table.txt)"
        rc=1
        return
    fi
    model=$(sed -n 's/^MODEL=\([^ ]*\) BOARD=.*/\1/p' "$tmp/inputs")
    board=$(sed -n 's/.* BOARD=//p' "$tmp/inputs")
    # mood's default keeps the activations where the GPU has room, as the recipe does; bf16-ckpt:
    # with gradient checkpointing on (less memory, more time)
    for p in fp32 bf16 bf16-ckpt; do
        m=$tmp/mood_$p.txt
        local ck=auto
        [ "$p" = bf16-ckpt ] && ck=on
        echo "-- mood (bench_train_step, MOOD_BENCH_DEVICE=cuda, MOOD_BENCH_PRECISION=${p%-ckpt}," \
            "MOOD_BENCH_CHECKPOINTING=$ck)" >>"$log"
        OMP_NUM_THREADS=$threads MOOD_BENCH_DEVICE=cuda MOOD_BENCH_PRECISION=${p%-ckpt} \
            MOOD_BENCH_CHECKPOINTING=$ck with_gpu_mem "$tmp/mood_$p.gpu" timeout "$(tmo 150)" "$B/bench/bench_train_step" \
            train "$model" "$board" "$tmp/lora.safetensors" "$TRAIN_RUNS" "$TRAIN_SIZE" 16 16 \
            >"$m" 2>&1
        f=$?
        cat "$m" >>"$log"
        [ $f -eq 0 ] || { note "train step mood $p" "FAILED (rc $f, see table.txt)"; rc=1; }
    done
    for p in fp32 bf16; do
        local o=$tmp/torch_$p.txt
        echo "-- torch (train_step_reference.py --device cuda --precision $p)" >>"$log"
        with_gpu_mem "$tmp/torch_$p.gpu" timeout "$(tmo 120)" \
            python3 bench/train_step_reference.py time "$model" "$board" --device cuda \
            --precision "$p" --size "$TRAIN_SIZE" --rank 16 \
            --alpha 16 --threads "$threads" --runs "$TRAIN_RUNS" >"$o" 2>&1
        f=$?
        grep -v "Loading weights\|should be kept in float32" "$o" >>"$log"
        [ $f -eq 0 ] || { note "train step torch $p" "FAILED (rc $f, see table.txt)"; rc=1; }
    done
    m=$tmp/mood_fp32.txt t32=$tmp/torch_fp32.txt t16=$tmp/torch_bf16.txt
    if [ -n "$(field mood_lora_params "$m")" ] && [ -n "$(field torch_lora_params "$t32")" ] &&
        [ "$(field mood_lora_params "$m")" != "$(field torch_lora_params "$t32")" ]; then
        note "train step" "LoRA sizes differ: mood $(field mood_lora_params "$m"), PEFT" \
            "$(field torch_lora_params "$t32") values"
        rc=1
    fi
    ms=$(field mood_step_ms "$tmp/mood_bf16.txt")
    # each element of TRAIN_ROWS is one printed line
    TRAIN_ROWS+=("LoRA training step, SD1.5 config, ${TRAIN_SIZE}x$TRAIN_SIZE, batch 1, rank 16 on \
to_q/k/v/out.0 ($(field mood_lora_modules "$m") modules), AdamW, median of $TRAIN_RUNS \
after a warm-up")
    TRAIN_ROWS+=("  (GPU MiB: nvidia-smi's used memory at its peak during the process, above the \
idle GPU's, CUDA context included)")
    TRAIN_ROWS+=("$(printf '  %-34s %9s %9s %9s %12s' side "step ms" "GPU MiB" "RSS MB" \
        "torch alloc")")
    for p in fp32 bf16 bf16-ckpt; do
        f=$tmp/mood_$p.txt
        TRAIN_ROWS+=("$(printf '  %-34s %9s %9s %9s %12s' "mood $p (UNet on the GPU)" \
            "$(val mood_step_ms "$f")" "$(cat "$tmp/mood_$p.gpu" 2>/dev/null)" \
            "$(val mood_rss_mb "$f")" "-")")
    done
    for p in fp32 bf16; do
        f=$tmp/torch_$p.txt
        TRAIN_ROWS+=("$(printf '  %-34s %9s %9s %9s %12s' "diffusers+PEFT $p$([ $p = fp32 ] &&
            echo ", no TF32")" "$(val torch_step_ms "$f")" \
            "$(cat "$tmp/torch_$p.gpu" 2>/dev/null)" "$(val torch_rss_mb "$f")" \
            "$(val torch_gpu_peak_mb "$f")")")
    done
    TRAIN_ROWS+=("  (torch alloc: torch.cuda.max_memory_allocated, MiB. The recipe's full step, \
with its per-step VAE encode")
    TRAIN_ROWS+=("  and text encoder: fp32 $(val torch_full_ms "$t32") ms, bf16 \
$(val torch_full_ms "$t16") ms; mood caches both once per image)")
    for p in fp32 bf16 bf16-ckpt; do # each precision against torch's in the same one
        local ts mp mg tg
        mp=$(field mood_step_ms "$tmp/mood_$p.txt")
        ts=$(field torch_step_ms "$tmp/torch_${p%-ckpt}.txt")
        mg=$(cat "$tmp/mood_$p.gpu" 2>/dev/null) tg=$(cat "$tmp/torch_${p%-ckpt}.gpu" 2>/dev/null)
        if [ -z "$mp" ] || [ -z "$ts" ]; then continue; fi
        TRAIN_ROWS+=("$(awk -v ms="$mp" -v ts="$ts" -v mg="$mg" -v tg="$tg" -v p="$p" -v tp="${p%-ckpt}" 'BEGIN {
            printf "  mood %s / torch %s: step %.2fx (goal <= 0.70x: %s)", p, tp, ms / ts,
                ms / ts <= 0.7 ? "met" : "MISSED"
            if (mg != "" && tg > 0)
                printf ", GPU memory %.2fx (goal <= 1: %s)", mg / tg, mg <= tg ? "met" : "MISSED"
            printf "\n" }')")
    done
    [ -n "$ms" ] && note "train step vs diffusers" "ran (rows below the table)"
    rm -rf "$tmp"
}
if [ "$TRAIN_STEP" = 0 ]; then
    note "train step vs diffusers" "skipped (TRAIN_STEP=0)"
elif [ $build_ok != 1 ] || [ "$have_diffusers" != 1 ]; then
    note "train step vs diffusers" "skipped (needs the build and diffusers)"
elif ! python3 -c 'import transformers, peft, PIL, numpy' >/dev/null 2>&1; then
    note "train step vs diffusers" "skipped (no transformers/peft/PIL for python3)"
elif [ "$(elapsed)" -gt $((BUDGET_S - 200)) ]; then
    note "train step vs diffusers" "skipped (time budget: $(elapsed) s used)"
else
    train_step
fi

# ----- one whole generation vs diffusers' StableDiffusionPipeline ------------------------------
# Raw output to the end of table.txt after its marker, as the training step's; rows in GEN_ROWS.
GEN_ROWS=()
GEN=${GEN:-1}
GEN_RUNS=${GEN_RUNS:-3}
GEN_SIZE=${GEN_SIZE:-512}     # smaller only to check the plumbing,
GEN_DEVICE=${GEN_DEVICE:-cuda} # and cpu with it (diffusers then in fp32)
gen_step() {
    local tmp log=$OUT/table.txt f model m t ms ls ts tw
    tmp=$(mktemp -d)
    echo "== generation raw output ==" >>"$log"
    # shellcheck disable=SC2016
    MODEL="" timeout "$(tmo 150)" bash -c '. bench/train_inputs.sh && sd15_model "$@" &&
        echo "MODEL=$MODEL"' _ python3 "${MOOD_BENCH_CACHE:-/tmp/mood-bench}" >"$tmp/inputs" 2>&1
    f=$?
    cat "$tmp/inputs" >>"$log"
    model=$(sed -n 's/^MODEL=//p' "$tmp/inputs")
    if [ $f -ne 0 ] || [ -z "$model" ]; then
        note "generation" "FAILED making the model (rc $f, see table.txt)"
        rc=1
        return
    fi
    m=$tmp/mood.json t=$tmp/torch.txt
    echo "-- mood gen (MOOD_DEVICE=$GEN_DEVICE)" >>"$log"
    MOOD_DEVICE=$GEN_DEVICE OMP_NUM_THREADS=$(nproc) with_gpu_mem "$tmp/mood.gpu" timeout "$(tmo 150)" \
        "$B/mood" gen "a lighthouse at dusk" --model "$model" --steps 20 --cfg 7 --seed 1 \
        --size "${GEN_SIZE}x$GEN_SIZE" -o "$tmp/mood.png" --json >"$m" 2>>"$log"
    f=$?
    cat "$m" >>"$log"
    [ $f -eq 0 ] || { note "generation mood" "FAILED (rc $f, see table.txt)"; rc=1; }
    read -r ms ls < <(python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))
print("%.3f %.3f" % (d["generate_s"], d["load_s"]))' "$m" 2>/dev/null)
    echo "-- diffusers (sd15_pipeline_reference.py time --device $GEN_DEVICE)" >>"$log"
    with_gpu_mem "$tmp/torch.gpu" timeout "$(tmo 150)" python3 tools/sd15_pipeline_reference.py \
        time "$(dirname "$model")" --device "$GEN_DEVICE" --runs "$GEN_RUNS" \
        --threads "$(nproc)" --size "$GEN_SIZE" >"$t" 2>&1
    f=$?
    grep -v "Loading\|it/s\]" "$t" >>"$log"
    [ $f -eq 0 ] || { note "generation torch" "FAILED (rc $f, see table.txt)"; rc=1; }
    ts=$(field torch_s "$t") tw=$(field torch_warm_s "$t")
    GEN_ROWS+=("Generation, SD1.5 config, ${GEN_SIZE}x$GEN_SIZE, 20 steps Euler a, CFG 7 (text \
encoder, 20 UNet calls of batch 2, VAE decode), seconds, loading apart")
    GEN_ROWS+=("$(printf '  %-50s %8s %8s %9s' side first warm "GPU MiB")")
    GEN_ROWS+=("$(printf '  %-50s %8s %8s %9s' "mood (UNet bf16 on the GPU, TE and VAE on CPU)" \
        "${ms:--}" - "$(cat "$tmp/mood.gpu" 2>/dev/null)")")
    GEN_ROWS+=("$(printf '  %-50s %8s %8s %9s' "diffusers bf16 (all on the GPU)" "${ts:--}" \
        "${tw:--}" "$(cat "$tmp/torch.gpu" 2>/dev/null)")")
    if [ -n "$ms" ] && [ -n "$ts" ]; then
        GEN_ROWS+=("$(awk -v m="$ms" -v t="$ts" -v w="$tw" -v l="${ls:--}" 'BEGIN {
            printf "  mood / diffusers: %.2fx its first generation", m / t
            if (w > 0) printf ", %.2fx its warm one", m / w
            printf " (mood model load: %s s)\n", l }')")
        note "generation vs diffusers" "ran (rows below the table)"
    fi
    rm -rf "$tmp"
}
if [ "$GEN" = 0 ]; then
    note "generation vs diffusers" "skipped (GEN=0)"
elif [ $GPU != 1 ] || [ $build_ok != 1 ] || [ "$have_diffusers" != 1 ]; then
    note "generation vs diffusers" "skipped (needs a GPU, the build and diffusers)"
elif [ "$(elapsed)" -gt $((BUDGET_S - 120)) ]; then
    note "generation vs diffusers" "skipped (time budget: $(elapsed) s used)"
else
    gen_step
fi

echo
echo "== gpu.sh summary ($GPU_NAME, $(elapsed) s) =="
for s in "${SUMMARY[@]}"; do echo "$s"; done
[ -e "$OUT/table.txt" ] && sed '/^== .* raw output ==$/,$d' "$OUT/table.txt"
for s in "${TRAIN_ROWS[@]}" "${GEN_ROWS[@]}"; do echo "$s"; done
exit $rc
