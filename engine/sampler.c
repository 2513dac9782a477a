/*
 * sampler.c: noise schedules and samplers (mood/sampler.h), a step-for-step port of diffusers'
 * EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler
 * (dpmsolver++ / sde-dpmsolver++, order 2, midpoint), DDIMScheduler and LCMScheduler, and for
 * EDM models (Playground v2.5) EDMEulerScheduler and EDMDPMSolverMultistepScheduler, which
 * reuse the Euler and DPM-Solver steps with EDM's sigmas, preconditioning and alpha_t = 1
 * (diffusers 0.42.1, src/diffusers/schedulers/scheduling_*.py). The noise schedules themselves
 * (scheduler_config.json, betas and alphas_cumprod) are in noise_schedule.c.
 *
 * Bit-level agreement needs diffusers' dtypes, so each quantity is computed in the type diffusers
 * uses, one IEEE operation at a time (this file is built with -ffp-contract=off):
 *  - betas and alphas_cumprod: torch float32. torch.linspace computes start + step*i for the
 *    first half and end - step*(n-1-i) for the second, each as one fused multiply-add (checked
 *    against torch 2.15); torch.cumprod on the CPU accumulates in double.
 *  - timesteps and sigmas: numpy float64 (linspace, arange, interp, round half to even) over the
 *    float32 sigma table, stored as float32 at the end.
 *  - the step: torch float32 tensors and 0-d float32 tensors for the coefficients, in the
 *    expression order of the Python source (`a * b + c` is two roundings; `1 / t` is
 *    reciprocal(t) * 1).
 * The only inexact parts are sqrt, exp and log of the coefficients: torch's x86 CPU build
 * computes them (also on 0-d tensors) with MKL's vector math and Sleef, which are not correctly
 * rounded (about 0.5% of torch.sqrt results are 1 ulp off IEEE sqrt), and numpy takes the float32
 * log of the sigma table (Karras sigma -> t) with its own SIMD code. glibc's correctly rounded
 * functions are used here. In the fixtures 16 of 21 runs are bit-identical to diffusers and the
 * others differ by <= 3e-7 of the largest latent.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "engine/sampler_internal.h"
#include "mood/sampler.h"

/* ----- names -------------------------------------------------------------------------------- */

static const char *const a1111_names[] = {"Euler",        "Euler a", "DPM++ 2M",
                                          "DPM++ 2M SDE", "DDIM",    "LCM"};
static const char *const short_names[] = {"euler",        "euler_a", "dpmpp_2m",
                                          "dpmpp_2m_sde", "ddim",    "lcm"};
enum { N_KINDS = 6 };

static const char KNOWN_SAMPLERS[] =
    "Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, DPM++ 2M SDE Karras, DDIM, LCM "
    "(also euler, euler_a, dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde, dpmpp_2m_sde_karras, ddim, "
    "lcm)";

const char *mood_sampler_a1111_name(mood_sampler_kind kind)
{
    return (unsigned)kind < N_KINDS ? a1111_names[kind] : NULL;
}

const char *mood_sampler_short_name(mood_sampler_kind kind)
{
    return (unsigned)kind < N_KINDS ? short_names[kind] : NULL;
}

int mood__is_sigma_sampler(mood_sampler_kind k)
{
    return k == MOOD_SAMPLER_EULER || k == MOOD_SAMPLER_EULER_A || k == MOOD_SAMPLER_DPMPP_2M ||
           k == MOOD_SAMPLER_DPMPP_2M_SDE;
}

/* Lower-cases s into out (size cap), trimming surrounding blanks. 0, or -1 if it does not fit. */
static int normalize_name(char *out, size_t cap, const char *s)
{
    size_t len;
    while (*s == ' ' || *s == '\t')
        s++;
    len = strlen(s);
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len >= cap)
        return -1;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[len] = '\0';
    return 0;
}

/* Removes a trailing " karras" / "_karras"; returns 1 if there was one. */
static int strip_karras(char *s)
{
    size_t len = strlen(s);
    if (len > 7 && strcmp(s + len - 6, "karras") == 0 && (s[len - 7] == ' ' || s[len - 7] == '_')) {
        s[len - 7] = '\0';
        return 1;
    }
    return 0;
}

int mood_sampler_parse(mood_sampler_kind *kind, mood_sigma_schedule *sched, const char *name)
{
    static const struct {
        const char *name;
        mood_sampler_kind kind;
    } aliases[] = {{"euler", MOOD_SAMPLER_EULER},
                   {"euler a", MOOD_SAMPLER_EULER_A},
                   {"euler_a", MOOD_SAMPLER_EULER_A},
                   {"euler_ancestral", MOOD_SAMPLER_EULER_A},
                   {"dpm++ 2m", MOOD_SAMPLER_DPMPP_2M},
                   {"dpmpp_2m", MOOD_SAMPLER_DPMPP_2M},
                   {"dpm++ 2m sde", MOOD_SAMPLER_DPMPP_2M_SDE},
                   {"dpmpp_2m_sde", MOOD_SAMPLER_DPMPP_2M_SDE},
                   {"ddim", MOOD_SAMPLER_DDIM},
                   {"lcm", MOOD_SAMPLER_LCM}};
    char buf[64];
    int karras;
    if (!kind || !sched || !name)
        return mood_error_set(MOOD_EINVAL, "mood_sampler_parse: NULL argument");
    if (normalize_name(buf, sizeof buf, name) != 0)
        return mood_error_set(MOOD_EINVAL, "unknown sampler '%.40s...'; known: %s", name,
                              KNOWN_SAMPLERS);
    karras = strip_karras(buf);
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        if (strcmp(buf, aliases[i].name) != 0)
            continue;
        if (karras && !mood__is_sigma_sampler(aliases[i].kind))
            return mood_error_set(MOOD_EINVAL,
                                  "sampler '%s': the Karras schedule applies to Euler, Euler a, "
                                  "DPM++ 2M and DPM++ 2M SDE only",
                                  name);
        *kind = aliases[i].kind;
        *sched = karras ? MOOD_SCHEDULE_KARRAS : MOOD_SCHEDULE_DEFAULT;
        return 0;
    }
    return mood_error_set(MOOD_EINVAL, "unknown sampler '%s'; known: %s", name, KNOWN_SAMPLERS);
}

