/*
 * pipeline.c: txt2img (mood_generate in mood/gen.h), in the order of diffusers'
 * StableDiffusionPipeline.__call__: encode the prompt and the negative prompt, draw the initial
 * latents, run the sampler with classifier-free guidance around the UNet, decode with the VAE.
 *
 * SDXL (StableDiffusionXLPipeline.__call__) adds per UNet sample the pooled text embedding and
 * the six size ids (engine/conditioning.c), in the same [negative, positive] order; an empty
 * negative prompt is zeros there (force_zeros_for_empty_prompt), with as many tokens as the
 * positive prompt so both still run as one batch. Latents of a VAE with latents_mean/std
 * (Playground v2.5) are decoded from latents * std / scaling_factor + mean.
 *
 * Guidance runs the negative and the positive conditioning as one UNet batch of 2B in the order
 * [negative x B, positive x B] (diffusers' torch.cat([negative_prompt_embeds, prompt_embeds])),
 * or as two batches when the prompts have different numbers of 75-token chunks (A1111), then
 * eps = eps_neg + cfg (eps_pos - eps_neg). cfg <= 1 skips the negative pass, as diffusers'
 * do_classifier_free_guidance does.
 *
 * Noise (mood_rng_kind; documented for users in `mood help gen`):
 *   torch-cpu   one torch CPU generator seeded with the seed draws the whole batch's initial
 *               latents in one randn, then each ancestral/SDE step's noise for the whole batch:
 *               diffusers with generator=torch.Generator("cpu").manual_seed(seed), and ComfyUI.
 *   torch-cuda  AUTOMATIC1111: image i of a batch has seed + i and its own CUDA generator, which
 *               draws its initial latents and then its share of every step's noise.
 *   mood        like torch-cuda with torch's CPU generator: every image of a batch is the image
 *               that batch 1 with seed + i gives.
 */
#include <math.h>
#include <string.h>

#include "common/args.h"
#include "engine/model_impl.h"
#include "engine/sampler_internal.h"
#include "mood/rng.h"

typedef struct noise_src {
    mood_rng_kind kind;
    int B;
    mood_rng_torch_cpu *cpu[64]; /* one for torch-cpu, B for mood */
    mood_rng_torch_cuda *cuda[64];
} noise_src;

enum { MAX_BATCH = 64 };

static int noise_open(noise_src *s, mood_rng_kind kind, uint64_t seed, int B)
{
    int err = 0;
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->B = B;
    if (kind == MOOD_RNG_TORCH_CPU)
        return mood_rng_torch_cpu_new(&s->cpu[0], seed);
    for (int i = 0; i < B && !err; i++)
        err = kind == MOOD_RNG_TORCH_CUDA ? mood_rng_torch_cuda_new(&s->cuda[i], seed + i, NULL)
                                          : mood_rng_torch_cpu_new(&s->cpu[i], seed + i);
    return err;
}

static void noise_close(noise_src *s)
{
    for (int i = 0; i < MAX_BATCH; i++) {
        mood_rng_torch_cpu_free(s->cpu[i]);
        mood_rng_torch_cuda_free(s->cuda[i]);
    }
}

/* mood_noise_fn: B images of n floats each. */
static int noise_draw(float *out, int B, size_t n, void *user)
{
    noise_src *s = user;
    int err = 0;
    if (s->kind == MOOD_RNG_TORCH_CPU)
        return mood_rng_torch_cpu_randn(s->cpu[0], out, (size_t)B * n);
    for (int i = 0; i < B && !err; i++)
        err = s->kind == MOOD_RNG_TORCH_CUDA ? mood_rng_torch_cuda_randn(s->cuda[i], out + i * n, n)
                                             : mood_rng_torch_cpu_randn(s->cpu[i], out + i * n, n);
    return err;
}

/* ----- guidance --------------------------------------------------------------------------- */

typedef struct denoiser {
    mood_model *m;
    int B, h, w;
    size_t n; /* floats per image latent */
    double cfg;
    float *ctx;             /* [negative x B, positive x B] (positive x B without guidance) */
    int Tn, Tp;             /* context tokens of the negative and the positive prompt */
    float *pooled;          /* SDXL: the pooled embeddings in ctx's order (P each), else NULL */
    int P;                  /* their width */
    float *time_ids;        /* SDXL: 6 per UNet sample (all alike) */
    float *xin, *tin, *eps; /* UNet batch buffers */
    const float *cond;      /* an inpainting UNet's condition, B x nc (inpaint_ctx), else NULL */
    size_t nc;
    float *xcat; /* the UNet's input with the condition: NB x (n + nc) */
} denoiser;

