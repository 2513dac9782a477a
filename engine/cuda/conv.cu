/*
 * conv.cu: 2-D convolution on the GPU through cuDNN (NCHW, zero padding, square kernel, cross-
 * correlation as torch.nn.functional.conv2d), forward and the three gradients, mirroring
 * mood_op_conv2d and mood_op_conv2d_backward (engine/cpu/ops.h).
 *
 * Algorithms come from cuDNN's heuristics (the _v7 queries, no benchmarking), restricted to the
 * deterministic ones, and are cached per shape and type in the context. fp32 convolutions run in
 * true fp32 (CUDNN_FMA_MATH: cuDNN would otherwise use TF32 on Ampere and later) unless the
 * context allows TF32; bf16/fp16 ones accumulate in fp32 on the tensor cores. The bias and its
 * gradient are our own kernels (a channel broadcast, a fixed-order channel sum).
 */
#include <string.h>

#include "engine/cuda/cuda_internal.h"

#define THREADS 256
/* Algorithms needing more workspace than this are passed over. */
#define CONV_MAX_WORKSPACE ((size_t)2 << 30)

/* cuDNN's descriptors of one convolution, destroyed with the object. */
struct conv_desc {
    cudnnTensorDescriptor_t x = NULL, y = NULL;
    cudnnFilterDescriptor_t w = NULL;
    cudnnConvolutionDescriptor_t conv = NULL;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
    ~conv_desc()
    {
        if (conv)
            cudnnDestroyConvolutionDescriptor(conv);
        if (w)
            cudnnDestroyFilterDescriptor(w);
        if (y)
            cudnnDestroyTensorDescriptor(y);
        if (x)
            cudnnDestroyTensorDescriptor(x);
    }
};

static int check_dims(const mood_conv2d_dims *d, const char *fn)
{
    if (!d || d->batch < 0 || d->in_c < 0 || d->h < 0 || d->w < 0 || d->out_c < 0 || d->k <= 0 ||
        d->stride <= 0 || d->pad < 0)
        return mood_error_set(MOOD_EINVAL, "%s: bad convolution sizes", fn);
    return 0;
}

/* Nothing to compute: no output position, sample or channel. */
static int conv_empty(const mood_conv2d_dims *d)
{
    return mood_op_conv2d_out_h(d) <= 0 || mood_op_conv2d_out_w(d) <= 0 || d->batch == 0 ||
           d->out_c == 0 || d->in_c == 0;
}

/* An output to write but no input channel: only the bias contributes (and gets a gradient). */
static int bias_only(const mood_conv2d_dims *d)
{
    return d->in_c == 0 && mood_op_conv2d_out_h(d) > 0 && mood_op_conv2d_out_w(d) > 0 &&
           d->batch > 0 && d->out_c > 0;
}

