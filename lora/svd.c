/*
 * svd.c: LoRA → LoRA operations that re-factorise a weight delta with an SVD, with the semantics
 * of kohya sd-scripts (lora-formats.md §5.3–5.5):
 *
 *   merge    networks/svd_merge_lora.py: ΔW = Σ mᵢ·sᵢ·ΔWᵢ per target (exact, float32), SVD,
 *            rank r' = min(rank (conv_rank for kxk), in, out), up = U·diag(S), down = Vh, both
 *            clamped to the 0.99 quantile of their values (o->clamp_quantile), alpha = r'.
 *   resize   networks/resize_lora.py: the *unscaled* product up·down, SVD, fixed or dynamic rank
 *            (sv_ratio / sv_fro / sv_cumulative with kohya's index rules), alpha = s_old·r'
 *            (so α/r is kept), no clamp.
 *   extract  networks/extract_lora_from_models.py: diff = tuned − base on kohya's target modules,
 *            text encoder skipped when no diff exceeds min_diff, SVD + clamp as merge, alpha = r'.
 *
 * The SVD runs in double precision (LAPACK dgesdd): kohya's float32 SVD (torch) and ours agree
 * on the kept subspace to float32 accuracy, but the signs of the singular pairs can differ, and
 * the quantile clamp (of the factors' signed values) depends on them: with a quantile of 1 the
 * results equal kohya's to float32 accuracy; with the default 0.99 both lose about as much of ΔW
 * to the clamp, but not the same values (a QA comparison at SD1.5 sizes: up to 2.4% per layer).
 * Only one target's ΔW is held at a time; the output factors are kept until written.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lapack.h"
#include "lora/lora_internal.h"

#define MIN_SV 1e-6

/* ----- SVD and factors --------------------------------------------------------------------- */

typedef struct svd_result {
    double *u;  /* (rows, k) row-major */
    double *s;  /* (k), descending */
    double *vt; /* (k, cols) row-major */
    int64_t rows, cols;
    int k;
} svd_result;

static void svd_dispose(svd_result *r)
{
    mood_free(r->u);
    mood_free(r->s);
    mood_free(r->vt);
    memset(r, 0, sizeof *r);
}

/* LAPACK on mᵀ (column-major view of row-major m), which is V S Uᵀ: its "U" is our Vh and its
 * "Vᵀ" our U, both already row-major. top > 0: only the `top` largest triplets (dgesvdx,
 * bisection + inverse iteration: about 2.5x faster than the full dgesdd for top ≪ min). */
static int lapack_svd(svd_result *r, double *a, int top)
{
    int ns = 0, info;
    int64_t k = r->rows < r->cols ? r->rows : r->cols;
    if (top <= 0 || top >= k)
        return mood__dgesdd('S', (int)r->cols, (int)r->rows, a, (int)r->cols, r->s, r->vt,
                            (int)r->cols, r->u, (int)r->k);
    info = mood__dgesvdx((int)r->cols, (int)r->rows, a, (int)r->cols, 1, top, &ns, r->s, r->vt,
                         (int)r->cols, r->u, top);
    return info == 0 && ns != top ? 1 : info;
}

/* SVD of the row-major (rows, cols) matrix m, in double precision; all min(rows, cols) triplets,
 * or only the `top` largest when top > 0. */
static int svd_run(svd_result *r, const float *m, int64_t rows, int64_t cols, int top,
                   const char *name)
{
    double *a = NULL;
    int64_t k = rows < cols ? rows : cols;
    int info;
    int err = 0;
    memset(r, 0, sizeof *r);
    if (rows <= 0 || cols <= 0 || rows > INT_MAX / 2 || cols > INT_MAX / 2 ||
        (uint64_t)rows * (uint64_t)cols > ((uint64_t)1 << 34))
        return mood_error_set(MOOD_EUNSUPPORTED, "module \"%s\": %lldx%lld is too large to SVD",
                              name, (long long)rows, (long long)cols);
    r->rows = rows;
    r->cols = cols;
    r->k = (int)k;
    a = mood_malloc((size_t)(rows * cols) * sizeof *a);
    r->u = mood_malloc((size_t)(rows * k) * sizeof *r->u);
    r->s = mood_malloc((size_t)k * sizeof *r->s);
    r->vt = mood_malloc((size_t)(k * cols) * sizeof *r->vt);
    if (!a || !r->u || !r->s || !r->vt) {
        err = mood_error_nomem();
        goto done;
    }
    for (int64_t i = 0; i < rows * cols; i++) {
        if (!isfinite(m[i])) { /* LAPACK would fail with an info number nobody can read */
            err = mood_error_set(MOOD_EFORMAT,
                                 "module \"%s\": its change is not finite (%g at element %lld): "
                                 "its change overflows float32",
                                 name, (double)m[i], (long long)i);
            goto done;
        }
        a[i] = m[i];
    }
    if (top > 0 && top < k && lapack_svd(r, a, top) == 0) {
        r->k = top;
        goto done;
    }
    for (int64_t i = 0; top > 0 && i < rows * cols; i++) /* (partial SVD failed: a is spent) */
        a[i] = m[i];
    if ((info = lapack_svd(r, a, 0)) != 0)
        err = mood_error_set(info < 0 ? MOOD_ENOMEM : MOOD_EBACKEND,
                             "module \"%s\": SVD failed (LAPACK info %d)", name, (int)info);
done:
    mood_free(a);
    if (err)
        svd_dispose(r);
    return err;
}

/* ΔW = A·B given as factors: A (rows, R) and B (R, cols), row-major, R < min(rows, cols). */
typedef struct lowrank {
    double *a, *b;
    int R;
} lowrank;

static void lowrank_dispose(lowrank *lr)
{
    mood_free(lr->a);
    mood_free(lr->b);
    memset(lr, 0, sizeof *lr);
}

/* Q (m, R) column-major in place of x and the R×R upper factor into rf (column-major). */
static int qr_inplace(double *x, double *rf, double *tau, int64_t m, int R)
{
    int info = mood__dgeqrf((int)m, R, x, (int)m, tau);
    for (int j = 0; info == 0 && j < R; j++) {
        for (int i = 0; i < R; i++)
            rf[i + j * R] = i <= j ? x[i + j * m] : 0.0;
    }
    if (info == 0)
        info = mood__dorgqr((int)m, R, R, x, (int)m, tau);
    return info;
}

