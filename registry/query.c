/*
 * query.c: reading the registry: `mood list`, `mood show`, `mood search`, returned as JSON text
 * (registry.h documents the fields). Search goes through the FTS5 index styles_fts; each word
 * the user typed becomes a quoted prefix term, so no input is read as FTS5 syntax.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <string.h>

#include "common/args.h"
#include "engine/unicode_tables.h"
#include "mood/lora.h"
#include "registry/registry_impl.h"

/* One row per style with what list and search show: the sum_* columns are kept up to date by
 * triggers (migration 3 in registry.c): family, algorithm and rank of the first adapter, the
 * numbers of adapters and previews, and the tags sorted and joined by \x1f. */
#define SUMMARY_COLUMNS                                                                            \
    "SELECT s.id, s.name, s.description, s.trigger_words, s.weight, s.sum_tags, s.sum_family,"     \
    " s.sum_algorithm, s.sum_rank, s.sum_adapters, s.sum_previews"

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* JSON for list and search is written straight into a buffer: a registry of 10,000 styles
 * would spend most of `mood list` building and printing cJSON objects. */
static int put_string(mood_buf *b, const char *key, const char *v)
{
    int err = mood_buf_puts(b, ",\"");
    if (!err)
        err = mood_buf_puts(b, key);
    if (!err)
        err = mood_buf_puts(b, "\":");
    if (!err)
        err = v ? mood_buf_json_string(b, v) : mood_buf_puts(b, "null");
    return err;
}

/* "a\x1fb" → ["a","b"] */
static int put_tags(mood_buf *b, const char *s)
{
    int err = mood_buf_puts(b, ",\"tags\":[");
    for (int first = 1; !err && s && *s; first = 0) {
        size_t n = strcspn(s, "\x1f");
        char *tag = mood_strndup(s, n);
        if (!tag)
            return mood_error_nomem();
        if (!first)
            err = mood_buf_puts(b, ",");
        if (!err)
            err = mood_buf_json_string(b, tag);
        mood_free(tag);
        s += n;
        if (*s)
            s++;
    }
    return err ? err : mood_buf_puts(b, "]");
}

/* A number as show's cJSON writes it (0.7, where %.17g gives 0.69999999999999996), so that list,
 * search and show print a style's weight alike. A cJSON item on the stack: nothing allocated. */
static int put_number(mood_buf *b, const char *key, double v)
{
    char text[64];
    cJSON n;
    memset(&n, 0, sizeof n);
    n.type = cJSON_Number;
    cJSON_SetNumberHelper(&n, v);
    if (!cJSON_PrintPreallocated(&n, text, (int)sizeof text, 0))
        snprintf(text, sizeof text, "%.17g", v);
    return mood_buf_printf(b, ",\"%s\":%s", key, text);
}

static int summary_row(mood_buf *b, sqlite3_stmt *st, int first)
{
    int err = mood_buf_puts(b, first ? "{\"name\":" : ",{\"name\":");
    if (!err)
        err = mood_buf_json_string(b, col_text(st, 1));
    if (!err)
        err = put_string(b, "family", col_text(st, 6));
    if (!err)
        err = put_string(b, "algorithm", col_text(st, 7));
    if (!err && sqlite3_column_type(st, 8) != SQLITE_NULL)
        err = mood_buf_printf(b, ",\"rank\":%d", sqlite3_column_int(st, 8));
    else if (!err)
        err = mood_buf_puts(b, ",\"rank\":null");
    if (!err && sqlite3_column_type(st, 4) != SQLITE_NULL)
        err = put_number(b, "weight", sqlite3_column_double(st, 4));
    else if (!err)
        err = mood_buf_puts(b, ",\"weight\":null");
    if (!err)
        err = put_string(b, "trigger_words", col_text(st, 3));
    if (!err)
        err = put_tags(b, col_text(st, 5));
    if (!err)
        err = put_string(b, "description", col_text(st, 2));
    if (!err)
        err = mood_buf_printf(b, ",\"n_adapters\":%d,\"n_previews\":%d}", sqlite3_column_int(st, 9),
                              sqlite3_column_int(st, 10));
    return err;
}

static int detach_json(char **out, cJSON *o)
{
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    *out = text ? mood_strdup(text) : NULL;
    cJSON_free(text);
    return *out ? 0 : mood_error_nomem();
}

