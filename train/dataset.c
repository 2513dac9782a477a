/*
 * dataset.c: a mood board (folders and image files) turned into training images and captions,
 * the way kohya sd-scripts prepares a DreamBooth-style dataset with cached latents:
 *
 *   - files: each folder's PNG, JPEG, WebP and BMP files in name order (kohya's glob of image
 *     extensions), or the files given; every one is decoded before anything else, and all that
 *     fail are reported in one error (a board of five images should not need five runs to fix);
 *   - kohya's DreamBooth layout: a folder with no images of its own whose subfolders are named
 *     N_name (train_data_dir/10_mystyle/) gives the images of those subfolders, each N times per
 *     epoch (kohya's num_repeats); other subfolders are skipped with a warning, as kohya skips
 *     them (extract_dreambooth_params), and so is a folder with 0 repeats; an image there
 *     without a caption file is captioned with the folder's name part, as kohya does;
 *   - pixels: upright by EXIF (mood_image_load), alpha composited over white (a transparent PNG
 *     would otherwise train on whatever colour its invisible pixels hold), then resized with an
 *     antialiased bilinear filter (stb_image_resize's triangle filter, what torchvision's
 *     Resize(BILINEAR) does on PIL images in diffusers' scripts; kohya uses cv2 INTER_AREA) to
 *     the size kohya's BucketManager.select_bucket picks and centre-cropped as kohya's
 *     trim_and_resize_if_required does (random_crop off, which caching latents requires); kohya's
 *     default bucket sizes, made for SD's 512, follow the resolution below 256
 *     (mood__board_options_resolve);
 *   - captions: the first line of NAME.txt (else NAME.caption, kohya's default
 *     caption_extension) beside the image, else the template with the trigger word.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/args.h"
#include "engine/unicode_tables.h"
#include "mood/hash.h"
#include "mood/image.h"
#include "train/train_internal.h"

#define DEFAULT_TEMPLATE "{trigger}, a picture"
#define MAX_BUCKETS      2048
#define MAX_COVER        16    /* the most a board image's resize may exceed its crop, in area */
#define MAX_REPEATS      10000 /* of a kohya N_name folder: "20240101_trip" is a date, not N */
/* kohya's bucket defaults (min_bucket_reso, max_bucket_reso, bucket_reso_steps) */
#define KOHYA_MIN_BUCKET  256
#define KOHYA_MAX_BUCKET  1024
#define KOHYA_BUCKET_STEP 64

struct mood_board {
    mood_board_item *items;
    int *repeats; /* per item: times per epoch */
    size_t n;
};

void mood_board_options_init(mood_board_options *o)
{
    memset(o, 0, sizeof *o);
    o->resolution = 512;
    o->min_bucket = KOHYA_MIN_BUCKET;
    o->max_bucket = KOHYA_MAX_BUCKET;
    o->bucket_step = KOHYA_BUCKET_STEP;
    o->caption_template = DEFAULT_TEMPLATE;
    o->caption_ext = ".txt";
}

/* kohya's default bucket sizes hold no resolution below their minimum of 256, which a small
 * model trains at (mood-tiny: 64). There the defaults scale with the resolution as they relate to
 * SD's 512 (half to twice it), in steps of a quarter of it: at 64, 32 to 128 in steps of 16, the
 * granularity of mood-tiny's latents (4-pixel patches, two downsamplings in the UNet) and a
 * multiple of SD's VAE factor 8; at 128, 64 to 256 in steps of 32. Sizes a caller chose are kept.
 */
void mood__board_options_resolve(mood_board_options *o)
{
    if (o->buckets && o->resolution >= 64 && o->resolution < KOHYA_MIN_BUCKET &&
        o->min_bucket == KOHYA_MIN_BUCKET && o->max_bucket == KOHYA_MAX_BUCKET &&
        o->bucket_step == KOHYA_BUCKET_STEP) {
        o->min_bucket = o->resolution / 2;
        o->max_bucket = o->resolution * 2;
        o->bucket_step = o->resolution / 4;
    }
}