/* The SVD of A·B without forming it: A = Qa·Ra, Bᵀ = Qb·Rb, Ra·Rbᵀ = Uc·S·Vcᵀ, so
 * A·B = (Qa·Uc)·S·(Vcᵀ·Qbᵀ). Costs O((rows + cols)·R²) instead of O(rows·cols·min). The
 * result has k = R singular triplets (the others are zero). Consumes lr->a and lr->b. */
static int svd_lowrank(svd_result *r, lowrank *lr, int64_t rows, int64_t cols, const char *name)
{
    int R = lr->R, err = 0;
    double *at = mood_malloc((size_t)(rows * R) * sizeof *at);
    double *ra = mood_malloc((size_t)R * R * sizeof *ra),
           *rb = mood_malloc((size_t)R * R * sizeof *rb);
    double *c = mood_malloc((size_t)R * R * sizeof *c),
           *uc = mood_malloc((size_t)R * R * sizeof *uc);
    double *vct = mood_malloc((size_t)R * R * sizeof *vct),
           *tau = mood_malloc((size_t)R * sizeof *tau);
    int info = 0;
    memset(r, 0, sizeof *r);
    r->u = mood_malloc((size_t)(rows * R) * sizeof *r->u);
    r->s = mood_malloc((size_t)R * sizeof *r->s);
    r->vt = mood_malloc((size_t)(R * cols) * sizeof *r->vt);
    if (!at || !ra || !rb || !c || !uc || !vct || !tau || !r->u || !r->s || !r->vt) {
        err = mood_error_nomem();
        goto done;
    }
    for (int64_t i = 0; i < rows; i++) /* A to column-major */
        for (int j = 0; j < R; j++)
            at[i + j * rows] = lr->a[i * R + j];
    /* B row-major (R, cols) is Bᵀ column-major (cols, R) */
    if ((info = qr_inplace(at, ra, tau, rows, R)) == 0)
        info = qr_inplace(lr->b, rb, tau, cols, R);
    for (int j = 0; info == 0 && j < R; j++) /* C = Ra·Rbᵀ, column-major */
        for (int i = 0; i < R; i++) {
            double acc = 0;
            for (int k = (i > j ? i : j); k < R; k++)
                acc += ra[i + k * R] * rb[j + k * R];
            c[i + j * R] = acc;
        }
    if (info == 0)
        info = mood__dgesdd('A', R, R, c, R, r->s, uc, R, vct, R);
    if (info != 0) {
        err =
            mood_error_set(info < 0 ? MOOD_ENOMEM : MOOD_EBACKEND,
                           "module \"%s\": low-rank SVD failed (LAPACK info %d)", name, (int)info);
        goto done;
    }
    /* U = Qa·Uc (row-major (rows, R)); Vh = Vcᵀ·Qbᵀ (row-major (R, cols)) */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)rows, R, R, 1.0, at, (int)rows, uc, R,
                0.0, r->u, R);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, (int)cols, R, 1.0, vct, R, lr->b,
                (int)cols, 0.0, r->vt, (int)cols);
    r->rows = rows;
    r->cols = cols;
    r->k = R;
done:
    mood_free(at);
    mood_free(ra);
    mood_free(rb);
    mood_free(c);
    mood_free(uc);
    mood_free(vct);
    mood_free(tau);
    lowrank_dispose(lr);
    if (err)
        svd_dispose(r);
    return err;
}

/* A plain LoRA module (no Tucker, no DoRA) whose factors flatten to (out, r) and (r, cols). */
static int is_plain_lora(const mood_module *m)
{
    const mood_st_tensor *u = m->t[ROLE_UP], *d = m->t[ROLE_DOWN];
    return m->algo == MOOD_ALGO_LORA && !m->tucker && !m->dora && !m->t[ROLE_MID] && u && d &&
           m->rank > 0 && mood_st_numel(u) == m->out * m->rank &&
           mood_st_numel(d) == m->rank * m->in * m->kh * m->kw;
}

/* The ranks of a plain LoRA module the merge takes: its DyLoRA cut's. */
static int used_rank(const mood_module *m)
{
    return (int)mood__module_ranks_used(m, m->rank);
}

/* Writes c·U into columns [off, off + r) of lr->a and D into rows [off, off + r) of lr->b, r the
 * ranks used (the first r of U's columns and of D's rows). */
static int lowrank_add(lowrank *lr, const mood_module *m, double c, int off, const char *file)
{
    int64_t rows = m->out, cols = m->in * m->kh * m->kw;
    int r = used_rank(m);
    float *u = NULL, *d = NULL;
    int err = mood__tensor_f32(&u, m->t[ROLE_UP], file);
    if (!err)
        err = mood__tensor_f32(&d, m->t[ROLE_DOWN], file);
    for (int64_t i = 0; !err && i < rows; i++)
        for (int j = 0; j < r; j++)
            lr->a[i * lr->R + off + j] = c * u[i * m->rank + j];
    for (int j = 0; !err && j < r; j++)
        for (int64_t k = 0; k < cols; k++)
            lr->b[(off + j) * cols + k] = d[j * cols + k];
    mood_free(u);
    mood_free(d);
    return err;
}

static int lowrank_alloc(lowrank *lr, int64_t rows, int64_t cols, int R)
{
    memset(lr, 0, sizeof *lr);
    lr->R = R;
    lr->a = mood_calloc((size_t)(rows * R), sizeof *lr->a);
    lr->b = mood_calloc((size_t)(R * cols), sizeof *lr->b);
    return lr->a && lr->b ? 0 : mood_error_nomem();
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* torch.quantile(x, q) on float32: linear interpolation between the order statistics at
 * q·(n−1), computed in float32 as torch does, with torch.lerp's two-sided formula. */
static int quantile_f32(float *out, const float *a, size_t na, const float *b, size_t nb, float q)
{
    size_t n = na + nb, lo;
    float *x = mood_malloc((n ? n : 1) * sizeof *x), pos, w, v0, v1;
    if (!x)
        return mood_error_nomem();
    memcpy(x, a, na * sizeof *x);
    memcpy(x + na, b, nb * sizeof *x);
    qsort(x, n, sizeof *x, cmp_float);
    pos = q * (float)(n - 1);
    lo = (size_t)pos;
    w = pos - (float)lo;
    v0 = x[lo];
    v1 = x[lo + 1 < n ? lo + 1 : lo];
    *out = w < 0.5f ? v0 + w * (v1 - v0) : v1 - (v1 - v0) * (1.0f - w);
    mood_free(x);
    return 0;
}

static void clamp_all(float *x, size_t n, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] > hi ? hi : (x[i] < -hi ? -hi : x[i]);
}

