/*
 * test_clip_backward.c: the text encoder's training passes (mood_clip_forward_train,
 * mood_clip_backward in mood/clip.h) against torch autograd.
 *
 * Fixtures (tests/fixtures/clip_backward/, tools/make_fixtures_clip_backward.py): two tiny
 * transformers CLIPTextModels (quick_gelu SD1-like, gelu SD2-like) with a LoRA side path on every
 * attention q/k/v/out_proj and MLP fc1/fc2, a dense path and a second path on one q_proj; three
 * cases (clip skip 1 with the final norm; clip skip 2 with it; clip skip 2 without it); the loss
 * sum(hidden * R) and torch's float64 gradients of every factor and every base weight. The
 * training forward must give mood_clip_forward's bits and torch's hidden state within 1e-5;
 * factor gradients within TOL of the largest factor gradient and TOL_EACH of each path's own;
 * each weight's gradient within TOL_EACH of its own largest (weights the hidden state does not
 * use: exactly zero). Central finite differences of the loss confirm a LoRA factor entry, a
 * token embedding entry and a layer norm scale per case. Also: gradients accumulate, NULL
 * gradients are skipped, the weight list's names and order are transformers', and the tape
 * refuses what it must.
 */
#include "harness.h"

#include "fixture_tensors.h"

#include "common/common.h"

#include "mood/clip.h"
#include "mood/safetensors.h"

#define TOL      1e-5
#define TOL_EACH 1e-4
/* Positions in a layer's block of the weight list (mood_clip_weight_name): k, v, q weights (each
 * followed by its bias). */
enum { CLIP_K = 0, CLIP_V = 2, CLIP_Q = 4 };

/* One reference case: ids, side paths, R and torch's results. */
typedef struct cref {
    mood_st_file *f;
    int32_t *ids;
    float *R, *hidden;
    size_t n_hidden;
    int B, T, clip_skip, final_norm;
    size_t n;              /* side paths */
    mood_side_path *paths; /* factors owned here */
    float **down, **up, **gdown, **gup;
    size_t *n_down, *n_up;
} cref;

static const char *meta(const cref *r, const char *key)
{
    const char *v = mood_st_meta_get(r->f, key);
    return v ? v : "";
}

static void cref_free(cref *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->down[i]), free(r->up[i]), free(r->gdown[i]), free(r->gup[i]);
    free(r->down), free(r->up), free(r->gdown), free(r->gup), free(r->n_down), free(r->n_up);
    free(r->paths), free(r->ids), free(r->R), free(r->hidden);
    mood_st_close(r->f);
}

static int load_paths(cref *r)
{
    char k[64];
    r->n = (size_t)atoi(meta(r, "paths"));
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
        p->rank = atoi(meta(r, k));
        snprintf(k, sizeof k, "path.%zu.scale", i);
        p->scale = (float)atof(meta(r, k));
        snprintf(k, sizeof k, "path.%zu.down", i);
        r->down[i] = fixture_floats(r->f, k, &r->n_down[i]);
        snprintf(k, sizeof k, "path.%zu.up", i);
        r->up[i] = fixture_floats(r->f, k, &r->n_up[i]);
        snprintf(k, sizeof k, "grad.%zu.down", i);
        r->gdown[i] = fixture_floats(r->f, k, NULL);
        snprintf(k, sizeof k, "grad.%zu.up", i);
        r->gup[i] = fixture_floats(r->f, k, NULL);
        p->down = r->down[i], p->up = r->up[i];
        if (!p->weight || !r->up[i] || !r->gup[i] || (p->rank > 0 && (!r->down[i] || !r->gdown[i])))
            return -1;
    }
    return 0;
}