int mood__board_options_check(const mood_board_options *o)
{
    if (o->resolution < 64 || o->resolution > 8192 || o->resolution % 64 != 0)
        return mood_error_set(MOOD_EINVAL,
                              "training resolution must be a multiple of 64 in "
                              "64..8192, not %d",
                              o->resolution);
    if (o->buckets &&
        (o->bucket_step < 8 || o->bucket_step % 8 != 0 || o->min_bucket < o->bucket_step ||
         o->min_bucket > o->max_bucket || o->max_bucket > 8192 || o->resolution > o->max_bucket ||
         o->min_bucket % o->bucket_step != 0 || o->min_bucket > o->resolution))
        return mood_error_set(MOOD_EINVAL,
                              "bucket sizes: min %d, max %d, step %d do not fit resolution %d "
                              "(min <= resolution <= max, multiples of the step, step a "
                              "multiple of 8)",
                              o->min_bucket, o->max_bucket, o->bucket_step, o->resolution);
    if (o->buckets && 2 * ((o->max_bucket - o->min_bucket) / o->bucket_step + 1) + 1 > MAX_BUCKETS)
        return mood_error_set(MOOD_EINVAL, "bucket sizes: too many buckets (step %d)",
                              o->bucket_step);
    return 0;
}

/* ----- buckets (kohya library/model_util.py, train_util.py BucketManager) ------------------- */

/* make_bucket_resolutions(max_reso=(res, res), min_size, max_size, divisible), sorted. At most
 * `cap` pairs; returns the count. */
static size_t bucket_list(int (*out)[2], size_t cap, const mood_board_options *o)
{
    long area = (long)o->resolution * o->resolution, d = o->bucket_step;
    size_t n = 0;
    /* a Python set: insert unless present */
#define ADD(W, H)                                                                                  \
    do {                                                                                           \
        int w_ = (int)(W), h_ = (int)(H), dup_ = 0;                                                \
        for (size_t k_ = 0; k_ < n; k_++)                                                          \
            dup_ |= out[k_][0] == w_ && out[k_][1] == h_;                                          \
        if (!dup_ && n < cap)                                                                      \
            out[n][0] = w_, out[n][1] = h_, n++;                                                   \
    } while (0)
    long side = (long)floor(sqrt((double)area) / (double)d) * d;
    ADD(side, side);
    for (long w = o->min_bucket; w <= o->max_bucket; w += d) {
        long h = (area / w) / d * d;
        if (h > o->max_bucket)
            h = o->max_bucket;
        if (h >= o->min_bucket) {
            ADD(w, h);
            ADD(h, w);
        }
    }
#undef ADD
    /* Python's sort of (w, h) tuples */
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && (out[j - 1][0] > out[j][0] ||
                                     (out[j - 1][0] == out[j][0] && out[j - 1][1] > out[j][1]));
             j--) {
            int t0 = out[j][0], t1 = out[j][1];
            out[j][0] = out[j - 1][0], out[j][1] = out[j - 1][1];
            out[j - 1][0] = t0, out[j - 1][1] = t1;
        }
    }
    return n;
}

int mood__board_bucket(const mood_board_options *o, int w, int h, int *bw, int *bh, int *rw,
                       int *rh)
{
    int list[MAX_BUCKETS][2];
    size_t n = 1;
    double ar = (double)w / h, best = INFINITY, scale;
    int pick = -1;
    if (o->buckets) {
        n = bucket_list(list, MAX_BUCKETS, o);
    } else {
        list[0][0] = list[0][1] = o->resolution;
    }
    /* select_bucket: an exact size match wins, else the first smallest aspect-ratio error */
    for (size_t i = 0; i < n && pick < 0; i++)
        if (list[i][0] == w && list[i][1] == h)
            pick = (int)i;
    if (pick < 0) {
        for (size_t i = 0; i < n; i++) {
            double e = fabs((double)list[i][0] / list[i][1] - ar);
            if (e < best) {
                best = e;
                pick = (int)i;
            }
        }
    }
    *bw = list[pick][0];
    *bh = list[pick][1];
    /* wider than the bucket: match heights; else widths (Python floats) */
    scale = ar > (double)*bw / *bh ? (double)*bh / h : (double)*bw / w;
    *rw = (int)(w * scale + 0.5);
    *rh = (int)(h * scale + 0.5);
    return 0;
}

/* ----- files ------------------------------------------------------------------------------ */

/* The files to load, each with its repeats per epoch; the subfolders skipped on the way. */
typedef struct path_list {
    char **p;
    int *rep;
    unsigned char *kohya; /* 1: from a kohya N_name folder, whose name part captions it */
    size_t n, cap, rep_cap, kohya_cap;
    char **skipped; /* "FOLDER/: why", for the warnings or the "no images" error */
    size_t n_skipped, skipped_cap;
} path_list;

