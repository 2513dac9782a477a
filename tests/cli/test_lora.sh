#!/bin/bash
# test_lora.sh: `mood lora merge`, `mood lora resize` and `mood lora extract` end to end on the
# fixture LoRAs and tiny base models: summaries and --json, the written files (keys, ranks,
# alphas, metadata read back with a stdlib-only header reader), ranks equal to those kohya chose
# for the same commands (tests/fixtures/svd, when present), and the exit codes: 1 for bad input
# (corrupt file, bad rank or method, families that do not match, usage, a FIFO) and 2 for a
# missing file.
. "$(dirname "$0")/lib.sh"
# header FILE: prints the safetensors header as JSON (python3 stdlib only).
header() {
    python3 -c '
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    print(f.read(n).decode())' "$1"
}
# check_lora FILE PYTHON_EXPR: evaluates a condition on h (header dict) and m (metadata).
check_lora() {
    header "$1" >"$tmp/h.json" || { fail "cannot read $1"; return; }
    python3 - "$tmp/h.json" "$2" <<'EOF' || fail "check on $1: $2"
import json, sys
h = json.load(open(sys.argv[1]))
m = h.pop("__metadata__", {})
downs = {k[:-len(".lora_down.weight")]: v for k, v in h.items() if k.endswith(".lora_down.weight")}
ranks = {k: v["shape"][0] for k, v in downs.items()}
ok = eval(sys.argv[2])
if not ok:
    print("failed:", sys.argv[2], "metadata:", {k: v[:60] for k, v in m.items()}, file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}

lora="$FIX/kohya/sd1_lora.safetensors"
locon="$FIX/kohya/sd1_locon_fp16.safetensors"
xl="$FIX/kohya/sdxl_lora.safetensors"
base="$FIX/bases/sd1_base.safetensors"

# --- merge ---
expect_rc 0 "merge" "$MOOD" lora merge "$lora:0.7" "$locon:0.5:0.3" --rank 3 --conv-rank 2 \
    -o "$tmp/m.safetensors"
grep -q "^wrote $tmp/m.safetensors: [1-9][0-9]* modules" "$tmp/out" || fail "merge summary: $(cat "$tmp/out")"
grep -q "^ranks: " "$tmp/out" || fail "merge ranks line: $(cat "$tmp/out")"
check_lora "$tmp/m.safetensors" 'set(ranks.values()) <= {2, 3} and m["ss_network_dim"] == "3" and m["ss_network_args"] == "{\"conv_dim\": 2, \"conv_alpha\": 2}" and m["modelspec.merged_from"] == "sd1_lora, sd1_locon_fp16" and all(h[k + ".lora_up.weight"]["dtype"] == "F32" for k in ranks)'
expect_rc 0 "merge --json --dtype bf16" "$MOOD" lora merge "$lora" --rank 2 --dtype bf16 \
    -o "$tmp/mb.safetensors" --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["modules"] > 0 and d["ranks"] == [2] and d["rank_min"] == d["rank_max"] == 2 and d["rank_counts"] == [{"rank": 2, "modules": d["modules"]}], d' "$tmp/out" ||
    fail "merge --json: $(cat "$tmp/out")"
check_lora "$tmp/mb.safetensors" 'all(v["dtype"] == "BF16" for v in h.values())'

# --- resize ---
expect_rc 0 "resize fixed" "$MOOD" lora resize "$lora" --rank 2 -o "$tmp/r.safetensors"
check_lora "$tmp/r.safetensors" 'set(ranks.values()) == {2} and m["ss_training_comment"].startswith("dimension is resized from 4 to 2; ") and m["ss_network_dim"] == "2" and m["ss_network_alpha"] == "1.0" and m["ss_output_name"] == "sd1_lora"'
grep -q "^mean Frobenius norm of each layer's change kept: [0-9.]*%" "$tmp/out" || fail "resize summary: $(cat "$tmp/out")"
expect_rc 0 "resize dynamic" "$MOOD" lora resize "$locon" --dynamic sv_fro=0.9 --rank 3 \
    -o "$tmp/rd.safetensors" --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["fro_retained_mean"] >= 0.9 and d["rank_max"] <= 3 and sum(c["modules"] for c in d["rank_counts"]) == d["modules"], d' "$tmp/out" ||
    fail "resize --json: $(cat "$tmp/out")"
check_lora "$tmp/rd.safetensors" 'm["ss_network_dim"] == "Dynamic" and m["ss_training_comment"].startswith("Dynamic resize with sv_fro: 0.9 from 4; ")'

# --- extract ---
expect_rc 0 "extract" "$MOOD" lora extract --base "$base" --tuned "$FIX/bases/sd1_base_fp16.safetensors" \
    --rank 2 --conv-rank 1 -o "$tmp/e.safetensors"
check_lora "$tmp/e.safetensors" 'ranks and not any(k.startswith("lora_te") for k in ranks) and m["ss_network_args"] == "{\"conv_dim\": \"1\", \"conv_alpha\": \"1.0\"}" and m["ss_network_alpha"] == "2.0"'
check "says the text encoder is left out, as kohya does" grep -q "text encoders of .* do not differ .*: the LoRA holds UNet modules only" "$tmp/err"

# layers whose difference is zero (a checkpoint against itself; a merge whose text-encoder sum is
# zero): the partial SVD of a matrix of equal singular values wrote past its output (LAPACK's
# dbdsvdx), which aborted in free() with exit 134. Every layer is factored before the verdict:
# a checkpoint against itself is refused (it wrote a LoRA of zeros without a word)
expect_rc 1 "extract where nothing changed" "$MOOD" lora extract --base "$base" --tuned "$base" \
    --rank 2 -o "$tmp/e0.safetensors"
check "says the two hold the same weights" grep -q "hold the same weights: there is no difference to extract" "$tmp/err"
check "writes nothing" test ! -e "$tmp/e0.safetensors"
expect_rc 0 "merge to a zero sum" "$MOOD" lora merge "$FIX/pipeline/lora.safetensors:1:0" \
    "$FIX/pipeline/lora.safetensors:0.5:0" --rank 2 -o "$tmp/m0.safetensors"

# --- the same ranks as kohya for the conformance fixtures (when present) ---
svd="$FIX/svd"
if [ -f "$svd/cases.json" ]; then
    expect_rc 0 "merge vs kohya" "$MOOD" lora merge "$svd/lora_a.safetensors:0.7" \
        "$svd/lora_b.safetensors:-0.4" --rank 4 --conv-rank 2 -o "$tmp/svd_merge_ab.safetensors"
    header "$svd/svd_merge_ab.safetensors" >"$tmp/k.json"
    check_lora "$tmp/svd_merge_ab.safetensors" 'ranks == {k[:-len(".lora_down.weight")]: v["shape"][0] for k, v in json.load(open("'"$tmp/k.json"'")).items() if k.endswith(".lora_down.weight")}'
fi

# --- errors ---
expect_rc 1 "an unknown lora subcommand" "$MOOD" lora bogus
check "names it and the subcommands" grep -q "'mood lora bogus': unknown; 'mood lora' takes stack, merge, resize or extract" "$tmp/err"

expect_rc 2 "missing input" "$MOOD" lora merge "$tmp/nope.safetensors" --rank 2 -o "$tmp/x.safetensors"
expect_rc 2 "missing base" "$MOOD" lora extract --base "$tmp/nope.safetensors" --tuned "$base" --rank 2 -o "$tmp/x.safetensors"
head -c 100 /dev/urandom >"$tmp/bad.safetensors"
expect_rc 1 "corrupt LoRA" "$MOOD" lora resize "$tmp/bad.safetensors" --rank 2 -o "$tmp/x.safetensors"
expect_rc 1 "families differ" "$MOOD" lora merge "$lora" "$xl" --rank 2 -o "$tmp/x.safetensors"
grep -q "sdxl" "$tmp/err" || fail "family error does not name the family: $(cat "$tmp/err")"
expect_rc 1 "extract families differ" "$MOOD" lora extract --base "$base" --tuned "$FIX/bases/sdxl_base.safetensors" --rank 2 -o "$tmp/x.safetensors"
# a LoRA whose alphas are all 0 changes nothing: said in one line, not one a module
python3 -c '
import json, struct, sys
d = bytearray(open(sys.argv[1], "rb").read()); n, = struct.unpack("<Q", d[:8]); h = json.loads(d[8:8 + n])
for k, v in h.items():
    if k.endswith(".alpha"):
        a, b = v["data_offsets"]; d[8 + n + a:8 + n + b] = bytes(b - a)
open(sys.argv[2], "wb").write(d)' "$lora" "$tmp/alpha0.safetensors"
expect_rc 0 "inspect a LoRA of alpha 0" "$MOOD" inspect "$tmp/alpha0.safetensors"
check "one warning line for all its modules" test "$(grep -c "alpha 0" "$tmp/err")" -eq 1
check "saying how many" grep -q "alpha0.safetensors: [0-9]* modules (.* and others) have alpha 0: they change nothing" "$tmp/err"

# IA3 and OFT change W by a product, not a sum: merge and resize say so (not what their factors'
# shapes look like when read as ΔW's)
for algo in ia3 diag_oft boft; do
    for cmd in merge resize; do
        expect_rc 1 "$cmd of $algo" "$MOOD" lora $cmd "$FIX/lycoris/$algo.safetensors" --rank 2 -o "$tmp/x.safetensors"
        check "$cmd of $algo: needs a base model" grep -q "changes W non-additively, so its ΔW needs a base model" "$tmp/err"
    done
done
expect_rc 1 "rank 0" "$MOOD" lora merge "$lora" --rank 0 -o "$tmp/x.safetensors"
expect_rc 1 "clamp quantile 0" "$MOOD" lora merge "$lora" --rank 2 --clamp-quantile 0 -o "$tmp/x.safetensors"
check "says what it takes" grep -q -- "--clamp-quantile must be a number in (0.5, 1], not '0'" "$tmp/err"
expect_rc 1 "clamp quantile 0.5" "$MOOD" lora merge "$lora" --rank 2 --clamp-quantile 0.5 -o "$tmp/x.safetensors"
check "says why" grep -q "must be a number in (0.5, 1], not '0.5' (at 0.5 and below the bound" "$tmp/err"
expect_rc 0 "clamp quantile 0.51" "$MOOD" lora merge "$lora" --rank 2 --clamp-quantile 0.51 -o "$tmp/q51.safetensors"
rm -f "$tmp/q51.safetensors"
expect_rc 1 "resize clamps nothing" "$MOOD" lora resize "$lora" --rank 2 --clamp-quantile 0.9 -o "$tmp/x.safetensors"
expect_rc 0 "merge without the clamp" "$MOOD" lora merge "$lora" --rank 2 --clamp-quantile 1 -o "$tmp/unclamped.safetensors"
expect_rc 1 "no rank" "$MOOD" lora merge "$lora" -o "$tmp/x.safetensors"
expect_rc 1 "no output" "$MOOD" lora resize "$lora" --rank 2
expect_rc 1 "bad method" "$MOOD" lora resize "$lora" --dynamic sv_foo=0.5 -o "$tmp/x.safetensors"
expect_rc 1 "bad fraction" "$MOOD" lora resize "$lora" --dynamic sv_fro=1.5 -o "$tmp/x.safetensors"
expect_rc 1 "bad dtype" "$MOOD" lora merge "$lora" --rank 2 --dtype f8 -o "$tmp/x.safetensors"
[ -e "$tmp/x.safetensors" ] && fail "a failed command left an output file"
# timeout: a regression (an open that waits for a writer) fails here instead of hanging
mkfifo "$tmp/pipe.safetensors"
expect_rc 1 "merge a FIFO" timeout -k 5 30 "$MOOD" lora merge "$tmp/pipe.safetensors" "$lora" --rank 2 \
    -o "$tmp/x.safetensors"
grep -q "pipe.safetensors: not a regular file" "$tmp/err" || fail "merge FIFO: $(cat "$tmp/err")"
expect_rc 1 "resize a FIFO" timeout -k 5 30 "$MOOD" lora resize "$tmp/pipe.safetensors" --rank 2 \
    -o "$tmp/x.safetensors"
[ -e "$tmp/x.safetensors" ] && fail "a refused FIFO left an output file"
# --- an output that is one of the inputs (any spelling) is refused before anything is written ---
cp "$lora" "$tmp/mine.safetensors"
ln -s mine.safetensors "$tmp/link.safetensors"
expect_rc 1 "merge into its input" "$MOOD" lora merge "$tmp/mine.safetensors:0.5" --rank 2 \
    -o "$tmp/mine.safetensors"
grep -q "is also an input" "$tmp/err" || fail "merge into input: $(cat "$tmp/err")"
expect_rc 1 "resize into its input, via a link" "$MOOD" lora resize "$tmp/mine.safetensors" \
    --rank 2 -o "$tmp/link.safetensors"
expect_rc 1 "stack into its input" "$MOOD" lora stack "$lora" "$tmp/mine.safetensors" \
    -o "$tmp/./mine.safetensors"
cp "$base" "$tmp/base.safetensors"
expect_rc 1 "extract into its base" "$MOOD" lora extract --base "$tmp/base.safetensors" \
    --tuned "$FIX/bases/sd1_base_fp16.safetensors" --rank 2 -o "$tmp/base.safetensors"
cmp -s "$lora" "$tmp/mine.safetensors" || fail "a refused output changed its input LoRA"
cmp -s "$base" "$tmp/base.safetensors" || fail "a refused output changed its input checkpoint"
mkdir -p "$tmp/folder.safetensors"
expect_rc 1 "output is a folder" "$MOOD" lora stack "$lora" -o "$tmp/folder.safetensors"
grep -q "is a folder" "$tmp/err" || fail "stack into a folder: $(cat "$tmp/err")"
# a .ckpt name would be torch.load()ed by A1111: stack takes only .safetensors, as the others do
expect_rc 1 "stack to a .ckpt name" "$MOOD" lora stack "$lora" -o "$tmp/stack.ckpt"
check "asks for .safetensors" grep -q "give a name ending in .safetensors" "$tmp/err"
expect_rc 2 "output folder missing" "$MOOD" lora merge "$lora" --rank 2 -o "$tmp/no/x.safetensors"

expect_rc 1 "a hexadecimal weight" "$MOOD" lora stack "$lora:0x10" -o "$tmp/x.safetensors"
check "is not a number" grep -q "weight '0x10' is not a number" "$tmp/err"
expect_rc 1 "a weight past 100" "$MOOD" lora stack "$lora:1e308" -o "$tmp/x.safetensors"

expect_rc 0 "help" "$MOOD" help lora resize
grep -q "sv_fro" "$tmp/out" || fail "resize help"

# kohya's spellings are answered with mood's; an output must be a .safetensors name
expect_rc 1 "kohya's --new_rank" "$MOOD" lora resize "$lora" --new_rank 2 -o "$tmp/x.safetensors"
check "names --rank" grep -q -- "--new_rank is kohya's spelling; in mood: --rank" "$tmp/err"
expect_rc 1 "-o out.ckpt" "$MOOD" lora resize "$lora" --rank 2 -o "$tmp/out.ckpt"
check "says a LoRA is a .safetensors file" grep -q "the LoRA is a .safetensors file" "$tmp/err"
check "nothing written" test ! -e "$tmp/out.ckpt"
expect_rc 0 "torch's dtype names" "$MOOD" lora resize "$lora" --rank 2 --dtype bfloat16 -o "$tmp/bf.safetensors"
check "bf16 written" py 'import json,struct,sys; d=open(sys.argv[1],"rb").read(); n,=struct.unpack("<Q",d[:8]); h=json.loads(d[8:8+n]); assert all(v["dtype"]=="BF16" for k,v in h.items() if k!="__metadata__")' "$tmp/bf.safetensors"

# a base model given where a LoRA goes is named as one
expect_rc 1 "a checkpoint given as a LoRA" "$MOOD" lora resize "$FIX/bases/sd1_base.safetensors" --rank 2 -o "$tmp/c.safetensors"
check "says it is a checkpoint, to give as the base" grep -q "is a model checkpoint (a base model), not a LoRA" "$tmp/err"
expect_rc 1 "a diffusers UNet file given as a LoRA" "$MOOD" lora resize "$FIX/pipeline/tiny-sd/unet/diffusion_pytorch_model.safetensors" --rank 2 -o "$tmp/c.safetensors"
check "says it is a diffusers model's part" grep -q "holds the weights of a diffusers model's part" "$tmp/err"
# lora stack's JSON gives the ranks as numbers (was the string of ss_network_dim: "8", "Dynamic")
expect_rc 0 "stack two ranks, --json" "$MOOD" lora stack "$locon" "$tmp/rd.safetensors:0.5" \
    -o "$tmp/st.safetensors" --json
check "rank_min and rank_max are numbers" python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
assert isinstance(d["rank_min"], int) and d["rank_max"] > d["rank_min"] and "rank" not in d, d' "$tmp/out"

finish
