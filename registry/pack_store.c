/*
 * pack_store.c: storing an imported style pack (pack_store.h), with the same all-or-nothing
 * protocol as a file import (blob.c): journal row and verified blob first, then every row of the
 * pack in one transaction that also deletes the journal rows; on any failure the transaction is
 * rolled back and the blobs this import created are removed. A manifest's text that is not
 * valid UTF-8 is stored converted (utf8.c): packs may come from other programs.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "registry/civitai_impl.h"
#include "registry/pack_store.h"
#include "registry/registry_impl.h"

typedef struct store {
    mood_registry *r;
    mood__blob_tx *txs;
    size_t n_txs;
    char *present; /* present[i]: adapter i was in the registry before */
} store;

/* Every adapter that is neither embedded nor in the registry, all named in one message. */
static int check_adapters(store *s, const mood__pack_adapter_row *a, size_t n)
{
    mood_buf missing;
    int err = 0, count = 0;
    mood_buf_init(&missing);
    for (size_t i = 0; i < n && !err; i++) {
        long long known = 0;
        if ((err = mood__reg_query_int(s->r, &known,
                                       "SELECT count(*) FROM adapters WHERE sha256 = ?1",
                                       a[i].sha256)) != 0)
            break;
        s->present[i] = known > 0;
        if (!known && !a[i].path) {
            char ref[40]; /* without an AIR, the Civitai version id is as good to import by */
            snprintf(ref, sizeof ref, "civitai:%lld", a[i].civitai_version_id);
            count++;
            err = mood_buf_printf(&missing, "%s%s (%s, %s %s)", missing.len ? "; " : "",
                                  a[i].sha256, a[i].file_name ? a[i].file_name : "?",
                                  a[i].air || a[i].civitai_version_id <= 0 ? "AIR" : "Civitai",
                                  a[i].air                      ? a[i].air
                                  : a[i].civitai_version_id > 0 ? ref
                                                                : "unknown");
        }
    }
    if (!err && count)
        err = mood_error_set(MOOD_ENOTFOUND,
                             "the pack references %d adapter%s that %s not embedded and not in "
                             "the registry: %s; import %s first (mood import FILE or AIR)",
                             count, count > 1 ? "s" : "", count > 1 ? "are" : "is", missing.data,
                             count > 1 ? "them" : "it");
    mood_buf_dispose(&missing);
    return err;
}

/* Whether the registry's style `name` holds the LoRAs of pack style s: the same files in the same
 * order, whatever their weights (*same_weights says whether those agree too). */
static int same_loras(mood_registry *r, const mood__pack_style_row *s, int *same, int *same_weights)
{
    mood_style_lora *have = NULL;
    size_t n = 0;
    int err = mood_registry_style_loras(&have, &n, r, s->name);
    *same = *same_weights = 0;
    if (err)
        return err;
    *same = n == s->n_loras;
    *same_weights = *same;
    for (size_t i = 0; i < n && *same; i++) {
        *same = strcmp(have[i].sha256, s->loras[i].sha256) == 0;
        *same_weights = *same && *same_weights && have[i].unet == s->loras[i].unet &&
                        have[i].te == s->loras[i].te;
    }
    mood_registry_free_string((char *)have);
    return 0;
}

/* A pack style whose name is taken is refused, unless the style of that name holds the same LoRAs
 * (a reference-only pack's LoRA imported with `mood import` first, which names its style after
 * the file, as the pack does): then merge[i] is set and the pack's style is merged into it.
 * Every refused name is said in one message: a pack of fifty styles is not fixed a name a run. */
