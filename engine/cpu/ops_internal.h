/*
 * ops_internal.h: helpers shared by the CPU layer functions (engine/cpu/ops.c) and their backward
 * passes (engine/cpu/ops_backward.c): the thread-count rules, the convolution's column builders,
 * the softmax row and the vectorisable exp. Not installed.
 */
#ifndef MOOD_ENGINE_CPU_OPS_INTERNAL_H
#define MOOD_ENGINE_CPU_OPS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/cpu/ops.h"

/* The loops that are not in OpenBLAS and vectorise (softmax, exp-based activations) are compiled
 * for AVX-512 and AVX2 too on x86-64 and picked at load time (the same bits at every width, see
 * exp_poly). */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define OPS_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef OPS_VECTOR_CLONES
#define OPS_VECTOR_CLONES
#endif

/* exp(x) within 1 ulp for x in [-87, 88] (clamped there: e^-87 ~ 1.6e-38 stands for anything
 * smaller, e^88 ~ 1.7e38 for anything larger): x = q ln2 + r with q = round(x / ln2) (adding
 * 1.5 * 2^23 rounds to even), ln2 in two parts so q ln2 is exact, a degree-6 polynomial for e^r
 * (Sleef's expf coefficients) and 2^q from its bits. Only IEEE adds, multiplies and conversions
 * (no libm call; the build does not contract into fused multiply-adds), so loops over it
 * vectorise and give the same bits at any vector width. */
static inline float exp_poly_core(float x);

static inline float exp_poly(float x)
{
    x = x > -87.0f ? x : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    return exp_poly_core(x);
}

/* exp_poly without the clamps, for x already in [-87, 88]. (A loop that clamps with bounds it
 * takes as arguments keeps GCC from evaluating a clamped lane's e^88 as a constant on every lane,
 * see sigmoid_gate in ops.c.) */
static inline float exp_poly_core(float x)
{
    float t = x * 1.44269504088896341f + 12582912.0f;
    float qf = t - 12582912.0f;
    float r = x - qf * 0.693145751953125f;
    r = r - qf * 1.428606765330187045e-06f;
    float u = 0.000198527617612853646278381f;
    u = u * r + 0.00139304355252534151077271f;
    u = u * r + 0.00833336077630519866943359f;
    u = u * r + 0.0416664853692054748535156f;
    u = u * r + 0.166666671633720397949219f;
    u = u * r + 0.5f;
    u = 1.0f + (r * r * u + r);
    int32_t bits = ((int32_t)qf + 127) * (1 << 23);
    float p2;
    memcpy(&p2, &bits, sizeof p2);
    return u * p2;
}

/* dst[0..n) = src[0..n). The rows of small feature maps are short (4, 8, 16 floats): those
 * lengths are one vector move each, with no loop (the column builders copy millions of them). */
static inline void ops_copy_row(float *restrict dst, const float *restrict src, int n)
{
    switch (n) {
    case 4:
        memcpy(dst, src, 4 * sizeof *dst);
        return;
    case 8:
        memcpy(dst, src, 8 * sizeof *dst);
        return;
    case 16:
        memcpy(dst, src, 16 * sizeof *dst);
        return;
    default:
#pragma omp simd
        for (int j = 0; j < n; j++)
            dst[j] = src[j];
        return;
    }
}

/* Processors per-thread scratch is counted for (omp_get_num_procs()), and the threads a parallel
 * region uses: omp_get_max_threads(), but at most that many. */
int mood__ops_scratch_threads(void);
int mood__ops_threads(void);

/* Makes OpenBLAS calls from the current task single-threaded (until the task ends). */
void mood__ops_blas_one_thread(void);

/* col rows (c, ky, kx) for c < nc, each ld floats apart: the patches of output rows
 * [oy0, oy0 + nr) (all OW columns: the first nr * OW floats of each row) of x (channel c at
 * x + c h w, one sample), zero outside the image. The _s1 form is for stride 1 only and faster
 * on small images; pl holds (nr + k - 1) * (w + 2 pad) floats. (The forward convolution's column
 * builders, shared with the backward pass, which tiles positions the same way.) */
void mood__ops_im2col_rows(float *col, size_t ld, const float *x, const mood_conv2d_dims *d, int nc,
                           int oy0, int nr);
void mood__ops_im2col_rows_s1(float *col, size_t ld, const float *x, const mood_conv2d_dims *d,
                              int nc, int oy0, int nr, float *pl);

/* Unnormalised softmax of row[0..n) in place: exp(x - max); row[n..len) = 0. Returns 1 / the
 * sum. */
float mood__ops_softmax_row(float *row, int n, int len);

/* Attention kernels (ops_attention.c), for tests: mood__ops_attention_kernel(which) makes
 * mood_op_attention use set `which` (0 plain C, 1 AVX2, 2 AVX-512; -1: the widest the CPU runs)
 * and returns the previous setting; mood__ops_attention_kernel_ok says if the CPU runs a set. */
int mood__ops_attention_kernel(int which);
int mood__ops_attention_kernel_ok(int which);

#endif /* MOOD_ENGINE_CPU_OPS_INTERNAL_H */
