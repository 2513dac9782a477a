/*
 * test_cuda_ops.c: every layer function of the CUDA backend (engine/cuda/cuda_ops.h) against its
 * CPU twin (engine/cpu/ops.h, the reference checked against torch in test_ops*.c), forward and
 * backward, on seeded random inputs of odd sizes (so no tile, warp or vector width divides them).
 *
 * Each comparison prints max |gpu - cpu| / max |cpu| and fails above its tolerance: 1e-5 for
 * fp32 elementwise and normalisation layers, 3e-5 for fp32 products (cuBLAS and cuDNN sum in
 * other orders), 2e-3 for bf16/fp16 inputs with fp32 outputs (inputs are rounded on the host
 * first and the CPU reference runs on the rounded values, so only the summation differs), 1e-2
 * for 16-bit outputs. Backward passes start from random gradient buffers on both sides, so a
 * kernel that overwrites instead of adding fails. Nearest upsampling to any size is checked
 * against the UNet's (mood__unet_upsample, engine/unet_forward.c), its backward against a copy
 * of the UNet backward's (static in engine/unet_backward.c). Also: the attention kernels
 * with small score budgets (several blocks of query rows, causal masks offset by the block
 * start), determinism (two runs give the same bits), the memory pool (no cudaMalloc in steady
 * state) and errors.
 *
 * Label `cuda`. Without the CUDA backend or a GPU, the checks that need none run (pool size
 * classes, the error of a context without a device) and the program exits 77 (skipped).
 */
#include "cuda_harness.h"

#include <stdint.h>

#include "common/common.h"
#include "engine/cpu/ops.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/unet_pass.h" /* CPU twins: mood__unet_upsample and its backward, axpy */

#define TOL_F32      1e-5
#define TOL_F32_GEMM 3e-5
#define TOL_16_IN    2e-3
#define TOL_16_OUT   1e-2

static mood_cuda_ctx *ctx;

/* ----- host helpers ------------------------------------------------------------------------- */

/* A fresh host buffer of n values uniform in [-amp, amp). Freed by free_all. */
#define MAX_BUFS 256
static void *host_bufs[MAX_BUFS];
static int n_host;
static void *dev_bufs[MAX_BUFS];
static int n_dev;

static float *hbuf(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    if (!p || n_host == MAX_BUFS) {
        fprintf(stderr, "out of host buffers\n");
        exit(2);
    }
    host_bufs[n_host++] = p;
    return p;
}

static float *hrand(size_t n, float amp)
{
    float *p = hbuf(n);
    for (size_t i = 0; i < n; i++)
        p[i] = amp * harness_rnd();
    return p;
}

static float *hcopy(const float *x, size_t n)
{
    float *p = hbuf(n);
    memcpy(p, x, n * sizeof *p);
    return p;
}

/* A device buffer of `bytes`; freed by free_all. */
static void *dalloc(size_t bytes)
{
    void *p = NULL;
    if (mood_cuda_alloc(ctx, &p, bytes ? bytes : 1) != 0 || n_dev == MAX_BUFS) {
        fprintf(stderr, "device allocation failed: %s\n", mood_error_last());
        exit(2);
    }
    dev_bufs[n_dev++] = p;
    return p;
}

/* A device copy of host floats. */
static float *dup_dev(const float *h, size_t n)
{
    float *d = dalloc(n * sizeof *d);
    MOOD_CHECK_OK(mood_cuda_upload(ctx, d, h, n * sizeof *d));
    return d;
}

/* A host copy of device floats. */
static float *dup_host(const float *d, size_t n)
{
    float *h = hbuf(n);
    MOOD_CHECK_OK(mood_cuda_download(ctx, h, d, n * sizeof *h));
    return h;
}

static void free_all(void)
{
    mood_cuda_sync(ctx);
    for (int i = 0; i < n_dev; i++)
        mood_cuda_free(ctx, dev_bufs[i]);
    for (int i = 0; i < n_host; i++)
        free(host_bufs[i]);
    n_dev = n_host = 0;
}

/* Rounds to the nearest bf16 / fp16 value (ties to even), as a float. */
static float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float round_f16(float x)
{
    float a = fabsf(x);
    if (a < 6.103515625e-05f) /* subnormal: spacing 2^-24 */
        return copysignf(nearbyintf(a * 16777216.0f) / 16777216.0f, x);
    int e;
    frexpf(a, &e); /* a in [2^(e-1), 2^e): 10 fraction bits, spacing 2^(e-11) */
    float ulp = ldexpf(1.0f, e - 11);
    return copysignf(nearbyintf(a / ulp) * ulp, x);
}

static void round_to(float *x, size_t n, mood_cuda_dtype dt)
{
    for (size_t i = 0; i < n; i++)
        x[i] = dt == MOOD_CUDA_BF16  ? round_bf16(x[i])
               : dt == MOOD_CUDA_F16 ? round_f16(x[i])
                                     : x[i];
}

/* A device buffer of dt holding host floats (already representable in dt). */
static void *dup_dev_as(const float *h, size_t n, mood_cuda_dtype dt)
{
    float *f = dup_dev(h, n);
    if (dt == MOOD_CUDA_F32)
        return f;
    void *d = dalloc(n * 2);
    MOOD_CHECK_OK(mood_cuda_op_convert(ctx, d, dt, f, MOOD_CUDA_F32, n));
    return d;
}

/* Host floats of a device buffer of dt. */
static float *dup_host_from(const void *d, size_t n, mood_cuda_dtype dt)
{
    if (dt == MOOD_CUDA_F32)
        return dup_host(d, n);
    float *f = dalloc(n * sizeof *f);
    MOOD_CHECK_OK(mood_cuda_op_convert(ctx, f, MOOD_CUDA_F32, d, dt, n));
    return dup_host(f, n);
}

static const char *dt_name(mood_cuda_dtype dt)
{
    return dt == MOOD_CUDA_BF16 ? "bf16" : dt == MOOD_CUDA_F16 ? "f16" : "f32";
}

/* Checks max |gpu - cpu| <= tol * max |cpu| (or tol when cpu is all zeros), printing the figures
 * and, on failure, the worst element. */
static void compare(const char *what, const float *gpu, const float *cpu, size_t n, double tol)
{
    double d = 0, scale = 0;
    size_t worst = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)gpu[i] - cpu[i]);
        if (!(e <= d) || isnan(gpu[i])) { /* NaN counts as the worst */
            d = isnan(gpu[i]) ? INFINITY : e;
            worst = i;
        }
        scale = fabs(cpu[i]) > scale ? fabs(cpu[i]) : scale;
    }
    double rel = scale > 0 ? d / scale : d;
    bad = !(rel <= tol);
    printf("  %-44s n %8zu  max|d| %.3g  rel %.3g  (tol %.0e)%s\n", what, n, d, rel, tol,
           bad ? "  FAIL" : "");
    MOOD_CHECK_MSG(!bad, "%s: rel error %.3g > %.0e; element %zu: gpu %.9g, cpu %.9g", what, rel,
                   tol, worst, gpu[worst], cpu[worst]);
}

/* Bitwise equality of two host buffers. */
static void same_bits(const char *what, const float *a, const float *b, size_t n)
{
    int same = memcmp(a, b, n * sizeof *a) == 0;
    printf("  %-44s %s\n", what, same ? "same bits" : "DIFFERENT bits  FAIL");
    MOOD_CHECK_MSG(same, "%s: two runs differ", what);
}

