/*
 * test_unet.c: the UNet (mood/unet.h) against diffusers' UNet2DConditionModel.
 *
 * Fixtures (tests/fixtures/unet/, tools/make_fixtures_unet.py): three tiny random diffusers
 * folders with the real block structure (SD1-like: conv proj_in, fp16; SD2-like: Linear
 * projections, per-block heads, other timestep embedding, odd latent size 12x10, bf16; SDXL-like
 * as a pipeline root: a first block without attention, transformer depths [1, 2], text_time,
 * fp16 variant) with diffusers' float32 output on fixed inputs; and references for the tiny
 * single-file checkpoints of tests/fixtures/bases/ (LDM/SGM keys, configuration inferred; heads
 * and groups passed as a hint). Outputs must match within 1e-4 of the reference's largest
 * magnitude.
 *
 * Side paths: random low-rank (Linear, 3x3 / strided / 1x1 convs, a context projection) and dense
 * ones, two on one weight, must change the output and equal merging scale · up · down into the
 * weights (1e-5); unknown or non-layer weights and bad factors are refused. Config errors:
 * unsupported options, a config that does not match the weights (missing or extra tensors).
 */
#include "harness.h"

#include "fixture_tensors.h"

#include <errno.h>
#include <sys/stat.h>

#include "common/common.h"

#include "mood/safetensors.h"
#include "mood/unet.h"

/* Max |a - b| over n divided by max |b| (the tolerance is relative to the output's scale). */
static double rel_err(const float *a, const float *b, size_t n)
{
    double d = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        d = e > d || isnan(e) ? e : d;
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    }
    return scale > 0 ? d / scale : d;
}

/* One reference case: inputs and diffusers' output, by key prefix ("" or "sd1."). */
typedef struct ref_case {
    float *x, *t, *ctx, *te, *ids, *out;
    size_t n_out, n_ctx;
    int B, H, W, L;
} ref_case;

static int ref_load(ref_case *r, mood_st_file *f, const char *pre)
{
    char k[128];
    const mood_st_tensor *tx, *tc;
    memset(r, 0, sizeof *r);
#define GET(field, name)                                                                           \
    (snprintf(k, sizeof k, "%s%s", pre, name), r->field = fixture_floats(f, k, NULL))
    GET(x, "x"), GET(t, "t"), GET(ctx, "context"), GET(te, "text_embeds"), GET(ids, "time_ids");
    snprintf(k, sizeof k, "%sout", pre);
    r->out = fixture_floats(f, k, &r->n_out);
#undef GET
    snprintf(k, sizeof k, "%sx", pre);
    tx = mood_st_find(f, k);
    snprintf(k, sizeof k, "%scontext", pre);
    tc = mood_st_find(f, k);
    if (!r->x || !r->t || !r->ctx || !r->out || !tx || !tc || tx->ndim != 4 || tc->ndim != 3)
        return -1;
    r->B = (int)tx->shape[0], r->H = (int)tx->shape[2], r->W = (int)tx->shape[3];
    r->L = (int)tc->shape[1];
    return 0;
}

static void ref_free(ref_case *r)
{
    free(r->x), free(r->t), free(r->ctx), free(r->te), free(r->ids), free(r->out);
}

/* Runs m on the case's inputs; returns the output (malloc'd) or NULL after a failed check. */
static float *run(const mood_unet *m, const ref_case *r)
{
    float *y = calloc(r->n_out, sizeof *y);
    int rc = mood_unet_forward(m, y, r->x, r->t, r->ctx, r->B, r->H, r->W, r->L, r->te, r->ids);
    MOOD_CHECK_MSG(rc == 0, "forward: %s", mood_error_last());
    if (rc != 0) {
        free(y);
        return NULL;
    }
    return y;
}

/* Loads `path` (hint may be NULL), runs the reference case `pre` of ref file `ref_rel` and
 * checks the output; returns the model (caller frees) for further checks. */
static mood_unet *check_case(const char *label, const char *path, const mood_unet_config *hint,
                             const char *ref_rel, const char *pre)
{
    mood_st_file *f = NULL;
    mood_unet *m = NULL;
    ref_case r;
    float *y;
    MOOD_CHECK_OK(mood_st_open(&f, fixture(ref_rel)));
    if (!f)
        return NULL;
    MOOD_CHECK_OK(mood_unet_load_ex(&m, path, hint));
    MOOD_CHECK(ref_load(&r, f, pre) == 0);
    if (m && r.out && (y = run(m, &r))) {
        double e = rel_err(y, r.out, r.n_out);
        printf("     %-9s max |mood - diffusers| / max |diffusers| = %.2e\n", label, e);
        MOOD_CHECK_MSG(e <= 1e-4, "%s: relative error %.3e", label, e);
        free(y);
    }
    ref_free(&r);
    mood_st_close(f);
    return m;
}

