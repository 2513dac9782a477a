/*
 * test_bake.c: conformance of mood_bake against the reference tools. Every case of
 * tests/fixtures/{kohya,lycoris,peft}/cases.json (made by tools/make_fixtures_*.py with kohya
 * sd-scripts, LyCORIS, PEFT/diffusers) is baked and compared with the tool's merged tensors:
 *   - every expected tensor within the case's atol + rtol·|expected|;
 *   - every other tensor bit-identical to the base;
 *   - the output's keys, dtypes, shapes and data offsets identical to the base's;
 *   - the metadata records what was merged.
 * Plus the failure paths: a NaN-producing multiplier is refused and leaves no file.
 */
#include <cjson/cJSON.h>

#include "harness.h"
#include "lora/lora_internal.h"

static char *read_text(const char *path)
{
    size_t n;
    unsigned char *data = read_file(path, &n);
    char *text;
    if (!data)
        return NULL;
    text = realloc(data, n + 1);
    if (!text) {
        free(data);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

/* Output layout equals the base's: same names in the same order, dtypes, shapes, offsets. */
static int same_layout(const mood_st_file *out, const mood_st_file *base, const char *name)
{
    if (mood_st_count(out) != mood_st_count(base) || mood_st_header_len(out) < 8 ||
        mood_st_file_size(out) - mood_st_header_len(out) !=
            mood_st_file_size(base) - mood_st_header_len(base)) {
        fprintf(stderr, "  %s: tensor count or data size differs from the base\n", name);
        return 0;
    }
    for (size_t i = 0; i < mood_st_count(base); i++) {
        const mood_st_tensor *a = mood_st_at(out, i), *b = mood_st_at(base, i);
        int same = strcmp(a->name, b->name) == 0 && a->dtype == b->dtype && a->ndim == b->ndim &&
                   a->begin == b->begin && a->end == b->end;
        for (int d = 0; same && d < a->ndim; d++)
            same = a->shape[d] == b->shape[d];
        if (!same) {
            fprintf(stderr, "  %s: tensor %zu: %s differs from the base's %s\n", name, i, a->name,
                    b->name);
            return 0;
        }
    }
    return 1;
}

static float *to_f32(const mood_st_tensor *t)
{
    float *v = malloc((size_t)mood_st_numel(t) * sizeof *v + 1);
    if (v && mood_st_to_f32(v, t) != 0) {
        free(v);
        v = NULL;
    }
    return v;
}

/* Compares one output tensor with the reference; returns the number of bad elements. */
static long compare_tensor(const mood_st_tensor *got, const mood_st_tensor *want, double atol,
                           double rtol, const char *name)
{
    float *g = to_f32(got), *w = to_f32(want);
    long bad = 0;
    int64_t n = mood_st_numel(want);
    double worst = 0;
    if (!g || !w || mood_st_numel(got) != n) {
        fprintf(stderr, "  %s: %s: cannot compare (size)\n", name, want->name);
        free(g);
        free(w);
        return 1;
    }
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)g[i] - w[i]);
        if (!close_enough(g[i], w[i], atol, rtol)) {
            bad++;
            if (d > worst)
                worst = d;
        }
    }
    if (bad)
        fprintf(stderr, "  %s: %s: %ld of %lld elements off (worst |diff| %g)\n", name, want->name,
                bad, (long long)n, worst);
    free(g);
    free(w);
    return bad;
}

static int check_output(const char *out_path, const char *base_path, const char *exp_path,
                        double atol, double rtol, const char *name)
{
    mood_st_file *out = NULL, *base = NULL, *exp = NULL;
    int ok = 0;
    if (mood_st_open(&out, out_path) || mood_st_open(&base, base_path) ||
        mood_st_open(&exp, exp_path)) {
        fprintf(stderr, "  %s: %s\n", name, mood_error_last());
        goto done;
    }
    ok = same_layout(out, base, name);
    for (size_t i = 0; ok && i < mood_st_count(exp); i++) {
        const mood_st_tensor *w = mood_st_at(exp, i), *g = mood_st_find(out, w->name);
        if (!g) {
            fprintf(stderr, "  %s: expected tensor %s missing\n", name, w->name);
            ok = 0;
        } else if (compare_tensor(g, w, atol, rtol, name)) {
            ok = 0;
        }
    }
    for (size_t i = 0; ok && i < mood_st_count(base); i++) {
        const mood_st_tensor *b = mood_st_at(base, i), *g = mood_st_find(out, b->name);
        if (!mood_st_find(exp, b->name) && memcmp(g->data, b->data, mood_st_nbytes(b)) != 0) {
            fprintf(stderr, "  %s: %s changed but the reference left it alone\n", name, b->name);
            ok = 0;
        }
    }
    if (ok &&
        (!mood_st_meta_get(out, "modelspec.merged_from") || !mood_st_meta_get(out, "mood_baked"))) {
        fprintf(stderr, "  %s: merge metadata missing\n", name);
        ok = 0;
    }
done:
    mood_st_close(out);
    mood_st_close(base);
    mood_st_close(exp);
    return ok;
}

