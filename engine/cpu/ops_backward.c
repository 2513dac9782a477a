/*
 * ops_backward.c: the backward passes of the CPU layer functions (engine/cpu/ops.h, section
 * "backward"), for training. Each one mirrors torch autograd's gradient of the forward function
 * of the same name; gradients are ADDED to the caller's buffers, and a NULL gradient pointer
 * skips that gradient's work.
 *
 * As in ops.c, results do not depend on the thread count: work is split over independent outputs
 * in pieces fixed by the sizes, each matrix product is one single-threaded sgemm per piece, and
 * every reduction (over the batch, positions, tokens, query rows) runs in one fixed order inside
 * one task. Per-thread scratch is counted for mood__ops_scratch_threads() threads.
 */
#include "engine/cpu/ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "engine/cpu/ops_internal.h"

/* Elementwise loops below this size run on one thread (the fork costs more than the work). */
#define PAR_MIN ((size_t)1 << 15)

/* Partial sums of a reduction: LANES of them in double, added in a fixed order at the end, so
 * the loops vectorise and the result is the same at any vector width. */
#define LANES 8

static size_t min_z(size_t a, size_t b)
{
    return a < b ? a : b;
}

static int min_i(int a, int b)
{
    return a < b ? a : b;
}

/* ----- matrix products ---------------------------------------------------------------------- */

/* Tile length along a dimension of `dim`: about 16 tiles, 64 to 512 long (as ops.c). */
static int gemm_tile(int dim)
{
    int t = (dim + 15) / 16;
    t = (t + 15) / 16 * 16;
    return t < 64 ? 64 : t > 512 ? 512 : t;
}

/* C (M x N) = alpha op(A) op(B) + beta C; op(A) = A (M x K, ta 0) or A^T (A stored K x M, ta 1),
 * op(B) = B (K x N, tb 0) or B^T (B stored N x K, tb 1). Cut into tiles of rows or of columns of
 * C that depend on the sizes alone (along the longer side), each one single-threaded sgemm that
 * holds the whole sum over K, so the bits do not depend on the thread count. */
static void gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) { /* an empty sum: C = beta C */
        if (beta != 1.0f)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++)
                    C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    int split_m = M >= N, dim = split_m ? M : N, tile = gemm_tile(dim);
    int ntiles = (dim + tile - 1) / tile;
    CBLAS_TRANSPOSE tA = ta ? CblasTrans : CblasNoTrans, tB = tb ? CblasTrans : CblasNoTrans;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntiles; t++) {
        mood__ops_blas_one_thread();
        int i0 = t * tile, n = min_i(dim - i0, tile);
        if (split_m)
            cblas_sgemm(CblasRowMajor, tA, tB, n, N, K, alpha, ta ? A + i0 : A + (size_t)i0 * lda,
                        lda, B, ldb, beta, C + (size_t)i0 * ldc, ldc);
        else
            cblas_sgemm(CblasRowMajor, tA, tB, M, n, K, alpha, A, lda,
                        tb ? B + (size_t)i0 * ldb : B + i0, ldb, beta, C + i0, ldc);
    }
}

/* Sum of x[0..n) in double (LANES partial sums). */
OPS_VECTOR_CLONES static double sum_d(const float *x, size_t n)
{
    double part[LANES] = {0};
    size_t nv = n / LANES * LANES;
    for (size_t i = 0; i < nv; i += LANES) {
#pragma omp simd
        for (int l = 0; l < LANES; l++)
            part[l] += x[i + l];
    }
    double s = 0;
    for (int l = 0; l < LANES; l++)
        s += part[l];
    for (size_t i = nv; i < n; i++)
        s += x[i];
    return s;
}

/* acc[j] += sum over rows i of x[i][j], x (rows x cols): blocks of COL_BLOCK columns are
 * independent tasks, each summing its rows in order, in double. */
#define COL_BLOCK 64

