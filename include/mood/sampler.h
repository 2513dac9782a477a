/*
 * sampler.h: noise schedules and samplers for Stable Diffusion (SD1.x, SD2.x, SDXL), matching
 * diffusers' schedulers step for step on the CPU.
 *
 *   sampler        A1111 name        diffusers class (arguments)
 *   EULER          "Euler"           EulerDiscreteScheduler
 *   EULER_A        "Euler a"         EulerAncestralDiscreteScheduler
 *   DPMPP_2M       "DPM++ 2M"        DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint)
 *   DPMPP_2M_SDE   "DPM++ 2M SDE"    DPMSolverMultistepScheduler (sde-dpmsolver++, order 2)
 *   DDIM           "DDIM"            DDIMScheduler (eta from the options)
 *   LCM            "LCM"             LCMScheduler
 * The Karras schedule (MOOD_SCHEDULE_KARRAS: A1111's "DPM++ 2M Karras", or "Schedule type:
 * Karras") is use_karras_sigmas=True and applies to the four sigma-based samplers. diffusers has
 * no Karras option for Euler a: mood then uses EulerDiscreteScheduler's Karras sigmas and
 * timesteps with the ancestral step.
 *
 * Numerics follow diffusers' dtypes: the timestep and sigma schedule is computed as diffusers
 * computes it (torch float32 betas and alphas_cumprod, numpy float64 interpolation, float32
 * sigmas), and every latent update is done in float32 one operation at a time in diffusers'
 * order. Most runs are bit-identical to diffusers on x86-64, the rest agree to ~3e-7 relative
 * (tests/unit/test_sampler.c): torch's CPU sqrt/exp/log (MKL, Sleef) are not correctly rounded,
 * so a coefficient is now and then one float ulp away.
 *
 * Known deviations from diffusers, on purpose:
 *  - "trailing" spacing: numpy's arange makes one timestep too many for some step counts (61,
 *    103, 121, ... of 1000); diffusers then runs steps+1 model calls, mood exactly `steps`.
 *  - A repeated first timestep (Karras with hundreds of steps) makes diffusers skip a step
 *    (index_for_timestep picks the second match); mood runs the steps in order.
 *
 * DPM++ 2M SDE noise: mood follows diffusers, which draws each step's noise with torch.randn from
 * the pipeline's generator (one draw per step, including an unused one at the last step). A1111
 * and ComfyUI (k-diffusion's sample_dpmpp_2m_sde) use a BrownianTreeNoiseSampler instead: a
 * torchsde Brownian tree over sigma, seeded by the image seed, whose step noise is
 * (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|). Both are standard normal and
 * independent across steps, so the images look alike, but the values differ: the same seed does
 * not give the same image as A1111, and with a Brownian tree changing the step count moves the
 * image less. (sd.cpp has both: dpm++2m_sde with plain noise, dpm++2m_sde_bt.)
 *
 * Thread-safety: the functions keep no state; a run uses only its arguments.
 */
#ifndef MOOD_SAMPLER_H
#define MOOD_SAMPLER_H

#include <stddef.h>

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mood_sampler_kind {
    MOOD_SAMPLER_EULER = 0,
    MOOD_SAMPLER_EULER_A,
    MOOD_SAMPLER_DPMPP_2M,
    MOOD_SAMPLER_DPMPP_2M_SDE,
    MOOD_SAMPLER_DDIM,
    MOOD_SAMPLER_LCM
} mood_sampler_kind;

typedef enum mood_sigma_schedule {
    MOOD_SCHEDULE_DEFAULT = 0, /* the scheduler's own spacing (timestep_spacing) */
    MOOD_SCHEDULE_KARRAS       /* Karras et al. rho = 7 between the schedule's end sigmas */
} mood_sigma_schedule;

typedef enum mood_prediction {
    MOOD_PRED_EPSILON = 0, /* the model predicts the noise */
    MOOD_PRED_V,           /* v = alpha_t * noise - sigma_t * x0 (SD2-768, zero-SNR models) */
    MOOD_PRED_SAMPLE       /* the model predicts x0 itself (diffusers' "sample"; mood-tiny: a
                            * pixel-space model cannot carry 48 noise channels through 64-wide
                            * layers, while clean images are low-dimensional) */
} mood_prediction;

