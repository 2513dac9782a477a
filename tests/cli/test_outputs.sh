#!/usr/bin/env bash
# test_outputs.sh: what commands do with the file -o names, on mood-tiny (gen) and the fixture
# checkpoint (bake): a named pipe or a device is refused before any work (exit 1; the rename of
# an atomic write would otherwise replace /dev/null itself with a file), a symbolic link is
# written through (its target replaced, the link kept, as cp and PIL do) unless another user
# planted it in a sticky shared folder, a name close to the
# 255-byte limit works (the temporary file's name is cut to fit), and gen's -o must end in .png.
# Without -o, gen never replaces an earlier image (mood-SEED-vN.png); a preview that cannot be
# written is a warning, not the end of the run; a batch that fails half-way lists in --json the
# images it wrote.
. "$(dirname "$0")/lib.sh"

SRC=${MOOD_SOURCE:-$FIX/../..}
MODEL=$SRC/data/mood-tiny
cd "$tmp"
gen=(gen "a red apple" --model "$MODEL" --steps 2 --seed 1)

mkfifo pipe.png
expect_rc 1 "gen into a FIFO" timeout -k 5 60 "$MOOD" "${gen[@]}" -o pipe.png
check "says it is a named pipe" grep -q "pipe.png: not a regular file but a named pipe" "$tmp/err"
check "the FIFO is still one" test -p pipe.png
expect_rc 1 "bake into a FIFO" timeout -k 5 60 "$MOOD" bake --model "$FIX/bases/sd1_base.safetensors" \
    --lora "$FIX/kohya/sd1_lora.safetensors" -o pipe.png
check "still a FIFO after bake" test -p pipe.png
if [ "$(id -u)" = 0 ]; then # mknod needs root
    mknod -m 666 null c 1 3
    expect_rc 1 "gen into a device" "$MOOD" "${gen[@]}" -o null
    check "the device is still one" test -c null
fi

echo old >target.png
ln -s target.png link.png
expect_rc 0 "gen through a symbolic link" "$MOOD" "${gen[@]}" -o link.png
check "the link is kept" test -L link.png
check "its target holds the image" py 'import sys; assert open(sys.argv[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"' target.png

# ... but not a link another user planted in a shared sticky folder (/tmp's kind): that is the
# classic attack on a program that writes through links (the kernel's protected_symlinks rule)
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
    mkdir -m 1777 shared
    ln -s "$tmp/target.png" shared/planted.png
    chown -h nobody shared/planted.png
    cp target.png target.before
    expect_rc 1 "gen through another user's link in a sticky folder" "$MOOD" "${gen[@]}" -o shared/planted.png
    check "says why" grep -q "a link another user made in a shared folder" "$tmp/err"
    check "its target untouched" cmp -s target.png target.before
fi

long=$(printf 'a%.0s' $(seq 1 247)).png # 251 bytes: the old temporary name passed 255
expect_rc 0 "a name near the length limit" "$MOOD" "${gen[@]}" -o "$long"
check "written" test -s "$long"

expect_rc 1 "gen -o x.jpg" "$MOOD" "${gen[@]}" -o x.jpg
check "says it writes PNG" grep -q "mood writes PNG images" "$tmp/err"
check "nothing written" test ! -e x.jpg

# without -o, a second run at the same seed keeps the first image (mood-1.png, then mood-1-v2.png)
expect_rc 0 "gen without -o" "$MOOD" "${gen[@]}"
expect_rc 0 "again, another prompt" "$MOOD" gen "a blue car" --model "$MODEL" --steps 2 --seed 1 --json
check "a new name" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["images"][0]["path"]=="mood-1-v2.png", d' "$tmp/out"
check "the first image kept" py 'import sys; assert b"a red apple" in open("mood-1.png","rb").read()'
expect_rc 0 "a batch of 2 without -o" "$MOOD" "${gen[@]}" --batch 2
check "its own names" test -s mood-1-1.png -a -s mood-1-2.png

# a placeholder a killed run left (kill -9: no clean-up) is taken over once its process is gone;
# a live run's is not (it rendered mood-5-v2.png forever after)
dead=$(sh -c 'echo $$')
printf 'mood gen: this name is taken for an image being made by process %s\n' "$dead" >mood-5.png
expect_rc 0 "gen over a dead run's placeholder" "$MOOD" gen "a cat" --model "$MODEL" --steps 2 --seed 5 --json
check "the name taken over" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["images"][0]["path"]=="mood-5.png", d' "$tmp/out"
check "an image now" py 'import sys; assert open("mood-5.png","rb").read(8)==b"\x89PNG\r\n\x1a\n"'
printf 'mood gen: this name is taken for an image being made by process %s\n' "$$" >mood-6.png
expect_rc 0 "gen beside a live run's placeholder" "$MOOD" gen "a cat" --model "$MODEL" --steps 2 --seed 6 --json
check "another name" py 'import json,sys; d=json.load(open(sys.argv[1])); assert d["images"][0]["path"]=="mood-6-v2.png", d' "$tmp/out"

# without -o in a folder that cannot be written: one clear failure, not a search through names
as_user=() # root writes anyway: as root the check runs as nobody
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    chmod 755 "$tmp"
    as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
if [ "$(id -u)" != 0 ] || [ ${#as_user[@]} -gt 0 ]; then
    mkdir ro && chmod 555 ro
    expect_rc 2 "gen without -o in a read-only folder" "${as_user[@]}" sh -c \
        'cd ro && exec timeout 60 "$@"' _ "$MOOD" "${gen[@]}"
    check "names the first name, not one found by searching" \
        grep -q "mood-1.png: cannot create output file: Permission denied" "$tmp/err"
    chmod 755 ro
fi

# a preview that cannot be written is said once and the image still made
mkdir -p pv.png.preview.png
expect_rc 0 "gen with an unwritable preview" "$MOOD" "${gen[@]}" --preview-every 1 -o pv.png
check "warned once, with the cause" test "$(grep -c 'preview not written.*pv.png.preview.png' "$tmp/err")" -eq 1
check "the image written" test -s pv.png

# a batch that fails half-way still tells --json which images were written
mkdir -p b-2.png
expect_rc 1 "a batch whose second image cannot be written" "$MOOD" "${gen[@]}" --batch 2 -o b.png --json
check "--json lists the first and the error" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [i["path"] for i in d["images"]]==["b-1.png"] and "b-2.png" in d["error"], d' "$tmp/out"
finish
