/*
 * ops.c: the CPU backend's layer functions (engine/cpu/ops.h) over flat float32 buffers, with
 * OpenBLAS for the matrix products and OpenMP over independent outputs. Each function mirrors
 * the torch / diffusers operation named beside it.
 *
 * Results do not depend on the thread count: every reduction (norm statistics, softmax sums)
 * runs in one fixed order inside one thread, and matrix products are cut into tiles fixed by
 * the sizes, each one single-threaded sgemm (OpenBLAS's own threading changes the last bits
 * with the thread count). Per-thread scratch (convolution columns, attention scores) is counted
 * for omp_get_num_procs() threads, so a size queried once stays valid.
 */
#include "engine/cpu/ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "engine/cpu/ops_internal.h"

/* Elementwise loops below this size run on one thread (the fork costs more than the work). */
#define PAR_MIN ((size_t)1 << 15)

/* ----- helpers ----------------------------------------------------------------------------- */

/* ----- matrix products ---------------------------------------------------------------------- */

/* Threads a parallel region uses: omp_get_max_threads(), but at most the processors available,
 * which is what per-thread scratch is counted for (mood__ops_scratch_threads), so a scratch sized
 * once stays large enough whatever omp_set_num_threads says later. */
int mood__ops_scratch_threads(void)
{
    return omp_get_num_procs();
}

int mood__ops_threads(void)
{
    int nt = omp_get_max_threads(), np = mood__ops_scratch_threads();
    return nt < np ? nt : np;
}

/* Makes OpenBLAS calls from the current task single-threaded. OpenBLAS's OpenMP build runs one
 * thread inside an active parallel region, but a team of one is not active and it would then
 * take omp_get_max_threads() threads; the setting lasts until the task (the loop body) ends. */
void mood__ops_blas_one_thread(void)
{
    omp_set_num_threads(1);
}

/* Tile length along a dimension of `dim`: about 16 tiles, 64 to 512 long. */
static int gemm_tile(int dim)
{
    int t = (dim + 15) / 16;
    t = (t + 15) / 16 * 16;
    return t < 64 ? 64 : t > 512 ? 512 : t;
}

/* C (M x N) = alpha A (M x K) op(B) + beta C, op(B) = B (K x N) or B^T (B stored N x K).
 * OpenBLAS's own threading splits the product differently for each thread count and the last
 * bits of the results move with it, so the product is cut here into tiles that depend on the
 * sizes alone (along the longer of M and N, so the operand every tile repacks is the smaller),
 * and each tile is one single-threaded sgemm (see mood__ops_blas_one_thread). */
static void gemm(int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    int split_m = M >= N, dim = split_m ? M : N, tile = gemm_tile(dim);
    int ntiles = (dim + tile - 1) / tile;
    CBLAS_TRANSPOSE tb = transB ? CblasTrans : CblasNoTrans;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntiles; t++) {
        mood__ops_blas_one_thread();
        int i0 = t * tile, n = dim - i0 < tile ? dim - i0 : tile;
        if (split_m)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, n, N, K, alpha, A + (size_t)i0 * lda, lda,
                        B, ldb, beta, C + (size_t)i0 * ldc, ldc);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, M, n, K, alpha, A, lda,
                        B + (transB ? (size_t)i0 * ldb : (size_t)i0), ldb, beta, C + i0, ldc);
    }
}

/* torch.nn.functional.linear: out = bias + inp w^T (bias copied first, then beta 1). */
void mood_op_linear(float *out, const float *inp, const float *w, const float *bias, size_t N,
                    int IC, int OC)
{
    if (N == 0 || OC == 0)
        return;
    if (bias) {
#pragma omp parallel for schedule(static) if (N * OC >= PAR_MIN)
        for (size_t i = 0; i < N; i++)
            memcpy(out + i * OC, bias, (size_t)OC * sizeof *out);
    }
    gemm(1, (int)N, OC, IC, 1.0f, inp, IC, w, IC, bias ? 1.0f : 0.0f, out, OC);
}

/* ----- convolution -------------------------------------------------------------------------- */

int mood_op_conv2d_out_h(const mood_conv2d_dims *d)
{
    return (d->h + 2 * d->pad - d->k) / d->stride + 1;
}

