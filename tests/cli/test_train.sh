#!/usr/bin/env bash
# test_train.sh: `mood train` end to end on the tiny diffusers pipeline of tests/fixtures/pipeline:
# a few steps on a small board write a kohya LoRA (ss_* metadata, every key used), a loss curve,
# register the style with its trigger word, and the style generates; a board with images that do
# not decode fails before training and names each; bad options exit 1; --device cuda exits 2 in a
# CPU build. (Correctness of the steps themselves: tests/unit/test_train.c and
# tests/unit/test_unet_backward.c, against torch.)
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
MODEL=$FIX/pipeline/tiny-sd
cd "$tmp"
mkdir board
cp "$FIX/train/board/"* board/
cp "$FIX/train/bad/good1.png" board/
py() { python3 -c "$@"; }

expect_rc 0 "train" "$MOOD" train --name tinyink --board board --model "$MODEL" --res 64 \
    --steps 12 --rank 4 --alpha 2 --trigger tinyink --json
check "json lists the files" py '
import json,sys,os; d=json.load(open(sys.argv[1]))
assert d["style"]=="tinyink" and all(os.path.exists(d[k]) for k in ("lora","loss_csv","loss_png")), d' "$tmp/out"
check "loss curve has 12 steps" test "$(wc -l <tinyink.loss.csv)" -eq 13
check "kohya metadata in the file" py '
import json,struct,sys; f=open(sys.argv[1],"rb"); n,=struct.unpack("<Q",f.read(8))
m=json.loads(f.read(n))["__metadata__"]
assert m["ss_network_dim"]=="4" and m["ss_network_alpha"] in ("2","2.0") and m["ss_max_train_steps"]=="12", m
assert m["ss_network_module"]=="networks.lora" and m["modelspec.architecture"]=="stable-diffusion-v1/lora", m' tinyink.safetensors
expect_rc 0 "inspect the LoRA" "$MOOD" inspect tinyink.safetensors --json
check "every key used" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["unmatched"]["count"]==0, d["unmatched"]' "$tmp/out"
expect_rc 0 "style registered" "$MOOD" show tinyink --json
check "trigger word stored" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["trigger_words"]=="tinyink", d' "$tmp/out"
expect_rc 0 "generate with it" "$MOOD" gen "a cat" --model "$MODEL" --style tinyink --size 64x64 \
    --steps 4 --seed 1 -o cat.png --json
check "trigger in the prompt" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["prompt"]=="a cat, tinyink", d' "$tmp/out"

mkdir badboard
cp "$FIX/train/bad/"* badboard/
expect_rc 1 "undecodable images" "$MOOD" train --name bad --board badboard --model "$MODEL" --res 64 --steps 2
check "names the broken image" grep -q "broken.png" "$tmp/err"
check "names the other one" grep -q "text.jpg" "$tmp/err"
check "nothing written" test ! -e bad.safetensors
expect_rc 1 "bad rank" "$MOOD" train --name x --board board --model "$MODEL" --rank 0
expect_rc 1 "missing --model" "$MOOD" train --name x --board board
expect_rc 2 "cuda in a CPU build" "$MOOD" train --name x --board board --model "$MODEL" --device cuda
finish
