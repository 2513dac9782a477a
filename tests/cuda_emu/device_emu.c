/*
 * device_emu.c: the CUDA device queries (include/mood/device.h) of the CPU emulation of the CUDA
 * backend (cuda_ops_emu.c, which says what it is for): the backend counts as compiled and one
 * GPU, "CPU emulation", is present, so the GPU tests run instead of skipping.
 */
#include <stdio.h>
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "mood/device.h"

#define EMU_NAME "CPU emulation"

int mood_cuda_device_count(char *name, size_t name_size)
{
    if (name && name_size)
        snprintf(name, name_size, "%s", EMU_NAME);
    return 1;
}

int mood_cuda_compiled(void)
{
    return 1;
}

int mood_gpu_info_get(mood_gpu_info *out, int index)
{
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    if (index != 0)
        return mood_error_set(MOOD_ENOTFOUND, "no CUDA GPU %d (1 emulated)", index);
    snprintf(out->name, sizeof out->name, "%s", EMU_NAME);
    return 0;
}

/* No runtime, driver or libraries: their versions stay 0 ("unknown"). */
void mood_cuda_backend_info_get(mood_cuda_backend_info *out)
{
    memset(out, 0, sizeof *out);
    out->compiled = 1;
    snprintf(out->archs, sizeof out->archs, "emulated");
}
