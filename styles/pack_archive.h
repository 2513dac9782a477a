/*
 * pack_archive.h: the .moodpack container (internal, not installed): a zstd-compressed tar whose
 * first entry is manifest.json, followed by the files the manifest lists (adapters/, previews/,
 * board/), and the manifest's parser and validator. Only styles/ includes archive.h.
 *
 * Writing is deterministic (manifest.json first, then the other entries sorted by name; mtime 0,
 * uid/gid 0, no user or group names, mode 0644) and atomic (temporary file + rename).
 *
 * Reading trusts nothing: every entry must be a regular file with a plain relative name that the
 * manifest lists exactly once; links, devices, FIFOs, directories, sparse entries, absolute paths
 * and `..` are refused; declared (header) and actual (decompressed) sizes are checked against the
 * limits while reading, so a lying header or a compression bomb stops at the limit; every file's
 * SHA-256 (and size, where the manifest gives one) must match the manifest. All errors are
 * MOOD_EFORMAT naming the entry (MOOD_EIO for the destination's disk), and leave nothing behind.
 */
#ifndef MOOD_STYLES_PACK_ARCHIVE_H
#define MOOD_STYLES_PACK_ARCHIVE_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "common/common.h"

#define MOOD__PACK_MANIFEST        "manifest.json"
#define MOOD__PACK_SCHEMA          1
#define MOOD__PACK_MAX_MANIFEST    (16u << 20)
#define MOOD__PACK_DEFAULT_TOTAL   (8ull << 30)
#define MOOD__PACK_DEFAULT_ENTRY   (8ull << 30)
#define MOOD__PACK_DEFAULT_ENTRIES 100000u

/* ----- manifest ---------------------------------------------------------------------------- */

/* One file the manifest says the archive holds. */
typedef struct mood__pack_file {
    const char *name; /* archive path, e.g. "adapters/<sha256>.safetensors" (borrowed from json) */
    char sha256[65];
    uint64_t size; /* declared size (adapters); valid when has_size */
    int has_size;
} mood__pack_file;

typedef struct mood__pack_manifest {
    cJSON *json; /* the validated document */
    mood__pack_file *files;
    size_t n_files;
} mood__pack_manifest;

/* Parses and validates manifest.json (types, required fields, lowercase hex SHA-256s, file names
 * of the form adapters|previews|board/NAME with NAME made of [A-Za-z0-9._-], style adapters that
 * the adapter table lists, no file listed twice). MOOD_EFORMAT naming the field otherwise. */
int mood__pack_manifest_parse(mood__pack_manifest *out, const char *text, size_t len);
void mood__pack_manifest_dispose(mood__pack_manifest *m);
/* 1 when s is 64 lowercase hex characters. */
int mood__pack_hex_ok(const char *s);
/* 1 when name is a file name the manifest may list (see above). */
int mood__pack_file_name_ok(const char *name);

/* ----- writing ------------------------------------------------------------------------------- */

/* One entry to write: content from the file at `path`, or `size` bytes at `data` when path is
 * NULL. */
typedef struct mood__pack_src {
    const char *name;
    const char *path;
    const void *data;
    size_t size;
    const char *sha256; /* with path: what the file must hash to (a registry blob's name), or
                           NULL; a file that does not is refused, not packed */
} mood__pack_src;

/* Writes the archive at out_path atomically. Progress in bytes of entry data. */
int mood__pack_write(const char *out_path, const mood__pack_src *src, size_t n,
                     mood_progress_fn progress, void *payload);

/* ----- reading ------------------------------------------------------------------------------- */

typedef struct mood__pack_limits {
    uint64_t max_total;   /* sum of all entries' sizes, declared and actual */
    uint64_t max_entry;   /* one entry */
    uint32_t max_entries; /* number of entries */
} mood__pack_limits;

void mood__pack_limits_init(mood__pack_limits *l);

typedef struct mood__pack_extract {
    char *dir; /* DEST/.moodpack-XXXXXX, holding the extracted files */
    mood__pack_manifest manifest;
    char **paths; /* paths[i]: where manifest.files[i] was extracted */
} mood__pack_extract;

/* Reads the archive at path and extracts the files its manifest lists into a new temporary
 * directory inside dest_dir (DEST/.moodpack-PID-XXXXXX; such directories of processes that no
 * longer exist are removed first), verifying everything described above. On failure nothing is
 * left and *out is empty. Progress in compressed bytes read. */
int mood__pack_read(mood__pack_extract *out, const char *path, const char *dest_dir,
                    const mood__pack_limits *limits, mood_progress_fn progress, void *payload);
/* Removes the extracted files and the directory, and frees everything. Zeroed struct: no-op. */
void mood__pack_extract_dispose(mood__pack_extract *x);

#endif /* MOOD_STYLES_PACK_ARCHIVE_H */
