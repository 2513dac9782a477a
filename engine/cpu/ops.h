/*
 * ops.h: the CPU backend's layer functions (internal to libmood), in the manner of llm.c: one
 * function per layer over flat row-major float32 buffers the caller owns. The text encoder, the
 * UNet and the VAE are written as sequences of these calls, and the CUDA backend mirrors them
 * one to one, so a kernel is checked against the function of the same name here.
 *
 * Conventions:
 *   - Image tensors are NCHW; token tensors are (rows x channels), rows = batch * tokens.
 *   - Linear and convolution weights are laid out as torch stores them: Linear (out, in),
 *     Conv2d (out, in, kh, kw). y = x W^T + b.
 *   - Forward functions never keep pointers; whatever a backward pass will need (inputs,
 *     normalisation statistics) is either an input the caller keeps or an explicit out-buffer
 *     (NULL when not training), so backward functions can be added beside each one.
 *   - `out` may alias `inp` only where a function says so.
 *   - Results do not depend on the number of OpenMP threads: work is split across independent
 *     output rows or channels; every reduction runs in one fixed order inside one thread.
 */
#ifndef MOOD_ENGINE_CPU_OPS_H
#define MOOD_ENGINE_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

/* out (N x OC) = inp (N x IC) · w^T + bias; w (OC x IC); bias may be NULL. */
void mood_op_linear(float *out, const float *inp, const float *w, const float *bias, size_t N,
                    int IC, int OC);

/* Sizes of a 2-D convolution; output height = (h + 2 pad - k) / stride + 1, likewise width. */
typedef struct mood_conv2d_dims {
    int batch, in_c, h, w; /* input */
    int out_c, k, stride, pad;
} mood_conv2d_dims;

int mood_op_conv2d_out_h(const mood_conv2d_dims *d);
int mood_op_conv2d_out_w(const mood_conv2d_dims *d);
/* Floats of scratch mood_op_conv2d needs (0 for a 1x1, stride-1, unpadded convolution). */
size_t mood_op_conv2d_scratch(const mood_conv2d_dims *d);
/* out (B x OC x OH x OW) = conv2d(inp (B x IC x H x W), w (OC x IC x k x k)) + bias (zero
 * padding, square kernel); bias may be NULL; scratch holds mood_op_conv2d_scratch(d) floats. */
void mood_op_conv2d(float *out, const float *inp, const float *w, const float *bias,
                    const mood_conv2d_dims *d, float *scratch);

/* GroupNorm as torch: per sample and group of C/groups channels, statistics over the group's
 * channels x HW values (biased variance), then per-channel affine. inp, out (B x C x HW); out
 * may alias inp. mean_out, rstd_out (B x groups) may be NULL. */
void mood_op_group_norm(float *out, const float *inp, const float *w, const float *b, int B, int C,
                        size_t HW, int groups, float eps, float *mean_out, float *rstd_out);

/* LayerNorm over the last dimension: inp, out (N x C); out may alias inp. mean_out, rstd_out
 * (N) may be NULL. */
void mood_op_layer_norm(float *out, const float *inp, const float *w, const float *b, size_t N,
                        int C, float eps, float *mean_out, float *rstd_out);

/* Elementwise activations over n floats; out may alias inp. */
void mood_op_silu(float *out, const float *inp, size_t n);       /* x sigmoid(x) */
void mood_op_gelu(float *out, const float *inp, size_t n);       /* exact, erf */
void mood_op_quick_gelu(float *out, const float *inp, size_t n); /* x sigmoid(1.702 x) */

/* diffusers' GEGLU after its projection: inp (N x 2F) holds [a | gate] per row (proj(x).chunk(2)),
 * out (N x F) = a * gelu(gate). */
void mood_op_geglu(float *out, const float *inp, size_t N, int F);

/* out += inp over n floats (residual connections). */
void mood_op_add_inplace(float *out, const float *inp, size_t n);
/* out = a + b over n floats; out may alias a or b. */
void mood_op_add(float *out, const float *a, const float *b, size_t n);
/* x (B x C x HW) += v (B x C): a per-sample, per-channel value broadcast over HW (the time
 * embedding added inside a ResNet block). */
void mood_op_add_channel_bias(float *x, const float *v, int B, int C, size_t HW);

/* Scaled dot-product attention, softmax(q k^T · scale) v, per sample and head.
 * q (B x Tq x H*D), k and v (B x Tk x H*D), out (B x Tq x H*D): head h owns columns
 * [h*D, (h+1)*D) of each row. causal: position i attends to keys 0..i (needs Tq == Tk).
 * scale 0 means 1/sqrt(D). scratch holds mood_op_attention_scratch floats. */
