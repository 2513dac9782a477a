/*
 * test_adapter.c: parsing adapters (lora/adapter.c) against the fixtures made by the reference
 * tools (kohya sd-scripts, LyCORIS, PEFT/diffusers; tests/fixtures/<tool>/cases.json), plus crafted
 * bad files.
 *
 * For every bake case, each adapter opens against its base with no unmatched key, the family is
 * the case's, and the set of base tensors its modules patch is exactly the set of tensors the
 * reference tool changed (the keys of <case>.expected.safetensors). kohya's recipe gives module
 * counts per part, key counts, ranks and alphas; LyCORIS case names give the algorithm and the
 * DoRA orientation.
 */
#include <cjson/cJSON.h>

#include "harness.h"
#include "lora/lora_internal.h"

/* Base path of a case: its "base" (relative to the folder) or bases/<family>_base. */
static void case_base(char *out, size_t n, const char *dir, const cJSON *c)
{
    const char *base = json_str(c, "base"), *fam = json_str(c, "family");
    char rel[512];
    if (base)
        snprintf(rel, sizeof rel, "%s/%s", dir, base);
    else
        snprintf(rel, sizeof rel, "bases/%s_base.safetensors", fam ? fam : "sd1");
    snprintf(out, n, "%s", fixture(rel));
}

/* Is `key` among the tensors of st? */
static int has_key(const mood_st_file *st, const char *key)
{
    return key && mood_st_find(st, key) != NULL;
}

/* Every patched tensor is in expected, and every expected tensor is patched by some module. */
static void check_targets(const char *name, mood_adapter **ads, size_t n, const char *expected)
{
    mood_st_file *exp = NULL;
    MOOD_CHECK_OK(mood_st_open(&exp, expected));
    if (!exp)
        return;
    for (size_t a = 0; a < n; a++) {
        for (size_t i = 0; ads[a] && i < ads[a]->n_modules; i++) {
            const mood_module *m = &ads[a]->modules[i];
            int bias_only = !m->t[ROLE_DIFF] && m->t[ROLE_DIFF_B];
            MOOD_CHECK_MSG(bias_only || m->t[ROLE_B_NORM] || has_key(exp, m->target->key),
                           "%s: %s patches %s, which the reference left unchanged", name, m->name,
                           m->target->key);
        }
    }
    for (size_t k = 0; k < mood_st_count(exp); k++) {
        const char *key = mood_st_at(exp, k)->name;
        int found = 0;
        for (size_t a = 0; a < n && !found; a++) {
            for (size_t i = 0; ads[a] && i < ads[a]->n_modules && !found; i++) {
                const mood_module *m = &ads[a]->modules[i];
                found = strcmp(m->target->key, key) == 0 ||
                        (m->target->bias_key && strcmp(m->target->bias_key, key) == 0 &&
                         (m->t[ROLE_DIFF_B] || m->t[ROLE_B_NORM]));
            }
        }
        MOOD_CHECK_MSG(found, "%s: the reference changed %s but no module patches it", name, key);
    }
    mood_st_close(exp);
}

/* LyCORIS case names -> the algorithm every module must have (0 = don't check). */
static int algo_of_case(const char *algo, mood_algo *out)
{
    static const struct {
        const char *prefix;
        mood_algo a;
    } map[] = {{"locon", MOOD_ALGO_LORA}, {"lora", MOOD_ALGO_LORA},   {"loha", MOOD_ALGO_LOHA},
               {"lokr", MOOD_ALGO_LOKR},  {"ia3", MOOD_ALGO_IA3},     {"diag_oft", MOOD_ALGO_OFT},
               {"boft", MOOD_ALGO_BOFT},  {"glora", MOOD_ALGO_GLORA}, {"full", MOOD_ALGO_FULL}};
    for (size_t i = 0; algo && i < sizeof map / sizeof map[0]; i++) {
        if (strncmp(algo, map[i].prefix, strlen(map[i].prefix)) == 0) {
            *out = map[i].a;
            return 1;
        }
    }
    return 0;
}

static void check_case_adapter(const char *cname, const cJSON *c, const mood_adapter *a,
                               const char *file)
{
    size_t tucker = 0;
    mood_algo want;
    const char *fam = json_str(c, "family"), *algo = json_str(c, "algo");
    int norms = cname && strstr(cname, "norm") != NULL;
    MOOD_CHECK_MSG(mood_adapter_unmatched_count(a) == 0, "%s: %zu unmatched keys, first %s", file,
                   mood_adapter_unmatched_count(a), mood_adapter_unmatched(a, 0));
    MOOD_CHECK_MSG(!fam || strcmp(mood_family_name(mood_adapter_family(a)), fam) == 0,
                   "%s: family %s, expected %s", file, mood_family_name(mood_adapter_family(a)),
                   fam);
    for (size_t i = 0; i < a->n_modules; i++) {
        const mood_module *m = &a->modules[i];
        if (algo_of_case(algo ? algo : cname, &want) && !(norms && m->algo == MOOD_ALGO_NORM))
            MOOD_CHECK_MSG(m->algo == want, "%s: %s is %s, expected %s", file, m->name,
                           mood_algo_name(m->algo), mood_algo_name(want));
        if (cname && strstr(cname, "dora_in"))
            MOOD_CHECK_MSG(m->dora == 1, "%s: %s dora %d, expected per-input", file, m->name,
                           m->dora);
        if (cname && strstr(cname, "dora_out"))
            MOOD_CHECK_MSG(m->dora == 2, "%s: %s dora %d, expected per-output", file, m->name,
                           m->dora);
        MOOD_CHECK(m->scale == m->scale && m->out > 0);
        tucker += m->tucker != 0;
    }
    /* LyCORIS uses Tucker only on decomposed kxk conv factors; the tiny lokr_tucker case has
     * none (its 3x3 w2 are full), the LoCon and LoHa ones do */
    if (cname && (strstr(cname, "locon_tucker") || strstr(cname, "loha_tucker")))
        MOOD_CHECK_MSG(tucker > 0, "%s: no Tucker module", file);
    else if (!cname || !strstr(cname, "tucker"))
        MOOD_CHECK_MSG(tucker == 0, "%s: %zu Tucker modules", file, tucker);
}

