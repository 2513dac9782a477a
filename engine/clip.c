/*
 * clip.c: the CLIP text encoder forward pass on the CPU (mood/clip.h), in the manner of llm.c:
 * one explicit function per layer over flat row-major float buffers, activations kept in
 * caller-provided scratch so a backward pass can reuse them later.
 *
 * Mirrors transformers' CLIPTextTransformer (models/clip/modeling_clip.py): x = tok[ids] + pos;
 * per layer x += out_proj(attn(ln1(x))), x += fc2(act(fc1(ln2(x)))); last = final_ln(x).
 * The layers are the CPU backend's functions (engine/cpu/ops.h): attention is causal (position
 * i sees 0..i), scores scaled by 1/sqrt(head size), softmax in float32; Linear weights are
 * (out, in) as torch stores them, y = x W^T + b. Sizes: N = batch * seq rows of C = hidden
 * floats; F = intermediate.
 *
 * OpenCLIP names (open_clip's TextTransformer) map one to one onto these layers: ln_1/ln_2 =
 * layer_norm1/2, attn.in_proj_weight (3C x C) = q, k, v rows stacked (loaded as one block, so
 * k = q + C*C, v = k + C*C), attn.out_proj, mlp.c_fc/c_proj = fc1/fc2, ln_final; the text
 * projection is stored (C x P) there and (P x C) in Hugging Face files.
 */
#include <cblas.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "engine/clip_internal.h"
#include "engine/cpu/ops.h"
#include "engine/weights.h"
#include "mood/clip.h"
#include "mood/safetensors.h"

/* ----- layers ------------------------------------------------------------------------------- */

/* out (N x C) = tok[ids] + pos[t] for N = B*T rows. */
void mood__clip_embedding_forward(float *out, const int32_t *ids, const float *tok,
                                  const float *pos, int B, int T, int C)
{
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *e = tok + (size_t)ids[b * T + t] * C, *p = pos + (size_t)t * C;
            for (int c = 0; c < C; c++)
                o[c] = e[c] + p[c];
        }
    }
}

/* out (N x OC) = inp · w^T + b, plus the side paths attached to w (runtime adapters). */
static void linear(const mood_clip *m, float *out, const float *inp, const float *w, const float *b,
                   size_t N, int IC, int OC)
{
    mood_op_linear(out, inp, w, b, N, IC, OC);
    for (size_t i = 0; i < m->n_paths; i++) {
        const mood_side_path *p = &m->paths[i];
        float *tmp;
        if (m->path_w[i] != w)
            continue;
        tmp = mood_malloc(N * (size_t)(p->rank > 0 ? p->rank : OC) * sizeof *tmp);
        if (!tmp)
            continue; /* set_side_paths checked sizes; only memory can fail here */
        if (p->rank > 0) {
            mood_op_lora_linear(out, inp, p->down, p->up, p->rank, p->scale, N, IC, OC, tmp);
        } else {
            mood_op_linear(tmp, inp, p->up, NULL, N, IC, OC);
            for (size_t j = 0; j < N * (size_t)OC; j++)
                out[j] += p->scale * tmp[j];
        }
        mood_free(tmp);
    }
}

void mood__clip_linear(const mood_clip *m, float *out, const float *inp, const float *w,
                       const float *b, size_t N, int IC, int OC)
{
    linear(m, out, inp, w, b, N, IC, OC);
}

/* Activations of one layer, N = B*T rows (reused layer after layer; the training forward,
 * clip_backward.c, keeps every layer's instead). */
typedef struct clip_scratch {
    float *ln, *q, *k, *v, *att_out, *proj; /* N x C each */
    float *h;                               /* N x F */
    float *att;                             /* mood_op_attention_scratch(T, T) */
} clip_scratch;

/* out (N x C) = fc2(act(fc1(inp))); s->h holds the activated fc1 output. */
static void mlp_forward(const mood_clip *m, float *out, const float *inp, const clip_layer *l,
                        clip_scratch *s, size_t N, int C, int F, mood_clip_act act)
{
    size_t NF = N * (size_t)F;
    linear(m, s->h, inp, l->fc1_w, l->fc1_b, N, C, F);
    if (act == MOOD_CLIP_ACT_QUICK_GELU)
        mood_op_quick_gelu(s->h, s->h, NF);
    else
        mood_op_gelu(s->h, s->h, NF);
    linear(m, out, s->h, l->fc2_w, l->fc2_b, N, F, C);
}

/* x (B*T x C) = one pre-norm transformer layer applied to x; attention is causal, scaled by
 * 1/sqrt(head size). */
