/*
 * blob.c: the content-addressed file store, HOME/blobs/sha256/ab/cdef... (the first two hex
 * characters of the SHA-256 name a directory, the other 62 the file).
 *
 * Adding a blob (all-or-nothing, in this order):
 *   1. a journal row (imports_in_progress: temporary name + SHA-256) is committed;
 *   2. the content is written to HOME/blobs/tmp/import-PID-N.part while hashing it, synced, and
 *      its SHA-256 compared with the expected one;
 *   3. the temporary file is hard-linked to its final name (already there: the same content) and
 *      the directory synced;
 *   4. the caller commits its rows and deletes the journal row in one transaction;
 *   5. the temporary name is unlinked.
 * What is safe to delete after a crash, under the exclusive registry lock (no import running):
 * every file in blobs/tmp named import-*.part, and the blob of every journal row that no adapter,
 * preview or style file row refers to; then the journal rows. Nothing else is ever deleted
 * automatically: other orphan blobs are reported (and removed only by `mood doctor --fix`).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mood/hash.h"
#include "registry/registry_impl.h"

#define COPY_CHUNK (4u << 20)

int mood__blob_valid_hex(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return 0;
    }
    return n == 64;
}

int mood__blob_path(char **out, const mood_registry *r, const char *sha256)
{
    mood_buf b;
    int err;
    mood_buf_init(&b);
    err = mood_buf_printf(&b, "%s/%.2s/%s", r->blob_dir, sha256, sha256 + 2);
    *out = err ? NULL : mood_buf_detach(&b);
    mood_buf_dispose(&b);
    return err;
}

static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int journal_add(mood__blob_tx *tx, mood_registry *r)
{
    static atomic_uint counter;
    sqlite3_stmt *st = NULL;
    mood_buf b;
    int err, rc;
    mood_buf_init(&b);
    if ((err = mood_buf_printf(&b, MOOD__REG_TMP_PREFIX "%ld-%u" MOOD__REG_TMP_SUFFIX,
                               (long)getpid(), atomic_fetch_add(&counter, 1))) != 0)
        return err;
    tx->tmp_name = mood_buf_detach(&b);
    if ((err = mood__reg_prepare(r, &st,
                                 "INSERT OR REPLACE INTO imports_in_progress(tmp_name, sha256, "
                                 "pid, started_at) VALUES (?1, ?2, ?3, "
                                 "strftime('%Y-%m-%dT%H:%M:%SZ','now'))")) != 0)
        return err;
    if (!(err = mood__reg_bind_text(st, 1, tx->tmp_name)) &&
        !(err = mood__reg_bind_text(st, 2, tx->sha256))) {
        sqlite3_bind_int64(st, 3, (long long)getpid());
        rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            err = mood__reg_sqlerr(r, rc, "recording an import in progress");
    }
    sqlite3_finalize(st);
    return err;
}

static int write_all(int fd, const uint8_t *p, size_t n, const char *path)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return mood_error_set(MOOD_EIO, "%s: write failed: %s", path,
                                  errno == ENOSPC ? "no space left on the device"
                                                  : strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The SHA-256 of what is being copied, computed on a second thread while the first one writes:
 * the check costs no time when the copy is bound by the disk. */
typedef struct copy_hash {
    const uint8_t *data;
    uint64_t size;
    char hex[65];
} copy_hash;

static void *copy_hash_run(void *arg)
{
    copy_hash *h = arg;
    mood_sha256_hex(h->hex, h->data, (size_t)h->size);
    return NULL;
}

