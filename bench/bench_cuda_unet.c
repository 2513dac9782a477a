/*
 * bench_cuda_unet.c: times the GPU UNet forward (engine/cuda/unet_cuda.h) for bench/gpu.sh (built
 * only with MOOD_CUDA).
 *
 *   bench_cuda_unet [BATCH [SIZE [TOKENS]]]      (default 2 64 77: SD1.5 at 512 x 512)
 *
 * Builds a UNet with runwayml/stable-diffusion-v1-5's configuration in memory (860M parameters,
 * random: weights uniform with the variance of randn / sqrt(fan_in), norm scales 1 + 0.1 u,
 * biases 0.1 u; fixed seed), random inputs (latent BATCH x 4 x SIZE x SIZE, timesteps, context
 * BATCH x TOKENS x 768), runs the CPU forward once as the reference, then for fp32 and bf16
 * weights: uploads them, checks the GPU output against the CPU's (max |gpu - cpu| / max |cpu|)
 * and times mood_cuda_unet_forward_dev on device buffers (no transfers): median over 5 batches
 * of repeats after a warm-up, host clock around a stream sync, as bench_cuda_ops; once with the
 * forward replayed from its CUDA graph (the default: unet_cuda.h, "CUDA graphs") and once
 * without (mood_cuda_unet_set_graphs(u, 0): every kernel launched by the host), to show what
 * the graphs save; the graph's output must equal the uncaptured forward's bit for bit. bf16 is
 * timed once more with attention forced onto the flash kernel (mood__cuda_attention_path),
 * which the backend picks for fp32 only, to see which path 16-bit attention should take.
 *
 * Prints, besides readable lines, two tab-separated lines per precision for
 * bench/gpu_torch_ref.py, which times diffusers' UNet2DConditionModel on the same shapes:
 *   RESULT unet_sd15_<f32|bf16> <B>,<S>,<S>,<L> <ms> <flop>            (with CUDA graphs)
 *   RESULT unet_sd15_<f32|bf16>_nograph <B>,<S>,<S>,<L> <ms> <flop>    (without)
 * Exits 77 when no CUDA device can be opened, 1 on any error, when the fp32 output is off by
 * more than 1e-3 (bf16: 0.2) of the CPU's largest magnitude, when recording the graph failed
 * (the reason is printed) or when the graph's output differs from the uncaptured forward's.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/cuda/unet_cuda.h"
#include "engine/unet_internal.h"
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
    fprintf(stderr, "bench_cuda_unet: %s: %s\n", what, mood_error_last());
    return 1;
}

/* ----- the model ------------------------------------------------------------------------------ */

/* runwayml/stable-diffusion-v1-5's unet/config.json, resolved as mood_unet_load does. */
static void sd15_config(mood_unet_config *c)
{
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 4;
    c->n_blocks = 4;
    for (int i = 0; i < 4; i++) {
        c->block_out_channels[i] = i == 0 ? 320 : i == 1 ? 640 : 1280;
        c->down_block_types[i] =
            i < 3 ? MOOD_UNET_CROSS_ATTN_DOWN_BLOCK_2D : MOOD_UNET_DOWN_BLOCK_2D;
        c->up_block_types[i] = i > 0 ? MOOD_UNET_CROSS_ATTN_UP_BLOCK_2D : MOOD_UNET_UP_BLOCK_2D;
        c->layers_per_block[i] = 2;
        c->attention_head_dim[i] = c->num_attention_heads[i] = 8;
        c->transformer_layers_per_block[i] = c->up_transformer_layers[i] = 1;
    }
    c->mid_transformer_layers = 1;
    c->cross_attention_dim = 768;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->mid_block = 1;
    c->mid_block_scale_factor = c->resnet_out_scale_factor = 1.0f;
    c->downsample_padding = 1;
    c->conv_in_kernel = c->conv_out_kernel = 3;
    c->time_embed_dim = 1280;
}

