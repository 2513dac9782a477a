/*
 * device_stub.c: the CUDA device queries when the CUDA backend is not built (MOOD_CUDA=OFF or no
 * nvcc): no devices, no versions.
 */
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "mood/device.h"

int mood_cuda_device_count(char *name, size_t name_size)
{
    if (name && name_size)
        name[0] = '\0';
    return 0;
}

int mood_cuda_compiled(void)
{
    return 0;
}

int mood_gpu_info_get(mood_gpu_info *out, int index)
{
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    return mood_error_set(MOOD_ENOTFOUND, "no CUDA GPU %d (this build has no CUDA backend)", index);
}

void mood_cuda_backend_info_get(mood_cuda_backend_info *out)
{
    memset(out, 0, sizeof *out);
}
