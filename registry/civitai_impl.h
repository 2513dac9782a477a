/*
 * civitai_impl.h: what the Civitai files of registry/ share (not installed).
 */
#ifndef MOOD_REGISTRY_CIVITAI_IMPL_H
#define MOOD_REGISTRY_CIVITAI_IMPL_H

#include "mood/civitai.h"

/* True when url is https:// (or http://) on civitai.com, civitai.red or civitai.green (or a
 * www. of those); *path_out points at the path that follows the host. */
int mood__civitai_known_host(const char *url, const char **path_out);

#endif /* MOOD_REGISTRY_CIVITAI_IMPL_H */
