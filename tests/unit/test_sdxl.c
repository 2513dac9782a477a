/*
 * test_sdxl.c: SDXL and Playground v2.5 generation (mood/gen.h) against diffusers'
 * StableDiffusionXLPipeline.
 *
 * Fixtures (tests/fixtures/sdxl/, tools/make_fixtures_sdxl.py): a tiny random SDXL pipeline with
 * the real vocabulary and SDXL's block layout, as a diffusers folder (tiny-sdxl/), as one
 * SGM-layout checkpoint (tiny-sdxl.safetensors) and as Playground v2.5 (pg25/: the same weights,
 * EDM scheduler, latents mean/std), two kohya-format SDXL LoRAs (SGM names with both text
 * encoders; diffusers-style UNet names) and diffusers' float32 results; manifest.json says every
 * input and names the reference tensors in ref.safetensors.
 *
 * Checked, for the folder and the single file:
 *   - both text encoders' hidden_states[-2], the pooled projected embedding, encode_prompt's
 *     concatenated conditioning for three prompts, clip skip (diffusers' clip_skip=1 = mood's 3),
 *     a two-chunk prompt (A1111's BREAK: each chunk as its own prompt, pooled of the first),
 *     "!" tokenized for text encoder 2 as open_clip and A1111 do (not as tokenizer_2's pad),
 *     add_time_ids, and the UNet alone with text_embeds and time_ids;
 *   - the final latents of Euler a, DPM++ 2M Karras (with a negative prompt) and Euler runs
 *     (batch 2 at 64 x 48, CFG 1), empty negative prompts as zeros, and a decoded image;
 *   - the SGM LoRA at 0.7 (UNet, CLIP-L, bigG) merged and as runtime side paths: conditioning,
 *     pooled embedding, UNet alone, two runs; both LoRAs stacked (0.7, -0.5); back to none
 *     reproduces the plain run bit for bit; an SD1 LoRA is refused with MOOD_EFAMILY;
 *   - an SDXL refiner (single file or folder) is refused by name.
 * Playground v2.5 (pg25/, and the single file with edm_mean/edm_std added as Playground's
 * single files carry them): EDM DPM++ 2M, Euler and DPM++ 2M SDE runs, one decoded image.
 * Tolerance: max |mood - diffusers| <= 1e-4 * max |diffusers| for latents and images, 2e-5 for
 * conditioning and the UNet alone (measured: <= 5.7e-6 and <= 3.6e-6).
 *
 * The conditioning and the UNet are reached through engine/model_impl.h (white box).
 */
#include "harness.h"

#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "engine/model_impl.h"
#include "mood/gen.h"
#include "mood/safetensors.h"
#include "mood/sampler.h"

/* Relative to max |reference|. */
#define RUN_TOL   1e-4 /* latents and images */
#define LAYER_TOL 2e-5 /* conditioning and the UNet alone */

typedef struct fixture_set {
    cJSON *man;
    mood_st_file *ref;
} fixture_set;

