/*
 * test_unet_fullgrad.c: the gradients of every UNet weight (mood_unet_backward_ex in
 * mood/unet.h, full-parameter training) against torch autograd.
 *
 * Fixtures (tests/fixtures/unet_fullgrad/, tools/make_fixtures_unet_fullgrad.py): a tiny SD1-like
 * UNet (conv proj_in/out, cross-attention down/up blocks, mid block) and a tiny SDXL-like
 * pixel-space one (Linear projections, per-block heads, two transformer blocks at the lowest
 * level and in the mid block, text_time added embedding, odd 10 x 6 input, non-unit resnet output
 * scales), the loss sum(out * R) and torch's float64 gradient of every parameter and of the
 * context. Every one of mood's weights must have a reference gradient (and the reference no
 * parameter mood lacks); each weight's gradient must match within TOL_EACH of its own largest
 * reference value, all of them within TOL of the largest over the model, the context's within
 * TOL.
 *
 * Also: gradient checkpointing gives the same bits; 1 and 2 threads give the same bits (on the
 * fixture and on a larger batch); gradients accumulate, a NULL entry is skipped and a subset gives
 * the same bits as all; mood_unet_backward's side path and context gradients are unchanged by
 * asking for the weights'; a dense side path with a zero ΔW and scale 2 on a convolution and a
 * Linear gets exactly twice the weight's gradient.
 */
#include "harness.h"

#include "fixture_tensors.h"

#include <omp.h>

#include "common/common.h"

#include "mood/safetensors.h"
#include "mood/unet.h"

#define TOL      1e-4
#define TOL_EACH 2e-4

/* One reference case: inputs, loss weights and torch's results. */
typedef struct fref {
    mood_st_file *f;
    float *x, *t, *ctx, *te, *ids, *R, *out, *dctx;
    size_t n_out, n_ctx;
    int B, H, W, L;
} fref;

static void fref_free(fref *r)
{
    free(r->x), free(r->t), free(r->ctx), free(r->te), free(r->ids), free(r->R), free(r->out);
    free(r->dctx);
    mood_st_close(r->f);
}

static int fref_load(fref *r, const char *rel)
{
    const mood_st_tensor *tx, *tc;
    memset(r, 0, sizeof *r);
    if (mood_st_open(&r->f, fixture(rel)) != 0)
        return -1;
    r->x = fixture_floats(r->f, "x", NULL), r->t = fixture_floats(r->f, "t", NULL);
    r->ctx = fixture_floats(r->f, "context", &r->n_ctx);
    r->te = fixture_floats(r->f, "text_embeds", NULL),
    r->ids = fixture_floats(r->f, "time_ids", NULL);
    r->R = fixture_floats(r->f, "R", NULL), r->out = fixture_floats(r->f, "out", &r->n_out);
    r->dctx = fixture_floats(r->f, "dcontext", NULL);
    tx = mood_st_find(r->f, "x"), tc = mood_st_find(r->f, "context");
    if (!r->x || !r->t || !r->ctx || !r->R || !r->out || !r->dctx || !tx || !tc || tx->ndim != 4 ||
        tc->ndim != 3)
        return -1;
    r->B = (int)tx->shape[0], r->H = (int)tx->shape[2], r->W = (int)tx->shape[3];
    r->L = (int)tc->shape[1];
    return 0;
}

/* Zeroed gradient buffers for every weight of m (wanted[i] 0: that entry NULL). */
typedef struct wgrads {
    size_t n;
    float **g;
    size_t *numel;
} wgrads;

static int wgrads_new(wgrads *w, mood_unet *m, const int *wanted)
{
    w->n = mood_unet_weight_count(m);
    w->g = calloc(w->n, sizeof *w->g), w->numel = calloc(w->n, sizeof *w->numel);
    if (!w->g || !w->numel)
        return -1;
    for (size_t i = 0; i < w->n; i++) {
        w->numel[i] = mood_unet_weight_numel(m, i);
        if (wanted && !wanted[i])
            continue;
        if (!w->numel[i] || !(w->g[i] = calloc(w->numel[i], sizeof(float))))
            return -1;
    }
    return 0;
}

static void wgrads_free(wgrads *w)
{
    for (size_t i = 0; w->g && i < w->n; i++)
        free(w->g[i]);
    free(w->g), free(w->numel);
    memset(w, 0, sizeof *w);
}

/* Whether a and b hold the same bits in every entry both have. */
static int wgrads_same(const wgrads *a, const wgrads *b)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->g[i] && b->g[i] && memcmp(a->g[i], b->g[i], a->numel[i] * sizeof(float)) != 0)
            return 0;
    return 1;
}

