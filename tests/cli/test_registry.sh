#!/usr/bin/env bash
# test_registry.sh: the registry commands end to end (import, list, show, search, style create/
# edit, tag, rename, rm, doctor) in a registry under $tmp: --json parsed with python3, exit codes,
# two imports running at once, and imports killed with SIGKILL at random moments, after which
# `mood doctor` must find the registry clean. What import leaves alone: sidecars linking out of the
# LoRA's folder, previews that are no image, named pipes (under `timeout`: a regression fails
# instead of hanging), folders reached again through a link loop. A read-only registry.db can be
# read, not changed, and works again once writable.
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
SRC=${MOOD_SOURCE:-$(dirname "$0")/../..}
lib=$tmp/loras
mkdir -p "$lib/sub"
cp "$SRC/examples/loras/inkwash.safetensors" "$SRC/examples/loras/film-grain.safetensors" "$lib/"
cp "$FIX/kohya/sdxl_lora.safetensors" "$lib/sub/"
cp "$FIX/kohya/sd2_locon.safetensors" "$lib/sub/Old Style!.safetensors"
echo '{"activation text": "ink wash, sumi-e", "preferred weight": 0.8, "notes": "n"}' >"$lib/inkwash.json"
# a 1x1 PNG, and a text file that only has the name of one
echo 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==' |
    base64 -d >"$lib/inkwash.preview.png"
printf 'not really a png' >"$lib/film-grain.preview.png"
echo "readme" >"$lib/README.md"
echo "stray" >"$lib/notes.xyz"
printf 'AppleDouble' >"$lib/._inkwash.safetensors" # macOS's copy junk: hidden, listed as skipped
mkdir -p "$lib/.cache" && printf 'x' >"$lib/.cache/hidden.txt"

# ----- import
expect_rc 0 "import a folder" "$MOOD" import "$lib" --json
check "import --json: 4 imported, renamed, sidecars" py '
import json,sys; d=json.load(open(sys.argv[1]))
names=sorted(i["name"] for i in d["imported"]); assert names==["Old_Style","film-grain","inkwash","sdxl_lora"], names
ink=[i for i in d["imported"] if i["name"]=="inkwash"][0]; assert ink["n_previews"]==1 and ink["sidecars"]==1
old=[i for i in d["imported"] if i["name"]=="Old_Style"][0]; assert old["renamed"] and old["wanted"]=="Old Style!"
fg=[i for i in d["imported"] if i["name"]=="film-grain"][0]; assert fg["n_previews"]==0
sk=sorted((s["file"].rsplit("/",1)[1], s["reason"]) for s in d["skipped"])
assert [f for f, _ in sk]==["._inkwash.safetensors","film-grain.preview.png","notes.xyz"], sk
assert sk[0][1].startswith("a hidden file"), sk
assert sk[1][1]=="not a PNG, JPEG or WebP image", sk
assert d["failed"]==[]' "$tmp/out"
check "the preview is named in a warning" grep -q "film-grain.preview.png: sidecar skipped" "$tmp/err"
expect_rc 0 "same file again" "$MOOD" import "$lib/inkwash.safetensors"
check "says already there" grep -q "already in the registry as inkwash" "$tmp/out"
cp "$lib/inkwash.safetensors" "$tmp/model.ckpt"
expect_rc 1 "a pickle is refused" "$MOOD" import "$tmp/model.ckpt"
check "pickle message" grep -q "pickle files (.ckpt) are not loaded" "$tmp/err"
cp "$FIX/bases/sd1_base.safetensors" "$tmp/base.safetensors"
expect_rc 1 "a checkpoint is refused" "$MOOD" import "$tmp/base.safetensors"
check "checkpoint message" grep -q "this is a checkpoint, not a LoRA" "$tmp/err"
expect_rc 2 "a missing file" "$MOOD" import "$tmp/nope.safetensors"
expect_rc 1 "import without paths" "$MOOD" import