#define SHOWN_TAKEN 20
static int check_names(mood_registry *r, const mood__pack_style_row *s, size_t n,
                       unsigned char *merge)
{
    mood_buf taken_names;
    int err = 0, count = 0;
    mood_buf_init(&taken_names);
    for (size_t i = 0; i < n && !err; i++) {
        long long taken = 0;
        int same = 0, same_weights = 0;
        merge[i] = 0;
        if ((err = mood_registry_name_check(s[i].name)) != 0 ||
            (err = mood__reg_query_int(r, &taken, "SELECT count(*) FROM styles WHERE name = ?1",
                                       s[i].name)) != 0)
            break;
        if (taken && (err = same_loras(r, &s[i], &same, &same_weights)) != 0)
            break;
        if (taken && !same && count++ < SHOWN_TAKEN)
            err = mood_buf_printf(&taken_names, "%s'%s'", taken_names.len ? ", " : "", s[i].name);
        merge[i] = (unsigned char)(taken ? 1 + !same_weights : 0);
    }
    if (!err && count > SHOWN_TAKEN)
        err = mood_buf_printf(&taken_names, " and %d more", count - SHOWN_TAKEN);
    if (!err && count)
        err = mood_error_set(MOOD_EINVAL,
                             "%s named %s exist%s already, with other LoRAs; rename or remove "
                             "yours (mood rename, mood rm), or import the pack's under other "
                             "names (pack import --rename NAME=NEW)",
                             count == 1 ? "a style" : "styles", taken_names.data,
                             count == 1 ? "s" : "");
    mood_buf_dispose(&taken_names);
    return err;
}

static int put_blob(store *s, const char *path, const char *sha, mood_progress_fn progress,
                    void *payload)
{
    int err = mood__blob_put_file(&s->txs[s->n_txs], s->r, path, sha, progress, payload);
    if (!err)
        s->n_txs++;
    return err;
}

static int insert_source(mood_registry *r, const mood__pack_adapter_row *a, const char *pack);

/* Packs leave an embedded LoRA's metadata out of the manifest (it is in the file, and a big
 * ss_tag_frequency made manifests that no importer takes): the row gets the file's. */
static int file_metadata(char **out, const mood__pack_adapter_row *a)
{
    mood_st_file *st = NULL;
    int err;
    *out = NULL;
    if (a->metadata_json || !a->path)
        return 0;
    if ((err = mood_st_open(&st, a->path)) != 0)
        return err;
    if (!(*out = mood__reg_metadata_json(st)))
        err = mood_error_nomem();
    mood_st_close(st);
    return err;
}

static int insert_adapter(mood_registry *r, const mood__pack_adapter_row *a, const char *pack)
{
    char *from_file = NULL;
    mood__reg_lora_summary s;
    mood_adapter *ad = NULL;
    int err = file_metadata(&from_file, a), own = 0;
    /* an embedded LoRA's algorithm, rank, alpha, dtype and module count are its file's (the
     * manifest's are a pack's word: they are what `mood show` and search list) */
    if (!err && a->path && (err = mood_adapter_open(&ad, a->path, NULL)) == 0) {
        mood__reg_summarize(&s, ad);
        mood_adapter_close(ad);
        own = 1;
    }
    if (err) {
        mood_free(from_file);
        return err;
    }
    mood__reg_adapter row = {
        .sha256 = a->sha256,
        .autov3 = a->autov3,
        .family = a->family,
        .family_source = own ? s.family_source : a->family_source,
        .algorithm = own ? s.algorithm : a->algorithm,
        .dtype = own ? s.dtype : a->dtype,
        .file_name = a->file_name,
        .metadata_json = a->metadata_json ? a->metadata_json : from_file,
        .trigger_words_json = a->trigger_words_json,
        .size = a->size,
        .rank = own ? s.rank : a->rank,
        .has_rank = own || a->has_rank,
        .modules = own ? s.modules : a->modules,
        .has_modules = own || a->has_modules,
        .alpha = own ? s.alpha : a->alpha,
        .has_alpha = own ? s.has_alpha : a->has_alpha,
    };
    err = mood__reg_insert_adapter(r, &row, "storing an adapter of the pack");
    mood_free(from_file);
    if (!err && (err = insert_source(r, a, pack)) == 0) /* a record of another family: said */
        mood__civitai_check_family(a->file_name ? a->file_name : a->sha256, a->base_model,
                                   row.family, row.family_source);
    return err;
}

