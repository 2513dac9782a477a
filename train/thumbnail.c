/*
 * thumbnail.c: mood board thumbnails (mood_board_thumbnail), kept with a trained style in the
 * registry and in style packs. The board's image is decoded again whole (the board itself keeps
 * only the training crop), composited over white as the board does, shrunk with the board's
 * antialiased resize and encoded as JPEG by stb_image_write (Debian libstb-dev,
 * <stb/stb_image_write.h>; this is the one translation unit compiling it, with its allocations
 * going through mood_malloc). JPEG rather than PNG: a 256-pixel photograph is a few kilobytes
 * instead of a hundred or more.
 */
#include <math.h>
#include <string.h>

#include "common/args.h"
#include "train/train_internal.h"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBIW_MALLOC(size)       mood_malloc(size)
#define STBIW_REALLOC(ptr, size) mood_realloc(ptr, size)
#define STBIW_FREE(ptr)          mood_free(ptr)
#define STBIW_ASSERT(x)          ((void)0)

/* stb_image_write is third-party code: its own warnings are not ours to fix. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

#define JPEG_QUALITY 85

/* Where stb_image_write puts the encoded bytes. */
typedef struct sink {
    mood_buf b;
    int err;
} sink;

static void put(void *context, void *data, int size)
{
    sink *s = context;
    if (!s->err && size > 0)
        s->err = mood_buf_append(&s->b, data, (size_t)size);
}

/* The size with the longer side max_side (rounded; at least 1), or the image's when smaller. */
static void fit_size(int *w, int *h, int width, int height, int max_side)
{
    int longer = width > height ? width : height;
    double scale = longer > max_side ? (double)max_side / longer : 1.0;
    *w = (int)lround(width * scale);
    *h = (int)lround(height * scale);
    *w = *w < 1 ? 1 : *w;
    *h = *h < 1 ? 1 : *h;
}

static int encode(sink *s, const uint8_t *rgb, int w, int h)
{
    if (!stbi_write_jpg_to_func(put, s, w, h, 3, rgb, JPEG_QUALITY) && !s->err)
        s->err = mood_error_nomem(); /* its only failure for valid sizes */
    return s->err;
}

int mood_board_thumbnail(uint8_t **jpeg_out, size_t *size_out, int *width_out, int *height_out,
                         const mood_board_item *it, int max_side)
{
    mood_image *img = NULL;
    uint8_t *rgb = NULL, *small = NULL;
    sink s = {{0}, 0};
    int err, w = 0, h = 0;
    MOOD_ARG_NONNULL(jpeg_out);
    MOOD_ARG_NONNULL(size_out);
    *jpeg_out = NULL;
    *size_out = 0;
    MOOD_ARG_NONNULL(it);
    if (!it->path || max_side < 1)
        return mood_error_set(MOOD_EINVAL, "board thumbnail: no image, or a side of %d pixels",
                              max_side);
    mood_buf_init(&s.b);
    if ((err = mood_image_load(&img, it->path)) != 0)
        goto done;
    fit_size(&w, &h, img->width, img->height, max_side);
    if (!(rgb = mood__board_flatten(img)) ||
        ((w != img->width || h != img->height) && !(small = mood_malloc((size_t)w * h * 3)))) {
        err = mood_error_nomem();
        goto done;
    }
    if (small && (err = mood__resize_rgb(small, w, h, rgb, img->width, img->height)) != 0)
        goto done;
    if ((err = encode(&s, small ? small : rgb, w, h)) != 0)
        goto done;
    *size_out = s.b.len;
    *jpeg_out = (uint8_t *)mood_buf_detach(&s.b);
    if (width_out)
        *width_out = w;
    if (height_out)
        *height_out = h;
done:
    if (err && !strstr(mood_error_last(), it->path))
        mood_error_prefix("%s", it->path);
    mood_buf_dispose(&s.b);
    mood_free(small);
    mood_free(rgb);
    mood_image_free(img);
    return err;
}
