/*
 * cmd_import.c: `mood import PATH... [--json]`: LoRA files and folders into the registry.
 *
 * Folders are walked recursively in name order. In a folder, .safetensors files are imported,
 * pickles (.ckpt/.pt/.pth/.bin) are reported as refused, sidecars (.json - .metadata.json and
 * .cm-info.json among them -, .civitai.info, .txt, images) are read with their LoRA and otherwise
 * passed over, anything else is reported and skipped. Each file is imported all or nothing; one
 * failing file does not stop the others, and the exit status is the worst seen (0 ok, 1 a file was
 * refused, 2 environment).
 *
 * Links are followed, but each folder is searched once (by device and inode), so a link back up
 * the tree ends the walk instead of repeating it until the path is too long. Named pipes, devices
 * and sockets are skipped without being opened: opening a pipe would wait for a writer forever.
 * Sidecars the library leaves out (a link out of the LoRA's folder, a preview that is no image)
 * are listed as skipped too: its warnings are caught while a file is imported. The --json
 * summary is UTF-8 even for file names that are not (read as Windows-1252, as the registry does).
 * The human output shows file names and messages with their control characters as escapes
 * (cli_text.h): a folder from the web may name a file so as to drive the terminal.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/cli_text.h"
#include "cli/cmd_civitai.h"

const char cmd_import_help[] =
    "usage: mood import PATH|URL|civitai:VERSION_ID|AIR... [--offline] [--nsfw LEVEL] [--json]\n\n"
    "Adds LoRA files to your style registry (see 'mood info' for where it lives; set MOOD_HOME\n"
    "to use another). PATH is a .safetensors file or a folder, searched recursively.\n\n"
    "Each LoRA becomes a style named after the file (inkwash.safetensors -> 'inkwash'), which\n"
    "you then use as <lora:inkwash:0.8> or with 'mood gen --style inkwash'. Style names may\n"
    "only hold letters, digits, '_', '-' and '.' (what <lora:NAME:W> carries in A1111 and\n"
    "Civitai) and are unique regardless of case: a file called 'Ink Wash (v2).safetensors' is\n"
    "imported as 'Ink_Wash_v2' ('Crème brûlée' as 'Creme_brulee', 'Straße' as 'Strasse'), a\n"
    "second 'inkwash' as 'inkwash-2'; a warning says so, and 'mood rename' changes it. A name\n"
    "of other scripts only ('水墨画') becomes 'style', 'style-2', ...: search finds it by its\n"
    "file name.\n\n"
    "What is kept: the file itself (stored once by its SHA-256: importing the same file again\n"
    "changes nothing and says which style is that file; when none is any more - it was removed\n"
    "or its LoRA replaced while another style kept the file - the style is made again from the\n"
    "file and its sidecars, reusing the stored copy; a file at the place it was imported from,\n"
    "unchanged since (size, modification and change times, inode), is known without being\n"
    "read again, so that importing a big folder again takes a moment), its base family (sd1,\n"
    "sd2, sdxl), algorithm, rank, alpha, the training metadata (ss_*, modelspec.*), trigger\n"
    "words, and what other tools left beside it:\n"
    "  NAME.json            A1111: activation text, preferred weight, notes, description\n"
    "  NAME.civitai.info    Civitai Helper: trained words, model name, base model, ids\n"
    "  NAME.metadata.json   ComfyUI-Lora-Manager: its Civitai record (as .civitai.info),\n"
    "                       usage_tips strength as the weight, notes, tags\n"
    "  NAME.cm-info.json    StabilityMatrix: trained words, model and version names and ids,\n"
    "                       base model, tags\n"
    "  NAME.txt             trigger words\n"
    "  NAME.preview.png, NAME.png (.jpg, .webp)   preview images\n"
    "Trigger words are those of all of them. The A1111 .json, your own edits, comes first for\n"
    "the weight and notes (then .metadata.json); the Civitai record kept is the first of\n"
    ".civitai.info, .metadata.json, .cm-info.json that has a version id. A record whose files'\n"
    "SHA-256 are not this file's describes another file: that sidecar is skipped. A Civitai\n"
    "record (from a sidecar or a lookup) whose base model is of another family than the file\n"
    "(Civitai says SDXL 1.0 or Pony, the file's keys and metadata SD 1.x) is kept with a warning\n"
    "naming both: the file's family is the one mood uses.\n"
    "A preview is kept only when it is a PNG, JPEG or WebP image (its type read from its\n"
    "content), and a sidecar that is a link to a file outside the LoRA's folder is not read:\n"
    "both are listed as skipped. Folders reached again through links are searched once; named\n"
    "pipes, devices and sockets are skipped without being opened. Hidden files and folders\n"
    "(names starting with '.') are passed over; a hidden .safetensors file is listed as\n"
    "skipped.\n\n"
    "Refused: checkpoints (use them as base models instead), and pickle files (.ckpt, .pt,\n"
    ".pth, .bin), which can run code when loaded and are never opened.\n\n"
    "From the web: an http(s) URL is downloaded (resuming an interrupted download, file name\n"
    "from the server) and imported. A Civitai reference (civitai:VERSION_ID, a model or version\n"
    "page URL such as https://civitai.com/models/123?modelVersionId=456 - the model's latest\n"
    "version without modelVersionId - or an AIR such as urn:air:sd1:lora:civitai:123@456)\n"
    "downloads the version's file, checks it against the SHA-256 Civitai publishes, and stores\n"
    "Civitai's data: ids, names, base model, trained words, description, NSFW level, licence\n"
    "and permissions, AIR, previews. Every imported file is also looked up on Civitai by its\n"
    "SHA-256 ('mood civitai link' does it later). CIVITAI_TOKEN (an API key, needed for most\n"
    "downloads) is sent to Civitai only and never stored; MOOD_CIVITAI_URL changes the site.\n\n"
    "  --offline   no Civitai lookups (MOOD_OFFLINE=1 does the same): civitai: references,\n"
    "              AIRs and Civitai URLs are refused\n"
    "  --nsfw LEVEL  previews kept from Civitai: none, pg (default), pg13, r, x, xxx\n"
    "  --json    print a summary object: imported [{file, name, wanted, renamed, sha256,\n"
    "            autov3, family, n_previews (the style's, Civitai's included), sidecars,\n"
    "            civitai {version_id, ...} when found there}], already [{file, name, sha256,\n"
    "            warning (a copy whose sidecars did not make the style)}],\n"
    "            skipped [{file, reason}] (files and sidecars left out), failed [{file, error}],\n"
    "            warnings [text] (each warning said on stderr, once; absent when none)\n\n"
    "Exit status: 0 all imported (or already there), 1 a file was refused, 2 a file could not\n"
    "be read or the registry could not be written.\n";

/* A folder already searched. */
typedef struct visited_dir {
    dev_t dev;
    ino_t ino;
} visited_dir;

