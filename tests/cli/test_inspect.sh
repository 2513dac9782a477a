#!/usr/bin/env bash
# test_inspect.sh: `mood inspect` on the reference fixtures (kohya, LyCORIS, PEFT LoRAs and the tiny
# base checkpoints), human and --json output, against what the reference tools recorded: kohya's
# sshs_model_hash (AutoV3 computed by kohya), module counts from tests/fixtures/kohya/cases.json,
# SHA-256 / AutoV3 / parameter counts recomputed here with Python's hashlib; a file with training
# tags; and the exit codes for corrupt (1) and missing (2) files, and for a FIFO or folder (1,
# refused without blocking).
. "$(dirname "$0")/lib.sh"
F=$FIX

# --- kohya LoRAs: JSON fields against cases.json and kohya's embedded AutoV3 ----------------
for f in sd1_lora sd1_locon_fp16 sd2_locon sdxl_lora sdxl_locon; do
    "$MOOD" inspect --json "$F/kohya/$f.safetensors" >"$tmp/$f.json"
    check "inspect --json $f exits 0" test $? -eq 0
    check "inspect --json $f fields" python3 - "$tmp/$f.json" "$F/kohya/cases.json" "$f" <<'EOF'
import json, sys, hashlib, struct
d = json.load(open(sys.argv[1])); case = json.load(open(sys.argv[2]))["loras"][sys.argv[3] + ".safetensors"]
path = d["file"]
raw = open(path, "rb").read(); n = struct.unpack("<Q", raw[:8])[0]
meta = json.loads(raw[8:8 + n])["__metadata__"]
assert d["kind"] == "adapter", d["kind"]
assert d["family"] == case["family"], (d["family"], case["family"])
assert d["family_source"] == "modelspec.architecture", d["family_source"]
assert d["parts"]["unet"] == case["unet_modules"], d["parts"]
assert d["parts"]["te1"] + d["parts"]["te2"] == case["te_modules"], d["parts"]
assert d["tensors"] == case["keys"], d["tensors"]
assert sorted(d["dtypes"]) == sorted(case["dtypes"]), d["dtypes"]
assert d["algorithms"] == {"lora": case["unet_modules"] + case["te_modules"]}, d["algorithms"]
assert d["unmatched"]["count"] == 0, d["unmatched"]
assert "dim" not in case or (case["dim"] in d["ranks"] and d["rank_max"] >= case["dim"]), d["ranks"]
assert d["hashes"]["autov3"] == meta["sshs_model_hash"], "AutoV3 differs from kohya's sshs_model_hash"
assert d["hashes"]["sshs_model_hash_status"] == "match", d["hashes"]
assert d["hashes"]["sha256"] == hashlib.sha256(raw).hexdigest()
assert d["hashes"]["autov2"] == hashlib.sha256(raw).hexdigest()[:10]
assert d["metadata"]["output_name"] == meta["ss_output_name"]
assert d["metadata"]["architecture"] == meta["modelspec.architecture"]
assert d["dora"] == 0 and d["tucker"] == 0
EOF
done

out=$("$MOOD" inspect "$F/kohya/sdxl_lora.safetensors")
check "human: family" grep -q "^Base family: *sdxl (decided by modelspec.architecture)" <<<"$out"
check "human: modules per part" grep -q "^Modules: *unet 192, te1 12, te2 12" <<<"$out"
check "human: rank and alpha" grep -Eq "^Rank: *4$" <<<"$out"
check "human: AutoV3 line" grep -q "AutoV3 .*LoRA id" <<<"$out"
check "human: sshs matches" grep -q "sshs_model_hash [0-9a-f]*  (embedded; matches the computed AutoV3)" <<<"$out"
check "human: nothing unmatched" grep -q "^Unmatched: *none" <<<"$out"

