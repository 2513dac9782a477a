/*
 * test_cuda_unet_train.c: the GPU UNet's training passes (mood_cuda_unet_forward_train and
 * mood_cuda_unet_backward, engine/cuda/unet_cuda.h) against the CPU's (mood_unet_forward_train and
 * mood_unet_backward, mood/unet.h, themselves checked against torch autograd in
 * test_unet_backward.c).
 *
 * Models: the tiny diffusers UNets tests/fixtures/unet/sd1 (1x1 conv proj_in/out, a mid block)
 * and unet/sdxl (Linear projections, transformer depth 2, SDXL's text_time added embedding), with
 * a runtime side path on every Linear and Conv2d weight (rank 1 to 3, and dense rank 0 paths),
 * a second path on every fifth weight, scales of both signs. Random inputs of odd sizes: batch
 * 2, a 7 x 9 latent (its downsampled 4 x 5 map is upsampled back to 7 x 9, not 2x: the general
 * nearest upsampling and its backward), 5 context tokens, random timesteps, time ids and dL/d(out).
 *
 * Checked, errors as max |gpu - cpu| / max |cpu| (fp32 on both sides, products in true fp32:
 * the context does not allow TF32):
 *   - the forward_train output vs the CPU's within 1e-4, and vs the GPU inference forward
 *     (mood_cuda_unet_forward_dev) within 1e-5 (the same layer functions in the same order);
 *   - the factor gradients of every side path: all of them within 1e-4 of the largest CPU factor
 *     gradient, and each factor within 5e-4 of its own largest (the scheme test_unet_backward.c
 *     uses against torch); dL/d(context) within 1e-4;
 *   - gradient checkpointing (MOOD_UNET_TAPE_CHECKPOINT): the same output and gradients as the
 *     full tape within 1e-5 (the activations computed again are the same operations on the same
 *     inputs), from a tape of less than half the bytes;
 *   - gradients accumulate: a second backward on the same tape doubles them (vs 2x the CPU's);
 *   - NULL entries are skipped: with half of the factors' entries and the context's NULL, the
 *     others get the same gradients;
 *   - a training step (forward_train + backward) of the same size as the last makes no
 *     cudaMalloc: the tape's and the backward pass's blocks come back from the pool;
 *   - bf16 training (a MOOD_CUDA_BF16 model: bf16 weights and product inputs, fp32 activations
 *     and gradients, with the full tape and under checkpointing, which must agree within 1e-5)
 *     against the CPU's fp32 step: output and factor gradients within 5e-2 of
 *     the largest, each factor within 0.3 of its own largest, the context's within 0.15 (the
 *     scale of bf16's rounding here: at TOL_BF16_OUT);
 *   - full-parameter training (mood_cuda_unet_backward_ex, from a checkpointing tape): every base
 *     weight's gradient against the CPU's mood_unet_backward_ex, with the factors' tolerances;
 *   - SDXL's text_embeds gradient (mood_cuda_unet_backward_cond) against the CPU's, within 1e-4;
 *   - refusals: an fp16 model, the weights' gradients of a bf16 model, a text_embeds gradient
 *     without text_time conditioning, unknown tape flags, an empty
 * tape, another model's tape, side paths set again since the forward, a wrong gradient count. Why
 * these tolerances hold a real GPU's other summation orders: this file run on the CPU with every
 * backend function replaced by its CPU twin, each product's, norm's and attention's output (forward
 * and backward) then given a random relative error up to 3e-7 (a few fp32 roundings), gives at
 * most 2.6e-6 overall and 2.6e-5 for a factor against its own largest (1.5e-6 for the output, 5e-6
 * for the context gradient); the CPU against torch in float64 (test_unet_backward.c) is off by up
 * to 2.3e-5 and 9.9e-5. A wrong buffer, record or scale gives errors of order 1e-3 to 1 (checked
 * the same way, with such bugs put in).
 *
 * Label `cuda`. Without the CUDA backend or a GPU, the refusals that need no device run and the
 * program exits 77 (skipped).
 */
#include "cuda_harness.h"

#include <math.h>
#include <stdint.h>

#include "common/common.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/cuda/unet_cuda.h"
#include "mood/unet.h"

#define TOL_OUT      1e-4 /* GPU vs CPU: outputs, context gradient, all factor gradients */
#define TOL_FACTOR   5e-4 /* GPU vs CPU: each factor gradient against its own largest */
#define TOL_SAME_GPU 1e-5 /* forward_train vs the GPU inference forward */
/* bf16 training vs the CPU's fp32 step. bf16 keeps 8 significant bits: each product's operands
 * are rounded by up to 2^-9 = 2e-3, and the random weights of the tiny models amplify that along
 * a gradient's path. For scale: the fp32 passes with every product's output given a random
 * relative error of 2e-3 (EMU_NOISE=2e-3) are off by 0.009 (output), 0.011 (all factors), 0.069
 * (a factor against its own largest) and 0.018 (context); bf16 here: 0.013, 0.023, 0.15, 0.070.
 * A wrong buffer or a missing gradient gives errors of order 1. */
#define TOL_BF16_OUT    5e-2   /* outputs, all factor gradients */
#define TOL_BF16_CTX    1.5e-1 /* the context gradient (a sum over every cross-attention) */
#define TOL_BF16_FACTOR 3e-1   /* each factor gradient against its own largest */

static mood_cuda_ctx *ctx;

static const char *const models[] = {"unet/sd1", "unet/sdxl"};

/* ----- host helpers ------------------------------------------------------------------------- */

