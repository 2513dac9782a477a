/*
 * schedule.c: the training side of the noise schedule, as diffusers' DDPMScheduler and kohya's
 * train_util / custom_train_functions compute it, and the random draws of a micro-batch.
 *
 * Numerics follow torch's float32 operations one at a time (this file is compiled with
 * -ffp-contract=off): alphas_cumprod is the sampler's table (engine/sampler.c, the same float32
 * betas and cumprod as every diffusers scheduler); add_noise gathers ac[t] ** 0.5 and
 * (1 - ac[t]) ** 0.5 (torch's pow(x, 0.5) is sqrt), then two products and a sum; kohya's
 * all_snr = (sqrt(ac) / sqrt(1 - ac)) ** 2. With these, a torch program with the same inputs
 * gets the same bits (tests/unit/test_train.c).
 *
 * Draws (kohya get_noise_noisy_latents_and_timesteps, on the CPU generator): randn_like(latents),
 * then noise + offset * randn(B, C, 1, 1) when a noise offset is set, then randint(min, max, (B,)),
 * then, with input perturbation, randn_like(latents) for the UNet's input only.
 */
#include <math.h>
#include <string.h>

#include "train/train_internal.h"

/* engine/sampler.c: the float32 alphas_cumprod of the scheduler of `kind` (DDIM's is the plain
 * table every DDPM-family scheduler holds). */
int mood__sampler_alphas_cumprod(float *out, const mood_noise_schedule *ns, mood_sampler_kind kind);

int mood__train_sched_init(mood__train_sched *s, const mood_noise_schedule *ns)
{
    int err;
    memset(s, 0, sizeof *s);
    if (!ns || ns->train_timesteps < 2 || ns->train_timesteps > 100000)
        return mood_error_set(MOOD_EINVAL, "training schedule: bad number of timesteps");
    s->T = ns->train_timesteps;
    s->pred = ns->prediction;
    s->alphas_cumprod = mood_malloc((size_t)s->T * sizeof *s->alphas_cumprod);
    s->snr = mood_malloc((size_t)s->T * sizeof *s->snr);
    if (!s->alphas_cumprod || !s->snr) {
        mood__train_sched_dispose(s);
        return mood_error_nomem();
    }
    if ((err = mood__sampler_alphas_cumprod(s->alphas_cumprod, ns, MOOD_SAMPLER_DDIM)) != 0) {
        mood__train_sched_dispose(s);
        return err;
    }
    for (int i = 0; i < s->T; i++) {
        float a = sqrtf(s->alphas_cumprod[i]), sg = sqrtf(1.0f - s->alphas_cumprod[i]);
        float r = a / sg;
        s->snr[i] = r * r;
    }
    return 0;
}

void mood__train_sched_dispose(mood__train_sched *s)
{
    mood_free(s->alphas_cumprod);
    mood_free(s->snr);
    memset(s, 0, sizeof *s);
}

int mood__train_draw(mood_rng_torch_cpu *g, float *noise, int64_t *t, float *tmp, int B, int C,
                     size_t hw, double offset, int t_min, int t_max)
{
    size_t n = (size_t)C * hw;
    int err = mood_rng_torch_cpu_randn(g, noise, (size_t)B * n);
    if (!err && offset != 0) {
        float off = (float)offset; /* a Python float times a float32 tensor: float32 op */
        err = mood_rng_torch_cpu_randn(g, tmp, (size_t)B * C);
        for (size_t bc = 0; !err && bc < (size_t)B * C; bc++) {
            float d = off * tmp[bc];
            for (size_t i = 0; i < hw; i++)
                noise[bc * hw + i] = noise[bc * hw + i] + d;
        }
    }
    if (!err)
        err = mood_rng_torch_cpu_randint(g, t, (size_t)B, t_min, t_max);
    return err;
}

int mood__train_perturb(mood_rng_torch_cpu *g, float *out, const float *noise, size_t n,
                        double gamma)
{
    float s = (float)gamma; /* a Python float times a float32 tensor: float32 op */
    int err = mood_rng_torch_cpu_randn(g, out, n);
    for (size_t i = 0; !err && i < n; i++) {
        float d = s * out[i];
        out[i] = noise[i] + d;
    }
    return err;
}

void mood__train_add_noise(const mood__train_sched *s, float *noisy, const float *x0,
                           const float *noise, const int64_t *t, int B, size_t n)
{
    for (int b = 0; b < B; b++) {
        float ac = s->alphas_cumprod[t[b]];
        float sa = sqrtf(ac), so = sqrtf(1.0f - ac);
        const float *x = x0 + (size_t)b * n, *e = noise + (size_t)b * n;
        float *y = noisy + (size_t)b * n;
        for (size_t i = 0; i < n; i++) {
            float p = sa * x[i], q = so * e[i];
            y[i] = p + q;
        }
    }
}

void mood__train_target(const mood__train_sched *s, float *target, const float *x0,
                        const float *noise, const int64_t *t, int B, size_t n)
{
    if (s->pred == MOOD_PRED_EPSILON || s->pred == MOOD_PRED_SAMPLE) {
        memcpy(target, s->pred == MOOD_PRED_SAMPLE ? x0 : noise, (size_t)B * n * sizeof *target);
        return;
    }
    for (int b = 0; b < B; b++) {
        float ac = s->alphas_cumprod[t[b]];
        float sa = sqrtf(ac), so = sqrtf(1.0f - ac);
        const float *x = x0 + (size_t)b * n, *e = noise + (size_t)b * n;
        float *y = target + (size_t)b * n;
        for (size_t i = 0; i < n; i++) {
            float p = sa * e[i], q = so * x[i];
            y[i] = p - q;
        }
    }
}

void mood__train_snr_weights(const mood__train_sched *s, float *w, const int64_t *t, int B,
                             double gamma)
{
    for (int b = 0; b < B; b++) {
        float snr = s->snr[t[b]], g = (float)gamma;
        float m = snr < g ? snr : g;
        if (gamma <= 0)
            w[b] = 1.0f;
        else if (s->pred == MOOD_PRED_V)
            w[b] = m / (snr + 1.0f);
        else if (s->pred ==
                 MOOD_PRED_SAMPLE) /* the x0 loss is the paper's own: weight min(snr, g) */
            w[b] = m;
        else /* SNR 0 (zero terminal SNR) with epsilon: 0 / 0 in kohya; no weighting here */
            w[b] = snr > 0 ? m / snr : 1.0f;
    }
}

int mood__train_randperm(mood_rng_torch_cpu *g, int32_t *out, size_t n)
{
    if (n >= (size_t)(UINT32_MAX / 20))
        return mood_error_set(MOOD_EINVAL, "randperm: %zu items is too many", n);
    for (size_t i = 0; i < n; i++)
        out[i] = (int32_t)i;
    for (size_t i = 0; i + 1 < n; i++) {
        size_t z = mood_rng_torch_cpu_next_u32(g) % (n - i);
        int32_t sav = out[i];
        out[i] = out[z + i];
        out[z + i] = sav;
    }
    return 0;
}
