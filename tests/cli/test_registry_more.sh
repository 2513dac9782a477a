#!/usr/bin/env bash
# test_registry_more.sh: registry rules the other registry tests leave out. A style's LoRAs are
# all for one base family (style create/edit refuse sd1 with sdxl, exit 1, naming both; a LoRA of
# unknown family goes with any). Text from sidecars and file metadata reaches the terminal with
# its control characters as visible escapes (show, list, search, inspect; --json stays exact).
# Importing a file whose LoRA is stored but which no style is any more (removed while a
# composition uses it, or replaced by `style edit`) makes its style again from the same blob.
# With a mistyped MOOD_HOME, rm, rename, tag and style edit fail (exit 1) naming the folder and
# create nothing there; style edit of a missing style imports none of its --lora files. A LoRA
# whose metadata names another family than its shapes prove is registered as the shapes say, with
# a warning naming both; so is a sidecar's Civitai record for another base family than the
# file's (said on stderr, in import --json's warnings, and shown by show). Readers answer while
# another process holds the write lock.
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
lib=$tmp/loras
mkdir -p "$lib"
cp "$FIX/kohya/sd1_lora.safetensors" "$FIX/kohya/sdxl_lora.safetensors" "$FIX/kohya/sd2_locon.safetensors" \
    "$FIX/lycoris/lokr.safetensors" "$FIX/lycoris/ia3.safetensors" "$lib/"
esc=$(printf '\033') bel=$(printf '\007') csi=$(printf '\302\233')
# raw_free FILE: passes when FILE holds no ESC, BEL or C1 CSI (U+009B) byte sequence.
raw_free() {
    ! grep -q -e "$esc" -e "$bel" -e "$csi" "$1"
}

expect_rc 0 "import the LoRAs" "$MOOD" import "$lib"

# ----- one base family per style
expect_rc 1 "style create of an sd1 and an sdxl LoRA is refused" \
    "$MOOD" style create mixed --lora sd1_lora --lora sdxl_lora:0.5
check "the message names both LoRAs and families" \
    grep -q "sd1_lora.safetensors is for sd1 but sdxl_lora.safetensors is for sdxl" "$tmp/err"
expect_rc 0 "list --base sdxl" "$MOOD" list --base sdxl --json
check "no style 'mixed' was made" py '
import json,sys; d=json.load(open(sys.argv[1])); assert [s["name"] for s in d]==["sdxl_lora"], d' "$tmp/out"
expect_rc 1 "sd2 with sd1 is refused too" "$MOOD" style create mixed2 --lora sd2_locon --lora lokr
check "names sd2 and sd1" grep -q "sd2_locon.safetensors is for sd2 but lokr.safetensors is for sd1" "$tmp/err"
expect_rc 0 "LoRAs of one family make a style" "$MOOD" style create ink --lora sd1_lora:0.7 --lora ia3:0.3
expect_rc 1 "style edit refuses an sdxl LoRA in an sd1 style" "$MOOD" style edit ink --lora ink --lora sdxl_lora
check "edit message" grep -q "is for sd1 but sdxl_lora.safetensors is for sdxl" "$tmp/err"
expect_rc 0 "show ink" "$MOOD" show ink --json
check "the refused edit changed nothing" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [a["file_name"] for a in d["adapters"]]==["sd1_lora.safetensors","ia3.safetensors"], d["adapters"]' "$tmp/out"
# an adapter of unknown family (what a LoRA without metadata or telling keys is) goes with any
py '
import sqlite3,sys; db=sqlite3.connect(sys.argv[1])
db.execute("UPDATE adapters SET family = ? WHERE file_name = ?", ("unknown", "ia3.safetensors")); db.commit()' \
    "$MOOD_HOME/registry.db"
expect_rc 0 "an unknown-family LoRA goes with sdxl" "$MOOD" style create xl-mix --lora sdxl_lora --lora ia3
expect_rc 0 "and with sd1" "$MOOD" style edit ink --lora sd1_lora --lora ia3

# ----- control characters from sidecars and metadata are shown as escapes
ev=$tmp/evil
mkdir -p "$ev"
python3 - "$FIX/kohya/sd1_lora.safetensors" "$ev/evil.safetensors" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["__metadata__"].update({"ss_output_name": "\x1b[2J\x1b]0;pwned\x07", "modelspec.title": "t\x9b31m",
                          "ss_network_args": "{\"a\": \"\x1b[31m\"}"})