/* n floats uniform in (lo, hi), malloc'd. */
static float *rand_buf(size_t n, float lo, float hi)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; p && i < n; i++)
        p[i] = lo + (hi - lo) * 0.5f * (harness_rnd() + 1.0f);
    return p;
}

/* Checks max |got - want| / max |want| <= tol, printing the figure; returns the error. */
static double compare(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double e = harness_rel_diff(got, want, n, 1e-30);
    int bad = !(e <= tol);
    printf("  %-52s rel %.3g  (tol %.2g)%s\n", what, e, tol, bad ? "  FAIL" : "");
    MOOD_CHECK_MSG(!bad, "%s: relative error %.3g > %.2g", what, e, tol);
    return e;
}

/* ----- device helpers ----------------------------------------------------------------------- */

/* A device copy of h (n floats), or zeros when h is NULL; NULL on failure (reported). */
static float *dev_new(const float *h, size_t n)
{
    void *d = NULL;
    int rc = mood_cuda_alloc(ctx, &d, (n ? n : 1) * sizeof(float));
    if (rc == 0)
        rc = h ? mood_cuda_upload(ctx, d, h, n * sizeof(float))
               : mood_cuda_memset0(ctx, d, n * sizeof(float));
    MOOD_CHECK_MSG(rc == 0, "device buffer of %zu floats: %s", n, mood_error_last());
    if (rc != 0) {
        mood_cuda_free(ctx, d);
        return NULL;
    }
    return d;
}

/* A host copy of the device buffer d (n floats), malloc'd; NULL on failure (reported). */
static float *host_of(const float *d, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    int rc = h && d ? mood_cuda_download(ctx, h, d, n * sizeof(float)) : -1;
    MOOD_CHECK_MSG(rc == 0, "download of %zu floats: %s", n, mood_error_last());
    if (rc != 0) {
        free(h);
        return NULL;
    }
    return h;
}

/* ----- side paths --------------------------------------------------------------------------- */

/* Side paths on a model, their factors, and the sizes of their gradients (owned). */
typedef struct side_set {
    mood_side_path *p;
    size_t n;
    float **down, **up; /* per path (down NULL for rank 0) */
    size_t *n_down, *n_up;
} side_set;

static void side_set_free(side_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->down[i]), free(s->up[i]);
    free(s->down), free(s->up), free(s->n_down), free(s->n_up), free(s->p);
    memset(s, 0, sizeof *s);
}

/* A path on every Linear and Conv2d weight of m, a second one on every fifth: rank (i + j) % 4
 * (0: dense ΔW in the weight's shape), scale 0.6 or -0.8, factors drawn so that ΔW's entries
 * have about 0.3 times the weight's rms (the paths matter, as a trained LoRA's do). */
static void side_set_make(side_set *s, mood_unet *m)
{
    size_t nw = mood_unet_weight_count(m), cap = 2 * nw;
    memset(s, 0, sizeof *s);
    s->p = calloc(cap, sizeof *s->p);
    s->down = calloc(cap, sizeof *s->down), s->up = calloc(cap, sizeof *s->up);
    s->n_down = calloc(cap, sizeof *s->n_down), s->n_up = calloc(cap, sizeof *s->n_up);
    for (size_t i = 0; s->p && s->down && s->up && s->n_down && s->n_up && i < nw; i++) {
        size_t numel, out;
        float rms;
        const char *name = harness_unet_layer_weight(m, i, &numel, &out, &rms);
        if (!name)
            continue;
        float a = 0.3f * rms * sqrtf(3.0f);
        for (size_t j = 0; j < (i % 5 == 0 ? 2u : 1u); j++) {
            size_t k = s->n++;
            mood_side_path *sp = &s->p[k];
            sp->weight = name;
            sp->rank = (int)((i + j) % 4);
            sp->scale = (i + j) % 3 == 0 ? -0.8f : 0.6f;
            if (sp->rank == 0) { /* uniform (-a, a) has rms a / sqrt(3) */
                s->n_up[k] = numel;
                sp->up = s->up[k] = rand_buf(numel, -a, a);
                continue;
            }
            /* entries of up . down: rank products of rms a/sqrt(3) and 1/sqrt(3) */
            s->n_down[k] = (size_t)sp->rank * (numel / out);
            s->n_up[k] = out * (size_t)sp->rank;
            sp->down = s->down[k] = rand_buf(s->n_down[k], -1.0f, 1.0f);
            sp->up = s->up[k] = rand_buf(s->n_up[k], -3.0f * a / sqrtf((float)sp->rank),
                                         3.0f * a / sqrtf((float)sp->rank));
        }
    }
    MOOD_CHECK(s->p && s->down && s->up && s->n_down && s->n_up && s->n > 0);
}

/* Gradient buffers for a side set: host (zeroed) or device (zeroed), entry i for path i. */
typedef struct grad_set {
    mood_side_grad *g;
    size_t n;
    int dev;
} grad_set;

static void grad_set_free(grad_set *gs)
{
    for (size_t i = 0; gs->g && i < gs->n; i++) {
        if (gs->dev) {
            mood_cuda_free(ctx, gs->g[i].ddown);
            mood_cuda_free(ctx, gs->g[i].dup);
        } else {
            free(gs->g[i].ddown), free(gs->g[i].dup);
        }
    }
    free(gs->g);
    memset(gs, 0, sizeof *gs);
}

