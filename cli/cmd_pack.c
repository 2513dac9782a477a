/*
 * cmd_pack.c: `mood pack export NAME... -o FILE.moodpack [--reference-only] [--json]` and
 * `mood pack import FILE [--json]`: sharing styles as one file (include/mood/pack.h).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "mood/pack.h"

const char cmd_pack_export_help[] =
    "usage: mood pack export NAME... -o FILE.moodpack [--reference-only] [--license TEXT]\n"
    "                        [--attribution TEXT] [--json]\n\n"
    "Writes the named styles to one file to share them: their LoRAs, trigger words, weights,\n"
    "prompt templates, negative prompts, tags, previews, and where each LoRA came from (AIR,\n"
    "licence), described by a manifest.json inside the archive (tar + zstd), and a trained\n"
    "style's mood board thumbnails; its training record and loss curve stay behind. The same\n"
    "styles, named in the same order, always give the same file. 'mood pack import' reads it\n"
    "back.\n\n"
    "  -o, --output FILE  the pack to write (an earlier pack of that name is replaced once\n"
    "                     the new one is complete; any other existing file is refused)\n"
    "  --reference-only   do not embed the LoRA files: reference them by SHA-256 and AIR\n"
    "                     (the importer must have them already: pack import lists each\n"
    "                     missing one with its AIR, for 'mood import' to fetch it)\n"
    "  --license TEXT     licence of the pack as a whole, stored in the manifest\n"
    "  --attribution TEXT credits, stored in the manifest\n"
    "  --json             print {pack, styles, reference_only, size}\n\n"
    "Exit status: 0 written, 1 unknown style, 2 the pack or a stored file could not be\n"
    "written or read.\n";

const char cmd_pack_import_help[] =
    "usage: mood pack import FILE.moodpack [--rename NAME=NEW]... [--json]\n\n"
    "Adds the styles of a pack to the registry, with their LoRAs and previews. Everything in\n"
    "the pack is checked first: only plain files listed in its manifest (no links, devices,\n"
    "absolute paths or '..'), sizes within limits (8 GiB unpacked), and every file's SHA-256\n"
    "as the manifest says. Then all of it is added in one step: if anything is wrong, nothing\n"
    "is added and the message says which file of the pack was refused.\n\n"
    "LoRAs the pack only references (made with --reference-only) must already be in the\n"
    "registry; otherwise the import stops and lists each missing one with its SHA-256 and\n"
    "AIR (import it with 'mood import'). A style whose name is taken by one of yours with\n"
    "the same LoRAs (as 'mood import' of a referenced LoRA makes, or the same pack imported\n"
    "again) is merged into yours: yours keeps its text, weights and board, and gains what\n"
    "it lacks (description, notes, trigger words, template, negative prompt, weight) and the\n"
    "pack's tags and previews. A name taken by a style with other LoRAs is refused (all such\n"
    "names in one message): rename or remove yours first, or import the pack's under other\n"
    "names with --rename. So is a style whose LoRAs are made for different base families\n"
    "(as 'mood style create' refuses one).\n\n"
    "  --rename NAME=NEW  import the pack's style NAME as NEW (repeat for more styles)\n"
    "  --json             print {pack, styles, merged, adapters_added, adapters_present,\n"
    "                     n_previews, attribution, license, created_by}\n\n"
    "Exit status: 0 imported, 1 the pack was refused (also when FILE is not a regular file:\n"
    "a folder, a named pipe) or needs missing LoRAs, 2 it is missing or could not be read, or\n"
    "the registry could not be written.\n";

/* A style or adapter that is not in the registry is a problem of the input (exit 1); a pack file
 * that does not exist is one of the environment (exit 2). */
static int fail(int err, const char *pack)
{
    int rc = cli_fail(err);
    return err == MOOD_ENOTFOUND && (!pack || access(pack, F_OK) == 0) ? 1 : rc;
}

