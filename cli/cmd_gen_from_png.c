/*
 * cmd_gen_from_png.c: `mood gen --from-png FILE`: reads the AUTOMATIC1111 `parameters` text of an
 * image (mood/params.h; what cmd_gen_png.c writes, and A1111's, Forge's and Civitai's), fills
 * every option the command line did not set, finds the image's LoRAs in the registry by their
 * recorded hashes (the name is the fallback), and warns, naming key and value, about each
 * setting of the image that changes it and that mood does not reproduce.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cmd_gen.h"
#include "mood/image.h"
#include "mood/params.h"

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

/* Hires fix and img2img (Denoising strength, unless it does not parse), ADetailer, ControlNet.
 * An img2img image is remade with --init-image (its start picture: A1111 does not record it). */
static void png_warn_passes(const gen_args *a, const mood_params *p)
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
        *den && !a->init_image)
        cli_warn("the image was made with img2img (%s) from a picture its parameters do not "
                 "name: give it with --init-image to remake the image; without, mood draws it "
                 "from noise: the image will differ",
                 den);
    const char *blur = mood_params_get(p, "Mask blur"); /* A1111's inpainting says it */
    if (blur && !a->mask)
        cli_warn("the image was inpainted (Mask blur: %s): give its picture with --init-image and "
                 "its mask with --mask to remake it: the image will differ",
                 blur);
    else if (blur && strcmp(blur, "0") != 0)
        cli_warn("the image's mask was blurred (Mask blur: %s), which mood does not do (soften "
                 "the mask's edge in the file): the image will differ",
                 blur);
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

/* Keys of an image's settings line that mood reads, or that do not change the image. */
static const char *const png_known_keys[] = {"Steps",
                                             "CFG scale",
                                             "Seed",
                                             "Size",
                                             "Clip skip",
                                             "RNG",
                                             "Batch size",
                                             "Batch pos",
                                             "Denoising strength",
                                             "Mask blur",
                                             "Version",
                                             "Hashes",
                                             "Template",
                                             "Negative Template",
                                             "Created Date",
                                             "Civitai resources",
                                             "Civitai metadata",
                                             "Lora weights",
                                             "Schedule type",
                                             "Prediction",
                                             "Model",
                                             "Model hash",
                                             "Lora hashes",
                                             "TI hashes"};

static int png_key_known(const char *key)
{
    static const char *const groups[] = {"Hires ", "ADetailer ", "ControlNet"};
    for (size_t i = 0; i < sizeof png_known_keys / sizeof png_known_keys[0]; i++)
        if (!strcmp(key, png_known_keys[i]))
            return 1;
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
        if (!strncmp(key, groups[i], strlen(groups[i])))
            return 1;
    for (size_t i = 0; i < sizeof png_unmatched / sizeof png_unmatched[0]; i++)
        if (!strcmp(key, png_unmatched[i].key) ||
            (png_unmatched[i].with && !strcmp(key, png_unmatched[i].with)))
            return 1;
    return 0;
}

/* Settings of extensions and other tools mood has never heard of (Forge's, Fooocus', ...): they
 * may change the image, so they are named, all in one warning. */
