/*
 * ops_attention.c: scaled dot-product attention on the CPU (mood_op_attention, engine/cpu/ops.h),
 * in the manner of flash attention. A task takes up to ATT_M query rows of one sample and head
 * and walks the keys in blocks of ATT_KB, keeping a running maximum, sum and output for each
 * query row (online softmax), so no Tq x Tk score matrix is stored and every key and value row
 * is read once per task, from cache.
 *
 * The query rows of a task are the lanes of the vectors: the scores of a key block are kept
 * transposed (key x query row), so the softmax statistics are lane-wise operations, and the two
 * products are register-blocked kernels of fused multiply-adds (AVX-512 or AVX2 where the CPU has
 * them, plain C with fmaf elsewhere). Every query row goes through the same chain of operations in
 * the same order whichever kernel, vector width, grouping of rows or thread count runs it, so the
 * results are bit-identical across all of those (test_ops checks the kernels against each other).
 *
 * Head sizes too large for the scratch (D above ~900) take the general path: OpenBLAS products
 * over a whole row of scores per query row.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "engine/cpu/ops_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ATT_X86 1
#endif

#define ATT_KB        128 /* keys per block */
#define ATT_M         256 /* query rows per task at most */
#define ATT_QB        128 /* general path: query rows per task */
#define ATT_LANES_MAX 32  /* query rows per group of the widest kernels */
/* Floats of scratch per thread beyond the general path's score rows: room for the transposed
 * queries and outputs of a task (2 D rows per query row) and a block of scores. */
#define ATT_EXTRA ((size_t)1 << 16)

size_t mood_op_attention_scratch(int Tq, int Tk)
{
    size_t qb = Tq < ATT_QB ? (size_t)Tq : ATT_QB;
    return (size_t)mood__ops_scratch_threads() * (qb * (size_t)Tk + ATT_EXTRA);
}

/* ----- kernels ------------------------------------------------------------------------------ */

/* The two products over a group of L query rows (lanes), L = two vectors:
 *   qk: st[j][l] = scale * sum_d k[j][d] qt[d][l] for keys j < nk (st and qt rows L apart)
 *   pv: ot[d][l] += sum_j v[j][d] pt[j][l] for d < D
 * each lane a chain of fmaf over d (qk) or j (pv) in increasing order. */
typedef void (*att_qk_fn)(float *st, const float *k, size_t ldk, const float *qt, int D, int nk,
                          float scale);
typedef void (*att_pv_fn)(float *ot, const float *v, size_t ldv, const float *pt, int D, int nk);
/* One online-softmax step over the scores st (nk x L) of a key block, in place: each row's new
 * running maximum nm (over the keys it sees: key j of the block is hidden from lane l when
 * j - l > lim), exp(score - nm) into st (0 where hidden), the sums updated and the outputs ot
 * (D x L) rescaled by exp(old maximum - nm). */
typedef void (*att_sm_fn)(float *st, int nk, int lim, float *mx, float *sum, float *ot, int D);

typedef struct att_kernel {
    int lanes;
    att_qk_fn qk;
    att_sm_fn sm;
    att_pv_fn pv;
} att_kernel;

/* exp(x) for x <= 0 as exp_poly (same reduction and polynomial) but with fused multiply-adds,
 * about half the operations: within 1 ulp over [-87, 0]; e^-87 for anything smaller (and NaN).
 * The vector kernels below repeat exactly these operations, so all give the same bits. */
