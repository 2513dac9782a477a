/*
 * cuda_libs.h: cuBLAS, cuBLASLt and cuDNN, loaded with dlopen when the first CUDA context opens
 * (libs.cu), not linked. Why: linked, these libraries (cuBLASLt alone is half a gigabyte) cost
 * every `mood` command, `mood list` included, about 0.12 s and 200 MB of start-up, cold caches
 * over a second; loaded here, only work on the GPU pays it. The CUDA runtime is linked
 * statically as before (it is small and loads the driver lazily).
 *
 * The tables hold a pointer per function used; after the table, each function's name is
 * redefined to its table entry, so the backend's code reads as ordinary cuBLAS / cuDNN calls.
 * Include this after the libraries' headers and before nothing that declares them.
 */
#ifndef MOOD_ENGINE_CUDA_CUDA_LIBS_H
#define MOOD_ENGINE_CUDA_CUDA_LIBS_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cudnn.h>

/* cublasGemmEx and cublasGemmStridedBatchedEx have C++ overloads in cublas_api.h (taking a
 * cudaDataType compute type): the exported functions' types are spelt out. */
typedef cublasStatus_t (*mood__cublas_gemm_ex_fn)(cublasHandle_t, cublasOperation_t,
                                                  cublasOperation_t, int, int, int, const void *,
                                                  const void *, cudaDataType, int, const void *,
                                                  cudaDataType, int, const void *, void *,
                                                  cudaDataType, int, cublasComputeType_t,
                                                  cublasGemmAlgo_t);
typedef cublasStatus_t (*mood__cublas_gemm_sb_ex_fn)(
    cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *, const void *,
    cudaDataType, int, long long, const void *, cudaDataType, int, long long, const void *, void *,
    cudaDataType, int, long long, int, cublasComputeType_t, cublasGemmAlgo_t);

#define MOOD__CUBLAS_FUNCTIONS(X)                                                                  \
    X(cublasCreate_v2)                                                                             \
    X(cublasDestroy_v2)                                                                            \
    X(cublasSetStream_v2)                                                                          \
    X(cublasSetWorkspace_v2)                                                                       \
    X(cublasSetMathMode)                                                                           \
    X(cublasGetStatusName)                                                                         \
    X(cublasGetStatusString)                                                                       \
    X(cublasGetProperty)

#define MOOD__CUBLASLT_FUNCTIONS(X)                                                                \
    X(cublasLtCreate)                                                                              \
    X(cublasLtDestroy)                                                                             \
    X(cublasLtMatmulDescCreate)                                                                    \
    X(cublasLtMatmulDescDestroy)                                                                   \
    X(cublasLtMatmulDescSetAttribute)                                                              \
    X(cublasLtMatrixLayoutCreate)                                                                  \
    X(cublasLtMatrixLayoutDestroy)                                                                 \
    X(cublasLtMatmulPreferenceCreate)                                                              \
    X(cublasLtMatmulPreferenceDestroy)                                                             \
    X(cublasLtMatmulPreferenceSetAttribute)                                                        \
    X(cublasLtMatmulAlgoGetHeuristic)                                                              \
    X(cublasLtMatmul)

#define MOOD__CUDNN_FUNCTIONS(X)                                                                   \
    X(cudnnCreate)                                                                                 \
    X(cudnnDestroy)                                                                                \
    X(cudnnSetStream)                                                                              \
    X(cudnnGetErrorString)                                                                         \
    X(cudnnGetLastErrorString)                                                                     \
    X(cudnnGetVersion)                                                                             \
    X(cudnnCreateTensorDescriptor)                                                                 \
    X(cudnnDestroyTensorDescriptor)                                                                \
    X(cudnnSetTensor4dDescriptor)                                                                  \
    X(cudnnCreateFilterDescriptor)                                                                 \
    X(cudnnDestroyFilterDescriptor)                                                                \
    X(cudnnSetFilter4dDescriptor)                                                                  \
    X(cudnnCreateConvolutionDescriptor)                                                            \
    X(cudnnDestroyConvolutionDescriptor)                                                           \
    X(cudnnSetConvolution2dDescriptor)                                                             \
    X(cudnnSetConvolutionMathType)                                                                 \
    X(cudnnGetConvolutionForwardAlgorithm_v7)                                                      \
    X(cudnnGetConvolutionBackwardDataAlgorithm_v7)                                                 \
    X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                                               \
    X(cudnnConvolutionForward)                                                                     \
    X(cudnnConvolutionBackwardData)                                                                \
    X(cudnnConvolutionBackwardFilter)

#define MOOD__CUDA_LIB_FIELD(name) decltype(&::name) name;

typedef struct mood__cublas_fns {
    MOOD__CUBLAS_FUNCTIONS(MOOD__CUDA_LIB_FIELD)
    mood__cublas_gemm_ex_fn cublasGemmEx;
    mood__cublas_gemm_sb_ex_fn cublasGemmStridedBatchedEx;
} mood__cublas_fns;

typedef struct mood__cublaslt_fns {
    MOOD__CUBLASLT_FUNCTIONS(MOOD__CUDA_LIB_FIELD)
} mood__cublaslt_fns;

