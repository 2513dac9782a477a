/*
 * registry_impl.h: what the files of registry/ share (not installed): the handle, SQLite helpers
 * that turn rc + sqlite3_errmsg() into mood errors naming registry.db, the registry-wide lock and
 * the blob store. Only registry/ includes sqlite3.h.
 *
 * States: a folder without registry.db (or with an empty file) is "absent": open creates nothing
 * and queries run on an empty schema in memory; the first change (a statement that writes, the
 * shared lock an import takes) creates the folders and registry.db; changes to a style that
 * must exist already (edit, rename, tag, rm: edit.c) are refused before their first write, so a
 * mistyped MOOD_HOME gets no empty registry. A registry.db this process cannot write (or whose
 * folder it cannot write) is "read-only": it is opened read-only, without the clean-up of
 * interrupted imports, and changes are refused naming the file.
 *
 * Locking: HOME/registry.lock is held shared (flock) by every import from before its journal row
 * is written until its temporary file is gone, and exclusively by the clean-up of interrupted
 * imports and by `doctor --fix`, so clean-up never sees the temporary file of a live import.
 */
#ifndef MOOD_REGISTRY_REGISTRY_IMPL_H
#define MOOD_REGISTRY_REGISTRY_IMPL_H

#include <sqlite3.h>

#include "common/common.h"
#include "mood/lora.h"
#include "mood/registry.h"
#include "mood/safetensors.h"

struct mood_registry {
    sqlite3 *db;
    char *home;
    char *db_path;
    char *blob_dir; /* HOME/blobs/sha256 */
    char *tmp_dir;  /* HOME/blobs/tmp: temporary files of imports in progress */
    int lock_fd;    /* HOME/registry.lock */
    int lock_depth; /* nested shared holds */
    int version;
    int absent;      /* no registry.db yet: db is an empty in-memory one (see above) */
    int readonly;    /* registry.db or HOME cannot be written: db is opened read-only */
    int disk_full;   /* with readonly: writable, but no room for SQLite's -shm (see open) */
    int read_absent; /* a query ran on the absent registry: close says that there is none */
    int noted;       /* doctor told there is no usable database: close adds no warning */
};

/* Adds tag ?2 to style ?1 unless it has it in any case (mood_fold: Unicode lower case, "Ölbild"
 * is "ölbild"; SQLite's NOCASE folds ASCII only), and removes it so. mood_fold is registered on
 * every connection (registry.c) and used in no schema object, so other tools still open the
 * database. */
/* ----- a file imported before (import_known.c) ----- */
struct stat;
/* Binds a file's size, modification and change times (ns) and inode, and the modification time
 * of sha256's stored copy (NULL when there is none) at ?from..?from+4: what a file source
 * records (schema 7). */
void mood__reg_bind_file_stat(sqlite3_stmt *st, int from, const struct stat *fs,
                              const mood_registry *r, const char *sha256);
/* The style that is the file sha256 alone (weights 1 and 1) into name_out; *found 0 when none. */
int mood__reg_holder_of(mood_registry *r, const char *sha256, char *name_out, size_t cap,
                        int *found);
/* *known 1 (and out filled as an "already" import) when path is a file imported before from the
 * same place, unchanged since (size, times, inode), its style and stored copy there. */
int mood__reg_known_file(mood_registry *r, const char *path, mood_import_result *out, int *known);
/* Records the size, times and inode of the file at location (a file source of sha256): sources
 * imported before schema 7 have none, so the next import of an unchanged file is recognised. */
int mood__reg_note_file(mood_registry *r, const char *sha256, const char *location,
                        const struct stat *fs);

/* Registers the registry's SQL function mood_fold and collation mood_natural (s9 before s10)
 * on a new connection (utf8.c). */
int mood__reg_functions(sqlite3 *db);
/* Whether text from another program (Civitai, a sidecar) is a tag as it is: what `mood tag`
 * accepts (edit.c); no error is left set. */
int mood__reg_tag_usable(const char *tag);
#define MOOD__REG_ADD_TAG_SQL                                                                      \
    "INSERT INTO tags(style_id, tag) SELECT CAST(?1 AS INTEGER), ?2 WHERE NOT EXISTS (SELECT 1"    \
    " FROM tags WHERE style_id = CAST(?1 AS INTEGER) AND mood_fold(tag) = mood_fold(?2))"
#define MOOD__REG_REMOVE_TAG_SQL                                                                   \
    "DELETE FROM tags WHERE style_id = CAST(?1 AS INTEGER) AND mood_fold(tag) = mood_fold(?2)"

/* Prefix of the temporary files of imports: "import-PID-N.part" in tmp_dir. Only files matching
 * it are ever deleted from tmp_dir. */
