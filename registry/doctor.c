/*
 * doctor.c: `mood doctor`: is the registry whole?
 *   - SQLite's integrity_check (and the FTS5 index's own check);
 *   - rows (adapters, previews, style files) whose blob file is missing ("missing");
 *   - files under blobs/sha256 that no row uses ("orphans"), and stray files there whose name is
 *     not a SHA-256;
 *   - with --deep, every referenced blob re-hashed against its name ("corrupt").
 * Every lost adapter (missing or corrupt) is reported with its file name, where it was imported
 * from, and the styles that use it; the report's "styles" says, per style, what --fix does.
 * A stored file that is there but cannot be read (permissions, an I/O error) is "unreadable":
 * reported with the reason, never counted as missing or damaged, and never touched by --fix. An
 * adapter's file whose size differs from the stored one is re-hashed: damaged when its content is
 * not its SHA-256, else intact under a wrong record ("wrong_size"), which --fix corrects (the
 * file may be the only copy of a LoRA: a damaged database row must not cost it).
 * With --fix: orphans are deleted, but those holding a LoRA are moved to HOME/blobs/lost+found/
 * (they may be the only copy); a lost adapter's row goes (and a corrupt blob with it). A style
 * that keeps other adapters only loses the lost ones: a combined style (style create/edit) keeps
 * its other LoRAs, template, negative prompt and weights. A style left with no adapter is removed,
 * because a style needs at least one (style create and edit refuse zero), and the report names
 * it; importing the file again brings a style that was just that LoRA back. Previews and style
 * files whose blob is missing or corrupt are removed, the FTS index is rebuilt, and blobs that
 * only removed styles used are deleted, so that the next run finds no new orphans.
 * Checks and fixes run under the exclusive registry lock, so no import is half-way meanwhile; the
 * styles to change are worked out again inside the transaction that changes them.
 * A registry.db that is missing or holds no rows while blobs/ holds files has lost its database,
 * not its files: every stored file would look like an orphan, and for a LoRA that came from a
 * pack or a URL it may be the only copy. That is reported as one problem; --fix refuses.
 * The reverse, every stored file missing while rows refer to them, is a blob folder on a drive
 * that is not mounted (or moved): --fix refuses too, as it would remove every style. A lost
 * LoRA whose original file is still where it was imported from, with the same SHA-256, is
 * stored again by --fix (as importing it again would) instead of being removed.
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/args.h"
#include "mood/hash.h"
#include "mood/safetensors.h"
#include "registry/registry_impl.h"

typedef struct doctor {
    mood_registry *r;
    const mood_doctor_options *o;
    cJSON *report, *missing, *orphans, *corrupt;
    cJSON *unreadable; /* [{sha256, kind, path, error}]: there but not readable: never fixed */
    cJSON *rescued;    /* [{path, to}]: orphan LoRA files --fix moved to lost+found/ */
    cJSON *wrong_size; /* [{sha256, path, stored_size, size, fixed}]: intact file, wrong row */
    cJSON *styles;   /* [{name, action, loras, kept, lost [{sha256, file_name, problem}], fixed}] */
    cJSON *restored; /* [{sha256, path, file_name, from}]: lost LoRAs --fix stored again from
                        the file they were imported from (still there, the same bytes) */
    mood_buf freed;  /* SHA-256s (64 characters each) of the previews and files of removed styles */
    int problems, fixed;
    long long referenced; /* stored files rows refer to */
} doctor;

static int check_integrity(doctor *d)
{
    sqlite3_stmt *st = NULL;
    cJSON *msgs = cJSON_AddArrayToObject(d->report, "integrity");
    int err = mood__reg_prepare(d->r, &st, "PRAGMA integrity_check"), rc;
    if (err)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *m = (const char *)sqlite3_column_text(st, 0);
        if (m && strcmp(m, "ok") != 0) {
            cJSON_AddItemToArray(msgs, cJSON_CreateString(m));
            d->problems++;
        }
    }
    if (rc != SQLITE_DONE)
        err = mood__reg_sqlerr(d->r, rc, "integrity check");
    sqlite3_finalize(st);
    /* the search index's own check is an INSERT: a read-only registry cannot run it */
    if (!err && !d->r->readonly &&
        sqlite3_exec(d->r->db, "INSERT INTO styles_fts(styles_fts) VALUES('integrity-check')", NULL,
                     NULL, NULL) != SQLITE_OK) {
        cJSON_AddItemToArray(msgs, cJSON_CreateString("search index out of sync"));
        d->problems++;
        if (d->o->fix && mood__reg_exec(d->r, "INSERT INTO styles_fts(styles_fts) VALUES('rebuild')"
                                              "") == 0)
            d->fixed++;
    }
    return err;
}

