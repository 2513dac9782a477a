/*
 * test_svd.c: conformance of `mood lora merge / resize / extract` (lora/svd.c) with kohya
 * sd-scripts, on every case of tests/fixtures/svd/cases.json (written by
 * tools/make_fixtures_svd.py, which ran kohya's svd_merge_lora.py, resize_lora.py and
 * extract_lora_from_models.py on the inputs of that folder).
 *
 * Per case and per module, with D = (alpha / rank) · flat(lora_up) · flat(lora_down):
 *   - the same set of modules as kohya's output, with the same rank (exact) and alpha;
 *   - ||D_mood − D_kohya||_F / ||D_kohya||_F <= the case's tol_rel_fro (derived in cases.json
 *     from the worst sign pattern of the singular vectors under kohya's 0.99-quantile clamp;
 *     resize has no clamp); where D_kohya is zero, D_mood must be ~0;
 *   - the metadata keys kohya writes are present, and those that do not depend on the time or
 *     on the exact float bits have kohya's values.
 * Cases that need an option mood's API does not have (resize with a separate conv rank) are
 * reported as skipped, not silently passed.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>

#include "common/common.h"
#include "mood/lora.h"
#include "harness.h"

static cJSON *cases_json;

static cJSON *load_cases(void)
{
    mood_map m = {0};
    if (cases_json)
        return cases_json;
    if (mood_map_file(&m, fixture("svd/cases.json")) != 0) {
        fprintf(stderr, "missing %s\n", fixture("svd/cases.json"));
        harness_failures++;
        return NULL;
    }
    cases_json = cJSON_ParseWithLength((const char *)m.data, (size_t)m.size);
    mood_unmap(&m);
    MOOD_CHECK(cases_json != NULL);
    return cases_json;
}

static const char *svd_fixture(const char *name)
{
    static char path[4][1024];
    static int slot;
    slot = (slot + 1) % 4;
    snprintf(path[slot], sizeof path[slot], "%s", fixture("svd"));
    snprintf(path[slot] + strlen(path[slot]), sizeof path[slot] - strlen(path[slot]), "/%s", name);
    return path[slot];
}

/* D = (alpha/r)·up·down of module `m` in f, as doubles (out × cols); NULL if absent. */
static double *module_delta(const mood_st_file *f, const char *m, int *rank, double *alpha,
                            int64_t *out, int64_t *cols)
{
    char key[512];
    const mood_st_tensor *u, *d, *a;
    float *fu, *fd;
    double *D;
    snprintf(key, sizeof key, "%s.lora_up.weight", m);
    u = mood_st_find(f, key);
    snprintf(key, sizeof key, "%s.lora_down.weight", m);
    d = mood_st_find(f, key);
    snprintf(key, sizeof key, "%s.alpha", m);
    a = mood_st_find(f, key);
    if (!u || !d || !a)
        return NULL;
    *rank = (int)d->shape[0];
    *out = u->shape[0];
    *cols = mood_st_numel(d) / *rank;
    mood_dtype_read_f64(alpha, a->data, a->dtype);
    fu = malloc((size_t)mood_st_numel(u) * sizeof *fu);
    fd = malloc((size_t)mood_st_numel(d) * sizeof *fd);
    D = calloc((size_t)(*out * *cols), sizeof *D);
    MOOD_CHECK_OK(mood_st_to_f32(fu, u));
    MOOD_CHECK_OK(mood_st_to_f32(fd, d));
    for (int64_t o = 0; o < *out; o++)
        for (int j = 0; j < *rank; j++)
            for (int64_t c = 0; c < *cols; c++)
                D[o * *cols + c] += (*alpha / *rank) * fu[o * *rank + j] * fd[j * *cols + c];
    free(fu);
    free(fd);
    return D;
}

/* The relative Frobenius distance |a - b| / |b| of two n-element deltas. */
static double rel_dist(const double *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / den);
}

