/*
 * registry.c: opening the registry: where it lives, the SQLite connection (WAL, busy timeout,
 * foreign keys, full sync), schema migrations, the registry-wide lock, the clean-up of
 * interrupted imports, SQLite error mapping and style-name rules.
 *
 * Migrations: `PRAGMA user_version` holds the number of steps applied; each step of schema.c
 * runs once, in order, inside one IMMEDIATE transaction together with the version bump, so
 * two processes opening a new registry at once migrate it once. A database newer than this
 * program is refused rather than misread.
 *
 * Reading creates nothing: a folder without registry.db reads as an empty registry (the schema in
 * memory) until the first change creates it, so that `mood list` with a mistyped MOOD_HOME makes
 * no folders. A registry.db that cannot be written is read read-only (registry_impl.h).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/args.h"
#include "engine/unicode_tables.h"
#include "registry/registry_impl.h"

#define BUSY_TIMEOUT_MS 30000
#define NAME_MAX_LEN    100

#define N_MIGRATIONS mood__reg_n_migrations

/* ----- SQLite helpers --------------------------------------------------------------------- */

/* Whether the file system holding `dir` has (almost) no room left: SQLite reports a full disk
 * as SQLITE_FULL, but as a plain I/O error where its -wal or -shm file cannot grow. */
static int disk_full(const char *dir)
{
    struct statvfs fs;
    return statvfs(dir, &fs) == 0 && (unsigned long long)fs.f_bavail * fs.f_frsize < (1u << 20);
}

int mood__reg_sqlerr(mood_registry *r, int rc, const char *what)
{
    int primary = rc & 0xff;
    const char *msg = r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(rc);
    /* the search index alone: doctor --fix rebuilds it from the styles, nothing is lost */
    if (rc == SQLITE_CORRUPT_VTAB ||
        (r->db && sqlite3_extended_errcode(r->db) == SQLITE_CORRUPT_VTAB))
        return mood_error_set(MOOD_EIO,
                              "%s: the registry's search index is damaged (%s: %s); the styles "
                              "are whole: 'mood doctor --fix' rebuilds the index",
                              r->db_path, what, msg);
    /* the file is damaged, not the user's input: an environment error (exit 2), as doctor's */
    if (primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT)
        return mood_error_set(MOOD_EIO,
                              "%s: the registry database is damaged (%s: %s); the stored files in "
                              "%s are untouched: restore registry.db from a backup, or move it "
                              "away to start a new one",
                              r->db_path, what, msg, r->blob_dir);
    if (primary == SQLITE_FULL || (primary == SQLITE_IOERR && disk_full(r->home)))
        return mood_error_set(MOOD_EIO,
                              "%s: no space left on the device that holds the registry (%s: %s): "
                              "free some space there and run the command again",
                              r->db_path, what, msg);
    if (primary == SQLITE_NOMEM)
        return mood_error_nomem();
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
        return mood_error_set(MOOD_EIO,
                              "%s: another process kept the registry locked for %d s (%s: %s): a "
                              "long import or a stopped mood command (Ctrl-Z) may hold it; run the "
                              "command again when it has finished",
                              r->db_path, BUSY_TIMEOUT_MS / 1000, what, msg);
    if (primary == SQLITE_READONLY)
        return mood_error_set(MOOD_EIO,
                              "%s is read-only (%s: %s): make it, its folder and its -wal and -shm "
                              "files writable, or set MOOD_HOME to a registry you can write",
                              r->db_path, what, msg);
    return mood_error_set(MOOD_EIO, "%s: %s: %s", r->db_path, what, msg);
}

/* SQL for an absent or read-only registry: when a statement of it writes, the absent registry is
 * created first and the read-only one refuses. Reads pass, and are remembered: close tells that
 * there is no registry. (Statements that do not compile are left to run and report themselves.) */
static int guard_sql(mood_registry *r, const char *sql)
{
    const char *tail = sql;
    while (tail && *tail) {
        sqlite3_stmt *st = NULL;
        int writes;
        if (sqlite3_prepare_v2(r->db, tail, -1, &st, &tail) != SQLITE_OK || !st) {
            sqlite3_finalize(st);
            return 0;
        }
        writes = !sqlite3_stmt_readonly(st);
        sqlite3_finalize(st);
        if (writes)
            return mood__reg_writable(r);
    }
    r->read_absent |= r->absent;
    return 0;
}

