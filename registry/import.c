/*
 * import.c: `mood import FILE`: one .safetensors LoRA and its sidecars into the registry, all or
 * nothing (the order of the steps is described in blob.c).
 *
 * What is read: the adapter itself (validated by mood_adapter_open: family, algorithm, rank,
 * alpha, dtype), its __metadata__ (ss_* and modelspec.*, kept as JSON without embedded
 * thumbnails), and the sidecars other LoRA managers write beside it (ecosystem.md §2.1; read by
 * import_sidecars.c):
 *   NAME.json          A1111 user metadata: "activation text", "preferred weight", "notes",
 *                      "description", "negative text";
 *   NAME.civitai.info  Civitai Helper: the model-version JSON (kept raw; trainedWords, model name,
 *                      baseModel, description, ids);
 *   NAME.metadata.json ComfyUI-Lora-Manager: the same version JSON under "civitai", usage_tips (a
 *                      JSON object written as a string) whose strength is the weight, notes, tags;
 *   NAME.cm-info.json  StabilityMatrix: ModelId, VersionId, ModelName, VersionName, BaseModel,
 *                      TrainedWords, Tags, Hashes.SHA256..., read as the version JSON it came from;
 *   NAME.txt           trigger words;
 *   NAME.preview.png, NAME.png (and .jpg/.jpeg/.webp): previews, stored as blobs.
 * A sidecar is read only when it is a regular file really in the LoRA's folder: a link out of it
 * is not followed (a folder from the web could otherwise have /etc/passwd or ~/.ssh stored as a
 * preview, and `mood pack export` ship it). A preview is kept only when its content is a PNG, JPEG
 * or WebP image whose header parses, and its type is what the content says, not the name.
 * Sidecars left out are named in a warning "PATH: sidecar skipped: REASON" (cmd_import.c lists
 * them as skipped).
 * When several are there: trigger words are those of all of them (A1111's activation text first,
 * then the Civitai records' in the order above, NAME.txt, modelspec.trigger_phrase); the weight
 * and notes are A1111's (the user's own edits), else Lora Manager's; the description A1111's,
 * else the stored record's; tags those of .metadata.json and .cm-info.json that are usable as
 * tags as they are. One Civitai record is stored with the file's source (ids, names, base
 * model, AIR, and the sidecar it came from, raw, as civitai_info_json): the first of
 * .civitai.info, .metadata.json, .cm-info.json whose record has a version id, else the first there.
 * A record whose files' SHA-256 are listed and none is the LoRA's describes another file: that
 * sidecar is left out whole (check_record).
 * Trigger words of the new style: the sidecars' and modelspec.trigger_phrase; when there are none,
 * the most frequent ss_tag_frequency tags (those used as often as the top one, at most 3),
 * unless modelspec.trigger_phrase is there and empty: the file's own word that it needs none.
 * Sidecar text that is not UTF-8 (Windows tools write Windows-1252) is read as Windows-1252 and
 * stored as UTF-8, with a warning; the import goes on (utf8.c).
 *
 * The file is in the registry already when a style is that file alone (its adapter, weights 1
 * and 1): nothing changes. When its adapter is stored but no such style is left (it was removed
 * while a composition uses the adapter, or `mood style edit` replaced its LoRA), the style is
 * made again from the file and its sidecars around the stored adapter row and blob, with a
 * warning that says so.
 *
 * A program that made the LoRA (mood train) adds extras (mood_import_extras): its own previews
 * (first), files of other roles (mood board thumbnails, the loss curve) and how it trained the
 * style, stored in the same transaction as the rest (import_extras.c).
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "common/image_decode.h"
#include "mood/civitai.h"
#include "mood/hash.h"
#include "mood/lora.h"
#include "common/args.h"
#include "registry/civitai_impl.h"
#include "registry/registry_impl.h"

#include "registry/import_impl.h"

/* ----- file checks ----------------------------------------------------------------------- */

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

static int check_extension(const char *path)
{
    static const char *const pickles[] = {".ckpt", ".pt", ".pth", ".bin", ".pkl"};
    for (size_t i = 0; i < sizeof pickles / sizeof pickles[0]; i++) {
        if (has_suffix(path, pickles[i]))
            return mood_error_set(MOOD_EUNSUPPORTED,
                                  "%s: pickle files (%s) are not loaded: they can run code when "
                                  "opened; convert it to .safetensors with a tool you trust",
                                  path, pickles[i]);
    }
    if (!has_suffix(path, ".safetensors"))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: not a .safetensors file; mood imports LoRAs in safetensors "
                              "format only",
                              path);
    return 0;
}

/* ----- what the adapter says about itself ---------------------------------------------------- */

