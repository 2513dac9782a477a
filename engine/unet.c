/*
 * unet.c: the UNet2DConditionModel forward pass on the CPU (mood/unet.h), in the manner of
 * llm.c: the model is a table of named parameters plus layer descriptors, and the forward pass
 * is a list of layer functions (resnet_forward, transformer_forward, tblock_forward, downsample,
 * upsample) over flat NCHW / token-major float buffers, built on engine/cpu/ops.h.
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
 * Memory: every activation comes from one block per forward call. The forward runs twice: a
 * planning pass with the same code, which only counts the floats each step takes (push() hands
 * out no memory and RUN skips the arithmetic), then the real pass in a block of exactly that
 * size. Buffers are taken in stack order: the skip connections stay for the whole pass, each
 * layer's activations are released when the layer returns.
 *
 * Activations: a resnet's and a transformer block's intermediate values are written into
 * explicit buffers (resnet_acts, tblock_acts) handed to the layer function, with the norm
 * statistics, so a backward pass can keep them per layer instead of releasing them.
 *
 * Every Linear and Conv2d runs through linear_forward / conv_forward, which add the layer's
 * runtime side paths (mood_unet_set_side_paths): low rank through mood_op_lora_linear or two
 * convolutions (down with the layer's kernel, stride and padding, up 1x1), dense ΔW (rank 0) as
 * one more product.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/ops.h"
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
        decl_resnet(bd, &bl->res[j], p, j ? out : in, out, c->resnet_out_scale_factor);
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
        decl_resnet(bd, &bl->res[j], p, h + s, out, c->resnet_out_scale_factor);
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
    int err = 0;
    if (n && !paths)
        return mood_error_set(MOOD_EINVAL, "unet: %zu side paths given without an array", n);
    if (n && (!(idx = mood_malloc(n * sizeof *idx)) || !(sides = mood_malloc(n * sizeof *sides)))) {
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
        sides[p->side_first + (size_t)p->side_n++] = paths[i];
        sides[p->side_first + (size_t)p->side_n - 1].weight = p->name;
    }
    mood_free(m->sides);
    m->sides = sides;
    m->n_sides = n;
    sides = NULL;
done:
    mood_free(idx);
    mood_free(sides);
    return err;
}

/* ----- forward: memory ---------------------------------------------------------------------- */

#define MAX_SKIPS (1 + MOOD_UNET_MAX_BLOCKS * UNET_MAX_LAYERS)

/* One forward call: inputs, the planning flag and the stack of activation memory. */
typedef struct fwd {
    const mood_unet *m;
    int B, L;         /* batch, context tokens */
    const float *ctx; /* B*L x cross_attention_dim */
    float *emb_act;   /* B x time_embed_dim: silu(time embedding) */
    int plan;         /* 1: count memory only */
    float *base;
    size_t used, peak; /* floats */
    int n_skip;
    float *skip[MAX_SKIPS];
    int skip_c[MAX_SKIPS], skip_h[MAX_SKIPS], skip_w[MAX_SKIPS];
} fwd;

/* The arithmetic of a step, skipped while planning. */
#define RUN(f) if (!(f)->plan)

/* n floats from the stack (64-byte aligned); NULL while planning. */
static float *push(fwd *f, size_t n)
{
    float *p = f->plan ? NULL : f->base + f->used;
    f->used += (n + 15) & ~(size_t)15;
    if (f->used > f->peak)
        f->peak = f->used;
    return p;
}

static const float *P(const fwd *f, int i)
{
    return i >= 0 ? f->m->params[i].data : NULL;
}

/* y += a x over n floats. */
static void axpy(float *y, const float *x, float a, size_t n)
{
    while (n) {
        int k = n > INT_MAX ? INT_MAX : (int)n;
        cblas_saxpy(k, a, x, 1, y, 1);
        x += k, y += k, n -= (size_t)k;
    }
}

/* ----- forward: Linear and Conv2d with side paths ------------------------------------------- */

