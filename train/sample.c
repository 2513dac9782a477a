/*
 * sample.c: sample previews during a training run (mood_train_options.sample_every). Every
 * prompt is rendered by the txt2img pipeline (mood_generate) on the run's own model, whose UNet
 * and text encoder carry the side paths of the LoRA being trained: train.c installs them for the
 * training steps and they point at the very factors the optimizer updates, so a preview shows
 * the LoRA as it is at that step without copying or merging anything.
 *
 * Each prompt keeps one seed for the whole run (sample_seed + its index, or its own --d), so the
 * previews of different steps differ only by what the LoRA learnt in between. A prompt may carry
 * kohya's per-prompt options (sample_prompts lines: "a cat --n blurry --w 512 --d 1"), read as
 * kohya's line_to_prompt_dict reads them, so a kohya user's prompts render as they did there.
 * The pipeline draws its noise from its own generator, never the training one: previews change
 * nothing in the training.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "train/train_internal.h"

#define DEFAULT_STEPS 20
#define DEFAULT_CFG   7.0
#define MAX_PROMPTS   64

static const char *const default_prompts[] = {"{trigger}, a portrait", "{trigger}, a landscape"};

/* The prompt with every "{trigger}" replaced by the trigger word; without one, "{trigger}" goes
 * with the ", " after it ("{trigger}, a portrait" -> "a portrait"). */
static char *fill_trigger(const char *prompt, const char *trigger)
{
    static const char key[] = "{trigger}";
    const size_t k = sizeof key - 1;
    mood_buf b;
    int err = 0;
    mood_buf_init(&b);
    for (const char *p = prompt; *p && !err;) {
        const char *hit = strstr(p, key);
        size_t n = hit ? (size_t)(hit - p) : strlen(p);
        err = mood_buf_append(&b, p, n);
        if (!hit)
            break;
        p = hit + k;
        if (trigger && *trigger)
            err = err ? err : mood_buf_puts(&b, trigger);
        else if (strncmp(p, ", ", 2) == 0)
            p += 2;
    }
    err = err ? err : mood_buf_append(&b, "", 0);
    if (err) {
        mood_buf_dispose(&b);
        return NULL;
    }
    return mood_buf_detach(&b);
}

/* kohya's sampler names (sample_prompts --ss, train_util.py's SCHEDULER_LINEAR...) that name
 * one of mood's samplers under another spelling; the rest go to mood_sampler_parse as they are. */
static const char *kohya_sampler(const char *name)
{
    static const char *const map[][2] = {{"k_euler_a", "euler_a"},
                                         {"k_euler", "euler"},
                                         {"dpmsolver++", "dpmpp_2m"},
                                         {"dpmsolver", "dpmpp_2m"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(name, map[i][0]) == 0)
            return map[i][1];
    return name;
}

static int number_option(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end = NULL;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi))
        return mood_error_set(MOOD_EINVAL, "--%s %s: takes a number from %g to %g", opt, v, lo, hi);
    *out = x;
    return 0;
}

/* Sets the field of kohya's per-prompt option `opt` (its name, "n", "w", ...) to `v`. Options of
 * kohya's for other model kinds (ControlNet images, Flux guidance, ...) are ignored with a
 * warning; anything else is refused, naming the options there are. */
