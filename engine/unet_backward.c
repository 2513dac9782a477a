/*
 * unet_backward.c: the UNet's backward pass for training: from dL/d(out) and a training
 * forward's tape (unet_pass.h) to the gradients of every side path's factors (LoRA) and, when
 * asked, of the base weights, of the context and of SDXL's text_embeds (mood_unet_backward_cond
 * in mood/unet.h).
 *
 * It reads the network in reverse, in the manner of llm.c: head_backward, up_backward,
 * mid_backward, down_backward, time_backward, each a list of layer backwards
 * (engine/cpu/ops.h) over the recorded activations, read from the tape's records last to first.
 * Each layer passes the gradient to its input, adds its side paths' factor gradients and, when
 * the caller wants them (g->wgrads), its own weight's and bias's; a layer whose input needs no
 * gradient (conv_in, the time embedding's linear_1) runs only for the gradients wanted of it.
 * Every parameter belongs to one layer, run once, so its gradient is added once per pass, and the
 * ops' weight gradients do not depend on the thread count. Under gradient checkpointing a resnet's
 * and a transformer block's activations are recomputed (by the forward's own layer functions) just
 * before its backward, in this pass's memory.
 *
 * Gradient buffers: one per skip connection (dskip), which both its consumers add to — the next
 * down layer and the up block's concatenation — before it is read, as the reverse order
 * guarantees; two ping-pong buffers for the mid and up blocks' path (dcur); the time embedding's
 * (demb), which every resnet's time_emb_proj adds to. Transformers update their gradient in
 * place, as their forward does its output (out = in + f(in)).
 */
#include <math.h>
#include <string.h>

#include "engine/cpu/ops.h"
#include "engine/unet_pass.h"

/* ----- helpers ------------------------------------------------------------------------------ */

static void zero(unet_pass *g, float *p, size_t n)
{
    RUN(g) memset(p, 0, n * sizeof *p);
}

static float *push_zero(unet_pass *g, size_t n)
{
    float *p = push(g, n);
    zero(g, p, n);
    return p;
}

static size_t max_sz(size_t a, size_t b)
{
    return a > b ? a : b;
}

/* The next record, read from the last; it must be of `kind`. A tape out of step with the model
 * is a bug: the pass stops computing (plan = 1) and reports it. */
static const unet_rec *pop(unet_pass *g, int kind)
{
    static const unet_rec none;
    if (!g->err && g->cursor > 0 && g->recs[g->cursor - 1].kind == kind)
        return &g->recs[--g->cursor];
    if (!g->err)
        g->err = mood_error_set(MOOD_EBACKEND,
                                "unet: backward: record %zu of the tape is not a "
                                "layer of kind %d",
                                g->cursor, kind);
    g->plan = 1;
    return &none;
}

/* The gradient wanted of parameter i (NULL: none, no parameter, or planning). */
static float *wgrad(const unet_pass *g, int i)
{
    return g->wgrads && i >= 0 && !g->plan ? g->wgrads[i] : NULL;
}

/* The gradients wanted for side path s of weight w (NULLs when none). */
static mood_side_grad side_grad(const unet_pass *g, const unet_param *w, int s)
{
    mood_side_grad none = {NULL, NULL};
    size_t i = w->side_first + (size_t)s;
    return g->grads && !g->plan ? g->grads[g->m->side_src[i]] : none;
}

/* Whether a side path's backward has anything to compute (always while planning, which must
 * count the memory of every case). */
static int side_wanted(const unet_pass *g, const float *dinp, mood_side_grad gr)
{
    return g->plan || dinp || gr.ddown || gr.dup;
}

/* ----- Linear and Conv2d with side paths ---------------------------------------------------- */

/* For out = inp W^T + b + Σ scale up(down(inp)) (linear_forward): dinp (N x in, may be NULL)
 * += dout (N x out) through W and the side paths; W's and b's gradients when wanted; the side
 * paths' factor gradients. */
