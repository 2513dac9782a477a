/*
 * test_ops_backward.c: the CPU backward passes (engine/cpu/ops.h, "backward") against torch
 * autograd, against finite differences of the forward ops, and for thread-count independence.
 *
 * Fixtures (tests/fixtures/ops_backward/, tools/make_fixtures_ops_backward.py): gradients of
 * sum(dout * op(inputs)) computed by torch in float64 from float32 inputs, for conv2d (k 1/3,
 * stride 1/2, pad 0/1, several position and channel tiles), group and layer norm, attention
 * (Tq != Tk, causal, several query blocks), linear, activations, GEGLU, upsampling, channel bias,
 * layout transposes, concat and the LoRA side path. Every gradient must be within 1e-5 of the
 * reference relative to max |ref|; each op is then called a second time on the same buffers,
 * which must hold twice the reference (gradients accumulate).
 *
 * Also: conv backward at sizes cut into many tiles and on small maps (tiles of several samples
 * that end inside one, partial sums, odd sizes, stride 2, 1x1) against naive double loops; central
 * differences (in double, of the float32 forward ops) on tiny cases; and conv, attention, linear,
 * group and layer norm backward giving bit-identical results on 1 and 2 threads.
 */
#include "harness.h"

#include <omp.h>

#include "common/common.h"
#include "engine/cpu/ops.h"
#include "mood/safetensors.h"

#define TOL 1e-5

/* Max |a - k b| over n, divided by max |k b| (k = 1, or 2 after a second call). */
static double rel_diff_k(const float *a, const float *b, double k, size_t n)
{
    double d = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double r = k * b[i], e = fabs((double)a[i] - r);
        d = e > d ? e : d;
        scale = fabs(r) > scale ? fabs(r) : scale;
    }
    return scale > 0 ? d / scale : d;
}

/* The tensors read for one case, freed together. */
typedef struct bag {
    mood_st_file *f;
    float *p[32];
    int n;
} bag;

/* A fresh zeroed float buffer held by the bag. */
static float *bag_zeros(bag *g, size_t n)
{
    if (g->n == (int)(sizeof g->p / sizeof g->p[0])) {
        MOOD_CHECK_MSG(0, "too many buffers held (bag_clear between cases)");
        return NULL;
    }
    float *out = calloc(n ? n : 1, sizeof *out);
    MOOD_CHECK(out != NULL);
    g->p[g->n++] = out;
    return out;
}

/* Tensor "<c>.<role>" as a fresh float buffer (ints converted); a missing tensor fails. */
static float *get(bag *g, const char *c, const char *role, size_t *n)
{
    char name[64];
    snprintf(name, sizeof name, "%s.%s", c, role);
    const mood_st_tensor *t = mood_st_find(g->f, name);
    MOOD_CHECK_MSG(t != NULL, "fixture tensor %s", name);
    size_t cnt = t ? (size_t)mood_st_numel(t) : 0;
    if (n)
        *n = cnt;
    if (!t)
        return NULL;
    float *out = bag_zeros(g, cnt);
    if (out && mood_st_to_f32(out, t) != 0) {
        MOOD_CHECK_MSG(0, "reading %s", name);
        return NULL;
    }
    return out;
}

static int has(bag *g, const char *c)
{
    char name[64];
    snprintf(name, sizeof name, "%s.dims", c);
    return mood_st_find(g->f, name) != NULL;
}

static void bag_clear(bag *g)
{
    for (int i = 0; i < g->n; i++)
        free(g->p[i]);
    g->n = 0;
}

static int bag_open(bag *g, const char *rel)
{
    memset(g, 0, sizeof *g);
    MOOD_CHECK_OK(mood_st_open(&g->f, fixture(rel)));
    return g->f != NULL;
}

static void bag_close(bag *g)
{
    bag_clear(g);
    mood_st_close(g->f);
}

/* Worst difference seen per op family, for the summary line. */
static double worst_seen;

/* Checks out against k * ref (k = 1 after one call, 2 after two) and prints the difference. */
static void expect_k(const char *label, const float *out, const float *ref, size_t n, int k)
{
    if (!out || !ref)
        return;
    double d = rel_diff_k(out, ref, k, n);
    worst_seen = d > worst_seen ? d : worst_seen;
    if (k == 1)
        printf("  %-28s %.3g\n", label, d);
    MOOD_CHECK_MSG(d <= TOL, "%s differs by %g%s", label, d, k == 2 ? " (second call)" : "");
}

/* ----- convolution -------------------------------------------------------------------------- */

static mood_conv2d_dims conv_dims(const float *dm)
{
    mood_conv2d_dims d = {(int)dm[0], (int)dm[1], (int)dm[2], (int)dm[3],
                          (int)dm[4], (int)dm[5], (int)dm[6], (int)dm[7]};
    return d;
}

static void test_conv2d_backward(void)
{
    bag g;
    if (!bag_open(&g, "ops_backward/conv.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16], label[64];
        snprintf(c, sizeof c, "c%d", i);
        if (!has(&g, c))
            break;
        size_t nx, nw, nb, ny;
        float *dm = get(&g, c, "dims", NULL), *x = get(&g, c, "x", &nx);
        float *w = get(&g, c, "w", &nw), *dy = get(&g, c, "dout", &ny);
        float *rx = get(&g, c, "dx", NULL), *rw = get(&g, c, "dw", NULL);
        float *rb = get(&g, c, "db", &nb);
        if (!dm || !x || !w || !dy || !rx || !rw || !rb)
            break;
        mood_conv2d_dims d = conv_dims(dm);
        MOOD_CHECK(ny ==
                   (size_t)d.batch * d.out_c * mood_op_conv2d_out_h(&d) * mood_op_conv2d_out_w(&d));
        float *dx = bag_zeros(&g, nx), *dw = bag_zeros(&g, nw), *db = bag_zeros(&g, nb);
        float *s = bag_zeros(&g, mood_op_conv2d_backward_scratch(&d));
        MOOD_CHECK((mood_op_conv2d_backward_scratch(&d) == 0) ==
                   (d.k == 1 && d.stride == 1 && d.pad == 0));
        for (int k = 1; k <= 2; k++) {
            mood_op_conv2d_backward(dx, dw, db, dy, x, w, &d, s);
            snprintf(label, sizeof label, "conv %s k%d s%d p%d dx", c, d.k, d.stride, d.pad);
            expect_k(label, dx, rx, nx, k);
            expect_k("  dw", dw, rw, nw, k);
            expect_k("  db", db, rb, nb, k);
        }
        /* only the input gradient wanted: the same bits */
        float *dx2 = bag_zeros(&g, nx), *dx1 = bag_zeros(&g, nx);
        mood_op_conv2d_backward(dx1, NULL, NULL, dy, x, w, &d, s);
        mood_op_conv2d_backward(dx2, dw, db, dy, x, w, &d, s);
        MOOD_CHECK(memcmp(dx1, dx2, nx * sizeof *dx1) == 0);
        bag_clear(&g);
    }
    bag_close(&g);
}

/* Deterministic pseudo-random floats in [-1, 1). */
static void fill(float *x, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / (float)(1 << 23) - 1.0f;
    }
}

