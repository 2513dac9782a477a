/*
 * cuda_ops_stub.c: the CUDA backend's functions (engine/cuda/cuda_ops.h) in a build without it
 * (MOOD_CUDA=OFF, or no CUDA toolkit): no context can be opened (MOOD_EUNSUPPORTED), so code
 * and tests written against the backend compile and link everywhere and find out at run time.
 */
#include <string.h>

#include "common/common.h"
#include "engine/cuda/cuda_ops.h"

/* The stubs ignore their arguments. */
#pragma GCC diagnostic ignored "-Wunused-parameter"

static int no_cuda(void)
{
    return mood_error_set(MOOD_EUNSUPPORTED, "this build of mood has no CUDA backend (built with "
                                             "MOOD_CUDA=OFF or without the CUDA toolkit)");
}

void mood_cuda_options_init(mood_cuda_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->workspace = (size_t)64 << 20;
}

int mood_cuda_ctx_new(mood_cuda_ctx **out, const mood_cuda_options *opts)
{
    if (out)
        *out = NULL;
    return no_cuda();
}

void mood_cuda_ctx_free(mood_cuda_ctx *ctx)
{
}

void *mood_cuda_ctx_stream(mood_cuda_ctx *ctx)
{
    return NULL;
}

int mood_cuda_sync(mood_cuda_ctx *ctx)
{
    return no_cuda();
}

int mood_cuda_mem_info(mood_cuda_ctx *ctx, size_t *free_bytes, size_t *total_bytes)
{
    return no_cuda();
}

int mood_cuda_alloc(mood_cuda_ctx *ctx, void **out, size_t bytes)
{
    return no_cuda();
}

void mood_cuda_free(mood_cuda_ctx *ctx, void *ptr)
{
}

int mood_cuda_upload(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    return no_cuda();
}

int mood_cuda_download(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    return no_cuda();
}

int mood_cuda_memset0(mood_cuda_ctx *ctx, void *dst, size_t bytes)
{
    return no_cuda();
}

int mood_cuda_copy(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    return no_cuda();
}

int mood_cuda_graph_new(mood_cuda_ctx *ctx, mood_cuda_graph **out)
{
    if (out)
        *out = NULL;
    return no_cuda();
}

int mood_cuda_graph_capture(mood_cuda_graph *g)
{
    return no_cuda();
}

int mood_cuda_graph_finish(mood_cuda_graph *g, int rc)
{
    return rc < 0 ? rc : no_cuda();
}

int mood_cuda_graph_launch(mood_cuda_graph *g)
{
    return no_cuda();
}

int mood_cuda_graph_stale(const mood_cuda_graph *g)
{
    return 0;
}

size_t mood_cuda_graph_bytes(const mood_cuda_graph *g)
{
    return 0;
}

void mood_cuda_graph_free(mood_cuda_graph *g)
{
}

void mood_cuda_pool_stats_get(mood_cuda_ctx *ctx, mood_cuda_pool_stats *out)
{
    memset(out, 0, sizeof *out);
}

int mood_cuda_pool_trim(mood_cuda_ctx *ctx)
{
    return no_cuda();
}

int mood_cuda_op_convert(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                         mood_cuda_dtype in_dt, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, size_t N, int IC, int OC)
{
    return no_cuda();
}

int mood_cuda_op_linear_ex(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                           const void *w, mood_cuda_dtype in_dt, const float *bias, size_t N,
                           int IC, int OC)
{
    return no_cuda();
}

int mood_cuda_op_conv2d(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, const mood_conv2d_dims *d)
{
    return no_cuda();
}

int mood_cuda_op_conv2d_ex(mood_cuda_ctx *ctx, void *out, const void *inp, const void *w,
                           mood_cuda_dtype dt, const float *bias, const mood_conv2d_dims *d)
{
    return no_cuda();
}

int mood_cuda_op_group_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, int B, int C, size_t HW, int groups, float eps,
                            float *mean_out, float *rstd_out)
{
    return no_cuda();
}

int mood_cuda_op_layer_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, size_t N, int C, float eps, float *mean_out,
                            float *rstd_out)
{
    return no_cuda();
}

int mood_cuda_op_silu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_quick_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_geglu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t N, int F)
{
    return no_cuda();
}