/* SHA-256 of a blob file into hex; -1 (errno set) when it cannot be read. */
static int hash_blob(char hex[65], const char *path)
{
    mood_file_hashes h;
    int err = mood_hash_file(&h, path, NULL, NULL);
    hex[0] = '\0';
    if (!err)
        memcpy(hex, h.sha256, 65);
    mood_error_clear();
    if (err && !errno)
        errno = EIO;
    return err ? -1 : 0;
}

/* What is wrong with a referenced blob at path: NULL (nothing), "missing", "unreadable" (with
 * *why), "corrupt": its content does not hash to its name (checked when its size is not the
 * stored one, `size`, -1 unknown, and for every file with --deep), or "wrong_size": its size is
 * not the stored one but its content is intact (*actual gets its size). A file that is there but
 * cannot be read (permissions, an I/O error) is not damaged: it is reported, and --fix leaves it
 * alone. */
static const char *blob_problem(doctor *d, const char *path, const char *sha, long long size,
                                const char **why, long long *actual)
{
    struct stat sb;
    char hex[65];
    *why = NULL;
    if (stat(path, &sb) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return "missing";
        *why = strerror(errno);
        return "unreadable";
    }
    if (access(path, R_OK) != 0) {
        *why = strerror(errno);
        return "unreadable";
    }
    *actual = (long long)sb.st_size;
    int wrong_size = size >= 0 && (long long)sb.st_size != size;
    if (!wrong_size && !d->o->deep)
        return NULL;
    if (hash_blob(hex, path) != 0) {
        *why = strerror(errno);
        return "unreadable";
    }
    if (strcmp(hex, sha) != 0)
        return "corrupt";
    return wrong_size ? "wrong_size" : NULL;
}

/* A lost adapter's file name and where it was first imported from: what to import again. */
static int describe_adapter(doctor *d, cJSON *item, const char *sha)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(d->r, &st,
                                "SELECT file_name, (SELECT location FROM sources WHERE"
                                " adapter_sha256 = ?1 ORDER BY id LIMIT 1)"
                                " FROM adapters WHERE sha256 = ?1"),
        rc;
    if (err)
        return err;
    mood__reg_bind_text(st, 1, sha);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *from = (const char *)sqlite3_column_text(st, 1);
        cJSON_AddItemToObject(item, "file_name",
                              name ? cJSON_CreateString(name) : cJSON_CreateNull());
        cJSON_AddItemToObject(item, "imported_from",
                              from ? cJSON_CreateString(from) : cJSON_CreateNull());
    } else if (rc != SQLITE_DONE) {
        err = mood__reg_sqlerr(d->r, rc, "reading an adapter");
    }
    sqlite3_finalize(st);
    return err;
}

/* Every referenced blob: present? (deep: intact?) Problems are listed as {sha256, kind, path};
 * adapters also with {file_name, imported_from}. */
