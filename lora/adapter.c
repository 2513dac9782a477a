/*
 * adapter.c: parsing an adapter file (kohya LoRA/LoCon, LyCORIS, DoRA, diffusers/PEFT) into the
 * normalized module list of lora_internal.h (lora-formats.md §2.2, §2.3, §3).
 *
 * Each key is split into (module, parameter suffix) by the known suffixes, longest first; the
 * module is looked up in the key map of the base (or of the adapter's family when no base is
 * given), trying shorter suffixes when the longer split names no module. Keys are grouped per
 * target, the algorithm is detected in LyCORIS's priority order, rank/alpha/scale follow §2.2/§3,
 * the factor shapes are checked against the target and every factor is checked to be finite.
 * Every key is consumed or reported in the unmatched list; nothing is dropped silently.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "lora/lora_internal.h"

#define ROLE_SPARSE (-1) /* LyCORIS sparse bias: consumed with a warning, never applied */

typedef struct suffix_def {
    const char *s;
    size_t len;
    int role;
    int peft; /* PEFT naming: lora_magnitude_vector is a per-output magnitude */
} suffix_def;

#define SFX(x) x, sizeof x - 1
static const suffix_def suffixes[] = {
    {SFX(".lora_up.weight"), ROLE_UP, 0},
    {SFX(".lora_down.weight"), ROLE_DOWN, 0},
    {SFX(".lora_mid.weight"), ROLE_MID, 0},
    {SFX(".lora_B.weight"), ROLE_UP, 1},
    {SFX(".lora_A.weight"), ROLE_DOWN, 1},
    {SFX(".lora.up.weight"), ROLE_UP, 0},
    {SFX(".lora.down.weight"), ROLE_DOWN, 0},
    {SFX(".lora_linear_layer.up.weight"), ROLE_UP, 0},
    {SFX(".lora_linear_layer.down.weight"), ROLE_DOWN, 0},
    {SFX("_lora.up.weight"), ROLE_UP, 0},
    {SFX("_lora.down.weight"), ROLE_DOWN, 0},
    {SFX(".up.weight"), ROLE_UP, 0},
    {SFX(".down.weight"), ROLE_DOWN, 0},
    {SFX(".alpha"), ROLE_ALPHA, 0},
    {SFX(".dora_scale"), ROLE_DORA_SCALE, 0},
    {SFX(".lora_magnitude_vector"), ROLE_DORA_SCALE, 1},
    {SFX(".lora_magnitude_vector.weight"), ROLE_DORA_SCALE, 1},
    {SFX(".hada_w1_a"), ROLE_HADA_W1A, 0},
    {SFX(".hada_w1_b"), ROLE_HADA_W1B, 0},
    {SFX(".hada_w2_a"), ROLE_HADA_W2A, 0},
    {SFX(".hada_w2_b"), ROLE_HADA_W2B, 0},
    {SFX(".hada_t1"), ROLE_HADA_T1, 0},
    {SFX(".hada_t2"), ROLE_HADA_T2, 0},
    {SFX(".lokr_w1"), ROLE_LOKR_W1, 0},
    {SFX(".lokr_w1_a"), ROLE_LOKR_W1A, 0},
    {SFX(".lokr_w1_b"), ROLE_LOKR_W1B, 0},
    {SFX(".lokr_w2"), ROLE_LOKR_W2, 0},
    {SFX(".lokr_w2_a"), ROLE_LOKR_W2A, 0},
    {SFX(".lokr_w2_b"), ROLE_LOKR_W2B, 0},
    {SFX(".lokr_t2"), ROLE_LOKR_T2, 0},
    {SFX(".on_input"), ROLE_IA3_ON_INPUT, 0},
    {SFX(".weight"), ROLE_IA3_W, 0},
    {SFX(".oft_blocks"), ROLE_OFT_BLOCKS, 0},
    {SFX(".oft_diag"), ROLE_OFT_BLOCKS, 0}, /* old LyCORIS: R itself (oft_direct) */
    {SFX(".rescale"), ROLE_OFT_RESCALE, 0},
    {SFX(".a1.weight"), ROLE_GLORA_A1, 0},
    {SFX(".a2.weight"), ROLE_GLORA_A2, 0},
    {SFX(".b1.weight"), ROLE_GLORA_B1, 0},
    {SFX(".b2.weight"), ROLE_GLORA_B2, 0},
    {SFX(".diff"), ROLE_DIFF, 0},
    {SFX(".diff_b"), ROLE_DIFF_B, 0},
    {SFX(".w_norm"), ROLE_W_NORM, 0},
    {SFX(".b_norm"), ROLE_B_NORM, 0},
    {SFX(".scale"), ROLE_SCALE, 0},
    {SFX(".bias_indices"), ROLE_SPARSE, 0},
    {SFX(".bias_values"), ROLE_SPARSE, 0},
    {SFX(".bias_size"), ROLE_SPARSE, 0},
};
#define N_SUFFIXES (sizeof suffixes / sizeof suffixes[0])

/* The suffixes key ends with, longest first (equal lengths keep table order); returns count. */
static size_t suffix_matches(const char *key, const suffix_def **found)
{
    size_t n = 0, len = strlen(key);
    for (size_t i = 0; i < N_SUFFIXES; i++) {
        size_t k = suffixes[i].len;
        if (len > k && memcmp(key + len - k, suffixes[i].s, k) == 0) {
            size_t j = n++;
            while (j > 0 && found[j - 1]->len < k) {
                found[j] = found[j - 1];
                j--;
            }
            found[j] = &suffixes[i];
        }
    }
    return n;
}

/* The skip-th longest suffix matching key (NULL when none). */
static const suffix_def *suffix_match(const char *key, size_t skip)
{
    const suffix_def *found[N_SUFFIXES];
    size_t n = suffix_matches(key, found);
    return skip < n ? found[skip] : NULL;
}

size_t mood__adapter_suffix(const char *key, size_t skip, int *role_out)
{
    const suffix_def *d = suffix_match(key, skip);
    *role_out = d ? d->role : ROLE_SPARSE;
    return d ? d->len : 0;
}

/* How one file key resolved. */
typedef struct key_res {
    const mood_target *target; /* NULL: unmatched */
    int role;
    int peft;
    size_t module_len;
} key_res;

