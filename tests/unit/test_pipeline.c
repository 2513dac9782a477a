/*
 * test_pipeline.c: txt2img end to end (mood/gen.h) against diffusers' StableDiffusionPipeline.
 *
 * Fixtures (tests/fixtures/pipeline/, tools/make_fixtures_pipeline.py): a tiny random SD1
 * pipeline with the real vocabulary, stored as a diffusers folder (tiny-sd/) and as one
 * A1111-layout checkpoint (tiny-sd.safetensors, kohya's converters), a kohya LoRA for it, and
 * diffusers' float32 results; manifest.json says every input (prompts, seeds, steps, CFG,
 * samplers) and names the reference tensors in ref.safetensors.
 *
 * Checked for both files of the model:
 *   - the prompt conditioning (pipe.encode_prompt) of three prompts, and the UNet alone;
 *   - the final latents of Euler, Euler a, DPM++ 2M Karras and DDIM runs (8 steps, CFG 7.5,
 *     the torch CPU generator), a batch of 2, a negative prompt and CFG 1, and one decoded image;
 *   - the LoRA at 0.7 (UNet and text encoder) merged and as runtime side paths: conditioning,
 *     the UNet alone (diffusers' fuse_lora) and two runs; switching sets in any order and back
 *     to none reproduces the earlier results bit for bit (pristine weights restored, no drift);
 *   - an SDXL LoRA is refused with MOOD_EFAMILY and leaves the current set in place;
 *   - img2img (tests/fixtures/img2img, diffusers' StableDiffusionImg2ImgPipeline): the final
 *     latents of Euler, Euler a (a batch of 2), DPM++ 2M Karras and DDIM runs from init.png at
 *     strengths 0.35 to 1, one decoded image, and two SDXL runs (StableDiffusionXLImg2ImgPipeline
 *     on tests/fixtures/sdxl/tiny-sdxl); a strength that runs no step, one above 1 and the
 *     LCM sampler are refused; mood_gen_init_image's pixels (alpha over white, resize).
 * Tolerance: max |mood - diffusers| <= 2e-5 * max |diffusers| for latents and images, 1e-5 for
 * the conditioning and the UNet alone.
 *
 * The conditioning and the UNet are reached through engine/model_impl.h (white box): gen.h has
 * no call for them alone.
 */
#include "harness.h"

#include "common/common.h"
#include "engine/model_impl.h"
#include "mood/gen.h"
#include "mood/safetensors.h"
#include "mood/sampler.h"

/* Relative to max |reference|. Measured: runs <= 2.5e-6, conditioning and UNet <= 1.1e-6. */
#define RUN_TOL   2e-5 /* latents and images */
#define LAYER_TOL 1e-5 /* conditioning and the UNet alone */

/* The manifest and the reference tensors. */
typedef struct fixture_set {
    cJSON *man;
    mood_st_file *ref;
} fixture_set;

static int fixtures_open(fixture_set *f)
{
    memset(f, 0, sizeof *f);
    f->man = load_json(fixture("pipeline/manifest.json"));
    if (!f->man) {
        fprintf(stderr, "cannot read %s\n", fixture("pipeline/manifest.json"));
        return -1;
    }
    return mood_st_open(&f->ref, fixture("pipeline/ref.safetensors"));
}

static void fixtures_close(fixture_set *f)
{
    cJSON_Delete(f->man);
    mood_st_close(f->ref);
}

