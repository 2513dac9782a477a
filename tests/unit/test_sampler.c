/*
 * test_sampler.c: the samplers (mood/sampler.h) against diffusers' schedulers.
 *
 * Fixtures (tests/fixtures/sampler/, tools/make_fixtures_sampler.py): for each case in
 * cases.json, diffusers' pipeline loop (set_timesteps, init_noise_sigma, scale_model_input,
 * step with the pipeline's generator) run with an analytic stand-in model that this test computes
 * the same way, on 1 or 2 latents of 4x5x7. The case's scheduler_config.json is read with
 * mood_noise_schedule_from_json, its A1111 sampler name with mood_sampler_parse, and the noise
 * (initial and per step) comes from mood_rng_torch_cpu, bit-identical to torch's generator.
 * Checked: timesteps and sigmas, the x0 estimate of every step (through the preview callback)
 * and the final latents, within 1e-5 of the largest magnitude (measured: ~1e-7); also
 * alphas_cumprod bit for bit, the parsers, scheduler_config.json errors, option errors,
 * cancellation and allocation failures.
 */
#include "harness.h"

#include "common/common.h"

#include "engine/sampler_internal.h"
#include "mood/rng.h"
#include "mood/safetensors.h"
#include "mood/sampler.h"

enum { N_IMG = 4 * 5 * 7 };

/* Max |a - b| over n, divided by max(1e-3, max |b|). */
static double rel_diff(const float *a, const float *b, size_t n)
{
    return harness_rel_diff(a, b, n, 1e-3);
}

