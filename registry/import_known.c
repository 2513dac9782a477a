/*
 * import_known.c: a file imported before is recognised without reading it. `mood import ~/loras`
 * run again to pick up new downloads used to read every byte of every LoRA there (hashed and
 * validated again, then found "already in the registry"): hundreds of gigabytes for a big
 * folder. A file source keeps the size, modification time, change time and inode the file had
 * when it was read, and the stored copy's modification time (schema 7); a file at the same place
 * with all four the same, whose style is still the file alone and whose stored copy is there at
 * its size and time (not written to since: a copy damaged in place goes the full way, which
 * repairs it), is that import's file. A1111's hash cache trusts the modification time alone,
 * which `cp -p` or `touch -d` set back; the change time is the kernel's (any write, rename onto
 * the path or chmod moves it), so a file changed since reads again. Anything else takes the full
 * path: the file is read, hashed and checked.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "registry/registry_impl.h"

static int64_t ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* stat() of the stored copy of sha256; 0 when it is a file there. */
static int stat_blob(const mood_registry *r, const char *sha256, struct stat *st)
{
    char *path = NULL;
    int ok = mood__blob_path(&path, r, sha256) == 0 && stat(path, st) == 0 && S_ISREG(st->st_mode);
    mood_free(path);
    mood_error_clear();
    return ok ? 0 : -1;
}

void mood__reg_bind_file_stat(sqlite3_stmt *st, int from, const struct stat *fs,
                              const mood_registry *r, const char *sha256)
{
    struct stat bs;
    sqlite3_bind_int64(st, from, (sqlite3_int64)fs->st_size);
    sqlite3_bind_int64(st, from + 1, (sqlite3_int64)ns(fs->st_mtim));
    sqlite3_bind_int64(st, from + 2, (sqlite3_int64)ns(fs->st_ctim));
    sqlite3_bind_int64(st, from + 3, (sqlite3_int64)fs->st_ino);
    if (stat_blob(r, sha256, &bs) == 0)
        sqlite3_bind_int64(st, from + 4, (sqlite3_int64)ns(bs.st_mtim));
    else
        sqlite3_bind_null(st, from + 4);
}

int mood__reg_holder_of(mood_registry *r, const char *sha256, char *name_out, size_t cap,
                        int *found)
{
    sqlite3_stmt *st = NULL;
    int err, rc;
    *found = 0;
    if ((err = mood__reg_prepare(r, &st,
                                 "SELECT s.name FROM styles s JOIN style_adapters sa ON"
                                 " sa.style_id = s.id WHERE sa.adapter_sha256 = ?1 AND"
                                 " sa.unet_weight = 1 AND sa.te_weight = 1 AND (SELECT count(*)"
                                 " FROM style_adapters x WHERE x.style_id = s.id) = 1"
                                 " ORDER BY s.id LIMIT 1")) != 0)
        return err;
    if ((err = mood__reg_bind_text(st, 1, sha256)) == 0) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *found = 1;
            snprintf(name_out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
        } else if (rc != SQLITE_DONE) {
            err = mood__reg_sqlerr(r, rc, "looking up the file");
        }
    }
    sqlite3_finalize(st);
    return err;
}

/* Whether the stored copy of sha256 is there at its recorded size, and not written since. */
static int blob_whole(const mood_registry *r, const char *sha256, long long size,
                      sqlite3_int64 mtime_ns)
{
    struct stat st;
    return stat_blob(r, sha256, &st) == 0 && (long long)st.st_size == size &&
           ns(st.st_mtim) == mtime_ns;
}

int mood__reg_known_file(mood_registry *r, const char *path, mood_import_result *out, int *known)
{
    sqlite3_stmt *st = NULL;
    struct stat fs;
    char abs[PATH_MAX];
    long long size = 0;
    sqlite3_int64 blob_mtime = 0;
    int err, rc;
    *known = 0;
    if (r->version < 7) /* a read-only registry of an older schema: no facts recorded */
        return 0;
    if (stat(path, &fs) != 0 || !S_ISREG(fs.st_mode) || !realpath(path, abs))
        return 0; /* the full path says what is wrong */
    if ((err = mood__reg_prepare(r, &st,
                                 "SELECT a.sha256, a.autov3, a.family, a.size, so.blob_mtime_ns"
                                 " FROM sources so"
                                 " JOIN adapters a ON a.sha256 = so.adapter_sha256 WHERE"
                                 " so.kind = 'file' AND so.location = ?1 AND so.file_size = ?2"
                                 " AND so.file_mtime_ns = ?3 AND so.file_ctime_ns = ?4 AND"
                                 " so.file_inode = ?5 AND a.size = ?2 LIMIT 1")) != 0)
        return err;
    mood__reg_bind_text(st, 1, abs);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)fs.st_size);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)ns(fs.st_mtim));
    sqlite3_bind_int64(st, 4, (sqlite3_int64)ns(fs.st_ctim));
    sqlite3_bind_int64(st, 5, (sqlite3_int64)fs.st_ino);
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        snprintf(out->sha256, sizeof out->sha256, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(out->autov3, sizeof out->autov3, "%s",
                 sqlite3_column_text(st, 1) ? (const char *)sqlite3_column_text(st, 1) : "");
        snprintf(out->family, sizeof out->family, "%s", (const char *)sqlite3_column_text(st, 2));
        size = sqlite3_column_int64(st, 3);
        blob_mtime = sqlite3_column_int64(st, 4);
    } else if (rc != SQLITE_DONE) {
        err = mood__reg_sqlerr(r, rc, "looking up the file");
    }
    sqlite3_finalize(st);
    if (err || rc != SQLITE_ROW || !blob_whole(r, out->sha256, size, blob_mtime))
        return err;
    if ((err = mood__reg_holder_of(r, out->sha256, out->name, sizeof out->name, known)) == 0 &&
        *known)
        out->already = 1; /* from this very file: elsewhere stays 0 */
    return err;
}

int mood__reg_note_file(mood_registry *r, const char *sha256, const char *location,
                        const struct stat *fs)
{
    sqlite3_stmt *st = NULL;
    int err;
    if (r->version < 7)
        return 0;
    err = mood__reg_prepare(r, &st,
                            "UPDATE sources SET file_size = ?3, file_mtime_ns = ?4,"
                            " file_ctime_ns = ?5, file_inode = ?6, blob_mtime_ns = ?7 WHERE"
                            " adapter_sha256 = ?1 AND kind = 'file' AND location = ?2 AND"
                            " (file_size IS NOT ?3 OR file_mtime_ns IS NOT ?4 OR file_ctime_ns"
                            " IS NOT ?5 OR file_inode IS NOT ?6 OR blob_mtime_ns IS NOT ?7)");
    if (err)
        return err;
    mood__reg_bind_text(st, 1, sha256);
    mood__reg_bind_text(st, 2, location);
    mood__reg_bind_file_stat(st, 3, fs, r, sha256);
    return mood__reg_step_done(r, st, "recording the file's size and time");
}
