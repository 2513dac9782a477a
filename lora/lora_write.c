/*
 * lora_write.c: writes LoRA modules held as float32 up/down factors in kohya's layout
 * (lora-formats.md §2.1, §6, §7.3, §7.4), the way sd-scripts' svd_merge_lora.py, resize_lora.py
 * and extract_lora_from_models.py save them:
 *   <name>.lora_up.weight    (out, r) or (out, r, 1, 1) for convolutions
 *   <name>.lora_down.weight  (r, in) or (r, in, kh, kw)
 *   <name>.alpha             0-d tensor
 * all in the requested dtype (resize and extract cast alpha to the save dtype too; svd_merge
 * keeps an int64 alpha, which no loader distinguishes from a float one).
 *
 * Metadata: the minimum ss_* keys (train_util.build_minimum_network_metadata), modelspec.* as
 * library/sai_model_spec.py builds them for a LoRA of the family, and the two hashes kohya
 * precomputes (train_util.precalculate_safetensors_hashes):
 *   sshs_model_hash  = SHA-256 of the data section (AutoV3), which does not depend on metadata;
 *   sshs_legacy_hash = first 8 hex of SHA-256 of bytes [1 MiB, 1 MiB + 64 KiB) of the file
 *                      serialised with only its ss_* metadata (e3b0c442 when that is empty).
 * Caller pairs override the defaults (a NULL value removes a key), so callers can carry over the
 * metadata of an input file as resize_lora.py does.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lora/lora_internal.h"
#include "mood/hash.h"

/* Shared with svd.c (which formats alpha and parameters the way Python's str(float) does). */

#define LEGACY_BEGIN     0x100000u
#define LEGACY_LEN       0x10000u
#define EMPTY_SHA_PREFIX "e3b0c442"

/* ----- Python float formatting ------------------------------------------------------------- */

/* Writes v as Python's repr(float) does: the shortest digits that read back as v, positional
 * notation for decimal exponents in [-4, 16) with at least one fractional digit ("4.0"),
 * scientific otherwise ("1e-05", "1.5e+16"). */
void mood__lora_py_float(char *buf, size_t size, double v)
{
    char sci[40], digits[24];
    int nd = 0, exp10;
    const char *p, *sign = v < 0 ? "-" : "";
    if (!isfinite(v)) {
        snprintf(buf, size, "%s", isnan(v) ? "nan" : (v < 0 ? "-inf" : "inf"));
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec - 1, fabs(v));
        if (strtod(sci, NULL) == fabs(v))
            break;
    }
    for (p = sci; *p && *p != 'e'; p++) {
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    }
    exp10 = (int)strtol(p + 1, NULL, 10);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    if (exp10 >= 16 || exp10 < -4) {
        snprintf(buf, size, "%s%c%s%se%c%02d", sign, digits[0], nd > 1 ? "." : "", digits + 1,
                 exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        snprintf(buf, size, "%s0.%.*s%s", sign, -exp10 - 1, "0000", digits);
    } else if (exp10 + 1 >= nd) {
        snprintf(buf, size, "%s%s%.*s.0", sign, digits, exp10 + 1 - nd, "0000000000000000");
    } else {
        snprintf(buf, size, "%s%.*s.%s", sign, exp10 + 1, digits, digits + exp10 + 1);
    }
}

/* ----- metadata set ------------------------------------------------------------------------ */

typedef struct meta_set {
    char **kv; /* key, value pairs; value NULL = removed */
    size_t n, cap;
} meta_set;

static void meta_dispose(meta_set *m)
{
    for (size_t i = 0; i < 2 * m->n; i++)
        mood_free(m->kv[i]);
    mood_free(m->kv);
    memset(m, 0, sizeof *m);
}

static int meta_put(meta_set *m, const char *key, const char *value)
{
    char *v = NULL;
    if (value && !(v = mood_strdup(value)))
        return mood_error_nomem();
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->kv[2 * i], key) == 0) {
            mood_free(m->kv[2 * i + 1]);
            m->kv[2 * i + 1] = v;
            return 0;
        }
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 32;
        char **grown = mood_realloc(m->kv, 2 * cap * sizeof *grown);
        if (!grown) {
            mood_free(v);
            return mood_error_nomem();
        }
        m->kv = grown;
        m->cap = cap;
    }
    if (!(m->kv[2 * m->n] = mood_strdup(key))) {
        mood_free(v);
        return mood_error_nomem();
    }
    m->kv[2 * m->n + 1] = v;
    m->n++;
    return 0;
}

