/*
 * bench_unet_train.c: times a LoRA training step of the UNet (mood_unet_forward_train then
 * mood_unet_backward) for bench/unet_train.sh. Loads a diffusers UNet folder and an io file
 * written by tools/unet_train_reference.py (inputs, loss weights R, side path factors and
 * torch's gradients), sets the side paths, runs one warm-up step and then RUNS timed ones, and
 * prints the median step, forward and backward times, the memory the step held (tape and
 * backward pass) and the largest difference of the factor gradients to torch's relative to the
 * largest.
 *
 * usage: bench_unet_train MODEL IO.safetensors [RUNS [checkpoint]]
 *        bench_unet_train --memory MODEL B H W L   (mood_unet_train_memory only, both modes)
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

static void die(const char *what)
{
    fprintf(stderr, "bench_unet_train: %s: %s\n", what, mood_error_last());
    exit(2);
}

/* Tensor `name` as floats (NULL when absent); n gets its length. */
static float *read_tensor(mood_st_file *f, const char *name, size_t *n)
{
    const mood_st_tensor *t = mood_st_find(f, name);
    float *p = t ? malloc((size_t)mood_st_numel(t) * sizeof *p) : NULL;
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

static int memory_only(char **argv)
{
    mood_unet *m = NULL;
    int B = atoi(argv[3]), H = atoi(argv[4]), W = atoi(argv[5]), L = atoi(argv[6]);
    uint64_t tape, bwd, ctape, cbwd;
    if (mood_unet_load(&m, argv[2]) != 0)
        die(argv[2]);
    if (mood_unet_train_memory(m, B, H, W, L, 0, &tape, &bwd) != 0 ||
        mood_unet_train_memory(m, B, H, W, L, MOOD_UNET_TAPE_CHECKPOINT, &ctape, &cbwd) != 0)
        die("train_memory");
    printf("tape_mb %.0f\nbackward_mb %.0f\n", tape / 1048576.0, bwd / 1048576.0);
    printf("ckpt_tape_mb %.0f\nckpt_backward_mb %.0f\n", ctape / 1048576.0, cbwd / 1048576.0);
    mood_unet_free(m);
    return 0;
}

/* The side paths of the io file (factors read into fresh buffers) and zeroed gradients. */
typedef struct paths {
    size_t n;
    mood_side_path *p;
    mood_side_grad *g;
    float **ref_down, **ref_up;
    size_t *n_down, *n_up;
} paths;

static void read_paths(paths *ps, mood_st_file *io)
{
    const char *v = mood_st_meta_get(io, "paths");
    char k[64];
    ps->n = v ? (size_t)atoi(v) : 0;
    ps->p = calloc(ps->n, sizeof *ps->p), ps->g = calloc(ps->n, sizeof *ps->g);
    ps->ref_down = calloc(ps->n, sizeof(float *)), ps->ref_up = calloc(ps->n, sizeof(float *));
    ps->n_down = calloc(ps->n, sizeof(size_t)), ps->n_up = calloc(ps->n, sizeof(size_t));
    for (size_t i = 0; i < ps->n; i++) {
        snprintf(k, sizeof k, "path.%zu.weight", i);
        ps->p[i].weight = mood_st_meta_get(io, k);
        snprintf(k, sizeof k, "path.%zu.rank", i);
        ps->p[i].rank = atoi(mood_st_meta_get(io, k));
        snprintf(k, sizeof k, "path.%zu.scale", i);
        ps->p[i].scale = (float)atof(mood_st_meta_get(io, k));
        snprintf(k, sizeof k, "path.%zu.down", i);
        ps->p[i].down = read_tensor(io, k, &ps->n_down[i]);
        snprintf(k, sizeof k, "path.%zu.up", i);
        ps->p[i].up = read_tensor(io, k, &ps->n_up[i]);
        snprintf(k, sizeof k, "grad.%zu.down", i);
        ps->ref_down[i] = read_tensor(io, k, NULL);
        snprintf(k, sizeof k, "grad.%zu.up", i);
        ps->ref_up[i] = read_tensor(io, k, NULL);
        ps->g[i].ddown = calloc(ps->n_down[i] + 1, sizeof(float));
        ps->g[i].dup = calloc(ps->n_up[i] + 1, sizeof(float));
        if (!ps->p[i].weight || !ps->p[i].down || !ps->p[i].up || !ps->ref_down[i] ||
            !ps->ref_up[i]) {
            fprintf(stderr, "bench_unet_train: side path %zu incomplete in the io file\n", i);
            exit(2);
        }
    }
}

static void zero_grads(paths *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        memset(ps->g[i].ddown, 0, ps->n_down[i] * sizeof(float));
        memset(ps->g[i].dup, 0, ps->n_up[i] * sizeof(float));
    }
}

