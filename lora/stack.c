/*
 * stack.c: `mood lora stack`: one kohya-format LoRA exactly equivalent to applying every input
 * with its multipliers (no base model needed, no approximation).
 *
 * Per target module (grouped by its kohya name across the inputs):
 *   - every contribution plain LoRA (no Tucker mid): ranks are concatenated with the weights
 *     folded in. c = m·s of each input is split as sign(c)·√|c| on down and √|c| on up, so
 *     U·D = Σ c_i·U_i·D_i (unlike kohya's merge_lora.py --concat, which keeps alpha and squares
 *     the ratio, §5.2).
 *   - otherwise (LoHa, LoKr, Tucker, full diff): the exact ΔW = Σ c_i·ΔW_i is computed and stored
 *     at the rank the inputs' factors bound (r for a LoRA, r1·r2 for a LoHa, rank(w1)·rank(w2)
 *     for a LoKr, summed), as an orthonormal basis of its column space times its projection on
 *     it (in double precision, checked, exact but for the float32 it is stored in); at full
 *     rank r = min(out, in·kh·kw) where the bound reaches it (a full diff) or the check fails,
 *     up·down == ΔW with the smaller side an identity.
 * Every module of the file then gets the same alpha A, the largest rank in the file, and its
 * factors are multiplied by √(r/A), so (A/r)·up·down is still exactly the sum. A uniform alpha
 * matters to diffusers (≤ 0.42 at least): it loads a kohya file's per-module alphas through a
 * PEFT `alpha_pattern` whose keys it misnames for U-Net attention modules
 * (`…attn1.processor.to_k_lora.down.weight`) and, with transformers ≥ 5, for text-encoder modules,
 * so every module whose alpha differs from the file's most common alpha gets the wrong scale.
 * With one alpha nothing goes through `alpha_pattern`; the ranks (`rank_pattern`) load correctly.
 * Inputs whose effect depends on the base weight (DoRA, OFT, BOFT, IA3, GLoRA) cannot be stacked
 * exactly without a base and are refused, as are norm and bias deltas, which a LoRA cannot hold.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "lora/lapack.h"
#include "lora/lora_internal.h"
#include "mood/hash.h"

/* One input module contributing to a target, with its effective multiplier. */
typedef struct contrib {
    const mood_module *m;
    const char *path; /* its file (for messages) */
    double mult;
} contrib;

typedef struct group {
    const char *name; /* kohya name (borrowed from the first module's target) */
    const mood_module *first;
    const char *path; /* the file of the first module (for messages) */
    contrib *c;
    size_t n, cap;
} group;

typedef struct groups {
    group *g;
    size_t n, cap;
} groups;

/* ----- grouping ----------------------------------------------------------------------------- */

static int refuse(const mood_adapter *a, const mood_module *m)
{
    const char *why =
        m->dora ? "DoRA (its magnitude is relative to the base weight)" : mood_algo_name(m->algo);
    if (m->algo == MOOD_ALGO_NORM || (m->algo == MOOD_ALGO_FULL && m->t[ROLE_DIFF_B]) ||
        (m->algo == MOOD_ALGO_FULL && !m->t[ROLE_DIFF]))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: module \"%s\" changes a norm or a bias, "
                              "which a LoRA file cannot hold; bake it into the checkpoint "
                              "instead (mood bake)",
                              mood_st_path(a->file), m->name);
    return mood_error_set(MOOD_EUNSUPPORTED,
                          "%s: module \"%s\" is %s, whose effect depends on "
                          "the base weight; it cannot be stacked exactly without a base; bake "
                          "it into the checkpoint instead (mood bake)",
                          mood_st_path(a->file), m->name, why);
}

