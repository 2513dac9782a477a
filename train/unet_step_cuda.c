/*
 * unet_step_cuda.c: the UNet's part of a LoRA training step on the GPU, for train/unet_loss.c,
 * when the model's UNet has a GPU copy (mood_model_options.cuda_device; engine/cuda/unet_cuda.h):
 * the step's inputs go up, the forward with its tape and the backward run there, and the
 * prediction and the gradients of the factors (and of the context, for a trained text encoder)
 * come back and are added to the host's.
 *
 * The loss, the optimizer and the text encoder stay on the CPU, and the factors live on the host
 * as in a CPU run (the trainer's code is the same for both backends). Why that costs little: a
 * LoRA's factors are a few MB (SD1.5 rank 16: 13 MB), so copying them up after each optimizer
 * step (mood_cuda_unet_reload_side_paths) and their gradients down takes about a millisecond on
 * PCIe, against a UNet forward and backward that are the step's whole cost.
 *
 * What runs on the GPU so far is what engine/cuda/unet_cuda_train.c and unet_cuda_backward.c run:
 * fp32 weights (the model opened with cuda_fp32) or bf16 mixed precision (without: bf16 frozen
 * weights and products, fp32 activations and gradients), gradient checkpointing as on the CPU
 * (mood__train_tape_flags), the side paths', the context's and SDXL's text_embeds' gradients
 * (a trained text encoder 2's pooled output), and full-parameter training's weight gradients
 * (fp32; the updated weights go up after each optimizer step, mood__full_params_sync).
 */
#include <string.h>

#include "engine/model_impl.h"
#include "train/train_internal.h"

/* Device buffers of one step, from the context's pool (steps of one size reuse its blocks). */
struct mood__cuda_step {
    mood_cuda_ctx *ctx;
    float *x, *t, *ctxt, *embeds, *ids, *pred, *dout, *dctx, *grads;
    size_t n, n_ctx, n_emb;
};

static int alloc_f(mood_cuda_ctx *ctx, float **out, size_t n)
{
    *out = NULL;
    return n ? mood_cuda_alloc(ctx, (void **)out, n * sizeof(float)) : 0;
}

static int up_f(mood_cuda_ctx *ctx, float **out, const float *src, size_t n)
{
    int err = alloc_f(ctx, out, n);
    return err || !src ? err : mood_cuda_upload(ctx, *out, src, n * sizeof(float));
}

void mood__cuda_step_free(mood__cuda_step *s)
{
    if (!s)
        return;
    float *bufs[] = {s->x, s->t, s->ctxt, s->embeds, s->ids, s->pred, s->dout, s->dctx, s->grads};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        mood_cuda_free(s->ctx, bufs[i]);
    mood_free(s);
}

/* Floats of a module's down and up factors. */
static size_t down_n(const mood_train_module *mod)
{
    return (size_t)mod->rank * (size_t)(mod->in * mod->kh * mod->kw);
}

static size_t up_n(const mood_train_module *mod)
{
    return (size_t)mod->out * (size_t)mod->rank;
}

int mood__cuda_step_forward(mood__cuda_step **out, mood_model *m, const mood_train_batch *b,
                            const float *context, const float *text_embeds, float *pred)
{
    mood__cuda_step *s;
    const mood_unet_config *uc = mood_unet_get_config(m->unet);
    size_t n = (size_t)b->B * b->C * b->h * b->w;
    size_t n_ctx = (size_t)b->B * b->ctx_len * b->ctx_dim;
    size_t n_emb = text_embeds ? (size_t)b->B * (size_t)(uc->projection_class_embeddings_input_dim -
                                                         6 * uc->addition_time_embed_dim)
                               : 0;
    int err;
    *out = NULL;
    if (!(s = mood_calloc(1, sizeof *s)))
        return mood_error_nomem();
    s->ctx = m->cuda, s->n = n, s->n_ctx = n_ctx, s->n_emb = n_emb;
    if (!m->cuda_tape &&
        (err = mood_cuda_unet_tape_new(
             &m->cuda_tape, mood__train_tape_flags(m, b->B, b->h, b->w, b->ctx_len))) != 0)
        goto fail;
    /* the optimizer changed the host factors in place since the last step (a full run's weights
     * went up in mood__full_params_sync) */
    if ((err = mood_cuda_unet_reload_side_paths(m->cuda_unet)) != 0 ||
        (err = up_f(m->cuda, &s->x, b->noisy, n)) != 0 ||
        (err = up_f(m->cuda, &s->t, b->timesteps, (size_t)b->B)) != 0 ||
        (err = up_f(m->cuda, &s->ctxt, context, n_ctx)) != 0 ||
        (err = up_f(m->cuda, &s->embeds, text_embeds, n_emb)) != 0 ||
        (err = up_f(m->cuda, &s->ids, b->time_ids, b->time_ids ? (size_t)b->B * 6 : 0)) != 0 ||
        (err = alloc_f(m->cuda, &s->pred, n)) != 0)
        goto fail;
    err = mood_cuda_unet_forward_train(m->cuda_unet, m->cuda_tape, s->pred, s->x, s->t, s->ctxt,
                                       b->B, b->h, b->w, b->ctx_len, s->embeds, s->ids);
    if (!err)
        err = mood_cuda_download(m->cuda, pred, s->pred, n * sizeof *pred);
    if (!err) {
        *out = s;
        return 0;
    }
fail:
    mood__cuda_step_free(s);
    return err;
}

