/*
 * test_train.c: the trainer's parts that do not need the UNet backward, against the references
 * tools/make_fixtures_train.py wrote with torch, diffusers, Pillow and kohya sd-scripts
 * (tests/fixtures/train/): the random draws of a step, add_noise / v targets / min-SNR weights,
 * LoRA init, AdamW, gradient clipping, learning-rate schedules, a whole training loop of a small
 * "fake model" (losses and final weights of a torch re-implementation), bit-exact resume after
 * a stop (callback, SIGINT), the NaN stop, allocation failures (board and training), and
 * mood_train_run on a tiny model with a stand-in loss (output file,
 * kohya names that load back, metadata, loss curve) and with the built-in loss training the text
 * encoder too (--te: its modules written and trained). The mood board: test_board.c.
 */
#include <signal.h>
#include <sys/stat.h>

#include "harness.h"
#include "mood/gen.h"
#include "mood/image.h"
#include "mood/rng.h"
#include "mood/safetensors.h"
#include "mood/train.h"
#include "train/train_internal.h"

/* ----- fixture helpers ---------------------------------------------------------------------- */

static mood_st_file *ref_file(void)
{
    static mood_st_file *f;
    if (!f && mood_st_open(&f, fixture("train/ref.safetensors")) != 0) {
        fprintf(stderr, "cannot open train/ref.safetensors: %s\n", mood_error_last());
        f = NULL;
    }
    return f;
}

static cJSON *cases(void)
{
    static cJSON *c;
    if (!c)
        c = load_json(fixture("train/cases.json"));
    return c;
}

/* Tensor `name` as doubles (any float or int dtype); NULL (and a failed check) if absent. */
static double *ref_f64(const char *name, size_t *n)
{
    mood_st_file *f = ref_file();
    const mood_st_tensor *t = f ? mood_st_find(f, name) : NULL;
    double *out;
    *n = 0;
    MOOD_CHECK_MSG(t != NULL, "fixture tensor %s missing", name);
    if (!t)
        return NULL;
    *n = (size_t)mood_st_numel(t);
    out = malloc(*n * sizeof *out + 1);
    for (size_t i = 0; i < *n; i++) {
        const char *p = (const char *)t->data;
        if (t->dtype == MOOD_DTYPE_F64) {
            memcpy(&out[i], p + 8 * i, 8);
        } else if (t->dtype == MOOD_DTYPE_I64) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            out[i] = (double)v;
        } else {
            float v;
            MOOD_CHECK(mood_dtype_to_f32(&v, p + (size_t)mood_dtype_bits(t->dtype) / 8 * i,
                                         t->dtype, 1) == 0);
            out[i] = v;
        }
    }
    return out;
}

static float *ref_f32(const char *name, size_t *n)
{
    double *d = ref_f64(name, n);
    float *f;
    if (!d)
        return NULL;
    f = malloc(*n * sizeof *f + 1);
    for (size_t i = 0; i < *n; i++)
        f[i] = (float)d[i];
    free(d);
    return f;
}

/* Elements that differ, and the largest difference relative to max(|ref|). */
static size_t count_diff(const float *a, const float *b, size_t n, double *rel)
{
    size_t bad = 0;
    double d = 0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) {
        bad += a[i] != b[i];
        d = fmax(d, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    *rel = d / scale;
    return bad;
}

static mood_noise_schedule sd_schedule(mood_prediction pred)
{
    mood_noise_schedule ns;
    mood_noise_schedule_sd(&ns);
    ns.prediction = pred;
    return ns;
}

static void check_same(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double rel;
    size_t bad = count_diff(got, want, n, &rel);
    MOOD_CHECK_MSG(tol == 0 ? bad == 0 : rel <= tol, "%s: %zu of %zu differ, max rel %.3g", what,
                   bad, n, rel);
}

/* ----- generator state ---------------------------------------------------------------------- */

static void test_rng_state(void)
{
    mood_rng_torch_cpu *a = NULL, *b = NULL;
    uint8_t st[MOOD_RNG_TORCH_CPU_STATE_SIZE];
    float x[40], y[40], z[3];
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&a, 42));
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&b, 7));
    if (!a || !b)
        return;
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(a, z, 3)); /* leaves a cached normal */
    mood_rng_torch_cpu_get_state(a, st);
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(a, x, 1));
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(a, x + 1, 39));
    MOOD_CHECK_OK(mood_rng_torch_cpu_set_state(b, st, sizeof st));
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(b, y, 1));
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(b, y + 1, 39));
    MOOD_CHECK(memcmp(x, y, sizeof x) == 0);
    MOOD_CHECK(mood_rng_torch_cpu_set_state(b, st, sizeof st - 1) == MOOD_EFORMAT);
    memset(st + 4 + 624 * 4, 0, 4); /* left = 0: never a valid position */
    MOOD_CHECK(mood_rng_torch_cpu_set_state(b, st, sizeof st) == MOOD_EFORMAT);
    mood_rng_torch_cpu_free(a);
    mood_rng_torch_cpu_free(b);
}

/* ----- draws, schedule, min-SNR ------------------------------------------------------------- */