static inline float exp_fma(float x)
{
    x = x > -87.0f ? x : -87.0f;
    float q = fmaf(x, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
    float r = fmaf(q, -0.693145751953125f, x);
    r = fmaf(q, -1.428606765330187045e-06f, r);
    float p = fmaf(0.000198527617612853646278381f, r, 0.00139304355252534151077271f);
    p = fmaf(p, r, 0.00833336077630519866943359f);
    p = fmaf(p, r, 0.0416664853692054748535156f);
    p = fmaf(p, r, 0.166666671633720397949219f);
    p = fmaf(p, r, 0.5f);
    float e = fmaf(r * r, p, r) + 1.0f;
    int32_t bits = ((int32_t)q + 127) * (1 << 23);
    float p2;
    memcpy(&p2, &bits, sizeof p2);
    return e * p2;
}

#define ATT_GL 8 /* lanes of the plain C kernels */

static void qk_generic(float *st, const float *k, size_t ldk, const float *qt, int D, int nk,
                       float scale)
{
    for (int j = 0; j < nk; j++) {
        float acc[ATT_GL] = {0};
        const float *kj = k + (size_t)j * ldk;
        for (int d = 0; d < D; d++)
            for (int l = 0; l < ATT_GL; l++)
                acc[l] = fmaf(kj[d], qt[(size_t)d * ATT_GL + l], acc[l]);
        for (int l = 0; l < ATT_GL; l++)
            st[(size_t)j * ATT_GL + l] = acc[l] * scale;
    }
}

static void pv_generic(float *ot, const float *v, size_t ldv, const float *pt, int D, int nk)
{
    for (int d = 0; d < D; d++) {
        float acc[ATT_GL];
        memcpy(acc, ot + (size_t)d * ATT_GL, sizeof acc);
        for (int j = 0; j < nk; j++)
            for (int l = 0; l < ATT_GL; l++)
                acc[l] = fmaf(v[(size_t)j * ldv + d], pt[(size_t)j * ATT_GL + l], acc[l]);
        memcpy(ot + (size_t)d * ATT_GL, acc, sizeof acc);
    }
}

static void sm_generic(float *st, int nk, int lim, float *mx, float *sum, float *ot, int D)
{
    for (int l = 0; l < ATT_GL; l++) {
        float nm = mx[l], bs = 0.0f;
        for (int j = 0; j < nk; j++) {
            float x = j - l > lim ? -INFINITY : st[(size_t)j * ATT_GL + l];
            nm = x > nm ? x : nm;
        }
        for (int j = 0; j < nk; j++) {
            float *e = st + (size_t)j * ATT_GL + l;
            *e = j - l > lim ? 0.0f : exp_fma(*e - nm);
            bs += *e;
        }
        float al = exp_fma(mx[l] - nm);
        sum[l] = fmaf(sum[l], al, bs);
        mx[l] = nm;
        for (int d = 0; d < D; d++)
            ot[(size_t)d * ATT_GL + l] *= al;
    }
}

#ifdef ATT_X86

/* AVX-512: 32 lanes (two zmm); blocks of 8 keys (qk) or 8 head dims (pv), 16 accumulators. */
#define A5_R 8

__attribute__((target("avx512f,fma"))) static void
qk_avx512(float *st, const float *k, size_t ldk, const float *qt, int D, int nk, float scale)
{
    __m512 sc = _mm512_set1_ps(scale);
    int j = 0;
    for (; j + A5_R <= nk; j += A5_R) {
        __m512 a0[A5_R], a1[A5_R];
#pragma GCC unroll 8
        for (int r = 0; r < A5_R; r++)
            a0[r] = a1[r] = _mm512_setzero_ps();
        const float *kj = k + (size_t)j * ldk;
        for (int d = 0; d < D; d++) {
            __m512 q0 = _mm512_loadu_ps(qt + (size_t)d * 32);
            __m512 q1 = _mm512_loadu_ps(qt + (size_t)d * 32 + 16);
#pragma GCC unroll 8
            for (int r = 0; r < A5_R; r++) {
                __m512 kv = _mm512_set1_ps(kj[(size_t)r * ldk + d]);
                a0[r] = _mm512_fmadd_ps(kv, q0, a0[r]);
                a1[r] = _mm512_fmadd_ps(kv, q1, a1[r]);
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < A5_R; r++) {
            _mm512_storeu_ps(st + (size_t)(j + r) * 32, _mm512_mul_ps(a0[r], sc));
            _mm512_storeu_ps(st + (size_t)(j + r) * 32 + 16, _mm512_mul_ps(a1[r], sc));
        }
    }
    for (; j < nk; j++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        const float *kj = k + (size_t)j * ldk;
        for (int d = 0; d < D; d++) {
            __m512 kv = _mm512_set1_ps(kj[d]);
            a0 = _mm512_fmadd_ps(kv, _mm512_loadu_ps(qt + (size_t)d * 32), a0);
            a1 = _mm512_fmadd_ps(kv, _mm512_loadu_ps(qt + (size_t)d * 32 + 16), a1);
        }
        _mm512_storeu_ps(st + (size_t)j * 32, _mm512_mul_ps(a0, sc));
        _mm512_storeu_ps(st + (size_t)j * 32 + 16, _mm512_mul_ps(a1, sc));
    }
}

__attribute__((target("avx512f,fma"))) static void pv_avx512(float *ot, const float *v, size_t ldv,
                                                             const float *pt, int D, int nk)
{
    int d0 = 0;
    for (; d0 + A5_R <= D; d0 += A5_R) {
        __m512 a0[A5_R], a1[A5_R];
#pragma GCC unroll 8
        for (int r = 0; r < A5_R; r++) {
            a0[r] = _mm512_loadu_ps(ot + (size_t)(d0 + r) * 32);
            a1[r] = _mm512_loadu_ps(ot + (size_t)(d0 + r) * 32 + 16);
        }
        for (int j = 0; j < nk; j++) {
            __m512 p0 = _mm512_loadu_ps(pt + (size_t)j * 32);
            __m512 p1 = _mm512_loadu_ps(pt + (size_t)j * 32 + 16);
            const float *vj = v + (size_t)j * ldv + d0;
#pragma GCC unroll 8
            for (int r = 0; r < A5_R; r++) {
                __m512 vv = _mm512_set1_ps(vj[r]);
                a0[r] = _mm512_fmadd_ps(vv, p0, a0[r]);
                a1[r] = _mm512_fmadd_ps(vv, p1, a1[r]);
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < A5_R; r++) {
            _mm512_storeu_ps(ot + (size_t)(d0 + r) * 32, a0[r]);
            _mm512_storeu_ps(ot + (size_t)(d0 + r) * 32 + 16, a1[r]);
        }
    }
    for (; d0 < D; d0++) {
        __m512 a0 = _mm512_loadu_ps(ot + (size_t)d0 * 32);
        __m512 a1 = _mm512_loadu_ps(ot + (size_t)d0 * 32 + 16);
        for (int j = 0; j < nk; j++) {
            __m512 vv = _mm512_set1_ps(v[(size_t)j * ldv + d0]);
            a0 = _mm512_fmadd_ps(vv, _mm512_loadu_ps(pt + (size_t)j * 32), a0);
            a1 = _mm512_fmadd_ps(vv, _mm512_loadu_ps(pt + (size_t)j * 32 + 16), a1);
        }
        _mm512_storeu_ps(ot + (size_t)d0 * 32, a0);
        _mm512_storeu_ps(ot + (size_t)d0 * 32 + 16, a1);
    }
}

/* exp_fma on 16 lanes. */
__attribute__((target("avx512f,fma"))) static inline __m512 exp_avx512(__m512 x)
{
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 q =
        _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic), magic);
    __m512 r = _mm512_fmadd_ps(q, _mm512_set1_ps(-0.693145751953125f), x);
    r = _mm512_fmadd_ps(q, _mm512_set1_ps(-1.428606765330187045e-06f), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.000198527617612853646278381f), r,
                               _mm512_set1_ps(0.00139304355252534151077271f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.00833336077630519866943359f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.0416664853692054748535156f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166666671633720397949219f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r), _mm512_set1_ps(1.0f));
    __m512i bits =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(q), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(e, _mm512_castsi512_ps(bits));
}