static int group_add(groups *gs, const mood_module *m, const char *path, double mult)
{
    group *g = NULL;
    for (size_t i = 0; i < gs->n && !g; i++) {
        if (strcmp(gs->g[i].name, m->target->kohya_name) == 0)
            g = &gs->g[i];
    }
    if (!g) {
        if (mood_array_reserve(&gs->g, &gs->cap, gs->n, sizeof *gs->g, 64) != 0)
            return MOOD_ENOMEM;
        g = &gs->g[gs->n++];
        memset(g, 0, sizeof *g);
        g->name = m->target->kohya_name;
        g->first = m;
        g->path = path;
    }
    if (mood_array_reserve(&g->c, &g->cap, g->n, sizeof *g->c, 4) != 0)
        return MOOD_ENOMEM;
    g->c[g->n].m = m;
    g->c[g->n].path = path;
    g->c[g->n].mult = mult;
    g->n++;
    return 0;
}

static int64_t numel_of(const mood_module *m)
{
    return m->ndim == 1 ? m->out : m->out * m->in * m->kh * m->kw;
}

static int group_module(groups *gs, const mood_adapter *a, const mood_module *m,
                        const mood_weighted_adapter *w)
{
    double mult = m->target && m->target->part != MOOD_PART_UNET ? w->te : w->unet;
    if (!mood__module_is_additive(m) || m->algo == MOOD_ALGO_NORM ||
        (m->algo == MOOD_ALGO_FULL && (m->t[ROLE_DIFF_B] || !m->t[ROLE_DIFF])))
        return refuse(a, m);
    if (!m->target || !m->target->kohya_name)
        return mood_error_set(MOOD_EFORMAT, "%s: module \"%s\" has no known target",
                              mood_st_path(a->file), m->name);
    if (m->ndim != 2 && m->ndim != 4)
        return refuse(a, m);
    if (numel_of(m) <= 0)
        return mood_error_set(
            MOOD_EFORMAT,
            "%s: module \"%s\" changes an empty weight (%lld x %lld): its factors "
            "have a zero-sized dimension",
            mood_st_path(a->file), m->name, (long long)m->out, (long long)(m->in * m->kh * m->kw));
    if (mult == 0)
        return 0; /* no effect: no rank spent on it */
    for (size_t i = 0; i < gs->n; i++) {
        const mood_module *f = gs->g[i].first;
        int err;
        if (strcmp(gs->g[i].name, m->target->kohya_name) == 0 &&
            (err = mood__module_same_shape(m, mood_st_path(a->file), f, gs->g[i].path)) != 0)
            return err;
    }
    return group_add(gs, m, mood_st_path(a->file), mult);
}

static void groups_dispose(groups *gs)
{
    for (size_t i = 0; i < gs->n; i++)
        mood_free(gs->g[i].c);
    mood_free(gs->g);
}

/* ----- factorisation ------------------------------------------------------------------------ */

/* A plain LoRA whose flat factors match the target: (out, r) · (r, in·kh·kw). */
static int is_plain(const mood_module *m)
{
    const mood_st_tensor *u = m->t[ROLE_UP], *d = m->t[ROLE_DOWN];
    int64_t cols = numel_of(m) / m->out;
    if (m->algo != MOOD_ALGO_LORA || m->t[ROLE_MID] || !u || !d || u->ndim < 2 || d->ndim < 2)
        return 0;
    return u->shape[0] == m->out && d->shape[0] == mood_st_numel(u) / m->out &&
           mood_st_numel(d) == d->shape[0] * cols;
}

/* n zeroed elements of `size` bytes, refused when the count is negative or overflows. */
static void *alloc_zeroed(int64_t n, size_t size, int *err)
{
    uint64_t bytes;
    void *p;
    if (n < 0 || mood_mul_u64(&bytes, (uint64_t)n, size) != 0 || bytes > SIZE_MAX) {
        *err = mood_error_set(MOOD_EINVAL, "tensor of %lld elements is too large", (long long)n);
        return NULL;
    }
    p = mood_calloc(bytes ? (size_t)bytes : 1, 1);
    *err = p ? 0 : mood_error_nomem();
    return p;
}

static int alloc_f32(float **out, int64_t n)
{
    int err;
    *out = alloc_zeroed(n, sizeof **out, &err);
    return err;
}

