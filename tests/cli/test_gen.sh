#!/usr/bin/env bash
# test_gen.sh: `mood gen` end to end on the tiny diffusers pipeline of tests/fixtures/pipeline
# (made by tools/make_fixtures_pipeline.py with diffusers): the image equals diffusers' decoded
# image byte for byte, the PNG carries A1111 parameters that PIL reads, --from-png regenerates
# the same bytes (also with the largest seed, 2^64-1), styles from a registry under $tmp apply (inline tags, --style, templates and
# trigger words), <lora:NAME:TE:UNET:DYN> reads and writes as A1111's (a DyLoRA cut applied in
# both LoRA modes and regenerated from the PNG), --json lists the adapters, a style is written as its
# LoRAs at their effective weights under safe names and --from-png (which finds each LoRA by its
# hash first) gives the same bytes, --from-png names each setting of an image it cannot
# reproduce, merge and runtime LoRA modes agree, an SDXL LoRA is refused, bad options fail
# with exit 1 and a missing model with exit 2; an SDXL folder (with an SGM LoRA) and Playground
# v2.5 generate; --model mood-tiny finds the shipped model without a registry. img2img
# (--init-image, --strength) gives diffusers' StableDiffusionImg2ImgPipeline image (fixture
# tests/fixtures/img2img), records A1111's "Denoising strength", and --from-png with the picture
# gives the same bytes; so does inpainting (--mask: diffusers' StableDiffusionInpaintPipeline).
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
P=$FIX/pipeline
MODEL=$P/tiny-sd
PROMPT="a lighthouse at dusk, oil painting"
common=(--model "$MODEL" --size 64x64 --steps 8 --cfg 7.5)
# pixels.py A B MAXDIFF: the RGB pixels of two 8-bit PNGs differ by at most MAXDIFF (a minimal
# PNG decoder: zlib and the five row filters; no third-party module needed, so CI, which has no
# tools/.venv, runs every check; its pixels() is also loaded by the diffusers comparison)
cat >"$tmp/pixels.py" <<'PYEOF'
import struct, sys, zlib
def pixels(path):
    d = open(path, "rb").read(); i = 8; idat = b""; w = h = 0
    while i < len(d):
        n, = struct.unpack(">I", d[i:i + 4]); t = d[i + 4:i + 8]; b = d[i + 8:i + 8 + n]
        if t == b"IHDR": w, h = struct.unpack(">II", b[:8])
        if t == b"IDAT": idat += b
        i += 12 + n
    raw = zlib.decompress(idat); stride = w * 3; out = []; prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]; line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - 3] if x >= 3 else 0; b = prev[x]; c = prev[x - 3] if x >= 3 else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line; prev = line
    return out
if __name__ == "__main__":
    a, b = pixels(sys.argv[1]), pixels(sys.argv[2])
    diff = max(abs(x - y) for x, y in zip(a, b))
    sys.exit(0 if len(a) == len(b) and diff <= int(sys.argv[3]) else 1)
PYEOF

