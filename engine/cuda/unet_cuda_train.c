/*
 * unet_cuda_train.c: the UNet's training passes on the GPU (engine/cuda/unet_cuda.h,
 * "training"): mood_cuda_unet_forward_train, the CPU forward of engine/unet_forward.c in its
 * recording mode (the tape keeps everything, TAPE_KEEP, or under gradient checkpointing only the
 * layers' inputs and outputs, TAPE_CHECKPOINT), and (in unet_cuda_backward.c, on what
 * unet_cuda_train_internal.h shares) mood_cuda_unet_backward, the CPU backward of
 * engine/unet_backward.c; both layer for layer over the CPU model's descriptors, with
 * the CUDA backend's forward and backward functions (engine/cuda/cuda_ops.h). Plain C: no kernels
 * of its own.
 *
 * Read it beside the CPU files: the functions have their names and order (resnet_forward,
 * tblock_forward, transformer_forward, ..., unet_run; linear_backward, conv_backward,
 * resnet_backward, tblock_backward, transformer_backward, upsample_backward, head_backward,
 * up_backward, mid_backward, down_backward, time_backward, backward_run), and the records are the
 * CPU's (unet_rec and its resnet_acts, tblock_acts, transformer_acts, time_acts of
 * engine/unet_pass.h), holding device pointers here. What differs:
 *   - memory: what the tape keeps (every layer's output, the records' activations, the skips, a
 *     copy of x and of the context) are blocks of the context's pool held by the tape (keep), and
 *     released at the next forward_train; temporaries are taken and returned per layer through
 *     the pass's get / put (engine/cuda/unet_cuda_internal.h), instead of the CPU's planned stack.
 *     The backward pass's gradient buffers are temporaries too; the mid and up blocks' path
 *     gradient is a fresh buffer per layer instead of two ping-pong buffers;
 *   - errors: each function returns the first error (TRY), and the entry points return every
 *     temporary (put_all); the CPU's pop stops a pass out of step, here it returns MOOD_EBACKEND;
 *   - gradient checkpointing: as the CPU's, a resnet's and a transformer block's activations are
 *     temporaries of the forward pass (act_buf) and are computed again, from the unit's kept
 *     input, just before the unit's backward (unet_cuda_backward.c: resnet_unit_backward,
 *     tblock_unit_backward);
 *   - fp32 or bf16 weights (unet_cuda.h, "Precision": a bf16 model's products round their
 *     inputs to bf16, in the backward too: mood_cuda_op_*_backward_ex), and only the side paths'
 *     and context's gradients.
 *
 * Scaling a buffer (a side path's scale, a resnet's 1 / output_scale_factor), which the CPU does
 * with cblas_sscal or an axpy into zeros, is an axpy into zeros here (scaled): the same
 * correctly rounded products.
 */
#include "engine/cuda/unet_cuda_train_internal.h"

/* ----- the tape ----------------------------------------------------------------------------- */

/* Returns the tape's blocks to the pool; the tape is then empty. */
static void tape_release(mood_cuda_unet_tape *t)
{
    while (t->n_blocks > 0)
        mood_cuda_free(t->ctx, t->blocks[--t->n_blocks]);
    t->valid = 0, t->bytes = 0, t->n_rec = 0, t->n_skips = 0;
    t->context = NULL, t->emb_act = NULL;
}

/* *out: n floats of device memory that the tape keeps. */
static int keep(cu_train *g, float **out, size_t n)
{
    mood_cuda_unet_tape *t = g->t;
    void *p = NULL;
    TRY(mood_array_reserve(&t->blocks, &t->cap_blocks, t->n_blocks, sizeof *t->blocks, 256));
    TRY(mood_cuda_alloc(g->f.ctx, &p, n ? n * sizeof(float) : 1));
    t->blocks[t->n_blocks++] = p;
    t->bytes += n * sizeof(float);
    *out = p;
    return 0;
}

/* *out: n floats of a layer's activations: kept on the tape, or under checkpointing a temporary
 * (returned with put once the layer's forward is done; the backward pass makes its own). */