static int alloc_f64(double **out, int64_t n)
{
    int err;
    *out = alloc_zeroed(n, sizeof **out, &err);
    return err;
}

static void out_shape(mood_lora_out_module *o, const mood_module *m)
{
    o->ndim = m->ndim == 4 ? 4 : 2;
    o->out = m->out;
    o->in = m->in;
    o->kh = m->ndim == 4 ? m->kh : 1;
    o->kw = m->ndim == 4 ? m->kw : 1;
}

/* Ranks concatenated: up (out, R) column blocks √|c|·U_i, down (R, cols) row blocks
 * sign(c)·√|c|·D_i. */
static int concat(mood_lora_out_module *o, const group *g)
{
    int64_t out = g->first->out, cols = numel_of(g->first) / out, total = 0, at = 0;
    int err = 0;
    for (size_t i = 0; i < g->n; i++)
        total += g->c[i].m->t[ROLE_DOWN]->shape[0];
    if ((err = alloc_f32(&o->up, out * total)) || (err = alloc_f32(&o->down, total * cols)))
        return err;
    for (size_t i = 0; i < g->n && !err; i++) {
        const mood_module *m = g->c[i].m;
        int64_t r = m->t[ROLE_DOWN]->shape[0];
        double c = g->c[i].mult * m->scale;
        float su = (float)sqrt(fabs(c)), sd = c < 0 ? -su : su, *u = NULL, *d = NULL;
        if ((err = mood__tensor_f32(&u, m->t[ROLE_UP], NULL)) == 0 &&
            (err = mood__tensor_f32(&d, m->t[ROLE_DOWN], NULL)) == 0) {
            for (int64_t row = 0; row < out; row++)
                for (int64_t k = 0; k < r; k++)
                    o->up[row * total + at + k] = su * u[row * r + k];
            for (int64_t k = 0; k < r * cols; k++)
                o->down[at * cols + k] = sd * d[k];
        }
        at += r;
        mood_free(u);
        mood_free(d);
    }
    o->rank = (int)total;
    o->alpha = (double)total;
    return err;
}

/* The rank of a factor pair whose inner dimension is t's first (down-side factors are stored
 * (rank, ...)), or of a whole matrix t: min(rows, cols). */
static int64_t inner_rank(const mood_st_tensor *t, int whole)
{
    int64_t rows = t->ndim > 0 ? t->shape[0] : 1, cols = rows ? mood_st_numel(t) / rows : 0;
    return whole ? (rows < cols ? rows : cols) : rows;
}

/* An upper bound of rank(ΔW) read from the factors' shapes, `full` where none is known:
 * a LoRA r (up's columns: a Tucker core (ra, rb, kh, kw) between the factors leaves at most ra);
 * a LoHa r1·r2 (a Hadamard product's rank is at most the product of the ranks; a Tucker
 * factor's rank is at most its core's first dimension); a LoKr rank(w1)·rank(w2) (a Kronecker
 * product's rank is their product). */
static int64_t rank_bound(const mood_module *m, int64_t full)
{
    const mood_st_tensor *const *t = m->t;
    int64_t b = full;
    if (m->algo == MOOD_ALGO_LORA && t[ROLE_UP] && t[ROLE_MID])
        b = inner_rank(t[ROLE_MID], 0) < inner_rank(t[ROLE_UP], 1) ? inner_rank(t[ROLE_MID], 0)
                                                                   : inner_rank(t[ROLE_UP], 1);
    else if (m->algo == MOOD_ALGO_LORA && t[ROLE_DOWN])
        b = mood__module_ranks_used(m, inner_rank(t[ROLE_DOWN], 0));
    else if (m->algo == MOOD_ALGO_LOHA && t[ROLE_HADA_T1] && t[ROLE_HADA_T2])
        b = inner_rank(t[ROLE_HADA_T1], 0) * inner_rank(t[ROLE_HADA_T2], 0);
    else if (m->algo == MOOD_ALGO_LOHA && t[ROLE_HADA_W1B] && t[ROLE_HADA_W2B])
        b = inner_rank(t[ROLE_HADA_W1B], 0) * inner_rank(t[ROLE_HADA_W2B], 0);
    else if (m->algo == MOOD_ALGO_LOKR && (t[ROLE_LOKR_W1] || t[ROLE_LOKR_W1B]) &&
             (t[ROLE_LOKR_W2] || t[ROLE_LOKR_W2B]))
        b = (t[ROLE_LOKR_W1] ? inner_rank(t[ROLE_LOKR_W1], 1) : inner_rank(t[ROLE_LOKR_W1B], 0)) *
            (t[ROLE_LOKR_W2]   ? inner_rank(t[ROLE_LOKR_W2], 1)
             : t[ROLE_LOKR_T2] ? inner_rank(t[ROLE_LOKR_T2], 0)
                               : inner_rank(t[ROLE_LOKR_W2B], 0));
    return b > 0 && b < full ? b : full;
}

