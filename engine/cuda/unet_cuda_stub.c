/*
 * unet_cuda_stub.c: the GPU UNet (engine/cuda/unet_cuda.h) in a build without the CUDA backend
 * (MOOD_CUDA=OFF, or no CUDA toolkit): every call fails with MOOD_EUNSUPPORTED, as the backend's
 * own stubs (cuda_ops_stub.c) do, so callers compile and link everywhere and find out at run
 * time.
 */
#include <string.h>

#include "common/common.h"
#include "engine/cuda/unet_cuda.h"

/* The stubs ignore their arguments. */
#pragma GCC diagnostic ignored "-Wunused-parameter"

static int no_cuda(void)
{
    return mood_error_set(MOOD_EUNSUPPORTED, "this build of mood has no CUDA backend (built with "
                                             "MOOD_CUDA=OFF or without the CUDA toolkit)");
}

void mood_cuda_unet_options_init(mood_cuda_unet_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->dtype = MOOD_CUDA_F32;
}

int mood_cuda_unet_new(mood_cuda_unet **out, mood_cuda_ctx *ctx, const mood_unet *m,
                       const mood_cuda_unet_options *opts)
{
    if (out)
        *out = NULL;
    return no_cuda();
}

void mood_cuda_unet_free(mood_cuda_unet *u)
{
}

int mood_cuda_unet_reload(mood_cuda_unet *u, const char *name)
{
    return no_cuda();
}

int mood_cuda_unet_reload_side_paths(mood_cuda_unet *u)
{
    return no_cuda();
}

size_t mood_cuda_unet_bytes(const mood_cuda_unet *u)
{
    return 0;
}

int mood_cuda_unet_forward(mood_cuda_unet *u, float *out, const float *x, const float *timesteps,
                           const float *context, int B, int H, int W, int ctx_len,
                           const float *text_embeds, const float *time_ids)
{
    return no_cuda();
}

int mood_cuda_unet_forward_dev(mood_cuda_unet *u, float *out, const float *x,
                               const float *timesteps, const float *context, int B, int H, int W,
                               int ctx_len, const float *text_embeds, const float *time_ids)
{
    return no_cuda();
}

void mood_cuda_unet_graph_stats_get(const mood_cuda_unet *u, mood_cuda_unet_graph_stats *out)
{
    memset(out, 0, sizeof *out);
}

int mood_cuda_unet_set_graphs(mood_cuda_unet *u, int on)
{
    return 0;
}

void mood_cuda_unet_drop_graphs(mood_cuda_unet *u)
{
}

double mood_cuda_unet_flop(const mood_cuda_unet *u)
{
    return 0.0;
}

int mood_cuda_unet_tape_new(mood_cuda_unet_tape **out, unsigned flags)
{
    if (out)
        *out = NULL;
    return no_cuda();
}

void mood_cuda_unet_tape_free(mood_cuda_unet_tape *t)
{
}

size_t mood_cuda_unet_tape_bytes(const mood_cuda_unet_tape *t)
{
    return 0;
}

int mood_cuda_unet_forward_train(mood_cuda_unet *u, mood_cuda_unet_tape *tape, float *out,
                                 const float *x, const float *timesteps, const float *context,
                                 int B, int H, int W, int ctx_len, const float *text_embeds,
                                 const float *time_ids)
{
    return no_cuda();
}

int mood_cuda_unet_backward(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                            const mood_side_grad *grads, size_t n_grads, float *dcontext)
{
    return no_cuda();
}

int mood_cuda_unet_backward_ex(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                               const mood_side_grad *grads, size_t n_grads, float *dcontext,
                               float *const *weight_grads)
{
    return no_cuda();
}

int mood_cuda_unet_backward_cond(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const float *dout,
                                 const mood_side_grad *grads, size_t n_grads, float *dcontext,
                                 float *dtext_embeds, float *const *weight_grads)
{
    return no_cuda();
}
