/*
 * unet_cuda.h: the UNet2DConditionModel forward pass on the GPU, for inference (internal to
 * libmood; no CUDA types, so C code calls it). It runs the model a CPU mood_unet holds (loaded
 * by mood_unet_load: SD1.x, SD2.x, SDXL and every configuration mood/unet.h accepts) with the
 * CUDA backend's layer functions (engine/cuda/cuda_ops.h), layer for layer as the CPU forward
 * (engine/unet_forward.c), with the same inputs, output and layout.
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
 * Not yet on the GPU (MOOD_EUNSUPPORTED, named): runtime side paths (mood_unet_set_side_paths;
 * merge the adapters into the weights instead) and center_input_sample (no SD release uses it).
 *
 * A mood_cuda_unet belongs to its context's thread; activations come from the context's memory
 * pool, so repeated forwards of one size allocate nothing after the first.
 */
#ifndef MOOD_ENGINE_CUDA_UNET_CUDA_H
#define MOOD_ENGINE_CUDA_UNET_CUDA_H

#include <stddef.h>

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
} mood_cuda_unet_options;

void mood_cuda_unet_options_init(mood_cuda_unet_options *opts);

/* Uploads m's weights to ctx's device (opts NULL: defaults). ctx and m are borrowed: both must
 * outlive the result. Errors: MOOD_EINVAL (arguments, an unknown dtype), MOOD_EUNSUPPORTED (a
 * configuration the GPU forward does not run, named; a build without the CUDA backend),
 * MOOD_ENOMEM (device memory), MOOD_EBACKEND. */
int mood_cuda_unet_new(mood_cuda_unet **out, mood_cuda_ctx *ctx, const mood_unet *m,
                       const mood_cuda_unet_options *opts);
/* Returns the weights' device memory to the context's pool. NULL is a no-op. */
void mood_cuda_unet_free(mood_cuda_unet *u);

/* Copies the CPU model's weight `name` (a diffusers state-dict name, mood_unet_weight) to the
 * device again, or every weight when name is NULL, after the caller changed them (merged LoRA
 * deltas). Returns once the host data may change again. Errors: MOOD_ENOTFOUND (unknown name),
 * MOOD_EBACKEND. */
int mood_cuda_unet_reload(mood_cuda_unet *u, const char *name);

/* Device bytes the weights take. */
size_t mood_cuda_unet_bytes(const mood_cuda_unet *u);

/* The UNet on B samples, as mood_unet_forward (mood/unet.h): same arguments, layout and output,
 * all buffers in HOST memory: out, x (B x channels x H x W, NCHW float32), timesteps (B),
 * context (B x ctx_len x cross_attention_dim), and for SDXL's "text_time" text_embeds and
 * time_ids (else NULL). Inputs are uploaded, the output downloaded; returns when out holds the
 * result. Errors: MOOD_EINVAL (sizes, missing SDXL conditioning), MOOD_EUNSUPPORTED (side paths
 * set on the CPU model), MOOD_ENOMEM, MOOD_EBACKEND. */
int mood_cuda_unet_forward(mood_cuda_unet *u, float *out, const float *x, const float *timesteps,
                           const float *context, int B, int H, int W, int ctx_len,
                           const float *text_embeds, const float *time_ids);

/* The same with every buffer in DEVICE memory (float32): the work is queued on the context's
 * stream and the call returns without waiting (mood_cuda_sync waits and reports an error raised
 * while it ran). out must not overlap the inputs. For a sampler that keeps its latents on the
 * GPU. */
int mood_cuda_unet_forward_dev(mood_cuda_unet *u, float *out, const float *x,
                               const float *timesteps, const float *context, int B, int H, int W,
                               int ctx_len, const float *text_embeds, const float *time_ids);

/* Floating-point operations of the last forward's products (Linear, Conv2d and attention's two
 * products, 2 per multiply-add), for benchmarks. */
double mood_cuda_unet_flop(const mood_cuda_unet *u);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_ENGINE_CUDA_UNET_CUDA_H */
