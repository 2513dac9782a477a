/*
 * train.h: training a style LoRA from a mood board (a folder or a list of image files).
 *
 * The recipe follows kohya sd-scripts' train_network.py (engine-anchors.md §4.1) and diffusers'
 * train_text_to_image_lora.py, in the manner of llm.c's training loop (§2): flat fp32 parameter,
 * gradient and AdamW buffers, one loop, checkpoints that resume bit for bit.
 *
 *   board      images decoded (PNG, JPEG, WebP, BMP; EXIF orientation), alpha flattened on
 *              white, resized (antialiased bilinear, stb_image_resize) and centre-cropped to the
 *              training size or to kohya's aspect-ratio buckets; captions from NAME.txt beside
 *              each image (kohya's convention), else a template with the trigger word.
 *   latents    every (image, flip) VAE-encoded once: latent_dist.sample() * scaling_factor, as
 *              kohya's cache_latents does (the sample's noise comes from the training generator,
 *              see "Randomness" below).
 *   step       noise, noise offset, timesteps, noisy latents and the epsilon or v target as
 *              kohya's get_noise_noisy_latents_and_timesteps; per-sample min-SNR-γ weights
 *              (kohya apply_snr_weight); the model's loss and LoRA gradients (mood_train_loss_fn);
 *              gradient accumulation, clipping by global norm, AdamW (torch.optim.AdamW), the
 *              learning rate from diffusers' get_scheduler.
 *   output     a kohya-format LoRA (lora_up / lora_down / alpha, kohya module names) with the
 *              ss_* and modelspec.* metadata kohya writes; the loss curve as CSV and PNG;
 *              sample previews every N steps and at the end (sample_every).
 *
 * Randomness: one torch CPU generator (mood/rng.h) seeded with `seed` makes every random number,
 * in this order, so a torch program doing the same draws reproduces the run
 * (tools/make_fixtures_train.py is one):
 *   1. LoRA init: for each module in order, down = kaiming_uniform_(a = sqrt(5)) (torch.nn.Linear's
 *      and kohya's init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))), up = 0; no draws for up.
 *   2. Latent cache: for each image in board order, unflipped then (with flips) flipped:
 *      torch.randn(latent shape) for latent_dist.sample().
 *   3. Per epoch: torch.randperm(n_images); with flips, torch.rand(n_images) (image i is used
 *      flipped this epoch when its value < 0.5).
 *   4. Per micro-batch: noise = torch.randn(B, C, h, w); with a noise offset,
 *      noise += offset * torch.randn(B, C, 1, 1); timesteps = torch.randint(0, T, (B,)); with
 *      caption dropout, torch.rand(B) (sample b's caption is dropped when its value < the rate).
 * LoRA modules are initialised in mood's module order: the down blocks, the mid block, then the
 * up blocks (kohya and diffusers walk the UNet's modules as down, up, mid). Full-parameter
 * training makes no init draws (the weights are the base model's).
 * A resumed run restores the generator's state from the checkpoint.
 *
 * Thread-safety: a training run uses its model alone; runs on different models may overlap.
 */
#ifndef MOOD_TRAIN_H
#define MOOD_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "mood/core.h"
#include "mood/gen.h"
#include "mood/lora.h"
#include "mood/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----- mood boards ---------------------------------------------------------------------------- */

typedef struct mood_board_options {
    int resolution; /* training side in pixels (multiple of 64): 512 */
    /* 0: every image resized so that it covers resolution x resolution and centre-cropped to
     * it; 1: kohya's aspect-ratio buckets (make_bucket_resolutions: sides from min_bucket to
     * max_bucket in steps of bucket_step, area at most resolution²), each image resized to cover
     * the bucket of the nearest aspect ratio and centre-cropped to it. */
    int buckets;
    /* 256, 1024, 64 (kohya's); left at those, a resolution below 256 gets half to twice it in
     * steps of a quarter of it (64: 32 to 128 by 16) */
    int min_bucket, max_bucket, bucket_step;
    const char *trigger; /* replaces "{trigger}" in the template; may be NULL */
    /* Caption of an image without a sidecar caption file: "{trigger}, a picture" (without a
     * trigger: "a picture"). */
    const char *caption_template;
    const char *caption_ext; /* sidecar caption extension: ".txt" */
} mood_board_options;

void mood_board_options_init(mood_board_options *o);