# equals_ref PNG REF KEY MAXDIFF: the PNG's pixels are reference image KEY of the safetensors file
# REF (float32, H x W x 3 in [0, 1], as diffusers' output_type "np") within MAXDIFF levels of 255
equals_ref() {
    python3 -c '
import json, runpy, struct, sys
px = runpy.run_path(sys.argv[3], run_name="lib")["pixels"](sys.argv[1])
d = open(sys.argv[2], "rb").read(); n, = struct.unpack("<Q", d[:8]); t = json.loads(d[8:8 + n])[sys.argv[4]]
a, b = t["data_offsets"]; ref = struct.unpack("<%df" % ((b - a) // 4), d[8 + n + a:8 + n + b])
assert t["dtype"] == "F32" and len(ref) == len(px) > 0, (t, len(px))
diff = max(abs(round(r * 255) - p) for r, p in zip(ref, px))
assert diff <= int(sys.argv[5]), diff' "$1" "$2" "$tmp/pixels.py" "$3" "$4"
}

# ----- one image, as diffusers makes it
expect_rc 0 "gen euler" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 --sampler euler -o "$tmp/a.png"
check "prints the path" grep -q "$tmp/a.png" "$tmp/out"
check "parameters text" py '
import sys, zlib, struct
d = open(sys.argv[1], "rb").read(); i = 8; text = None
while i < len(d):
    n, = struct.unpack(">I", d[i:i+4]); t = d[i+4:i+8]; body = d[i+8:i+8+n]
    if t in (b"tEXt", b"iTXt") and body.startswith(b"parameters\0"): text = body
    i += 12 + n
assert text is not None
s = text.decode("latin-1")
for want in ("Steps: 8", "Sampler: Euler,", "CFG scale: 7.5", "Seed: 42", "Size: 64x64",
             "Model hash: ", "Model: tiny-sd", "Version: mood"):
    assert want in s, (want, s)' "$tmp/a.png"
check "image equals diffusers' (fixture euler.image)" equals_ref "$tmp/a.png" "$P/ref.safetensors" euler.image 0

# ----- img2img: the image diffusers' StableDiffusionImg2ImgPipeline makes from the same picture
I2I=$FIX/img2img
expect_rc 0 "gen --init-image" "$MOOD" gen "$PROMPT" --model "$MODEL" --steps 10 --cfg 7.5 \
    --seed 42 --sampler euler --init-image "$I2I/init.png" --strength 0.6 -o "$tmp/i2i.png"
check "img2img image equals diffusers' (fixture euler_s06.image)" equals_ref "$tmp/i2i.png" "$I2I/ref.safetensors" euler_s06.image 1
check "records A1111's Denoising strength" grep -qa "Model: tiny-sd, Denoising strength: 0.6," "$tmp/i2i.png"
expect_rc 0 "--from-png with its picture" "$MOOD" gen --from-png "$tmp/i2i.png" --model "$MODEL" \
    --init-image "$I2I/init.png" -o "$tmp/i2i-again.png"
check "the same bytes" cmp -s "$tmp/i2i.png" "$tmp/i2i-again.png"
check "no warning" test ! -s "$tmp/err" -o "$(grep -c warning "$tmp/err")" = 0
expect_rc 0 "--from-png without it" "$MOOD" gen --from-png "$tmp/i2i.png" --model "$MODEL" \
    -o "$tmp/i2i-noise.png"
check "says the picture is needed" grep -q "made with img2img (Denoising strength: 0.6) from a picture its parameters do not name: give it with --init-image" "$tmp/err"
expect_rc 1 "--strength without --init-image" "$MOOD" gen "$PROMPT" "${common[@]}" --strength 0.5
check "says what it is for" grep -q "give the image with --init-image" "$tmp/err"
expect_rc 1 "--strength 0" "$MOOD" gen "$PROMPT" "${common[@]}" --init-image "$I2I/init.png" --strength 0
expect_rc 1 "a strength that runs no step" "$MOOD" gen "$PROMPT" "${common[@]}" \
    --init-image "$I2I/init.png" --strength 0.1
check "says so" grep -q "runs no step" "$tmp/err"
expect_rc 2 "a missing picture" "$MOOD" gen "$PROMPT" "${common[@]}" --init-image "$tmp/nosuch.png"
check "names it" grep -q "init-image: .*nosuch.png" "$tmp/err"
echo "not an image" >"$tmp/bad.png"
expect_rc 1 "not a picture" "$MOOD" gen "$PROMPT" "${common[@]}" --init-image "$tmp/bad.png"
# inpainting: the image diffusers' StableDiffusionInpaintPipeline makes with mask.png
expect_rc 0 "gen --mask" "$MOOD" gen "$PROMPT" --model "$MODEL" --steps 10 --cfg 7.5 --seed 60 \
    --sampler euler --init-image "$I2I/init.png" --mask "$I2I/mask.png" --strength 1 -o "$tmp/inp.png"
check "inpainted image equals diffusers' (fixture inpaint_euler_s1.image)" equals_ref "$tmp/inp.png" "$I2I/ref.safetensors" inpaint_euler_s1.image 1
check "records A1111's inpainting keys" grep -qa "Denoising strength: 1, .*Mask blur: 0," "$tmp/inp.png"
expect_rc 0 "--from-png with picture and mask" "$MOOD" gen --from-png "$tmp/inp.png" --model "$MODEL" \
    --init-image "$I2I/init.png" --mask "$I2I/mask.png" -o "$tmp/inp-again.png"
check "the same bytes" cmp -s "$tmp/inp.png" "$tmp/inp-again.png"
# with the default sampler (Euler a: noise at every step) too: the PNG says "RNG: CPU", read back
# as --rng mood, whose one image must draw what torch-cpu drew
expect_rc 0 "inpainting with Euler a" "$MOOD" gen "$PROMPT" --model "$MODEL" --steps 10 --seed 61 \
    --init-image "$I2I/init.png" --mask "$I2I/mask.png" -o "$tmp/inp-a.png"
expect_rc 0 "--from-png of it" "$MOOD" gen --from-png "$tmp/inp-a.png" --model "$MODEL" \
    --init-image "$I2I/init.png" --mask "$I2I/mask.png" -o "$tmp/inp-a-again.png"
check "the same bytes (Euler a)" cmp -s "$tmp/inp-a.png" "$tmp/inp-a-again.png"
expect_rc 0 "--from-png without the mask" "$MOOD" gen --from-png "$tmp/inp.png" --model "$MODEL" \
    --init-image "$I2I/init.png" -o "$tmp/inp-nomask.png"
check "says the mask is needed" grep -q "the image was inpainted (Mask blur: 0): give its picture with --init-image and its mask with --mask" "$tmp/err"
expect_rc 0 "--json of an inpainting" "$MOOD" gen "$PROMPT" --model "$MODEL" --steps 4 --json \
    --init-image "$I2I/init.png" --mask "$I2I/mask.png" --strength 0.5 -o "$tmp/inp-json.png"
check "names what it started from" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["init_image"].endswith("init.png") and d["mask"].endswith("mask.png") and d["strength"]==0.5, d' "$tmp/out"
# an inpainting model (tiny-sd with a 9-channel UNet): the image diffusers makes with it; without
# a picture and a mask it is refused, and mood train does not train on it
expect_rc 0 "gen with an inpainting model" "$MOOD" gen "$PROMPT" --model "$I2I/tiny-sd-inpaint" \
    --steps 10 --cfg 7.5 --seed 70 --init-image "$I2I/init.png" --mask "$I2I/mask.png" --strength 1 \
    -o "$tmp/inp9.png"
check "its image equals diffusers' (fixture inpaint9_euler_a_s1.image)" equals_ref "$tmp/inp9.png" "$I2I/ref.safetensors" inpaint9_euler_a_s1.image 1
expect_rc 1 "an inpainting model without a mask" "$MOOD" gen "$PROMPT" --model "$I2I/tiny-sd-inpaint" --steps 4
check "says what it needs" grep -q "an inpainting model .* redraws part of a picture: give the picture and its mask" "$tmp/err"
expect_rc 1 "mood train on it" "$MOOD" train --name t9 --board "${MOOD_SOURCE:-$FIX/../..}/examples/moodboards/twemoji" \
    --model "$I2I/tiny-sd-inpaint" --steps 1 --no-register -o "$tmp/t9.safetensors"
check "says it does not train on it" grep -q "is an inpainting model, which mood does not train on" "$tmp/err"
expect_rc 1 "--mask without --init-image" "$MOOD" gen "$PROMPT" "${common[@]}" --mask "$I2I/mask.png"
check "says what it is for" grep -q "give the picture with --init-image" "$tmp/err"
# a picture larger than the model's area is brought down to it, its shape kept
python3 -c '
import struct, sys, zlib
w, h = 200, 100
raw = b"".join(b"\0" + bytes(v for x in range(w) for v in ((x * 7) % 256, (y * 5) % 256, 90)) for y in range(h))
def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))' "$tmp/wide.png"
expect_rc 0 "a wide picture" "$MOOD" gen "$PROMPT" --model "$MODEL" --steps 4 --init-image "$tmp/wide.png" -o "$tmp/wide-out.png"
check "made at the model's area, 2:1" grep -q "init-image is 200x100: the image is made at 88x40" "$tmp/err"
check "at that size" python3 -c '
import struct, sys
d = open(sys.argv[1], "rb").read(); assert struct.unpack(">II", d[16:24]) == (88, 40)' "$tmp/wide-out.png"
expect_rc 1 "a mask of another shape" "$MOOD" gen "$PROMPT" "${common[@]}" --init-image "$I2I/init.png" \
    --mask "$tmp/wide.png"
check "says so" grep -q "the mask must have the picture's shape" "$tmp/err"

# ----- previews
expect_rc 0 "--preview-every" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 --sampler euler \
    --preview-every 3 -o "$tmp/p.png"
check "previews leave the image unchanged" cmp -s "$tmp/a.png" "$tmp/p.png"
check "the preview removed once the image is written" test ! -e "$tmp/p.png.preview.png"
# a batch's preview shows all its images (a 2 x 1 grid), watched while the run lasts
"$MOOD" gen "$PROMPT" "${common[@]}" --steps 40 --batch 2 --preview-every 1 -o "$tmp/pb.png" \
    >/dev/null 2>&1 &
check "a batch's preview is its grid" python3 -c '
import os, struct, sys, time
pv, last, seen, t0 = sys.argv[1], sys.argv[2], set(), time.time()
while time.time() - t0 < 120 and not os.path.exists(last):
    try:
        d = open(pv, "rb").read(24)
        if d[:8] == b"\x89PNG\r\n\x1a\n":
            seen.add(struct.unpack(">II", d[16:24]))
    except OSError:
        pass
    time.sleep(0.001)