void mood__reg_summarize(mood__reg_lora_summary *f, const mood_adapter *a)
{
    size_t algos[MOOD_ALGO_COUNT] = {0}, best = 0;
    memset(f, 0, sizeof *f);
    f->modules = (int)mood_adapter_module_count(a);
    for (size_t i = 0; i < (size_t)f->modules; i++) {
        mood_module_info m;
        mood_adapter_module(a, i, &m);
        algos[m.algo]++;
        if (m.rank > f->rank)
            f->rank = m.rank;
        if (m.has_alpha && !f->has_alpha) {
            f->alpha = m.alpha;
            f->has_alpha = 1;
        }
        if (i == 0)
            snprintf(f->dtype, sizeof f->dtype, "%s", mood_dtype_name(m.dtype));
    }
    for (int i = 0; i < MOOD_ALGO_COUNT; i++) {
        if (algos[i] > algos[best])
            best = (size_t)i;
    }
    snprintf(f->algorithm, sizeof f->algorithm, "%s",
             f->modules ? mood_algo_name((mood_algo)best) : "none");
    snprintf(f->family, sizeof f->family, "%s", mood_family_name(mood_adapter_family(a)));
    snprintf(f->family_source, sizeof f->family_source, "%s", mood_adapter_family_source(a));
}

char *mood__reg_metadata_json(const mood_st_file *st)
{
    cJSON *o = cJSON_CreateObject();
    char *text, *out;
    for (size_t i = 0; o && i < mood_st_meta_count(st); i++) {
        const char *k = mood_st_meta_key(st, i);
        /* embedded images: large and shown nowhere */
        if (strcmp(k, "modelspec.thumbnail") == 0 || strcmp(k, "ssmd_cover_images") == 0)
            continue;
        cJSON_AddStringToObject(o, k, mood_st_meta_value(st, i));
    }
    text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    out = text ? mood_strdup(text) : NULL;
    cJSON_free(text);
    return out;
}

typedef struct tag_count {
    const char *tag;
    double count;
} tag_count;

static int cmp_tag(const void *a, const void *b)
{
    return strcmp(((const tag_count *)a)->tag, ((const tag_count *)b)->tag);
}

static int cmp_count(const void *a, const void *b)
{
    const tag_count *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return strcmp(x->tag, y->tag);
}

/* Top ss_tag_frequency tags ({dir: {tag: count}}, summed over dirs): a JSON array of the top 10
 * for the adapter row, and the fallback trigger words (count equal to the top's, at most 3). */
static int top_tags(adapter_facts *f, const mood_st_file *st)
{
    const char *json = mood_st_meta_get(st, "ss_tag_frequency");
    cJSON *root = json ? cJSON_Parse(json) : NULL, *dir, *tag, *arr = cJSON_CreateArray();
    tag_count *tags = NULL;
    size_t n = 0, m = 0;
    int err = 0;
    char *text;
    cJSON_ArrayForEach(dir, root) n += (size_t)cJSON_GetArraySize(dir);
    if (n && !(tags = mood_calloc(n, sizeof *tags)))
        err = mood_error_nomem();
    cJSON_ArrayForEach(dir, root)
    {
        cJSON_ArrayForEach(tag, dir)
        {
            if (tags && cJSON_IsNumber(tag) && tag->string)
                tags[m++] = (tag_count){tag->string, tag->valuedouble};
        }
    }
    /* one entry per tag, summed over the folders: sorted by name, equal neighbours merged (a
     * file can hold many thousands of tags; comparing each with all was quadratic) */
    if (m)
        qsort(tags, m, sizeof *tags, cmp_tag);
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        if (k && strcmp(tags[k - 1].tag, tags[i].tag) == 0)
            tags[k - 1].count += tags[i].count;
        else
            tags[k++] = tags[i];
    }
    m = k;
    if (m)
        qsort(tags, m, sizeof *tags, cmp_count);
    for (size_t i = 0; !err && i < m && i < 10; i++) {
        cJSON_AddItemToArray(arr, cJSON_CreateString(tags[i].tag));
        if (i < 3 && tags[i].count == tags[0].count)
            err = mood_buf_printf(&f->top_tags, "%s%s", i ? ", " : "", tags[i].tag);
    }
    text = arr ? cJSON_PrintUnformatted(arr) : NULL;
    if (!err && (!text || !(f->file_triggers = mood_strdup(text))))
        err = mood_error_nomem();
    cJSON_free(text);
    cJSON_Delete(arr);
    cJSON_Delete(root);
    mood_free(tags);
    return err;
}

static int read_adapter(import_job *j)
{
    mood_st_file *st = NULL;
    mood_adapter *a = NULL;
    int err;
    if ((err = mood_st_open(&st, j->path)) != 0)
        return err;
    if (mood_file_kind_of(st) == MOOD_KIND_CHECKPOINT) {
        err = mood_error_set(MOOD_EUNSUPPORTED,
                             "%s: this is a checkpoint, not a LoRA; only LoRA-style adapters go "
                             "into the registry",
                             j->path);
        goto done;
    }
    if (mood_st_meta_get(st, "mood.train.version")) { /* mood train's NAME.checkpoint file */
        err = mood_error_set(MOOD_EUNSUPPORTED,
                             "%s: a mood training checkpoint (the state --resume continues), not a "
                             "LoRA; the LoRA is the .safetensors file beside it without "
                             "'.checkpoint'",
                             j->path);
        goto done;
    }
    if ((err = mood_adapter_open(&a, j->path, NULL)) != 0)
        goto done;
    if (mood_adapter_module_count(a) == 0) {
        err = mood_error_set(MOOD_EFORMAT, "%s: no LoRA modules found: not an adapter mood knows",
                             j->path);
        goto done;
    }
    mood__reg_summarize(&j->facts.s, a);
    if (strstr(j->facts.s.family_source, "metadata says")) /* mislabeled: the keys won */
        mood_log(MOOD_LOG_WARN, "%s: registered as %s, from its %s", j->path, j->facts.s.family,
                 j->facts.s.family_source);
    if (!(j->facts.metadata_json = mood__reg_metadata_json(st))) {
        err = mood_error_nomem();
        goto done;
    }
    err = top_tags(&j->facts, st);
done:
    mood_adapter_close(a);
    mood_st_close(st);
    return err;
}

