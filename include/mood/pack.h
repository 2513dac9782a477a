/*
 * pack.h: style packs: one .moodpack file (tar + zstd) holding styles from a registry with their
 * adapters, previews, licences and attribution, described by a manifest.json, to share them.
 *
 * Export reads the named styles from a registry and writes the pack atomically (nothing at `path`
 * unless it is complete); the same styles always give the same bytes. Import checks the archive
 * before using any of it (no absolute paths, `..`, links, devices, duplicate or unlisted entries,
 * sizes within limits even when headers lie, every SHA-256 as the manifest says) and then adds
 * everything in one step: on any error the registry is left exactly as it was.
 */
#ifndef MOOD_PACK_H
#define MOOD_PACK_H

#include "mood/core.h"
#include "mood/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mood_pack_export_options {
    /* Reference adapters by SHA-256 and AIR instead of embedding them: the pack stays small and
     * its importer must have (or fetch) the adapters. Previews are still embedded. */
    int reference_only;
    const char *attribution;   /* free text stored in the manifest (may be NULL) */
    const char *license;       /* licence of the pack as a whole (may be NULL) */
    mood_progress_fn progress; /* bytes written */
    void *payload;
} mood_pack_export_options;

void mood_pack_export_options_init(mood_pack_export_options *o);

/* Writes the styles `names[0..n)` (matched without case) to a pack at `path`.
 * MOOD_ENOTFOUND names a missing style or a blob missing from the store; MOOD_EIO for the
 * output file. */
MOOD_WARN_UNUSED int mood_pack_export(mood_registry *r, const char *const *names, size_t n,
                                      const char *path, const mood_pack_export_options *o);

typedef struct mood_pack_import_options {
    uint64_t max_total; /* limit on the uncompressed size of the whole pack (default 8 GiB) */
    uint64_t max_entry; /* limit on one file in the pack (default 8 GiB) */
    mood_progress_fn progress;
    void *payload;
    /* styles of the pack imported under other names: rename_from[i] (a name in the pack, any
     * case) becomes rename_to[i]; a name the pack does not have is refused (MOOD_EINVAL) */
    const char *const *rename_from;
    const char *const *rename_to;
    size_t n_renames;
} mood_pack_import_options;

void mood_pack_import_options_init(mood_pack_import_options *o);

/* Imports the pack at `path` into r. *report_out (free with mood_registry_free_string) is JSON:
 * {"pack", "styles": [names], "adapters_added", "adapters_present", "previews", "attribution",
 * "license"}. Errors: MOOD_EFORMAT for a malformed or hostile pack (the message names the entry),
 * MOOD_ENOTFOUND when a referenced adapter is neither embedded nor in the registry (the message
 * lists each one with its AIR), MOOD_EINVAL when a style name is taken. Temporary files go to a
 * directory inside the registry's home and are removed on return. */
MOOD_WARN_UNUSED int mood_pack_import(char **report_out, mood_registry *r, const char *path,
                                      const mood_pack_import_options *o);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_PACK_H */