typedef struct import_run {
    mood_registry *r;
    int json, status;
    cJSON *imported, *already, *skipped, *failed;
    cli_civitai_flags cf; /* --offline, --nsfw (cmd_civitai.c) */
    visited_dir *dirs;
    size_t n_dirs, cap_dirs;
} import_run;

int cli_registry_open(mood_registry **out)
{
    int err = mood_registry_open(out, NULL);
    return err ? cli_fail(err) : 0;
}

static int worse(int a, int b)
{
    return a > b ? a : b;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* Whether path is in the skipped list already: a named pipe beside a LoRA is skipped by the walk
 * and, as its sidecar, by the import. */
static int listed(const import_run *run, const char *path)
{
    const cJSON *o;
    cJSON_ArrayForEach(o, run->skipped)
    {
        const char *file = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "file"));
        if (file && strcmp(file, path) == 0)
            return 1;
    }
    return 0;
}

/* The strings of v and below in UTF-8: file names made on Windows (and messages quoting them)
 * may be Windows-1252, and --json must stay JSON. */
static void json_utf8(cJSON *v)
{
    for (; v; v = v->next) {
        char *s = NULL;
        if (cJSON_IsString(v) && mood_registry_text_to_utf8(&s, v->valuestring) == 0 &&
            strcmp(s, v->valuestring) != 0)
            cJSON_SetValuestring(v, s);
        mood_registry_free_string(s);
        json_utf8(v->child);
    }
}