__attribute__((target("avx512f,fma"))) static void sm_avx512(float *st, int nk, int lim, float *mx,
                                                             float *sum, float *ot, int D)
{
    const __m512i lane0 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i lane1 = _mm512_add_epi32(lane0, _mm512_set1_epi32(16));
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 m0 = _mm512_loadu_ps(mx), m1 = _mm512_loadu_ps(mx + 16), n0 = m0, n1 = m1;
    int hid = lim < nk - 1; /* some key hidden from some lane */
    for (int j = 0; j < nk; j++) {
        __m512 x0 = _mm512_loadu_ps(st + (size_t)j * 32),
               x1 = _mm512_loadu_ps(st + (size_t)j * 32 + 16);
        if (hid) { /* hidden: l < j - lim */
            __m512i t = _mm512_set1_epi32(j - lim);
            x0 = _mm512_mask_mov_ps(x0, _mm512_cmplt_epi32_mask(lane0, t), ninf);
            x1 = _mm512_mask_mov_ps(x1, _mm512_cmplt_epi32_mask(lane1, t), ninf);
        }
        n0 = _mm512_max_ps(x0, n0);
        n1 = _mm512_max_ps(x1, n1);
    }
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    for (int j = 0; j < nk; j++) {
        float *row = st + (size_t)j * 32;
        __m512 e0 = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(row), n0));
        __m512 e1 = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(row + 16), n1));
        if (hid) {
            __m512i t = _mm512_set1_epi32(j - lim);
            e0 = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(lane0, t), e0);
            e1 = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(lane1, t), e1);
        }
        _mm512_storeu_ps(row, e0);
        _mm512_storeu_ps(row + 16, e1);
        b0 = _mm512_add_ps(b0, e0);
        b1 = _mm512_add_ps(b1, e1);
    }
    __m512 a0 = exp_avx512(_mm512_sub_ps(m0, n0)), a1 = exp_avx512(_mm512_sub_ps(m1, n1));
    _mm512_storeu_ps(sum, _mm512_fmadd_ps(_mm512_loadu_ps(sum), a0, b0));
    _mm512_storeu_ps(sum + 16, _mm512_fmadd_ps(_mm512_loadu_ps(sum + 16), a1, b1));
    _mm512_storeu_ps(mx, n0);
    _mm512_storeu_ps(mx + 16, n1);
    for (int d = 0; d < D; d++) {
        float *o = ot + (size_t)d * 32;
        _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_loadu_ps(o), a0));
        _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_loadu_ps(o + 16), a1));
    }
}

