#!/usr/bin/env bash
# test_full_disk.sh: the registry on a disk that fills up, at every amount of room left from none
# to a few hundred KiB (a 4 MiB tmpfs, mounted in a private mount namespace: `unshare -rm`, so no
# root is needed; skipped where the system refuses it):
#   - a full disk still reads: list, show and search work, and a change is refused saying why;
#   - `mood tag NAME -old +new ...` changes all its tags or none (each change was committed on its
#     own, and "-keep +new" lost #keep when #new could not be stored);
#   - `mood rm A B C` says "removed" for every style it removed, whatever failed after (a style whose
#     files could not be deleted yet was removed without a word, and the command failed);
#   - `mood train` with room for its final checkpoint but not the LoRA says the checkpoint is kept,
#     and --resume writes the LoRA from it.
if [ -z "${MOOD_FULL_DISK_NS:-}" ]; then
    if unshare -rm true 2>/dev/null; then
        MOOD_FULL_DISK_NS=1 exec unshare -rm bash "$0" "$@"
    fi
    echo "skipped: no private mount namespace here (unshare -rm refused)"
    exit 77
fi
. "$(dirname "$0")/lib.sh"

disk=$tmp/disk
mkdir "$disk"
if ! mount -t tmpfs -o size=4m tmpfs "$disk" 2>/dev/null; then
    echo "skipped: cannot mount a tmpfs"
    exit 77
fi
trap 'umount "$disk" 2>/dev/null; rm -rf "$tmp"' EXIT
export MOOD_HOME=$disk/home
L=$FIX/lycoris

# fill KIB: a file takes the disk's room but about KIB KiB (0: all of it)
fill() {
    local avail
    rm -f "$disk/filler"
    avail=$(df -k --output=avail "$disk" | tail -1)
    [ "$avail" -gt "$1" ] && dd if=/dev/zero of="$disk/filler" bs=1k count=$((avail - $1)) \
        status=none 2>/dev/null
    return 0
}

# tags NAME: the style's tags, sorted, on one line
tags() {
    "$MOOD" show "$1" --json | py 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["tags"])))'
}

expect_rc 0 "import two LoRAs" "$MOOD" import "$L/lokr.safetensors" "$L/ia3.safetensors"
expect_rc 0 "tag lokr" "$MOOD" tag lokr +keep
expect_rc 0 "a style of both" "$MOOD" style create combo --lora lokr:0.5 --lora ia3:0.5
cp -a "$MOOD_HOME" "$tmp/snapshot"

# a full disk reads
fill 0
expect_rc 0 "list on a full disk" "$MOOD" list
check "list names both styles" grep -q "ia3" "$tmp/out"
check "... lokr too" grep -q "lokr" "$tmp/out"
expect_rc 0 "show on a full disk" "$MOOD" show lokr
expect_rc 0 "search on a full disk" "$MOOD" search lok
check "search finds lokr" grep -q "lokr" "$tmp/out"
expect_rc 2 "tag on a full disk" "$MOOD" tag lokr +more
check "says the disk is full" grep -q "no space left" "$tmp/err"
rm -f "$disk/filler"
check "the tags unchanged" test "$(tags lokr)" = "keep"

# tag: all or none, at every room left
bad=0
for kib in $(seq 0 8 256); do
    fill "$kib"
    "$MOOD" tag lokr -keep +new1 +new2 >/dev/null 2>"$tmp/err"
    rc=$?
    rm -f "$disk/filler"
    got=$(tags lokr)
    if [ "$rc" -eq 0 ] && [ "$got" = "new1 new2" ]; then
        "$MOOD" tag lokr +keep -new1 -new2 >/dev/null 2>&1 || bad=1
    elif [ "$rc" -ne 0 ] && [ "$got" = "keep" ]; then
        :
    else
        fail "tag with $kib KiB left: exit $rc, tags now '$got' ($(head -c 200 "$tmp/err"))"
        bad=1
        break
    fi
done
check "tag changed all or none at every room left" test "$bad" -eq 0

