/*
 * civitai_link.c: what Civitai knows about LoRAs already in the registry: `civitai link` (by
 * style, or --all: hashes looked up 100 a request, each model fetched once) and the update check
 * (contracts in include/mood/civitai.h). Records are stored by civitai_store.c's
 * mood__civitai_store, as an import stores them.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "common/args.h"
#include "registry/civitai_impl.h"
#include "registry/registry_impl.h"

/* ----- models ------------------------------------------------------------------------------------
 */

/* A model fetched (or not) once in a run, however many LoRAs and styles use it. */
typedef struct cached_model {
    long long id;
    mood_civitai_model *model; /* NULL where the fetch failed */
    char *error;               /* why, then */
    int code;
} cached_model;

typedef struct model_cache {
    cached_model *items;
    size_t n, cap;
    int slim; /* keep only the model's own fields (mood__civitai_model_slim) */
} model_cache;

/* The model `id`, fetched on first use; a failure is kept in the entry (code, error), not
 * returned: only running out of memory is. */
static int cache_get(const cached_model **out, model_cache *k, mood_civitai *c, long long id)
{
    size_t i;
    cached_model *e;
    for (i = 0; i < k->n && k->items[i].id != id; i++) {
    }
    if (i == k->n) {
        if (k->n == k->cap) {
            size_t cap = k->cap ? 2 * k->cap : 16;
            cached_model *a = mood_realloc(k->items, cap * sizeof *a);
            if (!a)
                return mood_error_nomem();
            k->items = a;
            k->cap = cap;
        }
        e = &k->items[k->n++];
        memset(e, 0, sizeof *e);
        e->id = id;
        if ((e->code = mood_civitai_model_get(&e->model, c, id)) != 0) {
            if (!(e->error = mood_strdup(mood_error_last())))
                return mood_error_nomem();
            mood_error_clear();
        } else if (k->slim) {
            mood__civitai_model_slim(e->model);
        }
    }
    *out = &k->items[i];
    return 0;
}

static void cache_dispose(model_cache *k)
{
    for (size_t i = 0; i < k->n; i++) {
        mood_civitai_model_free(k->items[i].model);
        mood_free(k->items[i].error);
    }
    mood_free(k->items);
}

/* ----- link ------------------------------------------------------------------------------------
 */

/* The file name the LoRA was imported under (NULL when the registry has none, or on failure:
 * it only labels a result). */
static char *adapter_file_name(mood_registry *r, const char *sha256)
{
    sqlite3_stmt *st = NULL;
    char *name = NULL;
    if (mood__reg_prepare(r, &st, "SELECT file_name FROM adapters WHERE sha256 = ?1") != 0) {
        mood_error_clear();
        return NULL;
    }
    mood__reg_bind_text(st, 1, sha256);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        name = mood_strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return name;
}

/* One run of links: the LoRAs are looked up in batches of distinct hashes, each model fetched
 * once, and stored for each style they belong to. */
typedef struct link_run {
    mood_registry *r;
    mood_civitai *c;
    const mood_civitai_import_options *o;
    mood_progress_fn progress; /* LoRAs done; NULL: none */
    model_cache models;
    int one_by_one; /* the server has no batch lookup */
    /* the first failure other than "not found" (the network, the server, a rate limit): no
     * request is made after it, the LoRAs left fail with it (a run over a thousand LoRAs does
     * not wait out each one's retries against a server that is down) */
    int stop_code;
    char *stop_error;
} link_run;

/* What the lookup of one distinct hash gave. */
typedef struct hash_answer {
    const char *sha256;          /* borrowed from a result */
    mood_civitai_version *v;     /* the record found; NULL: none */
    const mood_civitai_model *m; /* its model (borrowed from the cache); NULL: none */
    int status;                  /* 0, MOOD_ENOTFOUND (Civitai does not know it), a failure */
    int unknown;                 /* Civitai has no record of the hash (not: of its model) */
    int model_tried;             /* answer_model was called */
    char *error;                 /* the failure's message */
} hash_answer;

/* a->status and a->error: code with message msg (NULL: mood_error_last()); a failure other than
 * "not found" stops the run. */
static void answer_fail(link_run *run, hash_answer *a, int code, const char *msg)
{
    mood_civitai_version_free(a->v);
    a->v = NULL;
    a->status = code;
    mood_free(a->error);
    a->error = mood_strdup(msg ? msg : mood_error_last());
    if (code != MOOD_ENOTFOUND && !run->stop_code) {
        run->stop_code = code;
        run->stop_error = mood_strdup(a->error ? a->error : "Civitai lookup failed");
    }
    mood_error_clear();
}

