/*
 * bench_cuda_ops.c: times the CUDA backend's ops for bench/gpu.sh (built only with MOOD_CUDA).
 *
 *   bench_cuda_ops lora [RANK]   merges a rank-RANK LoRA (default 32) into every attention,
 *                                feed-forward and proj_in/out Linear weight of an SDXL-size UNet
 *                                (722 layers, random fp32 data) with mood_cuda_op_lora_merge;
 *                                checks sampled elements of one merge against a double-precision
 *                                host sum, then times the whole merge (median of 5 after a warm-up)
 *   bench_cuda_ops ops BATCH     times the heaviest ops of the SD1.5 UNet at a 64x64 latent in
 *                                bf16 (conv 3x3, linear, attention; linear_ex / conv2d_ex /
 *                                attention_ex), median over 5 batches of repeats after a warm-up
 *
 * Every result is one tab-separated line that bench/gpu_torch_ref.py reads back to time torch on
 * the same shapes:  RESULT <kind> <spec> <ms> <flop>   (spec: the op's sizes, comma-separated).
 * The LoRA mode also prints LORASHAPE <rows> <cols> <count> <rank> lines. Exits 77 when no CUDA
 * device can be opened, 1 on any error.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/cuda/cuda_ops.h"
#include "bench/bench_util.h"
#include "mood/core.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

/* Random data, never zeros (bench_util.h). */
static float rnd(void)
{
    return bench_rnd(&rng);
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_cuda_ops: %s: %s\n", what, mood_error_last());
    return 1;
}

/* ----- timing --------------------------------------------------------------------------------- */

typedef int (*op_fn)(mood_cuda_ctx *ctx, const void *args);

/* Median over 5 batches of the mean ms per call; each batch repeats the op enough times to last
 * about 20 ms, so the host clock around a stream sync measures device time. */
static int time_op(mood_cuda_ctx *ctx, op_fn fn, const void *args, double *ms)
{
    for (int i = 0; i < 3; i++)
        if (fn(ctx, args) != 0)
            return -1;
    if (mood_cuda_sync(ctx) != 0)
        return -1;
    double t0 = bench_now_ms();
    if (fn(ctx, args) != 0 || mood_cuda_sync(ctx) != 0)
        return -1;
    double one = bench_now_ms() - t0;
    int reps = one > 0.0 ? (int)(20.0 / one) : 100;
    reps = reps < 3 ? 3 : reps > 2000 ? 2000 : reps;
    double med[5];
    for (int b = 0; b < 5; b++) {
        t0 = bench_now_ms();
        for (int r = 0; r < reps; r++)
            if (fn(ctx, args) != 0)
                return -1;
        if (mood_cuda_sync(ctx) != 0)
            return -1;
        med[b] = (bench_now_ms() - t0) / reps;
    }
    qsort(med, 5, sizeof med[0], bench_cmp_double);
    *ms = med[2];
    return 0;
}

/* A device buffer of n random values of type dt (uploaded as fp32, converted on the device). */
static int rand_dev(mood_cuda_ctx *ctx, void **out, size_t n, mood_cuda_dtype dt)
{
    float *h = malloc(n * sizeof *h);
    void *tmp = NULL;
    size_t es = dt == MOOD_CUDA_F32 ? 4 : 2;
    int rc = h ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++)
        h[i] = rnd();
    if (rc == 0)
        rc = mood_cuda_alloc(ctx, out, n * es);
    if (rc == 0 && dt == MOOD_CUDA_F32)
        rc = mood_cuda_upload(ctx, *out, h, n * 4);
    else if (rc == 0) {
        rc = mood_cuda_alloc(ctx, &tmp, n * 4);
        if (rc == 0)
            rc = mood_cuda_upload(ctx, tmp, h, n * 4);
        if (rc == 0)
            rc = mood_cuda_op_convert(ctx, *out, dt, tmp, MOOD_CUDA_F32, n);
        if (rc == 0)
            rc = mood_cuda_sync(ctx);
        mood_cuda_free(ctx, tmp);
    }
    free(h);
    return rc;
}

/* ----- ops at SD1.5 shapes -------------------------------------------------------------------- */

typedef struct op_args {
    void *out, *a, *b, *c; /* out, then inputs (inp/w or q/k/v) */
    mood_conv2d_dims conv;
    size_t n;                  /* linear rows */
    int ic, oc;                /* linear sizes */
    int B, H, Tq, Tk, D, path; /* attention; path for mood__cuda_attention_path */
} op_args;

static int run_conv(mood_cuda_ctx *ctx, const void *p)
{
    const op_args *a = p;
    return mood_cuda_op_conv2d_ex(ctx, a->out, a->a, a->b, MOOD_CUDA_BF16, NULL, &a->conv);
}