static void column_sums(float *acc, const float *x, size_t rows, int cols)
{
    int nblk = (cols + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (rows * (size_t)cols >= PAR_MIN)
    for (int t = 0; t < nblk; t++) {
        int j0 = t * COL_BLOCK, nj = min_i(cols - j0, COL_BLOCK);
        double s[COL_BLOCK] = {0};
        for (size_t i = 0; i < rows; i++) {
            const float *r = x + i * cols + j0;
#pragma omp simd
            for (int j = 0; j < nj; j++)
                s[j] += r[j];
        }
        for (int j = 0; j < nj; j++)
            acc[j0 + j] += (float)s[j];
    }
}

/* y = x w^T + b: dinp += dout w, dw += dout^T inp, dbias += dout summed over rows. */
void mood_op_linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                             const float *inp, const float *w, size_t N, int IC, int OC)
{
    if (N == 0 || IC <= 0 || OC <= 0)
        return;
    if (dinp)
        gemm(0, 0, (int)N, IC, OC, 1.0f, dout, OC, w, IC, 1.0f, dinp, IC);
    if (dw)
        gemm(1, 0, OC, IC, (int)N, 1.0f, dout, OC, inp, IC, 1.0f, dw, IC);
    if (dbias)
        column_sums(dbias, dout, N, OC);
}

/* ----- convolution -------------------------------------------------------------------------- */

/* Both gradients are cut by input channels. The input gradient: a task (sample, tile of tc input
 * channels) computes, one tile of tn output positions after another, the column gradient of its
 * channels' k*k rows (w^T dout) and scatters it back onto its channels (col2im), so no two tasks
 * write the same input value. The weight gradient: a task (tile of tm output channels, tile of
 * tc input channels) owns that block of dw and adds dout · columns^T over the samples and the
 * position tiles in order. Each task's columns stay near CONVB_COL_FLOATS floats. */
#define CONVB_COL_FLOATS ((size_t)1 << 20)
#define CONVB_TASKS      16

typedef struct convb_plan {
    int kk, K;   /* k * k; in_c * k * k: columns of w */
    size_t ohw;  /* output positions per sample (0: nothing to do) */
    size_t tn;   /* positions per tile */
    int ntn;     /* position tiles per sample */
    int tc, ntc; /* input channels per tile, channel tiles */
    int tm, ntm; /* output channels per weight-gradient task, their tiles */
} convb_plan;

static int conv_is_direct(const mood_conv2d_dims *d)
{
    return d->k == 1 && d->stride == 1 && d->pad == 0;
}

static convb_plan convb_plan_of(const mood_conv2d_dims *d)
{
    convb_plan p;
    int oh = mood_op_conv2d_out_h(d), ow = mood_op_conv2d_out_w(d);
    p.kk = d->k * d->k;
    p.K = d->in_c * p.kk;
    p.ohw = oh > 0 && ow > 0 && p.K > 0 && d->out_c > 0 && d->batch > 0 ? (size_t)oh * ow : 0;
    p.tn = min_z(p.ohw, 512);
    p.ntn = p.tn ? (int)((p.ohw + p.tn - 1) / p.tn) : 0;
    /* Channel tiles: within the column budget, then halved while there are few tasks and the
     * products stay at least 64 rows tall. */
    int tc = d->in_c > 0 ? d->in_c : 1;
    while (tc > 1 && (size_t)tc * p.kk * p.tn > CONVB_COL_FLOATS)
        tc = (tc + 1) / 2;
    while (d->batch * ((d->in_c + tc - 1) / tc) < CONVB_TASKS && (tc + 1) / 2 * p.kk >= 64 &&
           tc > 1)
        tc = (tc + 1) / 2;
    p.tc = tc;
    p.ntc = (d->in_c + tc - 1) / tc;
    int nm = 1;
    while (p.ntc * nm < CONVB_TASKS && d->out_c / (2 * nm) >= 32)
        nm *= 2;
    p.tm = (d->out_c + nm - 1) / nm;
    p.ntm = p.tm > 0 ? (d->out_c + p.tm - 1) / p.tm : 0;
    return p;
}