static int fixtures_open(fixture_set *f)
{
    memset(f, 0, sizeof *f);
    f->man = load_json(fixture("sdxl/manifest.json"));
    if (!f->man) {
        fprintf(stderr, "cannot read %s\n", fixture("sdxl/manifest.json"));
        return -1;
    }
    return mood_st_open(&f->ref, fixture("sdxl/ref.safetensors"));
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

/* The largest error seen per kind, for the summary. */
static double worst_layer, worst_run;

static void check_close(const fixture_set *f, const char *label, const char *name, const float *got,
                        size_t n, double tol)
{
    size_t nref = 0;
    float *want = ref_tensor(f, name, &nref);
    MOOD_CHECK_MSG(want && nref == n, "%s: %s has %zu values, mood gave %zu", label, name, nref, n);
    if (want && nref == n) {
        double e = rel_err(got, want, n);
        double *worst = tol == RUN_TOL ? &worst_run : &worst_layer;
        printf("  %-30s %-28s %.2e\n", label, name, e);
        *worst = e > *worst ? e : *worst;
        MOOD_CHECK_MSG(e <= tol, "%s: %s off by %.3g (relative to max |ref|, limit %.0e)", label,
                       name, e, tol);
    }
    free(want);
}

/* ----- the models --------------------------------------------------------------------------- */

enum { FOLDER = 0, SINGLE, PG25 };

static const char *model_label(int which)
{
    return which == FOLDER ? "folder" : which == SINGLE ? "single file" : "pg25";
}

static void clip_hint(mood_clip_config *h, const cJSON *te)
{
    memset(h, 0, sizeof *h);
    h->heads = (int)num(te, "heads");
    h->act = strcmp(json_str(te, "act"), "quick_gelu") == 0 ? MOOD_CLIP_ACT_QUICK_GELU
                                                            : MOOD_CLIP_ACT_GELU;
}

/* Opens the folder, the single file (with the hints a tiny single file needs: heads,
 * activations, groups) or Playground v2.5. vae_sample_size > 0 goes into the VAE hint. A
 * non-NULL `single` opens that single file, without a VAE scaling hint. */
static int open_model_ex(mood_model **m, const fixture_set *f, int which, int vae_sample_size,
                         const char *single)
{
    const cJSON *mm = member(f->man, "model"), *un = member(mm, "unet"), *va = member(mm, "vae");
    const cJSON *heads = member(un, "heads");
    mood_model_options o;
    mood_clip_config h1, h2;
    mood_unet_config uh = {0};
    mood_vae_config vh = {0};
    char path[512];
    mood_model_options_init(&o);
    clip_hint(&h1, member(mm, "text_encoder"));
    clip_hint(&h2, member(mm, "text_encoder_2"));
    for (int i = 0; i < cJSON_GetArraySize(heads) && i < MOOD_UNET_MAX_BLOCKS; i++)
        uh.num_attention_heads[i] = cJSON_GetArrayItem(heads, i)->valueint;
    uh.norm_num_groups = (int)num(un, "norm_num_groups");
    uh.addition_time_embed_dim = (int)num(un, "addition_time_embed_dim");
    vh.norm_num_groups = (int)num(va, "norm_num_groups");
    vh.scaling_factor = single ? 0.0f : (float)num(va, "scaling_factor");
    vh.sample_size = vae_sample_size;
    if (which == SINGLE) {
        o.clip_hint = &h1;
        o.clip2_hint = &h2;
        o.unet_hint = &uh;
        o.vae_hint = &vh;
    }
    snprintf(path, sizeof path, "sdxl/%s",
             json_str(mm, which == FOLDER   ? "folder"
                          : which == SINGLE ? "single_file"
                                            : "pg25"));
    return mood_model_open(m, single ? single : fixture(path), &o);
}

static int open_model(mood_model **m, const fixture_set *f, int which)
{
    return open_model_ex(m, f, which, 64, NULL);
}

/* The model a manifest run uses (folder or single file for "tiny-sdxl", else pg25). */
static int run_model(const cJSON *run, int single)
{
    return strcmp(json_str(run, "model"), "pg25") == 0 ? PG25 : single ? SINGLE : FOLDER;
}

static int run_options(mood_gen_options *o, const cJSON *run)
{
    int err;
    mood_gen_options_init(o);
    o->prompt = json_str(run, "prompt");
    o->negative = json_str(run, "negative");
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
        if (strcmp(json_str(run, "name"), name) == 0)
            return run;
    }
    return NULL;
}

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

/* mood's images (B x 3 x H x W in [-1, 1]) as diffusers' output_type "np". */
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

/* The prompt's conditioning at clip skip `skip` against embeds_name and pooled_name. */
static void check_conditioning(mood_model *m, const fixture_set *f, const char *prompt, int skip,
                               const char *embeds_name, const char *pooled_name, const char *label)
{
    float *z = NULL, *pooled = NULL;
    int n = 0;
    MOOD_CHECK_OK(mood__encode_prompt_ex(m, prompt, skip, &z, &n, &pooled));
    MOOD_CHECK(n == 1 && pooled);
    if (z && n == 1 && pooled) {
        check_close(f, label, embeds_name, z, (size_t)MOOD_CLIP_CONTEXT * mood__context_width(m),
                    LAYER_TOL);
        check_close(f, label, pooled_name, pooled, (size_t)mood__pooled_width(m), LAYER_TOL);
    }
    mood_free(z);
    mood_free(pooled);
}

