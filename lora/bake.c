/*
 * bake.c: merges adapters into a copy of a checkpoint (`mood bake`, lora-formats.md §4, §5.1).
 *
 * The output has the base's keys, dtypes, shapes and layout. It is streamed: every tensor is
 * produced by a writer callback when the writer reaches it. An unpatched tensor is copied byte
 * for byte from the mapped base and its pages are released right after, so resident memory stays
 * near one tensor instead of the whole checkpoint. A patched tensor is converted to float32, each
 * adapter's modules are applied in the user's order (UNet or text-encoder multiplier by the
 * module's part; non-additive algorithms see the weight as modified so far, like ComfyUI and
 * A1111), the result is checked to be finite (like diffusers' safe_fusing) and cast once to the
 * base dtype (§4.4, §8 #9: never arithmetic on fp8/fp16 storage).
 * Fused OpenCLIP in_proj weights receive q/k/v modules on their row slices; diff_b / b_norm go
 * to the bias tensor, computed when the writer reaches that tensor.
 * The metadata keeps the base's and adds modelspec.merged_from and mood_baked (adapter names,
 * AutoV3 hashes, multipliers). The write is atomic: on failure nothing is left on disk.
 */
#include <math.h>
#include <string.h>

#include "lora/lora_internal.h"
#include "mood/hash.h"

/* One module applied to one tensor. */
typedef struct patch {
    const mood_adapter *a;
    const mood_module *m;
    float mult;
} patch;

/* A base tensor that receives patches (its weight, or its bias for bias_of). */
typedef struct job {
    const mood_st_tensor *t;
    const mood_st_file *base;
    int is_bias;
    patch *p;
    size_t n, cap;
} job;

typedef struct plan {
    job *jobs; /* one per base tensor, in base file order */
    size_t n_jobs;
    size_t n_patched;
} plan;

/* ----- planning ----------------------------------------------------------------------------- */

static int add_patch(job *j, const mood_adapter *a, const mood_module *m, float mult)
{
    if (mood_array_reserve(&j->p, &j->cap, j->n, sizeof *j->p, 4) != 0)
        return MOOD_ENOMEM;
    j->p[j->n].a = a;
    j->p[j->n].m = m;
    j->p[j->n].mult = mult;
    j->n++;
    return 0;
}

static job *job_of(plan *pl, const mood_st_file *base, const char *key)
{
    const mood_st_tensor *t = mood_st_find(base, key);
    if (!t)
        return NULL;
    for (size_t i = 0; i < pl->n_jobs; i++) {
        if (pl->jobs[i].t == t)
            return &pl->jobs[i];
    }
    return NULL;
}

static int module_has_bias(const mood_module *m)
{
    return (m->algo == MOOD_ALGO_FULL && m->t[ROLE_DIFF_B]) ||
           (m->algo == MOOD_ALGO_NORM && m->t[ROLE_B_NORM]);
}

/* Checks that a module fits its base tensor (slice inside the rows, dtype writable). */
static int check_fit(const job *j, const mood_module *m, int64_t numel, const char *path)
{
    int64_t have = mood_st_numel(j->t), slice = m->target->slice;
    int64_t need = (slice >= 0 ? (slice + 1) : 1) * numel;
    if (need > have || (slice < 0 && numel != have))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: module \"%s\" has %lld elements, base tensor "
                              "\"%s\" has %lld",
                              path, m->name, (long long)numel, j->t->name, (long long)have);
    if (j->t->dtype != MOOD_DTYPE_F32 && j->t->dtype != MOOD_DTYPE_F16 &&
        j->t->dtype != MOOD_DTYPE_BF16 && j->t->dtype != MOOD_DTYPE_F64 &&
        j->t->dtype != MOOD_DTYPE_F8_E4M3 && j->t->dtype != MOOD_DTYPE_F8_E5M2)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "base tensor \"%s\" has dtype %s, which mood "
                              "cannot patch",
                              j->t->name, mood_dtype_name(j->t->dtype));
    return 0;
}

static int64_t numel_of(const mood_module *m)
{
    return m->ndim == 1 ? m->out : m->out * m->in * m->kh * m->kw;
}