/* The pack as a source of adapter a, with the Civitai record the manifest carries. */
static int insert_source(mood_registry *r, const mood__pack_adapter_row *a, const char *pack)
{
    sqlite3_stmt *st = NULL;
    int err;
    if ((err = mood__reg_prepare(r, &st,
                                 "INSERT INTO sources(adapter_sha256, kind, location, air, license,"
                                 " civitai_model_id, civitai_version_id, model_name,"
                                 " version_name, base_model, nsfw, nsfw_level, permissions_json,"
                                 " added_at) VALUES (?1, 'pack', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
                                 " ?10, ?11, ?12, strftime('%Y-%m-%dT%H:%M:%SZ','now'))")) != 0)
        return err;
    mood__reg_bind_text(st, 1, a->sha256);
    mood__reg_bind_utf8(st, 2, pack);
    mood__reg_bind_utf8(st, 3, a->air);
    mood__reg_bind_utf8(st, 4, a->license);
    /* the columns a Civitai import fills (civitai_store.c), so that update-check and show see
     * the same record after a pack round trip */
    if (a->civitai_model_id > 0)
        sqlite3_bind_int64(st, 5, a->civitai_model_id);
    if (a->civitai_version_id > 0)
        sqlite3_bind_int64(st, 6, a->civitai_version_id);
    mood__reg_bind_utf8(st, 7, a->model_name);
    mood__reg_bind_utf8(st, 8, a->version_name);
    mood__reg_bind_utf8(st, 9, a->base_model);
    if (a->nsfw >= 0)
        sqlite3_bind_int(st, 10, a->nsfw);
    if (a->nsfw_level >= 0)
        sqlite3_bind_int(st, 11, a->nsfw_level);
    mood__reg_bind_utf8(st, 12, a->permissions_json);
    return mood__reg_step_done(r, st, "recording where the adapter came from");
}

static int link_adapters(mood_registry *r, const mood__pack_style_row *s, long long id)
{
    sqlite3_stmt *st = NULL;
    int err = 0;
    for (size_t i = 0; !err && i < s->n_loras; i++) {
        if ((err = mood__reg_prepare(r, &st,
                                     "INSERT INTO style_adapters(style_id, adapter_sha256,"
                                     " unet_weight, te_weight, position) VALUES (?1,?2,?3,?4,?5)")))
            break;
        sqlite3_bind_int64(st, 1, id);
        mood__reg_bind_text(st, 2, s->loras[i].sha256);
        sqlite3_bind_double(st, 3, s->loras[i].unet);
        sqlite3_bind_double(st, 4, s->loras[i].te);
        sqlite3_bind_int(st, 5, (int)i);
        err = mood__reg_step_done(r, st, "linking an adapter");
    }
    return err;
}

/* The pack style's tags, previews and board thumbnails, added to style `id`: tags and previews
 * it has already are not added twice, new previews go after its own, and the board only when it
 * has none (a style merged into one of the registry's keeps what that one had). */
static int insert_children(mood_registry *r, const mood__pack_style_row *s, long long id)
{
    sqlite3_stmt *st = NULL;
    long long boards = 0;
    char idtext[32];
    int err = 0;
    for (size_t i = 0; !err && i < s->n_tags; i++) {
        if ((err = mood__reg_prepare(r, &st, MOOD__REG_ADD_TAG_SQL)) != 0)
            break;
        sqlite3_bind_int64(st, 1, id);
        mood__reg_bind_utf8(st, 2, s->tags[i]);
        err = mood__reg_step_done(r, st, "tagging a style");
    }
    for (size_t i = 0; !err && i < s->n_previews; i++) {
        if ((err = mood__reg_prepare(
                 r, &st,
                 "INSERT INTO previews(style_id, blob_sha256, media_type, origin, position,"
                 " nsfw_level) SELECT ?1, ?2, ?3, 'pack', (SELECT coalesce(max(position) + 1, 0)"
                 " FROM previews WHERE style_id = ?1), ?4 WHERE NOT EXISTS (SELECT 1 FROM"
                 " previews WHERE style_id = ?1 AND blob_sha256 = ?2)")) != 0)
            break;
        sqlite3_bind_int64(st, 1, id);
        mood__reg_bind_text(st, 2, s->previews[i].sha256);
        mood__reg_bind_utf8(st, 3, s->previews[i].media_type);
        if (s->previews[i].nsfw_level >= 0)
            sqlite3_bind_int(st, 4, s->previews[i].nsfw_level);
        err = mood__reg_step_done(r, st, "storing a preview");
    }
    snprintf(idtext, sizeof idtext, "%lld", id);
    if (!err)
        err = mood__reg_query_int(r, &boards,
                                  "SELECT count(*) FROM style_files WHERE role = 'board' AND"
                                  " style_id = CAST(?1 AS INTEGER)",
                                  idtext);
    for (size_t i = 0; !err && !boards && i < s->n_board; i++) {
        const mood__pack_board_row *b = &s->board[i];
        if ((err = mood__reg_prepare(r, &st,
                                     "INSERT INTO style_files(style_id, role, blob_sha256,"
                                     " media_type, name, width, height, position) VALUES"
                                     " (?1, 'board', ?2, ?3, ?4, ?5, ?6, ?7)")) != 0)
            break;
        sqlite3_bind_int64(st, 1, id);
        mood__reg_bind_text(st, 2, b->sha256);
        mood__reg_bind_utf8(st, 3, b->media_type);
        mood__reg_bind_utf8(st, 4, b->name);
        if (b->width > 0 && b->height > 0) {
            sqlite3_bind_int(st, 5, b->width);
            sqlite3_bind_int(st, 6, b->height);
        }
        sqlite3_bind_int(st, 7, (int)i);
        err = mood__reg_step_done(r, st, "storing a mood board thumbnail");
    }
    return err;
}

