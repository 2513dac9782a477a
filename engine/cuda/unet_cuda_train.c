/*
 * unet_cuda_train.c: the UNet's training passes on the GPU (engine/cuda/unet_cuda.h,
 * "training"): mood_cuda_unet_forward_train, the CPU forward of engine/unet_forward.c in its
 * recording mode (the tape keeps everything, TAPE_KEEP, or under gradient checkpointing only the
 * layers' inputs and outputs, TAPE_CHECKPOINT), and mood_cuda_unet_backward, the CPU
 * backward of engine/unet_backward.c; both layer for layer over the CPU model's descriptors, with
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
 *     input, just before the unit's backward (resnet_unit_backward, tblock_unit_backward);
 *   - only fp32, and the side paths' and context's gradients (unet_cuda.h).
 *
 * Scaling a buffer (a side path's scale, a resnet's 1 / output_scale_factor), which the CPU does
 * with cblas_sscal or an axpy into zeros, is an axpy into zeros here (scaled): the same
 * correctly rounded products.
 */
#include <string.h>

#include "engine/cuda/unet_cuda_internal.h"
#include "engine/unet_pass.h" /* the records the CPU passes leave on their tapes */

struct mood_cuda_unet_tape {
    mood_cuda_unet *u;  /* the model of the recorded forward (NULL: none yet) */
    mood_cuda_ctx *ctx; /* whose pool the blocks come from */
    int valid;
    int checkpoint; /* MOOD_UNET_TAPE_CHECKPOINT: resnets' and blocks' activations not kept */
    unsigned long side_gen; /* the model's side paths when recorded */
    int B, L;
    const float *context; /* the tape's copy: B*L x cross_attention_dim */
    const float *emb_act; /* silu(time embedding): B x time_embed_dim */
    int n_skips;          /* skip connections made */
    float *skip[CU_MAX_SKIPS];
    int skip_c[CU_MAX_SKIPS], skip_h[CU_MAX_SKIPS], skip_w[CU_MAX_SKIPS];
    unet_rec *recs; /* the layers in forward order */
    size_t n_rec, cap_rec;
    void **blocks; /* device blocks held */
    size_t n_blocks, cap_blocks;
    size_t bytes;
};

/* One training pass: the forward (recording into t) or the backward (reading t). */
typedef struct cu_train {
    cu_pass f;                   /* the model, sizes, temporaries (get / put); f.n_skip: skips not
                                    yet read by an up block (forward) */
    mood_cuda_unet_tape *t;      /* the tape */
    const mood_side_grad *grads; /* backward: per side path as given to
                                    mood_unet_set_side_paths, or NULL */
    float *dctx;                 /* backward: B*L x cross_attention_dim, or NULL */
    float *demb;                 /* backward: B x time_embed_dim, the gradient of t->emb_act */
    size_t cursor;               /* backward: records not yet read */
} cu_train;

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

/* ----- shared ------------------------------------------------------------------------------- */

/* Zeroes n floats. */
static int zero(cu_train *g, float *p, size_t n)
{
    return mood_cuda_memset0(g->f.ctx, p, n * sizeof(float));
}

/* *out: a temporary of n zeroed floats (the CPU's push_zero). */
static int zeros(cu_train *g, float **out, size_t n)
{
    TRY(getf(&g->f, out, n));
    return zero(g, *out, n);
}

/* *out: a temporary holding a · x (n floats). */
static int scaled(cu_train *g, float **out, const float *x, float a, size_t n)
{
    TRY(zeros(g, out, n));
    return mood_cuda_op_axpy(g->f.ctx, *out, x, a, n);
}

/* A device copy (n floats). */
static int copy(cu_train *g, float *out, const float *x, size_t n)
{
    return mood_cuda_op_convert(g->f.ctx, out, MOOD_CUDA_F32, x, MOOD_CUDA_F32, n);
}

