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

#endif /* MOOD_REGISTRY_CIVITAI_IMPL_H */
