/*
 * cuda_ops_emu.c: a CPU emulation of the CUDA backend's layer functions (engine/cuda/cuda_ops.h),
 * for tests only. Linked in place of the kernels into a test variant of libmood
 * (tests/cuda_emu/CMakeLists.txt), it lets the GPU orchestration code, engine/cuda/unet_cuda.c,
 * unet_cuda_train.c and unet_cuda_backward.c, run on a machine without a GPU: every mood_cuda_op_*
 * runs its CPU twin (engine/cpu/ops.h), so test_cuda_unet, test_cuda_unet_train and
 * test_train_steps --cuda check the orchestration (which op runs on which buffer with which sizes,
 * scales and flags) against the CPU passes.
 *
 * What it models:
 *   - Device memory is host memory: one block per mood_cuda_alloc, of exactly the bytes asked
 *     for (so that ASan sees a read past the end), 256-byte aligned, filled with 0xff bytes (NaN
 *     as float32, bf16 and fp16) so that reading memory nobody wrote turns the results into NaN,
 *     and freed by mood_cuda_free so that ASan sees a use after free.
 *   - Every op checks that each tensor it is given lies inside one live block, for the extent its
 *     sizes imply: a host pointer where a device one belongs, a freed block or an extent past the
 *     end of its block fails the op with MOOD_EINVAL naming the op and the argument (a GPU would
 *     fault or read a neighbour). A double free or a foreign pointer given to mood_cuda_free
 *     aborts the program (the real pool ignores it).
 *   - The pool's statistics: a freed block's size is remembered as cached and the next request
 *     of the same size counts as a hit, so device_allocs counts the cudaMalloc calls the real
 *     pool would make (here in 256-byte classes; the real pool's classes above 4 KiB are
 *     coarser).
 *   - 16-bit tensors are stored as 16 bits: the _ex ops widen them to float32, run the float32 CPU
 *     op and round the result to nearest even as the GPU does (mood_dtype_to_f32/from_f32).
 *   - EMU_NOISE=x (environment, read when a context opens): the float32 result of every product
 *     and normalisation (linear, convolution, attention, group and layer norm, side path, and
 *     their backward passes) gets a relative error uniform in (-x, x), as another summation order
 *     would give, to see how rounding differences grow through the passes and whether a test's
 *     tolerances leave room for a GPU's (try 3e-7 for fp32). An element's noise is a function of
 *     its value and index, so that, as on a GPU, the same inputs give the same bits.
 *
 * What it does NOT check: the .cu kernels themselves (tests/unit/test_cuda_ops.c, on a GPU);
 * streams and asynchronous behaviour (every call here has finished when it returns, so a missing
 * mood_cuda_sync, or a host buffer reused while its copy is still queued, goes unnoticed);
 * cuBLAS, cuBLASLt and cuDNN (handles, workspace, algorithms, TF32); the pool's size classes and
 * out-of-memory handling; the GPU's rounding (EMU_NOISE only imitates it); CUDA graphs
 * (mood_cuda_graph_*: not emulated, so the UNet's inference forward runs its pass every time).
 * Ops that the orchestration does not call fail with MOOD_EUNSUPPORTED naming the op.
 *
 * Every function of cuda_ops.h is defined here (the test variant must link): a function added
 * there needs its emulation here, by its CPU twin, or MOOD_EUNSUPPORTED while nothing calls it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/unet_pass.h" /* axpy, mood__unet_upsample(_backward): the UNet passes' twins */
#include "mood/safetensors.h" /* mood_dtype_to_f32, mood_dtype_from_f32 */

#define BLOCK_ALIGN 256 /* the real pool's blocks are 256-byte aligned, its classes multiples */

typedef struct emu_block {
    uintptr_t base;
    size_t bytes; /* as requested */
} emu_block;

struct mood_cuda_ctx {
    emu_block *live; /* sorted by base */
    size_t n_live, cap_live;
    size_t *cached; /* class sizes of the blocks the real pool would hold for reuse */
    size_t n_cached, cap_cached;
    mood_cuda_pool_stats stats;
    double noise;    /* EMU_NOISE */
    int attn_path;   /* mood__cuda_attention_path's setting (no effect here) */
    size_t attn_mem; /* mood__cuda_attention_budget's setting (no effect here) */
};

/* ----- noise ------------------------------------------------------------------------------- */

static int noise_init(mood_cuda_ctx *ctx)
{
    const char *s = getenv("EMU_NOISE");
    char *end;
    if (!s || !*s)
        return 0;
    ctx->noise = strtod(s, &end);
    if (*end || !(ctx->noise >= 0 && ctx->noise < 1))
        return mood_error_set(MOOD_EINVAL, "cuda emulation: EMU_NOISE=%s is not a number in [0, 1)",
                              s);
    return 0;
}

/* p[i] *= 1 + noise * r, r in (-1, 1) a hash of the value and its index: the rounding of
 * another summation order, and like a GPU's the same for the same inputs (the tests check that
 * two runs give the same bits). */
static void noise(const mood_cuda_ctx *ctx, float *p, size_t n)
{
    if (!p || ctx->noise == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &p[i], sizeof bits);
        uint64_t h = ((uint64_t)bits << 32 ^ i) + 0x9E3779B97F4A7C15ull; /* splitmix64 */
        h = (h ^ h >> 30) * 0xBF58476D1CE4E5B9ull;
        h = (h ^ h >> 27) * 0x94D049BB133111EBull;
        h ^= h >> 31;
        double r = (double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        p[i] = (float)(p[i] * (1.0 + ctx->noise * r));
    }
}

