/*
 * cmd_doctor.c: `mood doctor [--deep] [--fix] [--json]`: checks that the registry is whole
 * (registry/doctor.c lists the checks) and repairs it on request; also the base models named in
 * $MOOD_HOME/models (links `mood demo` makes, or yours), whose targets can move away.
 */
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"

const char cmd_doctor_help[] =
    "usage: mood doctor [--deep] [--fix] [--json]\n\n"
    "Checks your style registry: the database's own integrity check, LoRA files and previews\n"
    "whose stored file is missing, damaged (a LoRA's size differs and its content no longer\n"
    "matches its SHA-256) or unreadable (permissions: reported, never repaired), LoRA files\n"
    "intact under a wrong record of their size (--fix corrects the record), and stored files\n"
    "nothing refers to (orphans). Leftovers of an interrupted import are removed\n"
    "automatically the next time the registry is opened; doctor finds anything else. For a\n"
    "LoRA whose file is missing or damaged it names every style that uses it and says what\n"
    "--fix would do to each. Importing that LoRA's file again ('imported from') restores the\n"
    "stored copy and keeps the styles as they are.\n\n"
    "  --deep    also re-hash every stored file and report those whose content no longer\n"
    "            matches their SHA-256 (reads everything: slow on a big registry)\n"
    "  --fix     repair: delete orphans (an orphan holding a LoRA is moved to\n"
    "            $MOOD_HOME/blobs/lost+found/ instead: 'mood import' takes it back); remove\n"
    "            previews whose file is missing or damaged; a LoRA whose file is missing or\n"
    "            damaged is stored again from the file it was imported from when that is\n"
    "            still there with the same SHA-256 (its styles stay as they are), else\n"
    "            removed. A style that combines such a LoRA with others ('mood style\n"
    "            create') keeps them, its template, negative prompt and weights, and loses\n"
    "            only that LoRA. A style left with no LoRA is removed.\n"
    "            Every style removed or changed is named. To get a LoRA back, import its file\n"
    "            again ('imported from' in the report): that brings back the style it was\n"
    "            imported as; 'mood style edit NAME --lora ...' puts it in your styles again.\n"
    "  --json    print the report as JSON: {registry, integrity [], missing [{sha256, kind,\n"
    "            path, file_name, imported_from, styles [names]}], orphans [paths], corrupt\n"
    "            and unreadable [same as missing; unreadable with error], rescued [{path,\n"
    "            to}], restored [{sha256, kind, path, file_name, from}] (a missing\n"
    "            item whose original file would serve has restorable_from), wrong_size\n"
    "            [{sha256, path, stored_size, size, fixed}], styles\n"
    "            [{name, action (\"remove\" or \"drop\"), n_adapters,\n"
    "            kept, lost [{sha256, file_name, problem}], fixed}], problems, fixed}\n"
    "            (file_name, imported_from and styles for LoRAs only), models [{name,\n"
    "            target, fixed}] (broken links in $MOOD_HOME/models)\n\n"
    "The names 'mood gen --model NAME' knows are the entries of $MOOD_HOME/models (mood demo\n"
    "links mood-tiny there); a link whose target is gone is a problem, removed by --fix.\n\n"
    "Where there is no registry yet, doctor says so and creates nothing. When registry.db is\n"
    "gone (or holds no LoRAs) while stored files remain under blobs/, those files are not\n"
    "orphans: doctor counts them, and --fix refuses to delete them; restore registry.db from\n"
    "a backup, or import the LoRA files again. (--json: database is \"ok\", \"none\", or\n"
    "\"missing\" / \"empty\" with stored_files and blobs.) The reverse, every stored file\n"
    "missing (blobs/ on a drive that is not mounted, a moved folder), --fix refuses too: it\n"
    "would remove every style.\n\n"
    "Exit status: 0 nothing wrong, 1 problems were found (with --fix: and repaired; run again\n"
    "to confirm), 2 the registry could not be read.\n";

static const char *str_of(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
}

