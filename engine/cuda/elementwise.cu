/*
 * elementwise.cu: the CUDA backend's memory-bound layers and their backward passes: type
 * conversion, activations (silu, exact gelu, quick_gelu, GEGLU), additions and channel biases,
 * layout changes (NCHW <-> NHWC, nearest 2x and any-size upsampling, channel concatenation),
 * the timestep embedding, and the fixed-order column sums that bias gradients use. Mirrors
 * engine/cpu/ops.c and ops_backward.c function by function (any-size upsampling: the UNet's
 * mood__unet_upsample, its backward mood__unet_upsample_backward; the scaled
 * add: the passes' axpy, engine/unet_pass.h).
 *
 * Reductions run in a fixed order (one thread or one block per output, partial sums combined in
 * index order), so results are the same on every run.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "engine/cuda/cuda_internal.h"

#define THREADS 256

/* ----- element types ------------------------------------------------------------------------ */

__device__ __forceinline__ float to_f32(float x)
{
    return x;
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}
__device__ __forceinline__ float to_f32(__half x)
{
    return __half2float(x);
}
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x)
{
    return x;
}
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x)
{
    return __float2half_rn(x);
}

template <typename To, typename Ti> __global__ void convert_kernel(To *out, const Ti *inp, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<To>(to_f32(inp[i]));
}

template <typename To, typename Ti>
static int convert_to(mood_cuda_ctx *ctx, void *out, const void *inp, size_t n)
{
    convert_kernel<To, Ti><<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(
        static_cast<To *>(out), static_cast<const Ti *>(inp), n);
    LAUNCH_CHECK();
    return 0;
}

template <typename To>
static int convert_from(mood_cuda_ctx *ctx, void *out, const void *inp, mood_cuda_dtype in_dt,
                        size_t n)
{
    switch (in_dt) {
    case MOOD_CUDA_F32:
        return convert_to<To, float>(ctx, out, inp, n);
    case MOOD_CUDA_BF16:
        return convert_to<To, __nv_bfloat16>(ctx, out, inp, n);
    case MOOD_CUDA_F16:
        return convert_to<To, __half>(ctx, out, inp, n);
    }
    return mood_error_set(MOOD_EINVAL, "mood_cuda_op_convert: unknown input type %d", (int)in_dt);
}

int mood_cuda_op_convert(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                         mood_cuda_dtype in_dt, size_t n)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_convert"));
    if (n == 0)
        return 0;
    switch (out_dt) {
    case MOOD_CUDA_F32:
        return convert_from<float>(ctx, out, inp, in_dt, n);
    case MOOD_CUDA_BF16:
        return convert_from<__nv_bfloat16>(ctx, out, inp, in_dt, n);
    case MOOD_CUDA_F16:
        return convert_from<__half>(ctx, out, inp, in_dt, n);
    }
    return mood_error_set(MOOD_EINVAL, "mood_cuda_op_convert: unknown output type %d", (int)out_dt);
}

/* ----- biases and scaling (for gemm.cu and conv.cu) ----------------------------------------- */

/* x[i][c] += bias[c], x (N x C) */
template <typename T> __global__ void add_row_bias_kernel(T *x, const float *bias, size_t N, int C)
{
    size_t n = N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) + bias[i % C]);
}

/* x[b][c][p] += bias[c], x (B x C x HW) */
template <typename T>
__global__ void add_nchw_bias_kernel(T *x, const float *bias, size_t n, int C, size_t HW)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) + bias[(i / HW) % C]);
}

/* x[i][j] = beta x[i][j] for j < cols, rows ld apart (beta 0 writes zeros) */
template <typename T> __global__ void scale_kernel(T *x, float beta, size_t rows, int cols, int ld)
{
    size_t n = rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        T *p = x + i / cols * ld + i % cols;
        *p = from_f32<T>(beta == 0.0f ? 0.0f : beta * to_f32(*p));
    }
}