/* ----- checks without a GPU ----------------------------------------------------------------- */

static void test_pool_classes(void)
{
    size_t sizes[] = {1,
                      255,
                      256,
                      257,
                      4095,
                      4096,
                      4097,
                      5120,
                      5121,
                      65536,
                      65537,
                      1000000,
                      (size_t)3 << 30,
                      ((size_t)1 << 40) + 1};
    size_t prev = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t b = sizes[i], c = mood__cuda_pool_class_size(b);
        MOOD_CHECK_MSG(c >= b, "class of %zu is %zu", b, c);
        MOOD_CHECK_MSG(c % 256 == 0, "class of %zu is %zu (not 256-aligned)", b, c);
        MOOD_CHECK_MSG(c <= b + b / 4 + 256, "class of %zu is %zu (over 25%% waste)", b, c);
        MOOD_CHECK_MSG(c >= prev, "classes not monotonic at %zu", b);
        MOOD_CHECK_MSG(mood__cuda_pool_class_size(c) == c, "class of class %zu moves", c);
        prev = c;
    }
}

static void test_no_device_error(void)
{
    mood_cuda_ctx *c = (mood_cuda_ctx *)1;
    mood_cuda_options o;
    mood_cuda_options_init(&o);
    o.device = 1000;
    int rc = mood_cuda_ctx_new(&c, &o);
    MOOD_CHECK(rc == MOOD_EUNSUPPORTED);
    MOOD_CHECK(c == NULL);
    MOOD_CHECK(strlen(mood_error_last()) > 0);
}

/* ----- pool and conversion ------------------------------------------------------------------ */

static void test_pool_reuse(void)
{
    size_t sizes[] = {100, 5000, 123457, 3 << 20, 77};
    void *p[5];
    mood_cuda_pool_stats s0, s1, s2;
    for (int round = 0; round < 3; round++) {
        if (round == 1)
            mood_cuda_pool_stats_get(ctx, &s0);
        for (int i = 0; i < 5; i++)
            MOOD_CHECK_OK(mood_cuda_alloc(ctx, &p[i], sizes[i]));
        for (int i = 0; i < 5; i++) {
            MOOD_CHECK(((uintptr_t)p[i] & 255) == 0);
            mood_cuda_free(ctx, p[i]);
        }
    }
    mood_cuda_pool_stats_get(ctx, &s1);
    MOOD_CHECK_MSG(s1.device_allocs == s0.device_allocs, "cudaMalloc in steady state: %llu -> %llu",
                   (unsigned long long)s0.device_allocs, (unsigned long long)s1.device_allocs);
    MOOD_CHECK(s1.hits >= s0.hits + 10);
    MOOD_CHECK(s1.cached >= s1.in_use);
    MOOD_CHECK_OK(mood_cuda_pool_trim(ctx));
    mood_cuda_pool_stats_get(ctx, &s2);
    MOOD_CHECK(s2.cached == 0);
    /* a pointer the pool did not hand out is refused, not cached */
    float x = 0;
    mood_cuda_free(ctx, &x);
    mood_cuda_pool_stats_get(ctx, &s2);
    MOOD_CHECK(s2.cached == 0);
}

static void test_convert(void)
{
    harness_rng_seed(1);
    size_t n = 3 * 37 * 29;
    float *x = hrand(n, 3.0f);
    x[0] = 1.00390625f; /* a bf16 tie: rounds to even (1.0) */
    x[1] = 1.01171875f; /* a bf16 tie: rounds to even (1.015625) */
    x[2] = 1e-6f;       /* an fp16 subnormal */
    x[3] = -0.0f;
    mood_cuda_dtype types[] = {MOOD_CUDA_BF16, MOOD_CUDA_F16};
    for (int t = 0; t < 2; t++) {
        float *want = hcopy(x, n);
        round_to(want, n, types[t]);
        float *d = dup_dev(x, n);
        void *h = dalloc(n * 2);
        MOOD_CHECK_OK(mood_cuda_op_convert(ctx, h, types[t], d, MOOD_CUDA_F32, n));
        float *got = dup_host_from(h, n, types[t]);
        char what[64];
        snprintf(what, sizeof what, "convert f32 -> %s -> f32", dt_name(types[t]));
        same_bits(what, got, want, n);
    }
    free_all();
}

/* ----- linear and LoRA ---------------------------------------------------------------------- */

static void linear_case(size_t N, int IC, int OC, int with_bias)
{
    char what[96];
    float *x = hrand(N * IC, 1.0f), *w = hrand((size_t)OC * IC, 0.5f), *b = hrand(OC, 1.0f);
    float *ref = hbuf(N * OC);
    mood_op_linear(ref, x, w, with_bias ? b : NULL, N, IC, OC);
    float *dy = dalloc(N * OC * sizeof(float));
    MOOD_CHECK_OK(mood_cuda_op_linear(ctx, dy, dup_dev(x, N * IC), dup_dev(w, (size_t)OC * IC),
                                      with_bias ? dup_dev(b, OC) : NULL, N, IC, OC));
    snprintf(what, sizeof what, "linear f32 %zux%d->%d%s", N, IC, OC, with_bias ? " +b" : "");
    compare(what, dup_host(dy, N * OC), ref, N * OC, TOL_F32_GEMM);
}

static void test_linear(void)
{
    harness_rng_seed(2);
    linear_case(37, 29, 43, 1);
    linear_case(37, 29, 43, 0);
    linear_case(301, 67, 129, 1);
    linear_case(1, 5, 3, 1);
    linear_case(64, 320, 320, 1); /* aligned sizes take other cuBLASLt kernels */
    free_all();
}

static void linear_ex_case(mood_cuda_dtype in_dt, mood_cuda_dtype out_dt, size_t N, int IC, int OC,
                           int with_bias)
{
    char what[96];
    float *x = hrand(N * IC, 1.0f), *w = hrand((size_t)OC * IC, 0.5f), *b = hrand(OC, 1.0f);
    round_to(x, N * IC, in_dt);
    round_to(w, (size_t)OC * IC, in_dt);
    float *ref = hbuf(N * OC);
    mood_op_linear(ref, x, w, with_bias ? b : NULL, N, IC, OC);
    void *dy = dalloc(N * OC * 4);
    MOOD_CHECK_OK(mood_cuda_op_linear_ex(ctx, dy, out_dt, dup_dev_as(x, N * IC, in_dt),
                                         dup_dev_as(w, (size_t)OC * IC, in_dt), in_dt,
                                         with_bias ? dup_dev(b, OC) : NULL, N, IC, OC));
    snprintf(what, sizeof what, "linear %s->%s %zux%d->%d%s", dt_name(in_dt), dt_name(out_dt), N,
             IC, OC, with_bias ? " +b" : "");
    compare(what, dup_host_from(dy, N * OC, out_dt), ref, N * OC,
            out_dt == MOOD_CUDA_F32 ? TOL_16_IN : TOL_16_OUT);
}

