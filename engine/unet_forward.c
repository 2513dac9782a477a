/*
 * unet_forward.c: the UNet2DConditionModel forward pass on the CPU (mood/unet.h), for inference
 * and, recording a tape, for training; in the manner of llm.c: a list of layer functions
 * (resnet_forward, transformer_forward, tblock_forward, the samplers) over flat NCHW /
 * token-major float buffers, built on engine/cpu/ops.h. Memory and recording: unet_pass.h.
 *
 * Mirrors diffusers (models/unets/unet_2d_condition.py, unet_2d_blocks.py, resnet.py,
 * transformers/transformer_2d.py, attention.py, embeddings.py):
 *   emb = linear_2(silu(linear_1(timestep_embedding(t))))  [+ add_embedding(text_embeds |
 *         timestep_embedding(time_ids)) for SDXL's "text_time"]; every resnet uses silu(emb);
 *   ResnetBlock2D: h = conv1(silu(gn1(x))) + time_emb_proj(silu(emb)); h = conv2(silu(gn2(h)));
 *         out = (shortcut(x) + h) / output_scale_factor;
 *   Transformer2DModel: x = proj_in(gn(x, eps 1e-6)) as tokens; per BasicTransformerBlock
 *         x += attn1(ln1(x)); x += attn2(ln2(x), context); x += ff2(geglu(ff1(ln3(x))));
 *         out = proj_out(x) + residual. A 1x1 Conv2d proj_in/out (SD1) is the same matrix as
 *         the Linear one (SD2, SDXL), so both run as a Linear on tokens;
 *   Downsample2D: conv 3x3 stride 2 pad 1; Upsample2D: nearest to the skip's size (2x when the
 *         sizes divide) then conv 3x3; up blocks concatenate [h | skip] before each resnet.
 *
 * In inference the skip connections stay for the whole pass, each layer's activations are
 * released when the layer returns, transformers update their input in place and the mid and up
 * blocks alternate between two buffers. Recording a tape, every layer output is a fresh buffer
 * (unit_out) and the activations stay.
 *
 * Every Linear and Conv2d runs through linear_forward / conv_forward, which add the layer's
 * runtime side paths (mood_unet_set_side_paths): low rank through mood_op_lora_linear or two
 * convolutions (down with the layer's kernel, stride and padding, up 1x1), dense ΔW (rank 0) as
 * one more product.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "engine/cpu/ops.h"
#include "engine/unet_pass.h"

/* ----- recording ---------------------------------------------------------------------------- */

/* Appends a record while recording (NULL otherwise, or out of memory: f->err). */
static unet_rec *record(unet_pass *f, int kind, const void *layer, const float *in, float *out,
                        int H, int W)
{
    unet_rec *r;
    if (!f->tape || f->err)
        return NULL;
    if (mood_array_reserve(&f->recs, &f->cap_rec, f->n_rec, sizeof *f->recs, 64) < 0) {
        f->err = MOOD_ENOMEM;
        return NULL;
    }
    r = &f->recs[f->n_rec++];
    memset(r, 0, sizeof *r);
    r->kind = kind, r->layer = layer, r->in = in, r->out = out;
    r->H = r->OH = H, r->W = r->OW = W, r->skip = -1;
    return r;
}

/* The buffer a layer writes its output to: `reuse` in inference, a fresh one while recording
 * (the input must stay for the backward pass). */
static float *unit_out(unet_pass *f, float *reuse, size_t n)
{
    return f->tape ? push(f, n) : reuse;
}

/* ----- Linear and Conv2d with side paths ---------------------------------------------------- */

/* out (N x out) = inp (N x in) · W^T + b + Σ side paths. */
static void linear_forward(unet_pass *f, const u_lin *l, float *out, const float *inp, size_t N)
{
    const unet_param *w = &f->m->params[l->w];
    size_t mark = f->used;
    RUN(f) mood_op_linear(out, inp, w->data, P(f, l->b), N, l->in, l->out);
    for (int s = 0; s < w->side_n; s++) {
        const mood_side_path *sp = &f->m->sides[w->side_first + (size_t)s];
        float *tmp = push(f, N * (size_t)(sp->rank > 0 ? sp->rank : l->out));
        RUN(f)
        {
            if (sp->rank > 0) {
                mood_op_lora_linear(out, inp, sp->down, sp->up, sp->rank, sp->scale, N, l->in,
                                    l->out, tmp);
            } else {
                mood_op_linear(tmp, inp, sp->up, NULL, N, l->in, l->out);
                axpy(out, tmp, sp->scale, N * (size_t)l->out);
            }
        }
        f->used = mark;
    }
}

