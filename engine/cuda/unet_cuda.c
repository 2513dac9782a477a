/*
 * unet_cuda.c: the UNet forward pass on the GPU (engine/cuda/unet_cuda.h): the CPU forward of
 * engine/unet_forward.c (inference path) layer for layer, over the CPU model's layer descriptors
 * (engine/unet_internal.h), with each layer's arithmetic done by the CUDA backend's functions
 * (engine/cuda/cuda_ops.h). Plain C: no kernels of its own.
 *
 * Weights: two device blocks, one of float32 parameters and (16-bit mode) one of the Linear and
 * Conv2d weights in bf16/fp16, each parameter 256-byte aligned; u->w[i] is parameter i's copy.
 *
 * Runtime side paths (the CPU model's mood_unet.sides): their factors in a third block, float32
 * in every mode; u->side_w[2k], [2k + 1] are the down and up factors of the model's side path k.
 * Every Linear and Conv2d adds its paths as the CPU's linear_forward / conv_forward do (lin_sides,
 * conv_sides), in fp32 on the input its product reads. The block is laid out again when the
 * model's side_gen moves (mood_unet_set_side_paths) and refilled by
 * mood_cuda_unet_reload_side_paths.
 *
 * Activations come from the context's memory pool, taken when a layer needs them and returned
 * as soon as the layer is done (the pool hands a returned block out again at once, which is
 * safe because all work runs on the context's one stream). A pass records every block it holds
 * (cu_pass.live), so that a failure anywhere returns them all: the layer functions just return
 * the error. The skip connections stay until their up-block resnet has read them.
 *
 * CUDA graphs (unet_cuda.h, "CUDA graphs"): forward_dev keeps up to MOOD_CUDA_UNET_GRAPHS
 * entries (cu_graph, one per shape): a shape's first forward runs the pass and records the
 * entry (warm-up), its second records the pass into a graph (cuda_ops.h: every pool block the
 * pass takes, temporaries of the layer functions included, is reserved for the graph, so the
 * addresses baked into it belong to nobody else between replays) reading and writing the
 * entry's own staging buffers (reserved too), and launches it; later ones copy the inputs in,
 * launch, copy the output out. Dropped when what a graph computes may change (graphs_drop).
 *
 * The structures, the pool bookkeeping (get / put) and the layer forwards exported here
 * (mood__cuda_unet_lin, _conv, _norm) are shared with the training passes
 * (engine/cuda/unet_cuda_train.c, unet_cuda_backward.c) through engine/cuda/unet_cuda_internal.h.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/unet_cuda_internal.h"

#define ALIGN 256

/* ----- weights ------------------------------------------------------------------------------ */

/* Whether parameter p is stored in the 16-bit type: Linear and Conv2d weights in 16-bit mode. */
static int is16(const mood_cuda_unet *u, const unet_param *p)
{
    return u->dt != MOOD_CUDA_F32 && p->ndim >= 2;
}

static size_t align_up(size_t v)
{
    return (v + ALIGN - 1) / ALIGN * ALIGN;
}

/* The configurations the GPU forward runs (unet_cuda.h). */
static int check_model(const mood_unet *m)
{
    const mood_unet_config *c = &m->cfg;
    if (c->center_input_sample)
        return mood_error_set(MOOD_EUNSUPPORTED, "cuda unet: center_input_sample is not "
                                                 "implemented on the GPU");
    return 0;
}

/* Bytes parameter p takes in its arena. */
static size_t param_bytes(const mood_cuda_unet *u, const unet_param *p)
{
    return align_up(p->numel * (is16(u, p) ? 2 : 4));
}

/* Allocates the arenas and places every parameter in its own (u->w). */
static int alloc_arenas(mood_cuda_unet *u)
{
    size_t off32 = 0, off16 = 0;
    for (size_t i = 0; i < u->m->n_params; i++)
        *(is16(u, &u->m->params[i]) ? &u->bytes16 : &u->bytes32) +=
            param_bytes(u, &u->m->params[i]);
    if (u->bytes32)
        TRY(mood_cuda_alloc(u->ctx, &u->arena32, u->bytes32));
    if (u->bytes16)
        TRY(mood_cuda_alloc(u->ctx, &u->arena16, u->bytes16));
    for (size_t i = 0; i < u->m->n_params; i++) {
        const unet_param *p = &u->m->params[i];
        size_t *off = is16(u, p) ? &off16 : &off32;
        u->w[i] = (char *)(is16(u, p) ? u->arena16 : u->arena32) + *off;
        *off += param_bytes(u, p);
    }
    return 0;
}

/* Copies parameter i to the device; a 16-bit one goes through `staging` (fp32, large enough). */
static int upload_param(mood_cuda_unet *u, size_t i, void *staging)
{
    const unet_param *p = &u->m->params[i];
    if (!is16(u, p))
        return mood_cuda_upload(u->ctx, u->w[i], p->data, p->numel * sizeof(float));
    TRY(mood_cuda_upload(u->ctx, staging, p->data, p->numel * sizeof(float)));
    return mood_cuda_op_convert(u->ctx, u->w[i], u->dt, staging, MOOD_CUDA_F32, p->numel);
}

/* Uploads parameters [first, first + n), then waits (a failed copy is reported here). */
static int upload_range(mood_cuda_unet *u, size_t first, size_t n)
{
    size_t staging_n = 0;
    void *staging = NULL;
    int err = 0;
    for (size_t i = first; i < first + n; i++)
        if (is16(u, &u->m->params[i]) && u->m->params[i].numel > staging_n)
            staging_n = u->m->params[i].numel;
    if (staging_n && (err = mood_cuda_alloc(u->ctx, &staging, staging_n * sizeof(float))) < 0)
        return err;
    for (size_t i = first; i < first + n && err == 0; i++)
        err = upload_param(u, i, staging);
    if (err == 0)
        err = mood_cuda_sync(u->ctx);
    mood_cuda_free(u->ctx, staging);
    return err;
}

/* ----- side paths' factors ----------------------------------------------------------------- */

/* Floats of side path sp's down and up factors on parameter p (mood_side_path, mood/core.h):
 * rank > 0: down rank x (in * kh * kw), up out x rank; rank 0: up in p's shape, no down. */
static void side_numel(const unet_param *p, const mood_side_path *sp, size_t *nd, size_t *nu)
{
    size_t fan_in = p->numel / (size_t)p->shape[0];
    *nd = sp->rank > 0 ? (size_t)sp->rank * fan_in : 0;
    *nu = sp->rank > 0 ? (size_t)p->shape[0] * (size_t)sp->rank : p->numel;
}

static void graphs_drop(mood_cuda_unet *u);

