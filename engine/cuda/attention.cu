/*
 * attention.cu: scaled dot-product attention on the GPU, softmax(q k^T · scale) v per sample and
 * head, in the layout of mood_op_attention (engine/cpu/ops.h): q (B x Tq x H*D), k and v
 * (B x Tk x H*D), head h in columns [h*D, (h+1)*D) of each row.
 *
 * Two forward paths, chosen by type and head size (mood__cuda_attention_path forces one, for
 * tests):
 *   - a flash-style kernel (head sizes up to MOOD_CUDA_FLASH_MAX_D): a block takes 32 query rows
 *     of one (sample, head), walks the keys in tiles of 32 held in shared memory and keeps a
 *     running maximum, sum and output per row (online softmax), so no Tq x Tk matrix exists. Each
 *     warp owns 8 rows; lane j scores key j of the tile, and lane l accumulates output columns
 *     l, l+32, ... . Math in fp32 whatever the storage type.
 *   - the GEMM path (any head size): per sample and block of query rows, cuBLAS computes the
 *     scores of all heads (strided batch), a kernel the softmax (stored in the input type, as
 *     torch's math path does), cuBLAS the product with v.
 * The backward pass recomputes the probabilities (nothing of the forward pass is kept, as on the
 * CPU) and runs the GEMM path's products: dv += P^T dout, dP = dout v^T, dS = P (dP - rowsum(P
 * dP)), dq += scale dS k, dk += scale dS^T q, block of query rows after block, so dk and dv add
 * up in a fixed order.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "engine/cuda/cuda_internal.h"

/* Bytes of score (and probability) buffers the GEMM path may use at once. */
#define ATT_GEMM_BUDGET ((size_t)256 << 20)
#define SM_THREADS      128

