/*
 * test_unet_sdxl_slow.c: one UNet forward at the full SDXL configuration (stable-diffusion-xl-
 * base-1.0's UNet: 2.57 G parameters, transformer depth 1/2/10, context 2048, the text_time added
 * embedding; random float16 weights) against diffusers. Labelled `slow` (tests/CMakeLists.txt):
 * the default test run leaves it out (ctest -LE slow); run it with `ctest -L slow`.
 *
 * The model and diffusers' float32 output are made at test time by tools/unet_sdxl_reference.py
 * with tools/.venv's python in a temporary directory (5.1 GB, removed afterwards): batch 2 (two
 * timesteps, two sets of size ids), 32x32 latent, 77 context tokens, text_embeds and time_ids.
 * Memory: a peak of 15 GB while python makes it, then 10.3 GB for mood's float32 weights (one
 * after the other); 5 minutes on 1 thread (measured: max rel. error 3.0e-6).
 * MOOD_SDXL_SLOW_CONFIG=small runs the same check on the script's small SDXL-shaped model instead
 * (same inputs and block types, narrow widths: seconds, 50 MB), for machines without that memory.
 * Exit 77 (skipped) when that python, torch or diffusers is missing.
 */
#include "harness.h"

#include "mood/safetensors.h"
#include "mood/unet.h"

#define BATCH 2
#define SIZE  32

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
static void check(const char *dir, const char *config)
{
    char model[1200], iopath[1200];
    mood_unet *m = NULL;
    mood_st_file *io = NULL;
    const mood_st_tensor *tx, *tt, *tc, *te, *ti, *to;
    snprintf(model, sizeof model, "%s/unet", dir);
    snprintf(iopath, sizeof iopath, "%s/io_%dx%dx77.safetensors", dir, BATCH, SIZE);
    MOOD_CHECK_OK(mood_unet_load(&m, model));
    MOOD_CHECK_OK(mood_st_open(&io, iopath));
    if (m && io) {
        float *x = floats(io, "x", &tx), *t = floats(io, "t", &tt);
        float *ctx = floats(io, "context", &tc), *ref = floats(io, "out", &to);
        float *emb = floats(io, "text_embeds", &te), *ids = floats(io, "time_ids", &ti);
        size_t n = to ? (size_t)mood_st_numel(to) : 0;
        float *y = calloc(n ? n : 1, sizeof *y);
        const mood_unet_config *c = mood_unet_get_config(m);
        MOOD_CHECK(x && t && ctx && ref && emb && ids && y);
        MOOD_CHECK(c->addition_embed_text_time && c->cross_attention_dim == 2048);
        if (x && t && ctx && ref && emb && ids && y) {
            double err;
            MOOD_CHECK_OK(mood_unet_forward(m, y, x, t, ctx, (int)tx->shape[0], (int)tx->shape[2],
                                            (int)tx->shape[3], (int)tc->shape[1], emb, ids));
            err = harness_rel_diff(y, ref, n, 1e-30);
            printf("     SDXL UNet (%s config, blocks %d/%d/%d, depth %d/%d/%d): max |mood - "
                   "diffusers| / max |diffusers| = %.2e\n",
                   config, c->block_out_channels[0], c->block_out_channels[1],
                   c->block_out_channels[2], c->transformer_layers_per_block[0],
                   c->transformer_layers_per_block[1], c->transformer_layers_per_block[2], err);
            MOOD_CHECK_MSG(err <= 1e-4, "relative error %.3e", err);
        }
        free(x), free(t), free(ctx), free(ref), free(emb), free(ids), free(y);
    }
    mood_st_close(io);
    mood_unet_free(m);
}

int main(void)
{
    char py[2048], script[2048], cmd[6400];
    const char *root = getenv("MOOD_FIXTURES") ? getenv("MOOD_FIXTURES") : "tests/fixtures";
    const char *config = getenv("MOOD_SDXL_SLOW_CONFIG");
    const char *dir;
    int rc;
    if (!config || !config[0])
        config = "full";
    if (strcmp(config, "full") != 0 && strcmp(config, "small") != 0) {
        fprintf(stderr, "MOOD_SDXL_SLOW_CONFIG=%s: full or small\n", config);
        return 2;
    }
    snprintf(py, sizeof py, "%s/../../tools/.venv/bin/python", root);
    snprintf(script, sizeof script, "%s/../../tools/unet_sdxl_reference.py", root);
    if (access(py, X_OK) != 0 || access(script, R_OK) != 0) {
        printf("skipped: no %s\n", py);
        return 77;
    }
    dir = scratch_dir();
    snprintf(cmd, sizeof cmd, "'%s' '%s' make '%s' --config %s --batch %d --size %d --tokens 77",
             py, script, dir, config, BATCH, SIZE);
    rc = system(cmd);
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
        printf("skipped: torch or diffusers missing\n");
        return 77;
    }
    MOOD_CHECK_MSG(rc == 0, "%s failed (%d)", cmd, rc);
    if (rc == 0)
        check(dir, config);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    printf("%s\n", harness_failures ? "FAIL test_unet_sdxl_slow" : "ok   test_unet_sdxl_slow");
    return harness_failures ? 1 : 0;
}