static void resolve_key(key_res *r, const mood_keymap *km, const char *key)
{
    char module[512];
    const suffix_def *found[N_SUFFIXES];
    size_t n = suffix_matches(key, found);
    memset(r, 0, sizeof *r);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(key) - found[i]->len;
        if (len >= sizeof module)
            continue;
        memcpy(module, key, len);
        module[len] = '\0';
        r->target = mood__keymap_find(km, module);
        /* diffusers' convert_state_dict_to_kohya leaves dots in DoRA magnitudes' names
         * ("lora_unet_down_blocks_1_attentions_0.proj_in.lora_magnitude_vector"): a kohya name
         * has none (lora-formats.md 8, #5) */
        if (!r->target && strncmp(module, "lora_", 5) == 0 && strchr(module, '.')) {
            for (char *d = strchr(module, '.'); d; d = strchr(d, '.'))
                *d = '_';
            r->target = mood__keymap_find(km, module);
        }
        if (r->target) {
            r->role = found[i]->role;
            r->peft = found[i]->peft;
            r->module_len = len;
            return;
        }
    }
}

/* ----- per-module parsing state ------------------------------------------------------------ */

typedef struct parse_ctx {
    mood_adapter *a;
    const char *path;
    int from_base;              /* target shapes are the base's, not generated */
    mood_family detected;       /* the adapter's own family, if known */
    cJSON *peft_config;         /* lora_adapter_metadata, or NULL */
    mood__peft_keys *peft_keys; /* its alpha_pattern keys, compiled when first needed */
    unsigned char *unmatched;   /* per file tensor */
    int32_t *role_idx;          /* n_modules x ROLE_COUNT file tensor indices, -1 absent */
    unsigned char *peft_mag;    /* per module: lora_magnitude_vector */
    size_t cap;
    unsigned flags;          /* MOOD_ADAPTER_* */
    size_t n_alpha0;         /* modules whose alpha 0 makes them change nothing, said once */
    const char *alpha0_name; /* the first of them */
} parse_ctx;

static int bad(const parse_ctx *c, const mood_module *m, const char *what)
{
    int code = (c->from_base && c->detected == MOOD_FAMILY_UNKNOWN) ? MOOD_EFAMILY : MOOD_EFORMAT;
    return mood_error_set(code, "%s: module %s: %s", c->path, m->name, what);
}

static int64_t numel(const mood_st_tensor *t)
{
    return t ? mood_st_numel(t) : 0;
}

/* A scalar tensor ([] or [1]) of any numeric dtype, finite. */
static int read_scalar(double *out, const parse_ctx *c, const mood_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) /* [], [1], [1, 1], ...: one number (ComfyUI's .item()) */
        n *= t->shape[i];
    if (n != 1 || !mood_dtype_is_numeric(t->dtype))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: tensor %s must be one number (shape [], [1], [1, 1]...), not "
                              "%s with %d dimension(s)",
                              c->path, t->name, mood_dtype_name(t->dtype), t->ndim);
    if (mood_dtype_read_f64(out, t->data, t->dtype) != 0 || !isfinite(*out))
        return mood_error_set(MOOD_EFORMAT, "%s: tensor %s is not a finite number", c->path,
                              t->name);
    return 0;
}

static int check_factor(const parse_ctx *c, const mood_st_tensor *t)
{
    int ok;
    if (c->flags & MOOD_ADAPTER_SKIP_VALUE_CHECK)
        return mood_dtype_is_numeric(t->dtype)
                   ? 0
                   : mood_error_set(MOOD_EUNSUPPORTED,
                                    "%s: tensor %s has dtype %s, which mood cannot use", c->path,
                                    t->name, mood_dtype_name(t->dtype));
    ok = mood__dtype_all_finite(t->data, mood_st_numel(t), t->dtype);
    if (ok < 0)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: tensor %s has dtype %s, which mood cannot use", c->path, t->name,
                              mood_dtype_name(t->dtype));
    if (!ok)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor %s contains NaN or infinite values",
                              c->path, t->name);
    return 0;
}

/* ----- algorithm detection ----------------------------------------------------------------- */

#define R(x)         (1u << (x))
#define COMMON_ROLES (R(ROLE_ALPHA) | R(ROLE_DORA_SCALE) | R(ROLE_SCALE))

static uint32_t algo_roles(mood_algo a)
{
    switch (a) {
    case MOOD_ALGO_LORA:
        return COMMON_ROLES | R(ROLE_UP) | R(ROLE_DOWN) | R(ROLE_MID);
    case MOOD_ALGO_LOHA:
        return COMMON_ROLES | R(ROLE_HADA_W1A) | R(ROLE_HADA_W1B) | R(ROLE_HADA_W2A) |
               R(ROLE_HADA_W2B) | R(ROLE_HADA_T1) | R(ROLE_HADA_T2);
    case MOOD_ALGO_LOKR:
        return COMMON_ROLES | R(ROLE_LOKR_W1) | R(ROLE_LOKR_W1A) | R(ROLE_LOKR_W1B) |
               R(ROLE_LOKR_W2) | R(ROLE_LOKR_W2A) | R(ROLE_LOKR_W2B) | R(ROLE_LOKR_T2);
    case MOOD_ALGO_IA3:
        return R(ROLE_ALPHA) | R(ROLE_IA3_W) | R(ROLE_IA3_ON_INPUT);
    case MOOD_ALGO_OFT:
    case MOOD_ALGO_BOFT:
        return COMMON_ROLES | R(ROLE_OFT_BLOCKS) | R(ROLE_OFT_RESCALE);
    case MOOD_ALGO_GLORA:
        return COMMON_ROLES | R(ROLE_GLORA_A1) | R(ROLE_GLORA_A2) | R(ROLE_GLORA_B1) |
               R(ROLE_GLORA_B2);
    case MOOD_ALGO_FULL:
        return R(ROLE_ALPHA) | R(ROLE_DIFF) | R(ROLE_DIFF_B);
    case MOOD_ALGO_NORM:
        return R(ROLE_ALPHA) | R(ROLE_W_NORM) | R(ROLE_B_NORM);
    default:
        return 0;
    }
}

/* LyCORIS's priority (lycoris/modules/__init__.py): LoCon, LoHa, IA3, LoKr, Full, Norm, OFT,
 * BOFT, GLoRA. -1 when the module has no algorithm's main factor. */
static int detect_algo(const mood_module *m)
{
    const mood_st_tensor *const *t = m->t;
    if (t[ROLE_UP] || t[ROLE_DOWN])
        return MOOD_ALGO_LORA;
    if (t[ROLE_HADA_W1A] || t[ROLE_HADA_W1B] || t[ROLE_HADA_W2A] || t[ROLE_HADA_W2B])
        return MOOD_ALGO_LOHA;
    if (t[ROLE_IA3_ON_INPUT])
        return MOOD_ALGO_IA3;
    if (t[ROLE_LOKR_W1] || t[ROLE_LOKR_W1A] || t[ROLE_LOKR_W2] || t[ROLE_LOKR_W2A])
        return MOOD_ALGO_LOKR;
    if (t[ROLE_DIFF] || t[ROLE_DIFF_B])
        return MOOD_ALGO_FULL;
    if (t[ROLE_W_NORM] || t[ROLE_B_NORM])
        return MOOD_ALGO_NORM;
    if (t[ROLE_OFT_BLOCKS])
        return t[ROLE_OFT_BLOCKS]->ndim == 4 ? MOOD_ALGO_BOFT : MOOD_ALGO_OFT;
    if (t[ROLE_GLORA_A1] || t[ROLE_GLORA_A2] || t[ROLE_GLORA_B1] || t[ROLE_GLORA_B2])
        return MOOD_ALGO_GLORA;
    return -1;
}