# --- other flavours: algorithm, DoRA, PEFT (fixtures of the other reference tools) -----------
if [ -f "$F/lycoris/loha_dora_out.safetensors" ]; then
    j=$("$MOOD" inspect --json "$F/lycoris/loha_dora_out.safetensors")
    check "lycoris loha dora" python3 -c '
import json,sys; d=json.loads(sys.argv[1])
assert list(d["algorithms"]) == ["loha"] and d["dora"] == d["modules"] and d["unmatched"]["count"] == 0, d' "$j"
fi
if [ -f "$F/peft/peft_plain.safetensors" ]; then
    j=$("$MOOD" inspect --json "$F/peft/peft_plain.safetensors")
    check "peft plain" python3 -c '
import json,sys; d=json.loads(sys.argv[1])
assert d["family"] == "sd1" and d["algorithms"] == {"lora": d["modules"]} and d["unmatched"]["count"] == 0, d
assert d["ranks"] == [2] and sorted(d["alphas"]) == [1, 4], d' "$j"
fi

# --- checkpoint --------------------------------------------------------------------------------
j=$("$MOOD" inspect --json "$F/bases/sd2_base.safetensors")
check "checkpoint json" python3 - "$j" "$F/bases/sd2_base.safetensors" <<'EOF'
import json, sys, struct, hashlib
from math import prod
d = json.loads(sys.argv[1]); raw = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8 + n]); meta = h.pop("__metadata__", {})
assert d["kind"] == "checkpoint" and d["family"] == "sd2", d
assert d["tensors"] == len(h)
assert d["parameters"] == sum(prod(v["shape"]) for v in h.values())
unet = sum(k.startswith("model.diffusion_model.") for k in h)
te = sum(k.startswith("cond_stage_model.") for k in h)
assert d["parts"]["unet"] == unet and d["parts"]["te1"] == te and d["parts"]["te2"] == 0, d["parts"]
assert d["parts"]["other"] == len(h) - unet - te
assert d["metadata_keys"] == len(meta)
assert d["hashes"]["autov3"] == hashlib.sha256(raw[8 + n:]).hexdigest()
EOF
out=$("$MOOD" inspect "$F/bases/sdxl_base.safetensors")
check "human checkpoint" grep -q "^Kind: *checkpoint" <<<"$out"
check "human checkpoint family" grep -q "^Base family: *sdxl" <<<"$out"

# --- training tags (top 10 of ss_tag_frequency, summed over folders) ---------------------------
python3 - "$tmp/tags.safetensors" <<'EOF'
import json, struct, sys
name = "lora_unet_down_blocks_0_attentions_0_proj_in"
tensors = {name + ".lora_up.weight": [4, 2, 1, 1], name + ".lora_down.weight": [2, 4, 1, 1]}
meta = {"ss_base_model_version": "sd_v1", "ss_output_name": "inkwash",
        "ss_tag_frequency": json.dumps({"10_ink": {"ink": 5, "wash": 2}, "5_sky": {"ink": 3, "sky": 4}}),
        "ss_steps": "1200", "ss_resolution": "(512, 512)"}
header, off = {"__metadata__": meta}, 0
for k, shape in tensors.items():
    size = 4 * shape[0] * shape[1]
    header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + size]}; off += size
h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * off)
EOF
j=$("$MOOD" inspect --json "$tmp/tags.safetensors")
check "trigger words" python3 -c '
import json,sys; d=json.loads(sys.argv[1])
assert d["trigger_words"] == [{"tag": "ink", "count": 8}, {"tag": "sky", "count": 4}, {"tag": "wash", "count": 2}], d["trigger_words"]
assert d["metadata"]["steps"] == 1200 and d["metadata"]["output_name"] == "inkwash"  # a number
assert d["family"] == "sd1" and d["family_source"] == "ss_base_model_version"' "$j"
out=$("$MOOD" inspect "$tmp/tags.safetensors")
check "human trigger words" grep -q "ink (8), sky (4), wash (2)" <<<"$out"