/* Largest |mood - torch| over all factor gradients / largest |torch|. */
static double grad_err(const paths *ps)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < ps->n; i++) {
        const float *a[2] = {ps->g[i].ddown, ps->g[i].dup},
                    *b[2] = {ps->ref_down[i], ps->ref_up[i]};
        size_t n[2] = {ps->n_down[i], ps->n_up[i]};
        for (int f = 0; f < 2; f++)
            for (size_t k = 0; k < n[f]; k++) {
                double e = fabs((double)a[f][k] - b[f][k]);
                d = e > d || isnan(e) ? e : d;
                s = fabs(b[f][k]) > s ? fabs(b[f][k]) : s;
            }
    }
    return s > 0 ? d / s : d;
}

int main(int argc, char **argv)
{
    mood_unet *m = NULL;
    mood_unet_tape *tape = NULL;
    mood_st_file *io = NULL;
    const mood_st_tensor *tx, *tc;
    paths ps;
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    unsigned flags = argc > 4 && !strcmp(argv[4], "checkpoint") ? MOOD_UNET_TAPE_CHECKPOINT : 0;
    double *fwd, *bwd, *step;
    mood_blas_tune_process(argv);
    if (argc == 7 && !strcmp(argv[1], "--memory"))
        return memory_only(argv);
    if (argc < 3 || runs < 1) {
        fprintf(stderr, "usage: bench_unet_train MODEL IO.safetensors [RUNS [checkpoint]]\n"
                        "       bench_unet_train --memory MODEL B H W L\n");
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
        fprintf(stderr, "bench_unet_train: %s: x, t, context, R or out missing\n", argv[2]);
        return 2;
    }
    int B = (int)tx->shape[0], H = (int)tx->shape[2], W = (int)tx->shape[3];
    int L = (int)tc->shape[1];
    read_paths(&ps, io);
    if (mood_unet_set_side_paths(m, ps.p, ps.n) != 0 || mood_unet_tape_new(&tape, flags) != 0)
        die("side paths");
    fwd = calloc((size_t)runs, sizeof *fwd), bwd = calloc((size_t)runs, sizeof *bwd);
    step = calloc((size_t)runs, sizeof *step);
    for (int r = -1; r < runs; r++) {
        double t0, t1, t2;
        zero_grads(&ps);
        t0 = now_ms();
        if (mood_unet_forward_train(m, tape, out, x, t, ctx, B, H, W, L, NULL, NULL) != 0)
            die("forward_train");
        t1 = now_ms();
        if (mood_unet_backward(m, tape, R, ps.g, ps.n, NULL) != 0)
            die("backward");
        t2 = now_ms();
        if (r >= 0)
            fwd[r] = t1 - t0, bwd[r] = t2 - t1, step[r] = t2 - t0;
    }
    double inf = now_ms();
    if (mood_unet_forward(m, out, x, t, ctx, B, H, W, L, NULL, NULL) != 0)
        die("forward");
    inf = now_ms() - inf;
    qsort(fwd, (size_t)runs, sizeof *fwd, cmp_double);
    qsort(bwd, (size_t)runs, sizeof *bwd, cmp_double);
    qsort(step, (size_t)runs, sizeof *step, cmp_double);
    printf("side_paths %zu\n", ps.n);
    printf("mood_ms %.1f\nmood_fwd_ms %.1f\nmood_bwd_ms %.1f\n", step[runs / 2], fwd[runs / 2],
           bwd[runs / 2]);
    printf("mood_inference_ms %.1f\n", inf);
    printf("mood_step_mb %.0f\n", mood_unet_tape_bytes(tape) / 1048576.0);
    printf("mood_grad_rel_err %.2e\n", grad_err(&ps));
    mood_unet_tape_free(tape);
    mood_unet_free(m);
    mood_st_close(io);
    return 0;
}
