/*
 * test_clip.c: the CLIP text encoder (mood/clip.h) against transformers' CLIPTextModel.
 *
 * Fixtures (tests/fixtures/clip/, tools/make_fixtures_clip.py): two tiny random models
 * (quick_gelu in bf16 with the "text_model." prefix, gelu in f16 without it) and per model the
 * reference last_hidden_state, final_layer_norm(hidden_states[-2]) and pooler_output for three
 * id sequences (gelu also hidden_states[-2] without the norm, as SDXL uses it). Also: missing and
 * misshapen tensors fail with MOOD_EFORMAT naming the tensor.
 *
 * OpenCLIP names: the text encoders of the tiny single-file checkpoints tests/fixtures/bases/
 * (SD2's, SDXL's second; kohya's converters, fused in_proj) against the transformers models they
 * were converted from (clip/sd2_te_ref, clip/sdxl_te2_ref): hidden states, pooled output and the
 * text projection read as OpenCLIP does (x @ P). kohya's SDXL converter stores the transformers
 * weight W untransposed, so transformers' text_embeds (x W^T, in the fixture too) differ from the
 * file's reading; a Hugging Face "text_projection.weight" beside "text_model." is checked on a
 * rewritten file.
 */
#include "harness.h"

#include "common/common.h"

#include "mood/clip.h"
#include "mood/safetensors.h"

enum { T = 77 };

/* Max |a - b| over n, divided by max(1, max |b|) (the tolerance is relative to the scale). */
static double rel_diff(const float *a, const float *b, size_t n)
{
    return harness_rel_diff(a, b, n, 1.0);
}

/* Reads tensor `name` of ref (F32 or I32) into a fresh float / int buffer. */
static float *ref_f32(mood_st_file *ref, const char *name, size_t *n)
{
    const mood_st_tensor *t = mood_st_find(ref, name);
    float *out = t ? malloc((size_t)mood_st_numel(t) * sizeof *out) : NULL;
    if (out && mood_st_to_f32(out, t) != 0) {
        free(out);
        return NULL;
    }
    *n = t ? (size_t)mood_st_numel(t) : 0;
    return out;
}

/* SDXL's conditioning: clip skip 2 without the final norm, when the fixture has it. The pooled
 * output stays that of the last layer whatever the clip skip. */
static void check_raw_skip(const mood_clip *m, mood_st_file *ref, const int32_t *ids, int B,
                           float *out, size_t n)
{
    size_t n_raw = 0, n_pool = 0;
    float *raw = ref_f32(ref, "skip2_raw", &n_raw), *pool = ref_f32(ref, "pooled", &n_pool);
    float *pooled = malloc(n_pool * sizeof *pooled);
    if (raw && pool && pooled && n_raw == n) {
        MOOD_CHECK_OK(mood_clip_forward(m, ids, B, T, 2, 0, out, pooled));
        double d_raw = rel_diff(out, raw, n), d_pool = rel_diff(pooled, pool, n_pool);
        printf("  clip skip 2 without final norm %.3g, its pooled %.3g\n", d_raw, d_pool);
        MOOD_CHECK(d_raw <= 1e-5 && d_pool <= 1e-5);
    }
    free(raw), free(pool), free(pooled);
}

