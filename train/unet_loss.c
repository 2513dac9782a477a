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
 *
 * With the UNet on a GPU (the model opened with cuda_device: bf16 mixed precision, or fp32 with
 * cuda_fp32) its forward and backward run there (unet_step_cuda.c); everything else of the step is
 * the same code on the CPU.
 *
 * SDXL (kohya's sdxl_train_network.py with the text encoders trained): both encoders run at
 * clip skip 2 without the final norm (their hidden_states[-2], concatenated per token into the
 * context), text encoder 2 on tokenizer_2's ids (batch->ids2) and with its pooled output, which
 * the text projection turns into the UNet's text_embeds. The gradient comes back along both
 * roads: the context's halves to each encoder's penultimate layer, and text_embeds' (the UNet's
 * add_embedding, mood_unet_backward_cond) through the projection to text encoder 2's pooled end
 * token after its last layer and final norm (mood_clip_backward_ex). The modules are text
 * encoder 1's, then 2's, then the UNet's; an encoder without modules runs without a tape.
 */
#include <string.h>

#include "engine/model_impl.h"
#include "train/train_internal.h"

unsigned mood__train_tape_flags(mood_model *m, int B, int h, int w, int ctx_len)
{
    if (m->train_checkpointing < 0) {
        uint64_t tape = 0, backward = 0, budget = mood_memory_available() / 2;
        size_t free_bytes = 0, total = 0;
        if (m->cuda)
            budget = mood_cuda_mem_info(m->cuda, &free_bytes, &total) == 0 ? free_bytes / 2 : 0;
        if (mood_unet_train_memory(m->unet, B, h, w, ctx_len, 0, &tape, &backward) != 0)
            tape = UINT64_MAX / 2; /* cannot tell: the frugal choice */
        m->train_checkpointing = tape + backward > budget;
    }
    return m->train_checkpointing ? MOOD_UNET_TAPE_CHECKPOINT : 0;
}