/* ----- context ----------------------------------------------------------------------------- */

void mood_cuda_options_init(mood_cuda_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->workspace = (size_t)64 << 20;
}

int mood_cuda_ctx_new(mood_cuda_ctx **out, const mood_cuda_options *opts)
{
    mood_cuda_ctx *c;
    int err;
    if (!out)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_ctx_new: out is NULL");
    *out = NULL;
    if (opts && opts->device != 0)
        return mood_error_set(MOOD_EUNSUPPORTED, "CUDA device %d: 1 device found (emulation)",
                              opts->device);
    if (!(c = mood_calloc(1, sizeof *c)))
        return mood_error_nomem();
    if ((err = noise_init(c)) != 0) {
        mood_free(c);
        return err;
    }
    *out = c;
    return 0;
}

/* Frees every block, in use or not, as the real pool does. */
void mood_cuda_ctx_free(mood_cuda_ctx *ctx)
{
    if (!ctx)
        return;
    for (size_t i = 0; i < ctx->n_live; i++)
        free((void *)ctx->live[i].base);
    mood_free(ctx->live);
    mood_free(ctx->cached);
    mood_free(ctx);
}

void *mood_cuda_ctx_stream(mood_cuda_ctx *ctx)
{
    (void)ctx;
    return NULL;
}

int mood_cuda_sync(mood_cuda_ctx *ctx)
{
    return ctx ? 0 : mood_error_set(MOOD_EINVAL, "mood_cuda_sync: no context");
}

/* The emulated device is an 80 GiB one (an H100's), its pool's blocks in use. */
int mood_cuda_mem_info(mood_cuda_ctx *ctx, size_t *free_bytes, size_t *total_bytes)
{
    if (!ctx)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_mem_info: no context");
    *total_bytes = (size_t)80 << 30;
    *free_bytes = *total_bytes - ctx->stats.in_use - ctx->stats.cached;
    return 0;
}

/* ----- memory ------------------------------------------------------------------------------ */

