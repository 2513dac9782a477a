/*
 * unet_internal.h: the in-memory UNet shared by engine/unet.c (structure, layers, side paths,
 * the weight API), engine/unet_load.c (config.json, single-file inference, loading) and the
 * passes (unet_pass.h).
 * Not installed.
 *
 * A model is its config, a table of parameters with diffusers state-dict names (declared in
 * module order by mood__unet_build, then filled by the loader; all data in one float32 allocation),
 * and layer descriptors that refer to parameters by index, so that a layer's side paths can be
 * found from its weight.
 */
#ifndef MOOD_ENGINE_UNET_INTERNAL_H
#define MOOD_ENGINE_UNET_INTERNAL_H

#include "common/common.h"
#include "mood/unet.h"

/* Resnets per block (layers_per_block + 1 in up blocks) that mood accepts. */
#define UNET_MAX_LAYERS 8

typedef struct unet_param {
    char *name;       /* diffusers state-dict name */
    int ndim;         /* 1 (norms, biases), 2 (Linear), 4 (Conv2d) */
    int64_t shape[4]; /* torch's shape, unused entries 0 */
    size_t numel;
    size_t offset; /* floats into mood_unet.data */
    float *data;
    size_t side_first; /* its side paths: mood_unet.sides[side_first .. + side_n) */
    int side_n;
} unet_param;

/* A Linear layer, or a 1x1 Conv2d applied to tokens (SD1's proj_in/proj_out): the (out, in)
 * and (out, in, 1, 1) weights are the same matrix. w, b: parameter indices (b -1: no bias). */
typedef struct u_lin {
    int w, b;
    int in, out;
} u_lin;

typedef struct u_conv {
    int w, b;
    int in, out, k, stride, pad;
} u_conv;

typedef struct u_norm { /* GroupNorm (groups > 0) or LayerNorm (groups 0) */
    int w, b;
    int C, groups;
    float eps;
} u_norm;

typedef struct u_resnet { /* diffusers ResnetBlock2D, time_embedding_norm "default" */
    u_norm norm1, norm2;
    u_conv conv1, conv2, shortcut; /* shortcut.w < 0: identity */
    u_lin temb;
    int in, out;
    float out_scale; /* output_scale_factor */
} u_resnet;

typedef struct u_tblock { /* BasicTransformerBlock: self-attn, cross-attn, GEGLU FF */
    u_norm norm1, norm2, norm3;
    u_lin q1, k1, v1, o1, q2, k2, v2, o2, ff1, ff2;
} u_tblock;

typedef struct u_transformer { /* Transformer2DModel (continuous input) */
    u_norm norm;
    u_lin proj_in, proj_out;
    int C, inner, heads, depth;
    u_tblock *blocks;
} u_transformer;

typedef struct u_block { /* a down or up block, or the mid block (res[0], attn[0], res[1]) */
    int n;               /* resnets */
    int has_attn;        /* a transformer after each resnet */
    u_resnet res[UNET_MAX_LAYERS];
    u_transformer attn[UNET_MAX_LAYERS];
    u_conv sampler; /* downsampler or upsampler conv; w < 0: none */
} u_block;

struct mood_unet {
    mood_unet_config cfg;
    unet_param *params;
    size_t n_params, cap_params;
    unet_param **by_name; /* the parameters sorted by name */
    float *data;
    u_lin time1, time2, add1, add2; /* add*: SDXL text_time only */
    u_conv conv_in, conv_out;
    u_norm norm_out;
    u_block down[MOOD_UNET_MAX_BLOCKS], up[MOOD_UNET_MAX_BLOCKS], mid;
    mood_side_path *sides; /* grouped by parameter */
    size_t *side_src;      /* each one's index in the array given to mood_unet_set_side_paths */
    size_t n_sides;
    unsigned long side_gen; /* counts mood_unet_set_side_paths calls (a tape checks it) */
};

/* Declares every parameter of m->cfg (names, shapes, layer descriptors) and allocates the data
 * (uninitialised). Errors: MOOD_EINVAL (an inconsistent config, named), MOOD_ENOMEM. */
int mood__unet_build(mood_unet *m);
/* Index of the parameter named `name`, or -1. */
long mood__unet_find(const mood_unet *m, const char *name);

#endif /* MOOD_ENGINE_UNET_INTERNAL_H */