static void test_schedule_tables(void)
{
    mood_noise_schedule ns = sd_schedule(MOOD_PRED_EPSILON);
    mood__train_sched s;
    size_t n = 0, m = 0;
    float *ac = ref_f32("sched/ac", &n), *snr = ref_f32("sched/snr", &m);
    MOOD_CHECK_OK(mood__train_sched_init(&s, &ns));
    if (ac && snr && n == 1000 && m == 1000) {
        double rel;
        size_t bad;
        check_same("alphas_cumprod", s.alphas_cumprod, ac, n, 0);
        /* kohya's torch.sqrt goes through MKL (vsSqrt), which is not correctly rounded: a few
         * entries are an ulp away from sqrtf's */
        bad = count_diff(s.snr, snr, n, &rel);
        MOOD_CHECK_MSG(bad <= 20 && rel <= 2e-7, "all_snr: %zu differ, max rel %.3g", bad, rel);
        printf("     all_snr vs kohya: %zu of %zu differ by an ulp (max rel %.2g)\n", bad, n, rel);
    }
    mood__train_sched_dispose(&s);
    free(ac);
    free(snr);
}

static float *draw_ref(const char *name, const char *suffix, size_t *n)
{
    char key[64];
    snprintf(key, sizeof key, "draw/%s/%s", name, suffix);
    return ref_f32(key, n);
}

static void check_draw_case(const cJSON *c, const mood__train_sched *se,
                            const mood__train_sched *sv)
{
    const char *name = json_str(c, "name");
    int B = (int)json_num(c, "B"), h = (int)json_num(c, "h"), w = (int)json_num(c, "w");
    size_t e = (size_t)4 * h * w, n;
    mood_rng_torch_cpu *g = NULL;
    int32_t perm[7];
    int64_t t[8];
    float u[7], tmp[32], wts[8], tail[3], *r, *x0;
    float *noise = malloc(B * e * sizeof *noise), *y = malloc(B * e * sizeof *y);
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&g, (uint64_t)json_num(c, "seed")));
    MOOD_CHECK_OK(mood__train_randperm(g, perm, 7));
    MOOD_CHECK_OK(mood_rng_torch_cpu_rand(g, u, 7));
    MOOD_CHECK_OK(
        mood__train_draw(g, noise, t, tmp, B, 4, (size_t)h * w, json_num(c, "offset"), 0, 1000));
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(g, tail, 3));
    if ((r = draw_ref(name, "perm", &n)) != NULL)
        for (int i = 0; i < 7; i++)
            MOOD_CHECK_MSG(perm[i] == (int32_t)r[i], "%s: randperm[%d] %d, torch %g", name, i,
                           perm[i], r[i]);
    free(r);
    if ((r = draw_ref(name, "rand", &n)) != NULL)
        check_same("rand", u, r, 7, 0);
    free(r);
    if ((r = draw_ref(name, "noise", &n)) != NULL)
        check_same("noise (+ offset)", noise, r, B * e, 0);
    free(r);
    if ((r = draw_ref(name, "t", &n)) != NULL)
        for (int b = 0; b < B; b++)
            MOOD_CHECK_MSG(t[b] == (int64_t)r[b], "%s: timestep %d: %lld, torch %g", name, b,
                           (long long)t[b], r[b]);
    free(r);
    if ((r = draw_ref(name, "tail", &n)) != NULL)
        check_same("generator after the step", tail, r, 3, 0);
    free(r);
    if ((x0 = draw_ref(name, "x0", &n)) != NULL) {
        mood__train_add_noise(se, y, x0, noise, t, B, e);
        if ((r = draw_ref(name, "noisy", &n)) != NULL)
            check_same("add_noise", y, r, B * e, 0);
        free(r);
        mood__train_target(sv, y, x0, noise, t, B, e);
        if ((r = draw_ref(name, "v", &n)) != NULL)
            check_same("get_velocity", y, r, B * e, 0);
        free(r);
    }
    mood__train_snr_weights(se, wts, t, B, 5.0);
    if ((r = draw_ref(name, "w_eps", &n)) != NULL)
        check_same("min-SNR weight (epsilon)", wts, r, (size_t)B, 3e-7);
    free(r);
    mood__train_snr_weights(sv, wts, t, B, 5.0);
    if ((r = draw_ref(name, "w_v", &n)) != NULL)
        check_same("min-SNR weight (v)", wts, r, (size_t)B, 3e-7);
    free(r);
    free(x0);
    free(noise);
    free(y);
    mood_rng_torch_cpu_free(g);
}

static void test_draws(void)
{
    const cJSON *c, *list = cJSON_GetObjectItemCaseSensitive(cases(), "draws");
    mood_noise_schedule ne = sd_schedule(MOOD_PRED_EPSILON), nv = sd_schedule(MOOD_PRED_V);
    mood__train_sched se, sv;
    float w[2];
    int64_t t[2] = {0, 999};
    MOOD_CHECK(list != NULL);
    MOOD_CHECK_OK(mood__train_sched_init(&se, &ne));
    MOOD_CHECK_OK(mood__train_sched_init(&sv, &nv));
    cJSON_ArrayForEach(c, list) check_draw_case(c, &se, &sv);
    mood__train_snr_weights(&se, w, t, 2, 0); /* gamma 0: no weighting */
    MOOD_CHECK(w[0] == 1.0f && w[1] == 1.0f);
    mood__train_sched_dispose(&se);
    mood__train_sched_dispose(&sv);
}

/* x0 prediction (mood-tiny's MOOD_PRED_SAMPLE): the target is x0 itself, and min-SNR-gamma's
 * weight of the x0 loss is min(snr, gamma) (Hang et al. 2023, the weight the epsilon and v
 * forms divide by snr and snr + 1): the epsilon weight times the SNR. */
