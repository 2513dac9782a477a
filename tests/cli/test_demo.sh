#!/usr/bin/env bash
# test_demo.sh: `mood demo` end to end on the tiny random pipeline of tests/fixtures/pipeline in
# place of mood-tiny (whose weights are not needed for the mechanics): it trains the style from the bundled Twemoji board, writes eight before/after image
# pairs (with the style: different images, same seeds), the grid and the report, and says where;
# --json lists the files; a run again replaces the demo's style, a failed run keeps it; a model
# given with --model is not registered as mood-tiny; a missing model exits 2 naming it; the
# command it prints to try next names this binary and this MOOD_HOME; its output folder
# imports with the training checkpoint passed over; the report travels with its folder (the
# board copied into it).
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
SRC=${MOOD_SOURCE:-$FIX/../..}
BOARD=$SRC/examples/moodboards/twemoji
cd "$tmp"

expect_rc 0 "demo" "$MOOD" demo --model "$FIX/pipeline/tiny-sd" --board "$BOARD" --steps 3 \
    --out d1 --json
check "json lists the files" python3 -c '
import json, os, sys
d = json.load(open(sys.argv[1]))
assert d["style"] == "twemoji-demo" and all(os.path.exists(d[k]) for k in ("grid", "report", "lora")), d
assert d["train_s"] > 0 and d["generate_s"] > 0, d' "$tmp/out"
check "sixteen images" test "$(ls d1/before-*.png d1/after-*.png | wc -l)" -eq 16
check "the style changes the image" sh -c '! cmp -s d1/before-1.png d1/after-1.png'
check "grid is 2 rows of 8" python3 -c '
import struct, sys
b = open(sys.argv[1], "rb").read(24)
w, h = struct.unpack(">II", b[16:24])
assert w == 8 * 64 and h == 2 * 64, (w, h)' d1/grid.png
check "report shows the pairs" grep -q 'after-8.png' d1/report.html
check "the board's five images copied beside the report" test -s d1/board-5.png -a ! -e d1/board-6.png
check "the report names no file outside its folder" sh -c '! grep -q "src=\"/" d1/report.html'
check "a model given with --model is not registered as mood-tiny" \
    test ! -e "$MOOD_HOME/models/mood-tiny"
expect_rc 0 "style listed" "$MOOD" list --json
check "style in the registry" grep -q twemoji-demo "$tmp/out"
expect_rc 0 "demo again (replaces the style)" "$MOOD" demo --model "$FIX/pipeline/tiny-sd" \
    --board "$BOARD" --steps 2 --out d2
check "prints the report" grep -q "d2/report.html" "$tmp/out"
check "the command to try names this registry, this mood and the model trained on" grep -q "^try: *MOOD_HOME=$MOOD_HOME .*mood gen \"a cat face\" --model '$FIX/pipeline/tiny-sd' --style twemoji-demo" "$tmp/out"
try=$(sed -n 's/^try: *//p' "$tmp/out")
expect_rc 0 "the command to try works as printed" bash -c "cd '$tmp' && $try -o '$tmp/try.png'"
check "the report says what to expect" grep -q "What to expect" d2/report.html
expect_rc 0 "the demo's folder imports, its training checkpoint passed over" "$MOOD" import --offline d2
check "the checkpoint named as such" grep -q "twemoji-demo.checkpoint.safetensors: a mood training checkpoint" "$tmp/err"
expect_rc 0 "styles after the second run" "$MOOD" list --json
check "one demo style, the earlier one gone" python3 -c '
import json, sys
names = sorted(s["name"] for s in json.load(open(sys.argv[1])))
assert names == ["twemoji-demo"], names' "$tmp/out"
expect_rc 1 "demo --out ''" "$MOOD" demo --out ""
expect_rc 1 "demo --steps 0" "$MOOD" demo --steps 0
check "says what --steps takes" grep -q -- "--steps 0: takes a number of steps, 1 to 100000" "$tmp/err"
check "a usage error comes alone, without the CPU note" sh -c '! grep -q "running on the CPU" "$1"' _ "$tmp/err"
# a run that fails (a broken image on the board) keeps the style of the earlier run
mkdir badboard
cp "$BOARD"/* badboard/
head -c 100 "$BOARD/1f34e.png" >badboard/1f34e.png
sha_before=$("$MOOD" show twemoji-demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["adapters"][0]["sha256"])')
expect_rc 1 "demo with a broken board" "$MOOD" demo --model "$FIX/pipeline/tiny-sd" \
    --board badboard --steps 2 --out d3
check "names the image" grep -q "1f34e.png" "$tmp/err"
check "the earlier style is still there, unchanged" test "$("$MOOD" show twemoji-demo --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["adapters"][0]["sha256"])')" = "$sha_before"
expect_rc 0 "styles after the failed run" "$MOOD" list --json
check "and nothing else" python3 -c '
import json, sys
names = sorted(s["name"] for s in json.load(open(sys.argv[1])))
assert names == ["twemoji-demo"], names' "$tmp/out"
expect_rc 2 "missing board" "$MOOD" demo --model "$FIX/pipeline/tiny-sd" --board "$tmp/noboard"
check "names the board given" grep -q -- "--board $tmp/noboard: No such file or directory" "$tmp/err"
expect_rc 2 "missing model" "$MOOD" demo --model "$tmp/nowhere" --board "$BOARD"
check "names it" grep -q nowhere "$tmp/err"
finish