/* Zeroed gradient buffers for every factor of s; on the device when dev. */
static void grad_set_make(grad_set *gs, const side_set *s, int dev)
{
    gs->n = s->n, gs->dev = dev;
    gs->g = calloc(s->n ? s->n : 1, sizeof *gs->g);
    for (size_t i = 0; gs->g && i < s->n; i++) {
        if (s->n_down[i])
            gs->g[i].ddown =
                dev ? dev_new(NULL, s->n_down[i]) : calloc(s->n_down[i], sizeof(float));
        gs->g[i].dup = dev ? dev_new(NULL, s->n_up[i]) : calloc(s->n_up[i], sizeof(float));
    }
    MOOD_CHECK(gs->g != NULL);
}

/* The factor gradients of gpu (device; NULL entries not compared) against cpu (host) times k:
 * each within tol_all of the largest CPU factor gradient and within tol_own of its own largest;
 * prints the worst of each. */
static void compare_grads_tol(const char *label, const side_set *s, const grad_set *gpu,
                              const grad_set *cpu, float k, double tol_all, double tol_own)
{
    double big = 1e-30, worst_all = 0.0, worst_own = 0.0;
    size_t worst_i = 0, compared = 0;
    char what[128];
    for (size_t i = 0; i < s->n; i++) {
        for (int f = 0; f < 2; f++) {
            size_t n = f ? s->n_up[i] : s->n_down[i];
            const float *want = f ? cpu->g[i].dup : cpu->g[i].ddown;
            for (size_t e = 0; want && e < n; e++)
                big = fmax(big, fabs((double)k * want[e]));
        }
    }
    for (size_t i = 0; i < s->n; i++) {
        for (int f = 0; f < 2; f++) {
            size_t n = f ? s->n_up[i] : s->n_down[i];
            const float *want = f ? cpu->g[i].dup : cpu->g[i].ddown;
            const float *dgot = f ? gpu->g[i].dup : gpu->g[i].ddown;
            float *got = n && dgot ? host_of(dgot, n) : NULL;
            double d = 0.0, own = 1e-30;
            if (!got)
                continue;
            for (size_t e = 0; e < n; e++) {
                double w = (double)k * want[e], de = fabs((double)got[e] - w);
                d = de > d || de != de ? de : d;
                own = fmax(own, fabs(w));
            }
            free(got);
            compared++;
            if (!(d / big <= worst_all))
                worst_all = d / big;
            if (!(d / own <= worst_own))
                worst_own = d / own, worst_i = i;
            MOOD_CHECK_MSG(d / big <= tol_all && d / own <= tol_own,
                           "%s: path %zu (%s, rank %d) %s: %.3g of the largest gradient, %.3g of "
                           "its own",
                           label, i, s->p[i].weight, s->p[i].rank, f ? "up" : "down", d / big,
                           d / own);
        }
    }
    snprintf(what, sizeof what, "%s: %zu factor gradients", label, compared);
    printf("  %-52s rel %.3g  (tol %.0e); each %.3g (tol %.0e, path %zu %s)%s\n", what, worst_all,
           tol_all, worst_own, tol_own, worst_i, s->n ? s->p[worst_i].weight : "",
           worst_all <= tol_all && worst_own <= tol_own ? "" : "  FAIL");
    MOOD_CHECK(compared > 0);
}

/* compare_grads_tol with the fp32 tolerances. */
static void compare_grads(const char *label, const side_set *s, const grad_set *gpu,
                          const grad_set *cpu, float k)
{
    compare_grads_tol(label, s, gpu, cpu, k, TOL_OUT, TOL_FACTOR);
}

/* max |a - b| over every factor gradient of two device sets / the largest |b|. */
static double dev_grads_diff(const side_set *s, const grad_set *a, const grad_set *b)
{
    double d = 0.0, big = 1e-30;
    for (size_t i = 0; i < s->n; i++) {
        for (int f = 0; f < 2; f++) {
            size_t n = f ? s->n_up[i] : s->n_down[i];
            float *ha = n ? host_of(f ? a->g[i].dup : a->g[i].ddown, n) : NULL;
            float *hb = n ? host_of(f ? b->g[i].dup : b->g[i].ddown, n) : NULL;
            for (size_t e = 0; ha && hb && e < n; e++) {
                double de = fabs((double)ha[e] - hb[e]);
                d = de > d || de != de ? de : d;
                big = fmax(big, fabs((double)hb[e]));
            }
            free(ha), free(hb);
        }
    }
    return d / big;
}

/* ----- a model and a step ------------------------------------------------------------------- */

/* Random inputs of a step, on the host and the device (x, t, ctx, te, ids, dout). */
typedef struct step_in {
    int B, H, W, L;
    size_t n[6];
    float *h[6], *d[6];
} step_in;
enum { IN_X, IN_T, IN_CTX, IN_TE, IN_IDS, IN_DOUT };

static void step_in_free(step_in *in)
{
    for (int i = 0; i < 6; i++) {
        free(in->h[i]);
        mood_cuda_free(ctx, in->d[i]);
    }
    memset(in, 0, sizeof *in);
}