static void drop_sides(mood_cuda_unet *u)
{
    graphs_drop(u); /* they read the factors at the addresses about to go, with their scales */
    mood_cuda_free(u->ctx, u->side_arena);
    mood_free(u->side_w);
    u->side_arena = NULL, u->side_w = NULL;
    u->side_bytes = 0, u->n_sides = 0, u->sides_placed = 0;
}

/* Lays out the model's current side paths in a new block (none: no block). */
static int place_sides(mood_cuda_unet *u)
{
    const mood_unet *m = u->m;
    size_t bytes = 0, off = 0, nd, nu;
    drop_sides(u);
    if (m->n_sides == 0)
        return 0;
    for (size_t i = 0; i < m->n_params; i++)
        for (int s = 0; s < m->params[i].side_n; s++) {
            side_numel(&m->params[i], &m->sides[m->params[i].side_first + (size_t)s], &nd, &nu);
            bytes += align_up(nd * sizeof(float)) + align_up(nu * sizeof(float));
        }
    if (!(u->side_w = mood_calloc(2 * m->n_sides, sizeof *u->side_w)))
        return mood_error_nomem();
    TRY(mood_cuda_alloc(u->ctx, &u->side_arena, bytes));
    u->side_bytes = bytes;
    for (size_t i = 0; i < m->n_params; i++)
        for (int s = 0; s < m->params[i].side_n; s++) {
            size_t k = m->params[i].side_first + (size_t)s;
            side_numel(&m->params[i], &m->sides[k], &nd, &nu);
            u->side_w[2 * k] = nd ? (const float *)((char *)u->side_arena + off) : NULL;
            off += align_up(nd * sizeof(float));
            u->side_w[2 * k + 1] = (const float *)((char *)u->side_arena + off);
            off += align_up(nu * sizeof(float));
        }
    u->n_sides = m->n_sides;
    return 0;
}

/* Copies every side path's factors from the host (placed for the current paths), then waits. */
static int upload_sides(mood_cuda_unet *u)
{
    const mood_unet *m = u->m;
    size_t nd, nu;
    if (u->n_sides == 0)
        return 0;
    for (size_t i = 0; i < m->n_params; i++)
        for (int s = 0; s < m->params[i].side_n; s++) {
            size_t k = m->params[i].side_first + (size_t)s;
            const mood_side_path *sp = &m->sides[k];
            side_numel(&m->params[i], sp, &nd, &nu);
            if (nd)
                TRY(mood_cuda_upload(u->ctx, (void *)u->side_w[2 * k], sp->down,
                                     nd * sizeof(float)));
            TRY(mood_cuda_upload(u->ctx, (void *)u->side_w[2 * k + 1], sp->up, nu * sizeof(float)));
        }
    return mood_cuda_sync(u->ctx);
}

/* Whether the placed paths are the model's current ones (no mood_unet_set_side_paths since). */
static int sides_current(const mood_cuda_unet *u)
{
    return u->sides_placed && u->side_gen == u->m->side_gen;
}

/* Places (when the model's paths changed) and uploads the side paths. */
static int load_sides(mood_cuda_unet *u)
{
    if (!sides_current(u)) {
        TRY(place_sides(u));
        u->side_gen = u->m->side_gen;
        u->sides_placed = 1;
    }
    int err = upload_sides(u);
    if (err < 0) /* half copied: copy again before the next use */
        u->sides_placed = 0;
    return err;
}

/* Places and copies the side paths unless they are current (unet_cuda_internal.h). */
int mood__cuda_unet_sides_ready(mood_cuda_unet *u)
{
    return sides_current(u) ? 0 : load_sides(u);
}

void mood_cuda_unet_options_init(mood_cuda_unet_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->dtype = MOOD_CUDA_F32;
}

int mood_cuda_unet_new(mood_cuda_unet **out, mood_cuda_ctx *ctx, const mood_unet *m,
                       const mood_cuda_unet_options *opts)
{
    mood_cuda_unet_options o;
    mood_cuda_unet *u;
    int err;
    if (out)
        *out = NULL;
    if (!out || !ctx || !m)
        return mood_error_set(MOOD_EINVAL, "cuda unet: new needs out, a context and a model");
    if (opts)
        o = *opts;
    else
        mood_cuda_unet_options_init(&o);
    if (o.dtype != MOOD_CUDA_F32 && o.dtype != MOOD_CUDA_BF16 && o.dtype != MOOD_CUDA_F16)
        return mood_error_set(MOOD_EINVAL, "cuda unet: unknown dtype %d", (int)o.dtype);
    if ((err = check_model(m)) < 0)
        return err;
    if (!(u = mood_calloc(1, sizeof *u)) || !(u->w = mood_calloc(m->n_params, sizeof *u->w))) {
        mood_free(u);
        return mood_error_nomem();
    }
    u->ctx = ctx, u->m = m, u->dt = o.dtype;
    const char *env = getenv("MOOD_CUDA_GRAPHS");
    u->graphs_off = o.no_graphs || (env && strcmp(env, "0") == 0);
    if ((err = alloc_arenas(u)) < 0 || (err = upload_range(u, 0, m->n_params)) < 0 ||
        (err = load_sides(u)) < 0) {
        mood_cuda_unet_free(u);
        return err;
    }
    *out = u;
    return 0;
}

void mood_cuda_unet_free(mood_cuda_unet *u)
{
    if (!u)
        return;
    graphs_drop(u);
    mood_cuda_free(u->ctx, u->arena32);
    mood_cuda_free(u->ctx, u->arena16);
    drop_sides(u);
    mood_free(u->w);
    mood_free(u);
}

int mood_cuda_unet_reload(mood_cuda_unet *u, const char *name)
{
    long i;
    if (!u)
        return mood_error_set(MOOD_EINVAL, "cuda unet: reload needs a model");
    graphs_drop(u); /* the simplest rule: any weight change drops them (recorded again) */
    if (!name)
        return upload_range(u, 0, u->m->n_params);
    if ((i = mood__unet_find(u->m, name)) < 0)
        return mood_error_set(MOOD_ENOTFOUND, "cuda unet: no weight \"%s\"", name);
    return upload_range(u, (size_t)i, 1);
}

int mood_cuda_unet_reload_side_paths(mood_cuda_unet *u)
{
    if (!u)
        return mood_error_set(MOOD_EINVAL, "cuda unet: reload_side_paths needs a model");
    return load_sides(u);
}

size_t mood_cuda_unet_bytes(const mood_cuda_unet *u)
{
    return u ? u->bytes32 + u->bytes16 + u->side_bytes : 0;
}

double mood_cuda_unet_flop(const mood_cuda_unet *u)
{
    return u ? u->flop : 0.0;
}

