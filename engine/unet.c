/*
 * unet.c: the UNet2DConditionModel's structure (mood/unet.h): the table of named parameters and
 * the layer descriptors built from a config (mood__unet_build), the weight API and the runtime
 * side paths. The passes over it are in unet_forward.c and unet_backward.c; loading in
 * unet_load.c.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "engine/unet_internal.h"

/* ----- structure ---------------------------------------------------------------------------- */

typedef struct builder {
    mood_unet *m;
    int err;
} builder;

/* Appends parameter `name` of the given shape (dims beyond ndim are 0); returns its index. */
static int declare(builder *bd, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2,
                   int64_t s3)
{
    mood_unet *m = bd->m;
    unet_param *p;
    if (bd->err)
        return -1;
    if (mood_array_reserve(&m->params, &m->cap_params, m->n_params, sizeof *m->params, 256) < 0) {
        bd->err = mood_error_nomem();
        return -1;
    }
    p = &m->params[m->n_params];
    memset(p, 0, sizeof *p);
    if (!(p->name = mood_strdup(name))) {
        bd->err = mood_error_nomem();
        return -1;
    }
    p->ndim = ndim;
    p->shape[0] = s0, p->shape[1] = s1, p->shape[2] = s2, p->shape[3] = s3;
    p->numel = 1;
    for (int i = 0; i < ndim; i++)
        p->numel *= (size_t)p->shape[i];
    return (int)m->n_params++;
}

/* "pre.child.suffix" into out (child may be NULL); names are far shorter than the buffers. */
static void pname(char *out, size_t size, const char *pre, const char *child, const char *suffix)
{
    int n = snprintf(out, size, "%s%s%s.%s", pre, child ? "." : "", child ? child : "", suffix);
    if (n < 0)
        out[0] = 0;
}

/* Linear (in -> out); conv1x1: stored as a (out, in, 1, 1) Conv2d weight. */
static void decl_lin(builder *bd, u_lin *l, const char *pre, const char *child, int in, int out,
                     int bias, int conv1x1)
{
    char n[256];
    pname(n, sizeof n, pre, child, "weight");
    l->w = conv1x1 ? declare(bd, n, 4, out, in, 1, 1) : declare(bd, n, 2, out, in, 0, 0);
    l->b = -1;
    if (bias) {
        pname(n, sizeof n, pre, child, "bias");
        l->b = declare(bd, n, 1, out, 0, 0, 0);
    }
    l->in = in;
    l->out = out;
}

static void decl_conv(builder *bd, u_conv *c, const char *pre, const char *child, int in, int out,
                      int k, int stride, int pad)
{
    char n[256];
    pname(n, sizeof n, pre, child, "weight");
    c->w = declare(bd, n, 4, out, in, k, k);
    pname(n, sizeof n, pre, child, "bias");
    c->b = declare(bd, n, 1, out, 0, 0, 0);
    c->in = in, c->out = out, c->k = k, c->stride = stride, c->pad = pad;
}

/* GroupNorm (groups > 0) or LayerNorm (groups 0) over C channels, affine. */
static void decl_norm(builder *bd, u_norm *nm, const char *pre, const char *child, int C,
                      int groups, float eps)
{
    char n[256];
    if (!bd->err && groups > 0 && C % groups) {
        pname(n, sizeof n, pre, child, "weight");
        bd->err = mood_error_set(MOOD_EINVAL, "unet: %s: %d channels do not split into %d groups",
                                 n, C, groups);
        return;
    }
    pname(n, sizeof n, pre, child, "weight");
    nm->w = declare(bd, n, 1, C, 0, 0, 0);
    pname(n, sizeof n, pre, child, "bias");
    nm->b = declare(bd, n, 1, C, 0, 0, 0);
    nm->C = C, nm->groups = groups, nm->eps = eps;
}

