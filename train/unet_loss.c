/*
 * unet_loss.c: the model's part of a training step for a mood_model (mood_train_loss_fn, see
 * mood/train.h): the UNet forward with the LoRA side paths on a tape, the per-sample weighted
 * mean squared error against the target, and the UNet backward into the LoRA factors'
 * gradients (mood_unet_forward_train / mood_unet_backward in mood/unet.h).
 *
 *   loss = mean_b( w_b · mean_{c,y,x} (pred_b − target_b)² )
 *   dL/dpred_b = w_b · 2 (pred_b − target_b) / (B · C·h·w), times grad_scale (1/accumulation)
 *
 * The text encoder's LoRA (--te) needs the text encoder's backward pass, which is not built yet:
 * such a run is refused with a clear message. The tape lives with the model (model_impl.h) so
 * steps of one size allocate nothing; gradient checkpointing is used from 32x32 latents
 * (256-pixel images) up, where activations would otherwise dominate memory.
 */
#include <string.h>

#include "engine/model_impl.h"
#include "train/train_internal.h"

/* The tape of this model, made on first use (checkpointing chosen by the latent size). */
static int model_tape(mood_model *m, int h, int w, mood_unet_tape **out)
{
    if (!m->tape) {
        int err = mood_unet_tape_new(&m->tape, h * w >= 32 * 32 ? MOOD_UNET_TAPE_CHECKPOINT : 0);
        if (err)
            return err;
    }
    *out = m->tape;
    return 0;
}

/* dout = dL/dpred (scaled by grad_scale); returns the loss. */
static double loss_and_grad(float *dout, const float *pred, const mood_train_batch *b)
{
    size_t per = (size_t)b->C * b->h * b->w;
    double loss = 0;
    for (int i = 0; i < b->B; i++) {
        const float *p = pred + i * per, *t = b->target + i * per;
        float *d = dout + i * per;
        double sum = 0;
        float k = (float)(2.0 * b->weights[i] * b->grad_scale / ((double)b->B * (double)per));
        for (size_t j = 0; j < per; j++) {
            float e = p[j] - t[j];
            sum += (double)e * e;
            d[j] = k * e;
        }
        loss += b->weights[i] * (sum / (double)per);
    }
    return loss / b->B;
}

int mood__train_model_loss(void *user, const mood_train_batch *batch, mood_train_module *modules,
                           size_t n_modules, double *loss_out)
{
    mood_model *m = user;
    size_t n = (size_t)batch->B * batch->C * batch->h * batch->w, n_te = 0;
    mood_side_grad *grads = NULL;
    mood_unet_tape *tape = NULL;
    float *pred = NULL, *dout = NULL;
    int err;
    *loss_out = 0;
    while (n_te < n_modules && modules[n_te].part != MOOD_PART_UNET)
        n_te++;
    if (n_te || !batch->context)
        return mood_error_set(MOOD_EUNSUPPORTED, "training the text encoder (--te) needs its "
                                                 "backward pass, which is not built yet");
    if ((err = model_tape(m, batch->h, batch->w, &tape)) != 0)
        return err;
    pred = mood_malloc(n * sizeof *pred);
    dout = mood_malloc(n * sizeof *dout);
    grads = mood_calloc(n_modules ? n_modules : 1, sizeof *grads);
    if (!pred || !dout || !grads)
        err = mood_error_nomem();
    for (size_t i = 0; i < n_modules && !err; i++)
        grads[i] = (mood_side_grad){modules[i].down_grad, modules[i].up_grad};
    if (!err)
        err = mood_unet_forward_train(m->unet, tape, pred, batch->noisy, batch->timesteps,
                                      batch->context, batch->B, batch->h, batch->w,
                                      batch->ctx_len, NULL, NULL);
    if (!err) {
        *loss_out = loss_and_grad(dout, pred, batch);
        err = mood_unet_backward(m->unet, tape, dout, grads, n_modules, NULL);
    }
    mood_free(pred);
    mood_free(dout);
    mood_free(grads);
    return err;
}
