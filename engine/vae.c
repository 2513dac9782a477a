/*
 * vae.c: the AutoencoderKL encoder and decoder on the CPU (mood/vae.h), written as sequences of
 * the layer functions of engine/cpu/ops.h.
 *
 * Mirrors diffusers (models/autoencoders/vae.py Encoder / Decoder, unets/unet_2d_blocks.py
 * DownEncoderBlock2D / UpDecoderBlock2D / UNetMidBlock2D, resnet.py ResnetBlock2D,
 * downsampling.py Downsample2D, upsampling.py Upsample2D, attention_processor.py AttnProcessor):
 *   ResnetBlock2D: h = conv1(silu(gn1(x))); h = conv2(silu(gn2(h))); out = shortcut(x) + h
 *                  (shortcut a 1x1 conv when the channels change; no time embedding; output scale
 *                  factor 1 in a VAE);
 *   Downsample2D:  F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2 conv with padding 0;
 *   Upsample2D:    nearest 2x, then a 3x3 conv with padding 1;
 *   mid attention: x + to_out(softmax(q k^T / sqrt(C)) v) with q, k, v = to_q/k/v(gn(x)) over
 *                  the H*W positions as tokens, one head of C channels (rescale factor 1);
 *   every GroupNorm has eps 1e-6; the encoder's output is [mean | logvar], logvar clamped to
 *   [-30, 20] (DiagonalGaussianDistribution).
 *
 * Weight names: loading walks the modules in diffusers naming and asks for each tensor under its
 * diffusers or LDM (CompVis, A1111 checkpoints) name, as diffusers' convert_ldm_vae_checkpoint
 * (loaders/single_file_utils.py) maps them:
 *   encoder.down_blocks.i.resnets.j      <- encoder.down.i.block.j     (conv_shortcut <-
 * nin_shortcut) encoder.down_blocks.i.downsamplers.0 <- encoder.down.i.downsample
 *   *.mid_block.resnets.0 / 1            <- *.mid.block_1 / block_2
 *   *.mid_block.attentions.0.group_norm / to_q / to_k / to_v / to_out.0
 *                                        <- *.mid.attn_1.norm / q / k / v / proj_out  (1x1 convs)
 *   *.conv_norm_out                      <- *.norm_out
 *   decoder.up_blocks.i.resnets.j        <- decoder.up.(n-1-i).block.j (the LDM list is reversed)
 *   decoder.up_blocks.i.upsamplers.0     <- decoder.up.(n-1-i).upsample
 *   conv_in, conv_out, quant_conv, post_quant_conv: the same.
 * Diffusers files written before 0.14 name the attention group_norm / query / key / value /
 * proj_attn; those are read too.
 *
 * Memory: one image at a time, in three feature-map buffers used in turn (a resnet block needs
 * its input, the normalised input and the first convolution's output); a sizing pass runs the
 * same orchestration without computing and records what each buffer, the convolution scratch,
 * the strips and the attention need, so the buffers are exactly as large as their largest use.
 * The upsampling and downsampling convolutions read a virtual input (upsampled and/or padded)
 * built strip by strip, so the 4x larger upsampled map is never held whole.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/args.h"
#include "common/common.h"
#include "engine/cpu/ops.h"
#include "engine/vae_pixel.h"
#include "engine/weights.h"
#include "mood/safetensors.h"
#include "mood/vae.h"

#define VAE_EPS 1e-6f /* every GroupNorm of the VAE (resnet_eps) */

/* ----- model -------------------------------------------------------------------------------- */

typedef struct vae_conv {
    const float *w, *b; /* w (out x in x k x k); w NULL: the layer is absent */
    int in_c, out_c, k;
} vae_conv;

typedef struct vae_norm {
    const float *w, *b;
} vae_norm;

typedef struct vae_resnet {
    vae_norm norm1, norm2;
    vae_conv conv1, conv2, shortcut; /* shortcut.w NULL when in_c == out_c */
} vae_resnet;

typedef struct vae_attn {
    vae_norm norm;
    const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b; /* Linear (C x C), (C) */
} vae_attn;

typedef struct vae_mid {
    vae_resnet res[2];
    vae_attn attn;
    int has_attn;
} vae_mid;

typedef struct vae_block {
    vae_resnet *res; /* n_res of the model's pool */
    int n_res;
    vae_conv sample; /* Downsample2D / Upsample2D conv; w NULL for the last block */
} vae_block;

/* The encoder or the decoder. */
typedef struct vae_coder {
    vae_conv conv_in, conv_out;
    vae_norm norm_out;
    vae_block block[MOOD_VAE_MAX_BLOCKS];
    vae_mid mid;
} vae_coder;

struct mood_vae {
    mood_vae_config cfg;
    float *params;        /* every weight, one allocation */
    vae_resnet *res_pool; /* the resnets of all blocks */
    vae_coder enc, dec;
    vae_conv quant, post_quant; /* w NULL when absent */
};

/* ----- loading: names and tensors ----------------------------------------------------------- */

typedef struct vae_loader {
    mood_st_file *f;
    const char *path;   /* the weights file, for messages */
    const char *prefix; /* "first_stage_model.", "vae." or "" */
    int ldm;            /* LDM names, else diffusers names */
    int old_attn;       /* diffusers < 0.14 attention names (query, key, value, proj_attn) */
    int counting;       /* first pass: only count the floats */
    uint64_t floats;    /* counted so far */
    float *next;        /* where the next tensor goes (second pass) */
} vae_loader;

static const char *pick(const vae_loader *ld, const char *diffusers, const char *ldm)
{
    return ld->ldm ? ldm : diffusers;
}

/* out = a + "." + b (module names are far shorter than the buffers). */
static void join(char *out, size_t size, const char *a, const char *b)
{
    if (snprintf(out, size, "%s.%s", a, b) >= (int)size)
        out[0] = '\0';
}

static const mood_st_tensor *find(const vae_loader *ld, const char *name)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", ld->prefix, name);
    return mood_st_find(ld->f, full);
}

/* Loads prefix + base + "." + leaf of shape `shape` (ndim dims) as float32 into *out; in the
 * counting pass only adds its size. */