static int act_buf(cu_train *g, float **out, size_t n)
{
    return g->t->checkpoint ? getf(&g->f, out, n) : keep(g, out, n);
}

/* Appends a record (*out; valid until the next record). */
static int record(cu_train *g, unet_rec **out, int kind, const void *layer, const float *in,
                  float *o, int H, int W)
{
    mood_cuda_unet_tape *t = g->t;
    unet_rec *r;
    TRY(mood_array_reserve(&t->recs, &t->cap_rec, t->n_rec, sizeof *t->recs, 64));
    r = &t->recs[t->n_rec++];
    memset(r, 0, sizeof *r);
    r->kind = kind, r->layer = layer, r->in = in, r->out = o;
    r->H = r->OH = H, r->W = r->OW = W, r->skip = -1;
    *out = r;
    return 0;
}

/* A device copy (n floats). */
static int copy(cu_train *g, float *out, const float *x, size_t n)
{
    return mood_cuda_op_convert(g->f.ctx, out, MOOD_CUDA_F32, x, MOOD_CUDA_F32, n);
}

/* ===== forward (engine/unet_forward.c, recording) =========================================== */

/* ----- Linear, Conv2d (with their side paths) and norms: the inference forward's ------------ */

static int lin_forward(cu_train *g, const u_lin *l, float *out, const float *inp, size_t N)
{
    return mood__cuda_unet_lin(&g->f, l, out, inp, N);
}

static int conv_forward(cu_train *g, const u_conv *c, float *out, const float *inp, int H, int W)
{
    return mood__cuda_unet_conv(&g->f, c, out, inp, H, W);
}

/* stats: NULL, or mean then rstd (2 x B*groups, or 2 x rows) for the backward pass. */
int mood__cuda_train_norm_forward(cu_train *g, const u_norm *nm, float *out, const float *inp,
                                  size_t rows, size_t HW, float *stats)
{
    return mood__cuda_unet_norm(&g->f, nm, out, inp, rows, HW, stats);
}

/* ----- ResnetBlock2D ------------------------------------------------------------------------ */

int mood__cuda_train_resnet_acts_get(cu_train *g, const u_resnet *r, size_t HW, resnet_acts *a)
{
    size_t B = (size_t)g->f.B;
    memset(a, 0, sizeof *a);
    TRY(act_buf(g, &a->n1, B * (size_t)r->in * HW));
    TRY(act_buf(g, &a->h1, B * (size_t)r->out * HW));
    TRY(act_buf(g, &a->n2, B * (size_t)r->out * HW));
    TRY(act_buf(g, &a->tp, B * (size_t)r->out));
    return act_buf(g, &a->stats, 4 * B * (size_t)r->norm1.groups);
}

/* Returns a resnet's activations if they are temporaries (put ignores the tape's blocks). */
void mood__cuda_train_resnet_acts_put(cu_train *g, resnet_acts *a)
{
    if (g->t->checkpoint) {
        put(&g->f, a->n1), put(&g->f, a->h1), put(&g->f, a->n2), put(&g->f, a->tp);
        put(&g->f, a->stats);
        memset(a, 0, sizeof *a);
    }
}