static void test_linear_16(void)
{
    harness_rng_seed(3);
    mood_cuda_dtype types[] = {MOOD_CUDA_BF16, MOOD_CUDA_F16};
    for (int t = 0; t < 2; t++) {
        linear_ex_case(types[t], MOOD_CUDA_F32, 37, 29, 43, 1);
        linear_ex_case(types[t], types[t], 37, 29, 43, 1);
        linear_ex_case(types[t], types[t], 37, 29, 43, 0);
        linear_ex_case(types[t], MOOD_CUDA_F32, 256, 320, 640, 1);
        linear_ex_case(types[t], types[t], 256, 320, 640, 1);
    }
    /* an output type other than f32 or the inputs' is refused */
    MOOD_CHECK(mood_cuda_op_linear_ex(ctx, NULL, MOOD_CUDA_F16, NULL, NULL, MOOD_CUDA_BF16, NULL, 1,
                                      1, 1) == MOOD_EINVAL);
    free_all();
}

static void test_linear_backward(void)
{
    harness_rng_seed(4);
    size_t N = 41;
    int IC = 37, OC = 29;
    float *x = hrand(N * IC, 1.0f), *w = hrand((size_t)OC * IC, 0.5f), *g = hrand(N * OC, 1.0f);
    float *dx = hrand(N * IC, 1.0f), *dw = hrand((size_t)OC * IC, 1.0f), *db = hrand(OC, 1.0f);
    float *ddx = dup_dev(dx, N * IC), *ddw = dup_dev(dw, (size_t)OC * IC), *ddb = dup_dev(db, OC);
    mood_op_linear_backward(dx, dw, db, g, x, w, N, IC, OC);
    MOOD_CHECK_OK(mood_cuda_op_linear_backward(ctx, ddx, ddw, ddb, dup_dev(g, N * OC),
                                               dup_dev(x, N * IC), dup_dev(w, (size_t)OC * IC), N,
                                               IC, OC));
    compare("linear backward dinp (+=)", dup_host(ddx, N * IC), dx, N * IC, TOL_F32_GEMM);
    compare("linear backward dw (+=)", dup_host(ddw, (size_t)OC * IC), dw, (size_t)OC * IC,
            TOL_F32_GEMM);
    compare("linear backward dbias (+=)", dup_host(ddb, OC), db, OC, TOL_F32_GEMM);
    /* bias sums over more rows than one chunk of the column sums */
    size_t N2 = 1031;
    float *g2 = hrand(N2 * OC, 1.0f), *db2 = hrand(OC, 1.0f), *ddb2 = dup_dev(db2, OC);
    mood_op_linear_backward(NULL, NULL, db2, g2, NULL, NULL, N2, IC, OC);
    MOOD_CHECK_OK(mood_cuda_op_linear_backward(ctx, NULL, NULL, ddb2, dup_dev(g2, N2 * OC), NULL,
                                               NULL, N2, IC, OC));
    compare("linear backward dbias, 1031 rows", dup_host(ddb2, OC), db2, OC, TOL_F32);
    free_all();
}

static void test_lora_linear(void)
{
    harness_rng_seed(5);
    size_t N = 43;
    int IC = 37, OC = 29, rank = 5;
    float scale = 0.75f;
    float *x = hrand(N * IC, 1.0f), *down = hrand((size_t)rank * IC, 0.5f);
    float *up = hrand((size_t)OC * rank, 0.5f), *y = hrand(N * OC, 1.0f);
    float *dy = dup_dev(y, N * OC), *tmp = hbuf(N * rank), *dtmp = hbuf(N * rank);
    float *ddown = dup_dev(down, (size_t)rank * IC), *dup_ = dup_dev(up, (size_t)OC * rank);
    float *dx = dup_dev(x, N * IC);
    mood_op_lora_linear(y, x, down, up, rank, scale, N, IC, OC, tmp);
    MOOD_CHECK_OK(mood_cuda_op_lora_linear(ctx, dy, dx, ddown, dup_, rank, scale, N, IC, OC));
    compare("lora linear (out +=)", dup_host(dy, N * OC), y, N * OC, TOL_F32_GEMM);

    float *g = hrand(N * OC, 1.0f), *gx = hrand(N * IC, 1.0f);
    float *gd = hrand((size_t)rank * IC, 1.0f), *gu = hrand((size_t)OC * rank, 1.0f);
    float *dgx = dup_dev(gx, N * IC), *dgd = dup_dev(gd, (size_t)rank * IC);
    float *dgu = dup_dev(gu, (size_t)OC * rank);
    mood_op_lora_linear_backward(gx, gd, gu, g, x, down, up, rank, scale, N, IC, OC, tmp, dtmp);
    MOOD_CHECK_OK(mood_cuda_op_lora_linear_backward(ctx, dgx, dgd, dgu, dup_dev(g, N * OC), dx,
                                                    ddown, dup_, rank, scale, N, IC, OC));
    compare("lora linear backward dinp", dup_host(dgx, N * IC), gx, N * IC, TOL_F32_GEMM);
    compare("lora linear backward ddown", dup_host(dgd, (size_t)rank * IC), gd, (size_t)rank * IC,
            TOL_F32_GEMM);
    compare("lora linear backward dup", dup_host(dgu, (size_t)OC * rank), gu, (size_t)OC * rank,
            TOL_F32_GEMM);
    free_all();
}

static void test_lora_merge(void)
{
    harness_rng_seed(6);
    int rows = 37, rank = 7;
    size_t cols = 29 * 9; /* a 3x3 convolution's (in * kh * kw) */
    float scale = -1.25f;
    float *w = hrand((size_t)rows * cols, 1.0f), *up = hrand((size_t)rows * rank, 0.5f);
    float *down = hrand((size_t)rank * cols, 0.5f);
    float *dw = dup_dev(w, (size_t)rows * cols);
    MOOD_CHECK_OK(mood_cuda_op_lora_merge(ctx, dw, dup_dev(up, (size_t)rows * rank),
                                          dup_dev(down, (size_t)rank * cols), rows, rank, cols,
                                          scale));
    /* the reference: W + scale up down in double */
    float *ref = hbuf((size_t)rows * cols);
    for (int i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            double s = 0;
            for (int r = 0; r < rank; r++)
                s += (double)up[(size_t)i * rank + r] * down[(size_t)r * cols + j];
            ref[(size_t)i * cols + j] = (float)(w[(size_t)i * cols + j] + scale * s);
        }
    compare("lora merge W += s up down", dup_host(dw, (size_t)rows * cols), ref,
            (size_t)rows * cols, TOL_F32_GEMM);
    free_all();
}

/* ----- convolution -------------------------------------------------------------------------- */