/* Fills o->up = U[:, :r]·diag(S[:r]) and o->down = Vh[:r] (float32), clamped at their
 * quantile q when 0 < q < 1 (0: no clamp). */
static int svd_take(mood_lora_out_module *o, const svd_result *r, int rank, double q)
{
    size_t nu = (size_t)(r->rows * rank), nd = (size_t)(rank * r->cols);
    float hi = 0;
    int err = 0;
    o->up = mood_malloc(nu * sizeof *o->up);
    o->down = mood_malloc(nd * sizeof *o->down);
    if (!o->up || !o->down)
        return mood_error_nomem();
    for (int64_t i = 0; i < r->rows; i++) {
        for (int j = 0; j < rank; j++)
            o->up[i * rank + j] = (float)(r->u[i * r->k + j] * r->s[j]);
    }
    for (int j = 0; j < rank; j++) {
        for (int64_t c = 0; c < r->cols; c++)
            o->down[j * r->cols + c] = (float)r->vt[j * r->cols + c];
    }
    o->rank = rank;
    if (q > 0 && q < 1 && (err = quantile_f32(&hi, o->up, nu, o->down, nd, (float)q)) == 0) {
        clamp_all(o->up, nu, hi);
        clamp_all(o->down, nd, hi);
    }
    return err;
}

static int is_kxk(int ndim, int64_t kh, int64_t kw)
{
    return ndim == 4 && (kh != 1 || kw != 1);
}

/* Output module with the target's geometry, named, alpha = rank; with `clamp`, rank becomes
 * kohya's min(rank, out, in) for merge and extract ("LoRA rank cannot exceed the original
 * dims", in counting channels only). */
static int out_init(mood_lora_out_module *o, const char *name, int ndim, const int64_t geom[4],
                    int *rank, int clamp)
{
    int64_t lim = geom[0] < geom[1] ? geom[0] : geom[1];
    memset(o, 0, sizeof *o);
    o->ndim = ndim;
    o->out = geom[0];
    o->in = geom[1];
    o->kh = geom[2];
    o->kw = geom[3];
    if (clamp && *rank > lim)
        *rank = (int)lim;
    o->alpha = *rank;
    return (o->name = mood_strdup(name)) ? 0 : mood_error_nomem();
}

/* SVD + clamp at quantile q of `mat`, the target's ΔW as (out, in·kh·kw). */
static int factor_clamped(mood_lora_out_module *o, const char *name, const float *mat, int ndim,
                          const int64_t geom[4], int rank, double q)
{
    svd_result r;
    int err = out_init(o, name, ndim, geom, &rank, 1);
    if (!err)
        err = svd_run(&r, mat, geom[0], geom[1] * geom[2] * geom[3], rank, name);
    if (!err) {
        err = svd_take(o, &r, rank, q);
        svd_dispose(&r);
    }
    return err;
}

/* ----- output list ------------------------------------------------------------------------- */

typedef struct out_list {
    mood_lora_out_module *m;
    size_t n, cap;
} out_list;

static int out_push(out_list *l, mood_lora_out_module **slot)
{
    if (mood_array_reserve(&l->m, &l->cap, l->n, sizeof *l->m, 64) != 0)
        return MOOD_ENOMEM;
    *slot = &l->m[l->n++];
    memset(*slot, 0, sizeof **slot);
    return 0;
}

static void out_dispose(out_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        mood__lora_out_module_dispose(&l->m[i]);
    mood_free(l->m);
    memset(l, 0, sizeof *l);
}

static int report(const mood_lora_write_options *o, const char *phase, size_t done, size_t total)
{
    mood_progress p = {phase, done, total};
    if (o->progress && o->progress(&p, o->payload) != 0)
        return mood_error_set(MOOD_ECANCELLED, "cancelled");
    return 0;
}

static int check_options(const mood_lora_write_options *o, int rank)
{
    if (!o || !o->output || !*o->output)
        return mood_error_set(MOOD_EINVAL, "no output path given");
    if (rank <= 0)
        return mood_error_set(MOOD_EINVAL, "rank must be at least 1 (got %d)", rank);
    /* the bound is the quantile of the factors' signed values: at 0.5 or below it is about 0 or
     * negative, and clamping at it would flatten every value (torch makes them all the bound) */
    if (o->clamp_quantile != 0 && !(o->clamp_quantile > 0.5 && o->clamp_quantile <= 1))
        return mood_error_set(MOOD_EINVAL, "clamp quantile must be in (0.5, 1], or 0 (got %g)",
                              o->clamp_quantile);
    return 0;
}

static int64_t module_numel(const mood_module *m)
{
    return m->out * m->in * m->kh * m->kw;
}

/* ----- merge ------------------------------------------------------------------------------- */

typedef struct merge_item {
    const char *name; /* kohya name of the target */
    size_t ai, mi;
} merge_item;

static int cmp_item(const void *a, const void *b)
{
    const merge_item *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    if (x->ai != y->ai)
        return x->ai < y->ai ? -1 : 1;
    return x->mi < y->mi ? -1 : (x->mi > y->mi);
}

/* Every module must resolve to a target and be additive (ΔW independent of the base). */
static int check_adapter(const mood_adapter *a, const char *path)
{
    if (a->n_unmatched)
        return mood_error_set(MOOD_EFORMAT, "%s: key \"%s\" matches no %s module", path,
                              a->unmatched[0], mood_family_name(a->family));
    for (size_t j = 0; j < a->n_modules; j++) {
        const mood_module *m = &a->modules[j];
        if (!m->target || !m->target->kohya_name)
            return mood_error_set(MOOD_EFORMAT, "%s: module \"%s\" has no target", path, m->name);
        /* first: an IA3 or OFT module's factors do not have ΔW's shape, which the checks
         * below read */
        if (!mood__module_is_additive(m))
            return mood_error_set(MOOD_EUNSUPPORTED,
                                  "%s: module \"%s\" (%s%s) changes W non-additively, so its ΔW "
                                  "needs a base model: bake it into a checkpoint instead",
                                  path, m->name, mood_algo_name(m->algo), m->dora ? "+DoRA" : "");
        if (m->ndim < 2 || m->t[ROLE_DIFF_B] || m->t[ROLE_B_NORM])
            return mood_error_set(MOOD_EUNSUPPORTED,
                                  "%s: module \"%s\" (%s) holds a %s delta, which a LoRA cannot "
                                  "hold: bake it into a checkpoint instead",
                                  path, m->name, mood_algo_name(m->algo),
                                  m->ndim < 2 ? "norm weight" : "bias");
        if (module_numel(m) <= 0)
            return mood_error_set(MOOD_EFORMAT,
                                  "%s: module \"%s\" changes an empty weight (%lld x %lld): its "
                                  "factors have a zero-sized dimension",
                                  path, m->name, (long long)m->out,
                                  (long long)(m->in * m->kh * m->kw));
    }
    return 0;
}