__device__ __forceinline__ float ld_f32(const float *p)
{
    return *p;
}
__device__ __forceinline__ float ld_f32(const __nv_bfloat16 *p)
{
    return __bfloat162float(*p);
}
__device__ __forceinline__ float ld_f32(const __half *p)
{
    return __half2float(*p);
}
__device__ __forceinline__ void st_f32(float *p, float v)
{
    *p = v;
}
__device__ __forceinline__ void st_f32(__nv_bfloat16 *p, float v)
{
    *p = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void st_f32(__half *p, float v)
{
    *p = __float2half_rn(v);
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ----- flash kernel ------------------------------------------------------------------------- */

#define FA_BQ    32 /* query rows per block */
#define FA_BK    32 /* keys per tile */
#define FA_WARPS 4
#define FA_ROWS  (FA_BQ / FA_WARPS) /* rows per warp */

/* Shared floats the flash kernel needs for head size D. */
static size_t flash_smem_floats(int D)
{
    return (size_t)FA_BQ * D + (size_t)FA_BK * (D | 1) + (size_t)FA_WARPS * FA_ROWS * FA_BK;
}

/* NDL = ceil(D / 32): output columns per lane. grid (query blocks, H, B), FA_WARPS warps. */
template <typename T, int NDL>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_forward_kernel(T *out, const T *q, const T *k, const T *v, int H, int Tq, int Tk, int D,
                         int causal, float scale)
{
    extern __shared__ float smem[];
    const int pitch = D | 1; /* odd: lane j reading row j hits bank (j * pitch + d) % 32 */
    float *qs = smem, *kv = qs + FA_BQ * D, *ps = kv + FA_BK * pitch;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.z, h = blockIdx.y, row0 = blockIdx.x * FA_BQ;
    const size_t ld = (size_t)H * D;
    const T *qb = q + ((size_t)b * Tq) * ld + (size_t)h * D;
    const T *kb = k + ((size_t)b * Tk) * ld + (size_t)h * D;
    const T *vb = v + ((size_t)b * Tk) * ld + (size_t)h * D;
    float *pw = ps + warp * FA_ROWS * FA_BK;

    for (int i = threadIdx.x; i < FA_BQ * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        qs[i] = row0 + r < Tq ? ld_f32(qb + (size_t)(row0 + r) * ld + d) : 0.0f;
    }
    float o[FA_ROWS][NDL], m[FA_ROWS], l[FA_ROWS];
    for (int r = 0; r < FA_ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int t = 0; t < NDL; t++)
            o[r][t] = 0.0f;
    }
    int last_row = min(Tq, row0 + FA_BQ) - 1;
    int nk = causal ? min(Tk, last_row + 1) : Tk;
    for (int k0 = 0; k0 < nk; k0 += FA_BK) {
        __syncthreads(); /* the previous tile's v is no longer read; qs is written */
        for (int i = threadIdx.x; i < FA_BK * D; i += blockDim.x) {
            int j = i / D, d = i % D;
            kv[j * pitch + d] = k0 + j < Tk ? ld_f32(kb + (size_t)(k0 + j) * ld + d) : 0.0f;
        }
        __syncthreads();
        float s[FA_ROWS];
        for (int r = 0; r < FA_ROWS; r++)
            s[r] = 0.0f;
        const float *kr = kv + lane * pitch, *qw = qs + warp * FA_ROWS * D;
        for (int d = 0; d < D; d++) {
            float kd = kr[d];
            for (int r = 0; r < FA_ROWS; r++)
                s[r] = fmaf(qw[r * D + d], kd, s[r]);
        }
        int key = k0 + lane;
        for (int r = 0; r < FA_ROWS; r++) {
            int row = row0 + warp * FA_ROWS + r;
            float x = key < Tk && !(causal && key > row) ? s[r] * scale : -INFINITY;
            float mn = fmaxf(m[r], warp_max(x));
            float p = x == -INFINITY ? 0.0f : expf(x - mn);
            float alpha = m[r] == -INFINITY ? 0.0f : expf(m[r] - mn);
            l[r] = l[r] * alpha + warp_sum(p);
            m[r] = mn;
            pw[r * FA_BK + lane] = p;
            for (int t = 0; t < NDL; t++)
                o[r][t] *= alpha;
        }
        __syncthreads(); /* every warp is done with k */
        for (int i = threadIdx.x; i < FA_BK * D; i += blockDim.x) {
            int j = i / D, d = i % D;
            kv[j * pitch + d] = k0 + j < Tk ? ld_f32(vb + (size_t)(k0 + j) * ld + d) : 0.0f;
        }
        __syncthreads();
        for (int j = 0; j < FA_BK; j++) {
            const float *vj = kv + j * pitch;
            for (int t = 0; t < NDL; t++) {
                int d = lane + 32 * t;
                float vd = d < D ? vj[d] : 0.0f;
                for (int r = 0; r < FA_ROWS; r++)
                    o[r][t] = fmaf(pw[r * FA_BK + j], vd, o[r][t]);
            }
        }
    }
    for (int r = 0; r < FA_ROWS; r++) {
        int row = row0 + warp * FA_ROWS + r;
        if (row >= Tq)
            continue;
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        T *orow = out + ((size_t)b * Tq + row) * ld + (size_t)h * D;
        for (int t = 0; t < NDL; t++) {
            int d = lane + 32 * t;
            if (d < D)
                st_f32(orow + d, o[r][t] * inv);
        }
    }
}

template <typename T, int NDL>
static int flash_launch(mood_cuda_ctx *ctx, void *out, const void *q, const void *k, const void *v,
                        int B, int H, int Tq, int Tk, int D, int causal, float scale)
{
    size_t smem = flash_smem_floats(D) * sizeof(float);
    dim3 grid((unsigned)((Tq + FA_BQ - 1) / FA_BQ), (unsigned)H, (unsigned)B);
    flash_forward_kernel<T, NDL><<<grid, FA_WARPS * 32, smem, ctx->stream>>>(
        (T *)out, (const T *)q, (const T *)k, (const T *)v, H, Tq, Tk, D, causal, scale);
    LAUNCH_CHECK();
    return 0;
}

template <typename T>
static int flash_forward(mood_cuda_ctx *ctx, void *out, const void *q, const void *k, const void *v,
                         int B, int H, int Tq, int Tk, int D, int causal, float scale)
{
    switch ((D + 31) / 32) {
    case 1:
        return flash_launch<T, 1>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
    case 2:
        return flash_launch<T, 2>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
    case 3:
        return flash_launch<T, 3>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
    case 4:
        return flash_launch<T, 4>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
    case 5:
        return flash_launch<T, 5>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
    }
    return mood_error_set(MOOD_EUNSUPPORTED, "flash attention: head size %d (at most %d)", D,
                          MOOD_CUDA_FLASH_MAX_D);
}

/* ----- softmax rows (GEMM path, backward) --------------------------------------------------- */

/* Probabilities from scores: H heads of m rows of n fp32 scores s, the heads hs floats apart,
 * the rows n apart; p (type TO, same layout, may alias s) gets exp(s - max) / sum over the keys
 * the row sees (under the causal mask, row i of a head is query i0 + i and sees keys
 * 0..i0 + i), 0 elsewhere. One block per row. */
template <typename TO>
__global__ void softmax_rows_kernel(TO *p, const float *s, int m, int n, long long hs, int i0,
                                    int causal)
{
    __shared__ float red_f[32];
    __shared__ double red_d[32];
    int i = blockIdx.x % m;
    size_t off = (size_t)(blockIdx.x / m) * hs + (size_t)i * n;
    const float *x = s + off;
    TO *y = p + off;
    int lim = causal ? min(n, i0 + i + 1) : n;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < lim; j += blockDim.x)
        mx = fmaxf(mx, x[j]);
    mx = warp_max(mx);
    if (lane == 0)
        red_f[warp] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < nw; w++)
        mx = fmaxf(mx, red_f[w]);
    double sum = 0;
    for (int j = threadIdx.x; j < lim; j += blockDim.x)
        sum += expf(x[j] - mx);
    for (int o = 16; o > 0; o /= 2)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0)
        red_d[warp] = sum;
    __syncthreads(); /* also: every thread has read its scores before any is overwritten */
    sum = 0;
    for (int w = 0; w < nw; w++)
        sum += red_d[w];
    float inv = (float)(1.0 / sum);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float e = j < lim ? expf(x[j] - mx) * inv : 0.0f;
        st_f32(y + j, e);
    }
}

