#!/usr/bin/env bash
# test.sh: the README's test command. Installs what the build needs, builds with warnings as
# errors, runs every test that needs no GPU (ctest, without the label `slow`: full-size model
# checks, `ctest -L slow`), then the same tests under ASan+UBSan, then a short libFuzzer run of
# every parser. `--quick` stops after the first ctest run.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
jobs=$(nproc 2>/dev/null || echo 2)

if [ $quick -eq 1 ]; then tools/setup-deps.sh; else tools/setup-deps.sh fuzz; fi

echo "== build (warnings are errors) and test"
cmake -S . -B build -G Ninja -DMOOD_WERROR=ON >/dev/null
ninja -C build
ctest --test-dir build --output-on-failure -j "$jobs" -LE slow
[ $quick -eq 1 ] && exit 0

echo "== ASan + UBSan build and test"
cmake -S . -B build-asan -G Ninja -DMOOD_WERROR=ON -DMOOD_CUDA=OFF -DMOOD_BUILD_BENCH=OFF \
      -DCMAKE_BUILD_TYPE=Debug -DMOOD_SANITIZE='address;undefined' >/dev/null
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" -LE slow

echo "== libFuzzer (clang) on the parsers"
CC=clang cmake -S . -B build-fuzz -G Ninja -DMOOD_FUZZ=ON -DMOOD_CUDA=OFF -DMOOD_BUILD_BENCH=OFF \
      -DMOOD_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Debug -DMOOD_SANITIZE='address;undefined' >/dev/null
for src in tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    ninja -C build-fuzz "$name"
    work=$(mktemp -d)
    cp -r "tests/fuzz/corpus/$name/." "$work/"
    # A fixed seed and number of runs keep the run the same on every machine (time limits would
    # not: a faster machine would explore further).
    build-fuzz/tests/"$name" -runs="${MOOD_FUZZ_RUNS:-100000}" -max_total_time=120 -seed=1 "$work"
    rm -rf "$work"
done
echo "== all tests passed"