static void linear_backward(unet_pass *g, const u_lin *l, float *dinp, const float *dout,
                            const float *inp, size_t N)
{
    const unet_param *w = &g->m->params[l->w];
    float *dw = wgrad(g, l->w), *db = wgrad(g, l->b);
    size_t mark = g->used;
    if (dinp || dw || db)
        RUN(g) mood_op_linear_backward(dinp, dw, db, dout, inp, w->data, N, l->in, l->out);
    for (int s = 0; s < w->side_n; s++) {
        const mood_side_path *sp = &g->m->sides[w->side_first + (size_t)s];
        mood_side_grad gr = side_grad(g, w, s);
        if (!side_wanted(g, dinp, gr))
            continue;
        if (sp->rank > 0) {
            float *tmp = push(g, N * (size_t)sp->rank), *dtmp = push(g, N * (size_t)sp->rank);
            RUN(g)
            mood_op_lora_linear_backward(dinp, gr.ddown, gr.dup, dout, inp, sp->down, sp->up,
                                         sp->rank, sp->scale, N, l->in, l->out, tmp, dtmp);
        } else { /* dense ΔW: the gradients of scale · inp ΔW^T */
            size_t n = N * (size_t)l->out;
            float *sd = push_zero(g, n);
            RUN(g)
            {
                axpy(sd, dout, sp->scale, n);
                mood_op_linear_backward(dinp, gr.dup, NULL, sd, inp, sp->up, N, l->in, l->out);
            }
        }
        g->used = mark;
    }
}

/* One low-rank side path of a convolution (conv_forward): t1 = conv(inp, down) with the layer's
 * kernel, stride and padding, out += scale · conv1x1(t1, up). */
static void conv_side_backward(unet_pass *g, const mood_side_path *sp, mood_side_grad gr,
                               const mood_conv2d_dims *d, float *dinp, const float *dout,
                               const float *inp)
{
    int OH = mood_op_conv2d_out_h(d), OW = mood_op_conv2d_out_w(d);
    size_t nt = (size_t)d->batch * (size_t)sp->rank * (size_t)OH * OW;
    mood_conv2d_dims dd = *d, du = {d->batch, sp->rank, OH, OW, d->out_c, 1, 1, 0};
    float *t1, *dt1, *sc, *scu;
    dd.out_c = sp->rank;
    t1 = push(g, nt), dt1 = push_zero(g, nt);
    sc = push(g, max_sz(mood_op_conv2d_scratch(&dd), mood_op_conv2d_backward_scratch(&dd)));
    scu = push(g, mood_op_conv2d_backward_scratch(&du));
    RUN(g)
    {
        /* t1 is recomputed and scaled, so dup = dout ⊗ (scale t1) and dt1 = scale up^T dout */
        mood_op_conv2d(t1, inp, sp->down, NULL, &dd, sc);
        cblas_sscal((int)nt, sp->scale, t1, 1);
        mood_op_conv2d_backward(dt1, gr.dup, NULL, dout, t1, sp->up, &du, scu);
        cblas_sscal((int)nt, sp->scale, dt1, 1);
        mood_op_conv2d_backward(dinp, gr.ddown, NULL, dt1, inp, sp->down, &dd, sc);
    }
}

/* For out = conv(inp) + b + Σ side paths (conv_forward): dinp (B x in x H x W, may be NULL)
 * += dout's gradient; the weight's and bias's gradients when wanted; the side paths' factor
 * gradients. */
