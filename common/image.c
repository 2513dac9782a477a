/*
 * image.c: 8-bit images (include/mood/image.h): the VAE-output conversion diffusers applies,
 * PNG writing with text chunks through libpng, reading text chunks back, decoding through
 * stb_image (common/image_stb.c), and grids.
 *
 * Text chunks are read by walking the PNG's chunk list directly rather than through libpng:
 * libpng only hands over chunks after the image data once every row has been decoded, and
 * `mood gen --from-png` wants the parameters of large images without decoding them. The walk
 * checks the signature, every chunk length, IHDR first, IEND present and the CRC of the chunks
 * it reads, so a truncated or damaged file is reported rather than half-read.
 */
#include <math.h>
#include <png.h>
#include <string.h>
#include <zlib.h>

#include "common/args.h"
#include "common/common.h"
#include "common/image_decode.h"
#include "common/image_stb.h"
#include "mood/image.h"

#define MAX_SIDE        65536
#define MAX_PIXELS      (1u << 28)
#define MAX_TEXT        (64u << 20) /* a decompressed text chunk; workflows run to a few MB */
#define PNG_COMPRESSION 6           /* zlib's default, as Pillow writes */

static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

/* ----- images ------------------------------------------------------------------------------ */

static int check_shape(int width, int height, int channels)
{
    if (channels != 3 && channels != 4)
        return mood_error_set(MOOD_EINVAL, "image: %d channels (expected 3 or 4)", channels);
    if (width < 1 || height < 1 || width > MAX_SIDE || height > MAX_SIDE ||
        (uint64_t)width * (uint64_t)height > MAX_PIXELS)
        return mood_error_set(MOOD_EINVAL,
                              "image: size %dx%d out of range (1..%d per side, "
                              "at most %u pixels)",
                              width, height, MAX_SIDE, MAX_PIXELS);
    return 0;
}

static size_t image_bytes(int width, int height, int channels)
{
    return (size_t)width * (size_t)height * (size_t)channels;
}

int mood_image_new(mood_image **out, int width, int height, int channels)
{
    mood_image *img;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if ((err = check_shape(width, height, channels)) != 0)
        return err;
    if (!(img = mood_calloc(1, sizeof *img)))
        return mood_error_nomem();
    if (!(img->pixels = mood_calloc(image_bytes(width, height, channels), 1))) {
        mood_free(img);
        return mood_error_nomem();
    }
    img->width = width;
    img->height = height;
    img->channels = channels;
    *out = img;
    return 0;
}

void mood_image_free(mood_image *img)
{
    if (!img)
        return;
    mood_free(img->pixels);
    mood_free(img);
}

/* One value as diffusers turns it into a byte: torch (x * 0.5 + 0.5).clamp(0, 1) in float32,
 * then numpy (v * 255).round() (half to even: rintf in the default rounding mode) and
 * astype(uint8). Each step is its own float32 operation, as in the reference; NaN ends as 0. */
static uint8_t float_to_byte(float x)
{
    float v = x * 0.5f;
    v = v + 0.5f;
    if (!(v >= 0.0f)) /* also NaN */
        v = 0.0f;
    if (v > 1.0f)
        v = 1.0f;
    v = v * 255.0f;
    return (uint8_t)rintf(v);
}

int mood_image_from_float(mood_image **out, const float *chw, int channels, int width, int height)
{
    mood_image *img = NULL;
    size_t plane;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(chw);
    if ((err = mood_image_new(&img, width, height, channels)) != 0)
        return err;
    plane = (size_t)width * (size_t)height;
    for (size_t i = 0; i < plane; i++) {
        for (int c = 0; c < channels; c++)
            img->pixels[i * (size_t)channels + (size_t)c] =
                float_to_byte(chw[(size_t)c * plane + i]);
    }
    *out = img;
    return 0;
}

/* ----- grids ------------------------------------------------------------------------------- */

static int grid_rows(size_t n, int rows)
{
    if (rows <= 0)
        rows = (int)lround(sqrt((double)n)); /* sqrt(n) is never k + 0.5: ties cannot occur */
    if (rows < 1)
        rows = 1;
    if ((size_t)rows > n)
        rows = (int)n;
    return rows;
}

