/*
 * train_internal.h: the parts of the trainer shared by the files of train/ (not installed).
 *
 *   dataset.c      mood boards: files (kohya's N_name folders), decode, flatten, buckets,
 *                  resize + crop, captions
 *   resize_stb.c   the one translation unit compiling stb_image_resize
 *   schedule.c     training noise schedule: draws, noisy latents, targets, min-SNR weights
 *   optim.c        AdamW (torch.optim.AdamW), learning-rate schedules, gradient clipping
 *   lora_params.c  the LoRA modules being trained: selection, init, flat buffers, output file
 *   checkpoint.c   training state files (safetensors)
 *   trainer.c      the loop: batches, accumulation, NaN stop, signals, progress
 *   plot.c         loss curve CSV and PNG
 *   unet_loss.c    the model's part of a step (mood_train_loss_fn) for a mood_model
 *   unet_step_cuda.c  that step's UNet forward and backward on the model's GPU copy
 *   sample.c       sample previews during a run (mood_train_options.sample_every)
 *   thumbnail.c    mood board thumbnails (mood_board_thumbnail)
 *   train.c        mood_train_run: model + board -> latents -> trainer -> LoRA file
 */
#ifndef MOOD_TRAIN_INTERNAL_H
#define MOOD_TRAIN_INTERNAL_H

#include "common/common.h"
#include "mood/image.h"
#include "mood/rng.h"
#include "mood/sampler.h"
#include "mood/train.h"
#include "mood/unet.h"

/* ----- resize_stb.c ----------------------------------------------------------------------- */

/* Resizes an RGB image (3 bytes per pixel, packed rows) with stb_image_resize's triangle
 * (antialiased bilinear) filter in linear space, edges clamped. MOOD_ENOMEM or MOOD_EINVAL. */
int mood__resize_rgb(uint8_t *out, int ow, int oh, const uint8_t *in, int w, int h);

/* ----- dataset.c -------------------------------------------------------------------------- */

/* kohya's bucket for an image of w x h (BucketManager.select_bucket without no_upscale, over
 * make_bucket_resolutions, or the single resolution x resolution bucket without buckets): the
 * bucket (bw, bh) and the size (rw, rh) the image is resized to before the centre crop. */
int mood__board_bucket(const mood_board_options *o, int w, int h, int *bw, int *bh, int *rw,
                       int *rh);
/* A decoded image as packed RGB composited over white (malloc'd), or NULL (out of memory). */
uint8_t *mood__board_flatten(const mood_image *img);
/* The bucket sizes a board loads with (o->buckets on): kohya's defaults (256, 1024, 64), which
 * hold no resolution below 256, scaled to one there (half to twice it, in steps of a quarter);
 * sizes a caller chose are kept. What ss_min_bucket_reso and ss_max_bucket_reso record. */
void mood__board_options_resolve(mood_board_options *o);
/* MOOD_EINVAL naming what is wrong with resolved board options (resolution, bucket sizes). */
int mood__board_options_check(const mood_board_options *o);
/* How many times item i is seen per epoch: N of a kohya N_name folder, else 1 (0: no item i). */
int mood__board_repeats(const mood_board *b, size_t i);

/* ----- schedule.c ------------------------------------------------------------------------- */

/* The training side of a noise schedule (diffusers' DDPMScheduler, kohya's all_snr). */
typedef struct mood__train_sched {
    int T;                 /* num_train_timesteps */
    mood_prediction pred;  /* what the model predicts: the target */
    float *alphas_cumprod; /* T, float32 as torch holds it */
    float *snr;            /* T: (sqrt(ac) / sqrt(1 - ac))² in float32 (kohya all_snr) */
} mood__train_sched;

int mood__train_sched_init(mood__train_sched *s, const mood_noise_schedule *ns);
void mood__train_sched_dispose(mood__train_sched *s);

/* The draws of one micro-batch, in kohya's order: noise (B x n) = randn; with offset != 0,
 * noise += offset * randn(B, C, 1, 1) (n = C * hw); t = randint(t_min, t_max, (B,)) (kohya: 0 and
 * T unless --min_timestep / --max_timestep). `tmp` holds B*C floats. */
/* Input perturbation (kohya's ip_noise_gamma, after the timesteps are drawn): out = noise +
 * gamma * randn_like(noise), n values, as torch's float32 ops. */
int mood__train_perturb(mood_rng_torch_cpu *g, float *out, const float *noise, size_t n,
                        double gamma);
