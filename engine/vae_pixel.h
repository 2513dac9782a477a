/*
 * vae_pixel.h: mood's pixel-space "autoencoder" (MoodPixelShuffle, see mood/vae.h): its
 * config.json and the two rearrangements that stand for encoding and decoding.
 */
#ifndef MOOD_ENGINE_VAE_PIXEL_H
#define MOOD_ENGINE_VAE_PIXEL_H

#include <cjson/cJSON.h>

#include "mood/vae.h"

#define MOOD_PIXEL_SHUFFLE_CLASS "MoodPixelShuffle"
#define MOOD_PIXEL_SHUFFLE_MAX   16 /* largest patch side */

/* c from a MoodPixelShuffle config.json (root, read from path): patch_size (required, 1 to
 * MOOD_PIXEL_SHUFFLE_MAX), in_channels (3), scaling_factor (1), shift_factor (0), sample_size.
 * Errors: MOOD_EFORMAT naming path and key. */
int mood__vae_pixel_config(mood_vae_config *c, const cJSON *root, const char *path);

/* z (B x C p² x H/p x W/p) = torch.nn.functional.pixel_unshuffle(img (B x C x H x W), p). */
void mood__pixel_unshuffle(float *z, const float *img, int B, int C, int H, int W, int p);

/* img (B x C x hp x wp) = torch.nn.functional.pixel_shuffle(z (B x C p² x h x w), p). */
void mood__pixel_shuffle(float *img, const float *z, int B, int C, int h, int w, int p);

#endif /* MOOD_ENGINE_VAE_PIXEL_H */
