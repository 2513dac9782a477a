/*
 * test_unet_slow.c: one full-size UNet step (the SD1.5 configuration, 860M parameters, random
 * float16 weights) against diffusers. Labelled `slow` (tests/CMakeLists.txt): the default test
 * run leaves it out (ctest -LE slow); run it with `ctest -L slow`.
 *
 * The model and diffusers' float32 output are made at test time by
 * tools/unet_sd15_reference.py with tools/.venv's python in a temporary directory (1.7 GB,
 * removed afterwards): batch 1, 32x32 latent, 77 context tokens. Exit 77 (skipped) when that
 * python, torch or diffusers is missing.
 */
#include "harness.h"

#include "mood/safetensors.h"
#include "mood/unet.h"

static float *floats(mood_st_file *f, const char *name, const mood_st_tensor **t)
{
    *t = mood_st_find(f, name);
    float *p = *t ? malloc((size_t)mood_st_numel(*t) * sizeof *p) : NULL;
    if (p && mood_st_to_f32(p, *t) != 0) {
        free(p);
        p = NULL;
    }
    return p;
}

/* Loads the model, runs the io file's inputs and compares with its output. */
static void check(const char *dir)
{
    char model[1200], iopath[1200];
    mood_unet *m = NULL;
    mood_st_file *io = NULL;
    const mood_st_tensor *tx, *tt, *tc, *to;
    snprintf(model, sizeof model, "%s/unet", dir);
    snprintf(iopath, sizeof iopath, "%s/io_1x32x77.safetensors", dir);
    MOOD_CHECK_OK(mood_unet_load(&m, model));
    MOOD_CHECK_OK(mood_st_open(&io, iopath));
    if (m && io) {
        float *x = floats(io, "x", &tx), *t = floats(io, "t", &tt);
        float *ctx = floats(io, "context", &tc), *ref = floats(io, "out", &to);
        size_t n = to ? (size_t)mood_st_numel(to) : 0;
        float *y = calloc(n ? n : 1, sizeof *y);
        MOOD_CHECK(x && t && ctx && ref && y);
        if (x && t && ctx && ref && y) {
            double err = 0, scale = 0;
            MOOD_CHECK_OK(mood_unet_forward(m, y, x, t, ctx, (int)tx->shape[0], (int)tx->shape[2],
                                            (int)tx->shape[3], (int)tc->shape[1], NULL, NULL));
            for (size_t i = 0; i < n; i++) {
                double e = fabs((double)y[i] - ref[i]);
                err = e > err || isnan(e) ? e : err;
                scale = fabs(ref[i]) > scale ? fabs(ref[i]) : scale;
            }
            printf("     SD1.5 UNet: max |mood - diffusers| / max |diffusers| = %.2e "
                   "(max |diffusers| %.3f)\n",
                   err / scale, scale);
            MOOD_CHECK_MSG(err <= 1e-4 * scale, "relative error %.3e", err / scale);
        }
        free(x), free(t), free(ctx), free(ref), free(y);
    }
    mood_st_close(io);
    mood_unet_free(m);
}

int main(void)
{
    char py[2048], script[2048], cmd[6400];
    const char *root = getenv("MOOD_FIXTURES") ? getenv("MOOD_FIXTURES") : "tests/fixtures";
    const char *dir;
    int rc;
    snprintf(py, sizeof py, "%s/../../tools/.venv/bin/python", root);
    snprintf(script, sizeof script, "%s/../../tools/unet_sd15_reference.py", root);
    if (access(py, X_OK) != 0 || access(script, R_OK) != 0) {
        printf("skipped: no %s\n", py);
        return 77;
    }
    dir = scratch_dir();
    snprintf(cmd, sizeof cmd, "'%s' '%s' make '%s' --batch 1 --size 32 --tokens 77", py, script,
             dir);
    rc = system(cmd);
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
        printf("skipped: torch or diffusers missing\n");
        return 77;
    }
    MOOD_CHECK_MSG(rc == 0, "%s failed (%d)", cmd, rc);
    if (rc == 0)
        check(dir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    printf("%s\n", harness_failures ? "FAIL test_unet_slow" : "ok   test_unet_slow");
    return harness_failures ? 1 : 0;
}