/* Compares one module of ours against kohya's; returns rel Frobenius error (or -1). */
static double compare_module(const mood_st_file *mine, const mood_st_file *ref, const char *m,
                             int want_rank, const cJSON *alphas)
{
    int rm = 0, rr = 0;
    double am = 0, ar = 0, num = 0, den = 0, nm = 0;
    int64_t om = 0, cm = 0, orr = 0, cr = 0;
    double *Dm = module_delta(mine, m, &rm, &am, &om, &cm);
    double *Dr = module_delta(ref, m, &rr, &ar, &orr, &cr);
    double result = -1;
    MOOD_CHECK_MSG(Dm != NULL, "module %s missing in mood's output", m);
    if (Dm && Dr) {
        const cJSON *ea = alphas ? cJSON_GetObjectItemCaseSensitive(alphas, m) : NULL;
        MOOD_CHECK_MSG(rm == want_rank && rr == want_rank, "%s: rank mood %d kohya %d want %d", m,
                       rm, rr, want_rank);
        MOOD_CHECK_MSG(fabs(am - (ea ? ea->valuedouble : (double)want_rank)) <=
                           1e-6 * fabs(am) + 1e-7,
                       "%s: alpha mood %.9g kohya %.9g", m, am, ar);
        MOOD_CHECK_MSG(om == orr && cm == cr, "%s: shape mood %lldx%lld kohya %lldx%lld", m,
                       (long long)om, (long long)cm, (long long)orr, (long long)cr);
        for (int64_t i = 0; om == orr && cm == cr && i < om * cm; i++) {
            num += (Dm[i] - Dr[i]) * (Dm[i] - Dr[i]);
            den += Dr[i] * Dr[i];
            nm += Dm[i] * Dm[i];
        }
        result = den > 0 ? sqrt(num / den) : sqrt(nm);
    }
    free(Dm);
    free(Dr);
    return result;
}

/* Metadata kohya wrote: every key present in ours; stable ones with kohya's value. */
static void compare_meta(const mood_st_file *mine, const cJSON *meta)
{
    static const char *const volatile_keys[] = {"sshs_model_hash", "sshs_legacy_hash",
                                                "modelspec.date",
                                                "modelspec.implementation_version", NULL};
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta)
    {
        const char *ours = mood_st_meta_get(mine, kv->string);
        int stable = 1;
        for (int i = 0; volatile_keys[i]; i++)
            stable &= strcmp(kv->string, volatile_keys[i]) != 0;
        MOOD_CHECK_MSG(ours != NULL, "metadata key %s missing", kv->string);
        if (ours && stable)
            MOOD_CHECK_MSG(strcmp(ours, kv->valuestring) == 0,
                           "metadata %s: mood \"%s\" kohya \"%s\"", kv->string, ours,
                           kv->valuestring);
    }
}

/* Checks our output `path` against the case's expected kohya file. */
static void compare_case(const cJSON *c, const char *path)
{
    mood_st_file *mine = NULL, *ref = NULL;
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(c, "ranks"), *r;
    const cJSON *alphas = cJSON_GetObjectItemCaseSensitive(c, "alphas");
    double tol = cJSON_GetObjectItemCaseSensitive(c, "tol_rel_fro")->valuedouble, worst = 0;
    const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
    size_t n = 0, down = 0;
    MOOD_CHECK_OK(mood_st_open(&mine, path));
    MOOD_CHECK_OK(mood_st_open(
        &ref, svd_fixture(cJSON_GetObjectItemCaseSensitive(c, "expected")->valuestring)));
    if (!mine || !ref)
        goto done;
    cJSON_ArrayForEach(r, ranks)
    {
        double e = compare_module(mine, ref, r->string, r->valueint, alphas);
        if (e > worst)
            worst = e;
        MOOD_CHECK_MSG(e >= 0 && e <= tol, "%s: module %s rel_fro %.3g > tol %.3g", name, r->string,
                       e, tol);
        n++;
    }
    for (size_t i = 0; i < mood_st_count(mine); i++)
        down += strstr(mood_st_at(mine, i)->name, ".lora_down.weight") != NULL;
    MOOD_CHECK_MSG(down == n, "%s: mood wrote %zu modules, kohya %zu", name, down, n);
    compare_meta(mine, cJSON_GetObjectItemCaseSensitive(c, "metadata"));
    printf("  %-34s %3zu modules, worst rel_fro %.2e (tol %.2e)\n", name, n, worst, tol);
done:
    mood_st_close(mine);
    mood_st_close(ref);
}