/* ----- the products' type ------------------------------------------------------------------ */

static size_t dt_size(mood_cuda_dtype dt)
{
    return dt == MOOD_CUDA_F32 ? 4 : 2;
}

/* x (n floats) in the products' type: x itself in fp32 mode, else a converted copy (returned
 * with put_dt). */
static int in_dt(cu_pass *f, const void **out, const float *x, size_t n)
{
    void *p = NULL;
    if (f->dt == MOOD_CUDA_F32) {
        *out = x;
        return 0;
    }
    TRY(get(f, &p, n * 2));
    *out = p;
    return mood_cuda_op_convert(f->ctx, p, f->dt, x, MOOD_CUDA_F32, n);
}

/* Returns what in_dt gave for x, unless that was x itself. */
static void put_dt(cu_pass *f, const void *p, const float *x)
{
    if (p != (const void *)x)
        put(f, p);
}

/* The input of a layer's side paths, fp32, from x (n values of the pass's type: the input the
 * layer's product reads): x itself in fp32 mode, else x widened into a new buffer (release with
 * put_side_in). The side paths thus read exactly the values the product reads. */
static int side_in(cu_pass *f, const float **out, const void *x, size_t n)
{
    float *p = NULL;
    if (f->dt == MOOD_CUDA_F32) {
        *out = x;
        return 0;
    }
    TRY(getf(f, &p, n));
    *out = p;
    return mood_cuda_op_convert(f->ctx, p, MOOD_CUDA_F32, x, f->dt, n);
}

static void put_side_in(cu_pass *f, const float *p, const void *x)
{
    if ((const void *)p != x)
        put(f, p);
}

int mood__cuda_unet_side_input(cu_pass *f, const float **out, const float *x, size_t n)
{
    const void *r = NULL;
    *out = x;
    if (f->dt == MOOD_CUDA_F32)
        return 0;
    TRY(in_dt(f, &r, x, n));
    TRY(side_in(f, out, r, n));
    put_dt(f, r, x);
    return 0;
}

/* ----- Linear, Conv2d, norms ---------------------------------------------------------------- */

/* out (N x l->out, fp32) += the side paths of layer l on inp (N x l->in, of the pass's type), as
 * the CPU's linear_forward: low rank through mood_cuda_op_lora_linear, dense (rank 0) as one more
 * product scaled and added. */
static int lin_sides(cu_pass *f, const u_lin *l, float *out, const void *inp, size_t N)
{
    const unet_param *w = &f->m->params[l->w];
    const float *x = NULL;
    if (w->side_n == 0)
        return 0;
    TRY(side_in(f, &x, inp, N * (size_t)l->in));
    for (int s = 0; s < w->side_n; s++) {
        size_t k = w->side_first + (size_t)s;
        const mood_side_path *sp = &f->m->sides[k];
        const float *down = f->u->side_w[2 * k], *up = f->u->side_w[2 * k + 1];
        float *t = NULL;
        if (sp->rank > 0) {
            f->flop += 2.0 * (double)N * sp->rank * (l->in + l->out);
            TRY(mood_cuda_op_lora_linear(f->ctx, out, x, down, up, sp->rank, sp->scale, N, l->in,
                                         l->out));
            continue;
        }
        f->flop += 2.0 * (double)N * l->in * l->out;
        TRY(getf(f, &t, N * (size_t)l->out));
        TRY(mood_cuda_op_linear(f->ctx, t, x, up, NULL, N, l->in, l->out));
        TRY(mood_cuda_op_axpy(f->ctx, out, t, sp->scale, N * (size_t)l->out));
        put(f, t);
    }
    put_side_in(f, x, inp);
    return 0;
}

/* out (B x c->out x OH x OW, fp32) += the side paths of convolution c on inp (B x c->in x H x W,
 * of the pass's type), as the CPU's conv_forward: low rank as down (c's kernel, stride and
 * padding, rank channels) then up (1x1), dense (rank 0) as one more convolution; each scaled and
 * added. */
static int conv_sides(cu_pass *f, const u_conv *c, float *out, const void *inp, int H, int W)
{
    const unet_param *w = &f->m->params[c->w];
    mood_conv2d_dims d = {f->B, c->in, H, W, c->out, c->k, c->stride, c->pad};
    int OH = mood_op_conv2d_out_h(&d), OW = mood_op_conv2d_out_w(&d);
    size_t ohw = (size_t)OH * OW, n_out = (size_t)f->B * c->out * ohw;
    const float *x = NULL;
    if (w->side_n == 0)
        return 0;
    TRY(side_in(f, &x, inp, (size_t)f->B * c->in * H * W));
    for (int s = 0; s < w->side_n; s++) {
        size_t k = w->side_first + (size_t)s;
        const mood_side_path *sp = &f->m->sides[k];
        const float *down = f->u->side_w[2 * k], *up = f->u->side_w[2 * k + 1];
        float *t1 = NULL, *t2 = NULL;
        TRY(getf(f, &t2, n_out));
        if (sp->rank > 0) {
            mood_conv2d_dims dd = d, du = {f->B, sp->rank, OH, OW, c->out, 1, 1, 0};
            dd.out_c = sp->rank;
            f->flop += 2.0 * (double)f->B * ohw * sp->rank * ((double)c->in * c->k * c->k + c->out);
            TRY(getf(f, &t1, (size_t)f->B * sp->rank * ohw));
            TRY(mood_cuda_op_conv2d(f->ctx, t1, x, down, NULL, &dd));
            TRY(mood_cuda_op_conv2d(f->ctx, t2, t1, up, NULL, &du));
            put(f, t1);
        } else {
            f->flop += 2.0 * (double)n_out * c->in * c->k * c->k;
            TRY(mood_cuda_op_conv2d(f->ctx, t2, x, up, NULL, &d));
        }
        TRY(mood_cuda_op_axpy(f->ctx, out, t2, sp->scale, n_out));
        put(f, t2);
    }
    put_side_in(f, x, inp);
    return 0;
}

/* out (N x l->out, of out_dt: fp32 or the pass's type; fp32 in fp32 mode) = inp (N x l->in, of
 * the pass's type) W^T + b + the layer's side paths. A 16-bit output with side paths is summed
 * in fp32 and rounded once. */
