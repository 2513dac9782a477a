/*
 * weights.c: one named weight of a model file, checked and converted to float32
 * (engine/weights.h), shared by the text encoder, UNet and VAE loaders so their checks and
 * messages are the same.
 */
#include <stdio.h>

#include "common/common.h"
#include "engine/weights.h"

void mood__shape_str(char *buf, size_t size, const int64_t *shape, int ndim)
{
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (n < size)
        snprintf(buf + n, size - n, "]");
}

static int shape_ok(const mood_st_tensor *t, const int64_t *want, int ndim, int linear_as_1x1)
{
    if (linear_as_1x1 && ndim == 2 && t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1)
        return t->shape[0] == want[0] && t->shape[1] == want[1];
    if (t->ndim != ndim)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != want[i])
            return 0;
    return 1;
}

int mood__weight_to_f32(float *dst, const mood_st_tensor *t, const char *where, const char *label,
                        const int64_t *want, int ndim, int linear_as_1x1)
{
    char got[160], exp[160];
    int err;
    if (!t)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor %s is missing", where, label);
    if (!shape_ok(t, want, ndim, linear_as_1x1)) {
        mood__shape_str(got, sizeof got, t->shape, t->ndim);
        mood__shape_str(exp, sizeof exp, want, ndim);
        return mood_error_set(MOOD_EFORMAT, "%s: tensor %s has shape %s, expected %s", where, label,
                              got, exp);
    }
    if (!mood_dtype_is_numeric(t->dtype) || t->dtype == MOOD_DTYPE_BOOL)
        return mood_error_set(MOOD_EFORMAT, "%s: tensor %s has dtype %s, expected a float", where,
                              label, mood_dtype_name(t->dtype));
    if ((err = mood_st_to_f32(dst, t)) < 0)
        mood_error_prefix("%s: tensor %s", where, label);
    return err < 0 ? err : 0;
}
