/*
 * cuda_ops.h: the CUDA backend's layer functions (internal to libmood), one for each function of
 * the CPU backend (engine/cpu/ops.h, the readable reference) with the same name after
 * `mood_cuda_op_` and the same semantics, layouts and argument order, so that each kernel is
 * checked against its CPU twin (tests/unit/test_cuda_ops.c). This header holds no CUDA types:
 * streams are void *, device buffers plain pointers, so C code can call the backend.
 *
 * Differences from the CPU functions:
 *   - Every function takes the context first (device, stream, cuBLAS/cuDNN handles, workspace,
 *     memory pool) and returns 0 or a negative MOOD_E* code with mood_error_last() naming the
 *     CUDA, cuBLAS or cuDNN error. Work is queued on the context's stream: an error raised while a
 *     kernel runs shows up at the next call that waits for the stream (mood_cuda_sync,
 *     mood_cuda_download).
 *   - Pointers to tensors are device pointers. Scalars (sizes, eps, scale) are host values;
 *     the timesteps of mood_cuda_op_timestep_embedding are a device array, as on the CPU side.
 *   - No scratch arguments: temporaries come from the context's pool.
 *   - The _ex variants take 16-bit inputs (bf16 or fp16) and accumulate in fp32.
 *   - Backward functions ADD to their gradients, as on the CPU; NULL skips a gradient.
 *
 * Floating-point results match the CPU within rounding, not bit for bit. fp32 products run in
 * true fp32 (no TF32) unless the context allows TF32. Results are deterministic: the same
 * inputs on the same GPU give the same bits (no atomics in reductions; cuDNN algorithms are
 * picked among the deterministic ones).
 *
 * A context belongs to one thread at a time.
 */
#ifndef MOOD_ENGINE_CUDA_CUDA_OPS_H
#define MOOD_ENGINE_CUDA_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "engine/cpu/ops.h" /* mood_conv2d_dims, mood_op_conv2d_out_h/w */

/* ----- context and memory ------------------------------------------------------------------- */

typedef struct mood_cuda_ctx mood_cuda_ctx;

/* Element types of device tensors. */
typedef enum mood_cuda_dtype {
    MOOD_CUDA_F32 = 0,
    MOOD_CUDA_BF16 = 1,
    MOOD_CUDA_F16 = 2
} mood_cuda_dtype;

typedef struct mood_cuda_options {
    int device;       /* CUDA device ordinal (0) */
    size_t workspace; /* bytes of workspace shared by cuBLAS(Lt) and cuDNN (64 MiB) */
    int allow_tf32;   /* fp32 matrix products and convolutions on TF32 tensor cores (0) */
} mood_cuda_options;

void mood_cuda_options_init(mood_cuda_options *opts);
/* Opens a context on opts->device (opts NULL: defaults). MOOD_EUNSUPPORTED when the backend is
 * not compiled or there is no such device. */
int mood_cuda_ctx_new(mood_cuda_ctx **out, const mood_cuda_options *opts);
/* Waits for the stream, frees the pool and the handles. NULL is a no-op. */
void mood_cuda_ctx_free(mood_cuda_ctx *ctx);
/* The context's cudaStream_t. */
void *mood_cuda_ctx_stream(mood_cuda_ctx *ctx);
/* Waits until the queued work is done; reports an error a kernel raised. */
int mood_cuda_sync(mood_cuda_ctx *ctx);
/* The device's free and total memory in bytes (cudaMemGetInfo; the pool's cached blocks count as
 * used). */
int mood_cuda_mem_info(mood_cuda_ctx *ctx, size_t *free_bytes, size_t *total_bytes);

/* Device memory from the context's pool (size classes, cached after free: no cudaMalloc in
 * steady state). Blocks are 256-byte aligned. mood_cuda_free(ctx, NULL) is a no-op. A freed
 * block may be handed out again at once: that is safe because all work runs on the context's
 * stream, in order. */
int mood_cuda_alloc(mood_cuda_ctx *ctx, void **out, size_t bytes);
void mood_cuda_free(mood_cuda_ctx *ctx, void *ptr);
/* Host <-> device copies on the stream. upload returns once src may be reused; download once
 * dst holds the data. */
int mood_cuda_upload(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes);
int mood_cuda_download(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes);
int mood_cuda_memset0(mood_cuda_ctx *ctx, void *dst, size_t bytes);
/* Device-to-device copy on the stream (queued; returns at once). */
int mood_cuda_copy(mood_cuda_ctx *ctx, void *dst, const void *src, size_t bytes);

