/*
 * edit.c: changing the registry: style create/edit, rename, tags, rm.
 *
 * A style's adapters are all made for one base family (an adapter of unknown family goes with
 * any): create and edit refuse a mix with MOOD_EFAMILY, naming the files and their families.
 *
 * Removing a style removes, in the same transaction, its adapters and previews that no other
 * style uses; their blobs are deleted afterwards in a second transaction that checks again that
 * nothing (no row, no import in progress) refers to them. A crash between the two leaves an
 * orphan blob that `mood doctor` reports, never a row without its file.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/args.h"
#include "engine/unicode_tables.h"
#include "registry/registry_impl.h"

#define TAG_MAX 64

static int exec_id(mood_registry *r, const char *sql, long long id, const char *what)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, sql);
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, id);
    return mood__reg_step_done(r, st, what);
}

static int name_free(mood_registry *r, const char *name)
{
    long long taken = 0;
    char *suggestion = NULL;
    int err = mood__reg_query_int(r, &taken, "SELECT count(*) FROM styles WHERE name = ?1", name);
    if (err || !taken)
        return err;
    if ((err = mood_registry_name_suggest(&suggestion, r, name)) != 0)
        return err;
    err = mood_error_set(MOOD_EINVAL,
                         "a style named '%s' exists already (names are compared without case); "
                         "try '%s'",
                         name, suggestion);
    mood_free(suggestion);
    return err;
}

/* The name check's message plus a suggestion. */
static int valid_name(mood_registry *r, const char *name)
{
    char *suggestion = NULL, *why;
    int err = mood_registry_name_check(name);
    if (!err)
        return 0;
    /* copy: the message buffer is rewritten by the next mood_error_set */
    if (!(why = mood_strdup(mood_error_last())))
        return mood_error_nomem();
    if (mood_registry_name_suggest(&suggestion, r, name) == 0)
        mood_error_set(err, "%s; try '%s'", why, suggestion);
    else
        mood_error_set(err, "%s", why);
    mood_free(suggestion);
    mood_free(why);
    return err;
}

/* A change to an existing style where there is no registry (a mistyped MOOD_HOME): the style
 * cannot be there, and the change's BEGIN IMMEDIATE, a write, would create an empty registry in
 * that folder before the style was found missing. Refused before it, creating nothing. (A folder
 * whose registry.db is gone but whose blobs remain gets the lookup's own message.) */
static int style_must_exist(mood_registry *r, const char *name, const char *change)
{
    size_t blobs = 0;
    long long id;
    if (!r->absent)
        return 0;
    if (mood__reg_count_blobs(r, &blobs) != 0 || blobs > 0)
        return mood__reg_style_id(r, &id, name);
    return mood_error_set(MOOD_ENOTFOUND,
                          "no registry at %s (MOOD_HOME): no style '%s' to %s; nothing was "
                          "created ('mood import FILE' or 'mood train' creates a registry)",
                          r->home, name, change);
}

/* ----- create / edit ------------------------------------------------------------------------ */

static int set_text(mood_registry *r, long long id, const char *column, const char *value)
{
    char sql[160];
    sqlite3_stmt *st = NULL;
    int err;
    snprintf(sql, sizeof sql,
             "UPDATE styles SET %s = ?2, updated_at = strftime('%%Y-%%m-%%dT%%H:%%M:%%SZ','now')"
             " WHERE id = ?1",
             column);
    if ((err = mood__reg_prepare(r, &st, sql)) != 0)
        return err;
    sqlite3_bind_int64(st, 1, id);
    mood__reg_bind_text(st, 2, value[0] ? value : NULL);
    return mood__reg_step_done(r, st, "changing the style");
}

/* What a stored adapter is called in messages, and its base family ("" when unknown or when
 * there is no such adapter: set_loras reports that). */
typedef struct lora_family {
    char file[128];
    char family[16];
} lora_family;

