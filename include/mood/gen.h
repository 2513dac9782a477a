/*
 * gen.h: text-to-image generation: a base model (text encoder, UNet, VAE, noise schedule) loaded
 * from a single-file checkpoint or a diffusers folder, adapters applied by merging or as runtime
 * side paths, and the txt2img pipeline (A1111 prompt weighting, classifier-free guidance, a
 * sampler, VAE decode).
 *
 * The pipeline follows diffusers' StableDiffusionPipeline (StableDiffusionXLPipeline for SDXL)
 * where the two agree (so its results are checked against diffusers), and AUTOMATIC1111 where
 * diffusers has nothing to say: prompt emphasis "(word:1.3)" with A1111's mean restoration,
 * 75-token chunks for long prompts, clip skip, <lora:...> strengths split between UNet and text
 * encoder.
 *
 * SDXL models (and Playground v2/v2.5): both text encoders' penultimate hidden states,
 * concatenated; text encoder 2's pooled, projected embedding and the size conditioning
 * (original size = target size = the image's, crop (0, 0)) go to the UNet's added embedding; an
 * empty (or NULL) negative prompt conditions on zeros (diffusers' force_zeros_for_empty_prompt
 * for a None negative prompt, A1111 for ""). Long prompts are chunked as A1111 does, with the
 * pooled embedding of the first chunk. Playground v2.5 (an EDM scheduler in the folder, or
 * edm_mean/edm_std in the single file) samples with EDM (mood/sampler.h) and denormalises the
 * latents with the VAE's latents_mean/std before decoding. Clip skip for SDXL: see
 * engine/conditioning.c (1 and 2: the penultimate layer, k > 2: hidden_states[-k]).
 *
 * Thread-safety: a mood_model is used by one generation at a time.
 */
#ifndef MOOD_GEN_H
#define MOOD_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "mood/clip.h"
#include "mood/core.h"
#include "mood/image.h"
#include "mood/lora.h"
#include "mood/sampler.h"
#include "mood/unet.h"
#include "mood/vae.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mood_model mood_model;

typedef struct mood_model_options {
    /* MOOD_PRED_EPSILON or MOOD_PRED_V; -1 = from the model (scheduler_config.json, the
     * checkpoint's "modelspec.prediction_type" metadata), else epsilon. */
    int prediction;
    mood_progress_fn progress; /* loading progress ("text encoder", "unet", "vae") */
    void *progress_payload;
    /* For single files whose configuration cannot be inferred from shapes alone (tiny test
     * models: attention heads, group norm groups): hints as mood_clip_load, mood_unet_load_ex
     * and mood_vae_load_hint take them. NULL: inferred. */
    const mood_clip_config *clip_hint;
    const mood_unet_config *unet_hint;
    const mood_vae_config *vae_hint;
    const mood_clip_config *clip2_hint; /* SDXL's text encoder 2 (heads, act) */
    /* Where the UNet runs: -1 (default) the CPU; N >= 0 CUDA GPU N, with bf16 matrices and fp32
     * accumulation (the text encoders, sampler and VAE stay on the CPU). Needs a build with the
     * CUDA backend (MOOD_EUNSUPPORTED otherwise, MOOD_EBACKEND when the GPU fails). */
    int cuda_device;
    /* With cuda_device >= 0: 1 keeps the GPU UNet's weights and products in float32 (0, default:
     * bf16). Training on the GPU needs it (mood_train_options.model_options). */
    int cuda_fp32;
} mood_model_options;

void mood_model_options_init(mood_model_options *o);