static void layer_forward(const mood_clip *m, float *x, const clip_layer *l, clip_scratch *s, int B,
                          int T)
{
    const mood_clip_config *c = &m->cfg;
    size_t N = (size_t)B * T;
    int C = c->hidden;
    float eps = c->layer_norm_eps;
    mood_op_layer_norm(s->ln, x, l->ln1_w, l->ln1_b, N, C, eps, NULL, NULL);
    linear(m, s->q, s->ln, l->q_w, l->q_b, N, C, C);
    linear(m, s->k, s->ln, l->k_w, l->k_b, N, C, C);
    linear(m, s->v, s->ln, l->v_w, l->v_b, N, C, C);
    mood_op_attention(s->att_out, s->q, s->k, s->v, B, c->heads, T, T, C / c->heads, 1, 0.0f,
                      s->att);
    linear(m, s->proj, s->att_out, l->o_w, l->o_b, N, C, C);
    mood_op_add_inplace(x, s->proj, N * C);
    mood_op_layer_norm(s->ln, x, l->ln2_w, l->ln2_b, N, C, eps, NULL, NULL);
    mlp_forward(m, s->proj, s->ln, l, s, N, C, c->intermediate, c->act);
    mood_op_add_inplace(x, s->proj, N * C);
}

/* ----- loading ------------------------------------------------------------------------------ */

/* Dimensions of a weight, in units of the config: vocab, positions, hidden, intermediate, 3 x
 * hidden (OpenCLIP's fused q, k, v), projection. */
enum { D_NONE, D_V, D_P, D_C, D_I, D_3C, D_J };

typedef struct clip_spec {
    const char *name; /* after the prefix; "%d" is the layer index */
    size_t field;     /* offset of the pointer in clip_layer */
    int dim0, dim1;   /* D_NONE for dim1 of a vector */
} clip_spec;

#define LAYER_FIELD(f) offsetof(clip_layer, f)

static const clip_spec layer_specs[] = {
    {"encoder.layers.%d.layer_norm1.weight", LAYER_FIELD(ln1_w), D_C, D_NONE},
    {"encoder.layers.%d.layer_norm1.bias", LAYER_FIELD(ln1_b), D_C, D_NONE},
    {"encoder.layers.%d.self_attn.q_proj.weight", LAYER_FIELD(q_w), D_C, D_C},
    {"encoder.layers.%d.self_attn.q_proj.bias", LAYER_FIELD(q_b), D_C, D_NONE},
    {"encoder.layers.%d.self_attn.k_proj.weight", LAYER_FIELD(k_w), D_C, D_C},
    {"encoder.layers.%d.self_attn.k_proj.bias", LAYER_FIELD(k_b), D_C, D_NONE},
    {"encoder.layers.%d.self_attn.v_proj.weight", LAYER_FIELD(v_w), D_C, D_C},
    {"encoder.layers.%d.self_attn.v_proj.bias", LAYER_FIELD(v_b), D_C, D_NONE},
    {"encoder.layers.%d.self_attn.out_proj.weight", LAYER_FIELD(o_w), D_C, D_C},
    {"encoder.layers.%d.self_attn.out_proj.bias", LAYER_FIELD(o_b), D_C, D_NONE},
    {"encoder.layers.%d.layer_norm2.weight", LAYER_FIELD(ln2_w), D_C, D_NONE},
    {"encoder.layers.%d.layer_norm2.bias", LAYER_FIELD(ln2_b), D_C, D_NONE},
    {"encoder.layers.%d.mlp.fc1.weight", LAYER_FIELD(fc1_w), D_I, D_C},
    {"encoder.layers.%d.mlp.fc1.bias", LAYER_FIELD(fc1_b), D_I, D_NONE},
    {"encoder.layers.%d.mlp.fc2.weight", LAYER_FIELD(fc2_w), D_C, D_I},
    {"encoder.layers.%d.mlp.fc2.bias", LAYER_FIELD(fc2_b), D_C, D_NONE},
};
#define N_LAYER_SPECS (sizeof layer_specs / sizeof layer_specs[0])

