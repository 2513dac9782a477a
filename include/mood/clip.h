/*
 * clip.h: the CLIP text encoder of the Stable Diffusion family (OpenAI ViT-L/14 of SD1,
 * OpenCLIP ViT-H/14 of SD2, ViT-bigG/14 of SDXL), forward pass on the CPU in float32.
 *
 * It mirrors transformers' CLIPTextModel: token + position embeddings, pre-norm transformer
 * layers (layer_norm1, causal multi-head self-attention, residual; layer_norm2, MLP fc1 -> act ->
 * fc2, residual), final_layer_norm. Weights load from a safetensors file with Hugging Face names,
 * with or without the "text_model." prefix (transformers 5 dropped it), or inside a single-file
 * SD1 ("cond_stage_model.transformer.text_model.") or SDXL checkpoint
 * ("conditioner.embedders.0.transformer.text_model.", the CLIP-L encoder), in any float dtype.
 * OpenCLIP-named weights are read too: SD2's "cond_stage_model.model.", SDXL's second encoder
 * "conditioner.embedders.1.model." (chosen with MOOD_CLIP_ENCODER_2), or an open_clip state dict
 * without prefix ("transformer.resblocks.i.attn.in_proj_weight" split into q, k, v rows,
 * "ln_1", "mlp.c_fc", "positional_embedding", "ln_final", ...).
 *
 * The text projection, when the file has it (Hugging Face "text_projection.weight" (proj, hidden)
 * of CLIPTextModelWithProjection, or OpenCLIP "text_projection" (hidden, proj), applied as x @ P),
 * maps the pooled output to SDXL's pooled text embedding: mood_clip_project.
 *
 * Clip skip follows AUTOMATIC1111 (and sd.cpp, kohya's --clip_skip): clip_skip = 1 is the last
 * layer's output, clip_skip = k the output of layer (layers - k + 1), i.e. hidden_states[-k] of
 * transformers; with final_norm set the final layer norm is applied to it as A1111 does for SD1.
 * diffusers' encode_prompt(clip_skip = c) is A1111's clip skip c + 1 (hidden_states[-(c + 1)],
 * then final_layer_norm). SDXL conditioning uses hidden_states[-2] without the norm: clip skip 2
 * with final_norm 0.
 *
 * Training: mood_clip_forward_train keeps the activations on a tape and mood_clip_backward
 * computes the gradients of the runtime side paths' (LoRA) factors and of any base weights from
 * it (see "training" below); the _ex variants take the pooled output too, and
 * mood_clip_project_backward the text projection.
 *
 * Thread-safety: a loaded model is read-only; forward calls may run concurrently (so may training
 * steps with one tape each); mood_clip_weight (writes), mood_clip_set_side_paths and
 * mood_clip_free must not overlap a forward or backward call.
 */
#ifndef MOOD_CLIP_H
#define MOOD_CLIP_H

#include <stddef.h>
#include <stdint.h>

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mood_clip_act {
    MOOD_CLIP_ACT_AUTO = 0,   /* infer from the hidden size (768: quick_gelu, else gelu) */
    MOOD_CLIP_ACT_QUICK_GELU, /* x * sigmoid(1.702 x): OpenAI CLIP (SD1) */
    MOOD_CLIP_ACT_GELU        /* exact erf GELU: OpenCLIP (SD2, SDXL's second encoder) */
} mood_clip_act;

/* Which text encoder of a single-file checkpoint to load. */
typedef enum mood_clip_encoder {
    MOOD_CLIP_ENCODER_AUTO = 0, /* the first found: SD1's, SD2's, SDXL's first, a bare file */
    MOOD_CLIP_ENCODER_1,        /* the same (SDXL: CLIP-L, "conditioner.embedders.0.") */
    MOOD_CLIP_ENCODER_2         /* SDXL's second, OpenCLIP bigG ("conditioner.embedders.1.") */
} mood_clip_encoder;

typedef struct mood_clip_config {
    int vocab;                 /* token embedding rows */
    int max_positions;         /* position embedding rows (77) */
    int hidden;                /* model width */
    int intermediate;          /* MLP width */
    int layers;                /* transformer layers */
    int heads;                 /* attention heads; 0 = infer (768: 12, 1024: 16, 1280: 20) */
    mood_clip_act act;         /* MOOD_CLIP_ACT_AUTO = infer as above */
    float layer_norm_eps;      /* 0 = 1e-5 */
    int projection_dim;        /* output: width of the text projection, 0 when the file has none */
    mood_clip_encoder encoder; /* hint: which encoder of a checkpoint (MOOD_CLIP_ENCODER_AUTO) */
} mood_clip_config;