static int ld_tensor(vae_loader *ld, const float **out, const char *base, const char *leaf,
                     int ndim, const int64_t *shape, int lin)
{
    char full[256];
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (ld->counting) {
        ld->floats += (uint64_t)n;
        return 0;
    }
    snprintf(full, sizeof full, "%s%s.%s", ld->prefix, base, leaf);
    char lb[300];
    snprintf(lb, sizeof lb, "\"%s\"", full);
    int err =
        mood__weight_to_f32(ld->next, mood_st_find(ld->f, full), ld->path, lb, shape, ndim, lin);
    if (err < 0)
        return err;
    *out = ld->next;
    ld->next += n;
    return 0;
}

static int ld_conv(vae_loader *ld, vae_conv *c, const char *base, int in, int out, int k)
{
    int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
    int err;
    c->in_c = in;
    c->out_c = out;
    c->k = k;
    if ((err = ld_tensor(ld, &c->w, base, "weight", 4, ws, 0)) < 0)
        return err;
    return ld_tensor(ld, &c->b, base, "bias", 1, bs, 0);
}

static int ld_norm(vae_loader *ld, vae_norm *n, const char *base, int c)
{
    int64_t s[1] = {c};
    int err;
    if ((err = ld_tensor(ld, &n->w, base, "weight", 1, s, 0)) < 0)
        return err;
    return ld_tensor(ld, &n->b, base, "bias", 1, s, 0);
}

/* A Linear (c x c) with bias: prefix + base + "." + sub. */
static int ld_linear(vae_loader *ld, const float **w, const float **b, const char *base,
                     const char *sub, int c)
{
    char name[192];
    int64_t ws[2] = {c, c}, bs[1] = {c};
    int err;
    join(name, sizeof name, base, sub);
    if ((err = ld_tensor(ld, w, name, "weight", 2, ws, 1)) < 0)
        return err;
    return ld_tensor(ld, b, name, "bias", 1, bs, 0);
}

static int ld_resnet(vae_loader *ld, vae_resnet *r, const char *base, int in, int out)
{
    char name[192];
    int err;
    join(name, sizeof name, base, "norm1");
    if ((err = ld_norm(ld, &r->norm1, name, in)) < 0)
        return err;
    join(name, sizeof name, base, "conv1");
    if ((err = ld_conv(ld, &r->conv1, name, in, out, 3)) < 0)
        return err;
    join(name, sizeof name, base, "norm2");
    if ((err = ld_norm(ld, &r->norm2, name, out)) < 0)
        return err;
    join(name, sizeof name, base, "conv2");
    if ((err = ld_conv(ld, &r->conv2, name, out, out, 3)) < 0)
        return err;
    memset(&r->shortcut, 0, sizeof r->shortcut);
    if (in == out)
        return 0;
    join(name, sizeof name, base, pick(ld, "conv_shortcut", "nin_shortcut"));
    return ld_conv(ld, &r->shortcut, name, in, out, 1);
}

static int ld_attn(vae_loader *ld, vae_attn *a, const char *base, int c)
{
    /* group norm, q, k, v, out: diffusers, diffusers < 0.14, LDM */
    static const char *const names[3][5] = {
        {"group_norm", "to_q", "to_k", "to_v", "to_out.0"},
        {"group_norm", "query", "key", "value", "proj_attn"},
        {"norm", "q", "k", "v", "proj_out"},
    };
    const char *const *nm = names[ld->ldm ? 2 : ld->old_attn ? 1 : 0];
    char name[192];
    int err;
    join(name, sizeof name, base, nm[0]);
    if ((err = ld_norm(ld, &a->norm, name, c)) < 0 ||
        (err = ld_linear(ld, &a->q_w, &a->q_b, base, nm[1], c)) < 0 ||
        (err = ld_linear(ld, &a->k_w, &a->k_b, base, nm[2], c)) < 0 ||
        (err = ld_linear(ld, &a->v_w, &a->v_b, base, nm[3], c)) < 0)
        return err;
    return ld_linear(ld, &a->o_w, &a->o_b, base, nm[4], c);
}

/* coder: "encoder" or "decoder". */
static int ld_mid(vae_loader *ld, vae_mid *m, const char *coder, int c, int attn)
{
    char name[192];
    int err;
    for (int k = 0; k < 2; k++) {
        if (ld->ldm)
            snprintf(name, sizeof name, "%s.mid.block_%d", coder, k + 1);
        else
            snprintf(name, sizeof name, "%s.mid_block.resnets.%d", coder, k);
        if ((err = ld_resnet(ld, &m->res[k], name, c, c)) < 0)
            return err;
    }
    m->has_attn = attn;
    if (!attn)
        return 0;
    join(name, sizeof name, coder, pick(ld, "mid_block.attentions.0", "mid.attn_1"));
    return ld_attn(ld, &m->attn, name, c);
}

static int ld_encoder(vae_loader *ld, vae_coder *e, const mood_vae_config *c)
{
    char name[192];
    int err, n = c->n_blocks, L = c->layers_per_block, ch = c->block_out_channels[0];
    if ((err = ld_conv(ld, &e->conv_in, "encoder.conv_in", c->in_channels, ch, 3)) < 0)
        return err;
    for (int i = 0; i < n; i++) {
        vae_block *b = &e->block[i];
        int out = c->block_out_channels[i];
        for (int j = 0; j < L; j++) {
            snprintf(name, sizeof name,
                     pick(ld, "encoder.down_blocks.%d.resnets.%d", "encoder.down.%d.block.%d"), i,
                     j);
            if ((err = ld_resnet(ld, &b->res[j], name, j ? out : ch, out)) < 0)
                return err;
        }
        ch = out;
        memset(&b->sample, 0, sizeof b->sample);
        if (i == n - 1)
            continue;
        snprintf(name, sizeof name,
                 pick(ld, "encoder.down_blocks.%d.downsamplers.0.conv",
                      "encoder.down.%d.downsample.conv"),
                 i);
        if ((err = ld_conv(ld, &b->sample, name, ch, ch, 3)) < 0)
            return err;
    }
    if ((err = ld_mid(ld, &e->mid, "encoder", ch, c->mid_block_add_attention)) < 0 ||
        (err = ld_norm(ld, &e->norm_out, pick(ld, "encoder.conv_norm_out", "encoder.norm_out"),
                       ch)) < 0)
        return err;
    return ld_conv(ld, &e->conv_out, "encoder.conv_out", ch, 2 * c->latent_channels, 3);
}

