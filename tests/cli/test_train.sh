#!/usr/bin/env bash
# test_train.sh: `mood train` end to end on the tiny diffusers pipeline of tests/fixtures/pipeline:
# a few steps on a small board write a kohya LoRA (ss_* metadata, every key used), a loss curve and
# sample previews every 6 steps (PNGs with A1111 parameters), register the style with its trigger
# word, board thumbnails, final previews, loss curve and training record (shown by mood show,
# carried by a style pack), and the style generates; a board whose sidecar captions never name
# the trigger gives a style without one (the prompt is left as written); a board with images that do not decode
# fails before training and names each; bad options exit 1; --device cuda exits 2 in a CPU
# build; --full writes a diffusers folder that generates, prints where and registers nothing, and
# refuses a single-file base and an output folder that is not a model; no run writes over the
# model it trains on (a file of its folder, its single file); --resume of a finished run updates
# its style (the earlier result kept as NAME-stepN); a taken NAME registers under the free name
# announced; a new run refuses to overwrite a stopped run's checkpoint. (Correctness of the steps
# themselves: tests/unit/test_train.c and tests/unit/test_unet_backward.c, against torch; full
# training: tests/unit/test_train_full.c.)
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
MODEL=$FIX/pipeline/tiny-sd
cd "$tmp"
mkdir board
cp "$FIX/train/board/"* board/
cp "$FIX/train/bad/good1.png" board/

expect_rc 0 "train" "$MOOD" train --name tinyink --board board --model "$MODEL" --res 64 \
    --steps 12 --rank 4 --alpha 2 --trigger tinyink --sample-every 6 --sample-steps 2 --json
check "json lists the files" py '
import json,sys,os; d=json.load(open(sys.argv[1]))
assert d["style"]=="tinyink" and all(os.path.exists(d[k]) for k in ("lora","loss_csv","loss_plot","checkpoint")), d
assert d["trigger"]=="tinyink", d
assert d["samples"]==["tinyink.samples/step-%06d-%d.png" % (s, i) for s in (6, 12) for i in (0, 1)], d
assert all(os.path.exists(p) for p in d["samples"]) and d["n_previews"]==2, d' "$tmp/out"
check "previews carry A1111 parameters" py '
import sys
def text(path):  # the tEXt chunk "parameters"
    import struct, zlib; b=open(path,"rb").read(); i=8
    while i < len(b):
        n,=struct.unpack(">I",b[i:i+4]); t=b[i+4:i+8]; d=b[i+8:i+8+n]; i+=12+n
        if t==b"tEXt" and d.startswith(b"parameters\0"): return d[11:].decode("latin-1")
a=text("tinyink.samples/step-000006-1.png"); b=text("tinyink.samples/step-000012-1.png")
assert a.startswith("tinyink, a landscape <lora:tinyink:1>\nSteps: 2, Sampler: Euler a"), a
assert "Seed: 1," in a and "Size: 64x64" in a and "Training step: 6" in a and "Lora hashes" not in a, a
assert "Training step: 12" in b and "Lora hashes: \"tinyink: " in b, b'
check "previews of one prompt share a seed" grep -q "Seed: 0," tinyink.samples/step-000012-0.png
check "loss curve has 12 steps" test "$(wc -l <tinyink.loss.csv)" -eq 13
check "kohya metadata in the file" py '
import json,struct,sys; f=open(sys.argv[1],"rb"); n,=struct.unpack("<Q",f.read(8))
m=json.loads(f.read(n))["__metadata__"]
assert m["ss_network_dim"]=="4" and m["ss_network_alpha"] in ("2","2.0") and m["ss_max_train_steps"]=="12", m
assert m["ss_network_module"]=="networks.lora" and m["modelspec.architecture"]=="stable-diffusion-v1/lora", m
assert m["ss_min_snr_gamma"]=="5.0" and m["modelspec.prediction_type"]=="epsilon", m' tinyink.safetensors
expect_rc 0 "inspect the LoRA" "$MOOD" inspect tinyink.safetensors --json
check "every key used" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["unmatched"]["count"]==0, d["unmatched"]' "$tmp/out"
expect_rc 0 "style registered" "$MOOD" show tinyink --json
check "trigger word stored" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["trigger_words"]=="tinyink", d' "$tmp/out"
check "final previews, thumbnails, loss curve and training record registered" py '
import json,os,sys; d=json.load(open(sys.argv[1]))
assert [os.path.basename(p["origin"]) for p in d["previews"]]==["step-000012-0.png","step-000012-1.png"], d["previews"]
b=d["board"]; assert [x["name"] for x in b]==["a.png","c.webp","d.bmp","e.png","good1.png"], b
for x in b:
    assert x["media_type"]=="image/jpeg" and 0 < max(x["width"],x["height"]) <= 256, x
    assert open(x["path"],"rb").read(2)==b"\xff\xd8", x
