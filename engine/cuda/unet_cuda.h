/*
 * unet_cuda.h: the UNet2DConditionModel forward pass on the GPU, for inference and (fp32 or bf16,
 * side paths) training (internal to libmood; no CUDA types, so C code calls it). It runs the model
 * a CPU mood_unet holds (loaded by mood_unet_load: SD1.x, SD2.x, SDXL and every configuration
 * mood/unet.h accepts) with the CUDA backend's layer functions (engine/cuda/cuda_ops.h), layer for
 * layer as the CPU forward (engine/unet_forward.c), with the same inputs, output and layout.
 *
 * The model's weights are uploaded once (mood_cuda_unet_new) and stay on the device; the CPU
 * model's layer descriptors are read at every forward, so the CPU model must outlive the GPU one
 * and its configuration must not change. After editing the CPU weights (a merged LoRA:
 * mood_unet_weight), mood_cuda_unet_reload copies them again.
 *
 * Precision (mood_cuda_unet_options.dtype):
 *   - MOOD_CUDA_F32: every weight and activation in float32, products in true fp32 unless the
 *     context allows TF32; the output matches the CPU forward within rounding.
 *   - MOOD_CUDA_BF16 / MOOD_CUDA_F16: the Linear and Conv2d weights are stored in that type (half
 *     the memory) and the products take 16-bit inputs on the tensor cores, accumulating in fp32;
 *     the residual stream, normalisations, activations, biases and the time embedding's inputs
 *     stay fp32 between layers (a layer's input is rounded to 16 bits just before its product),
 *     and attention runs on 16-bit q, k, v with an fp32 softmax.
 *
 * Runtime side paths (mood_unet_set_side_paths, mood_side_path in mood/core.h: LoRA run beside
 * the weights, and dense ΔW paths) run on the GPU as the CPU forward runs them, on every Linear
 * and Conv2d layer. Their factors are copied to the device in float32 whatever the dtype (small
 * beside the weights; a 16-bit copy would round a trained LoRA's small updates away; training
 * needs fp32 factors), and in 16-bit mode each path reads its layer's input as the layer's
 * product does (rounded to 16 bits), with fp32 products, added to the layer's fp32 output before
 * any rounding of it. How the GPU copy follows the CPU model's paths:
 *   - mood_unet_set_side_paths (another set, other scales or ranks, none) is seen by the next
 *     forward, which lays the factors out and copies them again (the model's side_gen moved);
 *   - factor VALUES changed in place behind the same pointers (a trainer's optimizer step) are
 *     not seen: call mood_cuda_unet_reload_side_paths, which copies them again (mood_generate
 *     does so at the start of every generation).
 *
 * Not yet on the GPU (MOOD_EUNSUPPORTED, named): center_input_sample (no SD release uses it).
 *
 * Training (fp32 or bf16, the full tape, side paths' and context's gradients):
 * mood_cuda_unet_forward_train and mood_cuda_unet_backward, below.
 *
 * A mood_cuda_unet belongs to its context's thread; activations come from the context's memory
 * pool, so repeated forwards of one size allocate nothing after the first.
 *
 * CUDA graphs (the inference forward only; the training passes are never captured). A sampler
 * calls the UNet 20-50 times per image with the same shape; launching the forward's thousands
 * of kernels one by one costs host time the GPU may wait on. So, per shape (B, H, W, ctx_len and
 * whether SDXL conditioning is used), the forward's kernel sequence is recorded into a CUDA
 * graph (engine/cuda/cuda_ops.h, "CUDA graphs") and replayed with one launch:
 *   - the first forward of a shape runs normally (a warm-up: the pool then holds its blocks,
 *     cuBLAS / cuDNN have chosen their algorithms, the kernels are loaded); the second records
 *     the graph and launches it; later ones launch it. Each launch copies the inputs into the
 *     graph's own device buffers first and the output out of its own buffer after (in stream
 *     order, device to device), so the caller's buffers may differ from call to call;
 *   - every device block the recorded forward uses is reserved for its graph until the graph is
 *     dropped: about one forward's working set per shape held. At most MOOD_CUDA_UNET_GRAPHS
 *     shapes are kept; a new shape beyond that evicts the least recently used;
 *   - a replay computes what the normal forward would, bit for bit: the same kernels on the same
 *     data (the weights and the side paths' factors are read from device memory at each replay,
 *     so mood_cuda_unet_reload_side_paths with unchanged paths keeps the graphs);
 *   - the graphs are dropped (recorded again when the shape comes back) by mood_cuda_unet_reload
 *     (simplest rule: any weight change), by side paths laid out again (mood_unet_set_side_paths
 *     seen at the next forward: their addresses and scales are baked into the graphs), by a change
 *     of the context's attention settings, and by mood_cuda_unet_set_graphs(u, 0),
 *     mood_cuda_unet_drop_graphs and mood_cuda_unet_free;
 *   - a failed capture, instantiation or launch never fails the forward: the capture is ended,
 *     the error cleared, graphs are turned off for this model for good (the failure is kept:
 *     mood_cuda_unet_graph_stats_get) and the forward runs normally.
 * Turned off by mood_cuda_unet_options.no_graphs, by MOOD_CUDA_GRAPHS=0 in the environment (read
 * by mood_cuda_unet_new) or by mood_cuda_unet_set_graphs; results are identical either way.
 */