size_t mood_op_conv2d_backward_scratch(const mood_conv2d_dims *d)
{
    if (conv_is_direct(d))
        return 0;
    convb_plan p = convb_plan_of(d);
    return (size_t)mood__ops_scratch_threads() * p.tc * p.kk * p.tn;
}

/* dst[ix] += src[j] for the j in [0, cnt) whose ix = (ox0 + j) s - off is inside [0, W): the
 * reverse of ops.c's im2col_row, its edges found first so the loop has no tests. */
static void col2im_row(float *drow, const float *src, int W, int s, int off, int ox0, int cnt)
{
    int lo = off > ox0 * s ? (off - ox0 * s + s - 1) / s : 0;
    int hi = W - 1 + off - ox0 * s < 0 ? -1 : (W - 1 + off - ox0 * s) / s;
    hi = min_i(hi, cnt - 1);
    if (hi < lo)
        return;
    float *x = drow + (ox0 + lo) * s - off;
    if (s == 1) {
#pragma omp simd
        for (int j = lo; j <= hi; j++)
            x[j - lo] += src[j];
    } else {
        for (int j = lo; j <= hi; j++)
            x[(j - lo) * s] += src[j];
    }
}

/* dinp (in_c x h x w, one sample's channels as d->in_c says) += the column gradient col
 * (in_c*k*k x n) of output positions p0..p0+n: the adjoint of mood__ops_im2col. */
static void col2im_add(float *dinp, const float *col, const mood_conv2d_dims *d, size_t p0,
                       size_t n)
{
    int k = d->k, s = d->stride, pad = d->pad, H = d->h, W = d->w;
    int OW = mood_op_conv2d_out_w(d);
    int rows = d->in_c * k * k;
    for (int r = 0; r < rows; r++) {
        int c = r / (k * k), ky = r / k % k, kx = r % k;
        float *dst = dinp + (size_t)c * H * W;
        const float *src = col + (size_t)r * n;
        size_t p = p0, end = p0 + n;
        while (p < end) {
            int oy = (int)(p / OW), ox0 = (int)(p % OW);
            int cnt = (int)min_z(end - p, (size_t)(OW - ox0));
            int iy = oy * s - pad + ky;
            if (iy >= 0 && iy < H)
                col2im_row(dst + (size_t)iy * W, src, W, s, pad - kx, ox0, cnt);
            src += cnt;
            p += (size_t)cnt;
        }
    }
}

/* The input gradient, task by task (see convb_plan). */
static void conv_backward_input(float *dinp, const float *dout, const float *w,
                                const mood_conv2d_dims *d, const convb_plan *p, float *scratch)
{
    size_t hw = (size_t)d->h * d->w;
    int direct = conv_is_direct(d), ntask = d->batch * p->ntc;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int ct = t % p->ntc, b = t / p->ntc;
        int c0 = ct * p->tc, nc = min_i(d->in_c - c0, p->tc), rows = nc * p->kk;
        mood_conv2d_dims dc = *d;
        dc.in_c = nc;
        const float *dy = dout + (size_t)b * d->out_c * p->ohw;
        float *dx = dinp + ((size_t)b * d->in_c + c0) * hw;
        /* (no scratch for a direct convolution: it may be NULL) */
        float *col = direct ? NULL : scratch + (size_t)omp_get_thread_num() * p->tc * p->kk * p->tn;
        for (int pt = 0; pt < p->ntn; pt++) {
            size_t p0 = (size_t)pt * p->tn, n = min_z(p->ohw - p0, p->tn);
            if (direct) { /* the columns are the input itself: add w^T dout straight in */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, (int)n, d->out_c, 1.0f,
                            w + c0, p->K, dy + p0, (int)p->ohw, 1.0f, dx + p0, (int)hw);
                continue;
            }
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, (int)n, d->out_c, 1.0f,
                        w + (size_t)c0 * p->kk, p->K, dy + p0, (int)p->ohw, 0.0f, col, (int)n);
            col2im_add(dx, col, &dc, p0, n);
        }
    }
}