static void step_in_make(step_in *in, const mood_unet *m, int B, int H, int W, int L)
{
    const mood_unet_config *c = mood_unet_get_config(m);
    size_t E = (size_t)(c->projection_class_embeddings_input_dim - 6 * c->addition_time_embed_dim);
    float lo[6] = {-2.0f, 0.0f, -1.0f, -1.0f, 0.0f, -1.0f};
    float hi[6] = {2.0f, 999.0f, 1.0f, 1.0f, 1024.0f, 1.0f};
    memset(in, 0, sizeof *in);
    in->B = B, in->H = H, in->W = W, in->L = L;
    in->n[IN_X] = (size_t)B * c->in_channels * H * W, in->n[IN_T] = (size_t)B;
    in->n[IN_CTX] = (size_t)B * L * c->cross_attention_dim;
    in->n[IN_TE] = c->addition_embed_text_time ? (size_t)B * E : 0;
    in->n[IN_IDS] = c->addition_embed_text_time ? (size_t)B * 6 : 0;
    in->n[IN_DOUT] = (size_t)B * c->out_channels * H * W;
    for (int i = 0; i < 6; i++) {
        if (!in->n[i])
            continue;
        in->h[i] = rand_buf(in->n[i], lo[i], hi[i]);
        if (ctx)
            in->d[i] = dev_new(in->h[i], in->n[i]);
    }
}

/* The CPU's training step: *out (malloc'd) and the gradients into cg and dctx (host). */
static int cpu_step(mood_unet *m, const step_in *in, float **out, grad_set *cg, float *dctx)
{
    mood_unet_tape *tape = NULL;
    int rc;
    *out = calloc(in->n[IN_DOUT], sizeof **out);
    MOOD_CHECK_OK(rc = mood_unet_tape_new(&tape, 0));
    if (rc == 0)
        MOOD_CHECK_OK(rc = mood_unet_forward_train(m, tape, *out, in->h[IN_X], in->h[IN_T],
                                                   in->h[IN_CTX], in->B, in->H, in->W, in->L,
                                                   in->h[IN_TE], in->h[IN_IDS]));
    if (rc == 0)
        MOOD_CHECK_OK(rc = mood_unet_backward(m, tape, in->h[IN_DOUT], cg->g, cg->n, dctx));
    mood_unet_tape_free(tape);
    return rc;
}

/* The GPU's forward_train into dout_dev (device, the output) recording onto tape. */
static int gpu_forward_train(mood_cuda_unet *u, mood_cuda_unet_tape *tape, const step_in *in,
                             float *out_dev)
{
    int rc;
    MOOD_CHECK_OK(rc = mood_cuda_unet_forward_train(u, tape, out_dev, in->d[IN_X], in->d[IN_T],
                                                    in->d[IN_CTX], in->B, in->H, in->W, in->L,
                                                    in->d[IN_TE], in->d[IN_IDS]));
    return rc;
}

/* ----- tests -------------------------------------------------------------------------------- */

/* Gradient checkpointing against the full tape's step (its output `out` on the host, factor
 * gradients `full`, context gradient `dctx_full` on the device, `full_bytes` on its tape). */
static void check_checkpointing(const char *rel, mood_cuda_unet *u, const step_in *in,
                                const side_set *ss, const grad_set *full, const float *out,
                                const float *dctx_full, size_t full_bytes)
{
    mood_cuda_unet_tape *tape = NULL;
    grad_set gk = {0};
    float *gout = NULL, *dctx = NULL, *h = NULL, *hd = NULL, *hf = NULL;
    size_t n_ctx = in->n[IN_CTX], bytes;
    double e;
    char what[128];
    MOOD_CHECK_OK(mood_cuda_unet_tape_new(&tape, MOOD_UNET_TAPE_CHECKPOINT));
    gout = dev_new(NULL, in->n[IN_DOUT]);
    dctx = dev_new(NULL, n_ctx);
    grad_set_make(&gk, ss, 1);
    if (!tape || !gout || !dctx || !gk.g || gpu_forward_train(u, tape, in, gout) != 0)
        goto done;
    bytes = mood_cuda_unet_tape_bytes(tape);
    printf("  %-52s %.2f MB on the tape (full: %.2f MB)\n", "checkpointing", (double)bytes / 1e6,
           (double)full_bytes / 1e6);
    MOOD_CHECK_MSG(bytes > 0 && 2 * bytes < full_bytes,
                   "%s: checkpointing tape %zu bytes, full %zu", rel, bytes, full_bytes);
    if ((h = host_of(gout, in->n[IN_DOUT]))) {
        snprintf(what, sizeof what, "%s checkpointing: output vs full tape", rel);
        compare(what, h, out, in->n[IN_DOUT], TOL_SAME_GPU);
    }
    MOOD_CHECK_OK(mood_cuda_unet_backward(u, tape, in->d[IN_DOUT], gk.g, gk.n, dctx));
    e = dev_grads_diff(ss, &gk, full);
    snprintf(what, sizeof what, "%s checkpointing: gradients vs full tape", rel);
    printf("  %-52s rel %.3g  (tol %.0e)%s\n", what, e, TOL_SAME_GPU,
           e <= TOL_SAME_GPU ? "" : "  FAIL");
    MOOD_CHECK_MSG(e <= TOL_SAME_GPU, "%s: checkpointing gradients off by %.3g", rel, e);
    if ((hd = host_of(dctx, n_ctx)) && (hf = host_of(dctx_full, n_ctx))) {
        snprintf(what, sizeof what, "%s checkpointing: dL/d(context) vs full", rel);
        compare(what, hd, hf, n_ctx, TOL_SAME_GPU);
    }
done:
    free(h), free(hd), free(hf);
    mood_cuda_free(ctx, gout), mood_cuda_free(ctx, dctx);
    grad_set_free(&gk);
    mood_cuda_unet_tape_free(tape);
}

/* bf16 training (unet_cuda.h, "Precision") on model m against the CPU's fp32 step (its output
 * `cpu_out`, factor gradients `cg`, context gradient `cpu_dctx`): the same within bf16's
 * rounding, from a model whose matrices take half the memory. */
