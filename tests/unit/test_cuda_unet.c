/*
 * test_cuda_unet.c: the GPU UNet forward (engine/cuda/unet_cuda.h) against diffusers and the CPU
 * forward (mood_unet_forward, itself checked against diffusers in test_unet.c / test_sdxl.c).
 *
 * Fixtures: the tiny diffusers UNets of tests/fixtures/unet (SD1-like: conv proj_in, heads of 4;
 * SD2-like: Linear projections, per-block heads, odd latent 12x10 so one upsampler is not 2x;
 * SDXL-like: a block without attention, transformer depth 2, text_time conditioning) and
 * tests/fixtures/sdxl's tiny-sdxl UNet (SDXL's three-level layout, 77 context tokens), each with
 * diffusers' float32 output on fixed inputs.
 *
 * Checked per fixture, errors as max |a - b| / max |b|:
 *   - fp32: GPU vs diffusers and GPU vs CPU within 1e-4 (the GPU sums in other orders);
 *   - bf16 and fp16 weights with 16-bit products: GPU vs diffusers within 32 units of the
 *     type's roundoff u (bf16 u = 2^-8: 0.125; fp16 u = 2^-11: 0.0156). Why: running this
 *     file's checks on the CPU with each backend function replaced by its CPU twin plus the
 *     backend's rounding points (16-bit weights, product inputs, q/k/v, softmax probabilities,
 *     attention and convolution outputs; everything else fp32) gives bf16 1.2e-2 .. 1.7e-2 and
 *     fp16 1.4e-3 .. 3.4e-3 on the three tests/fixtures/unet models, and bf16 8.7e-2, fp16 up to
 *     8.1e-3 (about 20 u) on tiny-sdxl, whose 4-channel layers with 2 norm groups amplify
 *     rounding; diffusers run wholly in bf16 is off by 1.4e-2 .. 4.7e-2. 32 u leaves the GPU's
 *     other summation orders a margin of 1.4x over the worst; a wrong layer or a buffer read in
 *     the wrong type gives errors of order 1 (the layer structure itself is pinned by fp32 at
 *     1e-4).
 * Also: other sizes (odd, 1x1, batch 3, other context lengths) GPU vs CPU in fp32; the host and
 * device-buffer entry points give the same bits, two runs give the same bits, a repeated forward
 * allocates no device memory; a weight edited on the CPU reaches the GPU only after
 * mood_cuda_unet_reload; refusals (missing SDXL conditioning, bad options).
 *
 * Runtime side paths (mood_unet_set_side_paths) on every Linear and Conv2d weight of the sd1
 * (1x1 conv projections) and sdxl (text_time, depth 2) fixtures: low rank 1..3 and dense (rank
 * 0), two paths on some weights, scales of both signs, sized so the paths change the output by
 * order 1 (checked: more than twice the bf16 tolerance, so a GPU that skipped them fails every
 * comparison). GPU vs the CPU forward with the same paths: fp32 within 1e-4; bf16 and fp16
 * within the 32 u above (the paths run in fp32 on the same rounded inputs as their layers, so
 * they add no rounding point of their own). Updates: paths set after the GPU copy was made, new
 * scales, another set, none, all reach the next forward by themselves; factor values changed in
 * place do not (the forward keeps the old ones) until mood_cuda_unet_reload_side_paths; each
 * matches the CPU within 1e-4, and a repeated forward with paths allocates no device memory.
 *
 * CUDA graphs (unet_cuda.h, "CUDA graphs"): the sdxl fixture (text_time inputs too) in fp32 and
 * bf16, and sd1 in fp32, each made twice on the device, with graphs and without (no_graphs);
 * every forward of the one is compared BIT FOR BIT with the other's on the same new random
 * inputs, and the graph counts (recorded, replayed, held) are checked after each event: several
 * calls of one shape, alternating with a second shape; forward_dev from other device buffers
 * each call, with the pool untouched by the replays (no cudaMalloc, no block handed out, the
 * same bytes in use); pool blocks of every size class up to 2 MiB held and filled meanwhile,
 * unchanged by the replays (the graphs' blocks are reserved); a weight reloaded (graphs dropped,
 * recorded again); side paths set (dropped), their values changed in place and reloaded (kept:
 * the replay reads them), cleared (dropped); the context's attention path changed (stale:
 * recorded again); graphs off and on again; more shapes than the cache holds (least recently
 * used evicted). MOOD_CUDA_GRAPHS=0 turns them off. On the CPU emulation (tests/cuda_emu) graphs
 * are unsupported: the forwards fall back to the uncaptured pass and only the comparisons run.
 *
 * Label `cuda`. Without the CUDA backend or a GPU, the refusals that need no device run and the
 * program exits 77 (skipped).
 */
#include "cuda_harness.h"

#include <math.h>
#include <stdint.h>

#include "fixture_tensors.h"

#include "common/common.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/cuda/unet_cuda.h"
#include "engine/unet_internal.h"
#include "mood/safetensors.h"
#include "mood/unet.h"

#define TOL_F32      1e-4
#define TOL_16_UNITS 32.0

static mood_cuda_ctx *ctx;

/* ----- fixtures ----------------------------------------------------------------------------- */

typedef struct unet_case {
    const char *label, *model, *ref;
    const char *pre;     /* key prefix in the reference file */
    const char *ctx_key; /* the context's key after the prefix */
} unet_case;

static const unet_case cases[] = {
    {"sd1", "unet/sd1", "unet/ref_sd1.safetensors", "", "context"},
    {"sd2", "unet/sd2", "unet/ref_sd2.safetensors", "", "context"},
    {"sdxl", "unet/sdxl", "unet/ref_sdxl.safetensors", "", "context"},
    {"tiny-sdxl", "sdxl/tiny-sdxl/unet", "sdxl/ref.safetensors", "unet.", "ctx"},
};
enum { N_CASES = sizeof cases / sizeof cases[0] };

/* One set of inputs and diffusers' output (NULL te/ids for models without text_time). */
typedef struct inputs {
    float *x, *t, *ctx, *te, *ids, *ref;
    size_t n_out;
    int B, H, W, L;
} inputs;

static void inputs_free(inputs *in)
{
    free(in->x), free(in->t), free(in->ctx), free(in->te), free(in->ids), free(in->ref);
    memset(in, 0, sizeof *in);
}

static float *ref_get(mood_st_file *f, const unet_case *c, const char *name, size_t *n)
{
    char key[128];
    snprintf(key, sizeof key, "%s%s", c->pre, name);
    return fixture_floats(f, key, n);
}