int mood_op_conv2d_out_w(const mood_conv2d_dims *d)
{
    return (d->w + 2 * d->pad - d->k) / d->stride + 1;
}

static int conv_is_direct(const mood_conv2d_dims *d)
{
    return d->k == 1 && d->stride == 1 && d->pad == 0;
}

/* A convolution is cut into tasks (sample, tile of output positions, tile of output channels).
 * Each task builds the column matrix of its positions in its thread's scratch and multiplies it
 * in one single-threaded sgemm: the columns are still in cache when used, each thread's scratch
 * stays near CONV_COL_FLOATS however large the image, and the split depends on the sizes
 * alone. */
#define CONV_COL_FLOATS ((size_t)1 << 20)

typedef struct conv_plan {
    int K;       /* rows of the column matrix: in_c * k * k */
    size_t ohw;  /* output positions per sample */
    size_t tn;   /* positions per tile */
    int ntn;     /* position tiles per sample */
    int tm, ntm; /* output channels per tile, channel tiles */
} conv_plan;

static conv_plan conv_plan_of(const mood_conv2d_dims *d)
{
    conv_plan p;
    int oh = mood_op_conv2d_out_h(d), ow = mood_op_conv2d_out_w(d);
    p.K = d->in_c * d->k * d->k;
    /* no output (or no input channel, or no output channel): nothing to do */
    p.ohw = oh > 0 && ow > 0 && p.K > 0 && d->out_c > 0 ? (size_t)oh * ow : 0;
    size_t tn = CONV_COL_FLOATS / (size_t)(p.K > 0 ? p.K : 1) / 16 * 16;
    tn = tn < 64 ? 64 : tn > 512 ? 512 : tn;
    p.tn = tn < p.ohw ? tn : p.ohw;
    p.ntn = p.tn ? (int)((p.ohw + p.tn - 1) / p.tn) : 0;
    /* Small images: split the channels too, so there are tasks for several threads. */
    int nm = 1;
    while ((size_t)d->batch * p.ntn * nm < 16 && d->out_c / (2 * nm) >= 32)
        nm *= 2;
    p.tm = (d->out_c + nm - 1) / nm;
    p.ntm = p.tm > 0 ? (d->out_c + p.tm - 1) / p.tm : 0;
    return p;
}

size_t mood_op_conv2d_scratch(const mood_conv2d_dims *d)
{
    if (conv_is_direct(d))
        return 0;
    conv_plan p = conv_plan_of(d);
    return (size_t)mood__ops_scratch_threads() * p.K * p.tn;
}

/* dst[0..cnt) = one input row sampled at ix = (ox0 + j) s - off, zero where ix is outside
 * [0, W): the zero edges and the copied middle are found first, so the copy has no tests. */
static void im2col_row(float *dst, const float *srow, int W, int s, int off, int ox0, int cnt)
{
    /* first and last j whose ix is inside the row */
    int lo = off > ox0 * s ? (off - ox0 * s + s - 1) / s : 0;
    int hi = W - 1 + off - ox0 * s < 0 ? -1 : (W - 1 + off - ox0 * s) / s;
    lo = lo < cnt ? lo : cnt;
    hi = hi < cnt - 1 ? hi : cnt - 1;
    if (hi < lo) {
        memset(dst, 0, (size_t)cnt * sizeof *dst);
        return;
    }
    memset(dst, 0, (size_t)lo * sizeof *dst);
    const float *x = srow + (ox0 + lo) * s - off;
    if (s == 1)
        memcpy(dst + lo, x, (size_t)(hi - lo + 1) * sizeof *dst);
    else
        for (int j = lo; j <= hi; j++)
            dst[j] = x[(j - lo) * s];
    memset(dst + hi + 1, 0, (size_t)(cnt - hi - 1) * sizeof *dst);
}

/* col (IC*k*k x n) = the input patches of output positions p0..p0+n of one sample; row
 * (c, ky, kx) holds inp[c][oy*s - pad + ky][ox*s - pad + kx], zero outside the image. */