/* The end (exclusive) of the timestep range: o->max_timestep, 0 meaning the schedule's T. */
static inline int mood__train_t_max(const mood_train_options *o, int T)
{
    return o->max_timestep > 0 ? o->max_timestep : T;
}
int mood__train_draw(mood_rng_torch_cpu *g, float *noise, int64_t *t, float *tmp, int B, int C,
                     size_t hw, double offset, int t_min, int t_max);
/* DDPMScheduler.add_noise: noisy = sqrt(ac[t]) * x0 + sqrt(1 - ac[t]) * noise, float32. */
void mood__train_add_noise(const mood__train_sched *s, float *noisy, const float *x0,
                           const float *noise, const int64_t *t, int B, size_t n);
/* The target: noise (epsilon) or DDPMScheduler.get_velocity (v = sqrt(ac) noise - sqrt(1-ac) x0).
 */
void mood__train_target(const mood__train_sched *s, float *target, const float *x0,
                        const float *noise, const int64_t *t, int B, size_t n);
/* kohya apply_snr_weight: w = min(snr, gamma) / snr (epsilon) or / (snr + 1) (v); all 1 when
 * gamma <= 0. */
void mood__train_snr_weights(const mood__train_sched *s, float *w, const int64_t *t, int B,
                             double gamma);
/* torch.randperm(n) on the CPU generator (n < 2^32 / 20: Fisher-Yates with random() % (n - i)). */
int mood__train_randperm(mood_rng_torch_cpu *g, int32_t *out, size_t n);

/* ----- optim.c ---------------------------------------------------------------------------- */

typedef struct mood__adamw {
    size_t n;
    float *m, *v; /* exp_avg, exp_avg_sq */
    double beta1, beta2, eps, weight_decay;
} mood__adamw;

int mood__adamw_init(mood__adamw *a, size_t n, double beta1, double beta2, double eps,
                     double weight_decay);
void mood__adamw_dispose(mood__adamw *a);
/* One torch.optim.AdamW step (single-tensor path, amsgrad off) on params[lo, hi) with learning
 * rate lr; `step` is the step number after incrementing (1 for the first step). */
void mood__adamw_update(const mood__adamw *a, float *params, const float *grads, size_t lo,
                        size_t hi, double lr, int64_t step);
/* torch.nn.utils.clip_grad_norm_ over tensors (off[i], off[i+1]) of g: returns the total norm;
 * scales g by min(1, max_norm / (norm + 1e-6)) in float32 when max_norm > 0. */
double mood__clip_grad_norm(float *g, const size_t *off, size_t n_tensors, double max_norm);

/* ----- lora_params.c ---------------------------------------------------------------------- */

/* One module to create. */
typedef struct mood__lora_spec {
    const char *weight; /* model weight name */
    const char *kohya;  /* kohya module name */
    mood_part part;
    int ndim;
    int64_t out, in, kh, kw;
    int rank;     /* 0: the rank given to mood__lora_params_new */
    double alpha; /* 0: likewise */
} mood__lora_spec;

typedef struct mood__full_params mood__full_params;

/* The parameters a run trains, in flat fp32 buffers the optimizer and checkpoints work on: LoRA
 * modules, or (full != NULL, full_params.c) every weight of the model. */
typedef struct mood__lora_params {
    mood_train_module *mods;
    size_t n;
    float *params, *grads; /* n_params each: module i's down then up, modules in order */
    size_t n_params;
    size_t *tensor_off;      /* n_tensors + 1 offsets: down_0, up_0, down_1, ..., n_params */
    size_t n_tensors;        /* tensors for clipping: 2n (full: every weight) */
    size_t te_end;           /* params [0, te_end) are the text encoder's (its learning rate) */
    mood_side_path *paths;   /* one per module, in order (text encoder modules first) */
    size_t n_te;             /* modules of the text encoder (at the start) */
    mood__full_params *full; /* full-parameter training; NULL for LoRA */
} mood__lora_params;

/* Modules for specs (copied) with their own rank / alpha or else these; parameters zero. */
int mood__lora_params_new(mood__lora_params **out, const mood__lora_spec *specs, size_t n, int rank,
                          double alpha);
void mood__lora_params_free(mood__lora_params *lp);
/* kohya's init: down = kaiming_uniform_(a = sqrt(5)) per module in order, up = 0. */
int mood__lora_params_init(mood__lora_params *lp, mood_rng_torch_cpu *g);
/* The modules of a model for a target set; te_layers > 0 adds the text encoder's attention
 * and MLP Linear layers of its first te_layers layers (the ones the conditioning uses), first;
 * te2_layers > 0 likewise SDXL's text encoder 2's (part MOOD_PART_TE2, lora_te2_ names), after
 * text encoder 1's (kohya's order). */
