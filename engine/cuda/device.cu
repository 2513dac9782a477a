/*
 * device.cu: CUDA device discovery for `mood info` and backend selection. A machine without a
 * GPU or driver reports zero devices rather than an error.
 */
#include <cuda_runtime.h>
#include <string.h>

#include "mood/core.h"

extern "C" int mood_cuda_device_count(char *name, size_t name_size)
{
    int count = 0;
    if (name && name_size)
        name[0] = '\0';
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    if (count > 0 && name && name_size) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
            strncpy(name, prop.name, name_size - 1);
            name[name_size - 1] = '\0';
        }
    }
    return count;
}

extern "C" int mood_cuda_compiled(void)
{
    return 1;
}