/* OpenCLIP names; in_proj fills q_w/q_b with the q, k and v rows (k and v set after loading). */
static const clip_spec openclip_specs[] = {
    {"transformer.resblocks.%d.ln_1.weight", LAYER_FIELD(ln1_w), D_C, D_NONE},
    {"transformer.resblocks.%d.ln_1.bias", LAYER_FIELD(ln1_b), D_C, D_NONE},
    {"transformer.resblocks.%d.attn.in_proj_weight", LAYER_FIELD(q_w), D_3C, D_C},
    {"transformer.resblocks.%d.attn.in_proj_bias", LAYER_FIELD(q_b), D_3C, D_NONE},
    {"transformer.resblocks.%d.attn.out_proj.weight", LAYER_FIELD(o_w), D_C, D_C},
    {"transformer.resblocks.%d.attn.out_proj.bias", LAYER_FIELD(o_b), D_C, D_NONE},
    {"transformer.resblocks.%d.ln_2.weight", LAYER_FIELD(ln2_w), D_C, D_NONE},
    {"transformer.resblocks.%d.ln_2.bias", LAYER_FIELD(ln2_b), D_C, D_NONE},
    {"transformer.resblocks.%d.mlp.c_fc.weight", LAYER_FIELD(fc1_w), D_I, D_C},
    {"transformer.resblocks.%d.mlp.c_fc.bias", LAYER_FIELD(fc1_b), D_I, D_NONE},
    {"transformer.resblocks.%d.mlp.c_proj.weight", LAYER_FIELD(fc2_w), D_C, D_I},
    {"transformer.resblocks.%d.mlp.c_proj.bias", LAYER_FIELD(fc2_b), D_C, D_NONE},
};
#define N_OPENCLIP_SPECS (sizeof openclip_specs / sizeof openclip_specs[0])

/* The tensor names of one layout (after the prefix). */
typedef struct clip_naming {
    const char *tok, *pos, *lnf_w, *lnf_b;
    const char *layer0; /* "%d": a tensor every layer has (counts the layers) */
    const char *fc1_0;  /* layer 0's fc1 weight (gives the intermediate width) */
    const char *proj;   /* the text projection */
    int proj_t;         /* proj is stored (hidden, projection) */
    const clip_spec *specs;
    size_t n_specs;
} clip_naming;

static const clip_naming hf_naming = {"embeddings.token_embedding.weight",
                                      "embeddings.position_embedding.weight",
                                      "final_layer_norm.weight",
                                      "final_layer_norm.bias",
                                      "encoder.layers.%d.layer_norm1.weight",
                                      "encoder.layers.0.mlp.fc1.weight",
                                      "text_projection.weight",
                                      0,
                                      layer_specs,
                                      N_LAYER_SPECS};

static const clip_naming openclip_naming = {"token_embedding.weight",
                                            "positional_embedding",
                                            "ln_final.weight",
                                            "ln_final.bias",
                                            "transformer.resblocks.%d.ln_1.weight",
                                            "transformer.resblocks.0.mlp.c_fc.weight",
                                            "text_projection",
                                            1,
                                            openclip_specs,
                                            N_OPENCLIP_SPECS};

static int64_t dim_size(const mood_clip_config *c, int d)
{
    switch (d) {
    case D_V:
        return c->vocab;
    case D_P:
        return c->max_positions;
    case D_C:
        return c->hidden;
    case D_I:
        return c->intermediate;
    case D_3C:
        return 3 * (int64_t)c->hidden;
    case D_J:
        return c->projection_dim;
    default:
        return 1;
    }
}

/* A loading session: the open file, the key prefix, the next free float of the weights. */
typedef struct clip_loader {
    mood_st_file *f;
    const char *path;
    const char *prefix;    /* "text_model." or "" */
    const char *proj_name; /* the full name of the text projection, "" when absent */
    const clip_naming *nm; /* the layout of the names */
    float *next;
} clip_loader;

/* Finds prefix+name, checks it is (d0[, d1]) and converts it to float32 at ld->next. */
static int load_full(clip_loader *ld, const mood_clip_config *c, const char *full, int d0, int d1,
                     const float **out)
{
    int64_t s0 = dim_size(c, d0), s1 = dim_size(c, d1);
    int ndim = d1 == D_NONE ? 1 : 2;
    int64_t want[2] = {s0, s1};
    char lb[300];
    snprintf(lb, sizeof lb, "\"%s\"", full);
    int err = mood__weight_to_f32(ld->next, mood_st_find(ld->f, full), ld->path, lb, want, ndim, 0);
    if (err < 0)
        return err;
    *out = ld->next;
    ld->next += s0 * s1;
    return 0;
}

static int load_tensor(clip_loader *ld, const mood_clip_config *c, const char *name, int d0, int d1,
                       const float **out)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", ld->prefix, name);
    return load_full(ld, c, full, d0, d1, out);
}