assert sorted(f["role"] for f in d["files"])==["loss_csv","loss_plot"], d["files"]
csv=[f for f in d["files"] if f["role"]=="loss_csv"][0]; assert open(csv["path"]).read().count("\n")==13
t=d["training"]; assert t["steps"]==12 and t["rank"]==4 and t["resolution"]==64 and t["trigger"]=="tinyink", t
s=t["samples"]; assert s["every"]==6 and s["prompts"]==["tinyink, a portrait","tinyink, a landscape"], s
assert len(s["images"])==4 and all(os.path.isabs(i["path"]) and os.path.exists(i["path"]) for i in s["images"]), s' "$tmp/out"
expect_rc 0 "show for people" "$MOOD" show tinyink
check "show lists the board" test "$(grep -c '^Board:' "$tmp/out")" -eq 5
check "show gives the training and the loss curve" grep -q "^Trained: *12 steps, rank 4" "$tmp/out"
check "show gives the loss curve" grep -q "^Loss curve:" "$tmp/out"
expect_rc 0 "export a pack" "$MOOD" pack export tinyink -o tinyink.moodpack
expect_rc 0 "import it elsewhere" env MOOD_HOME="$tmp/home2" "$MOOD" pack import tinyink.moodpack
expect_rc 0 "show it there" env MOOD_HOME="$tmp/home2" "$MOOD" show tinyink --json
check "the pack carried the thumbnails" py '
import json,sys; d=json.load(open(sys.argv[1])); b=d["board"]
assert [x["name"] for x in b]==["a.png","c.webp","d.bmp","e.png","good1.png"] and len(d["previews"])==2, d
assert all(x["media_type"]=="image/jpeg" and x["width"] > 0 for x in b), b' "$tmp/out"
expect_rc 0 "generate with it" "$MOOD" gen "a cat" --model "$MODEL" --style tinyink --size 64x64 \
    --steps 4 --seed 1 -o cat.png --json
check "trigger in the prompt" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["prompt"]=="a cat, tinyink", d' "$tmp/out"

# captions that never name the trigger: the style needs none, and gets none (no guessed tags)
mkdir capboard
cp "$FIX/train/board/a.png" "$FIX/train/board/e.png" capboard/
echo "red fox" >capboard/a.txt
echo "blue bird, sketch" >capboard/e.txt
expect_rc 0 "train on captions without the trigger" "$MOOD" train --name capstyle --board capboard \
    --model "$MODEL" --res 64 --steps 2 --rank 4 --alpha 2 --json
check "says the style gets no trigger" grep -q "no caption of the board holds the trigger word 'capstyle'" "$tmp/err"
check "empty trigger phrase in the file" py '
import json,struct,sys; f=open(sys.argv[1],"rb"); n,=struct.unpack("<Q",f.read(8))
m=json.loads(f.read(n))["__metadata__"]; assert m["modelspec.trigger_phrase"]=="", m' capstyle.safetensors
expect_rc 0 "generate with it" "$MOOD" gen "a cat" --model "$MODEL" --style capstyle --size 64x64 \
    --steps 2 --seed 1 -o cap.png --json
check "prompt left as written" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["prompt"]=="a cat", d' "$tmp/out"
echo "Capstyle, a red fox" >capboard/a.txt
expect_rc 0 "a caption naming it, in another case" "$MOOD" train --name capstyle --board capboard \
    --model "$MODEL" --res 64 --steps 2 --rank 4 --alpha 2 -o capstyle2.safetensors --no-register
check "keeps the trigger" py '
import json,struct,sys; f=open(sys.argv[1],"rb"); n,=struct.unpack("<Q",f.read(8))
m=json.loads(f.read(n))["__metadata__"]; assert m["modelspec.trigger_phrase"]=="capstyle", m' capstyle2.safetensors