/* out (B x out x H x W) = ResnetBlock2D(inp); out must not alias inp. */
int mood__cuda_train_resnet_forward(cu_train *g, const u_resnet *r, const resnet_acts *a,
                                    float *out, const float *inp, int H, int W)
{
    cu_pass *f = &g->f;
    size_t HW = (size_t)H * W, B = (size_t)f->B, n_out = B * (size_t)r->out * HW;
    size_t ns = B * (size_t)r->norm1.groups;
    float *sc = NULL;
    TRY(mood__cuda_train_norm_forward(g, &r->norm1, a->n1, inp, 0, HW, a->stats));
    TRY(mood_cuda_op_silu(f->ctx, a->n1, a->n1, B * (size_t)r->in * HW));
    TRY(conv_forward(g, &r->conv1, a->h1, a->n1, H, W));
    TRY(lin_forward(g, &r->temb, a->tp, g->t->emb_act, B));
    TRY(mood_cuda_op_add_channel_bias(f->ctx, a->h1, a->tp, f->B, r->out, HW));
    TRY(mood__cuda_train_norm_forward(g, &r->norm2, a->n2, a->h1, 0, HW, a->stats + 2 * ns));
    TRY(mood_cuda_op_silu(f->ctx, a->n2, a->n2, n_out));
    TRY(conv_forward(g, &r->conv2, out, a->n2, H, W));
    if (r->shortcut.w >= 0) {
        TRY(getf(f, &sc, n_out));
        TRY(conv_forward(g, &r->shortcut, sc, inp, H, W));
        TRY(mood_cuda_op_add_inplace(f->ctx, out, sc, n_out));
        put(f, sc);
    } else {
        TRY(mood_cuda_op_add_inplace(f->ctx, out, inp, n_out));
    }
    return r->out_scale != 1.0f ? mood_cuda_op_div_scalar(f->ctx, out, r->out_scale, n_out) : 0;
}

/* A resnet with its activations kept; *rec: its record. */
static int resnet_step(cu_train *g, const u_resnet *r, float *out, const float *inp, int H, int W,
                       unet_rec **rec)
{
    resnet_acts a;
    TRY(mood__cuda_train_resnet_acts_get(g, r, (size_t)H * W, &a));
    TRY(mood__cuda_train_resnet_forward(g, r, &a, out, inp, H, W));
    TRY(record(g, rec, REC_RESNET, r, inp, out, H, W));
    mood__cuda_train_resnet_acts_put(g, &a);
    (*rec)->a.r = a; /* zeroed under checkpointing */
    return 0;
}

/* ----- Transformer2DModel ------------------------------------------------------------------- */

/* A transformer block's activations for N tokens, the residual stream's x1, x2 included. */
int mood__cuda_train_tblock_acts_get(cu_train *g, const u_transformer *t, size_t N, tblock_acts *a)
{
    size_t D = (size_t)t->inner, NL = (size_t)g->f.B * (size_t)g->f.L;
    float **nd[] = {&a->ln1, &a->q1, &a->k1,  &a->v1, &a->a1, &a->ln2,
                    &a->q2,  &a->a2, &a->ln3, &a->x1, &a->x2};
    memset(a, 0, sizeof *a);
    for (size_t i = 0; i < sizeof nd / sizeof nd[0]; i++)
        TRY(act_buf(g, nd[i], N * D));
    TRY(act_buf(g, &a->k2, NL * D));
    TRY(act_buf(g, &a->v2, NL * D));
    TRY(act_buf(g, &a->ff_h, N * 8 * D));
    TRY(act_buf(g, &a->ff_g, N * 4 * D));
    return act_buf(g, &a->stats, 6 * N);
}

/* Returns a block's activations if they are temporaries. */
void mood__cuda_train_tblock_acts_put(cu_train *g, tblock_acts *a)
{
    const float *all[] = {a->ln1, a->q1, a->k1, a->v1, a->a1, a->ln2,  a->q2,   a->a2,
                          a->ln3, a->x1, a->x2, a->k2, a->v2, a->ff_h, a->ff_g, a->stats};
    if (!g->t->checkpoint)
        return;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        put(&g->f, all[i]);
    memset(a, 0, sizeof *a);
}

