/*
 * cmd_style_export.c: `mood style export NAME... -o DIR`: styles out of the registry as the files
 * AUTOMATIC1111, Forge, ComfyUI and their LoRA managers read from a LoRA folder (ecosystem.md
 * §2.1): NAME.safetensors, A1111's NAME.json (activation text, preferred weight, negative text,
 * notes, description, sd version), NAME.preview.EXT and Civitai Helper's NAME.civitai.info.
 *
 * A style of one LoRA whose text-encoder and UNet multipliers are equal exports that LoRA byte
 * for byte (its SHA-256, AutoV3 and Civitai link stay valid) with the multiplier folded into the
 * preferred weight; any other style exports one LoRA that applies all of its LoRAs at their
 * multipliers exactly (mood_lora_stack), since an A1111 <lora:NAME:W> tag names one file.
 * `mood import` of the folder gives the styles back with their text (the round trip is tested).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_text.h"
#include "common/common.h"

const char cmd_style_export_help[] =
    "usage: mood style export NAME... -o DIR [--force] [--json]\n\n"
    "Writes the named styles into DIR as AUTOMATIC1111, Forge and ComfyUI (and Civitai Helper,\n"
    "Lora-Manager) find LoRAs in their LoRA folder, for example ~/ComfyUI/models/loras:\n"
    "  NAME.safetensors      the style's LoRA: the stored file itself when the style is one\n"
    "                        LoRA (its hashes and Civitai link stay valid); otherwise one\n"
    "                        LoRA that applies all of the style's LoRAs at their weights\n"
    "                        exactly, as 'mood lora stack' writes it\n"
    "  NAME.json             A1111's card data: activation text (the trigger words),\n"
    "                        preferred weight (0, A1111's default, for a style without one),\n"
    "                        negative text, notes, description, sd version\n"
    "  NAME.preview.EXT      the style's first preview (png, jpg or webp, as stored)\n"
    "  NAME.civitai.info     the Civitai record, when the LoRA has one and is exported as is\n"
    "                        (one that came in a StabilityMatrix sidecar goes back as\n"
    "                        NAME.cm-info.json)\n"
    "In A1111, <lora:NAME:W> then applies the style; 'mood import DIR' reads it all back.\n"
    "A style's prompt template is not written (A1111 and ComfyUI keep none with a LoRA).\n\n"
    "  -o, --output DIR   the folder to write into (made when its parent exists)\n"
    "  --force            replace files of those names that are there already (a link is\n"
    "                     replaced, not the file it leads to); without it the same LoRA is\n"
    "                     left as it is (for a combined one: the same tensors), another file\n"
    "                     of the LoRA's name stops that style's export, and existing sidecars\n"
    "                     are kept (you may have edited them in A1111)\n"
    "  --json             print {exported [{name, lora, sha256, combined, written, kept}],\n"
    "                     failed [{name, error}]}\n\n"
    "Example:\n"
    "  mood style export inkwash film-grain -o ~/stable-diffusion-webui/models/Lora\n\n"
    "Exit status: 0 every style exported, 1 a style unknown or refused (a file in the way,\n"
    "LoRAs that cannot be combined into one), 2 a file could not be read or written.\n";

typedef struct export_args {
    const char **names;
    size_t n;
    const char *dir;
    int force, json;
} export_args;

/* What one style's export did, for the summary. */
typedef struct export_result {
    char *name; /* as stored (names ignore case) */
    char *lora, *sha256;
    int combined;
    cJSON *written, *kept; /* arrays of paths */
    cJSON *created;        /* the written files that were not there before */
} export_result;

/* path was written; it is removed again if the style's export fails after all (a LoRA without
 * its card, or a card without its LoRA, is no export), unless it replaced a file. */
static void note_written(export_result *r, const char *path, int existed)
{
    cJSON_AddItemToArray(r->written, cJSON_CreateString(path));
    if (!existed)
        cJSON_AddItemToArray(r->created, cJSON_CreateString(path));
}

static int parse_args(export_args *a, int argc, char **argv)
{
    if (!(a->names = calloc((size_t)argc, sizeof *a->names)))
        return cli_fail(MOOD_ENOMEM);
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--json") == 0)
            a->json = 1;
        else if (strcmp(s, "--force") == 0)
            a->force = 1;
        else if ((strcmp(s, "-o") == 0 || strcmp(s, "--output") == 0) && i + 1 < argc)
            a->dir = argv[++i];
        else if (s[0] == '-')
            return cli_unknown_option("style export", s);
        else
            a->names[a->n++] = s;
    }
    a->n = cli_drop_repeated_names(a->names, a->n);
    if (a->n == 0)
        return cli_usage_error("style export", "give the names of the styles to export");
    if (!a->dir)
        return cli_usage_error("style export", "give the folder to write into with -o DIR");
    return 0;
}

