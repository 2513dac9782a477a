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

/* Tile length along a dimension of `dim`: GEMM_TILES tiles (enough for the thread counts of
 * common machines), fewer where they would be shorter than GEMM_TILE_MIN, always a power of two
 * of them so that 2, 4 or 8 threads share them evenly. Each tile is an sgemm that packs the whole
 * other operand again, and OpenBLAS runs products of 128 rows 15% slower than of 512 (the tiles
 * were 64 to 512 long, 16 of them, before). */
#define GEMM_TILES    8
#define GEMM_TILE_MIN 256

static int gemm_tile(int dim)
{
    int n = 1;
    while (n < GEMM_TILES && dim / (2 * n) >= GEMM_TILE_MIN)
        n *= 2;
    int t = (dim + n - 1) / n;
    return (t + 15) / 16 * 16;
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

/* A convolution is cut into tasks: a tile of output rows (the rows of all samples taken one
 * after another, so a tile of a small image holds several samples) times a tile of output
 * channels. A task builds the column matrix of its positions CONV_CHUNK_ROWS rows at a time in
 * its thread's scratch and adds each chunk's product in one single-threaded sgemm: every sgemm
 * packs the weights of its channels once for up to CONV_TILE_POS positions, and the columns
 * once for all the tile's channels, while the scratch stays small however large the layer. The
 * tiles are chosen from the sizes alone, and each output is the bias plus the chunks' products
 * in chunk order, so results do not depend on the thread count. */
#define CONV_TILE_POS   1024
#define CONV_CHUNK_ROWS 288
/* Tiles are halved (the longer side of positions x channels first) until there are this many
 * tasks, for the threads to share, unless a side would drop under CONV_TILE_MIN. */
#define CONV_MIN_TASKS 4
#define CONV_TILE_MIN  64

typedef struct conv_plan {
    int K;       /* rows of the whole column matrix: in_c * k * k */
    int oh, ow;  /* output size */
    int rows;    /* output rows of all samples: batch * oh (0: nothing to do) */
    int tr, ntr; /* output rows per tile, row tiles */
    int tm, ntm; /* output channels per tile, channel tiles */
    int kc;      /* input channels per chunk of the column matrix */
    /* per-thread scratch floats: a chunk of the column matrix, the sums of a tile that spans
     * samples, the padded input rows of one channel (stride 1) */
    size_t col, acc, pad;
} conv_plan;

/* Row tiles of at most tr rows, evened out, and a power of two of them where the rows allow, so
 * that 2, 4 or 8 threads share them evenly. */
static void conv_plan_rows(conv_plan *p, int tr)
{
    int n = 1;
    while (n < p->rows && n * tr < p->rows)
        n *= 2;
    p->tr = (p->rows + n - 1) / n;
    p->ntr = (p->rows + p->tr - 1) / p->tr;
}

static conv_plan conv_plan_of(const mood_conv2d_dims *d)
{
    conv_plan p;
    memset(&p, 0, sizeof p);
    int kk = d->k * d->k;
    p.K = d->in_c * kk;
    p.oh = mood_op_conv2d_out_h(d), p.ow = mood_op_conv2d_out_w(d);
    /* no output (or no input channel, or no output channel): nothing to do */
    if (p.oh <= 0 || p.ow <= 0 || p.K <= 0 || d->out_c <= 0 || d->batch <= 0)
        return p;
    p.rows = d->batch * p.oh;
    int tr = CONV_TILE_POS / p.ow;
    conv_plan_rows(&p, tr < 1 ? 1 : tr < p.rows ? tr : p.rows);
    p.ntm = 1, p.tm = d->out_c;
    while (p.ntr * p.ntm < CONV_MIN_TASKS) {
        size_t pos = (size_t)p.tr * p.ow;
        if (pos >= (size_t)p.tm && p.tr > 1 && pos >= 2 * CONV_TILE_MIN)
            conv_plan_rows(&p, (p.tr + 1) / 2);
        else if (p.tm >= 2 * CONV_TILE_MIN)
            p.ntm *= 2, p.tm = (d->out_c + p.ntm - 1) / p.ntm, p.ntm = (d->out_c + p.tm - 1) / p.tm;
        else
            break;
    }
    p.kc = CONV_CHUNK_ROWS / kk < 1 ? 1 : CONV_CHUNK_ROWS / kk;
    p.kc = p.kc < d->in_c ? p.kc : d->in_c;
    p.col = (size_t)p.kc * kk * p.tr * p.ow;
    if (d->stride == 1)
        p.pad = (size_t)(p.tr + d->k - 1) * (d->w + 2 * d->pad);
    for (int t = 0; t < p.ntr; t++) { /* a tile with rows of two samples sums in acc */
        int r0 = t * p.tr, r1 = r0 + p.tr < p.rows ? r0 + p.tr : p.rows;
        if (r0 / p.oh != (r1 - 1) / p.oh)
            p.acc = (size_t)p.tm * p.tr * p.ow;
    }
    return p;
}

size_t mood_op_conv2d_scratch(const mood_conv2d_dims *d)
{
    if (conv_is_direct(d))
        return 0;
    conv_plan p = conv_plan_of(d);
    return (size_t)mood__ops_scratch_threads() * (p.col + p.acc + p.pad);
}

/* col rows (c, ky, kx) for c < nc, each ld floats apart: the patches of output rows
 * [oy0, oy0 + nr) (all columns) of x (channels c of one sample), zero outside the image. The
 * zero edges of a row are the same for every output row, so they are found once per (ky, kx). */
OPS_VECTOR_CLONES void mood__ops_im2col_rows(float *col, size_t ld, const float *x,
                                             const mood_conv2d_dims *d, int nc, int oy0, int nr)
{
    int k = d->k, s = d->stride, pad = d->pad, H = d->h, W = d->w;
    int OW = mood_op_conv2d_out_w(d);
    for (int c = 0; c < nc; c++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *dst = col + ((size_t)(c * k + ky) * k + kx) * ld;
                /* output columns [lo, hi) read input column ox * s + off inside [0, W) */
                int off = kx - pad;
                int lo = off < 0 ? (-off + s - 1) / s : 0;
                int hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / s + 1;
                lo = lo < OW ? lo : OW;
                hi = hi < OW ? hi : OW;
                hi = hi > lo ? hi : lo;
                for (int r = 0; r < nr; r++, dst += OW) {
                    int iy = (oy0 + r) * s - pad + ky;
                    if (iy < 0 || iy >= H) {
                        memset(dst, 0, (size_t)OW * sizeof *dst);
                        continue;
                    }
                    const float *src = x + ((size_t)c * H + iy) * W + off;
                    for (int j = 0; j < lo; j++)
                        dst[j] = 0;
                    if (s == 1) {
#pragma omp simd
                        for (int j = lo; j < hi; j++)
                            dst[j] = src[j];
                    } else {
                        for (int j = lo; j < hi; j++)
                            dst[j] = src[j * s];
                    }
                    for (int j = hi; j < OW; j++)
                        dst[j] = 0;
                }
            }
}

/* mood__ops_im2col_rows for stride 1: the input rows the output rows read, of one channel at a
 * time, are first copied into pl with the padding zeros around them ((nr + k - 1) rows of
 * w + 2 pad), so that every row of the column matrix is a plain copy of OW floats (the edge tests
 * cost more than the copies on small images). */
OPS_VECTOR_CLONES void mood__ops_im2col_rows_s1(float *col, size_t ld, const float *x,
                                                const mood_conv2d_dims *d, int nc, int oy0, int nr,
                                                float *pl)
{
    int k = d->k, pad = d->pad, H = d->h, W = d->w, PW = W + 2 * pad, OW = PW - k + 1;
    for (int c = 0; c < nc; c++) {
        for (int r = 0; r < nr + k - 1; r++) {
            float *pr = pl + (size_t)r * PW;
            int iy = oy0 + r - pad;
            if (iy < 0 || iy >= H) {
                memset(pr, 0, (size_t)PW * sizeof *pr);
                continue;
            }
            const float *src = x + ((size_t)c * H + iy) * W;
            for (int j = 0; j < pad; j++)
                pr[j] = pr[pad + W + j] = 0.0f;
#pragma omp simd
            for (int j = 0; j < W; j++)
                pr[pad + j] = src[j];
        }
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *dst = col + ((size_t)(c * k + ky) * k + kx) * ld;
                const float *src = pl + (size_t)ky * PW + kx;
                for (int r = 0; r < nr; r++, dst += OW, src += PW)
                    ops_copy_row(dst, src, OW);
            }
    }
}

