/*
 * blas_tune.c: notices when OpenBLAS runs generic kernels on a CPU it did not recognise, and
 * says which kernel set the CPU can run instead (mood_blas_coretype_hint in mood/core.h).
 *
 * Why: OpenBLAS 0.3.21 (Debian 12) does not know some newer or virtual x86-64 CPUs and falls
 * back to its Prescott (SSE3) kernels, which run sgemm about 3x slower than the AVX-512 ones the
 * CPU supports. OPENBLAS_CORETYPE chooses the kernels, but OpenBLAS reads it once when it is
 * loaded, before main() runs; so the mood command sets it and starts itself again (cli/main.c).
 * The kernels give the same results here (checked on this project's machines: identical UNet
 * and VAE outputs); only the speed changes.
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mood/core.h"

const char *mood_blas_coretype_hint(void)
{
    const char *core = openblas_get_corename();
    static const char *const generic[] = {"Prescott",  "Core2",  "Katmai", "Coppermine",
                                          "Northwood", "Banias", "Penryn", "Dunnington"};
    int is_generic = 0;
    for (size_t i = 0; core && i < sizeof generic / sizeof generic[0]; i++)
        is_generic |= strcmp(core, generic[i]) == 0;
    if (!is_generic)
        return NULL;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#endif
    return NULL;
}

void mood_blas_tune_process(char **argv)
{
    const char *hint = mood_blas_coretype_hint();
    if (!hint || getenv("OPENBLAS_CORETYPE") || getenv("MOOD_BLAS_TUNED"))
        return;
    if (setenv("OPENBLAS_CORETYPE", hint, 1) != 0 || setenv("MOOD_BLAS_TUNED", "1", 1) != 0)
        return;
    execv("/proc/self/exe", argv); /* returns only on failure: carry on as is */
}