static void test_merge_cases(void)
{
    const cJSON *all = load_cases(), *c;
    const cJSON *list = all ? cJSON_GetObjectItemCaseSensitive(all, "merge") : NULL;
    cJSON_ArrayForEach(c, list)
    {
        const cJSON *ins = cJSON_GetObjectItemCaseSensitive(c, "inputs"), *in;
        const cJSON *cr = cJSON_GetObjectItemCaseSensitive(c, "conv_rank");
        mood_weighted_adapter w[8];
        mood_lora_write_options o;
        size_t n = 0;
        memset(w, 0, sizeof w);
        cJSON_ArrayForEach(in, ins)
        {
            double ratio = cJSON_GetObjectItemCaseSensitive(in, "ratio")->valuedouble;
            w[n].path =
                mood_strdup(svd_fixture(cJSON_GetObjectItemCaseSensitive(in, "file")->valuestring));
            w[n].unet = w[n].te = ratio;
            n++;
        }
        mood_lora_write_options_init(&o);
        o.output = scratch_path(cJSON_GetObjectItemCaseSensitive(c, "expected")->valuestring);
        MOOD_CHECK_OK(mood_lora_merge(w, n, cJSON_GetObjectItemCaseSensitive(c, "rank")->valueint,
                                      cJSON_IsNumber(cr) ? cr->valueint : 0, &o));
        compare_case(c, o.output);
        for (size_t i = 0; i < n; i++)
            mood_free((void *)w[i].path);
    }
}

static int resize_method(mood_resize_method *m, double *param, const cJSON *dyn)
{
    const char *name;
    if (!cJSON_IsObject(dyn)) {
        *m = MOOD_RESIZE_FIXED;
        *param = 0;
        return 0;
    }
    name = cJSON_GetObjectItemCaseSensitive(dyn, "method")->valuestring;
    *param = cJSON_GetObjectItemCaseSensitive(dyn, "param")->valuedouble;
    *m = strcmp(name, "sv_ratio") == 0        ? MOOD_RESIZE_SV_RATIO
         : strcmp(name, "sv_fro") == 0        ? MOOD_RESIZE_SV_FRO
         : strcmp(name, "sv_cumulative") == 0 ? MOOD_RESIZE_SV_CUMULATIVE
                                              : (mood_resize_method)-1;
    return (int)*m < 0 ? -1 : 0;
}

static void test_resize_cases(void)
{
    const cJSON *all = load_cases(), *c;
    const cJSON *list = all ? cJSON_GetObjectItemCaseSensitive(all, "resize") : NULL;
    cJSON_ArrayForEach(c, list)
    {
        const cJSON *cr = cJSON_GetObjectItemCaseSensitive(c, "conv_rank");
        int rank = cJSON_GetObjectItemCaseSensitive(c, "rank")->valueint;
        mood_lora_write_options o;
        mood_resize_method m;
        double param;
        MOOD_CHECK(resize_method(&m, &param, cJSON_GetObjectItemCaseSensitive(c, "dynamic")) == 0);
        mood_lora_write_options_init(&o);
        o.output = scratch_path(cJSON_GetObjectItemCaseSensitive(c, "expected")->valuestring);
        MOOD_CHECK_OK(
            mood_lora_resize(svd_fixture(cJSON_GetObjectItemCaseSensitive(c, "input")->valuestring),
                             m, param, rank, cJSON_IsNumber(cr) ? cr->valueint : 0, &o));
        compare_case(c, o.output);
    }
}

static void test_extract_cases(void)
{
    const cJSON *all = load_cases(), *c;
    const cJSON *list = all ? cJSON_GetObjectItemCaseSensitive(all, "extract") : NULL;
    cJSON_ArrayForEach(c, list)
    {
        const cJSON *cr = cJSON_GetObjectItemCaseSensitive(c, "conv_rank");
        mood_lora_write_options o;
        mood_lora_write_options_init(&o);
        o.output = scratch_path(cJSON_GetObjectItemCaseSensitive(c, "expected")->valuestring);
        MOOD_CHECK_OK(mood_lora_extract(
            svd_fixture(cJSON_GetObjectItemCaseSensitive(c, "base")->valuestring),
            svd_fixture(cJSON_GetObjectItemCaseSensitive(c, "tuned")->valuestring),
            cJSON_GetObjectItemCaseSensitive(c, "rank")->valueint,
            cJSON_IsNumber(cr) ? cr->valueint : 0,
            cJSON_GetObjectItemCaseSensitive(c, "min_diff")->valuedouble, &o));
        compare_case(c, o.output);
    }
}