/* One sample's share of a row tile: sample b, its output rows [oy0, oy0 + nr), which are the
 * tile's positions [at, at + nr * ow). */
typedef struct conv_seg {
    int b, oy0, nr;
    size_t at;
} conv_seg;

/* The next segment of global output rows [r, r1), or 0 when there is none. */
static int conv_next_seg(const conv_plan *p, int *r, int r1, int r0, conv_seg *sg)
{
    if (*r >= r1)
        return 0;
    sg->b = *r / p->oh, sg->oy0 = *r % p->oh;
    sg->nr = p->oh - sg->oy0 < r1 - *r ? p->oh - sg->oy0 : r1 - *r;
    sg->at = (size_t)(*r - r0) * p->ow;
    *r += sg->nr;
    return 1;
}

/* o[c][j] = bias[c] (or 0) for c < noc, j < n; rows ldo apart. */
OPS_VECTOR_CLONES static void conv_fill_bias(float *o, size_t ldo, const float *bias, int noc,
                                             size_t n)
{
    for (int c = 0; c < noc; c++) {
        float v = bias ? bias[c] : 0.0f, *oc = o + (size_t)c * ldo;
#pragma omp simd
        for (size_t j = 0; j < n; j++)
            oc[j] = v;
    }
}

/* A 1x1 convolution reads its input as the column matrix: one sgemm per segment. */
static void conv_task_direct(float *out, const float *inp, const float *w, const float *bias,
                             const mood_conv2d_dims *d, const conv_plan *p, int r0, int r1, int oc0,
                             int noc)
{
    size_t ohw = (size_t)p->oh * p->ow;
    conv_seg sg;
    for (int r = r0; conv_next_seg(p, &r, r1, r0, &sg);) {
        size_t pos = (size_t)sg.oy0 * p->ow, n = (size_t)sg.nr * p->ow;
        float *o = out + ((size_t)sg.b * d->out_c + oc0) * ohw + pos;
        if (bias)
            conv_fill_bias(o, ohw, bias + oc0, noc, n);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, noc, (int)n, p->K, 1.0f,
                    w + (size_t)oc0 * p->K, p->K, inp + (size_t)sg.b * d->in_c * ohw + pos,
                    (int)ohw, bias ? 1.0f : 0.0f, o, (int)ohw);
    }
}