/* The UNet's input for NB rows of x (row i is image i % B): x itself, or for an inpainting model
 * each row followed by its image's mask and masked picture's latents (diffusers'
 * torch.cat([latent_model_input, mask, masked_image_latents], dim=1): the scaling of the input
 * applies to the latents only). */
static const float *unet_input(denoiser *d, const float *x, int NB)
{
    if (!d->cond)
        return x;
    for (int i = 0; i < NB; i++) {
        float *row = d->xcat + (size_t)i * (d->n + d->nc);
        memcpy(row, x + (size_t)i * d->n, d->n * sizeof *row);
        memcpy(row + d->n, d->cond + (size_t)(i % d->B) * d->nc, d->nc * sizeof *row);
    }
    return d->xcat;
}

/* The UNet on `NB` images xin with contexts ctx of T tokens each (and for SDXL the pooled
 * embeddings from row `row` of d->pooled on), into eps. */
static int unet_pass(denoiser *d, float *eps, const float *xin, const float *ctx, int NB, int T,
                     int row, double timestep)
{
    const float *pooled = d->pooled ? d->pooled + (size_t)row * d->P : NULL;
    for (int i = 0; i < NB; i++)
        d->tin[i] = (float)timestep;
    if (d->m->cuda_unet)
        return mood_cuda_unet_forward(d->m->cuda_unet, eps, xin, d->tin, ctx, NB, d->h, d->w, T,
                                      pooled, d->pooled ? d->time_ids : NULL);
    return mood_unet_forward(d->m->unet, eps, xin, d->tin, ctx, NB, d->h, d->w, T, pooled,
                             d->pooled ? d->time_ids : NULL);
}

/* mood_model_fn: the guided model output for x_in (B images). When both prompts have as many
 * 75-token chunks, negative and positive run as one batch of 2B, as diffusers does; otherwise as
 * two batches with their own context lengths, as AUTOMATIC1111 does by default (its
 * pad_cond_uncond option off). */
static int denoise(float *out, const float *x_in, double timestep, int step, void *user)
{
    denoiser *d = user;
    size_t bn = (size_t)d->B * d->n;
    size_t C = (size_t)mood__context_width(d->m);
    int err;
    (void)step;
    const float *in;
    if (d->cfg <= 1.0)
        return unet_pass(d, out, unet_input(d, x_in, d->B), d->ctx, d->B, d->Tp, 0, timestep);
    memcpy(d->xin, x_in, bn * sizeof *x_in);
    memcpy(d->xin + bn, x_in, bn * sizeof *x_in);
    in = unet_input(d, d->xin, 2 * d->B); /* rows B.. equal rows ..B: either half serves */
    if (d->Tn == d->Tp)
        err = unet_pass(d, d->eps, in, d->ctx, 2 * d->B, d->Tp, 0, timestep);
    else if ((err = unet_pass(d, d->eps, in, d->ctx, d->B, d->Tn, 0, timestep)) == 0)
        err = unet_pass(d, d->eps + bn, in, d->ctx + (size_t)d->B * d->Tn * C, d->B, d->Tp, d->B,
                        timestep);
    if (err)
        return err;
    for (size_t i = 0; i < bn; i++) {
        float neg = d->eps[i], pos = d->eps[bn + i];
        out[i] = neg + (float)d->cfg * (pos - neg);
    }
    return 0;
}

/* The negative conditioning: the prompt's, or for SDXL's empty negative prompt zeros of the
 * positive's length (diffusers' torch.zeros_like(prompt_embeds)). */
static int encode_negative(denoiser *d, const mood_gen_options *o, int np, float **neg,
                           float **pooled, int *nn)
{
    mood_model *m = d->m;
    if (m->clip2 && m->zero_negative && (!o->negative || !o->negative[0])) {
        *nn = np;
        *neg = mood_calloc((size_t)np * MOOD_CLIP_CONTEXT * (size_t)mood__context_width(m),
                           sizeof **neg);
        *pooled = mood_calloc((size_t)d->P, sizeof **pooled);
        return *neg && *pooled ? 0 : mood_error_nomem();
    }
    return mood__encode_prompt_ex(m, o->negative, o->clip_skip, neg, nn, pooled);
}

