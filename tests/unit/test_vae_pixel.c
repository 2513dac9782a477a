/*
 * test_vae_pixel.c: mood's pixel-space "autoencoder" (MoodPixelShuffle, mood/vae.h) against torch's
 * pixel_unshuffle / pixel_shuffle (tests/fixtures/vae_pixel/, tools/make_fixtures_vae_pixel.py):
 * encode must give torch's latent exactly and a point distribution (logvar -30), decode the image
 * back exactly; a bad config.json is MOOD_EFORMAT naming the key; a model folder whose UNet does
 * not take the VAE's channels is refused.
 */
#include "harness.h"

#include "fixture_tensors.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "mood/gen.h"
#include "mood/safetensors.h"
#include "mood/vae.h"

static void test_round_trip(void)
{
    const char *dir = fixture("vae_pixel/model"), *refp = fixture("vae_pixel/ref.safetensors");
    mood_vae *m = NULL;
    mood_st_file *ref = NULL;
    MOOD_CHECK_OK(mood_vae_load(&m, dir));
    MOOD_CHECK_OK(mood_st_open(&ref, refp));
    if (!m || !ref)
        goto done;
    const mood_vae_config *c = mood_vae_get_config(m);
    MOOD_CHECK(c->patch_size == 4 && c->latent_channels == 48 && c->in_channels == 3);
    MOOD_CHECK(mood_vae_scale(m) == 4 && c->scaling_factor == 1.0f);
    size_t ni, nz;
    float *img = fixture_floats(ref, "image", &ni), *lat = fixture_floats(ref, "latent", &nz);
    MOOD_CHECK(img && lat && ni == 2 * 3 * 8 * 12 && nz == ni);
    float *z = malloc(nz * sizeof *z), *lv = malloc(nz * sizeof *lv),
          *back = malloc(ni * sizeof *back);
    MOOD_CHECK_OK(mood_vae_encode(m, z, lv, img, 2, 8, 12));
    MOOD_CHECK_MSG(memcmp(z, lat, nz * sizeof *z) == 0, "encode differs from pixel_unshuffle");
    for (size_t i = 0; i < nz; i++)
        MOOD_CHECK_MSG(lv[i] == -30.0f, "logvar[%zu] = %g", i, lv[i]);
    MOOD_CHECK_OK(mood_vae_decode(m, back, lat, 2, 2, 3));
    MOOD_CHECK_MSG(memcmp(back, img, ni * sizeof *back) == 0, "decode differs from pixel_shuffle");
    MOOD_CHECK(mood_vae_encode(m, z, NULL, img, 1, 8, 10) == MOOD_EINVAL); /* 10 % 4 */
    free(img), free(lat), free(z), free(lv), free(back);
done:
    mood_st_close(ref);
    mood_vae_free(m);
}

/* A folder with vae/config.json holding `json`: loading fails with MOOD_EFORMAT naming `key`. */
static void expect_bad(const char *json, const char *key)
{
    char dir[] = "/tmp/mood-vae-pixel-XXXXXX", path[128];
    MOOD_CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(json, f);
    fclose(f);
    mood_vae *m = NULL;
    int err = mood_vae_load(&m, dir);
    MOOD_CHECK_MSG(err == MOOD_EFORMAT && strstr(mood_error_last(), key), "%s: err %d, message %s",
                   json, err, mood_error_last());
    mood_vae_free(m);
    unlink(path);
    rmdir(dir);
}

static void test_bad_config(void)
{
    expect_bad("{\"_class_name\": \"MoodPixelShuffle\"}", "patch_size");
    expect_bad("{\"_class_name\": \"MoodPixelShuffle\", \"patch_size\": 0}", "patch_size");
    expect_bad("{\"_class_name\": \"MoodPixelShuffle\", \"patch_size\": 2.5}", "patch_size");
    expect_bad("{\"_class_name\": \"MoodPixelShuffle\", \"patch_size\": \"4\"}", "patch_size");
    expect_bad("{\"_class_name\": \"MoodPixelShuffle\", \"patch_size\": 4, \"in_channels\": 9}",
               "in_channels");
}

/* The tiny SD pipeline fixture (4 latent channels) with the pixel VAE (48) is refused. */
static void test_channel_mismatch(void)
{
    char src[4096], vae[4096];
    snprintf(src, sizeof src, "%s", fixture("pipeline/tiny-sd"));
    snprintf(vae, sizeof vae, "%s", fixture("vae_pixel/model/vae"));
    char dir[] = "/tmp/mood-vae-pixel-XXXXXX", link_path[256], target[4200];
    MOOD_CHECK(mkdtemp(dir) != NULL);
    const char *parts[] = {"model_index.json", "text_encoder", "tokenizer", "unet", "scheduler"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(link_path, sizeof link_path, "%s/%s", dir, parts[i]);
        snprintf(target, sizeof target, "%s/%s", src, parts[i]);
        if (access(target, F_OK) == 0)
            MOOD_CHECK(symlink(target, link_path) == 0);
    }
    snprintf(link_path, sizeof link_path, "%s/vae", dir);
    MOOD_CHECK(symlink(vae, link_path) == 0);
    mood_model *m = NULL;
    int err = mood_model_open(&m, dir, NULL);
    MOOD_CHECK_MSG(err == MOOD_EFORMAT && strstr(mood_error_last(), "48"), "err %d: %s", err,
                   mood_error_last());
    mood_model_free(m);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(link_path, sizeof link_path, "%s/%s", dir, parts[i]);
        unlink(link_path);
    }
    snprintf(link_path, sizeof link_path, "%s/vae", dir);
    unlink(link_path);
    rmdir(dir);
}

MOOD_TEST_MAIN(MOOD_T(test_round_trip), MOOD_T(test_bad_config), MOOD_T(test_channel_mismatch))