static int ld_decoder(vae_loader *ld, vae_coder *d, const mood_vae_config *c)
{
    char name[192];
    int err, n = c->n_blocks, L = c->layers_per_block, ch = c->block_out_channels[n - 1];
    if ((err = ld_conv(ld, &d->conv_in, "decoder.conv_in", c->latent_channels, ch, 3)) < 0 ||
        (err = ld_mid(ld, &d->mid, "decoder", ch, c->mid_block_add_attention)) < 0)
        return err;
    for (int i = 0; i < n; i++) {
        vae_block *b = &d->block[i];
        int out = c->block_out_channels[n - 1 - i], li = ld->ldm ? n - 1 - i : i;
        for (int j = 0; j <= L; j++) {
            snprintf(name, sizeof name,
                     pick(ld, "decoder.up_blocks.%d.resnets.%d", "decoder.up.%d.block.%d"), li, j);
            if ((err = ld_resnet(ld, &b->res[j], name, j ? out : ch, out)) < 0)
                return err;
        }
        ch = out;
        memset(&b->sample, 0, sizeof b->sample);
        if (i == n - 1)
            continue;
        snprintf(name, sizeof name,
                 pick(ld, "decoder.up_blocks.%d.upsamplers.0.conv", "decoder.up.%d.upsample.conv"),
                 li);
        if ((err = ld_conv(ld, &b->sample, name, ch, ch, 3)) < 0)
            return err;
    }
    if ((err = ld_norm(ld, &d->norm_out, pick(ld, "decoder.conv_norm_out", "decoder.norm_out"),
                       ch)) < 0)
        return err;
    return ld_conv(ld, &d->conv_out, "decoder.conv_out", ch, c->out_channels, 3);
}

/* Every weight, in the order of the model (both passes). */
static int ld_all(vae_loader *ld, mood_vae *m)
{
    const mood_vae_config *c = &m->cfg;
    int L2 = 2 * c->latent_channels, err;
    memset(&m->quant, 0, sizeof m->quant);
    memset(&m->post_quant, 0, sizeof m->post_quant);
    if ((err = ld_encoder(ld, &m->enc, c)) < 0 || (err = ld_decoder(ld, &m->dec, c)) < 0)
        return err;
    if (c->use_quant_conv && (err = ld_conv(ld, &m->quant, "quant_conv", L2, L2, 1)) < 0)
        return err;
    if (c->use_post_quant_conv)
        return ld_conv(ld, &m->post_quant, "post_quant_conv", L2 / 2, L2 / 2, 1);
    return 0;
}

/* ----- loading: configuration --------------------------------------------------------------- */

/* The key prefix and the naming of the file's VAE, found by its encoder's first resnet. */
static int detect_layout(vae_loader *ld)
{
    static const char *const prefixes[] = {"first_stage_model.", "vae.", ""};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        ld->prefix = prefixes[i];
        for (ld->ldm = 0; ld->ldm < 2; ld->ldm++) {
            if (!find(ld, pick(ld, "encoder.down_blocks.0.resnets.0.norm1.weight",
                               "encoder.down.0.block.0.norm1.weight")))
                continue;
            ld->old_attn = !ld->ldm && find(ld, "encoder.mid_block.attentions.0.query.weight") &&
                           !find(ld, "encoder.mid_block.attentions.0.to_q.weight");
            return 0;
        }
    }
    return mood_error_set(MOOD_EFORMAT,
                          "%s: no VAE found (no tensor \"encoder.down.0.block.0.norm1.weight\" or "
                          "\"encoder.down_blocks.0.resnets.0.norm1.weight\", with or without the "
                          "\"first_stage_model.\" or \"vae.\" prefix)",
                          ld->path);
}

/* Dimension `dim` of tensor `name` (ndim dims) into *out; MOOD_EFORMAT naming it otherwise. */
static int shape_dim(const vae_loader *ld, const char *name, int ndim, int dim, int *out)
{
    const mood_st_tensor *t = find(ld, name);
    if (!t)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s%s\" is missing", ld->path, ld->prefix,
                              name);
    if (t->ndim != ndim || t->shape[dim] < 1 || t->shape[dim] > 1 << 20)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s%s\" is not a %d-D weight", ld->path,
                              ld->prefix, name, ndim);
    *out = (int)t->shape[dim];
    return 0;
}

/* How many names fmt (two "%d": i, j) gives that exist, counting i (j = 0) or, with
 * count_j, j (i = 0). */
static int count_names(const vae_loader *ld, const char *fmt, int count_j)
{
    char name[192];
    for (int n = 0; n < 64; n++) {
        snprintf(name, sizeof name, fmt, count_j ? 0 : n, count_j ? n : 0);
        if (!find(ld, name))
            return n;
    }
    return 64;
}

/* The configuration from the shapes of a file without config.json. */
static int infer_config(mood_vae_config *c, const vae_loader *ld, const mood_vae_config *hint)
{
    const char *res = pick(ld, "encoder.down_blocks.%d.resnets.%d.conv1.weight",
                           "encoder.down.%d.block.%d.conv1.weight");
    char name[192];
    int err;
    memset(c, 0, sizeof *c);
    c->n_blocks = count_names(ld, res, 0);
    if (c->n_blocks > MOOD_VAE_MAX_BLOCKS)
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: a VAE of %d levels (at most %d supported)",
                              ld->path, c->n_blocks, MOOD_VAE_MAX_BLOCKS);
    for (int i = 0; i < (c->n_blocks ? c->n_blocks : 1); i++) {
        snprintf(name, sizeof name, res, i, 0);
        if ((err = shape_dim(ld, name, 4, 0, &c->block_out_channels[i])) < 0)
            return err;
    }
    c->layers_per_block = count_names(ld, res, 1);
    if ((err = shape_dim(ld, "encoder.conv_in.weight", 4, 1, &c->in_channels)) < 0 ||
        (err = shape_dim(ld, "decoder.conv_in.weight", 4, 1, &c->latent_channels)) < 0 ||
        (err = shape_dim(ld, "decoder.conv_out.weight", 4, 0, &c->out_channels)) < 0)
        return err;
    /* optional parts are there when any of their tensors is (a missing one is then an error) */
    c->use_quant_conv = find(ld, "quant_conv.weight") || find(ld, "quant_conv.bias");
    c->use_post_quant_conv = find(ld, "post_quant_conv.weight") || find(ld, "post_quant_conv.bias");
    c->mid_block_add_attention =
        find(ld, pick(ld, "encoder.mid_block.attentions.0.group_norm.weight",
                      "encoder.mid.attn_1.norm.weight")) != NULL;
    c->norm_num_groups = hint && hint->norm_num_groups > 0 ? hint->norm_num_groups : 32;
    c->scaling_factor = hint && hint->scaling_factor > 0 ? hint->scaling_factor : 0.18215f;
    c->sample_size = hint && hint->sample_size > 0 ? hint->sample_size : 512;
    c->force_upcast = 1;
    return 0;
}