/* Loads every part of a base model: `path` is a single-file checkpoint (A1111/Civitai layout,
 * SD1/SD2 LDM or SDXL SGM keys, fp8/fp16/bf16/fp32) or a diffusers pipeline folder
 * (model_index.json, text_encoder/, [text_encoder_2/, tokenizer_2/ for SDXL,] unet/, vae/,
 * scheduler/). Weights are converted to float32 part by part from the mapped file.
 * Errors: MOOD_ENOTFOUND / MOOD_EIO (files), MOOD_EFORMAT (a part missing or malformed, or
 * parts of mismatched widths, named), MOOD_EUNSUPPORTED (what the engine does not run yet, e.g.
 * the SDXL refiner), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_model_open(mood_model **out, const char *path,
                                     const mood_model_options *opts);
void mood_model_free(mood_model *m);
mood_family mood_model_family(const mood_model *m);
/* The path it was opened from, and the A1111 short name ("v1-5-pruned-emaonly"). */
const char *mood_model_path(const mood_model *m);
const char *mood_model_name(const mood_model *m);
/* A1111 "Model hash": the first 10 hex digits of the SHA-256 of the checkpoint file (computed on
 * first use and kept; for a diffusers folder, of its UNet weights file). */
MOOD_WARN_UNUSED int mood_model_short_hash(const mood_model *m, char out[11]);
/* The noise schedule the model was trained with (a copy may be changed and passed to a run). */
const mood_noise_schedule *mood_model_schedule(const mood_model *m);

/* ----- adapters ----------------------------------------------------------------------------- */

typedef enum mood_lora_mode {
    MOOD_LORA_MERGE = 0, /* W' = W + Σ mᵢ ΔWᵢ from pristine copies of the touched weights */
    MOOD_LORA_RUNTIME    /* y = W x + Σ mᵢ Bᵢ(Aᵢ x): side paths, weights untouched */
} mood_lora_mode;

/* Sets the adapters the model generates with (replacing the previous set; n = 0: none). In
 * merge mode, weights touched by the previous set are restored from their pristine copies
 * first, so switching sets never accumulates error. Every adapter is checked against the model
 * before anything changes: one for another base family is MOOD_EFAMILY naming the file and
 * both families; keys matching nothing in the model are reported through *unmatched_out (may be
 * NULL): the total number of such keys over all adapters. A mode other than the two is
 * MOOD_EINVAL. */
MOOD_WARN_UNUSED int mood_model_set_adapters(mood_model *m, const mood_weighted_adapter *adapters,
                                             size_t n, mood_lora_mode mode, size_t *unmatched_out);

/* ----- generation --------------------------------------------------------------------------- */

/* Where the initial and per-step noise comes from (see mood/rng.h). */
typedef enum mood_rng_kind {
    MOOD_RNG_TORCH_CPU = 0, /* torch.manual_seed(seed) + CPU randn: ComfyUI, diffusers */
    MOOD_RNG_TORCH_CUDA,    /* torch's CUDA Philox generator: AUTOMATIC1111's default */
    MOOD_RNG_MOOD           /* mood's own (the torch CPU generator, one stream per image) */
} mood_rng_kind;

/* A step preview: x0 estimate decoded to an image (B x 3 x H x W, [-1, 1]). */
typedef int (*mood_preview_fn)(const float *images, int batch, int width, int height, int step,
                               void *payload);

