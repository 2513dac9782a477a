/*
 * test_board.c: the mood board (mood_board_load) against the references
 * tools/make_fixtures_train.py wrote with Pillow and kohya sd-scripts (tests/fixtures/train/):
 * decoding incl. WebP and EXIF orientation, alpha laid over white, kohya's buckets, resize and
 * centre crop against Pillow, sidecar and template captions, the trigger word as whole words,
 * a picture given twice, and the one error that names every image that cannot be read.
 * (Training on a board: test_train.c.)
 */
#include <sys/stat.h>

#include "harness.h"
#include "mood/image.h"
#include "mood/train.h"
#include "train/train_internal.h"

/* The case settings of tests/fixtures/train/cases.json. */
static cJSON *cases(void)
{
    static cJSON *c;
    if (!c)
        c = load_json(fixture("train/cases.json"));
    return c;
}

/* The largest difference over the first `channels` channels; *mean the mean difference. With
 * `edge` > 0, pixels within `edge` of the top/bottom rows (the resized image's border, where
 * stb_image_resize clamps and Pillow renormalises the filter) are left out of the maximum. */
static int pixel_diff(const uint8_t *a, const mood_image *ref, int channels, int edge, double *mean)
{
    int worst = 0;
    double sum = 0;
    for (int y = 0; y < ref->height; y++)
        for (int x = 0; x < ref->width; x++)
            for (int c = 0; c < channels; c++) {
                size_t i = (size_t)y * ref->width + x;
                int d = abs((int)a[i * channels + c] - (int)ref->pixels[i * ref->channels + c]);
                if (y >= edge && y < ref->height - edge)
                    worst = d > worst ? d : worst;
                sum += d;
            }
    *mean = sum / ((double)ref->width * ref->height * channels);
    return worst;
}

static int max_pixel_diff(const uint8_t *a, const mood_image *ref, int channels, double *mean)
{
    return pixel_diff(a, ref, channels, 0, mean);
}

/* Centres of the 8x8 colour cells (decoders differ a little at cell edges). */
static void compare_cells(const mood_image *img, const mood_image *ref, int o)
{
    for (int y = 4; y < ref->height; y += 8)
        for (int x = 4; x < ref->width; x += 8)
            for (int c = 0; c < 3; c++) {
                int d = abs(img->pixels[((size_t)y * img->width + x) * img->channels + c] -
                            ref->pixels[((size_t)y * ref->width + x) * ref->channels + c]);
                MOOD_CHECK_MSG(d <= 8, "orientation %d: pixel (%d, %d) off by %d", o, x, y, d);
            }
}

static void test_webp_and_exif(void)
{
    static const char *const pairs[][2] = {{"train/exif/o6.png", "train/exif/o6png_upright.png"},
                                           {"train/exif/o8.webp", "train/exif/o8webp_upright.png"}};
    mood_image *img = NULL, *ref = NULL;
    double mean;
    MOOD_CHECK_OK(mood_image_load(&img, fixture("train/board/c.webp")));
    MOOD_CHECK_OK(mood_image_load(&ref, fixture("train/ref/c_rgba.png")));
    if (img && ref) {
        MOOD_CHECK(img->channels == 4 && img->width == 30 && img->height == 20);
        MOOD_CHECK(max_pixel_diff(img->pixels, ref, 4, &mean) == 0);
    }
    mood_image_free(img), mood_image_free(ref);
    for (int o = 1; o <= 8; o++) {
        char p[64], r[64];
        snprintf(p, sizeof p, "train/exif/o%d.jpg", o);
        snprintf(r, sizeof r, "train/exif/o%d_upright.png", o);
        img = ref = NULL;
        MOOD_CHECK_OK(mood_image_load(&img, fixture(p)));
        MOOD_CHECK_OK(mood_image_load(&ref, fixture(r)));
        if (img && ref) {
            MOOD_CHECK_MSG(img->width == ref->width && img->height == ref->height,
                           "orientation %d: %dx%d, Pillow %dx%d", o, img->width, img->height,
                           ref->width, ref->height);
            if (img->width == ref->width && img->height == ref->height)
                compare_cells(img, ref, o);
        }
        mood_image_free(img), mood_image_free(ref);
    }
    for (int k = 0; k < 2; k++) {
        img = ref = NULL;
        MOOD_CHECK_OK(mood_image_load(&img, fixture(pairs[k][0])));
        MOOD_CHECK_OK(mood_image_load(&ref, fixture(pairs[k][1])));
        if (img && ref) {
            MOOD_CHECK(img->width == ref->width && img->height == ref->height);
            if (img->width == ref->width && img->height == ref->height)
                MOOD_CHECK_MSG(max_pixel_diff(img->pixels, ref, 3, &mean) == 0, "%s", pairs[k][0]);
        }
        mood_image_free(img), mood_image_free(ref);
    }
}

static int item_int(const cJSON *arr, int i)
{
    const cJSON *v = cJSON_GetArrayItem(arr, i);
    return v ? v->valueint : -1;
}