/* Reads tensor `name` of ref into a fresh float buffer (F64 through double). NULL if absent. */
static float *ref_tensor(mood_st_file *ref, const char *name, size_t *n)
{
    const mood_st_tensor *t = mood_st_find(ref, name);
    float *out = NULL;
    *n = 0;
    if (!t)
        return NULL;
    *n = (size_t)mood_st_numel(t);
    out = malloc(*n * sizeof *out + 1);
    if (t->dtype == MOOD_DTYPE_F64) {
        for (size_t i = 0; i < *n; i++) {
            double v;
            memcpy(&v, (const char *)t->data + i * 8, 8);
            out[i] = (float)v;
        }
    } else if (mood_st_to_f32(out, t) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* The stand-in model: float32(0.6 tanh(x) + 0.1 sin(0.003 t)), evaluated in double. */
typedef struct model_ctx {
    size_t N;
    int calls;
    int fail_at; /* return -77 at this call (1-based), 0 never */
} model_ctx;

static int stand_in(float *out, const float *x, double t, int step, void *user)
{
    model_ctx *m = user;
    double c = 0.1 * sin(0.003 * t);
    (void)step;
    if (++m->calls == m->fail_at)
        return -77;
    for (size_t j = 0; j < m->N; j++)
        out[j] = (float)(0.6 * tanh((double)x[j]) + c);
    return 0;
}

static int torch_noise(float *out, int B, size_t n, void *user)
{
    return mood_rng_torch_cpu_randn(user, out, (size_t)B * n);
}

/* Collects each step's x0 estimate into x0s (steps x N). */
typedef struct preview_ctx {
    float *x0s;
    size_t N;
    int seen;
    int bad; /* a field that does not match the run */
} preview_ctx;

static int collect(const mood_sample_state *s, void *user)
{
    preview_ctx *c = user;
    if (s->step != c->seen || (size_t)s->B * s->n_per_image != c->N || !s->x || !s->x0)
        c->bad = 1;
    memcpy(c->x0s + (size_t)s->step * c->N, s->x0, c->N * sizeof *s->x0);
    c->seen++;
    return 0;
}

static int count_progress(const mood_progress *p, void *user)
{
    int *n = user;
    (*n)++;
    if (p->done != (uint64_t)*n || strcmp(p->phase, "sample") != 0)
        *n = -1000; /* makes the count check fail */
    return 0;
}

typedef struct case_ref {
    float *t, *sig, *init, *x0, *lat;
    size_t nt, nsig, ninit, nx0, nlat;
} case_ref;

static int load_ref(case_ref *r, mood_st_file *ref, const char *name)
{
    char key[96];
#define LOAD(field, suffix)                                                                        \
    snprintf(key, sizeof key, "%s/" suffix, name);                                                 \
    r->field = ref_tensor(ref, key, &r->n##field)
    LOAD(t, "timesteps");
    LOAD(sig, "sigmas");
    LOAD(init, "init");
    LOAD(x0, "x0");
    LOAD(lat, "latents");
#undef LOAD
    return r->t && r->sig && r->init && r->x0 && r->lat ? 0 : -1;
}

static void free_ref(case_ref *r)
{
    free(r->t), free(r->sig), free(r->init), free(r->x0), free(r->lat);
}

/* Timesteps and sigmas of the plan against the reference; returns the largest relative error. */
static double check_schedule(const mood_noise_schedule *ns, const mood_sample_opts *o,
                             const case_ref *r)
{
    int n = o->steps;
    double *t = calloc((size_t)n + 1, sizeof *t), *sig = calloc((size_t)n + 1, sizeof *sig);
    double worst = 0, init = 0;
    MOOD_CHECK_OK(mood_sampler_timesteps(ns, o, t, sig, &init));
    MOOD_CHECK(r->nt == (size_t)n && r->nsig == (size_t)n + 1);
    for (int i = 0; i <= n && r->nt == (size_t)n; i++) {
        double e = 0;
        if (i < n)
            e = fabs(t[i] - r->t[i]) / (fabs(r->t[i]) > 1 ? fabs(r->t[i]) : 1);
        double es = fabs(sig[i] - r->sig[i]) / (fabs(r->sig[i]) > 1e-3 ? fabs(r->sig[i]) : 1e-3);
        if (isinf(r->sig[i]) && isinf(sig[i]))
            es = 0;
        worst = e > worst ? e : worst;
        worst = es > worst ? es : worst;
    }
    MOOD_CHECK(init >= 1.0);
    free(t), free(sig);
    return worst;
}

/* One fixture case: schedule, x0 per step and final latents. */
static void run_case(const cJSON *c, mood_st_file *ref)
{
    const char *name = json_str(c, "name"), *sampler = json_str(c, "sampler");
    const char *cfg = json_str(c, "config");
    int steps = cJSON_GetObjectItem(c, "steps")->valueint;
    int B = cJSON_GetObjectItem(c, "batch")->valueint;
    uint64_t seed = (uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble;
    char path[256];
    mood_noise_schedule ns;
    mood_sample_opts o;
    mood_rng_torch_cpu *g = NULL;
    case_ref r = {0};
    size_t N = (size_t)B * N_IMG;
    model_ctx m = {N, 0, 0};
    preview_ctx pv = {NULL, N, 0, 0};
    int progress = 0;
    float *x = malloc(N * sizeof *x);

    snprintf(path, sizeof path, "sampler/configs/%s", cfg);
    mood_sample_opts_init(&o);
    MOOD_CHECK_OK(mood_noise_schedule_from_json(&ns, fixture(path)));
    MOOD_CHECK_OK(mood_sampler_parse(&o.kind, &o.schedule, sampler));
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&g, seed));
    MOOD_CHECK_MSG(load_ref(&r, ref, name) == 0, "reference tensors of %s", name);
    if (!g || !r.lat || r.nlat != N || r.nx0 != (size_t)steps * N)
        goto done;
    o.steps = steps;
    o.eta = cJSON_GetObjectItem(c, "eta")->valuedouble;
    o.noise = torch_noise, o.noise_user = g;
    o.preview = collect, o.preview_user = &pv;
    o.progress = count_progress, o.progress_user = &progress;
    pv.x0s = calloc((size_t)steps * N, sizeof *pv.x0s);

    double e_sched = check_schedule(&ns, &o, &r);
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(g, x, N));
    double e_init = rel_diff(x, r.init, N);
    MOOD_CHECK_OK(mood_sample(&ns, &o, x, B, N_IMG, stand_in, &m));
    double e_x0 = rel_diff(pv.x0s, r.x0, (size_t)steps * N), e_lat = rel_diff(x, r.lat, N);
    printf("  %-20s %-20s t/sigma %.2g  x0 %.2g  latents %.2g\n", name, sampler, e_sched, e_x0,
           e_lat);
    MOOD_CHECK_MSG(e_init == 0, "%s: initial noise differs from torch's (%g)", name, e_init);
    MOOD_CHECK_MSG(e_sched <= 1e-6, "%s: timesteps/sigmas off by %g", name, e_sched);
    MOOD_CHECK_MSG(e_x0 <= 1e-5 && e_lat <= 1e-5, "%s: x0 %g latents %g", name, e_x0, e_lat);
    MOOD_CHECK(m.calls == steps && pv.seen == steps && !pv.bad && progress == steps);
done:
    free(pv.x0s);
    free(x);
    free_ref(&r);
    mood_rng_torch_cpu_free(g);
}

static void test_fixture_cases(void)
{
    cJSON *cases = load_json(fixture("sampler/cases.json"));
    mood_st_file *ref = NULL;
    MOOD_CHECK(cJSON_IsArray(cases) && cJSON_GetArraySize(cases) >= 20);
    MOOD_CHECK_OK(mood_st_open(&ref, fixture("sampler/ref.safetensors")));
    if (cases && ref) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cases) run_case(c, ref);
    }
    mood_st_close(ref);
    cJSON_Delete(cases);
}