static void compare(const char *model_name, mood_clip_act act)
{
    char mp[128], rp[128];
    mood_clip *m = NULL;
    mood_st_file *ref = NULL;
    mood_clip_config hint = {0};
    size_t n_ids = 0, n_last = 0, n_skip = 0, n_pool = 0;
    hint.heads = 4;
    hint.act = act;
    snprintf(mp, sizeof mp, "clip/%s.safetensors", model_name);
    snprintf(rp, sizeof rp, "clip/%s_ref.safetensors", model_name);
    MOOD_CHECK_OK(mood_clip_load(&m, fixture(mp), &hint));
    MOOD_CHECK_OK(mood_st_open(&ref, fixture(rp)));
    if (!m || !ref)
        goto done;
    const mood_clip_config *c = mood_clip_get_config(m);
    MOOD_CHECK(c->vocab == 1000 && c->hidden == 32 && c->intermediate == 64 && c->layers == 2 &&
               c->max_positions == 77 && c->heads == 4 && c->act == act);
    float *fids = ref_f32(ref, "ids", &n_ids), *last = ref_f32(ref, "last", &n_last);
    float *skip = ref_f32(ref, "skip2", &n_skip), *pool = ref_f32(ref, "pooled", &n_pool);
    int B = (int)(n_ids / T);
    int32_t *ids = malloc(n_ids * sizeof *ids);
    float *out = malloc(n_last * sizeof *out), *pooled = malloc(n_pool * sizeof *pooled);
    MOOD_CHECK(fids && last && skip && pool && B == 3 && n_last == (size_t)B * T * 32);
    for (size_t i = 0; i < n_ids; i++)
        ids[i] = (int32_t)fids[i];
    MOOD_CHECK_OK(mood_clip_forward(m, ids, B, T, 1, 1, out, pooled));
    double d_last = rel_diff(out, last, n_last), d_pool = rel_diff(pooled, pool, n_pool);
    MOOD_CHECK_OK(mood_clip_forward(m, ids, B, T, 2, 1, out, NULL));
    double d_skip = rel_diff(out, skip, n_skip);
    printf("  %s: max diff last %.3g, clip skip 2 %.3g, pooled %.3g\n", model_name, d_last, d_skip,
           d_pool);
    MOOD_CHECK(d_last <= 1e-5 && d_skip <= 1e-5 && d_pool <= 1e-5);
    MOOD_CHECK(rel_diff(last, skip, n_last) > 1e-2); /* the two outputs really differ */
    check_raw_skip(m, ref, ids, B, out, n_last);
    free(fids), free(last), free(skip), free(pool), free(ids), free(out), free(pooled);
done:
    mood_st_close(ref);
    mood_clip_free(m);
}

static void test_quick_gelu(void)
{
    compare("quick_gelu", MOOD_CLIP_ACT_QUICK_GELU);
}

static void test_gelu(void)
{
    compare("gelu", MOOD_CLIP_ACT_GELU);
}

/* The model's tensors copied to a new file, `drop` left out and `reshape` given shape [3], every
 * name behind `prefix`. */
static const char *rewrite_prefixed(const char *drop, const char *reshape, const char *prefix)
{
    const char *path = scratch_path("bad.safetensors");
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    static const float junk[3];
    MOOD_CHECK_OK(mood_st_open(&f, fixture("clip/gelu.safetensors")));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; f && w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        int64_t three = 3;
        char name[256];
        if (drop && !strcmp(t->name, drop))
            continue;
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        if (reshape && !strcmp(t->name, reshape))
            MOOD_CHECK_OK(mood_st_writer_add_f32(w, name, MOOD_DTYPE_F32, 1, &three, junk));
        else
            MOOD_CHECK_OK(mood_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data));
    }
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    mood_st_close(f);
    return path;
}

static const char *rewrite(const char *drop, const char *reshape)
{
    return rewrite_prefixed(drop, reshape, "");
}

static void expect_format_error_hint(const char *path, const mood_clip_config *hint,
                                     const char *tensor)
{
    mood_clip *m = NULL;
    int rc = mood_clip_load(&m, path, hint);
    MOOD_CHECK_MSG(rc == MOOD_EFORMAT, "rc %d", rc);
    MOOD_CHECK(m == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), tensor) != NULL, "%s", mood_error_last());
}

/* Fixture `base` copied to a scratch file without tensor `drop`. */
static const char *rewrite_base(const char *base, const char *drop)
{
    const char *path = scratch_path("bad_base.safetensors");
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, fixture(base)));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; f && w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        if (strcmp(t->name, drop))
            MOOD_CHECK_OK(mood_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data));
    }
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    mood_st_close(f);
    return path;
}