/* One image of a board, ready for the VAE. */
typedef struct mood_board_item {
    const char *path;          /* the image file */
    const char *caption;       /* the sidecar's first non-empty line, or the template */
    int caption_from_file;     /* 1 when the caption came from a sidecar file (or, for an image
                                  of a kohya N_name folder without one, from the folder's name) */
    int src_width, src_height; /* the decoded (upright) image */
    int width, height;         /* training size: its bucket, or resolution x resolution */
    const uint8_t *rgb;        /* width x height x 3 bytes (RGB, rows top first) */
} mood_board_item;

typedef struct mood_board mood_board;

/* Loads a board from n paths, each an image file or a folder (whose PNG, JPEG, WebP and BMP
 * files are taken, in name order; other files are ignored). A folder with no images of its own
 * but kohya's N_name subfolders (10_mystyle/) gives their images, each N times per epoch in the
 * trainer, captioned "mystyle" where they have no caption file, as kohya does; other subfolders are
 * skipped with a warning (mood_log). Every image is decoded before anything else happens; when some
 * cannot be, the one error (MOOD_EFORMAT, or the code of the first failure when all share it) names
 * each of them with its reason. Errors also: MOOD_EINVAL (no paths, NULL options, bad options,
 * no images: each said as such), MOOD_ENOTFOUND (a path that does not exist), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_board_load(mood_board **out, const char *const *paths, size_t n,
                                     const mood_board_options *o);
void mood_board_free(mood_board *b);
size_t mood_board_count(const mood_board *b);
/* Borrowed, valid while b lives; NULL for i out of range. */
const mood_board_item *mood_board_item_at(const mood_board *b, size_t i);
/* Whether a LoRA trained on b learns `trigger`: some image's caption holds it as whole words, in
 * any case ("app" is not in "red apple"); a caption from the template always does. A board whose
 * sidecar captions never name it teaches a style that needs no word in the prompt, and the word,
 * never seen in training, would only change the prompt (on a small text encoder such as
 * mood-tiny's, into noise). 0 for a NULL or empty trigger. */
int mood_board_uses_trigger(const mood_board *b, const char *trigger);
/* The item as the VAE takes it: out (3 x height x width floats) = (px / 255 - 0.5) / 0.5 in
 * float32 (torchvision ToTensor + Normalize([0.5], [0.5])), mirrored left-right when flip. */
void mood_board_item_tensor(float *out, const mood_board_item *it, int flip);
/* A thumbnail of a board image for the style's record: the whole upright picture (not the
 * training crop; alpha over white) scaled so that its longer side is max_side pixels (never
 * enlarged; antialiased as the board's resize), encoded as a baseline JPEG of quality 85.
 * *jpeg_out (*size_out bytes) is malloc'd: free it with free(). Errors: those of
 * mood_image_load (the file changed since the board was loaded), MOOD_EINVAL (max_side < 1),
 * MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_board_thumbnail(uint8_t **jpeg_out, size_t *size_out, int *width_out,
                                          int *height_out, const mood_board_item *it, int max_side);

/* ----- the model's part of a step ------------------------------------------------------------- */

/* One LoRA module being trained: y = W x + scale · up(down(x)) on a Linear or Conv2d weight. */
typedef struct mood_train_module {
    const char *weight; /* the model's weight name (diffusers UNet / transformers CLIP naming) */
    const char *kohya;  /* kohya module name, e.g. "lora_unet_down_blocks_0_attentions_0_proj_in" */
    mood_part part;     /* MOOD_PART_UNET or MOOD_PART_TE1 */
    int ndim;           /* 2 (Linear) or 4 (Conv2d) */
    int64_t out, in, kh, kw;
    int rank;
    double alpha;
    float scale;                /* alpha / rank */
    float *down, *up;           /* rank x (in·kh·kw), out x rank: the trained values */
    float *down_grad, *up_grad; /* their gradients, same shapes */
} mood_train_module;

/* One micro-batch of B samples of C x h x w latents (every sample of a batch has one size). */
typedef struct mood_train_batch {
    int B, C, h, w;
    const float *latents;   /* B x C x h x w: the clean latents x0 (scaled) */
    const float *noise;     /* B x C x h x w: the noise added (after the noise offset) */
    const float *noisy;     /* B x C x h x w: x_t, the model's input */
    const float *timesteps; /* B: the model's timesteps (integers 0 .. T-1) */
    const float *target;    /* B x C x h x w: epsilon (= noise) or v */
    const float *weights;   /* B: per-sample loss weights (min-SNR-γ; 1 when off) */
    const int32_t *ids;     /* B x 77: the captions' token ids (for a trained text encoder) */
    const float *context;   /* B x ctx_len x ctx_dim: the text encoder's output (frozen
                               encoder); NULL when the text encoder is trained */
    int ctx_len, ctx_dim;
    float grad_scale; /* multiply the gradients by this (1 / accumulation steps) */
    int clip_skip;    /* the options' clip skip (A1111 numbering; a model with a fixed one, SD2,
                         uses its own), for a loss that encodes the captions itself */
    /* SDXL's added conditioning (NULL for other families): the pooled text embeddings
       (B x pooled_dim, text encoder 2's projection; NULL when the text encoders are trained,
       like context) and the size ids (B x 6: original height, width, crop top, left, target
       height, width, as kohya's SDXL training computes them) */
    const float *text_embeds;
    const float *time_ids;
    int pooled_dim;
    /* SDXL: text encoder 2's token ids (B x 77: the captions as tokenizer_2 pads them, with its
       pad id after the end token), for a loss that encodes the captions itself (a trained text
       encoder); NULL for other families */
    const int32_t *ids2;
} mood_train_batch;