/* out (B x out x OH x OW) = conv(inp (B x in x H x W)) + b + Σ side paths. */
static void conv_forward(unet_pass *f, const u_conv *c, float *out, const float *inp, int H, int W)
{
    const unet_param *w = &f->m->params[c->w];
    mood_conv2d_dims d = {f->B, c->in, H, W, c->out, c->k, c->stride, c->pad};
    size_t mark = f->used;
    int OH = mood_op_conv2d_out_h(&d), OW = mood_op_conv2d_out_w(&d);
    size_t ohw = (size_t)OH * (size_t)OW, n_out = (size_t)f->B * (size_t)c->out * ohw;
    float *scratch = push(f, mood_op_conv2d_scratch(&d));
    size_t mark2 = f->used;
    RUN(f) mood_op_conv2d(out, inp, w->data, P(f, c->b), &d, scratch);
    for (int s = 0; s < w->side_n; s++) {
        const mood_side_path *sp = &f->m->sides[w->side_first + (size_t)s];
        size_t inner = sp->rank > 0 ? (size_t)f->B * (size_t)sp->rank * ohw : 0;
        float *t1 = push(f, inner), *t2 = push(f, n_out);
        RUN(f)
        {
            if (sp->rank > 0) {
                mood_conv2d_dims dd = d, du = {f->B, sp->rank, OH, OW, c->out, 1, 1, 0};
                dd.out_c = sp->rank;
                mood_op_conv2d(t1, inp, sp->down, NULL, &dd, scratch);
                mood_op_conv2d(t2, t1, sp->up, NULL, &du, NULL);
            } else {
                mood_op_conv2d(t2, inp, sp->up, NULL, &d, scratch);
            }
            axpy(out, t2, sp->scale, n_out);
        }
        f->used = mark2;
    }
    f->used = mark;
}

/* out = GroupNorm or LayerNorm of inp; stats (2 x B*groups or 2 x N) may be NULL. */
static void norm_forward(unet_pass *f, const u_norm *nm, float *out, const float *inp, size_t rows,
                         size_t HW, float *stats)
{
    RUN(f)
    {
        size_t ns = nm->groups ? (size_t)f->B * (size_t)nm->groups : rows;
        float *mean = stats, *rstd = off(stats, ns);
        if (nm->groups)
            mood_op_group_norm(out, inp, P(f, nm->w), P(f, nm->b), f->B, nm->C, HW, nm->groups,
                               nm->eps, mean, rstd);
        else
            mood_op_layer_norm(out, inp, P(f, nm->w), P(f, nm->b), rows, nm->C, nm->eps, mean,
                               rstd);
    }
}

/* ----- ResnetBlock2D ------------------------------------------------------------------------ */

void mood__unet_resnet_acts_push(unet_pass *f, const u_resnet *r, size_t HW, resnet_acts *a)
{
    size_t B = (size_t)f->B;
    a->n1 = push(f, B * (size_t)r->in * HW);
    a->h1 = push(f, B * (size_t)r->out * HW);
    a->n2 = push(f, B * (size_t)r->out * HW);
    a->tp = push(f, B * (size_t)r->out);
    a->stats = push(f, 4 * B * (size_t)r->norm1.groups);
}

void mood__unet_resnet_forward(unet_pass *f, const u_resnet *r, const resnet_acts *a, float *out,
                               const float *inp, int H, int W)
{
    size_t HW = (size_t)H * W, B = (size_t)f->B, n_out = B * (size_t)r->out * HW;
    size_t ns = B * (size_t)r->norm1.groups, mark;
    norm_forward(f, &r->norm1, a->n1, inp, 0, HW, a->stats);
    RUN(f) mood_op_silu(a->n1, a->n1, B * (size_t)r->in * HW);
    conv_forward(f, &r->conv1, a->h1, a->n1, H, W);
    linear_forward(f, &r->temb, a->tp, f->emb_act, B);
    RUN(f) mood_op_add_channel_bias(a->h1, a->tp, f->B, r->out, HW);
    norm_forward(f, &r->norm2, a->n2, a->h1, 0, HW, off(a->stats, 2 * ns));
    RUN(f) mood_op_silu(a->n2, a->n2, n_out);
    conv_forward(f, &r->conv2, out, a->n2, H, W);
    mark = f->used;
    if (r->shortcut.w >= 0) {
        float *sc = push(f, n_out);
        conv_forward(f, &r->shortcut, sc, inp, H, W);
        RUN(f) mood_op_add_inplace(out, sc, n_out);
    } else {
        RUN(f) mood_op_add_inplace(out, inp, n_out);
    }
    f->used = mark;
    if (r->out_scale != 1.0f) {
        RUN(f)
        {
            for (size_t i = 0; i < n_out; i++)
                out[i] /= r->out_scale;
        }
    }
}