void mood__ops_im2col(float *col, const float *inp, const mood_conv2d_dims *d, size_t p0, size_t n)
{
    int k = d->k, s = d->stride, pad = d->pad, H = d->h, W = d->w;
    int OW = mood_op_conv2d_out_w(d);
    int rows = d->in_c * k * k;
    for (int r = 0; r < rows; r++) {
        int c = r / (k * k), ky = r / k % k, kx = r % k;
        const float *src = inp + (size_t)c * H * W;
        float *dst = col + (size_t)r * n;
        size_t p = p0, end = p0 + n;
        while (p < end) {
            int oy = (int)(p / OW), ox0 = (int)(p % OW);
            int cnt = (int)(end - p < (size_t)(OW - ox0) ? end - p : (size_t)(OW - ox0));
            int iy = oy * s - pad + ky;
            if (iy < 0 || iy >= H)
                memset(dst, 0, (size_t)cnt * sizeof *dst);
            else
                im2col_row(dst, src + (size_t)iy * W, W, s, pad - kx, ox0, cnt);
            dst += cnt;
            p += (size_t)cnt;
        }
    }
}

/* out[b] (OC x OHW) = bias + w (OC x IC*k*k) · col, task by task (see conv_plan). */
void mood_op_conv2d(float *out, const float *inp, const float *w, const float *bias,
                    const mood_conv2d_dims *d, float *scratch)
{
    conv_plan p = conv_plan_of(d);
    if (p.ohw == 0)
        return;
    size_t hw = (size_t)d->h * d->w;
    int direct = conv_is_direct(d), ntask = d->batch * p.ntn * p.ntm;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int m = t % p.ntm, pt = t / p.ntm % p.ntn, b = t / p.ntm / p.ntn;
        int oc0 = m * p.tm, noc = d->out_c - oc0 < p.tm ? d->out_c - oc0 : p.tm;
        size_t p0 = (size_t)pt * p.tn, n = p.ohw - p0 < p.tn ? p.ohw - p0 : p.tn;
        const float *x = inp + (size_t)b * d->in_c * hw;
        float *o = out + ((size_t)b * d->out_c + oc0) * p.ohw + p0;
        const float *col = x + p0;
        int ldb = (int)hw;
        if (!direct) {
            float *s = scratch + (size_t)omp_get_thread_num() * p.K * p.tn;
            mood__ops_im2col(s, x, d, p0, n);
            col = s;
            ldb = (int)n;
        }
        if (bias)
            for (int c = 0; c < noc; c++)
                for (size_t j = 0; j < n; j++)
                    o[(size_t)c * p.ohw + j] = bias[oc0 + c];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, noc, (int)n, p.K, 1.0f,
                    w + (size_t)oc0 * p.K, p.K, col, ldb, bias ? 1.0f : 0.0f, o, (int)p.ohw);
    }
}

/* ----- normalisation ------------------------------------------------------------------------ */

/* Partial sums of the statistics: MOM_LANES of them, added in a fixed order at the end, so the
 * loops vectorise and the result is the same at any vector width. */
#define MOM_LANES 8

/* Sum of (x[i] - shift)^p over n floats in double, p = 1 or 2. */
OPS_VECTOR_CLONES static double sum_pow(const float *x, size_t n, double shift, int p)
{
    double part[MOM_LANES] = {0};
    size_t nv = n / MOM_LANES * MOM_LANES;
    for (size_t i = 0; i < nv; i += MOM_LANES) {
#pragma omp simd
        for (int l = 0; l < MOM_LANES; l++) {
            double t = x[i + l] - shift;
            part[l] += p == 1 ? t : t * t;
        }
    }
    double sum = 0;
    for (int l = 0; l < MOM_LANES; l++)
        sum += part[l];
    for (size_t i = nv; i < n; i++) {
        double t = x[i] - shift;
        sum += p == 1 ? t : t * t;
    }
    return sum;
}

/* Mean and 1/sqrt(biased variance + eps) of x[0..n), two passes in double. */
static void moments(const float *x, size_t n, float eps, double *mean, float *rstd)
{
    double m = sum_pow(x, n, 0.0, 1) / (double)n;
    double v = sum_pow(x, n, m, 2) / (double)n;
    *mean = m;
    *rstd = (float)(1.0 / sqrt(v + eps));
}

