/*
 * test_image.c: common/image.c against Pillow and diffusers (tests/fixtures/image/, made by
 * tools/make_fixtures_image.py): the VAE float -> byte conversion on every rounding boundary
 * (diffusers' VaeImageProcessor.postprocess), text chunks written by Pillow the way A1111 saves
 * (tEXt, iTXt, zTXt, compressed iTXt, after the image data, repeated keys), text written by mood
 * and read back (Latin-1 -> tEXt, other text -> iTXt), decoding PNG/BMP/JPEG with Pillow's
 * pixels, grids, truncated and corrupt files, and writes that fail (missing or read-only
 * directory, a full disk, every allocation) leaving nothing behind.
 *
 * With MOOD_PNG_CHECK_DIR=DIR set, the PNGs mood writes are also left in DIR for
 * `tools/.venv/bin/python tools/make_fixtures_image.py --check DIR` (Pillow reads them).
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "common/common.h"
#include "common/image_decode.h"
#include "harness.h"
#include "mood/image.h"

static uint8_t *from_hex(const char *hex, size_t *n)
{
    size_t len = strlen(hex) / 2;
    uint8_t *out = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    *n = len;
    return out;
}

/* An image of pseudo-random bytes (poorly compressible). */
static mood_image *pattern(int w, int h, int channels)
{
    mood_image *img = NULL;
    uint32_t x = 2463534242u;
    if (mood_image_new(&img, w, h, channels) != 0)
        return NULL;
    for (size_t i = 0; i < (size_t)w * (size_t)h * (size_t)channels; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        img->pixels[i] = (uint8_t)(x >> 24);
    }
    return img;
}

/* Number of entries in a directory, "." and ".." aside. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static const char *fresh_dir(const char *name)
{
    const char *dir = scratch_path(name);
    mkdir(dir, 0755);
    return dir;
}

static void test_float_edges(void)
{
    cJSON *root = load_json(fixture("image/float_edges.json"));
    size_t n_in = 0, n_out = 0, bad = 0;
    uint8_t *in = from_hex(json_str(root, "input_f32le"), &n_in);
    uint8_t *want = from_hex(json_str(root, "expected_hwc"), &n_out);
    float *chw = malloc(n_in);
    mood_image *img = NULL;
    MOOD_CHECK(n_in == 3 * 24 * 24 * 4 && n_out == 3 * 24 * 24);
    memcpy(chw, in, n_in); /* the fixture is little-endian, as is every machine mood runs on */
    MOOD_CHECK_OK(mood_image_from_float(&img, chw, 3, 24, 24));
    for (size_t i = 0; img && i < n_out; i++) {
        if (img->pixels[i] != want[i] && bad++ < 5)
            fprintf(stderr, "  byte %zu: %u, diffusers %u (x = %.9g)\n", i, img->pixels[i], want[i],
                    (double)chw[(i % 3) * 576 + i / 3]);
    }
    MOOD_CHECK_MSG(bad == 0, "%zu of %zu bytes differ from diffusers", bad, n_out);
    mood_image_free(img);
    MOOD_CHECK(mood_image_from_float(&img, chw, 2, 24, 24) == MOOD_EINVAL && !img);
    free(chw);
    free(in);
    free(want);
    cJSON_Delete(root);
}

/* True when the PNG at path has a chunk `type` whose data starts with "key\0". */
static int has_chunk(const char *path, const char *type, const char *key)
{
    size_t n = 0, pos = 8, klen = strlen(key);
    unsigned char *d = read_file(path, &n);
    int found = 0;
    while (d && pos + 12 <= n && !found) {
        size_t len =
            (size_t)d[pos] << 24 | (size_t)d[pos + 1] << 16 | (size_t)d[pos + 2] << 8 | d[pos + 3];
        found = !memcmp(d + pos + 4, type, 4) && len > klen && !memcmp(d + pos + 8, key, klen) &&
                d[pos + 8 + klen] == 0;
        pos += 12 + len;
    }
    free(d);
    return found;
}

