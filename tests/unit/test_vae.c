/*
 * test_vae.c: the VAE encoder and decoder (mood/vae.h) against diffusers' AutoencoderKL.
 *
 * Fixtures (tests/fixtures/vae/, tools/make_fixtures_vae.py): one tiny random AutoencoderKL with
 * the SD block structure (4 levels of 8, 8, 16, 16 channels, 2 layers per block, 4 norm groups,
 * mid attention, quant convs), its weights in float16 in three forms: a diffusers pipeline root
 * (tiny/, vae/config.json + diffusion_pytorch_model.fp16.safetensors), a standalone LDM-named file
 * (ldm_vae.safetensors, attention as 1x1 convs) and a fake single-file checkpoint
 * ("first_stage_model.", ldm_ckpt.safetensors); ref.safetensors holds diffusers' float32 encode
 * (latent_dist mean and logvar of a 2 x 3 x 32 x 24 image) and decode (of a 2 x 4 x 5 x 3 latent).
 * Each form must reproduce them within 1e-4 of the largest reference magnitude. The LDM forms have
 * no config.json, so the norm groups come from the hint (their default, 32, does not divide 8).
 * Also: missing and misshapen tensors fail with MOOD_EFORMAT naming the tensor, diffusers' pre-0.14
 * attention names load, and bad sizes are MOOD_EINVAL.
 */
#include "harness.h"

#include <sys/stat.h>

#include "common/common.h"

#include "mood/safetensors.h"
#include "mood/vae.h"

#define TOL 1e-4

/* Max |a - b| over n, divided by max(1, max |b|). */
static double rel_diff(const float *a, const float *b, size_t n)
{
    return harness_rel_diff(a, b, n, 1.0);
}

/* The reference tensors, read once. */
typedef struct ref_data {
    float *image, *mean, *logvar, *latent, *decoded;
    size_t n_image, n_mean, n_latent, n_decoded;
} ref_data;

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

static const ref_data *ref(void)
{
    static ref_data r;
    static int loaded;
    size_t n_logvar = 0;
    if (loaded)
        return r.image ? &r : NULL;
    loaded = 1;
    mood_st_file *f = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, fixture("vae/ref.safetensors")));
    if (!f)
        return NULL;
    r.image = ref_f32(f, "image", &r.n_image);
    r.mean = ref_f32(f, "mean", &r.n_mean);
    r.logvar = ref_f32(f, "logvar", &n_logvar);
    r.latent = ref_f32(f, "latent", &r.n_latent);
    r.decoded = ref_f32(f, "decoded", &r.n_decoded);
    mood_st_close(f);
    MOOD_CHECK(r.image && r.mean && r.logvar && r.latent && r.decoded);
    MOOD_CHECK(r.n_image == 2 * 3 * 32 * 24 && r.n_mean == 2 * 4 * 4 * 3 && n_logvar == r.n_mean &&
               r.n_latent == 2 * 4 * 5 * 3 && r.n_decoded == 2 * 3 * 40 * 24);
    return r.image ? &r : NULL;
}

/* Checks the sizes every form shares (the fixture model's). */
static void check_shared_config(const mood_vae_config *c)
{
    MOOD_CHECK(c->in_channels == 3 && c->out_channels == 3 && c->latent_channels == 4);
    MOOD_CHECK(c->n_blocks == 4 && c->block_out_channels[0] == 8 && c->block_out_channels[1] == 8 &&
               c->block_out_channels[2] == 16 && c->block_out_channels[3] == 16);
    MOOD_CHECK(c->layers_per_block == 2 && c->norm_num_groups == 4);
    MOOD_CHECK(c->use_quant_conv && c->use_post_quant_conv && c->mid_block_add_attention);
}

