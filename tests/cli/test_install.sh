#!/usr/bin/env bash
# test_install.sh: `cmake --install` of this build into a scratch prefix gives a working mood:
# bin/mood finds its data in share/mood (the CLIP vocabulary; the demo's model and board), and a
# program of one's own (examples/c/styled_image.c) compiles against include/mood and lib/libmood.a
# with the flags of lib/pkgconfig/mood.pc and generates with a LoRA.
. "$(dirname "$0")/lib.sh"

SRC=${MOOD_SOURCE:-$FIX/../..}
BUILD=$(dirname "$MOOD")
P=$tmp/prefix
export MOOD_HOME=$tmp/home
unset MOOD_DATA
command -v cc >/dev/null && command -v pkg-config >/dev/null || { echo "skip: no cc or pkg-config"; exit 77; }

expect_rc 0 "cmake --install" cmake --install "$BUILD" --prefix "$P"
check "the command, library, headers and pkg-config file" test -x "$P/bin/mood" -a -s "$P/lib/libmood.a" \
    -a -s "$P/include/mood/mood.h" -a -s "$P/lib/pkgconfig/mood.pc"
check "the data" test -s "$P/share/mood/mood-tiny/unet/diffusion_pytorch_model.safetensors" \
    -a -d "$P/share/mood/moodboards/twemoji" -a -d "$P/share/mood/clip"
cd "$tmp"
expect_rc 0 "the installed mood tokenizes (its vocabulary found beside it)" "$P/bin/mood" tokenize "a cat"
expect_rc 0 "the installed demo finds its model and board" "$P/bin/mood" demo --steps 2 --out d
check "trained a LoRA" test -s d/twemoji-demo.safetensors

# a program of one's own, with the installed headers and library (and this build's sanitizers)
san=$(sed -n 's/^MOOD_SANITIZE:STRING=//p' "$BUILD/CMakeCache.txt")
flags=(-std=c11 -Wall -Wextra -Werror)
[ -n "$san" ] && flags+=("-fsanitize=${san//;/,}")
# shellcheck disable=SC2046
expect_rc 0 "compile examples/c/styled_image.c with pkg-config" cc "${flags[@]}" \
    "$SRC/examples/c/styled_image.c" \
    $(PKG_CONFIG_PATH=$P/lib/pkgconfig pkg-config --cflags --libs --static mood) -o styled_image
# a program installed elsewhere than the configured prefix is told where the data is
export MOOD_DATA=$P/share/mood
# it loads the OpenBLAS mood itself runs with (the OpenMP build, where Debian's is installed),
# not the loader's default pthread build
if [ -d /usr/lib/x86_64-linux-gnu/openblas-openmp ] || ls -d /usr/lib/*/openblas-openmp >/dev/null 2>&1; then
    check "the program loads the OpenMP OpenBLAS" sh -c 'ldd ./styled_image | grep -q "openblas-openmp/"'
fi
expect_rc 0 "it generates with the LoRA" ./styled_image "$P/share/mood/mood-tiny" \
    d/twemoji-demo.safetensors 0.8 "a red apple" apple.png
check "says what it wrote" grep -q "apple.png: 64x64, seed 42" "$tmp/out"
check "a PNG" py 'import sys; assert open(sys.argv[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"' apple.png
expect_rc 1 "a LoRA for another family is refused in words" ./styled_image \
    "$P/share/mood/mood-tiny" "$FIX/kohya/sdxl_lora.safetensors" 1 "a cat" x.png
check "naming the families" grep -q "applying the LoRA: .*sdxl" "$tmp/err"
finish