/* Naive double-precision gradients of a convolution: dx (B x IC x H x W), dw (OC x IC x k x k). */
static void conv_backward_naive(float *rdx, float *rdw, const float *dy, const float *x,
                                const float *w, const mood_conv2d_dims *d)
{
    int OH = mood_op_conv2d_out_h(d), OW = mood_op_conv2d_out_w(d), k = d->k, IC = d->in_c;
    size_t nx = (size_t)d->batch * IC * d->h * d->w, nw = (size_t)d->out_c * IC * k * k;
    double *ax = calloc(nx, sizeof *ax), *aw = calloc(nw, sizeof *aw);
    for (int b = 0; b < d->batch; b++)
        for (int o = 0; o < d->out_c; o++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double g = dy[(((size_t)b * d->out_c + o) * OH + oy) * OW + ox];
                    for (int c = 0; c < IC; c++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = oy * d->stride - d->pad + ky;
                                int ix = ox * d->stride - d->pad + kx;
                                if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w)
                                    continue;
                                size_t xi = (((size_t)b * IC + c) * d->h + iy) * d->w + ix;
                                size_t wi = (((size_t)o * IC + c) * k + ky) * k + kx;
                                ax[xi] += g * w[wi];
                                aw[wi] += g * x[xi];
                            }
                }
    for (size_t i = 0; i < nx; i++)
        rdx[i] = (float)ax[i];
    for (size_t i = 0; i < nw; i++)
        rdw[i] = (float)aw[i];
    free(ax), free(aw);
}

/* Convolutions cut into many position and channel tiles (tiles starting mid-row; stride 2; 1x1),
 * against naive double loops (no torch fixture: too large). */
static void test_conv2d_backward_tiles(void)
{
    mood_conv2d_dims dims[3] = {
        {2, 48, 37, 41, 16, 3, 1, 1}, {1, 48, 63, 57, 16, 3, 2, 1}, {2, 160, 29, 31, 24, 1, 1, 0}};
    const char *what[3] = {"conv tiles 3x3 (naive)", "conv tiles s2 (naive)",
                           "conv tiles 1x1 (naive)"};
    for (int i = 0; i < 3; i++) {
        const mood_conv2d_dims *d = &dims[i];
        size_t nx = (size_t)d->batch * d->in_c * d->h * d->w;
        size_t nw = (size_t)d->out_c * d->in_c * d->k * d->k;
        size_t ny = (size_t)d->batch * d->out_c * mood_op_conv2d_out_h(d) * mood_op_conv2d_out_w(d);
        float *x = malloc(nx * sizeof *x), *w = malloc(nw * sizeof *w),
              *dy = malloc(ny * sizeof *dy);
        float *dx = calloc(nx, sizeof *dx), *dw = calloc(nw, sizeof *dw);
        float *rx = malloc(nx * sizeof *rx), *rw = malloc(nw * sizeof *rw);
        size_t ns = mood_op_conv2d_backward_scratch(d);
        float *s = malloc((ns ? ns : 1) * sizeof *s);
        fill(x, nx, 21 + i), fill(w, nw, 31 + i), fill(dy, ny, 41 + i);
        mood_op_conv2d_backward(dx, dw, NULL, dy, x, w, d, ns ? s : NULL);
        conv_backward_naive(rx, rw, dy, x, w, d);
        char label[64];
        snprintf(label, sizeof label, "%s dx", what[i]);
        expect_k(label, dx, rx, nx, 1);
        expect_k("  dw", dw, rw, nw, 1);
        free(x), free(w), free(dy), free(dx), free(dw), free(rx), free(rw), free(s);
    }
}

/* Small feature maps, as a small UNet trains on: a tile of positions holds several samples and
 * ends inside one, the weight gradient is summed in groups of rows (partial sums) and tiles of
 * output channels, or (more input than output channels, stride 1) taken the other way round,
 * the input gradient's columns of several samples are scattered back from one product; odd
 * sizes, stride 2, no padding, 5x5 kernels, 1x1 with and without stride. */
static const mood_conv2d_dims conv_small[] = {
    {21, 12, 5, 7, 64, 3, 1, 1}, {37, 10, 11, 9, 12, 3, 2, 1}, {3, 6, 23, 29, 8, 3, 1, 1},
    {9, 20, 6, 6, 16, 3, 1, 0},  {33, 5, 4, 4, 7, 5, 1, 2},    {5, 70, 3, 5, 40, 1, 1, 0},
    {6, 9, 7, 7, 11, 1, 2, 0},   {16, 40, 8, 8, 32, 3, 1, 1},  {7, 11, 9, 6, 5, 5, 1, 1}};
#define N_CONV_SMALL ((int)(sizeof conv_small / sizeof conv_small[0]))

/* One case's buffers: inputs filled from seed, gradients zeroed. */
typedef struct conv_bufs {
    size_t nx, nw, ny, ns;
    float *x, *w, *dy, *dx, *dw, *db, *s;
} conv_bufs;