/* alphas_cumprod against torch (DDIMScheduler's: no 2^-24 at zero SNR): bit for bit, except
 * after rescale_betas_zero_snr, whose torch.sqrt of 1000 values is not correctly rounded in
 * torch's x86 build (5 of them are 1 ulp off), which the cumulative product spreads. */
static void test_alphas_cumprod(void)
{
    static const struct {
        const char *tag, *config;
    } cfgs[] = {{"sd", "ddim.json"}, {"zsnr", "ddim_v_zsnr.json"}, {"linear", "euler_linear.json"}};
    mood_st_file *ref = NULL;
    MOOD_CHECK_OK(mood_st_open(&ref, fixture("sampler/ref.safetensors")));
    for (size_t k = 0; ref && k < sizeof cfgs / sizeof cfgs[0]; k++) {
        char key[64], path[128];
        size_t n = 0;
        mood_noise_schedule ns;
        snprintf(key, sizeof key, "alphas_cumprod/%s", cfgs[k].tag);
        snprintf(path, sizeof path, "sampler/configs/%s", cfgs[k].config);
        float *want = ref_tensor(ref, key, &n), *got = malloc(1000 * sizeof *got);
        int bad = 0;
        double worst = 0;
        MOOD_CHECK_OK(mood_noise_schedule_from_json(&ns, fixture(path)));
        MOOD_CHECK_OK(mood__sampler_alphas_cumprod(got, &ns, MOOD_SAMPLER_DDIM));
        MOOD_CHECK(want && n == 1000);
        for (size_t i = 0; want && i < n; i++) {
            double e = fabs((double)got[i] - want[i]) / (want[i] > 0 ? want[i] : 1);
            bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
            worst = e > worst ? e : worst;
        }
        printf("  alphas_cumprod %s: %d of 1000 differ, by %.2g at most\n", cfgs[k].tag, bad,
               worst);
        MOOD_CHECK(k == 1 ? worst <= 1e-6 : bad == 0);
        if (k == 1) { /* Euler and DPM-Solver keep the last one finite */
            MOOD_CHECK(got[999] == 0.0f);
            MOOD_CHECK_OK(mood__sampler_alphas_cumprod(got, &ns, MOOD_SAMPLER_EULER));
            MOOD_CHECK(got[999] == 0x1p-24f);
        }
        free(want), free(got);
    }
    mood_st_close(ref);
}

