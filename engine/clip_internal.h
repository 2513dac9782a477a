/*
 * clip_internal.h: the loaded text encoder's layout, shared by its forward pass and loader
 * (clip.c) and its training passes (clip_backward.c). Not installed.
 *
 * Weight order (mood_clip_weight_count / mood_clip_weight_name, and the weight_grads array of
 * mood_clip_backward) is transformers' CLIPTextModel.named_parameters(): token and position
 * embeddings, then per layer CLIP_LAYER_WEIGHTS tensors in clip_layer_order, then the final
 * layer norm's weight and bias. The text projection is not in the list (the hidden states do
 * not use it).
 */
#ifndef MOOD_ENGINE_CLIP_INTERNAL_H
#define MOOD_ENGINE_CLIP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mood/clip.h"

typedef struct clip_layer {
    const float *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    const float *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} clip_layer;

struct mood_clip {
    mood_clip_config cfg;
    float *params; /* every weight, one allocation */
    const float *tok_emb, *pos_emb, *lnf_w, *lnf_b;
    const float *proj; /* text projection or NULL: (P x C), or (C x P) when proj_t */
    int proj_t;
    clip_layer *layer;
    mood_side_path *paths; /* runtime adapters (mood_clip_set_side_paths) */
    const float **path_w;  /* the weight each path belongs to */
    size_t n_paths;
    unsigned side_gen; /* bumped by every mood_clip_set_side_paths (tapes check it) */
    char *names;       /* the weight names, one allocation ... */
    const char **name; /* ... name[i] for weight i (see the top of this file) */
    size_t n_weights;  /* 4 + CLIP_LAYER_WEIGHTS * layers */
};

/* Tensors per layer, and their order in the weight list (transformers' CLIPEncoderLayer:
 * self_attn k, v, q, out_proj, layer_norm1, mlp fc1, fc2, layer_norm2; weight then bias). */
#define CLIP_LAYER_WEIGHTS 16
enum {
    CLIP_W_K = 0,
    CLIP_W_V = 2,
    CLIP_W_Q = 4,
    CLIP_W_O = 6,
    CLIP_W_LN1 = 8,
    CLIP_W_FC1 = 10,
    CLIP_W_FC2 = 12,
    CLIP_W_LN2 = 14
};

/* Index in the weight list of layer l's tensor k (CLIP_W_*, + 1 for the bias). */
static inline size_t mood__clip_widx(int l, int k)
{
    return 2 + (size_t)l * CLIP_LAYER_WEIGHTS + (size_t)k;
}

/* out (N x C) = tok[ids] + pos[t] for N = B*T rows. */
void mood__clip_embedding_forward(float *out, const int32_t *ids, const float *tok,
                                  const float *pos, int B, int T, int C);
/* MOOD_EINVAL (message set) unless the sizes, clip skip and ids fit the model. */
int mood__clip_check_args(const mood_clip *m, const int32_t *ids, int batch, int seq,
                          int clip_skip);

/* The position the pooled output is taken at in a sequence of T ids: the first of its highest id
 * (the end token), as transformers' pooler. */
int mood__clip_pool_position(const int32_t *ids, int T);

/* out (N x OC) = inp · w^T + b plus the side paths attached to w (the forward's Linear). */
void mood__clip_linear(const mood_clip *m, float *out, const float *inp, const float *w,
                       const float *b, size_t N, int IC, int OC);

#endif /* MOOD_ENGINE_CLIP_INTERNAL_H */