assert seen == {(128, 64)}, seen' "$tmp/pb.png.preview.png" "$tmp/pb-2.png"
wait
check "and removed after it" test ! -e "$tmp/pb.png.preview.png"
# a file of that name the run did not make is neither replaced nor removed
echo mine >"$tmp/k.png.preview.png"
expect_rc 0 "previews beside someone's file" "$MOOD" gen "$PROMPT" "${common[@]}" --preview-every 2 -o "$tmp/k.png"
check "it is kept as it was" test "$(cat "$tmp/k.png.preview.png")" = mine
check "said once" test "$(grep -c "k.png.preview.png exists, and is not this run's to replace" "$tmp/err")" -eq 1
# a run stopped by Ctrl-C leaves no preview
"$MOOD" gen "$PROMPT" "${common[@]}" --steps 400 --preview-every 1 -o "$tmp/s.png" >/dev/null 2>"$tmp/stop.err" &
gen_pid=$!
for _ in $(seq 600); do [ -e "$tmp/s.png.preview.png" ] && break; sleep 0.05; done
kill -INT "$gen_pid"
wait "$gen_pid"
check "stopped: no preview left" test ! -e "$tmp/s.png.preview.png"
check "says it stopped and wrote nothing" grep -q "mood: stopped: no image written" "$tmp/stop.err"
# with --json, stdout still holds one document, saying it was stopped
"$MOOD" gen "$PROMPT" "${common[@]}" --steps 400 --preview-every 1 -o "$tmp/s2.png" --json \
    >"$tmp/stop.out" 2>/dev/null &
gen_pid=$!
for _ in $(seq 600); do [ -e "$tmp/s2.png.preview.png" ] && break; sleep 0.05; done
kill -INT "$gen_pid"
wait "$gen_pid"
check "--json: the stop as a document" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d=={"error": "stopped by signal 2", "exit_status": 130}, d' "$tmp/stop.out"

# ----- --from-png reproduces the image bit for bit
expect_rc 0 "gen --from-png" "$MOOD" gen --from-png "$tmp/a.png" --model "$MODEL" -o "$tmp/b.png"
check "same bytes" cmp -s "$tmp/a.png" "$tmp/b.png"
expect_rc 0 "from-png with an override" "$MOOD" gen --from-png "$tmp/a.png" --model "$MODEL" \
    --seed 7 -o "$tmp/c.png"
check "override changes the image" bash -c "! cmp -s '$tmp/a.png' '$tmp/c.png'"
# a seed past 2^53 (ComfyUI's go to 2^64-1) is stored exactly, so it reproduces too
expect_rc 0 "the largest seed" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 18446744073709551615 \
    -o "$tmp/big.png" --json
check "exact in --json and the PNG" py '
import json,sys; d=json.load(open(sys.argv[1])); im=d["images"][0]
assert im["seed"]==18446744073709551615 and "Seed: 18446744073709551615," in im["parameters"], im' "$tmp/out"
expect_rc 0 "gen --from-png of it" "$MOOD" gen --from-png "$tmp/big.png" --model "$MODEL" -o "$tmp/big2.png"
check "same bytes (largest seed)" cmp -s "$tmp/big.png" "$tmp/big2.png"
expect_rc 0 "--seed -1 over a PNG's seed: random" "$MOOD" gen --from-png "$tmp/big.png" \
    --model "$MODEL" --seed -1 -o "$tmp/big3.png"
check "a new seed" bash -c "! grep -q 'seed 18446744073709551615' '$tmp/err'"
expect_rc 1 "a negative seed other than -1" "$MOOD" gen "$PROMPT" "${common[@]}" --seed -5
check "says what --seed takes" grep -q -- "--seed -5: takes a whole number from 0 to 18446744073709551615, or -1" "$tmp/err"
expect_rc 1 "a CFG that is not a number" "$MOOD" gen "$PROMPT" "${common[@]}" --cfg nan
check "says what --cfg takes" grep -q -- "--cfg nan: takes a number, 0 to 100" "$tmp/err"

# ----- batch and json
expect_rc 0 "batch 2 --json" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 5 --batch 2 -o "$tmp/batch.png" --json
check "two images in json" py '
import json,sys,os; d=json.load(open(sys.argv[1])); im=d["images"]
assert [os.path.basename(i["path"]) for i in im]==["batch-1.png","batch-2.png"], im
assert all(os.path.exists(i["path"]) for i in im)
assert "Batch pos: 1" in im[1]["parameters"] and "RNG: torch-cpu" in im[1]["parameters"]' "$tmp/out"
expect_rc 0 "from-png of a batch image" "$MOOD" gen --from-png "$tmp/batch-2.png" --model "$MODEL" -o "$tmp/b2.png"
check "batch image reproduced" cmp -s "$tmp/batch-2.png" "$tmp/b2.png"

# ----- LoRAs: files, merge vs runtime
expect_rc 0 "lora merge" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 --lora "$P/lora.safetensors:0.7" -o "$tmp/m.png"
expect_rc 0 "lora runtime" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 --lora "$P/lora.safetensors:0.7" \
    --lora-mode runtime -o "$tmp/r.png"
check "lora changes the image" bash -c "! cmp -s '$tmp/a.png' '$tmp/m.png'"
check "merge and runtime agree within 2/255" python3 "$tmp/pixels.py" "$tmp/m.png" "$tmp/r.png" 2
check "Lora hashes written" py '
import sys; d=open(sys.argv[1],"rb").read(); assert b"Lora hashes: \"lora: " in d and b"<lora:lora:0.7>" in d, d[:600]' "$tmp/m.png"
expect_rc 1 "--lora with a weight past 100" "$MOOD" gen "$PROMPT" "${common[@]}" \
    --lora "$P/lora.safetensors:1e30" -o "$tmp/nan.png"
check "says the range" grep -q "a weight takes a number from -100 to 100" "$tmp/err"
expect_rc 1 "a weight that overflows (inline tag)" "$MOOD" gen "$PROMPT <lora:$P/lora.safetensors:1e30>" \
    "${common[@]}" -o "$tmp/nan.png"
check "says the image is not finite, writes none" sh -c 'grep -q "NaN or infinite" "$1" && test ! -e "$2"' _ "$tmp/err" "$tmp/nan.png"
expect_rc 1 "an SDXL LoRA on an SD1 model" "$MOOD" gen "$PROMPT" "${common[@]}" --lora "$FIX/kohya/sdxl_lora.safetensors"
check "family message" grep -q "sdxl" "$tmp/err"
# a LoRA whose change overflows float32 (factors of 1e20, as bake refuses to write): refused by
# name in merge mode, where weights are merged on worker threads whose message must come through
python3 - "$tmp/overflow.safetensors" <<'PYEOF'
import json, struct, sys
m = "lora_te_text_model_encoder_layers_0_mlp_fc1"
t = {m + ".alpha": ([], [4.0]), m + ".lora_down.weight": ([4, 8], [1e20] * 32),
     m + ".lora_up.weight": ([32, 4], [1e20] * 128)}
head, data = {}, b""
for k, (shape, vals) in t.items():
    head[k] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * len(vals)]}
    data += struct.pack("<%df" % len(vals), *vals)
