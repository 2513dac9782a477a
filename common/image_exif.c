/*
 * image_exif.c: the EXIF orientation tag (0x0112) of JPEG, PNG and WebP files, and the
 * transform that makes the decoded pixels upright, as Pillow's ImageOps.exif_transpose does.
 *
 * Cameras and phones store pixels as the sensor read them and record how to turn them in EXIF;
 * every viewer (and Pillow, hence kohya's and diffusers' training scripts through
 * exif_transpose) shows the turned image, so a trainer that ignored the tag would learn from
 * sideways pictures. Only IFD0's orientation is read: no other EXIF field matters here.
 *
 * EXIF is a TIFF structure: "II" (little-endian) or "MM" (big-endian), 42, the offset of IFD0,
 * then IFD0's entry count and 12-byte entries (tag, type, count, value). Every read is bounds
 * checked; anything malformed means "no orientation", as in Pillow.
 */
#include <string.h>

#include "common/common.h"
#include "common/image_decode.h"

typedef struct tiff {
    const uint8_t *p;
    size_t n;
    int big; /* "MM" */
} tiff;

static uint32_t rd16(const tiff *t, size_t off)
{
    const uint8_t *q = t->p + off;
    return t->big ? (uint32_t)q[0] << 8 | q[1] : (uint32_t)q[1] << 8 | q[0];
}

static uint32_t rd32(const tiff *t, size_t off)
{
    return t->big ? rd16(t, off) << 16 | rd16(t, off + 2) : rd16(t, off + 2) << 16 | rd16(t, off);
}

/* Orientation in the TIFF block p[0..n), or 1. */
static int tiff_orientation(const uint8_t *p, size_t n)
{
    tiff t = {p, n, 0};
    uint32_t ifd, count;
    if (n < 8 || !((p[0] == 'I' && p[1] == 'I') || (p[0] == 'M' && p[1] == 'M')))
        return 1;
    t.big = p[0] == 'M';
    if (rd16(&t, 2) != 42)
        return 1;
    ifd = rd32(&t, 4);
    if (ifd > n || n - ifd < 2)
        return 1;
    count = rd16(&t, ifd);
    for (uint32_t i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > n)
            return 1;
        if (rd16(&t, e) != 0x0112)
            continue;
        /* SHORT (3), one value, stored in the first two bytes of the value field; some writers
         * store it as a LONG (4), which Pillow reads too */
        uint32_t type = rd16(&t, e + 2), v;
        if ((type != 3 && type != 4) || rd32(&t, e + 4) < 1)
            return 1;
        v = type == 3 ? rd16(&t, e + 8) : rd32(&t, e + 8);
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

static int jpeg_orientation(const uint8_t *d, size_t n)
{
    size_t p = 2;
    while (p + 4 <= n) {
        uint8_t marker = d[p + 1];
        size_t len;
        if (d[p] != 0xFF)
            return 1;
        if (marker == 0xFF) { /* fill byte */
            p++;
            continue;
        }
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) { /* no length */
            p += 2;
            continue;
        }
        if (marker == 0xD9 || marker == 0xDA) /* end of image, start of scan */
            return 1;
        len = (size_t)d[p + 2] << 8 | d[p + 3];
        if (len < 2 || p + 2 + len > n)
            return 1;
        if (marker == 0xE1 && len >= 2 + 6 + 8 && memcmp(d + p + 4, "Exif\0\0", 6) == 0)
            return tiff_orientation(d + p + 10, len - 8);
        p += 2 + len;
    }
    return 1;
}

static uint32_t be32(const uint8_t *q)
{
    return (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
}

static uint32_t le32(const uint8_t *q)
{
    return (uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0];
}

static int png_orientation(const uint8_t *d, size_t n)
{
    size_t p = 8;
    while (p + 12 <= n) {
        uint32_t len = be32(d + p);
        if (len > n - p - 12)
            return 1;
        if (memcmp(d + p + 4, "eXIf", 4) == 0)
            return tiff_orientation(d + p + 8, len);
        if (memcmp(d + p + 4, "IEND", 4) == 0)
            return 1;
        p += 12 + (size_t)len;
    }
    return 1;
}

static int webp_orientation(const uint8_t *d, size_t n)
{
    size_t p = 12;
    while (p + 8 <= n) {
        uint32_t len = le32(d + p + 4);
        if (len > n - p - 8)
            return 1;
        if (memcmp(d + p, "EXIF", 4) == 0) {
            const uint8_t *e = d + p + 8;
            if (len >= 6 && memcmp(e, "Exif\0\0", 6) == 0) /* some writers keep the JPEG prefix */
                return tiff_orientation(e + 6, len - 6);
            return tiff_orientation(e, len);
        }
        p += 8 + (size_t)len + (len & 1);
    }
    return 1;
}

int mood__exif_orientation(const uint8_t *data, size_t size)
{
    if (size >= 4 && data[0] == 0xFF && data[1] == 0xD8)
        return jpeg_orientation(data, size);
    if (size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0)
        return png_orientation(data, size);
    if (mood__webp_is(data, size))
        return webp_orientation(data, size);
    return 1;
}

/* The source pixel of output pixel (x, y) for orientation o, source W x H. */
static void source_of(int o, int x, int y, int W, int H, int *sx, int *sy)
{
    switch (o) {
    case 2:
        *sx = W - 1 - x, *sy = y;
        break;
    case 3:
        *sx = W - 1 - x, *sy = H - 1 - y;
        break;
    case 4:
        *sx = x, *sy = H - 1 - y;
        break;
    case 5:
        *sx = y, *sy = x;
        break;
    case 6:
        *sx = y, *sy = H - 1 - x;
        break;
    case 7:
        *sx = W - 1 - y, *sy = H - 1 - x;
        break;
    case 8:
        *sx = W - 1 - y, *sy = x;
        break;
    default:
        *sx = x, *sy = y;
        break;
    }
}

int mood__image_orient(mood_image *img, int o)
{
    int W = img->width, H = img->height, C = img->channels;
    int ow = o >= 5 && o <= 8 ? H : W, oh = o >= 5 && o <= 8 ? W : H;
    uint8_t *px;
    if (o < 2 || o > 8)
        return 0;
    if (!(px = mood_malloc((size_t)W * H * C)))
        return mood_error_nomem();
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            source_of(o, x, y, W, H, &sx, &sy);
            memcpy(px + ((size_t)y * ow + x) * C, img->pixels + ((size_t)sy * W + sx) * C,
                   (size_t)C);
        }
    }
    mood_free(img->pixels);
    img->pixels = px;
    img->width = ow;
    img->height = oh;
    return 0;
}