static void conv_backward(unet_pass *g, const u_conv *c, float *dinp, const float *dout,
                          const float *inp, int H, int W)
{
    const unet_param *w = &g->m->params[c->w];
    float *dw = wgrad(g, c->w), *db = wgrad(g, c->b);
    mood_conv2d_dims d = {g->B, c->in, H, W, c->out, c->k, c->stride, c->pad};
    size_t mark = g->used, n_out = (size_t)g->B * (size_t)c->out *
                                   (size_t)mood_op_conv2d_out_h(&d) *
                                   (size_t)mood_op_conv2d_out_w(&d);
    float *sc = push(g, mood_op_conv2d_backward_scratch(&d));
    size_t mark2 = g->used;
    if (dinp || dw || db)
        RUN(g) mood_op_conv2d_backward(dinp, dw, db, dout, inp, w->data, &d, sc);
    for (int s = 0; s < w->side_n; s++) {
        const mood_side_path *sp = &g->m->sides[w->side_first + (size_t)s];
        mood_side_grad gr = side_grad(g, w, s);
        if (!side_wanted(g, dinp, gr))
            continue;
        if (sp->rank > 0) {
            conv_side_backward(g, sp, gr, &d, dinp, dout, inp);
        } else { /* dense ΔW in the weight's shape */
            float *sd = push_zero(g, n_out);
            RUN(g)
            {
                axpy(sd, dout, sp->scale, n_out);
                mood_op_conv2d_backward(dinp, gr.dup, NULL, sd, inp, sp->up, &d, sc);
            }
        }
        g->used = mark2;
    }
    g->used = mark;
}

/* out = GroupNorm(inp) again (the backward of the SiLU after it needs its input); stats
 * (mean then rstd, B x groups each) may be NULL. */
static void gn_again(unet_pass *g, const u_norm *nm, float *out, const float *inp, size_t HW,
                     float *stats)
{
    size_t ns = (size_t)g->B * (size_t)nm->groups;
    RUN(g)
    mood_op_group_norm(out, inp, P(g, nm->w), P(g, nm->b), g->B, nm->C, HW, nm->groups, nm->eps,
                       stats, off(stats, ns));
}

/* dinp += GroupNorm backward of dout (and the affine gradients when wanted); stats as the
 * forward wrote them. */
static void gn_backward(unet_pass *g, const u_norm *nm, float *dinp, const float *dout,
                        const float *inp, const float *stats, size_t HW)
{
    size_t ns = (size_t)g->B * (size_t)nm->groups;
    RUN(g)
    mood_op_group_norm_backward(dinp, wgrad(g, nm->w), wgrad(g, nm->b), dout, inp, P(g, nm->w),
                                stats, stats + ns, g->B, nm->C, HW, nm->groups);
}

static void ln_backward(unet_pass *g, const u_norm *nm, float *dinp, const float *dout,
                        const float *inp, const float *stats, size_t N)
{
    RUN(g)
    mood_op_layer_norm_backward(dinp, wgrad(g, nm->w), wgrad(g, nm->b), dout, inp, P(g, nm->w),
                                stats, stats + N, N, nm->C);
}

/* ----- ResnetBlock2D ------------------------------------------------------------------------ */

/* din (B x in x HW) += the gradient of the resnet's input from dout, its output's. Three
 * buffers of the larger map (A, Bf, C) are reused along the way. */