/* ----- previews ---------------------------------------------------------------------------- */

/* The MIME type of a preview by what it holds, not by its name (mood__image_media_type).
 * Anything else: *type NULL and a warning naming the file. */
static int preview_type(const char **type, const mood_map *m, const char *path)
{
    const char *why = "an image larger than 64 MiB";
    *type = NULL;
    if (m->size <= MOOD__REG_MAX_PREVIEW &&
        (*type = mood__image_media_type(m->data, (size_t)m->size, &why)) == NULL &&
        strcmp(why, "outofmem") == 0)
        return mood_error_nomem();
    if (!*type)
        mood_log(MOOD_LOG_WARN, "%s" SKIPPED "%s", path, why);
    return 0;
}

static int add_preview(import_job *j, mood_registry *r, const char *suffix)
{
    mood_buf p;
    mood_map m = {0};
    preview *pv = &j->previews[j->n_previews];
    const char *type = NULL;
    int err = 0, found = 0;
    mood_buf_init(&p);
    if (j->n_previews >= MAX_PREVIEWS || (err = mood_buf_printf(&p, "%s%s", j->stem_path, suffix)))
        goto done;
    if ((err = mood__import_sidecar_map(j, &m, &found, p.data)) != 0 || !found ||
        (err = preview_type(&type, &m, p.data)) != 0 || !type)
        goto done; /* not a usable image: left out, not fatal */
    for (int i = 0; i < j->n_previews; i++) {
        char hex[65];
        mood_sha256_hex(hex, m.data, (size_t)m.size);
        if (strcmp(hex, j->previews[i].tx.sha256) == 0)
            goto done; /* the same picture under two names */
    }
    if ((err = mood__blob_put_mem(&pv->tx, r, m.data, (size_t)m.size)) != 0)
        goto done;
    snprintf(pv->media_type, sizeof pv->media_type, "%s", type);
    pv->origin = mood_buf_detach(&p);
    j->n_previews++;
done:
    mood_unmap(&m);
    mood_buf_dispose(&p);
    return err;
}

/* The names a preview goes by; its type comes from its content (preview_type). */
static int store_previews(import_job *j, mood_registry *r)
{
    static const char *const suffixes[] = {".preview.png", ".png",          ".preview.jpg", ".jpg",
                                           ".jpeg",        ".preview.webp", ".webp"};
    int err = 0;
    for (size_t i = 0; !err && i < sizeof suffixes / sizeof suffixes[0]; i++)
        err = add_preview(j, r, suffixes[i]);
    return err;
}

/* ----- the transaction --------------------------------------------------------------------- */

/* The style that is the file as its import made it: this adapter alone, at weights 1 and 1 (the
 * oldest such style); *found 0 when there is none. A style that uses the adapter with others or
 * at other weights is not it: importing the file again then makes its own style again. */
/* Whether the adapter row exists already (kept by a style that uses it with others, or by none
 * since `mood style edit` replaced it): then the style is made again around that row and blob. */
static int adapter_stored(mood_registry *r, const char *sha256, int *stored)
{
    long long n = 0;
    int err = mood__reg_query_int(r, &n, "SELECT count(*) FROM adapters WHERE sha256 = ?1", sha256);
    *stored = n > 0;
    return err;
}

/* Says that the style is made again though the file was stored, and which styles use it (a
 * note only: a failure to read them does not stop the import). */
static void note_restored(mood_registry *r, const import_job *j)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st,
                                "SELECT group_concat(name, ', ') FROM (SELECT DISTINCT s.name FROM"
                                " styles s JOIN style_adapters sa ON sa.style_id = s.id WHERE"
                                " sa.adapter_sha256 = ?1 AND s.name <> ?2"
                                " ORDER BY s.name COLLATE NOCASE)");
    const char *users;
    if (err) {
        mood_error_clear();
        return;
    }
    mood__reg_bind_text(st, 1, j->h.sha256);
    mood__reg_bind_text(st, 2, j->name);
    if (sqlite3_step(st) == SQLITE_ROW && (users = (const char *)sqlite3_column_text(st, 0)))
        mood_log(MOOD_LOG_WARN,
                 "%s: the LoRA was stored already (used by %s) but no style was this file alone; "
                 "made the style '%s' from it again",
                 j->path, users, j->name);
    else
        mood_log(MOOD_LOG_WARN,
                 "%s: the LoRA was stored already but no style used it; made the style '%s' "
                 "from it again",
                 j->path, j->name);
    sqlite3_finalize(st);
}

