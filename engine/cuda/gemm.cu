/*
 * gemm.cu: the matrix-product layers of the CUDA backend: the row-major GEMM every file uses
 * (cuBLAS), Linear forward through cuBLASLt with the bias in its epilogue (fp32, and bf16/fp16
 * inputs with fp32 accumulation), the Linear and LoRA side-path backward passes, and the LoRA
 * ΔW merge. Mirrors engine/cpu/ops.c and ops_backward.c.
 *
 * cuBLAS is column-major: a row-major (M x N) matrix is its column-major (N x M) transpose, so
 * C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T, B first.
 */
#include "engine/cuda/cuda_internal.h"

static cublasComputeType_t compute_type(const mood_cuda_ctx *ctx, mood_cuda_dtype ab)
{
    return ab == MOOD_CUDA_F32 && ctx->allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                  : CUBLAS_COMPUTE_32F;
}

int mood__cuda_gemm(mood_cuda_ctx *ctx, int ta, int tb, int M, int N, int K, float alpha,
                    const void *A, int lda, long long stride_a, const void *B, int ldb,
                    long long stride_b, mood_cuda_dtype ab, float beta, void *C, int ldc,
                    long long stride_c, mood_cuda_dtype c, int batch)
{
    if (M <= 0 || N <= 0 || batch <= 0)
        return 0;
    if (K <= 0) { /* an empty sum: C = beta C */
        if (beta == 1.0f)
            return 0;
        for (int i = 0; i < batch; i++)
            MOOD_TRY(mood__cuda_scale(ctx, (char *)C + (size_t)i * stride_c * dtype_size(c), c,
                                      beta, (size_t)M, N, ldc));
        return 0;
    }
    cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t tab = mood__cuda_data_type(ab), tc = mood__cuda_data_type(c);
    if (batch == 1)
        CUBLAS_TRY(cublasGemmEx(ctx->blas, opB, opA, N, M, K, &alpha, B, tab, ldb, A, tab, lda,
                                &beta, C, tc, ldc, compute_type(ctx, ab), CUBLAS_GEMM_DEFAULT));
    else
        CUBLAS_TRY(cublasGemmStridedBatchedEx(
            ctx->blas, opB, opA, N, M, K, &alpha, B, tab, ldb, stride_b, A, tab, lda, stride_a,
            &beta, C, tc, ldc, stride_c, batch, compute_type(ctx, ab), CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* ----- Linear forward ----------------------------------------------------------------------- */

/* Largest power of two (up to 256) dividing the address: what cuBLASLt may assume of it. */
static uint32_t alignment_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && a % al)
        al /= 2;
    return al;
}

/* cuBLASLt's descriptors of one product, destroyed with the object. */
struct lt_plan {
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t a = NULL, b = NULL, d = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    ~lt_plan()
    {
        if (pref)
            cublasLtMatmulPreferenceDestroy(pref);
        if (d)
            cublasLtMatrixLayoutDestroy(d);
        if (b)
            cublasLtMatrixLayoutDestroy(b);
        if (a)
            cublasLtMatrixLayoutDestroy(a);
        if (op)
            cublasLtMatmulDescDestroy(op);
    }
};

/* out (N x OC, out_dt) = inp (N x IC) w^T + bias through cuBLASLt. *found is 0 when cuBLASLt
 * has no algorithm for the case (the caller falls back to cublasGemmEx). bias is of out_dt. */
static int linear_lt(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                     const void *w, mood_cuda_dtype in_dt, const void *bias, int N, int IC, int OC,
                     int *found)
{
    lt_plan p;
    cudaDataType_t ti = mood__cuda_data_type(in_dt), to = mood__cuda_data_type(out_dt);
    cublasOperation_t tr = CUBLAS_OP_T, nt = CUBLAS_OP_N;
    *found = 0;
    CUBLAS_TRY(cublasLtMatmulDescCreate(&p.op, compute_type(ctx, in_dt), CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof tr));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt));
    if (bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        int32_t bt = (int32_t)to;
        CUBLAS_TRY(
            cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                  sizeof bias));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                  sizeof bt));
    }
    /* column-major: A = w as (IC x OC) transposed, B = inp as (IC x N), D (OC x N) */
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p.a, ti, IC, OC, IC));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p.b, ti, IC, N, IC));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p.d, to, OC, N, OC));
    CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&p.pref));
    size_t ws = ctx->workspace_size;
    uint32_t al_a = alignment_of(w), al_b = alignment_of(inp), al_d = alignment_of(out);
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
        p.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
        p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
        p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
        p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
        p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d));
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(ctx->lt, p.op, p.a, p.b, p.d, p.d, p.pref, 1, &res, &n);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && n == 0))
        return 0;
    CUBLAS_TRY(s);
    float alpha = 1.0f, beta = 0.0f;
    CUBLAS_TRY(cublasLtMatmul(ctx->lt, p.op, &alpha, w, p.a, inp, p.b, &beta, out, p.d, out, p.d,
                              &res.algo, ctx->workspace, ctx->workspace_size, ctx->stream));
    *found = 1;
    return 0;
}

