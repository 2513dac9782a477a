#!/bin/bash
# bench/gen.sh: one whole 512x512, 20-step Euler a generation (CFG 7, so 20 UNet calls of batch 2,
# the text encoder, the VAE decode) with an SD1.5-config model of random weights: `mood gen`
# against diffusers' StableDiffusionPipeline on torch CPU (float32), both on $THREADS threads
# (default 2). Prints the generation's wall time (loading apart) and the peak resident memory of each and the ratios. The model is
# written once by tools/sd15_pipeline_reference.py under ${MOOD_BENCH_CACHE:-/tmp/mood-bench}.
# Usage: bench/gen.sh [MOOD_BINARY] [STEPS] [SIZE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MOOD=${1:-${MOOD:-build/mood}}
STEPS=${2:-20}
SIZE=${3:-512}
THREADS=${THREADS:-2}
PY=${PYTHON:-$root/tools/.venv/bin/python}
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}
"$PY" "$root/tools/sd15_pipeline_reference.py" make "$cache" 2>/dev/null
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# wall seconds and peak RSS (MB) of the mood process, measured by the Python resource module
read -r mood_s mood_load_s mood_mb < <("$PY" - "$MOOD" "$cache/sd15" "$STEPS" "$SIZE" \
    "$out/m.png" <<'PYEOF'
import json, resource, subprocess, sys
mood, model, steps, size, png = sys.argv[1:]
p = subprocess.run([mood, "gen", "a lighthouse at dusk", "--model", model, "--steps", steps,
                    "--size", "%sx%s" % (size, size), "--seed", "1", "--cfg", "7", "-o", png,
                    "--json"], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
d = json.loads(p.stdout)
print("%.3f %.3f %.0f" % (d["generate_s"], d["load_s"],
                          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
PYEOF
)
torch_out=$("$PY" "$root/tools/sd15_pipeline_reference.py" time "$cache" --threads "$THREADS" \
    --steps "$STEPS" --size "$SIZE" 2>/dev/null)
field() { awk -v k="$1" '$1 == k { print $2 }'; }
torch_s=$(field torch_s <<<"$torch_out")
torch_mb=$(field torch_rss_mb <<<"$torch_out")
echo "SD1.5 txt2img ${SIZE}x${SIZE}, $STEPS steps Euler a, CFG 7, $THREADS threads ($(lscpu |
    awk -F': +' '/Model name/ { print $2; exit }'))"
printf 'mood gen:                %8.1f s (load %5.1f s)   peak RSS %6.0f MB\n' "$mood_s" \
    "$mood_load_s" "$mood_mb"
printf 'diffusers (torch CPU):   %8.1f s (load %5.1f s)   peak RSS %6.0f MB\n' "$torch_s" \
    "$(field torch_load_s <<<"$torch_out")" "$torch_mb"
awk -v m="$mood_s" -v t="$torch_s" -v a="$mood_mb" -v b="$torch_mb" \
    'BEGIN { printf "mood / torch: time %.2fx, peak memory %.2fx\n", m / t, a / b }'