# ----- what import leaves alone (in a registry of its own)
h2=$tmp/home2 ev=$tmp/evil
mkdir -p "$ev" "$tmp/elsewhere"
cp "$SRC/examples/loras/inkwash.safetensors" "$ev/evil.safetensors"
echo "secret words" >"$tmp/elsewhere/secret.txt"
ln -s /etc/passwd "$ev/evil.preview.png"
ln -s "$tmp/elsewhere/secret.txt" "$ev/evil.txt"
ln -s ../../../../../../../../../../etc/passwd "$ev/evil.json"
expect_rc 0 "import with links out of its folder" env MOOD_HOME="$h2" "$MOOD" import "$ev/evil.safetensors" --json
check "links out of the folder are skipped, not read" py '
import json,sys; d=json.load(open(sys.argv[1]))
i=d["imported"][0]; assert i["n_previews"]==0 and i["sidecars"]==0, i
sk=sorted((s["file"].rsplit("/",1)[1], s["reason"]) for s in d["skipped"])
assert [f for f, _ in sk]==["evil.json","evil.preview.png","evil.txt"], sk
assert all("outside the LoRA" in r for _, r in sk), sk' "$tmp/out"
check "named in warnings" grep -q "evil.preview.png: sidecar skipped: a link to /etc/passwd" "$tmp/err"
expect_rc 0 "show evil" env MOOD_HOME="$h2" "$MOOD" show evil --json
check "nothing of /etc/passwd stored" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["previews"]==[] and "secret" not in (d["trigger_words"] or ""), d' "$tmp/out"

fifo=$tmp/fifo
mkdir -p "$fifo"
cp "$SRC/examples/loras/film-grain.safetensors" "$fifo/ok.safetensors"
mkfifo "$fifo/pipe.safetensors" "$fifo/ok.txt"
expect_rc 1 "import a FIFO" timeout -k 5 30 env MOOD_HOME="$h2" "$MOOD" import "$fifo/pipe.safetensors"
check "FIFO message" grep -q "pipe.safetensors: a named pipe (FIFO), not a regular file" "$tmp/err"
expect_rc 0 "import a folder holding FIFOs" timeout -k 5 30 env MOOD_HOME="$h2" "$MOOD" import "$fifo" --json
check "FIFOs skipped once each, the LoRA imported" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [i["name"] for i in d["imported"]]==["ok"] and d["imported"][0]["sidecars"]==0, d
assert sorted(s["file"].rsplit("/",1)[1] for s in d["skipped"])==["ok.txt","pipe.safetensors"], d
assert d["failed"]==[]' "$tmp/out"

civ=$tmp/civ
mkdir -p "$civ/Lora" "$civ/sub/deeper"
cp "$SRC/examples/loras/inkwash.safetensors" "$civ/Lora/a.safetensors"
ln -s ../Lora/a.safetensors "$civ/sub/alink.safetensors"
ln -s .. "$civ/sub/deeper/loop"
ln -s self.safetensors "$civ/self.safetensors"
expect_rc 2 "import a folder with a link loop" timeout -k 5 60 env MOOD_HOME="$tmp/home3" "$MOOD" import "$civ" --json
check "each folder searched once, the error says what it is" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [i["file"].rsplit("/",1)[1] for i in d["imported"]]==["a.safetensors"], d
assert [i["file"].rsplit("/",1)[1] for i in d["already"]]==["alink.safetensors"], d
assert [s["file"].rsplit("/",1)[1] for s in d["skipped"]]==["loop"], d
f=d["failed"]; assert len(f)==1 and f[0]["file"].endswith("self.safetensors"), f
assert "symbolic links" in f[0]["error"], f' "$tmp/out"

