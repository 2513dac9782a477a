#!/usr/bin/env bash
# test_civitai_all.sh: `mood civitai link --all` against tests/mock_civitai.py ("scan all models"
# after importing a folder): 150 LoRAs looked up in 2 batch requests (not 150 lookups) with their
# model fetched once, the records matched to the LoRAs by SHA-256 whatever their order, unknown
# files reported as not on Civitai, linked LoRAs skipped by the next run (--refresh redoes them),
# the --json list, the text summary, the fallback to one lookup per file on a server without the
# batch endpoint (405, 404), and Civitai unreachable (nothing stored, the reason once).
# Skips (77) when python3 is missing.
. "$(dirname "$0")/lib.sh"

command -v python3 >/dev/null 2>&1 || { echo "python3 not found: skipped"; exit 77; }
PY=$(python3 -c 'import sys; print(sys.executable)') # the interpreter itself, not a shim
SRC=${MOOD_SOURCE:-$(dirname "$0")/../..}
V1=$FIX/kohya/sd1_lora.safetensors

# 150 LoRAs of their own (a low mantissa byte of the last two F32 values changed): Civitai knows
# l000..l139 (the mock's --known folder), not l140..l149
mkdir -p "$tmp/loras" "$tmp/known"
"$PY" -c '
import sys
d = bytearray(open(sys.argv[1], "rb").read())
for i in range(150):
    d[-4], d[-8] = i & 0xFF, i >> 8
    open("%s/l%03d.safetensors" % (sys.argv[2], i), "wb").write(d)' "$V1" "$tmp/loras"
cp "$tmp"/loras/l0*.safetensors "$tmp"/loras/l1[0-3]?.safetensors "$tmp/known/"

pids=()
# start_mock NAME ARGS...: a mock server logging to $tmp/NAME.log; its URL in $tmp/NAME.url
start_mock() {
    local name=$1
    shift
    "$PY" "$SRC/tests/mock_civitai.py" --port-file "$tmp/$name.port" --log "$tmp/$name.log" \
        --lifetime 120 --lora "$V1" --known "$tmp/known" "$@" &
    pids+=($!)
    for _ in $(seq 100); do [ -s "$tmp/$name.port" ] && break; sleep 0.1; done
    [ -s "$tmp/$name.port" ] || { echo "FAIL: mock_civitai.py ($name) did not start"; exit 1; }
    echo "http://127.0.0.1:$(cat "$tmp/$name.port")" >"$tmp/$name.url"
    touch "$tmp/$name.log"
}
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT
start_mock batch
start_mock no405 --batch-status 405
start_mock no404 --batch-status 404
URL=$(cat "$tmp/batch.url")

export MOOD_CIVITAI_URL=$URL MOOD_HTTP_RETRY_MS=20 no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
unset MOOD_OFFLINE CIVITAI_TOKEN MOOD_HTTP_RETRIES
py() { "$PY" -c "$@"; }
home() { export MOOD_HOME=$tmp/$1; }
# lines LOG PATTERN: the requests of that mock matching an extended regex
lines() { grep -cE "$2" "$tmp/$1.log"; }
civitai_sources() { py 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM sources WHERE kind=\"civitai\"").fetchone()[0])' "$MOOD_HOME/registry.db"; }