typedef enum mood_beta_schedule {
    MOOD_BETA_SCALED_LINEAR = 0, /* linear in sqrt(beta): SD, SDXL */
    MOOD_BETA_LINEAR,
    MOOD_BETA_SQUAREDCOS_CAP_V2 /* the cosine schedule (betas_for_alpha_bar) */
} mood_beta_schedule;

typedef enum mood_timestep_spacing {
    MOOD_SPACING_CLASS_DEFAULT = 0, /* not given: each scheduler class's default, as diffusers'
                                       from_config: linspace for Euler, Euler a and DPM++,
                                       leading for DDIM (LCM has its own spacing) */
    MOOD_SPACING_LEADING,
    MOOD_SPACING_TRAILING,
    MOOD_SPACING_LINSPACE
} mood_timestep_spacing;

/* The model's training noise schedule and the scheduler settings of diffusers'
 * scheduler_config.json. Fields a class does not know are ignored by it. */
typedef struct mood_noise_schedule {
    int train_timesteps; /* num_train_timesteps */
    double beta_start, beta_end;
    mood_beta_schedule beta_schedule;
    mood_prediction prediction; /* prediction_type */
    mood_timestep_spacing timestep_spacing;
    int steps_offset;
    int rescale_betas_zero_snr;   /* 0/1 */
    int clip_sample;              /* DDIM, LCM: 0/1, or -1 for the class default
                                     (DDIM 1, LCM 0) */
    double clip_sample_range;     /* 1.0 */
    int set_alpha_to_one;         /* DDIM, LCM: 0/1, or -1 for the class default (1) */
    int original_inference_steps; /* LCM: 50 */
    double timestep_scaling;      /* LCM: 10.0 */
    int final_sigma_min;          /* Euler, DPM++: final_sigmas_type "sigma_min" (1) or
                                     "zero" (0, default) */
    int lower_order_final;        /* DPM++: 1 (default) */
    int euler_at_final;           /* DPM++: 0 (default) */
    double lambda_min_clipped;    /* DPM++: -INFINITY (default) */
    /* EDM (Karras et al. 2022; Playground v2.5): diffusers' EDMEulerScheduler and
     * EDMDPMSolverMultistepScheduler, chosen by a scheduler_config.json "_class_name" starting
     * with "EDM". The model sees c_in(sigma) x at timestep 0.25 ln(sigma) and its output gives
     * denoised = c_skip x + c_out F with sigma_data; sigmas follow Karras' rho schedule from
     * sigma_max to sigma_min (always: A1111's "Karras" changes nothing). Euler, DPM++ 2M and
     * DPM++ 2M SDE are diffusers' EDM schedulers; Euler a takes Euler's EDM sigmas with the
     * ancestral step (k-diffusion's sample_euler_ancestral, as ComfyUI samples EDM models);
     * DDIM and LCM are refused. The beta fields are then unused. */
    int edm;
    double sigma_min, sigma_max, sigma_data, rho; /* EDM: 0.002, 80, 0.5, 7 */
} mood_noise_schedule;

/* diffusers' defaults for an empty scheduler_config.json (beta 0.0001..0.02 linear, epsilon,
 * 1000 steps, offset 0, spacing by class, ...; not EDM, with the EDM schedulers' defaults in
 * the sigma fields). */
void mood_noise_schedule_init(mood_noise_schedule *s);
/* SD1.x / SD2-base / SDXL: beta 0.00085..0.012 scaled_linear, 1000 steps, epsilon, "leading"
 * spacing with steps_offset 1, clip_sample and set_alpha_to_one off (SD's published
 * scheduler_config.json, with SDXL's explicit "leading"). SD2-768 is this with MOOD_PRED_V. */