static const cJSON *member(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = member(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* Reference tensor `name` as float32 (malloc'd); *n its element count. NULL when absent. */
static float *ref_tensor(const fixture_set *f, const char *name, size_t *n)
{
    const mood_st_tensor *t = name ? mood_st_find(f->ref, name) : NULL;
    float *out;
    *n = 0;
    if (!t) {
        fprintf(stderr, "reference tensor %s missing\n", name ? name : "(null)");
        return NULL;
    }
    *n = (size_t)mood_st_numel(t);
    out = malloc(*n * sizeof *out);
    if (out && mood_st_to_f32(out, t) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* max |a - b| / max |b|. */
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

/* Compares n floats of `got` with reference `name`; prints and checks the relative error. */
static void check_close(const fixture_set *f, const char *label, const char *name, const float *got,
                        size_t n, double tol)
{
    size_t nref = 0;
    float *want = ref_tensor(f, name, &nref);
    MOOD_CHECK_MSG(want && nref == n, "%s: %s has %zu values, mood gave %zu", label, name, nref, n);
    if (want && nref == n) {
        double e = rel_err(got, want, n);
        printf("  %-34s %-28s %.2e\n", label, name, e);
        MOOD_CHECK_MSG(e <= tol, "%s: %s off by %.3g (relative to max |ref|, limit %.0e)", label,
                       name, e, tol);
    }
    free(want);
}

/* ----- the model ---------------------------------------------------------------------------- */

/* Opens the folder (single = 0) or the single file (1). A single file cannot say its attention
 * heads, activation or norm groups, so the manifest's values go in as hints; the folder's
 * config.json files must be read instead. */
static int open_model(mood_model **m, const fixture_set *f, int single)
{
    const cJSON *mm = member(f->man, "model"), *te = member(mm, "text_encoder"),
                *un = member(mm, "unet"), *va = member(mm, "vae");
    mood_model_options o;
    mood_clip_config ch = {0};
    mood_unet_config uh = {0};
    mood_vae_config vh = {0};
    char path[512];
    mood_model_options_init(&o);
    ch.heads = (int)num(te, "heads");
    ch.act = strcmp(json_str(te, "act"), "quick_gelu") == 0 ? MOOD_CLIP_ACT_QUICK_GELU
                                                            : MOOD_CLIP_ACT_GELU;
    ch.layer_norm_eps = (float)num(te, "layer_norm_eps");
    for (int i = 0; i < MOOD_UNET_MAX_BLOCKS; i++)
        uh.num_attention_heads[i] = (int)num(un, "heads");
    uh.norm_num_groups = (int)num(un, "norm_num_groups");
    vh.norm_num_groups = (int)num(va, "norm_num_groups");
    vh.scaling_factor = (float)num(va, "scaling_factor");
    if (single) {
        o.clip_hint = &ch;
        o.unet_hint = &uh;
        o.vae_hint = &vh;
    }
    snprintf(path, sizeof path, "pipeline/%s", json_str(mm, single ? "single_file" : "folder"));
    return mood_model_open(m, fixture(path), &o);
}

static const char *model_label(int single)
{
    return single ? "single file" : "folder";
}

/* mood_gen_options of a manifest run. */
static int run_options(mood_gen_options *o, const cJSON *run)
{
    const char *neg = json_str(run, "negative");
    int err;
    mood_gen_options_init(o);
    o->prompt = json_str(run, "prompt");
    o->negative = neg;
    o->width = (int)num(run, "width");
    o->height = (int)num(run, "height");
    o->batch = (int)num(run, "batch");
    o->steps = (int)num(run, "steps");
    o->cfg = num(run, "cfg");
    o->seed = (uint64_t)num(run, "seed");
    o->rng = MOOD_RNG_TORCH_CPU;
    o->clip_skip = 1;
    if ((err = mood_sampler_parse(&o->sampler, &o->schedule, json_str(run, "sampler"))) != 0)
        return err;
    return mood_sigma_schedule_parse(&o->schedule, json_str(run, "schedule"));
}

static const cJSON *find_run(const fixture_set *f, const char *name)
{
    const cJSON *run;
    cJSON_ArrayForEach(run, member(f->man, "runs"))
    {
        const char *n = json_str(run, "name");
        if (n && strcmp(n, name) == 0)
            return run;
    }
    return NULL;
}

/* One run's output. */
typedef struct result {
    float *latents, *images;
    size_t n_latents, n_images;
} result;

static void result_free(result *r)
{
    free(r->latents);
    free(r->images);
    memset(r, 0, sizeof *r);
}

static int generate(mood_model *m, const cJSON *run, result *r)
{
    mood_gen_options o;
    int err;
    memset(r, 0, sizeof *r);
    if ((err = run_options(&o, run)) != 0)
        return err;
    if ((err = mood_generate(m, &o, &r->images, &r->latents)) != 0)
        return err;
    r->n_latents = (size_t)o.batch * 4 * (o.height / 8) * (o.width / 8);
    r->n_images = (size_t)o.batch * 3 * o.height * o.width;
    return 0;
}

/* mood's images (B x 3 x H x W in [-1, 1]) as diffusers' output_type "np" (B x H x W x 3,
 * (x / 2 + 0.5) clamped to [0, 1]). */
static float *to_np_image(const float *img, int B, int H, int W)
{
    float *out = malloc((size_t)B * H * W * 3 * sizeof *out);
    for (int b = 0; out && b < B; b++)
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < H * W; i++) {
                float v = img[((size_t)b * 3 + c) * H * W + i] / 2 + 0.5f;
                out[((size_t)b * H * W + i) * 3 + c] = v < 0 ? 0 : v > 1 ? 1 : v;
            }
    return out;
}

/* Runs `run` and compares its latents (and image, when the manifest has one). *keep (may be
 * NULL) receives the result. */
static void check_run(mood_model *m, const fixture_set *f, const cJSON *run, const char *label,
                      result *keep)
{
    result r;
    char what[96];
    int rc = generate(m, run, &r);
    snprintf(what, sizeof what, "%s %s", label, json_str(run, "name"));
    MOOD_CHECK_MSG(rc == 0, "%s: mood_generate returned %d: %s", what, rc, mood_error_last());
    if (rc != 0)
        return;
    check_close(f, what, json_str(run, "latents"), r.latents, r.n_latents, RUN_TOL);
    if (json_str(run, "image")) {
        int B = (int)num(run, "batch"), H = (int)num(run, "height"), W = (int)num(run, "width");
        float *np = to_np_image(r.images, B, H, W);
        check_close(f, what, json_str(run, "image"), np, r.n_images, RUN_TOL);
        free(np);
    }
    if (keep)
        *keep = r;
    else
        result_free(&r);
}

static int same_result(const result *a, const result *b)
{
    return a->latents && b->latents && a->n_latents == b->n_latents && a->n_images == b->n_images &&
           memcmp(a->latents, b->latents, a->n_latents * sizeof(float)) == 0 &&
           memcmp(a->images, b->images, a->n_images * sizeof(float)) == 0;
}

/* ----- conditioning and the UNet alone ------------------------------------------------------ */

static void check_embeds(mood_model *m, const fixture_set *f, const cJSON *e, const char *label)
{
    float *z = NULL;
    int n = 0, C = mood_clip_get_config(m->clip)->hidden;
    MOOD_CHECK_OK(mood__encode_prompt(m, json_str(e, "prompt"), 1, &z, &n));
    MOOD_CHECK(n == 1);
    if (z && n == 1)
        check_close(f, label, json_str(e, "ref"), z, (size_t)MOOD_CLIP_CONTEXT * C, LAYER_TOL);
    mood_free(z);
}

static void check_unet(mood_model *m, const fixture_set *f, const char *out_name, const char *label)
{
    const cJSON *u = member(f->man, "unet");
    size_t nx = 0, nt = 0, nc = 0;
    float *x = ref_tensor(f, json_str(u, "x"), &nx), *t = ref_tensor(f, json_str(u, "t"), &nt),
          *ctx = ref_tensor(f, json_str(u, "ctx"), &nc), *out = malloc(nx * sizeof *out);
    MOOD_CHECK(x && t && ctx && out && nx == 4 * 8 * 8 && nt == 1);
    if (x && t && ctx && out && nx == 4 * 8 * 8 && nt == 1) {
        int T = (int)(nc / (size_t)mood_unet_get_config(m->unet)->cross_attention_dim);
        MOOD_CHECK_OK(mood_unet_forward(m->unet, out, x, t, ctx, 1, 8, 8, T, NULL, NULL));
        check_close(f, label, out_name, out, nx, LAYER_TOL);
    }
    free(x), free(t), free(ctx), free(out);
}

/* ----- tests ---------------------------------------------------------------------------------- */

static void test_open(void)
{
    fixture_set f;
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"pipeline fixtures");
        return;
    }
    for (int single = 0; single < 2; single++) {
        mood_model *m = NULL;
        MOOD_CHECK_OK(open_model(&m, &f, single));
        if (!m)
            continue;
        const mood_noise_schedule *s = mood_model_schedule(m);
        MOOD_CHECK(mood_model_family(m) == MOOD_FAMILY_SD1);
        MOOD_CHECK(s->beta_schedule == MOOD_BETA_SCALED_LINEAR && s->steps_offset == 1 &&
                   s->prediction == MOOD_PRED_EPSILON && s->train_timesteps == 1000);
        MOOD_CHECK(s->timestep_spacing == MOOD_SPACING_LEADING);
        MOOD_CHECK(s->clip_sample == 0 && s->set_alpha_to_one == 0);
        MOOD_CHECK(fabs(s->beta_start - 0.00085) < 1e-12 && fabs(s->beta_end - 0.012) < 1e-12);
        MOOD_CHECK(strcmp(mood_model_name(m), "tiny-sd") == 0);
        check_embeds(m, &f, cJSON_GetArrayItem(member(f.man, "embeds"), 0), model_label(single));
        mood_model_free(m);
    }
    /* the folder's text encoder config says 2 heads; the single file without hints cannot */
    {
        mood_model *m = NULL;
        int rc = mood_model_open(&m, fixture("pipeline/tiny-sd.safetensors"), NULL);
        MOOD_CHECK_MSG(rc == MOOD_EINVAL || rc == MOOD_EFORMAT,
                       "a tiny single file without hints: %d (%s)", rc, mood_error_last());
        mood_model_free(m);
    }
    fixtures_close(&f);
}

static void test_conditioning(void)
{
    fixture_set f;
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"pipeline fixtures");
        return;
    }
    for (int single = 0; single < 2; single++) {
        mood_model *m = NULL;
        const cJSON *e;
        MOOD_CHECK_OK(open_model(&m, &f, single));
        if (!m)
            continue;
        cJSON_ArrayForEach(e, member(f.man, "embeds"))
        {
            check_embeds(m, &f, e, model_label(single));
        }
        check_unet(m, &f, json_str(member(f.man, "unet"), "out"), model_label(single));
        mood_model_free(m);
    }
    fixtures_close(&f);
}