/* Whether path is a plain file (not a link) holding a pack: zstd's magic number first. */
static int is_pack_file(const char *path)
{
    unsigned char magic[4] = {0};
    struct stat st;
    FILE *f;
    int yes;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode) || !(f = fopen(path, "rb")))
        return 0;
    yes = fread(magic, 1, 4, f) == 4 && magic[0] == 0x28 && magic[1] == 0xB5 && magic[2] == 0x2F &&
          magic[3] == 0xFD;
    fclose(f);
    return yes;
}

int cmd_pack_export(int argc, char **argv)
{
    mood_pack_export_options o;
    const char *out = NULL;
    mood_registry *r = NULL;
    size_t n = 0;
    int json = 0, rc = 0, err;
    mood_pack_export_options_init(&o);
    /* the names are gathered at the front of argv (n <= i: nothing unread is overwritten) */
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--json") == 0)
            json = 1;
        else if (strcmp(a, "--reference-only") == 0)
            o.reference_only = 1;
        else if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && has_value)
            out = argv[++i];
        else if (strcmp(a, "--license") == 0 && has_value)
            o.license = argv[++i];
        else if (strcmp(a, "--attribution") == 0 && has_value)
            o.attribution = argv[++i];
        else if (a[0] == '-' && a[1])
            rc = cli_unknown_option("pack export", a);
        else
            argv[n++] = argv[i];
    }
    n = cli_drop_repeated_names((const char **)argv, n);
    if (!rc && !n)
        rc = cli_usage_error("pack export", "name at least one style to export");
    if (!rc && !out)
        rc = cli_usage_error("pack export", "say where to write the pack: -o FILE.moodpack");
    if (!rc && strcmp(out, "-") == 0) /* not a file named "-" beside the user's work */
        rc = cli_usage_error("pack export", "a pack is written to a file: -o FILE.moodpack "
                                            "(standard output is not supported)");
    if (!rc && (err = mood_output_path_check(out)) != 0) /* a missing folder: exit 2, first */
        rc = cli_fail(err);
    if (!rc && cli_path_exists(out) && !is_pack_file(out)) /* a LoRA or a document: lost */
        rc = cli_usage_error("pack export",
                             "-o %s: that file exists and is not a mood pack (or is a link); give "
                             "a new name, or a .moodpack file to replace",
                             out);
    if (!rc && (strlen(out) < 9 || strcasecmp(out + strlen(out) - 9, ".moodpack") != 0))
        cli_warn("%s: written as a .moodpack (a tar archive compressed with zstd) whatever its "
                 "name; 'mood pack import' reads it",
                 out);
    if (!rc && (rc = cli_registry_open(&r)) == 0) {
        o.progress = cli_progress;
        err = mood_pack_export(r, (const char *const *)argv, n, out, &o);
        cli_progress_done();
        if (err) {
            rc = fail(err, NULL);
        } else if (json) {
            cJSON *j = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(j, "styles");
            FILE *f = fopen(out, "rb");
            long size = -1;
            if (f && fseek(f, 0, SEEK_END) == 0)
                size = ftell(f);
            if (f)
                fclose(f);
            cJSON_AddStringToObject(j, "pack", out);
            for (size_t i = 0; i < n; i++)
                cJSON_AddItemToArray(arr, cJSON_CreateString(argv[i]));
            cJSON_AddBoolToObject(j, "reference_only", o.reference_only);
            cJSON_AddNumberToObject(j, "size", (double)size);
            rc = cli_print_json(j);
        } else {
            printf("wrote %s (%zu style%s%s)\n", out, n, n == 1 ? "" : "s",
                   o.reference_only ? ", adapters referenced, not embedded" : "");
        }
    }
    mood_registry_close(r);
    return rc;
}

static int in_list(const cJSON *list, const char *name)
{
    const cJSON *s;
    cJSON_ArrayForEach(s, list)
    {
        if (cJSON_IsString(s) && strcmp(s->valuestring, name) == 0)
            return 1;
    }
    return 0;
}

