/*
 * cmd_gen_png.c: the image side of `mood gen`: writing each image as a PNG with AUTOMATIC1111's
 * `parameters` text (mood/params.h), previews, the --json report, and --from-png, which reads
 * those parameters back and fills every option the command line did not set.
 *
 * The prompt written is the final prompt (templates and trigger words applied) followed by one
 * <lora:NAME:W> tag per adapter, as A1111 writes its own prompts, so A1111 with files of those
 * names, Civitai (through "Lora hashes") and `mood gen --from-png` all find the same adapters.
 *
 * "RNG": absent means A1111's GPU noise (--rng torch-cuda); "CPU" is A1111's per-image CPU noise,
 * which is mood's --rng mood, and for one image also torch-cpu; a torch-cpu batch, whose images
 * share one noise draw, writes "RNG: torch-cpu" with "Batch size" and "Batch pos".
 */
#include <math.h>
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

/* Whether any image of the run would land on an existing file. */
static int output_taken(const gen_run *r)
{
    struct stat st;
    int taken = 0;
    for (int i = 1; i <= r->args.opts.batch && !taken; i++) {
        char *p = image_path(r, i);
        taken = !p || lstat(p, &st) == 0;
        free(p);
    }
    return taken;
}

/* Comparing styles at one seed is the everyday use: without -o, a second run must not replace
 * the first's image (A1111 and ComfyUI number theirs). An explicit -o is replaced, as asked. */
void gen_pick_default_output(gen_run *r)
{
    unsigned long long seed = (unsigned long long)r->args.opts.seed;
    snprintf(r->default_output, sizeof r->default_output, "mood-%llu.png", seed);
    for (int v = 2; output_taken(r) && v < 100000; v++)
        snprintf(r->default_output, sizeof r->default_output, "mood-%llu-v%d.png", seed, v);
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

/* The prompt with one <lora:NAME:W[:W_TE]> tag per adapter. */
static char *tagged_prompt(const gen_run *r)
{
    size_t n = strlen(r->styles.prompt) + 1;
    char *s, *end;
    for (size_t i = 0; i < r->styles.n; i++)
        n += strlen(r->styles.adapters[i].name) + 64;
    if (!(s = malloc(n)))
        return NULL;
    end = s + snprintf(s, n, "%s", r->styles.prompt);
    for (size_t i = 0; i < r->styles.n; i++) {
        const mood_resolved_adapter *a = &r->styles.adapters[i];
        if (a->te == a->unet)
            end += snprintf(end, n - (size_t)(end - s), " <lora:%s:%g>", a->name, a->unet);
        else
            end +=
                snprintf(end, n - (size_t)(end - s), " <lora:%s:%g:%g>", a->name, a->unet, a->te);
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
    for (size_t k = 0; k < r->styles.n && !err; k++)
        if (r->styles.adapters[k].hash[0])
            err = mood_params_add_lora_hash(p, r->styles.adapters[k].name,
                                            r->styles.adapters[k].hash);
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

int gen_write_outputs(gen_run *r)
{
    cJSON *root = r->args.json ? cJSON_CreateObject() : NULL, *list = NULL;
    int err = 0;
    if (root) {
        list = cJSON_AddArrayToObject(root, "images");
        cJSON_AddStringToObject(root, "prompt", r->styles.prompt);
        cJSON_AddStringToObject(root, "negative", r->styles.negative);
        cJSON_AddStringToObject(root, "styles", r->styles.styles_used);
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
}

static void png_rng(gen_args *a, const mood_params *p)
{
    const char *rng = mood_params_get(p, "RNG"), *pos = mood_params_get(p, "Batch pos"),
               *bs = mood_params_get(p, "Batch size");
    if (a->set.rng)
        return;
    if (!rng || gen_parse_rng(&a->opts.rng, rng) != 0) {
        if (rng && strcmp(rng, "GPU") != 0)
            cli_warn("RNG '%s' of the image is not one mood has; using torch-cuda", rng);
        a->opts.rng = MOOD_RNG_TORCH_CUDA;
    }
    if (a->opts.rng == MOOD_RNG_TORCH_CPU && pos && bs) {
        /* the image is one of a batch drawn together: draw the batch, keep that one */
        a->opts.batch = atoi(bs);
        a->keep_index = atoi(pos);
    }
}

static void png_fill(gen_args *a, const mood_params *p)
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
    if (!isnan(p->denoising_strength))
        cli_warn("the image was made with img2img or hires fix (Denoising strength); mood "
                 "regenerates the txt2img pass only");
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
        return cli_fail(err);
    a->png_text = text;
    if ((err = mood_params_parse(p, text)) != 0)
        return cli_fail(err);
    png_fill(a, p);
    return 0;
}

/* Replaces every "<lora:old:" / "<lora:old>" of `prompt` with the new name; a malloc'd copy. */
static char *rename_tag(const char *prompt, const char *old, const char *new_name)
{
    size_t lo = strlen(old), n = strlen(prompt) + 1, extra = strlen(new_name) + 8;
    const char *p = prompt;
    char *out, *o;
    for (const char *q = prompt; (q = strstr(q, "<lora:")); q++)
        n += extra;
    if (!(out = malloc(n)))
        return NULL;
    o = out;
    while (*p) {
        if (strncmp(p, "<lora:", 6) == 0 && strncmp(p + 6, old, lo) == 0 &&
            (p[6 + lo] == ':' || p[6 + lo] == '>')) {
            o += sprintf(o, "<lora:%s", new_name);
            p += 6 + lo;
            continue;
        }
        *o++ = *p++;
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
    for (size_t i = 0; p && i < p->n_lora_hashes; i++) {
        const mood_params_hash *h = &p->lora_hashes[i];
        char *style = NULL, *renamed;
        if (lora_name_known(r->reg, h->name))
            continue;
        if (!r->reg || mood_registry_style_by_hash(&style, r->reg, h->hash) != 0) {
            cli_warn("LoRA %s (hash %s) of the image is neither a file nor in the registry; "
                     "left out",
                     h->name, h->hash);
            continue;
        }
        if (!(renamed = rename_tag(r->args.prompt, h->name, style))) {
            mood_registry_free_string(style);
            return 2;
        }
        cli_warn("LoRA %s of the image found in the registry by its hash %s: style %s", h->name,
                 h->hash, style);
        mood_registry_free_string(style);
        free(r->args.png_prompt);
        r->args.png_prompt = renamed;
        r->args.prompt = renamed;
    }
    return 0;
}

/* After resolving: warns about adapters whose hash is not the one the image records. */
void gen_check_png_hashes(const gen_run *r)
{
    const mood_params *p = r->args.png_params;
    for (size_t i = 0; p && i < p->n_lora_hashes; i++)
        for (size_t k = 0; k < r->styles.n; k++) {
            const mood_resolved_adapter *a = &r->styles.adapters[k];
            size_t n = strlen(p->lora_hashes[i].hash);
            if (strcmp(a->name, p->lora_hashes[i].name) == 0 && a->hash[0] &&
                strncasecmp(a->hash, p->lora_hashes[i].hash, n < 12 ? n : 12) != 0)
                cli_warn("LoRA %s: the image used hash %s, this one is %s: the result will differ",
                         a->name, p->lora_hashes[i].hash, a->hash);
        }
}

/* After loading: warns when the model is not the one the image names. */
void gen_check_png_model(gen_run *r)
{
    const mood_params *p = r->args.png_params;
    char hash[11];
    if (!p || !p->model_hash || mood_model_short_hash(r->model, hash) != 0)
        return;
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
