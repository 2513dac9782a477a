/*
 * clip_backward.c: the text encoder's training passes (mood_clip_forward_train and
 * mood_clip_backward in mood/clip.h): a forward pass that keeps every layer's activations on a
 * tape, and the backward pass from dL/d(hidden) to the gradients of the runtime side paths'
 * (LoRA) factors and of the base weights, in the manner of llm.c.
 *
 * The forward is clip.c's layer by layer with the same calls in the same order (so the same bits),
 * except that nothing is overwritten: per layer (x_in -> x_mid -> x_out, N = batch x seq rows)
 *
 *   ln1 = layer_norm1(x_in)         (mean, rstd kept)
 *   q, k, v = Linear(ln1)           (+ side paths)
 *   att = causal attention(q, k, v)
 *   x_mid = x_in + out_proj(att)
 *   ln2 = layer_norm2(x_mid)        (mean, rstd kept)
 *   pre = fc1(ln2), h = act(pre)
 *   x_out = x_mid + fc2(h)
 *
 * and the hidden state is x after `hid` layers (clip skip), through final_layer_norm when asked.
 * With the pooled output (SDXL's text encoder 2: its end token after the last layer and the final
 * layer norm, the input of the text projection) every layer runs (`stop` = layers, past `hid`),
 * and the pooled rows' norm statistics are kept too.
 * The backward pass reads that list in reverse with the backward ops of engine/cpu/ops.h: one
 * gradient buffer dx is carried down the residual stream and updated in place (d x_out -> d x_mid
 * -> d x_in), each Linear passes the gradient to its input and adds its weight's, bias's and side
 * paths' gradients; the pooled output's gradient enters at its rows of the last layer's output,
 * the hidden state's when the walk reaches layer `hid`; the embedding gradient is scattered last,
 * in row order (no parallel sums).
 */
#include <cblas.h>
#include <stdint.h>
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "engine/clip_internal.h"
#include "engine/cpu/ops.h"
#include "mood/clip.h"

struct mood_clip_tape {
    const mood_clip *m; /* the model of the recorded forward */
    unsigned side_gen;  /* its side paths' generation then */
    int valid;
    int B, T, stop, final_norm;
    int hid;      /* layers before the hidden state (<= stop) */
    int pooled;   /* the pooled output was recorded */
    int32_t *ids; /* B x T */
    size_t ids_cap;
    float *act; /* the activations (layout: acts_of) */
    size_t act_cap;
    float *work; /* attention scratch (forward), gradients (backward) */
    size_t work_cap;
};

/* ----- the tape ----------------------------------------------------------------------------- */

int mood_clip_tape_new(mood_clip_tape **out)
{
    MOOD_ARG_NONNULL(out);
    *out = mood_calloc(1, sizeof **out);
    return *out ? 0 : mood_error_nomem();
}

void mood_clip_tape_free(mood_clip_tape *t)
{
    if (!t)
        return;
    mood_free(t->ids);
    mood_free(t->act);
    mood_free(t->work);
    mood_free(t);
}

size_t mood_clip_tape_bytes(const mood_clip_tape *t)
{
    return (t->act_cap + t->work_cap) * sizeof(float) + t->ids_cap * sizeof(int32_t);
}

/* *p holds at least n elements of `size` bytes (contents not kept). */
static int ensure(void **p, size_t *cap, uint64_t n, size_t size)
{
    uint64_t bytes;
    if (n <= *cap)
        return 0;
    if (mood_mul_u64(&bytes, n, size) < 0 || bytes > SIZE_MAX)
        return mood_error_set(MOOD_ENOMEM, "clip: training buffers of %llu elements",
                              (unsigned long long)n);
    mood_free(*p);
    *cap = 0;
    if (!(*p = mood_malloc((size_t)bytes)))
        return mood_error_nomem();
    *cap = (size_t)n;
    return 0;
}