int mood_image_grid(mood_image **out, const mood_image *const *images, size_t n, int rows)
{
    const mood_image *first;
    mood_image *grid = NULL;
    size_t row_bytes;
    int cols, err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if (n > 0)
        MOOD_ARG_NONNULL(images);
    if (n == 0 || !images[0])
        return mood_error_set(MOOD_EINVAL, "image grid: no images");
    first = images[0];
    for (size_t i = 1; i < n; i++) {
        if (!images[i] || images[i]->width != first->width || images[i]->height != first->height ||
            images[i]->channels != first->channels)
            return mood_error_set(MOOD_EINVAL,
                                  "image grid: image %zu differs in size or channels "
                                  "from image 0 (%dx%d, %d channels)",
                                  i, first->width, first->height, first->channels);
    }
    if (n > (size_t)MAX_SIDE)
        return mood_error_set(MOOD_EINVAL, "image grid: %zu images is too many", n);
    rows = grid_rows(n, rows);
    cols = (int)((n + (size_t)rows - 1) / (size_t)rows);
    if ((uint64_t)cols * (uint64_t)first->width > MAX_SIDE ||
        (uint64_t)rows * (uint64_t)first->height > MAX_SIDE)
        return mood_error_set(MOOD_EINVAL, "image grid: %d x %d cells of %dx%d is too large", cols,
                              rows, first->width, first->height);
    if ((err = mood_image_new(&grid, cols * first->width, rows * first->height, first->channels)) !=
        0)
        return err;
    row_bytes = (size_t)first->width * (size_t)first->channels;
    for (size_t i = 0; i < n; i++) {
        size_t x0 = (i % (size_t)cols) * row_bytes;
        size_t y0 = (i / (size_t)cols) * (size_t)first->height;
        size_t stride = (size_t)grid->width * (size_t)grid->channels;
        for (int y = 0; y < first->height; y++)
            memcpy(grid->pixels + (y0 + (size_t)y) * stride + x0,
                   images[i]->pixels + (size_t)y * row_bytes, row_bytes);
    }
    *out = grid;
    return 0;
}

/* ----- UTF-8 and Latin-1 ------------------------------------------------------------------- */

/* Decodes one strictly valid UTF-8 sequence at s[0..n); returns its length, or 0 if invalid. */
static size_t utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t c = s[0], min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, c &= 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, c &= 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, c &= 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* Checks UTF-8 and tells whether every character is at most U+00FF (representable in tEXt).
 * Returns 0, or -1 at the first invalid byte. */
static int utf8_scan(const char *s, size_t n, int *latin1)
{
    *latin1 = 1;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_next((const uint8_t *)s + i, n - i, &cp);
        if (!k)
            return -1;
        if (cp > 0xFF)
            *latin1 = 0;
        i += k;
    }
    return 0;
}

/* The Latin-1 bytes of a UTF-8 string whose characters are all <= U+00FF. */
static char *utf8_to_latin1(const char *s, size_t n, size_t *len_out)
{
    char *out = mood_malloc(n + 1);
    size_t j = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        uint32_t cp = 0;
        i += utf8_next((const uint8_t *)s + i, n - i, &cp);
        out[j++] = (char)cp;
    }
    out[j] = '\0';
    *len_out = j;
    return out;
}

static char *latin1_to_utf8(const uint8_t *s, size_t n)
{
    char *out = n <= (SIZE_MAX - 1) / 2 ? mood_malloc(2 * n + 1) : NULL;
    size_t j = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x80) {
            out[j++] = (char)s[i];
        } else {
            out[j++] = (char)(0xC0 | (s[i] >> 6));
            out[j++] = (char)(0x80 | (s[i] & 0x3F));
        }
    }
    out[j] = '\0';
    return out;
}

/* ----- PNG writing ------------------------------------------------------------------------- */

typedef struct png_writer {
    mood_atomic_file af;
    int err; /* the first MOOD_E* code, set before libpng unwinds */
} png_writer;

static void png_error_cb(png_structp png, png_const_charp message)
{
    png_writer *w = png_get_error_ptr(png);
    if (!w->err)
        w->err = mood_error_set(MOOD_EIO, "%s: libpng: %s", w->af.path, message);
    png_longjmp(png, 1);
}

