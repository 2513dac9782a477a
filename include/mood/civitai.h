/*
 * civitai.h: the Civitai client: look a LoRA up by file hash, fetch model and version records,
 * read Civitai identifiers (civitai:ID, model and version page URLs, AIRs) and download files
 * with their published SHA-256 checked (ecosystem.md §1).
 *
 * The API base is MOOD_CIVITAI_URL (default https://civitai.com). CIVITAI_TOKEN, when set, is
 * sent as `Authorization: Bearer` to that origin only; it is never logged, stored or shown in an
 * error message. Requests are retried with backoff on 429 and 5xx (MOOD_HTTP_RETRY_MS sets the
 * unit, default 1000 ms; MOOD_HTTP_RETRIES the count, default 4).
 *
 * Records are plain structs whose strings the struct owns (NULL when the API left a field out);
 * free them with their _free function. A mood_civitai client is used by one thread at a time.
 * Errors: MOOD_ENOTFOUND (404/410: unknown hash, id or file), MOOD_EIO (network, other HTTP
 * failures, a download whose bytes do not match), MOOD_EFORMAT (an answer that is not the JSON
 * expected), MOOD_EINVAL (a malformed identifier); messages name the URL without any token.
 */
#ifndef MOOD_CIVITAI_H
#define MOOD_CIVITAI_H

#include "mood/core.h"
#include "mood/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mood_civitai mood_civitai;

typedef struct mood_civitai_file {
    char *name;   /* the download's file name */
    char *type;   /* "Model", "Training Data", ... */
    char *format; /* metadata.format: "SafeTensor", "PickleTensor", ... */
    double size_kb;
    int primary;
    /* hashes as published (upper-case hex); NULL when Civitai has none of that kind */
    char *sha256, *autov1, *autov2, *autov3, *crc32, *blake3;
    char *virus_scan; /* "Success", "Danger", ... */
    char *download_url;
} mood_civitai_file;

typedef struct mood_civitai_image {
    char *url;
    char *type;     /* "image" or "video" */
    int nsfw_level; /* 1 PG, 2 PG-13, 4 R, 8 X, 16 XXX, 32 blocked; 0 unknown */
    int width, height;
} mood_civitai_image;

/* Permission flags of a model: 1 yes, 0 no, -1 unknown (the version endpoints omit them). */
typedef struct mood_civitai_permissions {
    int allow_no_credit;
    int allow_derivatives;
    int allow_different_license;
    char *allow_commercial_use; /* "None", "Image,RentCivit,Rent,Sell", ...; NULL unknown */
} mood_civitai_permissions;

typedef struct mood_civitai_version {
    long long id, model_id;
    char *name;       /* "v1.0" */
    char *base_model; /* "SD 1.5", "SDXL 1.0", "Pony", ... */
    char *air;        /* urn:air:...; built from the ids when the server sent none */
    char *description;
    char *published_at;
    char **trained_words;
    size_t n_trained_words;
    int nsfw_level;
    int early_access; /* an early-access deadline or availability was given */
    char *early_access_deadline;
    /* model-level fields: name, type and nsfw come with every version record; description,
     * permissions and tags only after mood_civitai_version_add_model() */
    char *model_name, *model_type, *model_description;
    int model_nsfw; /* 1, 0, -1 unknown */
    mood_civitai_permissions permissions;
    char **tags;
    size_t n_tags;
    mood_civitai_file *files;
    size_t n_files;
    mood_civitai_image *images;
    size_t n_images;
    char *json; /* the version record as the server sent it */
} mood_civitai_version;

typedef struct mood_civitai_model {
    long long id;
    char *name, *type, *description, *mode;
    int nsfw, nsfw_level;
    mood_civitai_permissions permissions;
    char **tags;
    size_t n_tags;
    mood_civitai_version *versions; /* newest first, as the API lists them */
    size_t n_versions;
    char *json;
} mood_civitai_model;

/* A Civitai reference: a version id, or a model id whose latest version is meant (version 0). */
typedef struct mood_civitai_ref {
    long long model_id;
    long long version_id;
} mood_civitai_ref;

