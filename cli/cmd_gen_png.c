/*
 * cmd_gen_png.c: the image side of `mood gen`: writing each image as a PNG with AUTOMATIC1111's
 * `parameters` text (mood/params.h), previews, the --json report, and --from-png, which reads
 * those parameters back and fills every option the command line did not set.
 *
 * The prompt written is the final prompt (templates and trigger words applied) followed by one
 * tag per LoRA applied, as A1111 writes and reads them: <lora:ALIAS:W>, or <lora:ALIAS:TE:UNET>
 * when the text encoder's multiplier differs (the effective ones: a style's weight times its
 * LoRA's), ALIAS the LoRA's own name made safe (mood/styles.h), with one "Lora hashes" entry per
 * LoRA under the same ALIAS. So A1111 with files of those names, Civitai and `mood gen
 * --from-png` all find the same LoRAs at the same weights: --from-png applies the registry's
 * LoRA of each recorded hash directly (the name is the fallback), and warns, naming key and
 * value, about each setting of the image that changes it and that mood does not reproduce.
 *
 * "RNG": absent means A1111's GPU noise (--rng torch-cuda); "CPU" is A1111's per-image CPU noise,
 * which is mood's --rng mood, and for one image also torch-cpu; a torch-cpu batch, whose images
 * share one noise draw, writes "RNG: torch-cpu" with "Batch size" and "Batch pos".
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <strings.h>
#include <unistd.h>

#include "cli/cmd_gen.h"
#include "mood/image.h"
#include "mood/params.h"

int gen_parse_rng(mood_rng_kind *out, const char *s)
{
    if (strcmp(s, "torch-cpu") == 0)
        *out = MOOD_RNG_TORCH_CPU;
    else if (strcmp(s, "torch-cuda") == 0 || strcmp(s, "GPU") == 0)
        *out = MOOD_RNG_TORCH_CUDA;
    else if (strcmp(s, "mood") == 0 || strcmp(s, "CPU") == 0)
        *out = MOOD_RNG_MOOD;
    else
        return -1;
    return 0;
}

/* ----- writing ------------------------------------------------------------------------------ */

/* "out.png" -> "out-3.png" for image i of a batch (i counts from 1). */
static char *image_path(const gen_run *r, int i)
{
    const char *o = r->args.output ? r->args.output : r->default_output;
    char *p;
    size_t n;
    const char *dot;
    n = strlen(o) + 32;
    if (!(p = malloc(n)))
        return NULL;
    if (r->args.opts.batch == 1 || r->args.keep_index >= 0) {
        snprintf(p, n, "%s", o);
        return p;
    }
    dot = strrchr(o, '.');
    if (!dot || strchr(dot, '/'))
        dot = o + strlen(o);
    snprintf(p, n, "%.*s-%d%s", (int)(dot - o), o, i, dot);
    return p;
}

#define CLAIM CLI_CLAIM_TEXT

/* The process whose claim the file at p is (its placeholder text), 0 when it is none: an image,
 * or anything else, is never taken for a claim. */
static long claim_owner(const char *p)
{
    char buf[128];
    long pid = 0;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n > (ssize_t)strlen(CLAIM) && memcmp(buf, CLAIM, strlen(CLAIM)) == 0) {
        buf[n] = '\0';
        pid = strtol(buf + strlen(CLAIM), NULL, 10);
    }
    return pid > 0 ? pid : 0;
}

/* Removes the placeholders reserve_names made for images 1..n (the rest when a run fails). */
static void release_names(const gen_run *r, int n)
{
    for (int i = 1; i <= n; i++) {
        char *p = image_path(r, i);
        if (p && claim_owner(p) == (long)getpid()) /* not written: still the placeholder */
            unlink(p);
        free(p);
    }
}

/* Creates p exclusively with a placeholder naming this process; a placeholder left by a process
 * that is gone (killed with -9, out of memory: no clean-up ran) is taken over. Two runs may find
 * the same dead one: each moves it aside under a name of its own first (rename is atomic), and
 * deletes it only when what it moved is still that placeholder; a fresh claim it moved by
 * mistake goes back. -1 with errno (EEXIST: taken). */
static int claim_name(const char *p)
{
    for (int tries = 0; tries < 3; tries++) {
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        char aside[4200];
        long owner;
        if (fd >= 0) {
            char text[128];
            int n = snprintf(text, sizeof text, CLAIM "%ld\n", (long)getpid());
            ssize_t w = write(fd, text, (size_t)n);
            close(fd);
            return w == n ? 0 : (unlink(p), -1);
        }
        if (errno != EEXIST)
            return -1; /* the name cannot be created at all (errno says why): no other would */
        if ((owner = claim_owner(p)) == 0 || !(kill((pid_t)owner, 0) != 0 && errno == ESRCH))
            break;
        snprintf(aside, sizeof aside, "%s.stale-%ld", p, (long)getpid());
        if (rename(p, aside) != 0)
            continue;                      /* another run moved it: try the name again */
        if (claim_owner(aside) != owner) { /* not the dead claim any more: put it back */
            (void)!link(aside, p);         /* fails only when a third run took the name meanwhile */
            unlink(aside);
            break;
        }
        unlink(aside);
    }
    errno = EEXIST;
    return -1;
}

/* Claims every image name of the run (claim_name): 1 when all were free, 0 when one was taken,
 * -1 when one cannot be created at all (an unwritable folder: the write says why); those claimed
 * are released again. */
