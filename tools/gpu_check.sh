#!/usr/bin/env bash
# gpu_check.sh: the GPU checks of the CUDA backend in one call, for a machine with a CUDA GPU
# (DESIGN.md "Testing"): builds the backend (MOOD_CUDA=ON, warnings as errors), prints
# `mood info`, and runs the tests labelled cuda plus the device-selection test. Every kernel is
# compared with the CPU backend; the figures (max error per op) are printed.
#   tools/gpu_check.sh [build-dir]        (default build-gpu)
#   SANITIZE=1 tools/gpu_check.sh         also runs test_cuda_ops under compute-sanitizer
set -u
cd "$(dirname "$0")/.." || exit 1
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
# mood gen end to end with the UNet on the GPU (bf16) against the CPU: the tiny pipeline's image,
# same seed, with a merged style; 8-bit pixels within a few levels (bf16 keeps ~3 digits)
g=$(mktemp -d)
fx=tests/fixtures/pipeline
if MOOD_HOME=$g/home "$B/mood" --device cpu gen "a red fox" --model $fx/tiny-sd --size 64x64 \
    --steps 4 --seed 3 --lora $fx/lora.safetensors:0.8 -o "$g/cpu.png" >/dev/null &&
    MOOD_HOME=$g/home "$B/mood" --device cuda gen "a red fox" --model $fx/tiny-sd --size 64x64 \
        --steps 4 --seed 3 --lora $fx/lora.safetensors:0.8 -o "$g/gpu.png" >/dev/null; then
    python3 - "$g/cpu.png" "$g/gpu.png" <<'PYEOF' || rc=1
import sys, zlib, struct
def pixels(path):  # 8-bit RGB PNG rows, filter bytes dropped (mood writes filter 0)
    b = open(path, "rb").read(); i = 8; idat = b""; w = h = 0
    while i < len(b):
        n, = struct.unpack(">I", b[i:i + 4]); t = b[i + 4:i + 8]; d = b[i + 8:i + 8 + n]; i += 12 + n
        if t == b"IHDR": w, h = struct.unpack(">II", d[:8])
        if t == b"IDAT": idat += d
    raw = zlib.decompress(idat); row = 1 + 3 * w
    return [v for r in range(h) for v in raw[r * row + 1:(r + 1) * row]]
a, b = pixels(sys.argv[1]), pixels(sys.argv[2])
d = max(abs(x - y) for x, y in zip(a, b))
print(f"mood gen, UNet on the GPU (bf16) vs the CPU: max pixel difference {d} / 255")
sys.exit(0 if len(a) == len(b) and d <= 8 else 1)
PYEOF
else
    echo "mood --device cuda gen failed"
    rc=1
fi
rm -rf "$g"
if [ "${SANITIZE:-0}" = 1 ]; then
    san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    "$san" --error-exitcode 3 "$B/tests/test_cuda_ops" >"$B/sanitizer.log" 2>&1 || rc=1
    tail -5 "$B/sanitizer.log"
fi
exit $rc
