#!/usr/bin/env bash
# test_registry_utf8.sh: text that enters the registry is UTF-8, so every --json report and pack
# manifest stays valid JSON. Sidecars written on Windows (Windows-1252 .txt and .json, a UTF-8
# byte-order mark) are imported with their text converted, and so are file names in
# Windows-1252 (in the registry and in import --json); text typed in another encoding (tag,
# style name, --trigger, --template, --negative, --description) is refused with exit 1, naming
# the argument, before anything is imported.
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
u8=$tmp/u8
mkdir -p "$u8"
cp "$FIX/kohya/sd1_lora.safetensors" "$u8/latin1.safetensors"
printf 'caf\xe9 style, ink\n' >"$u8/latin1.txt"
printf '{"activation text": "\x93sumi\x94", "notes": "5\x80 on Civitai"}' >"$u8/latin1.json"
printf '\xef\xbb\xbf{"id": 7, "trainedWords": ["na\xc3\xafve"]}' >"$u8/latin1.civitai.info"
# strict: python refuses what is not UTF-8, where cJSON would pass it through
valid_json() { python3 -c 'import json,sys; json.loads(open(sys.argv[1],"rb").read().decode("utf-8"))' "$1"; }

expect_rc 0 "import Windows-1252 sidecars" "$MOOD" import "$u8/latin1.safetensors" --json
check "import --json is valid" valid_json "$tmp/out"
check "a warning names the converted sidecar" grep -q "latin1.txt: not UTF-8; read as Windows-1252" "$tmp/err"
for cmd in "list --json" "show latin1 --json" "search caf --json"; do
    # shellcheck disable=SC2086
    expect_rc 0 "$cmd" "$MOOD" $cmd
    check "$cmd is valid JSON" valid_json "$tmp/out"
done
check "text converted, not dropped" python3 -c '
import json,sys; d=json.loads(open(sys.argv[1],"rb").read().decode("utf-8"))
assert d[0]["trigger_words"]=="\u201csumi\u201d, na\u00efve, caf\u00e9 style, ink", d' "$tmp/out"

# a file name made on Windows: import --json and show --json stay valid
cp "$FIX/kohya/sd1_lora.safetensors" "$u8/caf$(printf '\xe9').safetensors"
expect_rc 0 "import a Windows-1252 file name" "$MOOD" import "$u8/caf$(printf '\xe9').safetensors" --json
check "import --json is valid" valid_json "$tmp/out"
check "the name as UTF-8" python3 -c '
import json,sys; d=json.loads(open(sys.argv[1],"rb").read().decode("utf-8"))
i=d["already"][0]; assert i["file"].endswith("/caf\u00e9.safetensors") and i["name"]=="latin1", d' "$tmp/out"
cp "$FIX/kohya/sd1_locon_fp16.safetensors" "$u8/na$(printf '\xef')ve.safetensors"
expect_rc 0 "import another" "$MOOD" import "$u8/na$(printf '\xef')ve.safetensors" --json
check "wanted is UTF-8" python3 -c '
import json,sys; d=json.loads(open(sys.argv[1],"rb").read().decode("utf-8"))
i=d["imported"][0]; assert i["wanted"]=="na\u00efve" and i["name"]=="na_ve", d' "$tmp/out"
expect_rc 0 "show it" "$MOOD" show na_ve --json
check "show --json is valid" valid_json "$tmp/out"
expect_rc 0 "rm it" "$MOOD" rm na_ve

# ----- typed text
expect_rc 1 "tag in Latin-1" "$MOOD" tag latin1 "+sch$(printf '\xf6')n"
check "the tag is named" grep -q "tag '+sch\\\\xF6n': not valid UTF-8" "$tmp/err"
expect_rc 0 "tag in UTF-8" "$MOOD" tag latin1 "+schön"
expect_rc 1 "--template in Latin-1" "$MOOD" style create mix --lora "$FIX/kohya/sd1_locon_fp16.safetensors" \
    --lora latin1 --template "{prompt}, caf$(printf '\xe9')"
check "--template is named" grep -q "^mood: error: --template '{prompt}, caf\\\\xE9': not valid UTF-8" "$tmp/err"
expect_rc 0 "list" "$MOOD" list --json
check "refused before importing the --lora file" python3 -c '
import json,sys; assert [s["name"] for s in json.load(open(sys.argv[1]))]==["latin1"]' "$tmp/out"
for opt in --trigger --negative --description; do
    expect_rc 1 "style edit $opt in Latin-1" "$MOOD" style edit latin1 "$opt" "fl$(printf '\xfb')"
    check "$opt is named" grep -q -- "$opt 'fl\\\\xFB'" "$tmp/err"
done
expect_rc 1 "style name in Latin-1" "$MOOD" style create "sch$(printf '\xf6')n" --lora latin1
check "NAME is named" grep -q "NAME 'sch\\\\xF6n': not valid UTF-8" "$tmp/err"
expect_rc 0 "show after the refusals" "$MOOD" show latin1 --json
check "show is valid JSON, with the UTF-8 tag" python3 -c '
import json,sys; d=json.loads(open(sys.argv[1],"rb").read().decode("utf-8"))
assert d["tags"]==["sch\u00f6n"] and d["negative"] is None, d' "$tmp/out"

# ----- a pack made of it: its manifest is valid JSON too
expect_rc 0 "pack export" "$MOOD" pack export latin1 -o "$tmp/p.moodpack"
if command -v zstd >/dev/null && tar --help 2>/dev/null | grep -q -- --zstd; then
    zstd -dc "$tmp/p.moodpack" | tar xf - -C "$tmp" manifest.json
    check "pack manifest is valid JSON" valid_json "$tmp/manifest.json"
    check "with the converted text" grep -q "café style" "$tmp/manifest.json"
fi
expect_rc 0 "pack import into another registry" env MOOD_HOME="$tmp/home2" "$MOOD" pack import "$tmp/p.moodpack"
expect_rc 0 "show there" env MOOD_HOME="$tmp/home2" "$MOOD" show latin1 --json
check "same text there" python3 -c '
import json,sys; d=json.loads(open(sys.argv[1],"rb").read().decode("utf-8"))
assert d["trigger_words"].endswith("caf\u00e9 style, ink"), d' "$tmp/out"

finish
