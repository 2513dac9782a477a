/*
 * registry.h: the style registry: a user's library of styles (LoRA adapters with names, trigger
 * words, weights, prompt templates, tags, previews and provenance) in $MOOD_HOME.
 *
 * Layout: HOME/registry.db (SQLite, WAL) and HOME/blobs/sha256/ab/cdef... (every file stored
 * once, named by its SHA-256). Every import is all-or-nothing: the blob is written to a temporary
 * file, synced, verified and linked into place before the rows are committed in one transaction;
 * what an interrupted import leaves behind is removed the next time the registry is opened.
 *
 * Style names are unique regardless of case and limited to what `<lora:NAME:W>` carries through
 * A1111 and Civitai: letters, digits, '_', '-' and '.', at most 100 characters, not starting with
 * '-' or '.'.
 *
 * Reports (list, show, search, doctor) are returned as JSON text, so that the CLI and other
 * programs read the same facts; the caller frees them with mood_registry_free_string().
 * A mood_registry handle is used by one thread at a time; several processes may open the same
 * registry at once.
 */
#ifndef MOOD_REGISTRY_H
#define MOOD_REGISTRY_H

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mood_registry mood_registry;

/* The registry directory used when none is given: $MOOD_HOME, else $XDG_DATA_HOME/mood, else
 * $HOME/.local/share/mood. Caller frees with mood_registry_free_string. */
MOOD_WARN_UNUSED int mood_registry_default_home(char **out);

/* Opens the registry in `home` (NULL: the default home; "" is MOOD_EINVAL, not the filesystem's
 * root), migrates its schema to the current
 * version and removes what interrupted imports left behind. A file that is not a usable SQLite
 * database gives MOOD_EFORMAT naming the file; the blobs are not touched.
 * Opening creates nothing: where there is no registry.db yet, queries find an empty registry and
 * the first change (an import, a new style) creates the folder and the database. Closing a handle
 * logs a warning (mood_log_set) when registry.db is missing or holds no rows while HOME/blobs
 * still holds stored files (restore registry.db, or import the files again), or when a query found
 * no registry at all, unless doctor or an error said so already. A registry.db (or folder) this
 * process cannot write is opened read-only: queries work, and changes fail with MOOD_EIO saying
 * that the file is read-only. */
MOOD_WARN_UNUSED int mood_registry_open(mood_registry **out, const char *home);
void mood_registry_close(mood_registry *r);
/* The registry's directory (borrowed); made when missing, since callers put files there. */
const char *mood_registry_home(const mood_registry *r);
/* 1 when the registry has a database; 0 when there is none yet (see mood_registry_open). */
int mood_registry_exists(const mood_registry *r);
/* 1 when the registry can be read but not changed (registry.db or its folder is read-only, or
 * the disk that holds it is full). */
int mood_registry_read_only(const mood_registry *r);
/* 0 when the registry can be changed; else MOOD_EIO with the message that says why not. */
MOOD_WARN_UNUSED int mood_registry_read_only_error(const mood_registry *r);
/* Schema version of the open database. */
int mood_registry_schema_version(const mood_registry *r);
void mood_registry_free_string(char *s);

/* ----- names ---------------------------------------------------------------------------------- */

/* 0 when `name` is a valid style name; MOOD_EINVAL with a message saying why otherwise. */
MOOD_WARN_UNUSED int mood_registry_name_check(const char *name);
/* The valid style name `text` gives (what an imported file's stem becomes before it is made
 * unique, and the A1111 alias mood writes for a LoRA): letters keep their letter under accents
 * (café -> cafe), letters without one their usual spelling (Straße -> Strasse, Ærø -> AEro),
 * full-width letters their ASCII, runs of other characters become one '_' ("Ink Wash (v2)" ->
 * Ink_Wash_v2), and
 * '_', '-', '.' go from either end; "style" when nothing is left. out: `size` bytes, at most
 * 100 characters written. */
void mood_registry_name_sanitize(char *out, size_t size, const char *text);
/* A valid name close to `wanted` that no style has yet (wanted itself when it is both). */
MOOD_WARN_UNUSED int mood_registry_name_suggest(char **out, mood_registry *r, const char *wanted);

/* ----- text ------------------------------------------------------------------------------------
 * Everything the registry stores and reports is UTF-8. Text a person types that is not is refused
 * (MOOD_EINVAL); text from other programs' files (sidecars, packs, file names) is converted. */

/* 0 when `text` is valid UTF-8 (or NULL); MOOD_EINVAL with a message naming `what` (e.g.
 * "--template"; NULL: "text") and showing the bad bytes as \xNN otherwise. */
MOOD_WARN_UNUSED int mood_registry_text_check(const char *text, const char *what);
/* A UTF-8 copy of `text` for showing or storing: text that is not valid UTF-8 is read as
 * Windows-1252 (what files and names made on Windows hold); a leading byte-order mark is
 * dropped. Free with mood_registry_free_string. */
