/*
 * import_impl.h: what the two halves of `mood import FILE` share: import.c (the adapter, the
 * previews, the transaction) and import_sidecars.c (the sidecars other LoRA managers write beside
 * it). Private to registry/.
 */
#ifndef MOOD_REGISTRY_IMPORT_IMPL_H
#define MOOD_REGISTRY_IMPORT_IMPL_H

#include <limits.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "mood/hash.h"
#include "registry/registry_impl.h"

#define MAX_SIDECAR  (16u << 20)
#define MAX_PREVIEWS 8
/* the start of the warning for a sidecar left out, which cmd_import.c looks for */
#define SKIPPED ": sidecar skipped: "

/* The sidecars that may hold a Civitai version record, in the order one is taken (see above). */
enum { REC_INFO, REC_LM, REC_SM, N_REC };

typedef struct record_sidecar {
    char *raw;            /* the file's text (UTF-8): civitai_info_json when its record is taken */
    cJSON *file;          /* the file parsed; NULL when there is none or it was left out */
    cJSON *made;          /* .cm-info.json: its fields in the shape of Civitai's version JSON */
    const cJSON *version; /* Civitai's version JSON: the file, its "civitai", or made */
} record_sidecar;

typedef struct sidecars {
    char *a1111_raw;
    cJSON *a1111;
    record_sidecar rec[N_REC];
    const record_sidecar *record; /* the one whose Civitai record is stored; NULL: none */
    char *txt;
    char *trigger_phrase; /* the file's modelspec.trigger_phrase (UTF-8), NULL when absent */
    mood_buf triggers;    /* comma-separated */
    int count;
} sidecars;

typedef struct adapter_facts {
    mood__reg_lora_summary s; /* family, algorithm, rank, ...: what the registry lists */
    char *metadata_json;      /* __metadata__ without thumbnails */
    char *file_triggers;      /* JSON array of the file's own trigger candidates */
    mood_buf top_tags;        /* comma-separated fallback triggers */
} adapter_facts;

typedef struct preview {
    mood__blob_tx tx;
    char media_type[16];
    char *origin;
} preview;

typedef struct import_job {
    const char *path;
    char *stem_path; /* path without .safetensors */
    mood_file_hashes h;
    adapter_facts facts;
    sidecars side;
    mood__blob_tx blob;
    preview previews[MAX_PREVIEWS];
    int n_previews;
    const mood_import_extras *x; /* NULL: none */
    mood__blob_tx *extra;        /* x's previews then files, n_extra of them stored */
    size_t n_extra;
    char *name;
    int stored;     /* the adapter row was there already (no style was the file alone) */
    struct stat fs; /* the file before it was read: its source row records size and time */
    int has_fs;
    char folder[PATH_MAX]; /* the LoRA's folder, links resolved; "" until a sidecar needs it */
} import_job;

/* import_sidecars.c */
/* Maps the sidecar at path when it is a regular file really in the LoRA's folder (*found 0
 * otherwise, with a warning for a link out of it). */
int mood__import_sidecar_map(import_job *j, mood_map *m, int *found, const char *path);
/* Reads the sidecars beside the LoRA into j->side (warnings for those left out). */
int mood__import_read_sidecars(import_job *j);
/* Leaves out the Civitai records that describe another file (check_record), once the LoRA's
 * SHA-256 is known. */
int mood__import_check_records(import_job *j);
void mood__import_drop_record(record_sidecar *rs);
/* A non-empty string member of o, or NULL. */
const char *mood__import_jstr(const cJSON *o, const char *key);
/* A Civitai id member of o: a whole number from 1, else 0. */
long long mood__import_json_id(const cJSON *o, const char *key);

#endif /* MOOD_REGISTRY_IMPORT_IMPL_H */