static void decl_resnet(builder *bd, u_resnet *r, const char *pre, int in, int out, float scale)
{
    const mood_unet_config *c = &bd->m->cfg;
    decl_norm(bd, &r->norm1, pre, "norm1", in, c->norm_num_groups, c->norm_eps);
    decl_conv(bd, &r->conv1, pre, "conv1", in, out, 3, 1, 1);
    decl_lin(bd, &r->temb, pre, "time_emb_proj", c->time_embed_dim, out, 1, 0);
    decl_norm(bd, &r->norm2, pre, "norm2", out, c->norm_num_groups, c->norm_eps);
    decl_conv(bd, &r->conv2, pre, "conv2", out, out, 3, 1, 1);
    r->shortcut.w = -1;
    if (in != out)
        decl_conv(bd, &r->shortcut, pre, "conv_shortcut", in, out, 1, 1, 0);
    r->in = in, r->out = out, r->out_scale = scale;
}

static void decl_tblock(builder *bd, u_tblock *t, const char *pre, int dim, int ctx)
{
    decl_norm(bd, &t->norm1, pre, "norm1", dim, 0, 1e-5f);
    decl_lin(bd, &t->q1, pre, "attn1.to_q", dim, dim, 0, 0);
    decl_lin(bd, &t->k1, pre, "attn1.to_k", dim, dim, 0, 0);
    decl_lin(bd, &t->v1, pre, "attn1.to_v", dim, dim, 0, 0);
    decl_lin(bd, &t->o1, pre, "attn1.to_out.0", dim, dim, 1, 0);
    decl_norm(bd, &t->norm2, pre, "norm2", dim, 0, 1e-5f);
    decl_lin(bd, &t->q2, pre, "attn2.to_q", dim, dim, 0, 0);
    decl_lin(bd, &t->k2, pre, "attn2.to_k", ctx, dim, 0, 0);
    decl_lin(bd, &t->v2, pre, "attn2.to_v", ctx, dim, 0, 0);
    decl_lin(bd, &t->o2, pre, "attn2.to_out.0", dim, dim, 1, 0);
    decl_norm(bd, &t->norm3, pre, "norm3", dim, 0, 1e-5f);
    decl_lin(bd, &t->ff1, pre, "ff.net.0.proj", dim, 8 * dim, 1, 0);
    decl_lin(bd, &t->ff2, pre, "ff.net.2", 4 * dim, dim, 1, 0);
}

/* Transformer2DModel(heads, C / heads, in_channels C, num_layers depth). */
static void decl_transformer(builder *bd, u_transformer *t, const char *pre, int C, int heads,
                             int depth)
{
    const mood_unet_config *c = &bd->m->cfg;
    int conv = !c->use_linear_projection;
    char p[256];
    if (!bd->err && (heads < 1 || heads > C)) {
        bd->err = mood_error_set(MOOD_EINVAL, "unet: %s: %d attention heads for %d channels", pre,
                                 heads, C);
        return;
    }
    t->C = C, t->heads = heads, t->depth = depth;
    t->inner = C / heads * heads;
    decl_norm(bd, &t->norm, pre, "norm", C, c->norm_num_groups, 1e-6f);
    decl_lin(bd, &t->proj_in, pre, "proj_in", C, t->inner, 1, conv);
    if (depth > 0 && !bd->err && !(t->blocks = mood_calloc((size_t)depth, sizeof *t->blocks)))
        bd->err = mood_error_nomem();
    for (int d = 0; d < depth && !bd->err; d++) {
        snprintf(p, sizeof p, "%s.transformer_blocks.%d", pre, d);
        decl_tblock(bd, &t->blocks[d], p, t->inner, c->cross_attention_dim);
    }
    decl_lin(bd, &t->proj_out, pre, "proj_out", t->inner, C, 1, conv);
}