static void resnet_backward(unet_pass *g, const u_resnet *r, const resnet_acts *a, float *din,
                            const float *dout, const float *inp, int H, int W)
{
    size_t HW = (size_t)H * W, B = (size_t)g->B, ns = B * (size_t)r->norm1.groups;
    size_t n_in = B * (size_t)r->in * HW, n_out = B * (size_t)r->out * HW;
    size_t mark = g->used, nmax = max_sz(n_in, n_out);
    float *A = push(g, nmax), *Bf = push(g, nmax), *C = push(g, nmax);
    float *dtp = push_zero(g, B * (size_t)r->out);
    const float *dy = dout;
    if (r->out_scale != 1.0f) { /* out = (conv2(n2) + shortcut(inp)) / out_scale */
        float *t = push_zero(g, n_out);
        RUN(g) axpy(t, dout, 1.0f / r->out_scale, n_out);
        dy = t;
    }
    if (r->shortcut.w >= 0)
        conv_backward(g, &r->shortcut, din, dy, inp, H, W);
    else
        RUN(g) mood_op_add_inplace(din, dy, n_in);
    zero(g, A, n_out); /* A = d n2 */
    conv_backward(g, &r->conv2, A, dy, a->n2, H, W);
    gn_again(g, &r->norm2, Bf, a->h1, HW, NULL);
    zero(g, C, n_out); /* C = d norm2(h1) */
    RUN(g) mood_op_silu_backward(C, A, Bf, n_out);
    zero(g, A, n_out); /* A = d h1 */
    gn_backward(g, &r->norm2, A, C, a->h1, off(a->stats, 2 * ns), HW);
    RUN(g) mood_op_add_channel_bias_backward(dtp, A, g->B, r->out, HW);
    linear_backward(g, &r->temb, g->demb, dtp, g->emb_act, B);
    zero(g, Bf, n_in); /* Bf = d n1 */
    conv_backward(g, &r->conv1, Bf, A, a->n1, H, W);
    gn_again(g, &r->norm1, C, inp, HW, NULL);
    zero(g, A, n_in); /* A = d norm1(inp) */
    RUN(g) mood_op_silu_backward(A, Bf, C, n_in);
    gn_backward(g, &r->norm1, din, A, inp, a->stats, HW);
    g->used = mark;
}

/* The recorded resnet `rec` with input inp (rebuilt by the caller for up blocks); its
 * activations recomputed under checkpointing. */
static void resnet_unit_backward(unet_pass *g, const unet_rec *rec, float *din, const float *dout,
                                 const float *inp)
{
    const u_resnet *r = rec->layer;
    resnet_acts a = rec->a.r;
    size_t mark = g->used, HW = (size_t)rec->H * rec->W;
    if (!r)
        return; /* out of step (pop reported it) */
    if (g->tape == TAPE_CHECKPOINT) {
        float *out = push(g, (size_t)g->B * (size_t)r->out * HW);
        mood__unet_resnet_acts_push(g, r, HW, &a);
        mood__unet_resnet_forward(g, r, &a, out, inp, rec->H, rec->W);
    }
    resnet_backward(g, r, &a, din, dout, inp, rec->H, rec->W);
    g->used = mark;
}

/* ----- Transformer2DModel ------------------------------------------------------------------- */

/* dx (N x D): on entry the gradient of the block's output, on return of its input xin. One
 * region R of 12 N x D floats holds the feed-forward's gradients, then attention's. */