static void test_sample_prediction(void)
{
    mood_noise_schedule ne = sd_schedule(MOOD_PRED_EPSILON), nx = sd_schedule(MOOD_PRED_SAMPLE);
    mood__train_sched se, sx;
    int64_t t[4] = {0, 120, 500, 999};
    float x0[8], noise[8], y[8], we[4], wx[4];
    for (int i = 0; i < 8; i++)
        x0[i] = 0.25f * (float)i - 1.0f, noise[i] = 0.5f - 0.125f * (float)i;
    MOOD_CHECK_OK(mood__train_sched_init(&se, &ne));
    MOOD_CHECK_OK(mood__train_sched_init(&sx, &nx));
    mood__train_target(&sx, y, x0, noise, t, 4, 2);
    MOOD_CHECK(memcmp(y, x0, sizeof y) == 0);
    mood__train_snr_weights(&se, we, t, 4, 5.0);
    mood__train_snr_weights(&sx, wx, t, 4, 5.0);
    for (int b = 0; b < 4; b++) {
        float snr = sx.snr[t[b]];
        MOOD_CHECK_MSG(fabsf(wx[b] - we[b] * snr) <= 1e-5f * (1.0f + fabsf(wx[b])),
                       "t %lld: x0 weight %g, epsilon weight %g x snr %g", (long long)t[b], wx[b],
                       we[b], snr);
    }
    MOOD_CHECK(wx[0] == 5.0f && wx[3] < 1e-2f); /* capped at gamma; SD's last SNR is 0.0047 */
    mood__train_sched_dispose(&se);
    mood__train_sched_dispose(&sx);
}

/* ----- init, AdamW, clipping, schedules ----------------------------------------------------- */

static void test_init(void)
{
    mood__lora_spec specs[2] = {
        {"l.weight", "lora_l", MOOD_PART_UNET, 2, 5, 10, 1, 1, 4, 4.0},
        {"c.weight", "lora_c", MOOD_PART_UNET, 4, 6, 3, 3, 3, 4, 2.0},
    };
    mood__lora_params *lp = NULL;
    mood_rng_torch_cpu *g = NULL;
    size_t n0 = 0, n1 = 0;
    float *d0 = ref_f32("init/down0", &n0), *d1 = ref_f32("init/down1", &n1);
    MOOD_CHECK_OK(mood__lora_params_new(&lp, specs, 2, 8, 1.0));
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&g, 99));
    if (lp && g && d0 && d1 && n0 == 40 && n1 == 108) {
        MOOD_CHECK_OK(mood__lora_params_init(lp, g));
        check_same("kaiming_uniform_ (Linear)", lp->mods[0].down, d0, n0, 0);
        check_same("kaiming_uniform_ (Conv2d)", lp->mods[1].down, d1, n1, 0);
        MOOD_CHECK(lp->mods[0].up[0] == 0 && lp->mods[1].up[17] == 0);
        MOOD_CHECK(lp->mods[1].scale == 0.5f && lp->n_params == 40 + 20 + 108 + 24);
        MOOD_CHECK(lp->tensor_off[4] == 192 && lp->paths[1].down == lp->mods[1].down);
    }
    mood__lora_params_free(lp);
    mood_rng_torch_cpu_free(g);
    free(d0);
    free(d1);
}

static void test_adamw(void)
{
    size_t n = 0, ng, np, nl = 0, nm;
    float *p = ref_f32("adam/p0", &n), *g = ref_f32("adam/g", &ng), *want = ref_f32("adam/p", &np);
    float *m = ref_f32("adam/m", &nm), *v = ref_f32("adam/v", &nm);
    double *lr = ref_f64("adam/lr", &nl);
    mood__adamw a;
    MOOD_CHECK_OK(mood__adamw_init(&a, n, 0.9, 0.999, 1e-8, 1e-2));
    for (size_t k = 0; p && g && want && lr && k < nl; k++) {
        char what[64];
        snprintf(what, sizeof what, "AdamW step %zu", k + 1);
        MOOD_CHECK(mood_lr_factor(MOOD_LR_COSINE, (int64_t)k, 2, 6) * 1e-3 == lr[k]);
        mood__adamw_update(&a, p, g + k * n, 0, n, lr[k], (int64_t)k + 1);
        check_same(what, p, want + k * n, n, 0);
    }
    if (m && v) {
        check_same("AdamW exp_avg", a.m, m, n, 0);
        check_same("AdamW exp_avg_sq", a.v, v, n, 0);
    }
    mood__adamw_dispose(&a);
    MOOD_CHECK(mood__adamw_init(&a, 4, 1.0, 0.999, 1e-8, 0) == MOOD_EINVAL);
    free(p), free(g), free(want), free(m), free(v), free(lr);
}

static void test_clip(void)
{
    size_t n0 = 0, n1 = 0, nn;
    float *g0 = ref_f32("clip/g0", &n0), *g1 = ref_f32("clip/g1", &n1);
    float *o0 = ref_f32("clip/out0", &n0), *o1 = ref_f32("clip/out1", &n1);
    float *norm = ref_f32("clip/norm", &nn);
    if (g0 && g1 && o0 && o1 && norm) {
        float *g = malloc((n0 + n1) * sizeof *g), *want = malloc((n0 + n1) * sizeof *want);
        size_t off[3] = {0, n0, n0 + n1};
        memcpy(g, g0, n0 * sizeof *g), memcpy(g + n0, g1, n1 * sizeof *g);
        memcpy(want, o0, n0 * sizeof *g), memcpy(want + n0, o1, n1 * sizeof *g);
        double got = mood__clip_grad_norm(g, off, 2, 1.0);
        MOOD_CHECK_MSG(close_enough(got, norm[0], 0, 2e-7), "norm %.9g, torch %.9g", got,
                       (double)norm[0]);
        check_same("clipped gradients", g, want, n0 + n1, 4e-7);
        free(g), free(want);
    }
    free(g0), free(g1), free(o0), free(o1), free(norm);
}