int mood__lora_params_for_model(mood__lora_params **out, mood_model *m, mood_train_targets targets,
                                int te_layers, int te2_layers, int rank, double alpha);
/* Runs the modules through the model: the UNet's, text encoder 1's and 2's side paths (each
 * part's modules, in order). */
int mood__lora_params_attach(const mood__lora_params *lp, mood_model *m);
/* Writes the kohya-format LoRA (mood__lora_write) with metadata pairs meta (NULL-terminated). */
int mood__lora_params_write(const mood__lora_params *lp, const char *path, mood_family family,
                            mood_dtype dtype, const char *const *meta);
/* A digest of the module layout (names, shapes, ranks; full: weight names and sizes), for
 * checkpoints. */
void mood__lora_params_layout(const mood__lora_params *lp, char hex_out[65]);

/* ----- full_params.c --------------------------------------------------------------------- */

/* Full-parameter training: every weight of the UNet and, with_te, of the text encoder (first) is
 * a parameter; the flat buffers hold copies of them in each model's weight order, copied back
 * into the model after every optimizer step (mood__full_params_sync). *out has no modules (n 0). */
int mood__full_params_for_model(mood__lora_params **out, mood_model *m, int with_te);
/* params -> the model's weights (and its UNet's GPU copy). Errors: the GPU copy's. */
int mood__full_params_sync(const mood__lora_params *lp);
/* The gradient buffers of every UNet / text-encoder weight inside lp->grads, as
 * mood_unet_backward_ex / mood_clip_backward take them (te: NULL without the text encoder). */
float *const *mood__full_params_unet_grads(const mood__lora_params *lp);
float *const *mood__full_params_te_grads(const mood__lora_params *lp);
mood_model *mood__full_params_model(const mood__lora_params *lp);
void mood__full_params_free(mood__full_params *fp);
/* mood__lora_params_layout of full parameters: names and sizes of every weight. */
void mood__full_params_layout(const mood__lora_params *lp, char hex_out[65]);
/* Full-parameter training's checks, made before anything is trained: the base must be a
 * diffusers folder (MOOD_EUNSUPPORTED for a single file; a path that does not exist is left to
 * mood_model_open), and an output that exists must be a model folder (model_index.json or unet/),
 * since it is replaced as a whole (MOOD_EINVAL). */
int mood__full_params_check(const char *model, const char *out_dir);
/* Whether path is dir or lies inside it, links followed (a path that does not exist: its nearest
 * existing parent decides), or its entry does (a link in dir pointing elsewhere). 0 when dir does
 * not exist. What keeps a run from writing into its base model's folder. */
int mood__path_inside(const char *path, const char *dir);
/* Writes the trained model: a copy of the diffusers folder src (configs, scheduler, VAE, ...)
 * with the UNet's (and text encoder's) weights replaced by the trained ones in dtype, written in
 * a temporary folder renamed to out_dir when complete (an existing out_dir is replaced only
 * then). */
int mood__full_params_write(const mood__lora_params *lp, const char *src, const char *out_dir,
                            mood_dtype dtype);

/* ----- data the loop trains on ------------------------------------------------------------ */

typedef struct mood__train_item {
    int h, w;             /* latent size */
    const float *lat[2];  /* C x h x w: as is, and flipped (NULL without flips) */
    const int32_t *ids;   /* 77 */
    const int32_t *ids2;  /* SDXL: 77, text encoder 2's (tokenizer_2's padding), else NULL */
    const float *context; /* ctx_len x ctx_dim, or NULL (trained text encoder) */
    const float *pooled;  /* SDXL: pooled_dim (the caption's pooled text embedding), else NULL */
    float time_ids[2][6]; /* SDXL: the size ids, as is and flipped (kohya's crop left differs) */
} mood__train_item;

typedef struct mood__train_data {
    const mood__train_item *items;
    size_t n;
    int C;
    int ctx_len, ctx_dim;
    int flip; /* items have flipped latents and epochs draw flips */
    /* caption dropout: the empty caption's ids (77) and context (NULL: trained text encoder) */
    const int32_t *empty_ids;
    const int32_t *empty_ids2; /* SDXL */
    const float *empty_context;
    /* SDXL: the pooled embedding's width and the empty caption's; 0 / NULL otherwise */
    int pooled_dim;
    const float *empty_pooled;
} mood__train_data;

/* ----- checkpoint.c ----------------------------------------------------------------------- */