static int lin_dt(cu_pass *f, const u_lin *l, void *out, mood_cuda_dtype out_dt, const void *inp,
                  size_t N)
{
    const void *w = f->u->w[l->w];
    size_t n = N * (size_t)l->out;
    float *acc = NULL;
    f->flop += 2.0 * (double)N * l->in * l->out;
    if (f->dt == MOOD_CUDA_F32) {
        TRY(mood_cuda_op_linear(f->ctx, out, inp, w, P32(f, l->b), N, l->in, l->out));
        return lin_sides(f, l, out, inp, N);
    }
    if (out_dt == MOOD_CUDA_F32 || f->m->params[l->w].side_n == 0) {
        TRY(mood_cuda_op_linear_ex(f->ctx, out, out_dt, inp, w, f->dt, P32(f, l->b), N, l->in,
                                   l->out));
        return out_dt == MOOD_CUDA_F32 ? lin_sides(f, l, out, inp, N) : 0;
    }
    TRY(getf(f, &acc, n));
    TRY(mood_cuda_op_linear_ex(f->ctx, acc, MOOD_CUDA_F32, inp, w, f->dt, P32(f, l->b), N, l->in,
                               l->out));
    TRY(lin_sides(f, l, acc, inp, N));
    TRY(mood_cuda_op_convert(f->ctx, out, out_dt, acc, MOOD_CUDA_F32, n));
    put(f, acc);
    return 0;
}

/* out (N x l->out) = Linear(inp (N x l->in)), both fp32 (unet_cuda_internal.h). */
int mood__cuda_unet_lin(cu_pass *f, const u_lin *l, float *out, const float *inp, size_t N)
{
    const void *x = NULL;
    TRY(in_dt(f, &x, inp, N * (size_t)l->in));
    TRY(lin_dt(f, l, out, MOOD_CUDA_F32, x, N));
    put_dt(f, x, inp);
    return 0;
}

/* out (B x out x OH x OW) = conv(inp (B x in x H x W)) + b + the layer's side paths, fp32; in
 * 16-bit mode the input is rounded and the convolution's output comes back from 16 bits (the
 * side paths are added in fp32 after). */
int mood__cuda_unet_conv(cu_pass *f, const u_conv *c, float *out, const float *inp, int H, int W)
{
    mood_conv2d_dims d = {f->B, c->in, H, W, c->out, c->k, c->stride, c->pad};
    size_t n_in = (size_t)f->B * c->in * H * W;
    size_t n_out = (size_t)f->B * c->out * mood_op_conv2d_out_h(&d) * mood_op_conv2d_out_w(&d);
    const void *w = f->u->w[c->w], *x = NULL;
    void *y = NULL;
    f->flop += 2.0 * (double)n_out * c->in * c->k * c->k;
    if (f->dt == MOOD_CUDA_F32) {
        TRY(mood_cuda_op_conv2d(f->ctx, out, inp, w, P32(f, c->b), &d));
        return conv_sides(f, c, out, inp, H, W);
    }
    TRY(in_dt(f, &x, inp, n_in));
    TRY(get(f, &y, n_out * 2));
    TRY(mood_cuda_op_conv2d_ex(f->ctx, y, x, w, f->dt, P32(f, c->b), &d));
    TRY(mood_cuda_op_convert(f->ctx, out, MOOD_CUDA_F32, y, f->dt, n_out));
    put(f, y);
    TRY(conv_sides(f, c, out, x, H, W));
    put_dt(f, x, inp);
    return 0;
}

/* GroupNorm over B x C x HW (groups > 0) or LayerNorm over rows x C; out may be inp; stats NULL
 * or mean then rstd (unet_cuda_internal.h). */
int mood__cuda_unet_norm(cu_pass *f, const u_norm *nm, float *out, const float *inp, size_t rows,
                         size_t HW, float *stats)
{
    size_t ns = nm->groups ? (size_t)f->B * (size_t)nm->groups : rows;
    float *mean = stats, *rstd = stats ? stats + ns : NULL;
    if (nm->groups)
        return mood_cuda_op_group_norm(f->ctx, out, inp, P32(f, nm->w), P32(f, nm->b), f->B, nm->C,
                                       HW, nm->groups, nm->eps, mean, rstd);
    return mood_cuda_op_layer_norm(f->ctx, out, inp, P32(f, nm->w), P32(f, nm->b), rows, nm->C,
                                   nm->eps, mean, rstd);
}

/* ----- ResnetBlock2D ------------------------------------------------------------------------ */

/* out (B x out x H x W) = ResnetBlock2D(inp); out must not be inp. */
static int resnet(cu_pass *f, const u_resnet *r, float *out, const float *inp, int H, int W)
{
    size_t HW = (size_t)H * W, B = (size_t)f->B;
    size_t n_in = B * r->in * HW, n_out = B * r->out * HW;
    float *n1 = NULL, *h = NULL, *tp = NULL, *sc = NULL;
    TRY(getf(f, &n1, n_in));
    TRY(mood__cuda_unet_norm(f, &r->norm1, n1, inp, 0, HW, NULL));
    TRY(mood_cuda_op_silu(f->ctx, n1, n1, n_in));
    TRY(getf(f, &h, n_out));
    TRY(mood__cuda_unet_conv(f, &r->conv1, h, n1, H, W));
    put(f, n1);
    TRY(getf(f, &tp, B * r->out)); /* time_emb_proj(silu(emb)) */
    TRY(lin_dt(f, &r->temb, tp, MOOD_CUDA_F32, f->emb_dt, B));
    TRY(mood_cuda_op_add_channel_bias(f->ctx, h, tp, f->B, r->out, HW));
    put(f, tp);
    TRY(mood__cuda_unet_norm(f, &r->norm2, h, h, 0, HW, NULL));
    TRY(mood_cuda_op_silu(f->ctx, h, h, n_out));
    TRY(mood__cuda_unet_conv(f, &r->conv2, out, h, H, W));
    put(f, h);
    if (r->shortcut.w < 0) {
        TRY(mood_cuda_op_add_inplace(f->ctx, out, inp, n_out));
    } else {
        TRY(getf(f, &sc, n_out));
        TRY(mood__cuda_unet_conv(f, &r->shortcut, sc, inp, H, W));
        TRY(mood_cuda_op_add_inplace(f->ctx, out, sc, n_out));
        put(f, sc);
    }
    /* output_scale_factor: the mid block's mid_block_scale_factor (down/up resnets keep 1) */
    return r->out_scale != 1.0f ? mood_cuda_op_div_scalar(f->ctx, out, r->out_scale, n_out) : 0;
}

/* ----- Transformer2DModel ------------------------------------------------------------------- */

/* out (N x inner, fp32) = to_out(attention(to_q(xn), to_k(kv), to_v(kv))) for N = B*HW tokens
 * xn (fp32). kv: the context in the pass's type (cross-attention), or NULL: xn (self). */
