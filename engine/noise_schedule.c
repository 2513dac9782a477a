/*
 * noise_schedule.c: the noise schedules of mood/sampler.h: the SD defaults, diffusers'
 * scheduler_config.json, and the betas / alphas_cumprod tables computed in torch float32 exactly
 * as diffusers computes them (see sampler.c's top comment for why the dtypes matter; this file is
 * built with -ffp-contract=off too).
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/common.h"
#include "engine/sampler_internal.h"
#include "mood/sampler.h"

/* ----- schedule defaults and scheduler_config.json ------------------------------------------ */

void mood_noise_schedule_init(mood_noise_schedule *s)
{
    memset(s, 0, sizeof *s);
    s->train_timesteps = 1000;
    s->beta_start = 0.0001;
    s->beta_end = 0.02;
    s->beta_schedule = MOOD_BETA_LINEAR;
    s->prediction = MOOD_PRED_EPSILON;
    s->timestep_spacing = MOOD_SPACING_CLASS_DEFAULT;
    s->clip_sample = -1;
    s->clip_sample_range = 1.0;
    s->set_alpha_to_one = -1;
    s->original_inference_steps = 50;
    s->timestep_scaling = 10.0;
    s->lower_order_final = 1;
    s->lambda_min_clipped = -INFINITY;
    s->sigma_min = 0.002;
    s->sigma_max = 80.0;
    s->sigma_data = 0.5;
    s->rho = 7.0;
}

void mood_noise_schedule_sd(mood_noise_schedule *s)
{
    mood_noise_schedule_init(s);
    s->beta_start = 0.00085;
    s->beta_end = 0.012;
    s->beta_schedule = MOOD_BETA_SCALED_LINEAR;
    s->timestep_spacing = MOOD_SPACING_LEADING;
    s->steps_offset = 1;
    s->clip_sample = 0;
    s->set_alpha_to_one = 0;
}

/* A copy of JSON text with Python's bare -Infinity / Infinity / NaN (json.dump writes them, e.g.
 * DPM-Solver's "lambda_min_clipped": -Infinity) turned into numbers cJSON reads (1e999 = inf) or
 * null. Caller frees. */
static char *json_sanitize(const char *text, size_t len)
{
    mood_buf b;
    int in_str = 0;
    mood_buf_init(&b);
    for (size_t i = 0; i < len; i++) {
        const char *p = text + i;
        const char *rep = NULL;
        size_t skip = 0;
        if (in_str) {
            if (*p == '\\' && i + 1 < len) {
                if (mood_buf_append(&b, p, 2) != 0)
                    goto fail;
                i++;
                continue;
            }
            in_str = *p != '"';
        } else if (*p == '"') {
            in_str = 1;
        } else if (len - i >= 9 && !memcmp(p, "-Infinity", 9)) {
            rep = "-1e999", skip = 9;
        } else if (len - i >= 8 && !memcmp(p, "Infinity", 8)) {
            rep = "1e999", skip = 8;
        } else if (len - i >= 3 && !memcmp(p, "NaN", 3)) {
            rep = "null", skip = 3;
        }
        if (rep) {
            if (mood_buf_puts(&b, rep) != 0)
                goto fail;
            i += skip - 1;
        } else if (mood_buf_append(&b, p, 1) != 0) {
            goto fail;
        }
    }
    if (mood_buf_append(&b, "", 0) != 0) /* allocated and terminated even when empty */
        goto fail;
    return mood_buf_detach(&b);
fail:
    mood_buf_dispose(&b);
    return NULL;
}

typedef struct json_ctx {
    const cJSON *root;
    const char *path;
} json_ctx;

/* The member `key`, or NULL when absent or null (both mean "use the default"). */
static const cJSON *jget(const json_ctx *c, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int jbool(const json_ctx *c, const char *key, int *out)
{
    const cJSON *v = jget(c, key);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" must be true or false", c->path, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

static int jnum(const json_ctx *c, const char *key, double *out, double lo, double hi)
{
    const cJSON *v = jget(c, key);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" must be a number in [%g, %g]", c->path, key,
                              lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int jint(const json_ctx *c, const char *key, int *out, int lo, int hi)
{
    const cJSON *v = jget(c, key);
    double d;
    if (!v)
        return 0;
    d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d == floor(d) && d >= lo && d <= hi))
        return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" must be an integer in [%d, %d]", c->path,
                              key, lo, hi);
    *out = (int)d;
    return 0;
}

/* String member `key` matched against names[0..n); *out = its index. */
static int jenum(const json_ctx *c, const char *key, const char *const *names, int n, int *out)
{
    const cJSON *v = jget(c, key);
    if (!v)
        return 0;
    if (cJSON_IsString(v)) {
        for (int i = 0; i < n; i++) {
            if (names[i] && !strcmp(v->valuestring, names[i])) {
                *out = i;
                return 0;
            }
        }
    }
    return mood_error_set(MOOD_EFORMAT, "%s: unknown \"%s\" value%s%s%s", c->path, key,
                          cJSON_IsString(v) ? " '" : "", cJSON_IsString(v) ? v->valuestring : "",
                          cJSON_IsString(v) ? "'" : "");
}