/* Copies the entries whose key starts (or does not start, with want == 0) with "ss_". */
static int meta_apply(mood_st_writer *w, const meta_set *m, int want_ss)
{
    int err = 0;
    for (size_t i = 0; !err && i < m->n; i++) {
        int is_ss = strncmp(m->kv[2 * i], "ss_", 3) == 0;
        if (m->kv[2 * i + 1] && is_ss == want_ss)
            err = mood_st_writer_set_meta(w, m->kv[2 * i], m->kv[2 * i + 1]);
    }
    return err;
}

/* ----- defaults ---------------------------------------------------------------------------- */

/* kohya's strings per family. SD2 is taken as v-prediction, as svd_merge_lora.py and
 * extract_lora_from_models.py assume for v2 models. */
static int family_meta(meta_set *m, mood_family family)
{
    static const char *const tab[][7] = {
        /* family, ss_base_model_version, ss_v2, architecture, implementation, resolution,
           prediction */
        {"sd1", "sd_v1", "False", "stable-diffusion-v1/lora", "diffusers", "512x512", "epsilon"},
        {"sd2", "sd_v2_v", "True", "stable-diffusion-v2-768-v/lora", "diffusers", "768x768", "v"},
        {"sdxl", "sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora",
         "https://github.com/Stability-AI/generative-models", "1024x1024", "epsilon"},
    };
    static const char *const keys[7] = {NULL,
                                        "ss_base_model_version",
                                        "ss_v2",
                                        "modelspec.architecture",
                                        "modelspec.implementation",
                                        "modelspec.resolution",
                                        "modelspec.prediction_type"};
    int err = 0;
    for (size_t f = 0; f < sizeof tab / sizeof tab[0]; f++) {
        if (strcmp(tab[f][0], mood_family_name(family)) != 0)
            continue;
        for (int k = 1; !err && k < 7; k++)
            err = meta_put(m, keys[k], tab[f][k]);
        if (!err)
            err = meta_put(m, "modelspec.sai_model_spec", "1.0.1");
    }
    return err;
}

/* "%d" when every module (of the kind selected) has the same value, else "Dynamic". */
static void uniform_value(char *buf, size_t size, const mood_lora_out_module *mods, size_t n,
                          int conv, int want_alpha)
{
    int seen = 0, same = 1;
    double v = 0;
    for (size_t i = 0; i < n; i++) {
        int is_conv = mods[i].ndim == 4 && (mods[i].kh != 1 || mods[i].kw != 1);
        double x = want_alpha ? mods[i].alpha : (double)mods[i].rank;
        if (is_conv != conv)
            continue;
        if (seen && x != v)
            same = 0;
        v = x;
        seen = 1;
    }
    if (!seen)
        buf[0] = '\0';
    else if (!same)
        snprintf(buf, size, "Dynamic");
    else if (want_alpha)
        mood__lora_py_float(buf, size, v);
    else
        snprintf(buf, size, "%d", (int)v);
}

static int network_meta(meta_set *m, const mood_lora_out_module *mods, size_t n)
{
    char dim[32], alpha[40], cdim[32], calpha[40], args[128];
    int err;
    uniform_value(dim, sizeof dim, mods, n, 0, 0);
    uniform_value(alpha, sizeof alpha, mods, n, 0, 1);
    uniform_value(cdim, sizeof cdim, mods, n, 1, 0);
    uniform_value(calpha, sizeof calpha, mods, n, 1, 1);
    if (!dim[0]) { /* only kxk convolutions */
        memcpy(dim, cdim, sizeof dim);
        memcpy(alpha, calpha, sizeof alpha);
    }
    /* json.dumps of {"conv_dim": "...", "conv_alpha": "..."} (strings, as kohya's training). */
    if (cdim[0])
        snprintf(args, sizeof args, "{\"conv_dim\": \"%s\", \"conv_alpha\": \"%s\"}", cdim, calpha);
    else
        snprintf(args, sizeof args, "{}");
    err = meta_put(m, "ss_network_module", "networks.lora");
    if (!err)
        err = meta_put(m, "ss_network_dim", dim[0] ? dim : "None");
    if (!err)
        err = meta_put(m, "ss_network_alpha", alpha[0] ? alpha : "None");
    if (!err)
        err = meta_put(m, "ss_network_args", args);
    return err;
}

/* modelspec.title (file name without extension), date (local time, seconds; SOURCE_DATE_EPOCH
 * makes it reproducible) and implementation_version. */