/* The factors an algorithm cannot do without; NULL when all are there, else the missing one. */
static const char *missing_factor(const mood_module *m)
{
    const mood_st_tensor *const *t = m->t;
    switch (m->algo) {
    case MOOD_ALGO_LORA:
        return !t[ROLE_UP]     ? "lora_up (up) factor"
               : !t[ROLE_DOWN] ? "lora_down (down) factor"
                               : NULL;
    case MOOD_ALGO_LOHA:
        if (!t[ROLE_HADA_W1A] || !t[ROLE_HADA_W1B] || !t[ROLE_HADA_W2A] || !t[ROLE_HADA_W2B])
            return "hada_w1_a/hada_w1_b/hada_w2_a/hada_w2_b factors";
        return (!t[ROLE_HADA_T1]) != (!t[ROLE_HADA_T2]) ? "hada_t1 and hada_t2 pair" : NULL;
    case MOOD_ALGO_LOKR:
        if (!t[ROLE_LOKR_W1] && !(t[ROLE_LOKR_W1A] && t[ROLE_LOKR_W1B]))
            return "lokr_w1 (or lokr_w1_a and lokr_w1_b)";
        if (!t[ROLE_LOKR_W2] && !(t[ROLE_LOKR_W2A] && t[ROLE_LOKR_W2B]))
            return "lokr_w2 (or lokr_w2_a and lokr_w2_b)";
        return NULL;
    case MOOD_ALGO_IA3:
        return t[ROLE_IA3_W] ? NULL : "weight vector";
    case MOOD_ALGO_GLORA:
        if (!t[ROLE_GLORA_A1] || !t[ROLE_GLORA_A2] || !t[ROLE_GLORA_B1] || !t[ROLE_GLORA_B2])
            return "a1/a2/b1/b2 factors";
        return NULL;
    default:
        return NULL;
    }
}

/* ----- geometry: the delta's shape as the factors give it ---------------------------------- */

typedef struct geom {
    int64_t rows;   /* ΔW's dim 0 (out), -1 unknown */
    int64_t cols;   /* numel / rows (in*kh*kw), -1 unknown */
    int64_t kh, kw; /* kernel, 0 when the factors do not say */
    int rank;
} geom;

static int64_t dim(const mood_st_tensor *t, int i)
{
    return t && i < t->ndim ? t->shape[i] : 0;
}

/* numel / shape[0], or 0 when shape[0] is 0 */
static int64_t rest(const mood_st_tensor *t)
{
    return dim(t, 0) > 0 ? numel(t) / dim(t, 0) : 0;
}

static int geom_lora(geom *g, const mood_module *m)
{
    const mood_st_tensor *u = m->t[ROLE_UP], *d = m->t[ROLE_DOWN], *mid = m->t[ROLE_MID];
    int64_t r = dim(d, 0);
    if (u->ndim < 2 || d->ndim < 2 || r <= 0 || numel(u) != dim(u, 0) * dim(u, 1))
        return -1;
    g->rank = (int)r;
    g->rows = dim(u, 0);
    g->cols = rest(d);
    if (mid) { /* Tucker: up (out, r, 1, 1), mid (r, r, kh, kw), down (r, in, 1, 1) */
        if (mid->ndim != 4 || dim(mid, 0) != dim(u, 1) || dim(mid, 1) != r)
            return -1;
        g->kh = dim(mid, 2);
        g->kw = dim(mid, 3);
        g->cols *= g->kh * g->kw;
        return 0;
    }
    if (d->ndim == 4) {
        g->kh = dim(d, 2);
        g->kw = dim(d, 3);
    }
    return dim(u, 1) == r ? 0 : -1;
}

/* One Hadamard half: w_a, w_b (and t in Tucker mode) -> rows, cols. */
static int hada_half(int64_t *rows, int64_t *cols, geom *g, const mood_st_tensor *a,
                     const mood_st_tensor *b, const mood_st_tensor *t)
{
    if (a->ndim != 2 || b->ndim != 2)
        return -1;
    if (t) { /* Tucker: a (r, out), b (r, in), t (r, r, kh, kw) */
        if (t->ndim != 4 || dim(t, 0) != dim(a, 0) || dim(t, 1) != dim(b, 0))
            return -1;
        g->kh = dim(t, 2);
        g->kw = dim(t, 3);
        *rows = dim(a, 1);
        *cols = dim(b, 1) * g->kh * g->kw;
        return 0;
    }
    *rows = dim(a, 0);
    *cols = dim(b, 1);
    return dim(a, 1) == dim(b, 0) ? 0 : -1;
}

static int geom_loha(geom *g, mood_module *m)
{
    const mood_st_tensor *const *t = m->t;
    int64_t r2, c2;
    m->tucker = t[ROLE_HADA_T1] != NULL;
    if (hada_half(&g->rows, &g->cols, g, t[ROLE_HADA_W1A], t[ROLE_HADA_W1B], t[ROLE_HADA_T1]) ||
        hada_half(&r2, &c2, g, t[ROLE_HADA_W2A], t[ROLE_HADA_W2B], t[ROLE_HADA_T2]))
        return -1;
    g->rank = (int)dim(t[ROLE_HADA_W1B], 0);
    return (r2 == g->rows && c2 == g->cols) ? 0 : -1;
}

static int geom_lokr(geom *g, mood_module *m)
{
    const mood_st_tensor *const *t = m->t;
    int64_t a, c, b, dk;
    if (t[ROLE_LOKR_W1]) {
        a = dim(t[ROLE_LOKR_W1], 0);
        c = rest(t[ROLE_LOKR_W1]);
    } else {
        a = dim(t[ROLE_LOKR_W1A], 0);
        c = dim(t[ROLE_LOKR_W1B], 1);
        if (dim(t[ROLE_LOKR_W1A], 1) != dim(t[ROLE_LOKR_W1B], 0))
            return -1;
        g->rank = (int)dim(t[ROLE_LOKR_W1B], 0);
    }
    if (t[ROLE_LOKR_W2]) {
        b = dim(t[ROLE_LOKR_W2], 0);
        dk = rest(t[ROLE_LOKR_W2]);
        if (t[ROLE_LOKR_W2]->ndim == 4)
            g->kh = dim(t[ROLE_LOKR_W2], 2), g->kw = dim(t[ROLE_LOKR_W2], 3);
    } else if (hada_half(&b, &dk, g, t[ROLE_LOKR_W2A], t[ROLE_LOKR_W2B], t[ROLE_LOKR_T2])) {
        return -1;
    } else {
        g->rank = (int)dim(t[ROLE_LOKR_W2B], 0);
    }
    m->tucker = t[ROLE_LOKR_T2] != NULL;
    g->rows = a * b;
    g->cols = c * dk;
    return 0;
}