static int inputs_load(inputs *in, const unet_case *c)
{
    mood_st_file *f = NULL;
    const mood_st_tensor *tx;
    char key[128];
    size_t n_ctx = 0;
    memset(in, 0, sizeof *in);
    if (mood_st_open(&f, fixture(c->ref)) != 0)
        return -1;
    in->x = ref_get(f, c, "x", NULL), in->t = ref_get(f, c, "t", NULL);
    in->ctx = ref_get(f, c, c->ctx_key, &n_ctx);
    in->te = ref_get(f, c, "text_embeds", NULL), in->ids = ref_get(f, c, "time_ids", NULL);
    in->ref = ref_get(f, c, "out", &in->n_out);
    snprintf(key, sizeof key, "%sx", c->pre);
    tx = mood_st_find(f, key);
    if (tx && tx->ndim == 4)
        in->B = (int)tx->shape[0], in->H = (int)tx->shape[2], in->W = (int)tx->shape[3];
    mood_st_close(f);
    if (!in->x || !in->t || !in->ctx || !in->ref || !in->B)
        return -1;
    in->L = (int)(n_ctx / (size_t)in->B); /* divided by the width below */
    return 0;
}

/* Loads the case's model and inputs; *m NULL on failure (reported). */
static void case_open(const unet_case *c, mood_unet **m, inputs *in)
{
    *m = NULL;
    MOOD_CHECK_OK(mood_unet_load(m, fixture(c->model)));
    MOOD_CHECK_MSG(inputs_load(in, c) == 0, "%s: reference inputs", c->ref);
    if (*m && in->x)
        in->L /= mood_unet_get_config(*m)->cross_attention_dim;
    else {
        mood_unet_free(*m);
        *m = NULL;
    }
}

/* ----- helpers ------------------------------------------------------------------------------ */

static float *rand_buf(size_t n, float lo, float hi)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; p && i < n; i++)
        p[i] = lo + (hi - lo) * 0.5f * (harness_rnd() + 1.0f);
    return p;
}

static const char *dt_name(mood_cuda_dtype dt)
{
    return dt == MOOD_CUDA_BF16 ? "bf16" : dt == MOOD_CUDA_F16 ? "f16" : "f32";
}

/* Checks max |got - want| / max |want| <= tol, printing the figure. */
static void compare(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double e = harness_rel_diff(got, want, n, 0.0);
    int bad = !(e <= tol);
    printf("  %-44s rel %.3g  (tol %.3g)%s\n", what, e, tol, bad ? "  FAIL" : "");
    MOOD_CHECK_MSG(!bad, "%s: relative error %.3g > %.3g", what, e, tol);
}

/* The GPU forward of m in dtype dt on in's inputs; the output (malloc'd) or NULL (reported). */
static float *gpu_run(const mood_unet *m, mood_cuda_dtype dt, const inputs *in)
{
    mood_cuda_unet_options o;
    mood_cuda_unet *u = NULL;
    float *y = calloc(in->n_out, sizeof *y);
    int rc;
    mood_cuda_unet_options_init(&o);
    o.dtype = dt;
    MOOD_CHECK_OK(rc = mood_cuda_unet_new(&u, ctx, m, &o));
    if (rc == 0)
        MOOD_CHECK_OK(rc = mood_cuda_unet_forward(u, y, in->x, in->t, in->ctx, in->B, in->H, in->W,
                                                  in->L, in->te, in->ids));
    mood_cuda_unet_free(u);
    if (rc != 0) {
        free(y);
        return NULL;
    }
    return y;
}

static float *cpu_run(const mood_unet *m, const inputs *in)
{
    float *y = calloc(in->n_out, sizeof *y);
    int rc =
        mood_unet_forward(m, y, in->x, in->t, in->ctx, in->B, in->H, in->W, in->L, in->te, in->ids);
    MOOD_CHECK_MSG(rc == 0, "cpu forward: %s", mood_error_last());
    if (rc != 0) {
        free(y);
        return NULL;
    }
    return y;
}

/* ----- tests -------------------------------------------------------------------------------- */

static void check_case(const unet_case *c)
{
    static const mood_cuda_dtype half[] = {MOOD_CUDA_BF16, MOOD_CUDA_F16};
    mood_unet *m;
    inputs in;
    char what[96];
    case_open(c, &m, &in);
    if (!m) {
        inputs_free(&in);
        return;
    }
    float *cpu = cpu_run(m, &in), *g32 = gpu_run(m, MOOD_CUDA_F32, &in);
    if (cpu && g32) {
        snprintf(what, sizeof what, "%s f32: gpu vs diffusers", c->label);
        compare(what, g32, in.ref, in.n_out, TOL_F32);
        snprintf(what, sizeof what, "%s f32: gpu vs cpu", c->label);
        compare(what, g32, cpu, in.n_out, TOL_F32);
    }
    for (int i = 0; i < 2; i++) {
        float *g = gpu_run(m, half[i], &in);
        double u = half[i] == MOOD_CUDA_BF16 ? 1.0 / 256 : 1.0 / 2048;
        if (g) {
            snprintf(what, sizeof what, "%s %s: gpu vs diffusers", c->label, dt_name(half[i]));
            compare(what, g, in.ref, in.n_out, TOL_16_UNITS * u);
        }
        free(g);
    }
    free(cpu), free(g32);
    inputs_free(&in);
    mood_unet_free(m);
}

static void test_fixtures(void)
{
    for (int i = 0; i < N_CASES; i++)
        check_case(&cases[i]);
}

/* Random inputs of another size for m (SDXL conditioning when it has text_time). */
static void random_inputs(inputs *in, const mood_unet *m, int B, int H, int W, int L)
{
    const mood_unet_config *c = mood_unet_get_config(m);
    int E = c->projection_class_embeddings_input_dim - 6 * c->addition_time_embed_dim;
    memset(in, 0, sizeof *in);
    in->B = B, in->H = H, in->W = W, in->L = L;
    in->n_out = (size_t)B * c->out_channels * H * W;
    in->x = rand_buf((size_t)B * c->in_channels * H * W, -2.0f, 2.0f);
    in->t = rand_buf((size_t)B, 0.0f, 999.0f);
    in->ctx = rand_buf((size_t)B * L * c->cross_attention_dim, -1.0f, 1.0f);
    if (c->addition_embed_text_time) {
        in->te = rand_buf((size_t)B * E, -1.0f, 1.0f);
        in->ids = rand_buf((size_t)B * 6, 0.0f, 1024.0f);
    }
}