static double num(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* Bakes one case of dir/cases.json; returns 1 when it matches the reference. */
static int run_case(const char *dir, const cJSON *c)
{
    const char *name = json_str(c, "name"), *base = json_str(c, "base"),
               *exp = json_str(c, "expected");
    const cJSON *loras = cJSON_GetObjectItemCaseSensitive(c, "loras"), *l;
    mood_weighted_adapter ads[8];
    char paths[8][1024], base_path[1024], exp_path[1024], out[1024];
    mood_bake_options o;
    size_t n = 0;
    memset(ads, 0, sizeof ads);
    int ok;
    if (!name || !base || !exp || !cJSON_IsArray(loras)) {
        fprintf(stderr, "  malformed case in %s/cases.json\n", dir);
        return 0;
    }
    cJSON_ArrayForEach(l, loras)
    {
        if (n == 8 || !json_str(l, "file"))
            return 0;
        snprintf(paths[n], sizeof paths[n], "%s/%s", fixture(dir), json_str(l, "file"));
        ads[n].path = paths[n];
        ads[n].unet = num(l, "unet", 1.0);
        ads[n].te = num(l, "te", ads[n].unet);
        n++;
    }
    snprintf(base_path, sizeof base_path, "%s/%s", fixture(dir), base);
    snprintf(exp_path, sizeof exp_path, "%s/%s", fixture(dir), exp);
    snprintf(out, sizeof out, "%s", scratch_path("baked.safetensors"));
    memset(&o, 0, sizeof o);
    o.base = base_path;
    o.adapters = ads;
    o.n_adapters = n;
    o.output = out;
    if (mood_bake(&o) != 0) {
        fprintf(stderr, "  %s/%s: mood_bake failed: %s\n", dir, name, mood_error_last());
        return 0;
    }
    ok = check_output(out, base_path, exp_path, num(c, "atol", 0), num(c, "rtol", 0), name);
    remove(out);
    return ok;
}

/* Runs every bake case of a fixture folder; returns the number that failed (or -1 when the
 * folder has no cases.json). */
static int run_folder(const char *dir)
{
    char path[1024], *text;
    cJSON *root, *cases, *c;
    int failed = 0, total = 0;
    snprintf(path, sizeof path, "%s/cases.json", fixture(dir));
    if (!(text = read_text(path)))
        return -1;
    root = cJSON_Parse(text);
    free(text);
    cases = cJSON_GetObjectItemCaseSensitive(root, "bake");
    if (!cJSON_IsArray(cases)) {
        fprintf(stderr, "  %s: no \"bake\" array\n", path);
        cJSON_Delete(root);
        return 1;
    }
    cJSON_ArrayForEach(c, cases)
    {
        int ok = run_case(dir, c);
        total++;
        failed += !ok;
        printf("  %-5s %s/%s\n", ok ? "ok" : "FAIL", dir,
               json_str(c, "name") ? json_str(c, "name") : "?");
    }
    printf("  %s: %d of %d cases match the reference\n", dir, total - failed, total);
    cJSON_Delete(root);
    return failed;
}

static void test_kohya_cases(void)
{
    MOOD_CHECK(run_folder("kohya") == 0);
}

static void test_lycoris_cases(void)
{
    MOOD_CHECK(run_folder("lycoris") == 0);
}

static void test_peft_cases(void)
{
    int failed = run_folder("peft");
    if (failed < 0)
        printf("  peft: no cases.json yet (fixtures not generated)\n");
    MOOD_CHECK(failed <= 0);
}

/* Writes a one-module LoRA for the SD1 base's first fc1 whose factors are all `value`. */
static int write_huge_lora(const char *path, float value)
{
    mood_st_file *base = NULL;
    mood_st_writer *w = NULL;
    const mood_st_tensor *t;
    float *up = NULL, *down = NULL;
    int err = mood_st_open(&base, fixture("bases/sd1_base.safetensors"));
    if (!err && !(t = mood_st_find(base, "cond_stage_model.transformer.text_model.encoder."
                                         "layers.0.mlp.fc1.weight")))
        err = -1;
    if (!err) {
        int64_t us[2] = {t->shape[0], 1}, ds[2] = {1, t->shape[1]};
        up = malloc((size_t)us[0] * sizeof *up);
        down = malloc((size_t)ds[1] * sizeof *down);
        for (int64_t i = 0; up && i < us[0]; i++)
            up[i] = value;
        for (int64_t i = 0; down && i < ds[1]; i++)
            down[i] = value;
        if (!up || !down || mood_st_writer_new(&w) ||
            mood_st_writer_add(w, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                               MOOD_DTYPE_F32, 2, us, up) ||
            mood_st_writer_add(w, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                               MOOD_DTYPE_F32, 2, ds, down) ||
            mood_st_writer_write(w, path, NULL, NULL))
            err = -1;
    }
    mood_st_writer_free(w);
    mood_st_close(base);
    free(up);
    free(down);
    return err;
}

/* Weights pushed out of float32's or float16's range are refused naming the tensor and the
 * adapter (like diffusers' safe_fusing), and leave no output. */
static void bake_refused(const char *base, const char *lora, double mult, const char *words)
{
    mood_weighted_adapter a = {.path = NULL, .unet = mult, .te = mult};
    mood_bake_options o;
    char base_path[1024];
    snprintf(base_path, sizeof base_path, "%s", base);
    a.path = lora;
    memset(&o, 0, sizeof o);
    o.base = base_path;
    o.adapters = &a;
    o.n_adapters = 1;
    o.output = scratch_path("nan.safetensors");
    MOOD_CHECK(mood_bake(&o) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), words) != NULL, "%s", mood_error_last());
    MOOD_CHECK(strstr(mood_error_last(), mood_path_basename(lora)) != NULL);
    MOOD_CHECK(strstr(mood_error_last(), "mlp.fc1.weight") != NULL);
    MOOD_CHECK(!mood_path_exists(o.output));
}