/* One encoder's hidden_states[-2] of the prompt, padded with pad_id after the end token. */
static void check_encoder(const mood_clip *clip, mood_model *m, const fixture_set *f,
                          const char *prompt, int32_t pad_id, const char *name, const char *label)
{
    mood_prompt_options po;
    mood_prompt_tokens toks = {0};
    int C = mood_clip_get_config(clip)->hidden;
    float *z = malloc((size_t)MOOD_CLIP_CONTEXT * C * sizeof *z);
    mood_prompt_options_init(&po);
    po.pad_id = pad_id;
    MOOD_CHECK_OK(mood_prompt_tokenize(&toks, m->tok, prompt, &po));
    MOOD_CHECK(toks.n_chunks == 1);
    if (z && toks.n_chunks == 1) {
        MOOD_CHECK_OK(
            mood_clip_forward(clip, toks.chunks[0].ids, 1, MOOD_CLIP_CONTEXT, 2, 0, z, NULL));
        check_close(f, label, name, z, (size_t)MOOD_CLIP_CONTEXT * C, LAYER_TOL);
    }
    mood_prompt_tokens_dispose(&toks);
    free(z);
}

static void check_unet(mood_model *m, const fixture_set *f, const char *out_name, const char *label)
{
    const cJSON *u = member(f->man, "unet");
    size_t nx = 0, nt = 0, nc = 0, ne = 0, ni = 0;
    float *x = ref_tensor(f, json_str(u, "x"), &nx), *t = ref_tensor(f, json_str(u, "t"), &nt),
          *ctx = ref_tensor(f, json_str(u, "ctx"), &nc),
          *te = ref_tensor(f, json_str(u, "text_embeds"), &ne),
          *ids = ref_tensor(f, json_str(u, "time_ids"), &ni), *out = malloc(nx * sizeof *out);
    int ok = x && t && ctx && te && ids && out && nx == 4 * 8 * 8 && nt == 1 && ni == 6 &&
             ne == (size_t)mood__pooled_width(m);
    MOOD_CHECK(ok);
    if (ok) {
        int T = (int)(nc / (size_t)mood_unet_get_config(m->unet)->cross_attention_dim);
        MOOD_CHECK_OK(mood_unet_forward(m->unet, out, x, t, ctx, 1, 8, 8, T, te, ids));
        check_close(f, label, out_name, out, nx, LAYER_TOL);
    }
    free(x), free(t), free(ctx), free(te), free(ids), free(out);
}

/* ----- tests ---------------------------------------------------------------------------------- */

static void test_open(void)
{
    fixture_set f;
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"sdxl fixtures");
        return;
    }
    for (int which = FOLDER; which <= PG25; which++) {
        mood_model *m = NULL;
        int w = 0, h = 0;
        MOOD_CHECK_OK(open_model(&m, &f, which));
        if (!m)
            continue;
        const mood_noise_schedule *s = mood_model_schedule(m);
        MOOD_CHECK(mood_model_family(m) == MOOD_FAMILY_SDXL);
        MOOD_CHECK(m->clip2 && mood__context_width(m) == 10 && mood__pooled_width(m) == 8);
        MOOD_CHECK(m->pad_id == 49407 && m->pad_id2 == 0 && m->zero_negative);
        MOOD_CHECK(s->prediction == MOOD_PRED_EPSILON);
        if (which == PG25) {
            MOOD_CHECK(s->edm && s->sigma_min == 0.002 && s->sigma_max == 80.0 &&
                       s->sigma_data == 0.5 && s->rho == 7.0 && !s->final_sigma_min);
            MOOD_CHECK(m->latents_norm && fabsf(m->latents_mean[1] - 1.886f) < 1e-6f &&
                       fabsf(m->latents_std[3] - 5.2299f) < 1e-6f);
            MOOD_CHECK(mood_vae_get_config(m->vae)->scaling_factor == 0.5f);
        } else {
            MOOD_CHECK(!s->edm && !m->latents_norm);
            MOOD_CHECK(s->beta_schedule == MOOD_BETA_SCALED_LINEAR && s->steps_offset == 1 &&
                       s->timestep_spacing == MOOD_SPACING_LEADING);
            MOOD_CHECK(mood_vae_get_config(m->vae)->scaling_factor == 0.13025f);
        }
        mood_model_default_size(m, &w, &h);
        MOOD_CHECK_MSG(w == 64 && h == 64, "%s: default size %dx%d", model_label(which), w, h);
        mood_model_free(m);
    }
    /* a single file without a VAE size hint: SDXL's 1024 */
    {
        mood_model *m = NULL;
        int w = 0, h = 0;
        MOOD_CHECK_OK(open_model_ex(&m, &f, SINGLE, 0, NULL));
        if (m) {
            mood_model_default_size(m, &w, &h);
            MOOD_CHECK_MSG(w == 1024 && h == 1024, "single file default size %dx%d", w, h);
        }
        mood_model_free(m);
    }
    fixtures_close(&f);
}

