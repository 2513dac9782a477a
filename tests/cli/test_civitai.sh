#!/usr/bin/env bash
# test_civitai.sh: `mood import` of Civitai references and URLs, `mood civitai link` and
# `mood update-check` against tests/mock_civitai.py (started here on 127.0.0.1, stopped on exit):
# token handling (401 without, never stored), early access (403), archived (410), unknown hash
# (404), 429 then success, a download cut off half-way and resumed with Range, bytes that do not
# match the published SHA-256 (rejected, nothing stored), --nsfw preview filtering, styles of
# several LoRAs (link reports each LoRA, update-check counts each style once and says what it
# could not check), exit status 1 for a style not in the registry, and a warning for a LoRA
# Civitai lists for another base family than its file's (none when they agree or Civitai's base
# model is none mood knows).
# Skips (77) when python3 is missing.
. "$(dirname "$0")/lib.sh"

command -v python3 >/dev/null 2>&1 || { echo "python3 not found: skipped"; exit 77; }
PY=$(python3 -c 'import sys; print(sys.executable)') # the interpreter itself, not a shim
SRC=${MOOD_SOURCE:-$(dirname "$0")/../..}
V1=$FIX/kohya/sd1_lora_bf16.safetensors
V2=$FIX/kohya/sd1_lora.safetensors

# Civitai's records of these say another base model than "SD 1.5" (the base model warning)
mkdir -p "$tmp/known"
cp "$FIX/kohya/sdxl_lora.safetensors" "$tmp/known/xl.safetensors"     # SDXL keys, "SD 1.5"
cp "$FIX/kohya/sdxl_locon.safetensors" "$tmp/known/pony.safetensors"  # SDXL keys, "Pony"
cp "$FIX/kohya/sd1_locon_fp16.safetensors" "$tmp/known/flux.safetensors" # SD 1 keys, "Flux.1 D"
cp "$FIX/kohya/sd2_locon.safetensors" "$tmp/known/sd2.safetensors"   # SD 2 keys, "SDXL 1.0"
"$PY" "$SRC/tests/mock_civitai.py" --port-file "$tmp/port" --log "$tmp/server.log" \
    --lifetime 120 --lora "$V1" --lora-v2 "$V2" --known "$tmp/known" \
    --base-model pony.safetensors=Pony --base-model "flux.safetensors=Flux.1 D" \
    --base-model "sd2.safetensors=SDXL 1.0" &
srv=$!
trap 'kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { echo "FAIL: mock_civitai.py did not start"; exit 1; }
URL=http://127.0.0.1:$(cat "$tmp/port")

