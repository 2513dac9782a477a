/*
 * test_ops.c: the CPU layer functions (engine/cpu/ops.h) against torch / diffusers.
 *
 * Fixtures (tests/fixtures/ops/, tools/make_fixtures_ops.py): conv2d (k 1/3, stride 1/2, pad
 * 0/1, with and without bias), group norm (32 groups, odd groups) and layer norm with their
 * mean / rstd, scaled-dot-product attention (Tq != Tk, causal, head dims 8 and 40, more query
 * rows than one block), linear, GEGLU, activations, timestep embeddings, upsampling, concat,
 * layout transposes, channel bias, the LoRA side path. Every result must be within 1e-5 of the
 * reference relative to max(1, max |ref|).
 *
 * Also, against naive double-precision loops: convolutions cut into many tiles (large images;
 * several small samples in one tile, tiles ending inside a sample, input channels in several
 * chunks) and attention with several key blocks and query groups, causal or not, where every
 * attention kernel the CPU runs (plain C, AVX2, AVX-512) must give the same bits, and a head too
 * large for the fast path; and conv2d / attention / group norm / linear giving bit-identical
 * results on 1 and 2 threads.
 */
#include "harness.h"

#include <omp.h>

#include "common/common.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/ops_internal.h"
#include "mood/safetensors.h"

#define TOL 1e-5

/* Max |a - b| over n, divided by max(1, max |b|). */
static double rel_diff(const float *a, const float *b, size_t n)
{
    return harness_rel_diff(a, b, n, 1.0);
}

/* The tensors read for one case, freed together. */
typedef struct bag {
    mood_st_file *f;
    float *p[24];
    int n;
} bag;

/* Tensor "<c>.<role>" as a fresh float buffer (ints converted); NULL with n 0 when it is
 * empty; a missing tensor fails the test. */