static int family_of(mood_registry *r, const char *sha256, lora_family *out)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, "SELECT family, file_name FROM adapters WHERE sha256 = ?1"),
        rc;
    memset(out, 0, sizeof *out);
    if (err)
        return err;
    mood__reg_bind_text(st, 1, sha256);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *f = (const char *)sqlite3_column_text(st, 0);
        const char *file = (const char *)sqlite3_column_text(st, 1);
        if (f && strcmp(f, "unknown") != 0)
            snprintf(out->family, sizeof out->family, "%s", f);
        if (file && *file)
            snprintf(out->file, sizeof out->file, "%s", file);
        else
            snprintf(out->file, sizeof out->file, "adapter %.12s", sha256);
    } else if (rc != SQLITE_DONE) {
        err = mood__reg_sqlerr(r, rc, "reading an adapter");
    }
    sqlite3_finalize(st);
    return err;
}

int mood__reg_check_families(mood_registry *r, const mood_style_lora *loras, size_t n)
{
    lora_family first = {{0}, {0}}, other;
    int err = 0;
    for (size_t i = 0; !err && i < n; i++) {
        if ((err = family_of(r, loras[i].sha256, &other)) != 0 || !other.family[0])
            continue;
        if (!first.family[0])
            first = other;
        else if (strcmp(first.family, other.family) != 0)
            err = mood_error_set(MOOD_EFAMILY,
                                 "LoRAs for different base families: %s is for %s but %s is for "
                                 "%s; a style's LoRAs must all be made for one base model",
                                 first.file, first.family, other.file, other.family);
    }
    return err;
}

/* A LoRA that `style edit` took out of its last style gets a style of its own again, named after
 * its file as an import names it: a LoRA in no style is listed nowhere, and the registry may
 * hold its only copy (a Civitai download, a pack). `mood rm` of that style deletes it. */
static int keep_in_a_style(mood_registry *r, const char *sha, const char *left)
{
    sqlite3_stmt *st = NULL;
    char stem[128], *name = NULL, *file = NULL;
    long long used = 0;
    int err = mood__reg_query_int(
        r, &used, "SELECT count(*) FROM style_adapters WHERE adapter_sha256 = ?1", sha);
    if (err || used)
        return err;
    if ((err = mood__reg_prepare(r, &st, "SELECT file_name FROM adapters WHERE sha256 = ?1")) != 0)
        return err;
    mood__reg_bind_text(st, 1, sha);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        file = mood_strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    /* the file's stem, made a valid free name as an import makes it (name_suggest sanitizes) */
    snprintf(stem, sizeof stem, "%.*s",
             file && strrchr(file, '.') ? (int)(strrchr(file, '.') - file) : 100,
             file ? file : sha);
    if ((err = mood_registry_name_suggest(&name, r, stem)) == 0 &&
        (err = mood__reg_prepare(r, &st,
                                 "INSERT INTO styles(name, created_at, updated_at) VALUES (?1,"
                                 " strftime('%Y-%m-%dT%H:%M:%SZ','now'),"
                                 " strftime('%Y-%m-%dT%H:%M:%SZ','now'))")) == 0) {
        mood__reg_bind_text(st, 1, name);
        err = mood__reg_step_done(r, st, "giving a LoRA its own style");
    }
    if (!err && (err = mood__reg_prepare(r, &st,
                                         "INSERT INTO style_adapters(style_id, adapter_sha256,"
                                         " unet_weight, te_weight, position) VALUES (?1, ?2, 1,"
                                         " 1, 0)")) == 0) {
        sqlite3_bind_int64(st, 1, sqlite3_last_insert_rowid(r->db));
        mood__reg_bind_text(st, 2, sha);
        err = mood__reg_step_done(r, st, "giving a LoRA its own style");
    }
    if (!err)
        mood_log(MOOD_LOG_WARN,
                 "%s left style '%s' and no other style uses it: it is style '%s' now (as "
                 "imported; 'mood rm %s' deletes it)",
                 file ? file : sha, left, name, name);
    mood_free(file);
    mood_registry_free_string(name);
    return err;
}