static int reserve_names(const gen_run *r)
{
    for (int i = 1; i <= r->args.opts.batch; i++) {
        char *p = image_path(r, i);
        int ok = p ? claim_name(p) : -1;
        if (ok == 0)
            cli_claim_add(p);
        free(p);
        if (ok != 0) {
            int taken = errno == EEXIST;
            release_names(r, i - 1);
            return taken ? 0 : -1;
        }
    }
    return 1;
}

/* Comparing styles at one seed is the everyday use: without -o, a second run must not replace
 * the first's image (A1111 and ComfyUI number theirs). The names are claimed before sampling,
 * so two runs at once take different ones; the images then replace the empty claims. An
 * explicit -o is replaced, as asked. */
void gen_pick_default_output(gen_run *r)
{
    unsigned long long seed = (unsigned long long)r->args.opts.seed;
    snprintf(r->default_output, sizeof r->default_output, "mood-%llu.png", seed);
    int got;
    /* another name only when this one is taken: any other failure would fail every name */
    for (int v = 2; (got = reserve_names(r)) == 0 && v < 100000; v++)
        snprintf(r->default_output, sizeof r->default_output, "mood-%llu-v%d.png", seed, v);
    r->reserved = got > 0;
}

void gen_release_default_output(gen_run *r)
{
    if (r->reserved)
        release_names(r, r->args.opts.batch);
    r->reserved = 0;
    cli_claims_clear();
}

static int set_num(mood_params *p, const char *key, const char *fmt, double v)
{
    char buf[64];
    snprintf(buf, sizeof buf, fmt, v);
    return mood_params_set(p, key, buf);
}

/* Exact: a seed past 2^53 would change as a double, and the image with it. */
static int set_seed(mood_params *p, uint64_t seed)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)seed);
    return mood_params_set(p, "Seed", buf);
}

/* The shortest decimal that reads back as the same float: the engine applies multipliers as
 * floats, so --from-png of it applies the same ones, and 0.7 x 0.6 is written 0.42. */
static void format_weight(char out[32], double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if ((float)strtod(out, NULL) == (float)v)
            return;
    }
}

/* The prompt with one tag per adapter as A1111 writes and reads it: <lora:ALIAS:W> when the
 * text encoder and the UNet take the same multiplier, else <lora:ALIAS:TE:UNET>; a DyLoRA cut
 * adds :dyn=N. */
static char *tagged_prompt(const gen_run *r)
{
    size_t n = strlen(r->styles.prompt) + 1;
    char *s, *end, te[32], unet[32];
    for (size_t i = 0; i < r->styles.n; i++)
        n += strlen(r->styles.adapters[i].alias) + 80;
    if (!(s = malloc(n)))
        return NULL;
    end = s + snprintf(s, n, "%s", r->styles.prompt);
    for (size_t i = 0; i < r->styles.n; i++) {
        const mood_resolved_adapter *a = &r->styles.adapters[i];
        format_weight(te, a->te);
        format_weight(unet, a->unet);
        end += snprintf(end, n - (size_t)(end - s), " <lora:%s:%s%s%s", a->alias, te,
                        strcmp(te, unet) ? ":" : "", strcmp(te, unet) ? unet : "");
        if (a->dyn)
            end += snprintf(end, n - (size_t)(end - s), ":dyn=%d", a->dyn);
        end += snprintf(end, n - (size_t)(end - s), ">");
    }
    return s;
}

int gen_params_fill(mood_params *p, const mood_gen_options *o, const mood_model *model,
                    const char *prompt, const char *negative, int i)
{
    char hash[11], size[32];
    int batch_noise = o->rng == MOOD_RNG_TORCH_CPU && o->batch > 1, err;
    uint64_t seed = batch_noise ? o->seed : o->seed + (uint64_t)i;
    snprintf(size, sizeof size, "%dx%d", o->width, o->height);
    err = mood_params_set_prompt(p, prompt, negative);
    if (!err)
        err = set_num(p, "Steps", "%.0f", o->steps);
    if (!err)
        err = mood_params_set(p, "Sampler", mood_sampler_a1111_name(o->sampler));
    if (!err && o->schedule == MOOD_SCHEDULE_KARRAS)
        err = mood_params_set(p, "Schedule type", "Karras");
    if (!err)
        err = set_num(p, "CFG scale", "%g", o->cfg);
    if (!err)
        err = set_seed(p, seed);
    if (!err)
        err = mood_params_set(p, "Size", size);
    if (!err && (err = mood_model_short_hash(model, hash)) == 0)
        err = mood_params_set(p, "Model hash", hash);
    if (!err)
        err = mood_params_set(p, "Model", mood_model_name(model));
    if (!err && o->clip_skip > 1)
        err = set_num(p, "Clip skip", "%.0f", o->clip_skip);
    if (!err && o->rng != MOOD_RNG_TORCH_CUDA)
        err = mood_params_set(p, "RNG", batch_noise ? "torch-cpu" : "CPU");
    if (!err && o->batch > 1 && (err = set_num(p, "Batch size", "%.0f", o->batch)) == 0)
        err = set_num(p, "Batch pos", "%.0f", i);
    if (!err) {
        char v[64];
        snprintf(v, sizeof v, "mood %s", mood_version());
        err = mood_params_set(p, "Version", v);
    }
    return err;
}