/* Fills every parameter (the variances of tools/unet_sd15_reference.py's randomise). */
static void randomise(mood_unet *m)
{
    for (size_t i = 0; i < m->n_params; i++) {
        unet_param *p = &m->params[i];
        size_t n = p->numel, len = strlen(p->name);
        int is_weight = len > 7 && strcmp(p->name + len - 7, ".weight") == 0;
        float a = p->ndim >= 2 ? sqrtf(3.0f * (float)p->shape[0] / (float)n) : 0.1f;
        float base = p->ndim == 1 && is_weight ? 1.0f : 0.0f;
        for (size_t j = 0; j < n; j++)
            p->data[j] = base + a * rnd();
    }
}

static double n_params(const mood_unet *m)
{
    double n = 0;
    for (size_t i = 0; i < m->n_params; i++)
        n += (double)m->params[i].numel;
    return n;
}

static int sd15_new(mood_unet **out)
{
    mood_unet *m = mood_calloc(1, sizeof *m);
    int err;
    *out = NULL;
    if (!m)
        return mood_error_nomem();
    sd15_config(&m->cfg);
    if ((err = mood__unet_build(m)) < 0) {
        mood_unet_free(m);
        return err;
    }
    randomise(m);
    *out = m;
    return 0;
}

/* ----- inputs and timing ---------------------------------------------------------------------- */

typedef struct bench_io {
    int B, S, L;
    size_t nx, nc, nout;
    float *x, *t, *ctx, *ref; /* host */
    float *dx, *dt, *dctx;    /* device */
} bench_io;

static int io_new(bench_io *io, mood_cuda_ctx *ctx)
{
    io->nx = io->nout = (size_t)io->B * 4 * io->S * io->S;
    io->nc = (size_t)io->B * io->L * 768;
    io->x = malloc(io->nx * 4), io->t = malloc((size_t)io->B * 4);
    io->ctx = malloc(io->nc * 4), io->ref = malloc(io->nout * 4);
    if (!io->x || !io->t || !io->ctx || !io->ref)
        return -1;
    for (size_t i = 0; i < io->nx; i++)
        io->x[i] = 1.5f * rnd();
    for (int b = 0; b < io->B; b++)
        io->t[b] = 500.0f + 400.0f * rnd();
    for (size_t i = 0; i < io->nc; i++)
        io->ctx[i] = rnd();
    void **d[3] = {(void **)&io->dx, (void **)&io->dt, (void **)&io->dctx};
    const float *h[3] = {io->x, io->t, io->ctx};
    size_t n[3] = {io->nx, (size_t)io->B, io->nc};
    for (int i = 0; i < 3; i++)
        if (mood_cuda_alloc(ctx, d[i], n[i] * 4) != 0 ||
            mood_cuda_upload(ctx, *d[i], h[i], n[i] * 4))
            return -1;
    return 0;
}

static void io_free(bench_io *io, mood_cuda_ctx *ctx)
{
    free(io->x), free(io->t), free(io->ctx), free(io->ref);
    mood_cuda_free(ctx, io->dx), mood_cuda_free(ctx, io->dt), mood_cuda_free(ctx, io->dctx);
}

static int forward(mood_cuda_unet *u, const bench_io *io, float *dout)
{
    return mood_cuda_unet_forward_dev(u, dout, io->dx, io->dt, io->dctx, io->B, io->S, io->S, io->L,
                                      NULL, NULL);
}