/* Errors: a family mismatch, a missing file, a bad rank. */
static void test_errors(void)
{
    mood_lora_write_options o;
    mood_weighted_adapter w[2] = {
        {.path = fixture("kohya/sd1_lora.safetensors"), .unet = 1, .te = 1},
        {.path = fixture("kohya/sdxl_lora.safetensors"), .unet = 1, .te = 1}};
    mood_lora_write_options_init(&o);
    o.output = scratch_path("err.safetensors");
    MOOD_CHECK(mood_lora_merge(w, 2, 4, 0, &o) == MOOD_EFAMILY);
    MOOD_CHECK(mood_lora_merge(w, 1, 0, 0, &o) == MOOD_EINVAL);
    MOOD_CHECK(mood_lora_resize(fixture("kohya/nope.safetensors"), MOOD_RESIZE_FIXED, 0, 2, 0,
                                &o) == MOOD_ENOTFOUND);
    MOOD_CHECK(mood_lora_resize(fixture("kohya/sd1_lora.safetensors"), MOOD_RESIZE_SV_FRO, -1, 2, 0,
                                &o) == MOOD_EINVAL);
    MOOD_CHECK(mood_lora_extract(fixture("bases/sd1_base.safetensors"),
                                 fixture("bases/sdxl_base.safetensors"), 4, 0, 0.01,
                                 &o) == MOOD_EFAMILY);
    /* ΔW that depends on the base (DoRA) and deltas a LoRA cannot hold (norms) are refused */
    w[0].path = fixture("lycoris/locon_dora_in.safetensors");
    MOOD_CHECK(mood_lora_merge(w, 1, 4, 0, &o) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "base") != NULL);
    w[0].path = fixture("lycoris/locon_norms.safetensors");
    MOOD_CHECK(mood_lora_merge(w, 1, 4, 0, &o) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "norm") != NULL);
    MOOD_CHECK(!mood_path_exists(o.output));
}

/* A copy of the LoRA at src keeping the first `keep` ranks of every module, alpha scaled by
 * keep/r so that its scale stays the full file's: what a DyLoRA cut applies, as a file. */
static const char *write_first_ranks(const char *src, int keep)
{
    const char *path = scratch_path("first_ranks.safetensors");
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, src));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; f && w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        int64_t n = mood_st_numel(t), shape[4];
        float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
        char down[512];
        const mood_st_tensor *d;
        snprintf(down, sizeof down, "%.*s.lora_down.weight", (int)(strchr(t->name, '.') - t->name),
                 t->name);
        d = mood_st_find(f, down);
        memcpy(shape, t->shape, sizeof shape);
        MOOD_CHECK_OK(mood_st_to_f32(v, t));
        if (d && strstr(t->name, ".lora_up.")) { /* (out, r, ...): the first keep columns */
            int64_t r = t->shape[1], out = t->shape[0];
            for (int64_t o = 0; o < out; o++)
                memmove(v + o * keep, v + o * r, (size_t)keep * sizeof *v);
            shape[1] = keep;
        } else if (d && strstr(t->name, ".lora_down.")) { /* (r, ...): the first keep rows */
            shape[0] = keep;
        } else if (d && strstr(t->name, ".alpha")) {
            v[0] = v[0] * (float)keep / (float)d->shape[0];
        }
        MOOD_CHECK_OK(mood_st_writer_add_f32(w, t->name, MOOD_DTYPE_F32, t->ndim, shape, v));
        free(v);
    }
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    mood_st_close(f);
    return path;
}

/* The largest |ΔW_merged - ΔW_input| of module m, relative to the largest |ΔW_input|, for a
 * merge of the one input at full rank with clamp quantile q. */