nh = json.dumps(h).encode(); nh += b" " * (-len(nh) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(nh)) + nh + b[8 + n:])
EOF
printf '%s' '{"description": "\u001b[2J\u001b]0;pwned\u0007 first\nsecond\u009b", "notes": "n\u001b[31m",
 "activation text": "trig\u001b[1m"}' >"$ev/evil.json"
expect_rc 0 "import a LoRA with escape sequences" "$MOOD" import "$ev/evil.safetensors"
expect_rc 0 "show it" "$MOOD" show evil
check "show prints no raw escape" raw_free "$tmp/out"
check "show prints the escapes visibly" grep -qF 'Description:  \x1b[2J\x1b]0;pwned\x07 first' "$tmp/out"
check "a multi-line description keeps its lines (the next under the first)" grep -qxF '              second\u009b' "$tmp/out"
check "notes and triggers too" grep -qF 'trig\x1b[1m' "$tmp/out"
expect_rc 0 "list" "$MOOD" list
check "list prints no raw escape" raw_free "$tmp/out"
check "list shows the trigger escaped" grep -qF 'trig\x1b[1m' "$tmp/out"
expect_rc 0 "search" "$MOOD" search trig
check "search prints no raw escape" raw_free "$tmp/out"
expect_rc 0 "show --json" "$MOOD" show evil --json
check "--json keeps the text exact" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["description"]=="\x1b[2J\x1b]0;pwned\x07 first\nsecond\x9b", repr(d["description"])' "$tmp/out"
expect_rc 0 "inspect it" "$MOOD" inspect --no-hash "$ev/evil.safetensors"
check "inspect prints no raw escape" raw_free "$tmp/out"
check "inspect shows the name escaped" grep -qF 'Name            \x1b[2J\x1b]0;pwned\x07' "$tmp/out"
check "inspect shows C1 escaped" grep -qF 'Title           t\u009b31m' "$tmp/out"
expect_rc 0 "inspect --json" "$MOOD" inspect --no-hash --json "$ev/evil.safetensors"
check "inspect --json keeps the text exact" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["metadata"]["output_name"]=="\x1b[2J\x1b]0;pwned\x07", d["metadata"]' "$tmp/out"
odd="$ev/odd$(printf '\033')]0;x$(printf '\007')"
cp "$FIX/lycoris/loha.safetensors" "$odd.safetensors"
printf 'not an image' >"$odd.preview.png"
expect_rc 0 "import a file whose name holds an escape" "$MOOD" import "$ev"
check "import prints no raw escape" raw_free "$tmp/out"
check "nor on stderr" raw_free "$tmp/err"
check "the skipped preview is named escaped" grep -qF 'odd\x1b]0;x\x07.preview.png: sidecar skipped' "$tmp/err"

# ----- a file whose style is gone is imported again as a style
h3=$tmp/home3
export MOOD_HOME=$h3
cp "$FIX/kohya/sd1_lora.safetensors" "$lib/good.safetensors"
expect_rc 0 "import good and lokr" "$MOOD" import "$lib/good.safetensors" "$lib/lokr.safetensors" "$lib/ia3.safetensors"
expect_rc 0 "a style of good at 0.5" "$MOOD" style create mix --lora good:0.5
expect_rc 0 "rm good" "$MOOD" rm good
blobs() { find "$h3/blobs/sha256" -type f | wc -l; }
before=$(blobs)
expect_rc 0 "import good again" "$MOOD" import "$lib/good.safetensors" --json
check "good is imported again, not 'already'" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["already"]==[] and [i["name"] for i in d["imported"]]==["good"], d' "$tmp/out"
check "it says the LoRA was stored already" grep -q "stored already (used by mix)" "$tmp/err"
check "the blob is reused, not stored twice" test "$(blobs)" -eq "$before"
expect_rc 0 "show good" "$MOOD" show good --json
check "good is the file alone at weight 1" py '
import json,sys; d=json.load(open(sys.argv[1])); a=d["adapters"]
assert len(a)==1 and a[0]["unet"]==1 and a[0]["te"]==1, a
assert len(a[0]["sources"])==1, a[0]["sources"]' "$tmp/out"
expect_rc 0 "a third import" "$MOOD" import "$lib/good.safetensors"
check "says already, as good" grep -q "already in the registry as good$" "$tmp/out"
expect_rc 0 "mix is unchanged" "$MOOD" show mix --json
check "mix still holds good at 0.5" py '
import json,sys; d=json.load(open(sys.argv[1])); a=d["adapters"]
assert len(a)==1 and a[0]["unet"]==0.5, a' "$tmp/out"