typedef struct mood__cudnn_fns {
    MOOD__CUDNN_FUNCTIONS(MOOD__CUDA_LIB_FIELD)
} mood__cudnn_fns;

extern mood__cublas_fns mood__cublas;
extern mood__cublaslt_fns mood__cublaslt;
extern mood__cudnn_fns mood__cudnn;

/* Loads the three libraries once per process (thread-safe). 0, or MOOD_EBACKEND with a message
 * naming the library that could not be loaded and why. */
int mood__cuda_libs_load(void);

/* ----- every call below goes through the tables ---------------------------------------------- */
#ifndef MOOD_CUDA_LIBS_NO_REDIRECT /* (libs.cu, which fills them, needs the plain names) */

#define cublasCreate_v2            mood__cublas.cublasCreate_v2
#define cublasDestroy_v2           mood__cublas.cublasDestroy_v2
#define cublasSetStream_v2         mood__cublas.cublasSetStream_v2
#define cublasSetWorkspace_v2      mood__cublas.cublasSetWorkspace_v2
#define cublasSetMathMode          mood__cublas.cublasSetMathMode
#define cublasGetStatusName        mood__cublas.cublasGetStatusName
#define cublasGetStatusString      mood__cublas.cublasGetStatusString
#define cublasGetProperty          mood__cublas.cublasGetProperty
#define cublasGemmEx               mood__cublas.cublasGemmEx
#define cublasGemmStridedBatchedEx mood__cublas.cublasGemmStridedBatchedEx

#define cublasLtCreate                       mood__cublaslt.cublasLtCreate
#define cublasLtDestroy                      mood__cublaslt.cublasLtDestroy
#define cublasLtMatmulDescCreate             mood__cublaslt.cublasLtMatmulDescCreate
#define cublasLtMatmulDescDestroy            mood__cublaslt.cublasLtMatmulDescDestroy
#define cublasLtMatmulDescSetAttribute       mood__cublaslt.cublasLtMatmulDescSetAttribute
#define cublasLtMatrixLayoutCreate           mood__cublaslt.cublasLtMatrixLayoutCreate
#define cublasLtMatrixLayoutDestroy          mood__cublaslt.cublasLtMatrixLayoutDestroy
#define cublasLtMatmulPreferenceCreate       mood__cublaslt.cublasLtMatmulPreferenceCreate
#define cublasLtMatmulPreferenceDestroy      mood__cublaslt.cublasLtMatmulPreferenceDestroy
#define cublasLtMatmulPreferenceSetAttribute mood__cublaslt.cublasLtMatmulPreferenceSetAttribute
#define cublasLtMatmulAlgoGetHeuristic       mood__cublaslt.cublasLtMatmulAlgoGetHeuristic
#define cublasLtMatmul                       mood__cublaslt.cublasLtMatmul

#define cudnnCreate                            mood__cudnn.cudnnCreate
#define cudnnDestroy                           mood__cudnn.cudnnDestroy
#define cudnnSetStream                         mood__cudnn.cudnnSetStream
#define cudnnGetErrorString                    mood__cudnn.cudnnGetErrorString
#define cudnnGetLastErrorString                mood__cudnn.cudnnGetLastErrorString
#define cudnnGetVersion                        mood__cudnn.cudnnGetVersion
#define cudnnCreateTensorDescriptor            mood__cudnn.cudnnCreateTensorDescriptor
#define cudnnDestroyTensorDescriptor           mood__cudnn.cudnnDestroyTensorDescriptor
#define cudnnSetTensor4dDescriptor             mood__cudnn.cudnnSetTensor4dDescriptor
#define cudnnCreateFilterDescriptor            mood__cudnn.cudnnCreateFilterDescriptor
#define cudnnDestroyFilterDescriptor           mood__cudnn.cudnnDestroyFilterDescriptor
#define cudnnSetFilter4dDescriptor             mood__cudnn.cudnnSetFilter4dDescriptor
#define cudnnCreateConvolutionDescriptor       mood__cudnn.cudnnCreateConvolutionDescriptor
#define cudnnDestroyConvolutionDescriptor      mood__cudnn.cudnnDestroyConvolutionDescriptor
#define cudnnSetConvolution2dDescriptor        mood__cudnn.cudnnSetConvolution2dDescriptor
#define cudnnSetConvolutionMathType            mood__cudnn.cudnnSetConvolutionMathType
#define cudnnGetConvolutionForwardAlgorithm_v7 mood__cudnn.cudnnGetConvolutionForwardAlgorithm_v7
#define cudnnGetConvolutionBackwardDataAlgorithm_v7                                                \
    mood__cudnn.cudnnGetConvolutionBackwardDataAlgorithm_v7
#define cudnnGetConvolutionBackwardFilterAlgorithm_v7                                              \
    mood__cudnn.cudnnGetConvolutionBackwardFilterAlgorithm_v7
#define cudnnConvolutionForward        mood__cudnn.cudnnConvolutionForward
#define cudnnConvolutionBackwardData   mood__cudnn.cudnnConvolutionBackwardData
#define cudnnConvolutionBackwardFilter mood__cudnn.cudnnConvolutionBackwardFilter
#endif

#endif /* MOOD_ENGINE_CUDA_CUDA_LIBS_H */
