/*
 * test_lora_write.c: the kohya-format LoRA writer (lora/lora_write.c).
 *
 * References:
 *  - tests/fixtures/kohya/{sd1,sdxl}_lora.safetensors were saved by kohya sd-scripts (see
 *    tests/fixtures/README.md); rewriting their factors must give the same data section, so the
 *    AutoV3 we embed must equal the sshs_model_hash kohya embedded, and the family metadata must
 *    carry kohya's strings.
 *  - The large-file hashes below were computed with Python safetensors 0.8.0 + torch 2.15 by the
 *    logic of sd-scripts train_util.precalculate_safetensors_hashes (serialise with the ss_* keys
 *    only, SHA-256 of the data section, and of bytes [1 MiB, 1 MiB + 64 KiB)) on the tensors
 *    made by big_modules() (values ((i*7919 + 13m) mod 2001 - 1000) / 1024, exact in float32).
 *  - Python repr(float) strings for mood__lora_py_float.
 */
#include "lora/lora_internal.h"
#include "mood/hash.h"
#include "harness.h"

/* Reads the kohya LoRA `rel` into out modules (F32 copies), in file order of down tensors. */
static size_t load_modules(mood_lora_out_module *mods, size_t cap, const mood_st_file *f)
{
    size_t n = 0;
    for (size_t i = 0; i < mood_st_count(f) && n < cap; i++) {
        const mood_st_tensor *d = mood_st_at(f, i), *u, *a;
        char key[512];
        size_t len = strlen(d->name);
        mood_lora_out_module *m = &mods[n];
        if (len < 17 || strcmp(d->name + len - 17, ".lora_down.weight") != 0)
            continue;
        memset(m, 0, sizeof *m);
        m->name = mood_strndup(d->name, len - 17);
        snprintf(key, sizeof key, "%s.lora_up.weight", m->name);
        u = mood_st_find(f, key);
        snprintf(key, sizeof key, "%s.alpha", m->name);
        a = mood_st_find(f, key);
        MOOD_CHECK(u && a);
        if (!u || !a)
            continue;
        m->rank = (int)d->shape[0];
        m->ndim = d->ndim;
        m->out = u->shape[0];
        m->in = d->shape[1];
        m->kh = d->ndim == 4 ? d->shape[2] : 1;
        m->kw = d->ndim == 4 ? d->shape[3] : 1;
        MOOD_CHECK_OK(mood_dtype_read_f64(&m->alpha, a->data, a->dtype));
        m->up = mood_malloc((size_t)mood_st_numel(u) * sizeof(float));
        m->down = mood_malloc((size_t)mood_st_numel(d) * sizeof(float));
        MOOD_CHECK_OK(mood_st_to_f32(m->up, u));
        MOOD_CHECK_OK(mood_st_to_f32(m->down, d));
        n++;
    }
    return n;
}

static void dispose_all(mood_lora_out_module *mods, size_t n)
{
    for (size_t i = 0; i < n; i++)
        mood__lora_out_module_dispose(&mods[i]);
}

static void check_meta_eq(const mood_st_file *a, const mood_st_file *b, const char *key)
{
    const char *x = mood_st_meta_get(a, key), *y = mood_st_meta_get(b, key);
    MOOD_CHECK_MSG(x && y && strcmp(x, y) == 0, "%s: mood \"%s\" kohya \"%s\"", key,
                   x ? x : "(none)", y ? y : "(none)");
}