/* One layer's activations on the tape. */
typedef struct layer_acts {
    float *x_in, *x_out;                        /* N x C (x_out is the next layer's x_in) */
    float *ln1, *q, *k, *v, *att, *x_mid, *ln2; /* N x C */
    float *pre, *h;                             /* N x F: fc1's output and its activation */
    float *stats;                               /* 4 N: mean, rstd of ln1, then of ln2 */
} layer_acts;

/* Layout: x_0 .. x_stop (N x C each), then per layer 7 N x C + 2 N x F + 4 N, then the final
 * norm's mean and rstd for the hidden state (2 N), then for the pooled rows (2 B). */
static uint64_t acts_floats(uint64_t N, uint64_t C, uint64_t F, int stop, uint64_t B)
{
    return (uint64_t)(stop + 1) * N * C + (uint64_t)stop * (7 * N * C + 2 * N * F + 4 * N) + 2 * N +
           2 * B;
}

static layer_acts acts_of(const mood_clip_tape *t, int l)
{
    const mood_clip_config *c = &t->m->cfg;
    size_t N = (size_t)t->B * t->T, NC = N * (size_t)c->hidden, NF = N * (size_t)c->intermediate;
    float *p = t->act + (size_t)(t->stop + 1) * NC + (size_t)l * (7 * NC + 2 * NF + 4 * N);
    layer_acts a;
    a.x_in = t->act + (size_t)l * NC, a.x_out = a.x_in + NC;
    a.ln1 = p, a.q = p + NC, a.k = p + 2 * NC, a.v = p + 3 * NC, a.att = p + 4 * NC;
    a.x_mid = p + 5 * NC, a.ln2 = p + 6 * NC;
    a.pre = p + 7 * NC, a.h = a.pre + NF;
    a.stats = a.h + NF;
    return a;
}

/* The final norm's mean and rstd (2 N) of the hidden state, then of the pooled rows (2 B). */
static float *final_stats(const mood_clip_tape *t)
{
    const mood_clip_config *c = &t->m->cfg;
    size_t N = (size_t)t->B * t->T, NC = N * (size_t)c->hidden, NF = N * (size_t)c->intermediate;
    return t->act + (size_t)(t->stop + 1) * NC + (size_t)t->stop * (7 * NC + 2 * NF + 4 * N);
}

/* ----- forward ------------------------------------------------------------------------------ */

static void layer_forward_train(const mood_clip *m, const clip_layer *l, const layer_acts *a,
                                float *att_scratch, int B, int T)
{
    const mood_clip_config *c = &m->cfg;
    size_t N = (size_t)B * T, NC = N * (size_t)c->hidden, NF = N * (size_t)c->intermediate;
    int C = c->hidden, F = c->intermediate;
    float eps = c->layer_norm_eps;
    mood_op_layer_norm(a->ln1, a->x_in, l->ln1_w, l->ln1_b, N, C, eps, a->stats, a->stats + N);
    mood__clip_linear(m, a->q, a->ln1, l->q_w, l->q_b, N, C, C);
    mood__clip_linear(m, a->k, a->ln1, l->k_w, l->k_b, N, C, C);
    mood__clip_linear(m, a->v, a->ln1, l->v_w, l->v_b, N, C, C);
    mood_op_attention(a->att, a->q, a->k, a->v, B, c->heads, T, T, C / c->heads, 1, 0.0f,
                      att_scratch);
    mood__clip_linear(m, a->x_mid, a->att, l->o_w, l->o_b, N, C, C);
    mood_op_add(a->x_mid, a->x_in, a->x_mid, NC);
    mood_op_layer_norm(a->ln2, a->x_mid, l->ln2_w, l->ln2_b, N, C, eps, a->stats + 2 * N,
                       a->stats + 3 * N);
    mood__clip_linear(m, a->pre, a->ln2, l->fc1_w, l->fc1_b, N, C, F);
    if (c->act == MOOD_CLIP_ACT_QUICK_GELU)
        mood_op_quick_gelu(a->h, a->pre, NF);
    else
        mood_op_gelu(a->h, a->pre, NF);
    mood__clip_linear(m, a->x_out, a->h, l->fc2_w, l->fc2_b, N, F, C);
    mood_op_add(a->x_out, a->x_mid, a->x_out, NC);
}