int mood_cuda_op_add_inplace(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_div_scalar(mood_cuda_ctx *ctx, float *x, float d, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_add(mood_cuda_ctx *ctx, float *out, const float *a, const float *b, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_axpy(mood_cuda_ctx *ctx, float *y, const float *x, float a, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_add_channel_bias(mood_cuda_ctx *ctx, float *x, const float *v, int B, int C,
                                  size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_attention(mood_cuda_ctx *ctx, float *out, const float *q, const float *k,
                           const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                           float scale)
{
    return no_cuda();
}

int mood_cuda_op_attention_ex(mood_cuda_ctx *ctx, void *out, const void *q, const void *k,
                              const void *v, mood_cuda_dtype dt, int B, int H, int Tq, int Tk,
                              int D, int causal, float scale)
{
    return no_cuda();
}

int mood_cuda_op_nchw_to_nhwc(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_nhwc_to_nchw(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_upsample_nearest2x(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                    int W)
{
    return no_cuda();
}

int mood_cuda_op_upsample_nearest(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                  int W, int OH, int OW)
{
    return no_cuda();
}

int mood_cuda_op_timestep_embedding(mood_cuda_ctx *ctx, float *out, const float *t, int B, int dim,
                                    int flip_sin_to_cos, float shift, float max_period)
{
    return no_cuda();
}

int mood_cuda_op_concat_channels(mood_cuda_ctx *ctx, float *out, const float *a, int Ca,
                                 const float *b, int Cb, int B, size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_lora_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *down,
                             const float *up, int rank, float scale, size_t N, int IC, int OC)
{
    return no_cuda();
}

int mood_cuda_op_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w, size_t N,
                                 int IC, int OC)
{
    return no_cuda();
}

int mood_cuda_op_linear_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, size_t N, int IC, int OC)
{
    return no_cuda();
}

int mood_cuda_op_conv2d_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, const mood_conv2d_dims *d)
{
    return no_cuda();
}

int mood_cuda_op_conv2d_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w,
                                 const mood_conv2d_dims *d)
{
    return no_cuda();
}

int mood_cuda_op_group_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, int B, int C, size_t HW,
                                     int groups)
{
    return no_cuda();
}

int mood_cuda_op_layer_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, size_t N, int C)
{
    return no_cuda();
}

int mood_cuda_op_silu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n)
{
    return no_cuda();
}

int mood_cuda_op_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n)
{
    return no_cuda();
}

int mood_cuda_op_quick_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                     const float *inp, size_t n)
{
    return no_cuda();
}

int mood_cuda_op_geglu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                const float *inp, size_t N, int F)
{
    return no_cuda();
}

int mood_cuda_op_attention_backward(mood_cuda_ctx *ctx, float *dq, float *dk, float *dv,
                                    const float *dout, const float *q, const float *k,
                                    const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                                    float scale)
{
    return no_cuda();
}

int mood_cuda_op_upsample_nearest2x_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                             int BC, int H, int W)
{
    return no_cuda();
}

int mood_cuda_op_upsample_nearest_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                           int BC, int H, int W, int OH, int OW)
{
    return no_cuda();
}

int mood_cuda_op_add_channel_bias_backward(mood_cuda_ctx *ctx, float *dv, const float *dout, int B,
                                           int C, size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_nchw_to_nhwc_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_nhwc_to_nchw_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_concat_channels_backward(mood_cuda_ctx *ctx, float *da, float *db,
                                          const float *dout, int Ca, int Cb, int B, size_t HW)
{
    return no_cuda();
}

int mood_cuda_op_lora_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *ddown, float *dup,
                                      const float *dout, const float *inp, const float *down,
                                      const float *up, int rank, float scale, size_t N, int IC,
                                      int OC)
{
    return no_cuda();
}

int mood_cuda_op_lora_merge(mood_cuda_ctx *ctx, float *w, const float *up, const float *down,
                            int rows, int rank, size_t cols, float scale)
{
    return no_cuda();
}

int mood__cuda_attention_path(mood_cuda_ctx *ctx, int which)
{
    return 0;
}

size_t mood__cuda_attention_budget(mood_cuda_ctx *ctx, size_t bytes)
{
    return 0;
}

size_t mood__cuda_pool_class_size(size_t bytes)
{
    return bytes;
}
