/*
 * cmd_gen_png.c: the image side of `mood gen`: writing each image as a PNG with AUTOMATIC1111's
 * `parameters` text (mood/params.h), previews and the --json report (cmd_gen_from_png.c reads
 * those parameters back for --from-png).
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

#include "cli/cli_text.h"
#include "cli/cmd_gen.h"
#include "mood/image.h"
#include "mood/params.h"

int gen_parse_rng(mood_rng_kind *out, const char *s)
{
    if (strcmp(s, "torch-cpu") == 0)
        *out = MOOD_RNG_TORCH_CPU;
    else if (strcmp(s, "torch-cuda") == 0 || strcasecmp(s, "GPU") == 0 || strcasecmp(s, "NV") == 0)
        *out = MOOD_RNG_TORCH_CUDA; /* A1111's "NV": the GPU's Philox noise drawn on the CPU */
    else if (strcmp(s, "mood") == 0 || strcasecmp(s, "CPU") == 0)
        *out = MOOD_RNG_MOOD;
    else
        return -1;
    return 0;
}

static const char *const prediction_names[] = {"eps", "v", "sample"}; /* MOOD_PRED_* order */

int gen_parse_prediction(const char *s)
{
    if (strcmp(s, "epsilon") == 0)
        return MOOD_PRED_EPSILON;
    for (int i = 0; i < 3; i++)
        if (strcmp(s, prediction_names[i]) == 0)
            return i;
    return -1;
}

const char *gen_prediction_name(int prediction)
{
    return prediction >= 0 && prediction < 3 ? prediction_names[prediction] : "?";
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
        /* as floats, which the engine applies: --from-png applies the same multipliers, and
         * 0.7 x 0.6 is written 0.42 */
        mood_params_format_number(te, a->te, 1);
        mood_params_format_number(unet, a->unet, 1);
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
    if (!err) {
        char cfg[32];
        mood_params_format_number(cfg, o->cfg, 0);
        err = mood_params_set(p, "CFG scale", cfg);
    }
    if (!err)
        err = set_seed(p, seed);
    if (!err)
        err = mood_params_set(p, "Size", size);
    if (!err && (err = mood_model_short_hash(model, hash)) == 0)
        err = mood_params_set(p, "Model hash", hash);
    if (!err)
        err = mood_params_set(p, "Model", mood_model_name(model));
    if (!err && o->init_image) { /* img2img: where A1111 puts it */
        char v[32];
        mood_params_format_number(v, o->strength, 0);
        err = mood_params_set(p, "Denoising strength", v);
    }
    if (!err && o->mask) /* A1111 says inpainting so; mood does not blur the mask */
        err = mood_params_set(p, "Mask blur", "0");
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
    /* --prediction: mood's own key (A1111 has none; it shows it and keeps it), so that
     * --from-png overrides the model's type again */
    if (!err && r->args.prediction >= 0)
        err = mood_params_set(p, "Prediction", gen_prediction_name(r->args.prediction));
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

/* The registry styles applied, for scripts: [{name, weight}] from the resolver's
 * "inkwash:0.8, film-grain:0.3" (a style name holds neither ',' nor ':'). */
static void add_styles_json(cJSON *root, const char *used)
{
    cJSON *list = cJSON_AddArrayToObject(root, "styles");
    while (used && *used) {
        size_t n = strcspn(used, ","), colon = n;
        while (colon > 0 && used[colon - 1] != ':')
            colon--;
        cJSON *e = cJSON_CreateObject();
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(colon ? colon - 1 : n), used);
        cJSON_AddStringToObject(e, "name", name);
        cJSON_AddNumberToObject(e, "weight", colon ? strtod(used + colon, NULL) : 1.0);
        cJSON_AddItemToArray(list, e);
        used += n;
        used += strspn(used, ", ");
    }
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
        add_styles_json(root, r->styles.styles_used);
        add_adapters_json(root, r);
        if (r->args.init_image) { /* img2img: what it started from */
            cJSON_AddStringToObject(root, "init_image", r->args.init_image);
            cJSON_AddNumberToObject(root, "strength", r->args.opts.strength);
            if (r->args.mask)
                cJSON_AddStringToObject(root, "mask", r->args.mask);
        }
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
    if (root)
        cli_warnings_json(root); /* what was said on stderr (an unmatched key, a missing LoRA) */
    return root ? cli_print_json(root) : 0;
}

/* The preview's file: the output's name (a batch's, without -N) and ".preview.png". */
static char *preview_path(const gen_run *r)
{
    const char *o = r->args.output ? r->args.output : r->default_output;
    size_t n = strlen(o) + 16;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s.preview.png", o);
    return p;
}

/* A batch's estimates side by side (A1111's live preview of a batch is its grid). */
static int write_preview_grid(const char *path, const float *images, int batch, int w, int h)
{
    mood_image *grid = NULL, **each = calloc((size_t)batch, sizeof *each);
    size_t per = (size_t)3 * w * h;
    int err = each ? 0 : MOOD_ENOMEM;
    for (int i = 0; i < batch && !err; i++)
        err = mood_image_from_float(&each[i], images + (size_t)i * per, 3, w, h);
    if (!err)
        err = mood_image_grid(&grid, (const mood_image *const *)each, (size_t)batch, 0);
    if (!err)
        err = mood_image_write_png(path, grid, NULL, NULL, 0);
    mood_image_free(grid);
    for (int i = 0; each && i < batch; i++)
        mood_image_free(each[i]);
    free(each);
    return err;
}

int gen_write_preview(const float *images, int batch, int width, int height, int step,
                      void *payload)
{
    gen_run *r = payload;
    char *pv = preview_path(r);
    int err;
    (void)step;
    if (!pv)
        return MOOD_ENOMEM;
    if (!r->preview_written && !r->preview_failed && access(pv, F_OK) == 0) {
        /* a file this run did not make (gen replaces no image): no previews, said once */
        cli_warn("preview not written (the image still will be): %s exists, and is not this "
                 "run's to replace",
                 pv);
        r->preview_failed = 1;
    }
    if (r->preview_failed) {
        free(pv);
        return 0;
    }
    if (r->args.keep_index >= 0) /* --from-png of one image of a batch: that image alone */
        images += (size_t)r->args.keep_index * 3 * width * height, batch = 1;
    err = batch > 1 ? write_preview_grid(pv, images, batch, width, height)
                    : gen_write_png(pv, images, width, height, NULL);
    /* a preview is a convenience: one that cannot be written (disk full) is said once, with
     * its cause, and the image is still made */
    if (err && !r->preview_failed) {
        cli_warn("preview not written (the image still will be): %s", mood_error_last());
        r->preview_failed = 1;
    }
    if (!err && !r->preview_written) /* removed by a Ctrl-C too */
        cli_signal_unlink_set(pv);
    r->preview_written |= !err;
    free(pv);
    return 0;
}

void gen_remove_preview(gen_run *r)
{
    char *pv = r->preview_written ? preview_path(r) : NULL;
    cli_signal_unlink_set(NULL);
    if (pv)
        unlink(pv);
    free(pv);
    r->preview_written = 0;
}