/* A style of the pack whose LoRAs are for different families is refused (the rule of style
 * create/edit), checked after its rows are in, inside the transaction: adapters the registry
 * already had count with their stored family, and a refusal rolls the whole pack back. */
static int check_families(mood_registry *r, const mood__pack_style_row *s)
{
    char why[512];
    int err = mood__reg_check_families(r, s->loras, s->n_loras);
    if (err != MOOD_EFAMILY)
        return err;
    snprintf(why, sizeof why, "%s", mood_error_last());
    return mood_error_set(err, "style '%s' of the pack: %s", s->name, why);
}

static int check_fields(const mood__pack_style_row *s)
{
    if (s->template_text && s->template_text[0] && !strstr(s->template_text, "{prompt}"))
        return mood_error_set(MOOD_EFORMAT, "style '%s': template has no {prompt}", s->name);
    if (s->has_weight && (!isfinite(s->weight) || s->weight < -10 || s->weight > 10))
        return mood_error_set(MOOD_EFORMAT, "style '%s': weight %g is not from -10 to 10", s->name,
                              s->weight);
    return 0;
}

/* A pack style's text fields and weight as ?2 .. ?7, the order both statements below take. */
static void bind_fields(sqlite3_stmt *st, const mood__pack_style_row *s)
{
    mood__reg_bind_utf8(st, 2, s->description);
    mood__reg_bind_utf8(st, 3, s->notes);
    mood__reg_bind_utf8(st, 4, s->trigger_words);
    mood__reg_bind_utf8(st, 5, s->template_text);
    mood__reg_bind_utf8(st, 6, s->negative);
    if (s->has_weight)
        sqlite3_bind_double(st, 7, s->weight);
}

static int insert_style(mood_registry *r, const mood__pack_style_row *s)
{
    sqlite3_stmt *st = NULL;
    long long id;
    int err;
    if ((err = check_fields(s)) != 0)
        return err;
    if ((err = mood__reg_prepare(r, &st,
                                 "INSERT INTO styles(name, description, notes, trigger_words,"
                                 " template, negative, weight, created_at, updated_at) VALUES"
                                 " (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
                                 " strftime('%Y-%m-%dT%H:%M:%SZ','now'),"
                                 " strftime('%Y-%m-%dT%H:%M:%SZ','now'))")) != 0)
        return err;
    mood__reg_bind_text(st, 1, s->name);
    bind_fields(st, s);
    if ((err = mood__reg_step_done(r, st, "creating a style of the pack")) != 0)
        return err;
    id = sqlite3_last_insert_rowid(r->db);
    if ((err = link_adapters(r, s, id)) != 0 || (err = insert_children(r, s, id)) != 0)
        return err;
    return check_families(r, s);
}