# ----- list / show / search
expect_rc 0 "list --json" "$MOOD" list --json
check "list has 4 styles" py 'import json,sys; assert len(json.load(open(sys.argv[1])))==4' "$tmp/out"
expect_rc 0 "list --base sdxl" "$MOOD" list --base sdxl --json
check "only the sdxl one" py '
import json,sys; d=json.load(open(sys.argv[1])); assert [s["name"] for s in d]==["sdxl_lora"], d' "$tmp/out"
expect_rc 1 "list --base bad" "$MOOD" list --base sd9
expect_rc 0 "show --json" "$MOOD" show inkwash --json
check "show has everything" py '
import json,sys,os; d=json.load(open(sys.argv[1]))
assert d["trigger_words"]=="ink wash, sumi-e" and d["weight"]==0.8
a=d["adapters"][0]; assert a["family"]=="sd1" and a["algorithm"]=="lora" and a["rank"]==4
assert len(a["sha256"])==64 and len(a["autov3_short"])==12 and os.path.exists(a["path"])
assert a["sources"][0]["kind"]=="file" and a["sources"][0]["location"].endswith("inkwash.safetensors")
assert os.path.exists(d["previews"][0]["path"]) and d["previews"][0]["media_type"]=="image/png"' "$tmp/out"
expect_rc 0 "show (text)" "$MOOD" show INKWASH
check "show text has AutoV3" grep -q "AutoV3" "$tmp/out"
expect_rc 1 "show unknown" "$MOOD" show nothing-here
expect_rc 1 "show a part of a name" "$MOOD" show inkw
check "suggests the style" grep -q "^did you mean: inkwash?$" "$tmp/err"
expect_rc 1 "show a file's name" "$MOOD" show inkwash.safetensors
check "suggests its style" grep -q "^did you mean: inkwash?$" "$tmp/err"
expect_rc 2 "inspect a style's name" "$MOOD" inspect inkwash
check "says it is a style" grep -q "'inkwash' is a style of the registry: 'mood show inkwash'" "$tmp/err"
expect_rc 0 "a description of two lines" "$MOOD" style edit inkwash --description $'sumi-e\nmonochrome'
expect_rc 0 "show" "$MOOD" show inkwash
check "the second line under the first" grep -q "^              monochrome$" "$tmp/out"
check "how to use it, at its weight" grep -q "^Use: *<lora:inkwash:0.8> in a prompt, or --style inkwash:0.8$" "$tmp/out"
expect_rc 0 "description back" "$MOOD" style edit inkwash --description ""
expect_rc 0 "search by prefix" "$MOOD" search sumi --json
check "search finds inkwash" py '
import json,sys; assert [s["name"] for s in json.load(open(sys.argv[1]))]==["inkwash"]' "$tmp/out"
# typed with an input method left in full-width mode: read as ASCII too, word by word
expect_rc 0 "search in full-width letters" "$MOOD" search "ｓｕｍｉ　ｉｎｋ" --json
check "finds inkwash as well" py '
import json,sys; assert [s["name"] for s in json.load(open(sys.argv[1]))]==["inkwash"]' "$tmp/out"

# ----- styles, tags, rename, rm
expect_rc 0 "style create" "$MOOD" style create ink-film --lora inkwash:0.8 --lora "$lib/film-grain.safetensors:0.3:0.2" --template "{prompt}, ink" --weight 0.9
expect_rc 1 "style create, taken name" "$MOOD" style create INK-FILM --lora inkwash
check "taken name suggests" grep -q "try 'INK-FILM-2'" "$tmp/err"
expect_rc 1 "style create, bad name" "$MOOD" style create "ink film" --lora inkwash
expect_rc 1 "style create, unknown lora" "$MOOD" style create x --lora no-such-style
# a failed create leaves the registry as it was: the file it imported for it goes again
cp "$FIX/lycoris/sdxl_locon.safetensors" "$tmp/xl.safetensors"
expect_rc 1 "style create of an SDXL file and an SD1 style" "$MOOD" style create mixed \
    --lora "$tmp/xl.safetensors" --lora inkwash
