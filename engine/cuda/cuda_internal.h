/*
 * cuda_internal.h: what the CUDA backend's files (engine/cuda, the .cu files) share: the context,
 * the memory pool, the status checks that turn CUDA / cuBLAS / cuDNN failures into MOOD_E* codes
 * with a message naming the call, the error and file:line, launch helpers and the row-major GEMM.
 * CUDA C++; never included by C code (engine/cuda/cuda_ops.h is the C interface).
 */
#ifndef MOOD_ENGINE_CUDA_CUDA_INTERNAL_H
#define MOOD_ENGINE_CUDA_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "engine/cuda/cuda_libs.h" /* cuBLAS, cuBLASLt, cuDNN (loaded on first use) */

#include "engine/cuda/cuda_ops.h"

extern "C" {
#include "common/common.h"
}

/* ----- errors ------------------------------------------------------------------------------- */

/* Set the error message ("<call> failed: <name> (<description>) at <file>:<line>") and return
 * the MOOD_E* code: MOOD_ENOMEM for allocation failures, MOOD_EBACKEND otherwise. */
int mood__cuda_fail(cudaError_t e, const char *call, const char *file, int line);
int mood__cublas_fail(cublasStatus_t s, const char *call, const char *file, int line);
int mood__cudnn_fail(cudnnStatus_t s, const char *call, const char *file, int line);

/* Return from the calling function (an int one) with the error when the call fails. */
#define CUDA_TRY(call)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return mood__cuda_fail(e_, #call, __FILE__, __LINE__);                                 \
    } while (0)
#define CUBLAS_TRY(call)                                                                           \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return mood__cublas_fail(s_, #call, __FILE__, __LINE__);                               \
    } while (0)
#define CUDNN_TRY(call)                                                                            \
    do {                                                                                           \
        cudnnStatus_t s_ = (call);                                                                 \
        if (s_ != CUDNN_STATUS_SUCCESS)                                                            \
            return mood__cudnn_fail(s_, #call, __FILE__, __LINE__);                                \
    } while (0)
/* After a kernel launch: a bad configuration shows at once (errors while it runs, later). */
#define LAUNCH_CHECK() CUDA_TRY(cudaGetLastError())
/* Propagate a MOOD_E* code. */
#define MOOD_TRY(call)                                                                             \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ < 0)                                                                               \
            return rc_;                                                                            \
    } while (0)

/* ----- memory pool (pool.cu) ---------------------------------------------------------------- */

typedef struct mood_cuda_pool mood_cuda_pool;
int mood__cuda_pool_new(mood_cuda_pool **out, int device);
/* Frees every block (the caller has synchronised the device's work that used them). */
void mood__cuda_pool_free_all(mood_cuda_pool *p);
int mood__cuda_pool_alloc(mood_cuda_pool *p, void **out, size_t bytes);
/* MOOD_EINVAL when ptr did not come from this pool. */
int mood__cuda_pool_release(mood_cuda_pool *p, void *ptr);
/* Returns the cached blocks to the driver. */
void mood__cuda_pool_trim(mood_cuda_pool *p);
void mood__cuda_pool_stats(const mood_cuda_pool *p, mood_cuda_pool_stats *out);

/* A CUDA graph's reservation (graph.cu, cuda_ops.h): while it is the pool's active one, every
 * block the pool hands out is recorded here and stays the graph's; a block freed meanwhile is
 * marked idle and handed out again only to later requests of the same reservation. Until
 * mood__cuda_pool_resv_release the blocks stay in the pool's table of blocks in use (counted in
 * stats.in_use), so neither the shared free lists nor a trim ever see them. */
typedef struct pool_resv_block {
    void *ptr;
    int cls;  /* the pool's size class */
    int idle; /* freed by the recorded code: free for its next request of this class */
} pool_resv_block;
typedef struct mood_cuda_pool_resv {
    pool_resv_block *blocks;
    size_t n, cap;
    size_t bytes; /* of the blocks, by size class */
} mood_cuda_pool_resv;
/* Makes r (zeroed by the caller) the active reservation; MOOD_EINVAL when one is active. */
int mood__cuda_pool_resv_begin(mood_cuda_pool *p, mood_cuda_pool_resv *r);
/* No reservation is active any more (r keeps its blocks). */
void mood__cuda_pool_resv_end(mood_cuda_pool *p);
/* Returns r's blocks to the pool's free lists (the caller has made sure no queued work still uses
 * them, or that any that does runs before the next user: stream order) and frees r's table. */
void mood__cuda_pool_resv_release(mood_cuda_pool *p, mood_cuda_pool_resv *r);

/* ----- context ------------------------------------------------------------------------------ */

#define MOOD_CUDA_CONV_CACHE 256