/* Median over 5 batches of the mean ms per forward; each batch lasts about 200 ms. */
static int time_forward(mood_cuda_ctx *ctx, mood_cuda_unet *u, const bench_io *io, float *dout,
                        double *ms)
{
    double t0, one, med[5];
    int reps;
    for (int i = 0; i < 2; i++)
        if (forward(u, io, dout) != 0)
            return -1;
    if (mood_cuda_sync(ctx) != 0)
        return -1;
    t0 = bench_now_ms();
    if (forward(u, io, dout) != 0 || mood_cuda_sync(ctx) != 0)
        return -1;
    one = bench_now_ms() - t0;
    reps = one > 0.0 ? (int)(200.0 / one) : 20;
    reps = reps < 3 ? 3 : reps > 200 ? 200 : reps;
    for (int b = 0; b < 5; b++) {
        t0 = bench_now_ms();
        for (int r = 0; r < reps; r++)
            if (forward(u, io, dout) != 0)
                return -1;
        if (mood_cuda_sync(ctx) != 0)
            return -1;
        med[b] = (bench_now_ms() - t0) / reps;
    }
    qsort(med, 5, sizeof med[0], bench_cmp_double);
    *ms = med[2];
    return 0;
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double d = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        d = e > d || e != e ? e : d;
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    }
    return scale > 0 ? d / scale : d;
}

/* Times the forward with graphs (already timed: ms) and without, checks the graph's output (in
 * dout) against the uncaptured one (ref, the first forward's), prints the lines. 0 or 1. */
static int bench_graphs(mood_cuda_ctx *ctx, mood_cuda_unet *u, const bench_io *io, float *dout,
                        const char *name, double ms, const float *ref)
{
    mood_cuda_unet_graph_stats st;
    double ms_ng = 0;
    float *got = malloc(io->nout * 4);
    int rc = 0, same;
    mood_cuda_unet_graph_stats_get(u, &st);
    if (!got || mood_cuda_download(ctx, got, dout, io->nout * 4) != 0) {
        free(got);
        return fail(name);
    }
    same = memcmp(got, ref, io->nout * 4) == 0;
    free(got);
    mood_cuda_unet_set_graphs(u, 0);
    if (time_forward(ctx, u, io, dout, &ms_ng) != 0)
        return fail(name);
    mood_cuda_unet_set_graphs(u, 1);
    printf("%s: forward %.2f ms with CUDA graphs, %.2f ms without (%.1f%% saved); graph output "
           "%s the uncaptured forward's; %llu recorded, %llu replays, %.2f GB reserved\n",
           name, ms, ms_ng, 100.0 * (ms_ng - ms) / ms_ng, same ? "equals" : "DIFFERS from",
           (unsigned long long)st.captures, (unsigned long long)st.replays, st.bytes / 1e9);
    printf("RESULT\tunet_sd15_%s_nograph\t%d,%d,%d,%d\t%.4f\t%.6g\n", name, io->B, io->S, io->S,
           io->L, ms_ng, mood_cuda_unet_flop(u));
    if (!st.enabled || st.replays == 0) {
        fprintf(stderr, "bench_cuda_unet: %s: the forward ran without CUDA graphs: %s\n", name,
                st.failed ? st.error : "never replayed");
        rc = 1;
    }
    if (!same) {
        fprintf(stderr, "bench_cuda_unet: %s: the graph's output differs from the forward's\n",
                name);
        rc = 1;
    }
    return rc;
}

