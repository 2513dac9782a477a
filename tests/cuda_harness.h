/*
 * cuda_harness.h: the main() of the GPU tests (label cuda, and their CPU-emulation builds, label
 * emu): without the CUDA backend or a GPU they run only the checks that need none and exit 77
 * (skipped); with one they open GPU 0's context for the tests and close it after. Also what the
 * GPU UNet tests share to put side paths on a model's layers.
 */
#ifndef MOOD_TESTS_CUDA_HARNESS_H
#define MOOD_TESTS_CUDA_HARNESS_H

#include <math.h>

#include "engine/cuda/cuda_ops.h"
#include "harness.h"
#include "mood/core.h"
#include "mood/unet.h"

/* Weight i of m when it is a Linear or Conv2d weight (2 or 4 dimensions): its name (NULL for
 * others), its number of values, output features and the rms of its values, for side paths
 * sized to the weight. */
static inline const char *harness_unet_layer_weight(mood_unet *m, size_t i, size_t *numel,
                                                    size_t *out, float *rms)
{
    const char *name = mood_unet_weight_name(m, i);
    int ndim = 0;
    int64_t shape[4];
    const float *w = mood_unet_weight(m, name, &ndim, shape);
    double ss = 0.0;
    if (!w || ndim < 2)
        return NULL;
    *numel = 1;
    for (int d = 0; d < ndim; d++)
        *numel *= (size_t)shape[d];
    for (size_t e = 0; e < *numel; e++)
        ss += (double)w[e] * w[e];
    *rms = (float)sqrt(ss / (double)*numel);
    *out = (size_t)shape[0];
    return name;
}

/* Runs no_gpu and returns 77 (1 when one of them failed) where no GPU can be used; else opens
 * *ctx on GPU 0, runs tests, closes *ctx and returns harness_run's status. */
static inline int harness_run_cuda(mood_cuda_ctx **ctx, const harness_test *no_gpu, size_t n_no_gpu,
                                   const harness_test *tests, size_t n)
{
    char name[256];
    int gpus = mood_cuda_device_count(name, sizeof name), rc;
    if (!mood_cuda_compiled() || gpus == 0) {
        if (harness_run(no_gpu, n_no_gpu))
            return 1;
        printf("skipped: %s\n", mood_cuda_compiled() ? "no CUDA GPU" : "built without CUDA");
        return 77;
    }
    if (mood_cuda_ctx_new(ctx, NULL) != 0) {
        fprintf(stderr, "mood_cuda_ctx_new: %s\n", mood_error_last());
        return 1;
    }
    printf("GPU 0: %s\n", name);
    rc = harness_run(tests, n);
    mood_cuda_ctx_free(*ctx);
    *ctx = NULL;
    return rc;
}

#endif /* MOOD_TESTS_CUDA_HARNESS_H */