/* AVX2: 16 lanes (two ymm); blocks of 6 keys or head dims, 12 accumulators of 16 registers. */
#define A2_R 6

__attribute__((target("avx2,fma"))) static void qk_avx2(float *st, const float *k, size_t ldk,
                                                        const float *qt, int D, int nk, float scale)
{
    __m256 sc = _mm256_set1_ps(scale);
    int j = 0;
    for (; j + A2_R <= nk; j += A2_R) {
        __m256 a0[A2_R], a1[A2_R];
#pragma GCC unroll 6
        for (int r = 0; r < A2_R; r++)
            a0[r] = a1[r] = _mm256_setzero_ps();
        const float *kj = k + (size_t)j * ldk;
        for (int d = 0; d < D; d++) {
            __m256 q0 = _mm256_loadu_ps(qt + (size_t)d * 16);
            __m256 q1 = _mm256_loadu_ps(qt + (size_t)d * 16 + 8);
#pragma GCC unroll 6
            for (int r = 0; r < A2_R; r++) {
                __m256 kv = _mm256_set1_ps(kj[(size_t)r * ldk + d]);
                a0[r] = _mm256_fmadd_ps(kv, q0, a0[r]);
                a1[r] = _mm256_fmadd_ps(kv, q1, a1[r]);
            }
        }
#pragma GCC unroll 6
        for (int r = 0; r < A2_R; r++) {
            _mm256_storeu_ps(st + (size_t)(j + r) * 16, _mm256_mul_ps(a0[r], sc));
            _mm256_storeu_ps(st + (size_t)(j + r) * 16 + 8, _mm256_mul_ps(a1[r], sc));
        }
    }
    for (; j < nk; j++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        const float *kj = k + (size_t)j * ldk;
        for (int d = 0; d < D; d++) {
            __m256 kv = _mm256_set1_ps(kj[d]);
            a0 = _mm256_fmadd_ps(kv, _mm256_loadu_ps(qt + (size_t)d * 16), a0);
            a1 = _mm256_fmadd_ps(kv, _mm256_loadu_ps(qt + (size_t)d * 16 + 8), a1);
        }
        _mm256_storeu_ps(st + (size_t)j * 16, _mm256_mul_ps(a0, sc));
        _mm256_storeu_ps(st + (size_t)j * 16 + 8, _mm256_mul_ps(a1, sc));
    }
}