/* torch.nn.functional.group_norm; one thread per (sample, group). */
void mood_op_group_norm(float *out, const float *inp, const float *w, const float *b, int B, int C,
                        size_t HW, int groups, float eps, float *mean_out, float *rstd_out)
{
    int cg = C / groups;
    size_t gsize = (size_t)cg * HW;
#pragma omp parallel for schedule(static)
    for (int bg = 0; bg < B * groups; bg++) {
        const float *x = inp + (size_t)bg * gsize;
        float *o = out + (size_t)bg * gsize;
        double mean;
        float rstd;
        moments(x, gsize, eps, &mean, &rstd);
        float fm = (float)mean;
        for (int c = 0; c < cg; c++) {
            int ch = bg % groups * cg + c;
            float sc = rstd * (w ? w[ch] : 1.0f), sh = b ? b[ch] : 0.0f;
            const float *xc = x + (size_t)c * HW;
            float *oc = o + (size_t)c * HW;
#pragma omp simd
            for (size_t i = 0; i < HW; i++)
                oc[i] = (xc[i] - fm) * sc + sh;
        }
        if (mean_out)
            mean_out[bg] = fm;
        if (rstd_out)
            rstd_out[bg] = rstd;
    }
}

/* torch.nn.functional.layer_norm over the last dimension; one thread per row. */
void mood_op_layer_norm(float *out, const float *inp, const float *w, const float *b, size_t N,
                        int C, float eps, float *mean_out, float *rstd_out)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        const float *x = inp + i * C;
        float *o = out + i * C;
        double mean;
        float rstd;
        moments(x, (size_t)C, eps, &mean, &rstd);
        float fm = (float)mean;
        if (w && b) {
#pragma omp simd
            for (int c = 0; c < C; c++)
                o[c] = (x[c] - fm) * rstd * w[c] + b[c];
        } else {
            for (int c = 0; c < C; c++)
                o[c] = (x[c] - fm) * rstd * (w ? w[c] : 1.0f) + (b ? b[c] : 0.0f);
        }
        if (mean_out)
            mean_out[i] = fm;
        if (rstd_out)
            rstd_out[i] = rstd;
    }
}

/* ----- elementwise -------------------------------------------------------------------------- */

static float gelu1(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* x / (1 + exp(-a x)) over n floats: silu (a = 1) and quick_gelu (a = 1.702). */
OPS_VECTOR_CLONES static void sigmoid_gate(float *out, const float *inp, size_t n, float a)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] / (1.0f + exp_poly(-a * inp[i]));
}

/* Runs sigmoid_gate over n floats in chunks spread over the threads. */
static void sigmoid_gate_par(float *out, const float *inp, size_t n, float a)
{
    size_t chunk = (size_t)1 << 14;
    long nc = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long c = 0; c < nc; c++) {
        size_t i0 = (size_t)c * chunk;
        sigmoid_gate(out + i0, inp + i0, n - i0 < chunk ? n - i0 : chunk, a);
    }
}

void mood_op_silu(float *out, const float *inp, size_t n)
{
    sigmoid_gate_par(out, inp, n, 1.0f);
}

void mood_op_gelu(float *out, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = gelu1(inp[i]);
}

void mood_op_quick_gelu(float *out, const float *inp, size_t n)
{
    sigmoid_gate_par(out, inp, n, 1.702f);
}

void mood_op_geglu(float *out, const float *inp, size_t N, int F)
{
#pragma omp parallel for schedule(static) if (N * F >= PAR_MIN)
    for (size_t i = 0; i < N; i++) {
        const float *a = inp + i * 2 * F, *g = a + F;
        float *o = out + i * F;
        for (int j = 0; j < F; j++)
            o[j] = a[j] * gelu1(g[j]);
    }
}

void mood_op_add_inplace(float *out, const float *inp, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] += inp[i];
}

