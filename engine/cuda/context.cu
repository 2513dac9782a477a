/*
 * context.cu: the CUDA backend's context (device, stream, cuBLAS / cuBLASLt / cuDNN handles,
 * shared workspace, memory pool), host <-> device copies, and the conversion of CUDA, cuBLAS and
 * cuDNN status codes into MOOD_E* codes with messages naming the failed call.
 */
#include <string.h>

#include "engine/cuda/cuda_internal.h"

/* ----- errors ------------------------------------------------------------------------------- */

int mood__cuda_fail(cudaError_t e, const char *call, const char *file, int line)
{
    int code = e == cudaErrorMemoryAllocation ? MOOD_ENOMEM : MOOD_EBACKEND;
    return mood_error_set(code, "CUDA: %s failed: %s (%s) at %s:%d", call, cudaGetErrorName(e),
                          cudaGetErrorString(e), file, line);
}

int mood__cublas_fail(cublasStatus_t s, const char *call, const char *file, int line)
{
    int code = s == CUBLAS_STATUS_ALLOC_FAILED ? MOOD_ENOMEM : MOOD_EBACKEND;
    return mood_error_set(code, "cuBLAS: %s failed: %s (%s) at %s:%d", call, cublasGetStatusName(s),
                          cublasGetStatusString(s), file, line);
}

int mood__cudnn_fail(cudnnStatus_t s, const char *call, const char *file, int line)
{
    int code = s == CUDNN_STATUS_ALLOC_FAILED ? MOOD_ENOMEM : MOOD_EBACKEND;
    char detail[512];
    detail[0] = '\0';
    cudnnGetLastErrorString(detail, sizeof detail);
    return mood_error_set(code, "cuDNN: %s failed: %s%s%s at %s:%d", call, cudnnGetErrorString(s),
                          detail[0] ? ": " : "", detail, file, line);
}

int mood__cuda_check_ctx(const mood_cuda_ctx *ctx, const char *fn)
{
    if (!ctx)
        return mood_error_set(MOOD_EINVAL, "%s: no CUDA context", fn);
    return 0;
}

int mood__cuda_check_int(size_t v, const char *what, const char *fn)
{
    if (v > (size_t)INT32_MAX)
        return mood_error_set(MOOD_EINVAL, "%s: %s = %zu is too large (at most %d)", fn, what, v,
                              INT32_MAX);
    return 0;
}

cudaDataType_t mood__cuda_data_type(mood_cuda_dtype dt)
{
    return dt == MOOD_CUDA_BF16 ? CUDA_R_16BF : dt == MOOD_CUDA_F16 ? CUDA_R_16F : CUDA_R_32F;
}

const char *mood__cuda_dtype_name(mood_cuda_dtype dt)
{
    return dt == MOOD_CUDA_BF16 ? "bf16" : dt == MOOD_CUDA_F16 ? "f16" : "f32";
}

/* ----- context ------------------------------------------------------------------------------ */

void mood_cuda_options_init(mood_cuda_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->workspace = (size_t)64 << 20;
}