size_t mood__cuda_pool_class_size(size_t bytes)
{
    return bytes ? (bytes + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN : BLOCK_ALIGN;
}

/* The index of the last live block whose base is <= p, or n_live when there is none. */
static size_t block_at(const mood_cuda_ctx *ctx, uintptr_t p)
{
    size_t lo = 0, hi = ctx->n_live; /* lo ends as the number of blocks with base <= p */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ctx->live[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? lo - 1 : ctx->n_live;
}

static int block_insert(mood_cuda_ctx *ctx, uintptr_t base, size_t bytes)
{
    size_t i = block_at(ctx, base);
    i = i == ctx->n_live ? 0 : i + 1;
    if (mood_array_reserve(&ctx->live, &ctx->cap_live, ctx->n_live, sizeof *ctx->live, 256) < 0)
        return MOOD_ENOMEM;
    memmove(ctx->live + i + 1, ctx->live + i, (ctx->n_live - i) * sizeof *ctx->live);
    ctx->live[i] = (emu_block){base, bytes};
    ctx->n_live++;
    return 0;
}

/* Counts a request as the real pool would: a hit when it holds a freed block of `size` bytes
 * (taken), else a cudaMalloc. */
static void pool_count(mood_cuda_ctx *ctx, size_t size)
{
    for (size_t i = 0; i < ctx->n_cached; i++)
        if (ctx->cached[i] == size) {
            ctx->cached[i] = ctx->cached[--ctx->n_cached];
            ctx->stats.cached -= size;
            ctx->stats.hits++;
            return;
        }
    ctx->stats.device_allocs++;
}

int mood_cuda_alloc(mood_cuda_ctx *ctx, void **out, size_t bytes)
{
    size_t size = mood__cuda_pool_class_size(bytes);
    void *p = NULL;
    if (!ctx || !out)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_alloc: no context or no out");
    *out = NULL;
    if (posix_memalign(&p, BLOCK_ALIGN, bytes ? bytes : 1) != 0)
        return mood_error_set(MOOD_ENOMEM, "cuda emulation: %zu bytes", bytes);
    memset(p, 0xff, bytes ? bytes : 1); /* NaN: reads of what nobody wrote show */
    if (block_insert(ctx, (uintptr_t)p, bytes) != 0) {
        free(p);
        return mood_error_nomem();
    }
    pool_count(ctx, size);
    ctx->stats.in_use += size;
    if (ctx->stats.in_use + ctx->stats.cached > ctx->stats.peak)
        ctx->stats.peak = ctx->stats.in_use + ctx->stats.cached;
    *out = p;
    return 0;
}

void mood_cuda_free(mood_cuda_ctx *ctx, void *ptr)
{
    size_t i, size;
    if (!ctx || !ptr)
        return;
    i = block_at(ctx, (uintptr_t)ptr);
    if (i == ctx->n_live || ctx->live[i].base != (uintptr_t)ptr) {
        fprintf(stderr,
                "cuda emulation: mood_cuda_free(%p): not a live block (freed twice, or "
                "not from mood_cuda_alloc)\n",
                ptr);
        abort();
    }
    size = mood__cuda_pool_class_size(ctx->live[i].bytes);
    memset(ptr, 0xff, ctx->live[i].bytes); /* a use after free reads NaN even without ASan */
    free(ptr);
    memmove(ctx->live + i, ctx->live + i + 1, (ctx->n_live - i - 1) * sizeof *ctx->live);
    ctx->n_live--;
    ctx->stats.in_use -= size;
    /* no room to remember it: the real pool then gives the block back, which is what this is */
    if (mood_array_reserve(&ctx->cached, &ctx->cap_cached, ctx->n_cached, sizeof(size_t), 256) ==
        0) {
        ctx->cached[ctx->n_cached++] = size;
        ctx->stats.cached += size;
    }
}

void mood_cuda_pool_stats_get(mood_cuda_ctx *ctx, mood_cuda_pool_stats *out)
{
    if (ctx)
        *out = ctx->stats;
    else
        memset(out, 0, sizeof *out);
}

int mood_cuda_pool_trim(mood_cuda_ctx *ctx)
{
    if (!ctx)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_pool_trim: no context");
    ctx->n_cached = 0;
    ctx->stats.cached = 0;
    return 0;
}

/* ----- argument checks --------------------------------------------------------------------- */

/* A tensor argument of an op: its name, where it starts, how many bytes the op touches. */
typedef struct emu_arg {
    const char *name;
    const void *p;
    size_t bytes;
} emu_arg;

#define ARG(p, bytes) ((emu_arg){#p, (p), (bytes)})
#define F32(n)        ((size_t)(n) * sizeof(float))

/* 0 when every non-NULL argument lies inside one live block; MOOD_EINVAL naming the op and the
 * argument otherwise. */
static int check_args(const mood_cuda_ctx *ctx, const char *op, const emu_arg *a, size_t n)
{
    if (!ctx)
        return mood_error_set(MOOD_EINVAL, "%s: no context", op);
    for (size_t i = 0; i < n; i++) {
        uintptr_t p = (uintptr_t)a[i].p;
        size_t b;
        if (!a[i].p)
            continue;
        b = block_at(ctx, p);
        if (b == ctx->n_live || p - ctx->live[b].base > ctx->live[b].bytes ||
            a[i].bytes > ctx->live[b].bytes - (p - ctx->live[b].base))
            return mood_error_set(MOOD_EINVAL,
                                  "cuda emulation: %s: %s (%p, %zu bytes) is not inside a live "
                                  "device block",
                                  op, a[i].name, a[i].p, a[i].bytes);
    }
    return 0;
}

/* Returns from the op unless its tensors are all on the device. */
#define CHECK_ARGS(ctx, ...)                                                                       \
    do {                                                                                           \
        const emu_arg args_[] = {__VA_ARGS__};                                                     \
        int check_err_ = check_args(ctx, __func__, args_, sizeof args_ / sizeof args_[0]);         \
        if (check_err_)                                                                            \
            return check_err_;                                                                     \
    } while (0)

static int unsupported(const char *op)
{
    return mood_error_set(MOOD_EUNSUPPORTED,
                          "cuda emulation: %s is not emulated (engine/cuda/unet_cuda*.c does not "
                          "call it; add it to tests/cuda_emu/cuda_ops_emu.c)",
                          op);
}

int mood_cuda_upload(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    if (!bytes)
        return 0;
    CHECK_ARGS(ctx, ARG(dst, bytes));
    memcpy(dst, src, bytes);
    return 0;
}

int mood_cuda_download(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    if (!bytes)
        return 0;
    CHECK_ARGS(ctx, ARG(src, bytes));
    memcpy(dst, src, bytes);
    return 0;
}

int mood_cuda_memset0(mood_cuda_ctx *ctx, void *dst, size_t bytes)
{
    if (!bytes)
        return 0;
    CHECK_ARGS(ctx, ARG(dst, bytes));
    memset(dst, 0, bytes);
    return 0;
}

int mood_cuda_copy(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    if (!bytes)
        return 0;
    CHECK_ARGS(ctx, ARG(dst, bytes), ARG(src, bytes));
    memmove(dst, src, bytes);
    return 0;
}

/* ----- CUDA graphs: not emulated ----------------------------------------------------------- */

/* Recording would need every op below to be queued instead of run; without graphs the UNet's
 * inference forward falls back to running its pass (what these tests then check). */
int mood_cuda_graph_new(mood_cuda_ctx *ctx, mood_cuda_graph **out)
{
    (void)ctx;
    if (out)
        *out = NULL;
    return unsupported(__func__);
}

int mood_cuda_graph_capture(mood_cuda_graph *g)
{
    (void)g;
    return unsupported(__func__);
}

int mood_cuda_graph_finish(mood_cuda_graph *g, int rc)
{
    (void)g;
    return rc < 0 ? rc : unsupported(__func__);
}

int mood_cuda_graph_launch(mood_cuda_graph *g)
{
    (void)g;
    return unsupported(__func__);
}

int mood_cuda_graph_stale(const mood_cuda_graph *g)
{
    (void)g;
    return 0;
}

size_t mood_cuda_graph_bytes(const mood_cuda_graph *g)
{
    (void)g;
    return 0;
}

void mood_cuda_graph_free(mood_cuda_graph *g)
{
    (void)g;
}

/* ----- 16-bit glue ------------------------------------------------------------------------- */

static int dtype_check(const char *op, mood_cuda_dtype dt)
{
    if (dt == MOOD_CUDA_F32 || dt == MOOD_CUDA_BF16 || dt == MOOD_CUDA_F16)
        return 0;
    return mood_error_set(MOOD_EINVAL, "%s: unknown dtype %d", op, (int)dt);
}

static size_t dt_bytes(mood_cuda_dtype dt, size_t n)
{
    return n * (dt == MOOD_CUDA_F32 ? 4 : 2);
}

static mood_dtype st_dtype(mood_cuda_dtype dt)
{
    return dt == MOOD_CUDA_BF16  ? MOOD_DTYPE_BF16
           : dt == MOOD_CUDA_F16 ? MOOD_DTYPE_F16
                                 : MOOD_DTYPE_F32;
}

/* A float32 copy of n elements of dt (NULL: out of memory). */
static float *widen(const void *p, size_t n, mood_cuda_dtype dt)
{
    float *f = mood_malloc(F32(n ? n : 1));
    if (f)
        mood_dtype_to_f32(f, p, st_dtype(dt), n);
    return f;
}

/* A float32 scratch buffer of n floats (at least one). */
static float *scratch(size_t n)
{
    return mood_malloc(F32(n ? n : 1));
}

int mood_cuda_op_convert(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                         mood_cuda_dtype in_dt, size_t n)
{
    float *tmp;
    if (dtype_check(__func__, out_dt) || dtype_check(__func__, in_dt))
        return MOOD_EINVAL;
    CHECK_ARGS(ctx, ARG(out, dt_bytes(out_dt, n)), ARG(inp, dt_bytes(in_dt, n)));
    if (out_dt == in_dt) {
        memmove(out, inp, dt_bytes(in_dt, n));
        return 0;
    }
    if (in_dt == MOOD_CUDA_F32)
        return mood_dtype_from_f32(out, inp, st_dtype(out_dt), n);
    if (!(tmp = widen(inp, n, in_dt)))
        return mood_error_nomem();
    mood_dtype_from_f32(out, tmp, st_dtype(out_dt), n);
    mood_free(tmp);
    return 0;
}

/* ----- forward ----------------------------------------------------------------------------- */

static void linear_f32(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                       const float *bias, size_t N, int IC, int OC)
{
    mood_op_linear(out, inp, w, bias, N, IC, OC);
    noise(ctx, out, N * (size_t)OC);
}

int mood_cuda_op_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, size_t N, int IC, int OC)
{
    CHECK_ARGS(ctx, ARG(out, F32(N * OC)), ARG(inp, F32(N * IC)), ARG(w, F32((size_t)OC * IC)),
               ARG(bias, F32(OC)));
    linear_f32(ctx, out, inp, w, bias, N, IC, OC);
    return 0;
}

int mood_cuda_op_linear_ex(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                           const void *w, mood_cuda_dtype in_dt, const float *bias, size_t N,
                           int IC, int OC)
{
    float *x, *wf, *y;
    int err = 0;
    if (dtype_check(__func__, out_dt) || dtype_check(__func__, in_dt))
        return MOOD_EINVAL;
    CHECK_ARGS(ctx, ARG(out, dt_bytes(out_dt, N * OC)), ARG(inp, dt_bytes(in_dt, N * IC)),
               ARG(w, dt_bytes(in_dt, (size_t)OC * IC)), ARG(bias, F32(OC)));
    x = widen(inp, N * IC, in_dt), wf = widen(w, (size_t)OC * IC, in_dt), y = scratch(N * OC);
    if (!x || !wf || !y)
        err = mood_error_nomem();
    else
        linear_f32(ctx, y, x, wf, bias, N, IC, OC);
    if (!err)
        err = mood_dtype_from_f32(out, y, st_dtype(out_dt), N * OC);
    mood_free(x), mood_free(wf), mood_free(y);
    return err;
}

static size_t conv_in(const mood_conv2d_dims *d)
{
    return (size_t)d->batch * d->in_c * d->h * d->w;
}

static size_t conv_w(const mood_conv2d_dims *d)
{
    return (size_t)d->out_c * d->in_c * d->k * d->k;
}

static size_t conv_out(const mood_conv2d_dims *d)
{
    return (size_t)d->batch * d->out_c * mood_op_conv2d_out_h(d) * mood_op_conv2d_out_w(d);
}

static int conv_f32(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                    const float *bias, const mood_conv2d_dims *d)
{
    float *sc = scratch(mood_op_conv2d_scratch(d));
    if (!sc)
        return mood_error_nomem();
    mood_op_conv2d(out, inp, w, bias, d, sc);
    noise(ctx, out, conv_out(d));
    mood_free(sc);
    return 0;
}

int mood_cuda_op_conv2d(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, const mood_conv2d_dims *d)
{
    CHECK_ARGS(ctx, ARG(out, F32(conv_out(d))), ARG(inp, F32(conv_in(d))), ARG(w, F32(conv_w(d))),
               ARG(bias, F32(d->out_c)));
    return conv_f32(ctx, out, inp, w, bias, d);
}

int mood_cuda_op_conv2d_ex(mood_cuda_ctx *ctx, void *out, const void *inp, const void *w,
                           mood_cuda_dtype dt, const float *bias, const mood_conv2d_dims *d)
{
    float *x, *wf, *y;
    int err;
    if (dtype_check(__func__, dt))
        return MOOD_EINVAL;
    CHECK_ARGS(ctx, ARG(out, dt_bytes(dt, conv_out(d))), ARG(inp, dt_bytes(dt, conv_in(d))),
               ARG(w, dt_bytes(dt, conv_w(d))), ARG(bias, F32(d->out_c)));
    x = widen(inp, conv_in(d), dt), wf = widen(w, conv_w(d), dt), y = scratch(conv_out(d));
    err = x && wf && y ? conv_f32(ctx, y, x, wf, bias, d) : mood_error_nomem();
    if (!err)
        err = mood_dtype_from_f32(out, y, st_dtype(dt), conv_out(d));
    mood_free(x), mood_free(wf), mood_free(y);
    return err;
}

int mood_cuda_op_group_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, int B, int C, size_t HW, int groups, float eps,
                            float *mean_out, float *rstd_out)
{
    size_t n = (size_t)B * C * HW;
    CHECK_ARGS(ctx, ARG(out, F32(n)), ARG(inp, F32(n)), ARG(w, F32(C)), ARG(b, F32(C)),
               ARG(mean_out, F32(B * groups)), ARG(rstd_out, F32(B * groups)));
    mood_op_group_norm(out, inp, w, b, B, C, HW, groups, eps, mean_out, rstd_out);
    noise(ctx, out, n);
    return 0;
}