/* A resnet with its activations, released unless the tape keeps them; returns its record. */
static unet_rec *resnet_step(unet_pass *f, const u_resnet *r, float *out, const float *inp, int H,
                             int W)
{
    size_t mark = f->used;
    resnet_acts a;
    unet_rec *rec;
    mood__unet_resnet_acts_push(f, r, (size_t)H * W, &a);
    mood__unet_resnet_forward(f, r, &a, out, inp, H, W);
    rec = record(f, REC_RESNET, r, inp, out, H, W);
    if (f->tape == TAPE_KEEP) {
        if (rec)
            rec->a.r = a;
    } else {
        f->used = mark;
    }
    return rec;
}

/* ----- Transformer2DModel ------------------------------------------------------------------- */

void mood__unet_tblock_acts_push(unet_pass *f, const u_transformer *t, size_t N, int keep_stream,
                                 tblock_acts *a)
{
    size_t D = (size_t)t->inner, NL = (size_t)f->B * (size_t)f->L;
    float **nd[] = {&a->ln1, &a->q1, &a->k1, &a->v1, &a->a1, &a->ln2, &a->q2, &a->a2, &a->ln3};
    for (size_t i = 0; i < sizeof nd / sizeof nd[0]; i++)
        *nd[i] = push(f, N * D);
    a->k2 = push(f, NL * D);
    a->v2 = push(f, NL * D);
    a->ff_h = push(f, N * 8 * D);
    a->ff_g = push(f, N * 4 * D);
    a->stats = push(f, 6 * N);
    a->x1 = keep_stream ? push(f, N * D) : NULL;
    a->x2 = keep_stream ? push(f, N * D) : NULL;
}

void mood__unet_tblock_forward(unet_pass *f, const u_transformer *t, const u_tblock *k,
                               const tblock_acts *a, float *xout, const float *xin, size_t HW)
{
    size_t N = (size_t)f->B * HW, D = (size_t)t->inner, NL = (size_t)f->B * (size_t)f->L;
    size_t mark = f->used;
    int hd = t->inner / t->heads, T = (int)HW, L = f->L;
    float *x1 = a->x1 ? a->x1 : xout, *x2 = a->x2 ? a->x2 : xout;
    float *tmp = push(f, N * D);
    float *sc = push(f, mood_op_attention_scratch(T, T > L ? T : L));
    /* self-attention */
    norm_forward(f, &k->norm1, a->ln1, xin, N, 0, a->stats);
    linear_forward(f, &k->q1, a->q1, a->ln1, N);
    linear_forward(f, &k->k1, a->k1, a->ln1, N);
    linear_forward(f, &k->v1, a->v1, a->ln1, N);
    RUN(f) mood_op_attention(a->a1, a->q1, a->k1, a->v1, f->B, t->heads, T, T, hd, 0, 0.0f, sc);
    linear_forward(f, &k->o1, tmp, a->a1, N);
    RUN(f) mood_op_add(x1, xin, tmp, N * D);
    /* cross-attention over the context */
    norm_forward(f, &k->norm2, a->ln2, x1, N, 0, off(a->stats, 2 * N));
    linear_forward(f, &k->q2, a->q2, a->ln2, N);
    linear_forward(f, &k->k2, a->k2, f->ctx, NL);
    linear_forward(f, &k->v2, a->v2, f->ctx, NL);
    RUN(f) mood_op_attention(a->a2, a->q2, a->k2, a->v2, f->B, t->heads, T, L, hd, 0, 0.0f, sc);
    linear_forward(f, &k->o2, tmp, a->a2, N);
    RUN(f) mood_op_add(x2, x1, tmp, N * D);
    /* GEGLU feed-forward */
    norm_forward(f, &k->norm3, a->ln3, x2, N, 0, off(a->stats, 4 * N));
    linear_forward(f, &k->ff1, a->ff_h, a->ln3, N);
    RUN(f) mood_op_geglu(a->ff_g, a->ff_h, N, 4 * t->inner);
    linear_forward(f, &k->ff2, tmp, a->ff_g, N);
    RUN(f) mood_op_add(xout, x2, tmp, N * D);
    f->used = mark;
}

/* The transformer blocks over x (N x inner tokens); returns the last one's output (x itself in
 * inference, a fresh buffer per block while recording). */
static float *tblocks_forward(unet_pass *f, const u_transformer *t, float *x, size_t HW)
{
    size_t N = (size_t)f->B * HW;
    for (int d = 0; d < t->depth; d++) {
        float *y = unit_out(f, x, N * (size_t)t->inner);
        size_t mark = f->used;
        tblock_acts a;
        unet_rec *rec;
        mood__unet_tblock_acts_push(f, t, N, f->tape != TAPE_OFF, &a);
        mood__unet_tblock_forward(f, t, &t->blocks[d], &a, y, x, HW);
        rec = record(f, REC_TBLOCK, &t->blocks[d], x, y, (int)HW, 1);
        if (f->tape == TAPE_KEEP) {
            if (rec)
                rec->a.t = a;
        } else {
            f->used = mark;
        }
        x = y;
    }
    return x;
}

