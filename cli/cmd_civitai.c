/*
 * cmd_civitai.c: `mood civitai link NAME...|--all`, `mood update-check`, and the URL / Civitai half
 * of `mood import` (cmd_civitai.h). The network and registry work is in libmood
 * (include/mood/civitai.h); this file parses options and prints.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "cli/cli_text.h"
#include "cli/cmd_civitai.h"

const char cmd_civitai_link_help[] =
    "usage: mood civitai link NAME... [--nsfw LEVEL] [--json]\n"
    "       mood civitai link --all [--refresh] [--nsfw LEVEL] [--json]\n\n"
    "Looks each LoRA file of each style up on Civitai by its SHA-256 and stores what Civitai\n"
    "knows about it: model and version ids and names, base model, trained words (used as the\n"
    "style's trigger words when it has none), description, NSFW level, licence and permission\n"
    "flags, AIR, and preview images. Every LoRA of a style is tried: one Civitai does not know\n"
    "does not stop the others, and those linked stay linked. Up to 100 LoRAs go in one request,\n"
    "and each Civitai model is fetched once (a server without that batch lookup is asked about\n"
    "each LoRA on its own, after a warning). Once a request fails (network, server, rate limit)\n"
    "no more are made: the LoRAs left fail with it, and a later run tries them again.\n"
    "A LoRA Civitai lists for another base family than the file's own (SDXL 1.0 or Pony for an\n"
    "SD 1.x LoRA's keys) is linked with a warning naming both: the file's family stays the one\n"
    "mood uses.\n\n"
    "  --all         every style: each LoRA that has no Civitai data yet (from a link, a Civitai\n"
    "                or URL import, a .civitai.info sidecar, a pack); with a progress bar, then\n"
    "                how many were linked, which Civitai does not know (the first few), and why\n"
    "                the others failed. After 'mood import FOLDER', this links the lot.\n"
    "  --refresh     with --all: every LoRA, linked or not (Civitai's data again)\n"
    "  --nsfw LEVEL  previews kept: none, pg (default), pg13, r, x, xxx\n"
    "  --json        print one object per LoRA of each style: [{name, file, sha256, status,\n"
    "                model_id, version_id, model_name, version_name, base_model, air}], status\n"
    "                \"linked\", \"not_found\" (Civitai does not know the file) or \"error\" "
    "(with\n"
    "                error); {name, status \"error\", error} for a style that is not in the\n"
    "                registry; with --all, [] when there is nothing to link\n\n"
    "Environment: MOOD_CIVITAI_URL (API base, default https://civitai.com), CIVITAI_TOKEN (an\n"
    "API key, sent to Civitai only; never stored); MOOD_OFFLINE=1 refuses the command (exit 2).\n"
    "Exit status: 0 every LoRA linked (with --all: every LoRA linked or unknown to Civitai,\n"
    "which is listed: a folder of LoRAs always has some), 1 a style is not in the registry, 2 a\n"
    "LoRA is unknown to Civitai (without --all) or the network failed (the other LoRAs are\n"
    "linked); with both, 2.\n";

const char cmd_update_check_help[] =
    "usage: mood update-check [--json]\n\n"
    "Lists the styles whose Civitai model has a newer version than the one in the registry, for\n"
    "the same base family (a new SDXL version of a model is not an update of its SD 1.5 style).\n"
    "Each LoRA of a style linked to Civitai is checked; styles without Civitai data are not\n"
    "('mood civitai link NAME' adds it). When Civitai cannot be reached, it says how many styles\n"
    "could not be checked, and why, instead of \"no updates\".\n\n"
    "  --json   print {n_styles, checked, not_checked (styles counted once however many LoRAs\n"
    "           they have), updates [{name, file, sha256, model_id, model_name, version_id,\n"
    "           version_name, latest_version_id, latest_version_name, latest_base_model,\n"
    "           latest_published_at, url}], errors [{name, file, sha256, model_id, error}]}\n"
    "           (one update or error per LoRA)\n\n"
    "Exit status: 0 every style checked (updates or not), 2 a style could not be checked (or\n"
    "MOOD_OFFLINE is set: it asks Civitai, so it is refused).\n";

void cli_civitai_flags_init(cli_civitai_flags *f)
{
    const char *off = getenv("MOOD_OFFLINE");
    memset(f, 0, sizeof *f);
    f->offline = off && *off && strcmp(off, "0") != 0;
    f->nsfw_max = 1;
}

int cli_parse_nsfw(const char *s, int *out)
{
    static const struct {
        const char *name;
        int level;
    } levels[] = {{"none", 0}, {"pg", 1},   {"pg13", 2}, {"pg-13", 2}, {"r", 4},
                  {"x", 8},    {"xxx", 16}, {"0", 0},    {"1", 1},     {"2", 2},
                  {"4", 4},    {"8", 8},    {"16", 16}};
    for (size_t i = 0; s && i < sizeof levels / sizeof levels[0]; i++) {
        if (strcasecmp(s, levels[i].name) == 0) {
            *out = levels[i].level;
            return 0;
        }
    }
    fprintf(stderr, "mood: error: --nsfw '%s': expected none, pg, pg13, r, x or xxx\n", s ? s : "");
    return 1;
}

int cli_is_remote(const char *arg)
{
    return strncasecmp(arg, "http://", 7) == 0 || strncasecmp(arg, "https://", 8) == 0 ||
           mood_civitai_is_ref(arg);
}

static int json_int(const cJSON *o, const char *key)
{
    return (int)cJSON_GetNumberValue(cJSON_GetObjectItem(o, key));
}

/* The string at key, "" when there is none. */
static const char *json_str(const cJSON *o, const char *key)
{
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
    return v ? v : "";
}