static int check_referenced(doctor *d)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(d->r, &st,
                                "SELECT sha256, 'adapter', size FROM adapters"
                                " UNION SELECT blob_sha256, 'preview', NULL FROM previews"
                                " UNION SELECT blob_sha256, role, NULL FROM style_files"),
        rc;
    if (err)
        return err;
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *sha = (const char *)sqlite3_column_text(st, 0);
        const char *kind = (const char *)sqlite3_column_text(st, 1), *problem, *why;
        long long size =
            sqlite3_column_type(st, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 2);
        long long actual = -1;
        char *path = NULL;
        cJSON *item = NULL;
        if (!sha || !mood__blob_valid_hex(sha) || (err = mood__blob_path(&path, d->r, sha)) != 0)
            continue;
        d->referenced++;
        problem = blob_problem(d, path, sha, size, &why, &actual);
        if (problem && strcmp(problem, "wrong_size") == 0) {
            item = cJSON_CreateObject();
            cJSON_AddStringToObject(item, "sha256", sha);
            cJSON_AddStringToObject(item, "path", path);
            cJSON_AddNumberToObject(item, "stored_size", (double)size);
            cJSON_AddNumberToObject(item, "size", (double)actual);
            cJSON_AddBoolToObject(item, "fixed", 0);
            cJSON_AddItemToArray(d->wrong_size, item);
            d->problems++;
            mood_free(path);
            continue;
        }
        if (problem) {
            item = cJSON_CreateObject();
            cJSON_AddItemToArray(strcmp(problem, "missing") == 0   ? d->missing
                                 : strcmp(problem, "corrupt") == 0 ? d->corrupt
                                                                   : d->unreadable,
                                 item);
        }
        if (item) {
            cJSON_AddStringToObject(item, "sha256", sha);
            cJSON_AddStringToObject(item, "kind", kind);
            cJSON_AddStringToObject(item, "path", path);
            if (why)
                cJSON_AddStringToObject(item, "error", why);
            if (strcmp(kind, "adapter") == 0)
                err = describe_adapter(d, item, sha);
            d->problems++;
        }
        mood_free(path);
    }
    if (!err && rc != SQLITE_DONE)
        err = mood__reg_sqlerr(d->r, rc, "reading the blobs");
    sqlite3_finalize(st);
    return err;
}

static int is_used(doctor *d, const char *sha, int *used)
{
    long long n = 0;
    int err = mood__reg_query_int(d->r, &n,
                                  "SELECT (SELECT count(*) FROM adapters WHERE sha256 = ?1) +"
                                  " (SELECT count(*) FROM previews WHERE blob_sha256 = ?1) +"
                                  " (SELECT count(*) FROM style_files WHERE blob_sha256 = ?1)",
                                  sha);
    *used = n > 0;
    return err;
}

/* An orphan that holds a LoRA (a safetensors file) may be the only copy of one whose row was
 * lost (a registry.db restored from an old backup, or lost and then imported into again): --fix
 * moves it to blobs/lost+found/SHA256.safetensors (beside blobs/sha256, so on its file system),
 * where 'mood import' takes it back, instead of deleting it. Anything else (a preview, a stray
 * file) is deleted. Best effort, as the rest of the repair must go on: an orphan that cannot be
 * read, moved or deleted stays, with a warning. Returns 1 when it was dealt with. */
static int fix_orphan(doctor *d, const char *path, const char *name)
{
    mood_st_file *f = NULL;
    mood_buf dir, to;
    int moved = 0;
    if (access(path, R_OK) != 0) { /* unknown content: a LoRA, perhaps */
        mood_log(MOOD_LOG_WARN, "%s: an orphan that cannot be read (%s): left as it is", path,
                 strerror(errno));
        return 0;
    }
    if (mood_st_open(&f, path) != 0) {
        mood_error_clear();
        if (unlink(path) == 0)
            return 1;
        mood_log(MOOD_LOG_WARN, "%s: cannot delete it: %s", path, strerror(errno));
        return 0;
    }
    mood_st_close(f);
    mood_buf_init(&dir);
    mood_buf_init(&to);
    const char *slash = strrchr(d->r->blob_dir, '/'); /* HOME/blobs/sha256 -> HOME/blobs */
    if (slash &&
        mood_buf_printf(&dir, "%.*s/lost+found", (int)(slash - d->r->blob_dir), d->r->blob_dir) ==
            0 &&
        mood_buf_printf(&to, "%s/%.64s.safetensors", dir.data, name) == 0) {
        if ((mkdir(dir.data, 0777) == 0 || errno == EEXIST) && rename(path, to.data) == 0)
            moved = 1;
        else
            mood_log(MOOD_LOG_WARN,
                     "%s: a LoRA file in no style; cannot move it to %s (%s): "
                     "left as it is",
                     path, dir.data, strerror(errno));
    }
    if (moved) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", path);
        cJSON_AddStringToObject(o, "to", to.data);
        cJSON_AddItemToArray(d->rescued, o);
    }
    mood_buf_dispose(&dir);
    mood_buf_dispose(&to);
    return moved;
}