/* GLoRA: current layout a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in[,kh,kw]); old layout
 * a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r). ComfyUI's shape test, with its tie-break for
 * square layers (§3.4). */
static int geom_glora(geom *g, mood_module *m, int64_t out, int64_t in)
{
    const mood_st_tensor *a1 = m->t[ROLE_GLORA_A1], *a2 = m->t[ROLE_GLORA_A2];
    const mood_st_tensor *b1 = m->t[ROLE_GLORA_B1], *b2 = m->t[ROLE_GLORA_B2];
    int old_cond = dim(b2, 1) == dim(b1, 0) && dim(b1, 0) == dim(a1, 0) && dim(a1, 0) == dim(a2, 1);
    int new_cond = dim(b2, 0) == dim(b1, 1) && dim(b1, 1) == dim(a1, 1) && dim(a1, 1) == dim(a2, 0);
    if (new_cond && !(old_cond && dim(a2, 0) == out && out == in && out > 0))
        old_cond = 0;
    if (!old_cond && !new_cond)
        return -1;
    m->old_glora = old_cond;
    if (old_cond) {
        g->rank = (int)dim(a1, 0);
        g->rows = dim(b2, 0);
        g->cols = rest(b1);
    } else {
        g->rank = (int)dim(a2, 0);
        g->rows = dim(b1, 0);
        g->cols = rest(b2);
        if (b2->ndim == 4)
            g->kh = dim(b2, 2), g->kw = dim(b2, 3);
    }
    return 0;
}

static int geom_of(geom *g, mood_module *m, int64_t out, int64_t in)
{
    const mood_st_tensor *const *t = m->t;
    g->rows = g->cols = -1;
    g->kh = g->kw = 0;
    g->rank = 0;
    switch (m->algo) {
    case MOOD_ALGO_LORA:
        m->tucker = t[ROLE_MID] != NULL;
        return geom_lora(g, m);
    case MOOD_ALGO_LOHA:
        return geom_loha(g, m);
    case MOOD_ALGO_LOKR:
        return geom_lokr(g, m);
    case MOOD_ALGO_GLORA:
        return geom_glora(g, m, out, in);
    case MOOD_ALGO_OFT: /* (nblk, bs, bs) */
        g->rows = dim(t[ROLE_OFT_BLOCKS], 0) * dim(t[ROLE_OFT_BLOCKS], 1);
        return t[ROLE_OFT_BLOCKS]->ndim == 3 ? 0 : -1;
    case MOOD_ALGO_BOFT: /* (stages, nblk, b, b) */
        g->rows = dim(t[ROLE_OFT_BLOCKS], 1) * dim(t[ROLE_OFT_BLOCKS], 2);
        return 0;
    case MOOD_ALGO_FULL:
        if (t[ROLE_DIFF]) {
            g->rows = dim(t[ROLE_DIFF], 0);
            g->cols = rest(t[ROLE_DIFF]);
            if (t[ROLE_DIFF]->ndim == 4)
                g->kh = dim(t[ROLE_DIFF], 2), g->kw = dim(t[ROLE_DIFF], 3);
        }
        return 0;
    case MOOD_ALGO_NORM:
        g->rows = numel(t[ROLE_W_NORM] ? t[ROLE_W_NORM] : t[ROLE_B_NORM]);
        g->cols = 1;
        return 0;
    default:
        return 0;
    }
}

/* ----- target shape ------------------------------------------------------------------------ */

static void shape_text(char *buf, size_t n, const mood_module *m)
{
    if (m->ndim == 1)
        snprintf(buf, n, "[%lld]", (long long)m->out);
    else if (m->ndim == 2)
        snprintf(buf, n, "[%lld, %lld]", (long long)m->out, (long long)m->in);
    else
        snprintf(buf, n, "[%lld, %lld, %lld, %lld]", (long long)m->out, (long long)m->in,
                 (long long)m->kh, (long long)m->kw);
}

static int mismatch(const parse_ctx *c, const mood_module *m, const geom *g, const char *extra)
{
    char target[96], fam[128] = "", what[512];
    shape_text(target, sizeof target, m);
    if (c->from_base && c->detected == c->a->family)
        snprintf(fam, sizeof fam,
                 " (both are %s, but the LoRA was made for a model of other sizes than this "
                 "base)",
                 mood_family_name(c->detected));
    else if (c->from_base)
        snprintf(fam, sizeof fam, " (the file looks %s, the base is %s)",
                 c->detected == MOOD_FAMILY_UNKNOWN ? "like no family mood knows"
                                                    : mood_family_name(c->detected),
                 mood_family_name(c->a->family));
    if (extra)
        snprintf(what, sizeof what, "%s but the target %s has shape %s%s", extra, m->target->key,
                 target, fam);
    else
        snprintf(what, sizeof what,
                 "its %s factors give a delta of %lld x %lld values but the target %s has shape "
                 "%s%s",
                 mood_algo_name(m->algo), (long long)g->rows, (long long)g->cols, m->target->key,
                 target, fam);
    return bad(c, m, what);
}

static int64_t on_input_of(const mood_module *m)
{
    double v = 0;
    const mood_st_tensor *t = m->t[ROLE_IA3_ON_INPUT];
    if (t && mood_st_numel(t) >= 1 && mood_dtype_is_numeric(t->dtype))
        mood_dtype_read_f64(&v, t->data, t->dtype);
    return v != 0;
}

