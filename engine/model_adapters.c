/*
 * model_adapters.c: applying a set of adapters (LoRA and every other flavour lora/ reads) to a
 * loaded model, by merging or as runtime side paths (mood_model_set_adapters in mood/gen.h).
 *
 * Merge: each touched weight is changed in place by mood_adapter_apply, and remembered; the next
 * set first reads the remembered weights back from the mapped weights file (exact: the float32
 * conversion of the file's values is what loading did), so switching sets costs only the
 * touched tensors and never accumulates rounding.
 *
 * Runtime: a plain LoRA/LoCon module becomes a low-rank side path (down, up with the module's
 * scale folded in, the user multiplier as the path's scale); any other module (LoHa, LoKr,
 * DoRA, OFT, ...) becomes a dense path holding its effective change W'(m) - W, so both modes
 * compute the same W'. Targets that are not Linear/Conv weights (norms, biases) are merged in
 * both modes.
 *
 * Every file is opened and checked (format, family) before the model changes, so a bad file
 * leaves the previous set in place; a failure while applying leaves the model without adapters.
 *
 * SDXL's two text encoders share their Hugging Face weight names, so every module and side path
 * carries its part (MOOD_PART_TE1: CLIP-L, MOOD_PART_TE2: OpenCLIP bigG) and is looked up in
 * that encoder. A diffusers folder's UNet weights also answer to their LDM/SGM names (kohya's
 * SDXL LoRAs use them), when the UNet has the standard two resnets per level.
 */
#include <cblas.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/args.h"
#include "engine/model_impl.h"

/* Where one module lands in the model. */
typedef struct resolved {
    float *w;                    /* the (slice of the) weight, NULL when unmatched */
    float *bias;                 /* its bias (slice), or NULL */
    const mood_st_tensor *src_w; /* pristine values of the whole tensor (fused: all slices) */
    const mood_st_tensor *src_b;
    float *restore_w, *restore_b; /* where src_w / src_b are read back to */
    char name[256];               /* model weight name ("...to_q.weight") */
    int ndim;                     /* 2 Linear, 4 Conv, 1 norm */
    mood_part part;               /* which model holds it */
} resolved;

/* The text encoder of part p (NULL for the UNet, or TE2 of a model with one encoder). */
static mood_clip *encoder_of(mood_model *m, mood_part p)
{
    return p == MOOD_PART_TE1 ? m->clip : p == MOOD_PART_TE2 ? m->clip2 : NULL;
}

/* ----- name resolution -------------------------------------------------------------------- */

/* The key of module weight/bias `name` ("<model_name>.weight") in the model's own file. */
static const mood_st_tensor *source_tensor(const mood_model *m, const mood_module_info *mi,
                                           const char *suffix)
{
    char key[300];
    if (!m->folder) {
        /* single file: the target key the adapter resolved against (".weight" swapped) */
        size_t n = strlen(mi->target);
        if (strcmp(suffix, "weight") == 0)
            return mood_st_find(m->unet_file, mi->target);
        if (n < 7 ||
            (size_t)snprintf(key, sizeof key, "%.*s_bias", (int)(n - 7), mi->target) >= sizeof key)
            return NULL;
        if (mi->slice >= 0) /* OpenCLIP: attn.in_proj_weight -> attn.in_proj_bias */
            return mood_st_find(m->unet_file, key);
        snprintf(key, sizeof key, "%.*s.bias", (int)(n - 7), mi->target);
        return mood_st_find(m->unet_file, key);
    }
    if (mi->part == MOOD_PART_UNET) {
        snprintf(key, sizeof key, "%s.%s", mi->model_name, suffix);
        return mood_st_find(m->unet_file, key);
    }
    const char *name = mi->model_name;
    int te2 = mi->part == MOOD_PART_TE2;
    if ((te2 ? m->te2_strip_text_model : m->te_strip_text_model) &&
        strncmp(name, "text_model.", 11) == 0)
        name += 11;
    snprintf(key, sizeof key, "%s.%s", name, suffix);
    return mood_st_find(te2 ? m->te2_file : m->te_file, key);
}