/* Resize keeps a file's modules one for one: a file that names one layer twice (kohya's and
 * LyCORIS's names side by side) would write two modules of one name. Merge adds them up. */
static int check_one_module_per_target(const mood_adapter *a)
{
    for (size_t i = 0; i < a->n_modules; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(a->modules[i].target->kohya_name, a->modules[j].target->kohya_name) == 0)
                return mood_error_set(MOOD_EFORMAT,
                                      "modules \"%s\" and \"%s\" both change the layer %s: "
                                      "'mood lora merge FILE --rank R' adds them up into one",
                                      a->modules[j].name, a->modules[i].name,
                                      a->modules[i].target->kohya_name);
    return 0;
}

static int open_inputs(mood_adapter **ads, const mood_weighted_adapter *in, size_t n)
{
    int err = 0;
    for (size_t i = 0; !err && i < n; i++) {
        if ((err = mood_adapter_open_weighted(&ads[i], &in[i], NULL)) == 0)
            err = check_adapter(ads[i], in[i].path);
        if (!err && i && ads[i]->family != ads[0]->family)
            err = mood_error_set(MOOD_EFAMILY, "%s is an %s LoRA but %s is %s", in[i].path,
                                 mood_family_name(ads[i]->family), in[0].path,
                                 mood_family_name(ads[0]->family));
    }
    return err;
}

/* Σ mᵢ·ΔWᵢ over items[0..n) (all on one target) into acc. */
static int merge_sum(float *acc, float *tmp, const merge_item *items, size_t n,
                     mood_adapter *const *ads, const mood_weighted_adapter *in)
{
    const mood_module *first = &ads[items[0].ai]->modules[items[0].mi];
    int64_t numel = module_numel(first);
    int err = 0;
    memset(acc, 0, (size_t)numel * sizeof *acc);
    for (size_t i = 0; !err && i < n; i++) {
        const mood_module *m = &ads[items[i].ai]->modules[items[i].mi];
        const mood_weighted_adapter *w = &in[items[i].ai];
        float mult = (float)(m->target->part == MOOD_PART_UNET ? w->unet : w->te);
        if ((err = mood__module_same_shape(m, w->path, first, in[items[0].ai].path)) != 0)
            return err;
        if ((err = mood__module_delta(tmp, m, NULL)) != 0)
            mood_error_prefix("%s", w->path);
        for (int64_t e = 0; !err && e < numel; e++)
            acc[e] += mult * tmp[e];
    }
    return err;
}

/* Total rank when every contribution is a plain LoRA (so ΔW = A·B is known factorised). */
static int plain_rank(const merge_item *items, size_t n, mood_adapter *const *ads)
{
    int R = 0;
    for (size_t i = 0; i < n; i++) {
        const mood_module *m = &ads[items[i].ai]->modules[items[i].mi];
        if (!is_plain_lora(m) || R > INT_MAX / 2 - m->rank)
            return 0;
        R += used_rank(m);
    }
    return R;
}

/* The exact merged ΔW as factors: columns mᵢ·sᵢ·Uᵢ and rows Dᵢ, ranks concatenated. */
static int merge_lowrank(svd_result *r, const merge_item *items, size_t n, mood_adapter *const *ads,
                         const mood_weighted_adapter *in, int R)
{
    const mood_module *m0 = &ads[items[0].ai]->modules[items[0].mi];
    int64_t cols = m0->in * m0->kh * m0->kw;
    lowrank lr;
    int err = lowrank_alloc(&lr, m0->out, cols, R), off = 0;
    for (size_t i = 0; !err && i < n; i++) {
        const mood_module *m = &ads[items[i].ai]->modules[items[i].mi];
        const mood_weighted_adapter *w = &in[items[i].ai];
        double mult = m->target->part == MOOD_PART_UNET ? w->unet : w->te;
        err = mood__module_same_shape(m, w->path, m0, in[items[0].ai].path);
        if (!err)
            err = lowrank_add(&lr, m, mult * m->scale, off, w->path);
        off += used_rank(m);
    }
    if (err) {
        lowrank_dispose(&lr);
        return err;
    }
    return svd_lowrank(r, &lr, m0->out, cols, m0->name);
}

static int merge_group(out_list *out, const merge_item *items, size_t n, mood_adapter *const *ads,
                       const mood_weighted_adapter *in, int rank, int conv_rank, double q)
{
    const mood_module *m = &ads[items[0].ai]->modules[items[0].mi];
    int64_t geom[4] = {m->out, m->in, m->kh, m->kw}, cols = m->in * m->kh * m->kw;
    int ndim = m->ndim == 4 ? 4 : 2, R = plain_rank(items, n, ads), err;
    int want = is_kxk(m->ndim, m->kh, m->kw) ? conv_rank : rank;
    mood_lora_out_module *o;
    float *acc = NULL, *tmp = NULL;
    svd_result r;
    if ((err = out_push(out, &o)) != 0 || (err = out_init(o, items[0].name, ndim, geom, &want, 1)))
        return err;
    /* Factorised route when it is exact and cheaper; not when the kept rank exceeds R, where
     * kohya's null-space vectors enter the clamp's quantile. */
    if (R > 0 && want <= R && R < m->out && R < cols) {
        if ((err = merge_lowrank(&r, items, n, ads, in, R)) == 0) {
            err = svd_take(o, &r, want, q);
            svd_dispose(&r);
        }
        return err;
    }
    acc = mood_malloc((size_t)module_numel(m) * sizeof *acc);
    tmp = mood_malloc((size_t)module_numel(m) * sizeof *tmp);
    err = (!acc || !tmp) ? mood_error_nomem() : merge_sum(acc, tmp, items, n, ads, in);
    if (!err && (err = svd_run(&r, acc, m->out, cols, want, items[0].name)) == 0) {
        err = svd_take(o, &r, want, q);
        svd_dispose(&r);
    } else if (err && n == 1) {
        mood_error_prefix("%s", in[items[0].ai].path); /* one input: the file to blame */
    }
    mood_free(acc);
    mood_free(tmp);
    return err;
}