int mood_clip_forward_train(const mood_clip *m, mood_clip_tape *t, const int32_t *ids, int batch,
                            int seq, int clip_skip, int final_norm, float *hidden_out)
{
    return mood_clip_forward_train_ex(m, t, ids, batch, seq, clip_skip, final_norm, hidden_out,
                                      NULL);
}

/* pooled (B x C) = the final layer norm of x's row at each sequence's pool position; its
 * statistics into st (mean B, then rstd B). The same arithmetic as clip.c's pool_forward. */
static void pool_forward_train(const mood_clip *m, const mood_clip_tape *t, float *pooled,
                               const float *x, float *st)
{
    int C = m->cfg.hidden;
    for (int b = 0; b < t->B; b++) {
        size_t row = (size_t)b * t->T + (size_t)mood__clip_pool_position(t->ids + b * t->T, t->T);
        mood_op_layer_norm(pooled + (size_t)b * C, x + row * C, m->lnf_w, m->lnf_b, 1, C,
                           m->cfg.layer_norm_eps, st + b, st + t->B + b);
    }
}

int mood_clip_forward_train_ex(const mood_clip *m, mood_clip_tape *t, const int32_t *ids, int batch,
                               int seq, int clip_skip, int final_norm, float *hidden_out,
                               float *pooled_out)
{
    int err;
    if (!m || !t || !ids || !hidden_out)
        return mood_error_set(MOOD_EINVAL, "clip: forward_train needs the model, a tape, the ids "
                                           "and hidden_out");
    t->valid = 0;
    if ((err = mood__clip_check_args(m, ids, batch, seq, clip_skip)) < 0)
        return err;
    const mood_clip_config *c = &m->cfg;
    uint64_t N = (uint64_t)batch * (uint64_t)seq;
    int hid = c->layers - clip_skip + 1, stop = pooled_out ? c->layers : hid;
    if ((err = ensure(
             (void **)&t->act, &t->act_cap,
             acts_floats(N, (uint64_t)c->hidden, (uint64_t)c->intermediate, stop, (uint64_t)batch),
             sizeof(float))) < 0 ||
        (err = ensure((void **)&t->ids, &t->ids_cap, N, sizeof(int32_t))) < 0 ||
        (err = ensure((void **)&t->work, &t->work_cap, mood_op_attention_scratch(seq, seq),
                      sizeof(float))) < 0)
        return err;
    t->m = m, t->side_gen = m->side_gen, t->B = batch, t->T = seq, t->stop = stop, t->hid = hid;
    t->final_norm = final_norm != 0;
    t->pooled = pooled_out != NULL;
    memcpy(t->ids, ids, (size_t)N * sizeof *ids);
    mood__clip_embedding_forward(t->act, ids, m->tok_emb, m->pos_emb, batch, seq, c->hidden);
    for (int l = 0; l < stop; l++) {
        layer_acts a = acts_of(t, l);
        layer_forward_train(m, &m->layer[l], &a, t->work, batch, seq);
    }
    const float *x = acts_of(t, hid - 1).x_out;
    float *st = final_stats(t);
    if (t->final_norm)
        mood_op_layer_norm(hidden_out, x, m->lnf_w, m->lnf_b, (size_t)N, c->hidden,
                           c->layer_norm_eps, st, st + N);
    else
        memcpy(hidden_out, x, (size_t)N * (size_t)c->hidden * sizeof *x);
    if (pooled_out)
        pool_forward_train(m, t, pooled_out, acts_of(t, stop - 1).x_out, st + 2 * N);
    t->valid = 1;
    return 0;
}

/* ----- backward ----------------------------------------------------------------------------- */

/* What the backward pass writes to, and its scratch. */
typedef struct clip_bwd {
    const mood_clip *m;
    const mood_side_grad *grads; /* one per side path, or NULL */
    float *const *wg;            /* one per weight, or NULL */
    size_t N;
    float *tmp, *dtmp; /* N x (largest rank): the side paths' inner activations */
    float *scaled;     /* N x max(C, F): a dense side path's scaled output gradient */
} clip_bwd;