static void expect_format_error(const char *path, const char *tensor)
{
    mood_clip *m = NULL;
    mood_clip_config hint = {0};
    hint.heads = 4;
    int rc = mood_clip_load(&m, path, &hint);
    MOOD_CHECK_MSG(rc == MOOD_EFORMAT, "rc %d", rc);
    MOOD_CHECK(m == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), tensor) != NULL, "%s", mood_error_last());
}

static void test_missing_tensor(void)
{
    expect_format_error(rewrite("encoder.layers.1.mlp.fc2.bias", NULL),
                        "\"encoder.layers.1.mlp.fc2.bias\" is missing");
    expect_format_error(rewrite("embeddings.token_embedding.weight", NULL),
                        "\"embeddings.token_embedding.weight\" is missing");
}

static void test_wrong_shape(void)
{
    expect_format_error(
        rewrite(NULL, "encoder.layers.0.self_attn.q_proj.weight"),
        "\"encoder.layers.0.self_attn.q_proj.weight\" has shape [3], expected [32, 32]");
    expect_format_error(rewrite(NULL, "final_layer_norm.bias"),
                        "\"final_layer_norm.bias\" has shape [3], expected [32]");
}

/* The encoder inside an SD1 single-file checkpoint gives the same outputs as on its own. */
static void test_checkpoint_prefix(void)
{
    mood_clip *a = NULL, *b = NULL;
    mood_clip_config hint = {0};
    int32_t ids[T];
    float oa[T * 32], ob[T * 32], pa[32], pb[32];
    hint.heads = 4;
    for (int t = 0; t < T; t++)
        ids[t] = (t * 37) % 999 + (t == 9);
    MOOD_CHECK_OK(mood_clip_load(&a, fixture("clip/gelu.safetensors"), &hint));
    MOOD_CHECK_OK(mood_clip_load(
        &b, rewrite_prefixed(NULL, NULL, "cond_stage_model.transformer.text_model."), &hint));
    if (a && b) {
        MOOD_CHECK_OK(mood_clip_forward(a, ids, 1, T, 1, 1, oa, pa));
        MOOD_CHECK_OK(mood_clip_forward(b, ids, 1, T, 1, 1, ob, pb));
        MOOD_CHECK(!memcmp(oa, ob, sizeof oa) && !memcmp(pa, pb, sizeof pa));
    }
    expect_format_error(rewrite_prefixed("encoder.layers.1.mlp.fc1.bias", NULL, "text_model."),
                        "\"text_model.encoder.layers.1.mlp.fc1.bias\" is missing");
    mood_clip_free(a);
    mood_clip_free(b);
}