/* One training step: forward_train, then backward_ex with w's buffers (dctx may be NULL). */
static int step(const mood_unet *m, mood_unet_tape *tape, const fref *r, const float *x, int B,
                int H, int W, float *out, const wgrads *w, float *dctx)
{
    int rc = mood_unet_forward_train(m, tape, out, x, r->t, r->ctx, B, H, W, r->L, r->te, r->ids);
    if (rc == 0)
        rc = mood_unet_backward_ex(m, tape, r->R, NULL, 0, dctx, w->g);
    MOOD_CHECK_MSG(rc == 0, "training step: %s", mood_error_last());
    return rc;
}

static int ref_step(const mood_unet *m, mood_unet_tape *tape, const fref *r, float *out,
                    const wgrads *w, float *dctx)
{
    return step(m, tape, r, r->x, r->B, r->H, r->W, out, w, dctx);
}

/* Max |a - b| and max |b| over n, accumulated into *d and *scale. */
static void abs_err(const float *a, const float *b, size_t n, double *d, double *scale)
{
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        *d = e > *d || isnan(e) ? e : *d;
        *scale = fabs(b[i]) > *scale ? fabs(b[i]) : *scale;
    }
}

/* Every weight's gradient against the reference's grad.<name>; the reference must have no
 * parameter mood lacks. */
static void compare_weights(const char *label, mood_unet *m, const fref *r, const wgrads *w)
{
    double all = 0, all_scale = 0, worst = 0;
    const char *worst_name = "";
    const char *meta = mood_st_meta_get(r->f, "params");
    char key[256];
    MOOD_CHECK_MSG(meta && (size_t)atol(meta) == w->n, "%s: %zu weights in mood, %s in torch",
                   label, w->n, meta ? meta : "?");
    for (size_t i = 0; i < w->n; i++) {
        const char *name = mood_unet_weight_name(m, i);
        size_t n = 0;
        double d = 0, scale = 0, e;
        float *ref;
        snprintf(key, sizeof key, "grad.%s", name);
        ref = fixture_floats(r->f, key, &n);
        MOOD_CHECK_MSG(ref && n == w->numel[i], "%s: %s: no reference gradient of %zu values",
                       label, name, w->numel[i]);
        if (!ref || n != w->numel[i]) {
            free(ref);
            continue;
        }
        abs_err(w->g[i], ref, n, &d, &scale);
        e = scale > 0 ? d / scale : d;
        MOOD_CHECK_MSG(e <= TOL_EACH, "%s: %s: error %.3e of its largest gradient %.3e", label,
                       name, e, scale);
        if (e > worst || isnan(e))
            worst = e, worst_name = name;
        all = d > all || isnan(d) ? d : all;
        all_scale = scale > all_scale ? scale : all_scale;
        free(ref);
    }
    all = all_scale > 0 ? all / all_scale : all;
    MOOD_CHECK_MSG(all <= TOL, "%s: weight gradients: error %.3e of the largest", label, all);
    printf("     %-5s %zu weights: error %.2e of the largest gradient (%.2f); worst weight "
           "%.2e of its own (%s)\n",
           label, w->n, all, all_scale, worst, worst_name);
}

static void compare_dctx(const char *label, const fref *r, const float *dctx)
{
    double d = 0, scale = 0;
    abs_err(dctx, r->dctx, r->n_ctx, &d, &scale);
    d = scale > 0 ? d / scale : d;
    MOOD_CHECK_MSG(d <= TOL, "%s: dcontext: relative error %.3e", label, d);
    printf("     %-5s dcontext %.2e\n", label, d);
}

/* Loads model and reference; 0 when both are usable. */
static int open_case(const char *name, mood_unet **m, fref *r)
{
    char rel[128];
    *m = NULL;
    snprintf(rel, sizeof rel, "unet_fullgrad/ref_%s.safetensors", name);
    MOOD_CHECK(fref_load(r, rel) == 0);
    snprintf(rel, sizeof rel, "unet_fullgrad/%s", name);
    MOOD_CHECK_OK(mood_unet_load(m, fixture(rel)));
    return *m && r->dctx ? 0 : -1;
}

