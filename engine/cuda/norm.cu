/*
 * norm.cu: GroupNorm and LayerNorm on the GPU, forward and backward, as engine/cpu/ops.c and
 * ops_backward.c compute them: statistics in two passes in double (mean, then the biased
 * variance about it), rstd = 1/sqrt(var + eps) rounded to float, the output (x - mean) * (rstd w)
 * + b in the CPU's float order; backward with the CPU's coefficients (norm_coefs).
 *
 * One block per normalised set (sample and group; row); the affine gradients sum over the batch
 * in fixed-size chunks combined in order, so results are deterministic.
 */
#include "engine/cuda/cuda_internal.h"

#define THREADS 256

/* Sums of a and b over the block (blockDim.x a multiple of 32, at most 1024) in double, in a
 * fixed tree order; every thread gets both. */
__device__ void block_sum2(double *a, double *b)
{
    __shared__ double pa[32], pb[32];
    double x = *a, y = *b;
    for (int o = 16; o > 0; o /= 2) {
        x += __shfl_down_sync(0xffffffffu, x, o);
        y += __shfl_down_sync(0xffffffffu, y, o);
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    __syncthreads(); /* an earlier call may still be reading pa, pb */
    if (lane == 0) {
        pa[warp] = x;
        pb[warp] = y;
    }
    __syncthreads();
    x = 0, y = 0;
    for (int w = 0; w < nwarps; w++) {
        x += pa[w];
        y += pb[w];
    }
    *a = x, *b = y;
}

/* Mean (double) and rstd (float) of x[0..n) by the whole block. */
__device__ void block_moments(const float *x, size_t n, float eps, double *mean, float *rstd)
{
    double s = 0, unused = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x)
        s += x[i];
    block_sum2(&s, &unused);
    double m = s / (double)n, v = 0;
    unused = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        double t = x[i] - m;
        v += t * t;
    }
    block_sum2(&v, &unused);
    *mean = m;
    *rstd = (float)(1.0 / sqrt(v / (double)n + eps));
}

/* ----- GroupNorm ---------------------------------------------------------------------------- */

/* block bg = b * groups + g normalises the group's cg channels x HW values */
__global__ void group_norm_kernel(float *out, const float *inp, const float *w, const float *b,
                                  int groups, int cg, size_t HW, float eps, float *mean_out,
                                  float *rstd_out)
{
    int bg = blockIdx.x;
    size_t gsize = (size_t)cg * HW;
    const float *x = inp + (size_t)bg * gsize;
    float *o = out + (size_t)bg * gsize;
    double mean;
    float rstd;
    block_moments(x, gsize, eps, &mean, &rstd);
    float fm = (float)mean;
    for (size_t i = threadIdx.x; i < gsize; i += blockDim.x) {
        int ch = bg % groups * cg + (int)(i / HW);
        float sc = rstd * (w ? w[ch] : 1.0f), sh = b ? b[ch] : 0.0f;
        o[i] = (x[i] - fm) * sc + sh;
    }
    if (threadIdx.x == 0 && mean_out)
        mean_out[bg] = fm;
    if (threadIdx.x == 0 && rstd_out)
        rstd_out[bg] = rstd;
}

static int check_groups(int C, int groups, const char *fn)
{
    if (groups <= 0 || C % groups)
        return mood_error_set(MOOD_EINVAL, "%s: %d channels in %d groups", fn, C, groups);
    return 0;
}

int mood_cuda_op_group_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, int B, int C, size_t HW, int groups, float eps,
                            float *mean_out, float *rstd_out)
{
    const char *fn = "mood_cuda_op_group_norm";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    if (B <= 0 || C <= 0 || HW == 0)
        return 0;
    MOOD_TRY(check_groups(C, groups, fn));
    group_norm_kernel<<<(unsigned)(B * groups), THREADS, 0, ctx->stream>>>(
        out, inp, w, b, groups, C / groups, HW, eps, mean_out, rstd_out);
    LAUNCH_CHECK();
    return 0;
}

/* dx = (w r) dy + cx (x - m) + c0 with cx = -r^3 mean(g (x - m)), c0 = -r mean(g), g = dy w */
__device__ void norm_coefs(double s_g, double s_gx, size_t n, float r, float *cx, float *c0)
{
    double mg = s_g / (double)n, mgx = s_gx / (double)n;
    *cx = (float)(-(double)r * r * r * mgx);
    *c0 = (float)(-(double)r * mg);
}