static cJSON *version_json(const mood_civitai_version *v)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "model_id", (double)v->model_id);
    cJSON_AddNumberToObject(o, "version_id", (double)v->id);
    if (v->model_name)
        cJSON_AddStringToObject(o, "model_name", v->model_name);
    if (v->name)
        cJSON_AddStringToObject(o, "version_name", v->name);
    if (v->base_model)
        cJSON_AddStringToObject(o, "base_model", v->base_model);
    if (v->air)
        cJSON_AddStringToObject(o, "air", v->air);
    return o;
}

/* The Civitai client. For civitai link and update-check (`cmd`), whose whole job is to ask
 * Civitai, refused under MOOD_OFFLINE (exit 2, the environment's), which promises no network;
 * an import (`cmd` NULL) of a download link is a download, not a lookup, as import's help says. */
static int open_client(mood_civitai **c, const char *cmd)
{
    cli_civitai_flags f;
    cli_civitai_flags_init(&f);
    if (cmd && f.offline) {
        fprintf(stderr,
                "mood: error: %s asks Civitai, which MOOD_OFFLINE=%s in the environment rules "
                "out; unset it (or set it to 0) to run it\n",
                cmd, getenv("MOOD_OFFLINE"));
        return 2;
    }
    int err = mood_civitai_open(c, NULL);
    return err ? cli_fail(err) : 0;
}

/* The previews style `name` has now (sidecars' and Civitai's), or -1 when unknown. */
static int preview_count(mood_registry *r, const char *name)
{
    char *text = NULL;
    cJSON *j;
    int n = -1;
    if (mood_registry_show_json(&text, r, name) != 0)
        return -1;
    if ((j = cJSON_Parse(text)) != NULL)
        n = cJSON_GetArraySize(cJSON_GetObjectItem(j, "previews"));
    cJSON_Delete(j);
    mood_registry_free_string(text);
    return n;
}

/* --json's "n_previews" of an imported style: what it holds after the Civitai lookup too. */
static void set_previews(cJSON *o, mood_registry *r, const char *name)
{
    int n = preview_count(r, name);
    if (n < 0)
        return;
    if (cJSON_GetObjectItem(o, "n_previews"))
        cJSON_SetNumberValue(cJSON_GetObjectItem(o, "n_previews"), n);
    else
        cJSON_AddNumberToObject(o, "n_previews", n);
}