static void test_sd1_folder(void)
{
    mood_unet *m = check_case("sd1", fixture("unet/sd1"), NULL, "unet/ref_sd1.safetensors", "");
    if (!m)
        return;
    const mood_unet_config *c = mood_unet_get_config(m);
    MOOD_CHECK(c->n_blocks == 2 && c->block_out_channels[1] == 24 && c->layers_per_block[0] == 2);
    MOOD_CHECK(c->down_block_types[0] == MOOD_UNET_CROSS_ATTN_DOWN_BLOCK_2D);
    MOOD_CHECK(c->up_block_types[0] == MOOD_UNET_UP_BLOCK_2D);
    MOOD_CHECK(c->num_attention_heads[0] == 4 && c->attention_head_dim[1] == 4);
    MOOD_CHECK(!c->use_linear_projection && c->norm_num_groups == 8 && c->mid_block);
    MOOD_CHECK(c->cross_attention_dim == 24 && c->time_embed_dim == 64);
    mood_unet_free(m);
}

static void test_sd2_folder(void)
{
    mood_unet *m = check_case("sd2", fixture("unet/sd2"), NULL, "unet/ref_sd2.safetensors", "");
    if (!m)
        return;
    const mood_unet_config *c = mood_unet_get_config(m);
    MOOD_CHECK(c->n_blocks == 3 && c->use_linear_projection && c->upcast_attention);
    MOOD_CHECK(c->num_attention_heads[0] == 2 && c->num_attention_heads[2] == 4);
    MOOD_CHECK(!c->flip_sin_to_cos && c->freq_shift == 1.0f && c->norm_eps == 1e-6f);
    mood_unet_free(m);
}

static void test_sdxl_pipeline_root(void)
{
    mood_unet *m = check_case("sdxl", fixture("unet/sdxl"), NULL, "unet/ref_sdxl.safetensors", "");
    float y[4];
    if (!m)
        return;
    const mood_unet_config *c = mood_unet_get_config(m);
    MOOD_CHECK(c->addition_embed_text_time && c->addition_time_embed_dim == 8);
    MOOD_CHECK(c->projection_class_embeddings_input_dim == 64);
    MOOD_CHECK(c->transformer_layers_per_block[1] == 2 && c->mid_transformer_layers == 2);
    MOOD_CHECK(c->up_transformer_layers[0] == 2);
    MOOD_CHECK(c->down_block_types[0] == MOOD_UNET_DOWN_BLOCK_2D);
    /* text_time needs its conditioning */
    MOOD_CHECK(mood_unet_forward(m, y, y, y, y, 1, 1, 1, 1, NULL, NULL) == MOOD_EINVAL);
    mood_unet_free(m);
}

/* The tiny single-file checkpoints: LDM (SD1, SD2) and SGM (SDXL) keys; 1 head per block and
 * 2 norm groups are not in the file, so they come as a hint. */
static void test_single_files(void)
{
    static const char *const cases[][2] = {{"sd1", "bases/sd1_base.safetensors"},
                                           {"sd1_fp16", "bases/sd1_base_fp16.safetensors"},
                                           {"sd2", "bases/sd2_base.safetensors"},
                                           {"sdxl", "bases/sdxl_base.safetensors"}};
    mood_unet_config hint;
    memset(&hint, 0, sizeof hint);
    hint.norm_num_groups = 2;
    for (int i = 0; i < MOOD_UNET_MAX_BLOCKS; i++)
        hint.num_attention_heads[i] = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char pre[32];
        snprintf(pre, sizeof pre, "%s.", cases[i][0]);
        mood_unet *m =
            check_case(cases[i][0], fixture(cases[i][1]), &hint, "unet/ref_bases.safetensors", pre);
        if (!m)
            continue;
        const mood_unet_config *c = mood_unet_get_config(m);
        int xl = !strcmp(cases[i][0], "sdxl");
        MOOD_CHECK(c->n_blocks == (xl ? 3 : 4) && c->block_out_channels[0] == 4);
        MOOD_CHECK(c->use_linear_projection == (strcmp(cases[i][0], "sd2") == 0 || xl));
        MOOD_CHECK(c->addition_embed_text_time == xl);
        MOOD_CHECK(!xl || (c->addition_time_embed_dim == 4 && c->up_transformer_layers[0] == 2 &&
                           c->mid_transformer_layers == 2 &&
                           c->down_block_types[0] == MOOD_UNET_DOWN_BLOCK_2D));
        mood_unet_free(m);
    }
}