static void test_non_finite_refused(void)
{
    char lora[1024], huge[1024];
    snprintf(lora, sizeof lora, "%s", fixture("kohya/sd1_lora.safetensors"));
    snprintf(huge, sizeof huge, "%s", scratch_path("huge.safetensors"));
    bake_refused(fixture("bases/sd1_base_fp16.safetensors"), lora, 1e9, "out of the range");
    MOOD_CHECK(write_huge_lora(huge, 1e30f) == 0);
    /* 1e30 · 1e30 overflows float32 to inf */
    bake_refused(fixture("bases/sd1_base.safetensors"), huge, 1.0, "not finite");
}

/* An SDXL LoRA on an SD1 base is refused as a family mismatch. */
static void test_family_mismatch(void)
{
    mood_weighted_adapter a = {.path = NULL, .unet = 1, .te = 1};
    mood_bake_options o;
    char lora[1024];
    snprintf(lora, sizeof lora, "%s", fixture("kohya/sdxl_lora.safetensors"));
    a.path = lora;
    memset(&o, 0, sizeof o);
    o.base = fixture("bases/sd1_base.safetensors");
    o.adapters = &a;
    o.n_adapters = 1;
    o.output = scratch_path("family.safetensors");
    MOOD_CHECK(mood_bake(&o) == MOOD_EFAMILY);
    MOOD_CHECK(!mood_path_exists(o.output));
}

/* No write operation writes over what it reads (a bake into its own base replaced the checkpoint):
 * the output is checked against the inputs first, by file identity, and nothing is changed. */
static void test_output_is_an_input(void)
{
    char base[1024], lora[1024];
    mood_weighted_adapter a = {.path = NULL, .unet = 1, .te = 1};
    mood_bake_options o;
    mood_lora_write_options w;
    snprintf(base, sizeof base, "%s", scratch_path("own_base.safetensors"));
    snprintf(lora, sizeof lora, "%s", scratch_path("own_lora.safetensors"));
    MOOD_CHECK(copy_file(fixture("bases/sd1_base.safetensors"), base) == 0);
    MOOD_CHECK(copy_file(fixture("kohya/sd1_lora.safetensors"), lora) == 0);
    a.path = lora;
    memset(&o, 0, sizeof o);
    o.base = base;
    o.adapters = &a;
    o.n_adapters = 1;
    o.output = base;
    MOOD_CHECK(mood_bake(&o) == MOOD_EINVAL && strstr(mood_error_last(), "is also an input"));
    o.output = lora;
    MOOD_CHECK(mood_bake(&o) == MOOD_EINVAL);
    mood_lora_write_options_init(&w);
    w.output = lora;
    MOOD_CHECK(mood_lora_stack(&a, 1, &w) == MOOD_EINVAL);
    MOOD_CHECK(mood_lora_merge(&a, 1, 2, 0, &w) == MOOD_EINVAL);
    MOOD_CHECK(mood_lora_resize(lora, MOOD_RESIZE_FIXED, 0, 2, 0, &w) == MOOD_EINVAL);
    w.output = base;
    MOOD_CHECK(mood_lora_extract(base, fixture("bases/sd1_base_fp16.safetensors"), 2, 0, 0.01,
                                 &w) == MOOD_EINVAL);
    MOOD_CHECK(same_bytes(base, fixture("bases/sd1_base.safetensors")));
    MOOD_CHECK(same_bytes(lora, fixture("kohya/sd1_lora.safetensors")));
    mood_lora_write_options_init(NULL); /* takes NULL, as every init and dispose does */
}

MOOD_TEST_MAIN(MOOD_T(test_kohya_cases), MOOD_T(test_lycoris_cases), MOOD_T(test_peft_cases),
               MOOD_T(test_non_finite_refused), MOOD_T(test_family_mismatch),
               MOOD_T(test_output_is_an_input))