/* kohya: the path is an image of a kohya N_name folder (repeats is its N). */
static int push_path(path_list *l, char *owned, int repeats, int kohya)
{
    if (!owned)
        return mood_error_nomem();
    if (mood_array_reserve(&l->p, &l->cap, l->n + 1, sizeof *l->p, 16) != 0 ||
        mood_array_reserve(&l->rep, &l->rep_cap, l->n + 1, sizeof *l->rep, 16) != 0 ||
        mood_array_reserve(&l->kohya, &l->kohya_cap, l->n + 1, sizeof *l->kohya, 16) != 0) {
        mood_free(owned);
        return mood_error_nomem();
    }
    l->rep[l->n] = repeats;
    l->kohya[l->n] = (unsigned char)(kohya != 0);
    l->p[l->n++] = owned;
    return 0;
}

static void path_list_dispose(path_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        mood_free(l->p[i]);
    mood_free(l->p);
    mood_free(l->rep);
    mood_free(l->kohya);
    for (size_t i = 0; i < l->n_skipped; i++)
        mood_free(l->skipped[i]);
    mood_free(l->skipped);
}

/* Records a folder ("DIR/: why") or a file ("FILE: why") left out, for the warnings. */
static int skip_entry(path_list *l, const char *dir, const char *slash, const char *why)
{
    size_t need = l->n_skipped + 1;
    mood_buf b;
    mood_buf_init(&b);
    if (mood_array_reserve(&l->skipped, &l->skipped_cap, need, sizeof *l->skipped, 8) != 0 ||
        mood_buf_printf(&b, "%s%s: %s", dir, slash, why) != 0) {
        mood_buf_dispose(&b);
        return mood_error_nomem();
    }
    l->skipped[l->n_skipped++] = mood_buf_detach(&b);
    return 0;
}

static int skip_folder(path_list *l, const char *dir, const char *why)
{
    return skip_entry(l, dir, "/", why);
}

static int has_ext(const char *name, const char *const *ext, size_t n)
{
    const char *dot = strrchr(name, '.');
    if (!dot || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(dot, ext[i]) == 0)
            return 1;
    return 0;
}

static int is_image_name(const char *name)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp"};
    return has_ext(name, ext, sizeof ext / sizeof ext[0]);
}

/* Pictures in formats mood does not decode: named when skipped, not passed over in silence. */
static int is_other_picture(const char *name)
{
    static const char *const ext[] = {".gif", ".tif", ".tiff", ".heic", ".heif", ".avif",
                                      ".jxl", ".psd", ".svg",  ".tga",  ".ico",  ".dng"};
    return has_ext(name, ext, sizeof ext / sizeof ext[0]);
}

/* Files that go with images but are none: captions, kohya's and tools' settings, the system's
 * (given among the images when a shell expands board/ *). */
static int is_companion(const char *path)
{
    static const char *const ext[] = {".txt", ".caption", ".json", ".toml", ".npz", ".db", ".ini"};
    return has_ext(mood_path_basename(path), ext, sizeof ext / sizeof ext[0]);
}

#define OTHER_PICTURE                                                                              \
    "a picture in a format mood does not read (it reads PNG, JPEG, WebP, BMP): convert it"

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The repeats of a kohya DreamBooth folder named N_name (kohya's extract_dreambooth_params takes
 * what comes before the first "_" as N), -1 for any other name; MAX_REPEATS + 1 for more. */
static long folder_repeats(const char *name)
{
    long n = 0;
    const char *p = name;
    for (; isdigit((unsigned char)*p); p++)
        n = n > MAX_REPEATS ? n : n * 10 + (*p - '0');
    return p > name && *p == '_' ? n : -1;
}

/* The images directly in dir (regular files with an image extension), in name order, with
 * `repeats`; the names of its subfolders (not hidden ones) into subdirs when not NULL. */