/* d->ctx = [negative x B, positive x B] (or positive x B without guidance); SDXL: d->pooled in
 * the same order, d->time_ids for every row. */
static int build_context(denoiser *d, const mood_gen_options *o)
{
    mood_model *m = d->m;
    size_t C = (size_t)mood__context_width(m), per_n = 0, per_p, P = (size_t)d->P;
    float *pos = NULL, *neg = NULL, *ppos = NULL, *pneg = NULL;
    int np = 0, nn = 0, guided = d->cfg > 1.0, rows = (guided ? 2 : 1) * d->B, err;
    if ((err = mood__encode_prompt_ex(m, o->prompt, o->clip_skip, &pos, &np, &ppos)) == 0 && guided)
        err = encode_negative(d, o, np, &neg, &pneg, &nn);
    d->Tp = np * MOOD_CLIP_CONTEXT;
    d->Tn = nn * MOOD_CLIP_CONTEXT;
    per_p = (size_t)d->Tp * C;
    per_n = (size_t)d->Tn * C;
    if (!err && !(d->ctx = mood_malloc((size_t)d->B * (per_n + per_p) * sizeof *d->ctx)))
        err = mood_error_nomem();
    if (!err && P &&
        (!(d->pooled = mood_malloc((size_t)rows * P * sizeof *d->pooled)) ||
         !(d->time_ids = mood_malloc((size_t)rows * 6 * sizeof *d->time_ids))))
        err = mood_error_nomem();
    for (int i = 0; i < d->B && !err; i++) {
        size_t pn = guided ? (size_t)d->B : 0;
        if (guided)
            memcpy(d->ctx + (size_t)i * per_n, neg, per_n * sizeof *neg);
        memcpy(d->ctx + (size_t)d->B * per_n + (size_t)i * per_p, pos, per_p * sizeof *pos);
        if (P && guided)
            memcpy(d->pooled + i * P, pneg, P * sizeof *pneg);
        if (P)
            memcpy(d->pooled + (pn + (size_t)i) * P, ppos, P * sizeof *ppos);
    }
    for (int i = 0; i < rows && !err && P; i++)
        mood__sdxl_time_ids(d->time_ids + (size_t)i * 6, o->width, o->height);
    mood_free(pos);
    mood_free(neg);
    mood_free(ppos);
    mood_free(pneg);
    return err;
}

/* ----- previews ---------------------------------------------------------------------------- */

static int decode(mood_model *m, float *images, const float *latents, int B, int h, int w);

typedef struct preview_ctx {
    const mood_gen_options *o;
    mood_model *m;
    int h, w;
    float *images;
} preview_ctx;

/* mood_sample_preview_fn: every preview_every steps, and at no other time, decodes the
 * sampler's estimate of the final latents and hands the images to the caller. */
static int preview(const mood_sample_state *s, void *user)
{
    preview_ctx *p = user;
    int err;
    if ((s->step + 1) % p->o->preview_every != 0 || s->step + 1 == s->steps)
        return 0;
    if ((err = decode(p->m, p->images, s->x0, s->B, p->h, p->w)) != 0)
        return err;
    return p->o->preview(p->images, s->B, p->o->width, p->o->height, s->step + 1,
                         p->o->preview_payload);
}

/* ----- the run ------------------------------------------------------------------------------ */

void mood_gen_options_init(mood_gen_options *o)
{
    memset(o, 0, sizeof *o);
    o->width = o->height = 512;
    o->batch = 1;
    o->steps = 20;
    o->cfg = 7.0;
    o->sampler = MOOD_SAMPLER_EULER_A;
    o->schedule = MOOD_SCHEDULE_DEFAULT;
    o->rng = MOOD_RNG_TORCH_CPU;
    o->clip_skip = 1;
    o->strength = 0.75;
}

int mood_model_size_multiple(const mood_model *m)
{
    return mood_vae_scale(m->vae);
}

void mood_model_default_size(const mood_model *m, int *width, int *height)
{
    int s = mood_vae_scale(m->vae), n = mood_vae_get_config(m->vae)->sample_size;
    if (!(n >= 64 && n <= 2048 && n % s == 0))
        n = 512;
    /* a single-file checkpoint's VAE says 512 whatever the family trained at */
    if (n == 512 && m->family == MOOD_FAMILY_SDXL)
        n = 1024;
    else if (n == 512 && m->family == MOOD_FAMILY_SD2 && m->sched.prediction == MOOD_PRED_V)
        n = 768;
    *width = *height = n;
}