/* A source row for this file, unless one from the same place is there already. */
static int source_known(mood_registry *r, const char *sha256, const char *location, int *known)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st,
                                "SELECT count(*) FROM sources WHERE adapter_sha256 = ?1 AND"
                                " kind = 'file' AND location = ?2"),
        rc;
    *known = 0;
    if (err)
        return err;
    mood__reg_bind_text(st, 1, sha256);
    mood__reg_bind_utf8(st, 2, location);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW)
        *known = sqlite3_column_int(st, 0) > 0;
    else
        err = mood__reg_sqlerr(r, rc, "looking up where the file came from");
    sqlite3_finalize(st);
    return err;
}

int mood__reg_insert_adapter(mood_registry *r, const mood__reg_adapter *a, const char *what)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(
        r, &st,
        "INSERT INTO adapters(sha256, autov3, size, family, family_source, algorithm, rank, alpha,"
        " dtype, modules, metadata_json, trigger_words_json, file_name, imported_at) VALUES"
        " (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,"
        " strftime('%Y-%m-%dT%H:%M:%SZ','now'))");
    if (err)
        return err;
    mood__reg_bind_text(st, 1, a->sha256);
    mood__reg_bind_utf8(st, 2, a->autov3);
    sqlite3_bind_int64(st, 3, (long long)a->size);
    mood__reg_bind_utf8(st, 4, a->family);
    mood__reg_bind_utf8(st, 5, a->family_source);
    mood__reg_bind_utf8(st, 6, a->algorithm);
    if (a->has_rank)
        sqlite3_bind_int64(st, 7, a->rank);
    if (a->has_alpha)
        sqlite3_bind_double(st, 8, a->alpha);
    mood__reg_bind_utf8(st, 9, a->dtype);
    if (a->has_modules)
        sqlite3_bind_int64(st, 10, a->modules);
    mood__reg_bind_utf8(st, 11, a->metadata_json);
    mood__reg_bind_utf8(st, 12, a->trigger_words_json);
    mood__reg_bind_utf8(st, 13, a->file_name);
    return mood__reg_step_done(r, st, what);
}

static int insert_adapter(mood_registry *r, const import_job *j)
{
    const adapter_facts *f = &j->facts;
    mood__reg_adapter a = {
        .sha256 = j->h.sha256,
        .autov3 = j->h.is_safetensors ? j->h.autov3 : NULL,
        .family = f->s.family,
        .family_source = f->s.family_source,
        .algorithm = f->s.algorithm,
        .dtype = f->s.dtype,
        .file_name = mood_path_basename(j->path),
        .metadata_json = f->metadata_json,
        .trigger_words_json = f->file_triggers,
        .size = j->h.size,
        .rank = f->s.rank,
        .has_rank = 1,
        .modules = f->s.modules,
        .has_modules = 1,
        .alpha = f->s.alpha,
        .has_alpha = f->s.has_alpha,
    };
    return mood__reg_insert_adapter(r, &a, "storing the adapter");
}

/* The style's weight: A1111's "preferred weight", else Lora Manager's usage_tips strength (a JSON
 * object written as a string; an object is read too); 0 when neither gives one. A1111's 0 means
 * "use the global default"; beyond a style's range (style edit refuses it) no image survives: a
 * typo in another tool's file, left out with a warning. */
static double sidecar_weight(const import_job *j)
{
    static const char *const what[2] = {".json: preferred weight",
                                        ".metadata.json: usage_tips strength"};
    const cJSON *tips = cJSON_GetObjectItemCaseSensitive(j->side.rec[REC_LM].file, "usage_tips");
    cJSON *parsed = cJSON_IsString(tips) ? cJSON_Parse(tips->valuestring) : NULL;
    const cJSON *given[2] = {
        cJSON_GetObjectItemCaseSensitive(j->side.a1111, "preferred weight"),
        cJSON_IsObject(parsed) || cJSON_IsObject(tips)
            ? cJSON_GetObjectItemCaseSensitive(parsed ? parsed : tips, "strength")
            : NULL};
    double w = 0;
    if (cJSON_IsString(tips) && !cJSON_IsObject(parsed))
        mood_log(MOOD_LOG_WARN,
                 "%s.metadata.json: usage_tips is not a JSON object: its strength "
                 "left out",
                 j->stem_path);
    for (int i = 0; i < 2 && w == 0; i++) {
        if (given[i] && !cJSON_IsNumber(given[i]) && !cJSON_IsNull(given[i]))
            mood_log(MOOD_LOG_WARN, "%s%s is not a number: left out", j->stem_path, what[i]);
        if (!cJSON_IsNumber(given[i]))
            continue;
        if (given[i]->valuedouble > 0 && given[i]->valuedouble <= 10)
            w = given[i]->valuedouble;
        else if (given[i]->valuedouble != 0)
            mood_log(MOOD_LOG_WARN, "%s%s %g left out (mood keeps one above 0, up to 10)",
                     j->stem_path, what[i], given[i]->valuedouble);
    }
    cJSON_Delete(parsed);
    return w;
}

/* The tags Lora Manager ("tags") and StabilityMatrix ("Tags") keep, those that are usable as tags
 * as they are (Civitai's "hair style" is not, as a Civitai lookup has it). */