static void check_text(const char *path, const char *key, const char *want)
{
    char *value = NULL;
    MOOD_CHECK_OK(mood_image_read_png_text(&value, path, key));
    MOOD_CHECK_MSG(value && !strcmp(value, want), "%s %s: [%s]", path, key, value ? value : "");
    mood_image_free_string(value);
}

/* Leaves a PNG and its raw pixels for the Pillow check (MOOD_PNG_CHECK_DIR). */
static void export_for_pillow(cJSON *files, const char *name, const mood_image *img,
                              const char *const *keys, const char *const *values, size_t n)
{
    const char *dir = getenv("MOOD_PNG_CHECK_DIR");
    char path[1024], raw[1024];
    cJSON *entry, *texts;
    if (!dir || !*dir)
        return;
    snprintf(path, sizeof path, "%s/%s.png", dir, name);
    snprintf(raw, sizeof raw, "%s/%s.raw", dir, name);
    MOOD_CHECK_OK(mood_image_write_png(path, img, keys, values, n));
    MOOD_CHECK(write_file(raw, img->pixels,
                          (size_t)img->width * (size_t)img->height * (size_t)img->channels) == 0);
    entry = cJSON_AddObjectToObject(files, name);
    snprintf(path, sizeof path, "%s.png", name);
    snprintf(raw, sizeof raw, "%s.raw", name);
    cJSON_AddStringToObject(entry, "file", path);
    cJSON_AddStringToObject(entry, "raw", raw);
    cJSON_AddNumberToObject(entry, "width", img->width);
    cJSON_AddNumberToObject(entry, "height", img->height);
    texts = cJSON_AddObjectToObject(entry, "texts");
    for (size_t i = 0; i < n; i++)
        cJSON_AddStringToObject(texts, keys[i], values[i]);
}

static void test_png_text_round_trip(void)
{
    static const char *const keys[] = {"parameters", "prompt", "workflow", "empty", "Comment"};
    static const char *const values[] = {
        "café at dusk, <lora:inkwash:0.8>\nNegative prompt: blurry\nSteps: 20, Seed: 1",
        "{\"3\": {\"class_type\": \"KSampler\", \"inputs\": {\"seed\": 1}}}",
        "夜の灯台 🌊 \u00ff\u0100", "", "\x7f\x01 control \xc2\x80"};
    const char *path = scratch_path("text.png"), *dir = getenv("MOOD_PNG_CHECK_DIR");
    mood_image *img = pattern(7, 5, 3), *rgba = pattern(3, 4, 4), *back = NULL;
    cJSON *check = cJSON_CreateObject(), *files = cJSON_AddArrayToObject(check, "files"), *map;
    char *value = NULL;
    MOOD_CHECK_OK(mood_image_write_png(path, img, keys, values, 5));
    for (int i = 0; i < 5; i++)
        check_text(path, keys[i], values[i]);
    /* Pillow's add_text: tEXt when every character is Latin-1, else iTXt */
    MOOD_CHECK(has_chunk(path, "tEXt", "parameters") && has_chunk(path, "tEXt", "prompt"));
    MOOD_CHECK(has_chunk(path, "iTXt", "workflow") && !has_chunk(path, "tEXt", "workflow"));
    MOOD_CHECK(has_chunk(path, "tEXt", "empty") && has_chunk(path, "tEXt", "Comment"));
    MOOD_CHECK(mood_image_read_png_text(&value, path, "Parameters") == MOOD_ENOTFOUND && !value);
    MOOD_CHECK(strstr(mood_error_last(), "text.png") != NULL);
    MOOD_CHECK_OK(mood_image_load(&back, path));
    MOOD_CHECK(back && back->width == 7 && back->height == 5 && back->channels == 3 &&
               !memcmp(back->pixels, img->pixels, 7 * 5 * 3));
    mood_image_free(back);
    back = NULL;
    MOOD_CHECK_OK(mood_image_write_png(path, rgba, NULL, NULL, 0));
    MOOD_CHECK(mood_image_read_png_text(&value, path, "parameters") == MOOD_ENOTFOUND);
    MOOD_CHECK_OK(mood_image_load(&back, path));
    MOOD_CHECK(back && back->channels == 4 && !memcmp(back->pixels, rgba->pixels, 3 * 4 * 4));
    mood_image_free(back);

    map = cJSON_CreateObject();
    export_for_pillow(map, "mood_text", img, keys, values, 5);
    export_for_pillow(map, "mood_rgba", rgba, keys, values, 1);
    if (dir && *dir) {
        char out[1024], *json;
        cJSON *e;
        cJSON_ArrayForEach(e, map) cJSON_AddItemReferenceToArray(files, e);
        json = cJSON_Print(check);
        snprintf(out, sizeof out, "%s/check.json", dir);
        MOOD_CHECK(write_file(out, json, strlen(json)) == 0);
        free(json);
    }
    cJSON_Delete(check);
    cJSON_Delete(map);
    mood_image_free(img);
    mood_image_free(rgba);
}