/* Broken links in <home>/models into rep's "models" list (removed with fix); counts problems. */
static void check_models(cJSON *rep, int fix, int *problems)
{
    const char *home = str_of(rep, "registry");
    char dir[PATH_MAX], path[PATH_MAX + 256], target[PATH_MAX];
    cJSON *list = cJSON_AddArrayToObject(rep, "models");
    struct dirent *e;
    struct stat st;
    DIR *d;
    snprintf(dir, sizeof dir, "%s/models", home ? home : ".");
    if (!home || !(d = opendir(dir)))
        return;
    while ((e = readdir(d)) != NULL) {
        ssize_t n;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || lstat(path, &st) != 0 || !S_ISLNK(st.st_mode) ||
            stat(path, &st) == 0 || (n = readlink(path, target, sizeof target - 1)) < 0)
            continue;
        target[n] = '\0';
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", e->d_name);
        cJSON_AddStringToObject(o, "target", target);
        cJSON_AddBoolToObject(o, "fixed", fix && unlink(path) == 0);
        cJSON_AddItemToArray(list, o);
        (*problems)++;
    }
    closedir(d);
}

static void print_models(const cJSON *arr)
{
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
        printf("  model %s: its link leads to %s, which is gone%s\n", str_of(v, "name"),
               str_of(v, "target"),
               cJSON_IsTrue(cJSON_GetObjectItem(v, "fixed")) ? " (link removed)" : "");
}

/* What --fix repaired: the library's count and the model links removed here. */
static int repaired(const cJSON *rep)
{
    const cJSON *v;
    int n = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(rep, "fixed"));
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(rep, "models")) n +=
        cJSON_IsTrue(cJSON_GetObjectItem(v, "fixed"));
    return n;
}

static void print_rescued(const cJSON *arr)
{
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
        printf("  an orphan holding a LoRA, kept: moved to %s ('mood import' it to use it)\n",
               str_of(v, "to"));
}

static void print_wrong_sizes(const cJSON *arr)
{
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
        printf("  wrong record: %s is intact (its SHA-256 matches) but the registry records %.0f "
               "bytes for it, not its %.0f%s\n",
               str_of(v, "path"), cJSON_GetNumberValue(cJSON_GetObjectItem(v, "stored_size")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(v, "size")),
               cJSON_IsTrue(cJSON_GetObjectItem(v, "fixed")) ? " (record corrected)"
                                                             : "; --fix corrects the record");
}

static void print_list(const cJSON *arr, const char *what)
{
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        if (cJSON_IsString(v)) {
            printf("  %s: %s\n", what, v->valuestring);
            continue;
        }
        printf("  %s %s: %s", what, str_of(v, "kind"), str_of(v, "path"));
        if (str_of(v, "error"))
            printf(" [%s: %s; --fix leaves it alone]", str_of(v, "error"),
                   strstr(str_of(v, "error"), "ermission") ? "fix its permissions"
                                                           : "check the disk and the file");
        if (str_of(v, "file_name"))
            printf(" (%s%s%s)", str_of(v, "file_name"),
                   str_of(v, "imported_from") ? ", imported from " : "",
                   str_of(v, "imported_from") ? str_of(v, "imported_from") : "");
        if (str_of(v, "restorable_from"))
            printf("; that file is still there: --fix stores it again from it");
        printf("\n");
    }
}

static void print_restored(const cJSON *arr)
{
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
        printf("  lost %s: %s (%s): stored again from %s, its styles as they were\n",
               str_of(v, "kind"), str_of(v, "path"),
               str_of(v, "file_name") ? str_of(v, "file_name") : "?", str_of(v, "from"));
}

/* "a.safetensors (damaged), b.safetensors (missing)" */
static void print_lost(const cJSON *style)
{
    const cJSON *l;
    int first = 1;
    cJSON_ArrayForEach(l, cJSON_GetObjectItem(style, "lost"))
    {
        const char *problem = str_of(l, "problem");
        printf("%s%s (%s)", first ? "" : ", ",
               str_of(l, "file_name") ? str_of(l, "file_name") : "?",
               problem && strcmp(problem, "corrupt") == 0 ? "damaged" : "missing");
        first = 0;
    }
}

/* One line per style that uses a lost LoRA: what --fix does to it, or did. */
static void print_styles(const cJSON *styles)
{
    const cJSON *s;
    int removed = 0;
    cJSON_ArrayForEach(s, styles)
    {
        const char *action = str_of(s, "action");
        int fixed = cJSON_IsTrue(cJSON_GetObjectItem(s, "fixed"));
        int kept = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(s, "kept"));
        printf("  style %s: ", str_of(s, "name"));
        if (action && strcmp(action, "remove") == 0) {
            printf("%s no other LoRA than ", fixed ? "removed, it used" : "uses");
            print_lost(s);
            printf("%s\n", fixed ? "" : "; --fix removes the style");
            removed = 1;
            continue;
        }
        printf("%s LoRA ", fixed ? "dropped" : "--fix drops");
        print_lost(s);
        printf("; %s its other %d LoRA%s, template, negative prompt and weights\n",
               fixed ? "kept" : "it keeps", kept, kept == 1 ? "" : "s");
    }
    if (removed)
        printf("  (importing a LoRA file again, from where it was imported, brings its own style "
               "back)\n");
}

