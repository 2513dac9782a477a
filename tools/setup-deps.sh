#!/usr/bin/env bash
# setup-deps.sh: installs the Debian packages mood builds against (the design's "Dependencies").
# Idempotent: installs only what is missing. Runs apt-get directly as root, through sudo
# otherwise. Extra arguments name optional groups: "fuzz" adds clang's libFuzzer runtime.
set -euo pipefail

# libwebp7 is only loaded at run time (dlopen, common/image_webp.c) to read WebP mood boards.
packages=(build-essential cmake ninja-build pkg-config python3
          libopenblas-dev libopenblas-openmp-dev libcjson-dev libssl-dev zlib1g-dev
          libsqlite3-dev libarchive-dev libcurl4-openssl-dev libpng-dev libstb-dev
          libwebp7)
for group in "$@"; do
    case "$group" in
    fuzz) packages+=(clang libclang-rt-14-dev) ;;
    *) echo "setup-deps.sh: unknown group '$group'" >&2; exit 1 ;;
    esac
done

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup-deps.sh: all packages present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
echo "setup-deps.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
