#!/usr/bin/env bash
# test_train_board.sh: how `mood train` reads a board, on mood-tiny (data/mood-tiny, 64 px), a few
# steps each: --buckets at a resolution below kohya's 256 (its default bucket sizes scale to
# 32..128 by 16 at 64, so a 5:3 image trains in an 80 x 48 bucket; --resolution is --res); kohya's
# DreamBooth layout (a folder of N_name subfolders: their images with captions beside them or,
# without one, the folder's name part as kohya gives it; other subfolders skipped with one
# warning naming them, also in --json; N repeats per epoch, in
# ss_dataset_dirs, ss_num_train_images and the buckets as kohya writes them; one thumbnail per
# image in the style); a folder whose only subfolder is not N_name, and an N_name folder whose N
# is a date, exit 1 naming the folder; a folder with images of its own and N_name subfolders
# trains on its images and says the subfolders are not read; training a taken style name says
# before the run which name the style will get.
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
SRC=${MOOD_SOURCE:-$FIX/../..}
MODEL=$SRC/data/mood-tiny
cd "$tmp"
# meta FILE: the LoRA's metadata as a Python dict, for the checks below
META='import json,struct,sys
def meta(p):
    f=open(p,"rb"); n,=struct.unpack("<Q",f.read(8)); return json.loads(f.read(n))["__metadata__"]
'

# --buckets at mood-tiny's own 64 px (was: "bucket sizes: min 256, max 1024, step 64 do not fit")
mkdir board
cp "$FIX/train/board/"* board/
expect_rc 0 "--buckets at the model's 64 px" "$MOOD" train --name b64 --board board --model "$MODEL" \
    --buckets --steps 2 --rank 4 --no-register
check "buckets of 16 px steps: e.png (150 x 90) in 80 x 48" py "$META"'
m=meta("b64.safetensors"); b=json.loads(m["ss_bucket_info"])["buckets"]
assert m["ss_enable_bucket"]=="True" and m["ss_resolution"]=="(64, 64)", m
assert m["ss_min_bucket_reso"]=="32" and m["ss_max_bucket_reso"]=="128", m
assert sorted(tuple(v["resolution"]) for v in b.values())==[(64, 64), (80, 48)], b
assert sum(v["count"] for v in b.values())==4, b'
expect_rc 0 "--buckets --resolution 64 (kohya's name)" "$MOOD" train --name r64 --board board \
    --model "$MODEL" --buckets --resolution 64 --steps 1 --rank 4 --no-register
check "trained at 64" py "$META"'
m=meta("r64.safetensors"); assert m["ss_resolution"]=="(64, 64)" and m["ss_enable_bucket"]=="True", m'

# kohya's layout: train/2_a/ (two images, one caption), train/1_b/ (one image), train/notes/
mkdir -p kohya/2_a kohya/1_b kohya/notes kohya/.cache
cp "$FIX/train/board/a.png" "$FIX/train/board/a.txt" "$FIX/train/board/e.png" kohya/2_a/
cp "$FIX/train/board/d.bmp" kohya/1_b/
echo "blue square" >kohya/1_b/d.txt
cp "$FIX/train/board/c.webp" kohya/notes/
expect_rc 0 "train on kohya's N_name folders" "$MOOD" train --name kstyle --board kohya \
    --model "$MODEL" --steps 2 --rank 4 --checkpoint-every 2 --json
check "warns once of the folder it skipped" test "$(grep -c 'skipped kohya/notes/: not named' "$tmp/err")" -eq 1
check "no warning of hidden folders" sh -c '! grep -q "\.cache" "$1"' _ "$tmp/err"
check "--json lists the warning" py '
import json,sys; d=json.load(open(sys.argv[1])); w=d["warnings"]
assert len(w)==1 and "kohya/notes/" in w[0] and "N_name" in w[0], w' "$tmp/out"
check "the images of 1_b and 2_a, with their captions and repeats" py "$META"'
m=meta("kstyle.safetensors")
d=json.loads(m["ss_dataset_dirs"]); t=json.loads(m["ss_tag_frequency"])
assert d=={"1_b": {"n_repeats": 1, "img_count": 1}, "2_a": {"n_repeats": 2, "img_count": 2}}, d
assert m["ss_num_train_images"]=="5" and m["ss_num_batches_per_epoch"]=="5", m
assert json.loads(m["ss_bucket_info"])["buckets"]["0"]["count"]==5, m["ss_bucket_info"]
assert t["1_b"]=={"blue square": 1} and t["2_a"]=={"red fox": 1, "sks style": 1, "a": 1}, t  # e.png: the folder'"'"'s "a"'
# a repeat folder given itself is read as a plain folder (kohya reads those inside the one given),
# and said: its repeats and name would be lost without a word
expect_rc 0 "a repeat folder given itself" "$MOOD" train --name k2a --board kohya/2_a/ \
    --model "$MODEL" --steps 1 --rank 4 --no-register