/* The 2-D shape of prefix+name into rows/cols; MOOD_EFORMAT naming it when absent or not 2-D. */
static int shape2(const clip_loader *ld, const char *name, int *rows, int *cols)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", ld->prefix, name);
    const mood_st_tensor *t = mood_st_find(ld->f, full);
    if (!t)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s\" is missing", ld->path, full);
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > INT32_MAX ||
        t->shape[1] > INT32_MAX)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s\" is not a 2-D matrix", ld->path,
                              full);
    *rows = (int)t->shape[0];
    *cols = (int)t->shape[1];
    return 0;
}

static int count_layers(const clip_loader *ld)
{
    char full[256];
    int n = 0;
    for (;; n++) {
        int k = snprintf(full, sizeof full, "%s", ld->prefix);
        snprintf(full + k, sizeof full - (size_t)k, ld->nm->layer0, n);
        if (!mood_st_find(ld->f, full))
            return n;
    }
}

/* Heads, activation and eps from the hint, else from the hidden size. */
static int infer_rest(mood_clip_config *c, const mood_clip_config *hint, const char *path)
{
    c->heads = hint ? hint->heads : 0;
    c->act = hint ? hint->act : MOOD_CLIP_ACT_AUTO;
    c->layer_norm_eps = hint && hint->layer_norm_eps > 0 ? hint->layer_norm_eps : 1e-5f;
    if (c->heads <= 0)
        c->heads = c->hidden == 768 ? 12 : c->hidden == 1024 ? 16 : c->hidden == 1280 ? 20 : 0;
    if (c->act == MOOD_CLIP_ACT_AUTO)
        c->act = c->hidden == 768 ? MOOD_CLIP_ACT_QUICK_GELU : MOOD_CLIP_ACT_GELU;
    if (c->heads <= 0)
        return mood_error_set(MOOD_EINVAL,
                              "%s: cannot infer the attention heads of a %d-wide text encoder "
                              "(768, 1024 and 1280 are known): not a text encoder of SD 1.x, "
                              "2.x or XL; as a diffusers folder, its text_encoder/config.json "
                              "would say num_attention_heads",
                              path, c->hidden);
    if (c->hidden % c->heads)
        return mood_error_set(MOOD_EINVAL, "%s: %d heads do not divide the width %d", path,
                              c->heads, c->hidden);
    return 0;
}

/* The key prefix and naming: Hugging Face files and transformers < 5 write "text_model.",
 * transformers 5 nothing, SD1 single-file checkpoints "cond_stage_model.transformer.text_model.",
 * SD2 ones "cond_stage_model.model." (OpenCLIP), SDXL ones
 * "conditioner.embedders.0.transformer.text_model." (the first, CLIP-L, encoder) and
 * "conditioner.embedders.1.model." (the second, OpenCLIP bigG); open_clip state dicts nothing.
 * Found by the token embedding; none found leaves Hugging Face names without prefix. */
static void find_prefix(clip_loader *ld, mood_clip_encoder enc)
{
    static const struct {
        const char *prefix;
        const clip_naming *nm;
        mood_clip_encoder enc;
    } known[] = {
        {"text_model.", &hf_naming, MOOD_CLIP_ENCODER_1},
        {"cond_stage_model.transformer.text_model.", &hf_naming, MOOD_CLIP_ENCODER_1},
        {"cond_stage_model.model.", &openclip_naming, MOOD_CLIP_ENCODER_1},
        {"conditioner.embedders.0.transformer.text_model.", &hf_naming, MOOD_CLIP_ENCODER_1},
        {"conditioner.embedders.1.model.", &openclip_naming, MOOD_CLIP_ENCODER_2},
        {"", &openclip_naming, MOOD_CLIP_ENCODER_1},
    };
    char full[256];
    ld->prefix = "";
    ld->nm = &hf_naming;
    if (enc == MOOD_CLIP_ENCODER_AUTO)
        enc = MOOD_CLIP_ENCODER_1;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        snprintf(full, sizeof full, "%s%s", known[i].prefix, known[i].nm->tok);
        if (known[i].enc == enc && mood_st_find(ld->f, full)) {
            ld->prefix = known[i].prefix;
            ld->nm = known[i].nm;
            return;
        }
    }
    if (enc == MOOD_CLIP_ENCODER_2) { /* names the tensor missing in the error */
        ld->prefix = known[4].prefix;
        ld->nm = known[4].nm;
    }
}

/* The text projection: prefix+name, or for Hugging Face names also beside "text_model." (where
 * CLIPTextModelWithProjection keeps it). Sets ld->proj_name and the projection width. */