static int attend(cu_pass *f, const u_transformer *t, const u_lin *lq, const u_lin *lk,
                  const u_lin *lv, const u_lin *lo, float *out, const float *xn, const void *kv,
                  size_t HW)
{
    size_t D = (size_t)t->inner, N = (size_t)f->B * HW, es = dt_size(f->dt);
    size_t Tk = kv ? (size_t)f->L : HW, NK = (size_t)f->B * Tk;
    int hd = t->inner / t->heads;
    const void *x = NULL;
    void *q = NULL, *k = NULL, *v = NULL, *a = NULL;
    TRY(in_dt(f, &x, xn, N * D));
    TRY(get(f, &q, N * D * es));
    TRY(get(f, &k, NK * D * es));
    TRY(get(f, &v, NK * D * es));
    TRY(lin_dt(f, lq, q, f->dt, x, N));
    TRY(lin_dt(f, lk, k, f->dt, kv ? kv : x, NK));
    TRY(lin_dt(f, lv, v, f->dt, kv ? kv : x, NK));
    put_dt(f, x, xn);
    TRY(get(f, &a, N * D * es));
    f->flop += 4.0 * (double)f->B * t->heads * (double)HW * (double)Tk * hd;
    if (f->dt == MOOD_CUDA_F32)
        TRY(mood_cuda_op_attention(f->ctx, a, q, k, v, f->B, t->heads, (int)HW, (int)Tk, hd, 0,
                                   0.0f));
    else
        TRY(mood_cuda_op_attention_ex(f->ctx, a, q, k, v, f->dt, f->B, t->heads, (int)HW, (int)Tk,
                                      hd, 0, 0.0f));
    put(f, q), put(f, k), put(f, v);
    TRY(lin_dt(f, lo, out, MOOD_CUDA_F32, a, N));
    put(f, a);
    return 0;
}

/* out (N x inner) = ff.net.2(geglu(ff.net.0.proj(xn))). */
static int feed_forward(cu_pass *f, const u_transformer *t, const u_tblock *k, float *out,
                        const float *xn, size_t N)
{
    size_t D = (size_t)t->inner;
    float *h = NULL, *g = NULL;
    TRY(getf(f, &h, N * 8 * D));
    TRY(mood__cuda_unet_lin(f, &k->ff1, h, xn, N));
    TRY(getf(f, &g, N * 4 * D));
    TRY(mood_cuda_op_geglu(f->ctx, g, h, N, 4 * t->inner));
    put(f, h);
    TRY(mood__cuda_unet_lin(f, &k->ff2, out, g, N));
    put(f, g);
    return 0;
}

/* BasicTransformerBlock on x (N x inner tokens), in place: self-attention, cross-attention over
 * the context, GEGLU feed-forward, each after its LayerNorm and added to the stream. */
static int tblock(cu_pass *f, const u_transformer *t, const u_tblock *k, float *x, size_t HW)
{
    size_t N = (size_t)f->B * HW, n = N * (size_t)t->inner;
    float *ln = NULL, *tmp = NULL;
    TRY(getf(f, &ln, n));
    TRY(getf(f, &tmp, n));
    TRY(mood__cuda_unet_norm(f, &k->norm1, ln, x, N, 0, NULL));
    TRY(attend(f, t, &k->q1, &k->k1, &k->v1, &k->o1, tmp, ln, NULL, HW));
    TRY(mood_cuda_op_add_inplace(f->ctx, x, tmp, n));
    TRY(mood__cuda_unet_norm(f, &k->norm2, ln, x, N, 0, NULL));
    TRY(attend(f, t, &k->q2, &k->k2, &k->v2, &k->o2, tmp, ln, f->ctx_dt, HW));
    TRY(mood_cuda_op_add_inplace(f->ctx, x, tmp, n));
    TRY(mood__cuda_unet_norm(f, &k->norm3, ln, x, N, 0, NULL));
    TRY(feed_forward(f, t, k, tmp, ln, N));
    TRY(mood_cuda_op_add_inplace(f->ctx, x, tmp, n));
    put(f, ln), put(f, tmp);
    return 0;
}

/* h (B x C x H x W) = Transformer2DModel(h), in place: GroupNorm, proj_in on tokens, the
 * blocks, proj_out, back to NCHW, plus the residual. */
static int transformer(cu_pass *f, const u_transformer *t, float *h, int H, int W)
{
    size_t HW = (size_t)H * W, N = (size_t)f->B * HW, n = N * (size_t)t->C;
    float *gn = NULL, *tok = NULL, *x = NULL;
    TRY(getf(f, &gn, n));
    TRY(mood__cuda_unet_norm(f, &t->norm, gn, h, 0, HW, NULL));
    TRY(getf(f, &tok, n));
    TRY(mood_cuda_op_nchw_to_nhwc(f->ctx, tok, gn, f->B, t->C, HW));
    TRY(getf(f, &x, N * (size_t)t->inner));
    TRY(mood__cuda_unet_lin(f, &t->proj_in, x, tok, N));
    for (int d = 0; d < t->depth; d++)
        TRY(tblock(f, t, &t->blocks[d], x, HW));
    TRY(mood__cuda_unet_lin(f, &t->proj_out, tok, x, N));
    put(f, x);
    TRY(mood_cuda_op_nhwc_to_nchw(f->ctx, gn, tok, f->B, t->C, HW));
    put(f, tok);
    TRY(mood_cuda_op_add_inplace(f->ctx, h, gn, n));
    put(f, gn);
    return 0;
}

/* ----- blocks ------------------------------------------------------------------------------- */

/* A new skip connection (B x C x H x W); it stays until an up block reads it. */
static int push_skip(cu_pass *f, float **out, int C, int H, int W)
{
    int i = f->n_skip;
    if (i == CU_MAX_SKIPS)
        return mood_error_set(MOOD_EINVAL, "cuda unet: more than %d skip connections",
                              CU_MAX_SKIPS);
    TRY(getf(f, out, (size_t)f->B * C * H * W));
    f->skip[i] = *out, f->skip_c[i] = C, f->skip_h[i] = H, f->skip_w[i] = W;
    f->n_skip++;
    return 0;
}

/* Down block: each resnet (+ transformer) output and the downsampler's become skips; the input
 * is the newest skip. *H, *W follow the downsampler. */