/* Looks module mi up in the model. r->w stays NULL when the model has no such weight. */
static void resolve(resolved *r, mood_model *m, const mood_module_info *mi, int64_t numel)
{
    char bname[260];
    int64_t shape[4], bshape[4];
    int bndim = 0;
    mood_clip *clip = encoder_of(m, mi->part);
    memset(r, 0, sizeof *r);
    if (!mi->model_name || (mi->part != MOOD_PART_UNET && !clip))
        return;
    r->part = mi->part;
    snprintf(r->name, sizeof r->name, "%s.weight", mi->model_name);
    snprintf(bname, sizeof bname, "%s.bias", mi->model_name);
    if (mi->part == MOOD_PART_UNET) {
        r->w = mood_unet_weight(m->unet, r->name, &r->ndim, shape);
        r->bias = mood_unet_weight(m->unet, bname, &bndim, bshape);
    } else {
        r->w = mood_clip_weight(clip, r->name, &r->ndim, shape);
        r->bias = mood_clip_weight(clip, bname, &bndim, bshape);
    }
    r->src_w = source_tensor(m, mi, "weight");
    r->src_b = r->bias ? source_tensor(m, mi, "bias") : NULL;
    if (!r->w || !r->src_w) {
        r->w = NULL;
        return;
    }
    /* a fused q/k/v tensor is restored whole, from the first slice's start */
    r->restore_w = r->w - (mi->slice > 0 ? mi->slice * numel : 0);
    r->restore_b = r->bias ? r->bias - (mi->slice > 0 ? mi->slice * bshape[0] : 0) : NULL;
    if (!r->src_b)
        r->bias = r->restore_b = NULL;
}

/* ----- remembering and restoring ---------------------------------------------------------- */

static int remember(mood_model *m, float *w, const mood_st_tensor *src)
{
    model_patch *p;
    for (size_t i = 0; i < m->n_patches; i++)
        if (m->patches[i].w == w)
            return 0;
    if (mood_array_reserve((void **)&m->patches, &m->cap_patches, m->n_patches + 1,
                           sizeof *m->patches, 64) != 0)
        return mood_error_nomem();
    p = &m->patches[m->n_patches++];
    p->w = w;
    p->src = src;
    p->numel = mood_st_numel(src);
    return 0;
}

static void drop_side_paths(mood_model *m)
{
    for (size_t i = 0; i < m->n_owned; i++)
        mood_free(m->owned[i]);
    for (size_t i = 0; i < m->n_paths; i++)
        mood_free((char *)m->paths[i].weight);
    mood_free(m->owned);
    mood_free(m->paths);
    mood_free(m->path_part);
    m->owned = NULL;
    m->paths = NULL;
    m->path_part = NULL;
    m->n_owned = m->n_paths = m->cap_owned = m->cap_paths = m->cap_path_part = 0;
}

static void forget_set(mood_model *m)
{
    for (size_t i = 0; i < m->n_set; i++)
        mood_free(m->set[i].path);
    mood_free(m->set);
    m->set = NULL;
    m->n_set = 0;
}

int mood__model_clear_adapters(mood_model *m)
{
    int err = 0;
    if (mood_unet_set_side_paths(m->unet, NULL, 0) != 0 ||
        mood_clip_set_side_paths(m->clip, NULL, 0) != 0 ||
        (m->clip2 && mood_clip_set_side_paths(m->clip2, NULL, 0) != 0))
        err = MOOD_EBACKEND;
    drop_side_paths(m);
    if (!err) {
        /* the weights are independent: read them back on every thread */
#pragma omp parallel for schedule(dynamic)
        for (size_t i = 0; i < m->n_patches; i++)
            if (mood_st_to_f32(m->patches[i].w, m->patches[i].src) != 0) {
#pragma omp critical(mood_restore_error)
                err = MOOD_EFORMAT;
            }
    }
    m->n_patches = 0;
    forget_set(m);
    return err;
}

void mood__model_free_adapters(mood_model *m)
{
    drop_side_paths(m);
    forget_set(m);
    mood_free(m->patches);
    m->patches = NULL;
    m->n_patches = m->cap_patches = 0;
}

/* ----- applying --------------------------------------------------------------------------- */

static int same_set(const mood_model *m, const mood_weighted_adapter *a, size_t n,
                    mood_lora_mode mode)
{
    if (n != m->n_set || mode != m->set_mode)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!a[i].path || strcmp(a[i].path, m->set[i].path) != 0 || a[i].unet != m->set[i].unet ||
            a[i].te != m->set[i].te || a[i].dyn != m->set[i].dyn)
            return 0;
    return 1;
}

