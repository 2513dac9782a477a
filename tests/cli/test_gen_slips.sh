#!/usr/bin/env bash
# test_gen_slips.sh: what `mood gen` says to the common slips, on the tiny diffusers pipeline of
# tests/fixtures/pipeline: --device after the command works as before it; a registry name given
# to --lora (a file option) is missing-file exit 2 with the registry's syntax named; a <lora:>
# tag naming neither a file nor a style says both were looked for; a LoRA given
# as the model names the path once; a LoRA of the right family for a model of other sizes says
# so; a style whose stored file was deleted points at `mood doctor`; --from-png of a PNG without
# A1111's parameters is bad input (1), naming a ComfyUI workflow when the PNG holds one.
. "$(dirname "$0")/lib.sh"

export MOOD_HOME=$tmp/home
P=$FIX/pipeline
MODEL=$P/tiny-sd
common=(--model "$MODEL" --size 64x64 --steps 2 --seed 3)
cd "$tmp"

expect_rc 0 "--device after the command" "$MOOD" gen "a cat" "${common[@]}" -o a.png --device cpu
expect_rc 0 "--device= after the command" "$MOOD" gen "a cat" "${common[@]}" -o b.png --device=cpu
check "the same image" cmp -s a.png b.png
expect_rc 1 "a misspelt device after the command" "$MOOD" gen "a cat" "${common[@]}" --device gpu
check "names the choices" grep -q "expected cpu, cuda, cuda:N or auto" "$tmp/err"

expect_rc 2 "--lora with a registry name" "$MOOD" gen "a cat" "${common[@]}" --lora inkwash
check "points at --style and <lora:>" grep -q -- "--lora inkwash: no such file; a style or LoRA of the registry is --style" "$tmp/err"

cp "$P/lora.safetensors" tiny.safetensors
expect_rc 1 "a LoRA as the model" "$MOOD" gen "a cat" --model tiny.safetensors
check "the path said once" test "$(grep -o 'tiny.safetensors' "$tmp/err" | wc -l)" -eq 1

expect_rc 1 "an SD1 LoRA of other sizes" "$MOOD" gen "a cat" "${common[@]}" \
    --lora "$FIX/kohya/sd1_lora.safetensors"
check "says both are sd1 at other sizes" grep -q "both are sd1, but the LoRA was made for a model of other sizes" "$tmp/err"

expect_rc 0 "import a LoRA" "$MOOD" import tiny.safetensors
expect_rc 1 "a <lora:> tag naming nothing" "$MOOD" gen "a cat <lora:nothere:1>" "${common[@]}"
check "says both places were looked in" grep -q "<lora:nothere>: no such file here, and no style named 'nothere' in the registry" "$tmp/err"
rm -f "$MOOD_HOME"/blobs/sha256/*/*
expect_rc 2 "a style whose stored file is gone" "$MOOD" gen "a cat" "${common[@]}" --style tiny
check "points at mood doctor" grep -q "style 'tiny' (its LoRA).*'mood doctor'" "$tmp/err"

# --from-png of a PNG without A1111's text: bad input (1), naming ComfyUI's graph when it is there
py '
import struct, sys, zlib
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
raw = b"".join(b"\x00" + b"\x00\x00\x00" * 4 for _ in range(4))
head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
tail = chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open("plain.png", "wb").write(head + tail)
open("comfy.png", "wb").write(head + chunk(b"tEXt", b"prompt\x00{\"3\": {}}") + tail)'
expect_rc 1 "--from-png of a PNG without parameters" "$MOOD" gen --from-png plain.png --model "$MODEL"
check "says it has none" grep -q 'plain.png has no A1111 parameters (a PNG.s "parameters" text or the EXIF UserComment' "$tmp/err"
expect_rc 1 "--from-png of a ComfyUI PNG" "$MOOD" gen --from-png comfy.png --model "$MODEL"
check "names ComfyUI's workflow" grep -q "but a ComfyUI workflow" "$tmp/err"
expect_rc 2 "--from-png of a missing file" "$MOOD" gen --from-png nothere.png --model "$MODEL"
finish