/* With a base: the target's shape, and the factors must fit it (reshape by element count). */
static int check_shape(const parse_ctx *c, mood_module *m, const geom *g)
{
    const mood_target *t = m->target;
    int64_t tn;
    char what[160];
    m->ndim = t->ndim;
    m->out = t->shape[0];
    m->in = t->ndim >= 2 ? t->shape[1] : 1;
    m->kh = t->ndim == 4 ? t->shape[2] : 1;
    m->kw = t->ndim == 4 ? t->shape[3] : 1;
    tn = m->out * m->in * m->kh * m->kw;
    if (m->algo == MOOD_ALGO_IA3) {
        int64_t want = on_input_of(m) ? m->in : m->out;
        snprintf(what, sizeof what, "its IA3 vector has %lld values (expected %lld)",
                 (long long)numel(m->t[ROLE_IA3_W]), (long long)want);
        return numel(m->t[ROLE_IA3_W]) == want ? 0 : mismatch(c, m, g, what);
    }
    if (m->t[ROLE_DIFF_B] && numel(m->t[ROLE_DIFF_B]) != m->out)
        return mismatch(c, m, g, "its diff_b does not have one value per output");
    if (m->t[ROLE_B_NORM] && numel(m->t[ROLE_B_NORM]) != m->out)
        return mismatch(c, m, g, "its b_norm does not have one value per channel");
    if (g->rows >= 0 && g->rows != m->out)
        return mismatch(c, m, g, NULL);
    if (g->cols >= 0 && g->rows * g->cols != (m->algo == MOOD_ALGO_NORM ? m->out : tn))
        return mismatch(c, m, g, NULL);
    return 0;
}

/* Without a base: the shape the factors give, with the kind (ndim, kernel) of the target. */
static int infer_shape(const parse_ctx *c, mood_module *m, const geom *g)
{
    const mood_target *t = m->target;
    m->ndim = t->ndim ? t->ndim : (g->kh > 0 ? 4 : 2);
    m->out = g->rows > 0 ? g->rows : 0;
    m->in = m->kh = m->kw = 1;
    if (m->ndim == 1)
        return 0;
    if (m->ndim == 4) {
        m->kh = g->kh > 0 ? g->kh : (t->shape[2] > 0 ? t->shape[2] : 1);
        m->kw = g->kw > 0 ? g->kw : (t->shape[3] > 0 ? t->shape[3] : 1);
    }
    m->in = 0;
    if (m->algo == MOOD_ALGO_IA3) {
        if (on_input_of(m))
            m->in = numel(m->t[ROLE_IA3_W]);
        else
            m->out = numel(m->t[ROLE_IA3_W]);
    }
    if (g->cols < 0)
        return 0;
    if (g->cols % (m->kh * m->kw) != 0)
        return mismatch(c, m, g, "the factors' width is not a multiple of the kernel size");
    m->in = g->cols / (m->kh * m->kw);
    return 0;
}

/* DoRA magnitude orientation from its shape (§3.5): (1, in[,1,1]) per input, (out, 1[,1,1]) or
 * PEFT (out,) per output. */
static int dora_axis(const parse_ctx *c, mood_module *m, int peft_mag)
{
    const mood_st_tensor *d = m->t[ROLE_DORA_SCALE];
    int64_t n;
    if (!d)
        return 0;
    n = numel(d);
    if (peft_mag || d->ndim == 1)
        m->dora = 2;
    else
        m->dora = (dim(d, 0) == 1 && n != 1) ? 1 : 2;
    m->peft_dora = peft_mag;
    if (m->algo == MOOD_ALGO_IA3 || m->algo == MOOD_ALGO_FULL || m->algo == MOOD_ALGO_NORM)
        return bad(c, m, "a DoRA magnitude cannot go with this algorithm");
    if ((m->dora == 1 && m->in && n != m->in) || (m->dora == 2 && m->out && n != m->out))
        return mismatch(c, m, NULL, "its DoRA magnitude has a size matching neither axis");
    return 0;
}

/* ----- alpha, rank and scale --------------------------------------------------------------- */

/* PEFT config value "<component>.<field>" from lora_adapter_metadata (§2.3). */
static const cJSON *peft_field(const parse_ctx *c, const char *comp, const char *field)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", comp, field);
    return c->peft_config ? cJSON_GetObjectItemCaseSensitive(c->peft_config, key) : NULL;
}

/* PEFT files have no alpha tensors: lora_alpha (or its pattern) / r, or / √r with rsLoRA. */
static void peft_scale(const parse_ctx *c, mood_module *m)
{
    static const char *const comps[] = {"unet", "text_encoder", "text_encoder_2"};
    const char *comp = comps[m->target->part], *path = m->name;
    const cJSON *alpha, *pat, *rs;
    int ci = (int)m->target->part;
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(comps[i]);
        if (strncmp(m->name, comps[i], k) == 0 && m->name[k] == '.') {
            comp = comps[i];
            ci = (int)i;
            path = m->name + k + 1;
        }
    }
    alpha = peft_field(c, comp, "lora_alpha");
    pat = mood__peft_pattern(c->peft_keys, ci, peft_field(c, comp, "alpha_pattern"), path);
    if (pat && cJSON_IsNumber(pat))
        alpha = pat;
    if (!alpha || !cJSON_IsNumber(alpha) || m->rank <= 0)
        return;
    rs = peft_field(c, comp, "use_rslora");
    m->alpha = alpha->valuedouble;
    m->has_alpha = 1;
    m->rslora = cJSON_IsTrue(rs);
    m->scale = m->alpha / (m->rslora ? sqrt((double)m->rank) : (double)m->rank);
}

static int set_scale(parse_ctx *c, mood_module *m)
{
    int err;
    int scaled = m->algo == MOOD_ALGO_LORA || m->algo == MOOD_ALGO_LOHA ||
                 m->algo == MOOD_ALGO_GLORA || (m->algo == MOOD_ALGO_LOKR && m->rank > 0);
    m->alpha = m->rank;
    m->scale = 1;
    if (m->t[ROLE_ALPHA]) {
        if ((err = read_scalar(&m->alpha, c, m->t[ROLE_ALPHA])) != 0)
            return err;
        m->has_alpha = 1;
        if (scaled)
            m->scale = m->alpha / m->rank;
        if (scaled && m->alpha == 0 && c->n_alpha0++ == 0)
            c->alpha0_name = m->name;
    } else if (c->peft_config && scaled) {
        /* diffusers keeps the PEFT config for every spelling it writes (lora_A/lora_B,
         * .lora.down/.lora.up, .lora_linear_layer.*) */
        peft_scale(c, m);
    }
    if (m->t[ROLE_SCALE]) /* A1111: <module>.scale overrides alpha/rank */
        return read_scalar(&m->scale, c, m->t[ROLE_SCALE]);
    return 0;
}

static int check_factors(const parse_ctx *c, const mood_module *m)
{
    int err = 0;
    for (int r = 0; r < ROLE_COUNT && !err; r++) {
        if (m->t[r] && r != ROLE_ALPHA && r != ROLE_SCALE && r != ROLE_IA3_ON_INPUT)
            err = check_factor(c, m->t[r]);
    }
    return err;
}

/* ----- grouping keys into modules ---------------------------------------------------------- */

