/*
 * registry.c: opening the registry: where it lives, the SQLite connection (WAL, busy timeout,
 * foreign keys, full sync), schema migrations, the registry-wide lock, the clean-up of
 * interrupted imports, SQLite error mapping and style-name rules.
 *
 * Migrations: `PRAGMA user_version` holds the number of steps applied; each step of the table
 * below runs once, in order, inside one IMMEDIATE transaction together with the version bump, so
 * two processes opening a new registry at once migrate it once. A database newer than this
 * program is refused rather than misread.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/registry_impl.h"

#define BUSY_TIMEOUT_MS 30000
#define NAME_MAX_LEN    100

/* Schema steps; step i brings user_version from i to i + 1. Never edit a step that has shipped:
 * add one. Columns for Civitai (model/version ids, AIR, licence, NSFW) are there from the start
 * so that linking fills them without a migration. */
static const char *const migrations[] = {
    /* 1: the first schema */
    "CREATE TABLE adapters("
    " sha256 TEXT PRIMARY KEY NOT NULL,"
    " autov3 TEXT, size INTEGER NOT NULL, family TEXT NOT NULL DEFAULT 'unknown',"
    " family_source TEXT, algorithm TEXT, rank INTEGER, alpha REAL, dtype TEXT,"
    " modules INTEGER, metadata_json TEXT, trigger_words_json TEXT, file_name TEXT,"
    " imported_at TEXT NOT NULL);"
    "CREATE INDEX adapters_autov3 ON adapters(autov3);"
    "CREATE TABLE styles("
    " id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,"
    " description TEXT, notes TEXT, trigger_words TEXT, template TEXT, negative TEXT,"
    " weight REAL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);"
    "CREATE TABLE style_adapters("
    " style_id INTEGER NOT NULL REFERENCES styles(id) ON DELETE CASCADE,"
    " adapter_sha256 TEXT NOT NULL REFERENCES adapters(sha256),"
    " unet_weight REAL NOT NULL DEFAULT 1, te_weight REAL NOT NULL DEFAULT 1,"
    " position INTEGER NOT NULL, PRIMARY KEY(style_id, position));"
    "CREATE INDEX style_adapters_sha ON style_adapters(adapter_sha256);"
    "CREATE TABLE tags("
    " style_id INTEGER NOT NULL REFERENCES styles(id) ON DELETE CASCADE,"
    " tag TEXT NOT NULL COLLATE NOCASE, PRIMARY KEY(style_id, tag));"
    "CREATE TABLE previews("
    " id INTEGER PRIMARY KEY, style_id INTEGER NOT NULL REFERENCES styles(id) ON DELETE CASCADE,"
    " blob_sha256 TEXT NOT NULL, media_type TEXT, origin TEXT, nsfw_level INTEGER,"
    " position INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX previews_sha ON previews(blob_sha256);"
    "CREATE TABLE sources("
    " id INTEGER PRIMARY KEY,"
    " adapter_sha256 TEXT NOT NULL REFERENCES adapters(sha256) ON DELETE CASCADE,"
    " kind TEXT NOT NULL," /* file, url, civitai, pack */
    " location TEXT, sidecar_json TEXT, civitai_info_json TEXT,"
    " civitai_model_id INTEGER, civitai_version_id INTEGER, model_name TEXT, version_name TEXT,"
    " base_model TEXT, air TEXT, license TEXT, nsfw INTEGER, nsfw_level INTEGER,"
    " permissions_json TEXT, added_at TEXT NOT NULL);"
    "CREATE INDEX sources_sha ON sources(adapter_sha256);"
    /* Imports in progress: one row per blob being added, written (committed) before its
     * temporary file is created and deleted in the transaction that commits the import. */
    "CREATE TABLE imports_in_progress("
    " tmp_name TEXT PRIMARY KEY NOT NULL, sha256 TEXT NOT NULL, pid INTEGER,"
    " started_at TEXT NOT NULL);"
    /* Search index, kept in sync by triggers (rowid = styles.id). */
    "CREATE VIRTUAL TABLE styles_fts USING fts5(name, trigger_words, tags, description,"
    " tokenize = 'unicode61');"
    "CREATE TRIGGER styles_fts_ai AFTER INSERT ON styles BEGIN"
    " INSERT INTO styles_fts(rowid, name, trigger_words, tags, description)"
    " VALUES (new.id, new.name, new.trigger_words, '', new.description); END;"
    "CREATE TRIGGER styles_fts_au AFTER UPDATE ON styles BEGIN"
    " DELETE FROM styles_fts WHERE rowid = old.id;"
    " INSERT INTO styles_fts(rowid, name, trigger_words, tags, description)"
    " VALUES (new.id, new.name, new.trigger_words,"
    "  (SELECT group_concat(tag, ' ') FROM tags WHERE style_id = new.id), new.description); END;"
    "CREATE TRIGGER styles_fts_ad AFTER DELETE ON styles BEGIN"
    " DELETE FROM styles_fts WHERE rowid = old.id; END;"
    "CREATE TRIGGER tags_fts_ai AFTER INSERT ON tags BEGIN"
    " UPDATE styles_fts SET tags = (SELECT group_concat(tag, ' ') FROM tags"
    "  WHERE style_id = new.style_id) WHERE rowid = new.style_id; END;"
    "CREATE TRIGGER tags_fts_ad AFTER DELETE ON tags BEGIN"
    " UPDATE styles_fts SET tags = (SELECT group_concat(tag, ' ') FROM tags"
    "  WHERE style_id = old.style_id) WHERE rowid = old.style_id; END;",
    /* 2: list and search count each style's previews: look them up by style */
    "CREATE INDEX previews_style ON previews(style_id, position);",
    /* 3: what list and search show of each style, kept in the styles row by triggers: listing
     * 10,000 styles is then one table scan instead of six lookups per style. */
    "ALTER TABLE styles ADD COLUMN sum_family TEXT;"
    "ALTER TABLE styles ADD COLUMN sum_algorithm TEXT;"
    "ALTER TABLE styles ADD COLUMN sum_rank INTEGER;"
    "ALTER TABLE styles ADD COLUMN sum_adapters INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE styles ADD COLUMN sum_previews INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE styles ADD COLUMN sum_tags TEXT;"
    "CREATE TRIGGER sum_style_adapters_insert AFTER INSERT ON style_adapters BEGIN UPDATE sty"
    "les SET sum_family = (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha256"
    " = sa.adapter_sha256 WHERE sa.style_id = new.style_id AND sa.position = 0), sum_algorith"
    "m = (SELECT a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_"
    "sha256 WHERE sa.style_id = new.style_id AND sa.position = 0), sum_rank = (SELECT a.rank "
    "FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id"
    " = new.style_id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapter"
    "s WHERE style_id = new.style_id), sum_previews = (SELECT count(*) FROM previews WHERE st"
    "yle_id = new.style_id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag "
    "FROM tags WHERE style_id = new.style_id ORDER BY tag)) WHERE id = new.style_id; END;"
    "CREATE TRIGGER sum_style_adapters_delete AFTER DELETE ON style_adapters BEGIN UPDATE sty"
    "les SET sum_family = (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha256"
    " = sa.adapter_sha256 WHERE sa.style_id = old.style_id AND sa.position = 0), sum_algorith"
    "m = (SELECT a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_"
    "sha256 WHERE sa.style_id = old.style_id AND sa.position = 0), sum_rank = (SELECT a.rank "
    "FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id"
    " = old.style_id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapter"
    "s WHERE style_id = old.style_id), sum_previews = (SELECT count(*) FROM previews WHERE st"
    "yle_id = old.style_id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag "
    "FROM tags WHERE style_id = old.style_id ORDER BY tag)) WHERE id = old.style_id; END;"
    "CREATE TRIGGER sum_style_adapters_update AFTER UPDATE ON style_adapters BEGIN UPDATE sty"
    "les SET sum_family = (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha256"
    " = sa.adapter_sha256 WHERE sa.style_id = old.style_id AND sa.position = 0), sum_algorith"
    "m = (SELECT a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_"
    "sha256 WHERE sa.style_id = old.style_id AND sa.position = 0), sum_rank = (SELECT a.rank "
    "FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id"
    " = old.style_id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapter"
    "s WHERE style_id = old.style_id), sum_previews = (SELECT count(*) FROM previews WHERE st"
    "yle_id = old.style_id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag "
    "FROM tags WHERE style_id = old.style_id ORDER BY tag)) WHERE id = old.style_id; UPDATE s"
    "tyles SET sum_family = (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha2"
    "56 = sa.adapter_sha256 WHERE sa.style_id = new.style_id AND sa.position = 0), sum_algori"
    "thm = (SELECT a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapte"
    "r_sha256 WHERE sa.style_id = new.style_id AND sa.position = 0), sum_rank = (SELECT a.ran"
    "k FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_"
    "id = new.style_id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapt"
    "ers WHERE style_id = new.style_id), sum_previews = (SELECT count(*) FROM previews WHERE "
    "style_id = new.style_id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT ta"
    "g FROM tags WHERE style_id = new.style_id ORDER BY tag)) WHERE id = new.style_id; END;"
    "CREATE TRIGGER sum_tags_insert AFTER INSERT ON tags BEGIN UPDATE styles SET sum_family ="
    " (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256"
    " WHERE sa.style_id = new.style_id AND sa.position = 0), sum_algorithm = (SELECT a.algori"
    "thm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.styl"
    "e_id = new.style_id AND sa.position = 0), sum_rank = (SELECT a.rank FROM style_adapters "
    "sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id = new.style_id AND "
    "sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapters WHERE style_id = n"
    "ew.style_id), sum_previews = (SELECT count(*) FROM previews WHERE style_id = new.style_i"
    "d), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag FROM tags WHERE styl"
    "e_id = new.style_id ORDER BY tag)) WHERE id = new.style_id; END;"
    "CREATE TRIGGER sum_tags_delete AFTER DELETE ON tags BEGIN UPDATE styles SET sum_family ="
    " (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256"
    " WHERE sa.style_id = old.style_id AND sa.position = 0), sum_algorithm = (SELECT a.algori"
    "thm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.styl"
    "e_id = old.style_id AND sa.position = 0), sum_rank = (SELECT a.rank FROM style_adapters "
    "sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id = old.style_id AND "
    "sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapters WHERE style_id = o"
    "ld.style_id), sum_previews = (SELECT count(*) FROM previews WHERE style_id = old.style_i"
    "d), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag FROM tags WHERE styl"
    "e_id = old.style_id ORDER BY tag)) WHERE id = old.style_id; END;"
    "CREATE TRIGGER sum_previews_insert AFTER INSERT ON previews BEGIN UPDATE styles SET sum_"
    "family = (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapte"
    "r_sha256 WHERE sa.style_id = new.style_id AND sa.position = 0), sum_algorithm = (SELECT "
    "a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE"
    " sa.style_id = new.style_id AND sa.position = 0), sum_rank = (SELECT a.rank FROM style_a"
    "dapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id = new.style"
    "_id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapters WHERE styl"
    "e_id = new.style_id), sum_previews = (SELECT count(*) FROM previews WHERE style_id = new"
    ".style_id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag FROM tags WH"
    "ERE style_id = new.style_id ORDER BY tag)) WHERE id = new.style_id; END;"
    "CREATE TRIGGER sum_previews_delete AFTER DELETE ON previews BEGIN UPDATE styles SET sum_"
    "family = (SELECT a.family FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapte"
    "r_sha256 WHERE sa.style_id = old.style_id AND sa.position = 0), sum_algorithm = (SELECT "
    "a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE"
    " sa.style_id = old.style_id AND sa.position = 0), sum_rank = (SELECT a.rank FROM style_a"
    "dapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id = old.style"
    "_id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapters WHERE styl"
    "e_id = old.style_id), sum_previews = (SELECT count(*) FROM previews WHERE style_id = old"
    ".style_id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag FROM tags WH"
    "ERE style_id = old.style_id ORDER BY tag)) WHERE id = old.style_id; END;"
    "CREATE TRIGGER sum_adapters_update AFTER UPDATE OF family, algorithm, rank ON adapters B"
    "EGIN UPDATE styles SET sum_family = (SELECT a.family FROM style_adapters sa JOIN adapter"
    "s a ON a.sha256 = sa.adapter_sha256 WHERE sa.style_id = styles.id AND sa.position = 0), "
    "sum_algorithm = (SELECT a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 ="
    " sa.adapter_sha256 WHERE sa.style_id = styles.id AND sa.position = 0), sum_rank = (SELEC"
    "T a.rank FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa"
    ".style_id = styles.id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_a"
    "dapters WHERE style_id = styles.id), sum_previews = (SELECT count(*) FROM previews WHERE"
    " style_id = styles.id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag "
    "FROM tags WHERE style_id = styles.id ORDER BY tag)) WHERE id IN (SELECT style_id FROM st"
    "yle_adapters WHERE adapter_sha256 = new.sha256); END;"
    "UPDATE styles SET sum_family = (SELECT a.family FROM style_adapters sa JOIN adapters a O"
    "N a.sha256 = sa.adapter_sha256 WHERE sa.style_id = styles.id AND sa.position = 0), sum_a"
    "lgorithm = (SELECT a.algorithm FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.a"
    "dapter_sha256 WHERE sa.style_id = styles.id AND sa.position = 0), sum_rank = (SELECT a.r"
    "ank FROM style_adapters sa JOIN adapters a ON a.sha256 = sa.adapter_sha256 WHERE sa.styl"
    "e_id = styles.id AND sa.position = 0), sum_adapters = (SELECT count(*) FROM style_adapte"
    "rs WHERE style_id = styles.id), sum_previews = (SELECT count(*) FROM previews WHERE styl"
    "e_id = styles.id), sum_tags = (SELECT group_concat(tag, char(31)) FROM (SELECT tag FROM "
    "tags WHERE style_id = styles.id ORDER BY tag));",
    /* 4: what a style trained by `mood train` keeps besides its adapters and previews: how it
     * was trained (a JSON object) and files of other roles, stored as blobs like the rest:
     * "board" (mood board thumbnails), "loss_csv" and "loss_plot" (the loss curve). */
    "ALTER TABLE styles ADD COLUMN training_json TEXT;"
    "CREATE TABLE style_files("
    " id INTEGER PRIMARY KEY, style_id INTEGER NOT NULL REFERENCES styles(id) ON DELETE CASCADE,"
    " role TEXT NOT NULL, blob_sha256 TEXT NOT NULL, media_type TEXT, name TEXT,"
    " width INTEGER, height INTEGER, position INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX style_files_style ON style_files(style_id, role, position);"
    "CREATE INDEX style_files_sha ON style_files(blob_sha256);",
};
#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