static float *get(bag *g, const char *c, const char *role, size_t *n)
{
    char name[64];
    snprintf(name, sizeof name, "%s.%s", c, role);
    const mood_st_tensor *t = mood_st_find(g->f, name);
    MOOD_CHECK_MSG(t != NULL, "fixture tensor %s", name);
    size_t cnt = t ? (size_t)mood_st_numel(t) : 0;
    if (n)
        *n = cnt;
    if (!cnt)
        return NULL;
    if (g->n == (int)(sizeof g->p / sizeof g->p[0])) {
        MOOD_CHECK_MSG(0, "too many tensors held for %s (bag_clear between cases)", name);
        return NULL;
    }
    float *out = malloc(cnt * sizeof *out);
    if (out && mood_st_to_f32(out, t) != 0) {
        free(out);
        out = NULL;
    }
    MOOD_CHECK(out != NULL);
    g->p[g->n++] = out;
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

/* Checks out against ref and prints the difference under label. */
static void expect(const char *label, const float *out, const float *ref, size_t n)
{
    if (!out || !ref)
        return;
    double d = rel_diff(out, ref, n);
    printf("  %-22s %.3g\n", label, d);
    MOOD_CHECK_MSG(d <= TOL, "%s differs by %g", label, d);
}

/* ----- convolution -------------------------------------------------------------------------- */

static void test_conv2d(void)
{
    bag g;
    if (!bag_open(&g, "ops/conv.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16];
        snprintf(c, sizeof c, "c%d", i);
        if (!has(&g, c))
            break;
        size_t ny, nb;
        float *dm = get(&g, c, "dims", NULL), *x = get(&g, c, "x", NULL);
        float *w = get(&g, c, "w", NULL), *b = get(&g, c, "b", &nb), *y = get(&g, c, "y", &ny);
        if (!dm || !x || !w || !y)
            break;
        mood_conv2d_dims d = {(int)dm[0], (int)dm[1], (int)dm[2], (int)dm[3],
                              (int)dm[4], (int)dm[5], (int)dm[6], (int)dm[7]};
        size_t n = (size_t)d.batch * d.out_c * mood_op_conv2d_out_h(&d) * mood_op_conv2d_out_w(&d);
        MOOD_CHECK(n == ny);
        MOOD_CHECK((mood_op_conv2d_scratch(&d) == 0) == (d.k == 1 && d.stride == 1 && d.pad == 0));
        float *out = malloc(ny * sizeof *out);
        float *scratch = malloc((mood_op_conv2d_scratch(&d) + 1) * sizeof *scratch);
        mood_op_conv2d(out, x, w, nb ? b : NULL, &d, scratch);
        char label[64];
        snprintf(label, sizeof label, "conv %s k%d s%d p%d%s", c, d.k, d.stride, d.pad,
                 nb ? "" : " nobias");
        expect(label, out, y, n == ny ? n : 0);
        free(out), free(scratch);
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

/* Naive double-precision convolution of one sample: the reference for the tiled cases. */
static void conv_naive(float *ref, const float *x, const float *w, const float *b,
                       const mood_conv2d_dims *d)
{
    int OH = mood_op_conv2d_out_h(d), OW = mood_op_conv2d_out_w(d), k = d->k;
    for (int o = 0; o < d->out_c; o++) {
        for (int oy = 0; oy < OH; oy++) {
            for (int ox = 0; ox < OW; ox++) {
                double acc = b[o];
                for (int c = 0; c < d->in_c; c++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = oy * d->stride - d->pad + ky,
                                ix = ox * d->stride - d->pad + kx;
                            if (iy >= 0 && iy < d->h && ix >= 0 && ix < d->w)
                                acc += (double)w[((o * d->in_c + c) * k + ky) * k + kx] *
                                       x[((size_t)c * d->h + iy) * d->w + ix];
                        }
                ref[((size_t)o * OH + oy) * OW + ox] = (float)acc;
            }
        }
    }
}

/* Convolutions cut into many position tiles (starting and ending mid-row, stride 1 and 2),
 * against a naive double-precision loop (no torch fixture: the input alone is 4 MB). */
static void test_conv2d_tiles(void)
{
    /* large images cut into many tiles; several small samples in one tile, with tiles that end
     * inside a sample and input channels in several chunks (3x3, and 1x1 read in place) */
    mood_conv2d_dims dims[4] = {{1, 64, 128, 128, 3, 3, 1, 1},
                                {1, 64, 130, 126, 3, 3, 2, 1},
                                {3, 70, 13, 11, 5, 3, 1, 1},
                                {3, 70, 5, 7, 5, 1, 1, 0}};
    const char *label[4] = {"conv tiles (naive)", "conv tiles s2 (naive)",
                            "conv batch tiles (naive)", "conv 1x1 batch tiles (naive)"};
    for (int i = 0; i < 4; i++) {
        const mood_conv2d_dims *d = &dims[i];
        int kk = d->k * d->k;
        size_t hw = (size_t)d->h * d->w, nw = (size_t)d->out_c * d->in_c * kk;
        size_t nx = (size_t)d->batch * d->in_c * hw;
        size_t ohw = (size_t)mood_op_conv2d_out_h(d) * mood_op_conv2d_out_w(d);
        size_t ny = (size_t)d->batch * d->out_c * ohw;
        float *x = malloc(nx * sizeof *x), *w = malloc(nw * sizeof *w);
        float *b = malloc((size_t)d->out_c * sizeof *b);
        float *y = malloc(ny * sizeof *y), *ref = malloc(ny * sizeof *ref);
        size_t ns = mood_op_conv2d_scratch(d);
        float *s = malloc((ns ? ns : 1) * sizeof *s);
        if (i < 2)
            MOOD_CHECK(ns < (size_t)d->in_c * kk * ny / 3); /* really cut into tiles */
        fill(x, nx, 1 + (uint32_t)i), fill(w, nw, 2), fill(b, (size_t)d->out_c, 3);
        mood_op_conv2d(y, x, w, b, d, s);
        for (int n = 0; n < d->batch; n++)
            conv_naive(ref + n * d->out_c * ohw, x + n * d->in_c * hw, w, b, d);
        expect(label[i], y, ref, ny);
        free(x), free(w), free(b), free(y), free(ref), free(s);
    }
}

/* ----- normalisation ------------------------------------------------------------------------ */

static void test_group_norm(void)
{
    bag g;
    if (!bag_open(&g, "ops/norm.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16], label[64];
        snprintf(c, sizeof c, "g%d", i);
        if (!has(&g, c))
            break;
        size_t ny, ng;
        float *dm = get(&g, c, "dims", NULL), *eps = get(&g, c, "eps", NULL);
        float *x = get(&g, c, "x", NULL), *w = get(&g, c, "w", NULL), *b = get(&g, c, "b", NULL);
        float *y = get(&g, c, "y", &ny), *mean = get(&g, c, "mean", &ng);
        float *rstd = get(&g, c, "rstd", NULL);
        if (!dm || !eps || !x || !w || !b || !y || !mean || !rstd)
            break;
        int B = (int)dm[0], C = (int)dm[1], groups = (int)dm[3];
        size_t HW = (size_t)dm[2];
        MOOD_CHECK(ny == (size_t)B * C * HW && ng == (size_t)B * groups);
        float *out = malloc(ny * sizeof *out), *m = malloc(ng * sizeof *m);
        float *r = malloc(ng * sizeof *r);
        mood_op_group_norm(out, x, w, b, B, C, HW, groups, eps[0], m, r);
        snprintf(label, sizeof label, "group norm %s (%d/%d)", c, C, groups);
        expect(label, out, y, ny);
        expect("  mean", m, mean, ng);
        expect("  rstd", r, rstd, ng);
        mood_op_group_norm(x, x, w, b, B, C, HW, groups, eps[0], NULL, NULL); /* in place */
        MOOD_CHECK(memcmp(x, out, ny * sizeof *out) == 0);
        free(out), free(m), free(r);
        bag_clear(&g);
    }
    bag_close(&g);
}

static void test_layer_norm(void)
{
    bag g;
    if (!bag_open(&g, "ops/norm.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16], label[64];
        snprintf(c, sizeof c, "l%d", i);
        if (!has(&g, c))
            break;
        size_t ny;
        float *dm = get(&g, c, "dims", NULL), *eps = get(&g, c, "eps", NULL);
        float *x = get(&g, c, "x", NULL), *w = get(&g, c, "w", NULL), *b = get(&g, c, "b", NULL);
        float *y = get(&g, c, "y", &ny), *mean = get(&g, c, "mean", NULL);
        float *rstd = get(&g, c, "rstd", NULL);
        if (!dm || !eps || !x || !w || !b || !y || !mean || !rstd)
            break;
        size_t N = (size_t)dm[0];
        int C = (int)dm[1];
        MOOD_CHECK(ny == N * C);
        float *out = malloc(ny * sizeof *out), *m = malloc(N * sizeof *m);
        float *r = malloc(N * sizeof *r);
        mood_op_layer_norm(out, x, w, b, N, C, eps[0], m, r);
        snprintf(label, sizeof label, "layer norm %s (C %d)", c, C);
        expect(label, out, y, ny);
        expect("  mean", m, mean, N);
        expect("  rstd", r, rstd, N);
        mood_op_layer_norm(x, x, w, b, N, C, eps[0], NULL, NULL);
        MOOD_CHECK(memcmp(x, out, ny * sizeof *out) == 0);
        free(out), free(m), free(r);
        bag_clear(&g);
    }
    bag_close(&g);
}

/* ----- attention ---------------------------------------------------------------------------- */

static void test_attention(void)
{
    bag g;
    if (!bag_open(&g, "ops/attention.safetensors"))
        return;
    for (int i = 0;; i++) {
        char c[16], label[64];
        snprintf(c, sizeof c, "a%d", i);
        if (!has(&g, c))
            break;
        size_t ny;
        float *dm = get(&g, c, "dims", NULL), *sc = get(&g, c, "scale", NULL);
        float *q = get(&g, c, "q", NULL), *k = get(&g, c, "k", NULL), *v = get(&g, c, "v", NULL);
        float *y = get(&g, c, "y", &ny);
        if (!dm || !sc || !q || !k || !v || !y)
            break;
        int B = (int)dm[0], H = (int)dm[1], Tq = (int)dm[2], Tk = (int)dm[3], D = (int)dm[4];
        int causal = (int)dm[5];
        MOOD_CHECK(ny == (size_t)B * Tq * H * D);
        float *out = malloc(ny * sizeof *out);
        float *s = malloc(mood_op_attention_scratch(Tq, Tk) * sizeof *s);
        mood_op_attention(out, q, k, v, B, H, Tq, Tk, D, causal, sc[0], s);
        snprintf(label, sizeof label, "attention %s%s D%d", c, causal ? " causal" : "", D);
        expect(label, out, y, ny);
        free(out), free(s);
        bag_clear(&g);
    }
    bag_close(&g);
}

/* Naive double-precision attention (exact softmax), the reference for the cases below. */
static void attention_naive(float *ref, const float *q, const float *k, const float *v, int B,
                            int H, int Tq, int Tk, int D, int causal)
{
    size_t ld = (size_t)H * D;
    double *p = malloc((size_t)Tk * sizeof *p);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                const float *qi = q + ((size_t)b * Tq + i) * ld + (size_t)h * D;
                int nk = causal ? i + 1 : Tk;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < nk; j++) {
                    const float *kj = k + ((size_t)b * Tk + j) * ld + (size_t)h * D;
                    double dot = 0;
                    for (int d = 0; d < D; d++)
                        dot += (double)qi[d] * kj[d];
                    p[j] = dot / sqrt((double)D);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < nk; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int d = 0; d < D; d++) {
                    double acc = 0;
                    for (int j = 0; j < nk; j++)
                        acc += p[j] * v[((size_t)b * Tk + j) * ld + (size_t)h * D + d];
                    ref[((size_t)b * Tq + i) * ld + (size_t)h * D + d] = (float)(acc / sum);
                }
            }
    free(p);
}

/* The attention kernels (plain C, AVX2, AVX-512: whichever the CPU runs) give the same bits, and
 * are right, with several key blocks, query groups and tasks, causal or not, Tq != Tk and odd
 * sizes; a head too large for the scratch takes the general path. */
static void test_attention_kernels(void)
{
    static const int cases[][6] = {/* B, H, Tq, Tk, D, causal */
                                   {2, 3, 300, 300, 40, 0},
                                   {2, 3, 300, 300, 40, 1},
                                   {1, 2, 77, 530, 24, 0},
                                   {2, 1, 33, 33, 67, 1},
                                   {1, 2, 5, 7, 1100, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int B = cases[c][0], H = cases[c][1], Tq = cases[c][2], Tk = cases[c][3];
        int D = cases[c][4], causal = cases[c][5];
        size_t nq = (size_t)B * Tq * H * D, nk = (size_t)B * Tk * H * D;
        float *q = malloc(nq * sizeof *q), *k = malloc(2 * nk * sizeof *k), *v = k + nk;
        float *ref = malloc(nq * sizeof *ref), *out[3];
        float *s = malloc(mood_op_attention_scratch(Tq, Tk) * sizeof *s);
        fill(q, nq, 21 + (uint32_t)c), fill(k, 2 * nk, 31 + (uint32_t)c);
        attention_naive(ref, q, k, v, B, H, Tq, Tk, D, causal);
        int saved = mood__ops_attention_kernel(-1);
        for (int which = 0; which < 3; which++) {
            out[which] = malloc(nq * sizeof *out[which]);
            if (!mood__ops_attention_kernel_ok(which))
                continue;
            mood__ops_attention_kernel(which);
            mood_op_attention(out[which], q, k, v, B, H, Tq, Tk, D, causal, 0.0f, s);
            char label[64];
            snprintf(label, sizeof label, "attn %dx%d D%d%s k%d", Tq, Tk, D,
                     causal ? " causal" : "", which);
            expect(label, out[which], ref, nq);
            MOOD_CHECK_MSG(memcmp(out[which], out[0], nq * sizeof *ref) == 0,
                           "attention kernel %d differs from the plain C one", which);
        }
        mood__ops_attention_kernel(saved);
        free(q), free(k), free(ref), free(s);
        for (int which = 0; which < 3; which++)
            free(out[which]);
    }
}

/* ----- the rest ----------------------------------------------------------------------------- */

static void check_linear(bag *g)
{
    size_t ny;
    float *x = get(g, "linear", "x", NULL), *w = get(g, "linear", "w", NULL);
    float *b = get(g, "linear", "b", NULL), *y = get(g, "linear", "y", &ny);
    float *y0 = get(g, "linear", "y_nobias", NULL);
    float *out = malloc(ny * sizeof *out);
    if (x && w && b && y && y0 && ny == 7 * 11) {
        mood_op_linear(out, x, w, b, 7, 13, 11);
        expect("linear", out, y, ny);
        mood_op_linear(out, x, w, NULL, 7, 13, 11);
        expect("linear no bias", out, y0, ny);
    }
    free(out);
}

static void check_geglu(bag *g)
{
    size_t ny;
    float *x = get(g, "geglu", "x", NULL), *w = get(g, "geglu", "w", NULL);
    float *b = get(g, "geglu", "b", NULL), *y = get(g, "geglu", "y", &ny);
    float *h = malloc(6 * 20 * sizeof *h), *out = malloc(6 * 10 * sizeof *out);
    if (x && w && b && y && ny == 6 * 10) {
        mood_op_linear(h, x, w, b, 6, 12, 20);
        mood_op_geglu(out, h, 6, 10);
        expect("geglu (diffusers)", out, y, ny);
    }
    free(h), free(out);
}

static void check_activations(bag *g)
{
    size_t n;
    float *x = get(g, "act", "x", &n), *silu = get(g, "act", "silu", NULL);
    float *gelu = get(g, "act", "gelu", NULL), *qg = get(g, "act", "quick_gelu", NULL);
    float *out = malloc(n * sizeof *out);
    if (x && silu && gelu && qg) {
        mood_op_silu(out, x, n);
        expect("silu", out, silu, n);
        mood_op_gelu(out, x, n);
        expect("gelu", out, gelu, n);
        mood_op_quick_gelu(out, x, n);
        expect("quick_gelu", out, qg, n);
        memcpy(out, x, n * sizeof *out);
        mood_op_silu(out, out, n); /* in place */
        expect("silu in place", out, silu, n);
    }
    free(out);
}

/* The embedding is sin / cos of t * freq: an ulp of freq (torch takes exp from MKL, within an ulp
 * of the correctly rounded value mood uses) moves the argument by up to |t| 2^-23 freq, 6e-5 at
 * t = 999. So row b must be within 1e-5 + |t_b| 2^-22 (values are at most 1): 1e-5 for t <= 1,
 * still far below what a wrong frequency, order or shift gives. */
static void check_timestep(bag *g)
{
    size_t nt;
    float *t = get(g, "temb", "t", &nt);
    for (int i = 0; t; i++) {
        char c[16];
        snprintf(c, sizeof c, "temb%d", i);
        if (!has(g, c))
            break;
        size_t ny;
        float *dm = get(g, c, "dims", NULL), *y = get(g, c, "y", &ny);
        if (!dm || !y)
            break;
        int dim = (int)dm[0];
        MOOD_CHECK(ny == nt * dim);
        float *out = malloc(ny * sizeof *out);
        mood_op_timestep_embedding(out, t, (int)nt, dim, (int)dm[1], dm[2], 10000.0f);
        double worst = 0, worst_small_t = 0;
        for (size_t b = 0; b < nt && ny == nt * dim; b++) {
            double d = rel_diff(out + b * dim, y + b * dim, (size_t)dim);
            MOOD_CHECK_MSG(d <= TOL + fabs(t[b]) * 0x1p-22, "timestep %d t %g differs by %g", dim,
                           t[b], d);
            worst = d > worst ? d : worst;
            if (fabs(t[b]) <= 1)
                worst_small_t = d > worst_small_t ? d : worst_small_t;
        }
        printf("  timestep %d flip %d shift %g: %.3g (t <= 1: %.3g)\n", dim, (int)dm[1], dm[2],
               worst, worst_small_t);
        free(out);
    }
}

static void check_layout(bag *g)
{
    float *x = get(g, "up", "x", NULL), *y = get(g, "up", "y", NULL);
    float *out = malloc(2 * 3 * 10 * 14 * sizeof *out);
    if (x && y) {
        mood_op_upsample_nearest2x(out, x, 6, 5, 7);
        expect("upsample 2x", out, y, 2 * 3 * 10 * 14);
    }
    float *a = get(g, "cat", "a", NULL), *b = get(g, "cat", "b", NULL);
    float *cy = get(g, "cat", "y", NULL);
    if (a && b && cy) {
        mood_op_concat_channels(out, a, 3, b, 2, 2, 20);
        expect("concat", out, cy, 2 * 5 * 20);
    }
    float *nx = get(g, "nchw", "x", NULL), *ny = get(g, "nchw", "y", NULL);
    float *back = malloc(2 * 5 * 21 * sizeof *back);
    if (nx && ny) {
        mood_op_nchw_to_nhwc(out, nx, 2, 5, 21);
        expect("nchw to nhwc", out, ny, 2 * 5 * 21);
        mood_op_nhwc_to_nchw(back, out, 2, 5, 21);
        expect("nhwc to nchw", back, nx, 2 * 5 * 21);
    }
    float *v = get(g, "cbias", "v", NULL), *by = get(g, "cbias", "y", NULL);
    if (nx && v && by) {
        memcpy(out, nx, 2 * 5 * 21 * sizeof *out);
        mood_op_add_channel_bias(out, v, 2, 5, 21);
        expect("channel bias", out, by, 2 * 5 * 21);
    }
    free(out), free(back);
}

static void check_lora(bag *g)
{
    float *x = get(g, "lora", "x", NULL), *base = get(g, "lora", "base", NULL);
    float *down = get(g, "lora", "down", NULL), *up = get(g, "lora", "up", NULL);
    float *y = get(g, "lora", "y", NULL);
    float *tmp = malloc(9 * 4 * sizeof *tmp);
    if (x && base && down && up && y) {
        mood_op_lora_linear(base, x, down, up, 4, 0.75f, 9, 13, 11, tmp);
        expect("lora linear", base, y, 9 * 11);
    }
    free(tmp);
}

static void test_misc(void)
{
    bag g;
    if (!bag_open(&g, "ops/misc.safetensors"))
        return;
    void (*checks[])(bag *) = {check_linear,   check_geglu,  check_activations,
                               check_timestep, check_layout, check_lora};
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        checks[i](&g);
        bag_clear(&g);
    }
    bag_close(&g);
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {0.5f, -1, 2, 0, 8}, o[5];
    mood_op_add(o, a, b, 5);
    MOOD_CHECK(o[0] == 1.5f && o[1] == 1 && o[2] == 5 && o[3] == 4 && o[4] == 13);
    mood_op_add_inplace(a, b, 5);
    MOOD_CHECK(memcmp(a, o, sizeof a) == 0);
}

/* ----- thread-count independence ------------------------------------------------------------ */

/* conv2d (3x3 and 1x1), attention (causal or not), group norm and linear on 1 and 2 threads. */
#define NRES 8

static void run_threaded(float **res, int nthreads)
{
    omp_set_num_threads(nthreads);
    mood_conv2d_dims d3 = {2, 32, 33, 35, 48, 3, 1, 1}, d1 = {2, 32, 33, 35, 48, 1, 1, 0};
    mood_conv2d_dims d2 = {2, 32, 33, 35, 48, 3, 2, 1};
    size_t nx = (size_t)2 * 32 * 33 * 35, nw = (size_t)48 * 32 * 9;
    float *x = malloc(nx * sizeof *x), *w = malloc(nw * sizeof *w), *b = malloc(48 * sizeof *b);
    float *s = malloc(mood_op_conv2d_scratch(&d3) * sizeof *s);
    fill(x, nx, 11), fill(w, nw, 12), fill(b, 48, 13);
    mood_op_conv2d(res[0], x, w, b, &d3, s);
    mood_op_conv2d(res[1], x, w, b, &d1, NULL);
    mood_op_conv2d(res[2], x, w, b, &d2, s);
    mood_op_group_norm(res[3], x, w, b, 2, 32, 33 * 35, 8, 1e-5f, NULL, NULL);
    int B = 2, H = 2, T = 300, D = 40;
    size_t nq = (size_t)B * T * H * D;
    float *q = malloc(3 * nq * sizeof *q), *k = q + nq, *v = k + nq;
    float *as = malloc(mood_op_attention_scratch(T, T) * sizeof *as);
    fill(q, 3 * nq, 14);
    mood_op_attention(res[4], q, k, v, B, H, T, T, D, 0, 0.0f, as);
    mood_op_attention(res[5], q, k, v, B, H, T, T, D, 1, 0.0f, as);
    /* K = 700: above OpenBLAS's K block, where its threaded and serial drivers split differently */
    float *la = malloc((size_t)600 * 700 * sizeof *la), *lb = malloc((size_t)64 * 700 * sizeof *lb);
    fill(la, (size_t)600 * 700, 15), fill(lb, (size_t)64 * 700, 16);
    mood_op_linear(res[6], la, lb, b, 600, 700, 48);   /* tiles of rows */
    mood_op_linear(res[7], lb, la, NULL, 5, 700, 600); /* tiles of columns */
    free(x), free(w), free(b), free(s), free(q), free(as), free(la), free(lb);
}

static void test_thread_count(void)
{
    size_t n[NRES] = {(size_t)2 * 48 * 33 * 35, (size_t)2 * 48 * 33 * 35, (size_t)2 * 48 * 17 * 18,
                      (size_t)2 * 32 * 33 * 35, (size_t)2 * 300 * 80,     (size_t)2 * 300 * 80,
                      (size_t)600 * 48,         (size_t)5 * 600};
    const char *what[NRES] = {"conv 3x3",  "conv 1x1",         "conv 3x3 s2", "group norm",
                              "attention", "attention causal", "linear",      "linear wide"};
    float *r1[NRES], *r2[NRES];
    for (int i = 0; i < NRES; i++) {
        r1[i] = malloc(n[i] * sizeof *r1[i]);
        r2[i] = malloc(n[i] * sizeof *r2[i]);
    }
    int saved = omp_get_max_threads();
    run_threaded(r1, 1);
    run_threaded(r2, 2);
    MOOD_CHECK(omp_get_max_threads() == 2); /* the ops leave the caller's setting alone */
    omp_set_num_threads(saved);
    for (int i = 0; i < NRES; i++) {
        MOOD_CHECK_MSG(memcmp(r1[i], r2[i], n[i] * sizeof *r1[i]) == 0,
                       "%s differs between 1 and 2 threads (max %g)", what[i],
                       rel_diff(r1[i], r2[i], n[i]));
        free(r1[i]), free(r2[i]);
    }
}

MOOD_TEST_MAIN(MOOD_T(test_conv2d), MOOD_T(test_conv2d_tiles), MOOD_T(test_group_norm),
               MOOD_T(test_layer_norm), MOOD_T(test_attention), MOOD_T(test_attention_kernels),
               MOOD_T(test_misc), MOOD_T(test_thread_count))