static void test_runs(void)
{
    fixture_set f;
    result first[2] = {{0}};
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"pipeline fixtures");
        return;
    }
    for (int single = 0; single < 2; single++) {
        mood_model *m = NULL;
        const cJSON *run;
        MOOD_CHECK_OK(open_model(&m, &f, single));
        if (!m)
            continue;
        cJSON_ArrayForEach(run, member(f.man, "runs"))
        {
            if (member(run, "lora"))
                continue;
            check_run(m, &f, run, model_label(single),
                      strcmp(json_str(run, "name"), "euler") == 0 ? &first[single] : NULL);
        }
        mood_model_free(m);
    }
    /* both files hold the same float16 values: the same computation, bit for bit */
    MOOD_CHECK_MSG(same_result(&first[0], &first[1]),
                   "the folder and the single file give different results");
    result_free(&first[0]);
    result_free(&first[1]);
    fixtures_close(&f);
}

/* Sets the manifest LoRA at multiplier mult (UNet and text encoder) in `mode`. */
static int set_lora(mood_model *m, const fixture_set *f, mood_lora_mode mode, double mult,
                    size_t *unmatched)
{
    char path[512];
    mood_weighted_adapter a = {0};
    snprintf(path, sizeof path, "pipeline/%s", json_str(member(f->man, "lora"), "file"));
    a.path = fixture(path);
    a.unet = mult;
    a.te = mult;
    return mood_model_set_adapters(m, &a, 1, mode, unmatched);
}