/* Writes data to the temporary file and syncs it; hex receives the SHA-256 of the data. */
static int write_tmp(mood__blob_tx *tx, const uint8_t *data, uint64_t size, char hex[65],
                     mood_progress_fn progress, void *payload)
{
    copy_hash h = {data, size, ""};
    pthread_t thread;
    int err = 0, fd, hashing;
    fd = open(tx->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return mood_error_set(MOOD_EIO, "%s: cannot create: %s", tx->tmp_path, strerror(errno));
    hashing = pthread_create(&thread, NULL, copy_hash_run, &h) == 0;
    for (uint64_t at = 0; at < size && !err; at += COPY_CHUNK) {
        size_t n = (size_t)(size - at < COPY_CHUNK ? size - at : COPY_CHUNK);
        err = write_all(fd, data + at, n, tx->tmp_path);
        if (!err && progress) {
            mood_progress p = {"store", at + n, size};
            if (progress(&p, payload) != 0)
                err = mood_error_set(MOOD_ECANCELLED, "import cancelled");
        }
    }
    if (!err && fsync(fd) != 0)
        err = mood_error_set(MOOD_EIO, "%s: cannot sync: %s", tx->tmp_path, strerror(errno));
    close(fd);
    if (hashing)
        pthread_join(thread, NULL);
    else
        copy_hash_run(&h);
    memcpy(hex, h.hex, 65);
    return err;
}

/* Steps 2 and 3 for content already in memory (a mapped file or a buffer). A stored file of the
 * name whose size is not this content's is damaged (truncated, overwritten): the verified copy
 * takes its place, so that importing the original again repairs it; with `replace`, one of the
 * right size is replaced too (its content was found damaged). */
static int put(mood__blob_tx *tx, mood_registry *r, const uint8_t *data, uint64_t size, int replace,
               const char *what, mood_progress_fn progress, void *payload)
{
    char *final = NULL, hex[65], *dir = NULL;
    mood_buf b;
    struct stat sb;
    int err, damaged = 0;
    mood_buf_init(&b);
    if ((err = mood__blob_path(&final, r, tx->sha256)) != 0)
        goto done;
    if (stat(final, &sb) == 0) {
        if ((uint64_t)sb.st_size == size && !replace)
            goto done; /* stored already (content-addressed: same bytes) */
        damaged = 1;
    }
    if ((err = mood_buf_printf(&b, "%s/%s", r->tmp_dir, tx->tmp_name)) != 0)
        goto done;
    tx->tmp_path = mood_buf_detach(&b);
    if ((err = write_tmp(tx, data, size, hex, progress, payload)) != 0)
        goto done;
    if (strcmp(hex, tx->sha256) != 0) {
        err = mood_error_set(MOOD_EIO,
                             "%s: the copy's SHA-256 %s differs from the file's %s (did the file "
                             "change while it was imported?); nothing stored",
                             what, hex, tx->sha256);
        goto done;
    }
    if (!(dir = mood_strndup(final, strlen(r->blob_dir) + 3))) {
        err = mood_error_nomem();
        goto done;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        err = mood_error_set(MOOD_EIO, "%s: cannot create: %s", dir, strerror(errno));
        goto done;
    }
    if (damaged) {
        if (rename(tx->tmp_path, final) != 0)
            err = mood_error_set(MOOD_EIO, "%s: cannot replace the damaged stored copy: %s", final,
                                 strerror(errno));
        else
            mood_log(MOOD_LOG_WARN,
                     "%s: the registry's copy of this file was damaged (%lld bytes%s, not %llu): "
                     "replaced by this one",
                     what, (long long)sb.st_size, replace ? " of other content" : "",
                     (unsigned long long)size);
    } else if (link(tx->tmp_path, final) == 0) {
        tx->created = 1;
    } else if (errno != EEXIST) {
        err = mood_error_set(MOOD_EIO, "%s: cannot store the file: %s", final, strerror(errno));
    }
    if (!err)
        sync_dir(dir);
done:
    mood_buf_dispose(&b);
    mood_free(final);
    mood_free(dir);
    return err;
}

static int begin_tx(mood__blob_tx *tx, mood_registry *r, const char *sha256)
{
    memset(tx, 0, sizeof *tx);
    snprintf(tx->sha256, sizeof tx->sha256, "%s", sha256);
    return journal_add(tx, r);
}

static int put_file(mood__blob_tx *tx, mood_registry *r, const char *src, const char *expected,
                    int replace, mood_progress_fn progress, void *payload)
{
    mood_map m = {0};
    int err = begin_tx(tx, r, expected);
    if (!err && !(err = mood_map_file(&m, src)))
        err = put(tx, r, m.data, m.size, replace, src, progress, payload);
    mood_unmap(&m);
    if (err)
        mood__blob_tx_abort(tx, r);
    return err;
}

int mood__blob_put_file(mood__blob_tx *tx, mood_registry *r, const char *src, const char *expected,
                        mood_progress_fn progress, void *payload)
{
    return put_file(tx, r, src, expected, 0, progress, payload);
}

/* Whether the stored file at path holds the content of sha256 (it is read whole). */
static int content_is(const char *path, const char *sha256)
{
    mood_file_hashes h;
    int same = mood_hash_file_ex(&h, path, MOOD_HASH_SKIP_CRC32, NULL, NULL) == 0 &&
               strcmp(h.sha256, sha256) == 0;
    mood_error_clear();
    return same;
}

int mood__blob_restore_file(mood_registry *r, const char *sha256, uint64_t size, const char *src,
                            mood_progress_fn progress, void *payload)
{
    char *final = NULL;
    struct stat sb;
    int err = mood__blob_path(&final, r, sha256), missing;
    if (err)
        return err;
    missing = stat(final, &sb) != 0;
    mood_free(final);
    if ((err = mood__reg_lock_shared(r)) != 0)
        return err;
    err = mood__blob_restore_file_locked(r, sha256, size, src, progress, payload);
    mood__reg_unlock_shared(r);
    if (!err && missing)
        mood_log(MOOD_LOG_WARN, "%s: the registry's copy of this file was missing: stored again",
                 src);
    return err;
}

int mood__blob_restore_file_locked(mood_registry *r, const char *sha256, uint64_t size,
                                   const char *src, mood_progress_fn progress, void *payload)
{
    mood__blob_tx tx;
    char *final = NULL;
    struct stat sb;
    int err = mood__blob_path(&final, r, sha256), missing, same_size;
    if (err)
        return err;
    missing = stat(final, &sb) != 0;
    same_size = !missing && (uint64_t)sb.st_size == size;
    /* the right size and content: nothing to do; the right size, other bytes: replaced */
    if (same_size && content_is(final, sha256)) {
        mood_free(final);
        return 0;
    }
    mood_free(final);
    if ((err = put_file(&tx, r, src, sha256, same_size, progress, payload)) == 0) {
        if ((err = mood__reg_begin(r)) == 0 && (err = mood__blob_journal_delete(r, &tx)) == 0)
            err = mood__reg_commit(r);
        if (err)
            mood__reg_rollback(r);
        mood__blob_tx_end(&tx);
    }
    return err;
}

int mood__blob_put_mem(mood__blob_tx *tx, mood_registry *r, const void *data, size_t size)
{
    char hex[65];
    int err;
    mood_sha256_hex(hex, data, size);
    if ((err = begin_tx(tx, r, hex)) == 0)
        err = put(tx, r, data, size, 0, "preview image", NULL, NULL);
    if (err)
        mood__blob_tx_abort(tx, r);
    return err;
}

int mood__blob_journal_delete(mood_registry *r, const mood__blob_tx *tx)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, "DELETE FROM imports_in_progress WHERE tmp_name = ?1");
    if (!err && !(err = mood__reg_bind_text(st, 1, tx->tmp_name))) {
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            err = mood__reg_sqlerr(r, rc, "finishing an import");
    }
    sqlite3_finalize(st);
    return err;
}