__attribute__((target("avx2,fma"))) static void pv_avx2(float *ot, const float *v, size_t ldv,
                                                        const float *pt, int D, int nk)
{
    int d0 = 0;
    for (; d0 + A2_R <= D; d0 += A2_R) {
        __m256 a0[A2_R], a1[A2_R];
#pragma GCC unroll 6
        for (int r = 0; r < A2_R; r++) {
            a0[r] = _mm256_loadu_ps(ot + (size_t)(d0 + r) * 16);
            a1[r] = _mm256_loadu_ps(ot + (size_t)(d0 + r) * 16 + 8);
        }
        for (int j = 0; j < nk; j++) {
            __m256 p0 = _mm256_loadu_ps(pt + (size_t)j * 16);
            __m256 p1 = _mm256_loadu_ps(pt + (size_t)j * 16 + 8);
            const float *vj = v + (size_t)j * ldv + d0;
#pragma GCC unroll 6
            for (int r = 0; r < A2_R; r++) {
                __m256 vv = _mm256_set1_ps(vj[r]);
                a0[r] = _mm256_fmadd_ps(vv, p0, a0[r]);
                a1[r] = _mm256_fmadd_ps(vv, p1, a1[r]);
            }
        }
#pragma GCC unroll 6
        for (int r = 0; r < A2_R; r++) {
            _mm256_storeu_ps(ot + (size_t)(d0 + r) * 16, a0[r]);
            _mm256_storeu_ps(ot + (size_t)(d0 + r) * 16 + 8, a1[r]);
        }
    }
    for (; d0 < D; d0++) {
        __m256 a0 = _mm256_loadu_ps(ot + (size_t)d0 * 16);
        __m256 a1 = _mm256_loadu_ps(ot + (size_t)d0 * 16 + 8);
        for (int j = 0; j < nk; j++) {
            __m256 vv = _mm256_set1_ps(v[(size_t)j * ldv + d0]);
            a0 = _mm256_fmadd_ps(vv, _mm256_loadu_ps(pt + (size_t)j * 16), a0);
            a1 = _mm256_fmadd_ps(vv, _mm256_loadu_ps(pt + (size_t)j * 16 + 8), a1);
        }
        _mm256_storeu_ps(ot + (size_t)d0 * 16, a0);
        _mm256_storeu_ps(ot + (size_t)d0 * 16 + 8, a1);
    }
}

/* exp_fma on 8 lanes. */
__attribute__((target("avx2,fma"))) static inline __m256 exp_avx2(__m256 x)
{
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 q =
        _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic), magic);
    __m256 r = _mm256_fmadd_ps(q, _mm256_set1_ps(-0.693145751953125f), x);
    r = _mm256_fmadd_ps(q, _mm256_set1_ps(-1.428606765330187045e-06f), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.000198527617612853646278381f), r,
                               _mm256_set1_ps(0.00139304355252534151077271f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.00833336077630519866943359f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.0416664853692054748535156f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166666671633720397949219f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    __m256 e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(r, r), p, r), _mm256_set1_ps(1.0f));
    __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(q), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
}

__attribute__((target("avx2,fma"))) static void sm_avx2(float *st, int nk, int lim, float *mx,
                                                        float *sum, float *ot, int D)
{
    const __m256i lane0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i lane1 = _mm256_add_epi32(lane0, _mm256_set1_epi32(8));
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 m0 = _mm256_loadu_ps(mx), m1 = _mm256_loadu_ps(mx + 8), n0 = m0, n1 = m1;
    int hid = lim < nk - 1; /* some key hidden from some lane */
    for (int j = 0; j < nk; j++) {
        __m256 x0 = _mm256_loadu_ps(st + (size_t)j * 16),
               x1 = _mm256_loadu_ps(st + (size_t)j * 16 + 8);
        if (hid) { /* hidden: j - lim > l */
            __m256i t = _mm256_set1_epi32(j - lim);
            x0 = _mm256_blendv_ps(x0, ninf, _mm256_castsi256_ps(_mm256_cmpgt_epi32(t, lane0)));
            x1 = _mm256_blendv_ps(x1, ninf, _mm256_castsi256_ps(_mm256_cmpgt_epi32(t, lane1)));
        }
        n0 = _mm256_max_ps(x0, n0);
        n1 = _mm256_max_ps(x1, n1);
    }
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    for (int j = 0; j < nk; j++) {
        float *row = st + (size_t)j * 16;
        __m256 e0 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(row), n0));
        __m256 e1 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + 8), n1));
        if (hid) {
            __m256i t = _mm256_set1_epi32(j - lim);
            e0 = _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, lane0)), e0);
            e1 = _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, lane1)), e1);
        }
        _mm256_storeu_ps(row, e0);
        _mm256_storeu_ps(row + 8, e1);
        b0 = _mm256_add_ps(b0, e0);
        b1 = _mm256_add_ps(b1, e1);
    }
    __m256 a0 = exp_avx2(_mm256_sub_ps(m0, n0)), a1 = exp_avx2(_mm256_sub_ps(m1, n1));
    _mm256_storeu_ps(sum, _mm256_fmadd_ps(_mm256_loadu_ps(sum), a0, b0));
    _mm256_storeu_ps(sum + 8, _mm256_fmadd_ps(_mm256_loadu_ps(sum + 8), a1, b1));
    _mm256_storeu_ps(mx, n0);
    _mm256_storeu_ps(mx + 8, n1);
    for (int d = 0; d < D; d++) {
        float *o = ot + (size_t)d * 16;
        _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_loadu_ps(o), a0));
        _mm256_storeu_ps(o + 8, _mm256_mul_ps(_mm256_loadu_ps(o + 8), a1));
    }
}

