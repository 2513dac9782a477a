/*
 * test_unet_backward.c: the UNet's training passes (mood_unet_forward_train, mood_unet_backward
 * in mood/unet.h) against torch autograd.
 *
 * Fixtures (tests/fixtures/unet_backward/, tools/make_fixtures_unet_backward.py): the tiny
 * SD1-like (conv proj_in/out), SD2-like (Linear projections, odd 12x10 latent, general nearest
 * upsampling) and SDXL-like (text_time) UNets of tests/fixtures/unet/ with a LoRA side path on
 * every Linear and Conv2d, two dense (rank 0) paths and a second path on one weight; the loss
 * sum(out * R) and torch's float64 gradients of every factor and of the context. The factor
 * gradients must match within 1e-4 of the largest reference factor gradient, and each factor
 * within 5e-4 of its own largest; the context gradient within 1e-4. Both with the tape keeping
 * everything and with gradient checkpointing (which must give the same bits). Central finite
 * differences of the loss (in double) confirm three factor entries per model. Also: gradients
 * accumulate, NULL gradients are skipped, the tape refuses a changed model, and the memory estimate
 * matches what a step takes.
 */
#include "harness.h"

#include "fixture_tensors.h"

#include "common/common.h"

#include "mood/safetensors.h"
#include "mood/unet.h"

#define TOL 1e-4

/* One reference case: inputs, side paths, loss weights and torch's results. */
typedef struct bref {
    mood_st_file *f;
    float *x, *t, *ctx, *te, *ids, *R, *out, *dctx;
    size_t n_out, n_ctx;
    int B, H, W, L;
    size_t n;              /* side paths */
    mood_side_path *paths; /* factors owned here (down, up cast from the floats below) */
    float **down, **up, **gdown, **gup;
    size_t *n_down, *n_up;
} bref;

static void bref_free(bref *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->down[i]), free(r->up[i]), free(r->gdown[i]), free(r->gup[i]);
    }
    free(r->down), free(r->up), free(r->gdown), free(r->gup), free(r->n_down), free(r->n_up);
    free(r->paths);
    free(r->x), free(r->t), free(r->ctx), free(r->te), free(r->ids), free(r->R), free(r->out);
    free(r->dctx);
    mood_st_close(r->f);
}

static int load_paths(bref *r)
{
    const char *v = mood_st_meta_get(r->f, "paths");
    char k[64];
    r->n = v ? (size_t)atoi(v) : 0;
    if (!r->n)
        return -1;
    r->paths = calloc(r->n, sizeof *r->paths);
    r->down = calloc(r->n, sizeof *r->down), r->up = calloc(r->n, sizeof *r->up);
    r->gdown = calloc(r->n, sizeof *r->gdown), r->gup = calloc(r->n, sizeof *r->gup);
    r->n_down = calloc(r->n, sizeof *r->n_down), r->n_up = calloc(r->n, sizeof *r->n_up);
    if (!r->paths || !r->down || !r->up || !r->gdown || !r->gup || !r->n_down || !r->n_up)
        return -1;
    for (size_t i = 0; i < r->n; i++) {
        mood_side_path *p = &r->paths[i];
        snprintf(k, sizeof k, "path.%zu.weight", i);
        p->weight = mood_st_meta_get(r->f, k);
        snprintf(k, sizeof k, "path.%zu.rank", i);
        p->rank = atoi(mood_st_meta_get(r->f, k) ? mood_st_meta_get(r->f, k) : "-1");
        snprintf(k, sizeof k, "path.%zu.scale", i);
        p->scale = (float)atof(mood_st_meta_get(r->f, k) ? mood_st_meta_get(r->f, k) : "0");
        snprintf(k, sizeof k, "path.%zu.down", i);
        r->down[i] = fixture_floats(r->f, k, &r->n_down[i]);
        snprintf(k, sizeof k, "path.%zu.up", i);
        r->up[i] = fixture_floats(r->f, k, &r->n_up[i]);
        snprintf(k, sizeof k, "grad.%zu.down", i);
        r->gdown[i] = fixture_floats(r->f, k, NULL);
        snprintf(k, sizeof k, "grad.%zu.up", i);
        r->gup[i] = fixture_floats(r->f, k, NULL);
        p->down = r->down[i], p->up = r->up[i];
        if (!p->weight || p->rank < 0 || !r->up[i] || !r->gup[i] ||
            (p->rank > 0 && (!r->down[i] || !r->gdown[i])))
            return -1;
    }
    return 0;
}

static int bref_load(bref *r, const char *rel)
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
    return load_paths(r);
}

