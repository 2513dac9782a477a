# test_pack.sh: `mood pack export` / `mood pack import` through the command: a round trip into an
# empty registry gives identical styles and blobs, exports are byte-for-byte reproducible,
# --reference-only packs need their adapters in the registry (and say which are missing),
# and tampered packs are refused with nothing imported. A LoRA whose preview and .txt are links to
# files outside its folder (/etc/passwd) exports a pack without them; a FIFO or a folder given to
# pack import is refused at once with exit 1 (under `timeout`: a regression fails instead of
# hanging). A manifest edited to mix base families in one style is refused with nothing imported.
# A style imported from (mock) Civitai keeps its Civitai record through a pack (and an older pack
# without the record gets the ids from the AIR).
source "$(dirname "$0")/lib.sh"
SRC=${MOOD_SOURCE:?set MOOD_SOURCE to the source tree}

A=$tmp/a B=$tmp/b C=$tmp/c
# the zstd and GNU tar commands only look inside packs and build tampered ones
have_zstd=0
if command -v zstd >/dev/null && tar --help 2>/dev/null | grep -q -- --zstd; then have_zstd=1; fi
mkdir -p "$tmp/src"
cp "$SRC/examples/loras/inkwash.safetensors" "$SRC/examples/loras/film-grain.safetensors" \
    "$FIX/kohya/sd1_locon_fp16.safetensors" "$tmp/src/"
# a 1x1 PNG as a preview sidecar
echo 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==' |
    base64 -d >"$tmp/src/inkwash.preview.png"

# show NAME HOME: the style as JSON without what differs between registries by nature (paths,
# times, where a file was imported from)
show() {
    MOOD_HOME=$2 "$MOOD" show "$1" --json | grep -v '"path"\|_at"\|"location"\|"kind"\|"origin"'
}
blobs() {
    (cd "$1/blobs/sha256" && find . -type f | sort | xargs sha256sum)
}

export MOOD_HOME=$A
expect_rc 0 "import fixtures" "$MOOD" import "$tmp/src"
expect_rc 0 "tag" "$MOOD" tag inkwash +ink
expect_rc 0 "style create" "$MOOD" style create combo --lora inkwash:0.8 --lora film-grain:0.3:0.2 \
    --trigger "ink wash, grain" --template "{prompt}, ink wash" --negative "blurry" --weight 0.9
check "preview imported" grep -q '"image/png"' <(show inkwash "$A")

# --- export ------------------------------------------------------------------------------------
expect_rc 0 "export" "$MOOD" pack export inkwash combo film-grain sd1_locon_fp16 -o "$tmp/p.moodpack" --json
check "export json" grep -q '"reference_only":.*false' "$tmp/out"
expect_rc 0 "export again" "$MOOD" pack export inkwash combo film-grain sd1_locon_fp16 -o "$tmp/p2.moodpack"
check "export is reproducible" cmp -s "$tmp/p.moodpack" "$tmp/p2.moodpack"
# one style named three ways (names are unique up to case) is one style, written and reported once
expect_rc 0 "export a name repeated" "$MOOD" pack export inkwash INKWASH inkwash -o "$tmp/one.moodpack" --json
check "repeated name reported once" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["styles"]==["inkwash"], d' "$tmp/out"
expect_rc 0 "export a name repeated (text)" "$MOOD" pack export inkwash Inkwash -o "$tmp/one.moodpack"
check "repeated name counted once" grep -q "(1 style)" "$tmp/out"
[ $have_zstd = 1 ] && check "zstd tar, manifest first" test "$(zstd -dc "$tmp/p.moodpack" | tar tf - | head -1)" = manifest.json
expect_rc 1 "export unknown style" "$MOOD" pack export nosuch -o "$tmp/x.moodpack"
check "unknown style named" grep -q nosuch "$tmp/err"
check "no partial pack" test ! -e "$tmp/x.moodpack"
expect_rc 1 "export without -o" "$MOOD" pack export inkwash
expect_rc 1 "export to standard output" "$MOOD" pack export inkwash -o -
check "says a file is needed" grep -q "a pack is written to a file" "$tmp/err"
check "no file named -" test ! -e ./-
expect_rc 0 "export under another extension" "$MOOD" pack export inkwash -o "$tmp/x.zip"
check "says what it is" grep -q "x.zip: written as a .moodpack (a tar archive compressed with zstd) whatever its name" "$tmp/err"
rm -f "$tmp/x.zip"
# an existing file under another extension is not replaced by a pack (a LoRA, a document)
cp "$FIX/kohya/sd1_lora.safetensors" "$tmp/keep.safetensors"
expect_rc 1 "export over a LoRA file" "$MOOD" pack export inkwash -o "$tmp/keep.safetensors"
check "says it exists and is no pack" grep -q "keep.safetensors: that file exists and is not a mood pack" "$tmp/err"
check "the LoRA kept" cmp -s "$tmp/keep.safetensors" "$FIX/kohya/sd1_lora.safetensors"
ln -s "$tmp/keep.safetensors" "$tmp/link.moodpack"
expect_rc 1 "export through a .moodpack link to a LoRA" "$MOOD" pack export inkwash -o "$tmp/link.moodpack"
check "the LoRA kept there too" cmp -s "$tmp/keep.safetensors" "$FIX/kohya/sd1_lora.safetensors"
expect_rc 0 "a pack replaced by a new export" "$MOOD" pack export inkwash -o "$tmp/again.moodpack"
expect_rc 0 "again" "$MOOD" pack export inkwash -o "$tmp/again.moodpack"
expect_rc 2 "export into a missing folder" "$MOOD" pack export inkwash -o "$tmp/nowhere/x.moodpack"
check "says which folder" grep -q "nowhere/ does not exist" "$tmp/err"
expect_rc 1 "pack without subcommand" "$MOOD" pack

