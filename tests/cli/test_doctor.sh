#!/usr/bin/env bash
# test_doctor.sh: `mood doctor` on a LoRA whose stored file is damaged or missing, when a style
# built by hand (style create) combines it with other LoRAs: without --fix every style that uses
# it is named (text and --json) with what --fix would do; --fix removes the styles that are that
# LoRA alone and drops it from the combined style, which keeps its other LoRAs, template,
# negative prompt, weights and tags; the report names each style. As `mood help doctor` says,
# importing the file again brings its style back and `style edit` puts it back in the mix.
# Reading a registry that does not exist creates nothing; a registry.db that is gone (or empty)
# while stored files remain is reported as such, and --fix deletes none of those files. A broken
# link in $MOOD_HOME/models is reported and removed by --fix. A lost LoRA whose original file is
# still where it was imported from is stored again by --fix, its styles kept whole; with every
# stored file missing (blobs/ on a drive not mounted) --fix refuses.
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
# copies: doctor --fix stores a lost LoRA again from the file it was imported from when that is
# still there, so the removals below are tested with the originals moved away
mkdir -p "$tmp/lyc"
cp "$FIX"/lycoris/{lokr,ia3,boft}.safetensors "$tmp/lyc/"
L=$tmp/lyc

# blob_of STYLE: the stored file of the style's first LoRA
blob_of() {
    local sha
    sha=$("$MOOD" show "$1" --json | py 'import json,sys; print(json.load(sys.stdin)["adapters"][0]["sha256"])')
    echo "$MOOD_HOME/blobs/sha256/${sha:0:2}/${sha:2}"
}

expect_rc 0 "import three flavours" "$MOOD" import "$L/lokr.safetensors" "$L/ia3.safetensors" "$L/boft.safetensors"
expect_rc 0 "style create mymix" "$MOOD" style create mymix --lora lokr:0.6 --lora ia3:0.3 \
    --lora boft:0.2:0.1 --template "{prompt}, my recipe" --negative ugly --weight 0.7
expect_rc 0 "style create solo" "$MOOD" style create solo --lora ia3:0.5
expect_rc 0 "tag mymix" "$MOOD" tag mymix +mine
ia3=$(blob_of ia3)
size=$(stat -c %s "$ia3")
printf '\x55' | dd of="$ia3" bs=1 seek=$((size - 3)) conv=notrunc 2>/dev/null
mv "$L/ia3.safetensors" "$tmp/ia3.away"

# ----- without --fix: every style that uses it, and what --fix would do
expect_rc 1 "doctor --deep finds the damage" "$MOOD" doctor --deep
check "text names the LoRA and where it came from" grep -q "damaged adapter: .*(ia3.safetensors, imported from $L/ia3.safetensors)" "$tmp/out"
check "text: mymix keeps its other LoRAs" grep -q "style mymix: --fix drops LoRA ia3.safetensors (damaged); it keeps its other 2 LoRAs" "$tmp/out"
check "text: ia3 goes" grep -q "style ia3: uses no other LoRA than ia3.safetensors (damaged); --fix removes the style" "$tmp/out"
check "text: solo goes" grep -q "style solo: uses no other LoRA" "$tmp/out"
expect_rc 1 "doctor --deep --json" "$MOOD" doctor --deep --json
check "json: styles per LoRA and per style" py '
import json,sys; d=json.load(open(sys.argv[1]))
c=d["corrupt"]; assert len(c)==1 and c[0]["file_name"]=="ia3.safetensors", c
assert c[0]["styles"]==["ia3","mymix","solo"], c
s={e["name"]:e for e in d["styles"]}; assert sorted(s)==["ia3","mymix","solo"], s
assert s["mymix"]["action"]=="drop" and s["mymix"]["kept"]==2 and s["mymix"]["n_adapters"]==3, s
assert s["ia3"]["action"]=="remove" and s["solo"]["action"]=="remove", s
assert not any(e["fixed"] for e in d["styles"]), s
assert s["mymix"]["lost"]==[{"sha256":c[0]["sha256"],"file_name":"ia3.safetensors","problem":"corrupt"}]' "$tmp/out"
expect_rc 0 "nothing changed without --fix" "$MOOD" show mymix --json
check "mymix still has three LoRAs" py 'import json,sys; assert len(json.load(open(sys.argv[1]))["adapters"])==3' "$tmp/out"