/* Max |a - b| / max |b| over n. */
static double rel_err(const float *a, const float *b, size_t n)
{
    double d = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        d = e > d || isnan(e) ? e : d;
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    }
    return scale > 0 ? d / scale : d;
}

/* Gradient buffers for every path (zeroed), as mood_unet_backward takes them. */
typedef struct grads {
    mood_side_grad *g;
    float *dctx;
    size_t n;
} grads;

static int grads_new(grads *gs, const bref *r)
{
    gs->n = r->n;
    gs->g = calloc(r->n, sizeof *gs->g);
    gs->dctx = calloc(r->n_ctx, sizeof *gs->dctx);
    if (!gs->g || !gs->dctx)
        return -1;
    for (size_t i = 0; i < r->n; i++) {
        gs->g[i].dup = calloc(r->n_up[i], sizeof(float));
        gs->g[i].ddown = r->n_down[i] ? calloc(r->n_down[i], sizeof(float)) : NULL;
        if (!gs->g[i].dup || (r->n_down[i] && !gs->g[i].ddown))
            return -1;
    }
    return 0;
}

static void grads_free(grads *gs)
{
    for (size_t i = 0; gs->g && i < gs->n; i++)
        free(gs->g[i].dup), free(gs->g[i].ddown);
    free(gs->g), free(gs->dctx);
}