/* Image i's parameters text. */
static int build_params(mood_params *p, const gen_run *r, int i)
{
    char *prompt = tagged_prompt(r);
    int err;
    if (!prompt)
        return MOOD_ENOMEM;
    err = gen_params_fill(p, &r->args.opts, r->model, prompt, r->styles.negative, i);
    free(prompt);
    /* one entry per LoRA, under the alias its tags carry (a LoRA applied twice has one alias) */
    for (size_t k = 0; k < r->styles.n && !err; k++) {
        const mood_resolved_adapter *a = &r->styles.adapters[k];
        size_t j = 0;
        while (j < k && strcmp(r->styles.adapters[j].alias, a->alias) != 0)
            j++;
        if (a->hash[0] && j == k)
            err = mood_params_add_lora_hash(p, a->alias, a->hash);
    }
    return err;
}

int gen_write_png(const char *path, const float *chw, int w, int h, const char *text)
{
    mood_image *img = NULL;
    const char *keys[] = {"parameters"}, *values[] = {text};
    int err = mood_image_from_float(&img, chw, 3, w, h);
    if (!err)
        err = mood_image_write_png(path, img, keys, values, text ? 1 : 0);
    mood_image_free(img);
    return err;
}

static int write_one(gen_run *r, int i, cJSON *list)
{
    const mood_gen_options *o = &r->args.opts;
    size_t per = (size_t)3 * o->width * o->height;
    mood_params p;
    char *text = NULL, *path = image_path(r, i + 1);
    int err;
    mood_params_init(&p);
    if (!path)
        err = MOOD_ENOMEM;
    else if ((err = build_params(&p, r, i)) == 0 && (err = mood_params_format(&text, &p)) == 0)
        err = gen_write_png(path, r->images + (size_t)i * per, o->width, o->height, text);
    if (!err && list) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "path", path);
        char seed[24]; /* a raw number: exact past 2^53, where a double is not */
        snprintf(seed, sizeof seed, "%llu",
                 (unsigned long long)(o->rng == MOOD_RNG_TORCH_CPU && o->batch > 1
                                          ? o->seed
                                          : o->seed + (uint64_t)i));
        cJSON_AddRawToObject(e, "seed", seed);
        cJSON_AddStringToObject(e, "parameters", text);
        cJSON_AddItemToArray(list, e);
    } else if (!err) {
        printf("%s\n", path);
    }
    mood_params_free_string(text);
    mood_params_dispose(&p);
    free(path);
    return err;
}