static int keep_set(mood_model *m, const mood_weighted_adapter *a, size_t n, mood_lora_mode mode)
{
    if (n && !(m->set = mood_calloc(n, sizeof *m->set)))
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++) {
        m->set[i].unet = a[i].unet;
        m->set[i].te = a[i].te;
        m->set[i].dyn = a[i].dyn;
        if (!(m->set[i].path = mood_strdup(a[i].path))) {
            forget_set(m);
            return mood_error_nomem();
        }
        m->n_set = i + 1;
    }
    m->set_mode = mode;
    return 0;
}

/* One weight of the UNet (i < nu), text encoder (i < nu + n1) or text encoder 2 into w. */
static void base_weight(mood_model *m, size_t i, size_t nu, size_t n1, mood_base_weight *w)
{
    memset(w, 0, sizeof *w);
    if (i < nu) {
        w->name = mood_unet_weight_name(m->unet, i);
        w->part = MOOD_PART_UNET;
        (void)mood_unet_weight(m->unet, w->name, &w->ndim, w->shape);
    } else {
        mood_clip *c = i < nu + n1 ? m->clip : m->clip2;
        w->name = mood_clip_weight_name(c, i < nu + n1 ? i - nu : i - nu - n1);
        w->part = i < nu + n1 ? MOOD_PART_TE1 : MOOD_PART_TE2;
        (void)mood_clip_weight(c, w->name, &w->ndim, w->shape);
    }
}

/* The base adapters resolve against: a single file's own keys, or for a folder its weights by
 * name (its modules need not be those of the family's release architecture, e.g. mood-tiny). */
static int adapter_base(mood_model *m, const mood_checkpoint **out)
{
    size_t nu = mood_unet_weight_count(m->unet), n1 = mood_clip_weight_count(m->clip);
    size_t n = nu + n1 + (m->clip2 ? mood_clip_weight_count(m->clip2) : 0);
    mood_base_weight *w;
    int err;
    *out = m->ckpt ? m->ckpt : m->names_base;
    if (*out)
        return 0;
    if (!(w = mood_calloc(n, sizeof *w)))
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++)
        base_weight(m, i, nu, n1, &w[i]);
    err = mood_checkpoint_from_names(&m->names_base, m->unet_file, m->family, w, n);
    mood_free(w);
    *out = m->names_base;
    return err;
}

static int open_all(mood_adapter **ads, mood_model *m, const mood_weighted_adapter *a, size_t n)
{
    const mood_checkpoint *base;
    int err = adapter_base(m, &base);
    for (size_t i = 0; i < n && !err; i++) {
        mood_family f;
        if ((err = mood_adapter_open_weighted(&ads[i], &a[i], base)) != 0)
            break;
        f = mood_adapter_family(ads[i]);
        if (f != m->family && f != MOOD_FAMILY_UNKNOWN)
            err = mood_error_set(MOOD_EFAMILY, "%s: a LoRA for %s, the model %s is %s", a[i].path,
                                 mood_family_name(f), m->name, mood_family_name(m->family));
    }
    return err;
}

static int add_path(mood_model *m, const char *weight, mood_part part, float *down, float *up,
                    int rank, float scale)
{
    mood_side_path *p;
    if (mood_array_reserve((void **)&m->paths, &m->cap_paths, m->n_paths + 1, sizeof *m->paths,
                           64) != 0 ||
        mood_array_reserve((void **)&m->path_part, &m->cap_path_part, m->n_paths + 1,
                           sizeof *m->path_part, 64) != 0 ||
        mood_array_reserve((void **)&m->owned, &m->cap_owned, m->n_owned + 2, sizeof *m->owned,
                           128) != 0) {
        mood_free(down);
        mood_free(up);
        return mood_error_nomem();
    }
    if (down)
        m->owned[m->n_owned++] = down;
    m->owned[m->n_owned++] = up;
    m->path_part[m->n_paths] = part;
    p = &m->paths[m->n_paths];
    memset(p, 0, sizeof *p);
    if (!(p->weight = mood_strdup(weight)))
        return mood_error_nomem();
    p->down = down;
    p->up = up;
    p->rank = rank;
    p->scale = scale;
    m->n_paths++;
    return 0;
}