/* One training step of m on the case, recording onto tape; out (n_out) and gs get the results. */
static int step(const mood_unet *m, mood_unet_tape *tape, const bref *r, float *out, grads *gs)
{
    int rc = mood_unet_forward_train(m, tape, out, r->x, r->t, r->ctx, r->B, r->H, r->W, r->L,
                                     r->te, r->ids);
    if (rc == 0)
        rc = mood_unet_backward(m, tape, r->R, gs->g, gs->n, gs->dctx);
    MOOD_CHECK_MSG(rc == 0, "training step: %s", mood_error_last());
    return rc;
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

/* Every gradient against torch: the largest error over all factors relative to the largest
 * reference gradient (TOL), and each factor's relative to its own largest (TOL_EACH: the
 * self-attention q/k gradients of a few layers are ill-conditioned in float32; torch's own
 * float32 result is off by 1.7e-4 on the worst one of the sd2 fixture). */
#define TOL_EACH 5e-4

static void compare_grads(const char *label, const bref *r, const grads *gs)
{
    double all = 0, all_scale = 0, worst = 0, ec;
    size_t worst_i = 0;
    for (size_t i = 0; i < r->n; i++) {
        double d = 0, scale = 0, e;
        abs_err(gs->g[i].dup, r->gup[i], r->n_up[i], &d, &scale);
        if (r->n_down[i])
            abs_err(gs->g[i].ddown, r->gdown[i], r->n_down[i], &d, &scale);
        e = scale > 0 ? d / scale : d;
        MOOD_CHECK_MSG(e <= TOL_EACH, "%s: path %zu (%s, rank %d): relative error %.3e", label, i,
                       r->paths[i].weight, r->paths[i].rank, e);
        if (e > worst || isnan(e))
            worst = e, worst_i = i;
        all = d > all || isnan(d) ? d : all;
        all_scale = scale > all_scale ? scale : all_scale;
    }
    all = all_scale > 0 ? all / all_scale : all;
    MOOD_CHECK_MSG(all <= TOL, "%s: factor gradients: error %.3e of the largest", label, all);
    ec = rel_err(gs->dctx, r->dctx, r->n_ctx);
    MOOD_CHECK_MSG(ec <= TOL, "%s: dcontext: relative error %.3e", label, ec);
    printf("     %-14s %zu side paths: error %.2e of the largest factor gradient; worst factor "
           "%.2e (%s); dcontext %.2e\n",
           label, r->n, all, worst, r->paths[worst_i].weight, ec);
}

/* sum(out * R) in double after a forward with the current factors. */
static double loss(const mood_unet *m, const bref *r, float *out)
{
    double s = 0;
    int rc = mood_unet_forward(m, out, r->x, r->t, r->ctx, r->B, r->H, r->W, r->L, r->te, r->ids);
    MOOD_CHECK_OK(rc);
    for (size_t i = 0; i < r->n_out; i++)
        s += (double)out[i] * r->R[i];
    return s;
}

/* Central differences of the loss in factor entry *p against the analytic gradient g. */
static void finite_difference(const char *label, const mood_unet *m, const bref *r, float *p,
                              float g, float *out)
{
    float saved = *p, h = 2e-3f;
    double lp, lm, fd, e;
    *p = saved + h;
    lp = loss(m, r, out);
    *p = saved - h;
    lm = loss(m, r, out);
    *p = saved;
    fd = (lp - lm) / (2.0 * h);
    e = fabs(fd - g) / (fabs(g) > 1e-3 ? fabs(g) : 1e-3);
    printf("     %-14s finite difference %.5f, backward %.5f (relative %.1e)\n", label, fd, g, e);
    MOOD_CHECK_MSG(e <= 1e-2, "%s: finite difference %.6f vs backward %.6f", label, fd, g);
}

/* The entry of largest |gradient| of path i's down factor (up for a dense path). */
static void fd_path(const char *label, const mood_unet *m, const bref *r, const grads *gs, size_t i,
                    float *out)
{
    int down = r->n_down[i] > 0;
    const float *g = down ? gs->g[i].ddown : gs->g[i].dup;
    float *p = down ? r->down[i] : r->up[i];
    size_t n = down ? r->n_down[i] : r->n_up[i], best = 0;
    char l[64];
    for (size_t k = 1; k < n; k++)
        best = fabsf(g[k]) > fabsf(g[best]) ? k : best;
    snprintf(l, sizeof l, "%s[%zu]", label, i);
    finite_difference(l, m, r, p + best, g[best], out);
}

/* Index of the first path whose weight contains `part` (0 when none). */
static size_t find_path(const bref *r, const char *part, int rank0)
{
    for (size_t i = 0; i < r->n; i++)
        if (strstr(r->paths[i].weight, part) && (r->paths[i].rank == 0) == rank0)
            return i;
    return 0;
}

static void check_model(const char *label, const char *model_rel, const char *ref_rel)
{
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL, *ckpt = NULL;
    bref r;
    grads g1 = {0}, g2 = {0};
    float *out = NULL, *out_inf = NULL;
    uint64_t tape_bytes = 0, bwd_bytes = 0;
    MOOD_CHECK(bref_load(&r, ref_rel) == 0);
    MOOD_CHECK_OK(mood_unet_load(&m, fixture(model_rel)));
    if (!m || !r.n)
        goto done;
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, r.paths, r.n));
    out = calloc(r.n_out, sizeof *out), out_inf = calloc(r.n_out, sizeof *out_inf);
    MOOD_CHECK(out && out_inf && grads_new(&g1, &r) == 0 && grads_new(&g2, &r) == 0);
    MOOD_CHECK_OK(mood_unet_tape_new(&tape, 0));
    MOOD_CHECK_OK(mood_unet_tape_new(&ckpt, MOOD_UNET_TAPE_CHECKPOINT));
    if (!tape || !ckpt || !g1.g || !g2.g || step(m, tape, &r, out, &g1) != 0)
        goto done;
    /* the training forward is the forward: same output as torch's and as inference's */
    double eo = rel_err(out, r.out, r.n_out);
    MOOD_CHECK_MSG(eo <= TOL, "%s: forward with side paths: relative error %.3e", label, eo);
    MOOD_CHECK_OK(mood_unet_forward(m, out_inf, r.x, r.t, r.ctx, r.B, r.H, r.W, r.L, r.te, r.ids));
    MOOD_CHECK(memcmp(out, out_inf, r.n_out * sizeof *out) == 0);
    printf("     %-14s forward %.2e\n", label, eo);
    compare_grads(label, &r, &g1);
    /* checkpointing recomputes the same values: the same bits */
    if (step(m, ckpt, &r, out, &g2) == 0) {
        int same = memcmp(g1.dctx, g2.dctx, r.n_ctx * sizeof(float)) == 0;
        for (size_t i = 0; i < r.n; i++) {
            same &= memcmp(g1.g[i].dup, g2.g[i].dup, r.n_up[i] * sizeof(float)) == 0;
            if (r.n_down[i])
                same &= memcmp(g1.g[i].ddown, g2.g[i].ddown, r.n_down[i] * sizeof(float)) == 0;
        }
        MOOD_CHECK_MSG(same, "%s: checkpointed gradients differ from the kept tape's", label);
    }
    /* the memory estimate is what a step takes; checkpointing takes less */
    MOOD_CHECK_OK(mood_unet_train_memory(m, r.B, r.H, r.W, r.L, 0, &tape_bytes, &bwd_bytes));
    MOOD_CHECK(tape_bytes + bwd_bytes <= mood_unet_tape_bytes(tape));
    MOOD_CHECK(tape_bytes + bwd_bytes + 65536 >= mood_unet_tape_bytes(tape));
    MOOD_CHECK(mood_unet_tape_bytes(ckpt) < mood_unet_tape_bytes(tape));
    /* finite differences: conv_in (the first layer: the whole network's backward), a
     * self-attention value projection, a dense cross-attention key projection */
    fd_path(label, m, &r, &g1, find_path(&r, "conv_in", 0), out);
    fd_path(label, m, &r, &g1, find_path(&r, "attn1.to_v", 0), out);
    fd_path(label, m, &r, &g1, find_path(&r, "attn2.to_k", 1), out);
