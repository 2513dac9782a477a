/*
 * libs.cu: loads cuBLAS, cuBLASLt and cuDNN with dlopen on first use and fills the tables of
 * cuda_libs.h (why: see there). Each library is looked up by its soname first (the system's
 * library path, LD_LIBRARY_PATH), then in the directory the build found it in. RTLD_NOW
 * resolves every function at once, so a broken installation fails here with the library's name,
 * not in the middle of a kernel; the handles are never closed.
 */
#define MOOD_CUDA_LIBS_NO_REDIRECT
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>

extern "C" {
#include "common/common.h"
}
#include "engine/cuda/cuda_libs.h"

#define STR_(x)         #x
#define STR(x)          STR_(x)
#define CUBLAS_SONAME   "libcublas.so." STR(CUBLAS_VER_MAJOR)
#define CUBLASLT_SONAME "libcublasLt.so." STR(CUBLAS_VER_MAJOR)
#define CUDNN_SONAME    "libcudnn.so." STR(CUDNN_MAJOR)

#ifndef MOOD_CUBLAS_DIR
#define MOOD_CUBLAS_DIR ""
#endif
#ifndef MOOD_CUDNN_DIR
#define MOOD_CUDNN_DIR ""
#endif

mood__cublas_fns mood__cublas;
mood__cublaslt_fns mood__cublaslt;
mood__cudnn_fns mood__cudnn;

#define SYMBOL_BLAS(name) {#name, offsetof(mood__cublas_fns, name)},
#define SYMBOL_LT(name)   {#name, offsetof(mood__cublaslt_fns, name)},
#define SYMBOL_DNN(name)  {#name, offsetof(mood__cudnn_fns, name)},
static const mood_dynlib_symbol blas_symbols[] = {
    MOOD__CUBLAS_FUNCTIONS(SYMBOL_BLAS){"cublasGemmEx", offsetof(mood__cublas_fns, cublasGemmEx)},
    {"cublasGemmStridedBatchedEx", offsetof(mood__cublas_fns, cublasGemmStridedBatchedEx)}};
static const mood_dynlib_symbol lt_symbols[] = {MOOD__CUBLASLT_FUNCTIONS(SYMBOL_LT)};
static const mood_dynlib_symbol dnn_symbols[] = {MOOD__CUDNN_FUNCTIONS(SYMBOL_DNN)};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_rc;
static char reason[1200];

/* Loads one library by soname, else from dir; 0 or -1 with both attempts' reasons in `reason`. */
static int load_one(const char *soname, const char *dir, const mood_dynlib_symbol *symbols,
                    size_t n, void *fns, size_t size)
{
    char why[512], why_dir[512] = "", path[1024];
    if (mood_dynlib_load(soname, symbols, n, fns, size, why, sizeof why) == 0)
        return 0;
    if (dir[0]) {
        snprintf(path, sizeof path, "%s/%s", dir, soname);
        if (mood_dynlib_load(path, symbols, n, fns, size, why_dir, sizeof why_dir) == 0)
            return 0;
    }
    snprintf(reason, sizeof reason, "%s%s%s", why, why_dir[0] ? "; from the build's folder: " : "",
             why_dir);
    return -1;
}

static void load_all(void)
{
    /* cuBLASLt first: cuBLAS depends on it */
    if (load_one(CUBLASLT_SONAME, MOOD_CUBLAS_DIR, lt_symbols,
                 sizeof lt_symbols / sizeof lt_symbols[0], &mood__cublaslt,
                 sizeof mood__cublaslt) ||
        load_one(CUBLAS_SONAME, MOOD_CUBLAS_DIR, blas_symbols,
                 sizeof blas_symbols / sizeof blas_symbols[0], &mood__cublas,
                 sizeof mood__cublas) ||
        load_one(CUDNN_SONAME, MOOD_CUDNN_DIR, dnn_symbols,
                 sizeof dnn_symbols / sizeof dnn_symbols[0], &mood__cudnn, sizeof mood__cudnn))
        load_rc = -1;
}

int mood__cuda_libs_load(void)
{
    pthread_once(&once, load_all);
    if (load_rc == 0)
        return 0;
    return mood_error_set(MOOD_EBACKEND,
                          "the CUDA backend needs cuBLAS %d and cuDNN %d (" CUBLAS_SONAME
                          ", " CUDNN_SONAME "): %s",
                          CUBLAS_VER_MAJOR, CUDNN_MAJOR, reason);
}