expect_rc 0 "lokr's LoRA replaced" "$MOOD" style edit lokr --lora ia3
check "says lokr's own LoRA is a style of its own now" grep -q \
    "lokr.safetensors left style 'lokr' and no other style uses it: it is style 'lokr-2' now" "$tmp/err"
expect_rc 0 "listed" "$MOOD" list
check "as lokr-2" grep -q "^lokr-2 " "$tmp/out"
expect_rc 0 "import lokr again" "$MOOD" import "$lib/lokr.safetensors"
check "already, as lokr-2" grep -q "already in the registry as lokr-2$" "$tmp/out"
no_placeholder() { ! grep -q "(no style)" "$1"; }
check "never (no style)" no_placeholder "$tmp/out"
expect_rc 0 "doctor finds it clean" "$MOOD" doctor --deep
expect_rc 0 "again, with --json" "$MOOD" style edit lokr-2 --lora good --json
check "the JSON says which style the LoRA became" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["name"]=="lokr-2" and any("it is style \x27lokr-3\x27 now" in w for w in d["warnings"]), d' "$tmp/out"

# ----- a mistyped MOOD_HOME: commands that change an existing style fail naming the folder and
# create no registry there (their transaction would have made an empty one before the lookup)
typo=$tmp/fresh/typo
for cmd in "rm good" "rm good lokr" "rename good better" "tag good +ink" "style edit good --weight 0.5" \
    "style edit good --lora $lib/ia3.safetensors"; do
    # shellcheck disable=SC2086
    MOOD_HOME=$typo expect_rc 1 "$cmd on a missing registry" "$MOOD" $cmd
    check "$cmd names the folder" grep -q "no registry at $typo" "$tmp/err"
    check "$cmd created nothing" [ ! -e "$typo" ]
done
check "rm says there is nothing to remove" grep -q "no registry at $typo (MOOD_HOME): no style 'good' to remove; nothing was created" \
    <(MOOD_HOME=$typo "$MOOD" rm good 2>&1)
check "and the parent folder stays empty" [ -z "$(ls -A "$tmp/fresh" 2>/dev/null)" ]
# a registry there: editing a style it lacks imports none of the --lora files first
expect_rc 1 "style edit of a missing style with a --lora file" "$MOOD" style edit nosuch --lora "$FIX/lycoris/loha.safetensors"
check "names the missing style" grep -q "no style named 'nosuch'" "$tmp/err"
expect_rc 0 "list after it" "$MOOD" list --json
check "the --lora file was not imported" py '
import json,sys; d=json.load(open(sys.argv[1])); assert "loha" not in [s["name"] for s in d], d' "$tmp/out"

# trigger words from ss_tag_frequency: a tag's counts are summed over the folders (ink 2 + 2 beats
# wash 3), ties go by name
export MOOD_HOME=$tmp/h-tags
py 'import json, struct, sys
b = open(sys.argv[1], "rb").read()
n, = struct.unpack("<Q", b[:8])
h = json.loads(b[8:8 + n])
h["__metadata__"] = {"ss_tag_frequency": json.dumps({"1_a": {"wash": 3, "ink": 2},
                                                     "2_b": {"sky": 1, "ink": 2}})}
t = json.dumps(h).encode()
t += b" " * (-len(t) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])' \
    "$FIX/kohya/sd1_lora.safetensors" "$tmp/tagged.safetensors"
expect_rc 0 "import a LoRA with tags in two folders" "$MOOD" import "$tmp/tagged.safetensors"
expect_rc 0 "show it" "$MOOD" show tagged --json
check "the summed top tag is the trigger word" py '
import json, sys; d = json.load(open(sys.argv[1])); assert d["trigger_words"] == "ink", d["trigger_words"]' "$tmp/out"

# --- a weight that is no number, or out of range, says what --weight takes ---
expect_rc 1 "style create --weight nan" "$MOOD" style create wnan --lora sd1_lora --weight nan
check "says what it takes" grep -q -- "--weight nan: takes a number, -10 to 10" "$tmp/err"
expect_rc 1 "style create --weight 1e9" "$MOOD" style create wbig --lora sd1_lora --weight 1e9
check "out of range said" grep -q -- "--weight 1e9: takes" "$tmp/err"

# --- mislabeled: SD1 shapes (attn2.to_k reads 768 wide) under an SDXL label ---
python3 -c '
import json, struct, sys
k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
parts = [(k + ".lora_down.weight", [4, 768]), (k + ".lora_up.weight", [320, 4]), (k + ".alpha", [])]
h, data = {"__metadata__": {"ss_base_model_version": "sdxl_base_v1-0"}}, b""
for name, shape in parts:
    n = 1
    for d in shape:
        n *= d
    h[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * n]}
    data += struct.pack("<%df" % n, *([0.01] * n))