static void expect_parse(const char *name, mood_sampler_kind kind, mood_sigma_schedule sched)
{
    mood_sampler_kind k = (mood_sampler_kind)-1;
    mood_sigma_schedule s = (mood_sigma_schedule)-1;
    MOOD_CHECK_OK(mood_sampler_parse(&k, &s, name));
    MOOD_CHECK_MSG(k == kind && s == sched, "'%s' parsed as %d/%d", name, (int)k, (int)s);
}

static void test_parse(void)
{
    mood_sampler_kind k;
    mood_sigma_schedule s;
    expect_parse("Euler", MOOD_SAMPLER_EULER, MOOD_SCHEDULE_DEFAULT);
    expect_parse("Euler a", MOOD_SAMPLER_EULER_A, MOOD_SCHEDULE_DEFAULT);
    expect_parse("  euler A ", MOOD_SAMPLER_EULER_A, MOOD_SCHEDULE_DEFAULT);
    expect_parse("DPM++ 2M", MOOD_SAMPLER_DPMPP_2M, MOOD_SCHEDULE_DEFAULT);
    expect_parse("DPM++ 2M Karras", MOOD_SAMPLER_DPMPP_2M, MOOD_SCHEDULE_KARRAS);
    expect_parse("dpm++ 2m karras", MOOD_SAMPLER_DPMPP_2M, MOOD_SCHEDULE_KARRAS);
    expect_parse("DPM++ 2M SDE", MOOD_SAMPLER_DPMPP_2M_SDE, MOOD_SCHEDULE_DEFAULT);
    expect_parse("DPM++ 2M SDE Karras", MOOD_SAMPLER_DPMPP_2M_SDE, MOOD_SCHEDULE_KARRAS);
    expect_parse("DDIM", MOOD_SAMPLER_DDIM, MOOD_SCHEDULE_DEFAULT);
    expect_parse("LCM", MOOD_SAMPLER_LCM, MOOD_SCHEDULE_DEFAULT);
    expect_parse("euler_a", MOOD_SAMPLER_EULER_A, MOOD_SCHEDULE_DEFAULT);
    expect_parse("euler_ancestral", MOOD_SAMPLER_EULER_A, MOOD_SCHEDULE_DEFAULT);
    expect_parse("dpmpp_2m_karras", MOOD_SAMPLER_DPMPP_2M, MOOD_SCHEDULE_KARRAS);
    expect_parse("dpmpp_2m_sde", MOOD_SAMPLER_DPMPP_2M_SDE, MOOD_SCHEDULE_DEFAULT);
    expect_parse("Euler a Karras", MOOD_SAMPLER_EULER_A, MOOD_SCHEDULE_KARRAS);
    MOOD_CHECK(mood_sampler_parse(&k, &s, "Heun") == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "'Heun'") && strstr(mood_error_last(), "DPM++ 2M SDE"));
    MOOD_CHECK(mood_sampler_parse(&k, &s, "DDIM Karras") == MOOD_EINVAL);
    MOOD_CHECK(mood_sampler_parse(&k, &s, "Karras") == MOOD_EINVAL);
    MOOD_CHECK(mood_sampler_parse(&k, &s, "") == MOOD_EINVAL);
    MOOD_CHECK(mood_sampler_parse(&k, &s, "DPM++ 2M Karras Karras") == MOOD_EINVAL);
    for (int i = MOOD_SAMPLER_EULER; i <= MOOD_SAMPLER_LCM; i++) {
        MOOD_CHECK_OK(mood_sampler_parse(&k, &s, mood_sampler_a1111_name((mood_sampler_kind)i)));
        MOOD_CHECK(k == (mood_sampler_kind)i && s == MOOD_SCHEDULE_DEFAULT);
        MOOD_CHECK_OK(mood_sampler_parse(&k, &s, mood_sampler_short_name((mood_sampler_kind)i)));
        MOOD_CHECK(k == (mood_sampler_kind)i);
    }
    MOOD_CHECK(!strcmp(mood_sampler_a1111_name(MOOD_SAMPLER_DPMPP_2M_SDE), "DPM++ 2M SDE"));
    MOOD_CHECK(mood_sampler_a1111_name((mood_sampler_kind)6) == NULL);
    MOOD_CHECK_OK(mood_sigma_schedule_parse(&s, "Karras"));
    MOOD_CHECK(s == MOOD_SCHEDULE_KARRAS);
    MOOD_CHECK_OK(mood_sigma_schedule_parse(&s, "Automatic"));
    MOOD_CHECK(s == MOOD_SCHEDULE_DEFAULT);
    MOOD_CHECK(mood_sigma_schedule_parse(&s, "Exponential") == MOOD_EINVAL);
}