/* The model's part of a training step. Computes the batch's loss,
 *     loss = mean_b( weights[b] * mean_{c,y,x} (pred[b] - target[b])² ),
 * with pred = the model's output for (noisy, timesteps, context) with the modules' side paths,
 * and ADDS grad_scale * d(loss)/d(param) to every module's down_grad and up_grad. *loss_out gets
 * the loss (not scaled). Returns 0 or a negative MOOD_E* code (with mood_error_set). The
 * modules' down/up must not be changed. */
typedef int (*mood_train_loss_fn)(void *user, const mood_train_batch *batch,
                                  mood_train_module *modules, size_t n_modules, double *loss_out);

/* ----- a training run ------------------------------------------------------------------------- */

typedef enum mood_train_targets {
    MOOD_TRAIN_ATTN = 0,    /* attention q, k, v, out (diffusers' default) */
    MOOD_TRAIN_ATTN_FF,     /* + the feed-forward Linear layers */
    MOOD_TRAIN_ALL,         /* kohya's targets with LoCon: every Linear/Conv of the transformers
                               (incl. proj_in/out), resnets and resamplers */
    MOOD_TRAIN_STYLE_BLOCKS /* attention of the B-LoRA / InstantStyle style block only: SDXL
                               up_blocks.0.attentions.1; SD1/SD2 its counterpart
                               up_blocks.1.attentions.1 */
} mood_train_targets;

/* "attn", "attn+ff", "all", "style-blocks". MOOD_EINVAL (listing them) for anything else. */
MOOD_WARN_UNUSED int mood_train_targets_parse(mood_train_targets *out, const char *name);
const char *mood_train_targets_name(mood_train_targets t);

typedef enum mood_lr_schedule {
    MOOD_LR_CONSTANT = 0, /* diffusers "constant_with_warmup" ("constant" when warmup is 0) */
    MOOD_LR_COSINE,       /* "cosine" (half a cycle to 0 after the warmup) */
    MOOD_LR_LINEAR        /* "linear" (to 0 after the warmup) */
} mood_lr_schedule;

MOOD_WARN_UNUSED int mood_lr_schedule_parse(mood_lr_schedule *out, const char *name);
/* The multiplier of the base learning rate at optimizer step `step` (0-based) of `total`, as
 * diffusers' get_scheduler(name, num_warmup_steps = warmup, num_training_steps = total) lambdas
 * compute it in Python floats. */
double mood_lr_factor(mood_lr_schedule s, int64_t step, int64_t warmup, int64_t total);

/* What a run reports through its progress callback. */
typedef struct mood_train_progress {
    const char *phase;   /* "load", "board", "cache", "train", "save", "sample" */
    int64_t done, total; /* units of the phase (images, steps; sample: sampler steps of the
                            current round of previews) */
    int epoch;
    double loss;     /* train: the last optimizer step's loss (mean of its micro-batches) */
    double loss_avg; /* train: exponential moving average of the loss (0.9) */
    double lr;       /* train: the learning rate of the last step */
    double it_per_s; /* train: optimizer steps per second in this session */
    double eta_s;    /* train: seconds left at that rate */
} mood_train_progress;

/* Non-zero return: the run saves a checkpoint and stops with MOOD_ECANCELLED. */
typedef int (*mood_train_progress_fn)(const mood_train_progress *p, void *payload);

/* One sample preview, rendered during a run (mood_train_options.sample_every). */
typedef struct mood_train_sample {
    int64_t step;                /* optimizer steps done when it was rendered */
    int final;                   /* 1: after the last step, the LoRA file written */
    size_t index, count;         /* its prompt: index of count */
    const mood_gen_options *gen; /* exactly what was rendered: prompt, negative, size, steps,
                                    cfg, sampler, seed, rng, clip skip */
    const mood_model *model;     /* the base model (its name and hash), borrowed */
    const float *image;          /* 3 x gen->height x gen->width, about [-1, 1]: mood_generate's
                                    output (mood_image_from_float converts it) */
} mood_train_sample;