/* Everything a resumed run needs besides what it rebuilds from its options. */
typedef struct mood__train_state {
    int64_t step;   /* optimizer steps done */
    int64_t epoch;  /* epochs started */
    int32_t *order; /* n_items: this epoch's permutation */
    uint8_t *flips; /* n_items: this epoch's flips */
    size_t n_items;
    int64_t cursor; /* items of this epoch's order already used */
    float *losses;  /* step values */
    float *lrs;     /* step values: the learning rate each step ran at (the UNet's) */
    uint8_t rng[MOOD_RNG_TORCH_CPU_STATE_SIZE];
} mood__train_state;

/* What must match between the run that saved and the run that resumes. */
typedef struct mood__train_fingerprint {
    char layout[65];
    uint64_t seed;
    int batch, accum, flip;
    size_t n_items;
    /* the options that shape the loss, as the command's options ("--noise-offset 0.05 ..."): a
     * resumed run must keep them (the LoRA's metadata states them for the whole run) */
    char loss[256];
    /* recorded, never compared: a resumed run may change them (and is told when it does) */
    int64_t steps; /* the run's planned steps */
    double lr;
    int schedule;
    int64_t warmup;
    char
        data[65]; /* the board as trained: SHA-256 of its images' pixels and captions, "" unknown */
} mood__train_fingerprint;

int mood__checkpoint_save(const char *path, const mood__train_fingerprint *fp,
                          const mood__lora_params *lp, const mood__adamw *opt,
                          const mood__train_state *st);
/* Loads into lp->params, opt->m/v and st (st's arrays allocated here, sized n_items / step).
 * MOOD_EINVAL naming the mismatch when fp differs from the file's. */
int mood__checkpoint_load(const char *path, const mood__train_fingerprint *fp,
                          mood__lora_params *lp, mood__adamw *opt, mood__train_state *st);
void mood__train_state_dispose(mood__train_state *st);
/* Whether `path` is the checkpoint of a run stopped before its planned steps (*step of *planned):
 * what a new run of the same output must not overwrite. 0 for no file, a finished run's, or one
 * written before the plan was recorded. */
int mood__checkpoint_unfinished(const char *path, int64_t *step, int64_t *planned);
/* Whether something is at `path` that is not a training checkpoint of mood (a LoRA named like
 * one, NAME.checkpoint.safetensors of a run named NAME.checkpoint): a run must not write its
 * checkpoint over it. */
int mood__checkpoint_foreign(const char *path);

/* ----- trainer.c -------------------------------------------------------------------------- */

typedef struct mood__trainer {
    const mood_train_options *o;
    mood__lora_params *lp;
    const mood__train_data *data;
    const mood__train_sched *sched;
    mood_rng_torch_cpu *g; /* in the state after init and latent draws (or to be restored) */
    mood_train_loss_fn loss;
    void *loss_user;
    const char *data_digest; /* in: the board's mood__train_fingerprint.data (NULL: unknown) */
    /* out: the loss and learning rate of every optimizer step (o->steps values each, owned by
     * the trainer) */
    float *losses, *lrs;
    int64_t n_losses;
    int64_t checkpoint_step; /* step of the last checkpoint written or loaded, -1: none */
    /* Called after each optimizer step with the steps done (NULL: none): returns 1 when it did
     * work (its time is kept out of it/s), 0 when not, or a negative MOOD_E* code (the run saves
     * a checkpoint and fails with it). */
    int (*after_step)(void *user, int64_t step);
    void *after_user;
} mood__trainer;

/* The checks of a run's options that need no model or data: each plain option's range
 * (MOOD_EINVAL naming the option, its value and what it takes). mood_train_run makes them before
 * any work, the trainer again for its direct callers. */
int mood__train_options_check(const mood_train_options *o);
/* Runs o->steps optimizer steps (resuming from o->checkpoint when o->resume). The losses are
 * left in t->losses (free with mood_free). */
int mood__trainer_run(mood__trainer *t);
/* 1 once a stop was asked for (signal, mood_train_request_stop) in the current run. */
int mood__train_stop_requested(void);

/* ----- plot.c ----------------------------------------------------------------------------- */

/* step,loss,loss_avg,lr lines. */
int mood__loss_csv(const char *path, const float *losses, const float *lrs, int64_t n);
/* A line plot of the losses (light) and their moving average (dark) as a PNG. */
int mood__loss_png(const char *path, const float *losses, int64_t n, const char *title);

/* ----- sample.c --------------------------------------------------------------------------- */

/* One preview prompt as rendered: its text with the trigger word filled in and kohya's per-prompt
 * options (--n, --w, ...) taken out into the fields they set (0 / NULL: the run's setting). */