static void check_bf16(const char *rel, mood_unet *m, const step_in *in, const side_set *ss,
                       const float *cpu_out, const grad_set *cg, const float *cpu_dctx)
{
    mood_cuda_unet_options o;
    mood_cuda_unet *u = NULL;
    mood_cuda_unet_tape *tape = NULL;
    grad_set gb = {0};
    float *gout = NULL, *dctx = NULL, *h = NULL, *hout = NULL;
    char what[128], label[96];
    mood_cuda_unet_options_init(&o);
    o.dtype = MOOD_CUDA_BF16;
    MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, &o));
    MOOD_CHECK_OK(mood_cuda_unet_tape_new(&tape, 0));
    gout = dev_new(NULL, in->n[IN_DOUT]);
    dctx = dev_new(NULL, in->n[IN_CTX]);
    grad_set_make(&gb, ss, 1);
    if (!u || !tape || !gout || !dctx || !gb.g || gpu_forward_train(u, tape, in, gout) != 0)
        goto done;
    if ((hout = host_of(gout, in->n[IN_DOUT]))) {
        snprintf(what, sizeof what, "%s bf16 forward_train vs cpu fp32", rel);
        compare(what, hout, cpu_out, in->n[IN_DOUT], TOL_BF16_OUT);
    }
    MOOD_CHECK_OK(mood_cuda_unet_backward(u, tape, in->d[IN_DOUT], gb.g, gb.n, dctx));
    snprintf(what, sizeof what, "%s bf16 backward vs cpu fp32", rel);
    compare_grads_tol(what, ss, &gb, cg, 1.0f, TOL_BF16_OUT, TOL_BF16_FACTOR);
    if ((h = host_of(dctx, in->n[IN_CTX]))) {
        snprintf(what, sizeof what, "%s bf16 backward: dL/d(context)", rel);
        compare(what, h, cpu_dctx, in->n[IN_CTX], TOL_BF16_CTX);
    }
    /* gradient checkpointing in bf16: the same as the full tape (the same rounded products) */
    snprintf(label, sizeof label, "%s bf16", rel);
    if (hout)
        check_checkpointing(label, u, in, ss, &gb, hout, dctx, mood_cuda_unet_tape_bytes(tape));
done:
    free(h), free(hout);
    mood_cuda_free(ctx, gout), mood_cuda_free(ctx, dctx);
    grad_set_free(&gb);
    mood_cuda_unet_tape_free(tape);
    mood_cuda_unet_free(u);
}

/* Full-parameter training (mood_cuda_unet_backward_ex): every base weight's gradient against the
 * CPU's mood_unet_backward_ex on the same step, and a bf16 model refused. Each weight's gradient
 * within TOL_OUT of the largest of all and TOL_FACTOR of its own largest (as the factors). */
static void check_weight_grads(const char *rel, mood_unet *m, mood_cuda_unet *u, const step_in *in)
{
    size_t nw = mood_unet_weight_count(m), worst_i = 0, compared = 0;
    float **cw = calloc(nw, sizeof *cw), **gw = calloc(nw, sizeof *gw), *out = NULL, *gout = NULL;
    mood_unet_tape *ct = NULL;
    mood_cuda_unet_tape *tape = NULL;
    double big = 1e-30, worst_all = 0, worst_own = 0;
    char what[128];
    for (size_t i = 0; cw && gw && i < nw; i++) {
        cw[i] = calloc(mood_unet_weight_numel(m, i) + 1, sizeof **cw);
        gw[i] = dev_new(NULL, mood_unet_weight_numel(m, i) + 1);
    }
    out = calloc(in->n[IN_DOUT], sizeof *out);
    MOOD_CHECK_OK(mood_unet_tape_new(&ct, 0));
    MOOD_CHECK_OK(mood_cuda_unet_tape_new(&tape, MOOD_UNET_TAPE_CHECKPOINT));
    gout = dev_new(NULL, in->n[IN_DOUT]);
    if (!cw || !gw || !out || !ct || !tape || !gout)
        goto done;
    MOOD_CHECK_OK(mood_unet_forward_train(m, ct, out, in->h[IN_X], in->h[IN_T], in->h[IN_CTX],
                                          in->B, in->H, in->W, in->L, in->h[IN_TE], in->h[IN_IDS]));
    MOOD_CHECK_OK(mood_unet_backward_ex(m, ct, in->h[IN_DOUT], NULL, 0, NULL, cw));
    if (gpu_forward_train(u, tape, in, gout) != 0)
        goto done;
    MOOD_CHECK_OK(mood_cuda_unet_backward_ex(u, tape, in->d[IN_DOUT], NULL, 0, NULL, gw));
    for (size_t i = 0; i < nw; i++)
        for (size_t e = 0; e < mood_unet_weight_numel(m, i); e++)
            big = fmax(big, fabs(cw[i][e]));
    for (size_t i = 0; i < nw; i++) {
        size_t n = mood_unet_weight_numel(m, i);
        float *h = host_of(gw[i], n + 1);
        double d = 0, own = 1e-30;
        if (!h)
            continue;
        for (size_t e = 0; e < n; e++) {
            double de = fabs((double)h[e] - cw[i][e]);
            d = de > d || de != de ? de : d;
            own = fmax(own, fabs(cw[i][e]));
        }
        free(h);
        compared++;
        worst_all = fmax(worst_all, d / big);
        if (!(d / own <= worst_own))
            worst_own = d / own, worst_i = i;
        MOOD_CHECK_MSG(d / big <= TOL_OUT && d / own <= TOL_FACTOR,
                       "%s: weight %s: %.3g of the largest gradient, %.3g of its own", rel,
                       mood_unet_weight_name(m, i), d / big, d / own);
    }
    snprintf(what, sizeof what, "%s backward_ex: %zu weights' gradients", rel, compared);
    printf("  %-52s rel %.3g  (tol %.0e); each %.3g (tol %.0e, %s)\n", what, worst_all, TOL_OUT,
           worst_own, TOL_FACTOR, nw ? mood_unet_weight_name(m, worst_i) : "");
    MOOD_CHECK(compared == nw && nw > 0);
done:
    for (size_t i = 0; i < nw; i++) {
        if (cw)
            free(cw[i]);
        if (gw)
            mood_cuda_free(ctx, gw[i]);
    }
    free(cw), free(gw), free(out);
    mood_cuda_free(ctx, gout);
    mood_unet_tape_free(ct);
    mood_cuda_unet_tape_free(tape);
}

