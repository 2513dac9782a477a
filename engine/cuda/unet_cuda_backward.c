/*
 * unet_cuda_backward.c: mood_cuda_unet_backward (engine/cuda/unet_cuda.h, "training"), the GPU
 * twin of the CPU backward pass of engine/unet_backward.c, layer for layer over the records that
 * mood_cuda_unet_forward_train (unet_cuda_train.c, which says what differs from the CPU) left on
 * the tape: from dL/d(out) it accumulates the side paths' factor gradients and, when asked, the
 * context's, the base weights' (mood_cuda_unet_backward_ex) and SDXL's text_embeds'
 * (mood_cuda_unet_backward_cond). Under gradient checkpointing a
 * resnet's and a transformer block's activations are computed again here, by the forward's own
 * functions, just before the unit's backward.
 */
#include "engine/cuda/unet_cuda_train_internal.h"

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

/* Side path s of weight w as the backward pass reads it: the CPU model's descriptor, the device
 * factors, and the gradients wanted for it (NULLs when none). */
typedef struct side_in_backward {
    const mood_side_path *sp;
    const float *down, *up;
    mood_side_grad gr;
} side_in_backward;

/* *o: side path s of w; returns whether the pass needs anything from it (with_dinp: the layer's
 * input gradient, to which every path adds). */
static int side_wanted(const cu_train *g, const unet_param *w, int s, int with_dinp,
                       side_in_backward *o)
{
    size_t k = w->side_first + (size_t)s;
    mood_side_grad none = {NULL, NULL};
    o->sp = &g->f.m->sides[k];
    o->down = g->f.u->side_w[2 * k], o->up = g->f.u->side_w[2 * k + 1];
    o->gr = g->grads ? g->grads[g->f.m->side_src[k]] : none;
    return with_dinp || o->gr.ddown || o->gr.dup;
}

/* ----- Linear and Conv2d with side paths ---------------------------------------------------- */

/* Base weight i's gradient buffer, NULL when it is frozen (or i is -1). */
static float *weight_grad(const cu_train *g, int i)
{
    return g->wg && i >= 0 ? g->wg[i] : NULL;
}

/* For out = inp W^T + b + Σ scale up(down(inp)) (mood__cuda_unet_lin): dinp (N x in, may be
 * NULL) += dout (N x out) through W and the side paths; the side paths' factor gradients, and
 * W's and b's when they train. */
static int linear_backward(cu_train *g, const u_lin *l, float *dinp, const float *dout,
                           const float *inp, size_t N)
{
    cu_pass *f = &g->f;
    const unet_param *w = &f->m->params[l->w];
    float *dw = weight_grad(g, l->w), *db = weight_grad(g, l->b);
    const float *xs = inp;              /* what the side paths read in the forward */
    if (dinp && f->dt != MOOD_CUDA_F32) /* bf16 training: the frozen weight in 16 bits */
        TRY(mood_cuda_op_linear_backward_ex(f->ctx, dinp, dout, f->u->w[l->w], f->dt, N, l->in,
                                            l->out));
    else if (dinp || dw || db)
        TRY(mood_cuda_op_linear_backward(f->ctx, dinp, dw, db, dout, inp, P32(f, l->w), N, l->in,
                                         l->out));
    for (int s = 0; s < w->side_n; s++) {
        side_in_backward p;
        float *sd = NULL;
        if (!side_wanted(g, w, s, dinp != NULL, &p))
            continue;
        if (xs == inp && (p.gr.ddown || p.gr.dup))
            TRY(mood__cuda_unet_side_input(f, &xs, inp, N * (size_t)l->in));
        if (p.sp->rank > 0) {
            TRY(mood_cuda_op_lora_linear_backward(f->ctx, dinp, p.gr.ddown, p.gr.dup, dout, xs,
                                                  p.down, p.up, p.sp->rank, p.sp->scale, N, l->in,
                                                  l->out));
            continue;
        }
        /* dense ΔW: the gradients of scale · inp ΔW^T */
        TRY(scaled(g, &sd, dout, p.sp->scale, N * (size_t)l->out));
        TRY(mood_cuda_op_linear_backward(f->ctx, dinp, p.gr.dup, NULL, sd, xs, p.up, N, l->in,
                                         l->out));
        put(f, sd);
    }
    if (xs != inp) /* inp itself may be a block of the pass */
        put(f, xs);
    return 0;
}

