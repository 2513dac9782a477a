#!/usr/bin/env bash
# test_info.sh: `mood info`, `mood help` and the dispatcher: help for every command, JSON output,
# and exit codes for unknown commands and options.
. "$(dirname "$0")/lib.sh"

out=$("$MOOD" info); check "info prints version" grep -q "^mood [0-9]" <<<"$out"
check "info names the registry" grep -q "registry:" <<<"$out"
json=$(MOOD_HOME=/tmp/somewhere "$MOOD" info --json)
check "info --json parses and honours MOOD_HOME" python3 -c '
import json,sys; d=json.loads(sys.argv[1]); assert d["registry"]=="/tmp/somewhere"; assert "cpu" in d["backends"]' "$json"

# the global --device option and MOOD_DEVICE (the rule itself: test_device.c)
expect_rc 1 "--device with a bad value" "$MOOD" --device tpu info
check "names the bad value" grep -q "'tpu'" "$tmp/err"
expect_rc 1 "--device without a value" "$MOOD" --device
check "info shows the device asked for" grep -q "^device: *cpu (asked for)" <(MOOD_DEVICE=cuda "$MOOD" --device cpu info)
gpus=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["cuda_devices"])' "$json")
if [ "$gpus" = 0 ]; then
    # no GPU here: asking for one is an environment error before any work; the default is the CPU
    expect_rc 2 "--device cuda without a GPU" "$MOOD" --device cuda gen "a prompt"
    check "says there is no GPU" grep -Eq "no CUDA GPU|no CUDA backend" "$tmp/err"
    MOOD_DEVICE=cuda expect_rc 2 "MOOD_DEVICE=cuda without a GPU" "$MOOD" gen "a prompt"
    check "names MOOD_DEVICE" grep -q "MOOD_DEVICE" "$tmp/err"
    check "default device is the CPU" grep -q '"kind":[[:space:]]*"cpu"' <<<"$json"
fi

# --json: a failure still prints one JSON document on stdout, {error, exit_status} (most commands
# printed nothing there), its exit_status the process's
for cmd in "show nosuchstyle --json" "gen x --json --bogus 1" "list --json --tag" \
    "pack import $tmp/none.moodpack --json" "inspect $tmp/none.safetensors --json" \
    "--device bogus list --json" "list --json=1" "info --json --device" "train --json --name x -o"; do
    # shellcheck disable=SC2086
    "$MOOD" $cmd >"$tmp/out" 2>"$tmp/err"
    rc=$?
    check "$cmd: one error document, exit $rc" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["error"] and d["exit_status"]==int(sys.argv[2]) and sys.argv[2]!="0", d' "$tmp/out" "$rc"
done
# --device after the command, where people put it, as gen and demo take it
expect_rc 0 "info --device cpu" "$MOOD" info --device cpu
check "says the device asked for" grep -q "^device: *cpu (asked for)" "$tmp/out"
"$MOOD" help >/dev/null; check "help exits 0" test $? -eq 0
for c in info inspect hash bake "lora stack" "lora merge" "lora resize" "lora extract"; do
    # shellcheck disable=SC2086
    text=$("$MOOD" help $c); check "help $c has usage" grep -q "^usage: mood $c" <<<"$text"
done
# every help page fits a 100-column terminal (awk counts bytes: UTF-8 examples count wider)
wide=""
while read -r c; do
    # shellcheck disable=SC2086
    [ -n "$("$MOOD" help $c 2>/dev/null | LC_ALL=C.UTF-8 awk 'length > 100')" ] && wide="$wide $c"
