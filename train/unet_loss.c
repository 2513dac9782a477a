/*
 * unet_loss.c: the model's part of a training step for a mood_model (mood_train_loss_fn, see
 * mood/train.h): the UNet forward with the LoRA side paths on a tape, the per-sample weighted
 * mean squared error against the target, and the UNet backward into the LoRA factors'
 * gradients (mood_unet_forward_train / mood_unet_backward in mood/unet.h). SDXL's added
 * conditioning (the batch's pooled text embeddings and size ids) goes to the UNet as it is.
 *
 *   loss = mean_b( w_b · mean_{c,y,x} (pred_b − target_b)² )
 *   dL/dpred_b = w_b · 2 (pred_b − target_b) / (B · C·h·w), times grad_scale (1/accumulation)
 *
 * Full-parameter training (full_params.c) runs the same step and also asks both backward passes
 * for the gradient of every weight.
 *
 * With the text encoder's LoRA (--te; its modules come first) the captions are encoded at every
 * step instead of read from the cache: the text encoder's forward on its own tape (at the clip
 * skip, with the final layer norm, as the cached conditioning), the UNet backward's gradient of
 * the context, then the text encoder's backward into its modules' factors (mood/clip.h). Without
 * text encoder modules nothing of this runs. The tapes live with the model (model_impl.h) so
 * steps of one size allocate nothing; the UNet's gradient checkpointing is used from 32x32
 * latents (256-pixel images) up, where activations would otherwise dominate memory.
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

/* The text encoder's part of a step: encode the batch's captions into ctx (B x ctx_len x
 * ctx_dim) on the text encoder's tape when it is trained (LoRA modules or every weight), or run
 * it without one (a custom trainer that leaves the context to the model). */
static int encode(mood_model *m, const mood_train_batch *b, int trained, float *ctx)
{
    int skip = m->fixed_clip_skip ? m->fixed_clip_skip : b->clip_skip > 0 ? b->clip_skip : 1;
    int err;
    if (!b->ids || b->ctx_dim != mood_clip_get_config(m->clip)->hidden)
        return mood_error_set(MOOD_EINVAL, "training: the batch has no token ids or another "
                                           "context width than the text encoder's");
    if (!trained)
        return mood_clip_forward(m->clip, b->ids, b->B, b->ctx_len, skip, 1, ctx, NULL);
    if (!m->clip_tape && (err = mood_clip_tape_new(&m->clip_tape)) != 0)
        return err;
    return mood_clip_forward_train(m->clip, m->clip_tape, b->ids, b->B, b->ctx_len, skip, 1, ctx);
}

/* One step of the model: the loss, the gradients of the side paths' factors (modules) and,
 * when unet_wg / te_wg are given (full-parameter training), of every weight. */
static int model_step(mood_model *m, const mood_train_batch *batch, mood_train_module *modules,
                      size_t n_modules, float *const *unet_wg, float *const *te_wg,
                      double *loss_out)
{
    size_t n = (size_t)batch->B * batch->C * batch->h * batch->w, n_te = 0;
    size_t n_ctx = (size_t)batch->B * batch->ctx_len * batch->ctx_dim;
    mood_side_grad *grads = NULL;
    mood_unet_tape *tape = NULL;
    float *pred = NULL, *dout = NULL, *ctx = NULL, *dctx = NULL;
    const float *context = batch->context;
    int err;
    *loss_out = 0;
    while (n_te < n_modules && modules[n_te].part != MOOD_PART_UNET)
        n_te++;
    int te_trained = n_te > 0 || te_wg != NULL;
    if ((err = model_tape(m, batch->h, batch->w, &tape)) != 0)
        return err;
    pred = mood_malloc(n * sizeof *pred);
    dout = mood_malloc(n * sizeof *dout);
    grads = mood_calloc(n_modules ? n_modules : 1, sizeof *grads);
    if (!pred || !dout || !grads)
        err = mood_error_nomem();
    if (!err && (te_trained || !context)) { /* the conditioning comes from the text encoder now */
        ctx = mood_malloc((n_ctx ? n_ctx : 1) * sizeof *ctx);
        dctx = te_trained ? mood_calloc(n_ctx ? n_ctx : 1, sizeof *dctx) : NULL;
        if (!ctx || (te_trained && !dctx))
            err = mood_error_nomem();
        if (!err)
            err = encode(m, batch, te_trained, ctx);
        context = ctx;
    }
    for (size_t i = 0; i < n_modules && !err; i++)
        grads[i] = (mood_side_grad){modules[i].down_grad, modules[i].up_grad};
    if (!err)
        err = mood_unet_forward_train(m->unet, tape, pred, batch->noisy, batch->timesteps, context,
                                      batch->B, batch->h, batch->w, batch->ctx_len,
                                      batch->text_embeds, batch->time_ids);
    if (!err) {
        *loss_out = loss_and_grad(dout, pred, batch);
        err = mood_unet_backward_ex(m->unet, tape, dout, grads + n_te, n_modules - n_te, dctx,
                                    unet_wg);
    }
    if (!err && te_trained)
        err = mood_clip_backward(m->clip, m->clip_tape, dctx, grads, n_te, te_wg);
    mood_free(pred);
    mood_free(dout);
    mood_free(grads);
    mood_free(ctx);
    mood_free(dctx);
    return err;
}

int mood__train_model_loss(void *user, const mood_train_batch *batch, mood_train_module *modules,
                           size_t n_modules, double *loss_out)
{
    return model_step(user, batch, modules, n_modules, NULL, NULL, loss_out);
}

int mood__train_full_loss(void *user, const mood_train_batch *batch, mood_train_module *modules,
                          size_t n_modules, double *loss_out)
{
    const mood__lora_params *lp = user;
    return model_step(mood__full_params_model(lp), batch, modules, n_modules,
                      mood__full_params_unet_grads(lp), mood__full_params_te_grads(lp), loss_out);
}