int cli_import_remote(mood_registry *r, const char *what, const cli_civitai_flags *f, cJSON *o,
                      int *already)
{
    mood_civitai *c = NULL;
    mood_civitai_version *v = NULL;
    mood_civitai_import_options opts;
    mood_import_result res;
    int err, rc;
    *already = 0;
    cJSON_AddStringToObject(o, "file", what);
    if ((rc = open_client(&c, NULL)) != 0)
        return rc;
    mood_civitai_import_options_init(&opts);
    opts.offline = f->offline;
    opts.nsfw_max = f->nsfw_max;
    opts.progress = cli_progress;
    err = mood_civitai_import(r, &res, &v, c, what, &opts);
    cli_progress_done();
    mood_civitai_close(c);
    if (err) {
        cJSON_AddStringToObject(o, "error", mood_error_last());
        if (!f->json)
            fprintf(stderr, "mood: error: %s\n", mood_error_last());
        return mood_error_is_user(err) ? 1 : 2;
    }
    *already = res.already;
    cJSON_AddStringToObject(o, "name", res.name);
    cJSON_AddStringToObject(o, "sha256", res.sha256);
    if (!res.already) { /* the fields of a local file's import (cmd_import.c) */
        cJSON_AddStringToObject(o, "wanted", res.wanted);
        cJSON_AddBoolToObject(o, "renamed", res.renamed);
        cJSON_AddStringToObject(o, "autov3", res.autov3);
        cJSON_AddStringToObject(o, "family", res.family);
        set_previews(o, r, res.name);
        cJSON_AddNumberToObject(o, "sidecars", res.sidecars);
    }
    if (v)
        cJSON_AddItemToObject(o, "civitai", version_json(v));
    if (!f->json && res.already)
        printf("%s: already in the registry as %s%s\n", what, res.name,
               v ? " (Civitai data updated)" : "");
    else if (!f->json) { /* names from Civitai are made visible as any text from outside */
        char *model = cli_text_visible(v && v->model_name ? v->model_name : "", 0);
        char *version = cli_text_visible(v && v->name ? v->name : "", 0);
        printf("imported %s as %s (%s%s%s%s%s)\n", what, res.name, res.family,
               v ? ", Civitai: " : "", model ? model : "?", v && v->name ? " " : "",
               version ? version : "?");
        free(model);
        free(version);
    }
    mood_civitai_version_free(v);
    return 0;
}

void cli_civitai_after_import(mood_registry *r, const char *name, const cli_civitai_flags *f,
                              cJSON *o)
{
    mood_civitai *c = NULL;
    mood_civitai_version *v = NULL;
    mood_civitai_import_options opts;
    int err;
    if (f->offline || mood_civitai_open(&c, NULL) != 0)
        return;
    mood_civitai_set_retries(c, 0);
    mood_civitai_import_options_init(&opts);
    opts.nsfw_max = f->nsfw_max;
    err = mood_civitai_link(&v, r, c, name, &opts);
    mood_civitai_close(c);
    if (err == 0) {
        set_previews(o, r, name);
        cJSON_AddItemToObject(o, "civitai", version_json(v));
        if (!f->json) {
            char *model = cli_text_visible(v->model_name ? v->model_name : "?", 0);
            char *version = cli_text_visible(v->name ? v->name : "", 0);
            char *air = cli_text_visible(v->air ? v->air : "", 0);
            printf("  found on Civitai: %s %s (%s)\n", model ? model : "?", version ? version : "?",
                   air ? air : "?");
            free(model);
            free(version);
            free(air);
        }
    } else if (err != MOOD_ENOTFOUND && !f->json) {
        cli_warn("Civitai lookup of %s skipped: %s ('mood civitai link %s' tries again; "
                 "--offline skips it)",
                 name, mood_error_last(), name);
    }
    mood_civitai_version_free(v);
}

/* "linked NAME[ (FILE)] to Civitai: ..." with the text Civitai and the file's importer chose made
 * visible (cli_text_visible). The file is named only for a style of several LoRAs. */
static void print_linked(const char *name, const mood_civitai_link_result *res, int several)
{
    const mood_civitai_version *v = res->version;
    char *file =
        several ? cli_text_visible(res->file_name ? res->file_name : res->sha256, 0) : NULL;
    char *model = cli_text_visible(v->model_name ? v->model_name : "?", 0);
    char *version = cli_text_visible(v->name ? v->name : "", 0);
    char *air = cli_text_visible(v->air ? v->air : "no AIR", 0);
    printf("linked %s%s%s%s to Civitai: %s %s (model %lld, version %lld, %s)\n", name,
           file ? " (" : "", file ? file : "", file ? ")" : "", model ? model : "?",
           version ? version : "", v->model_id, v->id, air ? air : "");
    free(file);
    free(model);
    free(version);
    free(air);
}

/* "mood: error: ..." for a LoRA that was not linked. The "not found" message names the style and
 * the file already; a failed request names only its URL, so the LoRA is put before it. */
static void report_failure(const char *name, const mood_civitai_link_result *res, const char *why)
{
    char msg[4096];
    if (res->status == MOOD_ENOTFOUND)
        snprintf(msg, sizeof msg, "%s", why);
    else
        snprintf(msg, sizeof msg, "linking style '%s' (%s): %s", name,
                 res->file_name ? res->file_name : res->sha256, why);
    cli_text_report("error", msg);
}