/* xout (N x inner) = BasicTransformerBlock(xin); xout must not alias xin. */
int mood__cuda_train_tblock_forward(cu_train *g, const u_transformer *t, const u_tblock *k,
                                    const tblock_acts *a, float *xout, const float *xin, size_t HW)
{
    cu_pass *f = &g->f;
    size_t N = (size_t)f->B * HW, D = (size_t)t->inner, NL = (size_t)f->B * (size_t)f->L;
    size_t ND = N * D;
    int hd = t->inner / t->heads, T = (int)HW, L = f->L;
    const float *ctx = g->t->context;
    float *tmp = NULL;
    TRY(getf(f, &tmp, ND));
    /* self-attention */
    TRY(mood__cuda_train_norm_forward(g, &k->norm1, a->ln1, xin, N, 0, a->stats));
    TRY(lin_forward(g, &k->q1, a->q1, a->ln1, N));
    TRY(lin_forward(g, &k->k1, a->k1, a->ln1, N));
    TRY(lin_forward(g, &k->v1, a->v1, a->ln1, N));
    TRY(mood_cuda_op_attention(f->ctx, a->a1, a->q1, a->k1, a->v1, f->B, t->heads, T, T, hd, 0,
                               0.0f));
    TRY(lin_forward(g, &k->o1, tmp, a->a1, N));
    TRY(mood_cuda_op_add(f->ctx, a->x1, xin, tmp, ND));
    /* cross-attention over the context */
    TRY(mood__cuda_train_norm_forward(g, &k->norm2, a->ln2, a->x1, N, 0, a->stats + 2 * N));
    TRY(lin_forward(g, &k->q2, a->q2, a->ln2, N));
    TRY(lin_forward(g, &k->k2, a->k2, ctx, NL));
    TRY(lin_forward(g, &k->v2, a->v2, ctx, NL));
    TRY(mood_cuda_op_attention(f->ctx, a->a2, a->q2, a->k2, a->v2, f->B, t->heads, T, L, hd, 0,
                               0.0f));
    TRY(lin_forward(g, &k->o2, tmp, a->a2, N));
    TRY(mood_cuda_op_add(f->ctx, a->x2, a->x1, tmp, ND));
    /* GEGLU feed-forward */
    TRY(mood__cuda_train_norm_forward(g, &k->norm3, a->ln3, a->x2, N, 0, a->stats + 4 * N));
    TRY(lin_forward(g, &k->ff1, a->ff_h, a->ln3, N));
    TRY(mood_cuda_op_geglu(f->ctx, a->ff_g, a->ff_h, N, 4 * t->inner));
    TRY(lin_forward(g, &k->ff2, tmp, a->ff_g, N));
    TRY(mood_cuda_op_add(f->ctx, xout, a->x2, tmp, ND));
    put(f, tmp);
    return 0;
}

/* The transformer blocks over *x (N x inner tokens), each output a kept buffer; *x: the last. */
static int tblocks_forward(cu_train *g, const u_transformer *t, float **x, size_t HW)
{
    size_t N = (size_t)g->f.B * HW;
    for (int d = 0; d < t->depth; d++) {
        float *y = NULL;
        tblock_acts a;
        unet_rec *rec;
        TRY(keep(g, &y, N * (size_t)t->inner));
        TRY(mood__cuda_train_tblock_acts_get(g, t, N, &a));
        TRY(mood__cuda_train_tblock_forward(g, t, &t->blocks[d], &a, y, *x, HW));
        TRY(record(g, &rec, REC_TBLOCK, &t->blocks[d], *x, y, (int)HW, 1));
        mood__cuda_train_tblock_acts_put(g, &a);
        rec->a.t = a; /* zeroed under checkpointing */
        *x = y;
    }
    return 0;
}