t = json.dumps(h).encode()
t += b" " * (-len(t) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(t)) + t + data)' "$tmp/mislabeled.safetensors"
expect_rc 0 "import a mislabeled LoRA" "$MOOD" import --offline "$tmp/mislabeled.safetensors"
check "registered for its shapes' family" grep -q "as mislabeled (sd1)" "$tmp/out"
check "the label is named" grep -q "registered as sd1, from its shapes (metadata says sdxl)" "$tmp/err"

# --- the same file twice, the second copy with sidecars: it is recorded as another source of
# the style (its Civitai names searchable), said once that its sidecars did not make the style,
# in text and in --json; imported again, it is known ---
mkdir -p "$tmp/dup" "$tmp/dupj"
cp "$FIX/kohya/sd1_lora_bf16.safetensors" "$tmp/dup/b_plain.safetensors"
cp "$FIX/kohya/sd1_lora_bf16.safetensors" "$tmp/dup/c_sidecar.safetensors"
echo '{"activation text": "dupword"}' >"$tmp/dup/c_sidecar.json"
echo '{"id": 5, "modelId": 7, "model": {"name": "Sumi Deluxe"}}' >"$tmp/dup/c_sidecar.civitai.info"
expect_rc 0 "import a folder holding one file twice" "$MOOD" import --offline "$tmp/dup"
check "the copy's sidecars named" grep -q "c_sidecar.safetensors: the same file is stored already as style 'b_plain', imported from another copy: this one is recorded as another source of it, but its sidecars' (c_sidecar.json, c_sidecar.civitai.info) trigger words" "$tmp/err"
expect_rc 0 "search the copy's Civitai name" "$MOOD" search sumi
check "finds the style" grep -q "^b_plain " "$tmp/out"
expect_rc 0 "the folder again" "$MOOD" import --offline "$tmp/dup"
check "said once" test "$(grep -c "imported from another copy" "$tmp/err")" -eq 0
cp "$tmp/dup/c_sidecar.safetensors" "$tmp/dup/c_sidecar.json" "$tmp/dupj/"
expect_rc 0 "another copy, --json" "$MOOD" import --offline "$tmp/dupj" --json
check "the warning is in the JSON" py '
import json,sys; d={a["file"].rsplit("/",1)[1]:a for a in json.load(open(sys.argv[1]))["already"]}
assert "trigger words and text are not the style" in d["c_sidecar.safetensors"]["warning"], d' "$tmp/out"
# a file imported with its sidecars, imported again: they were read the first time
mkdir -p "$tmp/dup2"
cp "$FIX/lycoris/loha.safetensors" "$tmp/dup2/ink.safetensors"
echo sumi >"$tmp/dup2/ink.txt"
expect_rc 0 "import with a sidecar" "$MOOD" import --offline "$tmp/dup2"
expect_rc 0 "the same again" "$MOOD" import --offline "$tmp/dup2"
check "no warning about its sidecars" test ! -s "$tmp/err"

# --- a file imported before, unchanged (same place, size, times and inode), is known without
# being read (registry/import_known.c; test_registry_more.c checks that it is not read); one
# whose bytes changed under the same size and modification time (set back as cp -p and
# touch -d do) is read again: its change time moved ---
mkdir -p "$tmp/known"
cp "$FIX/lycoris/loha.safetensors" "$tmp/known/k.safetensors"
size=$(stat -c %s "$tmp/known/k.safetensors")
printf '\x02' | dd of="$tmp/known/k.safetensors" bs=1 seek=$((size - 1)) conv=notrunc 2>/dev/null
expect_rc 0 "import k (a LoRA of its own)" "$MOOD" import --offline "$tmp/known/k.safetensors"
check "as k" grep -q "as k (sd1)" "$tmp/out"
expect_rc 0 "again, unchanged" "$MOOD" import --offline "$tmp/known/k.safetensors"
check "already" grep -q "already in the registry as k$" "$tmp/out"
stamp=$(stat -c %y "$tmp/known/k.safetensors")
printf '\x01' | dd of="$tmp/known/k.safetensors" bs=1 seek=$((size - 1)) conv=notrunc 2>/dev/null
touch -d "$stamp" "$tmp/known/k.safetensors"
expect_rc 0 "other bytes, the same size and modification time" "$MOOD" import --offline "$tmp/known/k.safetensors"
check "read again: another LoRA, another style" grep -q "imported .*k.safetensors as k-2" "$tmp/out"
expect_rc 0 "doctor --deep" "$MOOD" doctor --deep