/* Encodes and decodes the reference inputs with m; prints and checks the differences. */
static void compare(const mood_vae *m, const char *label)
{
    const ref_data *r = ref();
    if (!m || !r)
        return;
    float *mean = malloc(r->n_mean * sizeof *mean), *logvar = malloc(r->n_mean * sizeof *logvar);
    float *img = malloc(r->n_decoded * sizeof *img);
    MOOD_CHECK_OK(mood_vae_encode(m, mean, logvar, r->image, 2, 32, 24));
    MOOD_CHECK_OK(mood_vae_decode(m, img, r->latent, 2, 5, 3));
    double dm = rel_diff(mean, r->mean, r->n_mean), dl = rel_diff(logvar, r->logvar, r->n_mean);
    double dd = rel_diff(img, r->decoded, r->n_decoded);
    printf("  %s: max rel diff mean %.3g, logvar %.3g, decoded %.3g\n", label, dm, dl, dd);
    MOOD_CHECK(dm <= TOL && dl <= TOL && dd <= TOL);
    /* logvar may be left out; the mean is the same */
    MOOD_CHECK_OK(mood_vae_encode(m, logvar, NULL, r->image, 2, 32, 24));
    MOOD_CHECK(!memcmp(mean, logvar, r->n_mean * sizeof *mean));
    free(mean), free(logvar), free(img);
}

static mood_vae_config groups4(void)
{
    mood_vae_config hint = {0};
    hint.norm_num_groups = 4;
    return hint;
}

static void test_diffusers_folder(void)
{
    mood_vae *m = NULL, *m2 = NULL;
    MOOD_CHECK_OK(mood_vae_load(&m, fixture("vae/tiny")));
    if (m) {
        const mood_vae_config *c = mood_vae_get_config(m);
        check_shared_config(c);
        MOOD_CHECK(fabsf(c->scaling_factor - 0.13025f) < 1e-7f && c->shift_factor == 0);
        MOOD_CHECK(c->has_latents_mean && c->latents_mean[1] == -0.2f &&
                   c->latents_std[3] == 4.5f && c->sample_size == 32);
        compare(m, "pipeline root");
    }
    MOOD_CHECK_OK(mood_vae_load(&m2, fixture("vae/tiny/vae")));
    if (m2)
        compare(m2, "vae folder");
    mood_vae_free(m);
    mood_vae_free(m2);
}

/* A file without config.json: sizes from the shapes, groups from the hint. */
static void load_file(const char *rel, const char *label)
{
    mood_vae *m = NULL;
    mood_vae_config hint = groups4();
    MOOD_CHECK_OK(mood_vae_load_hint(&m, fixture(rel), &hint));
    if (m) {
        const mood_vae_config *c = mood_vae_get_config(m);
        check_shared_config(c);
        MOOD_CHECK(c->scaling_factor == 0.18215f && !c->has_latents_mean);
        compare(m, label);
    }
    mood_vae_free(m);
}

static void test_ldm_file(void)
{
    load_file("vae/ldm_vae.safetensors", "LDM file");
}

static void test_checkpoint(void)
{
    load_file("vae/ldm_ckpt.safetensors", "single-file checkpoint");
}

static void test_diffusers_file(void)
{
    load_file("vae/tiny/vae/diffusion_pytorch_model.fp16.safetensors", "diffusers file");
}

/* A name rewritten: the first occurrence of `from` replaced by `to`. */
typedef struct rename_rule {
    const char *from, *to;
} rename_rule;

/* Copy of fixture `src` into a scratch file: tensor `drop` left out, `reshape` given shape [3],
 * names changed by the n rules. */
static const char *rewrite_ex(const char *src, const char *drop, const char *reshape,
                              const rename_rule *rules, int n)
{
    const char *path = scratch_path("vae.safetensors");
    static const float junk[3];
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, fixture(src)));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; f && w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        int64_t three = 3;
        char name[256];
        if (drop && !strcmp(t->name, drop))
            continue;
        snprintf(name, sizeof name, "%s", t->name);
        for (int r = 0; r < n; r++) {
            const char *hit = strstr(t->name, rules[r].from);
            if (hit)
                snprintf(name, sizeof name, "%.*s%s%s", (int)(hit - t->name), t->name, rules[r].to,
                         hit + strlen(rules[r].from));
        }
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

static const char *rewrite(const char *src, const char *drop, const char *reshape)
{
    return rewrite_ex(src, drop, reshape, NULL, 0);
}

static void expect_error(const char *path, int code, const char *message)
{
    mood_vae *m = NULL;
    mood_vae_config hint = groups4();
    int rc = mood_vae_load_hint(&m, path, &hint);
    MOOD_CHECK_MSG(rc == code, "rc %d: %s", rc, mood_error_last());
    MOOD_CHECK(m == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), message) != NULL, "%s", mood_error_last());
    mood_vae_free(m);
}