static void png_warning_cb(png_structp png, png_const_charp message)
{
    (void)png;
    (void)message; /* the library never prints */
}

static png_voidp png_malloc_cb(png_structp png, png_alloc_size_t size)
{
    void *p = mood_malloc(size);
    png_writer *w = png_get_mem_ptr(png);
    if (!p && w && !w->err)
        w->err = mood_error_nomem();
    return p;
}

static void png_free_cb(png_structp png, png_voidp p)
{
    (void)png;
    mood_free(p);
}

static void png_write_cb(png_structp png, png_bytep data, size_t n)
{
    png_writer *w = png_get_io_ptr(png);
    int err = mood_atomic_write(&w->af, data, n);
    if (err) {
        if (!w->err)
            w->err = err;
        png_error(png, "write failed");
    }
}

static void png_flush_cb(png_structp png)
{
    (void)png; /* mood_atomic_commit flushes and syncs */
}

/* PNG keyword rules (PNG spec 11.3.4.3), limited to printable ASCII. */
static int check_keyword(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    if (n < 1 || n > 79 || key[0] == ' ' || key[n - 1] == ' ' || strstr(key, "  "))
        return mood_error_set(MOOD_EINVAL,
                              "PNG text key \"%s\": 1-79 characters without "
                              "leading, trailing or double spaces expected",
                              key ? key : "");
    for (size_t i = 0; i < n; i++) {
        if (key[i] < 0x20 || key[i] > 0x7E)
            return mood_error_set(MOOD_EINVAL, "PNG text key \"%s\": printable ASCII expected",
                                  key);
    }
    return 0;
}

/* Fills texts[i] for (key, value), as Pillow's PngInfo.add_text: tEXt holding Latin-1 when every
 * character fits, else uncompressed iTXt holding the UTF-8 as is. *latin1_out is the converted
 * copy to free (NULL for iTXt). */
static int make_text(png_text *t, char **latin1_out, const char *key, const char *value)
{
    size_t n = value ? strlen(value) : 0;
    int latin1, err;
    *latin1_out = NULL;
    memset(t, 0, sizeof *t);
    if ((err = check_keyword(key)) != 0)
        return err;
    if (!value || utf8_scan(value, n, &latin1) != 0)
        return mood_error_set(MOOD_EINVAL, "PNG text \"%s\": the value is not valid UTF-8", key);
    t->key = (png_charp)key;
    if (latin1) {
        if (!(*latin1_out = utf8_to_latin1(value, n, &t->text_length)))
            return mood_error_nomem();
        t->compression = PNG_TEXT_COMPRESSION_NONE;
        t->text = *latin1_out;
    } else {
        t->compression = PNG_ITXT_COMPRESSION_NONE;
        t->text = (png_charp)value;
        t->itxt_length = n;
        t->lang = (png_charp) "";
        t->lang_key = (png_charp) "";
    }
    return 0;
}

/* Everything libpng may unwind from with longjmp; returns 0, or -1 after an error (w->err). */
static int png_write_body(png_structp png, png_infop info, const mood_image *img, png_text *texts,
                          int n_text)
{
    size_t stride = (size_t)img->width * (size_t)img->channels;
    if (setjmp(png_jmpbuf(png)))
        return -1;
    png_set_compression_level(png, PNG_COMPRESSION);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 img->channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0)
        png_set_text(png, info, texts, n_text);
    png_write_info(png, info);
    for (int y = 0; y < img->height; y++)
        png_write_row(png, img->pixels + (size_t)y * stride);
    png_write_end(png, NULL);
    return 0;
}

static int png_encode(png_writer *w, const mood_image *img, png_text *texts, int n_text)
{
    png_structp png;
    png_infop info = NULL;
    int rc;
    png = png_create_write_struct_2(PNG_LIBPNG_VER_STRING, w, png_error_cb, png_warning_cb, w,
                                    png_malloc_cb, png_free_cb);
    if (png)
        info = png_create_info_struct(png);
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        return w->err ? w->err : mood_error_nomem();
    }
    png_set_write_fn(png, w, png_write_cb, png_flush_cb);
    rc = png_write_body(png, info, img, texts, n_text);
    png_destroy_write_struct(&png, &info);
    if (rc != 0 && !w->err)
        w->err = mood_error_set(MOOD_EIO, "%s: PNG encoding failed", w->af.path);
    return rc ? w->err : 0;
}

