/*
 * cmd_style.c: the registry's styles: `mood list`, `mood show`, `mood search`,
 * `mood style create`, `mood style edit`, `mood tag`, `mood rename`, `mood rm`.
 * The library returns reports as JSON; --json prints them as they are, the human output is made
 * from the same objects, with the control characters of their text made visible first
 * (cli_text.h): descriptions, notes and file names come from sidecars and packs others made.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_text.h"

const char cmd_list_help[] =
    "usage: mood list [--tag TAG] [--base sd1|sd2|sdxl] [--sort name|created|changed] [--json]\n\n"
    "Lists the styles in your registry, by name: base family, algorithm and rank of the first\n"
    "LoRA, preferred weight, tags and trigger words. On a terminal, long names and the last\n"
    "column are cut to fit its width (piped, nothing is).\n\n"
    "  --tag TAG    only styles with this tag ('mood tag' adds tags)\n"
    "  --base B     only styles with a LoRA made for this base family\n"
    "  --sort S     name (the default: case aside, numbers by value, s9 before s10),\n"
    "               created or changed (newest first)\n"
    "  --json       print a JSON array: [{name, family, algorithm, rank, weight,\n"
    "               trigger_words, tags, description, n_adapters, n_previews}]\n";

const char cmd_show_help[] =
    "usage: mood show NAME [--json]\n\n"
    "Shows everything the registry knows about a style: its LoRAs with their weights (model and\n"
    "text encoder), base family, algorithm, rank, alpha, trigger words, prompt template,\n"
    "negative prompt, tags, preview files, where each LoRA came from (with the Civitai model,\n"
    "version and base model it is listed for), and its hashes (AutoV3, which Civitai and A1111\n"
    "use to identify a LoRA, and SHA-256). A style made by 'mood train' also shows its mood\n"
    "board thumbnails, how it was trained and its loss curve.\n\n"
    "  --json    print it as one JSON object (same facts)\n";

const char cmd_search_help[] =
    "usage: mood search QUERY... [--json]\n\n"
    "Finds styles whose name, trigger words, tags, description, notes, LoRA file names or\n"
    "Civitai model and version names contain every word of QUERY (as a word or the start of\n"
    "one: 'ink' finds 'inkwash', 'gbl' a style made from gbl_v3.safetensors; case and accents\n"
    "do not matter), best match first: a match in the name before one in the trigger words or\n"
    "tags, before one in the file or Civitai names, before one in the description. Emoji and\n"
    "other symbols, and Chinese, Japanese or Korean text, are found anywhere in those fields\n"
    "('\xf0\x9f\x8e\xa8' finds a style tagged \xf0\x9f\x8e\xa8, '\xe6\xb0\xb4\xe5\xa2\xa8' finds "
    "'\xe6\xb0\xb4\xe5\xa2\xa8\xe7\x94\xbb'); punctuation separates words. Several\n"
    "arguments are one query; after --, words may start with '-'.\n\n"
    "  --json    print a JSON array, as 'mood list --json'\n";

const char cmd_style_create_help[] =
    "usage: mood style create NAME --lora STYLE_OR_FILE[:W[:W_TE]] ... [options]\n\n"
    "Makes a new style from LoRAs you have. Each --lora names a style already in the registry\n"
    "(its LoRAs are used, weights multiplied) or a .safetensors file (imported first). W is the\n"
    "weight on the image model (default 1) and W_TE the weight on the text encoder (default W).\n\n"
    "  --trigger WORDS      trigger words, comma-separated, added to prompts\n"
    "  --template TEXT      prompt template with {prompt} where your prompt goes,\n"
    "                       e.g. \"{prompt}, ink wash painting, muted colours\"\n"
    "  --negative TEXT      negative prompt\n"
    "  --description TEXT   a line about the style (searchable)\n"
    "  --notes TEXT         longer notes for yourself (searchable; A1111's notes)\n"
    "  --weight W           the weight used when you give none (<lora:NAME> or --style NAME),\n"
    "                       -10 to 10\n"
    "  --json               print the style made, as 'mood show --json'\n\n"
    "Example:\n"
    "  mood style create ink-film --lora inkwash:0.8 --lora film-grain:0.3 \\\n"
    "      --template \"{prompt}, ink wash, film grain\"\n\n"
    "All the LoRAs of a style must be made for one base family (sd1, sd2 or sdxl): a style is\n"
    "used with one base model. A LoRA whose family is unknown goes with any.\n\n"
    "Names: letters, digits, '_', '-', '.'; unique regardless of case.\n";

const char cmd_style_edit_help[] =
    "usage: mood style edit NAME [options]\n\n"
    "Changes a style. Options as for 'mood style create'; only what you give changes. --lora\n"
    "replaces the whole list of LoRAs (all for one base family); a LoRA it takes out that no\n"
    "other style uses becomes a style of its own again, named after its file, as an import\n"
    "names it (a warning says which; 'mood rm' of it deletes the LoRA). An empty value\n"
    "(--negative \"\") clears a field (--weight \"\": no preferred weight, so 1 applies).\n";

const char cmd_tag_help[] =
    "usage: mood tag NAME +TAG... -TAG... [--json]\n\n"
    "Adds (+TAG) or removes (-TAG) tags of a style. Tags group styles ('mood list --tag T')\n"
    "and are searched by 'mood search'. A tag is one word: no spaces or commas; a leading '#'\n"
    "is dropped (+#mono is mono). Case does not matter (+Anime and +anime are one tag: the\n"
    "first spelling stays). All the changes are made, or none.\n\n"
    "  --json    print the style afterwards, as 'mood show --json'\n\n"
    "Example: mood tag inkwash +painting +monochrome -old\n";

const char cmd_rename_help[] =
    "usage: mood rename OLD NEW [--json]\n\n"
    "Renames a style. NEW must be free (regardless of case) and use only letters, digits, '_',\n"
    "'-' and '.'. Prompts that use <lora:OLD:W> must be changed by you.\n\n"
    "  --json    print the style afterwards, as 'mood show --json'\n";

const char cmd_rm_help[] =
    "usage: mood rm NAME... [--json]\n\n"
    "Removes styles. A LoRA file or preview no other style uses is deleted from the registry's\n"
    "store with it; the original files you imported from are not touched. A name that is not\n"
    "a style removes none of them.\n\n"
    "  --json    print {removed [names], error (when one failed)}\n";

/* ----- small helpers ---------------------------------------------------------------------- */