int mood_sigma_schedule_parse(mood_sigma_schedule *sched, const char *name)
{
    char buf[32];
    if (!sched || !name)
        return mood_error_set(MOOD_EINVAL, "mood_sigma_schedule_parse: NULL argument");
    if (normalize_name(buf, sizeof buf, name) == 0) {
        if (!strcmp(buf, "automatic") || !strcmp(buf, "default") || !buf[0]) {
            *sched = MOOD_SCHEDULE_DEFAULT;
            return 0;
        }
        if (!strcmp(buf, "karras")) {
            *sched = MOOD_SCHEDULE_KARRAS;
            return 0;
        }
    }
    return mood_error_set(MOOD_EINVAL, "unknown schedule type '%s'; known: Automatic, Karras",
                          name);
}

/* ----- numpy float64 helpers ---------------------------------------------------------------- */

/* np.linspace(start, stop, num, endpoint): i * step + start, the last set to stop. */
static void np_linspace(double *out, double start, double stop, int num, int endpoint)
{
    int div = endpoint ? num - 1 : num;
    double step = div > 0 ? (stop - start) / div : 0;
    for (int i = 0; i < num; i++)
        out[i] = div > 0 ? (double)i * step + start : start;
    if (endpoint && num > 1)
        out[num - 1] = stop;
}

/* np.arange(start, 0, -ratio).round() for the first n values (numpy fills start + i * delta with
 * delta = (start + step) - start; it can make one value more than n, which is dropped). */
static int np_arange_trailing(double *out, double start, double ratio, int n)
{
    double step = -ratio, len = ceil((0.0 - start) / step), delta = (start + step) - start;
    if (len < n)
        return -1;
    for (int i = 0; i < n; i++)
        out[i] = rint(i == 1 ? start + step : start + (double)i * delta);
    return 0;
}