static int down(cu_pass *f, const u_block *bl, int *H, int *W)
{
    float *out = NULL;
    for (int j = 0; j < bl->n; j++) {
        const float *in = f->skip[f->n_skip - 1];
        TRY(push_skip(f, &out, bl->res[j].out, *H, *W));
        TRY(resnet(f, &bl->res[j], out, in, *H, *W));
        if (bl->has_attn)
            TRY(transformer(f, &bl->attn[j], out, *H, *W));
    }
    if (bl->sampler.w >= 0) {
        const u_conv *c = &bl->sampler;
        mood_conv2d_dims d = {f->B, c->in, *H, *W, c->out, c->k, c->stride, c->pad};
        const float *in = f->skip[f->n_skip - 1];
        int OH = mood_op_conv2d_out_h(&d), OW = mood_op_conv2d_out_w(&d);
        TRY(push_skip(f, &out, c->out, OH, OW));
        TRY(mood__cuda_unet_conv(f, c, out, in, *H, *W));
        *H = OH, *W = OW;
    }
    return 0;
}

/* Upsample2D: *h (B x C x H x W) -> nearest to (OH, OW) -> conv 3x3; *h is replaced. */
static int upsample(cu_pass *f, const u_conv *c, float **h, int H, int W, int OH, int OW)
{
    int BC = f->B * c->in;
    float *tmp = NULL, *out = NULL;
    TRY(getf(f, &tmp, (size_t)BC * OH * OW));
    if (OH == 2 * H && OW == 2 * W)
        TRY(mood_cuda_op_upsample_nearest2x(f->ctx, tmp, *h, BC, H, W));
    else
        TRY(mood_cuda_op_upsample_nearest(f->ctx, tmp, *h, BC, H, W, OH, OW));
    put(f, *h);
    TRY(getf(f, &out, (size_t)f->B * c->out * OH * OW));
    TRY(mood__cuda_unet_conv(f, c, out, tmp, OH, OW));
    put(f, tmp);
    *h = out;
    return 0;
}

/* Up block: [*h | newest skip] through each resnet (+ transformer), then the upsampler to the
 * next skip's size. *h and each skip are released once read. */
static int up(cu_pass *f, const u_block *bl, float **h, int *H, int *W)
{
    for (int j = 0; j < bl->n && f->n_skip > 0; j++) {
        int s = --f->n_skip, hc = bl->res[j].in - f->skip_c[s];
        size_t HW = (size_t)*H * *W;
        float *cat = NULL, *out = NULL;
        TRY(getf(f, &cat, (size_t)f->B * bl->res[j].in * HW));
        TRY(mood_cuda_op_concat_channels(f->ctx, cat, *h, hc, f->skip[s], f->skip_c[s], f->B, HW));
        if (*h != f->skip[s]) /* without a mid block the first h is the newest skip */
            put(f, *h);
        put(f, f->skip[s]);
        *h = NULL;
        TRY(getf(f, &out, (size_t)f->B * bl->res[j].out * HW));
        TRY(resnet(f, &bl->res[j], out, cat, *H, *W));
        put(f, cat);
        if (bl->has_attn)
            TRY(transformer(f, &bl->attn[j], out, *H, *W));
        *h = out;
    }
    if (bl->sampler.w >= 0 && f->n_skip > 0) {
        int s = f->n_skip - 1;
        TRY(upsample(f, &bl->sampler, h, *H, *W, f->skip_h[s], f->skip_w[s]));
        *H = f->skip_h[s], *W = f->skip_w[s];
    }
    return 0;
}

/* The mid block on the newest skip, into *h (the skip itself when there is no mid block). */
static int mid(cu_pass *f, float **h, int H, int W)
{
    const u_block *bl = &f->m->mid;
    float *in = f->skip[f->n_skip - 1], *a = NULL, *b = NULL;
    size_t n = (size_t)f->B * f->skip_c[f->n_skip - 1] * H * W;
    if (!bl->n) {
        *h = in;
        return 0;
    }
    TRY(getf(f, &a, n));
    TRY(resnet(f, &bl->res[0], a, in, H, W));
    TRY(transformer(f, &bl->attn[0], a, H, W));
    TRY(getf(f, &b, n));
    TRY(resnet(f, &bl->res[1], b, a, H, W));
    put(f, a);
    *h = b;
    return 0;
}

/* ----- time embedding and head -------------------------------------------------------------- */

/* emb (B x T) += add_embedding([text_embeds | timestep_embedding(time_ids)]): SDXL's text_time. */
static int added_embedding(cu_pass *f, float *emb, const float *text_embeds, const float *time_ids)
{
    const mood_unet_config *c = &f->m->cfg;
    size_t B = (size_t)f->B, T = (size_t)c->time_embed_dim;
    int A6 = 6 * c->addition_time_embed_dim, Pd = c->projection_class_embeddings_input_dim;
    float *ids = NULL, *in = NULL, *h = NULL, *aug = NULL;
    TRY(getf(f, &ids, B * A6));
    TRY(mood_cuda_op_timestep_embedding(f->ctx, ids, time_ids, 6 * f->B, c->addition_time_embed_dim,
                                        c->flip_sin_to_cos, c->freq_shift, 10000.0f));
    TRY(getf(f, &in, B * Pd));
    TRY(mood_cuda_op_concat_channels(f->ctx, in, text_embeds, Pd - A6, ids, A6, f->B, 1));
    put(f, ids);
    TRY(getf(f, &h, B * T));
    TRY(mood__cuda_unet_lin(f, &f->m->add1, h, in, B));
    put(f, in);
    TRY(mood_cuda_op_silu(f->ctx, h, h, B * T));
    TRY(getf(f, &aug, B * T));
    TRY(mood__cuda_unet_lin(f, &f->m->add2, aug, h, B));
    put(f, h);
    TRY(mood_cuda_op_add_inplace(f->ctx, emb, aug, B * T));
    put(f, aug);
    return 0;
}

/* f->emb_act (B x T, kept for the pass) = silu(time embedding [+ added embedding]). */
static int time_embedding(cu_pass *f, const float *t, const float *text_embeds,
                          const float *time_ids)
{
    const mood_unet_config *c = &f->m->cfg;
    size_t B = (size_t)f->B, T = (size_t)c->time_embed_dim;
    int C0 = c->block_out_channels[0];
    float *tp = NULL, *h = NULL, *emb = NULL;
    TRY(getf(f, &tp, B * C0));
    TRY(mood_cuda_op_timestep_embedding(f->ctx, tp, t, f->B, C0, c->flip_sin_to_cos, c->freq_shift,
                                        10000.0f));
    TRY(getf(f, &h, B * T));
    TRY(mood__cuda_unet_lin(f, &f->m->time1, h, tp, B));
    put(f, tp);
    TRY(mood_cuda_op_silu(f->ctx, h, h, B * T));
    TRY(getf(f, &emb, B * T));
    TRY(mood__cuda_unet_lin(f, &f->m->time2, emb, h, B));
    put(f, h);
    if (c->addition_embed_text_time)
        TRY(added_embedding(f, emb, text_embeds, time_ids));
    TRY(mood_cuda_op_silu(f->ctx, emb, emb, B * T));
    f->emb_act = emb;
    return in_dt(f, &f->emb_dt, emb, B * T);
}