__global__ void group_norm_backward_input_kernel(float *dinp, const float *dout, const float *inp,
                                                 const float *w, const float *mean,
                                                 const float *rstd, int groups, int cg, size_t HW)
{
    int bg = blockIdx.x;
    size_t gsize = (size_t)cg * HW, off = (size_t)bg * gsize;
    const float *x = inp + off, *dy = dout + off;
    float *dx = dinp + off;
    float m = mean[bg], r = rstd[bg], cx, c0;
    double s_g = 0, s_gx = 0;
    for (size_t i = threadIdx.x; i < gsize; i += blockDim.x) {
        double wc = w ? w[bg % groups * cg + (int)(i / HW)] : 1.0, g = dy[i];
        s_g += wc * g;
        s_gx += wc * (g * ((double)x[i] - m));
    }
    block_sum2(&s_g, &s_gx);
    norm_coefs(s_g, s_gx, gsize, r, &cx, &c0);
    for (size_t i = threadIdx.x; i < gsize; i += blockDim.x) {
        float a = (w ? w[bg % groups * cg + (int)(i / HW)] : 1.0f) * r;
        dx[i] += a * dy[i] + (cx * (x[i] - m) + c0);
    }
}

/* block c: dw[c] += sum over samples of rstd * sum dy (x - m), db[c] += sum dy */
__global__ void group_norm_backward_affine_kernel(float *dw, float *db, const float *dout,
                                                  const float *inp, const float *mean,
                                                  const float *rstd, int B, int C, int groups,
                                                  size_t HW)
{
    int c = blockIdx.x, cg = C / groups;
    double sw = 0, sb = 0;
    for (int b = 0; b < B; b++) {
        int bg = b * groups + c / cg;
        size_t off = ((size_t)b * C + c) * HW;
        double m = mean[bg], r = rstd[bg];
        for (size_t i = threadIdx.x; i < HW; i += blockDim.x) {
            double g = dout[off + i];
            sb += g;
            sw += g * ((double)inp[off + i] - m) * r;
        }
    }
    block_sum2(&sw, &sb);
    if (threadIdx.x == 0) {
        if (dw)
            dw[c] += (float)sw;
        if (db)
            db[c] += (float)sb;
    }
}

int mood_cuda_op_group_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, int B, int C, size_t HW,
                                     int groups)
{
    const char *fn = "mood_cuda_op_group_norm_backward";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    if (B <= 0 || C <= 0 || groups <= 0 || HW == 0)
        return 0;
    MOOD_TRY(check_groups(C, groups, fn));
    if (dinp) {
        group_norm_backward_input_kernel<<<(unsigned)(B * groups), THREADS, 0, ctx->stream>>>(
            dinp, dout, inp, w, mean, rstd, groups, C / groups, HW);
        LAUNCH_CHECK();
    }
    if (dw || db) {
        group_norm_backward_affine_kernel<<<(unsigned)C, THREADS, 0, ctx->stream>>>(
            dw, db, dout, inp, mean, rstd, B, C, groups, HW);
        LAUNCH_CHECK();
    }
    return 0;
}

/* ----- LayerNorm ---------------------------------------------------------------------------- */

#define LN_THREADS 128

__global__ void layer_norm_kernel(float *out, const float *inp, const float *w, const float *b,
                                  int C, float eps, float *mean_out, float *rstd_out)
{
    size_t row = blockIdx.x;
    const float *x = inp + row * C;
    float *o = out + row * C;
    double mean;
    float rstd;
    block_moments(x, (size_t)C, eps, &mean, &rstd);
    float fm = (float)mean;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        o[c] = (x[c] - fm) * rstd * (w ? w[c] : 1.0f) + (b ? b[c] : 0.0f);
    if (threadIdx.x == 0 && mean_out)
        mean_out[row] = fm;
    if (threadIdx.x == 0 && rstd_out)
        rstd_out[row] = rstd;
}