/* dst[i] += src[i]: the host gradients ACCUMULATE, as the CPU backward's do. */
static void add_into(float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] += src[i];
}

/* *out: a zeroed device buffer of n floats (NULL for 0). */
static int zeroed(mood_cuda_ctx *ctx, float **out, size_t n)
{
    int err = alloc_f(ctx, out, n);
    return err || !n ? err : mood_cuda_memset0(ctx, *out, n * sizeof(float));
}

/* dst (n host floats) += the device buffer src, through the host scratch `host`. */
static int add_from_device(mood_cuda_ctx *ctx, float *dst, const float *src, size_t n, float *host)
{
    int err = n ? mood_cuda_download(ctx, host, src, n * sizeof *host) : 0;
    if (!err)
        add_into(dst, host, n);
    return err;
}

static size_t max4(size_t a, size_t b, size_t c, size_t d)
{
    size_t m = a > b ? a : b;
    m = m > c ? m : c;
    return m > d ? m : d;
}

int mood__cuda_step_backward(mood__cuda_step *s, mood_model *m, const float *dout,
                             const mood_train_module *modules, size_t n_modules, float *dctx,
                             float *dembeds, float *const *unet_wg)
{
    size_t nw = unet_wg ? mood_unet_weight_count(m->unet) : 0, n_fac = 0, n_w = 0;
    mood_side_grad *dev = NULL;
    float **wdev = NULL, *wblock = NULL, *demb = NULL, *host = NULL;
    int err = 0;
    for (size_t i = 0; i < n_modules; i++)
        n_fac += down_n(&modules[i]) + up_n(&modules[i]);
    for (size_t i = 0; i < nw; i++)
        n_w += unet_wg[i] ? mood_unet_weight_numel(m->unet, i) : 0;
    dev = mood_calloc(n_modules ? n_modules : 1, sizeof *dev);
    wdev = mood_calloc(nw ? nw : 1, sizeof *wdev);
    host = mood_malloc(max4(n_fac, n_w, s->n_ctx, s->n_emb) * sizeof *host + 1);
    if (!dev || !wdev || !host)
        err = mood_error_nomem();
    /* the gradients wanted, zeroed on the device: factors module after module in one block,
     * weights in another */
    if (!err)
        err = up_f(m->cuda, &s->dout, dout, s->n);
    if (!err)
        err = zeroed(m->cuda, &s->grads, n_fac);
    if (!err)
        err = zeroed(m->cuda, &wblock, n_w);
    if (!err && dctx)
        err = zeroed(m->cuda, &s->dctx, s->n_ctx);
    if (!err && dembeds)
        err = zeroed(m->cuda, &demb, s->n_emb);
    for (size_t i = 0, off = 0; !err && i < n_modules; i++) {
        dev[i].ddown = s->grads + off;
        dev[i].dup = s->grads + off + down_n(&modules[i]);
        off += down_n(&modules[i]) + up_n(&modules[i]);
    }
    for (size_t i = 0, off = 0; !err && i < nw; i++)
        if (unet_wg[i])
            wdev[i] = wblock + off, off += mood_unet_weight_numel(m->unet, i);
    if (!err)
        err = mood_cuda_unet_backward_cond(m->cuda_unet, m->cuda_tape, s->dout,
                                           n_modules ? dev : NULL, n_modules, dctx ? s->dctx : NULL,
                                           dembeds ? demb : NULL, unet_wg ? wdev : NULL);
    /* ... and added to the host's */
    if (!err && n_fac)
        err = mood_cuda_download(m->cuda, host, s->grads, n_fac * sizeof *host);
    for (size_t i = 0, o = 0; !err && i < n_modules; i++) {
        add_into(modules[i].down_grad, host + o, down_n(&modules[i]));
        o += down_n(&modules[i]);
        add_into(modules[i].up_grad, host + o, up_n(&modules[i]));
        o += up_n(&modules[i]);
    }
    if (!err && n_w)
        err = mood_cuda_download(m->cuda, host, wblock, n_w * sizeof *host);
    for (size_t i = 0, off = 0; !err && i < nw; i++) {
        size_t k = unet_wg[i] ? mood_unet_weight_numel(m->unet, i) : 0;
        if (k)
            add_into(unet_wg[i], host + off, k);
        off += k;
    }
    if (!err && dctx)
        err = add_from_device(m->cuda, dctx, s->dctx, s->n_ctx, host);
    if (!err && dembeds)
        err = add_from_device(m->cuda, dembeds, demb, s->n_emb, host);
    mood_cuda_free(m->cuda, wblock);
    mood_cuda_free(m->cuda, demb);
    mood_free(dev);
    mood_free(wdev);
    mood_free(host);
    return err;
}