/* out = conv_out(silu(conv_norm_out(h))). */
static int head(cu_pass *f, float *out, const float *h, int H, int W)
{
    const mood_unet *m = f->m;
    size_t HW = (size_t)H * W, n = (size_t)f->B * m->cfg.block_out_channels[0] * HW;
    float *g = NULL;
    TRY(getf(f, &g, n));
    TRY(mood__cuda_unet_norm(f, &m->norm_out, g, h, 0, HW, NULL));
    TRY(mood_cuda_op_silu(f->ctx, g, g, n));
    TRY(mood__cuda_unet_conv(f, &m->conv_out, out, g, H, W));
    put(f, g);
    return 0;
}

static int unet_run(cu_pass *f, float *out, const float *x, const float *t, const float *context,
                    const float *text_embeds, const float *time_ids, int H, int W)
{
    const mood_unet *m = f->m;
    const mood_unet_config *c = &m->cfg;
    size_t n_ctx = (size_t)f->B * f->L * c->cross_attention_dim;
    float *h = NULL;
    TRY(time_embedding(f, t, text_embeds, time_ids));
    TRY(in_dt(f, &f->ctx_dt, context, n_ctx));
    TRY(push_skip(f, &h, c->block_out_channels[0], H, W));
    TRY(mood__cuda_unet_conv(f, &m->conv_in, h, x, H, W));
    for (int i = 0; i < c->n_blocks; i++)
        TRY(down(f, &m->down[i], &H, &W));
    TRY(mid(f, &h, H, W));
    for (int i = 0; i < c->n_blocks; i++)
        TRY(up(f, &m->up[i], &h, &H, &W));
    return head(f, out, h, H, W);
}

/* One forward of the model's layers on device buffers (the pass, uncaptured or recorded). */
static int run_pass(mood_cuda_unet *u, float *out, const float *x, const float *t,
                    const float *context, int B, int H, int W, int L, const float *text_embeds,
                    const float *time_ids)
{
    cu_pass f;
    memset(&f, 0, sizeof f);
    f.u = u, f.ctx = u->ctx, f.m = u->m, f.dt = u->dt, f.B = B, f.L = L;
    int err = unet_run(&f, out, x, t, context, text_embeds, time_ids, H, W);
    put_all(&f);
    u->flop = f.flop;
    return err;
}

/* Floats of the forward's inputs x, t, context, text_embeds, time_ids (the last two 0 without
 * text_time) and of its output. */
static void io_sizes(const mood_unet *m, int B, int H, int W, int L, size_t n[5], size_t *n_out)
{
    const mood_unet_config *c = &m->cfg;
    int sdxl = c->addition_embed_text_time;
    n[0] = (size_t)B * c->in_channels * H * W, n[1] = (size_t)B;
    n[2] = (size_t)B * L * c->cross_attention_dim;
    n[3] = sdxl ? (size_t)B *
                      (c->projection_class_embeddings_input_dim - 6 * c->addition_time_embed_dim)
                : 0;
    n[4] = sdxl ? (size_t)B * 6 : 0;
    *n_out = (size_t)B * c->out_channels * H * W;
}

/* ----- CUDA graphs ------------------------------------------------------------------------- */

static int graphs_usable(const mood_cuda_unet *u)
{
    return !u->graphs_off && !u->graphs_failed;
}

/* Frees e's graph (waiting for a pending replay) with its reserved blocks, staging included. */
static void graph_clear(cu_graph *e)
{
    mood_cuda_graph_free(e->g);
    memset(e, 0, sizeof *e);
}

static void graphs_drop(mood_cuda_unet *u)
{
    for (int i = 0; i < MOOD_CUDA_UNET_GRAPHS; i++)
        if (u->graphs[i].used)
            graph_clear(&u->graphs[i]);
}

/* The entry of a shape, or NULL. */
static cu_graph *graph_find(mood_cuda_unet *u, int B, int H, int W, int L, int sdxl)
{
    for (int i = 0; i < MOOD_CUDA_UNET_GRAPHS; i++) {
        cu_graph *e = &u->graphs[i];
        if (e->used && e->B == B && e->H == H && e->W == W && e->L == L && e->sdxl == sdxl)
            return e;
    }
    return NULL;
}

/* A free entry, making one by dropping the least recently used. */
static cu_graph *graph_slot(mood_cuda_unet *u)
{
    cu_graph *lru = &u->graphs[0];
    for (int i = 0; i < MOOD_CUDA_UNET_GRAPHS; i++) {
        cu_graph *e = &u->graphs[i];
        if (!e->used)
            return e;
        if (e->last < lru->last)
            lru = e;
    }
    graph_clear(lru);
    return lru;
}

/* Records the pass of e's shape into a graph that reads e's inputs and writes its output, all
 * reserved blocks of the graph (allocated here, inside the reservation). */
static int graph_record(mood_cuda_unet *u, cu_graph *e)
{
    mood_cuda_graph *g = NULL;
    void *p = NULL;
    int err = mood_cuda_graph_new(u->ctx, &g);
    if (err < 0)
        return err;
    for (int i = 0; i < 5 && err == 0; i++)
        if (e->n_in[i] && (err = mood_cuda_alloc(u->ctx, &p, e->n_in[i] * sizeof(float))) == 0)
            e->in[i] = p;
    if (err == 0 && (err = mood_cuda_alloc(u->ctx, &p, e->n_out * sizeof(float))) == 0)
        e->out = p;
    if (err == 0 && (err = mood_cuda_graph_capture(g)) == 0)
        err = run_pass(u, e->out, e->in[0], e->in[1], e->in[2], e->B, e->H, e->W, e->L, e->in[3],
                       e->in[4]);
    if ((err = mood_cuda_graph_finish(g, err)) < 0) {
        mood_cuda_graph_free(g); /* its staging blocks with it */
        memset(e->in, 0, sizeof e->in);
        e->out = NULL;
        return err;
    }
    e->g = g;
    e->flop = u->flop;
    u->graph_captures++;
    return 0;
}

/* One replay: the inputs into e's buffers, the graph, the output out of e's buffer. */
static int graph_launch(mood_cuda_unet *u, cu_graph *e, float *out, const float *const src[5])
{
    for (int i = 0; i < 5; i++)
        if (e->n_in[i])
            TRY(mood_cuda_copy(u->ctx, e->in[i], src[i], e->n_in[i] * sizeof(float)));
    TRY(mood_cuda_graph_launch(e->g));
    TRY(mood_cuda_copy(u->ctx, out, e->out, e->n_out * sizeof(float)));
    u->flop = e->flop;
    u->graph_replays++;
    return 0;
}