j=$("$MOOD" inspect --json --no-hash "$F/kohya/sd1_lora.safetensors")
check "--no-hash leaves hashes out" python3 -c '
import json,sys; d=json.loads(sys.argv[1]); assert "hashes" not in d and d["modules"] == 204, d' "$j"

# --- errors ------------------------------------------------------------------------------------
head -c 100 "$F/kohya/sd1_lora.safetensors" >"$tmp/corrupt.safetensors"
err=$("$MOOD" inspect "$tmp/corrupt.safetensors" 2>&1 >/dev/null); rc=$?
check "corrupt file exits 1" test $rc -eq 1
check "corrupt file names the file" grep -q "corrupt.safetensors" <<<"$err"
"$MOOD" inspect "$tmp/missing.safetensors" 2>/dev/null; check "missing file exits 2" test $? -eq 2
"$MOOD" inspect 2>/dev/null; check "no file exits 1" test $? -eq 1
"$MOOD" inspect --frob x 2>/dev/null; check "unknown option exits 1" test $? -eq 1
printf '{"a":1}' >"$tmp/not.json"
"$MOOD" inspect "$tmp/not.json" 2>/dev/null; check "non-safetensors exits 1" test $? -eq 1

# --- not a regular file: refused at once, naming the file and what it is (exit 1) ------------
# timeout: a regression (an open that waits for a writer) fails here instead of hanging
mkfifo "$tmp/pipe.safetensors"
expect_rc 1 "a FIFO is refused" timeout -k 5 30 "$MOOD" inspect "$tmp/pipe.safetensors"
check "FIFO message" grep -q "pipe.safetensors: not a regular file but a named pipe" "$tmp/err"
expect_rc 1 "a folder is refused" "$MOOD" inspect "$tmp"
check "folder message" grep -q "is a folder: inspect reads one .safetensors file, a LoRA or a single-file checkpoint" "$tmp/err"
expect_rc 2 "a missing file whose name holds an escape sequence" "$MOOD" inspect \
    "$tmp/x$(printf '\033')[2Jy.safetensors"
check "the error shows it, does not send it" sh -c 'grep -q "x.x1b\[2Jy" "$1" && ! grep -q "$(printf "\033")" "$1"' _ "$tmp/err"

# a DyLoRA (kohya's networks.dylora): inspect says how to use its lower ranks
dylora_file() { # PATH NETWORK_MODULE NETWORK_ARGS
py '
import json, struct, sys
meta = {"ss_network_module": sys.argv[2], "ss_network_args": sys.argv[3], "ss_base_model_version": "sd_v1"}
hdr, data = {"__metadata__": meta}, b""
for name, shape in (("lora_up.weight", [320, 4, 1, 1]), ("lora_down.weight", [4, 320, 1, 1])):
    hdr["lora_unet_down_blocks_0_attentions_0_proj_in." + name] = {
        "dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 5120]}
    data += struct.pack("<1280f", *[0.01] * 1280)
h = json.dumps(hdr).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + data)' "$@"
}
dylora_file "$tmp/dylora.safetensors" networks.dylora '{"unit": "2"}'
dylora_file "$tmp/lyco_dylora.safetensors" lycoris.kohya '{"algo": "dylora", "block_size": "2"}'
for f in dylora lyco_dylora; do
    expect_rc 0 "inspect a DyLoRA ($f)" "$MOOD" inspect "$tmp/$f.safetensors"
    check "says dyn= uses its lower ranks ($f)" grep -q "DyLoRA: .*dyn=N> uses the first N ranks" "$tmp/out"
    expect_rc 0 "inspect --json a DyLoRA ($f)" "$MOOD" inspect "$tmp/$f.safetensors" --json
    check "dylora true ($f)" py 'import json,sys; assert json.load(open(sys.argv[1]))["dylora"] is True' "$tmp/out"