static void tblock_backward(unet_pass *g, const u_transformer *t, const u_tblock *k,
                            const tblock_acts *a, float *dx, const float *xin, size_t HW)
{
    size_t N = (size_t)g->B * HW, D = (size_t)t->inner, NL = (size_t)g->B * (size_t)g->L;
    size_t mark = g->used, ND = N * D;
    int hd = t->inner / t->heads, T = (int)HW, L = g->L;
    float *R = push(g, 12 * ND), *dln = push(g, ND);
    float *dk2 = push(g, NL * D), *dv2 = push(g, NL * D);
    float *sc = push(g, max_sz(mood_op_attention_backward_scratch(T, T),
                               mood_op_attention_backward_scratch(T, L)));
    float *dff_g = R, *dff_h = off(R, 4 * ND);
    float *da = R, *dq = off(R, ND), *dk = off(R, 2 * ND), *dv = off(R, 3 * ND);
    /* xout = x2 + ff2(geglu(ff1(ln3(x2)))) */
    zero(g, R, 12 * ND);
    linear_backward(g, &k->ff2, dff_g, dx, a->ff_g, N);
    RUN(g) mood_op_geglu_backward(dff_h, dff_g, a->ff_h, N, 4 * t->inner);
    zero(g, dln, ND);
    linear_backward(g, &k->ff1, dln, dff_h, a->ln3, N);
    ln_backward(g, &k->norm3, dx, dln, a->x2, off(a->stats, 4 * N), N); /* dx = d x2 */
    /* x2 = x1 + o2(attention(q2(ln2(x1)), k2(ctx), v2(ctx))) */
    zero(g, R, 4 * ND);
    zero(g, dk2, NL * D), zero(g, dv2, NL * D);
    linear_backward(g, &k->o2, da, dx, a->a2, N);
    RUN(g)
    mood_op_attention_backward(dq, dk2, dv2, da, a->q2, a->k2, a->v2, g->B, t->heads, T, L, hd, 0,
                               0.0f, sc);
    zero(g, dln, ND);
    linear_backward(g, &k->q2, dln, dq, a->ln2, N);
    linear_backward(g, &k->k2, g->dctx, dk2, g->ctx, NL);
    linear_backward(g, &k->v2, g->dctx, dv2, g->ctx, NL);
    ln_backward(g, &k->norm2, dx, dln, a->x1, off(a->stats, 2 * N), N); /* dx = d x1 */
    /* x1 = xin + o1(attention(q1, k1, v1 of ln1(xin))) */
    zero(g, R, 4 * ND);
    linear_backward(g, &k->o1, da, dx, a->a1, N);
    RUN(g)
    mood_op_attention_backward(dq, dk, dv, da, a->q1, a->k1, a->v1, g->B, t->heads, T, T, hd, 0,
                               0.0f, sc);
    zero(g, dln, ND);
    linear_backward(g, &k->q1, dln, dq, a->ln1, N);
    linear_backward(g, &k->k1, dln, dk, a->ln1, N);
    linear_backward(g, &k->v1, dln, dv, a->ln1, N);
    ln_backward(g, &k->norm1, dx, dln, xin, a->stats, N); /* dx = d xin */
    g->used = mark;
}

static void tblock_unit_backward(unet_pass *g, const u_transformer *t, float *dx)
{
    const unet_rec *rec = pop(g, REC_TBLOCK);
    const u_tblock *k = rec->layer;
    tblock_acts a = rec->a.t;
    size_t mark = g->used, HW = (size_t)rec->H;
    if (!k)
        return; /* out of step (pop reported it) */
    if (g->tape == TAPE_CHECKPOINT) {
        float *y = push(g, (size_t)g->B * HW * (size_t)t->inner);
        mood__unet_tblock_acts_push(g, t, (size_t)g->B * HW, 1, &a);
        mood__unet_tblock_forward(g, t, k, &a, y, rec->in, HW);
    }
    tblock_backward(g, t, k, &a, dx, rec->in, HW);
    g->used = mark;
}

/* dh (B x C x H x W): on entry the gradient of the transformer's output, on return of its
 * input (out = in + proj_out(blocks(proj_in(norm(in)))), so dh keeps its value and adds the
 * path's). */
static void transformer_backward(unet_pass *g, float *dh)
{
    const unet_rec *rec = pop(g, REC_TRANSFORMER);
    const u_transformer *t = rec->layer;
    size_t HW, N, C, mark = g->used;
    float *dtok, *dx;
    if (!t)
        return;
    HW = (size_t)rec->H * rec->W, N = (size_t)g->B * HW, C = (size_t)t->C;
    dtok = push(g, N * C), dx = push_zero(g, N * (size_t)t->inner);
    RUN(g) mood_op_nchw_to_nhwc(dtok, dh, g->B, t->C, HW);
    linear_backward(g, &t->proj_out, dx, dtok, rec->a.tr.xl, N);
    for (int d = t->depth - 1; d >= 0; d--)
        tblock_unit_backward(g, t, dx);
    zero(g, dtok, N * C);
    linear_backward(g, &t->proj_in, dtok, dx, rec->a.tr.tok, N);
    float *dgn = push(g, N * C);
    RUN(g) mood_op_nhwc_to_nchw(dgn, dtok, g->B, t->C, HW);
    gn_backward(g, &t->norm, dh, dgn, rec->in, rec->a.tr.stats, HW);
    g->used = mark;
}

