/*
 * fixture_tensors.h: reading reference tensors of a fixture file in the unit tests (the one copy
 * of what several conformance tests need).
 */
#ifndef MOOD_TESTS_FIXTURE_TENSORS_H
#define MOOD_TESTS_FIXTURE_TENSORS_H

#include <stdlib.h>

#include "mood/safetensors.h"

/* Tensor `name` of f as a fresh float array (any float dtype; free with free()); NULL when it is
 * absent or does not convert. *n (may be NULL) gets its element count, 0 when absent. */
static inline float *fixture_floats(mood_st_file *f, const char *name, size_t *n)
{
    const mood_st_tensor *t = mood_st_find(f, name);
    float *out = t ? malloc((size_t)mood_st_numel(t) * sizeof *out + 1) : NULL;
    if (out && mood_st_to_f32(out, t) != 0) {
        free(out);
        out = NULL;
    }
    if (n)
        *n = t ? (size_t)mood_st_numel(t) : 0;
    return out;
}

#endif /* MOOD_TESTS_FIXTURE_TENSORS_H */