/* The name of style id (mood_malloc'd). */
static int style_name(mood_registry *r, long long id, char **out)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, "SELECT name FROM styles WHERE id = ?1");
    *out = NULL;
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) &&
        !(*out = mood_strdup((const char *)sqlite3_column_text(st, 0))))
        err = mood_error_nomem();
    sqlite3_finalize(st);
    return err;
}

static int set_loras(mood_registry *r, long long id, const mood_style_spec *s)
{
    mood_buf before;
    char *name = NULL;
    int err = mood__reg_check_families(r, s->loras, s->n_loras);
    mood_buf_init(&before);
    if (!err)
        err = mood__reg_collect_shas(
            r, "SELECT adapter_sha256 FROM style_adapters WHERE style_id = ?1", id, &before,
            "reading the style's LoRAs");
    if (!err)
        err = exec_id(r, "DELETE FROM style_adapters WHERE style_id = ?1", id, "changing adapters");
    for (size_t i = 0; !err && i < s->n_loras; i++) {
        sqlite3_stmt *st = NULL;
        long long known = 0;
        const mood_style_lora *l = &s->loras[i];
        if ((err = mood__reg_query_int(r, &known, "SELECT count(*) FROM adapters WHERE sha256 = ?1",
                                       l->sha256)) != 0)
            break;
        if (!known) {
            err = mood_error_set(MOOD_ENOTFOUND, "adapter %.12s is not in the registry", l->sha256);
            break;
        }
        if (!isfinite(l->unet) || !isfinite(l->te)) {
            err = mood_error_set(MOOD_EINVAL, "adapter weights must be finite numbers");
            break;
        }
        if ((err = mood__reg_prepare(r, &st,
                                     "INSERT INTO style_adapters(style_id, adapter_sha256,"
                                     " unet_weight, te_weight, position) VALUES (?1,?2,?3,?4,?5)")))
            break;
        sqlite3_bind_int64(st, 1, id);
        mood__reg_bind_text(st, 2, l->sha256);
        sqlite3_bind_double(st, 3, l->unet);
        sqlite3_bind_double(st, 4, l->te);
        sqlite3_bind_int(st, 5, (int)i);
        err = mood__reg_step_done(r, st, "linking an adapter");
    }
    if (!err && before.len && (err = style_name(r, id, &name)) == 0) {
        for (size_t at = 0; !err && at + 64 <= before.len; at += 64) {
            char sha[65];
            memcpy(sha, before.data + at, 64);
            sha[64] = '\0';
            err = keep_in_a_style(r, sha, name);
        }
    }
    mood_free(name);
    mood_buf_dispose(&before);
    return err;
}

/* Before anything is written: the fields are shown in --json reports, which must stay JSON. */
static int check_spec_text(const mood_style_spec *s)
{
    int err;
    if ((err = mood__reg_text_check(s->trigger_words, "trigger words")) != 0 ||
        (err = mood__reg_text_check(s->template_text, "template")) != 0 ||
        (err = mood__reg_text_check(s->negative, "negative prompt")) != 0)
        return err;
    if ((err = mood__reg_text_check(s->description, "description")) != 0)
        return err;
    return mood__reg_text_check(s->notes, "notes");
}