static void lookup_one(link_run *run, hash_answer *a)
{
    int err;
    if (run->stop_code) {
        answer_fail(run, a, run->stop_code, run->stop_error);
    } else if ((err = mood_civitai_version_by_hash(&a->v, run->c, a->sha256)) != 0) {
        answer_fail(run, a, err, NULL);
        a->unknown = err == MOOD_ENOTFOUND;
    }
}

/* The record of v[0..n) that answers sha256 (a file of it has that SHA-256); of several (the
 * same file published twice), the one published first, then the lowest id, as the lookup of one
 * hash answers. -1 when none does. */
static long best_record(const mood_civitai_version *v, size_t n, const char *sha256)
{
    long best = -1;
    for (size_t i = 0; i < n; i++) {
        size_t f = 0;
        while (f < v[i].n_files &&
               !(v[i].files[f].sha256 && strcasecmp(v[i].files[f].sha256, sha256) == 0))
            f++;
        if (f == v[i].n_files)
            continue;
        if (best >= 0) {
            const char *a = v[i].published_at, *b = v[best].published_at;
            int cmp = a && b ? strcmp(a, b) : a ? -1 : b ? 1 : 0;
            if (cmp > 0 || (cmp == 0 && v[i].id > v[best].id))
                continue;
        }
        best = (long)i;
    }
    return best;
}

/* A copy of v (its record parsed again) with m's fields: each stored result owns its own. */
static int clone_version(mood_civitai_version **out, const mood_civitai_version *v,
                         const mood_civitai_model *m)
{
    int err = mood_civitai_version_parse(out, v->json, strlen(v->json));
    if (!err && m && (err = mood_civitai_version_add_model(*out, m)) != 0) {
        mood_civitai_version_free(*out);
        *out = NULL;
    }
    return err;
}

/* Looks the n distinct hashes of a up: one request for all of them (at most the batch maximum),
 * or one each where that is all there is (one hash; a server without the batch lookup, which is
 * said once). */