/* out (N x out) = inp (N x in) · W^T + b + Σ side paths. */
static void linear_forward(fwd *f, const u_lin *l, float *out, const float *inp, size_t N)
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
static void conv_forward(fwd *f, const u_conv *c, float *out, const float *inp, int H, int W)
{
    const unet_param *w = &f->m->params[c->w];
    mood_conv2d_dims d = {f->B, c->in, H, W, c->out, c->k, c->stride, c->pad};
    size_t mark = f->used;
    size_t ohw = (size_t)mood_op_conv2d_out_h(&d) * (size_t)mood_op_conv2d_out_w(&d);
    size_t n_out = (size_t)f->B * (size_t)c->out * ohw;
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
                mood_conv2d_dims dd = d, du = {f->B,
                                               sp->rank,
                                               mood_op_conv2d_out_h(&d),
                                               mood_op_conv2d_out_w(&d),
                                               c->out,
                                               1,
                                               1,
                                               0};
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
static void norm_forward(fwd *f, const u_norm *nm, float *out, const float *inp, size_t rows,
                         size_t HW, float *stats)
{
    RUN(f)
    {
        size_t ns = nm->groups ? (size_t)f->B * (size_t)nm->groups : rows;
        float *mean = stats, *rstd = stats ? stats + ns : NULL;
        if (nm->groups)
            mood_op_group_norm(out, inp, P(f, nm->w), P(f, nm->b), f->B, nm->C, HW, nm->groups,
                               nm->eps, mean, rstd);
        else
            mood_op_layer_norm(out, inp, P(f, nm->w), P(f, nm->b), rows, nm->C, nm->eps, mean,
                               rstd);
    }
}

/* ----- forward: ResnetBlock2D --------------------------------------------------------------- */

/* What a backward pass of one resnet needs besides its input. */
typedef struct resnet_acts {
    float *n1;    /* silu(norm1(x)): B x in x HW */
    float *h1;    /* conv1(n1) + time_emb_proj(silu(emb)): B x out x HW */
    float *n2;    /* silu(norm2(h1)): B x out x HW */
    float *tp;    /* time_emb_proj(silu(emb)): B x out */
    float *stats; /* mean, rstd of norm1 then of norm2: 4 x B x groups */
} resnet_acts;

static void resnet_acts_push(fwd *f, const u_resnet *r, size_t HW, resnet_acts *a)
{
    size_t B = (size_t)f->B;
    a->n1 = push(f, B * (size_t)r->in * HW);
    a->h1 = push(f, B * (size_t)r->out * HW);
    a->n2 = push(f, B * (size_t)r->out * HW);
    a->tp = push(f, B * (size_t)r->out);
    a->stats = push(f, 4 * B * (size_t)r->norm1.groups);
}

/* out (B x out x H x W) = ResnetBlock2D(inp (B x in x H x W)); out must not alias inp. */
static void resnet_forward(fwd *f, const u_resnet *r, const resnet_acts *a, float *out,
                           const float *inp, int H, int W)
{
    size_t HW = (size_t)H * W, B = (size_t)f->B, n_out = B * (size_t)r->out * HW;
    size_t ns = B * (size_t)r->norm1.groups, mark;
    norm_forward(f, &r->norm1, a->n1, inp, 0, HW, a->stats);
    RUN(f) mood_op_silu(a->n1, a->n1, B * (size_t)r->in * HW);
    conv_forward(f, &r->conv1, a->h1, a->n1, H, W);
    linear_forward(f, &r->temb, a->tp, f->emb_act, B);
    RUN(f) mood_op_add_channel_bias(a->h1, a->tp, f->B, r->out, HW);
    norm_forward(f, &r->norm2, a->n2, a->h1, 0, HW, f->plan ? NULL : a->stats + 2 * ns);
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

/* ----- forward: Transformer2DModel ---------------------------------------------------------- */

/* What a backward pass of one BasicTransformerBlock needs besides its input; N = B*HW rows of
 * D = inner channels, B*L context rows. */
typedef struct tblock_acts {
    float *ln1, *q1, *k1, *v1, *a1; /* N x D: norm1, self-attention q, k, v, output */
    float *ln2, *q2, *a2;           /* N x D: norm2, cross-attention q, output */
    float *k2, *v2;                 /* B*L x D: cross-attention k, v */
    float *ln3;                     /* N x D */
    float *ff_h;                    /* N x 8D: GEGLU projection [a | gate] */
    float *ff_g;                    /* N x 4D: a * gelu(gate) */
    float *stats;                   /* mean, rstd of norm1, norm2, norm3: 6 x N */
} tblock_acts;

static void tblock_acts_push(fwd *f, const u_transformer *t, size_t N, tblock_acts *a)
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
}

/* x (N x D, N = B*HW tokens) = one BasicTransformerBlock applied to x. */
static void tblock_forward(fwd *f, const u_transformer *t, const u_tblock *k, const tblock_acts *a,
                           float *x, size_t HW)
{
    size_t N = (size_t)f->B * HW, D = (size_t)t->inner, NL = (size_t)f->B * (size_t)f->L;
    size_t mark = f->used;
    int hd = t->inner / t->heads, T = (int)HW, L = f->L;
    float *tmp = push(f, N * D);
    float *sc = push(f, mood_op_attention_scratch(T, T > L ? T : L));
    /* self-attention */
    norm_forward(f, &k->norm1, a->ln1, x, N, 0, a->stats);
    linear_forward(f, &k->q1, a->q1, a->ln1, N);
    linear_forward(f, &k->k1, a->k1, a->ln1, N);
    linear_forward(f, &k->v1, a->v1, a->ln1, N);
    RUN(f) mood_op_attention(a->a1, a->q1, a->k1, a->v1, f->B, t->heads, T, T, hd, 0, 0.0f, sc);
    linear_forward(f, &k->o1, tmp, a->a1, N);
    RUN(f) mood_op_add_inplace(x, tmp, N * D);
    /* cross-attention over the context */
    norm_forward(f, &k->norm2, a->ln2, x, N, 0, f->plan ? NULL : a->stats + 2 * N);
    linear_forward(f, &k->q2, a->q2, a->ln2, N);
    linear_forward(f, &k->k2, a->k2, f->ctx, NL);
    linear_forward(f, &k->v2, a->v2, f->ctx, NL);
    RUN(f) mood_op_attention(a->a2, a->q2, a->k2, a->v2, f->B, t->heads, T, L, hd, 0, 0.0f, sc);
    linear_forward(f, &k->o2, tmp, a->a2, N);
    RUN(f) mood_op_add_inplace(x, tmp, N * D);
    /* GEGLU feed-forward */
    norm_forward(f, &k->norm3, a->ln3, x, N, 0, f->plan ? NULL : a->stats + 4 * N);
    linear_forward(f, &k->ff1, a->ff_h, a->ln3, N);
    RUN(f) mood_op_geglu(a->ff_g, a->ff_h, N, 4 * t->inner);
    linear_forward(f, &k->ff2, tmp, a->ff_g, N);
    RUN(f) mood_op_add_inplace(x, tmp, N * D);
    f->used = mark;
}

/* out (B x C x H x W) = Transformer2DModel(inp); out may alias inp. */
static void transformer_forward(fwd *f, const u_transformer *t, float *out, const float *inp, int H,
                                int W)
{
    size_t HW = (size_t)H * W, B = (size_t)f->B, N = B * HW, n = B * (size_t)t->C * HW;
    size_t mark = f->used;
    float *gn = push(f, n), *tok = push(f, N * (size_t)t->C), *x = push(f, N * (size_t)t->inner);
    norm_forward(f, &t->norm, gn, inp, 0, HW, NULL);
    RUN(f) mood_op_nchw_to_nhwc(tok, gn, f->B, t->C, HW);
    linear_forward(f, &t->proj_in, x, tok, N);
    for (int d = 0; d < t->depth; d++) {
        size_t m2 = f->used;
        tblock_acts a;
        tblock_acts_push(f, t, N, &a);
        tblock_forward(f, t, &t->blocks[d], &a, x, HW);
        f->used = m2;
    }
    linear_forward(f, &t->proj_out, tok, x, N);
    RUN(f) mood_op_nhwc_to_nchw(gn, tok, f->B, t->C, HW);
    RUN(f) mood_op_add(out, inp, gn, n);
    f->used = mark;
}

/* ----- forward: sampling -------------------------------------------------------------------- */

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

/* Upsample2D: h (B x C x H x W) -> nearest to (OH, OW) in tmp -> conv 3x3 into h's buffer. */
static void upsample_forward(fwd *f, const u_conv *c, float *h, float *tmp, int H, int W, int OH,
                             int OW)
{
    RUN(f)
    {
        if (OH == 2 * H && OW == 2 * W)
            mood_op_upsample_nearest2x(tmp, h, f->B * c->in, H, W);
        else
            upsample_nearest(tmp, h, f->B * c->in, H, W, OH, OW);
    }
    conv_forward(f, c, h, tmp, OH, OW);
}

/* ----- forward: blocks ---------------------------------------------------------------------- */

/* A new skip connection buffer (B x C x H x W) on the stack; it stays until the end. */
static float *push_skip(fwd *f, int C, int H, int W)
{
    int i = f->n_skip++;
    f->skip[i] = push(f, (size_t)f->B * (size_t)C * (size_t)H * (size_t)W);
    f->skip_c[i] = C, f->skip_h[i] = H, f->skip_w[i] = W;
    return f->skip[i];
}

static void resnet_step(fwd *f, const u_resnet *r, float *out, const float *inp, int H, int W)
{
    size_t mark = f->used;
    resnet_acts a;
    resnet_acts_push(f, r, (size_t)H * W, &a);
    resnet_forward(f, r, &a, out, inp, H, W);
    f->used = mark;
}

/* Down block: each resnet (+ transformer) output and the downsampler's become skips; the input
 * is the newest skip. *H, *W follow the downsampler. */
static void down_forward(fwd *f, const u_block *bl, int *H, int *W)
{
    for (int j = 0; j < bl->n; j++) {
        const float *in = f->skip[f->n_skip - 1];
        float *out = push_skip(f, bl->res[j].out, *H, *W);
        resnet_step(f, &bl->res[j], out, in, *H, *W);
        if (bl->has_attn)
            transformer_forward(f, &bl->attn[j], out, out, *H, *W);
    }
    if (bl->sampler.w >= 0) {
        mood_conv2d_dims d = {f->B, bl->sampler.in, *H, *W, bl->sampler.out, 3, 2, bl->sampler.pad};
        const float *in = f->skip[f->n_skip - 1];
        int OH = mood_op_conv2d_out_h(&d), OW = mood_op_conv2d_out_w(&d);
        float *out = push_skip(f, bl->sampler.out, OH, OW);
        conv_forward(f, &bl->sampler, out, in, *H, *W);
        *H = OH, *W = OW;
    }
}

/* Up block: [h | newest skip] through each resnet (+ transformer), then the upsampler to the
 * next skip's size. h is cur[*which]; cat and cur[] are sized by up_buffers. */
static void up_forward(fwd *f, const u_block *bl, float *cur[2], int *which, float *cat, int *H,
                       int *W)
{
    for (int j = 0; j < bl->n; j++) {
        int s = --f->n_skip, hc = bl->res[j].in - f->skip_c[s];
        float *h = cur[*which], *out = cur[!*which];
        RUN(f) mood_op_concat_channels(cat, h, hc, f->skip[s], f->skip_c[s], f->B, (size_t)*H * *W);
        resnet_step(f, &bl->res[j], out, cat, *H, *W);
        if (bl->has_attn)
            transformer_forward(f, &bl->attn[j], out, out, *H, *W);
        *which = !*which;
    }
    if (bl->sampler.w >= 0) {
        int s = f->n_skip - 1;
        upsample_forward(f, &bl->sampler, cur[*which], cur[!*which], *H, *W, f->skip_h[s],
                         f->skip_w[s]);
        *H = f->skip_h[s], *W = f->skip_w[s];
    }
}

/* Floats for the concatenation buffer and for each of the two ping-pong buffers of the mid and
 * up blocks, from the skips the up blocks will consume. */
static void up_buffers(const fwd *f, size_t *cat_n, size_t *cur_n)
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

static void mid_forward(fwd *f, float *cur[2], int H, int W)
{
    const u_block *bl = &f->m->mid;
    const float *in = f->skip[f->n_skip - 1];
    int C = f->skip_c[f->n_skip - 1];
    if (!bl->n) {
        RUN(f) memcpy(cur[0], in, (size_t)f->B * C * H * W * sizeof *in);
        return;
    }
    resnet_step(f, &bl->res[0], cur[1], in, H, W);
    transformer_forward(f, &bl->attn[0], cur[1], cur[1], H, W);
    resnet_step(f, &bl->res[1], cur[0], cur[1], H, W);
}

/* f->emb_act (B x T, stays) = silu(time embedding [+ text_time added embedding]). */
static void time_forward(fwd *f, const float *t, const float *text_embeds, const float *time_ids)
{
    const mood_unet_config *c = &f->m->cfg;
    size_t B = (size_t)f->B, T = (size_t)c->time_embed_dim, C0 = (size_t)c->block_out_channels[0];
    float *emb = f->emb_act = push(f, B * T);
    size_t mark = f->used;
    float *tp = push(f, B * C0), *h = push(f, B * T);
    RUN(f)
    mood_op_timestep_embedding(tp, t, f->B, (int)C0, c->flip_sin_to_cos, c->freq_shift, 10000.0f);
    linear_forward(f, &f->m->time1, h, tp, B);
    RUN(f) mood_op_silu(h, h, B * T);
    linear_forward(f, &f->m->time2, emb, h, B);
    if (c->addition_embed_text_time) {
        size_t A6 = 6 * (size_t)c->addition_time_embed_dim;
        size_t Pd = (size_t)c->projection_class_embeddings_input_dim, E = Pd - A6;
        float *ids = push(f, B * A6), *in = push(f, B * Pd), *aug = push(f, B * T);
        RUN(f)
        {
            mood_op_timestep_embedding(ids, time_ids, 6 * f->B, c->addition_time_embed_dim,
                                       c->flip_sin_to_cos, c->freq_shift, 10000.0f);
            for (size_t b = 0; b < B; b++) {
                memcpy(in + b * Pd, text_embeds + b * E, E * sizeof *in);
                memcpy(in + b * Pd + E, ids + b * A6, A6 * sizeof *in);
            }
        }
        linear_forward(f, &f->m->add1, h, in, B);
        RUN(f) mood_op_silu(h, h, B * T);
        linear_forward(f, &f->m->add2, aug, h, B);
        RUN(f) mood_op_add_inplace(emb, aug, B * T);
    }
    RUN(f) mood_op_silu(emb, emb, B * T);
    f->used = mark;
}

static void unet_run(fwd *f, float *out, const float *x, const float *t, const float *text_embeds,
                     const float *time_ids, int H, int W)
{
    const mood_unet *m = f->m;
    const mood_unet_config *c = &m->cfg;
    size_t n_in = (size_t)f->B * (size_t)c->in_channels * (size_t)H * W, cat_n, cur_n;
    int C0 = c->block_out_channels[0], which = 0;
    float *cur[2], *cat, *h0, *xc;
    time_forward(f, t, text_embeds, time_ids);
    if (c->center_input_sample) { /* 2 x - 1 */
        xc = push(f, n_in);
        RUN(f)
        {
            for (size_t i = 0; i < n_in; i++)
                xc[i] = 2.0f * x[i] - 1.0f;
        }
        x = xc;
    }
    h0 = push_skip(f, C0, H, W);
    conv_forward(f, &m->conv_in, h0, x, H, W);
    for (int i = 0; i < c->n_blocks; i++)
        down_forward(f, &m->down[i], &H, &W);
    up_buffers(f, &cat_n, &cur_n);
    cat = push(f, cat_n);
    cur[0] = push(f, cur_n);
    cur[1] = push(f, cur_n);
    mid_forward(f, cur, H, W);
    for (int i = 0; i < c->n_blocks; i++)
        up_forward(f, &m->up[i], cur, &which, cat, &H, &W);
    /* conv_norm_out -> SiLU -> conv_out */
    norm_forward(f, &m->norm_out, cat, cur[which], 0, (size_t)H * W, NULL);
    RUN(f) mood_op_silu(cat, cat, (size_t)f->B * C0 * H * W);
    conv_forward(f, &m->conv_out, out, cat, H, W);
}

static int check_forward(const mood_unet *m, float *out, const float *x, const float *t,
                         const float *ctx, int B, int H, int W, int L, const float *text_embeds,
                         const float *time_ids)
{
    if (!m || !out || !x || !t || !ctx)
        return mood_error_set(MOOD_EINVAL, "unet: forward needs out, x, timesteps and context");
    if (B < 1 || H < 1 || W < 1 || L < 1 || (int64_t)B * H * W > INT_MAX / 4 ||
        (int64_t)B * L > INT_MAX / 4)
        return mood_error_set(MOOD_EINVAL, "unet: batch %d, size %dx%d, %d context tokens", B, H, W,
                              L);
    if (m->cfg.addition_embed_text_time && (!text_embeds || !time_ids))
        return mood_error_set(MOOD_EINVAL, "unet: addition_embed_type \"text_time\" (SDXL) needs "
                                           "text_embeds and time_ids");
    return 0;
}

int mood_unet_forward(const mood_unet *m, float *out, const float *x, const float *timesteps,
                      const float *context, int B, int H, int W, int ctx_len,
                      const float *text_embeds, const float *time_ids)
{
    fwd f;
    uint64_t bytes;
    int err = check_forward(m, out, x, timesteps, context, B, H, W, ctx_len, text_embeds, time_ids);
    if (err < 0)
        return err;
    memset(&f, 0, sizeof f);
    f.m = m, f.B = B, f.L = ctx_len, f.ctx = context, f.plan = 1;
    unet_run(&f, out, x, timesteps, text_embeds, time_ids, H, W);
    if (mood_mul_u64(&bytes, f.peak, sizeof(float)) < 0 || bytes > SIZE_MAX ||
        !(f.base = mood_malloc((size_t)bytes)))
        return mood_error_set(MOOD_ENOMEM, "unet: %llu MB of activations do not fit in memory",
                              (unsigned long long)(f.peak * sizeof(float) >> 20));
    f.plan = 0, f.used = 0, f.n_skip = 0;
    unet_run(&f, out, x, timesteps, text_embeds, time_ids, H, W);
    mood_free(f.base);
    return 0;
}