static int apply_spec(mood_registry *r, long long id, const mood_style_spec *s)
{
    int err = check_spec_text(s);
    if (err)
        return err;
    if (s->trigger_words && (err = set_text(r, id, "trigger_words", s->trigger_words)) != 0)
        return err;
    if (s->template_text && !strstr(s->template_text, "{prompt}") && s->template_text[0])
        return mood_error_set(MOOD_EINVAL,
                              "template '%s' has no {prompt}: it must say where the prompt goes, "
                              "e.g. \"{prompt}, ink wash painting\"",
                              s->template_text);
    if (s->template_text && (err = set_text(r, id, "template", s->template_text)) != 0)
        return err;
    if (s->negative && (err = set_text(r, id, "negative", s->negative)) != 0)
        return err;
    if (s->description && (err = set_text(r, id, "description", s->description)) != 0)
        return err;
    if (s->notes && (err = set_text(r, id, "notes", s->notes)) != 0)
        return err;
    if (s->has_weight) {
        sqlite3_stmt *st = NULL;
        if (!isnan(s->weight) && (!isfinite(s->weight) || s->weight < -10 || s->weight > 10))
            return mood_error_set(MOOD_EINVAL, "weight %g: expected a number from -10 to 10",
                                  s->weight);
        if ((err = mood__reg_prepare(r, &st, "UPDATE styles SET weight = ?2 WHERE id = ?1")) != 0)
            return err;
        sqlite3_bind_int64(st, 1, id);
        if (isnan(s->weight)) /* cleared: null, as an imported style without a preferred one */
            sqlite3_bind_null(st, 2);
        else
            sqlite3_bind_double(st, 2, s->weight);
        if ((err = mood__reg_step_done(r, st, "changing the weight")) != 0)
            return err;
    }
    if (s->loras)
        err = set_loras(r, id, s);
    return err;
}

int mood_registry_style_create(mood_registry *r, const char *name, const mood_style_spec *spec)
{
    sqlite3_stmt *st = NULL;
    int err;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(name);
    MOOD_ARG_NONNULL(spec);
    if ((err = valid_name(r, name)) != 0)
        return err;
    if (!spec->loras || spec->n_loras == 0)
        return mood_error_set(MOOD_EINVAL, "style '%s' needs at least one LoRA (--lora)", name);
    if ((err = mood__reg_begin(r)) != 0)
        return err;
    if ((err = name_free(r, name)) != 0 ||
        (err = mood__reg_prepare(r, &st,
                                 "INSERT INTO styles(name, created_at, updated_at) VALUES (?1,"
                                 " strftime('%Y-%m-%dT%H:%M:%SZ','now'),"
                                 " strftime('%Y-%m-%dT%H:%M:%SZ','now'))")) != 0)
        goto done;
    mood__reg_bind_text(st, 1, name);
    if ((err = mood__reg_step_done(r, st, "creating the style")) != 0)
        goto done;
    err = apply_spec(r, sqlite3_last_insert_rowid(r->db), spec);
done:
    if (!err)
        err = mood__reg_commit(r);
    if (err)
        mood__reg_rollback(r);
    return err;
}

int mood_registry_style_edit(mood_registry *r, const char *name, const mood_style_spec *spec)
{
    long long id;
    int err;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(name);
    MOOD_ARG_NONNULL(spec);
    if (spec->loras && spec->n_loras == 0)
        return mood_error_set(MOOD_EINVAL, "style '%s' needs at least one LoRA", name);
    if ((err = style_must_exist(r, name, "edit")) != 0 || (err = mood__reg_begin(r)) != 0)
        return err;
    if ((err = mood__reg_style_id(r, &id, name)) == 0 && (err = apply_spec(r, id, spec)) == 0)
        err = mood__reg_commit(r);
    if (err)
        mood__reg_rollback(r);
    return err;
}

