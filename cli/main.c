/*
 * main.c: the `mood` command: dispatch to the command table, `mood help`, and process-wide
 * set-up (signals that must not leave partial files behind, the log sink).
 */
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_text.h"
#include "cli/cmd_civitai.h"
#include "common/common.h"

const cli_command cli_commands[] = {
    {"demo", "train a style from five images on the bundled small model and see it (start here)",
     cmd_demo_help, cmd_demo},
    {"info", "show the version, build options, devices and where the registry lives", cmd_info_help,
     cmd_info},
    {"inspect", "describe a checkpoint or LoRA: family, algorithm, ranks, modules, metadata",
     cmd_inspect_help, cmd_inspect},
    {"hash", "compute AutoV1/V2/V3, SHA-256 and CRC32 of a model file", cmd_hash_help, cmd_hash},
    {"gen", "generate images from a prompt with styles stacked at chosen weights", cmd_gen_help,
     cmd_gen},
    {"train", "train a style LoRA from a mood board of a few images", cmd_train_help, cmd_train},
    {"bake", "merge LoRAs into a checkpoint", cmd_bake_help, cmd_bake},
    {"lora stack", "combine LoRAs into one exactly equivalent LoRA", cmd_lora_stack_help,
     cmd_lora_stack},
    {"lora merge", "merge LoRAs into one LoRA of a chosen rank (SVD)", cmd_lora_merge_help,
     cmd_lora_merge},
    {"lora resize", "change the rank of a LoRA", cmd_lora_resize_help, cmd_lora_resize},
    {"lora extract", "extract a LoRA from the difference of two checkpoints", cmd_lora_extract_help,
     cmd_lora_extract},
    {"import", "add LoRA files (and their sidecars) to the style registry", cmd_import_help,
     cmd_import},
    {"list", "list the styles in the registry", cmd_list_help, cmd_list},
    {"show", "everything the registry knows about a style", cmd_show_help, cmd_show},
    {"search", "find styles by name, trigger words, tags, notes, Civitai names", cmd_search_help,
     cmd_search},
    {"style create", "make a style from LoRAs with weights, triggers, template",
     cmd_style_create_help, cmd_style_create},
    {"style edit", "change a style's LoRAs, triggers, template, weight", cmd_style_edit_help,
     cmd_style_edit},
    {"style export", "write styles as LoRA files with A1111/ComfyUI sidecars into a folder",
     cmd_style_export_help, cmd_style_export},
    {"tag", "add or remove tags of a style", cmd_tag_help, cmd_tag},
    {"rename", "rename a style", cmd_rename_help, cmd_rename},
    {"rm", "remove styles (and stored files nothing else uses)", cmd_rm_help, cmd_rm},
    {"doctor", "check the registry (and repair it with --fix)", cmd_doctor_help, cmd_doctor},
    {"pack export", "write styles to a .moodpack file to share them", cmd_pack_export_help,
     cmd_pack_export},
    {"pack import", "add the styles of a .moodpack file to the registry", cmd_pack_import_help,
     cmd_pack_import},
    {"tokenize", "show the CLIP tokens, weights and 75-token chunks of a prompt (A1111 syntax)",
     cmd_tokenize_help, cmd_tokenize},
    {"civitai link", "look styles (or --all) up on Civitai by hash and store what it knows",
     cmd_civitai_link_help, cmd_civitai_link},
    {"update-check", "list styles whose Civitai model has a newer version", cmd_update_check_help,
     cmd_update_check},
    {NULL, NULL, NULL, NULL},
};

/* With --json and nothing printed yet, the document of a run stopped by signal sig (exit status
 * 128 + sig, as the shell reports it): written with write(2) alone, in a signal handler. */
static void json_stopped(int sig)
{
    char doc[96];
    size_t n = 0;
    int status = 128 + sig;
    static const char head[] = "{\n\t\"error\":\t\"stopped by signal ",
                      mid[] = "\",\n\t\"exit_status\":\t", tail[] = "\n}\n";
    if (!cli_json_wanted || cli_json_printed)
        return;
    memcpy(doc, head, sizeof head - 1), n = sizeof head - 1;
    if (sig >= 10)
        doc[n++] = (char)('0' + sig / 10 % 10);
    doc[n++] = (char)('0' + sig % 10);
    memcpy(doc + n, mid, sizeof mid - 1), n += sizeof mid - 1;
    doc[n++] = (char)('0' + status / 100 % 10);
    doc[n++] = (char)('0' + status / 10 % 10);
    doc[n++] = (char)('0' + status % 10);
    memcpy(doc + n, tail, sizeof tail - 1), n += sizeof tail - 1;
    if (write(STDOUT_FILENO, doc, n) < 0)
        return; /* (nothing else to do in a signal handler) */
}