MOOD_WARN_UNUSED int mood_registry_text_to_utf8(char **out, const char *text);

/* ----- import -----------------------------------------------------------------------------------
 */

typedef struct mood_import_result {
    char sha256[65];
    char autov3[65];
    char name[128];   /* the style created, or the style that already holds the file */
    char wanted[128]; /* the name the file suggested (its stem) */
    int already;      /* the file was in the registry already: nothing was changed */
    int renamed;      /* the stem was not a valid or free name: `name` is the suggestion used */
    int previews;     /* preview images stored */
    int sidecars;     /* sidecar files read */
    int elsewhere;    /* already, as a copy from another place: recorded as another source of
                         the LoRA; its sidecars' trigger words and text are not the style's */
    char family[16];
} mood_import_result;

/* Imports one .safetensors LoRA file with its sidecars (A1111 NAME.json, NAME.civitai.info,
 * ComfyUI-Lora-Manager NAME.metadata.json, StabilityMatrix NAME.cm-info.json, NAME.preview.png /
 * NAME.png, NAME.txt) and creates a style named after the file. Refuses
 * checkpoints and pickles (.ckpt/.pt/.pth/.bin) with MOOD_EUNSUPPORTED. Progress in bytes. */
MOOD_WARN_UNUSED int mood_registry_import_file(mood_registry *r, mood_import_result *out,
                                               const char *path, mood_progress_fn progress,
                                               void *payload);

/* A file a style keeps besides its adapters, given as bytes and stored as a blob. */
typedef struct mood_style_file {
    const char *role; /* files: "board" (a mood board thumbnail), "loss_csv", "loss_plot", or
                         another of 1-32 characters [a-z0-9_]; ignored for previews */
    const void *data;
    size_t size;            /* 1 byte to 64 MiB */
    const char *media_type; /* "image/jpeg", "image/png", "text/csv"; may be NULL */
    const char *name;       /* where it came from (a file name); may be NULL */
    int width, height;      /* an image's size in pixels; 0 when unknown or not an image */
} mood_style_file;

/* What a program that made the LoRA (`mood train`) registers with it besides the sidecars. */
typedef struct mood_import_extras {
    const mood_style_file *previews; /* put before the sidecar previews, in order (at most 64) */
    size_t n_previews;
    const mood_style_file *files; /* in order (at most 1024) */
    size_t n_files;
    const char *training_json; /* a JSON object: how the style was trained; may be NULL */
} mood_import_extras;

/* mood_registry_import_file with extras (NULL: none), all in the same all-or-nothing import:
 * the extras' blobs are stored and their rows committed with the style's. When the file is in
 * the registry already (out->already), nothing is stored. MOOD_EINVAL for an extra that is
 * empty, too large or has a bad role, or training_json that is not a JSON object. */
MOOD_WARN_UNUSED int mood_registry_import_file_ex(mood_registry *r, mood_import_result *out,
                                                  const char *path, const mood_import_extras *x,
                                                  mood_progress_fn progress, void *payload);

/* ----- queries (JSON text) -------------------------------------------------------------------- */

/* [{name, family, algorithm, rank, weight, trigger_words, tags, description, n_adapters,
 * n_previews}] sorted by name (mood_list_order's MOOD_LIST_BY_NAME); `tag` and `base` ("sd1",
 * "sd2", "sdxl", or another spelling mood_family_from_name reads, such as "SDXL") filter when
 * non-NULL. Numbers are written as show's are (a weight of 0.7 is 0.7 in both). */
MOOD_WARN_UNUSED int mood_registry_list_json(char **out, mood_registry *r, const char *tag,
                                             const char *base);
/* The order of a list: by name as people sort them (letters without regard to case, numbers by
 * value: s9 before s10), or newest first by when the style was made or last changed. */
typedef enum mood_list_order {
    MOOD_LIST_BY_NAME,
    MOOD_LIST_BY_CREATED,
    MOOD_LIST_BY_CHANGED
} mood_list_order;
/* mood_registry_list_json in another order (MOOD_EINVAL for an unknown one). */
MOOD_WARN_UNUSED int mood_registry_list_sorted_json(char **out, mood_registry *r, const char *tag,
                                                    const char *base, mood_list_order order);
/* Everything known about one style (MOOD_ENOTFOUND when there is none of that name): its fields,
 * "training" (the JSON object a training registered, or null), "adapters" (with "sources"),
 * "tags", "previews" [{sha256, media_type, origin, nsfw_level, path}], "board" (mood board
 * thumbnails) and "files" (other roles) [{role, sha256, media_type, name, width, height, path}]. */
MOOD_WARN_UNUSED int mood_registry_show_json(char **out, mood_registry *r, const char *name);
/* Full-text search over names, trigger words, tags, descriptions, notes and the Civitai model
 * and version names of the styles' LoRAs; every word of `query` is matched as a prefix. Same
 * shape as list, best match first. */