static void mark_module_unmatched(parse_ctx *c, size_t mi, uint32_t roles)
{
    int32_t *idx = &c->role_idx[mi * ROLE_COUNT];
    for (int r = 0; r < ROLE_COUNT; r++) {
        if (idx[r] >= 0 && (roles & R(r))) {
            c->unmatched[idx[r]] = 1;
            c->a->modules[mi].t[r] = NULL;
            idx[r] = -1;
        }
    }
}

static int finish_module(parse_ctx *c, size_t mi)
{
    mood_module *m = &c->a->modules[mi];
    const mood_target *t = m->target;
    const char *missing;
    geom g;
    int algo = detect_algo(m), err;
    if (algo < 0) { /* only alpha / dora_scale / scale / a lone IA3 weight: nothing to apply */
        mark_module_unmatched(c, mi, ~0u);
        return 0;
    }
    m->algo = (mood_algo)algo;
    if (m->t[ROLE_OFT_BLOCKS])
        m->oft_direct = mood_str_ends_with(m->t[ROLE_OFT_BLOCKS]->name, ".oft_diag");
    mark_module_unmatched(c, mi, ~algo_roles(m->algo));
    if ((missing = missing_factor(m)) != NULL) {
        char what[160];
        snprintf(what, sizeof what, "%s module without its %s", mood_algo_name(m->algo), missing);
        return bad(c, m, what);
    }
    if (geom_of(&g, m, c->from_base ? t->shape[0] : 0, c->from_base ? t->shape[1] : 0) != 0)
        return bad(c, m, "its factors have shapes that do not fit together");
    m->rank = g.rank;
    err = c->from_base ? check_shape(c, m, &g) : infer_shape(c, m, &g);
    if (!err)
        err = dora_axis(c, m, c->peft_mag[mi]);
    if (!err)
        err = set_scale(c, m);
    return err ? err : check_factors(c, m);
}

/* Whether module m is named key[0..len). In kohya names a '.' is a '_' (resolve_key: diffusers'
 * converter leaves dots in DoRA magnitudes' names), so the two spellings are one module. */
static int same_name(const mood_module *m, const char *key, size_t len)
{
    int kohya = strncmp(key, "lora_", 5) == 0;
    if (strlen(m->name) != len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char a = m->name[i], b = key[i];
        if (a != b && !(kohya && (a == '.' || a == '_') && (b == '.' || b == '_')))
            return 0;
    }
    return 1;
}

/* The module of (target, name): usually the one recorded for the target; a second spelling of
 * the same target in one file (rare) becomes its own module, applied after the first, as
 * ComfyUI and A1111 do. */
static int module_for(parse_ctx *c, size_t *mi_out, int32_t *mod_of_target, const key_res *r,
                      const char *key)
{
    mood_adapter *a = c->a;
    size_t ti = (size_t)(r->target - mood__keymap_target(a->keymap, 0)), mi;
    if (mod_of_target[ti] && same_name(&a->modules[mod_of_target[ti] - 1], key, r->module_len)) {
        *mi_out = (size_t)mod_of_target[ti] - 1;
        return 0;
    }
    for (mi = 0; mod_of_target[ti] && mi < a->n_modules; mi++) {
        if (a->modules[mi].target == r->target && same_name(&a->modules[mi], key, r->module_len)) {
            *mi_out = mi;
            return 0;
        }
    }
    mi = a->n_modules++;
    a->modules[mi].target = r->target;
    if (!(a->modules[mi].name = mood_strndup(key, r->module_len)))
        return mood_error_nomem();
    for (int k = 0; k < ROLE_COUNT; k++)
        c->role_idx[mi * ROLE_COUNT + k] = -1;
    if (!mod_of_target[ti])
        mod_of_target[ti] = (int32_t)mi + 1;
    *mi_out = mi;
    return 0;
}

/* Adds file tensor i (resolved as r) to its module. */
static int add_to_module(parse_ctx *c, int32_t *mod_of_target, size_t i, const key_res *r)
{
    mood_adapter *a = c->a;
    const mood_st_tensor *t = mood_st_at(a->file, i);
    size_t mi = 0;
    int32_t *idx;
    int err = module_for(c, &mi, mod_of_target, r, t->name);
    if (err)
        return err;
    if (r->role == ROLE_SPARSE) {
        mood_log(MOOD_LOG_WARN,
                 "%s: %s: LyCORIS sparse bias tensors are not applied (no tool does)", c->path,
                 t->name);
        return 0;
    }
    idx = &c->role_idx[mi * ROLE_COUNT];
    if (idx[r->role] >= 0)
        return mood_error_set(MOOD_EFORMAT, "%s: %s and %s play the same part in module %s",
                              c->path, mood_st_at(a->file, (size_t)idx[r->role])->name, t->name,
                              a->modules[mi].name);
    idx[r->role] = (int32_t)i;
    a->modules[mi].t[r->role] = t;
    c->peft_mag[mi] |= (unsigned char)(r->peft && r->role == ROLE_DORA_SCALE);
    return 0;
}

/* Resolves every key, groups them and finishes every module. */
static int build_modules(parse_ctx *c)
{
    mood_adapter *a = c->a;
    size_t n = mood_st_count(a->file), kept = 0;
    int32_t *mod_of_target = mood_calloc(mood__keymap_target_count(a->keymap) + 1, sizeof(int32_t));
    int err = 0;
    a->modules = mood_calloc(n + 1, sizeof *a->modules);
    c->role_idx = mood_malloc((n + 1) * ROLE_COUNT * sizeof *c->role_idx);
    c->peft_mag = mood_calloc(n + 1, 1);
    c->unmatched = mood_calloc(n + 1, 1);
    if (!mod_of_target || !a->modules || !c->role_idx || !c->peft_mag || !c->unmatched) {
        err = mood_error_nomem();
        goto done;
    }
    for (size_t i = 0; i < n && !err; i++) {
        key_res r;
        resolve_key(&r, a->keymap, mood_st_at(a->file, i)->name);
        if (r.target)
            err = add_to_module(c, mod_of_target, i, &r);
        else
            c->unmatched[i] = 1;
    }
    for (size_t mi = 0; mi < a->n_modules && !err; mi++)
        err = finish_module(c, mi);
    if (!err && c->n_alpha0 == 1)
        mood_log(MOOD_LOG_WARN, "%s: module %s has alpha 0: it changes nothing", c->path,
                 c->alpha0_name);
    else if (!err && c->n_alpha0 > 1) /* one line, not one a module */
        mood_log(MOOD_LOG_WARN, "%s: %zu modules (%s and others) have alpha 0: they change nothing",
                 c->path, c->n_alpha0, c->alpha0_name);
    /* drop modules that turned out to have no algorithm (their keys are now unmatched) */
    for (size_t mi = 0; mi < a->n_modules && !err; mi++) {
        if (detect_algo(&a->modules[mi]) >= 0)
            a->modules[kept++] = a->modules[mi];
        else
            mood_free(a->modules[mi].name);
    }
    if (!err)
        a->n_modules = kept;
done:
    mood_free(mod_of_target);
    return err;
}