static void on_signal(int sig)
{
    /* Remove temporary output files and empty claims, then die of the same signal. */
    mood_atomic_cleanup_all();
    cli_claims_remove();
    cli_signal_unlink_run();
    cli_stop_note_write();
    json_stopped(sig);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void print_overview(FILE *out)
{
    fprintf(out,
            "mood %s: image styles for Stable Diffusion (LoRA files, bake, merge)\n\n"
            "usage: mood [--device cpu|cuda[:N]|auto] <command> [arguments]\n\ncommands:\n",
            mood_version());
    for (const cli_command *c = cli_commands; c->name; c++)
        fprintf(out, "  %-14s %s\n", c->name, c->summary);
    fprintf(out,
            "\n--device cpu|cuda|cuda:N|auto picks where commands compute (default: $MOOD_DEVICE,\n"
            "else the GPU when there is one).\n"
            "'mood help <command>' explains a command and its options.\n"
            "Exit status: 0 success, 1 bad input, 2 environment (missing file, disk, "
            "memory).\n"
            "--json: the result as one JSON document on stdout; a command that fails before\n"
            "printing one prints {\"error\": MESSAGE, \"exit_status\": N} instead.\n");
}

/* Finds the command named by argv[0] (and argv[1] for two-word commands). Sets *words. */
static const cli_command *find_command(int argc, char **argv, int *words)
{
    for (const cli_command *c = cli_commands; c->name; c++) {
        const char *space = strchr(c->name, ' ');
        if (!space && strcmp(c->name, argv[0]) == 0) {
            *words = 1;
            return c;
        }
        if (space && argc >= 2 && strncmp(c->name, argv[0], (size_t)(space - c->name)) == 0 &&
            strlen(argv[0]) == (size_t)(space - c->name) && strcmp(space + 1, argv[1]) == 0) {
            *words = 2;
            return c;
        }
    }
    return NULL;
}

/* One `--device X` / `--device=X` at argv[i] (checked for spelling only: whether the device
 * exists is asked when it is used); *used: how many words it took, 0 when argv[i] is not one.
 * Returns 0, or the exit status after printing a usage error. */
static int device_option(int argc, char **argv, int i, int *used)
{
    const char *arg = argv[i], *value;
    mood_device d;
    *used = 0;
    if (strncmp(arg, "--device", 8) != 0 || (arg[8] != '\0' && arg[8] != '='))
        return 0;
    if (arg[8] == '=') {
        value = arg + 9;
        *used = 1;
    } else if (i + 1 < argc) {
        value = argv[i + 1];
        *used = 2;
    } else {
        fprintf(stderr, "mood: error: %s needs a value: cpu, cuda, cuda:N or auto\n", arg);
        cli_json_error_note("--device needs a value: cpu, cuda, cuda:N or auto");
        return 1;
    }
    if (mood_device_resolve(&d, value, NULL, 1, 1024) == MOOD_EINVAL) {
        fprintf(stderr, "mood: error: %s\n", mood_error_last());
        cli_json_error_note(mood_error_last());
        return 1;
    }
    cli_device_request = value;
    return 0;
}

/* Takes the global options before the command off argv; returns 0, or the exit status after
 * printing a usage error. */
static int global_options(int *argc, char ***argv)
{
    int used = 0, rc;
    while (*argc >= 2 && (rc = device_option(*argc, *argv, 1, &used)) == 0 && used) {
        (*argv)[used] = (*argv)[0];
        *argv += used;
        *argc -= used;
    }
    return *argc >= 2 ? rc : 0;
}

/* gen, demo and info also take --device after the command (`mood gen ... --device cpu`, where
 * people put it; `mood info --device cuda` says what that choice gives): it is taken off their
 * arguments from `from` on. */
static int device_after_command(int *argc, char **argv, int from)
{
    for (int i = from; i < *argc;) {
        int used, rc = device_option(*argc, argv, i, &used);
        if (rc)
            return rc;
        if (!used) {
            i++;
            continue;
        }
        memmove(argv + i, argv + i + used, (size_t)(*argc - i - used + 1) * sizeof *argv);
        *argc -= used;
    }
    return 0;
}

static int has_arg(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0 ||
            (strncmp(argv[i], name, strlen(name)) == 0 && argv[i][strlen(name)] == '='))
            return 1;
    return 0;
}

