#!/usr/bin/env bash
# demo.sh: the README's main-job command. Installs what the build needs, builds mood, then runs
# `mood demo`: registers the bundled small base model mood-tiny, trains a style from the bundled
# five-image Twemoji mood board on the CPU, generates eight subjects the board does not show
# without and with the style, and writes the images, a before/after grid and a one-page report
# (mood-demo/report.html). The registry used is examples/out/registry, not your own.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
tools/setup-deps.sh
cmake -S . -B build -G Ninja -DMOOD_BUILD_BENCH=OFF >/dev/null
ninja -C build mood_cli >/dev/null
export MOOD_HOME=${MOOD_HOME:-$PWD/examples/out/registry}
build/mood demo --out mood-demo "$@"
echo "set-up, build and demo took $(($(date +%s) - start)) s"
