/*
 * image_stb.c: the single translation unit that compiles stb_image (Debian libstb-dev,
 * <stb/stb_image.h>), restricted to the formats mood reads (PNG, JPEG, BMP) and to decoding from
 * memory, with its allocations going through mood_malloc so that failure injection reaches them.
 * A later step adds WebP (libwebp) and EXIF orientation for JPEGs; both belong in image.c.
 */
#include <limits.h>

#include "common/common.h"
#include "common/image_stb.h"

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
/* A side longer than this is refused before any allocation (image.h: 65536). */
#define STBI_MAX_DIMENSIONS     65536
#define STBI_MALLOC(size)       stb_malloc(size)
#define STBI_REALLOC(ptr, size) stb_realloc(ptr, size)
#define STBI_FREE(ptr)          mood_free(ptr)

/* stb_image probes the formats in turn and a failed allocation inside a probe can surface as
 * another format's complaint ("no SOI"), so allocation failures are recorded here instead. */
static _Thread_local int stb_out_of_memory;

static void *stb_malloc(size_t size)
{
    void *p = mood_malloc(size);
    stb_out_of_memory |= !p;
    return p;
}

static void *stb_realloc(void *ptr, size_t size)
{
    void *p = mood_realloc(ptr, size);
    stb_out_of_memory |= !p;
    return p;
}

/* stb_image is third-party code: its own warnings are not ours to fix. Unused static functions
 * are reported at the end of the file, so that one stays off for the whole file. */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wtype-limits"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

int mood__stb_info(const uint8_t *data, size_t size, int *w, int *h, int *channels,
                   const char **reason)
{
    if (size > INT_MAX) {
        *reason = "file larger than 2 GiB";
        return -1;
    }
    stb_out_of_memory = 0;
    if (!stbi_info_from_memory(data, (int)size, w, h, channels)) {
        *reason = stb_out_of_memory ? "outofmem" : stbi_failure_reason();
        return -1;
    }
    return 0;
}

uint8_t *mood__stb_decode(const uint8_t *data, size_t size, int channels, int *w, int *h,
                          const char **reason)
{
    int n = 0;
    uint8_t *pixels;
    if (size > INT_MAX) {
        *reason = "file larger than 2 GiB";
        return NULL;
    }
    stb_out_of_memory = 0;
    pixels = stbi_load_from_memory(data, (int)size, w, h, &n, channels);
    if (!pixels)
        *reason = stb_out_of_memory ? "outofmem" : stbi_failure_reason();
    return pixels;
}
