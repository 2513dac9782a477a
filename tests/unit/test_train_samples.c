/*
 * test_train_samples.c: what a training run gives besides its LoRA (mood/train.h): sample
 * previews rendered every N steps and at the end with the LoRA being trained applied as side
 * paths, and mood board thumbnails.
 *
 *   - previews: when and with what they are rendered (steps, prompts with the trigger word, one
 *     seed per prompt); the final preview is the image mood_generate makes with the written LoRA
 *     file applied (runtime side paths, saved as F32), and differs from the base model's; a run
 *     with previews trains exactly the LoRA a run without them trains; a callback that says stop
 *     stops the run with a checkpoint; bad preview options fail before any work.
 *   - thumbnails: the whole picture, alpha over white, longer side scaled to the limit, against
 *     Pillow's (tools/make_fixtures_thumbnail.py) within JPEG's loss.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mood/gen.h"
#include "mood/image.h"
#include "mood/safetensors.h"
#include "mood/train.h"

/* ----- a stand-in for the UNet's part of a step --------------------------------------------- */

/* A quadratic pulling every up factor to 0.2, so that the LoRA changes the images visibly. */
static int standin_loss(void *user, const mood_train_batch *b, mood_train_module *mods, size_t n,
                        double *loss_out)
{
    double loss = 0;
    (void)user;
    for (size_t i = 0; i < n; i++) {
        mood_train_module *md = &mods[i];
        for (size_t k = 0; k < (size_t)md->out * md->rank; k++) {
            loss += (md->up[k] - 0.2) * (md->up[k] - 0.2);
            md->up_grad[k] += b->grad_scale * 2.0f * (md->up[k] - 0.2f);
        }
    }
    *loss_out = loss;
    return 0;
}

/* ----- what the callbacks saw ---------------------------------------------------------------- */

#define MAX_SEEN 16

typedef struct seen_sample {
    int64_t step;
    int final;
    size_t index, count;
    char prompt[128], negative[64];
    mood_gen_options gen; /* prompt and negative pointing at `prompt` and `negative` */
    float *image;         /* copy, 3 x h x w */
} seen_sample;

typedef struct seen {
    seen_sample s[MAX_SEEN];
    int n;
    int stop_at; /* > 0: return non-zero on that call */
    int sample_phase, sample_total, train_rate;
} seen;

static int on_sample(const mood_train_sample *s, void *payload)
{
    seen *v = payload;
    seen_sample *x;
    size_t px = (size_t)3 * s->gen->width * s->gen->height;
    if (v->n >= MAX_SEEN)
        return 1;
    x = &v->s[v->n++];
    x->step = s->step;
    x->final = s->final;
    x->index = s->index;
    x->count = s->count;
    snprintf(x->prompt, sizeof x->prompt, "%s", s->gen->prompt);
    x->gen = *s->gen;
    x->gen.prompt = x->prompt;
    snprintf(x->negative, sizeof x->negative, "%s", s->gen->negative ? s->gen->negative : "");
    x->gen.negative = x->negative;
    if ((x->image = malloc(px * sizeof(float))) != NULL)
        memcpy(x->image, s->image, px * sizeof(float));
    MOOD_CHECK(s->model != NULL);
    return v->stop_at > 0 && v->n == v->stop_at;
}

static int on_progress(const mood_train_progress *p, void *payload)
{
    seen *v = payload;
    if (strcmp(p->phase, "sample") == 0) {
        v->sample_phase++;
        v->sample_total = (int)p->total;
    } else if (strcmp(p->phase, "train") == 0 && p->it_per_s > 0 && p->eta_s >= 0) {
        v->train_rate++;
    }
    return 0;
}

static void seen_dispose(seen *v)
{
    for (int i = 0; i < v->n; i++)
        free(v->s[i].image);
    memset(v, 0, sizeof *v);
}