/* The LoRA references in one mode: conditioning, the UNet alone, the LoRA runs. *keep receives
 * the first LoRA run's result. */
static void check_lora(mood_model *m, const fixture_set *f, mood_lora_mode mode, const char *label,
                       result *keep)
{
    const cJSON *lo = member(f->man, "lora"), *run;
    size_t unmatched = 99;
    int kept = 0;
    MOOD_CHECK_OK(set_lora(m, f, mode, num(lo, "scale"), &unmatched));
    MOOD_CHECK_MSG(unmatched == 0, "%s: %zu LoRA keys matched nothing", label, unmatched);
    check_embeds(m, f, member(lo, "embeds"), label);
    check_unet(m, f, json_str(member(f->man, "unet"), "out_lora"), label);
    cJSON_ArrayForEach(run, member(f->man, "runs"))
    {
        if (!member(run, "lora"))
            continue;
        check_run(m, f, run, label, kept ? NULL : keep);
        kept = 1;
    }
}

static void lora_model(int single)
{
    fixture_set f;
    mood_model *m = NULL;
    result plain = {0}, merged = {0}, runtime = {0}, again = {0};
    const cJSON *euler, *lora_run = NULL, *run;
    char label[64];
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"pipeline fixtures");
        return;
    }
    euler = find_run(&f, "euler");
    cJSON_ArrayForEach(run, member(f.man, "runs"))
    {
        if (!lora_run && member(run, "lora"))
            lora_run = run;
    }
    MOOD_CHECK_OK(open_model(&m, &f, single));
    if (!m || !euler || !lora_run)
        goto done;
    MOOD_CHECK_OK(generate(m, euler, &plain));

    snprintf(label, sizeof label, "%s merge", model_label(single));
    check_lora(m, &f, MOOD_LORA_MERGE, label, &merged);
    snprintf(label, sizeof label, "%s runtime", model_label(single));
    check_lora(m, &f, MOOD_LORA_RUNTIME, label, &runtime);

    /* back to none: pristine weights, the plain run bit for bit */
    MOOD_CHECK_OK(mood_model_set_adapters(m, NULL, 0, MOOD_LORA_MERGE, NULL));
    MOOD_CHECK_OK(generate(m, euler, &again));
    MOOD_CHECK_MSG(same_result(&plain, &again), "%s: no adapters after runtime LoRA differs",
                   model_label(single));
    result_free(&again);

    /* merge at another multiplier, then at 0.7 again: exactly the first merge (no drift) */
    MOOD_CHECK_OK(set_lora(m, &f, MOOD_LORA_MERGE, -0.4, NULL));
    MOOD_CHECK_OK(set_lora(m, &f, MOOD_LORA_MERGE, num(member(f.man, "lora"), "scale"), NULL));
    MOOD_CHECK_OK(generate(m, lora_run, &again));
    MOOD_CHECK_MSG(same_result(&merged, &again), "%s: merging again differs from the first merge",
                   model_label(single));
    result_free(&again);

    /* an SDXL LoRA: MOOD_EFAMILY, and the merged set stays */
    {
        char path[512];
        mood_weighted_adapter x = {.path = NULL, .unet = 1.0, .te = 1.0};
        int rc;
        snprintf(path, sizeof path, "pipeline/%s", json_str(member(f.man, "lora"), "other_family"));
        x.path = fixture(path);
        rc = mood_model_set_adapters(m, &x, 1, MOOD_LORA_MERGE, NULL);
        MOOD_CHECK_MSG(rc == MOOD_EFAMILY, "%s: SDXL LoRA gave %d (%s)", model_label(single), rc,
                       mood_error_last());
        MOOD_CHECK_MSG(strstr(mood_error_last(), "sdxl") != NULL, "message: %s", mood_error_last());
        rc = mood_model_set_adapters(m, &x, 1, MOOD_LORA_RUNTIME, NULL);
        MOOD_CHECK(rc == MOOD_EFAMILY);
        MOOD_CHECK_OK(generate(m, lora_run, &again));
        MOOD_CHECK_MSG(same_result(&merged, &again), "%s: a refused LoRA changed the model",
                       model_label(single));
        result_free(&again);
    }

    /* merged -> none: the plain run bit for bit */
    MOOD_CHECK_OK(mood_model_set_adapters(m, NULL, 0, MOOD_LORA_RUNTIME, NULL));
    MOOD_CHECK_OK(generate(m, euler, &again));
    MOOD_CHECK_MSG(same_result(&plain, &again), "%s: no adapters after a merge differs",
                   model_label(single));
    result_free(&again);