/* Scales PEFT's config implies, as the cases' descriptions state them (UNet, text encoder). */
static void check_peft_scale(const char *cname, const mood_adapter *a)
{
    static const struct {
        const char *name;
        double unet, te;
    } want[] = {{"peft_plain", 2.0, 0.5},
                {"peft_plain_diffusers_fmt", 2.0, 0.5},
                {"peft_plain_kohya_ab", 2.0, 0.5},
                {"peft_plain_legacy", 1.0, 1.0},
                {"peft_rslora", 1.5, 1.0}};
    for (size_t k = 0; cname && k < sizeof want / sizeof want[0]; k++) {
        if (strcmp(cname, want[k].name) != 0)
            continue;
        for (size_t i = 0; i < a->n_modules; i++) {
            double s = a->modules[i].target->part == MOOD_PART_UNET ? want[k].unet : want[k].te;
            MOOD_CHECK_MSG(fabs(a->modules[i].scale - s) < 1e-9, "%s: %s scale %g, expected %g",
                           cname, a->modules[i].name, a->modules[i].scale, s);
        }
    }
}

/* One bake case: open every adapter against the base, then check the patched set. */
static void run_case(const char *dir, const cJSON *c)
{
    char base_path[1024], path[1024];
    const cJSON *loras = cJSON_GetObjectItemCaseSensitive(c, "loras"), *l;
    const char *name = json_str(c, "name"), *expected = json_str(c, "expected");
    mood_checkpoint *base = NULL;
    mood_adapter *ads[8] = {NULL};
    size_t n = 0;
    case_base(base_path, sizeof base_path, dir, c);
    MOOD_CHECK_OK(mood_checkpoint_open(&base, base_path));
    if (!base)
        return;
    cJSON_ArrayForEach(l, loras)
    {
        char rel[512];
        if (n == 8 || !json_str(l, "file"))
            break;
        snprintf(rel, sizeof rel, "%s/%s", dir, json_str(l, "file"));
        snprintf(path, sizeof path, "%s", fixture(rel));
        MOOD_CHECK_OK(mood_adapter_open(&ads[n], path, base));
        if (ads[n])
            check_case_adapter(name, c, ads[n], path);
        if (ads[n])
            check_peft_scale(name, ads[n]);
        n++;
    }
    if (expected) {
        char rel[512];
        snprintf(rel, sizeof rel, "%s/%s", dir, expected);
        check_targets(name ? name : "?", ads, n, fixture(rel));
    }
    for (size_t i = 0; i < n; i++)
        mood_adapter_close(ads[i]);
    mood_checkpoint_close(base);
}

static int run_dir(const char *dir)
{
    char rel[256];
    cJSON *j, *c;
    int n = 0;
    snprintf(rel, sizeof rel, "%s/cases.json", dir);
    if (!(j = load_json(fixture(rel)))) {
        printf("note: %s has no readable cases.json yet\n", dir);
        return 0;
    }
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, "bake"))
    {
        run_case(dir, c);
        n++;
    }
    cJSON_Delete(j);
    return n;
}

static void test_fixture_cases(void)
{
    int n = run_dir("kohya") + run_dir("lycoris") + run_dir("peft");
    MOOD_CHECK_MSG(n >= 6, "only %d fixture cases found", n);
}

/* kohya svd_merge/resize/extract fixtures: the inputs' recorded rank, alpha and target shape per
 * module, and every output (LoRA, or the full-delta references) resolves completely. */
static void check_svd_input(const mood_checkpoint *base, const char *file, const cJSON *rec)
{
    char rel[512];
    mood_adapter *a = NULL;
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(rec, "modules");
    snprintf(rel, sizeof rel, "svd/%s", file);
    MOOD_CHECK_OK(mood_adapter_open(&a, fixture(rel), base));
    if (!a)
        return;
    MOOD_CHECK(a->n_unmatched == 0 && (int)a->n_modules == cJSON_GetArraySize(mods));
    for (size_t i = 0; i < a->n_modules; i++) {
        const mood_module *m = &a->modules[i];
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(mods, m->name);
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(r, "shape");
        int64_t got[4] = {m->out, m->in, m->kh, m->kw};
        const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(r, "alpha");
        MOOD_CHECK_MSG(r && cJSON_GetObjectItemCaseSensitive(r, "rank")->valueint == m->rank,
                       "%s: %s rank %d", file, m->name, m->rank);
        /* alpha null: no alpha tensor, scale 1 */
        MOOD_CHECK_MSG(cJSON_IsNumber(alpha) ? (m->has_alpha && m->alpha == alpha->valuedouble)
                                             : (!m->has_alpha && m->scale == 1.0),
                       "%s: %s alpha %g (stored: %d)", file, m->name, m->alpha, m->has_alpha);
        MOOD_CHECK_MSG(cJSON_GetArraySize(shape) == m->ndim, "%s: %s ndim %d", file, m->name,
                       m->ndim);
        for (int d = 0; d < cJSON_GetArraySize(shape) && d < 4; d++)
            MOOD_CHECK(cJSON_GetArrayItem(shape, d)->valuedouble == (double)got[d]);
    }
    mood_adapter_close(a);
}

static void check_svd_output(const mood_checkpoint *base, const char *file)
{
    char rel[512];
    mood_adapter *a = NULL;
    if (!file)
        return;
    snprintf(rel, sizeof rel, "svd/%s", file);
    MOOD_CHECK_OK(mood_adapter_open(&a, fixture(rel), base));
    MOOD_CHECK_MSG(a && a->n_unmatched == 0 && a->n_modules > 0, "%s", file);
    mood_adapter_close(a);
}

static void test_svd_fixtures(void)
{
    static const char *const lists[] = {"merge", "resize", "extract"};
    cJSON *j = load_json(fixture("svd/cases.json")), *c;
    mood_checkpoint *base = NULL;
    if (!j) {
        printf("note: svd has no readable cases.json yet\n");
        return;
    }
    MOOD_CHECK_OK(mood_checkpoint_open(&base, fixture("bases/sd1_base.safetensors")));
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, "inputs"))
    {
        check_svd_input(base, c->string, c);
    }
    for (size_t k = 0; k < 3; k++) {
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, lists[k]))
        {
            check_svd_output(base, json_str(c, "expected"));
            check_svd_output(base, json_str(c, "reference"));
        }
    }
    mood_checkpoint_close(base);
    cJSON_Delete(j);
}

/* ----- kohya's recipe: counts, ranks, alphas ------------------------------------------------ */