static int plan_module(plan *pl, const mood_st_file *base, const mood_adapter *a,
                       const mood_module *m, float mult)
{
    const char *path = mood_st_path(a->file);
    job *w, *b = NULL;
    int err;
    if (!m->target || !(w = job_of(pl, base, m->target->key)))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: module \"%s\" targets \"%s\", which the base "
                              "does not have",
                              path, m->name, m->target ? m->target->key : "(none)");
    if ((err = check_fit(w, m, numel_of(m), path)) != 0)
        return err;
    if (module_has_bias(m)) {
        if (!m->target->bias_key || !(b = job_of(pl, base, m->target->bias_key)))
            return mood_error_set(MOOD_EFORMAT,
                                  "%s: module \"%s\" changes a bias, but the base "
                                  "has none for \"%s\"",
                                  path, m->name, m->target->key);
        b->is_bias = 1;
        if ((err = check_fit(b, m, m->out, path)) != 0 || (err = add_patch(b, a, m, mult)) != 0)
            return err;
    }
    if ((m->algo == MOOD_ALGO_FULL && !m->t[ROLE_DIFF]) ||
        (m->algo == MOOD_ALGO_NORM && !m->t[ROLE_W_NORM]))
        return 0; /* bias only */
    return add_patch(w, a, m, mult);
}

static int plan_build(plan *pl, const mood_st_file *base, mood_adapter *const *ads,
                      const mood_weighted_adapter *wa, size_t n)
{
    int err = 0;
    pl->n_jobs = mood_st_count(base);
    if (!(pl->jobs = mood_calloc(pl->n_jobs ? pl->n_jobs : 1, sizeof *pl->jobs)))
        return mood_error_nomem();
    for (size_t i = 0; i < pl->n_jobs; i++) {
        pl->jobs[i].t = mood_st_at(base, i);
        pl->jobs[i].base = base;
    }
    for (size_t k = 0; k < n && !err; k++) {
        for (size_t i = 0; i < ads[k]->n_modules && !err; i++) {
            const mood_module *m = &ads[k]->modules[i];
            float mult =
                (float)(m->target && m->target->part != MOOD_PART_UNET ? wa[k].te : wa[k].unet);
            err = plan_module(pl, base, ads[k], m, mult);
        }
    }
    for (size_t i = 0; i < pl->n_jobs; i++)
        pl->n_patched += pl->jobs[i].n > 0;
    return err;
}

static void plan_dispose(plan *pl)
{
    for (size_t i = 0; i < pl->n_jobs; i++)
        mood_free(pl->jobs[i].p);
    mood_free(pl->jobs);
}

/* ----- producing tensors -------------------------------------------------------------------- */

static int check_finite(const float *w, int64_t n, const job *j, const patch *p)
{
    double max = mood__dtype_max(j->t->dtype);
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(w[i]) || fabs(w[i]) > max)
            return mood_error_set(MOOD_EFORMAT,
                                  "tensor \"%s\" is %s (%g at element %lld) "
                                  "after applying module \"%s\" of %s; refusing to write a "
                                  "broken model",
                                  j->t->name,
                                  isfinite(w[i]) ? "out of the range of its dtype" : "not finite",
                                  (double)w[i], (long long)i, p->m->name, mood_st_path(p->a->file));
    }
    return 0;
}

/* Applies one patch to the float32 copy w of job j's tensor. The module is copied so that only
 * its weight part (weight jobs) or its bias part (bias jobs) is applied. */
static int apply_patch(float *w, const job *j, const patch *p)
{
    mood_module m = *p->m;
    int64_t off = 0;
    int err;
    if (m.target->slice >= 0)
        off = m.target->slice * (j->is_bias ? m.out : numel_of(&m));
    if (j->is_bias) {
        m.t[ROLE_DIFF] = NULL;
        m.t[ROLE_W_NORM] = NULL;
        m.target = NULL;
        err = mood__module_apply(&m, w, w + off, p->mult);
    } else {
        m.t[ROLE_DIFF_B] = NULL;
        m.t[ROLE_B_NORM] = NULL;
        err = mood__module_apply(&m, w + off, NULL, p->mult);
    }
    if (err)
        mood_error_prefix("%s", mood_st_path(p->a->file));
    return err;
}