/* The adapters applied, for scripts: each LoRA file with the multipliers it was applied at. */
static void add_adapters_json(cJSON *root, const gen_run *r)
{
    cJSON *list = cJSON_AddArrayToObject(root, "adapters");
    for (size_t i = 0; i < r->styles.n; i++) {
        const mood_resolved_adapter *a = &r->styles.adapters[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", a->name);
        cJSON_AddStringToObject(e, "alias", a->alias);
        cJSON_AddStringToObject(e, "path", a->path);
        cJSON_AddNumberToObject(e, "unet", a->unet);
        cJSON_AddNumberToObject(e, "te", a->te);
        if (a->dyn)
            cJSON_AddNumberToObject(e, "dyn", a->dyn);
        if (a->hash[0])
            cJSON_AddStringToObject(e, "autov3_short", a->hash);
        cJSON_AddItemToArray(list, e);
    }
}

int gen_write_outputs(gen_run *r)
{
    cJSON *root = r->args.json ? cJSON_CreateObject() : NULL, *list = NULL;
    int err = 0;
    if (root) {
        list = cJSON_AddArrayToObject(root, "images");
        cJSON_AddStringToObject(root, "prompt", r->styles.prompt);
        cJSON_AddStringToObject(root, "negative", r->styles.negative);
        cJSON_AddStringToObject(root, "styles", r->styles.styles_used);
        add_adapters_json(root, r);
        cJSON_AddNumberToObject(root, "load_s", r->load_s);
        cJSON_AddNumberToObject(root, "generate_s", r->generate_s);
    }
    for (int i = 0; i < r->args.opts.batch && !err; i++) {
        if (r->args.keep_index >= 0 && i != r->args.keep_index)
            continue;
        err = write_one(r, i, list);
    }
    if (err) {
        int rc = cli_fail(err);
        if (root) { /* a script still learns which images of the batch were written */
            cJSON_AddStringToObject(root, "error", mood_error_last());
            cli_print_json(root);
        }
        return rc;
    }
    if (!r->args.json)
        fprintf(stderr, "seed %llu\n", (unsigned long long)r->args.opts.seed);
    return root ? cli_print_json(root) : 0;
}

int gen_write_preview(const float *images, int batch, int width, int height, int step,
                      void *payload)
{
    gen_run *r = payload;
    char *path = image_path(r, 1), *pv;
    size_t n;
    int err;
    (void)batch;
    (void)step;
    if (!path)
        return MOOD_ENOMEM;
    n = strlen(path) + 16;
    if (!(pv = malloc(n))) {
        free(path);
        return MOOD_ENOMEM;
    }
    snprintf(pv, n, "%s.preview.png", path);
    /* a preview is a convenience: one that cannot be written (disk full) is said once, with
     * its cause, and the image is still made */
    if ((err = gen_write_png(pv, images, width, height, NULL)) != 0 && !r->preview_failed) {
        cli_warn("preview not written (the image still will be): %s", mood_error_last());
        r->preview_failed = 1;
    }
    free(path);
    free(pv);
    return 0;
}

/* ----- --from-png --------------------------------------------------------------------------- */

/* Sampler and schedule from the parameters; warns and keeps the default when unknown. */
static void png_sampler(gen_args *a, const mood_params *p)
{
    const char *sched = p->schedule_type;
    if (a->set.sampler || !p->sampler)
        return;
    if (mood_sampler_parse(&a->opts.sampler, &a->opts.schedule, p->sampler) != 0) {
        cli_warn("sampler '%s' of the image is not one mood has; using %s", p->sampler,
                 mood_sampler_a1111_name(a->opts.sampler));
        return;
    }
    if (sched && strcmp(sched, "Automatic") != 0 &&
        mood_sigma_schedule_parse(&a->opts.schedule, sched) != 0)
        cli_warn("schedule type '%s' of the image is not one mood has; using the default", sched);
    /* A1111 shows the schedule for every sampler; mood's DDIM and LCM follow their own */
    if (a->opts.schedule == MOOD_SCHEDULE_KARRAS &&
        (a->opts.sampler == MOOD_SAMPLER_DDIM || a->opts.sampler == MOOD_SAMPLER_LCM)) {
        cli_warn("the image's schedule type Karras does not apply to %s in mood (it follows its "
                 "own timesteps); using that",
                 mood_sampler_a1111_name(a->opts.sampler));
        a->opts.schedule = MOOD_SCHEDULE_DEFAULT;
    }
}

/* A whole number from 0 to max ("Batch size: abc" is not one). */
static int png_int(int *out, const char *s, long max)
{
    char *end;
    long v = s ? strtol(s, &end, 10) : -1;
    if (!s || end == s || *end || v < 0 || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

static void png_rng(gen_args *a, const mood_params *p)
{
    const char *rng = mood_params_get(p, "RNG"), *pos = mood_params_get(p, "Batch pos"),
               *bs = mood_params_get(p, "Batch size");
    int batch, keep;
    if (a->set.rng)
        return;
    if (!rng || gen_parse_rng(&a->opts.rng, rng) != 0) {
        if (rng && strcmp(rng, "GPU") != 0)
            cli_warn("RNG '%s' of the image is not one mood has; using torch-cuda", rng);
        a->opts.rng = MOOD_RNG_TORCH_CUDA;
    }
    if (a->opts.rng != MOOD_RNG_TORCH_CPU || !pos || !bs)
        return;
    /* the image is one of a batch drawn together: draw the batch, keep that one */
    if (png_int(&batch, bs, 64) != 0 || batch < 1 || png_int(&keep, pos, batch - 1) != 0) {
        cli_warn("\"Batch size: %s, Batch pos: %s\" of the image is not a batch mood can draw; "
                 "drawing one image: the image will differ",
                 bs, pos);
        return;
    }
    a->opts.batch = batch;
    a->keep_index = keep;
}

/* A1111 settings that change the image and that mood does not reproduce (modules/processing.py
 * create_infotext, the samplers' extra_generation_params; ecosystem.md section 4.1). `off`:
 * the value that means "not used" (no warning); NULL: any value is used. `with`: a key shown in
 * the same warning; `unless`: no warning of its own when that key is there (it has one). */
static const struct png_unmatched {
    const char *key, *off, *with, *unless, *what;
} png_unmatched[] = {
    {"Variation seed strength", "0", "Variation seed", NULL, "variation seeds"},
    {"Seed resize from", NULL, NULL, NULL, "seed resizing"},
    {"ENSD", "0", NULL, NULL, "an eta noise seed delta"},
    {"Eta", "1", NULL, NULL, "an ancestral sampler's eta"},
    {"Eta DDIM", "0", NULL, NULL, "a DDIM eta"},
    {"VAE", NULL, "VAE hash", NULL, "a separate VAE"},
    {"VAE hash", NULL, NULL, "VAE", "a separate VAE"},
    {"VAE Decoder", "Full", NULL, NULL, "an approximate VAE decoder"},
    {"Noise multiplier", "1", NULL, NULL, "a noise multiplier"},
    {"Hypernet", NULL, "Hypernet strength", NULL, "a hypernetwork"},
    {"Hypernet hash", NULL, NULL, "Hypernet", "a hypernetwork"},
    {"Face restoration", NULL, NULL, NULL, "face restoration"},
    {"Tiling", "False", NULL, NULL, "tiling"},
    {"Token merging ratio", "0", NULL, NULL, "token merging"},
    {"NGMS", "0", NULL, NULL, "a negative guidance minimum sigma"},
    {"Skip Early CFG", "0", NULL, NULL, "skipping early CFG"},
    {"Refiner", NULL, "Refiner switch at", NULL, "a refiner model"},
    {"FP8 weight", "Disable", NULL, NULL, "FP8 weights"},
    {"Sigma churn", "0", NULL, NULL, "a sampler setting"},
    {"Sigma tmin", "0", NULL, NULL, "a sampler setting"},
    {"Sigma tmax", NULL, NULL, NULL, "a sampler setting"},
    {"Sigma noise", "1", NULL, NULL, "a sampler setting"},
    {"Schedule max sigma", NULL, NULL, NULL, "a custom noise schedule"},
    {"Schedule min sigma", NULL, NULL, NULL, "a custom noise schedule"},
    {"Schedule rho", NULL, NULL, NULL, "a custom noise schedule"},
    {"Beta schedule alpha", NULL, NULL, NULL, "a custom noise schedule"},
    {"Beta schedule beta", NULL, NULL, NULL, "a custom noise schedule"},
    {"Discard penultimate sigma", "False", NULL, NULL, "a custom noise schedule"},
    {"SGM noise multiplier", "False", NULL, NULL, "SGM's noise multiplier"},
    {"Downcast alphas_cumprod", "False", NULL, NULL, "downcast alphas_cumprod"},
    {"Emphasis", "Original", NULL, NULL, "another emphasis mode"},
    {"Old emphasis implementation", "False", NULL, NULL, "another emphasis mode"},
    {"Old prompt editing timelines", "False", NULL, NULL, "old prompt editing timelines"},
    {"Pad conds", "False", NULL, NULL, "padded conditionings"},
    {"Pad conds v0", "False", NULL, NULL, "padded conditionings"},
};

/* Whether an image's value is the "not used" one: equal as numbers, else as text (any case). */
static int png_is_off(const char *v, const char *off)
{
    char *e1, *e2;
    double x = strtod(v, &e1), y = strtod(off, &e2);
    if (e1 != v && !*e1 && e2 != off && !*e2)
        return x == y;
    return strcasecmp(v, off) == 0;
}

/* The settings of the table above. */
static void png_warn_settings(const mood_params *p)
{
    for (size_t i = 0; i < sizeof png_unmatched / sizeof png_unmatched[0]; i++) {
        const struct png_unmatched *u = &png_unmatched[i];
        const mood_params_extra *x = NULL, *w = NULL;
        for (size_t k = 0; k < p->n_extras; k++) {
            if (!strcmp(p->extras[k].key, u->key))
                x = &p->extras[k];
            if (u->with && !strcmp(p->extras[k].key, u->with))
                w = &p->extras[k];
        }
        if (!x || (u->off && png_is_off(x->value, u->off)) ||
            (u->unless && mood_params_get(p, u->unless)))
            continue;
        cli_warn("the image was made with \"%s: %s\"%s%s%s%s%s (%s), which mood does not do: "
                 "the image will differ",
                 x->key, x->value, w ? " and \"" : "", w ? w->key : "", w ? ": " : "",
                 w ? w->value : "", w ? "\"" : "", u->what);
    }
}

/* One warning for every key starting with `prefix` (hires fix, ADetailer, ControlNet): their
 * pairs, and `also` ("Denoising strength: 0.5") when given. 1 when there was one. */
static int png_warn_group(const mood_params *p, const char *prefix, const char *also,
                          const char *what)
{
    char list[512] = "";
    size_t n = 0, len = strlen(prefix);
    for (size_t k = 0; k < p->n_extras; k++) {
        if (strncmp(p->extras[k].key, prefix, len) != 0 || n >= sizeof list - 1)
            continue;
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s: %s", n ? ", " : "",
                              p->extras[k].key, p->extras[k].value);
    }
    if (!n)
        return 0;
    if (also && n < sizeof list - 1)
        snprintf(list + n, sizeof list - n, ", %s", also);
    cli_warn("the image was made with %s (%s), which mood does not do: the image will differ", what,
             list);
    return 1;
}

/* Hires fix and img2img (Denoising strength, unless it does not parse), ADetailer, ControlNet. */
static void png_warn_passes(const mood_params *p)
{
    char den[96] = "";
    const char *raw = NULL;
    for (size_t k = 0; k < p->n_extras; k++)
        if (!strcmp(p->extras[k].key, "Denoising strength"))
            raw = p->extras[k].value;
    if (!isnan(p->denoising_strength))
        snprintf(den, sizeof den, "Denoising strength: %g", p->denoising_strength);
    else if (raw)
        snprintf(den, sizeof den, "Denoising strength: %.60s", raw);
    if (!png_warn_group(p, "Hires ", *den ? den : NULL, "hires fix, a second upscaled pass,") &&
        *den)
        cli_warn("the image was made with img2img (%s), which mood does not do (it regenerates "
                 "from noise): the image will differ",
                 den);
    png_warn_group(p, "ADetailer ", NULL, "ADetailer (inpainted details)");
    png_warn_group(p, "ControlNet", NULL, "ControlNet (a control image)");
}

/* Known keys whose value did not parse (they stay among the extras): "Steps: abc". */
static void png_warn_unparsed(const gen_args *a, const mood_params *p)
{
    static const char *const keys[] = {"Steps", "CFG scale", "Seed", "Size", "Clip skip"};
    const int set[] = {a->set.steps, a->set.cfg, a->set.seed, a->set.size, a->set.clip_skip};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        for (size_t k = 0; k < p->n_extras && !set[i]; k++)
            if (!strcmp(p->extras[k].key, keys[i]))
                cli_warn("\"%s: %s\" of the image is not a value mood can use; using the "
                         "default: the image will differ",
                         keys[i], p->extras[k].value);
}

/* Textual inversions: their words reach the text encoder as plain words. */
static void png_warn_embeddings(const mood_params *p)
{
    for (size_t i = 0; i < p->n_ti_hashes; i++)
        cli_warn("the image used the textual inversion (embedding) %s (hash %s), which mood does "
                 "not load (its name is read as plain words): the image will differ",
                 p->ti_hashes[i].name, p->ti_hashes[i].hash);
}

/* Whether s..end is a number ([+-] digits and dots, white space around): A1111's "when". */
static int png_is_when(const char *s, const char *end)
{
    int digits = 0;
    while (s < end && isspace((unsigned char)*s))
        s++;
    s += s < end && (*s == '+' || *s == '-');
    for (; s < end && (isdigit((unsigned char)*s) || *s == '.'); s++)
        digits += isdigit((unsigned char)*s) != 0;
    while (s < end && isspace((unsigned char)*s))
        s++;
    return digits && s == end;
}

/* A1111's prompt editing [from:to:when] / [to:when] and alternation [a|b] (modules/
 * prompt_parser.py), which mood's prompt syntax does not have: one warning for each. */
/* A1111's composable diffusion: "a cat AND a dog" (AND as a word in capitals, its
 * prompt_parser's re_AND) conditions on each part and mixes them. */
static void warn_and(const char *prompt, const char *whose, const char *which, const char *then)
{
    for (const char *p = prompt; (p = strstr(p, "AND")) != NULL; p += 3) {
        int start = p == prompt || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int end = !(isalnum((unsigned char)p[3]) || p[3] == '_');
        if (start && end) {
            cli_warn("%s %s has AND (A1111's composable diffusion), which mood does not have: it "
                     "reads the text as it stands%s",
                     whose, which, then);
            return;
        }
    }
}

/* whose: "the image's" (--from-png) or "the"; then: what follows for the image. */
static void warn_editing(const char *prompt, const char *whose, const char *which, const char *then)
{
    for (const char *p = prompt; *p; p++) {
        const char *q, *colon = NULL;
        int depth = 0, parens = 0, bar = 0;
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p != '[')
            continue;
        for (q = p; *q; q++) {
            if (*q == '\\' && q[1])
                q++;
            else if (*q == '[')
                depth++;
            else if (*q == ']' && --depth == 0)
                break;
            else if (*q == '(' || *q == ')')
                parens += *q == '(' ? 1 : -1;
            else if (depth == 1 && parens == 0 && *q == '|')
                bar = 1;
            else if (depth == 1 && parens == 0 && *q == ':')
                colon = q;
        }
        if (!*q)
            return;
        if (bar || (colon && png_is_when(colon + 1, q)))
            cli_warn("%s %s has %s \"%.*s\", which mood does not have (it reads the text as it "
                     "stands)%s",
                     whose, which, bar ? "alternation" : "prompt editing", (int)(q - p + 1), p,
                     then);
        p = q;
    }
}

/* Prompt syntax of A1111's that mood reads as plain text: said for the image (--from-png) and
 * for a prompt typed with it, whose PNG A1111 would run differently. A1111 splits only the
 * prompt at AND (get_multicond_learned_conditioning); its negative is one text there too. */
static void warn_a1111_only(const char *prompt, const char *whose, const char *which,
                            const char *then)
{
    warn_editing(prompt, whose, which, then);
    if (strcmp(which, "prompt") == 0)
        warn_and(prompt, whose, which, then);
}

void gen_warn_a1111_syntax(const gen_args *a)
{
    static const char then[] =
        "; A1111 would run this text differently from the image mood makes of it";
    if (a->prompt)
        warn_a1111_only(a->prompt, "the", "prompt", then);
    if (a->negative)
        warn_a1111_only(a->negative, "the", "negative prompt", then);
}

/* A1111 removes every extra-network tag <word:...> from the prompt (modules/extra_networks.py):
 * the tags mood has no network for (<hypernet:...>) are removed too, each with a warning. The
 * prompt without them into a->png_prompt (unchanged: nothing done). */
int gen_strip_networks(gen_args *a, const char *whose, const char *then)
{
    const char *s = a->prompt, *p = s;
    char *out = malloc(strlen(s) + 1), *o = out;
    int changed = 0;
    if (!out)
        return 2;
    while (*p) {
        const char *w = p + 1, *close;
        while (isalnum((unsigned char)*w) || *w == '_' || (unsigned char)*w >= 0x80)
            w++;
        if (*p != '<' || w == p + 1 || *w != ':' || !(close = strchr(w + 1, '>')) ||
            close == w + 1 || !strncasecmp(p, "<lora:", 6) || !strncasecmp(p, "<lyco:", 6) ||
            !strncasecmp(p, "<style:", 7)) {
            *o++ = *p++;
            continue;
        }
        cli_warn("%s prompt tag %.*s is %s mood does not have; left out%s", whose,
                 (int)(close - p + 1), p,
                 strncmp(p, "<hypernet:", 10) ? "an extra network" : "a hypernetwork, which", then);
        p = close + 1;
        changed = 1;
    }
    *o = '\0';
    if (!changed) {
        free(out);
        return 0;
    }
    free(a->png_prompt);
    a->png_prompt = out;
    a->prompt = out;
    return 0;
}

/* Everything of the image mood does not reproduce, each named with its value. */
static int png_warn_unmatched(gen_args *a, const mood_params *p)
{
    png_warn_unparsed(a, p);
    png_warn_settings(p);
    png_warn_passes(p);
    png_warn_embeddings(p);
    if (!a->set.prompt)
        warn_a1111_only(p->prompt, "the image's", "prompt", ": the image will differ");
    if (!a->set.negative)
        warn_a1111_only(p->negative_prompt, "the image's", "negative prompt",
                        ": the image will differ");
    return a->set.prompt ? 0 : gen_strip_networks(a, "the image's", ": the image will differ");
}

static int png_fill(gen_args *a, const mood_params *p)
{
    if (!a->set.prompt)
        a->prompt = p->prompt;
    if (!a->set.negative)
        a->negative = p->negative_prompt;
    if (!a->set.steps && p->steps > 0)
        a->opts.steps = p->steps;
    if (!a->set.cfg && !isnan(p->cfg_scale))
        a->opts.cfg = p->cfg_scale;
    if (!a->set.seed && p->has_seed)
        a->seed = p->seed, a->set.seed = 1;
    if (!a->set.size && p->width > 0 && p->height > 0)
        a->opts.width = p->width, a->opts.height = p->height;
    if (!a->set.clip_skip && p->clip_skip > 0)
        a->opts.clip_skip = p->clip_skip;
    if (!a->model && p->model)
        a->model = p->model;
    png_sampler(a, p);
    png_rng(a, p);
    return png_warn_unmatched(a, p);
}

/* A PNG without A1111's text is bad input (exit 1), not a missing file; ComfyUI's graph in it
 * (its "prompt" text) is worth naming, since it is the usual reason. */
static int no_parameters(const char *path, int err)
{
    struct stat st;
    char *graph = NULL;
    if (err != MOOD_ENOTFOUND || stat(path, &st) != 0)
        return cli_fail(err);
    int comfy = mood_image_read_png_text(&graph, path, "prompt") == 0;
    mood_image_free_string(graph);
    fprintf(stderr,
            "mood: error: %s has no A1111 \"parameters\" text%s; --from-png reads the parameters "
            "AUTOMATIC1111, Forge and mood write\n",
            path,
            comfy ? " but a ComfyUI workflow (its \"prompt\" graph), which mood does not run"
                  : " (not made by A1111, Forge or mood, or its metadata was removed)");
    return 1;
}

int gen_apply_png(gen_args *a)
{
    mood_params *p = calloc(1, sizeof *p);
    char *text = NULL;
    int err;
    if (!p)
        return 2;
    mood_params_init(p);
    a->png_params = p;
    if ((err = mood_image_read_png_text(&text, a->from_png, "parameters")) != 0)
        return no_parameters(a->from_png, err);
    a->png_text = text;
    if ((err = mood_params_parse_lenient(p, text)) != 0)
        return cli_fail(err);
    if (!p->has_details)
        cli_warn("%s: its parameters have no settings line (\"Steps: ..., Seed: ...\"): only the "
                 "prompt is taken from it; the settings are mood's defaults or the options given",
                 a->from_png);
    else if (p->civitai_layout)
        cli_warn("%s: its parameters are not in A1111's layout (one line, or lines such as "
                 "\"Template:\" after the settings); read as Civitai reads them",
                 a->from_png);
    return png_fill(a, p);
}

/* Whether the tag name s[0..n) is `name` as "Lora hashes" writes it (A1111 drops ',' and ':'). */
static int png_same_name(const char *s, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ',')
            continue;
        if (*name++ != s[i])
            return 0;
    }
    return *name == '\0';
}