/* Rewrites a kohya LoRA and checks data hash and family metadata against kohya's. */
static void rewrite_kohya(const char *rel, mood_family family)
{
    static mood_lora_out_module mods[1024];
    mood_st_file *ref = NULL, *out = NULL;
    mood_file_hashes h;
    const char *path = scratch_path("rewrite.safetensors");
    size_t n;
    MOOD_CHECK_OK(mood_st_open(&ref, fixture(rel)));
    if (!ref)
        return;
    n = load_modules(mods, 1024, ref);
    MOOD_CHECK(n > 0 && 3 * n == mood_st_count(ref));
    MOOD_CHECK_OK(mood__lora_write(path, mods, n, family, MOOD_DTYPE_F32, NULL, NULL, NULL));
    MOOD_CHECK_OK(mood_st_open(&out, path));
    MOOD_CHECK_OK(mood_hash_file(&h, path, NULL, NULL));
    if (out) {
        static const char *const same[] = {"sshs_model_hash",        "sshs_legacy_hash",
                                           "ss_base_model_version",  "ss_v2",
                                           "ss_network_module",      "ss_network_dim",
                                           "ss_network_alpha",       "modelspec.sai_model_spec",
                                           "modelspec.architecture", "modelspec.implementation",
                                           "modelspec.resolution",   "modelspec.prediction_type"};
        for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
            check_meta_eq(out, ref, same[i]);
        MOOD_CHECK(strcmp(mood_st_meta_get(out, "sshs_model_hash"), h.autov3) == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(out, "modelspec.title"), "rewrite") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(out, "ss_network_args"), "{}") == 0);
        MOOD_CHECK(mood_st_meta_get(out, "modelspec.date") != NULL);
        MOOD_CHECK(mood_st_header_len(out) % 8 == 0);
    }
    dispose_all(mods, n);
    mood_st_close(out);
    mood_st_close(ref);
}

static void test_rewrite_sd1(void)
{
    rewrite_kohya("kohya/sd1_lora.safetensors", MOOD_FAMILY_SD1);
}

static void test_rewrite_sdxl(void)
{
    rewrite_kohya("kohya/sdxl_lora.safetensors", MOOD_FAMILY_SDXL);
}

static float *pattern(int64_t n, int m)
{
    float *v = mood_malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)((((i * 7919 + m * 13) % 2001) - 1000) / 1024.0);
    return v;
}

static void big_modules(mood_lora_out_module mods[2])
{
    static const char *const names[2] = {"lora_unet_big_a", "lora_unet_big_b"};
    for (int m = 0; m < 2; m++) {
        memset(&mods[m], 0, sizeof mods[m]);
        mods[m].name = mood_strdup(names[m]);
        mods[m].rank = 128;
        mods[m].alpha = 64;
        mods[m].ndim = 2;
        mods[m].out = mods[m].in = 1024;
        mods[m].kh = mods[m].kw = 1;
        mods[m].up = pattern(1024 * 128, 2 * m);
        mods[m].down = pattern(128 * 1024, 2 * m + 1);
    }
}

/* Files over 1 MiB: sshs_legacy_hash is no longer the empty digest. */
static void test_large_hashes(void)
{
    static const struct {
        mood_dtype dt;
        const char *model, *legacy;
    } cases[] = {
        {MOOD_DTYPE_F32, "3491d58db520f4c7ccd973562de5a4561229e48ac33b4cfc125840af0c95b6f3",
         "9e23e0df"},
        {MOOD_DTYPE_F16, "d646edb48174c724e02d4a9d97170c5916f6bd6f9880ae67791a01f218e9f437",
         "9c043d61"},
        {MOOD_DTYPE_BF16, "99863c09e7b0c3fabacb0e2dd64bfeef0be93db4af1e2c33ea03d69c1cd55a88",
         "7c6fe63d"},
    };
    /* The ss_* keys Python serialised: the defaults must produce exactly these. */
    const char *meta[] = {"modelspec.title", "ignored", NULL};
    mood_lora_out_module mods[2];
    big_modules(mods);
    for (size_t c = 0; c < 3; c++) {
        const char *path = scratch_path("big.safetensors");
        mood_st_file *f = NULL;
        mood_file_hashes h;
        MOOD_CHECK_OK(
            mood__lora_write(path, mods, 2, MOOD_FAMILY_SD1, cases[c].dt, meta, NULL, NULL));
        MOOD_CHECK_OK(mood_st_open(&f, path));
        MOOD_CHECK_OK(mood_hash_file(&h, path, NULL, NULL));
        if (!f)
            continue;
        MOOD_CHECK_MSG(strcmp(mood_st_meta_get(f, "sshs_model_hash"), cases[c].model) == 0, "%s",
                       mood_st_meta_get(f, "sshs_model_hash"));
        MOOD_CHECK(strcmp(h.autov3, cases[c].model) == 0);
        MOOD_CHECK_MSG(strcmp(mood_st_meta_get(f, "sshs_legacy_hash"), cases[c].legacy) == 0, "%s",
                       mood_st_meta_get(f, "sshs_legacy_hash"));
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "ss_network_dim"), "128") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "ss_network_alpha"), "64.0") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "modelspec.title"), "ignored") == 0);
        mood_st_close(f);
    }
    MOOD_CHECK(!mood_path_exists(scratch_path("big.safetensors.sshs-legacy.tmp")));
    dispose_all(mods, 2);
}