static void base_options(mood_train_options *o, const char **board, const char *out)
{
    mood_train_options_init(o);
    o->model = fixture("pipeline/tiny-sd");
    board[0] = fixture("train/board/d.bmp"); /* one small image: the VAE is slow under ASan */
    o->board = board;
    o->n_board = 1;
    o->board_opts.resolution = 64;
    o->board_opts.trigger = "sks";
    o->output = scratch_path(out);
    o->save_dtype = MOOD_DTYPE_F32; /* the file holds exactly the values the previews used */
    o->steps = 4;
    o->rank = 4;
    o->alpha = 4;
    o->targets = MOOD_TRAIN_ATTN;
    o->lr = 0.1;
    o->loss = standin_loss;
}

static double max_abs_diff(const float *a, const float *b, size_t n, double *scale)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    if (scale)
        *scale = m;
    return d;
}

/* The final preview against mood_generate with the written LoRA applied, and without it. */
static void check_final_preview(const seen_sample *x, const char *lora)
{
    mood_model *m = NULL;
    float *with = NULL, *without = NULL;
    size_t n = (size_t)3 * x->gen.width * x->gen.height;
    mood_weighted_adapter wa = {.path = lora, .unet = 1.0, .te = 1.0};
    double d_with, d_without, scale = 0;
    MOOD_CHECK_OK(mood_model_open(&m, fixture("pipeline/tiny-sd"), NULL));
    if (!m || !x->image)
        return;
    MOOD_CHECK_OK(mood_generate(m, &x->gen, &without, NULL));
    MOOD_CHECK_OK(mood_model_set_adapters(m, &wa, 1, MOOD_LORA_RUNTIME, NULL));
    MOOD_CHECK_OK(mood_generate(m, &x->gen, &with, NULL));
    if (with && without) {
        d_with = max_abs_diff(x->image, with, n, &scale);
        d_without = max_abs_diff(x->image, without, n, NULL);
        printf("final preview vs the LoRA file: max diff %.3g (scale %.3g); vs no LoRA %.3g\n",
               d_with, scale, d_without);
        MOOD_CHECK_MSG(d_with <= 1e-4 * fmax(scale, 1.0), "preview differs from the LoRA's: %g",
                       d_with);
        MOOD_CHECK_MSG(d_without > 100 * fmax(d_with, 1e-6),
                       "the LoRA changes nothing visible (%g): the test cannot tell", d_without);
    }
    free(with);
    free(without);
    mood_model_free(m);
}

/* Every tensor of two safetensors files equal, bit for bit (metadata holds times: not compared). */
static void check_same_tensors(const char *a, const char *b)
{
    mood_st_file *fa = NULL, *fb = NULL;
    size_t same = 0;
    MOOD_CHECK_OK(mood_st_open(&fa, a));
    MOOD_CHECK_OK(mood_st_open(&fb, b));
    if (fa && fb && mood_st_count(fa) == mood_st_count(fb)) {
        for (size_t i = 0; i < mood_st_count(fa); i++) {
            const mood_st_tensor *ta = mood_st_at(fa, i), *tb = mood_st_find(fb, ta->name);
            same += tb && mood_st_nbytes(ta) == mood_st_nbytes(tb) &&
                    memcmp(ta->data, tb->data, (size_t)mood_st_nbytes(ta)) == 0;
        }
    }
    MOOD_CHECK_MSG(fa && fb && same == mood_st_count(fa) && same > 0,
                   "%zu tensors equal of %zu: previews changed the training", same,
                   fa ? mood_st_count(fa) : 0);
    mood_st_close(fa);
    mood_st_close(fb);
}