static int check_options(const mood_model *m, const mood_gen_options *o)
{
    int s = mood_vae_scale(m->vae);
    if (o->width < s || o->height < s || o->width % s || o->height % s || o->width > 4096 ||
        o->height > 4096)
        return mood_error_set(MOOD_EINVAL,
                              "size %dx%d: width and height must be multiples of %d "
                              "between %d and 4096",
                              o->width, o->height, s, s);
    if (o->batch < 1 || o->batch > MAX_BATCH)
        return mood_error_set(MOOD_EINVAL, "batch %d: between 1 and %d", o->batch, MAX_BATCH);
    if (o->steps < 1 || o->steps > 1000)
        return mood_error_set(MOOD_EINVAL, "steps %d: between 1 and 1000", o->steps);
    if (!(o->cfg >= 0 && o->cfg <= 100))
        return mood_error_set(MOOD_EINVAL, "CFG scale %g: between 0 and 100", o->cfg);
    if (o->clip_skip < 1 || o->clip_skip > 12)
        return mood_error_set(MOOD_EINVAL, "clip skip %d: between 1 and 12", o->clip_skip);
    if (m->inpaint_unet && !(o->init_image && o->mask))
        return mood_error_set(MOOD_EINVAL,
                              "an inpainting model (its UNet takes a mask and a masked picture "
                              "too) redraws part of a picture: give the picture and its mask");
    if (o->mask && !o->init_image)
        return mood_error_set(MOOD_EINVAL,
                              "an inpainting mask needs the picture it applies to (init_image)");
    if (o->init_image && !(o->strength > 0 && o->strength <= 1))
        return mood_error_set(MOOD_EINVAL, "strength %g: above 0, at most 1", o->strength);
    if (o->init_image && (int)(o->steps * o->strength) < 1)
        return mood_error_set(MOOD_EINVAL,
                              "strength %g of %d steps runs no step (int(steps x strength) = 0): "
                              "raise the strength or the steps",
                              o->strength, o->steps);
    if (o->init_image && (m->latents_norm || m->sched.edm))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "img2img is not supported with an EDM model with normalised latents "
                              "(Playground v2.5) yet");
    if (o->init_image && o->sampler == MOOD_SAMPLER_LCM)
        return mood_error_set(MOOD_EUNSUPPORTED, "img2img is not supported with the LCM sampler "
                                                 "yet (its schedule depends on the strength)");
    /* noise_open would read any other value as MOOD_RNG_MOOD: a wrong value must not pass */
    if ((unsigned)o->rng > MOOD_RNG_MOOD)
        return mood_error_set(MOOD_EINVAL,
                              "rng %d: unknown noise source (MOOD_RNG_TORCH_CPU, "
                              "MOOD_RNG_TORCH_CUDA or MOOD_RNG_MOOD)",
                              (int)o->rng);
    return 0;
}

static int alloc_buffers(denoiser *d)
{
    int NB = (d->cfg > 1.0 ? 2 : 1) * d->B;
    d->xin = mood_malloc((size_t)NB * d->n * sizeof *d->xin);
    d->eps = mood_malloc((size_t)NB * d->n * sizeof *d->eps);
    d->tin = mood_malloc((size_t)NB * sizeof *d->tin);
    return d->xin && d->eps && d->tin ? 0 : mood_error_nomem();
}

/* images (B x 3 x H x W) = VAE decode of latents / scaling_factor (or denormalised, above), one
 * image at a time to keep the decoder's working set to one image. */
static int decode(mood_model *m, float *images, const float *latents, int B, int h, int w)
{
    const mood_vae_config *vc = mood_vae_get_config(m->vae);
    int s = mood_vae_scale(m->vae);
    size_t n = (size_t)vc->latent_channels * h * w, img = (size_t)3 * h * s * w * s;
    size_t hw = (size_t)h * w;
    float *z = mood_malloc(n * sizeof *z);
    int err = z ? 0 : mood_error_nomem();
    for (int i = 0; i < B && !err; i++) {
        if (m->latents_norm) /* latents * latents_std / scaling_factor + latents_mean */
            for (size_t j = 0; j < n; j++)
                z[j] = latents[i * n + j] * m->latents_std[j / hw] / vc->scaling_factor +
                       m->latents_mean[j / hw];
        else
            for (size_t j = 0; j < n; j++)
                z[j] = latents[i * n + j] / vc->scaling_factor;
        err = mood_vae_decode(m->vae, images + i * img, z, 1, h, w);
    }
    mood_free(z);
    return err;
}

