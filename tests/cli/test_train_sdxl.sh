#!/usr/bin/env bash
# test_train_sdxl.sh: `mood train` on an SDXL base (the tiny diffusers folder of
# tests/fixtures/sdxl): a few steps on a small board write a kohya SDXL LoRA (sdxl_base_v1-0,
# stable-diffusion-xl-v1-base/lora, every key used, lora_unet_ SGM names) that changes the
# images the base generates; --targets style-blocks trains up_blocks.0.attentions.1 alone
# (output_blocks.1.1 in SGM names); --te trains both text encoders' LoRA too (a file mood and
# diffusers' load_lora_weights use whole); --full is refused. (The steps themselves against
# torch, and kohya's size ids: tests/unit/test_train_sdxl.c; a --te step's gradients:
# tests/unit/test_train_sdxl_te.c.)
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
MODEL=$FIX/sdxl/tiny-sdxl
cd "$tmp"
mkdir board
cp "$FIX/train/board/"* board/
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

# --te: both text encoders' LoRA too (lora_te1_ up to the penultimate layer, lora_te2_ all
# layers), every key used by mood and by diffusers' load_lora_weights.
expect_rc 0 "--te on SDXL" "$MOOD" train --te --name xte --board board --model "$MODEL" --res 64 \
    --steps 2 --rank 2 --te-lr 5e-3 -o xte.safetensors
check "--te: kohya SDXL text encoder modules and metadata" py "$meta"'
m,h=meta(sys.argv[1]); mods={k.split(".")[0] for k in h}
te1={k for k in mods if k.startswith("lora_te1_text_model_encoder_layers_")}
te2={k for k in mods if k.startswith("lora_te2_text_model_encoder_layers_")}
assert len(te1)==12 and len(te2)==18, (len(te1), len(te2))  # 2 of 3 layers, 3 of 3: 6 each
assert not any("layers_2_" in k for k in te1), sorted(te1)
assert len(mods)==len(te1)+len(te2)+170, len(mods)
assert m["ss_network_train_unet_only"]=="False" and m["ss_text_encoder_lr"]=="0.005", m' \
    xte.safetensors
expect_rc 0 "inspect the --te LoRA" "$MOOD" inspect xte.safetensors --json
check "--te: every key used" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["unmatched"]["count"]==0 and d["parts"]=={"unet": 170, "te1": 12, "te2": 18}, d' \
    "$tmp/out"
VENV_PY=${MOOD_SOURCE:-$(dirname "$0")/../..}/tools/.venv/bin/python
if "$VENV_PY" -c "import diffusers, peft" 2>/dev/null; then
    check "--te: diffusers' load_lora_weights takes every module" env TQDM_DISABLE=1 \
        HF_HUB_OFFLINE=1 "$VENV_PY" -c '
import io, logging, sys, warnings
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import logging as dlog
log = io.StringIO()
dlog.get_logger("diffusers").addHandler(logging.StreamHandler(log))
pipe = StableDiffusionXLPipeline.from_pretrained(sys.argv[1], tokenizer=None, tokenizer_2=None,
                                                 torch_dtype=torch.float32)
log.truncate(0)
with warnings.catch_warnings():
    warnings.simplefilter("error")
    pipe.load_lora_weights(sys.argv[2])
n = lambda mod: sum(1 for _, m in mod.named_modules() if len(getattr(m, "lora_A", {})) > 0)
got = (n(pipe.unet), n(pipe.text_encoder), n(pipe.text_encoder_2))
assert got == (170, 12, 18) and not log.getvalue(), (got, log.getvalue())' "$MODEL" \
        xte.safetensors
else
    echo "note: no tools/.venv with diffusers and peft: diffusers' load_lora_weights skipped"
fi
expect_rc 1 "--full on SDXL" "$MOOD" train --full --name x --board board --model "$MODEL" \
    --res 64 --steps 1 -o fullxl
finish