int mood_registry_style_loras(mood_style_lora **out, size_t *n_out, mood_registry *r,
                              const char *name)
{
    sqlite3_stmt *st = NULL;
    long long id, n = 0;
    int err, rc;
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(n_out);
    *out = NULL;
    *n_out = 0;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(name);
    if ((err = mood__reg_style_id(r, &id, name)) != 0)
        return err;
    {
        char idtext[32];
        snprintf(idtext, sizeof idtext, "%lld", id);
        if ((err = mood__reg_query_int(r, &n,
                                       "SELECT count(*) FROM style_adapters WHERE style_id"
                                       " = CAST(?1 AS INTEGER)",
                                       idtext)) != 0)
            return err;
    }
    /* one block: the array, then the 65-byte SHA strings */
    if (!(*out = mood_calloc((size_t)n ? (size_t)n : 1, sizeof **out + 65)))
        return mood_error_nomem();
    char *strings = (char *)(*out + n);
    if ((err = mood__reg_prepare(r, &st,
                                 "SELECT adapter_sha256, unet_weight, te_weight FROM style_adapters"
                                 " WHERE style_id = ?1 ORDER BY position")) != 0)
        goto done;
    sqlite3_bind_int64(st, 1, id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n_out < (size_t)n) {
        char *sha = strings + 65 * *n_out;
        snprintf(sha, 65, "%s", (const char *)sqlite3_column_text(st, 0));
        (*out)[*n_out] =
            (mood_style_lora){sha, sqlite3_column_double(st, 1), sqlite3_column_double(st, 2)};
        (*n_out)++;
    }
done:
    sqlite3_finalize(st);
    if (err) {
        mood_free(*out);
        *out = NULL;
        *n_out = 0;
    }
    return err;
}

/* ----- rename and tags ------------------------------------------------------------------------ */

int mood_registry_rename(mood_registry *r, const char *old_name, const char *new_name)
{
    long long id;
    sqlite3_stmt *st = NULL;
    int err;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(old_name);
    MOOD_ARG_NONNULL(new_name);
    if ((err = valid_name(r, new_name)) != 0 ||
        (err = style_must_exist(r, old_name, "rename")) != 0 || (err = mood__reg_begin(r)) != 0)
        return err;
    if ((err = mood__reg_style_id(r, &id, old_name)) != 0)
        goto done;
    /* a change of case only is allowed: the name is free except for this style */
    if (strcasecmp(old_name, new_name) != 0 && (err = name_free(r, new_name)) != 0)
        goto done;
    if ((err = mood__reg_prepare(r, &st,
                                 "UPDATE styles SET name = ?2, updated_at ="
                                 " strftime('%Y-%m-%dT%H:%M:%SZ','now') WHERE id = ?1")))
        goto done;
    sqlite3_bind_int64(st, 1, id);
    mood__reg_bind_text(st, 2, new_name);
    err = mood__reg_step_done(r, st, "renaming the style");
done:
    if (!err)
        err = mood__reg_commit(r);
    if (err)
        mood__reg_rollback(r);
    return err;
}

/* Spaces, invisible separators and control characters outside ASCII: a tag holding one looks
 * like two words, or like another tag, and search cannot find it (the zero-width joiner of emoji
 * sequences is allowed). */
static int is_unicode_space(uint32_t c)
{
    return (c >= 0x80 && c <= 0xA0) || c == 0x1680 || (c >= 0x2000 && c <= 0x200B) || c == 0x200E ||
           c == 0x200F || (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x2064) ||
           c == 0x3000 || c == 0xFEFF;
}

static int valid_tag(const char *tag)
{
    size_t n = strlen(tag);
    int err = mood__reg_text_check(tag, "tag");
    if (err)
        return err;
    if (n == 0 || n > TAG_MAX)
        return mood_error_set(MOOD_EINVAL, "tag '%s': expected 1 to %d characters", tag, TAG_MAX);
    for (size_t i = 0; i < n;) {
        uint32_t c = (unsigned char)tag[i];
        size_t len = mood__utf8_decode((const unsigned char *)tag + i, n - i, &c);
        if (c <= ' ' || c == ',' || c == 0x7f || is_unicode_space(c))
            return mood_error_set(MOOD_EINVAL,
                                  "tag '%s': spaces, commas and control characters are not allowed "
                                  "(use '-' or '_' between words)",
                                  tag);
        i += len ? len : 1;
    }
    return 0;
}

int mood__reg_tag_usable(const char *tag)
{
    int ok = valid_tag(tag) == 0;
    mood_error_clear();
    return ok;
}