static int run_linear(mood_cuda_ctx *ctx, const void *p)
{
    const op_args *a = p;
    return mood_cuda_op_linear_ex(ctx, a->out, MOOD_CUDA_BF16, a->a, a->b, MOOD_CUDA_BF16, NULL,
                                  a->n, a->ic, a->oc);
}

static int run_attn(mood_cuda_ctx *ctx, const void *p)
{
    const op_args *a = p;
    return mood_cuda_op_attention_ex(ctx, a->out, a->a, a->b, a->c, MOOD_CUDA_BF16, a->B, a->H,
                                     a->Tq, a->Tk, a->D, 0, 0.0f);
}

static void free_args(mood_cuda_ctx *ctx, op_args *a)
{
    mood_cuda_free(ctx, a->out);
    mood_cuda_free(ctx, a->a);
    mood_cuda_free(ctx, a->b);
    mood_cuda_free(ctx, a->c);
    memset(a, 0, sizeof *a);
}

/* Allocates random bf16 inputs of the given sizes and a bf16 output, times fn, prints a line. */
static int bench_one(mood_cuda_ctx *ctx, op_fn fn, op_args *a, size_t n_out, size_t n_a, size_t n_b,
                     size_t n_c, const char *kind, const char *spec, double flop)
{
    double ms = 0.0;
    int rc = mood_cuda_alloc(ctx, &a->out, n_out * 2);
    if (rc == 0)
        rc = rand_dev(ctx, &a->a, n_a, MOOD_CUDA_BF16);
    if (rc == 0)
        rc = rand_dev(ctx, &a->b, n_b, MOOD_CUDA_BF16);
    if (rc == 0 && n_c)
        rc = rand_dev(ctx, &a->c, n_c, MOOD_CUDA_BF16);
    if (rc == 0)
        rc = time_op(ctx, fn, a, &ms);
    if (rc == 0)
        printf("RESULT\t%s\t%s\t%.4f\t%.6e\n", kind, spec, ms, flop);
    else
        printf("RESULT\t%s\t%s\tERROR\t%s\n", kind, spec, mood_error_last());
    fflush(stdout);
    free_args(ctx, a);
    return rc;
}

static int bench_ops(mood_cuda_ctx *ctx, int B)
{
    /* conv 3x3 at each UNet level's width and resolution (64x64 latent) */
    static const int convs[][2] = {{320, 64}, {640, 32}, {1280, 16}, {1280, 8}};
    /* linear: tokens per sample, in, out (attention projections, feed-forward GEGLU and out) */
    static const int linears[][3] = {{4096, 320, 320},  {4096, 320, 1280},  {4096, 320, 2560},
                                     {4096, 1280, 320}, {1024, 640, 640},   {1024, 640, 5120},
                                     {1024, 2560, 640}, {256, 1280, 10240}, {256, 5120, 1280}};
    /* attention: tokens, context tokens, head size (8 heads) */
    static const int attns[][3] = {
        {4096, 4096, 40}, {4096, 77, 40}, {1024, 1024, 80}, {256, 256, 160}};
    int errors = 0;
    char spec[128];
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) {
        op_args a = {0};
        int C = convs[i][0], S = convs[i][1];
        a.conv = (mood_conv2d_dims){B, C, S, S, C, 3, 1, 1};
        snprintf(spec, sizeof spec, "%d,%d,%d,%d,%d,3,1,1", B, C, S, S, C);
        double flop = 2.0 * B * C * (double)S * S * C * 9;
        errors += bench_one(ctx, run_conv, &a, (size_t)B * C * S * S, (size_t)B * C * S * S,
                            (size_t)C * C * 9, 0, "conv", spec, flop) != 0;
    }
    for (size_t i = 0; i < sizeof linears / sizeof linears[0]; i++) {
        op_args a = {0};
        a.n = (size_t)B * linears[i][0];
        a.ic = linears[i][1];
        a.oc = linears[i][2];
        snprintf(spec, sizeof spec, "%zu,%d,%d", a.n, a.ic, a.oc);
        double flop = 2.0 * (double)a.n * a.ic * a.oc;
        errors += bench_one(ctx, run_linear, &a, a.n * a.oc, a.n * a.ic, (size_t)a.ic * a.oc, 0,
                            "linear", spec, flop) != 0;
    }
    for (size_t i = 0; i < sizeof attns / sizeof attns[0]; i++) {
        for (int path = 0; path <= 1; path++) {
            op_args a = {0};
            a.B = B, a.H = 8, a.Tq = attns[i][0], a.Tk = attns[i][1], a.D = attns[i][2];
            int old = mood__cuda_attention_path(ctx, path);
            snprintf(spec, sizeof spec, "%d,%d,%d,%d,%d", B, a.H, a.Tq, a.Tk, a.D);
            double flop = 4.0 * B * a.H * (double)a.Tq * a.Tk * a.D;
            size_t hd = (size_t)a.H * a.D;
            errors += bench_one(ctx, run_attn, &a, (size_t)B * a.Tq * hd, (size_t)B * a.Tq * hd,
                                (size_t)B * a.Tk * hd, (size_t)B * a.Tk * hd,
                                path ? "attn_flash" : "attn", spec, flop) != 0;
            mood__cuda_attention_path(ctx, old);
        }
    }
    return errors ? 1 : 0;
}