/* ----- client --------------------------------------------------------------------------------- */

/* base_url NULL: $MOOD_CIVITAI_URL, else https://civitai.com. */
MOOD_WARN_UNUSED int mood_civitai_open(mood_civitai **out, const char *base_url);
void mood_civitai_close(mood_civitai *c);
/* The API base in use, without a trailing slash (borrowed). */
const char *mood_civitai_base(const mood_civitai *c);
/* Retries of each request after its first attempt; -1 (the default): MOOD_HTTP_RETRIES, else 4.
 * A quick, optional lookup (after a local import) uses 0. */
void mood_civitai_set_retries(mood_civitai *c, int retries);

/* GET /api/v1/model-versions/by-hash/{hash}: any hash kind Civitai stores (SHA-256 first). */
MOOD_WARN_UNUSED int mood_civitai_version_by_hash(mood_civitai_version **out, mood_civitai *c,
                                                  const char *hash);
/* The most hashes one batch lookup takes (Civitai's limit). */
#define MOOD_CIVITAI_BATCH_MAX 100

/* POST /api/v1/model-versions/by-hash: the records of up to MOOD_CIVITAI_BATCH_MAX files by full
 * SHA-256 (64 hex digits, any case; sent upper-case) in one request. *out receives an array of
 * *n_out records (NULL, 0 when Civitai knows none), in no particular order: a hash Civitai does
 * not know has no record and is no error, and one record may answer several hashes (or several
 * records one hash), so match them by their files' sha256 (case-insensitive). Errors as above;
 * MOOD_EINVAL for a hash that is not 64 hex digits or more than the maximum; MOOD_EUNSUPPORTED
 * when the server answers 400, 404 or 405 (an older or another server, a proxy, without the
 * batch endpoint: look each hash up with mood_civitai_version_by_hash instead). Free with
 * mood_civitai_versions_free. */
MOOD_WARN_UNUSED int mood_civitai_versions_by_hash(mood_civitai_version **out, size_t *n_out,
                                                   mood_civitai *c, const char *const *sha256,
                                                   size_t n);
/* Frees an array of n records (as mood_civitai_versions_by_hash gives); NULL is a no-op. */
void mood_civitai_versions_free(mood_civitai_version *v, size_t n);
/* GET /api/v1/model-versions/{id}. */
MOOD_WARN_UNUSED int mood_civitai_version_get(mood_civitai_version **out, mood_civitai *c,
                                              long long version_id);
/* GET /api/v1/models/{id}. */
MOOD_WARN_UNUSED int mood_civitai_model_get(mood_civitai_model **out, mood_civitai *c,
                                            long long model_id);
/* Copies the model-level fields (description, permissions, tags, nsfw) of m into v. */
MOOD_WARN_UNUSED int mood_civitai_version_add_model(mood_civitai_version *v,
                                                    const mood_civitai_model *m);
/* The full version record a reference names (the model's latest version when only the model is
 * given), with its model's fields added. */
MOOD_WARN_UNUSED int mood_civitai_resolve(mood_civitai_version **out, mood_civitai *c,
                                          const mood_civitai_ref *ref);

/* Downloads v's primary file into directory dir, checking the published SHA-256; a file that
 * Civitai's scan marked "Danger" is refused (MOOD_EUNSUPPORTED). *path_out: caller frees with
 * mood_civitai_free_string. */
MOOD_WARN_UNUSED int mood_civitai_download(char **path_out, mood_civitai *c,
                                           const mood_civitai_version *v, const char *dir,
                                           mood_progress_fn progress, void *payload);
/* Downloads any http(s) URL into dir (resuming a partial download of the same URL), naming the
 * file from Content-Disposition or the URL. The token is sent only when url is on the API's
 * origin. expected_sha256 may be NULL. */
MOOD_WARN_UNUSED int mood_civitai_download_url(char **path_out, mood_civitai *c, const char *url,
                                               const char *dir, const char *expected_sha256,
                                               mood_progress_fn progress, void *payload);