/* Gets each preview (the pointers are valid during the call). Non-zero return: the run saves a
 * checkpoint and fails with that code when it is a MOOD_E* code, else with MOOD_ECANCELLED. */
typedef int (*mood_train_sample_fn)(const mood_train_sample *s, void *payload);

typedef struct mood_train_options {
    const char *model;                       /* base model (mood_model_open) */
    const mood_model_options *model_options; /* may be NULL */
    const char *const *board;                /* image files and folders */
    size_t n_board;
    mood_board_options board_opts; /* resolution 0: the model's own size
                                      (mood_model_default_size, as mood gen's) */
    const char *name;              /* ss_output_name, modelspec.title */
    const char *output;            /* the LoRA file written at the end */
    mood_dtype save_dtype;         /* F16 (F32, BF16) */
    const char *checkpoint;        /* training state, written every checkpoint_every steps and when
                                      stopped (signal, callback); NULL: none */
    int checkpoint_every;          /* 0: only when stopped */
    int resume;                    /* continue from `checkpoint` */
    const char *loss_csv, *loss_png; /* loss curve files (NULL: not written) */
    mood_train_targets targets;      /* ATTN_FF */
    int train_te;                    /* LoRA on the text encoder too (0): captions are then
                                        encoded at every step, not cached; with `full`, every
                                        text-encoder weight. SDXL (as kohya's
                                        sdxl_train_network.py): both encoders' LoRA
                                        (lora_te1_, lora_te2_) on the layers the conditioning
                                        uses: text encoder 1's up to its penultimate layer,
                                        all of text encoder 2's (its pooled output feeds the
                                        UNet's added embedding through the projection).
                                        Without it SDXL trains the UNet on the cached
                                        conditioning of both encoders (hidden_states[-2] of
                                        each, the pooled embedding). SDXL always takes the
                                        penultimate layers: a clip skip above 2, and `full`,
                                        are MOOD_EUNSUPPORTED; kohya's size ids per image */
    /* Full-parameter training (0): every weight of the UNet (and, with train_te, of the text
     * encoder) is trained instead of LoRA modules (rank, alpha and targets are unused), e.g. to
     * make a small base model. The base must be a diffusers folder (a single file is
     * MOOD_EUNSUPPORTED, before anything is trained); `output` is then a folder written like it
     * (its configs copied, the trained weights in save_dtype) that mood_model_open loads. An
     * existing output is replaced once the new folder is complete, and must be a model folder
     * (model_index.json or unet/; anything else is MOOD_EINVAL up front). */
    int full;
    /* Caption dropout (0): each sample of a micro-batch gets the empty caption with this
     * probability (a torch.rand(B) draw after the timesteps), which teaches the model the
     * unconditional prediction classifier-free guidance needs. */
    double caption_dropout;
    int rank;                     /* 16 */
    double alpha;                 /* 8 */
    int64_t steps;                /* optimizer steps: 1000 */
    int batch;                    /* images per micro-batch: 1 */
    int accum;                    /* micro-batches per optimizer step: 1 */
    double lr;                    /* 1e-4 */
    double te_lr;                 /* text-encoder learning rate; 0: lr */
    mood_lr_schedule lr_schedule; /* CONSTANT */
    int64_t warmup;               /* warmup steps: 0 */
    double weight_decay;          /* 1e-2 (torch's AdamW default) */
    double beta1, beta2, eps;     /* 0.9, 0.999, 1e-8 */
    double max_grad_norm;         /* 1.0; 0: no clipping */
    double min_snr_gamma;         /* -1: by prediction: 5 (kohya's advice) for epsilon and v,
                                     0 for x0, where min(snr, 5) weighs the x0 error and would
                                     all but drop the noisy half of the schedule; 0: off */
    double noise_offset;          /* 0.05; 0: off */
    double ip_noise_gamma;        /* input perturbation (DDPM-IP, kohya's --ip_noise_gamma): the
                                     UNet's input is noised with noise + gamma * N(0, 1) while the
                                     target keeps the noise, against exposure bias; 0: off */
    int min_timestep;             /* timesteps are drawn from [min_timestep, max_timestep) */
    int max_timestep;             /* (kohya's --min_timestep, --max_timestep); 0 and 0: all */
    int checkpointing;            /* gradient checkpointing (the UNet's activations computed again
                                     in the backward pass: less memory, more time): 1 on, 0 off,
                                     -1 (default) on when keeping them would take more than half
                                     the free memory (the GPU's, training there) */
    int prediction;               /* -1: the model's; else a mood_prediction */
    int flip;                     /* horizontal flips: 1 */
    int clip_skip;                /* 1 (A1111 numbering) */
    uint64_t seed;                /* 0 */
    const char *comment;          /* ss_training_comment; may be NULL */
    /* Install SIGINT/SIGTERM/SIGHUP handlers for the run (restored after): a signal saves a
     * checkpoint and stops with MOOD_ECANCELLED. Programs with their own handler call
     * mood_train_request_stop instead. */
    int handle_signals;
    mood_train_progress_fn progress;
    void *progress_payload;
    /* The model's part of a step; NULL: mood's UNet (and text encoder) backward. */
    mood_train_loss_fn loss;
    void *loss_user;
    /* Sample previews: every sample_every optimizer steps (0: never) and once more after the
     * last step, each prompt is rendered (mood_generate on the base model, at the training
     * resolution unless sample_size) with the LoRA being trained applied as runtime side paths
     * on the very weights being trained (no copy), and handed to `sample`; the progress
     * callback sees phase "sample" (sampler steps). Each prompt keeps its seed (sample_seed + its
     * index), so that the previews of different steps compare; they draw from their own
     * generator, so a run with previews trains the same LoRA as one without. Time spent on
     * previews is left out of it_per_s and added to eta_s. Costly on a CPU (an SD1.5 preview
     * takes minutes): off by default. */
    int sample_every;
    const char *const *sample_prompts; /* "{trigger}" is replaced by the board's trigger word
                                          (without one, with the ", " after it); none (n 0):
                                          "{trigger}, a portrait", "{trigger}, a landscape".
                                          A prompt may end with kohya's per-prompt options
                                          (its sample_prompts lines): --n NEGATIVE, --w W,
                                          --h H, --d SEED, --s STEPS, --l CFG, --ss SAMPLER;
                                          they win over the settings below for that prompt */
    size_t n_sample_prompts;           /* at most 64 */
    const char *sample_negative;       /* may be NULL */
    int sample_steps;                  /* sampler steps (Euler a); 0: 20 */
    double sample_cfg;                 /* 0: 7 */
    int sample_size;             /* square side, a multiple of 8; 0: the training resolution */
    uint64_t sample_seed;        /* 0 */
    mood_train_sample_fn sample; /* NULL: no previews */
    void *sample_payload;
} mood_train_options;

