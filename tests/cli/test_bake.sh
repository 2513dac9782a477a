#!/bin/bash
# test_bake.sh: `mood bake` and `mood lora stack` end to end on the tiny fixture models: the
# summary line and --json, the exit codes (2 missing base, 1 corrupt LoRA, 1 SDXL LoRA on an SD1
# base with both families named, 1 usage), a bake that runs out of space (file-size limit) failing
# with exit 2 and leaving neither the output nor a temporary file, and an existing output left
# intact by a failed bake; stack output that bakes like its inputs, DoRA refused by stack, and
# FIFOs given as base or LoRA refused at once (1), and an output that is one of the inputs refused.
. "$(dirname "$0")/lib.sh"

base="$FIX/bases/sd1_base.safetensors"
lora="$FIX/kohya/sd1_lora.safetensors"
locon="$FIX/kohya/sd1_locon_fp16.safetensors"

# --- success: summary, JSON, output readable and different from the base ---
expect_rc 0 "bake" "$MOOD" bake --model "$base" --lora "$lora:0.8:0.5" -o "$tmp/out.safetensors"
grep -q "^wrote $tmp/out.safetensors: [1-9][0-9]* tensors patched" "$tmp/out" ||
    fail "bake summary: $(cat "$tmp/out")"
[ -s "$tmp/out.safetensors" ] || fail "bake wrote no file"
cmp -s "$base" "$tmp/out.safetensors" && fail "baked file equals the base"
expect_rc 0 "bake --json" "$MOOD" bake --model "$base" --lora "$lora" --lora "$locon:0.7" \
    -o "$tmp/two.safetensors" --json
python3 - "$tmp/out" <<'EOF' || fail "bake --json output"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["tensors_patched"] > 0 and d["n_unmatched"] == 0, d
assert [a["unet"] for a in d["adapters"]] == [1, 0.7] and d["adapters"][1]["te"] == 0.7, d
EOF

# --- the base's own hashes in its metadata are not carried into the new file (they would name
# it wrongly: mood hash called them stale); its other metadata is ---
python3 - "$base" "$tmp/hashed.safetensors" <<'EOF'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
head = json.loads(data[8:8 + n])
head.setdefault("__metadata__", {}).update({"sshs_model_hash": "de" * 32, "sshs_legacy_hash": "ab" * 4,
                                            "modelspec.hash_sha256": "0x" + "cd" * 32,
                                            "modelspec.title": "my base"})
text = json.dumps(head, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + data[8 + n:])
EOF
expect_rc 0 "bake a base with hashes in its metadata" "$MOOD" bake --model "$tmp/hashed.safetensors" \
    --lora "$lora" -o "$tmp/hashed_out.safetensors"
check "no stale hash in the baked file" python3 -c '
import json, struct, sys
d = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", d[:8])[0]
m = json.loads(d[8:8 + n]).get("__metadata__", {})
assert not {"sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256"} & set(m), m
assert m.get("modelspec.title") == "my base", m' "$tmp/hashed_out.safetensors"

# --- baking into the base itself (or into a LoRA) is refused, the base left as it was ---
cp "$base" "$tmp/own.safetensors"
expect_rc 1 "bake into its base" "$MOOD" bake --model "$tmp/own.safetensors" --lora "$lora" \
    -o "$tmp/own.safetensors"
grep -q "own.safetensors is also an input" "$tmp/err" || fail "bake into base: $(cat "$tmp/err")"
cmp -s "$base" "$tmp/own.safetensors" || fail "a refused bake changed its base"
cp "$lora" "$tmp/l.safetensors"
expect_rc 1 "bake into a LoRA" "$MOOD" bake --model "$base" --lora "$tmp/l.safetensors" \
    -o "$tmp/l.safetensors"

# --- a key that matches nothing is reported (count and prefix), the rest still applies ---
python3 - "$lora" "$tmp/extra.safetensors" <<'EOF'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
head = json.loads(data[8:8 + n])
end = max(v["data_offsets"][1] for k, v in head.items() if k != "__metadata__")
head["lora_unet_no_such_block.lora_up.weight"] = {"dtype": "F32", "shape": [1],
                                                   "data_offsets": [end, end + 4]}
text = json.dumps(head, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + data[8 + n:] +
                              struct.pack("<f", 1.0))
EOF
expect_rc 0 "bake with an unknown key" "$MOOD" bake --model "$base" \
    --lora "$tmp/extra.safetensors" -o "$tmp/extra_out.safetensors"
grep -q "1 unmatched key" "$tmp/out" || fail "summary does not count the unmatched key"
grep -q "warning:.*extra.safetensors.*1 key.*lora_unet_" "$tmp/err" ||
    fail "no warning naming the unmatched key's prefix: $(cat "$tmp/err")"

# three weights: a usage error naming the form, not a missing file "...:0.5" (exit 2)
expect_rc 1 "FILE:W:W:W" "$MOOD" bake --model "$base" --lora "$lora:0.5:0.2:0.1" -o "$tmp/three.safetensors"
check "says at most two weights" grep -q "at most two weights" "$tmp/err"

# --- exit codes ---
expect_rc 2 "missing base" "$MOOD" bake --model "$tmp/nope.safetensors" --lora "$lora" \
    -o "$tmp/x.safetensors"
head -c 3000 "$lora" >"$tmp/corrupt.safetensors"
expect_rc 1 "corrupt LoRA" "$MOOD" bake --model "$base" --lora "$tmp/corrupt.safetensors" \
    -o "$tmp/x.safetensors"