static void test_buckets(void)
{
    const cJSON *cfg, *sel, *list = cJSON_GetObjectItemCaseSensitive(cases(), "buckets");
    MOOD_CHECK(list != NULL);
    cJSON_ArrayForEach(cfg, list)
    {
        mood_board_options o;
        mood_board_options_init(&o);
        o.buckets = 1;
        o.resolution = (int)json_num(cfg, "resolution");
        o.min_bucket = (int)json_num(cfg, "min");
        o.max_bucket = (int)json_num(cfg, "max");
        o.bucket_step = (int)json_num(cfg, "step");
        cJSON_ArrayForEach(sel, cJSON_GetObjectItemCaseSensitive(cfg, "select"))
        {
            int bw, bh, rw, rh, w = (int)json_num(sel, "w"), h = (int)json_num(sel, "h");
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(sel, "bucket"),
                        *r = cJSON_GetObjectItemCaseSensitive(sel, "resized");
            mood__board_bucket(&o, w, h, &bw, &bh, &rw, &rh);
            MOOD_CHECK_MSG(bw == item_int(b, 0) && bh == item_int(b, 1) && rw == item_int(r, 0) &&
                               rh == item_int(r, 1),
                           "res %d, %dx%d: bucket %dx%d resized %dx%d (kohya %dx%d, %dx%d)",
                           o.resolution, w, h, bw, bh, rw, rh, item_int(b, 0), item_int(b, 1),
                           item_int(r, 0), item_int(r, 1));
        }
    }
}

static void check_board_image(const cJSON *c, int worst_all[2])
{
    mood_board_options o;
    mood_board *b = NULL;
    mood_image *ref = NULL;
    const mood_board_item *it;
    char path[128];
    const cJSON *bk = cJSON_GetObjectItemCaseSensitive(c, "buckets");
    const char *paths[1];
    double mean;
    mood_board_options_init(&o);
    o.resolution = (int)json_num(c, "res");
    if (cJSON_IsArray(bk)) {
        o.buckets = 1;
        o.min_bucket = item_int(bk, 0);
        o.max_bucket = item_int(bk, 1);
        o.bucket_step = item_int(bk, 2);
    }
    snprintf(path, sizeof path, "train/board/%s", json_str(c, "file"));
    paths[0] = fixture(path);
    MOOD_CHECK_OK(mood_board_load(&b, paths, 1, &o));
    snprintf(path, sizeof path, "train/%s", json_str(c, "ref"));
    MOOD_CHECK_OK(mood_image_load(&ref, fixture(path)));
    snprintf(path, sizeof path, "train/board/%s", json_str(c, "file"));
    it = mood_board_item_at(b, 0);
    if (it && ref) {
        MOOD_CHECK(it->width == ref->width && it->height == ref->height);
        if (it->width == ref->width && it->height == ref->height) {
            /* inside: within a level or two; the outermost rows (filter overhang at the
             * image's border, sharp content): a few levels */
            int d = pixel_diff(it->rgb, ref, 3, 1, &mean),
                e = max_pixel_diff(it->rgb, ref, 3, &mean);
            worst_all[0] = d > worst_all[0] ? d : worst_all[0];
            worst_all[1] = e > worst_all[1] ? e : worst_all[1];
            MOOD_CHECK_MSG(d <= 2 && e <= 8 && mean <= 0.25,
                           "%s at %d%s: max diff %d inside, %d at the border, mean %.3f vs Pillow",
                           path, o.resolution, o.buckets ? " (buckets)" : "", d, e, mean);
        }
    }
    mood_image_free(ref);
    mood_board_free(b);
}

static void test_board_pixels(void)
{
    const cJSON *c, *list = cJSON_GetObjectItemCaseSensitive(cases(), "images");
    int worst[2] = {0, 0};
    MOOD_CHECK(list != NULL);
    cJSON_ArrayForEach(c, list) check_board_image(c, worst);
    printf("     board vs Pillow: max pixel difference %d (%d on the border rows)\n", worst[0],
           worst[1]);
}

/* The trigger counts as learnt when a caption holds it as whole words, in any case; a picture
 * that is on the board twice is said. */
static void test_board_trigger_words(void)
{
    const char *dir = scratch_fresh_dir("trigger-board");
    char img[1024], txt[1024];
    size_t n = 0;
    unsigned char *d = read_file(fixture("train/board/a.png"), &n);
    mood_board_options o;
    mood_board *b = NULL;
    snprintf(img, sizeof img, "%s/a.png", dir);
    snprintf(txt, sizeof txt, "%s/a.txt", dir);
    MOOD_CHECK(d && write_file(img, d, n) == 0);
    MOOD_CHECK(write_file(txt, "Red apple, inkwash-style\n", 25) == 0);
    snprintf(img, sizeof img, "%s/copy.png", dir);
    MOOD_CHECK(d && write_file(img, d, n) == 0);
    snprintf(txt, sizeof txt, "%s/copy.txt", dir);
    MOOD_CHECK(write_file(txt, "red apple\n", 10) == 0);
    free(d);
    mood_board_options_init(&o);
    o.resolution = 64;
    const char *paths[1] = {dir};
    harness_log_start();
    MOOD_CHECK_OK(mood_board_load(&b, paths, 1, &o));
    harness_log_stop();
    MOOD_CHECK_MSG(strstr(harness_logged, "copy.png is the same picture as") &&
                       strstr(harness_logged, "a.png"),
                   "%s", harness_logged);
    static const struct {
        const char *trigger;
        int used;
    } cases[] = {{"apple", 1}, {"APPLE", 1}, {"red apple", 1}, {"inkwash", 1}, {"inkwash-style", 1},
                 {"app", 0},   {"pple", 0},  {"style", 1},     {"ink", 0},     {"", 0}};
    for (size_t i = 0; b && i < sizeof cases / sizeof cases[0]; i++)
        MOOD_CHECK_MSG(mood_board_uses_trigger(b, cases[i].trigger) == cases[i].used, "'%s'",
                       cases[i].trigger);
    mood_board_free(b);
}