/* PNGs written by Pillow as A1111 saves them; every text Pillow reads, mood reads the same. */
static void test_pillow_texts(void)
{
    cJSON *root = load_json(fixture("image/expected.json")), *f, *t;
    int n = 0;
    cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(root, "files"))
    {
        char rel[256];
        const cJSON *texts = cJSON_GetObjectItemCaseSensitive(f, "text");
        if (!texts)
            continue;
        snprintf(rel, sizeof rel, "image/%s", f->string);
        cJSON_ArrayForEach(t, texts)
        {
            check_text(fixture(rel), t->string, t->valuestring);
            n++;
        }
    }
    MOOD_CHECK(n == 7); /* including "late" after IDAT and the repeated "parameters" */
    MOOD_CHECK(has_chunk(fixture("image/pil_params.png"), "zTXt", "zipped"));
    MOOD_CHECK(has_chunk(fixture("image/pil_itxt.png"), "iTXt", "parameters"));
    cJSON_Delete(root);
}

/* A1111's parameters of its JPEG and WebP images (EXIF UserComment, UTF-16 through piexif), as
 * A1111 reads them back (tools/make_fixtures_image.py); a PNG's "parameters" text as before. */
static void test_a1111_parameters(void)
{
    cJSON *root = load_json(fixture("image/expected.json")), *f;
    int n = 0;
    char *text = NULL;
    cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(root, "files"))
    {
        char rel[256];
        const char *want = json_str(f, "parameters");
        if (!want)
            continue;
        snprintf(rel, sizeof rel, "image/%s", f->string);
        MOOD_CHECK_OK(mood_image_read_parameters(&text, fixture(rel)));
        MOOD_CHECK_MSG(text && !strcmp(text, want), "%s: %s", f->string, text ? text : "(null)");
        mood_image_free_string(text);
        n++;
    }
    MOOD_CHECK(n == 2);
    MOOD_CHECK_OK(mood_image_read_parameters(&text, fixture("image/pil_dup.png")));
    MOOD_CHECK(text && !strcmp(text, "second"));
    mood_image_free_string(text);
    MOOD_CHECK(mood_image_read_parameters(&text, fixture("image/rgb.jpg")) == MOOD_ENOTFOUND);
    MOOD_CHECK(mood_image_read_parameters(&text, fixture("image/rgb.bmp")) == MOOD_EFORMAT);
    cJSON_Delete(root);
}

static void test_decode(void)
{
    cJSON *root = load_json(fixture("image/expected.json")), *f;
    int n = 0;
    cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(root, "files"))
    {
        char rel[256];
        size_t len = 0, differ = 0;
        int max_diff = 0, jpeg = strstr(f->string, ".jpg") != NULL;
        const char *hex = json_str(f, "pixels");
        mood_image *img = NULL;
        uint8_t *want;
        if (!hex)
            continue;
        snprintf(rel, sizeof rel, "image/%s", f->string);
        want = from_hex(hex, &len);
        MOOD_CHECK_OK(mood_image_load(&img, fixture(rel)));
        MOOD_CHECK_MSG(img && img->width == cJSON_GetObjectItem(f, "width")->valueint &&
                           img->height == cJSON_GetObjectItem(f, "height")->valueint &&
                           img->channels == cJSON_GetObjectItem(f, "channels")->valueint,
                       "%s: %dx%dx%d", f->string, img ? img->width : 0, img ? img->height : 0,
                       img ? img->channels : 0);
        for (size_t i = 0; img && i < len && i < (size_t)img->width * img->height * img->channels;
             i++) {
            int d = abs((int)img->pixels[i] - (int)want[i]);
            differ += d != 0;
            max_diff = d > max_diff ? d : max_diff;
        }
        /* stb_image and libjpeg decode JPEG with different IDCTs: a few levels apart */
        MOOD_CHECK_MSG(jpeg ? max_diff <= 4 : differ == 0, "%s: %zu bytes differ, max %d",
                       f->string, differ, max_diff);
        if (jpeg)
            printf("     %s: max |stb - Pillow| = %d levels\n", f->string, max_diff);
        mood_image_free(img);
        free(want);
        n++;
    }
    MOOD_CHECK(n == 6);
    cJSON_Delete(root);
}