/* out (B x C x H x W, kept) = Transformer2DModel(inp). */
static int transformer_forward(cu_train *g, const u_transformer *t, float *out, const float *inp,
                               int H, int W)
{
    cu_pass *f = &g->f;
    size_t HW = (size_t)H * W, B = (size_t)f->B, N = B * HW, n = B * (size_t)t->C * HW;
    float *stats = NULL, *tok = NULL, *x = NULL, *xl, *y = NULL;
    unet_rec *rec;
    TRY(keep(g, &stats, 2 * B * (size_t)t->norm.groups));
    TRY(keep(g, &tok, N * (size_t)t->C));
    TRY(keep(g, &x, N * (size_t)t->inner));
    /* out is free until the end: the normalised input goes there; tok (proj_in's input) stays */
    TRY(mood__cuda_train_norm_forward(g, &t->norm, out, inp, 0, HW, stats));
    TRY(mood_cuda_op_nchw_to_nhwc(f->ctx, tok, out, f->B, t->C, HW));
    TRY(lin_forward(g, &t->proj_in, x, tok, N));
    xl = x;
    TRY(tblocks_forward(g, t, &xl, HW));
    TRY(getf(f, &y, N * (size_t)t->C)); /* proj_out's tokens */
    TRY(lin_forward(g, &t->proj_out, y, xl, N));
    TRY(mood_cuda_op_nhwc_to_nchw(f->ctx, out, y, f->B, t->C, HW));
    put(f, y);
    TRY(mood_cuda_op_add_inplace(f->ctx, out, inp, n)); /* out = inp + the path */
    TRY(record(g, &rec, REC_TRANSFORMER, t, inp, out, H, W));
    rec->a.tr.stats = stats, rec->a.tr.tok = tok;
    rec->a.tr.x0 = x, rec->a.tr.xl = xl;
    return 0;
}

/* A transformer after a layer whose output is h; *out: its output (a kept buffer). */
static int transformer_step(cu_train *g, const u_transformer *t, const float *h, int H, int W,
                            float **out)
{
    TRY(keep(g, out, (size_t)g->f.B * (size_t)t->C * (size_t)H * W));
    return transformer_forward(g, t, *out, h, H, W);
}

/* ----- sampling ----------------------------------------------------------------------------- */

/* Upsample2D: *h (B x C x H x W) -> nearest to (OH, OW) -> conv 3x3 into a kept buffer, which
 * replaces *h. */
static int upsample_step(cu_train *g, const u_conv *c, float **h, int H, int W, int OH, int OW)
{
    cu_pass *f = &g->f;
    float *out = NULL, *tmp = NULL;
    unet_rec *rec;
    TRY(keep(g, &out, (size_t)f->B * (size_t)c->out * (size_t)OH * OW));
    TRY(getf(f, &tmp, (size_t)f->B * (size_t)c->in * (size_t)OH * OW));
    TRY(upsample_nearest(g, tmp, *h, f->B * c->in, H, W, OH, OW));
    TRY(conv_forward(g, c, out, tmp, OH, OW));
    put(f, tmp);
    TRY(record(g, &rec, REC_UPSAMPLE, c, *h, out, H, W));
    rec->OH = OH, rec->OW = OW;
    *h = out;
    return 0;
}

/* ----- blocks ------------------------------------------------------------------------------- */

/* A new skip connection (B x C x H x W, kept). */
static int push_skip(cu_train *g, float **out, int C, int H, int W)
{
    mood_cuda_unet_tape *t = g->t;
    int i = t->n_skips;
    if (i == CU_MAX_SKIPS)
        return mood_error_set(MOOD_EINVAL, "cuda unet: more than %d skip connections",
                              CU_MAX_SKIPS);
    TRY(keep(g, out, (size_t)g->f.B * (size_t)C * (size_t)H * W));
    t->skip[i] = *out, t->skip_c[i] = C, t->skip_h[i] = H, t->skip_w[i] = W;
    t->n_skips++;
    g->f.n_skip = t->n_skips;
    return 0;
}

/* Down block: each resnet (+ transformer) output and the downsampler's become skips; the input
 * is the newest skip. *H, *W follow the downsampler. */
static int down_forward(cu_train *g, const u_block *bl, int *H, int *W)
{
    mood_cuda_unet_tape *t = g->t;
    float *out = NULL;
    unet_rec *rec;
    for (int j = 0; j < bl->n; j++) {
        const float *in = t->skip[t->n_skips - 1];
        TRY(push_skip(g, &out, bl->res[j].out, *H, *W));
        TRY(resnet_step(g, &bl->res[j], out, in, *H, *W, &rec));
        if (bl->has_attn)
            TRY(transformer_step(g, &bl->attn[j], out, *H, *W, &t->skip[t->n_skips - 1]));
    }
    if (bl->sampler.w >= 0) {
        const u_conv *c = &bl->sampler;
        mood_conv2d_dims d = {g->f.B, c->in, *H, *W, c->out, 3, 2, c->pad};
        float *in = t->skip[t->n_skips - 1];
        int OH = mood_op_conv2d_out_h(&d), OW = mood_op_conv2d_out_w(&d);
        TRY(push_skip(g, &out, c->out, OH, OW));
        TRY(conv_forward(g, c, out, in, *H, *W));
        TRY(record(g, &rec, REC_DOWNSAMPLE, c, in, out, *H, *W));
        rec->OH = OH, rec->OW = OW;
        *H = OH, *W = OW;
    }
    return 0;
}

