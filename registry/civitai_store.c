/*
 * civitai_store.c: the registry side of the Civitai client: imports from URLs and Civitai
 * references, linking styles (one, or all those without Civitai data) to their Civitai records by
 * SHA-256, and the update check (contracts in include/mood/civitai.h). Uses the schema and blob
 * store of registry.c / blob.c unchanged.
 *
 * A link looks its LoRAs up in batches (up to 100 distinct hashes a request, one GET per hash for
 * a single LoRA or a server without the batch endpoint), fetches each Civitai model once for the
 * whole run, and stores each (style, LoRA) with store(), as an import does.
 *
 * What is stored for an adapter Civitai knows: one `sources` row of kind 'civitai' (or 'url' for
 * a plain URL import) with the model and version ids, names, base model, AIR, licence summary,
 * NSFW flags, the permissions as JSON and the raw version record; the style gets the trained
 * words and the model's description (as text) when it has none, the model's tags, and previews
 * whose nsfwLevel passes the filter. All rows of one store are committed in one transaction,
 * after the preview blobs are in place (as an import does); the token is never stored. A record
 * whose base model is not the file's family is stored all the same, with a warning.
 */
#include <errno.h>
#include <limits.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/args.h"
#include "registry/civitai_impl.h"
#include "registry/http.h"
#include "registry/registry_impl.h"

#define DESCRIPTION_MAX   4000
#define PREVIEW_MAX_BYTES ((size_t)32 << 20)
#define DEFAULT_PREVIEWS  4

void mood_civitai_import_options_init(mood_civitai_import_options *o)
{
    memset(o, 0, sizeof *o);
    o->nsfw_max = 1;
    o->max_previews = DEFAULT_PREVIEWS;
}

/* ----- previews ------------------------------------------------------------------------------- */

typedef struct preview {
    mood__blob_tx tx;
    const char *media_type;
    const char *origin; /* borrowed from the version record */
    int nsfw_level;
} preview;

static const char *media_type_of(const unsigned char *d, size_t n)
{
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "image/png";
    if (n >= 3 && memcmp(d, "\xff\xd8\xff", 3) == 0)
        return "image/jpeg";
    if (n >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0)
        return "image/webp";
    if (n >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0))
        return "image/gif";
    return NULL;
}

/* Downloads the previews that pass the filter into blobs (the caller holds the shared lock).
 * A preview that cannot be fetched is logged and skipped: it never fails the import. */
static int fetch_previews(preview **out, int *n_out, mood_registry *r,
                          const mood_civitai_version *v, const mood_civitai_import_options *o)
{
    preview *pv;
    int n = 0, err = 0;
    *out = NULL;
    *n_out = 0;
    if (!v->n_images || o->max_previews <= 0 || o->nsfw_max <= 0)
        return 0;
    if (!(pv = mood_calloc(v->n_images, sizeof *pv)))
        return mood_error_nomem();
    for (size_t i = 0; i < v->n_images && n < o->max_previews && !err; i++) {
        const mood_civitai_image *im = &v->images[i];
        mood__http_options ho;
        mood_buf body;
        const char *type;
        if (!im->url || (im->type && strcmp(im->type, "image") != 0) || im->nsfw_level <= 0 ||
            im->nsfw_level > o->nsfw_max)
            continue;
        memset(&ho, 0, sizeof ho);
        ho.retries = 1;
        ho.max_body = PREVIEW_MAX_BYTES;
        mood_buf_init(&body);
        if (mood__http_get(&body, NULL, im->url, &ho) != 0) {
            mood_log(MOOD_LOG_WARN, "preview skipped: %s", mood_error_last());
            mood_error_clear();
        } else if (!(type = media_type_of((const unsigned char *)body.data, body.len))) {
            mood_log(MOOD_LOG_WARN, "preview skipped: %s: not a PNG, JPEG, WebP or GIF image",
                     im->url);
        } else if ((err = mood__blob_put_mem(&pv[n].tx, r, body.data, body.len)) == 0) {
            pv[n].media_type = type;
            pv[n].origin = im->url;
            pv[n].nsfw_level = im->nsfw_level;
            n++;
        }
        mood_buf_dispose(&body);
    }
    *out = pv;
    *n_out = n;
    return err;
}

