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

/* The output positions are taken as the forward pass (ops.c) takes them: the output rows of all
 * samples one after another (batch * oh rows of ow), cut into tiles of about CONVB_TILE_POS
 * positions, so that a tile of a small map holds several samples and one of a large map part of
 * a sample (tiles start and end anywhere, inside a sample or not). A tile's columns are built
 * side by side (mood__ops_im2col_rows, as the forward pass does) and, where the tile spans
 * samples, its output gradient is gathered beside them, so that one matrix product covers the
 * whole tile:
 *   - weight gradient: dw += dout_tile · columns^T. A task is (group of rows, tile of input
 *     channels[, tile of output channels]) and sums its tiles in order; with several groups of
 *     rows each group has its own copy of dw (partial sums), added to dw in group order at the
 *     end. (With more input than output channels and stride 1 it is taken the other way round,
 *     with the columns of dout: convb_transposed.)
 *   - input gradient: the columns' gradient w^T dout_tile, scattered back onto the input
 *     (col2im). A task is (group of whole samples, tile of input channels), so no two tasks
 *     write the same input value, and runs its tiles in order.
 * Groups and tiles depend on the sizes alone and every sum runs in one fixed order, so the bits
 * do not depend on the thread count. A 1x1 convolution (stride 1, no padding) reads its input as
 * the columns and takes no scratch: one product per sample and tile of positions, and no partial
 * sums. (Measured on one AVX-512 core with 2 MB of L2: tiles of 256 positions and columns of at
 * most 1 MB ran 3-5% faster than 512 positions and 4 MB; 8 tasks cost 1-2% against 4 on one
 * thread, and let 8 threads share a convolution.) */
#define CONVB_TILE_POS    256               /* positions per tile, about */
#define CONVB_DIRECT_POS  1024              /* the same for a 1x1 convolution */
#define CONVB_COL_FLOATS  ((size_t)1 << 18) /* a tile's columns at most (else channel tiles) */
#define CONVB_PART_FLOATS ((size_t)1 << 21) /* the partial weight gradients at most */
#define CONVB_GROUP_MIN   256               /* positions of a group at least */
#define CONVB_ROWS_MIN    64                /* rows (channels * k * k) of a channel tile */
#define CONVB_OC_MIN      32                /* output channels of a weight-gradient tile */
#define CONVB_TASKS       8                 /* tasks wanted, for the threads to share */

typedef struct convb_plan {
    int kk, K;            /* k * k; in_c * k * k: columns of w */
    int oh, ow, rows;     /* output size; output rows of all samples (0: nothing to do) */
    size_t ohw;           /* output positions per sample */
    int tr;               /* output rows per tile at most */
    int per_sample;       /* tiles inside one sample (a 1x1 convolution, which gathers nothing) */
    int tcx, ntcx, nqx;   /* input gradient: channels per tile, channel tiles, sample groups */
    int tcw, ntcw, npw;   /* weight gradient: channels per tile, channel tiles, row groups */
    int tmw, ntmw;        /* weight gradient: output channels per tile, their tiles */
    int wt;               /* the weight gradient taken the other way round (convb_transposed) */
    size_t col, dyb, pad; /* per-thread scratch floats: columns, gathered dout, padded rows */
    size_t part;          /* floats of the partial weight gradients (0 with one group) */
} convb_plan;

static int conv_is_direct(const mood_conv2d_dims *d)
{
    return d->k == 1 && d->stride == 1 && d->pad == 0;
}

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

/* Rows [g0, g1) cut into tiles of at most tr rows, evened out (each sample's rows so cut when
 * tiles are per sample; groups then hold whole samples): their count, and tile i. */
static int convb_ntiles(const convb_plan *p, int g0, int g1)
{
    if (p->per_sample)
        return (g1 - g0) / p->oh * ceil_div(p->oh, p->tr);
    return ceil_div(g1 - g0, p->tr);
}

static void convb_tile(const convb_plan *p, int g0, int g1, int i, int *r0, int *r1)
{
    if (p->per_sample) {
        int nts = ceil_div(p->oh, p->tr);
        g0 += i / nts * p->oh, g1 = g0 + p->oh, i %= nts;
    }
    long long n = g1 - g0, nt = ceil_div(g1 - g0, p->tr);
    *r0 = g0 + (int)(i * n / nt);
    *r1 = g0 + (int)((i + 1) * n / nt);
}

/* Group g of the weight gradient's npw (any rows) and q of the input gradient's nqx (whole
 * samples), evened out. */