#define MOOD__REG_TMP_PREFIX "import-"
#define MOOD__REG_TMP_SUFFIX ".part"

/* The schema steps (schema.c): step i brings user_version from i to i + 1. */
extern const char *const mood__reg_migrations[];
extern const int mood__reg_n_migrations;
/* Appends the SHA-256s (64 characters each) of the rows sql (?1 = id) gives to out; `what`
 * names the reading in errors. */
int mood__reg_collect_shas(mood_registry *r, const char *sql, long long id, mood_buf *out,
                           const char *what);

/* MOOD_EIO (MOOD_EFORMAT for a corrupt database) with "registry.db: what: sqlite message". */
int mood__reg_sqlerr(mood_registry *r, int rc, const char *what);
int mood__reg_exec(mood_registry *r, const char *sql);
/* BEGIN IMMEDIATE (waits for other writers up to the busy timeout). */
int mood__reg_begin(mood_registry *r);
int mood__reg_commit(mood_registry *r);
void mood__reg_rollback(mood_registry *r);
int mood__reg_prepare(mood_registry *r, sqlite3_stmt **st, const char *sql);
/* Steps a statement that returns no rows and finalizes it; `what` names the work in errors. */
int mood__reg_step_done(mood_registry *r, sqlite3_stmt *st, const char *what);
/* Binds a string or NULL. */
int mood__reg_bind_text(sqlite3_stmt *st, int i, const char *s);
/* Runs a statement that returns one integer (0 when no row). */
int mood__reg_query_int(mood_registry *r, long long *out, const char *sql, const char *arg);

/* Before a change made other than through SQL: creates an absent registry; MOOD_EIO naming the
 * file for a read-only one. (Statements that write do this themselves.) */
int mood__reg_writable(mood_registry *r);
/* Whether any row refers to a stored file (adapters, previews, style files, imports in
 * progress). */
int mood__reg_has_rows(mood_registry *r, int *yes);
/* How many files blobs/sha256 holds (0 when it does not exist). */
int mood__reg_count_blobs(const mood_registry *r, size_t *n);

/* Registry-wide lock (see above). The shared lock is taken only by writers: it creates an absent
 * registry and refuses a read-only one. Without a lock file (an absent registry, a read-only
 * folder without one) the exclusive lock is a no-op: no writer of ours can run there. */
int mood__reg_lock_shared(mood_registry *r);
void mood__reg_unlock_shared(mood_registry *r);
/* Exclusive; with wait 0 returns 1 (and holds nothing) when someone else holds the lock. */
int mood__reg_lock_exclusive(mood_registry *r, int wait);
void mood__reg_unlock_exclusive(mood_registry *r);

/* ----- blob store ------------------------------------------------------------------------------
 */

/* HOME/blobs/sha256/ab/cdef... for a 64-hex SHA-256. */
int mood__blob_path(char **out, const mood_registry *r, const char *sha256);
int mood__blob_valid_hex(const char *s);

/* One blob being added: journal row + temporary file (a hard link to the blob once in place).
 * The caller commits its rows together with mood__blob_journal_delete(), then calls
 * mood__blob_tx_end(); on failure mood__blob_tx_abort() undoes everything. */
typedef struct mood__blob_tx {
    char sha256[65];
    char *tmp_name; /* journal key, file name in tmp_dir */
    char *tmp_path; /* NULL when the blob was already stored */
    int created;    /* this transaction put the blob in place */
} mood__blob_tx;

/* Stores the file at src whose SHA-256 is expected (verified while copying). */
int mood__blob_put_file(mood__blob_tx *tx, mood_registry *r, const char *src, const char *expected,
                        mood_progress_fn progress, void *payload);
int mood__blob_put_mem(mood__blob_tx *tx, mood_registry *r, const void *data, size_t size);

/* ----- import's extras (import_extras.c) ----- */

/* The largest preview, or file of a style, an import stores. */
#define MOOD__REG_MAX_PREVIEW (64u << 20)
/* Checks what a caller hands an import besides the file, before anything is stored. */
int mood__reg_check_extras(const mood_import_extras *x);
/* Stores x's previews then files as blobs (the caller holds the shared lock): *extra gets
 * x->n_previews + x->n_files of them, *n_extra counts those stored. */
int mood__reg_store_extras(mood_registry *r, const mood_import_extras *x, mood__blob_tx **extra,
                           size_t *n_extra);
/* Civitai's HTML description as plain text: tags dropped, the common entities decoded,
 * whitespace collapsed, at most 4,000 bytes (mood_malloc'd; NULL when empty or out of memory;
 * civitai_store.c). */
char *mood__reg_html_text(const char *html);
/* One preview row of a style (import's sidecar previews and a caller's extras). */
int mood__reg_insert_preview(mood_registry *r, long long style_id, const char *sha256,
                             const char *media_type, const char *origin, int position);