typedef struct mood_clip mood_clip;

/* Loads the text encoder from safetensors file `path`. Sizes come from the tensor shapes; heads,
 * act, layer_norm_eps and encoder from `hint` (may be NULL: all inferred / automatic), whose other
 * fields are ignored.
 * Errors: MOOD_ENOTFOUND/MOOD_EIO (file), MOOD_EFORMAT (a tensor missing, of the wrong shape or
 * dtype: the message names file and tensor), MOOD_EINVAL (heads not inferable or not dividing
 * hidden), MOOD_ENOMEM. The weights are copied to float32; the file is closed on return. */
MOOD_WARN_UNUSED int mood_clip_load(mood_clip **out, const char *path,
                                    const mood_clip_config *hint);
void mood_clip_free(mood_clip *m);
/* The model's configuration (borrowed, valid while m lives). */
const mood_clip_config *mood_clip_get_config(const mood_clip *m);

/* Runs `batch` sequences of `seq` ids each (seq <= max_positions, ids in [0, vocab)).
 * hidden_out (batch x seq x hidden, may be NULL) receives the hidden state chosen by clip_skip
 * (>= 1, < layers + 1; see the top of this file) with the final layer norm when final_norm is
 * set. pooled_out (batch x hidden, may be NULL) receives the final-normed last layer at the
 * first position of the highest id of each sequence (the end token), as transformers' pooler.
 * Errors: MOOD_EINVAL (bad sizes, clip_skip or id), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_clip_forward(const mood_clip *m, const int32_t *ids, int batch, int seq,
                                       int clip_skip, int final_norm, float *hidden_out,
                                       float *pooled_out);

/* Whether the model has a text projection (mood_clip_get_config(m)->projection_dim > 0). */
int mood_clip_has_projection(const mood_clip *m);

/* out (batch x projection_dim) = pooled (batch x hidden, mood_clip_forward's pooled_out) through
 * the text projection (no bias), as CLIPTextModelWithProjection's text_embeds.
 * Errors: MOOD_EINVAL (no projection, batch < 1). */
MOOD_WARN_UNUSED int mood_clip_project(const mood_clip *m, const float *pooled, int batch,
                                       float *out);

/* A weight by its Hugging Face name ("text_model.encoder.layers.0.mlp.fc1.weight"; the
 * "text_model." prefix is optional; the embeddings are "text_model.embeddings.token_embedding
 * .weight" (vocab x hidden) and "...position_embedding.weight"), NULL when the model has none.
 * ndim/shape (may be NULL) get its shape. Writable: merged adapters change it in place. For a model
 * loaded from OpenCLIP names, q_proj, k_proj and v_proj are consecutive blocks of the fused in_proj
 * weight. */
float *mood_clip_weight(mood_clip *m, const char *name, int *ndim, int64_t shape[4]);

/* Every weight the hidden states use, in transformers' module order
 * (CLIPTextModel.named_parameters()): token and position embeddings; per layer self_attn
 * k_proj, v_proj, q_proj, out_proj, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2 (each weight then
 * bias); final_layer_norm weight and bias. Names are as mood_clip_weight takes them, with the
 * "text_model." prefix (borrowed, valid while m lives; NULL for i >= count). The text projection
 * is not among them. */
size_t mood_clip_weight_count(const mood_clip *m);
const char *mood_clip_weight_name(const mood_clip *m, size_t i);

/* Replaces the runtime adapter side paths (mood_side_path in mood/core.h; Linear weights only;
 * n = 0 clears). The paths' pointers are borrowed. Errors: MOOD_ENOTFOUND (no such Linear
 * weight, named), MOOD_EINVAL (missing factors), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_clip_set_side_paths(mood_clip *m, const mood_side_path *paths, size_t n);

/* ----- training: forward with a tape, backward into side path factors and weights -----------
 *
 * A training step runs mood_clip_forward_train, which computes the same hidden state as
 * mood_clip_forward (bit for bit) and keeps on a tape what the backward pass needs, then
 * mood_clip_backward with dL/d(hidden), which accumulates the gradients of the loss with respect
 * to the factors of the model's side paths (mood_clip_set_side_paths) and, when asked, to the base
 * weights (full-parameter training). Token ids get no gradient; the token embedding rows they
 * pick do. Layers after the one clip skip selects take no part and get nothing.
 *
 * Between the two calls the model's weights, side paths and factor values must not change (the
 * backward pass reads them). One tape serves one step at a time; it keeps its memory from step to
 * step, so steps of the same size allocate nothing. Memory: per layer run, about
 * batch x seq x (8 hidden + 2 intermediate) floats (SD1's ViT-L, one caption: 3.8 MB a layer). */