h = json.dumps(head).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + data)
PYEOF
expect_rc 1 "a LoRA whose change overflows" "$MOOD" gen "$PROMPT" "${common[@]}" --lora "$tmp/overflow.safetensors" -o "$tmp/overflow.png"
check "names the weight and says it overflows" grep -q 'weight "text_model.encoder.layers.0.mlp.fc1.weight" is not finite .*overflows' "$tmp/err"
check "no image" test ! -e "$tmp/overflow.png"

# ----- A1111's <lora:NAME:TE:UNET[:DYN]> (lora-formats.md 4.2), read and written: the first
# number is the text encoder's; mood's own --lora FILE:W:W_TE gives the UNet's first
cp "$P/lora.safetensors" "$tmp/l1.safetensors"
expect_rc 0 "--lora FILE:W:W_TE" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 \
    --lora "$tmp/l1.safetensors:0.9:0.3" -o "$tmp/te1.png"
check "written as A1111 reads it: <lora:l1:0.3:0.9>" grep -qa "<lora:l1:0.3:0.9>" "$tmp/te1.png"
expect_rc 0 "<lora:NAME:TE:UNET>" "$MOOD" gen "$PROMPT <lora:$tmp/l1:0.3:0.9>" "${common[@]}" \
    --seed 42 -o "$tmp/te2.png"
check "read as A1111 does: the same image" cmp -s "$tmp/te1.png" "$tmp/te2.png"
expect_rc 0 "<lora:NAME:TE:UNET:DYN> at the file's rank or above" "$MOOD" gen \
    "$PROMPT <lora:$tmp/l1:0.3:0.9:8>" "${common[@]}" --seed 42 -o "$tmp/te3.png"
check "every rank applied: the same pixels" python3 "$tmp/pixels.py" "$tmp/te1.png" "$tmp/te3.png" 0
check "the cut written as dyn=" grep -qa "<lora:l1:0.3:0.9:dyn=8>" "$tmp/te3.png"
expect_rc 0 "named forms" "$MOOD" gen "$PROMPT <lora:$tmp/l1:dyn=8:unet=0.9:te=0.3>" \
    "${common[@]}" --seed 42 -o "$tmp/te4.png"
check "named forms: the same image" cmp -s "$tmp/te3.png" "$tmp/te4.png"
check "no warning" bash -c "! grep -q warning '$tmp/err'"
# the fixture is rank 4: a cut to 1 rank is another image, written and read back as such
expect_rc 0 "a DyLoRA cut to rank 1" "$MOOD" gen "$PROMPT <lora:$tmp/l1:0.3:0.9:dyn=1>" \
    "${common[@]}" --seed 42 -o "$tmp/dyn1.png"
check "cut: other pixels" bash -c "! python3 '$tmp/pixels.py' '$tmp/te1.png' '$tmp/dyn1.png' 0"
for mode in runtime merge; do # runtime: side paths; both: the positional form of the cut
    expect_rc 0 "the cut in $mode mode, positional" "$MOOD" gen "$PROMPT <lora:$tmp/l1:0.3:0.9:1>" \
        "${common[@]}" --seed 42 --lora-mode $mode -o "$tmp/dyn1-$mode.png"
    check "the same image either way ($mode)" python3 "$tmp/pixels.py" "$tmp/dyn1.png" "$tmp/dyn1-$mode.png" 1
done
expect_rc 0 "--from-png of the cut (beside l1.safetensors)" sh -c 'cd "$1" && "$0" gen --from-png \
    dyn1.png --model "$2" -o dyn1b.png' "$MOOD" "$tmp" "$MODEL"
check "regenerated byte for byte" cmp -s "$tmp/dyn1.png" "$tmp/dyn1b.png"
expect_rc 1 "a rank of 0" "$MOOD" gen "$PROMPT <lora:$tmp/l1:dyn=0>" "${common[@]}"
check "says it is no rank" grep -q "dyn=0 is not a DyLoRA rank (ranks start at 1)" "$tmp/err"
expect_rc 1 "a fourth argument that is not a rank" "$MOOD" gen "$PROMPT <lora:$tmp/l1:0.3:0.9:x>" \
    "${common[@]}"
check "names it" grep -q '"x" (the fourth argument, DyLoRA' "$tmp/err"

# ----- registry styles
cp "$P/lora.safetensors" "$tmp/tinystyle.safetensors"
expect_rc 0 "import the style" "$MOOD" import "$tmp/tinystyle.safetensors"
expect_rc 0 "style with a template and trigger" "$MOOD" style edit tinystyle --trigger "tinytrig" \
    --template "{prompt}, in tiny style" --negative "ugly" --weight 0.7
expect_rc 0 "--style" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 --style tinystyle -o "$tmp/s.png" --json
check "template, trigger and negative applied" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["prompt"]=="a lighthouse at dusk, oil painting, in tiny style, tinytrig", d["prompt"]
assert d["negative"]=="ugly", d["negative"]
a=d["adapters"]; assert len(a)==1 and a[0]["name"]=="tinystyle" and a[0]["unet"]==a[0]["te"]==0.7, a
assert "dyn" not in a[0] and len(a[0]["autov3_short"])==12 and a[0]["path"], a
assert d["styles"]==[{"name": "tinystyle", "weight": 0.7}], d["styles"]' "$tmp/out"
expect_rc 0 "--json with a cut and a TE weight" "$MOOD" gen "$PROMPT <lora:$tmp/l1:0.3:0.9:dyn=2>" \
    "${common[@]}" --seed 42 -o "$tmp/j.png" --json
check "the adapters as applied" py '
import json,sys; a=json.load(open(sys.argv[1]))["adapters"]
assert len(a)==1 and a[0]["alias"]=="l1" and a[0]["te"]==0.3 and a[0]["unet"]==0.9 and a[0]["dyn"]==2, a
assert a[0]["path"].endswith("l1.safetensors"), a' "$tmp/out"
cp "$FIX/kohya/sdxl_lora.safetensors" "$tmp/xlstyle.safetensors"
expect_rc 0 "import an SDXL style" "$MOOD" import "$tmp/xlstyle.safetensors"
expect_rc 1 "an SDXL style on an SD1 model" "$MOOD" gen "$PROMPT" "${common[@]}" --style xlstyle
check "names the style, not the stored file" sh -c 'grep -q "style .xlstyle." "$1" && ! grep -q blobs "$1"' _ "$tmp/err"
expect_rc 0 "<lora:NAME> beside a file of that name" sh -c 'cd "$1" && exec "$0" gen "a cat <lora:tinystyle:0.5>" --model "$2" --size 64x64 --steps 2 -o x.png' "$MOOD" "$tmp" "$MODEL"
check "says the file is used, not the style" grep -q "<lora:tinystyle>: the file tinystyle.safetensors is used, not the registry style" "$tmp/err"
expect_rc 0 "inline <style:>" "$MOOD" gen "$PROMPT <style:tinystyle:0.7>" "${common[@]}" --seed 42 -o "$tmp/s2.png"
check "inline equals --style" cmp -s "$tmp/s.png" "$tmp/s2.png"
expect_rc 0 "--from-png of a styled image" "$MOOD" gen --from-png "$tmp/s.png" --model "$MODEL" -o "$tmp/s3.png"
check "styled image reproduced" cmp -s "$tmp/s.png" "$tmp/s3.png"
expect_rc 0 "rename the style" "$MOOD" rename tinystyle renamed
expect_rc 0 "--from-png finds a renamed style by its hash" "$MOOD" gen --from-png "$tmp/s.png" \
    --model "$MODEL" -o "$tmp/s4.png"