/* A 3x3 conv and a Linear with different ranks, in F16: shapes, dtypes, values, metadata. */
static void test_shapes_and_meta(void)
{
    mood_lora_out_module mods[2];
    const char *path = scratch_path("conv.safetensors");
    const char *meta[] = {"ss_network_args", NULL, "ss_output_name", "x", "ss_v2", "maybe", NULL};
    mood_st_file *f = NULL;
    memset(mods, 0, sizeof mods);
    mods[0] = (mood_lora_out_module){mood_strdup("lora_unet_conv_in"),
                                     2,
                                     1.0,
                                     pattern(6, 0),
                                     pattern(2 * 4 * 9, 1),
                                     4,
                                     3,
                                     4,
                                     3,
                                     3};
    mods[1] = (mood_lora_out_module){mood_strdup("lora_te_text_model_encoder_layers_0_mlp_fc1"),
                                     3,
                                     1.5,
                                     pattern(15, 2),
                                     pattern(21, 3),
                                     2,
                                     5,
                                     7,
                                     1,
                                     1};
    MOOD_CHECK_OK(
        mood__lora_write(path, mods, 2, MOOD_FAMILY_SD2, MOOD_DTYPE_F16, meta, NULL, NULL));
    MOOD_CHECK_OK(mood_st_open(&f, path));
    if (f) {
        const mood_st_tensor *u = mood_st_find(f, "lora_unet_conv_in.lora_up.weight");
        const mood_st_tensor *d = mood_st_find(f, "lora_unet_conv_in.lora_down.weight");
        const mood_st_tensor *a = mood_st_find(f, "lora_unet_conv_in.alpha");
        const mood_st_tensor *d2 =
            mood_st_find(f, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight");
        float back[72];
        double alpha = 0;
        MOOD_CHECK(mood_st_count(f) == 6);
        MOOD_CHECK(u && u->ndim == 4 && u->shape[0] == 3 && u->shape[1] == 2 && u->shape[2] == 1 &&
                   u->shape[3] == 1 && u->dtype == MOOD_DTYPE_F16);
        MOOD_CHECK(d && d->ndim == 4 && d->shape[0] == 2 && d->shape[1] == 4 && d->shape[2] == 3 &&
                   d->shape[3] == 3);
        MOOD_CHECK(a && a->ndim == 0 && a->dtype == MOOD_DTYPE_F16);
        MOOD_CHECK(d2 && d2->ndim == 2 && d2->shape[0] == 3 && d2->shape[1] == 7);
        if (d && a) {
            MOOD_CHECK_OK(mood_st_to_f32(back, d));
            for (int i = 0; i < 72; i++) /* pattern values are multiples of 1/1024: exact */
                MOOD_CHECK(back[i] == mods[0].down[i]);
            MOOD_CHECK_OK(mood_dtype_read_f64(&alpha, a->data, a->dtype));
            MOOD_CHECK(alpha == 1.0);
        }
        MOOD_CHECK(mood_st_meta_get(f, "ss_network_args") == NULL);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "ss_v2"), "maybe") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "ss_output_name"), "x") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "ss_network_dim"), "3") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "ss_network_alpha"), "1.5") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "ss_base_model_version"), "sd_v2_v") == 0);
        MOOD_CHECK(strcmp(mood_st_meta_get(f, "modelspec.architecture"),
                          "stable-diffusion-v2-768-v/lora") == 0);
        mood_st_close(f);
    }
    dispose_all(mods, 2);
}