check "says it removed the import again" grep -q "removed style xl again" "$tmp/err"
expect_rc 1 "no style xl left" "$MOOD" show xl
# style create NAME --lora NAME.safetensors: the file's own style moves aside for NAME
cp "$FIX/lycoris/sdxl_locon.safetensors" "$tmp/s6.safetensors"
expect_rc 0 "style create s6 of s6.safetensors" "$MOOD" style create s6 --lora "$tmp/s6.safetensors:0.5"
check "the file's style is s6-2" grep -q "the file's own style is named s6-2" "$tmp/err"
check "s6 holds it at 0.5" py 'import json,sys,subprocess; d=json.loads(subprocess.check_output([sys.argv[1],"show","s6","--json"])); assert d["adapters"][0]["unet"]==0.5, d["adapters"]' "$MOOD"
expect_rc 0 "rm them" "$MOOD" rm s6 s6-2
# a valid name is suggested as it is when free, whatever its length (100 at most)
long=$(printf 'n%.0s' $(seq 100))
expect_rc 0 "import under a 100-character stem" sh -c 'cp "$1" "$2/$3.safetensors" && "$0" import "$2/$3.safetensors" --offline' "$MOOD" "$FIX/peft/sdxl_peft_plain.safetensors" "$tmp" "$long"
check "named in full" py 'import json,sys,subprocess; d=json.loads(subprocess.check_output([sys.argv[1],"show",sys.argv[2],"--json"])); assert d["name"]==sys.argv[2]' "$MOOD" "$long"
expect_rc 0 "style edit" "$MOOD" style edit ink-film --negative "blurry" --trigger "ink, film"
expect_rc 1 "style edit with nothing to change" "$MOOD" style edit ink-film
check "says there is nothing to change" grep -q "nothing to change" "$tmp/err"
expect_rc 0 "style edit --weight 0.5" "$MOOD" style edit ink-film --weight 0.5
expect_rc 0 "style edit --weight \"\" (cleared)" "$MOOD" style edit ink-film --weight ""
check "weight cleared: null, as an imported style's (applied as 1)" py 'import json,sys,subprocess; d=json.loads(subprocess.check_output([sys.argv[1],"show","ink-film","--json"])); assert d["weight"] is None, d["weight"]' "$MOOD"
expect_rc 0 "tag" "$MOOD" tag ink-film +mono +painting
expect_rc 0 "untag" "$MOOD" tag ink-film -painting
# an option is no tag: "--json" was read as "remove tag -json" (exit 0, nothing said); it is the
# option for scripts now, as for style edit, rename and rm: the style afterwards
expect_rc 1 "tag --jsn" "$MOOD" tag ink-film --jsn
check "says tag takes only --json" grep -q "tag takes only --json" "$tmp/err"
expect_rc 1 "tag --json alone" "$MOOD" tag ink-film --json
py 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("UPDATE styles SET updated_at = \"2000-01-01T00:00:00Z\""); c.commit()' "$MOOD_HOME/registry.db"
expect_rc 0 "tag +x --json" "$MOOD" tag ink-film +x --json
check "the style's updated_at moved" py 'import json,sys; assert json.load(open(sys.argv[1]))["updated_at"] > "2000-01-01T00:00:00Z"' "$tmp/out"
check "prints the style with its tags" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["name"]=="ink-film" and "x" in d["tags"], d' "$tmp/out"
expect_rc 0 "tag --json -x (in any place)" "$MOOD" tag --json ink-film -x
check "without x" py 'import json,sys; assert "x" not in json.load(open(sys.argv[1]))["tags"]' "$tmp/out"
expect_rc 1 "style edit --json alone" "$MOOD" style edit ink-film --json
check "nothing to change" grep -q "nothing to change" "$tmp/err"
expect_rc 0 "style edit --weight 0.4 --json" "$MOOD" style edit ink-film --weight 0.4 --json
check "prints the style" py 'import json,sys; assert json.load(open(sys.argv[1]))["weight"]==0.4' "$tmp/out"
expect_rc 0 "weight back" "$MOOD" style edit ink-film --weight ""
expect_rc 0 "show ink-film" "$MOOD" show ink-film --json
check "composed style" py '
import json,sys; d=json.load(open(sys.argv[1]))
w=[(a["file_name"],a["unet"],a["te"]) for a in d["adapters"]]
assert w==[("inkwash.safetensors",0.8,0.8),("film-grain.safetensors",0.3,0.2)], w
assert d["tags"]==["mono"] and d["negative"]=="blurry" and d["template"]=="{prompt}, ink"' "$tmp/out"
expect_rc 0 "list --tag" "$MOOD" list --tag mono --json
check "tag filter" py 'import json,sys; assert [s["name"] for s in json.load(open(sys.argv[1]))]==["ink-film"]' "$tmp/out"
expect_rc 0 "list --tag with the '#' list shows" "$MOOD" list --tag '#MONO' --json
check "the same style" py 'import json,sys; assert [s["name"] for s in json.load(open(sys.argv[1]))]==["ink-film"]' "$tmp/out"
for t in "" "#" "##mono"; do
    expect_rc 1 "list --tag '$t'" "$MOOD" list --tag "$t"
    check "says what a tag is" grep -q "a tag is a word, after at most one '#'" "$tmp/err"