/* The OpenCLIP-named encoder `enc` of bases/<base> against reference `refname`. */
static void compare_openclip(const char *base, mood_clip_encoder enc, const char *refname)
{
    enum { TB = 8, CB = 24 };
    char bp[128], rp[128];
    mood_clip *m = NULL;
    mood_st_file *ref = NULL;
    mood_clip_config hint = {0};
    hint.heads = 3;
    hint.encoder = enc;
    snprintf(bp, sizeof bp, "bases/%s.safetensors", base);
    snprintf(rp, sizeof rp, "clip/%s.safetensors", refname);
    MOOD_CHECK_OK(mood_clip_load(&m, fixture(bp), &hint));
    MOOD_CHECK_OK(mood_st_open(&ref, fixture(rp)));
    if (!m || !ref)
        goto done;
    const mood_clip_config *c = mood_clip_get_config(m);
    MOOD_CHECK(c->vocab == 32 && c->hidden == CB && c->intermediate == 48 && c->layers == 2 &&
               c->max_positions == TB && c->heads == 3 && c->act == MOOD_CLIP_ACT_GELU &&
               c->projection_dim == CB && mood_clip_has_projection(m));
    size_t n_ids = 0, n[5] = {0};
    static const char *const names[5] = {"last", "skip2", "skip2_raw", "pooled", "projected"};
    float *fids = ref_f32(ref, "ids", &n_ids), *want[5], got[5][2 * TB * CB];
    int32_t ids[2 * TB];
    for (int i = 0; i < 5; i++)
        want[i] = ref_f32(ref, names[i], &n[i]);
    MOOD_CHECK(fids && n_ids == 2 * TB && n[0] == 2 * TB * CB && n[1] == n[0] && n[2] == n[0] &&
               n[3] == 2 * CB && n[4] == 2 * CB && want[0] && want[1] && want[2] && want[3] &&
               want[4]);
    if (fids && n_ids == 2 * TB && want[0] && want[1] && want[2] && want[3] && want[4] &&
        n[0] == 2 * TB * CB && n[1] == n[0] && n[2] == n[0] && n[3] == 2 * CB && n[4] == 2 * CB) {
        for (size_t i = 0; i < n_ids; i++)
            ids[i] = (int32_t)fids[i];
        MOOD_CHECK_OK(mood_clip_forward(m, ids, 2, TB, 1, 1, got[0], got[3]));
        MOOD_CHECK_OK(mood_clip_forward(m, ids, 2, TB, 2, 1, got[1], NULL));
        MOOD_CHECK_OK(mood_clip_forward(m, ids, 2, TB, 2, 0, got[2], NULL));
        MOOD_CHECK_OK(mood_clip_project(m, got[3], 2, got[4]));
        printf("  %s:", refname);
        for (int i = 0; i < 5; i++) {
            double d = rel_diff(got[i], want[i], n[i]);
            printf(" %s %.3g", names[i], d);
            MOOD_CHECK_MSG(d <= 1e-5, "%s %s %g", refname, names[i], d);
        }
        printf("\n");
        MOOD_CHECK(rel_diff(want[0], want[1], n[0]) > 1e-2 &&
                   rel_diff(want[3], want[4], n[3]) > 1e-2);
        size_t n_te = 0;
        float *te = ref_f32(ref, "text_embeds", &n_te);
        if (te && n_te == n[4]) {
            double d = rel_diff(got[4], te, n_te);
            printf("  (transformers' text_embeds, x W^T: %.3g away)\n", d);
            MOOD_CHECK(d > 1e-2);
        }
        free(te);
    }
    free(fids);
    for (int i = 0; i < 5; i++)
        free(want[i]);
done:
    mood_st_close(ref);
    mood_clip_free(m);
}

static void test_openclip_sd2(void)
{
    compare_openclip("sd2_base", MOOD_CLIP_ENCODER_AUTO, "sd2_te_ref");
}

static void test_openclip_sdxl_te2(void)
{
    compare_openclip("sdxl_base", MOOD_CLIP_ENCODER_2, "sdxl_te2_ref");
}

/* Encoder choice: SDXL's first encoder by default (Hugging Face names, no projection), the second
 * on request; an SD2 file has no second encoder; a missing fused tensor is named. */
static void test_encoder_choice(void)
{
    mood_clip *m = NULL;
    mood_clip_config hint = {0};
    float pooled[16], out[16];
    hint.heads = 2;
    MOOD_CHECK_OK(mood_clip_load(&m, fixture("bases/sdxl_base.safetensors"), &hint));
    if (m) {
        const mood_clip_config *c = mood_clip_get_config(m);
        MOOD_CHECK(c->hidden == 16 && c->projection_dim == 0 && !mood_clip_has_projection(m));
        MOOD_CHECK(mood_clip_project(m, pooled, 1, out) == MOOD_EINVAL);
        mood_clip_free(m);
        m = NULL;
    }
    hint.heads = 3;
    hint.encoder = MOOD_CLIP_ENCODER_2;
    expect_format_error_hint(fixture("bases/sd2_base.safetensors"), &hint,
                             "\"conditioner.embedders.1.model.token_embedding.weight\" is missing");
    hint.encoder = MOOD_CLIP_ENCODER_AUTO;
    expect_format_error_hint(
        rewrite_base("bases/sd2_base.safetensors",
                     "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"),
        &hint, "\"cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight\" is missing");
}

/* Hugging Face CLIPTextModelWithProjection layout: "text_projection.weight" (proj, hidden) beside
 * the "text_model." tensors; out = pooled W^T. */