static double full_rank_merge_error(const char *input, const char *m, double q)
{
    mood_lora_write_options o;
    mood_weighted_adapter w[1] = {{.path = input, .unet = 1, .te = 1}};
    mood_st_file *fin = NULL, *fout = NULL;
    int r = 0;
    double a = 0, *din = NULL, *dout = NULL, worst = -1, big = 0;
    int64_t out = 0, cols = 0;
    mood_lora_write_options_init(&o);
    MOOD_CHECK(o.clamp_quantile == 0.99); /* kohya's default */
    o.output = scratch_path("unclamped.safetensors");
    o.clamp_quantile = q;
    MOOD_CHECK_OK(mood_lora_merge(w, 1, 64, 0, &o));
    MOOD_CHECK_OK(mood_st_open(&fin, input));
    MOOD_CHECK_OK(mood_st_open(&fout, o.output));
    if (fin && fout && (din = module_delta(fin, m, &r, &a, &out, &cols)) &&
        (dout = module_delta(fout, m, &r, &a, &out, &cols))) {
        worst = 0;
        for (int64_t i = 0; i < out * cols; i++) {
            worst = fmax(worst, fabs(dout[i] - din[i]));
            big = fmax(big, fabs(din[i]));
        }
        worst /= big;
    }
    free(din);
    free(dout);
    mood_st_close(fin);
    mood_st_close(fout);
    return worst;
}

/* At full rank a merge without the clamp (quantile 1) gives the input's ΔW back; kohya's clamp
 * at 0.99 trims its outliers. */
static void test_merge_clamp_quantile(void)
{
    static const char *const m = "lora_te_text_model_encoder_layers_0_mlp_fc1"; /* 32 x 16 */
    char input[1024];
    snprintf(input, sizeof input, "%s", fixture("kohya/sd1_lora.safetensors"));
    double whole = full_rank_merge_error(input, m, 1.0);
    double clamped = full_rank_merge_error(input, m, 0.99);
    MOOD_CHECK_MSG(whole >= 0 && whole < 1e-5, "unclamped: %g", whole);
    MOOD_CHECK_MSG(clamped > 1e-3, "clamped: %g", clamped);
}

/* A copy of the LoRA at src whose 2-D module `m` changes the transposed weight: up = downᵀ,
 * down = upᵀ, so ΔW becomes ΔWᵀ (as many elements as the target has, the wrong shape). */
static const char *write_transposed(const char *src, const char *m)
{
    const char *path = scratch_path("transposed.safetensors");
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    size_t n = strlen(m);
    MOOD_CHECK_OK(mood_st_open(&f, src));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; f && w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i), *from = t;
        int64_t shape[4];
        char other[512];
        int swap = strncmp(t->name, m, n) == 0 && t->name[n] == '.' && t->ndim == 2 &&
                   (strstr(t->name, ".lora_up.") || strstr(t->name, ".lora_down."));
        if (swap) {
            snprintf(other, sizeof other, "%s.%s.weight", m,
                     strstr(t->name, ".lora_up.") ? "lora_down" : "lora_up");
            from = mood_st_find(f, other);
        }
        float *v = malloc((size_t)mood_st_numel(from) * sizeof *v), *tv = v;
        MOOD_CHECK_OK(mood_st_to_f32(v, from));
        memcpy(shape, from->shape, sizeof shape);
        if (swap) {
            tv = malloc((size_t)mood_st_numel(from) * sizeof *tv);
            for (int64_t r = 0; r < from->shape[0]; r++)
                for (int64_t c = 0; c < from->shape[1]; c++)
                    tv[c * from->shape[0] + r] = v[r * from->shape[1] + c];
            shape[0] = from->shape[1];
            shape[1] = from->shape[0];
        }
        MOOD_CHECK_OK(mood_st_writer_add_f32(w, t->name, MOOD_DTYPE_F32, t->ndim, shape, tv));
        if (tv != v)
            free(tv);
        free(v);
    }
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    mood_st_close(f);
    return path;
}

/* Writes a LoRA of one module, fc1 of the first text encoder layer (32 x 16), whose up factor
 * has up_rows rows and every factor value is v. */