check "says it matched by hash" grep -q "found in the registry by its hash" "$tmp/err"
check "same pixels" python3 "$tmp/pixels.py" "$tmp/s.png" "$tmp/s4.png" 0
expect_rc 0 "--from-png with the style gone" "$MOOD" rm renamed
expect_rc 0 "--from-png still generates" "$MOOD" gen --from-png "$tmp/s.png" --model "$MODEL" \
    -o "$tmp/s5.png" --json
check "warns what it left out" grep -q "neither a file nor in the registry" "$tmp/err"
check "once, and in the JSON's warnings too" py '
import json,sys; w=json.load(open(sys.argv[1]))["warnings"]
assert len([x for x in w if "neither a file nor in the registry" in x])==1, w' "$tmp/out"
check "said once on stderr" test "$(grep -c "neither a file nor in the registry" "$tmp/err")" = 1
expect_rc 1 "unknown style" "$MOOD" gen "$PROMPT" "${common[@]}" --style nosuchstyle
check "names the style" grep -q "nosuchstyle" "$tmp/err"

# ----- a style is written as its LoRAs, each under its own name at its effective weight (style
# weight x LoRA weight), one "Lora hashes" entry each; --from-png gives the same image
cp "$P/lora.safetensors" "$tmp/ink.safetensors"
expect_rc 0 "a second LoRA" "$MOOD" lora stack "$P/lora.safetensors:-0.8" -o "$tmp/grain.safetensors"
expect_rc 0 "import both" "$MOOD" import "$tmp/ink.safetensors" "$tmp/grain.safetensors"
expect_rc 0 "a one-LoRA style, its LoRA at 0.6" "$MOOD" style create tstyle --lora ink:0.6
expect_rc 0 "a two-LoRA style" "$MOOD" style create two --lora ink:0.6 --lora grain:0.3:0.5
expect_rc 0 "--style tstyle:0.7" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 \
    --style tstyle:0.7 -o "$tmp/t1.png"
check "written as its LoRA at 0.42" py '
import sys; d=open(sys.argv[1],"rb").read()
assert b"oil painting <lora:ink:0.42>\n" in d and b"Lora hashes: \"ink: " in d and b"tstyle" not in d, d[:500]' "$tmp/t1.png"
expect_rc 0 "--from-png of it" "$MOOD" gen --from-png "$tmp/t1.png" --model "$MODEL" -o "$tmp/t2.png"
check "the same image (one-LoRA style)" cmp -s "$tmp/t1.png" "$tmp/t2.png"
expect_rc 0 "--style two:0.8" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 --style two:0.8 \
    -o "$tmp/w1.png"
check "written as two LoRAs (A1111's TE:UNET), one hash each" py '
import re, sys; d=open(sys.argv[1],"rb").read()
assert b"oil painting <lora:ink:0.48> <lora:grain:0.4:0.24>\n" in d, d[:500]
assert re.search(rb"Lora hashes: \"ink: [0-9a-f]{12}, grain: [0-9a-f]{12}\"", d), d[:500]' "$tmp/w1.png"
expect_rc 0 "--from-png of it" "$MOOD" gen --from-png "$tmp/w1.png" --model "$MODEL" -o "$tmp/w2.png"
check "the same image (two-LoRA style)" cmp -s "$tmp/w1.png" "$tmp/w2.png"
# the image's hash wins over its name: style ink holds another LoRA than the image's "ink"
mkdir "$tmp/other" && cp "$tmp/grain.safetensors" "$tmp/other/ink.safetensors"
expect_rc 0 "an image of another LoRA named ink" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 \
    --lora "$tmp/other/ink.safetensors:0.5" -o "$tmp/h1.png"
expect_rc 0 "--from-png of it" "$MOOD" gen --from-png "$tmp/h1.png" --model "$MODEL" -o "$tmp/h2.png"
check "the LoRA of the image's hash is used: the same image" cmp -s "$tmp/h1.png" "$tmp/h2.png"
check "says where it found it" grep -q "LoRA ink of the image found in the registry by its hash .*: style grain" "$tmp/err"
check "and no 'will differ'" bash -c "! grep -q 'will differ' '$tmp/err'"
# a name that would break the tag or the hash list is written as a safe alias
cp "$tmp/grain.safetensors" "$tmp/my:lo,ra.safetensors"
expect_rc 0 "a LoRA file named my:lo,ra" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 \
    --lora "$tmp/my:lo,ra.safetensors:0.5" -o "$tmp/n1.png"
check "written as my_lo_ra in the tag and the hashes" py '
import sys; d=open(sys.argv[1],"rb").read()
assert b"<lora:my_lo_ra:0.5>" in d and b"Lora hashes: \"my_lo_ra: " in d, d[:500]' "$tmp/n1.png"
expect_rc 0 "--from-png of it" "$MOOD" gen --from-png "$tmp/n1.png" --model "$MODEL" -o "$tmp/n2.png"
check "the same image (safe alias)" cmp -s "$tmp/n1.png" "$tmp/n2.png"
# one LoRA given twice is applied once at the summed weights and written as one tag (A1111 would
# apply two tags of one name twice at the last one's weight), the same image as the one tag gives
expect_rc 0 "one LoRA twice" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 \
    --lora "$tmp/ink.safetensors:0.5" --lora "$tmp/ink.safetensors:0.3:0.2" -o "$tmp/d1.png"
check "written as one tag of the sums" py '
import sys; d=open(sys.argv[1],"rb").read()
assert b"oil painting <lora:ink:0.7:0.8>\n" in d, d[:500]  # A1111: TE first' "$tmp/d1.png"
expect_rc 0 "the one tag" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 \
    --lora "$tmp/ink.safetensors:0.8:0.7" -o "$tmp/d2.png"
check "the same image" cmp -s "$tmp/d1.png" "$tmp/d2.png"
# --prediction is recorded ("Prediction: v"), so --from-png overrides the model's type again
expect_rc 0 "gen --prediction v" "$MOOD" gen "$PROMPT" "${common[@]}" --seed 42 --prediction v \
    -o "$tmp/v1.png"
check "recorded" grep -qa "Prediction: v," "$tmp/v1.png"
expect_rc 0 "--from-png of it" "$MOOD" gen --from-png "$tmp/v1.png" --model "$MODEL" -o "$tmp/v2.png"
check "the same image (v-prediction)" cmp -s "$tmp/v1.png" "$tmp/v2.png"