/* np.interp(x, arange(T), fp) for x in [0, T-1] or clamped outside. */
static double np_interp(double x, const float *fp, int T)
{
    int j;
    double slope;
    if (x >= T - 1)
        return fp[T - 1];
    if (x < 0 || x != x)
        return fp[0];
    j = (int)floor(x);
    if ((double)j == x)
        return fp[j];
    slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

/* diffusers' _sigma_to_t: the fractional timestep whose log sigma interpolates log_table (the
 * float32 np.log of the sigma table, ascending). */
static double sigma_to_t(double sigma, const float *log_table, int T)
{
    double ls = log(sigma > 1e-10 ? sigma : 1e-10), w, low;
    int lo = 0, count = 0, best = -1;
    for (int i = 0; i < T; i++) { /* argmax of cumsum(dists >= 0): first index of the maximum */
        count += ls - (double)log_table[i] >= 0;
        if (count > best)
            best = count, lo = i;
    }
    if (lo > T - 2)
        lo = T - 2;
    low = (double)log_table[lo];
    w = (low - ls) / (double)(log_table[lo] - log_table[lo + 1]);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * (double)lo + w * (double)(lo + 1);
}

/* _convert_to_karras: rho = 7 from sigma_max down to sigma_min in n values. */
static void karras_sigmas(double *out, double sigma_min, double sigma_max, int n)
{
    double min_inv = pow(sigma_min, 1.0 / 7.0), max_inv = pow(sigma_max, 1.0 / 7.0);
    double span = min_inv - max_inv;
    np_linspace(out, 0, 1, n, 1);
    for (int i = 0; i < n; i++)
        out[i] = pow(max_inv + out[i] * span, 7.0);
}

/* ----- plans: the timesteps and sigmas of a run --------------------------------------------- */

typedef struct plan {
    mood_sampler_kind kind;
    int steps, T;
    float *ac;        /* alphas_cumprod (T) */
    double *t;        /* model timesteps (steps) */
    float *sigma;     /* steps + 1: the scheduler's sigmas (DDIM/LCM: equivalents) */
    float init_sigma; /* init_noise_sigma */
    float final_ac;   /* DDIM / LCM final_alpha_cumprod */
} plan;

static void plan_free(plan *p)
{
    mood_free(p->ac);
    mood_free(p->t);
    mood_free(p->sigma);
}

/* The float32 table ((1 - ac) / ac) ** 0.5. */
static void sigma_table(float *out, const float *ac, int T)
{
    for (int i = 0; i < T; i++)
        out[i] = sqrtf((1.0f - ac[i]) / ac[i]);
}

static float final_sigma(const mood_noise_schedule *ns, const float *ac)
{
    return ns->final_sigma_min ? sqrtf((1.0f - ac[0]) / ac[0]) : 0.0f;
}

/* Integer timesteps of DDIM (leading/trailing/linspace); also DPM's trailing. */
static int int_timesteps(plan *p, mood_timestep_spacing sp, int offset, double *tmp)
{
    int n = p->steps, T = p->T;
    if (sp == MOOD_SPACING_LINSPACE) {
        np_linspace(tmp, 0, T - 1, n, 1);
        for (int i = 0; i < n; i++)
            p->t[i] = rint(tmp[n - 1 - i]);
    } else if (sp == MOOD_SPACING_LEADING) {
        int ratio = T / n;
        for (int i = 0; i < n; i++)
            p->t[i] = (double)((n - 1 - i) * ratio + offset);
    } else {
        if (np_arange_trailing(p->t, T, (double)T / n, n) != 0)
            return -1;
        for (int i = 0; i < n; i++)
            p->t[i] -= 1;
    }
    return 0;
}

/* EulerDiscreteScheduler.set_timesteps (also Euler a's, which is its non-Karras part). */
static int plan_euler(plan *p, const mood_noise_schedule *ns, int karras, float *table, double *sig)
{
    int n = p->steps, T = p->T;
    mood_timestep_spacing sp = ns->timestep_spacing ? ns->timestep_spacing : MOOD_SPACING_LINSPACE;
    float m = 0;
    if (sp == MOOD_SPACING_LINSPACE) {
        np_linspace(sig, 0, T - 1, n, 1);
        for (int i = 0; i < n; i++)
            p->t[i] = (float)sig[n - 1 - i];
    } else if (sp == MOOD_SPACING_LEADING) {
        for (int i = 0; i < n; i++)
            p->t[i] = (float)((n - 1 - i) * (T / n)) + (float)ns->steps_offset;
    } else {
        if (np_arange_trailing(p->t, T, (double)T / n, n) != 0)
            return -1;
        for (int i = 0; i < n; i++)
            p->t[i] = (float)p->t[i] - 1.0f;
    }
    sigma_table(table, p->ac, T);
    for (int i = 0; i < n; i++)
        sig[i] = np_interp(p->t[i], table, T);
    if (karras) {
        karras_sigmas(sig, sig[n - 1], sig[0], n);
        for (int i = 0; i < T; i++)
            table[i] = logf(table[i]);
        for (int i = 0; i < n; i++)
            p->t[i] = (float)sigma_to_t(sig[i], table, T);
    }
    for (int i = 0; i < n; i++)
        p->sigma[i] = (float)sig[i];
    p->sigma[n] = final_sigma(ns, p->ac);
    for (int i = 0; i <= n; i++)
        m = p->sigma[i] > m ? p->sigma[i] : m;
    p->init_sigma = sp == MOOD_SPACING_LEADING ? sqrtf(m * m + 1.0f) : m;
    return 0;
}

/* DPMSolverMultistepScheduler: the last timestep kept by lambda_min_clipped. */
static int dpm_last_timestep(const plan *p, double lambda_min)
{
    int idx = 0;
    if (lambda_min == -INFINITY)
        return p->T;
    /* searchsorted(flip(lambda_t), lambda_min): lambda_t falls with t */
    for (int i = p->T - 1; i >= 0; i--, idx++) {
        float a = sqrtf(p->ac[i]), s = sqrtf(1.0f - p->ac[i]);
        if (logf(a) - logf(s) >= (float)lambda_min)
            break;
    }
    return p->T - idx;
}

static int plan_dpm(plan *p, const mood_noise_schedule *ns, int karras, float *table, double *sig)
{
    int n = p->steps, T = p->T, last = dpm_last_timestep(p, ns->lambda_min_clipped);
    mood_timestep_spacing sp = ns->timestep_spacing ? ns->timestep_spacing : MOOD_SPACING_LINSPACE;
    if (sp == MOOD_SPACING_LINSPACE) {
        np_linspace(sig, 0, last - 1, n + 1, 1);
        for (int i = 0; i < n; i++)
            p->t[i] = rint(sig[n - i]);
    } else if (sp == MOOD_SPACING_LEADING) {
        int ratio = last / (n + 1);
        if (ratio < 1)
            return -1;
        for (int i = 0; i < n; i++)
            p->t[i] = (double)((n - i) * ratio + ns->steps_offset);
    } else {
        if (np_arange_trailing(p->t, last, (double)T / n, n) != 0)
            return -1;
        for (int i = 0; i < n; i++)
            p->t[i] -= 1;
    }
    sigma_table(table, p->ac, T);
    if (karras) {
        karras_sigmas(sig, table[0], table[T - 1], n);
        for (int i = 0; i < T; i++)
            table[i] = logf(table[i]);
        for (int i = 0; i < n; i++) {
            double t = sigma_to_t(sig[i], table, T);
            p->t[i] = ns->beta_schedule == MOOD_BETA_SQUAREDCOS_CAP_V2 ? trunc(t) : rint(t);
        }
    } else {
        for (int i = 0; i < n; i++)
            sig[i] = np_interp(p->t[i], table, T);
    }
    for (int i = 0; i < n; i++)
        p->sigma[i] = (float)sig[i];
    p->sigma[n] = final_sigma(ns, p->ac);
    p->init_sigma = 1.0f;
    return 0;
}

/* The VE sigma of alphas_cumprod a, for reporting DDIM / LCM levels. */
static float ac_sigma(float a)
{
    return sqrtf((1.0f - a) / a);
}

static int plan_ddim(plan *p, const mood_noise_schedule *ns, double *tmp)
{
    int n = p->steps, prev;
    mood_timestep_spacing sp = ns->timestep_spacing ? ns->timestep_spacing : MOOD_SPACING_LEADING;
    if (n > p->T || int_timesteps(p, sp, ns->steps_offset, tmp) != 0)
        return -1;
    p->final_ac = ns->set_alpha_to_one != 0 ? 1.0f : p->ac[0];
    for (int i = 0; i < n; i++) {
        if (p->t[i] < 0 || p->t[i] >= p->T)
            return -1;
        p->sigma[i] = ac_sigma(p->ac[(int)p->t[i]]);
    }
    prev = (int)p->t[n - 1] - p->T / n;
    p->sigma[n] = ac_sigma(prev >= 0 ? p->ac[prev] : p->final_ac);
    p->init_sigma = 1.0f;
    return 0;
}

static int plan_lcm(plan *p, const mood_noise_schedule *ns, double *tmp)
{
    int n = p->steps, orig = ns->original_inference_steps, k;
    if (orig > p->T || n > orig)
        return -1;
    k = p->T / orig;
    np_linspace(tmp, 0, orig, n, 0);
    for (int i = 0; i < n; i++) {
        int j = (int)floor(tmp[i]); /* index into the reversed origin schedule */
        p->t[i] = (double)((orig - j) * k - 1);
        p->sigma[i] = ac_sigma(p->ac[(int)p->t[i]]);
    }
    p->final_ac = ns->set_alpha_to_one != 0 ? 1.0f : p->ac[0];
    p->sigma[n] = 0.0f;
    p->init_sigma = 1.0f;
    return 0;
}

/* torch.linspace(start, end, n, dtype=float64): as torch_linspace_f32, in double. */
static void torch_linspace_f64(double *out, double start, double end, int n)
{
    double step;
    if (n == 1) {
        out[0] = start;
        return;
    }
    step = (end - start) / (double)(n - 1);
    for (int i = 0; i < n; i++)
        out[i] = i < n / 2 ? fma(step, (double)i, start) : fma(-step, (double)(n - 1 - i), end);
}

/* EDM: Karras sigmas from sigma_max to sigma_min and the timesteps c_noise = 0.25 ln sigma.
 * EDMEulerScheduler (Euler, and Euler a here) ramps in float64 and rounds the sigmas to float32;
 * EDMDPMSolverMultistepScheduler computes them in float32 (torch scalars become float). */
static void plan_edm(plan *p, const mood_noise_schedule *ns, double *tmp)
{
    int n = p->steps, euler = p->kind == MOOD_SAMPLER_EULER || p->kind == MOOD_SAMPLER_EULER_A;
    double rho = ns->rho, min_inv = pow(ns->sigma_min, 1.0 / rho);
    double max_inv = pow(ns->sigma_max, 1.0 / rho);
    if (euler) {
        torch_linspace_f64(tmp, 0, 1, n);
        for (int i = 0; i < n; i++)
            p->sigma[i] = (float)pow(max_inv + tmp[i] * (min_inv - max_inv), rho);
    } else {
        float span = (float)(min_inv - max_inv), top = (float)max_inv;
        mood__torch_linspace_f32(p->sigma, 0, 1, n); /* the ramp, replaced in place */
        for (int i = 0; i < n; i++)
            p->sigma[i] = powf(top + p->sigma[i] * span, (float)rho);
    }
    for (int i = 0; i < n; i++)
        p->t[i] = 0.25f * logf(p->sigma[i]);
    if (!ns->final_sigma_min)
        p->sigma[n] = 0.0f;
    else /* Euler: the last computed sigma; DPM: the configured sigma_min */
        p->sigma[n] = euler ? p->sigma[n - 1] : (float)ns->sigma_min;
    p->init_sigma = (float)sqrt(ns->sigma_max * ns->sigma_max + 1.0);
}

static int check_opts(const mood_noise_schedule *ns, const mood_sample_opts *o)
{
    if (!ns || !o)
        return mood_error_set(MOOD_EINVAL, "sampler: NULL schedule or options");
    if ((unsigned)o->kind >= N_KINDS)
        return mood_error_set(MOOD_EINVAL, "sampler: unknown sampler kind %d", (int)o->kind);
    if (o->schedule == MOOD_SCHEDULE_KARRAS && !mood__is_sigma_sampler(o->kind))
        return mood_error_set(MOOD_EINVAL, "sampler %s: the Karras schedule does not apply",
                              a1111_names[o->kind]);
    if (o->schedule != MOOD_SCHEDULE_DEFAULT && o->schedule != MOOD_SCHEDULE_KARRAS)
        return mood_error_set(MOOD_EINVAL, "sampler: unknown schedule %d", (int)o->schedule);
    if (ns->train_timesteps < 2 || ns->train_timesteps > 100000)
        return mood_error_set(MOOD_EINVAL, "sampler: train_timesteps %d out of range",
                              ns->train_timesteps);
    if (o->steps < 1 || o->steps > ns->train_timesteps)
        return mood_error_set(MOOD_EINVAL, "sampler %s: steps %d out of range 1..%d",
                              a1111_names[o->kind], o->steps, ns->train_timesteps);
    if (!(o->eta >= 0 && o->eta <= 1e6))
        return mood_error_set(MOOD_EINVAL, "sampler: eta %g must be >= 0", o->eta);
    if (o->start_step < 0 || o->start_step >= o->steps)
        return mood_error_set(MOOD_EINVAL, "sampler: start step %d out of range 0..%d",
                              o->start_step, o->steps - 1);
    if (ns->edm && !mood__is_sigma_sampler(o->kind))
        return mood_error_set(MOOD_EINVAL,
                              "sampler %s: not available for an EDM model (Playground v2.5): use "
                              "Euler, Euler a, DPM++ 2M or DPM++ 2M SDE",
                              a1111_names[o->kind]);
    if (ns->edm &&
        !(ns->sigma_min > 0 && ns->sigma_max > ns->sigma_min && ns->sigma_data > 0 && ns->rho > 0))
        return mood_error_set(MOOD_EINVAL, "sampler: EDM sigmas %g..%g, sigma_data %g, rho %g",
                              ns->sigma_min, ns->sigma_max, ns->sigma_data, ns->rho);
    return 0;
}

static int plan_build(plan *p, const mood_noise_schedule *ns, const mood_sample_opts *o)
{
    int err, n, T, karras = o->schedule == MOOD_SCHEDULE_KARRAS, bad = 0;
    float *table = NULL;
    double *tmp = NULL;
    memset(p, 0, sizeof *p);
    if ((err = check_opts(ns, o)) != 0)
        return err;
    p->kind = o->kind, p->steps = n = o->steps, p->T = T = ns->train_timesteps;
    p->ac = mood_malloc((size_t)T * sizeof *p->ac);
    p->t = mood_calloc((size_t)n + 1, sizeof *p->t);
    p->sigma = mood_calloc((size_t)n + 1, sizeof *p->sigma);
    table = mood_malloc((size_t)T * sizeof *table);
    tmp = mood_malloc(((size_t)(n > T ? n : T) + 2) * sizeof *tmp);
    if (!p->ac || !p->t || !p->sigma || !table || !tmp) {
        err = mood_error_nomem();
        goto done;
    }
    if (ns->edm) { /* no alphas_cumprod: the sigmas are the schedule */
        plan_edm(p, ns, tmp);
        goto done;
    }
    if ((err = mood__sampler_alphas_cumprod(p->ac, ns, o->kind)) != 0)
        goto done;
    if (o->kind == MOOD_SAMPLER_EULER || o->kind == MOOD_SAMPLER_EULER_A)
        bad = plan_euler(p, ns, karras, table, tmp);
    else if (o->kind == MOOD_SAMPLER_DDIM)
        bad = plan_ddim(p, ns, tmp);
    else if (o->kind == MOOD_SAMPLER_LCM)
        bad = plan_lcm(p, ns, tmp);
    else
        bad = plan_dpm(p, ns, karras, table, tmp);
    for (int i = 0; !bad && i < n; i++)
        bad = !(p->t[i] >= 0 && p->t[i] <= T - 1);
    if (bad)
        err = mood_error_set(MOOD_EINVAL,
                             "sampler %s: %d steps do not fit this schedule (%d training steps%s)",
                             a1111_names[o->kind], n, T,
                             o->kind == MOOD_SAMPLER_LCM ? ", original_inference_steps" : "");
done:
    mood_free(table);
    mood_free(tmp);
    if (err)
        plan_free(p);
    return err;
}

int mood__sampler_noise_coefs(float *a, float *b, const mood_noise_schedule *ns,
                              const mood_sample_opts *o)
{
    plan p;
    int err;
    if (o->kind == MOOD_SAMPLER_LCM || ns->edm)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "img2img is not supported with %s yet (another sampler works)",
                              ns->edm ? "an EDM model (Playground v2.5)" : "the LCM sampler");
    if ((err = plan_build(&p, ns, o)) != 0)
        return err;
    for (int k = 0; k < p.steps; k++) {
        if (o->kind == MOOD_SAMPLER_EULER || o->kind == MOOD_SAMPLER_EULER_A) {
            a[k] = 1.0f, b[k] = p.sigma[k];
        } else if (o->kind == MOOD_SAMPLER_DDIM) {
            float ac = p.ac[(int)p.t[k]];
            a[k] = sqrtf(ac), b[k] = sqrtf(1.0f - ac);
        } else { /* DPM-Solver: the VP pair of the step's sigma */
            a[k] = 1.0f / sqrtf(p.sigma[k] * p.sigma[k] + 1.0f), b[k] = p.sigma[k] * a[k];
        }
    }
    plan_free(&p);
    return 0;
}