/* The device step of the commands that compute (gen, train, demo): an unavailable device asked for
 * is an error before any work; the default falling back to the CPU prints a notice. (train's own
 * --device option, when given, decides instead.) Returns 0 or the exit status. */
static int choose_device(const cli_command *c, int argc, char **argv)
{
    mood_device d;
    if (c->run != cmd_gen && c->run != cmd_train && c->run != cmd_demo)
        return 0;
    if (c->run == cmd_train && has_arg(argc, argv, "--device"))
        return 0;
    int rc = cli_device_select(&d);
    if (rc)
        return rc;
    cli_device = d;
    return 0;
}

/* `mood help lora`: the commands of a two-word group, with their summaries (to `out`, NULL:
 * only counted). 0 when none. */
static int print_group(FILE *out, const char *group)
{
    size_t n = strlen(group), found = 0;
    for (const cli_command *c = cli_commands; c->name; c++) {
        if (strncmp(c->name, group, n) != 0 || c->name[n] != ' ')
            continue;
        if (out && !found)
            fprintf(out, "'mood %s' has these commands ('mood help %s COMMAND' explains one):\n",
                    group, group);
        if (out)
            fprintf(out, "  %-14s %s\n", c->name, c->summary);
        found++;
    }
    return found > 0;
}

/* Whether opt ("--json") is an option that takes no value: "--json=true" is refused, not split
 * (the "true" would be read as a name: `mood rm no --json=true` removed a style "true"). */