done:
    result_free(&plain);
    result_free(&merged);
    result_free(&runtime);
    mood_model_free(m);
    fixtures_close(&f);
}

static void test_lora_folder(void)
{
    lora_model(0);
}

static void test_lora_single_file(void)
{
    lora_model(1);
}

/* ----- img2img -------------------------------------------------------------------------------
 * tests/fixtures/img2img (tools/make_fixtures_img2img.py): diffusers'
 * StableDiffusionImg2ImgPipeline on the same model from init.png, four samplers at strengths 0.35
 * to 1, a batch of 2; and StableDiffusionXLImg2ImgPipeline on the tiny SDXL model. */

static void check_img2img_run(mood_model *m, const fixture_set *f, const cJSON *run,
                              const float *init, const float *mask, int size)
{
    mood_gen_options o;
    result r = {0};
    int B = (int)num(run, "batch"), rc;
    char what[96];
    snprintf(what, sizeof what, "img2img %s", json_str(run, "name"));
    MOOD_CHECK_OK(run_options(&o, run));
    o.width = o.height = size;
    o.init_image = init;
    o.mask = mask;
    o.strength = num(run, "strength");
    rc = mood_generate(m, &o, &r.images, &r.latents);
    MOOD_CHECK_MSG(rc == 0, "%s: mood_generate returned %d: %s", what, rc, mood_error_last());
    if (rc != 0)
        return;
    check_close(f, what, json_str(run, "latents"), r.latents,
                (size_t)B * 4 * (size / 8) * (size / 8), RUN_TOL);
    if (json_str(run, "image")) {
        float *np = to_np_image(r.images, B, size, size);
        check_close(f, what, json_str(run, "image"), np, (size_t)B * 3 * size * size, RUN_TOL);
        free(np);
    }
    result_free(&r);
}