/* ----- sampling ----------------------------------------------------------------------------- */

/* The backward of mood__unet_upsample (unet_pass.h): one thread per plane, in a fixed order. */
void mood__unet_upsample_backward(float *din, const float *dout, int BC, int H, int W, int OH,
                                  int OW)
{
    float sy = (float)H / (float)OH, sx = (float)W / (float)OW;
    if (OH == 2 * H && OW == 2 * W) {
        mood_op_upsample_nearest2x_backward(din, dout, BC, H, W);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int bc = 0; bc < BC; bc++) {
        for (int oy = 0; oy < OH; oy++) {
            int iy = (int)floorf((float)oy * sy);
            float *dst = din + ((size_t)bc * H + (size_t)(iy < H ? iy : H - 1)) * W;
            const float *src = dout + ((size_t)bc * OH + (size_t)oy) * OW;
            for (int ox = 0; ox < OW; ox++) {
                int ix = (int)floorf((float)ox * sx);
                dst[ix < W ? ix : W - 1] += src[ox];
            }
        }
    }
}

/* din (B x C x H x W) += the gradient through Upsample2D (nearest, then conv) of dout. */
static void upsample_backward(unet_pass *g, const unet_rec *rec, float *din, const float *dout)
{
    const u_conv *c = rec->layer;
    int BC;
    size_t n, mark = g->used;
    float *tmp, *dtmp;
    if (!c)
        return; /* out of step (pop reported it) */
    BC = g->B * c->in, n = (size_t)BC * (size_t)rec->OH * (size_t)rec->OW;
    tmp = push(g, n), dtmp = push_zero(g, n);
    RUN(g) mood__unet_upsample(tmp, rec->in, BC, rec->H, rec->W, rec->OH, rec->OW);
    conv_backward(g, c, dtmp, dout, tmp, rec->OH, rec->OW);
    RUN(g) mood__unet_upsample_backward(din, dtmp, BC, rec->H, rec->W, rec->OH, rec->OW);
    g->used = mark;
}

/* ----- blocks ------------------------------------------------------------------------------- */

/* The gradient buffer of the mid and up path that is not dh. */
static float *other_buf(float *dcur[2], const float *dh)
{
    return dh == dcur[0] ? dcur[1] : dcur[0];
}

/* conv_norm_out -> SiLU -> conv_out: dh (zeroed here) = the gradient of the last up block's
 * output from dout. */
static void head_backward(unet_pass *g, float *dh, const float *dout)
{
    const unet_rec *rec = pop(g, REC_HEAD);
    const mood_unet *m = g->m;
    size_t HW = (size_t)rec->H * rec->W, n = (size_t)g->B * (size_t)m->norm_out.C * HW;
    size_t mark = g->used;
    float *gn = push(g, n), *s = push(g, n), *ds = push_zero(g, n);
    float *stats = push(g, 2 * (size_t)g->B * (size_t)m->norm_out.groups);
    zero(g, dh, n);
    gn_again(g, &m->norm_out, gn, rec->in, HW, stats);
    RUN(g) mood_op_silu(s, gn, n);
    conv_backward(g, &m->conv_out, ds, dout, s, rec->H, rec->W);
    zero(g, s, n); /* s = d norm_out(h) */
    RUN(g) mood_op_silu_backward(s, ds, gn, n);
    gn_backward(g, &m->norm_out, dh, s, rec->in, stats, HW);
    g->used = mark;
}

/* *dh: on entry the gradient of the up block's output, on return (the other dcur buffer) of
 * its input h; the skips' gradients get their halves of the concatenations'. */