# --- round trip into an empty registry ---------------------------------------------------------
export MOOD_HOME=$B
expect_rc 0 "import pack" "$MOOD" pack import "$tmp/p.moodpack" --json
check "import json" grep -q '"adapters_added":.*3' "$tmp/out"
for s in inkwash combo film-grain sd1_locon_fp16; do
    check "identical style $s" cmp -s <(show $s "$A") <(show $s "$B")
done
check "identical blobs" cmp -s <(blobs "$A") <(blobs "$B")
expect_rc 0 "doctor after import" "$MOOD" doctor --deep

# importing again: every style merged into itself, nothing changed
blobs "$B" >"$tmp/blobs-before"
for s in inkwash combo film-grain sd1_locon_fp16; do show $s "$B" | grep -v updated_at; done >"$tmp/shown-before"
times() { for s in inkwash combo film-grain sd1_locon_fp16; do MOOD_HOME=$B "$MOOD" show $s --json | grep '"updated_at"'; done; }
times >"$tmp/times-before"
sleep 1 # the times have seconds: a changed one would show
expect_rc 0 "import twice" "$MOOD" pack import "$tmp/p.moodpack"
check "no style's time changed" cmp -s "$tmp/times-before" <(times)
check "says the styles were merged" grep -q "merged into the styles of the same name and LoRAs you had.* inkwash" "$tmp/out"
check "and that none was new" grep -q "^no new styles from .*p.moodpack (0 LoRA files added)$" "$tmp/out"
check "blobs unchanged" cmp -s "$tmp/blobs-before" <(blobs "$B")
check "styles unchanged" cmp -s "$tmp/shown-before" <(for s in inkwash combo film-grain sd1_locon_fp16; do show $s "$B" | grep -v updated_at; done)
# a style of that name with other LoRAs: refused, nothing changed
expect_rc 0 "rename one" "$MOOD" rename film-grain film-grain-mine
expect_rc 0 "another LoRA under its name" "$MOOD" rename inkwash film-grain
expect_rc 1 "import over a style with other LoRAs" "$MOOD" pack import "$tmp/p.moodpack"
check "says the name is taken" grep -q "a style named 'film-grain' exists already, with other LoRAs" "$tmp/err"
check "blobs unchanged" cmp -s "$tmp/blobs-before" <(blobs "$B")
expect_rc 0 "rename back" "$MOOD" rename film-grain inkwash
expect_rc 0 "rename back" "$MOOD" rename film-grain-mine film-grain
# two names taken: both said in one message
expect_rc 0 "rename combo" "$MOOD" rename combo combo-mine
expect_rc 0 "another combo" "$MOOD" style create combo --lora film-grain
expect_rc 0 "rename inkwash" "$MOOD" rename inkwash inkwash-mine
expect_rc 0 "another inkwash" "$MOOD" style create inkwash --lora film-grain
expect_rc 1 "import over two styles with other LoRAs" "$MOOD" pack import "$tmp/p.moodpack"
check "says both names" grep -q "styles named 'inkwash', 'combo' exist already, with other LoRAs" "$tmp/err"
check "and the way out" grep -q "or import the pack's under other names (pack import --rename NAME=NEW)" "$tmp/err"
expect_rc 1 "--rename of a style the pack has not" "$MOOD" pack import "$tmp/p.moodpack" --rename nosuch=x
check "says so" grep -q "rename nosuch=x: the pack has no style named 'nosuch'" "$tmp/err"
expect_rc 1 "--rename onto another style of the pack" "$MOOD" pack import "$tmp/p.moodpack" \
    --rename inkwash=COMBO