static void convb_wgroup(const convb_plan *p, int g, int *g0, int *g1)
{
    *g0 = (int)((long long)g * p->rows / p->npw);
    *g1 = (int)((long long)(g + 1) * p->rows / p->npw);
}

static void convb_xgroup(const convb_plan *p, int batch, int q, int *g0, int *g1)
{
    *g0 = (int)((long long)q * batch / p->nqx) * p->oh;
    *g1 = (int)((long long)(q + 1) * batch / p->nqx) * p->oh;
}

/* Does a tile of the ng groups (of the input gradient when `samples`, else of the weight
 * gradient) span samples? (Only then is dout gathered: for the scratch size.) */
static int convb_spans(const convb_plan *p, int ng, int samples)
{
    for (int g = 0; g < ng; g++) {
        int g0, g1;
        if (samples)
            convb_xgroup(p, p->rows / p->oh, g, &g0, &g1);
        else
            convb_wgroup(p, g, &g0, &g1);
        for (int i = 0; i < convb_ntiles(p, g0, g1); i++) {
            int r0, r1;
            convb_tile(p, g0, g1, i, &r0, &r1);
            if (r0 / p->oh != (r1 - 1) / p->oh)
                return 1;
        }
    }
    return 0;
}

/* The tasks of one gradient, from the sizes alone: more groups of `units` (rows or samples of
 * unit_pos positions each) first, *n doubled while a group keeps CONVB_GROUP_MIN positions and
 * *n partial sums of part_unit floats fit CONVB_PART_FLOATS; then input-channel tiles halved,
 * *tc, while a product keeps CONVB_ROWS_MIN rows; then output-channel tiles, *nm doubled where
 * oc_ok; until there are CONVB_TASKS. */
static void convb_split(const mood_conv2d_dims *d, const convb_plan *p, int units, size_t unit_pos,
                        size_t part_unit, int oc_ok, int *n, int *tc, int *nm)
{
    while (*n * ceil_div(d->in_c, *tc) * *nm < CONVB_TASKS) {
        if (2 * *n <= units && (size_t)(units / (2 * *n)) * unit_pos >= CONVB_GROUP_MIN &&
            (size_t)2 * *n * part_unit <= CONVB_PART_FLOATS)
            *n *= 2;
        else if (*tc > 1 && (*tc + 1) / 2 * p->kk >= CONVB_ROWS_MIN)
            *tc = (*tc + 1) / 2;
        else if (oc_ok && d->out_c / (2 * *nm) >= CONVB_OC_MIN)
            *nm *= 2;
        else
            break;
    }
}

/* A stride-1 convolution with more input than output channels takes its weight gradient the
 * other way round: dw[o][c][ky][kx] = sum over the input positions q of
 * x[c][q] dout[o][q + (pad - ky, pad - kx)], which is the weight gradient dwt[c][o][k-1-ky][k-1-kx]
 * of the convolution *dt of dout (out_c channels of oh x ow, padding k - 1 - pad) whose output
 * has the input's size and whose output gradient is x. Its columns are dout's, out_c k k rows
 * instead of in_c k k, so fewer floats are built and packed for the same product, and each is
 * used for in_c outputs instead of out_c (96 -> 32 channels at 32 x 32: half the time). */
static int convb_transposed(const mood_conv2d_dims *d, mood_conv2d_dims *dt)
{
    if (d->stride != 1 || conv_is_direct(d) || d->pad > d->k - 1 || d->in_c <= d->out_c)
        return 0;
    *dt = *d;
    dt->in_c = d->out_c, dt->out_c = d->in_c;
    dt->h = mood_op_conv2d_out_h(d), dt->w = mood_op_conv2d_out_w(d);
    dt->pad = d->k - 1 - d->pad;
    return 1;
}