mkdir badboard
cp "$FIX/train/bad/"* badboard/
expect_rc 1 "undecodable images" "$MOOD" train --name bad --board badboard --model "$MODEL" --res 64 --steps 2
check "names the broken image" grep -q "broken.png" "$tmp/err"
check "names the other one" grep -q "text.jpg" "$tmp/err"
check "nothing written" test ! -e bad.safetensors
mkdir sliverboard
py 'import struct, zlib
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
raw = b"".join(b"\0\xff\0\0" for _ in range(4000))  # 1 x 4000, red
open("sliverboard/sliver.png", "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 4000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))'
expect_rc 1 "a sliver of an image" "$MOOD" train --name sliver --board sliverboard \
    --model "$MODEL" --res 64 --steps 1
check "names it and its size" grep -q "sliverboard/sliver.png is 1 x 4000 pixels" "$tmp/err"
mkdir latin1board
cp "$FIX/train/bad/good1.png" latin1board/caf.png
printf 'caf\xe9 au lait\n' >latin1board/caf.txt
expect_rc 1 "a caption that is not UTF-8" "$MOOD" train --name latin --board latin1board \
    --model "$MODEL" --res 64 --steps 2
check "names the caption file" grep -q "caption file latin1board/caf.txt is not UTF-8" "$tmp/err"
expect_rc 1 "bad rank" "$MOOD" train --name x --board board --model "$MODEL" --rank 0
check "says what it takes" grep -q -- "--rank 0: takes 1 to 1024" "$tmp/err"
check "a usage error comes alone, without the CPU note" sh -c '! grep -q "running on the CPU" "$1"' _ "$tmp/err"
expect_rc 1 "bad --res" "$MOOD" train --name x --board board --model "$MODEL" --res 65
check "says what it takes" grep -q -- "--res 65: takes 64 to 2048, a multiple of 64" "$tmp/err"
expect_rc 1 "bad --sample-every" "$MOOD" train --name x --board board --model "$MODEL" --sample-every -1
expect_rc 1 "bf16 on the CPU" "$MOOD" train --name x --board board --model "$MODEL" --device cpu --precision bf16
expect_rc 1 "bad --precision" "$MOOD" train --name x --board board --model "$MODEL" --precision fp8
expect_rc 1 "--full in bf16" "$MOOD" train --full --name x --board board --model "$MODEL" --precision bf16
check "--full in bf16: says why" grep -q "trains in fp32" "$tmp/err"
expect_rc 1 "--full with a LoRA's --targets" "$MOOD" train --full --name x --board board --model "$MODEL" \
    --targets all
check "--full with --targets: says why" grep -q -- "--targets shapes a LoRA; --full trains every weight" "$tmp/err"
# a registry that cannot take the style stops the run before it trains (not after)
mkdir -p "$tmp/badhome" && echo "not a database" >"$tmp/badhome/registry.db"
expect_rc 2 "a damaged registry" env MOOD_HOME="$tmp/badhome" "$MOOD" train --name x --board board \
    --model "$MODEL" --res 64 --steps 2 -o "$tmp/badreg.safetensors"
check "a damaged registry: says so before training" grep -q "nothing trained: the style could not be registered" "$tmp/err"
check "a damaged registry: nothing written" test ! -e "$tmp/badreg.safetensors" -a ! -e "$tmp/badreg.loss.csv"
expect_rc 0 "a damaged registry, --no-register" env MOOD_HOME="$tmp/badhome" "$MOOD" train --name x \
    --board board --model "$MODEL" --res 64 --steps 2 -o "$tmp/badreg.safetensors" --no-register
check "--no-register still writes A1111's sidecar beside the file" test -s "$tmp/badreg.json"
expect_rc 1 "bad --ip-noise-gamma" "$MOOD" train --name x --board board --model "$MODEL" --ip-noise-gamma 1.5
expect_rc 1 "empty timestep range" "$MOOD" train --name x --board board --model "$MODEL" --res 64 \
    --steps 2 --min-timestep 600 --max-timestep 600
check "empty timestep range: says which" grep -q "timestep range \[600, 600) is empty" "$tmp/err"
expect_rc 1 "timestep range past the schedule" "$MOOD" train --name x --board board --model "$MODEL" \
    --res 64 --steps 2 --max-timestep 1001
check "nothing written for a bad range" test ! -e x.safetensors
expect_rc 1 "missing --model" "$MOOD" train --name x --board board
expect_rc 2 "cuda in a CPU build" "$MOOD" train --name x --board board --model "$MODEL" --device cuda

# min-SNR's default follows the prediction: off for an x0-prediction model (mood-tiny's kind),
# where min(snr, 5) would weigh the x0 error and drop the noisy steps; --min-snr still rules
cp -r "$MODEL" x0model
sed -i 's/"prediction_type": *"[a-z_]*"/"prediction_type": "sample"/' x0model/scheduler/scheduler_config.json
for g in default 3; do
    extra=(); [ "$g" = default ] || extra=(--min-snr "$g" --ip-noise-gamma 0.1 --max-timestep 400)
    expect_rc 0 "train an x0 model, min-SNR $g" "$MOOD" train --name x0$g --board board \
        --model x0model --res 64 --steps 2 --rank 4 --no-register "${extra[@]}"
done
check "x0: min-SNR off by default, as asked otherwise; input perturbation, timesteps recorded" py '
import json,struct
def meta(p):
    f=open(p,"rb"); n,=struct.unpack("<Q",f.read(8)); return json.loads(f.read(n))["__metadata__"]
a=meta("x0default.safetensors"); b=meta("x03.safetensors")
assert a["ss_min_snr_gamma"]=="None" and a["modelspec.prediction_type"]=="sample", a
assert b["ss_min_snr_gamma"]=="3.0", b
assert a["ss_ip_noise_gamma"]=="None" and b["ss_ip_noise_gamma"]=="0.1", (a, b)
assert "modelspec.timestep_range" not in a and b["modelspec.timestep_range"]=="0,400", (a, b)
assert a["ss_gradient_checkpointing"]=="False", a  # auto: a tiny model keeps its activations
assert a["ss_mixed_precision"]=="no", a'

# where the results go is checked before any work; the style is NAME whatever -o calls the file;
# an empty --trigger gives a style without one; --model takes a name registered in
# $MOOD_HOME/models, and the default size is the model's own
expect_rc 2 "output in a missing folder" "$MOOD" train --name nodir --board board --model "$MODEL" \
    --res 64 --steps 2 -o nowhere/nodir.safetensors
check "says which folder" grep -q "the folder nowhere/ does not exist" "$tmp/err"
check "before the model loads" sh -c '! grep -q "loading\|caching" "$1"' _ "$tmp/err"
mkdir isdir.safetensors
expect_rc 1 "output is a folder" "$MOOD" train --name isdir --board board --model "$MODEL" \
    --res 64 --steps 2 -o isdir.safetensors
check "says so" grep -q "isdir.safetensors is a folder" "$tmp/err"
expect_rc 0 "train with -o another file name" "$MOOD" train --name watercolor --board board \
    --model "$MODEL" --res 64 --steps 2 --rank 4 -o my_lora_v1.safetensors --trigger "" --json
check "registered as NAME" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["style"]=="watercolor", d' "$tmp/out"
expect_rc 0 "show it" "$MOOD" show watercolor --json
check "an empty --trigger: no trigger word" py '
import json,sys; d=json.load(open(sys.argv[1])); assert not d["trigger_words"], d["trigger_words"]' "$tmp/out"
mkdir -p "$MOOD_HOME/models"
ln -s "$MODEL" "$MOOD_HOME/models/tinybase-name"
expect_rc 0 "--model by its registered name" "$MOOD" train --name byname --board board \
    --model tinybase-name --steps 1 --rank 4 --no-register
check "trained at the model's own size" py '
import json,struct,sys
f=open("byname.safetensors","rb"); n,=struct.unpack("<Q",f.read(8)); m=json.loads(f.read(n))["__metadata__"]
w=json.load(open(sys.argv[1]+"/vae/config.json"))["sample_size"]
assert m["ss_resolution"]=="(%d, %d)" % (w, w), (m["ss_resolution"], w)' "$MODEL"

# gradient checkpointing changes the memory a step needs, not what it computes
for c in on off; do
    expect_rc 0 "train, gradient checkpointing $c" "$MOOD" train --name ck$c --board board \
        --model "$MODEL" --res 64 --steps 3 --rank 4 --no-register --gradient-checkpointing $c \
        --trigger ck
done
check "checkpointing on and off: the same weights, each recorded" py '
import json,struct
def load(p):
    f=open(p,"rb"); n,=struct.unpack("<Q",f.read(8)); return json.loads(f.read(n))["__metadata__"], f.read()
(a,da),(b,db)=load("ckon.safetensors"),load("ckoff.safetensors")
assert a["ss_gradient_checkpointing"]=="True" and b["ss_gradient_checkpointing"]=="False", (a,b)
assert da==db, "the weights differ"'
expect_rc 1 "bad --gradient-checkpointing" "$MOOD" train --name x --board board --model "$MODEL" \
    --gradient-checkpointing sometimes

# --full: a new base model, written as a diffusers folder (NAME/ by default), not a style
expect_rc 0 "train --full --te" "$MOOD" train --full --te --name tinybase --board board \
    --model "$MODEL" --res 64 --steps 2 --lr 1e-3 --caption-dropout 0.5
check "prints the folder" test "$(cat "$tmp/out")" = tinybase
check "says where" grep -q "trained model written to tinybase" "$tmp/err"
check "a diffusers folder" test -f tinybase/model_index.json -a -f tinybase/vae/config.json -a \
    -f tinybase/unet/diffusion_pytorch_model.safetensors -a -f tinybase/text_encoder/model.safetensors
check "the trained weights in F16" py '
import json,struct,sys
for f in ("tinybase/unet/diffusion_pytorch_model.safetensors", "tinybase/text_encoder/model.safetensors"):
    b=open(f,"rb"); n,=struct.unpack("<Q",b.read(8)); h=json.loads(b.read(n)); h.pop("__metadata__",None)
    assert h and all(t["dtype"]=="F16" for t in h.values()), f'
check "loss curve beside it" test "$(wc -l <tinybase.loss.csv)" -eq 3
check "no temporary folders left" test -z "$(ls -d tinybase.tmp-* tinybase.old-* 2>/dev/null)"
mkdir -p documented && cp -r "$MODEL"/. documented/ && echo "the base's story" >documented/README.md
expect_rc 0 "train --full from a base with a README" "$MOOD" train --full --name fromdoc \
    --board board --model documented --res 64 --steps 1
check "the base's README not copied as the new model's" test ! -e fromdoc/README.md -a -f fromdoc/model_index.json
expect_rc 1 "not registered as a style" "$MOOD" show tinybase
expect_rc 0 "generate with it" "$MOOD" gen "a cat" --model tinybase --size 64x64 --steps 2 --seed 1 \
    -o base.png
check "an image" test -s base.png
cp -r "$MODEL" ownbase
expect_rc 1 "--full into its own base" "$MOOD" train --full --name ownbase --board board \
    --model ownbase --res 64 --steps 1 -o ownbase
check "says so" grep -q "is the base model's folder" "$tmp/err"
check "the base untouched" cmp -s ownbase/unet/diffusion_pytorch_model.safetensors \
    "$MODEL/unet/diffusion_pytorch_model.safetensors"
expect_rc 1 "--full into a folder inside its base" "$MOOD" train --full --name ownbase \
    --board board --model ownbase --res 64 --steps 1 -o ownbase/unet/new
# a LoRA run never writes over the model it trains on: not a file of its folder (its UNet's), not
# the single-file checkpoint; refused before any work, the model left byte for byte
TINY=${MOOD_SOURCE:-$FIX/../..}/data/mood-tiny
cp -r "$TINY" tinycopy
expect_rc 1 "-o the base's own UNet file" "$MOOD" train --name own --board board --model tinycopy \
    --steps 1 --rank 4 --no-register -o tinycopy/unet/diffusion_pytorch_model.safetensors
check "says so" grep -q "inside the base model's folder" "$tmp/err"
check "the base as it was, nothing added" diff -r "$TINY" tinycopy
# a board whose captions never hold the trigger word gives a style with none: "{trigger}" in a
# preview prompt is then nothing (it rendered "sp, a dog" for a style without "sp")
SRCDIR=${MOOD_SOURCE:-$FIX/../..}
expect_rc 0 "previews of a style without a trigger" "$MOOD" train --name sp --board \
    "$SRCDIR/examples/moodboards/twemoji" --model "$TINY" --steps 1 --rank 4 --no-register \
    --sample-prompt "{trigger}, a dog" -o sp.safetensors
check "the preview's prompt has no trigger" py '
import glob, sys
d = open(glob.glob("sp.samples/*.png")[0], "rb").read()
assert b"parameters\x00a dog" in d, d[:300]'
cp "$FIX/bases/sd1_base.safetensors" single.safetensors
expect_rc 1 "-o the single-file base" "$MOOD" train --name single --board board \
    --model ./single.safetensors --res 64 --steps 1 --rank 4 --no-register -o single.safetensors
check "says so" grep -q "is also an input" "$tmp/err"
check "the single file as it was" cmp -s single.safetensors "$FIX/bases/sd1_base.safetensors"
expect_rc 0 "train --full again, --json" "$MOOD" train --full --name tinybase --board board \
    --model "$MODEL" --res 64 --steps 1 --json
check "json names the model, no style" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["model"]=="tinybase" and "style" not in d, d' "$tmp/out"
expect_rc 1 "--full on a single-file base" "$MOOD" train --full --name x --board board \
    --model "$FIX/bases/sd1_base.safetensors" --steps 1
check "says it needs a folder" grep -q "needs a diffusers folder" "$tmp/err"
expect_rc 1 "--full over a folder that is not a model" "$MOOD" train --full --name x --board board \
    --model "$MODEL" --res 64 --steps 1 -o badboard
check "that folder untouched" test -f badboard/broken.png
# a folder with a unet/ among other things (ComfyUI's models/), and a diffusers model mood did not
# write: full training would replace the whole folder, so it refuses both and deletes nothing
mkdir -p comfy/models/checkpoints comfy/models/loras comfy/models/unet
echo keep >comfy/models/checkpoints/sd15.safetensors
expect_rc 1 "--full over ComfyUI's models/ folder" "$MOOD" train --full --name x --board board \
    --model "$MODEL" --res 64 --steps 1 -o comfy/models
check "says it writes only its own earlier output" grep -q "is not a model an earlier 'mood train --full' wrote" "$tmp/err"
check "nothing deleted" test -f comfy/models/checkpoints/sd15.safetensors
cp -r "$MODEL" downloaded
expect_rc 1 "--full over a diffusers model it did not write" "$MOOD" train --full --name x \
    --board board --model "$MODEL" --res 64 --steps 1 -o downloaded
check "that model untouched" diff -r "$MODEL" downloaded
expect_rc 1 "caption dropout 1" "$MOOD" train --name x --board board --model "$MODEL" --caption-dropout 1
# --resume of a finished run with more steps: the style takes the continued run, the earlier
# result stays as NAME-stepN (was: a new style 'cont-2' each time, the old one never updated)
steps_of() { "$MOOD" show "$1" --json | py 'import json,sys; print(json.load(sys.stdin)["training"]["steps"])'; }
expect_rc 0 "train cont" "$MOOD" train --name cont --board board --model "$MODEL" --res 64 \
    --steps 2 --rank 4
expect_rc 0 "continue it" "$MOOD" train --name cont --board board --model "$MODEL" --res 64 \
    --steps 3 --rank 4 --resume
check "announced before training" grep -q "style 'cont' is this run's result at step 2" "$tmp/err"
check "cont is the continued run" test "$(steps_of cont)" = 3
check "the earlier result kept" test "$(steps_of cont-step2)" = 2
expect_rc 0 "resume it again without more steps" "$MOOD" train --name cont --board board \
    --model "$MODEL" --res 64 --steps 3 --rank 4 --resume
check "says nothing was added" grep -q "style 'cont' is this run at step 3 already; nothing added" "$tmp/err"
check "and not that it registered it" sh -c '! grep -q "registered as" "$1" && grep -q "^it is style '"'cont'"'" "$1"' _ "$tmp/err"
expect_rc 1 "no cont-step3" "$MOOD" show cont-step3
# a taken NAME with -o elsewhere: registered under the free name announced, not the file's stem
expect_rc 0 "train a taken name to another file" "$MOOD" train --name cont --board board \
    --model "$MODEL" --res 64 --steps 1 --rank 4 -o other.safetensors --json
check "announced as cont-2" grep -q "will be registered as 'cont-2'" "$tmp/err"
check "registered as cont-2" py 'import json,sys; assert json.load(open(sys.argv[1]))["style"]=="cont-2"' "$tmp/out"
mkdir again && cd again
expect_rc 0 "a taken name, default -o" "$MOOD" train --name cont --board ../board --model "$MODEL" \
    --res 64 --steps 1 --rank 4 --seed 5 --json # another seed: the run just before made the same file
check "announced as cont-3" grep -q "will be registered as 'cont-3'" "$tmp/err"
check "registered as cont-3 (the import's own choice was that too)" py 'import json,sys; assert json.load(open(sys.argv[1]))["style"]=="cont-3"' "$tmp/out"
# a second run of a name there writes NAME-2.safetensors: never over the first run's files (the
# style made from them says they are its source), as gen never writes over an earlier image
cp cont.safetensors first.copy
expect_rc 0 "the name again, default -o" "$MOOD" train --name cont --board ../board \
    --model "$MODEL" --res 64 --steps 1 --rank 4 --seed 6 --no-register
check "says where it writes" grep -q "note: cont.safetensors is an earlier run's; this run writes cont-2.safetensors" "$tmp/err"
check "the first run's file untouched" cmp -s cont.safetensors first.copy
check "the second beside it, with its own checkpoint" test -f cont-2.safetensors -a -f cont-2.checkpoint.safetensors
# known by its file's stem, as kohya's output_name (A1111 calls it <lora:cont-2>); its trigger
# word stays the name given
check "ss_output_name is the file's stem, the trigger the name" py '
import json,struct
b=open("cont-2.safetensors","rb").read(); n,=struct.unpack("<Q",b[:8])
m=json.loads(b[8:8+n])["__metadata__"]
assert m["ss_output_name"]=="cont-2" and m["modelspec.title"]=="cont-2", m
assert json.load(open("cont-2.json"))["activation text"]=="cont", open("cont-2.json").read()'
expect_rc 0 "a third run" "$MOOD" train --name cont --board ../board --model "$MODEL" --res 64 \
    --steps 1 --rank 4 --seed 8 --no-register -o third.safetensors
check "-o: no note" test "$(grep -c "earlier run" "$tmp/err")" = 0
expect_rc 0 "the name a third time" "$MOOD" train --name cont --board ../board --model "$MODEL" \
    --res 64 --steps 1 --rank 4 --seed 9 --no-register
check "names both earlier runs" grep -q "note: cont.safetensors to cont-2.safetensors are earlier runs'; this run writes cont-3.safetensors" "$tmp/err"
rm -f cont-3.* # so that --resume below continues cont-2 as before
expect_rc 0 "--resume continues the latest run" "$MOOD" train --name cont --board ../board \
    --model "$MODEL" --res 64 --steps 2 --rank 4 --seed 6 --no-register --resume
check "cont-2 continued" py '
import json,struct
b=open("cont-2.safetensors","rb").read(); n,=struct.unpack("<Q",b[:8])
assert json.loads(b[8:8+n])["__metadata__"]["ss_max_train_steps"]=="2"'
check "the first still untouched" cmp -s cont.safetensors first.copy
cd ..
# registered: the second run is style tri-2 (file tri-2.safetensors); --resume continues that
# run, so style tri-2 takes it (its earlier result kept as tri-2-step1), not a new style tri-3
mkdir third && cd third
expect_rc 0 "tri, first run" "$MOOD" train --name tri --board ../board --model "$MODEL" --res 64 \
    --steps 1 --rank 4 --seed 1
expect_rc 0 "tri, second run" "$MOOD" train --name tri --board ../board --model "$MODEL" --res 64 \
    --steps 1 --rank 4 --seed 2
check "registered as tri-2" grep -q "registered as style 'tri-2'" "$tmp/out" "$tmp/err"
expect_rc 0 "tri, the second run continued" "$MOOD" train --name tri --board ../board \
    --model "$MODEL" --res 64 --steps 2 --rank 4 --seed 2 --resume
check "says tri-2 holds it" grep -q "style 'tri-2' is this run's result at step 1; it will hold the continued run" "$tmp/err"
check "tri-2 is the continued run" test "$(steps_of tri-2)" = 2
check "its earlier result kept" test "$(steps_of tri-2-step1)" = 1
check "tri untouched" test "$(steps_of tri)" = 1
expect_rc 1 "no tri-3" "$MOOD" show tri-3
# --resume takes the run whose checkpoint was written last: the first run's files deleted, then
# a new run refilling tri.safetensors, which --resume continues (it took the highest number)
rm tri.safetensors tri.checkpoint.safetensors
expect_rc 0 "the latest run continued across a gap" "$MOOD" train --name tri --board ../board \
    --model "$MODEL" --res 64 --steps 3 --rank 4 --seed 2 --resume --no-register
check "tri-2 continued" test -f tri-2.safetensors -a ! -f tri.safetensors
expect_rc 0 "a new run refills tri" "$MOOD" train --name tri --board ../board --model "$MODEL" \
    --res 64 --steps 1 --rank 4 --seed 3 --no-register
check "written as tri.safetensors" test -f tri.safetensors
expect_rc 0 "--resume continues the newest, tri" "$MOOD" train --name tri --board ../board \
    --model "$MODEL" --res 64 --steps 2 --rank 4 --seed 3 --resume --no-register
cd ..
# the run's style is found by its LoRA, whatever its name: trained here as tri, the file
# tri.safetensors is style tri-3 (tri and tri-2 are taken); --resume continues tri-3
mkdir fourth && cd fourth
expect_rc 0 "tri in another folder" "$MOOD" train --name tri --board ../board --model "$MODEL" \
    --res 64 --steps 1 --rank 4 --seed 7
check "registered as tri-3" grep -q "registered as style 'tri-3'" "$tmp/out" "$tmp/err"
expect_rc 0 "continued" "$MOOD" train --name tri --board ../board --model "$MODEL" --res 64 \
    --steps 2 --rank 4 --seed 7 --resume
check "tri-3 is the continued run" test "$(steps_of tri-3)" = 2
expect_rc 1 "no tri-4" "$MOOD" show tri-4
cd ..
# nor a LoRA named as its checkpoint would be: run a.checkpoint's a.checkpoint.safetensors is what
# run a would write its checkpoint to
mkdir dots && cd dots
expect_rc 0 "a run named a.checkpoint" "$MOOD" train --name a.checkpoint --board ../board \
    --model "$MODEL" --res 64 --steps 1 --rank 4 --no-register
cp a.checkpoint.safetensors first.copy
expect_rc 1 "run a, whose checkpoint is that file" "$MOOD" train --name a --board ../board \
    --model "$MODEL" --res 64 --steps 1 --rank 4 --seed 2 --no-register
check "says what is there" grep -q "a.checkpoint.safetensors is there and is not a training checkpoint" "$tmp/err"
check "that LoRA untouched" cmp -s a.checkpoint.safetensors first.copy
cd ..
# a new run never overwrites the checkpoint of a stopped one (hours of work on a CPU): its plan
# (mood.train.steps) is made larger than its step, as a Ctrl-C leaves it
py '
import json, struct
p = "cont.checkpoint.safetensors"; b = open(p, "rb").read(); n, = struct.unpack("<Q", b[:8])
h = json.loads(b[8:8 + n]); assert h["__metadata__"]["mood.train.steps"] == "3", h["__metadata__"]
h["__metadata__"]["mood.train.steps"] = "500"
t = json.dumps(h).encode(); t += b" " * (-len(t) % 8)
open(p, "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])'
cp cont.checkpoint.safetensors stopped.copy
expect_rc 1 "a new run over a stopped run's checkpoint" "$MOOD" train --name cont --board board \
    --model "$MODEL" --res 64 --steps 1 --rank 4 --no-register
check "says so" grep -q "checkpoint of a run stopped at step 3 of 500" "$tmp/err"
check "the checkpoint untouched" cmp -s cont.checkpoint.safetensors stopped.copy
# a resumed run that changes the learning rate, its schedule or the board is told so, and the loss
# record keeps the rate each earlier step ran at (it was recomputed from the new options)
expect_rc 0 "train rl, lr 1e-4" "$MOOD" train --name rl --board board --model "$MODEL" --res 64 \
    --steps 2 --rank 4 --lr 1e-4 --no-register
cp board/good1.png good1.keep
cp board/e.png board/good1.png
expect_rc 0 "resume with lr 5e-4, cosine, another picture" "$MOOD" train --name rl --board board \
    --model "$MODEL" --res 64 --steps 4 --rank 4 --lr 5e-4 --schedule cosine --no-register --resume
check "says the rate changed" grep -q "resuming with learning rate 0.0005; the checkpoint's run had 0.0001" "$tmp/err"
check "says the schedule changed" grep -q "resuming with the cosine schedule; the checkpoint's run had constant" "$tmp/err"
check "says the board changed" grep -q "the board changed since" "$tmp/err"
check "the record keeps each step's rate" py '
rows = [l.split(",") for l in open("rl.loss.csv").read().split()[1:]]
assert [r[3] for r in rows[:2]] == ["0.0001", "0.0001"] and float(rows[2][3]) < 5e-4, rows'
cp good1.keep board/good1.png
# the options that shape the loss are the run's: changed on --resume, refused (they were taken
# silently, and the LoRA's metadata said the whole run used them)
expect_rc 1 "resume with another noise offset" "$MOOD" train --name rl --board board \
    --model "$MODEL" --res 64 --steps 6 --rank 4 --lr 5e-4 --schedule cosine --no-register \
    --resume --noise-offset 0.3
check "names both" grep -q "the run was trained with --noise-offset 0.05 .*; this run asks for --noise-offset 0.3" "$tmp/err"
expect_rc 0 "resume giving the defaults, --max-timestep 1000 among them" "$MOOD" train --name rl \
    --board board --model "$MODEL" --res 64 --steps 5 --rank 4 --lr 5e-4 --schedule cosine \
    --no-register --resume --max-timestep 1000 --min-timestep 0 --noise-offset 0.05
finish