void mood_op_add(float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void mood_op_add_channel_bias(float *x, const float *v, int B, int C, size_t HW)
{
#pragma omp parallel for schedule(static) if ((size_t)B * C * HW >= PAR_MIN)
    for (int bc = 0; bc < B * C; bc++) {
        float *xc = x + (size_t)bc * HW;
        float t = v[bc];
#pragma omp simd
        for (size_t i = 0; i < HW; i++)
            xc[i] += t;
    }
}

/* ----- attention ---------------------------------------------------------------------------- */

/* Query rows per task: each (sample, head, block of ATT_QB query rows) is one independent task
 * with its own ATT_QB x Tk score block, so scratch stays small at 4096 tokens and a single-head
 * VAE attention still spreads over the threads. */
#define ATT_QB 128

size_t mood_op_attention_scratch(int Tq, int Tk)
{
    size_t qb = Tq < ATT_QB ? (size_t)Tq : ATT_QB;
    return (size_t)mood__ops_scratch_threads() * qb * (size_t)Tk;
}

/* Lanes of the softmax sum: a fixed number of partial sums, added in a fixed order, so the
 * result is the same whatever vector width the compiler picks. */
#define SM_LANES 16

/* Unnormalised softmax of row[0..n) in place: exp(x - max), float32; row[n..len) = 0. Returns
 * 1 / the sum, by which the row's output is scaled after the product with v (D multiplies
 * instead of n). */
OPS_VECTOR_CLONES float mood__ops_softmax_row(float *row, int n, int len)
{
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < n; j++)
        mx = row[j] > mx ? row[j] : mx;
    float part[SM_LANES] = {0};
    int nv = n / SM_LANES * SM_LANES;
    for (int j = 0; j < nv; j += SM_LANES) {
#pragma omp simd
        for (int l = 0; l < SM_LANES; l++) {
            float e = exp_poly(row[j + l] - mx);
            row[j + l] = e;
            part[l] += e;
        }
    }
    for (int j = nv; j < n; j++) {
        row[j] = exp_poly(row[j] - mx);
        part[j - nv] += row[j];
    }
    double sum = 0;
    for (int l = 0; l < SM_LANES; l++)
        sum += part[l];
    for (int j = n; j < len; j++)
        row[j] = 0;
    return (float)(1.0 / sum);
}

/* One task: query rows [i0, i0+m) of (sample b, head h). Under a causal mask only keys below
 * i0+m can be seen, so the products stop there (at Tk: the header asks Tq == Tk for causal). */
static void attention_block(float *out, const float *q, const float *k, const float *v, int H,
                            int Tq, int Tk, int D, int causal, float scale, int b, int h, int i0,
                            int m, float *s)
{
    size_t ld = (size_t)H * D;
    size_t qoff = ((size_t)b * Tq + i0) * ld + (size_t)h * D;
    size_t koff = (size_t)b * Tk * ld + (size_t)h * D;
    int nk = causal && i0 + m < Tk ? i0 + m : Tk;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, D, scale, q + qoff, (int)ld,
                k + koff, (int)ld, 0.0f, s, nk);
    float inv[ATT_QB];
    for (int i = 0; i < m; i++)
        inv[i] = mood__ops_softmax_row(s + (size_t)i * nk,
                                       causal && i0 + i + 1 < nk ? i0 + i + 1 : nk, nk);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, nk, 1.0f, s, nk, v + koff, (int)ld,
                0.0f, out + qoff, (int)ld);
    for (int i = 0; i < m; i++) {
        float *o = out + qoff + (size_t)i * ld;
        for (int j = 0; j < D; j++)
            o[j] *= inv[i];
    }
}

void mood_op_attention(float *out, const float *q, const float *k, const float *v, int B, int H,
                       int Tq, int Tk, int D, int causal, float scale, float *scratch)
{
    if (B <= 0 || H <= 0 || Tq <= 0 || Tk <= 0 || D <= 0)
        return;
    if (scale == 0.0f)
        scale = 1.0f / sqrtf((float)D);
    int qb = Tq < ATT_QB ? Tq : ATT_QB;
    int nblk = (Tq + qb - 1) / qb;
    int ntask = B * H * nblk;
    size_t per_thread = (size_t)qb * Tk;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int blk = t % nblk, h = t / nblk % H, b = t / nblk / H;
        int i0 = blk * qb, m = Tq - i0 < qb ? Tq - i0 : qb;
        float *s = scratch + (size_t)omp_get_thread_num() * per_thread;
        attention_block(out, q, k, v, H, Tq, Tk, D, causal, scale, b, h, i0, m, s);
    }
}