static convb_plan convb_plan_of(const mood_conv2d_dims *d)
{
    convb_plan p;
    memset(&p, 0, sizeof p);
    p.kk = d->k * d->k;
    p.K = d->in_c * p.kk;
    p.oh = mood_op_conv2d_out_h(d), p.ow = mood_op_conv2d_out_w(d);
    if (p.oh <= 0 || p.ow <= 0 || p.K <= 0 || d->out_c <= 0 || d->batch <= 0)
        return p;
    p.ohw = (size_t)p.oh * p.ow;
    p.rows = d->batch * p.oh;
    int direct = conv_is_direct(d);
    /* a 1x1 convolution's tiles stay inside one sample (no scratch to gather into) */
    p.per_sample = direct;
    p.tr = direct ? min_i(ceil_div(CONVB_DIRECT_POS, p.ow), p.oh)
                  : min_i(ceil_div(CONVB_TILE_POS, p.ow), p.rows);
    int tc = d->in_c;
    while (tc > 1 && (size_t)tc * p.kk * p.tr * p.ow > CONVB_COL_FLOATS)
        tc = (tc + 1) / 2;
    /* the weight gradient's groups need partial sums: none for a 1x1 convolution; taken the
     * other way round, it has a plan of its own */
    mood_conv2d_dims dt;
    p.wt = convb_transposed(d, &dt);
    p.npw = 1, p.tcw = p.wt ? 1 : tc, p.ntmw = 1;
    size_t part_unit = direct ? CONVB_PART_FLOATS + 1 : (size_t)d->out_c * p.K;
    if (!p.wt)
        convb_split(d, &p, p.rows, (size_t)p.ow, part_unit, 1, &p.npw, &p.tcw, &p.ntmw);
    p.tmw = ceil_div(d->out_c, p.ntmw);
    p.ntmw = ceil_div(d->out_c, p.tmw);
    p.ntcw = ceil_div(d->in_c, p.tcw);
    int no_oc = 1;
    p.nqx = 1, p.tcx = tc;
    convb_split(d, &p, d->batch, p.ohw, 0, 0, &p.nqx, &p.tcx, &no_oc);
    p.ntcx = ceil_div(d->in_c, p.tcx);
    if (direct)
        return p;
    size_t tile = (size_t)p.tr * p.ow;
    p.col = (size_t)(p.tcw > p.tcx ? p.tcw : p.tcx) * p.kk * tile;
    if ((!p.wt && convb_spans(&p, p.npw, 0)) || convb_spans(&p, p.nqx, 1))
        p.dyb = (size_t)d->out_c * tile;
    if (d->stride == 1)
        p.pad = (size_t)(p.tr + d->k - 1) * (d->w + 2 * d->pad);
    if (p.npw > 1)
        p.part = (size_t)p.npw * d->out_c * p.K;
    return p;
}

/* Scratch floats of a plan: its partial sums and per-thread buffers. */
static size_t convb_scratch(const convb_plan *p)
{
    return p->part + (size_t)mood__ops_scratch_threads() * (p->col + p->dyb + p->pad);
}

size_t mood_op_conv2d_backward_scratch(const mood_conv2d_dims *d)
{
    convb_plan p = convb_plan_of(d);
    mood_conv2d_dims dt;
    if (!p.wt || !convb_transposed(d, &dt))
        return convb_scratch(&p);
    /* the input gradient with p; the weight gradient: dwt, then dt's plan */
    convb_plan pt = convb_plan_of(&dt);
    size_t nx = convb_scratch(&p), nw = (size_t)d->out_c * p.K + convb_scratch(&pt);
    return nx > nw ? nx : nw;
}

/* One sample's share of a tile of rows [r0, r1): sample b, its output rows [oy0, oy0 + nr),
 * which are the tile's positions [at, at + nr * ow). */
typedef struct convb_seg {
    int b, oy0, nr;
    size_t at;
} convb_seg;

/* The next segment of the rows [*r, r1) of the tile starting at r0, or 0 when there is none. */
static int convb_next_seg(const convb_plan *p, int *r, int r1, int r0, convb_seg *sg)
{
    if (*r >= r1)
        return 0;
    sg->b = *r / p->oh, sg->oy0 = *r % p->oh;
    sg->nr = min_i(p->oh - sg->oy0, r1 - *r);
    sg->at = (size_t)(*r - r0) * p->ow;
    *r += sg->nr;
    return 1;
}

/* The output gradient of rows [r0, r1), channels [oc0, oc0 + noc), as a noc x n matrix with
 * rows *ld apart: read in place when the rows are inside one sample, else gathered into dyb. */
static const float *convb_dout_tile(const float *dout, int out_c, const convb_plan *p, int r0,
                                    int r1, int oc0, int noc, float *dyb, size_t *ld)
{
    if (r0 / p->oh == (r1 - 1) / p->oh) {
        *ld = p->ohw;
        return dout + ((size_t)(r0 / p->oh) * out_c + oc0) * p->ohw + (size_t)(r0 % p->oh) * p->ow;
    }
    size_t n = (size_t)(r1 - r0) * p->ow;
    convb_seg sg;
    for (int r = r0; convb_next_seg(p, &r, r1, r0, &sg);)
        for (int o = 0; o < noc; o++)
            memcpy(dyb + o * n + sg.at,
                   dout + ((size_t)sg.b * out_c + oc0 + o) * p->ohw + (size_t)sg.oy0 * p->ow,
                   (size_t)sg.nr * p->ow * sizeof *dyb);
    *ld = n;
    return dyb;
}

