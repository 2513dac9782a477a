/*
 * bench_unet_fullgrad.c: times a full-parameter training step of the UNet (mood_unet_forward_train
 * then mood_unet_backward_ex with every weight's gradient) for bench/unet_fullgrad.sh. Loads a
 * diffusers UNet folder and an io file written by tools/unet_fullgrad_reference.py (inputs, loss
 * weights R and torch's gradient of every parameter), runs one warm-up step and then RUNS timed
 * ones, and prints the median step, forward and backward times, the backward's time without the
 * weight gradients (mood_unet_backward, for what they cost), the step's process CPU time (on one
 * thread a figure that other load on the machine hardly changes), the memory the step held, and
 * the largest difference of the weight gradients to torch's relative to the largest.
 *
 * usage: bench_unet_fullgrad MODEL IO.safetensors [RUNS [checkpoint]]
 * Threads: OMP_NUM_THREADS. Restarts itself with OPENBLAS_CORETYPE set when OpenBLAS does not
 * recognise the CPU (mood_blas_tune_process).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mood/safetensors.h"
#include "mood/unet.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The process's CPU time: on one thread the step's work, whatever else the machine runs. */
static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_unet_fullgrad: %s: %s\n", what, mood_error_last());
    exit(2);
}

/* Tensor `name` as floats (NULL when absent); n gets its length. */
static float *read_tensor(mood_st_file *f, const char *name, size_t *n)
{
    const mood_st_tensor *t = mood_st_find(f, name);
    float *p = t ? malloc((size_t)mood_st_numel(t) * sizeof *p + 1) : NULL;
    if (p && mood_st_to_f32(p, t) != 0) {
        free(p);
        p = NULL;
    }
    if (n)
        *n = t ? (size_t)mood_st_numel(t) : 0;
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* Every weight's gradient buffer and torch's. */
typedef struct wgrads {
    size_t n;
    float **g, **ref;
    size_t *numel;
} wgrads;

static void read_grads(wgrads *w, mood_unet *m, mood_st_file *io)
{
    char k[512];
    w->n = mood_unet_weight_count(m);
    w->g = calloc(w->n, sizeof *w->g), w->ref = calloc(w->n, sizeof *w->ref);
    w->numel = calloc(w->n, sizeof *w->numel);
    if (!w->g || !w->ref || !w->numel)
        die("out of memory");
    for (size_t i = 0; i < w->n; i++) {
        const char *name = mood_unet_weight_name(m, i);
        int ndim = 0;
        int64_t shape[4];
        size_t n = 1, nr = 0;
        if (!mood_unet_weight(m, name, &ndim, shape))
            die(name);
        for (int d = 0; d < ndim; d++)
            n *= (size_t)shape[d];
        snprintf(k, sizeof k, "grad.%s", name);
        w->ref[i] = read_tensor(io, k, &nr);
        w->g[i] = calloc(n, sizeof(float));
        w->numel[i] = n;
        if (!w->ref[i] || nr != n || !w->g[i]) {
            fprintf(stderr, "bench_unet_fullgrad: %s: no gradient of %zu values in the io file\n",
                    name, n);
            exit(2);
        }
    }
}

static void zero_grads(wgrads *w)
{
    for (size_t i = 0; i < w->n; i++)
        memset(w->g[i], 0, w->numel[i] * sizeof(float));
}

/* Largest |mood - torch| over all weight gradients / largest |torch|. */
static double grad_err(const wgrads *w)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < w->n; i++)
        for (size_t k = 0; k < w->numel[i]; k++) {
            double e = fabs((double)w->g[i][k] - w->ref[i][k]);
            d = e > d || isnan(e) ? e : d;
            s = fabs(w->ref[i][k]) > s ? fabs(w->ref[i][k]) : s;
        }
    return s > 0 ? d / s : d;
}

int main(int argc, char **argv)
{
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL;
    mood_st_file *io = NULL;
    const mood_st_tensor *tx, *tc;
    wgrads w;
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    unsigned flags = argc > 4 && !strcmp(argv[4], "checkpoint") ? MOOD_UNET_TAPE_CHECKPOINT : 0;
    double *fwd, *bwd, *step, *bwd_lora, *cpu;
    mood_blas_tune_process(argv);
    if (argc < 3 || runs < 1) {
        fprintf(stderr, "usage: bench_unet_fullgrad MODEL IO.safetensors [RUNS [checkpoint]]\n");
        return 1;
    }
    if (mood_unet_load(&m, argv[1]) != 0)
        die(argv[1]);
    if (mood_st_open(&io, argv[2]) != 0)
        die(argv[2]);
    float *x = read_tensor(io, "x", NULL), *t = read_tensor(io, "t", NULL);
    float *ctx = read_tensor(io, "context", NULL), *R = read_tensor(io, "R", NULL);
    size_t n_out;
    float *ref_out = read_tensor(io, "out", &n_out), *out = malloc(n_out * sizeof *out);
    tx = mood_st_find(io, "x"), tc = mood_st_find(io, "context");
    if (!x || !t || !ctx || !R || !ref_out || !out || !tx || !tc) {
        fprintf(stderr, "bench_unet_fullgrad: %s: x, t, context, R or out missing\n", argv[2]);
        return 2;
    }
    int B = (int)tx->shape[0], H = (int)tx->shape[2], W = (int)tx->shape[3];
    int L = (int)tc->shape[1];
    read_grads(&w, m, io);
    if (mood_unet_tape_new(&tape, flags) != 0)
        die("tape");
    fwd = calloc((size_t)runs, sizeof *fwd), bwd = calloc((size_t)runs, sizeof *bwd);
    step = calloc((size_t)runs, sizeof *step), bwd_lora = calloc((size_t)runs, sizeof *bwd_lora);
    cpu = calloc((size_t)runs, sizeof *cpu);
    for (int r = -1; r < runs; r++) {
        double t0, t1, t2, t3, c0;
        zero_grads(&w);
        c0 = cpu_ms();
        t0 = now_ms();
        if (mood_unet_forward_train(m, tape, out, x, t, ctx, B, H, W, L, NULL, NULL) != 0)
            die("forward_train");
        t1 = now_ms();
        if (mood_unet_backward_ex(m, tape, R, NULL, 0, NULL, w.g) != 0)
            die("backward_ex");
        t2 = now_ms();
        if (r >= 0)
            fwd[r] = t1 - t0, bwd[r] = t2 - t1, step[r] = t2 - t0, cpu[r] = cpu_ms() - c0;
        if (r == runs - 1)
            printf("mood_grad_rel_err %.2e\n", grad_err(&w));
        t2 = now_ms();
        if (mood_unet_backward(m, tape, R, NULL, 0, NULL) != 0) /* the input gradients only */
            die("backward");
        t3 = now_ms();
        if (r >= 0)
            bwd_lora[r] = t3 - t2;
    }
    printf("weights %zu\n", w.n);
    printf("mood_ms %.1f\nmood_fwd_ms %.1f\nmood_bwd_ms %.1f\n", median(step, runs),
           median(fwd, runs), median(bwd, runs));
    printf("mood_bwd_no_weights_ms %.1f\n", median(bwd_lora, runs));
    printf("mood_cpu_ms %.1f\n", median(cpu, runs));
    printf("mood_step_mb %.0f\n", mood_unet_tape_bytes(tape) / 1048576.0);
    mood_unet_tape_free(tape);
    mood_unet_free(m);
    mood_st_close(io);
    return 0;
}