/* The defaults above. */
void mood_train_options_init(mood_train_options *o);

/* Trains a LoRA: opens the model, loads the board, caches latents and text conditioning,
 * initialises (or, with resume, restores) the LoRA and optimizer, runs the steps, writes the
 * LoRA to `output` and the loss curve.
 * Before any of that (no progress phase yet, the model not opened), every check that needs
 * neither the model nor the images: each option's range (MOOD_EINVAL naming the option, its
 * value and what it takes; the board options when board_opts.resolution is given, the
 * previews' when previews are on), the checkpoint to resume from (MOOD_ENOTFOUND when missing),
 * and every file the run writes (output, checkpoint, loss_csv, loss_png): writable
 * (mood_output_path_check), and never what the run reads: the base model's single file, any
 * path inside its folder (links followed, and a link there to a file elsewhere), a board file
 * named in `board`, the checkpoint resumed from (MOOD_EINVAL naming both).
 * Errors: MOOD_EINVAL (options; a NaN or infinite loss: the message gives the step and the last
 * checkpoint kept), MOOD_ECANCELLED (a signal or the callback; a checkpoint was written when
 * `checkpoint` is set), MOOD_EUNSUPPORTED (a model the trainer cannot train yet), and those of
 * mood_model_open, mood_board_load and the file writes. */
MOOD_WARN_UNUSED int mood_train_run(const mood_train_options *o);

/* Whether `path` is the checkpoint of a run stopped before its planned steps (then *step of
 * *planned, when not NULL): what a new run of the same output refuses to overwrite, and what
 * --resume continues. 0 for no file, a finished run's, or a file that is no checkpoint. */
int mood_train_checkpoint_stopped(const char *path, int64_t *step, int64_t *planned);

/* Asks a running training to save a checkpoint and stop at the end of its current step.
 * Async-signal-safe (sets a flag). */
void mood_train_request_stop(void);
/* The signal (SIGINT, SIGTERM, SIGHUP) that stopped the last run of this process, when it ran
 * with handle_signals; 0 when none did. A command exits with 128 + it, as the shell reports. */
int mood_train_stop_signal(void);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_TRAIN_H */