static void test_sizes(void)
{
    static const int sizes[][4] = {{3, 13, 11, 9}, {1, 5, 3, 1}, {2, 1, 1, 4}}; /* B, H, W, L */
    for (int k = 1; k < N_CASES; k++) { /* sd2, sdxl, tiny-sdxl */
        mood_unet *m = NULL;
        MOOD_CHECK_OK(mood_unet_load(&m, fixture(cases[k].model)));
        for (size_t s = 0; m && s < sizeof sizes / sizeof sizes[0]; s++) {
            inputs in;
            char what[96];
            random_inputs(&in, m, sizes[s][0], sizes[s][1], sizes[s][2], sizes[s][3]);
            float *cpu = cpu_run(m, &in), *gpu = gpu_run(m, MOOD_CUDA_F32, &in);
            snprintf(what, sizeof what, "%s f32 %dx%dx%d, %d tokens: gpu vs cpu", cases[k].label,
                     in.B, in.H, in.W, in.L);
            if (cpu && gpu)
                compare(what, gpu, cpu, in.n_out, TOL_F32);
            free(cpu), free(gpu);
            inputs_free(&in);
        }
        mood_unet_free(m);
    }
}

/* A mid block whose resnets scale their output (mid_block_scale_factor, as a config may ask):
 * the GPU divides as the CPU does. */
static void test_mid_scale(void)
{
    mood_unet *m = NULL;
    inputs in;
    MOOD_CHECK_OK(mood_unet_load(&m, fixture(cases[1].model)));
    if (!m)
        return;
    m->cfg.mid_block_scale_factor = 1.5f;
    for (int i = 0; i < m->mid.n; i++)
        m->mid.res[i].out_scale = 1.5f;
    random_inputs(&in, m, 2, 7, 9, 5);
    float *cpu = cpu_run(m, &in), *gpu = gpu_run(m, MOOD_CUDA_F32, &in);
    if (cpu && gpu)
        compare("mid_block_scale_factor 1.5: gpu vs cpu", gpu, cpu, in.n_out, TOL_F32);
    free(cpu), free(gpu);
    inputs_free(&in);
    mood_unet_free(m);
}

/* Device inputs for forward_dev: copies of in's buffers (d[0..4]: x, t, ctx, te, ids). */
static int upload_all(void *d[5], const inputs *in, const mood_unet_config *c)
{
    const float *h[5] = {in->x, in->t, in->ctx, in->te, in->ids};
    int E = c->projection_class_embeddings_input_dim - 6 * c->addition_time_embed_dim;
    size_t n[5] = {(size_t)in->B * c->in_channels * in->H * in->W, (size_t)in->B,
                   (size_t)in->B * in->L * c->cross_attention_dim, (size_t)in->B * E,
                   (size_t)in->B * 6};
    for (int i = 0; i < 5; i++) {
        d[i] = NULL;
        if (!h[i])
            continue;
        if (mood_cuda_alloc(ctx, &d[i], n[i] * sizeof(float)) != 0 ||
            mood_cuda_upload(ctx, d[i], h[i], n[i] * sizeof(float)) != 0)
            return -1;
    }
    return 0;
}

/* forward and forward_dev agree bit for bit, runs repeat bit for bit, and once the shape's
 * CUDA graph is recorded (its second forward) a forward takes every device block from the pool's
 * cache. */
static void test_device_buffers(void)
{
    mood_unet *m;
    mood_cuda_unet *u = NULL;
    inputs in;
    void *d[5] = {0}, *dy = NULL;
    float *y[3] = {NULL, NULL, NULL};
    mood_cuda_pool_stats s0, s1;
    case_open(&cases[2], &m, &in); /* sdxl: every input in use */
    if (m) {
        for (int i = 0; i < 3; i++)
            y[i] = calloc(in.n_out, sizeof(float));
        MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, NULL));
        MOOD_CHECK(upload_all(d, &in, mood_unet_get_config(m)) == 0);
        MOOD_CHECK_OK(mood_cuda_alloc(ctx, &dy, in.n_out * sizeof(float)));
    }
    if (u && dy) {
        for (int i = 0; i < 2; i++) /* warm-up, then the graph's recording */
            MOOD_CHECK_OK(mood_cuda_unet_forward(u, y[i], in.x, in.t, in.ctx, in.B, in.H, in.W,
                                                 in.L, in.te, in.ids));
        MOOD_CHECK_MSG(memcmp(y[0], y[1], in.n_out * 4) == 0, "the recording forward differs");
        mood_cuda_pool_stats_get(ctx, &s0);
        MOOD_CHECK_OK(mood_cuda_unet_forward(u, y[1], in.x, in.t, in.ctx, in.B, in.H, in.W, in.L,
                                             in.te, in.ids));
        mood_cuda_pool_stats_get(ctx, &s1);
        MOOD_CHECK_MSG(s1.device_allocs == s0.device_allocs,
                       "cudaMalloc in a repeated forward: %llu",
                       (unsigned long long)(s1.device_allocs - s0.device_allocs));
        MOOD_CHECK_OK(mood_cuda_unet_forward_dev(u, dy, d[0], d[1], d[2], in.B, in.H, in.W, in.L,
                                                 d[3], d[4]));
        MOOD_CHECK_OK(mood_cuda_download(ctx, y[2], dy, in.n_out * sizeof(float)));
        MOOD_CHECK_MSG(memcmp(y[0], y[1], in.n_out * 4) == 0, "two forwards differ");
        MOOD_CHECK_MSG(memcmp(y[0], y[2], in.n_out * 4) == 0, "forward_dev differs from forward");
        printf("  %-44s %.3g MFLOP, %.2f MB of weights\n", "sdxl fixture forward",
               mood_cuda_unet_flop(u) * 1e-6, (double)mood_cuda_unet_bytes(u) / 1e6);
    }
    mood_cuda_free(ctx, dy);
    for (int i = 0; i < 5; i++)
        mood_cuda_free(ctx, d[i]);
    for (int i = 0; i < 3; i++)
        free(y[i]);
    mood_cuda_unet_free(u);
    inputs_free(&in);
    mood_unet_free(m);
}

/* A weight changed on the CPU reaches the GPU with mood_cuda_unet_reload (by name or all). */
static void test_reload(void)
{
    static const char *name = "up_blocks.1.resnets.2.conv2.weight";
    mood_unet *m;
    mood_cuda_unet *u = NULL;
    inputs in;
    int ndim;
    int64_t shape[4];
    float *w = NULL, *y0 = NULL, *y1 = NULL, *cpu = NULL;
    case_open(&cases[0], &m, &in); /* sd1 */
    if (m && (w = mood_unet_weight(m, name, &ndim, shape)))
        MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, NULL));
    MOOD_CHECK(!m || w);
    if (u) {
        size_t nw = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
        y0 = calloc(in.n_out, sizeof *y0), y1 = calloc(in.n_out, sizeof *y1);
        MOOD_CHECK(mood_cuda_unet_reload(u, "no.such.weight") == MOOD_ENOTFOUND);
        for (size_t i = 0; i < nw; i++)
            w[i] *= 1.5f;
        cpu = cpu_run(m, &in);
        MOOD_CHECK_OK(
            mood_cuda_unet_forward(u, y0, in.x, in.t, in.ctx, in.B, in.H, in.W, in.L, NULL, NULL));
        MOOD_CHECK_OK(mood_cuda_unet_reload(u, name));
        MOOD_CHECK_OK(
            mood_cuda_unet_forward(u, y1, in.x, in.t, in.ctx, in.B, in.H, in.W, in.L, NULL, NULL));
        if (cpu) {
            double before = harness_rel_diff(y0, cpu, in.n_out, 0.0);
            printf("  %-44s rel %.3g before reload\n", "edited weight", before);
            MOOD_CHECK_MSG(before > 1e-3, "the edit reached the GPU without reload (%.3g)", before);
            compare("edited weight: gpu after reload vs cpu", y1, cpu, in.n_out, TOL_F32);
        }
        for (size_t i = 0; i < nw; i++)
            w[i] /= 1.5f;
        MOOD_CHECK_OK(mood_cuda_unet_reload(u, NULL));
        MOOD_CHECK_OK(
            mood_cuda_unet_forward(u, y1, in.x, in.t, in.ctx, in.B, in.H, in.W, in.L, NULL, NULL));
        compare("restored, reload all: gpu vs diffusers", y1, in.ref, in.n_out, TOL_F32);
    }
    mood_cuda_unet_free(u);
    free(y0), free(y1), free(cpu);
    inputs_free(&in);
    mood_unet_free(m);
}