/* Remembers a failure (graphs off for good) and drops the graphs. */
static void graphs_fail(mood_cuda_unet *u, int err)
{
    u->graphs_failed = err;
    snprintf(u->graphs_error, sizeof u->graphs_error, "%s", mood_error_last());
    graphs_drop(u);
}

/* The forward through the shape's graph: 0 when it ran, 1 when the caller runs the pass (the
 * shape's warm-up, or a failure: graphs are then off). src: x, t, context, text_embeds and
 * time_ids (NULL when not used) on the device. */
static int graph_forward(mood_cuda_unet *u, float *out, const float *const src[5], int B, int H,
                         int W, int L)
{
    int sdxl = src[3] != NULL, err = 0;
    cu_graph *e = graph_find(u, B, H, W, L, sdxl);
    if (e && e->g && mood_cuda_graph_stale(e->g)) /* other kernels now: warm up, record again */
        graph_clear(e), e = NULL;
    if (!e) { /* the shape's first forward: the warm-up runs uncaptured */
        e = graph_slot(u);
        e->used = 1, e->B = B, e->H = H, e->W = W, e->L = L, e->sdxl = sdxl;
        io_sizes(u->m, B, H, W, L, e->n_in, &e->n_out);
        e->last = ++u->graph_tick;
        return 1;
    }
    e->last = ++u->graph_tick;
    if ((!e->g && (err = graph_record(u, e)) < 0) || (err = graph_launch(u, e, out, src)) < 0) {
        graphs_fail(u, err);
        return 1;
    }
    return 0;
}

void mood_cuda_unet_graph_stats_get(const mood_cuda_unet *u, mood_cuda_unet_graph_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!u)
        return;
    out->enabled = graphs_usable(u);
    out->failed = u->graphs_failed;
    snprintf(out->error, sizeof out->error, "%s", u->graphs_error);
    for (int i = 0; i < MOOD_CUDA_UNET_GRAPHS; i++)
        if (u->graphs[i].g) {
            out->cached++;
            out->bytes += mood_cuda_graph_bytes(u->graphs[i].g);
        }
    out->captures = u->graph_captures, out->replays = u->graph_replays;
}

int mood_cuda_unet_set_graphs(mood_cuda_unet *u, int on)
{
    if (!u)
        return 0;
    int prev = !u->graphs_off;
    u->graphs_off = !on;
    if (!on)
        graphs_drop(u);
    return prev;
}

void mood_cuda_unet_drop_graphs(mood_cuda_unet *u)
{
    if (u)
        graphs_drop(u);
}

/* ----- entry points ------------------------------------------------------------------------- */

int mood__cuda_unet_check_forward(const mood_cuda_unet *u, const float *out, const float *x,
                                  const float *t, const float *ctx, int B, int H, int W, int L,
                                  const float *text_embeds, const float *time_ids)
{
    if (!u || !out || !x || !t || !ctx)
        return mood_error_set(MOOD_EINVAL,
                              "cuda unet: forward needs out, x, timesteps and context");
    if (u->m->cfg.addition_embed_text_time && (!text_embeds || !time_ids))
        return mood_error_set(MOOD_EINVAL, "cuda unet: addition_embed_type \"text_time\" (SDXL) "
                                           "needs text_embeds and time_ids");
    if (B < 1 || H < 1 || W < 1 || L < 1 || (int64_t)B * H * W > INT32_MAX / 4 ||
        (int64_t)B * L > INT32_MAX / 4)
        return mood_error_set(MOOD_EINVAL, "cuda unet: batch %d, size %dx%d, %d context tokens", B,
                              H, W, L);
    return 0;
}

int mood_cuda_unet_forward_dev(mood_cuda_unet *u, float *out, const float *x,
                               const float *timesteps, const float *context, int B, int H, int W,
                               int ctx_len, const float *text_embeds, const float *time_ids)
{
    int err = mood__cuda_unet_check_forward(u, out, x, timesteps, context, B, H, W, ctx_len,
                                            text_embeds, time_ids);
    if (err < 0 || (err = mood__cuda_unet_sides_ready(u)) < 0)
        return err;
    int sdxl = u->m->cfg.addition_embed_text_time;
    const float *src[5] = {x, timesteps, context, sdxl ? text_embeds : NULL,
                           sdxl ? time_ids : NULL};
    if (graphs_usable(u) && graph_forward(u, out, src, B, H, W, ctx_len) == 0)
        return 0;
    return run_pass(u, out, x, timesteps, context, B, H, W, ctx_len, src[3], src[4]);
}

/* Device copies of the host inputs: x, t, context[, text_embeds, time_ids] in d[0..4]. */
static int upload_inputs(mood_cuda_unet *u, float *d[5], const float *const h[5], const size_t n[5])
{
    for (int i = 0; i < 5; i++) {
        void *p = NULL;
        if (!h[i])
            continue;
        TRY(mood_cuda_alloc(u->ctx, &p, n[i] * sizeof(float)));
        d[i] = p;
        TRY(mood_cuda_upload(u->ctx, p, h[i], n[i] * sizeof(float)));
    }
    return 0;
}

int mood_cuda_unet_forward(mood_cuda_unet *u, float *out, const float *x, const float *timesteps,
                           const float *context, int B, int H, int W, int ctx_len,
                           const float *text_embeds, const float *time_ids)
{
    const mood_unet_config *c;
    float *d[5] = {NULL, NULL, NULL, NULL, NULL};
    void *dout = NULL;
    size_t n[5], n_out;
    int err = mood__cuda_unet_check_forward(u, out, x, timesteps, context, B, H, W, ctx_len,
                                            text_embeds, time_ids);
    if (err < 0)
        return err;
    c = &u->m->cfg;
    const float *h[5] = {x, timesteps, context, c->addition_embed_text_time ? text_embeds : NULL,
                         c->addition_embed_text_time ? time_ids : NULL};
    io_sizes(u->m, B, H, W, ctx_len, n, &n_out);
    if ((err = upload_inputs(u, d, h, n)) == 0 &&
        (err = mood_cuda_alloc(u->ctx, &dout, n_out * sizeof(float))) == 0 &&
        (err = mood_cuda_unet_forward_dev(u, dout, d[0], d[1], d[2], B, H, W, ctx_len, d[3],
                                          d[4])) == 0)
        err = mood_cuda_download(u->ctx, out, dout, n_out * sizeof(float));
    mood_cuda_free(u->ctx, dout);
    for (int i = 0; i < 5; i++)
        mood_cuda_free(u->ctx, d[i]);
    return err;
}