/* --json of the commands that change a style: the style as 'mood show --json' prints it, and
 * the warnings said on stderr (style edit's LoRA that became a style of its own again). */
static int print_style_json(mood_registry *r, const char *name)
{
    char *json = NULL;
    cJSON *o;
    int err = mood_registry_show_json(&json, r, name);
    if (err)
        return cli_fail(err);
    if ((o = cJSON_Parse(json)) != NULL)
        cli_warnings_json(o);
    err = cli_print_json(o);
    mood_registry_free_string(json);
    return err;
}

/* A style name that does not exist is the user's mistake (exit 1), not the environment's. */
static int fail(int err)
{
    int rc = cli_fail(err);
    return err == MOOD_ENOTFOUND ? 1 : rc;
}

/* Prints the library's JSON text: lists as they are (compact: parsing and printing 10,000 styles
 * again would take most of the command's time), one style indented for people who read it. */
static int print_text_json(char *text, int pretty)
{
    cJSON *v = pretty ? cJSON_Parse(text) : NULL;
    if (!pretty || !v) {
        cli_text_json_puts(text);
        mood_registry_free_string(text);
        return 0;
    }
    mood_registry_free_string(text);
    return cli_print_json(v);
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* str_of, or `fallback` when absent (for printing). */
static const char *str_or(const cJSON *o, const char *key, const char *fallback)
{
    const char *v = str_of(o, key);
    return v ? v : fallback;
}

/* A style's tags (#tag) and trigger words, the list's last column (malloc'd; NULL: no memory). */
static char *tags_and_triggers(const cJSON *s)
{
    const cJSON *t;
    size_t size = 3 + (str_of(s, "trigger_words") ? strlen(str_of(s, "trigger_words")) : 0), n = 0;
    char *out;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(s, "tags")) size += strlen(t->valuestring) + 2;
    if (!(out = malloc(size)))
        return NULL;
    out[0] = '\0';
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(s, "tags"))
    {
        n += (size_t)snprintf(out + n, size - n, "%s#%s", n ? " " : "", t->valuestring);
    }
    if (str_of(s, "trigger_words"))
        snprintf(out + n, size - n, "%s%s", n ? "  " : "", str_of(s, "trigger_words"));
    return out;
}

/* The list as a table. On a terminal it fits the width: names longer than NAME_MAX_COLUMNS and
 * the last column are cut with "…" ('mood show NAME' or --json has them whole); piped, nothing is
 * cut. Columns are counted in what a terminal shows (a CJK or emoji name takes two a
 * character). */
#define NAME_MAX_COLUMNS 32
/* One row of the table to stdout; on a terminal cut at its width (the fixed columns alone are
 * 37 wide: a terminal narrower still gets the start of each row). */
static void put_row(char *row, size_t len, int tty, int cols)
{
    if (len && row[len - 1] == '\n')
        row[--len] = '\0';
    if (tty && cli_text_width(row) > cols - 1)
        cli_text_cell(stdout, row, cols - 1, 1);
    else
        fputs(row, stdout);
    putchar('\n');
}