static void up_backward(unet_pass *g, const u_block *bl, float *dcur[2], float **dh, float **dskip,
                        float *dcat)
{
    if (bl->sampler.w >= 0) {
        const unet_rec *rec = pop(g, REC_UPSAMPLE);
        float *o = other_buf(dcur, *dh);
        zero(g, o, (size_t)g->B * (size_t)bl->sampler.in * (size_t)rec->H * rec->W);
        upsample_backward(g, rec, o, *dh);
        *dh = o;
    }
    for (int j = bl->n - 1; j >= 0; j--) {
        const unet_rec *rec;
        const u_resnet *r = &bl->res[j];
        size_t mark = g->used, HW;
        int s, hc;
        float *cat, *o;
        if (bl->has_attn)
            transformer_backward(g, *dh);
        rec = pop(g, REC_RESNET);
        if (rec->layer != r) { /* out of step (pop reported it) */
            g->plan = 1;
            return;
        }
        s = rec->skip, hc = r->in - g->skip_c[s], HW = (size_t)rec->H * rec->W;
        cat = push(g, (size_t)g->B * (size_t)r->in * HW);
        RUN(g) mood_op_concat_channels(cat, rec->in, hc, g->skip[s], g->skip_c[s], g->B, HW);
        zero(g, dcat, (size_t)g->B * (size_t)r->in * HW);
        resnet_unit_backward(g, rec, dcat, *dh, cat);
        o = other_buf(dcur, *dh);
        zero(g, o, (size_t)g->B * (size_t)hc * HW);
        RUN(g) mood_op_concat_channels_backward(o, dskip[s], dcat, hc, g->skip_c[s], g->B, HW);
        *dh = o;
        g->used = mark;
    }
}

/* dh: the gradient of the mid block's output; adds its input's to the newest skip's. */
static void mid_backward(unet_pass *g, float *dcur[2], float *dh, float **dskip)
{
    const u_block *bl = &g->m->mid;
    int top = g->n_skips_made - 1;
    const unet_rec *rec;
    float *o;
    size_t n = (size_t)g->B * (size_t)g->skip_c[top] * (size_t)g->skip_h[top] * g->skip_w[top];
    if (!bl->n) {
        RUN(g) mood_op_add_inplace(dskip[top], dh, n);
        return;
    }
    rec = pop(g, REC_RESNET);
    o = other_buf(dcur, dh);
    zero(g, o, n);
    resnet_unit_backward(g, rec, o, dh, rec->in);
    transformer_backward(g, o);
    rec = pop(g, REC_RESNET);
    resnet_unit_backward(g, rec, dskip[top], o, rec->in);
}

/* Down block: *s is the newest skip it made; its layers' gradients flow from dskip[*s] to the
 * older skips', *s following. */
static void down_backward(unet_pass *g, const u_block *bl, float **dskip, int *s)
{
    const unet_rec *rec;
    if (bl->sampler.w >= 0) {
        rec = pop(g, REC_DOWNSAMPLE);
        conv_backward(g, &bl->sampler, dskip[*s - 1], dskip[*s], rec->in, rec->H, rec->W);
        (*s)--;
    }
    for (int j = bl->n - 1; j >= 0; j--) {
        if (bl->has_attn)
            transformer_backward(g, dskip[*s]);
        rec = pop(g, REC_RESNET);
        resnet_unit_backward(g, rec, dskip[*s - 1], dskip[*s], rec->in);
        (*s)--;
    }
}

/* SDXL's added embedding: from d1 = d emb through add_embedding (linear_2, SiLU, linear_1) to
 * its weights and side paths and, when wanted (g->dtext), to text_embeds, the first columns of
 * its input [text_embeds | embedded time ids] (the time ids get none). d2, d3: B x T scratch. */