static int spec_meta(meta_set *m, const char *path)
{
    const char *base = mood_path_basename(path), *dot = strrchr(base, '.'), *sde;
    char title[256], date[32];
    time_t now = time(NULL);
    struct tm tm;
    int err;
    snprintf(title, sizeof title, "%.*s", (int)(dot && dot != base ? dot - base : 255), base);
    if ((sde = getenv("SOURCE_DATE_EPOCH")) != NULL && *sde)
        now = (time_t)strtoll(sde, NULL, 10);
    if (!localtime_r(&now, &tm) || !strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm))
        snprintf(date, sizeof date, "1970-01-01T00:00:00");
    err = meta_put(m, "modelspec.title", title);
    if (!err)
        err = meta_put(m, "modelspec.date", date);
    if (!err) {
        char impl[64];
        snprintf(impl, sizeof impl, "mood/%s", mood_version());
        err = meta_put(m, "modelspec.implementation_version", impl);
    }
    return err;
}

static int build_meta(meta_set *m, const char *path, const mood_lora_out_module *mods, size_t n,
                      mood_family family, const char *const *meta)
{
    int err = network_meta(m, mods, n);
    if (!err && family != MOOD_FAMILY_UNKNOWN) {
        err = family_meta(m, family);
        if (!err)
            err = spec_meta(m, path);
    }
    for (size_t i = 0; !err && meta && meta[i]; i += 2)
        err = meta_put(m, meta[i], meta[i + 1]);
    return err;
}

/* ----- tensors ----------------------------------------------------------------------------- */

static int check_module(const mood_lora_out_module *md)
{
    uint64_t flat = 0, up = 0;
    if (!md->name || !md->up || !md->down || md->rank <= 0 || md->out <= 0 || md->in <= 0 ||
        (md->ndim != 2 && md->ndim != 4) || md->kh <= 0 || md->kw <= 0 ||
        (md->ndim == 2 && (md->kh != 1 || md->kw != 1)) || !isfinite(md->alpha))
        return mood_error_set(MOOD_EINVAL, "LoRA module \"%s\": bad rank, shape or alpha",
                              md->name ? md->name : "?");
    if (mood_mul_u64(&flat, (uint64_t)md->in, (uint64_t)md->kh) != 0 ||
        mood_mul_u64(&flat, flat, (uint64_t)md->kw) != 0 ||
        mood_mul_u64(&flat, flat, (uint64_t)md->rank) != 0 ||
        mood_mul_u64(&up, (uint64_t)md->out, (uint64_t)md->rank) != 0 || flat >> 40 || up >> 40)
        return mood_error_set(MOOD_EINVAL, "LoRA module \"%s\": shape too large", md->name);
    return 0;
}

/* A factor that the output dtype cannot hold (inf or NaN once cast) is refused before anything is
 * written, as bake refuses such a weight: the file would be a broken LoRA. */
static int check_range(const float *v, int64_t n, const mood_lora_out_module *md, const char *what,
                       mood_dtype dt)
{
    double max = mood__dtype_max(dt);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]) || fabs(v[i]) > max)
            return mood_error_set(MOOD_EFORMAT,
                                  "module \"%s\": its %s factor holds %g, %s; refusing to write "
                                  "a broken LoRA (%s)",
                                  md->name, what, (double)v[i],
                                  isfinite(v[i]) ? "past the range of the output dtype"
                                                 : "not a finite number",
                                  dt == MOOD_DTYPE_F32 ? "its change overflows float32: a lower "
                                                         "weight keeps it"
                                                       : "a lower weight or --dtype f32 keeps it");
    return 0;
}

static int add_module(mood_st_writer *w, const mood_lora_out_module *md, mood_dtype dt)
{
    char key[512];
    int64_t up_shape[4] = {md->out, md->rank, 1, 1};
    int64_t down_shape[4] = {md->rank, md->in, md->kh, md->kw};
    float alpha = (float)md->alpha;
    int err = check_module(md);
    if (!err)
        err = check_range(md->up, md->out * md->rank, md, "up", dt);
    if (!err)
        err = check_range(md->down, md->rank * md->in * md->kh * md->kw, md, "down", dt);
    if (err)
        return err;
    if (strlen(md->name) + 20 >= sizeof key)
        return mood_error_set(MOOD_EINVAL, "LoRA module name too long: \"%.60s...\"", md->name);
    snprintf(key, sizeof key, "%s.lora_up.weight", md->name);
    if ((err = mood_st_writer_add_f32(w, key, dt, md->ndim, up_shape, md->up)) != 0)
        return err;
    snprintf(key, sizeof key, "%s.lora_down.weight", md->name);
    if ((err = mood_st_writer_add_f32(w, key, dt, md->ndim, down_shape, md->down)) != 0)
        return err;
    snprintf(key, sizeof key, "%s.alpha", md->name);
    return mood_st_writer_add_f32(w, key, dt, 0, NULL, &alpha);
}