static void png_warn_unknown(const mood_params *p)
{
    char list[600] = "";
    size_t n = 0;
    for (size_t k = 0; k < p->n_extras && n < sizeof list - 1; k++)
        if (!png_key_known(p->extras[k].key))
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s: %.40s", n ? ", " : "",
                                  p->extras[k].key, p->extras[k].value);
    if (n)
        cli_warn("the image's settings hold %s, which mood does not know and does not do: the "
                 "image may differ",
                 list);
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
    if (digits && s + 1 < end && (*s == 'e' || *s == 'E')) { /* lark's NUMBER: 1e1 */
        const char *e = s + 1 + (s[1] == '+' || s[1] == '-');
        if (e < end && isdigit((unsigned char)*e)) {
            s = e;
            while (s < end && isdigit((unsigned char)*s))
                s++;
        }
    }
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
        /* \b of a Unicode str: a letter such as É before it is a word character too */
        int start = p == prompt || !(isalnum((unsigned char)p[-1]) || p[-1] == '_' ||
                                     (unsigned char)p[-1] >= 0x80);
        int end = !(isalnum((unsigned char)p[3]) || p[3] == '_' || (unsigned char)p[3] >= 0x80);
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
        if (bar || (colon && png_is_when(colon + 1, q))) {
            cli_warn("%s %s has %s \"%.*s\", which mood does not have (it reads the text as it "
                     "stands)%s",
                     whose, which, bar ? "alternation" : "prompt editing", (int)(q - p + 1), p,
                     then);
            p = q; /* said for the whole: not again for what it holds */
        }          /* else its inner brackets are looked at next: [[cat:dog:0.5]], [x [a:b:2] y] */
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
    const char *p = a->prompt;
    if (a->prompt)
        warn_a1111_only(a->prompt, "the", "prompt", then);
    if (a->negative)
        warn_a1111_only(a->negative, "the", "negative prompt", then);
    /* A1111's infotext starts the negative prompt with such a line: the image's text would
     * give the rest of this prompt as its negative prompt (to A1111, Civitai, --from-png) */
    for (; p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, "Negative prompt:", 16)) {
            cli_warn("the prompt has a line starting with \"Negative prompt:\": the image's "
                     "parameters text will read as if it began the negative prompt, to A1111, "
                     "Civitai and --from-png");
            break;
        }
    /* Civitai takes the first line starting "Steps: " for the settings line */
    for (int k = 0; k < 2; k++) {
        for (p = k ? a->negative : a->prompt; p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
            if (!strncmp(p, "Steps: ", 7)) {
                cli_warn("the %s has a line starting with \"Steps: \": Civitai would read it as "
                         "the image's settings line",
                         k ? "negative prompt" : "prompt");
                break;
            }
    }
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
        size_t tag = mood_prompt_network_tag(p, NULL);
        if (!tag || !strncasecmp(p, "<lora:", 6) || !strncasecmp(p, "<lyco:", 6) ||
            !strncasecmp(p, "<style:", 7)) {
            *o++ = *p++;
            continue;
        }
        cli_warn("%s prompt tag %.*s is %s mood does not have; left out%s", whose, (int)tag, p,
                 strncmp(p, "<hypernet:", 10) ? "an extra network" : "a hypernetwork, which", then);
        p += tag;
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
    png_warn_unknown(p);
    png_warn_passes(a, p);
    png_warn_embeddings(p);
    if (!a->set.prompt)
        warn_a1111_only(p->prompt, "the image's", "prompt", ": the image will differ");
    if (!a->set.negative)
        warn_a1111_only(p->negative_prompt, "the image's", "negative prompt",
                        ": the image will differ");
    return a->set.prompt ? 0 : gen_strip_networks(a, "the image's", ": the image will differ");
}

/* Options given with --from-png replace the image's settings: said, with the image's values,
 * since the result is then not the image. */