static int set_prompt_option(mood__sample_prompt *p, const char *opt, const char *v)
{
    double x = 0;
    int err = 0;
    if (strcmp(opt, "n") == 0) {
        mood_free(p->negative);
        return (p->negative = mood_strdup(v)) ? 0 : mood_error_nomem();
    }
    if (strcmp(opt, "ss") == 0) {
        if ((err = mood_sampler_parse(&p->sampler, &p->schedule, kohya_sampler(v))) == 0)
            p->has_sampler = 1;
        return err;
    }
    if (strcmp(opt, "w") == 0 || strcmp(opt, "h") == 0) {
        /* kohya rounds a side down to a multiple of 8, at least 64 */
        if ((err = number_option(opt, v, 1, 4096, &x)) == 0)
            *(opt[0] == 'w' ? &p->width : &p->height) = (int)x < 64 ? 64 : (int)x / 8 * 8;
    } else if (strcmp(opt, "d") == 0) {
        char *end = NULL;
        errno = 0;
        p->seed = strtoull(v, &end, 10);
        if (v[0] < '0' || v[0] > '9' || *end || errno)
            return mood_error_set(MOOD_EINVAL, "--d %s: takes a seed from 0 to 2^64-1", v);
        p->has_seed = 1;
    } else if (strcmp(opt, "s") == 0) {
        if ((err = number_option(opt, v, 1, 1000, &x)) == 0)
            p->steps = (int)x;
    } else if (strcmp(opt, "l") == 0) {
        if ((err = number_option(opt, v, 0, 100, &x)) == 0)
            p->cfg = x;
    } else if (strcmp(opt, "g") == 0 || strcmp(opt, "cn") == 0 || strcmp(opt, "ctr") == 0 ||
               strcmp(opt, "rcfg") == 0 || strcmp(opt, "fs") == 0) {
        mood_log(MOOD_LOG_WARN,
                 "sample prompt \"%.60s\": --%s is kohya's option for other models; "
                 "ignored",
                 p->text, opt);
    } else {
        return mood_error_set(MOOD_EINVAL,
                              "--%s: not one of kohya's per-prompt options (--n NEGATIVE, --w W, "
                              "--h H, --d SEED, --s STEPS, --l CFG, --ss SAMPLER)",
                              opt);
    }
    return err;
}

/* Splits `line` (trigger filled in) as kohya's line_to_prompt_dict does: at " --", the first part
 * the prompt, each other "NAME VALUE". */
static int parse_prompt(mood__sample_prompt *p, const char *line)
{
    const char *cut = strstr(line, " --");
    int err = 0;
    memset(p, 0, sizeof *p);
    p->cfg = -1; /* the run's */
    if (!(p->text = mood_strndup(line, cut ? (size_t)(cut - line) : strlen(line))))
        return mood_error_nomem();
    while (cut && !err) {
        const char *part = cut + 3, *next = strstr(part, " --");
        size_t n = next ? (size_t)(next - part) : strlen(part);
        char *opt = mood_strndup(part, n), *sp = opt ? strchr(opt, ' ') : NULL;
        if (!opt)
            return mood_error_nomem();
        if (sp)
            *sp = '\0';
        for (char *c = opt; *c; c++) /* kohya matches them case-insensitively */
            *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
        if (!sp || !sp[1])
            err = mood_error_set(MOOD_EINVAL, "--%s without a value", opt);
        else
            err = set_prompt_option(p, opt, sp + 1);
        if (err)
            mood_error_prefix("sample prompt \"%.60s\"", line);
        mood_free(opt);
        cut = next;
    }
    return err;
}

static int check(const mood_train_options *o, int size)
{
    if (o->sample_every < 0 || o->sample_steps < 0 || o->sample_steps > 1000 ||
        !(o->sample_cfg >= 0) || o->sample_cfg > 100)
        return mood_error_set(MOOD_EINVAL,
                              "sample previews: every %d steps, %d sampler steps, cfg %g: expected "
                              "every >= 0, 0..1000 sampler steps, cfg 0..100",
                              o->sample_every, o->sample_steps, o->sample_cfg);
    if (size < 64 || size > 4096 || size % 8 != 0)
        return mood_error_set(MOOD_EINVAL,
                              "sample previews: size %d is not a multiple of 8 in 64..4096", size);
    if (o->n_sample_prompts > MAX_PROMPTS || (o->n_sample_prompts && !o->sample_prompts))
        return mood_error_set(MOOD_EINVAL, "sample previews: at most %d prompts", MAX_PROMPTS);
    for (size_t i = 0; i < o->n_sample_prompts; i++) {
        if (!o->sample_prompts[i])
            return mood_error_set(MOOD_EINVAL, "sample previews: prompt %zu is NULL", i);
    }
    return 0;
}