int mood__reg_exec(mood_registry *r, const char *sql)
{
    int err = r->absent || r->readonly ? guard_sql(r, sql) : 0, rc;
    if (err)
        return err;
    rc = sqlite3_exec(r->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : mood__reg_sqlerr(r, rc, "query failed");
}

int mood__reg_begin(mood_registry *r)
{
    return mood__reg_exec(r, "BEGIN IMMEDIATE");
}

int mood__reg_commit(mood_registry *r)
{
    return mood__reg_exec(r, "COMMIT");
}

void mood__reg_rollback(mood_registry *r)
{
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
}

int mood__reg_prepare(mood_registry *r, sqlite3_stmt **st, const char *sql)
{
    int rc = sqlite3_prepare_v2(r->db, sql, -1, st, NULL), err;
    if (rc != SQLITE_OK)
        return mood__reg_sqlerr(r, rc, "preparing a query");
    if (!(r->absent || r->readonly) || sqlite3_stmt_readonly(*st)) {
        r->read_absent |= r->absent;
        return 0;
    }
    /* a write: the registry is created (or the change refused), then the statement is prepared
     * again on the new connection */
    sqlite3_finalize(*st);
    *st = NULL;
    if ((err = mood__reg_writable(r)) != 0)
        return err;
    rc = sqlite3_prepare_v2(r->db, sql, -1, st, NULL);
    return rc == SQLITE_OK ? 0 : mood__reg_sqlerr(r, rc, "preparing a query");
}

int mood__reg_step_done(mood_registry *r, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : mood__reg_sqlerr(r, rc, what);
}

int mood__reg_bind_text(sqlite3_stmt *st, int i, const char *s)
{
    int rc = s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
    return rc == SQLITE_OK ? 0 : mood_error_nomem();
}

int mood__reg_query_int(mood_registry *r, long long *out, const char *sql, const char *arg)
{
    sqlite3_stmt *st = NULL;
    int err, rc;
    *out = 0;
    if ((err = mood__reg_prepare(r, &st, sql)) != 0)
        return err;
    if (arg && (err = mood__reg_bind_text(st, 1, arg)) != 0)
        goto done;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, "query failed");
done:
    sqlite3_finalize(st);
    return err;
}

/* Files in the blobs/sha256/xx folders; -1 (errno set) when blobs/sha256 cannot be read. */
static long count_files(const char *blob_dir)
{
    DIR *top = opendir(blob_dir);
    struct dirent *e;
    char path[4096];
    long n = 0;
    if (!top)
        return errno == ENOENT ? 0 : -1;
    while ((e = readdir(top)) != NULL) {
        DIR *sub;
        struct dirent *f;
        if (strlen(e->d_name) != 2 || e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", blob_dir, e->d_name);
        if (!(sub = opendir(path)))
            continue;
        while ((f = readdir(sub)) != NULL)
            n += f->d_name[0] != '.';
        closedir(sub);
    }
    closedir(top);
    return n;
}

/* The style name closest to `name` within a slip or two (", did you mean 'X'?"), or "". */
static void close_name(mood_registry *r, const char *name, char *out, size_t size)
{
    sqlite3_stmt *st = NULL;
    size_t limit = strlen(name) < 5 ? 1 : 2, best = limit + 1;
    out[0] = '\0';
    if (mood__reg_prepare(r, &st, "SELECT name FROM styles ORDER BY name") != 0) {
        mood_error_clear();
        return;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *cand = (const char *)sqlite3_column_text(st, 0);
        size_t d = cand ? mood_str_distance(name, cand, limit) : limit + 1;
        if (d < best) {
            best = d;
            snprintf(out, size, "; did you mean '%s'?", cand);
        }
    }
    sqlite3_finalize(st);
}

int mood__reg_collect_shas(mood_registry *r, const char *sql, long long id, mood_buf *out,
                           const char *what)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st, sql), rc = SQLITE_DONE;
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, id);
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *sha = (const char *)sqlite3_column_text(st, 0);
        if (sha && mood__blob_valid_hex(sha))
            err = mood_buf_append(out, sha, 64);
    }
    if (!err && rc != SQLITE_DONE)
        err = mood__reg_sqlerr(r, rc, what);
    sqlite3_finalize(st);
    return err;
}

int mood__reg_style_id(mood_registry *r, long long *id, const char *name)
{
    int err = mood__reg_query_int(r, id, "SELECT id FROM styles WHERE name = ?1", name);
    if (!err && *id == 0 && r->absent) {
        r->read_absent = 0; /* said here; a lost database is still told at close */
        if (count_files(r->blob_dir) > 0)
            return mood_error_set(MOOD_ENOTFOUND, "no style named '%s': %s is missing", name,
                                  r->db_path);
        return mood_error_set(MOOD_ENOTFOUND,
                              "no style named '%s': there is no registry at %s yet ('mood import "
                              "FILE' or 'mood train' creates one)",
                              name, r->home);
    }
    if (!err && *id == 0) {
        char hint[NAME_MAX_LEN + 32];
        close_name(r, name, hint, sizeof hint);
        err = mood_error_set(MOOD_ENOTFOUND,
                             "no style named '%s' in the registry %s%s ('mood list' "
                             "shows the styles)",
                             name, r->home, hint);
    }
    return err;
}