/* One blobs/sha256/ab directory. */
static int scan_dir(doctor *d, const char *prefix)
{
    mood_buf dir, path;
    DIR *dp;
    struct dirent *e;
    int err = 0;
    mood_buf_init(&dir);
    mood_buf_init(&path);
    if ((err = mood_buf_printf(&dir, "%s/%s", d->r->blob_dir, prefix)) != 0 ||
        !(dp = opendir(dir.data)))
        goto done;
    while (!err && (e = readdir(dp)) != NULL) {
        char sha[300];
        int used = 1;
        if (e->d_name[0] == '.')
            continue;
        snprintf(sha, sizeof sha, "%s%s", prefix, e->d_name);
        path.len = 0;
        if ((err = mood_buf_printf(&path, "%s/%s", dir.data, e->d_name)) != 0)
            break;
        if (mood__blob_valid_hex(sha) && (err = is_used(d, sha, &used)) != 0)
            break;
        if (mood__blob_valid_hex(sha) && used)
            continue;
        cJSON_AddItemToArray(d->orphans, cJSON_CreateString(path.data));
        d->problems++;
        if (d->o->fix && fix_orphan(d, path.data, sha))
            d->fixed++;
    }
    closedir(dp);
done:
    mood_buf_dispose(&dir);
    mood_buf_dispose(&path);
    return err;
}

static int check_orphans(doctor *d)
{
    DIR *dp = opendir(d->r->blob_dir);
    struct dirent *e;
    int err = 0;
    if (!dp)
        return mood_error_set(MOOD_EIO, "%s: cannot read: %s", d->r->blob_dir, strerror(errno));
    while (!err && (e = readdir(dp)) != NULL) {
        if (strlen(e->d_name) == 2 && e->d_name[0] != '.')
            err = scan_dir(d, e->d_name);
    }
    closedir(dp);
    return err;
}

/* ----- styles that use a lost adapter ----------------------------------------------------- */

static cJSON *style_entry(doctor *d, const char *name, long long loras)
{
    cJSON *e;
    cJSON_ArrayForEach(e, d->styles)
    {
        if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(e, "name")), name) == 0)
            return e;
    }
    e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", name);
    cJSON_AddStringToObject(e, "action", "drop");
    cJSON_AddNumberToObject(e, "n_adapters", (double)loras); /* as list's */
    cJSON_AddNumberToObject(e, "kept", (double)loras);
    cJSON_AddArrayToObject(e, "lost");
    cJSON_AddBoolToObject(e, "fixed", 0);
    cJSON_AddItemToArray(d->styles, e);
    return e;
}

/* One lost adapter (an item of missing or corrupt): the styles using it, by name, into the item
 * and into d->styles with how many of their adapter links it takes. */
static int plan_adapter(doctor *d, cJSON *item, const char *problem)
{
    const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(item, "sha256"));
    const cJSON *file = cJSON_GetObjectItem(item, "file_name");
    cJSON *names = cJSON_AddArrayToObject(item, "styles");
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(d->r, &st,
                                "SELECT s.name, (SELECT count(*) FROM style_adapters x WHERE"
                                " x.style_id = s.id), count(*) FROM style_adapters sa JOIN"
                                " styles s ON s.id = sa.style_id WHERE sa.adapter_sha256 = ?1"
                                " GROUP BY s.id ORDER BY s.name"),
        rc;
    if (err)
        return err;
    mood__reg_bind_text(st, 1, sha);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        cJSON *e = style_entry(d, name, sqlite3_column_int64(st, 1)), *lost = cJSON_CreateObject();
        cJSON *kept = cJSON_GetObjectItem(e, "kept");
        cJSON_SetNumberValue(kept, kept->valuedouble - (double)sqlite3_column_int64(st, 2));
        cJSON_AddStringToObject(lost, "sha256", sha);
        cJSON_AddItemToObject(lost, "file_name", cJSON_Duplicate(file, 0));
        cJSON_AddStringToObject(lost, "problem", problem);
        cJSON_AddItemToArray(cJSON_GetObjectItem(e, "lost"), lost);
        cJSON_AddItemToArray(names, cJSON_CreateString(name));
    }
    if (rc != SQLITE_DONE)
        err = mood__reg_sqlerr(d->r, rc, "reading the styles of an adapter");
    sqlite3_finalize(st);
    return err;
}

/* Which styles use a lost adapter and what --fix does with each: a style that keeps another
 * adapter only drops the lost ones; one left with none is removed (a style needs a LoRA). */
