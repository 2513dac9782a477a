# test_style_export.sh: `mood style export NAME... -o DIR`: styles written as an A1111/ComfyUI
# LoRA folder holds them (NAME.safetensors, A1111's NAME.json, NAME.preview.EXT, Civitai Helper's
# NAME.civitai.info). A one-LoRA style goes byte for byte (hashes and Civitai link kept, its
# multiplier folded into the preferred weight); a composed style goes as the one LoRA `mood lora
# stack` makes of its LoRAs at their multipliers (same tensors). `mood import DIR` into another
# registry gives the styles' text back. Nothing in the folder is replaced without --force (an
# identical LoRA is left, sidecars a user edited are kept, another file of the LoRA's name stops
# that style); a mistyped name exports nothing.
source "$(dirname "$0")/lib.sh"
SRC=${MOOD_SOURCE:?set MOOD_SOURCE to the source tree}

A=$tmp/a B=$tmp/b out=$tmp/loras
mkdir -p "$tmp/src"
cp "$SRC/examples/loras/inkwash.safetensors" "$SRC/examples/loras/film-grain.safetensors" \
    "$FIX/kohya/sd1_locon_fp16.safetensors" "$tmp/src/"
echo 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==' |
    base64 -d >"$tmp/src/inkwash.preview.png"
ink_sha=$(sha256sum "$tmp/src/inkwash.safetensors" | cut -c1-64)
cat >"$tmp/src/inkwash.civitai.info" <<EOF
{"id": 900101, "modelId": 900001, "name": "v1", "baseModel": "SD 1.5",
 "model": {"name": "Ink Wash", "type": "LORA"}, "trainedWords": ["inkwash"],
 "files": [{"name": "inkwash.safetensors", "hashes": {"SHA256": "${ink_sha^^}"}}]}
EOF

export MOOD_HOME=$A
expect_rc 0 "import fixtures" "$MOOD" import "$tmp/src"
expect_rc 0 "edit inkwash" "$MOOD" style edit inkwash --weight 0.8 --negative "blurry" \
    --description "ink wash, from a test" --notes "line one
line two"
expect_rc 0 "a composed style" "$MOOD" style create combo --lora inkwash:0.7 \
    --lora film-grain:-0.4:-0.2 --trigger "ink wash, grain" --template "{prompt}, ink" --weight 0.9
expect_rc 0 "a one-LoRA style at 0.5" "$MOOD" style create half --lora inkwash:0.5 --weight 0.8

# --- export ------------------------------------------------------------------------------------
expect_rc 0 "export" "$MOOD" style export inkwash combo INKWASH sd1_locon_fp16 -o "$out"
check "the folder made" test -d "$out"
check "each style once" test "$(grep -c ' -> ' "$tmp/out")" = 3
check "the LoRA itself, byte for byte" cmp -s "$out/inkwash.safetensors" "$tmp/src/inkwash.safetensors"
check "the preview as it was" cmp -s "$out/inkwash.preview.png" "$tmp/src/inkwash.preview.png"
check "A1111's card data" py '
import json,sys
j=json.load(open(sys.argv[1]))
assert j=={"description":"ink wash, from a test","sd version":"SD1","activation text":"inkwash",
           "preferred weight":0.8,"negative text":"blurry","notes":"line one\nline two"}, j' "$out/inkwash.json"
check "the Civitai record for Civitai Helper" py '
import json,sys
j=json.load(open(sys.argv[1])); assert j["modelId"]==900001 and j["id"]==900101, j' "$out/inkwash.civitai.info"
check "a composed style's template is said to stay behind" grep -q "style 'combo': its prompt template is not exported" "$tmp/err"
check "the composed style said combined" grep -q "combo -> .*combined into one" "$tmp/out"
# (another folder: two exports of one LoRA are one file to an importer, known by its SHA-256)
expect_rc 0 "a one-LoRA style at 0.5" "$MOOD" style export half -o "$tmp/half"
check "is the LoRA at weight 0.8 x 0.5" py '
import json,sys
assert json.load(open(sys.argv[1]))["preferred weight"]==0.4' "$tmp/half/half.json"
check "... byte for byte too" cmp -s "$tmp/half/half.safetensors" "$tmp/src/inkwash.safetensors"
check "composed: no Civitai record (it describes another file)" test ! -e "$out/combo.civitai.info"
check "composed: its weight and words" py '
import json,sys
j=json.load(open(sys.argv[1]))
assert j["preferred weight"]==0.9 and j["activation text"]=="ink wash, grain", j' "$out/combo.json"
# the composed LoRA is what `mood lora stack` makes of the stored LoRAs at the style's multipliers
# (lora stack is checked against the references in its own tests); its record names the LoRAs
# by their file names, not the registry's blob names
blob() { "$MOOD" show "$1" --json | py 'import json,sys; print(json.load(sys.stdin)["adapters"][0]["path"])'; }
expect_rc 0 "lora stack reference" "$MOOD" lora stack "$(blob inkwash)":0.7 "$(blob film-grain)":-0.4:-0.2 \
    -o "$tmp/ref.safetensors"