check "says which name" grep -q "two styles of the pack would both be named 'combo'" "$tmp/err"
expect_rc 1 "--rename without =" "$MOOD" pack import "$tmp/p.moodpack" --rename inkwash
expect_rc 1 "one style renamed twice" "$MOOD" pack import "$tmp/p.moodpack" --rename inkwash=a --rename INKWASH=b
check "says so" grep -q "style 'INKWASH' is renamed twice (to 'a' and 'b')" "$tmp/err"
expect_rc 0 "both imported under other names" "$MOOD" pack import "$tmp/p.moodpack" \
    --rename INKWASH=inkwash-theirs --rename combo=combo-theirs --json
check "reported under the new names" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert "inkwash-theirs" in d["styles"] and "combo-theirs" in d["styles"] and "inkwash" not in d["styles"], d' "$tmp/out"
expect_rc 0 "theirs is the pack's combo" "$MOOD" show combo-theirs --json
check "with its template" grep -q '"template":.*"{prompt}, ink wash"' "$tmp/out"
expect_rc 0 "remove theirs" "$MOOD" rm inkwash-theirs combo-theirs
expect_rc 0 "remove them" "$MOOD" rm inkwash combo
# each NAME is the pack's own: a chain (its inkwash to combo, its combo to combo-x) renames both
# (applied in turn, the pack's inkwash went to combo-x and its combo kept its name)
expect_rc 0 "chained renames" "$MOOD" pack import "$tmp/p.moodpack" --rename inkwash=combo \
    --rename combo=combo-x
expect_rc 0 "combo-x is the pack's combo" "$MOOD" show combo-x --json
check "with its template" grep -q '"template":.*"{prompt}, ink wash"' "$tmp/out"
expect_rc 0 "combo is the pack's inkwash" "$MOOD" show combo --json
check "one LoRA, no template" py '
import json,sys; d=json.load(open(sys.argv[1])); assert len(d["adapters"])==1 and not d["template"], d' "$tmp/out"
expect_rc 0 "remove the renamed" "$MOOD" rm combo combo-x
expect_rc 0 "rename back" "$MOOD" rename combo-mine combo
expect_rc 0 "rename back" "$MOOD" rename inkwash-mine inkwash
check "no temporary directory left" test -z "$(find "$B" -name '.moodpack-*')"

# --- a pack of many styles: ten names shown, the count of the others; licence and credits said
for i in $(seq -w 1 12); do MOOD_HOME=$A "$MOOD" style create "many$i" --lora inkwash >/dev/null; done
expect_rc 0 "export twelve styles" env MOOD_HOME="$A" "$MOOD" pack export $(printf 'many%s ' $(seq -w 1 12)) \
    -o "$tmp/many.moodpack" --license "CC-BY-4.0" --attribution "by Alice"
expect_rc 0 "import them" env MOOD_HOME="$tmp/many" "$MOOD" pack import "$tmp/many.moodpack"
check "ten named, two counted" grep -q \
    "^imported 12 new styles from .*many.moodpack (1 LoRA file added): many01, .*, many10 and 2 more ('--json' lists them all)$" "$tmp/out"
check "the licence and the credits" grep -q "^the pack's licence: CC-BY-4.0$" "$tmp/out"
check "the credits" grep -q "^the pack's credits: by Alice$" "$tmp/out"
expect_rc 0 "show one" env MOOD_HOME="$tmp/many" "$MOOD" show many01 --json
check "its LoRA has the pack's licence and credits" py '
import json,sys; d=json.load(open(sys.argv[1])); s=d["adapters"][0]["sources"]
assert [x["license"] for x in s]==["CC-BY-4.0 (the pack\x27s licence); credits: by Alice"], s' "$tmp/out"
expect_rc 0 "shared on" env MOOD_HOME="$tmp/many" "$MOOD" pack export many01 -o "$tmp/many-again.moodpack"
if [ $have_zstd = 1 ]; then
    check "the new pack carries it" grep -q "CC-BY-4.0 (the pack's licence); credits: by Alice" \
        <(zstd -dc "$tmp/many-again.moodpack" | tar xOf - manifest.json)
