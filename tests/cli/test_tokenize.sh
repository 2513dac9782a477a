#!/bin/bash
# test_tokenize.sh: `mood tokenize` end to end: the text view (ids, pieces, weights, the A1111
# "N/75" count), --json against the reference ids in tests/fixtures/tokenizer/corpus.json
# (transformers' CLIPTokenizer and A1111's tokenize_line), long prompts in several chunks,
# --plain, --sd2, the vocabulary found without configuration, and the exit codes.
. "$(dirname "$0")/lib.sh"

unset MOOD_DATA
out=$("$MOOD" tokenize "a (red:1.3) fox, [blurry]") || fail "tokenize exited $?"
for want in "^5/75 tokens, 1 chunk" "chunk 1: 5/75" " 2 *736 *1.3 *red</w>" "0.9091 *blurry</w>" \
    "start 49406, then 70 x padding 49407"; do
    grep -q "$want" <<<"$out" || fail "text output lacks '$want'"
done
# Words given as separate arguments are joined with spaces.
"$MOOD" tokenize a photo of a cat | grep -q "^5/75 tokens" || fail "joined words"

# Every corpus prompt through --json: chunks, weights and counts equal A1111's.
python3 - "$MOOD" "$FIX/tokenizer/corpus.json" <<'PY' || fail "--json against the corpus"
import json, subprocess, sys
mood, corpus = sys.argv[1], json.load(open(sys.argv[2], encoding="utf-8"))
bad = 0
for case in corpus["cases"][::12]:
    if "a1111_error" in case or not case["prompt"].strip() or case["prompt"].startswith("-"):
        continue
    r = subprocess.run([mood, "tokenize", "--json", "--", case["prompt"]], capture_output=True)
    if r.returncode:
        bad += 1
        print("exit %d for %r" % (r.returncode, case["prompt"]))
        continue
    got = json.loads(r.stdout)
    want_count = "%d/%d" % (case["token_count"], case["target_count"])
    ok = got["count"] == want_count and len(got["chunks"]) == len(case["chunks"])
    for g, w in zip(got["chunks"], case["chunks"]):
        weights = [1.0] * 77
        for i, x in w["weights"]:
            weights[i] = x
        ids = [49406] + w["ids"] + [49407] * (76 - len(w["ids"]))
        ok = ok and g["ids"] == ids and g["weights"] == weights
        ok = ok and [t["id"] for t in g["tokens"]] == ids[1:1 + g["used"]]
    if not ok:
        bad += 1
        print("differs: %r" % case["prompt"])
sys.exit(bad > 0)
PY

long=$(printf 'cat %.0s' $(seq 80))
"$MOOD" tokenize "$long" | grep -q "^80/150 tokens, 2 chunks" || fail "80-token prompt count"
"$MOOD" tokenize --json "a BREAK b" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["count"] == "76/150", d["count"]
assert [c["count"] for c in d["chunks"]] == ["1/75", "1/75"]' || fail "BREAK"
"$MOOD" tokenize --plain --json "(cat)" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert [t["piece"] for t in d["chunks"][0]["tokens"]] == ["(</w>", "cat</w>", ")</w>"], d' ||
    fail "--plain keeps brackets"
"$MOOD" tokenize --sd2 --json "cat" | python3 -c '
import json, sys
ids = json.load(sys.stdin)["chunks"][0]["ids"]
assert ids[:4] == [49406, 2368, 49407, 0] and ids[76] == 0, ids[:5]' || fail "--sd2 padding"

expect_rc 1 "not UTF-8" "$MOOD" tokenize "$(printf 'a\377')"
grep -q "UTF-8" "$tmp/err" || fail "UTF-8 message"
expect_rc 1 "bad weight" "$MOOD" tokenize "(a:1.2.3)"
# nested weights whose product overflows: refused (--json printed a bare inf, which no JSON holds)
expect_rc 1 "weights past any number" "$MOOD" tokenize --json \
    "$(python3 -c "print('(' * 8 + 'a' + (':1' + '0' * 40 + ')') * 8)")"
check "says the brackets multiply" grep -q "nested brackets multiply" "$tmp/err"
expect_rc 1 "no prompt" "$MOOD" tokenize
expect_rc 1 "unknown option" "$MOOD" tokenize --bogus cat
expect_rc 2 "MOOD_DATA without the vocabulary" env MOOD_DATA="$tmp" "$MOOD" tokenize cat
grep -q "MOOD_DATA" "$tmp/err" || fail "MOOD_DATA message"
mkdir -p "$tmp/data/clip"
cp "$MOOD_SOURCE/data/clip/bpe_simple_vocab_16e6.txt.gz" "$tmp/data/clip/"
expect_rc 0 "MOOD_DATA with the vocabulary" env MOOD_DATA="$tmp/data" "$MOOD" tokenize cat
expect_rc 2 "--vocab missing" "$MOOD" tokenize --vocab "$tmp/nope.gz" cat
# extra-network tags are no text: counted as gen encodes the prompt (A1111's counter strips them)
expect_rc 0 "a prompt with LoRA tags" "$MOOD" tokenize "1girl, solo, <lora:add_detail:0.5> <hypernet:x:1>"
check "tags not counted" grep -q "^5/75 tokens" "$tmp/out"
# re_extra_net's \w is Python's: <é:2> and <٣:x> are tags (gone), <😀:1> and <a_1:> are text
expect_rc 0 "tags of Unicode words" "$MOOD" tokenize --json "cat <é:2> <٣:x> <😀:1> <a_1:>"
check "only the tags of \\w words left out" python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["prompt"] == "cat   <😀:1> <a_1:>", d["prompt"]' "$tmp/out"
"$MOOD" help tokenize | grep -q "BREAK" || fail "help text"
"$MOOD" help | grep -q "tokenize" || fail "listed in mood help"
# what A1111 reads before the emphasis: '#' comments left out, a final ":N" the prompt's weight
expect_rc 0 "comment and weight" "$MOOD" tokenize --json "$(printf 'a cat # no\nsitting:1.3')"
check "prompt, weight, 3 tokens" python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["prompt"]=="a cat \nsitting" and d["prompt_weight"]==1.3 and d["token_count"]==3, d' "$tmp/out"
check "says comments are left out" grep -q "has '#' comments" "$tmp/err"

finish
