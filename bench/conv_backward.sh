#!/bin/bash
# bench/conv_backward.sh: the CPU convolution backward pass (bench_conv_backward:
# mood_op_conv2d_backward) against torch's (bench/conv_backward_reference.py:
# aten.convolution_backward) at the shapes of the small pixel-space UNets of
# bench/unet_fullgrad.sh, batch $BATCH (default 32), on $THREADS threads (default 1): for each
# shape the input gradient ("dx") and the weight and bias gradients ("dw"), best of $RUNS
# (default 7) in process CPU time (on one thread a figure that other load on a shared machine
# hardly changes), and mood / torch.
# Needs tools/.venv (torch).
# Usage: bench/conv_backward.sh [BENCH]   (default build/bench/bench_conv_backward)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BENCH=${1:-${BENCH:-build/bench/bench_conv_backward}}
PY=${PYTHON:-$root/tools/.venv/bin/python}
RUNS=${RUNS:-7}
BATCH=${BATCH:-32}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

mood=$("$BENCH" "$RUNS" "$BATCH")
torch=$("$PY" "$here/conv_backward_reference.py" "$RUNS" "$BATCH")
echo "Convolution backward, batch $BATCH, $THREADS thread(s), CPU ms, best of $RUNS" \
    "($(lscpu | awk -F': +' '/Model name/ { print $2; exit }'))"
awk 'NR == FNR { tx[$2 " " $3 " " $4 " " $5] = $7; tw[$2 " " $3 " " $4 " " $5] = $9; next }
    FNR == 1 { printf "%-22s %9s %9s %6s   %9s %9s %6s\n", "shape", "dx mood", "torch",
                      "ratio", "dw+db mood", "torch", "ratio" }
    { k = $2 " " $3 " " $4 " " $5; mx += $7; mw += $9; sx += tx[k]; sw += tw[k]
      printf "%-22s %9.2f %9.2f %5.2fx   %9.2f %9.2f %5.2fx\n", k, $7, tx[k], $7 / tx[k],
             $9, tw[k], $9 / tw[k] }
    END { printf "%-22s %9.2f %9.2f %5.2fx   %9.2f %9.2f %5.2fx\n", "total", mx, sx, mx / sx,
                 mw, sw, mw / sw }' <(echo "$torch") <(echo "$mood")