static void test_single_file_needs_hint(void)
{
    mood_unet *m = NULL;
    /* context 16, 4-wide blocks: neither SD1's 8 heads nor heads of width 64 */
    MOOD_CHECK(mood_unet_load(&m, fixture("bases/sd1_base.safetensors")) == MOOD_EINVAL);
    MOOD_CHECK(m == NULL && strstr(mood_error_last(), "heads"));
}

/* ----- side paths --------------------------------------------------------------------------- */

/* Deterministic values in [-a, a). */
static void fill(float *p, size_t n, unsigned seed, float a)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = a * ((float)(seed >> 8) / 8388608.0f - 1.0f);
    }
}

/* W += scale · up (out x r) · down (r x rest), or scale · ΔW for rank 0. */
static void merge(float *w, const int64_t *shape, int ndim, const mood_side_path *p)
{
    size_t out = (size_t)shape[0], rest = 1;
    for (int d = 1; d < ndim; d++)
        rest *= (size_t)shape[d];
    for (size_t o = 0; o < out; o++) {
        for (size_t j = 0; j < rest; j++) {
            double s = 0;
            if (p->rank == 0)
                s = p->up[o * rest + j];
            for (int r = 0; r < p->rank; r++)
                s += (double)p->up[o * (size_t)p->rank + r] * p->down[(size_t)r * rest + j];
            w[o * rest + j] += p->scale * (float)s;
        }
    }
}

static void test_side_paths(void)
{
    static const struct {
        const char *w;
        int rank;
        float scale;
    } spec[] = {
        {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", 2, 0.7f},
        {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", 2, -0.4f},
        {"down_blocks.0.resnets.0.conv1.weight", 2, 0.5f},       /* 3x3 */
        {"down_blocks.0.downsamplers.0.conv.weight", 2, 0.5f},   /* 3x3 stride 2 */
        {"down_blocks.0.attentions.1.proj_in.weight", 2, 1.0f},  /* 1x1 conv on tokens */
        {"up_blocks.1.resnets.0.conv_shortcut.weight", 2, 1.0f}, /* 1x1 conv */
        {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", 2, 1.0f}, /* context */
        {"up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2.weight", 2, 0.8f},
        {"time_embedding.linear_1.weight", 0, 0.3f}, /* dense Linear */
        {"conv_in.weight", 0, 0.5f},                 /* dense conv */
    };
    enum { N = sizeof spec / sizeof spec[0] };
    mood_side_path paths[N];
    float *bufs[2 * N] = {0}, *y0 = NULL, *y1 = NULL, *y2 = NULL;
    mood_unet *m = NULL;
    mood_st_file *f = NULL;
    ref_case r = {0};
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    MOOD_CHECK_OK(mood_st_open(&f, fixture("unet/ref_sd1.safetensors")));
    if (!m || !f || ref_load(&r, f, "") != 0)
        goto done;
    for (int i = 0; i < N; i++) {
        int ndim;
        int64_t sh[4];
        float *w = mood_unet_weight(m, spec[i].w, &ndim, sh);
        size_t rest = 1;
        MOOD_CHECK(w != NULL);
        if (!w)
            goto done;
        for (int d = 1; d < ndim; d++)
            rest *= (size_t)sh[d];
        paths[i].weight = spec[i].w, paths[i].rank = spec[i].rank, paths[i].scale = spec[i].scale;
        bufs[2 * i] = malloc((spec[i].rank ? (size_t)spec[i].rank : 1) * rest * sizeof(float));
        bufs[2 * i + 1] =
            malloc((size_t)sh[0] * (spec[i].rank ? (size_t)spec[i].rank : rest) * sizeof(float));
        fill(bufs[2 * i], (spec[i].rank ? (size_t)spec[i].rank : 1) * rest, 11u + i, 0.5f);
        fill(bufs[2 * i + 1], (size_t)sh[0] * (spec[i].rank ? (size_t)spec[i].rank : rest),
             101u + i, 0.5f);
        paths[i].down = spec[i].rank ? bufs[2 * i] : NULL;
        paths[i].up = bufs[2 * i + 1];
    }
    y0 = run(m, &r);
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, paths, N));
    y1 = run(m, &r);
    for (int i = 0; i < N; i++) {
        int ndim;
        int64_t sh[4];
        float *w = mood_unet_weight(m, spec[i].w, &ndim, sh);
        merge(w, sh, ndim, &paths[i]);
    }
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, NULL, 0));
    y2 = run(m, &r);
    if (y0 && y1 && y2) {
        double changed = rel_err(y1, y0, r.n_out), e = rel_err(y1, y2, r.n_out);
        printf("     side paths change the output by %.3f (relative), merged vs side paths %.2e\n",
               changed, e);
        MOOD_CHECK_MSG(changed > 0.05, "side paths change the output by only %.3e", changed);
        MOOD_CHECK_MSG(e <= 1e-5, "side paths vs merged weights: %.3e", e);
    }