/* One low-rank side path of a convolution: t1 = conv(inp, down) with the layer's kernel, stride
 * and padding, out += scale · conv1x1(t1, up). */
static int conv_side_backward(cu_train *g, const side_in_backward *p, const mood_conv2d_dims *d,
                              float *dinp, const float *dout, const float *inp)
{
    cu_pass *f = &g->f;
    const mood_side_path *sp = p->sp;
    const float *down = p->down, *up = p->up;
    mood_side_grad gr = p->gr;
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
 * NULL) += dout's gradient; the side paths' factor gradients, and the kernel's and bias's when
 * they train. */
static int conv_backward(cu_train *g, const u_conv *c, float *dinp, const float *dout,
                         const float *inp, int H, int W)
{
    cu_pass *f = &g->f;
    const unet_param *w = &f->m->params[c->w];
    mood_conv2d_dims d = {f->B, c->in, H, W, c->out, c->k, c->stride, c->pad};
    size_t n_out = (size_t)f->B * (size_t)c->out * (size_t)mood_op_conv2d_out_h(&d) *
                   (size_t)mood_op_conv2d_out_w(&d);
    float *dw = weight_grad(g, c->w), *db = weight_grad(g, c->b);
    const float *xs = inp; /* what the side paths read in the forward */
    if (dinp && f->dt != MOOD_CUDA_F32)
        TRY(mood_cuda_op_conv2d_backward_ex(f->ctx, dinp, dout, f->u->w[c->w], f->dt, &d));
    else if (dinp || dw || db)
        TRY(mood_cuda_op_conv2d_backward(f->ctx, dinp, dw, db, dout, inp, P32(f, c->w), &d));
    for (int s = 0; s < w->side_n; s++) {
        side_in_backward p;
        float *sd = NULL;
        if (!side_wanted(g, w, s, dinp != NULL, &p))
            continue;
        if (xs == inp && (p.gr.ddown || p.gr.dup))
            TRY(mood__cuda_unet_side_input(f, &xs, inp, (size_t)f->B * c->in * H * W));
        if (p.sp->rank > 0) {
            TRY(conv_side_backward(g, &p, &d, dinp, dout, xs));
            continue;
        }
        /* dense ΔW in the weight's shape */
        TRY(scaled(g, &sd, dout, p.sp->scale, n_out));
        TRY(mood_cuda_op_conv2d_backward(f->ctx, dinp, p.gr.dup, NULL, sd, xs, p.up, &d));
        put(f, sd);
    }
    if (xs != inp) /* inp itself may be a block of the pass */
        put(f, xs);
    return 0;
}

/* out = GroupNorm(inp) again (the backward of the SiLU after it needs its input); stats (mean
 * then rstd, B x groups each) may be NULL. */
static int gn_again(cu_train *g, const u_norm *nm, float *out, const float *inp, size_t HW,
                    float *stats)
{
    return mood__cuda_train_norm_forward(g, nm, out, inp, 0, HW, stats);
}

/* dinp += GroupNorm backward of dout (and the scale's and shift's gradients when they train);
 * stats as the forward wrote them. */
static int gn_backward(cu_train *g, const u_norm *nm, float *dinp, const float *dout,
                       const float *inp, const float *stats, size_t HW)
{
    size_t ns = (size_t)g->f.B * (size_t)nm->groups;
    return mood_cuda_op_group_norm_backward(g->f.ctx, dinp, weight_grad(g, nm->w),
                                            weight_grad(g, nm->b), dout, inp, P32(&g->f, nm->w),
                                            stats, stats + ns, g->f.B, nm->C, HW, nm->groups);
}