/* One entry per LoRA of res in `list` ({name, file, sha256, status, and the version or the
 * error}), and a line per LoRA when `lines`. Returns the exit status for them: 0 all linked, 2 a
 * LoRA Civitai does not know or could not be asked about. */
static int add_results(cJSON *list, const mood_civitai_link_result *res, size_t n, int lines)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const char *why = res[i].error ? res[i].error : "Civitai lookup failed";
        cJSON *o = res[i].status ? cJSON_CreateObject() : version_json(res[i].version);
        cJSON_AddStringToObject(o, "name", res[i].name);
        if (res[i].file_name)
            cJSON_AddStringToObject(o, "file", res[i].file_name);
        cJSON_AddStringToObject(o, "sha256", res[i].sha256);
        cJSON_AddStringToObject(o, "status",
                                !res[i].status                    ? "linked"
                                : res[i].status == MOOD_ENOTFOUND ? "not_found"
                                                                  : "error");
        if (res[i].status) {
            cJSON_AddStringToObject(o, "error", why);
            /* Civitai's answer or the network, not what was typed: always the environment */
            rc = 2;
        }
        cJSON_AddItemToArray(list, o);
        if (!lines)
            continue;
        if (!res[i].status)
            print_linked(res[i].name, &res[i], n > 1);
        else
            report_failure(res[i].name, &res[i], why);
    }
    return rc;
}

/* Links the LoRAs of one style (add_results, a line per LoRA unless json). Returns the exit
 * status for it: add_results', or 1 when there is no such style. */
static int link_style(cJSON *list, mood_registry *r, mood_civitai *c, const char *name,
                      const mood_civitai_import_options *opts, int json)
{
    mood_civitai_link_result *res = NULL;
    size_t n = 0;
    int rc, err = mood_civitai_link_each(&res, &n, r, c, name, opts);
    if (err) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", name);
        cJSON_AddStringToObject(o, "status", "error");
        cJSON_AddStringToObject(o, "error", mood_error_last());
        cJSON_AddItemToArray(list, o);
        if (!json)
            cli_text_report("error", mood_error_last());
        /* a style that is not in the registry is a mistyped name: bad input, as for show, rm */
        return err == MOOD_ENOTFOUND || mood_error_is_user(err) ? 1 : 2;
    }
    rc = add_results(list, res, n, !json);
    mood_civitai_link_results_free(res, n);
    return rc;
}

static void warn_errors(const cJSON *errors, const char *base, const char *what, const char *cmd);

#define UNKNOWN_SHOWN 5

/* The text summary of `civitai link --all` (its list made visible as any text from outside):
 * the counts, the first LoRAs Civitai does not know, and each reason of a failure once. */
static void print_all_summary(cJSON *list, const char *base)
{
    cJSON *errors = cJSON_CreateArray(), *e;
    int n = cJSON_GetArraySize(list), linked = 0, unknown = 0;
    cli_text_clean_json(list, NULL);
    cJSON_ArrayForEach(e, list)
    {
        const char *st = json_str(e, "status");
        if (strcmp(st, "linked") == 0) {
            linked++;
        } else if (strcmp(st, "not_found") == 0) {
            if (unknown++ < UNKNOWN_SHOWN)
                printf("%s%s (%s)", unknown == 1 ? "not on Civitai: " : ", ", json_str(e, "name"),
                       *json_str(e, "file") ? json_str(e, "file") : json_str(e, "sha256"));
        } else {
            cJSON_AddItemReferenceToArray(errors, e);
        }
    }
    if (unknown > UNKNOWN_SHOWN)
        printf(" and %d more ('mood civitai link --all --json' lists them)",
               unknown - UNKNOWN_SHOWN);
    if (unknown)
        printf("\n");
    warn_errors(errors, base, "not linked", "civitai link --all");
    cJSON_Delete(errors);
    if (!n)
        printf("nothing to link: every LoRA of every style has Civitai data ('mood civitai link "
               "--all --refresh' looks them up again)\n");
    else
        printf("%d of %d LoRA%s linked to Civitai, %d not on Civitai, %d failed\n", linked, n,
               n == 1 ? "" : "s", unknown, n - linked - unknown);
}

/* `civitai link --all [--refresh]`: every LoRA without Civitai data (every LoRA), with a
 * progress bar; the list of results (--json) or a summary. Returns the exit status. */