/* A fixed pseudo-random value in [-1, 1) (splitmix64 of i): the test matrix of the range finder
 * below, the same in every run. */
static double test_value(uint64_t i)
{
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-52 - 1.0;
}

/* ΔW (out × cols) of rank at most R as up (out × R) · down (R × cols), exact but for rounding:
 * up is an orthonormal basis Q of the column space of ΔW·Ω, Ω a (cols × R) test matrix, which
 * is ΔW's whole column space when rank(ΔW) <= R (Halko, Martinsson and Tropp, 2011), and
 * down = Qᵀ·ΔW, so up·down = Q·Qᵀ·ΔW = ΔW. In double precision; Ω can still miss a direction of
 * ΔW (one nearly orthogonal to every column of Ω: rare, but a fixed Ω can meet it), so the
 * result is checked on two more test vectors: *exact is 0 when it is off by more than 1e-5 of
 * ΔW there, and the caller tries another Ω, then full rank. (ΔW itself is computed in float32
 * from the factors: its rounding, about 1e-7 of it, is all a right result is off by.) */
#define EXACT_TOL 1e-5
static int low_rank(mood_lora_out_module *o, const double *a, int64_t out, int64_t cols, int R,
                    uint64_t seed, int *exact)
{
    double *omega = mood_malloc((size_t)(cols * (R + 2)) * sizeof *omega);
    double *y = mood_malloc((size_t)(out * (R + 2)) * sizeof *y),
           *tau = mood_malloc(R * sizeof *tau);
    double *q = mood_malloc((size_t)(out * R) * sizeof *q), *d = NULL, *z = NULL;
    double diff = 0, norm = 0;
    int err = 0, info, threads = omp_get_max_threads();
    *exact = 0;
    if (!omega || !y || !tau || !q || (err = alloc_f64(&d, (int64_t)R * cols)) != 0 ||
        (err = alloc_f64(&z, (int64_t)R * 2)) != 0) {
        err = err ? err : mood_error_nomem();
        goto done;
    }
    for (int64_t k = 0; k < cols * (R + 2); k++) /* R columns of Ω, then the 2 check vectors */
        omega[k] = test_value(seed + (uint64_t)k);
    /* one thread: products this thin spend more in waking and spinning threads than they save
     * (on this 2-core machine, 94 s instead of 13 for a LoHa of SD1.5) */
    omp_set_num_threads(1);
    /* Y = ΔW·[Ω, checks] (out × (R + 2)); Q from Y's first R columns, column-major for LAPACK */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, R + 2, (int)cols, 1.0, a,
                (int)cols, omega, R + 2, 0.0, y, R + 2);
    for (int64_t i = 0; i < out; i++)
        for (int j = 0; j < R; j++)
            q[i + j * out] = y[i * (R + 2) + j];
    info = mood__dgeqrf((int)out, R, q, (int)out, tau);
    if (info == 0)
        info = mood__dorgqr((int)out, R, R, q, (int)out, tau);
    if (info != 0) {
        err = mood_error_set(info < 0 ? MOOD_ENOMEM : MOOD_EBACKEND, "QR failed (LAPACK info %d)",
                             info);
        goto done;
    }
    /* down = Qᵀ·ΔW; then up·(down·x) against ΔW·x for the two check vectors x */
    cblas_dgemm(CblasColMajor, CblasTrans, CblasTrans, R, (int)cols, (int)out, 1.0, q, (int)out, a,
                (int)cols, 0.0, d, R); /* d column-major (R × cols) = row-major (cols × R)ᵀ */
    for (int c = 0; c < 2; c++)
        for (int j = 0; j < R; j++) {
            double acc = 0;
            for (int64_t k = 0; k < cols; k++)
                acc += d[k * R + j] * omega[k * (R + 2) + R + c];
            z[c * R + j] = acc;
        }
    for (int64_t i = 0; i < out; i++)
        for (int c = 0; c < 2; c++) {
            double want = y[i * (R + 2) + R + c], got = 0;
            for (int j = 0; j < R; j++)
                got += q[i + j * out] * z[c * R + j];
            diff += (want - got) * (want - got);
            norm += want * want;
        }
    *exact = diff <= EXACT_TOL * EXACT_TOL * norm;
    if (!*exact)
        goto done;
    if ((err = alloc_f32(&o->up, out * R)) != 0 || (err = alloc_f32(&o->down, (int64_t)R * cols)))
        goto done;
    for (int64_t i = 0; i < out; i++)
        for (int j = 0; j < R; j++)
            o->up[i * R + j] = (float)q[i + j * out];
    for (int j = 0; j < R; j++)
        for (int64_t k = 0; k < cols; k++)
            o->down[j * cols + k] = (float)d[k * R + j];
    o->rank = R;
    o->alpha = (double)R;