int mood__cuda_add_row_bias(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype dt, const float *bias,
                            size_t N, int C)
{
    unsigned g = grid_for(N * C, THREADS);
    if (dt == MOOD_CUDA_F32)
        add_row_bias_kernel<<<g, THREADS, 0, ctx->stream>>>((float *)out, bias, N, C);
    else if (dt == MOOD_CUDA_BF16)
        add_row_bias_kernel<<<g, THREADS, 0, ctx->stream>>>((__nv_bfloat16 *)out, bias, N, C);
    else
        add_row_bias_kernel<<<g, THREADS, 0, ctx->stream>>>((__half *)out, bias, N, C);
    LAUNCH_CHECK();
    return 0;
}

int mood__cuda_add_nchw_bias(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype dt, const float *bias,
                             int B, int C, size_t HW)
{
    size_t n = (size_t)B * C * HW;
    unsigned g = grid_for(n, THREADS);
    if (n == 0)
        return 0;
    if (dt == MOOD_CUDA_F32)
        add_nchw_bias_kernel<<<g, THREADS, 0, ctx->stream>>>((float *)out, bias, n, C, HW);
    else if (dt == MOOD_CUDA_BF16)
        add_nchw_bias_kernel<<<g, THREADS, 0, ctx->stream>>>((__nv_bfloat16 *)out, bias, n, C, HW);
    else
        add_nchw_bias_kernel<<<g, THREADS, 0, ctx->stream>>>((__half *)out, bias, n, C, HW);
    LAUNCH_CHECK();
    return 0;
}

int mood__cuda_scale(mood_cuda_ctx *ctx, void *x, mood_cuda_dtype dt, float beta, size_t rows,
                     int cols, int ld)
{
    unsigned g = grid_for(rows * cols, THREADS);
    if (rows == 0 || cols <= 0)
        return 0;
    if (dt == MOOD_CUDA_F32)
        scale_kernel<<<g, THREADS, 0, ctx->stream>>>((float *)x, beta, rows, cols, ld);
    else if (dt == MOOD_CUDA_BF16)
        scale_kernel<<<g, THREADS, 0, ctx->stream>>>((__nv_bfloat16 *)x, beta, rows, cols, ld);
    else
        scale_kernel<<<g, THREADS, 0, ctx->stream>>>((__half *)x, beta, rows, cols, ld);
    LAUNCH_CHECK();
    return 0;
}

/* ----- column sums -------------------------------------------------------------------------- */

#define COLSUM_CHUNK 256 /* rows per partial sum */

/* part[chunk][j] = sum of x[i][j] over the chunk's rows, in order, in double */
__global__ void column_partials_kernel(double *part, const float *x, size_t rows, int cols)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    size_t r0 = (size_t)blockIdx.y * COLSUM_CHUNK;
    if (j >= cols)
        return;
    size_t r1 = r0 + COLSUM_CHUNK < rows ? r0 + COLSUM_CHUNK : rows;
    double s = 0;
    for (size_t i = r0; i < r1; i++)
        s += x[i * cols + j];
    part[(size_t)blockIdx.y * cols + j] = s;
}

/* acc[j] += sum over chunks of part[chunk][j], in chunk order */
__global__ void column_finish_kernel(float *acc, const double *part, int nchunks, int cols)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols)
        return;
    double s = 0;
    for (int c = 0; c < nchunks; c++)
        s += part[(size_t)c * cols + j];
    acc[j] += (float)s;
}

