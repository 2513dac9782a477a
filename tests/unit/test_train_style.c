/*
 * test_train_style.c: does training a LoRA teach a model a board's look? A LoRA trained on five
 * images that share one strong trait (they are all deep blue: circles and stripes of different
 * sizes and angles) must move what the model generates for prompts that are not in the board
 * towards that trait, and the same assertions must fail for an untrained LoRA (up = 0), which
 * has to leave the output bit for bit as it was.
 *
 * The model is the tiny random SD1 pipeline of tests/fixtures/pipeline, assembled in a scratch
 * folder with two changes, because a random model cannot show a style otherwise:
 *   - its VAE's posterior is made tight and its latents SD-sized. The random VAE's logvar is ~0
 *     (std 1) while its mean is ~0.1, so latent_dist.sample() would be mostly noise and the
 *     board's colour would hardly reach the latents; SD's trained VAE has a tight posterior
 *     and latents of about unit size after scaling_factor. quant_conv's logvar rows are set to
 *     give -30 (the clamp's floor: std 3e-7) and its mean rows are multiplied by 20.
 *   - the scheduler says v_prediction (as SD 2.x-v). The random UNet is no denoiser: with
 *     epsilon prediction the sampler's x0 estimate at high noise is its error times
 *     1/sqrt(SNR) (up to ~14), which drowns what a LoRA trained for a second could learn; with v
 *     the x0 estimate at high noise is about -v, so the overall colour of a sample comes from
 *     what the model learnt of the data. (Measured with epsilon: the trained LoRA pulled samples
 *     towards red and blue boards alike.)
 *
 * The metric is in latent space: the random VAE decoder does not render colours (decode(encode(
 * x)) is not x), so decoded pixels would measure the decoder, not the trait. For a latent, take
 * its per-channel spatial mean (the latent image's overall colour); D(set) is the distance of
 * that 4-vector to the mean of the board images' encoded latents, averaged over the prompts.
 * A contrast set, the same five layouts in deep red, encodes elsewhere (|blue - red| = 2.3).
 * The LoRA passes when, on four prompts not in the board with fixed seeds, D(board) drops to
 * at most 0.6 of the base model's and the samples are at least twice as close to the board as
 * to the contrast set (the base model's are closer to the red one: the move is towards blue,
 * not merely towards plausible latents). Measured over training seeds 1-8: D(board) 1.605 ->
 * 0.45-0.62, D(contrast) 0.95 -> 1.93-2.15, the same with 1 or 2 threads; a LoRA trained on the
 * red set instead fails (D(board) 2.13, D(contrast) 0.50); an untrained one changes nothing.
 */
#include <sys/stat.h>

#include "harness.h"
#include "mood/gen.h"
#include "mood/image.h"
#include "mood/safetensors.h"
#include "mood/train.h"
#include "mood/vae.h"

#define N_BOARD   5
#define N_PROMPTS 4
#define SIDE      64
#define LAT       (SIDE / 8)

static const char *const prompts[N_PROMPTS] = {"a house on a hill", "portrait of an old man",
                                               "a bowl of fruit on a table",
                                               "a city street at night"};

/* ----- the model -------------------------------------------------------------------------- */

static void link_fixture(const char *dir, const char *rel)
{
    char src[4096], dst[1200];
    const char *name = strrchr(rel, '/') + 1;
    MOOD_CHECK_MSG(realpath(fixture(rel), src) != NULL, "%s missing", rel);
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    MOOD_CHECK(symlink(src, dst) == 0);
}

/* scheduler/scheduler_config.json of tiny-sd with prediction_type v_prediction. */
static void write_scheduler(const char *dir)
{
    char path[1200];
    cJSON *cfg = load_json(fixture("pipeline/tiny-sd/scheduler/scheduler_config.json"));
    char *text;
    MOOD_CHECK(cfg != NULL);
    if (!cfg)
        return;
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "prediction_type",
                                           cJSON_CreateString("v_prediction"));
    text = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/scheduler", dir);
    MOOD_CHECK(mkdir(path, 0755) == 0);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    MOOD_CHECK(text && write_file(path, text, strlen(text)) == 0);
    free(text);
    cJSON_Delete(cfg);
}

/* vae/: tiny-sd's config and weights with quant_conv changed (see the top of the file). */
static void write_vae(const char *dir)
{
    char path[1200];
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    float q[64], b[8];
    snprintf(path, sizeof path, "%s/vae", dir);
    MOOD_CHECK(mkdir(path, 0755) == 0);
    link_fixture(path, "pipeline/tiny-sd/vae/config.json");
    MOOD_CHECK_OK(
        mood_st_open(&f, fixture("pipeline/tiny-sd/vae/diffusion_pytorch_model.safetensors")));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; f && w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        int is_w = strcmp(t->name, "quant_conv.weight") == 0;
        if (is_w || strcmp(t->name, "quant_conv.bias") == 0) {
            /* rows 0-3 make the mean, rows 4-7 the logvar (weight 8 x 8 x 1 x 1, bias 8) */
            float *x = is_w ? q : b;
            int per = is_w ? 8 : 1;
            MOOD_CHECK(mood_st_numel(t) == 8 * per);
            MOOD_CHECK_OK(mood_st_to_f32(x, t));
            for (int k = 0; k < 8 * per; k++)
                x[k] = k / per < 4 ? 20.0f * x[k] : (is_w ? 0.0f : -30.0f);
            MOOD_CHECK_OK(mood_st_writer_add_f32(w, t->name, MOOD_DTYPE_F32, t->ndim, t->shape, x));
        } else {
            MOOD_CHECK_OK(mood_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data));
        }
    }
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    if (w)
        MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    mood_st_close(f);
}