#ifndef MOOD_ENGINE_CUDA_UNET_CUDA_H
#define MOOD_ENGINE_CUDA_UNET_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "engine/cuda/cuda_ops.h"
#include "mood/unet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mood_cuda_unet mood_cuda_unet;

typedef struct mood_cuda_unet_options {
    /* The type of the Linear and Conv2d weights on the device and of their products' inputs:
     * MOOD_CUDA_F32 (default), MOOD_CUDA_BF16 or MOOD_CUDA_F16. Norms and biases are fp32. */
    mood_cuda_dtype dtype;
    /* 1: never record the forward into CUDA graphs (above); MOOD_CUDA_GRAPHS=0 does the same. */
    int no_graphs;
} mood_cuda_unet_options;

/* Shapes whose CUDA graph a mood_cuda_unet keeps at once. */
#define MOOD_CUDA_UNET_GRAPHS 4

void mood_cuda_unet_options_init(mood_cuda_unet_options *opts);

/* Uploads m's weights and side paths' factors to ctx's device (opts NULL: defaults). ctx and m are
 * borrowed: both must outlive the result. Errors: MOOD_EINVAL (arguments, an unknown dtype),
 * MOOD_EUNSUPPORTED (a configuration the GPU forward does not run, named; a build without the CUDA
 * backend), MOOD_ENOMEM (device memory), MOOD_EBACKEND. */
int mood_cuda_unet_new(mood_cuda_unet **out, mood_cuda_ctx *ctx, const mood_unet *m,
                       const mood_cuda_unet_options *opts);
/* Returns the weights' device memory to the context's pool. NULL is a no-op. */
void mood_cuda_unet_free(mood_cuda_unet *u);

/* Copies the CPU model's weight `name` (a diffusers state-dict name, mood_unet_weight) to the
 * device again, or every weight when name is NULL, after the caller changed them (merged LoRA
 * deltas). Returns once the host data may change again. Errors: MOOD_ENOTFOUND (unknown name),
 * MOOD_EBACKEND. */
int mood_cuda_unet_reload(mood_cuda_unet *u, const char *name);

/* Copies the CPU model's side paths' factors to the device again (laying them out first when the
 * paths were set again since the last copy), after the caller changed their values in place.
 * Returns once the host factors may change again. The same copy happens by itself at the forward
 * after a mood_unet_set_side_paths call. Errors: MOOD_EINVAL (u NULL), MOOD_ENOMEM (device
 * memory), MOOD_EBACKEND; after a failure the next forward copies them again. */
int mood_cuda_unet_reload_side_paths(mood_cuda_unet *u);

/* Device bytes the weights and the side paths' factors take. */
size_t mood_cuda_unet_bytes(const mood_cuda_unet *u);

/* The UNet on B samples, as mood_unet_forward (mood/unet.h): same arguments, layout and output,
 * all buffers in HOST memory: out, x (B x channels x H x W, NCHW float32), timesteps (B),
 * context (B x ctx_len x cross_attention_dim), and for SDXL's "text_time" text_embeds and
 * time_ids (else NULL). Inputs are uploaded, the output downloaded; returns when out holds the
 * result. Side paths set on the CPU model since the last forward are copied first (above).
 * Errors: MOOD_EINVAL (sizes, missing SDXL conditioning), MOOD_ENOMEM, MOOD_EBACKEND. */