static void test_hf_projection(void)
{
    enum { P = 5, C = 32 };
    const char *path = scratch_path("proj.safetensors");
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    mood_clip *m = NULL;
    mood_clip_config hint = {0};
    float W[P * C], pooled[2 * C], out[2 * P];
    int64_t shape[2] = {P, C};
    for (int i = 0; i < P * C; i++)
        W[i] = (float)((i * 7) % 13) / 8 - 0.7f;
    for (int i = 0; i < 2 * C; i++)
        pooled[i] = (float)((i * 5) % 11) / 4 - 1.1f;
    MOOD_CHECK_OK(mood_st_open(&f, fixture("clip/quick_gelu.safetensors")));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; f && w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        MOOD_CHECK_OK(mood_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data));
    }
    if (w)
        MOOD_CHECK_OK(
            mood_st_writer_add_f32(w, "text_projection.weight", MOOD_DTYPE_F32, 2, shape, W));
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    mood_st_close(f);
    hint.heads = 4;
    MOOD_CHECK_OK(mood_clip_load(&m, path, &hint));
    if (!m)
        return;
    MOOD_CHECK(mood_clip_has_projection(m) && mood_clip_get_config(m)->projection_dim == P);
    MOOD_CHECK_OK(mood_clip_project(m, pooled, 2, out));
    for (int b = 0; b < 2; b++) {
        for (int p = 0; p < P; p++) {
            double want = 0;
            for (int c = 0; c < C; c++)
                want += (double)pooled[b * C + c] * W[p * C + c];
            MOOD_CHECK_MSG(fabs(out[b * P + p] - want) <= 1e-5 * (1 + fabs(want)), "%d %d", b, p);
        }
    }
    MOOD_CHECK(mood_clip_project(m, pooled, 0, out) == MOOD_EINVAL);
    mood_clip_free(m);
}

static void test_bad_args(void)
{
    mood_clip *m = NULL;
    mood_clip_config hint = {0};
    int32_t ids[T] = {0};
    float out[T * 32];
    MOOD_CHECK(mood_clip_load(&m, fixture("clip/gelu.safetensors"), NULL) == MOOD_EINVAL);
    hint.heads = 4;
    MOOD_CHECK_OK(mood_clip_load(&m, fixture("clip/gelu.safetensors"), &hint));
    if (!m)
        return;
    MOOD_CHECK(mood_clip_forward(m, ids, 1, T, 3, 1, out, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_clip_forward(m, ids, 1, T + 1, 1, 1, out, NULL) == MOOD_EINVAL);
    ids[3] = 1000;
    MOOD_CHECK(mood_clip_forward(m, ids, 1, T, 1, 1, out, NULL) == MOOD_EINVAL);
    mood_clip_free(m);
}

/* Every allocation failure is reported and leaks nothing (checked under ASan). */
static void test_alloc_failures(void)
{
    int32_t ids[T] = {0};
    float out[T * 32];
    mood_clip_config hint = {0};
    hint.heads = 4;
    for (long n = 1; n < 64; n++) {
        mood_clip *m = NULL;
        mood__alloc_fail_at(n);
        int rc = mood_clip_load(&m, fixture("clip/gelu.safetensors"), &hint);
        if (rc == 0)
            rc = mood_clip_forward(m, ids, 1, T, 1, 1, out, out);
        mood__alloc_fail_at(0);
        MOOD_CHECK(rc == 0 || rc == MOOD_ENOMEM);
        mood_clip_free(m);
    }
}

MOOD_TEST_MAIN(MOOD_T(test_quick_gelu), MOOD_T(test_gelu), MOOD_T(test_missing_tensor),
               MOOD_T(test_wrong_shape), MOOD_T(test_checkpoint_prefix), MOOD_T(test_openclip_sd2),
               MOOD_T(test_openclip_sdxl_te2), MOOD_T(test_encoder_choice),
               MOOD_T(test_hf_projection), MOOD_T(test_bad_args), MOOD_T(test_alloc_failures))