/* ----- the lock ----------------------------------------------------------------------------- */

int mood__reg_lock_shared(mood_registry *r)
{
    int err;
    if (r->lock_depth == 0 && (err = mood__reg_writable(r)) != 0)
        return err;
    if (r->lock_depth++ > 0)
        return 0;
    while (flock(r->lock_fd, LOCK_SH) != 0) {
        if (errno != EINTR) {
            r->lock_depth--;
            return mood_error_set(MOOD_EIO, "%s/registry.lock: cannot lock: %s", r->home,
                                  strerror(errno));
        }
    }
    return 0;
}

void mood__reg_unlock_shared(mood_registry *r)
{
    if (r->lock_depth > 0 && --r->lock_depth == 0)
        flock(r->lock_fd, LOCK_UN);
}

int mood__reg_lock_exclusive(mood_registry *r, int wait)
{
    if (r->lock_fd < 0)
        return 0;
    /* a wait with no word looks like a hang (an import paused with Ctrl-Z holds the lock) */
    if (wait && flock(r->lock_fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)
        mood_log(MOOD_LOG_WARN,
                 "%s: another mood process is using the registry (an import, a pack import or a "
                 "training's registration); waiting for it to finish...",
                 r->home);
    while (flock(r->lock_fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
        if (errno == EWOULDBLOCK && !wait)
            return 1;
        if (errno != EINTR)
            return mood_error_set(MOOD_EIO, "%s/registry.lock: cannot lock: %s", r->home,
                                  strerror(errno));
    }
    return 0;
}

void mood__reg_unlock_exclusive(mood_registry *r)
{
    if (r->lock_fd >= 0)
        flock(r->lock_fd, LOCK_UN);
}

/* ----- opening ------------------------------------------------------------------------------- */

int mood_registry_default_home(char **out)
{
    const char *home = getenv("MOOD_HOME"), *xdg = getenv("XDG_DATA_HOME"), *h = getenv("HOME");
    mood_buf b;
    int err;
    MOOD_ARG_NONNULL(out);
    mood_buf_init(&b);
    if (home && *home)
        err = mood_buf_puts(&b, home);
    else if (xdg && *xdg)
        err = mood_buf_printf(&b, "%s/mood", xdg);
    else
        err = mood_buf_printf(&b, "%s/.local/share/mood", h && *h ? h : ".");
    *out = err ? NULL : mood_buf_detach(&b);
    mood_buf_dispose(&b);
    return err;
}

/* mkdir -p. A leading '/' is the root, not a folder to make; "" fails in mkdir (ENOENT). */
static int make_dirs(const char *path)
{
    char *p = mood_strdup(path);
    int err = 0;
    if (!p)
        return mood_error_nomem();
    for (char *s = p + (p[0] == '/');; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                err = mood_error_set(errno == EACCES ? MOOD_EIO : MOOD_EIO,
                                     "%s: cannot create the registry directory: %s", p,
                                     strerror(errno));
                break;
            }
            *s = c;
            if (c == '\0')
                break;
        }
    }
    mood_free(p);
    return err;
}

static int set_paths(mood_registry *r, const char *home)
{
    mood_buf b;
    int err = 0;
    mood_buf_init(&b);
    if (!(r->home = mood_strdup(home)))
        return mood_error_nomem();
    if ((err = mood_buf_printf(&b, "%s/registry.db", home)) != 0 ||
        !(r->db_path = mood_buf_detach(&b)) ||
        (err = mood_buf_printf(&b, "%s/blobs/sha256", home)) ||
        !(r->blob_dir = mood_buf_detach(&b)) || (err = mood_buf_printf(&b, "%s/blobs/tmp", home)) ||
        !(r->tmp_dir = mood_buf_detach(&b)))
        err = err ? err : mood_error_nomem();
    mood_buf_dispose(&b);
    return err;
}

/* stat() of registry.db's -wal or -shm file (suffix); 0 when it exists. */
static int stat_side(const mood_registry *r, const char *suffix, struct stat *st)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s%s", r->db_path, suffix) >= sizeof path)
        return -1;
    return stat(path, st);
}

