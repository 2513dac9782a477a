#!/usr/bin/env bash
# gpu_check.sh: the GPU checks of the CUDA backend in one call, for a machine with a CUDA GPU
# (DESIGN.md "Testing"): builds the backend (MOOD_CUDA=ON, warnings as errors), prints
# `mood info`, and runs the tests labelled cuda plus the device-selection test. Every kernel is
# compared with the CPU backend; the figures (max error per op) are printed.
#   tools/gpu_check.sh [build-dir]        (default build-gpu)
#   SANITIZE=1 tools/gpu_check.sh         also runs test_cuda_ops under compute-sanitizer
set -u
cd "$(dirname "$0")/.."
B=${1:-build-gpu}
cmake -S . -B "$B" -DMOOD_CUDA=ON -DMOOD_WERROR=ON -DMOOD_BUILD_BENCH=OFF >/dev/null || exit 1
cmake --build "$B" -j"$(nproc)" --target mood_cli test_cuda_ops test_cuda_unet test_device \
    >/dev/null || {
    cmake --build "$B" --target mood_cli test_cuda_ops test_cuda_unet test_device 2>&1 | tail -40
    exit 1
}
"$B/mood" info
rc=0
"$B/tests/test_device" || rc=1
OMP_WAIT_POLICY=PASSIVE "$B/tests/test_cuda_ops"
t=$?
[ $t -eq 77 ] && echo "test_cuda_ops skipped: no GPU visible" && rc=1
[ $t -ne 0 ] && [ $t -ne 77 ] && rc=1
MOOD_FIXTURES=$PWD/tests/fixtures OMP_WAIT_POLICY=PASSIVE "$B/tests/test_cuda_unet"
t=$?
[ $t -eq 77 ] && echo "test_cuda_unet skipped: no GPU visible" && rc=1
[ $t -ne 0 ] && [ $t -ne 77 ] && rc=1
if [ "${SANITIZE:-0}" = 1 ]; then
    san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    "$san" --error-exitcode 3 "$B/tests/test_cuda_ops" >"$B/sanitizer.log" 2>&1 || rc=1
    tail -5 "$B/sanitizer.log"
fi
exit $rc