/* Writes text to a scratch file and reads it as a scheduler config. */
static int json_text(mood_noise_schedule *ns, const char *text)
{
    const char *p = scratch_path("scheduler_config.json");
    if (write_file(p, text, strlen(text)) != 0)
        return -1000;
    return mood_noise_schedule_from_json(ns, p);
}

static void test_json(void)
{
    mood_noise_schedule ns, sd;
    MOOD_CHECK_OK(mood_noise_schedule_from_json(&ns, fixture("sampler/configs/sd15_hub.json")));
    MOOD_CHECK(ns.train_timesteps == 1000 && ns.beta_start == 0.00085 && ns.beta_end == 0.012 &&
               ns.beta_schedule == MOOD_BETA_SCALED_LINEAR && ns.steps_offset == 1 &&
               ns.timestep_spacing == MOOD_SPACING_CLASS_DEFAULT && ns.clip_sample == 0 &&
               ns.set_alpha_to_one == 0 && ns.prediction == MOOD_PRED_EPSILON);
    /* mood's SD default = the hub config with SDXL's explicit "leading" */
    mood_noise_schedule_sd(&sd);
    ns.timestep_spacing = MOOD_SPACING_LEADING;
    MOOD_CHECK(memcmp(&ns, &sd, sizeof ns) == 0);
    MOOD_CHECK_OK(mood_noise_schedule_from_json(&ns, fixture("sampler/configs/dpmpp_2m.json")));
    MOOD_CHECK(ns.lambda_min_clipped == -INFINITY && ns.lower_order_final == 1);
    MOOD_CHECK_OK(json_text(&ns, "{\"prediction_type\": \"v_prediction\", \"timestep_spacing\": "
                                 "\"trailing\", \"rescale_betas_zero_snr\": true, \"x\": NaN, "
                                 "\"s\": \"-Infinity NaN\", \"lambda_min_clipped\": -5.1}"));
    MOOD_CHECK(ns.prediction == MOOD_PRED_V && ns.timestep_spacing == MOOD_SPACING_TRAILING &&
               ns.rescale_betas_zero_snr == 1 && ns.lambda_min_clipped == -5.1 &&
               ns.beta_schedule == MOOD_BETA_LINEAR && ns.beta_start == 0.0001);
    MOOD_CHECK(json_text(&ns, "{\"beta_schedule\": \"cubic\"}") == MOOD_EFORMAT);
    MOOD_CHECK(strstr(mood_error_last(), "beta_schedule") && strstr(mood_error_last(), "cubic"));
    MOOD_CHECK(json_text(&ns, "{\"steps_offset\": \"1\"}") == MOOD_EFORMAT);
    MOOD_CHECK(strstr(mood_error_last(), "steps_offset") != NULL);
    MOOD_CHECK(json_text(&ns, "{\"steps_offset\": 1.5}") == MOOD_EFORMAT);
    MOOD_CHECK(json_text(&ns, "{\"num_train_timesteps\": 0}") == MOOD_EFORMAT);
    MOOD_CHECK(json_text(&ns, "{\"clip_sample\": 1}") == MOOD_EFORMAT);
    MOOD_CHECK(json_text(&ns, "{\"timestep_spacing\": \"middle\"}") == MOOD_EFORMAT);
    MOOD_CHECK(json_text(&ns, "{\"prediction_type\": \"sample\"}") == 0 &&
               ns.prediction == MOOD_PRED_SAMPLE);
    MOOD_CHECK(json_text(&ns, "{\"prediction_type\": \"flow_prediction\"}") == MOOD_EUNSUPPORTED);
    MOOD_CHECK(json_text(&ns, "{\"_class_name\": \"EDMEulerScheduler\", \"prediction_type\": "
                              "\"sample\"}") == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "EDM") != NULL);
    MOOD_CHECK(json_text(&ns, "{\"trained_betas\": [0.1, 0.2]}") == MOOD_EUNSUPPORTED);
    MOOD_CHECK(json_text(&ns, "{\"timestep_type\": \"continuous\"}") == MOOD_EUNSUPPORTED);
    MOOD_CHECK(json_text(&ns, "[1, 2]") == MOOD_EFORMAT);
    MOOD_CHECK(json_text(&ns, "{\"beta_end\": ") == MOOD_EFORMAT);
    MOOD_CHECK(json_text(&ns, "") == MOOD_EFORMAT);
    MOOD_CHECK(mood_noise_schedule_from_json(&ns, scratch_path("absent.json")) == MOOD_ENOTFOUND);
}