/* DIR, made when it is not there (its parent must be); *made says so. */
static int prepare_dir(const char *dir, int *made)
{
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return 0;
        fprintf(stderr, "mood: error: %s is not a folder: -o names the folder to write into\n",
                dir);
        return 1;
    }
    if (lstat(dir, &st) == 0 && S_ISLNK(st.st_mode)) {
        fprintf(stderr, "mood: error: %s is a link to a folder that does not exist\n", dir);
        return 2;
    }
    if (mkdir(dir, 0755) != 0) {
        fprintf(stderr, "mood: error: %s: cannot make the folder: %s\n", dir, strerror(errno));
        return 2;
    }
    *made = 1;
    return 0;
}

static char *path_in(const char *dir, const char *name, const char *suffix)
{
    size_t n = strlen(dir) + strlen(name) + strlen(suffix) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s%s", dir, name, suffix);
    return p;
}

static double num_or(const cJSON *o, const char *key, double fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

static const char *str_or_empty(const cJSON *o, const char *key)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
    return s ? s : "";
}

/* Whether the file at path holds exactly these bytes (a sidecar written before is left alone). */
static int same_content(const char *path, const void *data, size_t n)
{
    mood_map m = {0};
    int same = mood_map_file(&m, path) == 0 && m.size == n && memcmp(m.data, data, n) == 0;
    mood_unmap(&m);
    mood_error_clear();
    return same;
}

/* With --force, a link at path is removed so that the file takes its place: a write would go to
 * wherever it leads, out of DIR (import does not follow links out of a folder either). */
static int unlink_if_link(const export_args *a, const char *path)
{
    struct stat st;
    if (!a->force || lstat(path, &st) != 0 || !S_ISLNK(st.st_mode) || unlink(path) == 0)
        return 0;
    return mood_error_set(MOOD_EIO, "%s: cannot replace the link: %s", path, strerror(errno));
}

/* Whether something (a file, a link, even a broken one) is at path. */
static int taken(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Writes data to path (atomically: a full disk leaves the earlier file, or none), unless a file
 * is there and --force was not given: then it is kept. Records which in r. */
static int put_file(export_result *r, const export_args *a, const char *path, const void *data,
                    size_t n)
{
    mood_atomic_file af;
    int err, existed = taken(path);
    if (existed && !a->force) {
        if (!same_content(path, data, n))
            cJSON_AddItemToArray(r->kept, cJSON_CreateString(path));
        return 0;
    }
    if ((err = unlink_if_link(a, path)) != 0 || (err = mood_atomic_open(&af, path)) != 0)
        return err;
    if ((err = mood_atomic_write(&af, data, n)) != 0) {
        mood_atomic_abort(&af);
        return err;
    }
    if ((err = mood_atomic_commit(&af)) != 0)
        return err;
    note_written(r, path, existed);
    return 0;
}

/* A1111's "sd version" of a family (extensions-builtin/Lora: SD1, SD2, SDXL or Unknown). */
static const char *sd_version(const char *family)
{
    if (family && strcmp(family, "sd1") == 0)
        return "SD1";
    if (family && strcmp(family, "sd2") == 0)
        return "SD2";
    if (family && strcmp(family, "sdxl") == 0)
        return "SDXL";
    return "Unknown";
}

/* NAME.json as A1111's user-metadata editor writes it. */
static int put_a1111_json(export_result *r, const export_args *a, const cJSON *style,
                          const char *name, double weight)
{
    cJSON *j = cJSON_CreateObject();
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(style, "adapters"), 0);
    char *text, *path = path_in(a->dir, name, ".json");
    int err = MOOD_ENOMEM;
    cJSON_AddStringToObject(j, "description", str_or_empty(style, "description"));
    cJSON_AddStringToObject(j, "sd version", sd_version(str_or_empty(first, "family")));
    cJSON_AddStringToObject(j, "activation text", str_or_empty(style, "trigger_words"));
    cJSON_AddNumberToObject(j, "preferred weight", weight); /* 0: A1111's default */
    cJSON_AddStringToObject(j, "negative text", str_or_empty(style, "negative"));
    cJSON_AddStringToObject(j, "notes", str_or_empty(style, "notes"));
    if ((text = cJSON_Print(j)) != NULL && path)
        err = put_file(r, a, path, text, strlen(text));
    cJSON_free(text);
    cJSON_Delete(j);
    free(path);
    return err;
}