static void conv_case(mood_conv2d_dims d, int with_bias)
{
    char what[128];
    int oh = mood_op_conv2d_out_h(&d), ow = mood_op_conv2d_out_w(&d);
    size_t nx = (size_t)d.batch * d.in_c * d.h * d.w, nw = (size_t)d.out_c * d.in_c * d.k * d.k;
    size_t ny = (size_t)d.batch * d.out_c * oh * ow;
    float *x = hrand(nx, 1.0f), *w = hrand(nw, 0.3f), *b = hrand(d.out_c, 1.0f);
    float *ref = hbuf(ny), *scratch = hbuf(mood_op_conv2d_scratch(&d));
    mood_op_conv2d(ref, x, w, with_bias ? b : NULL, &d, scratch);
    float *dx = dup_dev(x, nx), *dwt = dup_dev(w, nw), *dy = dalloc(ny * sizeof(float));
    MOOD_CHECK_OK(
        mood_cuda_op_conv2d(ctx, dy, dx, dwt, with_bias ? dup_dev(b, d.out_c) : NULL, &d));
    snprintf(what, sizeof what, "conv2d %dx%dx%dx%d k%d s%d p%d ->%d%s", d.batch, d.in_c, d.h, d.w,
             d.k, d.stride, d.pad, d.out_c, with_bias ? " +b" : "");
    compare(what, dup_host(dy, ny), ref, ny, TOL_F32_GEMM);

    /* backward, onto random gradients */
    float *g = hrand(ny, 1.0f), *gx = hrand(nx, 1.0f), *gw = hrand(nw, 1.0f);
    float *gb = hrand(d.out_c, 1.0f);
    float *dgx = dup_dev(gx, nx), *dgw = dup_dev(gw, nw), *dgb = dup_dev(gb, d.out_c);
    float *bscratch = hbuf(mood_op_conv2d_backward_scratch(&d));
    mood_op_conv2d_backward(gx, gw, gb, g, x, w, &d, bscratch);
    float *dg = dup_dev(g, ny);
    MOOD_CHECK_OK(mood_cuda_op_conv2d_backward(ctx, dgx, dgw, dgb, dg, dx, dwt, &d));
    compare("  backward dinp (+=)", dup_host(dgx, nx), gx, nx, TOL_F32_GEMM);
    compare("  backward dw (+=)", dup_host(dgw, nw), gw, nw, TOL_F32_GEMM);
    compare("  backward dbias (+=)", dup_host(dgb, d.out_c), gb, d.out_c, TOL_F32);

    /* the same twice gives the same bits */
    float *a1 = dalloc(nw * sizeof(float)), *a2 = dalloc(nw * sizeof(float));
    MOOD_CHECK_OK(mood_cuda_memset0(ctx, a1, nw * sizeof(float)));
    MOOD_CHECK_OK(mood_cuda_memset0(ctx, a2, nw * sizeof(float)));
    MOOD_CHECK_OK(mood_cuda_op_conv2d_backward(ctx, NULL, a1, NULL, dg, dx, dwt, &d));
    MOOD_CHECK_OK(mood_cuda_op_conv2d_backward(ctx, NULL, a2, NULL, dg, dx, dwt, &d));
    same_bits("  backward dw twice", dup_host(a1, nw), dup_host(a2, nw), nw);
}