static void test_board_folder(void)
{
    mood_board_options o;
    mood_board *b = NULL;
    const char *paths[1] = {fixture("train/board")};
    mood_board_options_init(&o);
    o.resolution = 64;
    o.trigger = "sks";
    MOOD_CHECK_OK(mood_board_load(&b, paths, 1, &o));
    MOOD_CHECK(mood_board_count(b) == 4);
    if (mood_board_count(b) == 4) {
        const mood_board_item *a = mood_board_item_at(b, 0), *cw = mood_board_item_at(b, 1);
        float *t0 = malloc(3 * 64 * 64 * sizeof *t0), *t1 = malloc(3 * 64 * 64 * sizeof *t1);
        MOOD_CHECK(strstr(a->path, "a.png") && strstr(cw->path, "c.webp"));
        MOOD_CHECK(strstr(mood_board_item_at(b, 3)->path, "e.png") != NULL);
        MOOD_CHECK_MSG(strcmp(a->caption, "red fox, sks style") == 0 && a->caption_from_file,
                       "caption \"%s\"", a->caption);
        MOOD_CHECK_MSG(strcmp(cw->caption, "sks, a picture") == 0 && !cw->caption_from_file,
                       "caption \"%s\"", cw->caption);
        MOOD_CHECK(a->src_width == 61 && a->src_height == 37 && a->width == 64);
        mood_board_item_tensor(t0, a, 0);
        mood_board_item_tensor(t1, a, 1);
        MOOD_CHECK(t0[0] == ((float)a->rgb[0] / 255.0f - 0.5f) / 0.5f);
        MOOD_CHECK(t0[64 * 64 + 5] == ((float)a->rgb[5 * 3 + 1] / 255.0f - 0.5f) / 0.5f);
        MOOD_CHECK(t1[2 * 64 * 64 + 10 * 64 + 3] == t0[2 * 64 * 64 + 10 * 64 + 60]);
        free(t0), free(t1);
    }
    mood_board_free(b);
    /* without a trigger the template loses its ", " */
    o.trigger = NULL;
    paths[0] = fixture("train/board/d.bmp");
    MOOD_CHECK_OK(mood_board_load(&b, paths, 1, &o));
    if (b)
        MOOD_CHECK(strcmp(mood_board_item_at(b, 0)->caption, "a picture") == 0);
    mood_board_free(b);
    b = NULL;
    o.resolution = 100;
    MOOD_CHECK(mood_board_load(&b, paths, 1, &o) == MOOD_EINVAL && !b);
}

static void test_board_errors(void)
{
    mood_board_options o;
    mood_board *b = NULL;
    const char *bad[1] = {fixture("train/bad")};
    const char *two[2] = {fixture("train/board/a.png"), scratch_path("missing.png")};
    const char *msg;
    mood_board_options_init(&o);
    o.resolution = 64;
    MOOD_CHECK(mood_board_load(&b, bad, 1, &o) == MOOD_EFORMAT && !b);
    msg = mood_error_last();
    MOOD_CHECK_MSG(strstr(msg, "2 of 4") && strstr(msg, "broken.png") && strstr(msg, "text.jpg") &&
                       !strstr(msg, "good1"),
                   "message: %s", msg);
    MOOD_CHECK(mood_board_load(&b, two, 2, &o) == MOOD_ENOTFOUND && !b);
    MOOD_CHECK(strstr(mood_error_last(), "missing.png") != NULL);
    MOOD_CHECK(mkdir(scratch_path("empty"), 0755) == 0);
    bad[0] = scratch_path("empty");
    MOOD_CHECK(mood_board_load(&b, bad, 1, &o) == MOOD_EINVAL && !b);
}

/* Every allocation failure while loading a board or training (with checkpoints) ends in
 * MOOD_ENOMEM with everything released (ASan builds check the "released"). */
MOOD_TEST_MAIN(MOOD_T(test_webp_and_exif), MOOD_T(test_buckets), MOOD_T(test_board_pixels),
               MOOD_T(test_board_folder), MOOD_T(test_board_trigger_words),
               MOOD_T(test_board_errors))
