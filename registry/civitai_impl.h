/*
 * civitai_impl.h: what the Civitai files of registry/ share (not installed).
 */
#ifndef MOOD_REGISTRY_CIVITAI_IMPL_H
#define MOOD_REGISTRY_CIVITAI_IMPL_H

#include "mood/civitai.h"

/* True when url is https:// (or http://) on civitai.com, civitai.red or civitai.green (or a
 * www. of those); *path_out points at the path that follows the host. */
int mood__civitai_known_host(const char *url, const char **path_out);

/* Frees m's versions and JSON, keeping the model's own fields (what
 * mood_civitai_version_add_model reads): a link keeps every model of a run, whose records with
 * each version's files and images can be hundreds of KB. */
void mood__civitai_model_slim(mood_civitai_model *m);

/* Warns (mood_log) when Civitai's baseModel for `file` maps to another family than the file's
 * own (family and family_source as the adapters row holds them): the file's family is the one
 * mood uses, since its keys decide what it applies to. Nothing is said when either side is
 * unknown (Flux, SD 3, "Other", a file of no known family) or the family came from Civitai. */
/* civitai_store.c: stores v (may be NULL) for the adapter sha256 of style `name` (a source of
 * kind `kind` at `location`, the file downloaded to download_path), with its previews, in one
 * transaction. */
int mood__civitai_store(mood_registry *r, const char *name, const char *sha256,
                        const mood_civitai_version *v, const char *kind, const char *location,
                        const char *download_path, const mood_civitai_import_options *o);
/* The page of v's model at v (its source's location). */
int mood__civitai_version_page(char **out, const mood_civitai *c, const mood_civitai_version *v);

void mood__civitai_check_family(const char *file, const char *base_model, const char *family,
                                const char *family_source);

#endif /* MOOD_REGISTRY_CIVITAI_IMPL_H */