static int link_all(mood_registry *r, mood_civitai *c, int refresh,
                    mood_civitai_import_options *opts, int json)
{
    mood_civitai_link_result *res = NULL;
    size_t n = 0;
    cJSON *list;
    int rc, err;
    opts->progress = cli_progress;
    err = mood_civitai_link_all(&res, &n, r, c, refresh, opts);
    cli_progress_done();
    if (err)
        return cli_fail(err);
    list = cJSON_CreateArray();
    add_results(list, res, n, 0);
    rc = 0; /* a LoRA Civitai does not know is an answer here, listed; a failed lookup is not */
    for (size_t i = 0; i < n; i++)
        rc = res[i].status && res[i].status != MOOD_ENOTFOUND ? 2 : rc;
    mood_civitai_link_results_free(res, n);
    if (json) {
        int prc = cli_print_json(list);
        return rc > prc ? rc : prc;
    }
    print_all_summary(list, mood_civitai_base(c));
    cJSON_Delete(list);
    return rc;
}

int cmd_civitai_link(int argc, char **argv)
{
    mood_registry *r = NULL;
    mood_civitai *c = NULL;
    mood_civitai_import_options opts;
    cJSON *list = NULL;
    int json = 0, rc = 0, any = 0, all = 0, refresh = 0;
    mood_civitai_import_options_init(&opts);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--all") == 0)
            all = 1;
        else if (strcmp(argv[i], "--refresh") == 0)
            refresh = 1;
        else if (strcmp(argv[i], "--nsfw") == 0 && i + 1 < argc)
            rc = cli_parse_nsfw(argv[++i], &opts.nsfw_max);
        else if (argv[i][0] == '-')
            return cli_unknown_option("civitai link", argv[i]);
        else
            any = 1;
        if (rc)
            return rc;
    }
    if (!any && !all)
        return cli_usage_error("civitai link",
                               "give the names of the styles to link, or --all for every style");
    if (any && all)
        return cli_usage_error("civitai link", "give the names of the styles or --all, not both");
    if (refresh && !all)
        return cli_usage_error("civitai link", "--refresh goes with --all (a style named is "
                                               "always looked up again)");
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    if ((rc = open_client(&c, "civitai link")) != 0) {
        mood_registry_close(r);
        return rc;
    }
    if (all) {
        rc = link_all(r, c, refresh, &opts, json);
        mood_civitai_close(c);
        mood_registry_close(r);
        return rc;
    }
    list = cJSON_CreateArray();
    const char **names = calloc((size_t)argc, sizeof *names);
    size_t n = 0;
    for (int i = 1; names && i < argc; i++) {
        if (argv[i][0] == '-')
            i += strcmp(argv[i], "--nsfw") == 0;
        else
            names[n++] = argv[i];
    }
    n = names ? cli_drop_repeated_names(names, n) : 0; /* "link v1 V1": one style, once */
    rc = names ? 0 : cli_fail(MOOD_ENOMEM);
    for (size_t i = 0; i < n; i++) {
        int src = link_style(list, r, c, names[i], &opts, json);
        rc = src > rc ? src : rc;
    }
    free(names);
    mood_civitai_close(c);
    mood_registry_close(r);
    if (json) {
        int prc = cli_print_json(list);
        return rc > prc ? rc : prc;
    }
    cJSON_Delete(list);
    return rc;
}

/* The reason of an update-check error without the URL it starts with ("URL: reason"), so that
 * one failure reads the same for every Civitai model it stopped. */
static const char *reason_of(const char *msg)
{
    const char *p = strstr(msg, ": ");
    int url = strncmp(msg, "http://", 7) == 0 || strncmp(msg, "https://", 8) == 0;
    return url && p ? p + 2 : msg;
}

#define REASONS_SHOWN 4

typedef struct reason_group {
    const char *first;  /* the group's first message */
    const char *reason; /* reason_of(first) */
    int same;           /* every message of the group is `first` (one URL) */
    const char *last;   /* the style named last */
    char names[1024];
    size_t len;
} reason_group;

/* One warning per reason ("WHAT: styles: reason"), naming each style it stopped once: with the
 * network down every style fails for the same reason, not one line per LoRA or per model. A
 * style's errors are consecutive (update-check's and link --all's order), so comparing with the
 * style named last is enough. A few reasons are shown; the rest are counted ('mood CMD --json'
 * lists every error). */