# ----- --fix
expect_rc 1 "doctor --deep --fix --json" "$MOOD" doctor --deep --fix --json
check "json: what was done, per style" py '
import json,sys; d=json.load(open(sys.argv[1]))
s={e["name"]:(e["action"],e["fixed"]) for e in d["styles"]}
assert s=={"ia3":("remove",True),"mymix":("drop",True),"solo":("remove",True)}, s' "$tmp/out"
expect_rc 0 "doctor clean after the fix" "$MOOD" doctor --deep
expect_rc 0 "show mymix" "$MOOD" show mymix --json
check "mymix kept the rest of the recipe" py '
import json,sys; d=json.load(open(sys.argv[1]))
w=[(a["file_name"],a["unet"],a["te"]) for a in d["adapters"]]
assert w==[("lokr.safetensors",0.6,0.6),("boft.safetensors",0.2,0.1)], w
assert d["template"]=="{prompt}, my recipe" and d["negative"]=="ugly" and d["weight"]==0.7, d
assert d["tags"]==["mine"], d' "$tmp/out"
expect_rc 1 "ia3 is gone" "$MOOD" show ia3
expect_rc 1 "solo is gone" "$MOOD" show solo
expect_rc 0 "list" "$MOOD" list --json
check "list: mymix summarised from its new first LoRA" py '
import json,sys; d={s["name"]:s for s in json.load(open(sys.argv[1]))}
assert sorted(d)==["boft","lokr","mymix"], d
assert d["mymix"]["n_adapters"]==2 and d["mymix"]["algorithm"]=="lokr", d["mymix"]' "$tmp/out"

# ----- what the help promises
check "help says how to get a style back" grep -q "To get a LoRA back, import its file" <("$MOOD" help doctor)
mv "$tmp/ia3.away" "$L/ia3.safetensors"
expect_rc 0 "re-import the LoRA" "$MOOD" import "$L/ia3.safetensors"
check "its style is back" grep -q "as ia3" "$tmp/out"
expect_rc 0 "put it back in the mix" "$MOOD" style edit mymix --lora lokr:0.6 --lora ia3:0.3 --lora boft:0.2:0.1
expect_rc 0 "doctor clean at the end" "$MOOD" doctor --deep

# ----- a missing file: the same, in text
rm -f "$(blob_of boft)"
mv "$L/boft.safetensors" "$tmp/boft.away"
expect_rc 1 "doctor --fix, a missing LoRA" "$MOOD" doctor --fix
check "text: boft removed" grep -q "style boft: removed, it used no other LoRA than boft.safetensors (missing)" "$tmp/out"
check "text: mymix keeps two" grep -q "style mymix: dropped LoRA boft.safetensors (missing); kept its other 2 LoRAs, template, negative prompt and weights" "$tmp/out"
expect_rc 0 "doctor clean after the second fix" "$MOOD" doctor --deep
mv "$tmp/boft.away" "$L/boft.safetensors"

# ----- a lost LoRA whose original file is still where it was imported from: --fix stores it
# again (as importing it would), and no style loses it: tags and the combined style stay whole
expect_rc 0 "tag lokr" "$MOOD" tag lokr +keepme
rm -f "$(blob_of lokr)"
# a file there of the same size but other bytes is no original: nothing is promised
cp "$L/lokr.safetensors" "$tmp/lokr.orig"
lsize=$(stat -c %s "$L/lokr.safetensors")
printf '\x55' | dd of="$L/lokr.safetensors" bs=1 seek=$((lsize - 3)) conv=notrunc 2>/dev/null
expect_rc 1 "doctor, the original changed" "$MOOD" doctor
check "promises no restore" sh -c '! grep -q "still there" "$1"' _ "$tmp/out"
cp "$tmp/lokr.orig" "$L/lokr.safetensors"
expect_rc 1 "doctor sees the original" "$MOOD" doctor
check "says --fix stores it again" grep -q "lokr.safetensors, imported from $L/lokr.safetensors); that file is still there: --fix stores it again from it" "$tmp/out"
check "and plans no removal" sh -c '! grep -q "style lokr\|style mymix" "$1"' _ "$tmp/out"
expect_rc 1 "doctor --fix restores it" "$MOOD" doctor --fix --json
check "json: restored from the original" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [r["from"] for r in d["restored"]]==[sys.argv[2]] and d["styles"]==[] and d["fixed"]==1, d' "$tmp/out" "$L/lokr.safetensors"
expect_rc 0 "doctor clean after the restore" "$MOOD" doctor --deep
expect_rc 0 "show lokr" "$MOOD" show lokr --json
check "lokr keeps its tag" py 'import json,sys; assert json.load(open(sys.argv[1]))["tags"]==["keepme"]' "$tmp/out"
expect_rc 0 "show mymix" "$MOOD" show mymix --json
check "mymix keeps lokr" py '
import json,sys; assert "lokr.safetensors" in [a["file_name"] for a in json.load(open(sys.argv[1]))["adapters"]]' "$tmp/out"