static void decl_down(builder *bd, int i)
{
    const mood_unet_config *c = &bd->m->cfg;
    u_block *bl = &bd->m->down[i];
    int out = c->block_out_channels[i], in = i ? c->block_out_channels[i - 1] : out;
    char p[128];
    bl->n = c->layers_per_block[i];
    bl->has_attn = c->down_block_types[i] == MOOD_UNET_CROSS_ATTN_DOWN_BLOCK_2D;
    for (int j = 0; j < bl->n; j++) {
        snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
        /* diffusers' get_down_block gives resnet_out_scale_factor to none of the block types mood
         * builds (DownBlock2D, CrossAttnDownBlock2D): their resnets always divide by 1 */
        decl_resnet(bd, &bl->res[j], p, j ? out : in, out, 1.0f);
        if (bl->has_attn) {
            snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
            decl_transformer(bd, &bl->attn[j], p, out, c->num_attention_heads[i],
                             c->transformer_layers_per_block[i]);
        }
    }
    bl->sampler.w = -1;
    if (i < c->n_blocks - 1) {
        snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0", i);
        decl_conv(bd, &bl->sampler, p, "conv", out, out, 3, 2, c->downsample_padding);
    }
}

static void decl_mid(builder *bd)
{
    const mood_unet_config *c = &bd->m->cfg;
    u_block *bl = &bd->m->mid;
    int n = c->n_blocks, C = c->block_out_channels[n - 1];
    bl->n = c->mid_block ? 2 : 0;
    bl->has_attn = c->mid_block;
    bl->sampler.w = -1;
    if (!c->mid_block)
        return;
    decl_resnet(bd, &bl->res[0], "mid_block.resnets.0", C, C, c->mid_block_scale_factor);
    decl_transformer(bd, &bl->attn[0], "mid_block.attentions.0", C, c->num_attention_heads[n - 1],
                     c->mid_transformer_layers);
    decl_resnet(bd, &bl->res[1], "mid_block.resnets.1", C, C, c->mid_block_scale_factor);
}

/* Up block i works at the level of down block n-1-i; its resnet j takes [h | skip]: h has the
 * previous block's width (j = 0) or its own, the skip its own width except the last one, which
 * comes from the level below (diffusers' prev_output_channel / res_skip_channels). */
static void decl_up(builder *bd, int i)
{
    const mood_unet_config *c = &bd->m->cfg;
    u_block *bl = &bd->m->up[i];
    int n = c->n_blocks, l = n - 1 - i;
    int out = c->block_out_channels[l];
    int prev = c->block_out_channels[i ? l + 1 : l];
    int skip_last = c->block_out_channels[l ? l - 1 : 0];
    char p[128];
    bl->n = c->layers_per_block[l] + 1;
    bl->has_attn = c->up_block_types[i] == MOOD_UNET_CROSS_ATTN_UP_BLOCK_2D;
    for (int j = 0; j < bl->n; j++) {
        int h = j ? out : prev, s = j == bl->n - 1 ? skip_last : out;
        snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
        decl_resnet(bd, &bl->res[j], p, h + s, out, 1.0f); /* as in the down blocks */
        if (bl->has_attn) {
            snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
            decl_transformer(bd, &bl->attn[j], p, out, c->num_attention_heads[l],
                             c->up_transformer_layers[i]);
        }
    }
    bl->sampler.w = -1;
    if (i < n - 1) {
        snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0", i);
        decl_conv(bd, &bl->sampler, p, "conv", out, out, 3, 1, 1);
    }
}

static int check_config(const mood_unet_config *c)
{
    int n = c->n_blocks;
    if (n < 1 || n > MOOD_UNET_MAX_BLOCKS)
        return mood_error_set(MOOD_EINVAL, "unet: %d blocks (1 to %d supported)", n,
                              MOOD_UNET_MAX_BLOCKS);
    if (c->in_channels < 1 || c->out_channels < 1 || c->time_embed_dim < 1 ||
        c->norm_num_groups < 1 || c->cross_attention_dim < 1)
        return mood_error_set(MOOD_EINVAL, "unet: channel counts, time_embed_dim, norm groups "
                                           "and cross_attention_dim must be positive");
    for (int i = 0; i < n; i++) {
        if (c->block_out_channels[i] < 1 || c->layers_per_block[i] < 1 ||
            c->layers_per_block[i] >= UNET_MAX_LAYERS || c->transformer_layers_per_block[i] < 0 ||
            c->up_transformer_layers[i] < 0)
            return mood_error_set(MOOD_EINVAL,
                                  "unet: block %d: %d channels, %d layers, %d transformer layers "
                                  "(layers 1 to %d supported)",
                                  i, c->block_out_channels[i], c->layers_per_block[i],
                                  c->transformer_layers_per_block[i], UNET_MAX_LAYERS - 1);
    }
    if (c->conv_in_kernel < 1 || c->conv_in_kernel % 2 == 0 || c->conv_out_kernel < 1 ||
        c->conv_out_kernel % 2 == 0)
        return mood_error_set(MOOD_EINVAL, "unet: conv_in/conv_out kernels %d/%d (odd sizes only)",
                              c->conv_in_kernel, c->conv_out_kernel);
    if (c->addition_embed_text_time &&
        (c->addition_time_embed_dim < 1 ||
         c->projection_class_embeddings_input_dim <= 6 * c->addition_time_embed_dim))
        return mood_error_set(MOOD_EINVAL,
                              "unet: text_time embedding input %d is not text_embeds + 6 x %d",
                              c->projection_class_embeddings_input_dim, c->addition_time_embed_dim);
    return 0;
}

