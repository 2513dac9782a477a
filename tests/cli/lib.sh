# lib.sh: sourced first by every tests/cli/test_*.sh: the environment they need ($MOOD, the
# binary; $FIX, tests/fixtures), a scratch directory $tmp removed on exit, and the checks.
# Each script ends with `finish`, which prints "N passed, N failed" and sets the exit status.
set -u
MOOD=${MOOD:?set MOOD to the mood binary}
FIX=${MOOD_FIXTURES:?set MOOD_FIXTURES to tests/fixtures}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# No test reaches the network: `mood import` looks files up on Civitai unless offline.
# test_civitai.sh undoes this for its local mock server.
export MOOD_OFFLINE=1
unset CIVITAI_TOKEN MOOD_CIVITAI_URL
fails=0
passes=0

# py CODE ARGS...: runs a Python snippet (the checks' reader of JSON, PNG and safetensors files)
py() { python3 -c "$@"; }

# fail MESSAGE: records a failed check.
fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}

# check NAME CMD...: passes when CMD succeeds.
check() {
    local name=$1
    shift
    if "$@"; then passes=$((passes + 1)); else fail "$name"; fi
}

# expect_rc WANT NAME CMD...: runs CMD (stdout to $tmp/out, stderr to $tmp/err) and checks its
# exit status.
expect_rc() {
    local want=$1 name=$2 rc
    shift 2
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq "$want" ]; then
        passes=$((passes + 1))
    else
        fail "$name: exit $rc, expected $want ($(head -c 300 "$tmp/err"))"
    fi
}

finish() {
    echo "$passes passed, $fails failed"
    exit $((fails > 0))
}