/* Up block: [*h | newest skip] through each resnet (+ transformer), then the upsampler to the
 * next skip's size. The concatenation is a temporary (the backward pass rebuilds it). */
static int up_forward(cu_train *g, const u_block *bl, float **h, int *H, int *W)
{
    mood_cuda_unet_tape *t = g->t;
    cu_pass *f = &g->f;
    for (int j = 0; j < bl->n; j++) {
        int s = --f->n_skip, hc;
        size_t HW = (size_t)*H * *W;
        float *cat = NULL, *out = NULL;
        unet_rec *rec;
        if (s < 0)
            return mood_error_set(MOOD_EINVAL, "cuda unet: an up block without a skip connection");
        hc = bl->res[j].in - t->skip_c[s];
        TRY(getf(f, &cat, (size_t)f->B * (size_t)bl->res[j].in * HW));
        TRY(mood_cuda_op_concat_channels(f->ctx, cat, *h, hc, t->skip[s], t->skip_c[s], f->B, HW));
        TRY(keep(g, &out, (size_t)f->B * (size_t)bl->res[j].out * HW));
        TRY(resnet_step(g, &bl->res[j], out, cat, *H, *W, &rec));
        rec->in = *h, rec->skip = s; /* cat is rebuilt by the backward pass */
        put(f, cat);
        if (bl->has_attn)
            TRY(transformer_step(g, &bl->attn[j], out, *H, *W, &out));
        *h = out;
    }
    if (bl->sampler.w >= 0) {
        int s = f->n_skip - 1;
        if (s < 0)
            return mood_error_set(MOOD_EINVAL, "cuda unet: an upsampler without a skip connection");
        TRY(upsample_step(g, &bl->sampler, h, *H, *W, t->skip_h[s], t->skip_w[s]));
        *H = t->skip_h[s], *W = t->skip_w[s];
    }
    return 0;
}

/* The mid block on the newest skip; *h: its output (the skip itself without a mid block: no
 * layer writes to a kept buffer after it is made, so no copy is needed). */
static int mid_forward(cu_train *g, float **h, int H, int W)
{
    mood_cuda_unet_tape *t = g->t;
    const u_block *bl = &g->f.m->mid;
    float *in = t->skip[t->n_skips - 1], *a = NULL, *b = NULL;
    size_t n = (size_t)g->f.B * (size_t)t->skip_c[t->n_skips - 1] * (size_t)H * W;
    unet_rec *rec;
    if (!bl->n) {
        *h = in;
        return 0;
    }
    TRY(keep(g, &a, n));
    TRY(resnet_step(g, &bl->res[0], a, in, H, W, &rec));
    TRY(transformer_step(g, &bl->attn[0], a, H, W, &a));
    TRY(keep(g, &b, n));
    TRY(resnet_step(g, &bl->res[1], b, a, H, W, &rec));
    *h = b;
    return 0;
}

/* ----- time embedding and head -------------------------------------------------------------- */

/* SDXL's text_time: a->emb (B x T) += add_embedding([text_embeds | timestep_embedding(time_ids)]),
 * its input and intermediate values kept in a. */