static void print_list(const cJSON *arr, const char *empty)
{
    const cJSON *s;
    int tty = isatty(STDOUT_FILENO), cols = tty ? cli_terminal_columns(STDOUT_FILENO) : 0;
    int name_w = 4, rest_w;
    char *row = NULL;
    size_t len = 0;
    FILE *f;
    if (cJSON_GetArraySize(arr) == 0) {
        printf("%s\n", empty);
        return;
    }
    cJSON_ArrayForEach(s, arr)
    {
        int w = cli_text_width(str_or(s, "name", ""));
        name_w = w > name_w ? w : name_w;
    }
    if (tty) { /* a narrow terminal narrows the names before the table wraps */
        int most = cols - 29 - 10 < NAME_MAX_COLUMNS ? cols - 29 - 10 : NAME_MAX_COLUMNS;
        name_w = name_w > most ? (most > 8 ? most : 8) : name_w;
    }
    rest_w = cols - name_w - 29; /* the columns between: " %-7s %-12s %-6s " */
    if (!(f = open_memstream(&row, &len)))
        return;
    cli_text_cell(f, "NAME", name_w, 0);
    fprintf(f, " %-7s %-12s %-6s %s", "BASE", "ALGO/RANK", "WEIGHT",
            !tty || rest_w >= 15 ? "TAGS / TRIGGERS"
            : rest_w >= 8        ? "TAGS"
                                 : "");
    fflush(f);
    put_row(row, len, tty, cols);
    cJSON_ArrayForEach(s, arr)
    {
        const cJSON *rank = cJSON_GetObjectItem(s, "rank"), *w = cJSON_GetObjectItem(s, "weight");
        char algo[32], weight[16], *rest = tags_and_triggers(s);
        rewind(f);
        snprintf(algo, sizeof algo, "%s", str_or(s, "algorithm", "-"));
        if (cJSON_IsNumber(rank) && rank->valueint > 0)
            snprintf(algo + strlen(algo), sizeof algo - strlen(algo), "/%d", rank->valueint);
        if (cJSON_IsNumber(w))
            snprintf(weight, sizeof weight, "%g", w->valuedouble);
        else
            snprintf(weight, sizeof weight, "-");
        cli_text_cell(f, str_or(s, "name", ""), name_w, tty);
        fprintf(f, " %-7s %-12s %-6s ", str_or(s, "family", "-"), algo, weight);
        if (rest && tty && rest_w >= 8 && cli_text_width(rest) > rest_w)
            cli_text_cell(f, rest, rest_w, 1);
        else if (rest && (!tty || rest_w >= 8))
            fputs(rest, f);
        fputc('\0', f); /* the row ends here: rewind keeps a longer row's bytes after it */
        fflush(f);
        put_row(row, strlen(row), tty, cols);
        free(rest);
    }
    fclose(f);
    free(row);
}

/* --json plus one positional argument at most `max_pos`; fills pos[]. Returns -1 or exit code. */
static int parse_simple(int argc, char **argv, const char *cmd, int *json, const char **pos,
                        int want)
{
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && json)
            *json = 1;
        else if (argv[i][0] == '-' && argv[i][1])
            return cli_usage_error(cmd, "unknown option '%s'", argv[i]);
        else if (n < want)
            pos[n++] = argv[i];
        else
            return cli_usage_error(cmd, "unexpected argument '%s'", argv[i]);
    }
    if (n < want)
        return cli_usage_error(cmd, "missing %s", want == 2 && n == 1 ? "NEW" : "NAME");
    return -1;
}

/* ----- list / show / search ---------------------------------------------------------------- */

static void print_style(const cJSON *s);

/* Fields `show` prints as they are written, on several lines when they have several. */
static const char *const multiline_fields[] = {"description", "notes", NULL};

/* The end of list, search and show: the query's JSON as it is (--json), or for people. */
static int finish_query(int err, char *text, int json, int pretty, const char *empty)
{
    cJSON *v;
    if (err)
        return fail(err);
    if (json)
        return print_text_json(text, pretty);
    v = cJSON_Parse(text);
    mood_registry_free_string(text);
    cli_text_clean_json(v, multiline_fields);
    if (empty)
        print_list(v, empty);
    else
        print_style(v);
    cJSON_Delete(v);
    return 0;
}

int cmd_list(int argc, char **argv)
{
    const char *tag = NULL, *base = NULL, *sort = "name";
    mood_list_order order = MOOD_LIST_BY_NAME;
    mood_registry *r = NULL;
    mood_family fam;
    char *text = NULL;
    int json = 0, rc, err;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--tag") == 0 && i + 1 < argc)
            tag = argv[++i];
        else if (strcmp(argv[i], "--base") == 0 && i + 1 < argc)
            base = argv[++i];
        else if (strcmp(argv[i], "--sort") == 0 && i + 1 < argc)
            sort = argv[++i];
        else
            return cli_unknown_option("list", argv[i]);
    }
    if (tag && (!tag[tag[0] == '#'] || tag[tag[0] == '#'] == '#')) /* as 'mood tag' refuses */
        return cli_usage_error("list", "--tag '%s': a tag is a word, after at most one '#'", tag);
    if (base && (mood_family_from_name(&fam, base) != 0 || fam == MOOD_FAMILY_UNKNOWN))
        return cli_usage_error("list", "--base '%s': expected sd1, sd2 or sdxl", base);
    if (strcmp(sort, "name") == 0)
        order = MOOD_LIST_BY_NAME;
    else if (strcmp(sort, "created") == 0)
        order = MOOD_LIST_BY_CREATED;
    else if (strcmp(sort, "changed") == 0)
        order = MOOD_LIST_BY_CHANGED;
    else
        return cli_usage_error("list", "--sort '%s': expected name, created or changed", sort);
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    err = mood_registry_list_sorted_json(&text, r, tag, base, order);
    mood_registry_close(r);
    return finish_query(err, text, json, 0,
                        tag || base ? "no styles match"
                                    : "no styles yet: 'mood import FILE' adds one");
}