done
expect_rc 0 "several words are one query" "$MOOD" search ink wash --json
check "both words must match" py 'import json,sys; json.load(open(sys.argv[1]))' "$tmp/out"
expect_rc 0 "after --, a word may start with -" "$MOOD" search -- -ink
expect_rc 1 "no query" "$MOOD" search
check "says QUERY is missing" grep -q "missing QUERY" "$tmp/err"
expect_rc 1 "a query that is not UTF-8" "$MOOD" search $'\xff'
check "says so" grep -q "not valid UTF-8" "$tmp/err"
expect_rc 1 "a Civitai reference with --offline" "$MOOD" import civitai:128713 --offline
check "refused before any lookup" grep -q "civitai:128713 is looked up on Civitai, and --offline.* rules that out (drop --offline" "$tmp/err"
expect_rc 0 "search a tag" "$MOOD" search mon --json
check "search finds the tag" grep -q '"ink-film"' "$tmp/out"
# on a narrow terminal the table fits: a long name cut with "…", nothing past the width; piped,
# nothing is cut
expect_rc 0 "a long name" "$MOOD" style create a-very-long-style-name-that-goes-on-and-on --lora inkwash
if command -v script >/dev/null 2>&1; then
    script -qc "stty cols 24; '$MOOD' list" /dev/null >"$tmp/tty24" 2>&1
    check "a terminal narrower than the fixed columns gets each row's start" py '
import sys; lines = open(sys.argv[1], encoding="utf-8").read().replace("\r", "").splitlines()
assert lines and all(len(l) <= 24 for l in lines), [l for l in lines if len(l) > 24]' "$tmp/tty24"
    script -qc "stty cols 50; '$MOOD' list" /dev/null >"$tmp/tty" 2>&1
    check "cut to fit 50 columns" py '
import sys; lines = open(sys.argv[1], encoding="utf-8").read().replace("\r", "").splitlines()
assert any(l.startswith("a-very-lon\u2026 ") for l in lines), lines
assert all(len(l) <= 50 for l in lines), [l for l in lines if len(l) > 50]' "$tmp/tty"
fi
expect_rc 0 "list piped" "$MOOD" list
check "whole" grep -q "^a-very-long-style-name-that-goes-on-and-on " "$tmp/out"
expect_rc 0 "rm the long name" "$MOOD" rm a-very-long-style-name-that-goes-on-and-on
# names in the order people expect (numbers by value, case aside); newest first on request
for n in zz9 ZZ10 zz2; do MOOD_HOME=$tmp/order "$MOOD" style create $n --lora "$lib/inkwash.safetensors" >/dev/null; done
expect_rc 0 "list by name" env MOOD_HOME="$tmp/order" "$MOOD" list --json
check "zz2, zz9, ZZ10" py 'import json,sys; n=[s["name"] for s in json.load(open(sys.argv[1]))]; assert n[-3:]==["zz2","zz9","ZZ10"], n' "$tmp/out"
expect_rc 0 "list by creation" env MOOD_HOME="$tmp/order" "$MOOD" list --sort created --json
check "newest first" py 'import json,sys; n=[s["name"] for s in json.load(open(sys.argv[1]))]; assert n[:3]==["zz2","ZZ10","zz9"], n' "$tmp/out"
sleep 1 # times have seconds
expect_rc 0 "change zz9" env MOOD_HOME="$tmp/order" "$MOOD" tag zz9 +changed
expect_rc 0 "list by change" env MOOD_HOME="$tmp/order" "$MOOD" list --sort changed --json
check "the changed one first" py 'import json,sys; n=[s["name"] for s in json.load(open(sys.argv[1]))]; assert n[0]=="zz9", n' "$tmp/out"
expect_rc 1 "an unknown order" env MOOD_HOME="$tmp/order" "$MOOD" list --sort size
check "says the orders" grep -q "expected name, created or changed" "$tmp/err"
# list reads summary columns that triggers keep in sync (migration 3): they must follow edits
expect_rc 0 "list --json" "$MOOD" list --json
check "list summary" py '
import json,sys; d={s["name"]:s for s in json.load(open(sys.argv[1]))}["ink-film"]
assert d["tags"]==["mono"] and d["n_adapters"]==2 and d["family"]=="sd1" and d["rank"]==4, d' "$tmp/out"
expect_rc 0 "style edit loras" "$MOOD" style edit ink-film --lora "$lib/film-grain.safetensors:0.5"
expect_rc 0 "tag again" "$MOOD" tag ink-film +zeta
expect_rc 0 "list --json after edits" "$MOOD" list --json
check "list summary follows edits" py '
import json,sys; d={s["name"]:s for s in json.load(open(sys.argv[1]))}["ink-film"]
assert d["n_adapters"]==1 and d["tags"]==["mono","zeta"], d' "$tmp/out"
expect_rc 0 "untag zeta" "$MOOD" tag ink-film -zeta
expect_rc 0 "style edit loras back" "$MOOD" style edit ink-film --lora inkwash:0.8 --lora "$lib/film-grain.safetensors:0.3:0.2"
expect_rc 0 "rename --json" "$MOOD" rename ink-film ink_film --json
check "prints the style under its new name" py 'import json,sys; assert json.load(open(sys.argv[1]))["name"]=="ink_film"' "$tmp/out"
expect_rc 1 "rename to a bad name" "$MOOD" rename ink_film "a<b"
expect_rc 0 "rm inkwash (still used)" "$MOOD" rm inkwash
sha=$("$MOOD" show ink_film --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["adapters"][0]["sha256"])')
blob=$MOOD_HOME/blobs/sha256/${sha:0:2}/${sha:2}
check "blob kept while used" test -f "$blob"
expect_rc 1 "rm --json with an unknown name" "$MOOD" rm ink_film nosuch --json
check "nothing removed, said in the JSON" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["removed"]==[] and "nosuch" in d["error"], d' "$tmp/out"
expect_rc 0 "rm ink_film --json (named twice, in two cases)" "$MOOD" rm ink_film INK_film --json
check "says it removed ink_film" py 'import json,sys; assert json.load(open(sys.argv[1]))=={"removed":["ink_film"]}' "$tmp/out"
check "blob gone with its last user" test ! -e "$blob"