static int lookup(link_run *run, hash_answer *a, size_t n)
{
    const char *h[MOOD_CIVITAI_BATCH_MAX];
    mood_civitai_version *recs = NULL;
    size_t n_recs = 0;
    int err;
    if (n == 1 || run->one_by_one || run->stop_code) {
        for (size_t i = 0; i < n; i++)
            lookup_one(run, &a[i]);
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        h[i] = a[i].sha256;
    err = mood_civitai_versions_by_hash(&recs, &n_recs, run->c, h, n);
    if (err == MOOD_EUNSUPPORTED) {
        mood_log(MOOD_LOG_WARN, "%s; looking each LoRA up on its own", mood_error_last());
        mood_error_clear();
        run->one_by_one = 1;
        return lookup(run, a, n);
    }
    if (err) { /* the first answer keeps the message, which stops the run: the others get it */
        for (size_t i = 0; i < n; i++)
            answer_fail(run, &a[i], i ? run->stop_code : err, i ? run->stop_error : NULL);
        return err == MOOD_ENOMEM ? err : 0;
    }
    for (size_t i = 0; i < n; i++) {
        long k = best_record(recs, n_recs, a[i].sha256);
        if (k < 0) { /* the message names the style: link_result's */
            a[i].status = MOOD_ENOTFOUND;
            a[i].unknown = 1;
        } else if ((err = clone_version(&a[i].v, &recs[k], NULL)) != 0) {
            break;
        }
    }
    mood_civitai_versions_free(recs, n_recs);
    return err;
}

/* The model of a's record (a->m), fetched on the first use in the run: a LoRA's model is asked
 * for just before it is stored, so that the progress moves with the requests. */
static int answer_model(link_run *run, hash_answer *a)
{
    const cached_model *e;
    int err;
    if (a->model_tried || !a->v || !a->v->model_id)
        return 0;
    a->model_tried = 1;
    if (run->stop_code) { /* a model not fetched yet is not asked for */
        size_t k = 0;
        while (k < run->models.n && run->models.items[k].id != a->v->model_id)
            k++;
        if (k == run->models.n) {
            answer_fail(run, a, run->stop_code, run->stop_error);
            return 0;
        }
    }
    if ((err = cache_get(&e, &run->models, run->c, a->v->model_id)) != 0)
        return err;
    if (!e->model)
        answer_fail(run, a, e->code, e->error);
    a->m = e->model;
    return 0;
}

/* Stores what a says about res's LoRA for res's style; res->status, error, version say how it
 * went. */
static void link_result(link_run *run, mood_civitai_link_result *res, const hash_answer *a)
{
    mood_civitai_version *v = NULL;
    char *location = NULL;
    const char *file = res->file_name ? res->file_name : res->sha256;
    int err = a->status;
    if (a->unknown)
        /* the lookup's message names only the URL; say which LoRA of which style it was */
        mood_error_set(MOOD_ENOTFOUND,
                       "Civitai does not know the file %s of style '%s' (looked up by SHA-256 at "
                       "%s)",
                       file, res->name, mood_civitai_base(run->c));
    else if (err)
        mood_error_set(err, "%s", a->error ? a->error : "Civitai lookup failed");
    else if ((err = clone_version(&v, a->v, a->m)) == 0 &&
             (err = mood__civitai_version_page(&location, run->c, v)) == 0)
        err = mood__civitai_store(run->r, res->name, res->sha256, v, "civitai", location, NULL,
                                  run->o);
    res->status = err;
    if (err) {
        res->error = mood_strdup(mood_error_last());
        mood_civitai_version_free(v);
    } else {
        res->version = v;
    }
    mood_error_clear();
    mood_free(location);
}

typedef struct keyed {
    const char *sha256;
    size_t i;
} keyed;

static int cmp_keyed(const void *x, const void *y)
{
    const keyed *a = x, *b = y;
    int c = strcmp(a->sha256, b->sha256);
    return c ? c : a->i < b->i ? -1 : a->i > b->i;
}

/* The index of each result's distinct hash (0, 1, ... in hash order) into d[], their number into
 * *n_distinct. */
static int distinct_hashes(size_t *d, size_t *n_distinct, const mood_civitai_link_result *res,
                           size_t n)
{
    keyed *k = mood_calloc(n ? n : 1, sizeof *k);
    size_t m = 0;
    if (!k)
        return mood_error_nomem();
    for (size_t i = 0; i < n; i++) {
        k[i].sha256 = res[i].sha256;
        k[i].i = i;
    }
    qsort(k, n, sizeof *k, cmp_keyed);
    for (size_t i = 0; i < n; i++) {
        if (i && strcmp(k[i].sha256, k[i - 1].sha256) != 0)
            m++;
        d[k[i].i] = m;
    }
    *n_distinct = n ? m + 1 : 0;
    mood_free(k);
    return 0;
}

/* Links res[0..n) (name, sha256, file_name set): the distinct hashes a batch at a time, each
 * batch looked up, its models fetched, then its results stored, in res's order. */
static int link_results(link_run *run, mood_civitai_link_result *res, size_t n)
{
    hash_answer a[MOOD_CIVITAI_BATCH_MAX];
    size_t *d = mood_calloc(n ? n : 1, sizeof *d), n_distinct = 0, done = 0;
    int err = d ? distinct_hashes(d, &n_distinct, res, n) : mood_error_nomem();
    mood_progress start = {"civitai", 0, n};
    if (!err && n && run->progress && run->progress(&start, run->o->payload)) /* the bar, at once */
        err = mood_error_set(MOOD_ECANCELLED, "linking to Civitai cancelled");
    for (size_t base = 0; !err && base < n_distinct; base += MOOD_CIVITAI_BATCH_MAX) {
        size_t m =
            n_distinct - base < MOOD_CIVITAI_BATCH_MAX ? n_distinct - base : MOOD_CIVITAI_BATCH_MAX;
        memset(a, 0, sizeof a);
        for (size_t i = 0; i < n; i++)
            if (d[i] >= base && d[i] < base + m)
                a[d[i] - base].sha256 = res[i].sha256;
        err = lookup(run, a, m);
        for (size_t i = 0; !err && i < n; i++) {
            mood_progress p = {"civitai", done + 1, n};
            if (d[i] < base || d[i] >= base + m)
                continue;
            if ((err = answer_model(run, &a[d[i] - base])) != 0)
                break;
            link_result(run, &res[i], &a[d[i] - base]);
            done++;
            if (run->progress && run->progress(&p, run->o->payload))
                err = mood_error_set(MOOD_ECANCELLED, "linking to Civitai cancelled");
        }
        for (size_t i = 0; i < m; i++) {
            mood_civitai_version_free(a[i].v);
            mood_free(a[i].error);
        }
    }
    mood_free(d);
    return err;
}

static void link_run_init(link_run *run, mood_registry *r, mood_civitai *c,
                          const mood_civitai_import_options *o)
{
    memset(run, 0, sizeof *run);
    run->r = r;
    run->c = c;
    run->o = o;
    run->models.slim = 1;
}

static void link_run_dispose(link_run *run)
{
    cache_dispose(&run->models);
    mood_free(run->stop_error);
}

/* A result for LoRA sha256 of style `name` (not yet looked up). */
static int result_init(mood_civitai_link_result *res, mood_registry *r, const char *name,
                       const char *sha256, const char *file_name)
{
    if (!(res->name = mood_strdup(name)) || !(res->sha256 = mood_strdup(sha256)))
        return mood_error_nomem();
    res->file_name = file_name ? mood_strdup(file_name) : adapter_file_name(r, sha256);
    return 0;
}

int mood_civitai_link_each(mood_civitai_link_result **out, size_t *n_out, mood_registry *r,
                           mood_civitai *c, const char *name,
                           const mood_civitai_import_options *o_in)
{
    mood_civitai_import_options o;
    mood_style_lora *loras = NULL;
    mood_civitai_link_result *res = NULL;
    link_run run;
    size_t n = 0, k = 0;
    int err;
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(n_out);
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(c);
    MOOD_ARG_NONNULL(name);
    *out = NULL;
    *n_out = 0;
    if (o_in)
        o = *o_in;
    else
        mood_civitai_import_options_init(&o);
    link_run_init(&run, r, c, &o);
    if ((err = mood_registry_style_loras(&loras, &n, r, name)) != 0)
        goto done;
    if (n && !(res = mood_calloc(n, sizeof *res))) {
        err = mood_error_nomem();
        goto done;
    }
    for (size_t i = 0; !err && i < n; i++) {
        size_t j = 0;
        /* a style may list one LoRA twice (at two weights): it is linked once */
        while (j < k && strcmp(res[j].sha256, loras[i].sha256) != 0)
            j++;
        if (j == k)
            err = result_init(&res[k++], r, name, loras[i].sha256, NULL);
    }
    if (!err)
        err = link_results(&run, res, k);
done:
    if (err) {
        mood_civitai_link_results_free(res, k);
    } else {
        *out = res;
        *n_out = k;
    }
    link_run_dispose(&run);
    mood_registry_free_string((char *)loras);
    return err;
}

/* The (style, LoRA) pairs to link: each LoRA without a Civitai record (all of them when
 * refresh), once per style, styles by name, LoRAs in each style's order. */
static int unlinked(mood_civitai_link_result **out, size_t *n_out, mood_registry *r, int refresh)
{
    sqlite3_stmt *st = NULL;
    mood_civitai_link_result *res = NULL;
    size_t n = 0, cap = 0;
    int err, rc;
    if ((err = mood__reg_prepare(r, &st,
                                 "SELECT s.name, sa.adapter_sha256, a.file_name FROM styles s"
                                 " JOIN style_adapters sa ON sa.style_id = s.id"
                                 " JOIN adapters a ON a.sha256 = sa.adapter_sha256"
                                 " WHERE ?1 OR NOT EXISTS (SELECT 1 FROM sources so"
                                 " WHERE so.adapter_sha256 = sa.adapter_sha256"
                                 " AND (so.kind = 'civitai' OR so.civitai_version_id IS NOT NULL))"
                                 " GROUP BY s.id, sa.adapter_sha256"
                                 " ORDER BY s.name COLLATE NOCASE, s.id, MIN(sa.position)")) != 0)
        return err;
    sqlite3_bind_int(st, 1, refresh != 0);
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t c2 = cap ? 2 * cap : 64;
            mood_civitai_link_result *a = mood_realloc(res, c2 * sizeof *a);
            if (!a) {
                err = mood_error_nomem();
                break;
            }
            memset(a + cap, 0, (c2 - cap) * sizeof *a);
            res = a;
            cap = c2;
        }
        err = result_init(&res[n++], r, (const char *)sqlite3_column_text(st, 0),
                          (const char *)sqlite3_column_text(st, 1),
                          (const char *)sqlite3_column_text(st, 2));
    }
    if (!err && rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, "reading the styles to link");
    sqlite3_finalize(st);
    if (err) {
        mood_civitai_link_results_free(res, n);
        return err;
    }
    *out = res;
    *n_out = n;
    return 0;
}