check "says to give the folder above it" grep -q "kohya/2_a/ is named as kohya's repeat folders are, but given itself it is read as a plain folder" "$tmp/err"
check "an epoch goes through 5 items" py "$META"'
m=meta("kstyle.checkpoint.safetensors"); assert m["mood.train.images"]=="5", m'
expect_rc 0 "show the style" "$MOOD" show kstyle --json
check "one thumbnail per image" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [x["name"] for x in d["board"]]==["d.bmp","a.png","e.png"], d["board"]' "$tmp/out"

mkdir -p flat/photos
cp "$FIX/train/board/a.png" flat/photos/
expect_rc 1 "a folder whose only subfolder is not N_name" "$MOOD" train --name flat --board flat \
    --model "$MODEL" --steps 1 --no-register
check "names the folder and the layout" grep -q "flat/photos/: not named as kohya's N_name" "$tmp/err"
check "says there are no images" grep -q "flat: no images" "$tmp/err"
mkdir -p dated/20240101_trip
cp "$FIX/train/board/a.png" dated/20240101_trip/
expect_rc 1 "an N_name folder whose N is a date" "$MOOD" train --name dated --board dated \
    --model "$MODEL" --steps 1 --no-register
check "names it" grep -q "dated/20240101_trip/: 20240101 repeats per epoch" "$tmp/err"
check "nothing written" test ! -e flat.safetensors -a ! -e dated.safetensors
# images of its own and N_name subfolders: the images are the board, the subfolders are named
mkdir -p mixed/3_more
cp "$FIX/train/board/a.png" mixed/
cp "$FIX/train/board/e.png" mixed/3_more/
expect_rc 0 "a folder with images and N_name subfolders" "$MOOD" train --name mixed --board mixed \
    --model "$MODEL" --steps 1 --rank 4 --no-register
check "says the N_name subfolders are not read" grep -q "mixed/ has images of its own, so its kohya N_name subfolders (3_more/, ...) are not read" "$tmp/err"
# a second style of a taken name: said before training, not only in the last line
expect_rc 0 "train kstyle again" "$MOOD" train --name kstyle --board board --model "$MODEL" \
    --steps 1 --rank 4 -o kstyle2.safetensors
check "said up front" grep -q "a style named 'kstyle' exists already; this one will be registered as 'kstyle-2'" "$tmp/err"
# kohya's option names say mood's
expect_rc 1 "kohya's --network_dim" "$MOOD" train --network_dim 8
check "names mood's --rank" grep -q -- "--network_dim is kohya's spelling; in mood: --rank" "$tmp/err"
# a LoRA is a .safetensors file: -o doc.txt is refused, doc.txt kept
echo important >doc.txt
expect_rc 1 "-o doc.txt" "$MOOD" train --name lo --board board --model "$MODEL" --steps 1 -o doc.txt
check "says why" grep -q -- "-o doc.txt: the LoRA is a .safetensors file" "$tmp/err"
check "doc.txt kept" grep -q important doc.txt
# a checkpoint that does not fit (a full disk: here a file-size limit of 1000 blocks, under the
# checkpoint's 2.8 MB and over the LoRA's 0.5 MB) is a warning, and the LoRA is still written
mkdir fd
expect_rc 0 "a checkpoint that cannot be written" bash -c 'ulimit -f 1000; exec "$0" "$@"' \
    "$MOOD" train --name fd --board board --model "$MODEL" --steps 2 --checkpoint-every 0 \
    -o fd/fd.safetensors --no-register
check "warned" grep -q "the training checkpoint was not written" "$tmp/err"
check "the LoRA written" test -s fd/fd.safetensors
# kohya's default caption extension, .caption, is read where there is no .txt
mkdir -p capb
cp "$FIX/train/board/a.png" capb/x.png
echo "inky, apple drawing" >capb/x.caption
expect_rc 0 "train on a .caption caption" "$MOOD" train --name capst --board capb --model "$MODEL" \
    --steps 1 --rank 4 --no-register
check "the .caption caption used" py "$META"'
m=meta("capst.safetensors"); t=json.loads(m["ss_tag_frequency"]); assert t["capb"]=={"inky": 1, "apple drawing": 1}, t'
# the folder's key in ss_dataset_dirs is its real name however the path was typed
(cd capb && "$MOOD" train --name dotb --board . --model "$MODEL" --steps 1 --rank 4 --no-register \
    -o ../dotb.safetensors >/dev/null 2>&1)
check "--board . is keyed by the folder's name" py "$META"'
m=meta("dotb.safetensors"); assert list(json.loads(m["ss_dataset_dirs"]))==["capb"], m["ss_dataset_dirs"]'
# a folder named in another encoding (an old archive's Latin-1): its metadata key is UTF-8
latin=$(printf 'caf\xe9')
mkdir -p "$latin"
cp "$FIX/train/board/a.png" "$latin/x.png"
expect_rc 0 "a board folder whose name is not UTF-8" "$MOOD" train --name lat --board "$latin" \
    --model "$MODEL" --steps 1 --rank 4 --no-register