# ----- --from-png names every setting of the image that changes it and that mood does not do
cat >"$tmp/setparams.py" <<'PYEOF'
import struct, sys, zlib
src, dst, text = sys.argv[1], sys.argv[2], sys.argv[3]
if text.startswith("@"):  # @FILE: the text of a file (one too long for the command line)
    text = open(text[1:]).read()
d = open(src, "rb").read(); out = d[:8]; i = 8
while i < len(d):
    n, = struct.unpack(">I", d[i:i + 4]); t = d[i + 4:i + 8]; body = d[i + 8:i + 8 + n]
    if t in (b"tEXt", b"iTXt") and body.startswith(b"parameters\0"):
        t, body = b"tEXt", b"parameters\0" + text.encode("latin-1")
        out += struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))
    else:
        out += d[i:i + 12 + n]
    i += 12 + n
open(dst, "wb").write(out)
PYEOF
details="Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny-sd"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/odd.png" "a [cat:dog:0.5] in [red|blue] AND a dog <hypernet:foo:1>
Negative prompt: [ugly::3], (plain:1.2) [plain]
Steps: abc, $details, VAE hash: 0123abcd, VAE: vae-ft-mse, Variation seed: 7, Variation seed strength: 0.3, ENSD: 31337, Eta: 0.67, Noise multiplier: 0.9, Hypernet: foo, Hires upscale: 2, Hires upscaler: Latent, Denoising strength: 0.5, Emphasis: Original, Foo bar: baz, TI hashes: \"emb1: abcdef123456\", Version: v1.10.1"
expect_rc 0 "--from-png of an image with settings mood lacks" "$MOOD" gen --from-png "$tmp/odd.png" \
    --model "$MODEL" -o "$tmp/odd2.png"
for want in '"Steps: abc" of the image is not a value' '"Variation seed strength: 0.3" and "Variation seed: 7"' \
    '"ENSD: 31337"' '"Eta: 0.67"' '"VAE: vae-ft-mse" and "VAE hash: 0123abcd"' '"Noise multiplier: 0.9"' \
    '"Hypernet: foo"' 'hires fix.*Hires upscale: 2, Hires upscaler: Latent, Denoising strength: 0.5' \
    'textual inversion (embedding) emb1 (hash abcdef123456)' 'prompt editing "\[cat:dog:0.5\]"' \
    'alternation "\[red|blue\]"' 'negative prompt has prompt editing "\[ugly::3\]"' \
    'prompt tag <hypernet:foo:1> is a hypernetwork' "image's prompt has AND (A1111's composable diffusion)"; do
    check "warns: $want" grep -q "$want" "$tmp/err"
done
check "keys mood does not know named together" grep -q "settings hold Foo bar: baz, which mood does not know" "$tmp/err"
check "one warning each, none for Version or Emphasis: Original" \
    test "$(grep -c 'warning' "$tmp/err")" -eq 15
# other tools' texts and what the command line changes
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/swarm.png" '{"sui_image_params": {"prompt": "a cat", "seed": 1}}'
expect_rc 1 "--from-png of SwarmUI's JSON" "$MOOD" gen --from-png "$tmp/swarm.png" --model "$MODEL" -o "$tmp/x.png"
check "says it is JSON, not A1111's" grep -q "parameters\" text is JSON" "$tmp/err"
expect_rc 0 "--from-png of A1111's JPEG (EXIF UserComment)" "$MOOD" gen --from-png \
    "$FIX/image/a1111.jpg" --model "$MODEL" --size 64x64 -o "$tmp/x.png" --json
check "its prompt and seed read" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["images"][0]["seed"]==2 and d["prompt"].startswith("\u591c\u306e\u706f\u53f0"), d' "$tmp/out"
head -c 1100000 /dev/zero | tr '\0' 'a' >"$tmp/huge.txt"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/huge.png" "@$tmp/huge.txt"
expect_rc 1 "--from-png of a megabyte of parameters" "$MOOD" gen --from-png "$tmp/huge.png" --model "$MODEL"
check "refused, with the size" grep -q "its parameters text is 1100000 bytes, more than A1111 writes" "$tmp/err"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/odd-size.png" "a cat
Steps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 63x64"
expect_rc 1 "--from-png of a size mood cannot make" "$MOOD" gen --from-png "$tmp/odd-size.png" --model "$MODEL"
check "says the settings came from the image" grep -q "settings not given as options come from .*odd-size.png's parameters" "$tmp/err"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/empty.png" '  '
expect_rc 1 "--from-png of an empty parameters text" "$MOOD" gen --from-png "$tmp/empty.png" --model "$MODEL"
check "says it is empty" grep -q 'its "parameters" text is empty' "$tmp/err"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/nv.png" "a cat
Steps: 2, $details, RNG: NV"
expect_rc 0 "RNG: NV (A1111's GPU noise drawn on the CPU)" "$MOOD" gen --from-png "$tmp/nv.png" \
    --model "$MODEL" -o "$tmp/x.png" --json
check "read as torch-cuda (A1111's default: no RNG key), without a warning" \
    sh -c '! grep -q "RNG" "$1" && grep -q "Steps: 2" "$2" && ! grep -q "RNG: " "$2"' _ "$tmp/err" "$tmp/out"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/fooocus.png" "a lighthouse
Steps: 8, $details, Lora hashes: \"tinystyle: 0123456789ab\", Lora weights: \"tinystyle: 0.5\""
expect_rc 0 "--from-png with a LoRA beside the prompt, not tagged (Fooocus)" "$MOOD" gen \
    --from-png "$tmp/fooocus.png" --model "$MODEL" -o "$tmp/x.png" --json
check "says it is not applied, and why" grep -q "LoRA tinystyle (hash 0123456789ab) is in the image's Lora hashes but its prompt has no <lora:tinystyle> tag" "$tmp/err"
expect_rc 0 "--from-png with options over it" "$MOOD" gen --steps 3 --from-png "$tmp/a.png" \
    --model "$MODEL" --seed 7 --size 32x32 -o "$tmp/x.png"
check "names what they replace" grep -q "the options given replace the image's Steps: 8, Seed: 42, Size: 64x64" "$tmp/err"
expect_rc 0 "--from-png with a prompt and a LoRA over it" "$MOOD" gen --from-png "$tmp/a.png" \
    "another prompt" --lora "$P/lora.safetensors:0.3" --model "$MODEL" --steps 2 -o "$tmp/x.png"
check "says the prompt is replaced" grep -q "the options given replace the image's prompt, Steps: " "$tmp/err"
check "says the LoRA is added" grep -q -- "--style and --lora add to the image's LoRAs: the image will differ" "$tmp/err"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/m1.png" "a cat
Steps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Model: $MODEL"
expect_rc 2 "an image's Model: is a name, never a path" env -u MOOD_MODEL "$MOOD" gen --from-png "$tmp/m1.png" -o "$tmp/x.png"
check "says mood does not have it and to give --model" grep -q "which mood does not have (not in \$MOOD_HOME/models): give --model" "$tmp/err"
expect_rc 0 "\$MOOD_MODEL when mood does not have the image's model" env MOOD_MODEL="$MODEL" "$MOOD" gen \
    --from-png "$tmp/m1.png" -o "$tmp/x.png"