typedef struct mood_cuda_pool_stats {
    size_t in_use;          /* bytes handed out (rounded to their size class) */
    size_t cached;          /* bytes held for reuse */
    size_t peak;            /* largest in_use + cached so far */
    uint64_t device_allocs; /* cudaMalloc calls so far */
    uint64_t hits;          /* allocations served from the cache */
} mood_cuda_pool_stats;
void mood_cuda_pool_stats_get(mood_cuda_ctx *ctx, mood_cuda_pool_stats *out);
/* Returns every cached block to the driver (after waiting for the stream). */
int mood_cuda_pool_trim(mood_cuda_ctx *ctx);

/* Element conversion: out (n of out_dt) = inp (n of in_dt), round to nearest even. */
int mood_cuda_op_convert(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                         mood_cuda_dtype in_dt, size_t n);

/* ----- CUDA graphs (graph.cu) --------------------------------------------------------------- *
 *
 * A graph records the work a piece of code queues on the context's stream and replays it with
 * one launch (no per-kernel launch cost). Pointers, sizes and scalars are baked into the graph,
 * so a replay reads and writes exactly the buffers the recorded run did:
 *   - every block the context's pool hands out between mood_cuda_graph_new and
 *     mood_cuda_graph_finish (temporaries of the layer functions included) is RESERVED for the
 *     graph: a block the recorded code frees goes back to the graph's own list (handed out again
 *     only to that code), never to the pool's shared lists, and all of them return to the pool
 *     only in mood_cuda_graph_free. So no other code is handed (and writes into) a block the
 *     graph uses between its replays; the reserved bytes count as in use in the pool's stats;
 *   - the caller copies its inputs into reserved blocks before each launch and its output out of
 *     one after (mood_cuda_copy), all in stream order.
 * Recording: mood_cuda_graph_new (reservation starts: allocate the graph's own input and output
 * buffers now), mood_cuda_graph_capture (capture starts; nothing queued from here runs), the code
 * to record, mood_cuda_graph_finish (capture and reservation end; the graph is instantiated).
 * The recorded code must only queue work on the stream: no waiting (mood_cuda_sync, download),
 * no host <-> device copies. cuBLAS and cuDNN run on the context's fixed workspace (pool blocks
 * when a convolution needs more, reserved like the rest); a pool block the driver must supply
 * during the capture comes from cudaMalloc in relaxed capture mode, for that call only.
 * Run the code once uncaptured first (a warm-up): the pool then holds its blocks, the libraries
 * have chosen their algorithms and every kernel is loaded. A graph replays on the context's one
 * stream, in order with everything else; a graph belongs to the context's thread. */
typedef struct mood_cuda_graph mood_cuda_graph;

/* Starts a graph and the reservation of the pool blocks handed out from now on. One graph at a
 * time per context records (MOOD_EINVAL while another one does). */
int mood_cuda_graph_new(mood_cuda_ctx *ctx, mood_cuda_graph **out);
/* Starts capturing the stream (cudaStreamCaptureModeThreadLocal: a call of this thread that is
 * unsafe during a capture fails, which ends in a failed capture rather than a wrong graph; other
 * threads' contexts are not disturbed). */
int mood_cuda_graph_capture(mood_cuda_graph *g);
/* Ends the capture and the reservation and, when rc is 0 (the recorded code succeeded),
 * instantiates the graph. Returns rc when it is negative, else 0 or the capture's or
 * instantiation's error. However it ends, the stream is no longer capturing and no CUDA error is
 * left pending; after a failure g cannot be launched (only freed). */
int mood_cuda_graph_finish(mood_cuda_graph *g, int rc);
/* Queues one replay on the stream (returns at once). */
int mood_cuda_graph_launch(mood_cuda_graph *g);
/* 1 when a setting of the context that decides which kernels run (mood__cuda_attention_path,
 * mood__cuda_attention_budget) changed since the capture: the graph no longer does what the code
 * would; record it again. */
int mood_cuda_graph_stale(const mood_cuda_graph *g);
/* Bytes of pool blocks reserved for g (their size classes). */
size_t mood_cuda_graph_bytes(const mood_cuda_graph *g);
/* Waits for the stream (a pending replay finishes), destroys the graph and returns its reserved
 * blocks to the pool. NULL is a no-op. */
void mood_cuda_graph_free(mood_cuda_graph *g);

/* ----- forward ------------------------------------------------------------------------------ */

/* out (N x OC) = inp (N x IC) · w^T + bias; w (OC x IC); bias may be NULL. cuBLASLt, the bias
 * in its epilogue. */
int mood_cuda_op_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, size_t N, int IC, int OC);
/* The same with inp and w of in_dt (bf16 or fp16; F32 is mood_cuda_op_linear), fp32
 * accumulation, out of out_dt (F32, or in_dt); bias float32 (NULL: none). */
int mood_cuda_op_linear_ex(mood_cuda_ctx *ctx, void *out, mood_cuda_dtype out_dt, const void *inp,
                           const void *w, mood_cuda_dtype in_dt, const float *bias, size_t N,
                           int IC, int OC);