static int list_folder(path_list *l, const char *dir, int repeats, path_list *subdirs)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t first = l->n;
    int err = 0;
    if (!d)
        return mood_error_set(errno == ENOENT ? MOOD_ENOTFOUND : MOOD_EIO, "%s: cannot list: %s",
                              dir, strerror(errno));
    while (!err && (e = readdir(d)) != NULL) {
        mood_buf b;
        struct stat st;
        int image = is_image_name(e->d_name), other = is_other_picture(e->d_name);
        if (!image && !other && (!subdirs || e->d_name[0] == '.'))
            continue;
        mood_buf_init(&b);
        if ((err = mood_buf_printf(&b, "%s/%s", dir, e->d_name)) != 0)
            break;
        if (stat(b.data, &st) != 0)
            st.st_mode = 0; /* gone since the listing, or a broken link: not taken */
        if (image && S_ISREG(st.st_mode))
            err = push_path(l, mood_buf_detach(&b), repeats, !subdirs); /* kohya's subfolder */
        else if (other && S_ISREG(st.st_mode))
            err = skip_entry(l, b.data, "", OTHER_PICTURE);
        else if (subdirs && S_ISDIR(st.st_mode))
            err = push_path(subdirs, mood_strdup(e->d_name), 1, 0);
        mood_buf_dispose(&b);
    }
    closedir(d);
    if (!err && l->n > first)
        qsort(l->p + first, l->n - first, sizeof *l->p, cmp_str);
    return err;
}

/* kohya's layout: the images of dir's N_name subfolders (in name order), N times each. */
static int add_kohya_folders(path_list *l, const char *dir, path_list *subdirs)
{
    int err = 0;
    qsort(subdirs->p, subdirs->n, sizeof *subdirs->p, cmp_str);
    for (size_t i = 0; i < subdirs->n && !err; i++) {
        long n = folder_repeats(subdirs->p[i]);
        size_t before = l->n;
        mood_buf sub;
        mood_buf_init(&sub);
        if ((err = mood_buf_printf(&sub, "%s/%s", dir, subdirs->p[i])) != 0)
            break;
        if (n < 0)
            err = skip_folder(
                l, sub.data,
                "not named as kohya's N_name folders are (N repeats per epoch, e.g. 10_mystyle)");
        else if (n == 0)
            err = skip_folder(l, sub.data, "0 repeats");
        else if (n > MAX_REPEATS)
            err = mood_error_set(MOOD_EINVAL,
                                 "%s/: %.*s repeats per epoch (kohya's N_name folder)? At most %d: "
                                 "rename the folder",
                                 sub.data, (int)strspn(subdirs->p[i], "0123456789"), subdirs->p[i],
                                 MAX_REPEATS);
        else if ((err = list_folder(l, sub.data, (int)n, NULL)) == 0 && l->n == before)
            err = skip_folder(l, sub.data, "no images (PNG, JPEG, WebP, BMP)");
        mood_buf_dispose(&sub);
    }
    return err;
}

/* A folder's images; with none of its own, those of its kohya N_name subfolders. */
/* A board folder given itself whose name is kohya's N_name (10_mystyle/): kohya reads such
 * folders inside the folder it is given, so its repeats and name are not used here; said. */
static void warn_if_repeat_folder(const char *dir)
{
    char base[256];
    size_t n = strlen(dir);
    const char *name;
    while (n > 1 && dir[n - 1] == '/')
        n--;
    for (name = dir + n; name > dir && name[-1] != '/';)
        name--;
    snprintf(base, sizeof base, "%.*s", (int)(dir + n - name), name);
    if (folder_repeats(base) >= 0)
        mood_log(MOOD_LOG_WARN,
                 "mood board: %.*s/ is named as kohya's repeat folders are, but given itself it "
                 "is read as a plain folder (each image once, captions from files or the "
                 "template); give the folder above it to use its repeats and name",
                 (int)n, dir);
}

static int add_folder(path_list *l, const char *dir)
{
    path_list subdirs = {0};
    size_t before = l->n;
    int err = list_folder(l, dir, 1, &subdirs), own = l->n > before;
    if (!err && !own && subdirs.n)
        err = add_kohya_folders(l, dir, &subdirs);
    if (!err && own)
        warn_if_repeat_folder(dir);
    for (size_t i = 0; !err && own && i < subdirs.n; i++) {
        if (folder_repeats(subdirs.p[i]) >= 0) { /* a layout half one way, half the other */
            mood_log(MOOD_LOG_WARN,
                     "mood board: %s/ has images of its own, so its kohya N_name subfolders "
                     "(%s/, ...) are not read; give them as boards of their own",
                     dir, subdirs.p[i]);
            break;
        }
    }
    path_list_dispose(&subdirs);
    return err;
}

/* Whether paths[i] (a caption or settings file) belongs to another path given, an image of the
 * same name: a shell glob (--board DIR/STAR) names both, and the caption is read beside its
 * image. */