/* The weight gradient, task by task (see convb_plan). */
static void conv_backward_weight(float *dw, const float *dout, const float *inp,
                                 const mood_conv2d_dims *d, const convb_plan *p, float *scratch)
{
    size_t hw = (size_t)d->h * d->w;
    int direct = conv_is_direct(d), ntask = p->ntm * p->ntc;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int ct = t % p->ntc, m = t / p->ntc;
        int c0 = ct * p->tc, nc = min_i(d->in_c - c0, p->tc), rows = nc * p->kk;
        int oc0 = m * p->tm, noc = min_i(d->out_c - oc0, p->tm);
        mood_conv2d_dims dc = *d;
        dc.in_c = nc;
        float *s = direct ? NULL : scratch + (size_t)omp_get_thread_num() * p->tc * p->kk * p->tn;
        float *g = dw + (size_t)oc0 * p->K + (size_t)c0 * p->kk;
        for (int b = 0; b < d->batch; b++) {
            const float *x = inp + ((size_t)b * d->in_c + c0) * hw;
            const float *dy = dout + ((size_t)b * d->out_c + oc0) * p->ohw;
            for (int pt = 0; pt < p->ntn; pt++) {
                size_t p0 = (size_t)pt * p->tn, n = min_z(p->ohw - p0, p->tn);
                const float *col = x + p0;
                int ld = (int)hw;
                if (!direct) {
                    mood__ops_im2col(s, x, &dc, p0, n);
                    col = s;
                    ld = (int)n;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, noc, rows, (int)n, 1.0f,
                            dy + p0, (int)p->ohw, col, ld, 1.0f, g, p->K);
            }
        }
    }
}

/* dbias[o] += dout summed over samples and positions; one task per output channel. */
static void conv_backward_bias(float *dbias, const float *dout, const mood_conv2d_dims *d,
                               size_t ohw)
{
#pragma omp parallel for schedule(static) if ((size_t)d->batch * d->out_c * ohw >= PAR_MIN)
    for (int o = 0; o < d->out_c; o++) {
        double s = 0;
        for (int b = 0; b < d->batch; b++)
            s += sum_d(dout + ((size_t)b * d->out_c + o) * ohw, ohw);
        dbias[o] += (float)s;
    }
}

void mood_op_conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout,
                             const float *inp, const float *w, const mood_conv2d_dims *d,
                             float *scratch)
{
    convb_plan p = convb_plan_of(d);
    if (p.ohw == 0)
        return;
    if (dinp)
        conv_backward_input(dinp, dout, w, d, &p, scratch);
    if (dw)
        conv_backward_weight(dw, dout, inp, d, &p, scratch);
    if (dbias)
        conv_backward_bias(dbias, dout, d, p.ohw);
}

/* ----- normalisation ------------------------------------------------------------------------ */

/* Sums over n floats, in double (LANES partial sums): *s_dy += sum dy, *s_dyx += sum dy (x - m). */
OPS_VECTOR_CLONES static void dy_sums(const float *dy, const float *x, size_t n, float m,
                                      double *s_dy, double *s_dyx)
{
    double p1[LANES] = {0}, p2[LANES] = {0};
    size_t nv = n / LANES * LANES;
    for (size_t i = 0; i < nv; i += LANES) {
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            double g = dy[i + l];
            p1[l] += g;
            p2[l] += g * ((double)x[i + l] - m);
        }
    }
    double a = 0, b = 0;
    for (int l = 0; l < LANES; l++) {
        a += p1[l];
        b += p2[l];
    }
    for (size_t i = nv; i < n; i++) {
        a += dy[i];
        b += dy[i] * ((double)x[i] - m);
    }
    *s_dy += a;
    *s_dyx += b;
}

/* With xhat = (x - m) r and g = dout w over a normalised set of n values,
 * dx = r (g - mean(g) - xhat mean(g xhat)) = (w r) dout + cx (x - m) + c0 with
 * cx = -r^3 mean(g (x - m)) and c0 = -r mean(g), from s_g = sum(g), s_gx = sum(g (x - m)). */