static void check_recipe(const char *file, const cJSON *r, const mood_adapter *a)
{
    size_t parts[MOOD_PART_COUNT] = {0};
    const cJSON *dim = cJSON_GetObjectItemCaseSensitive(r, "dim");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(r, "alpha");
    const cJSON *cdim = cJSON_GetObjectItemCaseSensitive(r, "conv_dim");
    const cJSON *calpha = cJSON_GetObjectItemCaseSensitive(r, "conv_alpha");
    int blocks = cJSON_GetObjectItemCaseSensitive(r, "block_dims") ||
                 cJSON_GetObjectItemCaseSensitive(r, "modules");
    for (size_t i = 0; i < a->n_modules; i++) {
        const mood_module *m = &a->modules[i];
        int conv = m->ndim == 4 && m->kh > 1;
        parts[m->target->part]++;
        MOOD_CHECK(m->algo == MOOD_ALGO_LORA && m->has_alpha);
        if (blocks)
            continue;
        if (conv && cdim)
            MOOD_CHECK_MSG(m->rank == cdim->valueint && m->alpha == calpha->valuedouble,
                           "%s: %s rank %d alpha %g", file, m->name, m->rank, m->alpha);
        else
            MOOD_CHECK_MSG(m->rank == dim->valueint && m->alpha == alpha->valuedouble &&
                               fabs(m->scale - alpha->valuedouble / dim->valueint) < 1e-12,
                           "%s: %s rank %d alpha %g", file, m->name, m->rank, m->alpha);
    }
    MOOD_CHECK_MSG((double)(parts[MOOD_PART_TE1] + parts[MOOD_PART_TE2]) ==
                       cJSON_GetObjectItemCaseSensitive(r, "te_modules")->valuedouble,
                   "%s: %zu te modules", file, parts[MOOD_PART_TE1] + parts[MOOD_PART_TE2]);
    MOOD_CHECK_MSG((double)parts[MOOD_PART_UNET] ==
                       cJSON_GetObjectItemCaseSensitive(r, "unet_modules")->valuedouble,
                   "%s: %zu unet modules", file, parts[MOOD_PART_UNET]);
    MOOD_CHECK((double)mood_st_count(a->file) ==
               cJSON_GetObjectItemCaseSensitive(r, "keys")->valuedouble);
}

static void test_kohya_recipes(void)
{
    cJSON *j = load_json(fixture("kohya/cases.json")), *r;
    MOOD_CHECK(j != NULL);
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(j, "loras"))
    {
        char rel[512], base_path[512];
        mood_checkpoint *base = NULL;
        mood_adapter *a = NULL, *nb = NULL;
        snprintf(rel, sizeof rel, "kohya/%s", r->string);
        snprintf(base_path, sizeof base_path, "%s",
                 fixture(strcmp(json_str(r, "family"), "sd1") == 0 ? "bases/sd1_base.safetensors"
                         : strcmp(json_str(r, "family"), "sd2") == 0
                             ? "bases/sd2_base.safetensors"
                             : "bases/sdxl_base.safetensors"));
        MOOD_CHECK_OK(mood_checkpoint_open(&base, base_path));
        MOOD_CHECK_OK(mood_adapter_open(&a, fixture(rel), base));
        if (a)
            check_recipe(r->string, r, a);
        /* without a base: the family's own names, same modules, nothing unmatched */
        MOOD_CHECK_OK(mood_adapter_open(&nb, fixture(rel), NULL));
        if (a && nb) {
            MOOD_CHECK(nb->n_modules == a->n_modules && nb->n_unmatched == 0);
            MOOD_CHECK(strcmp(mood_family_name(nb->family), json_str(r, "family")) == 0);
            for (size_t i = 0; i < a->n_modules; i++)
                MOOD_CHECK_MSG(nb->modules[i].out == a->modules[i].out &&
                                   nb->modules[i].in * nb->modules[i].kh ==
                                       a->modules[i].in * a->modules[i].kh,
                               "%s: %s shape differs without base", r->string, a->modules[i].name);
        }
        mood_adapter_close(nb);
        mood_adapter_close(a);
        mood_checkpoint_close(base);
    }
    cJSON_Delete(j);
}

/* ----- crafted files ----------------------------------------------------------------------- */

typedef struct craft {
    const char *name;
    mood_dtype dt;
    int ndim;
    int64_t shape[4];
    float fill;
} craft;

/* Writes an adapter whose tensors hold `fill` (plus optional metadata pairs). */
static const char *write_adapter(const char *file, const craft *t, size_t n,
                                 const char *const *meta)
{
    const char *path = scratch_path(file);
    mood_st_writer *w = NULL;
    float *buf = calloc(4096, sizeof *buf);
    if (mood_st_writer_new(&w) != 0 || !buf) {
        free(buf);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        static int64_t ints[4];
        for (int k = 0; k < 4096; k++)
            buf[k] = t[i].fill;
        ints[0] = (int64_t)t[i].fill;
        if (t[i].dt == MOOD_DTYPE_I16) {
            static int16_t i16[4];
            i16[0] = (int16_t)t[i].fill;
            MOOD_CHECK_OK(mood_st_writer_add(w, t[i].name, t[i].dt, t[i].ndim, t[i].shape, i16));
        } else if (t[i].dt == MOOD_DTYPE_I64) /* integer alphas, as kohya writes them */
            MOOD_CHECK_OK(mood_st_writer_add(w, t[i].name, t[i].dt, t[i].ndim, t[i].shape, ints));
        else
            MOOD_CHECK_OK(
                mood_st_writer_add_f32(w, t[i].name, t[i].dt, t[i].ndim, t[i].shape, buf));
    }
    for (size_t i = 0; meta && meta[i]; i += 2)
        MOOD_CHECK_OK(mood_st_writer_set_meta(w, meta[i], meta[i + 1]));
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    free(buf);
    return path;
}

#define PROJ_IN "lora_unet_down_blocks_0_attentions_0_proj_in"
static const char *const sd1_meta[] = {"ss_base_model_version", "sd_v1", NULL};

static int open_err(const char *path, const mood_checkpoint *base)
{
    mood_adapter *a = NULL;
    int err = mood_adapter_open(&a, path, base);
    mood_adapter_close(a);
    return err;
}