/* ----- LoRA merge at SDXL shapes -------------------------------------------------------------- */

typedef struct lora_layer {
    int rows, cols;
    float *w, *up, *down;
} lora_layer;

/* The SDXL UNet's LoRA-targeted Linear layers (use_linear_projection): per transformer layer
 * attn1 q/k/v/out (C x C), attn2 q/out (C x C) and k/v (C x 2048), ff.net.0.proj (8C x C),
 * ff.net.2 (C x 4C); per transformer block proj_in/proj_out (C x C). 10 layers in 5 blocks at
 * 640 channels, 60 layers in 6 blocks at 1280: 722 layers, as kohya's SDXL LoRAs. */
static int sdxl_shapes(int shapes[][3])
{
    static const int levels[][3] = {{640, 10, 5}, {1280, 60, 6}};
    int n = 0;
    for (int l = 0; l < 2; l++) {
        int C = levels[l][0], tf = levels[l][1], blocks = levels[l][2];
        int s[][3] = {
            {C, C, 6 * tf + 2 * blocks}, {C, 2048, 2 * tf}, {8 * C, C, tf}, {C, 4 * C, tf}};
        for (int i = 0; i < 4; i++, n++)
            memcpy(shapes[n], s[i], sizeof s[i]);
    }
    return n;
}

/* Checks 512 sampled elements of w0 + scale * up . down against a double-precision sum. */
static int lora_check(mood_cuda_ctx *ctx, const lora_layer *L, const float *w0, const float *up,
                      const float *down, int rank, float scale)
{
    size_t n = (size_t)L->rows * L->cols;
    float *w = malloc(n * sizeof *w);
    if (!w || mood_cuda_download(ctx, w, L->w, n * sizeof *w) != 0) {
        free(w);
        return fail("download merged weight");
    }
    double max_err = 0.0, max_ref = 0.0;
    for (int s = 0; s < 512; s++) {
        size_t i = (size_t)((rnd() + 1.0f) * 0.5f * L->rows) % L->rows;
        size_t j = (size_t)((rnd() + 1.0f) * 0.5f * L->cols) % L->cols;
        double ref = w0[i * L->cols + j];
        for (int r = 0; r < rank; r++)
            ref += (double)scale * up[i * rank + r] * down[(size_t)r * L->cols + j];
        max_err = fmax(max_err, fabs(ref - w[i * L->cols + j]));
        max_ref = fmax(max_ref, fabs(ref));
    }
    free(w);
    double rel = max_err / max_ref;
    printf("lora_merge check (%d x %d, rank %d): max |err| / max |ref| = %.2e (%s)\n", L->rows,
           L->cols, rank, rel, rel < 1e-5 ? "ok" : "FAIL");
    return rel < 1e-5 ? 0 : 1;
}

static int merge_all(mood_cuda_ctx *ctx, const lora_layer *L, int n, int rank, float scale)
{
    for (int i = 0; i < n; i++)
        if (mood_cuda_op_lora_merge(ctx, L[i].w, L[i].up, L[i].down, L[i].rows, rank,
                                    (size_t)L[i].cols, scale) != 0)
            return -1;
    return mood_cuda_sync(ctx);
}