done:
    for (int i = 0; i < 2 * N; i++)
        free(bufs[i]);
    free(y0), free(y1), free(y2);
    ref_free(&r);
    mood_st_close(f);
    mood_unet_free(m);
}

static void test_side_path_errors(void)
{
    mood_unet *m = NULL;
    float f1[64] = {0};
    mood_side_path p = {"down_blocks.0.attentions.0.proj_out.weight", f1, f1, 1, 1.0f};
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    if (!m)
        return;
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, &p, 1));
    p.weight = "down_blocks.0.attentions.0.no_such_layer.weight";
    MOOD_CHECK(mood_unet_set_side_paths(m, &p, 1) == MOOD_ENOTFOUND);
    MOOD_CHECK(strstr(mood_error_last(), "no_such_layer") != NULL);
    p.weight = "conv_norm_out.weight"; /* a norm, not a Linear or Conv2d */
    MOOD_CHECK(mood_unet_set_side_paths(m, &p, 1) == MOOD_ENOTFOUND);
    p.weight = "conv_out.bias";
    MOOD_CHECK(mood_unet_set_side_paths(m, &p, 1) == MOOD_ENOTFOUND);
    p.weight = "conv_out.weight", p.rank = -1;
    MOOD_CHECK(mood_unet_set_side_paths(m, &p, 1) == MOOD_EINVAL);
    p.rank = 2, p.down = NULL;
    MOOD_CHECK(mood_unet_set_side_paths(m, &p, 1) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_unet_set_side_paths(m, NULL, 0));
    mood_unet_free(m);
}

/* ----- weights and errors ------------------------------------------------------------------- */

static void test_weights(void)
{
    mood_unet *m = NULL;
    mood_st_file *f = NULL;
    int ndim = 0;
    int64_t sh[4];
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    MOOD_CHECK_OK(mood_st_open(&f, fixture("unet/sd1/diffusion_pytorch_model.safetensors")));
    if (!m || !f)
        goto done;
    MOOD_CHECK(mood_unet_weight_count(m) == mood_st_count(f));
    for (size_t i = 0; i < mood_unet_weight_count(m); i++) {
        const char *name = mood_unet_weight_name(m, i);
        const mood_st_tensor *t = mood_st_find(f, name);
        float *w = mood_unet_weight(m, name, &ndim, sh);
        MOOD_CHECK_MSG(t && w && ndim == t->ndim && sh[0] == t->shape[0], "%s", name);
    }
    MOOD_CHECK(mood_unet_weight_name(m, mood_unet_weight_count(m)) == NULL);
    MOOD_CHECK(mood_unet_weight(m, "down_blocks.0.attentions.0.proj_in.weight", &ndim, sh) &&
               ndim == 4 && sh[0] == 16 && sh[1] == 16 && sh[2] == 1);
    MOOD_CHECK(mood_unet_weight(m, "nope.weight", NULL, NULL) == NULL);
done:
    mood_st_close(f);
    mood_unet_free(m);
}