static int find_projection(clip_loader *ld, mood_clip_config *c, char *full, size_t size)
{
    const mood_st_tensor *t;
    size_t plen = strlen(ld->prefix), tm = strlen("text_model.");
    snprintf(full, size, "%s%s", ld->prefix, ld->nm->proj);
    t = mood_st_find(ld->f, full);
    if (!t && ld->nm == &hf_naming && plen >= tm &&
        !strcmp(ld->prefix + plen - tm, "text_model.")) {
        snprintf(full, size, "%.*s%s", (int)(plen - tm), ld->prefix, ld->nm->proj);
        t = mood_st_find(ld->f, full);
    }
    c->projection_dim = 0;
    if (!t) {
        full[0] = 0;
        return 0;
    }
    int64_t p = t->ndim == 2 ? t->shape[ld->nm->proj_t ? 1 : 0] : 0;
    if (p < 1 || p > INT32_MAX)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s\" is not a 2-D matrix", ld->path,
                              full);
    c->projection_dim = (int)p;
    return 0;
}

static int infer_config(mood_clip_config *c, clip_loader *ld, const mood_clip_config *hint,
                        char *proj_name, size_t size)
{
    int err, rows, cols;
    find_prefix(ld, hint ? hint->encoder : MOOD_CLIP_ENCODER_AUTO);
    c->encoder = hint && hint->encoder ? hint->encoder : MOOD_CLIP_ENCODER_AUTO;
    if ((err = shape2(ld, ld->nm->tok, &c->vocab, &c->hidden)) < 0 ||
        (err = shape2(ld, ld->nm->pos, &c->max_positions, &cols)) < 0 ||
        (err = shape2(ld, ld->nm->fc1_0, &c->intermediate, &rows)) < 0 ||
        (err = find_projection(ld, c, proj_name, size)) < 0)
        return err;
    ld->proj_name = proj_name;
    c->layers = count_layers(ld);
    return infer_rest(c, hint, ld->path);
}

/* Total floats of all weights. */
static int64_t param_count(const mood_clip_config *c)
{
    int64_t C = c->hidden, F = c->intermediate;
    int64_t per_layer = 4 * (C * C + C) + 4 * C + (F * C + F) + (C * F + C);
    return (int64_t)c->vocab * C + (int64_t)c->max_positions * C + 2 * C + per_layer * c->layers +
           (int64_t)c->projection_dim * C;
}

static int load_weights(mood_clip *m, clip_loader *ld)
{
    const mood_clip_config *c = &m->cfg;
    char name[128];
    int err = 0;
    const clip_naming *nm = ld->nm;
    size_t C = (size_t)c->hidden;
    if ((err = load_tensor(ld, c, nm->tok, D_V, D_C, &m->tok_emb)) ||
        (err = load_tensor(ld, c, nm->pos, D_P, D_C, &m->pos_emb)) ||
        (err = load_tensor(ld, c, nm->lnf_w, D_C, D_NONE, &m->lnf_w)) ||
        (err = load_tensor(ld, c, nm->lnf_b, D_C, D_NONE, &m->lnf_b)))
        return err;
    for (int i = 0; i < c->layers; i++) {
        clip_layer *l = &m->layer[i];
        for (size_t s = 0; s < nm->n_specs; s++) {
            const clip_spec *sp = &nm->specs[s];
            const float **slot = (const float **)((char *)l + sp->field);
            snprintf(name, sizeof name, sp->name, i);
            if ((err = load_tensor(ld, c, name, sp->dim0, sp->dim1, slot)) < 0)
                return err;
        }
        if (nm == &openclip_naming) { /* in_proj: q, k, v rows */
            l->k_w = l->q_w + C * C;
            l->v_w = l->k_w + C * C;
            l->k_b = l->q_b + C;
            l->v_b = l->k_b + C;
        }
    }
    m->proj_t = nm->proj_t;
    if (c->projection_dim > 0)
        return load_full(ld, c, ld->proj_name, nm->proj_t ? D_C : D_J, nm->proj_t ? D_J : D_C,
                         &m->proj);
    return 0;
}