grep -q "corrupt.safetensors" "$tmp/err" || fail "corrupt LoRA message does not name the file"
expect_rc 1 "SDXL LoRA on SD1" "$MOOD" bake --model "$base" \
    --lora "$FIX/kohya/sdxl_lora.safetensors" -o "$tmp/x.safetensors"
grep -qi "sdxl" "$tmp/err" && grep -qi "sd1\|sd 1\|sd1\.5" "$tmp/err" ||
    fail "family mismatch message does not name both families: $(cat "$tmp/err")"
expect_rc 1 "no --model" "$MOOD" bake --lora "$lora" -o "$tmp/x.safetensors"
expect_rc 1 "bad weight" "$MOOD" bake --model "$base" --lora "$lora:abc" -o "$tmp/x.safetensors"
[ -e "$tmp/x.safetensors" ] && fail "a failed bake left $tmp/x.safetensors"

# --- disk full: a 64 KiB file-size limit stops the ~190 KiB write midway ---
mkdir "$tmp/full"
(
    ulimit -f 64
    "$MOOD" bake --model "$base" --lora "$lora" -o "$tmp/full/out.safetensors" \
        >"$tmp/out" 2>"$tmp/err"
)
rc=$?
[ "$rc" -eq 2 ] || fail "disk full: exit $rc, expected 2 ($(cat "$tmp/err"))"
grep -q "out.safetensors" "$tmp/err" || fail "disk full: message does not name the output"
[ -z "$(ls -A "$tmp/full")" ] || fail "disk full left files: $(ls -A "$tmp/full")"
# an existing output is left as it was
echo "previous content" >"$tmp/full/out.safetensors"
(
    ulimit -f 64
    "$MOOD" bake --model "$base" --lora "$lora" -o "$tmp/full/out.safetensors" \
        >/dev/null 2>&1
)
[ "$(cat "$tmp/full/out.safetensors")" = "previous content" ] ||
    fail "a failed bake damaged the existing output"
[ "$(ls -A "$tmp/full")" = "out.safetensors" ] || fail "temporary file left: $(ls -A "$tmp/full")"

# --- lora stack ---
expect_rc 0 "stack" "$MOOD" lora stack "$lora:0.7" "$locon:-0.4" -o "$tmp/stack.safetensors"
grep -q "^wrote $tmp/stack.safetensors" "$tmp/out" || fail "stack summary: $(cat "$tmp/out")"
expect_rc 0 "bake stack" "$MOOD" bake --model "$base" --lora "$tmp/stack.safetensors" \
    -o "$tmp/via.safetensors"
expect_rc 0 "bake direct" "$MOOD" bake --model "$base" --lora "$lora:0.7" --lora "$locon:-0.4" \
    -o "$tmp/direct.safetensors"
python3 - "$tmp/via.safetensors" "$tmp/direct.safetensors" <<'EOF' || fail "stack != inputs"
import json, struct, sys
def tensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + n])
    head.pop("__metadata__", None)
    out = {}
    for k, v in head.items():
        b, e = v["data_offsets"]
        raw = data[8 + n + b:8 + n + e]
        out[k] = struct.unpack("<%df" % (len(raw) // 4), raw)
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a.keys() == b.keys()
for k in a:
    if isinstance(a[k], bytes):
        assert a[k] == b[k], k
        continue
    for x, y in zip(a[k], b[k]):
        assert abs(x - y) <= 1e-6 + 1e-5 * abs(y), (k, x, y)
EOF
expect_rc 0 "stack --dtype f16 --json" "$MOOD" lora stack "$lora" -o "$tmp/s16.safetensors" \
    --dtype f16 --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["dtype"]=="F16", d' \
    "$tmp/out" || fail "stack --json"
dora="$FIX/lycoris/locon_dora_in.safetensors"
if [ -e "$dora" ]; then
    expect_rc 1 "stack DoRA" "$MOOD" lora stack "$lora" "$dora" -o "$tmp/d.safetensors"
    grep -q "DoRA" "$tmp/err" || fail "stack DoRA message: $(cat "$tmp/err")"
    [ -e "$tmp/d.safetensors" ] && fail "refused stack left a file"
fi
expect_rc 1 "stack bad dtype" "$MOOD" lora stack "$lora" -o "$tmp/x.safetensors" --dtype f8
expect_rc 2 "stack missing input" "$MOOD" lora stack "$tmp/none.safetensors" -o "$tmp/x.safetensors"

# inputs that are named pipes: refused at once (exit 1), naming the file
# timeout: a regression (an open that waits for a writer) fails here instead of hanging
mkfifo "$tmp/pipe.safetensors"
expect_rc 1 "bake --model FIFO" timeout -k 5 30 "$MOOD" bake --model "$tmp/pipe.safetensors" \
    --lora "$lora" -o "$tmp/x.safetensors"
grep -q "pipe.safetensors: not a regular file" "$tmp/err" || fail "bake FIFO: $(cat "$tmp/err")"
expect_rc 1 "bake --lora FIFO" timeout -k 5 30 "$MOOD" bake --model "$base" \
    --lora "$tmp/pipe.safetensors" -o "$tmp/x.safetensors"
expect_rc 1 "stack FIFO" timeout -k 5 30 "$MOOD" lora stack "$tmp/pipe.safetensors" \
    -o "$tmp/x.safetensors"
[ -e "$tmp/x.safetensors" ] && fail "a refused FIFO left an output file"

finish