static void test_bad_adapters(void)
{
    mood_checkpoint *sd1 = NULL;
    const char *p;
    int err;
    const craft shape[] = {{PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 2, {5, 2}, 0.5f},
                           {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 2, {2, 4}, 0.5f}};
    const craft nan[] = {{PROJ_IN ".lora_up.weight", MOOD_DTYPE_F16, 4, {4, 2, 1, 1}, 0.5f},
                         {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F16, 4, {2, 4, 1, 1}, NAN}};
    const craft alpha[] = {{PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 2, {4, 2}, 0.5f},
                           {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 2, {2, 4}, 0.5f},
                           {PROJ_IN ".alpha", MOOD_DTYPE_F32, 1, {2}, 1.0f}};
    const craft unknown[] = {
        {"lora_flux_double_blocks_0.lora_up.weight", MOOD_DTYPE_F32, 2, {4, 2}, 0},
        {"lora_flux_double_blocks_0.lora_down.weight", MOOD_DTYPE_F32, 2, {2, 4}, 0},
        {"something.else", MOOD_DTYPE_F32, 1, {3}, 0}};
    MOOD_CHECK_OK(mood_checkpoint_open(&sd1, fixture("bases/sd1_base.safetensors")));
    p = write_adapter("bad_shape.safetensors", shape, 2, sd1_meta);
    err = open_err(p, sd1);
    MOOD_CHECK_MSG(err == MOOD_EFORMAT && strstr(mood_error_last(), PROJ_IN) &&
                       strstr(mood_error_last(), "[4, 4, 1, 1]"),
                   "%d %s", err, mood_error_last());
    p = write_adapter("bad_shape_nometa.safetensors", shape, 2, NULL);
    MOOD_CHECK(open_err(p, sd1) == MOOD_EFAMILY);
    p = write_adapter("nan.safetensors", nan, 2, sd1_meta);
    err = open_err(p, sd1);
    MOOD_CHECK_MSG(err == MOOD_EFORMAT && strstr(mood_error_last(), PROJ_IN ".lora_down.weight") &&
                       strstr(mood_error_last(), "NaN") && strstr(mood_error_last(), p),
                   "%d %s", err, mood_error_last());
    MOOD_CHECK(open_err(p, NULL) == MOOD_EFORMAT); /* checked without a base too */
    p = write_adapter("alpha.safetensors", alpha, 3, sd1_meta);
    err = open_err(p, sd1);
    MOOD_CHECK_MSG(err == MOOD_EFORMAT && strstr(mood_error_last(), PROJ_IN ".alpha"), "%d %s", err,
                   mood_error_last());
    p = write_adapter("unknown.safetensors", unknown, 3, NULL);
    err = open_err(p, sd1);
    MOOD_CHECK_MSG(err == MOOD_EFORMAT && strstr(mood_error_last(), "none of its 3 keys") &&
                       strstr(mood_error_last(), "lora_flux_"),
                   "%d %s", err, mood_error_last());
    MOOD_CHECK(open_err(p, NULL) == MOOD_EFORMAT);
    err = open_err(fixture("kohya/sdxl_lora.safetensors"), sd1);
    MOOD_CHECK_MSG(err == MOOD_EFAMILY && strstr(mood_error_last(), "sdxl") &&
                       strstr(mood_error_last(), "is sd1"),
                   "%d %s", err, mood_error_last());
    mood_checkpoint_close(sd1);
}