/* Nearest-neighbour resize as the CPU's mood__unet_upsample (2x or to any size): BC planes. */
static int upsample_nearest(cu_train *g, float *out, const float *inp, int BC, int H, int W, int OH,
                            int OW)
{
    if (OH == 2 * H && OW == 2 * W)
        return mood_cuda_op_upsample_nearest2x(g->f.ctx, out, inp, BC, H, W);
    return mood_cuda_op_upsample_nearest(g->f.ctx, out, inp, BC, H, W, OH, OW);
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
static int norm_forward(cu_train *g, const u_norm *nm, float *out, const float *inp, size_t rows,
                        size_t HW, float *stats)
{
    return mood__cuda_unet_norm(&g->f, nm, out, inp, rows, HW, stats);
}

/* ----- ResnetBlock2D ------------------------------------------------------------------------ */

static int resnet_acts_get(cu_train *g, const u_resnet *r, size_t HW, resnet_acts *a)
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
static void resnet_acts_put(cu_train *g, resnet_acts *a)
{
    if (g->t->checkpoint) {
        put(&g->f, a->n1), put(&g->f, a->h1), put(&g->f, a->n2), put(&g->f, a->tp);
        put(&g->f, a->stats);
        memset(a, 0, sizeof *a);
    }
}

/* out (B x out x H x W) = ResnetBlock2D(inp); out must not alias inp. */
static int resnet_forward(cu_train *g, const u_resnet *r, const resnet_acts *a, float *out,
                          const float *inp, int H, int W)
{
    cu_pass *f = &g->f;
    size_t HW = (size_t)H * W, B = (size_t)f->B, n_out = B * (size_t)r->out * HW;
    size_t ns = B * (size_t)r->norm1.groups;
    float *sc = NULL;
    TRY(norm_forward(g, &r->norm1, a->n1, inp, 0, HW, a->stats));
    TRY(mood_cuda_op_silu(f->ctx, a->n1, a->n1, B * (size_t)r->in * HW));
    TRY(conv_forward(g, &r->conv1, a->h1, a->n1, H, W));
    TRY(lin_forward(g, &r->temb, a->tp, g->t->emb_act, B));
    TRY(mood_cuda_op_add_channel_bias(f->ctx, a->h1, a->tp, f->B, r->out, HW));
    TRY(norm_forward(g, &r->norm2, a->n2, a->h1, 0, HW, a->stats + 2 * ns));
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
    TRY(resnet_acts_get(g, r, (size_t)H * W, &a));
    TRY(resnet_forward(g, r, &a, out, inp, H, W));
    TRY(record(g, rec, REC_RESNET, r, inp, out, H, W));
    resnet_acts_put(g, &a);
    (*rec)->a.r = a; /* zeroed under checkpointing */
    return 0;
}

/* ----- Transformer2DModel ------------------------------------------------------------------- */

/* A transformer block's activations for N tokens, the residual stream's x1, x2 included. */
static int tblock_acts_get(cu_train *g, const u_transformer *t, size_t N, tblock_acts *a)
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
static void tblock_acts_put(cu_train *g, tblock_acts *a)
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
static int tblock_forward(cu_train *g, const u_transformer *t, const u_tblock *k,
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
    TRY(norm_forward(g, &k->norm1, a->ln1, xin, N, 0, a->stats));
    TRY(lin_forward(g, &k->q1, a->q1, a->ln1, N));
    TRY(lin_forward(g, &k->k1, a->k1, a->ln1, N));
    TRY(lin_forward(g, &k->v1, a->v1, a->ln1, N));
    TRY(mood_cuda_op_attention(f->ctx, a->a1, a->q1, a->k1, a->v1, f->B, t->heads, T, T, hd, 0,
                               0.0f));
    TRY(lin_forward(g, &k->o1, tmp, a->a1, N));
    TRY(mood_cuda_op_add(f->ctx, a->x1, xin, tmp, ND));
    /* cross-attention over the context */
    TRY(norm_forward(g, &k->norm2, a->ln2, a->x1, N, 0, a->stats + 2 * N));
    TRY(lin_forward(g, &k->q2, a->q2, a->ln2, N));
    TRY(lin_forward(g, &k->k2, a->k2, ctx, NL));
    TRY(lin_forward(g, &k->v2, a->v2, ctx, NL));
    TRY(mood_cuda_op_attention(f->ctx, a->a2, a->q2, a->k2, a->v2, f->B, t->heads, T, L, hd, 0,
                               0.0f));
    TRY(lin_forward(g, &k->o2, tmp, a->a2, N));
    TRY(mood_cuda_op_add(f->ctx, a->x2, a->x1, tmp, ND));
    /* GEGLU feed-forward */
    TRY(norm_forward(g, &k->norm3, a->ln3, a->x2, N, 0, a->stats + 4 * N));
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
        TRY(tblock_acts_get(g, t, N, &a));
        TRY(tblock_forward(g, t, &t->blocks[d], &a, y, *x, HW));
        TRY(record(g, &rec, REC_TBLOCK, &t->blocks[d], *x, y, (int)HW, 1));
        tblock_acts_put(g, &a);
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
    TRY(norm_forward(g, &t->norm, out, inp, 0, HW, stats));
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
    TRY(norm_forward(g, &m->norm_out, s, h, 0, HW, NULL));
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

/* ===== backward (engine/unet_backward.c) ==================================================== */

/* ----- helpers ------------------------------------------------------------------------------ */

/* *out: the next record, read from the last; it must be of `kind` (a tape out of step with the
 * model is a bug, reported). */
static int pop(cu_train *g, int kind, const unet_rec **out)
{
    const mood_cuda_unet_tape *t = g->t;
    if (g->cursor > 0 && t->recs[g->cursor - 1].kind == kind) {
        *out = &t->recs[--g->cursor];
        return 0;
    }
    return mood_error_set(MOOD_EBACKEND,
                          "cuda unet: backward: record %zu of the tape is not a layer of kind %d",
                          g->cursor, kind);
}

/* The next record, which must be resnet r's. */
static int pop_resnet(cu_train *g, const u_resnet *r, const unet_rec **out)
{
    TRY(pop(g, REC_RESNET, out));
    if ((*out)->layer != r)
        return mood_error_set(MOOD_EBACKEND,
                              "cuda unet: backward: record %zu of the tape is "
                              "another resnet",
                              g->cursor);
    return 0;
}

/* The gradients wanted for side path s of weight w (NULLs when none). */
static mood_side_grad side_grad(const cu_train *g, const unet_param *w, int s)
{
    mood_side_grad none = {NULL, NULL};
    size_t i = w->side_first + (size_t)s;
    return g->grads ? g->grads[g->f.m->side_src[i]] : none;
}

/* ----- Linear and Conv2d with side paths ---------------------------------------------------- */

/* For out = inp W^T + b + Σ scale up(down(inp)) (mood__cuda_unet_lin): dinp (N x in, may be
 * NULL) += dout (N x out) through W and the side paths; the side paths' factor gradients. */
static int linear_backward(cu_train *g, const u_lin *l, float *dinp, const float *dout,
                           const float *inp, size_t N)
{
    cu_pass *f = &g->f;
    const unet_param *w = &f->m->params[l->w];
    if (dinp)
        TRY(mood_cuda_op_linear_backward(f->ctx, dinp, NULL, NULL, dout, inp, P32(f, l->w), N,
                                         l->in, l->out));
    for (int s = 0; s < w->side_n; s++) {
        size_t k = w->side_first + (size_t)s;
        const mood_side_path *sp = &f->m->sides[k];
        const float *down = f->u->side_w[2 * k], *up = f->u->side_w[2 * k + 1];
        mood_side_grad gr = side_grad(g, w, s);
        float *sd = NULL;
        if (!dinp && !gr.ddown && !gr.dup)
            continue;
        if (sp->rank > 0) {
            TRY(mood_cuda_op_lora_linear_backward(f->ctx, dinp, gr.ddown, gr.dup, dout, inp, down,
                                                  up, sp->rank, sp->scale, N, l->in, l->out));
            continue;
        }
        /* dense ΔW: the gradients of scale · inp ΔW^T */
        TRY(scaled(g, &sd, dout, sp->scale, N * (size_t)l->out));
        TRY(mood_cuda_op_linear_backward(f->ctx, dinp, gr.dup, NULL, sd, inp, up, N, l->in,
                                         l->out));
        put(f, sd);
    }
    return 0;
}

/* One low-rank side path of a convolution: t1 = conv(inp, down) with the layer's kernel, stride
 * and padding, out += scale · conv1x1(t1, up). */
static int conv_side_backward(cu_train *g, const mood_side_path *sp, const float *down,
                              const float *up, mood_side_grad gr, const mood_conv2d_dims *d,
                              float *dinp, const float *dout, const float *inp)
{
    cu_pass *f = &g->f;
    int OH = mood_op_conv2d_out_h(d), OW = mood_op_conv2d_out_w(d);
    size_t nt = (size_t)d->batch * (size_t)sp->rank * (size_t)OH * OW;
    mood_conv2d_dims dd = *d, du = {d->batch, sp->rank, OH, OW, d->out_c, 1, 1, 0};
    float *t1 = NULL, *t1s = NULL, *dt1 = NULL, *dt1s = NULL;
    dd.out_c = sp->rank;
    /* t1 is recomputed and scaled, so dup = dout ⊗ (scale t1) and dt1 = scale up^T dout */
    TRY(getf(f, &t1, nt));
    TRY(mood_cuda_op_conv2d(f->ctx, t1, inp, down, NULL, &dd));
    TRY(scaled(g, &t1s, t1, sp->scale, nt));
    TRY(zeros(g, &dt1, nt));
    TRY(mood_cuda_op_conv2d_backward(f->ctx, dt1, gr.dup, NULL, dout, t1s, up, &du));
    TRY(scaled(g, &dt1s, dt1, sp->scale, nt));
    TRY(mood_cuda_op_conv2d_backward(f->ctx, dinp, gr.ddown, NULL, dt1s, inp, down, &dd));
    put(f, t1), put(f, t1s), put(f, dt1), put(f, dt1s);
    return 0;
}

/* For out = conv(inp) + b + Σ side paths (mood__cuda_unet_conv): dinp (B x in x H x W, may be
 * NULL) += dout's gradient; the side paths' factor gradients. */
static int conv_backward(cu_train *g, const u_conv *c, float *dinp, const float *dout,
                         const float *inp, int H, int W)
{
    cu_pass *f = &g->f;
    const unet_param *w = &f->m->params[c->w];
    mood_conv2d_dims d = {f->B, c->in, H, W, c->out, c->k, c->stride, c->pad};
    size_t n_out = (size_t)f->B * (size_t)c->out * (size_t)mood_op_conv2d_out_h(&d) *
                   (size_t)mood_op_conv2d_out_w(&d);
    if (dinp)
        TRY(mood_cuda_op_conv2d_backward(f->ctx, dinp, NULL, NULL, dout, inp, P32(f, c->w), &d));
    for (int s = 0; s < w->side_n; s++) {
        size_t k = w->side_first + (size_t)s;
        const mood_side_path *sp = &f->m->sides[k];
        const float *down = f->u->side_w[2 * k], *up = f->u->side_w[2 * k + 1];
        mood_side_grad gr = side_grad(g, w, s);
        float *sd = NULL;
        if (!dinp && !gr.ddown && !gr.dup)
            continue;
        if (sp->rank > 0) {
            TRY(conv_side_backward(g, sp, down, up, gr, &d, dinp, dout, inp));
            continue;
        }
        /* dense ΔW in the weight's shape */
        TRY(scaled(g, &sd, dout, sp->scale, n_out));
        TRY(mood_cuda_op_conv2d_backward(f->ctx, dinp, gr.dup, NULL, sd, inp, up, &d));
        put(f, sd);
    }
    return 0;
}

/* out = GroupNorm(inp) again (the backward of the SiLU after it needs its input); stats (mean
 * then rstd, B x groups each) may be NULL. */
static int gn_again(cu_train *g, const u_norm *nm, float *out, const float *inp, size_t HW,
                    float *stats)
{
    return norm_forward(g, nm, out, inp, 0, HW, stats);
}

/* dinp += GroupNorm backward of dout; stats as the forward wrote them. */
static int gn_backward(cu_train *g, const u_norm *nm, float *dinp, const float *dout,
                       const float *inp, const float *stats, size_t HW)
{
    size_t ns = (size_t)g->f.B * (size_t)nm->groups;
    return mood_cuda_op_group_norm_backward(g->f.ctx, dinp, NULL, NULL, dout, inp,
                                            P32(&g->f, nm->w), stats, stats + ns, g->f.B, nm->C, HW,
                                            nm->groups);
}

static int ln_backward(cu_train *g, const u_norm *nm, float *dinp, const float *dout,
                       const float *inp, const float *stats, size_t N)
{
    return mood_cuda_op_layer_norm_backward(g->f.ctx, dinp, NULL, NULL, dout, inp,
                                            P32(&g->f, nm->w), stats, stats + N, N, nm->C);
}

/* ----- ResnetBlock2D ------------------------------------------------------------------------ */

/* din (B x in x HW) += the gradient of the resnet's input from dout, its output's. Three
 * buffers of the larger map (A, Bf, C) are reused along the way. */
static int resnet_backward(cu_train *g, const u_resnet *r, const resnet_acts *a, float *din,
                           const float *dout, const float *inp, int H, int W)
{
    cu_pass *f = &g->f;
    size_t HW = (size_t)H * W, B = (size_t)f->B, ns = B * (size_t)r->norm1.groups;
    size_t n_in = B * (size_t)r->in * HW, n_out = B * (size_t)r->out * HW;
    size_t nmax = n_in > n_out ? n_in : n_out;
    float *A = NULL, *Bf = NULL, *C = NULL, *dtp = NULL, *t = NULL;
    const float *dy = dout;
    TRY(getf(f, &A, nmax));
    TRY(getf(f, &Bf, nmax));
    TRY(getf(f, &C, nmax));
    TRY(zeros(g, &dtp, B * (size_t)r->out));
    if (r->out_scale != 1.0f) { /* out = (conv2(n2) + shortcut(inp)) / out_scale */
        TRY(scaled(g, &t, dout, 1.0f / r->out_scale, n_out));
        dy = t;
    }
    if (r->shortcut.w >= 0)
        TRY(conv_backward(g, &r->shortcut, din, dy, inp, H, W));
    else
        TRY(mood_cuda_op_add_inplace(f->ctx, din, dy, n_in));
    TRY(zero(g, A, n_out)); /* A = d n2 */
    TRY(conv_backward(g, &r->conv2, A, dy, a->n2, H, W));
    TRY(gn_again(g, &r->norm2, Bf, a->h1, HW, NULL));
    TRY(zero(g, C, n_out)); /* C = d norm2(h1) */
    TRY(mood_cuda_op_silu_backward(f->ctx, C, A, Bf, n_out));
    TRY(zero(g, A, n_out)); /* A = d h1 */
    TRY(gn_backward(g, &r->norm2, A, C, a->h1, a->stats + 2 * ns, HW));
    TRY(mood_cuda_op_add_channel_bias_backward(f->ctx, dtp, A, f->B, r->out, HW));
    TRY(linear_backward(g, &r->temb, g->demb, dtp, g->t->emb_act, B));
    TRY(zero(g, Bf, n_in)); /* Bf = d n1 */
    TRY(conv_backward(g, &r->conv1, Bf, A, a->n1, H, W));
    TRY(gn_again(g, &r->norm1, C, inp, HW, NULL));
    TRY(zero(g, A, n_in)); /* A = d norm1(inp) */
    TRY(mood_cuda_op_silu_backward(f->ctx, A, Bf, C, n_in));
    TRY(gn_backward(g, &r->norm1, din, A, inp, a->stats, HW));
    put(f, A), put(f, Bf), put(f, C), put(f, dtp), put(f, t);
    return 0;
}

/* The recorded resnet `rec` with input inp (rebuilt by the caller for up blocks); its
 * activations computed again under checkpointing. */
static int resnet_unit_backward(cu_train *g, const unet_rec *rec, float *din, const float *dout,
                                const float *inp)
{
    const u_resnet *r = rec->layer;
    resnet_acts a = rec->a.r;
    float *out = NULL;
    if (g->t->checkpoint) {
        TRY(getf(&g->f, &out, (size_t)g->f.B * (size_t)r->out * (size_t)rec->H * rec->W));
        TRY(resnet_acts_get(g, r, (size_t)rec->H * rec->W, &a));
        TRY(resnet_forward(g, r, &a, out, inp, rec->H, rec->W));
        put(&g->f, out);
    }
    TRY(resnet_backward(g, r, &a, din, dout, inp, rec->H, rec->W));
    resnet_acts_put(g, &a);
    return 0;
}

/* ----- Transformer2DModel ------------------------------------------------------------------- */

/* dx (N x D): on entry the gradient of the block's output, on return of its input xin. One
 * region R of 12 N x D floats holds the feed-forward's gradients, then attention's. */
static int tblock_backward(cu_train *g, const u_transformer *t, const u_tblock *k,
                           const tblock_acts *a, float *dx, const float *xin, size_t HW)
{
    cu_pass *f = &g->f;
    size_t N = (size_t)f->B * HW, D = (size_t)t->inner, NL = (size_t)f->B * (size_t)f->L;
    size_t ND = N * D;
    int hd = t->inner / t->heads, T = (int)HW, L = f->L;
    const float *ctx = g->t->context;
    float *R = NULL, *dln = NULL, *dk2 = NULL, *dv2 = NULL;
    float *dff_g, *dff_h, *da, *dq, *dk, *dv;
    TRY(getf(f, &R, 12 * ND));
    TRY(getf(f, &dln, ND));
    TRY(getf(f, &dk2, NL * D));
    TRY(getf(f, &dv2, NL * D));
    dff_g = R, dff_h = R + 4 * ND;
    da = R, dq = R + ND, dk = R + 2 * ND, dv = R + 3 * ND;
    /* xout = x2 + ff2(geglu(ff1(ln3(x2)))) */
    TRY(zero(g, R, 12 * ND));
    TRY(linear_backward(g, &k->ff2, dff_g, dx, a->ff_g, N));
    TRY(mood_cuda_op_geglu_backward(f->ctx, dff_h, dff_g, a->ff_h, N, 4 * t->inner));
    TRY(zero(g, dln, ND));
    TRY(linear_backward(g, &k->ff1, dln, dff_h, a->ln3, N));
    TRY(ln_backward(g, &k->norm3, dx, dln, a->x2, a->stats + 4 * N, N)); /* dx = d x2 */
    /* x2 = x1 + o2(attention(q2(ln2(x1)), k2(ctx), v2(ctx))) */
    TRY(zero(g, R, 4 * ND));
    TRY(zero(g, dk2, NL * D));
    TRY(zero(g, dv2, NL * D));
    TRY(linear_backward(g, &k->o2, da, dx, a->a2, N));
    TRY(mood_cuda_op_attention_backward(f->ctx, dq, dk2, dv2, da, a->q2, a->k2, a->v2, f->B,
                                        t->heads, T, L, hd, 0, 0.0f));
    TRY(zero(g, dln, ND));
    TRY(linear_backward(g, &k->q2, dln, dq, a->ln2, N));
    TRY(linear_backward(g, &k->k2, g->dctx, dk2, ctx, NL));
    TRY(linear_backward(g, &k->v2, g->dctx, dv2, ctx, NL));
    TRY(ln_backward(g, &k->norm2, dx, dln, a->x1, a->stats + 2 * N, N)); /* dx = d x1 */
    /* x1 = xin + o1(attention(q1, k1, v1 of ln1(xin))) */
    TRY(zero(g, R, 4 * ND));
    TRY(linear_backward(g, &k->o1, da, dx, a->a1, N));
    TRY(mood_cuda_op_attention_backward(f->ctx, dq, dk, dv, da, a->q1, a->k1, a->v1, f->B, t->heads,
                                        T, T, hd, 0, 0.0f));
    TRY(zero(g, dln, ND));
    TRY(linear_backward(g, &k->q1, dln, dq, a->ln1, N));
    TRY(linear_backward(g, &k->k1, dln, dk, a->ln1, N));
    TRY(linear_backward(g, &k->v1, dln, dv, a->ln1, N));
    TRY(ln_backward(g, &k->norm1, dx, dln, xin, a->stats, N)); /* dx = d xin */
    put(f, R), put(f, dln), put(f, dk2), put(f, dv2);
    return 0;
}

static int tblock_unit_backward(cu_train *g, const u_transformer *t, float *dx)
{
    const unet_rec *rec;
    tblock_acts a;
    float *y = NULL;
    TRY(pop(g, REC_TBLOCK, &rec));
    a = rec->a.t;
    if (g->t->checkpoint) { /* the block's activations again, from its kept input */
        size_t N = (size_t)g->f.B * (size_t)rec->H;
        TRY(getf(&g->f, &y, N * (size_t)t->inner));
        TRY(tblock_acts_get(g, t, N, &a));
        TRY(tblock_forward(g, t, rec->layer, &a, y, rec->in, (size_t)rec->H));
        put(&g->f, y);
    }
    TRY(tblock_backward(g, t, rec->layer, &a, dx, rec->in, (size_t)rec->H));
    tblock_acts_put(g, &a);
    return 0;
}

/* dh (B x C x H x W): on entry the gradient of the transformer's output, on return of its
 * input (out = in + proj_out(blocks(proj_in(norm(in)))), so dh keeps its value and adds the
 * path's). */
static int transformer_backward(cu_train *g, float *dh)
{
    cu_pass *f = &g->f;
    const unet_rec *rec;
    const u_transformer *t;
    size_t HW, N, C;
    float *dtok = NULL, *dx = NULL, *dgn = NULL;
    TRY(pop(g, REC_TRANSFORMER, &rec));
    t = rec->layer;
    HW = (size_t)rec->H * rec->W, N = (size_t)f->B * HW, C = (size_t)t->C;
    TRY(getf(f, &dtok, N * C));
    TRY(zeros(g, &dx, N * (size_t)t->inner));
    TRY(mood_cuda_op_nchw_to_nhwc(f->ctx, dtok, dh, f->B, t->C, HW));
    TRY(linear_backward(g, &t->proj_out, dx, dtok, rec->a.tr.xl, N));
    for (int d = t->depth - 1; d >= 0; d--)
        TRY(tblock_unit_backward(g, t, dx));
    TRY(zero(g, dtok, N * C));
    TRY(linear_backward(g, &t->proj_in, dtok, dx, rec->a.tr.tok, N));
    TRY(getf(f, &dgn, N * C));
    TRY(mood_cuda_op_nhwc_to_nchw(f->ctx, dgn, dtok, f->B, t->C, HW));
    TRY(gn_backward(g, &t->norm, dh, dgn, rec->in, rec->a.tr.stats, HW));
    put(f, dtok), put(f, dx), put(f, dgn);
    return 0;
}

/* ----- sampling ----------------------------------------------------------------------------- */

/* The backward of upsample_nearest: din (BC x H x W) += the sum of dout (BC x OH x OW) over each
 * source pixel's copies. */
static int upsample_nearest_backward(cu_train *g, float *din, const float *dout, int BC, int H,
                                     int W, int OH, int OW)
{
    if (OH == 2 * H && OW == 2 * W)
        return mood_cuda_op_upsample_nearest2x_backward(g->f.ctx, din, dout, BC, H, W);
    return mood_cuda_op_upsample_nearest_backward(g->f.ctx, din, dout, BC, H, W, OH, OW);
}

/* din (B x C x H x W) += the gradient through Upsample2D (nearest, then conv) of dout. */
static int upsample_backward(cu_train *g, const unet_rec *rec, float *din, const float *dout)
{
    cu_pass *f = &g->f;
    const u_conv *c = rec->layer;
    int BC = f->B * c->in;
    size_t n = (size_t)BC * (size_t)rec->OH * (size_t)rec->OW;
    float *tmp = NULL, *dtmp = NULL;
    TRY(getf(f, &tmp, n));
    TRY(zeros(g, &dtmp, n));
    TRY(upsample_nearest(g, tmp, rec->in, BC, rec->H, rec->W, rec->OH, rec->OW));
    TRY(conv_backward(g, c, dtmp, dout, tmp, rec->OH, rec->OW));
    TRY(upsample_nearest_backward(g, din, dtmp, BC, rec->H, rec->W, rec->OH, rec->OW));
    put(f, tmp), put(f, dtmp);
    return 0;
}

/* ----- blocks ------------------------------------------------------------------------------- */

/* conv_norm_out -> SiLU -> conv_out: *dh (a new temporary) = the gradient of the last up block's
 * output from dout. */
static int head_backward(cu_train *g, float **dh, const float *dout)
{
    cu_pass *f = &g->f;
    const mood_unet *m = f->m;
    const unet_rec *rec;
    size_t HW, n;
    float *gn = NULL, *s = NULL, *ds = NULL, *stats = NULL;
    TRY(pop(g, REC_HEAD, &rec));
    HW = (size_t)rec->H * rec->W, n = (size_t)f->B * (size_t)m->norm_out.C * HW;
    TRY(getf(f, &gn, n));
    TRY(getf(f, &s, n));
    TRY(zeros(g, &ds, n));
    TRY(getf(f, &stats, 2 * (size_t)f->B * (size_t)m->norm_out.groups));
    TRY(zeros(g, dh, n));
    TRY(gn_again(g, &m->norm_out, gn, rec->in, HW, stats));
    TRY(mood_cuda_op_silu(f->ctx, s, gn, n));
    TRY(conv_backward(g, &m->conv_out, ds, dout, s, rec->H, rec->W));
    TRY(zero(g, s, n)); /* s = d norm_out(h) */
    TRY(mood_cuda_op_silu_backward(f->ctx, s, ds, gn, n));
    TRY(gn_backward(g, &m->norm_out, *dh, s, rec->in, stats, HW));
    put(f, gn), put(f, s), put(f, ds), put(f, stats);
    return 0;
}

/* *dh: on entry the gradient of the up block's output, on return (a new temporary; the old one
 * is returned) of its input h; the skips' gradients get their halves of the concatenations'. */
static int up_backward(cu_train *g, const u_block *bl, float **dh, float **dskip)
{
    cu_pass *f = &g->f;
    const mood_cuda_unet_tape *t = g->t;
    const unet_rec *rec;
    float *o = NULL;
    if (bl->sampler.w >= 0) {
        TRY(pop(g, REC_UPSAMPLE, &rec));
        TRY(zeros(g, &o, (size_t)f->B * (size_t)bl->sampler.in * (size_t)rec->H * rec->W));
        TRY(upsample_backward(g, rec, o, *dh));
        put(f, *dh);
        *dh = o;
    }
    for (int j = bl->n - 1; j >= 0; j--) {
        const u_resnet *r = &bl->res[j];
        float *cat = NULL, *dcat = NULL;
        size_t HW;
        int s, hc;
        if (bl->has_attn)
            TRY(transformer_backward(g, *dh));
        TRY(pop_resnet(g, r, &rec));
        s = rec->skip;
        if (s < 0 || s >= t->n_skips)
            return mood_error_set(MOOD_EBACKEND, "cuda unet: backward: an up block's resnet "
                                                 "without its skip connection");
        hc = r->in - t->skip_c[s], HW = (size_t)rec->H * rec->W;
        TRY(getf(f, &cat, (size_t)f->B * (size_t)r->in * HW));
        TRY(mood_cuda_op_concat_channels(f->ctx, cat, rec->in, hc, t->skip[s], t->skip_c[s], f->B,
                                         HW));
        TRY(zeros(g, &dcat, (size_t)f->B * (size_t)r->in * HW));
        TRY(resnet_unit_backward(g, rec, dcat, *dh, cat));
        TRY(zeros(g, &o, (size_t)f->B * (size_t)hc * HW));
        TRY(mood_cuda_op_concat_channels_backward(f->ctx, o, dskip[s], dcat, hc, t->skip_c[s], f->B,
                                                  HW));
        put(f, cat), put(f, dcat), put(f, *dh);
        *dh = o;
    }
    return 0;
}

/* dh: the gradient of the mid block's output; adds its input's to the newest skip's. */
static int mid_backward(cu_train *g, float *dh, float **dskip)
{
    cu_pass *f = &g->f;
    const mood_cuda_unet_tape *t = g->t;
    const u_block *bl = &f->m->mid;
    int top = t->n_skips - 1;
    const unet_rec *rec;
    float *o = NULL;
    size_t n = (size_t)f->B * (size_t)t->skip_c[top] * (size_t)t->skip_h[top] * t->skip_w[top];
    if (!bl->n)
        return mood_cuda_op_add_inplace(f->ctx, dskip[top], dh, n);
    TRY(pop_resnet(g, &bl->res[1], &rec));
    TRY(zeros(g, &o, n));
    TRY(resnet_unit_backward(g, rec, o, dh, rec->in));
    TRY(transformer_backward(g, o));
    TRY(pop_resnet(g, &bl->res[0], &rec));
    TRY(resnet_unit_backward(g, rec, dskip[top], o, rec->in));
    put(f, o);
    return 0;
}

/* Down block: *s is the newest skip it made; its layers' gradients flow from dskip[*s] to the
 * older skips', *s following. */
static int down_backward(cu_train *g, const u_block *bl, float **dskip, int *s)
{
    const unet_rec *rec;
    if (bl->sampler.w >= 0) {
        TRY(pop(g, REC_DOWNSAMPLE, &rec));
        if (*s < 1)
            return mood_error_set(MOOD_EBACKEND, "cuda unet: backward: skips out of step");
        TRY(conv_backward(g, &bl->sampler, dskip[*s - 1], dskip[*s], rec->in, rec->H, rec->W));
        (*s)--;
    }
    for (int j = bl->n - 1; j >= 0; j--) {
        if (*s < 1)
            return mood_error_set(MOOD_EBACKEND, "cuda unet: backward: skips out of step");
        if (bl->has_attn)
            TRY(transformer_backward(g, dskip[*s]));
        TRY(pop_resnet(g, &bl->res[j], &rec));
        TRY(resnet_unit_backward(g, rec, dskip[*s - 1], dskip[*s], rec->in));
        (*s)--;
    }
    return 0;
}

/* SDXL's added embedding: from d1 = d emb through add_embedding (linear_2, SiLU, linear_1) to
 * its side paths (text_embeds gets no gradient in this step). d2, d3: B x T scratch. */
static int add_embedding_backward(cu_train *g, const time_acts *a, const float *d1, float *d2,
                                  float *d3)
{
    cu_pass *f = &g->f;
    const mood_unet *m = f->m;
    size_t B = (size_t)f->B, T = (size_t)m->cfg.time_embed_dim;
    TRY(zero(g, d2, B * T));
    TRY(zero(g, d3, B * T));
    TRY(linear_backward(g, &m->add2, d2, d1, a->has, B));
    TRY(mood_cuda_op_silu_backward(f->ctx, d3, d2, a->ha, B * T));
    return linear_backward(g, &m->add1, NULL, d3, a->in, B);
}

/* The time embedding's (and SDXL's added embedding's) side paths from g->demb, the gradient of
 * silu(emb). */
static int time_backward(cu_train *g)
{
    cu_pass *f = &g->f;
    const mood_unet *m = f->m;
    size_t B = (size_t)f->B, T = (size_t)m->cfg.time_embed_dim;
    const unet_rec *rec;
    const time_acts *a;
    float *d1 = NULL, *d2 = NULL, *d3 = NULL;
    TRY(pop(g, REC_TIME, &rec));
    a = &rec->a.tm;
    TRY(zeros(g, &d1, B * T));
    TRY(getf(f, &d2, B * T));
    TRY(getf(f, &d3, B * T));
    TRY(mood_cuda_op_silu_backward(f->ctx, d1, g->demb, a->emb, B * T)); /* d1 = d emb */
    if (m->cfg.addition_embed_text_time)
        TRY(add_embedding_backward(g, a, d1, d2, d3));
    TRY(zero(g, d2, B * T));
    TRY(zero(g, d3, B * T));
    TRY(linear_backward(g, &m->time2, d2, d1, a->hs, B));
    TRY(mood_cuda_op_silu_backward(f->ctx, d3, d2, a->h, B * T));
    TRY(linear_backward(g, &m->time1, NULL, d3, a->tp, B));
    put(f, d1), put(f, d2), put(f, d3);
    return 0;
}

static int backward_run(cu_train *g, const float *dout)
{
    cu_pass *f = &g->f;
    const mood_cuda_unet_tape *t = g->t;
    const mood_unet *m = f->m;
    const mood_unet_config *c = &m->cfg;
    float *dskip[CU_MAX_SKIPS], *dh = NULL;
    int s, ns = t->n_skips;
    const unet_rec *rec;
    g->cursor = t->n_rec;
    TRY(zeros(g, &g->demb, (size_t)f->B * (size_t)c->time_embed_dim));
    for (int i = 0; i < ns; i++)
        TRY(zeros(g, &dskip[i],
                  (size_t)f->B * (size_t)t->skip_c[i] * (size_t)t->skip_h[i] * t->skip_w[i]));
    TRY(head_backward(g, &dh, dout));
    for (int i = c->n_blocks - 1; i >= 0; i--)
        TRY(up_backward(g, &m->up[i], &dh, dskip));
    TRY(mid_backward(g, dh, dskip));
    put(f, dh);
    s = ns - 1;
    for (int i = c->n_blocks - 1; i >= 0; i--)
        TRY(down_backward(g, &m->down[i], dskip, &s));
    TRY(pop(g, REC_CONV_IN, &rec));
    TRY(conv_backward(g, &m->conv_in, NULL, dskip[0], rec->in, rec->H, rec->W));
    TRY(time_backward(g));
    if (g->cursor || s != 0)
        return mood_error_set(MOOD_EBACKEND, "cuda unet: backward: %zu records of the tape unread",
                              g->cursor);
    return 0;
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

/* The pass over u's model with B samples and L context tokens, recording into or reading t. */
static void train_init(cu_train *g, mood_cuda_unet *u, mood_cuda_unet_tape *t, int B, int L)
{
    memset(g, 0, sizeof *g);
    g->f.u = u, g->f.ctx = u->ctx, g->f.m = u->m, g->f.dt = u->dt, g->f.B = B, g->f.L = L;
    g->t = t;
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
    if (u->dt != MOOD_CUDA_F32)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "cuda unet: training runs on float32 models "
                              "only so far (this one has %s weights)",
                              u->dt == MOOD_CUDA_BF16 ? "bf16" : "fp16");
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

int mood_cuda_unet_backward(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                            const mood_side_grad *grads, size_t n_grads, float *dcontext)
{
    cu_train g;
    int err;
    if (!u || !tape || !dout)
        return mood_error_set(MOOD_EINVAL, "cuda unet: backward needs the model, a tape and dout");
    if (!tape->valid || tape->u != u)
        return mood_error_set(MOOD_EINVAL, "cuda unet: backward: the tape holds no forward_train "
                                           "of this model");
    if (tape->side_gen != u->m->side_gen || !u->sides_placed || u->side_gen != u->m->side_gen)
        return mood_error_set(MOOD_EINVAL,
                              "cuda unet: backward: the side paths changed since forward_train");
    if (grads ? n_grads != u->m->n_sides : n_grads != 0)
        return mood_error_set(MOOD_EINVAL, "cuda unet: backward: %zu gradients for %zu side paths",
                              n_grads, u->m->n_sides);
    train_init(&g, u, tape, tape->B, tape->L);
    g.grads = grads, g.dctx = dcontext;
    err = backward_run(&g, dout);
    put_all(&g.f);
    return err;
}