/* The words of a search, as one query (malloc'd into *q): `mood search ink wash` is "ink wash";
 * after --, words that start with '-' are words too. */
static int search_words(int argc, char **argv, int *json, char **q)
{
    size_t size = 1, len = 0;
    int words = 1;
    for (int i = 1; i < argc; i++)
        size += strlen(argv[i]) + 1;
    if (!(*q = malloc(size)))
        return fail(MOOD_ENOMEM);
    for (int i = 1; i < argc; i++) {
        if (words && strcmp(argv[i], "--") == 0)
            words = 0;
        else if (words && strcmp(argv[i], "--json") == 0)
            *json = 1;
        else if (words && argv[i][0] == '-' && argv[i][1])
            return cli_usage_error("search", "unknown option '%s'", argv[i]);
        else
            len += (size_t)snprintf(*q + len, size - len, "%s%s", len ? " " : "", argv[i]);
    }
    return len ? -1 : cli_usage_error("search", "missing QUERY");
}

int cmd_search(int argc, char **argv)
{
    mood_registry *r = NULL;
    char *q = NULL, *text = NULL;
    int json = 0, rc, err;
    if ((rc = search_words(argc, argv, &json, &q)) >= 0 || (rc = cli_registry_open(&r)) != 0) {
        free(q);
        return rc;
    }
    err = mood_registry_search_json(&text, r, q);
    mood_registry_close(r);
    free(q);
    return finish_query(err, text, json, 0, "no styles match");
}

static void print_field(const char *label, const char *v)
{
    if (!v || !*v)
        return;
    printf("%-14s", label);
    for (const char *line = v; *line;) { /* a note's next lines under its first */
        size_t n = strcspn(line, "\n");
        printf("%*s%.*s\n", line == v ? 0 : 14, "", (int)n, line);
        line += n + (line[n] == '\n');
    }
}

static void print_adapter(const cJSON *a)
{
    const cJSON *src;
    const cJSON *alpha = cJSON_GetObjectItem(a, "alpha"), *rank = cJSON_GetObjectItem(a, "rank");
    printf("  %s  (unet %g, te %g)\n", str_of(a, "file_name") ? str_of(a, "file_name") : "?",
           cJSON_GetNumberValue(cJSON_GetObjectItem(a, "unet")),
           cJSON_GetNumberValue(cJSON_GetObjectItem(a, "te")));
    printf("    %-12s%s (decided by %s)\n", "family", str_of(a, "family"),
           str_of(a, "family_source") ? str_of(a, "family_source") : "?");
    printf("    %-12s%s, rank %d, alpha ", "algorithm", str_of(a, "algorithm"),
           cJSON_IsNumber(rank) ? rank->valueint : 0);
    if (cJSON_IsNumber(alpha))
        printf("%g", alpha->valuedouble);
    else
        printf("none");
    printf(", %s, %d modules\n", str_of(a, "dtype") ? str_of(a, "dtype") : "?",
           (int)cJSON_GetNumberValue(cJSON_GetObjectItem(a, "modules")));
    if (str_of(a, "autov3"))
        printf("    %-12s%s  (whole: %s)\n", "AutoV3", str_or(a, "autov3_short", "?"),
               str_or(a, "autov3", "?"));
    printf("    %-12s%s\n", "SHA-256", str_or(a, "sha256", "?"));
    printf("    %-12s%s%s\n", "stored at", str_or(a, "path", "?"),
           str_of(a, "path") && access(str_of(a, "path"), F_OK) != 0
               ? "  (MISSING: 'mood doctor' says how to repair it)"
               : "");
    cJSON_ArrayForEach(src, cJSON_GetObjectItem(a, "sources"))
    {
        printf("    %-12s%s %s", "source", str_or(src, "kind", "?"), str_or(src, "location", ""));
        if (str_of(src, "model_name"))
            printf("  Civitai: %s%s%s%s", str_of(src, "model_name"),
                   str_of(src, "version_name") ? " (" : "", str_or(src, "version_name", ""),
                   str_of(src, "version_name") ? ")" : "");
        /* beside the family line above: a record for another base shows as one */
        if (str_of(src, "base_model"))
            printf("%s for %s",
                   str_of(src, "model_name") ? "," : "  Civitai:", str_of(src, "base_model"));
        printf("\n");
        /* what sharing it needs: the AIR names it to Civitai, the licence says what is allowed */
        if (str_of(src, "air"))
            printf("    %-12s%s\n", "  AIR", str_of(src, "air"));
        if (str_of(src, "license"))
            printf("    %-12s%s\n", "  licence", str_of(src, "license"));
    }
}

