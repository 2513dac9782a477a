/*
 * bench_unet.c: times mood_unet_forward for bench/unet.sh. Loads a diffusers UNet folder (or any
 * path mood_unet_load takes), reads the inputs and diffusers' output from an io file written by
 * tools/unet_sd15_reference.py (x, t, context, out) or tools/unet_sdxl_reference.py (also
 * text_embeds and time_ids, SDXL's added conditioning, used when the file has them), runs one
 * warm-up forward and then RUNS timed ones, and prints the load time, the median forward time
 * and the largest difference to diffusers relative to its largest magnitude.
 *
 * usage: bench_unet MODEL IO.safetensors [RUNS]
 * Threads: OMP_NUM_THREADS (OpenMP and the OpenMP build of OpenBLAS). Like the mood command, it
 * restarts itself with OPENBLAS_CORETYPE set when OpenBLAS does not recognise the CPU
 * (mood_blas_tune_process).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mood/safetensors.h"
#include "mood/unet.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static float *read_tensor(mood_st_file *f, const char *name, const mood_st_tensor **t_out)
{
    const mood_st_tensor *t = mood_st_find(f, name);
    float *p = t ? malloc((size_t)mood_st_numel(t) * sizeof *p) : NULL;
    if (!p || mood_st_to_f32(p, t) != 0) {
        fprintf(stderr, "bench_unet: %s: no float tensor \"%s\"\n", mood_st_path(f), name);
        exit(2);
    }
    if (t_out)
        *t_out = t;
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    mood_unet *m = NULL;
    mood_st_file *io = NULL;
    const mood_st_tensor *tx, *tc, *to;
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    double t0, load_ms, *times, err = 0, scale = 0;
    mood_blas_tune_process(argv);
    if (argc < 3 || runs < 1) {
        fprintf(stderr, "usage: bench_unet MODEL IO.safetensors [RUNS]\n");
        return 1;
    }
    t0 = now_ms();
    if (mood_unet_load(&m, argv[1]) != 0 || mood_st_open(&io, argv[2]) != 0) {
        fprintf(stderr, "bench_unet: %s\n", mood_error_last());
        return 2;
    }
    load_ms = now_ms() - t0;
    float *x = read_tensor(io, "x", &tx), *t = read_tensor(io, "t", NULL);
    float *ctx = read_tensor(io, "context", &tc), *ref = read_tensor(io, "out", &to);
    float *emb = NULL, *ids = NULL; /* SDXL */
    if (mood_st_find(io, "text_embeds"))
        emb = read_tensor(io, "text_embeds", NULL), ids = read_tensor(io, "time_ids", NULL);
    size_t n = (size_t)mood_st_numel(to);
    float *out = malloc(n * sizeof *out);
    int B = (int)tx->shape[0], H = (int)tx->shape[2], W = (int)tx->shape[3];
    int L = (int)tc->shape[1];
    times = malloc((size_t)runs * sizeof *times);
    for (int r = -1; r < runs; r++) { /* r = -1: warm-up */
        t0 = now_ms();
        if (mood_unet_forward(m, out, x, t, ctx, B, H, W, L, emb, ids) != 0) {
            fprintf(stderr, "bench_unet: %s\n", mood_error_last());
            return 2;
        }
        if (r >= 0)
            times[r] = now_ms() - t0;
    }
    qsort(times, (size_t)runs, sizeof *times, cmp_double);
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)out[i] - ref[i]);
        err = e > err ? e : err;
        scale = fabs(ref[i]) > scale ? fabs(ref[i]) : scale;
    }
    printf("mood_load_ms %.0f\n", load_ms);
    printf("mood_ms %.1f\n", times[runs / 2]);
    printf("mood_rel_err %.2e\n", scale > 0 ? err / scale : err);
    free(x), free(t), free(ctx), free(ref), free(out), free(times), free(emb), free(ids);
    mood_st_close(io);
    mood_unet_free(m);
    return 0;
}