/* dp = p (dp - sum(p dp)) per row (the softmax's backward), in place in dp; the layout of
 * softmax_rows_kernel. */
__global__ void softmax_backward_rows_kernel(float *dp, const float *p, int m, int n, long long hs)
{
    __shared__ double red[32];
    size_t off = (size_t)(blockIdx.x / m) * hs + (size_t)(blockIdx.x % m) * n;
    const float *pr = p + off;
    float *dr = dp + off;
    double s = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        s += (double)pr[j] * dr[j];
    for (int o = 16; o > 0; o /= 2)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = s;
    __syncthreads();
    s = 0;
    for (int w = 0; w < (int)blockDim.x / 32; w++)
        s += red[w];
    float fs = (float)s;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        dr[j] = pr[j] * (dr[j] - fs);
}

static int softmax_rows(mood_cuda_ctx *ctx, void *p, mood_cuda_dtype dt, const float *s, int H,
                        int m, int n, long long hs, int i0, int causal)
{
    size_t rows = (size_t)H * m;
    if (rows > 0x7fffffffu)
        return mood_error_set(MOOD_EINVAL, "attention: %zu softmax rows", rows);
    unsigned g = (unsigned)rows;
    if (dt == MOOD_CUDA_F32)
        softmax_rows_kernel<<<g, SM_THREADS, 0, ctx->stream>>>((float *)p, s, m, n, hs, i0, causal);
    else if (dt == MOOD_CUDA_BF16)
        softmax_rows_kernel<<<g, SM_THREADS, 0, ctx->stream>>>((__nv_bfloat16 *)p, s, m, n, hs, i0,
                                                               causal);
    else
        softmax_rows_kernel<<<g, SM_THREADS, 0, ctx->stream>>>((__half *)p, s, m, n, hs, i0,
                                                               causal);
    LAUNCH_CHECK();
    return 0;
}

/* ----- GEMM path ---------------------------------------------------------------------------- */

/* Query rows per block so that `per_elem` bytes per (head, query row, key) fit the budget. */
static int query_block(const mood_cuda_ctx *ctx, int H, int Tq, int Tk, size_t per_elem)
{
    size_t budget = ctx->attention_budget ? ctx->attention_budget : ATT_GEMM_BUDGET;
    size_t per_row = (size_t)H * Tk * per_elem;
    size_t qc = budget / (per_row ? per_row : 1);
    if (qc < 1)
        qc = 1;
    return qc < (size_t)Tq ? (int)qc : Tq;
}