void mood_noise_schedule_sd(mood_noise_schedule *s);
/* Reads a diffusers scheduler_config.json into *s, starting from mood_noise_schedule_init's
 * defaults (so absent fields mean what they mean to diffusers' from_config). Fields that pick a
 * sampler (use_karras_sigmas, algorithm_type, solver_order, ...) and unknown fields are ignored:
 * the sampler options choose those; "_class_name" only tells EDM schedulers (edm, sigma_min,
 * sigma_max, sigma_data, rho) from the others. Python's -Infinity/Infinity/NaN are accepted.
 * Errors: MOOD_ENOTFOUND / MOOD_EIO (file), MOOD_EFORMAT (not JSON, a field of the wrong type
 * or an unknown value, e.g. beta_schedule "cubic"), MOOD_EUNSUPPORTED (trained_betas,
 * prediction_type "flow_prediction", "sample" on an EDM schedule, an EDM sigma_schedule other
 * than "karras");
 * the message names the file and field. */
MOOD_WARN_UNUSED int mood_noise_schedule_from_json(mood_noise_schedule *s, const char *path);

/* Parses a sampler name, case-insensitively: A1111's ("Euler", "Euler a", "DPM++ 2M",
 * "DPM++ 2M SDE", "DDIM", "LCM", each sigma-based one optionally followed by " Karras", as
 * A1111 before 1.6 wrote "DPM++ 2M Karras"), mood's short names ("euler", "euler_a",
 * "dpmpp_2m", "dpmpp_2m_sde", "ddim", "lcm", optionally "_karras"), and ComfyUI's
 * "euler_ancestral". *sched is set to KARRAS when the name says so, else DEFAULT.
 * MOOD_EINVAL (naming the sampler and listing the known ones) for anything else, or Karras
 * with DDIM or LCM. */
MOOD_WARN_UNUSED int mood_sampler_parse(mood_sampler_kind *kind, mood_sigma_schedule *sched,
                                        const char *name);
/* Parses A1111's "Schedule type" ("Automatic", "Karras"; case-insensitive; also "default",
 * "karras"). MOOD_EINVAL naming the known ones otherwise (A1111's "Exponential", "Uniform",
 * ... are not available). */
MOOD_WARN_UNUSED int mood_sigma_schedule_parse(mood_sigma_schedule *sched, const char *name);
/* "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "LCM" (A1111 >= 1.6 writes the
 * schedule separately: "Schedule type: Karras"); NULL for an unknown kind. */
const char *mood_sampler_a1111_name(mood_sampler_kind kind);
/* mood's short name: "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "lcm". */
const char *mood_sampler_short_name(mood_sampler_kind kind);

/* The model as the sampler sees it: out = the raw model output (epsilon or v, per the schedule's
 * prediction) for the model input x_in (already scaled as diffusers' scale_model_input does) at
 * timestep t, for B images of n_per_image floats (the caller applies classifier-free guidance
 * inside). step is the 0-based step index. Non-zero return: the run stops and returns it. */
typedef int (*mood_model_fn)(float *out, const float *x_in, double timestep, int step, void *user);
/* Fills out with standard normal noise for B images of n_per_image floats each, contiguous. The
 * caller decides whether that is one torch.randn of the whole batch (diffusers with one
 * generator) or one per image (a list of generators); the step noise of diffusers' pipelines
 * comes from the generator that made the initial latents, right after them. */
typedef int (*mood_noise_fn)(float *out, int B, size_t n_per_image, void *user);

/* What a step produced, for previews. Pointers are valid during the callback only. */
typedef struct mood_sample_state {
    int step;          /* 0-based index of the step just taken */
    int steps;         /* steps in the run */
    double timestep;   /* the model timestep of this step */
    double sigma;      /* noise level before the step (sigmas_out[step] below) */
    double sigma_next; /* noise level of x after the step */
    const float *x;    /* the latents after the step (B x n_per_image) */
    const float *x0;   /* the step's estimate of the clean latents (B x n_per_image), in the
                          space of the final output (decode after dividing by the VAE scaling
                          factor): pred_original_sample; DPM-Solver's converted model output;
                          LCM's denoised */
    int B;
    size_t n_per_image;
} mood_sample_state;
/* Non-zero return cancels the run (MOOD_ECANCELLED). */
typedef int (*mood_sample_preview_fn)(const mood_sample_state *s, void *user);
/* Called after step `step` (0-based, of the whole schedule: start_step and on) with the latents,
 * which it may change (inpainting puts the kept area back); an error code stops the run. */