# ----- the mock's batch endpoint, as the spec says
check "mock: 101 hashes or a short hash is 400, unknown ones dropped" py '
import json, sys, urllib.request, urllib.error
def post(body):
    req = urllib.request.Request(sys.argv[1] + "/api/v1/model-versions/by-hash", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        return 200, json.load(urllib.request.urlopen(req))
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
s, d = post(["0" * 64] * 101); assert s == 400 and "array of SHA256" in d["error"], (s, d)
s, d = post(["3B4B65D6428F"]); assert s == 400, (s, d)
s, d = post(["3b4b65d6428f8f873a91db79353c66ea470c0de01e159cd805dfc4527ea37a59", "0" * 64])
assert s == 200 and d == [], (s, d)  # --lora replaced the fixture: its hash is unknown now
' "$URL"

# ----- a folder imported offline, one style already linked, one style of two LoRAs
home h1
MOOD_OFFLINE=1 expect_rc 0 "import 150 LoRAs" "$MOOD" import "$tmp/loras"
cp "$V1" "$tmp/pre.safetensors"
MOOD_OFFLINE=1 expect_rc 0 "import pre" "$MOOD" import "$tmp/pre.safetensors"
expect_rc 0 "link pre by name" "$MOOD" civitai link pre
"$MOOD" style create combo --lora l000 --lora l001 >/dev/null 2>&1 || fail "style create combo"
: >"$tmp/batch.log"
expect_rc 0 "link --all: some unknown to Civitai (an answer, not a failure)" "$MOOD" civitai link --all --json --nsfw none
check "--all --json: every unlinked (style, LoRA), matched by hash, pre skipped" py '
import json, sys; d = json.load(open(sys.argv[1]))
assert len(d) == 152 and "pre" not in [x["name"] for x in d], len(d)
assert [x["name"] for x in d[:3]] == ["combo", "combo", "l000"], d[:3]
for x in d:
    i = int(x["file"][1:4])
    assert len(x["sha256"]) == 64 and x["file"] == "l%03d.safetensors" % i, x
    if i < 140:
        assert x["status"] == "linked" and x["version_id"] == 910001 + i and x["model_id"] == 900001, x
        assert x["version_name"] == "v-l%03d" % i and x["base_model"] == "SD 1.5", x
    else:
        assert x["status"] == "not_found" and "Civitai does not know the file l%03d.safetensors of style" % i in x["error"], x
' "$tmp/out"
check "150 LoRAs: 2 batch requests (100 + 50), no lookup one by one" \
    [ "$(lines batch '^POST /api/v1/model-versions/by-hash n=100 ')" = 1 ] &&
    [ "$(lines batch '^POST /api/v1/model-versions/by-hash n=50 ')" = 1 ] &&
    [ "$(lines batch '^POST ')" = 2 ] && [ "$(lines batch '^GET /api/v1/model-versions/')" = 0 ]
check "the model fetched once for its 140 versions" [ "$(lines batch '^GET /api/v1/models/900001 ')" = 1 ]
expect_rc 0 "show l007" "$MOOD" show l007 --json
check "l007 stored: version, trigger words" py '
import json, sys; d = json.load(open(sys.argv[1]))
assert d["trigger_words"] == "inkwash style", d["trigger_words"]
s = [s for a in d["adapters"] for s in a["sources"] if s["kind"] == "civitai"]
assert [x["version_id"] for x in s] == [910008] and s[0]["model_name"] == "Mock Ink Wash Style", s' "$tmp/out"
expect_rc 0 "show combo" "$MOOD" show combo --json
check "combo: both LoRAs linked (l000 looked up once, stored for both styles)" py '
import json, sys; d = json.load(open(sys.argv[1]))
assert sorted(s["version_id"] for a in d["adapters"] for s in a["sources"] if s["kind"] == "civitai") == [910001, 910002], d' "$tmp/out"
check "141 LoRAs with a Civitai record" [ "$(civitai_sources)" = 141 ]

# ----- the next run: only the 10 still unlinked, in one request; the summary
: >"$tmp/batch.log"
expect_rc 0 "link --all again" "$MOOD" civitai link --all --nsfw none
check "again: one request for the 10 left" [ "$(lines batch '^POST /api/v1/model-versions/by-hash n=10 ')" = 1 ] && [ "$(lines batch '^(GET|POST) /api/')" = 1 ]
check "summary: counts, the first unknown named, no failure" py '
import sys; o = open(sys.argv[1]).read(); e = open(sys.argv[2]).read()
assert "0 of 10 LoRAs linked to Civitai, 10 not on Civitai, 0 failed" in o, o
assert "not on Civitai: l140 (l140.safetensors), l141 (l141.safetensors)" in o and "and 5 more" in o, o
assert "warning" not in e and "error" not in e, e' "$tmp/out" "$tmp/err"
: >"$tmp/batch.log"
expect_rc 0 "link --all --refresh" "$MOOD" civitai link --all --refresh --json --nsfw none
check "--refresh: every (style, LoRA) again, pre too, 2 requests" py '
import json, sys; d = json.load(open(sys.argv[1])); n = [x for x in d if x["name"] == "pre"]
assert len(d) == 153 and len(n) == 1 and n[0]["status"] == "linked" and n[0]["version_id"] == 900101, (len(d), n)' "$tmp/out" &&
    [ "$(lines batch '^POST ')" = 2 ]
check "still 141 records, none twice" [ "$(civitai_sources)" = 141 ]

# ----- a registry where everything is linked
home h2
MOOD_OFFLINE=1 expect_rc 0 "import two known" "$MOOD" import "$tmp/loras/l005.safetensors" "$tmp/loras/l006.safetensors"
expect_rc 0 "link --all: both" "$MOOD" civitai link --all
check "summary: both linked" grep -q "^2 of 2 LoRAs linked to Civitai, 0 not on Civitai, 0 failed" "$tmp/out"
expect_rc 0 "link --all: nothing left" "$MOOD" civitai link --all --json
check "nothing left: an empty list" py 'import json,sys; assert json.load(open(sys.argv[1])) == []' "$tmp/out"
expect_rc 0 "link --all: nothing left (human)" "$MOOD" civitai link --all
check "says there is nothing to link" grep -q "^nothing to link" "$tmp/out"

# ----- a server without the batch endpoint: one warning, then one lookup per LoRA
for st in 405 404; do
    home "h$st"
    MOOD_OFFLINE=1 expect_rc 0 "import three ($st)" "$MOOD" import "$tmp/loras/l001.safetensors" "$tmp/loras/l002.safetensors" "$tmp/loras/l145.safetensors"
    MOOD_CIVITAI_URL=$(cat "$tmp/no$st.url") expect_rc 0 "link --all, batch answers $st" "$MOOD" civitai link --all --json --nsfw none
    check "$st: the same results as a batch" py '
import json, sys; d = json.load(open(sys.argv[1]))
assert [(x["name"], x["status"], x.get("version_id")) for x in d] == [("l001", "linked", 910002), ("l002", "linked", 910003), ("l145", "not_found", None)], d' "$tmp/out"
    check "$st: one warning saying so" py '
import sys; w = [l for l in open(sys.argv[1]).read().splitlines() if "warning" in l]
assert len(w) == 1 and "no batch lookup by hash there (HTTP '"$st"')" in w[0] and "each LoRA" in w[0], w' "$tmp/err"
    check "$st: one POST, then one GET per LoRA" [ "$(lines "no$st" '^POST ')" = 1 ] && [ "$(lines "no$st" '^GET /api/v1/model-versions/by-hash/')" = 3 ]
    : >"$tmp/no$st.log"
done

# ----- Civitai unreachable: every LoRA failed, the reason once, nothing stored
home h3
MOOD_OFFLINE=1 expect_rc 0 "import three" "$MOOD" import "$tmp/loras/l001.safetensors" "$tmp/loras/l002.safetensors" "$tmp/loras/l003.safetensors"
MOOD_CIVITAI_URL=http://127.0.0.1:1 expect_rc 2 "link --all, Civitai unreachable" "$MOOD" civitai link --all
check "unreachable: counts, one warning naming the styles and the server" py '
import sys; o = open(sys.argv[1]).read(); e = open(sys.argv[2]).read()
assert "0 of 3 LoRAs linked to Civitai, 0 not on Civitai, 3 failed" in o, o
w = [l for l in e.splitlines() if "warning" in l]
assert len(w) == 1 and "not linked: l001, l002, l003: " in w[0] and "127.0.0.1:1" in w[0], e' "$tmp/out" "$tmp/err"
MOOD_CIVITAI_URL=http://127.0.0.1:1 expect_rc 2 "link --all --json, unreachable" "$MOOD" civitai link --all --json
check "unreachable --json: an error per LoRA" py '
import json, sys; d = json.load(open(sys.argv[1]))
assert [(x["name"], x["status"]) for x in d] == [("l001", "error"), ("l002", "error"), ("l003", "error")], d
assert all("127.0.0.1:1" in x["error"] for x in d), d' "$tmp/out"
check "unreachable: nothing stored" [ "$(civitai_sources)" = 0 ]

# ----- usage
expect_rc 1 "--all with names" "$MOOD" civitai link --all l001
check "says not both" grep -q "not both" "$tmp/err"
expect_rc 1 "--refresh without --all" "$MOOD" civitai link l001 --refresh
check "says --refresh goes with --all" grep -q "refresh goes with --all" "$tmp/err"
MOOD_OFFLINE=1 expect_rc 2 "MOOD_OFFLINE=1 link --all" "$MOOD" civitai link --all
check "MOOD_OFFLINE refuses it" grep -q "MOOD_OFFLINE=1" "$tmp/err"

finish
