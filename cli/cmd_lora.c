/*
 * cmd_lora.c: `mood lora merge`, `mood lora resize` and `mood lora extract`: the SVD-based LoRA
 * tools (kohya sd-scripts' svd_merge_lora.py, resize_lora.py and extract_lora_from_models.py
 * semantics; lora-formats.md §5.3–5.5). Each writes one kohya-format LoRA and prints a summary:
 * modules written and the ranks chosen, and for resize the mean fraction of the Frobenius norm
 * of ΔW kept, measured by re-reading input and output through the public API.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/cli_text.h"

const char cmd_lora_merge_help[] =
    "usage: mood lora merge FILE[:W[:W_TE]] ... --rank R [--conv-rank R] -o OUT\n"
    "                       [--clamp-quantile Q] [--dtype f32|f16|bf16] [--json]\n\n"
    "Merges several LoRAs into one of a chosen rank. For every layer the exact sum of the\n"
    "inputs' weight changes (each times its weight W, or W for the UNet and W_TE for the text\n"
    "encoder) is computed and re-factorised with an SVD to the requested rank, as kohya's\n"
    "svd_merge_lora.py does (alpha = rank; the factors' values clamped at their 0.99 quantile,\n"
    "which trims outliers and can cost part of a layer's change even at full rank). Any LoRA\n"
    "flavour whose change does not depend on the base model works as input (LoRA, LoCon, LoHa,\n"
    "LoKr, full diff); DoRA, OFT, IA3 and GLoRA need a base: use 'mood bake' for those.\n"
    "For an exact merge without loss, see 'mood lora stack'.\n\n"
    "  FILE[:W[:W_TE]] input LoRA, its UNet weight W (default 1) and text-encoder weight W_TE\n"
    "                   (default W)\n"
    "  --rank R         rank of Linear and 1x1 conv layers in the output\n"
    "  --conv-rank R    rank of 3x3 conv layers (default: --rank)\n"
    "  --clamp-quantile Q  clamp the factors at their quantile Q, 0.5 < Q <= 1 (default 0.99,\n"
    "                   kohya's; 1: no clamp)\n"
    "  -o, --output OUT output .safetensors file\n"
    "  --dtype D        f32 (default), f16 or bf16\n"
    "  --json           print the summary as JSON: output, modules, ranks [distinct ranks],\n"
    "                   rank_min, rank_max, rank_counts [{rank, modules}]\n\n"
    "Example:\n"
    "  mood lora merge ink.safetensors:0.7 grain.safetensors:0.3 --rank 16 -o mix.safetensors\n\n"
    "Like kohya's, the file gives each layer its own alpha. diffusers (0.42 and older) reads\n"
    "per-layer alphas wrongly for U-Net attention layers (its alpha_pattern); for diffusers,\n"
    "'mood lora stack OUT -o OUT2' writes exactly the same change with one alpha.\n\n"
    "Exit status: 0 ok, 1 bad input, 2 missing file or I/O error.\n";

const char cmd_lora_resize_help[] =
    "usage: mood lora resize FILE (--rank R | --dynamic METHOD=X [--rank MAX]) [--conv-rank R]\n"
    "                        -o OUT [--dtype f32|f16|bf16] [--json]\n\n"
    "Changes the rank of a LoRA with an SVD of each layer's up x down product, as kohya's\n"
    "resize_lora.py does. alpha is scaled so that alpha/rank, the LoRA's strength, stays the\n"
    "same. With a fixed --rank every layer gets that rank (above a layer's own rank the extra\n"
    "components are zero, as kohya's are); with --dynamic each layer gets kohya's rank for\n"
    "METHOD (capped by --rank, default 256), as its script has them since PR #2194, so that\n"
    "files match (before it, sv_fro and sv_cumulative kept one rank more):\n"
    "  sv_ratio=X        keep singular values larger than the largest / X, and one more\n"
    "                    (kohya's rule, which the PR left as it was)\n"
    "  sv_fro=X          keep a fraction X (0..1) of the Frobenius norm\n"
    "  sv_cumulative=X   keep a fraction X (0..1) of the sum of singular values\n\n"
    "  --conv-rank R    rank (or cap) for layers on convolutions (default: --rank)\n"
    "  -o, --output OUT output .safetensors file\n"
    "  --dtype D        f32 (default), f16 or bf16\n"
    "  --json           print the summary as JSON: output, modules, ranks [distinct ranks],\n"
    "                   rank_min, rank_max, rank_counts [{rank, modules}], fro_retained_mean\n\n"
    "The summary gives the ranks chosen and the mean fraction of each layer's change kept\n"
    "(Frobenius norm).\n\n"
    "Example:\n"
    "  mood lora resize big.safetensors --dynamic sv_fro=0.9 -o small.safetensors\n\n"
    "Like kohya's, the file gives each layer its own alpha. diffusers (0.42 and older) reads\n"
    "per-layer alphas wrongly for U-Net attention layers (its alpha_pattern); for diffusers,\n"
    "'mood lora stack OUT -o OUT2' writes exactly the same change with one alpha.\n\n"
    "Exit status: 0 ok, 1 bad input, 2 missing file or I/O error.\n";

const char cmd_lora_extract_help[] =
    "usage: mood lora extract --base A --tuned B --rank R [--conv-rank R] [--min-diff X] -o OUT\n"
    "                         [--clamp-quantile Q] [--dtype f32|f16|bf16] [--json]\n\n"
    "Extracts a LoRA from the difference between a fine-tuned checkpoint B and its base A (both\n"
    "single-file .safetensors checkpoints of the same family), as kohya's\n"
    "extract_lora_from_models.py does: the attention and feed-forward layers of the UNet and\n"
    "the text encoder(s) get rank R; with --conv-rank the UNet's resnet, down- and upsampling\n"
    "convolutions are extracted too (3x3 ones at that rank). The text encoder is left out when\n"
    "no weight of it differs by more than --min-diff (default 0.01). As kohya's, each layer's\n"
    "factors are clamped at their 0.99 quantile (alpha = rank): outliers are trimmed, which\n"
    "can cost part of the change even at a rank that holds it all.\n\n"
    "  --clamp-quantile Q  clamp at the quantile Q, 0.5 < Q <= 1 (default 0.99; 1: no clamp)\n"
    "  -o, --output OUT output .safetensors file\n"
    "  --dtype D        f32 (default), f16 or bf16\n"
    "  --json           print the summary as JSON: output, modules, ranks [distinct ranks],\n"
    "                   rank_min, rank_max, rank_counts [{rank, modules}]\n\n"
    "Example:\n"
    "  mood lora extract --base sd15.safetensors --tuned myfinetune.safetensors --rank 32 \\\n"
    "                    -o style.safetensors\n\n"
    "Like kohya's, the file gives each layer its own alpha. diffusers (0.42 and older) reads\n"
    "per-layer alphas wrongly for U-Net attention layers (its alpha_pattern); for diffusers,\n"
    "'mood lora stack OUT -o OUT2' writes exactly the same change with one alpha.\n\n"
    "Exit status: 0 ok, 1 bad input, 2 missing file or I/O error.\n";

/* ----- shared option parsing --------------------------------------------------------------- */