/* The Linear layer for every type combination: cuBLASLt with the bias fused, or (no cuBLASLt
 * algorithm) cublasGemmEx and a bias kernel. */
static int linear_any(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                      const void *w, mood_cuda_dtype in_dt, const float *bias, size_t N, int IC,
                      int OC, const char *fn)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(mood__cuda_check_int(N, "N", fn));
    if (IC < 0 || OC < 0)
        return mood_error_set(MOOD_EINVAL, "%s: IC %d, OC %d", fn, IC, OC);
    if (N == 0 || OC == 0)
        return 0;
    if (IC == 0) { /* no products: out = bias (or 0) */
        MOOD_TRY(mood_cuda_memset0(ctx, out, N * (size_t)OC * dtype_size(out_dt)));
        return bias ? mood__cuda_add_row_bias(ctx, out, out_dt, bias, N, OC) : 0;
    }
    /* cuBLASLt wants the bias in the output's type */
    pool_tmp bias16(ctx);
    const void *b = bias;
    if (bias && out_dt != MOOD_CUDA_F32) {
        MOOD_TRY(bias16.alloc((size_t)OC * 2));
        MOOD_TRY(mood_cuda_op_convert(ctx, bias16.ptr, out_dt, bias, MOOD_CUDA_F32, (size_t)OC));
        b = bias16.ptr;
    }
    int found = 0;
    MOOD_TRY(linear_lt(ctx, out, out_dt, inp, w, in_dt, b, (int)N, IC, OC, &found));
    if (found)
        return 0;
    MOOD_TRY(mood__cuda_gemm(ctx, 0, 1, (int)N, OC, IC, 1.0f, inp, IC, 0, w, IC, 0, in_dt, 0.0f,
                             out, OC, 0, out_dt, 1));
    return bias ? mood__cuda_add_row_bias(ctx, out, out_dt, bias, N, OC) : 0;
}

int mood_cuda_op_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, size_t N, int IC, int OC)
{
    return linear_any(ctx, out, MOOD_CUDA_F32, inp, w, MOOD_CUDA_F32, bias, N, IC, OC,
                      "mood_cuda_op_linear");
}

int mood_cuda_op_linear_ex(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                           const void *w, mood_cuda_dtype in_dt, const float *bias, size_t N,
                           int IC, int OC)
{
    if (out_dt != MOOD_CUDA_F32 && out_dt != in_dt)
        return mood_error_set(MOOD_EINVAL,
                              "mood_cuda_op_linear_ex: output %s for %s inputs (f32 or the "
                              "inputs' type)",
                              mood__cuda_dtype_name(out_dt), mood__cuda_dtype_name(in_dt));
    return linear_any(ctx, out, out_dt, inp, w, in_dt, bias, N, IC, OC, "mood_cuda_op_linear_ex");
}

/* ----- LoRA side path ----------------------------------------------------------------------- */

int mood_cuda_op_lora_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *down,
                             const float *up, int rank, float scale, size_t N, int IC, int OC)
{
    MOOD_TRY(mood__cuda_check_ctx(ctx, "mood_cuda_op_lora_linear"));
    MOOD_TRY(mood__cuda_check_int(N, "N", "mood_cuda_op_lora_linear"));
    if (N == 0 || rank <= 0 || OC <= 0)
        return 0;
    pool_tmp tmp(ctx);
    MOOD_TRY(tmp.alloc(N * (size_t)rank * sizeof(float)));
    int n = (int)N;
    MOOD_TRY(mood__cuda_gemm(ctx, 0, 1, n, rank, IC, 1.0f, inp, IC, 0, down, IC, 0, MOOD_CUDA_F32,
                             0.0f, tmp.ptr, rank, 0, MOOD_CUDA_F32, 1));
    return mood__cuda_gemm(ctx, 0, 1, n, OC, rank, scale, tmp.ptr, rank, 0, up, rank, 0,
                           MOOD_CUDA_F32, 1.0f, out, OC, 0, MOOD_CUDA_F32, 1);
}

/* ----- backward ----------------------------------------------------------------------------- */

/* y = x w^T + b: dinp += dout w, dw += dout^T inp, dbias += dout summed over rows. */
int mood_cuda_op_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w, size_t N,
                                 int IC, int OC)
{
    const char *fn = "mood_cuda_op_linear_backward";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(mood__cuda_check_int(N, "N", fn));
    if (N == 0 || IC <= 0 || OC <= 0)
        return 0;
    int n = (int)N;
    if (dinp)
        MOOD_TRY(mood__cuda_gemm(ctx, 0, 0, n, IC, OC, 1.0f, dout, OC, 0, w, IC, 0, MOOD_CUDA_F32,
                                 1.0f, dinp, IC, 0, MOOD_CUDA_F32, 1));
    if (dw)
        MOOD_TRY(mood__cuda_gemm(ctx, 1, 0, OC, IC, n, 1.0f, dout, OC, 0, inp, IC, 0, MOOD_CUDA_F32,
                                 1.0f, dw, IC, 0, MOOD_CUDA_F32, 1));
    if (dbias)
        MOOD_TRY(mood__cuda_column_sums(ctx, dbias, dout, N, OC));
    return 0;
}