/* modelspec.merged_from: the inputs' titles (modelspec.title, else the file stem), ", ". */
static int merged_from(mood_buf *b, mood_adapter *const *ads, const mood_weighted_adapter *in,
                       size_t n)
{
    int err = 0;
    for (size_t i = 0; !err && i < n; i++) {
        const char *t = mood_st_meta_get(ads[i]->file, "modelspec.title");
        const char *base = mood_path_basename(in[i].path), *dot = strrchr(base, '.');
        if (i)
            err = mood_buf_puts(b, ", ");
        if (!err && t)
            err = mood_buf_puts(b, t);
        else if (!err)
            err =
                mood_buf_append(b, base, dot && dot != base ? (size_t)(dot - base) : strlen(base));
    }
    return err;
}

static int merge_write(const out_list *out, mood_adapter *const *ads,
                       const mood_weighted_adapter *in, size_t n, int rank, int conv_rank,
                       const mood_lora_write_options *o)
{
    char dim[16], args[96];
    const char *meta[16];
    size_t k = 0;
    mood_buf from;
    int err;
    mood_buf_init(&from);
    snprintf(dim, sizeof dim, "%d", rank);
    snprintf(args, sizeof args, "{\"conv_dim\": %d, \"conv_alpha\": %d}", conv_rank, conv_rank);
    meta[k++] = "ss_network_dim";
    meta[k++] = dim;
    meta[k++] = "ss_network_alpha";
    meta[k++] = dim;
    meta[k++] = "ss_network_args";
    meta[k++] = args;
    /* kohya carries ss_v2 and ss_base_model_version over from the first input that has them */
    for (size_t key = 0; key < 2; key++) {
        const char *name = key ? "ss_base_model_version" : "ss_v2";
        for (size_t i = 0; i < n; i++) {
            const char *v = mood_st_meta_get(ads[i]->file, name);
            if (v) {
                meta[k++] = name;
                meta[k++] = v;
                break;
            }
        }
    }
    err = merged_from(&from, ads, in, n);
    meta[k++] = "modelspec.merged_from";
    meta[k++] = from.data ? from.data : "";
    meta[k] = NULL;
    if (!err)
        err = mood__lora_write(o->output, out->m, out->n, ads[0]->family, o->dtype, meta,
                               o->progress, o->payload);
    mood_buf_dispose(&from);
    return err;
}

static int collect_items(merge_item **out, size_t *count, mood_adapter *const *ads, size_t n)
{
    size_t total = 0, k = 0;
    merge_item *items;
    for (size_t i = 0; i < n; i++)
        total += ads[i]->n_modules;
    if (!(items = mood_malloc((total ? total : 1) * sizeof *items)))
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < ads[i]->n_modules; j++)
            items[k++] = (merge_item){ads[i]->modules[j].target->kohya_name, i, j};
    }
    qsort(items, total, sizeof *items, cmp_item);
    *out = items;
    *count = total;
    return 0;
}

int mood_lora_merge(const mood_weighted_adapter *inputs, size_t n, int rank, int conv_rank,
                    const mood_lora_write_options *o)
{
    mood_adapter **ads = NULL;
    merge_item *items = NULL;
    out_list out = {0};
    size_t count = 0;
    int err = check_options(o, rank);
    if (!err && (n == 0 || !inputs))
        err = mood_error_set(MOOD_EINVAL, "no LoRA to merge");
    if (!err)
        err = mood__output_check(o->output, inputs, n, NULL, NULL);
    if (err)
        return err;
    if (conv_rank <= 0)
        conv_rank = rank;
    if (!(ads = mood_calloc(n, sizeof *ads)))
        return mood_error_nomem();
    if ((err = open_inputs(ads, inputs, n)) != 0 ||
        (err = collect_items(&items, &count, ads, n)) != 0)
        goto done;
    for (size_t i = 0, j; !err && i < count; i = j) {
        for (j = i + 1; j < count && strcmp(items[j].name, items[i].name) == 0; j++)
            ;
        err = merge_group(&out, items + i, j - i, ads, inputs, rank, conv_rank, o->clamp_quantile);
        if (!err)
            err = report(o, "svd", j, count);
    }
    if (!err)
        err = merge_write(&out, ads, inputs, n, rank, conv_rank, o);
done:
    out_dispose(&out);
    mood_free(items);
    for (size_t i = 0; i < n; i++)
        mood_adapter_close(ads[i]);
    mood_free(ads);
    return err;
}

/* ----- resize ------------------------------------------------------------------------------ */

/* Index rules of resize_lora.py on float32 singular values, as kohya's PR #2194 ("fix the off
 * by 1 problem", commit 41de9362) has them: sv_fro and sv_cumulative keep the smallest rank that
 * reaches the target (the older rule kept one more); sv_ratio keeps the singular values above
 * S[0] / param and one more (the PR left its count as it was). Returns kohya's new_rank before
 * the MIN_SV / max-rank adjustments. */
static int dynamic_rank(const float *s, int k, mood_resize_method method, double param)
{
    int index = 0;
    if (method == MOOD_RESIZE_SV_RATIO) {
        float min_sv = s[0] / (float)param;
        for (int i = 0; i < k; i++)
            index += s[i] > min_sv;
    } else {
        int fro = method == MOOD_RESIZE_SV_FRO;
        float sum = 0, c = 0, target = (float)(fro ? param * param : param);
        for (int i = 0; i < k; i++)
            sum += fro ? s[i] * s[i] : s[i];
        /* searchsorted (left) on cumsum / sum */
        for (index = 0; index < k; index++) {
            c += fro ? s[index] * s[index] : s[index];
            if (c / sum >= target)
                break;
        }
    }
    if (index > k - 1)
        index = k - 1;
    if (index < 0)
        index = 0;
    return index + 1;
}

typedef struct resize_ctx {
    mood_resize_method method;
    double param;
    int rank;
    int conv_rank;  /* for modules whose target is a convolution (kohya: 4-D lora_down) */
    double fro_sum; /* Σ retained Frobenius fractions */
    size_t fro_n;
    int old_max;
    double last_alpha; /* new alpha of the module whose name sorts last (kohya's metadata) */
    const char *last_name;
} resize_ctx;

/* s_old = α/r of a LoRA module as resize_lora.py computes it: alpha goes through float32 as
 * torch loads it, and the division is in float32. A PEFT rsLoRA module scales by α/√r instead:
 * its scale is the parser's. */