static int plan_styles(doctor *d)
{
    const cJSON *lists[2] = {d->missing, d->corrupt};
    static const char *const problem[2] = {"missing", "corrupt"};
    cJSON *item, *e;
    int err = 0;
    cJSON_DeleteItemFromObject(d->report, "styles"); /* planned again inside the fix */
    d->styles = cJSON_AddArrayToObject(d->report, "styles");
    for (int l = 0; l < 2 && !err; l++) {
        cJSON_ArrayForEach(item, lists[l])
        {
            const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(item, "kind"));
            cJSON_DeleteItemFromObject(item, "styles");
            if (cJSON_GetObjectItem(item, "restorable_from"))
                continue; /* --fix stores it again: its styles stay as they are */
            if (kind && strcmp(kind, "adapter") == 0 && (err = plan_adapter(d, item, problem[l])))
                break;
        }
    }
    cJSON_ArrayForEach(e, d->styles)
    {
        if (cJSON_GetNumberValue(cJSON_GetObjectItem(e, "kept")) <= 0)
            cJSON_ReplaceItemInObject(e, "action", cJSON_CreateString("remove"));
    }
    return err;
}

/* SHA-256s of a style's previews and files, to delete their blobs once the style is gone. */
static int collect_files(doctor *d, long long id)
{
    return mood__reg_collect_shas(d->r,
                                  "SELECT blob_sha256 FROM previews WHERE style_id = ?1"
                                  " UNION SELECT blob_sha256 FROM style_files WHERE style_id = ?1",
                                  id, &d->freed, "reading a style's files");
}

/* Closes the gaps that dropped adapters leave in a style's positions (0, 1, ...): position 0 is
 * the adapter list and show report first. Each move goes down to a free position. */
static int renumber(doctor *d, long long id)
{
    sqlite3_stmt *next = NULL, *move = NULL;
    int err = mood__reg_prepare(d->r, &next,
                                "SELECT min(position) FROM style_adapters"
                                " WHERE style_id = ?1 AND position >= ?2"),
        rc;
    if (!err)
        err = mood__reg_prepare(d->r, &move,
                                "UPDATE style_adapters SET position = ?3"
                                " WHERE style_id = ?1 AND position = ?2");
    for (long long k = 0; !err; k++) {
        sqlite3_reset(next);
        sqlite3_bind_int64(next, 1, id);
        sqlite3_bind_int64(next, 2, k);
        if ((rc = sqlite3_step(next)) != SQLITE_ROW) {
            err = mood__reg_sqlerr(d->r, rc, "reordering a style's adapters");
            break;
        }
        if (sqlite3_column_type(next, 0) == SQLITE_NULL)
            break;
        if (sqlite3_column_int64(next, 0) == k)
            continue;
        sqlite3_reset(move);
        sqlite3_bind_int64(move, 1, id);
        sqlite3_bind_int64(move, 2, sqlite3_column_int64(next, 0));
        sqlite3_bind_int64(move, 3, k);
        if ((rc = sqlite3_step(move)) != SQLITE_DONE)
            err = mood__reg_sqlerr(d->r, rc, "reordering a style's adapters");
    }
    sqlite3_finalize(next);
    sqlite3_finalize(move);
    return err;
}

/* Runs sql with ?1 = id and ?2 = text (may be unused). */
static int exec_id_text(doctor *d, const char *sql, long long id, const char *text)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(d->r, &st, sql);
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, id);
    if (text)
        mood__reg_bind_text(st, 2, text);
    return mood__reg_step_done(d->r, st, "repairing a style");
}

/* Takes the lost adapters out of one style, or removes the style when none would be left. */
static int fix_style(doctor *d, cJSON *e)
{
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
    const char *action = cJSON_GetStringValue(cJSON_GetObjectItem(e, "action"));
    const cJSON *lost;
    long long id;
    int err = mood__reg_style_id(d->r, &id, name);
    if (err)
        return err;
    if (strcmp(action, "remove") == 0) {
        if ((err = collect_files(d, id)) == 0)
            err = exec_id_text(d, "DELETE FROM styles WHERE id = ?1", id, NULL);
    } else {
        cJSON_ArrayForEach(lost, cJSON_GetObjectItem(e, "lost"))
        {
            const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(lost, "sha256"));
            if ((err = exec_id_text(d,
                                    "DELETE FROM style_adapters WHERE style_id = ?1 AND"
                                    " adapter_sha256 = ?2",
                                    id, sha)) != 0)
                return err;
        }
        if ((err = renumber(d, id)) == 0)
            err = exec_id_text(d,
                               "UPDATE styles SET updated_at ="
                               " strftime('%Y-%m-%dT%H:%M:%SZ','now') WHERE id = ?1",
                               id, NULL);
    }
    if (!err)
        cJSON_ReplaceItemInObject(e, "fixed", cJSON_CreateBool(1));
    return err;
}