static int companion_of_given(const char *const *paths, size_t n, size_t i)
{
    const char *dot = strrchr(paths[i], '.'), *slash = strrchr(paths[i], '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - paths[i]) : strlen(paths[i]);
    for (size_t j = 0; j < n; j++)
        if (j != i && paths[j] && strncmp(paths[j], paths[i], stem) == 0 && paths[j][stem] == '.' &&
            !strchr(paths[j] + stem + 1, '/') && !is_companion(paths[j]))
            return 1;
    return 0;
}

static int collect(path_list *l, const char *const *paths, size_t n)
{
    int err = 0;
    for (size_t i = 0; i < n && !err; i++) {
        struct stat st;
        if (!paths[i])
            return mood_error_set(MOOD_EINVAL, "mood board: NULL path");
        if (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode))
            err = add_folder(l, paths[i]);
        else if (is_companion(paths[i]) && companion_of_given(paths, n, i))
            continue; /* read as its image's caption */
        else if (is_companion(paths[i]))
            err = skip_entry(l, paths[i], "", "not an image (a caption or settings file)");
        else /* a missing file is reported with the undecodable ones */
            err = push_path(l, mood_strdup(paths[i]), 1, 0);
    }
    return err;
}

/* ----- pixels ----------------------------------------------------------------------------- */

/* RGB over white: c' = round((c a + 255 (255 - a)) / 255). */
uint8_t *mood__board_flatten(const mood_image *img)
{
    size_t n = (size_t)img->width * img->height;
    uint8_t *rgb = mood_malloc(n * 3);
    if (!rgb)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = img->pixels + i * img->channels;
        unsigned a = img->channels == 4 ? s[3] : 255;
        for (int c = 0; c < 3; c++)
            rgb[3 * i + c] = (uint8_t)((s[c] * a + 255u * (255u - a) + 127u) / 255u);
    }
    return rgb;
}

/* mood_gen_init_image (mood/gen.h): an img2img start image is prepared as a board image is
 * (over white, the same resize), then normalised as diffusers' VaeImageProcessor does. */
int mood_gen_init_image(float **out, const mood_image *img, int width, int height)
{
    uint8_t *rgb = NULL, *sized = NULL;
    const uint8_t *src;
    size_t hw = (size_t)width * height;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(img);
    if (width < 1 || height < 1 || width > 4096 || height > 4096)
        return mood_error_set(MOOD_EINVAL, "init image size %dx%d: 1 to 4096 each", width, height);
    if (!(rgb = mood__board_flatten(img)))
        return mood_error_nomem();
    src = rgb;
    if (img->width != width || img->height != height) {
        if (!(sized = mood_malloc(hw * 3)))
            err = mood_error_nomem();
        else if (!(err = mood__resize_rgb(sized, width, height, rgb, img->width, img->height)))
            src = sized;
    }
    if (!err && !(*out = malloc(hw * 3 * sizeof **out)))
        err = mood_error_nomem();
    for (size_t i = 0; !err && i < hw; i++)
        for (int c = 0; c < 3; c++)
            (*out)[c * hw + i] = 2.0f * ((float)src[3 * i + c] / 255.0f) - 1.0f;
    mood_free(sized);
    mood_free(rgb);
    return err;
}

/* mood_gen_mask (mood/gen.h): Pillow's "L" of each pixel (ITU-R 601-2 luma in 16-bit fixed
 * point, alpha ignored), as RGB for the board's resize, then binarised. */
int mood_gen_mask(float **out, const mood_image *img, int width, int height)
{
    size_t n = (size_t)img->width * img->height, hw = (size_t)width * height;
    uint8_t *gray, *sized = NULL;
    const uint8_t *src;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(img);
    if (width < 1 || height < 1 || width > 4096 || height > 4096)
        return mood_error_set(MOOD_EINVAL, "mask size %dx%d: 1 to 4096 each", width, height);
    if (!(gray = mood_malloc(n * 3)))
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = img->pixels + i * img->channels;
        uint8_t l = (uint8_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
        gray[3 * i] = gray[3 * i + 1] = gray[3 * i + 2] = l;
    }
    src = gray;
    if (img->width != width || img->height != height) {
        if (!(sized = mood_malloc(hw * 3)))
            err = mood_error_nomem();
        else if (!(err = mood__resize_rgb(sized, width, height, gray, img->width, img->height)))
            src = sized;
    }
    if (!err && !(*out = malloc(hw * sizeof **out)))
        err = mood_error_nomem();
    for (size_t i = 0; !err && i < hw; i++)
        (*out)[i] = (float)src[3 * i] / 255.0f < 0.5f ? 0.0f : 1.0f;
    mood_free(sized);
    mood_free(gray);
    return err;
}

