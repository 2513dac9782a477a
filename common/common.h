/*
 * common.h: internal helpers shared by every module of libmood (not installed):
 * allocation with failure injection, the error setter, logging, a growable byte buffer,
 * mapped files, atomic file writes and overflow-checked size arithmetic.
 *
 * All heap allocation in the library goes through mood_malloc & co so that tests can make the
 * N-th allocation fail (mood__alloc_fail_at) and check that every error path cleans up.
 */
#ifndef MOOD_COMMON_COMMON_H
#define MOOD_COMMON_COMMON_H

#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>

#include "mood/core.h"

/* ----- allocation ---------------------------------------------------------------------------- */
void *mood_malloc(size_t size);
void *mood_calloc(size_t count, size_t size);
void *mood_realloc(void *ptr, size_t size);
void mood_free(void *ptr);
char *mood_strdup(const char *s);
char *mood_strndup(const char *s, size_t n);
/* Whether s ends with suffix. */
int mood_str_ends_with(const char *s, const char *suffix);
/* Whether hay holds the n bytes of `phrase` as whole words (no letter, digit, '_' or UTF-8 byte
 * right before or after it), ignoring ASCII case: CLIP lower-cases its input, so "INKWASH" in a
 * prompt or caption is the trigger "inkwash", while "inkwashes" is not. */
int mood_str_has_words(const char *hay, const char *phrase, size_t n);
/* Edit distance between a and b (ASCII case folded; insertions, deletions, substitutions and
 * swaps of neighbours cost 1), stopping at limit + 1: the typing slips of a name ("lsit" for
 * "list"). Strings over 100 bytes are limit + 1 from everything. */
size_t mood_str_distance(const char *a, const char *b, size_t limit);
/* Makes the n-th allocation from now fail (n >= 1); 0 turns injection off. For tests. */
void mood__alloc_fail_at(long n);
/* The memory the system could give this process now without swapping, in bytes: Linux's
 * MemAvailable, else the free pages; 0 when unknown. */
uint64_t mood_memory_available(void);

/* ----- errors and logging -------------------------------------------------------------------- */
/* Records a message for mood_error_last() and returns `code`, so callers can write
 * `return mood_error_set(MOOD_EFORMAT, "%s: ...", path);`. */
int mood_error_set(int code, const char *fmt, ...) MOOD_PRINTF(2, 3);
/* Prepends "prefix: " to the current message (adds context on the way up), unless the message
 * already starts with it: a file named by the error's source is not named twice. */
void mood_error_prefix(const char *fmt, ...) MOOD_PRINTF(1, 2);
void mood_error_clear(void);
/* Shorthand for an allocation failure. */
int mood_error_nomem(void);

enum { MOOD_LOG_ERROR = 0, MOOD_LOG_WARN = 1, MOOD_LOG_INFO = 2, MOOD_LOG_DEBUG = 3 };
void mood_log(int level, const char *fmt, ...) MOOD_PRINTF(2, 3);

/* ----- growable arrays ----------------------------------------------------------------------- */
/* Makes room for element n of the array whose pointer is at `items_ptr` (a `T **`), `cap`
 * elements of `elem` bytes allocated: the capacity doubles (from `first`) when n reaches it.
 * Returns 0, or MOOD_ENOMEM with the array unchanged. */
int mood_array_reserve(void *items_ptr, size_t *cap, size_t n, size_t elem, size_t first);

/* ----- checked arithmetic -------------------------------------------------------------------- */
/* Return 0 on success, -1 on overflow. */
int mood_mul_u64(uint64_t *out, uint64_t a, uint64_t b);
int mood_add_u64(uint64_t *out, uint64_t a, uint64_t b);

/* ----- growable buffer ----------------------------------------------------------------------- */
typedef struct mood_buf {
    char *data; /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
} mood_buf;