/* Prints "mood: WHAT: TEXT" to stderr with TEXT's control characters made visible. */
static void say(const char *what, const char *text)
{
    char *shown = cli_text_visible(text, 0);
    fprintf(stderr, "mood: %s%s%s\n", what, what[0] ? ": " : "", shown ? shown : "?");
    free(shown);
}

static void skip(import_run *run, const char *path, const char *reason)
{
    cJSON *o;
    if (listed(run, path))
        return;
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "file", path);
    cJSON_AddStringToObject(o, "reason", reason);
    cJSON_AddItemToArray(run->skipped, o);
    if (!run->json) {
        char *shown = cli_text_visible(path, 0);
        fprintf(stderr, "mood: skipped %s: %s\n", shown ? shown : "?", reason);
        free(shown);
    }
}

enum { LOG_WARNING = 1 }; /* mood_log_fn's levels: 0 error, 1 warning, 2 info, 3 debug */

/* The library's log while a file is imported: printed as main's sink does, and a sidecar it left
 * out ("PATH: sidecar skipped: REASON", registry/import.c) also goes to the skipped list. */
static void import_log(int level, const char *message, void *payload)
{
    static const char marker[] = ": sidecar skipped: ";
    import_run *run = payload;
    const char *m = strstr(message, marker);
    if (level == LOG_WARNING) /* also kept for --json's "warnings" */
        cli_text_report("warning", message);
    else if (level < LOG_WARNING)
        say("error", message);
    else if (getenv("MOOD_VERBOSE"))
        say("", message);
    if (level == LOG_WARNING && m && run) {
        char *file = strndup(message, (size_t)(m - message));
        if (file && !listed(run, file)) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "file", file);
            cJSON_AddStringToObject(o, "reason", m + sizeof marker - 1);
            cJSON_AddItemToArray(run->skipped, o);
        }
        free(file);
    }
}

static void report_rename(const import_run *run, const mood_import_result *res)
{
    char why[1024];
    if (run->json || !res->renamed)
        return;
    cli_progress_done();
    if (mood_registry_name_check(res->wanted) != 0)
        snprintf(why, sizeof why, "%s; imported as '%s'", mood_error_last(), res->name);
    else
        snprintf(why, sizeof why,
                 "a style named '%s' exists already; imported as '%s' ('mood rename' changes it)",
                 res->wanted, res->name);
    say("warning", why); /* the wanted name is the file's, as it came */
}

/* The sidecars beside path (NAME.json, NAME.civitai.info, NAME.metadata.json, NAME.cm-info.json,
 * NAME.txt, NAME.preview.png) that exist, as ", "-joined names into buf; 0 when none. */
static int sidecars_beside(char *buf, size_t size, const char *path)
{
    static const char *const kinds[] = {".json",         ".civitai.info", ".metadata.json",
                                        ".cm-info.json", ".txt",          ".preview.png"};
    size_t stem = strlen(path) - strlen(".safetensors"), used = 0;
    int n = 0;
    struct stat st;
    char probe[4200];
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        snprintf(probe, sizeof probe, "%.*s%s", (int)stem, path, kinds[i]);
        if (stat(probe, &st) == 0 && S_ISREG(st.st_mode) && used < size) {
            const char *slash = strrchr(probe, '/');
            used += (size_t)snprintf(buf + used, size - used, "%s%s", n ? ", " : "",
                                     slash ? slash + 1 : probe);
            n++;
        }
    }
    return n;
}

