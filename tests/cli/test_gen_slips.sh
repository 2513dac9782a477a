#!/usr/bin/env bash
# test_gen_slips.sh: what `mood gen` says to the common slips, on the tiny diffusers pipeline of
# tests/fixtures/pipeline: --device after the command works as before it; a registry name given
# to --lora (a file option) is missing-file exit 2 with the registry's syntax named; a LoRA given
# as the model names the path once; a LoRA of the right family for a model of other sizes says
# so; a style whose stored file was deleted points at `mood doctor`.
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
rm -f "$MOOD_HOME"/blobs/sha256/*/*
expect_rc 2 "a style whose stored file is gone" "$MOOD" gen "a cat" "${common[@]}" --style tiny
check "points at mood doctor" grep -q "style 'tiny' (its LoRA).*'mood doctor'" "$tmp/err"
finish
