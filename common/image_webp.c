/*
 * image_webp.c: WebP decoding for mood_image_load through libwebp (Debian libwebp7), loaded
 * with dlopen on first use like libcurl and libarchive (common/dynlib.c): commands that never
 * read a WebP file do not pay for loading it, and the build needs no libwebp headers because the
 * three functions used have had the same C signatures since libwebp 0.5 (WebPFree: 1.0).
 *
 * The container is read here only as far as deciding what to ask libwebp for: RIFF "WEBP" with
 * a first chunk "VP8 " (lossy, no alpha), "VP8L" (lossless; bit 28 of its header says whether
 * alpha is used) or "VP8X" (extended; flag 0x10 alpha, 0x02 animation). Animated files are
 * refused: which frame would a mood board mean?
 */
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#include "common/common.h"
#include "common/image_decode.h"

#define LIBRARY    "libwebp.so.7"
#define MAX_PIXELS (1u << 28) /* as image.c */

typedef struct webp_fns {
    int (*GetInfo)(const uint8_t *data, size_t size, int *w, int *h);
    uint8_t *(*DecodeRGBA)(const uint8_t *data, size_t size, int *w, int *h);
    void (*Free)(void *ptr);
} webp_fns;

static const mood_dynlib_symbol symbols[] = {
    {"WebPGetInfo", offsetof(webp_fns, GetInfo)},
    {"WebPDecodeRGBA", offsetof(webp_fns, DecodeRGBA)},
    {"WebPFree", offsetof(webp_fns, Free)},
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static webp_fns fns;
static int loaded;
static char reason[512];

static void load_once(void)
{
    loaded = mood_dynlib_load(LIBRARY, symbols, sizeof symbols / sizeof symbols[0], &fns,
                              sizeof fns, reason, sizeof reason) == 0;
}

int mood__webp_is(const uint8_t *data, size_t size)
{
    return size >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0;
}

/* Alpha and animation flags from the first chunk; -1 when it is none of the three kinds. */
static int webp_flags(const uint8_t *d, size_t n, int *alpha, int *animated)
{
    *alpha = *animated = 0;
    if (n < 12 + 8 + 5)
        return -1;
    if (memcmp(d + 12, "VP8 ", 4) == 0)
        return 0;
    if (memcmp(d + 12, "VP8L", 4) == 0) {
        /* signature 0x2f, then 14 bits width - 1, 14 bits height - 1, 1 bit alpha_is_used */
        *alpha = (d[20 + 4] >> 4) & 1;
        return 0;
    }
    if (memcmp(d + 12, "VP8X", 4) == 0) {
        *alpha = (d[20] & 0x10) != 0;
        *animated = (d[20] & 0x02) != 0;
        return 0;
    }
    return -1;
}

int mood__webp_decode(mood_image **out, const uint8_t *data, size_t size, const char *path)
{
    int w = 0, h = 0, alpha, animated, err = 0;
    uint8_t *rgba = NULL;
    mood_image *img = NULL;
    *out = NULL;
    pthread_once(&once, load_once);
    if (!loaded)
        return mood_error_set(MOOD_EBACKEND,
                              "%s: reading WebP images needs libwebp (Debian package libwebp7): %s",
                              path, reason);
    if (webp_flags(data, size, &alpha, &animated) != 0 || !fns.GetInfo(data, size, &w, &h))
        return mood_error_set(MOOD_EFORMAT, "%s: cannot decode the image: not a valid WebP file",
                              path);
    if (animated)
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: animated WebP images are not supported",
                              path);
    if ((uint64_t)w * (uint64_t)h > MAX_PIXELS)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: %dx%d pixels is larger than mood reads (%u pixels)", path, w, h,
                              MAX_PIXELS);
    if (!(rgba = fns.DecodeRGBA(data, size, &w, &h)))
        return mood_error_set(MOOD_EFORMAT, "%s: cannot decode the image: corrupt WebP data", path);
    if ((err = mood_image_new(&img, w, h, alpha ? 4 : 3)) != 0)
        goto done;
    if (alpha) {
        memcpy(img->pixels, rgba, (size_t)w * h * 4);
    } else {
        for (size_t i = 0; i < (size_t)w * h; i++)
            memcpy(img->pixels + 3 * i, rgba + 4 * i, 3);
    }
    *out = img;
done:
    fns.Free(rgba);
    return err;
}