int mood_cuda_op_layer_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, size_t N, int C, float eps, float *mean_out,
                            float *rstd_out)
{
    CHECK_ARGS(ctx, ARG(out, F32(N * C)), ARG(inp, F32(N * C)), ARG(w, F32(C)), ARG(b, F32(C)),
               ARG(mean_out, F32(N)), ARG(rstd_out, F32(N)));
    mood_op_layer_norm(out, inp, w, b, N, C, eps, mean_out, rstd_out);
    noise(ctx, out, N * (size_t)C);
    return 0;
}

int mood_cuda_op_silu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    CHECK_ARGS(ctx, ARG(out, F32(n)), ARG(inp, F32(n)));
    mood_op_silu(out, inp, n);
    return 0;
}

int mood_cuda_op_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    (void)ctx, (void)out, (void)inp, (void)n;
    return unsupported(__func__);
}

int mood_cuda_op_quick_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    (void)ctx, (void)out, (void)inp, (void)n;
    return unsupported(__func__);
}

int mood_cuda_op_geglu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t N, int F)
{
    CHECK_ARGS(ctx, ARG(out, F32(N * F)), ARG(inp, F32(2 * N * F)));
    mood_op_geglu(out, inp, N, F);
    return 0;
}

int mood_cuda_op_add_inplace(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    CHECK_ARGS(ctx, ARG(out, F32(n)), ARG(inp, F32(n)));
    mood_op_add_inplace(out, inp, n);
    return 0;
}