static int conv_setup(const mood_cuda_ctx *ctx, conv_desc *c, const mood_conv2d_dims *d,
                      mood_cuda_dtype dt)
{
    cudnnDataType_t t = dt == MOOD_CUDA_F32    ? CUDNN_DATA_FLOAT
                        : dt == MOOD_CUDA_BF16 ? CUDNN_DATA_BFLOAT16
                                               : CUDNN_DATA_HALF;
    CUDNN_TRY(cudnnCreateTensorDescriptor(&c->x));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&c->y));
    CUDNN_TRY(cudnnCreateFilterDescriptor(&c->w));
    CUDNN_TRY(cudnnCreateConvolutionDescriptor(&c->conv));
    CUDNN_TRY(
        cudnnSetTensor4dDescriptor(c->x, CUDNN_TENSOR_NCHW, t, d->batch, d->in_c, d->h, d->w));
    CUDNN_TRY(cudnnSetTensor4dDescriptor(c->y, CUDNN_TENSOR_NCHW, t, d->batch, d->out_c,
                                         mood_op_conv2d_out_h(d), mood_op_conv2d_out_w(d)));
    CUDNN_TRY(
        cudnnSetFilter4dDescriptor(c->w, t, CUDNN_TENSOR_NCHW, d->out_c, d->in_c, d->k, d->k));
    CUDNN_TRY(cudnnSetConvolution2dDescriptor(c->conv, d->pad, d->pad, d->stride, d->stride, 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    c->math = dt != MOOD_CUDA_F32 ? CUDNN_TENSOR_OP_MATH
              : ctx->allow_tf32   ? CUDNN_DEFAULT_MATH
                                  : CUDNN_FMA_MATH;
    CUDNN_TRY(cudnnSetConvolutionMathType(c->conv, c->math));
    return 0;
}

/* The cache entry of (d, dt), a fresh one (evicting round-robin) when there is none. */
static conv_algos *conv_cache_entry(mood_cuda_ctx *ctx, const mood_conv2d_dims *d,
                                    mood_cuda_dtype dt)
{
    for (int i = 0; i < MOOD_CUDA_CONV_CACHE; i++) {
        conv_algos *e = &ctx->conv_cache[i];
        if (e->valid && e->dtype == (int)dt && memcmp(&e->d, d, sizeof *d) == 0)
            return e;
    }
    conv_algos *e = &ctx->conv_cache[ctx->conv_next];
    ctx->conv_next = (ctx->conv_next + 1) % MOOD_CUDA_CONV_CACHE;
    memset(e, 0, sizeof *e);
    e->d = *d;
    e->dtype = (int)dt;
    e->fwd = (cudnnConvolutionFwdAlgo_t)-1;
    e->bwd_data = (cudnnConvolutionBwdDataAlgo_t)-1;
    e->bwd_filter = (cudnnConvolutionBwdFilterAlgo_t)-1;
    e->valid = 1;
    return e;
}

/* The first usable result of a heuristic query: succeeded, deterministic, within the workspace
 * cap; and for strict fp32, not one that needs tensor-core math. Returns its index or -1. */
template <typename Perf> static int pick_algo(const Perf *perf, int n, const conv_desc *c)
{
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].determinism != CUDNN_DETERMINISTIC ||
            perf[i].memory > CONV_MAX_WORKSPACE)
            continue;
        if (c->math == CUDNN_FMA_MATH && perf[i].mathType != CUDNN_FMA_MATH &&
            perf[i].mathType != CUDNN_DEFAULT_MATH)
            continue;
        return i;
    }
    return -1;
}

static int no_algo(const mood_conv2d_dims *d, mood_cuda_dtype dt, const char *what)
{
    return mood_error_set(MOOD_EUNSUPPORTED,
                          "cuDNN has no deterministic %s algorithm for a %s convolution of "
                          "%dx%dx%dx%d by %dx%dx%dx%d, stride %d, padding %d",
                          what, mood__cuda_dtype_name(dt), d->batch, d->in_c, d->h, d->w, d->out_c,
                          d->in_c, d->k, d->k, d->stride, d->pad);
}

#define MAX_ALGOS 16

static int algo_fwd(mood_cuda_ctx *ctx, const conv_desc *c, conv_algos *e, mood_cuda_dtype dt)
{
    if ((int)e->fwd >= 0)
        return 0;
    cudnnConvolutionFwdAlgoPerf_t perf[MAX_ALGOS];
    int n = 0;
    CUDNN_TRY(cudnnSetConvolutionMathType(c->conv, c->math)); /* as asked, for the query */
    CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(ctx->dnn, c->x, c->w, c->conv, c->y, MAX_ALGOS,
                                                     &n, perf));
    int i = pick_algo(perf, n, c);
    if (i < 0)
        return no_algo(&e->d, dt, "forward");
    e->fwd = perf[i].algo;
    e->fwd_ws = perf[i].memory;
    e->fwd_math = perf[i].mathType;
    return 0;
}

static int algo_bwd_data(mood_cuda_ctx *ctx, const conv_desc *c, conv_algos *e, mood_cuda_dtype dt)
{
    if ((int)e->bwd_data >= 0)
        return 0;
    cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_ALGOS];
    int n = 0;
    CUDNN_TRY(cudnnSetConvolutionMathType(c->conv, c->math)); /* as asked, for the query */
    CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx->dnn, c->w, c->y, c->conv, c->x,
                                                          MAX_ALGOS, &n, perf));
    int i = pick_algo(perf, n, c);
    if (i < 0)
        return no_algo(&e->d, dt, "backward-data");
    e->bwd_data = perf[i].algo;
    e->bwd_data_ws = perf[i].memory;
    e->bwd_data_math = perf[i].mathType;
    return 0;
}

static int algo_bwd_filter(mood_cuda_ctx *ctx, const conv_desc *c, conv_algos *e,
                           mood_cuda_dtype dt)
{
    if ((int)e->bwd_filter >= 0)
        return 0;
    cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_ALGOS];
    int n = 0;
    CUDNN_TRY(cudnnSetConvolutionMathType(c->conv, c->math)); /* as asked, for the query */
    CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(ctx->dnn, c->x, c->y, c->conv, c->w,
                                                            MAX_ALGOS, &n, perf));
    int i = pick_algo(perf, n, c);
    if (i < 0)
        return no_algo(&e->d, dt, "backward-filter");
    e->bwd_filter = perf[i].algo;
    e->bwd_filter_ws = perf[i].memory;
    e->bwd_filter_math = perf[i].mathType;
    return 0;
}