/* Runs a summary query whose parameters are strings (NULL allowed) into a JSON array. */
static int run_summaries(char **out, mood_registry *r, const char *sql, const char *const *args,
                         int n_args)
{
    sqlite3_stmt *st = NULL;
    mood_buf b;
    int err, rc = SQLITE_DONE, first = 1;
    *out = NULL;
    mood_buf_init(&b);
    if ((err = mood__reg_prepare(r, &st, sql)) != 0 || (err = mood_buf_puts(&b, "[")) != 0)
        goto done;
    for (int i = 0; i < n_args && !err; i++)
        err = mood__reg_bind_text(st, i + 1, args[i]);
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        err = summary_row(&b, st, first);
        first = 0;
    }
    if (!err && rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, "reading the styles");
    if (!err && (err = mood_buf_puts(&b, "]")) == 0)
        *out = mood_buf_detach(&b);
done:
    sqlite3_finalize(st);
    mood_buf_dispose(&b);
    return err;
}

int mood_registry_list_json(char **out, mood_registry *r, const char *tag, const char *base)
{
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(r);
    return mood_registry_list_sorted_json(out, r, tag, base, MOOD_LIST_BY_NAME);
}

int mood_registry_list_sorted_json(char **out, mood_registry *r, const char *tag, const char *base,
                                   mood_list_order order)
{
    static const char *const order_by[] = {[MOOD_LIST_BY_NAME] = "s.name COLLATE mood_natural",
                                           [MOOD_LIST_BY_CREATED] = "s.created_at DESC, s.id DESC",
                                           [MOOD_LIST_BY_CHANGED] = "s.updated_at DESC, s.id DESC"};
    const char *args[2] = {tag, base};
    mood_family family;
    char sql[1024];
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(r);
    if ((int)order < 0 || order > MOOD_LIST_BY_CHANGED)
        return mood_error_set(MOOD_EINVAL, "unknown list order %d", (int)order);
    if (tag && tag[0] == '#') /* as 'mood list' shows tags, and as 'mood tag' takes them */
        args[0] = tag + 1;
    /* the rows hold mood_family_name's spelling; "SDXL" or "sd1.5" mean the same family */
    if (base && mood_family_from_name(&family, base) == 0)
        args[1] = mood_family_name(family);
    else if (base)
        mood_error_clear(); /* another name is matched as it is */
    snprintf(sql, sizeof sql,
             SUMMARY_COLUMNS " FROM styles s"
                             " WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM tags t WHERE"
                             " t.style_id = s.id AND mood_fold(t.tag) = mood_fold(?1)))"
                             " AND (?2 IS NULL OR s.sum_family = ?2 OR EXISTS (SELECT 1 FROM"
                             " style_adapters sa JOIN adapters a ON a.sha256 ="
                             " sa.adapter_sha256 WHERE sa.style_id = s.id AND a.family = ?2))"
                             " ORDER BY %s",
             order_by[order]);
    return run_summaries(out, r, sql, args, 2);
}

/* The search index's tokenizer (unicode61) keeps letters, digits and marks of a word and takes
 * every other character for a separator, emoji included, and it does not split Chinese or
 * Japanese text, which is written without spaces. So a query is read in runs:
 *   - words (letters, digits, their combining marks): "word"* in the FTS5 query, ANDed;
 *   - Han, kana and hangul: found as text anywhere in the indexed columns ('水墨' in '水墨画');
 *   - emoji and other symbols: each found as text (its variation selectors and joiners left
 *     out, so '❤️' finds '❤' and '🎨🖌' finds both apart);
 *   - punctuation and spaces, ASCII or not: separators.
 * Text found "as text" is LIKE '%run%' on the indexed columns. Limits keep the statement small. */
#define SEARCH_MAX_BYTES 1000
#define SEARCH_MAX_TEXT  32 /* runs found as text */

enum { RUN_NONE, RUN_WORD, RUN_TEXT, RUN_SYMBOL };

typedef struct search_query {
    mood_buf fts;                /* the FTS5 query ("" when no words) */
    char *text[SEARCH_MAX_TEXT]; /* LIKE patterns: %run% */
    int n_text;
} search_query;

static int in_range(uint32_t c, uint32_t lo, uint32_t hi)
{
    return c >= lo && c <= hi;
}