export MOOD_CIVITAI_URL=$URL MOOD_HTTP_RETRY_MS=20 no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
unset MOOD_OFFLINE CIVITAI_TOKEN MOOD_HTTP_RETRIES
py() { "$PY" -c "$@"; }
home() { export MOOD_HOME=$tmp/$1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
styles() { "$MOOD" list --json | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
blobs() { find "$MOOD_HOME/blobs/sha256" -type f 2>/dev/null | wc -l; }

# ----- tokens and refusals
home h1
expect_rc 2 "no token: 401" "$MOOD" import civitai:900101
check "401 message says how to fix it" grep -q "needs a Civitai API token: set CIVITAI_TOKEN" "$tmp/err"
check "401 message names the URL" grep -q "$URL/api/download/models/900101" "$tmp/err"
check "nothing stored after 401" [ "$(styles)" = 0 ] && [ "$(blobs)" = 0 ]
CIVITAI_TOKEN=SECRET-wrong expect_rc 2 "wrong token: 401" "$MOOD" import civitai:900101
check "wrong token refused, not shown" py 'import sys; t=open(sys.argv[1]).read(); assert "refused" in t and "SECRET" not in t, t' "$tmp/err"
export CIVITAI_TOKEN=good-key
expect_rc 2 "early access: 403" "$MOOD" import civitai:900102
check "403 explains early access" grep -q "early access" "$tmp/err"
expect_rc 2 "archived: 410" "$MOOD" import civitai:900103
check "410 says removed" grep -q "410 Gone" "$tmp/err"
expect_rc 1 "not a reference" "$MOOD" import civitai:abc
check "bad reference explained" grep -q "civitai:VERSION_ID" "$tmp/err"
expect_rc 2 "unknown version: 404" "$MOOD" import civitai:424242
check "nothing stored after refusals" [ "$(styles)" = 0 ] && [ "$(blobs)" = 0 ]

# ----- a Civitai import
expect_rc 0 "import civitai:900101" "$MOOD" import civitai:900101 --json
check "import --json: style and Civitai ids" py '
import json,sys; d=json.load(open(sys.argv[1])); i=d["imported"][0]
assert i["name"]=="mock_ink_style" and i["family"]=="sd1", i
assert i["civitai"]["version_id"]==900101 and i["civitai"]["model_id"]==900001, i
assert i["civitai"]["air"]=="urn:air:sd1:lora:civitai:900001@900101", i
assert i["n_previews"]==1 and i["sidecars"]==0, i' "$tmp/out"
check "a matching base model is not warned of" py 'import sys; e=open(sys.argv[1]).read(); assert "Civitai lists it" not in e, e' "$tmp/err"
check "the stored file is the published one" [ "$(blobs)" -ge 2 ] && [ -f "$MOOD_HOME/blobs/sha256/$(sha "$V1" | cut -c1-2)/$(sha "$V1" | cut -c3-)" ]
expect_rc 0 "show --json" "$MOOD" show mock_ink_style --json
check "show: trigger words, description, AIR, licence, one PG preview" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["trigger_words"]=="inkwash style", d["trigger_words"]
assert "Test LoRA." in (d["description"] or ""), d["description"]
src=[s for a in d["adapters"] for s in a["sources"] if s["kind"]=="civitai"]
assert len(src)==1, d["adapters"]
s=src[0]; assert s["air"]=="urn:air:sd1:lora:civitai:900001@900101" and s["version_id"]==900101
assert s["model_name"]=="Mock Ink Wash Style" and s["version_name"]=="v1.0" and s["base_model"]=="SD 1.5"
assert "credit not required" in s["license"] and s["nsfw_level"]==1, s
assert not any(x["kind"]=="file" for a in d["adapters"] for x in a["sources"]), "temp path kept"
assert len(d["previews"])==1 and d["previews"][0]["nsfw_level"]==1, d["previews"]
assert sorted(d["tags"])==["ink","style"], d["tags"]' "$tmp/out"
check "token never stored" [ -z "$(grep -rla good-key "$MOOD_HOME")" ]
check "downloads folder left empty" [ -z "$(ls -A "$MOOD_HOME/downloads")" ]
check "storage never saw the token" py 'import sys; t=open(sys.argv[1]).read(); assert "/storage/noauth/mock_ink_style.safetensors auth=no" in t and "storage/noauth/mock_ink_style.safetensors auth=yes" not in t' "$tmp/server.log"
expect_rc 0 "the same again" "$MOOD" import urn:air:sd1:lora:civitai:900001@900101
check "second import: already there" grep -q "already in the registry as mock_ink_style" "$tmp/out"
check "still one style" [ "$(styles)" = 1 ]

# ----- update check: model 900001 has v2.0 (900107) for SD 1.5
expect_rc 0 "update-check --json" "$MOOD" update-check --json
check "update-check finds v2.0" py '
import json,sys; d=json.load(open(sys.argv[1])); u=d["updates"]
assert d["checked"]==1 and len(u)==1, d
assert u[0]["name"]=="mock_ink_style" and u[0]["latest_version_id"]==900107 and u[0]["version_id"]==900101, u
assert u[0]["url"].endswith("/models/900001?modelVersionId=900107"), u' "$tmp/out"
expect_rc 0 "a model page URL imports the latest version" "$MOOD" import "$URL/models/900001/mock-ink-wash" --json
check "latest = v2.0" py '
import json,sys; i=json.load(open(sys.argv[1]))["imported"][0]
assert i["name"]=="mock_ink_style_v2" and i["civitai"]["version_id"]==900107, i' "$tmp/out"
expect_rc 0 "update-check (human)" "$MOOD" update-check
check "update-check lists only the old one" py '
import sys; t=open(sys.argv[1]).read(); assert t.startswith("mock_ink_style: v1.0 -> v2.0") and t.count("\n")==1, t' "$tmp/out"

# ----- bytes that do not match the published SHA-256
home h2
expect_rc 2 "corrupt download refused" "$MOOD" import civitai:900104
check "hash mismatch explained" grep -q "SHA-256" "$tmp/err"
check "nothing stored after a mismatch" [ "$(styles)" = 0 ] && [ "$(blobs)" = 0 ] && [ -z "$(ls -A "$MOOD_HOME/downloads")" ]

# ----- a download cut off half-way, resumed by the next run
MOOD_HTTP_RETRIES=0 expect_rc 2 "cut off, no retries" "$MOOD" import civitai:900105
check "the partial download is kept" [ -n "$(ls -A "$MOOD_HOME/downloads")" ]
expect_rc 0 "the next run resumes" "$MOOD" import civitai:900105
check "resumed with Range" grep -q "GET /storage/cut/mock_ink_style.safetensors auth=no range=bytes=" "$tmp/server.log"
check "resumed file is whole" [ -f "$MOOD_HOME/blobs/sha256/$(sha "$V1" | cut -c1-2)/$(sha "$V1" | cut -c3-)" ]

# ----- a plain URL (no published hash) cut off, and the file changed on the server before the
# next run: the resume sends If-Range with the first answer's ETag and gets the new file whole
# (it spliced the new end onto the old start and imported that); without any validator the next
# run starts from the first byte
home hflip
expect_rc 2 "URL cut off" env -u CIVITAI_TOKEN MOOD_HTTP_RETRIES=0 "$MOOD" import "$URL/storage/cutflip/mock_ink_style.safetensors"
expect_rc 0 "the next run, after the file changed" env -u CIVITAI_TOKEN "$MOOD" import "$URL/storage/cutflip/mock_ink_style.safetensors" --json
check "asked with If-Range" grep -q "GET /storage/cutflip/mock_ink_style.safetensors auth=no range=bytes=" "$tmp/server.log"
check "the changed file, whole" py '
import hashlib, json, sys, urllib.request
want = hashlib.sha256(urllib.request.urlopen(sys.argv[2] + "/storage/cutflip/mock_ink_style.safetensors").read()).hexdigest()
got = json.load(open(sys.argv[1]))["imported"][0]["sha256"]
assert got == want, (got, want)' "$tmp/out" "$URL"
home hbare
expect_rc 2 "URL cut off, no validator" env -u CIVITAI_TOKEN MOOD_HTTP_RETRIES=0 "$MOOD" import "$URL/storage/cutbare/mock_ink_style.safetensors"
before=$(wc -l <"$tmp/server.log")
expect_rc 2 "the next run starts over (and is cut again)" env -u CIVITAI_TOKEN MOOD_HTTP_RETRIES=0 "$MOOD" import "$URL/storage/cutbare/mock_ink_style.safetensors"
check "no Range without a validator" bash -c "tail -n +$((before + 1)) '$tmp/server.log' | grep -q 'GET /storage/cutbare/mock_ink_style.safetensors auth=no range=- '"

# ----- 429 then success; --nsfw x keeps both previews
home h3
expect_rc 0 "429 then success" "$MOOD" import civitai:900106 --nsfw x --json
check "429 was answered once" [ "$(grep -c "GET /api/v1/model-versions/900106" "$tmp/server.log")" -ge 2 ]
expect_rc 0 "show" "$MOOD" show mock_ink_style --json
check "--nsfw x: two previews" py 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["previews"])==2, d["previews"]' "$tmp/out"

# ----- a local file: looked up by hash (unless --offline), then civitai link
home h4
cp "$V1" "$tmp/mine.safetensors"
expect_rc 0 "local import, offline" "$MOOD" import "$tmp/mine.safetensors" --offline --json
check "offline: no Civitai data" py 'import json,sys; i=json.load(open(sys.argv[1]))["imported"][0]; assert "civitai" not in i, i' "$tmp/out"
expect_rc 0 "civitai link" "$MOOD" civitai link mine MINE mine --json
check "link found 900101, the style named three ways looked up once" py 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==1 and d[0]["version_id"]==900101 and d[0]["name"]=="mine", d' "$tmp/out"
expect_rc 0 "show after link" "$MOOD" show mine --json
check "link stored AIR and trigger words" py '
import json,sys; d=json.load(open(sys.argv[1])); assert d["trigger_words"]=="inkwash style"
assert any(s.get("air")=="urn:air:sd1:lora:civitai:900001@900101" for a in d["adapters"] for s in a["sources"])' "$tmp/out"
cp "$V2" "$tmp/other.safetensors"
MOOD_OFFLINE=1 expect_rc 0 "MOOD_OFFLINE=1 import" "$MOOD" import "$tmp/other.safetensors"
check "MOOD_OFFLINE: no lookup" [ "$(grep -c "by-hash/$(sha "$V2" | tr a-f A-F)" "$tmp/server.log")" = 0 ]
# civitai link and update-check only ask Civitai: MOOD_OFFLINE refuses them (they went online)
lines=$(wc -l <"$tmp/server.log")
MOOD_OFFLINE=1 expect_rc 2 "MOOD_OFFLINE=1 civitai link" "$MOOD" civitai link mine
check "says MOOD_OFFLINE rules it out" grep -q "civitai link asks Civitai, which MOOD_OFFLINE=1" "$tmp/err"
MOOD_OFFLINE=1 expect_rc 2 "MOOD_OFFLINE=1 update-check" "$MOOD" update-check
check "no request made" [ "$(wc -l <"$tmp/server.log")" = "$lines" ]
home h5
expect_rc 0 "local import looks up by hash" "$MOOD" import "$tmp/mine.safetensors" --json
check "found by hash on import" py 'import json,sys; i=json.load(open(sys.argv[1]))["imported"][0]; assert i["civitai"]["version_id"]==900101 and i["n_previews"]==1, i' "$tmp/out"
"$PY" -c 'import sys; d=open(sys.argv[1],"rb").read(); open(sys.argv[2],"wb").write(d[:-2]+bytes([d[-2]^1,d[-1]]))' "$V1" "$tmp/unknown.safetensors"
expect_rc 0 "unknown file: imported without Civitai data" "$MOOD" import "$tmp/unknown.safetensors" --json
check "unknown hash: 404 from by-hash" py 'import json,sys; i=json.load(open(sys.argv[1]))["imported"][0]; assert "civitai" not in i, i' "$tmp/out"
expect_rc 2 "link of an unknown file" "$MOOD" civitai link unknown
check "link says Civitai does not know it" grep -q "Civitai does not know" "$tmp/err"

# ----- Civitai's base model against the file's own family: a warning when they disagree (the
# file's family is kept), none when they agree (Pony is SDXL) or Civitai's is none mood knows
home hbase
MOOD_OFFLINE=1 expect_rc 0 "import files Civitai lists for other bases" "$MOOD" import "$tmp/known"
expect_rc 0 "link them" "$MOOD" civitai link flux pony sd2 xl --json
check "link: one warning per file whose family Civitai does not list" py '
import sys; e=[l for l in open(sys.argv[1]).read().splitlines() if "Civitai lists it" in l]
assert e==["mood: warning: sd2.safetensors: Civitai lists it for SDXL 1.0 (baseModel), but the file is an SD 2.x LoRA (from its modelspec.architecture); mood uses it as SD 2.x",
           "mood: warning: xl.safetensors: Civitai lists it for SD 1.5 (baseModel), but the file is an SDXL LoRA (from its modelspec.architecture); mood uses it as SDXL"], e' "$tmp/err"
expect_rc 0 "list --json after the link" "$MOOD" list --json
check "the files keep their own families" py '
import json,sys; d={s["name"]:s["family"] for s in json.load(open(sys.argv[1]))}
assert d=={"flux":"sd1","pony":"sdxl","sd2":"sd2","xl":"sdxl"}, d' "$tmp/out"
home hbase2
expect_rc 0 "a local import looks it up and warns" "$MOOD" import "$tmp/known/xl.safetensors"
check "import: the warning" grep -q "xl.safetensors: Civitai lists it for SD 1.5 (baseModel), but the file is an SDXL LoRA" "$tmp/err"

# ----- a plain URL
home h6
unset CIVITAI_TOKEN
expect_rc 0 "import a URL" "$MOOD" import "$URL/storage/norange/mock_ink_style.safetensors?sig=1" --json
check "URL import: name from the server, Civitai data by hash" py '
import json,sys; i=json.load(open(sys.argv[1]))["imported"][0]
assert i["name"]=="mock_ink_style" and i["civitai"]["version_id"]==900101, i' "$tmp/out"
expect_rc 0 "show URL import" "$MOOD" show mock_ink_style --json
check "URL source kept" py '
import json,sys; d=json.load(open(sys.argv[1])); s=[s for a in d["adapters"] for s in a["sources"]]
assert [x["kind"] for x in s]==["url"] and "/storage/norange/" in s[0]["location"], s' "$tmp/out"
expect_rc 2 "URL 404" "$MOOD" import "$URL/storage/noauth/missing.safetensors"
check "404 names the URL" grep -q "missing.safetensors: 404" "$tmp/err"

# ----- styles of several LoRAs: link reports each LoRA; update-check counts each style once
home h7
cp "$V1" "$tmp/a.safetensors" # Civitai: 900101 (v1.0, v2.0 exists)
cp "$V2" "$tmp/b.safetensors" # Civitai: 900107 (the latest)
MOOD_OFFLINE=1 expect_rc 0 "import a, b, unknown offline" "$MOOD" import "$tmp/a.safetensors" "$tmp/b.safetensors" "$tmp/unknown.safetensors"
expect_rc 0 "update-check with no Civitai data" "$MOOD" update-check
check "nothing to check is not \"no updates\"" grep -q "^nothing to check: no style has Civitai data" "$tmp/out"
"$MOOD" style create combo --lora a --lora b >/dev/null 2>&1 || fail "style create combo"
"$MOOD" style create half --lora a --lora unknown >/dev/null 2>&1 || fail "style create half"
expect_rc 0 "link a style of two LoRAs" "$MOOD" civitai link combo --json
check "link: one result per LoRA, each with its version" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [(x["name"], x["file"], x["status"], x["version_id"]) for x in d]==[("combo","a.safetensors","linked",900101),("combo","b.safetensors","linked",900107)], d
assert all(len(x["sha256"])==64 for x in d), d' "$tmp/out"
expect_rc 2 "link: a LoRA Civitai does not know is exit 2" "$MOOD" civitai link half --json
check "link: the unknown LoRA is reported, the other linked" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert [(x["file"], x["status"]) for x in d]==[("a.safetensors","linked"),("unknown.safetensors","not_found")], d
assert d[0]["version_id"]==900101 and "Civitai does not know the file unknown.safetensors of style" in d[1]["error"], d' "$tmp/out"
expect_rc 2 "link (human): a LoRA unknown" "$MOOD" civitai link half
check "human: each LoRA named" py '
import sys; o=open(sys.argv[1]).read(); e=open(sys.argv[2]).read()
assert "linked half (a.safetensors) to Civitai" in o, o
assert "unknown.safetensors of style '"'"'half'"'"'" in e, e' "$tmp/out" "$tmp/err"
expect_rc 0 "show after link" "$MOOD" show combo --json
check "both LoRAs of combo linked in the registry" py '
import json,sys; d=json.load(open(sys.argv[1]))
v=sorted(s["version_id"] for a in d["adapters"] for s in a["sources"] if s["kind"]=="civitai")
assert v==[900101,900107], d["adapters"]' "$tmp/out"
expect_rc 1 "link of a style not in the registry: bad input" "$MOOD" civitai link nosuch
check "the message names the style" grep -q "no style named 'nosuch'" "$tmp/err"
expect_rc 1 "link --json of a style not in the registry" "$MOOD" civitai link nosuch --json
check "--json: the style's error" py '
import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==1 and d[0]["name"]=="nosuch" and d[0]["status"]=="error" and "nosuch" in d[0]["error"], d' "$tmp/out"
# a, b, combo, half have Civitai data (unknown has none): four styles, combo counted once
expect_rc 0 "update-check, several LoRAs" "$MOOD" update-check --json
check "styles counted once; updates per LoRA" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert (d["n_styles"], d["checked"], d["not_checked"], d["errors"])==(4, 4, 0, []), d
u=sorted((x["name"], x["file"]) for x in d["updates"])
assert u==[("a","a.safetensors"),("combo","a.safetensors"),("half","a.safetensors")], u' "$tmp/out"
# nothing reachable: never "no updates"; how many could not be checked, and why once
MOOD_CIVITAI_URL=http://127.0.0.1:1 expect_rc 2 "update-check, Civitai unreachable" "$MOOD" update-check
check "unreachable: no claim of no updates, the count, the reason once" py '
import sys; o=open(sys.argv[1]).read(); e=open(sys.argv[2]).read()
assert "no updates" not in o and "none of the 4 styles with Civitai data could be checked" in o, o
w=[l for l in e.splitlines() if "warning" in l]
assert len(w)==1 and "a, b, combo, half: " in w[0] and "127.0.0.1:1" in w[0], e' "$tmp/out" "$tmp/err"
MOOD_CIVITAI_URL=http://127.0.0.1:1 expect_rc 2 "update-check --json, Civitai unreachable" "$MOOD" update-check --json
check "unreachable --json: counts, one error per LoRA" py '
import json,sys; d=json.load(open(sys.argv[1]))
assert (d["n_styles"], d["checked"], d["not_checked"], d["updates"])==(4, 0, 4, []), d
e=sorted((x["name"], x["file"]) for x in d["errors"])
assert e==[("a","a.safetensors"),("b","b.safetensors"),("combo","a.safetensors"),("combo","b.safetensors"),("half","a.safetensors")], e' "$tmp/out"
# one model of combo cannot be fetched (a model id Civitai answers 404 for): b and combo are
# not checked, a and half are
py 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("UPDATE sources SET civitai_model_id=424242 WHERE civitai_version_id=900107"); c.commit()' "$MOOD_HOME/registry.db"
expect_rc 2 "update-check, one model missing" "$MOOD" update-check
check "partly checked: updates of the checked, the count of the others" py '
import sys; o=open(sys.argv[1]).read(); e=open(sys.argv[2]).read()
assert o.count(": v1.0 -> v2.0")==3 and "2 of 4 styles with Civitai data checked, 2 could not be" in o, o
assert "not checked: b, combo: " in e and "424242" in e, e' "$tmp/out" "$tmp/err"
# the network down, two models: the reason once, each style named once
MOOD_CIVITAI_URL=http://127.0.0.1:1 expect_rc 2 "update-check, two models unreachable" "$MOOD" update-check
check "two models, one reason: one warning" py '
import sys; e=open(sys.argv[1]).read(); w=[l for l in e.splitlines() if "warning" in l]
assert len(w)==1 and "not checked: a, b, combo, half: http://127.0.0.1:1: " in w[0], e' "$tmp/err"

finish