static int bench_lora(mood_cuda_ctx *ctx, int rank)
{
    int shapes[8][3];
    int nshapes = sdxl_shapes(shapes), nl = 0;
    size_t maxn = 0, params = 0;
    for (int s = 0; s < nshapes; s++) {
        size_t n = (size_t)shapes[s][0] * shapes[s][1];
        maxn = n > maxn ? n : maxn;
        nl += shapes[s][2];
        params += n * shapes[s][2];
        printf("LORASHAPE\t%d\t%d\t%d\t%d\n", shapes[s][0], shapes[s][1], shapes[s][2], rank);
    }
    /* One random host pool, uploaded at varying offsets: every layer gets random values
     * without generating 2.2 G of them on the host. */
    size_t hn = maxn + 8192 * (size_t)rank + 4096;
    float *h = malloc(hn * sizeof *h);
    lora_layer *L = calloc((size_t)nl, sizeof *L);
    if (!h || !L) {
        free(h);
        free(L);
        fprintf(stderr, "bench_cuda_ops: out of host memory\n");
        return 1;
    }
    for (size_t i = 0; i < hn; i++)
        h[i] = rnd();
    int rc = 0, k = 0;
    for (int s = 0; s < nshapes && rc == 0; s++)
        for (int c = 0; c < shapes[s][2] && rc == 0; c++, k++) {
            lora_layer *l = &L[k];
            l->rows = shapes[s][0], l->cols = shapes[s][1];
            size_t n = (size_t)l->rows * l->cols, off = (size_t)k * 7 % 4096;
            size_t nu = (size_t)l->rows * rank, nd = (size_t)rank * l->cols;
            rc = mood_cuda_alloc(ctx, (void **)&l->w, n * 4);
            rc = rc ? rc : mood_cuda_alloc(ctx, (void **)&l->up, nu * 4);
            rc = rc ? rc : mood_cuda_alloc(ctx, (void **)&l->down, nd * 4);
            rc = rc ? rc : mood_cuda_upload(ctx, l->w, h + off, n * 4);
            rc = rc ? rc : mood_cuda_upload(ctx, l->up, h + off + 1, nu * 4);
            rc = rc ? rc : mood_cuda_upload(ctx, l->down, h + off + 2, nd * 4);
        }
    const float scale = 0.5f; /* alpha / rank */
    /* the check: the largest layer (ff.net.0.proj of the 1280 level), merged once */
    int chk = 0;
    for (int i = 0; i < nl; i++)
        if ((size_t)L[i].rows * L[i].cols == maxn)
            chk = i;
    if (rc == 0)
        rc = mood_cuda_op_lora_merge(ctx, L[chk].w, L[chk].up, L[chk].down, L[chk].rows, rank,
                                     (size_t)L[chk].cols, scale);
    size_t off = (size_t)chk * 7 % 4096;
    if (rc == 0)
        rc = lora_check(ctx, &L[chk], h + off, h + off + 1, h + off + 2, rank, scale);
    else
        rc = fail("lora_merge");
    double t[5];
    if (rc == 0 && merge_all(ctx, L, nl, rank, scale) != 0) /* warm-up */
        rc = fail("lora_merge (all layers)");
    for (int r = 0; r < 5 && rc == 0; r++) {
        double t0 = bench_now_ms();
        if (merge_all(ctx, L, nl, rank, scale) != 0)
            rc = fail("lora_merge (all layers)");
        t[r] = bench_now_ms() - t0;
    }
    if (rc == 0) {
        qsort(t, 5, sizeof t[0], bench_cmp_double);
        printf("lora_merge: %d layers, %.3f G parameters (fp32), rank %d: median %.2f ms "
               "(min %.2f, max %.2f)\n",
               nl, params * 1e-9, rank, t[2], t[0], t[4]);
        char spec[64];
        snprintf(spec, sizeof spec, "%d,%zu,%d", nl, params, rank);
        printf("RESULT\tlora_merge\t%s\t%.4f\t%.6e\n", spec, t[2], 2.0 * params * rank);
    }
    for (int i = 0; i < nl; i++) {
        mood_cuda_free(ctx, L[i].w);
        mood_cuda_free(ctx, L[i].up);
        mood_cuda_free(ctx, L[i].down);
    }
    free(L);
    free(h);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "lora") != 0 && strcmp(argv[1], "ops") != 0)) {
        fprintf(stderr, "usage: bench_cuda_ops lora [RANK] | ops BATCH\n");
        return 2;
    }
    mood_cuda_ctx *ctx = NULL;
    if (mood_cuda_ctx_new(&ctx, NULL) != 0) {
        printf("bench_cuda_ops: no CUDA device (%s): skipped\n", mood_error_last());
        return 77;
    }
    int rc;
    if (strcmp(argv[1], "lora") == 0)
        rc = bench_lora(ctx, argc > 2 ? atoi(argv[2]) : 32);
    else
        rc = bench_ops(ctx, argc > 2 ? atoi(argv[2]) : 2);
    mood_cuda_pool_stats st;
    mood_cuda_pool_stats_get(ctx, &st);
    printf("pool: peak %.2f GiB, %llu cudaMalloc calls\n", st.peak / 1073741824.0,
           (unsigned long long)st.device_allocs);
    mood_cuda_ctx_free(ctx);
    return rc;
}