int mood__cuda_column_sums(mood_cuda_ctx *ctx, float *acc, const float *x, size_t rows, int cols)
{
    if (rows == 0 || cols <= 0)
        return 0;
    size_t nchunks = (rows + COLSUM_CHUNK - 1) / COLSUM_CHUNK;
    if (nchunks > 65535)
        return mood_error_set(MOOD_EINVAL, "column sums: %zu rows is too many", rows);
    pool_tmp part(ctx);
    MOOD_TRY(part.alloc(nchunks * (size_t)cols * sizeof(double)));
    dim3 grid((unsigned)((cols + THREADS - 1) / THREADS), (unsigned)nchunks);
    column_partials_kernel<<<grid, THREADS, 0, ctx->stream>>>((double *)part.ptr, x, rows, cols);
    LAUNCH_CHECK();
    column_finish_kernel<<<(cols + THREADS - 1) / THREADS, THREADS, 0, ctx->stream>>>(
        acc, (const double *)part.ptr, (int)nchunks, cols);
    LAUNCH_CHECK();
    return 0;
}

/* ----- activations -------------------------------------------------------------------------- */

__device__ __forceinline__ float sigmoid_gate(float x, float a)
{
    /* x sigmoid(a x); the exponent clamped as the CPU's exp_poly */
    float z = fminf(fmaxf(-a * x, -87.0f), 88.0f);
    return x / (1.0f + expf(z));
}

__device__ __forceinline__ float gelu1(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* d/dx x Phi(x) = Phi(x) + x phi(x) (exact gelu) */
__device__ __forceinline__ float gelu_grad(float x)
{
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    return cdf + x * expf(-0.5f * x * x) * 0.39894228040143268f;
}

/* d/dx x sigmoid(a x) = s (1 + a x (1 - s)) */
__device__ __forceinline__ float sigmoid_gate_grad(float x, float a)
{
    float z = fminf(fmaxf(-a * x, -87.0f), 88.0f);
    float s = 1.0f / (1.0f + expf(z));
    return s * (1.0f + a * x * (1.0f - s));
}

enum { ACT_SILU, ACT_GELU, ACT_QUICK_GELU };

template <int ACT> __device__ __forceinline__ float act_fwd(float x)
{
    return ACT == ACT_GELU ? gelu1(x) : sigmoid_gate(x, ACT == ACT_SILU ? 1.0f : 1.702f);
}

template <int ACT> __device__ __forceinline__ float act_grad(float x)
{
    return ACT == ACT_GELU ? gelu_grad(x) : sigmoid_gate_grad(x, ACT == ACT_SILU ? 1.0f : 1.702f);
}

template <int ACT> __global__ void act_kernel(float *out, const float *inp, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = act_fwd<ACT>(inp[i]);
}

template <int ACT>
__global__ void act_backward_kernel(float *dinp, const float *dout, const float *inp, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dinp[i] += dout[i] * act_grad<ACT>(inp[i]);
}

template <int ACT>
static int act(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n, const char *fn)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    if (n == 0)
        return 0;
    act_kernel<ACT><<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(out, inp, n);
    LAUNCH_CHECK();
    return 0;
}

template <int ACT>
static int act_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                        size_t n, const char *fn)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    if (n == 0)
        return 0;
    act_backward_kernel<ACT><<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(dinp, dout, inp, n);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_silu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return act<ACT_SILU>(ctx, out, inp, n, "mood_cuda_op_silu");
}

int mood_cuda_op_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return act<ACT_GELU>(ctx, out, inp, n, "mood_cuda_op_gelu");
}

int mood_cuda_op_quick_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return act<ACT_QUICK_GELU>(ctx, out, inp, n, "mood_cuda_op_quick_gelu");
}

int mood_cuda_op_silu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n)
{
    return act_backward<ACT_SILU>(ctx, dinp, dout, inp, n, "mood_cuda_op_silu_backward");
}

int mood_cuda_op_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n)
{
    return act_backward<ACT_GELU>(ctx, dinp, dout, inp, n, "mood_cuda_op_gelu_backward");
}

int mood_cuda_op_quick_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                     const float *inp, size_t n)
{
    return act_backward<ACT_QUICK_GELU>(ctx, dinp, dout, inp, n,
                                        "mood_cuda_op_quick_gelu_backward");
}