static void test_previews(void)
{
    mood_train_options o;
    const char *board[1];
    seen v;
    memset(&v, 0, sizeof v);
    base_options(&o, board, "samples.safetensors");
    o.sample_every = 2;
    o.sample_steps = 3;
    o.sample_seed = 7;
    o.sample = on_sample;
    o.sample_payload = &v;
    o.progress = on_progress;
    o.progress_payload = &v;
    MOOD_CHECK_OK(mood_train_run(&o));
    MOOD_CHECK_MSG(v.n == 4, "%d previews, expected 4 (step 2 and the end, two prompts)", v.n);
    for (int i = 0; i < v.n && v.n == 4; i++) {
        const seen_sample *x = &v.s[i];
        MOOD_CHECK(x->step == (i < 2 ? 2 : 4) && x->final == (i >= 2));
        MOOD_CHECK(x->index == (size_t)(i % 2) && x->count == 2);
        MOOD_CHECK(strcmp(x->prompt, i % 2 ? "sks, a landscape" : "sks, a portrait") == 0);
        MOOD_CHECK(x->gen.seed == 7 + (uint64_t)(i % 2) && x->gen.steps == 3);
        MOOD_CHECK(x->gen.width == 64 && x->gen.height == 64 && x->gen.batch == 1);
    }
    MOOD_CHECK_MSG(v.sample_phase >= 6 && v.sample_total == 6, "sample progress %d calls, total %d",
                   v.sample_phase, v.sample_total);
    MOOD_CHECK(v.train_rate > 0);
    if (v.n == 4) {
        double scale;
        size_t n = (size_t)3 * 64 * 64;
        /* same seed, other step: only the LoRA differs */
        MOOD_CHECK(max_abs_diff(v.s[0].image, v.s[2].image, n, &scale) > 0);
        check_final_preview(&v.s[2], o.output);
    }
    seen_dispose(&v);
    /* the same run without previews trains the same LoRA */
    {
        mood_train_options q;
        const char *board2[1];
        base_options(&q, board2, "no-samples.safetensors");
        MOOD_CHECK_OK(mood_train_run(&q));
        check_same_tensors(o.output, q.output);
    }
}

static void test_preview_stop_and_options(void)
{
    mood_train_options o;
    const char *board[1];
    seen v;
    const char *prompts[1] = {"{trigger}, a cat, {trigger}"};
    memset(&v, 0, sizeof v);
    base_options(&o, board, "stopped.safetensors");
    o.board_opts.trigger = NULL;
    o.checkpoint = scratch_path("stopped.ckpt.safetensors");
    o.sample_every = 1;
    o.sample_steps = 2;
    o.sample = on_sample;
    o.sample_payload = &v;
    v.stop_at = 1;
    remove(o.checkpoint);
    MOOD_CHECK(mood_train_run(&o) == MOOD_ECANCELLED);
    MOOD_CHECK(v.n == 1 && strcmp(v.s[0].prompt, "a portrait") == 0 && v.s[0].step == 1);
    MOOD_CHECK_MSG(access(o.checkpoint, F_OK) == 0, "no checkpoint after a stop");
    seen_dispose(&v);
    /* the user's prompts, trigger word filled in everywhere */
    o.board_opts.trigger = "zx";
    o.sample_prompts = prompts;
    o.n_sample_prompts = 1;
    o.sample_every = 10; /* more than the steps: the end only */
    o.checkpoint = NULL;
    MOOD_CHECK_OK(mood_train_run(&o));
    MOOD_CHECK(v.n == 1 && v.s[0].final && v.s[0].step == 4);
    MOOD_CHECK(v.n == 1 && strcmp(v.s[0].prompt, "zx, a cat, zx") == 0);
    seen_dispose(&v);
    /* bad sizes fail before any work */
    o.sample_size = 60;
    MOOD_CHECK(mood_train_run(&o) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "60") != NULL);
    MOOD_CHECK(v.n == 0);
}

/* kohya's per-prompt options in a preview prompt (its sample_prompts lines) set that prompt's
 * negative prompt, size, seed, steps, guidance and sampler, and are not part of the prompt. */