# rm: every style removed is said to be
bad=0
for kib in $(seq 0 4 256); do
    rm -rf "$MOOD_HOME"
    cp -a "$tmp/snapshot" "$MOOD_HOME"
    fill "$kib"
    "$MOOD" rm combo ia3 lokr >"$tmp/out" 2>"$tmp/err"
    rc=$?
    rm -f "$disk/filler"
    listed=$("$MOOD" list --json | py 'import json,sys; print(" ".join(sorted(s["name"] for s in json.load(sys.stdin))))')
    for name in combo ia3 lokr; do
        said=0
        grep -qx "removed $name" "$tmp/out" && said=1
        case " $listed " in
        *" $name "*) gone=0 ;;
        *) gone=1 ;;
        esac
        if [ "$said" -ne "$gone" ]; then
            fail "rm with $kib KiB left: $name $([ "$gone" -eq 1 ] && echo removed || echo kept), said $([ "$said" -eq 1 ] && echo removed || echo nothing) (exit $rc: $(head -c 200 "$tmp/err"))"
            bad=1
        fi
    done
    [ "$rc" -eq 0 ] && [ -n "$listed" ] && fail "rm with $kib KiB left: exit 0, but '$listed' still listed" && bad=1
    [ "$bad" -ne 0 ] && break
done
check "rm said what it removed at every room left" test "$bad" -eq 0
expect_rc 0 "doctor afterwards" "$MOOD" doctor

# train: room for the final checkpoint but not the LoRA after it: the error says the checkpoint
# is kept, and --resume writes the file from it once there is room
rm -rf "$MOOD_HOME"
board=${MOOD_SOURCE:-.}/examples/moodboards/twemoji
train() { "$MOOD" train --name t --board "$board" --model mood-tiny --steps 3 --no-register "$@"; }
expect_rc 0 "a training run elsewhere" train -o "$tmp/t.safetensors"
ck=$(( $(stat -c %s "$tmp/t.checkpoint.safetensors") / 1024 ))
fill $((ck + 200))
expect_rc 2 "train with no room for the LoRA" train -o "$disk/t.safetensors"
check "says the disk is full" grep -q "no space left" "$tmp/err"
check "... and that --resume writes it" grep -q "checkpoint $disk/t.checkpoint.safetensors (step 3 of 3) is kept" "$tmp/err"
check "no LoRA written" test ! -e "$disk/t.safetensors"
rm -f "$disk/filler"
expect_rc 0 "--resume once there is room" train -o "$disk/t.safetensors" --resume
# AutoV3: the tensors' bytes (the metadata holds the run's times)
autov3() { "$MOOD" hash "$1" --json | py 'import json,sys; print(json.load(sys.stdin)["autov3"])'; }
check "the LoRA is the run's" test "$(autov3 "$disk/t.safetensors")" = "$(autov3 "$tmp/t.safetensors")"


# style export: at every room left, each file it writes is whole or not there (no temporary file
# left; a failed export removes the files it made), and --force over an earlier export keeps the earlier files when there is no room (the
# registry off the full disk: only the export's files are on it)
export MOOD_HOME=$tmp/export-home
expect_rc 0 "import for export" "$MOOD" import "$L/lokr.safetensors"
lokr_blob=$("$MOOD" show lokr --json | py 'import json,sys; print(json.load(sys.stdin)["adapters"][0]["path"])')
for kib in $(seq 0 4 40); do
    rm -rf "$disk/x"
    fill "$kib"
    "$MOOD" style export lokr -o "$disk/x" >/dev/null 2>"$tmp/err"
    rc=$?
    rm -f "$disk/filler"
    left=$(ls -A "$disk/x" 2>/dev/null | grep -v '^lokr\.\(safetensors\|json\)$' | head -3)
    # a failed export leaves nothing of it: no LoRA without its card
    [ "$rc" -ne 0 ] && [ -n "$(ls -A "$disk/x" 2>/dev/null)" ] && left=$(ls -A "$disk/x")
    if [ -n "$left" ] || { [ -e "$disk/x/lokr.safetensors" ] && ! cmp -s "$disk/x/lokr.safetensors" "$lokr_blob"; } ||
        { [ "$rc" -eq 0 ] && [ ! -s "$disk/x/lokr.json" ]; } || { [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; }; then
        fail "style export with $kib KiB left: exit $rc, left '$left' ($(head -c 200 "$tmp/err"))"
        break
    fi
done
rm -rf "$disk/x"
expect_rc 0 "an export with room" "$MOOD" style export lokr -o "$disk/x"
cp "$disk/x/lokr.json" "$tmp/lokr.json"
expect_rc 0 "new words" "$MOOD" style edit lokr --trigger "new words"
fill 0
expect_rc 2 "--force with no room" "$MOOD" style export lokr -o "$disk/x" --force
rm -f "$disk/filler"
check "says the disk is full" grep -q "No space left\|no space left" "$tmp/err"
check "the earlier sidecar whole" cmp -s "$disk/x/lokr.json" "$tmp/lokr.json"
check "the earlier LoRA whole" cmp -s "$disk/x/lokr.safetensors" "$lokr_blob"
check "no temporary file left" test "$(ls -A "$disk/x" | wc -l)" = 2
finish