/* Sets the math type an algorithm needs on the descriptor; strict fp32 stays CUDNN_FMA_MATH
 * (CUDNN_DEFAULT_MATH would let cuDNN use TF32). */
static int set_math(const conv_desc *c, cudnnMathType_t algo_math)
{
    CUDNN_TRY(
        cudnnSetConvolutionMathType(c->conv, c->math == CUDNN_FMA_MATH ? c->math : algo_math));
    return 0;
}

/* The workspace for `bytes`: the context's, or a pool block when that is too small. */
static int workspace(mood_cuda_ctx *ctx, pool_tmp *extra, size_t bytes, void **ws)
{
    *ws = ctx->workspace;
    if (bytes <= ctx->workspace_size)
        return 0;
    MOOD_TRY(extra->alloc(bytes));
    *ws = extra->ptr;
    return 0;
}

static int conv_forward(mood_cuda_ctx *ctx, void *out, const void *inp, const void *w,
                        mood_cuda_dtype dt, const float *bias, const mood_conv2d_dims *d,
                        const char *fn)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(check_dims(d, fn));
    size_t ohw = (size_t)mood_op_conv2d_out_h(d) * mood_op_conv2d_out_w(d);
    if (bias_only(d)) { /* no input channel: the output is the bias (or zeros), as on the CPU */
        MOOD_TRY(mood_cuda_memset0(ctx, out, (size_t)d->batch * d->out_c * ohw * dtype_size(dt)));
        return bias ? mood__cuda_add_nchw_bias(ctx, out, dt, bias, d->batch, d->out_c, ohw) : 0;
    }
    if (conv_empty(d))
        return 0;
    conv_desc c;
    MOOD_TRY(conv_setup(ctx, &c, d, dt));
    conv_algos *e = conv_cache_entry(ctx, d, dt);
    MOOD_TRY(algo_fwd(ctx, &c, e, dt));
    MOOD_TRY(set_math(&c, e->fwd_math));
    pool_tmp extra(ctx);
    void *ws;
    MOOD_TRY(workspace(ctx, &extra, e->fwd_ws, &ws));
    float alpha = 1.0f, beta = 0.0f;
    CUDNN_TRY(cudnnConvolutionForward(ctx->dnn, &alpha, c.x, inp, c.w, w, c.conv, e->fwd, ws,
                                      e->fwd_ws, &beta, c.y, out));
    if (!bias)
        return 0;
    return mood__cuda_add_nchw_bias(ctx, out, dt, bias, d->batch, d->out_c, ohw);
}

int mood_cuda_op_conv2d(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, const mood_conv2d_dims *d)
{
    return conv_forward(ctx, out, inp, w, MOOD_CUDA_F32, bias, d, "mood_cuda_op_conv2d");
}

int mood_cuda_op_conv2d_ex(mood_cuda_ctx *ctx, void *out, const void *inp, const void *w,
                           mood_cuda_dtype dt, const float *bias, const mood_conv2d_dims *d)
{
    return conv_forward(ctx, out, inp, w, dt, bias, d, "mood_cuda_op_conv2d_ex");
}

/* The input gradient of mood_cuda_op_conv2d_ex: dinp (fp32) += conv_backward_data(dout rounded
 * to dt, w of dt), computed by cuDNN in dt (fp32 accumulation) and rounded there once. */