static void test_lr_schedules(void)
{
    const cJSON *c, *list = cJSON_GetObjectItemCaseSensitive(cases(), "lr");
    mood_lr_schedule s;
    MOOD_CHECK(list != NULL);
    cJSON_ArrayForEach(c, list)
    {
        size_t n = 0;
        double *want = ref_f64(json_str(c, "key"), &n);
        int warm = (int)json_num(c, "warmup"), total = (int)json_num(c, "total");
        MOOD_CHECK_OK(mood_lr_schedule_parse(&s, json_str(c, "name")));
        for (size_t k = 0; want && k < n; k++) {
            double got = mood_lr_factor(s, (int64_t)k, warm, total);
            MOOD_CHECK_MSG(close_enough(got, want[k], 1e-15, 1e-13), "%s step %zu: %.17g vs %.17g",
                           json_str(c, "key"), k, got, want[k]);
        }
        free(want);
    }
    MOOD_CHECK(mood_lr_schedule_parse(&s, "warmup_stable_decay") == MOOD_EINVAL);
}

/* ----- the fake model ----------------------------------------------------------------------- */

/* pred = B (A x) + (t / 1000) beta with A = W0 + s0 U0 D0, B = W1 + s1 U1 D1 (4 x 4 each),
 * per pixel; the loss and its gradients (in double) as mood_train_loss_fn asks. */
typedef struct fake {
    double W0[16], W1[16], beta[4];
    int nan_at;  /* return a NaN loss from this call on (1-based), 0 never */
    int stop_at; /* call mood_train_request_stop / raise SIGINT at this call */
    int use_signal;
    int calls;
} fake;

static void effective(double *M, const double *W, const mood_train_module *md)
{
    for (int o = 0; o < 4; o++)
        for (int i = 0; i < 4; i++) {
            double s = 0;
            for (int r = 0; r < md->rank; r++)
                s += (double)md->up[o * md->rank + r] * md->down[r * 4 + i];
            M[o * 4 + i] = W[o * 4 + i] + (double)md->scale * s;
        }
}

/* dU += s dM D^T, dD += s U^T dM (times the gradient scale gs). */
static void module_grads(mood_train_module *md, const double *dM, float gs)
{
    for (int o = 0; o < 4; o++)
        for (int r = 0; r < md->rank; r++) {
            double s = 0;
            for (int i = 0; i < 4; i++)
                s += dM[o * 4 + i] * md->down[r * 4 + i];
            md->up_grad[o * md->rank + r] += (float)(gs * md->scale * s);
        }
    for (int r = 0; r < md->rank; r++)
        for (int i = 0; i < 4; i++) {
            double s = 0;
            for (int o = 0; o < 4; o++)
                s += (double)md->up[o * md->rank + r] * dM[o * 4 + i];
            md->down_grad[r * 4 + i] += (float)(gs * md->scale * s);
        }
}

/* One sample's loss (mean squared error) and its contributions to dA and dB. */
static double fake_sample(const fake *f, const mood_train_batch *b, int s, const double *A,
                          const double *Bm, double *dA, double *dB)
{
    size_t hw = (size_t)b->h * b->w, e = 4 * hw;
    double tau = (double)(b->timesteps[s] / 1000.0f), l = 0;
    double coef = 2.0 * b->weights[s] / ((double)b->B * e);
    for (size_t p = 0; p < hw; p++) {
        double x[4], h[4], dy[4];
        for (int c = 0; c < 4; c++)
            x[c] = b->noisy[s * e + c * hw + p];
        for (int o = 0; o < 4; o++) {
            h[o] = 0;
            for (int i = 0; i < 4; i++)
                h[o] += A[o * 4 + i] * x[i];
        }
        for (int o = 0; o < 4; o++) {
            double y = tau * f->beta[o], r;
            for (int i = 0; i < 4; i++)
                y += Bm[o * 4 + i] * h[i];
            r = y - b->target[s * e + o * hw + p];
            l += r * r;
            dy[o] = coef * r;
        }
        for (int i = 0; i < 4; i++) {
            double dh = 0;
            for (int o = 0; o < 4; o++) {
                dh += Bm[o * 4 + i] * dy[o];
                dB[o * 4 + i] += dy[o] * h[i];
            }
            for (int k = 0; k < 4; k++)
                dA[i * 4 + k] += dh * x[k];
        }
    }
    return b->weights[s] * (l / e);
}

static int fake_loss(void *user, const mood_train_batch *b, mood_train_module *mods, size_t n_mods,
                     double *loss_out)
{
    fake *f = user;
    double A[16], Bm[16], dA[16] = {0}, dB[16] = {0}, loss = 0;
    f->calls++;
    if (n_mods != 2 || b->C != 4)
        return mood_error_set(MOOD_EINVAL, "fake model: 2 modules, 4 channels");
    if (f->stop_at && f->calls == f->stop_at) {
        if (f->use_signal)
            raise(f->use_signal);
        else
            mood_train_request_stop();
    }
    effective(A, f->W0, &mods[0]);
    effective(Bm, f->W1, &mods[1]);
    for (int s = 0; s < b->B; s++)
        loss += fake_sample(f, b, s, A, Bm, dA, dB);
    module_grads(&mods[0], dA, b->grad_scale);
    module_grads(&mods[1], dB, b->grad_scale);
    *loss_out = loss / b->B;
    if (f->nan_at && f->calls >= f->nan_at)
        *loss_out = NAN;
    return 0;
}

typedef struct fake_setup {
    fake f;
    float *lat[4][2];
    mood__train_item items[4];
    int32_t ids[77];
    mood__train_data data;
    mood__train_sched sched;
    mood_train_options o;
} fake_setup;