/* No registry.db, or an empty file with no -wal (SQLite reads both as an empty database). */
static int db_absent(const mood_registry *r)
{
    struct stat st, wal;
    if (stat(r->db_path, &st) != 0)
        return errno == ENOENT;
    return S_ISREG(st.st_mode) && st.st_size == 0 &&
           (stat_side(r, "-wal", &wal) != 0 || wal.st_size == 0);
}

/* Whether this process may change the registry: registry.db and its folder (where SQLite keeps
 * the -wal and -shm files) writable. */
static int db_writable(const mood_registry *r)
{
    return access(r->db_path, W_OK) == 0 && access(r->home, W_OK) == 0;
}

static int readonly_error(const mood_registry *r)
{
    if (r->disk_full)
        return mood_error_set(MOOD_EIO,
                              "%s: no space left on the device that holds the registry: it can "
                              "be read but not changed; free some space and try again",
                              r->home);
    int file = access(r->db_path, W_OK) != 0;
    return mood_error_set(MOOD_EIO,
                          "%s is read-only: the registry can be read but not changed; make %s "
                          "writable (chmod u+w), or set MOOD_HOME to a registry you can write",
                          file ? r->db_path : r->home, file ? "it" : "the folder");
}

/* With readonly, a lock file that cannot be opened for writing is opened for reading (flock
 * works on it), and none at all leaves lock_fd at -1: a read-only registry has no writer here. */
static int open_lock(mood_registry *r, int readonly)
{
    mood_buf b;
    int err = 0;
    mood_buf_init(&b);
    if ((err = mood_buf_printf(&b, "%s/registry.lock", r->home)) != 0)
        return err;
    r->lock_fd = open(b.data, readonly ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0 && !readonly)
        err = mood_error_set(MOOD_EIO, "%s: cannot open: %s", b.data, strerror(errno));
    mood_buf_dispose(&b);
    return err;
}

/* WAL lets readers run beside one writer; the busy timeout makes writers of other processes
 * wait for each other instead of failing. FULL sync: a committed import survives power loss. */
static int configure(mood_registry *r)
{
    int err, rc;
    sqlite3_busy_timeout(r->db, BUSY_TIMEOUT_MS);
    /* The first statement reads the file header: a damaged file is reported here. */
    if ((err = mood__reg_exec(r, "PRAGMA journal_mode = WAL")) != 0)
        return err;
    /* Reads through a memory map (no pread per page: `mood list` of 10,000 styles reads the whole
     * database). Writes still go through the WAL, so this changes no durability. */
    if ((err = mood__reg_exec(r, "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;"
                                 " PRAGMA mmap_size = 1073741824")) != 0)
        return err;
    rc = sqlite3_exec(r->db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : mood__reg_sqlerr(r, rc, "reading the schema");
}

static int migrate(mood_registry *r)
{
    long long v;
    int err;
    /* a registry at this schema needs no write lock: list, show and search answer while
     * another process is inside a long write (WAL lets readers through, BEGIN IMMEDIATE not) */
    if (mood__reg_query_int(r, &v, "PRAGMA user_version", NULL) == 0 && v == N_MIGRATIONS) {
        r->version = (int)v;
        return 0;
    }
    mood_error_clear();
    if ((err = mood__reg_begin(r)) != 0)
        return err;
    if ((err = mood__reg_query_int(r, &v, "PRAGMA user_version", NULL)) != 0)
        goto done;
    if (v > N_MIGRATIONS) {
        err = mood_error_set(MOOD_EUNSUPPORTED,
                             "%s: schema version %lld is newer than this mood understands (%d); "
                             "use a newer mood",
                             r->db_path, v, N_MIGRATIONS);
        goto done;
    }
    for (; v < N_MIGRATIONS; v++) {
        char pragma[64];
        if ((err = mood__reg_exec(r, mood__reg_migrations[v])) != 0) {
            mood_error_prefix("schema migration %lld", v + 1);
            goto done;
        }
        snprintf(pragma, sizeof pragma, "PRAGMA user_version = %lld", v + 1);
        if ((err = mood__reg_exec(r, pragma)) != 0)
            goto done;
    }
    r->version = (int)v;
    err = mood__reg_commit(r);
done:
    if (err)
        mood__reg_rollback(r);
    return err;
}

/* Clean-up needs no import running; when one is, the next open does it. A pack import killed
 * before it could clean up leaves its extracted pack (HOME/.moodpack-PID-...: gigabytes for a
 * big pack); it goes too once its process is gone. */
static int cleanup(mood_registry *r)
{
    int err = mood__reg_lock_exclusive(r, 0);
    if (err)
        return err < 0 ? err : 0;
    mood_remove_dead_temp_dirs(r->home, MOOD_PACK_TEMP_PREFIX);
    err = mood__blob_cleanup(r);
    mood__reg_unlock_exclusive(r);
    return err;
}

/* A -wal or -shm file this user owns but cannot write (an older mood that read a read-only
 * registry.db made them, and SQLite gives them the database's mode) would keep the registry
 * unwritable after registry.db is made writable again: they get registry.db's mode back. */
static void repair_side_files(const mood_registry *r)
{
    static const char *const suffix[] = {"-wal", "-shm"};
    struct stat db, st;
    char path[4096];
    if (stat(r->db_path, &db) != 0)
        return;
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        snprintf(path, sizeof path, "%s%s", r->db_path, suffix[i]);
        if (stat(path, &st) == 0 && st.st_uid == geteuid() && access(path, W_OK) != 0)
            (void)chmod(path, db.st_mode & 0666);
    }
}

