/*
 * unet_pass.h: one pass over the UNet, shared by the forward pass (engine/unet_forward.c) and
 * the backward pass (engine/unet_backward.c): the pass's inputs, its stack of activation
 * memory, the records a training forward leaves on its tape for the backward pass, and the
 * layer forwards the backward pass runs again under gradient checkpointing. Not installed.
 *
 * Memory: a pass takes every buffer from one block, in stack order (push, then release by
 * resetting `used` to a mark). Each pass runs twice: a planning pass with the same code, which
 * only counts the floats it would take (push hands out NULL, RUN skips the arithmetic), then
 * the real pass in a block of exactly that size. Code that offsets a pushed pointer must do so
 * through off(), which keeps NULL while planning.
 *
 * Recording (a training forward): every layer writes its output to a fresh buffer instead of
 * reusing its input's, and leaves a record (unet_rec) with its input, output and, unless the
 * tape checkpoints, the intermediate values its backward needs; nothing recorded is released.
 * The backward pass reads the records from the last to the first.
 */
#ifndef MOOD_ENGINE_UNET_PASS_H
#define MOOD_ENGINE_UNET_PASS_H

#include <cblas.h>
#include <limits.h>

#include "engine/unet_internal.h"

#define UNET_MAX_SKIPS (1 + MOOD_UNET_MAX_BLOCKS * UNET_MAX_LAYERS)

/* How a forward pass records (unet_pass.tape). */
enum {
    TAPE_OFF = 0,    /* inference: activations released layer by layer */
    TAPE_KEEP,       /* every layer's intermediate values kept for the backward pass */
    TAPE_CHECKPOINT, /* only layer inputs and outputs kept; the backward pass recomputes the rest
                        of each resnet and transformer block */
};

/* What a backward pass of one ResnetBlock2D needs besides its input. */
typedef struct resnet_acts {
    float *n1;    /* silu(norm1(x)): B x in x HW */
    float *h1;    /* conv1(n1) + time_emb_proj(silu(emb)): B x out x HW */
    float *n2;    /* silu(norm2(h1)): B x out x HW */
    float *tp;    /* time_emb_proj(silu(emb)): B x out */
    float *stats; /* mean, rstd of norm1 then of norm2: 4 x B x groups */
} resnet_acts;

/* What a backward pass of one BasicTransformerBlock needs besides its input; N = B*HW rows of
 * D = inner channels, B*L context rows. */
typedef struct tblock_acts {
    float *ln1, *q1, *k1, *v1, *a1; /* N x D: norm1, self-attention q, k, v, output */
    float *ln2, *q2, *a2;           /* N x D: norm2, cross-attention q, output */
    float *k2, *v2;                 /* B*L x D: cross-attention k, v */
    float *ln3;                     /* N x D */
    float *ff_h;                    /* N x 8D: GEGLU projection [a | gate] */
    float *ff_g;                    /* N x 4D: a * gelu(gate) */
    float *stats;                   /* mean, rstd of norm1, norm2, norm3: 6 x N */
    /* N x D: the residual stream after self- and after cross-attention (the inputs of norm2
     * and norm3); NULL in inference, where the stream is updated in place. */
    float *x1, *x2;
} tblock_acts;

/* A Transformer2DModel's own values (its blocks have records of their own). */
typedef struct transformer_acts {
    float *stats; /* mean, rstd of its GroupNorm: 2 x B x groups */
    float *tok;   /* the normalised input as tokens, proj_in's input: N x C */
    float *x0;    /* proj_in's output, the first block's input: N x inner */
    float *xl;    /* the last block's output, proj_out's input: N x inner */
} transformer_acts;

/* The time embedding's values (B rows each); the *_s are after SiLU. */
typedef struct time_acts {
    float *tp;       /* sinusoidal embedding of the timesteps: B x C0 */
    float *h, *hs;   /* linear_1 output: B x T */
    float *emb;      /* linear_2 output [+ the added embedding], before the SiLU: B x T */
    float *in;       /* SDXL: [text_embeds | embedded time_ids]: B x Pd */
    float *ha, *has; /* SDXL: add_embedding.linear_1 output: B x T */
} time_acts;

enum {
    REC_TIME,
    REC_CONV_IN,
    REC_RESNET,
    REC_TBLOCK,
    REC_TRANSFORMER,
    REC_DOWNSAMPLE,
    REC_UPSAMPLE,
    REC_HEAD /* conv_norm_out, SiLU, conv_out */
};

/* One recorded layer. H, W: its input's size; OH, OW: its output's (samplers). An up block's
 * resnet reads the concatenation [in | skip `skip`], which is not kept (it is rebuilt). */
typedef struct unet_rec {
    int kind;
    const void *layer; /* u_resnet, u_tblock, u_transformer or u_conv */
    const float *in;
    float *out;
    int H, W, OH, OW, skip;
    union {
        resnet_acts r; /* all NULL under checkpointing */
        tblock_acts t; /* all NULL under checkpointing */
        transformer_acts tr;
        time_acts tm;
    } a;
} unet_rec;