/* Creates the handles and buffers of a context whose device is already set. */
static int ctx_open(mood_cuda_ctx *c, const mood_cuda_options *o)
{
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, c->device));
    c->sm_count = prop.multiProcessorCount;
    CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&c->blas));
    CUBLAS_TRY(cublasSetStream(c->blas, c->stream));
    CUBLAS_TRY(cublasLtCreate(&c->lt));
    CUDNN_TRY(cudnnCreate(&c->dnn));
    CUDNN_TRY(cudnnSetStream(c->dnn, c->stream));
    MOOD_TRY(mood__cuda_pool_new(&c->pool, c->device));
    c->workspace_size = o->workspace;
    if (c->workspace_size) {
        CUDA_TRY(cudaMalloc(&c->workspace, c->workspace_size));
        CUBLAS_TRY(cublasSetWorkspace(c->blas, c->workspace, c->workspace_size));
    }
    /* fp32 products stay fp32 unless asked: cuBLAS's default would allow no TF32 either, but
     * say it, since the tests' tolerances depend on it */
    CUBLAS_TRY(cublasSetMathMode(c->blas,
                                 o->allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    c->allow_tf32 = o->allow_tf32;
    return 0;
}

int mood_cuda_ctx_new(mood_cuda_ctx **out, const mood_cuda_options *opts)
{
    mood_cuda_options o;
    int count = 0;
    if (!out)
        return mood_error_set(MOOD_EINVAL, "mood_cuda_ctx_new: out is NULL");
    *out = NULL;
    if (opts)
        o = *opts;
    else
        mood_cuda_options_init(&o);
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        count = 0;
    }
    if (o.device < 0 || o.device >= count)
        return mood_error_set(MOOD_EUNSUPPORTED, "CUDA device %d: %d device%s found", o.device,
                              count, count == 1 ? "" : "s");
    MOOD_TRY(mood__cuda_libs_load());
    mood_cuda_ctx *c = (mood_cuda_ctx *)mood_calloc(1, sizeof *c);
    if (!c)
        return mood_error_nomem();
    c->device = o.device;
    cudaError_t e = cudaSetDevice(c->device);
    int rc = e == cudaSuccess ? ctx_open(c, &o)
                              : mood__cuda_fail(e, "cudaSetDevice", __FILE__, __LINE__);
    if (rc < 0) {
        mood_cuda_ctx_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void mood_cuda_ctx_free(mood_cuda_ctx *ctx)
{
    if (!ctx)
        return;
    cudaSetDevice(ctx->device);
    if (ctx->stream)
        cudaStreamSynchronize(ctx->stream);
    if (ctx->dnn)
        cudnnDestroy(ctx->dnn);
    if (ctx->lt)
        cublasLtDestroy(ctx->lt);
    if (ctx->blas)
        cublasDestroy(ctx->blas);
    if (ctx->workspace)
        cudaFree(ctx->workspace);
    mood__cuda_pool_free_all(ctx->pool);
    if (ctx->stream)
        cudaStreamDestroy(ctx->stream);
    cudaGetLastError(); /* leave no sticky error from the teardown */
    mood_free(ctx);
}

void *mood_cuda_ctx_stream(mood_cuda_ctx *ctx)
{
    return ctx ? (void *)ctx->stream : NULL;
}

int mood_cuda_sync(mood_cuda_ctx *ctx)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_sync"));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    return 0;
}

int mood_cuda_mem_info(mood_cuda_ctx *ctx, size_t *free_bytes, size_t *total_bytes)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_mem_info"));
    CUDA_TRY(cudaSetDevice(ctx->device));
    CUDA_TRY(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}

int mood__cuda_attention_path(mood_cuda_ctx *ctx, int which)
{
    int prev = ctx->attention_path;
    ctx->attention_path = which;
    ctx->config_gen += prev != which; /* CUDA graphs recorded before run the other kernels */
    return prev;
}

size_t mood__cuda_attention_budget(mood_cuda_ctx *ctx, size_t bytes)
{
    size_t prev = ctx->attention_budget;
    ctx->attention_budget = bytes;
    ctx->config_gen += prev != bytes;
    return prev;
}

/* ----- memory ------------------------------------------------------------------------------- */

int mood_cuda_alloc(mood_cuda_ctx *ctx, void **out, size_t bytes)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_alloc"));
    return mood__cuda_pool_alloc(ctx->pool, out, bytes);
}

void mood_cuda_free(mood_cuda_ctx *ctx, void *ptr)
{
    if (ctx && ptr)
        mood__cuda_pool_release(ctx->pool, ptr);
}

int mood_cuda_upload(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_upload"));
    if (!bytes)
        return 0;
    /* from pageable memory the call returns once src has been staged: src may be reused */
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx->stream));
    return 0;
}

int mood_cuda_download(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_download"));
    if (bytes)
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    return 0;
}

int mood_cuda_memset0(mood_cuda_ctx *ctx, void *dst, size_t bytes)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_memset0"));
    if (bytes)
        CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, ctx->stream));
    return 0;
}

int mood_cuda_copy(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_copy"));
    if (bytes)
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
    return 0;
}

void mood_cuda_pool_stats_get(mood_cuda_ctx *ctx, mood_cuda_pool_stats *out)
{
    memset(out, 0, sizeof *out);
    if (ctx)
        mood__cuda_pool_stats(ctx->pool, out);
}

int mood_cuda_pool_trim(mood_cuda_ctx *ctx)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_pool_trim"));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    mood__cuda_pool_trim(ctx->pool);
    return 0;
}
