/*
 * model_impl.h: the parts of a loaded base model (mood/gen.h), shared by the files that load it
 * (model.c), apply adapters to it (model_adapters.c), turn prompts into conditioning
 * (conditioning.c) and generate (pipeline.c). Not installed.
 */
#ifndef MOOD_ENGINE_MODEL_IMPL_H
#define MOOD_ENGINE_MODEL_IMPL_H

#include "common/common.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/cuda/unet_cuda.h"
#include "mood/clip.h"
#include "mood/gen.h"
#include "mood/safetensors.h"
#include "mood/tokenizer.h"
#include "mood/unet.h"
#include "mood/vae.h"

/* A weight changed by merged adapters, with where its pristine value is read back from. */
typedef struct model_patch {
    float *w;                  /* the weight in the model (float32) */
    const mood_st_tensor *src; /* its tensor in the mapped weights file */
    int64_t numel;             /* floats of src (a fused q/k/v tensor restores all three) */
} model_patch;

/* One adapter of the current set, remembered so setting the same set again is free. */
typedef struct model_adapter_ref {
    char *path;
    double unet, te;
    int dyn; /* DyLoRA rank cut, 0: none */
} model_adapter_ref;

struct mood_model {
    char *path, *name;
    mood_family family;
    int folder; /* a diffusers folder (else a single file) */
    mood_checkpoint *ckpt;
    /* the alias table adapters resolve against: a single file's is ckpt's; a folder's, made on
     * first use, holds its weights by name */
    mood_checkpoint *names_base;
    mood_st_file *unet_file; /* where pristine UNet weights are read back from */
    mood_st_file *te_file;   /* likewise for the text encoder */
    int te_strip_text_model; /* folder: te_file's keys lack "text_model." (transformers 5) */
    mood_st_file *te2_file;  /* SDXL: likewise for text encoder 2 (a folder's own file) */
    int te2_strip_text_model;
    mood_tokenizer *tok;
    mood_clip *clip;
    mood_clip *clip2; /* SDXL: text encoder 2 (OpenCLIP bigG, with its projection), else NULL */
    mood_unet *unet;
    mood_cuda_ctx *cuda;       /* the GPU the UNet runs on (mood_model_options.cuda_device) */
    mood_cuda_unet *cuda_unet; /* its weights there, kept equal to unet's (merged adapters) */
    mood_vae *vae;
    mood_noise_schedule sched;
    int32_t pad_id;    /* 49407 (SD1, SDXL's CLIP-L), 0 (SD2's OpenCLIP tokenizer) */
    int32_t pad_id2;   /* SDXL: text encoder 2's (tokenizer_2's "!": 0) */
    int zero_negative; /* SDXL: an empty negative prompt conditions on zeros
                          (force_zeros_for_empty_prompt) */
    int latents_norm;  /* the latents are normalised with latents_mean/std (Playground v2.5) */
    int inpaint_unet;  /* the UNet also takes a mask and the masked picture's latents (9 channels
                          for SD: sd-v1-5-inpainting and its fine-tunes) */
    float latents_mean[MOOD_VAE_MAX_LATENTS], latents_std[MOOD_VAE_MAX_LATENTS];
    int fixed_clip_skip; /* > 0: the model always uses this clip skip (SD2: 2) */
    char short_hash[11]; /* "" until computed */
    /* adapters */
    model_patch *patches;
    size_t n_patches, cap_patches;
    model_adapter_ref *set; /* the current set */
    size_t n_set;
    size_t set_unmatched; /* its keys that matched nothing */
    mood_lora_mode set_mode;
    mood_side_path *paths; /* runtime side paths (UNet and text encoders together) */
    mood_part *path_part;  /* the part each path belongs to */
    size_t n_paths, cap_paths, cap_path_part;
    float **owned;                  /* factor buffers the side paths point into */
    mood_unet_tape *tape;           /* training: the UNet's activations, kept between steps */
    mood_cuda_unet_tape *cuda_tape; /* training on the GPU (cuda_unet): likewise, there */
    mood_clip_tape *clip_tape;      /* training the text encoder: likewise */
    mood_clip_tape *clip2_tape;     /* training SDXL's text encoder 2: likewise */
    int train_checkpointing;        /* the UNet tape's gradient checkpointing, as
                                       mood_train_options.checkpointing (-1 by the latent size) */
    size_t n_owned, cap_owned;
};

/* conditioning.c: the A1111 conditioning of a prompt: n_chunks x 77 rows of
 * mood__context_width floats, malloc'd into *out. */
int mood__encode_prompt(mood_model *m, const char *prompt, int clip_skip, float **out,
                        int *n_chunks);
/* As mood__encode_prompt; SDXL also gives the pooled text embedding (mood__pooled_width floats,
 * malloc'd) into *pooled (may be NULL; set to NULL for other families). */
int mood__encode_prompt_ex(mood_model *m, const char *prompt, int clip_skip, float **out,
                           int *n_chunks, float **pooled);
/* The UNet context width (text encoder hidden size; SDXL: both encoders') and the pooled
 * embedding's (SDXL: text encoder 2's projection; 0 otherwise). */
int mood__context_width(const mood_model *m);
int mood__pooled_width(const mood_model *m);
/* SDXL's add_time_ids for a width x height image: original size (h, w), crop (0, 0), target
 * size (h, w), as diffusers' _get_add_time_ids and A1111 build them. */
void mood__sdxl_time_ids(float out[6], int width, int height);

/* model_adapters.c: drops every side path and restores every patched weight. */
int mood__model_clear_adapters(mood_model *m);
void mood__model_free_adapters(mood_model *m);

#endif /* MOOD_ENGINE_MODEL_IMPL_H */