/* Resize to (rw, rh), then take the centre (bw, bh), as kohya's trim_and_resize_if_required. */
static int fit(mood_board_item *it, const uint8_t *rgb, int w, int h, int rw, int rh)
{
    uint8_t *tmp = NULL, *out;
    const uint8_t *src = rgb;
    int err = 0, x0 = (rw - it->width) / 2, y0 = (rh - it->height) / 2;
    if (rw != w || rh != h) {
        if (!(tmp = mood_malloc((size_t)rw * rh * 3)))
            return mood_error_nomem();
        if ((err = mood__resize_rgb(tmp, rw, rh, rgb, w, h)) != 0) {
            mood_free(tmp);
            return err;
        }
        src = tmp;
    }
    if (!(out = mood_malloc((size_t)it->width * it->height * 3))) {
        mood_free(tmp);
        return mood_error_nomem();
    }
    for (int y = 0; y < it->height; y++)
        memcpy(out + (size_t)y * it->width * 3, src + ((size_t)(y + y0) * rw + x0) * 3,
               (size_t)it->width * 3);
    it->rgb = out;
    mood_free(tmp);
    return 0;
}

/* ----- captions --------------------------------------------------------------------------- */

static char *trimmed(const char *s, size_t n)
{
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    return mood_strndup(s, n);
}

/* The first line of the sidecar file, trimmed, as kohya's read_caption takes lines[0].strip():
 * a blank first line is the empty caption (a style trained without words), not the template or
 * a later line; an empty file too (kohya stops on one: "caption file is empty"). NULL (no
 * error) when there is no such file. */
static int sidecar_caption(char **out, const char *image, const char *ext)
{
    const char *dot = strrchr(image, '.'), *slash = strrchr(image, '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - image) : strlen(image);
    mood_buf path;
    mood_map m = {0};
    int err;
    *out = NULL;
    mood_buf_init(&path);
    if ((err = mood_buf_printf(&path, "%.*s%s", (int)stem, image, ext)) != 0)
        return err;
    err = mood_map_file(&m, path.data);
    if (err == MOOD_ENOTFOUND) {
        mood_error_clear();
        err = 0;
    } else if (!err) {
        const char *p = m.data ? (const char *)m.data : "", *end = p + m.size; /* empty: NULL */
        if (m.size >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)                  /* UTF-8 BOM */
            p += 3;
        if (memchr(p, '\0', (size_t)(end - p))) /* UTF-16 without its BOM: one letter each */
            err = mood_error_set(MOOD_EINVAL,
                                 "caption file %s holds NUL bytes (UTF-16 text?): save it as "
                                 "UTF-8",
                                 path.data);
        if (!err) {
            const char *nl = p; /* a line ends at \n, \r\n or (old Mac) \r */
            while (nl < end && *nl != '\n' && *nl != '\r')
                nl++;
            char *line = trimmed(p, (size_t)(nl - p));
            if (!line)
                err = mood_error_nomem();
            else if (line[0] && mood__utf8_validate(line, strlen(line)) != 0) {
                /* kohya reads captions as UTF-8 too; a Latin-1 file's bytes name no word */
                err = mood_error_set(
                    MOOD_EINVAL, "caption file %s is not UTF-8 text: save it as UTF-8", path.data);
                mood_free(line);
            } else
                *out = line;
        }
        mood_unmap(&m);
    }
    mood_buf_dispose(&path);
    return err;
}

/* The template with every "{trigger}" replaced; leading/trailing ", " left by an empty trigger
 * removed. */
static char *template_caption(const mood_board_options *o)
{
    const char *t = o->caption_template ? o->caption_template : DEFAULT_TEMPLATE;
    const char *trig = o->trigger ? o->trigger : "";
    mood_buf b;
    char *s, *r;
    size_t n;
    mood_buf_init(&b);
    for (const char *p = t; *p;) {
        if (strncmp(p, "{trigger}", 9) == 0) {
            if (mood_buf_puts(&b, trig) != 0)
                goto fail;
            p += 9;
        } else if (mood_buf_append(&b, p++, 1) != 0) {
            goto fail;
        }
    }
    if (!b.data && mood_buf_puts(&b, "") != 0)
        goto fail;
    s = b.data;
    n = b.len;
    while (n && (isspace((unsigned char)*s) || *s == ','))
        s++, n--;
    while (n && (isspace((unsigned char)s[n - 1]) || s[n - 1] == ','))
        n--;
    r = mood_strndup(s, n);
    mood_buf_dispose(&b);
    return r;
fail:
    mood_buf_dispose(&b);
    return NULL;
}

/* ----- loading ---------------------------------------------------------------------------- */

void mood_board_free(mood_board *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++) {
        mood_free((char *)b->items[i].path);
        mood_free((char *)b->items[i].caption);
        mood_free((uint8_t *)b->items[i].rgb);
    }
    mood_free(b->items);
    mood_free(b->repeats);
    mood_free(b);
}