static int is_cjk(uint32_t c)
{
    return in_range(c, 0x3040, 0x30FF) || in_range(c, 0x31F0, 0x31FF) || /* kana */
           in_range(c, 0x3400, 0x4DBF) || in_range(c, 0x4E00, 0x9FFF) || /* Han */
           in_range(c, 0xF900, 0xFAFF) || in_range(c, 0x20000, 0x3FFFF) ||
           in_range(c, 0x1100, 0x11FF) || in_range(c, 0x3130, 0x318F) || /* hangul */
           in_range(c, 0xAC00, 0xD7AF) || in_range(c, 0xFF66, 0xFF9F);   /* half-width kana */
}

/* Symbol blocks: Latin-1's © ®, letterlike symbols to miscellaneous symbols and arrows (not the
 * general punctuation before them), enclosed CJK, the emoji planes. */
static int is_symbol(uint32_t c)
{
    return c == 0xA9 || c == 0xAE || in_range(c, 0x2100, 0x2BFF) || in_range(c, 0x3200, 0x33FF) ||
           in_range(c, 0x1F000, 0x1FAFF);
}

static int char_kind(uint32_t c)
{
    if (c < 0x80)
        return isalnum((int)c) ? RUN_WORD : RUN_NONE;
    if (is_cjk(c))
        return RUN_TEXT;
    if (is_symbol(c))
        return RUN_SYMBOL;
    /* letters and digits, combining marks (é written e + U+0301) and the spacing vowel signs
     * of the Indic and Southeast Asian scripts, which belong to their word */
    if (mood__uc_is_word(c) || mood__uc_ccc_of(c) || in_range(c, 0x0900, 0x109F))
        return RUN_WORD;
    return RUN_NONE;
}

static int add_text(search_query *q, const char *s, size_t n)
{
    if (q->n_text == SEARCH_MAX_TEXT)
        return mood_error_set(MOOD_EINVAL,
                              "search: at most %d symbols and runs of Chinese, Japanese or "
                              "Korean text in one query",
                              SEARCH_MAX_TEXT);
    if (!(q->text[q->n_text] = mood_malloc(n + 3)))
        return mood_error_nomem();
    snprintf(q->text[q->n_text++], n + 3, "%%%.*s%%", (int)n, s);
    return 0;
}

/* A word typed with a Chinese or Japanese input method left in full-width mode ("ｉｎｋ",
 * U+FF01..U+FF5E) and the same word in ASCII are one word (the width part of NFKC), but the
 * index holds each as written and its tokenizer folds case only. So a word is looked for in its
 * other width too: n bytes at word into out (at most 3n bytes), full-width forms as ASCII when
 * it has any, else its ASCII letters and digits as full-width; returns the length, 0 when the
 * word has neither. */
static size_t other_width(char *out, const char *word, size_t n)
{
    const unsigned char *s = (const unsigned char *)word;
    size_t m = 0, narrowed = 0, widened = 0;
    int has_wide = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c = 0;
        size_t k = mood__utf8_decode(s + i, n - i, &c);
        if (!k)
            return 0;
        has_wide |= c >= 0xFF01 && c <= 0xFF5E;
        i += k;
    }
    for (size_t i = 0; i < n;) {
        uint32_t c = 0;
        size_t k = mood__utf8_decode(s + i, n - i, &c);
        if (has_wide && c >= 0xFF01 && c <= 0xFF5E) {
            out[m++] = (char)(c - 0xFEE0);
            narrowed++;
        } else if (!has_wide && c < 0x80 && isalnum((int)c)) {
            c += 0xFEE0; /* three bytes of UTF-8: EF BC/BD xx */
            out[m++] = (char)0xEF;
            out[m++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[m++] = (char)(0x80 | (c & 0x3F));
            widened++;
        } else {
            memcpy(out + m, word + i, k);
            m += k;
        }
        i += k;
    }
    return narrowed || widened ? m : 0;
}

/* Ends the run of `kind` at text[from, to) into q. A word is looked for as typed or in its
 * other width (a description pasted from a Japanese page may be full-width). */
static int end_run(search_query *q, int kind, const char *text, size_t from, size_t to)
{
    const char *sep = q->fts.len ? " AND " : "";
    int n = (int)(to - from);
    if (kind == RUN_WORD) {
        char other[3 * SEARCH_MAX_BYTES];
        size_t m = other_width(other, text + from, to - from);
        if (m)
            return mood_buf_printf(&q->fts, "%s(\"%.*s\"* OR \"%.*s\"*)", sep, n, text + from,
                                   (int)m, other);
        return mood_buf_printf(&q->fts, "%s\"%.*s\"*", sep, n, text + from);
    }
    return kind == RUN_TEXT ? add_text(q, text + from, to - from) : 0;
}