done:
    omp_set_num_threads(threads);
    mood_free(omega);
    mood_free(y);
    mood_free(tau);
    mood_free(q);
    mood_free(d);
    mood_free(z);
    return err;
}

/* The exact ΔW = Σ c_i·ΔW_i, stored at the rank its factors bound (low_rank) or, where that
 * bound reaches min(out, cols), at full rank: up = I (out <= cols) or down = I (cols < out). */
static int exact(mood_lora_out_module *o, const group *g)
{
    int64_t out = g->first->out, numel = numel_of(g->first), cols = numel / out;
    int64_t r = out <= cols ? out : cols, bound = 0;
    double *acc = NULL;
    float *one = NULL, *eye = NULL;
    int err, ok = 0;
    for (size_t i = 0; i < g->n; i++)
        bound += rank_bound(g->c[i].m, r);
    if ((err = alloc_f64(&acc, numel)) || (err = alloc_f32(&one, numel)))
        goto done;
    for (size_t i = 0; i < g->n && !err; i++) {
        if ((err = mood__module_delta(one, g->c[i].m, NULL)) != 0)
            mood_error_prefix("%s", g->c[i].path);
        for (int64_t k = 0; !err && k < numel; k++)
            acc[k] += g->c[i].mult * (double)one[k];
    }
    /* a low rank, with another Ω when one missed part of ΔW; full rank when none would do */
    for (uint64_t seed = 0; !err && bound < r && !ok && seed < 3; seed++)
        err = low_rank(o, acc, out, cols, (int)bound, seed * 0x9E3779B97F4A7C15ull, &ok);
    if (err)
        mood_error_prefix("module \"%s\"", g->name);
    if (err || ok || (err = alloc_f32(&eye, r * r)) != 0)
        goto done;
    for (int64_t k = 0; k < numel; k++) /* ΔW itself, beside an identity */
        one[k] = (float)acc[k];
    for (int64_t k = 0; k < r; k++)
        eye[k * r + k] = 1.0f;
    o->up = out <= cols ? eye : one;
    o->down = out <= cols ? one : eye;
    one = eye = NULL;
    o->rank = (int)r;
    o->alpha = (double)r;
done:
    mood_free(acc);
    mood_free(one);
    mood_free(eye);
    return err;
}