int mood_image_write_png(const char *path, const mood_image *img, const char *const *text_keys,
                         const char *const *text_values, size_t n_text)
{
    png_writer w;
    png_text *texts = NULL;
    char **copies = NULL;
    int err = 0;
    memset(&w, 0, sizeof w);
    if (!path || !img || !img->pixels || (n_text && (!text_keys || !text_values)))
        return mood_error_set(MOOD_EINVAL, "mood_image_write_png: NULL argument");
    if ((err = check_shape(img->width, img->height, img->channels)) != 0)
        return err;
    if (n_text > 1000)
        return mood_error_set(MOOD_EINVAL, "%s: %zu text chunks is too many", path, n_text);
    if (n_text && (!(texts = mood_calloc(n_text, sizeof *texts)) ||
                   !(copies = mood_calloc(n_text, sizeof *copies)))) {
        err = mood_error_nomem();
        goto done;
    }
    for (size_t i = 0; i < n_text && !err; i++)
        err = make_text(&texts[i], &copies[i], text_keys[i], text_values[i]);
    if (err || (err = mood_atomic_open(&w.af, path)) != 0)
        goto done;
    if ((err = png_encode(&w, img, texts, (int)n_text)) != 0)
        goto done;
    err = mood_atomic_commit(&w.af);
done:
    mood_atomic_abort(&w.af);
    for (size_t i = 0; copies && i < n_text; i++)
        mood_free(copies[i]);
    mood_free(copies);
    mood_free(texts);
    return err;
}

/* ----- PNG text reading -------------------------------------------------------------------- */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Inflates a zlib stream of a text chunk; at most MAX_TEXT bytes. */
static int inflate_text(mood_buf *out, const uint8_t *data, size_t n, const char *path)
{
    z_stream z;
    int zr = Z_OK, err = 0;
    memset(&z, 0, sizeof z);
    if (inflateInit(&z) != Z_OK)
        return mood_error_nomem();
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)n;
    while (zr != Z_STREAM_END && !err) {
        if ((err = mood_buf_reserve(out, 64 * 1024)) != 0)
            break;
        z.next_out = (Bytef *)out->data + out->len;
        z.avail_out = (uInt)(out->cap - out->len - 1);
        zr = inflate(&z, Z_NO_FLUSH);
        out->len = (size_t)((char *)z.next_out - out->data);
        out->data[out->len] = '\0';
        if (zr == Z_MEM_ERROR)
            err = mood_error_nomem();
        else if (zr != Z_OK && zr != Z_STREAM_END)
            err = mood_error_set(MOOD_EFORMAT, "%s: corrupt compressed text chunk (zlib: %s)", path,
                                 z.msg ? z.msg : "truncated data");
        else if (zr == Z_OK && z.avail_in == 0 && z.avail_out != 0)
            err = mood_error_set(MOOD_EFORMAT, "%s: truncated compressed text chunk", path);
        else if (out->len > MAX_TEXT)
            err = mood_error_set(MOOD_EFORMAT, "%s: a text chunk inflates beyond %u MiB", path,
                                 MAX_TEXT >> 20);
    }
    inflateEnd(&z);
    return err;
}

static int is_text_chunk(const char *type)
{
    return !strcmp(type, "tEXt") || !strcmp(type, "zTXt") || !strcmp(type, "iTXt");
}

/* The value of one text chunk `type` whose keyword matched; data/n start after the keyword's
 * NUL. *value_out stays NULL for an iTXt chunk Pillow skips (a compression method other than
 * zlib, text that is not UTF-8). iTXt: flag, method, language tag NUL, translated keyword NUL,
 * text (PNG spec 11.3.4.5). */