/* Names of a report's list, the first SHOWN_NAMES of them: a pack of 50 styles is one line. */
#define SHOWN_NAMES 10
static void print_names(const cJSON *names, const cJSON *except)
{
    int shown = 0, total = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, names)
    {
        if (!cJSON_IsString(s) || (except && in_list(except, s->valuestring)))
            continue;
        if (total++ < SHOWN_NAMES)
            printf("%s%s", shown++ ? ", " : " ", s->valuestring);
    }
    if (total > shown)
        printf(" and %d more ('--json' lists them all)", total - shown);
    printf("\n");
}

/* pack import's report for people: the styles new to the registry, those merged into yours,
 * and the pack's licence and credits (which --json has too). */
static void print_import_report(const cJSON *rep, const char *path)
{
    const cJSON *styles = cJSON_GetObjectItem(rep, "styles"),
                *merged = cJSON_GetObjectItem(rep, "merged"),
                *added = cJSON_GetObjectItem(rep, "adapters_added");
    int n_new = cJSON_GetArraySize(styles) - cJSON_GetArraySize(merged);
    int n_added = cJSON_IsNumber(added) ? (int)added->valuedouble : 0;
    const char *license = cJSON_GetStringValue(cJSON_GetObjectItem(rep, "license")),
               *credits = cJSON_GetStringValue(cJSON_GetObjectItem(rep, "attribution"));
    if (n_new > 0) {
        printf("imported %d new style%s from %s (%d LoRA file%s added):", n_new,
               n_new == 1 ? "" : "s", path, n_added, n_added == 1 ? "" : "s");
        print_names(styles, merged);
    } else {
        printf("no new styles from %s (%d LoRA file%s added)\n", path, n_added,
               n_added == 1 ? "" : "s");
    }
    if (cJSON_GetArraySize(merged) > 0) {
        printf("merged into the styles of the same name and LoRAs you had (kept what they had, "
               "added what they lacked):");
        print_names(merged, NULL);
    }
    if (license)
        printf("the pack's licence: %s\n", license);
    if (credits)
        printf("the pack's credits: %s\n", credits);
}

/* --rename NAME=NEW as from[*n] and to[*n] (lists sized for every argument; arg is cut at
 * its '='). */
static int add_rename(const char **from, const char **to, size_t *n, char *arg)
{
    char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1])
        return cli_usage_error("pack import", "--rename takes NAME=NEW, not '%s'", arg);
    *eq = '\0';
    from[*n] = arg;
    to[(*n)++] = eq + 1;
    return 0;
}

int cmd_pack_import(int argc, char **argv)
{
    mood_pack_import_options o;
    mood_registry *r = NULL;
    const char *path = NULL, **from = calloc((size_t)argc, sizeof *from),
               **to = calloc((size_t)argc, sizeof *to);
    char *text = NULL;
    int json = 0, rc = from && to ? 0 : cli_fail(MOOD_ENOMEM), err;
    mood_pack_import_options_init(&o);
    o.rename_from = from;
    o.rename_to = to;
    for (int i = 1; i < argc && !rc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--rename") == 0 && i + 1 < argc)
            rc = add_rename(from, to, &o.n_renames, argv[++i]);
        else if (argv[i][0] == '-' && argv[i][1])
            rc = cli_unknown_option("pack import", argv[i]);
        else if (path)
            rc = cli_usage_error("pack import", "one pack at a time");
        else
            path = argv[i];
    }
    if (!rc && !path)
        rc = cli_usage_error("pack import", "name the pack to import");
    if (!rc && (rc = cli_registry_open(&r)) == 0) {
        o.progress = cli_progress;
        err = mood_pack_import(&text, r, path, &o);
        cli_progress_done();
        mood_registry_close(r);
        if (err) {
            rc = fail(err, path);
        } else if (json) {
            rc = cli_print_json(cJSON_Parse(text));
        } else {
            cJSON *rep = cJSON_Parse(text);
            print_import_report(rep, path);
            cJSON_Delete(rep);
        }
        mood_registry_free_string(text);
    }
    free(from);
    free(to);
    return rc;
}