/* ----- records -------------------------------------------------------------------------------- */

/* Parse records from JSON text (what the endpoints above do with the answers). */
MOOD_WARN_UNUSED int mood_civitai_version_parse(mood_civitai_version **out, const char *json,
                                                size_t len);
MOOD_WARN_UNUSED int mood_civitai_model_parse(mood_civitai_model **out, const char *json,
                                              size_t len);
void mood_civitai_version_free(mood_civitai_version *v);
void mood_civitai_model_free(mood_civitai_model *m);
void mood_civitai_free_string(char *s);

/* The primary file of v (the first model file when none is marked); NULL when v has no files.
 * Borrowed. */
const mood_civitai_file *mood_civitai_primary_file(const mood_civitai_version *v);
/* A one-line licence summary from the permission flags, e.g. "Civitai: credit not required;
 * commercial use: Image; derivatives allowed; different licence not allowed" (NULL when the
 * flags are unknown). Caller frees with mood_civitai_free_string. */
MOOD_WARN_UNUSED int mood_civitai_license(char **out, const mood_civitai_permissions *p);

/* ----- identifiers ---------------------------------------------------------------------------- */

/* True when text looks like a Civitai reference (civitai:..., urn:air:/air:..., or a URL on a
 * Civitai host or the API base), so a caller can tell it from a path or another URL. */
int mood_civitai_is_ref(const char *text);
/* Parses `civitai:VERSION_ID`, `https://civitai.com/models/ID[/slug][?modelVersionId=V]`,
 * `.../model-versions/V`, `.../api/download/models/V` and AIRs
 * (`urn:air:sd1:lora:civitai:MODEL[@VERSION]`). MOOD_EINVAL saying what is accepted otherwise. */
MOOD_WARN_UNUSED int mood_civitai_parse_ref(mood_civitai_ref *out, const char *text);
/* The mood family of a Civitai base model name: "sd1" (SD 1.x), "sd2" (SD 2.x), "sdxl" (SDXL,
 * Pony, Illustrious, NoobAI) or "unknown". Static string. */
const char *mood_civitai_family(const char *base_model);

/* ----- the registry and Civitai ------------------------------------------------------------ */

typedef struct mood_civitai_import_options {
    int offline;      /* no by-hash lookup after a plain URL import */
    int nsfw_max;     /* previews kept: images whose nsfwLevel is at most this (1 PG, 2 PG-13,
                       * 4 R, 8 X, 16 XXX); 0 keeps none. Default 1. */
    int max_previews; /* default 4 */
    mood_progress_fn progress; /* download and import, in bytes */
    void *payload;
} mood_civitai_import_options;

void mood_civitai_import_options_init(mood_civitai_import_options *o);

/* Imports `what`: a Civitai reference (mood_civitai_is_ref: the version's primary file is
 * downloaded and its published SHA-256 checked) or any http(s) URL (downloaded, then looked up
 * by hash unless o->offline; a file Civitai does not know is imported without its data). The
 * file goes through mood_registry_import_file(); then the Civitai record is stored with the
 * adapter (ids, names, base model, AIR, licence, NSFW, the raw JSON), the style gets the trained
 * words and description when it has none, and previews are downloaded. Partial downloads are
 * kept in HOME/downloads for a later resume. *version_out (may be NULL) receives the record
 * (NULL when there is none); free with mood_civitai_version_free. */
MOOD_WARN_UNUSED int mood_civitai_import(mood_registry *r, mood_import_result *out,
                                         mood_civitai_version **version_out, mood_civitai *c,
                                         const char *what, const mood_civitai_import_options *o);

/* What mood_civitai_link_each or mood_civitai_link_all found for one LoRA of a style. */
typedef struct mood_civitai_link_result {
    char *name;      /* the style */
    char *sha256;    /* the LoRA's SHA-256 (lower-case hex) */
    char *file_name; /* the name it was imported under; NULL when the registry has none */
    int status;      /* 0 linked, MOOD_ENOTFOUND Civitai does not know it, else the failure */
    char *error;     /* what went wrong, naming the style and the file, when status != 0 */
    mood_civitai_version *version; /* the record stored, when linked */
} mood_civitai_link_result;