static void previews_end(preview *pv, int n, mood_registry *r, int failed)
{
    for (int i = 0; i < n; i++) {
        if (failed)
            mood__blob_tx_abort(&pv[i].tx, r);
        else
            mood__blob_tx_end(&pv[i].tx);
    }
    mood_free(pv);
}

/* ----- text ------------------------------------------------------------------------------------
 */

/* The model description (HTML) as plain text: tags dropped, the common entities decoded,
 * whitespace collapsed, at most DESCRIPTION_MAX bytes (cut at a character boundary). */
char *mood__reg_html_text(const char *html)
{
    static const char *const ent[][2] = {{"&amp;", "&"},   {"&lt;", "<"},  {"&gt;", ">"},
                                         {"&quot;", "\""}, {"&#39;", "'"}, {"&nbsp;", " "}};
    mood_buf b;
    int space = 0;
    mood_buf_init(&b);
    for (const char *p = html; p && *p && b.len < DESCRIPTION_MAX;) {
        const char *rep = NULL;
        size_t skip = 1;
        if (*p == '<') {
            const char *end = strchr(p, '>');
            space = 1;
            p = end ? end + 1 : p + strlen(p);
            continue;
        }
        for (size_t i = 0; *p == '&' && i < sizeof ent / sizeof ent[0]; i++)
            if (strncmp(p, ent[i][0], strlen(ent[i][0])) == 0) {
                rep = ent[i][1];
                skip = strlen(ent[i][0]);
            }
        if (!rep && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
            rep = " ";
        if (rep && *rep == ' ') {
            space = 1;
        } else {
            if (space && b.len && mood_buf_puts(&b, " "))
                break;
            space = 0;
            if (mood_buf_append(&b, rep ? rep : p, rep ? strlen(rep) : 1))
                break;
        }
        p += skip;
    }
    while (b.len > DESCRIPTION_MAX || (b.len && ((unsigned char)b.data[b.len] & 0xc0) == 0x80))
        b.data[--b.len] = '\0';
    return b.len ? mood_buf_detach(&b) : (mood_buf_dispose(&b), NULL);
}

static char *joined_words(const mood_civitai_version *v)
{
    mood_buf b;
    mood_buf_init(&b);
    for (size_t i = 0; i < v->n_trained_words; i++) {
        if (!v->trained_words[i][0])
            continue;
        if (mood_buf_printf(&b, "%s%s", b.len ? ", " : "", v->trained_words[i])) {
            mood_buf_dispose(&b);
            return NULL;
        }
    }
    return b.len ? mood_buf_detach(&b) : (mood_buf_dispose(&b), NULL);
}

static char *permissions_json(const mood_civitai_version *v)
{
    cJSON *o = cJSON_CreateObject();
    const mood_civitai_permissions *p = &v->permissions;
    char *s = NULL;
    if (!o)
        return NULL;
    if (p->allow_no_credit >= 0)
        cJSON_AddBoolToObject(o, "allowNoCredit", p->allow_no_credit);
    if (p->allow_commercial_use)
        cJSON_AddStringToObject(o, "allowCommercialUse", p->allow_commercial_use);
    if (p->allow_derivatives >= 0)
        cJSON_AddBoolToObject(o, "allowDerivatives", p->allow_derivatives);
    if (p->allow_different_license >= 0)
        cJSON_AddBoolToObject(o, "allowDifferentLicense", p->allow_different_license);
    cJSON_AddBoolToObject(o, "earlyAccess", v->early_access);
    if (v->early_access_deadline)
        cJSON_AddStringToObject(o, "earlyAccessDeadline", v->early_access_deadline);
    s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ----- rows ------------------------------------------------------------------------------------
 */

/* One statement with up to three text parameters (NULL binds NULL). */
static int exec3(mood_registry *r, const char *sql, const char *a, const char *b, const char *c,
                 const char *what)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, sql);
    if (err)
        return err;
    mood__reg_bind_text(st, 1, a);
    mood__reg_bind_text(st, 2, b);
    mood__reg_bind_text(st, 3, c);
    return mood__reg_step_done(r, st, what);
}