/* The input gradient of mood_cuda_op_linear_ex: dinp += dout w with dout rounded to dt, w of dt,
 * fp32 accumulation into dinp. */
int mood_cuda_op_linear_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, size_t N, int IC, int OC)
{
    const char *fn = "mood_cuda_op_linear_backward_ex";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(mood__cuda_check_int(N, "N", fn));
    if (dt != MOOD_CUDA_BF16 && dt != MOOD_CUDA_F16)
        return mood_error_set(MOOD_EINVAL, "%s: weights of %s (bf16 or fp16)", fn,
                              mood__cuda_dtype_name(dt));
    if (!dinp || N == 0 || IC <= 0 || OC <= 0)
        return 0;
    int n = (int)N;
    pool_tmp d16(ctx);
    MOOD_TRY(d16.alloc(N * (size_t)OC * dtype_size(dt)));
    MOOD_TRY(mood_cuda_op_convert(ctx, d16.ptr, dt, dout, MOOD_CUDA_F32, N * (size_t)OC));
    return mood__cuda_gemm(ctx, 0, 0, n, IC, OC, 1.0f, d16.ptr, OC, 0, w, IC, 0, dt, 1.0f, dinp, IC,
                           0, MOOD_CUDA_F32, 1);
}

/* out += scale (inp down^T) up^T; with tmp = inp down^T and dtmp = scale dout up:
 * dup += scale dout^T tmp, ddown += dtmp^T inp, dinp += dtmp down. */
int mood_cuda_op_lora_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *ddown, float *dup,
                                      const float *dout, const float *inp, const float *down,
                                      const float *up, int rank, float scale, size_t N, int IC,
                                      int OC)
{
    const char *fn = "mood_cuda_op_lora_linear_backward";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(mood__cuda_check_int(N, "N", fn));
    if (N == 0 || rank <= 0 || IC <= 0 || OC <= 0)
        return 0;
    const mood_cuda_dtype f = MOOD_CUDA_F32;
    int n = (int)N;
    pool_tmp tmp(ctx);
    MOOD_TRY(tmp.alloc(N * (size_t)rank * sizeof(float)));
    if (dup) {
        MOOD_TRY(mood__cuda_gemm(ctx, 0, 1, n, rank, IC, 1.0f, inp, IC, 0, down, IC, 0, f, 0.0f,
                                 tmp.ptr, rank, 0, f, 1));
        MOOD_TRY(mood__cuda_gemm(ctx, 1, 0, OC, rank, n, scale, dout, OC, 0, tmp.ptr, rank, 0, f,
                                 1.0f, dup, rank, 0, f, 1));
    }
    if (!ddown && !dinp)
        return 0;
    float *dtmp = tmp.f(); /* tmp is free again: reuse it for dtmp */
    MOOD_TRY(mood__cuda_gemm(ctx, 0, 0, n, rank, OC, scale, dout, OC, 0, up, rank, 0, f, 0.0f, dtmp,
                             rank, 0, f, 1));
    if (ddown)
        MOOD_TRY(mood__cuda_gemm(ctx, 1, 0, rank, IC, n, 1.0f, dtmp, rank, 0, inp, IC, 0, f, 1.0f,
                                 ddown, IC, 0, f, 1));
    if (dinp)
        MOOD_TRY(mood__cuda_gemm(ctx, 0, 0, n, IC, rank, 1.0f, dtmp, rank, 0, down, IC, 0, f, 1.0f,
                                 dinp, IC, 0, f, 1));
    return 0;
}

/* ----- LoRA merge --------------------------------------------------------------------------- */

int mood_cuda_op_lora_merge(mood_cuda_ctx *ctx, float *w, const float *up, const float *down,
                            int rows, int rank, size_t cols, float scale)
{
    const char *fn = "mood_cuda_op_lora_merge";
    MOOD_TRY(mood__cuda_check_ctx(ctx, fn));
    MOOD_TRY(mood__cuda_check_int(cols, "cols", fn));
    if (rows <= 0 || cols == 0 || rank <= 0)
        return 0;
    return mood__cuda_gemm(ctx, 0, 0, rows, (int)cols, rank, scale, up, rank, 0, down, (int)cols, 0,
                           MOOD_CUDA_F32, 1.0f, w, (int)cols, 0, MOOD_CUDA_F32, 1);
}