static void test_conditioning(void)
{
    fixture_set f;
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"sdxl fixtures");
        return;
    }
    for (int which = FOLDER; which <= SINGLE; which++) {
        mood_model *m = NULL;
        const cJSON *e, *cs = member(f.man, "clip_skip"), *ti = member(f.man, "time_ids");
        const char *label = model_label(which);
        float ids[6];
        MOOD_CHECK_OK(open_model(&m, &f, which));
        if (!m)
            continue;
        cJSON_ArrayForEach(e, member(f.man, "encoders"))
        {
            const char *p = json_str(e, "prompt");
            check_encoder(m->clip, m, &f, p, m->pad_id, json_str(e, "te1"), label);
            check_encoder(m->clip2, m, &f, p, m->pad_id2, json_str(e, "te2"), label);
            check_conditioning(m, &f, p, 1, json_str(e, "embeds"), json_str(e, "pooled"), label);
        }
        /* "!" stays "!</w>" for text encoder 2 (open_clip, A1111), not tokenizer_2's pad id */
        {
            const cJSON *b = member(f.man, "bang");
            check_encoder(m->clip2, m, &f, json_str(b, "prompt"), m->pad_id2, json_str(b, "te2"),
                          "\"!\" prompt");
        }
        /* clip skip 2 is the penultimate layer too; diffusers' clip_skip=1 is mood's 3 */
        e = cJSON_GetArrayItem(member(f.man, "encoders"), 0);
        check_conditioning(m, &f, json_str(e, "prompt"), 2, json_str(e, "embeds"),
                           json_str(e, "pooled"), label);
        check_conditioning(m, &f, json_str(cs, "prompt"), (int)num(cs, "mood_clip_skip"),
                           json_str(cs, "embeds"), json_str(cs, "pooled"), label);
        /* two chunks (BREAK): each as its own prompt, the pooled embedding of the first */
        {
            const cJSON *e0 = cJSON_GetArrayItem(member(f.man, "encoders"), 0),
                        *e2 = cJSON_GetArrayItem(member(f.man, "encoders"), 2);
            char prompt[512];
            float *z = NULL, *pooled = NULL;
            int n = 0;
            size_t per = (size_t)MOOD_CLIP_CONTEXT * mood__context_width(m);
            snprintf(prompt, sizeof prompt, "%s BREAK %s", json_str(e0, "prompt"),
                     json_str(e2, "prompt"));
            MOOD_CHECK_OK(mood__encode_prompt_ex(m, prompt, 1, &z, &n, &pooled));
            MOOD_CHECK(n == 2);
            if (n == 2) {
                check_close(&f, "BREAK chunk 0", json_str(e0, "embeds"), z, per, LAYER_TOL);
                check_close(&f, "BREAK chunk 1", json_str(e2, "embeds"), z + per, per, LAYER_TOL);
                check_close(&f, "BREAK pooled", json_str(e0, "pooled"), pooled,
                            (size_t)mood__pooled_width(m), LAYER_TOL);
            }
            mood_free(z);
            mood_free(pooled);
        }
        mood__sdxl_time_ids(ids, (int)num(ti, "width"), (int)num(ti, "height"));
        check_close(&f, label, json_str(ti, "ref"), ids, 6, 0);
        check_unet(m, &f, json_str(member(f.man, "unet"), "out"), label);
        mood_model_free(m);
    }
    fixtures_close(&f);
}

static void test_runs(void)
{
    fixture_set f;
    result first[2] = {{0}};
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"sdxl fixtures");
        return;
    }
    for (int single = 0; single < 2; single++) {
        mood_model *m = NULL;
        const cJSON *run;
        MOOD_CHECK_OK(open_model(&m, &f, single ? SINGLE : FOLDER));
        if (!m)
            continue;
        cJSON_ArrayForEach(run, member(f.man, "runs"))
        {
            if (member(run, "loras") || run_model(run, single) == PG25)
                continue;
            check_run(m, &f, run, model_label(single),
                      strcmp(json_str(run, "name"), "euler_a") == 0 ? &first[single] : NULL);
        }
        mood_model_free(m);
    }
    /* both files hold the same values: the same computation, bit for bit */
    MOOD_CHECK_MSG(same_result(&first[0], &first[1]),
                   "the folder and the single file give different results");
    result_free(&first[0]);
    result_free(&first[1]);
    fixtures_close(&f);
}