static void warn_errors(const cJSON *errors, const char *base, const char *what, const char *cmd)
{
    reason_group g[REASONS_SHOWN];
    int n = 0, more = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, errors)
    {
        const char *msg = json_str(e, "error"), *name = json_str(e, "name");
        const char *why = reason_of(msg);
        int i = 0;
        while (i < n && strcmp(g[i].reason, why) != 0)
            i++;
        if (i == REASONS_SHOWN) {
            more++;
            continue;
        }
        if (i == n) {
            memset(&g[i], 0, sizeof g[i]);
            g[i].first = msg;
            g[i].reason = why;
            g[i].same = 1;
            n++;
        }
        g[i].same = g[i].same && strcmp(g[i].first, msg) == 0;
        if (g[i].last && strcmp(g[i].last, name) == 0)
            continue;
        g[i].last = name;
        if (g[i].len < sizeof g[i].names)
            g[i].len += (size_t)snprintf(g[i].names + g[i].len, sizeof g[i].names - g[i].len,
                                         "%s%s", g[i].len ? ", " : "", name);
    }
    for (int i = 0; i < n; i++) {
        if (g[i].len >= sizeof g[i].names) /* cut off: say so */
            memcpy(g[i].names + sizeof g[i].names - 4, "...", 4);
        if (g[i].same)
            cli_warn("%s: %s: %s", what, g[i].names, g[i].first);
        else /* the URLs name different models; the server and the reason are what they share */
            cli_warn("%s: %s: %s: %s", what, g[i].names, base, g[i].reason);
    }
    if (more)
        cli_warn("%d more error%s ('mood %s --json' lists them all)", more, more == 1 ? "" : "s",
                 cmd);
}

int cmd_update_check(int argc, char **argv)
{
    mood_registry *r = NULL;
    mood_civitai *c = NULL;
    char *text = NULL, base[512];
    cJSON *rep, *u;
    int json = 0, rc, err, styles, checked, not_checked, n_updates;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else
            return argv[i][0] == '-'
                       ? cli_unknown_option("update-check", argv[i])
                       : cli_usage_error("update-check", "unexpected argument '%s'", argv[i]);
    }
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    if ((rc = open_client(&c, "update-check")) != 0) {
        mood_registry_close(r);
        return rc;
    }
    err = mood_civitai_update_check(&text, r, c);
    snprintf(base, sizeof base, "%s", mood_civitai_base(c));
    mood_civitai_close(c);
    mood_registry_close(r);
    if (err)
        return cli_fail(err);
    rep = cJSON_Parse(text);
    mood_civitai_free_string(text);
    if (!rep)
        return cli_fail(MOOD_ENOMEM);
    styles = json_int(rep, "n_styles");
    checked = json_int(rep, "checked");
    not_checked = json_int(rep, "not_checked");
    n_updates = cJSON_GetArraySize(cJSON_GetObjectItem(rep, "updates"));
    if (json)
        return cli_print_json(rep) ? 2 : (not_checked ? 2 : 0);
    cli_text_clean_json(rep, NULL); /* names and errors come from Civitai and the registry */
    warn_errors(cJSON_GetObjectItem(rep, "errors"), base, "not checked", "update-check");
    cJSON_ArrayForEach(u, cJSON_GetObjectItem(rep, "updates"))
    {
        const char *bm = json_str(u, "latest_base_model");
        const char *vn = json_str(u, "version_name");
        printf("%s: %s -> %s (%s) %s\n", json_str(u, "name"), *vn ? vn : "?",
               json_str(u, "latest_version_name"), *bm ? bm : "?", json_str(u, "url"));
    }
    /* "no updates" only about styles that were checked: a style that could not be checked may
     * have one */
    if (!styles)
        printf("nothing to check: no style has Civitai data ('mood civitai link NAME' adds it)\n");
    else if (!not_checked && !n_updates)
        printf("no updates (%d style%s with Civitai data checked)\n", checked,
               checked == 1 ? "" : "s");
    else if (not_checked && !checked)
        printf("nothing checked: none of the %d style%s with Civitai data could be checked\n",
               styles, styles == 1 ? "" : "s");
    else if (not_checked)
        printf("%s%d of %d style%s with Civitai data checked, %d could not be\n",
               n_updates ? "" : "no updates: ", checked, styles, styles == 1 ? "" : "s",
               not_checked);
    cJSON_Delete(rep);
    return not_checked ? 2 : 0;
}