void mood_buf_init(mood_buf *b);
void mood_buf_dispose(mood_buf *b);
int mood_buf_reserve(mood_buf *b, size_t extra);
int mood_buf_append(mood_buf *b, const void *data, size_t n);
int mood_buf_puts(mood_buf *b, const char *s);
int mood_buf_printf(mood_buf *b, const char *fmt, ...) MOOD_PRINTF(2, 3);
/* Appends s as a JSON string literal, escaped the way serde_json does (", \, control
 * characters; UTF-8 left as is), so headers match the reference writer byte for byte. */
int mood_buf_json_string(mood_buf *b, const char *s);
/* Detaches the data (caller frees with mood_free); the buffer is left empty. */
char *mood_buf_detach(mood_buf *b);

/* ----- files --------------------------------------------------------------------------------- */
typedef struct mood_map {
    const uint8_t *data; /* NULL for an empty file */
    uint64_t size;
} mood_map;

/* Maps a whole file read-only. Missing file: MOOD_ENOTFOUND; not a regular file (a FIFO, device,
 * socket or folder; refused without blocking): MOOD_EINVAL; other failures MOOD_EIO. */
int mood_map_file(mood_map *out, const char *path);
void mood_unmap(mood_map *m);
/* Tells the kernel that [offset, offset+len) of a mapping will not be needed soon. */
void mood_map_release(const mood_map *m, uint64_t offset, uint64_t len);

/* A file written under a temporary name beside its destination and renamed over it only when
 * complete and synced: readers never see a partial file and a failure leaves nothing behind. */
typedef struct mood_atomic_file {
    FILE *fp;
    char *tmp_path;
    char *path;
} mood_atomic_file;

/* The file a write to path replaces (malloc'd into *out): path, or the regular file its symbolic
 * link leads to. MOOD_EINVAL when that exists and is not a regular file (a device, a FIFO, a
 * folder), MOOD_ENOTFOUND for a link to nothing. */
int mood_output_target(char **out, const char *path);
/* Opens a write to the file mood_output_target names. */
int mood_atomic_open(mood_atomic_file *af, const char *path);
/* fwrite with an error that names the destination (disk full, ...). */
int mood_atomic_write(mood_atomic_file *af, const void *data, size_t n);
/* Flushes, fsyncs, renames into place and syncs the directory. Always disposes af. */
int mood_atomic_commit(mood_atomic_file *af);
/* Removes the temporary file. Safe to call after a failed commit or on a zeroed struct. */
void mood_atomic_abort(mood_atomic_file *af);

/* ----- libraries loaded on first use ---------------------------------------------------------- */
/* One function of a table filled by mood_dynlib_load: its exported name and its offset in the
 * table (a struct of function pointers). */
typedef struct mood_dynlib_symbol {
    const char *name;
    size_t offset;
} mood_dynlib_symbol;

/* dlopen()s `library` and fills the `size`-byte table `fns` with every symbol, all or nothing
 * (fns is untouched on failure). Returns 0, or -1 with the reason (dlerror) in `reason`. The
 * library stays loaded for the life of the process. */
int mood_dynlib_load(const char *library, const mood_dynlib_symbol *symbols, size_t n, void *fns,
                     size_t size, char *reason, size_t reason_size);

/* Where a pack import extracts its files: HOME/.moodpack-PID-XXXXXX (styles/pack_archive.c). */
#define MOOD_PACK_TEMP_PREFIX ".moodpack-"
/* Removes the directories DIR/PREFIX<pid>-* of processes that no longer exist (a run killed
 * before it could clean up), with the files in them named by digits only (as their makers name
 * them; anything else is left, and so is the directory then). */
void mood_remove_dead_temp_dirs(const char *dir, const char *prefix);
/* DIR's files named by digits only, then DIR itself when that leaves it empty. */
void mood_remove_digit_named_dir(const char *dir);

/* True when path names an existing file or directory. */
int mood_path_exists(const char *path);
/* Pointer to the last path component of path. */
const char *mood_path_basename(const char *path);

#endif /* MOOD_COMMON_COMMON_H */