int mood_sampler_add_noise(const mood_noise_schedule *ns, const mood_sample_opts *o, float *x,
                           const float *noise, size_t N)
{
    float *a, *b;
    int err;
    if (!ns || !o || !x || !noise)
        return mood_error_set(MOOD_EINVAL, "mood_sampler_add_noise: missing arguments");
    if (o->steps < 1 || o->steps > 100000)
        return mood_error_set(MOOD_EINVAL, "mood_sampler_add_noise: steps %d", o->steps);
    if (!(a = mood_malloc(2 * (size_t)o->steps * sizeof *a)))
        return mood_error_nomem();
    b = a + o->steps;
    if ((err = mood__sampler_noise_coefs(a, b, ns, o)) == 0)
        for (size_t j = 0; j < N; j++)
            x[j] = a[o->start_step] * x[j] + b[o->start_step] * noise[j];
    mood_free(a);
    return err;
}

int mood_sampler_timesteps(const mood_noise_schedule *ns, const mood_sample_opts *o,
                           double *timesteps_out, double *sigmas_out, double *init_sigma_out)
{
    plan p;
    int err;
    MOOD_ARG_NONNULL(ns);
    MOOD_ARG_NONNULL(o);
    if ((err = plan_build(&p, ns, o)) != 0)
        return err;
    for (int i = 0; i <= p.steps; i++) {
        if (timesteps_out && i < p.steps)
            timesteps_out[i] = p.t[i];
        if (sigmas_out)
            sigmas_out[i] = p.sigma[i];
    }
    if (init_sigma_out)
        *init_sigma_out = p.init_sigma;
    plan_free(&p);
    return 0;
}