int mood_cuda_op_conv2d_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, const mood_conv2d_dims *d)
{
    const char *fn = "mood_cuda_op_conv2d_backward_ex";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(check_dims(d, fn));
    if (dt != MOOD_CUDA_BF16 && dt != MOOD_CUDA_F16)
        return mood_error_set(MOOD_EINVAL, "%s: weights of %s (bf16 or fp16)", fn,
                              mood__cuda_dtype_name(dt));
    if (!dinp || conv_empty(d))
        return 0;
    size_t n_in = (size_t)d->batch * d->in_c * d->h * d->w;
    size_t n_out = (size_t)d->batch * d->out_c * mood_op_conv2d_out_h(d) * mood_op_conv2d_out_w(d);
    pool_tmp dy(ctx), dx(ctx), dxf(ctx), extra(ctx);
    MOOD_TRY(dy.alloc(n_out * dtype_size(dt)));
    MOOD_TRY(dx.alloc(n_in * dtype_size(dt)));
    MOOD_TRY(dxf.alloc(n_in * sizeof(float)));
    MOOD_TRY(mood_cuda_op_convert(ctx, dy.ptr, dt, dout, MOOD_CUDA_F32, n_out));
    conv_desc c;
    MOOD_TRY(conv_setup(ctx, &c, d, dt));
    conv_algos *e = conv_cache_entry(ctx, d, dt);
    MOOD_TRY(algo_bwd_data(ctx, &c, e, dt));
    MOOD_TRY(set_math(&c, e->bwd_data_math));
    void *ws;
    MOOD_TRY(workspace(ctx, &extra, e->bwd_data_ws, &ws));
    float alpha = 1.0f, beta = 0.0f;
    CUDNN_TRY(cudnnConvolutionBackwardData(ctx->dnn, &alpha, c.w, w, c.y, dy.ptr, c.conv,
                                           e->bwd_data, ws, e->bwd_data_ws, &beta, c.x, dx.ptr));
    MOOD_TRY(mood_cuda_op_convert(ctx, dxf.ptr, MOOD_CUDA_F32, dx.ptr, dt, n_in));
    return mood_cuda_op_add_inplace(ctx, dinp, dxf.f(), n_in);
}

/* dbias[o] += dout summed over samples and positions: one block per output channel */
__global__ void conv_bias_backward_kernel(float *dbias, const float *dout, int B, int C, size_t ohw)
{
    __shared__ double part[32];
    int o = blockIdx.x;
    double s = 0;
    for (int b = 0; b < B; b++) {
        const float *row = dout + ((size_t)b * C + o) * ohw;
        for (size_t i = threadIdx.x; i < ohw; i += blockDim.x)
            s += row[i];
    }
    for (int off = 16; off > 0; off /= 2)
        s += __shfl_down_sync(0xffffffffu, s, off);
    if (threadIdx.x % 32 == 0)
        part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (int w = 0; w < (int)blockDim.x / 32; w++)
            t += part[w];
        dbias[o] += (float)t;
    }
}

/* dbias[o] += the sum of dout's channel o. */
static int bias_backward(mood_cuda_ctx *ctx, float *dbias, const float *dout,
                         const mood_conv2d_dims *d)
{
    size_t ohw = (size_t)mood_op_conv2d_out_h(d) * mood_op_conv2d_out_w(d);
    conv_bias_backward_kernel<<<(unsigned)d->out_c, THREADS, 0, ctx->stream>>>(
        dbias, dout, d->batch, d->out_c, ohw);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_conv2d_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w,
                                 const mood_conv2d_dims *d)
{
    const char *fn = "mood_cuda_op_conv2d_backward";
    const mood_cuda_dtype dt = MOOD_CUDA_F32;
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(check_dims(d, fn));
    if (bias_only(d))
        return dbias ? bias_backward(ctx, dbias, dout, d) : 0;
    if (conv_empty(d))
        return 0;
    conv_desc c;
    MOOD_TRY(conv_setup(ctx, &c, d, dt));
    conv_algos *e = conv_cache_entry(ctx, d, dt);
    float alpha = 1.0f, beta = 1.0f; /* gradients accumulate */
    if (dinp) {
        MOOD_TRY(algo_bwd_data(ctx, &c, e, dt));
        MOOD_TRY(set_math(&c, e->bwd_data_math));
        pool_tmp extra(ctx);
        void *ws;
        MOOD_TRY(workspace(ctx, &extra, e->bwd_data_ws, &ws));
        CUDNN_TRY(cudnnConvolutionBackwardData(ctx->dnn, &alpha, c.w, w, c.y, dout, c.conv,
                                               e->bwd_data, ws, e->bwd_data_ws, &beta, c.x, dinp));
    }
    if (dw) {
        MOOD_TRY(algo_bwd_filter(ctx, &c, e, dt));
        MOOD_TRY(set_math(&c, e->bwd_filter_math));
        pool_tmp extra(ctx);
        void *ws;
        MOOD_TRY(workspace(ctx, &extra, e->bwd_filter_ws, &ws));
        CUDNN_TRY(cudnnConvolutionBackwardFilter(ctx->dnn, &alpha, c.x, inp, c.y, dout, c.conv,
                                                 e->bwd_filter, ws, e->bwd_filter_ws, &beta, c.w,
                                                 dw));
    }
    return dbias ? bias_backward(ctx, dbias, dout, d) : 0;
}