/* Their rows in the import's transaction: previews first (positions 0..), then files numbered
 * within their role. */
int mood__reg_insert_extras(mood_registry *r, const mood_import_extras *x,
                            const mood__blob_tx *extra, long long style_id);
/* A file imported again whose content the registry has: the stored copy, when missing or of the
 * wrong size (deleted or truncated by hand, a disk error), is stored again from src (its SHA-256
 * verified), so that importing the original repairs what doctor reports. 0 when there was
 * nothing to do. */
int mood__blob_restore_file(mood_registry *r, const char *sha256, uint64_t size, const char *src,
                            mood_progress_fn progress, void *payload);
/* The same, for a caller that holds the registry's exclusive lock (doctor --fix). */
int mood__blob_restore_file_locked(mood_registry *r, const char *sha256, uint64_t size,
                                   const char *src, mood_progress_fn progress, void *payload);
/* Deletes the tx's journal row (call inside the transaction that commits the rows). */
int mood__blob_journal_delete(mood_registry *r, const mood__blob_tx *tx);
void mood__blob_tx_end(mood__blob_tx *tx);
void mood__blob_tx_abort(mood__blob_tx *tx, mood_registry *r);
/* Inside a write transaction: deletes sha's blob when no adapter, preview, style file or import
 * in progress refers to it. Sets *deleted. */
int mood__blob_delete_if_unused(mood_registry *r, const char *sha256, int *deleted);
/* Removes what interrupted imports left (called by open under the exclusive lock). */
int mood__blob_cleanup(mood_registry *r);

/* ----- shared by the query and edit files --------------------------------------------------- */

/* id of the style called name (case-insensitive), MOOD_ENOTFOUND with a message otherwise. */
int mood__reg_style_id(mood_registry *r, long long *id, const char *name);

/* A style is applied to one base model: LoRAs made for different families could never be used
 * together (lora stack, merge and bake refuse the mix), and the style would be listed under
 * both. MOOD_EFAMILY naming two files of different families; an adapter whose family is unknown
 * goes with any. The adapters are looked up in the registry (style create/edit, pack import). */
int mood__reg_check_families(mood_registry *r, const mood_style_lora *loras, size_t n);

/* One row of the adapters table (import.c), as file import and pack import fill it. */
typedef struct mood__reg_adapter {
    const char *sha256, *autov3, *family, *family_source, *algorithm, *dtype, *file_name;
    const char *metadata_json, *trigger_words_json; /* JSON text or NULL */
    uint64_t size;
    long long rank, modules;
    int has_rank, has_modules;
    double alpha;
    int has_alpha;
} mood__reg_adapter;

/* What the registry lists of a LoRA, as its file says (import, and a pack's embedded LoRAs). */
typedef struct mood__reg_lora_summary {
    char family[16], family_source[32], algorithm[16], dtype[16];
    int rank, modules; /* the largest rank; modules */
    double alpha;      /* the first module's alpha, when has_alpha */
    int has_alpha;
} mood__reg_lora_summary;
void mood__reg_summarize(mood__reg_lora_summary *s, const mood_adapter *a);

/* A LoRA file's __metadata__ as the registry stores it (a JSON object of strings), without the
 * embedded images (modelspec.thumbnail, ssmd_cover_images: large and shown nowhere); NULL when
 * out of memory. */
char *mood__reg_metadata_json(const mood_st_file *st);
/* Text fields that are not valid UTF-8 (a file name, a pack's metadata) are stored converted. */
int mood__reg_insert_adapter(mood_registry *r, const mood__reg_adapter *a, const char *what);

/* ----- UTF-8 (utf8.c) ------------------------------------------------------------------------
 */

/* 1 when text is strict UTF-8. */
int mood__reg_is_utf8(const char *text);
/* Text a person typed: 0 when NULL or valid UTF-8, else MOOD_EINVAL naming `what` ("tag",
 * "template") and showing the value with its non-ASCII bytes as \xNN. */
int mood__reg_text_check(const char *text, const char *what);
/* Text from a file another program made, as UTF-8: a leading byte-order mark is dropped, and
 * text that is not valid UTF-8 is read as Windows-1252. *out is a copy (NULL for NULL text);
 * *converted (may be NULL) tells whether it had to be decoded. */
int mood__reg_utf8_copy(char **out, const char *text, int *converted);
/* The same, replacing the mood_malloc'd string *text. */
int mood__reg_utf8_in_place(char **text, int *converted);
/* mood__reg_bind_text of mood__reg_utf8_copy(s): for text other programs wrote. */
int mood__reg_bind_utf8(sqlite3_stmt *st, int i, const char *s);

#endif /* MOOD_REGISTRY_REGISTRY_IMPL_H */