/* Global output rows [r0, r1), channels [oc0, oc0 + noc): the column matrix chunk by chunk into
 * col, the sums into out (a tile inside one sample) or acc (copied out at the end). */
static void conv_task(float *out, const float *inp, const float *w, const float *bias,
                      const mood_conv2d_dims *d, const conv_plan *p, int r0, int r1, int oc0,
                      int noc, float *col, float *acc, float *pl)
{
    int kk = d->k * d->k;
    size_t hw = (size_t)d->h * d->w, ohw = (size_t)p->oh * p->ow, n = (size_t)(r1 - r0) * p->ow;
    int single = r0 / p->oh == (r1 - 1) / p->oh;
    float *c_out =
        single ? out + ((size_t)(r0 / p->oh) * d->out_c + oc0) * ohw + (size_t)(r0 % p->oh) * p->ow
               : acc;
    size_t ldc = single ? ohw : n;
    if (bias)
        conv_fill_bias(c_out, ldc, bias + oc0, noc, n);
    conv_seg sg;
    for (int c0 = 0; c0 < d->in_c; c0 += p->kc) {
        int nc = d->in_c - c0 < p->kc ? d->in_c - c0 : p->kc;
        for (int r = r0; conv_next_seg(p, &r, r1, r0, &sg);) {
            const float *x = inp + ((size_t)sg.b * d->in_c + c0) * hw;
            if (d->stride == 1)
                mood__ops_im2col_rows_s1(col + sg.at, n, x, d, nc, sg.oy0, sg.nr, pl);
            else
                mood__ops_im2col_rows(col + sg.at, n, x, d, nc, sg.oy0, sg.nr);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, noc, (int)n, nc * kk, 1.0f,
                    w + (size_t)oc0 * p->K + (size_t)c0 * kk, p->K, col, (int)n,
                    bias || c0 > 0 ? 1.0f : 0.0f, c_out, (int)ldc);
    }
    if (single)
        return;
    for (int r = r0; conv_next_seg(p, &r, r1, r0, &sg);)
        for (int c = 0; c < noc; c++)
            memcpy(out + ((size_t)sg.b * d->out_c + oc0 + c) * ohw + (size_t)sg.oy0 * p->ow,
                   acc + (size_t)c * n + sg.at, (size_t)sg.nr * p->ow * sizeof *out);
}