static int insert_tags(mood_registry *r, const import_job *j, long long id)
{
    const cJSON *lists[2] = {cJSON_GetObjectItemCaseSensitive(j->side.rec[REC_LM].file, "tags"),
                             cJSON_GetObjectItemCaseSensitive(j->side.rec[REC_SM].file, "Tags")},
                *t;
    int err = 0;
    for (int i = 0; i < 2 && !err; i++) {
        const cJSON *list = cJSON_IsArray(lists[i]) ? lists[i] : NULL;
        cJSON_ArrayForEach(t, list)
        {
            sqlite3_stmt *st = NULL;
            if (!cJSON_IsString(t) || !mood__reg_tag_usable(t->valuestring))
                continue;
            if ((err = mood__reg_prepare(r, &st, MOOD__REG_ADD_TAG_SQL)) != 0)
                break;
            sqlite3_bind_int64(st, 1, id);
            mood__reg_bind_text(st, 2, t->valuestring);
            if ((err = mood__reg_step_done(r, st, "storing tags")) != 0)
                break;
        }
    }
    return err;
}

static int insert_style(mood_registry *r, const import_job *j, long long *id)
{
    const cJSON *a = j->side.a1111, *c = j->side.record ? j->side.record->version : NULL;
    const char *desc = mood__import_jstr(a, "description"),
               *notes = mood__import_jstr(a, "notes")
                            ? mood__import_jstr(a, "notes")
                            : mood__import_jstr(j->side.rec[REC_LM].file, "notes");
    char *from_html = NULL; /* Civitai's descriptions are HTML ("<p>grainy</p>"): as text */
    double w = sidecar_weight(j);
    sqlite3_stmt *st = NULL;
    int err;
    if (!desc && (mood__import_jstr(c, "description") ||
                  mood__import_jstr(cJSON_GetObjectItemCaseSensitive(c, "model"), "description")))
        desc = from_html = mood__reg_html_text(
            mood__import_jstr(c, "description")
                ? mood__import_jstr(c, "description")
                : mood__import_jstr(cJSON_GetObjectItemCaseSensitive(c, "model"), "description"));
    if ((err =
             mood__reg_prepare(r, &st,
                               "INSERT INTO styles(name, description, notes, trigger_words, "
                               "negative, weight, training_json, created_at, updated_at) VALUES "
                               "(?1, ?2, ?3, ?4, ?5, ?6, ?7, strftime('%Y-%m-%dT%H:%M:%SZ','now'),"
                               " strftime('%Y-%m-%dT%H:%M:%SZ','now'))")) != 0) {
        mood_free(from_html);
        return err;
    }
    mood__reg_bind_text(st, 1, j->name);
    mood__reg_bind_text(st, 2, desc);
    mood__reg_bind_text(st, 3, notes);
    mood__reg_bind_text(st, 4, j->side.triggers.len ? j->side.triggers.data : NULL);
    mood__reg_bind_text(st, 5, mood__import_jstr(a, "negative text"));
    if (w > 0)
        sqlite3_bind_double(st, 6, w);
    mood__reg_bind_utf8(st, 7, j->x ? j->x->training_json : NULL);
    err = mood__reg_step_done(r, st, "creating the style");
    mood_free(from_html);
    if (err)
        return err;
    *id = sqlite3_last_insert_rowid(r->db);
    if ((err = mood__reg_prepare(r, &st,
                                 "INSERT INTO style_adapters(style_id, adapter_sha256, "
                                 "unet_weight, te_weight, position) VALUES (?1, ?2, 1, 1, 0)")))
        return err;
    sqlite3_bind_int64(st, 1, *id);
    mood__reg_bind_text(st, 2, j->h.sha256);
    if ((err = mood__reg_step_done(r, st, "linking the style to its adapter")) != 0)
        return err;
    return insert_tags(r, j, *id);
}

/* The AIR of the sidecars' Civitai record (its "air", or built from its ids as a lookup builds
 * it), or NULL: a style pack names a LoRA it does not carry by it. */
static char *sidecar_air(const import_job *j)
{
    mood_civitai_version *v = NULL;
    char *text = j->side.record ? cJSON_PrintUnformatted(j->side.record->version) : NULL,
         *air = NULL;
    if (!text || mood_civitai_version_parse(&v, text, strlen(text)) != 0) {
        mood_error_clear(); /* not a whole record (a few fields written by hand): no AIR */
        cJSON_free(text);
        return NULL;
    }
    cJSON_free(text);
    if (v->air) {
        air = v->air;
        v->air = NULL;
    }
    mood_civitai_version_free(v);
    return air;
}