/* Partly known keys: the rest are reported in file order; alpha in F16 [1] and I64 [] work. */
static void test_unmatched_and_alpha(void)
{
    const craft t[] = {
        {PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 4, {4, 2, 1, 1}, 0.5f},
        {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 4, {2, 4, 1, 1}, 0.5f},
        {PROJ_IN ".alpha", MOOD_DTYPE_F16, 1, {1}, 3.0f},
        {"lora_unet_nowhere.lora_up.weight", MOOD_DTYPE_F32, 2, {4, 2}, 0},
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", MOOD_DTYPE_I64, 0, {0}, 1}};
    mood_checkpoint *sd1 = NULL;
    mood_adapter *a = NULL;
    const char *p = write_adapter("partial.safetensors", t, 5, sd1_meta);
    MOOD_CHECK_OK(mood_checkpoint_open(&sd1, fixture("bases/sd1_base.safetensors")));
    MOOD_CHECK_OK(mood_adapter_open(&a, p, sd1));
    if (a) {
        MOOD_CHECK(a->n_modules == 1 && a->modules[0].rank == 2 && a->modules[0].alpha == 3.0 &&
                   a->modules[0].scale == 1.5 && a->modules[0].ndim == 4);
        MOOD_CHECK(mood_adapter_unmatched_count(a) == 2);
        MOOD_CHECK(strcmp(mood_adapter_family_source(a), "ss_base_model_version") == 0);
    }
    mood_adapter_close(a);
    /* alpha as a [1, 1] tensor is one number too (ComfyUI and A1111 take its .item()); two are not
     */
    {
        const craft a11[] = {{PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 4, {4, 2, 1, 1}, 0.5f},
                             {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 4, {2, 4, 1, 1}, 0.5f},
                             {PROJ_IN ".alpha", MOOD_DTYPE_F32, 2, {1, 1}, 1.0f}};
        const craft a2[] = {{PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 4, {4, 2, 1, 1}, 0.5f},
                            {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 4, {2, 4, 1, 1}, 0.5f},
                            {PROJ_IN ".alpha", MOOD_DTYPE_F32, 1, {2}, 1.0f}};
        a = NULL;
        MOOD_CHECK_OK(
            mood_adapter_open(&a, write_adapter("alpha11.safetensors", a11, 3, sd1_meta), sd1));
        MOOD_CHECK(a && a->n_modules == 1 && a->modules[0].alpha == 1.0 &&
                   a->modules[0].scale == 0.5);
        mood_adapter_close(a);
        MOOD_CHECK(open_err(write_adapter("alpha2.safetensors", a2, 3, sd1_meta), sd1) ==
                   MOOD_EFORMAT);
    }
    /* diffusers' convert_state_dict_to_kohya leaves dots in a DoRA magnitude's name
     * ("lora_unet_..._attentions_0.proj_in.lora_magnitude_vector"): it is the same module's */
    {
        const craft dk[] = {{PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 4, {4, 2, 1, 1}, 0.5f},
                            {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 4, {2, 4, 1, 1}, 0.5f},
                            {"lora_unet_down_blocks_0_attentions_0.proj_in.lora_magnitude_vector",
                             MOOD_DTYPE_F32,
                             4,
                             {1, 4, 1, 1},
                             1.0f}};
        a = NULL;
        MOOD_CHECK_OK(
            mood_adapter_open(&a, write_adapter("dora_dots.safetensors", dk, 3, sd1_meta), sd1));
        MOOD_CHECK(a && a->n_modules == 1 && a->modules[0].dora == 2 &&
                   mood_adapter_unmatched_count(a) == 0);
        mood_adapter_close(a);
    }
    /* the old LyCORIS OFT key oft_diag: an OFT module whose blocks are R itself */
    {
        const craft od[] = {{PROJ_IN ".oft_diag", MOOD_DTYPE_F32, 3, {2, 2, 2}, 0.5f},
                            {PROJ_IN ".alpha", MOOD_DTYPE_F32, 0, {0}, 0.0f}};
        float w[16], d[16];
        a = NULL;
        MOOD_CHECK_OK(
            mood_adapter_open(&a, write_adapter("oft_diag.safetensors", od, 2, sd1_meta), sd1));
        MOOD_CHECK(a && a->n_modules == 1 && a->modules[0].algo == MOOD_ALGO_OFT &&
                   a->modules[0].oft_direct && mood_adapter_unmatched_count(a) == 0);
        for (int i = 0; i < 16; i++)
            w[i] = i / 4 == i % 4;
        /* W = I: W' = blockdiag(R)ᵀ, every entry of the two 2 x 2 blocks 0.5 */
        MOOD_CHECK(a && mood_adapter_target_numel(a, 0) == 16);
        MOOD_CHECK_OK(a ? mood_adapter_delta(d, a, 0, w) : MOOD_EINVAL);
        for (int i = 0; a && i < 16; i++)
            MOOD_CHECK_MSG(close_enough(d[i], (i / 8 == (i % 4) / 2) * 0.5 - w[i], 1e-7, 0),
                           "element %d: %g", i, d[i]);
        mood_adapter_close(a);
    }
    mood_checkpoint_close(sd1);
}

/* A base known by names (a diffusers folder with modules outside the SD1 release architecture,
 * as mood-tiny's attention in up_blocks.0): its own modules resolve, with shapes checked, while
 * the SD1 table alone does not know them. */
static void test_base_from_names(void)
{
#define TINY_K  "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
#define TINY_FC "lora_te_text_model_encoder_layers_0_mlp_fc1"
    const craft t[] = {{TINY_K ".lora_up.weight", MOOD_DTYPE_F32, 2, {8, 2}, 0.5f},
                       {TINY_K ".lora_down.weight", MOOD_DTYPE_F32, 2, {2, 8}, 0.5f},
                       {TINY_K ".alpha", MOOD_DTYPE_F32, 0, {0}, 2.0f},
                       {TINY_FC ".lora_up.weight", MOOD_DTYPE_F32, 2, {16, 1}, 0.25f},
                       {TINY_FC ".lora_down.weight", MOOD_DTYPE_F32, 2, {1, 4}, 0.25f}};
    const mood_base_weight w[] = {
        {"up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight", 2, {8, 8}, 0},
        {"conv_in.weight", 4, {8, 48, 3, 3}, MOOD_PART_UNET},
        {"conv_in.bias", 1, {8}, MOOD_PART_UNET},
        {"text_model.encoder.layers.0.mlp.fc1.weight", 2, {16, 4}, MOOD_PART_TE1},
        {"text_model.encoder.layers.0.mlp.fc1.bias", 1, {16}, MOOD_PART_TE1}};
    const char *p = write_adapter("tiny.safetensors", t, 5, sd1_meta);
    mood_checkpoint *base = NULL, *sd1 = NULL;
    mood_adapter *a = NULL;
    mood_st_file *f = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, p)); /* any file: only named in messages */
    MOOD_CHECK_OK(mood_checkpoint_from_names(&base, f, MOOD_FAMILY_SD1, w, 5));
    MOOD_CHECK_OK(mood_adapter_open(&a, p, base));
    if (a) {
        mood_module_info mi;
        MOOD_CHECK(mood_adapter_module_count(a) == 2 && mood_adapter_unmatched_count(a) == 0);
        mood_adapter_module(a, 0, &mi);
        MOOD_CHECK_MSG(mi.model_name &&
                           (strcmp(mi.model_name, "text_model.encoder.layers.0.mlp."
                                                  "fc1") == 0 ||
                            strcmp(mi.model_name, "up_blocks.0.attentions.0."
                                                  "transformer_blocks.0.attn1.to_k") == 0),
                       "model name %s", mi.model_name ? mi.model_name : "(none)");
    }
    mood_adapter_close(a);
    a = NULL;
    /* without the base, the module the SD1 release table lacks joins it by the diffusers path
     * its kohya name spells (inspect, show and the lora tools see what gen applies) */
    MOOD_CHECK_OK(mood_adapter_open(&a, p, NULL));
    MOOD_CHECK(a && mood_adapter_module_count(a) == 2 && mood_adapter_unmatched_count(a) == 0);
    for (size_t i = 0; a && i < mood_adapter_module_count(a); i++) {
        mood_module_info mi;
        mood_adapter_module(a, i, &mi);
        if (mi.part == MOOD_PART_UNET)
            MOOD_CHECK_MSG(mi.model_name &&
                               strcmp(mi.model_name, "up_blocks.0.attentions.0."
                                                     "transformer_blocks.0.attn1.to_k") == 0 &&
                               strcmp(mi.kohya_name, TINY_K) == 0,
                           "model name %s", mi.model_name ? mi.model_name : "(none)");
    }
    mood_adapter_close(a);
    /* a kohya UNet name that spells no layer of a UNet stays unmatched */
    {
        const craft odd[] = {{"lora_unet_up_blocks_0_widgets_0_to_k.lora_up.weight",
                              MOOD_DTYPE_F32,
                              2,
                              {8, 2},
                              0.5f},
                             {"lora_unet_up_blocks_0_widgets_0_to_k.lora_down.weight",
                              MOOD_DTYPE_F32,
                              2,
                              {2, 8},
                              0.5f},
                             {TINY_FC ".lora_up.weight", MOOD_DTYPE_F32, 2, {16, 1}, 0.25f},
                             {TINY_FC ".lora_down.weight", MOOD_DTYPE_F32, 2, {1, 4}, 0.25f}};
        MOOD_CHECK_OK(
            mood_adapter_open(&a, write_adapter("odd.safetensors", odd, 4, sd1_meta), NULL));
        MOOD_CHECK(a && mood_adapter_module_count(a) == 1 && mood_adapter_unmatched_count(a) == 2);
        mood_adapter_close(a);
    }
    /* a factor that does not fit the base's shape is refused */
    const craft bad[] = {{TINY_K ".lora_up.weight", MOOD_DTYPE_F32, 2, {6, 2}, 0.5f},
                         {TINY_K ".lora_down.weight", MOOD_DTYPE_F32, 2, {2, 8}, 0.5f}};
    MOOD_CHECK(open_err(write_adapter("tiny_bad.safetensors", bad, 2, sd1_meta), base) ==
               MOOD_EFORMAT);
    mood_checkpoint_close(base);
    mood_checkpoint_close(sd1);
    mood_st_close(f);
