/*
 * cmd_bake.c: `mood bake`: merges LoRAs into a copy of a checkpoint (mood_bake), with the UNet
 * and text-encoder multipliers of each, and prints what was written: how many tensors were
 * patched and how many adapter keys matched nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/cli_text.h"

const char cmd_bake_help[] =
    "usage: mood bake --model BASE --lora FILE[:W[:W_TE]] [--lora ...] -o OUT [--json]\n\n"
    "Writes OUT, a copy of the checkpoint BASE with the LoRAs merged into its weights, so the\n"
    "styles apply without loading any LoRA (A1111, ComfyUI and diffusers load OUT as a normal\n"
    "checkpoint). OUT has the same tensors, dtypes and layout as BASE; its metadata records\n"
    "what was merged (modelspec.merged_from, mood_baked).\n\n"
    "  --model BASE         the single-file checkpoint (.safetensors) to start from\n"
    "  --lora FILE[:W[:W_TE]]\n"
    "                       a LoRA (any kohya, LyCORIS, diffusers or PEFT flavour) with its\n"
    "                       strength W for the UNet (default 1) and W_TE for the text encoders\n"
    "                       (default W); repeat for several, applied in the order given\n"
    "  -o, --output OUT     the file to write (replaced only when the bake succeeds)\n"
    "  --json               print the summary as JSON: output, base, adapters [{path, unet,\n"
    "                       te, modules, n_unmatched}], tensors_patched, n_unmatched, warnings\n\n"
    "Example:\n"
    "  mood bake --model sd15.safetensors --lora inkwash.safetensors:0.8 \\\n"
    "            --lora film-grain.safetensors:0.3:0 -o sd15-inkwash.safetensors\n\n"
    "Weights are computed in float32 and rounded once to BASE's dtype. A LoRA made for another\n"
    "base family (an SDXL LoRA on an SD1.5 checkpoint) is refused. Keys of a LoRA that match\n"
    "nothing in BASE are reported as a warning.\n"
    "Exit status: 0 written, 1 bad input (corrupt file, wrong family), 2 environment (missing\n"
    "file, disk full).\n";

typedef struct bake_args {
    const char *base, *output;
    cli_adapters loras;
    int json;
} bake_args;

static int parse_args(bake_args *a, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int has_value = i + 1 < argc;
        int rc;
        if (strcmp(s, "--json") == 0) {
            a->json = 1;
        } else if ((strcmp(s, "--model") == 0 || strcmp(s, "--base") == 0) && has_value) {
            a->base = argv[++i];
        } else if ((strcmp(s, "-o") == 0 || strcmp(s, "--output") == 0) && has_value) {
            a->output = argv[++i];
        } else if (strcmp(s, "--lora") == 0 && has_value) {
            if ((rc = cli_adapters_add(&a->loras, argv[++i])) != 0)
                return rc;
        } else if (strcmp(s, "--model") == 0 || strcmp(s, "--base") == 0 || strcmp(s, "-o") == 0 ||
                   strcmp(s, "--output") == 0 || strcmp(s, "--lora") == 0) {
            return cli_usage_error("bake", "option '%s' needs a value", s);
        } else if (s[0] == '-' && s[1] != '\0') {
            return cli_unknown_option("bake", s);
        } else {
            return cli_usage_error("bake", "unexpected argument '%s'", s);
        }
    }
    if (!a->base)
        return cli_usage_error("bake", "no base checkpoint given (--model BASE)");
    if (!a->loras.n)
        return cli_usage_error("bake", "no LoRA given (--lora FILE[:W[:W_TE]])");
    if (!a->output)
        return cli_usage_error("bake", "no output file given (-o OUT)");
    return cli_check_safetensors_output("bake", a->output, "model");
}

/* What the summary reports: counted again from the inputs through the public API. */
typedef struct bake_summary {
    size_t patched, modules, unmatched;
    size_t *per_modules, *per_unmatched;
} bake_summary;