done
expect_rc 0 "inspect a plain LoRA" "$MOOD" inspect "$FIX/kohya/sd1_lora.safetensors"
check "no DyLoRA line" bash -c "! grep -q DyLoRA '$tmp/out'"
expect_rc 0 "inspect --json a plain LoRA" "$MOOD" inspect "$FIX/kohya/sd1_lora.safetensors" --json
check "dylora false" py 'import json,sys; assert json.load(open(sys.argv[1]))["dylora"] is False' "$tmp/out"

# more distinct ranks than the old table's 64 (a dynamically resized SDXL LoRA has as many)
py '
import json, struct, sys
d = open(sys.argv[1], "rb").read(); n, = struct.unpack("<Q", d[:8]); h = json.loads(d[8:8 + n])
mods = sorted({k.rsplit(".", 2)[0] for k in h if k.endswith("lora_up.weight")})
hdr, off = {}, 0
for i, m in enumerate(mods):
    r = i % 90 + 1
    for name, shape in ((".lora_up.weight", [h[m + ".lora_up.weight"]["shape"][0], r] + h[m + ".lora_up.weight"]["shape"][2:]),
                        (".lora_down.weight", [r] + h[m + ".lora_down.weight"]["shape"][1:]), (".alpha", [])):
        size = 4
        for x in shape:
            size *= x
        hdr[m + name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + size]}
        off += size
b = json.dumps(hdr).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(b)) + b + bytes(off))' "$FIX/kohya/sd1_lora.safetensors" "$tmp/manyranks.safetensors"
expect_rc 0 "inspect a LoRA of 90 distinct ranks" "$MOOD" inspect "$tmp/manyranks.safetensors" --json
check "all 90 counted" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["rank_max"]==90 and len(d["ranks"])==90, (d["rank_max"], len(d["ranks"]))' "$tmp/out"

# an inpainting checkpoint (its UNet's first convolution takes 9 channels: latents, mask, masked
# picture), made here from the pipeline fixture's single file by widening that weight with zeros:
# inspect says what it is, and mood gen runs it with a picture and a mask
python3 - "$FIX/pipeline/tiny-sd.safetensors" "$tmp/inpaint.safetensors" <<'PY'
import json, struct, sys
d = open(sys.argv[1], "rb").read(); n, = struct.unpack("<Q", d[:8]); h = json.loads(d[8:8 + n])
data = d[8 + n:]; meta = h.pop("__metadata__", None); key = "model.diffusion_model.input_blocks.0.0.weight"
out, off = {}, 0; blob = b""
for name, t in sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = t["data_offsets"]; raw = data[a:b]
    if name == key:
        o, i, k1, k2 = t["shape"]; per = i * k1 * k2 * 2
        raw = b"".join(raw[j * per:(j + 1) * per] + bytes(5 * k1 * k2 * 2) for j in range(o))
        t = dict(t, shape=[o, i + 5, k1, k2])
    out[name] = dict(t, data_offsets=[off, off + len(raw)]); off += len(raw); blob += raw
if meta: out["__metadata__"] = meta
head = json.dumps(out).encode(); head += b" " * (-len(head) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(head)) + head + blob)
PY
expect_rc 0 "inspect an inpainting checkpoint" "$MOOD" inspect "$tmp/inpaint.safetensors"
check "says it is one" grep -q "Base family:  sd1 (an inpainting model" "$tmp/out"
expect_rc 0 "... --json" "$MOOD" inspect "$tmp/inpaint.safetensors" --json
check "inpainting: true" py 'import json,sys; assert json.load(open(sys.argv[1]))["inpainting"] is True' "$tmp/out"
expect_rc 0 "an ordinary one --json" "$MOOD" inspect "$FIX/pipeline/tiny-sd.safetensors" --json
check "inpainting: false" py 'import json,sys; assert json.load(open(sys.argv[1]))["inpainting"] is False' "$tmp/out"
finish
