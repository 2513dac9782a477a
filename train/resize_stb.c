/*
 * resize_stb.c: the single translation unit that compiles stb_image_resize (Debian libstb-dev,
 * <stb/stb_image_resize.h>) for the mood board (train/dataset.c), with its allocations going
 * through mood_malloc so that failure injection reaches them.
 *
 * Filter: the triangle (tent) filter, widened by the scale when shrinking: the antialiased
 * bilinear resampling Pillow's Image.resize(BILINEAR) does (and so torchvision's Resize on PIL
 * images in diffusers' training scripts), in linear (not sRGB) space as Pillow works, edges
 * clamped. Pillow renormalises the kernel where it overhangs the border; stb repeats the edge
 * pixel, so the outermost pixels can differ by a level or two (tests/unit/test_train.c).
 */
#include "train/train_internal.h"

#define STB_IMAGE_RESIZE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_STATIC
#define STBIR_MALLOC(size, c) ((void)(c), mood_malloc(size))
#define STBIR_FREE(ptr, c)    ((void)(c), mood_free(ptr))
#define STBIR_ASSERT(x)       ((void)0)

/* stb_image_resize is third-party code: its own warnings are not ours to fix. */
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
#include <stb/stb_image_resize.h>
#pragma GCC diagnostic pop

int mood__resize_rgb(uint8_t *out, int ow, int oh, const uint8_t *in, int w, int h)
{
    if (!out || !in || ow < 1 || oh < 1 || w < 1 || h < 1)
        return mood_error_set(MOOD_EINVAL, "resize: bad sizes %dx%d -> %dx%d", w, h, ow, oh);
    if (!stbir_resize_uint8_generic(in, w, h, 0, out, ow, oh, 0, 3, STBIR_ALPHA_CHANNEL_NONE, 0,
                                    STBIR_EDGE_CLAMP, STBIR_FILTER_TRIANGLE,
                                    STBIR_COLORSPACE_LINEAR, NULL))
        return mood_error_nomem(); /* its only failure once the sizes are valid */
    return 0;
}