/* out (B x C x H x W) = Transformer2DModel(inp); out may alias inp in inference. */
static void transformer_forward(unet_pass *f, const u_transformer *t, float *out, const float *inp,
                                int H, int W)
{
    size_t HW = (size_t)H * W, B = (size_t)f->B, N = B * HW, n = B * (size_t)t->C * HW;
    size_t mark = f->used, mark2;
    float *stats = f->tape ? push(f, 2 * B * (size_t)t->norm.groups) : NULL;
    float *tok = push(f, N * (size_t)t->C), *x = push(f, N * (size_t)t->inner);
    /* Recording, out is a fresh buffer, free until the end: the normalised input goes there,
     * and tok (proj_in's input) stays for the backward pass. In inference out is inp. */
    float *gn = f->tape ? out : push(f, n), *xl, *y;
    unet_rec *rec;
    norm_forward(f, &t->norm, gn, inp, 0, HW, stats);
    RUN(f) mood_op_nchw_to_nhwc(tok, gn, f->B, t->C, HW);
    linear_forward(f, &t->proj_in, x, tok, N);
    xl = tblocks_forward(f, t, x, HW);
    mark2 = f->used;
    y = f->tape ? push(f, N * (size_t)t->C) : tok; /* proj_out's tokens */
    linear_forward(f, &t->proj_out, y, xl, N);
    RUN(f) mood_op_nhwc_to_nchw(gn, y, f->B, t->C, HW);
    RUN(f) mood_op_add(out, inp, gn, n);
    if ((rec = record(f, REC_TRANSFORMER, t, inp, out, H, W))) {
        rec->a.tr.stats = stats, rec->a.tr.tok = tok;
        rec->a.tr.x0 = x, rec->a.tr.xl = xl;
    }
    f->used = f->tape ? mark2 : mark;
}

/* A transformer after a layer whose output is h; returns its output (h in inference). */
static float *transformer_step(unet_pass *f, const u_transformer *t, float *h, int H, int W)
{
    float *out = unit_out(f, h, (size_t)f->B * (size_t)t->C * (size_t)H * W);
    transformer_forward(f, t, out, h, H, W);
    return out;
}

/* ----- sampling ----------------------------------------------------------------------------- */

/* torch's nearest interpolation to (OH, OW) (upsample_nearest2d, no scale given): source index
 * min(floor(dst * (in / out)), in - 1) with the ratio in float32. */
static void upsample_nearest(float *out, const float *inp, int BC, int H, int W, int OH, int OW)
{
    float sy = (float)H / (float)OH, sx = (float)W / (float)OW;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)BC * OH; r++) {
        int bc = (int)(r / OH), oy = (int)(r % OH);
        int iy = OH == 2 * H ? oy >> 1 : (int)floorf((float)oy * sy);
        const float *src = inp + ((size_t)bc * H + (size_t)(iy < H ? iy : H - 1)) * W;
        float *dst = out + (size_t)r * OW;
        for (int ox = 0; ox < OW; ox++) {
            int ix = OW == 2 * W ? ox >> 1 : (int)floorf((float)ox * sx);
            dst[ox] = src[ix < W ? ix : W - 1];
        }
    }
}

void mood__unet_upsample(float *out, const float *inp, int BC, int H, int W, int OH, int OW)
{
    if (OH == 2 * H && OW == 2 * W)
        mood_op_upsample_nearest2x(out, inp, BC, H, W);
    else
        upsample_nearest(out, inp, BC, H, W, OH, OW);
}

/* Upsample2D: h (B x C x H x W) -> nearest to (OH, OW) in tmp -> conv 3x3 into out (in
 * inference h's own buffer, tmp the other one). Returns out. */
static float *upsample_step(unet_pass *f, const u_conv *c, float *h, float *other, int H, int W,
                            int OH, int OW)
{
    size_t n = (size_t)f->B * (size_t)c->in * (size_t)OH * OW;
    float *out = unit_out(f, h, n);
    size_t mark = f->used;
    float *tmp = f->tape ? push(f, n) : other;
    unet_rec *rec;
    RUN(f) mood__unet_upsample(tmp, h, f->B * c->in, H, W, OH, OW);
    conv_forward(f, c, out, tmp, OH, OW);
    f->used = mark;
    if ((rec = record(f, REC_UPSAMPLE, c, h, out, H, W)))
        rec->OH = OH, rec->OW = OW;
    return out;
}

/* ----- blocks ------------------------------------------------------------------------------- */

/* A new skip connection buffer (B x C x H x W) on the stack; it stays until the end. */
static float *push_skip(unet_pass *f, int C, int H, int W)
{
    int i = f->n_skip++;
    f->skip[i] = push(f, (size_t)f->B * (size_t)C * (size_t)H * (size_t)W);
    f->skip_c[i] = C, f->skip_h[i] = H, f->skip_w[i] = W;
    f->n_skips_made = f->n_skip;
    return f->skip[i];
}