/* The caption kohya gives an image of folder N_name without a caption file: name (its
 * extract_dreambooth_params: what follows the first "_", e.g. "mystyle" of 10_mystyle/). */
static char *folder_caption(const char *image_path)
{
    const char *slash = strrchr(image_path, '/'), *start = slash;
    while (start > image_path && start[-1] != '/')
        start--;
    const char *us = slash ? memchr(start, '_', (size_t)(slash - start)) : NULL;
    return us ? mood_strndup(us + 1, (size_t)(slash - us - 1)) : NULL;
}

/* Prepares item `it` from its decoded image; kohya: it comes from a kohya N_name folder. */
static int prepare(mood_board_item *it, const mood_image *img, const mood_board_options *o,
                   int kohya)
{
    int rw, rh, err;
    uint8_t *rgb;
    char *cap = NULL;
    it->src_width = img->width;
    it->src_height = img->height;
    mood__board_bucket(o, img->width, img->height, &it->width, &it->height, &rw, &rh);
    /* the image is resized to cover its training size before the crop: a sliver (1 x 60000)
     * would need gigabytes at 512 for a picture that is all crop */
    if ((double)rw * rh > MAX_COVER * (double)it->width * it->height)
        return mood_error_set(MOOD_EINVAL,
                              "%s is %d x %d pixels: more than %d times as long as wide; crop it "
                              "to the part to train on",
                              it->path, img->width, img->height, MAX_COVER);
    if (!(rgb = mood__board_flatten(img)))
        return mood_error_nomem();
    err = fit(it, rgb, img->width, img->height, rw, rh);
    mood_free(rgb);
    if (!err)
        err = sidecar_caption(&cap, it->path, o->caption_ext ? o->caption_ext : ".txt");
    /* NAME.caption is kohya's default caption extension: read where there is no NAME.txt */
    if (!err && !cap && (!o->caption_ext || strcmp(o->caption_ext, ".txt") == 0))
        err = sidecar_caption(&cap, it->path, ".caption");
    if (!err && !cap && kohya && (cap = folder_caption(it->path)) != NULL && !*cap) {
        mood_free(cap); /* "10_/": no name to caption with */
        cap = NULL;
    }
    /* the folder's name is the user's caption as much as a file is (the trigger check) */
    it->caption_from_file = cap != NULL;
    if (!err && !cap && !(cap = template_caption(o)))
        err = mood_error_nomem();
    it->caption = cap;
    return err;
}

/* Adds "path: message" to the failure report; tracks whether all failures share one code. */
static int note_failure(mood_buf *report, int *code, int err)
{
    if (*code == 0)
        *code = err;
    else if (*code != err)
        *code = MOOD_EFORMAT;
    return mood_buf_printf(report, "\n  %s", mood_error_last());
}

static int decode_all(mood_board *b, const path_list *l, const mood_board_options *o)
{
    mood_buf report;
    size_t failed = 0;
    int code = 0, err = 0;
    mood_buf_init(&report);
    for (size_t i = 0; i < l->n && !err; i++) {
        mood_image *img = NULL;
        mood_board_item *it = &b->items[b->n];
        int rc = mood_image_load(&img, l->p[i]);
        if (rc == MOOD_ENOMEM) {
            err = rc;
        } else if (rc != 0) {
            failed++;
            err = note_failure(&report, &code, rc);
        } else if (!failed) { /* once one failed, only the rest are checked */
            memset(it, 0, sizeof *it);
            if (!(it->path = mood_strdup(l->p[i])))
                err = mood_error_nomem();
            b->repeats[b->n++] = l->rep[i];
            err = err ? err : prepare(it, img, o, l->kohya[i]);
        }
        mood_image_free(img);
    }
    if (!err && failed)
        err = mood_error_set(code, "%zu of %zu images of the mood board cannot be read:%s", failed,
                             l->n, report.data);
    mood_buf_dispose(&report);
    return err;
}