/* Whether the ", "-separated list `list` holds the word w[0..n) (ASCII case ignored, as CLIP). */
static int has_word(const char *list, const char *w, size_t n)
{
    for (const char *p = list; p && *p;) {
        size_t k = strcspn(p, ",");
        const char *e = p + k;
        while (p < e && *p == ' ')
            p++;
        while (e > p && e[-1] == ' ')
            e--;
        if ((size_t)(e - p) == n && strncasecmp(p, w, n) == 0)
            return 1;
        p += strcspn(p, ",");
        p += *p == ',';
    }
    return 0;
}

/* The style's trigger words with the pack's that it lacks appended: its own may have been guessed
 * from the file's tags by the import, while the pack's are its author's. */
static int merged_triggers(mood_registry *r, long long id, const char *pack, mood_buf *out)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, "SELECT trigger_words FROM styles WHERE id = ?1"), rc;
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_text(st, 0))
        err = mood_buf_puts(out, (const char *)sqlite3_column_text(st, 0));
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, "reading a style's trigger words");
    sqlite3_finalize(st);
    for (const char *p = pack; !err && p && *p;) {
        size_t k = strcspn(p, ",");
        const char *b = p, *e = p + k;
        while (b < e && *b == ' ')
            b++;
        while (e > b && e[-1] == ' ')
            e--;
        if (e > b && !has_word(out->data, b, (size_t)(e - b)))
            err = mood_buf_printf(out, "%s%.*s", out->len ? ", " : "", (int)(e - b), b);
        p += k + (p[k] == ',');
    }
    return err;
}

/* Pack style s into the registry's style of its name, which holds the same LoRAs: what that style
 * has is kept (its text, weights and board); what it lacks is filled from the pack (description,
 * notes, template, negative prompt, weight), the pack's trigger words it lacks are added
 * (merged_triggers), and so are the pack's tags and previews. Its own LoRA weights stay, with a
 * warning when the pack's differ. */
static int merge_style(mood_registry *r, const mood__pack_style_row *s, int weights_differ)
{
    sqlite3_stmt *st = NULL;
    mood_buf words;
    long long id = 0;
    int err;
    mood_buf_init(&words);
    if ((err = check_fields(s)) != 0 || (err = mood__reg_style_id(r, &id, s->name)) != 0)
        return err;
    if ((err = mood__reg_prepare(
             r, &st,
             "UPDATE styles SET description = coalesce(nullif(description, ''), ?2),"
             " notes = coalesce(nullif(notes, ''), ?3), trigger_words = ?4,"
             " template = coalesce(nullif(template, ''), ?5),"
             " negative = coalesce(nullif(negative, ''), ?6), weight = coalesce(weight, ?7),"
             " updated_at = strftime('%Y-%m-%dT%H:%M:%SZ','now') WHERE id = ?1"
             /* only when something changes: a pack imported again leaves the time as it was */
             " AND (description IS NOT coalesce(nullif(description, ''), ?2)"
             " OR notes IS NOT coalesce(nullif(notes, ''), ?3) OR trigger_words IS NOT ?4"
             " OR template IS NOT coalesce(nullif(template, ''), ?5)"
             " OR negative IS NOT coalesce(nullif(negative, ''), ?6)"
             " OR weight IS NOT coalesce(weight, ?7))")) != 0)
        return err;
    sqlite3_bind_int64(st, 1, id);
    bind_fields(st, s);
    if ((err = merged_triggers(r, id, s->trigger_words, &words)) != 0) {
        sqlite3_finalize(st);
        return err;
    }
    mood__reg_bind_utf8(st, 4, words.len ? words.data : NULL);
    err = mood__reg_step_done(r, st, "merging a style of the pack");
    mood_buf_dispose(&words);
    if (err || (err = insert_children(r, s, id)) != 0)
        return err;
    if (weights_differ)
        mood_log(MOOD_LOG_WARN,
                 "style '%s' was in the registry with the pack's LoRAs at other weights: kept its "
                 "own ('mood show %s'; 'mood style edit' to change them)",
                 s->name, s->name);
    return 0;
}