static void add_embedding_backward(unet_pass *g, const time_acts *a, const float *d1, float *d2,
                                   float *d3)
{
    const mood_unet *m = g->m;
    const mood_unet_config *c = &m->cfg;
    size_t B = (size_t)g->B, T = (size_t)c->time_embed_dim;
    size_t Pd = (size_t)c->projection_class_embeddings_input_dim;
    size_t E = Pd - 6 * (size_t)c->addition_time_embed_dim, mark = g->used;
    float *din = push_zero(g, B * Pd);
    zero(g, d2, B * T), zero(g, d3, B * T);
    linear_backward(g, &m->add2, d2, d1, a->has, B);
    RUN(g) mood_op_silu_backward(d3, d2, a->ha, B * T);
    linear_backward(g, &m->add1, g->dtext ? din : NULL, d3, a->in, B);
    for (size_t b = 0; g->dtext && !g->plan && b < B; b++)
        mood_op_add_inplace(g->dtext + b * E, din + b * Pd, E);
    g->used = mark;
}

/* The time embedding's (and SDXL's added embedding's) side paths and weights from g->demb, the
 * gradient of silu(emb). */
static void time_backward(unet_pass *g)
{
    const unet_rec *rec = pop(g, REC_TIME);
    const time_acts *a = &rec->a.tm;
    const mood_unet *m = g->m;
    size_t B = (size_t)g->B, T = (size_t)m->cfg.time_embed_dim, mark = g->used;
    float *d1 = push_zero(g, B * T), *d2 = push(g, B * T), *d3 = push(g, B * T);
    RUN(g) mood_op_silu_backward(d1, g->demb, a->emb, B * T); /* d1 = d emb */
    if (m->cfg.addition_embed_text_time)
        add_embedding_backward(g, a, d1, d2, d3);
    zero(g, d2, B * T), zero(g, d3, B * T);
    linear_backward(g, &m->time2, d2, d1, a->hs, B);
    RUN(g) mood_op_silu_backward(d3, d2, a->h, B * T);
    linear_backward(g, &m->time1, NULL, d3, a->tp, B);
    g->used = mark;
}

void mood__unet_backward_run(unet_pass *g, const unet_pass *f, const float *dout)
{
    const mood_unet *m = f->m;
    const mood_unet_config *c = &m->cfg;
    float *dskip[UNET_MAX_SKIPS], *dcur[2], *dcat, *dh;
    size_t cat_n, cur_n;
    int s, ns = f->n_skips_made;
    const unet_rec *rec;
    g->m = m, g->B = f->B, g->L = f->L, g->ctx = f->ctx, g->emb_act = f->emb_act;
    g->tape = f->tape, g->recs = f->recs, g->n_rec = f->n_rec, g->cursor = f->n_rec;
    g->n_skip = g->n_skips_made = ns;
    memcpy(g->skip, f->skip, sizeof g->skip);
    memcpy(g->skip_c, f->skip_c, sizeof g->skip_c);
    memcpy(g->skip_h, f->skip_h, sizeof g->skip_h);
    memcpy(g->skip_w, f->skip_w, sizeof g->skip_w);
    g->demb = push_zero(g, (size_t)g->B * (size_t)c->time_embed_dim);
    for (int i = 0; i < ns; i++)
        dskip[i] = push_zero(g, (size_t)g->B * (size_t)g->skip_c[i] * (size_t)g->skip_h[i] *
                                    (size_t)g->skip_w[i]);
    mood__unet_up_buffers(g, &cat_n, &cur_n);
    dcat = push(g, cat_n), dcur[0] = push(g, cur_n), dcur[1] = push(g, cur_n);
    dh = dcur[0];
    head_backward(g, dh, dout);
    for (int i = c->n_blocks - 1; i >= 0; i--)
        up_backward(g, &m->up[i], dcur, &dh, dskip, dcat);
    mid_backward(g, dcur, dh, dskip);
    s = ns - 1;
    for (int i = c->n_blocks - 1; i >= 0; i--)
        down_backward(g, &m->down[i], dskip, &s);
    rec = pop(g, REC_CONV_IN);
    conv_backward(g, &m->conv_in, NULL, dskip[0], rec->in, rec->H, rec->W);
    time_backward(g);
    if (!g->err && (g->cursor || s != 0))
        g->err = mood_error_set(MOOD_EBACKEND, "unet: backward: %zu records of the tape unread",
                                g->cursor);
}