static int fill_patched(void *dst, const job *j)
{
    int64_t n = mood_st_numel(j->t);
    float *w = mood_malloc((size_t)(n ? n : 1) * sizeof *w);
    int err;
    if (!w)
        return mood_error_nomem();
    err = mood_st_to_f32(w, j->t);
    for (size_t i = 0; !err && i < j->n; i++) {
        if ((err = apply_patch(w, j, &j->p[i])) == 0)
            err = check_finite(w, n, j, &j->p[i]);
    }
    if (!err)
        err = mood_dtype_from_f32(dst, w, j->t->dtype, (size_t)n);
    mood_free(w);
    return err;
}

static int fill_tensor(void *dst, uint64_t nbytes, void *payload)
{
    const job *j = payload;
    int err = 0;
    if (j->n)
        err = fill_patched(dst, j);
    else if (nbytes)
        memcpy(dst, j->t->data, (size_t)nbytes);
    mood_st_release(j->base, j->t);
    return err;
}

/* ----- metadata ----------------------------------------------------------------------------- */

/* AutoV3 (lora-formats.md §7.3): SHA-256 of everything after the header. */
static void autov3(char hex[65], const mood_st_file *f)
{
    uint64_t size = mood_st_file_size(f) - 8 - mood_st_header_len(f);
    const void *data = mood_st_count(f) ? mood_st_at(f, 0)->data : "";
    mood_sha256_hex(hex, data, mood_st_count(f) ? (size_t)size : 0);
}

/* modelspec.title, else the file name without its extension (kohya build_merged_from). */
static int append_title(mood_buf *b, const mood_st_file *f)
{
    const char *title = mood_st_meta_get(f, "modelspec.title");
    const char *name = mood_path_basename(mood_st_path(f)), *dot = strrchr(name, '.');
    if (b->len && mood_buf_puts(b, ", ") != 0)
        return MOOD_ENOMEM;
    if (title && *title)
        return mood_buf_puts(b, title);
    return mood_buf_append(b, name, dot && dot != name ? (size_t)(dot - name) : strlen(name));
}

static int baked_record(mood_buf *b, const mood_st_file *base, mood_adapter *const *ads,
                        const mood_weighted_adapter *wa, size_t n)
{
    int err = mood_buf_puts(b, "{\"base\": ");
    err = err ? err : mood_buf_json_string(b, mood_path_basename(mood_st_path(base)));
    err = err ? err : mood_buf_puts(b, ", \"adapters\": [");
    for (size_t k = 0; k < n && !err; k++) {
        char hex[65];
        autov3(hex, ads[k]->file);
        err = mood_buf_puts(b, k ? ", {\"file\": " : "{\"file\": ");
        err = err ? err : mood_buf_json_string(b, mood_path_basename(wa[k].path));
        err = err ? err
                  : mood_buf_printf(b, ", \"autov3\": \"%s\", \"unet\": %.10g, \"te\": %.10g}", hex,
                                    wa[k].unet, wa[k].te);
    }
    return err ? err : mood_buf_puts(b, "]}");
}

static int set_metadata(mood_st_writer *w, const mood_st_file *base, mood_adapter *const *ads,
                        const mood_weighted_adapter *wa, size_t n)
{
    mood_buf titles, rec;
    int err = 0;
    mood_buf_init(&titles);
    mood_buf_init(&rec);
    for (size_t i = 0; i < mood_st_meta_count(base) && !err; i++) {
        const char *key = mood_st_meta_key(base, i);
        /* hashes of the base's bytes would name the new file wrongly (mood hash: "stale") */
        if (strcmp(key, "sshs_model_hash") == 0 || strcmp(key, "sshs_legacy_hash") == 0 ||
            strcmp(key, "modelspec.hash_sha256") == 0)
            continue;
        err = mood_st_writer_set_meta(w, key, mood_st_meta_value(base, i));
    }
    err = err ? err : append_title(&titles, base);
    for (size_t k = 0; k < n && !err; k++)
        err = append_title(&titles, ads[k]->file);
    err = err ? err : baked_record(&rec, base, ads, wa, n);
    err = err ? err : mood_st_writer_set_meta(w, "modelspec.merged_from", titles.data);
    err = err ? err : mood_st_writer_set_meta(w, "mood_baked", rec.data);
    mood_buf_dispose(&titles);
    mood_buf_dispose(&rec);
    return err;
}