/* What inpainting keeps for its step hook: the picture's latents, the initial noise, the mask at
 * latent resolution, and the run's sampler options (for add_noise at a step). */
typedef struct inpaint_ctx {
    int steps;
    float *image, *noise, *mask; /* B x n, B x n, hw (4-channel UNets) */
    float *coef; /* the add_noise of every step: x0 times coef[k], noise times coef[steps + k] */
    float *cond; /* an inpainting UNet's: B x (hw + n), the mask and the masked picture's latents */
    int B, C;
    size_t hw;
} inpaint_ctx;

static void inpaint_dispose(inpaint_ctx *ip)
{
    mood_free(ip->image);
    mood_free(ip->noise);
    mood_free(ip->mask);
    mood_free(ip->coef);
    mood_free(ip->cond);
    memset(ip, 0, sizeof *ip);
}

/* mood_sample_step_fn: the kept area back, as StableDiffusionInpaintPipeline's loop does for a
 * 4-channel UNet: latents = (1 - m) * proper + m * latents, proper being the picture's latents
 * noised to the next step's level (clean after the last step). */
static int inpaint_step(float *x, int step, void *user)
{
    inpaint_ctx *ip = user;
    size_t N = (size_t)ip->B * ip->C * ip->hw;
    int last = step + 1 >= ip->steps;
    float a = last ? 1.0f : ip->coef[step + 1], b = last ? 0.0f : ip->coef[ip->steps + step + 1];
    for (size_t j = 0; j < N; j++) {
        float m = ip->mask[j % ip->hw],
              proper = last ? ip->image[j] : a * ip->image[j] + b * ip->noise[j];
        x[j] = (1.0f - m) * proper + m * x[j];
    }
    return 0;
}

/* One sample of a picture's latent_dist per image (B x n into out): drawn once and repeated for
 * torch-cpu, by each image's generator for the per-image sources; shifted and scaled into the
 * UNet's space. */
static int sample_latents(float *out, const float *mean, const float *logvar, noise_src *ns,
                          const mood_vae_config *vc, int B, size_t n)
{
    int per_image = ns->kind != MOOD_RNG_TORCH_CPU, err = 0;
    for (int i = 0; i < (per_image ? B : 1) && !err; i++) {
        float *z = out + (size_t)i * n;
        err = ns->kind == MOOD_RNG_TORCH_CUDA ? mood_rng_torch_cuda_randn(ns->cuda[i], z, n)
                                              : mood_rng_torch_cpu_randn(ns->cpu[i], z, n);
        for (size_t j = 0; j < n && !err; j++)
            z[j] =
                (mean[j] + expf(0.5f * logvar[j]) * z[j] - vc->shift_factor) * vc->scaling_factor;
    }
    for (int i = 1; i < B && !per_image && !err; i++)
        memcpy(out + (size_t)i * n, out, n * sizeof *out);
    return err;
}

/* The VAE's latent_dist of picture img (3 x height x width), then sample_latents into out. */
static int encode_sampled(float *out, mood_model *m, const float *img, const mood_gen_options *o,
                          noise_src *ns, int B, size_t n)
{
    float *mean = mood_malloc(n * sizeof *mean), *logvar = mood_malloc(n * sizeof *logvar);
    int err = mean && logvar ? 0 : mood_error_nomem();
    if (!err)
        err = mood_vae_encode(m->vae, mean, logvar, img, 1, o->height, o->width);
    if (!err)
        err = sample_latents(out, mean, logvar, ns, mood_vae_get_config(m->vae), B, n);
    mood_free(mean);
    mood_free(logvar);
    return err;
}

/* An inpainting model's condition, per image: the mask at latent resolution, then the masked
 * picture's latents (the picture where the mask keeps it, 0 where it is redrawn: diffusers'
 * init_image * (mask < 0.5)), encoded and sampled. For other models the sample is drawn all the
 * same (diffusers encodes the masked picture whatever the UNet), so that the steps' noise is
 * diffusers'. */