/* What a person reads about one file (--json: nothing). */
/* The warning for a copy of a stored file whose own sidecars did not make the style (a copy of
 * the same bytes, elsewhere, came first: its sidecars did); 0 when there is none to give. A
 * second import of the same file read them the first time. */
static int unread_sidecars(char *why, size_t size, const char *path, const mood_import_result *res)
{
    char sidecars[1024];
    if (!res->already || !res->elsewhere || !sidecars_beside(sidecars, sizeof sidecars, path))
        return 0;
    snprintf(why, size,
             "%s: the same file is stored already as style '%s', imported from another copy: "
             "this one is recorded as another source of it, but its sidecars' (%s) trigger "
             "words and text are not the style's; 'mood style edit %s' sets them",
             path, res->name, sidecars, res->name);
    return 1;
}

static void report_import(const import_run *run, const char *path, int err,
                          const mood_import_result *res)
{
    char *shown = cli_text_visible(path, 0);
    const char *p = shown ? shown : "?";
    if (err) /* on stderr with --json too, as every command's errors (and failed[] lists it) */
        say("error", mood_error_last());
    if (run->json || err) {
        free(shown);
        return;
    }
    if (res->already) {
        char why[2048];
        printf("%s: already in the registry as %s\n", p, res->name);
        if (unread_sidecars(why, sizeof why, path, res))
            say("warning", why);
    } else
        printf("imported %s as %s (%s%s%s)\n", p, res->name, res->family,
               res->previews ? ", with previews" : "", res->sidecars ? ", sidecars read" : "");
    fflush(stdout); /* a line per committed file, also in a log when Ctrl-C ends a long import */
    free(shown);
}

static void import_one(import_run *run, const char *path)
{
    mood_import_result res;
    int err = mood_registry_import_file(run->r, &res, path, cli_progress, NULL);
    cJSON *o = cJSON_CreateObject();
    cli_progress_done();
    cJSON_AddStringToObject(o, "file", path);
    if (err) {
        cJSON_AddStringToObject(o, "error", mood_error_last());
        cJSON_AddItemToArray(run->failed, o);
        report_import(run, path, err, &res);
        run->status = worse(run->status, mood_error_is_user(err) ? 1 : 2);
        return;
    }
    cJSON_AddStringToObject(o, "name", res.name);
    cJSON_AddStringToObject(o, "sha256", res.sha256);
    if (res.already) {
        char why[2048];
        if (run->json && unread_sidecars(why, sizeof why, path, &res)) /* text mode says it */
            cJSON_AddStringToObject(o, "warning", why);
        cJSON_AddItemToArray(run->already, o);
        report_import(run, path, 0, &res);
        return;
    }
    cJSON_AddStringToObject(o, "wanted", res.wanted);
    cJSON_AddBoolToObject(o, "renamed", res.renamed);
    cJSON_AddStringToObject(o, "autov3", res.autov3);
    cJSON_AddStringToObject(o, "family", res.family);
    cJSON_AddNumberToObject(o, "n_previews", res.previews);
    cJSON_AddNumberToObject(o, "sidecars", res.sidecars);
    cJSON_AddItemToArray(run->imported, o);
    report_rename(run, &res);
    report_import(run, path, 0, &res);
    cli_civitai_after_import(run->r, res.name, &run->cf, o);
}

/* A URL or Civitai reference (cmd_civitai.c downloads it and imports the file). */
static void import_remote(import_run *run, const char *what)
{
    cJSON *o = cJSON_CreateObject();
    int already = 0, st = cli_import_remote(run->r, what, &run->cf, o, &already);
    cJSON_AddItemToArray(st ? run->failed : already ? run->already : run->imported, o);
    run->status = worse(run->status, st);
}