static void test_bad_input(void)
{
    mood_lora_out_module m = {
        mood_strdup("lora_unet_x"), 0, 1.0, pattern(4, 0), pattern(4, 1), 2, 2, 2, 1, 1};
    const char *path = scratch_path("bad.safetensors");
    MOOD_CHECK(mood__lora_write(path, &m, 1, MOOD_FAMILY_SD1, MOOD_DTYPE_F32, NULL, NULL, NULL) ==
               MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "lora_unet_x") != NULL);
    m.rank = 1;
    MOOD_CHECK(mood__lora_write(path, &m, 1, MOOD_FAMILY_SD1, MOOD_DTYPE_I64, NULL, NULL, NULL) ==
               MOOD_EINVAL);
    MOOD_CHECK(!mood_path_exists(path));
    MOOD_CHECK_OK(
        mood__lora_write(path, &m, 1, MOOD_FAMILY_UNKNOWN, MOOD_DTYPE_F32, NULL, NULL, NULL));
    /* a factor past float16's range: refused before writing, the file already there kept */
    m.up[1] = 1e6f;
    MOOD_CHECK(write_file(path, "precious", 8) == 0);
    MOOD_CHECK(mood__lora_write(path, &m, 1, MOOD_FAMILY_SD1, MOOD_DTYPE_F16, NULL, NULL, NULL) ==
               MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "lora_unet_x") &&
                       strstr(mood_error_last(), "past the range of the output dtype"),
                   "%s", mood_error_last());
    {
        size_t n = 0;
        unsigned char *kept = read_file(path, &n);
        MOOD_CHECK(kept && n == 8 && !memcmp(kept, "precious", 8));
        free(kept);
    }
    MOOD_CHECK_OK(mood__lora_write(path, &m, 1, MOOD_FAMILY_SD1, MOOD_DTYPE_F32, NULL, NULL, NULL));
    mood__lora_out_module_dispose(&m);
    MOOD_CHECK(m.up == NULL && m.name == NULL);
}

/* Python 3 repr() of the same doubles. */
static void test_py_float(void)
{
    static const struct {
        double v;
        const char *s;
    } cases[] = {{4.0, "4.0"},
                 {0.5, "0.5"},
                 {1.0 / 3.0, "0.3333333333333333"},
                 {(double)((float)(1.0 / 3.0) * 2.0f), "0.6666666865348816"},
                 {1e-5, "1e-05"},
                 {1e16, "1e+16"},
                 {1.5e16, "1.5e+16"},
                 {123456789012345.0, "123456789012345.0"},
                 {0.0001, "0.0001"},
                 {0.00012, "0.00012"},
                 {100.0, "100.0"},
                 {0.1, "0.1"},
                 {2.5e-7, "2.5e-07"},
                 {-8.0, "-8.0"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[40];
        mood__lora_py_float(buf, sizeof buf, cases[i].v);
        MOOD_CHECK_MSG(strcmp(buf, cases[i].s) == 0, "%s != %s", buf, cases[i].s);
    }
}

MOOD_TEST_MAIN(MOOD_T(test_rewrite_sd1), MOOD_T(test_rewrite_sdxl), MOOD_T(test_large_hashes),
               MOOD_T(test_shapes_and_meta), MOOD_T(test_bad_input), MOOD_T(test_py_float))
