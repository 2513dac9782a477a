#!/bin/bash
# bench/hash.sh: throughput of `mood hash` (SHA-256 of the file, SHA-256 of the data section,
# AutoV1 and CRC32, all in one pass) against `sha256sum` (SHA-256 only) on a 1 GiB file of random
# bytes, measured in the same run. The page cache cannot be dropped without root, so both are run
# once to warm it and then alternately 3 times each; the best run of each is reported.
# Usage: bench/hash.sh [MOOD_BINARY] [SIZE_MIB]   (defaults: build/mood, 1024)
set -euo pipefail
MOOD=${1:-${MOOD:-build/mood}}
MIB=${2:-1024}
tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/mood-bench-hash-XXXXXX")
trap 'rm -rf "$tmpdir"' EXIT
file="$tmpdir/random.safetensors"

# A safetensors-shaped file (one U8 tensor) so that AutoV3 is computed too; exactly SIZE_MIB MiB.
python3 - "$file" "$MIB" <<'PY'
import json, os, struct, sys
path, mib = sys.argv[1], int(sys.argv[2])
data_len = mib * 1024 * 1024 - 8 - 4088
header = json.dumps({"data": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}},
                    separators=(",", ":")).encode()
header += b" " * (4088 - len(header))
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
    left = data_len
    while left:
        chunk = os.urandom(min(left, 64 << 20))
        f.write(chunk)
        left -= len(chunk)
PY
size=$(stat -c %s "$file")

seconds() { # wall time of "$@" in seconds
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }'
}
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

"$MOOD" hash "$file" >/dev/null
sha256sum "$file" >/dev/null
best_mood=999999
best_sha=999999
for i in 1 2 3; do
    best_mood=$(min "$(seconds "$MOOD" hash "$file")" "$best_mood")
    best_sha=$(min "$(seconds sha256sum "$file")" "$best_sha")
done
mood_mbs=$(calc "$size / 1000000 / $best_mood")
sha_mbs=$(calc "$size / 1000000 / $best_sha")
printf 'file: %d bytes (%d MiB, random data)\n' "$size" "$MIB"
printf 'mood hash (SHA-256, AutoV3, AutoV1, CRC32): %8.1f MB/s  (best of 3: %.3f s)\n' \
    "$mood_mbs" "$best_mood"
printf 'sha256sum (SHA-256 only):                   %8.1f MB/s  (best of 3: %.3f s)\n' \
    "$sha_mbs" "$best_sha"
printf 'ratio mood/sha256sum: %.2fx (goal >= 0.9x)\n' "$(calc "$mood_mbs / $sha_mbs")"