int mood_civitai_link_all(mood_civitai_link_result **out, size_t *n_out, mood_registry *r,
                          mood_civitai *c, int refresh, const mood_civitai_import_options *o_in)
{
    mood_civitai_import_options o;
    mood_civitai_link_result *res = NULL;
    link_run run;
    size_t n = 0;
    int err;
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(n_out);
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(c);
    *out = NULL;
    *n_out = 0;
    if (o_in)
        o = *o_in;
    else
        mood_civitai_import_options_init(&o);
    link_run_init(&run, r, c, &o);
    run.progress = o.progress;
    if ((err = unlinked(&res, &n, r, refresh)) == 0 && (err = link_results(&run, res, n)) != 0)
        mood_civitai_link_results_free(res, n);
    if (!err) {
        *out = res;
        *n_out = n;
    }
    link_run_dispose(&run);
    return err;
}

void mood_civitai_link_results_free(mood_civitai_link_result *res, size_t n)
{
    for (size_t i = 0; res && i < n; i++) {
        mood_free(res[i].name);
        mood_free(res[i].sha256);
        mood_free(res[i].file_name);
        mood_free(res[i].error);
        mood_civitai_version_free(res[i].version);
    }
    mood_free(res);
}

int mood_civitai_link(mood_civitai_version **version_out, mood_registry *r, mood_civitai *c,
                      const char *name, const mood_civitai_import_options *o)
{
    mood_civitai_link_result *res = NULL;
    size_t n = 0, linked, failed;
    int err;
    if (version_out)
        *version_out = NULL;
    if ((err = mood_civitai_link_each(&res, &n, r, c, name, o)) != 0)
        return err;
    for (linked = 0; linked < n && res[linked].status; linked++) {
    }
    for (failed = 0; failed < n && res[failed].status == MOOD_ENOTFOUND; failed++) {
    }
    if (linked < n) {
        if (version_out) {
            *version_out = res[linked].version;
            res[linked].version = NULL;
        }
    } else if (failed < n) {
        err = mood_error_set(res[failed].status, "%s",
                             res[failed].error ? res[failed].error : "Civitai lookup failed");
    } else {
        err = mood_error_set(MOOD_ENOTFOUND,
                             "Civitai does not know the file%s of style '%s' (looked up by "
                             "SHA-256 at %s)",
                             n == 1 ? "" : "s", name, mood_civitai_base(c));
    }
    mood_civitai_link_results_free(res, n);
    return err;
}