/* Down block: each resnet (+ transformer) output and the downsampler's become skips; the input
 * is the newest skip. *H, *W follow the downsampler. */
static void down_forward(unet_pass *f, const u_block *bl, int *H, int *W)
{
    for (int j = 0; j < bl->n; j++) {
        const float *in = f->skip[f->n_skip - 1];
        float *out = push_skip(f, bl->res[j].out, *H, *W);
        resnet_step(f, &bl->res[j], out, in, *H, *W);
        if (bl->has_attn)
            f->skip[f->n_skip - 1] = transformer_step(f, &bl->attn[j], out, *H, *W);
    }
    if (bl->sampler.w >= 0) {
        mood_conv2d_dims d = {f->B, bl->sampler.in, *H, *W, bl->sampler.out, 3, 2, bl->sampler.pad};
        float *in = f->skip[f->n_skip - 1];
        int OH = mood_op_conv2d_out_h(&d), OW = mood_op_conv2d_out_w(&d);
        float *out = push_skip(f, bl->sampler.out, OH, OW);
        unet_rec *rec;
        conv_forward(f, &bl->sampler, out, in, *H, *W);
        if ((rec = record(f, REC_DOWNSAMPLE, &bl->sampler, in, out, *H, *W)))
            rec->OH = OH, rec->OW = OW;
        *H = OH, *W = OW;
    }
}

/* The ping-pong buffer that is not h (inference only). */
static float *other_buf(float *cur[2], const float *h)
{
    return h == cur[0] ? cur[1] : cur[0];
}

/* Up block: [h | newest skip] through each resnet (+ transformer), then the upsampler to the
 * next skip's size. *h is in cur[] in inference; cat and cur[] are sized by up_buffers. */
static void up_forward(unet_pass *f, const u_block *bl, float *cur[2], float **h, float *cat,
                       int *H, int *W)
{
    for (int j = 0; j < bl->n; j++) {
        int s = --f->n_skip, hc = bl->res[j].in - f->skip_c[s];
        size_t HW = (size_t)*H * *W;
        float *out = unit_out(f, other_buf(cur, *h), (size_t)f->B * bl->res[j].out * HW);
        unet_rec *rec;
        RUN(f) mood_op_concat_channels(cat, *h, hc, f->skip[s], f->skip_c[s], f->B, HW);
        if ((rec = resnet_step(f, &bl->res[j], out, cat, *H, *W)))
            rec->in = *h, rec->skip = s; /* cat is rebuilt by the backward pass */
        if (bl->has_attn)
            out = transformer_step(f, &bl->attn[j], out, *H, *W);
        *h = out;
    }
    if (bl->sampler.w >= 0) {
        int s = f->n_skip - 1;
        *h = upsample_step(f, &bl->sampler, *h, other_buf(cur, *h), *H, *W, f->skip_h[s],
                           f->skip_w[s]);
        *H = f->skip_h[s], *W = f->skip_w[s];
    }
}

void mood__unet_up_buffers(const unet_pass *f, size_t *cat_n, size_t *cur_n)
{
    const mood_unet *m = f->m;
    int top = f->n_skip, nb = m->cfg.n_blocks;
    size_t B = (size_t)f->B, hw = (size_t)f->skip_h[top - 1] * f->skip_w[top - 1];
    *cat_n = 0;
    *cur_n = B * (size_t)m->cfg.block_out_channels[nb - 1] * hw;
    for (int i = 0; i < nb; i++) {
        const u_block *bl = &m->up[i];
        for (int j = 0; j < bl->n && top > 0; j++) {
            top--;
            hw = (size_t)f->skip_h[top] * f->skip_w[top];
            *cat_n = B * bl->res[j].in * hw > *cat_n ? B * bl->res[j].in * hw : *cat_n;
            *cur_n = B * bl->res[j].out * hw > *cur_n ? B * bl->res[j].out * hw : *cur_n;
        }
        if (bl->sampler.w >= 0 && top > 0) {
            hw = (size_t)f->skip_h[top - 1] * f->skip_w[top - 1];
            *cur_n = B * bl->sampler.out * hw > *cur_n ? B * bl->sampler.out * hw : *cur_n;
        }
    }
}

/* The mid block on the newest skip; returns its output (in cur[] in inference). */
static float *mid_forward(unet_pass *f, float *cur[2], int H, int W)
{
    const u_block *bl = &f->m->mid;
    float *in = f->skip[f->n_skip - 1], *h;
    size_t n = (size_t)f->B * (size_t)f->skip_c[f->n_skip - 1] * (size_t)H * W;
    if (!bl->n) {
        h = unit_out(f, cur[0], n);
        RUN(f) memcpy(h, in, n * sizeof *in);
        return h;
    }
    h = unit_out(f, cur[1], n);
    resnet_step(f, &bl->res[0], h, in, H, W);
    h = transformer_step(f, &bl->attn[0], h, H, W);
    in = h;
    h = unit_out(f, cur[0], n);
    resnet_step(f, &bl->res[1], h, in, H, W);
    return h;
}