/* The tag as stored ('#' dropped: a hashtag's '#' is how tags are shown), or NULL with the
 * error set. */
static const char *stored_tag(const char *tag, int add)
{
    if (tag[0] == '#')
        tag++;
    if (tag[0] == '#' || (!tag[0] && add)) {
        mood_error_set(MOOD_EINVAL, "tag '#%s': a tag needs a word after its one '#'", tag);
        return NULL;
    }
    return valid_tag(tag) == 0 ? tag : NULL;
}

/* Applies n tag changes to style `name` in one transaction (tags and adds in pairs). */
static int edit_tags(mood_registry *r, const char *name, const char *const *tags, const int *adds,
                     size_t n)
{
    long long id;
    int err;
    for (size_t i = 0; i < n; i++) {
        if (!stored_tag(tags[i], adds[i]))
            return MOOD_EINVAL;
    }
    if ((err = style_must_exist(r, name, "tag")) != 0 || (err = mood__reg_begin(r)) != 0)
        return err;
    err = mood__reg_style_id(r, &id, name);
    for (size_t i = 0; i < n && !err; i++) {
        sqlite3_stmt *st = NULL;
        if ((err = mood__reg_prepare(
                 r, &st, adds[i] ? MOOD__REG_ADD_TAG_SQL : MOOD__REG_REMOVE_TAG_SQL)) != 0)
            break;
        sqlite3_bind_int64(st, 1, id);
        mood__reg_bind_text(st, 2, stored_tag(tags[i], adds[i]));
        err = mood__reg_step_done(r, st, "changing tags");
    }
    if (!err) /* tags are part of the style: show's updated_at moves */
        err = exec_id(r,
                      "UPDATE styles SET updated_at = strftime('%Y-%m-%dT%H:%M:%SZ','now')"
                      " WHERE id = ?1",
                      id, "changing tags");
    if (!err)
        err = mood__reg_commit(r);
    if (err)
        mood__reg_rollback(r);
    return err;
}

int mood_registry_tag(mood_registry *r, const char *name, const char *tag, int add)
{
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(name);
    MOOD_ARG_NONNULL(tag);
    return edit_tags(r, name, &tag, &add, 1);
}

int mood_registry_tags(mood_registry *r, const char *name, const char *const *changes, size_t n)
{
    const char **tags;
    int *adds, err;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(name);
    MOOD_ARG_NONNULL(changes);
    tags = mood_calloc(n ? n : 1, sizeof *tags);
    adds = mood_calloc(n ? n : 1, sizeof *adds);
    err = tags && adds ? 0 : mood_error_nomem();
    for (size_t i = 0; i < n && !err; i++) {
        if (!changes[i] || (changes[i][0] != '+' && changes[i][0] != '-'))
            err = mood_error_set(MOOD_EINVAL, "tag change '%s': write +TAG to add, -TAG to remove",
                                 changes[i] ? changes[i] : "(null)");
        else {
            tags[i] = changes[i] + 1;
            adds[i] = changes[i][0] == '+';
        }
    }
    if (!err)
        err = edit_tags(r, name, tags, adds, n);
    mood_free(tags);
    mood_free(adds);
    return err;
}

/* ----- rm ---------------------------------------------------------------------------------- */

/* SHA-256s (64 chars each, concatenated) of the style's adapters, previews and files. */
static int collect_shas(mood_registry *r, long long id, mood_buf *shas)
{
    return mood__reg_collect_shas(r,
                                  "SELECT adapter_sha256 FROM style_adapters WHERE style_id = ?1"
                                  " UNION SELECT blob_sha256 FROM previews WHERE style_id = ?1"
                                  " UNION SELECT blob_sha256 FROM style_files WHERE style_id = ?1",
                                  id, shas, "reading the style");
}