static void norm_coefs(double s_g, double s_gx, size_t n, float r, float *cx, float *c0)
{
    double mg = s_g / (double)n, mgx = s_gx / (double)n;
    *cx = (float)(-(double)r * r * r * mgx);
    *c0 = (float)(-(double)r * mg);
}

/* torch's native_group_norm_backward; the input gradient with one task per (sample, group),
 * the affine gradients with one task per channel (summing over the samples in order). */
void mood_op_group_norm_backward(float *dinp, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, const float *mean,
                                 const float *rstd, int B, int C, size_t HW, int groups)
{
    if (B <= 0 || C <= 0 || groups <= 0 || HW == 0)
        return;
    int cg = C / groups;
    size_t gsize = (size_t)cg * HW;
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int bg = 0; bg < B * groups; bg++) {
            const float *x = inp + (size_t)bg * gsize, *dy = dout + (size_t)bg * gsize;
            float *dx = dinp + (size_t)bg * gsize;
            float m = mean[bg], r = rstd[bg], cx, c0;
            double s_g = 0, s_gx = 0;
            for (int c = 0; c < cg; c++) {
                double wc = w ? w[bg % groups * cg + c] : 1.0, a = 0, b = 0;
                dy_sums(dy + (size_t)c * HW, x + (size_t)c * HW, HW, m, &a, &b);
                s_g += wc * a;
                s_gx += wc * b;
            }
            norm_coefs(s_g, s_gx, gsize, r, &cx, &c0);
            for (int c = 0; c < cg; c++) {
                float a = (w ? w[bg % groups * cg + c] : 1.0f) * r;
                const float *xc = x + (size_t)c * HW, *gc = dy + (size_t)c * HW;
                float *dc = dx + (size_t)c * HW;
#pragma omp simd
                for (size_t i = 0; i < HW; i++)
                    dc[i] += a * gc[i] + (cx * (xc[i] - m) + c0);
            }
        }
    }
    if (!dw && !db)
        return;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double sw = 0, sb = 0;
        for (int b = 0; b < B; b++) {
            int bg = b * groups + c / cg;
            double a = 0, s = 0;
            size_t off = ((size_t)b * C + c) * HW;
            dy_sums(dout + off, inp + off, HW, mean[bg], &a, &s);
            sb += a;
            sw += s * rstd[bg];
        }
        if (dw)
            dw[c] += (float)sw;
        if (db)
            db[c] += (float)sb;
    }
}

/* The affine gradients of a layer norm: columns in blocks, rows summed in order. */
static void layer_norm_affine_backward(float *dw, float *db, const float *dout, const float *inp,
                                       const float *mean, const float *rstd, size_t N, int C)
{
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (N * (size_t)C >= PAR_MIN)
    for (int t = 0; t < nblk; t++) {
        int j0 = t * COL_BLOCK, nj = min_i(C - j0, COL_BLOCK);
        double sw[COL_BLOCK] = {0}, sb[COL_BLOCK] = {0};
        for (size_t i = 0; i < N; i++) {
            const float *x = inp + i * C + j0, *g = dout + i * C + j0;
            double m = mean[i], r = rstd[i];
#pragma omp simd
            for (int j = 0; j < nj; j++) {
                sw[j] += g[j] * ((x[j] - m) * r);
                sb[j] += g[j];
            }
        }
        for (int j = 0; j < nj; j++) {
            if (dw)
                dw[j0 + j] += (float)sw[j];
            if (db)
                db[j0 + j] += (float)sb[j];
        }
    }
}

