#!/usr/bin/env bash
# test_train_sdxl.sh: `mood train` on an SDXL base (the tiny diffusers folder of
# tests/fixtures/sdxl): a few steps on a small board write a kohya SDXL LoRA (sdxl_base_v1-0,
# stable-diffusion-xl-v1-base/lora, every key used, lora_unet_ SGM names) that changes the
# images the base generates; --targets style-blocks trains up_blocks.0.attentions.1 alone
# (output_blocks.1.1 in SGM names); --te and --full are refused. (The steps
# themselves against torch, and kohya's size ids: tests/unit/test_train_sdxl.c.)
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
MODEL=$FIX/sdxl/tiny-sdxl
cd "$tmp"
mkdir board
cp "$FIX/train/board/"* board/
py() { python3 -c "$@"; }
meta='
import json,struct,sys
def meta(path):
    f=open(path,"rb"); n,=struct.unpack("<Q",f.read(8)); h=json.loads(f.read(n))
    return h.pop("__metadata__"), h'

expect_rc 0 "train on SDXL" "$MOOD" train --name xl --board board --model "$MODEL" --res 64 \
    --steps 4 --rank 4 --alpha 2 --lr 1e-2 --trigger xlink --json
check "kohya SDXL metadata" py "$meta"'
m,h=meta(sys.argv[1])
assert m["ss_base_model_version"]=="sdxl_base_v1-0", m
assert m["modelspec.architecture"]=="stable-diffusion-xl-v1-base/lora", m
assert m["ss_v2"]=="False" and m["ss_network_train_unet_only"]=="True", m
assert m["ss_resolution"]=="(64, 64)" and m["modelspec.resolution"]=="64x64", m
assert m["ss_clip_skip"]=="None" and m["ss_text_encoder_lr"]=="None", m
assert h and all(k.startswith("lora_unet_") for k in h), sorted(h)[:4]
assert any(k.startswith("lora_unet_output_blocks_1_1_transformer_blocks_0_attn2_to_k.") for k in h)' \
    xl.safetensors
expect_rc 0 "inspect the LoRA" "$MOOD" inspect xl.safetensors --json
check "every key used, family sdxl" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["unmatched"]["count"]==0 and d["family"]=="sdxl" and d["parts"]["unet"]>0, d' "$tmp/out"

# The LoRA changes the images (the pixels, not just the parameters text).
expect_rc 0 "generate without" "$MOOD" gen "xlink, a cat" --model "$MODEL" --size 64x64 --steps 2 \
    --seed 3 -o plain.png
expect_rc 0 "generate with the style" "$MOOD" gen "xlink, a cat" --model "$MODEL" --size 64x64 \
    --steps 2 --seed 3 --style xl -o styled.png
check "the LoRA changes the pixels" py '
import struct,sys,zlib
def pixels(path):
    b=open(path,"rb").read(); i=8; data=b""
    while i < len(b):
        n,=struct.unpack(">I",b[i:i+4]); t=b[i+4:i+8]
        if t==b"IDAT": data+=b[i+8:i+8+n]
        i+=12+n
    return zlib.decompress(data)
a,b=pixels(sys.argv[1]),pixels(sys.argv[2])
assert len(a)==len(b) and a!=b' plain.png styled.png

expect_rc 0 "style blocks" "$MOOD" train --name xs --board board --model "$MODEL" --res 64 \
    --steps 2 --rank 2 --targets style-blocks -o xs.safetensors
check "style blocks: up_blocks.0.attentions.1's attention only" py "$meta"'
m,h=meta(sys.argv[1]); mods={k.split(".")[0] for k in h}
assert mods and all(k.startswith("lora_unet_output_blocks_1_1_transformer_blocks_") for k in mods), mods
assert len(mods)==16, sorted(mods)' xs.safetensors

expect_rc 1 "--te on SDXL" "$MOOD" train --te --name x --board board --model "$MODEL" --res 64 \
    --steps 1
check "--te refusal says why" grep -q "text encoders of an SDXL model (--te) is not supported" \
    "$tmp/err"
expect_rc 1 "--full on SDXL" "$MOOD" train --full --name x --board board --model "$MODEL" \
    --res 64 --steps 1 -o fullxl
finish