static int decode_text(char **value_out, const char *type, const uint8_t *data, size_t n,
                       const char *path)
{
    mood_buf raw;
    const uint8_t *text = data, *end = data + n;
    size_t len = n;
    int compressed = 0, itxt = !strcmp(type, "iTXt"), err = 0, latin1;
    *value_out = NULL;
    mood_buf_init(&raw);
    if (!strcmp(type, "zTXt")) {
        if (n < 1 || data[0] != 0)
            return mood_error_set(MOOD_EFORMAT, "%s: zTXt chunk with an unknown compression", path);
        compressed = 1, text = data + 1, len = n - 1;
    } else if (itxt) {
        const uint8_t *lang_end, *tkey_end;
        if (n < 2)
            return mood_error_set(MOOD_EFORMAT, "%s: iTXt chunk too short", path);
        if (data[0] && data[1] != 0)
            return 0;
        compressed = data[0] != 0;
        if (!(lang_end = memchr(data + 2, 0, n - 2)) ||
            !(tkey_end = memchr(lang_end + 1, 0, (size_t)(end - lang_end - 1))))
            return mood_error_set(MOOD_EFORMAT, "%s: malformed iTXt chunk", path);
        text = tkey_end + 1;
        len = (size_t)(end - text);
    }
    if (compressed) {
        if ((err = inflate_text(&raw, text, len, path)) != 0)
            goto done;
        text = (const uint8_t *)raw.data, len = raw.len;
    }
    if (len && memchr(text, 0, len)) {
        err = mood_error_set(MOOD_EFORMAT, "%s: %s chunk text holds a NUL byte", path, type);
    } else if (!itxt) {
        if (!(*value_out = latin1_to_utf8(text, len)))
            err = mood_error_nomem();
    } else if (utf8_scan((const char *)text, len, &latin1) == 0) {
        if (!(*value_out = mood_strndup((const char *)text, len)))
            err = mood_error_nomem();
    }
done:
    mood_buf_dispose(&raw);
    return err;
}

static int not_png(const mood_map *m, const char *path)
{
    if (m->size >= 3 && m->data[0] == 0xFF && m->data[1] == 0xD8 && m->data[2] == 0xFF)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: a JPEG file, not a PNG (its generation parameters are in its "
                              "EXIF, which mood_image_read_parameters reads)",
                              path);
    if (m->size >= 12 && !memcmp(m->data, "RIFF", 4) && !memcmp(m->data + 8, "WEBP", 4))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: a WebP file, not a PNG (its generation parameters are in its "
                              "EXIF, which mood_image_read_parameters reads)",
                              path);
    return mood_error_set(MOOD_EFORMAT, "%s: not a PNG file", path);
}

static int corrupt_png(const char *path, size_t pos, const char *what)
{
    return mood_error_set(MOOD_EFORMAT, "%s: corrupt or truncated PNG at byte %zu: %s", path, pos,
                          what);
}

/* Walks the chunks; *value_out gets the last text chunk named `key` (NULL when none). */
static int walk_chunks(char **value_out, const mood_map *m, const char *path, const char *key)
{
    size_t pos = 8, klen = strlen(key);
    int err = 0, first = 1;
    if (m->size < 8 || memcmp(m->data, png_signature, 8) != 0)
        return not_png(m, path);
    while (!err) {
        const uint8_t *c = m->data + pos, *data = c + 8;
        uint32_t len;
        char type[5];
        if (m->size - pos < 12)
            return corrupt_png(path, pos, "the file ends before the IEND chunk");
        len = be32(c);
        memcpy(type, c + 4, 4);
        type[4] = '\0';
        if (len > 0x7FFFFFFFu || m->size - pos - 12 < len)
            return corrupt_png(path, pos, "a chunk runs past the end of the file");
        for (int i = 0; i < 4; i++) {
            if (!((type[i] >= 'A' && type[i] <= 'Z') || (type[i] >= 'a' && type[i] <= 'z')))
                return corrupt_png(path, pos, "not a chunk type");
        }
        if (first && (strcmp(type, "IHDR") != 0 || len != 13))
            return corrupt_png(path, pos, "IHDR is not the first chunk");
        if ((first || is_text_chunk(type)) &&
            crc32(crc32(0L, c + 4, 4), data, len) != be32(data + len))
            return corrupt_png(path, pos, "CRC mismatch");
        if (!strcmp(type, "IEND"))
            return 0;
        if (is_text_chunk(type) && len > klen && !memcmp(data, key, klen) && data[klen] == 0) {
            char *value = NULL;
            err = decode_text(&value, type, data + klen + 1, len - klen - 1, path);
            if (value) {
                mood_free(*value_out);
                *value_out = value;
            }
        }
        first = 0;
        pos += 12 + (size_t)len;
    }
    return err;
}