static int commit_rows(store *s, const char *pack, const mood__pack_adapter_row *a, size_t na,
                       const mood__pack_style_row *st, size_t ns, int *added, unsigned char *merged)
{
    int err;
    if ((err = mood__reg_begin(s->r)) != 0)
        return err;
    /* checked again inside the transaction: another process may have changed the registry */
    if ((err = check_adapters(s, a, na)) != 0 || (err = check_names(s->r, st, ns, merged)) != 0)
        goto done;
    for (size_t i = 0; i < na && !err; i++) {
        if (!s->present[i]) {
            err = insert_adapter(s->r, &a[i], pack);
            *added += !err;
        } else if (a[i].civitai_version_id > 0) {
            /* a LoRA the registry had without its Civitai record (a plain 'mood import') gets
             * the pack's: show, search and update-check see it */
            long long known = 0;
            err = mood__reg_query_int(s->r, &known,
                                      "SELECT count(*) FROM sources WHERE adapter_sha256 = ?1"
                                      " AND civitai_version_id IS NOT NULL",
                                      a[i].sha256);
            if (!err && !known)
                err = insert_source(s->r, &a[i], pack);
        }
    }
    for (size_t i = 0; i < ns && !err; i++)
        err = merged[i] ? merge_style(s->r, &st[i], merged[i] == 2) : insert_style(s->r, &st[i]);
    for (size_t i = 0; i < s->n_txs && !err; i++)
        err = mood__blob_journal_delete(s->r, &s->txs[i]);
done:
    if (!err)
        err = mood__reg_commit(s->r);
    if (err)
        mood__reg_rollback(s->r);
    return err;
}

int mood__reg_pack_store(int *added_out, unsigned char *merged_out, mood_registry *r,
                         const char *pack_path, const mood__pack_adapter_row *adapters,
                         size_t n_adapters, const mood__pack_style_row *styles, size_t n_styles,
                         mood_progress_fn progress, void *payload)
{
    store s;
    size_t n_blobs = n_adapters;
    char *abs = realpath(pack_path, NULL);
    int err = 0, locked = 0;
    memset(&s, 0, sizeof s);
    s.r = r;
    *added_out = 0;
    for (size_t i = 0; i < n_styles; i++)
        n_blobs += styles[i].n_previews + styles[i].n_board;
    if (!(s.txs = mood_calloc(n_blobs + 1, sizeof *s.txs)) ||
        !(s.present = mood_calloc(n_adapters + 1, 1))) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = check_adapters(&s, adapters, n_adapters)) != 0 ||
        (err = check_names(r, styles, n_styles, merged_out)) != 0 ||
        (err = mood__reg_lock_shared(r)) != 0)
        goto done;
    locked = 1;
    for (size_t i = 0; i < n_adapters && !err; i++) {
        if (!s.present[i] && adapters[i].path)
            err = put_blob(&s, adapters[i].path, adapters[i].sha256, progress, payload);
    }
    for (size_t i = 0; i < n_styles && !err; i++) {
        for (size_t j = 0; j < styles[i].n_previews && !err; j++)
            err =
                put_blob(&s, styles[i].previews[j].path, styles[i].previews[j].sha256, NULL, NULL);
        /* a style merged into one that has its own board keeps that board (insert_children):
         * the pack's would be stored files no row uses */
        long long boards = 0;
        if (merged_out[i] &&
            (err = mood__reg_query_int(r, &boards,
                                       "SELECT count(*) FROM style_files f JOIN styles s ON"
                                       " s.id = f.style_id WHERE f.role = 'board' AND s.name = ?1",
                                       styles[i].name)) != 0)
            break;
        for (size_t j = 0; j < styles[i].n_board && !boards && !err; j++)
            err = put_blob(&s, styles[i].board[j].path, styles[i].board[j].sha256, NULL, NULL);
    }
    if (!err)
        err = commit_rows(&s, abs ? abs : pack_path, adapters, n_adapters, styles, n_styles,
                          added_out, merged_out);
done:
    for (size_t i = s.n_txs; i-- > 0;) {
        if (err)
            mood__blob_tx_abort(&s.txs[i], r);
        else
            mood__blob_tx_end(&s.txs[i]);
    }
    if (err)
        *added_out = 0;
    if (locked)
        mood__reg_unlock_shared(r);
    mood_free(s.txs);
    mood_free(s.present);
    free(abs); /* from realpath */
    return err;
}