/* ----- steps -------------------------------------------------------------------------------- */

/* Buffers of a run, each N = B * n_per_image floats. */
typedef struct run {
    const plan *p;
    const mood_noise_schedule *ns;
    size_t N;
    int B;
    size_t n;
    float *x;     /* the latents (the caller's buffer) */
    float *x_in;  /* scaled model input (Euler, Euler a) */
    float *out;   /* model output */
    float *x0;    /* this step's x0 estimate */
    float *x0_1;  /* DPM: the previous step's */
    float *noise; /* step noise */
    int lower_order_nums;
} run;

/* sigma_data squared, as Python computes it before torch makes it a float32 scalar. */
static float sigma_data2(const mood_noise_schedule *ns)
{
    return (float)(ns->sigma_data * ns->sigma_data);
}

/* Euler, Euler a: the model sees x / sqrt(sigma^2 + 1); EDM (every sampler): x * c_in with
 * c_in = 1 / sqrt(sigma^2 + sigma_data^2). */
static void scale_input(run *r, int i)
{
    float sigma = r->p->sigma[i];
    if (r->ns->edm) {
        float c_in = 1.0f / sqrtf(sigma * sigma + sigma_data2(r->ns));
        for (size_t j = 0; j < r->N; j++)
            r->x_in[j] = r->x[j] * c_in;
        return;
    }
    float d = sqrtf(sigma * sigma + 1.0f);
    for (size_t j = 0; j < r->N; j++)
        r->x_in[j] = r->x[j] / d;
}