static int is_flag(const char *opt, size_t len)
{
    static const char *const flags[] = {
        "--buckets", "--deep",    "--fix",         "--full",    "--help",  "--json",
        "--no-flip", "--no-hash", "--no-register", "--offline", "--plain", "--reference-only",
        "--resume",  "--sd2",     "--te",          "--version"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (strlen(flags[i]) == len && strncmp(opt, flags[i], len) == 0)
            return 1;
    return 0;
}

/* Whether argv word a is an option whose value is the next word (so that word is a value, as
 * in --negative "--ugly=1", not an option to split). A negative number ("--seed -1") is a value
 * itself. */
static int takes_next(const char *a)
{
    return a[0] == '-' && a[1] && !isdigit((unsigned char)a[1]) && a[1] != '.' &&
           strcmp(a, "-h") != 0 && strcmp(a, "--") != 0 && !strchr(a, '=') &&
           !is_flag(a, strlen(a));
}

/* GNU's "--option=value" for every command: each such word before "--" (from `from` on) becomes
 * "--option" "value" in a new argv, which lives as long as the process; an option's value is
 * left as it is. 0, or the exit status (a flag given a value). */
static int split_equals(int *argc, char ***argv, int from)
{
    /* kept reachable for the process's life: the strings are the command's arguments, and the
     * names made here stay listed in `names` when a command takes words off its argv */
    static char **split, **names;
    int k = 0, n_names = 0;
    if (!(split = calloc((size_t)(*argc * 2 + 1), sizeof *split)) ||
        !(names = calloc((size_t)*argc + 1, sizeof *names))) {
        fprintf(stderr, "mood: error: out of memory\n");
        return 2;
    }
    for (int i = 0, opts = 1; i < *argc; i++) {
        char *a = (*argv)[i], *eq = strchr(a, '=');
        opts &= !(i >= from && strcmp(a, "--") == 0);
        if (i < from || !opts || strncmp(a, "--", 2) != 0 || !eq || eq == a + 2 ||
            (i > from && takes_next((*argv)[i - 1]))) {
            split[k++] = a;
            continue;
        }
        if (is_flag(a, (size_t)(eq - a))) {
            char msg[512];
            snprintf(msg, sizeof msg, "%.*s takes no value ('%s')", (int)(eq - a), a, a);
            fprintf(stderr, "mood: error: %s\n", msg);
            cli_json_error_note(msg);
            return 1;
        }
        if (!(split[k++] = names[n_names++] = strndup(a, (size_t)(eq - a)))) {
            fprintf(stderr, "mood: error: out of memory\n");
            return 2;
        }
        split[k++] = eq + 1;
    }
    *argc = k;
    *argv = split;
    return 0;
}

static int help(int argc, char **argv)
{
    int words;
    const cli_command *c;
    if (argc == 0 || strcmp(argv[0], "help") == 0) {
        print_overview(stdout);
        return 0;
    }
    c = find_command(argc, argv, &words);
    if (!c && argc > 1 && print_group(NULL, argv[0])) { /* `mood help lora bogus` */
        fprintf(stderr, "mood: error: no command '%s %s'; 'mood help %s' lists them\n", argv[0],
                argv[1], argv[0]);
        return 1;
    }
    if (!c && print_group(stdout, argv[0]))
        return 0;
    if (!c) {
        fprintf(stderr, "mood: error: no command '%s'; try 'mood help'\n", argv[0]);
        return 1;
    }
    fputs(c->help, stdout);
    return 0;
}

static int run(int argc, char **argv);

/* The command word closest to a mistyped one ("lsit": list), within a slip or two; NULL. The
 * first word of two-word commands counts ("lroa": lora). */
static const char *closest_command(const char *word)
{
    static char best[32];
    size_t limit = strlen(word) < 5 ? 1 : 2, d_best = limit + 1;
    for (const cli_command *c = cli_commands; c->name; c++) {
        char first[32];
        size_t d;
        snprintf(first, sizeof first, "%.*s", (int)strcspn(c->name, " "), c->name);
        if ((d = mood_str_distance(word, first, limit)) < d_best) {
            d_best = d;
            snprintf(best, sizeof best, "%s", first);
        }
    }
    return d_best <= limit ? best : NULL;
}

int main(int argc, char **argv)
{
    mood_blas_tune_process(argv);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    /* With a file-size limit, a write past it must fail with EFBIG (and a clean error), not kill
     * the process before it can remove its temporary file. */
    signal(SIGXFSZ, SIG_IGN);
    mood_log_set(cli_log_sink, NULL);
    /* --json anywhere before "--" (after it come prompts and queries): every failure, the
     * global options' and the command's, ends with the error document */
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        cli_json_wanted |= strncmp(argv[i], "--json", 6) == 0 && (!argv[i][6] || argv[i][6] == '=');
    return cli_json_error_print(run(argc, argv));
}

static int run(int argc, char **argv)
{
    const cli_command *c;
    int words;
    int grc = global_options(&argc, &argv);
    if (grc)
        return grc;
    if (argc < 2) {
        print_overview(stderr);
        return 1;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0)
        return help(argc - 2, argv + 2);
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("mood %s\n", mood_version());
        return 0;
    }
    c = find_command(argc - 1, argv + 1, &words);
    if (!c) {
        static const char *const groups[][2] = {{"pack", "export or import"},
                                                {"style", "create, edit or export"},
                                                {"civitai", "link"},
                                                {"lora", "stack, merge, resize or extract"}};
        for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++) {
            if (strcmp(argv[1], groups[i][0]) != 0)
                continue;
            if (argc > 2 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")))
                return help(1, argv + 1);      /* `mood lora --help`: the group's help */
            if (argc > 2 && argv[2][0] != '-') /* a word that is none of them */
                fprintf(stderr,
                        "mood: error: 'mood %s %s': unknown; 'mood %s' takes %s; see "
                        "'mood help %s'\n",
                        groups[i][0], argv[2], groups[i][0], groups[i][1], groups[i][0]);
            else
                fprintf(stderr,
                        "mood: error: 'mood %s' needs a subcommand: %s; see 'mood help "
                        "%s'\n",
                        groups[i][0], groups[i][1], groups[i][0]);
            return 1;
        }
        const char *near = closest_command(argv[1]);
        char msg[512];
        if (near)
            snprintf(msg, sizeof msg,
                     "unknown command '%.200s'; did you mean '%s'? (see 'mood help')", argv[1],
                     near);
        else
            snprintf(msg, sizeof msg, "unknown command '%.200s'; see 'mood help'", argv[1]);
        fprintf(stderr, "mood: error: %s\n", msg);
        cli_json_error_note(msg);
        return 1;
    }
    if ((grc = split_equals(&argc, &argv, 1 + words)) != 0)
        return grc;
    /* after "--" come prompts and queries, which may be "-h" */
    for (int i = 1 + words; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(c->help, stdout);
            return 0;
        }
    }
    if ((c->run == cmd_gen || c->run == cmd_demo || c->run == cmd_info) &&
        (grc = device_after_command(&argc, argv, 1 + words)) != 0)
        return grc;
    int drc = choose_device(c, argc - words, argv + words);
    if (drc)
        return drc;
    return c->run(argc - words, argv + words);
}