/* The hash the image records for the k-th (0-based) tag named s[0..n): the k-th entry of that
 * name (images mood made before names were unique hold several), else the last; NULL: none. */
static const char *png_hash_for(const mood_params *p, const char *s, size_t n, size_t k)
{
    const char *last = NULL;
    for (size_t i = 0; i < p->n_lora_hashes; i++) {
        if (!png_same_name(s, n, p->lora_hashes[i].name))
            continue;
        last = p->lora_hashes[i].hash;
        if (k-- == 0)
            break;
    }
    return last;
}

/* The <lora:NAME...> / <lyco:NAME...> tag at s (its '>' at *close), else 0; *name_len: NAME's. */
static int png_lora_tag(const char *s, const char **close, size_t *name_len)
{
    if (strncasecmp(s, "<lora:", 6) != 0 && strncasecmp(s, "<lyco:", 6) != 0)
        return 0;
    if (!(*close = strchr(s, '>')))
        return 0;
    *name_len = strcspn(s + 6, ":>");
    return 1;
}

/* 8 to 64 hex digits: a hash the registry can look up (not LyCORIS's "0x..."). */
static int png_is_hex(const char *h)
{
    size_t n = strspn(h, "0123456789abcdefABCDEF");
    return n >= 8 && n <= 64 && !h[n];
}