static double lora_scale(const mood_module *m)
{
    if (m->rslora)
        return m->scale;
    return m->has_alpha ? (double)((float)m->alpha / (float)m->rank) : 1.0;
}

/* The matrix to factorise and its scale s_old: kohya's unscaled up·down for LoRA modules; the
 * scaled ΔW with s_old = 1 for other additive algorithms. */
static int resize_source(float *mat, double *scale_out, const mood_module *m)
{
    mood_module raw = *m;
    if (m->algo == MOOD_ALGO_LORA && !m->tucker) {
        raw.scale = 1.0;
        *scale_out = lora_scale(m);
    } else {
        *scale_out = 1.0;
    }
    return mood__module_delta(mat, &raw, NULL);
}

/* kohya's new rank from the singular values, seen as the min(out, cols) values torch returns
 * (those past r->k are zero). Returns -1 when out of memory. */
static int resize_rank(const resize_ctx *c, const svd_result *r, const mood_module *m)
{
    int64_t lim = r->rows < r->cols ? r->rows : r->cols;
    float *s = mood_calloc((size_t)lim, sizeof *s);
    int cap = m->ndim == 4 ? c->conv_rank : c->rank;
    int nr = cap;
    if (!s)
        return -1;
    for (int i = 0; i < r->k; i++)
        s[i] = (float)r->s[i];
    if (c->method != MOOD_RESIZE_FIXED && lim > 1)
        nr = dynamic_rank(s, (int)lim, c->method, c->param);
    if (s[0] <= MIN_SV)
        nr = 1;
    else if (nr > cap)
        nr = cap;
    if (nr > lim) /* kohya would fail here; a rank above the matrix's cannot add anything */
        nr = (int)lim;
    mood_free(s);
    return nr;
}

/* SVD of the module's matrix and the rank to keep: through the factors when the module is a
 * plain LoRA whose rank is below the matrix's and the kept rank does not exceed it. */
static int resize_svd(svd_result *r, int *nr, double *scale, const resize_ctx *c,
                      const mood_module *m, const char *file)
{
    int64_t cols = m->in * m->kh * m->kw;
    float *mat = NULL;
    lowrank lr;
    int err;
    *scale = lora_scale(m);
    if (is_plain_lora(m) && m->rank < m->out && m->rank < cols) {
        if ((err = lowrank_alloc(&lr, m->out, cols, m->rank)) == 0 &&
            (err = lowrank_add(&lr, m, 1.0, 0, file)) == 0)
            err = svd_lowrank(r, &lr, m->out, cols, m->name);
        else
            lowrank_dispose(&lr);
        if (!err && (*nr = resize_rank(c, r, m)) < 0)
            err = mood_error_nomem();
        if (err || *nr <= r->k)
            return err;
        svd_dispose(r);
    }
    if (!(mat = mood_malloc((size_t)module_numel(m) * sizeof *mat)))
        return mood_error_nomem();
    if ((err = resize_source(mat, scale, m)) == 0 &&
        (err = svd_run(r, mat, m->out, cols, 0, m->name)) == 0 && (*nr = resize_rank(c, r, m)) < 0)
        err = mood_error_nomem();
    mood_free(mat);
    return err;
}

static int resize_module(out_list *out, resize_ctx *c, const mood_module *m, const char *file)
{
    int64_t geom[4] = {m->out, m->in, m->kh, m->kw};
    double scale = 1, all = 0, kept = 0;
    mood_lora_out_module *o = NULL;
    svd_result r = {0};
    int nr = 0, err = resize_svd(&r, &nr, &scale, c, m, file);
    if (!err && (err = out_push(out, &o)) == 0 &&
        (err = out_init(o, m->target->kohya_name, m->ndim == 4 ? 4 : 2, geom, &nr, 0)) == 0) {
        o->alpha = (double)((float)scale * (float)nr); /* α/r kept, in float32 as torch */
        err = svd_take(o, &r, nr, 0);
    }
    for (int i = 0; !err && i < r.k; i++) {
        all += r.s[i] * r.s[i];
        kept += i < nr ? r.s[i] * r.s[i] : 0;
    }
    if (!err && all > 0) {
        c->fro_sum += sqrt(kept / all);
        c->fro_n++;
    }
    if (!err && (!c->last_name || strcmp(m->name, c->last_name) > 0)) {
        c->last_name = m->name;
        c->last_alpha = o->alpha;
    }
    if (m->rank > c->old_max)
        c->old_max = m->rank;
    svd_dispose(&r);
    return err;
}

/* Metadata of the output: the input's (resize_lora.py keeps it) but a PEFT config, with
 * ss_training_comment, ss_network_dim and ss_network_alpha updated. `buf` holds the strings made
 * here. */
static int resize_meta(const char ***meta_out, mood_buf *buf, const mood_adapter *a,
                       const resize_ctx *c)
{
    static const char *const names[] = {"", "sv_ratio", "sv_fro", "sv_cumulative"};
    const mood_st_file *f = a->file;
    size_t nm = mood_st_meta_count(f), k = 0, at_dim, at_alpha;
    const char *old = mood_st_meta_get(f, "ss_training_comment");
    const char **meta = mood_malloc((2 * nm + 10) * sizeof *meta);
    char param[40];
    int err;
    if (!meta)
        return mood_error_nomem();
    for (size_t i = 0; i < nm; i++) {
        /* the output is kohya's format, its alphas in tensors: a PEFT config kept would describe
         * other ranks and scales, and diffusers refuses a file with both ("Both network_alphas
         * and metadata cannot be specified") */
        if (strcmp(mood_st_meta_key(f, i), "lora_adapter_metadata") == 0)
            continue;
        meta[k++] = mood_st_meta_key(f, i);
        meta[k++] = mood_st_meta_value(f, i);
    }
    mood__lora_py_float(param, sizeof param, c->param);
    /* three NUL-separated strings in buf: comment, dim, alpha */
    if (c->method == MOOD_RESIZE_FIXED && c->conv_rank != c->rank)
        err = mood_buf_printf(buf, "dimension is resized from %d to %d (conv: %d); %s", c->old_max,
                              c->rank, c->conv_rank, old ? old : "");
    else if (c->method == MOOD_RESIZE_FIXED)
        err = mood_buf_printf(buf, "dimension is resized from %d to %d; %s", c->old_max, c->rank,
                              old ? old : "");
    else
        err = mood_buf_printf(buf, "Dynamic resize with %s: %s from %d; %s", names[c->method],
                              param, c->old_max, old ? old : "");
    at_dim = buf->len + 1;
    if (!err)
        err = mood_buf_append(buf, "", 1);
    if (!err && c->method == MOOD_RESIZE_FIXED)
        err = mood_buf_printf(buf, "%d", c->rank);
    else if (!err)
        err = mood_buf_puts(buf, "Dynamic");
    at_alpha = buf->len + 1;
    if (!err)
        err = mood_buf_append(buf, "", 1);
    mood__lora_py_float(param, sizeof param, c->last_alpha);
    if (!err)
        err = mood_buf_puts(buf, c->method == MOOD_RESIZE_FIXED ? param : "Dynamic");
    if (err) {
        mood_free(meta);
        return err;
    }
    meta[k++] = "ss_training_comment";
    meta[k++] = buf->data;
    meta[k++] = "ss_network_dim";
    meta[k++] = buf->data + at_dim;
    meta[k++] = "ss_network_alpha";
    meta[k++] = buf->data + at_alpha;
    if (!mood_st_meta_get(f, "ss_network_args")) { /* kohya adds none */
        meta[k++] = "ss_network_args";
        meta[k++] = NULL;
    }
    meta[k] = NULL;
    *meta_out = meta;
    return 0;
}