static int insert_source(mood_registry *r, const import_job *j)
{
    const cJSON *c = j->side.record ? j->side.record->version : NULL,
                *model = cJSON_GetObjectItemCaseSensitive(c, "model");
    const cJSON *nsfw = cJSON_GetObjectItemCaseSensitive(model, "nsfw");
    sqlite3_stmt *st = NULL;
    char absbuf[PATH_MAX], *air;
    const char *abs = realpath(j->path, absbuf);
    int known = 0, err = j->stored ? source_known(r, j->h.sha256, abs ? abs : j->path, &known) : 0;
    if (err || known)
        return err;
    air = sidecar_air(j);
    err = mood__reg_prepare(
        r, &st,
        "INSERT INTO sources(adapter_sha256, kind, location, sidecar_json, civitai_info_json,"
        " civitai_model_id, civitai_version_id, model_name, version_name, base_model, nsfw,"
        " file_size, file_mtime_ns, file_ctime_ns, file_inode, blob_mtime_ns, air, nsfw_level,"
        " added_at) VALUES (?1, 'file', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
        " ?15, ?16, ?17, strftime('%Y-%m-%dT%H:%M:%SZ','now'))");
    if (!err) {
        mood__reg_bind_text(st, 1, j->h.sha256);
        mood__reg_bind_utf8(st, 2, abs ? abs : j->path); /* a file name */
        mood__reg_bind_text(st, 3, j->side.a1111_raw);   /* UTF-8 by now */
        mood__reg_bind_text(st, 4, j->side.record ? j->side.record->raw : NULL);
        if (mood__import_json_id(c, "modelId"))
            sqlite3_bind_int64(st, 5, mood__import_json_id(c, "modelId"));
        if (mood__import_json_id(c, "id"))
            sqlite3_bind_int64(st, 6, mood__import_json_id(c, "id"));
        mood__reg_bind_text(st, 7, mood__import_jstr(model, "name"));
        mood__reg_bind_text(st, 8, mood__import_jstr(c, "name"));
        mood__reg_bind_text(st, 9, mood__import_jstr(c, "baseModel"));
        if (cJSON_IsBool(nsfw))
            sqlite3_bind_int(st, 10, cJSON_IsTrue(nsfw));
        if (j->has_fs)
            mood__reg_bind_file_stat(st, 11, &j->fs, r, j->h.sha256);
        mood__reg_bind_text(st, 16, air);
        /* the version's level (Civitai's bit flags), as a Civitai lookup stores it */
        if (mood__import_json_id(c, "nsfwLevel"))
            sqlite3_bind_int64(st, 17, mood__import_json_id(c, "nsfwLevel"));
        err = mood__reg_step_done(r, st, "recording where the file came from");
    }
    mood_free(air);
    return err;
}

/* Said once the sidecars' Civitai record is stored: its baseModel against the file's family. */
static void warn_family(const import_job *j)
{
    if (j->side.record)
        mood__civitai_check_family(j->path, mood__import_jstr(j->side.record->version, "baseModel"),
                                   j->facts.s.family, j->facts.s.family_source);
}

/* A copy of a stored file, from another place: recorded as one more source of it (where it is,
 * its sidecars' Civitai ids and names, searchable), so that its next import is known without
 * reading it. The style keeps its own trigger words and text. */
static int add_source(mood_registry *r, const import_job *j, int *gone)
{
    long long stored = 0;
    int err = mood__reg_begin(r);
    /* the style may have been removed since it was found (a `mood rm` at the same time): then
     * the file is imported as a new one, in its own transaction */
    if (!err &&
        (err = mood__reg_query_int(r, &stored,
                                   "SELECT count(*) FROM style_adapters WHERE"
                                   " adapter_sha256 = ?1",
                                   j->h.sha256)) == 0 &&
        !(*gone = stored == 0) && (err = insert_source(r, j)) == 0)
        err = mood__reg_commit(r);
    if (err || *gone)
        mood__reg_rollback(r);
    return err;
}

static int insert_previews(mood_registry *r, const import_job *j, long long style_id)
{
    int err = 0, first = j->x ? (int)j->x->n_previews : 0;
    for (int i = 0; !err && i < j->n_previews; i++)
        err = mood__reg_insert_preview(r, style_id, j->previews[i].tx.sha256,
                                       j->previews[i].media_type, j->previews[i].origin, first + i);
    return err;
}

/* Picks the style name inside the transaction, so that two imports never take the same one. */
static int choose_name(mood_registry *r, import_job *j, mood_import_result *out)
{
    char *suggestion = NULL;
    int err = mood_registry_name_suggest(&suggestion, r, out->wanted);
    if (err)
        return err;
    out->renamed = strcmp(suggestion, out->wanted) != 0;
    snprintf(out->name, sizeof out->name, "%s", suggestion);
    j->name = suggestion;
    mood_error_clear();
    return 0;
}

static int commit_rows(mood_registry *r, import_job *j, mood_import_result *out)
{
    long long style_id = 0;
    int err, found = 0;
    if ((err = mood__reg_begin(r)) != 0)
        return err;
    if ((err = mood__reg_holder_of(r, j->h.sha256, out->name, sizeof out->name, &found)) != 0 ||
        found) {
        out->already = found;
        goto done; /* another process imported it meanwhile */
    }
    if ((err = adapter_stored(r, j->h.sha256, &j->stored)) != 0 ||
        (err = choose_name(r, j, out)) != 0 || (!j->stored && (err = insert_adapter(r, j)) != 0) ||
        (err = insert_style(r, j, &style_id)) != 0 || (err = insert_previews(r, j, style_id)) ||
        (err = mood__reg_insert_extras(r, j->x, j->extra, style_id)) != 0 ||
        (err = insert_source(r, j)) != 0)
        goto done;
    if ((err = mood__blob_journal_delete(r, &j->blob)) != 0)
        goto done;
    for (int i = 0; !err && i < j->n_previews; i++)
        err = mood__blob_journal_delete(r, &j->previews[i].tx);
    for (size_t i = 0; !err && i < j->n_extra; i++)
        err = mood__blob_journal_delete(r, &j->extra[i]);
done:
    if (!err && !out->already)
        err = mood__reg_commit(r);
    else
        mood__reg_rollback(r);
    return err;
}