/* Runs sql with ?1 = sha, ?2 = key, ?3 = this process's id, as far as sql uses them. */
static int exec_sha(mood_registry *r, const char *sql, const char *sha, const char *key)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, sql), n;
    if (err)
        return err;
    n = sqlite3_bind_parameter_count(st);
    if (n >= 1)
        mood__reg_bind_text(st, 1, sha);
    if (n >= 2)
        mood__reg_bind_text(st, 2, key);
    if (n >= 3)
        sqlite3_bind_int64(st, 3, (sqlite3_int64)getpid());
    return mood__reg_step_done(r, st, "removing the style");
}

/* The style's rows, and the rows of its LoRAs that no other style uses (only what this style
 * held goes). Every blob
 * the style held gets a journal row (imports_in_progress, "KEY-N") in the same transaction: if
 * the process dies before its files are deleted, the next open's clean-up (blob.c) deletes those
 * nothing uses, where they would otherwise stay behind as orphans. */
static int delete_rows(mood_registry *r, long long id, const mood_buf *shas, const char *key)
{
    int err = exec_id(r, "DELETE FROM styles WHERE id = ?1", id, "removing the style");
    /* cascades removed style_adapters, tags, previews and files */
    for (size_t at = 0; !err && at + 64 <= shas->len; at += 64) {
        char sha[65], name[128];
        memcpy(sha, shas->data + at, 64);
        sha[64] = '\0';
        snprintf(name, sizeof name, "%s-%zu", key, at / 64);
        err = exec_sha(r,
                       "DELETE FROM adapters WHERE sha256 = ?1 AND"
                       " NOT EXISTS (SELECT 1 FROM style_adapters WHERE adapter_sha256 = ?1)",
                       sha, name);
        if (!err)
            err = exec_sha(r,
                           "INSERT OR REPLACE INTO imports_in_progress(tmp_name, sha256, pid,"
                           " started_at) VALUES (?2, ?1, ?3, strftime('%Y-%m-%dT%H:%M:%SZ','now'))",
                           sha, name);
    }
    return err;
}

int mood_registry_rm(mood_registry *r, const char *name)
{
    static atomic_uint counter;
    mood_buf shas;
    char key[64], like[80];
    long long id;
    int err, deleted;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(name);
    mood_buf_init(&shas);
    snprintf(key, sizeof key, "rm-%ld-%u", (long)getpid(), atomic_fetch_add(&counter, 1));
    snprintf(like, sizeof like, "%s-%%", key);
    if ((err = style_must_exist(r, name, "remove")) != 0 || (err = mood__reg_begin(r)) != 0)
        return err;
    if ((err = mood__reg_style_id(r, &id, name)) != 0 || (err = collect_shas(r, id, &shas)) != 0 ||
        (err = delete_rows(r, id, &shas, key)) != 0 || (err = mood__reg_commit(r)) != 0)
        goto done;
    /* the journal rows go in the transaction that deletes the files (a blob is in use while a
     * journal row names it) */
    if ((err = mood__reg_begin(r)) != 0 ||
        (err = exec_sha(r, "DELETE FROM imports_in_progress WHERE tmp_name LIKE ?2", NULL, like)) !=
            0)
        goto done;
    for (size_t at = 0; !err && at + 64 <= shas.len; at += 64) {
        char sha[65];
        memcpy(sha, shas.data + at, 64);
        sha[64] = '\0';
        err = mood__blob_delete_if_unused(r, sha, &deleted);
    }
    if (!err)
        err = mood__reg_commit(r);
    if (err) { /* the style is gone (committed); its journal rows free the files at next open */
        mood__reg_rollback(r);
        mood_log(MOOD_LOG_WARN,
                 "%s removed, but its stored files could not be deleted yet (%s); the next "
                 "mood command that opens the registry deletes them",
                 name, mood_error_last());
        mood_error_clear();
        err = 0;
    }
done:
    if (err)
        mood__reg_rollback(r);
    mood_buf_dispose(&shas);
    return err;
}