/* Against torch, with the full tape and with checkpointing (the same bits). */
static void check_model(const char *name)
{
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL, *ckpt = NULL;
    fref r;
    wgrads w1 = {0}, w2 = {0};
    float *out = NULL, *dctx = NULL, *dctx2 = NULL;
    if (open_case(name, &m, &r) != 0)
        goto done;
    out = calloc(r.n_out, sizeof *out);
    dctx = calloc(r.n_ctx, sizeof *dctx), dctx2 = calloc(r.n_ctx, sizeof *dctx2);
    MOOD_CHECK(out && dctx && dctx2 && wgrads_new(&w1, m, NULL) == 0 &&
               wgrads_new(&w2, m, NULL) == 0);
    MOOD_CHECK_OK(mood_unet_tape_new(&tape, 0));
    MOOD_CHECK_OK(mood_unet_tape_new(&ckpt, MOOD_UNET_TAPE_CHECKPOINT));
    if (!out || !dctx || !dctx2 || !w1.g || !w2.g || !tape || !ckpt ||
        ref_step(m, tape, &r, out, &w1, dctx) != 0)
        goto done;
    {
        double d = 0, scale = 0;
        abs_err(out, r.out, r.n_out, &d, &scale);
        MOOD_CHECK_MSG(d <= TOL * scale, "%s: forward: error %.3e", name, d / scale);
    }
    compare_weights(name, m, &r, &w1);
    compare_dctx(name, &r, dctx);
    if (ref_step(m, ckpt, &r, out, &w2, dctx2) == 0) {
        MOOD_CHECK_MSG(wgrads_same(&w1, &w2), "%s: checkpointed weight gradients differ", name);
        MOOD_CHECK(memcmp(dctx, dctx2, r.n_ctx * sizeof *dctx) == 0);
    }
done:
    mood_unet_tape_free(tape);
    mood_unet_tape_free(ckpt);
    wgrads_free(&w1), wgrads_free(&w2);
    free(out), free(dctx), free(dctx2);
    mood_unet_free(m);
    fref_free(&r);
}

static void test_sd1(void)
{
    check_model("sd1");
}

static void test_xl(void)
{
    check_model("xl");
}

/* Uniform values in [-1, 1) from a fixed LCG. */
static void fill(float *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
    }
}

/* One step on nthreads threads (the caller's setting restored). */
static int threaded_step(int nthreads, const mood_unet *m, mood_unet_tape *tape, const fref *r,
                         const float *x, int B, int H, int W, float *out, const wgrads *w)
{
    int saved = omp_get_max_threads(), rc;
    omp_set_num_threads(nthreads);
    rc = step(m, tape, r, x, B, H, W, out, w, NULL);
    omp_set_num_threads(saved);
    return rc;
}

/* 1 and 2 threads: the same bits, on a 32 x 24 input (so the ops split their work more).
 * The loss weights R must be as large as the output: a fresh R replaces the fixture's. */
static void test_threads(void)
{
    const char *names[] = {"sd1", "xl"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        mood_unet *m = NULL;
        mood_unet_tape *tape = NULL;
        fref r;
        wgrads w1 = {0}, w2 = {0};
        int B = 2, H = 32, W = 24, C = 0;
        float *x = NULL, *out = NULL, *R = NULL;
        if (open_case(names[k], &m, &r) != 0)
            goto next;
        C = mood_unet_get_config(m)->in_channels;
        x = malloc((size_t)B * C * H * W * sizeof *x);
        out = malloc((size_t)B * C * H * W * sizeof *out);
        R = malloc((size_t)B * C * H * W * sizeof *R);
        MOOD_CHECK_OK(mood_unet_tape_new(&tape, 0));
        if (!x || !out || !R || !tape || wgrads_new(&w1, m, NULL) != 0 ||
            wgrads_new(&w2, m, NULL) != 0)
            goto next;
        fill(x, (size_t)B * C * H * W, 1), fill(R, (size_t)B * C * H * W, 2);
        free(r.R);
        r.R = R, R = NULL;
        if (threaded_step(1, m, tape, &r, x, B, H, W, out, &w1) == 0 &&
            threaded_step(2, m, tape, &r, x, B, H, W, out, &w2) == 0)
            MOOD_CHECK_MSG(wgrads_same(&w1, &w2), "%s: 1 and 2 threads differ", names[k]);
    next:
        mood_unet_tape_free(tape);
        wgrads_free(&w1), wgrads_free(&w2);
        free(x), free(out), free(R);
        mood_unet_free(m);
        fref_free(&r);
    }
}