/* A copy of the sd1 folder (weights linked) whose config.json has `from` replaced by `to`. */
static const char *edited_folder(const char *name, const char *from, const char *to)
{
    static char dir[1024];
    char path[1200], src[1200];
    size_t n = 0;
    unsigned char *raw = read_file(fixture("unet/sd1/config.json"), &n);
    char *text = raw ? calloc(n + 1, 1) : NULL, *hit;
    if (text)
        memcpy(text, raw, n); /* NUL-terminated for strstr */
    free(raw);
    snprintf(dir, sizeof dir, "%s", scratch_path(name));
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(src, sizeof src, "%s", fixture("unet/sd1/diffusion_pytorch_model.safetensors"));
    if (src[0] != '/') { /* relative fixture root: link by absolute path */
        char cwd[600];
        snprintf(src, sizeof src, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".",
                 fixture("unet/sd1/diffusion_pytorch_model.safetensors"));
    }
    unlink(path);
    if (symlink(src, path) != 0 || !text || !(hit = strstr(text, from))) {
        free(text);
        return NULL;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *out = fopen(path, "w");
    if (out) {
        fprintf(out, "%.*s%s%s", (int)(hit - text), text, to, hit + strlen(from));
        fclose(out);
    }
    free(text);
    return dir;
}

static void test_config_errors(void)
{
    static const struct {
        const char *from, *to;
        int err;
        const char *msg;
    } cases[] = {
        {"\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\"", MOOD_EUNSUPPORTED, "act_fn"},
        {"\"resnet_time_scale_shift\": \"default\"", "\"resnet_time_scale_shift\": \"scale_shift\"",
         MOOD_EUNSUPPORTED, "resnet_time_scale_shift"},
        {"\"DownBlock2D\"", "\"KDownBlock2D\"", MOOD_EUNSUPPORTED, "KDownBlock2D"},
        {"\"layers_per_block\": 2", "\"layers_per_block\": 3", MOOD_EFORMAT,
         "down_blocks.0.resnets.2.norm1.weight"},
        {"\"layers_per_block\": 2", "\"layers_per_block\": 1", MOOD_EFORMAT,
         "up_blocks.0.resnets.1.norm1.weight\" has shape [48], expected [40]"},
        {"\"transformer_layers_per_block\": 1", "\"transformer_layers_per_block\": 0", MOOD_EFORMAT,
         "transformer_blocks.0.attn1.to_k.weight\" is not part of"},
        {"\"use_linear_projection\": false", "\"use_linear_projection\": true", MOOD_EFORMAT,
         "proj_in.weight\" has shape [16, 16, 1, 1], expected [16, 16]"},
        {"\"norm_num_groups\": 8", "\"norm_num_groups\": 7", MOOD_EINVAL, "groups"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        mood_unet *m = NULL;
        snprintf(name, sizeof name, "cfg%zu", i);
        const char *dir = edited_folder(name, cases[i].from, cases[i].to);
        MOOD_CHECK_MSG(dir != NULL, "case %zu: could not edit the config", i);
        if (!dir)
            continue;
        int rc = mood_unet_load(&m, dir);
        MOOD_CHECK_MSG(rc == cases[i].err && m == NULL && strstr(mood_error_last(), cases[i].msg),
                       "case %zu: %d %s", i, rc, mood_error_last());
        mood_unet_free(m);
    }
    mood_unet *m = NULL;
    MOOD_CHECK(mood_unet_load(&m, fixture("unet/no_such_model")) == MOOD_ENOTFOUND);
    MOOD_CHECK(mood_unet_load(&m, fixture("unet")) == MOOD_ENOTFOUND); /* no config.json */
}

static void test_forward_args(void)
{
    mood_unet *m = NULL;
    float buf[16] = {0};
    MOOD_CHECK_OK(mood_unet_load(&m, fixture("unet/sd1")));
    if (!m)
        return;
    MOOD_CHECK(mood_unet_forward(m, buf, buf, buf, buf, 0, 8, 8, 1, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_unet_forward(m, buf, buf, buf, NULL, 1, 8, 8, 1, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_unet_forward(m, buf, buf, buf, buf, 1, 8, 0, 1, NULL, NULL) == MOOD_EINVAL);
    mood_unet_free(m);
}

MOOD_TEST_MAIN(MOOD_T(test_sd1_folder), MOOD_T(test_sd2_folder), MOOD_T(test_sdxl_pipeline_root),
               MOOD_T(test_single_files), MOOD_T(test_single_file_needs_hint),
               MOOD_T(test_side_paths), MOOD_T(test_side_path_errors), MOOD_T(test_weights),
               MOOD_T(test_config_errors), MOOD_T(test_forward_args))
