#!/usr/bin/env bash
# example.sh: the README's tour of the LoRA file engine and the registry. Installs what the build needs, builds mood, then runs
# it on the bundled example files: inspects and hashes a LoRA, bakes two LoRAs into the tiny
# example checkpoint at chosen strengths, stacks them, inspects the result, then imports them
# into a style registry (in examples/out/example-registry, not your own, nor the one tools/demo.sh
# uses) and makes a style of both.
# Last it generates: `mood gen` with a style on the tiny random-weight SD1 pipeline of the tests
# (its images are noise: it shows the mechanics, PNG parameters and --from-png; tools/demo.sh
# makes real pictures with the trained small model mood-tiny), then regenerates the image from
# its PNG.
# Output goes to examples/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-deps.sh
cmake -S . -B build -G Ninja >/dev/null
ninja -C build mood_cli >/dev/null
mood=build/mood
out=examples/out
mkdir -p "$out"

# shows each command quoted as a shell would need it (to paste), then runs it
step() { printf '\n\033[1m$'; printf ' %q' "$@"; printf '\033[0m\n'; "$@"; }
step "$mood" inspect examples/loras/inkwash.safetensors
step "$mood" hash examples/loras/film-grain.safetensors
step "$mood" bake --model examples/models/tiny-sd1.safetensors \
    --lora examples/loras/inkwash.safetensors:0.8 \
    --lora examples/loras/film-grain.safetensors:0.3:0.5 -o "$out/tiny-sd1-baked.safetensors"
step "$mood" lora stack examples/loras/inkwash.safetensors:0.8 \
    examples/loras/film-grain.safetensors:0.3 -o "$out/inkwash+grain.safetensors"
step "$mood" inspect "$out/tiny-sd1-baked.safetensors"

export MOOD_HOME="$out/example-registry" MOOD_OFFLINE=1
rm -rf "$MOOD_HOME"
step "$mood" import examples/loras
step "$mood" style create ink-and-grain --lora inkwash:0.8 --lora film-grain:0.3 \
    --trigger "inkwash, film grain" --template "{prompt}, ink wash painting"
step "$mood" list
step "$mood" search grain
tiny=tests/fixtures/pipeline
cp "$tiny/lora.safetensors" "$out/tiny-style.safetensors"
step "$mood" import "$out/tiny-style.safetensors"
step "$mood" style edit tiny-style --template "{prompt}, in the tiny style" --weight 0.7
step "$mood" gen "a lighthouse at dusk" --model "$tiny/tiny-sd" --style tiny-style --size 64x64 \
    --steps 8 --seed 42 --sampler "DPM++ 2M Karras" -o "$out/lighthouse.png"
step "$mood" gen --from-png "$out/lighthouse.png" --model "$tiny/tiny-sd" -o "$out/again.png"
cmp "$out/lighthouse.png" "$out/again.png" && echo "regenerated from its parameters: identical"
printf '\nWrote %s/tiny-sd1-baked.safetensors, %s/inkwash+grain.safetensors, %s/lighthouse.png and\n' \
    "$out" "$out" "$out"
printf 'a registry in %s\n' "$MOOD_HOME"