static const char *make_model(void)
{
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/model", scratch_dir());
    MOOD_CHECK(mkdir(dir, 0755) == 0);
    link_fixture(dir, "pipeline/tiny-sd/model_index.json");
    link_fixture(dir, "pipeline/tiny-sd/text_encoder");
    link_fixture(dir, "pipeline/tiny-sd/unet");
    write_scheduler(dir);
    write_vae(dir);
    return dir;
}

/* ----- boards ----------------------------------------------------------------------------- */

static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* Five images of one layout family (a circle over stripes of varying width and angle) in deep
 * blue (blue = 1) or deep red; the layouts are the same for both colours. */
static void make_board(const char *dir, int blue)
{
    MOOD_CHECK(mkdir(dir, 0755) == 0);
    for (int k = 0; k < N_BOARD; k++) {
        mood_image *im = NULL;
        char path[1200];
        uint32_t s = 1234u + 77u * (uint32_t)k;
        int cx, cy, r;
        MOOD_CHECK_OK(mood_image_new(&im, SIDE, SIDE, 3));
        if (!im)
            return;
        cx = (int)(lcg(&s) % SIDE), cy = (int)(lcg(&s) % SIDE), r = 10 + (int)(lcg(&s) % 20);
        for (int y = 0; y < SIDE; y++) {
            for (int x = 0; x < SIDE; x++) {
                uint8_t *p = im->pixels + 3 * (y * SIDE + x);
                int in = (x - cx) * (x - cx) + (y - cy) * (y - cy) < r * r;
                int stripe = (x + y * (k + 1)) / (6 + k) % 2;
                int v = in ? 150 : stripe ? 255 : 200;
                int lo1 = (int)(lcg(&s) % 50), lo2 = (int)(lcg(&s) % 50);
                p[0] = (uint8_t)(blue ? lo1 : v);
                p[1] = (uint8_t)(blue ? lo2 + v / 3 : lo1);
                p[2] = (uint8_t)(blue ? v : lo2);
            }
        }
        snprintf(path, sizeof path, "%s/img%d.png", dir, k);
        MOOD_CHECK_OK(mood_image_write_png(path, im, NULL, NULL, 0));
        mood_image_free(im);
    }
}

/* Per-channel spatial mean of a 4 x LAT x LAT latent. */
static void channel_means(double mu[4], const float *z)
{
    for (int c = 0; c < 4; c++) {
        double s = 0;
        for (int i = 0; i < LAT * LAT; i++)
            s += z[c * LAT * LAT + i];
        mu[c] = s / (LAT * LAT);
    }
}

static double dist4(const double *a, const double *b)
{
    double d = 0;
    for (int c = 0; c < 4; c++)
        d += (a[c] - b[c]) * (a[c] - b[c]);
    return sqrt(d);
}

/* The board's latent colour: channel means of its images' scaled latent means. */
static void board_latent(double mu[4], const mood_vae *vae, const char *dir)
{
    static float x[3 * SIDE * SIDE], z[4 * LAT * LAT];
    float sf = mood_vae_get_config(vae)->scaling_factor;
    memset(mu, 0, 4 * sizeof *mu);
    for (int k = 0; k < N_BOARD; k++) {
        mood_image *im = NULL;
        char path[1200];
        double m[4];
        snprintf(path, sizeof path, "%s/img%d.png", dir, k);
        MOOD_CHECK_OK(mood_image_load(&im, path));
        if (!im)
            return;
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < SIDE * SIDE; i++)
                x[c * SIDE * SIDE + i] = ((float)im->pixels[3 * i + c] / 255.0f - 0.5f) / 0.5f;
        mood_image_free(im);
        MOOD_CHECK_OK(mood_vae_encode(vae, z, NULL, x, 1, SIDE, SIDE));
        for (int i = 0; i < 4 * LAT * LAT; i++)
            z[i] *= sf;
        channel_means(m, z);
        for (int c = 0; c < 4; c++)
            mu[c] += m[c] / N_BOARD;
    }
}

/* ----- generation and the metric ---------------------------------------------------------- */

typedef struct effect {
    float lat[N_PROMPTS][4 * LAT * LAT]; /* the samples' final latents */
    double d_board, d_contrast;          /* D(board), D(contrast) */
} effect;

/* Samples the prompts (fixed seeds; Euler, 10 steps, no guidance: what is measured is the
 * model) with the model's current adapters and measures them. */
