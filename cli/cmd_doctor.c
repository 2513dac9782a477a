/*
 * cmd_doctor.c: `mood doctor [--deep] [--fix] [--json]`: checks that the registry is whole
 * (registry/doctor.c lists the checks) and repairs it on request.
 */
#include <string.h>

#include "cli/cli.h"

const char cmd_doctor_help[] =
    "usage: mood doctor [--deep] [--fix] [--json]\n\n"
    "Checks your style registry: the database's own integrity check, LoRA files and previews\n"
    "whose stored file is missing, and stored files nothing refers to (orphans). Leftovers of\n"
    "an interrupted import are removed automatically the next time the registry is opened;\n"
    "doctor finds anything else.\n\n"
    "  --deep    also re-hash every stored file and report those whose content no longer\n"
    "            matches their SHA-256 (reads everything: slow on a big registry)\n"
    "  --fix     repair: delete orphans; remove previews and styles whose file is missing or\n"
    "            damaged (re-import the LoRA to get such a style back)\n"
    "  --json    print the report as JSON: {registry, integrity [], missing [{sha256, kind,\n"
    "            path}], orphans [paths], corrupt [{sha256, kind, path}], problems, fixed}\n\n"
    "Exit status: 0 nothing wrong, 1 problems were found (with --fix: and repaired; run again\n"
    "to confirm), 2 the registry could not be read.\n";

static void print_list(const cJSON *arr, const char *what)
{
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        if (cJSON_IsString(v))
            printf("  %s: %s\n", what, v->valuestring);
        else
            printf("  %s %s: %s\n", what, cJSON_GetStringValue(cJSON_GetObjectItem(v, "kind")),
                   cJSON_GetStringValue(cJSON_GetObjectItem(v, "path")));
    }
}

int cmd_doctor(int argc, char **argv)
{
    mood_doctor_options o = {0, 0, NULL, NULL};
    mood_registry *r = NULL;
    char *text = NULL;
    int json = 0, problems = 0, rc, err;
    cJSON *rep;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--deep") == 0)
            o.deep = 1;
        else if (strcmp(argv[i], "--fix") == 0)
            o.fix = 1;
        else if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else
            return cli_usage_error("doctor", "unknown option '%s'", argv[i]);
    }
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    err = mood_registry_doctor(&text, &problems, r, &o);
    mood_registry_close(r);
    if (err)
        return cli_fail(err);
    rep = cJSON_Parse(text);
    mood_registry_free_string(text);
    if (json)
        return cli_print_json(rep) ? 2 : problems > 0;
    print_list(cJSON_GetObjectItem(rep, "integrity"), "database");
    print_list(cJSON_GetObjectItem(rep, "missing"), "missing");
    print_list(cJSON_GetObjectItem(rep, "corrupt"), "damaged");
    print_list(cJSON_GetObjectItem(rep, "orphans"), "orphan");
    if (problems == 0)
        printf("registry %s: no problems found%s\n",
               cJSON_GetStringValue(cJSON_GetObjectItem(rep, "registry")),
               o.deep ? " (every file re-hashed)" : "");
    else
        printf("%d problem%s found%s\n", problems, problems == 1 ? "" : "s",
               o.fix ? ", repaired" : "; 'mood doctor --fix' repairs them");
    cJSON_Delete(rep);
    return problems > 0;
}