/* ----- SQLite helpers --------------------------------------------------------------------- */

int mood__reg_sqlerr(mood_registry *r, int rc, const char *what)
{
    int primary = rc & 0xff;
    const char *msg = r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(rc);
    if (primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: the registry database is damaged (%s: %s); the stored files in "
                              "%s are untouched: move the damaged file away to start a new one",
                              r->db_path, what, msg, r->blob_dir);
    if (primary == SQLITE_NOMEM)
        return mood_error_nomem();
    return mood_error_set(MOOD_EIO, "%s: %s: %s", r->db_path, what, msg);
}

int mood__reg_exec(mood_registry *r, const char *sql)
{
    int rc = sqlite3_exec(r->db, sql, NULL, NULL, NULL);
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
    int rc = sqlite3_prepare_v2(r->db, sql, -1, st, NULL);
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

int mood__reg_style_id(mood_registry *r, long long *id, const char *name)
{
    int err = mood__reg_query_int(r, id, "SELECT id FROM styles WHERE name = ?1", name);
    if (!err && *id == 0)
        err = mood_error_set(MOOD_ENOTFOUND,
                             "no style named '%s' in the registry %s ('mood list' "
                             "shows the styles)",
                             name, r->home);
    return err;
}

/* ----- the lock ----------------------------------------------------------------------------- */

int mood__reg_lock_shared(mood_registry *r)
{
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
    flock(r->lock_fd, LOCK_UN);
}

/* ----- opening ------------------------------------------------------------------------------- */

int mood_registry_default_home(char **out)
{
    const char *home = getenv("MOOD_HOME"), *xdg = getenv("XDG_DATA_HOME"), *h = getenv("HOME");
    mood_buf b;
    int err;
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

/* mkdir -p */
static int make_dirs(const char *path)
{
    char *p = mood_strdup(path);
    int err = 0;
    if (!p)
        return mood_error_nomem();
    for (char *s = p + 1;; s++) {
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
    if (!err && !(err = make_dirs(r->blob_dir)))
        err = make_dirs(r->tmp_dir);
    return err;
}

static int open_lock(mood_registry *r)
{
    mood_buf b;
    int err;
    mood_buf_init(&b);
    if ((err = mood_buf_printf(&b, "%s/registry.lock", r->home)) != 0)
        return err;
    r->lock_fd = open(b.data, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0)
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
        if ((err = mood__reg_exec(r, migrations[v])) != 0) {
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

/* Clean-up needs no import running; when one is, the next open does it. */
static int cleanup(mood_registry *r)
{
    int err = mood__reg_lock_exclusive(r, 0);
    if (err)
        return err < 0 ? err : 0;
    err = mood__blob_cleanup(r);
    mood__reg_unlock_exclusive(r);
    return err;
}

int mood_registry_open(mood_registry **out, const char *home)
{
    mood_registry *r = mood_calloc(1, sizeof *r);
    char *def = NULL;
    int err = 0, rc;
    *out = NULL;
    if (!r)
        return mood_error_nomem();
    r->lock_fd = -1;
    if (!home && (err = mood_registry_default_home(&def)) != 0)
        goto done;
    if ((err = set_paths(r, home ? home : def)) != 0 || (err = open_lock(r)) != 0)
        goto done;
    rc = sqlite3_open_v2(r->db_path, &r->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        err = mood__reg_sqlerr(r, rc, "cannot open");
        goto done;
    }
    if ((err = configure(r)) != 0 || (err = migrate(r)) != 0 || (err = cleanup(r)) != 0)
        goto done;
    *out = r;
    r = NULL;
done:
    mood_free(def);
    mood_registry_close(r);
    return err;
}

void mood_registry_close(mood_registry *r)
{
    if (!r)
        return;
    sqlite3_close_v2(r->db);
    if (r->lock_fd >= 0)
        close(r->lock_fd);
    mood_free(r->home);
    mood_free(r->db_path);
    mood_free(r->blob_dir);
    mood_free(r->tmp_dir);
    mood_free(r);
}

const char *mood_registry_home(const mood_registry *r)
{
    return r->home;
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
    size_t n = strlen(name);
    int err = mood__reg_text_check(name, "style name"); /* before quoting it in a message */
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

/* Runs of other characters become one '_'; leading/trailing '_', '-', '.' go. */
static void sanitize(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    int gap = 0;
    for (const char *s = src; *s && n + 1 < cap && n < NAME_MAX_LEN - 8; s++) {
        if (name_char((unsigned char)*s)) {
            if (gap && n > 0)
                dst[n++] = '_';
            gap = 0;
            if (n + 1 < cap)
                dst[n++] = *s;
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
    *out = NULL;
    sanitize(base, sizeof base, wanted);
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