static const char *write_fc1_lora(const char *name, int64_t up_rows, float v)
{
    static const char *const m = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    const char *path = scratch_path(name);
    char key[256];
    float vals[32 * 2], alpha = 2;
    int64_t up_shape[4] = {up_rows, 2}, down_shape[4] = {2, 16}, none[4] = {0};
    mood_st_writer *w = NULL;
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        vals[i] = v;
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    snprintf(key, sizeof key, "%s.lora_up.weight", m);
    MOOD_CHECK_OK(mood_st_writer_add_f32(w, key, MOOD_DTYPE_F32, 2, up_shape, vals));
    snprintf(key, sizeof key, "%s.lora_down.weight", m);
    MOOD_CHECK_OK(mood_st_writer_add_f32(w, key, MOOD_DTYPE_F32, 2, down_shape, vals));
    snprintf(key, sizeof key, "%s.alpha", m);
    MOOD_CHECK_OK(mood_st_writer_add_f32(w, key, MOOD_DTYPE_F32, 0, none, &alpha));
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    return path;
}

/* A module whose up factor has no rows changes an empty weight, which merge and stack refuse by
 * name (they divided by its zero rows); one whose factors (1e20) overflow float32 in their
 * product is refused by merge and resize as not finite, an input error (it was LAPACK's info
 * number, exit 2). */
static void test_empty_or_overflowing_module_refused(void)
{
    char empty[1024], big[1024];
    mood_lora_write_options o;
    snprintf(empty, sizeof empty, "%s", write_fc1_lora("empty_rows.safetensors", 0, 0));
    snprintf(big, sizeof big, "%s", write_fc1_lora("overflow.safetensors", 32, 1e20f));
    mood_weighted_adapter in[1] = {{.path = empty, .unet = 1, .te = 1}};
    mood_lora_write_options_init(&o);
    o.output = scratch_path("empty_out.safetensors");
    MOOD_CHECK(mood_lora_merge(in, 1, 2, 0, &o) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "empty weight"), "%s", mood_error_last());
    MOOD_CHECK(mood_lora_stack(in, 1, &o) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "empty weight"), "%s", mood_error_last());
    in[0].path = big;
    for (int rank = 1; rank <= 16; rank += 15) { /* the factorised route, and the dense one */
        MOOD_CHECK(mood_lora_merge(in, 1, rank, 0, &o) == MOOD_EFORMAT);
        MOOD_CHECK_MSG(strstr(mood_error_last(), "overflows float32") &&
                           !strstr(mood_error_last(), "--dtype f32"),
                       "%s", mood_error_last());
    }
    MOOD_CHECK(mood_lora_resize(big, MOOD_RESIZE_FIXED, 0, 1, 0, &o) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "overflow"), "%s", mood_error_last());
    MOOD_CHECK(!mood_path_exists(o.output));
}

/* A copy of sd1_lora.safetensors whose first UNet module is there twice: also under LyCORIS's
 * name for the layer. resize keeps modules one for one, so it refuses, naming both (it failed
 * writing the second); merge adds the two up. */
static void test_resize_refuses_a_layer_named_twice(void)
{
    const char *src = fixture("kohya/sd1_lora.safetensors"),
               *path = scratch_path("twice.safetensors");
    mood_st_file *f = NULL;
    mood_st_writer *w = NULL;
    mood_lora_write_options o;
    char first[256] = "";
    MOOD_CHECK_OK(mood_st_open(&f, src));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (int pass = 0; pass < 2 && f && w; pass++)
        for (size_t i = 0; i < mood_st_count(f); i++) {
            const mood_st_tensor *t = mood_st_at(f, i);
            char name[512];
            float *v = malloc((size_t)(mood_st_numel(t) ? mood_st_numel(t) : 1) * sizeof *v);
            const char *dot = strchr(t->name, '.');
            if (!first[0] && strncmp(t->name, "lora_unet_", 10) == 0)
                snprintf(first, sizeof first, "%.*s", (int)(dot - t->name), t->name);
            if (pass == 1 && !(first[0] && strncmp(t->name, first, strlen(first)) == 0 &&
                               t->name[strlen(first)] == '.')) {
                free(v);
                continue;
            }
            snprintf(name, sizeof name, pass ? "lycoris_%s" : "%s", pass ? t->name + 10 : t->name);
            MOOD_CHECK_OK(mood_st_to_f32(v, t));
            MOOD_CHECK_OK(mood_st_writer_add_f32(w, name, MOOD_DTYPE_F32, t->ndim, t->shape, v));
            free(v);
        }
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    mood_st_close(f);
    mood_lora_write_options_init(&o);
    o.output = scratch_path("twice_out.safetensors");
    MOOD_CHECK(mood_lora_resize(path, MOOD_RESIZE_FIXED, 0, 2, 0, &o) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "both change the layer") &&
                       strstr(mood_error_last(), first) && strstr(mood_error_last(), "lycoris_"),
                   "%s", mood_error_last());
    MOOD_CHECK(!mood_path_exists(o.output));
    mood_weighted_adapter in[1] = {{.path = path, .unet = 1, .te = 1}};
    MOOD_CHECK_OK(mood_lora_merge(in, 1, 2, 0, &o));
}