/* registry.db for reading and writing, created with the folders when missing; what interrupted
 * imports left is removed. */
static int open_disk(mood_registry *r)
{
    int err, rc;
    if ((err = make_dirs(r->blob_dir)) != 0 || (err = make_dirs(r->tmp_dir)) != 0 ||
        (err = open_lock(r, 0)) != 0)
        return err;
    repair_side_files(r);
    rc = sqlite3_open_v2(r->db_path, &r->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK)
        return mood__reg_sqlerr(r, rc, "cannot open");
    if ((err = mood__reg_functions(r->db)) != 0)
        return err;
    if ((err = configure(r)) != 0 || (err = migrate(r)) != 0)
        return err;
    return cleanup(r);
}

/* The empty registry that a folder without registry.db reads as: the schema in memory. */
static int open_absent(mood_registry *r)
{
    int rc = sqlite3_open_v2(":memory:", &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    int err;
    if (rc != SQLITE_OK)
        return mood__reg_sqlerr(r, rc, "cannot open");
    if ((err = mood__reg_functions(r->db)) != 0)
        return err;
    if ((err = migrate(r)) != 0)
        return err;
    r->absent = 1; /* only now: the migration's writes must not create the registry */
    /* a pack import killed before its first commit (no registry.db yet) left its extracted
     * pack: it goes once its process is gone, as when the registry exists (cleanup) */
    mood_remove_dead_temp_dirs(r->home, MOOD_PACK_TEMP_PREFIX);
    return 0;
}

/* "file:" URI of path with a query: bytes other than unreserved ones are percent-encoded, so
 * that a '?', '#' or '%' in a folder name stays part of the path. */
static int file_uri(char **out, const char *path, const char *query)
{
    mood_buf b;
    int err;
    mood_buf_init(&b);
    err = mood_buf_puts(&b, "file:");
    for (const unsigned char *p = (const unsigned char *)path; !err && *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("/._~-", *p))
            err = mood_buf_append(&b, p, 1);
        else
            err = mood_buf_printf(&b, "%%%02X", *p);
    }
    if (!err)
        err = mood_buf_printf(&b, "?%s", query);
    *out = err ? NULL : mood_buf_detach(&b);
    mood_buf_dispose(&b);
    return err;
}

/* A read-only registry must have this mood's schema: migrating it would write. */
static int check_version(mood_registry *r)
{
    long long v;
    int err = mood__reg_query_int(r, &v, "PRAGMA user_version", NULL);
    if (err)
        return err;
    if (v > N_MIGRATIONS)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: schema version %lld is newer than this mood understands (%d); "
                              "use a newer mood",
                              r->db_path, v, N_MIGRATIONS);
    /* migration 5 only made the search index again (notes and Civitai names in it): a schema-4
     * registry reads as it is, its search without those until a writer opens it */
    if (v < 4)
        return mood_error_set(MOOD_EIO,
                              "%s is read-only, and its schema (version %lld) must be brought to "
                              "version %d by a mood that can write it: its owner (or a user who "
                              "can write it) runs 'mood list' once",
                              r->db_path, v, N_MIGRATIONS);
    r->version = (int)v;
    return 0;
}

/* registry.db when it or its folder cannot be written: read-only, no clean-up (the next open that
 * can write does it). SQLite reads a WAL database it cannot write through its -wal and -shm when
 * they exist, but would otherwise create them, with registry.db's read-only mode, and so leave a
 * registry that no writer can open once registry.db is writable again (sqlite.org/wal.html,
 * "Read-Only Databases"). Without a -wal (or with an empty one), registry.db holds every commit:
 * it is opened immutable, which reads it alone and creates nothing. A writer starting meanwhile
 * (another user who can write) is not seen by this short read. */