/* SDXL's text_embeds gradient (mood_cuda_unet_backward_cond, a trained text encoder 2's share)
 * against the CPU's mood_unet_backward_cond on the same step; refused on a model without
 * text_time conditioning. */
static void check_text_embeds(const char *rel, mood_unet *m, mood_cuda_unet *u, const step_in *in)
{
    mood_unet_tape *ct = NULL;
    mood_cuda_unet_tape *tape = NULL;
    float *out = NULL, *gout = NULL, *cd = NULL, *gd = NULL, *h = NULL;
    size_t n = in->n[IN_TE] ? in->n[IN_TE] : 1;
    char what[128];
    MOOD_CHECK_OK(mood_cuda_unet_tape_new(&tape, 0));
    gout = dev_new(NULL, in->n[IN_DOUT]);
    gd = dev_new(NULL, n);
    if (!tape || !gout || !gd || gpu_forward_train(u, tape, in, gout) != 0)
        goto done;
    if (!in->n[IN_TE]) {
        MOOD_CHECK(mood_cuda_unet_backward_cond(u, tape, in->d[IN_DOUT], NULL, 0, NULL, gd, NULL) ==
                   MOOD_EINVAL);
        goto done;
    }
    out = calloc(in->n[IN_DOUT], sizeof *out);
    cd = calloc(n, sizeof *cd);
    MOOD_CHECK_OK(mood_unet_tape_new(&ct, 0));
    if (!out || !cd || !ct)
        goto done;
    MOOD_CHECK_OK(mood_unet_forward_train(m, ct, out, in->h[IN_X], in->h[IN_T], in->h[IN_CTX],
                                          in->B, in->H, in->W, in->L, in->h[IN_TE], in->h[IN_IDS]));
    MOOD_CHECK_OK(mood_unet_backward_cond(m, ct, in->h[IN_DOUT], NULL, 0, NULL, cd, NULL));
    MOOD_CHECK_OK(mood_cuda_unet_backward_cond(u, tape, in->d[IN_DOUT], NULL, 0, NULL, gd, NULL));
    if ((h = host_of(gd, n))) {
        snprintf(what, sizeof what, "%s backward_cond: dL/d(text_embeds)", rel);
        compare(what, h, cd, n, TOL_OUT);
    }
done:
    free(out), free(cd), free(h);
    mood_cuda_free(ctx, gout), mood_cuda_free(ctx, gd);
    mood_unet_tape_free(ct);
    mood_cuda_unet_tape_free(tape);
}