static int cmp_param_name(const void *a, const void *b)
{
    return strcmp((*(unet_param *const *)a)->name, (*(unet_param *const *)b)->name);
}

/* One allocation for all parameters, and the by-name index. */
static int place_params(mood_unet *m)
{
    uint64_t total = 0, bytes;
    for (size_t i = 0; i < m->n_params; i++) {
        m->params[i].offset = (size_t)total;
        total += m->params[i].numel;
    }
    if (mood_mul_u64(&bytes, total ? total : 1, sizeof(float)) < 0 || bytes > SIZE_MAX ||
        !(m->data = mood_malloc((size_t)bytes)) ||
        !(m->by_name = mood_malloc(m->n_params * sizeof *m->by_name)))
        return mood_error_nomem();
    for (size_t i = 0; i < m->n_params; i++) {
        m->params[i].data = m->data + m->params[i].offset;
        m->by_name[i] = &m->params[i];
    }
    qsort(m->by_name, m->n_params, sizeof *m->by_name, cmp_param_name);
    return 0;
}

int mood__unet_build(mood_unet *m)
{
    const mood_unet_config *c = &m->cfg;
    builder bd = {m, 0};
    int C0 = c->block_out_channels[0], T = c->time_embed_dim, err;
    if ((err = check_config(c)) < 0)
        return err;
    decl_conv(&bd, &m->conv_in, "conv_in", NULL, c->in_channels, C0, c->conv_in_kernel, 1,
              (c->conv_in_kernel - 1) / 2);
    decl_lin(&bd, &m->time1, "time_embedding", "linear_1", C0, T, 1, 0);
    decl_lin(&bd, &m->time2, "time_embedding", "linear_2", T, T, 1, 0);
    if (c->addition_embed_text_time) {
        decl_lin(&bd, &m->add1, "add_embedding", "linear_1",
                 c->projection_class_embeddings_input_dim, T, 1, 0);
        decl_lin(&bd, &m->add2, "add_embedding", "linear_2", T, T, 1, 0);
    }
    for (int i = 0; i < c->n_blocks; i++)
        decl_down(&bd, i);
    decl_mid(&bd);
    for (int i = 0; i < c->n_blocks; i++)
        decl_up(&bd, i);
    decl_norm(&bd, &m->norm_out, "conv_norm_out", NULL, C0, c->norm_num_groups, c->norm_eps);
    decl_conv(&bd, &m->conv_out, "conv_out", NULL, C0, c->out_channels, c->conv_out_kernel, 1,
              (c->conv_out_kernel - 1) / 2);
    if (bd.err)
        return bd.err;
    return place_params(m);
}