/* The columns (nc * k * k x n) of input channels [c0, c0 + nc) for the rows [r0, r1). */
static void convb_columns(float *col, const float *inp, const mood_conv2d_dims *d,
                          const convb_plan *p, int r0, int r1, int c0, int nc, float *pl)
{
    size_t hw = (size_t)d->h * d->w, n = (size_t)(r1 - r0) * p->ow;
    convb_seg sg;
    for (int r = r0; convb_next_seg(p, &r, r1, r0, &sg);) {
        const float *x = inp + ((size_t)sg.b * d->in_c + c0) * hw;
        if (d->stride == 1)
            mood__ops_im2col_rows_s1(col + sg.at, n, x, d, nc, sg.oy0, sg.nr, pl);
        else
            mood__ops_im2col_rows(col + sg.at, n, x, d, nc, sg.oy0, sg.nr);
    }
}

/* dx (channels c < nc of one sample, h w floats apart) += the column gradient col (rows
 * (c, ky, kx), ld floats apart) of its output rows [oy0, oy0 + nr): the adjoint of
 * mood__ops_im2col_rows, with the edges of a row found once per (ky, kx). */
OPS_VECTOR_CLONES static void col2im_rows(float *dx, const float *col, size_t ld,
                                          const mood_conv2d_dims *d, int nc, int oy0, int nr)
{
    int k = d->k, s = d->stride, pad = d->pad, H = d->h, W = d->w;
    int OW = mood_op_conv2d_out_w(d);
    for (int c = 0; c < nc; c++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                const float *src = col + ((size_t)(c * k + ky) * k + kx) * ld;
                /* output columns [lo, hi) write input column ox * s + off inside [0, W) */
                int off = kx - pad;
                int lo = off < 0 ? (-off + s - 1) / s : 0;
                int hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / s + 1;
                lo = min_i(lo, OW);
                hi = min_i(hi, OW);
                for (int r = 0; r < nr && hi > lo; r++, src += OW) {
                    int iy = (oy0 + r) * s - pad + ky;
                    if (iy < 0 || iy >= H)
                        continue;
                    float *dst = dx + ((size_t)c * H + iy) * W + (lo * s + off);
                    if (s == 1) {
#pragma omp simd
                        for (int j = lo; j < hi; j++)
                            dst[j - lo] += src[j];
                    } else {
                        for (int j = lo; j < hi; j++)
                            dst[(j - lo) * s] += src[j];
                    }
                }
            }
}

/* dst[0..n) += src[0..n). The rows of small feature maps are short (4, 8, 16 floats): those
 * lengths are one vector operation each, with no loop. */
static inline void add_row(float *restrict dst, const float *restrict src, int n)
{
#define ADD_ROW_N(len)                                                                             \
    for (int j = 0; j < (len); j++)                                                                \
        dst[j] += src[j];
    switch (n) {
    case 4:
        ADD_ROW_N(4);
        return;
    case 8:
        ADD_ROW_N(8);
        return;
    case 16:
        ADD_ROW_N(16);
        return;
    default:
#pragma omp simd
        ADD_ROW_N(n);
        return;
    }
#undef ADD_ROW_N
}

/* col2im_rows for stride 1: a channel's column rows are first summed into pl, its padded input
 * rows ((nr + k - 1) rows of w + 2 pad), with no edge tests, and the rows of pl inside the image
 * then added to dx (the adjoint of mood__ops_im2col_rows_s1). kx is the outer loop, so that the
 * additions that follow one another write the same places of a row (not places one float apart,
 * which would each wait for the one before). */