/* out (B x OC x OH x OW) = conv2d(inp (B x IC x H x W), w (OC x IC x k x k)) + bias, NCHW,
 * cuDNN; bias may be NULL. */
int mood_cuda_op_conv2d(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                        const float *bias, const mood_conv2d_dims *d);
/* The same with inp, w and out of dt (bf16 or fp16; fp32 accumulation), bias float32. */
int mood_cuda_op_conv2d_ex(mood_cuda_ctx *ctx, void *out, const void *inp, const void *w,
                           mood_cuda_dtype dt, const float *bias, const mood_conv2d_dims *d);

/* GroupNorm (B x C x HW), `groups` groups; out may alias inp; w, b, mean_out, rstd_out
 * (B x groups) may be NULL. */
int mood_cuda_op_group_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, int B, int C, size_t HW, int groups, float eps,
                            float *mean_out, float *rstd_out);
/* LayerNorm over the last dimension of (N x C); out may alias inp. */
int mood_cuda_op_layer_norm(mood_cuda_ctx *ctx, float *out, const float *inp, const float *w,
                            const float *b, size_t N, int C, float eps, float *mean_out,
                            float *rstd_out);

/* Elementwise over n floats; out may alias inp. */
int mood_cuda_op_silu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n);
int mood_cuda_op_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n);
int mood_cuda_op_quick_gelu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n);
/* inp (N x 2F) = [a | gate] per row -> out (N x F) = a * gelu(gate). */
int mood_cuda_op_geglu(mood_cuda_ctx *ctx, float *out, const float *inp, size_t N, int F);

int mood_cuda_op_add_inplace(mood_cuda_ctx *ctx, float *out, const float *inp, size_t n);
int mood_cuda_op_add(mood_cuda_ctx *ctx, float *out, const float *a, const float *b, size_t n);
/* x[i] /= d for i < n (a resnet's output_scale_factor, divided as diffusers and the CPU do). */
int mood_cuda_op_div_scalar(mood_cuda_ctx *ctx, float *x, float d, size_t n);
/* y[i] += a · x[i] for i < n (a side path's scaled output; the CPU twin is the UNet passes'
 * axpy, engine/unet_pass.h, over cblas_saxpy). */
int mood_cuda_op_axpy(mood_cuda_ctx *ctx, float *y, const float *x, float a, size_t n);
/* x (B x C x HW) += v (B x C) broadcast over HW. */
int mood_cuda_op_add_channel_bias(mood_cuda_ctx *ctx, float *x, const float *v, int B, int C,
                                  size_t HW);

/* softmax(q k^T · scale) v per sample and head; q (B x Tq x H*D), k, v (B x Tk x H*D), out
 * (B x Tq x H*D); causal needs Tq == Tk; scale 0 means 1/sqrt(D). */
int mood_cuda_op_attention(mood_cuda_ctx *ctx, float *out, const float *q, const float *k,
                           const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                           float scale);
/* The same with q, k, v and out of dt (bf16 or fp16); fp32 softmax and accumulation. */
int mood_cuda_op_attention_ex(mood_cuda_ctx *ctx, void *out, const void *q, const void *k,
                              const void *v, mood_cuda_dtype dt, int B, int H, int Tq, int Tk,
                              int D, int causal, float scale);

int mood_cuda_op_nchw_to_nhwc(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW);
int mood_cuda_op_nhwc_to_nchw(mood_cuda_ctx *ctx, float *out, const float *inp, int B, int C,
                              size_t HW);
/* inp (BC x H x W) -> out (BC x 2H x 2W). */
int mood_cuda_op_upsample_nearest2x(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                    int W);
/* inp (BC x H x W) -> out (BC x OH x OW), nearest as torch's interpolate(size=(OH, OW)): source
 * row min(floor(oy * (H / OH)), H - 1) with the ratio in float32 (columns alike); the UNet's
 * upsamplers when a size is odd (mood__unet_upsample, engine/unet_pass.h, is the CPU twin). */
int mood_cuda_op_upsample_nearest(mood_cuda_ctx *ctx, float *out, const float *inp, int BC, int H,
                                  int W, int OH, int OW);
/* out (B x dim) from t (B, device); as mood_op_timestep_embedding. */
int mood_cuda_op_timestep_embedding(mood_cuda_ctx *ctx, float *out, const float *t, int B, int dim,
                                    int flip_sin_to_cos, float shift, float max_period);
/* out (B x (Ca + Cb) x HW) = [a | b]. */
int mood_cuda_op_concat_channels(mood_cuda_ctx *ctx, float *out, const float *a, int Ca,
                                 const float *b, int Cb, int B, size_t HW);