/* ----- layout ------------------------------------------------------------------------------- */

/* Transposes of (B x R x S) -> (B x S x R), in tiles so both sides stay in cache. */
#define TR_TILE 32

static void transpose_batched(float *out, const float *inp, int B, size_t R, size_t S)
{
    size_t rt = (R + TR_TILE - 1) / TR_TILE;
    long ntiles = (long)(B * rt);
#pragma omp parallel for schedule(static) if ((size_t)B * R * S >= PAR_MIN)
    for (long t = 0; t < ntiles; t++) {
        size_t b = (size_t)t / rt, r0 = (size_t)t % rt * TR_TILE;
        size_t r1 = r0 + TR_TILE < R ? r0 + TR_TILE : R;
        const float *x = inp + b * R * S;
        float *y = out + b * R * S;
        for (size_t s0 = 0; s0 < S; s0 += TR_TILE) {
            size_t s1 = s0 + TR_TILE < S ? s0 + TR_TILE : S;
            for (size_t r = r0; r < r1; r++)
                for (size_t s = s0; s < s1; s++)
                    y[s * R + r] = x[r * S + s];
        }
    }
}

void mood_op_nchw_to_nhwc(float *out, const float *inp, int B, int C, size_t HW)
{
    transpose_batched(out, inp, B, (size_t)C, HW);
}

void mood_op_nhwc_to_nchw(float *out, const float *inp, int B, int C, size_t HW)
{
    transpose_batched(out, inp, B, HW, (size_t)C);
}

void mood_op_upsample_nearest2x(float *out, const float *inp, int BC, int H, int W)
{
#pragma omp parallel for schedule(static) if ((size_t)BC * H * W >= PAR_MIN)
    for (long r = 0; r < (long)BC * H; r++) {
        const float *x = inp + (size_t)r * W;
        float *y = out + (size_t)r * 4 * W; /* output rows 2r and 2r+1 */
        for (int j = 0; j < W; j++)
            y[2 * j] = y[2 * j + 1] = x[j];
        memcpy(y + 2 * W, y, (size_t)2 * W * sizeof *y);
    }
}

/* ----- embeddings and small helpers --------------------------------------------------------- */

/* diffusers.models.embeddings.get_timestep_embedding (scale 1), in its float32 order:
 * exponent = float(-ln max_period) * i / (half - shift); freq = exp(exponent); arg = t * freq.
 * exp, sin and cos are taken in double and rounded once (torch's MKL exp is within an ulp of
 * that, not reproducible bit for bit; at t ~ 1000 an ulp of freq moves the result by ~6e-5). */
void mood_op_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                                float shift, float max_period)
{
    int half = dim / 2;
    float neg_log = (float)-log((double)max_period);
    float denom = (float)half - shift;
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * dim;
        float *sin_part = flip_sin_to_cos ? o + half : o;
        float *cos_part = flip_sin_to_cos ? o : o + half;
        for (int i = 0; i < half; i++) {
            float e = neg_log * (float)i / denom;
            float arg = t[b] * (float)exp((double)e);
            sin_part[i] = (float)sin((double)arg);
            cos_part[i] = (float)cos((double)arg);
        }
        if (dim % 2)
            o[dim - 1] = 0.0f;
    }
}

void mood_op_concat_channels(float *out, const float *a, int Ca, const float *b, int Cb, int B,
                             size_t HW)
{
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    for (int i = 0; i < B; i++) {
        memcpy(out + i * (na + nb), a + i * na, na * sizeof *out);
        memcpy(out + i * (na + nb) + na, b + i * nb, nb * sizeof *out);
    }
}

void mood_op_lora_linear(float *out, const float *inp, const float *down, const float *up, int rank,
                         float scale, size_t N, int IC, int OC, float *tmp)
{
    if (N == 0 || rank == 0)
        return;
    gemm(1, (int)N, rank, IC, 1.0f, inp, IC, down, IC, 0.0f, tmp, rank);
    gemm(1, (int)N, OC, rank, scale, tmp, rank, up, rank, 1.0f, out, OC);
}