/* Whether the tag s..close has the argument `arg` (":hash=") already. */
static int png_has_arg(const char *s, const char *close, const char *arg)
{
    size_t n = strlen(arg);
    for (; s + n <= close; s++)
        if (!strncmp(s, arg, n))
            return 1;
    return 0;
}

/* The prompt with ":hash=H" added to every LoRA tag whose name the image gives a hash for, so
 * that the registry's LoRA of that hash is applied at the tag's weights (mood/styles.h); NULL:
 * out of memory. */
static char *png_add_hashes(const char *prompt, const mood_params *p)
{
    size_t n = strlen(prompt) + 1;
    char *out, *o;
    const char *close, *h;
    size_t len;
    for (const char *q = prompt; (q = strchr(q, '<')); q++)
        n += 80; /* ":hash=" and at most 64 hex digits */
    if (!(out = malloc(n)))
        return NULL;
    o = out;
    for (const char *q = prompt; *q;) {
        size_t k = 0;
        if (!png_lora_tag(q, &close, &len)) {
            *o++ = *q++;
            continue;
        }
        for (const char *e = prompt; e < q; e++) { /* earlier tags of the same name */
            const char *c2;
            size_t l2;
            k += png_lora_tag(e, &c2, &l2) && l2 == len && !strncmp(e + 6, q + 6, len);
        }
        h = png_hash_for(p, q + 6, len, k);
        memcpy(o, q, (size_t)(close - q));
        o += close - q;
        if (h && png_is_hex(h) && !png_has_arg(q, close, ":hash="))
            o += sprintf(o, ":hash=%s", h);
        *o++ = '>';
        q = close + 1;
    }
    *o = '\0';
    return out;
}

