/*
 * doctor.c: `mood doctor`: is the registry whole?
 *   - SQLite's integrity_check (and the FTS5 index's own check);
 *   - rows (adapters, previews, style files) whose blob file is missing ("missing");
 *   - files under blobs/sha256 that no row uses ("orphans"), and stray files there whose name is
 *     not a SHA-256;
 *   - with --deep, every referenced blob re-hashed against its name ("corrupt").
 * With --fix: orphans are deleted; styles that lose an adapter (missing or corrupt) are removed
 * with it, previews and style files whose blob is missing or corrupt are removed, the FTS index
 * is rebuilt.
 * Checks and fixes run under the exclusive registry lock, so no import is half-way meanwhile.
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mood/hash.h"
#include "registry/registry_impl.h"

typedef struct doctor {
    mood_registry *r;
    const mood_doctor_options *o;
    cJSON *report, *missing, *orphans, *corrupt;
    int problems, fixed;
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
    if (!err &&
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

/* SHA-256 of a blob file; "" when unreadable. */
static void hash_blob(char hex[65], const char *path)
{
    mood_file_hashes h;
    hex[0] = '\0';
    if (mood_hash_file(&h, path, NULL, NULL) == 0)
        memcpy(hex, h.sha256, 65);
    mood_error_clear();
}

/* Every referenced blob: present? (deep: intact?) Problems are listed as {sha256, kind, path}. */
static int check_referenced(doctor *d)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(d->r, &st,
                                "SELECT sha256, 'adapter' FROM adapters"
                                " UNION SELECT blob_sha256, 'preview' FROM previews"
                                " UNION SELECT blob_sha256, role FROM style_files"),
        rc;
    if (err)
        return err;
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *sha = (const char *)sqlite3_column_text(st, 0);
        const char *kind = (const char *)sqlite3_column_text(st, 1);
        char *path = NULL, hex[65];
        cJSON *item;
        if (!sha || !mood__blob_valid_hex(sha) || (err = mood__blob_path(&path, d->r, sha)) != 0)
            continue;
        if (!mood_path_exists(path)) {
            item = cJSON_CreateObject();
            cJSON_AddItemToArray(d->missing, item);
        } else if (d->o->deep && (hash_blob(hex, path), strcmp(hex, sha) != 0)) {
            item = cJSON_CreateObject();
            cJSON_AddItemToArray(d->corrupt, item);
        } else {
            item = NULL;
        }
        if (item) {
            cJSON_AddStringToObject(item, "sha256", sha);
            cJSON_AddStringToObject(item, "kind", kind);
            cJSON_AddStringToObject(item, "path", path);
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
        if (d->o->fix && unlink(path.data) == 0)
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

/* Rows that lost their file: previews go; a style without one of its adapters cannot be used,
 * so it goes with the adapter. */
static int fix_rows(doctor *d)
{
    const cJSON *lists[2] = {d->missing, d->corrupt}, *item;
    int err = mood__reg_begin(d->r);
    for (int l = 0; l < 2 && !err; l++) {
        cJSON_ArrayForEach(item, lists[l])
        {
            const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(item, "sha256"));
            char *path = NULL;
            sqlite3_stmt *st = NULL;
            static const char *const sql[] = {
                "DELETE FROM previews WHERE blob_sha256 = ?1",
                "DELETE FROM style_files WHERE blob_sha256 = ?1",
                ("DELETE FROM styles WHERE id IN (SELECT style_id FROM style_adapters WHERE"
                 " adapter_sha256 = ?1)"),
                "DELETE FROM adapters WHERE sha256 = ?1",
            };
            for (size_t i = 0; i < sizeof sql / sizeof sql[0] && !err; i++) {
                if ((err = mood__reg_prepare(d->r, &st, sql[i])) != 0)
                    break;
                mood__reg_bind_text(st, 1, sha);
                if (sqlite3_step(st) != SQLITE_DONE)
                    err = mood__reg_sqlerr(d->r, sqlite3_errcode(d->r->db), "repairing");
                sqlite3_finalize(st);
            }
            if (!err && l == 1 && mood__blob_path(&path, d->r, sha) == 0)
                unlink(path); /* the damaged file: its content is not what its name says */
            mood_free(path);
            if (err)
                break;
            d->fixed++;
        }
    }
    if (!err)
        err = mood__reg_commit(d->r);
    if (err)
        mood__reg_rollback(d->r);
    return err;
}

static int run(doctor *d)
{
    int err;
    if ((err = check_integrity(d)) != 0 || (err = check_referenced(d)) != 0 ||
        (err = check_orphans(d)) != 0)
        return err;
    if (d->o->fix && (cJSON_GetArraySize(d->missing) || cJSON_GetArraySize(d->corrupt)))
        err = fix_rows(d);
    return err;
}

int mood_registry_doctor(char **out, int *problems_out, mood_registry *r,
                         const mood_doctor_options *o)
{
    doctor d = {r, o, cJSON_CreateObject(), NULL, NULL, NULL, 0, 0};
    char *text = NULL;
    int err;
    *out = NULL;
    *problems_out = 0;
    d.missing = cJSON_AddArrayToObject(d.report, "missing");
    d.orphans = cJSON_AddArrayToObject(d.report, "orphans");
    d.corrupt = cJSON_AddArrayToObject(d.report, "corrupt");
    if ((err = mood__reg_lock_exclusive(r, 1)) != 0)
        goto done;
    err = run(&d);
    mood__reg_unlock_exclusive(r);
    if (err)
        goto done;
    cJSON_AddStringToObject(d.report, "registry", r->home);
    cJSON_AddBoolToObject(d.report, "deep", o->deep);
    cJSON_AddNumberToObject(d.report, "problems", d.problems);
    cJSON_AddNumberToObject(d.report, "fixed", d.fixed);
    text = cJSON_PrintUnformatted(d.report);
    if (!text || !(*out = mood_strdup(text)))
        err = mood_error_nomem();
    *problems_out = d.problems;
done:
    cJSON_free(text);
    cJSON_Delete(d.report);
    return err;
}