/* Accumulation, NULL entries, a subset, and the other gradients unchanged by asking for these. */
static void test_accumulate(void)
{
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL;
    fref r;
    wgrads all = {0}, some = {0};
    int *wanted = NULL;
    float *out = NULL, *dctx = NULL, *dctx2 = NULL;
    if (open_case("xl", &m, &r) != 0)
        goto done;
    wanted = calloc(mood_unet_weight_count(m), sizeof *wanted);
    out = calloc(r.n_out, sizeof *out);
    dctx = calloc(r.n_ctx, sizeof *dctx), dctx2 = calloc(r.n_ctx, sizeof *dctx2);
    MOOD_CHECK_OK(mood_unet_tape_new(&tape, 0));
    if (!wanted || !out || !dctx || !dctx2 || !tape)
        goto done;
    for (size_t i = 0; i < mood_unet_weight_count(m); i += 3)
        wanted[i] = 1;
    if (wgrads_new(&all, m, NULL) != 0 || wgrads_new(&some, m, wanted) != 0 ||
        ref_step(m, tape, &r, out, &all, dctx) != 0)
        goto done;
    /* a subset: the same bits; the same tape again: twice the values (a convolution adds its
     * samples' parts one by one, so not exactly x + x) */
    MOOD_CHECK_OK(mood_unet_backward_ex(m, tape, r.R, NULL, 0, NULL, some.g));
    MOOD_CHECK_MSG(wgrads_same(&all, &some), "a subset of the weights");
    MOOD_CHECK_OK(mood_unet_backward_ex(m, tape, r.R, NULL, 0, NULL, some.g));
    for (size_t i = 0; i < all.n; i++) {
        double d = 0, scale = 0;
        if (!some.g[i])
            continue;
        for (size_t k = 0; k < all.numel[i]; k++)
            some.g[i][k] *= 0.5f;
        abs_err(some.g[i], all.g[i], all.numel[i], &d, &scale);
        MOOD_CHECK_MSG(d <= 1e-6 * scale, "%s: accumulated: error %.3e",
                       mood_unet_weight_name(m, i), d / scale);
    }
    /* without weight gradients: the same context gradient */
    MOOD_CHECK_OK(mood_unet_backward(m, tape, r.R, NULL, 0, dctx2));
    MOOD_CHECK(memcmp(dctx, dctx2, r.n_ctx * sizeof *dctx) == 0);
done:
    mood_unet_tape_free(tape);
    wgrads_free(&all), wgrads_free(&some);
    free(wanted), free(out), free(dctx), free(dctx2);
    mood_unet_free(m);
    fref_free(&r);
}

/* Dense side paths with ΔW = 0 and scale 2 on a convolution and a Linear leave the forward
 * unchanged and get exactly 2 x the weight's gradient (the scale is a power of two); the weight
 * gradients still match torch's, and the side path gradients are the same bits with and without
 * them. */
static void test_side_paths(void)
{
    static const char *names[] = {"down_blocks.1.resnets.0.conv1.weight",
                                  "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"};
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL;
    fref r;
    wgrads w = {0};
    mood_side_path paths[2];
    mood_side_grad sg[2] = {{0}}, sg2[2] = {{0}};
    float *zero[2] = {NULL, NULL}, *out = NULL;
    long idx[2] = {-1, -1};
    if (open_case("sd1", &m, &r) != 0)
        goto done;
    out = calloc(r.n_out, sizeof *out);
    MOOD_CHECK_OK(mood_unet_tape_new(&tape, 0));
    if (!out || !tape || wgrads_new(&w, m, NULL) != 0)
        goto done;
    for (int p = 0; p < 2; p++) {
        for (size_t i = 0; i < w.n; i++)
            if (strcmp(mood_unet_weight_name(m, i), names[p]) == 0)
                idx[p] = (long)i;
        MOOD_CHECK_MSG(idx[p] >= 0, "no weight %s", names[p]);
        if (idx[p] < 0)
            goto done;
        zero[p] = calloc(w.numel[idx[p]], sizeof(float));
        sg[p].dup = calloc(w.numel[idx[p]], sizeof(float));
        sg2[p].dup = calloc(w.numel[idx[p]], sizeof(float));
        if (!zero[p] || !sg[p].dup || !sg2[p].dup)
            goto done;
        paths[p] = (mood_side_path){names[p], NULL, zero[p], 0, 2.0f};
    }
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, paths, 2));
    MOOD_CHECK_OK(
        mood_unet_forward_train(m, tape, out, r.x, r.t, r.ctx, r.B, r.H, r.W, r.L, r.te, r.ids));
    MOOD_CHECK_OK(mood_unet_backward_ex(m, tape, r.R, sg, 2, NULL, w.g));
    MOOD_CHECK_OK(mood_unet_backward(m, tape, r.R, sg2, 2, NULL));
    compare_weights("sd1+paths", m, &r, &w);
    for (int p = 0; p < 2; p++) {
        int same = 1;
        for (size_t k = 0; k < w.numel[idx[p]]; k++)
            same &= sg[p].dup[k] == 2.0f * w.g[idx[p]][k];
        MOOD_CHECK_MSG(same, "%s: the dense path's gradient is not 2 x the weight's", names[p]);
        MOOD_CHECK(memcmp(sg[p].dup, sg2[p].dup, w.numel[idx[p]] * sizeof(float)) == 0);
    }
done:
    mood_unet_tape_free(tape);
    wgrads_free(&w);
    for (int p = 0; p < 2; p++)
        free(zero[p]), free(sg[p].dup), free(sg2[p].dup);
    free(out);
    mood_unet_free(m);
    fref_free(&r);
}

MOOD_TEST_MAIN(MOOD_T(test_sd1), MOOD_T(test_xl), MOOD_T(test_threads), MOOD_T(test_accumulate),
               MOOD_T(test_side_paths))