static int search_parse(search_query *q, const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, from = 0, len = strlen(text);
    int kind = RUN_NONE, err;
    if ((err = mood_registry_text_check(text, "the search query")) != 0)
        return err;
    if (len > SEARCH_MAX_BYTES)
        return mood_error_set(MOOD_EINVAL, "search: a query of %zu bytes; at most %d", len,
                              SEARCH_MAX_BYTES);
    for (;;) {
        uint32_t c = 0;
        size_t n = i < len ? mood__utf8_decode(s + i, len - i, &c) : 0;
        int k = i < len ? char_kind(c) : RUN_NONE;
        if (k != kind || k == RUN_SYMBOL) { /* a symbol is a run of its own */
            if ((err = end_run(q, kind, text, from, i)) != 0)
                return err;
            kind = k;
            from = i;
        }
        if (k == RUN_SYMBOL && (err = add_text(q, text + i, n)) != 0)
            return err;
        if (i >= len)
            return 0;
        i += n;
    }
}

static void search_dispose(search_query *q)
{
    mood_buf_dispose(&q->fts);
    for (int i = 0; i < q->n_text; i++)
        mood_free(q->text[i]);
}

int mood_registry_search_json(char **out, mood_registry *r, const char *query)
{
    search_query q;
    mood_buf sql;
    const char *args[1 + SEARCH_MAX_TEXT];
    int err, n = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(query);
    memset(&q, 0, sizeof q);
    mood_buf_init(&q.fts);
    mood_buf_init(&sql);
    if ((err = search_parse(&q, query)) != 0)
        goto done;
    if (q.fts.len == 0 && q.n_text == 0) {
        err =
            mood_error_set(MOOD_EINVAL, "search \"%s\": give at least one word to look for", query);
        goto done;
    }
    err = mood_buf_puts(&sql, SUMMARY_COLUMNS " FROM styles_fts f JOIN styles s ON s.id = f.rowid"
                                              " WHERE 1");
    if (!err && q.fts.len) {
        args[n++] = q.fts.data;
        err = mood_buf_printf(&sql, " AND styles_fts MATCH ?%d", n);
    }
    for (int i = 0; !err && i < q.n_text; i++) {
        args[n++] = q.text[i];
        err = mood_buf_printf(&sql,
                              " AND (ifnull(f.name, '') || ' ' || ifnull(f.trigger_words, '') ||"
                              " ' ' || ifnull(f.tags, '') || ' ' || ifnull(f.description, '') ||"
                              " ' ' || ifnull(f.notes, '') || ' ' || ifnull(f.civitai, ''))"
                              " LIKE ?%d",
                              n);
    }
    /* a match in the name counts most, then trigger words and tags, then the LoRA files' and
     * Civitai's names (the column civitai), then
     * the description and notes (bm25's weights per column, in the index's order) */
    if (!err)
        err = mood_buf_puts(&sql, q.fts.len ? " ORDER BY bm25(styles_fts, 10, 4, 4, 1, 1, 2), "
                                              "s.name COLLATE mood_natural"
                                            : " ORDER BY s.name COLLATE mood_natural");
    if (!err)
        err = run_summaries(out, r, sql.data, args, n);
done:
    search_dispose(&q);
    mood_buf_dispose(&sql);
    return err;
}

/* ----- show --------------------------------------------------------------------------------- */

static void add_parsed(cJSON *o, const char *key, const char *json)
{
    cJSON *v = json ? cJSON_Parse(json) : NULL;
    if (v)
        cJSON_AddItemToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

static void add_column(cJSON *o, sqlite3_stmt *st, int i)
{
    const char *name = sqlite3_column_name(st, i);
    size_t n = strlen(name);
    int is_json = n > 5 && strcmp(name + n - 5, "_json") == 0;
    char key[64];
    /* stored JSON is shown as JSON, under the column's name without the suffix */
    snprintf(key, sizeof key, "%.*s", (int)(is_json ? n - 5 : n), name);
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        cJSON_AddNumberToObject(o, key, (double)sqlite3_column_int64(st, i));
        break;
    case SQLITE_FLOAT:
        cJSON_AddNumberToObject(o, key, sqlite3_column_double(st, i));
        break;
    case SQLITE_NULL:
        cJSON_AddNullToObject(o, key);
        break;
    default:
        if (is_json)
            add_parsed(o, key, col_text(st, i));
        else
            cJSON_AddStringToObject(o, key, col_text(st, i));
    }
}