/* f->emb_act (B x T, stays) = silu(time embedding [+ text_time added embedding]); recording,
 * the intermediate values (a few rows) stay too. */
static void time_forward(unet_pass *f, const float *t, const float *text_embeds,
                         const float *time_ids)
{
    const mood_unet_config *c = &f->m->cfg;
    size_t B = (size_t)f->B, T = (size_t)c->time_embed_dim, C0 = (size_t)c->block_out_channels[0];
    size_t mark;
    time_acts a = {0};
    unet_rec *rec;
    f->emb_act = push(f, B * T);
    mark = f->used;
    a.tp = push(f, B * C0), a.h = push(f, B * T), a.hs = push(f, B * T), a.emb = push(f, B * T);
    RUN(f)
    mood_op_timestep_embedding(a.tp, t, f->B, (int)C0, c->flip_sin_to_cos, c->freq_shift, 10000.0f);
    linear_forward(f, &f->m->time1, a.h, a.tp, B);
    RUN(f) mood_op_silu(a.hs, a.h, B * T);
    linear_forward(f, &f->m->time2, a.emb, a.hs, B);
    if (c->addition_embed_text_time) {
        size_t A6 = 6 * (size_t)c->addition_time_embed_dim;
        size_t Pd = (size_t)c->projection_class_embeddings_input_dim, E = Pd - A6;
        float *ids = push(f, B * A6), *aug = push(f, B * T);
        a.in = push(f, B * Pd), a.ha = push(f, B * T), a.has = push(f, B * T);
        RUN(f)
        {
            mood_op_timestep_embedding(ids, time_ids, 6 * f->B, c->addition_time_embed_dim,
                                       c->flip_sin_to_cos, c->freq_shift, 10000.0f);
            for (size_t b = 0; b < B; b++) {
                memcpy(a.in + b * Pd, text_embeds + b * E, E * sizeof *a.in);
                memcpy(a.in + b * Pd + E, ids + b * A6, A6 * sizeof *a.in);
            }
        }
        linear_forward(f, &f->m->add1, a.ha, a.in, B);
        RUN(f) mood_op_silu(a.has, a.ha, B * T);
        linear_forward(f, &f->m->add2, aug, a.has, B);
        RUN(f) mood_op_add_inplace(a.emb, aug, B * T);
    }
    RUN(f) mood_op_silu(f->emb_act, a.emb, B * T);
    if ((rec = record(f, REC_TIME, NULL, NULL, f->emb_act, 0, 0)))
        rec->a.tm = a;
    if (!f->tape)
        f->used = mark;
}

/* Recording: copies of the inputs the backward pass reads (the caller's need not outlive the
 * call); f->ctx then points to the copy. Returns x's copy, or x. */
static const float *keep_inputs(unet_pass *f, const float *x, size_t n_in)
{
    size_t nc = (size_t)f->B * (size_t)f->L * (size_t)f->m->cfg.cross_attention_dim;
    float *xc, *cc;
    if (!f->tape)
        return x;
    xc = push(f, n_in), cc = push(f, nc);
    RUN(f)
    {
        memcpy(xc, x, n_in * sizeof *xc);
        memcpy(cc, f->ctx, nc * sizeof *cc);
    }
    f->ctx = cc;
    return xc;
}

static void unet_run(unet_pass *f, float *out, const float *x, const float *t,
                     const float *text_embeds, const float *time_ids, int H, int W)
{
    const mood_unet *m = f->m;
    const mood_unet_config *c = &m->cfg;
    size_t n_in = (size_t)f->B * (size_t)c->in_channels * (size_t)H * W, cat_n, cur_n;
    int C0 = c->block_out_channels[0];
    float *cur[2] = {NULL, NULL}, *cat, *h0, *h;
    x = keep_inputs(f, x, n_in);
    time_forward(f, t, text_embeds, time_ids);
    if (c->center_input_sample) { /* 2 x - 1 */
        float *xc = push(f, n_in);
        RUN(f)
        {
            for (size_t i = 0; i < n_in; i++)
                xc[i] = 2.0f * x[i] - 1.0f;
        }
        x = xc;
    }
    h0 = push_skip(f, C0, H, W);
    conv_forward(f, &m->conv_in, h0, x, H, W);
    record(f, REC_CONV_IN, &m->conv_in, x, h0, H, W);
    for (int i = 0; i < c->n_blocks; i++)
        down_forward(f, &m->down[i], &H, &W);
    mood__unet_up_buffers(f, &cat_n, &cur_n);
    cat = push(f, cat_n);
    if (!f->tape) {
        cur[0] = push(f, cur_n);
        cur[1] = push(f, cur_n);
    }
    h = mid_forward(f, cur, H, W);
    for (int i = 0; i < c->n_blocks; i++)
        up_forward(f, &m->up[i], cur, &h, cat, &H, &W);
    /* conv_norm_out -> SiLU -> conv_out */
    norm_forward(f, &m->norm_out, cat, h, 0, (size_t)H * W, NULL);
    RUN(f) mood_op_silu(cat, cat, (size_t)f->B * C0 * H * W);
    conv_forward(f, &m->conv_out, out, cat, H, W);
    record(f, REC_HEAD, &m->conv_out, h, out, H, W);
}