/* Whether <lora:name> resolves as it is: a file, or a style of that name. */
static int lora_name_known(mood_registry *reg, const char *name)
{
    char path[4096];
    char *json = NULL;
    int known;
    snprintf(path, sizeof path, "%s.safetensors", name);
    if (access(name, R_OK) == 0 || access(path, R_OK) == 0)
        return 1;
    known = reg && mood_registry_show_json(&json, reg, name) == 0;
    mood_registry_free_string(json);
    return known;
}

int gen_remap_png_loras(gen_run *r)
{
    const mood_params *p = r->args.png_params;
    char *tagged;
    for (size_t i = 0; p && i < p->n_lora_hashes; i++) {
        const mood_params_hash *h = &p->lora_hashes[i];
        char *style = NULL;
        if (r->reg && mood_registry_style_by_hash(&style, r->reg, h->hash) == 0) {
            if (strcasecmp(style, h->name) != 0)
                cli_warn("LoRA %s of the image found in the registry by its hash %s: style %s",
                         h->name, h->hash, style);
        } else if (!lora_name_known(r->reg, h->name)) {
            cli_warn("LoRA %s (hash %s) of the image is neither a file nor in the registry; "
                     "left out",
                     h->name, h->hash);
        }
        mood_registry_free_string(style);
    }
    if (!p || !p->n_lora_hashes || !r->args.prompt)
        return 0;
    /* the hash wins over the name: the resolver applies the registry's LoRA of that hash */
    if (!(tagged = png_add_hashes(r->args.prompt, p)))
        return 2;
    free(r->args.png_prompt);
    r->args.png_prompt = tagged;
    r->args.prompt = tagged;
    return 0;
}