/* Looks each LoRA of style `name` up on Civitai by SHA-256 and stores what Civitai knows about
 * it, as an import does (one transaction per LoRA: a LoRA linked stays linked when another
 * fails). Several LoRAs are looked up together (mood_civitai_versions_by_hash; each hash on its
 * own, after one warning, where the server has no batch lookup), and each Civitai model is
 * fetched once for all its LoRAs. *out receives one result per distinct LoRA, in the style's
 * order, whatever happened to it: a LoRA Civitai does not know does not stop the others; a
 * failed request fails the LoRAs it was for, and once one has failed for a reason other than
 * "not found" (the network, the server, a rate limit) no more requests are made: the LoRAs left
 * get that error too. Returns 0 once every LoRA was tried; else what kept it from starting:
 * MOOD_ENOTFOUND when there is no style `name` (the message says so), MOOD_ENOMEM, a registry
 * error. Free the results with mood_civitai_link_results_free. */
MOOD_WARN_UNUSED int mood_civitai_link_each(mood_civitai_link_result **out, size_t *n_out,
                                            mood_registry *r, mood_civitai *c, const char *name,
                                            const mood_civitai_import_options *o);
void mood_civitai_link_results_free(mood_civitai_link_result *res, size_t n);

/* mood_civitai_link_each for every style of the registry at once ("scan all models"): each LoRA
 * of a style that has no Civitai record yet (no source with a Civitai version id: a link, a
 * Civitai or URL import that found it, a .civitai.info sidecar, a pack), or every LoRA when
 * `refresh`. Up to MOOD_CIVITAI_BATCH_MAX LoRAs per request, each model fetched once. *out
 * receives one result per (style, LoRA), styles by name, LoRAs in each style's order (a LoRA of
 * several styles is looked up once and stored for each); none when every LoRA is linked.
 * o->progress (may be NULL) is told the LoRAs done, phase "civitai", after each one; a non-zero
 * return stops with MOOD_ECANCELLED (those stored stay stored). Returns 0 once every LoRA was
 * tried, else MOOD_ENOMEM, MOOD_ECANCELLED or a registry error (no results then). */
MOOD_WARN_UNUSED int mood_civitai_link_all(mood_civitai_link_result **out, size_t *n_out,
                                           mood_registry *r, mood_civitai *c, int refresh,
                                           const mood_civitai_import_options *o);

/* mood_civitai_link_each reduced to one record: *version_out receives the first LoRA linked.
 * When none was linked: the first failure other than "unknown to Civitai", else MOOD_ENOTFOUND
 * (Civitai knows none of them); MOOD_ENOTFOUND also when there is no style `name`. */
MOOD_WARN_UNUSED int mood_civitai_link(mood_civitai_version **version_out, mood_registry *r,
                                       mood_civitai *c, const char *name,
                                       const mood_civitai_import_options *o);

/* Checks each style with Civitai data: for each of its LoRAs linked to a Civitai model, whether
 * that model has a newer version for the same base family. A model is fetched once however many
 * LoRAs use it. JSON:
 * {"styles": N (styles with Civitai data, each counted once however many LoRAs it has),
 *  "checked": styles whose every Civitai model could be fetched, "not_checked": N - checked,
 *  "updates": [{name, sha256, file, model_id, model_name, version_id, version_name,
 *               latest_version_id, latest_version_name, latest_base_model,
 *               latest_published_at, url}] (one per LoRA with a newer version),
 *  "errors": [{name, sha256, file, model_id, error}] (one per LoRA whose model could not be
 *            fetched)}; "file" is left out when the registry has no file name.
 * Free with mood_civitai_free_string. */
MOOD_WARN_UNUSED int mood_civitai_update_check(char **out, mood_registry *r, mood_civitai *c);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_CIVITAI_H */