/* One precision: upload, check against the CPU output, time; prints its lines. */
static int bench_dtype(mood_cuda_ctx *ctx, const mood_unet *m, const bench_io *io,
                       mood_cuda_dtype dt)
{
    const char *name = dt == MOOD_CUDA_F32 ? "f32" : "bf16";
    double limit = dt == MOOD_CUDA_F32 ? 1e-3 : 0.2, t0 = bench_now_ms(), ms = 0, err;
    mood_cuda_unet_options o;
    mood_cuda_unet *u = NULL;
    void *dout = NULL;
    float *out = malloc(io->nout * 4);
    int rc = 1, graph_rc;
    mood_cuda_unet_options_init(&o);
    o.dtype = dt;
    if (!out || mood_cuda_unet_new(&u, ctx, m, &o) != 0 ||
        mood_cuda_alloc(ctx, &dout, io->nout * 4) != 0) {
        rc = fail(name);
        goto done;
    }
    printf("%s: weights %.2f GB uploaded in %.0f ms\n", name, mood_cuda_unet_bytes(u) / 1e9,
           bench_now_ms() - t0);
    if (forward(u, io, dout) != 0 || mood_cuda_download(ctx, out, dout, io->nout * 4) != 0 ||
        time_forward(ctx, u, io, dout, &ms) != 0) {
        rc = fail(name);
        goto done;
    }
    err = rel_err(out, io->ref, io->nout);
    printf("%s: forward %.2f ms (CUDA graphs), %.1f TFLOP/s; max |gpu - cpu| / max |cpu| = %.2e "
           "(limit %.0e)\n",
           name, ms, mood_cuda_unet_flop(u) / (ms * 1e-3) / 1e12, err, limit);
    printf("RESULT\tunet_sd15_%s\t%d,%d,%d,%d\t%.4f\t%.6g\n", name, io->B, io->S, io->S, io->L, ms,
           mood_cuda_unet_flop(u));
    graph_rc = bench_graphs(ctx, u, io, dout, name, ms, out);
    if (dt != MOOD_CUDA_F32) { /* 16-bit attention: the GEMM path by default; the flash one? */
        double flash_ms = 0;
        int prev = mood__cuda_attention_path(ctx, 1);
        if (time_forward(ctx, u, io, dout, &flash_ms) != 0) {
            rc = fail(name);
            goto done;
        }
        mood__cuda_attention_path(ctx, prev);
        printf("%s: forward with attention on the flash kernel %.2f ms (default path %.2f ms)\n",
               name, flash_ms, ms);
    }
    rc = err <= limit ? graph_rc : 1;
    if (err > limit)
        fprintf(stderr, "bench_cuda_unet: %s output off by %.2e\n", name, err);
done:
    mood_cuda_free(ctx, dout);
    mood_cuda_unet_free(u);
    free(out);
    return rc;
}

int main(int argc, char **argv)
{
    bench_io io = {.B = argc > 1 ? atoi(argv[1]) : 2,
                   .S = argc > 2 ? atoi(argv[2]) : 64,
                   .L = argc > 3 ? atoi(argv[3]) : 77};
    mood_cuda_ctx *ctx = NULL;
    mood_unet *m = NULL;
    double t0;
    int rc = 0;
    mood_blas_tune_process(argv); /* the CPU reference at OpenBLAS's speed (bench_unet.c) */
    if (io.B < 1 || io.S < 1 || io.L < 1) {
        fprintf(stderr, "usage: bench_cuda_unet [BATCH [SIZE [TOKENS]]]\n");
        return 1;
    }
    if (mood_cuda_ctx_new(&ctx, NULL) != 0) {
        fprintf(stderr, "bench_cuda_unet: no CUDA device: %s\n", mood_error_last());
        return 77;
    }
    t0 = bench_now_ms();
    if (sd15_new(&m) != 0 || io_new(&io, ctx) != 0) {
        rc = fail("setup");
        goto done;
    }
    printf("SD1.5 UNet, %zu tensors, %.0f M parameters (random), latent %dx4x%dx%d, %d tokens; "
           "built in %.0f ms\n",
           m->n_params, n_params(m) / 1e6, io.B, io.S, io.S, io.L, bench_now_ms() - t0);
    t0 = bench_now_ms();
    if (mood_unet_forward(m, io.ref, io.x, io.t, io.ctx, io.B, io.S, io.S, io.L, NULL, NULL) != 0) {
        rc = fail("cpu forward");
        goto done;
    }
    printf("cpu: forward %.0f ms (the reference)\n", bench_now_ms() - t0);
    rc |= bench_dtype(ctx, m, &io, MOOD_CUDA_F32);
    rc |= bench_dtype(ctx, m, &io, MOOD_CUDA_BF16);
done:
    io_free(&io, ctx);
    mood_unet_free(m);
    mood_cuda_ctx_free(ctx);
    return rc;
}
