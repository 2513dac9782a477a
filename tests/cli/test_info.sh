#!/usr/bin/env bash
# test_info.sh: `mood info`, `mood help` and the dispatcher: help for every command, JSON output,
# and exit codes for unknown commands and options.
. "$(dirname "$0")/lib.sh"

out=$("$MOOD" info); check "info prints version" grep -q "^mood [0-9]" <<<"$out"
check "info names the registry" grep -q "registry:" <<<"$out"
json=$(MOOD_HOME=/tmp/somewhere "$MOOD" info --json)
check "info --json parses and honours MOOD_HOME" python3 -c '
import json,sys; d=json.loads(sys.argv[1]); assert d["registry"]=="/tmp/somewhere"; assert "cpu" in d["backends"]' "$json"

"$MOOD" help >/dev/null; check "help exits 0" test $? -eq 0
for c in info inspect hash bake "lora stack" "lora merge" "lora resize" "lora extract"; do
    # shellcheck disable=SC2086
    text=$("$MOOD" help $c); check "help $c has usage" grep -q "^usage: mood $c" <<<"$text"
done
"$MOOD" frobnicate 2>/dev/null; check "unknown command exits 1" test $? -eq 1
"$MOOD" lora 2>/dev/null; check "'mood lora' alone exits 1" test $? -eq 1
"$MOOD" info --bogus 2>/dev/null; check "unknown option exits 1" test $? -eq 1
"$MOOD" 2>/dev/null; check "no command exits 1" test $? -eq 1

finish
