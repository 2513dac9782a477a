/*
 * device.cu: CUDA device discovery for `mood info` and device selection (include/mood/device.h):
 * the number of GPUs, each one's properties, and the versions of the CUDA runtime, driver,
 * cuBLAS and cuDNN. A machine without a GPU or driver reports zero devices rather than an error.
 */
#include <stdio.h>
#include <string.h>

#include "engine/cuda/cuda_internal.h"
#include "mood/device.h"
#include "mood_config.h"

extern "C" {
#include "common/args.h"
}

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

extern "C" int mood_gpu_info_get(mood_gpu_info *out, int index)
{
    cudaDeviceProp prop;
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    if (index < 0 || index >= mood_cuda_device_count(NULL, 0))
        return mood_error_set(MOOD_ENOTFOUND, "no CUDA GPU %d", index);
    CUDA_TRY(cudaGetDeviceProperties(&prop, index));
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->total_memory = prop.totalGlobalMem;
    out->sm_count = prop.multiProcessorCount;
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    return 0;
}

/* major * 10000 + minor * 100 + patch of the loaded cuBLAS, 0 when it cannot be asked. */
static int cublas_version(void)
{
    int major = 0, minor = 0, patch = 0;
    if (cublasGetProperty(MAJOR_VERSION, &major) != CUBLAS_STATUS_SUCCESS ||
        cublasGetProperty(MINOR_VERSION, &minor) != CUBLAS_STATUS_SUCCESS ||
        cublasGetProperty(PATCH_LEVEL, &patch) != CUBLAS_STATUS_SUCCESS)
        return 0;
    return major * 10000 + minor * 100 + patch;
}

extern "C" void mood_cuda_backend_info_get(mood_cuda_backend_info *out)
{
    memset(out, 0, sizeof *out);
    out->compiled = 1;
    snprintf(out->archs, sizeof out->archs, "%s", MOOD_CUDA_ARCHS);
    if (cudaRuntimeGetVersion(&out->runtime_version) != cudaSuccess)
        out->runtime_version = 0;
    if (cudaDriverGetVersion(&out->driver_version) != cudaSuccess)
        out->driver_version = 0;
    cudaGetLastError();
    /* the libraries are loaded for this (a fraction of a second): only `mood info` asks */
    if (mood__cuda_libs_load() == 0) {
        out->cublas_version = cublas_version();
        out->cudnn_version = cudnnGetVersion();
    } else {
        mood_error_clear();
    }
}