static void test_grid(void)
{
    mood_image *cells[5], *grid = NULL, *odd = pattern(2, 2, 3);
    for (int i = 0; i < 5; i++) {
        MOOD_CHECK_OK(mood_image_new(&cells[i], 2, 3, 3));
        memset(cells[i]->pixels, 10 * (i + 1), 2 * 3 * 3);
    }
    /* A1111's default: round(sqrt(5)) = 2 rows, ceil(5 / 2) = 3 columns, the last cell black */
    MOOD_CHECK_OK(mood_image_grid(&grid, (const mood_image *const *)cells, 5, 0));
    MOOD_CHECK(grid && grid->width == 6 && grid->height == 6 && grid->channels == 3);
    for (int y = 0; grid && y < 6; y++) {
        for (int x = 0; x < 6; x++) {
            int cell = (y / 3) * 3 + x / 2;
            uint8_t want = cell < 5 ? (uint8_t)(10 * (cell + 1)) : 0;
            MOOD_CHECK_MSG(grid->pixels[(y * 6 + x) * 3 + 1] == want, "(%d,%d)", x, y);
        }
    }
    mood_image_free(grid);
    MOOD_CHECK_OK(mood_image_grid(&grid, (const mood_image *const *)cells, 5, 1));
    MOOD_CHECK(grid && grid->width == 10 && grid->height == 3);
    mood_image_free(grid);
    MOOD_CHECK_OK(mood_image_grid(&grid, (const mood_image *const *)cells, 3, 9));
    MOOD_CHECK(grid && grid->width == 2 && grid->height == 9); /* rows capped at n */
    mood_image_free(grid);
    MOOD_CHECK_OK(mood_image_grid(&grid, (const mood_image *const *)cells, 4, 0));
    MOOD_CHECK(grid && grid->width == 4 && grid->height == 6);
    mood_image_free(grid);
    {
        const mood_image *mixed[2] = {cells[0], odd};
        MOOD_CHECK(mood_image_grid(&grid, mixed, 2, 0) == MOOD_EINVAL && !grid);
        MOOD_CHECK(mood_image_grid(&grid, mixed, 0, 0) == MOOD_EINVAL);
    }
    for (int i = 0; i < 5; i++)
        mood_image_free(cells[i]);
    mood_image_free(odd);
}

static void check_fails(const char *path, int want, const char *what)
{
    char *value = NULL;
    int rc = mood_image_read_png_text(&value, path, "parameters");
    MOOD_CHECK_MSG(rc == want && !value, "%s: %d (%s)", what, rc, mood_error_last());
    if (want == MOOD_EFORMAT)
        MOOD_CHECK_MSG(strstr(mood_error_last(), mood_path_basename(path)) != NULL,
                       "%s: message does not name the file: %s", what, mood_error_last());
    mood_image_free_string(value);
}