static void test_missing_tensor(void)
{
    const char *ldm = "vae/ldm_vae.safetensors", *ckpt = "vae/ldm_ckpt.safetensors";
    expect_error(rewrite(ldm, "decoder.up.1.upsample.conv.weight", NULL), MOOD_EFORMAT,
                 "\"decoder.up.1.upsample.conv.weight\" is missing");
    expect_error(rewrite(ldm, "encoder.mid.attn_1.proj_out.bias", NULL), MOOD_EFORMAT,
                 "\"encoder.mid.attn_1.proj_out.bias\" is missing");
    expect_error(rewrite(ckpt, "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight", NULL),
                 MOOD_EFORMAT,
                 "\"first_stage_model.decoder.up.1.block.0.nin_shortcut.weight\" is missing");
    expect_error(rewrite("vae/tiny/vae/diffusion_pytorch_model.fp16.safetensors",
                         "decoder.up_blocks.0.resnets.2.conv2.bias", NULL),
                 MOOD_EFORMAT, "\"decoder.up_blocks.0.resnets.2.conv2.bias\" is missing");
    expect_error(rewrite(ldm, "quant_conv.weight", NULL), MOOD_EFORMAT,
                 "\"quant_conv.weight\" is missing");
    expect_error(rewrite(ldm, "encoder.mid.attn_1.q.weight", NULL), MOOD_EFORMAT,
                 "\"encoder.mid.attn_1.q.weight\" is missing");
    /* no VAE at all */
    expect_error(fixture("clip/gelu.safetensors"), MOOD_EFORMAT, "no VAE found");
}

static void test_wrong_shape(void)
{
    const char *ldm = "vae/ldm_vae.safetensors";
    expect_error(rewrite(ldm, NULL, "encoder.mid.attn_1.q.weight"), MOOD_EFORMAT,
                 "\"encoder.mid.attn_1.q.weight\" has shape [3], expected [16, 16]");
    expect_error(rewrite(ldm, NULL, "decoder.up.0.block.2.norm2.bias"), MOOD_EFORMAT,
                 "\"decoder.up.0.block.2.norm2.bias\" has shape [3], expected [8]");
    expect_error(rewrite(ldm, NULL, "encoder.down.1.downsample.conv.weight"), MOOD_EFORMAT,
                 "\"encoder.down.1.downsample.conv.weight\" has shape [3], expected [8, 8, 3, 3]");
}

/* Groups must divide the widths: the LDM default of 32 does not fit 8 channels. */
static void test_groups(void)
{
    mood_vae *m = NULL;
    int rc = mood_vae_load(&m, fixture("vae/ldm_vae.safetensors"));
    MOOD_CHECK_MSG(rc == MOOD_EFORMAT && strstr(mood_error_last(), "32 norm groups"), "%d %s", rc,
                   mood_error_last());
    MOOD_CHECK(m == NULL);
}

/* Files of diffusers < 0.14 name the attention group_norm, query, key, value, proj_attn. */
static void test_old_attention_names(void)
{
    static const rename_rule rules[] = {
        {"attentions.0.to_q.", "attentions.0.query."},
        {"attentions.0.to_k.", "attentions.0.key."},
        {"attentions.0.to_v.", "attentions.0.value."},
        {"attentions.0.to_out.0.", "attentions.0.proj_attn."},
    };
    mood_vae *m = NULL;
    mood_vae_config hint = groups4();
    MOOD_CHECK_OK(mood_vae_load_hint(
        &m,
        rewrite_ex("vae/tiny/vae/diffusion_pytorch_model.fp16.safetensors", NULL, NULL, rules, 4),
        &hint));
    if (m)
        compare(m, "pre-0.14 attention names");
    mood_vae_free(m);
}

/* A scratch VAE folder: the fixture's weights (symlinked) and its config.json with `key` set to
 * the JSON value `value`. */
static const char *folder_with(const char *key, const char *value)
{
    static int n;
    static char dir[1024];
    char path[1100], weights[1100];
    cJSON *cfg = load_json(fixture("vae/tiny/vae/config.json"));
    MOOD_CHECK(cfg != NULL);
    snprintf(dir, sizeof dir, "%s/cfg%d", scratch_dir(), n++);
    MOOD_CHECK(mkdir(dir, 0755) == 0);
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.fp16.safetensors", dir);
    MOOD_CHECK(realpath(fixture("vae/tiny/vae/diffusion_pytorch_model.fp16.safetensors"), path));
    MOOD_CHECK(symlink(path, weights) == 0);
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, key, cJSON_Parse(value));
    char *text = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    MOOD_CHECK(text && write_file(path, text, strlen(text)) == 0);
    free(text);
    cJSON_Delete(cfg);
    return dir;
}

