/*
 * device_stub.c: the CUDA device query when the CUDA backend is not built (MOOD_CUDA=OFF or no
 * nvcc): no devices.
 */
#include "mood/core.h"

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