static int is_sidecar(const char *name)
{
    static const char *const kinds[] = {".json", ".civitai.info", ".txt", ".png",  ".jpg",
                                        ".jpeg", ".webp",         ".md",  ".yaml", ".toml"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (has_suffix(name, kinds[i]))
            return 1;
    }
    return 0;
}

static int is_pickle(const char *name)
{
    return has_suffix(name, ".ckpt") || has_suffix(name, ".pt") || has_suffix(name, ".pth") ||
           has_suffix(name, ".bin") || has_suffix(name, ".pkl");
}

static void walk(import_run *run, const char *path, int top);

/* Records the folder as searched; false when it was already (a link back up the tree, or the
 * same folder given twice). Out of memory: searched again rather than not at all. */
static int first_visit(import_run *run, const struct stat *st)
{
    visited_dir *grown;
    for (size_t i = 0; i < run->n_dirs; i++) {
        if (run->dirs[i].dev == st->st_dev && run->dirs[i].ino == st->st_ino)
            return 0;
    }
    if (run->n_dirs == run->cap_dirs) {
        size_t cap = run->cap_dirs ? 2 * run->cap_dirs : 16;
        if (!(grown = realloc(run->dirs, cap * sizeof *grown)))
            return 1;
        run->dirs = grown;
        run->cap_dirs = cap;
    }
    run->dirs[run->n_dirs++] = (visited_dir){st->st_dev, st->st_ino};
    return 1;
}

static void walk_dir(import_run *run, const char *dir)
{
    struct dirent **list = NULL;
    int n = scandir(dir, &list, NULL, alphasort);
    if (n < 0) {
        char why[PATH_MAX + 256];
        snprintf(why, sizeof why, "%s: cannot read the folder: %s", dir, strerror(errno));
        say("error", why);
        run->status = worse(run->status, 2);
        return;
    }
    for (int i = 0; i < n; i++) {
        const char *name = list[i]->d_name;
        size_t len = strlen(dir) + strlen(name) + 2;
        char *child = malloc(len);
        if (child)
            snprintf(child, len, "%s%s%s", dir, has_suffix(dir, "/") ? "" : "/", name);
        if (name[0] != '.' && child)
            walk(run, child, 0);
        else if (child && has_suffix(name, ".safetensors")) /* said, not silently passed over */
            skip(run, child,
                 "a hidden file (its name starts with '.', as macOS's ._ copies do): name it "
                 "to import it");
        free(child);
        free(list[i]);
    }
    free(list);
}

/* A path stat() refused: ENOENT (a dangling link too) said plainly, anything else (ELOOP,
 * EACCES) as the system says it. */
static void unreadable(import_run *run, const char *path, int e)
{
    const char *why = e == ENOENT ? "no such file or folder" : strerror(e);
    cJSON *o = cJSON_CreateObject();
    char line[PATH_MAX + 256];
    cJSON_AddStringToObject(o, "file", path);
    cJSON_AddStringToObject(o, "error", why);
    cJSON_AddItemToArray(run->failed, o);
    snprintf(line, sizeof line, "%s: %s", path, why);
    say("error", line);
    run->status = worse(run->status, 2);
}

/* Neither a file nor a folder: a named pipe (opening it would wait forever), device or socket. */
static const char *special_kind(mode_t mode)
{
    if (S_ISFIFO(mode))
        return "a named pipe (FIFO), not a regular file";
    if (S_ISSOCK(mode))
        return "a socket, not a regular file";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device, not a regular file";
    return "not a regular file";
}

/* mood train's NAME.checkpoint.safetensors beside the LoRA: found in a folder, it is passed over
 * as sidecars are (named on its own, import says what it is). */
static int is_training_state(const char *path)
{
    mood_st_file *f = NULL;
    int state = has_suffix(path, ".checkpoint.safetensors") && mood_st_open(&f, path) == 0 &&
                mood_st_meta_get(f, "mood.train.version") != NULL;
    mood_st_close(f);
    return state;
}