static void test_config_json(void)
{
    expect_error(folder_with("_class_name", "\"AutoencoderTiny\""), MOOD_EUNSUPPORTED,
                 "AutoencoderTiny");
    expect_error(folder_with("down_block_types", "[\"DownEncoderBlock2D\", "
                                                 "\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", "
                                                 "\"AttnDownEncoderBlock2D\"]"),
                 MOOD_EUNSUPPORTED, "AttnDownEncoderBlock2D");
    expect_error(folder_with("in_channels", "4"), MOOD_EFORMAT,
                 "\"encoder.conv_in.weight\" has shape [8, 3, 3, 3], expected [8, 4, 3, 3]");
    expect_error(folder_with("latent_channels", "8"), MOOD_EFORMAT,
                 "latents_mean and latents_std must both hold 8 numbers");
    expect_error(folder_with("block_out_channels", "[8, 8, 16, 16, 32]"), MOOD_EUNSUPPORTED,
                 "5 levels");
    expect_error(folder_with("norm_num_groups", "3"), MOOD_EFORMAT, "3 norm groups");
    expect_error(folder_with("layers_per_block", "\"two\""), MOOD_EFORMAT,
                 "\"layers_per_block\" is not an integer");
    /* without quant convs the file's quant_conv tensors are ignored */
    mood_vae *m = NULL;
    MOOD_CHECK_OK(mood_vae_load(&m, folder_with("use_quant_conv", "false")));
    MOOD_CHECK(m && !mood_vae_get_config(m)->use_quant_conv);
    mood_vae_free(m);
}

static void test_bad_sizes(void)
{
    mood_vae *m = NULL;
    float buf[4 * 4 * 4 * 3 * 2];
    MOOD_CHECK_OK(mood_vae_load(&m, fixture("vae/tiny")));
    if (!m)
        return;
    MOOD_CHECK(mood_vae_decode(m, buf, buf, 0, 5, 3) == MOOD_EINVAL);
    MOOD_CHECK(mood_vae_decode(m, buf, buf, 1, 0, 3) == MOOD_EINVAL);
    MOOD_CHECK(mood_vae_encode(m, buf, NULL, buf, 1, 30, 24) == MOOD_EINVAL);
    MOOD_CHECK(mood_vae_encode(m, buf, NULL, buf, 1, 32, 20) == MOOD_EINVAL);
    mood_vae_free(m);
    MOOD_CHECK(mood_vae_load(&m, fixture("vae/missing")) == MOOD_ENOTFOUND);
    MOOD_CHECK(mood_vae_load(&m, fixture("vae")) == MOOD_ENOTFOUND);
}

/* Every allocation of a load and a decode failing in turn gives MOOD_ENOMEM and leaks nothing
 * (LeakSanitizer checks the latter in the sanitizer build). */
static void test_alloc_failures(void)
{
    const ref_data *r = ref();
    float *img = r ? malloc(r->n_decoded * sizeof *img) : NULL;
    int done = 0;
    long n = 1;
    for (; r && img && n < 1000 && !done; n++) {
        mood_vae *m = NULL;
        mood__alloc_fail_at(n);
        int rc = mood_vae_load(&m, fixture("vae/tiny"));
        if (rc == 0)
            rc = mood_vae_decode(m, img, r->latent, 2, 5, 3);
        mood__alloc_fail_at(0);
        MOOD_CHECK_MSG(rc == 0 || rc == MOOD_ENOMEM, "allocation %ld: %d %s", n, rc,
                       mood_error_last());
        done = rc == 0;
        mood_vae_free(m);
    }
    printf("  %ld allocations failed in turn\n", n - 2);
    MOOD_CHECK(done && n > 5);
    free(img);
}

MOOD_TEST_MAIN(MOOD_T(test_diffusers_folder), MOOD_T(test_ldm_file), MOOD_T(test_checkpoint),
               MOOD_T(test_diffusers_file), MOOD_T(test_missing_tensor), MOOD_T(test_wrong_shape),
               MOOD_T(test_groups), MOOD_T(test_old_attention_names), MOOD_T(test_config_json),
               MOOD_T(test_bad_sizes), MOOD_T(test_alloc_failures))