/* ----- config.json -------------------------------------------------------------------------- */

typedef struct json_ctx {
    const cJSON *root;
    const char *path;
} json_ctx;

/* Integer `key` into *out (unchanged when absent or null); MOOD_EFORMAT when not an integer. */
static int json_int(const json_ctx *j, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsArray(v)) /* sample_size may be [h, w] */
        v = cJSON_GetArrayItem(v, 0);
    if (!cJSON_IsNumber(v) || fabs(v->valuedouble) > 1e9 ||
        v->valuedouble != (double)(int)v->valuedouble)
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is not an integer", j->path, key);
    *out = (int)v->valuedouble;
    return 0;
}

static int json_float(const json_ctx *j, const char *key, float *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v))
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is not a number", j->path, key);
    *out = (float)v->valuedouble;
    return 0;
}

static int json_bool(const json_ctx *j, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is not true or false", j->path, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Numbers of array `key` into out (*n of them, at most max); *n = 0 when absent or null. */
static int json_floats(const json_ctx *j, const char *key, float *out, int max, int *n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key), *e;
    *n = 0;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > max)
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is not a list of at most %d numbers",
                              j->path, key, max);
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsNumber(e))
            return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" holds a non-number", j->path, key);
        out[(*n)++] = (float)e->valuedouble;
    }
    return 0;
}

/* String `key` equal to `want` (or one of want, alt), when present. */
static int json_expect(const json_ctx *j, const char *key, const char *want, const char *alt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsString(v) &&
        (!strcmp(v->valuestring, want) || (alt && !strcmp(v->valuestring, alt))))
        return 0;
    return mood_error_set(MOOD_EUNSUPPORTED, "%s: \"%s\" is %s%s%s, only \"%s\" is supported",
                          j->path, key, cJSON_IsString(v) ? "\"" : "",
                          cJSON_IsString(v) ? v->valuestring : "not a string",
                          cJSON_IsString(v) ? "\"" : "", want);
}

/* Block type list `key`: absent, or n times `want`. */
static int json_block_types(const json_ctx *j, const char *key, const char *want, int n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key), *e;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is not a list of %d block types", j->path,
                              key, n);
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsString(e) || strcmp(e->valuestring, want))
            return mood_error_set(MOOD_EUNSUPPORTED, "%s: \"%s\" holds %s; only %s is supported",
                                  j->path, key, cJSON_IsString(e) ? e->valuestring : "a non-string",
                                  want);
    }
    return 0;
}

static int json_channels(const json_ctx *j, mood_vae_config *c)
{
    float ch[MOOD_VAE_MAX_BLOCKS + 1];
    int n, err = json_floats(j, "block_out_channels", ch, MOOD_VAE_MAX_BLOCKS + 1, &n);
    if (err < 0)
        return err;
    if (n > MOOD_VAE_MAX_BLOCKS)
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: a VAE of %d levels (at most %d supported)",
                              j->path, n, MOOD_VAE_MAX_BLOCKS);
    if (n == 0) { /* diffusers' default */
        ch[0] = 64;
        n = 1;
    }
    c->n_blocks = n;
    for (int i = 0; i < n; i++) {
        if (!(ch[i] >= 1 && ch[i] <= 1 << 16) || ch[i] != (float)(int)ch[i])
            return mood_error_set(MOOD_EFORMAT, "%s: block_out_channels[%d] is %g", j->path, i,
                                  (double)ch[i]);
        c->block_out_channels[i] = (int)ch[i];
    }
    return 0;
}

/* diffusers' AutoencoderKL defaults, then the values of config.json. */
static int parse_config(mood_vae_config *c, const cJSON *root, const char *path)
{
    json_ctx j = {root, path};
    int err, n_mean = 0, n_std = 0;
    *c = (mood_vae_config){.in_channels = 3,
                           .out_channels = 3,
                           .latent_channels = 4,
                           .layers_per_block = 1,
                           .norm_num_groups = 32,
                           .scaling_factor = 0.18215f,
                           .sample_size = 32,
                           .use_quant_conv = 1,
                           .use_post_quant_conv = 1,
                           .mid_block_add_attention = 1,
                           .force_upcast = 1};
    if (!cJSON_IsObject(root))
        return mood_error_set(MOOD_EFORMAT, "%s: not a JSON object", path);
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(root, "_class_name");
    if (cJSON_IsString(cls) && !strcmp(cls->valuestring, MOOD_PIXEL_SHUFFLE_CLASS))
        return mood__vae_pixel_config(c, root, path);
    if ((err = json_expect(&j, "_class_name", "AutoencoderKL", NULL)) < 0 ||
        (err = json_expect(&j, "act_fn", "silu", "swish")) < 0 ||
        (err = json_channels(&j, c)) < 0 ||
        (err = json_block_types(&j, "down_block_types", "DownEncoderBlock2D", c->n_blocks)) < 0 ||
        (err = json_block_types(&j, "up_block_types", "UpDecoderBlock2D", c->n_blocks)) < 0 ||
        (err = json_int(&j, "in_channels", &c->in_channels)) < 0 ||
        (err = json_int(&j, "out_channels", &c->out_channels)) < 0 ||
        (err = json_int(&j, "latent_channels", &c->latent_channels)) < 0 ||
        (err = json_int(&j, "layers_per_block", &c->layers_per_block)) < 0 ||
        (err = json_int(&j, "norm_num_groups", &c->norm_num_groups)) < 0 ||
        (err = json_int(&j, "sample_size", &c->sample_size)) < 0 ||
        (err = json_float(&j, "scaling_factor", &c->scaling_factor)) < 0 ||
        (err = json_float(&j, "shift_factor", &c->shift_factor)) < 0 ||
        (err = json_bool(&j, "use_quant_conv", &c->use_quant_conv)) < 0 ||
        (err = json_bool(&j, "use_post_quant_conv", &c->use_post_quant_conv)) < 0 ||
        (err = json_bool(&j, "mid_block_add_attention", &c->mid_block_add_attention)) < 0 ||
        (err = json_bool(&j, "force_upcast", &c->force_upcast)) < 0 ||
        (err = json_floats(&j, "latents_mean", c->latents_mean, MOOD_VAE_MAX_LATENTS, &n_mean)) <
            0 ||
        (err = json_floats(&j, "latents_std", c->latents_std, MOOD_VAE_MAX_LATENTS, &n_std)) < 0)
        return err;
    if (n_mean != n_std || (n_mean && n_mean != c->latent_channels))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: latents_mean and latents_std must both hold %d numbers", path,
                              c->latent_channels);
    c->has_latents_mean = n_mean > 0;
    return 0;
}