static int collect_unmatched(parse_ctx *c)
{
    mood_adapter *a = c->a;
    size_t n = mood_st_count(a->file), k = 0;
    for (size_t i = 0; i < n; i++)
        k += c->unmatched[i];
    a->unmatched = mood_calloc(k + 1, sizeof *a->unmatched);
    if (!a->unmatched)
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++) {
        if (!c->unmatched[i])
            continue;
        if (!(a->unmatched[a->n_unmatched] = mood_strdup(mood_st_at(a->file, i)->name)))
            return mood_error_nomem();
        a->n_unmatched++;
    }
    return 0;
}

/* The first component of a key, to group unmatched keys: "lora_te2_", "unet.", ... */
static size_t key_group_len(const char *key)
{
    static const char *const flat[] = {"lora_", "lycoris_", "oft_"};
    const char *dot = strchr(key, '.');
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(flat[i]);
        const char *us;
        if (strncmp(key, flat[i], k) == 0 && (us = strchr(key + k, '_')) != NULL &&
            (!dot || us < dot))
            return (size_t)(us - key) + 1;
    }
    return dot ? (size_t)(dot - key) + 1 : strlen(key);
}

/* "N keys: lora_foo_ (12 keys, e.g. lora_foo_x.alpha), ..." for messages. */
static void describe_keys(mood_buf *b, const mood_st_file *f)
{
    size_t n = mood_st_count(f), shown = 0;
    for (size_t i = 0; i < n && shown < 5; i++) {
        const char *key = mood_st_at(f, i)->name;
        size_t g = key_group_len(key), count = 0, first = 1;
        for (size_t j = 0; j < i && first; j++)
            first = strncmp(mood_st_at(f, j)->name, key, g) != 0 ||
                    key_group_len(mood_st_at(f, j)->name) != g;
        if (!first)
            continue;
        for (size_t j = i; j < n; j++)
            count += strncmp(mood_st_at(f, j)->name, key, g) == 0 &&
                     key_group_len(mood_st_at(f, j)->name) == g;
        mood_buf_printf(b, "%s%.*s… (%zu key%s, e.g. %s)", shown ? "; " : "", (int)g, key, count,
                        count == 1 ? "" : "s", key);
        shown++;
    }
}

static int no_module_error(const parse_ctx *c)
{
    mood_buf b;
    int err;
    if (mood_file_kind_of(c->a->file) == MOOD_KIND_CHECKPOINT)
        return mood_error_set(MOOD_EFORMAT,
                              "%s is a model checkpoint (a base model), not a LoRA: give it as the "
                              "base (--model, --base)",
                              c->path);
    if (mood_st_find(c->a->file, "conv_in.weight") ||
        mood_st_find(c->a->file, "text_model.embeddings.token_embedding.weight"))
        return mood_error_set(MOOD_EFORMAT,
                              "%s holds the weights of a diffusers model's part (its UNet or text "
                              "encoder), not a LoRA: give the model's folder as the base",
                              c->path);
    mood_buf_init(&b);
    describe_keys(&b, c->a->file);
    err = mood_error_set(MOOD_EFORMAT, "%s: none of its %zu keys names a module of an %s model: %s",
                         c->path, mood_st_count(c->a->file),
                         c->a->family == MOOD_FAMILY_UNKNOWN ? "SD1, SD2 or SDXL"
                                                             : mood_family_name(c->a->family),
                         b.data ? b.data : "(no tensors)");
    mood_buf_dispose(&b);
    return err;
}

/* ----- opening ----------------------------------------------------------------------------- */

static size_t count_resolved(const mood_keymap *km, const mood_st_file *f)
{
    size_t n = 0;
    for (size_t i = 0; i < mood_st_count(f); i++) {
        key_res r;
        resolve_key(&r, km, mood_st_at(f, i)->name);
        n += r.target != NULL;
    }
    return n;
}

/* No base and no family from metadata, keys or shapes: the family whose names match most keys. */
static int guess_family(mood_adapter *a)
{
    static const mood_family order[] = {MOOD_FAMILY_SD1, MOOD_FAMILY_SDXL, MOOD_FAMILY_SD2};
    size_t best = 0;
    int err = 0;
    for (size_t i = 0; i < 3 && !err; i++) {
        mood_keymap *km = NULL;
        size_t n;
        if ((err = mood__keymap_for_family(&km, order[i])) != 0)
            break;
        n = count_resolved(km, a->file);
        if (n > best) {
            best = n;
            mood__keymap_free(a->own_keymap);
            a->own_keymap = km;
            a->family = order[i];
        } else {
            mood__keymap_free(km);
        }
    }
    if (!err && !a->own_keymap) /* nothing matched: any table, to report every key */
        err = mood__keymap_for_family(&a->own_keymap, MOOD_FAMILY_SD1);
    return err;
}

/* Without a base, kohya UNet modules the family's release architecture lacks (a LoRA trained on
 * a UNet of another layout, such as mood-tiny's CrossAttnUpBlock2D at up_blocks.0) join the
 * family's table by the diffusers path their names spell, so that inspect, show and the lora
 * tools see every module that gen applies on the LoRA's own base. */
static int add_unlisted_unet_modules(mood_adapter *a)
{
    int err = 0;
    for (size_t i = 0; i < mood_st_count(a->file) && !err; i++) {
        const char *key = mood_st_at(a->file, i)->name;
        const suffix_def *found[N_SUFFIXES];
        size_t n = suffix_matches(key, found), len;
        char module[512];
        if (strncmp(key, "lora_unet_", 10) != 0 || n == 0)
            continue;
        len = strlen(key) - found[0]->len;
        if (len >= sizeof module)
            continue;
        memcpy(module, key, len);
        module[len] = '\0';
        if (!mood__keymap_find(a->own_keymap, module))
            err = mood__keymap_add_unet_module(a->own_keymap, module);
    }
    return err;
}