static void test_preview_kohya_options(void)
{
    mood_train_options o;
    const char *board[1];
    seen v;
    const char *prompts[2] = {
        "{trigger}, a cat --n blurry, low quality --W 72 --h 60 --d 18446744073709551615 --s 2 "
        "--l 2.5 --ss k_euler",
        "a dog --g 3.5"};
    const char *bad[1] = {"a cat --zz 1"};
    memset(&v, 0, sizeof v);
    base_options(&o, board, "kohya-prompts.safetensors");
    o.sample_every = 100; /* the end only */
    o.sample_steps = 3;
    o.sample_negative = "the run's negative";
    o.sample_prompts = prompts;
    o.n_sample_prompts = 2;
    o.sample = on_sample;
    o.sample_payload = &v;
    MOOD_CHECK_OK(mood_train_run(&o));
    MOOD_CHECK_MSG(v.n == 2, "%d previews", v.n);
    if (v.n == 2) {
        const mood_gen_options *a = &v.s[0].gen, *b = &v.s[1].gen;
        MOOD_CHECK_MSG(strcmp(v.s[0].prompt, "sks, a cat") == 0, "prompt '%s'", v.s[0].prompt);
        MOOD_CHECK(strcmp(v.s[0].negative, "blurry, low quality") == 0);
        /* 60 rounds down to 56 (a multiple of 8), at least 64: 64 */
        MOOD_CHECK_MSG(a->width == 72 && a->height == 64, "%dx%d", a->width, a->height);
        MOOD_CHECK(a->seed == UINT64_MAX && a->steps == 2 && a->cfg == 2.5);
        MOOD_CHECK(a->sampler == MOOD_SAMPLER_EULER);
        /* the second prompt keeps the run's settings; Flux's --g is ignored */
        MOOD_CHECK_MSG(strcmp(v.s[1].prompt, "a dog") == 0, "prompt '%s'", v.s[1].prompt);
        MOOD_CHECK(strcmp(v.s[1].negative, "the run's negative") == 0);
        MOOD_CHECK(b->width == 64 && b->height == 64 && b->steps == 3 && b->seed == 1);
        MOOD_CHECK(b->sampler == MOOD_SAMPLER_EULER_A && b->cfg == 7.0);
    }
    seen_dispose(&v);
    /* an option kohya does not have fails before any work, naming it */
    o.sample_prompts = bad;
    o.n_sample_prompts = 1;
    MOOD_CHECK(mood_train_run(&o) == MOOD_EINVAL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "--zz") != NULL, "%s", mood_error_last());
    MOOD_CHECK(v.n == 0);
}

/* ----- thumbnails ------------------------------------------------------------------------------
 */

/* Mean |difference| of the 10 x 10 block averages of two images of one size, and the largest.
 * JPEG keeps block averages (its DC terms) within a level or two, so this measures the resize
 * and not JPEG's loss on the fixtures' fine patterns, which is ~13 levels per pixel with Pillow's
 * own encoder too. A flipped or misplaced image is tens of levels off. */
static double block_diff(const mood_image *a, const mood_image *b, double *worst)
{
    double sum = 0;
    int n = 0;
    *worst = 0;
    for (int by = 0; by < a->height; by += 10) {
        for (int bx = 0; bx < a->width; bx += 10) {
            for (int k = 0; k < 3; k++) {
                double sa = 0, sb = 0;
                int cnt = 0;
                for (int y = by; y < by + 10 && y < a->height; y++) {
                    for (int x = bx; x < bx + 10 && x < a->width; x++, cnt++) {
                        sa += a->pixels[((size_t)y * a->width + x) * a->channels + k];
                        sb += b->pixels[((size_t)y * b->width + x) * b->channels + k];
                    }
                }
                sum += fabs(sa - sb) / cnt;
                *worst = fmax(*worst, fabs(sa - sb) / cnt);
                n++;
            }
        }
    }
    return n ? sum / n : 0;
}