/* Rows that lost their file: previews and style files go, and so does a lost adapter's row once
 * no style uses it (fix_style ran first). */
static int fix_items(doctor *d)
{
    static const char *const sql[] = {
        "DELETE FROM previews WHERE blob_sha256 = ?1",
        "DELETE FROM style_files WHERE blob_sha256 = ?1",
        "DELETE FROM adapters WHERE sha256 = ?1",
    };
    const cJSON *lists[2] = {d->missing, d->corrupt}, *item;
    int err = 0;
    for (int l = 0; l < 2 && !err; l++) {
        cJSON_ArrayForEach(item, lists[l])
        {
            const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(item, "sha256"));
            char *path = NULL;
            sqlite3_stmt *st = NULL;
            for (size_t i = 0; i < sizeof sql / sizeof sql[0] && !err; i++) {
                if ((err = mood__reg_prepare(d->r, &st, sql[i])) != 0)
                    break;
                mood__reg_bind_text(st, 1, sha);
                err = mood__reg_step_done(d->r, st, "repairing");
            }
            if (!err && l == 1 && mood__blob_path(&path, d->r, sha) == 0)
                unlink(path); /* the damaged file: its content is not what its name says */
            mood_free(path);
            if (err)
                break;
            d->fixed++;
        }
    }
    return err;
}

/* An intact LoRA file under a row with a wrong size: the row takes the file's size. */
static int fix_sizes(doctor *d)
{
    cJSON *item;
    int err = 0;
    cJSON_ArrayForEach(item, d->wrong_size)
    {
        sqlite3_stmt *st = NULL;
        if ((err = mood__reg_prepare(d->r, &st, "UPDATE adapters SET size = ?2 WHERE sha256 = ?1")))
            break;
        mood__reg_bind_text(st, 1, cJSON_GetStringValue(cJSON_GetObjectItem(item, "sha256")));
        sqlite3_bind_int64(st, 2,
                           (sqlite3_int64)cJSON_GetNumberValue(cJSON_GetObjectItem(item, "size")));
        if ((err = mood__reg_step_done(d->r, st, "correcting a LoRA's size")) != 0)
            break;
        cJSON_ReplaceItemInObject(item, "fixed", cJSON_CreateBool(1));
        d->fixed++;
    }
    return err;
}

/* Blobs only the removed styles used (previews, mood board thumbnails): deleted now, else the
 * next run would report them as orphans. */
static int delete_freed(doctor *d)
{
    int err = d->freed.len ? mood__reg_begin(d->r) : 0, deleted;
    for (size_t at = 0; !err && at + 64 <= d->freed.len; at += 64) {
        char sha[65];
        memcpy(sha, d->freed.data + at, 64);
        sha[64] = '\0';
        err = mood__blob_delete_if_unused(d->r, sha, &deleted);
    }
    if (!err && d->freed.len)
        err = mood__reg_commit(d->r);
    if (err)
        mood__reg_rollback(d->r);
    return err;
}

/* The repair, in one transaction: styles first (so that no link to a lost adapter is left),
 * then the rows of lost files. */
static int fix_rows(doctor *d)
{
    cJSON *e;
    int err = mood__reg_begin(d->r);
    if (!err)
        err = plan_styles(d);
    cJSON_ArrayForEach(e, d->styles)
    {
        if (err || (err = fix_style(d, e)) != 0)
            break;
    }
    if (!err)
        err = fix_items(d);
    if (!err)
        err = fix_sizes(d);
    if (!err)
        err = mood__reg_commit(d->r);
    if (err)
        mood__reg_rollback(d->r);
    return err ? err : delete_freed(d);
}

/* registry.db missing or without rows while blobs/ holds n files: one problem, nothing else is
 * checked (every file would be an orphan), and --fix refuses. */