/* A module that changes the transposed weight of its target (8 x 16 for 16 x 8: as many
 * elements) is refused by merge, by both of its routes, and by stack, naming both shapes;
 * summing it as the other shape would write a wrong LoRA (or, factorised, overrun a buffer). */
static void test_transposed_module_refused(void)
{
    static const char *const m = "lora_te_text_model_encoder_layers_0_mlp_fc1"; /* 32 x 16 */
    char bad[1024];
    mood_lora_write_options o;
    mood_weighted_adapter w[2] = {
        {.path = fixture("kohya/sd1_lora.safetensors"), .unet = 1, .te = 1},
        {.path = bad, .unet = 1, .te = 1}};
    snprintf(bad, sizeof bad, "%s", write_transposed(fixture("kohya/sd1_lora.safetensors"), m));
    mood_lora_write_options_init(&o);
    o.output = scratch_path("transposed_out.safetensors");
    for (int rank = 2; rank <= 64; rank *= 32) { /* factorised (low rank) and dense */
        MOOD_CHECK(mood_lora_merge(w, 2, rank, 0, &o) == MOOD_EFORMAT);
        MOOD_CHECK_MSG(strstr(mood_error_last(), "16 x 32") && strstr(mood_error_last(), "32 x 16"),
                       "%s", mood_error_last());
    }
    MOOD_CHECK(mood_lora_stack(w, 2, &o) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "16 x 32"), "%s", mood_error_last());
    MOOD_CHECK(!mood_path_exists(o.output));
}

/* The ΔW of module m of the merge of w at rank (out × cols); NULL when it failed. */
static double *merged_delta(const mood_weighted_adapter *w, int rank, const char *m, int64_t *n)
{
    mood_lora_write_options o;
    mood_st_file *f = NULL;
    int r = 0;
    double a = 0, *d = NULL;
    int64_t out = 0, cols = 0;
    mood_lora_write_options_init(&o);
    o.output = scratch_path("dyn_merge.safetensors");
    MOOD_CHECK_OK(mood_lora_merge(w, 1, rank, 0, &o));
    MOOD_CHECK_OK(mood_st_open(&f, o.output));
    if (f)
        d = module_delta(f, m, &r, &a, &out, &cols);
    mood_st_close(f);
    *n = out * cols;
    return d;
}

/* A DyLoRA cut is merged as the file cut to those ranks is, by the factorised route (the kept
 * rank within the cut's) and by the dense one (above it), and far from the whole file. */
static void test_merge_dylora_cut(void)
{
    static const char *const m = "lora_te_text_model_encoder_layers_0_mlp_fc1"; /* 32 x 16 */
    char path[1024], cut_path[1024];
    mood_weighted_adapter w = {.path = path, .unet = 1, .te = 1, .dyn = 1};
    mood_weighted_adapter cut = {.path = cut_path, .unet = 1, .te = 1};
    mood_weighted_adapter whole = {.path = path, .unet = 1, .te = 1};
    snprintf(path, sizeof path, "%s", fixture("kohya/sd1_lora.safetensors"));
    snprintf(cut_path, sizeof cut_path, "%s", write_first_ranks(path, 1));
    for (int rank = 1; rank <= 64; rank *= 64) {
        int64_t n1 = 0, n2 = 0, n3 = 0;
        double *got = merged_delta(&w, rank, m, &n1), *want = merged_delta(&cut, rank, m, &n2);
        double *all = merged_delta(&whole, rank, m, &n3);
        MOOD_CHECK_MSG(got && want && all && n1 == n2 && n1 == n3 && n1 == 32 * 16 &&
                           rel_dist(got, want, n1) < 1e-5 && rel_dist(got, all, n1) > 0.3,
                       "rank %d: %g from the cut file's merge, %g from the whole's", rank,
                       got && want ? rel_dist(got, want, n1) : -1,
                       got && all ? rel_dist(got, all, n1) : -1);
        free(got);
        free(want);
        free(all);
    }
}