static void check_thumbnail(const cJSON *c)
{
    char src[512], ref_path[512], out[512];
    const char *paths[1] = {src};
    mood_board *b = NULL;
    mood_board_options bo;
    mood_image *got = NULL, *ref = NULL;
    uint8_t *jpeg = NULL;
    size_t size = 0;
    int w = 0, h = 0;
    const char *image = json_str(c, "image"), *ref_name = json_str(c, "ref");
    if (!image || !ref_name) {
        MOOD_CHECK_MSG(0, "thumbnail/cases.json: a case without image or ref");
        return;
    }
    snprintf(src, sizeof src, "%s/%s", fixture("train/board"), image);
    snprintf(ref_path, sizeof ref_path, "%s/%s", fixture("thumbnail"), ref_name);
    snprintf(out, sizeof out, "%s.jpg", scratch_path(ref_name));
    mood_board_options_init(&bo);
    bo.resolution = 64;
    MOOD_CHECK_OK(mood_board_load(&b, paths, 1, &bo));
    if (!b)
        return;
    MOOD_CHECK_OK(
        mood_board_thumbnail(&jpeg, &size, &w, &h, mood_board_item_at(b, 0),
                             (int)cJSON_GetNumberValue(cJSON_GetObjectItem(c, "max_side"))));
    MOOD_CHECK(w == (int)cJSON_GetNumberValue(cJSON_GetObjectItem(c, "width")));
    MOOD_CHECK(h == (int)cJSON_GetNumberValue(cJSON_GetObjectItem(c, "height")));
    MOOD_CHECK(jpeg && size > 4 && jpeg[0] == 0xFF && jpeg[1] == 0xD8); /* a JPEG */
    if (jpeg && write_file(out, jpeg, size) == 0 && mood_image_load(&got, out) == 0 &&
        mood_image_load(&ref, ref_path) == 0 && got->width == ref->width &&
        got->height == ref->height) {
        double worst, mean = block_diff(got, ref, &worst);
        printf("thumbnail %s: %dx%d, %zu bytes; 10x10 block means: mean |diff| %.2f, max %.2f "
               "levels\n",
               image, w, h, size, mean, worst);
        MOOD_CHECK_MSG(mean < 2.0 && worst < 8.0, "%s: block means differ by %.2f (max %.2f)",
                       image, mean, worst);
    } else {
        MOOD_CHECK_MSG(0, "%s: thumbnail or reference not readable, or sizes differ", image);
    }
    free(jpeg);
    mood_image_free(got);
    mood_image_free(ref);
    mood_board_free(b);
}

static void test_thumbnails(void)
{
    char cases_path[512];
    cJSON *root, *c;
    const char *paths[1];
    mood_board *b = NULL;
    mood_board_options bo;
    uint8_t *jpeg = NULL;
    size_t size = 0;
    int w = 0, h = 0;
    snprintf(cases_path, sizeof cases_path, "%s/cases.json", fixture("thumbnail"));
    root = load_json(cases_path);
    MOOD_CHECK(root != NULL);
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) check_thumbnail(c);
    cJSON_Delete(root);
    /* never enlarged; a bad limit is refused */
    paths[0] = fixture("train/board/d.bmp");
    mood_board_options_init(&bo);
    bo.resolution = 64;
    MOOD_CHECK_OK(mood_board_load(&b, paths, 1, &bo));
    if (!b)
        return;
    MOOD_CHECK_OK(mood_board_thumbnail(&jpeg, &size, &w, &h, mood_board_item_at(b, 0), 256));
    MOOD_CHECK(w == 16 && h == 16);
    free(jpeg);
    MOOD_CHECK(mood_board_thumbnail(&jpeg, &size, &w, &h, mood_board_item_at(b, 0), 0) ==
               MOOD_EINVAL);
    MOOD_CHECK(jpeg == NULL && size == 0);
    mood_board_free(b);
}

MOOD_TEST_MAIN(MOOD_T(test_thumbnails), MOOD_T(test_previews),
               MOOD_T(test_preview_stop_and_options), MOOD_T(test_preview_kohya_options))
