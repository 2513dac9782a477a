/*
 * unet_cuda_internal.h: what the GPU UNet's files share: the inference forward
 * (engine/cuda/unet_cuda.c) and the training passes (engine/cuda/unet_cuda_train.c,
 * unet_cuda_backward.c). The model's
 * device copy (mood_cuda_unet), one pass over it (cu_pass) with its pool bookkeeping (get / put),
 * and the layer forwards both files run: Linear and Conv2d with their runtime side paths, the
 * norms. Plain C (no CUDA types). Not installed.
 *
 * A pass's temporaries come from the context's memory pool and are recorded in cu_pass.live, so
 * that a failure anywhere returns them all (put_all at the entry point): the layer functions
 * just return the error (TRY).
 */
#ifndef MOOD_ENGINE_CUDA_UNET_CUDA_INTERNAL_H
#define MOOD_ENGINE_CUDA_UNET_CUDA_INTERNAL_H

#include "engine/cuda/unet_cuda.h"
#include "engine/unet_internal.h"

/* Skip connections a pass can hold: conv_in, then per down block its resnets and sampler (as
 * UNET_MAX_SKIPS of engine/unet_pass.h). */
#define CU_MAX_SKIPS (1 + MOOD_UNET_MAX_BLOCKS * UNET_MAX_LAYERS)
/* Device blocks a pass holds at once: the skips (or, backward, their gradients) and a layer's
 * few temporaries. */
#define CU_MAX_LIVE (CU_MAX_SKIPS + 32)

/* One shape's CUDA graph of the inference forward (unet_cuda.c, "CUDA graphs"). An entry
 * without a graph marks a shape whose warm-up forward ran: its next forward records. */
typedef struct cu_graph {
    int used;              /* 0: free slot */
    int B, H, W, L, sdxl;  /* the shape */
    unsigned long last;    /* u->graph_tick at its last use (least recently used goes) */
    mood_cuda_graph *g;    /* NULL until recorded */
    float *in[5], *out;    /* its own x, t, context, text_embeds, time_ids; output */
    size_t n_in[5], n_out; /* their floats (0: input not used) */
    double flop;           /* of the recorded forward */
} cu_graph;

struct mood_cuda_unet {
    mood_cuda_ctx *ctx;
    const mood_unet *m;
    mood_cuda_dtype dt; /* of the Linear / Conv2d weights and the products' inputs */
    void *arena32;      /* float32 parameters */
    void *arena16;      /* 16-bit weights (16-bit mode only) */
    size_t bytes32, bytes16;
    void **w;    /* per parameter: its device copy */
    double flop; /* of the last forward */
    /* Runtime side paths. Why float32 factors in every mode: they are small beside the weights
     * (a LoRA is a few percent of the UNet), a 16-bit copy would round a trained LoRA's small
     * updates away, and training reads and updates fp32 factors. */
    void *side_arena;
    size_t side_bytes;
    const float **side_w;   /* per path k: [2k] down (NULL for rank 0), [2k + 1] up */
    size_t n_sides;         /* paths placed in side_arena */
    unsigned long side_gen; /* the model's side_gen they were placed for */
    int sides_placed;       /* 0 until placed (and after a failure): place again */
    /* CUDA graphs of the inference forward, per shape */
    cu_graph graphs[MOOD_CUDA_UNET_GRAPHS];
    unsigned long graph_tick;
    int graphs_off;    /* no_graphs, MOOD_CUDA_GRAPHS=0, mood_cuda_unet_set_graphs(u, 0) */
    int graphs_failed; /* MOOD_E* code of the failure that turned them off for good, or 0 */
    char graphs_error[256];
    uint64_t graph_captures, graph_replays;
};