static void png_note_overrides(const gen_args *a, const mood_params *p)
{
    char list[600] = "";
    size_t n = 0;
#define OVERRIDE(cond, ...)                                                                        \
    if ((cond) && n < sizeof list - 1)                                                             \
    n += (size_t)snprintf(list + n, sizeof list - n, __VA_ARGS__)
    OVERRIDE(a->set.prompt && strcmp(a->prompt, p->prompt), "%sprompt", n ? ", " : "");
    OVERRIDE(a->set.negative && strcmp(a->negative ? a->negative : "", p->negative_prompt),
             "%snegative prompt", n ? ", " : "");
    OVERRIDE(a->set.steps && p->steps > 0 && a->opts.steps != p->steps, "%sSteps: %d",
             n ? ", " : "", p->steps);
    OVERRIDE(a->set.cfg && !isnan(p->cfg_scale) && a->opts.cfg != p->cfg_scale, "%sCFG scale: %g",
             n ? ", " : "", p->cfg_scale);
    OVERRIDE(a->set.seed && p->has_seed && (a->seed_random || a->seed != p->seed), "%sSeed: %llu",
             n ? ", " : "", (unsigned long long)p->seed);
    OVERRIDE(a->set.size && p->width > 0 &&
                 (a->opts.width != p->width || a->opts.height != p->height),
             "%sSize: %dx%d", n ? ", " : "", p->width, p->height);
    OVERRIDE(a->set.clip_skip && a->opts.clip_skip != p->clip_skip, "%sClip skip: %d",
             n ? ", " : "", p->clip_skip);
    OVERRIDE(a->set.strength && !isnan(p->denoising_strength) &&
                 a->opts.strength != p->denoising_strength,
             "%sDenoising strength: %g", n ? ", " : "", p->denoising_strength);
#undef OVERRIDE
    if (n)
        cli_warn("the options given replace the image's %s: the image will differ", list);
    if (a->n_styles || a->loras.n)
        cli_warn("--style and --lora add to the image's LoRAs: the image will differ");
}

/* "Prediction: v", mood's key for a --prediction that overrode the model's type. */
static void png_prediction(gen_args *a, const mood_params *p)
{
    const char *v = mood_params_get(p, "Prediction");
    int pred = v ? gen_parse_prediction(v) : -1;
    if (!v)
        return;
    if (pred < 0)
        cli_warn("\"Prediction: %s\" of the image is not a value mood can use; using the "
                 "model's type: the image will differ",
                 v);
    else if (a->prediction >= 0 && a->prediction != pred)
        cli_warn("the options given replace the image's Prediction: %s: the image will differ", v);
    else
        a->prediction = pred;
}

static int png_fill(gen_args *a, const mood_params *p)
{
    png_note_overrides(a, p);
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
    if (!a->set.strength && a->init_image && !isnan(p->denoising_strength) &&
        p->denoising_strength > 0 && p->denoising_strength <= 1 &&
        !mood_params_get(p, "Hires upscale"))
        a->opts.strength = p->denoising_strength; /* img2img's (hires fix has one too) */
    png_sampler(a, p);
    png_rng(a, p);
    png_prediction(a, p);
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
    int comfy = mood_image_read_png_text(&graph, path, "prompt") == 0 ||
                mood_image_read_png_text(&graph, path, "workflow") == 0;
    mood_image_free_string(graph);
    fprintf(stderr,
            "mood: error: %s has no A1111 parameters (a PNG's \"parameters\" text or the EXIF "
            "UserComment of a JPEG or WebP)%s; --from-png reads the parameters AUTOMATIC1111, "
            "Forge and mood write\n",
            path,
            comfy ? " but a ComfyUI workflow, which mood does not run"
                  : " (not made by A1111, Forge or mood, or its metadata was removed)");
    return 1;
}

/* Long prompts are chunked 75 tokens at a time: a megabyte is thousands of chunks, minutes of
 * text encoding and gigabytes of conditioning for nothing any tool writes. */
#define PNG_TEXT_MAX (1 << 20)