/* Fields mood cannot honour: a model it would sample wrongly. */
static int json_unsupported(const json_ctx *c)
{
    const cJSON *v;
    if ((v = jget(c, "trained_betas")))
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: \"trained_betas\" is not supported", c->path);
    v = jget(c, "prediction_type");
    if (cJSON_IsString(v) && !strcmp(v->valuestring, "flow_prediction"))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: prediction_type '%s' is not supported (epsilon, v_prediction, "
                              "sample)",
                              c->path, v->valuestring);
    v = jget(c, "timestep_type");
    if (cJSON_IsString(v) && strcmp(v->valuestring, "discrete") != 0)
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: timestep_type '%s' is not supported", c->path,
                              v->valuestring);
    v = jget(c, "use_flow_sigmas");
    if (cJSON_IsTrue(v))
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: use_flow_sigmas is not supported", c->path);
    return 0;
}

/* EDMEulerScheduler / EDMDPMSolverMultistepScheduler: the class name says EDM, the sigma fields
 * say where. */
static int json_read_edm(mood_noise_schedule *s, const json_ctx *c)
{
    const char *cls = cJSON_GetStringValue(jget(c, "_class_name"));
    const cJSON *v = jget(c, "sigma_schedule");
    int err;
    if (!cls || strncmp(cls, "EDM", 3) != 0)
        return 0;
    s->edm = 1;
    if (s->prediction == MOOD_PRED_SAMPLE) /* diffusers' EDM schedulers have no such case */
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: prediction_type 'sample' is not supported on an EDM schedule",
                              c->path);
    if (v && (!cJSON_IsString(v) || strcmp(v->valuestring, "karras") != 0))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: sigma_schedule %s is not supported (\"karras\" expected)",
                              c->path, cJSON_IsString(v) ? v->valuestring : "(not a string)");
    if ((err = jnum(c, "sigma_min", &s->sigma_min, 1e-10, 1e10)) != 0 ||
        (err = jnum(c, "sigma_max", &s->sigma_max, 1e-10, 1e10)) != 0 ||
        (err = jnum(c, "sigma_data", &s->sigma_data, 1e-10, 1e10)) != 0 ||
        (err = jnum(c, "rho", &s->rho, 1e-3, 1e3)) != 0)
        return err;
    if (!(s->sigma_max > s->sigma_min))
        return mood_error_set(MOOD_EFORMAT, "%s: sigma_max %g is not above sigma_min %g", c->path,
                              s->sigma_max, s->sigma_min);
    return 0;
}

static int json_read_fields(mood_noise_schedule *s, const json_ctx *c)
{
    static const char *const betas[] = {"scaled_linear", "linear", "squaredcos_cap_v2"};
    static const char *const preds[] = {"epsilon", "v_prediction", "sample"};
    static const char *const spacings[] = {NULL, "leading", "trailing", "linspace"};
    static const char *const finals[] = {"zero", "sigma_min"};
    int beta = (int)s->beta_schedule, pred = (int)s->prediction;
    int spacing = (int)s->timestep_spacing;
    int err;
    if ((err = json_unsupported(c)) != 0 ||
        (err = jint(c, "num_train_timesteps", &s->train_timesteps, 2, 100000)) != 0 ||
        (err = jnum(c, "beta_start", &s->beta_start, 0, 1)) != 0 ||
        (err = jnum(c, "beta_end", &s->beta_end, 0, 1)) != 0 ||
        (err = jenum(c, "beta_schedule", betas, 3, &beta)) != 0 ||
        (err = jenum(c, "prediction_type", preds, 3, &pred)) != 0 ||
        (err = jenum(c, "timestep_spacing", spacings, 4, &spacing)) != 0 ||
        (err = jint(c, "steps_offset", &s->steps_offset, 0, 100000)) != 0 ||
        (err = jbool(c, "rescale_betas_zero_snr", &s->rescale_betas_zero_snr)) != 0 ||
        (err = jbool(c, "clip_sample", &s->clip_sample)) != 0 ||
        (err = jnum(c, "clip_sample_range", &s->clip_sample_range, 0, INFINITY)) != 0 ||
        (err = jbool(c, "set_alpha_to_one", &s->set_alpha_to_one)) != 0 ||
        (err = jint(c, "original_inference_steps", &s->original_inference_steps, 1, 100000)) != 0 ||
        (err = jnum(c, "timestep_scaling", &s->timestep_scaling, 0, INFINITY)) != 0 ||
        (err = jenum(c, "final_sigmas_type", finals, 2, &s->final_sigma_min)) != 0 ||
        (err = jbool(c, "lower_order_final", &s->lower_order_final)) != 0 ||
        (err = jbool(c, "euler_at_final", &s->euler_at_final)) != 0 ||
        (err = jnum(c, "lambda_min_clipped", &s->lambda_min_clipped, -INFINITY, INFINITY)) != 0)
        return err;
    s->beta_schedule = (mood_beta_schedule)beta;
    s->prediction = (mood_prediction)pred;
    s->timestep_spacing = (mood_timestep_spacing)spacing;
    return json_read_edm(s, c);
}