check "the key read as Windows-1252" py "$META"'
m=meta("lat.safetensors"); assert list(json.loads(m["ss_dataset_dirs"]))==["caf\u00e9"], m["ss_dataset_dirs"]'
# captions: UTF-16 without its byte-order mark is refused (it read as one letter); an old Mac
# file's \r ends the first line
mkdir -p c16 ccr
cp "$FIX/train/board/a.png" c16/x.png
cp "$FIX/train/board/a.png" ccr/x.png
printf 'i\0n\0k\0' >c16/x.txt
printf 'inky, first line\rsecond line\r' >ccr/x.txt
expect_rc 1 "a UTF-16 caption without BOM" "$MOOD" train --name c16 --board c16 --model "$MODEL" \
    --steps 1 --no-register
check "says UTF-16 and to save as UTF-8" grep -q "c16/x.txt holds NUL bytes (UTF-16 text?): save it as UTF-8" "$tmp/err"
expect_rc 0 "a caption with old Mac line ends" "$MOOD" train --name ccr --board ccr --model "$MODEL" \
    --steps 1 --rank 4 --no-register
check "its first line only" py "$META"'
m=meta("ccr.safetensors"); t=json.loads(m["ss_tag_frequency"]); assert t["ccr"]=={"inky": 1, "first line": 1}, t'
# kohya's read_caption takes the first line, stripped: an empty caption file or a blank first
# line is the empty caption (a style trained without words), not the template or a later line;
# ss_tag_frequency counts tags in lower case (kohya's set_tag_frequency)
mkdir -p cempty ccase
cp "$FIX/train/board/a.png" cempty/x.png
cp "$FIX/train/board/e.png" cempty/y.png
: >cempty/x.txt
printf '\nlater line\n' >cempty/y.txt
expect_rc 0 "empty captions" "$MOOD" train --name cempty --board cempty --model "$MODEL" \
    --steps 1 --rank 4 --no-register
check "no tags: both captions empty" py "$META"'
m=meta("cempty.safetensors"); t=json.loads(m["ss_tag_frequency"]); assert t["cempty"]=={}, t'
cp "$FIX/train/board/a.png" ccase/x.png
cp "$FIX/train/board/e.png" ccase/y.png
echo "MyStyle, Red Apple" >ccase/x.txt
echo "mystyle, red apple, ÉCOLE" >ccase/y.txt
expect_rc 0 "captions in mixed case" "$MOOD" train --name ccase --board ccase --model "$MODEL" \
    --steps 1 --rank 4 --no-register
check "tags counted in lower case" py "$META"'
m=meta("ccase.safetensors"); t=json.loads(m["ss_tag_frequency"])
assert t["ccase"]=={"mystyle": 2, "red apple": 2, "\u00e9cole": 1}, t'
# pictures in formats mood does not read are named, beside the images it trains on; a caption
# given among the images (board/*) is not taken for an image
mkdir -p mixf
cp "$FIX/train/board/a.png" mixf/x.png
printf 'GIF89a\1\0\1\0\0\0\0' >mixf/y.gif
printf 'II*\0\10\0\0\0' >mixf/z.tiff
echo "inky" >mixf/x.txt
expect_rc 0 "a folder with a GIF and a TIFF" "$MOOD" train --name mixf --board mixf --model "$MODEL" \
    --steps 1 --rank 4 --no-register
check "both named as skipped" sh -c 'grep -q "skipped mixf/y.gif: a picture in a format mood does not read" "$1" && grep -q "skipped mixf/z.tiff" "$1"' _ "$tmp/err"
expect_rc 0 "board/* with its caption" "$MOOD" train --name mixs --board mixf/x.png mixf/x.txt \
    --model "$MODEL" --steps 1 --rank 4 --no-register
check "its image's caption: no word said of it" sh -c '! grep -q "mixf/x.txt" "$1"' _ "$tmp/err"
check "and read as the caption" py "$META"'
m=meta("mixs.safetensors"); t=json.loads(m["ss_tag_frequency"]); assert t["mixf"]=={"inky": 1}, t'
echo "lonely" >mixf/w.txt
expect_rc 0 "a caption of no image given" "$MOOD" train --name mixw --board mixf/x.png mixf/w.txt \
    --model "$MODEL" --steps 1 --rank 4 --no-register
check "skipped, not an error" grep -q "skipped mixf/w.txt: not an image" "$tmp/err"
expect_rc 1 "a GIF named .png" sh -c 'cp mixf/y.gif g.png && exec "$0" train --name g --board g.png --model "$1" --steps 1 --no-register' "$MOOD" "$MODEL"
check "named as a GIF" grep -q "g.png: a GIF image, which mood does not read" "$tmp/err"

finish