fi
for i in $(seq -w 1 12); do MOOD_HOME=$A "$MOOD" rm "many$i" >/dev/null; done

# --- reference-only ----------------------------------------------------------------------------
export MOOD_HOME=$A
expect_rc 0 "export reference-only" "$MOOD" pack export combo -o "$tmp/r.moodpack" --reference-only
[ $have_zstd = 1 ] && check "no adapters embedded" test -z "$(zstd -dc "$tmp/r.moodpack" | tar tf - | grep '^adapters/')"
export MOOD_HOME=$C
expect_rc 1 "reference-only into an empty registry" "$MOOD" pack import "$tmp/r.moodpack"
check "counts the missing adapters" grep -q "2 adapters that are not embedded" "$tmp/err"
check "missing adapter hash named" grep -q "$(show inkwash "$A" | grep -o '"sha256":[^,]*' | head -1 | grep -o '[0-9a-f]\{64\}')" "$tmp/err"
check "AIR mentioned" grep -q "AIR" "$tmp/err"
check "nothing imported" test "$(MOOD_HOME=$C "$MOOD" list --json | tr -d ' \n\t')" = "[]"
expect_rc 0 "import the adapters" "$MOOD" import "$tmp/src/inkwash.safetensors" "$tmp/src/film-grain.safetensors"
expect_rc 0 "reference-only import" "$MOOD" pack import "$tmp/r.moodpack"
check "identical referencing style" cmp -s <(show combo "$A") <(show combo "$C")
# a LoRA imported with a .civitai.info sidecar keeps the AIR of its record, which names it in the
# message of a reference-only pack; without the model's id, its Civitai version id does
mkdir -p "$tmp/civ"
cp "$tmp/src/sd1_locon_fp16.safetensors" "$tmp/civ/grain.safetensors"
cp "$tmp/src/film-grain.safetensors" "$tmp/civ/dust.safetensors"
echo '{"id": 4242, "modelId": 777, "baseModel": "SD 1.5", "name": "v1", "model": {"name": "Grain", "type": "LORA"}}' \
    >"$tmp/civ/grain.civitai.info"
echo '{"id": 4343, "name": "v2", "model": {"name": "Dust"}}' >"$tmp/civ/dust.civitai.info"
expect_rc 0 "import with Civitai sidecars" env MOOD_HOME="$tmp/civh" "$MOOD" import --offline "$tmp/civ"
expect_rc 0 "show it" env MOOD_HOME="$tmp/civh" "$MOOD" show grain --json
check "the AIR built from the record's ids" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["adapters"][0]["sources"][0]["air"]=="urn:air:sd1:lora:civitai:777@4242", d["adapters"][0]["sources"]' "$tmp/out"
expect_rc 0 "a reference-only pack of both" env MOOD_HOME="$tmp/civh" "$MOOD" pack export grain dust \
    -o "$tmp/civ.moodpack" --reference-only
expect_rc 1 "into an empty registry" env MOOD_HOME="$tmp/civ-empty" "$MOOD" pack import "$tmp/civ.moodpack"
check "names the AIR, and the version id without one" grep -q \
    "grain.safetensors, AIR urn:air:sd1:lora:civitai:777@4242).*dust.safetensors, Civitai civitai:4343)" "$tmp/err"
# the usual order for a pack of one LoRA's style: the LoRA imported first (its style named after
# the file, as the pack's is), then the pack: merged into that style, which gains the pack's tag
expect_rc 0 "export inkwash reference-only" env MOOD_HOME="$A" "$MOOD" pack export inkwash \
    -o "$tmp/ri.moodpack" --reference-only