/* ----- entry points ------------------------------------------------------------------------- */

static int check_sizes(const mood_unet *m, int B, int H, int W, int L)
{
    if (!m)
        return mood_error_set(MOOD_EINVAL, "unet: no model");
    if (B < 1 || H < 1 || W < 1 || L < 1 || (int64_t)B * H * W > INT_MAX / 4 ||
        (int64_t)B * L > INT_MAX / 4)
        return mood_error_set(MOOD_EINVAL, "unet: batch %d, size %dx%d, %d context tokens", B, H, W,
                              L);
    return 0;
}

static int check_forward(const mood_unet *m, float *out, const float *x, const float *t,
                         const float *ctx, int B, int H, int W, int L, const float *text_embeds,
                         const float *time_ids)
{
    if (!m || !out || !x || !t || !ctx)
        return mood_error_set(MOOD_EINVAL, "unet: forward needs out, x, timesteps and context");
    if (m->cfg.addition_embed_text_time && (!text_embeds || !time_ids))
        return mood_error_set(MOOD_EINVAL, "unet: addition_embed_type \"text_time\" (SDXL) needs "
                                           "text_embeds and time_ids");
    return check_sizes(m, B, H, W, L);
}

static int too_big(size_t floats)
{
    return mood_error_set(MOOD_ENOMEM, "unet: %llu MB of activations do not fit in memory",
                          (unsigned long long)(floats * sizeof(float) >> 20));
}

/* *buf holds at least n floats (its contents are not kept); *cap follows. */
static int ensure(float **buf, size_t *cap, size_t n)
{
    uint64_t bytes;
    if (n <= *cap && *buf)
        return 0;
    mood_free(*buf);
    *buf = NULL, *cap = 0;
    if (mood_mul_u64(&bytes, n ? n : 1, sizeof(float)) < 0 || bytes > SIZE_MAX ||
        !(*buf = mood_malloc((size_t)bytes)))
        return too_big(n);
    *cap = n;
    return 0;
}

int mood_unet_forward(const mood_unet *m, float *out, const float *x, const float *timesteps,
                      const float *context, int B, int H, int W, int ctx_len,
                      const float *text_embeds, const float *time_ids)
{
    unet_pass f;
    size_t cap = 0;
    int err = check_forward(m, out, x, timesteps, context, B, H, W, ctx_len, text_embeds, time_ids);
    if (err < 0)
        return err;
    memset(&f, 0, sizeof f);
    f.m = m, f.B = B, f.L = ctx_len, f.ctx = context, f.plan = 1;
    unet_run(&f, out, x, timesteps, text_embeds, time_ids, H, W);
    if ((err = ensure(&f.base, &cap, f.peak)) < 0)
        return err;
    f.plan = 0, f.used = 0, f.n_skip = 0;
    unet_run(&f, out, x, timesteps, text_embeds, time_ids, H, W);
    mood_free(f.base);
    return 0;
}

/* ----- training ----------------------------------------------------------------------------- */

int mood_unet_tape_new(mood_unet_tape **out, unsigned flags)
{
    mood_unet_tape *t;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if (flags & ~(unsigned)MOOD_UNET_TAPE_CHECKPOINT)
        return mood_error_set(MOOD_EINVAL, "unet: unknown tape flags 0x%x", flags);
    if (!(t = mood_calloc(1, sizeof *t)))
        return mood_error_nomem();
    t->mode = flags & MOOD_UNET_TAPE_CHECKPOINT ? TAPE_CHECKPOINT : TAPE_KEEP;
    *out = t;
    return 0;
}

void mood_unet_tape_free(mood_unet_tape *t)
{
    if (!t)
        return;
    mood_free(t->base);
    mood_free(t->scratch);
    mood_free(t->f.recs);
    mood_free(t);
}

size_t mood_unet_tape_bytes(const mood_unet_tape *t)
{
    return t ? (t->cap + t->scratch_cap) * sizeof(float) + t->f.cap_rec * sizeof(unet_rec) : 0;
}

/* A recording pass over the inputs, planned (records with NULL pointers, sizes in f->peak). */
static void plan_train(unet_pass *f, const mood_unet *m, int mode, float *out, const float *x,
                       const float *t, const float *ctx, int B, int H, int W, int L,
                       const float *te, const float *ids)
{
    f->m = m, f->B = B, f->L = L, f->ctx = ctx, f->plan = 1, f->tape = mode;
    f->used = f->peak = 0, f->n_skip = 0, f->n_rec = 0, f->err = 0;
    unet_run(f, out, x, t, te, ids, H, W);
}