static void walk(import_run *run, const char *path, int top)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        unreadable(run, path, errno);
    } else if (S_ISDIR(st.st_mode)) {
        if (first_visit(run, &st))
            walk_dir(run, path);
        else
            skip(run, path,
                 top ? "a folder already searched" : "a link to a folder already searched");
    } else if (!S_ISREG(st.st_mode)) {
        skip(run, path, special_kind(st.st_mode));
        if (top)
            run->status = worse(run->status, 1);
    } else if (!top && is_training_state(path)) {
        skip(run, path, "a mood training checkpoint (the state --resume continues), not a LoRA");
    } else if (has_suffix(path, ".safetensors") || (top && is_pickle(path))) {
        import_one(run, path);
    } else if (is_pickle(path)) {
        skip(run, path, "pickle file: not loaded (it could run code); convert it to .safetensors");
    } else if (top) {
        skip(run, path, "not a .safetensors file");
        run->status = worse(run->status, 1);
    } else if (!is_sidecar(path)) {
        skip(run, path, "not a .safetensors file");
    }
}

/* What made an import offline (`fix`: how to undo it). */
static const char *offline_cause(int argc, char **argv, int fix)
{
    const char *env = getenv("MOOD_OFFLINE");
    int both = env && *env && strcmp(env, "0") != 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--offline") == 0)
            return fix    ? (both ? "drop --offline and unset MOOD_OFFLINE" : "drop --offline")
                   : both ? "--offline (and MOOD_OFFLINE)"
                          : "--offline";
    return fix ? "unset it, or set it to 0," : "MOOD_OFFLINE in the environment";
}

int cmd_import(int argc, char **argv)
{
    import_run run = {0};
    int rc, any = 0;
    cli_civitai_flags_init(&run.cf);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            run.json = 1;
        else if (strcmp(argv[i], "--offline") == 0)
            run.cf.offline = 1;
        else if (strcmp(argv[i], "--nsfw") == 0 && i + 1 < argc) {
            if (cli_parse_nsfw(argv[++i], &run.cf.nsfw_max) != 0)
                return 1;
        } else if (argv[i][0] == '-' && argv[i][1])
            return cli_unknown_option("import", argv[i]);
        else
            any = 1;
    }
    if (!any)
        return cli_usage_error("import", "give the LoRA files or folders to import");
    for (int i = 1; i < argc && run.cf.offline; i++)
        if (strcmp(argv[i - 1], "--nsfw") != 0 && mood_civitai_is_ref(argv[i]))
            return cli_usage_error("import",
                                   "%s is looked up on Civitai, and %s rules that out (%s to "
                                   "import it)",
                                   argv[i], offline_cause(argc, argv, 0),
                                   offline_cause(argc, argv, 1));
    if ((rc = cli_registry_open(&run.r)) != 0)
        return rc;
    run.imported = cJSON_CreateArray();
    run.already = cJSON_CreateArray();
    run.skipped = cJSON_CreateArray();
    run.failed = cJSON_CreateArray();
    run.cf.json = run.json;
    mood_log_set(import_log, &run);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--nsfw") == 0)
            i++;
        else if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "--offline") == 0)
            continue;
        else if (cli_is_remote(argv[i]))
            import_remote(&run, argv[i]);
        else
            walk(&run, argv[i], 1);
    }
    mood_registry_close(run.r);
    mood_log_set(import_log, NULL); /* run is about to go */
    free(run.dirs);
    if (run.json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "imported", run.imported);
        cJSON_AddItemToObject(o, "already", run.already);
        cJSON_AddItemToObject(o, "skipped", run.skipped);
        cJSON_AddItemToObject(o, "failed", run.failed);
        cli_warnings_json(o);
        json_utf8(o);
        return worse(run.status, cli_print_json(o));
    }
    cJSON_Delete(run.imported);
    cJSON_Delete(run.already);
    cJSON_Delete(run.skipped);
    cJSON_Delete(run.failed);
    return run.status;
}