expect_rc 0 "import its LoRA" env MOOD_HOME="$tmp/refi" "$MOOD" import "$tmp/src/inkwash.safetensors"
expect_rc 0 "then the pack" env MOOD_HOME="$tmp/refi" "$MOOD" pack import "$tmp/ri.moodpack" --json
check "reported as merged" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["merged"]==["inkwash"], d' "$tmp/out"
MOOD_HOME="$tmp/refi" "$MOOD" show inkwash --json >"$tmp/shown.json"
check "the pack's tag added" py 'import json,sys; d=json.load(open(sys.argv[1])); assert "ink" in d["tags"], d["tags"]' "$tmp/shown.json"
# names match in any case: merged into "InkWash", it is reported under the name you gave it
expect_rc 0 "import its LoRA again" env MOOD_HOME="$tmp/refi2" "$MOOD" import "$tmp/src/inkwash.safetensors"
expect_rc 0 "renamed in other capitals" env MOOD_HOME="$tmp/refi2" "$MOOD" rename inkwash InkWash
expect_rc 0 "then the pack" env MOOD_HOME="$tmp/refi2" "$MOOD" pack import "$tmp/ri.moodpack" --json
check "reported under the registry's spelling" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["merged"]==["InkWash"], d' "$tmp/out"

# --- what a pack import killed before its clean-up left (its extracted files) goes the next time
# the registry is opened for a change; a live process's is kept
dead=$(sh -c 'echo $$')
mkdir -p "$tmp/dmg/.moodpack-$dead-abc123" "$tmp/dmg/.moodpack-$$-def456"
echo x >"$tmp/dmg/.moodpack-$dead-abc123/0"
echo x >"$tmp/dmg/.moodpack-$$-def456/0"
expect_rc 0 "a registry with a killed pack import's files" env MOOD_HOME="$tmp/dmg" "$MOOD" import "$tmp/src/inkwash.safetensors"
check "the dead import's files removed" test ! -e "$tmp/dmg/.moodpack-$dead-abc123"
check "a live process's kept" test -e "$tmp/dmg/.moodpack-$$-def456/0"
rm -r "$tmp/dmg"
# killed before the registry existed (a first import of a pack): any command reading the
# folder removes them, without creating a registry
mkdir -p "$tmp/dmg/.moodpack-$dead-abc123" && echo x >"$tmp/dmg/.moodpack-$dead-abc123/0"
expect_rc 0 "list where no registry is yet" env MOOD_HOME="$tmp/dmg" "$MOOD" list
check "the dead import's files removed" test ! -e "$tmp/dmg/.moodpack-$dead-abc123"
check "and no registry made" test ! -e "$tmp/dmg/registry.db"
rm -r "$tmp/dmg"

# --- a damaged stored file is not packed (every importer would refuse the pack): the export
# fails naming it, and writes nothing
expect_rc 0 "import for a damaged blob" env MOOD_HOME="$tmp/dmg" "$MOOD" import "$tmp/src/inkwash.safetensors"
blob=$(find "$tmp/dmg/blobs/sha256" -type f -size +100k | head -1)
printf 'X' | dd of="$blob" bs=1 seek=5000 conv=notrunc status=none
expect_rc 1 "export with a damaged stored file" env MOOD_HOME="$tmp/dmg" "$MOOD" pack export inkwash \
    -o "$tmp/dmg.moodpack"
check "names the damaged file" grep -q "is damaged: its SHA-256 is" "$tmp/err"
check "no pack written" test ! -e "$tmp/dmg.moodpack"
# a stored file gone: the environment's problem (exit 2), said before anything is written
rm "$blob"
expect_rc 2 "export with a stored file gone" env MOOD_HOME="$tmp/dmg" "$MOOD" pack export inkwash \
    -o "$tmp/dmg.moodpack"
check "says it is missing" grep -q "is missing from the registry (run 'mood doctor')" "$tmp/err"
check "no pack written" test ! -e "$tmp/dmg.moodpack"