/* The dense runtime path of a module that is not a plain low-rank pair: W'(mult) - W. A change
 * of the bias (diff_b, b_norm) has no side path: it is merged into the bias, which is then
 * restored like any merged weight. */
static int dense_path(mood_model *m, const mood_adapter *a, size_t i, const resolved *r, float mult)
{
    int64_t n = mood_adapter_target_numel(a, i);
    float *d = mood_malloc((size_t)n * sizeof *d);
    int err = 0;
    if (!d)
        return mood_error_nomem();
    memcpy(d, r->w, (size_t)n * sizeof *d);
    if (r->bias)
        err = remember(m, r->restore_b, r->src_b);
    if (err || (err = mood_adapter_apply(a, i, d, r->bias, mult)) != 0) {
        mood_free(d);
        return err;
    }
    for (int64_t j = 0; j < n; j++)
        d[j] -= r->w[j];
    return add_path(m, r->name, r->part, NULL, d, 0, 1.0f);
}

/* One module of one adapter, resolved in the model. */
typedef struct contrib {
    resolved r;
    const mood_adapter *a;
    size_t i;
    size_t order; /* adapter index, then module index: the order adapters apply in */
    float mult;
} contrib;

static int by_weight_then_order(const void *pa, const void *pb)
{
    const contrib *a = pa, *b = pb;
    if (a->r.w != b->r.w)
        return a->r.w < b->r.w ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* A run of low-rank modules on one weight, merged by one GEMM: W += [m1 U1 | m2 U2 | ...] ·
 * [D1; D2; ...]. Concatenating the ranks makes one larger product instead of several thin ones
 * and adds into W directly, without a ΔW buffer. */
typedef struct lowrank_run {
    float *up, *down; /* (out x R), (R x in) */
    int64_t out, in;
    int R, cap;
} lowrank_run;

static int run_add(lowrank_run *run, const float *up, const float *down, int rank, float mult,
                   int64_t out, int64_t in)
{
    int R = run->R + rank;
    float *u, *d;
    if (run->R == 0) { /* a new weight: buffers of the last one are the wrong shape */
        mood_free(run->up);
        mood_free(run->down);
        run->up = run->down = NULL;
        run->cap = 0;
        run->out = out;
        run->in = in;
    }
    if (R > run->cap) {
        int cap = R * 2;
        if (!(u = mood_malloc((size_t)(out * cap) * sizeof *u)))
            return mood_error_nomem();
        if (!(d = mood_realloc(run->down, (size_t)(cap * in) * sizeof *d))) {
            mood_free(u);
            return mood_error_nomem();
        }
        for (int64_t o = 0; o < out && run->R; o++) /* re-pitch the rows of up */
            memcpy(u + o * cap, run->up + o * run->cap, (size_t)run->R * sizeof *u);
        mood_free(run->up);
        run->up = u;
        run->down = d;
        run->cap = cap;
    }
    for (int64_t o = 0; o < out; o++)
        for (int r = 0; r < rank; r++)
            run->up[o * run->cap + run->R + r] = mult * up[o * rank + r];
    memcpy(run->down + (size_t)run->R * in, down, (size_t)(rank * in) * sizeof *down);
    run->R = R;
    return 0;
}

static void run_flush(lowrank_run *run, float *w)
{
    if (run->R > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)run->out, (int)run->in, run->R,
                    1.0f, run->up, run->cap, run->down, (int)run->in, 1.0f, w, (int)run->in);
    run->R = 0;
}

/* Merges the contributions c[0..n) to one weight, in order (remembered already: this runs on
 * several threads at once, one weight each). */
static int merge_group(const contrib *c, size_t n, lowrank_run *run)
{
    int err = 0;
    for (size_t j = 0; j < n && !err; j++) {
        float *down = NULL, *up = NULL;
        int rank = 0;
        int64_t shape[4];
        mood_adapter_target_shape(c[j].a, c[j].i, shape);
        err = mood_adapter_lowrank(c[j].a, c[j].i, &down, &up, &rank);
        if (err == 0) {
            err = run_add(run, up, down, rank, c[j].mult, shape[0],
                          mood_adapter_target_numel(c[j].a, c[j].i) / shape[0]);
        } else if (err == MOOD_EUNSUPPORTED) {
            run_flush(run, c[j].r.w);
            err = mood_adapter_apply(c[j].a, c[j].i, c[j].r.w, c[j].r.bias, c[j].mult);
        }
        mood_free(down);
        mood_free(up);
    }
    if (!err)
        run_flush(run, c[0].r.w);
    /* as bake refuses to write it: a change that overflows float32 would draw garbage */
    for (int64_t e = 0, numel = mood_adapter_target_numel(c[0].a, c[0].i); !err && e < numel; e++)
        if (!isfinite(c[0].r.w[e]))
            err = mood_error_set(MOOD_EFORMAT,
                                 "weight \"%s\" is not finite (%g at element %lld) with the "
                                 "LoRAs applied: a LoRA's change to it overflows",
                                 c[0].r.name, (double)c[0].r.w[e], (long long)e);
    return err;
}