# ----- every stored file missing (blobs/ a link to a drive that is not mounted): --fix would
# remove every style; it refuses and changes nothing (nor copies the originals into the empty
# folder there: lokr's is still in $L)
mv "$MOOD_HOME/blobs" "$tmp/blobs.away"
mkdir -p "$tmp/unmounted"
ln -s "$tmp/unmounted" "$MOOD_HOME/blobs"
expect_rc 1 "doctor: every file missing" "$MOOD" doctor
expect_rc 2 "doctor --fix refuses" "$MOOD" doctor --fix
check "says every file is missing" grep -q "every one of the .* files the registry stores are missing" "$tmp/err"
check "no file written there" [ -z "$(find "$tmp/unmounted" -type f)" ]
rm "$MOOD_HOME/blobs"
mv "$tmp/blobs.away" "$MOOD_HOME/blobs"
expect_rc 0 "all styles still there" "$MOOD" show mymix
expect_rc 0 "doctor clean with the drive back" "$MOOD" doctor --deep

# ----- a mistyped MOOD_HOME: reading creates nothing, and says there is no registry there
typo=$tmp/typo/regsitry
for cmd in list "search ink" doctor "doctor --fix"; do
    # shellcheck disable=SC2086
    MOOD_HOME=$typo "$MOOD" $cmd >"$tmp/out" 2>"$tmp/err"
    rc=$?
    check "$cmd on a missing registry: exit 0 ($rc)" [ "$rc" -eq 0 ]
    check "$cmd on a missing registry says so" grep -q "no registry at $typo" "$tmp/out" "$tmp/err"
done
MOOD_HOME=$typo expect_rc 1 "show on a missing registry" "$MOOD" show mymix
check "show says there is no registry" grep -q "no registry at $typo" "$tmp/err"
check "nothing was created" [ ! -e "$tmp/typo" ]

# ----- registry.db gone, the stored files left: not orphans; --fix deletes none of them
stored=$(find "$MOOD_HOME/blobs/sha256" -type f | wc -l)
rm -f "$MOOD_HOME"/registry.db*
expect_rc 0 "list without registry.db" "$MOOD" list
check "list warns that the database is missing" grep -q "registry.db is missing, but $stored stored files remain" "$tmp/err"
check "list did not create registry.db" [ ! -e "$MOOD_HOME/registry.db" ]
expect_rc 1 "doctor without registry.db" "$MOOD" doctor
check "doctor: the database is gone, N files remain" grep -q "registry.db is missing, but $stored stored files remain" "$tmp/out"
check "doctor lists no orphans and offers no --fix" sh -c '! grep -q "orphan:\|repairs them" "$1"' _ "$tmp/out"
expect_rc 1 "doctor --fix refuses" "$MOOD" doctor --fix
check "--fix says what to do instead" grep -q "restore registry.db from a backup, or import the LoRA files again" "$tmp/err"
check "--fix names where the files are" grep -q "$MOOD_HOME/blobs/sha256" "$tmp/err"
check "--fix deleted nothing" [ "$(find "$MOOD_HOME/blobs/sha256" -type f | wc -l)" -eq "$stored" ]
expect_rc 1 "doctor --json without registry.db" "$MOOD" doctor --json
check "json: database missing, stored_files" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["database"]=="missing" and d["stored_files"]==int(sys.argv[2]) and d["orphans"]==[], d' "$tmp/out" "$stored"
# an empty registry.db in its place (what `mood list` made before): the same
sqlite3 "$MOOD_HOME/registry.db" "PRAGMA journal_mode = WAL" >/dev/null 2>&1 ||
    python3 -c 'import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode = WAL")' "$MOOD_HOME/registry.db"