static void conv_bufs_init(conv_bufs *c, const mood_conv2d_dims *d, uint32_t seed)
{
    c->nx = (size_t)d->batch * d->in_c * d->h * d->w;
    c->nw = (size_t)d->out_c * d->in_c * d->k * d->k;
    c->ny = (size_t)d->batch * d->out_c * mood_op_conv2d_out_h(d) * mood_op_conv2d_out_w(d);
    c->ns = mood_op_conv2d_backward_scratch(d);
    c->x = malloc(c->nx * sizeof *c->x), c->w = malloc(c->nw * sizeof *c->w);
    c->dy = malloc(c->ny * sizeof *c->dy), c->s = malloc((c->ns ? c->ns : 1) * sizeof *c->s);
    c->dx = calloc(c->nx, sizeof *c->dx), c->dw = calloc(c->nw, sizeof *c->dw);
    c->db = calloc((size_t)d->out_c, sizeof *c->db);
    MOOD_CHECK(c->x && c->w && c->dy && c->s && c->dx && c->dw && c->db);
    fill(c->x, c->nx, seed), fill(c->w, c->nw, seed + 1), fill(c->dy, c->ny, seed + 2);
}

static void conv_bufs_free(conv_bufs *c)
{
    free(c->x), free(c->w), free(c->dy), free(c->s), free(c->dx), free(c->dw), free(c->db);
}

static void test_conv2d_backward_small_maps(void)
{
    for (int i = 0; i < N_CONV_SMALL; i++) {
        const mood_conv2d_dims *d = &conv_small[i];
        conv_bufs c;
        conv_bufs_init(&c, d, 50 + 3 * i);
        if (!c.x || !c.w || !c.dy || !c.s || !c.dx || !c.dw || !c.db)
            return;
        mood_op_conv2d_backward(c.dx, c.dw, c.db, c.dy, c.x, c.w, d, c.ns ? c.s : NULL);
        float *rx = malloc(c.nx * sizeof *rx), *rw = malloc(c.nw * sizeof *rw);
        float *rb = malloc((size_t)d->out_c * sizeof *rb);
        conv_backward_naive(rx, rw, c.dy, c.x, c.w, d);
        size_t ohw = c.ny / ((size_t)d->batch * d->out_c);
        for (int o = 0; o < d->out_c; o++) {
            double sb = 0;
            for (int b = 0; b < d->batch; b++)
                for (size_t j = 0; j < ohw; j++)
                    sb += c.dy[((size_t)b * d->out_c + o) * ohw + j];
            rb[o] = (float)sb;
        }
        char label[64];
        snprintf(label, sizeof label, "conv b%d %dx%d k%d s%d p%d dx", d->batch, d->h, d->w, d->k,
                 d->stride, d->pad);
        expect_k(label, c.dx, rx, c.nx, 1);
        expect_k("  dw", c.dw, rw, c.nw, 1);
        expect_k("  db", c.db, rb, (size_t)d->out_c, 1);
        free(rx), free(rw), free(rb);
        conv_bufs_free(&c);
    }
}

/* The small-map cases give the same bits on 1 and 2 threads (the partial sums of the weight
 * gradient added in a fixed order, the tiles and groups chosen from the sizes alone). */
static void test_conv2d_backward_small_threads(void)
{
    int saved = omp_get_max_threads();
    for (int i = 0; i < N_CONV_SMALL; i++) {
        const mood_conv2d_dims *d = &conv_small[i];
        conv_bufs c[2];
        for (int t = 0; t < 2; t++) {
            conv_bufs_init(&c[t], d, 90 + i);
            omp_set_num_threads(t + 1);
            if (c[t].x && c[t].w && c[t].dy && c[t].s && c[t].dx && c[t].dw && c[t].db)
                mood_op_conv2d_backward(c[t].dx, c[t].dw, c[t].db, c[t].dy, c[t].x, c[t].w, d,
                                        c[t].ns ? c[t].s : NULL);
        }
        MOOD_CHECK_MSG(memcmp(c[0].dx, c[1].dx, c[0].nx * sizeof *c[0].dx) == 0,
                       "conv case %d dx differs between 1 and 2 threads", i);
        MOOD_CHECK_MSG(memcmp(c[0].dw, c[1].dw, c[0].nw * sizeof *c[0].dw) == 0,
                       "conv case %d dw differs between 1 and 2 threads", i);
        MOOD_CHECK_MSG(memcmp(c[0].db, c[1].db, (size_t)d->out_c * sizeof *c[0].db) == 0,
                       "conv case %d db differs between 1 and 2 threads", i);
        conv_bufs_free(&c[0]), conv_bufs_free(&c[1]);
    }
    omp_set_num_threads(saved);
}

/* ----- normalisation ------------------------------------------------------------------------ */