/* The tape of this model, made on first use (checkpointing: mood__train_tape_flags). */
static int model_tape(mood_model *m, const mood_train_batch *b, mood_unet_tape **out)
{
    if (!m->tape) {
        int err =
            mood_unet_tape_new(&m->tape, mood__train_tape_flags(m, b->B, b->h, b->w, b->ctx_len));
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

/* SDXL's conditioning made in the step, and its gradients: B x T x C1 and B x T x C2 (each
 * encoder's hidden_states[-2]), B x C2 (text encoder 2's pooled output), B x P (its projection,
 * the UNet's text_embeds); one allocation. */
typedef struct xl_cond {
    size_t B, T, C1, C2, P;
    size_t n1, n2; /* modules of text encoder 1 and 2 (their tapes run when > 0) */
    float *z1, *z2, *pooled, *embeds;
    float *dz1, *dz2, *dpooled, *dembeds;
} xl_cond;

static int xl_init(xl_cond *x, mood_model *m, const mood_train_batch *b, size_t n1, size_t n2)
{
    size_t n, BT = (size_t)b->B * (size_t)b->ctx_len;
    float *p;
    memset(x, 0, sizeof *x);
    x->B = (size_t)b->B, x->T = (size_t)b->ctx_len, x->n1 = n1, x->n2 = n2;
    x->C1 = (size_t)mood_clip_get_config(m->clip)->hidden;
    x->C2 = (size_t)mood_clip_get_config(m->clip2)->hidden;
    x->P = (size_t)mood_clip_get_config(m->clip2)->projection_dim;
    if (!b->ids || !b->ids2 || (size_t)b->ctx_dim != x->C1 + x->C2 ||
        !mood_clip_has_projection(m->clip2))
        return mood_error_set(MOOD_EINVAL, "training SDXL: the batch needs both encoders' token "
                                           "ids and a context of their widths together");
    n = 2 * (BT * (x->C1 + x->C2) + x->B * (x->C2 + x->P));
    if (!(p = mood_calloc(n, sizeof *p)))
        return mood_error_nomem();
    x->z1 = p, x->z2 = x->z1 + BT * x->C1, x->pooled = x->z2 + BT * x->C2;
    x->embeds = x->pooled + x->B * x->C2, x->dz1 = x->embeds + x->B * x->P;
    x->dz2 = x->dz1 + BT * x->C1, x->dpooled = x->dz2 + BT * x->C2;
    x->dembeds = x->dpooled + x->B * x->C2;
    return 0;
}

static void xl_dispose(xl_cond *x)
{
    mood_free(x->z1);
}

/* Both encoders' forward (on their tapes when trained) into ctx (B x T x (C1 + C2)) and
 * x->embeds. */
static int xl_encode(mood_model *m, const mood_train_batch *b, xl_cond *x, float *ctx)
{
    int B = b->B, T = b->ctx_len, err;
    if (x->n1 && !m->clip_tape && (err = mood_clip_tape_new(&m->clip_tape)) != 0)
        return err;
    if (x->n2 && !m->clip2_tape && (err = mood_clip_tape_new(&m->clip2_tape)) != 0)
        return err;
    err = x->n1 ? mood_clip_forward_train(m->clip, m->clip_tape, b->ids, B, T, 2, 0, x->z1)
                : mood_clip_forward(m->clip, b->ids, B, T, 2, 0, x->z1, NULL);
    if (!err)
        err = x->n2 ? mood_clip_forward_train_ex(m->clip2, m->clip2_tape, b->ids2, B, T, 2, 0,
                                                 x->z2, x->pooled)
                    : mood_clip_forward(m->clip2, b->ids2, B, T, 2, 0, x->z2, x->pooled);
    if (!err)
        err = mood_clip_project(m->clip2, x->pooled, B, x->embeds);
    for (size_t r = 0; !err && r < x->B * x->T; r++) {
        memcpy(ctx + r * (x->C1 + x->C2), x->z1 + r * x->C1, x->C1 * sizeof *ctx);
        memcpy(ctx + r * (x->C1 + x->C2) + x->C1, x->z2 + r * x->C2, x->C2 * sizeof *ctx);
    }
    return err;
}

/* The encoders' backward from the context's gradient dctx and x->dembeds (text_embeds'):
 * grads holds text encoder 1's modules, then 2's. */
static int xl_backward(mood_model *m, xl_cond *x, const float *dctx, const mood_side_grad *grads)
{
    int err = 0;
    for (size_t r = 0; r < x->B * x->T; r++) {
        memcpy(x->dz1 + r * x->C1, dctx + r * (x->C1 + x->C2), x->C1 * sizeof *dctx);
        memcpy(x->dz2 + r * x->C2, dctx + r * (x->C1 + x->C2) + x->C1, x->C2 * sizeof *dctx);
    }
    if (x->n2) {
        err = mood_clip_project_backward(m->clip2, x->dembeds, (int)x->B, x->dpooled);
        if (!err)
            err = mood_clip_backward_ex(m->clip2, m->clip2_tape, x->dz2, x->dpooled, grads + x->n1,
                                        x->n2, NULL);
    }
    if (!err && x->n1)
        err = mood_clip_backward(m->clip, m->clip_tape, x->dz1, grads, x->n1, NULL);
    return err;
}

/* The UNet's forward, loss and backward with the UNet on the GPU (unet_step_cuda.c); the loss
 * and its gradient are the CPU step's (loss_and_grad). modules: the UNet's. */
static int gpu_unet_step(mood_model *m, const mood_train_batch *b, const float *context,
                         const float *text_embeds, float *pred, float *dout,
                         const mood_train_module *modules, size_t n_modules, float *dctx,
                         float *dembeds, float *const *unet_wg, double *loss_out)
{
    mood__cuda_step *s = NULL;
    int err = mood__cuda_step_forward(&s, m, b, context, text_embeds, pred);
    if (!err) {
        *loss_out = loss_and_grad(dout, pred, b);
        err = mood__cuda_step_backward(s, m, dout, modules, n_modules, dctx, dembeds, unet_wg);
    }
    mood__cuda_step_free(s);
    return err;
}

/* One step of the model: the loss, the gradients of the side paths' factors (modules) and,
 * when unet_wg / te_wg are given (full-parameter training), of every weight. */
static int model_step(mood_model *m, const mood_train_batch *batch, mood_train_module *modules,
                      size_t n_modules, float *const *unet_wg, float *const *te_wg,
                      double *loss_out)
{
    size_t n = (size_t)batch->B * batch->C * batch->h * batch->w, n1 = 0, n2 = 0, n_te;
    size_t n_ctx = (size_t)batch->B * batch->ctx_len * batch->ctx_dim;
    mood_side_grad *grads = NULL;
    mood_unet_tape *tape = NULL;
    float *pred = NULL, *dout = NULL, *ctx = NULL, *dctx = NULL;
    const float *context = batch->context, *text_embeds = batch->text_embeds;
    int xl = m->clip2 != NULL, err = 0;
    xl_cond x;
    memset(&x, 0, sizeof x);
    *loss_out = 0;
    while (n1 < n_modules && modules[n1].part == MOOD_PART_TE1)
        n1++;
    while (n1 + n2 < n_modules && modules[n1 + n2].part == MOOD_PART_TE2)
        n2++;
    n_te = n1 + n2;
    int te_trained = n_te > 0 || te_wg != NULL;
    if (xl && te_wg)
        return mood_error_set(MOOD_EUNSUPPORTED, "full-parameter training of SDXL's text "
                                                 "encoders is not supported");
    if (!m->cuda_unet && (err = model_tape(m, batch, &tape)) != 0)
        return err;
    pred = mood_malloc(n * sizeof *pred);
    dout = mood_malloc(n * sizeof *dout);
    grads = mood_calloc(n_modules ? n_modules : 1, sizeof *grads);
    if (!pred || !dout || !grads)
        err = mood_error_nomem();
    /* the conditioning comes from the text encoder(s) now */
    if (!err && (te_trained || !context || (xl && !text_embeds))) {
        ctx = mood_malloc((n_ctx ? n_ctx : 1) * sizeof *ctx);
        dctx = te_trained ? mood_calloc(n_ctx ? n_ctx : 1, sizeof *dctx) : NULL;
        if (!ctx || (te_trained && !dctx))
            err = mood_error_nomem();
        if (!err && xl && (err = xl_init(&x, m, batch, n1, n2)) == 0) {
            err = xl_encode(m, batch, &x, ctx);
            text_embeds = x.embeds;
        } else if (!err && !xl) {
            err = encode(m, batch, te_trained, ctx);
        }
        context = ctx;
    }
    for (size_t i = 0; i < n_modules && !err; i++)
        grads[i] = (mood_side_grad){modules[i].down_grad, modules[i].up_grad};
    if (!err && m->cuda_unet) {
        err = gpu_unet_step(m, batch, context, text_embeds, pred, dout, modules + n_te,
                            n_modules - n_te, dctx, xl && n2 ? x.dembeds : NULL, unet_wg, loss_out);
    } else if (!err) {
        err = mood_unet_forward_train(m->unet, tape, pred, batch->noisy, batch->timesteps, context,
                                      batch->B, batch->h, batch->w, batch->ctx_len, text_embeds,
                                      batch->time_ids);
        if (!err) {
            *loss_out = loss_and_grad(dout, pred, batch);
            err = mood_unet_backward_cond(m->unet, tape, dout, grads + n_te, n_modules - n_te, dctx,
                                          xl && n2 ? x.dembeds : NULL, unet_wg);
        }
    }
    if (!err && te_trained && xl)
        err = xl_backward(m, &x, dctx, grads);
    else if (!err && te_trained)
        err = mood_clip_backward(m->clip, m->clip_tape, dctx, grads, n_te, te_wg);
    xl_dispose(&x);
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