/* ----- update check ----------------------------------------------------------------------------
 */

/* The newest version of m for the family of `base` (any family when base is unknown), when it is
 * newer than version `vid` (listed before it, or vid no longer listed). */
static const mood_civitai_version *newer_version(const mood_civitai_model *m, long long vid,
                                                 const char *base)
{
    const char *fam = mood_civitai_family(base);
    for (size_t i = 0; i < m->n_versions; i++) {
        const mood_civitai_version *x = &m->versions[i];
        if (x->id == vid)
            return NULL;
        if (strcmp(fam, "unknown") == 0 || strcmp(mood_civitai_family(x->base_model), fam) == 0)
            return x;
    }
    return NULL;
}

/* The style and the LoRA a row of the update check is about: name, sha256, file. */
static void add_lora(cJSON *o, sqlite3_stmt *st)
{
    cJSON_AddStringToObject(o, "name", (const char *)sqlite3_column_text(st, 0));
    cJSON_AddStringToObject(o, "sha256", (const char *)sqlite3_column_text(st, 5));
    if (sqlite3_column_text(st, 6))
        cJSON_AddStringToObject(o, "file", (const char *)sqlite3_column_text(st, 6));
}

static void add_update(cJSON *arr, const mood_civitai *c, sqlite3_stmt *st,
                       const mood_civitai_model *m, const mood_civitai_version *x)
{
    cJSON *o = cJSON_CreateObject();
    char url[512];
    snprintf(url, sizeof url, "%s/models/%lld?modelVersionId=%lld", mood_civitai_base(c), m->id,
             x->id);
    add_lora(o, st);
    cJSON_AddNumberToObject(o, "model_id", (double)m->id);
    if (m->name)
        cJSON_AddStringToObject(o, "model_name", m->name);
    cJSON_AddNumberToObject(o, "version_id", (double)sqlite3_column_int64(st, 2));
    if (sqlite3_column_text(st, 3))
        cJSON_AddStringToObject(o, "version_name", (const char *)sqlite3_column_text(st, 3));
    cJSON_AddNumberToObject(o, "latest_version_id", (double)x->id);
    if (x->name)
        cJSON_AddStringToObject(o, "latest_version_name", x->name);
    if (x->base_model)
        cJSON_AddStringToObject(o, "latest_base_model", x->base_model);
    if (x->published_at)
        cJSON_AddStringToObject(o, "latest_published_at", x->published_at);
    cJSON_AddStringToObject(o, "url", url);
    cJSON_AddItemToArray(arr, o);
}