/* Logs the adapter's keys that matched nothing, grouped by prefix (lora-formats.md §8 #1). */
static void warn_unmatched(const mood_adapter *a)
{
    mood_buf prefixes;
    if (!a->n_unmatched)
        return;
    mood_buf_init(&prefixes);
    for (size_t i = 0; i < a->n_unmatched; i++) {
        const char *k = a->unmatched[i], *end;
        char pre[64];
        /* "lora_te2_..." -> "lora_te2_"; "unet.down..." -> "unet." */
        end = strncmp(k, "lora_", 5) == 0 ? strchr(k + 5, '_') : strchr(k, '.');
        snprintf(pre, sizeof pre, "%.*s", end ? (int)(end - k + 1) : (int)strlen(k), k);
        if (prefixes.len < 400 && (!prefixes.data || !strstr(prefixes.data, pre)))
            (void)mood_buf_printf(&prefixes, "%s%s", prefixes.len ? " " : "", pre);
    }
    mood_log(MOOD_LOG_WARN,
             "%s: %zu key%s matched no tensor of the base and %s ignored "
             "(prefixes: %s)",
             mood_st_path(a->file), a->n_unmatched, a->n_unmatched == 1 ? "" : "s",
             a->n_unmatched == 1 ? "is" : "are", prefixes.data ? prefixes.data : "?");
    mood_buf_dispose(&prefixes);
}

/* ----- mood_bake ---------------------------------------------------------------------------- */

static int check_options(const mood_bake_options *o)
{
    if (!o || !o->base || !o->output || (!o->adapters && o->n_adapters))
        return mood_error_set(MOOD_EINVAL, "bake: base and output must be given");
    if (o->n_adapters == 0)
        return mood_error_set(MOOD_EINVAL, "bake: no adapter to merge into %s", o->base);
    for (size_t k = 0; k < o->n_adapters; k++) {
        if (!o->adapters[k].path || !isfinite(o->adapters[k].unet) || !isfinite(o->adapters[k].te))
            return mood_error_set(MOOD_EINVAL,
                                  "bake: adapter %zu has no path or a non-finite "
                                  "multiplier",
                                  k + 1);
    }
    return 0;
}

static int add_tensors(mood_st_writer *w, const plan *pl)
{
    int err = 0;
    for (size_t i = 0; i < pl->n_jobs && !err; i++) {
        const mood_st_tensor *t = pl->jobs[i].t;
        err = mood_st_writer_add_lazy(w, t->name, t->dtype, t->ndim, t->shape, fill_tensor,
                                      &pl->jobs[i]);
    }
    return err;
}

int mood_bake(const mood_bake_options *o)
{
    mood_checkpoint *ck = NULL;
    mood_adapter **ads = NULL;
    mood_st_writer *w = NULL;
    const mood_st_file *base;
    plan pl;
    int err;
    memset(&pl, 0, sizeof pl);
    if ((err = check_options(o)) != 0 ||
        (err = mood__output_check(o->output, o->adapters, o->n_adapters, o->base, NULL)) != 0 ||
        (err = mood_checkpoint_open(&ck, o->base)) != 0)
        goto done;
    base = mood_checkpoint_file(ck);
    if (!(ads = mood_calloc(o->n_adapters, sizeof *ads))) {
        err = mood_error_nomem();
        goto done;
    }
    for (size_t k = 0; k < o->n_adapters && !err; k++) {
        if ((err = mood_adapter_open_weighted(&ads[k], &o->adapters[k], ck)) == 0)
            warn_unmatched(ads[k]);
    }
    if (err || (err = plan_build(&pl, base, ads, o->adapters, o->n_adapters)) != 0 ||
        (err = mood_st_writer_new(&w)) != 0 || (err = add_tensors(w, &pl)) != 0 ||
        (err = set_metadata(w, base, ads, o->adapters, o->n_adapters)) != 0)
        goto done;
    mood_log(MOOD_LOG_INFO, "bake: %zu of %zu tensors patched", pl.n_patched, pl.n_jobs);
    err = mood_st_writer_write(w, o->output, o->progress, o->payload);
done:
    mood_st_writer_free(w);
    plan_dispose(&pl);
    for (size_t k = 0; ads && k < o->n_adapters; k++)
        mood_adapter_close(ads[k]);
    mood_free(ads);
    mood_checkpoint_close(ck);
    return err;
}