int mood_image_read_png_text(char **value_out, const char *path, const char *key)
{
    mood_map m = {0};
    char *value = NULL;
    int err;
    if (value_out)
        *value_out = NULL;
    if (!value_out || !path || !key || !*key)
        return mood_error_set(MOOD_EINVAL, "mood_image_read_png_text: NULL argument");
    if ((err = mood_map_file(&m, path)) != 0)
        return err;
    err = walk_chunks(&value, &m, path, key);
    mood_unmap(&m);
    if (!err && !value)
        err = mood_error_set(MOOD_ENOTFOUND, "%s: no \"%s\" text in this PNG", path, key);
    if (err)
        mood_free(value);
    else
        *value_out = value;
    return err;
}

int mood_image_read_parameters(char **value_out, const char *path)
{
    mood_map m = {0};
    char *value = NULL;
    int err, png;
    if (value_out)
        *value_out = NULL;
    if (!value_out || !path)
        return mood_error_set(MOOD_EINVAL, "mood_image_read_parameters: NULL argument");
    if ((err = mood_map_file(&m, path)) != 0)
        return err;
    png = m.size >= 8 && memcmp(m.data, png_signature, 8) == 0;
    /* A1111's read_info_from_image: an EXIF UserComment wins over the PNG text when not empty */
    if ((err = mood__exif_user_comment(m.data, m.size, &value)) == 0 && value && !*value) {
        mood_free(value);
        value = NULL;
    }
    if (!err && !value && png)
        err = walk_chunks(&value, &m, path, "parameters");
    else if (!err && !value && !mood__webp_is(m.data, m.size) &&
             !(m.size >= 3 && !memcmp(m.data, "\xFF\xD8\xFF", 3)))
        err = mood_error_set(MOOD_EFORMAT, "%s: not a PNG, JPEG or WebP file", path);
    mood_unmap(&m);
    if (!err && !value)
        err = mood_error_set(MOOD_ENOTFOUND, "%s: no parameters text (%s)", path,
                             png ? "PNG \"parameters\" or EXIF UserComment" : "EXIF UserComment");
    if (err)
        mood_free(value);
    else
        *value_out = value;
    return err;
}

void mood_image_free_string(char *s)
{
    mood_free(s);
}

/* ----- decoding ---------------------------------------------------------------------------- */

/* Whether the file starts like `magic`, or is a truncated copy of its start. */
static int starts_like(const mood_map *m, const void *magic, size_t n)
{
    size_t k = m->size < n ? (size_t)m->size : n;
    return k > 0 && !memcmp(m->data, magic, k);
}

/* Formats mood does not decode, by their first bytes, for a message that names them. */
static const char *other_format(const mood_map *m)
{
    const uint8_t *d = m->data;
    if (starts_like(m, "GIF8", 4))
        return "a GIF image";
    if (starts_like(m, "II*\0", 4) || starts_like(m, "MM\0*", 4))
        return "a TIFF image";
    if (starts_like(m, "8BPS", 4))
        return "a Photoshop file";
    if (starts_like(m, "\xFF\x0A", 2) || (m->size >= 12 && !memcmp(d + 4, "JXL ", 4)))
        return "a JPEG XL image";
    if (m->size >= 12 && !memcmp(d + 4, "ftyp", 4)) {
        if (!memcmp(d + 8, "avif", 4) || !memcmp(d + 8, "avis", 4))
            return "an AVIF image";
        if (!memcmp(d + 8, "heic", 4) || !memcmp(d + 8, "heix", 4) || !memcmp(d + 8, "mif1", 4))
            return "a HEIC image";
    }
    return NULL;
}

/* An uncompressed BMP shorter than its pixel rows: stb_image would fill the missing rows with
 * black and say nothing. */