#endif /* ATT_X86 */

/* The kernel set mood__ops_attention_kernel forced, or -1: the widest the CPU runs. */
static int att_forced = -1;

int mood__ops_attention_kernel(int which)
{
    int prev = att_forced;
    att_forced = which;
    return prev;
}

/* Kernel set `which` (0 plain C, 1 AVX2, 2 AVX-512) if the CPU runs it, else 0. */
static int att_kernel_ok(int which)
{
#ifdef ATT_X86
    __builtin_cpu_init();
    if (which == 2)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    if (which == 1)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return which == 0;
}

static att_kernel att_kernel_pick(void)
{
    static const att_kernel set[3] = {
        {ATT_GL, qk_generic, sm_generic, pv_generic},
#ifdef ATT_X86
        {16, qk_avx2, sm_avx2, pv_avx2},
        {32, qk_avx512, sm_avx512, pv_avx512},
#endif
    };
    int which = 0;
    if (att_forced >= 0)
        which = att_kernel_ok(att_forced) ? att_forced : 0;
    else
        for (int w = 2; w > 0 && !which; w--)
            which = att_kernel_ok(w) ? w : 0;
    return set[which];
}

int mood__ops_attention_kernel_ok(int which)
{
    return which >= 0 && which <= 2 && att_kernel_ok(which);
}

/* ----- one task ----------------------------------------------------------------------------- */

typedef struct att_args {
    float *out;
    const float *q, *k, *v;
    int Tq, Tk, D, causal;
    float scale;
    size_t ld; /* H * D: floats from one token's row to the next */
    att_kernel kern;
} att_args;

/* Per-thread scratch of a task of m query rows: the scores of a key block, then for each group
 * of L rows its transposed queries, outputs (D x L each), maxima and sums. */
static size_t att_task_floats(int L, int m, int D, int Tk)
{
    return (size_t)L * (Tk < ATT_KB ? Tk : ATT_KB) + (size_t)m * (2 * (size_t)D + 2);
}

/* Query rows [i0, i0 + n) of sample b, head h. Causal: row i sees keys 0..i, so the key blocks
 * stop after the last row, and a group skips the blocks wholly after its rows (a hidden block
 * would add exactly nothing). */