/* Everything on one model: forward, gradients, accumulation, NULL entries, the pool. */
static void check_model(const char *rel)
{
    mood_unet *m = NULL;
    mood_cuda_unet *u = NULL;
    mood_cuda_unet_tape *tape = NULL;
    side_set ss = {0};
    grad_set cg = {0}, gg = {0}, gh = {0};
    step_in in = {0};
    float *cpu_out = NULL, *cpu_dctx = NULL, *gout = NULL, *gdctx = NULL, *h = NULL, *h2 = NULL;
    float *dctx2 = NULL, *inf = NULL;
    size_t n_ctx;
    mood_cuda_pool_stats s0 = {0}, s1 = {0};
    char what[128];
    MOOD_CHECK_OK(mood_unet_load(&m, fixture(rel)));
    if (!m)
        return;
    side_set_make(&ss, m);
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, ss.p, ss.n));
    step_in_make(&in, m, 2, 7, 9, 5);
    n_ctx = in.n[IN_CTX];
    grad_set_make(&cg, &ss, 0);
    cpu_dctx = calloc(n_ctx, sizeof *cpu_dctx);
    if (cpu_step(m, &in, &cpu_out, &cg, cpu_dctx) != 0)
        goto done;

    /* forward_train: vs the CPU and vs the GPU inference forward */
    MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, NULL));
    MOOD_CHECK_OK(mood_cuda_unet_tape_new(&tape, 0));
    gout = dev_new(NULL, in.n[IN_DOUT]);
    if (!u || !tape || !gout || gpu_forward_train(u, tape, &in, gout) != 0)
        goto done;
    h = host_of(gout, in.n[IN_DOUT]);
    snprintf(what, sizeof what, "%s forward_train: gpu vs cpu", rel);
    if (h)
        compare(what, h, cpu_out, in.n[IN_DOUT], TOL_OUT);
    printf("  %-52s %.2f MB on the tape\n", "", (double)mood_cuda_unet_tape_bytes(tape) / 1e6);
    MOOD_CHECK(mood_cuda_unet_tape_bytes(tape) > 0);
    if ((inf = dev_new(NULL, in.n[IN_DOUT]))) {
        MOOD_CHECK_OK(mood_cuda_unet_forward_dev(u, inf, in.d[IN_X], in.d[IN_T], in.d[IN_CTX], in.B,
                                                 in.H, in.W, in.L, in.d[IN_TE], in.d[IN_IDS]));
        h2 = host_of(inf, in.n[IN_DOUT]);
        snprintf(what, sizeof what, "%s forward_train vs gpu forward", rel);
        if (h && h2)
            compare(what, h, h2, in.n[IN_DOUT], TOL_SAME_GPU);
    }

    /* backward: every factor's gradient and the context's */
    grad_set_make(&gg, &ss, 1);
    gdctx = dev_new(NULL, n_ctx);
    if (!gdctx)
        goto done;
    MOOD_CHECK_OK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], gg.g, gg.n, gdctx));
    snprintf(what, sizeof what, "%s backward", rel);
    compare_grads(what, &ss, &gg, &cg, 1.0f);
    free(h2);
    if ((h2 = host_of(gdctx, n_ctx))) {
        snprintf(what, sizeof what, "%s backward: dL/d(context)", rel);
        compare(what, h2, cpu_dctx, n_ctx, TOL_OUT);
    }
    if (h)
        check_checkpointing(rel, u, &in, &ss, &gg, h, gdctx, mood_cuda_unet_tape_bytes(tape));
    check_bf16(rel, m, &in, &ss, cpu_out, &cg, cpu_dctx);
    check_weight_grads(rel, m, u, &in);
    check_text_embeds(rel, m, u, &in);

    /* a second backward on the same tape adds the same again */
    MOOD_CHECK_OK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], gg.g, gg.n, gdctx));
    snprintf(what, sizeof what, "%s backward twice (= 2x cpu)", rel);
    compare_grads(what, &ss, &gg, &cg, 2.0f);
    for (size_t i = 0; i < n_ctx; i++)
        cpu_dctx[i] *= 2.0f;
    free(h2);
    if ((h2 = host_of(gdctx, n_ctx))) {
        snprintf(what, sizeof what, "%s backward twice: dL/d(context)", rel);
        compare(what, h2, cpu_dctx, n_ctx, TOL_OUT);
    }

    /* only what is asked for: even paths' dup, odd paths' ddown, no context */
    grad_set_make(&gh, &ss, 1);
    for (size_t i = 0; gh.g && i < gh.n; i++) {
        float **drop = i % 2 ? &gh.g[i].dup : &gh.g[i].ddown;
        mood_cuda_free(ctx, *drop);
        *drop = NULL;
    }
    if (gh.g) {
        MOOD_CHECK_OK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], gh.g, gh.n, NULL));
        snprintf(what, sizeof what, "%s backward, half the entries NULL", rel);
        compare_grads(what, &ss, &gh, &cg, 1.0f);
    }

    /* a step of the same size as the last takes every block from the pool (the first step with
     * this test's buffers all held fills the pool, the second is measured) */
    dctx2 = dev_new(NULL, n_ctx);
    for (int step = 0; dctx2 && step < 2; step++) {
        if (step == 1)
            mood_cuda_pool_stats_get(ctx, &s0);
        if (gpu_forward_train(u, tape, &in, gout) != 0)
            break;
        MOOD_CHECK_OK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], gg.g, gg.n, dctx2));
    }
    MOOD_CHECK_OK(mood_cuda_sync(ctx));
    mood_cuda_pool_stats_get(ctx, &s1);
    printf("  %-52s %llu cudaMalloc\n", "a step of the same size again",
           (unsigned long long)(s1.device_allocs - s0.device_allocs));
    MOOD_CHECK_MSG(s1.device_allocs == s0.device_allocs, "%s: cudaMalloc in a repeated step: %llu",
                   rel, (unsigned long long)(s1.device_allocs - s0.device_allocs));
done:
    mood_cuda_free(ctx, gout), mood_cuda_free(ctx, gdctx), mood_cuda_free(ctx, dctx2);
    mood_cuda_free(ctx, inf);
    grad_set_free(&gg), grad_set_free(&gh), grad_set_free(&cg);
    mood_cuda_unet_tape_free(tape);
    mood_cuda_unet_free(u);
    mood_unet_free(m); /* before the factors it points at */
    side_set_free(&ss);
    step_in_free(&in);
    free(cpu_out), free(cpu_dctx), free(h), free(h2);
}

static void test_sd1(void)
{
    check_model(models[0]);
}

static void test_sdxl(void)
{
    check_model(models[1]);
}