static int lost_database(doctor *d, size_t n)
{
    mood_registry *r = d->r;
    cJSON_AddStringToObject(d->report, "database", r->absent ? "missing" : "empty");
    cJSON_AddNumberToObject(d->report, "stored_files", (double)n);
    cJSON_AddStringToObject(d->report, "blobs", r->blob_dir);
    d->problems++;
    r->noted = 1; /* the report says it: no warning at close */
    if (!d->o->fix)
        return 0;
    return mood_error_set(MOOD_EINVAL,
                          "%s %s, but %zu stored file%s remain%s in %s: doctor --fix deletes none "
                          "of them (for LoRAs that came from a pack or a URL they may be the only "
                          "copies); restore registry.db from a backup, or import the LoRA files "
                          "again ('mood import FILE')",
                          r->db_path, r->absent ? "is missing" : "holds no LoRAs", n,
                          n == 1 ? "" : "s", n == 1 ? "s" : "", r->blob_dir);
}

/* Is there a usable database? Sets *done when the report is complete without the other checks:
 * no registry yet (nothing stored: nothing to check, no problem), or a lost database. */
static int check_database(doctor *d, int *done)
{
    mood_registry *r = d->r;
    size_t n = 0;
    int rows = 0, err;
    *done = 0;
    if (!r->absent && (err = mood__reg_has_rows(r, &rows)) != 0)
        return err;
    if (!rows && (err = mood__reg_count_blobs(r, &n)) != 0)
        return err;
    if (rows || (!r->absent && n == 0)) {
        cJSON_AddStringToObject(d->report, "database", "ok");
        return 0;
    }
    *done = 1; /* with the report's usual lists, empty */
    cJSON_AddArrayToObject(d->report, "integrity");
    cJSON_AddArrayToObject(d->report, "styles");
    if (n > 0)
        return lost_database(d, n);
    cJSON_AddStringToObject(d->report, "database", "none");
    r->noted = 1; /* the report says it: no warning at close */
    return 0;
}

/* Stores lost LoRA `item` (missing or damaged) again from a file it was imported from, when
 * one is still there with the same SHA-256 (as importing it again would): 1 when it was. With
 * `restore` 0 (doctor without --fix) only says which file of the recorded size would serve
 * ("restorable_from"). */