/* Picks the key map: the base's (families must agree) or the adapter's family's. */
static int choose_keymap(parse_ctx *c, const mood_checkpoint *base)
{
    mood_adapter *a = c->a;
    const char *src;
    int err = 0;
    c->detected = mood__family_of_adapter(a->file, &src);
    if (base) {
        if (c->detected != MOOD_FAMILY_UNKNOWN && c->detected != base->family)
            return mood_error_set(MOOD_EFAMILY, "%s is an %s LoRA (from %s) but the base %s is %s",
                                  c->path, mood_family_name(c->detected), src,
                                  mood_st_path(base->file), mood_family_name(base->family));
        a->keymap = base->keymap;
        a->family = base->family;
        a->family_source = c->detected != MOOD_FAMILY_UNKNOWN ? src : "base";
        c->from_base = 1;
        return 0;
    }
    a->family = c->detected;
    a->family_source = src;
    if (c->detected != MOOD_FAMILY_UNKNOWN)
        err = mood__keymap_for_family(&a->own_keymap, c->detected);
    else if ((err = guess_family(a)) == 0 && a->family != MOOD_FAMILY_UNKNOWN)
        a->family_source = "keys";
    if (!err && a->own_keymap)
        err = add_unlisted_unet_modules(a);
    a->keymap = a->own_keymap;
    return err;
}

static void load_peft_config(parse_ctx *c)
{
    const char *json = mood_st_meta_get(c->a->file, "lora_adapter_metadata");
    if (!json)
        return;
    c->peft_config = cJSON_Parse(json);
    if (c->peft_config && !cJSON_IsObject(c->peft_config)) {
        cJSON_Delete(c->peft_config);
        c->peft_config = NULL;
    }
    if (!c->peft_config)
        mood_log(MOOD_LOG_WARN, "%s: lora_adapter_metadata is not a JSON object; scale 1 assumed",
                 c->path);
}

int mood_adapter_open(mood_adapter **out, const char *path, const mood_checkpoint *base)
{
    mood_st_file *f = NULL;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    err = mood_st_open(&f, path);
    return err ? err : mood_adapter_open_file(out, f, base, 0);
}

int mood_adapter_open_weighted(mood_adapter **out, const mood_weighted_adapter *w,
                               const mood_checkpoint *base)
{
    int err, cut;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(w);
    if ((err = mood_adapter_open(out, w->path, base)) != 0 || !w->dyn)
        return err;
    if ((cut = mood_adapter_limit_rank(*out, w->dyn)) < 0) {
        mood_error_prefix("%s", w->path);
        mood_adapter_close(*out);
        *out = NULL;
        return cut;
    }
    if (cut == 0)
        mood_log(MOOD_LOG_WARN,
                 "%s has no plain LoRA modules, so the DyLoRA rank cut (dyn=%d) changes nothing",
                 w->path, w->dyn);
    return 0;
}

int mood_adapter_open_file(mood_adapter **out, mood_st_file *f, const mood_checkpoint *base,
                           unsigned flags)
{
    parse_ctx c;
    mood__peft_keys keys;
    mood_adapter *a;
    int err = 0;
    memset(&keys, 0, sizeof keys);
    if (!out || !f) {
        mood_st_close(f); /* taken over, also on this failure */
        return mood_error_set(MOOD_EINVAL, "%s: %s is NULL", __func__, out ? "f" : "out");
    }
    *out = NULL;
    memset(&c, 0, sizeof c);
    c.peft_keys = &keys;
    if (!(a = mood_calloc(1, sizeof *a))) {
        mood_st_close(f);
        return mood_error_nomem();
    }
    c.a = a;
    c.path = mood_st_path(f);
    c.flags = flags;
    a->file = f;
    if (mood_st_count(a->file) == 0) {
        err = mood_error_set(MOOD_EFORMAT, "%s: the file holds no tensors", c.path);
        goto done;
    }
    if ((err = choose_keymap(&c, base)) != 0)
        goto done;
    load_peft_config(&c);
    if ((err = build_modules(&c)) != 0 || (err = collect_unmatched(&c)) != 0)
        goto done;
    if (a->n_modules == 0)
        err = no_module_error(&c);
done:
    mood__peft_keys_free(&keys); /* before the config its items point into */
    cJSON_Delete(c.peft_config);
    mood_free(c.role_idx);
    mood_free(c.peft_mag);
    mood_free(c.unmatched);
    if (err)
        mood_adapter_close(a);
    else
        *out = a;
    return err;
}

void mood_adapter_close(mood_adapter *a)
{
    if (!a)
        return;
    for (size_t i = 0; a->modules && i < a->n_modules; i++)
        mood_free(a->modules[i].name);
    mood_free(a->modules);
    for (size_t i = 0; i < a->n_unmatched; i++)
        mood_free(a->unmatched[i]);
    mood_free(a->unmatched);
    mood__keymap_free(a->own_keymap);
    mood_st_close(a->file);
    mood_free(a);
}

/* ----- accessors --------------------------------------------------------------------------- */

const mood_st_file *mood_adapter_file(const mood_adapter *a)
{
    return a->file;
}

mood_family mood_adapter_family(const mood_adapter *a)
{
    return a->family;
}

const char *mood_adapter_family_source(const mood_adapter *a)
{
    return a->family_source ? a->family_source : "unknown";
}

size_t mood_adapter_module_count(const mood_adapter *a)
{
    return a->n_modules;
}

void mood_adapter_module(const mood_adapter *a, size_t i, mood_module_info *out)
{
    const mood_module *m;
    if (!out) {
        mood_error_set(MOOD_EINVAL, "mood_adapter_module: out is NULL");
        return;
    }
    memset(out, 0, sizeof *out);
    if (!a || i >= a->n_modules) {
        mood_error_set(MOOD_EINVAL, "module index %zu out of range (%zu modules)", i,
                       a ? a->n_modules : 0);
        return;
    }
    m = &a->modules[i];
    out->name = m->name;
    out->target = m->target->key;
    out->kohya_name = m->target->kohya_name;
    out->model_name = m->target->model_name;
    out->part = m->target->part;
    out->algo = m->algo;
    out->rank = m->rank;
    out->alpha = m->alpha;
    out->scale = m->scale;
    out->has_alpha = m->has_alpha;
    out->dora = m->dora;
    out->tucker = m->tucker;
    out->slice = m->target->slice;
    out->conv = m->ndim == 4 && (m->kh > 1 || m->kw > 1);
    out->dtype = MOOD_DTYPE_F32;
    for (int r = 0; r < ROLE_COUNT; r++) {
        if (m->t[r] && r != ROLE_ALPHA && r != ROLE_SCALE && r != ROLE_IA3_ON_INPUT) {
            out->dtype = m->t[r]->dtype;
            break;
        }
    }
}

size_t mood_adapter_unmatched_count(const mood_adapter *a)
{
    return a->n_unmatched;
}

const char *mood_adapter_unmatched(const mood_adapter *a, size_t i)
{
    return i < a->n_unmatched ? a->unmatched[i] : NULL;
}