static int bmp_cut_short(const mood_map *m)
{
    const uint8_t *d = m->data;
    uint32_t offset, compression;
    int32_t w, h;
    uint16_t bpp;
    uint64_t row, need;
    if (m->size < 34)
        return 0;
    offset = (uint32_t)d[10] | (uint32_t)d[11] << 8 | (uint32_t)d[12] << 16 | (uint32_t)d[13] << 24;
    w = (int32_t)((uint32_t)d[18] | (uint32_t)d[19] << 8 | (uint32_t)d[20] << 16 |
                  (uint32_t)d[21] << 24);
    h = (int32_t)((uint32_t)d[22] | (uint32_t)d[23] << 8 | (uint32_t)d[24] << 16 |
                  (uint32_t)d[25] << 24);
    bpp = (uint16_t)(d[28] | d[29] << 8);
    compression =
        (uint32_t)d[30] | (uint32_t)d[31] << 8 | (uint32_t)d[32] << 16 | (uint32_t)d[33] << 24;
    if ((compression != 0 && compression != 3) || w <= 0 || h == 0 || h == INT32_MIN || !bpp)
        return 0; /* compressed rows have no fixed size: the decoder checks them */
    row = ((uint64_t)w * bpp + 31) / 32 * 4;
    need = (uint64_t)offset + row * (uint64_t)(h < 0 ? -(int64_t)h : h);
    return (uint64_t)m->size < need;
}

static int check_decodable(const mood_map *m, const char *path)
{
    const char *other;
    if (m->size == 0)
        return mood_error_set(MOOD_EFORMAT, "%s: an empty file, not an image", path);
    if ((other = other_format(m)) != NULL)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: %s, which mood does not read (it reads PNG, JPEG, WebP and "
                              "BMP): convert it",
                              path, other);
    if (starts_like(m, "BM", 2) && bmp_cut_short(m))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: the BMP file is cut short (its pixel rows end "
                              "early): a broken copy or download",
                              path);
    /* a PNG's size is in its header; stb_image refuses a side past MAX_SIDE with only "unknown
     * image type" */
    if (starts_like(m, png_signature, 8) && m->size >= 24) {
        const uint8_t *d = m->data;
        uint32_t w = (uint32_t)d[16] << 24 | (uint32_t)d[17] << 16 | (uint32_t)d[18] << 8 | d[19];
        uint32_t h = (uint32_t)d[20] << 24 | (uint32_t)d[21] << 16 | (uint32_t)d[22] << 8 | d[23];
        if (w > MAX_SIDE || h > MAX_SIDE)
            return mood_error_set(MOOD_EUNSUPPORTED,
                                  "%s: %u x %u pixels; mood reads images up to %d pixels a side",
                                  path, w, h, MAX_SIDE);
    }
    if (starts_like(m, png_signature, 8) || starts_like(m, "\xFF\xD8\xFF", 3) ||
        starts_like(m, "BM", 2))
        return 0; /* stb_image decodes it or says what is wrong */
    return mood_error_set(MOOD_EUNSUPPORTED, "%s: not a PNG, JPEG, WebP or BMP image", path);
}

/* What a failed decode says: stb_image's terse reasons in words. Its "outofmem" is also its
 * own size limit (2^31 bytes of decoded pixels, 16-bit ones counted twice): an image that large
 * is named as too large, not as the machine out of memory. */
static int decode_failed(const char *path, const char *reason, int w, int h, int c)
{
    static const char *const damaged[] = {
        "outofdata",       "expected marker", "read past buffer",  "bad huffman code",
        "bad zlib header", "zlib corrupt",    "bad codelengths",   "bad code lengths",
        "bad dist",        "no IDAT",         "not enough pixels", "no SOF",
        "bad AC huff",     "bad DC huff",     "bad DHT header",    "unknown marker"};
    if (!strcmp(reason, "outofmem")) {
        if ((uint64_t)w * (uint64_t)h * (uint64_t)(c < 3 ? 4 : c) * 2 >= (1ull << 31))
            return mood_error_set(MOOD_EUNSUPPORTED,
                                  "%s: %dx%d pixels with %d channels is too large for mood's "
                                  "decoder: scale it down (or save it with 8 bits a channel)",
                                  path, w, h, c);
        return mood_error_set(MOOD_ENOMEM, "%s: out of memory decoding %dx%d pixels", path, w, h);
    }
    for (size_t i = 0; i < sizeof damaged / sizeof damaged[0]; i++)
        if (!strncmp(reason, damaged[i], strlen(damaged[i])))
            return mood_error_set(MOOD_EFORMAT,
                                  "%s: the image data is damaged or cut short (the decoder "
                                  "says: %s): a broken copy or download",
                                  path, reason);
    if (!strcmp(reason, "unknown image type"))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: a variant of its format mood's decoder does not read "
                              "(compressed BMP, arithmetic-coded, 12-bit or lossless JPEG): "
                              "save it again as an ordinary PNG or JPEG",
                              path);
    return mood_error_set(MOOD_EFORMAT, "%s: cannot decode the image: %s", path, reason);
}