static float *wgrad(const clip_bwd *g, size_t i)
{
    return g->wg ? g->wg[i] : NULL;
}

/* dinp (N x IC) += the gradient through out = inp · w^T + b + the side paths of w, from dout
 * (N x OC); weight widx (w) and widx + 1 (b) get theirs, the side paths their factors'. */
static void linear_backward(const clip_bwd *g, float *dinp, const float *dout, const float *inp,
                            const float *w, size_t widx, int IC, int OC)
{
    const mood_clip *m = g->m;
    size_t N = g->N;
    mood_op_linear_backward(dinp, wgrad(g, widx), wgrad(g, widx + 1), dout, inp, w, N, IC, OC);
    for (size_t i = 0; i < m->n_paths; i++) {
        const mood_side_path *p = &m->paths[i];
        mood_side_grad gr = g->grads ? g->grads[i] : (mood_side_grad){NULL, NULL};
        if (m->path_w[i] != w)
            continue;
        if (p->rank > 0) {
            mood_op_lora_linear_backward(dinp, gr.ddown, gr.dup, dout, inp, p->down, p->up, p->rank,
                                         p->scale, N, IC, OC, g->tmp, g->dtmp);
        } else { /* dense: out += scale · inp · up^T */
            for (size_t j = 0; j < N * (size_t)OC; j++)
                g->scaled[j] = p->scale * dout[j];
            mood_op_linear_backward(dinp, gr.dup, NULL, g->scaled, inp, p->up, N, IC, OC);
        }
    }
}

/* The gradient buffers of one layer's backward (work memory). */
typedef struct layer_grads {
    float *dln, *datt, *dq, *dk, *dv; /* N x C */
    float *dh, *dpre;                 /* N x F */
    float *att_scratch;
} layer_grads;

/* dx (N x C): on entry the gradient of layer l's output, on return of its input. */
static void layer_backward(const clip_bwd *g, const mood_clip_tape *t, int l, float *dx,
                           const layer_grads *d)
{
    const mood_clip *m = g->m;
    const mood_clip_config *c = &m->cfg;
    const clip_layer *L = &m->layer[l];
    layer_acts a = acts_of(t, l);
    size_t N = g->N, NC = N * (size_t)c->hidden, NF = N * (size_t)c->intermediate;
    int C = c->hidden, F = c->intermediate, H = c->heads;
    /* x_out = x_mid + fc2(act(fc1(ln2(x_mid)))) */
    memset(d->dh, 0, NF * sizeof *d->dh);
    linear_backward(g, d->dh, dx, a.h, L->fc2_w, mood__clip_widx(l, CLIP_W_FC2), F, C);
    memset(d->dpre, 0, NF * sizeof *d->dpre);
    if (c->act == MOOD_CLIP_ACT_QUICK_GELU)
        mood_op_quick_gelu_backward(d->dpre, d->dh, a.pre, NF);
    else
        mood_op_gelu_backward(d->dpre, d->dh, a.pre, NF);
    memset(d->dln, 0, NC * sizeof *d->dln);
    linear_backward(g, d->dln, d->dpre, a.ln2, L->fc1_w, mood__clip_widx(l, CLIP_W_FC1), C, F);
    size_t i2 = mood__clip_widx(l, CLIP_W_LN2);
    mood_op_layer_norm_backward(dx, wgrad(g, i2), wgrad(g, i2 + 1), d->dln, a.x_mid, L->ln2_w,
                                a.stats + 2 * N, a.stats + 3 * N, N, C); /* dx = d x_mid */
    /* x_mid = x_in + out_proj(attention(q, k, v of ln1(x_in))) */
    memset(d->datt, 0, NC * sizeof *d->datt);
    linear_backward(g, d->datt, dx, a.att, L->o_w, mood__clip_widx(l, CLIP_W_O), C, C);
    memset(d->dq, 0, 3 * NC * sizeof *d->dq); /* dq, dk, dv are consecutive */
    mood_op_attention_backward(d->dq, d->dk, d->dv, d->datt, a.q, a.k, a.v, t->B, H, t->T, t->T,
                               C / H, 1, 0.0f, d->att_scratch);
    memset(d->dln, 0, NC * sizeof *d->dln);
    linear_backward(g, d->dln, d->dq, a.ln1, L->q_w, mood__clip_widx(l, CLIP_W_Q), C, C);
    linear_backward(g, d->dln, d->dk, a.ln1, L->k_w, mood__clip_widx(l, CLIP_W_K), C, C);
    linear_backward(g, d->dln, d->dv, a.ln1, L->v_w, mood__clip_widx(l, CLIP_W_V), C, C);
    size_t i1 = mood__clip_widx(l, CLIP_W_LN1);
    mood_op_layer_norm_backward(dx, wgrad(g, i1), wgrad(g, i1 + 1), d->dln, a.x_in, L->ln1_w,
                                a.stats, a.stats + N, N, C); /* dx = d x_in */
}