static int added_embedding_forward(cu_train *g, time_acts *a, const float *text_embeds,
                                   const float *time_ids)
{
    cu_pass *f = &g->f;
    const mood_unet_config *c = &f->m->cfg;
    size_t B = (size_t)f->B, T = (size_t)c->time_embed_dim;
    int A6 = 6 * c->addition_time_embed_dim, Pd = c->projection_class_embeddings_input_dim;
    float *ids = NULL, *aug = NULL;
    TRY(getf(f, &ids, B * (size_t)A6));
    TRY(getf(f, &aug, B * T));
    TRY(keep(g, &a->in, B * (size_t)Pd));
    TRY(keep(g, &a->ha, B * T));
    TRY(keep(g, &a->has, B * T));
    TRY(mood_cuda_op_timestep_embedding(f->ctx, ids, time_ids, 6 * f->B, c->addition_time_embed_dim,
                                        c->flip_sin_to_cos, c->freq_shift, 10000.0f));
    TRY(mood_cuda_op_concat_channels(f->ctx, a->in, text_embeds, Pd - A6, ids, A6, f->B, 1));
    TRY(lin_forward(g, &f->m->add1, a->ha, a->in, B));
    TRY(mood_cuda_op_silu(f->ctx, a->has, a->ha, B * T));
    TRY(lin_forward(g, &f->m->add2, aug, a->has, B));
    TRY(mood_cuda_op_add_inplace(f->ctx, a->emb, aug, B * T));
    put(f, ids), put(f, aug);
    return 0;
}

/* t->emb_act (B x T, kept) = silu(time embedding [+ text_time added embedding]), the
 * intermediate values kept in the REC_TIME record. */
static int time_forward(cu_train *g, const float *ts, const float *text_embeds,
                        const float *time_ids)
{
    cu_pass *f = &g->f;
    const mood_unet_config *c = &f->m->cfg;
    size_t B = (size_t)f->B, T = (size_t)c->time_embed_dim, C0 = (size_t)c->block_out_channels[0];
    time_acts a;
    float *emb_act = NULL;
    unet_rec *rec;
    memset(&a, 0, sizeof a);
    TRY(keep(g, &emb_act, B * T));
    TRY(keep(g, &a.tp, B * C0));
    TRY(keep(g, &a.h, B * T));
    TRY(keep(g, &a.hs, B * T));
    TRY(keep(g, &a.emb, B * T));
    TRY(mood_cuda_op_timestep_embedding(f->ctx, a.tp, ts, f->B, (int)C0, c->flip_sin_to_cos,
                                        c->freq_shift, 10000.0f));
    TRY(lin_forward(g, &f->m->time1, a.h, a.tp, B));
    TRY(mood_cuda_op_silu(f->ctx, a.hs, a.h, B * T));
    TRY(lin_forward(g, &f->m->time2, a.emb, a.hs, B));
    if (c->addition_embed_text_time)
        TRY(added_embedding_forward(g, &a, text_embeds, time_ids));
    TRY(mood_cuda_op_silu(f->ctx, emb_act, a.emb, B * T));
    TRY(record(g, &rec, REC_TIME, NULL, NULL, emb_act, 0, 0));
    rec->a.tm = a;
    g->t->emb_act = emb_act;
    return 0;
}

/* out = conv_out(silu(conv_norm_out(h))). */
static int head_forward(cu_train *g, float *out, const float *h, int H, int W)
{
    cu_pass *f = &g->f;
    const mood_unet *m = f->m;
    size_t HW = (size_t)H * W, n = (size_t)f->B * (size_t)m->norm_out.C * HW;
    float *s = NULL;
    unet_rec *rec;
    TRY(getf(f, &s, n));
    TRY(mood__cuda_train_norm_forward(g, &m->norm_out, s, h, 0, HW, NULL));
    TRY(mood_cuda_op_silu(f->ctx, s, s, n));
    TRY(conv_forward(g, &m->conv_out, out, s, H, W));
    put(f, s);
    return record(g, &rec, REC_HEAD, &m->conv_out, h, out, H, W);
}

/* Copies of the inputs the backward pass reads (the caller's may change): *xc of x, the tape's
 * context of ctx. */