/* Whether the parameters text is a JSON object or array (another tool's format). */
static int png_is_json(const char *text)
{
    cJSON *j;
    int is;
    while (isspace((unsigned char)*text))
        text++;
    if (*text != '{' && *text != '[')
        return 0;
    j = cJSON_Parse(text);
    is = j != NULL;
    cJSON_Delete(j);
    return is;
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
    if ((err = mood_image_read_parameters(&text, a->from_png)) != 0)
        return no_parameters(a->from_png, err);
    a->png_text = text;
    if (strlen(text) > PNG_TEXT_MAX) {
        fprintf(stderr,
                "mood: error: %s: its parameters text is %zu bytes, more than A1111 writes (a "
                "prompt of this size is not one): at most %d\n",
                a->from_png, strlen(text), PNG_TEXT_MAX);
        return 1;
    }
    if (!text[strspn(text, " \t\r\n")]) {
        fprintf(stderr, "mood: error: %s: its \"parameters\" text is empty\n", a->from_png);
        return 1;
    }
    if (png_is_json(text)) {
        fprintf(stderr,
                "mood: error: %s: its \"parameters\" text is JSON (SwarmUI and Fooocus write "
                "theirs so), not AUTOMATIC1111's settings, which --from-png reads\n",
                a->from_png);
        return 1;
    }
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

/* Whether the prompt has a <lora:NAME...> (or <lyco:>) tag of that name. */
static int png_prompt_tags(const char *prompt, const char *name)
{
    const char *close;
    size_t len;
    for (const char *q = prompt ? strchr(prompt, '<') : NULL; q; q = strchr(q + 1, '<'))
        if (png_lora_tag(q, &close, &len) && png_same_name(q + 6, len, name))
            return 1;
    return 0;
}

int gen_remap_png_loras(gen_run *r)
{
    const mood_params *p = r->args.png_params;
    char *tagged;
    for (size_t i = 0; p && i < p->n_lora_hashes; i++) {
        const mood_params_hash *h = &p->lora_hashes[i];
        char *style = NULL;
        if (!r->args.set.prompt && !png_prompt_tags(r->args.prompt, h->name)) {
            /* Fooocus and Civitai record LoRAs beside the prompt; A1111 applies only tags */
            cli_warn("LoRA %s (hash %s) is in the image's Lora hashes but its prompt has no "
                     "<lora:%s> tag: not applied (put <lora:%s:WEIGHT> in the prompt to apply "
                     "it): the image will differ",
                     h->name, h->hash, h->name, h->name);
            continue;
        }
        if (r->reg && mood_registry_style_by_hash(&style, r->reg, h->hash) == 0) {
            if (strcasecmp(style, h->name) != 0)
                cli_warn("LoRA %s of the image found in the registry by its hash %s: style %s",
                         h->name, h->hash, style);
        } /* one found nowhere is named with its hash by gen_check_png_hashes */
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
/* The LoRAs and styles the resolver found nowhere, one warning each: with the hash the image
 * records for it (to look it up on Civitai), the rest together. */
static void png_warn_missing(const gen_run *r)
{
    const mood_params *p = r->args.png_params;
    const char *m = r->styles.missing;
    char *rest = m && *m ? malloc(strlen(m) + 1) : NULL;
    size_t len = 0;
    while (rest && *m) {
        size_t n = strcspn(m, ","), i = 0;
        while (p && i < p->n_lora_hashes && !png_same_name(m, n, p->lora_hashes[i].name))
            i++;
        if (p && i < p->n_lora_hashes)
            cli_warn("LoRA %.*s (hash %s) of the image is neither a file nor in the registry; "
                     "left out",
                     (int)n, m, p->lora_hashes[i].hash);
        else
            len += (size_t)sprintf(rest + len, "%s%.*s", len ? ", " : "", (int)n, m);
        m += n;
        m += strspn(m, ", ");
    }
    if (rest && len)
        cli_warn("not in the registry and not a file, left out: %s", rest);
    free(rest);
}

void gen_check_png_hashes(const gen_run *r)
{
    const mood_params *p = r->args.png_params;
    png_warn_missing(r);
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

int gen_find_png_model(const gen_args *a, char **path)
{
    const mood_params *p = a->png_params;
    const char *env = getenv("MOOD_MODEL");
    if (!p || !p->model || a->model)
        return -1;
    /* the image's name is looked up as a name only: a text in a file must not pick a path */
    if ((*path = cli_model_by_name(p->model)) != NULL)
        return 0;
    if (env && *env) {
        cli_warn("the image was made with model '%s', which is not in $MOOD_HOME/models; "
                 "using $MOOD_MODEL (%s)",
                 p->model, env);
        return -1;
    }
    fprintf(stderr,
            "mood: error: the image was made with model '%s', which mood does not have (not in "
            "$MOOD_HOME/models): give --model PATH_OR_NAME (or set MOOD_MODEL)\n",
            p->model);
    return 2;
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