static int count_targets(const mood_adapter *const *ads, size_t n, size_t *out)
{
    size_t total = 0, distinct = 0;
    const char **seen;
    for (size_t k = 0; k < n; k++)
        total += mood_adapter_module_count(ads[k]);
    if (!(seen = malloc((total ? total : 1) * sizeof *seen)))
        return 2;
    for (size_t k = 0; k < n; k++) {
        for (size_t i = 0; i < mood_adapter_module_count(ads[k]); i++) {
            mood_module_info info;
            size_t j = 0;
            mood_adapter_module(ads[k], i, &info);
            while (j < distinct && strcmp(seen[j], info.target) != 0)
                j++;
            if (j == distinct)
                seen[distinct++] = info.target;
        }
    }
    free(seen);
    *out = distinct;
    return 0;
}

static int summarize(bake_summary *s, const bake_args *a)
{
    mood_checkpoint *ck = NULL;
    mood_adapter **ads = calloc(a->loras.n, sizeof *ads);
    int err = 0;
    s->per_modules = calloc(a->loras.n, sizeof *s->per_modules);
    s->per_unmatched = calloc(a->loras.n, sizeof *s->per_unmatched);
    if (!ads || !s->per_modules || !s->per_unmatched)
        err = MOOD_ENOMEM;
    if (!err)
        err = mood_checkpoint_open(&ck, a->base);
    for (size_t k = 0; k < a->loras.n && !err; k++) {
        if ((err = mood_adapter_open(&ads[k], a->loras.items[k].path, ck)) != 0)
            break;
        s->per_modules[k] = mood_adapter_module_count(ads[k]);
        s->per_unmatched[k] = mood_adapter_unmatched_count(ads[k]);
        s->modules += s->per_modules[k];
        s->unmatched += s->per_unmatched[k];
    }
    if (!err && count_targets((const mood_adapter *const *)ads, a->loras.n, &s->patched) != 0)
        err = MOOD_ENOMEM;
    for (size_t k = 0; ads && k < a->loras.n; k++)
        mood_adapter_close(ads[k]);
    free(ads);
    mood_checkpoint_close(ck);
    return err;
}

static int print_summary(const bake_summary *s, const bake_args *a)
{
    if (a->json) {
        cJSON *o = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(o, "adapters");
        cJSON_AddStringToObject(o, "output", a->output);
        cJSON_AddStringToObject(o, "base", a->base);
        for (size_t k = 0; k < a->loras.n; k++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "path", a->loras.items[k].path);
            cJSON_AddNumberToObject(e, "unet", a->loras.items[k].unet);
            cJSON_AddNumberToObject(e, "te", a->loras.items[k].te);
            cJSON_AddNumberToObject(e, "modules", (double)s->per_modules[k]);
            cJSON_AddNumberToObject(e, "n_unmatched", (double)s->per_unmatched[k]);
            cJSON_AddItemToArray(list, e);
        }
        cJSON_AddNumberToObject(o, "tensors_patched", (double)s->patched);
        cJSON_AddNumberToObject(o, "n_unmatched", (double)s->unmatched);
        cli_warnings_json(o);
        return cli_print_json(o);
    }
    printf("wrote %s: %zu tensor%s patched by %zu module%s of %zu LoRA%s, %zu unmatched key%s\n",
           a->output, s->patched, s->patched == 1 ? "" : "s", s->modules,
           s->modules == 1 ? "" : "s", a->loras.n, a->loras.n == 1 ? "" : "s", s->unmatched,
           s->unmatched == 1 ? "" : "s");
    return 0;
}

int cmd_bake(int argc, char **argv)
{
    bake_args a;
    bake_summary s;
    mood_bake_options o;
    int rc, err;
    memset(&a, 0, sizeof a);
    memset(&s, 0, sizeof s);
    memset(&o, 0, sizeof o);
    if ((rc = parse_args(&a, argc, argv)) != 0)
        goto done;
    o.base = a.base;
    o.adapters = a.loras.items;
    o.n_adapters = a.loras.n;
    o.output = a.output;
    o.progress = cli_progress;
    err = mood_bake(&o);
    cli_progress_done();
    /* The summary re-reads the inputs; their warnings were already shown during the bake. */
    mood_log_set(NULL, NULL);
    if (!err)
        err = summarize(&s, &a);
    rc = err ? cli_fail(err) : print_summary(&s, &a);
done:
    free(s.per_modules);
    free(s.per_unmatched);
    cli_adapters_dispose(&a.loras);
    return rc;
}