check "said" grep -q "is not in \$MOOD_HOME/models; using \$MOOD_MODEL" "$tmp/err"
expect_rc 0 "a prompt line starting as A1111's negative prompt does" "$MOOD" gen "a cat
Negative prompt: a trick" "${common[@]}" -o "$tmp/x.png"
check "warned" grep -q 'the prompt has a line starting with "Negative prompt:"' "$tmp/err"
expect_rc 0 "a prompt line starting as A1111's settings line does" "$MOOD" gen "a cat
Steps: 99, Sampler: Euler, CFG scale: 1" "${common[@]}" -o "$tmp/x2.png"
check "warned: Civitai would read it as the settings" grep -q 'the prompt has a line starting with "Steps: ": Civitai' "$tmp/err"

# the same syntax typed: said too (A1111 would run the image's PNG text differently)
expect_rc 0 "a typed prompt with A1111-only syntax" "$MOOD" gen \
    "a [cat:dog:0.5] in [red|blue] AND a dog <hypernet:foo:1>" "${common[@]}" -o "$tmp/typed.png"
for want in 'the prompt has prompt editing "\[cat:dog:0.5\]"' 'the prompt has alternation "\[red|blue\]"' \
    'the prompt has AND' 'the prompt tag <hypernet:foo:1> is a hypernetwork'; do
    check "typed, warns: $want" grep -q "$want" "$tmp/err"
done
check "typed: the PNG's prompt has no hypernet tag" bash -c "! grep -qa 'hypernet:foo' '$tmp/typed.png'"
# editing inside other brackets, and lark's exponent numbers, are A1111's editing too
expect_rc 0 "nested editing" "$MOOD" gen "a [[cat:dog:0.5]] b [x [c:d:1e1] y]" "${common[@]}" \
    -o "$tmp/nested.png"
check "both said" test "$(grep -c "prompt editing" "$tmp/err")" -eq 2
expect_rc 0 "AND in a negative prompt is text in A1111 too" "$MOOD" gen "a cat" --negative "cats AND dogs" \
    "${common[@]}" -o "$tmp/negand.png"
check "no AND warning for the negative" bash -c "! grep -q 'has AND' '$tmp/err'"
expect_rc 0 "ANDROID is no AND" "$MOOD" gen "an ANDROID, SAND" "${common[@]}" -o "$tmp/android.png"
check "no AND warning for ANDROID" bash -c "! grep -q 'has AND' '$tmp/err'"
expect_rc 0 "ÉAND is no AND either" "$MOOD" gen "un ÉAND" "${common[@]}" -o "$tmp/eand.png"
check "no AND warning for ÉAND" bash -c "! grep -q 'has AND' '$tmp/err'"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/off.png" "a cat
Steps: 8, $details, Variation seed: 7, Variation seed strength: 0, ENSD: 0, Eta: 1, Noise multiplier: 1, Version: v1.10.1"
expect_rc 0 "--from-png with those settings off" "$MOOD" gen --from-png "$tmp/off.png" \
    --model "$MODEL" -o "$tmp/off2.png"
check "no warning when they are off" bash -c "! grep -q warning '$tmp/err'"
# Dynamic Prompts' Template lines after the settings: read as Civitai reads them, said
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/tpl.png" "a cat
Steps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: 4242, Size: 64x64, Model: tiny-sd
Template: a {cat|dog}
Negative Template: ugly"
expect_rc 0 "--from-png with Template lines after the settings" "$MOOD" gen --from-png "$tmp/tpl.png" \
    --model "$MODEL" -o "$tmp/tpl2.png" --json
