#!/usr/bin/env bash
# gpu.sh: everything a lent H100/H200 session runs for mood's CUDA backend, in one call
# (bench/README.md): builds mood with CUDA (Release, sm_90 only, ninja), runs `ctest -L cuda` and
# tools/gpu_check.sh, then times on the GPU (a) the LoRA merge of a rank-32 LoRA into an
# SDXL-size UNet's 722 attention / feed-forward / proj Linear weights (mood_cuda_op_lora_merge
# vs torch addmm_), (b) the SD1.5 UNet's heaviest ops at a 64x64 latent, batch 2 and 8, bf16
# (mood's conv2d_ex / linear_ex / attention_ex vs F.conv2d / F.linear / SDPA), (c) one SD1.5 UNet
# forward (64x64 latent, batch 2, 77 tokens) in fp32 and bf16, with and without CUDA graphs
# (bench_cuda_unet, its output checked against mood's CPU forward) vs diffusers'
# UNet2DConditionModel in the same dtype, (d) a
# placeholder for whole generation vs diffusers (not implemented yet). A short table is printed
# last; logs and full figures go to $OUT (8 files at most: the device tool's limit).
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
        test_train_steps \
        bench_cuda_ops bench_cuda_unet \
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
    echo "no GPU: GPU steps skipped (gpu_check.sh, LoRA merge, op and UNet benchmarks, diffusers)"
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

# ----- diffusers: the UNet forward's reference (the table) and whole generation (placeholder) --
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
    echo "whole generation vs diffusers: not implemented yet (mood has no GPU pipeline)"
    echo "have_diffusers=$have_diffusers"
} >>"$OUT/env.log" 2>&1
grep -E "diffusers|not implemented" "$OUT/env.log" | grep -v have_diffusers
if [ "$have_diffusers" = 1 ]; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    note "UNet forward vs diffusers" "in the table (unet_sd15_*)"
else
    note "UNet forward vs diffusers" "no diffusers: torch column NaN"
fi
note "generation vs diffusers" "not implemented yet"

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
echo
echo "== gpu.sh summary ($GPU_NAME, $(elapsed) s) =="
for s in "${SUMMARY[@]}"; do echo "$s"; done
[ -e "$OUT/table.txt" ] && cat "$OUT/table.txt"
exit $rc