/* Runs sql (parameter ?1 = id) and adds each row as an object (all columns) to arr; `fill`
 * adds computed fields. */
static int rows_json(mood_registry *r, cJSON *arr, const char *sql, long long id,
                     void (*fill)(mood_registry *, cJSON *, sqlite3_stmt *))
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, sql), rc = SQLITE_DONE;
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cJSON *o = cJSON_CreateObject();
        for (int i = 0; i < sqlite3_column_count(st); i++)
            add_column(o, st, i);
        if (fill)
            fill(r, o, st);
        cJSON_AddItemToArray(arr, o);
    }
    if (rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, "reading a style");
    sqlite3_finalize(st);
    return err;
}

static void add_blob_path(mood_registry *r, cJSON *o, const char *sha)
{
    char *path = NULL;
    if (sha && mood__blob_valid_hex(sha) && mood__blob_path(&path, r, sha) == 0)
        cJSON_AddStringToObject(o, "path", path);
    mood_free(path);
}

static void fill_adapter(mood_registry *r, cJSON *o, sqlite3_stmt *st)
{
    const char *sha = col_text(st, 0), *v3 = col_text(st, 1);
    char shortv3[13], autov2[11];
    cJSON *sources = cJSON_AddArrayToObject(o, "sources");
    snprintf(autov2, sizeof autov2, "%.10s", sha ? sha : "");
    cJSON_AddStringToObject(o, "autov2", autov2);
    if (v3) {
        snprintf(shortv3, sizeof shortv3, "%.12s", v3);
        cJSON_AddStringToObject(o, "autov3_short", shortv3);
    }
    add_blob_path(r, o, sha);
    (void)sources;
}

static void fill_preview(mood_registry *r, cJSON *o, sqlite3_stmt *st)
{
    add_blob_path(r, o, col_text(st, 0));
}

/* Sources of each adapter, added after the adapter rows are read. */
static int add_sources(mood_registry *r, cJSON *adapters)
{
    cJSON *a;
    int err = 0;
    cJSON_ArrayForEach(a, adapters)
    {
        sqlite3_stmt *st = NULL;
        cJSON *arr = cJSON_GetObjectItemCaseSensitive(a, "sources");
        const char *sha = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "sha256"));
        int rc;
        if ((err = mood__reg_prepare(r, &st,
                                     "SELECT kind, location, civitai_model_id AS model_id,"
                                     " civitai_version_id AS version_id,"
                                     " model_name, version_name, base_model, air, license, nsfw,"
                                     " nsfw_level, added_at, sidecar_json, civitai_info_json,"
                                     " permissions_json"
                                     " FROM sources WHERE adapter_sha256 = ?1 ORDER BY id")) != 0)
            break;
        mood__reg_bind_text(st, 1, sha);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            cJSON *o = cJSON_CreateObject();
            for (int i = 0; i < sqlite3_column_count(st); i++)
                add_column(o, st, i);
            cJSON_AddItemToArray(arr, o);
        }
        if (rc != SQLITE_DONE)
            err = mood__reg_sqlerr(r, rc, "reading sources");
        sqlite3_finalize(st);
        if (err)
            break;
    }
    return err;
}

static int style_fields(mood_registry *r, cJSON *o, long long id)
{
    cJSON *arr = cJSON_CreateArray(), *row;
    int err = rows_json(r, arr,
                        "SELECT name, description, notes, trigger_words, template, negative,"
                        " weight, created_at, updated_at, training_json FROM styles WHERE id = ?1",
                        id, NULL);
    row = cJSON_GetArrayItem(arr, 0);
    for (cJSON *c = row ? row->child : NULL; c; c = c->next)
        cJSON_AddItemToObject(o, c->string, cJSON_Duplicate(c, 1));
    cJSON_Delete(arr);
    return err;
}