/* ----- the import -------------------------------------------------------------------------- */

static void job_dispose(import_job *j, mood_registry *r, int failed)
{
    if (failed || j->blob.tmp_name) {
        /* not committed (failure, or found already imported): undo the blobs */
        for (size_t i = 0; i < j->n_extra; i++)
            mood__blob_tx_abort(&j->extra[i], r);
        for (int i = 0; i < j->n_previews; i++)
            mood__blob_tx_abort(&j->previews[i].tx, r);
        mood__blob_tx_abort(&j->blob, r);
    }
    mood_free(j->extra);
    for (int i = 0; i < j->n_previews; i++)
        mood_free(j->previews[i].origin);
    mood_free(j->stem_path);
    mood_free(j->name);
    mood_free(j->facts.metadata_json);
    mood_free(j->facts.file_triggers);
    mood_buf_dispose(&j->facts.top_tags);
    mood_free(j->side.a1111_raw);
    mood_free(j->side.txt);
    cJSON_Delete(j->side.a1111);
    for (int i = 0; i < N_REC; i++)
        mood__import_drop_record(&j->side.rec[i]);
    mood_buf_dispose(&j->side.triggers);
    mood_free(j->side.trigger_phrase);
}

/* The file's stem as out->wanted: in UTF-8 (a name made on Windows may be Windows-1252), and
 * cut, when too long, before a character rather than inside one. */