/* Spot values: SD's Karras sigmas at 10 steps (engine-anchors.md 5.2) and diffusers' leading
 * timesteps. */
static void test_schedule_values(void)
{
    static const double karras[] = {14.615, 9.103, 5.478, 3.169, 1.749, 0.914,
                                    0.447,  0.201, 0.082, 0.029, 0};
    mood_noise_schedule ns;
    mood_sample_opts o;
    double t[11], sig[11], init;
    mood_noise_schedule_sd(&ns);
    mood_sample_opts_init(&o);
    o.kind = MOOD_SAMPLER_DPMPP_2M, o.schedule = MOOD_SCHEDULE_KARRAS, o.steps = 10;
    MOOD_CHECK_OK(mood_sampler_timesteps(&ns, &o, t, sig, &init));
    for (int i = 0; i <= 10; i++)
        MOOD_CHECK_MSG(fabs(sig[i] - karras[i]) < 6e-4, "sigma %d = %g", i, sig[i]);
    MOOD_CHECK(t[0] == 999 && init == 1);
    o.kind = MOOD_SAMPLER_EULER, o.schedule = MOOD_SCHEDULE_DEFAULT, o.steps = 4;
    MOOD_CHECK_OK(mood_sampler_timesteps(&ns, &o, t, sig, &init));
    MOOD_CHECK(t[0] == 751 && t[1] == 501 && t[2] == 251 && t[3] == 1);
    MOOD_CHECK(init == (float)sqrt(sig[0] * sig[0] + 1)); /* "leading": sqrt(sigma_max^2 + 1) */
    ns.timestep_spacing = MOOD_SPACING_LINSPACE;
    MOOD_CHECK_OK(mood_sampler_timesteps(&ns, &o, t, sig, &init));
    MOOD_CHECK(t[0] == 999 && t[1] == 666 && t[3] == 0 && init == sig[0] && sig[4] == 0);
    ns.timestep_spacing = MOOD_SPACING_LEADING;
    o.kind = MOOD_SAMPLER_LCM;
    MOOD_CHECK_OK(mood_sampler_timesteps(&ns, &o, t, sig, NULL));
    MOOD_CHECK(t[0] == 999 && t[1] == 759 && t[2] == 499 && t[3] == 259 && sig[4] == 0);
    /* numpy's arange makes 62 trailing timesteps for 61 steps; mood keeps 61 */
    ns.timestep_spacing = MOOD_SPACING_TRAILING;
    o.kind = MOOD_SAMPLER_DDIM, o.steps = 61;
    double t61[61];
    MOOD_CHECK_OK(mood_sampler_timesteps(&ns, &o, t61, NULL, NULL));
    MOOD_CHECK(t61[0] == 999 && t61[60] == 15);
}