static int ln_backward(cu_train *g, const u_norm *nm, float *dinp, const float *dout,
                       const float *inp, const float *stats, size_t N)
{
    return mood_cuda_op_layer_norm_backward(g->f.ctx, dinp, weight_grad(g, nm->w),
                                            weight_grad(g, nm->b), dout, inp, P32(&g->f, nm->w),
                                            stats, stats + N, N, nm->C);
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
        TRY(mood__cuda_train_resnet_acts_get(g, r, (size_t)rec->H * rec->W, &a));
        TRY(mood__cuda_train_resnet_forward(g, r, &a, out, inp, rec->H, rec->W));
        put(&g->f, out);
    }
    TRY(resnet_backward(g, r, &a, din, dout, inp, rec->H, rec->W));
    mood__cuda_train_resnet_acts_put(g, &a);
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
        TRY(mood__cuda_train_tblock_acts_get(g, t, N, &a));
        TRY(mood__cuda_train_tblock_forward(g, t, rec->layer, &a, y, rec->in, (size_t)rec->H));
        put(&g->f, y);
    }
    TRY(tblock_backward(g, t, rec->layer, &a, dx, rec->in, (size_t)rec->H));
    mood__cuda_train_tblock_acts_put(g, &a);
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
 * its side paths and weights and, when wanted (g->dtext), to text_embeds, the first columns of
 * its input [text_embeds | embedded time ids] (the time ids get none). d2, d3: B x T scratch. */
static int add_embedding_backward(cu_train *g, const time_acts *a, const float *d1, float *d2,
                                  float *d3)
{
    cu_pass *f = &g->f;
    const mood_unet *m = f->m;
    const mood_unet_config *c = &m->cfg;
    size_t B = (size_t)f->B, T = (size_t)c->time_embed_dim;
    int Pd = c->projection_class_embeddings_input_dim, A6 = 6 * c->addition_time_embed_dim;
    float *din = NULL;
    TRY(zero(g, d2, B * T));
    TRY(zero(g, d3, B * T));
    TRY(linear_backward(g, &m->add2, d2, d1, a->has, B));
    TRY(mood_cuda_op_silu_backward(f->ctx, d3, d2, a->ha, B * T));
    if (g->dtext)
        TRY(zeros(g, &din, B * (size_t)Pd));
    TRY(linear_backward(g, &m->add1, din, d3, a->in, B));
    if (g->dtext) /* the forward's concat_channels(in, text_embeds, ids), backward */
        TRY(mood_cuda_op_concat_channels_backward(f->ctx, g->dtext, NULL, din, Pd - A6, A6, f->B,
                                                  1));
    put(f, din);
    return 0;
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

/* ===== entry point ========================================================================== */

int mood_cuda_unet_backward(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                            const mood_side_grad *grads, size_t n_grads, float *dcontext)
{
    return mood_cuda_unet_backward_ex(u, tape, dout, grads, n_grads, dcontext, NULL);
}

int mood_cuda_unet_backward_ex(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                               const mood_side_grad *grads, size_t n_grads, float *dcontext,
                               float *const *weight_grads)
{
    return mood_cuda_unet_backward_cond(u, tape, dout, grads, n_grads, dcontext, NULL,
                                        weight_grads);
}

int mood_cuda_unet_backward_cond(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                                 const mood_side_grad *grads, size_t n_grads, float *dcontext,
                                 float *dtext_embeds, float *const *weight_grads)
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
    if (weight_grads && u->dt != MOOD_CUDA_F32)
        return mood_error_set(MOOD_EUNSUPPORTED, "cuda unet: backward: the weights' gradients "
                                                 "need a float32 model (full-parameter training "
                                                 "runs in fp32)");
    if (dtext_embeds && !u->m->cfg.addition_embed_text_time)
        return mood_error_set(MOOD_EINVAL, "cuda unet: backward: a text_embeds gradient for a "
                                           "model without text_time conditioning");
    train_init(&g, u, tape, tape->B, tape->L);
    g.grads = grads, g.dctx = dcontext, g.wg = weight_grads, g.dtext = dtext_embeds;
    err = backward_run(&g, dout);
    put_all(&g.f);
    return err;
}