static int build_module(mood_lora_out_module *o, const group *g)
{
    int plain = 1, err;
    memset(o, 0, sizeof *o);
    out_shape(o, g->first);
    if (!(o->name = mood_strdup(g->name)))
        return mood_error_nomem();
    for (size_t i = 0; i < g->n; i++)
        plain = plain && is_plain(g->c[i].m);
    err = plain ? concat(o, g) : exact(o, g);
    if (!err && (o->rank <= 0 || o->rank > 1 << 30))
        err = mood_error_set(MOOD_EFORMAT, "module \"%s\": rank %d out of range", g->name, o->rank);
    return err;
}

/* One alpha A (the largest rank) for every module; the factors of a module of rank r carry
 * √(r/A) each, so that (A/r)·up·down equals the scale-1 product built above. */
static void uniform_alpha(mood_lora_out_module *mods, size_t n)
{
    int big = 0;
    for (size_t i = 0; i < n; i++)
        big = mods[i].rank > big ? mods[i].rank : big;
    for (size_t i = 0; i < n; i++) {
        mood_lora_out_module *o = &mods[i];
        int64_t cols = o->in * o->kh * o->kw;
        if (o->rank != big) {
            float f = (float)sqrt((double)o->rank / (double)big);
            for (int64_t k = 0; k < o->out * (int64_t)o->rank; k++)
                o->up[k] *= f;
            for (int64_t k = 0; k < (int64_t)o->rank * cols; k++)
                o->down[k] *= f;
        }
        o->alpha = (double)big;
    }
}

/* ----- mood_lora_stack ---------------------------------------------------------------------- */

/* [{"file": name, "autov3": hex, "unet": m, "te": m}, ...] */
static int stacked_record(mood_buf *b, const mood_weighted_adapter *in, size_t n)
{
    int err = mood_buf_puts(b, "[");
    for (size_t k = 0; k < n && !err; k++) {
        mood_file_hashes h;
        if ((err = mood_hash_file(&h, in[k].path, NULL, NULL)) != 0)
            break;
        err = mood_buf_puts(b, k ? ", {\"file\": " : "{\"file\": ");
        err =
            err ? err
                : mood_buf_json_string(b, in[k].name ? in[k].name : mood_path_basename(in[k].path));
        err = err ? err
                  : mood_buf_printf(b, ", \"autov3\": \"%s\", \"unet\": %.10g, \"te\": %.10g}",
                                    h.is_safetensors ? h.autov3 : "", in[k].unet, in[k].te);
    }
    return err ? err : mood_buf_puts(b, "]");
}

static int open_inputs(mood_adapter **ads, mood_family *family, const mood_weighted_adapter *in,
                       size_t n)
{
    int err = 0;
    *family = MOOD_FAMILY_UNKNOWN;
    for (size_t k = 0; k < n && !err; k++) {
        mood_family f;
        if (!in[k].path || !isfinite(in[k].unet) || !isfinite(in[k].te))
            return mood_error_set(MOOD_EINVAL,
                                  "stack: input %zu has no path or a non-finite "
                                  "multiplier",
                                  k + 1);
        if (in[k].dyn) /* stacking copies the factors whole */
            return mood_error_set(MOOD_EINVAL, "stack: %s: a DyLoRA rank cut is not supported here",
                                  in[k].path);
        if ((err = mood_adapter_open(&ads[k], in[k].path, NULL)) != 0)
            break;
        f = mood_adapter_family(ads[k]);
        if (f != MOOD_FAMILY_UNKNOWN && *family != MOOD_FAMILY_UNKNOWN && f != *family)
            err = mood_error_set(MOOD_EFAMILY,
                                 "%s is an %s LoRA but %s is for %s; LoRAs of "
                                 "different base families cannot be stacked",
                                 in[k].path, mood_family_name(f), in[0].path,
                                 mood_family_name(*family));
        if (*family == MOOD_FAMILY_UNKNOWN)
            *family = f;
        if (!err && ads[k]->n_unmatched)
            mood_log(MOOD_LOG_WARN,
                     "%s: %zu keys matched no module of a %s model and are not "
                     "carried into the stack",
                     in[k].path, ads[k]->n_unmatched, mood_family_name(f));
    }
    return err;
}