OPS_VECTOR_CLONES static void col2im_rows_s1(float *dx, const float *col, size_t ld,
                                             const mood_conv2d_dims *d, int nc, int oy0, int nr,
                                             float *pl)
{
    int k = d->k, pad = d->pad, H = d->h, W = d->w, PW = W + 2 * pad, OW = PW - k + 1;
    int np = nr + k - 1;
    for (int c = 0; c < nc; c++) {
        memset(pl, 0, (size_t)np * PW * sizeof *pl);
        for (int kx = 0; kx < k; kx++)
            for (int ky = 0; ky < k; ky++) {
                const float *src = col + ((size_t)(c * k + ky) * k + kx) * ld;
                float *dst = pl + (size_t)ky * PW + kx;
                for (int r = 0; r < nr; r++, dst += PW, src += OW)
                    add_row(dst, src, OW);
            }
        for (int r = 0; r < np; r++) {
            int iy = oy0 + r - pad;
            if (iy >= 0 && iy < H)
                add_row(dx + ((size_t)c * H + iy) * W, pl + (size_t)r * PW + pad, W);
        }
    }
}

/* Per-thread scratch of the current thread: columns, gathered dout, padded rows. */
typedef struct convb_bufs {
    float *col, *dyb, *pl;
} convb_bufs;

static convb_bufs convb_thread_bufs(const convb_plan *p, float *scratch)
{
    convb_bufs b = {NULL, NULL, NULL};
    if (!scratch)
        return b;
    b.col = scratch + p->part + (size_t)omp_get_thread_num() * (p->col + p->dyb + p->pad);
    b.dyb = b.col + p->col;
    b.pl = b.dyb + p->dyb;
    return b;
}

/* Input gradient of the rows [g0, g1) (whole samples), input channels [c0, c0 + nc). */
static void convb_input_task(float *dinp, const float *dout, const float *w,
                             const mood_conv2d_dims *d, const convb_plan *p, int g0, int g1, int c0,
                             int nc, const convb_bufs *bf)
{
    size_t hw = (size_t)d->h * d->w;
    int rows = nc * p->kk;
    for (int i = 0; i < convb_ntiles(p, g0, g1); i++) {
        int r0, r1;
        convb_tile(p, g0, g1, i, &r0, &r1);
        size_t n = (size_t)(r1 - r0) * p->ow, ld;
        if (conv_is_direct(d)) { /* the columns are the input itself: add w^T dout straight in */
            int b = r0 / p->oh;
            size_t pos = (size_t)(r0 % p->oh) * p->ow;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, (int)n, d->out_c, 1.0f,
                        w + c0, p->K, dout + (size_t)b * d->out_c * p->ohw + pos, (int)p->ohw, 1.0f,
                        dinp + ((size_t)b * d->in_c + c0) * hw + pos, (int)hw);
            continue;
        }
        const float *dy = convb_dout_tile(dout, d->out_c, p, r0, r1, 0, d->out_c, bf->dyb, &ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, (int)n, d->out_c, 1.0f,
                    w + (size_t)c0 * p->kk, p->K, dy, (int)ld, 0.0f, bf->col, (int)n);
        convb_seg sg;
        for (int r = r0; convb_next_seg(p, &r, r1, r0, &sg);) {
            float *dx = dinp + ((size_t)sg.b * d->in_c + c0) * hw;
            if (d->stride == 1)
                col2im_rows_s1(dx, bf->col + sg.at, n, d, nc, sg.oy0, sg.nr, bf->pl);
            else
                col2im_rows(dx, bf->col + sg.at, n, d, nc, sg.oy0, sg.nr);
        }
    }
}

static void conv_backward_input(float *dinp, const float *dout, const float *w,
                                const mood_conv2d_dims *d, const convb_plan *p, float *scratch)
{
    int ntask = p->nqx * p->ntcx;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int q = t / p->ntcx, c0 = t % p->ntcx * p->tcx, g0, g1;
        convb_xgroup(p, d->batch, q, &g0, &g1);
        convb_bufs bf = convb_thread_bufs(p, scratch);
        convb_input_task(dinp, dout, w, d, p, g0, g1, c0, min_i(d->in_c - c0, p->tcx), &bf);
    }
}

/* Weight gradient of the rows [g0, g1) into g (noc x nc k k, rows K apart; beta for the first
 * tile: 0 for a fresh partial sum, 1 to add to dw), output channels [oc0, oc0 + noc), input
 * channels [c0, c0 + nc). */
