/*
 * bench_vae.c: times mood's VAE for bench/vae.sh: loads a VAE (any form mood_vae_load reads),
 * decodes one latent read from a raw float32 file (1 x latent_channels x h x w) and writes the
 * image (1 x out_channels x 8h x 8w, raw float32) for comparison with the reference. Prints the
 * load and decode wall times in seconds; the shell script measures peak RSS around the process.
 *
 * usage: bench_vae VAE LATENT.f32 H W OUT.f32
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mood/mood.h"
#include "mood/vae.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reads exactly n floats from path into a new buffer; NULL on failure. */
static float *read_floats(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    float *x = f ? malloc(n * sizeof *x) : NULL;
    if (x && fread(x, sizeof *x, n, f) != n) {
        free(x);
        x = NULL;
    }
    if (f)
        fclose(f);
    return x;
}

static int write_floats(const char *path, const float *x, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(x, sizeof *x, n, f) == n;
    if (f && fclose(f) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    mood_vae *m = NULL;
    float *z = NULL, *img = NULL;
    int rc = 2;
    if (argc != 6) {
        fprintf(stderr, "usage: bench_vae VAE LATENT.f32 H W OUT.f32\n");
        return 1;
    }
    int h = atoi(argv[3]), w = atoi(argv[4]);
    double t0 = now();
    if (mood_vae_load(&m, argv[1]) != 0) {
        fprintf(stderr, "bench_vae: %s\n", mood_error_last());
        return 2;
    }
    double t1 = now();
    const mood_vae_config *c = mood_vae_get_config(m);
    int s = 1 << (c->n_blocks - 1);
    size_t nz = (size_t)c->latent_channels * h * w, ni = (size_t)c->out_channels * h * s * w * s;
    if (!(z = read_floats(argv[2], nz)) || !(img = malloc(ni * sizeof *img))) {
        fprintf(stderr, "bench_vae: cannot read %zu floats from %s\n", nz, argv[2]);
        goto done;
    }
    if (mood_vae_decode(m, img, z, 1, h, w) != 0) {
        fprintf(stderr, "bench_vae: %s\n", mood_error_last());
        goto done;
    }
    double t2 = now();
    printf("load %.3f s, decode %.3f s\n", t1 - t0, t2 - t1);
    rc = write_floats(argv[5], img, ni) == 0 ? 0 : 2;
done:
    free(z);
    free(img);
    mood_vae_free(m);
    return rc;
}