/* The SHA-256 of an adapter's file (hex): a registry blob's is its name; a file of the user's is
 * hashed (only when an image's hash did not match its AutoV3). "" when it cannot be read. */
static void adapter_sha256(char out[65], const mood_resolved_adapter *a)
{
    const char *b = strstr(a->path, "/blobs/sha256/");
    mood_file_hashes h;
    out[0] = '\0';
    if (b && strlen(b) == 14 + 2 + 1 + 62) {
        snprintf(out, 65, "%.2s%s", b + 14, b + 17);
        return;
    }
    if (mood_hash_file(&h, a->path, NULL, NULL) == 0)
        memcpy(out, h.sha256, 65);
}

/* Whether an adapter is the LoRA of the hash the image records (as long as both are): its AutoV3
 * (A1111's "Lora hashes", 12 hex), or its SHA-256 or AutoV2 (its first 10 hex: Fooocus' "Lora
 * hashes", the Civitai extension's "Hashes"). */
static int png_hash_is(const mood_resolved_adapter *a, const char *hash)
{
    size_t n = strlen(hash);
    char sha[65];
    if (a->hash[0] && strncasecmp(a->hash, hash, n < 12 ? n : 12) == 0)
        return 1;
    if (n != 10 && n != 64)
        return 0;
    adapter_sha256(sha, a);
    return sha[0] && strncasecmp(sha, hash, n) == 0;
}

/* After resolving: warns about LoRAs of the image that were found by name only, with another
 * hash than the image records. */
void gen_check_png_hashes(const gen_run *r)
{
    const mood_params *p = r->args.png_params;
    for (size_t i = 0; p && i < p->n_lora_hashes; i++) {
        const mood_params_hash *h = &p->lora_hashes[i];
        size_t k = 0;
        while (k < r->styles.n && !png_hash_is(&r->styles.adapters[k], h->hash))
            k++;
        if (k < r->styles.n)
            continue; /* the image's LoRA is applied */
        for (k = 0; k < r->styles.n; k++) {
            const mood_resolved_adapter *a = &r->styles.adapters[k];
            if (a->hash[0] && (!strcmp(a->alias, h->name) || !strcmp(a->name, h->name)))
                cli_warn("LoRA %s: the image used hash %s, this one is %s: the result will differ",
                         h->name, h->hash, a->hash);
        }
    }
}

/* After loading: warns when the model is not the one the image names. */
void gen_check_png_model(gen_run *r)
{
    const mood_params *p = r->args.png_params;
    char hash[11];
    if (!p || !p->model_hash || mood_model_short_hash(r->model, hash) != 0)
        return;
    if (strlen(p->model_hash) == 8) { /* A1111 before 2022: AutoV1, of a single-file model */
        mood_file_hashes h;
        int same = mood_hash_file(&h, mood_model_path(r->model), NULL, NULL) == 0 &&
                   strcasecmp(h.autov1, p->model_hash) == 0;
        if (same)
            return;
    }
    if (strcasecmp(hash, p->model_hash) != 0)
        cli_warn("the image was made with model hash %s (%s); %s has %s: the result will differ",
                 p->model_hash, p->model ? p->model : "?", mood_model_name(r->model), hash);
}

void gen_from_png_dispose(gen_args *a)
{
    if (a->png_params) {
        mood_params_dispose(a->png_params);
        free(a->png_params);
    }
    mood_image_free_string(a->png_text);
    free(a->png_prompt);
    a->png_params = NULL;
    a->png_text = NULL;
    a->png_prompt = NULL;
}