int mood_cuda_unet_forward(mood_cuda_unet *u, float *out, const float *x, const float *timesteps,
                           const float *context, int B, int H, int W, int ctx_len,
                           const float *text_embeds, const float *time_ids);

/* The same with every buffer in DEVICE memory (float32): the work is queued on the context's
 * stream and the call returns without waiting (mood_cuda_sync waits and reports an error raised
 * while it ran; only a copy of newly set side paths, and dropping graphs, wait). out must not
 * overlap the inputs. For a sampler that keeps its latents on the GPU. */
int mood_cuda_unet_forward_dev(mood_cuda_unet *u, float *out, const float *x,
                               const float *timesteps, const float *context, int B, int H, int W,
                               int ctx_len, const float *text_embeds, const float *time_ids);

/* The CUDA graphs of the forward (above). */
typedef struct mood_cuda_unet_graph_stats {
    int enabled;     /* graphs in use: not turned off and no failure */
    int failed;      /* 0, or the MOOD_E* code of the capture or launch that turned them off */
    char error[256]; /* that failure's message */
    int cached;      /* shapes with a recorded graph now */
    uint64_t captures, replays; /* graphs recorded, forwards run by a graph launch, so far */
    size_t bytes;               /* device bytes reserved for the graphs now (pool size classes) */
} mood_cuda_unet_graph_stats;
void mood_cuda_unet_graph_stats_get(const mood_cuda_unet *u, mood_cuda_unet_graph_stats *out);
/* Turns the graphs on (1) or off (0; the graphs held are dropped); returns the previous
 * setting. A failure's turning off stays (stats.failed). */
int mood_cuda_unet_set_graphs(mood_cuda_unet *u, int on);
/* Drops the graphs held, returning their reserved device memory to the pool (before work that
 * needs it, such as the VAE decode after sampling); they are recorded again as needed. */
void mood_cuda_unet_drop_graphs(mood_cuda_unet *u);

/* Floating-point operations of the last forward's products (Linear, Conv2d and attention's two
 * products, 2 per multiply-add), for benchmarks. */
double mood_cuda_unet_flop(const mood_cuda_unet *u);

/* ----- training: forward with a tape, backward into the side paths' factors ------------------
 *
 * The GPU twins of mood_unet_forward_train and mood_unet_backward (mood/unet.h, "training"; the
 * CPU passes engine/unet_forward.c and engine/unet_backward.c, which engine/cuda/unet_cuda_train.c
 * and unet_cuda_backward.c follow layer for layer), for LoRA training: mood_cuda_unet_forward_train
 * computes the output of mood_cuda_unet_forward_dev and keeps on a tape what the backward pass
 * needs, then mood_cuda_unet_backward, from dL/d(out), ACCUMULATES (+=) the gradients of the loss
 * with respect to the factors of the CPU model's side paths (mood_unet_set_side_paths) and, when
 * asked, to the context. Every buffer is in DEVICE memory (float32); the work is queued on the
 * context's stream and the calls return without waiting (mood_cuda_sync or a download waits).
 *
 * Precision: a MOOD_CUDA_F32 model trains in fp32; a MOOD_CUDA_BF16 one in mixed precision, as
 * torch's bf16 autocast with fp32 trainable weights: the frozen weights are bf16 and every
 * product's inputs are rounded to bf16 (forward and the input gradients, fp32 accumulation);
 * activations, the tape, the side paths and every gradient stay fp32. fp16 (which would need loss
 * scaling) is MOOD_EUNSUPPORTED.
 *
 * The base weights' gradients (full-parameter training, mood_unet_backward_ex's): fp32 models,
 * mood_cuda_unet_backward_ex.
 *
 * SDXL's text_embeds gradient (a trained text encoder 2): mood_cuda_unet_backward_cond. Timesteps
 * and time ids get no gradient (the time and added embedding layers' side paths and weights do).
 *
 * Between the forward and the backward call the model's weights, side paths and factor values
 * (the device copy: mood_cuda_unet_reload_side_paths) must not change. A tape serves one step at
 * a time; its device memory comes from the context's pool and goes back to it at the next
 * forward_train (or mood_cuda_unet_tape_free), so steps of the same size allocate nothing after
 * the first. A tape belongs to the thread of the context it was last used with. */
