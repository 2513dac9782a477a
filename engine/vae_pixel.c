/*
 * vae_pixel.c: the pixel-space "autoencoder" of mood-tiny (MoodPixelShuffle, mood/vae.h). A small
 * base model that must train on a CPU cannot afford to train an autoencoder too; cutting the image
 * into patches stacked as channels gives the UNet the same 8x-smaller grid an SD latent has
 * (16 x 16 for a 64 x 64 image with 4 x 4 patches) with nothing to learn and nothing lost.
 */
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "engine/vae_pixel.h"

/* The number `key` of root into *out when present; MOOD_EFORMAT when not a number. */
static int number(const cJSON *root, const char *path, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is not a number", path, key);
    *out = v->valuedouble;
    return 0;
}

int mood__vae_pixel_config(mood_vae_config *c, const cJSON *root, const char *path)
{
    double patch = 0, in = 3, scale = 1, shift = 0, size = 64;
    int err;
    if ((err = number(root, path, "patch_size", &patch)) < 0 ||
        (err = number(root, path, "in_channels", &in)) < 0 ||
        (err = number(root, path, "scaling_factor", &scale)) < 0 ||
        (err = number(root, path, "shift_factor", &shift)) < 0 ||
        (err = number(root, path, "sample_size", &size)) < 0)
        return err;
    if (patch < 1 || patch > MOOD_PIXEL_SHUFFLE_MAX || patch != (int)patch)
        return mood_error_set(MOOD_EFORMAT, "%s: \"patch_size\" must be an integer from 1 to %d",
                              path, MOOD_PIXEL_SHUFFLE_MAX);
    if (in < 1 || in > 4 || in != (int)in || scale == 0 || size < 1 || size > 1 << 15)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: bad in_channels (1 to 4), scaling_factor (not 0) or sample_size",
                              path);
    memset(c, 0, sizeof *c);
    c->patch_size = (int)patch;
    c->in_channels = c->out_channels = (int)in;
    c->latent_channels = c->in_channels * c->patch_size * c->patch_size;
    c->scaling_factor = (float)scale;
    c->shift_factor = (float)shift;
    c->sample_size = (int)size;
    return 0;
}

void mood__pixel_unshuffle(float *z, const float *img, int B, int C, int H, int W, int p)
{
    int h = H / p, w = W / p;
    for (int bc = 0; bc < B * C; bc++)
        for (int dy = 0; dy < p; dy++)
            for (int dx = 0; dx < p; dx++) {
                float *zo = z + ((size_t)bc * p * p + (size_t)dy * p + dx) * h * w;
                const float *src = img + (size_t)bc * H * W + (size_t)dy * W + dx;
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++)
                        zo[(size_t)y * w + x] = src[(size_t)y * p * W + (size_t)x * p];
            }
}

void mood__pixel_shuffle(float *img, const float *z, int B, int C, int h, int w, int p)
{
    int H = h * p, W = w * p;
    for (int bc = 0; bc < B * C; bc++)
        for (int dy = 0; dy < p; dy++)
            for (int dx = 0; dx < p; dx++) {
                const float *zi = z + ((size_t)bc * p * p + (size_t)dy * p + dx) * h * w;
                float *dst = img + (size_t)bc * H * W + (size_t)dy * W + dx;
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++)
                        dst[(size_t)y * p * W + (size_t)x * p] = zi[(size_t)y * w + x];
            }
}