static int restore_from_source(doctor *d, cJSON *item, int restore)
{
    const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(item, "sha256"));
    sqlite3_stmt *st = NULL;
    int restored = 0;
    if (!sha || strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(item, "kind")), "adapter") != 0 ||
        mood__reg_prepare(d->r, &st,
                          "SELECT so.location, a.size FROM sources so JOIN adapters a ON a.sha256"
                          " = so.adapter_sha256 WHERE so.adapter_sha256 = ?1 AND so.kind = 'file'"
                          " AND so.location IS NOT NULL ORDER BY so.id DESC") != 0) {
        mood_error_clear();
        return 0;
    }
    mood__reg_bind_text(st, 1, sha);
    while (!restored && sqlite3_step(st) == SQLITE_ROW) {
        const char *from = (const char *)sqlite3_column_text(st, 0);
        struct stat sb;
        if (!from || stat(from, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (!restore) { /* the promise --fix keeps: the same size and SHA-256 */
            mood_file_hashes h;
            if (sb.st_size == sqlite3_column_int64(st, 1) &&
                mood_hash_file_ex(&h, from, MOOD_HASH_SKIP_CRC32, NULL, NULL) == 0 &&
                strcasecmp(h.sha256, sha) == 0) {
                cJSON_AddStringToObject(item, "restorable_from", from);
                restored = 1;
            }
            mood_error_clear();
            continue;
        }
        /* the SHA-256 is checked as the copy is made: another file there now is refused */
        if (mood__blob_restore_file_locked(d->r, sha, (uint64_t)sqlite3_column_int64(st, 1), from,
                                           NULL, NULL) == 0) {
            cJSON_AddStringToObject(item, "from", from);
            restored = 1;
        }
        mood_error_clear();
    }
    sqlite3_finalize(st);
    return restored;
}

/* Before --fix removes anything: lost LoRAs whose original file is still where it was imported
 * from are stored again, and their styles stay whole (tags, combined styles); without --fix,
 * the report says which would be. */
static void restore_lost(doctor *d)
{
    cJSON *lists[2] = {d->missing, d->corrupt};
    for (int l = 0; l < 2; l++) {
        for (int i = 0; i < cJSON_GetArraySize(lists[l]);) {
            cJSON *item = cJSON_GetArrayItem(lists[l], i);
            if (!restore_from_source(d, item, d->o->fix) || !d->o->fix) {
                i++;
                continue;
            }
            cJSON_AddItemToArray(d->restored, cJSON_DetachItemFromArray(lists[l], i));
            d->fixed++;
        }
    }
}

/* A blob folder where every stored file is missing is a drive that is not mounted, a folder
 * moved or a link to the wrong place, not lost files: --fix would remove every style (tags,
 * combined styles and all). It refuses; the report says what is missing. */
static int all_missing(const doctor *d)
{
    return cJSON_GetArraySize(d->missing) > 0 && cJSON_GetArraySize(d->missing) == d->referenced;
}

static int refuse_all_missing(const doctor *d)
{
    int n = cJSON_GetArraySize(d->missing);
    if (!all_missing(d))
        return 0;
    cJSON_AddTrueToObject(d->report, "all_missing");
    if (!d->o->fix)
        return 0;
    return mood_error_set(MOOD_EIO,
                          "every one of the %d file%s the registry stores %s missing from %s (a "
                          "drive that is not mounted? a folder moved, or a link to the wrong "
                          "place?): doctor --fix removes no style for that; put the files back "
                          "('mood doctor' says which; importing a LoRA file again stores it "
                          "again), or remove styles with 'mood rm'",
                          n, n == 1 ? "" : "s", n == 1 ? "is" : "are", d->r->blob_dir);
}

static int run(doctor *d)
{
    int err, done;
    if ((err = check_database(d, &done)) != 0 || done)
        return err;
    if ((err = check_integrity(d)) != 0 || (err = check_referenced(d)) != 0 ||
        (err = check_orphans(d)) != 0)
        return err;
    if ((err = refuse_all_missing(d)) != 0)
        return err;
    if (!all_missing(d)) /* else --fix refuses: no restore is promised or made */
        restore_lost(d);
    if (d->o->fix && (cJSON_GetArraySize(d->missing) || cJSON_GetArraySize(d->corrupt) ||
                      cJSON_GetArraySize(d->wrong_size)))
        err = fix_rows(d);
    else
        err = plan_styles(d);
    return err;
}

int mood_registry_doctor(char **out, int *problems_out, mood_registry *r,
                         const mood_doctor_options *o)
{
    static const mood_doctor_options check_only; /* o NULL: no deep hashing, no fixing */
    doctor d = {r,    o ? o : &check_only, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL, {NULL, 0, 0},        0,    0,    0};
    char *text = NULL;
    int err;
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(problems_out);
    *out = NULL;
    *problems_out = 0;
    MOOD_ARG_NONNULL(r);
    d.report = cJSON_CreateObject();
    mood_buf_init(&d.freed);
    d.missing = cJSON_AddArrayToObject(d.report, "missing");
    d.orphans = cJSON_AddArrayToObject(d.report, "orphans");
    d.corrupt = cJSON_AddArrayToObject(d.report, "corrupt");
    d.unreadable = cJSON_AddArrayToObject(d.report, "unreadable");
    d.rescued = cJSON_AddArrayToObject(d.report, "rescued");
    d.wrong_size = cJSON_AddArrayToObject(d.report, "wrong_size");
    d.restored = cJSON_AddArrayToObject(d.report, "restored");
    /* before anything is deleted: a read-only registry refuses --fix (an absent one is not
     * created for it: check_database) */
    if ((d.o->fix && !r->absent && (err = mood__reg_writable(r)) != 0) ||
        (err = mood__reg_lock_exclusive(r, 1)) != 0)
        goto done;
    err = run(&d);
    mood__reg_unlock_exclusive(r);
    if (err)
        goto done;
    cJSON_AddStringToObject(d.report, "registry", r->home);
    cJSON_AddBoolToObject(d.report, "deep", d.o->deep);
    cJSON_AddNumberToObject(d.report, "problems", d.problems);
    cJSON_AddNumberToObject(d.report, "fixed", d.fixed);
    text = cJSON_PrintUnformatted(d.report);
    if (!text || !(*out = mood_strdup(text)))
        err = mood_error_nomem();
    *problems_out = d.problems;
done:
    cJSON_free(text);
    cJSON_Delete(d.report);
    mood_buf_dispose(&d.freed);
    return err;
}