static void test_playground(void)
{
    fixture_set f;
    mood_model *m = NULL;
    const cJSON *run;
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"sdxl fixtures");
        return;
    }
    MOOD_CHECK_OK(open_model(&m, &f, PG25));
    if (m) {
        cJSON_ArrayForEach(run, member(f.man, "runs"))
        {
            if (run_model(run, 0) == PG25)
                check_run(m, &f, run, "pg25", NULL);
        }
        /* samplers EDM has no form of */
        {
            mood_gen_options o;
            float *img = NULL;
            mood_gen_options_init(&o);
            o.prompt = "x";
            o.width = o.height = 64;
            o.steps = 2;
            o.sampler = MOOD_SAMPLER_DDIM;
            MOOD_CHECK(mood_generate(m, &o, &img, NULL) == MOOD_EINVAL);
            MOOD_CHECK(strstr(mood_error_last(), "EDM") != NULL);
            free(img);
        }
    }
    mood_model_free(m);
    fixtures_close(&f);
}

/* Playground v2.5 as one file: the single file plus "edm_mean" / "edm_std" (what diffusers'
 * from_single_file takes for playground-v2-5: EDM scheduler, VAE scaling 0.5, latents mean/std)
 * must sample as the pg25 folder does. */
static void test_playground_single_file(void)
{
    fixture_set f;
    mood_st_file *src = NULL;
    mood_st_writer *w = NULL;
    mood_model *m = NULL;
    const cJSON *run;
    const char *out = scratch_path("pg25.safetensors");
    static const float mean[4] = {-1.6574f, 1.886f, -1.383f, 2.5155f};
    static const float stdv[4] = {8.4927f, 5.9022f, 6.5498f, 5.2299f};
    int64_t shape[4] = {1, 4, 1, 1};
    char path[512];
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"sdxl fixtures");
        return;
    }
    snprintf(path, sizeof path, "sdxl/%s", json_str(member(f.man, "model"), "single_file"));
    MOOD_CHECK_OK(mood_st_open(&src, fixture(path)));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; src && w && i < mood_st_count(src); i++) {
        const mood_st_tensor *t = mood_st_at(src, i);
        MOOD_CHECK_OK(mood_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data));
    }
    if (w) {
        MOOD_CHECK_OK(mood_st_writer_add_f32(w, "edm_mean", MOOD_DTYPE_F32, 4, shape, mean));
        MOOD_CHECK_OK(mood_st_writer_add_f32(w, "edm_std", MOOD_DTYPE_F32, 4, shape, stdv));
        MOOD_CHECK_OK(mood_st_writer_write(w, out, NULL, NULL));
    }
    mood_st_writer_free(w);
    mood_st_close(src);
    MOOD_CHECK_OK(open_model_ex(&m, &f, SINGLE, 64, out));
    if (m) {
        MOOD_CHECK(mood_model_schedule(m)->edm && m->latents_norm &&
                   mood_vae_get_config(m->vae)->scaling_factor == 0.5f);
        cJSON_ArrayForEach(run, member(f.man, "runs"))
        {
            if (run_model(run, 0) == PG25)
                check_run(m, &f, run, "pg25 single file", NULL);
        }
    }
    mood_model_free(m);
    remove(out);
    fixtures_close(&f);
}

/* What mood does not run is refused by name: an SDXL refiner single file (its one OpenCLIP
 * encoder under conditioner.embedders.0.model., no CLIP-L) and a pipeline folder with only
 * text_encoder_2. */