static int fake_prepare(fake_setup *s, const cJSON *c)
{
    const cJSON *sizes = cJSON_GetObjectItemCaseSensitive(cases(), "fake_sizes");
    mood_noise_schedule ns = sd_schedule(json_num(c, "v") ? MOOD_PRED_V : MOOD_PRED_EPSILON);
    size_t n;
    float *w0 = ref_f32("fake/W0", &n), *w1 = ref_f32("fake/W1", &n);
    float *beta = ref_f32("fake/beta", &n);
    memset(s, 0, sizeof *s);
    if (!w0 || !w1 || !beta || !sizes) {
        free(w0), free(w1), free(beta);
        return -1;
    }
    for (int i = 0; i < 16; i++)
        s->f.W0[i] = w0[i], s->f.W1[i] = w1[i];
    for (int i = 0; i < 4; i++)
        s->f.beta[i] = beta[i];
    free(w0), free(w1), free(beta);
    for (int i = 0; i < 4; i++) {
        char key[32];
        const cJSON *hw = cJSON_GetArrayItem(sizes, i);
        snprintf(key, sizeof key, "fake/lat%d", i);
        s->lat[i][0] = ref_f32(key, &n);
        snprintf(key, sizeof key, "fake/latf%d", i);
        s->lat[i][1] = ref_f32(key, &n);
        s->items[i].h = cJSON_GetArrayItem(hw, 0)->valueint;
        s->items[i].w = cJSON_GetArrayItem(hw, 1)->valueint;
        s->items[i].lat[0] = s->lat[i][0];
        s->items[i].lat[1] = s->lat[i][1];
        s->items[i].ids = s->ids;
    }
    s->data =
        (mood__train_data){.items = s->items, .n = 4, .C = 4, .flip = (int)json_num(c, "flip")};
    if (mood__train_sched_init(&s->sched, &ns) != 0)
        return -1;
    mood_train_options_init(&s->o);
    s->o.steps = (int64_t)json_num(c, "steps");
    s->o.batch = (int)json_num(c, "batch");
    s->o.accum = (int)json_num(c, "accum");
    s->o.lr = json_num(c, "lr");
    s->o.weight_decay = json_num(c, "wd");
    s->o.warmup = (int64_t)json_num(c, "warmup");
    s->o.max_grad_norm = json_num(c, "max_norm");
    s->o.min_snr_gamma = json_num(c, "gamma");
    s->o.noise_offset = json_num(c, "offset");
    s->o.ip_noise_gamma = json_num(c, "ip");
    s->o.min_timestep = (int)json_num(c, "tmin");
    s->o.max_timestep = (int)json_num(c, "tmax");
    s->o.flip = (int)json_num(c, "flip");
    s->o.seed = (uint64_t)json_num(c, "seed");
    return mood_lr_schedule_parse(&s->o.lr_schedule, json_str(c, "schedule"));
}

static void fake_dispose(fake_setup *s)
{
    for (int i = 0; i < 4; i++)
        free(s->lat[i][0]), free(s->lat[i][1]);
    mood__train_sched_dispose(&s->sched);
}

/* One trainer run on the fake model: a fresh LoRA (init from the seed; a resumed run then loads
 * the checkpoint over it). *lp_out and *losses belong to the caller. */
static int fake_train(fake_setup *s, mood__lora_params **lp_out, float **losses, int64_t *n)
{
    mood__lora_spec specs[2] = {{"m0.weight", "lora_m0", MOOD_PART_UNET, 2, 4, 4, 1, 1, 2, 1.0},
                                {"m1.weight", "lora_m1", MOOD_PART_UNET, 2, 4, 4, 1, 1, 3, 3.0}};
    mood__lora_params *lp = NULL;
    mood_rng_torch_cpu *g = NULL;
    mood__trainer t;
    int err = mood__lora_params_new(&lp, specs, 2, 1, 1.0);
    if (!err)
        err = mood_rng_torch_cpu_new(&g, s->o.seed);
    if (!err)
        err = mood__lora_params_init(lp, g);
    memset(&t, 0, sizeof t);
    t.o = &s->o;
    t.lp = lp;
    t.data = &s->data;
    t.sched = &s->sched;
    t.g = g;
    t.loss = fake_loss;
    t.loss_user = &s->f;
    if (!err)
        err = mood__trainer_run(&t);
    *losses = t.losses;
    mood_free(t.lrs);
    *n = t.n_losses;
    *lp_out = lp;
    mood_rng_torch_cpu_free(g);
    return err;
}

static void compare_module(const char *name, const char *which, int i, const float *got)
{
    char key[64];
    size_t n = 0;
    double rel;
    float *w;
    snprintf(key, sizeof key, "fake/%s/%s%d", name, which, i);
    if ((w = ref_f32(key, &n)) != NULL) {
        count_diff(got, w, n, &rel);
        MOOD_CHECK_MSG(rel <= 1e-4, "%s: %s%d differs from torch by %.3g", name, which, i, rel);
        printf("     fake %s: %s%d vs torch: max rel %.2g\n", name, which, i, rel);
    }
    free(w);
}