static int resize_write(const out_list *out, const mood_adapter *a, const resize_ctx *c,
                        const mood_lora_write_options *o)
{
    mood_buf buf;
    const char **meta = NULL;
    int err;
    mood_buf_init(&buf);
    if ((err = resize_meta(&meta, &buf, a, c)) == 0)
        err = mood__lora_write(o->output, out->m, out->n, a->family, o->dtype, meta, o->progress,
                               o->payload);
    mood_free(meta);
    mood_buf_dispose(&buf);
    return err;
}

int mood_lora_resize(const char *input, mood_resize_method method, double param, int rank,
                     int conv_rank, const mood_lora_write_options *o)
{
    mood_adapter *a = NULL;
    out_list out = {0};
    resize_ctx c = {method, param, rank, conv_rank > 0 ? conv_rank : rank, 0, 0, 0, 0, NULL};
    int err = check_options(o, rank), a_blamed = 1;
    if (!err && (method < MOOD_RESIZE_FIXED || method > MOOD_RESIZE_SV_CUMULATIVE))
        err = mood_error_set(MOOD_EINVAL, "unknown resize method %d", (int)method);
    if (!err && method != MOOD_RESIZE_FIXED && !(param > 0 && isfinite(param)))
        err =
            mood_error_set(MOOD_EINVAL, "the dynamic resize parameter must be > 0 (got %g)", param);
    if (!err && !input)
        err = mood_error_set(MOOD_EINVAL, "resize: no input LoRA given");
    if (!err) /* also keeps the kept-fraction honest: it compares the output with the input */
        err = mood__output_check(o->output, NULL, 0, input, NULL);
    if (err)
        return err;
    if ((err = mood_adapter_open(&a, input, NULL)) != 0 || (err = check_adapter(a, input)) != 0 ||
        (err = check_one_module_per_target(a)) != 0)
        goto done;
    for (size_t i = 0; !err && i < a->n_modules; i++) {
        err = resize_module(&out, &c, &a->modules[i], input);
        if (!err)
            err = report(o, "svd", i + 1, a->n_modules);
    }
    if (!err && (err = resize_write(&out, a, &c, o)) != 0)
        a_blamed = 0; /* the output's error names the output */
done:
    if (err && a && a_blamed)
        mood_error_prefix("%s", input);
    out_dispose(&out);
    mood_adapter_close(a);
    return err;
}

/* ----- extract ----------------------------------------------------------------------------- */

static int has(const char *s, const char *sub)
{
    return strstr(s, sub) != NULL;
}

/* Whether kohya's extract (LoRANetwork targets) covers this base tensor: TE attention and MLP
 * projections; UNet Transformer2DModel children; with conv_rank > 0 also ResnetBlock2D,
 * Downsample2D and Upsample2D children. 0 no, 1 with `rank`, 2 with `conv_rank`. */
static int extract_kind(const mood_target *t, mood_family family, int conv_rank)
{
    const char *k = t->key, *n = t->kohya_name;
    if (t->ndim != 2 && t->ndim != 4)
        return 0;
    if (t->part != MOOD_PART_UNET) {
        /* kohya loads the SD2 text encoder with 23 of its 24 layers */
        if (family == MOOD_FAMILY_SD2 && has(n, "_encoder_layers_23_"))
            return 0;
        return (has(n, "_self_attn_") && has(n, "_proj")) || has(n, "_mlp_fc") ? 1 : 0;
    }
    if (has(k, ".proj_in.") || has(k, ".proj_out.") || has(k, ".transformer_blocks."))
        return 1;
    if (conv_rank <= 0)
        return 0;
    if (has(k, ".in_layers.2.") || has(k, ".out_layers.3.") || has(k, ".emb_layers.1.") ||
        has(k, ".skip_connection.") || has(k, ".op.") ||
        (has(k, "output_blocks.") && has(k, ".conv.weight")))
        return is_kxk(t->ndim, t->shape[2], t->shape[3]) ? 2 : 1;
    return 0;
}

/* diff = tuned − base for target t (its slice rows for fused in_proj weights). */
static int extract_diff(float **out, const mood_target *t, const mood_checkpoint *base,
                        const mood_checkpoint *tuned)
{
    const mood_st_tensor *b = mood_st_find(base->file, t->key);
    const mood_st_tensor *u = mood_st_find(tuned->file, t->key);
    float *fb = NULL, *fu = NULL;
    int64_t numel = t->shape[0] * t->shape[1] * (t->ndim == 4 ? t->shape[2] * t->shape[3] : 1);
    int64_t off = t->slice >= 0 ? t->slice * numel : 0;
    int err = 0;
    *out = NULL;
    if (!b || !u)
        return mood_error_set(MOOD_ENOTFOUND, "%s: no tensor \"%s\"",
                              mood_st_path(b ? tuned->file : base->file), t->key);
    if (b->ndim != u->ndim || memcmp(b->shape, u->shape, (size_t)b->ndim * sizeof b->shape[0]))
        return mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s\" has another shape than in %s",
                              mood_st_path(tuned->file), t->key, mood_st_path(base->file));
    if (off + numel > mood_st_numel(b))
        return mood_error_set(MOOD_EFORMAT, "%s: tensor \"%s\" is smaller than its target",
                              mood_st_path(base->file), t->key);
    if ((err = mood__tensor_f32(&fb, b, mood_st_path(base->file))) == 0 &&
        (err = mood__tensor_f32(&fu, u, mood_st_path(tuned->file))) == 0) {
        for (int64_t i = 0; i < numel; i++)
            fu[i] = fu[off + i] - fb[off + i];
        *out = fu;
        fu = NULL;
    }
    mood_free(fb);
    mood_free(fu);
    mood_st_release(base->file, b);
    mood_st_release(tuned->file, u);
    return err;
}