typedef struct mood_clip_tape mood_clip_tape;

/* Creates an empty tape. Errors: MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_clip_tape_new(mood_clip_tape **out);
void mood_clip_tape_free(mood_clip_tape *t);
/* Bytes the tape holds now (activations and the backward pass's memory). */
size_t mood_clip_tape_bytes(const mood_clip_tape *t);

/* As mood_clip_forward without the pooled output (same arguments, same hidden_out, which is
 * required here), recording onto `tape` (replacing what it held). ids are copied.
 * Errors: as mood_clip_forward (MOOD_EINVAL also for a NULL argument); the tape is then empty. */
MOOD_WARN_UNUSED int mood_clip_forward_train(const mood_clip *m, mood_clip_tape *tape,
                                             const int32_t *ids, int batch, int seq, int clip_skip,
                                             int final_norm, float *hidden_out);

/* The backward pass of the tape's forward. dhidden: dL/d(hidden_out), batch x seq x hidden.
 * grads: n_grads entries, one per side path in the order given to mood_clip_set_side_paths
 * (n_grads must be that count), or NULL with n_grads 0 for none (mood_side_grad, mood/core.h).
 * weight_grads: NULL (no base weight gradients) or mood_clip_weight_count(m) entries, entry i for
 * weight i (mood_clip_weight_name(m, i)): NULL when not wanted, else a buffer of that weight's
 * size (mood_clip_weight's shape; the token embedding's is vocab x hidden) that gets the gradient
 * in the weight's layout. Buffers must not overlap. Every gradient is ACCUMULATED (+=): the caller
 * zeroes them before the first step of an accumulation. The tape stays valid (a second call adds
 * the same gradients again). Results do not depend on the thread count.
 * Errors: MOOD_EINVAL (an empty tape, another model, side paths changed since the forward, a
 * wrong n_grads), MOOD_ENOMEM. */
MOOD_WARN_UNUSED int mood_clip_backward(const mood_clip *m, mood_clip_tape *tape,
                                        const float *dhidden, const mood_side_grad *grads,
                                        size_t n_grads, float *const *weight_grads);

/* As mood_clip_forward_train, and the pooled output as mood_clip_forward's pooled_out when
 * pooled_out (batch x hidden) is not NULL: then every layer runs and is recorded (past the one
 * clip skip selects), with the pooled rows' final layer norm, so that mood_clip_backward_ex can
 * take the pooled output's gradient too (SDXL's text encoder 2, whose pooled output goes through
 * the text projection into the UNet's added conditioning). Same errors. */
MOOD_WARN_UNUSED int mood_clip_forward_train_ex(const mood_clip *m, mood_clip_tape *tape,
                                                const int32_t *ids, int batch, int seq,
                                                int clip_skip, int final_norm, float *hidden_out,
                                                float *pooled_out);

/* As mood_clip_backward, from the gradients of both outputs of mood_clip_forward_train_ex:
 * dhidden (batch x seq x hidden) and dpooled (batch x hidden, the pooled output's), either of
 * them NULL (not both). With dhidden NULL and dpooled given, hidden_out takes no part (as if its
 * gradient were zero). Errors: as mood_clip_backward; MOOD_EINVAL also for dpooled when the
 * forward recorded no pooled output. */
MOOD_WARN_UNUSED int mood_clip_backward_ex(const mood_clip *m, mood_clip_tape *tape,
                                           const float *dhidden, const float *dpooled,
                                           const mood_side_grad *grads, size_t n_grads,
                                           float *const *weight_grads);

/* The backward pass of mood_clip_project: dpooled (batch x hidden) += the gradient of the
 * pooled input from dembeds (batch x projection_dim), the gradient of its output. The projection
 * is frozen (it gets no gradient). Errors: MOOD_EINVAL (no projection, batch < 1, NULL). */
MOOD_WARN_UNUSED int mood_clip_project_backward(const mood_clip *m, const float *dembeds, int batch,
                                                float *dpooled);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_CLIP_H */