static int masked_condition(inpaint_ctx *ip, mood_model *m, const mood_gen_options *o,
                            noise_src *ns, int B, size_t n)
{
    size_t HW = (size_t)o->width * o->height, nc = ip->hw + n;
    float *masked = m->inpaint_unet ? mood_malloc(3 * HW * sizeof *masked) : NULL;
    float *z = mood_malloc((size_t)B * n * sizeof *z);
    int err = (masked || !m->inpaint_unet) && z ? 0 : mood_error_nomem();
    for (size_t j = 0; masked && j < 3 * HW && !err; j++)
        masked[j] = o->mask[j % HW] < 0.5f ? o->init_image[j] : 0.0f;
    if (!err && m->inpaint_unet) {
        err = encode_sampled(z, m, masked, o, ns, B, n);
        if (!err && !(ip->cond = mood_malloc((size_t)B * nc * sizeof *ip->cond)))
            err = mood_error_nomem();
        for (int i = 0; i < B && !err; i++) {
            memcpy(ip->cond + i * nc, ip->mask, ip->hw * sizeof *ip->cond);
            memcpy(ip->cond + i * nc + ip->hw, z + (size_t)i * n, n * sizeof *z);
        }
    } else if (!err) {
        for (int i = 0; i < (ns->kind != MOOD_RNG_TORCH_CPU ? B : 1) && !err; i++)
            err = ns->kind == MOOD_RNG_TORCH_CUDA ? mood_rng_torch_cuda_randn(ns->cuda[i], z, n)
                                                  : mood_rng_torch_cpu_randn(ns->cpu[i], z, n);
    }
    mood_free(masked);
    mood_free(z);
    return err;
}

/* The mask at latent resolution: torch's nearest interpolation, the top left pixel of each
 * block. */
static int latent_mask(inpaint_ctx *ip, const mood_gen_options *o, int s)
{
    int h = o->height / s, w = o->width / s;
    ip->hw = (size_t)h * w;
    if (!(ip->mask = mood_malloc(ip->hw * sizeof *ip->mask)))
        return mood_error_nomem();
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            ip->mask[(size_t)y * w + x] = o->mask[(size_t)y * s * o->width + (size_t)x * s];
    return 0;
}

/* img2img's starting latents, as StableDiffusionImg2ImgPipeline.prepare_latents: the picture's
 * latents sampled (encode_sampled: before the noise), then the scheduler's add_noise at the first
 * step run. A pixel-space model's "distribution" is a point, but its sample is drawn all the
 * same: the noise that follows is then the same whatever the VAE.
 * Inpainting (o->mask), as StableDiffusionInpaintPipeline's: after the noise the masked picture's
 * sample (masked_condition); at strength 1 pure noise (scaled by the sampler), and an inpainting
 * model's picture is then not encoded at all; ip keeps what the steps need: for a 4-channel UNet
 * what the step hook puts back, for an inpainting UNet its condition. */
static int img2img_latents(float *latents, mood_model *m, const mood_gen_options *o,
                           const mood_sample_opts *so, noise_src *ns, int B, size_t n,
                           inpaint_ctx *ip)
{
    size_t N = (size_t)B * n;
    /* an inpainting model at strength 1 starts from noise alone: the picture is not encoded */
    int need_image = !(o->mask && o->strength == 1.0 && m->inpaint_unet);
    float *noise = mood_malloc(N * sizeof *noise), *image = mood_malloc(N * sizeof *image);
    int err = noise && image ? 0 : mood_error_nomem();
    if (!err && need_image)
        err = encode_sampled(image, m, o->init_image, o, ns, B, n);
    if (!err)
        err = noise_draw(noise, B, n, ns);
    if (!err && o->mask) {
        *ip = (inpaint_ctx){.steps = so->steps, .B = B, .C = 0};
        if ((err = latent_mask(ip, o, mood_vae_scale(m->vae))) == 0)
            err = masked_condition(ip, m, o, ns, B, n);
        ip->C = (int)(n / ip->hw);
    }
    if (!err && o->mask && o->strength == 1.0) {
        memcpy(latents, noise, N * sizeof *latents);
    } else if (!err) {
        memcpy(latents, image, N * sizeof *latents);
        err = mood_sampler_add_noise(&m->sched, so, latents, noise, N);
    }
    if (!err && o->mask && !m->inpaint_unet) { /* what the step hook puts back */
        ip->image = image, ip->noise = noise;
        image = noise = NULL;
        if (!(ip->coef = mood_malloc(2 * (size_t)so->steps * sizeof *ip->coef)))
            err = mood_error_nomem();
        else
            err = mood__sampler_noise_coefs(ip->coef, ip->coef + so->steps, &m->sched, so);
    }
    mood_free(noise);
    mood_free(image);
    return err;
}