static double num_of(const cJSON *o, const char *key)
{
    return cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* What `mood train` registered: mood board thumbnails, the training, the loss curve. */
static void print_training(const cJSON *s)
{
    const cJSON *t = cJSON_GetObjectItem(s, "training"), *f, *samples;
    cJSON_ArrayForEach(f, cJSON_GetObjectItem(s, "board"))
    {
        double w = num_of(f, "width"), h = num_of(f, "height");
        printf("%-14s%s (%s", "Board:", str_or(f, "path", "?"),
               str_of(f, "name") ? str_of(f, "name") : "?");
        if (w > 0 && h > 0) /* a pack from another program may leave the size out */
            printf(", %gx%g", w, h);
        printf(")\n");
    }
    if (cJSON_IsObject(t)) {
        printf("%-14s%g steps, rank %g, alpha %g, lr %g, %s, %g px, on %s\n",
               "Trained:", num_of(t, "steps"), num_of(t, "rank"), num_of(t, "alpha"),
               num_of(t, "lr"), str_of(t, "targets") ? str_of(t, "targets") : "?",
               num_of(t, "resolution"), str_of(t, "base_model") ? str_of(t, "base_model") : "?");
        samples = cJSON_GetObjectItem(t, "samples");
        if (cJSON_IsObject(samples))
            printf("%-14s%d previews in %s\n",
                   "Samples:", cJSON_GetArraySize(cJSON_GetObjectItem(samples, "images")),
                   str_of(samples, "folder") ? str_of(samples, "folder") : "?");
    }
    cJSON_ArrayForEach(f, cJSON_GetObjectItem(s, "files"))
    {
        const char *role = str_of(f, "role");
        printf("%-14s%s\n",
               role && !strcmp(role, "loss_plot")  ? "Loss curve:"
               : role && !strcmp(role, "loss_csv") ? "Loss CSV:"
                                                   : "File:",
               str_of(f, "path"));
    }
}

/* How to use the style, as an A1111 card inserts it: the tag (mood gen reads A1111's prompt
 * syntax) with the style's weight, and the option. */
static void print_use(const cJSON *s)
{
    const cJSON *w = cJSON_GetObjectItem(s, "weight");
    const char *name = str_or(s, "name", "?");
    char weight[32];
    snprintf(weight, sizeof weight, "%.10g", cJSON_IsNumber(w) ? w->valuedouble : 1.0);
    printf("%-14s<lora:%s:%s> in a prompt, or --style %s:%s\n", "Use:", name, weight, name, weight);
}

static void print_style(const cJSON *s)
{
    const cJSON *a, *t, *p, *w = cJSON_GetObjectItem(s, "weight");
    int first = 1;
    print_field("Style:", str_of(s, "name"));
    print_field("Description:", str_of(s, "description"));
    print_field("Notes:", str_of(s, "notes"));
    print_field("Triggers:", str_of(s, "trigger_words"));
    print_field("Template:", str_of(s, "template"));
    print_field("Negative:", str_of(s, "negative"));
    if (cJSON_IsNumber(w))
        printf("%-14s%g\n", "Weight:", w->valuedouble);
    printf("%-14s", "Tags:");
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(s, "tags"))
    {
        printf("%s%s", first ? "" : ", ", t->valuestring);
        first = 0;
    }
    printf("%s\n", first ? "none" : "");
    print_use(s);
    printf("LoRAs:\n");
    cJSON_ArrayForEach(a, cJSON_GetObjectItem(s, "adapters")) print_adapter(a);
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(s, "previews"))
    {
        printf("%-14s%s (%s)\n", "Preview:", str_or(p, "path", "?"), str_or(p, "media_type", "?"));
    }
    print_training(s);
    printf("%-14s%s, changed %s\n", "Created:", str_of(s, "created_at"), str_of(s, "updated_at"));
}

/* After "no style named X": the styles a search for X finds (X without .safetensors: a file's
 * name), the first five. */
static void suggest_names(mood_registry *r, const char *name)
{
    char q[256], *found = NULL;
    const char *ext = strstr(name, ".safetensors");
    cJSON *list, *it;
    int n = 0;
    snprintf(q, sizeof q, "%.*s", ext && !ext[12] ? (int)(ext - name) : 255, name);
    if (mood_registry_search_json(&found, r, q) != 0)
        return; /* a name that is no query (punctuation only): no suggestion */
    list = cJSON_Parse(found);
    mood_registry_free_string(found);
    cJSON_ArrayForEach(it, list)
    {
        if (n < 5 && str_of(it, "name"))
            fprintf(stderr, "%s%s", n++ ? ", " : "did you mean: ", str_of(it, "name"));
    }
    if (n)
        fprintf(stderr, "?\n");
    cJSON_Delete(list);
}