expect_rc 1 "doctor --fix, registry.db empty" "$MOOD" doctor --fix
check "--fix refuses on an empty registry.db" grep -q "holds no LoRAs, but $stored stored files remain" "$tmp/err"
check "nothing deleted" [ "$(find "$MOOD_HOME/blobs/sha256" -type f | wc -l)" -eq "$stored" ]
expect_rc 0 "import again" "$MOOD" import "$L/lokr.safetensors"
expect_rc 0 "its style is back" "$MOOD" show lokr

# a model name whose link leads nowhere (the folder it pointed at moved) is a problem; --fix
# removes that link and keeps the others
mkdir -p "$MOOD_HOME/models" "$tmp/somemodel"
ln -s "$tmp/gone-model" "$MOOD_HOME/models/gone"
ln -s "$tmp/somemodel" "$MOOD_HOME/models/kept"
expect_rc 1 "doctor with a broken model link" "$MOOD" doctor
check "names it" grep -q "model gone: its link leads to $tmp/gone-model, which is gone" "$tmp/out"
expect_rc 1 "doctor --fix" "$MOOD" doctor --fix
check "the broken link removed, the other kept" test ! -L "$MOOD_HOME/models/gone" -a -L "$MOOD_HOME/models/kept"

# --fix repairs what it can: an orphan LoRA it cannot move (lost+found blocked by a file) stays,
# with a warning, and a missing LoRA is still repaired in the same run
H2=$tmp/home2
mkdir -p "$tmp/h2src" && cp "$L/ia3.safetensors" "$tmp/h2src/" # removed below: not restorable
expect_rc 0 "two LoRAs" env MOOD_HOME="$H2" "$MOOD" import "$L/lokr.safetensors" "$tmp/h2src/ia3.safetensors"
orphan="$H2/blobs/sha256/aa/$(printf 'b%.0s' $(seq 62))"
mkdir -p "$(dirname "$orphan")" && cp "$L/boft.safetensors" "$orphan"
rm "$(MOOD_HOME=$H2 blob_of ia3)" "$tmp/h2src/ia3.safetensors"
: >"$H2/blobs/lost+found" # a file: no folder can be made there
expect_rc 1 "doctor --fix with an orphan it cannot move" env MOOD_HOME="$H2" "$MOOD" doctor --fix
check "warns it is left" grep -q "a LoRA file in no style; cannot move it to .*lost+found.*left as it is" "$tmp/err"
check "the summary counts it as left" grep -q "problems found, [0-9]* repaired, 1 left as it is" "$tmp/out"
check "the orphan kept" test -s "$orphan"
expect_rc 1 "the missing LoRA's style repaired (removed)" env MOOD_HOME="$H2" "$MOOD" show ia3
rm "$H2/blobs/lost+found"
expect_rc 1 "doctor --fix again" env MOOD_HOME="$H2" "$MOOD" doctor --fix
check "now moved to blobs/lost+found" test -s "$H2/blobs/lost+found/aa$(printf 'b%.0s' $(seq 62)).safetensors"

# a registry of a newer mood (schema 9) could not be read: exit 2, not 1 ("problems found")
H3=$tmp/home3
expect_rc 0 "a registry" env MOOD_HOME="$H3" "$MOOD" import "$L/lokr.safetensors"
python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("pragma user_version=9"); c.commit()' "$H3/registry.db"
expect_rc 2 "doctor on a newer schema" env MOOD_HOME="$H3" "$MOOD" doctor
check "says use a newer mood" grep -q "newer than this mood understands" "$tmp/err"

# another process holding the registry (an import paused with Ctrl-Z): doctor says it waits,
# then runs when the lock is free (flock(1) takes the same lock as mood)
if command -v flock >/dev/null; then
    flock "$MOOD_HOME/registry.lock" sleep 2 &
    sleep 0.5
    expect_rc 0 "doctor while another process holds the registry" timeout 30 "$MOOD" doctor
    check "says it waits" grep -q "another mood process is using the registry.*waiting" "$tmp/err"
    wait
fi

finish