/* out[i][j] = a[i][j] gelu(gate[i][j]), inp rows [a | gate] of 2F */
__global__ void geglu_kernel(float *out, const float *inp, size_t N, int F)
{
    size_t n = N * F;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / F, j = i % F;
        const float *row = inp + r * 2 * F;
        out[i] = row[j] * gelu1(row[F + j]);
    }
}

/* da += dout gelu(gate), dgate += dout a gelu'(gate) */
__global__ void geglu_backward_kernel(float *dinp, const float *dout, const float *inp, size_t N,
                                      int F)
{
    size_t n = N * F;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / F, j = i % F;
        const float *row = inp + r * 2 * F;
        float *drow = dinp + r * 2 * F;
        float a = row[j], g = row[F + j], dy = dout[i];
        drow[j] += dy * gelu1(g);
        drow[F + j] += dy * a * gelu_grad(g);
    }
}

int mood_cuda_op_geglu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t N, int F)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_geglu"));
    if (N == 0 || F <= 0)
        return 0;
    geglu_kernel<<<grid_for(N * F, THREADS), THREADS, 0, ctx->stream>>>(out, inp, N, F);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_geglu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                const float *inp, size_t N, int F)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_geglu_backward"));
    if (N == 0 || F <= 0)
        return 0;
    geglu_backward_kernel<<<grid_for(N * F, THREADS), THREADS, 0, ctx->stream>>>(dinp, dout, inp, N,
                                                                                 F);
    LAUNCH_CHECK();
    return 0;
}

/* ----- additions ---------------------------------------------------------------------------- */

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void div_scalar_kernel(float *x, float d, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] /= d;
}

int mood_cuda_op_div_scalar(mood_cuda_ctx *ctx, float *x, float d, size_t n)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_div_scalar"));
    if (n == 0)
        return 0;
    div_scalar_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(x, d, n);
    LAUNCH_CHECK();
    return 0;
}

__global__ void axpy_kernel(float *y, const float *x, float a, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = fmaf(a, x[i], y[i]);
}

int mood_cuda_op_axpy(mood_cuda_ctx *ctx, float *y, const float *x, float a, size_t n)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_axpy"));
    if (n == 0)
        return 0;
    axpy_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(y, x, a, n);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_add_inplace(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return mood_cuda_op_add(ctx, out, out, inp, n);
}

int mood_cuda_op_add(mood_cuda_ctx *ctx, float *out, const float *a, const float *b, size_t n)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_add"));
    if (n == 0)
        return 0;
    add_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(out, a, b, n);
    LAUNCH_CHECK();
    return 0;
}

/* x[bc][p] += v[bc] */
__global__ void add_channel_bias_kernel(float *x, const float *v, size_t n, size_t HW)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += v[i / HW];
}

int mood_cuda_op_add_channel_bias(mood_cuda_ctx *ctx, float *x, const float *v, int B, int C,
                                  size_t HW)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_add_channel_bias"));
    size_t n = (size_t)B * C * HW;
    if (B <= 0 || C <= 0 || HW == 0)
        return 0;
    add_channel_bias_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(x, v, n, HW);
    LAUNCH_CHECK();
    return 0;
}

/* Sum of v over the block's threads in double, in a fixed tree order; every thread gets it. */
__device__ double block_sum_d(double v)
{
    __shared__ double part[32];
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = (blockDim.x + 31) / 32;
    __syncthreads(); /* part may still be read by an earlier call */
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    double s = 0;
    for (int w = 0; w < nwarps; w++)
        s += part[w];
    return s;
}

/* dv[bc] += sum over p of dout[bc][p]: one block per (sample, channel) */
__global__ void row_sums_kernel(float *dv, const float *dout, size_t HW)
{
    const float *row = dout + (size_t)blockIdx.x * HW;
    double s = 0;
    for (size_t i = threadIdx.x; i < HW; i += blockDim.x)
        s += row[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0)
        dv[blockIdx.x] += (float)s;
}

