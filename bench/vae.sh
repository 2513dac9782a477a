#!/bin/bash
# bench/vae.sh: mood's VAE decoder (bench_vae) against diffusers' AutoencoderKL on torch CPU
# (float32, torch.set_num_threads(2), bench/vae_reference.py) decoding one 64 x 64 latent into a
# 512 x 512 image with the SD1.5 VAE configuration (83.7M random float32 parameters, cached in
# ${MOOD_BENCH_CACHE:-/tmp/mood-bench}/sd15_vae). Prints the decode time each side reports, the
# process wall time and peak RSS (/usr/bin/time -v "Maximum resident set size") of each, their
# ratios, and how far the two images differ.
# Needs: tools/.venv (torch, diffusers, safetensors), ~700 MB in the cache, ~3 GB of memory.
# Usage: bench/vae.sh [BENCH_VAE]   (default: build/bench/bench_vae)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BENCH_VAE=${1:-${BENCH_VAE:-build/bench/bench_vae}}
PY=${PYTHON:-$root/tools/.venv/bin/python}
cache=${MOOD_BENCH_CACHE:-/tmp/mood-bench}
mkdir -p "$cache"
tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/mood-bench-vae-XXXXXX")
trap 'rm -rf "$tmpdir"' EXIT

"$PY" "$here/vae_reference.py" make "$cache" 2>/dev/null
vae="$cache/sd15_vae"
latent="$cache/latent_64x64.f32"

# Runs "$@" under /usr/bin/time -v; sets secs, cpu (user + system seconds), rss_mb and dec (the
# decode time it printed).
measure() {
    local log="$tmpdir/time.log"
    /usr/bin/time -v "$@" >"$tmpdir/out.log" 2>"$log" || {
        cat "$tmpdir/out.log" "$log" >&2
        return 1
    }
    secs=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0;
        for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$log")
    cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.1f", s }' "$log")
    rss_mb=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$log")
    dec=$(sed -n 's/.*decode \([0-9.]*\) s.*/\1/p' "$tmpdir/out.log")
}

cat "$vae"/* "$latent" >/dev/null # warm the page cache for both
measure env OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$BENCH_VAE" "$vae" "$latent" 64 64 \
    "$tmpdir/mood.f32"
mood_s=$secs mood_cpu=$cpu mood_rss=$rss_mb mood_dec=$dec
measure "$PY" "$here/vae_reference.py" decode "$vae" "$latent" 64 64 "$tmpdir/ref.f32"
ref_s=$secs ref_cpu=$cpu ref_rss=$rss_mb ref_dec=$dec

printf 'SD1.5 VAE decode, 1 x 4 x 64 x 64 -> 1 x 3 x 512 x 512, float32, 2 threads%s\n' \
    "${OPENBLAS_CORETYPE:+, OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE}"
printf 'mood bench_vae:        decode %7.2f s  process %7.2f s (CPU %7.1f s)  peak RSS %6d MB\n' \
    "$mood_dec" "$mood_s" "$mood_cpu" "$mood_rss"
printf 'diffusers (torch CPU): decode %7.2f s  process %7.2f s (CPU %7.1f s)  peak RSS %6d MB\n' \
    "$ref_dec" "$ref_s" "$ref_cpu" "$ref_rss"
awk -v a="$ref_dec" -v b="$mood_dec" -v c="$ref_rss" -v d="$mood_rss" \
    'BEGIN { printf "decode speed-up %.2fx, peak RSS ratio (mood/torch) %.2f\n", a / b, d / c }'
"$PY" "$here/vae_reference.py" compare "$tmpdir/mood.f32" "$tmpdir/ref.f32"