#undef TINY_K
#undef TINY_FC
}

/* LyCORIS sparse-bias tensors are consumed (never applied, never reported); a second spelling of
 * the same target is a module of its own. */
static void test_sparse_and_two_spellings(void)
{
    const craft t[] = {
        {PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 4, {4, 2, 1, 1}, 0.5f},
        {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 4, {2, 4, 1, 1}, 0.5f},
        {PROJ_IN ".bias_indices", MOOD_DTYPE_I16, 2, {2, 1}, 0},
        {PROJ_IN ".bias_values", MOOD_DTYPE_F16, 1, {1}, 0.25f},
        {PROJ_IN ".bias_size", MOOD_DTYPE_I16, 1, {2}, 4},
        {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", MOOD_DTYPE_F32, 2, {1, 4}, 0.5f},
        {"unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", MOOD_DTYPE_F32, 2, {4, 1}, 0.5f}};
    mood_checkpoint *sd1 = NULL;
    mood_adapter *a = NULL;
    const char *p = write_adapter("sparse.safetensors", t, 7, sd1_meta);
    MOOD_CHECK_OK(mood_checkpoint_open(&sd1, fixture("bases/sd1_base.safetensors")));
    MOOD_CHECK_OK(mood_adapter_open(&a, p, sd1));
    if (a) {
        MOOD_CHECK_MSG(a->n_unmatched == 0, "%zu unmatched, first %s", a->n_unmatched,
                       mood_adapter_unmatched(a, 0));
        MOOD_CHECK(a->n_modules == 2 && a->modules[0].target == a->modules[1].target);
        MOOD_CHECK(a->n_modules == 2 && a->modules[0].rank + a->modules[1].rank == 3);
    }
    mood_adapter_close(a);
    mood_checkpoint_close(sd1);
}

/* ΔW of module 0 of a (plain LoRA) adapter from its raw factors, using the first `ranks` ranks
 * at the module's full-rank scale: A1111's rebuild_conventional with dyn_dim, written out. */
static void cut_by_hand(float *want, const mood_adapter *a, int ranks)
{
    const mood_module *m = &a->modules[0];
    int64_t R = m->t[ROLE_UP]->shape[1], cols = mood_st_numel(m->t[ROLE_DOWN]) / R;
    float *u = NULL, *d = NULL;
    MOOD_CHECK_OK(mood__tensor_f32(&u, m->t[ROLE_UP], NULL));
    MOOD_CHECK_OK(mood__tensor_f32(&d, m->t[ROLE_DOWN], NULL));
    for (int64_t o = 0; u && d && o < m->out; o++)
        for (int64_t j = 0; j < cols; j++) {
            double sum = 0;
            for (int64_t r = 0; r < ranks && r < R; r++)
                sum += (double)u[o * R + r] * d[r * cols + j];
            want[o * cols + j] = (float)(m->scale * sum);
        }
    mood_free(u);
    mood_free(d);
}

static char dylora_warning[1024];

static void keep_warning(int level, const char *message, void *payload)
{
    (void)level;
    (void)payload;
    snprintf(dylora_warning, sizeof dylora_warning, "%s", message);
}

/* A DyLoRA rank cut through the public API: every plain pair is cut; ΔW and the runtime pair
 * agree with the file's first ranks; 0 restores every rank; LoHa has nothing to cut. */
static void test_dylora_limit_rank(void)
{
    mood_adapter *a = NULL, *h = NULL;
    mood_weighted_adapter w = {.path = fixture("kohya/sd1_lora.safetensors"), .dyn = 1};
    float *got, *want, *down = NULL, *up = NULL;
    int64_t n;
    int rank = 0;
    MOOD_CHECK_OK(mood_adapter_open_weighted(&a, &w, NULL));
    if (!a)
        return;
    n = mood_adapter_target_numel(a, 0);
    got = calloc((size_t)n, sizeof *got);
    want = calloc((size_t)n, sizeof *want);
    MOOD_CHECK(a->modules[0].rank >= 2); /* so that a cut to 1 changes something */
    MOOD_CHECK_OK(mood_adapter_delta(got, a, 0, NULL));
    cut_by_hand(want, a, 1);
    MOOD_CHECK(harness_rel_diff(got, want, (size_t)n, 1e-3) < 1e-5);
    MOOD_CHECK_OK(mood_adapter_lowrank(a, 0, &down, &up, &rank));
    MOOD_CHECK(rank == 1);
    for (int64_t o = 0; up && down && o < a->modules[0].out; o++)
        for (int64_t j = 0; j < n / a->modules[0].out; j++)
            got[o * (n / a->modules[0].out) + j] = up[o] * down[j];
    MOOD_CHECK(harness_rel_diff(got, want, (size_t)n, 1e-3) < 1e-5);
    free(down);
    free(up);
    /* every rank again, and the cut of every module */
    MOOD_CHECK(mood_adapter_limit_rank(a, 0) == (int)a->n_modules);
    MOOD_CHECK_OK(mood_adapter_delta(got, a, 0, NULL));
    cut_by_hand(want, a, a->modules[0].rank);
    MOOD_CHECK(harness_rel_diff(got, want, (size_t)n, 1e-3) < 1e-5);
    MOOD_CHECK(mood_adapter_limit_rank(a, -2) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_adapter_open(&h, fixture("lycoris/loha.safetensors"), NULL));
    MOOD_CHECK(h && mood_adapter_limit_rank(h, 2) == 0);
    mood_adapter_close(h);
    /* opened for a cut it cannot make: it opens, and the log says the cut changes nothing */
    w.path = fixture("lycoris/loha.safetensors");
    dylora_warning[0] = '\0';
    mood_log_set(keep_warning, NULL);
    MOOD_CHECK_OK(mood_adapter_open_weighted(&h, &w, NULL));
    mood_log_set(NULL, NULL);
    MOOD_CHECK_MSG(strstr(dylora_warning, "changes nothing"), "%s", dylora_warning);
    mood_adapter_close(h);
    mood_adapter_close(a);
    free(got);
    free(want);
}

/* PEFT: alpha from lora_adapter_metadata (lora_alpha, alpha_pattern, use_rslora); magnitude is
 * per output. */
static void test_peft_alpha(void)
{
    const craft t[] = {{"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
                        MOOD_DTYPE_F32,
                        4,
                        {4, 4, 1, 1},
                        0.1f},
                       {"unet.down_blocks.0.attentions.0.proj_in.lora_B.weight",
                        MOOD_DTYPE_F32,
                        4,
                        {4, 4, 1, 1},
                        0.1f},
                       {"unet.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector",
                        MOOD_DTYPE_F32,
                        1,
                        {4},
                        1},
                       {"unet.down_blocks.0.attentions.0.proj_out.lora_A.weight",
                        MOOD_DTYPE_F32,
                        4,
                        {4, 4, 1, 1},
                        0.1f},
                       {"unet.down_blocks.0.attentions.0.proj_out.lora_B.weight",
                        MOOD_DTYPE_F32,
                        4,
                        {4, 4, 1, 1},
                        0.1f},
                       {"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                        MOOD_DTYPE_F32,
                        2,
                        {4, 16},
                        0.1f},
                       {"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
                        MOOD_DTYPE_F32,
                        2,
                        {32, 4},
                        0.1f}};
    const char *const meta[] = {
        "lora_adapter_metadata",
        "{\"unet.r\": 4, \"unet.lora_alpha\": 8, \"unet.alpha_pattern\": {\"proj_out\": 2},"
        " \"text_encoder.r\": 4, \"text_encoder.lora_alpha\": 8, \"text_encoder.use_rslora\": "
        "true}",
        NULL};
    mood_checkpoint *sd1 = NULL;
    mood_adapter *a = NULL;
    const char *p = write_adapter("peft.safetensors", t, 7, meta);
    MOOD_CHECK_OK(mood_checkpoint_open(&sd1, fixture("bases/sd1_base.safetensors")));
    MOOD_CHECK_OK(mood_adapter_open(&a, p, sd1));
    for (size_t i = 0; a && i < a->n_modules; i++) {
        const mood_module *m = &a->modules[i];
        if (strstr(m->name, "proj_in"))
            MOOD_CHECK(m->scale == 2.0 && m->dora == 2 && m->peft_dora);
        else if (strstr(m->name, "proj_out"))
            MOOD_CHECK(m->scale == 0.5 && !m->dora);
        else
            MOOD_CHECK_MSG(fabs(m->scale - 4.0) < 1e-12, "rslora scale %g", m->scale); /* 8/√4 */
    }
    MOOD_CHECK(a && a->n_modules == 3 && a->n_unmatched == 0);
    mood_adapter_close(a);
    /* an alpha_pattern that is no {key: alpha} object (a list: keys without names) is none; it
     * crashed the key matching */
    {
        const char *const odd[] = {"lora_adapter_metadata",
                                   "{\"unet.r\": 4, \"unet.lora_alpha\": 8, \"unet.alpha_pattern\":"
                                   " [\"proj_out\"], \"text_encoder.r\": 4, "
                                   "\"text_encoder.lora_alpha\": 8}",
                                   NULL};
        a = NULL;
        MOOD_CHECK_OK(
            mood_adapter_open(&a, write_adapter("peft_list.safetensors", t, 7, odd), sd1));
        for (size_t i = 0; a && i < a->n_modules; i++)
            if (strstr(a->modules[i].name, "proj_out"))
                MOOD_CHECK(a->modules[i].scale == 2.0); /* lora_alpha / r: no pattern applies */
        mood_adapter_close(a);
    }
    mood_checkpoint_close(sd1);
}

/* Every allocation failure while opening a checkpoint and an adapter ends in MOOD_ENOMEM with
 * everything released (ASan builds check the "released"). */
static void test_alloc_failures(void)
{
    int ok_seen = 0;
    for (long n = 1; n < 20000 && !ok_seen; n += n < 300 ? 1 : 97) {
        mood_checkpoint *base = NULL;
        mood_adapter *a = NULL;
        int err;
        mood__alloc_fail_at(n);
        err = mood_checkpoint_open(&base, fixture("bases/sd1_base.safetensors"));
        if (!err)
            err = mood_adapter_open(&a, fixture("kohya/sd1_locon_fp16.safetensors"), base);
        mood__alloc_fail_at(0);
        MOOD_CHECK_MSG(err == 0 || err == MOOD_ENOMEM, "n=%ld: %d %s", n, err, mood_error_last());
        ok_seen = err == 0;
        mood_adapter_close(a);
        mood_checkpoint_close(base);
    }
    MOOD_CHECK(ok_seen);
}

/* File kinds and family detection from keys and shapes (no metadata). */
static void test_family_detection(void)
{
    const craft xl[] = {{"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                         MOOD_DTYPE_F32,
                         2,
                         {24 * 2, 2},
                         0},
                        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                         MOOD_DTYPE_F32,
                         2,
                         {2, 24},
                         0}};
    const craft sd2[] = {{"lora_te_text_model_encoder_layers_20_mlp_fc1.lora_up.weight",
                          MOOD_DTYPE_F32,
                          2,
                          {8, 2},
                          0},
                         {"lora_te_text_model_encoder_layers_20_mlp_fc1.lora_down.weight",
                          MOOD_DTYPE_F32,
                          2,
                          {2, 4},
                          0}};
    const craft sd1[] = {{PROJ_IN ".lora_up.weight", MOOD_DTYPE_F32, 4, {4, 2, 1, 1}, 0},
                         {PROJ_IN ".lora_down.weight", MOOD_DTYPE_F32, 4, {2, 4, 1, 1}, 0}};
    mood_adapter *a = NULL;
    const char *p = write_adapter("fam_xl.safetensors", xl, 2, NULL);
    MOOD_CHECK_OK(mood_adapter_open(&a, p, NULL));
    MOOD_CHECK(a && a->family == MOOD_FAMILY_SDXL && strcmp(a->family_source, "keys") == 0);
    MOOD_CHECK(a && mood_file_kind_of(a->file) == MOOD_KIND_ADAPTER);
    mood_adapter_close(a);
    p = write_adapter("fam_sd2.safetensors", sd2, 2, NULL);
    MOOD_CHECK_OK(mood_adapter_open(&a, p, NULL));
    MOOD_CHECK(a && a->family == MOOD_FAMILY_SD2 && strcmp(a->family_source, "keys") == 0);
    mood_adapter_close(a);
    p = write_adapter("fam_sd1.safetensors", sd1, 2, NULL);
    MOOD_CHECK_OK(mood_adapter_open(&a, p, NULL));
    MOOD_CHECK(a && a->family == MOOD_FAMILY_SD1 && strcmp(a->family_source, "shapes") == 0);
    mood_adapter_close(a);
    /* LoKr and full-diff files tell their family by the width cross-attention reads too: a LoKr's
     * is the product of its two factors' (8 x 256 = SDXL's 2048), a diff's its second side
     * (SD2's 1024); they were guessed SD1 */
    {
#define XK "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
        const craft lokr[] = {{XK ".lokr_w1", MOOD_DTYPE_F32, 2, {8, 8}, 0.1f},
                              {XK ".lokr_w2_a", MOOD_DTYPE_F32, 2, {80, 4}, 0.1f},
                              {XK ".lokr_w2_b", MOOD_DTYPE_F32, 2, {4, 256}, 0.1f}};
        const craft diff[] = {{XK ".diff", MOOD_DTYPE_F32, 2, {2, 1024}, 0.01f}}; /* 4096 at most */
#undef XK
        p = write_adapter("fam_xl_lokr.safetensors", lokr, 3, NULL);
        MOOD_CHECK_OK(mood_adapter_open(&a, p, NULL));
        MOOD_CHECK_MSG(
            a && a->family == MOOD_FAMILY_SDXL && strcmp(a->family_source, "shapes") == 0,
            "LoKr: %s by %s", a ? mood_family_name(a->family) : "?", a ? a->family_source : "?");
        mood_adapter_close(a);
        p = write_adapter("fam_sd2_diff.safetensors", diff, 1, NULL);
        MOOD_CHECK_OK(mood_adapter_open(&a, p, NULL));
        MOOD_CHECK_MSG(a && a->family == MOOD_FAMILY_SD2 && strcmp(a->family_source, "shapes") == 0,
                       "diff: %s by %s", a ? mood_family_name(a->family) : "?",
                       a ? a->family_source : "?");
        mood_adapter_close(a);
    }
}