/* The embeddings' gradients: each row of dx to its token's row and its position's, in order. */
static void embedding_backward(const clip_bwd *g, const mood_clip_tape *t, const float *dx)
{
    float *dtok = wgrad(g, 0), *dpos = wgrad(g, 1);
    int C = g->m->cfg.hidden;
    if (!dtok && !dpos)
        return;
    for (int b = 0; b < t->B; b++) {
        for (int s = 0; s < t->T; s++) {
            const float *row = dx + ((size_t)b * t->T + s) * C;
            float *et = dtok ? dtok + (size_t)t->ids[b * t->T + s] * C : NULL;
            float *ep = dpos ? dpos + (size_t)s * C : NULL;
            for (int k = 0; et && k < C; k++)
                et[k] += row[k];
            for (int k = 0; ep && k < C; k++)
                ep[k] += row[k];
        }
    }
}

/* Work memory of the backward pass, in floats. */
static uint64_t work_floats(const mood_clip_tape *t, int max_rank)
{
    const mood_clip_config *c = &t->m->cfg;
    uint64_t N = (uint64_t)t->B * t->T, C = (uint64_t)c->hidden, F = (uint64_t)c->intermediate;
    return 6 * N * C + 2 * N * F + mood_op_attention_backward_scratch(t->T, t->T) +
           2 * N * (uint64_t)max_rank + N * (C > F ? C : F);
}

int mood_clip_backward(const mood_clip *m, mood_clip_tape *t, const float *dhidden,
                       const mood_side_grad *grads, size_t n_grads, float *const *weight_grads)
{
    if (!dhidden)
        return mood_error_set(MOOD_EINVAL, "clip: backward needs dhidden");
    return mood_clip_backward_ex(m, t, dhidden, NULL, grads, n_grads, weight_grads);
}

/* dx (N x C) += the gradient of the hidden state's input (layer hid's output) from dhidden. */
static void hidden_backward(const clip_bwd *g, const mood_clip_tape *t, float *dx,
                            const float *dhidden)
{
    const mood_clip *m = g->m;
    size_t nw = m->n_weights, N = g->N;
    float *st = final_stats(t);
    if (t->final_norm)
        mood_op_layer_norm_backward(dx, wgrad(g, nw - 2), wgrad(g, nw - 1), dhidden,
                                    acts_of(t, t->hid - 1).x_out, m->lnf_w, st, st + N, N,
                                    m->cfg.hidden);
    else
        mood_op_add_inplace(dx, dhidden, N * (size_t)m->cfg.hidden);
}

/* dx (N x C) += the gradient of the last layer's output from dpooled (B x C): at each
 * sequence's pool position, through the final layer norm. */
