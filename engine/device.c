/*
 * device.c: choosing the compute device (include/mood/device.h). The rule lives here, in the
 * library, so the command line and programs linking libmood choose alike: a device asked for
 * (--device, else $MOOD_DEVICE) is used or is an error; otherwise CUDA GPU 0 when the backend is
 * built and a GPU is present, else the CPU with a one-line notice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/args.h"
#include "common/common.h"
#include "mood/device.h"

const char *mood_device_kind_name(mood_device_kind kind)
{
    return kind == MOOD_DEVICE_CUDA ? "cuda" : "cpu";
}

/* Parses "cpu", "cuda", "cuda:N" or "auto" (any case): kind -1 for auto. */
static int parse_device(const char *s, const char *source, int *kind, int *index)
{
    *index = 0;
    if (strcasecmp(s, "auto") == 0) {
        *kind = -1;
        return 0;
    }
    if (strcasecmp(s, "cpu") == 0) {
        *kind = MOOD_DEVICE_CPU;
        return 0;
    }
    if (strncasecmp(s, "cuda", 4) == 0 && (s[4] == '\0' || s[4] == ':')) {
        *kind = MOOD_DEVICE_CUDA;
        if (s[4] == '\0')
            return 0;
        char *end;
        long n = strtol(s + 5, &end, 10);
        if (s[5] != '\0' && *end == '\0' && n >= 0 && n < 1024) {
            *index = (int)n;
            return 0;
        }
    }
    return mood_error_set(MOOD_EINVAL, "%s '%s': expected cpu, cuda, cuda:N or auto", source, s);
}

/* The CUDA device asked for, or the error saying why it cannot be had. */
static int require_cuda(mood_device *out, int index, const char *source, int compiled, int gpus)
{
    if (!compiled)
        return mood_error_set(MOOD_EBACKEND,
                              "%s cuda: this build of mood has no CUDA backend (built with "
                              "MOOD_CUDA=OFF or without the CUDA toolkit); use --device cpu",
                              source);
    if (gpus == 0)
        return mood_error_set(MOOD_EBACKEND,
                              "%s cuda: no CUDA GPU found (no device, or the NVIDIA driver is not "
                              "loaded); use --device cpu",
                              source);
    if (index >= gpus)
        return mood_error_set(MOOD_EBACKEND, "%s cuda:%d: this machine has %d CUDA GPU%s", source,
                              index, gpus, gpus == 1 ? "" : "s");
    out->kind = MOOD_DEVICE_CUDA;
    out->index = index;
    return 0;
}

int mood_device_resolve(mood_device *out, const char *request, const char *env, int cuda_compiled,
                        int gpu_count)
{
    const char *value = NULL, *source = NULL;
    int kind = -1, index = 0;
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    if (request && *request)
        value = request, source = "--device";
    else if (env && *env)
        value = env, source = "MOOD_DEVICE";
    if (value) {
        int rc = parse_device(value, source, &kind, &index);
        if (rc < 0)
            return rc;
    }
    if (kind == MOOD_DEVICE_CPU) {
        out->requested = 1;
        return 0;
    }
    if (kind == MOOD_DEVICE_CUDA) {
        out->requested = 1;
        return require_cuda(out, index, source, cuda_compiled, gpu_count);
    }
    /* auto */
    if (cuda_compiled && gpu_count > 0) {
        out->kind = MOOD_DEVICE_CUDA;
        return 0;
    }
    snprintf(out->notice, sizeof out->notice, "%s; running on the CPU (slow)",
             cuda_compiled ? "no CUDA GPU found" : "this build has no CUDA backend");
    return 0;
}

int mood_device_select(mood_device *out, const char *request)
{
    const char *env = getenv("MOOD_DEVICE");
    const char *value = request && *request ? request : env;
    int compiled = mood_cuda_compiled(), gpus = 0;
    MOOD_ARG_NONNULL(out);
    /* asking the driver costs time: not when the CPU was asked for */
    if (compiled && !(value && strcasecmp(value, "cpu") == 0))
        gpus = mood_cuda_device_count(NULL, 0);
    return mood_device_resolve(out, request, env, compiled, gpus);
}