typedef struct mood_gen_options {
    const char *prompt;   /* A1111 syntax: (word:1.2), [word], BREAK */
    const char *negative; /* may be NULL */
    int width, height;    /* multiples of the VAE scale (8 for SD, 4 for mood-tiny; mood/vae.h
                             mood_vae_scale) */
    int batch;            /* images from one run */
    int steps;
    double cfg; /* classifier-free guidance scale; 1 disables the negative pass */
    mood_sampler_kind sampler;
    mood_sigma_schedule schedule;
    uint64_t seed;
    mood_rng_kind rng;
    int clip_skip;             /* A1111 numbering, 1 = last layer (SDXL: see above) */
    mood_progress_fn progress; /* phase "sample", one unit per step */
    void *progress_payload;
    mood_preview_fn preview; /* NULL, or called every preview_every steps */
    int preview_every;
    void *preview_payload;
    /* img2img (diffusers' StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline):
     * NULL, or the image to start from, 3 x height x width floats in [-1, 1]
     * (mood_gen_init_image makes them from a picture), the same for every image of a batch. Its
     * latents (the VAE's latent_dist.sample(), drawn from the run's noise source before the
     * initial noise) are noised to the level of step steps - int(steps * strength) and sampled
     * from there: strength 1 keeps only the image's mean in the noise, small values keep the
     * picture (A1111's "Denoising strength"). Not with the LCM sampler or EDM models. */
    const float *init_image;
    double strength; /* in (0, 1]; 0.75 by default (A1111's) */
    /* Inpainting, with init_image (diffusers' StableDiffusionInpaintPipeline): NULL, or height x
     * width floats, 1 where the picture is redrawn and 0 where it is kept (mood_gen_mask makes
     * them from a black-and-white picture); at latent resolution the mask is its pixel at the
     * top left of each block (torch's nearest interpolation). With an ordinary (4-channel) UNet
     * the kept area is put back after every step: the picture's latents noised to the next
     * step's level (the initial noise, as diffusers), the clean latents after the last. An
     * inpainting model (a UNet of 2 x 4 + 1 input channels: sd-v1-5-inpainting and its
     * fine-tunes) is given the mask and the masked picture's latents at every step instead, and
     * needs both (MOOD_EINVAL without). Strength 1 starts from pure noise, as diffusers'
     * inpainting does (img2img mixes the picture in even then). */
    const float *mask;
} mood_gen_options;

void mood_gen_options_init(mood_gen_options *o); /* 512x512, batch 1, 20 steps, cfg 7, Euler a */
/* An img2img start image from a picture (mood/image.h): alpha composited over white, resized to
 * width x height when it is another size (stretched, as A1111's "Just resize", with the
 * antialiased bilinear filter mood train uses), as 3 x height x width floats in [-1, 1]
 * (x / 127.5 - 1, diffusers' VaeImageProcessor). *out is malloc'd; free it with free(). */
MOOD_WARN_UNUSED int mood_gen_init_image(float **out, const mood_image *img, int width, int height);
/* An inpainting mask from a picture: its grey level (Pillow's convert("L") of the colours; alpha
 * is ignored, as there), resized to width x height when another size, then 1 where it is at least
 * half white (128 of 255) and 0 elsewhere, as diffusers' mask processor binarises. *out
 * (height x width floats) is malloc'd; free it with free(). */
MOOD_WARN_UNUSED int mood_gen_mask(float **out, const mood_image *img, int width, int height);

/* The size the model was trained at: its VAE config's sample_size (512 for SD1, 768 for SD2-v,
 * 1024 for SDXL, 64 for mood-tiny); where that says 512 or is missing or unusable (single-file
 * checkpoints), the family's: 1024 for SDXL, 768 for SD2 v-prediction, else 512. */
void mood_model_default_size(const mood_model *m, int *width, int *height);
/* What image sizes must be multiples of: the VAE's scale (8; 4 for mood-tiny). */
int mood_model_size_multiple(const mood_model *m);

/* Runs txt2img. *images_out (batch x 3 x height x width floats, CHW per image, the VAE's output:
 * about [-1, 1], not clamped; mood_image_from_float clamps as diffusers does) is malloc'd; free
 * it with free(). *latents_out (may be NULL) receives the final latents before decoding, as the
 * sampler leaves them (the UNet's space: the VAE's latents times its scaling_factor, Playground
 * v2.5's also normalised by its latents_mean/std), also malloc'd:
 * batch x C x height/s x width/s floats, where C is the model's VAE's latent channels and s its
 * scale (mood/vae.h): 4 and 8 for SD1, SD2 and SDXL; 48 and 4 for mood-tiny, whose pixel-space
 * "VAE" stacks 4 x 4 patches of the 3 colours as channels. A program asks for them with
 * mood_vae_load(&vae, model_path) (a pipeline folder or a single-file checkpoint), then
 * mood_vae_get_config(vae)->latent_channels and mood_vae_scale(vae); mood_model has no accessor
 * of its own.
 * Errors: MOOD_EINVAL (sizes, steps, cfg), MOOD_ECANCELLED (a callback stopped it), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_generate(mood_model *m, const mood_gen_options *o, float **images_out,
                                   float **latents_out);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_GEN_H */