static void test_errors(void)
{
    mood_noise_schedule ns;
    mood_sample_opts o;
    model_ctx m = {N_IMG, 0, 0};
    float x[N_IMG];
    int progress = 0;
    mood_noise_schedule_sd(&ns);
    mood_sample_opts_init(&o);
    memset(x, 0, sizeof x);
    o.steps = 0;
    MOOD_CHECK(mood_sample(&ns, &o, x, 1, N_IMG, stand_in, &m) == MOOD_EINVAL);
    o.steps = 10; /* Euler a without noise */
    MOOD_CHECK(mood_sample(&ns, &o, x, 1, N_IMG, stand_in, &m) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "noise") != NULL);
    MOOD_CHECK(mood_sample(&ns, &o, x, 0, N_IMG, stand_in, &m) == MOOD_EINVAL);
    o.kind = MOOD_SAMPLER_DDIM, o.schedule = MOOD_SCHEDULE_KARRAS;
    MOOD_CHECK(mood_sample(&ns, &o, x, 1, N_IMG, stand_in, &m) == MOOD_EINVAL);
    o.kind = MOOD_SAMPLER_LCM, o.schedule = MOOD_SCHEDULE_DEFAULT, o.steps = 51;
    MOOD_CHECK(mood_sampler_timesteps(&ns, &o, NULL, NULL, NULL) == MOOD_EINVAL);
    o.kind = MOOD_SAMPLER_DPMPP_2M, o.steps = 1001;
    MOOD_CHECK(mood_sampler_timesteps(&ns, &o, NULL, NULL, NULL) == MOOD_EINVAL);
    /* a model error comes back as is; a progress callback can cancel */
    o.steps = 5, m.fail_at = 3;
    MOOD_CHECK(mood_sample(&ns, &o, x, 1, N_IMG, stand_in, &m) == -77 && m.calls == 3);
    m.fail_at = 0, m.calls = 0;
    o.progress = count_progress, o.progress_user = &progress;
    MOOD_CHECK_OK(mood_sample(&ns, &o, x, 1, N_IMG, stand_in, &m));
    MOOD_CHECK(progress == 5 && m.calls == 5);
}

static int cancel_at_2(const mood_sample_state *s, void *user)
{
    (void)user;
    return s->step == 1;
}

static void test_cancel_and_alloc(void)
{
    mood_noise_schedule ns;
    mood_sample_opts o;
    mood_rng_torch_cpu *g = NULL;
    model_ctx m = {2 * N_IMG, 0, 0};
    float x[2 * N_IMG];
    mood_noise_schedule_sd(&ns);
    mood_sample_opts_init(&o);
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&g, 3));
    o.kind = MOOD_SAMPLER_DPMPP_2M_SDE, o.steps = 6, o.noise = torch_noise, o.noise_user = g;
    o.preview = cancel_at_2;
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(g, x, 2 * N_IMG));
    MOOD_CHECK(mood_sample(&ns, &o, x, 2, N_IMG, stand_in, &m) == MOOD_ECANCELLED);
    MOOD_CHECK(m.calls == 2);
    o.preview = NULL;
    int ok = 0;
    for (long n = 1; n < 20 && !ok; n++) {
        m.calls = 0;
        mood__alloc_fail_at(n);
        int rc = mood_sample(&ns, &o, x, 2, N_IMG, stand_in, &m);
        mood__alloc_fail_at(0);
        MOOD_CHECK(rc == 0 || rc == MOOD_ENOMEM);
        ok = rc == 0;
    }
    MOOD_CHECK(ok);
    mood_rng_torch_cpu_free(g);
}

MOOD_TEST_MAIN(MOOD_T(test_fixture_cases), MOOD_T(test_alphas_cumprod), MOOD_T(test_parse),
               MOOD_T(test_json), MOOD_T(test_schedule_values), MOOD_T(test_errors),
               MOOD_T(test_cancel_and_alloc))