int mood_cuda_op_add(mood_cuda_ctx *ctx, float *out, const float *a, const float *b, size_t n)
{
    CHECK_ARGS(ctx, ARG(out, F32(n)), ARG(a, F32(n)), ARG(b, F32(n)));
    mood_op_add(out, a, b, n);
    return 0;
}

/* The CPU divides in place inside the resnet forward (engine/unet_forward.c); no function to
 * call, so the same one division per element here. */
int mood_cuda_op_div_scalar(mood_cuda_ctx *ctx, float *x, float d, size_t n)
{
    CHECK_ARGS(ctx, ARG(x, F32(n)));
    for (size_t i = 0; i < n; i++)
        x[i] /= d;
    return 0;
}

int mood_cuda_op_axpy(mood_cuda_ctx *ctx, float *y, const float *x, float a, size_t n)
{
    CHECK_ARGS(ctx, ARG(y, F32(n)), ARG(x, F32(n)));
    axpy(y, x, a, n);
    return 0;
}

int mood_cuda_op_add_channel_bias(mood_cuda_ctx *ctx, float *x, const float *v, int B, int C,
                                  size_t HW)
{
    CHECK_ARGS(ctx, ARG(x, F32((size_t)B * C * HW)), ARG(v, F32(B * C)));
    mood_op_add_channel_bias(x, v, B, C, HW);
    return 0;
}

static int attention_f32(mood_cuda_ctx *ctx, float *out, const float *q, const float *k,
                         const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                         float scale)
{
    float *sc = scratch(mood_op_attention_scratch(Tq, Tk));
    if (!sc)
        return mood_error_nomem();
    mood_op_attention(out, q, k, v, B, H, Tq, Tk, D, causal, scale, sc);
    noise(ctx, out, (size_t)B * Tq * H * D);
    mood_free(sc);
    return 0;
}