static void pooled_backward(const clip_bwd *g, const mood_clip_tape *t, float *dx,
                            const float *dpooled)
{
    const mood_clip *m = g->m;
    size_t nw = m->n_weights, C = (size_t)m->cfg.hidden;
    const float *x = acts_of(t, t->stop - 1).x_out;
    float *st = final_stats(t) + 2 * g->N;
    for (int b = 0; b < t->B; b++) {
        size_t row = (size_t)b * t->T + (size_t)mood__clip_pool_position(t->ids + b * t->T, t->T);
        mood_op_layer_norm_backward(dx + row * C, wgrad(g, nw - 2), wgrad(g, nw - 1),
                                    dpooled + (size_t)b * C, x + row * C, m->lnf_w, st + b,
                                    st + t->B + b, 1, (int)C);
    }
}

int mood_clip_backward_ex(const mood_clip *m, mood_clip_tape *t, const float *dhidden,
                          const float *dpooled, const mood_side_grad *grads, size_t n_grads,
                          float *const *weight_grads)
{
    int err, max_rank = 1;
    if (!m || !t || (!dhidden && !dpooled))
        return mood_error_set(MOOD_EINVAL, "clip: backward needs the model, a tape and dhidden "
                                           "or dpooled");
    if (!t->valid || t->m != m)
        return mood_error_set(MOOD_EINVAL, "clip: backward: the tape holds no forward_train of "
                                           "this model");
    if (dpooled && !t->pooled)
        return mood_error_set(MOOD_EINVAL, "clip: backward: dpooled for a forward_train that "
                                           "recorded no pooled output");
    if (t->side_gen != m->side_gen)
        return mood_error_set(MOOD_EINVAL,
                              "clip: backward: the side paths changed since forward_train");
    if (grads ? n_grads != m->n_paths : n_grads != 0)
        return mood_error_set(MOOD_EINVAL, "clip: backward: %zu gradients for %zu side paths",
                              n_grads, m->n_paths);
    for (size_t i = 0; i < m->n_paths; i++)
        max_rank = m->paths[i].rank > max_rank ? m->paths[i].rank : max_rank;
    if ((err = ensure((void **)&t->work, &t->work_cap, work_floats(t, max_rank), sizeof(float))) <
        0)
        return err;
    const mood_clip_config *c = &m->cfg;
    size_t N = (size_t)t->B * t->T, NC = N * (size_t)c->hidden, NF = N * (size_t)c->intermediate;
    float *dx = t->work;
    layer_grads d;
    clip_bwd g = {m, grads, weight_grads, N, NULL, NULL, NULL};
    d.dln = dx + NC, d.datt = d.dln + NC, d.dq = d.datt + NC, d.dk = d.dq + NC, d.dv = d.dk + NC;
    d.dh = d.dv + NC, d.dpre = d.dh + NF, d.att_scratch = d.dpre + NF;
    g.tmp = d.att_scratch + mood_op_attention_backward_scratch(t->T, t->T);
    g.dtmp = g.tmp + N * (size_t)max_rank;
    g.scaled = g.dtmp + N * (size_t)max_rank;
    memset(dx, 0, NC * sizeof *dx);
    if (dpooled)
        pooled_backward(&g, t, dx, dpooled);
    for (int l = t->stop - 1; l >= 0; l--) {
        if (l + 1 == t->hid && dhidden)
            hidden_backward(&g, t, dx, dhidden);
        layer_backward(&g, t, l, dx, &d);
    }
    embedding_backward(&g, t, dx);
    return 0;
}

int mood_clip_project_backward(const mood_clip *m, const float *dembeds, int batch, float *dpooled)
{
    int C, P;
    if (!m || !dembeds || !dpooled || batch < 1)
        return mood_error_set(MOOD_EINVAL, "clip: project_backward needs the model, dembeds, "
                                           "dpooled and batch >= 1");
    if (!m->proj)
        return mood_error_set(MOOD_EINVAL, "clip: the model has no text projection");
    C = m->cfg.hidden, P = m->cfg.projection_dim;
    /* out = pooled · W^T with W (P x C): dpooled += dout · W; with W (C x P): dout · W^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, m->proj_t ? CblasTrans : CblasNoTrans, batch, C, P,
                1.0f, dembeds, P, m->proj, m->proj_t ? P : C, 1.0f, dpooled, C);
    return 0;
}
