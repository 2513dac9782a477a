/*
 * bench_conv_backward.c: times the CPU convolution backward pass (mood_op_conv2d_backward) at the
 * shapes of the small pixel-space UNets of bench/unet_fullgrad.sh, for bench/conv_backward.sh:
 * for each shape the input gradient alone ("dx") and the weight and bias gradients together
 * ("dw"), each the best of RUNS calls after a warm-up, in process CPU time (on one thread a
 * figure that other load on a shared machine hardly changes). Prints one line per shape:
 *   conv IC->OC kK sS HxW dx MS dw MS
 * with the same names as bench/conv_backward_reference.py prints for torch.
 *
 * usage: bench_conv_backward [RUNS [BATCH]]   (defaults 7, 32)
 * Threads: OMP_NUM_THREADS. Restarts itself with OPENBLAS_CORETYPE set when OpenBLAS does not
 * recognise the CPU (mood_blas_tune_process).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "engine/cpu/ops.h"
#include "mood/core.h"

/* in_c, h, w, out_c, k, stride, pad (batch from the command line): keep in step with
 * bench/conv_backward_reference.py. */
static const int shapes[][7] = {
    {32, 32, 32, 32, 3, 1, 1}, {96, 32, 32, 32, 3, 1, 1}, {96, 32, 32, 32, 1, 1, 0},
    {32, 32, 32, 3, 3, 1, 1},  {64, 16, 16, 64, 3, 1, 1}, {192, 16, 16, 64, 3, 1, 1},
    {48, 16, 16, 64, 3, 1, 1}, {64, 16, 16, 64, 3, 2, 1}, {128, 8, 8, 128, 3, 1, 1},
    {256, 8, 8, 128, 3, 1, 1}, {256, 8, 8, 128, 1, 1, 0}, {128, 4, 4, 128, 3, 1, 1}};

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Deterministic pseudo-random floats in [-1, 1). */
static void fill(float *x, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / (float)(1 << 23) - 1.0f;
    }
}

typedef struct conv_case {
    mood_conv2d_dims d;
    float *x, *w, *dy, *dx, *dw, *db, *s;
} conv_case;

/* Best of runs calls (after one warm-up) of the input gradient (which 0) or the weight and bias
 * gradients (which 1). */
static double best_ms(conv_case *c, int which, int runs)
{
    double best = 0;
    for (int r = 0; r <= runs; r++) {
        double t0 = cpu_ms();
        mood_op_conv2d_backward(which ? NULL : c->dx, which ? c->dw : NULL, which ? c->db : NULL,
                                c->dy, c->x, c->w, &c->d, c->s);
        double t = cpu_ms() - t0;
        if (r == 1 || (r > 1 && t < best))
            best = t;
    }
    return best;
}

int main(int argc, char **argv)
{
    mood_blas_tune_process(argv);
    int runs = argc > 1 ? atoi(argv[1]) : 7, batch = argc > 2 ? atoi(argv[2]) : 32;
    if (runs < 1 || batch < 1) {
        fprintf(stderr, "usage: bench_conv_backward [RUNS [BATCH]]\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int *s = shapes[i];
        conv_case c = {.d = {batch, s[0], s[1], s[2], s[3], s[4], s[5], s[6]}, .x = NULL};
        size_t nx = (size_t)batch * s[0] * s[1] * s[2], nw = (size_t)s[3] * s[0] * s[4] * s[4];
        size_t ny = (size_t)batch * s[3] * mood_op_conv2d_out_h(&c.d) * mood_op_conv2d_out_w(&c.d);
        size_t ns = mood_op_conv2d_backward_scratch(&c.d);
        c.x = malloc(nx * sizeof *c.x), c.w = malloc(nw * sizeof *c.w);
        c.dy = malloc(ny * sizeof *c.dy), c.s = malloc((ns ? ns : 1) * sizeof *c.s);
        c.dx = calloc(nx, sizeof *c.dx), c.dw = calloc(nw, sizeof *c.dw);
        c.db = calloc((size_t)s[3], sizeof *c.db);
        if (!c.x || !c.w || !c.dy || !c.s || !c.dx || !c.dw || !c.db) {
            fprintf(stderr, "bench_conv_backward: out of memory\n");
            return 1;
        }
        fill(c.x, nx, 1), fill(c.w, nw, 2), fill(c.dy, ny, 3);
        double tx = best_ms(&c, 0, runs), tw = best_ms(&c, 1, runs);
        printf("conv %d->%d k%d s%d %dx%d dx %.3f dw %.3f\n", s[0], s[3], s[4], s[5], s[1], s[2],
               tx, tw);
        free(c.x), free(c.w), free(c.dy), free(c.s), free(c.dx), free(c.dw), free(c.db);
    }
    return 0;
}