int mood__train_samples_init(mood__train_samples *s, const mood_train_options *o, mood_model *m,
                             int size, int clip_skip, const char *trigger)
{
    const char *const *src = o->n_sample_prompts ? o->sample_prompts : default_prompts;
    size_t n = o->n_sample_prompts ? o->n_sample_prompts : 2;
    int err;
    memset(s, 0, sizeof *s);
    s->o = o;
    s->m = m;
    s->size = o->sample_size > 0 ? o->sample_size : size;
    s->clip_skip = clip_skip;
    if (o->sample_every == 0 || !o->sample)
        return 0;
    if ((err = check(o, s->size)) != 0)
        return err;
    if (!(s->prompts = mood_calloc(n, sizeof *s->prompts)))
        return mood_error_nomem();
    for (; s->n < n; s->n++) {
        char *line = fill_trigger(src[s->n], trigger);
        err = line ? parse_prompt(&s->prompts[s->n], line) : mood_error_nomem();
        mood_free(line);
        if (err) {
            s->n++; /* disposed with the others */
            return err;
        }
    }
    return 0;
}

void mood__train_samples_dispose(mood__train_samples *s)
{
    for (size_t i = 0; s->prompts && i < s->n; i++) {
        mood_free(s->prompts[i].text);
        mood_free(s->prompts[i].negative);
    }
    mood_free(s->prompts);
    memset(s, 0, sizeof *s);
}

/* The pipeline's progress as the run's phase "sample"; a stop request cancels the preview. */
typedef struct round {
    const mood__train_samples *s;
    size_t index;
} round;

static int on_progress(const mood_progress *p, void *payload)
{
    const round *rd = payload;
    const mood_train_options *o = rd->s->o;
    mood_train_progress tp = {"sample", 0, 0, 0, 0, 0, 0, 0, 0};
    if (mood__train_stop_requested())
        return 1;
    if (!o->progress)
        return 0;
    tp.done = (int64_t)(rd->index * p->total + p->done);
    tp.total = (int64_t)(rd->s->n * p->total);
    return o->progress(&tp, o->progress_payload);
}

static int render_one(mood__train_samples *s, size_t i, int64_t step, int final)
{
    const mood_train_options *o = s->o;
    mood_gen_options g;
    mood_train_sample out;
    round rd = {s, i};
    float *image = NULL;
    int err, rc;
    const mood__sample_prompt *p = &s->prompts[i];
    mood_gen_options_init(&g);
    g.prompt = p->text;
    g.negative = p->negative ? p->negative : o->sample_negative;
    g.width = p->width ? p->width : s->size;
    g.height = p->height ? p->height : s->size;
    g.steps = p->steps ? p->steps : o->sample_steps > 0 ? o->sample_steps : DEFAULT_STEPS;
    g.cfg = p->cfg >= 0 ? p->cfg : o->sample_cfg > 0 ? o->sample_cfg : DEFAULT_CFG;
    g.seed = p->has_seed ? p->seed : o->sample_seed + i;
    if (p->has_sampler)
        g.sampler = p->sampler, g.schedule = p->schedule;
    g.clip_skip = s->clip_skip;
    g.progress = on_progress;
    g.progress_payload = &rd;
    if ((err = mood_generate(s->m, &g, &image, NULL)) != 0) {
        mood_error_prefix("sample preview \"%.60s\" at step %lld", g.prompt, (long long)step);
        return err;
    }
    g.progress = NULL; /* what the callback sees is what a program would pass to render it again */
    g.progress_payload = NULL;
    out = (mood_train_sample){step, final, i, s->n, &g, s->m, image};
    rc = o->sample(&out, o->sample_payload);
    free(image); /* mood_generate's buffer */
    if (rc < 0 && rc >= MOOD_ECANCELLED)
        return rc;
    if (rc != 0)
        return mood_error_set(MOOD_ECANCELLED, "training stopped by the sample callback");
    return 0;
}

int mood__train_samples_render(mood__train_samples *s, int64_t step, int final)
{
    int err = 0;
    if (!s->n)
        return 0;
    for (size_t i = 0; i < s->n && !err; i++)
        err = render_one(s, i, step, final);
    return err ? err : 1;
}

int mood__train_samples_after_step(void *user, int64_t step)
{
    mood__train_samples *s = user;
    if (!s->n || step % s->o->sample_every != 0 || step >= s->o->steps)
        return 0;
    return mood__train_samples_render(s, step, 0);
}