/* torch's native_layer_norm_backward; the input gradient with one task per row. */
void mood_op_layer_norm_backward(float *dinp, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, const float *mean,
                                 const float *rstd, size_t N, int C)
{
    if (N == 0 || C <= 0)
        return;
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < N; i++) {
            const float *x = inp + i * C, *dy = dout + i * C;
            float *dx = dinp + i * C;
            float m = mean[i], r = rstd[i], cx, c0;
            double s_g = 0, s_gx = 0;
            for (int c = 0; c < C; c++) {
                double g = (double)dy[c] * (w ? w[c] : 1.0f);
                s_g += g;
                s_gx += g * ((double)x[c] - m);
            }
            norm_coefs(s_g, s_gx, (size_t)C, r, &cx, &c0);
            for (int c = 0; c < C; c++)
                dx[c] += (w ? w[c] : 1.0f) * r * dy[c] + (cx * (x[c] - m) + c0);
        }
    }
    if (dw || db)
        layer_norm_affine_backward(dw, db, dout, inp, mean, rstd, N, C);
}

/* ----- elementwise -------------------------------------------------------------------------- */

/* d/dx x sigmoid(a x) = s (1 + a x (1 - s)), s = sigmoid(a x): silu (a = 1), quick_gelu. */
OPS_VECTOR_CLONES static void sigmoid_gate_backward(float *dinp, const float *dout,
                                                    const float *inp, size_t n, float a)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], s = 1.0f / (1.0f + exp_poly(-a * x));
        dinp[i] += dout[i] * (s * (1.0f + a * x * (1.0f - s)));
    }
}

static void sigmoid_gate_backward_par(float *dinp, const float *dout, const float *inp, size_t n,
                                      float a)
{
    size_t chunk = (size_t)1 << 14;
    long nc = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long c = 0; c < nc; c++) {
        size_t i0 = (size_t)c * chunk;
        sigmoid_gate_backward(dinp + i0, dout + i0, inp + i0, min_z(n - i0, chunk), a);
    }
}

void mood_op_silu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
    sigmoid_gate_backward_par(dinp, dout, inp, n, 1.0f);
}

void mood_op_quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
    sigmoid_gate_backward_par(dinp, dout, inp, n, 1.702f);
}

static float gelu1(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* d/dx x Phi(x) = Phi(x) + x phi(x) (exact gelu). */
static float gelu_grad(float x)
{
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    return cdf + x * expf(-0.5f * x * x) * 0.39894228040143268f;
}

void mood_op_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dinp[i] += dout[i] * gelu_grad(inp[i]);
}

/* out = a gelu(gate): da = dout gelu(gate), dgate = dout a gelu'(gate). */
void mood_op_geglu_backward(float *dinp, const float *dout, const float *inp, size_t N, int F)
{
#pragma omp parallel for schedule(static) if (N * F >= PAR_MIN)
    for (size_t i = 0; i < N; i++) {
        const float *a = inp + i * 2 * F, *g = a + F, *dy = dout + i * F;
        float *da = dinp + i * 2 * F, *dg = da + F;
        for (int j = 0; j < F; j++) {
            da[j] += dy[j] * gelu1(g[j]);
            dg[j] += dy[j] * a[j] * gelu_grad(g[j]);
        }
    }
}

/* ----- attention ---------------------------------------------------------------------------- */

/* Query rows per block, as the forward pass. A task is one (sample, head): dk and dv sum over
 * every query row, so the head's blocks run in order inside it, each with its own ATTB_QB x Tk
 * probabilities and their gradient in the thread's scratch. (So B * H tasks: 8 or more for the
 * UNet's and the text encoder's attention; the single-head VAE attention, not trained, would run
 * on one thread.) */
#define ATTB_QB 128

size_t mood_op_attention_backward_scratch(int Tq, int Tk)
{
    size_t qb = Tq < ATTB_QB ? (size_t)(Tq > 0 ? Tq : 0) : ATTB_QB;
    return (size_t)mood__ops_scratch_threads() * 2 * qb * (size_t)(Tk > 0 ? Tk : 0);
}

/* dp[0..n) = p (dp - sum(p dp)): the softmax's backward for one row (double LANES sum). */
OPS_VECTOR_CLONES static void softmax_backward_row(float *dp, const float *p, int n)
{
    double part[LANES] = {0};
    int nv = n / LANES * LANES;
    for (int j = 0; j < nv; j += LANES) {
#pragma omp simd
        for (int l = 0; l < LANES; l++)
            part[l] += (double)p[j + l] * dp[j + l];
    }
    double s = 0;
    for (int l = 0; l < LANES; l++)
        s += part[l];
    for (int j = nv; j < n; j++)
        s += (double)p[j] * dp[j];
    float fs = (float)s;
#pragma omp simd
    for (int j = 0; j < n; j++)
        dp[j] = p[j] * (dp[j] - fs);
}