static int read_config(mood_vae_config *c, const char *path)
{
    mood_map map = {0};
    cJSON *root = NULL;
    int err = mood_map_file(&map, path);
    if (err < 0)
        return err;
    root = cJSON_ParseWithLength((const char *)map.data, (size_t)map.size);
    if (!root)
        err = mood_error_set(MOOD_EFORMAT, "%s: not valid JSON", path);
    else
        err = parse_config(c, root, path);
    cJSON_Delete(root);
    mood_unmap(&map);
    return err;
}

/* Sizes every layer can run with: positive, groups dividing every normalised width. */
static int check_config(const mood_vae_config *c, const char *path)
{
    int g = c->norm_num_groups;
    if (c->n_blocks < 1 || c->layers_per_block < 1 || c->in_channels < 1 || c->out_channels < 1 ||
        c->latent_channels < 1 || g < 1 || c->layers_per_block > 64)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: bad VAE sizes (%d levels, %d layers per block, %d/%d/%d "
                              "channels in/out/latent, %d groups)",
                              path, c->n_blocks, c->layers_per_block, c->in_channels,
                              c->out_channels, c->latent_channels, g);
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] > 1 << 16 ||
            c->block_out_channels[i] % g)
            return mood_error_set(MOOD_EFORMAT,
                                  "%s: %d channels (level %d) do not split into %d norm groups",
                                  path, c->block_out_channels[i], i, g);
    return 0;
}

/* ----- loading: files ----------------------------------------------------------------------- */

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* dir + "/" + name into out; MOOD_EINVAL when it does not fit. */
static int path_join(char *out, size_t size, const char *dir, const char *name)
{
    if (snprintf(out, size, "%s/%s", dir, name) >= (int)size)
        return mood_error_set(MOOD_EINVAL, "%s: path too long", dir);
    return 0;
}

/* A folder: its config.json (or that of its vae/ folder) into json, the folder it is in into dir.
 */
static int find_config(const char *path, char *json, char *dir, size_t size)
{
    int err;
    if ((err = path_join(dir, size, path, "vae")) < 0 ||
        (err = path_join(json, size, dir, "config.json")) < 0)
        return err;
    if (!is_file(json)) {
        snprintf(dir, size, "%s", path);
        if ((err = path_join(json, size, path, "config.json")) < 0)
            return err;
    }
    if (!is_file(json))
        return mood_error_set(MOOD_ENOTFOUND,
                              "%s: a folder without config.json or vae/config.json (a diffusers "
                              "VAE or pipeline folder, or a .safetensors file, is expected)",
                              path);
    return 0;
}

/* The weights file of the VAE folder dir into weights. */
static int find_weights(const char *dir, char *weights, size_t size)
{
    static const char *const names[] = {"diffusion_pytorch_model.safetensors",
                                        "diffusion_pytorch_model.fp16.safetensors"};
    int err;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if ((err = path_join(weights, size, dir, names[i])) < 0)
            return err;
        if (is_file(weights))
            return 0;
    }
    return mood_error_set(MOOD_ENOTFOUND, "%s: no %s or %s (safetensors weights are needed)", dir,
                          names[0], names[1]);
}

/* The layout of the weights file and, without config.json, the configuration from the shapes. */
static int load_config(mood_vae *m, vae_loader *ld, const char *json, const mood_vae_config *hint)
{
    int err;
    if ((err = detect_layout(ld)) < 0)
        return err;
    if (!json[0] && (err = infer_config(&m->cfg, ld, hint)) < 0)
        return err;
    return check_config(&m->cfg, json[0] ? json : ld->path);
}

static int load_weights(mood_vae *m, vae_loader *ld)
{
    const mood_vae_config *c = &m->cfg;
    int n = c->n_blocks, L = c->layers_per_block, err;
    uint64_t bytes;
    if (!(m->res_pool = mood_calloc((size_t)n * (2 * L + 1), sizeof *m->res_pool)))
        return mood_error_nomem();
    for (int i = 0; i < n; i++) {
        m->enc.block[i].res = m->res_pool + (size_t)i * L;
        m->enc.block[i].n_res = L;
        m->dec.block[i].res = m->res_pool + (size_t)n * L + (size_t)i * (L + 1);
        m->dec.block[i].n_res = L + 1;
    }
    ld->counting = 1;
    ld->floats = 0;
    if ((err = ld_all(ld, m)) < 0)
        return err;
    if (mood_mul_u64(&bytes, ld->floats, sizeof(float)) < 0 || bytes > SIZE_MAX ||
        !(m->params = mood_malloc((size_t)bytes)))
        return mood_error_nomem();
    ld->counting = 0;
    ld->next = m->params;
    return ld_all(ld, m);
}