/* One pass (inference forward, training forward or backward). */
typedef struct cu_pass {
    mood_cuda_unet *u;
    mood_cuda_ctx *ctx;
    const mood_unet *m;
    mood_cuda_dtype dt;
    int B, L;
    const void *ctx_dt;   /* the context (B*L x cross_attention_dim) in dt */
    const float *emb_act; /* silu(time embedding): B x time_embed_dim */
    const void *emb_dt;   /* the same in dt */
    int n_skip;
    float *skip[CU_MAX_SKIPS];
    int skip_c[CU_MAX_SKIPS], skip_h[CU_MAX_SKIPS], skip_w[CU_MAX_SKIPS];
    void *live[CU_MAX_LIVE];
    int n_live;
    double flop;
} cu_pass;

#define TRY(call)                                                                                  \
    do {                                                                                           \
        int try_err_ = (call);                                                                     \
        if (try_err_ < 0)                                                                          \
            return try_err_;                                                                       \
    } while (0)

/* ----- a pass's device memory --------------------------------------------------------------- */

static inline int get(cu_pass *f, void **out, size_t bytes)
{
    if (f->n_live == CU_MAX_LIVE)
        return mood_error_set(MOOD_EINVAL, "cuda unet: more than %d buffers at once", CU_MAX_LIVE);
    TRY(mood_cuda_alloc(f->ctx, out, bytes ? bytes : 1));
    f->live[f->n_live++] = *out;
    return 0;
}

static inline int getf(cu_pass *f, float **out, size_t n)
{
    void *p = NULL;
    TRY(get(f, &p, n * sizeof(float)));
    *out = p;
    return 0;
}

/* Returns a block of the pass to the pool (one the pass does not hold, such as NULL, is
 * ignored). */
static inline void put(cu_pass *f, const void *p)
{
    for (int i = f->n_live - 1; i >= 0; i--) {
        if (f->live[i] == p) {
            mood_cuda_free(f->ctx, f->live[i]);
            f->live[i] = f->live[--f->n_live];
            return;
        }
    }
}

static inline void put_all(cu_pass *f)
{
    while (f->n_live > 0)
        mood_cuda_free(f->ctx, f->live[--f->n_live]);
}

/* Parameter i's float32 device copy (norms, biases; every weight in fp32 mode), NULL for -1. */
static inline const float *P32(const cu_pass *f, int i)
{
    return i >= 0 ? f->u->w[i] : NULL;
}

/* ----- layers (engine/cuda/unet_cuda.c) ----------------------------------------------------- */

/* out (N x l->out) = Linear(inp (N x l->in)) + the layer's side paths, both fp32 (in 16-bit mode
 * the input is rounded for the product; the side paths read the same rounded values). */
int mood__cuda_unet_lin(cu_pass *f, const u_lin *l, float *out, const float *inp, size_t N);
/* The fp32 values the side paths of a layer read for its fp32 input x (n values): x itself in
 * fp32 mode, else x rounded to the pass's 16-bit type and widened back, as the forward gives
 * them; the backward takes the factors' gradients at these values (torch's autocast saves the
 * rounded input too). Release with put() when it is not x. */
int mood__cuda_unet_side_input(cu_pass *f, const float **out, const float *x, size_t n);
/* out (B x out x OH x OW) = conv(inp (B x in x H x W)) + b + the layer's side paths, fp32. */
int mood__cuda_unet_conv(cu_pass *f, const u_conv *c, float *out, const float *inp, int H, int W);
/* GroupNorm over B x C x HW (groups > 0) or LayerNorm over rows x C; out may be inp. stats: NULL,
 * or mean then rstd (B x groups, or rows, each) as the CPU passes keep them. */
int mood__cuda_unet_norm(cu_pass *f, const u_norm *nm, float *out, const float *inp, size_t rows,
                         size_t HW, float *stats);
/* The forward's argument checks (mood_cuda_unet_forward's errors). */
int mood__cuda_unet_check_forward(const mood_cuda_unet *u, const float *out, const float *x,
                                  const float *t, const float *ctx, int B, int H, int W, int L,
                                  const float *text_embeds, const float *time_ids);
/* Makes the device copy of the side paths the model's current ones (placing and copying them
 * when mood_unet_set_side_paths was called since). */
int mood__cuda_unet_sides_ready(mood_cuda_unet *u);

#endif /* MOOD_ENGINE_CUDA_UNET_CUDA_INTERNAL_H */