static void test_group_norm_backward(void)
{
    bag g;
    if (!bag_open(&g, "ops_backward/norm.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16], label[64];
        snprintf(c, sizeof c, "g%d", i);
        if (!has(&g, c))
            break;
        size_t nx, nc;
        float *dm = get(&g, c, "dims", NULL), *x = get(&g, c, "x", &nx);
        float *w = get(&g, c, "w", &nc), *mean = get(&g, c, "mean", NULL);
        float *rstd = get(&g, c, "rstd", NULL), *dy = get(&g, c, "dout", NULL);
        float *rx = get(&g, c, "dx", NULL), *rw = get(&g, c, "dw", NULL);
        float *rb = get(&g, c, "db", NULL);
        if (!dm || !x || !w || !mean || !rstd || !dy || !rx || !rw || !rb)
            break;
        int B = (int)dm[0], C = (int)dm[1], groups = (int)dm[3];
        size_t HW = (size_t)dm[2];
        float *dx = bag_zeros(&g, nx), *dw = bag_zeros(&g, nc), *db = bag_zeros(&g, nc);
        for (int k = 1; k <= 2; k++) {
            mood_op_group_norm_backward(dx, dw, db, dy, x, w, mean, rstd, B, C, HW, groups);
            snprintf(label, sizeof label, "group norm %s (%d/%d) dx", c, C, groups);
            expect_k(label, dx, rx, nx, k);
            expect_k("  dw", dw, rw, nc, k);
            expect_k("  db", db, rb, nc, k);
        }
        bag_clear(&g);
    }
    bag_close(&g);
}

static void test_layer_norm_backward(void)
{
    bag g;
    if (!bag_open(&g, "ops_backward/norm.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16], label[64];
        snprintf(c, sizeof c, "l%d", i);
        if (!has(&g, c))
            break;
        size_t nx, nc;
        float *dm = get(&g, c, "dims", NULL), *x = get(&g, c, "x", &nx);
        float *w = get(&g, c, "w", &nc), *mean = get(&g, c, "mean", NULL);
        float *rstd = get(&g, c, "rstd", NULL), *dy = get(&g, c, "dout", NULL);
        float *rx = get(&g, c, "dx", NULL), *rw = get(&g, c, "dw", NULL);
        float *rb = get(&g, c, "db", NULL);
        if (!dm || !x || !w || !mean || !rstd || !dy || !rx || !rw || !rb)
            break;
        size_t N = (size_t)dm[0];
        int C = (int)dm[1];
        float *dx = bag_zeros(&g, nx), *dw = bag_zeros(&g, nc), *db = bag_zeros(&g, nc);
        for (int k = 1; k <= 2; k++) {
            mood_op_layer_norm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C);
            snprintf(label, sizeof label, "layer norm %s (C %d) dx", c, C);
            expect_k(label, dx, rx, nx, k);
            expect_k("  dw", dw, rw, nc, k);
            expect_k("  db", db, rb, nc, k);
        }
        bag_clear(&g);
    }
    bag_close(&g);
}

/* ----- attention ---------------------------------------------------------------------------- */

static void test_attention_backward(void)
{
    bag g;
    if (!bag_open(&g, "ops_backward/attention.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16], label[64];
        snprintf(c, sizeof c, "a%d", i);
        if (!has(&g, c))
            break;
        size_t nq, nk;
        float *dm = get(&g, c, "dims", NULL), *sc = get(&g, c, "scale", NULL);
        float *q = get(&g, c, "q", &nq), *k = get(&g, c, "k", &nk), *v = get(&g, c, "v", NULL);
        float *dy = get(&g, c, "dout", NULL), *rq = get(&g, c, "dq", NULL);
        float *rk = get(&g, c, "dk", NULL), *rv = get(&g, c, "dv", NULL);
        if (!dm || !sc || !q || !k || !v || !dy || !rq || !rk || !rv)
            break;
        int B = (int)dm[0], H = (int)dm[1], Tq = (int)dm[2], Tk = (int)dm[3], D = (int)dm[4];
        int causal = (int)dm[5];
        MOOD_CHECK(nq == (size_t)B * Tq * H * D && nk == (size_t)B * Tk * H * D);
        float *dq = bag_zeros(&g, nq), *dk = bag_zeros(&g, nk), *dv = bag_zeros(&g, nk);
        float *s = bag_zeros(&g, mood_op_attention_backward_scratch(Tq, Tk));
        for (int r = 1; r <= 2; r++) {
            mood_op_attention_backward(dq, dk, dv, dy, q, k, v, B, H, Tq, Tk, D, causal, sc[0], s);
            snprintf(label, sizeof label, "attention %s%s %dx%d dq", c, causal ? " causal" : "", Tq,
                     Tk);
            expect_k(label, dq, rq, nq, r);
            expect_k("  dk", dk, rk, nk, r);
            expect_k("  dv", dv, rv, nk, r);
        }
        /* each gradient alone: the same bits as all three */
        float *one = bag_zeros(&g, nq > nk ? nq : nk);
        float *all[3] = {dq, dk, dv};
        size_t n[3] = {nq, nk, nk};
        for (int j = 0; j < 3; j++) {
            memset(one, 0, n[j] * sizeof *one);
            memset(dq, 0, nq * sizeof *dq), memset(dk, 0, nk * sizeof *dk);
            memset(dv, 0, nk * sizeof *dv);
            mood_op_attention_backward(dq, dk, dv, dy, q, k, v, B, H, Tq, Tk, D, causal, sc[0], s);
            mood_op_attention_backward(j == 0 ? one : NULL, j == 1 ? one : NULL,
                                       j == 2 ? one : NULL, dy, q, k, v, B, H, Tq, Tk, D, causal,
                                       sc[0], s);
            MOOD_CHECK_MSG(memcmp(one, all[j], n[j] * sizeof *one) == 0, "attention %s grad %d", c,
                           j);
        }
        bag_clear(&g);
    }
    bag_close(&g);
}

/* ----- the rest ----------------------------------------------------------------------------- */

static void check_linear(bag *g)
{
    size_t nx, nw, nb;
    float *x = get(g, "linear", "x", &nx), *w = get(g, "linear", "w", &nw);
    float *dy = get(g, "linear", "dout", NULL), *rx = get(g, "linear", "dx", NULL);
    float *rw = get(g, "linear", "dw", NULL), *rb = get(g, "linear", "db", &nb);
    if (!x || !w || !dy || !rx || !rw || !rb || nx != 7 * 13 || nw != 11 * 13)
        return;
    float *dx = bag_zeros(g, nx), *dw = bag_zeros(g, nw), *db = bag_zeros(g, nb);
    for (int k = 1; k <= 2; k++) {
        mood_op_linear_backward(dx, dw, db, dy, x, w, 7, 13, 11);
        expect_k("linear dx", dx, rx, nx, k);
        expect_k("  dw", dw, rw, nw, k);
        expect_k("  db", db, rb, nb, k);
    }
}

static void check_activations(bag *g)
{
    size_t n;
    float *x = get(g, "act", "x", &n), *dy = get(g, "act", "dout", NULL);
    float *rs = get(g, "act", "silu", NULL), *rg = get(g, "act", "gelu", NULL);
    float *rq = get(g, "act", "quick_gelu", NULL);
    if (!x || !dy || !rs || !rg || !rq)
        return;
    float *d = bag_zeros(g, n);
    const char *name[3] = {"silu", "gelu", "quick_gelu"};
    const float *ref[3] = {rs, rg, rq};
    void (*fn[3])(float *, const float *, const float *, size_t) = {
        mood_op_silu_backward, mood_op_gelu_backward, mood_op_quick_gelu_backward};
    for (int a = 0; a < 3; a++) {
        memset(d, 0, n * sizeof *d);
        for (int k = 1; k <= 2; k++) {
            fn[a](d, dy, x, n);
            expect_k(name[a], d, ref[a], n, k);
        }
    }
    size_t nh;
    float *h = get(g, "geglu", "x", &nh), *gy = get(g, "geglu", "dout", NULL);
    float *rh = get(g, "geglu", "dx", NULL);
    if (!h || !gy || !rh || nh != 5 * 18)
        return;
    float *dh = bag_zeros(g, nh);
    for (int k = 1; k <= 2; k++) {
        mood_op_geglu_backward(dh, gy, h, 5, 9);
        expect_k("geglu", dh, rh, nh, k);
    }
}

static void check_layout(bag *g)
{
    float *uy = get(g, "up", "dout", NULL), *ux = get(g, "up", "dx", NULL);
    float *cy = get(g, "cbias", "dout", NULL), *cv = get(g, "cbias", "dv", NULL);
    float *ny = get(g, "nchw", "dout", NULL), *nx = get(g, "nchw", "dx", NULL);
    float *hy = get(g, "nhwc", "dout", NULL), *hx = get(g, "nhwc", "dx", NULL);
    float *ky = get(g, "cat", "dout", NULL), *ka = get(g, "cat", "da", NULL);
    float *kb = get(g, "cat", "db", NULL);
    if (!uy || !ux || !cy || !cv || !ny || !nx || !hy || !hx || !ky || !ka || !kb)
        return;
    float *d = bag_zeros(g, 2 * 3 * 5 * 7), *e = bag_zeros(g, 2 * 2 * 5 * 4);
    for (int k = 1; k <= 2; k++) {
        mood_op_upsample_nearest2x_backward(d, uy, 6, 5, 7);
        expect_k("upsample 2x", d, ux, 2 * 3 * 5 * 7, k);
    }
    memset(d, 0, 2 * 3 * 5 * 7 * sizeof *d);
    for (int k = 1; k <= 2; k++) {
        mood_op_add_channel_bias_backward(d, cy, 2, 5, 21);
        expect_k("channel bias dv", d, cv, 2 * 5, k);
    }
    memset(d, 0, 2 * 3 * 5 * 7 * sizeof *d);
    for (int k = 1; k <= 2; k++) {
        mood_op_nchw_to_nhwc_backward(d, ny, 2, 5, 21);
        expect_k("nchw to nhwc", d, nx, 2 * 5 * 21, k);
    }
    memset(d, 0, 2 * 3 * 5 * 7 * sizeof *d);
    for (int k = 1; k <= 2; k++) {
        mood_op_nhwc_to_nchw_backward(d, hy, 2, 5, 21);
        expect_k("nhwc to nchw", d, hx, 2 * 5 * 21, k);
    }
    memset(d, 0, 2 * 3 * 5 * 7 * sizeof *d);
    for (int k = 1; k <= 2; k++) {
        mood_op_concat_channels_backward(d, e, ky, 3, 2, 2, 20);
        expect_k("concat da", d, ka, 2 * 3 * 20, k);
        expect_k("  db", e, kb, 2 * 2 * 20, k);
    }
    memset(e, 0, 2 * 2 * 20 * sizeof *e);
    mood_op_concat_channels_backward(NULL, e, ky, 3, 2, 2, 20);
    expect_k("concat db alone", e, kb, 2 * 2 * 20, 1);
}

static void check_lora(bag *g)
{
    float *x = get(g, "lora", "x", NULL), *down = get(g, "lora", "down", NULL);
    float *up = get(g, "lora", "up", NULL), *dy = get(g, "lora", "dout", NULL);
    float *rx = get(g, "lora", "dx", NULL), *rd = get(g, "lora", "ddown", NULL);
    float *ru = get(g, "lora", "dup", NULL);
    if (!x || !down || !up || !dy || !rx || !rd || !ru)
        return;
    float *dx = bag_zeros(g, 9 * 13), *dd = bag_zeros(g, 4 * 13), *du = bag_zeros(g, 11 * 4);
    float *tmp = bag_zeros(g, 9 * 4), *dtmp = bag_zeros(g, 9 * 4);
    for (int k = 1; k <= 2; k++) {
        mood_op_lora_linear_backward(dx, dd, du, dy, x, down, up, 4, 0.75f, 9, 13, 11, tmp, dtmp);
        expect_k("lora dx", dx, rx, 9 * 13, k);
        expect_k("  ddown", dd, rd, 4 * 13, k);
        expect_k("  dup", du, ru, 11 * 4, k);
    }
}

static void test_misc_backward(void)
{
    bag g;
    if (!bag_open(&g, "ops_backward/misc.safetensors"))
        return;
    void (*checks[])(bag *) = {check_linear, check_activations, check_layout, check_lora};
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        checks[i](&g);
        bag_clear(&g);
    }
    bag_close(&g);
}

/* ----- finite differences ------------------------------------------------------------------- */

/* A tiny case of one forward op: its inputs, the upstream gradient, and the loss
 * sum(dout * forward(inputs)) taken in double. */
enum {
    FD_CONV,
    FD_LINEAR,
    FD_GROUP_NORM,
    FD_LAYER_NORM,
    FD_ATTENTION,
    FD_SILU,
    FD_GELU,
    FD_QUICK_GELU,
    FD_GEGLU,
    FD_LORA,
    FD_UPSAMPLE
};

typedef struct fd_case {
    int op;
    float *in[3]; /* meaning per op: x / w / b, q / k / v, x / down / up */
    size_t n[3];
    float *y, *dout, *scratch;
    size_t ny;
    mood_conv2d_dims cd;
    int B, C, G, H, Tq, Tk, D, causal, N, IC, OC, rank;
    size_t HW;
    float scale;
} fd_case;

static double fd_loss(fd_case *c)
{
    float **x = c->in;
    switch (c->op) {
    case FD_CONV:
        mood_op_conv2d(c->y, x[0], x[1], x[2], &c->cd, c->scratch);
        break;
    case FD_LINEAR:
        mood_op_linear(c->y, x[0], x[1], x[2], (size_t)c->N, c->IC, c->OC);
        break;
    case FD_GROUP_NORM:
        mood_op_group_norm(c->y, x[0], x[1], x[2], c->B, c->C, c->HW, c->G, 1e-5f, NULL, NULL);
        break;
    case FD_LAYER_NORM:
        mood_op_layer_norm(c->y, x[0], x[1], x[2], (size_t)c->N, c->C, 1e-5f, NULL, NULL);
        break;
    case FD_ATTENTION:
        mood_op_attention(c->y, x[0], x[1], x[2], c->B, c->H, c->Tq, c->Tk, c->D, c->causal,
                          c->scale, c->scratch);
        break;
    case FD_SILU:
        mood_op_silu(c->y, x[0], c->ny);
        break;
    case FD_GELU:
        mood_op_gelu(c->y, x[0], c->ny);
        break;
    case FD_QUICK_GELU:
        mood_op_quick_gelu(c->y, x[0], c->ny);
        break;
    case FD_GEGLU:
        mood_op_geglu(c->y, x[0], (size_t)c->N, c->C);
        break;
    case FD_LORA:
        memset(c->y, 0, c->ny * sizeof *c->y);
        mood_op_lora_linear(c->y, x[0], x[1], x[2], c->rank, c->scale, (size_t)c->N, c->IC, c->OC,
                            c->scratch);
        break;
    case FD_UPSAMPLE:
        mood_op_upsample_nearest2x(c->y, x[0], c->C, c->H, c->D);
        break;
    }
    double L = 0;
    for (size_t i = 0; i < c->ny; i++)
        L += (double)c->dout[i] * c->y[i];
    return L;
}

/* The analytic gradients of every input (zeroed first) from the backward op. */
static void fd_backward(fd_case *c, float **g)
{
    float **x = c->in;
    for (int i = 0; i < 3; i++)
        if (g[i])
            memset(g[i], 0, c->n[i] * sizeof *g[i]);
    float *tmp = malloc(((size_t)c->N * c->rank + 1) * sizeof *tmp);
    float *tmp2 = malloc(((size_t)c->N * c->rank + 1) * sizeof *tmp2);
    float *sc = NULL;
    if (c->op == FD_CONV)
        sc = malloc((mood_op_conv2d_backward_scratch(&c->cd) + 1) * sizeof *sc);
    if (c->op == FD_ATTENTION)
        sc = malloc(mood_op_attention_backward_scratch(c->Tq, c->Tk) * sizeof *sc);
    float *mean = malloc(64 * sizeof *mean), *rstd = malloc(64 * sizeof *rstd);
    switch (c->op) {
    case FD_CONV:
        mood_op_conv2d_backward(g[0], g[1], g[2], c->dout, x[0], x[1], &c->cd, sc);
        break;
    case FD_LINEAR:
        mood_op_linear_backward(g[0], g[1], g[2], c->dout, x[0], x[1], (size_t)c->N, c->IC, c->OC);
        break;
    case FD_GROUP_NORM:
        mood_op_group_norm(c->y, x[0], x[1], x[2], c->B, c->C, c->HW, c->G, 1e-5f, mean, rstd);
        mood_op_group_norm_backward(g[0], g[1], g[2], c->dout, x[0], x[1], mean, rstd, c->B, c->C,
                                    c->HW, c->G);
        break;
    case FD_LAYER_NORM:
        mood_op_layer_norm(c->y, x[0], x[1], x[2], (size_t)c->N, c->C, 1e-5f, mean, rstd);
        mood_op_layer_norm_backward(g[0], g[1], g[2], c->dout, x[0], x[1], mean, rstd, (size_t)c->N,
                                    c->C);
        break;
    case FD_ATTENTION:
        mood_op_attention_backward(g[0], g[1], g[2], c->dout, x[0], x[1], x[2], c->B, c->H, c->Tq,
                                   c->Tk, c->D, c->causal, c->scale, sc);
        break;
    case FD_SILU:
        mood_op_silu_backward(g[0], c->dout, x[0], c->ny);
        break;
    case FD_GELU:
        mood_op_gelu_backward(g[0], c->dout, x[0], c->ny);
        break;
    case FD_QUICK_GELU:
        mood_op_quick_gelu_backward(g[0], c->dout, x[0], c->ny);
        break;
    case FD_GEGLU:
        mood_op_geglu_backward(g[0], c->dout, x[0], (size_t)c->N, c->C);
        break;
    case FD_LORA:
        mood_op_lora_linear_backward(g[0], g[1], g[2], c->dout, x[0], x[1], x[2], c->rank, c->scale,
                                     (size_t)c->N, c->IC, c->OC, tmp, tmp2);
        break;
    case FD_UPSAMPLE:
        mood_op_upsample_nearest2x_backward(g[0], c->dout, c->C, c->H, c->D);
        break;
    }
    free(tmp), free(tmp2), free(sc), free(mean), free(rstd);
}

/* Central differences of the loss for every element of every input, against the backward op:
 * max |fd - grad| within 1e-3 of max |grad| (h = 1e-2: float32 rounding of the forward pass
 * and the h^2 term both stay near 1e-5; a wrong sign or a missing term is off by O(1)). */
static void fd_check(const char *label, fd_case *c)
{
    const double h = 1e-2;
    float *g[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++)
        if (c->in[i])
            g[i] = malloc(c->n[i] * sizeof *g[i]);
    fd_backward(c, g);
    double worst = 0;
    for (int i = 0; i < 3; i++) {
        if (!c->in[i])
            continue;
        double err = 0, scale = 0;
        for (size_t j = 0; j < c->n[i]; j++) {
            float v = c->in[i][j], vp = (float)(v + h), vm = (float)(v - h);
            c->in[i][j] = vp;
            double lp = fd_loss(c);
            c->in[i][j] = vm;
            double lm = fd_loss(c);
            c->in[i][j] = v;
            double fd = (lp - lm) / ((double)vp - vm), e = fabs(fd - g[i][j]);
            err = e > err ? e : err;
            scale = fabs(g[i][j]) > scale ? fabs(g[i][j]) : scale;
        }
        double rel = scale > 0 ? err / scale : err;
        MOOD_CHECK_MSG(rel <= 1e-3 && scale > 0, "%s input %d: finite differences off by %g", label,
                       i, rel);
        worst = rel > worst ? rel : worst;
    }
    printf("  fd %-25s %.3g\n", label, worst);
    for (int i = 0; i < 3; i++)
        free(g[i]);
}

/* Allocates and fills a case's inputs (sizes n[i], 0 for none) and its output / dout. */
static void fd_setup(fd_case *c, size_t n0, size_t n1, size_t n2, size_t ny, size_t nscratch,
                     uint32_t seed)
{
    size_t n[3] = {n0, n1, n2};
    for (int i = 0; i < 3; i++) {
        c->n[i] = n[i];
        c->in[i] = n[i] ? malloc(n[i] * sizeof *c->in[i]) : NULL;
        if (c->in[i]) {
            fill(c->in[i], n[i], seed + 7 * i);
            for (size_t j = 0; j < n[i]; j++)
                c->in[i][j] *= 2.0f;
        }
    }
    c->ny = ny;
    c->y = malloc(ny * sizeof *c->y);
    c->dout = malloc(ny * sizeof *c->dout);
    fill(c->dout, ny, seed + 100);
    c->scratch = malloc((nscratch + 1) * sizeof *c->scratch);
}

static void fd_free(fd_case *c)
{
    for (int i = 0; i < 3; i++)
        free(c->in[i]);
    free(c->y), free(c->dout), free(c->scratch);
}

static void fd_conv(const char *label, mood_conv2d_dims d)
{
    fd_case c = {.op = FD_CONV, .cd = d};
    size_t ny = (size_t)d.batch * d.out_c * mood_op_conv2d_out_h(&d) * mood_op_conv2d_out_w(&d);
    fd_setup(&c, (size_t)d.batch * d.in_c * d.h * d.w, (size_t)d.out_c * d.in_c * d.k * d.k,
             (size_t)d.out_c, ny, mood_op_conv2d_scratch(&d), 51);
    fd_check(label, &c);
    fd_free(&c);
}

static void fd_attention(const char *label, int B, int H, int Tq, int Tk, int D, int causal,
                         float scale)
{
    fd_case c = {.op = FD_ATTENTION,
                 .B = B,
                 .H = H,
                 .Tq = Tq,
                 .Tk = Tk,
                 .D = D,
                 .causal = causal,
                 .scale = scale};
    size_t nq = (size_t)B * Tq * H * D, nk = (size_t)B * Tk * H * D;
    fd_setup(&c, nq, nk, nk, nq, mood_op_attention_scratch(Tq, Tk), 61);
    fd_check(label, &c);
    fd_free(&c);
}

static void test_finite_differences(void)
{
    fd_conv("conv 3x3 s2 p1", (mood_conv2d_dims){2, 2, 5, 4, 3, 3, 2, 1});
    fd_conv("conv 3x3 s1 p0", (mood_conv2d_dims){1, 2, 4, 5, 2, 3, 1, 0});
    fd_conv("conv 1x1", (mood_conv2d_dims){2, 3, 3, 2, 2, 1, 1, 0});
    fd_attention("attention", 1, 2, 3, 4, 3, 0, 0.0f);
    fd_attention("attention causal", 2, 1, 4, 4, 2, 1, 0.7f);

    fd_case c = {.op = FD_LINEAR, .N = 3, .IC = 4, .OC = 5};
    fd_setup(&c, 3 * 4, 5 * 4, 5, 3 * 5, 0, 71);
    fd_check("linear", &c);
    fd_free(&c);

    c = (fd_case){.op = FD_GROUP_NORM, .B = 2, .C = 4, .HW = 5, .G = 2};
    fd_setup(&c, 2 * 4 * 5, 4, 4, 2 * 4 * 5, 0, 72);
    fd_check("group norm", &c);
    fd_free(&c);

    c = (fd_case){.op = FD_LAYER_NORM, .N = 3, .C = 6};
    fd_setup(&c, 3 * 6, 6, 6, 3 * 6, 0, 73);
    fd_check("layer norm", &c);
    fd_free(&c);

    const int acts[3] = {FD_SILU, FD_GELU, FD_QUICK_GELU};
    const char *names[3] = {"silu", "gelu", "quick_gelu"};
    for (int a = 0; a < 3; a++) {
        c = (fd_case){.op = acts[a]};
        fd_setup(&c, 11, 0, 0, 11, 0, 74 + a);
        fd_check(names[a], &c);
        fd_free(&c);
    }

    c = (fd_case){.op = FD_GEGLU, .N = 2, .C = 3};
    fd_setup(&c, 2 * 6, 0, 0, 2 * 3, 0, 78);
    fd_check("geglu", &c);
    fd_free(&c);

    c = (fd_case){.op = FD_LORA, .N = 3, .IC = 4, .OC = 5, .rank = 2, .scale = 0.5f};
    fd_setup(&c, 3 * 4, 2 * 4, 5 * 2, 3 * 5, 3 * 2, 79);
    fd_check("lora", &c);
    fd_free(&c);

    c = (fd_case){.op = FD_UPSAMPLE, .C = 2, .H = 2, .D = 3};
    fd_setup(&c, 2 * 2 * 3, 0, 0, 2 * 4 * 6, 0, 80);
    fd_check("upsample", &c);
    fd_free(&c);
}

/* ----- thread-count independence ------------------------------------------------------------ */

/* The results compared: conv (3x3, 3x3 stride 2, 1x1: dx and dw; db of the first), attention
 * (plain, causal: dq, dk, dv), linear (dx, dw, db), group norm and layer norm (dx). */
enum { R_CONV = 0, R_CONV_DB = 6, R_ATT = 7, R_LIN = 13, R_GN = 16, R_LN = 17, NRES = 18 };

#define TC_NX  ((size_t)2 * 32 * 33 * 35) /* conv and group norm input */
#define TC_NW  ((size_t)48 * 32 * 9)      /* conv weight */
#define TC_NQ  ((size_t)2 * 300 * 80)     /* attention q, k, v */
#define TC_ROW 700                        /* linear and layer norm rows */

/* Runs every backward pass compared on nthreads threads; res[i] zeroed by the caller. */
static void run_threaded(float **res, int nthreads)
{
    omp_set_num_threads(nthreads);
    mood_conv2d_dims cd[3] = {
        {2, 32, 33, 35, 48, 3, 1, 1}, {2, 32, 33, 35, 48, 3, 2, 1}, {2, 32, 33, 35, 48, 1, 1, 0}};
    size_t ny = (size_t)2 * 48 * 33 * 35, ns = 1;
    for (int i = 0; i < 3; i++) {
        size_t n = mood_op_conv2d_backward_scratch(&cd[i]);
        ns = n > ns ? n : ns;
    }
    float *x = malloc(TC_NX * sizeof *x), *w = malloc(TC_NW * sizeof *w);
    float *dy = malloc(ny * sizeof *dy), *s = malloc(ns * sizeof *s);
    fill(x, TC_NX, 11), fill(w, TC_NW, 12), fill(dy, ny, 13);
    for (int i = 0; i < 3; i++)
        mood_op_conv2d_backward(res[R_CONV + 2 * i], res[R_CONV + 2 * i + 1],
                                i ? NULL : res[R_CONV_DB], dy, x, w, &cd[i], s);
    int B = 2, H = 2, T = 300, D = 40;
    float *q = malloc(4 * TC_NQ * sizeof *q), *k = q + TC_NQ, *v = k + TC_NQ, *dq = v + TC_NQ;
    float *as = malloc(mood_op_attention_backward_scratch(T, T) * sizeof *as);
    fill(q, 4 * TC_NQ, 14);
    for (int c = 0; c < 2; c++)
        mood_op_attention_backward(res[R_ATT + 3 * c], res[R_ATT + 3 * c + 1],
                                   res[R_ATT + 3 * c + 2], dq, q, k, v, B, H, T, T, D, c, 0.0f, as);
    /* 700 rows summed into dw: above OpenBLAS's K block */
    float *la = malloc((size_t)TC_ROW * 300 * sizeof *la),
          *lw = malloc((size_t)64 * 300 * sizeof *lw);
    float *ld = malloc((size_t)TC_ROW * 300 * sizeof *ld);
    fill(la, (size_t)TC_ROW * 300, 15), fill(lw, (size_t)64 * 300, 16);
    fill(ld, (size_t)TC_ROW * 300, 17);
    mood_op_linear_backward(res[R_LIN], res[R_LIN + 1], res[R_LIN + 2], ld, la, lw, TC_ROW, 300,
                            64);
    float mean[TC_ROW], rstd[TC_ROW];
    mood_op_group_norm(dy, x, w, w, 2, 32, 33 * 35, 8, 1e-5f, mean, rstd);
    mood_op_group_norm_backward(res[R_GN], NULL, NULL, dy, x, w, mean, rstd, 2, 32, 33 * 35, 8);
    mood_op_layer_norm(ld, la, lw, lw, TC_ROW, 300, 1e-5f, mean, rstd);
    mood_op_layer_norm_backward(res[R_LN], NULL, NULL, ld, la, lw, mean, rstd, TC_ROW, 300);
    free(x), free(w), free(dy), free(s), free(q), free(as), free(la), free(lw), free(ld);
}

static void test_thread_count(void)
{
    size_t lx = (size_t)TC_ROW * 300;
    size_t n[NRES] = {TC_NX, TC_NW, TC_NX, TC_NW, TC_NX, (size_t)48 * 32,  48, TC_NQ, TC_NQ,
                      TC_NQ, TC_NQ, TC_NQ, TC_NQ, lx,    (size_t)64 * 300, 64, TC_NX, lx};
    const char *what[NRES] = {"conv 3x3 dx",   "conv 3x3 dw",  "conv s2 dx",  "conv s2 dw",
                              "conv 1x1 dx",   "conv 1x1 dw",  "conv 3x3 db", "attention dq",
                              "attention dk",  "attention dv", "causal dq",   "causal dk",
                              "causal dv",     "linear dx",    "linear dw",   "linear db",
                              "group norm dx", "layer norm dx"};
    float *r1[NRES], *r2[NRES];
    for (int i = 0; i < NRES; i++) {
        r1[i] = calloc(n[i], sizeof *r1[i]);
        r2[i] = calloc(n[i], sizeof *r2[i]);
    }
    int saved = omp_get_max_threads();
    run_threaded(r1, 1);
    run_threaded(r2, 2);
    MOOD_CHECK(omp_get_max_threads() == 2); /* the ops leave the caller's setting alone */
    omp_set_num_threads(saved);
    for (int i = 0; i < NRES; i++) {
        MOOD_CHECK_MSG(memcmp(r1[i], r2[i], n[i] * sizeof *r1[i]) == 0,
                       "%s differs between 1 and 2 threads (max %g)", what[i],
                       rel_diff_k(r1[i], r2[i], 1, n[i]));
        free(r1[i]), free(r2[i]);
    }
}

static void test_summary(void)
{
    printf("  worst difference from torch / naive references: %.3g (tolerance %g)\n", worst_seen,
           TOL);
}

MOOD_TEST_MAIN(MOOD_T(test_conv2d_backward), MOOD_T(test_conv2d_backward_tiles),
               MOOD_T(test_conv2d_backward_small_maps), MOOD_T(test_conv2d_backward_small_threads),
               MOOD_T(test_group_norm_backward), MOOD_T(test_layer_norm_backward),
               MOOD_T(test_attention_backward), MOOD_T(test_misc_backward),
               MOOD_T(test_finite_differences), MOOD_T(test_thread_count), MOOD_T(test_summary))