/* The first stored preview as NAME.preview.EXT, EXT as its content is. */
static int put_preview(export_result *r, const export_args *a, const cJSON *style, const char *name)
{
    static const char *const types[][2] = {{"image/png", ".preview.png"},
                                           {"image/jpeg", ".preview.jpg"},
                                           {"image/webp", ".preview.webp"},
                                           {"image/gif", ".preview.gif"}};
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(style, "previews"))
    {
        const char *type = str_or_empty(p, "media_type"), *src = str_or_empty(p, "path");
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
            mood_map m = {0};
            char *path;
            int err;
            if (strcmp(type, types[i][0]) != 0 || !*src)
                continue;
            if ((err = mood_map_file(&m, src)) != 0)
                return err;
            path = path_in(a->dir, name, types[i][1]);
            err = path ? put_file(r, a, path, m.data, m.size) : mood_error_nomem();
            mood_unmap(&m);
            free(path);
            return err;
        }
    }
    return 0;
}

/* The Civitai record of the exported file (Civitai Helper's sidecar). */
static int put_civitai_info(export_result *r, const export_args *a, const cJSON *adapter,
                            const char *name)
{
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(adapter, "sources"))
    {
        /* the record as it came: Civitai's own (a link, a .civitai.info), or another manager's
         * sidecar kept raw: Lora Manager's holds Civitai's under "civitai", StabilityMatrix's is
         * its own shape and goes back under its own name */
        const cJSON *info = cJSON_GetObjectItemCaseSensitive(s, "civitai_info");
        const cJSON *lm = cJSON_GetObjectItemCaseSensitive(info, "civitai");
        int sm = cJSON_GetObjectItemCaseSensitive(info, "ModelId") != NULL;
        char *text, *path;
        int err;
        if (cJSON_IsObject(lm))
            info = lm;
        if (!cJSON_IsObject(info))
            continue;
        text = cJSON_Print(info);
        path = path_in(a->dir, name, sm ? ".cm-info.json" : ".civitai.info");
        err = text && path ? put_file(r, a, path, text, strlen(text)) : mood_error_nomem();
        cJSON_free(text);
        free(path);
        return err;
    }
    return 0;
}

/* The style's one LoRA as stored, when it can go as it is. */
static const cJSON *single_adapter(const cJSON *style)
{
    const cJSON *ads = cJSON_GetObjectItemCaseSensitive(style, "adapters");
    const cJSON *ad = cJSON_GetArrayItem(ads, 0);
    if (cJSON_GetArraySize(ads) != 1 || num_or(ad, "unet", 1) != num_or(ad, "te", 1))
        return NULL;
    return ad;
}

/* The stored LoRA to lora_path, unless the same bytes are there (kept as they are). */
static int copy_lora(export_result *r, const export_args *a, const cJSON *ad, const char *path)
{
    mood_map m = {0};
    int err;
    if (taken(path) && !a->force) {
        mood_file_hashes h;
        if (mood_hash_file_ex(&h, path, MOOD_HASH_SKIP_CRC32, NULL, NULL) == 0 &&
            strcasecmp(h.sha256, str_or_empty(ad, "sha256")) == 0)
            return 0; /* the same LoRA: nothing to write */
        mood_error_clear();
        return mood_error_set(MOOD_EINVAL,
                              "%s is there and is another file (--force replaces it, or export "
                              "into another folder)",
                              path);
    }
    if ((err = mood_map_file(&m, str_or_empty(ad, "path"))) != 0) {
        mood_error_prefix("the stored LoRA of this style ('mood doctor' checks the registry)");
        return err;
    }
    err = put_file(r, a, path, m.data, m.size);
    mood_unmap(&m);
    return err;
}

/* The stack's error, said of the style: its LoRAs by their file names (the library names the
 * registry's blobs, whose names are hashes). */
static int why_not_stacked(int err, const cJSON *ads)
{
    mood_buf b;
    const cJSON *ad;
    const char *msg = mood_error_last();
    mood_buf_init(&b);
    while (*msg) {
        size_t skip = 0;
        cJSON_ArrayForEach(ad, ads)
        {
            const char *blob = str_or_empty(ad, "path");
            if (!skip && *blob && strncmp(msg, blob, strlen(blob)) == 0) {
                mood_buf_puts(&b, str_or_empty(ad, "file_name"));
                skip = strlen(blob);
            }
        }
        if (!skip)
            mood_buf_append(&b, msg, (skip = 1));
        msg += skip;
    }
    mood_error_set(err,
                   "its LoRAs cannot be combined into the one file an A1111 <lora:> tag "
                   "names: %s",
                   b.data ? b.data : "");
    mood_buf_dispose(&b);
    return err;
}