typedef struct lora_args {
    const char *cmd;
    char **files; /* positional arguments */
    int n_files;
    const char *output, *base, *tuned, *dynamic;
    long rank, conv_rank;
    int has_rank, has_conv_rank, has_min_diff, has_clamp, json;
    double min_diff, clamp_quantile;
    mood_dtype dtype;
} lora_args;

/* One option with a value at argv[*i]; returns 1 if consumed, 0 if not an option we know, -1
 * on a usage error (already reported). */
static int parse_value_option(lora_args *a, int argc, char **argv, int *i)
{
    const char *opt = argv[*i], *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    static const char *const with_value[] = {
        "-o",      "--output",   "--rank",    "--conv-rank",      "--dtype", "--base",
        "--tuned", "--min-diff", "--dynamic", "--clamp-quantile", NULL};
    int known = 0;
    for (int k = 0; with_value[k]; k++)
        known |= strcmp(opt, with_value[k]) == 0;
    if (!known)
        return 0;
    if (!v)
        return -cli_usage_error(a->cmd, "option '%s' needs a value", opt);
    (*i)++;
    if (strcmp(opt, "-o") == 0 || strcmp(opt, "--output") == 0)
        a->output = v;
    else if (strcmp(opt, "--base") == 0)
        a->base = v;
    else if (strcmp(opt, "--tuned") == 0)
        a->tuned = v;
    else if (strcmp(opt, "--dynamic") == 0)
        a->dynamic = v;
    else if (strcmp(opt, "--dtype") == 0 && cli_parse_dtype(&a->dtype, v) != 0)
        return -cli_usage_error(a->cmd, "--dtype must be f32, f16 or bf16, not '%s'", v);
    else if (strcmp(opt, "--rank") == 0 || strcmp(opt, "--conv-rank") == 0) {
        long *dst = opt[2] == 'r' ? &a->rank : &a->conv_rank;
        if (cli_parse_int(v, dst) != 0 || *dst < 1 || *dst > 65536)
            return -cli_usage_error(a->cmd, "%s must be a whole number from 1 to 65536, not '%s'",
                                    opt, v);
        *(opt[2] == 'r' ? &a->has_rank : &a->has_conv_rank) = 1;
    } else if (strcmp(opt, "--min-diff") == 0) {
        if (cli_parse_double(v, &a->min_diff) != 0 || a->min_diff < 0)
            return -cli_usage_error(a->cmd, "--min-diff must be a number >= 0, not '%s'", v);
        a->has_min_diff = 1;
    } else if (strcmp(opt, "--clamp-quantile") == 0) {
        if (cli_parse_double(v, &a->clamp_quantile) != 0 || !(a->clamp_quantile > 0.5) ||
            a->clamp_quantile > 1)
            return -cli_usage_error(
                a->cmd,
                "--clamp-quantile must be a number in (0.5, 1], not '%s' (at "
                "0.5 and below the bound, that quantile of the factors' values, "
                "is about 0 or negative: every value would become it)",
                v);
        a->has_clamp = 1;
    }
    return 1;
}