check "composed = stacked (same tensors, same bytes)" py '
import json,struct,sys
def load(p):
    b=open(p,"rb").read(); n,=struct.unpack("<Q",b[:8]); h=json.loads(b[8:8+n])
    m=h.pop("__metadata__"); return h,b[8+n:],m
h1,d1,m1=load(sys.argv[1]); h2,d2,m2=load(sys.argv[2])
assert h1==h2 and d1==d2
rec=json.loads(m1["mood_stacked_from"])
assert [r["file"] for r in rec]==["inkwash.safetensors","film-grain.safetensors"], rec
assert [(r["unet"],r["te"]) for r in rec]==[(0.7,0.7),(-0.4,-0.2)], rec' "$out/combo.safetensors" "$tmp/ref.safetensors"
check "an fp16 LoRA exported as it is" cmp -s "$out/sd1_locon_fp16.safetensors" "$tmp/src/sd1_locon_fp16.safetensors"
check "a style without a weight of its own: A1111's 0 (the default)" py '
import json,sys; assert json.load(open(sys.argv[1]))["preferred weight"]==0' "$out/sd1_locon_fp16.json"
# the composed LoRA again: the same tensors (only the time in its metadata differs) are the same
# LoRA, left as it is; no part file left
cp "$out/combo.safetensors" "$tmp/combo.first"
expect_rc 0 "a composed style exported again" "$MOOD" style export combo -o "$out" --json
check "nothing written" py '
import json,sys; e=json.load(open(sys.argv[1]))["exported"][0]; assert e["written"]==[] and e["combined"], e' "$tmp/out"
check "the first export left as it was" cmp -s "$out/combo.safetensors" "$tmp/combo.first"
check "no part file" test -z "$(ls "$out" | grep part)"

# --- the round trip ----------------------------------------------------------------------------
expect_rc 0 "import the folder into another registry" env MOOD_HOME="$B" "$MOOD" import "$out" --json
check "every style, nothing skipped" py '
import json,sys
d=json.load(open(sys.argv[1]))
assert sorted(x["name"] for x in d["imported"])==["combo","inkwash","sd1_locon_fp16"], d
assert not d["skipped"] and not d["failed"], d' "$tmp/out"
fields() {
    MOOD_HOME=$2 "$MOOD" show "$1" --json | py '
import json,sys
d=json.load(sys.stdin)
print(json.dumps([d[k] for k in ("trigger_words","weight","negative","description","notes")]),
      d["adapters"][0]["sha256"], [p["media_type"] for p in d["previews"]],
      [s.get("model_id") for s in d["adapters"][0]["sources"] if s["kind"]=="civitai"])'
}
check "inkwash comes back as it was" test "$(fields inkwash "$A")" = "$(fields inkwash "$B")"
check "combo comes back with its words and weight" py '
import json,sys
d=json.loads(sys.argv[1])
assert d[0]=="ink wash, grain" and d[1]==0.9, d' "$(MOOD_HOME=$B "$MOOD" show combo --json | py '
import json,sys; d=json.load(sys.stdin); print(json.dumps([d["trigger_words"], d["weight"]]))')"