int mood_cuda_op_add_channel_bias_backward(mood_cuda_ctx *ctx, float *dv, const float *dout, int B,
                                           int C, size_t HW)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_add_channel_bias_backward"));
    if (B <= 0 || C <= 0 || HW == 0)
        return 0;
    row_sums_kernel<<<(unsigned)B * C, THREADS, 0, ctx->stream>>>(dv, dout, HW);
    LAUNCH_CHECK();
    return 0;
}

/* ----- layout ------------------------------------------------------------------------------- */

#define TILE 32

/* out (B x S x R) (+)= inp (B x R x S) transposed; grid (S tiles, R tiles, B), block 32 x 8 */
template <int ADD>
__global__ void transpose_kernel(float *out, const float *inp, size_t R, size_t S)
{
    __shared__ float tile[TILE][TILE + 1];
    size_t b = blockIdx.z, r0 = (size_t)blockIdx.y * TILE, s0 = (size_t)blockIdx.x * TILE;
    const float *x = inp + b * R * S;
    float *y = out + b * R * S;
    for (int i = threadIdx.y; i < TILE; i += blockDim.y) {
        size_t r = r0 + i, s = s0 + threadIdx.x;
        if (r < R && s < S)
            tile[i][threadIdx.x] = x[r * S + s];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < TILE; i += blockDim.y) {
        size_t s = s0 + i, r = r0 + threadIdx.x;
        if (r < R && s < S) {
            float v = tile[threadIdx.x][i];
            y[s * R + r] = ADD ? y[s * R + r] + v : v;
        }
    }
}

static int transpose(mood_cuda_ctx *ctx, float *out, const float *inp, int B, size_t R, size_t S,
                     int add, const char *fn)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    if (B <= 0 || R == 0 || S == 0)
        return 0;
    size_t gx = (S + TILE - 1) / TILE, gy = (R + TILE - 1) / TILE;
    if (gy > 65535 || B > 65535)
        return mood_error_set(MOOD_EINVAL, "%s: %d x %zu x %zu is too large", fn, B, R, S);
    dim3 grid((unsigned)gx, (unsigned)gy, (unsigned)B), block(TILE, 8);
    if (add)
        transpose_kernel<1><<<grid, block, 0, ctx->stream>>>(out, inp, R, S);
    else
        transpose_kernel<0><<<grid, block, 0, ctx->stream>>>(out, inp, R, S);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_nchw_to_nhwc(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW)
{
    return transpose(ctx, out, inp, B, (size_t)C, HW, 0, "mood_cuda_op_nchw_to_nhwc");
}

int mood_cuda_op_nhwc_to_nchw(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW)
{
    return transpose(ctx, out, inp, B, HW, (size_t)C, 0, "mood_cuda_op_nhwc_to_nchw");
}

int mood_cuda_op_nchw_to_nhwc_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW)
{
    return transpose(ctx, dinp, dout, B, HW, (size_t)C, 1, "mood_cuda_op_nchw_to_nhwc_backward");
}

int mood_cuda_op_nhwc_to_nchw_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW)
{
    return transpose(ctx, dinp, dout, B, (size_t)C, HW, 1, "mood_cuda_op_nhwc_to_nchw_backward");
}

/* out (BC x 2H x 2W): every output reads its input value */
__global__ void upsample_kernel(float *out, const float *inp, size_t n, int H, int W)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t x = i % (2 * W), y = i / (2 * W) % (2 * H), bc = i / ((size_t)4 * H * W);
        out[i] = inp[(bc * H + y / 2) * W + x / 2];
    }
}

/* dinp (BC x H x W) += the sum of its 2x2 block of dout, in the CPU's order */
__global__ void upsample_backward_kernel(float *dinp, const float *dout, size_t n, int W)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / W, j = i % W; /* r = bc * H + y */
        const float *y0 = dout + r * 4 * W, *y1 = y0 + 2 * W;
        dinp[i] += (y0[2 * j] + y0[2 * j + 1]) + (y1[2 * j] + y1[2 * j + 1]);
    }
}