# ----- doctor
expect_rc 0 "doctor clean" "$MOOD" doctor --deep
mkdir -p "$MOOD_HOME/blobs/sha256/ee"
echo orphan >"$MOOD_HOME/blobs/sha256/ee/$(printf 'e%.0s' $(seq 62))"
expect_rc 1 "doctor finds an orphan" "$MOOD" doctor --json
check "orphan listed" py 'import json,sys; assert len(json.load(open(sys.argv[1]))["orphans"])==1' "$tmp/out"
expect_rc 1 "doctor --fix" "$MOOD" doctor --fix
expect_rc 0 "doctor clean after fix" "$MOOD" doctor

# ----- two imports at once
"$MOOD" import "$lib/inkwash.safetensors" "$FIX/kohya/sd1_lora.safetensors" >"$tmp/a.out" 2>&1 &
pa=$!
"$MOOD" import "$lib/inkwash.safetensors" "$FIX/kohya/sd1_locon_fp16.safetensors" >"$tmp/b.out" 2>&1 &
pb=$!
wait $pa; ra=$?
wait $pb; rb=$?
check "concurrent import A succeeds" test $ra -eq 0
check "concurrent import B succeeds" test $rb -eq 0
n=$("$MOOD" list --json | python3 -c 'import json,sys; print(sum(s["name"] in ("inkwash","sd1_lora","sd1_locon_fp16") for s in json.load(sys.stdin)))')
check "all three there once" test "$n" -eq 3
expect_rc 0 "doctor clean after concurrent imports" "$MOOD" doctor --deep

# ----- kill -9 at random moments
cp "$FIX/kohya/sdxl_locon.safetensors" "$tmp/victim.safetensors"
for i in 1 2 3 4 5 6 7 8; do
    "$MOOD" import "$tmp/victim.safetensors" >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '0.%03d' $((RANDOM % 20 + 1)))" # 1 to 20 ms: an import takes about 15
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    "$MOOD" doctor >"$tmp/doc.out" 2>&1
    rc=$?
    check "doctor clean after kill $i" test $rc -eq 0
    [ $rc -eq 0 ] || cat "$tmp/doc.out" >&2
    left=$(find "$MOOD_HOME/blobs/tmp" -name 'import-*' | wc -l)
    check "no temporary files after kill $i" test "$left" -eq 0
    "$MOOD" rm victim >/dev/null 2>&1
done
expect_rc 0 "import after the kills" "$MOOD" import "$tmp/victim.safetensors"
expect_rc 0 "doctor --deep at the end" "$MOOD" doctor --deep