/* ----- runtime side paths ------------------------------------------------------------------ */

/* Side paths and the factors they point at (owned). */
typedef struct side_set {
    mood_side_path *p;
    size_t n;
    float **bufs;
    size_t *lens; /* floats in each buffer */
    size_t n_bufs;
} side_set;

static void side_set_free(side_set *s)
{
    for (size_t i = 0; i < s->n_bufs; i++)
        free(s->bufs[i]);
    free(s->bufs), free(s->lens), free(s->p);
    memset(s, 0, sizeof *s);
}

static float *side_buf(side_set *s, size_t n, float a)
{
    float *p = rand_buf(n, -a, a);
    s->lens[s->n_bufs] = n;
    s->bufs[s->n_bufs++] = p;
    return p;
}

/* A path on every Linear and Conv2d weight of m, a second one on every fifth: rank (i + j) % 4
 * (0: dense ΔW in the weight's shape), scale 0.6 or -0.8, factors drawn so that ΔW's entries
 * have about `strength` times the weight's rms. */
static void side_set_make(side_set *s, mood_unet *m, float strength)
{
    size_t nw = mood_unet_weight_count(m);
    memset(s, 0, sizeof *s);
    s->p = calloc(2 * nw, sizeof *s->p), s->bufs = calloc(4 * nw, sizeof *s->bufs);
    s->lens = calloc(4 * nw, sizeof *s->lens);
    for (size_t i = 0; s->p && s->bufs && s->lens && i < nw; i++) {
        size_t numel, out;
        float rms;
        const char *name = harness_unet_layer_weight(m, i, &numel, &out, &rms);
        if (!name)
            continue;
        for (size_t j = 0; j < (i % 5 == 0 ? 2u : 1u); j++) {
            mood_side_path *sp = &s->p[s->n++];
            sp->weight = name;
            sp->rank = (int)((i + j) % 4);
            sp->scale = (i + j) % 3 == 0 ? -0.8f : 0.6f;
            if (sp->rank == 0) { /* uniform (-a, a) has rms a / sqrt(3) */
                sp->up = side_buf(s, numel, strength * rms * sqrtf(3.0f));
                continue;
            }
            /* entries of up . down: rank products of rms a/sqrt(3) and 1/sqrt(3) */
            sp->down = side_buf(s, (size_t)sp->rank * (numel / out), 1.0f);
            sp->up =
                side_buf(s, out * (size_t)sp->rank, strength * rms * 3.0f / sqrtf((float)sp->rank));
        }
    }
    MOOD_CHECK(s->p && s->bufs && s->lens && s->n > 0);
}

/* The same paths with every scale multiplied by k (the factors shared with s). */
static mood_side_path *side_scaled(const side_set *s, float k)
{
    mood_side_path *p = malloc((s->n ? s->n : 1) * sizeof *p);
    for (size_t i = 0; p && i < s->n; i++) {
        p[i] = s->p[i];
        p[i].scale *= k;
    }
    return p;
}

/* Paths on every Linear and Conv2d layer, GPU vs CPU with the same paths, in each dtype. */
static void test_side_paths(void)
{
    static const int which[] = {0, 2}; /* sd1, sdxl */
    static const mood_cuda_dtype half[] = {MOOD_CUDA_BF16, MOOD_CUDA_F16};
    for (size_t c = 0; c < sizeof which / sizeof which[0]; c++) {
        const char *label = cases[which[c]].label;
        mood_unet *m = NULL;
        side_set ss;
        inputs in;
        char what[96];
        MOOD_CHECK_OK(mood_unet_load(&m, fixture(cases[which[c]].model)));
        if (!m)
            continue;
        random_inputs(&in, m, 2, 7, 9, 5);
        side_set_make(&ss, m, 0.3f);
        float *cpu0 = cpu_run(m, &in), *cpu1 = NULL, *g = NULL;
        MOOD_CHECK_OK(mood_unet_set_side_paths(m, ss.p, ss.n));
        cpu1 = cpu_run(m, &in);
        if (cpu0 && cpu1) {
            double effect = harness_rel_diff(cpu1, cpu0, in.n_out, 0.0);
            printf("  %-44s rel %.3g (%zu paths)\n", "side paths' effect on the cpu output", effect,
                   ss.n);
            MOOD_CHECK_MSG(effect > 2.0 * TOL_16_UNITS / 256,
                           "%s: the side paths change the output by %.3g only", label, effect);
        }
        if (cpu1 && (g = gpu_run(m, MOOD_CUDA_F32, &in))) {
            snprintf(what, sizeof what, "%s f32 side paths: gpu vs cpu", label);
            compare(what, g, cpu1, in.n_out, TOL_F32);
        }
        free(g);
        for (int i = 0; cpu1 && i < 2; i++) {
            double u = half[i] == MOOD_CUDA_BF16 ? 1.0 / 256 : 1.0 / 2048;
            if ((g = gpu_run(m, half[i], &in))) {
                snprintf(what, sizeof what, "%s %s side paths: gpu vs cpu", label,
                         dt_name(half[i]));
                compare(what, g, cpu1, in.n_out, TOL_16_UNITS * u);
            }
            free(g);
        }
        free(cpu0), free(cpu1);
        inputs_free(&in);
        mood_unet_free(m); /* before the factors it points at */
        side_set_free(&ss);
    }
}

/* The GPU forward of u on in into y (n_out floats), 0 or the error (reported). */
static int gpu_fwd(mood_cuda_unet *u, float *y, const inputs *in)
{
    int rc;
    MOOD_CHECK_OK(rc = mood_cuda_unet_forward(u, y, in->x, in->t, in->ctx, in->B, in->H, in->W,
                                              in->L, in->te, in->ids));
    return rc;
}

