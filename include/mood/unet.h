/*
 * unet.h: the UNet2DConditionModel of the Stable Diffusion family (SD1.x, SD2.x, SDXL and any
 * configuration diffusers can express with the same blocks): forward and backward (training) passes
 * on the CPU in float32.
 *
 * It mirrors diffusers' UNet2DConditionModel (models/unets/unet_2d_condition.py): sinusoidal
 * timestep embedding -> time_embedding (linear_1, SiLU, linear_2) [+ SDXL's "text_time" added
 * embedding], conv_in, down blocks (ResnetBlock2D, Transformer2DModel, Downsample2D), the
 * cross-attention mid block, up blocks over the skip connections (Upsample2D), conv_norm_out,
 * SiLU, conv_out. Weights keep diffusers' state-dict names ("down_blocks.0.attentions.0.proj_in
 * .weight") whatever file they come from.
 *
 * Training: mood_unet_forward_train keeps the activations on a tape and mood_unet_backward
 * computes the gradients of the runtime side paths' (LoRA) factors from it, mood_unet_backward_ex
 * those of the base weights too (full-parameter training).
 *
 * Thread-safety: mood_unet_forward may run concurrently on one model (so may training steps
 * with one tape each); mood_unet_weight (writes), mood_unet_set_side_paths and mood_unet_free
 * must not overlap a forward or backward call.
 */
#ifndef MOOD_UNET_H
#define MOOD_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOOD_UNET_MAX_BLOCKS 4

typedef enum mood_unet_block_type {
    MOOD_UNET_DOWN_BLOCK_2D = 0,        /* "DownBlock2D": resnets (+ downsampler) */
    MOOD_UNET_CROSS_ATTN_DOWN_BLOCK_2D, /* "CrossAttnDownBlock2D": a transformer after each resnet
                                         */
    MOOD_UNET_UP_BLOCK_2D,              /* "UpBlock2D" */
    MOOD_UNET_CROSS_ATTN_UP_BLOCK_2D    /* "CrossAttnUpBlock2D" */
} mood_unet_block_type;

/* The fields of diffusers' UNet2DConditionModel config.json that mood reads, resolved to one
 * value per block. Lists in the JSON ("attention_head_dim": [5, 10, 20, 20]) fill the per-block
 * arrays; a single int fills every block. Up-block arrays are in up-block order (the reverse of
 * the down blocks for symmetric models). */
typedef struct mood_unet_config {
    int in_channels, out_channels;
    int n_blocks; /* len(block_out_channels) = len(down_block_types) = len(up_block_types) */
    int block_out_channels[MOOD_UNET_MAX_BLOCKS];
    mood_unet_block_type down_block_types[MOOD_UNET_MAX_BLOCKS];
    mood_unet_block_type up_block_types[MOOD_UNET_MAX_BLOCKS];
    int layers_per_block[MOOD_UNET_MAX_BLOCKS]; /* resnets per down block (up blocks: +1) */
    /* diffusers' attention_head_dim, which it uses as the NUMBER OF HEADS when
     * num_attention_heads is null (every SD config): per down block. */
    int attention_head_dim[MOOD_UNET_MAX_BLOCKS];
    /* The heads actually used: num_attention_heads when given, else attention_head_dim. Each
     * transformer of a block has heads of width block_out_channels / heads. The mid block uses
     * the last block's, up block i the down block n_blocks-1-i's. */
    int num_attention_heads[MOOD_UNET_MAX_BLOCKS];
    int transformer_layers_per_block[MOOD_UNET_MAX_BLOCKS]; /* per down block */
    int up_transformer_layers[MOOD_UNET_MAX_BLOCKS]; /* per up block (reverse of the above, or
                                                       reverse_transformer_layers_per_block) */
    int mid_transformer_layers;                      /* transformer_layers_per_block[-1] */
    int cross_attention_dim;
    int use_linear_projection; /* proj_in/proj_out Linear (SD2, SDXL) or 1x1 Conv2d (SD1) */
    int norm_num_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    int upcast_attention; /* read for completeness; float32 attention needs no upcast */
    int mid_block;        /* 1: UNetMidBlock2DCrossAttn, 0: no mid block (mid_block_type null) */
    float mid_block_scale_factor;  /* output_scale_factor of the mid block's resnets */
    float resnet_out_scale_factor; /* config.json's; unused: diffusers passes it to no block type
                                      mood builds (their resnets divide by 1) */
    int downsample_padding;
    int conv_in_kernel, conv_out_kernel;
    int center_input_sample;
    int time_embed_dim; /* time_embedding_dim, or 4 * block_out_channels[0] */
    /* SDXL: addition_embed_type "text_time" (1) or none (0); the 6 time ids are embedded at
     * addition_time_embed_dim each and concatenated after text_embeds, which has
     * projection_class_embeddings_input_dim - 6 * addition_time_embed_dim values per sample. */
    int addition_embed_text_time;
    int addition_time_embed_dim;
    int projection_class_embeddings_input_dim;
} mood_unet_config;

typedef struct mood_unet mood_unet;