/* Refusals with a device. */
static void test_errors(void)
{
    mood_unet *m = NULL, *m2 = NULL;
    mood_cuda_unet *u = NULL, *u2 = NULL, *u16 = NULL;
    mood_cuda_unet_tape *tape = NULL, *bad = (mood_cuda_unet_tape *)1;
    mood_cuda_unet_options o;
    side_set ss = {0};
    grad_set gg = {0};
    step_in in = {0};
    float *gout = NULL;
    MOOD_CHECK_OK(mood_unet_load(&m, fixture(models[0])));
    MOOD_CHECK_OK(mood_unet_load(&m2, fixture(models[0])));
    if (!m || !m2)
        goto done;
    side_set_make(&ss, m);
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, ss.p, ss.n));
    step_in_make(&in, m, 2, 7, 9, 5);
    grad_set_make(&gg, &ss, 1);
    gout = dev_new(NULL, in.n[IN_DOUT]);
    mood_cuda_unet_options_init(&o);
    o.dtype = MOOD_CUDA_F16;
    MOOD_CHECK_OK(mood_cuda_unet_new(&u, ctx, m, NULL));
    MOOD_CHECK_OK(mood_cuda_unet_new(&u2, ctx, m2, NULL));
    MOOD_CHECK_OK(mood_cuda_unet_new(&u16, ctx, m, &o));
    MOOD_CHECK(mood_cuda_unet_tape_new(&bad, 0x80) == MOOD_EINVAL && bad == NULL);
    MOOD_CHECK_OK(mood_cuda_unet_tape_new(&tape, 0));
    if (!u || !u2 || !u16 || !tape || !gout)
        goto done;
    /* fp16 weights (bf16 trains; fp16 would need loss scaling) */
    MOOD_CHECK(mood_cuda_unet_forward_train(u16, tape, gout, in.d[IN_X], in.d[IN_T], in.d[IN_CTX],
                                            in.B, in.H, in.W, in.L, NULL,
                                            NULL) == MOOD_EUNSUPPORTED);
    printf("  fp16 model: %s\n", mood_error_last());
    /* weights' gradients from a bf16 model */
    {
        mood_cuda_unet *ub = NULL;
        mood_cuda_unet_options ob;
        float *wg[1] = {NULL};
        mood_cuda_unet_options_init(&ob);
        ob.dtype = MOOD_CUDA_BF16;
        MOOD_CHECK_OK(mood_cuda_unet_new(&ub, ctx, m, &ob));
        if (ub && mood_cuda_unet_forward_train(ub, tape, gout, in.d[IN_X], in.d[IN_T], in.d[IN_CTX],
                                               in.B, in.H, in.W, in.L, NULL, NULL) == 0) {
            MOOD_CHECK(mood_cuda_unet_backward_ex(ub, tape, in.d[IN_DOUT], gg.g, gg.n, NULL, wg) ==
                       MOOD_EUNSUPPORTED);
            printf("  bf16 model, weights' gradients: %s\n", mood_error_last());
        }
        mood_cuda_unet_free(ub);
    }
    /* an empty tape (also after a refused forward) */
    MOOD_CHECK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], gg.g, gg.n, NULL) == MOOD_EINVAL);
    if (gpu_forward_train(u, tape, &in, gout) != 0)
        goto done;
    /* another model's tape; a wrong gradient count */
    MOOD_CHECK(mood_cuda_unet_backward(u2, tape, in.d[IN_DOUT], NULL, 0, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], gg.g, gg.n - 1, NULL) ==
               MOOD_EINVAL);
    MOOD_CHECK_OK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], NULL, 0, NULL));
    /* side paths set again since the forward */
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, ss.p, ss.n));
    MOOD_CHECK(mood_cuda_unet_backward(u, tape, in.d[IN_DOUT], gg.g, gg.n, NULL) == MOOD_EINVAL);
    /* a refused forward empties the tape */
    MOOD_CHECK(mood_cuda_unet_forward_train(u, tape, gout, in.d[IN_X], in.d[IN_T], in.d[IN_CTX],
                                            in.B, in.H, in.W, 0, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_cuda_unet_tape_bytes(tape) == 0);
done:
    mood_cuda_free(ctx, gout);
    grad_set_free(&gg);
    mood_cuda_unet_tape_free(tape);
    mood_cuda_unet_free(u), mood_cuda_unet_free(u2), mood_cuda_unet_free(u16);
    mood_unet_free(m), mood_unet_free(m2);
    side_set_free(&ss);
    step_in_free(&in);
}

/* Without a device: tapes are made (without the backend: refused), the passes refuse a NULL
 * model (or, without the backend, everything) with a message. */
static void test_no_device(void)
{
    mood_cuda_unet_tape *tape = (mood_cuda_unet_tape *)1;
    float y[4], x[4] = {0}, t[1] = {1}, c[24] = {0};
    int compiled = mood_cuda_compiled(), rc;
    rc = mood_cuda_unet_tape_new(&tape, MOOD_UNET_TAPE_CHECKPOINT);
    MOOD_CHECK(compiled ? rc == 0 && tape != NULL : rc == MOOD_EUNSUPPORTED && tape == NULL);
    mood_cuda_unet_tape_free(tape);
    rc = mood_cuda_unet_tape_new(&tape, 0);
    MOOD_CHECK(compiled ? rc == 0 && tape != NULL : rc == MOOD_EUNSUPPORTED && tape == NULL);
    rc = mood_cuda_unet_forward_train(NULL, tape, y, x, t, c, 1, 1, 1, 1, NULL, NULL);
    MOOD_CHECK(rc == (compiled ? MOOD_EINVAL : MOOD_EUNSUPPORTED));
    MOOD_CHECK(strlen(mood_error_last()) > 0);
    rc = mood_cuda_unet_backward(NULL, tape, y, NULL, 0, NULL);
    MOOD_CHECK(rc == (compiled ? MOOD_EINVAL : MOOD_EUNSUPPORTED));
    MOOD_CHECK(mood_cuda_unet_tape_bytes(tape) == 0);
    mood_cuda_unet_tape_free(tape);
    mood_cuda_unet_tape_free(NULL);
}

int main(void)
{
    static const harness_test no_gpu[] = {MOOD_T(test_no_device)};
    static const harness_test tests[] = {MOOD_T(test_no_device), MOOD_T(test_sd1),
                                         MOOD_T(test_sdxl), MOOD_T(test_errors)};
    return harness_run_cuda(&ctx, no_gpu, sizeof no_gpu / sizeof no_gpu[0], tests,
                            sizeof tests / sizeof tests[0]);
}