typedef struct store_job {
    long long style_id;
    const char *sha256;
    const mood_civitai_version *v; /* NULL: only the source row */
    const char *kind;              /* "civitai" or "url" */
    const char *location;
    const char *download_path; /* the file row the import wrote for the download, or NULL */
    preview *pv;
    int n_pv;
} store_job;

static int insert_source(mood_registry *r, const store_job *j)
{
    const mood_civitai_version *v = j->v;
    char *license = NULL, *perms = NULL;
    sqlite3_stmt *st = NULL;
    int err;
    if (v && ((err = mood_civitai_license(&license, &v->permissions)) != 0))
        return err;
    if (v && !(perms = permissions_json(v))) {
        mood_civitai_free_string(license);
        return mood_error_nomem();
    }
    err = mood__reg_prepare(
        r, &st,
        "INSERT INTO sources(adapter_sha256, kind, location, civitai_info_json, civitai_model_id,"
        " civitai_version_id, model_name, version_name, base_model, air, license, nsfw,"
        " nsfw_level, permissions_json, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
        " ?10, ?11, ?12, ?13, ?14, strftime('%Y-%m-%dT%H:%M:%SZ','now'))");
    if (!err) {
        mood__reg_bind_text(st, 1, j->sha256);
        mood__reg_bind_text(st, 2, j->kind);
        mood__reg_bind_text(st, 3, j->location);
        if (v) {
            mood__reg_bind_text(st, 4, v->json);
            if (v->model_id)
                sqlite3_bind_int64(st, 5, v->model_id);
            sqlite3_bind_int64(st, 6, v->id);
            mood__reg_bind_text(st, 7, v->model_name);
            mood__reg_bind_text(st, 8, v->name);
            mood__reg_bind_text(st, 9, v->base_model);
            mood__reg_bind_text(st, 10, v->air);
            mood__reg_bind_text(st, 11, license);
            if (v->model_nsfw >= 0)
                sqlite3_bind_int(st, 12, v->model_nsfw);
            sqlite3_bind_int(st, 13, v->nsfw_level);
            mood__reg_bind_text(st, 14, perms);
        }
        err = mood__reg_step_done(r, st, "storing the Civitai record");
    }
    mood_civitai_free_string(license);
    cJSON_free(perms);
    return err;
}

/* Trained words, description, family and tags, where the style has none yet. */
static int fill_style(mood_registry *r, const store_job *j)
{
    char id[32], *words = joined_words(j->v), *text = mood__reg_html_text(j->v->model_description);
    const char *fam = mood_civitai_family(j->v->base_model);
    int err = 0;
    snprintf(id, sizeof id, "%lld", j->style_id);
    if (words)
        err = exec3(r,
                    "UPDATE styles SET trigger_words = ?2, updated_at ="
                    " strftime('%Y-%m-%dT%H:%M:%SZ','now') WHERE id = CAST(?1 AS INTEGER)"
                    " AND (trigger_words IS NULL OR trigger_words = '')",
                    id, words, NULL, "storing trigger words");
    if (!err && text)
        err = exec3(r,
                    "UPDATE styles SET description = ?2, updated_at ="
                    " strftime('%Y-%m-%dT%H:%M:%SZ','now') WHERE id = CAST(?1 AS INTEGER)"
                    " AND (description IS NULL OR description = '')",
                    id, text, NULL, "storing the description");
    if (!err && strcmp(fam, "unknown") != 0)
        err = exec3(r,
                    "UPDATE adapters SET family = ?2, family_source = 'civitai'"
                    " WHERE sha256 = ?1 AND family = 'unknown'",
                    j->sha256, fam, NULL, "storing the base family");
    for (size_t i = 0; !err && i < j->v->n_tags; i++) {
        const char *t = j->v->tags[i];
        if (!mood__reg_tag_usable(t))
            continue;
        err = exec3(r, MOOD__REG_ADD_TAG_SQL, id, t, NULL, "storing tags");
    }
    mood_free(words);
    mood_free(text);
    return err;
}

