#!/usr/bin/env bash
# test_registry_utf8.sh: text that enters the registry is UTF-8, so every --json report and pack
# manifest stays valid JSON. Sidecars written on Windows (Windows-1252 .txt and .json, a UTF-8
# byte-order mark) are imported with their text converted, and so are file names in
# Windows-1252 (in the registry and in import --json); text typed in another encoding (tag,
# style name, --trigger, --template, --negative, --description) is refused with exit 1, naming
# the argument, before anything is imported. --json writes C1 controls, DEL and U+2028/U+2029
# escaped (\u0085), never raw.
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
i=d["imported"][0]; assert i["wanted"]=="na\u00efve" and i["name"]=="naive", d' "$tmp/out"
expect_rc 0 "show it" "$MOOD" show naive --json
check "show --json is valid" valid_json "$tmp/out"
expect_rc 0 "rm it" "$MOOD" rm naive

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
# tags are one tag in any case, beyond ASCII too (SQLite's NOCASE folds only A-Z; a final sigma
# is a sigma; ß is ss and ﬁ is fi, as Unicode's case folding has them), composed or not (ö typed
# as o and its accent: NFC)
expect_rc 0 "the tag in other cases" "$MOOD" tag latin1 "+SCHÖN" "+Schön" "+Ölbild" "+ölbild" \
    "+οδός" "+ΟΔΌΣ" "+Scho$(printf '\xcc\x88')n" "+straße" "+STRASSE" "+Strasse" "+ﬁre" "+FIRE"
expect_rc 0 "show" "$MOOD" show latin1 --json
check "one tag each, as first written" python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
assert sorted(d["tags"])==["sch\u00f6n", "stra\u00dfe", "\u00d6lbild", "\u03bf\u03b4\u03cc\u03c2",
                           "\ufb01re"], d["tags"]' "$tmp/out"
expect_rc 0 "remove straße as STRASSE" "$MOOD" tag latin1 -STRASSE -fire
expect_rc 0 "list --tag in another case" "$MOOD" list --tag ÖLBILD
check "finds it" grep -q "^latin1 " "$tmp/out"
expect_rc 0 "remove in another case" "$MOOD" tag latin1 -ÖLBILD
expect_rc 0 "show" "$MOOD" show latin1 --json
check "removed" python3 -c '
import json,sys; assert json.load(open(sys.argv[1]))["tags"]==["sch\u00f6n", "\u03bf\u03b4\u03cc\u03c2"]' "$tmp/out"

# ----- characters JSON allows raw but terminals (C1: U+0085 is NEL, U+009B a CSI) and JavaScript
# (U+2028/U+2029 end its string literals) do not take as text: --json writes them as \uXXXX, DEL too
python3 - "$FIX/kohya/sd1_lora.safetensors" "$u8/c1.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["__metadata__"].update({"ss_output_name": "out\u0085put\u009b\u2028x\u2029y\x7fz",
                          "ss_tag_frequency": json.dumps({"1_a": {"ta\u0085g\u2028": 3}})})
nh = json.dumps(h, ensure_ascii=False).encode(); nh += b" " * (-len(nh) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(nh)) + nh + b[8 + n:])
PY
# escaped_json FILE: valid JSON holding the text exact, with no raw C1, DEL, U+2028 or U+2029
escaped_json() {
    python3 -c '
import json, re, sys
raw = open(sys.argv[1], "rb").read()
bad = re.findall(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]", raw)
assert not bad, bad
text = raw.decode("utf-8")
assert "\\u0085" in text and "\\u2028" in text, text[:300]
def walk(v):
    if isinstance(v, dict): return [x for k, w in v.items() for x in [k] + walk(w)]
    if isinstance(v, list): return [x for w in v for x in walk(w)]
    return [v]
got = [s for s in walk(json.loads(text)) if isinstance(s, str)]
assert "ta\u0085g\u2028" in got, "tag not exact"
if sys.argv[2:]: assert "out\u0085put\u009b\u2028x\u2029y\x7fz" in got, "ss_output_name not exact"' "$@"
}
expect_rc 0 "import a LoRA with C1 and U+2028 in its metadata" "$MOOD" import "$u8/c1.safetensors"
for cmd in "list --json" "search ta --json"; do
    # shellcheck disable=SC2086
    expect_rc 0 "$cmd" "$MOOD" $cmd
    check "$cmd escapes them" escaped_json "$tmp/out"
done
expect_rc 0 "show --json" "$MOOD" show c1 --json
check "show --json escapes them, metadata too" escaped_json "$tmp/out" metadata
expect_rc 0 "inspect --json" "$MOOD" inspect --no-hash --json "$u8/c1.safetensors"
check "inspect --json escapes them" escaped_json "$tmp/out" metadata
# a person's terminal gets them visible too (\uNNNN)
expect_rc 0 "inspect" "$MOOD" inspect --no-hash "$u8/c1.safetensors"
check "inspect shows U+2028/9 escaped" grep -q 'out\\u0085put\\u009b\\u2028x\\u2029y' "$tmp/out"
check "no raw U+2028 in human output" py 'import sys; assert "\u2028" not in open(sys.argv[1], encoding="utf-8").read()' "$tmp/out"
expect_rc 0 "rm it" "$MOOD" rm c1

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