done:
    mood_unet_tape_free(tape);
    mood_unet_tape_free(ckpt);
    grads_free(&g1), grads_free(&g2);
    free(out), free(out_inf);
    mood_unet_free(m);
    bref_free(&r);
}

static void test_sd1(void)
{
    check_model("sd1", "unet/sd1", "unet_backward/ref_sd1.safetensors");
}

static void test_sd2(void)
{
    check_model("sd2", "unet/sd2", "unet_backward/ref_sd2.safetensors");
}

static void test_sdxl(void)
{
    check_model("sdxl", "unet/sdxl", "unet_backward/ref_sdxl.safetensors");
}

/* Gradients accumulate; NULL entries are skipped; no grads at all is allowed. */
static void test_accumulate(void)
{
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL;
    bref r;
    grads g = {0};
    float *out = NULL;
    MOOD_CHECK(bref_load(&r, "unet_backward/ref_sd1.safetensors") == 0);
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    MOOD_CHECK_OK(mood_unet_tape_new(&tape, 0));
    if (!m || !tape || !r.n || grads_new(&g, &r) != 0 || !(out = calloc(r.n_out, sizeof *out)))
        goto done;
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, r.paths, r.n));
    free(g.g[0].ddown);
    g.g[0].ddown = NULL; /* not wanted */
    if (step(m, tape, &r, out, &g) != 0)
        goto done;
    MOOD_CHECK_OK(mood_unet_backward(m, tape, r.R, g.g, g.n, g.dctx)); /* the same tape again */
    MOOD_CHECK_OK(mood_unet_backward(m, tape, r.R, NULL, 0, NULL));
    double worst = 0;
    for (size_t i = 0; i < r.n; i++) {
        for (size_t k = 0; k < r.n_up[i]; k++)
            g.g[i].dup[k] *= 0.5f;
        double e = rel_err(g.g[i].dup, r.gup[i], r.n_up[i]);
        worst = e > worst ? e : worst;
    }
    MOOD_CHECK_MSG(worst <= TOL, "two backward passes: relative error %.3e of half the sum", worst);
done:
    mood_unet_tape_free(tape);
    grads_free(&g);
    free(out);
    mood_unet_free(m);
    bref_free(&r);
}

/* What the tape refuses. */
static void test_errors(void)
{
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL;
    bref r;
    grads g = {0};
    float *out = NULL;
    MOOD_CHECK(mood_unet_tape_new(&tape, 0x80) == MOOD_EINVAL);
    MOOD_CHECK(tape == NULL);
    MOOD_CHECK(bref_load(&r, "unet_backward/ref_sd1.safetensors") == 0);
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    MOOD_CHECK_OK(mood_unet_tape_new(&tape, 0));
    if (!m || !tape || !r.n || grads_new(&g, &r) != 0 || !(out = calloc(r.n_out, sizeof *out)))
        goto done;
    MOOD_CHECK(mood_unet_backward(m, tape, r.R, NULL, 0, NULL) == MOOD_EINVAL); /* empty */
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, r.paths, r.n));
    MOOD_CHECK_OK(
        mood_unet_forward_train(m, tape, out, r.x, r.t, r.ctx, r.B, r.H, r.W, r.L, NULL, NULL));
    MOOD_CHECK(mood_unet_backward(m, tape, r.R, g.g, g.n - 1, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_unet_backward(m, tape, r.R, NULL, 3, NULL) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, r.paths, r.n)); /* a new set, even if equal */
    MOOD_CHECK(mood_unet_backward(m, tape, r.R, g.g, g.n, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "side paths changed") != NULL);
    MOOD_CHECK(mood_unet_forward_train(m, tape, out, r.x, r.t, r.ctx, 0, r.H, r.W, r.L, NULL,
                                       NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_unet_backward(m, tape, r.R, g.g, g.n, NULL) == MOOD_EINVAL); /* emptied */
done:
    mood_unet_tape_free(tape);
    grads_free(&g);
    free(out);
    mood_unet_free(m);
    bref_free(&r);
}

MOOD_TEST_MAIN(MOOD_T(test_sd1), MOOD_T(test_sd2), MOOD_T(test_sdxl), MOOD_T(test_accumulate),
               MOOD_T(test_errors))