/* The GPU copy follows the model's side paths: set after it was made, new scales, factor values
 * changed in place (only after mood_cuda_unet_reload_side_paths), another set, none. */
static void test_side_path_updates(void)
{
    mood_unet *m = NULL;
    mood_cuda_unet *u = NULL;
    mood_side_path *scaled = NULL, *subset = NULL;
    side_set ss = {0};
    inputs in = {0};
    mood_cuda_pool_stats s0, s1;
    float *y = NULL, *cpu = NULL, *old = NULL;
    size_t base_bytes = 0, n_sub = 0;
    double stale;
    MOOD_CHECK(mood_cuda_unet_reload_side_paths(NULL) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_unet_load(&m, fixture(cases[0].model))); /* sd1 */
    if (m)
        MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, NULL));
    if (!u)
        goto done;
    base_bytes = mood_cuda_unet_bytes(u);
    random_inputs(&in, m, 2, 8, 6, 7);
    y = calloc(in.n_out, sizeof *y);
    side_set_make(&ss, m, 0.3f);

    /* paths set after the GPU copy was made: the next forward copies them */
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, ss.p, ss.n));
    if (!(cpu = cpu_run(m, &in)) || gpu_fwd(u, y, &in) != 0)
        goto done;
    compare("paths set after new: gpu vs cpu", y, cpu, in.n_out, TOL_F32);
    MOOD_CHECK_MSG(mood_cuda_unet_bytes(u) > base_bytes, "no device bytes for the factors");
    if (gpu_fwd(u, y, &in) != 0) /* the shape's CUDA graph is recorded */
        goto done;
    mood_cuda_pool_stats_get(ctx, &s0);
    if (gpu_fwd(u, y, &in) != 0)
        goto done;
    mood_cuda_pool_stats_get(ctx, &s1);
    MOOD_CHECK_MSG(s1.device_allocs == s0.device_allocs,
                   "cudaMalloc in a repeated forward with side paths: %llu",
                   (unsigned long long)(s1.device_allocs - s0.device_allocs));

    /* new scales (the same factors), set again: seen by the next forward */
    scaled = side_scaled(&ss, -1.5f);
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, scaled, ss.n));
    free(cpu);
    if (!(cpu = cpu_run(m, &in)) || gpu_fwd(u, y, &in) != 0)
        goto done;
    compare("scales x -1.5, set again: gpu vs cpu", y, cpu, in.n_out, TOL_F32);

    /* factor values changed in place (as an optimizer step does): the GPU keeps the old ones
     * until reload_side_paths */
    old = cpu;
    for (size_t b = 0; b < ss.n_bufs; b++)
        for (size_t e = 0; e < ss.lens[b]; e++)
            ss.bufs[b][e] *= 0.7f;
    if (!(cpu = cpu_run(m, &in)) || gpu_fwd(u, y, &in) != 0)
        goto done;
    stale = harness_rel_diff(y, cpu, in.n_out, 0.0);
    printf("  %-44s rel %.3g before reload_side_paths\n", "factors edited in place", stale);
    MOOD_CHECK_MSG(stale > 1e-3, "the in-place edit reached the GPU without a reload (%.3g)",
                   stale);
    compare("edited in place, not reloaded: gpu vs old cpu", y, old, in.n_out, TOL_F32);
    MOOD_CHECK_OK(mood_cuda_unet_reload_side_paths(u));
    if (gpu_fwd(u, y, &in) != 0)
        goto done;
    compare("edited in place, reloaded: gpu vs cpu", y, cpu, in.n_out, TOL_F32);

    /* another set (every third path, other weights and fewer of them) */
    subset = malloc(ss.n * sizeof *subset);
    for (size_t i = 1; subset && i < ss.n; i += 3)
        subset[n_sub++] = ss.p[i];
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, subset, n_sub));
    free(cpu);
    if (!(cpu = cpu_run(m, &in)) || gpu_fwd(u, y, &in) != 0)
        goto done;
    compare("another set of paths: gpu vs cpu", y, cpu, in.n_out, TOL_F32);

    /* none */
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, NULL, 0));
    free(cpu);
    if (!(cpu = cpu_run(m, &in)) || gpu_fwd(u, y, &in) != 0)
        goto done;
    compare("paths cleared: gpu vs cpu", y, cpu, in.n_out, TOL_F32);
    MOOD_CHECK_MSG(mood_cuda_unet_bytes(u) == base_bytes, "factors still held: %zu bytes",
                   mood_cuda_unet_bytes(u) - base_bytes);
done:
    mood_cuda_unet_free(u);
    mood_unet_free(m); /* before the factors it points at */
    free(scaled), free(subset), free(y), free(cpu), free(old);
    side_set_free(&ss);
    inputs_free(&in);
}

/* ----- CUDA graphs -------------------------------------------------------------------------- */

/* The model twice on the device: with its forward recorded into CUDA graphs (g) and without (e,
 * mood_cuda_unet_options.no_graphs), so every forward of g can be compared bit for bit with the
 * uncaptured forward on the same inputs. */
typedef struct twin {
    mood_unet *m;
    mood_cuda_unet *g, *e;
    mood_cuda_dtype dt;
    const char *label;
    int on; /* g's graphs work (0 after the CPU emulation's MOOD_EUNSUPPORTED) */
} twin;

static mood_cuda_unet_graph_stats gstats(const mood_cuda_unet *u)
{
    mood_cuda_unet_graph_stats st;
    mood_cuda_unet_graph_stats_get(u, &st);
    return st;
}

static int twin_open(twin *t, const unet_case *c, mood_cuda_dtype dt)
{
    mood_cuda_unet_options o;
    memset(t, 0, sizeof *t);
    t->dt = dt, t->label = c->label, t->on = 1;
    MOOD_CHECK_OK(mood_unet_load(&t->m, fixture(c->model)));
    if (!t->m)
        return -1;
    mood_cuda_unet_options_init(&o);
    o.dtype = dt;
    MOOD_CHECK_OK(mood_cuda_unet_new(&t->g, ctx, t->m, &o));
    o.no_graphs = 1;
    MOOD_CHECK_OK(mood_cuda_unet_new(&t->e, ctx, t->m, &o));
    if (t->e) {
        mood_cuda_unet_graph_stats st = gstats(t->e);
        MOOD_CHECK_MSG(!st.enabled, "no_graphs: graphs still on");
    }
    return t->g && t->e ? 0 : -1;
}

static void twin_close(twin *t)
{
    mood_cuda_unet_free(t->g);
    mood_cuda_unet_free(t->e);
    mood_unet_free(t->m);
    memset(t, 0, sizeof *t);
}