/* As `mood lora merge` (kohya's svd_merge_lora.py): ss_v2 and ss_base_model_version come from
 * the first input that has them. An SD2 stack of inputs trained on the 512 epsilon model
 * ("sd_v2") is then described as such, not as the 768-v model lora_write.c assumes for SD2. */
static size_t inherited_meta(const char **meta, mood_adapter *const *ads, size_t n)
{
    size_t k = 0;
    const char *ver = NULL;
    for (size_t key = 0; key < 2; key++) {
        const char *name = key ? "ss_base_model_version" : "ss_v2";
        for (size_t i = 0; i < n; i++) {
            const char *v = mood_st_meta_get(ads[i]->file, name);
            if (v) {
                meta[k++] = name;
                meta[k++] = v;
                if (key)
                    ver = v;
                break;
            }
        }
    }
    if (ver && strcmp(ver, "sd_v2") == 0) {
        meta[k++] = "modelspec.architecture";
        meta[k++] = "stable-diffusion-v2-512/lora";
        meta[k++] = "modelspec.resolution";
        meta[k++] = "512x512";
        meta[k++] = "modelspec.prediction_type";
        meta[k++] = "epsilon";
    }
    return k;
}

static int write_stack(const groups *gs, mood_family family, mood_adapter *const *ads,
                       const mood_weighted_adapter *in, size_t n, const mood_lora_write_options *o)
{
    mood_lora_out_module *mods = mood_calloc(gs->n ? gs->n : 1, sizeof *mods);
    mood_buf rec;
    const char *meta[16] = {"mood_stacked_from", NULL, "ss_network_module", "networks.lora"};
    int err = mods ? 0 : mood_error_nomem();
    meta[4 + inherited_meta(meta + 4, ads, n)] = NULL;
    mood_buf_init(&rec);
    for (size_t i = 0; i < gs->n && !err; i++)
        err = build_module(&mods[i], &gs->g[i]);
    if (!err)
        uniform_alpha(mods, gs->n);
    if (!err && (err = stacked_record(&rec, in, n)) == 0) {
        meta[1] = rec.data;
        err = mood__lora_write(o->output, mods, gs->n, family, o->dtype, meta, o->progress,
                               o->payload);
    }
    for (size_t i = 0; mods && i < gs->n; i++)
        mood__lora_out_module_dispose(&mods[i]);
    mood_free(mods);
    mood_buf_dispose(&rec);
    return err;
}

int mood_lora_stack(const mood_weighted_adapter *inputs, size_t n, const mood_lora_write_options *o)
{
    mood_adapter **ads = NULL;
    mood_family family;
    groups gs;
    int err = 0;
    memset(&gs, 0, sizeof gs);
    if (!o || !o->output || !inputs || n == 0)
        return mood_error_set(MOOD_EINVAL, "stack: no inputs or no output given");
    if ((err = mood__output_check(o->output, inputs, n, NULL, NULL)) != 0)
        return err;
    if (!(ads = mood_calloc(n, sizeof *ads)))
        return mood_error_nomem();
    if ((err = open_inputs(ads, &family, inputs, n)) != 0)
        goto done;
    for (size_t k = 0; k < n && !err; k++)
        for (size_t i = 0; i < ads[k]->n_modules && !err; i++)
            err = group_module(&gs, ads[k], &ads[k]->modules[i], &inputs[k]);
    if (!err && gs.n == 0)
        err = mood_error_set(MOOD_EINVAL, "stack: the inputs have no module with a non-zero "
                                          "multiplier");
    if (!err)
        err = write_stack(&gs, family, ads, inputs, n, o);
done:
    groups_dispose(&gs);
    for (size_t k = 0; k < n; k++)
        mood_adapter_close(ads[k]);
    mood_free(ads);
    return err;
}