int mood_vae_load_hint(mood_vae **out, const char *path, const mood_vae_config *hint)
{
    char json[4096] = "", dir[4096], weights[4096];
    vae_loader ld = {0};
    mood_vae *m;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    m = mood_calloc(1, sizeof *m);
    err = m ? 0 : mood_error_nomem();
    if (!err && is_dir(path)) {
        if ((err = find_config(path, json, dir, sizeof dir)) < 0 ||
            (err = read_config(&m->cfg, json)) < 0 || m->cfg.patch_size > 0)
            goto done; /* a pixel-space model has no weights */
        err = find_weights(dir, weights, sizeof weights);
    } else if (!err)
        err = snprintf(weights, sizeof weights, "%s", path) < 0 ? MOOD_EINVAL : 0;
    ld.path = weights;
    if (err < 0 || (err = mood_st_open(&ld.f, weights)) < 0 ||
        (err = load_config(m, &ld, json, hint)) < 0)
        goto done;
    err = load_weights(m, &ld);
done:
    mood_st_close(ld.f);
    if (err < 0)
        mood_vae_free(m);
    else
        *out = m;
    return err;
}

int mood_vae_load(mood_vae **out, const char *path)
{
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    return mood_vae_load_hint(out, path, NULL);
}

void mood_vae_free(mood_vae *m)
{
    if (!m)
        return;
    mood_free(m->params);
    mood_free(m->res_pool);
    mood_free(m);
}

const mood_vae_config *mood_vae_get_config(const mood_vae *m)
{
    return &m->cfg;
}

/* ----- forward: buffers --------------------------------------------------------------------- */

/* Output rows per strip of an upsampling / downsampling convolution (fewer when the strip's
 * input would exceed STRIP_FLOATS): large enough for efficient matrix products, small enough that
 * the virtual input of a strip stays a few MB. */
#define STRIP_ROWS   8
#define STRIP_FLOATS ((size_t)4 << 20)

/* The working memory of one call: three feature-map buffers used in turn, the convolution
 * scratch, the strip buffers and the attention's. In the sizing pass (dry) nothing is computed
 * and every use records the floats it needs. */
typedef struct vae_run {
    int dry;
    int groups;
    size_t need[3], need_scratch, need_gather, need_strip, need_attn;
    float *buf[3], *scratch, *gather, *strip, *attn;
} vae_run;

/* A feature map of one image: c x h x w floats in buffer `buf`. */
typedef struct vae_map {
    int buf, c, h, w;
} vae_map;

static size_t map_floats(vae_map x)
{
    return (size_t)x.c * x.h * x.w;
}

static void need(size_t *slot, size_t floats)
{
    if (floats > *slot)
        *slot = floats;
}

/* Buffer i as the home of map y (records its size in the sizing pass). */
static float *map_data(vae_run *r, vae_map y)
{
    need(&r->need[y.buf], map_floats(y));
    return r->dry ? NULL : r->buf[y.buf];
}

static int run_alloc(vae_run *r)
{
    size_t extra = r->need_scratch + r->need_gather + r->need_strip + r->need_attn;
    for (int i = 0; i < 3; i++)
        if (!(r->buf[i] = mood_malloc((r->need[i] ? r->need[i] : 1) * sizeof(float))))
            return mood_error_nomem();
    if (!(r->scratch = mood_malloc((extra ? extra : 1) * sizeof(float))))
        return mood_error_nomem();
    r->gather = r->scratch + r->need_scratch;
    r->strip = r->gather + r->need_gather;
    r->attn = r->strip + r->need_strip;
    return 0;
}

static void run_free(vae_run *r)
{
    for (int i = 0; i < 3; i++)
        mood_free(r->buf[i]);
    mood_free(r->scratch);
}

/* ----- forward: layers ---------------------------------------------------------------------- */

/* y (buffer ob) = conv(x) for a stride-1 conv with "same" padding (3x3 pad 1, 1x1). */
static vae_map conv_fwd(vae_run *r, const vae_conv *cv, vae_map x, int ob)
{
    mood_conv2d_dims d = {1, cv->in_c, x.h, x.w, cv->out_c, cv->k, 1, cv->k / 2};
    vae_map y = {ob, cv->out_c, x.h, x.w};
    float *out = map_data(r, y);
    need(&r->need_scratch, mood_op_conv2d_scratch(&d));
    if (!r->dry)
        mood_op_conv2d(out, r->buf[x.buf], cv->w, cv->b, &d, r->scratch);
    return y;
}

/* y (buffer ob, may be x's) = silu(group_norm(x)). */
static vae_map norm_silu(vae_run *r, const vae_norm *n, vae_map x, int ob)
{
    vae_map y = {ob, x.c, x.h, x.w};
    float *out = map_data(r, y);
    if (!r->dry) {
        size_t hw = (size_t)x.h * x.w;
        mood_op_group_norm(out, r->buf[x.buf], n->w, n->b, 1, x.c, hw, r->groups, VAE_EPS, NULL,
                           NULL);
        mood_op_silu(out, out, map_floats(y));
    }
    return y;
}

static void add_fwd(vae_run *r, vae_map y, vae_map x)
{
    if (!r->dry)
        mood_op_add_inplace(r->buf[y.buf], r->buf[x.buf], map_floats(y));
}

/* The virtual input of a strip convolution: x, nearest-upsampled 2x when `up`, then padded with
 * zeros pt rows above and pl columns left, to ph x pw in all. */
typedef struct strip_src {
    const float *x;
    int c, h, w, up, pt, pl, ph, pw;
} strip_src;

/* g (c x rows x pw) = rows [row0, row0 + rows) of the virtual input. */
static void gather_rows(float *g, const strip_src *s, int row0, int rows)
{
    int vh = s->up ? 2 * s->h : s->h, vw = s->up ? 2 * s->w : s->w, sh = s->up;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < s->c; c++) {
        const float *xc = s->x + (size_t)c * s->h * s->w;
        for (int i = 0; i < rows; i++) {
            float *o = g + ((size_t)c * rows + i) * s->pw;
            int y = row0 + i - s->pt;
            if (y < 0 || y >= vh) {
                memset(o, 0, (size_t)s->pw * sizeof *o);
                continue;
            }
            const float *src = xc + (size_t)(y >> sh) * s->w;
            for (int j = 0; j < s->pw; j++) {
                int xx = j - s->pl;
                o[j] = xx >= 0 && xx < vw ? src[xx >> sh] : 0.0f;
            }
        }
    }
}