int mood_noise_schedule_from_json(mood_noise_schedule *s, const char *path)
{
    mood_map m = {0};
    char *text = NULL;
    cJSON *root = NULL;
    mood_noise_schedule tmp;
    json_ctx c = {NULL, path};
    int err;
    if (!s || !path)
        return mood_error_set(MOOD_EINVAL, "mood_noise_schedule_from_json: NULL argument");
    if ((err = mood_map_file(&m, path)) != 0)
        return err;
    if (!(text = json_sanitize((const char *)m.data, (size_t)m.size))) {
        err = mood_error_nomem();
        goto done;
    }
    if (!(root = cJSON_Parse(text)) || !cJSON_IsObject(root)) {
        err = mood_error_set(MOOD_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    mood_noise_schedule_init(&tmp);
    c.root = root;
    if ((err = json_read_fields(&tmp, &c)) != 0)
        goto done;
    *s = tmp;
done:
    cJSON_Delete(root);
    mood_free(text);
    mood_unmap(&m);
    return err;
}

/* ----- torch float32 schedule tables -------------------------------------------------------- */

/* torch.linspace(start, end, n, dtype=float32) on the CPU (see the top of the file). */
void mood__torch_linspace_f32(float *out, double start, double end, int n)
{
    float s = (float)start, e = (float)end, step;
    if (n == 1) {
        out[0] = s;
        return;
    }
    step = (e - s) / (float)(n - 1);
    for (int i = 0; i < n; i++)
        out[i] = i < n / 2 ? fmaf(step, (float)i, s) : fmaf(-step, (float)(n - 1 - i), e);
}

/* diffusers' betas_for_alpha_bar (cosine), in Python floats, then float32. */
static void betas_cosine(float *betas, int T)
{
    const double pi = 3.141592653589793;
    for (int i = 0; i < T; i++) {
        double t1 = (double)i / T, t2 = (double)(i + 1) / T;
        double c1 = cos((t1 + 0.008) / 1.008 * pi / 2), c2 = cos((t2 + 0.008) / 1.008 * pi / 2);
        double b = 1 - (c2 * c2) / (c1 * c1);
        betas[i] = (float)(b < 0.999 ? b : 0.999);
    }
}

/* torch.cumprod(1 - betas) in float32 (CPU: accumulated in double). */
static void cumprod_alphas(float *ac, const float *betas, int T)
{
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        acc *= (double)(1.0f - betas[i]);
        ac[i] = (float)acc;
    }
}

/* rescale_zero_terminal_snr (Lin et al. 2023, Algorithm 1) in torch float32, in place. */
static void rescale_zero_snr(float *betas, float *tmp, int T)
{
    float s0, sT, scale;
    cumprod_alphas(tmp, betas, T);
    for (int i = 0; i < T; i++)
        tmp[i] = sqrtf(tmp[i]);
    s0 = tmp[0], sT = tmp[T - 1];
    scale = s0 / (s0 - sT);
    for (int i = 0; i < T; i++) {
        float v = (tmp[i] - sT) * scale;
        tmp[i] = v * v; /* alphas_bar */
    }
    for (int i = T - 1; i >= 1; i--)
        betas[i] = 1.0f - tmp[i] / tmp[i - 1];
    betas[0] = 1.0f - tmp[0];
}

/* alphas_cumprod (T floats) as the scheduler of `kind` holds it. */
static int alphas_cumprod(float *ac, const mood_noise_schedule *ns, mood_sampler_kind kind)
{
    int T = ns->train_timesteps;
    float *betas = mood_malloc((size_t)T * 2 * sizeof *betas);
    if (!betas)
        return mood_error_nomem();
    if (ns->beta_schedule == MOOD_BETA_LINEAR) {
        mood__torch_linspace_f32(betas, ns->beta_start, ns->beta_end, T);
    } else if (ns->beta_schedule == MOOD_BETA_SCALED_LINEAR) {
        mood__torch_linspace_f32(betas, pow(ns->beta_start, 0.5), pow(ns->beta_end, 0.5), T);
        for (int i = 0; i < T; i++)
            betas[i] = betas[i] * betas[i];
    } else {
        betas_cosine(betas, T);
    }
    if (ns->rescale_betas_zero_snr)
        rescale_zero_snr(betas, betas + T, T);
    cumprod_alphas(ac, betas, T);
    /* Euler, Euler a and DPM-Solver avoid an infinite sigma at zero terminal SNR. */
    if (ns->rescale_betas_zero_snr && mood__is_sigma_sampler(kind))
        ac[T - 1] = 0x1p-24f;
    mood_free(betas);
    return 0;
}

/* (sampler_internal.h; tests/unit/test_sampler.c checks the tables with it.) */
int mood__sampler_alphas_cumprod(float *out, const mood_noise_schedule *ns, mood_sampler_kind kind)
{
    if (!out || !ns || ns->train_timesteps < 2 || ns->train_timesteps > 100000)
        return mood_error_set(MOOD_EINVAL, "mood__sampler_alphas_cumprod: bad arguments");
    return alphas_cumprod(out, ns, kind);
}