static void convb_weight_task(float *g, float beta, const float *dout, const float *inp,
                              const mood_conv2d_dims *d, const convb_plan *p, int g0, int g1,
                              int oc0, int noc, int c0, int nc, const convb_bufs *bf)
{
    size_t hw = (size_t)d->h * d->w;
    int rows = nc * p->kk;
    for (int i = 0; i < convb_ntiles(p, g0, g1); i++, beta = 1.0f) {
        int r0, r1;
        convb_tile(p, g0, g1, i, &r0, &r1);
        size_t n = (size_t)(r1 - r0) * p->ow, ld, ldx = n;
        const float *col = bf->col;
        if (conv_is_direct(d)) { /* the columns are the input itself */
            ldx = hw;
            col = inp + ((size_t)(r0 / p->oh) * d->in_c + c0) * hw + (size_t)(r0 % p->oh) * p->ow;
        } else {
            convb_columns(bf->col, inp, d, p, r0, r1, c0, nc, bf->pl);
        }
        const float *dy = convb_dout_tile(dout, d->out_c, p, r0, r1, oc0, noc, bf->dyb, &ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, noc, rows, (int)n, 1.0f, dy, (int)ld,
                    col, (int)ldx, beta, g, p->K);
    }
}

/* dw += part[0] + part[1] + ... (np partial sums of n floats each), added in that order. */
static void convb_reduce(float *dw, float *part, int np, size_t n)
{
    size_t blk = (size_t)1 << 12;
    long nb = (long)((n + blk - 1) / blk);
#pragma omp parallel for schedule(static) if (n * np >= PAR_MIN)
    for (long t = 0; t < nb; t++) {
        size_t i0 = (size_t)t * blk, m = min_z(n - i0, blk);
        float *s = part + i0;
        for (int g = 1; g < np; g++) {
            const float *pg = part + (size_t)g * n + i0;
#pragma omp simd
            for (size_t i = 0; i < m; i++)
                s[i] += pg[i];
        }
        float *o = dw + i0;
#pragma omp simd
        for (size_t i = 0; i < m; i++)
            o[i] += s[i];
    }
}

static void conv_backward_weight(float *dw, const float *dout, const float *inp,
                                 const mood_conv2d_dims *d, const convb_plan *p, float *scratch)
{
    int ntask = p->npw * p->ntcw * p->ntmw;
    size_t nw = (size_t)d->out_c * p->K;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int grp = t / (p->ntcw * p->ntmw), ct = t / p->ntmw % p->ntcw, mt = t % p->ntmw;
        int c0 = ct * p->tcw, oc0 = mt * p->tmw, g0, g1;
        convb_wgroup(p, grp, &g0, &g1);
        float *g = (p->npw > 1 ? scratch + (size_t)grp * nw : dw) + (size_t)oc0 * p->K +
                   (size_t)c0 * p->kk;
        convb_bufs bf = convb_thread_bufs(p, scratch);
        convb_weight_task(g, p->npw > 1 ? 0.0f : 1.0f, dout, inp, d, p, g0, g1, oc0,
                          min_i(d->out_c - oc0, p->tmw), c0, min_i(d->in_c - c0, p->tcw), &bf);
    }
    if (p->npw > 1)
        convb_reduce(dw, scratch, p->npw, nw);
}

/* dw[o][c][ky][kx] += dwt[c][o][k-1-ky][k-1-kx] (see convb_transposed); a task per o. */
static void convb_untranspose(float *dw, const float *dwt, const mood_conv2d_dims *d)
{
    int kk = d->k * d->k, K = d->in_c * kk;
#pragma omp parallel for schedule(static) if ((size_t)d->out_c * K >= PAR_MIN)
    for (int o = 0; o < d->out_c; o++)
        for (int c = 0; c < d->in_c; c++) {
            float *g = dw + (size_t)o * K + (size_t)c * kk;
            const float *t = dwt + ((size_t)c * d->out_c + o) * kk + (kk - 1);
            for (int j = 0; j < kk; j++)
                g[j] += t[-j];
        }
}

/* The weight gradient, the shorter way round (see convb_transposed). */
static void conv_backward_weight_any(float *dw, const float *dout, const float *inp,
                                     const mood_conv2d_dims *d, const convb_plan *p, float *scratch)
{
    mood_conv2d_dims dt;
    if (!p->wt || !convb_transposed(d, &dt)) {
        conv_backward_weight(dw, dout, inp, d, p, scratch);
        return;
    }
    convb_plan pt = convb_plan_of(&dt);
    size_t nw = (size_t)d->out_c * p->K;
    memset(scratch, 0, nw * sizeof *scratch);
    conv_backward_weight(scratch, inp, dout, &dt, &pt, scratch + nw);
    convb_untranspose(dw, scratch, d);
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
    if (p.rows == 0)
        return;
    if (dinp)
        conv_backward_input(dinp, dout, w, d, &p, scratch);
    if (dw)
        conv_backward_weight_any(dw, dout, inp, d, &p, scratch);
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