/* Resize at a file's own rank keeps every module's ΔW, for PEFT files whose scale is not α/r:
 * rsLoRA (use_rslora: α/√r) came out at half strength. ΔW of the input is mood's parse, which
 * test_adapter checks against the diffusers/PEFT fusions of the same files. The output, kohya's
 * format, carries no PEFT config. */
static void test_resize_keeps_peft_scales(void)
{
    static const char *const files[] = {"peft/peft_rslora.safetensors",
                                        "peft/peft_plain.safetensors"};
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        mood_adapter *in = NULL, *out = NULL;
        mood_lora_write_options o;
        mood_lora_write_options_init(&o);
        o.output = scratch_path("peft_resized.safetensors");
        MOOD_CHECK_OK(mood_lora_resize(fixture(files[k]), MOOD_RESIZE_FIXED, 0, 4, 0, &o));
        MOOD_CHECK_OK(mood_adapter_open(&in, fixture(files[k]), NULL));
        MOOD_CHECK_OK(mood_adapter_open(&out, o.output, NULL));
        /* kohya's format out: no PEFT config beside its alphas (diffusers refuses both) */
        MOOD_CHECK(out && !mood_st_meta_get(mood_adapter_file(out), "lora_adapter_metadata"));
        if (!in || !out) {
            mood_adapter_close(in);
            mood_adapter_close(out);
            continue;
        }
        MOOD_CHECK(mood_adapter_module_count(in) == mood_adapter_module_count(out));
        for (size_t i = 0; i < mood_adapter_module_count(in); i++) {
            mood_module_info mi, mo;
            int64_t shape[4];
            size_t n = 1, j = 0;
            mood_adapter_module(in, i, &mi);
            for (; j < mood_adapter_module_count(out); j++) {
                mood_adapter_module(out, j, &mo);
                if (strcmp(mo.target, mi.target) == 0)
                    break;
            }
            MOOD_CHECK_MSG(j < mood_adapter_module_count(out), "%s: not in the output", mi.target);
            if (j == mood_adapter_module_count(out) || mood_adapter_target_shape(in, i, shape) < 0)
                continue;
            for (int d = 0; d < 4; d++)
                n *= shape[d] > 0 ? (size_t)shape[d] : 1;
            float *a = calloc(n, sizeof *a), *b = calloc(n, sizeof *b);
            double diff = 0, norm = 0;
            MOOD_CHECK_OK(mood_adapter_delta(a, in, i, NULL));
            MOOD_CHECK_OK(mood_adapter_delta(b, out, j, NULL));
            for (size_t e = 0; e < n; e++) {
                diff += ((double)a[e] - b[e]) * ((double)a[e] - b[e]);
                norm += (double)a[e] * a[e];
            }
            MOOD_CHECK_MSG(sqrt(diff) <= 1e-5 * sqrt(norm) + 1e-9, "%s %s: |dW - dW'| %g of %g",
                           files[k], mi.target, sqrt(diff), sqrt(norm));
            free(a);
            free(b);
        }
        mood_adapter_close(in);
        mood_adapter_close(out);
    }
}

static void test_cleanup(void)
{
    cJSON_Delete(cases_json);
    cases_json = NULL;
}

MOOD_TEST_MAIN(MOOD_T(test_resize_refuses_a_layer_named_twice),
               MOOD_T(test_empty_or_overflowing_module_refused), MOOD_T(test_merge_clamp_quantile),
               MOOD_T(test_transposed_module_refused), MOOD_T(test_merge_cases),
               MOOD_T(test_resize_cases), MOOD_T(test_extract_cases), MOOD_T(test_errors),
               MOOD_T(test_merge_dylora_cut), MOOD_T(test_resize_keeps_peft_scales),
               MOOD_T(test_cleanup))