/* Opens p without a base; checks the family and its source. */
static void check_family(const char *p, mood_family want, const char *source)
{
    mood_adapter *a = NULL;
    MOOD_CHECK_OK(mood_adapter_open(&a, p, NULL));
    MOOD_CHECK_MSG(a && a->family == want && strcmp(a->family_source, source) == 0,
                   "%s: %s from '%s', expected %s from '%s'", p,
                   a ? mood_family_name(a->family) : "-", a ? a->family_source : "-",
                   mood_family_name(want), source);
    mood_adapter_close(a);
}

/* Metadata that names another family than the keys and shapes prove is overruled, and the
 * source says so (§6.4); metadata that agrees, or that nothing contradicts, still decides. */
static void test_mislabeled_family(void)
{
#define SD1_K "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
#define ATTN1 "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
#define TE2   "lora_te2_text_model_encoder_layers_0_mlp_fc1"
    /* attn2.to_k reads 768 wide: SD1's cross-attention context */
    const craft sd1[] = {{SD1_K ".lora_up.weight", MOOD_DTYPE_F32, 2, {320, 2}, 0.01f},
                         {SD1_K ".lora_down.weight", MOOD_DTYPE_F32, 2, {2, 768}, 0.01f}};
    const craft xl[] = {{TE2 ".lora_up.weight", MOOD_DTYPE_F32, 2, {48, 2}, 0},
                        {TE2 ".lora_down.weight", MOOD_DTYPE_F32, 2, {2, 24}, 0}};
    /* no evidence: a self-attention module reads the block's own width in every family */
    const craft none[] = {{ATTN1 ".lora_up.weight", MOOD_DTYPE_F32, 2, {640, 2}, 0},
                          {ATTN1 ".lora_down.weight", MOOD_DTYPE_F32, 2, {2, 640}, 0}};
    static const char *const xl_meta[] = {"ss_base_model_version", "sdxl_base_v1-0", NULL};
    static const char *const xl_arch[] = {"modelspec.architecture",
                                          "stable-diffusion-xl-v1-base/lora", NULL};
    mood_checkpoint *sdxl = NULL;
    const char *p = write_adapter("mislabeled.safetensors", sd1, 2, xl_meta);
    int err;
    check_family(p, MOOD_FAMILY_SD1, "shapes (metadata says sdxl)");
    /* against an SDXL base the refusal shows the label is wrong, not only that it is SD1 */
    MOOD_CHECK_OK(mood_checkpoint_open(&sdxl, fixture("bases/sdxl_base.safetensors")));
    err = open_err(p, sdxl);
    MOOD_CHECK_MSG(err == MOOD_EFAMILY && strstr(mood_error_last(), "is an sd1 LoRA") &&
                       strstr(mood_error_last(), "metadata says sdxl"),
                   "%d %s", err, mood_error_last());
    mood_checkpoint_close(sdxl);
    check_family(write_adapter("mislabeled_arch.safetensors", sd1, 2, xl_arch), MOOD_FAMILY_SD1,
                 "shapes (metadata says sdxl)");
    check_family(write_adapter("labeled_sd1.safetensors", sd1, 2, sd1_meta), MOOD_FAMILY_SD1,
                 "ss_base_model_version");
    /* SDXL-only key names against an SD1 label */
    check_family(write_adapter("mislabeled_xl.safetensors", xl, 2, sd1_meta), MOOD_FAMILY_SDXL,
                 "keys (metadata says sd1)");
    check_family(write_adapter("labeled_xl.safetensors", xl, 2, xl_meta), MOOD_FAMILY_SDXL,
                 "ss_base_model_version");
    check_family(write_adapter("unproven_xl.safetensors", none, 2, xl_meta), MOOD_FAMILY_SDXL,
                 "ss_base_model_version");
    check_family(write_adapter("unproven_sd1.safetensors", none, 2, sd1_meta), MOOD_FAMILY_SD1,
                 "ss_base_model_version");
#undef SD1_K
#undef ATTN1
#undef TE2
}

MOOD_TEST_MAIN(MOOD_T(test_base_from_names), MOOD_T(test_fixture_cases), MOOD_T(test_svd_fixtures),
               MOOD_T(test_kohya_recipes), MOOD_T(test_bad_adapters),
               MOOD_T(test_unmatched_and_alpha), MOOD_T(test_sparse_and_two_spellings),
               MOOD_T(test_peft_alpha), MOOD_T(test_alloc_failures), MOOD_T(test_family_detection),
               MOOD_T(test_mislabeled_family), MOOD_T(test_dylora_limit_rank))
