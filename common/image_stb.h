/*
 * image_stb.h: the one entry point into stb_image (common/image_stb.c, internal): decoding an
 * encoded image held in memory. stb_image stays private to that file (STB_IMAGE_STATIC), so no
 * stb symbol leaks out of libmood.
 */
#ifndef MOOD_COMMON_IMAGE_STB_H
#define MOOD_COMMON_IMAGE_STB_H

#include <stddef.h>
#include <stdint.h>

/* Reads the size and channel count of an encoded image without decoding it. Returns 0, or -1
 * with stb's reason in *reason ("outofmem" when an allocation failed). */
int mood__stb_info(const uint8_t *data, size_t size, int *w, int *h, int *channels,
                   const char **reason);
/* Decodes to `channels` (3 or 4) 8-bit channels; the pixels are freed with mood_free. NULL on
 * failure with stb's reason in *reason ("outofmem" when an allocation failed). */
uint8_t *mood__stb_decode(const uint8_t *data, size_t size, int channels, int *w, int *h,
                          const char **reason);

#endif /* MOOD_COMMON_IMAGE_STB_H */