typedef struct mood_cuda_unet_tape mood_cuda_unet_tape;

/* Creates an empty tape; flags: 0 (every activation kept) or MOOD_UNET_TAPE_CHECKPOINT (gradient
 * checkpointing, as the CPU's: a resnet's and a transformer block's activations are computed
 * again in the backward pass from the unit's kept input; the same gradients from a tape several
 * times smaller, for about a third more forward work). Errors: MOOD_EINVAL (unknown flags),
 * MOOD_EUNSUPPORTED (no CUDA backend), MOOD_ENOMEM. */
int mood_cuda_unet_tape_new(mood_cuda_unet_tape **out, unsigned flags);
/* Returns the tape's device memory to the pool of the context it was used with, which must still
 * be open. NULL is a no-op. */
void mood_cuda_unet_tape_free(mood_cuda_unet_tape *t);
/* Device bytes the tape holds now (as requested, before the pool's rounding). */
size_t mood_cuda_unet_tape_bytes(const mood_cuda_unet_tape *t);

/* As mood_cuda_unet_forward_dev (same arguments, output and device buffers), recording onto
 * `tape` (replacing what it held). x and context are copied onto the tape: the caller's buffers
 * need not stay unchanged. Side paths set on the CPU model since the last forward are copied
 * first (as for the forward). Errors: as mood_cuda_unet_forward_dev; MOOD_EUNSUPPORTED for a
 * 16-bit model; the tape is then empty. */
int mood_cuda_unet_forward_train(mood_cuda_unet *u, mood_cuda_unet_tape *tape, float *out,
                                 const float *x, const float *timesteps, const float *context,
                                 int B, int H, int W, int ctx_len, const float *text_embeds,
                                 const float *time_ids);

/* The backward pass of the tape's forward, as mood_unet_backward with DEVICE buffers. dout:
 * dL/d(out), B x out_channels x H x W. grads: n_grads entries, one per side path in the order
 * given to mood_unet_set_side_paths (n_grads must be that count), or NULL with n_grads 0: each a
 * mood_side_grad (mood/core.h) whose ddown and dup are DEVICE pointers to float32 buffers of the
 * factors' shapes (NULL: not wanted). dcontext: B x ctx_len x cross_attention_dim on the device,
 * or NULL. Every gradient is ACCUMULATED (+=): the caller zeroes them (mood_cuda_memset0) before
 * the first step of an accumulation. The tape stays valid (a second call adds the same
 * gradients again). Errors: MOOD_EINVAL (an empty tape, another model, side paths changed since
 * the forward, a wrong n_grads), MOOD_ENOMEM, MOOD_EBACKEND. */
int mood_cuda_unet_backward(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                            const mood_side_grad *grads, size_t n_grads, float *dcontext);

/* As mood_cuda_unet_backward, and the base weights' gradients as mood_unet_backward_ex gives
 * them: weight_grads is NULL (none) or has mood_unet_weight_count entries, entry i for weight i:
 * NULL when not wanted, else a DEVICE buffer of the weight's size, ACCUMULATED (+=). Weights'
 * gradients need a float32 model (MOOD_EUNSUPPORTED for bf16). */
int mood_cuda_unet_backward_ex(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                               const mood_side_grad *grads, size_t n_grads, float *dcontext,
                               float *const *weight_grads);

/* As mood_cuda_unet_backward_ex, and the gradient of SDXL's text_embeds as
 * mood_unet_backward_cond gives it, ACCUMULATED into dtext_embeds (DEVICE, B x
 * (projection_class_embeddings_input_dim - 6 * addition_time_embed_dim)) when not NULL: what a
 * trained text encoder 2's pooled output receives. MOOD_EINVAL for it on a model without
 * text_time conditioning. */
int mood_cuda_unet_backward_cond(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                                 const mood_side_grad *grads, size_t n_grads, float *dcontext,
                                 float *dtext_embeds, float *const *weight_grads);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_ENGINE_CUDA_UNET_CUDA_H */