# --- tampered packs ----------------------------------------------------------------------------
D=$tmp/d
mkdir -p "$D/x"
if [ $have_zstd = 1 ]; then
    zstd -dc "$tmp/p.moodpack" | tar -C "$D/x" -xf -
    mkdir -p "$D/x/board"
    echo evil >"$D/x/board/evil.png"
    # file entries only: a directory entry is refused too
    (cd "$D/x" && tar --zstd --no-recursion -cf "$D/unlisted.moodpack" manifest.json adapters/* board/evil.png)
    export MOOD_HOME=$tmp/e
    expect_rc 1 "unlisted entry refused" "$MOOD" pack import "$D/unlisted.moodpack"
    check "unlisted entry named" grep -q "board/evil.png': not listed in manifest.json" "$tmp/err"
    rm -r "$D/x/board"
    f=$(ls "$D/x/adapters" | head -1)
    printf 'X' | dd of="$D/x/adapters/$f" bs=1 seek=200 conv=notrunc status=none
    (cd "$D/x" && tar --zstd --no-recursion -cf "$D/tampered.moodpack" manifest.json adapters/*)
    expect_rc 1 "tampered adapter refused" "$MOOD" pack import "$D/tampered.moodpack"
    check "hash mismatch named" grep -q "adapters/$f': SHA-256 .* does not match" "$tmp/err"
fi
# a hand-edited manifest that mixes base families in one style (combo: two SD1 LoRAs, plus the
# SDXL one): refused like `mood style create` would, naming the style and both families, and
# nothing of the pack stored, nothing already stored lost
if [ $have_zstd = 1 ]; then
    export MOOD_HOME=$A
    expect_rc 0 "import an sdxl LoRA" "$MOOD" import "$FIX/kohya/sdxl_lora.safetensors"
    expect_rc 0 "export sd1 and sdxl styles" "$MOOD" pack export combo sdxl_lora -o "$tmp/mix.moodpack"
    mkdir -p "$D/mix"
    zstd -dc "$tmp/mix.moodpack" | tar -C "$D/mix" -xf -
    check "mix the families in combo" python3 - "$D/mix/manifest.json" <<'EOF2'
import json, sys
m = json.load(open(sys.argv[1]))
xl = [a["sha256"] for a in m["adapters"] if a["family"] == "sdxl"]
combo = [s for s in m["styles"] if s["name"] == "combo"][0]
assert len(xl) == 1 and all(a["family"] == "sd1" for a in m["adapters"] if a["sha256"] != xl[0])
combo["adapters"].append({"sha256": xl[0], "unet": 1.0, "te": 1.0})
json.dump(m, open(sys.argv[1], "w"), indent=2)
EOF2
    (cd "$D/mix" && tar --zstd --no-recursion -cf "$D/mixed.moodpack" manifest.json $(find . -type f ! -name manifest.json | sed 's|^\./||' | sort))
    export MOOD_HOME=$tmp/g
    expect_rc 0 "a registry with a style" "$MOOD" import "$tmp/src/film-grain.safetensors"
    "$MOOD" list --json >"$tmp/g-list-before"
    blobs "$MOOD_HOME" >"$tmp/g-blobs-before"
    expect_rc 1 "mixed families refused" "$MOOD" pack import "$D/mixed.moodpack"
    check "names the style and both families" grep -q "style 'combo' of the pack: LoRAs for different base families: .* is for sd1 but .* is for sdxl" "$tmp/err"
    check "nothing of the mixed pack imported" cmp -s "$tmp/g-list-before" <("$MOOD" list --json)
    check "no blob of the mixed pack kept" cmp -s "$tmp/g-blobs-before" <(blobs "$MOOD_HOME")
    check "no temporary directory left (mixed)" test -z "$(find "$MOOD_HOME" -name '.moodpack-*')"
    expect_rc 0 "doctor after the refusal" "$MOOD" doctor --deep
    expect_rc 0 "the unedited pack imports" "$MOOD" pack import "$tmp/mix.moodpack"
fi

export MOOD_HOME=$tmp/e
head -c 100000 "$tmp/p.moodpack" >"$D/cut.moodpack"
expect_rc 1 "truncated pack refused" "$MOOD" pack import "$D/cut.moodpack"
check "nothing imported from bad packs" test "$("$MOOD" list --json | tr -d ' \n\t')" = "[]"
check "no blobs from bad packs" test -z "$(find "$tmp/e/blobs" -type f 2>/dev/null)"
check "no temporary directory left" test -z "$(find "$tmp/e" -name '.moodpack-*')"
expect_rc 2 "missing pack" "$MOOD" pack import "$tmp/nonexistent.moodpack"

# --- sidecars that link out of the LoRA's folder never reach a pack ---------------------------
export MOOD_HOME=$tmp/f
mkdir -p "$tmp/sl"
cp "$SRC/examples/loras/inkwash.safetensors" "$tmp/sl/evil.safetensors"
ln -s /etc/passwd "$tmp/sl/evil.preview.png"
ln -s /etc/passwd "$tmp/sl/evil.txt"
expect_rc 0 "import with links out" "$MOOD" import "$tmp/sl/evil.safetensors"
expect_rc 0 "export it" "$MOOD" pack export evil -o "$tmp/evil.moodpack"
check "no preview stored" test "$(show evil "$MOOD_HOME" | tr -d ' \n\t' | grep -o '"previews":\[\]')" = '"previews":[]'
if [ $have_zstd = 1 ]; then
    check "the pack carries no preview" test -z "$(zstd -dc "$tmp/evil.moodpack" | tar tf - | grep '^previews/')"
    check "nor anything of /etc/passwd" bash -c '! zstd -dc "$1" | grep -aq "root:"' _ "$tmp/evil.moodpack"
fi
# what is not a regular file is the wrong input (exit 1, as for any file mood reads), said at once
mkfifo "$tmp/pipe.moodpack"
timeout -k 5 30 "$MOOD" pack import "$tmp/pipe.moodpack" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "a FIFO pack is refused at once (exit $rc, expected 1)" test $rc -eq 1
check "FIFO message" grep -q "pipe.moodpack: not a regular file but a named pipe (FIFO)" "$tmp/err"
mkdir "$tmp/dir.moodpack"
expect_rc 1 "a folder as the pack" "$MOOD" pack import "$tmp/dir.moodpack"
check "folder message" grep -q "dir.moodpack: not a regular file but a folder" "$tmp/err"

# --- Civitai data survives a round trip ------------------------------------------------------
# a LoRA imported from (mock) Civitai, packed and imported into a fresh registry keeps its model
# and version ids, names, base model and NSFW flags, and update-check against the mock sees it;
# a pack made before the manifest carried the Civitai record still gets the ids from its AIR.
if command -v python3 >/dev/null 2>&1; then
    python3 "$SRC/tests/mock_civitai.py" --port-file "$tmp/port" --log "$tmp/server.log" \
        --lifetime 120 --lora "$FIX/kohya/sd1_lora_bf16.safetensors" \
        --lora-v2 "$FIX/kohya/sd1_lora.safetensors" &
    srv=$!
    trap 'kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null; rm -rf "$tmp"' EXIT
    for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
    # civitai ids, names and base model of the style's first LoRA's newest Civitai source
    civ() {
        MOOD_HOME=$2 "$MOOD" show "$1" --json | python3 -c '
import json, sys
s = [x for x in json.load(sys.stdin)["adapters"][0]["sources"] if x["version_id"]][-1]
print(*(s[k] for k in ("model_id", "version_id", "model_name", "version_name",
                       "base_model", "nsfw", "nsfw_level")))'
    }
    (
        export MOOD_CIVITAI_URL=http://127.0.0.1:$(cat "$tmp/port") CIVITAI_TOKEN=good-key \
            MOOD_HTTP_RETRY_MS=20 no_proxy=127.0.0.1 NO_PROXY=127.0.0.1
        unset MOOD_OFFLINE
        export MOOD_HOME=$tmp/cv1
        expect_rc 0 "import civitai:900101" "$MOOD" import civitai:900101
        expect_rc 0 "export the Civitai style" "$MOOD" pack export mock_ink_style -o "$tmp/cv.moodpack"
        check "its licence allows derivatives: no warning" sh -c '! grep -q "does not allow derivatives" "$1"' _ "$tmp/err"
        expect_rc 0 "show says its licence" "$MOOD" show mock_ink_style
        check "the AIR and licence lines" grep -q "^ *AIR *urn:air:sd1:lora:civitai:900001@900101$" "$tmp/out"
        check "the licence line" grep -q "^ *licence *Civitai: .*derivatives allowed" "$tmp/out"
        cp -r "$tmp/cv1" "$tmp/cv1-nd"
        python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("UPDATE sources SET permissions_json = json_set(permissions_json, \"$.allowDerivatives\", json(\"false\"))"); c.commit()' "$tmp/cv1-nd/registry.db"
        expect_rc 0 "export a LoRA whose licence forbids derivatives" env MOOD_HOME="$tmp/cv1-nd" \
            "$MOOD" pack export mock_ink_style -o "$tmp/cv-nd.moodpack"
        check "warned, with the way out" grep -q "mock_ink_style.safetensors: its Civitai licence does not allow derivatives (.*): sharing the file itself may not be allowed; --reference-only" "$tmp/err"
        expect_rc 0 "reference-only: no warning" env MOOD_HOME="$tmp/cv1-nd" \
            "$MOOD" pack export mock_ink_style -o "$tmp/cv-nd-ref.moodpack" --reference-only
        check "none" sh -c '! grep -q "does not allow derivatives" "$1"' _ "$tmp/err"
        # the permissions travel with the pack: shared on from the friend's registry, it warns
        expect_rc 0 "import the no-derivatives pack" env MOOD_HOME="$tmp/cv3" "$MOOD" pack import \
            "$tmp/cv-nd.moodpack"
        expect_rc 0 "export it again there" env MOOD_HOME="$tmp/cv3" "$MOOD" pack export \
            mock_ink_style -o "$tmp/cv-nd2.moodpack"
        check "warned there too" grep -q "its Civitai licence does not allow derivatives" "$tmp/err"
        export MOOD_HOME=$tmp/cv2
        expect_rc 0 "import the Civitai pack" "$MOOD" pack import "$tmp/cv.moodpack"
        check "Civitai ids and names kept" test "$(civ mock_ink_style "$tmp/cv2")" = "$(civ mock_ink_style "$tmp/cv1")"
        check "ids not null" grep -q "^900001 900101 " <(civ mock_ink_style "$tmp/cv2")
        check "preview NSFW levels kept" test "$(show mock_ink_style "$tmp/cv2" | grep -c nsfw_level)" = "$(show mock_ink_style "$tmp/cv1" | grep -c nsfw_level)"
        check "previews NSFW level not null" bash -c '! grep -q "\"nsfw_level\":\s*null" <<<"$1"' _ "$(MOOD_HOME=$tmp/cv2 "$MOOD" show mock_ink_style --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["previews"]))')"
        # the same LoRA imported plainly first (offline: no record), then the pack merged into it:
        # the style gains the pack's Civitai record and trigger words
        cp "$FIX/kohya/sd1_lora_bf16.safetensors" "$tmp/mock_ink_style.safetensors"
        expect_rc 0 "plain import of the pack's LoRA" env MOOD_HOME="$tmp/cv3" MOOD_OFFLINE=1 "$MOOD" \
            import "$tmp/mock_ink_style.safetensors"
        expect_rc 0 "its own trigger word (as an import may guess one)" env MOOD_HOME="$tmp/cv3" \
            "$MOOD" style edit mock_ink_style --trigger "myguess"
        expect_rc 0 "then the pack (merged)" env MOOD_HOME="$tmp/cv3" MOOD_OFFLINE=1 "$MOOD" pack import "$tmp/cv.moodpack"
        check "merged: the Civitai record gained" grep -q "^900001 900101 " <(civ mock_ink_style "$tmp/cv3")
        check "merged: the pack's trigger words gained" py '
import json, subprocess, sys, os
d = json.loads(subprocess.check_output([sys.argv[1], "show", "mock_ink_style", "--json"], env=dict(os.environ, MOOD_HOME=sys.argv[2])))
assert d["trigger_words"] == "myguess, inkwash style", d["trigger_words"]' "$MOOD" "$tmp/cv3"
        expect_rc 0 "update-check after the round trip" "$MOOD" update-check --json
        check "update-check sees the style" grep -q '"checked":\s*1' "$tmp/out"
        check "and its newer version" grep -q '"latest_version_id":\s*900107' "$tmp/out"
        if [ $have_zstd = 1 ]; then
            # an older pack: no "civitai" object, only the AIR
            mkdir -p "$D/old"
            zstd -dc "$tmp/cv.moodpack" | tar -C "$D/old" -xf -
            python3 - "$D/old/manifest.json" <<'EOF2'
import json, sys
m = json.load(open(sys.argv[1]))
for a in m["adapters"]:
    assert a.pop("civitai")["version_id"] == 900101 and a["air"].endswith(":civitai:900001@900101")
json.dump(m, open(sys.argv[1], "w"), indent=2)
EOF2
            (cd "$D/old" && tar --zstd --no-recursion -cf "$D/old.moodpack" manifest.json $(find . -type f ! -name manifest.json | sed 's|^\./||' | sort))
            export MOOD_HOME=$tmp/cv3
            expect_rc 0 "import a pack without the Civitai record" "$MOOD" pack import "$D/old.moodpack"
            check "ids from the AIR" grep -q "^900001 900101 " <(civ mock_ink_style "$tmp/cv3")
            expect_rc 0 "update-check (ids from the AIR)" "$MOOD" update-check --json
            check "update-check sees it" grep -q '"checked":\s*1' "$tmp/out"
        fi
        echo "$passes $fails" >"$tmp/civ-counts"
    )
    read -r passes fails <"$tmp/civ-counts"
fi

finish