int mood_image_load(mood_image **out, const char *path)
{
    mood_map m = {0};
    mood_image *img = NULL;
    const char *reason = "";
    int w = 0, h = 0, c = 0, err;
    if (out)
        *out = NULL;
    if (!out || !path)
        return mood_error_set(MOOD_EINVAL, "mood_image_load: NULL argument");
    if ((err = mood_map_file(&m, path)) != 0)
        return err;
    if (mood__webp_is(m.data, m.size)) {
        err = mood__webp_decode(&img, m.data, m.size, path);
        goto orient;
    }
    if ((err = check_decodable(&m, path)) != 0)
        goto done;
    if (mood__stb_info(m.data, m.size, &w, &h, &c, &reason) != 0) {
        err = decode_failed(path, reason, w, h, c);
        goto done;
    }
    if ((uint64_t)w * (uint64_t)h > MAX_PIXELS) {
        err = mood_error_set(MOOD_EUNSUPPORTED,
                             "%s: %dx%d pixels is larger than mood reads "
                             "(%u pixels)",
                             path, w, h, MAX_PIXELS);
        goto done;
    }
    if (!(img = mood_calloc(1, sizeof *img))) {
        err = mood_error_nomem();
        goto done;
    }
    img->channels = c == 2 || c == 4 ? 4 : 3;
    img->pixels =
        mood__stb_decode(m.data, m.size, img->channels, &img->width, &img->height, &reason);
    if (!img->pixels) {
        err = decode_failed(path, reason, w, h, c);
        goto done;
    }
orient:
    if (!err)
        err = mood__image_orient(img, mood__exif_orientation(m.data, m.size));
done:
    mood_unmap(&m);
    if (err)
        mood_image_free(img);
    else
        *out = img;
    return err;
}

/* WebP's first chunk as mood__webp_decode reads it: "VP8 " with its start code, "VP8L" with its
 * signature byte, or "VP8X". */
static int webp_header_ok(const uint8_t *d, size_t size)
{
    if (size < 30)
        return 0;
    if (memcmp(d + 12, "VP8 ", 4) == 0)
        return d[23] == 0x9d && d[24] == 0x01 && d[25] == 0x2a;
    if (memcmp(d + 12, "VP8L", 4) == 0)
        return d[20] == 0x2f;
    return memcmp(d + 12, "VP8X", 4) == 0;
}

const char *mood__image_media_type(const uint8_t *data, size_t size, const char **why)
{
    static _Thread_local char reason[160];
    const char *stb = "";
    int w, h, c, png = size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0;
    *why = size ? "not a PNG, JPEG or WebP image" : "an empty file";
    if (mood__webp_is(data, size)) {
        *why = "a damaged WebP image";
        return webp_header_ok(data, size) ? "image/webp" : NULL;
    }
    if (!png && !(size >= 3 && memcmp(data, "\xFF\xD8\xFF", 3) == 0))
        return NULL;
    if (mood__stb_info(data, size, &w, &h, &c, &stb) == 0)
        return png ? "image/png" : "image/jpeg";
    if (strcmp(stb, "outofmem") == 0) {
        *why = "outofmem";
        return NULL;
    }
    snprintf(reason, sizeof reason, "a damaged %s image: %s", png ? "PNG" : "JPEG", stb);
    *why = reason;
    return NULL;
}