# --- sidecars too big or malformed are skipped (and listed so in --json); the LoRA imports ---
mkdir -p "$tmp/sk"
cp "$MOOD_SOURCE/examples/loras/inkwash.safetensors" "$tmp/sk/big.safetensors"
cp "$tmp/sk/big.safetensors" "$tmp/sk/bad.safetensors"
head -c 20971520 /dev/zero >"$tmp/sk/big.json"
echo '[1,2' >"$tmp/sk/bad.civitai.info"
expect_rc 0 "oversized and malformed sidecars are skipped" "$MOOD" import --offline "$tmp/sk" --json
check "both listed as skipped" py 'import json,sys; s={x["file"].rsplit("/",1)[1]:x["reason"] for x in json.load(open(sys.argv[1]))["skipped"]}; assert s["big.json"]=="20 MB, more than the 16 MB limit" and s["bad.civitai.info"]=="not a JSON object", s' "$tmp/out"

# --- ComfyUI-Lora-Manager's NAME.metadata.json and StabilityMatrix's NAME.cm-info.json are read
# with their LoRA in a folder import (not listed as skipped files), what they say shown by show
# --json and carried by a pack; a damaged one is listed as a skipped sidecar ---
export MOOD_HOME=$tmp/h-mig
mkdir -p "$tmp/mig"
cp "$FIX/lycoris/loha.safetensors" "$tmp/mig/lm.safetensors"
cp "$FIX/lycoris/lokr.safetensors" "$tmp/mig/sm.safetensors"
cp "$FIX/kohya/sd1_lora.safetensors" "$tmp/mig/broken.safetensors"
cat >"$tmp/mig/lm.metadata.json" <<'JSON'
{"file_name": "lm", "model_name": "Loha LM", "file_path": "/x/lm.safetensors", "size": 1, "modified": 1700000000.0,
 "sha256": "", "base_model": "SD 1.5", "preview_url": "", "preview_nsfw_level": 0, "notes": "keep it soft",
 "from_civitai": true, "tags": ["watercolor", "soft"], "favorite": false, "civitai_deleted": false,
 "usage_tips": "{\"strength_min\": 0.4, \"strength_max\": 0.9, \"strength\": 0.65, \"clip_strength\": 1.0}",
 "civitai": {"id": 610101, "modelId": 610001, "name": "v1", "baseModel": "SD 1.5", "type": "LORA",
  "trainedWords": ["wtrclr", "soft wash"], "model": {"name": "Loha LM", "type": "LORA", "nsfw": false}}}
JSON
cat >"$tmp/mig/sm.cm-info.json" <<'JSON'
{"ModelId": 620001, "ModelName": "Lokr SM", "ModelDescription": "", "Nsfw": false, "Tags": ["graphite"],
 "ModelType": "LORA", "VersionId": 620101, "VersionName": "v2", "BaseModel": "SD 1.5",
 "ImportedAt": "2024-05-01T10:00:00+00:00", "Hashes": {"BLAKE3": "00"}, "TrainedWords": ["grphte"]}