/* A1111's NansException: a sampler's result with a NaN or infinity would decode to a black or
 * garbage picture; say so instead. */
static int check_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return mood_error_set(MOOD_EINVAL,
                                  "the sampled image holds NaN or infinite values: an adapter or "
                                  "style weight far outside the usual -2 to 2, or a model whose "
                                  "weights overflow, does that");
    return 0;
}

int mood_generate(mood_model *m, const mood_gen_options *o, float **images_out, float **latents_out)
{
    denoiser d = {0};
    inpaint_ctx ip = {0};
    noise_src ns;
    preview_ctx pv;
    mood_sample_opts so;
    float *latents = NULL, *images = NULL;
    int err;
    MOOD_ARG_NONNULL(images_out);
    *images_out = NULL;
    if (latents_out)
        *latents_out = NULL;
    MOOD_ARG_NONNULL(m);
    MOOD_ARG_NONNULL(o);
    if ((err = check_options(m, o)) != 0)
        return err;
    /* The CPU forward reads the side paths' factors at every step; the GPU holds a copy, which
     * is read again here, since the values may have changed in place (a training run's previews:
     * its optimizer updates the very factors the paths point at). Without side paths: nothing. */
    if (m->cuda_unet && (err = mood_cuda_unet_reload_side_paths(m->cuda_unet)) != 0)
        return err;
    d.m = m;
    d.B = o->batch;
    d.h = o->height / mood_vae_scale(m->vae);
    d.w = o->width / mood_vae_scale(m->vae);
    d.n = (size_t)mood_vae_get_config(m->vae)->latent_channels * d.h * d.w;
    d.cfg = o->cfg;
    d.P = mood__pooled_width(m);
    if ((err = noise_open(&ns, o->rng, o->seed, d.B)) == 0 && (err = build_context(&d, o)) == 0 &&
        (err = alloc_buffers(&d)) == 0) {
        latents = mood_malloc((size_t)d.B * d.n * sizeof *latents);
        images = mood_malloc((size_t)d.B * 3 * o->height * o->width * sizeof *images);
        if (!latents || !images)
            err = mood_error_nomem();
    }
    if (!err) {
        mood_sample_opts_init(&so);
        so.kind = o->sampler;
        so.schedule = o->schedule;
        so.steps = o->steps;
        if (o->init_image) { /* diffusers' get_timesteps */
            so.start_step = o->steps - (int)(o->steps * o->strength);
            so.noised = !(o->mask && o->strength == 1.0); /* inpainting at 1: pure noise */
            err = img2img_latents(latents, m, o, &so, &ns, d.B, d.n, &ip);
            if (o->mask && !m->inpaint_unet) {
                so.after_step = inpaint_step;
                so.after_step_user = &ip;
            } else if (!err && o->mask) {
                d.cond = ip.cond, d.nc = ip.hw + d.n;
                if (!(d.xcat = mood_malloc((size_t)2 * d.B * (d.n + d.nc) * sizeof *d.xcat)))
                    err = mood_error_nomem();
            }
        } else {
            err = noise_draw(latents, d.B, d.n, &ns);
        }
    }
    if (!err) {
        so.noise = noise_draw;
        so.noise_user = &ns;
        so.progress = o->progress;
        so.progress_user = o->progress_payload;
        if (o->preview && o->preview_every > 0) {
            pv = (preview_ctx){o, m, d.h, d.w, images};
            so.preview = preview;
            so.preview_user = &pv;
        }
        err = mood_sample(&m->sched, &so, latents, d.B, d.n, denoise, &d);
    }
    if (!err)
        err = check_finite(latents, (size_t)d.B * d.n);
    if (!err)
        err = decode(m, images, latents, d.B, d.h, d.w);
    noise_close(&ns);
    inpaint_dispose(&ip);
    mood_free(d.ctx);
    mood_free(d.pooled);
    mood_free(d.time_ids);
    mood_free(d.xin);
    mood_free(d.xcat);
    mood_free(d.eps);
    mood_free(d.tin);
    if (err) {
        mood_free(latents);
        mood_free(images);
        return err;
    }
    *images_out = images;
    if (latents_out)
        *latents_out = latents;
    else
        mood_free(latents);
    return 0;
}