/* out (oc x oh x ow) = conv(k x k, stride, no padding) over the virtual input of s, in strips of
 * output rows: each strip's input rows are gathered, convolved, and its rows copied into out. */
static void strip_conv(vae_run *r, float *out, const strip_src *s, const vae_conv *cv, int stride)
{
    int k = cv->k, oh = (s->ph - k) / stride + 1, ow = (s->pw - k) / stride + 1;
    size_t row_floats = (size_t)s->c * stride * s->pw;
    int n = (int)(STRIP_FLOATS / row_floats);
    n = n < 1 ? 1 : n > STRIP_ROWS ? STRIP_ROWS : n;
    n = n > oh ? oh : n;
    for (int r0 = 0; r0 < oh; r0 += n) {
        int rows = oh - r0 < n ? oh - r0 : n, in_rows = (rows - 1) * stride + k;
        mood_conv2d_dims d = {1, s->c, in_rows, s->pw, cv->out_c, k, stride, 0};
        need(&r->need_gather, (size_t)s->c * in_rows * s->pw);
        need(&r->need_strip, (size_t)cv->out_c * rows * ow);
        need(&r->need_scratch, mood_op_conv2d_scratch(&d));
        if (r->dry)
            continue;
        gather_rows(r->gather, s, r0 * stride, in_rows);
        mood_op_conv2d(r->strip, r->gather, cv->w, cv->b, &d, r->scratch);
        size_t len = (size_t)rows * ow;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < cv->out_c; c++)
            memcpy(out + ((size_t)c * oh + r0) * ow, r->strip + c * len, len * sizeof *out);
    }
}

/* Upsample2D: y (buffer ob) = conv3x3(nearest2x(x), padding 1). */
static vae_map upsample_fwd(vae_run *r, const vae_conv *cv, vae_map x, int ob)
{
    vae_map y = {ob, cv->out_c, 2 * x.h, 2 * x.w};
    float *out = map_data(r, y);
    strip_src s = {r->dry ? NULL : r->buf[x.buf], x.c, x.h, x.w, 1, 1, 1, 2 * x.h + 2, 2 * x.w + 2};
    strip_conv(r, out, &s, cv, 1);
    return y;
}

/* Downsample2D with padding 0: y (buffer ob) = conv3x3 stride 2 of x zero-padded by one row
 * below and one column right (F.pad(x, (0, 1, 0, 1))). */
static vae_map downsample_fwd(vae_run *r, const vae_conv *cv, vae_map x, int ob)
{
    vae_map y = {ob, cv->out_c, (x.h - 2) / 2 + 1, (x.w - 2) / 2 + 1};
    float *out = map_data(r, y);
    strip_src s = {r->dry ? NULL : r->buf[x.buf], x.c, x.h, x.w, 0, 0, 0, x.h + 1, x.w + 1};
    strip_conv(r, out, &s, cv, 2);
    return y;
}

/* ResnetBlock2D. With a shortcut conv it runs first, so the input's buffer can take the
 * normalised input and then the output: only the input ever needs the wider map. */
static vae_map resnet_fwd(vae_run *r, const vae_resnet *rs, vae_map x)
{
    int t = (x.buf + 1) % 3, u = (x.buf + 2) % 3;
    if (rs->shortcut.w) {
        vae_map s = conv_fwd(r, &rs->shortcut, x, u);
        vae_map n = norm_silu(r, &rs->norm1, x, x.buf);
        vae_map h = norm_silu(r, &rs->norm2, conv_fwd(r, &rs->conv1, n, t), t);
        vae_map y = conv_fwd(r, &rs->conv2, h, x.buf);
        add_fwd(r, y, s);
        return y;
    }
    vae_map n = norm_silu(r, &rs->norm1, x, t);
    vae_map h = norm_silu(r, &rs->norm2, conv_fwd(r, &rs->conv1, n, u), u);
    vae_map y = conv_fwd(r, &rs->conv2, h, t);
    add_fwd(r, y, x);
    return y;
}

/* The mid block's attention, in place on x: x += to_out(attention(to_q/k/v(gn(x)))) with the
 * h*w positions as tokens of C channels, one head. */
static void attn_fwd(vae_run *r, const vae_attn *a, vae_map x)
{
    int C = x.c, T = x.h * x.w;
    size_t n = (size_t)C * T;
    need(&r->need_attn, 5 * n + mood_op_attention_scratch(T, T));
    if (r->dry)
        return;
    float *xs = r->buf[x.buf], *gn = r->attn, *tok = gn + n, *q = tok + n, *k = q + n, *v = k + n;
    mood_op_group_norm(gn, xs, a->norm.w, a->norm.b, 1, C, (size_t)T, r->groups, VAE_EPS, NULL,
                       NULL);
    mood_op_nchw_to_nhwc(tok, gn, 1, C, (size_t)T);
    mood_op_linear(q, tok, a->q_w, a->q_b, (size_t)T, C, C);
    mood_op_linear(k, tok, a->k_w, a->k_b, (size_t)T, C, C);
    mood_op_linear(v, tok, a->v_w, a->v_b, (size_t)T, C, C);
    mood_op_attention(gn, q, k, v, 1, 1, T, T, C, 0, 0.0f, v + n);
    mood_op_linear(tok, gn, a->o_w, a->o_b, (size_t)T, C, C);
    mood_op_nhwc_to_nchw(gn, tok, 1, C, (size_t)T);
    mood_op_add_inplace(xs, gn, n);
}

static vae_map mid_fwd(vae_run *r, const vae_mid *m, vae_map x)
{
    x = resnet_fwd(r, &m->res[0], x);
    if (m->has_attn)
        attn_fwd(r, &m->attn, x);
    return resnet_fwd(r, &m->res[1], x);
}

