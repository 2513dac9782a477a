/*
 * cmd_civitai.c: `mood civitai link NAME...`, `mood update-check`, and the URL / Civitai half of
 * `mood import` (cmd_civitai.h). The network and registry work is in libmood
 * (include/mood/civitai.h); this file parses options and prints.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "cli/cmd_civitai.h"

const char cmd_civitai_link_help[] =
    "usage: mood civitai link NAME... [--nsfw LEVEL] [--json]\n\n"
    "Looks the LoRA files of each style up on Civitai by their SHA-256 and stores what Civitai\n"
    "knows about them: model and version ids and names, base model, trained words (used as the\n"
    "style's trigger words when it has none), description, NSFW level, licence and permission\n"
    "flags, AIR, and preview images.\n\n"
    "  --nsfw LEVEL  previews kept: none, pg (default), pg13, r, x, xxx\n"
    "  --json        print [{name, model_id, version_id, model_name, version_name, base_model,\n"
    "                air}] (or {name, error} for a style that could not be linked)\n\n"
    "Environment: MOOD_CIVITAI_URL (API base, default https://civitai.com), CIVITAI_TOKEN (an\n"
    "API key, sent to Civitai only; never stored).\n"
    "Exit status: 0 all linked, 2 a style is unknown to Civitai or the network failed.\n";

const char cmd_update_check_help[] =
    "usage: mood update-check [--json]\n\n"
    "Lists the styles whose Civitai model has a newer version than the one in the registry, for\n"
    "the same base family (a new SDXL version of a model is not an update of its SD 1.5 style).\n"
    "Styles without Civitai data are not checked ('mood civitai link NAME' adds it).\n\n"
    "  --json   print {checked, updates [{name, model_id, model_name, version_id, version_name,\n"
    "           latest_version_id, latest_version_name, latest_base_model,\n"
    "           latest_published_at, url}], errors [{name, model_id, error}]}\n\n"
    "Exit status: 0 (updates or not), 2 a model could not be checked.\n";

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

static int open_client(mood_civitai **c)
{
    int err = mood_civitai_open(c, NULL);
    return err ? cli_fail(err) : 0;
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
    if ((rc = open_client(&c)) != 0)
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
    if (!res.already) {
        cJSON_AddStringToObject(o, "wanted", res.wanted);
        cJSON_AddBoolToObject(o, "renamed", res.renamed);
        cJSON_AddStringToObject(o, "autov3", res.autov3);
        cJSON_AddStringToObject(o, "family", res.family);
    }
    if (v)
        cJSON_AddItemToObject(o, "civitai", version_json(v));
    if (!f->json && res.already)
        printf("%s: already in the registry as %s%s\n", what, res.name,
               v ? " (Civitai data updated)" : "");
    else if (!f->json)
        printf("imported %s as %s (%s%s%s%s%s)\n", what, res.name, res.family,
               v ? ", Civitai: " : "", v && v->model_name ? v->model_name : "",
               v && v->name ? " " : "", v && v->name ? v->name : "");
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
        cJSON_AddItemToObject(o, "civitai", version_json(v));
        if (!f->json)
            printf("  found on Civitai: %s %s (%s)\n", v->model_name ? v->model_name : "?",
                   v->name ? v->name : "", v->air ? v->air : "");
    } else if (err != MOOD_ENOTFOUND && !f->json) {
        cli_warn("Civitai lookup of %s skipped: %s ('mood civitai link %s' tries again; "
                 "--offline skips it)",
                 name, mood_error_last(), name);
    }
    mood_civitai_version_free(v);
}

int cmd_civitai_link(int argc, char **argv)
{
    mood_registry *r = NULL;
    mood_civitai *c = NULL;
    mood_civitai_import_options opts;
    cJSON *list = NULL;
    int json = 0, rc = 0, any = 0;
    mood_civitai_import_options_init(&opts);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--nsfw") == 0 && i + 1 < argc)
            rc = cli_parse_nsfw(argv[++i], &opts.nsfw_max);
        else if (argv[i][0] == '-')
            return cli_usage_error("civitai link", "unknown option '%s'", argv[i]);
        else
            any = 1;
        if (rc)
            return rc;
    }
    if (!any)
        return cli_usage_error("civitai link", "give the names of the styles to link");
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    if ((rc = open_client(&c)) != 0) {
        mood_registry_close(r);
        return rc;
    }
    list = cJSON_CreateArray();
    for (int i = 1; i < argc; i++) {
        mood_civitai_version *v = NULL;
        cJSON *o;
        int err;
        if (argv[i][0] == '-') {
            i += strcmp(argv[i], "--nsfw") == 0;
            continue;
        }
        err = mood_civitai_link(&v, r, c, argv[i], &opts);
        o = err ? cJSON_CreateObject() : version_json(v);
        cJSON_AddStringToObject(o, "name", argv[i]);
        if (err) {
            cJSON_AddStringToObject(o, "error", mood_error_last());
            if (!json)
                fprintf(stderr, "mood: error: %s\n", mood_error_last());
            rc = mood_error_is_user(err) && rc < 2 ? 1 : 2;
        } else if (!json) {
            printf("linked %s to Civitai: %s %s (model %lld, version %lld, %s)\n", argv[i],
                   v->model_name ? v->model_name : "?", v->name ? v->name : "", v->model_id, v->id,
                   v->air ? v->air : "no AIR");
        }
        cJSON_AddItemToArray(list, o);
        mood_civitai_version_free(v);
    }
    mood_civitai_close(c);
    mood_registry_close(r);
    if (json) {
        int prc = cli_print_json(list);
        return rc > prc ? rc : prc;
    }
    cJSON_Delete(list);
    return rc;
}

int cmd_update_check(int argc, char **argv)
{
    mood_registry *r = NULL;
    mood_civitai *c = NULL;
    char *text = NULL;
    cJSON *rep, *u;
    int json = 0, rc, err, n_errors;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else
            return cli_usage_error("update-check", "unexpected argument '%s'", argv[i]);
    }
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    if ((rc = open_client(&c)) != 0) {
        mood_registry_close(r);
        return rc;
    }
    err = mood_civitai_update_check(&text, r, c);
    mood_civitai_close(c);
    mood_registry_close(r);
    if (err)
        return cli_fail(err);
    rep = cJSON_Parse(text);
    mood_civitai_free_string(text);
    if (!rep)
        return 2;
    n_errors = cJSON_GetArraySize(cJSON_GetObjectItem(rep, "errors"));
    if (json)
        return cli_print_json(rep) ? 2 : (n_errors ? 2 : 0);
    cJSON_ArrayForEach(u, cJSON_GetObjectItem(rep, "errors"))
        cli_warn("%s: %s", cJSON_GetStringValue(cJSON_GetObjectItem(u, "name")),
                 cJSON_GetStringValue(cJSON_GetObjectItem(u, "error")));
    cJSON_ArrayForEach(u, cJSON_GetObjectItem(rep, "updates"))
    {
        const char *bm = cJSON_GetStringValue(cJSON_GetObjectItem(u, "latest_base_model"));
        const char *vn = cJSON_GetStringValue(cJSON_GetObjectItem(u, "version_name"));
        printf("%s: %s -> %s (%s) %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(u, "name")),
               vn ? vn : "?", cJSON_GetStringValue(cJSON_GetObjectItem(u, "latest_version_name")),
               bm ? bm : "?", cJSON_GetStringValue(cJSON_GetObjectItem(u, "url")));
    }
    if (cJSON_GetArraySize(cJSON_GetObjectItem(rep, "updates")) == 0)
        printf("no updates (%d style%s with Civitai data checked)\n",
               (int)cJSON_GetNumberValue(cJSON_GetObjectItem(rep, "checked")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(rep, "checked")) == 1 ? "" : "s");
    cJSON_Delete(rep);
    return n_errors ? 2 : 0;
}