static void att_task(const att_args *a, int b, int h, int i0, int n, float *s)
{
    int L = a->kern.lanes, D = a->D, G = (n + L - 1) / L;
    size_t ld = a->ld, gsz = (size_t)D * L;
    float *st = s, *qt = st + (size_t)L * (a->Tk < ATT_KB ? a->Tk : ATT_KB);
    float *ot = qt + G * gsz, *mx = ot + G * gsz, *sum = mx + (size_t)G * L;
    const float *qb = a->q + ((size_t)b * a->Tq + i0) * ld + (size_t)h * D;
    const float *kb = a->k + (size_t)b * a->Tk * ld + (size_t)h * D;
    const float *vb = a->v + (size_t)b * a->Tk * ld + (size_t)h * D;
    for (int r = 0; r < G * L; r++) { /* rows past n: zero queries, never stored */
        float *qg = qt + (size_t)(r / L) * gsz + r % L;
        for (int d = 0; d < D; d++)
            qg[(size_t)d * L] = r < n ? qb[(size_t)r * ld + d] : 0.0f;
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    memset(ot, 0, G * gsz * sizeof *ot);
    int nk = a->causal && i0 + n < a->Tk ? i0 + n : a->Tk;
    for (int k0 = 0; k0 < nk; k0 += ATT_KB) {
        int kn = nk - k0 < ATT_KB ? nk - k0 : ATT_KB;
        for (int g = 0; g < G; g++) {
            int r0 = i0 + g * L; /* the group's first query row */
            if (a->causal && k0 > r0 + L - 1)
                continue;
            int lim = a->causal && k0 + kn - 1 > r0 ? r0 - k0 : INT_MAX;
            a->kern.qk(st, kb + (size_t)k0 * ld, ld, qt + g * gsz, D, kn, a->scale);
            a->kern.sm(st, kn, lim, mx + (size_t)g * L, sum + (size_t)g * L, ot + g * gsz, D);
            a->kern.pv(ot + g * gsz, vb + (size_t)k0 * ld, ld, st, D, kn);
        }
    }
    float *o = a->out + ((size_t)b * a->Tq + i0) * ld + (size_t)h * D;
    for (int r = 0; r < n; r++) {
        const float *og = ot + (size_t)(r / L) * gsz + r % L;
        float inv = 1.0f / sum[r];
        for (int d = 0; d < D; d++)
            o[(size_t)r * ld + d] = og[(size_t)d * L] * inv;
    }
}

/* ----- the general path --------------------------------------------------------------------- */

/* Query rows [i0, i0+m) of (sample b, head h): all their scores in s, OpenBLAS products. Under a
 * causal mask only keys below i0+m can be seen, so the products stop there. */
static void attention_block(const att_args *a, int b, int h, int i0, int m, float *s)
{
    size_t ld = a->ld;
    size_t qoff = ((size_t)b * a->Tq + i0) * ld + (size_t)h * a->D;
    size_t koff = (size_t)b * a->Tk * ld + (size_t)h * a->D;
    int nk = a->causal && i0 + m < a->Tk ? i0 + m : a->Tk;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, a->D, a->scale, a->q + qoff,
                (int)ld, a->k + koff, (int)ld, 0.0f, s, nk);
    float inv[ATT_QB];
    for (int i = 0; i < m; i++)
        inv[i] = mood__ops_softmax_row(s + (size_t)i * nk,
                                       a->causal && i0 + i + 1 < nk ? i0 + i + 1 : nk, nk);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, a->D, nk, 1.0f, s, nk, a->v + koff,
                (int)ld, 0.0f, a->out + qoff, (int)ld);
    for (int i = 0; i < m; i++) {
        float *o = a->out + qoff + (size_t)i * ld;
        for (int j = 0; j < a->D; j++)
            o[j] *= inv[i];
    }
}

/* Query rows per task that fit the scratch of a thread (a multiple of the lanes), or 0 for the
 * general path: when a group of the widest kernel's lanes would not fit (so that the path does
 * not depend on the CPU). */
static int att_task_rows(const att_args *a, size_t per_thread)
{
    int L = a->kern.lanes;
    if (att_task_floats(ATT_LANES_MAX, ATT_LANES_MAX, a->D, a->Tk) > per_thread)
        return 0;
    int m = (a->Tq + L - 1) / L * L;
    m = m < ATT_M ? m : ATT_M;
    while (m > 0 && att_task_floats(L, m, a->D, a->Tk) > per_thread)
        m -= L;
    return m;
}

void mood_op_attention(float *out, const float *q, const float *k, const float *v, int B, int H,
                       int Tq, int Tk, int D, int causal, float scale, float *scratch)
{
    if (B <= 0 || H <= 0 || Tq <= 0 || Tk <= 0 || D <= 0)
        return;
    att_args a = {out, q, k, v, Tq, Tk, D, causal, scale, (size_t)H * D, att_kernel_pick()};
    if (a.scale == 0.0f)
        a.scale = 1.0f / sqrtf((float)D);
    size_t per_thread = mood_op_attention_scratch(Tq, Tk) / (size_t)mood__ops_scratch_threads();
    int m = att_task_rows(&a, per_thread), fast = m > 0;
    if (!fast)
        m = Tq < ATT_QB ? Tq : ATT_QB;
    int nblk = (Tq + m - 1) / m, ntask = B * H * nblk;
#pragma omp parallel for schedule(dynamic) num_threads(mood__ops_threads())
    for (int t = 0; t < ntask; t++) {
        mood__ops_blas_one_thread();
        int blk = t % nblk, h = t / nblk % H, b = t / nblk / H;
        int i0 = blk * m, n = Tq - i0 < m ? Tq - i0 : m;
        float *s = scratch + (size_t)omp_get_thread_num() * per_thread;
        if (fast)
            att_task(&a, b, h, i0, n, s);
        else
            attention_block(&a, b, h, i0, n, s);
    }
}