static int next_buf(vae_map x)
{
    return (x.buf + 1) % 3;
}

/* Decoder (after post_quant_conv): z -> image. */
static vae_map decoder_fwd(vae_run *r, const mood_vae *m, vae_map x)
{
    const vae_coder *d = &m->dec;
    if (m->post_quant.w)
        x = conv_fwd(r, &m->post_quant, x, next_buf(x));
    x = conv_fwd(r, &d->conv_in, x, next_buf(x));
    x = mid_fwd(r, &d->mid, x);
    for (int i = 0; i < m->cfg.n_blocks; i++) {
        const vae_block *b = &d->block[i];
        for (int j = 0; j < b->n_res; j++)
            x = resnet_fwd(r, &b->res[j], x);
        if (b->sample.w)
            x = upsample_fwd(r, &b->sample, x, next_buf(x));
    }
    x = norm_silu(r, &d->norm_out, x, x.buf);
    return conv_fwd(r, &d->conv_out, x, next_buf(x));
}

/* Encoder and quant_conv: image -> [mean | logvar] (2 x latent_channels maps). */
static vae_map encoder_fwd(vae_run *r, const mood_vae *m, vae_map x)
{
    const vae_coder *e = &m->enc;
    x = conv_fwd(r, &e->conv_in, x, next_buf(x));
    for (int i = 0; i < m->cfg.n_blocks; i++) {
        const vae_block *b = &e->block[i];
        for (int j = 0; j < b->n_res; j++)
            x = resnet_fwd(r, &b->res[j], x);
        if (b->sample.w)
            x = downsample_fwd(r, &b->sample, x, next_buf(x));
    }
    x = mid_fwd(r, &e->mid, x);
    x = norm_silu(r, &e->norm_out, x, x.buf);
    x = conv_fwd(r, &e->conv_out, x, next_buf(x));
    if (m->quant.w)
        x = conv_fwd(r, &m->quant, x, next_buf(x));
    return x;
}

/* ----- forward: entry points ---------------------------------------------------------------- */

typedef vae_map (*coder_fn)(vae_run *r, const mood_vae *m, vae_map x);

/* Runs fn image by image: in (B x in.c x in.h x in.w) -> out (B x <output map>); sizes the
 * buffers with a dry run first. */
static int run_images(const mood_vae *m, coder_fn fn, float *out, const float *in, int B,
                      vae_map in_map)
{
    vae_run r = {0};
    int err;
    r.dry = 1;
    r.groups = m->cfg.norm_num_groups;
    map_data(&r, in_map);
    vae_map y = fn(&r, m, in_map);
    if ((err = run_alloc(&r)) < 0)
        goto done;
    r.dry = 0;
    size_t n_in = map_floats(in_map), n_out = map_floats(y);
    for (int b = 0; b < B; b++) {
        memcpy(r.buf[in_map.buf], in + (size_t)b * n_in, n_in * sizeof *in);
        y = fn(&r, m, in_map);
        memcpy(out + (size_t)b * n_out, r.buf[y.buf], n_out * sizeof *out);
    }
done:
    run_free(&r);
    return err;
}

/* Sizes one image of c x h x w (and its largest map, at most 4x wider) can be computed with. */
static int check_size(const char *what, int B, int h, int w)
{
    if (B < 1 || h < 1 || w < 1 || h > 1 << 15 || w > 1 << 15 || (int64_t)h * w > 1 << 26)
        return mood_error_set(MOOD_EINVAL, "vae %s: %d images of %d x %d", what, B, h, w);
    return 0;
}

int mood_vae_scale(const mood_vae *m)
{
    return m->cfg.patch_size > 0 ? m->cfg.patch_size : 1 << (m->cfg.n_blocks - 1);
}

int mood_vae_decode(const mood_vae *m, float *img_out, const float *z, int B, int h, int w)
{
    const mood_vae_config *c;
    int s, err;
    MOOD_ARG_NONNULL(m);
    MOOD_ARG_NONNULL(img_out);
    MOOD_ARG_NONNULL(z);
    c = &m->cfg;
    s = mood_vae_scale(m);
    if ((err = check_size("decode", B, h, w)) < 0 ||
        (err = check_size("decode output", B, h * s, w * s)) < 0)
        return err;
    if (c->patch_size > 0) {
        mood__pixel_shuffle(img_out, z, B, c->out_channels, h, w, s);
        return 0;
    }
    vae_map z_map = {0, c->latent_channels, h, w};
    return run_images(m, decoder_fwd, img_out, z, B, z_map);
}

int mood_vae_encode(const mood_vae *m, float *mean_out, float *logvar_out, const float *img, int B,
                    int H, int W)
{
    const mood_vae_config *c;
    int s, L, err;
    MOOD_ARG_NONNULL(m);
    MOOD_ARG_NONNULL(mean_out);
    MOOD_ARG_NONNULL(img);
    c = &m->cfg;
    s = mood_vae_scale(m), L = c->latent_channels;
    if ((err = check_size("encode", B, H, W)) < 0)
        return err;
    if (H % s || W % s)
        return mood_error_set(MOOD_EINVAL, "vae encode: %d x %d is not a multiple of %d", H, W, s);
    size_t n = (size_t)L * (H / s) * (W / s);
    if (c->patch_size > 0) {
        mood__pixel_unshuffle(mean_out, img, B, c->in_channels, H, W, s);
        for (size_t i = 0; logvar_out && i < (size_t)B * n; i++)
            logvar_out[i] = -30.0f;
        return 0;
    }
    float *moments = mood_malloc((size_t)B * 2 * n * sizeof *moments);
    if (!moments)
        return mood_error_nomem();
    vae_map x = {0, c->in_channels, H, W};
    if ((err = run_images(m, encoder_fwd, moments, img, B, x)) == 0) {
        for (int b = 0; b < B; b++) {
            const float *mo = moments + (size_t)b * 2 * n;
            memcpy(mean_out + (size_t)b * n, mo, n * sizeof *mo);
            for (size_t i = 0; logvar_out && i < n; i++)
                logvar_out[(size_t)b * n + i] = fminf(fmaxf(mo[n + i], -30.0f), 20.0f);
        }
    }
    mood_free(moments);
    return err;
}