/* The names after "text_model.encoder.layers.<l>." in weight-list order (clip_internal.h). */
static const char *const layer_children[CLIP_LAYER_WEIGHTS] = {"self_attn.k_proj.weight",
                                                               "self_attn.k_proj.bias",
                                                               "self_attn.v_proj.weight",
                                                               "self_attn.v_proj.bias",
                                                               "self_attn.q_proj.weight",
                                                               "self_attn.q_proj.bias",
                                                               "self_attn.out_proj.weight",
                                                               "self_attn.out_proj.bias",
                                                               "layer_norm1.weight",
                                                               "layer_norm1.bias",
                                                               "mlp.fc1.weight",
                                                               "mlp.fc1.bias",
                                                               "mlp.fc2.weight",
                                                               "mlp.fc2.bias",
                                                               "layer_norm2.weight",
                                                               "layer_norm2.bias"};

/* Weight i's name (Hugging Face, with "text_model.") into buf; returns its length. */
static int weight_name_at(const mood_clip *m, size_t i, char *buf, size_t size)
{
    size_t per = CLIP_LAYER_WEIGHTS, layers = (size_t)m->cfg.layers;
    if (i < 2)
        return snprintf(buf, size, "text_model.embeddings.%s_embedding.weight",
                        i == 0 ? "token" : "position");
    if (i - 2 < per * layers)
        return snprintf(buf, size, "text_model.encoder.layers.%zu.%s", (i - 2) / per,
                        layer_children[(i - 2) % per]);
    return snprintf(buf, size, "text_model.final_layer_norm.%s",
                    i == 2 + per * layers ? "weight" : "bias");
}

/* m->names / m->name: every weight's name in one allocation. */
static int build_names(mood_clip *m)
{
    size_t n = 4 + CLIP_LAYER_WEIGHTS * (size_t)m->cfg.layers, bytes = 0, at = 0;
    char buf[160];
    for (size_t i = 0; i < n; i++)
        bytes += (size_t)weight_name_at(m, i, buf, sizeof buf) + 1;
    if (!(m->names = mood_malloc(bytes)) || !(m->name = mood_malloc(n * sizeof *m->name)))
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++) {
        m->name[i] = m->names + at;
        at += (size_t)weight_name_at(m, i, m->names + at, bytes - at) + 1;
    }
    m->n_weights = n;
    return 0;
}

int mood_clip_load(mood_clip **out, const char *path, const mood_clip_config *hint)
{
    clip_loader ld = {NULL, path, "", "", &hf_naming, NULL};
    char proj_name[256], layer0[256];
    mood_clip *m = NULL;
    uint64_t bytes;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    if ((err = mood_st_open(&ld.f, path)) < 0)
        goto done;
    if (!(m = mood_calloc(1, sizeof *m))) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = infer_config(&m->cfg, &ld, hint, proj_name, sizeof proj_name)) < 0)
        goto done;
    if (m->cfg.layers < 1) {
        int k = snprintf(layer0, sizeof layer0, "%s", ld.prefix);
        snprintf(layer0 + k, sizeof layer0 - (size_t)k, ld.nm->layer0, 0);
        err = mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s\" is missing", path, layer0);
        goto done;
    }
    if (mood_mul_u64(&bytes, (uint64_t)param_count(&m->cfg), sizeof(float)) < 0 ||
        !(m->params = mood_malloc((size_t)bytes)) ||
        !(m->layer = mood_calloc((size_t)m->cfg.layers, sizeof *m->layer))) {
        err = mood_error_nomem();
        goto done;
    }
    ld.next = m->params;
    err = load_weights(m, &ld);
    if (err == 0)
        err = build_names(m);
done:
    mood_st_close(ld.f);
    if (err < 0)
        mood_clip_free(m);
    else
        *out = m;
    return err;
}

void mood_clip_free(mood_clip *m)
{
    if (!m)
        return;
    mood_free(m->params);
    mood_free(m->layer);
    mood_free(m->paths);
    mood_free(m->path_w);
    mood_free(m->names);
    mood_free(m->name);
    mood_free(m);
}

const mood_clip_config *mood_clip_get_config(const mood_clip *m)
{
    return &m->cfg;
}

int mood_clip_has_projection(const mood_clip *m)
{
    return m->proj != NULL;
}

int mood_clip_project(const mood_clip *m, const float *pooled, int batch, float *out)
{
    int C, P;
    MOOD_ARG_NONNULL(m);
    MOOD_ARG_NONNULL(pooled);
    MOOD_ARG_NONNULL(out);
    C = m->cfg.hidden, P = m->cfg.projection_dim;
    if (!m->proj)
        return mood_error_set(MOOD_EINVAL, "clip: the model has no text projection");
    if (batch < 1)
        return mood_error_set(MOOD_EINVAL, "clip: %d sequences", batch);
    /* out (B x P) = pooled (B x C) · W^T with W (P x C), or pooled · W with W (C x P). */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, m->proj_t ? CblasNoTrans : CblasTrans, batch, P, C,
                1.0f, pooled, C, m->proj, m->proj_t ? P : C, 0.0f, out, P);
    return 0;
}