int mood_registry_show_json(char **out, mood_registry *r, const char *name)
{
    cJSON *o, *tags, *adapters, *previews, *t;
    long long id;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(name);
    o = cJSON_CreateObject();
    if ((err = mood__reg_style_id(r, &id, name)) != 0 || (err = style_fields(r, o, id)) != 0)
        goto done;
    adapters = cJSON_AddArrayToObject(o, "adapters");
    err = rows_json(r, adapters,
                    "SELECT a.sha256, a.autov3, sa.unet_weight AS unet, sa.te_weight AS te, a.size,"
                    " a.family,"
                    " a.family_source, a.algorithm, a.rank, a.alpha, a.dtype, a.modules,"
                    " a.file_name, a.imported_at, a.trigger_words_json AS training_tags_json,"
                    " a.metadata_json"
                    " FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256"
                    " WHERE sa.style_id = ?1 ORDER BY sa.position",
                    id, fill_adapter);
    if (err || (err = add_sources(r, adapters)) != 0)
        goto done;
    tags = cJSON_CreateArray();
    if ((err = rows_json(r, tags, "SELECT tag FROM tags WHERE style_id = ?1 ORDER BY tag", id,
                         NULL)) != 0) {
        cJSON_Delete(tags);
        goto done;
    }
    t = cJSON_AddArrayToObject(o, "tags");
    for (cJSON *c = tags->child; c; c = c->next)
        cJSON_AddItemToArray(
            t, cJSON_CreateString(cJSON_GetStringValue(cJSON_GetObjectItem(c, "tag"))));
    cJSON_Delete(tags);
    previews = cJSON_AddArrayToObject(o, "previews");
    err = rows_json(r, previews,
                    "SELECT blob_sha256 AS sha256, media_type, origin, nsfw_level FROM previews"
                    " WHERE style_id = ?1 ORDER BY position, id",
                    id, fill_preview);
    if (!err)
        err = rows_json(r, cJSON_AddArrayToObject(o, "board"),
                        "SELECT blob_sha256 AS sha256, media_type, name, width, height FROM"
                        " style_files WHERE style_id = ?1 AND role = 'board' ORDER BY position, id",
                        id, fill_preview);
    if (!err)
        err = rows_json(r, cJSON_AddArrayToObject(o, "files"),
                        "SELECT blob_sha256 AS sha256, role, media_type, name, width, height FROM"
                        " style_files WHERE style_id = ?1 AND role <> 'board'"
                        " ORDER BY role, position, id",
                        id, fill_preview);
done:
    if (!err)
        return detach_json(out, o);
    cJSON_Delete(o);
    return err;
}

int mood_registry_style_by_hash(char **name_out, mood_registry *r, const char *hash)
{
    char prefix[72];
    sqlite3_stmt *st = NULL;
    size_t n;
    int err, rc;
    MOOD_ARG_NONNULL(name_out);
    *name_out = NULL;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(hash);
    if ((n = strlen(hash)) < 8 || n > 64)
        return mood_error_set(MOOD_EINVAL, "hash \"%s\": 8 to 64 hex digits expected", hash);
    for (size_t i = 0; i < n; i++) {
        if (!isxdigit((unsigned char)hash[i]))
            return mood_error_set(MOOD_EINVAL, "hash \"%s\": not hexadecimal", hash);
        prefix[i] = (char)tolower((unsigned char)hash[i]);
    }
    memcpy(prefix + n, "%", 2);
    /* The style that holds only this adapter (the one its import made) before compositions. */
    if ((err = mood__reg_prepare(r, &st,
                                 "SELECT s.name FROM styles s"
                                 " JOIN style_adapters sa ON sa.style_id = s.id"
                                 " JOIN adapters a ON a.sha256 = sa.adapter_sha256"
                                 " WHERE a.sha256 LIKE ?1 OR a.autov3 LIKE ?1"
                                 " ORDER BY (SELECT count(*) FROM style_adapters x"
                                 "           WHERE x.style_id = s.id), s.name LIMIT 1")) != 0)
        return err;
    if ((err = mood__reg_bind_text(st, 1, prefix)) == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW &&
            !(*name_out = mood_strdup((const char *)sqlite3_column_text(st, 0))))
            err = mood_error_nomem();
        else if (rc == SQLITE_DONE)
            err = mood_error_set(MOOD_ENOTFOUND, "no LoRA with hash %s in the registry %s", hash,
                                 r->home);
        else if (rc != SQLITE_ROW)
            err = mood__reg_sqlerr(r, rc, "looking a hash up");
    }
    sqlite3_finalize(st);
    return err;
}
