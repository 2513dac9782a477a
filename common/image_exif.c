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
#include "engine/unicode_tables.h"

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

/* Opens the TIFF block p[0..n) into t: 0, or -1 when it is not one. */
static int tiff_open(tiff *t, const uint8_t *p, size_t n)
{
    t->p = p, t->n = n, t->big = 0;
    if (!p || n < 8 || !((p[0] == 'I' && p[1] == 'I') || (p[0] == 'M' && p[1] == 'M')))
        return -1;
    t->big = p[0] == 'M';
    return rd16(t, 2) == 42 ? 0 : -1;
}

/* The offset of the 12-byte entry of `tag` in the IFD at `ifd`, or 0 when there is none. */
static size_t ifd_entry(const tiff *t, uint32_t ifd, uint32_t tag)
{
    uint32_t count;
    if (ifd > t->n || t->n - ifd < 2)
        return 0;
    count = rd16(t, ifd);
    for (uint32_t i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > t->n)
            return 0;
        if (rd16(t, e) == tag)
            return e;
    }
    return 0;
}

/* Orientation in the TIFF block, or 1. */
static int tiff_orientation(const uint8_t *p, size_t n)
{
    tiff t;
    size_t e;
    uint32_t type, v;
    if (tiff_open(&t, p, n) != 0 || !(e = ifd_entry(&t, rd32(&t, 4), 0x0112)))
        return 1;
    /* SHORT (3), one value, stored in the first two bytes of the value field; some writers
     * store it as a LONG (4), which Pillow reads too */
    type = rd16(&t, e + 2);
    if ((type != 3 && type != 4) || rd32(&t, e + 4) < 1)
        return 1;
    v = type == 3 ? rd16(&t, e + 8) : rd32(&t, e + 8);
    return v >= 1 && v <= 8 ? (int)v : 1;
}

/* The TIFF block of a JPEG's APP1 "Exif" segment; NULL when there is none. */
static const uint8_t *jpeg_tiff(const uint8_t *d, size_t n, size_t *len_out)
{
    size_t p = 2;
    while (p + 4 <= n) {
        uint8_t marker = d[p + 1];
        size_t len;
        if (d[p] != 0xFF)
            return NULL;
        if (marker == 0xFF) { /* fill byte */
            p++;
            continue;
        }
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) { /* no length */
            p += 2;
            continue;
        }
        if (marker == 0xD9 || marker == 0xDA) /* end of image, start of scan */
            return NULL;
        len = (size_t)d[p + 2] << 8 | d[p + 3];
        if (len < 2 || p + 2 + len > n)
            return NULL;
        if (marker == 0xE1 && len >= 2 + 6 + 8 && memcmp(d + p + 4, "Exif\0\0", 6) == 0) {
            *len_out = len - 8;
            return d + p + 10;
        }
        p += 2 + len;
    }
    return NULL;
}

static uint32_t be32(const uint8_t *q)
{
    return (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
}

static uint32_t le32(const uint8_t *q)
{
    return (uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0];
}

/* The TIFF block of a PNG's eXIf chunk. */
static const uint8_t *png_tiff(const uint8_t *d, size_t n, size_t *len_out)
{
    size_t p = 8;
    while (p + 12 <= n) {
        uint32_t len = be32(d + p);
        if (len > n - p - 12)
            return NULL;
        if (memcmp(d + p + 4, "eXIf", 4) == 0) {
            *len_out = len;
            return d + p + 8;
        }
        if (memcmp(d + p + 4, "IEND", 4) == 0)
            return NULL;
        p += 12 + (size_t)len;
    }
    return NULL;
}

/* The TIFF block of a WebP's EXIF chunk. */
static const uint8_t *webp_tiff(const uint8_t *d, size_t n, size_t *len_out)
{
    size_t p = 12;
    while (p + 8 <= n) {
        uint32_t len = le32(d + p + 4);
        if (len > n - p - 8)
            return NULL;
        if (memcmp(d + p, "EXIF", 4) == 0) {
            const uint8_t *e = d + p + 8;
            if (len >= 6 && memcmp(e, "Exif\0\0", 6) == 0) { /* some keep the JPEG prefix */
                *len_out = len - 6;
                return e + 6;
            }
            *len_out = len;
            return e;
        }
        p += 8 + (size_t)len + (len & 1);
    }
    return NULL;
}

/* The EXIF (TIFF) block of a JPEG, PNG or WebP file; NULL when it has none. */
static const uint8_t *exif_block(const uint8_t *data, size_t size, size_t *len)
{
    *len = 0;
    if (size >= 4 && data[0] == 0xFF && data[1] == 0xD8)
        return jpeg_tiff(data, size, len);
    if (size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0)
        return png_tiff(data, size, len);
    if (mood__webp_is(data, size))
        return webp_tiff(data, size, len);
    return NULL;
}

int mood__exif_orientation(const uint8_t *data, size_t size)
{
    size_t n;
    const uint8_t *t = exif_block(data, size, &n);
    return t ? tiff_orientation(t, n) : 1;
}

/* UTF-16BE (piexif's "unicode") to UTF-8, as Python's decode with errors="replace": unpaired
 * surrogates become U+FFFD. */
static char *utf16be_to_utf8(const uint8_t *s, size_t n)
{
    char *out = mood_malloc(n / 2 * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint32_t c = (uint32_t)s[i] << 8 | s[i + 1];
        if (c >= 0xD800 && c <= 0xDBFF && i + 3 < n) {
            uint32_t lo = (uint32_t)s[i + 2] << 8 | s[i + 3];
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
                i += 2;
            }
        }
        o += mood__utf8_encode(c >= 0xD800 && c <= 0xDFFF ? 0xFFFD : c, o);
    }
    *o = '\0';
    return out;
}

int mood__exif_user_comment(const uint8_t *data, size_t size, char **text_out)
{
    size_t n, e, at;
    const uint8_t *block = exif_block(data, size, &n), *v;
    tiff t;
    uint32_t count, sub;
    *text_out = NULL;
    /* IFD0's pointer to the Exif IFD (0x8769), whose UserComment (0x9286) is UNDEFINED bytes:
     * an 8-byte character code, then the text */
    if (tiff_open(&t, block, n) != 0 || !(e = ifd_entry(&t, rd32(&t, 4), 0x8769)))
        return 0;
    sub = rd32(&t, e + 8);
    if (!(e = ifd_entry(&t, sub, 0x9286)) || (count = rd32(&t, e + 4)) < 8)
        return 0;
    at = count <= 4 ? e + 8 : rd32(&t, e + 8);
    if (at > n || count > n - at)
        return 0;
    v = t.p + at;
    if (!memcmp(v, "UNICODE\0", 8)) /* piexif's "unicode", as A1111 writes: UTF-16BE */
        *text_out = utf16be_to_utf8(v + 8, count - 8);
    else if (!memcmp(v, "ASCII\0\0\0", 8) || !memcmp(v, "\0\0\0\0\0\0\0\0", 8))
        *text_out = mood_strndup((const char *)v + 8, count - 8);
    else /* no code: A1111 falls back to the bytes as UTF-8 */
        *text_out = mood_strndup((const char *)v, count);
    return *text_out ? 0 : mood_error_nomem();
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