static int keep_inputs(cu_train *g, const float **xc, const float *x, const float *ctx, int H,
                       int W)
{
    const mood_unet_config *c = &g->f.m->cfg;
    size_t B = (size_t)g->f.B, n_in = B * (size_t)c->in_channels * (size_t)H * W;
    size_t nc = B * (size_t)g->f.L * (size_t)c->cross_attention_dim;
    float *a = NULL, *b = NULL;
    TRY(keep(g, &a, n_in));
    TRY(keep(g, &b, nc));
    TRY(copy(g, a, x, n_in));
    TRY(copy(g, b, ctx, nc));
    *xc = a, g->t->context = b;
    return 0;
}

static int unet_run(cu_train *g, float *out, const float *x, const float *ts, const float *ctx,
                    const float *text_embeds, const float *time_ids, int H, int W)
{
    const mood_unet *m = g->f.m;
    const mood_unet_config *c = &m->cfg;
    float *h = NULL;
    unet_rec *rec;
    TRY(keep_inputs(g, &x, x, ctx, H, W));
    TRY(time_forward(g, ts, text_embeds, time_ids));
    TRY(push_skip(g, &h, c->block_out_channels[0], H, W));
    TRY(conv_forward(g, &m->conv_in, h, x, H, W));
    TRY(record(g, &rec, REC_CONV_IN, &m->conv_in, x, h, H, W));
    for (int i = 0; i < c->n_blocks; i++)
        TRY(down_forward(g, &m->down[i], &H, &W));
    TRY(mid_forward(g, &h, H, W));
    for (int i = 0; i < c->n_blocks; i++)
        TRY(up_forward(g, &m->up[i], &h, &H, &W));
    return head_forward(g, out, h, H, W);
}

/* ===== entry points ========================================================================= */

int mood_cuda_unet_tape_new(mood_cuda_unet_tape **out, unsigned flags)
{
    if (!out)
        return mood_error_set(MOOD_EINVAL, "cuda unet: tape_new needs out");
    *out = NULL;
    if (flags & ~(unsigned)MOOD_UNET_TAPE_CHECKPOINT)
        return mood_error_set(MOOD_EINVAL, "cuda unet: unknown tape flags 0x%x", flags);
    if (!(*out = mood_calloc(1, sizeof **out)))
        return mood_error_nomem();
    (*out)->checkpoint = (flags & MOOD_UNET_TAPE_CHECKPOINT) != 0;
    return 0;
}

void mood_cuda_unet_tape_free(mood_cuda_unet_tape *t)
{
    if (!t)
        return;
    tape_release(t);
    mood_free(t->recs);
    mood_free(t->blocks);
    mood_free(t);
}

size_t mood_cuda_unet_tape_bytes(const mood_cuda_unet_tape *t)
{
    return t ? t->bytes : 0;
}

int mood_cuda_unet_forward_train(mood_cuda_unet *u, mood_cuda_unet_tape *tape, float *out,
                                 const float *x, const float *timesteps, const float *context,
                                 int B, int H, int W, int ctx_len, const float *text_embeds,
                                 const float *time_ids)
{
    cu_train g;
    int err;
    if (!tape)
        return mood_error_set(MOOD_EINVAL, "cuda unet: forward_train needs a tape");
    tape_release(tape);
    err = mood__cuda_unet_check_forward(u, out, x, timesteps, context, B, H, W, ctx_len,
                                        text_embeds, time_ids);
    if (err < 0)
        return err;
    if (u->dt == MOOD_CUDA_F16) /* fp16 would need loss scaling; bf16 has fp32's range */
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "cuda unet: training runs on float32 or bf16 models, not fp16");
    if ((err = mood__cuda_unet_sides_ready(u)) < 0)
        return err;
    tape->u = u, tape->ctx = u->ctx, tape->B = B, tape->L = ctx_len;
    train_init(&g, u, tape, B, ctx_len);
    err = unet_run(&g, out, x, timesteps, context, text_embeds, time_ids, H, W);
    put_all(&g.f);
    if (err < 0) {
        tape_release(tape);
        return err;
    }
    tape->side_gen = u->m->side_gen;
    tape->valid = 1;
    return 0;
}
