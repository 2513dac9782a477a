/*
 * device.h: which compute device mood runs on (the CPU or a CUDA GPU), and what the CUDA backend
 * and the GPUs of this machine are. No CUDA types: a program built without CUDA uses the same
 * calls and learns that there is no GPU.
 *
 * The rule (mood_device_resolve): a device asked for (a --device option, else $MOOD_DEVICE) is
 * used or is an error; nothing asked for picks CUDA GPU 0 when the backend is built and a GPU is
 * present, else the CPU with a one-line notice saying why.
 */
#ifndef MOOD_DEVICE_H
#define MOOD_DEVICE_H

#include <stddef.h>

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mood_device_kind { MOOD_DEVICE_CPU = 0, MOOD_DEVICE_CUDA = 1 } mood_device_kind;

/* The device chosen. */
typedef struct mood_device {
    mood_device_kind kind;
    int index;        /* CUDA device ordinal (0 for the CPU) */
    int requested;    /* 1: asked for (option or $MOOD_DEVICE); 0: the default rule chose */
    char notice[200]; /* why the default fell back to the CPU ("" otherwise), one line */
} mood_device;

/* Applies the rule to the facts given: `request` is the --device value (NULL or "" when not
 * given), `env` the value of $MOOD_DEVICE (NULL or "" when unset); each is "cpu", "cuda",
 * "cuda:N" or "auto". Errors: MOOD_EINVAL for another value (naming where it came from);
 * MOOD_EBACKEND (an environment error) when cuda is asked for and this build has no CUDA
 * backend, or no GPU (or not GPU N) is present. */
int mood_device_resolve(mood_device *out, const char *request, const char *env, int cuda_compiled,
                        int gpu_count);
/* mood_device_resolve with $MOOD_DEVICE and this build and machine. */
int mood_device_select(mood_device *out, const char *request);
/* "cpu" or "cuda". */
const char *mood_device_kind_name(mood_device_kind kind);

/* The CUDA backend of this build. Versions are as the libraries report them (e.g. runtime
 * 13000 for 13.0, cuBLAS 130100, cuDNN 91900); 0 where unknown or not built. */
typedef struct mood_cuda_backend_info {
    int compiled;         /* the backend is in this build */
    int runtime_version;  /* CUDA runtime linked in */
    int driver_version;   /* the driver's CUDA version (0: no driver) */
    int cublas_version;   /* cuBLAS loaded */
    size_t cudnn_version; /* cuDNN loaded */
    char archs[64];       /* GPU architectures compiled for, e.g. "80,90" */
} mood_cuda_backend_info;
void mood_cuda_backend_info_get(mood_cuda_backend_info *out);

/* One GPU. */
typedef struct mood_gpu_info {
    char name[256];
    size_t total_memory;    /* bytes */
    int sm_count;           /* streaming multiprocessors */
    int cc_major, cc_minor; /* compute capability */
} mood_gpu_info;
/* GPU `index` (0 .. mood_cuda_device_count() - 1). MOOD_ENOTFOUND when there is no such GPU. */
int mood_gpu_info_get(mood_gpu_info *out, int index);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_DEVICE_H */