static int open_readonly(mood_registry *r)
{
    struct stat wal;
    char *uri = NULL;
    int in_wal = stat_side(r, "-wal", &wal) == 0 && wal.st_size > 0, err, rc;
    r->readonly = 1;
    if ((err = open_lock(r, 1)) != 0 ||
        (err = file_uri(&uri, r->db_path, in_wal ? "mode=ro" : "immutable=1")) != 0)
        return err;
    rc = sqlite3_open_v2(uri, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                         NULL);
    mood_free(uri);
    if (rc != SQLITE_OK)
        return mood__reg_sqlerr(r, rc, "cannot open");
    if ((err = mood__reg_functions(r->db)) != 0)
        return err;
    sqlite3_busy_timeout(r->db, BUSY_TIMEOUT_MS);
    rc = sqlite3_exec(r->db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return mood__reg_sqlerr(r, rc, "reading the schema");
    return check_version(r);
}

/* The absent registry is created on disk: the in-memory one goes once that worked, and stays
 * (absent) when it did not. */
static int create_on_disk(mood_registry *r)
{
    sqlite3 *mem = r->db;
    int err;
    r->db = NULL;
    r->absent = 0;
    if ((err = open_disk(r)) == 0) {
        sqlite3_close_v2(mem);
        return 0;
    }
    sqlite3_close_v2(r->db);
    if (r->lock_fd >= 0)
        close(r->lock_fd);
    r->lock_fd = -1;
    r->db = mem;
    r->absent = 1;
    r->noted = 1; /* the error says why there is none: no "... creates one" at close */
    return err;
}

int mood__reg_writable(mood_registry *r)
{
    if (r->readonly)
        return readonly_error(r);
    return r->absent ? create_on_disk(r) : 0;
}

#define HAS_ROWS_SQL                                                                               \
    "SELECT EXISTS(SELECT 1 FROM adapters) OR EXISTS(SELECT 1 FROM previews) OR"                   \
    " EXISTS(SELECT 1 FROM style_files) OR EXISTS(SELECT 1 FROM imports_in_progress)"

int mood__reg_has_rows(mood_registry *r, int *yes)
{
    long long n = 0;
    int err = mood__reg_query_int(r, &n, HAS_ROWS_SQL, NULL);
    *yes = n != 0;
    return err;
}

int mood__reg_count_blobs(const mood_registry *r, size_t *n)
{
    long k = count_files(r->blob_dir);
    *n = k > 0 ? (size_t)k : 0;
    return k >= 0 ? 0
                  : mood_error_set(MOOD_EIO, "%s: cannot read: %s", r->blob_dir, strerror(errno));
}

/* Stored files when no row refers to any (0 otherwise). Touches no error message: close runs
 * before the caller prints its own. */
static long unreferenced_files(mood_registry *r)
{
    sqlite3_stmt *st = NULL;
    int rows = 1;
    if (sqlite3_prepare_v2(r->db, HAS_ROWS_SQL, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        rows = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rows ? 0 : count_files(r->blob_dir);
}

/* What the caller (a command) has not been told: registry.db gone or without rows while
 * blobs/ holds files (whatever the command: they may be the only copies of what was imported),
 * or, after a query, that there is no registry here (a mistyped MOOD_HOME reads as empty). */
static void tell_state(mood_registry *r)
{
    long n = r->noted || !r->db ? 0 : unreferenced_files(r);
    /* a first import running meanwhile stores its file and then has its registry.db: one that
     * exists now was being made, not lost */
    if (n > 0 && r->absent && mood_path_exists(r->db_path))
        n = 0;
    if (n > 0)
        mood_log(MOOD_LOG_WARN,
                 "%s %s, but %ld stored file%s remain%s in %s: restore registry.db from a "
                 "backup, or import the LoRA files again ('mood import FILE'); 'mood doctor' "
                 "says more",
                 r->db_path, r->absent ? "is missing" : "holds no LoRAs", n, n == 1 ? "" : "s",
                 n == 1 ? "s" : "", r->blob_dir);
    else if (!r->noted && r->absent && r->read_absent)
        mood_log(MOOD_LOG_WARN,
                 "no registry at %s yet%s: 'mood import FILE' or 'mood train' creates one", r->home,
                 /* a failed download keeps its part in HOME/downloads for the next try */
                 mood_path_exists(r->home) ? "" : " (nothing was created)");
}

/* After open_disk failed: on a full disk, SQLite cannot make its 32 KiB -shm file, and so could
 * not even read; when registry.db holds every commit (no -wal, or an empty one) it is read alone,
 * immutable, and only changes are refused (list, show, gen and doctor still work). 0 when it
 * could be read so; the open's error stays otherwise. */
static int read_on_full_disk(mood_registry *r)
{
    struct stat wal;
    char *why;
    int err;
    if (!disk_full(r->home) || (stat_side(r, "-wal", &wal) == 0 && wal.st_size > 0))
        return -1;
    if (!(why = mood_strdup(mood_error_last())))
        return -1;
    sqlite3_close_v2(r->db);
    r->db = NULL;
    if (r->lock_fd >= 0)
        close(r->lock_fd);
    r->lock_fd = -1;
    r->disk_full = 1;
    if ((err = open_readonly(r)) != 0) {
        mood_error_set(MOOD_EIO, "%s", why); /* the first reason is the one to tell */
        r->readonly = r->disk_full = 0;
    }
    mood_free(why);
    return err;
}

int mood_registry_open(mood_registry **out, const char *home)
{
    mood_registry *r;
    char *def = NULL;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    /* "" would put registry.db and blobs/ at the filesystem's root ("/registry.db") */
    if (home && !home[0])
        return mood_error_set(MOOD_EINVAL, "mood_registry_open: home is \"\": give a folder, or "
                                           "NULL for the default home");
    if (!(r = mood_calloc(1, sizeof *r)))
        return mood_error_nomem();
    r->lock_fd = -1;
    if (!home && (err = mood_registry_default_home(&def)) != 0)
        goto done;
    if ((err = set_paths(r, home ? home : def)) != 0)
        goto done;
    if (db_absent(r))
        err = open_absent(r);
    else if (!db_writable(r))
        err = open_readonly(r);
    else if ((err = open_disk(r)) != 0 && read_on_full_disk(r) == 0)
        err = 0;
    if (err)
        goto done;
    *out = r;
    r = NULL;
done:
    if (r)
        r->noted = 1; /* nothing to tell about a registry that did not open */
    mood_free(def);
    mood_registry_close(r);
    return err;
}

void mood_registry_close(mood_registry *r)
{
    if (!r)
        return;
    tell_state(r);
    sqlite3_close_v2(r->db);
    if (r->lock_fd >= 0)
        close(r->lock_fd);
    mood_free(r->home);
    mood_free(r->db_path);
    mood_free(r->blob_dir);
    mood_free(r->tmp_dir);
    mood_free(r);
}

/* Callers put files in the folder (downloads, a pack being read): an absent registry's folder is
 * made here; a failure shows in the caller's own error. */
const char *mood_registry_home(const mood_registry *r)
{
    if (r->absent && make_dirs(r->home) != 0)
        mood_error_clear();
    return r->home;
}

int mood_registry_exists(const mood_registry *r)
{
    return !r->absent;
}

int mood_registry_read_only(const mood_registry *r)
{
    return r->readonly;
}

int mood_registry_read_only_error(const mood_registry *r)
{
    MOOD_ARG_NONNULL(r);
    return r->readonly ? readonly_error(r) : 0;
}

int mood_registry_schema_version(const mood_registry *r)
{
    return r->version;
}

void mood_registry_free_string(char *s)
{
    mood_free(s);
}

/* ----- names ------------------------------------------------------------------------------- */

/* Civitai links `<lora:NAME:W>` only for NAME in [A-Za-z0-9_.-]+ (ecosystem.md §4.2), and A1111
 * splits the tag's arguments on ':' and ends it at '>': so nothing else is allowed. */
static int name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

int mood_registry_name_check(const char *name)
{
    size_t n;
    int err;
    MOOD_ARG_NONNULL(name);
    n = strlen(name);
    err = mood__reg_text_check(name, "style name"); /* before quoting it in a message */
    if (err)
        return err;
    if (n == 0)
        return mood_error_set(MOOD_EINVAL, "a style name cannot be empty");
    if (name[0] == '-' || name[0] == '.')
        return mood_error_set(MOOD_EINVAL,
                              "style name '%s' cannot start with '%c' (it would read as an option "
                              "or a hidden file)",
                              name, name[0]);
    for (size_t i = 0; i < n; i++) {
        char what[32] = "a non-ASCII character";
        if (name_char((unsigned char)name[i]))
            continue;
        /* one byte of a multi-byte character is not quoted: the message must stay UTF-8 */
        if ((unsigned char)name[i] < 0x80)
            snprintf(what, sizeof what, "'%c'", name[i]);
        return mood_error_set(MOOD_EINVAL,
                              "style name '%s' has %s at position %zu: names may only use "
                              "letters, digits, '_', '-' and '.' so that <lora:NAME:W> works in "
                              "A1111 and Civitai",
                              name, what, i + 1);
    }
    /* after the character check: the name is ASCII, so cutting it for the message is safe */
    if (n > NAME_MAX_LEN)
        return mood_error_set(MOOD_EINVAL,
                              "style name '%.40s...' is too long (%zu characters, at "
                              "most %d)",
                              name, n, NAME_MAX_LEN);
    return 0;
}

/* A letter with accents gives its ASCII letter (ñandú -> nandu: Civitai's file names are often
 * Spanish, French, Vietnamese); runs of other characters become one '_'; leading/trailing '_',
 * '-', '.' go. */
/* The ASCII spelling of a letter with no decomposition to a base letter (Æ, ø, ß: the usual
 * transliterations, as in file names people type without them), of a full-width ASCII character
 * (ｆｕｌｌ), or NULL. */
static const char *ascii_spelling(uint32_t cp, char one[2])
{
    static const struct {
        uint32_t cp;
        const char *ascii;
    } letters[] = {{0xC6, "AE"}, {0xD0, "D"},  {0xD8, "O"},  {0xDE, "TH"},  {0xDF, "ss"},
                   {0xE6, "ae"}, {0xF0, "d"},  {0xF8, "o"},  {0xFE, "th"},  {0x110, "D"},
                   {0x111, "d"}, {0x126, "H"}, {0x127, "h"}, {0x131, "i"},  {0x141, "L"},
                   {0x142, "l"}, {0x14A, "N"}, {0x14B, "n"}, {0x152, "OE"}, {0x153, "oe"},
                   {0x166, "T"}, {0x167, "t"}, {0x17F, "s"}, {0x1E9E, "SS"}};
    if (cp >= 0xFF01 && cp <= 0xFF5E) { /* full-width forms of ASCII '!'..'~' */
        one[0] = (char)(cp - 0xFEE0);
        one[1] = '\0';
        return one;
    }
    for (size_t i = 0; i < sizeof letters / sizeof letters[0]; i++)
        if (letters[i].cp == cp)
            return letters[i].ascii;
    return NULL;
}

void mood_registry_name_sanitize(char *dst, size_t cap, const char *src)
{
    size_t n = 0, len = strlen(src), k;
    int gap = 0;
    for (size_t i = 0; i < len && n + 1 < cap && n < NAME_MAX_LEN - 8; i += k ? k : 1) {
        uint32_t cp = (unsigned char)src[i];
        char one[2] = {0, 0};
        const char *spelled;
        k = mood__utf8_decode((const unsigned char *)src + i, len - i, &cp);
        if (k > 1 && mood__uc_ccc_of(cp) != 0)
            continue; /* an accent apart from its letter (a macOS file name, NFD): dropped */
        if (k > 1)
            cp = mood__uc_base_letter(cp);
        if (k > 1 && (spelled = ascii_spelling(cp, one)) != NULL && name_char(spelled[0]))
            cp = (unsigned char)spelled[0];
        else
            spelled = NULL;
        if (k && cp < 0x80 && name_char((int)cp)) {
            char ascii[2] = {(char)cp, '\0'};
            if (gap && n > 0)
                dst[n++] = '_';
            gap = 0;
            for (const char *c = spelled ? spelled : ascii; *c && n + 1 < cap; c++)
                dst[n++] = *c;
        } else {
            gap = 1;
        }
    }
    while (n > 0 && (dst[n - 1] == '_' || dst[n - 1] == '-' || dst[n - 1] == '.'))
        n--;
    dst[n] = '\0';
    size_t skip = strspn(dst, "_-.");
    memmove(dst, dst + skip, n - skip + 1);
    if (!dst[0])
        snprintf(dst, cap, "style");
}

int mood_registry_name_suggest(char **out, mood_registry *r, const char *wanted)
{
    char base[NAME_MAX_LEN + 1], cand[NAME_MAX_LEN + 16];
    long long taken = 0;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(wanted);
    if (mood_registry_name_check(wanted) == 0) { /* valid: itself when free (even 100 long) */
        if ((err = mood__reg_query_int(r, &taken, "SELECT count(*) FROM styles WHERE name = ?1",
                                       wanted)) != 0)
            return err;
        if (!taken)
            return (*out = mood_strdup(wanted)) ? 0 : mood_error_nomem();
    }
    mood_error_clear();
    mood_registry_name_sanitize(base, sizeof base, wanted);
    snprintf(cand, sizeof cand, "%s", base);
    for (int i = 2; i < 100000; i++) {
        if ((err = mood__reg_query_int(r, &taken, "SELECT count(*) FROM styles WHERE name = ?1",
                                       cand)) != 0)
            return err;
        if (!taken)
            break;
        snprintf(cand, sizeof cand, "%s-%d", base, i);
    }
    if (!(*out = mood_strdup(cand)))
        err = mood_error_nomem();
    return err;
}