typedef struct mood__sample_prompt {
    char *text, *negative;
    int width, height, steps;
    double cfg; /* < 0: the run's */
    int has_seed, has_sampler;
    uint64_t seed;
    mood_sampler_kind sampler;
    mood_sigma_schedule schedule;
} mood__sample_prompt;

typedef struct mood__train_samples {
    const mood_train_options *o;
    mood_model *m; /* with the side paths of the LoRA being trained */
    mood__sample_prompt *prompts;
    size_t n; /* 0: previews off */
    int size, clip_skip;
} mood__train_samples;

/* The previews of a run (off when o->sample_every is 0 or o->sample is NULL): size is the
 * training resolution (o->sample_size wins), clip_skip the one the captions were encoded with,
 * trigger what "{trigger}" becomes (NULL or "": the style has none, as when the board's
 * captions never hold it). */
int mood__train_samples_init(mood__train_samples *s, const mood_train_options *o, mood_model *m,
                             int size, int clip_skip, const char *trigger);
void mood__train_samples_dispose(mood__train_samples *s);
/* Renders every prompt after `step` optimizer steps (final: after the last one, the LoRA written)
 * and hands each to o->sample. Returns 1 when it rendered, 0 when off, or an error. */
int mood__train_samples_render(mood__train_samples *s, int64_t step, int final);
/* mood__trainer.after_step: renders at the multiples of sample_every before the last step. */
int mood__train_samples_after_step(void *user, int64_t step);

/* ----- unet_loss.c ------------------------------------------------------------------------ */

/* The UNet tape's flags for a step of B samples of h x w latents and ctx_len tokens, on either
 * backend: gradient checkpointing as the run asked (m->train_checkpointing, from
 * mood_train_options.checkpointing), or, where it left the choice to mood (-1), decided here the
 * first time and kept: on only when the activations a kept tape holds and the backward pass's
 * working memory (mood_unet_train_memory) pass half the memory free now (the system's, or the
 * GPU's with the UNet on it). Checkpointing computes the resnets and transformer blocks again in
 * the backward pass, 40% more time a step for SD1.5 at 512 x 512 on a CPU (bench/RESULTS.md), for
 * a gigabyte less there; the weights come out the same either way. */
unsigned mood__train_tape_flags(mood_model *m, int B, int h, int w, int ctx_len);

/* Whether a run with options o trains in bf16 mixed precision: its UNet opened on a GPU in bf16
 * (mood_model_options.cuda_fp32 = 0; engine/cuda/unet_cuda.h, "Precision"). */
static inline int mood__train_bf16(const mood_train_options *o)
{
    return o->model_options && o->model_options->cuda_device >= 0 && !o->model_options->cuda_fp32;
}

/* The built-in mood_train_loss_fn for a mood_model (user = the mood_model). */
int mood__train_model_loss(void *user, const mood_train_batch *batch, mood_train_module *modules,
                           size_t n_modules, double *loss_out);
/* The same for full-parameter training (user = the mood__lora_params of
 * mood__full_params_for_model): the gradients of every weight into its grads. */
int mood__train_full_loss(void *user, const mood_train_batch *batch, mood_train_module *modules,
                          size_t n_modules, double *loss_out);

/* ----- unet_step_cuda.c -------------------------------------------------------------------- */

/* The UNet's part of a training step on the model's GPU copy (m->cuda_unet): forward uploads
 * the batch's input with context and text_embeds (either may be the batch's or the step's own),
 * runs the forward with the model's GPU tape and writes the prediction to the host's pred;
 * backward takes the host's dL/dpred and ADDS the gradients of every module's factors (the UNet's
 * modules, in the order of the model's side paths), of the context when dctx is not NULL, of
 * SDXL's text_embeds when dembeds is not NULL and of the base weights when unet_wg is not NULL
 * (mood_unet_backward_ex's layout) into the host buffers. The step's device memory goes back with
 * mood__cuda_step_free. */
typedef struct mood__cuda_step mood__cuda_step;
int mood__cuda_step_forward(mood__cuda_step **out, mood_model *m, const mood_train_batch *b,
                            const float *context, const float *text_embeds, float *pred);
int mood__cuda_step_backward(mood__cuda_step *s, mood_model *m, const float *dout,
                             const mood_train_module *modules, size_t n_modules, float *dctx,
                             float *dembeds, float *const *unet_wg);
void mood__cuda_step_free(mood__cuda_step *s);

#endif /* MOOD_TRAIN_INTERNAL_H */