/* Counts the style that a run of rows was about, once however many LoRAs it has: checked when
 * every one of its Civitai models could be fetched. */
typedef struct style_tally {
    long long id; /* the style of the rows seen last; 0 before the first */
    int failed;   /* a model of that style could not be fetched */
    int styles, checked;
} style_tally;

static void tally_row(style_tally *t, long long style_id, int failed)
{
    if (style_id != t->id) {
        t->id = style_id;
        t->failed = 0;
        t->styles++;
        t->checked++;
    }
    if (failed && !t->failed) {
        t->failed = 1;
        t->checked--;
    }
}

int mood_civitai_update_check(char **out, mood_registry *r, mood_civitai *c)
{
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(c);
    cJSON *root = cJSON_CreateObject(), *updates, *errors;
    model_cache k;
    style_tally t;
    sqlite3_stmt *st = NULL;
    int err, rc;
    *out = NULL;
    memset(&k, 0, sizeof k);
    memset(&t, 0, sizeof t);
    updates = cJSON_AddArrayToObject(root, "updates");
    errors = cJSON_AddArrayToObject(root, "errors");
    /* one row per (style, LoRA) with the newest Civitai source of that LoRA; a LoRA a style
     * lists twice is one row. Rows of a style are consecutive (names are unique regardless of
     * case), which is what style_tally relies on. */
    if ((err = mood__reg_prepare(
             r, &st,
             "SELECT s.name, src.civitai_model_id, src.civitai_version_id, src.version_name,"
             " src.base_model, sa.adapter_sha256, a.file_name, s.id FROM styles s"
             " JOIN style_adapters sa ON sa.style_id = s.id"
             " JOIN adapters a ON a.sha256 = sa.adapter_sha256"
             " JOIN sources src ON src.adapter_sha256 = sa.adapter_sha256"
             " WHERE src.civitai_model_id IS NOT NULL AND src.civitai_version_id IS NOT NULL"
             " AND src.id = (SELECT MAX(id) FROM sources WHERE adapter_sha256 = sa.adapter_sha256"
             " AND civitai_version_id IS NOT NULL)"
             " GROUP BY s.id, sa.adapter_sha256"
             " ORDER BY s.name COLLATE NOCASE, s.id, MIN(sa.position)")) != 0)
        goto done;
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const cached_model *e;
        const mood_civitai_model *m;
        const mood_civitai_version *x;
        const char *why;
        long long mid = sqlite3_column_int64(st, 1);
        if ((err = cache_get(&e, &k, c, mid)) != 0)
            break;
        m = e->model;
        why = e->error;
        tally_row(&t, sqlite3_column_int64(st, 7), !m);
        if (!m) {
            cJSON *o = cJSON_CreateObject();
            add_lora(o, st);
            cJSON_AddNumberToObject(o, "model_id", (double)mid);
            cJSON_AddStringToObject(o, "error", why ? why : "lookup failed");
            cJSON_AddItemToArray(errors, o);
        } else if ((x = newer_version(m, sqlite3_column_int64(st, 2),
                                      (const char *)sqlite3_column_text(st, 4))) != NULL) {
            add_update(updates, c, st, m, x);
        }
    }
    if (!err && rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, "reading the Civitai sources");
    cJSON_AddNumberToObject(root, "n_styles", t.styles);
    cJSON_AddNumberToObject(root, "checked", t.checked);
    cJSON_AddNumberToObject(root, "not_checked", t.styles - t.checked);
    if (!err) {
        char *text = cJSON_PrintUnformatted(root);
        *out = text ? mood_strdup(text) : NULL;
        cJSON_free(text);
        if (!*out)
            err = mood_error_nomem();
    }
done:
    sqlite3_finalize(st);
    cache_dispose(&k);
    cJSON_Delete(root);
    return err;
}