size_t mood_op_attention_scratch(int Tq, int Tk);
void mood_op_attention(float *out, const float *q, const float *k, const float *v, int B, int H,
                       int Tq, int Tk, int D, int causal, float scale, float *scratch);

/* (B x C x HW) <-> (B x HW x C): between the convolutional and the token view of a feature map. */
void mood_op_nchw_to_nhwc(float *out, const float *inp, int B, int C, size_t HW);
void mood_op_nhwc_to_nchw(float *out, const float *inp, int B, int C, size_t HW);

/* Nearest-neighbour 2x upsampling: inp (BC x H x W) -> out (BC x 2H x 2W). */
void mood_op_upsample_nearest2x(float *out, const float *inp, int BC, int H, int W);

/* diffusers' get_timestep_embedding: out (B x dim) from timesteps t (B), half = dim/2 frequencies
 * exp(-ln(max_period) * i / (half - shift)); [sin | cos], swapped to [cos | sin] when
 * flip_sin_to_cos; an odd dim gets a zero last column. */
void mood_op_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                                float shift, float max_period);

/* Channel concatenation: out (B x (Ca + Cb) x HW) = [a (B x Ca x HW) | b (B x Cb x HW)]. */
void mood_op_concat_channels(float *out, const float *a, int Ca, const float *b, int Cb, int B,
                             size_t HW);

/* Runtime LoRA side path of a Linear layer: out (N x OC) += scale · (inp (N x IC) · down^T) · up^T
 * with down (rank x IC), up (OC x rank); tmp holds N x rank floats. (A convolution's side path
 * is two mood_op_conv2d calls: down with the layer's kernel, stride and padding, up 1x1.) */
void mood_op_lora_linear(float *out, const float *inp, const float *down, const float *up, int rank,
                         float scale, size_t N, int IC, int OC, float *tmp);

/* ----- backward ------------------------------------------------------------------------------
 * (engine/cpu/ops_backward.c) For training. Every gradient output is ACCUMULATED (+=), as in
 * llm.c, so a tensor used twice (a residual) receives both contributions; the caller zeroes
 * gradient buffers before a backward pass. Any gradient pointer may be NULL when that gradient
 * is not wanted (frozen weights: dw and dbias NULL, only dinp flows). Inputs are the forward
 * pass's inputs (and the statistics it returned); results do not depend on the thread count. */

void mood_op_linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                             const float *inp, const float *w, size_t N, int IC, int OC);

size_t mood_op_conv2d_backward_scratch(const mood_conv2d_dims *d);
void mood_op_conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout,
                             const float *inp, const float *w, const mood_conv2d_dims *d,
                             float *scratch);

/* mean, rstd: what the forward pass wrote to mean_out / rstd_out. */
void mood_op_group_norm_backward(float *dinp, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, const float *mean,
                                 const float *rstd, int B, int C, size_t HW, int groups);
void mood_op_layer_norm_backward(float *dinp, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, const float *mean,
                                 const float *rstd, size_t N, int C);

void mood_op_silu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void mood_op_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void mood_op_quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
/* inp (N x 2F) as the forward pass got it; dinp (N x 2F). */
void mood_op_geglu_backward(float *dinp, const float *dout, const float *inp, size_t N, int F);

/* Recomputes the softmax from q and k (nothing of the forward pass is kept but its inputs). */
size_t mood_op_attention_backward_scratch(int Tq, int Tk);
void mood_op_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, int B, int H, int Tq, int Tk, int D,
                                int causal, float scale, float *scratch);

void mood_op_upsample_nearest2x_backward(float *dinp, const float *dout, int BC, int H, int W);
/* dv (B x C) += dout (B x C x HW) summed over HW (the gradient of x itself is dout, which the
 * caller passes on). */
void mood_op_add_channel_bias_backward(float *dv, const float *dout, int B, int C, size_t HW);
void mood_op_nchw_to_nhwc_backward(float *dinp, const float *dout, int B, int C, size_t HW);
void mood_op_nhwc_to_nchw_backward(float *dinp, const float *dout, int B, int C, size_t HW);
void mood_op_concat_channels_backward(float *da, float *db, const float *dout, int Ca, int Cb,
                                      int B, size_t HW);

/* The side path out += scale · (inp · down^T) · up^T: gradients of its input and both factors.
 * tmp, dtmp: N x rank floats each (inp · down^T is recomputed into tmp). */
void mood_op_lora_linear_backward(float *dinp, float *ddown, float *dup, const float *dout,
                                  const float *inp, const float *down, const float *up, int rank,
                                  float scale, size_t N, int IC, int OC, float *tmp, float *dtmp);

#endif /* MOOD_ENGINE_CPU_OPS_H */