/* One pass (forward or backward) over the model. */
typedef struct unet_pass {
    const mood_unet *m;
    int B, L;         /* batch, context tokens */
    const float *ctx; /* B*L x cross_attention_dim */
    float *emb_act;   /* B x time_embed_dim: silu(time embedding) */
    int plan;         /* 1: count memory only */
    int tape;         /* TAPE_*: how a forward records */
    float *base;
    size_t used, peak; /* floats */
    int n_skip, n_skips_made;
    float *skip[UNET_MAX_SKIPS];
    int skip_c[UNET_MAX_SKIPS], skip_h[UNET_MAX_SKIPS], skip_w[UNET_MAX_SKIPS];
    unet_rec *recs; /* the records of a recording forward (also while planning, with NULL
                       pointers), read by the backward pass */
    size_t n_rec, cap_rec;
    int err; /* a failure inside the pass (recording out of memory, a tape out of step) */
    /* backward pass only */
    const mood_side_grad *grads; /* per side path as given to mood_unet_set_side_paths */
    float *const *wgrads;        /* per parameter (mood_unet_weight order; NULL entries not
                                    wanted), or NULL: the base weights' gradients */
    float *dctx;                 /* B*L x cross_attention_dim, or NULL */
    float *dtext;                /* SDXL: B x text_embeds width (the pooled embedding), or NULL */
    float *demb;                 /* B x time_embed_dim: gradient of emb_act */
    size_t cursor;               /* records not yet read */
} unet_pass;

/* A training forward's state, kept until the backward pass (mood/unet.h). */
struct mood_unet_tape {
    int mode; /* TAPE_KEEP or TAPE_CHECKPOINT */
    int valid;
    unet_pass f;            /* the recording pass: sizes, skips, records (f.base is `base`) */
    unsigned long side_gen; /* the model's side paths when recorded */
    float *base;            /* the forward's kept activations */
    size_t cap;             /* floats */
    float *scratch;         /* the backward pass's memory */
    size_t scratch_cap;
};

/* The arithmetic of a step, skipped while planning. */
#define RUN(f) if (!(f)->plan)

/* n floats from the stack (64-byte aligned); NULL while planning. */
static inline float *push(unet_pass *f, size_t n)
{
    float *p = f->plan ? NULL : f->base + f->used;
    f->used += (n + 15) & ~(size_t)15;
    if (f->used > f->peak)
        f->peak = f->used;
    return p;
}

/* p + n, or NULL while planning (p NULL). */
static inline float *off(float *p, size_t n)
{
    return p ? p + n : NULL;
}

static inline const float *P(const unet_pass *f, int i)
{
    return i >= 0 ? f->m->params[i].data : NULL;
}

/* y += a x over n floats. */
static inline void axpy(float *y, const float *x, float a, size_t n)
{
    while (n) {
        int k = n > INT_MAX ? INT_MAX : (int)n;
        cblas_saxpy(k, a, x, 1, y, 1);
        x += k, y += k, n -= (size_t)k;
    }
}

/* ----- layer forwards (engine/unet_forward.c) that the backward pass re-runs ---------------- */

/* Pushes a resnet's activation buffers for a map of HW pixels. */
void mood__unet_resnet_acts_push(unet_pass *f, const u_resnet *r, size_t HW, resnet_acts *a);
/* out (B x out x H x W) = ResnetBlock2D(inp); out must not alias inp. */
void mood__unet_resnet_forward(unet_pass *f, const u_resnet *r, const resnet_acts *a, float *out,
                               const float *inp, int H, int W);
/* Pushes a transformer block's activation buffers for N tokens; keep_stream: x1, x2 too (else
 * NULL: the block updates its stream in place). */
void mood__unet_tblock_acts_push(unet_pass *f, const u_transformer *t, size_t N, int keep_stream,
                                 tblock_acts *a);
/* xout (N x inner) = BasicTransformerBlock(xin); xout may be xin when a->x1, x2 are NULL. */
void mood__unet_tblock_forward(unet_pass *f, const u_transformer *t, const u_tblock *k,
                               const tblock_acts *a, float *xout, const float *xin, size_t HW);
/* Floats for the concatenation buffer and for each of the two ping-pong buffers of the mid and
 * up blocks, from the skips f->skip_* (all made, none consumed yet). */
void mood__unet_up_buffers(const unet_pass *f, size_t *cat_n, size_t *cur_n);
/* Nearest-neighbour resize as torch's interpolate (2x or to any size): BC planes. */
void mood__unet_upsample(float *out, const float *inp, int BC, int H, int W, int OH, int OW);
/* Its backward (engine/unet_backward.c): din (BC x H x W) += the sum of dout (BC x OH x OW) over
 * each source pixel's copies (also the CPU twin of mood_cuda_op_upsample_nearest_backward). */
void mood__unet_upsample_backward(float *din, const float *dout, int BC, int H, int W, int OH,
                                  int OW);

/* The backward pass of a recorded forward (engine/unet_backward.c): dout B x out x H x W. */
void mood__unet_backward_run(unet_pass *g, const unet_pass *f, const float *dout);

#endif /* MOOD_ENGINE_UNET_PASS_H */
