/*
 * sampler_internal.h: what sampler.c and noise_schedule.c share (not installed).
 */
#ifndef MOOD_ENGINE_SAMPLER_INTERNAL_H
#define MOOD_ENGINE_SAMPLER_INTERNAL_H

#include "mood/sampler.h"

/* torch.linspace(start, end, n) in float32: start + step i for the first half, end - step
 * (n - 1 - i) for the second, each one fused multiply-add, as torch 2.15 computes it. */
void mood__torch_linspace_f32(float *out, double start, double end, int n);

/* Euler, Euler a and the DPM-Solvers: samplers that work on sigmas. */
int mood__is_sigma_sampler(mood_sampler_kind k);

/* The schedule's alphas_cumprod (num_train_timesteps floats) as diffusers computes it for the
 * sampler `kind` (LCM and DDIM read the same table). */
int mood__sampler_alphas_cumprod(float *out, const mood_noise_schedule *ns, mood_sampler_kind kind);

/* The scheduler's add_noise at every step k of a run: noised = a[k] x0 + b[k] noise (a and b:
 * o->steps floats each; see mood_sampler_add_noise, which takes one step's). */
int mood__sampler_noise_coefs(float *a, float *b, const mood_noise_schedule *ns,
                              const mood_sample_opts *o);

#endif /* MOOD_ENGINE_SAMPLER_INTERNAL_H */
