/*
 * cmd_lora_stack.c: `mood lora stack`: combines LoRAs with their multipliers into one LoRA file
 * that has exactly the effect of applying them all (mood_lora_stack).
 */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/cli_text.h"

const char cmd_lora_stack_help[] =
    "usage: mood lora stack FILE[:W[:W_TE]] ... -o OUT [--dtype f16|bf16|f32] [--json]\n\n"
    "Writes OUT, one kohya-format LoRA whose effect equals applying every FILE with its\n"
    "strength W (UNet, default 1) and W_TE (text encoders, default W): one file to share or to\n"
    "load instead of several. Nothing is approximated: plain LoRAs are joined by concatenating\n"
    "their ranks (the output rank is the sum of the inputs'); LoHa, LoKr and Tucker modules\n"
    "at the rank their factors bound (r x r for a LoHa of rank r), exact to float32 rounding;\n"
    "full-diff modules at full rank (larger files). Use 'mood lora merge' for a\n"
    "smaller, approximate file of a chosen rank. A LoRA file holds weight changes only: an\n"
    "input that changes biases or norms (LyCORIS full files' diff_b, w_norm, b_norm) or whose\n"
    "change depends on the base (DoRA, OFT, IA3, GLoRA) is refused; 'mood bake' applies those.\n\n"
    "  -o, --output OUT   the file to write\n"
    "  --dtype D          dtype of the written factors: f32 (default), f16 or bf16\n"
    "  --json             print the summary as JSON: output, inputs, modules, rank_min,\n"
    "                     rank_max, dtype\n\n"
    "Example:\n"
    "  mood lora stack inkwash.safetensors:0.7 film-grain.safetensors:-0.4 -o combo.safetensors\n\n"
    "All inputs must be for the same base family. LoRAs whose effect depends on the base weights\n"
    "(DoRA, OFT, BOFT, IA3, GLoRA) cannot be stacked exactly and are refused: bake them into a\n"
    "checkpoint with 'mood bake' instead.\n"
    "Exit status: 0 written, 1 bad input, 2 environment (missing file, disk full).\n";

typedef struct stack_args {
    cli_adapters inputs;
    const char *output;
    mood_dtype dtype;
    int json;
} stack_args;

static int parse_args(stack_args *a, int argc, char **argv)
{
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--json") == 0)
            a->json = 1;
        else if ((strcmp(s, "-o") == 0 || strcmp(s, "--output") == 0) && i + 1 < argc)
            a->output = argv[++i];
        else if (strcmp(s, "--dtype") == 0 && i + 1 < argc)
            rc = cli_parse_dtype(&a->dtype, argv[++i]) == 0
                     ? 0
                     : cli_usage_error("lora stack", "--dtype must be f32, f16 or bf16, not '%s'",
                                       argv[i]);
        else if (s[0] == '-' && s[1] != '\0')
            rc = cli_unknown_option("lora stack", s);
        else
            rc = cli_adapters_add(&a->inputs, s);
    }
    if (rc)
        return rc;
    if (!a->inputs.n)
        return cli_usage_error("lora stack", "no input LoRA given");
    if (!a->output)
        return cli_usage_error("lora stack", "no output file given (-o OUT)");
    return cli_check_safetensors_output("lora stack", a->output, "LoRA");
}

static int print_summary(const stack_args *a)
{
    mood_st_file *f = NULL;
    int err = mood_st_open(&f, a->output);
    size_t modules = 0;
    int64_t lo = 0, hi = 0; /* the ranks (kohya's ss_network_dim says "Dynamic" when they differ) */
    char ranks[64];
    if (err)
        return cli_fail(err);
    for (size_t i = 0; i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        modules += strstr(t->name, ".lora_up.weight") != NULL;
        if (strstr(t->name, ".lora_down.weight") && t->ndim >= 1) {
            lo = lo && lo < t->shape[0] ? lo : t->shape[0];
            hi = hi > t->shape[0] ? hi : t->shape[0];
        }
    }
    if (lo == hi)
        snprintf(ranks, sizeof ranks, "rank %lld", (long long)hi);
    else
        snprintf(ranks, sizeof ranks, "ranks %lld to %lld", (long long)lo, (long long)hi);
    if (a->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "output", a->output);
        cJSON_AddNumberToObject(o, "inputs", (double)a->inputs.n);
        cJSON_AddNumberToObject(o, "modules", (double)modules);
        cJSON_AddNumberToObject(o, "rank_min", (double)lo); /* numbers, as inspect gives them */
        cJSON_AddNumberToObject(o, "rank_max", (double)hi);
        cJSON_AddStringToObject(o, "dtype", mood_dtype_name(a->dtype));
        mood_st_close(f);
        cli_warnings_json(o);
        return cli_print_json(o);
    }
    printf("wrote %s: %zu modules (%s, %s) from %zu LoRA%s\n", a->output, modules, ranks,
           mood_dtype_name(a->dtype), a->inputs.n, a->inputs.n == 1 ? "" : "s");
    mood_st_close(f);
    return 0;
}

int cmd_lora_stack(int argc, char **argv)
{
    stack_args a;
    mood_lora_write_options o;
    int rc, err;
    memset(&a, 0, sizeof a);
    memset(&o, 0, sizeof o);
    a.dtype = MOOD_DTYPE_F32;
    if ((rc = parse_args(&a, argc, argv)) == 0) {
        o.output = a.output;
        o.dtype = a.dtype;
        o.progress = cli_progress;
        err = mood_lora_stack(a.inputs.items, a.inputs.n, &o);
        cli_progress_done();
        rc = err ? cli_fail(err) : print_summary(&a);
    }
    cli_adapters_dispose(&a.inputs);
    return rc;
}