static void test_img2img(void)
{
    fixture_set pf, f = {0};
    mood_model *m = NULL;
    mood_image *img = NULL, *mask_img = NULL;
    float *init = NULL, *out = NULL, *mask = NULL;
    mood_gen_options o;
    const cJSON *run;
    int size;
    if (fixtures_open(&pf) != 0) {
        MOOD_CHECK(!"pipeline fixtures");
        return;
    }
    f.man = load_json(fixture("img2img/manifest.json"));
    MOOD_CHECK(f.man != NULL);
    MOOD_CHECK_OK(mood_st_open(&f.ref, fixture("img2img/ref.safetensors")));
    MOOD_CHECK_OK(mood_image_load(&img, fixture("img2img/init.png")));
    size = (int)num(f.man, "size");
    if (!f.man || !f.ref || !img || open_model(&m, &pf, 0) != 0)
        goto done;
    MOOD_CHECK_OK(mood_gen_init_image(&init, img, size, size));
    cJSON_ArrayForEach(run, member(f.man, "runs"))
    {
        check_img2img_run(m, &f, run, init, NULL, size);
    }
    /* inpainting: StableDiffusionInpaintPipeline with mask.png */
    MOOD_CHECK_OK(mood_image_load(&mask_img, fixture("img2img/mask.png")));
    if (mask_img && mood_gen_mask(&mask, mask_img, size, size) == 0)
        cJSON_ArrayForEach(run, member(f.man, "inpaint_runs"))
        {
            check_img2img_run(m, &f, run, init, mask, size);
        }
    MOOD_CHECK(mask != NULL);
    /* an inpainting model (tiny-sd with a 9-channel conv_in): the UNet sees mask and masked
     * picture; without them it is refused */
    {
        mood_model *m9 = NULL;
        MOOD_CHECK_OK(mood_model_open(&m9, fixture("img2img/tiny-sd-inpaint"), NULL));
        cJSON_ArrayForEach(run, member(f.man, "inpaint9_runs"))
        {
            if (m9 && mask)
                check_img2img_run(m9, &f, run, init, mask, size);
        }
        MOOD_CHECK_OK(run_options(&o, find_run(&pf, "euler")));
        o.width = o.height = size;
        if (m9)
            MOOD_CHECK(mood_generate(m9, &o, &out, NULL) == MOOD_EINVAL);
        o.init_image = init;
        if (m9)
            MOOD_CHECK(mood_generate(m9, &o, &out, NULL) == MOOD_EINVAL);
        MOOD_CHECK(out == NULL);
        mood_model_free(m9);
    }
    /* what diffusers refuses or mood does not do, said before any work */
    MOOD_CHECK_OK(run_options(&o, find_run(&pf, "euler")));
    o.width = o.height = size;
    o.init_image = init;
    o.strength = 0.04; /* int(8 x 0.04) = 0 steps */
    MOOD_CHECK(mood_generate(m, &o, &out, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "runs no step") != NULL);
    o.strength = 1.5;
    MOOD_CHECK(mood_generate(m, &o, &out, NULL) == MOOD_EINVAL);
    o.strength = 0.5;
    o.sampler = MOOD_SAMPLER_LCM;
    o.schedule = MOOD_SCHEDULE_DEFAULT;
    MOOD_CHECK(mood_generate(m, &o, &out, NULL) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(out == NULL);
    /* SDXL (StableDiffusionXLImg2ImgPipeline on the tiny SDXL folder of tests/fixtures/sdxl) */
    mood_model_free(m);
    m = NULL;
    MOOD_CHECK_OK(mood_model_open(&m, fixture("sdxl/tiny-sdxl"), NULL));
    cJSON_ArrayForEach(run, member(f.man, "sdxl_runs"))
    {
        if (m)
            check_img2img_run(m, &f, run, init, NULL, size);
    }
done:
    free(mask);
    mood_image_free(mask_img);
    free(init);
    mood_image_free(img);
    mood_model_free(m);
    fixtures_close(&f);
    fixtures_close(&pf);
}

/* The init image's pixels: over white, resized when another size, x / 255 * 2 - 1. */
static void test_init_image(void)
{
    mood_image *img = NULL;
    float *x = NULL;
    MOOD_CHECK_OK(mood_image_new(&img, 4, 2, 4));
    if (!img)
        return;
    for (int i = 0; i < 8; i++) {
        uint8_t *p = img->pixels + 4 * i;
        p[0] = (uint8_t)(i * 30), p[1] = 255, p[2] = 0, p[3] = i < 4 ? 255 : 0;
    }
    MOOD_CHECK_OK(mood_gen_init_image(&x, img, 4, 2));
    if (x) {
        MOOD_CHECK(x[1] == 2.0f * (30.0f / 255.0f) - 1.0f); /* R of pixel 1, opaque */
        MOOD_CHECK(x[8 + 1] == 1.0f);                       /* G */
        MOOD_CHECK(x[16 + 1] == -1.0f);                     /* B */
        MOOD_CHECK(x[5] == 1.0f && x[16 + 5] == 1.0f);      /* transparent: white */
    }
    free(x);
    x = NULL;
    MOOD_CHECK_OK(mood_gen_init_image(&x, img, 8, 6)); /* stretched */
    if (x) {
        MOOD_CHECK(x[8 * 6 + 0] == 1.0f);   /* G of the top left: 255 */
        MOOD_CHECK(x[2 * 48 + 47] > 0.99f); /* B of the bottom right: white */
    }
    free(x);
    x = NULL;
    MOOD_CHECK(mood_gen_init_image(&x, img, 0, 6) == MOOD_EINVAL && x == NULL);
    mood_image_free(img);
}

MOOD_TEST_MAIN(MOOD_T(test_open), MOOD_T(test_conditioning), MOOD_T(test_runs),
               MOOD_T(test_lora_folder), MOOD_T(test_lora_single_file), MOOD_T(test_img2img),
               MOOD_T(test_init_image))
