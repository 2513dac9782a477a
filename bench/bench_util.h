/*
 * bench_util.h: the small pieces the CUDA benchmarks share (bench_cuda_ops.c, bench_cuda_unet.c):
 * a monotonic clock in milliseconds, random test data that is never zero (zeros can run faster
 * than real data) and a comparison for qsort-ing timings to take medians.
 */
#ifndef MOOD_BENCH_UTIL_H
#define MOOD_BENCH_UTIL_H

#include <stdint.h>
#include <time.h>

static inline double bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Uniform in [-1, 1) from a xorshift64 state (any non-zero seed). */
static inline float bench_rnd(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return (float)((x >> 40) * (1.0 / 8388608.0) - 1.0);
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