typedef struct att_args {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v;
    int H, Tq, Tk, D, causal;
    float scale;
} att_args;

/* Query rows [i0, i0+m) of (sample b, head h): P = softmax(scale q k^T) recomputed into p,
 * dP = dout v^T into dp, then dv += P^T dout, dS = P (dP - rowsum(P dP)), dq += scale dS k,
 * dk += scale dS^T q. Under a causal mask only keys below i0+m are seen. */
static void attention_backward_block(const att_args *a, int b, int h, int i0, int m, float *p,
                                     float *dp)
{
    int ld = a->H * a->D;
    size_t qoff = ((size_t)b * a->Tq + i0) * ld + (size_t)h * a->D;
    size_t koff = (size_t)b * a->Tk * ld + (size_t)h * a->D;
    int nk = a->causal && i0 + m < a->Tk ? i0 + m : a->Tk;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, a->D, a->scale, a->q + qoff, ld,
                a->k + koff, ld, 0.0f, p, nk);
    for (int i = 0; i < m; i++) {
        float *row = p + (size_t)i * nk;
        int n = a->causal && i0 + i + 1 < nk ? i0 + i + 1 : nk;
        float inv = mood__ops_softmax_row(row, n, nk);
#pragma omp simd
        for (int j = 0; j < n; j++)
            row[j] *= inv;
    }
    if (a->dv)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, a->D, m, 1.0f, p, nk,
                    a->dout + qoff, ld, 1.0f, a->dv + koff, ld);
    if (!a->dq && !a->dk)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, a->D, 1.0f, a->dout + qoff, ld,
                a->v + koff, ld, 0.0f, dp, nk);
    for (int i = 0; i < m; i++)
        softmax_backward_row(dp + (size_t)i * nk, p + (size_t)i * nk, nk);
    if (a->dq)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, a->D, nk, a->scale, dp, nk,
                    a->k + koff, ld, 1.0f, a->dq + qoff, ld);
    if (a->dk)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, a->D, m, a->scale, dp, nk,
                    a->q + qoff, ld, 1.0f, a->dk + koff, ld);
}

void mood_op_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, int B, int H, int Tq, int Tk, int D,
                                int causal, float scale, float *scratch)
{
    if (B <= 0 || H <= 0 || Tq <= 0 || Tk <= 0 || D <= 0 || (!dq && !dk && !dv))
        return;
    att_args a = {dq,
                  dk,
                  dv,
                  dout,
                  q,
                  k,
                  v,
                  H,
                  Tq,
                  Tk,
                  D,
                  causal,
                  scale == 0.0f ? 1.0f / sqrtf((float)D) : scale};
    int qb = min_i(Tq, ATTB_QB);
    size_t block = (size_t)qb * Tk;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < B * H; t++) {
        mood__ops_blas_one_thread();
        float *p = scratch + (size_t)omp_get_thread_num() * 2 * block, *dp = p + block;
        for (int i0 = 0; i0 < Tq; i0 += qb)
            attention_backward_block(&a, t / H, t % H, i0, min_i(Tq - i0, qb), p, dp);
    }
}

/* ----- layout ------------------------------------------------------------------------------- */

/* out (B x S x R) += inp (B x R x S) transposed, in tiles so both sides stay in cache; a task
 * owns a band of TR_TILE of the R columns of out. */
#define TR_TILE 32

