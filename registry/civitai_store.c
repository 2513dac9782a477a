/*
 * civitai_store.c: the registry side of the Civitai client: imports from URLs and Civitai
 * references, and storing a Civitai record for a stored LoRA (mood__civitai_store, which linking
 * and the update check in civitai_link.c use too; contracts in include/mood/civitai.h). Uses the
 * schema and blob store of registry.c / blob.c unchanged.
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

int mood__civitai_store(mood_registry *r, const char *name, const char *sha256,
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

int mood__civitai_version_page(char **out, const mood_civitai *c, const mood_civitai_version *v)
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
            (err = mood__civitai_version_page(&location, c, v)) != 0)
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
    if ((err = mood__civitai_store(r, out->name, out->sha256, v, kind, location, real, &o)) != 0)
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