void mood__blob_tx_end(mood__blob_tx *tx)
{
    if (tx->tmp_path)
        unlink(tx->tmp_path);
    mood_free(tx->tmp_path);
    mood_free(tx->tmp_name);
    memset(tx, 0, sizeof *tx);
}

/* Undoes a blob transaction that did not commit: the temporary file, the blob when this tx made
 * it and nothing else uses it, and the journal row. Errors are ignored (clean-up on the next
 * open finishes the job). */
void mood__blob_tx_abort(mood__blob_tx *tx, mood_registry *r)
{
    char why[2048]; /* the failure being undone is what the user must read, not the clean-up's */
    int deleted = 0;
    if (!tx->tmp_name)
        return;
    snprintf(why, sizeof why, "%s", mood_error_last());
    /* the temporary file first: on a full disk, its space is what the journal's write needs */
    if (tx->tmp_path && unlink(tx->tmp_path) == 0) {
        mood_free(tx->tmp_path);
        tx->tmp_path = NULL;
    }
    mood__reg_rollback(r);
    if (mood__reg_begin(r) == 0) {
        /* The journal row goes first: the blob is in use while any journal row names it. */
        int err = mood__blob_journal_delete(r, tx);
        if (!err && tx->created)
            err = mood__blob_delete_if_unused(r, tx->sha256, &deleted);
        if (err || mood__reg_commit(r) != 0)
            mood__reg_rollback(r);
    }
    mood__blob_tx_end(tx);
    mood_error_set(0, "%s", why);
}