/* Whether g's graphs still work. A failure fails the test, except MOOD_EUNSUPPORTED, which only
 * the CPU emulation of the backend (tests/cuda_emu) gives: reported once, then the checks of
 * graph counts are skipped and the bit comparisons run on the uncaptured fallback. */
static int twin_graphs_on(twin *t)
{
    mood_cuda_unet_graph_stats st = gstats(t->g);
    if (!t->on)
        return 0;
    if (st.failed == MOOD_EUNSUPPORTED) {
        printf("  %-44s %s\n", "graphs unsupported here: counts not checked", st.error);
        t->on = 0;
        return 0;
    }
    MOOD_CHECK_MSG(st.enabled, "%s %s: graphs turned off (failure %d: %s)", t->label,
                   dt_name(t->dt), st.failed, st.error);
    t->on = st.enabled;
    return t->on;
}

/* One forward of g and of e on new random inputs of a shape: the same bits. */
static void twin_call(twin *t, int B, int H, int W, int L, const char *what)
{
    inputs in;
    random_inputs(&in, t->m, B, H, W, L);
    float *yg = calloc(in.n_out, sizeof *yg), *ye = calloc(in.n_out, sizeof *ye);
    if (yg && ye && gpu_fwd(t->g, yg, &in) == 0 && gpu_fwd(t->e, ye, &in) == 0)
        MOOD_CHECK_MSG(memcmp(yg, ye, in.n_out * sizeof *yg) == 0,
                       "%s %s, %s, %dx%dx%d, %d tokens: graph forward differs from the "
                       "uncaptured one (rel %.3g)",
                       t->label, dt_name(t->dt), what, B, H, W, L,
                       harness_rel_diff(yg, ye, in.n_out, 0.0));
    free(yg), free(ye);
    inputs_free(&in);
}

/* g recorded `captures` graphs and ran `replays` forwards through one since `base`, and holds
 * `cached` graphs now. */
static void twin_expect(twin *t, const mood_cuda_unet_graph_stats *base, uint64_t captures,
                        uint64_t replays, int cached, const char *what)
{
    mood_cuda_unet_graph_stats st = gstats(t->g);
    char line[96];
    if (!twin_graphs_on(t))
        return;
    snprintf(line, sizeof line, "%s %s %s", t->label, dt_name(t->dt), what);
    printf("  %-44s %llu recorded, %llu replays, %d held (%.1f kB)\n", line,
           (unsigned long long)(st.captures - base->captures),
           (unsigned long long)(st.replays - base->replays), st.cached, st.bytes / 1e3);
    MOOD_CHECK_MSG(st.captures - base->captures == captures &&
                       st.replays - base->replays == replays && st.cached == cached,
                   "%s: expected %llu recorded, %llu replays, %d held", line,
                   (unsigned long long)captures, (unsigned long long)replays, cached);
    MOOD_CHECK_MSG(cached == 0 || st.bytes > 0, "%s: graphs held but no bytes reserved", line);
}

enum { SA_B = 2, SA_H = 8, SA_W = 6, SA_L = 7 }; /* shape A */
enum { SB_B = 1, SB_H = 5, SB_W = 7, SB_L = 3 }; /* shape B: odd sizes, one sample */

/* Several calls of one shape with different inputs, alternating with a second shape. */
static void graphs_shapes(twin *t)
{
    static const int seq[] = {0, 0, 0, 1, 0, 1, 1, 0}; /* A A A B A B B A */
    mood_cuda_unet_graph_stats base = gstats(t->g), e;
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        if (seq[i] == 0)
            twin_call(t, SA_B, SA_H, SA_W, SA_L, "shape A");
        else
            twin_call(t, SB_B, SB_H, SB_W, SB_L, "shape B");
    }
    /* each shape: a warm-up, a recording (launched), then replays */
    twin_expect(t, &base, 2, 6, 2, "A,A,A,B,A,B,B,A");
    e = gstats(t->e);
    MOOD_CHECK_MSG(!e.enabled && e.captures == 0 && e.replays == 0 && e.cached == 0,
                   "no_graphs model recorded %llu graphs", (unsigned long long)e.captures);
}

/* forward_dev replays from other device buffers each time (the graph copies them in), and a
 * replay takes nothing from the pool: no cudaMalloc, no block handed out. */
static void graphs_device_buffers(twin *t)
{
    const mood_unet_config *c = mood_unet_get_config(t->m);
    mood_cuda_unet_graph_stats base = gstats(t->g);
    mood_cuda_pool_stats s0, s1;
    inputs in[2];
    void *d[2][5] = {{0}}, *dy[2] = {0};
    float *yg[2] = {0}, *ye[2] = {0};
    int ok = 1;
    for (int k = 0; k < 2; k++) {
        random_inputs(&in[k], t->m, SA_B, SA_H, SA_W, SA_L);
        yg[k] = calloc(in[k].n_out, sizeof(float)), ye[k] = calloc(in[k].n_out, sizeof(float));
        ok = ok && yg[k] && ye[k] && upload_all(d[k], &in[k], c) == 0 &&
             mood_cuda_alloc(ctx, &dy[k], in[k].n_out * sizeof(float)) == 0;
    }
    MOOD_CHECK(ok);
    mood_cuda_pool_stats_get(ctx, &s0);
    for (int k = 0; ok && k < 2; k++)
        MOOD_CHECK_OK(mood_cuda_unet_forward_dev(t->g, dy[k], d[k][0], d[k][1], d[k][2], SA_B, SA_H,
                                                 SA_W, SA_L, d[k][3], d[k][4]));
    mood_cuda_pool_stats_get(ctx, &s1);
    for (int k = 0; ok && k < 2; k++) {
        MOOD_CHECK_OK(mood_cuda_download(ctx, yg[k], dy[k], in[k].n_out * sizeof(float)));
        if (gpu_fwd(t->e, ye[k], &in[k]) == 0)
            MOOD_CHECK_MSG(memcmp(yg[k], ye[k], in[k].n_out * sizeof(float)) == 0,
                           "%s %s forward_dev, inputs %d: graph forward differs (rel %.3g)",
                           t->label, dt_name(t->dt), k,
                           harness_rel_diff(yg[k], ye[k], in[k].n_out, 0.0));
    }
    if (ok && t->on) {
        twin_expect(t, &base, 0, 2, 2, "forward_dev, 2 input sets");
        MOOD_CHECK_MSG(s1.device_allocs == s0.device_allocs && s1.hits == s0.hits &&
                           s1.in_use == s0.in_use,
                       "replays used the pool: %llu cudaMalloc, %llu blocks from the cache",
                       (unsigned long long)(s1.device_allocs - s0.device_allocs),
                       (unsigned long long)(s1.hits - s0.hits));
    }
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 5; i++)
            mood_cuda_free(ctx, d[k][i]);
        mood_cuda_free(ctx, dy[k]);
        free(yg[k]), free(ye[k]);
        inputs_free(&in[k]);
    }
}