static int parse_args(lora_args *a, int argc, char **argv, const char *cmd)
{
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    a->dtype = MOOD_DTYPE_F32;
    a->min_diff = 0.01;
    a->files = calloc((size_t)argc + 1, sizeof *a->files);
    if (!a->files) {
        fprintf(stderr, "mood: error: out of memory\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        int r = parse_value_option(a, argc, argv, &i);
        if (r < 0)
            return 1;
        if (r > 0)
            continue;
        if (strcmp(argv[i], "--json") == 0)
            a->json = 1;
        else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return cli_unknown_option(cmd, argv[i]);
        else
            a->files[a->n_files++] = argv[i];
    }
    if (!a->output)
        return cli_usage_error(cmd, "no output file: give -o OUT");
    return cli_check_safetensors_output(cmd, a->output, "LoRA");
}

/* ----- summary ----------------------------------------------------------------------------- */

#define MAX_RANKS 4096 /* distinct ranks: more than any adapter has modules */

typedef struct summary {
    size_t modules;
    long ranks[MAX_RANKS][2]; /* (rank, count), distinct ranks in order of appearance */
    int n_ranks;
    double fro_sum;
    size_t fro_n;
} summary;

static void count_rank(summary *s, long r)
{
    for (int i = 0; i < s->n_ranks; i++) {
        if (s->ranks[i][0] == r) {
            s->ranks[i][1]++;
            return;
        }
    }
    if (s->n_ranks < MAX_RANKS) {
        s->ranks[s->n_ranks][0] = r;
        s->ranks[s->n_ranks++][1] = 1;
    }
}

static int cmp_rank(const void *a, const void *b)
{
    const long *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Modules and ranks of the written file, read back through the public API. */
static int read_summary(summary *s, mood_adapter **out_adapter, const char *path)
{
    mood_adapter *a = NULL;
    int err = mood_adapter_open(&a, path, NULL);
    memset(s, 0, sizeof *s);
    if (err)
        return err;
    s->modules = mood_adapter_module_count(a);
    for (size_t i = 0; i < s->modules; i++) {
        mood_module_info info;
        mood_adapter_module(a, i, &info);
        count_rank(s, info.rank);
    }
    qsort(s->ranks, (size_t)s->n_ranks, sizeof s->ranks[0], cmp_rank);
    *out_adapter = a;
    return 0;
}

static double frob(const float *x, int64_t n)
{
    double acc = 0;
    for (int64_t i = 0; i < n; i++)
        acc += (double)x[i] * x[i];
    return sqrt(acc);
}

/* Mean over modules of ||ΔW_out|| / ||ΔW_in|| (kohya's "fro retained"). */
static int fro_retained(summary *s, const mood_adapter *in, const mood_adapter *out)
{
    size_t n_in = mood_adapter_module_count(in), n_out = mood_adapter_module_count(out);
    int err = 0;
    for (size_t j = 0; !err && j < n_out; j++) {
        mood_module_info oi, ii;
        int64_t numel = mood_adapter_target_numel(out, j);
        float *a = NULL, *b = NULL;
        mood_adapter_module(out, j, &oi);
        for (size_t i = 0; i < n_in; i++) {
            mood_adapter_module(in, i, &ii);
            if (strcmp(ii.kohya_name, oi.kohya_name) != 0 ||
                mood_adapter_target_numel(in, i) != numel)
                continue;
            a = malloc((size_t)numel * sizeof *a);
            b = malloc((size_t)numel * sizeof *b);
            if (!a || !b)
                err = MOOD_ENOMEM;
            if (!err && (err = mood_adapter_delta(a, in, i, NULL)) == 0 &&
                (err = mood_adapter_delta(b, out, j, NULL)) == 0) {
                double na = frob(a, numel), nb = frob(b, numel);
                if (na > 0) {
                    s->fro_sum += nb / na;
                    s->fro_n++;
                }
            }
            break;
        }
        free(a);
        free(b);
    }
    return err;
}

static int print_summary(const lora_args *a, const summary *s)
{
    if (a->json) {
        /* "ranks", "rank_min", "rank_max" as inspect gives them; how many modules took each */
        cJSON *o = cJSON_CreateObject(), *r = cJSON_CreateArray(), *c = cJSON_CreateArray();
        cJSON_AddStringToObject(o, "output", a->output);
        cJSON_AddNumberToObject(o, "modules", (double)s->modules);
        for (int i = 0; i < s->n_ranks; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToArray(r, cJSON_CreateNumber((double)s->ranks[i][0]));
            cJSON_AddNumberToObject(e, "rank", (double)s->ranks[i][0]);
            cJSON_AddNumberToObject(e, "modules", (double)s->ranks[i][1]);
            cJSON_AddItemToArray(c, e);
        }
        cJSON_AddItemToObject(o, "ranks", r);
        if (s->n_ranks > 0) {
            cJSON_AddNumberToObject(o, "rank_min", (double)s->ranks[0][0]);
            cJSON_AddNumberToObject(o, "rank_max", (double)s->ranks[s->n_ranks - 1][0]);
        }
        cJSON_AddItemToObject(o, "rank_counts", c);
        if (s->fro_n)
            cJSON_AddNumberToObject(o, "fro_retained_mean", s->fro_sum / (double)s->fro_n);
        cli_warnings_json(o);
        return cli_print_json(o);
    }
    printf("wrote %s: %zu modules\n", a->output, s->modules);
    printf("ranks:");
    for (int i = 0; i < s->n_ranks; i++)
        printf("%s %ld (x%ld)", i ? "," : "", s->ranks[i][0], s->ranks[i][1]);
    printf("\n");
    if (s->fro_n)
        printf("mean Frobenius norm of each layer's change kept: %.1f%%\n",
               100.0 * s->fro_sum / (double)s->fro_n);
    return 0;
}

/* Reads the output back and prints the summary; `input` (may be NULL) adds fro retained. */
static int finish(const lora_args *a, const char *input)
{
    summary s;
    mood_adapter *out = NULL, *in = NULL;
    int err = read_summary(&s, &out, a->output);
    if (!err && input && (err = mood_adapter_open(&in, input, NULL)) == 0)
        err = fro_retained(&s, in, out);
    mood_adapter_close(in);
    mood_adapter_close(out);
    if (err)
        return cli_fail(err);
    return print_summary(a, &s);
}

static void write_options(mood_lora_write_options *o, const lora_args *a)
{
    mood_lora_write_options_init(o);
    o->output = a->output;
    o->dtype = a->dtype;
    if (a->has_clamp)
        o->clamp_quantile = a->clamp_quantile;
    o->progress = cli_progress;
}

/* ----- merge ------------------------------------------------------------------------------- */

int cmd_lora_merge(int argc, char **argv)
{
    lora_args a;
    mood_lora_write_options o;
    cli_adapters inputs = {NULL, 0};
    int rc = parse_args(&a, argc, argv, "lora merge"), err;
    if (!rc && a.n_files == 0)
        rc = cli_usage_error(a.cmd, "no input LoRA given");
    if (!rc && !a.has_rank)
        rc = cli_usage_error(a.cmd, "--rank is required");
    if (!rc && (a.base || a.tuned || a.dynamic || a.has_min_diff))
        rc = cli_usage_error(a.cmd, "--base, --tuned, --dynamic and --min-diff are not merge "
                                    "options");
    for (int i = 0; !rc && i < a.n_files; i++)
        rc = cli_adapters_add(&inputs, a.files[i]);
    if (!rc) {
        write_options(&o, &a);
        err = mood_lora_merge(inputs.items, inputs.n, (int)a.rank,
                              a.has_conv_rank ? (int)a.conv_rank : 0, &o);
        cli_progress_done();
        rc = err ? cli_fail(err) : finish(&a, NULL);
    }
    cli_adapters_dispose(&inputs);
    free(a.files);
    return rc;
}

/* ----- resize ------------------------------------------------------------------------------ */

static int parse_dynamic(mood_resize_method *m, double *param, const lora_args *a)
{
    static const char *const names[] = {"sv_ratio", "sv_fro", "sv_cumulative"};
    static const mood_resize_method methods[] = {MOOD_RESIZE_SV_RATIO, MOOD_RESIZE_SV_FRO,
                                                 MOOD_RESIZE_SV_CUMULATIVE};
    const char *eq = strchr(a->dynamic, '=');
    for (int i = 0; eq && i < 3; i++) {
        if (strlen(names[i]) != (size_t)(eq - a->dynamic) ||
            strncmp(a->dynamic, names[i], strlen(names[i])) != 0)
            continue;
        if (cli_parse_double(eq + 1, param) != 0 || !(*param > 0) || (i > 0 && *param > 1))
            return cli_usage_error(a->cmd, "%s needs a number %s, not '%s'", names[i],
                                   i ? "in (0, 1]" : "> 0", eq + 1);
        *m = methods[i];
        return 0;
    }
    return cli_usage_error(
        a->cmd, "--dynamic takes sv_ratio=X, sv_fro=X or sv_cumulative=X, not '%s'", a->dynamic);
}

int cmd_lora_resize(int argc, char **argv)
{
    lora_args a;
    mood_lora_write_options o;
    mood_resize_method method = MOOD_RESIZE_FIXED;
    double param = 0;
    int rc = parse_args(&a, argc, argv, "lora resize"), err;
    if (!rc && a.n_files != 1)
        rc = cli_usage_error(a.cmd, "give exactly one input LoRA (got %d)", a.n_files);
    if (!rc && (a.base || a.tuned || a.has_min_diff || a.has_clamp))
        rc = cli_usage_error(a.cmd, "--base, --tuned, --min-diff and --clamp-quantile are not "
                                    "resize options (resize clamps nothing, as kohya's)");
    if (!rc && !a.dynamic && !a.has_rank)
        rc = cli_usage_error(a.cmd, "give --rank R or --dynamic METHOD=X");
    if (!rc && a.dynamic)
        rc = parse_dynamic(&method, &param, &a);
    if (!rc) {
        write_options(&o, &a);
        err = mood_lora_resize(a.files[0], method, param, a.has_rank ? (int)a.rank : 256,
                               a.has_conv_rank ? (int)a.conv_rank : 0, &o);
        cli_progress_done();
        rc = err ? cli_fail(err) : finish(&a, a.files[0]);
    }
    free(a.files);
    return rc;
}

/* ----- extract ----------------------------------------------------------------------------- */

int cmd_lora_extract(int argc, char **argv)
{
    lora_args a;
    mood_lora_write_options o;
    int rc = parse_args(&a, argc, argv, "lora extract"), err;
    if (!rc && (!a.base || !a.tuned))
        rc = cli_usage_error(a.cmd, "give both --base A and --tuned B");
    if (!rc && a.n_files)
        rc = cli_usage_error(a.cmd, "unexpected argument '%s'", a.files[0]);
    if (!rc && a.dynamic)
        rc = cli_usage_error(a.cmd, "--dynamic is a resize option");
    if (!rc && !a.has_rank)
        rc = cli_usage_error(a.cmd, "--rank is required");
    if (!rc) {
        write_options(&o, &a);
        err = mood_lora_extract(a.base, a.tuned, (int)a.rank,
                                a.has_conv_rank ? (int)a.conv_rank : 0, a.min_diff, &o);
        cli_progress_done();
        rc = err ? cli_fail(err) : finish(&a, NULL);
    }
    free(a.files);
    return rc;
}