int mood_cuda_op_attention(mood_cuda_ctx *ctx, float *out, const float *q, const float *k,
                           const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                           float scale)
{
    size_t nq = (size_t)B * Tq * H * D, nk = (size_t)B * Tk * H * D;
    CHECK_ARGS(ctx, ARG(out, F32(nq)), ARG(q, F32(nq)), ARG(k, F32(nk)), ARG(v, F32(nk)));
    return attention_f32(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
}

int mood_cuda_op_attention_ex(mood_cuda_ctx *ctx, void *out, const void *q, const void *k,
                              const void *v, mood_cuda_dtype dt, int B, int H, int Tq, int Tk,
                              int D, int causal, float scale)
{
    size_t nq = (size_t)B * Tq * H * D, nk = (size_t)B * Tk * H * D;
    float *fq, *fk, *fv, *fo;
    int err;
    if (dtype_check(__func__, dt))
        return MOOD_EINVAL;
    CHECK_ARGS(ctx, ARG(out, dt_bytes(dt, nq)), ARG(q, dt_bytes(dt, nq)), ARG(k, dt_bytes(dt, nk)),
               ARG(v, dt_bytes(dt, nk)));
    fq = widen(q, nq, dt), fk = widen(k, nk, dt), fv = widen(v, nk, dt), fo = scratch(nq);
    err = fq && fk && fv && fo ? attention_f32(ctx, fo, fq, fk, fv, B, H, Tq, Tk, D, causal, scale)
                               : mood_error_nomem();
    if (!err)
        err = mood_dtype_from_f32(out, fo, st_dtype(dt), nq);
    mood_free(fq), mood_free(fk), mood_free(fv), mood_free(fo);
    return err;
}

int mood_cuda_op_nchw_to_nhwc(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW)
{
    CHECK_ARGS(ctx, ARG(out, F32((size_t)B * C * HW)), ARG(inp, F32((size_t)B * C * HW)));
    mood_op_nchw_to_nhwc(out, inp, B, C, HW);
    return 0;
}

int mood_cuda_op_nhwc_to_nchw(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW)
{
    CHECK_ARGS(ctx, ARG(out, F32((size_t)B * C * HW)), ARG(inp, F32((size_t)B * C * HW)));
    mood_op_nhwc_to_nchw(out, inp, B, C, HW);
    return 0;
}

int mood_cuda_op_upsample_nearest2x(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                    int W)
{
    CHECK_ARGS(ctx, ARG(out, F32((size_t)4 * BC * H * W)), ARG(inp, F32((size_t)BC * H * W)));
    mood_op_upsample_nearest2x(out, inp, BC, H, W);
    return 0;
}

int mood_cuda_op_upsample_nearest(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                  int W, int OH, int OW)
{
    CHECK_ARGS(ctx, ARG(out, F32((size_t)BC * OH * OW)), ARG(inp, F32((size_t)BC * H * W)));
    mood__unet_upsample(out, inp, BC, H, W, OH, OW);
    return 0;
}

int mood_cuda_op_timestep_embedding(mood_cuda_ctx *ctx, float *out, const float *t, int B, int dim,
                                    int flip_sin_to_cos, float shift, float max_period)
{
    CHECK_ARGS(ctx, ARG(out, F32((size_t)B * dim)), ARG(t, F32(B)));
    mood_op_timestep_embedding(out, t, B, dim, flip_sin_to_cos, shift, max_period);
    return 0;
}

int mood_cuda_op_concat_channels(mood_cuda_ctx *ctx, float *out, const float *a, int Ca,
                                 const float *b, int Cb, int B, size_t HW)
{
    CHECK_ARGS(ctx, ARG(out, F32((size_t)B * (Ca + Cb) * HW)), ARG(a, F32((size_t)B * Ca * HW)),
               ARG(b, F32((size_t)B * Cb * HW)));
    mood_op_concat_channels(out, a, Ca, b, Cb, B, HW);
    return 0;
}

int mood_cuda_op_lora_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *down,
                             const float *up, int rank, float scale, size_t N, int IC, int OC)
{
    float *tmp;
    CHECK_ARGS(ctx, ARG(out, F32(N * OC)), ARG(inp, F32(N * IC)), ARG(down, F32((size_t)rank * IC)),
               ARG(up, F32((size_t)OC * rank)));
    if (!(tmp = scratch(N * rank)))
        return mood_error_nomem();
    mood_op_lora_linear(out, inp, down, up, rank, scale, N, IC, OC, tmp);
    noise(ctx, out, N * (size_t)OC);
    mood_free(tmp);
    return 0;
}

/* ----- backward ---------------------------------------------------------------------------- */

int mood_cuda_op_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w, size_t N,
                                 int IC, int OC)
{
    CHECK_ARGS(ctx, ARG(dinp, F32(N * IC)), ARG(dw, F32((size_t)OC * IC)), ARG(dbias, F32(OC)),
               ARG(dout, F32(N * OC)), ARG(inp, F32(N * IC)), ARG(w, F32((size_t)OC * IC)));
    mood_op_linear_backward(dinp, dw, dbias, dout, inp, w, N, IC, OC);
    noise(ctx, dinp, N * (size_t)IC);
    noise(ctx, dw, (size_t)OC * IC);
    return 0;
}

int mood_cuda_op_conv2d_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w,
                                 const mood_conv2d_dims *d)
{
    float *sc;
    CHECK_ARGS(ctx, ARG(dinp, F32(conv_in(d))), ARG(dw, F32(conv_w(d))), ARG(dbias, F32(d->out_c)),
               ARG(dout, F32(conv_out(d))), ARG(inp, F32(conv_in(d))), ARG(w, F32(conv_w(d))));
    if (!(sc = scratch(mood_op_conv2d_backward_scratch(d))))
        return mood_error_nomem();
    mood_op_conv2d_backward(dinp, dw, dbias, dout, inp, w, d, sc);
    noise(ctx, dinp, conv_in(d));
    noise(ctx, dw, conv_w(d));
    mood_free(sc);
    return 0;
}