/* The model's output when it is the x0 prediction itself (MOOD_PRED_SAMPLE). */
static void sample_x0(run *r)
{
    memcpy(r->x0, r->out, r->N * sizeof *r->x0);
}

/* EDM precondition_outputs: denoised = c_skip x + c_out F, c_skip = sd^2 / (sigma^2 + sd^2),
 * c_out = +-sigma sd / sqrt(sigma^2 + sd^2) (epsilon / v); an x0 prediction is taken as is. */
static void edm_x0(run *r, float sigma)
{
    if (r->ns->prediction == MOOD_PRED_SAMPLE) {
        sample_x0(r);
        return;
    }
    float sd2 = sigma_data2(r->ns), q = sigma * sigma + sd2;
    float c_skip = 1.0f / q * sd2;
    float c_out =
        (r->ns->prediction == MOOD_PRED_V ? -sigma : sigma) * (float)r->ns->sigma_data / sqrtf(q);
    for (size_t j = 0; j < r->N; j++)
        r->x0[j] = c_skip * r->x[j] + c_out * r->out[j];
}

/* Euler's and Euler a's pred_original_sample (sigma_hat = sigma: no churn). */
static void euler_x0(run *r, float sigma)
{
    if (r->ns->edm) {
        edm_x0(r, sigma);
    } else if (r->ns->prediction == MOOD_PRED_SAMPLE) {
        sample_x0(r);
    } else if (r->ns->prediction == MOOD_PRED_EPSILON) {
        for (size_t j = 0; j < r->N; j++)
            r->x0[j] = r->x[j] - sigma * r->out[j];
    } else {
        float c2 = sigma * sigma + 1.0f;
        float c_out = -sigma / sqrtf(c2);
        for (size_t j = 0; j < r->N; j++)
            r->x0[j] = r->out[j] * c_out + r->x[j] / c2;
    }
}

/* EulerDiscreteScheduler.step with s_churn = 0. */
static int step_euler(run *r, int i)
{
    float sigma = r->p->sigma[i] * 1.0f, dt = r->p->sigma[i + 1] - sigma;
    euler_x0(r, sigma);
    for (size_t j = 0; j < r->N; j++) {
        float d = (r->x[j] - r->x0[j]) / sigma;
        r->x[j] = r->x[j] + d * dt;
    }
    return 0;
}

static int draw_noise(run *r, const mood_sample_opts *o)
{
    return o->noise(r->noise, r->B, r->n, o->noise_user);
}

/* EulerAncestralDiscreteScheduler.step. */
static int step_euler_a(run *r, int i, const mood_sample_opts *o)
{
    float sf = r->p->sigma[i], st = r->p->sigma[i + 1];
    float up = sqrtf(st * st * (sf * sf - st * st) / (sf * sf));
    float down = sqrtf(st * st - up * up), dt = down - sf;
    int err;
    euler_x0(r, sf);
    for (size_t j = 0; j < r->N; j++) {
        float d = (r->x[j] - r->x0[j]) / sf;
        r->x[j] = r->x[j] + d * dt;
    }
    if ((err = draw_noise(r, o)) != 0)
        return err;
    for (size_t j = 0; j < r->N; j++)
        r->x[j] = r->x[j] + r->noise[j] * up;
    return 0;
}

/* DPM-Solver's alpha_t, sigma_t and lambda_t = log alpha_t - log sigma_t of a VE sigma. */
typedef struct vp {
    float alpha, sigma, lambda;
} vp;

static vp vp_of_vp(float s)
{
    vp v;
    v.alpha = 1.0f / sqrtf(s * s + 1.0f);
    v.sigma = s * v.alpha;
    v.lambda = logf(v.alpha) - logf(v.sigma);
    return v;
}

/* EDM: the inputs are pre-scaled, so alpha_t = 1 and sigma_t = sigma (lambda = log 1 - log s). */
static vp vp_of_edm(float s)
{
    vp v = {1.0f, s, 0.0f - logf(s)};
    return v;
}

/* The solver's alpha, sigma and lambda at the run's sigma k. */
static vp vp_at(const run *r, int k)
{
    return r->ns->edm ? vp_of_edm(r->p->sigma[k]) : vp_of_vp(r->p->sigma[k]);
}

/* convert_model_output for dpmsolver++: the x0 prediction. */
static void dpm_x0(run *r, int i)
{
    vp s = vp_at(r, i);
    if (r->ns->edm) {
        edm_x0(r, r->p->sigma[i]);
    } else if (r->ns->prediction == MOOD_PRED_SAMPLE) {
        sample_x0(r);
    } else if (r->ns->prediction == MOOD_PRED_EPSILON) {
        for (size_t j = 0; j < r->N; j++)
            r->x0[j] = (r->x[j] - s.sigma * r->out[j]) / s.alpha;
    } else {
        for (size_t j = 0; j < r->N; j++)
            r->x0[j] = s.alpha * r->x[j] - s.sigma * r->out[j];
    }
}