static int insert_previews(mood_registry *r, const store_job *j)
{
    int err = 0;
    for (int i = 0; !err && i < j->n_pv; i++) {
        sqlite3_stmt *st = NULL;
        if ((err = mood__reg_prepare(
                 r, &st,
                 "INSERT INTO previews(style_id, blob_sha256, media_type, origin, nsfw_level,"
                 " position) SELECT ?1, ?2, ?3, ?4, ?5, (SELECT COALESCE(MAX(position) + 1, 0)"
                 " FROM previews WHERE style_id = ?1) WHERE NOT EXISTS (SELECT 1 FROM previews"
                 " WHERE style_id = ?1 AND blob_sha256 = ?2)")) != 0)
            break;
        sqlite3_bind_int64(st, 1, j->style_id);
        mood__reg_bind_text(st, 2, j->pv[i].tx.sha256);
        mood__reg_bind_text(st, 3, j->pv[i].media_type);
        mood__reg_bind_text(st, 4, j->pv[i].origin);
        sqlite3_bind_int(st, 5, j->pv[i].nsfw_level);
        if ((err = mood__reg_step_done(r, st, "storing a preview")) == 0)
            err = mood__blob_journal_delete(r, &j->pv[i].tx);
    }
    return err;
}

static int store_rows(mood_registry *r, const store_job *j)
{
    int err;
    if ((err = mood__reg_begin(r)) != 0)
        return err;
    if (j->download_path &&
        (err = exec3(r,
                     "DELETE FROM sources WHERE adapter_sha256 = ?1 AND kind = 'file'"
                     " AND location = ?2",
                     j->sha256, j->download_path, NULL, "replacing the source")) != 0)
        goto done;
    if ((err = exec3(r,
                     "DELETE FROM sources WHERE adapter_sha256 = ?1 AND kind = ?2"
                     " AND (kind = 'civitai' OR location = ?3)",
                     j->sha256, j->kind, j->location, "replacing the source")) != 0 ||
        (err = insert_source(r, j)) != 0 || (j->v && (err = fill_style(r, j)) != 0) ||
        (err = insert_previews(r, j)) != 0)
        goto done;
    err = mood__reg_commit(r);
done:
    if (err)
        mood__reg_rollback(r);
    return err;
}

/* Warns when v's base model is not the family of the stored file (civitai_ref.c). A failure to
 * read the row only loses the warning. */
static void warn_family(mood_registry *r, const char *sha256, const mood_civitai_version *v)
{
    sqlite3_stmt *st = NULL;
    if (!v->base_model || mood__reg_prepare(r, &st,
                                            "SELECT file_name, family, family_source FROM adapters"
                                            " WHERE sha256 = ?1") != 0) {
        mood_error_clear();
        return;
    }
    mood__reg_bind_text(st, 1, sha256);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *file = (const char *)sqlite3_column_text(st, 0);
        mood__civitai_check_family(file ? file : sha256, v->base_model,
                                   (const char *)sqlite3_column_text(st, 1),
                                   (const char *)sqlite3_column_text(st, 2));
    }
    sqlite3_finalize(st);
}

/* Stores v (may be NULL) for the adapter sha256 of style `name`, with previews. */
static int store(mood_registry *r, const char *name, const char *sha256,
                 const mood_civitai_version *v, const char *kind, const char *location,
                 const char *download_path, const mood_civitai_import_options *o)
{
    store_job j;
    int err, locked = 0;
    memset(&j, 0, sizeof j);
    j.sha256 = sha256;
    j.v = v;
    j.kind = kind;
    j.location = location;
    j.download_path = download_path;
    if ((err = mood__reg_style_id(r, &j.style_id, name)) != 0 ||
        (err = mood__reg_lock_shared(r)) != 0)
        return err;
    locked = 1;
    if (v && (err = fetch_previews(&j.pv, &j.n_pv, r, v, o)) != 0)
        goto done;
    if ((err = store_rows(r, &j)) == 0 && v)
        warn_family(r, sha256, v);
done:
    previews_end(j.pv, j.n_pv, r, err != 0);
    if (locked)
        mood__reg_unlock_shared(r);
    return err;
}

/* ----- import ----------------------------------------------------------------------------------
 */