/* n floats of x rounded to dt and back (NULL: out of memory): what a product reads of an fp32
 * tensor converted to dt first. */
static float *rounded(const float *x, size_t n, mood_cuda_dtype dt)
{
    void *h = mood_malloc(dt_bytes(dt, n ? n : 1));
    float *f = NULL;
    if (h && mood_dtype_from_f32(h, x, st_dtype(dt), n) == 0)
        f = widen(h, n, dt);
    mood_free(h);
    return f;
}

int mood_cuda_op_linear_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, size_t N, int IC, int OC)
{
    float *d16, *wf;
    if (dt != MOOD_CUDA_BF16 && dt != MOOD_CUDA_F16)
        return mood_error_set(MOOD_EINVAL, "%s: weights of dtype %d", __func__, (int)dt);
    CHECK_ARGS(ctx, ARG(dinp, F32(N * IC)), ARG(dout, F32(N * OC)),
               ARG(w, dt_bytes(dt, (size_t)OC * IC)));
    if (!dinp)
        return 0;
    d16 = rounded(dout, N * OC, dt), wf = widen(w, (size_t)OC * IC, dt);
    if (d16 && wf)
        mood_op_linear_backward(dinp, NULL, NULL, d16, NULL, wf, N, IC, OC);
    mood_free(d16), mood_free(wf);
    if (!d16 || !wf)
        return mood_error_nomem();
    noise(ctx, dinp, N * (size_t)IC);
    return 0;
}

int mood_cuda_op_conv2d_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, const mood_conv2d_dims *d)
{
    float *d16, *wf, *dx, *dx16 = NULL, *sc;
    int err = 0;
    if (dt != MOOD_CUDA_BF16 && dt != MOOD_CUDA_F16)
        return mood_error_set(MOOD_EINVAL, "%s: weights of dtype %d", __func__, (int)dt);
    CHECK_ARGS(ctx, ARG(dinp, F32(conv_in(d))), ARG(dout, F32(conv_out(d))),
               ARG(w, dt_bytes(dt, conv_w(d))));
    if (!dinp)
        return 0;
    d16 = rounded(dout, conv_out(d), dt), wf = widen(w, conv_w(d), dt);
    dx = mood_calloc(conv_in(d) ? conv_in(d) : 1, sizeof *dx);
    sc = scratch(mood_op_conv2d_backward_scratch(d));
    if (!d16 || !wf || !dx || !sc)
        err = mood_error_nomem();
    else {
        mood_op_conv2d_backward(dx, NULL, NULL, d16, NULL, wf, d, sc);
        noise(ctx, dx, conv_in(d));
        if (!(dx16 = rounded(dx, conv_in(d), dt))) /* cuDNN's output, in dt */
            err = mood_error_nomem();
        else
            mood_op_add_inplace(dinp, dx16, conv_in(d));
    }
    mood_free(d16), mood_free(wf), mood_free(dx), mood_free(dx16), mood_free(sc);
    return err;
}

int mood_cuda_op_group_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, int B, int C, size_t HW,
                                     int groups)
{
    size_t n = (size_t)B * C * HW;
    CHECK_ARGS(ctx, ARG(dinp, F32(n)), ARG(dw, F32(C)), ARG(db, F32(C)), ARG(dout, F32(n)),
               ARG(inp, F32(n)), ARG(w, F32(C)), ARG(mean, F32(B * groups)),
               ARG(rstd, F32(B * groups)));
    mood_op_group_norm_backward(dinp, dw, db, dout, inp, w, mean, rstd, B, C, HW, groups);
    noise(ctx, dinp, n);
    return 0;
}

int mood_cuda_op_layer_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, size_t N, int C)
{
    CHECK_ARGS(ctx, ARG(dinp, F32(N * C)), ARG(dw, F32(C)), ARG(db, F32(C)), ARG(dout, F32(N * C)),
               ARG(inp, F32(N * C)), ARG(w, F32(C)), ARG(mean, F32(N)), ARG(rstd, F32(N)));
    mood_op_layer_norm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    noise(ctx, dinp, N * (size_t)C);
    return 0;
}

int mood_cuda_op_silu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n)
{
    CHECK_ARGS(ctx, ARG(dinp, F32(n)), ARG(dout, F32(n)), ARG(inp, F32(n)));
    mood_op_silu_backward(dinp, dout, inp, n);
    return 0;
}

int mood_cuda_op_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n)
{
    (void)ctx, (void)dinp, (void)dout, (void)inp, (void)n;
    return unsupported(__func__);
}

int mood_cuda_op_quick_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                     const float *inp, size_t n)
{
    (void)ctx, (void)dinp, (void)dout, (void)inp, (void)n;
    return unsupported(__func__);
}

int mood_cuda_op_geglu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                const float *inp, size_t N, int F)
{
    CHECK_ARGS(ctx, ARG(dinp, F32(2 * N * F)), ARG(dout, F32(N * F)), ARG(inp, F32(2 * N * F)));
    mood_op_geglu_backward(dinp, dout, inp, N, F);
    return 0;
}