int mood_cuda_op_upsample_nearest2x(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                    int W)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_upsample_nearest2x"));
    size_t n = (size_t)BC * 4 * H * W;
    if (BC <= 0 || H <= 0 || W <= 0)
        return 0;
    upsample_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(out, inp, n, H, W);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_upsample_nearest2x_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                             int BC, int H, int W)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_upsample_nearest2x_backward"));
    size_t n = (size_t)BC * H * W;
    if (BC <= 0 || H <= 0 || W <= 0)
        return 0;
    upsample_backward_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(dinp, dout, n, W);
    LAUNCH_CHECK();
    return 0;
}

/* out (BC x OH x OW), nearest: source index min(floor(dst * ratio), size - 1) with the ratio
 * (in / out) in float32, as torch's upsample_nearest2d without scale factors and the CPU twin
 * mood__unet_upsample; __fmul_rn keeps the product a plain rounded multiply */
__global__ void upsample_any_kernel(float *out, const float *inp, size_t n, int H, int W, int OH,
                                    int OW, float sy, float sx)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int ox = (int)(i % OW), oy = (int)(i / OW % OH);
        size_t bc = i / ((size_t)OH * OW);
        int iy = (int)floorf(__fmul_rn((float)oy, sy)), ix = (int)floorf(__fmul_rn((float)ox, sx));
        iy = iy < H ? iy : H - 1;
        ix = ix < W ? ix : W - 1;
        out[i] = inp[(bc * H + iy) * W + ix];
    }
}

int mood_cuda_op_upsample_nearest(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                  int W, int OH, int OW)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_upsample_nearest"));
    if (BC <= 0 || H <= 0 || W <= 0 || OH <= 0 || OW <= 0)
        return 0;
    size_t n = (size_t)BC * OH * OW;
    float sy = (float)H / (float)OH, sx = (float)W / (float)OW;
    upsample_any_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(out, inp, n, H, W, OH,
                                                                           OW, sy, sx);
    LAUNCH_CHECK();
    return 0;
}

/* The source index upsample_any_kernel reads for output index o (ratio s = in / out). */
__device__ __forceinline__ int nearest_src(int o, float s, int in)
{
    int i = (int)floorf(__fmul_rn((float)o, s));
    return i < in ? i : in - 1;
}

/* dinp (BC x H x W) += the sum of the dout (BC x OH x OW) values copied from each input pixel by
 * upsample_any_kernel: one thread per input pixel, adding its copies row by row, left to right,
 * to its running value, as the CPU twin does (mood__unet_upsample_backward,
 * engine/unet_backward.c), so the sums are the same. The source index does not decrease along a
 * row or column, so each pixel scans from two rows (columns) before the first that can map to it
 * (float rounding moves that one by far less) until one maps past it. */
__global__ void upsample_any_backward_kernel(float *dinp, const float *dout, size_t n, int H, int W,
                                             int OH, int OW, float sy, float sx)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int ix = (int)(i % W), iy = (int)(i / W % H);
        const float *plane = dout + i / ((size_t)H * W) * OH * OW;
        int oy0 = (int)((long long)iy * OH / H) - 2, ox0 = (int)((long long)ix * OW / W) - 2;
        float acc = dinp[i];
        for (int oy = oy0 > 0 ? oy0 : 0; oy < OH; oy++) {
            int sy_i = nearest_src(oy, sy, H);
            if (sy_i < iy)
                continue;
            if (sy_i > iy)
                break;
            for (int ox = ox0 > 0 ? ox0 : 0; ox < OW; ox++) {
                int sx_i = nearest_src(ox, sx, W);
                if (sx_i < ix)
                    continue;
                if (sx_i > ix)
                    break;
                acc += plane[(size_t)oy * OW + ox];
            }
        }
        dinp[i] = acc;
    }
}