static void test_refusals(void)
{
    fixture_set f;
    mood_st_file *src = NULL;
    mood_st_writer *w = NULL;
    mood_model *m = NULL;
    const char *out = scratch_path("refiner.safetensors");
    static char names[2048][128];
    char path[512];
    size_t n = 0;
    int rc;
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"sdxl fixtures");
        return;
    }
    snprintf(path, sizeof path, "sdxl/%s", json_str(member(f.man, "model"), "single_file"));
    MOOD_CHECK_OK(mood_st_open(&src, fixture(path)));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; src && w && i < mood_st_count(src) && n < 2048; i++) {
        const mood_st_tensor *t = mood_st_at(src, i);
        if (strncmp(t->name, "conditioner.embedders.0.", 24) == 0)
            continue;
        snprintf(names[n], sizeof names[n], "%s", t->name);
        if (strncmp(t->name, "conditioner.embedders.1.", 24) == 0)
            names[n][22] = '0';
        MOOD_CHECK_OK(mood_st_writer_add(w, names[n], t->dtype, t->ndim, t->shape, t->data));
        n++;
    }
    if (w)
        MOOD_CHECK_OK(mood_st_writer_write(w, out, NULL, NULL));
    mood_st_writer_free(w);
    rc = open_model_ex(&m, &f, SINGLE, 64, out);
    MOOD_CHECK_MSG(rc == MOOD_EUNSUPPORTED || rc == MOOD_EFORMAT, "refiner-like file: %d (%s)", rc,
                   mood_error_last());
    MOOD_CHECK_MSG(strstr(mood_error_last(), "refiner") != NULL, "message: %s", mood_error_last());
    mood_model_free(m);
    m = NULL;
    remove(out);
    mood_st_close(src);

    /* a folder with text_encoder_2/ and no text_encoder/ */
    {
        char dir[600], sub[700];
        snprintf(dir, sizeof dir, "%s", scratch_path("refiner-folder"));
        snprintf(sub, sizeof sub, "%s/text_encoder_2", dir);
        MOOD_CHECK(mkdir(dir, 0700) == 0 && mkdir(sub, 0700) == 0);
        snprintf(sub, sizeof sub, "%s/model_index.json", dir);
        MOOD_CHECK(write_file(sub, "{}", 2) == 0);
        rc = mood_model_open(&m, dir, NULL);
        MOOD_CHECK_MSG(rc == MOOD_EUNSUPPORTED && strstr(mood_error_last(), "refiner"),
                       "refiner folder: %d (%s)", rc, mood_error_last());
        mood_model_free(m);
        remove(sub);
        snprintf(sub, sizeof sub, "%s/text_encoder_2", dir);
        rmdir(sub);
        rmdir(dir);
    }
    fixtures_close(&f);
}

/* The adapters of a manifest run ("loras": file and multipliers) in `mode`. */
static int set_run_loras(mood_model *m, const cJSON *run, mood_lora_mode mode, size_t *unmatched)
{
    mood_weighted_adapter a[4];
    char path[4][512];
    memset(a, 0, sizeof a);
    size_t n = 0;
    const cJSON *l;
    cJSON_ArrayForEach(l, member(run, "loras"))
    {
        if (n == 4)
            break;
        snprintf(path[n], sizeof path[n], "sdxl/%s", json_str(l, "file"));
        snprintf(path[n], sizeof path[n], "%s", fixture(path[n]));
        a[n].path = path[n];
        a[n].unet = num(l, "unet");
        a[n].te = num(l, "te");
        n++;
    }
    return mood_model_set_adapters(m, a, n, mode, unmatched);
}

static int set_lora(mood_model *m, const fixture_set *f, mood_lora_mode mode, double mult,
                    size_t *unmatched)
{
    char path[512];
    mood_weighted_adapter a = {0};
    snprintf(path, sizeof path, "sdxl/%s", json_str(member(f->man, "lora"), "file"));
    a.path = fixture(path);
    a.unet = mult;
    a.te = mult;
    return mood_model_set_adapters(m, &a, 1, mode, unmatched);
}

/* The LoRA references in one mode: conditioning and pooled, the UNet alone, the LoRA runs.
 * *keep receives the first LoRA run's result. */