int cmd_show(int argc, char **argv)
{
    const char *name[1] = {NULL};
    mood_registry *r = NULL;
    char *text = NULL;
    int json = 0, rc, err;
    if ((rc = parse_simple(argc, argv, "show", &json, name, 1)) >= 0)
        return rc;
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    err = mood_registry_show_json(&text, r, name[0]);
    if (err == MOOD_ENOTFOUND) {
        rc = fail(err);
        suggest_names(r, name[0]);
        mood_registry_close(r);
        return rc;
    }
    mood_registry_close(r);
    return finish_query(err, text, json, 1, NULL);
}

/* ----- style create / edit ------------------------------------------------------------------ */

typedef struct style_args {
    mood_style_spec spec;
    mood_style_lora *loras;
    char (*shas)[65];
    size_t n, cap;
    int has_loras;
    char **imported; /* styles this command imported from --lora FILE: undone when it fails */
    size_t n_imported;
    int json; /* --json: the style as 'mood show --json' prints it, once changed */
} style_args;

static int add_lora(style_args *a, const char *sha, double unet, double te)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 8;
        mood_style_lora *l = realloc(a->loras, cap * sizeof *l);
        char(*s)[65] = l ? realloc(a->shas, cap * sizeof *s) : NULL;
        if (l)
            a->loras = l;
        if (!l || !s) {
            fprintf(stderr, "mood: error: out of memory\n");
            return 2;
        }
        a->shas = s;
        a->cap = cap;
    }
    snprintf(a->shas[a->n], 65, "%s", sha);
    a->loras[a->n++] = (mood_style_lora){NULL, unet, te};
    return 0;
}

/* STYLE_OR_FILE[:W[:W_TE]]: a style's LoRAs (weights multiplied) or a file, imported first. */
static int note_imported(style_args *a, const char *file, const char *style)
{
    char **list = realloc(a->imported, (a->n_imported + 1) * sizeof *list);
    if (!list || !(list[a->n_imported] = strdup(style))) {
        a->imported = list ? list : a->imported;
        return cli_fail(MOOD_ENOMEM);
    }
    a->imported = list;
    a->n_imported++;
    fprintf(stderr, "mood: imported %s as style %s\n", file, style);
    return 0;
}

/* style create NAME --lora NAME.safetensors: the file's import took NAME (a style is named after
 * its file); it moves to a free name so that NAME is the style being made. */
static int free_created_name(style_args *a, mood_registry *r, const char *name)
{
    for (size_t i = 0; i < a->n_imported; i++) {
        char *other = NULL;
        if (strcasecmp(a->imported[i], name) != 0)
            continue;
        if (mood_registry_name_suggest(&other, r, name) != 0 ||
            mood_registry_rename(r, a->imported[i], other) != 0) {
            mood_registry_free_string(other);
            return fail(MOOD_EINVAL);
        }
        fprintf(stderr, "mood: the file's own style is named %s (%s is the style made here)\n",
                other, name);
        free(a->imported[i]);
        a->imported[i] = strdup(other);
        mood_registry_free_string(other);
        if (!a->imported[i])
            return fail(MOOD_ENOMEM);
    }
    return 0;
}

/* A command that failed leaves the registry as it was: the styles it imported go again. */
static void undo_imports(style_args *a, mood_registry *r, int failed)
{
    for (size_t i = 0; i < a->n_imported; i++) {
        if (failed && r && mood_registry_rm(r, a->imported[i]) == 0)
            fprintf(stderr, "mood: removed style %s again (imported for this command)\n",
                    a->imported[i]);
        free(a->imported[i]);
    }
    free(a->imported);
}

static int resolve_lora(style_args *a, mood_registry *r, const char *arg)
{
    double w = 1, wte = 1;
    int has_w, has_wte, rc = 0, err;
    char *what = NULL;
    mood_style_lora *list = NULL;
    size_t n = 0;
    if ((rc = cli_parse_weighted(arg, &what, &w, &has_w, &wte, &has_wte)) != 0)
        return rc;
    if (!has_wte)
        wte = w;
    if ((err = mood_registry_style_loras(&list, &n, r, what)) == 0) {
        for (size_t i = 0; i < n && !rc; i++)
            rc = add_lora(a, list[i].sha256, list[i].unet * w, list[i].te * wte);
        mood_registry_free_string((char *)list);
    } else if (access(what, F_OK) == 0) {
        mood_import_result res;
        if ((err = mood_registry_import_file(r, &res, what, cli_progress, NULL)) != 0)
            rc = fail(err);
        else if (!res.already)
            rc = note_imported(a, what, res.name);
        if (!rc)
            rc = add_lora(a, res.sha256, w, wte);
    } else {
        fprintf(stderr, "mood: error: --lora %s: no style of that name and no such file\n", what);
        rc = 1;
    }
    free(what);
    return rc;
}

/* Text that is not UTF-8 (a Latin-1 terminal) is refused before anything is imported, naming
 * the option it came with. */