static void test_fake_training(void)
{
    const cJSON *c, *list = cJSON_GetObjectItemCaseSensitive(cases(), "fake");
    MOOD_CHECK(list != NULL);
    cJSON_ArrayForEach(c, list)
    {
        fake_setup s;
        mood__lora_params *lp = NULL;
        float *losses = NULL;
        int64_t n = 0;
        char key[64];
        size_t nr = 0;
        double *want, worst = 0;
        const char *name = json_str(c, "name");
        if (fake_prepare(&s, c) != 0) {
            MOOD_CHECK_MSG(0, "fake fixture %s incomplete", name);
            fake_dispose(&s);
            continue;
        }
        MOOD_CHECK_OK(fake_train(&s, &lp, &losses, &n));
        snprintf(key, sizeof key, "fake/%s/loss", name);
        want = ref_f64(key, &nr);
        MOOD_CHECK(n == (int64_t)nr);
        for (int64_t k = 0; want && k < n && k < (int64_t)nr; k++) {
            worst = fmax(worst, fabs(losses[k] - want[k]) / fabs(want[k]));
            MOOD_CHECK_MSG(close_enough(losses[k], want[k], 1e-7, 2e-5),
                           "%s step %lld: loss %.8g, torch %.8g", name, (long long)k + 1,
                           (double)losses[k], want[k]);
        }
        printf("     fake %s: %lld losses vs torch: max rel %.2g\n", name, (long long)n, worst);
        for (int i = 0; lp && i < 2; i++) {
            compare_module(name, "down", i, lp->mods[i].down);
            compare_module(name, "up", i, lp->mods[i].up);
        }
        free(want);
        mood_free(losses);
        mood__lora_params_free(lp);
        fake_dispose(&s);
    }
}

static int cancel_at(const mood_train_progress *p, void *payload)
{
    return p->done == *(int64_t *)payload;
}

/* Stopped twice (the progress callback, then SIGINT) and resumed: the same bits as without. */
static void test_resume(void)
{
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cases(), "fake"), 0);
    fake_setup s;
    mood__lora_params *a = NULL, *b = NULL;
    float *la = NULL, *lb = NULL;
    int64_t na = 0, nb = 0, stop = 3;
    if (!c || fake_prepare(&s, c) != 0) {
        MOOD_CHECK_MSG(0, "fake fixture incomplete");
        return;
    }
    s.o.steps = 9;
    s.o.checkpoint = scratch_path("resume.ckpt.safetensors");
    MOOD_CHECK_OK(fake_train(&s, &a, &la, &na));
    /* interrupted by the callback at step 3 */
    s.o.progress = cancel_at;
    s.o.progress_payload = &stop;
    MOOD_CHECK(fake_train(&s, &b, &lb, &nb) == MOOD_ECANCELLED && nb == 3);
    mood__lora_params_free(b), mood_free(lb);
    /* resumed, then SIGINT during the second step's loss */
    s.o.progress = NULL;
    s.o.resume = 1;
    s.o.handle_signals = 1;
    s.f.calls = 0;
    s.f.stop_at = 2 * s.o.accum;
    s.f.use_signal = SIGINT;
    MOOD_CHECK(fake_train(&s, &b, &lb, &nb) == MOOD_ECANCELLED && nb == 5);
    MOOD_CHECK(mood_train_stop_signal() == SIGINT); /* the command's exit status is 128 + it */
    mood__lora_params_free(b), mood_free(lb);
    /* resumed, then SIGHUP (a closed terminal or ssh session) the same way */
    s.f.calls = 0;
    s.f.use_signal = SIGHUP;
    MOOD_CHECK(fake_train(&s, &b, &lb, &nb) == MOOD_ECANCELLED && nb == 7);
    MOOD_CHECK(mood_train_stop_signal() == SIGHUP);
    mood__lora_params_free(b), mood_free(lb);
    /* resumed to the end */
    s.f.stop_at = 0;
    s.o.handle_signals = 0;
    MOOD_CHECK_OK(fake_train(&s, &b, &lb, &nb));
    MOOD_CHECK(na == 9 && nb == 9);
    if (a && b && la && lb && na == nb) {
        MOOD_CHECK_MSG(memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0,
                       "resumed parameters differ from the uninterrupted run's");
        MOOD_CHECK(memcmp(la, lb, (size_t)na * sizeof(float)) == 0);
    }
    mood__lora_params_free(b), mood_free(lb);
    /* a checkpoint of another batch size is refused */
    s.o.batch = 1;
    MOOD_CHECK(fake_train(&s, &b, &lb, &nb) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "batch") != NULL);
    mood__lora_params_free(a), mood__lora_params_free(b);
    mood_free(la), mood_free(lb);
    fake_dispose(&s);
}

static void test_nan_stop(void)
{
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cases(), "fake"), 1);
    fake_setup s;
    mood__lora_params *lp = NULL;
    float *losses = NULL;
    int64_t n = 0;
    mood_st_file *f = NULL;
    if (!c || fake_prepare(&s, c) != 0) {
        MOOD_CHECK_MSG(0, "fake fixture incomplete");
        return;
    }
    s.o.checkpoint = scratch_path("nan.ckpt.safetensors");
    s.o.checkpoint_every = 2;
    s.f.nan_at = 5; /* batch 1, accum 1: the fifth step */
    MOOD_CHECK(fake_train(&s, &lp, &losses, &n) == MOOD_EINVAL && n == 4);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "step 5") && strstr(mood_error_last(), "nan") &&
                       strstr(mood_error_last(), "step 4") &&
                       strstr(mood_error_last(), "nan.ckpt.safetensors"),
                   "message: %s", mood_error_last());
    for (size_t i = 0; lp && i < lp->n_params; i++)
        MOOD_CHECK(isfinite(lp->params[i]));
    MOOD_CHECK_OK(mood_st_open(&f, s.o.checkpoint));
    if (f)
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "mood.train.step"), "4") == 0);
    mood_st_close(f);
    mood__lora_params_free(lp), mood_free(losses);
    /* and without any checkpoint */
    s.o.checkpoint = NULL;
    s.f.calls = 0;
    s.f.nan_at = 1;
    MOOD_CHECK(fake_train(&s, &lp, &losses, &n) == MOOD_EINVAL && n == 0);
    MOOD_CHECK(strstr(mood_error_last(), "no checkpoint") != NULL);
    mood__lora_params_free(lp), mood_free(losses);
    fake_dispose(&s);
}