JSON
echo '{"civitai": [' >"$tmp/mig/broken.metadata.json"
expect_rc 0 "a folder with Lora Manager and StabilityMatrix sidecars" "$MOOD" import --offline "$tmp/mig" --json
check "read with their LoRAs; only the damaged one skipped" py '
import json,sys; d=json.load(open(sys.argv[1]))
s={x["file"].rsplit("/",1)[1]:x["reason"] for x in d["skipped"]}
assert s=={"broken.metadata.json": "not a JSON object"}, s
n={x["name"]:x["sidecars"] for x in d["imported"]}
assert n=={"lm": 1, "sm": 1, "broken": 0}, n' "$tmp/out"
expect_rc 0 "show lm" "$MOOD" show lm --json
check "trigger words, weight, notes, tags and the Civitai link of .metadata.json" py '
import json,sys; d=json.load(open(sys.argv[1])); s=d["adapters"][0]["sources"][0]
assert d["trigger_words"]=="wtrclr, soft wash" and d["weight"]==0.65 and d["notes"]=="keep it soft", d
assert d["tags"]==["soft","watercolor"], d["tags"]
assert (s["model_id"],s["version_id"],s["model_name"])==(610001,610101,"Loha LM"), s
assert s["air"]=="urn:air:sd1:lora:civitai:610001@610101" and s["civitai_info"]["notes"]=="keep it soft", s' "$tmp/out"
expect_rc 0 "show sm" "$MOOD" show sm --json
check "trigger words, tags and the Civitai link of .cm-info.json" py '
import json,sys; d=json.load(open(sys.argv[1])); s=d["adapters"][0]["sources"][0]
assert d["trigger_words"]=="grphte" and d["tags"]==["graphite"], d
assert (s["model_id"],s["version_id"],s["version_name"],s["base_model"])==(620001,620101,"v2","SD 1.5"), s' "$tmp/out"
cp "$tmp/mig/sm.safetensors" "$tmp/mig/sm_copy.safetensors"
echo '{"civitai": {"trainedWords": ["copyword"]}}' >"$tmp/mig/sm_copy.metadata.json"
expect_rc 0 "a copy of a stored file with a .metadata.json" "$MOOD" import --offline "$tmp/mig/sm_copy.safetensors"
check "its sidecar named as not making the style" grep -q "its sidecars' (sm_copy.metadata.json) trigger words" "$tmp/err"
expect_rc 0 "a pack of both" "$MOOD" pack export lm sm -o "$tmp/mig.moodpack"
expect_rc 0 "imported elsewhere" env MOOD_HOME="$tmp/h-mig2" "$MOOD" pack import "$tmp/mig.moodpack"
expect_rc 0 "show lm there" env MOOD_HOME="$tmp/h-mig2" "$MOOD" show lm --json
check "the pack kept them" py '
import json,sys; d=json.load(open(sys.argv[1])); s=d["adapters"][0]["sources"][0]
assert d["trigger_words"]=="wtrclr, soft wash" and d["weight"]==0.65 and d["notes"]=="keep it soft", d
assert d["tags"]==["soft","watercolor"] and (s["model_id"],s["version_id"])==(610001,610101), (d["tags"], s)' "$tmp/out"
# style export gives each record back in a shape its reader takes: Lora Manager's as the Civitai
# record it holds (NAME.civitai.info), StabilityMatrix's under its own name; imported again, both
# styles keep their Civitai link
expect_rc 0 "export both" "$MOOD" style export lm sm -o "$tmp/mig-out"
check "Lora Manager's Civitai record as .civitai.info" py '
import json,sys; d=json.load(open(sys.argv[1])); assert (d["modelId"],d["id"])==(610001,610101), d' "$tmp/mig-out/lm.civitai.info"
check "StabilityMatrix's as .cm-info.json" py '
import json,sys; d=json.load(open(sys.argv[1])); assert (d["ModelId"],d["VersionId"])==(620001,620101), d' "$tmp/mig-out/sm.cm-info.json"
check "no StabilityMatrix record written as a Civitai one" test ! -e "$tmp/mig-out/sm.civitai.info"
expect_rc 0 "the export imported" env MOOD_HOME="$tmp/h-mig3" "$MOOD" import --offline "$tmp/mig-out"
for s in lm:610001 sm:620001; do
    check "${s%%:*} keeps its Civitai link" test "$(MOOD_HOME=$tmp/h-mig3 "$MOOD" show "${s%%:*}" --json | py '
import json,sys; d=json.load(sys.stdin); print([x["model_id"] for x in d["adapters"][0]["sources"] if x["model_id"]][0])')" = "${s#*:}"
done
# a Lora Manager sidecar whose own sha256 is another file's describes that file: left out; ids
# that are no Civitai ids (1e30, -5) are none
mkdir -p "$tmp/mig4"
cp "$FIX/kohya/sd1_lora.safetensors" "$tmp/mig4/other.safetensors"
cp "$FIX/lycoris/locon.safetensors" "$tmp/mig4/odd.safetensors"
cat >"$tmp/mig4/other.metadata.json" <<'JSON'
{"sha256": "0000000000000000000000000000000000000000000000000000000000000000", "notes": "not mine",
 "civitai": {"id": 710005, "modelId": 700005, "trainedWords": ["wrongword"]}}