/* No usable database (report's "database" other than "ok"): what there is, and what to do.
 * Returns the exit status. */
static int print_database(const cJSON *rep, const char *state)
{
    const char *home = str_of(rep, "registry");
    int n = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(rep, "stored_files"));
    if (strcmp(state, "none") == 0) {
        printf("no registry at %s yet: 'mood import FILE' or 'mood train' creates one\n", home);
        return 0;
    }
    printf("registry %s: registry.db %s, but %d stored file%s remain%s in %s\n", home,
           strcmp(state, "missing") == 0 ? "is missing" : "holds no LoRAs", n, n == 1 ? "" : "s",
           n == 1 ? "s" : "", str_of(rep, "blobs"));
    printf("  they are what was imported (for LoRAs from a pack or a URL perhaps the only "
           "copies), not orphans: 'mood doctor --fix' does not delete them\n"
           "  restore registry.db from a backup, or import the LoRA files again ('mood import "
           "FILE')\n");
    return 1;
}

int cmd_doctor(int argc, char **argv)
{
    mood_doctor_options o = {0, 0, NULL, NULL};
    mood_registry *r = NULL;
    char *text = NULL;
    const char *state;
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
            return cli_unknown_option("doctor", argv[i]);
    }
    if (cli_registry_open(&r) != 0)
        return 2; /* the help's "could not be read", a newer schema too (no problem found) */
    err = mood_registry_doctor(&text, &problems, r, &o);
    mood_registry_close(r);
    if (err)
        return cli_fail(err);
    rep = cJSON_Parse(text);
    mood_registry_free_string(text);
    check_models(rep, o.fix, &problems);
    cJSON_SetNumberValue(cJSON_GetObjectItem(rep, "problems"), problems);
    if (json)
        return cli_print_json(rep) ? 2 : problems > 0;
    state = str_of(rep, "database");
    if (state && strcmp(state, "ok") != 0) {
        rc = print_database(rep, state);
        cJSON_Delete(rep);
        return rc;
    }
    print_list(cJSON_GetObjectItem(rep, "integrity"), "database");
    print_list(cJSON_GetObjectItem(rep, "missing"), "missing");
    print_list(cJSON_GetObjectItem(rep, "corrupt"), "damaged");
    print_list(cJSON_GetObjectItem(rep, "unreadable"), "unreadable");
    print_wrong_sizes(cJSON_GetObjectItem(rep, "wrong_size"));
    print_list(cJSON_GetObjectItem(rep, "orphans"), "orphan");
    print_rescued(cJSON_GetObjectItem(rep, "rescued"));
    print_restored(cJSON_GetObjectItem(rep, "restored"));
    print_styles(cJSON_GetObjectItem(rep, "styles"));
    print_models(cJSON_GetObjectItem(rep, "models"));
    if (problems == 0)
        printf("registry %s: no problems found%s\n",
               cJSON_GetStringValue(cJSON_GetObjectItem(rep, "registry")),
               o.deep ? " (every file re-hashed)" : "");
    else if (cJSON_IsTrue(cJSON_GetObjectItem(rep, "all_missing")))
        printf("%d problem%s found: every stored file is missing (blobs/ on a drive that is not "
               "mounted? a folder moved?); 'mood doctor --fix' removes no style for that: put "
               "the files back\n",
               problems, problems == 1 ? "" : "s");
    else if (!o.fix)
        printf("%d problem%s found; 'mood doctor --fix' repairs them\n", problems,
               problems == 1 ? "" : "s");
    else if (repaired(rep) >= problems)
        printf("%d problem%s found, repaired\n", problems, problems == 1 ? "" : "s");
    else /* unreadable files, orphans that could not be moved: said above, left as they are */
        printf("%d problem%s found, %d repaired, %d left as %s (see above)\n", problems,
               problems == 1 ? "" : "s", repaired(rep), problems - repaired(rep),
               problems - repaired(rep) == 1 ? "it is" : "they are");
    cJSON_Delete(rep);
    return problems > 0;
}