int mood_unet_forward_train(const mood_unet *m, mood_unet_tape *tape, float *out, const float *x,
                            const float *timesteps, const float *context, int B, int H, int W,
                            int ctx_len, const float *text_embeds, const float *time_ids)
{
    unet_pass *f;
    int err;
    if (!tape)
        return mood_error_set(MOOD_EINVAL, "unet: forward_train needs a tape");
    tape->valid = 0;
    err = check_forward(m, out, x, timesteps, context, B, H, W, ctx_len, text_embeds, time_ids);
    if (err < 0)
        return err;
    f = &tape->f;
    plan_train(f, m, tape->mode, out, x, timesteps, context, B, H, W, ctx_len, text_embeds,
               time_ids);
    if (f->err)
        return mood_error_nomem();
    if ((err = ensure(&tape->base, &tape->cap, f->peak)) < 0)
        return err;
    f->base = tape->base;
    f->plan = 0, f->used = 0, f->n_skip = 0, f->n_rec = 0, f->ctx = context;
    unet_run(f, out, x, timesteps, text_embeds, time_ids, H, W);
    if (f->err)
        return mood_error_nomem();
    tape->side_gen = m->side_gen;
    tape->valid = 1;
    return 0;
}

int mood_unet_train_memory(const mood_unet *m, int B, int H, int W, int ctx_len, unsigned flags,
                           uint64_t *tape_bytes, uint64_t *backward_bytes)
{
    mood_unet_tape *tape = NULL;
    unet_pass g;
    int err = check_sizes(m, B, H, W, ctx_len);
    if (err < 0 || (err = mood_unet_tape_new(&tape, flags)) < 0)
        return err;
    plan_train(&tape->f, m, tape->mode, NULL, NULL, NULL, NULL, B, H, W, ctx_len, NULL, NULL);
    if (tape->f.err) {
        mood_unet_tape_free(tape);
        return mood_error_nomem();
    }
    memset(&g, 0, sizeof g);
    g.plan = 1;
    mood__unet_backward_run(&g, &tape->f, NULL);
    if (tape_bytes)
        *tape_bytes = (uint64_t)tape->f.peak * sizeof(float);
    if (backward_bytes)
        *backward_bytes = (uint64_t)g.peak * sizeof(float);
    mood_unet_tape_free(tape);
    return 0;
}

int mood_unet_backward(const mood_unet *m, mood_unet_tape *tape, const float *dout,
                       const mood_side_grad *grads, size_t n_grads, float *dcontext)
{
    return mood_unet_backward_ex(m, tape, dout, grads, n_grads, dcontext, NULL);
}

int mood_unet_backward_ex(const mood_unet *m, mood_unet_tape *tape, const float *dout,
                          const mood_side_grad *grads, size_t n_grads, float *dcontext,
                          float *const *weight_grads)
{
    return mood_unet_backward_cond(m, tape, dout, grads, n_grads, dcontext, NULL, weight_grads);
}

int mood_unet_backward_cond(const mood_unet *m, mood_unet_tape *tape, const float *dout,
                            const mood_side_grad *grads, size_t n_grads, float *dcontext,
                            float *dtext_embeds, float *const *weight_grads)
{
    unet_pass g;
    int err;
    if (!m || !tape || !dout)
        return mood_error_set(MOOD_EINVAL, "unet: backward needs the model, a tape and dout");
    if (!tape->valid || tape->f.m != m)
        return mood_error_set(MOOD_EINVAL, "unet: backward: the tape holds no forward_train of "
                                           "this model");
    if (tape->side_gen != m->side_gen)
        return mood_error_set(MOOD_EINVAL,
                              "unet: backward: the side paths changed since forward_train");
    if (grads ? n_grads != m->n_sides : n_grads != 0)
        return mood_error_set(MOOD_EINVAL, "unet: backward: %zu gradients for %zu side paths",
                              n_grads, m->n_sides);
    if (dtext_embeds && !m->cfg.addition_embed_text_time)
        return mood_error_set(MOOD_EINVAL, "unet: backward: a text_embeds gradient asked of a "
                                           "model without SDXL's \"text_time\" embedding");
    memset(&g, 0, sizeof g);
    g.plan = 1;
    mood__unet_backward_run(&g, &tape->f, dout);
    if (g.err)
        return g.err;
    if ((err = ensure(&tape->scratch, &tape->scratch_cap, g.peak)) < 0)
        return err;
    memset(&g, 0, sizeof g);
    g.base = tape->scratch;
    g.grads = grads, g.dctx = dcontext, g.dtext = dtext_embeds, g.wgrads = weight_grads;
    mood__unet_backward_run(&g, &tape->f, dout);
    return g.err;
}