/* Loads a UNet. path is one of:
 *   - a diffusers UNet folder: config.json + diffusion_pytorch_model.safetensors (else
 *     diffusion_pytorch_model.fp16.safetensors, or a sharded *.safetensors.index.json);
 *   - a diffusers pipeline root (its unet/ folder is used);
 *   - a single-file checkpoint (A1111/Civitai layout, LDM/SGM keys under
 *     "model.diffusion_model.", or a bare UNet state dict with LDM names). Its configuration is
 *     inferred from key names and shapes: widths, levels, resnets per level, attention and
 *     transformer depth per block, Linear vs Conv2d proj_in (tensor rank), context width, SDXL's
 *     label_emb. What shapes cannot tell is taken as in the SD releases: heads are 8 when the
 *     context is 768 wide (SD1), else of width 64 (SD2, SDXL); 32 norm groups, eps 1e-5;
 *     SDXL's addition_time_embed_dim from the second text encoder's projection width (256 for
 *     the real model). mood_unet_load_ex takes these from a hint instead.
 * Weights are converted to float32 tensor by tensor from the mapped file (any float dtype), so
 * peak memory is the float32 weights plus one tensor.
 * Errors: MOOD_ENOTFOUND/MOOD_EIO (files), MOOD_EFORMAT (bad config.json, a tensor missing or of
 * the wrong shape: the message names file and tensor), MOOD_EUNSUPPORTED (a config option mood
 * does not implement, named), MOOD_EINVAL (heads or groups not inferable), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_unet_load(mood_unet **out, const char *path);

/* As mood_unet_load; for a single-file checkpoint, the non-zero fields of `hint` among
 * num_attention_heads (per block), norm_num_groups, norm_eps and addition_time_embed_dim replace
 * the inferred values (tiny test models, unusual fine-tunes). hint may be NULL; it is ignored for
 * diffusers folders, whose config.json says everything. */
MOOD_WARN_UNUSED int mood_unet_load_ex(mood_unet **out, const char *path,
                                       const mood_unet_config *hint);

void mood_unet_free(mood_unet *m);

/* The model's configuration (borrowed, valid while m lives). */
const mood_unet_config *mood_unet_get_config(const mood_unet *m);

/* Runs the UNet on B samples.
 *   out, x:      B x in_channels x H x W (out: out_channels), NCHW float32;
 *   timesteps:   B floats (diffusers' timestep, 0..999, fractional allowed);
 *   context:     B x ctx_len x cross_attention_dim (encoder_hidden_states);
 *   text_embeds: B x (projection_class_embeddings_input_dim - 6 * addition_time_embed_dim) and
 *   time_ids:    B x 6 (original h, w, crop top, left, target h, w): SDXL's added conditioning,
 *                required with addition_embed_type "text_time", NULL otherwise.
 * Any H, W >= 1 work: as diffusers, the upsamplers then resize to the skip connection's size.
 * Allocates its own activations (freed on return); m is not modified.
 * Errors: MOOD_EINVAL (sizes, missing SDXL conditioning), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_unet_forward(const mood_unet *m, float *out, const float *x,
                                       const float *timesteps, const float *context, int B, int H,
                                       int W, int ctx_len, const float *text_embeds,
                                       const float *time_ids);

/* A weight by its diffusers state-dict name ("down_blocks.0.attentions.0.proj_in.weight",
 * "conv_norm_out.bias"); NULL when unknown. ndim and shape (torch's, unused entries 0) are set
 * when non-NULL. The data is writable: the pipeline merges LoRA deltas into it in place (not
 * while a forward call runs). */
float *mood_unet_weight(mood_unet *m, const char *name, int *ndim, int64_t shape[4]);
/* Every weight, in module order: i in [0, count). */
size_t mood_unet_weight_count(const mood_unet *m);
const char *mood_unet_weight_name(const mood_unet *m, size_t i);
/* Weight i's number of elements (the product of its shape; 0 for i out of range): the size of
 * its gradient buffer for mood_unet_backward_ex. */
size_t mood_unet_weight_numel(const mood_unet *m, size_t i);

/* Replaces the model's runtime adapter side paths (mood_side_path, mood/core.h) with `paths`
 * (n = 0 clears them). Each names a Linear or Conv2d weight; several may name the same weight.
 * The side path's factors are borrowed: they must stay valid while the paths are set. A
 * convolution's down factor is applied with the layer's kernel, stride and padding, up as 1x1.
 * Errors (the previous set is kept): MOOD_ENOTFOUND naming the weight when it names no Linear or
 * Conv2d weight; MOOD_EINVAL for a negative rank or missing factors; MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_unet_set_side_paths(mood_unet *m, const mood_side_path *paths, size_t n);

/* ----- training: forward with a tape, backward into the side paths' factors or the weights ---
 *
 * A training step runs mood_unet_forward_train, which computes the same output as
 * mood_unet_forward and keeps on a tape what the backward pass needs, then mood_unet_backward
 * with dL/d(out), which accumulates the gradients of the loss with respect to the factors of the
 * model's side paths (mood_unet_set_side_paths) and, when asked, to the context. For LoRA
 * training the base weights are frozen; mood_unet_backward_ex also gives the gradients of any
 * base weights the caller asks for (full-parameter training), mood_unet_backward_cond that of
 * SDXL's text_embeds too (a trained text encoder 2). Timesteps and the time ids get no
 * gradients, but the time and added embedding layers' weights and side paths do.
 *
 * Between the two calls the model's weights, side paths and factor values must not change (the
 * backward pass reads them). One tape serves one step at a time; it keeps its memory from step
 * to step, so steps of the same size allocate nothing. */