JSON
echo '{"civitai": {"id": 1e30, "modelId": -5, "trainedWords": "oddword"}, "usage_tips": "{strength"}' >"$tmp/mig4/odd.metadata.json"
cp "$FIX/lycoris/loha.safetensors" "$tmp/mig4/smwords.safetensors"
echo '{"ModelId": 5, "VersionId": 6, "TrainedWords": "one word, two words"}' >"$tmp/mig4/smwords.cm-info.json"
expect_rc 0 "import them" env MOOD_HOME="$tmp/h-mig4" "$MOOD" import --offline "$tmp/mig4"
check "says the sidecar describes another file" grep -q "other.metadata.json: sidecar skipped: it describes another file" "$tmp/err"
check "says usage_tips is no JSON" grep -q "odd.metadata.json: usage_tips is not a JSON object: its strength left out" "$tmp/err"
check "nothing of it kept" test "$(MOOD_HOME=$tmp/h-mig4 "$MOOD" show other --json | py '
import json,sys; d=json.load(sys.stdin); print(d["trigger_words"], d["notes"], [x["model_id"] for x in d["adapters"][0]["sources"]])')" = "None None [None]"
check "StabilityMatrix trigger words as one string" test "$(MOOD_HOME=$tmp/h-mig4 "$MOOD" show smwords --json | py '
import json,sys; print(json.load(sys.stdin)["trigger_words"])')" = "one word, two words"
check "no garbage ids" test "$(MOOD_HOME=$tmp/h-mig4 "$MOOD" show odd --json | py '
import json,sys; d=json.load(sys.stdin); print(d["trigger_words"], [(x["model_id"], x["version_id"]) for x in d["adapters"][0]["sources"]])')" = "oddword [(None, None)]"

# --- an import of a copy of a stored file while 'mood rm' removes its style: the import makes
# the style again or says it is there, never a raw SQLite error (a race: each round may or may not
# interleave; 20 rounds failed at least once in most runs before the fix) ---
export MOOD_HOME=$tmp/h-race
mkdir -p "$tmp/race"
cp "$FIX/lycoris/loha.safetensors" "$tmp/race/orig.safetensors"
cp "$FIX/lycoris/loha.safetensors" "$tmp/race/copy.safetensors"
race_failed=0
for _ in $(seq 20); do
    "$MOOD" import --offline "$tmp/race/orig.safetensors" >/dev/null 2>&1
    "$MOOD" rm orig >/dev/null 2>&1 &
    rm_pid=$!
    "$MOOD" import --offline "$tmp/race/copy.safetensors" >/dev/null 2>"$tmp/race/err" || race_failed=1
    wait "$rm_pid"
    [ $race_failed = 1 ] && break
    "$MOOD" rm orig >/dev/null 2>&1
    "$MOOD" rm copy >/dev/null 2>&1
done
check "no import failed racing rm" test $race_failed = 0
[ $race_failed = 1 ] && cat "$tmp/race/err" >&2
expect_rc 0 "doctor finds the registry clean" "$MOOD" doctor

# --- a .civitai.info sidecar's description is Civitai's HTML: stored as text ---
export MOOD_HOME=$tmp/h-html
mkdir -p "$tmp/html"
cp "$FIX/lycoris/loha.safetensors" "$tmp/html/grainy.safetensors"
echo '{"id": 7, "modelId": 8, "nsfwLevel": 4, "model": {"name": "Grainy", "description": "<p>Film <b>grain</b> &amp; warm<br>tones</p>"}}' \
    >"$tmp/html/grainy.civitai.info"
expect_rc 0 "import with an HTML description" "$MOOD" import --offline "$tmp/html/grainy.safetensors"
expect_rc 0 "show it" "$MOOD" show grainy --json
check "as text" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["description"]=="Film grain & warm tones", d["description"]' "$tmp/out"
check "the sidecar's NSFW level kept, as a Civitai lookup keeps it" py '
import json,sys; d=json.load(open(sys.argv[1])); assert [s["nsfw_level"] for s in d["adapters"][0]["sources"]]==[4], d["adapters"][0]["sources"]' "$tmp/out"

# --- a sidecar's Civitai record for another base family than the file's: kept, with a warning
# naming both, on stderr and in --json's warnings; none when they agree (Pony is SDXL) or
# Civitai's base model is none mood knows ---
export MOOD_HOME=$tmp/h-base
mkdir -p "$tmp/base"
cp "$MOOD_SOURCE/examples/loras/inkwash.safetensors" "$tmp/base/inkwash.safetensors"
cp "$FIX/kohya/sdxl_lora.safetensors" "$tmp/base/pony.safetensors"
cp "$FIX/kohya/sd1_lora.safetensors" "$tmp/base/flux.safetensors"
echo '{"id": 11, "modelId": 12, "baseModel": "SDXL 1.0"}' >"$tmp/base/inkwash.civitai.info"
echo '{"civitai": {"id": 13, "baseModel": "Pony"}}' >"$tmp/base/pony.metadata.json"
echo '{"VersionId": 14, "BaseModel": "Flux.1 D"}' >"$tmp/base/flux.cm-info.json"
expect_rc 0 "import LoRAs whose sidecars name base models" "$MOOD" import --offline "$tmp/base" --json
check "inkwash warned of, on stderr and in --json; it stays sd1" py '
import json,sys; d=json.load(open(sys.argv[1])); e=open(sys.argv[2]).read().splitlines()
want=sys.argv[3] + "/inkwash.safetensors: Civitai lists it for SDXL 1.0 (baseModel), but the file is an SD 1.x LoRA (from its modelspec.architecture); mood uses it as SD 1.x"
assert d.get("warnings")==[want], d
assert [l for l in e if "Civitai lists" in l]==["mood: warning: " + want], e
assert {i["name"]:i["family"] for i in d["imported"]}=={"flux":"sd1","inkwash":"sd1","pony":"sdxl"}, d' \
    "$tmp/out" "$tmp/err" "$tmp/base"