/* AutoV3 (the tensors' bytes, not the metadata) of the file at path; "" when it cannot be read. */
static void tensors_hash(char out[65], const char *path)
{
    mood_file_hashes h;
    out[0] = '\0';
    if (mood_hash_file_ex(&h, path, MOOD_HASH_SKIP_CRC32, NULL, NULL) == 0 && h.is_safetensors)
        snprintf(out, 65, "%s", h.autov3);
    mood_error_clear();
}

/* One LoRA applying all of the style's LoRAs at their multipliers (mood_lora_stack), written
 * beside path first: a file there with the same tensors is an earlier export of the same style
 * (only the time in its metadata differs) and is left as it is; another is replaced only with
 * --force. */
static int stack_loras(export_result *r, const export_args *a, const cJSON *style, const char *path)
{
    const cJSON *ads = cJSON_GetObjectItemCaseSensitive(style, "adapters"), *ad;
    size_t n = (size_t)cJSON_GetArraySize(ads), k = 0;
    mood_weighted_adapter *in = calloc(n ? n : 1, sizeof *in);
    size_t tmp_size = strlen(path) + 16;
    char *tmp = malloc(tmp_size), old_hash[65], new_hash[65];
    mood_lora_write_options o;
    mood_dtype dtype = MOOD_DTYPE_F32, d;
    int err = 0, existed = taken(path);
    if (!in || !tmp) {
        free(in);
        free(tmp);
        return mood_error_nomem();
    }
    snprintf(tmp, tmp_size, "%s.export-part", path);
    cJSON_ArrayForEach(ad, ads)
    {
        in[k++] = (mood_weighted_adapter){.path = str_or_empty(ad, "path"),
                                          .name = str_or_empty(ad, "file_name"),
                                          .unet = num_or(ad, "unet", 1),
                                          .te = num_or(ad, "te", 1)};
        /* the inputs' precision when they all have one (a half-precision file stays half) */
        if (cli_parse_dtype(&d, str_or_empty(ad, "dtype")) != 0 || (k > 1 && d != dtype))
            d = MOOD_DTYPE_F32;
        if (k == 1 || d != dtype)
            dtype = d;
    }
    mood_lora_write_options_init(&o);
    o.output = tmp;
    o.dtype = dtype;
    o.progress = a->json ? NULL : cli_progress;
    cli_signal_unlink_set(tmp);
    err = mood_lora_stack(in, n, &o);
    cli_progress_done();
    free(in);
    if (err) {
        err = why_not_stacked(err, ads);
    } else if (existed) {
        tensors_hash(old_hash, path);
        tensors_hash(new_hash, tmp);
        if (*old_hash && strcmp(old_hash, new_hash) == 0)
            existed = -1; /* the same LoRA: kept */
        else if (!a->force)
            err = mood_error_set(MOOD_EINVAL,
                                 "%s is there and is another file (--force replaces it, or "
                                 "export into another folder)",
                                 path);
    }
    if (!err && existed != -1 && ((err = unlink_if_link(a, path)) != 0 || rename(tmp, path) != 0))
        err = err ? err : mood_error_set(MOOD_EIO, "%s: %s", path, strerror(errno));
    else if (!err && existed != -1)
        note_written(r, path, existed);
    unlink(tmp); /* gone when renamed */
    cli_signal_unlink_set(NULL);
    free(tmp);
    return err;
}

/* Exports one style; r says what was written. */
static int export_one(export_result *r, const export_args *a, mood_registry *reg, const char *name)
{
    char *json = NULL, *lora = path_in(a->dir, name, ".safetensors");
    cJSON *style = NULL;
    const cJSON *single;
    mood_file_hashes h;
    double weight;
    int err;
    if (!lora)
        return mood_error_nomem();
    if ((err = mood_registry_show_json(&json, reg, name)) != 0 || !(style = cJSON_Parse(json))) {
        err = err ? err : mood_error_nomem();
        goto done;
    }
    name = str_or_empty(style, "name");
    if (!(r->name = strdup(name))) {
        err = mood_error_nomem();
        goto done;
    }
    free(lora);
    if (!(lora = path_in(a->dir, name, ".safetensors"))) {
        err = mood_error_nomem();
        goto done;
    }
    weight = num_or(style, "weight", 1);
    if ((single = single_adapter(style)) != NULL) {
        weight *= num_or(single, "unet", 1);
        err = copy_lora(r, a, single, lora);
    } else {
        r->combined = 1;
        err = stack_loras(r, a, style, lora);
    }
    if (weight == 1 && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(style, "weight")))
        weight = 0; /* A1111's "use the default": the style has no weight of its own */
    if (!err && (err = mood_hash_file_ex(&h, lora, MOOD_HASH_SKIP_CRC32, NULL, NULL)) == 0) {
        r->lora = lora;
        lora = NULL;
        r->sha256 = strdup(h.sha256);
    }
    if (!err)
        err = put_a1111_json(r, a, style, name, weight);
    if (!err)
        err = put_preview(r, a, style, name);
    if (!err && single)
        err = put_civitai_info(r, a, single, name);
    if (!err && *str_or_empty(style, "template"))
        cli_warn("style '%s': its prompt template is not exported (A1111 and ComfyUI keep none "
                 "with a LoRA)",
                 name);