static int gemm_forward(mood_cuda_ctx *ctx, void *out, const void *q, const void *k, const void *v,
                        mood_cuda_dtype dt, int B, int H, int Tq, int Tk, int D, int causal,
                        float scale)
{
    size_t es = dtype_size(dt);
    int HD = H * D;
    int qc = query_block(ctx, H, Tq, Tk, 4 + (dt == MOOD_CUDA_F32 ? 0 : es));
    pool_tmp sbuf(ctx), pbuf(ctx);
    MOOD_TRY(sbuf.alloc((size_t)H * qc * Tk * sizeof(float)));
    void *pmat = sbuf.ptr; /* fp32: the probabilities overwrite the scores */
    if (dt != MOOD_CUDA_F32) {
        MOOD_TRY(pbuf.alloc((size_t)H * qc * Tk * es));
        pmat = pbuf.ptr;
    }
    long long sstride = (long long)qc * Tk;
    for (int b = 0; b < B; b++) {
        const char *kb = (const char *)k + (size_t)b * Tk * HD * es;
        const char *vb = (const char *)v + (size_t)b * Tk * HD * es;
        for (int i0 = 0; i0 < Tq; i0 += qc) {
            int m = min(qc, Tq - i0);
            /* causal: this block's rows see no key past its last row */
            int nk = causal ? min(Tk, i0 + m) : Tk;
            size_t qoff = ((size_t)b * Tq + i0) * HD * es;
            MOOD_TRY(mood__cuda_gemm(ctx, 0, 1, m, nk, D, scale, (const char *)q + qoff, HD, D, kb,
                                     HD, D, dt, 0.0f, sbuf.ptr, nk, sstride, MOOD_CUDA_F32, H));
            MOOD_TRY(softmax_rows(ctx, pmat, dt, sbuf.f(), H, m, nk, sstride, i0, causal));
            MOOD_TRY(mood__cuda_gemm(ctx, 0, 0, m, D, nk, 1.0f, pmat, nk, sstride, vb, HD, D, dt,
                                     0.0f, (char *)out + qoff, HD, D, dt, H));
        }
    }
    return 0;
}

/* ----- entry points ------------------------------------------------------------------------- */

static int check_attention(const mood_cuda_ctx *ctx, int B, int H, int Tq, int Tk, int D,
                           int causal, const char *fn)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    if (B < 0 || H < 0 || Tq < 0 || Tk < 0 || D < 0 || B > 65535 || H > 65535)
        return mood_error_set(MOOD_EINVAL, "%s: B %d, H %d, Tq %d, Tk %d, D %d", fn, B, H, Tq, Tk,
                              D);
    if (causal && Tq != Tk)
        return mood_error_set(MOOD_EINVAL, "%s: causal attention with %d queries and %d keys", fn,
                              Tq, Tk);
    if ((size_t)H * D > 0x7fffffffu)
        return mood_error_set(MOOD_EINVAL, "%s: H * D too large", fn);
    return 0;
}

static int attention_any(mood_cuda_ctx *ctx, void *out, const void *q, const void *k, const void *v,
                         mood_cuda_dtype dt, int B, int H, int Tq, int Tk, int D, int causal,
                         float scale, const char *fn)
{
    MOOD_TRY(check_attention(ctx, B, H, Tq, Tk, D, causal, fn));
    if (B == 0 || H == 0 || Tq == 0 || D == 0)
        return 0;
    if (Tk == 0) /* no keys: torch gives NaN; write zeros rather than garbage */
        return mood_cuda_memset0(ctx, out, (size_t)B * Tq * H * D * dtype_size(dt));
    scale = scale == 0.0f ? 1.0f / sqrtf((float)D) : scale;
    int path = ctx->attention_path;
    /* the choice is a first guess, to be measured: 16-bit scores go through cuBLAS on the tensor
     * cores (the flash kernel computes on the CUDA cores); fp32 ones stay in the flash kernel,
     * which writes no Tq x Tk matrix */
    if (path == 0)
        path = D <= MOOD_CUDA_FLASH_MAX_D && dt == MOOD_CUDA_F32 ? 1 : 2;
    if (path == 1 && D > MOOD_CUDA_FLASH_MAX_D)
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: flash kernel asked for head size %d", fn, D);
    if (path == 2)
        return gemm_forward(ctx, out, q, k, v, dt, B, H, Tq, Tk, D, causal, scale);
    if (dt == MOOD_CUDA_F32)
        return flash_forward<float>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
    if (dt == MOOD_CUDA_BF16)
        return flash_forward<__nv_bfloat16>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
    return flash_forward<__half>(ctx, out, q, k, v, B, H, Tq, Tk, D, causal, scale);
}