static void test_corrupt_files(void)
{
    static const char *const keys[] = {"parameters"};
    static const char *const values[] = {"Steps: 20, Sampler: Euler, Seed: 1"};
    const char *good = scratch_path("good.png"), *bad = scratch_path("bad.png");
    mood_image *img = pattern(16, 16, 3), *dec = NULL;
    unsigned char *d;
    size_t n = 0;
    MOOD_CHECK_OK(mood_image_write_png(good, img, keys, values, 1));
    d = read_file(good, &n);
    /* cut in the signature, IHDR, the text chunk, IDAT, before IEND */
    for (size_t cut = 4; d && cut < n; cut += cut < 80 ? 13 : 97) {
        char what[64];
        MOOD_CHECK(write_file(bad, d, cut) == 0);
        snprintf(what, sizeof what, "truncated at %zu of %zu", cut, n);
        check_fails(bad, MOOD_EFORMAT, what);
        MOOD_CHECK_MSG(mood_image_load(&dec, bad) == MOOD_EFORMAT && !dec, "load %s", what);
    }
    if (d) { /* a flipped byte in the text: CRC mismatch */
        unsigned char *p = d;
        while (p + 5 < d + n && memcmp(p, "Steps", 5) != 0)
            p++;
        *p ^= 1;
        MOOD_CHECK(write_file(bad, d, n) == 0);
        check_fails(bad, MOOD_EFORMAT, "CRC");
        *p ^= 1;
        memcpy(d, "\x89PNX", 4);
        MOOD_CHECK(write_file(bad, d, n) == 0);
        check_fails(bad, MOOD_EFORMAT, "signature");
    }
    MOOD_CHECK(write_file(bad, "hello", 5) == 0);
    check_fails(bad, MOOD_EFORMAT, "text file");
    MOOD_CHECK(mood_image_load(&dec, bad) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(write_file(bad, "RIFF\0\0\0\0WEBPVP8 ", 16) == 0);
    check_fails(bad, MOOD_EUNSUPPORTED, "WebP");
    /* WebP decodes (libwebp, tests/unit/test_train.c); this header alone is truncated */
    MOOD_CHECK(mood_image_load(&dec, bad) == MOOD_EFORMAT);
    check_fails(fixture("image/rgb.jpg"), MOOD_EUNSUPPORTED, "JPEG");
    check_fails(scratch_path("missing.png"), MOOD_ENOTFOUND, "missing");
    MOOD_CHECK(mood_image_load(&dec, scratch_path("missing.png")) == MOOD_ENOTFOUND);
    if (d && n > 24) { /* a header of 1 x 70000 pixels: said so, not "unknown image type" */
        memcpy(d, "\x89PNG", 4);
        memcpy(d + 16, "\0\0\0\x01\0\x01\x11\x70", 8);
        MOOD_CHECK(write_file(bad, d, n) == 0);
        MOOD_CHECK(mood_image_load(&dec, bad) == MOOD_EUNSUPPORTED && !dec);
        MOOD_CHECK_MSG(strstr(mood_error_last(), "1 x 70000 pixels"), "%s", mood_error_last());
    }
    free(d);
    mood_image_free(img);
}

/* Writes `n` bytes and checks that loading them fails with `code` and a message holding `words`. */
static void check_load_fails(const char *name, const void *bytes, size_t n, int code,
                             const char *words)
{
    const char *path = scratch_path(name);
    mood_image *img = NULL;
    MOOD_CHECK(write_file(path, bytes, n) == 0);
    MOOD_CHECK_MSG(mood_image_load(&img, path) == code && !img, "%s: %s", name, mood_error_last());
    MOOD_CHECK_MSG(strstr(mood_error_last(), words), "%s: %s", name, mood_error_last());
}

/* Pictures mood does not decode are named by their format (whatever their file is called); an
 * empty file is said to be one; an uncompressed BMP cut short is refused (its missing rows were
 * read as black); an EXIF orientation stored as a LONG is read, as Pillow reads it. */
static void test_other_formats_and_short_files(void)
{
    static const uint8_t heic[] = {0, 0, 0, 0x18, 'f', 't', 'y', 'p', 'h', 'e', 'i', 'c', 0, 0};
    static const uint8_t avif[] = {0, 0, 0, 0x1c, 'f', 't', 'y', 'p', 'a', 'v', 'i', 'f', 0, 0};
    uint8_t bmp[54 + 2 * 12] = {'B', 'M'}, exif[40];
    mood_image *img = NULL;
    check_load_fails("empty.png", "", 0, MOOD_EFORMAT, "an empty file");
    check_load_fails("a.png", "GIF89a\x01\0\x01\0\0\0\0", 13, MOOD_EUNSUPPORTED, "a GIF image");
    check_load_fails("b.jpg", heic, sizeof heic, MOOD_EUNSUPPORTED, "a HEIC image");
    check_load_fails("c.png", avif, sizeof avif, MOOD_EUNSUPPORTED, "an AVIF image");
    check_load_fails("d.png", "II*\0\x08\0\0\0", 8, MOOD_EUNSUPPORTED, "a TIFF image");
    /* a 4 x 2 24-bit BMP: rows of 12 bytes from offset 54 */
    bmp[10] = 54, bmp[14] = 40, bmp[18] = 4, bmp[22] = 2, bmp[26] = 1, bmp[28] = 24;
    for (size_t i = 54; i < sizeof bmp; i++)
        bmp[i] = (uint8_t)(40 + i);
    MOOD_CHECK(write_file(scratch_path("whole.bmp"), bmp, sizeof bmp) == 0);
    MOOD_CHECK_OK(mood_image_load(&img, scratch_path("whole.bmp")));
    MOOD_CHECK(img && img->width == 4 && img->height == 2 && img->pixels[0] == 40 + 54 + 12 + 2);
    mood_image_free(img);
    check_load_fails("cut.bmp", bmp, sizeof bmp - 5, MOOD_EFORMAT, "cut short");
    /* JPEG APP1 "Exif": II, 42, IFD0 at 8, one entry: 0x0112, type, count 1, value 6 */
    {
        static const uint8_t head[] = {0xFF, 0xD8, 0xFF, 0xE1, 0,   36,  'E',  'x',
                                       'i',  'f',  0,    0,    'I', 'I', 42,   0,
                                       8,    0,    0,    0,    1,   0,   0x12, 0x01};
        const int types[] = {3, 4, 5}, want[] = {6, 6, 1}; /* SHORT, LONG; RATIONAL: none */
        for (int k = 0; k < 3; k++) {
            memset(exif, 0, sizeof exif);
            memcpy(exif, head, sizeof head);
            exif[24] = (uint8_t)types[k];
            exif[26] = 1; /* count */
            exif[30] = 6; /* the value's first byte (little-endian) */
            exif[38] = 0xFF, exif[39] = 0xD9;
            MOOD_CHECK_MSG(mood__exif_orientation(exif, sizeof exif) == want[k], "type %d: %d",
                           types[k], mood__exif_orientation(exif, sizeof exif));
        }
    }
}

/* Failed writes leave nothing: a missing directory, a read-only one, a full disk. */
static void test_failed_writes(void)
{
    static const char *const keys[] = {"parameters"};
    static const char *const values[] = {"x"};
    const char *ro = fresh_dir("readonly"), *full = fresh_dir("full");
    char path[1024];
    mood_image *img = pattern(64, 64, 3);
    struct rlimit old, small;
    int rc;
    snprintf(path, sizeof path, "%s/no/such/dir/out.png", scratch_dir());
    rc = mood_image_write_png(path, img, keys, values, 1);
    MOOD_CHECK_MSG(rc == MOOD_ENOTFOUND && strstr(mood_error_last(), "out.png"), "%d %s", rc,
                   mood_error_last());

    chmod(ro, 0555);
    snprintf(path, sizeof path, "%s/out.png", ro);
    if (access(ro, W_OK) == 0) {
        printf("     (running as root: the read-only directory is writable; skipped)\n");
    } else {
        rc = mood_image_write_png(path, img, keys, values, 1);
        MOOD_CHECK_MSG(rc == MOOD_EIO && strstr(mood_error_last(), "out.png"), "%d %s", rc,
                       mood_error_last());
        MOOD_CHECK(count_entries(ro) == 0);
    }
    chmod(ro, 0755);

    /* A full disk, as the file size limit gives it (EFBIG): 64x64 noise compresses poorly. */
    snprintf(path, sizeof path, "%s/out.png", full);
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    small = old;
    small.rlim_cur = 2000;
    MOOD_CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
    rc = mood_image_write_png(path, img, keys, values, 1);
    setrlimit(RLIMIT_FSIZE, &old);
    MOOD_CHECK_MSG(rc == MOOD_EIO && strstr(mood_error_last(), "out.png"), "%d %s", rc,
                   mood_error_last());
    MOOD_CHECK_MSG(count_entries(full) == 0, "%d files left", count_entries(full));
    mood_image_free(img);
}

static void test_bad_arguments(void)
{
    static const char *const bad_keys[] = {"",
                                           " lead",
                                           "trail ",
                                           "dou  ble",
                                           "tab\tkey",
                                           "ключ",
                                           "0123456789012345678901234567890123456789"
                                           "0123456789012345678901234567890123456789"};
    const char *dir = fresh_dir("bad"), *values[] = {"v"};
    char path[1024];
    mood_image *img = pattern(2, 2, 3);
    snprintf(path, sizeof path, "%s/x.png", dir);
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++)
        MOOD_CHECK_MSG(mood_image_write_png(path, img, &bad_keys[i], values, 1) == MOOD_EINVAL,
                       "key [%s]", bad_keys[i]);
    {
        const char *k[] = {"parameters"}, *v[] = {"bad \xff utf-8"};
        MOOD_CHECK(mood_image_write_png(path, img, k, v, 1) == MOOD_EINVAL);
    }
    MOOD_CHECK(count_entries(dir) == 0);
    mood_image_free(img);
    MOOD_CHECK(mood_image_new(&img, 0, 5, 3) == MOOD_EINVAL);
    MOOD_CHECK(mood_image_new(&img, 5, 5, 2) == MOOD_EINVAL);
    MOOD_CHECK(mood_image_new(&img, 65536, 65536, 3) == MOOD_EINVAL);
    MOOD_CHECK(!img);
    mood_image_free(NULL);
}