long mood__unet_find(const mood_unet *m, const char *name)
{
    size_t lo = 0, hi = m->n_params;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(m->by_name[mid]->name, name);
        if (c == 0)
            return (long)(m->by_name[mid] - m->params);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static void free_block(u_block *bl)
{
    for (int j = 0; j < bl->n; j++)
        mood_free(bl->attn[j].blocks);
}

void mood_unet_free(mood_unet *m)
{
    if (!m)
        return;
    for (int i = 0; i < MOOD_UNET_MAX_BLOCKS; i++) {
        free_block(&m->down[i]);
        free_block(&m->up[i]);
    }
    free_block(&m->mid);
    for (size_t i = 0; i < m->n_params; i++)
        mood_free(m->params[i].name);
    mood_free(m->params);
    mood_free(m->by_name);
    mood_free(m->data);
    mood_free(m->sides);
    mood_free(m->side_src);
    mood_free(m);
}

/* ----- weights and side paths --------------------------------------------------------------- */

const mood_unet_config *mood_unet_get_config(const mood_unet *m)
{
    return &m->cfg;
}

float *mood_unet_weight(mood_unet *m, const char *name, int *ndim, int64_t shape[4])
{
    long i = name ? mood__unet_find(m, name) : -1;
    if (i < 0)
        return NULL;
    if (ndim)
        *ndim = m->params[i].ndim;
    if (shape)
        memcpy(shape, m->params[i].shape, sizeof m->params[i].shape);
    return m->params[i].data;
}

size_t mood_unet_weight_count(const mood_unet *m)
{
    return m->n_params;
}

const char *mood_unet_weight_name(const mood_unet *m, size_t i)
{
    return i < m->n_params ? m->params[i].name : NULL;
}

size_t mood_unet_weight_numel(const mood_unet *m, size_t i)
{
    return i < m->n_params ? m->params[i].numel : 0;
}

/* The parameter index of each path, checked: a Linear or Conv2d weight, usable factors. */
static int resolve_sides(const mood_unet *m, const mood_side_path *paths, size_t n, long *idx)
{
    for (size_t i = 0; i < n; i++) {
        const mood_side_path *p = &paths[i];
        long k = p->weight ? mood__unet_find(m, p->weight) : -1;
        if (k < 0 || m->params[k].ndim < 2)
            return mood_error_set(MOOD_ENOTFOUND,
                                  "unet: side path %zu: \"%s\" is no Linear or Conv2d weight", i,
                                  p->weight ? p->weight : "(null)");
        if (p->rank < 0)
            return mood_error_set(MOOD_EINVAL, "unet: side path %zu on \"%s\": rank %d", i,
                                  p->weight, p->rank);
        if (!p->up || (p->rank > 0 && !p->down))
            return mood_error_set(MOOD_EINVAL, "unet: side path %zu on \"%s\": no %s factor", i,
                                  p->weight, p->up ? "down" : "up");
        idx[i] = k;
    }
    return 0;
}

int mood_unet_set_side_paths(mood_unet *m, const mood_side_path *paths, size_t n)
{
    long *idx = NULL;
    mood_side_path *sides = NULL;
    size_t *src = NULL;
    int err = 0;
    MOOD_ARG_NONNULL(m);
    if (n > 0)
        MOOD_ARG_NONNULL(paths);
    if (n && (!(idx = mood_malloc(n * sizeof *idx)) || !(sides = mood_malloc(n * sizeof *sides)) ||
              !(src = mood_malloc(n * sizeof *src)))) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = resolve_sides(m, paths, n, idx)) < 0)
        goto done;
    for (size_t i = 0; i < m->n_params; i++)
        m->params[i].side_n = 0;
    for (size_t i = 0; i < n; i++)
        m->params[idx[i]].side_n++;
    size_t next = 0; /* group by parameter, keeping the given order within one */
    for (size_t i = 0; i < m->n_params; i++) {
        m->params[i].side_first = next;
        next += (size_t)m->params[i].side_n;
        m->params[i].side_n = 0;
    }
    for (size_t i = 0; i < n; i++) {
        unet_param *p = &m->params[idx[i]];
        size_t k = p->side_first + (size_t)p->side_n++;
        sides[k] = paths[i];
        sides[k].weight = p->name;
        src[k] = i;
    }
    mood_free(m->sides);
    mood_free(m->side_src);
    m->sides = sides;
    m->side_src = src;
    m->n_sides = n;
    m->side_gen++;
    sides = NULL;
    src = NULL;
done:
    mood_free(idx);
    mood_free(sides);
    mood_free(src);
    return err;
}