static void check_lora(mood_model *m, const fixture_set *f, mood_lora_mode mode, const char *label,
                       result *keep)
{
    const cJSON *lo = member(f->man, "lora"), *run;
    size_t unmatched = 99;
    int kept = 0;
    MOOD_CHECK_OK(set_lora(m, f, mode, num(lo, "scale"), &unmatched));
    MOOD_CHECK_MSG(unmatched == 0, "%s: %zu LoRA keys matched nothing", label, unmatched);
    check_conditioning(m, f, json_str(lo, "prompt"), 1, json_str(lo, "embeds"),
                       json_str(lo, "pooled"), label);
    check_unet(m, f, json_str(member(f->man, "unet"), "out_lora"), label);
    cJSON_ArrayForEach(run, member(f->man, "runs"))
    {
        if (cJSON_GetArraySize(member(run, "loras")) != 1)
            continue;
        check_run(m, f, run, label, kept ? NULL : keep);
        kept = 1;
    }
    cJSON_ArrayForEach(run, member(f->man, "runs"))
    {
        if (cJSON_GetArraySize(member(run, "loras")) < 2)
            continue;
        unmatched = 99;
        MOOD_CHECK_OK(set_run_loras(m, run, mode, &unmatched));
        MOOD_CHECK_MSG(unmatched == 0, "%s: %zu stacked LoRA keys matched nothing", label,
                       unmatched);
        check_run(m, f, run, label, NULL);
    }
}

static void lora_model(int single)
{
    fixture_set f;
    mood_model *m = NULL;
    result plain = {0}, merged = {0}, runtime = {0}, again = {0};
    const cJSON *euler_a, *lora_run = NULL, *run;
    char label[64];
    if (fixtures_open(&f) != 0) {
        MOOD_CHECK(!"sdxl fixtures");
        return;
    }
    euler_a = find_run(&f, "euler_a");
    cJSON_ArrayForEach(run, member(f.man, "runs"))
    {
        if (!lora_run && cJSON_GetArraySize(member(run, "loras")) == 1)
            lora_run = run;
    }
    MOOD_CHECK_OK(open_model(&m, &f, single ? SINGLE : FOLDER));
    if (!m || !euler_a || !lora_run)
        goto done;
    MOOD_CHECK_OK(generate(m, euler_a, &plain));

    snprintf(label, sizeof label, "%s merge", model_label(single));
    check_lora(m, &f, MOOD_LORA_MERGE, label, &merged);
    snprintf(label, sizeof label, "%s runtime", model_label(single));
    check_lora(m, &f, MOOD_LORA_RUNTIME, label, &runtime);

    /* merged at 0.7 again after other sets: exactly the first merge (pristine weights) */
    MOOD_CHECK_OK(set_lora(m, &f, MOOD_LORA_MERGE, num(member(f.man, "lora"), "scale"), NULL));
    MOOD_CHECK_OK(generate(m, lora_run, &again));
    MOOD_CHECK_MSG(same_result(&merged, &again), "%s: merging again differs from the first merge",
                   model_label(single));
    result_free(&again);

    /* an SD1 LoRA: MOOD_EFAMILY, and the merged set stays */
    {
        char path[512];
        mood_weighted_adapter x = {.path = NULL, .unet = 1.0, .te = 1.0};
        int rc;
        snprintf(path, sizeof path, "sdxl/%s", json_str(member(f.man, "lora"), "other_family"));
        x.path = fixture(path);
        rc = mood_model_set_adapters(m, &x, 1, MOOD_LORA_MERGE, NULL);
        MOOD_CHECK_MSG(rc == MOOD_EFAMILY, "%s: SD1 LoRA gave %d (%s)", model_label(single), rc,
                       mood_error_last());
        MOOD_CHECK_OK(generate(m, lora_run, &again));
        MOOD_CHECK_MSG(same_result(&merged, &again), "%s: a refused LoRA changed the model",
                       model_label(single));
        result_free(&again);
    }

    /* merged -> none: the plain run bit for bit */
    MOOD_CHECK_OK(mood_model_set_adapters(m, NULL, 0, MOOD_LORA_RUNTIME, NULL));
    MOOD_CHECK_OK(generate(m, euler_a, &again));
    MOOD_CHECK_MSG(same_result(&plain, &again), "%s: no adapters after LoRAs differs",
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

static void test_summary(void)
{
    printf("  worst: conditioning/UNet %.2e, runs %.2e\n", worst_layer, worst_run);
}

MOOD_TEST_MAIN(MOOD_T(test_open), MOOD_T(test_conditioning), MOOD_T(test_runs),
               MOOD_T(test_playground), MOOD_T(test_playground_single_file), MOOD_T(test_refusals),
               MOOD_T(test_lora_folder), MOOD_T(test_lora_single_file), MOOD_T(test_summary))