typedef int (*mood_sample_step_fn)(float *x, int step, void *user);

typedef struct mood_sample_opts {
    mood_sampler_kind kind;
    mood_sigma_schedule schedule;
    int steps;
    double eta;          /* DDIM only: 0 deterministic (default) */
    mood_noise_fn noise; /* needed by EULER_A, DPMPP_2M_SDE, LCM and DDIM with eta */
    void *noise_user;
    mood_progress_fn progress; /* phase "sample", done = steps taken, once per step */
    void *progress_user;
    mood_sample_preview_fn preview; /* once per step, before progress; may be NULL */
    void *preview_user;
    /* img2img (diffusers' Img2Img pipelines): the run takes the schedule's steps from
     * start_step on (0 .. steps - 1: the first start_step are skipped, as get_timesteps and
     * set_begin_index do), and with `noised` set the latents hold a clean image's latents already
     * noised to that step's level by mood_sampler_add_noise (so they are not scaled by
     * init_noise_sigma). Progress and previews count the steps run (steps - start_step). */
    int start_step;
    int noised;
    mood_sample_step_fn after_step; /* may be NULL; before preview and progress */
    void *after_step_user;
} mood_sample_opts;

/* Euler a, Karras off, 20 steps, eta 0, no callbacks. */
void mood_sample_opts_init(mood_sample_opts *o);

/* Runs the sampler. latents (B x n_per_image floats): in, the initial noise of unit variance
 * (it is multiplied here by the scheduler's init_noise_sigma, as diffusers' prepare_latents
 * does); out, the final denoised latents (what diffusers' pipeline hands the VAE before dividing
 * by scaling_factor). One model call per step. Errors: MOOD_EINVAL (bad options: steps out of
 * range for the schedule, a noise callback missing, Karras with DDIM/LCM), MOOD_ENOMEM,
 * MOOD_ECANCELLED, or what a callback returned; latents are then unspecified. */
MOOD_WARN_UNUSED int mood_sample(const mood_noise_schedule *ns, const mood_sample_opts *o,
                                 float *latents, int B, size_t n_per_image, mood_model_fn model,
                                 void *model_user);

/* The scheduler's add_noise at step o->start_step, in place: x (N floats, clean latents) becomes
 * x0 + sigma noise (Euler, Euler a, as EulerDiscreteScheduler), alpha_t x0 + sigma_t noise
 * (DPM++ and DDIM: DPMSolverMultistepScheduler with the VP alpha_t and sigma_t of the step's
 * sigma, DDIMScheduler with sqrt(alphas_cumprod[t])), with noise of unit variance. LCM (whose
 * img2img schedule depends on the strength) and EDM models are MOOD_EUNSUPPORTED; errors
 * otherwise as mood_sample. */
MOOD_WARN_UNUSED int mood_sampler_add_noise(const mood_noise_schedule *ns,
                                            const mood_sample_opts *o, float *x, const float *noise,
                                            size_t N);

/* The schedule a run will use: timesteps_out[steps] = the model timesteps (fractional for Euler
 * with Karras), sigmas_out[steps + 1] = the noise level (sigma = sqrt((1 - abar) / abar)) of the
 * latents before each step and after the last (0, or sigma_min with final_sigmas_type
 * "sigma_min"; for DDIM the level of its final alpha). init_sigma_out (may be NULL) = the
 * init_noise_sigma the initial noise is multiplied by. Either array may be NULL. Errors as
 * mood_sample. */
MOOD_WARN_UNUSED int mood_sampler_timesteps(const mood_noise_schedule *ns,
                                            const mood_sample_opts *o, double *timesteps_out,
                                            double *sigmas_out, double *init_sigma_out);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_SAMPLER_H */
