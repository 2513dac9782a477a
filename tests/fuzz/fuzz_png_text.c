/*
 * fuzz_png_text.c: libFuzzer target for the PNG text-chunk reader (common/image.c,
 * mood_image_read_png_text), which `mood gen --from-png` runs on downloaded files. Each input is
 * a file: it must give the text, MOOD_ENOTFOUND, MOOD_EFORMAT or MOOD_EUNSUPPORTED, and a text
 * it returns is UTF-8 without NUL bytes. The input's chunk CRCs are recomputed first, so that
 * mutations reach the text decoding rather than stopping at the CRC check.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "mood/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int valid_utf8(const unsigned char *s)
{
    while (*s) {
        int n = *s < 0x80 ? 1 : (*s & 0xE0) == 0xC0 ? 2 : (*s & 0xF0) == 0xE0 ? 3 : 4;
        if (*s >= 0xF8 || (*s >= 0x80 && *s < 0xC2))
            return 0;
        for (int i = 1; i < n; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return 0;
        }
        s += n;
    }
    return 1;
}

/* Rewrites the CRC of every whole chunk after the 8-byte signature. */
static void fix_crcs(uint8_t *d, size_t n)
{
    for (size_t pos = 8; pos + 12 <= n;) {
        size_t len =
            (size_t)d[pos] << 24 | (size_t)d[pos + 1] << 16 | (size_t)d[pos + 2] << 8 | d[pos + 3];
        uLong crc;
        if (len > n - pos - 12)
            return;
        crc = crc32(crc32(0L, d + pos + 4, 4), d + pos + 8, (uInt)len);
        for (int i = 0; i < 4; i++)
            d[pos + 8 + len + (size_t)i] = (uint8_t)(crc >> (24 - 8 * i));
        pos += 12 + len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const keys[] = {"parameters", "workflow", "late"};
    char path[64];
    FILE *f;
    uint8_t *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    fix_crcs(copy, size);
    snprintf(path, sizeof path, "/tmp/mood-fuzz-png-%ld.png", (long)getpid());
    f = fopen(path, "wb");
    if (!f || (size && fwrite(copy, 1, size, f) != size)) {
        if (f)
            fclose(f);
        free(copy);
        return 0;
    }
    fclose(f);
    free(copy);
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        char *value = NULL;
        int err = mood_image_read_png_text(&value, path, keys[k]);
        if (err == 0 ? !value || !valid_utf8((const unsigned char *)value)
                     : value || (err != MOOD_ENOTFOUND && err != MOOD_EFORMAT &&
                                 err != MOOD_EUNSUPPORTED))
            abort();
        mood_image_free_string(value);
    }
    unlink(path);
    return 0;
}