static void test_conv2d(void)
{
    harness_rng_seed(7);
    mood_conv2d_dims cases[] = {
        {3, 5, 37, 29, 7, 3, 1, 1}, /* batch, in_c, h, w, out_c, k, stride, pad */
        {3, 5, 37, 29, 7, 3, 2, 1}, {2, 13, 17, 23, 11, 1, 1, 0}, {2, 6, 15, 21, 9, 3, 1, 0},
        {1, 4, 9, 11, 5, 4, 2, 1},  {2, 32, 16, 16, 64, 3, 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        conv_case(cases[i], i != 2);
    conv_case(cases[0], 0);
    free_all();
}

static void test_conv2d_16(void)
{
    harness_rng_seed(8);
    mood_conv2d_dims cases[] = {
        {3, 5, 37, 29, 7, 3, 1, 1}, {2, 32, 16, 16, 64, 3, 1, 1}, {2, 13, 17, 23, 11, 1, 1, 0}};
    mood_cuda_dtype types[] = {MOOD_CUDA_BF16, MOOD_CUDA_F16};
    for (int t = 0; t < 2; t++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            mood_conv2d_dims d = cases[i];
            char what[128];
            size_t nx = (size_t)d.batch * d.in_c * d.h * d.w;
            size_t nw = (size_t)d.out_c * d.in_c * d.k * d.k;
            size_t ny =
                (size_t)d.batch * d.out_c * mood_op_conv2d_out_h(&d) * mood_op_conv2d_out_w(&d);
            float *x = hrand(nx, 1.0f), *w = hrand(nw, 0.3f), *b = hrand(d.out_c, 1.0f);
            round_to(x, nx, types[t]);
            round_to(w, nw, types[t]);
            float *ref = hbuf(ny), *scratch = hbuf(mood_op_conv2d_scratch(&d));
            mood_op_conv2d(ref, x, w, b, &d, scratch);
            void *dy = dalloc(ny * 2);
            MOOD_CHECK_OK(mood_cuda_op_conv2d_ex(ctx, dy, dup_dev_as(x, nx, types[t]),
                                                 dup_dev_as(w, nw, types[t]), types[t],
                                                 dup_dev(b, d.out_c), &d));
            snprintf(what, sizeof what, "conv2d %s %dx%dx%dx%d k%d ->%d +b", dt_name(types[t]),
                     d.batch, d.in_c, d.h, d.w, d.k, d.out_c);
            compare(what, dup_host_from(dy, ny, types[t]), ref, ny, TOL_16_OUT);
        }
    free_all();
}

/* The input gradients of bf16 training (mood_cuda_op_linear_backward_ex, conv2d_backward_ex):
 * dout fp32 (the op rounds it), w of dt, dinp fp32 += ; against the CPU backward of the rounded
 * operands (for the convolution, its result rounded to dt as cuDNN gives it: TOL_16_OUT). */
static void test_backward_16(void)
{
    harness_rng_seed(9);
    mood_cuda_dtype types[] = {MOOD_CUDA_BF16, MOOD_CUDA_F16};
    mood_conv2d_dims cases[] = {{3, 5, 37, 29, 7, 3, 1, 1}, {2, 6, 15, 21, 9, 3, 2, 1}};
    for (int t = 0; t < 2; t++) {
        mood_cuda_dtype dt = types[t];
        char what[128];
        size_t N = 41;
        int IC = 37, OC = 29;
        float *w = hrand((size_t)OC * IC, 0.5f), *g = hrand(N * OC, 1.0f);
        float *dx = hrand(N * IC, 1.0f), *ddx = dup_dev(dx, N * IC), *gr = hbuf(N * OC);
        memcpy(gr, g, N * OC * sizeof *g);
        round_to(gr, N * OC, dt);
        round_to(w, (size_t)OC * IC, dt);
        mood_op_linear_backward(dx, NULL, NULL, gr, NULL, w, N, IC, OC);
        MOOD_CHECK_OK(mood_cuda_op_linear_backward_ex(
            ctx, ddx, dup_dev(g, N * OC), dup_dev_as(w, (size_t)OC * IC, dt), dt, N, IC, OC));
        snprintf(what, sizeof what, "linear backward_ex %s dinp (+=)", dt_name(dt));
        compare(what, dup_host(ddx, N * IC), dx, N * IC, TOL_16_IN);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            mood_conv2d_dims d = cases[i];
            size_t nx = (size_t)d.batch * d.in_c * d.h * d.w;
            size_t nw = (size_t)d.out_c * d.in_c * d.k * d.k;
            size_t ny =
                (size_t)d.batch * d.out_c * mood_op_conv2d_out_h(&d) * mood_op_conv2d_out_w(&d);
            float *cw = hrand(nw, 0.3f), *cg = hrand(ny, 1.0f), *cgr = hbuf(ny);
            float *x0 = hrand(nx, 1.0f), *dxc = hbuf(nx), *dd = dup_dev(x0, nx);
            float *scratch = hbuf(mood_op_conv2d_backward_scratch(&d));
            memcpy(cgr, cg, ny * sizeof *cg);
            round_to(cgr, ny, dt);
            round_to(cw, nw, dt);
            memset(dxc, 0, nx * sizeof *dxc);
            mood_op_conv2d_backward(dxc, NULL, NULL, cgr, NULL, cw, &d, scratch);
            round_to(dxc, nx, dt);
            mood_op_add_inplace(dxc, x0, nx);
            MOOD_CHECK_OK(mood_cuda_op_conv2d_backward_ex(ctx, dd, dup_dev(cg, ny),
                                                          dup_dev_as(cw, nw, dt), dt, &d));
            snprintf(what, sizeof what, "conv2d backward_ex %s %dx%dx%dx%d k%d s%d dinp (+=)",
                     dt_name(dt), d.batch, d.in_c, d.h, d.w, d.k, d.stride);
            compare(what, dup_host(dd, nx), dxc, nx, TOL_16_OUT);
        }
    }
    /* fp32 weights are refused (the plain backward takes them) */
    MOOD_CHECK(mood_cuda_op_linear_backward_ex(ctx, NULL, NULL, NULL, MOOD_CUDA_F32, 1, 1, 1) ==
               MOOD_EINVAL);
    free_all();
}

/* ----- normalisation ------------------------------------------------------------------------ */

static void group_norm_case(int B, int C, size_t HW, int groups, int affine)
{
    char what[96];
    size_t n = (size_t)B * C * HW, ng = (size_t)B * groups;
    float *x = hrand(n, 2.0f), *w = hrand(C, 1.0f), *b = hrand(C, 1.0f);
    for (size_t i = 0; i < n; i++)
        x[i] += 3.0f; /* a mean far from 0: the variance must be taken about it */
    float *ref = hbuf(n), *mean = hbuf(ng), *rstd = hbuf(ng);
    mood_op_group_norm(ref, x, affine ? w : NULL, affine ? b : NULL, B, C, HW, groups, 1e-5f, mean,
                       rstd);
    float *dx = dup_dev(x, n), *dy = dalloc(n * sizeof(float));
    float *dmean = dalloc(ng * sizeof(float)), *drstd = dalloc(ng * sizeof(float));
    float *dwt = dup_dev(w, C), *dbs = dup_dev(b, C);
    MOOD_CHECK_OK(mood_cuda_op_group_norm(ctx, dy, dx, affine ? dwt : NULL, affine ? dbs : NULL, B,
                                          C, HW, groups, 1e-5f, dmean, drstd));
    snprintf(what, sizeof what, "group norm %dx%dx%zu g%d%s", B, C, HW, groups,
             affine ? " affine" : "");
    compare(what, dup_host(dy, n), ref, n, TOL_F32);
    compare("  mean", dup_host(dmean, ng), mean, ng, TOL_F32);
    compare("  rstd", dup_host(drstd, ng), rstd, ng, TOL_F32);
    /* in place */
    float *dx2 = dup_dev(x, n);
    MOOD_CHECK_OK(mood_cuda_op_group_norm(ctx, dx2, dx2, affine ? dwt : NULL, affine ? dbs : NULL,
                                          B, C, HW, groups, 1e-5f, NULL, NULL));
    compare("  in place", dup_host(dx2, n), ref, n, TOL_F32);

    float *g = hrand(n, 1.0f), *gx = hrand(n, 1.0f), *gw = hrand(C, 1.0f), *gb = hrand(C, 1.0f);
    float *dgx = dup_dev(gx, n), *dgw = dup_dev(gw, C), *dgb = dup_dev(gb, C);
    mood_op_group_norm_backward(gx, gw, gb, g, x, affine ? w : NULL, mean, rstd, B, C, HW, groups);
    MOOD_CHECK_OK(mood_cuda_op_group_norm_backward(ctx, dgx, dgw, dgb, dup_dev(g, n), dx,
                                                   affine ? dwt : NULL, dup_dev(mean, ng),
                                                   dup_dev(rstd, ng), B, C, HW, groups));
    compare("  backward dinp (+=)", dup_host(dgx, n), gx, n, TOL_F32);
    compare("  backward dw (+=)", dup_host(dgw, C), gw, C, TOL_F32);
    compare("  backward db (+=)", dup_host(dgb, C), gb, C, TOL_F32);
}

static void test_group_norm(void)
{
    harness_rng_seed(9);
    group_norm_case(3, 12, 37 * 29, 4, 1);
    group_norm_case(2, 10, 37, 5, 0);
    group_norm_case(1, 64, 13 * 11, 32, 1);
    group_norm_case(2, 6, 1, 3, 1);
    /* channels not divisible by the groups: an error, not a crash */
    MOOD_CHECK(mood_cuda_op_group_norm(ctx, NULL, NULL, NULL, NULL, 1, 10, 4, 3, 1e-5f, NULL,
                                       NULL) == MOOD_EINVAL);
    free_all();
}

static void layer_norm_case(size_t N, int C, int affine)
{
    char what[96];
    size_t n = N * C;
    float *x = hrand(n, 2.0f), *w = hrand(C, 1.0f), *b = hrand(C, 1.0f);
    for (size_t i = 0; i < n; i++)
        x[i] -= 5.0f;
    float *ref = hbuf(n), *mean = hbuf(N), *rstd = hbuf(N);
    mood_op_layer_norm(ref, x, affine ? w : NULL, affine ? b : NULL, N, C, 1e-5f, mean, rstd);
    float *dx = dup_dev(x, n), *dy = dalloc(n * sizeof(float));
    float *dmean = dalloc(N * sizeof(float)), *drstd = dalloc(N * sizeof(float));
    float *dwt = dup_dev(w, C), *dbs = dup_dev(b, C);
    MOOD_CHECK_OK(mood_cuda_op_layer_norm(ctx, dy, dx, affine ? dwt : NULL, affine ? dbs : NULL, N,
                                          C, 1e-5f, dmean, drstd));
    snprintf(what, sizeof what, "layer norm %zux%d%s", N, C, affine ? " affine" : "");
    compare(what, dup_host(dy, n), ref, n, TOL_F32);
    compare("  mean", dup_host(dmean, N), mean, N, TOL_F32);
    compare("  rstd", dup_host(drstd, N), rstd, N, TOL_F32);

    float *g = hrand(n, 1.0f), *gx = hrand(n, 1.0f), *gw = hrand(C, 1.0f), *gb = hrand(C, 1.0f);
    float *dgx = dup_dev(gx, n), *dgw = dup_dev(gw, C), *dgb = dup_dev(gb, C);
    mood_op_layer_norm_backward(gx, gw, gb, g, x, affine ? w : NULL, mean, rstd, N, C);
    MOOD_CHECK_OK(mood_cuda_op_layer_norm_backward(ctx, dgx, dgw, dgb, dup_dev(g, n), dx,
                                                   affine ? dwt : NULL, dup_dev(mean, N),
                                                   dup_dev(rstd, N), N, C));
    compare("  backward dinp (+=)", dup_host(dgx, n), gx, n, TOL_F32);
    compare("  backward dw (+=)", dup_host(dgw, C), gw, C, TOL_F32);
    compare("  backward db (+=)", dup_host(dgb, C), gb, C, TOL_F32);
}

static void test_layer_norm(void)
{
    harness_rng_seed(10);
    layer_norm_case(37, 29, 1);
    layer_norm_case(37, 29, 0);
    layer_norm_case(517, 320, 1); /* more rows than a chunk of the affine sums */
    layer_norm_case(3, 1, 1);
    free_all();
}

/* ----- elementwise -------------------------------------------------------------------------- */

typedef void (*cpu_act_fn)(float *, const float *, size_t);
typedef int (*gpu_act_fn)(mood_cuda_ctx *, float *, const float *, size_t);
typedef void (*cpu_actb_fn)(float *, const float *, const float *, size_t);
typedef int (*gpu_actb_fn)(mood_cuda_ctx *, float *, const float *, const float *, size_t);

static void act_case(const char *name, cpu_act_fn cf, gpu_act_fn gf, cpu_actb_fn cb, gpu_actb_fn gb)
{
    char what[96];
    size_t n = 3 * 37 * 29;
    float *x = hrand(n, 6.0f);
    x[0] = 100.0f, x[1] = -100.0f, x[2] = 0.0f, x[3] = -30.0f; /* the clamped tails */
    float *ref = hbuf(n);
    cf(ref, x, n);
    float *dx = dup_dev(x, n), *dy = dalloc(n * sizeof(float));
    MOOD_CHECK_OK(gf(ctx, dy, dx, n));
    snprintf(what, sizeof what, "%s", name);
    compare(what, dup_host(dy, n), ref, n, TOL_F32);
    MOOD_CHECK_OK(gf(ctx, dx, dx, n)); /* in place */
    snprintf(what, sizeof what, "%s in place", name);
    compare(what, dup_host(dx, n), ref, n, TOL_F32);

    float *g = hrand(n, 1.0f), *gx = hrand(n, 1.0f), *dgx = dup_dev(gx, n);
    cb(gx, g, x, n);
    MOOD_CHECK_OK(gb(ctx, dgx, dup_dev(g, n), dup_dev(x, n), n));
    snprintf(what, sizeof what, "%s backward (+=)", name);
    compare(what, dup_host(dgx, n), gx, n, TOL_F32);
}

static void test_activations(void)
{
    harness_rng_seed(11);
    act_case("silu", mood_op_silu, mood_cuda_op_silu, mood_op_silu_backward,
             mood_cuda_op_silu_backward);
    act_case("gelu", mood_op_gelu, mood_cuda_op_gelu, mood_op_gelu_backward,
             mood_cuda_op_gelu_backward);
    act_case("quick_gelu", mood_op_quick_gelu, mood_cuda_op_quick_gelu, mood_op_quick_gelu_backward,
             mood_cuda_op_quick_gelu_backward);
    free_all();
}

static void test_geglu(void)
{
    harness_rng_seed(12);
    size_t N = 37;
    int F = 29;
    float *x = hrand(N * 2 * F, 4.0f), *ref = hbuf(N * F);
    mood_op_geglu(ref, x, N, F);
    float *dx = dup_dev(x, N * 2 * F), *dy = dalloc(N * F * sizeof(float));
    MOOD_CHECK_OK(mood_cuda_op_geglu(ctx, dy, dx, N, F));
    compare("geglu", dup_host(dy, N * F), ref, N * F, TOL_F32);
    float *g = hrand(N * F, 1.0f), *gx = hrand(N * 2 * F, 1.0f), *dgx = dup_dev(gx, N * 2 * F);
    mood_op_geglu_backward(gx, g, x, N, F);
    MOOD_CHECK_OK(mood_cuda_op_geglu_backward(ctx, dgx, dup_dev(g, N * F), dx, N, F));
    compare("geglu backward (+=)", dup_host(dgx, N * 2 * F), gx, N * 2 * F, TOL_F32);
    free_all();
}

static void test_adds(void)
{
    harness_rng_seed(13);
    int B = 3, C = 37;
    size_t HW = 29, n = (size_t)B * C * HW;
    float *a = hrand(n, 1.0f), *b = hrand(n, 1.0f), *ref = hbuf(n);
    mood_op_add(ref, a, b, n);
    float *da = dup_dev(a, n), *db = dup_dev(b, n), *dy = dalloc(n * sizeof(float));
    MOOD_CHECK_OK(mood_cuda_op_add(ctx, dy, da, db, n));
    compare("add", dup_host(dy, n), ref, n, 0.0);
    MOOD_CHECK_OK(mood_cuda_op_add_inplace(ctx, da, db, n));
    compare("add in place", dup_host(da, n), ref, n, 0.0);
    for (size_t i = 0; i < n; i++) /* as the CPU resnet applies its output_scale_factor */
        ref[i] /= 1.7f;
    MOOD_CHECK_OK(mood_cuda_op_div_scalar(ctx, da, 1.7f, n));
    compare("divide by a scalar", dup_host(da, n), ref, n, 0.0);
    float *y = hcopy(b, n), *dyb = dup_dev(b, n); /* y += a x, as a side path is added */
    axpy(y, a, -0.37f, n);
    MOOD_CHECK_OK(mood_cuda_op_axpy(ctx, dyb, dup_dev(a, n), -0.37f, n));
    compare("axpy", dup_host(dyb, n), y, n, TOL_F32);

    float *v = hrand((size_t)B * C, 1.0f), *x = hcopy(a, n), *dx = dup_dev(a, n);
    mood_op_add_channel_bias(x, v, B, C, HW);
    MOOD_CHECK_OK(mood_cuda_op_add_channel_bias(ctx, dx, dup_dev(v, (size_t)B * C), B, C, HW));
    compare("add channel bias", dup_host(dx, n), x, n, 0.0);
    float *gv = hrand((size_t)B * C, 1.0f), *dgv = dup_dev(gv, (size_t)B * C);
    mood_op_add_channel_bias_backward(gv, b, B, C, HW);
    MOOD_CHECK_OK(mood_cuda_op_add_channel_bias_backward(ctx, dgv, db, B, C, HW));
    compare("add channel bias backward (+=)", dup_host(dgv, (size_t)B * C), gv, (size_t)B * C,
            TOL_F32);
    free_all();
}

/* ----- layout ------------------------------------------------------------------------------- */

static void test_layout(void)
{
    harness_rng_seed(14);
    int B = 3, C = 37, H = 29, W = 31;
    size_t HW = (size_t)H * W, n = (size_t)B * C * HW;
    float *x = hrand(n, 1.0f), *ref = hbuf(n), *dx = dup_dev(x, n), *dy = dalloc(n * 4);
    mood_op_nchw_to_nhwc(ref, x, B, C, HW);
    MOOD_CHECK_OK(mood_cuda_op_nchw_to_nhwc(ctx, dy, dx, B, C, HW));
    compare("nchw -> nhwc", dup_host(dy, n), ref, n, 0.0);
    mood_op_nhwc_to_nchw(ref, x, B, C, HW);
    MOOD_CHECK_OK(mood_cuda_op_nhwc_to_nchw(ctx, dy, dx, B, C, HW));
    compare("nhwc -> nchw", dup_host(dy, n), ref, n, 0.0);

    float *g = hrand(n, 1.0f), *gx = hrand(n, 1.0f), *dg = dup_dev(g, n);
    float *dgx = dup_dev(gx, n);
    mood_op_nchw_to_nhwc_backward(gx, g, B, C, HW);
    MOOD_CHECK_OK(mood_cuda_op_nchw_to_nhwc_backward(ctx, dgx, dg, B, C, HW));
    compare("nchw -> nhwc backward (+=)", dup_host(dgx, n), gx, n, 0.0);
    mood_op_nhwc_to_nchw_backward(gx, g, B, C, HW);
    MOOD_CHECK_OK(mood_cuda_op_nhwc_to_nchw_backward(ctx, dgx, dg, B, C, HW));
    compare("nhwc -> nchw backward (+=)", dup_host(dgx, n), gx, n, 0.0);

    /* upsampling: (B*C) x H x W -> 2H x 2W */
    float *up = hbuf(4 * n), *dup_ = dalloc(4 * n * sizeof(float));
    mood_op_upsample_nearest2x(up, x, B * C, H, W);
    MOOD_CHECK_OK(mood_cuda_op_upsample_nearest2x(ctx, dup_, dx, B * C, H, W));
    compare("upsample nearest 2x", dup_host(dup_, 4 * n), up, 4 * n, 0.0);
    float *gu = hrand(4 * n, 1.0f), *gx2 = hrand(n, 1.0f), *dgx2 = dup_dev(gx2, n);
    mood_op_upsample_nearest2x_backward(gx2, gu, B * C, H, W);
    MOOD_CHECK_OK(
        mood_cuda_op_upsample_nearest2x_backward(ctx, dgx2, dup_dev(gu, 4 * n), B * C, H, W));
    compare("upsample nearest 2x backward (+=)", dup_host(dgx2, n), gx2, n, TOL_F32);

    /* nearest to any size (the UNet's upsamplers on odd sizes): up, 2x, shrink, 1x1 */
    int sizes[][2] = {{2 * H - 1, W + 3}, {2 * H, 2 * W}, {H / 3, 2 * W + 1}, {1, 1}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int OH = sizes[i][0], OW = sizes[i][1];
        size_t no = (size_t)B * C * OH * OW;
        float *want = hbuf(no), *dout = dalloc(no * sizeof(float));
        char what[64];
        mood__unet_upsample(want, x, B * C, H, W, OH, OW);
        MOOD_CHECK_OK(mood_cuda_op_upsample_nearest(ctx, dout, dx, B * C, H, W, OH, OW));
        snprintf(what, sizeof what, "upsample nearest %dx%d -> %dx%d", H, W, OH, OW);
        compare(what, dup_host(dout, no), want, no, 0.0);
        /* backward (+=): the same sums in the same order */
        float *gy = hrand(no, 1.0f), *gxa = hrand(n, 1.0f), *dgxa = dup_dev(gxa, n);
        mood__unet_upsample_backward(gxa, gy, B * C, H, W, OH, OW);
        MOOD_CHECK_OK(mood_cuda_op_upsample_nearest_backward(ctx, dgxa, dup_dev(gy, no), B * C, H,
                                                             W, OH, OW));
        snprintf(what, sizeof what, "upsample nearest %dx%d -> %dx%d backward (+=)", H, W, OH, OW);
        compare(what, dup_host(dgxa, n), gxa, n, TOL_F32);
    }

    /* channel concatenation */
    int Ca = 5, Cb = 7;
    size_t na = (size_t)B * Ca * HW, nb = (size_t)B * Cb * HW, nc = na + nb;
    float *a = hrand(na, 1.0f), *b = hrand(nb, 1.0f), *cat = hbuf(nc), *dcat = dalloc(nc * 4);
    mood_op_concat_channels(cat, a, Ca, b, Cb, B, HW);
    MOOD_CHECK_OK(
        mood_cuda_op_concat_channels(ctx, dcat, dup_dev(a, na), Ca, dup_dev(b, nb), Cb, B, HW));
    compare("concat channels", dup_host(dcat, nc), cat, nc, 0.0);
    float *gc = hrand(nc, 1.0f), *ga = hrand(na, 1.0f), *gb = hrand(nb, 1.0f);
    float *dga = dup_dev(ga, na), *dgb = dup_dev(gb, nb), *dgc = dup_dev(gc, nc);
    mood_op_concat_channels_backward(ga, gb, gc, Ca, Cb, B, HW);
    MOOD_CHECK_OK(mood_cuda_op_concat_channels_backward(ctx, dga, dgb, dgc, Ca, Cb, B, HW));
    compare("concat backward da (+=)", dup_host(dga, na), ga, na, 0.0);
    compare("concat backward db (+=)", dup_host(dgb, nb), gb, nb, 0.0);
    mood_op_concat_channels_backward(NULL, gb, gc, Ca, Cb, B, HW);
    MOOD_CHECK_OK(mood_cuda_op_concat_channels_backward(ctx, NULL, dgb, dgc, Ca, Cb, B, HW));
    compare("concat backward db only", dup_host(dgb, nb), gb, nb, 0.0);
    free_all();
}

static void test_timestep_embedding(void)
{
    harness_rng_seed(15);
    int B = 5;
    float t[5] = {0.0f, 1.0f, 999.0f, 500.5f, 37.25f};
    int dims[] = {32, 33, 320, 1};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        for (int flip = 0; flip < 2; flip++) {
            int dim = dims[i];
            float shift = flip ? 0.0f : 1.0f;
            char what[96];
            float *ref = hbuf((size_t)B * dim), *dy = dalloc((size_t)B * dim * 4);
            mood_op_timestep_embedding(ref, t, B, dim, flip, shift, 10000.0f);
            MOOD_CHECK_OK(mood_cuda_op_timestep_embedding(ctx, dy, dup_dev(t, B), B, dim, flip,
                                                          shift, 10000.0f));
            snprintf(what, sizeof what, "timestep embedding dim %d flip %d shift %g", dim, flip,
                     shift);
            compare(what, dup_host(dy, (size_t)B * dim), ref, (size_t)B * dim, TOL_F32);
        }
    free_all();
}

/* ----- attention ---------------------------------------------------------------------------- */

typedef struct att_case {
    int B, H, Tq, Tk, D, causal;
    float scale;
} att_case;

static const att_case att_cases[] = {
    {2, 3, 37, 29, 40, 0, 0.0f},  {2, 3, 45, 45, 24, 1, 0.0f}, {1, 2, 70, 77, 64, 0, 0.0f},
    {1, 1, 33, 31, 160, 0, 0.0f}, {2, 2, 19, 23, 1, 0, 0.0f},  {1, 2, 77, 77, 64, 1, 0.125f},
    {1, 1, 29, 37, 200, 0, 0.0f}, {3, 5, 1, 9, 8, 0, 0.0f},
};

static void attention_forward_case(const att_case *c, mood_cuda_dtype dt, int path, size_t budget)
{
    char what[128];
    size_t nq = (size_t)c->B * c->Tq * c->H * c->D, nk = (size_t)c->B * c->Tk * c->H * c->D;
    float *q = hrand(nq, 1.5f), *k = hrand(nk, 1.5f), *v = hrand(nk, 1.0f), *ref = hbuf(nq);
    round_to(q, nq, dt);
    round_to(k, nk, dt);
    round_to(v, nk, dt);
    float *s = hbuf(mood_op_attention_scratch(c->Tq, c->Tk));
    mood_op_attention(ref, q, k, v, c->B, c->H, c->Tq, c->Tk, c->D, c->causal, c->scale, s);
    void *dy = dalloc(nq * 4);
    mood__cuda_attention_path(ctx, path);
    mood__cuda_attention_budget(ctx, budget);
    int rc;
    if (dt == MOOD_CUDA_F32)
        rc = mood_cuda_op_attention(ctx, dy, dup_dev(q, nq), dup_dev(k, nk), dup_dev(v, nk), c->B,
                                    c->H, c->Tq, c->Tk, c->D, c->causal, c->scale);
    else
        rc = mood_cuda_op_attention_ex(ctx, dy, dup_dev_as(q, nq, dt), dup_dev_as(k, nk, dt),
                                       dup_dev_as(v, nk, dt), dt, c->B, c->H, c->Tq, c->Tk, c->D,
                                       c->causal, c->scale);
    mood__cuda_attention_path(ctx, 0);
    mood__cuda_attention_budget(ctx, 0);
    MOOD_CHECK_OK(rc);
    snprintf(what, sizeof what, "attention %s %s B%d H%d %dx%d D%d%s%s", dt_name(dt),
             path == 1 ? "flash"
             : budget  ? "gemm/blocks"
                       : "gemm",
             c->B, c->H, c->Tq, c->Tk, c->D, c->causal ? " causal" : "",
             c->scale != 0.0f ? " scale" : "");
    compare(what, dup_host_from(dy, nq, dt), ref, nq,
            dt == MOOD_CUDA_F32 ? TOL_F32_GEMM : TOL_16_OUT);
}

static void test_attention(void)
{
    harness_rng_seed(16);
    mood_cuda_dtype types[] = {MOOD_CUDA_F32, MOOD_CUDA_BF16, MOOD_CUDA_F16};
    for (int t = 0; t < 3; t++)
        for (size_t i = 0; i < sizeof att_cases / sizeof att_cases[0]; i++) {
            const att_case *c = &att_cases[i];
            if (c->D <= MOOD_CUDA_FLASH_MAX_D)
                attention_forward_case(c, types[t], 1, 0);
            attention_forward_case(c, types[t], 2, 0);
            /* blocks of 7 query rows: several blocks, causal limits offset by the block start */
            size_t per_row = (size_t)c->H * c->Tk * (4 + (types[t] == MOOD_CUDA_F32 ? 0 : 2));
            attention_forward_case(c, types[t], 2, 7 * per_row);
            free_all();
        }
    /* the automatic choice, and a head size the flash kernel refuses */
    attention_forward_case(&att_cases[0], MOOD_CUDA_F32, 0, 0);
    attention_forward_case(&att_cases[6], MOOD_CUDA_F32, 0, 0);
    mood__cuda_attention_path(ctx, 1);
    MOOD_CHECK(mood_cuda_op_attention(ctx, NULL, NULL, NULL, NULL, 1, 1, 4, 4, 200, 0, 0.0f) ==
               MOOD_EUNSUPPORTED);
    mood__cuda_attention_path(ctx, 0);
    /* causal needs Tq == Tk */
    MOOD_CHECK(mood_cuda_op_attention(ctx, NULL, NULL, NULL, NULL, 1, 1, 4, 5, 8, 1, 0.0f) ==
               MOOD_EINVAL);
    free_all();
}

static void attention_backward_case(const att_case *c, size_t budget, int all_grads)
{
    char what[128];
    size_t nq = (size_t)c->B * c->Tq * c->H * c->D, nk = (size_t)c->B * c->Tk * c->H * c->D;
    float *q = hrand(nq, 1.5f), *k = hrand(nk, 1.5f), *v = hrand(nk, 1.0f), *g = hrand(nq, 1.0f);
    float *gq = hrand(nq, 1.0f), *gk = hrand(nk, 1.0f), *gv = hrand(nk, 1.0f);
    float *dgq = dup_dev(gq, nq), *dgk = dup_dev(gk, nk), *dgv = dup_dev(gv, nk);
    float *s = hbuf(mood_op_attention_backward_scratch(c->Tq, c->Tk));
    mood_op_attention_backward(all_grads ? gq : NULL, gk, all_grads ? gv : NULL, g, q, k, v, c->B,
                               c->H, c->Tq, c->Tk, c->D, c->causal, c->scale, s);
    mood__cuda_attention_budget(ctx, budget);
    float *dq = dup_dev(q, nq), *dk = dup_dev(k, nk), *dv = dup_dev(v, nk), *dg = dup_dev(g, nq);
    MOOD_CHECK_OK(mood_cuda_op_attention_backward(ctx, all_grads ? dgq : NULL, dgk,
                                                  all_grads ? dgv : NULL, dg, dq, dk, dv, c->B,
                                                  c->H, c->Tq, c->Tk, c->D, c->causal, c->scale));
    snprintf(what, sizeof what, "attention backward B%d H%d %dx%d D%d%s%s%s", c->B, c->H, c->Tq,
             c->Tk, c->D, c->causal ? " causal" : "", budget ? " blocks" : "",
             all_grads ? "" : " dk only");
    compare(what, dup_host(dgk, nk), gk, nk, TOL_F32_GEMM);
    if (all_grads) {
        compare("  dq (+=)", dup_host(dgq, nq), gq, nq, TOL_F32_GEMM);
        compare("  dv (+=)", dup_host(dgv, nk), gv, nk, TOL_F32_GEMM);
    }
    /* twice from zero: the same bits */
    float *a1 = dalloc(nk * 4), *a2 = dalloc(nk * 4);
    MOOD_CHECK_OK(mood_cuda_memset0(ctx, a1, nk * 4));
    MOOD_CHECK_OK(mood_cuda_memset0(ctx, a2, nk * 4));
    MOOD_CHECK_OK(mood_cuda_op_attention_backward(ctx, NULL, a1, NULL, dg, dq, dk, dv, c->B, c->H,
                                                  c->Tq, c->Tk, c->D, c->causal, c->scale));
    MOOD_CHECK_OK(mood_cuda_op_attention_backward(ctx, NULL, a2, NULL, dg, dq, dk, dv, c->B, c->H,
                                                  c->Tq, c->Tk, c->D, c->causal, c->scale));
    same_bits("  dk twice", dup_host(a1, nk), dup_host(a2, nk), nk);
    mood__cuda_attention_budget(ctx, 0);
}

static void test_attention_backward(void)
{
    harness_rng_seed(17);
    for (size_t i = 0; i < sizeof att_cases / sizeof att_cases[0]; i++) {
        const att_case *c = &att_cases[i];
        attention_backward_case(c, 0, 1);
        attention_backward_case(c, (size_t)c->H * c->Tk * 8 * 5, 1); /* blocks of 5 rows */
        free_all();
    }
    attention_backward_case(&att_cases[1], 0, 0);
    free_all();
}

/* ----- main --------------------------------------------------------------------------------- */

int main(void)
{
    static const harness_test cpu_side[] = {MOOD_T(test_pool_classes)};
    static const harness_test tests[] = {
        MOOD_T(test_no_device_error), MOOD_T(test_pool_reuse),
        MOOD_T(test_convert),         MOOD_T(test_linear),
        MOOD_T(test_linear_16),       MOOD_T(test_linear_backward),
        MOOD_T(test_lora_linear),     MOOD_T(test_lora_merge),
        MOOD_T(test_conv2d),          MOOD_T(test_conv2d_16),
        MOOD_T(test_backward_16),     MOOD_T(test_group_norm),
        MOOD_T(test_layer_norm),      MOOD_T(test_activations),
        MOOD_T(test_geglu),           MOOD_T(test_adds),
        MOOD_T(test_layout),          MOOD_T(test_timestep_embedding),
        MOOD_T(test_attention),       MOOD_T(test_attention_backward),
    };
    static const harness_test no_gpu[] = {MOOD_T(test_no_device_error)};
    if (mood_cuda_compiled() && harness_run(cpu_side, sizeof cpu_side / sizeof cpu_side[0]))
        return 1;
    return harness_run_cuda(&ctx, no_gpu, sizeof no_gpu / sizeof no_gpu[0], tests,
                            sizeof tests / sizeof tests[0]);
}