static int downloads_dir(char **out, mood_registry *r)
{
    mood_buf b;
    mood_buf_init(&b);
    if (mood_buf_printf(&b, "%s/downloads", mood_registry_home(r))) {
        mood_buf_dispose(&b);
        return mood_error_nomem();
    }
    if (mkdir(b.data, 0755) != 0 && errno != EEXIST) {
        int err =
            mood_error_set(MOOD_EIO, "%s: cannot create the folder: %s", b.data, strerror(errno));
        mood_buf_dispose(&b);
        return err;
    }
    *out = mood_buf_detach(&b);
    return 0;
}

/* The version record for a ref, with its model's fields. */
static int version_page(char **out, const mood_civitai *c, const mood_civitai_version *v)
{
    mood_buf b;
    mood_buf_init(&b);
    if (mood_buf_printf(&b, "%s/models/%lld?modelVersionId=%lld", mood_civitai_base(c), v->model_id,
                        v->id)) {
        mood_buf_dispose(&b);
        return mood_error_nomem();
    }
    *out = mood_buf_detach(&b);
    return 0;
}

/* A URL import: the record of the downloaded file by its hash, if Civitai has one. Failures
 * other than "not found" are logged: the file is imported anyway. */
static void lookup_by_hash(mood_civitai_version **v, mood_civitai *c, const char *sha256)
{
    mood_civitai_model *m = NULL;
    int err = mood_civitai_version_by_hash(v, c, sha256);
    if (err == 0 && (*v)->model_id && mood_civitai_model_get(&m, c, (*v)->model_id) == 0)
        err = mood_civitai_version_add_model(*v, m);
    if (err && err != MOOD_ENOTFOUND)
        mood_log(MOOD_LOG_WARN, "Civitai lookup skipped: %s", mood_error_last());
    mood_civitai_model_free(m);
    mood_error_clear();
}

int mood_civitai_import(mood_registry *r, mood_import_result *out,
                        mood_civitai_version **version_out, mood_civitai *c, const char *what,
                        const mood_civitai_import_options *o_in)
{
    mood_civitai_import_options o;
    mood_civitai_version *v = NULL;
    mood_civitai_ref ref;
    char *dir = NULL, *path = NULL, *real = NULL, *location = NULL;
    const char *kind = "civitai";
    int err;
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    if (version_out)
        *version_out = NULL;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(c);
    MOOD_ARG_NONNULL(what);
    if (o_in)
        o = *o_in;
    else
        mood_civitai_import_options_init(&o);
    if ((err = downloads_dir(&dir, r)) != 0)
        goto done;
    if (mood_civitai_is_ref(what)) {
        if ((err = mood_civitai_parse_ref(&ref, what)) != 0 ||
            (err = mood_civitai_resolve(&v, c, &ref)) != 0 ||
            (err = mood_civitai_download(&path, c, v, dir, o.progress, o.payload)) != 0 ||
            (err = version_page(&location, c, v)) != 0)
            goto done;
    } else if (strncmp(what, "http://", 7) == 0 || strncmp(what, "https://", 8) == 0) {
        kind = "url";
        if ((err = mood_civitai_download_url(&path, c, what, dir, NULL, o.progress, o.payload)) !=
            0)
            goto done;
        if (!(location = mood__http_redact(what))) {
            err = mood_error_nomem();
            goto done;
        }
    } else {
        err =
            mood_error_set(MOOD_EINVAL, "'%s' is not an http(s) URL or a Civitai reference", what);
        goto done;
    }
    real = realpath(path, NULL);
    if ((err = mood_registry_import_file(r, out, path, o.progress, o.payload)) != 0)
        goto done;
    if (!v && !o.offline)
        lookup_by_hash(&v, c, out->sha256);
    if ((err = store(r, out->name, out->sha256, v, kind, location, real, &o)) != 0)
        goto done;
    if (version_out) {
        *version_out = v;
        v = NULL;
    }
done:
    if (path)
        unlink(path);
    free(real); /* from realpath */
    mood_civitai_free_string(path);
    mood_free(location);
    mood_free(dir);
    mood_civitai_version_free(v);
    return err;
}

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
             (err = version_page(&location, run->c, v)) == 0)
        err = store(run->r, res->name, res->sha256, v, "civitai", location, NULL, run->o);
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