/* Blocks taken from the pool between replays keep what their owner wrote, and the replays'
 * results stay right: no block a graph uses is handed out. Two blocks of every pool size class
 * from 256 bytes to 2 MiB (the tiny models' activations are smaller), each filled with its own
 * value; the pool hands out its most recently freed block of a class first, so an unreserved
 * graph block would be among them. */
static void graphs_reserved(twin *t)
{
    enum { N_BLK = 2 * (16 + 4 * 9) };
    void *blk[N_BLK] = {0};
    size_t len[N_BLK], n = 0, bad = 0;
    mood_cuda_unet_graph_stats base = gstats(t->g);
    for (int i = 0; i < 16; i++) /* 256-byte classes up to 4 KiB */
        len[n++] = (size_t)256 * (i + 1), len[n++] = (size_t)256 * (i + 1);
    for (int k = 12; k < 21; k++) /* then 1.25, 1.5, 1.75, 2 x 2^k */
        for (int q = 5; q <= 8; q++)
            len[n++] = ((size_t)1 << (k - 2)) * q, len[n++] = ((size_t)1 << (k - 2)) * q;
    for (size_t i = 0; i < n; i++) {
        size_t nf = len[i] / sizeof(float);
        float *h = malloc(len[i]);
        for (size_t j = 0; h && j < nf; j++)
            h[j] = (float)i + 0.25f;
        MOOD_CHECK_OK(mood_cuda_alloc(ctx, &blk[i], len[i]));
        if (h && blk[i])
            MOOD_CHECK_OK(mood_cuda_upload(ctx, blk[i], h, len[i]));
        free(h);
    }
    twin_call(t, SA_B, SA_H, SA_W, SA_L, "shape A, pool blocks held meanwhile");
    twin_call(t, SB_B, SB_H, SB_W, SB_L, "shape B, pool blocks held meanwhile");
    for (size_t i = 0; i < n; i++) {
        size_t nf = len[i] / sizeof(float);
        float *h = calloc(nf, sizeof *h);
        if (h && blk[i] && mood_cuda_download(ctx, h, blk[i], len[i]) == 0)
            for (size_t j = 0; j < nf; j++)
                bad += h[j] != (float)i + 0.25f;
        free(h);
        mood_cuda_free(ctx, blk[i]);
    }
    MOOD_CHECK_MSG(bad == 0, "%zu floats of blocks held outside the graphs were overwritten", bad);
    twin_expect(t, &base, 0, 2, 2, "replays beside held blocks");
}

/* A weight changed and reloaded: the graphs go, and the next ones compute with the new weight. */
static void graphs_reload(twin *t)
{
    static const char *name = "conv_in.weight";
    mood_cuda_unet_graph_stats base = gstats(t->g);
    int ndim;
    int64_t shape[4];
    float *w = mood_unet_weight(t->m, name, &ndim, shape);
    size_t nw = 1;
    MOOD_CHECK(w != NULL);
    if (!w)
        return;
    for (int d = 0; d < ndim; d++)
        nw *= (size_t)shape[d];
    for (size_t i = 0; i < nw; i++)
        w[i] *= 1.5f;
    MOOD_CHECK_OK(mood_cuda_unet_reload(t->g, name));
    MOOD_CHECK_OK(mood_cuda_unet_reload(t->e, name));
    twin_expect(t, &base, 0, 0, 0, "weight reloaded: graphs dropped");
    for (int i = 0; i < 3; i++)
        twin_call(t, SA_B, SA_H, SA_W, SA_L, "after a weight reload");
    twin_expect(t, &base, 1, 2, 1, "after a weight reload");
    for (size_t i = 0; i < nw; i++)
        w[i] /= 1.5f;
    MOOD_CHECK_OK(mood_cuda_unet_reload(t->g, NULL));
    MOOD_CHECK_OK(mood_cuda_unet_reload(t->e, NULL));
    for (int i = 0; i < 2; i++)
        twin_call(t, SA_B, SA_H, SA_W, SA_L, "after reloading every weight");
    twin_expect(t, &base, 2, 3, 1, "after reloading every weight");
}

/* Side paths set (the graphs go: their factors' addresses and scales change), their values
 * changed in place and reloaded (the graphs stay: they read the factors at each replay), and
 * cleared. */
static void graphs_side_paths(twin *t)
{
    side_set ss;
    mood_cuda_unet_graph_stats base = gstats(t->g);
    side_set_make(&ss, t->m, 0.3f);
    MOOD_CHECK_OK(mood_unet_set_side_paths(t->m, ss.p, ss.n));
    for (int i = 0; i < 3; i++)
        twin_call(t, SA_B, SA_H, SA_W, SA_L, "side paths set");
    twin_expect(t, &base, 1, 2, 1, "side paths set");
    for (size_t b = 0; b < ss.n_bufs; b++)
        for (size_t e = 0; e < ss.lens[b]; e++)
            ss.bufs[b][e] *= 0.7f;
    MOOD_CHECK_OK(mood_cuda_unet_reload_side_paths(t->g));
    MOOD_CHECK_OK(mood_cuda_unet_reload_side_paths(t->e));
    twin_call(t, SA_B, SA_H, SA_W, SA_L, "factors edited in place, reloaded");
    twin_expect(t, &base, 1, 3, 1, "factor values reloaded: graph kept");
    MOOD_CHECK_OK(mood_unet_set_side_paths(t->m, NULL, 0));
    side_set_free(&ss); /* the model points at the factors no more */
    for (int i = 0; i < 2; i++)
        twin_call(t, SA_B, SA_H, SA_W, SA_L, "side paths cleared");
    twin_expect(t, &base, 2, 4, 1, "side paths cleared");
}

/* Another attention kernel chosen on the context: the graph is stale, recorded again after a
 * warm-up. */
static void graphs_attention_path(twin *t)
{
    mood_cuda_unet_graph_stats base = gstats(t->g);
    int prev = mood__cuda_attention_path(ctx, 2);
    for (int i = 0; i < 2; i++)
        twin_call(t, SA_B, SA_H, SA_W, SA_L, "attention on the GEMM path");
    mood__cuda_attention_path(ctx, prev);
    for (int i = 0; i < 2; i++)
        twin_call(t, SA_B, SA_H, SA_W, SA_L, "attention path restored");
    twin_expect(t, &base, 2, 2, 1, "attention path changed twice");
}