/* Every allocation in write, read and load can fail; errors are clean and leave no file. */
static void test_alloc_failures(void)
{
    static const char *const keys[] = {"parameters", "workflow"};
    static const char *const values[] = {"Steps: 20, Seed: 1", "日本 text"};
    const char *dir = fresh_dir("alloc");
    char path[1024];
    mood_image *img = pattern(9, 9, 4);
    int done = 0;
    snprintf(path, sizeof path, "%s/a.png", dir);
    for (long k = 1; k < 500 && !done; k++) {
        int rc;
        mood__alloc_fail_at(k);
        rc = mood_image_write_png(path, img, keys, values, 2);
        mood__alloc_fail_at(0);
        done = rc == 0;
        if (!done)
            MOOD_CHECK_MSG(rc == MOOD_ENOMEM && count_entries(dir) == 0, "write at %ld: %d", k, rc);
    }
    MOOD_CHECK(done);
    done = 0;
    for (long k = 1; k < 500 && !done; k++) {
        char *value = NULL;
        mood_image *back = NULL;
        int rc, rc2;
        mood__alloc_fail_at(k);
        rc = mood_image_read_png_text(&value, path, "workflow");
        mood__alloc_fail_at(k);
        rc2 = mood_image_load(&back, path);
        mood__alloc_fail_at(0);
        done = rc == 0 && rc2 == 0;
        MOOD_CHECK_MSG((rc == 0 || rc == MOOD_ENOMEM) && (rc2 == 0 || rc2 == MOOD_ENOMEM),
                       "read at %ld: %d %d %s", k, rc, rc2, mood_error_last());
        MOOD_CHECK(!rc || !value);
        mood_image_free_string(value);
        mood_image_free(back);
    }
    MOOD_CHECK(done);
    mood_image_free(img);
}

MOOD_TEST_MAIN(MOOD_T(test_float_edges), MOOD_T(test_png_text_round_trip),
               MOOD_T(test_pillow_texts), MOOD_T(test_a1111_parameters), MOOD_T(test_decode),
               MOOD_T(test_grid), MOOD_T(test_corrupt_files),
               MOOD_T(test_other_formats_and_short_files), MOOD_T(test_failed_writes),
               MOOD_T(test_bad_arguments), MOOD_T(test_alloc_failures))