check "its seed and steps, not defaults" py 'import json,sys; i=json.load(open(sys.argv[1]))["images"][0]; assert i["seed"]==4242 and "Steps: 3," in i["parameters"], i' "$tmp/out"
check "says it read it as Civitai does" grep -q "not in A1111's layout.*read as Civitai reads them" "$tmp/err"
# a LoRA recorded by its AutoV2 (the first 10 hex of its SHA-256), as the Civitai extension's
# "Hashes" and Fooocus write it: the same file, so no "will differ"
v2=$(sha256sum "$tmp/ink.safetensors" | cut -c1-10)
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/v2.png" "oil painting <lora:ink:0.42>
Steps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny-sd, Hashes: {\"lora:ink\": \"$v2\"}"
expect_rc 0 "--from-png of a LoRA recorded by its AutoV2" "$MOOD" gen --from-png "$tmp/v2.png" \
    --model "$MODEL" -o "$tmp/v2b.png"
check "no 'will differ' for the same LoRA" bash -c "! grep -q 'will differ' '$tmp/err'"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/ddimk.png" "a cat
Steps: 4, Sampler: DDIM, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny-sd"
expect_rc 0 "--from-png of DDIM with Schedule type Karras (A1111 writes it)" "$MOOD" gen \
    --from-png "$tmp/ddimk.png" --model "$MODEL" -o "$tmp/ddimk2.png"
check "says Karras does not apply to DDIM" grep -q "schedule type Karras does not apply to DDIM" "$tmp/err"

# ----- bad input
expect_rc 1 "bad size" "$MOOD" gen "$PROMPT" "${common[@]}" --size 60x64
expect_rc 1 "a size past 4096" "$MOOD" gen "$PROMPT" "${common[@]}" --size 8192x64
check "one range in both messages" grep -q "each a multiple of 8 up to 4096" "$tmp/err"
expect_rc 1 "--width, as A1111's API has it" "$MOOD" gen "$PROMPT" "${common[@]}" --width 512
check "points to --size" grep -q "mood takes the size as --size WIDTHxHEIGHT" "$tmp/err"
expect_rc 1 "bad sampler" "$MOOD" gen "$PROMPT" "${common[@]}" --sampler heun2
check "lists samplers" grep -qi "euler" "$tmp/err"
expect_rc 2 "missing model" "$MOOD" gen "$PROMPT" --model "$tmp/nope.safetensors"
expect_rc 1 "no prompt" "$MOOD" gen --model "$MODEL"
printf 'not a png' >"$tmp/bad.png"
expect_rc 1 "corrupt png for --from-png" "$MOOD" gen --from-png "$tmp/bad.png" --model "$MODEL"

# ----- SDXL and Playground v2.5 (tests/fixtures/sdxl, tools/make_fixtures_sdxl.py): the size
# comes from the VAE, an SGM LoRA applies, an EDM model refuses DDIM
X=$FIX/sdxl
expect_rc 0 "gen sdxl" "$MOOD" gen "$PROMPT" --model "$X/tiny-sdxl" --steps 4 --cfg 5 --seed 42 \
    --lora "$X/lora_sgm.safetensors:0.7" -o "$tmp/x.png"
check "sdxl parameters" py '
import sys, struct
d = open(sys.argv[1], "rb").read(); i = 8; s = ""
while i < len(d):
    n, = struct.unpack(">I", d[i:i+4]); t = d[i+4:i+8]; body = d[i+8:i+8+n]
    if t in (b"tEXt", b"iTXt") and body.startswith(b"parameters\0"): s = body.decode("latin-1")
    i += 12 + n
for want in ("Steps: 4", "Sampler: Euler a,", "Size: 64x64", "Model: tiny-sdxl", "<lora:lora_sgm:0.7>"):
    assert want in s, (want, s)' "$tmp/x.png"
expect_rc 0 "gen playground v2.5" "$MOOD" gen "$PROMPT" --model "$X/pg25" --steps 4 --cfg 3 \
    --sampler dpmpp_2m --seed 1 -o "$tmp/pg.png"
expect_rc 1 "DDIM on an EDM model" "$MOOD" gen "$PROMPT" --model "$X/pg25" --steps 4 --sampler ddim
check "says EDM" grep -q "EDM" "$tmp/err"
# a style whose stored file was damaged after its import: the message says it is the registry's
# copy, where it is, and what checks it (it read like a bad download)
expect_rc 0 "a style to damage" env MOOD_HOME="$tmp/dmghome" "$MOOD" import "$P/lora.safetensors"
blob=$(find "$tmp/dmghome/blobs/sha256" -type f | head -1)
truncate -s 100 "$blob"
expect_rc 1 "gen with a damaged stored file" env MOOD_HOME="$tmp/dmghome" "$MOOD" gen "$PROMPT" \
    "${common[@]}" --style lora -o "$tmp/dmg.png"
check "says the registry's copy is damaged" grep -q "the registry's copy of the file, .*blobs/sha256/.*, is damaged or unreadable: 'mood doctor --deep'" "$tmp/err"
SRC=${MOOD_SOURCE:-$FIX/../..}
# a whole stored file for a model of other sizes is no damage: not blamed on the registry's copy
expect_rc 0 "a LoRA for other sizes" env MOOD_HOME="$tmp/sizehome" "$MOOD" import "$SRC/examples/loras/inkwash.safetensors"
expect_rc 1 "gen with it on mood-tiny" env MOOD_HOME="$tmp/sizehome" "$MOOD" gen "a cat" --model \
    "$SRC/data/mood-tiny" --style inkwash --steps 1 -o "$tmp/sizes.png"
check "says other sizes, not damage" sh -c 'grep -q "other sizes" "$1" && ! grep -q "damaged or unreadable" "$1"' _ "$tmp/err"
rm "$blob"
expect_rc 0 "show a style whose stored file is gone" env MOOD_HOME="$tmp/dmghome" "$MOOD" show lora
check "show says the file is missing" grep -q "stored at .*(MISSING: 'mood doctor'" "$tmp/out"

# a prompt that starts with '-' comes after --; a tag in capitals (<LORA:name>) finds the registry
expect_rc 0 "-- then a prompt starting with -" "$MOOD" gen "${common[@]}" -o "$tmp/dash.png" -- "-blurry cat"
check "the prompt as given" grep -qa "parameters.-blurry cat" "$tmp/dash.png"
expect_rc 0 "<LORA:NAME> in capitals" env MOOD_HOME="$tmp/caphome" sh -c '"$0" import "$1" >/dev/null && "$0" gen "a cat <LORA:lora:0.5>" --model "$2" --size 64x64 --steps 2 -o "$3"' \
    "$MOOD" "$P/lora.safetensors" "$MODEL" "$tmp/cap.png"

# the shipped model answers to its name before `mood demo` has registered anything
expect_rc 0 "--model mood-tiny with an empty registry" env MOOD_HOME="$tmp/nohome" "$MOOD" gen \
    "a red apple" --model mood-tiny --steps 2 --seed 1 -o "$tmp/tiny.png"
check "--model mood-tiny: an image" test -s "$tmp/tiny.png"

# an image's repeated tag is applied as A1111 applied it (one network per name: twice the last
# weight, said); two names of one LoRA (found by hash) and a --lora of it add up
h=$("$MOOD" hash --json "$tmp/ink.safetensors" | py 'import json,sys; print(json.load(sys.stdin)["autov3"][:12])')
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/rep.png" "a cat <lora:ink:0.5> <lora:ink:0.3>
Steps: 2, $details, Lora hashes: \"ink: $h\""
expect_rc 0 "--from-png of a tag given twice" "$MOOD" gen --from-png "$tmp/rep.png" --model "$MODEL" \
    -o "$tmp/rep2.png"
check "applied twice at the last weight, said" grep -q "<lora:ink> is tagged 2 times.*0.6 in all" "$tmp/err"
check "written as one tag" grep -qa "a cat <lora:ink:0.6>" "$tmp/rep2.png"
python3 "$tmp/setparams.py" "$tmp/a.png" "$tmp/two.png" "a cat <lora:foo:0.3> <lora:bar:0.8>
Steps: 2, $details, Lora hashes: \"foo: $h, bar: $h\""
expect_rc 0 "--from-png of one LoRA under two names" "$MOOD" gen --from-png "$tmp/two.png" \
    --model "$MODEL" --lora "$tmp/ink.safetensors:0.1" -o "$tmp/two2.png"
check "added up, no repeat said" bash -c '! grep -q "tagged" "$1" && grep -qa "a cat <lora:foo:1.2>" "$2"' _ "$tmp/err" "$tmp/two2.png"

# A1111's reading of a prompt's end ":N" (the prompt's weight: CFG x N) and of '#' comments
expect_rc 0 "a prompt ending in :1.5" "$MOOD" gen "a cat:1.5" "${common[@]}" --seed 3 --cfg 4 -o "$tmp/wt1.png"
check "says CFG 4 x 1.5" grep -q 'ends in ":1.5", which A1111 reads as the prompt.s weight: CFG 4 x 1.5 = 6' "$tmp/err"
expect_rc 0 "the same at CFG 6" "$MOOD" gen "a cat" "${common[@]}" --seed 3 --cfg 6 -o "$tmp/wt2.png"
check "the same image" python3 "$tmp/pixels.py" "$tmp/wt1.png" "$tmp/wt2.png" 0
check "the PNG keeps the prompt and CFG as given" py '
import sys; d = open(sys.argv[1], "rb").read(); assert b"a cat:1.5\nSteps: 8, Sampler: Euler a, CFG scale: 4," in d, d[:300]' "$tmp/wt1.png"
expect_rc 0 "a prompt with a comment" "$MOOD" gen "$(printf 'a cat # not this\nsitting')" "${common[@]}" \
    --seed 3 -o "$tmp/cm.png"
check "says comments are left out" grep -q "the prompt has '#' comments" "$tmp/err"
check "the PNG has the text A1111 encodes" py '
import sys; d = open(sys.argv[1], "rb").read(); assert b"a cat \nsitting\nSteps" in d and b"not this" not in d, d[:300]' "$tmp/cm.png"
finish
