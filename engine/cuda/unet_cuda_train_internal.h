/*
 * unet_cuda_train_internal.h: what the GPU UNet's training passes share (engine/cuda/
 * unet_cuda_train.c: the tape and the recording forward; unet_cuda_backward.c: the backward):
 * the tape, the pass, small helpers, and the forward layers the backward pass runs again under
 * gradient checkpointing. Not installed.
 */
#ifndef MOOD_UNET_CUDA_TRAIN_INTERNAL_H
#define MOOD_UNET_CUDA_TRAIN_INTERNAL_H

#include <string.h>

#include "engine/cuda/unet_cuda_internal.h"
#include "engine/unet_pass.h" /* the records the CPU passes leave on their tapes */

struct mood_cuda_unet_tape {
    mood_cuda_unet *u;  /* the model of the recorded forward (NULL: none yet) */
    mood_cuda_ctx *ctx; /* whose pool the blocks come from */
    int valid;
    int checkpoint; /* MOOD_UNET_TAPE_CHECKPOINT: resnets' and blocks' activations not kept */
    unsigned long side_gen; /* the model's side paths when recorded */
    int B, L;
    const float *context; /* the tape's copy: B*L x cross_attention_dim */
    const float *emb_act; /* silu(time embedding): B x time_embed_dim */
    int n_skips;          /* skip connections made */
    float *skip[CU_MAX_SKIPS];
    int skip_c[CU_MAX_SKIPS], skip_h[CU_MAX_SKIPS], skip_w[CU_MAX_SKIPS];
    unet_rec *recs; /* the layers in forward order */
    size_t n_rec, cap_rec;
    void **blocks; /* device blocks held */
    size_t n_blocks, cap_blocks;
    size_t bytes;
};

/* One training pass: the forward (recording into t) or the backward (reading t). */
typedef struct cu_train {
    cu_pass f;                   /* the model, sizes, temporaries (get / put); f.n_skip: skips not
                                    yet read by an up block (forward) */
    mood_cuda_unet_tape *t;      /* the tape */
    const mood_side_grad *grads; /* backward: per side path as given to
                                    mood_unet_set_side_paths, or NULL */
    float *dctx;                 /* backward: B*L x cross_attention_dim, or NULL */
    float *const *wg;            /* backward: per base weight its gradient, or NULL (frozen) */
    float *dtext;                /* backward: SDXL's text_embeds' gradient, or NULL */
    float *demb;                 /* backward: B x time_embed_dim, the gradient of t->emb_act */
    size_t cursor;               /* backward: records not yet read */
} cu_train;

/* The pass over u's model with B samples and L context tokens, recording into or reading t. */
static inline void train_init(cu_train *g, mood_cuda_unet *u, mood_cuda_unet_tape *t, int B, int L)
{
    memset(g, 0, sizeof *g);
    g->f.u = u, g->f.ctx = u->ctx, g->f.m = u->m, g->f.dt = u->dt, g->f.B = B, g->f.L = L;
    g->t = t;
}

/* ----- helpers ----------------------------------------------------------------------------- */

/* Nearest-neighbour resize as the CPU's mood__unet_upsample (2x or to any size): BC planes. */
static inline int upsample_nearest(cu_train *g, float *out, const float *inp, int BC, int H, int W,
                                   int OH, int OW)
{
    if (OH == 2 * H && OW == 2 * W)
        return mood_cuda_op_upsample_nearest2x(g->f.ctx, out, inp, BC, H, W);
    return mood_cuda_op_upsample_nearest(g->f.ctx, out, inp, BC, H, W, OH, OW);
}

/* ----- forward layers (unet_cuda_train.c) the backward pass recomputes under checkpointing --- */

/* stats: NULL, or mean then rstd (2 x B*groups, or 2 x rows) for the backward pass. */
int mood__cuda_train_norm_forward(cu_train *g, const u_norm *nm, float *out, const float *inp,
                                  size_t rows, size_t HW, float *stats);

int mood__cuda_train_resnet_acts_get(cu_train *g, const u_resnet *r, size_t HW, resnet_acts *a);

/* Returns a resnet's activations if they are temporaries (put ignores the tape's blocks). */
void mood__cuda_train_resnet_acts_put(cu_train *g, resnet_acts *a);

/* out (B x out x H x W) = ResnetBlock2D(inp); out must not alias inp. */
int mood__cuda_train_resnet_forward(cu_train *g, const u_resnet *r, const resnet_acts *a,
                                    float *out, const float *inp, int H, int W);

/* A transformer block's activations for N tokens, the residual stream's x1, x2 included. */
int mood__cuda_train_tblock_acts_get(cu_train *g, const u_transformer *t, size_t N, tblock_acts *a);

/* Returns a block's activations if they are temporaries. */
void mood__cuda_train_tblock_acts_put(cu_train *g, tblock_acts *a);

/* xout (N x inner) = BasicTransformerBlock(xin); xout must not alias xin. */
int mood__cuda_train_tblock_forward(cu_train *g, const u_transformer *t, const u_tblock *k,
                                    const tblock_acts *a, float *xout, const float *xin, size_t HW);

#endif /* MOOD_UNET_CUDA_TRAIN_INTERNAL_H */
