#!/bin/bash
# test_hash.sh: `mood hash` end to end: text and --json output for the Civitai mock file
# (values from ecosystem.md, computed with hashlib/zlib), the sshs_model_hash check for a
# matching, stale, LyCORIS "0x" and empty-input value, lower-case hex in every hash field, and
# the exit codes (1 usage, 2 missing; 1 for a folder, FIFO or device, refused without blocking).
. "$(dirname "$0")/lib.sh"

mock="$FIX/st/mock_ink_style.safetensors"
out=$("$MOOD" hash "$mock") || fail "hash exited $?"
for want in "AutoV2: *3b4b65d642$" "AutoV3: *e00e5eb94441$" "CRC32: *d04ae41e  (zlib order 1ee44ad0)" \
    "SHA256: *3b4b65d6428f8f873a91db79353c66ea470c0de01e159cd805dfc4527ea37a59" \
    "size: *220 bytes" "AutoV1: *e3b0c442" "sshs_model_hash: *(none)"; do
    grep -q "$want" <<<"$out" || fail "text output lacks '$want'"
done
# one case for every hash (lower-case, as A1111, kohya and `mood inspect` write them)
grep -oE '[0-9A-Fa-f]{8,}' <<<"$out" | grep -q '[A-F]' && fail "text output: upper-case hex"

"$MOOD" hash --json "$mock" >"$tmp/mock.json" || fail "hash --json exited $?"
python3 - "$tmp/mock.json" <<'EOF' || fail "--json output"
import json, sys
d = json.load(open(sys.argv[1]))
want = {"size": 220, "autov2": "3b4b65d642", "autov3_short": "e00e5eb94441", "crc32": "d04ae41e",
        "crc32_zlib": "1ee44ad0", "autov1": "e3b0c442", "autov1_civitai": False,
        "is_safetensors": True, "sshs_model_hash_status": "absent",
        "a1111_shorthash": "e00e5eb94441",
        "sha256": "3b4b65d6428f8f873a91db79353c66ea470c0de01e159cd805dfc4527ea37a59",
        "autov3": "e00e5eb9444182f352323374ef4e08ebcb784725fdd4fd612d7730540b3e0c8c"}
bad = {k: (d.get(k), v) for k, v in want.items() if d.get(k) != v}
if bad:
    sys.exit("mismatch: %r" % bad)
upper = [k for k, v in d.items() if isinstance(v, str) and k != "file" and v != v.lower()]
if upper:
    sys.exit("upper-case hex in %r (one rule: lower-case)" % upper)
EOF

# Files carrying an embedded sshs_model_hash; the data section is float32 1.0, whose AutoV3 is
# sha256(00 00 80 3f).
python3 - "$tmp" <<'EOF' || fail "making sshs fixtures"
import hashlib, json, struct, sys
data = b"\x00\x00\x80\x3f"
v3 = hashlib.sha256(data).hexdigest()
cases = {"match": v3, "mismatch": "1" * 64, "per_tensor_0x": "0x" + v3,
         "empty_input": hashlib.sha256(b"").hexdigest(), "malformed": "not-a-hash"}
for name, value in cases.items():
    h = json.dumps({"__metadata__": {"sshs_model_hash": value, "sshs_legacy_hash": "e3b0c442"},
                    "a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}},
                   separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open("%s/%s.safetensors" % (sys.argv[1], name), "wb").write(struct.pack("<Q", len(h)) + h + data)
EOF
for status in match mismatch per_tensor_0x empty_input malformed; do
    f="$tmp/$status.safetensors"
    got=$("$MOOD" hash --json "$f" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sshs_model_hash_status"])')
    [ "$got" = "$status" ] || fail "$status: status '$got'"
    text=$("$MOOD" hash "$f")
    if [ "$status" = match ]; then
        grep -q "matches the computed AutoV3" <<<"$text" || fail "match not reported"
    else
        grep -q "sshs_model_hash:.*MISMATCH" <<<"$text" || fail "$status: mismatch not flagged"
    fi
    grep -q "sshs_legacy_hash: *e3b0c442" <<<"$text" || fail "$status: legacy hash not shown"
done
"$MOOD" hash "$tmp/per_tensor_0x.safetensors" | grep -q "A1111 shows: *0x[0-9a-f]\{10\}$" ||
    fail "A1111 shorthash of a 0x value"

# Not a safetensors file: no AutoV3, the full-file hash stands in for A1111.
printf 'just bytes' >"$tmp/plain.bin"
"$MOOD" hash "$tmp/plain.bin" | grep -q "AutoV3: *(not a safetensors file)" || fail "plain file"

"$MOOD" hash "$tmp/does-not-exist.safetensors" 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] || fail "missing file: exit $rc, want 2"
grep -q "does-not-exist.safetensors" "$tmp/err" || fail "missing file: message lacks the path"
"$MOOD" hash >/dev/null 2>&1
rc=$?
[ $rc -eq 1 ] || fail "no argument: exit $rc, want 1"
"$MOOD" hash --bogus "$mock" >/dev/null 2>&1
rc=$?
[ $rc -eq 1 ] || fail "unknown option: exit $rc, want 1"
"$MOOD" help hash | grep -q "AutoV3" || fail "help text"

# not a regular file: refused at once with exit 1, naming it
# timeout: a regression (an open that waits for a writer) fails here instead of hanging
mkfifo "$tmp/pipe.safetensors"
err=$(timeout -k 5 30 "$MOOD" hash "$tmp/pipe.safetensors" 2>&1 >/dev/null)
rc=$?
[ $rc -eq 1 ] || fail "FIFO: exit $rc, want 1 ($err)"
grep -q "pipe.safetensors: not a regular file but a named pipe" <<<"$err" || fail "FIFO message: $err"
err=$("$MOOD" hash /dev/null 2>&1 >/dev/null)
rc=$?
[ $rc -eq 1 ] || fail "/dev/null: exit $rc, want 1"
grep -q "/dev/null: not a regular file but a device" <<<"$err" || fail "device message: $err"
# a folder: bad input (exit 1) as for `mood inspect` (mood_map_file refuses it with MOOD_EINVAL)
mkdir "$tmp/dir.safetensors"
err=$("$MOOD" hash "$tmp/dir.safetensors" 2>&1 >/dev/null)
rc=$?
[ $rc -eq 1 ] || fail "folder: exit $rc, want 1"
grep -q "dir.safetensors: not a regular file but a folder" <<<"$err" || fail "folder message: $err"
"$MOOD" inspect "$tmp/dir.safetensors" >/dev/null 2>&1
rc=$?
[ $rc -eq 1 ] || fail "inspect of a folder: exit $rc, want 1 (as hash)"

# a checkpoint: A1111's "Model hash" is the first 10 hex of its SHA-256 (AutoV2), not a LoRA's
# 12-character AutoV3
ckpt="$FIX/bases/sd1_base.safetensors"
v2=$(sha256sum "$ckpt" | cut -c1-10)
"$MOOD" hash "$ckpt" | grep -q "A1111 shows: *$v2  (a checkpoint" || fail "checkpoint: A1111 shows its AutoV2"
"$MOOD" hash --json "$ckpt" | grep -q "\"a1111_shorthash\":[[:space:]]*\"$v2\"" || fail "checkpoint: --json a1111_shorthash"
finish
