/*
 * optim.c: AdamW as torch.optim.AdamW computes it, diffusers' learning-rate schedules, and
 * gradient clipping by global norm (torch.nn.utils.clip_grad_norm_).
 *
 * AdamW: torch's single-tensor path (_single_tensor_adam with decoupled weight decay, the path
 * CPU tensors take), per element in float32 with the Python-float scalars rounded to float:
 *     p    = p * (1 - lr wd)                         param.mul_(1 - lr * weight_decay)
 *     m    = m + (1 - b1) (g - m)                    exp_avg.lerp_(grad, 1 - beta1): fmadd
 *     v    = v b2 + ((1 - b2) g) g                   exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - b2)
 *     den  = sqrt(v) / sqrt(1 - b2^t) + eps          (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
 *     p    = p + ((-lr / (1 - b1^t)) m) / den         param.addcdiv_(exp_avg, denom, -step_size)
 * torch's vectorised kernels fuse where written "fmadd" (LerpKernel.cpp's lerp_vec) and where
 * GCC contracts a product into the following sum of an addcmul; this file is compiled with
 * -ffp-contract=off and fuses exactly there with fmaf (checked against torch 2.15 step by step
 * in tests/unit/test_train.c).
 *
 * Clipping: the total norm is the 2-norm of the per-tensor 2-norms (accumulated in double here;
 * torch reduces in float32, so the norm may differ by an ulp), the coefficient
 * max_norm / (norm + 1e-6) clamped to 1 and applied in float32 as torch does, always.
 */
#include <math.h>
#include <string.h>

#include "train/train_internal.h"

int mood__adamw_init(mood__adamw *a, size_t n, double beta1, double beta2, double eps,
                     double weight_decay)
{
    memset(a, 0, sizeof *a);
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps >= 0) ||
        !(weight_decay >= 0))
        return mood_error_set(MOOD_EINVAL,
                              "AdamW: betas must be in [0, 1), eps and weight decay >= 0 "
                              "(got %g, %g, %g, %g)",
                              beta1, beta2, eps, weight_decay);
    a->m = mood_calloc(n ? n : 1, sizeof *a->m);
    a->v = mood_calloc(n ? n : 1, sizeof *a->v);
    if (!a->m || !a->v) {
        mood__adamw_dispose(a);
        return mood_error_nomem();
    }
    a->n = n;
    a->beta1 = beta1;
    a->beta2 = beta2;
    a->eps = eps;
    a->weight_decay = weight_decay;
    return 0;
}

void mood__adamw_dispose(mood__adamw *a)
{
    mood_free(a->m);
    mood_free(a->v);
    memset(a, 0, sizeof *a);
}

void mood__adamw_update(const mood__adamw *a, float *params, const float *grads, size_t lo,
                        size_t hi, double lr, int64_t step)
{
    double bc1 = 1.0 - pow(a->beta1, (double)step), bc2 = 1.0 - pow(a->beta2, (double)step);
    float decay = (float)(1.0 - lr * a->weight_decay);
    float w1 = (float)(1.0 - a->beta1), b2 = (float)a->beta2, w2 = (float)(1.0 - a->beta2);
    float bc2_sqrt = (float)sqrt(bc2), eps = (float)a->eps, neg_step = (float)(-(lr / bc1));
    int decays = a->weight_decay != 0;
    for (size_t i = lo; i < hi; i++) {
        float g = grads[i], p = params[i], m = a->m[i], v = a->v[i], den;
        if (decays)
            p = p * decay;
        m = fmaf(w1, g - m, m);
        v = v * b2;
        v = fmaf(w2 * g, g, v);
        den = sqrtf(v) / bc2_sqrt + eps;
        p = p + (neg_step * m) / den;
        a->m[i] = m;
        a->v[i] = v;
        params[i] = p;
    }
}

double mood__clip_grad_norm(float *g, const size_t *off, size_t n_tensors, double max_norm)
{
    double total = 0;
    float norm, coef;
    for (size_t k = 0; k < n_tensors; k++) {
        double s = 0;
        for (size_t i = off[k]; i < off[k + 1]; i++)
            s += (double)g[i] * g[i];
        float nk = (float)sqrt(s);
        total += (double)nk * nk;
    }
    norm = (float)sqrt(total);
    if (!(max_norm > 0))
        return norm;
    coef = (float)max_norm / (norm + 1e-6f);
    if (coef > 1.0f)
        coef = 1.0f;
    for (size_t i = off[0]; i < off[n_tensors]; i++)
        g[i] = g[i] * coef;
    return norm;
}

/* ----- learning-rate schedules (diffusers optimization.py) ------------------------------------ */

double mood_lr_factor(mood_lr_schedule s, int64_t step, int64_t warmup, int64_t total)
{
    double progress;
    if (warmup > 0 && step < warmup)
        return (double)step / (double)(warmup > 1 ? warmup : 1);
    switch (s) {
    case MOOD_LR_COSINE:
        progress = (double)(step - warmup) / (double)(total - warmup > 1 ? total - warmup : 1);
        return fmax(0.0, 0.5 * (1.0 + cos(3.141592653589793 * 0.5 * 2.0 * progress)));
    case MOOD_LR_LINEAR:
        return fmax(0.0,
                    (double)(total - step) / (double)(total - warmup > 1 ? total - warmup : 1));
    default:
        return 1.0;
    }
}

int mood_lr_schedule_parse(mood_lr_schedule *out, const char *name)
{
    static const char *const names[] = {"constant", "cosine", "linear"};
    for (int i = 0; name && i < 3; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (mood_lr_schedule)i;
            return 0;
        }
    }
    if (name && strcmp(name, "constant_with_warmup") == 0) {
        *out = MOOD_LR_CONSTANT;
        return 0;
    }
    return mood_error_set(MOOD_EINVAL,
                          "unknown learning-rate schedule \"%s\" (known: constant, cosine, linear)",
                          name ? name : "");
}