/* out[b] (OC x OHW) = bias + w (OC x IC*k*k) · col, task by task (see conv_plan). */
void mood_op_conv2d(float *out, const float *inp, const float *w, const float *bias,
                    const mood_conv2d_dims *d, float *scratch)
{
    conv_plan p = conv_plan_of(d);
    if (p.rows == 0)
        return;
    int direct = conv_is_direct(d), ntask = p.ntr * p.ntm;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int rt = t / p.ntm, oc0 = t % p.ntm * p.tm;
        int noc = d->out_c - oc0 < p.tm ? d->out_c - oc0 : p.tm;
        int r0 = rt * p.tr, r1 = r0 + p.tr < p.rows ? r0 + p.tr : p.rows;
        if (direct) {
            conv_task_direct(out, inp, w, bias, d, &p, r0, r1, oc0, noc);
            continue;
        }
        float *col = scratch + (size_t)omp_get_thread_num() * (p.col + p.acc + p.pad);
        conv_task(out, inp, w, bias, d, &p, r0, r1, oc0, noc, col, col + p.col,
                  col + p.col + p.acc);
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

/* erf(x) within 2.5 ulp (absolute error under 1.5e-7), checked against float64 erf on every
 * float in [0, 4.5]: x P(x^2) for |x| < 1, 1 - e^(-x^2) R(|x| - 2.5) for 1 <= |x| <= 4, and
 * +-1 beyond (erf(4) rounds to 1 in float32). P (degree 6, erf(x)/x in x^2 on [0, 1]) and R
 * (degree 10, erfc(x) e^(x^2) on [1, 4]) are least-squares fits of relative error. Like exp_poly
 * only IEEE adds, multiplies and selects, so loops over it vectorise and give the same bits at
 * any vector width (libm's erff does not vectorise and took most of GEGLU's time). NaN stays
 * NaN. */
static inline float erf_poly(float x)
{
    float a = fabsf(x);
    a = a > 4.0f ? 4.0f : a;
    float a2 = a * a;
    float p = 7.843558706e-05f;
    p = p * a2 - 8.003824041e-04f;
    p = p * a2 + 5.187146366e-03f;
    p = p * a2 - 2.685287036e-02f;
    p = p * a2 + 1.128355116e-01f;
    p = p * a2 - 3.761262000e-01f;
    p = p * a2 + 1.128379107e+00f;
    float v = a - 2.5f, r = 1.469377935e-06f;
    r = r * v - 6.208070772e-06f;
    r = r * v + 1.541454003e-05f;
    r = r * v - 5.441221947e-05f;
    r = r * v + 2.110461792e-04f;
    r = r * v - 7.377353031e-04f;
    r = r * v + 2.467389917e-03f;
    r = r * v - 8.000046946e-03f;
    r = r * v + 2.493785135e-02f;
    r = r * v - 7.434749603e-02f;
    r = r * v + 2.108063698e-01f;
    float e = a < 1.0f ? a * p : 1.0f - exp_poly(-a2) * r;
    return x < 0.0f ? -e : e;
}

/* torch's exact (erf) gelu. */
static inline float gelu1(float x)
{
    return 0.5f * x * (1.0f + erf_poly(x * 0.70710678118654752f));
}

/* out[i] = gelu(g[i]), times a[i] when a is not NULL (GEGLU), over n floats. */
OPS_VECTOR_CLONES static void gelu_gate(float *out, const float *a, const float *g, size_t n)
{
    if (a) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            out[i] = a[i] * gelu1(g[i]);
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            out[i] = gelu1(g[i]);
    }
}

/* x / (1 + exp(-a x)) over n floats: silu (a = 1) and quick_gelu (a = 1.702), exp_poly's clamp
 * to [lo, hi] = [-87, 88] done here with bounds the compiler does not see: with exp_poly's own
 * constant bounds GCC divides every lane by 1 + e^88 as well, to select the clamped lanes
 * afterwards, and those divisions give subnormals that cost a microcode assist each (silu took
 * 5 ns a float). */
OPS_VECTOR_CLONES static void sigmoid_gate(float *out, const float *inp, size_t n, float a,
                                           float lo, float hi)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float z = -a * inp[i];
        z = z > lo ? z : lo;
        z = z < hi ? z : hi;
        out[i] = inp[i] / (1.0f + exp_poly_core(z));
    }
}

/* Runs sigmoid_gate over n floats in chunks spread over the threads. */
static void sigmoid_gate_par(float *out, const float *inp, size_t n, float a)
{
    size_t chunk = (size_t)1 << 14;
    long nc = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long c = 0; c < nc; c++) {
        size_t i0 = (size_t)c * chunk;
        sigmoid_gate(out + i0, inp + i0, n - i0 < chunk ? n - i0 : chunk, a, -87.0f, 88.0f);
    }
}

void mood_op_silu(float *out, const float *inp, size_t n)
{
    sigmoid_gate_par(out, inp, n, 1.0f);
}

void mood_op_gelu(float *out, const float *inp, size_t n)
{
    size_t chunk = (size_t)1 << 14;
    long nc = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long c = 0; c < nc; c++) {
        size_t i0 = (size_t)c * chunk;
        gelu_gate(out + i0, NULL, inp + i0, n - i0 < chunk ? n - i0 : chunk);
    }
}

void mood_op_quick_gelu(float *out, const float *inp, size_t n)
{
    sigmoid_gate_par(out, inp, n, 1.702f);
}

void mood_op_geglu(float *out, const float *inp, size_t N, int F)
{
#pragma omp parallel for schedule(static) if (N * F >= PAR_MIN)
    for (size_t i = 0; i < N; i++) {
        const float *a = inp + i * 2 * F;
        gelu_gate(out + i * F, a, a + F, (size_t)F);
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

/* (mood_op_attention is in ops_attention.c; the softmax row of its general path and of the
 * backward pass is here.) */

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