static void measure(effect *e, mood_model *m, const double *board, const double *contrast)
{
    e->d_board = e->d_contrast = 0;
    for (int p = 0; p < N_PROMPTS; p++) {
        mood_gen_options g;
        float *img = NULL, *lat = NULL;
        double mu[4];
        mood_gen_options_init(&g);
        g.prompt = prompts[p];
        g.width = g.height = SIDE;
        g.steps = 10;
        g.cfg = 1;
        g.sampler = MOOD_SAMPLER_EULER;
        g.seed = 100 + (uint64_t)p;
        MOOD_CHECK_OK(mood_generate(m, &g, &img, &lat));
        if (lat) {
            memcpy(e->lat[p], lat, sizeof e->lat[p]);
            channel_means(mu, lat);
            e->d_board += dist4(mu, board) / N_PROMPTS;
            e->d_contrast += dist4(mu, contrast) / N_PROMPTS;
        }
        free(img);
        free(lat);
    }
}

/* The assertion the test makes of a LoRA, as a predicate so that it can be shown to fail. */
static int moves_towards_board(const effect *lora, const effect *base)
{
    return lora->d_board <= 0.6 * base->d_board && 2 * lora->d_board <= lora->d_contrast;
}

static void with_lora(effect *e, mood_model *m, const char *path, const double *board,
                      const double *contrast)
{
    mood_weighted_adapter wa = {.path = path, .unet = 1.0, .te = 1.0};
    size_t unmatched = 99;
    MOOD_CHECK_OK(mood_model_set_adapters(m, &wa, 1, MOOD_LORA_RUNTIME, &unmatched));
    MOOD_CHECK(unmatched == 0);
    measure(e, m, board, contrast);
    MOOD_CHECK_OK(mood_model_set_adapters(m, NULL, 0, MOOD_LORA_RUNTIME, NULL));
}

/* Trains on the board; steps = 1 with one warmup step is a learning rate of 0: the LoRA keeps
 * its initial up = 0 (an untrained LoRA, written by the same code). */
static void train(const char *model, const char *board, const char *out, int64_t steps,
                  int64_t warmup)
{
    mood_train_options o;
    const char *paths[1] = {board};
    mood_train_options_init(&o);
    o.model = model;
    o.board = paths;
    o.n_board = 1;
    o.board_opts.resolution = SIDE;
    o.board_opts.trigger = "sks";
    o.output = out;
    o.rank = 4;
    o.alpha = 4;
    o.steps = steps;
    o.warmup = warmup;
    o.lr = 1e-2;
    o.seed = 1;
    MOOD_CHECK_OK(mood_train_run(&o));
}

static void test_lora_moves_towards_board(void)
{
    const char *model = make_model();
    char blue[1100], red[1100];
    double board[4] = {0}, contrast[4] = {0};
    static effect base, trained, untrained;
    mood_model *m = NULL;
    mood_vae *vae = NULL;
    snprintf(blue, sizeof blue, "%s/blue", scratch_dir());
    snprintf(red, sizeof red, "%s/red", scratch_dir());
    make_board(blue, 1);
    make_board(red, 0);
    MOOD_CHECK_OK(mood_vae_load(&vae, scratch_path("model/vae")));
    if (vae) {
        board_latent(board, vae, blue);
        board_latent(contrast, vae, red);
    }
    mood_vae_free(vae);
    printf("     board (blue) latent colour %.3f %.3f %.3f %.3f; contrast (red) at %.3f\n",
           board[0], board[1], board[2], board[3], dist4(board, contrast));
    MOOD_CHECK_MSG(dist4(board, contrast) > 1.0, "the two colours encode alike");

    train(model, blue, scratch_path("trained.safetensors"), 150, 0);
    train(model, blue, scratch_path("untrained.safetensors"), 1, 1);
    MOOD_CHECK_OK(mood_model_open(&m, model, NULL));
    if (!m)
        return;
    measure(&base, m, board, contrast);
    with_lora(&trained, m, scratch_path("trained.safetensors"), board, contrast);
    with_lora(&untrained, m, scratch_path("untrained.safetensors"), board, contrast);
    mood_model_free(m);

    printf("     D(board) / D(contrast): base %.3f / %.3f, trained %.3f / %.3f, untrained "
           "%.3f / %.3f\n",
           base.d_board, base.d_contrast, trained.d_board, trained.d_contrast, untrained.d_board,
           untrained.d_contrast);
    MOOD_CHECK_MSG(moves_towards_board(&trained, &base),
                   "the trained LoRA does not move samples towards the board: D(board) %.3f "
                   "(base %.3f), D(contrast) %.3f",
                   trained.d_board, base.d_board, trained.d_contrast);
    MOOD_CHECK_MSG(!moves_towards_board(&untrained, &base),
                   "an untrained LoRA passes the test: it cannot tell");
    MOOD_CHECK_MSG(memcmp(untrained.lat, base.lat, sizeof base.lat) == 0,
                   "an untrained LoRA (up = 0) changed the samples");
}

MOOD_TEST_MAIN(MOOD_T(test_lora_moves_towards_board))