int mood_cuda_op_attention(mood_cuda_ctx *ctx, float *out, const float *q, const float *k,
                           const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                           float scale)
{
    return attention_any(ctx, out, q, k, v, MOOD_CUDA_F32, B, H, Tq, Tk, D, causal, scale,
                         "mood_cuda_op_attention");
}

int mood_cuda_op_attention_ex(mood_cuda_ctx *ctx, void *out, const void *q, const void *k,
                              const void *v, mood_cuda_dtype dt, int B, int H, int Tq, int Tk,
                              int D, int causal, float scale)
{
    return attention_any(ctx, out, q, k, v, dt, B, H, Tq, Tk, D, causal, scale,
                         "mood_cuda_op_attention_ex");
}

/* ----- backward ----------------------------------------------------------------------------- */

/* Gradients of query rows [i0, i0 + m) of sample b, all heads; p and dp hold H x qc x Tk. */
static int backward_block(mood_cuda_ctx *ctx, float *dq, float *dk, float *dv, const float *dout,
                          const float *q, const float *k, const float *v, int b, int i0, int m,
                          int qc, int H, int Tq, int Tk, int D, int causal, float scale, float *p,
                          float *dp)
{
    const mood_cuda_dtype f = MOOD_CUDA_F32;
    int HD = H * D, nk = causal ? min(Tk, i0 + m) : Tk;
    long long st = (long long)qc * Tk;
    size_t qoff = ((size_t)b * Tq + i0) * HD, koff = (size_t)b * Tk * HD;
    MOOD_TRY(mood__cuda_gemm(ctx, 0, 1, m, nk, D, scale, q + qoff, HD, D, k + koff, HD, D, f, 0.0f,
                             p, nk, st, f, H));
    MOOD_TRY(softmax_rows(ctx, p, f, p, H, m, nk, st, i0, causal));
    if (dv)
        MOOD_TRY(mood__cuda_gemm(ctx, 1, 0, nk, D, m, 1.0f, p, nk, st, dout + qoff, HD, D, f, 1.0f,
                                 dv + koff, HD, D, f, H));
    if (!dq && !dk)
        return 0;
    MOOD_TRY(mood__cuda_gemm(ctx, 0, 1, m, nk, D, 1.0f, dout + qoff, HD, D, v + koff, HD, D, f,
                             0.0f, dp, nk, st, f, H));
    softmax_backward_rows_kernel<<<(unsigned)((size_t)H * m), SM_THREADS, 0, ctx->stream>>>(
        dp, p, m, nk, st);
    LAUNCH_CHECK();
    if (dq)
        MOOD_TRY(mood__cuda_gemm(ctx, 0, 0, m, D, nk, scale, dp, nk, st, k + koff, HD, D, f, 1.0f,
                                 dq + qoff, HD, D, f, H));
    if (dk)
        MOOD_TRY(mood__cuda_gemm(ctx, 1, 0, nk, D, m, scale, dp, nk, st, q + qoff, HD, D, f, 1.0f,
                                 dk + koff, HD, D, f, H));
    return 0;
}

int mood_cuda_op_attention_backward(mood_cuda_ctx *ctx, float *dq, float *dk, float *dv,
                                    const float *dout, const float *q, const float *k,
                                    const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                                    float scale)
{
    const char *fn = "mood_cuda_op_attention_backward";
    MOOD_TRY(check_attention(ctx, B, H, Tq, Tk, D, causal, fn));
    if (B == 0 || H == 0 || Tq == 0 || Tk == 0 || D == 0 || (!dq && !dk && !dv))
        return 0;
    scale = scale == 0.0f ? 1.0f / sqrtf((float)D) : scale;
    int qc = query_block(ctx, H, Tq, Tk, 2 * sizeof(float));
    pool_tmp pbuf(ctx), dpbuf(ctx);
    MOOD_TRY(pbuf.alloc((size_t)H * qc * Tk * sizeof(float)));
    MOOD_TRY(dpbuf.alloc((size_t)H * qc * Tk * sizeof(float)));
    for (int b = 0; b < B; b++)
        for (int i0 = 0; i0 < Tq; i0 += qc)
            MOOD_TRY(backward_block(ctx, dq, dk, dv, dout, q, k, v, b, i0, min(qc, Tq - i0), qc, H,
                                    Tq, Tk, D, causal, scale, pbuf.f(), dpbuf.f()));
    return 0;
}