expect_rc 0 "show inkwash" "$MOOD" show inkwash
check "show: its family, and the base Civitai lists it for" py '
import sys; t=open(sys.argv[1]).read()
assert "family      sd1 (decided by modelspec.architecture)" in t and "inkwash.safetensors  Civitai: for SDXL 1.0" in t, t' "$tmp/out"
expect_rc 0 "a pack of it" "$MOOD" pack export inkwash -o "$tmp/base.moodpack"
expect_rc 0 "the pack imported elsewhere" env MOOD_HOME="$tmp/h-base2" "$MOOD" pack import "$tmp/base.moodpack"
check "warned of there too" grep -q "inkwash.safetensors: Civitai lists it for SDXL 1.0 (baseModel), but the file is an SD 1.x LoRA" "$tmp/err"

# --- rm of several names, one mistyped: none removed ---
export MOOD_HOME=$tmp/h-rm
expect_rc 0 "two styles" "$MOOD" import --offline "$FIX/lycoris/loha.safetensors" "$FIX/lycoris/lokr.safetensors"
expect_rc 1 "rm with a mistyped name among others" "$MOOD" rm loha nosuchstyle lokr
check "names the mistyped one, and that nothing was removed" grep -q "nothing removed: no style named 'nosuchstyle'" "$tmp/err"
expect_rc 0 "the first is still there" "$MOOD" show loha

# --- readers answer while another process is inside a long write (WAL lets them through): every
# open asked for the write lock, so list, show and search waited behind it, up to 30 s. The
# writer holds the lock until the checks are done (at most 20 s); a reader that waited for it
# would be cut off by its 3 s timeout, and a writer command run then must still be waiting ---
python3 - "$MOOD_HOME/registry.db" <<'PY' &
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE styles SET notes = 'writing' WHERE name = 'loha'")
open(sys.argv[1] + ".held", "w").close()
end = time.time() + 20
while not os.path.exists(sys.argv[1] + ".done") and time.time() < end:
    time.sleep(0.05)
db.execute("ROLLBACK")
PY
writer=$!
for _ in $(seq 100); do [ -e "$MOOD_HOME/registry.db.held" ] && break; sleep 0.05; done
check "the writer holds the write lock" test -e "$MOOD_HOME/registry.db.held"
expect_rc 0 "list beside a writer" timeout 3 "$MOOD" list
expect_rc 0 "show beside a writer" timeout 3 "$MOOD" show loha
expect_rc 0 "search beside a writer" timeout 3 "$MOOD" search lokr
expect_rc 124 "a writer command waits for the lock meanwhile" timeout 1 "$MOOD" tag loha +busy
touch "$MOOD_HOME/registry.db.done"
wait "$writer"
check "the writer ended well" test $? = 0
rm -f "$MOOD_HOME/registry.db.held" "$MOOD_HOME/registry.db.done"
expect_rc 0 "show after the writer" "$MOOD" show loha --json
check "its write rolled back, the waiting tag never made" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["notes"] != "writing" and "busy" not in d["tags"], d' "$tmp/out"

# --- a damaged search index: search says doctor --fix rebuilds it (it said "restore registry.db
# from a backup, or move it away", which loses every tag and template for nothing)
py 'import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.execute("DELETE FROM styles_fts_data WHERE id > 10"); d.commit()' "$MOOD_HOME/registry.db"
expect_rc 2 "search on a damaged index" "$MOOD" search lokr
check "points to doctor --fix" grep -q "the registry's search index is damaged .*'mood doctor --fix' rebuilds the index" "$tmp/err"
expect_rc 1 "doctor --fix rebuilds it" "$MOOD" doctor --fix
expect_rc 0 "search again" "$MOOD" search lokr
check "finds it" grep -q "^lokr " "$tmp/out"

finish