static int64_t target_numel(const mood_target *t)
{
    return t->shape[0] * t->shape[1] * (t->ndim == 4 ? t->shape[2] * t->shape[3] : 1);
}

/* kohya keeps the text encoder only when some |diff| exceeds min_diff. */
static int te_differs(int *out, const mood_checkpoint *base, const mood_checkpoint *tuned,
                      int conv_rank, double min_diff)
{
    size_t n = mood__keymap_target_count(base->keymap);
    int err = 0;
    *out = 0;
    for (size_t i = 0; !err && !*out && i < n; i++) {
        const mood_target *t = mood__keymap_target(base->keymap, i);
        float *d = NULL;
        if (t->part == MOOD_PART_UNET || !extract_kind(t, base->family, conv_rank))
            continue;
        if ((err = extract_diff(&d, t, base, tuned)) != 0)
            break;
        for (int64_t e = 0; e < target_numel(t) && !*out; e++)
            *out = fabsf(d[e]) > min_diff;
        mood_free(d);
    }
    return err;
}

static int extract_write(const out_list *out, mood_family family, int rank, int conv_rank,
                         const mood_lora_write_options *o)
{
    char dim[16], alpha[40], cdim[16], calpha[40], args[128];
    const char *meta[] = {
        "ss_network_dim", dim, "ss_network_alpha", alpha, "ss_network_args", args, NULL};
    snprintf(dim, sizeof dim, "%d", rank);
    mood__lora_py_float(alpha, sizeof alpha, rank);
    snprintf(cdim, sizeof cdim, "%d", conv_rank);
    mood__lora_py_float(calpha, sizeof calpha, conv_rank);
    if (conv_rank > 0)
        snprintf(args, sizeof args, "{\"conv_dim\": \"%s\", \"conv_alpha\": \"%s\"}", cdim, calpha);
    else
        snprintf(args, sizeof args, "{}");
    return mood__lora_write(o->output, out->m, out->n, family, o->dtype, meta, o->progress,
                            o->payload);
}

/* Module of target t: the SVD of tuned - base. *differs is set when any element differs. */
static int extract_target(out_list *out, const mood_target *t, const mood_checkpoint *base,
                          const mood_checkpoint *tuned, int r, double q, int *differs)
{
    int64_t geom[4] = {t->shape[0], t->shape[1], t->ndim == 4 ? t->shape[2] : 1,
                       t->ndim == 4 ? t->shape[3] : 1};
    mood_lora_out_module *o;
    float *d = NULL;
    int err = extract_diff(&d, t, base, tuned);
    for (int64_t e = 0; !err && !*differs && e < geom[0] * geom[1] * geom[2] * geom[3]; e++)
        *differs = d[e] != 0;
    if (!err && (err = out_push(out, &o)) == 0)
        err = factor_clamped(o, t->kohya_name, d, t->ndim, geom, r, q);
    mood_free(d);
    return err;
}

static int open_pair(mood_checkpoint **b, mood_checkpoint **t, const char *base, const char *tuned)
{
    int err = mood_checkpoint_open(b, base);
    if (!err)
        err = mood_checkpoint_open(t, tuned);
    if (!err && (*b)->family != (*t)->family)
        err = mood_error_set(MOOD_EFAMILY, "%s is an %s checkpoint but %s is %s", tuned,
                             mood_family_name((*t)->family), base, mood_family_name((*b)->family));
    return err;
}

int mood_lora_extract(const char *base, const char *tuned, int rank, int conv_rank, double min_diff,
                      const mood_lora_write_options *o)
{
    mood_checkpoint *cb = NULL, *ct = NULL;
    out_list out = {0};
    int err = check_options(o, rank), te = 0, differs = 0;
    size_t n;
    if (!err && (!base || !tuned))
        err = mood_error_set(MOOD_EINVAL, "extract needs a base and a tuned checkpoint");
    if (!err && !(min_diff >= 0))
        err = mood_error_set(MOOD_EINVAL, "min_diff must be >= 0 (got %g)", min_diff);
    if (!err)
        err = mood__output_check(o->output, NULL, 0, base, tuned);
    if (err)
        return err;
    if (conv_rank < 0)
        conv_rank = 0;
    if ((err = open_pair(&cb, &ct, base, tuned)) != 0 ||
        (err = te_differs(&te, cb, ct, conv_rank, min_diff)) != 0)
        goto done;
    n = mood__keymap_target_count(cb->keymap);
    for (size_t i = 0; !err && i < n; i++) {
        const mood_target *t = mood__keymap_target(cb->keymap, i);
        int kind = extract_kind(t, cb->family, conv_rank);
        if (kind && (t->part == MOOD_PART_UNET || te))
            err = extract_target(&out, t, cb, ct, kind == 2 ? conv_rank : rank, o->clamp_quantile,
                                 &differs);
        if (!err)
            err = report(o, "svd", i + 1, n);
    }
    if (!err && out.n == 0)
        err = mood_error_set(MOOD_EFORMAT, "%s: no module to extract", base);
    if (!err && !differs) /* a LoRA of zeros would change nothing: the same file twice? */
        err = mood_error_set(MOOD_EINVAL,
                             "%s and %s hold the same weights: there is no difference to extract "
                             "(--tuned should be the fine-tuned model, --base the one it started "
                             "from)",
                             base, tuned);
    if (!err && !te) /* kohya: "Text encoder is same. Extract U-Net only." */
        mood_log(MOOD_LOG_WARN,
                 "the text encoders of %s and %s do not differ (by more than min_diff %g): the "
                 "LoRA holds UNet modules only",
                 base, tuned, min_diff);
    if (!err)
        err = extract_write(&out, cb->family, rank, conv_rank, o);
done:
    out_dispose(&out);
    mood_checkpoint_close(cb);
    mood_checkpoint_close(ct);
    return err;
}