int mood_cuda_op_attention_backward(mood_cuda_ctx *ctx, float *dq, float *dk, float *dv,
                                    const float *dout, const float *q, const float *k,
                                    const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                                    float scale)
{
    size_t nq = (size_t)B * Tq * H * D, nk = (size_t)B * Tk * H * D;
    float *sc;
    CHECK_ARGS(ctx, ARG(dq, F32(nq)), ARG(dk, F32(nk)), ARG(dv, F32(nk)), ARG(dout, F32(nq)),
               ARG(q, F32(nq)), ARG(k, F32(nk)), ARG(v, F32(nk)));
    if (!(sc = scratch(mood_op_attention_backward_scratch(Tq, Tk))))
        return mood_error_nomem();
    mood_op_attention_backward(dq, dk, dv, dout, q, k, v, B, H, Tq, Tk, D, causal, scale, sc);
    noise(ctx, dq, nq);
    noise(ctx, dk, nk);
    noise(ctx, dv, nk);
    mood_free(sc);
    return 0;
}

int mood_cuda_op_upsample_nearest2x_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                             int BC, int H, int W)
{
    CHECK_ARGS(ctx, ARG(dinp, F32((size_t)BC * H * W)), ARG(dout, F32((size_t)4 * BC * H * W)));
    mood_op_upsample_nearest2x_backward(dinp, dout, BC, H, W);
    return 0;
}

int mood_cuda_op_upsample_nearest_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                           int BC, int H, int W, int OH, int OW)
{
    CHECK_ARGS(ctx, ARG(dinp, F32((size_t)BC * H * W)), ARG(dout, F32((size_t)BC * OH * OW)));
    mood__unet_upsample_backward(dinp, dout, BC, H, W, OH, OW);
    return 0;
}

int mood_cuda_op_add_channel_bias_backward(mood_cuda_ctx *ctx, float *dv, const float *dout, int B,
                                           int C, size_t HW)
{
    CHECK_ARGS(ctx, ARG(dv, F32(B * C)), ARG(dout, F32((size_t)B * C * HW)));
    mood_op_add_channel_bias_backward(dv, dout, B, C, HW);
    return 0;
}

int mood_cuda_op_nchw_to_nhwc_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW)
{
    (void)ctx, (void)dinp, (void)dout, (void)B, (void)C, (void)HW;
    return unsupported(__func__);
}

int mood_cuda_op_nhwc_to_nchw_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW)
{
    (void)ctx, (void)dinp, (void)dout, (void)B, (void)C, (void)HW;
    return unsupported(__func__);
}

int mood_cuda_op_concat_channels_backward(mood_cuda_ctx *ctx, float *da, float *db,
                                          const float *dout, int Ca, int Cb, int B, size_t HW)
{
    CHECK_ARGS(ctx, ARG(da, F32((size_t)B * Ca * HW)), ARG(db, F32((size_t)B * Cb * HW)),
               ARG(dout, F32((size_t)B * (Ca + Cb) * HW)));
    mood_op_concat_channels_backward(da, db, dout, Ca, Cb, B, HW);
    return 0;
}

int mood_cuda_op_lora_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *ddown, float *dup,
                                      const float *dout, const float *inp, const float *down,
                                      const float *up, int rank, float scale, size_t N, int IC,
                                      int OC)
{
    float *tmp, *dtmp;
    int err = 0;
    CHECK_ARGS(ctx, ARG(dinp, F32(N * IC)), ARG(ddown, F32((size_t)rank * IC)),
               ARG(dup, F32((size_t)OC * rank)), ARG(dout, F32(N * OC)), ARG(inp, F32(N * IC)),
               ARG(down, F32((size_t)rank * IC)), ARG(up, F32((size_t)OC * rank)));
    tmp = scratch(N * rank), dtmp = scratch(N * rank);
    if (tmp && dtmp) {
        mood_op_lora_linear_backward(dinp, ddown, dup, dout, inp, down, up, rank, scale, N, IC, OC,
                                     tmp, dtmp);
        noise(ctx, dinp, N * (size_t)IC);
        noise(ctx, ddown, (size_t)rank * IC);
        noise(ctx, dup, (size_t)OC * rank);
    } else {
        err = mood_error_nomem();
    }
    mood_free(tmp), mood_free(dtmp);
    return err;
}

/* ----- not used by the orchestration, test hooks ------------------------------------------- */

int mood_cuda_op_lora_merge(mood_cuda_ctx *ctx, float *w, const float *up, const float *down,
                            int rows, int rank, size_t cols, float scale)
{
    (void)ctx, (void)w, (void)up, (void)down, (void)rows, (void)rank, (void)cols, (void)scale;
    return unsupported(__func__);
}

/* The settings are kept and returned, but the CPU runs one attention whatever they say. */
int mood__cuda_attention_path(mood_cuda_ctx *ctx, int which)
{
    int old = ctx ? ctx->attn_path : 0;
    if (ctx)
        ctx->attn_path = which;
    return old;
}

size_t mood__cuda_attention_budget(mood_cuda_ctx *ctx, size_t bytes)
{
    size_t old = ctx ? ctx->attn_mem : 0;
    if (ctx)
        ctx->attn_mem = bytes;
    return old;
}