typedef struct mood_unet_tape mood_unet_tape;

enum {
    /* Gradient checkpointing: the tape keeps only each resnet's and transformer block's input
     * and output, and the backward pass recomputes the rest one layer at a time. SD1.5 at
     * 512 x 512, batch 1: 0.65 GB for a step instead of 1.6 GB, for one more forward pass of
     * those layers (a step takes about 1.5 times as long). */
    MOOD_UNET_TAPE_CHECKPOINT = 1u << 0
};

/* Creates an empty tape; flags: MOOD_UNET_TAPE_*. Errors: MOOD_EINVAL (unknown flag),
 * MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_unet_tape_new(mood_unet_tape **out, unsigned flags);
void mood_unet_tape_free(mood_unet_tape *t);
/* Bytes the tape holds now (activations and the backward pass's memory). */
size_t mood_unet_tape_bytes(const mood_unet_tape *t);

/* As mood_unet_forward (same arguments and output), recording onto `tape` (replacing what it
 * held). x, context and the other inputs are copied: they need not outlive the call.
 * Errors: as mood_unet_forward; the tape is then empty. */
MOOD_WARN_UNUSED int mood_unet_forward_train(const mood_unet *m, mood_unet_tape *tape, float *out,
                                             const float *x, const float *timesteps,
                                             const float *context, int B, int H, int W, int ctx_len,
                                             const float *text_embeds, const float *time_ids);

/* (mood_side_grad, the gradients of one side path's factors, is in mood/core.h: the text
 * encoder's backward pass takes it too.) */

/* The backward pass of the tape's forward. dout: dL/d(out), B x out_channels x H x W.
 * grads: n_grads entries, one per side path in the order given to mood_unet_set_side_paths
 * (n_grads must be that count), or NULL with n_grads 0 for none. dcontext: B x ctx_len x
 * cross_attention_dim, or NULL. Every gradient is ACCUMULATED (+=): the caller zeroes them
 * before the first step of an accumulation. The tape stays valid (a second call adds the same
 * gradients again).
 * Errors: MOOD_EINVAL (an empty tape, another model, side paths changed since the forward, a
 * wrong n_grads), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_unet_backward(const mood_unet *m, mood_unet_tape *tape, const float *dout,
                                        const mood_side_grad *grads, size_t n_grads,
                                        float *dcontext);

/* As mood_unet_backward (same arguments, same results), and the gradients of the base weights:
 * weight_grads is NULL (none: exactly mood_unet_backward) or has mood_unet_weight_count(m)
 * entries, entry i for weight i (mood_unet_weight_name(m, i)): NULL when not wanted, else a
 * buffer of that weight's size (the product of its shape, mood_unet_weight) that gets the
 * gradient in the weight's own layout, ACCUMULATED (+=) like the others. Every parameter of the
 * model has one: convolutions, linears and their biases, group and layer norms' scales and
 * shifts. The buffers must not overlap each other or the other gradients. Results do not depend
 * on the thread count, nor on the tape's checkpointing.
 * Errors: as mood_unet_backward. */
MOOD_WARN_UNUSED int mood_unet_backward_ex(const mood_unet *m, mood_unet_tape *tape,
                                           const float *dout, const mood_side_grad *grads,
                                           size_t n_grads, float *dcontext,
                                           float *const *weight_grads);

/* As mood_unet_backward_ex (same arguments, same results), and the gradient of SDXL's added
 * conditioning text_embeds (the pooled text embedding, B x (projection_class_embeddings_input_dim
 * - 6 * addition_time_embed_dim) as mood_unet_forward_train took it), ACCUMULATED (+=) into
 * dtext_embeds when it is not NULL: through add_embedding into its first columns (the time ids
 * get none). It lets a trained text encoder's pooled output (SDXL's text encoder 2) receive its
 * share of the loss. Errors: as mood_unet_backward; MOOD_EINVAL for dtext_embeds on a model
 * without addition_embed_type "text_time". */
MOOD_WARN_UNUSED int mood_unet_backward_cond(const mood_unet *m, mood_unet_tape *tape,
                                             const float *dout, const mood_side_grad *grads,
                                             size_t n_grads, float *dcontext, float *dtext_embeds,
                                             float *const *weight_grads);

/* Memory a training step of this size takes: the tape's activations and the backward pass's
 * working memory, in bytes (either pointer may be NULL). Computes nothing but sizes. */
MOOD_WARN_UNUSED int mood_unet_train_memory(const mood_unet *m, int B, int H, int W, int ctx_len,
                                            unsigned flags, uint64_t *tape_bytes,
                                            uint64_t *backward_bytes);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_UNET_H */