/* ----- hashes ------------------------------------------------------------------------------ */

/* An upper bound of the header length of the ss_*-only serialisation: JSON escaping at most
 * sixfold, plus the fixed parts of each entry. */
static uint64_t header_bound(const mood_lora_out_module *mods, size_t n, const meta_set *m)
{
    uint64_t b = 64;
    for (size_t i = 0; i < m->n; i++) {
        if (m->kv[2 * i + 1] && strncmp(m->kv[2 * i], "ss_", 3) == 0)
            b += 6 * (strlen(m->kv[2 * i]) + strlen(m->kv[2 * i + 1])) + 8;
    }
    for (size_t i = 0; i < n; i++)
        b += 3 * (6 * strlen(mods[i].name) + 300);
    return b;
}

static uint64_t data_bytes(const mood_lora_out_module *mods, size_t n, mood_dtype dt)
{
    uint64_t elems = 0, es = (uint64_t)mood_dtype_bits(dt) / 8;
    for (size_t i = 0; i < n; i++)
        elems += (uint64_t)mods[i].rank *
                     (uint64_t)(mods[i].out + mods[i].in * mods[i].kh * mods[i].kw) +
                 1;
    return elems * es;
}

/* sshs_legacy_hash: the AutoV1 range of the ss_*-only serialisation (the writer `w` holds the
 * ss_* metadata at this point), hashed without writing it; a file that cannot reach the range's
 * start has the empty range's hash. */
static int legacy_hash(char out[9], mood_st_writer *w, uint64_t size_bound)
{
    char hex[65];
    int err;
    if (size_bound <= LEGACY_BEGIN) {
        snprintf(out, 9, EMPTY_SHA_PREFIX);
        return 0;
    }
    if ((err = mood_st_writer_range_sha256(w, LEGACY_BEGIN, LEGACY_LEN, hex)) != 0)
        return err;
    snprintf(out, 9, "%.8s", hex);
    return 0;
}

/* ----- entry point ------------------------------------------------------------------------- */

int mood__lora_write(const char *path, const mood_lora_out_module *mods, size_t n,
                     mood_family family, mood_dtype dtype, const char *const *meta,
                     mood_progress_fn progress, void *payload)
{
    mood_st_writer *w = NULL;
    meta_set m = {0};
    char model_hash[65], legacy[9];
    uint64_t bound;
    int err = 0;
    if (dtype != MOOD_DTYPE_F32 && dtype != MOOD_DTYPE_F16 && dtype != MOOD_DTYPE_BF16)
        return mood_error_set(MOOD_EINVAL, "%s: LoRA dtype must be F32, F16 or BF16, not %s", path,
                              mood_dtype_name(dtype));
    if ((err = mood_st_writer_new(&w)) != 0)
        goto done;
    for (size_t i = 0; !err && i < n; i++)
        err = add_module(w, &mods[i], dtype);
    if (err)
        mood_error_prefix("%s", path);
    if (!err)
        err = build_meta(&m, path, mods, n, family, meta);
    if (err)
        goto done;
    bound = 8 + header_bound(mods, n, &m) + data_bytes(mods, n, dtype);
    if ((err = meta_apply(w, &m, 1)) != 0 || (err = legacy_hash(legacy, w, bound)) != 0 ||
        (err = mood_st_writer_data_sha256(w, model_hash)) != 0)
        goto done;
    if ((err = meta_put(&m, "sshs_model_hash", model_hash)) != 0 ||
        (err = meta_put(&m, "sshs_legacy_hash", legacy)) != 0 || (err = meta_apply(w, &m, 0)) != 0)
        goto done;
    err = mood_st_writer_write(w, path, progress, payload);
done:
    meta_dispose(&m);
    mood_st_writer_free(w);
    return err;
}

void mood__lora_out_module_dispose(mood_lora_out_module *m)
{
    if (!m)
        return;
    mood_free(m->name);
    mood_free(m->up);
    mood_free(m->down);
    memset(m, 0, sizeof *m);
}

void mood_lora_write_options_init(mood_lora_write_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->dtype = MOOD_DTYPE_F32;
    o->clamp_quantile = 0.99;
}

int mood__output_check(const char *output, const mood_weighted_adapter *adapters, size_t n,
                       const char *also, const char *also2)
{
    const char **inputs = mood_calloc(n + 2, sizeof *inputs);
    size_t k = 0;
    int err;
    if (!inputs)
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++)
        inputs[k++] = adapters[i].path;
    inputs[k++] = also;
    inputs[k++] = also2;
    err = mood_output_path_check_inputs(output, inputs, k);
    mood_free(inputs);
    return err;
}
