/*
 * sample.c: sample previews during a training run (mood_train_options.sample_every). Every
 * prompt is rendered by the txt2img pipeline (mood_generate) on the run's own model, whose UNet
 * and text encoder carry the side paths of the LoRA being trained: train.c installs them for the
 * training steps and they point at the very factors the optimizer updates, so a preview shows
 * the LoRA as it is at that step without copying or merging anything.
 *
 * Each prompt keeps one seed for the whole run (sample_seed + its index), so the previews of
 * different steps differ only by what the LoRA learnt in between. The pipeline draws its noise
 * from its own generator, never the training one: previews change nothing in the training.
 */
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
                             int size, int clip_skip)
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
        if (!(s->prompts[s->n] = fill_trigger(src[s->n], o->board_opts.trigger)))
            return mood_error_nomem();
    }
    return 0;
}

void mood__train_samples_dispose(mood__train_samples *s)
{
    for (size_t i = 0; s->prompts && i < s->n; i++)
        mood_free(s->prompts[i]);
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
    mood_gen_options_init(&g);
    g.prompt = s->prompts[i];
    g.negative = o->sample_negative;
    g.width = g.height = s->size;
    g.steps = o->sample_steps > 0 ? o->sample_steps : DEFAULT_STEPS;
    g.cfg = o->sample_cfg > 0 ? o->sample_cfg : DEFAULT_CFG;
    g.seed = o->sample_seed + i;
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