/* dpm_solver_first_order_update. */
static void dpm_first(run *r, int i, int sde)
{
    vp t = vp_at(r, i + 1), s = vp_at(r, i);
    float h = t.lambda - s.lambda;
    if (!sde) {
        float c1 = t.sigma / s.sigma, c2 = t.alpha * (expf(-h) - 1.0f);
        for (size_t j = 0; j < r->N; j++)
            r->x[j] = c1 * r->x[j] - c2 * r->x0[j];
    } else {
        float e2 = expf(-2.0f * h);
        float c1 = t.sigma / s.sigma * expf(-h), c2 = t.alpha * (1.0f - e2);
        float c3 = t.sigma * sqrtf(1.0f - e2);
        for (size_t j = 0; j < r->N; j++)
            r->x[j] = c1 * r->x[j] + c2 * r->x0[j] + c3 * r->noise[j];
    }
}

/* multistep_dpm_solver_second_order_update, midpoint; D1 = (m0 - m1) / r0. */
static void dpm_second(run *r, int i, int sde)
{
    vp t = vp_at(r, i + 1), s0 = vp_at(r, i), s1 = vp_at(r, i - 1);
    float h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda, r0 = h0 / h;
    float inv_r0 = 1.0f / r0;
    if (!sde) {
        float c1 = t.sigma / s0.sigma, c2 = t.alpha * (expf(-h) - 1.0f);
        float c3 = 0.5f * (t.alpha * (expf(-h) - 1.0f));
        for (size_t j = 0; j < r->N; j++) {
            float d1 = inv_r0 * (r->x0[j] - r->x0_1[j]);
            r->x[j] = c1 * r->x[j] - c2 * r->x0[j] - c3 * d1;
        }
    } else {
        float e2 = expf(-2.0f * h);
        float c1 = t.sigma / s0.sigma * expf(-h), c2 = t.alpha * (1.0f - e2);
        float c3 = 0.5f * (t.alpha * (1.0f - e2)), c4 = t.sigma * sqrtf(1.0f - e2);
        for (size_t j = 0; j < r->N; j++) {
            float d1 = inv_r0 * (r->x0[j] - r->x0_1[j]);
            r->x[j] = c1 * r->x[j] + c2 * r->x0[j] + c3 * d1 + c4 * r->noise[j];
        }
    }
}

/* DPMSolverMultistepScheduler.step with solver_order 2. */
static int step_dpm(run *r, int i, const mood_sample_opts *o)
{
    const mood_noise_schedule *ns = r->ns;
    int n = r->p->steps, sde = o->kind == MOOD_SAMPLER_DPMPP_2M_SDE, err;
    int lower_final = i == n - 1 && (ns->euler_at_final || (ns->lower_order_final && n < 15) ||
                                     !ns->final_sigma_min);
    float *swap = r->x0_1;
    r->x0_1 = r->x0, r->x0 = swap; /* model_outputs shift: x0_1 = the last step's x0 */
    dpm_x0(r, i);
    if (sde && (err = draw_noise(r, o)) != 0)
        return err;
    if (r->lower_order_nums < 1 || lower_final)
        dpm_first(r, i, sde);
    else
        dpm_second(r, i, sde);
    if (r->lower_order_nums < 2)
        r->lower_order_nums++;
    return 0;
}

static float clamp_range(float v, float lo, float hi)
{
    return v < lo ? lo : v > hi ? hi : v; /* as torch.clamp, NaN stays NaN */
}

/* DDIM / LCM x0 prediction from alphas_cumprod a_t, clipped when configured; writes the
 * epsilon prediction to eps when non-NULL (DDIM). */
static void ddim_x0(run *r, float a_t, int clip, float *eps)
{
    float sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t), lim = (float)r->ns->clip_sample_range;
    for (size_t j = 0; j < r->N; j++) {
        float x = r->x[j], m = r->out[j];
        if (r->ns->prediction == MOOD_PRED_EPSILON) {
            r->x0[j] = (x - sb * m) / sa;
            if (eps)
                eps[j] = m;
        } else if (r->ns->prediction == MOOD_PRED_SAMPLE) {
            r->x0[j] = m;
            if (eps)
                eps[j] = (x - sa * m) / sb;
        } else {
            r->x0[j] = sa * x - sb * m;
            if (eps)
                eps[j] = sa * m + sb * x;
        }
        if (clip)
            r->x0[j] = clamp_range(r->x0[j], -lim, lim);
    }
}

/* DDIMScheduler.step; eps is kept in the noise buffer's place (out is free after x0). */
static int step_ddim(run *r, int i, const mood_sample_opts *o)
{
    const plan *p = r->p;
    int t = (int)p->t[i], prev = t - p->T / p->steps, err;
    float a_t = p->ac[t], a_prev = prev >= 0 ? p->ac[prev] : p->final_ac;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float var = b_prev / b_t * (1.0f - a_t / a_prev);
    float std = (float)o->eta * sqrtf(var);
    float c_dir = sqrtf(1.0f - a_prev - std * std), c_x0 = sqrtf(a_prev);
    ddim_x0(r, a_t, r->ns->clip_sample != 0, r->out); /* out becomes epsilon, in place */
    for (size_t j = 0; j < r->N; j++)
        r->x[j] = c_x0 * r->x0[j] + c_dir * r->out[j];
    if (o->eta > 0) {
        if ((err = draw_noise(r, o)) != 0)
            return err;
        for (size_t j = 0; j < r->N; j++)
            r->x[j] = r->x[j] + std * r->noise[j];
    }
    return 0;
}