int mood_cuda_op_upsample_nearest_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                           int BC, int H, int W, int OH, int OW)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_upsample_nearest_backward"));
    if (BC <= 0 || H <= 0 || W <= 0 || OH <= 0 || OW <= 0)
        return 0;
    size_t n = (size_t)BC * H * W;
    float sy = (float)H / (float)OH, sx = (float)W / (float)OW;
    upsample_any_backward_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(
        dinp, dout, n, H, W, OH, OW, sy, sx);
    LAUNCH_CHECK();
    return 0;
}

/* out (B x (Ca + Cb) x HW) = [a | b]; backward: da, db (+)= the matching part of dout (either
 * may be NULL) */
template <int BACKWARD>
__global__ void concat_kernel(float *out, float *a, float *b, size_t na, size_t nb, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t s = i / (na + nb), o = i % (na + nb);
        float *part = o < na ? a : b;
        if (!part)
            continue;
        float *src = o < na ? part + s * na + o : part + s * nb + (o - na);
        if (BACKWARD)
            *src += out[i];
        else
            out[i] = *src;
    }
}

int mood_cuda_op_concat_channels(mood_cuda_ctx *ctx, float *out, const float *a, int Ca,
                                 const float *b, int Cb, int B, size_t HW)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_concat_channels"));
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW, n = (size_t)B * (na + nb);
    if (n == 0)
        return 0;
    concat_kernel<0><<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(
        out, const_cast<float *>(a), const_cast<float *>(b), na, nb, n);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_concat_channels_backward(mood_cuda_ctx *ctx, float *da, float *db,
                                          const float *dout, int Ca, int Cb, int B, size_t HW)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_concat_channels_backward"));
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW, n = (size_t)B * (na + nb);
    if (n == 0 || (!da && !db))
        return 0;
    concat_kernel<1><<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(const_cast<float *>(dout),
                                                                        da, db, na, nb, n);
    LAUNCH_CHECK();
    return 0;
}

/* ----- timestep embedding ------------------------------------------------------------------- */

/* As the CPU: exponent in float, exp, sin and cos in double rounded once. */
__global__ void timestep_kernel(float *out, const float *t, int B, int dim, int flip, float neg_log,
                                float denom)
{
    int half = dim / 2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)B * half;
         i += (size_t)gridDim.x * blockDim.x) {
        int b = (int)(i / half), k = (int)(i % half);
        float *o = out + (size_t)b * dim;
        float e = neg_log * (float)k / denom;
        float arg = t[b] * (float)exp((double)e);
        (flip ? o + half : o)[k] = (float)sin((double)arg);
        (flip ? o : o + half)[k] = (float)cos((double)arg);
        if (dim % 2 && k == 0)
            o[dim - 1] = 0.0f;
    }
}

__global__ void zero_last_column_kernel(float *out, int B, int dim)
{
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < B; b += gridDim.x * blockDim.x)
        out[(size_t)b * dim + dim - 1] = 0.0f;
}

int mood_cuda_op_timestep_embedding(mood_cuda_ctx *ctx, float *out, const float *t, int B, int dim,
                                    int flip_sin_to_cos, float shift, float max_period)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_timestep_embedding"));
    if (B <= 0 || dim <= 0)
        return 0;
    int half = dim / 2;
    float neg_log = (float)-log((double)max_period);
    float denom = (float)half - shift;
    if (half > 0) {
        size_t n = (size_t)B * half;
        timestep_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->stream>>>(
            out, t, B, dim, flip_sin_to_cos, neg_log, denom);
        LAUNCH_CHECK();
    } else { /* dim 1: only the zero column */
        zero_last_column_kernel<<<grid_for((size_t)B, THREADS), THREADS, 0, ctx->stream>>>(out, B,
                                                                                           dim);
        LAUNCH_CHECK();
    }
    return 0;
}