static void test_alloc_failures(void)
{
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cases(), "fake"), 0);
    const char *paths[1] = {fixture("train/board")};
    mood_board_options o;
    fake_setup s;
    int ok_board = 0, ok_train = 0;
    mood_board_options_init(&o);
    o.resolution = 64;
    for (long n = 1; n < 5000 && !ok_board; n++) {
        mood_board *b = NULL;
        int err;
        mood__alloc_fail_at(n);
        err = mood_board_load(&b, paths, 1, &o);
        mood__alloc_fail_at(0);
        MOOD_CHECK_MSG(err == 0 || err == MOOD_ENOMEM, "board, n=%ld: %d %s", n, err,
                       mood_error_last());
        ok_board = err == 0;
        mood_board_free(b);
    }
    MOOD_CHECK(ok_board);
    if (!c || fake_prepare(&s, c) != 0) {
        MOOD_CHECK_MSG(0, "fake fixture incomplete");
        return;
    }
    s.o.steps = 3;
    s.o.checkpoint = scratch_path("alloc.ckpt.safetensors");
    s.o.checkpoint_every = 1;
    for (long n = 1; n < 5000 && !ok_train; n++) {
        mood__lora_params *lp = NULL;
        float *losses = NULL;
        int64_t k = 0;
        int err;
        s.o.resume = n % 2 == 0 && mood_path_exists(s.o.checkpoint);
        mood__alloc_fail_at(n);
        err = fake_train(&s, &lp, &losses, &k);
        mood__alloc_fail_at(0);
        MOOD_CHECK_MSG(err == 0 || err == MOOD_ENOMEM, "train, n=%ld: %d %s", n, err,
                       mood_error_last());
        ok_train = err == 0 && !s.o.resume;
        mood__lora_params_free(lp);
        mood_free(losses);
    }
    MOOD_CHECK(ok_train);
    fake_dispose(&s);
}

/* ----- a whole run on a tiny model ---------------------------------------------------------- */

/* A stand-in for the UNet's part: a quadratic in the LoRA values, so they move. */
static int standin_loss(void *user, const mood_train_batch *b, mood_train_module *mods, size_t n,
                        double *loss_out)
{
    double loss = 0;
    ++*(int *)user;
    for (size_t i = 0; i < n; i++) {
        mood_train_module *md = &mods[i];
        size_t nd = (size_t)md->rank * (size_t)(md->in * md->kh * md->kw);
        for (size_t k = 0; k < nd; k++) {
            loss += 1e-3 * (double)md->down[k] * md->down[k];
            md->down_grad[k] += b->grad_scale * 2e-3f * md->down[k];
        }
        for (size_t k = 0; k < (size_t)md->out * md->rank; k++) {
            loss += (md->up[k] - 0.01) * (md->up[k] - 0.01);
            md->up_grad[k] += b->grad_scale * 2.0f * (md->up[k] - 0.01f);
        }
    }
    *loss_out = loss;
    return 0;
}