/* ----- forward ------------------------------------------------------------------------------ */

static void scratch_free(clip_scratch *s, float *x)
{
    mood_free(s->ln);
    mood_free(x);
}

/* One allocation for x (N x C) and every scratch buffer. */
static int scratch_alloc(clip_scratch *s, float **x, const mood_clip_config *c, int B, int T)
{
    size_t N = (size_t)B * T, C = (size_t)c->hidden, F = (size_t)c->intermediate;
    uint64_t floats = (uint64_t)N * (6 * C + F) + mood_op_attention_scratch(T, T);
    float *p = mood_malloc((size_t)floats * sizeof(float));
    *x = mood_malloc(N * C * sizeof(float));
    if (!p || !*x) {
        mood_free(p);
        mood_free(*x);
        *x = NULL;
        return mood_error_nomem();
    }
    s->ln = p;
    s->q = s->ln + N * C;
    s->k = s->q + N * C;
    s->v = s->k + N * C;
    s->att_out = s->v + N * C;
    s->proj = s->att_out + N * C;
    s->h = s->proj + N * C;
    s->att = s->h + N * F;
    return 0;
}

int mood__clip_check_args(const mood_clip *m, const int32_t *ids, int batch, int seq, int clip_skip)
{
    const mood_clip_config *c = &m->cfg;
    if (batch < 1 || seq < 1 || seq > c->max_positions)
        return mood_error_set(MOOD_EINVAL, "clip: %d sequences of %d ids (at most %d positions)",
                              batch, seq, c->max_positions);
    if (clip_skip < 1 || clip_skip > c->layers)
        return mood_error_set(MOOD_EINVAL, "clip: clip skip %d outside 1..%d", clip_skip,
                              c->layers);
    for (size_t i = 0; i < (size_t)batch * seq; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return mood_error_set(MOOD_EINVAL, "clip: token id %d at %zu outside 0..%d", ids[i], i,
                                  c->vocab - 1);
    return 0;
}

int mood__clip_pool_position(const int32_t *ids, int T)
{
    int best = 0;
    for (int t = 1; t < T; t++)
        if (ids[t] > ids[best])
            best = t;
    return best;
}

/* pooled (B x C) = last-normed row at the first position of each sequence's highest id. */
static void pool_forward(float *pooled, const float *x, const mood_clip *m, const int32_t *ids,
                         int B, int T)
{
    int C = m->cfg.hidden;
    for (int b = 0; b < B; b++) {
        int best = mood__clip_pool_position(ids + (size_t)b * T, T);
        mood_op_layer_norm(pooled + (size_t)b * C, x + ((size_t)b * T + best) * C, m->lnf_w,
                           m->lnf_b, 1, C, m->cfg.layer_norm_eps, NULL, NULL);
    }
}

/* Copies x into hidden_out, through the final layer norm when final_norm is set. */
static void emit_hidden(float *hidden_out, const float *x, const mood_clip *m, size_t N,
                        int final_norm)
{
    int C = m->cfg.hidden;
    if (final_norm)
        mood_op_layer_norm(hidden_out, x, m->lnf_w, m->lnf_b, N, C, m->cfg.layer_norm_eps, NULL,
                           NULL);
    else
        memcpy(hidden_out, x, N * (size_t)C * sizeof *x);
}

int mood_clip_forward(const mood_clip *m, const int32_t *ids, int batch, int seq, int clip_skip,
                      int final_norm, float *hidden_out, float *pooled_out)
{
    const mood_clip_config *c;
    clip_scratch s = {0};
    float *x = NULL;
    int err, stop;
    MOOD_ARG_NONNULL(m);
    MOOD_ARG_NONNULL(ids);
    c = &m->cfg;
    stop = c->layers - clip_skip + 1; /* layers run before hidden_out is taken */
    if ((err = mood__clip_check_args(m, ids, batch, seq, clip_skip)) < 0 ||
        (err = scratch_alloc(&s, &x, c, batch, seq)) < 0)
        return err;
    size_t N = (size_t)batch * seq;
    mood__clip_embedding_forward(x, ids, m->tok_emb, m->pos_emb, batch, seq, c->hidden);
    int last = pooled_out ? c->layers : stop;
    for (int l = 0; l < last; l++) {
        layer_forward(m, x, &m->layer[l], &s, batch, seq);
        if (l + 1 == stop && hidden_out)
            emit_hidden(hidden_out, x, m, N, final_norm);
    }
    if (pooled_out)
        pool_forward(pooled_out, x, m, ids, batch, seq);
    scratch_free(&s, x);
    return 0;
}

/* ----- weights by name and runtime adapters ------------------------------------------------- */

/* The weight called `name` in Hugging Face naming (with or without "text_model."). */
static const float *find_weight(const mood_clip *m, const char *name, int *ndim, int64_t shape[4])
{
    const mood_clip_config *c = &m->cfg;
    char *end;
    long l;
    if (strncmp(name, "text_model.", 11) == 0)
        name += 11;
    shape[0] = c->hidden;
    shape[1] = shape[2] = shape[3] = 1;
    *ndim = 1;
    if (strncmp(name, "embeddings.", 11) == 0) {
        int tok = strcmp(name + 11, "token_embedding.weight") == 0;
        if (!tok && strcmp(name + 11, "position_embedding.weight") != 0)
            return NULL;
        shape[0] = tok ? c->vocab : c->max_positions;
        shape[1] = c->hidden;
        *ndim = 2;
        return tok ? m->tok_emb : m->pos_emb;
    }
    if (strcmp(name, "final_layer_norm.weight") == 0)
        return m->lnf_w;
    if (strcmp(name, "final_layer_norm.bias") == 0)
        return m->lnf_b;
    if (strncmp(name, "encoder.layers.", 15) != 0)
        return NULL;
    l = strtol(name + 15, &end, 10);
    if (end == name + 15 || *end != '.' || l < 0 || l >= c->layers)
        return NULL;
    for (size_t i = 0; i < sizeof layer_specs / sizeof layer_specs[0]; i++) {
        const char *child = strchr(layer_specs[i].name + 15, '.') + 1; /* after "%d." */
        if (strcmp(end + 1, child) != 0)
            continue;
        shape[0] = dim_size(c, layer_specs[i].dim0);
        if (layer_specs[i].dim1 != D_NONE) {
            shape[1] = dim_size(c, layer_specs[i].dim1);
            *ndim = 2;
        }
        return *(const float *const *)((const char *)&m->layer[l] + layer_specs[i].field);
    }
    return NULL;
}

float *mood_clip_weight(mood_clip *m, const char *name, int *ndim, int64_t shape[4])
{
    int nd;
    int64_t sh[4];
    const float *w = find_weight(m, name, &nd, sh);
    if (w && ndim)
        *ndim = nd;
    if (w && shape)
        memcpy(shape, sh, sizeof sh);
    return (float *)w; /* the weights live in m->params, which m owns and may change */
}

size_t mood_clip_weight_count(const mood_clip *m)
{
    return m->n_weights;
}

const char *mood_clip_weight_name(const mood_clip *m, size_t i)
{
    return i < m->n_weights ? m->name[i] : NULL;
}

int mood_clip_set_side_paths(mood_clip *m, const mood_side_path *paths, size_t n)
{
    mood_side_path *copy = NULL;
    const float **pw = NULL;
    MOOD_ARG_NONNULL(m);
    if (n > 0)
        MOOD_ARG_NONNULL(paths);
    for (size_t i = 0; i < n; i++) {
        int nd;
        int64_t sh[4];
        const float *w = find_weight(m, paths[i].weight, &nd, sh);
        if (!w || nd != 2 || w == m->tok_emb || w == m->pos_emb)
            return mood_error_set(MOOD_ENOTFOUND, "clip: no Linear weight \"%s\" for a side path",
                                  paths[i].weight);
        if (paths[i].rank < 0 || !paths[i].up || (paths[i].rank > 0 && !paths[i].down))
            return mood_error_set(MOOD_EINVAL, "clip: side path on \"%s\" lacks its factors",
                                  paths[i].weight);
    }
    if (n && (!(copy = mood_malloc(n * sizeof *copy)) || !(pw = mood_malloc(n * sizeof *pw)))) {
        mood_free(copy);
        return mood_error_nomem();
    }
    for (size_t i = 0; i < n; i++) {
        int nd;
        int64_t sh[4];
        copy[i] = paths[i];
        pw[i] = find_weight(m, paths[i].weight, &nd, sh);
    }
    mood_free(m->paths);
    mood_free(m->path_w);
    m->paths = copy;
    m->path_w = pw;
    m->n_paths = n;
    m->side_gen++;
    return 0;
}