done:
    cJSON_Delete(style);
    mood_registry_free_string(json);
    free(lora);
    return err;
}

static void print_result(const export_result *r)
{
    const cJSON *k;
    printf("%s -> %s%s\n", r->name, r->lora, r->combined ? " (its LoRAs combined into one)" : "");
    cJSON_ArrayForEach(k, r->kept)
    {
        cli_warn("%s is there already and was kept (--force replaces it)", k->valuestring);
    }
}

static cJSON *result_json(export_result *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", r->name);
    cJSON_AddStringToObject(o, "lora", r->lora);
    cJSON_AddStringToObject(o, "sha256", r->sha256 ? r->sha256 : "");
    cJSON_AddBoolToObject(o, "combined", r->combined);
    cJSON_AddItemToObject(o, "written", r->written);
    cJSON_AddItemToObject(o, "kept", r->kept);
    r->written = r->kept = NULL;
    return o;
}

static void result_dispose(export_result *r)
{
    free(r->name);
    free(r->lora);
    free(r->sha256);
    cJSON_Delete(r->written);
    cJSON_Delete(r->kept);
    cJSON_Delete(r->created);
    memset(r, 0, sizeof *r);
}

int cmd_style_export(int argc, char **argv)
{
    export_args a = {0};
    mood_registry *reg = NULL;
    cJSON *out = cJSON_CreateObject(), *exported = cJSON_AddArrayToObject(out, "exported"),
          *failed = cJSON_AddArrayToObject(out, "failed");
    int rc = parse_args(&a, argc, argv), started_bad, made = 0;
    if (!rc)
        rc = cli_registry_open(&reg);
    /* every name first: a mistyped one among several exports none */
    for (size_t i = 0; !rc && i < a.n; i++) {
        char *shown = NULL;
        int err = mood_registry_show_json(&shown, reg, a.names[i]);
        if (err) {
            char note[1200];
            snprintf(note, sizeof note, "nothing exported: %s", mood_error_last());
            cli_json_error_note(note);
            fprintf(stderr, "mood: error: %s\n", note);
            rc = err == MOOD_ENOTFOUND || mood_error_is_user(err) ? 1 : 2;
        }
        mood_registry_free_string(shown);
    }
    if (!rc)
        rc = prepare_dir(a.dir, &made);
    started_bad = rc;
    /* a style that fails does not stop the others; the exit status is the worst one's */
    for (size_t i = 0; !started_bad && i < a.n; i++) {
        export_result r = {.written = cJSON_CreateArray(),
                           .kept = cJSON_CreateArray(),
                           .created = cJSON_CreateArray()};
        int err = export_one(&r, &a, reg, a.names[i]);
        if (err) {
            cJSON *f = cJSON_CreateObject(), *c;
            cJSON_ArrayForEach(c, r.created)
            {
                unlink(c->valuestring);
            }
            cJSON_AddStringToObject(f, "name", a.names[i]);
            cJSON_AddStringToObject(f, "error", mood_error_last());
            cJSON_AddItemToArray(failed, f);
            if (!a.json)
                fprintf(stderr, "mood: error: style '%s' not exported: %s\n", a.names[i],
                        mood_error_last());
            if (rc != 2)
                rc = mood_error_is_user(err) ? 1 : 2;
        } else if (a.json) {
            cJSON_AddItemToArray(exported, result_json(&r));
        } else {
            print_result(&r);
        }
        result_dispose(&r);
    }
    if (made)
        rmdir(a.dir); /* a folder made for nothing goes again (it stays when not empty) */
    if (a.json && !started_bad)
        cli_print_json(out);
    else
        cJSON_Delete(out);
    mood_registry_close(reg);
    free(a.names);
    return rc;
}