/* Loads case `name` and its model (with its heads and activation). */
static int cref_load(cref *r, const char *name, mood_clip **m)
{
    const mood_st_tensor *ti;
    char rel[128];
    mood_clip_config hint = {0};
    memset(r, 0, sizeof *r);
    *m = NULL;
    snprintf(rel, sizeof rel, "clip_backward/ref_%s.safetensors", name);
    if (mood_st_open(&r->f, fixture(rel)) != 0 || !(ti = mood_st_find(r->f, "ids")) ||
        ti->ndim != 2 || ti->dtype != MOOD_DTYPE_I32)
        return -1;
    r->B = (int)ti->shape[0], r->T = (int)ti->shape[1];
    r->ids = malloc((size_t)r->B * r->T * sizeof *r->ids);
    if (!r->ids)
        return -1;
    memcpy(r->ids, ti->data, (size_t)r->B * r->T * sizeof *r->ids);
    r->R = fixture_floats(r->f, "R", NULL),
    r->hidden = fixture_floats(r->f, "hidden", &r->n_hidden);
    r->clip_skip = atoi(meta(r, "clip_skip")), r->final_norm = atoi(meta(r, "final_norm"));
    hint.heads = atoi(meta(r, "heads"));
    hint.act = strcmp(meta(r, "act"), "gelu") == 0 ? MOOD_CLIP_ACT_GELU : MOOD_CLIP_ACT_QUICK_GELU;
    snprintf(rel, sizeof rel, "clip_backward/%s", meta(r, "model"));
    if (!r->R || !r->hidden || load_paths(r) != 0)
        return -1;
    MOOD_CHECK_OK(mood_clip_load(m, fixture(rel), &hint));
    return *m ? 0 : -1;
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

/* Gradient buffers for every side path and every weight (zeroed). */
typedef struct grads {
    mood_side_grad *g;
    float **w;
    size_t *n_w;
    size_t n, nw;
} grads;

static size_t weight_numel(mood_clip *m, size_t i)
{
    int nd = 0;
    int64_t sh[4] = {0};
    const char *name = mood_clip_weight_name(m, i);
    if (!name || !mood_clip_weight(m, name, &nd, sh))
        return 0;
    return (size_t)sh[0] * (size_t)(nd == 2 ? sh[1] : 1);
}

static int grads_new(grads *gs, const cref *r, mood_clip *m)
{
    memset(gs, 0, sizeof *gs);
    gs->n = r->n, gs->nw = mood_clip_weight_count(m);
    gs->g = calloc(r->n, sizeof *gs->g);
    gs->w = calloc(gs->nw, sizeof *gs->w), gs->n_w = calloc(gs->nw, sizeof *gs->n_w);
    if (!gs->g || !gs->w || !gs->n_w)
        return -1;
    for (size_t i = 0; i < r->n; i++) {
        gs->g[i].dup = calloc(r->n_up[i], sizeof(float));
        gs->g[i].ddown = r->n_down[i] ? calloc(r->n_down[i], sizeof(float)) : NULL;
        if (!gs->g[i].dup || (r->n_down[i] && !gs->g[i].ddown))
            return -1;
    }
    for (size_t i = 0; i < gs->nw; i++)
        if (!(gs->n_w[i] = weight_numel(m, i)) || !(gs->w[i] = calloc(gs->n_w[i], sizeof(float))))
            return -1;
    return 0;
}

static void grads_free(grads *gs)
{
    for (size_t i = 0; gs->g && i < gs->n; i++)
        free(gs->g[i].dup), free(gs->g[i].ddown);
    for (size_t i = 0; gs->w && i < gs->nw; i++)
        free(gs->w[i]);
    free(gs->g), free(gs->w), free(gs->n_w);
}

static void compare_paths(const char *label, const cref *r, const grads *gs)
{
    double all = 0, all_scale = 0, worst = 0;
    for (size_t i = 0; i < r->n; i++) {
        double d = 0, scale = 0, e;
        abs_err(gs->g[i].dup, r->gup[i], r->n_up[i], &d, &scale);
        if (r->n_down[i])
            abs_err(gs->g[i].ddown, r->gdown[i], r->n_down[i], &d, &scale);
        e = scale > 0 ? d / scale : d;
        MOOD_CHECK_MSG(scale > 0 ? e <= TOL_EACH : d == 0, "%s: path %zu (%s, rank %d): error %.3e",
                       label, i, r->paths[i].weight, r->paths[i].rank, e);
        worst = scale > 0 && (e > worst || isnan(e)) ? e : worst;
        all = d > all || isnan(d) ? d : all;
        all_scale = scale > all_scale ? scale : all_scale;
    }
    all /= all_scale;
    MOOD_CHECK_MSG(all <= TOL, "%s: factor gradients: error %.3e of the largest", label, all);
    printf("     %-11s %zu side paths: error %.2e of the largest factor gradient, worst path %.2e "
           "of its own\n",
           label, r->n, all, worst);
}

/* Each weight's gradient against its own largest reference value, floored at FLOOR of the
 * largest of all: the key projections' biases get none (softmax ignores a shift shared by all
 * keys), torch's are 1e-15 and mood's float32 ones 1e-6 of the others. */
#define FLOOR 1e-3

static void compare_weights(const char *label, const cref *r, mood_clip *m, const grads *gs)
{
    double worst = 0, all = 0, all_scale = 0, *d = calloc(gs->nw, sizeof *d);
    double *scale = calloc(gs->nw, sizeof *scale);
    size_t worst_i = 0, zero = 0;
    char k[200];
    for (size_t i = 0; d && scale && i < gs->nw; i++) {
        size_t n = 0;
        snprintf(k, sizeof k, "wgrad.%s", mood_clip_weight_name(m, i));
        float *ref = fixture_floats(r->f, k, &n);
        MOOD_CHECK_MSG(ref && n == gs->n_w[i], "%s: %s missing or of another size", label, k);
        if (ref && n == gs->n_w[i])
            abs_err(gs->w[i], ref, n, &d[i], &scale[i]);
        all = d[i] > all || isnan(d[i]) ? d[i] : all;
        all_scale = scale[i] > all_scale ? scale[i] : all_scale;
        free(ref);
    }
    for (size_t i = 0; d && scale && i < gs->nw; i++) {
        double s = scale[i] > FLOOR * all_scale ? scale[i] : FLOOR * all_scale;
        double e = scale[i] > 0 ? d[i] / s : d[i];
        MOOD_CHECK_MSG(scale[i] > 0 ? e <= TOL_EACH : d[i] == 0, "%s: %s: error %.3e (scale %.3g)",
                       label, mood_clip_weight_name(m, i), e, scale[i]);
        zero += scale[i] == 0;
        if (scale[i] > 0 && (e > worst || isnan(e)))
            worst = e, worst_i = i;
    }
    all /= all_scale;
    MOOD_CHECK_MSG(all <= TOL, "%s: weight gradients: error %.3e of the largest", label, all);
    printf("     %-11s %zu weights (%zu unused, exactly zero): error %.2e of the largest weight "
           "gradient, worst %.2e of its own (%s)\n",
           label, gs->nw, zero, all, worst, mood_clip_weight_name(m, worst_i));
    free(d), free(scale);
}

/* sum(hidden * R) in double after a forward with the current weights and factors. */
static double loss(const mood_clip *m, const cref *r, float *out)
{
    double s = 0;
    MOOD_CHECK_OK(mood_clip_forward(m, r->ids, r->B, r->T, r->clip_skip, r->final_norm, out, NULL));
    for (size_t i = 0; i < r->n_hidden; i++)
        s += (double)out[i] * r->R[i];
    return s;
}

/* The loss with *p set to v (restored after). */
static double loss_at(const mood_clip *m, const cref *r, float *p, float v, float *out)
{
    float saved = *p;
    double l;
    *p = v;
    l = loss(m, r, out);
    *p = saved;
    return l;
}

/* Fourth-order central differences of the loss in *p with step h against the analytic gradient
 * g. h is 1e-2 (the float32 loss's rounding stays far below the differences), 1e-3 for the
 * embeddings: they are about 0.02, so the layer norms' curvature shows at 1e-2. */
static void finite_difference(const char *label, const mood_clip *m, const cref *r, float *p,
                              float g, float h, float *out)
{
    float x = *p;
    double f2 = loss_at(m, r, p, x + 2 * h, out), f1 = loss_at(m, r, p, x + h, out);
    double b1 = loss_at(m, r, p, x - h, out), b2 = loss_at(m, r, p, x - 2 * h, out);
    double fd = (-f2 + 8 * f1 - 8 * b1 + b2) / (12.0 * h);
    double e = fabs(fd - g) / (fabs(g) > 1e-2 ? fabs(g) : 1e-2);
    printf("     %-30s finite difference %9.5f, backward %9.5f (relative %.1e)\n", label, fd, g, e);
    MOOD_CHECK_MSG(e <= 1e-3, "%s: finite difference %.6f vs backward %.6f", label, fd, g);
}

/* The entry of largest |g| over n. */
static size_t argmax_abs(const float *g, size_t n)
{
    size_t best = 0;
    for (size_t k = 1; k < n; k++)
        best = fabsf(g[k]) > fabsf(g[best]) ? k : best;
    return best;
}

static void fd_checks(const char *label, mood_clip *m, const cref *r, const grads *g, float *out)
{
    char l[80];
    size_t i = 0, k;
    while (i < r->n && (r->paths[i].rank == 0 || !strstr(r->paths[i].weight, "layers.0.")))
        i++;
    if (i < r->n) { /* a factor of the first layer: the whole backward pass */
        k = argmax_abs(g->g[i].ddown, r->n_down[i]);
        snprintf(l, sizeof l, "%s path %zu down", label, i);
        finite_difference(l, m, r, &r->down[i][k], g->g[i].ddown[k], 1e-2f, out);
    }
    /* the token embedding (rows gather repeated tokens), the position embedding and the first
     * layer norm's scale (weight 10) */
    static const size_t wi[] = {0, 1, 10};
    static const char *const what[] = {"token embedding", "position embedding", "layer_norm1 w"};
    for (size_t j = 0; j < sizeof wi / sizeof wi[0]; j++) {
        float *p = mood_clip_weight(m, mood_clip_weight_name(m, wi[j]), NULL, NULL);
        k = argmax_abs(g->w[wi[j]], g->n_w[wi[j]]);
        snprintf(l, sizeof l, "%s %s", label, what[j]);
        finite_difference(l, m, r, &p[k], g->w[wi[j]][k], j < 2 ? 1e-3f : 1e-2f, out);
    }
}

/* The weight list is transformers' named_parameters(), names as the fixture records them. */
static void check_names(const cref *r, mood_clip *m)
{
    const char *list = meta(r, "weights");
    size_t i = 0;
    for (const char *p = list; *p; i++) {
        const char *e = strchr(p, ','), *name = mood_clip_weight_name(m, i);
        size_t len = e ? (size_t)(e - p) : strlen(p);
        MOOD_CHECK_MSG(name && strlen(name) == len && strncmp(name, p, len) == 0,
                       "weight %zu: %s, transformers %.*s", i, name ? name : "(none)", (int)len, p);
        p += len + (e != NULL);
    }
    MOOD_CHECK(i == mood_clip_weight_count(m) && !mood_clip_weight_name(m, i));
}

static void check_case(const char *name)
{
    mood_clip *m = NULL;
    mood_clip_tape *tape = NULL;
    cref r;
    grads g = {0};
    float *out = NULL, *inf = NULL;
    MOOD_CHECK(cref_load(&r, name, &m) == 0);
    if (!m)
        goto done;
    check_names(&r, m);
    MOOD_CHECK_OK(mood_clip_set_side_paths(m, r.paths, r.n));
    MOOD_CHECK_OK(mood_clip_tape_new(&tape));
    out = calloc(r.n_hidden, sizeof *out), inf = calloc(r.n_hidden, sizeof *inf);
    if (!tape || !out || !inf || grads_new(&g, &r, m) != 0)
        goto done;
    MOOD_CHECK_OK(
        mood_clip_forward_train(m, tape, r.ids, r.B, r.T, r.clip_skip, r.final_norm, out));
    MOOD_CHECK_OK(mood_clip_forward(m, r.ids, r.B, r.T, r.clip_skip, r.final_norm, inf, NULL));
    MOOD_CHECK_MSG(memcmp(out, inf, r.n_hidden * sizeof *out) == 0,
                   "%s: forward_train differs from forward", name);
    double d = 0, scale = 0;
    abs_err(out, r.hidden, r.n_hidden, &d, &scale);
    MOOD_CHECK_MSG(d / scale <= 1e-5, "%s: hidden state: error %.3e", name, d / scale);
    MOOD_CHECK_OK(mood_clip_backward(m, tape, r.R, g.g, g.n, g.w));
    printf("     %-11s forward %.2e\n", name, d / scale);
    compare_paths(name, &r, &g);
    compare_weights(name, &r, m, &g);
    fd_checks(name, m, &r, &g, inf);
done:
    grads_free(&g);
    free(out), free(inf);
    mood_clip_tape_free(tape);
    mood_clip_free(m);
    cref_free(&r);
}

static void test_quick_gelu(void)
{
    check_case("quick_gelu");
}

static void test_gelu_skip2(void)
{
    check_case("gelu_skip2");
}

static void test_gelu_raw(void)
{
    check_case("gelu_raw");
}

/* Gradients accumulate; NULL entries (and no gradients at all) are allowed; a second backward on
 * the same tape adds the same again. */
static void test_accumulate(void)
{
    mood_clip *m = NULL;
    mood_clip_tape *tape = NULL;
    cref r;
    grads g = {0};
    float *out = NULL;
    double worst = 0;
    MOOD_CHECK(cref_load(&r, "quick_gelu", &m) == 0);
    MOOD_CHECK_OK(mood_clip_tape_new(&tape));
    if (!m || !tape || grads_new(&g, &r, m) != 0 || !(out = calloc(r.n_hidden, sizeof *out)))
        goto done;
    MOOD_CHECK_OK(mood_clip_set_side_paths(m, r.paths, r.n));
    free(g.g[0].ddown);
    g.g[0].ddown = NULL;
    free(g.w[3]);
    g.w[3] = NULL;
    MOOD_CHECK_OK(
        mood_clip_forward_train(m, tape, r.ids, r.B, r.T, r.clip_skip, r.final_norm, out));
    MOOD_CHECK_OK(mood_clip_backward(m, tape, r.R, g.g, g.n, g.w));
    MOOD_CHECK_OK(mood_clip_backward(m, tape, r.R, g.g, g.n, NULL));
    MOOD_CHECK_OK(mood_clip_backward(m, tape, r.R, NULL, 0, g.w));
    MOOD_CHECK_OK(mood_clip_backward(m, tape, r.R, NULL, 0, NULL));
    for (size_t i = 0; i < r.n; i++) {
        double d = 0, scale = 0;
        for (size_t k = 0; k < r.n_up[i]; k++)
            g.g[i].dup[k] *= 0.5f;
        abs_err(g.g[i].dup, r.gup[i], r.n_up[i], &d, &scale);
        worst = d / scale > worst ? d / scale : worst;
    }
    double wd = 0, wscale = 0; /* all weights together (some are zero: see FLOOR) */
    for (size_t i = 0; i < g.nw; i++) {
        char k[200];
        size_t n;
        float *ref;
        if (!g.w[i])
            continue;
        snprintf(k, sizeof k, "wgrad.%s", mood_clip_weight_name(m, i));
        if (!(ref = fixture_floats(r.f, k, &n)))
            continue;
        for (size_t j = 0; j < n; j++)
            g.w[i][j] *= 0.5f;
        abs_err(g.w[i], ref, n, &wd, &wscale);
        free(ref);
    }
    worst = wd / wscale > worst ? wd / wscale : worst;
    MOOD_CHECK_MSG(worst <= TOL_EACH, "two backward passes: error %.3e of half the sum", worst);
done:
    grads_free(&g);
    free(out);
    mood_clip_tape_free(tape);
    mood_clip_free(m);
    cref_free(&r);
}

/* Uniform in [-a, a) from a xorshift state. */
static float urand(uint32_t *st, float a)
{
    *st ^= *st << 13, *st ^= *st >> 17, *st ^= *st << 5;
    return a * ((float)(*st >> 8) * 0x1p-23f - 1.0f);
}

/* An OpenCLIP-named encoder (the fused in_proj of bases/sd2_base, q, k, v as slices of it): side
 * paths on slices, weight gradients of slices, the training forward's bits; finite differences
 * against the backward (no torch reference for this file's encoder: test_clip checks its forward,
 * the fixtures above the backward's arithmetic; this checks the slicing). */
static void test_openclip(void)
{
    enum { B = 2, T = 8, NW = 4 + 16 * 2 };
    mood_clip_config hint = {0};
    mood_clip *m = NULL;
    mood_clip_tape *tape = NULL;
    float *out = NULL, *inf = NULL, *R = NULL, down[2][2 * 24], up[2][24 * 2];
    float gdown[2][2 * 24] = {{0}}, gup[2][24 * 2] = {{0}}, *wg[NW] = {0};
    int32_t ids[B * T];
    uint32_t st = 12345;
    mood_side_path paths[2] = {
        {"text_model.encoder.layers.0.self_attn.k_proj.weight", down[0], up[0], 2, 0.75f},
        {"text_model.encoder.layers.1.self_attn.v_proj.weight", down[1], up[1], 2, 1.25f}};
    mood_side_grad sg[2] = {{gdown[0], gup[0]}, {gdown[1], gup[1]}};
    /* layer 0's k_proj weight (a slice of in_proj_weight), layer 1's q_proj bias (of in_proj_bias)
     */
    static const size_t wi[] = {2 + CLIP_K, 2 + 16 + CLIP_Q + 1};
    static const char *const what[] = {"openclip k_proj weight", "openclip q_proj bias"};
    cref r;
    memset(&r, 0, sizeof r);
    hint.heads = 3;
    MOOD_CHECK_OK(mood_clip_load(&m, fixture("bases/sd2_base.safetensors"), &hint));
    MOOD_CHECK_OK(mood_clip_tape_new(&tape));
    if (!m || !tape)
        goto done;
    const mood_clip_config *c = mood_clip_get_config(m);
    size_t n = (size_t)B * T * 24;
    MOOD_CHECK(c->hidden == 24 && c->layers == 2 && mood_clip_weight_count(m) == NW);
    if (c->hidden != 24 || mood_clip_weight_count(m) != NW)
        goto done;
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)(((unsigned)i * 7919u + 13u) % (unsigned)c->vocab);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < 48; i++)
            down[p][i] = urand(&st, 0.3f), up[p][i] = urand(&st, 0.5f);
    out = calloc(n, sizeof *out), inf = calloc(n, sizeof *inf), R = calloc(n, sizeof *R);
    for (size_t i = 0; i < NW; i++)
        wg[i] = calloc(weight_numel(m, i), sizeof(float));
    if (!out || !inf || !R)
        goto done;
    for (size_t i = 0; i < n; i++)
        R[i] = urand(&st, 1.0f);
    MOOD_CHECK_OK(mood_clip_set_side_paths(m, paths, 2));
    MOOD_CHECK_OK(mood_clip_forward_train(m, tape, ids, B, T, 1, 1, out));
    MOOD_CHECK_OK(mood_clip_forward(m, ids, B, T, 1, 1, inf, NULL));
    MOOD_CHECK(memcmp(out, inf, n * sizeof *out) == 0);
    MOOD_CHECK_OK(mood_clip_backward(m, tape, R, sg, 2, wg));
    /* finite differences go through loss(), which reads the case from r */
    r.ids = ids, r.R = R, r.n_hidden = n, r.B = B, r.T = T, r.clip_skip = 1, r.final_norm = 1;
    for (int p = 0; p < 2; p++) {
        size_t k = argmax_abs(gdown[p], 48);
        finite_difference(p ? "openclip v_proj path down" : "openclip k_proj path down", m, &r,
                          &down[p][k], gdown[p][k], 1e-2f, inf);
    }
    for (int j = 0; j < 2; j++) {
        float *p = mood_clip_weight(m, mood_clip_weight_name(m, wi[j]), NULL, NULL);
        size_t k = argmax_abs(wg[wi[j]], weight_numel(m, wi[j]));
        finite_difference(what[j], m, &r, &p[k], wg[wi[j]][k], 1e-2f, inf);
    }