int mood__blob_delete_if_unused(mood_registry *r, const char *sha256, int *deleted)
{
    long long used = 0;
    char *path = NULL;
    int err;
    *deleted = 0;
    err = mood__reg_query_int(r, &used,
                              "SELECT (SELECT count(*) FROM adapters WHERE sha256 = ?1) +"
                              " (SELECT count(*) FROM previews WHERE blob_sha256 = ?1) +"
                              " (SELECT count(*) FROM style_files WHERE blob_sha256 = ?1) +"
                              " (SELECT count(*) FROM imports_in_progress WHERE sha256 = ?1)",
                              sha256);
    if (err || used > 0 || !mood__blob_valid_hex(sha256))
        return err;
    if ((err = mood__blob_path(&path, r, sha256)) != 0)
        return err;
    /* the ab/ directory stays: removing it could race with an import linking into it */
    if (unlink(path) == 0)
        *deleted = 1;
    else if (errno != ENOENT)
        err = mood_error_set(MOOD_EIO, "%s: cannot delete: %s", path, strerror(errno));
    mood_free(path);
    return err;
}

/* Deletes import-*.part files in tmp_dir. */
static int remove_tmp_files(mood_registry *r)
{
    DIR *d = opendir(r->tmp_dir);
    struct dirent *e;
    size_t lp = strlen(MOOD__REG_TMP_PREFIX), ls = strlen(MOOD__REG_TMP_SUFFIX);
    mood_buf b;
    int err = 0;
    if (!d)
        return 0;
    mood_buf_init(&b);
    while (!err && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n <= lp + ls || strncmp(e->d_name, MOOD__REG_TMP_PREFIX, lp) != 0 ||
            strcmp(e->d_name + n - ls, MOOD__REG_TMP_SUFFIX) != 0)
            continue;
        b.len = 0;
        if (!(err = mood_buf_printf(&b, "%s/%s", r->tmp_dir, e->d_name)))
            unlink(b.data);
    }
    closedir(d);
    mood_buf_dispose(&b);
    return err;
}

/* Each journal row's blob goes unless a row uses it; the other journal rows are gone by then. */
int mood__blob_cleanup(mood_registry *r)
{
    sqlite3_stmt *st = NULL;
    mood_buf shas;
    int err, rc = SQLITE_DONE, deleted;
    long long pending = 1;
    mood_buf_init(&shas);
    /* nearly always nothing to do: then no write lock is asked for, which would make every
     * open (list, show) wait behind another process's long write */
    if (mood__reg_query_int(r, &pending, "SELECT count(*) FROM imports_in_progress", NULL) == 0 &&
        pending == 0)
        return remove_tmp_files(r);
    mood_error_clear();
    if ((err = mood__reg_begin(r)) != 0)
        return err;
    /* Collect first: a blob is deleted only once no journal row names it any more. */
    if ((err = mood__reg_prepare(r, &st, "DELETE FROM imports_in_progress RETURNING sha256")) != 0)
        goto done;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *sha = (const char *)sqlite3_column_text(st, 0);
        if (sha && mood__blob_valid_hex(sha) && (err = mood_buf_append(&shas, sha, 64)) != 0)
            break;
    }
    if (!err && rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, "cleaning up interrupted imports");
    sqlite3_finalize(st);
    st = NULL;
    for (size_t at = 0; !err && at + 64 <= shas.len; at += 64) {
        char sha[65];
        memcpy(sha, shas.data + at, 64);
        sha[64] = '\0';
        err = mood__blob_delete_if_unused(r, sha, &deleted);
    }
    if (!err)
        err = mood__reg_commit(r);
    if (!err)
        err = remove_tmp_files(r);
done:
    mood_buf_dispose(&shas);
    sqlite3_finalize(st);
    if (err)
        mood__reg_rollback(r);
    return err;
}