static int wanted_name(mood_import_result *out, const char *stem)
{
    char *utf8 = NULL;
    size_t n;
    int err = mood__reg_utf8_copy(&utf8, stem, NULL);
    if (err)
        return err;
    n = strlen(utf8);
    if (n >= sizeof out->wanted) {
        n = sizeof out->wanted - 1;
        while (n > 0 && ((unsigned char)utf8[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(out->wanted, utf8, n);
    out->wanted[n] = '\0';
    mood_free(utf8);
    return 0;
}

/* The name a file's style gets: its file name, unless that is a stored file's SHA-256 (a LoRA
 * rescued to blobs/lost+found by doctor, or copied out of blobs/): then the name its trainer
 * gave it (kohya's ss_output_name, else modelspec.title), where it has one. */
static const char *style_name_of(const char *stem_path, const mood_st_file *st)
{
    const char *stem = mood_path_basename(stem_path), *given;
    if (strlen(stem) != 64 || strspn(stem, "0123456789abcdef") != 64)
        return stem;
    given = mood_st_meta_get(st, "ss_output_name");
    if (!given || !*given)
        given = mood_st_meta_get(st, "modelspec.title");
    return given && *given ? given : stem;
}

/* Everything but the hashes: the adapter's facts, metadata and sidecars. */
static int prepare_facts(import_job *j, mood_import_result *out)
{
    mood_st_file *st = NULL;
    int err;
    if ((err = read_adapter(j)) != 0)
        return err;
    if (!(j->stem_path = mood_strndup(j->path, strlen(j->path) - strlen(".safetensors"))))
        return mood_error_nomem();
    snprintf(out->family, sizeof out->family, "%s", j->facts.s.family);
    if ((err = mood_st_open(&st, j->path)) != 0)
        return err;
    if ((err = wanted_name(out, style_name_of(j->stem_path, st))) != 0) {
        mood_st_close(st);
        return err;
    }
    /* the header is strict UTF-8 already (safetensors_read.c); converting costs nothing and
     * keeps the rule in one place should that reader ever relax */
    err = mood__reg_utf8_copy(&j->side.trigger_phrase,
                              mood_st_meta_get(st, "modelspec.trigger_phrase"), NULL);
    mood_st_close(st);
    if (!err)
        err = mood__import_read_sidecars(j);
    return err;
}

/* Hashing reads the whole file and so does validating the adapter (every factor is checked for
 * NaN): the hash runs on its own thread meanwhile. The caller's progress callback runs on the
 * caller's thread only (a GUI may touch its widgets there): the hash thread records how far it
 * is, the caller reports it once the validation is done, and a cancel asked for then stops the
 * hash at its next block. */
typedef struct hash_job {
    import_job *j;
    _Atomic uint64_t done, total;
    atomic_int cancel, finished;
    int err;
} hash_job;

static int hash_record(const mood_progress *p, void *payload)
{
    hash_job *h = payload;
    atomic_store(&h->total, p->total);
    atomic_store(&h->done, p->done);
    return atomic_load(&h->cancel);
}

static void *hash_thread(void *arg)
{
    hash_job *h = arg;
    h->err = mood_hash_file_ex(&h->j->h, h->j->path, MOOD_HASH_SKIP_CRC32, hash_record, h);
    atomic_store(&h->finished, 1);
    return NULL;
}

/* Reports the hash thread's progress on this thread until it is done, passing a cancel on. */
static void follow_hash(hash_job *h, mood_progress_fn progress, void *payload)
{
    uint64_t said = UINT64_MAX;
    while (!atomic_load(&h->finished)) {
        uint64_t done = atomic_load(&h->done);
        mood_progress p = {"hash", done, atomic_load(&h->total)};
        if (progress && done != said && p.total && progress(&p, payload) != 0)
            atomic_store(&h->cancel, 1);
        said = done;
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    if (progress && !atomic_load(&h->cancel) && !h->err) { /* the end, as hashing alone says it */
        mood_progress p = {"hash", atomic_load(&h->total), atomic_load(&h->total)};
        if (progress(&p, payload) != 0)
            atomic_store(&h->cancel, 1);
    }
}

static int prepare(import_job *j, mood_import_result *out, mood_progress_fn progress, void *payload)
{
    hash_job hj;
    pthread_t thread;
    int err = check_extension(j->path), hashing = 0;
    memset(&hj, 0, sizeof hj);
    hj.j = j;
    j->has_fs = stat(j->path, &j->fs) == 0; /* before reading: a change meanwhile is not hidden */
    if (!err)
        hashing = pthread_create(&thread, NULL, hash_thread, &hj) == 0;
    if (!err)
        err = prepare_facts(j, out);
    if (hashing) {
        if (err)
            atomic_store(&hj.cancel, 1); /* the file is refused: its hash is not needed */
        else
            follow_hash(&hj, progress, payload);
        pthread_join(thread, NULL);
    } else if (!err) {
        hj.err = mood_hash_file_ex(&j->h, j->path, MOOD_HASH_SKIP_CRC32, progress, payload);
        if (hj.err)
            return hj.err;
    }
    if (!err && atomic_load(&hj.cancel))
        return mood_error_set(MOOD_ECANCELLED, "%s: import cancelled while hashing", j->path);
    if (!err && hj.err) /* again on this thread, for its error message */
        err = mood_hash_file_ex(&j->h, j->path, MOOD_HASH_SKIP_CRC32, NULL, NULL);
    if (!err)
        err = mood__import_check_records(j);
    if (!err) {
        snprintf(out->sha256, sizeof out->sha256, "%s", j->h.sha256);
        snprintf(out->autov3, sizeof out->autov3, "%s", j->h.autov3);
        out->sidecars = j->side.count;
    }
    return err;
}

int mood_registry_import_file(mood_registry *r, mood_import_result *out, const char *path,
                              mood_progress_fn progress, void *payload)
{
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(path);
    return mood_registry_import_file_ex(r, out, path, NULL, progress, payload);
}

int mood_registry_import_file_ex(mood_registry *r, mood_import_result *out, const char *path,
                                 const mood_import_extras *x, mood_progress_fn progress,
                                 void *payload)
{
    import_job j;
    int err, found = 0, locked = 0, gone = 0;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(path);
    memset(&j, 0, sizeof j);
    memset(out, 0, sizeof *out);
    j.path = path;
    j.x = x;
    mood_buf_init(&j.facts.top_tags);
    mood_buf_init(&j.side.triggers);
    if (!x && !check_extension(path)) { /* imported before from here, unchanged: not read again */
        int known = 0;
        if ((err = mood__reg_known_file(r, path, out, &known)) != 0 || known)
            goto done;
    }
    mood_error_clear();
    if ((err = mood__reg_check_extras(x)) != 0 || (err = prepare(&j, out, progress, payload)) != 0)
        goto done;
    if ((err = mood__reg_holder_of(r, j.h.sha256, out->name, sizeof out->name, &found)) != 0 ||
        found) {
        char abs[PATH_MAX];
        int here = 0;
        out->already = found;
        if (!err)
            err = source_known(r, j.h.sha256, realpath(path, abs) ? abs : path, &here);
        out->elsewhere = !here; /* the same bytes, first imported from another file */
        if (!err)
            err = mood__blob_restore_file(r, j.h.sha256, j.h.size, path, progress, payload);
        if (!err && !here && !mood_registry_read_only(r) && (err = add_source(r, &j, &gone)) == 0 &&
            !gone)
            warn_family(&j);
        /* after the restore: the facts name the stored copy as it is now */
        if (!err && here && j.has_fs && !mood_registry_read_only(r) &&
            mood__reg_note_file(r, j.h.sha256, abs, &j.fs) != 0)
            mood_error_clear(); /* only the next import's shortcut is lost */
        if (err || !gone)
            goto done;
        out->already = out->elsewhere = 0; /* removed meanwhile: imported anew below */
        out->name[0] = '\0';
    }
    if ((err = mood__reg_lock_shared(r)) != 0)
        goto done;
    locked = 1;
    if ((err = mood__blob_put_file(&j.blob, r, path, j.h.sha256, progress, payload)) != 0 ||
        (err = store_previews(&j, r)) != 0 ||
        (err = mood__reg_store_extras(r, j.x, &j.extra, &j.n_extra)) != 0 ||
        (err = commit_rows(r, &j, out)) != 0)
        goto done;
    if (!out->already) {
        if (j.stored)
            note_restored(r, &j);
        warn_family(&j);
        out->previews = j.n_previews + (x ? (int)x->n_previews : 0);
        for (size_t i = 0; i < j.n_extra; i++)
            mood__blob_tx_end(&j.extra[i]);
        for (int i = 0; i < j.n_previews; i++)
            mood__blob_tx_end(&j.previews[i].tx);
        mood__blob_tx_end(&j.blob);
    }
done:
    if (err && !strstr(mood_error_last(), path))
        mood_error_prefix("%s", path);
    job_dispose(&j, r, err != 0);
    if (locked)
        mood__reg_unlock_shared(r);
    return err;
}