done:
    for (size_t i = 0; i < NW; i++)
        free(wg[i]);
    free(out), free(inf), free(R);
    mood_clip_tape_free(tape);
    mood_clip_free(m);
}

/* What the tape and the weight list refuse. */
static void test_errors(void)
{
    mood_clip *m = NULL;
    mood_clip_tape *tape = NULL;
    cref r;
    grads g = {0};
    float *out = NULL;
    mood_side_path emb = {"text_model.embeddings.token_embedding.weight", NULL, NULL, 0, 1.0f};
    MOOD_CHECK(cref_load(&r, "quick_gelu", &m) == 0);
    MOOD_CHECK_OK(mood_clip_tape_new(&tape));
    if (!m || !tape || grads_new(&g, &r, m) != 0 || !(out = calloc(r.n_hidden, sizeof *out)))
        goto done;
    MOOD_CHECK(mood_clip_backward(m, tape, r.R, NULL, 0, NULL) == MOOD_EINVAL); /* empty */
    emb.up = r.up[0];
    MOOD_CHECK(mood_clip_set_side_paths(m, &emb, 1) == MOOD_ENOTFOUND); /* not a Linear */
    MOOD_CHECK_OK(mood_clip_set_side_paths(m, r.paths, r.n));
    MOOD_CHECK_OK(
        mood_clip_forward_train(m, tape, r.ids, r.B, r.T, r.clip_skip, r.final_norm, out));
    MOOD_CHECK(mood_clip_backward(m, tape, r.R, g.g, g.n - 1, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_clip_backward(m, tape, r.R, NULL, 3, NULL) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_clip_set_side_paths(m, r.paths, r.n)); /* a new set, even if equal */
    MOOD_CHECK(mood_clip_backward(m, tape, r.R, g.g, g.n, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "side paths changed") != NULL);
    MOOD_CHECK(mood_clip_forward_train(m, tape, r.ids, r.B, r.T, 0, 1, out) == MOOD_EINVAL);
    MOOD_CHECK(mood_clip_backward(m, tape, r.R, g.g, g.n, NULL) == MOOD_EINVAL); /* emptied */
    MOOD_CHECK(mood_clip_forward_train(m, tape, r.ids, r.B, r.T, 1, 1, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_clip_tape_bytes(tape) > 0);
done:
    grads_free(&g);
    free(out);
    mood_clip_tape_free(tape);
    mood_clip_free(m);
    cref_free(&r);
}

MOOD_TEST_MAIN(MOOD_T(test_quick_gelu), MOOD_T(test_gelu_skip2), MOOD_T(test_gelu_raw),
               MOOD_T(test_accumulate), MOOD_T(test_openclip), MOOD_T(test_errors))