/* Graphs off and on again; dropped on request. */
static void graphs_toggle(twin *t)
{
    mood_cuda_unet_graph_stats base = gstats(t->g), st;
    MOOD_CHECK(mood_cuda_unet_set_graphs(t->g, 0) == 1);
    st = gstats(t->g);
    MOOD_CHECK(!st.enabled && st.cached == 0 && st.bytes == 0);
    twin_call(t, SA_B, SA_H, SA_W, SA_L, "graphs turned off");
    twin_call(t, SA_B, SA_H, SA_W, SA_L, "graphs turned off");
    MOOD_CHECK(mood_cuda_unet_set_graphs(t->g, 1) == 0);
    for (int i = 0; i < 2; i++)
        twin_call(t, SA_B, SA_H, SA_W, SA_L, "graphs on again");
    twin_expect(t, &base, 1, 1, 1, "off, then on again");
    mood_cuda_unet_drop_graphs(t->g);
    st = gstats(t->g);
    MOOD_CHECK(st.cached == 0 && st.bytes == 0);
}

/* More shapes than the cache keeps: the least recently used goes, and comes back by a warm-up
 * and a recording. */
static void graphs_eviction(twin *t)
{
    mood_cuda_unet_graph_stats base = gstats(t->g);
    for (int k = 0; k <= MOOD_CUDA_UNET_GRAPHS; k++)
        for (int i = 0; i < 2; i++)
            twin_call(t, 1, 2 + k, 3, 2, "one shape more than the cache holds");
    twin_expect(t, &base, MOOD_CUDA_UNET_GRAPHS + 1, MOOD_CUDA_UNET_GRAPHS + 1,
                MOOD_CUDA_UNET_GRAPHS, "5 shapes, each twice");
    for (int i = 0; i < 2; i++)
        twin_call(t, 1, 2, 3, 2, "the evicted shape again");
    twin_expect(t, &base, MOOD_CUDA_UNET_GRAPHS + 2, MOOD_CUDA_UNET_GRAPHS + 2,
                MOOD_CUDA_UNET_GRAPHS, "the evicted shape, twice more");
}

/* The forward through CUDA graphs gives the uncaptured forward's bits, in fp32 and bf16, through
 * every event that keeps or drops the graphs. */
static void test_graphs(void)
{
    static const mood_cuda_dtype dts[] = {MOOD_CUDA_F32, MOOD_CUDA_BF16};
    twin t;
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        if (twin_open(&t, &cases[2], dts[i]) == 0) { /* sdxl: text_time inputs too */
            graphs_shapes(&t);
            graphs_device_buffers(&t);
            graphs_reserved(&t);
            graphs_reload(&t);
            graphs_side_paths(&t);
            graphs_attention_path(&t);
            graphs_toggle(&t);
            graphs_eviction(&t);
        }
        twin_close(&t);
    }
    if (twin_open(&t, &cases[0], MOOD_CUDA_F32) == 0) /* sd1: no text_time inputs */
        graphs_shapes(&t);
    twin_close(&t);
}

/* MOOD_CUDA_GRAPHS=0 in the environment turns the graphs off for the models made then. */
static void test_graphs_env(void)
{
    mood_unet *m = NULL;
    mood_cuda_unet *u = NULL;
    inputs in;
    MOOD_CHECK_OK(mood_unet_load(&m, fixture(cases[0].model)));
    if (!m)
        return;
    setenv("MOOD_CUDA_GRAPHS", "0", 1);
    MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, NULL));
    unsetenv("MOOD_CUDA_GRAPHS");
    random_inputs(&in, m, 1, 4, 4, 3);
    float *y = calloc(in.n_out, sizeof *y);
    for (int i = 0; u && y && i < 3; i++)
        gpu_fwd(u, y, &in);
    if (u) {
        mood_cuda_unet_graph_stats st = gstats(u);
        MOOD_CHECK_MSG(!st.enabled && st.captures == 0 && st.replays == 0,
                       "MOOD_CUDA_GRAPHS=0: %llu graphs recorded", (unsigned long long)st.captures);
    }
    free(y);
    inputs_free(&in);
    mood_cuda_unet_free(u);
    mood_unet_free(m);
}

/* Refusals with a device: missing SDXL conditioning, bad arguments. */
static void test_errors(void)
{
    mood_unet *m = NULL, *xl = NULL;
    mood_cuda_unet *u = NULL, *uxl = NULL;
    mood_cuda_unet_options o;
    float y[4 * 8 * 8 * 2], x[4 * 8 * 8 * 2] = {0}, t[2] = {1, 2}, c[2 * 7 * 32] = {0};
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    MOOD_CHECK_OK(mood_unet_load(&xl, fixture("unet/sdxl")));
    if (!m || !xl)
        goto done;
    mood_cuda_unet_options_init(&o);
    o.dtype = (mood_cuda_dtype)7;
    MOOD_CHECK(mood_cuda_unet_new(&u, ctx, m, &o) == MOOD_EINVAL && !u);
    MOOD_CHECK(mood_cuda_unet_new(&u, NULL, m, NULL) == MOOD_EINVAL && !u);
    MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, NULL));
    MOOD_CHECK_OK(mood_cuda_unet_new(&uxl, ctx, xl, NULL));
    if (!u || !uxl)
        goto done;
    MOOD_CHECK(mood_cuda_unet_forward(u, y, x, t, c, 2, 8, 8, 0, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_cuda_unet_forward(u, y, x, NULL, c, 2, 8, 8, 7, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_cuda_unet_forward(uxl, y, x, t, c, 2, 8, 8, 6, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_cuda_unet_forward(u, y, x, t, c, 2, 8, 8, 7, NULL, NULL));
done:
    mood_cuda_unet_free(u);
    mood_cuda_unet_free(uxl);
    mood_unet_free(m);
    mood_unet_free(xl);
}

/* Without a device: no context opens, and the GPU UNet refuses a NULL one (or, without the
 * backend, everything) with a message. */
static void test_no_device(void)
{
    mood_unet *m = NULL;
    mood_cuda_unet *u = (mood_cuda_unet *)1;
    int rc;
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    rc = mood_cuda_unet_new(&u, NULL, m, NULL);
    MOOD_CHECK(rc == (mood_cuda_compiled() ? MOOD_EINVAL : MOOD_EUNSUPPORTED));
    MOOD_CHECK(u == NULL && strlen(mood_error_last()) > 0);
    mood_cuda_unet_free(NULL);
    mood_unet_free(m);
}

int main(void)
{
    static const harness_test no_gpu[] = {MOOD_T(test_no_device)};
    static const harness_test tests[] = {
        MOOD_T(test_no_device),      MOOD_T(test_fixtures),
        MOOD_T(test_sizes),          MOOD_T(test_mid_scale),
        MOOD_T(test_device_buffers), MOOD_T(test_reload),
        MOOD_T(test_side_paths),     MOOD_T(test_side_path_updates),
        MOOD_T(test_graphs),         MOOD_T(test_graphs_env),
        MOOD_T(test_errors),
    };
    return harness_run_cuda(&ctx, no_gpu, sizeof no_gpu / sizeof no_gpu[0], tests,
                            sizeof tests / sizeof tests[0]);
}
