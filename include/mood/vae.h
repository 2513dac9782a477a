/*
 * vae.h: the AutoencoderKL (VAE) of the Stable Diffusion family: encoder (image -> latent
 * distribution) and decoder (latent -> image), forward passes on the CPU in float32.
 *
 * It mirrors diffusers' AutoencoderKL (models/autoencoders/autoencoder_kl.py, vae.py): the encoder
 * is conv_in, DownEncoderBlock2D x n (layers_per_block ResnetBlock2D each, a stride-2 Downsample2D
 * after all but the last, padded (0, 1, 0, 1)), UNetMidBlock2D (resnet, single-head attention,
 * resnet), GroupNorm, SiLU, conv_out, quant_conv; the decoder is post_quant_conv, conv_in, the
 * mid block, UpDecoderBlock2D x n (layers_per_block + 1 resnets, nearest 2x upsampling and a conv
 * after all but the last), GroupNorm, SiLU, conv_out.
 *
 * Files: a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors, else
 * diffusion_pytorch_model.fp16.safetensors), a diffusers pipeline root (its vae/ folder), a
 * single-file checkpoint (A1111 layout, "first_stage_model." or "vae." prefix, LDM names), or a
 * standalone VAE file without prefix in LDM naming (vae-ft-mse-840000-ema-pruned.safetensors:
 * "encoder.down.0.block.0.norm1.weight", mid attention as 1x1 convolutions
 * "encoder.mid.attn_1.q.weight" (C, C, 1, 1)) or in diffusers naming. Without config.json the
 * configuration is read from the tensor shapes; what shapes cannot tell (norm_num_groups: 32,
 * scaling_factor: 0.18215 (SD1/SD2), sample_size: 512) comes from the hint or these defaults.
 * Weights are converted to float32 tensor by tensor, from any float dtype.
 *
 * A pixel-space model has no autoencoder: its vae/config.json names mood's own class
 * {"_class_name": "MoodPixelShuffle", "patch_size": P, "in_channels": 3, "scaling_factor": S}
 * and no weights. Its "latent" is the image cut into P x P patches stacked as channels (torch's
 * pixel_unshuffle: latent channel c P² + dy P + dx holds pixel (P y + dy, P x + dx) of image
 * channel c), so a UNet of 3 P² channels runs on the image at 1/P of its size; decoding is the
 * inverse (pixel_shuffle). mood-tiny is such a model (P = 4, 64 x 64 images, 16 x 16 latents).
 *
 * Thread-safety: a loaded model is read-only; encode and decode calls may run concurrently (each
 * allocates its own activations and frees them on return).
 */
#ifndef MOOD_VAE_H
#define MOOD_VAE_H

#include <stddef.h>

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOOD_VAE_MAX_BLOCKS  4
#define MOOD_VAE_MAX_LATENTS 16

typedef struct mood_vae mood_vae;

typedef struct mood_vae_config {
    int in_channels;     /* image channels into the encoder (3) */
    int out_channels;    /* image channels out of the decoder (3) */
    int latent_channels; /* 4 for SD1/SD2/SDXL */
    int n_blocks;        /* encoder / decoder levels, 1..MOOD_VAE_MAX_BLOCKS */
    int block_out_channels[MOOD_VAE_MAX_BLOCKS];
    int layers_per_block; /* resnets per encoder block (decoder blocks have one more) */
    int norm_num_groups;  /* GroupNorm groups (32) */
    float scaling_factor; /* latent = scaling_factor * (sample - shift_factor) */
    float shift_factor;   /* 0 when the config has none */
    int has_latents_mean; /* latents_mean / latents_std given in config.json */
    float latents_mean[MOOD_VAE_MAX_LATENTS], latents_std[MOOD_VAE_MAX_LATENTS];
    int sample_size;             /* the training resolution (informational) */
    int use_quant_conv;          /* the encoder ends with quant_conv (1x1, 2L -> 2L) */
    int use_post_quant_conv;     /* the decoder starts with post_quant_conv (1x1, L -> L) */
    int mid_block_add_attention; /* the mid blocks have their attention */
    int force_upcast;            /* config.json's force_upcast (informational) */
    /* > 0: the pixel-space "autoencoder" (MoodPixelShuffle, above) with patches of this side;
     * n_blocks is then 0 and the fields about layers unused. 0: AutoencoderKL. */
    int patch_size;
} mood_vae_config;

/* Loads a VAE from `path` (see the top of this file).
 * Errors: MOOD_ENOTFOUND / MOOD_EIO (files), MOOD_EFORMAT (a tensor missing, of the wrong shape
 * or dtype: the message names the file and the tensor; a malformed config.json),
 * MOOD_EUNSUPPORTED (a configuration outside AutoencoderKL with DownEncoderBlock2D /
 * UpDecoderBlock2D and SiLU, or more than MOOD_VAE_MAX_BLOCKS levels), MOOD_ENOMEM. The file is
 * closed on return. */
MOOD_WARN_UNUSED int mood_vae_load(mood_vae **out, const char *path);
/* As mood_vae_load; for files without config.json, hint's norm_num_groups, scaling_factor and
 * sample_size (where > 0) replace the defaults above. hint may be NULL; its other fields are
 * ignored. */
MOOD_WARN_UNUSED int mood_vae_load_hint(mood_vae **out, const char *path,
                                        const mood_vae_config *hint);
void mood_vae_free(mood_vae *m);
/* The model's configuration (borrowed, valid while m lives). */
const mood_vae_config *mood_vae_get_config(const mood_vae *m);

/* Pixels per latent position along each side: 2^(n_blocks - 1) (8 for SD), or patch_size. */
int mood_vae_scale(const mood_vae *m);

/* As diffusers' vae.decode(z).sample: z (B x latent_channels x h x w) is the UNSCALED latent
 * (the pipeline divides by scaling_factor first); img_out (B x out_channels x sh x sw) with
 * s = mood_vae_scale(m) (8 for SD), roughly in [-1, 1]. Images are decoded one at a time.
 * Errors: MOOD_EINVAL (B, h or w < 1, or sizes too large), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_vae_decode(const mood_vae *m, float *img_out, const float *z, int B,
                                     int h, int w);
/* As vae.encode(img).latent_dist: mean and logvar (clamped to [-30, 20]), each
 * B x latent_channels x H/s x W/s; logvar_out may be NULL. img is B x in_channels x H x W with H
 * and W multiples of s = mood_vae_scale(m). For a pixel-space model, logvar is -30 (the clamp's
 * floor: the "distribution" is a point).
 * Errors: MOOD_EINVAL (bad sizes), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_vae_encode(const mood_vae *m, float *mean_out, float *logvar_out,
                                     const float *img, int B, int H, int W);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_VAE_H */