static int check_text_options(const style_args *a, const char *name)
{
    const char *const what[] = {"NAME",       "--trigger",     "--template",
                                "--negative", "--description", "--notes"};
    const char *const text[] = {name,
                                a->spec.trigger_words,
                                a->spec.template_text,
                                a->spec.negative,
                                a->spec.description,
                                a->spec.notes};
    for (size_t i = 0; i < sizeof what / sizeof what[0]; i++) {
        if (mood_registry_text_check(text[i], what[i]) != 0)
            return cli_fail(MOOD_EINVAL);
    }
    return 0;
}

/* The options of style create and edit (each takes a value). */
static int style_option_known(const char *opt)
{
    static const char *const known[] = {"--lora",        "--trigger", "--template", "--negative",
                                        "--description", "--notes",   "--weight"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(opt, known[i]) == 0)
            return 1;
    return 0;
}

/* Options shared by create and edit; --lora arguments are collected in lora_args. */
static int parse_style_options(style_args *a, const char ***lora_args, size_t *n_lora, int argc,
                               char **argv, const char *cmd, const char **name)
{
    *lora_args = calloc((size_t)argc, sizeof **lora_args);
    *n_lora = 0;
    *name = NULL;
    if (!*lora_args)
        return 2;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (opt[0] != '-' || !opt[1]) {
            if (*name)
                return cli_usage_error(cmd, "unexpected argument '%s'", opt);
            *name = opt;
            continue;
        }
        if (strcmp(opt, "--json") == 0) {
            a->json = 1;
            continue;
        }
        if (!style_option_known(opt))
            return cli_unknown_option(cmd, opt);
        if (!v)
            return cli_usage_error(cmd, "option '%s' needs a value", opt);
        i++;
        if (strcmp(opt, "--lora") == 0)
            (*lora_args)[(*n_lora)++] = v;
        else if (strcmp(opt, "--trigger") == 0)
            a->spec.trigger_words = v;
        else if (strcmp(opt, "--template") == 0)
            a->spec.template_text = v;
        else if (strcmp(opt, "--negative") == 0)
            a->spec.negative = v;
        else if (strcmp(opt, "--description") == 0)
            a->spec.description = v;
        else if (strcmp(opt, "--notes") == 0)
            a->spec.notes = v;
        else if (strcmp(opt, "--weight") == 0 && !*v) { /* cleared: null, applied as 1 */
            a->spec.weight = NAN;
            a->spec.has_weight = 1;
        } else if (strcmp(opt, "--weight") == 0) {
            const cli_num_opt weight = {"--weight",
                                        CLI_NUM_REAL,
                                        &a->spec.weight,
                                        -10,
                                        10,
                                        0,
                                        0,
                                        0,
                                        &a->spec.has_weight,
                                        NULL,
                                        "a number, -10 to 10 (the registry's range)"};
            if (cli_parse_number(cmd, &weight, 1, opt, v) != 0)
                return 1;
        }
    }
    if (!*name)
        return cli_usage_error(cmd, "missing NAME");
    if (argc == 2 + a->json && strcmp(cmd, "style edit") == 0) /* it would say it changed it */
        return cli_usage_error(cmd, "nothing to change: give --lora, --trigger, --template, "
                                    "--negative, --description, --notes or --weight");
    return check_text_options(a, *name);
}

/* The style edit changes, looked up before any --lora FILE is imported: editing a style that is
 * not there (a typo, a mistyped MOOD_HOME) must leave the registry as it was, or not make one. */
static int edited_exists(mood_registry *r, const char *name)
{
    mood_style_lora *list = NULL;
    size_t n = 0;
    int err = mood_registry_style_loras(&list, &n, r, name);
    mood_registry_free_string((char *)list);
    return err ? fail(err) : 0;
}

static int style_run(int argc, char **argv, int create)
{
    const char *cmd = create ? "style create" : "style edit", *name = NULL, **lora_args = NULL;
    style_args a;
    mood_registry *r = NULL;
    size_t n_lora = 0;
    int rc, err = 0;
    memset(&a, 0, sizeof a);
    if ((rc = parse_style_options(&a, &lora_args, &n_lora, argc, argv, cmd, &name)) != 0)
        goto done;
    if (create && n_lora == 0) {
        rc = cli_usage_error(cmd, "give at least one --lora STYLE_OR_FILE[:W[:W_TE]]");
        goto done;
    }
    if (create && mood_registry_name_check(name) != 0) {
        rc = cli_fail(MOOD_EINVAL); /* before importing anything */
        goto done;
    }
    if ((rc = cli_registry_open(&r)) != 0 || (!create && n_lora && (rc = edited_exists(r, name))))
        goto done;
    for (size_t i = 0; i < n_lora && !rc; i++)
        rc = resolve_lora(&a, r, lora_args[i]);
    if (!rc && create)
        rc = free_created_name(&a, r, name);
    if (rc)
        goto done;
    for (size_t i = 0; i < a.n; i++)
        a.loras[i].sha256 = a.shas[i];
    if (n_lora) {
        a.spec.loras = a.loras;
        a.spec.n_loras = a.n;
    }
    err = create ? mood_registry_style_create(r, name, &a.spec)
                 : mood_registry_style_edit(r, name, &a.spec);
    if (err)
        rc = fail(err);
    else if (a.json)
        rc = print_style_json(r, name);
    else
        printf("%s style %s\n", create ? "created" : "changed", name);
done:
    undo_imports(&a, r, rc != 0);
    mood_registry_close(r);
    free(lora_args);
    free(a.loras);
    free(a.shas);
    return rc;
}