# ----- a read-only registry.db: the reading commands work and write nothing (no clean-up, no
# -wal/-shm made with the database's read-only mode), the changing ones say it is read-only, and
# the registry works again once it is writable. Run as an ordinary user: root writes anyway.
ro=$tmp/ro
read_only_checks() {
    chmod 444 "$ro/registry.db"
    MOOD_HOME=$ro expect_rc 0 "list a read-only registry" as_user "$MOOD" list
    check "list shows its styles" grep -q "sd1_lora" "$tmp/out"
    MOOD_HOME=$ro expect_rc 0 "show in a read-only registry" as_user "$MOOD" show sd1_lora
    MOOD_HOME=$ro expect_rc 0 "search a read-only registry" as_user "$MOOD" search sd1
    MOOD_HOME=$ro expect_rc 0 "doctor on a read-only registry" as_user "$MOOD" doctor
    check "doctor: no problems" grep -q "no problems found" "$tmp/out"
    check "no -shm or -wal left with a read-only mode" test ! -e "$ro/registry.db-shm" -a ! -e "$ro/registry.db-wal"
    MOOD_HOME=$ro expect_rc 2 "tag in a read-only registry" as_user "$MOOD" tag sd1_lora +x
    check "tag says registry.db is read-only" grep -q "$ro/registry.db is read-only" "$tmp/err"
    cp "$FIX/lycoris/ia3.safetensors" "$tmp/new.safetensors" && chmod 644 "$tmp/new.safetensors"
    MOOD_HOME=$ro expect_rc 2 "import into a read-only registry" as_user "$MOOD" import "$tmp/new.safetensors"
    check "import says registry.db is read-only" grep -q "$ro/registry.db is read-only" "$tmp/err"
    MOOD_HOME=$ro expect_rc 2 "doctor --fix on a read-only registry" as_user "$MOOD" doctor --fix
    check "doctor --fix says it is read-only" grep -q "is read-only" "$tmp/err"
    # what another SQLite program (or an older mood) reading it leaves: -wal and -shm of mode 444
    if command -v sqlite3 >/dev/null; then
        as_user sqlite3 -readonly "$ro/registry.db" "SELECT count(*) FROM styles" >/dev/null
    fi
    chmod 644 "$ro/registry.db"
    MOOD_HOME=$ro expect_rc 0 "tag once registry.db is writable again" as_user "$MOOD" tag sd1_lora +x
    MOOD_HOME=$ro expect_rc 0 "show the tag" as_user "$MOOD" show sd1_lora --json
    check "the tag is stored" py 'import json,sys; assert "x" in json.load(open(sys.argv[1]))["tags"]' "$tmp/out"
}
cp -a "$MOOD_HOME" "$ro"
rm -f "$ro"/registry.db-*
if [ "$(id -u)" -ne 0 ]; then
    as_user() { "$@"; }
    read_only_checks
elif command -v setpriv >/dev/null; then
    chmod 755 "$tmp" # the user below must reach $ro
    chown -R 65534:65534 "$ro"
    as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
    read_only_checks
else
    echo "read-only registry: skipped (root without setpriv)"
fi

# ----- help texts
for c in import list show search "style create" "style edit" tag rename rm doctor; do
    # shellcheck disable=SC2086
    text=$("$MOOD" help $c); check "help $c has usage" grep -q "^usage: mood $c" <<<"$text"
done
expect_rc 1 "'mood style' alone" "$MOOD" style

# a sidecar's preferred weight beyond a style's range (a typo) is left out, with a warning
mkdir -p "$tmp/pw"
cp "$lib/inkwash.safetensors" "$tmp/pw/heavy.safetensors"
echo '{"preferred weight": 50}' >"$tmp/pw/heavy.json"
expect_rc 0 "import with preferred weight 50" env MOOD_HOME="$tmp/pwhome" "$MOOD" import "$tmp/pw/heavy.safetensors" --offline
check "warns of the weight" grep -q "preferred weight 50 left out" "$tmp/err"
check "not stored" py 'import json,sys,subprocess,os; d=json.loads(subprocess.check_output([sys.argv[1],"show","heavy","--json"],env=dict(os.environ,MOOD_HOME=sys.argv[2]))); assert d["weight"] in (None, 1), d["weight"]' "$MOOD" "$tmp/pwhome"

# a registry that cannot be created: the error says why, and no "... creates one" note follows
expect_rc 2 "import into a MOOD_HOME that cannot be made" env MOOD_HOME=/proc/no-such/home "$MOOD" \
    import "$lib/inkwash.safetensors" --offline
check "says it cannot create it" grep -q "cannot create the registry directory" "$tmp/err"
check "no note that import creates one" bash -c "! grep -q 'creates one' '$tmp/err'"

finish