/* LCMScheduler.step: the consistency boundary condition, then re-noising to the next t. */
static int step_lcm(run *r, int i, const mood_sample_opts *o)
{
    const plan *p = r->p;
    int n = p->steps, t = (int)p->t[i], prev = i + 1 < n ? (int)p->t[i + 1] : t, err;
    float a_t = p->ac[t], a_prev = prev >= 0 ? p->ac[prev] : p->final_ac;
    float st = (float)t * (float)r->ns->timestep_scaling, d2 = st * st + 0.25f;
    float c_skip = 1.0f / d2 * 0.25f, c_out = st / sqrtf(d2);
    ddim_x0(r, a_t, r->ns->clip_sample == 1, NULL);
    for (size_t j = 0; j < r->N; j++)
        r->x0[j] = c_out * r->x0[j] + c_skip * r->x[j]; /* denoised */
    if (i == n - 1) {
        memcpy(r->x, r->x0, r->N * sizeof *r->x);
        return 0;
    }
    if ((err = draw_noise(r, o)) != 0)
        return err;
    float ca = sqrtf(a_prev), cb = sqrtf(1.0f - a_prev);
    for (size_t j = 0; j < r->N; j++)
        r->x[j] = ca * r->x0[j] + cb * r->noise[j];
    return 0;
}

/* ----- the loop ----------------------------------------------------------------------------- */

static int needs_noise(const mood_sample_opts *o)
{
    return o->kind == MOOD_SAMPLER_EULER_A || o->kind == MOOD_SAMPLER_DPMPP_2M_SDE ||
           (o->kind == MOOD_SAMPLER_LCM && o->steps > 1) ||
           (o->kind == MOOD_SAMPLER_DDIM && o->eta > 0);
}

static int run_alloc(run *r, size_t N)
{
    float *all = mood_calloc(N, 5 * sizeof *all);
    if (!all)
        return mood_error_nomem();
    r->x_in = all, r->out = all + N, r->x0 = all + 2 * N, r->x0_1 = all + 3 * N;
    r->noise = all + 4 * N;
    return 0;
}

static int report(const run *r, int i, const mood_sample_opts *o)
{
    mood_sample_state s;
    mood_progress pr;
    int k = i - o->start_step, run_steps = r->p->steps - o->start_step; /* the steps run */
    if (o->preview) {
        s.step = k, s.steps = run_steps, s.timestep = r->p->t[i];
        s.sigma = r->p->sigma[i], s.sigma_next = r->p->sigma[i + 1];
        s.x = r->x, s.x0 = r->x0, s.B = r->B, s.n_per_image = r->n;
        if (o->preview(&s, o->preview_user) != 0)
            return mood_error_set(MOOD_ECANCELLED, "sampling cancelled at step %d", k + 1);
    }
    if (o->progress) {
        pr.phase = "sample", pr.done = (uint64_t)k + 1, pr.total = (uint64_t)run_steps;
        if (o->progress(&pr, o->progress_user) != 0)
            return mood_error_set(MOOD_ECANCELLED, "sampling cancelled at step %d", k + 1);
    }
    return 0;
}

static int one_step(run *r, int i, const mood_sample_opts *o, mood_model_fn model, void *user)
{
    int err, euler = o->kind == MOOD_SAMPLER_EULER || o->kind == MOOD_SAMPLER_EULER_A;
    euler |= r->ns->edm; /* EDM scales the input of every sampler */
    if (euler)
        scale_input(r, i);
    if ((err = model(r->out, euler ? r->x_in : r->x, r->p->t[i], i, user)) != 0)
        return err;
    switch (o->kind) {
    case MOOD_SAMPLER_EULER:
        return step_euler(r, i);
    case MOOD_SAMPLER_EULER_A:
        return step_euler_a(r, i, o);
    case MOOD_SAMPLER_DDIM:
        return step_ddim(r, i, o);
    case MOOD_SAMPLER_LCM:
        return step_lcm(r, i, o);
    default:
        return step_dpm(r, i, o);
    }
}

void mood_sample_opts_init(mood_sample_opts *o)
{
    memset(o, 0, sizeof *o);
    o->kind = MOOD_SAMPLER_EULER_A;
    o->schedule = MOOD_SCHEDULE_DEFAULT;
    o->steps = 20;
}

int mood_sample(const mood_noise_schedule *ns, const mood_sample_opts *o, float *latents, int B,
                size_t n_per_image, mood_model_fn model, void *model_user)
{
    plan p;
    run r;
    uint64_t N = 0;
    int err;
    if (!latents || !model || B < 1 || n_per_image < 1 ||
        mood_mul_u64(&N, (uint64_t)B, n_per_image) != 0 || N > SIZE_MAX / (5 * sizeof(float)))
        return mood_error_set(MOOD_EINVAL, "mood_sample: bad latents, model or size");
    if (o && needs_noise(o) && !o->noise)
        return mood_error_set(MOOD_EINVAL, "sampler %s needs a noise callback",
                              (unsigned)o->kind < N_KINDS ? a1111_names[o->kind] : "?");
    if ((err = plan_build(&p, ns, o)) != 0)
        return err;
    memset(&r, 0, sizeof r);
    r.p = &p, r.ns = ns, r.N = (size_t)N, r.B = B, r.n = n_per_image, r.x = latents;
    if ((err = run_alloc(&r, r.N)) != 0)
        goto done;
    if (!o || !o->noised)
        for (size_t j = 0; j < r.N; j++)
            latents[j] = latents[j] * p.init_sigma;
    for (int i = o ? o->start_step : 0; i < p.steps && !err; i++) {
        if ((err = one_step(&r, i, o, model, model_user)) == 0 && o && o->after_step)
            err = o->after_step(latents, i, o->after_step_user);
        if (!err)
            err = report(&r, i, o);
    }
done:
    mood_free(r.x_in);
    plan_free(&p);
    return err;
}