static void transpose_add_batched(float *out, const float *inp, int B, size_t R, size_t S)
{
    size_t rt = (R + TR_TILE - 1) / TR_TILE;
    long ntiles = (long)(B * rt);
#pragma omp parallel for schedule(static) if ((size_t)B * R * S >= PAR_MIN)
    for (long t = 0; t < ntiles; t++) {
        size_t b = (size_t)t / rt, r0 = (size_t)t % rt * TR_TILE;
        size_t r1 = min_z(r0 + TR_TILE, R);
        const float *x = inp + b * R * S;
        float *y = out + b * R * S;
        for (size_t s0 = 0; s0 < S; s0 += TR_TILE) {
            size_t s1 = min_z(s0 + TR_TILE, S);
            for (size_t r = r0; r < r1; r++)
                for (size_t s = s0; s < s1; s++)
                    y[s * R + r] += x[r * S + s];
        }
    }
}

/* Forward (B x C x HW) -> (B x HW x C): the gradient goes back the other way. */
void mood_op_nchw_to_nhwc_backward(float *dinp, const float *dout, int B, int C, size_t HW)
{
    transpose_add_batched(dinp, dout, B, HW, (size_t)C);
}

void mood_op_nhwc_to_nchw_backward(float *dinp, const float *dout, int B, int C, size_t HW)
{
    transpose_add_batched(dinp, dout, B, (size_t)C, HW);
}

/* Each input value was copied to a 2x2 block: its gradient is the block's sum. */
void mood_op_upsample_nearest2x_backward(float *dinp, const float *dout, int BC, int H, int W)
{
#pragma omp parallel for schedule(static) if ((size_t)BC * H * W >= PAR_MIN)
    for (long r = 0; r < (long)BC * H; r++) {
        const float *y0 = dout + (size_t)r * 4 * W, *y1 = y0 + 2 * W; /* rows 2r and 2r+1 */
        float *x = dinp + (size_t)r * W;
        for (int j = 0; j < W; j++)
            x[j] += (y0[2 * j] + y0[2 * j + 1]) + (y1[2 * j] + y1[2 * j + 1]);
    }
}

void mood_op_add_channel_bias_backward(float *dv, const float *dout, int B, int C, size_t HW)
{
#pragma omp parallel for schedule(static) if ((size_t)B * C * HW >= PAR_MIN)
    for (int bc = 0; bc < B * C; bc++)
        dv[bc] += (float)sum_d(dout + (size_t)bc * HW, HW);
}

static void add_to(float *out, const float *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        out[i] += inp[i];
}

void mood_op_concat_channels_backward(float *da, float *db, const float *dout, int Ca, int Cb,
                                      int B, size_t HW)
{
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for schedule(static) if ((size_t)B * (na + nb) >= PAR_MIN)
    for (int i = 0; i < B; i++) {
        const float *g = dout + (size_t)i * (na + nb);
        if (da)
            add_to(da + (size_t)i * na, g, na);
        if (db)
            add_to(db + (size_t)i * nb, g + na, nb);
    }
}

/* out += scale (inp down^T) up^T; with tmp = inp down^T and dtmp = scale dout up:
 * dup += scale dout^T tmp, ddown += dtmp^T inp, dinp += dtmp down. */
void mood_op_lora_linear_backward(float *dinp, float *ddown, float *dup, const float *dout,
                                  const float *inp, const float *down, const float *up, int rank,
                                  float scale, size_t N, int IC, int OC, float *tmp, float *dtmp)
{
    if (N == 0 || rank <= 0 || IC <= 0 || OC <= 0)
        return;
    int n = (int)N;
    if (dup) {
        gemm(0, 1, n, rank, IC, 1.0f, inp, IC, down, IC, 0.0f, tmp, rank);
        gemm(1, 0, OC, rank, n, scale, dout, OC, tmp, rank, 1.0f, dup, rank);
    }
    if (!ddown && !dinp)
        return;
    gemm(0, 0, n, rank, OC, scale, dout, OC, up, rank, 0.0f, dtmp, rank);
    if (ddown)
        gemm(1, 0, rank, IC, n, 1.0f, dtmp, rank, inp, IC, 1.0f, ddown, IC);
    if (dinp)
        gemm(0, 0, n, IC, rank, 1.0f, dtmp, rank, down, IC, 1.0f, dinp, IC);
}