# --- what is there already -----------------------------------------------------------------------
expect_rc 0 "export again: nothing to do" "$MOOD" style export inkwash -o "$out" --json
check "nothing written, nothing kept" py '
import json,sys
e=json.load(open(sys.argv[1]))["exported"][0]
assert e["written"]==[] and e["kept"]==[] and e["combined"] is False and e["sha256"]==sys.argv[2], e' "$tmp/out" "$ink_sha"
echo '{"activation text": "my own words"}' >"$out/inkwash.json"
expect_rc 0 "a sidecar edited in A1111" "$MOOD" style export inkwash -o "$out"
check "is kept" grep -q "my own words" "$out/inkwash.json"
check "and said to be" grep -q "inkwash.json is there already and was kept (--force replaces it)" "$tmp/err"
cp "$tmp/src/film-grain.safetensors" "$out/half.safetensors.other"
cp "$tmp/src/film-grain.safetensors" "$out/half.safetensors"
expect_rc 1 "another file of the LoRA's name" "$MOOD" style export half inkwash -o "$out" --json
check "names it" py '
import json,sys
d=json.load(open(sys.argv[1]))
assert [f["name"] for f in d["failed"]]==["half"] and "half.safetensors is there and is another file" in d["failed"][0]["error"], d
assert [e["name"] for e in d["exported"]]==["inkwash"], d' "$tmp/out"
check "leaves it" cmp -s "$out/half.safetensors" "$out/half.safetensors.other"
expect_rc 0 "--force replaces" "$MOOD" style export half inkwash -o "$out" --force
check "the style's LoRA now" cmp -s "$out/half.safetensors" "$tmp/src/inkwash.safetensors"
check "the edited sidecar too" py '
import json,sys; assert json.load(open(sys.argv[1]))["activation text"]=="inkwash"' "$out/inkwash.json"

# a link in the folder is replaced by --force, never the file it leads to (out of the folder)
echo "keep me" >"$tmp/victim.txt"
mkdir -p "$tmp/links"
ln -s ../victim.txt "$tmp/links/inkwash.json"
ln -s ../victim.txt "$tmp/links/combo.safetensors"
expect_rc 1 "links without --force" "$MOOD" style export inkwash combo -o "$tmp/links"
check "the linked file untouched" test "$(cat "$tmp/victim.txt")" = "keep me"
expect_rc 0 "links with --force" "$MOOD" style export inkwash combo -o "$tmp/links" --force
check "the linked file still untouched" test "$(cat "$tmp/victim.txt")" = "keep me"
check "the links replaced by files" test ! -L "$tmp/links/inkwash.json" -a ! -L "$tmp/links/combo.safetensors" -a -s "$tmp/links/inkwash.json"
ln -s /nonexistent/folder "$tmp/dangling"
expect_rc 2 "-o a link to nothing" "$MOOD" style export inkwash -o "$tmp/dangling"
check "says so" grep -q "is a link to a folder that does not exist" "$tmp/err"

# --- refused -----------------------------------------------------------------------------------
expect_rc 1 "a mistyped name among others" "$MOOD" style export inkwash nosuch -o "$tmp/none"
check "exports none" test ! -e "$tmp/none"
check "names it" grep -q "nothing exported: .*nosuch" "$tmp/err"
: >"$tmp/afile"
expect_rc 1 "-o a file" "$MOOD" style export inkwash -o "$tmp/afile"
check "says it is no folder" grep -q "is not a folder" "$tmp/err"
# LoRAs whose effect depends on the base (DoRA) cannot be stacked into one file: said with the
# LoRA's file name (the library names the registry's blob)
expect_rc 0 "import a DoRA" "$MOOD" import "$FIX/lycoris/locon_dora_in.safetensors"
expect_rc 0 "a style with it" "$MOOD" style create withdora --lora locon_dora_in:0.5 --lora inkwash
expect_rc 1 "cannot be one file" "$MOOD" style export withdora -o "$tmp/dora"
check "says why, naming the file" grep -q "style 'withdora' not exported: its LoRAs cannot be combined into the one file an A1111 <lora:> tag names: locon_dora_in.safetensors: .*DoRA" "$tmp/err"
check "no blob named" test "$(grep -c blobs "$tmp/err")" = 0
check "nothing left, not even the folder it made" test ! -e "$tmp/dora"
expect_rc 1 "no -o" "$MOOD" style export inkwash
expect_rc 1 "no name" "$MOOD" style export -o "$out"
finish