/* Runtime mode: a side path per module (norms and biases merged). */
static int runtime_module(mood_model *m, const contrib *c)
{
    float *down = NULL, *up = NULL;
    int rank = 0, err;
    const resolved *r = &c->r;
    if (r->ndim != 2 && r->ndim != 4) {
        if ((err = remember(m, r->restore_w, r->src_w)) != 0 ||
            (r->bias && (err = remember(m, r->restore_b, r->src_b)) != 0))
            return err;
        return mood_adapter_apply(c->a, c->i, r->w, r->bias, c->mult);
    }
    err = mood_adapter_lowrank(c->a, c->i, &down, &up, &rank);
    if (err == 0)
        return add_path(m, r->name, r->part, down, up, rank, c->mult);
    return err == MOOD_EUNSUPPORTED ? dense_path(m, c->a, c->i, r, c->mult) : err;
}

/* Resolves every module of every adapter; counts those the model has no weight for. */
static int collect(contrib **out, size_t *n_out, mood_model *m, mood_adapter **ads,
                   const mood_weighted_adapter *a, size_t n, size_t *unmatched)
{
    size_t total = 0, k2 = 0;
    contrib *c;
    for (size_t k = 0; k < n; k++)
        total += mood_adapter_module_count(ads[k]);
    if (!(c = mood_calloc(total ? total : 1, sizeof *c)))
        return mood_error_nomem();
    for (size_t k = 0; k < n; k++) {
        *unmatched += mood_adapter_unmatched_count(ads[k]);
        for (size_t i = 0; i < mood_adapter_module_count(ads[k]); i++) {
            mood_module_info mi;
            contrib *x = &c[k2];
            mood_adapter_module(ads[k], i, &mi);
            resolve(&x->r, m, &mi, mood_adapter_target_numel(ads[k], i));
            if (!x->r.w) {
                (*unmatched)++;
                continue;
            }
            x->a = ads[k];
            x->i = i;
            x->order = k2;
            x->mult = (float)(mi.part == MOOD_PART_UNET ? a[k].unet : a[k].te);
            k2++;
        }
    }
    *out = c;
    *n_out = k2;
    return 0;
}

/* Merge mode: groups of contributions to one weight, each merged by one thread. Weights are
 * remembered first (the list is shared); then the groups run in parallel, each with its own
 * single-threaded GEMMs, so the result does not depend on the thread count. */
static int merge_all(mood_model *m, contrib *c, size_t nc)
{
    size_t *start = mood_malloc((nc + 1) * sizeof *start), ng = 0;
    int err = start ? 0 : mood_error_nomem();
    char why[2048] = ""; /* the failing thread's message: messages are per thread */
    qsort(c, nc, sizeof *c, by_weight_then_order);
    for (size_t j = 0; j < nc && !err; j++) {
        if (j == 0 || c[j].r.w != c[j - 1].r.w) {
            start[ng++] = j;
            err = remember(m, c[j].r.restore_w, c[j].r.src_w);
        }
        if (!err && c[j].r.bias)
            err = remember(m, c[j].r.restore_b, c[j].r.src_b);
    }
    if (!err) {
        start[ng] = nc;
#pragma omp parallel
        {
            lowrank_run run = {0};
#pragma omp for schedule(dynamic)
            for (size_t g = 0; g < ng; g++) {
                int e = err ? 0 : merge_group(c + start[g], start[g + 1] - start[g], &run);
                if (e) {
#pragma omp critical(mood_merge_error)
                    if (!err) {
                        err = e;
                        snprintf(why, sizeof why, "%s", mood_error_last());
                    }
                }
            }
            mood_free(run.up);
            mood_free(run.down);
        }
    }
    mood_free(start);
    if (err && why[0])
        mood_error_set(err, "%s", why);
    return err;
}