static void check_output_file(const char *path)
{
    mood_st_file *f = NULL;
    const mood_st_tensor *t;
    const char *tags;
    MOOD_CHECK_OK(mood_st_open(&f, path));
    if (!f)
        return;
    tags = mood_st_meta_get(f, "ss_tag_frequency");
    MOOD_CHECK(mood_st_count(f) % 3 == 0 && mood_st_count(f) > 30);
#define META_IS(k, v)                                                                              \
    MOOD_CHECK_MSG(mood_st_meta_get(f, k) && strcmp(mood_st_meta_get(f, k), v) == 0, "%s = %s", k, \
                   mood_st_meta_get(f, k) ? mood_st_meta_get(f, k) : "(none)")
    META_IS("ss_num_train_images", "4");
    META_IS("ss_network_dim", "16");
    META_IS("ss_network_alpha", "8.0");
    META_IS("ss_learning_rate", "0.01");
    META_IS("ss_steps", "4");
    META_IS("ss_resolution", "(64, 64)");
    META_IS("ss_output_name", "tiny style");
    META_IS("modelspec.trigger_phrase", "sks");
    META_IS("ss_training_comment", "made by test_train");
    META_IS("ss_network_module", "networks.lora");
#undef META_IS
    MOOD_CHECK_MSG(tags && strstr(tags, "{\"board\": {\"red fox\": 1, \"sks style\": 1, "
                                        "\"sks\": 3, \"a picture\": 3}}"),
                   "ss_tag_frequency %s", tags ? tags : "(none)");
    MOOD_CHECK(mood_st_find(f, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"));
    MOOD_CHECK(mood_st_find(f, "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"));
    MOOD_CHECK(mood_st_find(f, "lora_unet_down_blocks_0_resnets_0_conv1.alpha"));
    t = mood_st_find(f, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight");
    MOOD_CHECK(t && t->dtype == MOOD_DTYPE_F16 && t->ndim == 4 && t->shape[2] == 3);
    mood_st_close(f);
}

static void test_train_run(void)
{
    mood_train_options o;
    const char *board[1] = {fixture("train/board")};
    mood_model *m = NULL;
    mood_image *png = NULL;
    unsigned char *csv;
    int calls = 0;
    size_t unmatched = 99, lines = 0, size = 0;
    mood_train_options_init(&o);
    o.model = fixture("pipeline/tiny-sd");
    o.board = board;
    o.n_board = 1;
    o.board_opts.resolution = 64;
    o.board_opts.trigger = "sks";
    o.name = "tiny style";
    o.output = scratch_path("tiny.safetensors");
    o.loss_csv = scratch_path("tiny.csv");
    o.loss_png = scratch_path("tiny.png");
    o.steps = 4;
    o.batch = 2;
    o.targets = MOOD_TRAIN_ALL;
    o.train_te = 1;
    o.lr = 1e-2;
    o.comment = "made by test_train";
    o.loss = standin_loss;
    o.loss_user = &calls;
    MOOD_CHECK_OK(mood_train_run(&o));
    MOOD_CHECK(calls == 4);
    check_output_file(o.output);
    /* the file loads back onto the model with every key matched */
    MOOD_CHECK_OK(mood_model_open(&m, o.model, NULL));
    if (m) {
        mood_weighted_adapter wa = {.path = o.output, .unet = 1.0, .te = 1.0};
        MOOD_CHECK_OK(mood_model_set_adapters(m, &wa, 1, MOOD_LORA_RUNTIME, &unmatched));
        MOOD_CHECK_MSG(unmatched == 0, "%zu keys unmatched", unmatched);
    }
    mood_model_free(m);
    csv = read_file(o.loss_csv, &size);
    for (size_t i = 0; csv && i < size; i++)
        lines += csv[i] == '\n';
    MOOD_CHECK(csv && lines == 5 && strncmp((char *)csv, "step,loss,loss_avg,lr\n", 22) == 0);
    free(csv);
    MOOD_CHECK_OK(mood_image_load(&png, o.loss_png));
    MOOD_CHECK(png && png->width == 800 && png->height == 400);
    mood_image_free(png);
}

/* The text encoder's LoRA factors of a run with the built-in loss (--te): every module is
 * written under kohya's name and its up factor (zero at init) has moved, the text encoder's
 * learning rate is in the metadata, and the file loads back with every key matched. One image at
 * 64 x 64: the VAE is slow under sanitizers. */
static void test_train_te(void)
{
    static const char *const subs[] = {"self_attn_q_proj",   "self_attn_k_proj", "self_attn_v_proj",
                                       "self_attn_out_proj", "mlp_fc1",          "mlp_fc2"};
    mood_train_options o;
    const char *board[1] = {fixture("train/board/d.bmp")};
    mood_st_file *f = NULL;
    mood_model *m = NULL;
    size_t unmatched = 99, te_keys = 0;
    mood_train_options_init(&o);
    o.model = fixture("pipeline/tiny-sd");
    o.board = board;
    o.n_board = 1;
    o.board_opts.resolution = 64;
    o.output = scratch_path("te.safetensors");
    o.steps = 2;
    o.targets = MOOD_TRAIN_ATTN;
    o.train_te = 1;
    o.lr = 1e-2;
    o.te_lr = 5e-3;
    o.rank = 4;
    o.alpha = 4;
    MOOD_CHECK_OK(mood_train_run(&o));
    MOOD_CHECK_OK(mood_st_open(&f, o.output));
    if (!f)
        return;
    for (size_t i = 0; i < mood_st_count(f); i++)
        te_keys += strncmp(mood_st_at(f, i)->name, "lora_te_", 8) == 0;
    MOOD_CHECK_MSG(te_keys == 2 * 6 * 3, "%zu text encoder keys", te_keys);
    for (int l = 0; l < 2; l++) {
        for (int k = 0; k < 6; k++) {
            char name[160];
            const mood_st_tensor *t;
            float up[256]; /* the tiny encoder's largest: fc1, 32 x rank 4 */
            double sum = 0;
            snprintf(name, sizeof name, "lora_te_text_model_encoder_layers_%d_%s.lora_up.weight", l,
                     subs[k]);
            t = mood_st_find(f, name);
            MOOD_CHECK_MSG(t && mood_st_numel(t) <= (int64_t)(sizeof up / sizeof up[0]) &&
                               mood_st_to_f32(up, t) == 0,
                           "%s missing", name);
            for (int64_t j = 0; t && j < mood_st_numel(t); j++)
                sum += fabs(up[j]);
            MOOD_CHECK_MSG(sum > 0, "%s did not train", name);
        }
    }
#define META_IS(k, v)                                                                              \
    MOOD_CHECK_MSG(mood_st_meta_get(f, k) && strcmp(mood_st_meta_get(f, k), v) == 0, "%s = %s", k, \
                   mood_st_meta_get(f, k) ? mood_st_meta_get(f, k) : "(none)")
    META_IS("ss_text_encoder_lr", "0.005");
    META_IS("ss_unet_lr", "0.01");
    META_IS("ss_network_train_unet_only", "False");
#undef META_IS
    mood_st_close(f);
    MOOD_CHECK_OK(mood_model_open(&m, o.model, NULL));
    if (m) {
        mood_weighted_adapter wa = {.path = o.output, .unet = 1.0, .te = 1.0};
        MOOD_CHECK_OK(mood_model_set_adapters(m, &wa, 1, MOOD_LORA_RUNTIME, &unmatched));
        MOOD_CHECK_MSG(unmatched == 0, "%zu keys unmatched", unmatched);
    }
    mood_model_free(m);
}

MOOD_TEST_MAIN(MOOD_T(test_rng_state), MOOD_T(test_schedule_tables), MOOD_T(test_draws),
               MOOD_T(test_sample_prediction), MOOD_T(test_init), MOOD_T(test_adamw),
               MOOD_T(test_clip), MOOD_T(test_lr_schedules), MOOD_T(test_fake_training),
               MOOD_T(test_resume), MOOD_T(test_nan_stop), MOOD_T(test_alloc_failures),
               MOOD_T(test_train_run), MOOD_T(test_train_te))