MOOD_WARN_UNUSED int mood_registry_search_json(char **out, mood_registry *r, const char *query);

/* The style holding the adapter whose SHA-256 (AutoV2) or AutoV3 starts with `hash` (8 to 64 hex
 * digits, any case: A1111's "Lora hashes" carry 12 of AutoV3, Civitai's 10), preferring a style
 * of that adapter alone. *name_out is freed with mood_registry_free_string. Errors:
 * MOOD_ENOTFOUND, MOOD_EINVAL (not a hash). */
MOOD_WARN_UNUSED int mood_registry_style_by_hash(char **name_out, mood_registry *r,
                                                 const char *hash);

/* ----- editing -------------------------------------------------------------------------------- */

/* One adapter of a style: a registry adapter (by SHA-256) with its multipliers. */
typedef struct mood_style_lora {
    const char *sha256;
    double unet;
    double te;
} mood_style_lora;

/* Fields of a style to set; NULL / has_weight 0 / loras NULL leave a field unchanged on edit. */
typedef struct mood_style_spec {
    const char *trigger_words; /* comma-separated */
    const char *template_text; /* "{prompt}, ..." */
    const char *negative;
    const char *description;
    double weight; /* the preferred weight; NAN with has_weight clears it (weight null: 1) */
    int has_weight;
    const mood_style_lora *loras;
    size_t n_loras;
    const char *notes; /* longer text for yourself (A1111's "notes"), searchable */
} mood_style_spec;

/* Creates a style (name must be valid and free) or changes one. Text fields that are not valid
 * UTF-8 are refused (MOOD_EINVAL naming the field) before anything is written. */
MOOD_WARN_UNUSED int mood_registry_style_create(mood_registry *r, const char *name,
                                                const mood_style_spec *spec);
MOOD_WARN_UNUSED int mood_registry_style_edit(mood_registry *r, const char *name,
                                              const mood_style_spec *spec);
/* The adapters of style `name` (SHA-256 and weights) as a malloc'd array; the strings live in
 * the same block. Free with mood_registry_free_string((char *)*out). */
MOOD_WARN_UNUSED int mood_registry_style_loras(mood_style_lora **out, size_t *n_out,
                                               mood_registry *r, const char *name);

MOOD_WARN_UNUSED int mood_registry_rename(mood_registry *r, const char *old_name,
                                          const char *new_name);
/* Adds (add != 0) or removes a tag of a style. Tags: UTF-8, 1..64 bytes, no spaces or commas. */
MOOD_WARN_UNUSED int mood_registry_tag(mood_registry *r, const char *name, const char *tag,
                                       int add);
/* Several tag changes, all or none: each of changes[0..n) is "+TAG" (add) or "-TAG" (remove). */
MOOD_WARN_UNUSED int mood_registry_tags(mood_registry *r, const char *name,
                                        const char *const *changes, size_t n);
/* Removes a style; adapters and previews no other style uses go with it, and so do their blobs. */
MOOD_WARN_UNUSED int mood_registry_rm(mood_registry *r, const char *name);

/* ----- health --------------------------------------------------------------------------------- */

typedef struct mood_doctor_options {
    int deep; /* re-hash every blob */
    int fix;  /* remove orphan blobs and rows whose blob is missing or corrupt; a style loses the
                 adapters whose blob is, and is removed only when none would be left */
    mood_progress_fn progress;
    void *payload;
} mood_doctor_options;

/* Checks the registry: SQLite integrity, rows whose blob is missing, blobs no row uses, and with
 * `deep` blobs whose content no longer matches their name. *problems_out counts what was found
 * (before fixing). *out is a JSON report {registry, database, integrity, missing[], orphans[],
 * corrupt[], styles[], problems, fixed}. database is "ok"; "none" where there is no registry yet
 * (nothing to check, no problem); or "missing" (registry.db is gone) or "empty" (it holds no
 * rows) while blobs/ still holds stored_files files, under blobs: one problem, the files are not
 * orphans, and with `fix` nothing is deleted and MOOD_EINVAL says how to get them back. An adapter
 * in missing or corrupt carries its file_name, imported_from (where to import it again) and styles
 * (the names of the styles using it). styles[] has one entry per such style: {name, action, loras,
 * kept, lost [{sha256, file_name, problem}], fixed}, where action is "drop" (the style keeps its
 * other adapters, template, negative prompt and weights and loses the lost ones) or "remove" (no
 * adapter would be left: a style needs one), kept counts the adapter links left, and fixed tells
 * whether this run did it. o NULL: the default options (no deep, no fix, no progress). */
MOOD_WARN_UNUSED int mood_registry_doctor(char **out, int *problems_out, mood_registry *r,
                                          const mood_doctor_options *o);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_REGISTRY_H */