int cmd_style_create(int argc, char **argv)
{
    return style_run(argc, argv, 1);
}

int cmd_style_edit(int argc, char **argv)
{
    return style_run(argc, argv, 0);
}

/* ----- tag / rename / rm ------------------------------------------------------------------- */

int cmd_tag(int argc, char **argv)
{
    mood_registry *r = NULL;
    const char *name = NULL, **changes = calloc((size_t)argc, sizeof *changes);
    size_t n = 0;
    int rc = -1, err, json = 0;
    for (int i = 1; i < argc && rc < 0 && changes; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (mood_registry_text_check(argv[i], name ? "tag" : "NAME") != 0)
            rc = cli_fail(MOOD_EINVAL); /* before quoting it below */
        else if (!name)
            name = argv[i];
        else if ((argv[i][0] != '+' && argv[i][0] != '-') || !argv[i][1])
            rc = cli_usage_error("tag", "'%s': write +TAG to add a tag, -TAG to remove one",
                                 argv[i]);
        else if (argv[i][1] == '-') /* --help, --jsn: an option, not "remove tag -jsn" */
            rc = cli_usage_error("tag",
                                 "'%s': tag takes only --json, and a tag does not start "
                                 "with '-'",
                                 argv[i]);
        else
            changes[n++] = argv[i];
    }
    if (rc < 0 && !changes)
        rc = cli_fail(MOOD_ENOMEM);
    if (rc < 0 && n == 0)
        rc = cli_usage_error("tag", "usage: mood tag NAME +TAG -TAG ... [--json]");
    if (rc < 0 && (rc = cli_registry_open(&r)) == 0) {
        /* all or none: "-old +new" must not lose old when new cannot be stored */
        err = mood_registry_tags(r, name, changes, n);
        rc = err ? fail(err) : json ? print_style_json(r, name) : 0;
    }
    mood_registry_close(r);
    free(changes);
    return rc;
}

int cmd_rename(int argc, char **argv)
{
    const char *names[2] = {NULL, NULL};
    mood_registry *r = NULL;
    int rc, err, json = 0;
    if ((rc = parse_simple(argc, argv, "rename", &json, names, 2)) >= 0)
        return rc;
    if ((rc = cli_registry_open(&r)) != 0)
        return rc;
    err = mood_registry_rename(r, names[0], names[1]);
    rc = err ? fail(err) : json ? print_style_json(r, names[1]) : 0;
    mood_registry_close(r);
    if (!err && !json)
        printf("renamed %s to %s\n", names[0], names[1]);
    return rc;
}

/* Whether name is among names[0..n), regardless of case (as style names are unique). */
int cmd_rm(int argc, char **argv)
{
    mood_registry *r = NULL;
    const char **names = calloc((size_t)argc, sizeof *names);
    cJSON *removed = cJSON_CreateArray();
    size_t n = 0;
    int rc = 0, err = 0, json = 0;
    for (int i = 1; i < argc && !rc && names; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] == '-')
            rc = cli_usage_error("rm", "unknown option '%s'", argv[i]);
        else
            names[n++] = argv[i];
    }
    n = names ? cli_drop_repeated_names(names, n) : 0;
    if (!rc && (!names || !removed))
        rc = cli_fail(MOOD_ENOMEM);
    if (!rc && n == 0)
        rc = cli_usage_error("rm", "missing NAME");
    if (!rc)
        rc = cli_registry_open(&r);
    /* every name first: a mistyped one among several removes none, not the ones before it */
    for (size_t i = 0; n > 1 && !rc && i < n; i++) {
        char *shown = NULL, line[2200];
        if ((err = mood_registry_show_json(&shown, r, names[i])) != 0) {
            snprintf(line, sizeof line, "nothing removed: %s", mood_error_last());
            cli_text_report("error", line);
            rc = err == MOOD_ENOTFOUND || mood_error_is_user(err) ? 1 : 2; /* as fail() */
        }
        mood_registry_free_string(shown);
    }
    for (size_t i = 0; !rc && i < n && !err; i++) {
        if ((err = mood_registry_rm(r, names[i])) != 0)
            rc = fail(err);
        else if (json)
            cJSON_AddItemToArray(removed, cJSON_CreateString(names[i]));
        else
            printf("removed %s\n", names[i]);
    }
    if (json && r) { /* what was removed, also when a later name failed */
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "removed", removed);
        removed = NULL;
        if (err)
            cJSON_AddStringToObject(o, "error", mood_error_last());
        cli_print_json(o);
    }
    mood_registry_close(r);
    cJSON_Delete(removed);
    free(names);
    return rc;
}