/* Applies every module of every adapter: merged per weight, or as side paths. */
static int apply_all(mood_model *m, mood_adapter **ads, const mood_weighted_adapter *a, size_t n,
                     mood_lora_mode mode, size_t *unmatched)
{
    contrib *c = NULL;
    size_t nc = 0;
    int err = collect(&c, &nc, m, ads, a, n, unmatched);
    if (!err && mode == MOOD_LORA_MERGE)
        err = merge_all(m, c, nc);
    for (size_t j = 0; j < nc && !err && mode == MOOD_LORA_RUNTIME; j++)
        err = runtime_module(m, &c[j]);
    mood_free(c);
    return err;
}

static int install_paths(mood_model *m)
{
    /* UNet and text-encoder paths share one array: each model takes those of its part. */
    mood_side_path *by[MOOD_PART_COUNT] = {NULL};
    size_t n[MOOD_PART_COUNT] = {0};
    int err = 0;
    for (int p = 0; p < MOOD_PART_COUNT && m->n_paths && !err; p++)
        if (!(by[p] = mood_calloc(m->n_paths, sizeof *by[p])))
            err = mood_error_nomem();
    for (size_t i = 0; i < m->n_paths && !err; i++)
        by[m->path_part[i]][n[m->path_part[i]]++] = m->paths[i];
    if (!err)
        err = mood_unet_set_side_paths(m->unet, by[MOOD_PART_UNET], n[MOOD_PART_UNET]);
    if (!err)
        err = mood_clip_set_side_paths(m->clip, by[MOOD_PART_TE1], n[MOOD_PART_TE1]);
    if (!err && m->clip2)
        err = mood_clip_set_side_paths(m->clip2, by[MOOD_PART_TE2], n[MOOD_PART_TE2]);
    for (int p = 0; p < MOOD_PART_COUNT; p++)
        mood_free(by[p]);
    return err;
}

int mood_model_set_adapters(mood_model *m, const mood_weighted_adapter *adapters, size_t n,
                            mood_lora_mode mode, size_t *unmatched_out)
{
    mood_adapter **ads = NULL;
    size_t unmatched = 0;
    int err = 0;
    if (unmatched_out)
        *unmatched_out = 0;
    MOOD_ARG_NONNULL(m);
    if (n > 0)
        MOOD_ARG_NONNULL(adapters);
    /* any other value applied no LoRA at all, silently */
    if (mode != MOOD_LORA_MERGE && mode != MOOD_LORA_RUNTIME)
        return mood_error_set(MOOD_EINVAL,
                              "mood_model_set_adapters: mode %d: unknown LoRA mode "
                              "(MOOD_LORA_MERGE or MOOD_LORA_RUNTIME)",
                              (int)mode);
    if (same_set(m, adapters, n, mode)) {
        if (unmatched_out)
            *unmatched_out = m->set_unmatched;
        return 0;
    }
    if (n && !(ads = mood_calloc(n, sizeof *ads)))
        return mood_error_nomem();
    if ((err = open_all(ads, m, adapters, n)) == 0 && (err = mood__model_clear_adapters(m)) == 0 &&
        (err = apply_all(m, ads, adapters, n, mode, &unmatched)) == 0 &&
        (err = install_paths(m)) == 0)
        err = keep_set(m, adapters, n, mode);
    m->set_unmatched = err ? 0 : unmatched;
    for (size_t i = 0; i < n; i++)
        mood_adapter_close(ads[i]);
    mood_free(ads);
    if (err && err != MOOD_EFAMILY && err != MOOD_ENOTFOUND && err != MOOD_EFORMAT) {
        /* half applied: go back to the pristine model rather than leave a mixture */
        int saved = err;
        (void)mood__model_clear_adapters(m);
        err = saved;
    }
    /* the GPU copy follows the merged (or restored) weights; it copies the side paths by itself
     * (engine/cuda/unet_cuda.h) */
    if (m->cuda_unet) {
        int e = mood_cuda_unet_reload(m->cuda_unet, NULL);
        err = err ? err : e;
    }
    if (unmatched_out)
        *unmatched_out = unmatched;
    return err;
}