done < <("$MOOD" help | awk '/^  [a-z]/{print $1} /^  (lora|style|pack|civitai) [a-z]/{print $1" "$2}')
check "help pages within 100 columns (too wide:$wide)" test -z "$wide"
"$MOOD" frobnicate 2>/dev/null; check "unknown command exits 1" test $? -eq 1
expect_rc 1 "a slip in a command's name" "$MOOD" lsit
check "suggests the command" grep -q "unknown command 'lsit'; did you mean 'list'?" "$tmp/err"
"$MOOD" lora 2>/dev/null; check "'mood lora' alone exits 1" test $? -eq 1
"$MOOD" info --bogus 2>/dev/null; check "unknown option exits 1" test $? -eq 1
expect_rc 1 "info FILE" "$MOOD" info "$FIX/kohya/sd1_lora.safetensors"
check "says inspect describes a file" grep -q "info describes mood itself ('mood inspect FILE' describes a file)" "$tmp/err"
"$MOOD" 2>/dev/null; check "no command exits 1" test $? -eq 1
# an option its help documents with a value, given last without one, is said to need it (import
# called --nsfw unknown; six wordings besides); one nobody documents is unknown, in every command
for cmd in "import x --nsfw" "gen x --steps" "train --lr" "list --tag" "pack export x --license" \
    "lora stack x --dtype" "bake --model" "train --name x -o" "train --name x --device" \
    "train --name x --resolution"; do
    # shellcheck disable=SC2086
    expect_rc 1 "$cmd (no value)" "$MOOD" $cmd
    check "$cmd: says it needs a value" grep -q "error: option '-[-a-z]*' needs a value" "$tmp/err"
done
for cmd in "import x --bogus" "gen x --bogus 1" "list --bogus" "doctor --bogus" "lora stack x --bogus"; do
    # shellcheck disable=SC2086
    expect_rc 1 "$cmd" "$MOOD" $cmd
    check "$cmd: unknown" grep -q "error: unknown option '--bogus'" "$tmp/err"
done
out=$("$MOOD" help lora); check "'mood help lora' lists the lora commands" grep -q "lora resize" <<<"$out"
"$MOOD" help nosuch 2>/dev/null; check "help of no command exits 1" test $? -eq 1
expect_rc 0 "help help" "$MOOD" help help
check "is the overview" grep -q "mood help <command>" "$tmp/out"
expect_rc 1 "help of no lora command" "$MOOD" help lora nosuch
check "only the error, on stderr" test ! -s "$tmp/out"
check "... naming the command" grep -q "no command 'lora nosuch'" "$tmp/err"
# after --, "-h" is a query or a prompt, not a request for help
MOOD_HOME=$tmp/home expect_rc 0 "search -- -h" "$MOOD" search -- -h
check "searched" grep -qi "no styles match" "$tmp/out"
expect_rc 0 "tokenize -- -h" "$MOOD" tokenize -- -h
check "tokenized" grep -q "tokens" "$tmp/out"
# --option=value as GNU tools take it, for every command; -- ends the options
MOOD_HOME=$tmp/home expect_rc 0 "gen --model=M --steps=1 -o=F" "$MOOD" gen "a cat" \
    --model="${MOOD_SOURCE:-.}/data/mood-tiny" --steps=1 --output="$tmp/eq.png"
check "wrote the image" test -s "$tmp/eq.png"
MOOD_HOME=$tmp/home expect_rc 0 "train --steps=1 --device=cpu" "$MOOD" train --name=eq \
    --board="${MOOD_SOURCE:-.}/examples/moodboards/twemoji" --model=mood-tiny --steps=1 \
    --device=cpu --no-register -o "$tmp/eq.safetensors"
check "wrote the LoRA" test -s "$tmp/eq.safetensors"
# a flag given a value is refused: the value was read as a name (rm no --json=true removed "true")
expect_rc 1 "rm x --json=true" "$MOOD" rm x --json=true
check "says --json takes no value" grep -q -- "--json takes no value" "$tmp/err"
# an option's value is its value, '=' or not
MOOD_HOME=$tmp/home expect_rc 0 "--negative \"--ugly=1\"" "$MOOD" gen "a cat" \
    --model="${MOOD_SOURCE:-.}/data/mood-tiny" --negative "--ugly=1" --steps=1 --output="$tmp/neg.png"
check "the negative prompt as given" grep -aq "Negative prompt: --ugly=1" "$tmp/neg.png"
MOOD_HOME=$tmp/home expect_rc 0 "--seed -1 --steps=1: a number is a value, the next word split" \
    "$MOOD" gen "a cat" --model="${MOOD_SOURCE:-.}/data/mood-tiny" --seed -1 --steps=1 -o "$tmp/s1.png"
expect_rc 1 "an unknown --option=value named" "$MOOD" gen "a prompt" --bogus=1
check "as an unknown option" grep -q "unknown option '--bogus'" "$tmp/err"
expect_rc 1 "a kohya spelling: says mood's" "$MOOD" lora merge a.safetensors --clamp_quantile 0.9
check "--clamp-quantile" grep -q "in mood: --clamp-quantile" "$tmp/err"

finish