/* Algorithms chosen for one convolution shape and data type (conv.cu). */
typedef struct conv_algos {
    mood_conv2d_dims d;
    int dtype;
    int valid;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t fwd_ws, bwd_data_ws, bwd_filter_ws;
    cudnnMathType_t fwd_math, bwd_data_math, bwd_filter_math; /* what each algorithm needs */
} conv_algos;

struct mood_cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    cudnnHandle_t dnn;
    void *workspace; /* shared by cuBLAS, cuBLASLt and cuDNN: one stream, so never at once */
    size_t workspace_size;
    mood_cuda_pool *pool;
    int allow_tf32;
    int attention_path;      /* 0 auto, 1 flash, 2 GEMM */
    size_t attention_budget; /* bytes of scores at once (0: ATT_GEMM_BUDGET) */
    int sm_count;
    conv_algos conv_cache[MOOD_CUDA_CONV_CACHE];
    int conv_next; /* round-robin slot to overwrite when the cache is full */
    /* moves when a setting that decides which kernels run changes (attention_path, _budget):
     * a CUDA graph recorded before is stale (graph.cu) */
    unsigned long config_gen;
};

/* A pool block freed when it goes out of scope (temporaries of one op). */
struct pool_tmp {
    mood_cuda_ctx *ctx;
    void *ptr;
    explicit pool_tmp(mood_cuda_ctx *c) : ctx(c), ptr(NULL)
    {
    }
    ~pool_tmp()
    {
        if (ptr)
            mood__cuda_pool_release(ctx->pool, ptr);
    }
    int alloc(size_t bytes)
    {
        return mood__cuda_pool_alloc(ctx->pool, &ptr, bytes ? bytes : 1);
    }
    float *f() const
    {
        return static_cast<float *>(ptr);
    }
    pool_tmp(const pool_tmp &) = delete;
    pool_tmp &operator=(const pool_tmp &) = delete;
};

/* ----- launch helpers ----------------------------------------------------------------------- */

/* Blocks of `threads` covering n items, capped (kernels loop with a grid stride). */
static inline unsigned grid_for(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    return b > 65535u * 16u ? 65535u * 16u : (unsigned)b;
}

/* Size of a dtype's element in bytes. */
static inline size_t dtype_size(mood_cuda_dtype dt)
{
    return dt == MOOD_CUDA_F32 ? 4 : 2;
}
cudaDataType_t mood__cuda_data_type(mood_cuda_dtype dt);
const char *mood__cuda_dtype_name(mood_cuda_dtype dt);

/* Checks for the public functions: the context exists and sizes fit in int where the library
 * calls need them. Set the error and return MOOD_EINVAL. */
int mood__cuda_check_ctx(const mood_cuda_ctx *ctx, const char *fn);
int mood__cuda_check_int(size_t v, const char *what, const char *fn);

/* ----- matrix products (gemm.cu) ------------------------------------------------------------ */

/* Row-major C (M x N) = alpha op(A) op(B) + beta C with op(A) = A (M x K) or A^T (A stored
 * K x M, ta 1), op(B) = B (K x N) or B^T (B stored N x K, tb 1); A and B of dtype ab, C of dtype
 * c; fp32 accumulation (TF32 for fp32 inputs only when the context allows it). batch > 1: that
 * many products, the operands `stride_*` elements apart. */
int mood__cuda_gemm(mood_cuda_ctx *ctx, int ta, int tb, int M, int N, int K, float alpha,
                    const void *A, int lda, long long stride_a, const void *B, int ldb,
                    long long stride_b, mood_cuda_dtype ab, float beta, void *C, int ldc,
                    long long stride_c, mood_cuda_dtype c, int batch);

/* ----- elementwise helpers (elementwise.cu) ------------------------------------------------- */

/* acc[j] += sum over rows i of x[i][j], x (rows x cols) fp32 on the device, in a fixed order. */
int mood__cuda_column_sums(mood_cuda_ctx *ctx, float *acc, const float *x, size_t rows, int cols);
/* out (N x C, of dt) += bias (C, fp32) on every row. */
int mood__cuda_add_row_bias(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype dt, const float *bias,
                            size_t N, int C);
/* out (B x C x HW, of dt) += bias (C, fp32) on every position. */
int mood__cuda_add_nchw_bias(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype dt, const float *bias,
                             int B, int C, size_t HW);
/* x[i][j] = beta x[i][j] (beta 0: zeros) for i < rows, j < cols; rows ld elements apart. */
int mood__cuda_scale(mood_cuda_ctx *ctx, void *x, mood_cuda_dtype dt, float beta, size_t rows,
                     int cols, int ld);

#endif /* MOOD_ENGINE_CUDA_CUDA_INTERNAL_H */