int mood_cuda_op_layer_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, size_t N, int C, float eps, float *mean_out,
                            float *rstd_out)
{
    const char *fn = "mood_cuda_op_layer_norm";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(mood__cuda_check_int(N, "N", fn));
    if (N == 0 || C <= 0)
        return 0;
    layer_norm_kernel<<<(unsigned)N, LN_THREADS, 0, ctx->stream>>>(out, inp, w, b, C, eps, mean_out,
                                                                   rstd_out);
    LAUNCH_CHECK();
    return 0;
}

__global__ void layer_norm_backward_input_kernel(float *dinp, const float *dout, const float *inp,
                                                 const float *w, const float *mean,
                                                 const float *rstd, int C)
{
    size_t row = blockIdx.x;
    const float *x = inp + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    float m = mean[row], r = rstd[row], cx, c0;
    double s_g = 0, s_gx = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        double g = (double)dy[c] * (w ? w[c] : 1.0f);
        s_g += g;
        s_gx += g * ((double)x[c] - m);
    }
    block_sum2(&s_g, &s_gx);
    norm_coefs(s_g, s_gx, (size_t)C, r, &cx, &c0);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[c] += (w ? w[c] : 1.0f) * r * dy[c] + (cx * (x[c] - m) + c0);
}

#define LN_CHUNK 256 /* rows per partial sum of the affine gradients */

/* part_w / part_b [chunk][c]: sums over the chunk's rows of dy (x - m) r and dy, in order */
__global__ void layer_norm_affine_partials_kernel(double *part_w, double *part_b, const float *dout,
                                                  const float *inp, const float *mean,
                                                  const float *rstd, size_t N, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    size_t r0 = (size_t)blockIdx.y * LN_CHUNK, r1 = r0 + LN_CHUNK < N ? r0 + LN_CHUNK : N;
    double sw = 0, sb = 0;
    for (size_t i = r0; i < r1; i++) {
        double g = dout[i * C + c];
        sw += g * (((double)inp[i * C + c] - mean[i]) * rstd[i]);
        sb += g;
    }
    part_w[(size_t)blockIdx.y * C + c] = sw;
    part_b[(size_t)blockIdx.y * C + c] = sb;
}

__global__ void layer_norm_affine_finish_kernel(float *dw, float *db, const double *part_w,
                                                const double *part_b, int nchunks, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    double sw = 0, sb = 0;
    for (int k = 0; k < nchunks; k++) {
        sw += part_w[(size_t)k * C + c];
        sb += part_b[(size_t)k * C + c];
    }
    if (dw)
        dw[c] += (float)sw;
    if (db)
        db[c] += (float)sb;
}

static int layer_norm_affine_backward(mood_cuda_ctx *ctx, float *dw, float *db, const float *dout,
                                      const float *inp, const float *mean, const float *rstd,
                                      size_t N, int C)
{
    size_t nchunks = (N + LN_CHUNK - 1) / LN_CHUNK;
    if (nchunks > 65535)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_op_layer_norm_backward: %zu rows", N);
    pool_tmp part(ctx);
    MOOD_TRY(part.alloc(2 * nchunks * (size_t)C * sizeof(double)));
    double *pw = (double *)part.ptr, *pb = pw + nchunks * (size_t)C;
    dim3 grid((unsigned)((C + THREADS - 1) / THREADS), (unsigned)nchunks);
    layer_norm_affine_partials_kernel<<<grid, THREADS, 0, ctx->stream>>>(pw, pb, dout, inp, mean,
                                                                         rstd, N, C);
    LAUNCH_CHECK();
    layer_norm_affine_finish_kernel<<<(C + THREADS - 1) / THREADS, THREADS, 0, ctx->stream>>>(
        dw, db, pw, pb, (int)nchunks, C);
    LAUNCH_CHECK();
    return 0;
}

int mood_cuda_op_layer_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, size_t N, int C)
{
    const char *fn = "mood_cuda_op_layer_norm_backward";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(mood__cuda_check_int(N, "N", fn));
    if (N == 0 || C <= 0)
        return 0;
    if (dinp) {
        layer_norm_backward_input_kernel<<<(unsigned)N, LN_THREADS, 0, ctx->stream>>>(
            dinp, dout, inp, w, mean, rstd, C);
        LAUNCH_CHECK();
    }
    if (dw || db)
        MOOD_TRY(layer_norm_affine_backward(ctx, dw, db, dout, inp, mean, rstd, N, C));
    return 0;
}