/* out (N x OC) += scale · (inp (N x IC) · down^T) · up^T; down (rank x IC), up (OC x rank). */
int mood_cuda_op_lora_linear(mood_cuda_ctx *ctx, float *out, const float *inp, const float *down,
                             const float *up, int rank, float scale, size_t N, int IC, int OC);

/* ----- backward (gradients are ADDED; NULL: not wanted) ------------------------------------- */

int mood_cuda_op_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w, size_t N,
                                 int IC, int OC);
int mood_cuda_op_conv2d_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w,
                                 const mood_conv2d_dims *d);
/* The input gradients of the _ex layers (bf16 training: the frozen weights w of dt, bf16 or
 * fp16): dinp (fp32) += dout (fp32, rounded to dt for the product) through w, with fp32
 * accumulation. The convolution's comes out of cuDNN in dt and is rounded there once before it
 * is added (as torch's autocast gives a bf16 convolution's input gradient in bf16). */
int mood_cuda_op_linear_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, size_t N, int IC, int OC);
int mood_cuda_op_conv2d_backward_ex(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                    const void *w, mood_cuda_dtype dt, const mood_conv2d_dims *d);
int mood_cuda_op_group_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, int B, int C, size_t HW,
                                     int groups);
int mood_cuda_op_layer_norm_backward(mood_cuda_ctx *ctx, float *dinp, float *dw, float *db,
                                     const float *dout, const float *inp, const float *w,
                                     const float *mean, const float *rstd, size_t N, int C);
int mood_cuda_op_silu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n);
int mood_cuda_op_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, const float *inp,
                               size_t n);
int mood_cuda_op_quick_gelu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                     const float *inp, size_t n);
int mood_cuda_op_geglu_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                const float *inp, size_t N, int F);
/* Recomputes the softmax from q and k. */
int mood_cuda_op_attention_backward(mood_cuda_ctx *ctx, float *dq, float *dk, float *dv,
                                    const float *dout, const float *q, const float *k,
                                    const float *v, int B, int H, int Tq, int Tk, int D, int causal,
                                    float scale);
int mood_cuda_op_upsample_nearest2x_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                             int BC, int H, int W);
/* The backward of mood_cuda_op_upsample_nearest: dinp (BC x H x W) += the sum of dout
 * (BC x OH x OW) over each input pixel's copies, added in the CPU twin's order (the UNet
 * backward's mood__unet_upsample_backward, engine/unet_pass.h, for sizes other than 2x). */
int mood_cuda_op_upsample_nearest_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout,
                                           int BC, int H, int W, int OH, int OW);
int mood_cuda_op_add_channel_bias_backward(mood_cuda_ctx *ctx, float *dv, const float *dout, int B,
                                           int C, size_t HW);
int mood_cuda_op_nchw_to_nhwc_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW);
int mood_cuda_op_nhwc_to_nchw_backward(mood_cuda_ctx *ctx, float *dinp, const float *dout, int B,
                                       int C, size_t HW);
int mood_cuda_op_concat_channels_backward(mood_cuda_ctx *ctx, float *da, float *db,
                                          const float *dout, int Ca, int Cb, int B, size_t HW);
int mood_cuda_op_lora_linear_backward(mood_cuda_ctx *ctx, float *dinp, float *ddown, float *dup,
                                      const float *dout, const float *inp, const float *down,
                                      const float *up, int rank, float scale, size_t N, int IC,
                                      int OC);

/* ----- LoRA merge --------------------------------------------------------------------------- */

/* w (rows x cols) += scale · up (rows x rank) · down (rank x cols): a low-rank LoRA's ΔW merged
 * into a Linear weight (rows = out, cols = in) or a convolution's (cols = in * kh * kw, up the
 * 1x1 factor). */
int mood_cuda_op_lora_merge(mood_cuda_ctx *ctx, float *w, const float *up, const float *down,
                            int rows, int rank, size_t cols, float scale);

/* ----- for tests ---------------------------------------------------------------------------- */

/* Which attention kernel mood_cuda_op_attention(_ex) runs: 0 chooses (fp32: the flash kernel
 * where the head size allows; 16-bit types and larger heads: the GEMM path), 1 the flash kernel
 * (head sizes up to MOOD_CUDA_FLASH_MAX_D), 2 cuBLAS products with a materialised softmax.
 * Returns the previous setting. */
#define MOOD_CUDA_FLASH_MAX_D 160
int mood__cuda_attention_path(mood_cuda_ctx *ctx, int which);
/* Bytes of score buffers the GEMM path and the backward pass may hold at once (they work on
 * blocks of query rows that fit; 0: the default, 256 MiB). Returns the previous setting. */
size_t mood__cuda_attention_budget(mood_cuda_ctx *ctx, size_t bytes);
/* The bytes the memory pool reserves for a request of `bytes` (its size class). */
size_t mood__cuda_pool_class_size(size_t bytes);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_ENGINE_CUDA_CUDA_OPS_H */