/* The error of a board without images, naming the subfolders skipped. */
static int no_images(const path_list *l, const char *const *paths, size_t n)
{
    mood_buf why;
    int err;
    mood_buf_init(&why);
    for (size_t i = 0; i < l->n_skipped; i++)
        if (mood_buf_printf(&why, "\n  %s", l->skipped[i]) != 0) {
            mood_buf_dispose(&why);
            return mood_error_nomem();
        }
    err = mood_error_set(MOOD_EINVAL, "%s%s: no images (PNG, JPEG, WebP, BMP) found%s%s", paths[0],
                         n > 1 ? " ..." : "", l->n_skipped ? "; skipped:" : "",
                         l->n_skipped ? why.data : "");
    mood_buf_dispose(&why);
    return err;
}

/* The same picture twice (a copy under another name, often by mistake) trains twice as often as
 * the rest: said, as the duplicate images kohya's users look for by hand. */
static void warn_duplicates(const mood_board *b)
{
    char(*hex)[65] = mood_calloc(b->n ? b->n : 1, sizeof *hex);
    for (size_t i = 0; hex && i < b->n; i++) {
        const mood_board_item *it = &b->items[i];
        mood_sha256_hex(hex[i], it->rgb, (size_t)it->width * it->height * 3);
        for (size_t j = 0; j < i; j++)
            if (strcmp(hex[i], hex[j]) == 0 && it->width == b->items[j].width &&
                it->height == b->items[j].height) {
                mood_log(MOOD_LOG_WARN,
                         "mood board: %s is the same picture as %s; it counts as two images",
                         it->path, b->items[j].path);
                break;
            }
    }
    mood_free(hex);
}

int mood_board_load(mood_board **out, const char *const *paths, size_t n,
                    const mood_board_options *opts)
{
    path_list l = {0};
    mood_board *b = NULL;
    mood_board_options o;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if (!paths || n == 0)
        return mood_error_set(MOOD_EINVAL, "mood board: no paths given");
    if (!opts)
        return mood_error_set(MOOD_EINVAL, "mood board: no options given (NULL; "
                                           "mood_board_options_init gives the defaults)");
    o = *opts;
    mood__board_options_resolve(&o);
    if ((err = mood__board_options_check(&o)) != 0)
        return err;
    if ((err = collect(&l, paths, n)) != 0)
        goto done;
    if (l.n == 0) {
        err = no_images(&l, paths, n);
        goto done;
    }
    /* kohya warns of the folders it skips and trains on the rest */
    for (size_t i = 0; i < l.n_skipped; i++)
        mood_log(MOOD_LOG_WARN, "mood board: skipped %s", l.skipped[i]);
    if (!(b = mood_calloc(1, sizeof *b)) || !(b->items = mood_calloc(l.n, sizeof *b->items)) ||
        !(b->repeats = mood_calloc(l.n, sizeof *b->repeats))) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = decode_all(b, &l, &o)) == 0)
        warn_duplicates(b);
done:
    path_list_dispose(&l);
    if (err)
        mood_board_free(b);
    else
        *out = b;
    return err;
}

int mood__board_repeats(const mood_board *b, size_t i)
{
    return b && i < b->n ? b->repeats[i] : 0;
}

size_t mood_board_count(const mood_board *b)
{
    return b ? b->n : 0;
}

const mood_board_item *mood_board_item_at(const mood_board *b, size_t i)
{
    return b && i < b->n ? &b->items[i] : NULL;
}

int mood_board_uses_trigger(const mood_board *b, const char *trigger)
{
    if (!trigger || !*trigger)
        return 0;
    for (size_t i = 0; b && i < b->n; i++) {
        const mood_board_item *it = &b->items[i];
        if (!it->caption_from_file || mood_str_has_words(it->caption, trigger, strlen(trigger)))
            return 1;
    }
    return 0;
}

void mood_board_item_tensor(float *out, const mood_board_item *it, int flip)
{
    size_t hw = (size_t)it->width * it->height;
    for (int y = 0; y < it->height; y++) {
        for (int x = 0; x < it->width; x++) {
            int sx = flip ? it->width - 1 - x : x;
            const uint8_t *p = it->rgb + ((size_t)y * it->width + sx) * 3;
            for (int c = 0; c < 3; c++) {
                float v = (float)p[c] / 255.0f;
                out[c * hw + (size_t)y * it->width + x] = (v - 0.5f) / 0.5f;
            }
        }
    }
}
