/*
 * pack.c: style pack export and import (include/mood/pack.h) on top of the registry's public API
 * (show_json for reading a style) and registry/pack_store.h (one all-or-nothing store step).
 *
 * Archive layout: manifest.json, adapters/<sha256>.safetensors (embedded adapters),
 * previews/<sha256>.<ext>, board/<name> (mood board thumbnails). Archive names are derived from
 * hashes, never from user-supplied file names, so two adapters called "style.safetensors" never
 * collide; the original name travels in the manifest as file_name.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/args.h"
#include "common/common.h"
#include "common/image_decode.h"
#include "mood/hash.h"
#include "mood/lora.h"
#include "mood/pack.h"
#include "registry/pack_store.h"
#include "styles/pack_archive.h"

void mood_pack_export_options_init(mood_pack_export_options *o)
{
    memset(o, 0, sizeof *o);
}

void mood_pack_import_options_init(mood_pack_import_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_total = MOOD__PACK_DEFAULT_TOTAL;
    o->max_entry = MOOD__PACK_DEFAULT_ENTRY;
}

static const cJSON *get(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *get_str(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(get(o, key));
}

/* ----- export ----------------------------------------------------------------------------------
 */

typedef struct exporter {
    mood_registry *r;
    const mood_pack_export_options *o;
    cJSON *manifest, *styles, *adapters, *board;
    mood__pack_src *src;
    size_t n_src;
    char **owned; /* strings the src entries point to */
    size_t n_owned;
} exporter;

static int own(exporter *x, char *s)
{
    char **p;
    if (!s)
        return mood_error_nomem();
    if (!(p = mood_realloc(x->owned, (x->n_owned + 1) * sizeof *p))) {
        mood_free(s);
        return mood_error_nomem();
    }
    x->owned = p;
    x->owned[x->n_owned++] = s;
    return 0;
}

/* Adds an archive entry from the blob at path (once per archive name). */
/* The SHA-256 a pack file named "DIR/SHA256.EXT" (a registry blob) holds (malloc'd). */
static char *blob_sha(const char *name)
{
    const char *slash = strrchr(name, '/');
    return mood_strndup(slash ? slash + 1 : name, 64);
}

static int add_src(exporter *x, const char *name, const char *path)
{
    mood__pack_src *p;
    int err;
    for (size_t i = 0; i < x->n_src; i++) {
        if (strcmp(x->src[i].name, name) == 0)
            return 0;
    }
    if (!path || !mood_path_exists(path))
        return mood_error_set(MOOD_EIO,
                              "the stored file for %s is missing from the registry (run 'mood "
                              "doctor')",
                              name);
    if (!(p = mood_realloc(x->src, (x->n_src + 1) * sizeof *p)))
        return mood_error_nomem();
    x->src = p;
    memset(&x->src[x->n_src], 0, sizeof *p);
    if ((err = own(x, mood_strdup(name))) != 0 || (err = own(x, mood_strdup(path))) != 0 ||
        (err = own(x, blob_sha(name))) != 0)
        return err;
    x->src[x->n_src].name = x->owned[x->n_owned - 3];
    x->src[x->n_src].path = x->owned[x->n_owned - 2];
    x->src[x->n_src].sha256 = x->owned[x->n_owned - 1];
    x->n_src++;
    return 0;
}

static void copy_field(cJSON *to, const char *to_key, const cJSON *from, const char *key)
{
    const cJSON *v = get(from, key);
    if (v && !cJSON_IsNull(v))
        cJSON_AddItemToObject(to, to_key, cJSON_Duplicate(v, 1));
}

/* AIR and licence: the first source that has one. */
static void add_provenance(cJSON *entry, const cJSON *adapter)
{
    const char *keys[2][2] = {{"air", "air"}, {"license", "license"}};
    for (int k = 0; k < 2; k++) {
        const cJSON *s;
        cJSON_ArrayForEach(s, get(adapter, "sources"))
        {
            if (get_str(s, keys[k][0])) {
                cJSON_AddStringToObject(entry, keys[k][1], get_str(s, keys[k][0]));
                break;
            }
        }
    }
}

/* The Civitai record of the adapter (the newest source that has one), so that a pack imported
 * elsewhere still links its styles to Civitai (update-check, show). */
static void add_civitai(cJSON *entry, const cJSON *adapter)
{
    static const char *const keys[][2] = {
        {"model_id", "model_id"},     {"version_id", "version_id"},
        {"model_name", "model_name"}, {"version_name", "version_name"},
        {"base_model", "base_model"}, {"nsfw_level", "nsfw_level"}};
    const cJSON *s, *found = NULL;
    cJSON *c;
    cJSON_ArrayForEach(s, get(adapter, "sources"))
    {
        if (cJSON_IsNumber(get(s, "version_id")))
            found = s;
    }
    if (!found)
        return;
    c = cJSON_AddObjectToObject(entry, "civitai");
    for (size_t k = 0; c && k < sizeof keys / sizeof keys[0]; k++)
        copy_field(c, keys[k][1], found, keys[k][0]);
    if (c && cJSON_IsNumber(get(found, "nsfw"))) /* stored as 0/1 */
        cJSON_AddBoolToObject(c, "nsfw", get(found, "nsfw")->valuedouble != 0);
    /* what the author allows (allowDerivatives...): the next pack made of it warns as this did */
    if (c && cJSON_IsObject(get(found, "permissions")))
        copy_field(c, "permissions", found, "permissions");
}

/* A LoRA whose Civitai permissions forbid derivatives (the closest flag Civitai has to "may be
 * shared") is embedded as asked, with a warning: ecosystem.md §3.6 embeds third-party weights
 * only when their licence clearly allows it, and a reference-only pack names them instead. */
static void warn_if_not_shareable(const cJSON *adapter)
{
    const cJSON *s;
    cJSON_ArrayForEach(s, get(adapter, "sources"))
    {
        const cJSON *d = get(get(s, "permissions"), "allowDerivatives");
        if (cJSON_IsBool(d) && !cJSON_IsTrue(d)) {
            mood_log(MOOD_LOG_WARN,
                     "%s: its Civitai licence does not allow derivatives (%s): sharing the file "
                     "itself may not be allowed; --reference-only names it by hash and AIR instead",
                     get_str(adapter, "file_name") ? get_str(adapter, "file_name") : "a LoRA",
                     get_str(s, "license") ? get_str(s, "license") : "its permissions");
            return;
        }
    }
}

static int export_adapter(exporter *x, const cJSON *a)
{
    const char *sha = get_str(a, "sha256");
    char file[128];
    cJSON *e, *it;
    if (!sha || !mood__pack_hex_ok(sha))
        return mood_error_set(MOOD_EFORMAT, "registry: adapter without a valid SHA-256");
    cJSON_ArrayForEach(it, x->adapters)
    {
        if (strcmp(get_str(it, "sha256"), sha) == 0)
            return 0;
    }
    e = cJSON_CreateObject();
    cJSON_AddItemToArray(x->adapters, e);
    cJSON_AddStringToObject(e, "sha256", sha);
    cJSON_AddStringToObject(
        e, "file_name", get_str(a, "file_name") ? get_str(a, "file_name") : "adapter.safetensors");
    copy_field(e, "size", a, "size");
    cJSON_AddStringToObject(e, "family", get_str(a, "family") ? get_str(a, "family") : "unknown");
    copy_field(e, "family_source", a, "family_source");
    copy_field(e, "algorithm", a, "algorithm");
    copy_field(e, "rank", a, "rank");
    copy_field(e, "alpha", a, "alpha");
    copy_field(e, "dtype", a, "dtype");
    copy_field(e, "modules", a, "modules");
    copy_field(e, "autov3", a, "autov3");
    /* show_json names stored JSON columns without their _json suffix */
    copy_field(e, "trigger_words", a,
               get(a, "training_tags") ? "training_tags" : "trigger_words_json");
    /* no "metadata": an embedded LoRA's file holds it, a referenced one's row in the importer's
     * registry (import needs it there), and a kohya ss_tag_frequency of megabytes per LoRA made
     * manifests past the importer's limit */
    add_provenance(e, a);
    add_civitai(e, a);
    if (!x->o->reference_only)
        warn_if_not_shareable(a);
    if (!get(e, "size"))
        return mood_error_set(MOOD_EFORMAT, "registry: adapter %s has no size", sha);
    cJSON_AddBoolToObject(e, "embedded", !x->o->reference_only);
    if (x->o->reference_only)
        return 0;
    snprintf(file, sizeof file, "adapters/%s.safetensors", sha);
    cJSON_AddStringToObject(e, "file", file);
    return add_src(x, file, get_str(a, "path"));
}

static const char *extension(const char *media_type)
{
    if (media_type && strcmp(media_type, "image/jpeg") == 0)
        return "jpg";
    if (media_type && strcmp(media_type, "image/webp") == 0)
        return "webp";
    if (media_type && strcmp(media_type, "image/png") == 0)
        return "png";
    return "bin";
}

/* "a, b,c" -> ["a", "b", "c"] */
static cJSON *split_words(const char *s)
{
    cJSON *arr = cJSON_CreateArray();
    while (s && *s) {
        size_t n = strcspn(s, ","), b = 0, e = n;
        while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\n'))
            b++;
        while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\n'))
            e--;
        if (e > b) {
            char *w = mood_strndup(s + b, e - b);
            if (w)
                cJSON_AddItemToArray(arr, cJSON_CreateString(w));
            mood_free(w);
        }
        s += n + (s[n] == ',');
    }
    return arr;
}

static int export_previews(exporter *x, cJSON *style, const cJSON *shown)
{
    cJSON *arr = cJSON_AddArrayToObject(style, "previews");
    const cJSON *p;
    int err = 0;
    cJSON_ArrayForEach(p, get(shown, "previews"))
    {
        const char *sha = get_str(p, "sha256"), *type = get_str(p, "media_type");
        char file[128];
        cJSON *e;
        if (!sha || !mood__pack_hex_ok(sha))
            continue;
        snprintf(file, sizeof file, "previews/%s.%s", sha, extension(type));
        e = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, e);
        cJSON_AddStringToObject(e, "sha256", sha);
        cJSON_AddStringToObject(e, "file", file);
        if (type)
            cJSON_AddStringToObject(e, "media_type", type);
        copy_field(e, "nsfw_level", p, "nsfw_level");
        if ((err = add_src(x, file, get_str(p, "path"))) != 0)
            break;
    }
    return err;
}

/* The style's mood board thumbnails, in the manifest's board list with the style's name. */
static int export_board(exporter *x, const char *style, const cJSON *shown)
{
    const cJSON *p;
    int err = 0;
    cJSON_ArrayForEach(p, get(shown, "board"))
    {
        const char *sha = get_str(p, "sha256"), *type = get_str(p, "media_type");
        char file[128];
        cJSON *e;
        if (!sha || !mood__pack_hex_ok(sha))
            continue;
        snprintf(file, sizeof file, "board/%s.%s", sha, extension(type));
        e = cJSON_CreateObject();
        cJSON_AddItemToArray(x->board, e);
        cJSON_AddStringToObject(e, "sha256", sha);
        cJSON_AddStringToObject(e, "file", file);
        if (type)
            cJSON_AddStringToObject(e, "media_type", type);
        cJSON_AddStringToObject(e, "style", style);
        if (get_str(p, "name")) /* a file name only: no local folders in a shared pack */
            cJSON_AddStringToObject(e, "name", mood_path_basename(get_str(p, "name")));
        copy_field(e, "width", p, "width");
        copy_field(e, "height", p, "height");
        if ((err = add_src(x, file, get_str(p, "path"))) != 0)
            break;
    }
    return err;
}

static int export_style(exporter *x, const char *name)
{
    static const char *const texts[] = {"description", "notes", "template", "negative"};
    char *text = NULL;
    cJSON *shown = NULL, *s, *loras;
    const cJSON *a;
    int err;
    if ((err = mood_registry_show_json(&text, x->r, name)) != 0)
        return err;
    if (!(shown = cJSON_Parse(text))) {
        err = mood_error_nomem();
        goto done;
    }
    s = cJSON_CreateObject();
    cJSON_AddItemToArray(x->styles, s);
    cJSON_AddStringToObject(s, "name", get_str(shown, "name") ? get_str(shown, "name") : name);
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        copy_field(s, texts[i], shown, texts[i]);
    copy_field(s, "weight", shown, "weight");
    cJSON_AddItemToObject(s, "trigger_words", split_words(get_str(shown, "trigger_words")));
    cJSON_AddItemToObject(s, "tags", cJSON_Duplicate(get(shown, "tags"), 1));
    loras = cJSON_AddArrayToObject(s, "adapters");
    cJSON_ArrayForEach(a, get(shown, "adapters"))
    {
        cJSON *l = cJSON_CreateObject();
        cJSON_AddItemToArray(loras, l);
        cJSON_AddStringToObject(l, "sha256", get_str(a, "sha256") ? get_str(a, "sha256") : "");
        copy_field(l, "unet", a, "unet");
        copy_field(l, "te", a, "te");
        if ((err = export_adapter(x, a)) != 0)
            goto done;
    }
    if ((err = export_previews(x, s, shown)) == 0)
        err = export_board(x, get_str(s, "name"), shown);
done:
    cJSON_Delete(shown);
    mood_registry_free_string(text);
    return err;
}

static int build_manifest(exporter *x, const char *const *names, size_t n)
{
    char created_by[64];
    int err = 0;
    snprintf(created_by, sizeof created_by, "mood %s", mood_version());
    x->manifest = cJSON_CreateObject();
    cJSON_AddNumberToObject(x->manifest, "schema_version", MOOD__PACK_SCHEMA);
    cJSON_AddStringToObject(x->manifest, "created_by", created_by);
    if (x->o->license)
        cJSON_AddStringToObject(x->manifest, "license", x->o->license);
    if (x->o->attribution)
        cJSON_AddStringToObject(x->manifest, "attribution", x->o->attribution);
    x->styles = cJSON_AddArrayToObject(x->manifest, "styles");
    x->adapters = cJSON_AddArrayToObject(x->manifest, "adapters");
    x->board = cJSON_AddArrayToObject(x->manifest, "board");
    if (!x->styles || !x->adapters || !x->board)
        return mood_error_nomem();
    for (size_t i = 0; i < n && !err; i++) {
        const cJSON *s;
        cJSON_ArrayForEach(s, x->styles)
        {
            if (strcasecmp(get_str(s, "name"), names[i]) == 0)
                break;
        }
        if (!s) /* the same style named twice goes in once */
            err = export_style(x, names[i]);
    }
    return err;
}

int mood_pack_export(mood_registry *r, const char *const *names, size_t n, const char *path,
                     const mood_pack_export_options *o)
{
    mood_pack_export_options defaults;
    exporter x;
    char *text = NULL;
    mood__pack_manifest check;
    int err;
    memset(&x, 0, sizeof x);
    if (!o) {
        mood_pack_export_options_init(&defaults);
        o = &defaults;
    }
    if (!r || !path || (n && !names))
        return mood_error_set(MOOD_EINVAL, "mood_pack_export: missing argument");
    if (n == 0)
        return mood_error_set(MOOD_EINVAL, "a pack needs at least one style");
    x.r = r;
    x.o = o;
    if ((err = build_manifest(&x, names, n)) != 0)
        goto done;
    if (!(text = cJSON_Print(x.manifest))) {
        err = mood_error_nomem();
        goto done;
    }
    /* what we write must be what an importer accepts */
    if ((err = mood__pack_manifest_parse(&check, text, strlen(text))) != 0) {
        mood_error_prefix("cannot export");
        goto done;
    }
    mood__pack_manifest_dispose(&check);
    {
        mood__pack_src *p = mood_realloc(x.src, (x.n_src + 1) * sizeof *p);
        if (!p) {
            err = mood_error_nomem();
            goto done;
        }
        x.src = p;
        x.src[x.n_src++] = (mood__pack_src){MOOD__PACK_MANIFEST, NULL, text, strlen(text), NULL};
    }
    err = mood__pack_write(path, x.src, x.n_src, o->progress, o->payload);
    if (err == MOOD_ENOTFOUND) { /* a stored file the registry listed a moment ago: removed
                                    since (a 'mood rm' at the same time), not the user's input */
        char *why = mood_strdup(mood_error_last());
        err = mood_error_set(MOOD_EIO,
                             "%s (a stored file of the styles is gone: removed while the pack "
                             "was written? nothing was written; 'mood doctor' checks the registry)",
                             why ? why : "a stored file cannot be opened");
        mood_free(why);
    }
done:
    cJSON_free(text);
    cJSON_Delete(x.manifest);
    for (size_t i = 0; i < x.n_owned; i++)
        mood_free(x.owned[i]);
    mood_free(x.owned);
    mood_free(x.src);
    return err;
}

/* ----- import ----------------------------------------------------------------------------------
 */

typedef struct importer {
    mood__pack_extract ex;
    mood__pack_adapter_row *adapters;
    size_t n_adapters;
    mood__pack_style_row *styles;
    size_t n_styles;
    void **owned;
    size_t n_owned;
    int previews;
} importer;

/* Keeps a heap block until the import ends; NULL (and s freed) when out of memory. */
static void *own_ptr(importer *m, void *s)
{
    void **p;
    if (!s)
        return NULL;
    if (!(p = mood_realloc(m->owned, (m->n_owned + 1) * sizeof *p))) {
        mood_free(s);
        return NULL;
    }
    m->owned = p;
    m->owned[m->n_owned++] = s;
    return s;
}

static const char *own_str(importer *m, char *s)
{
    return own_ptr(m, s);
}

/* A JSON value as text owned by the importer (NULL when absent). */
static int own_json(importer *m, const char **out, const cJSON *v)
{
    char *t, *copy;
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!(t = cJSON_PrintUnformatted(v)))
        return mood_error_nomem();
    copy = mood_strdup(t);
    cJSON_free(t);
    if (!(*out = own_str(m, copy)))
        return mood_error_nomem();
    return 0;
}

static const char *extracted(const importer *m, const char *file)
{
    for (size_t i = 0; file && i < m->ex.manifest.n_files; i++) {
        if (strcmp(m->ex.manifest.files[i].name, file) == 0)
            return m->ex.paths[i];
    }
    return NULL;
}

static int num(const cJSON *o, const char *key, double *out)
{
    const cJSON *v = get(o, key);
    if (!cJSON_IsNumber(v))
        return 0;
    *out = v->valuedouble;
    return 1;
}

/* An embedded adapter must be what the manifest says: a LoRA mood can read, of the declared base
 * family (the hash only proves the file is the one the packer meant, not what it is). */
static int check_adapter_file(const mood__pack_adapter_row *row)
{
    mood_adapter *a = NULL;
    const char *family;
    int err = mood_adapter_open(&a, row->path, NULL);
    if (err) {
        mood_error_prefix("adapter %s (%s) in the pack", row->file_name, row->sha256);
        return err == MOOD_ENOMEM ? err : MOOD_EFORMAT;
    }
    family = mood_family_name(mood_adapter_family(a));
    if (mood_adapter_module_count(a) == 0)
        err = mood_error_set(MOOD_EFORMAT, "adapter %s (%s) in the pack: no LoRA modules found",
                             row->file_name, row->sha256);
    else if (strcmp(family, row->family) != 0)
        err = mood_error_set(MOOD_EFORMAT,
                             "adapter %s (%s) in the pack: manifest.json says base family '%s', "
                             "the file is '%s'",
                             row->file_name, row->sha256, row->family, family);
    mood_adapter_close(a);
    return err;
}

/* What an embedded LoRA's file says of itself wins over the manifest: its AutoV3 (which the
 * images made with it name, and Civitai finds it by) and a plain file name (no folders). */
static int file_facts(importer *m, mood__pack_adapter_row *row)
{
    mood_file_hashes h;
    const char *base = row->file_name ? mood_path_basename(row->file_name) : NULL;
    int err = mood_hash_file_ex(&h, row->path, MOOD_HASH_SKIP_CRC32, NULL, NULL);
    if (err)
        return err;
    if (h.is_safetensors && !(row->autov3 = own_str(m, mood_strdup(h.autov3))))
        return mood_error_nomem();
    if (base && (!*base || *base == '.'))
        base = NULL;
    row->file_name = base ? base : "adapter.safetensors";
    return 0;
}

/* A whole number in [1, 9e15] from the manifest (validated there), else 0. */
static long long id_of(const cJSON *o, const char *key)
{
    double v = 0;
    return num(o, key, &v) && v >= 1 && v <= 9.0e15 ? (long long)v : 0;
}

/* Model and version ids from an AIR "urn:air:FAMILY:TYPE:civitai:MODEL@VERSION" (packs made
 * before the manifest carried the Civitai record still link their adapters to Civitai). */
static void ids_from_air(mood__pack_adapter_row *row)
{
    const char *p = row->air ? strstr(row->air, ":civitai:") : NULL;
    char *end;
    long long model, version;
    if (!p || strncmp(row->air, "urn:air:", 8) != 0)
        return;
    p += strlen(":civitai:");
    if (*p < '0' || *p > '9')
        return;
    model = strtoll(p, &end, 10);
    if (*end != '@' || end[1] < '0' || end[1] > '9')
        return;
    version = strtoll(end + 1, &end, 10);
    if (*end != '\0' && *end != '.') /* a ".format" may follow the version */
        return;
    if (model > 0 && version > 0) {
        row->civitai_model_id = model;
        row->civitai_version_id = version;
    }
}

/* The adapter's Civitai record from the manifest; the AIR's ids when it has none. */
static void civitai_row(mood__pack_adapter_row *row, const cJSON *a)
{
    const cJSON *c = get(a, "civitai");
    double v = 0;
    row->nsfw = row->nsfw_level = -1;
    if (!cJSON_IsObject(c) || !id_of(c, "version_id")) {
        ids_from_air(row);
        return;
    }
    row->civitai_model_id = id_of(c, "model_id");
    row->civitai_version_id = id_of(c, "version_id");
    row->model_name = get_str(c, "model_name");
    row->version_name = get_str(c, "version_name");
    row->base_model = get_str(c, "base_model");
    if (cJSON_IsBool(get(c, "nsfw")))
        row->nsfw = cJSON_IsTrue(get(c, "nsfw"));
    if (num(c, "nsfw_level", &v) && v <= 1e6)
        row->nsfw_level = (int)v;
}

/* The licence a LoRA without one of its own is shared under: the pack's, with its credits, so
 * that show says it and a pack made from this registry carries it on. NULL when the pack has
 * neither. */
static int pack_license(importer *m, const char **out)
{
    const char *lic = get_str(m->ex.manifest.json, "license"),
               *credits = get_str(m->ex.manifest.json, "attribution");
    mood_buf b;
    *out = NULL;
    if (!lic && !credits)
        return 0;
    mood_buf_init(&b);
    if (mood_buf_printf(&b, "%s (the pack's licence)%s%s", lic ? lic : "not given",
                        credits ? "; credits: " : "", credits ? credits : "") != 0 ||
        !(*out = own_str(m, mood_buf_detach(&b)))) {
        mood_buf_dispose(&b);
        return mood_error_nomem();
    }
    return 0;
}

static int adapter_rows(importer *m)
{
    const char *from_pack = NULL;
    const cJSON *arr = get(m->ex.manifest.json, "adapters"), *a;
    size_t i = 0;
    int err = 0;
    m->n_adapters = (size_t)cJSON_GetArraySize(arr);
    if (!(m->adapters = mood_calloc(m->n_adapters + 1, sizeof *m->adapters)))
        return mood_error_nomem();
    if ((err = pack_license(m, &from_pack)) != 0)
        return err;
    cJSON_ArrayForEach(a, arr)
    {
        mood__pack_adapter_row *row = &m->adapters[i++];
        double v = 0;
        row->sha256 = get_str(a, "sha256");
        row->path = cJSON_IsTrue(get(a, "embedded")) ? extracted(m, get_str(a, "file")) : NULL;
        row->file_name = get_str(a, "file_name");
        row->family = get_str(a, "family");
        row->family_source = get_str(a, "family_source");
        row->algorithm = get_str(a, "algorithm");
        row->dtype = get_str(a, "dtype");
        row->autov3 = get_str(a, "autov3");
        row->air = get_str(a, "air");
        row->license = get_str(a, "license") ? get_str(a, "license") : from_pack;
        civitai_row(row, a);
        num(a, "size", &v);
        row->size = (uint64_t)v;
        if ((row->has_rank = num(a, "rank", &v)) != 0)
            row->rank = (long long)v;
        if ((row->has_modules = num(a, "modules", &v)) != 0)
            row->modules = (long long)v;
        row->has_alpha = num(a, "alpha", &row->alpha);
        if ((err = own_json(m, &row->metadata_json, get(a, "metadata"))) != 0 ||
            (cJSON_IsObject(get(get(a, "civitai"), "permissions")) &&
             (err = own_json(m, &row->permissions_json, get(get(a, "civitai"), "permissions"))) !=
                 0) ||
            (err = own_json(m, &row->trigger_words_json, get(a, "trigger_words"))) != 0 ||
            (row->path && (err = check_adapter_file(row)) != 0) ||
            (row->path && (err = file_facts(m, row)) != 0))
            break;
    }
    return err;
}

/* Trigger words as the registry keeps them: "a, b, c". */
static int join_words(importer *m, const char **out, const cJSON *arr)
{
    mood_buf b;
    const cJSON *w;
    int err = 0;
    *out = NULL;
    mood_buf_init(&b);
    cJSON_ArrayForEach(w, arr)
    {
        if (!err && w->valuestring[0])
            err = mood_buf_printf(&b, "%s%s", b.len ? ", " : "", w->valuestring);
    }
    if (!err && b.len && !(*out = own_str(m, mood_buf_detach(&b))))
        err = mood_error_nomem();
    mood_buf_dispose(&b);
    return err;
}

/* A preview or mood board thumbnail of the pack is what `mood import` keeps of a LoRA's folder:
 * a PNG, JPEG or WebP image (by its content: a pack's media type is the pack's word) of at most
 * 64 MiB. Sets *media_type to the content's. */
static int check_image(const char *path, const char **media_type, const char *style,
                       const char *what, const char *sha256)
{
    mood_map map = {0};
    const char *type = NULL, *why = "an image larger than 64 MiB";
    int err = path ? mood_map_file(&map, path) : 0;
    if (err || !path)
        return err;
    if (map.size <= (64u << 20))
        type = mood__image_media_type(map.data, (size_t)map.size, &why);
    mood_unmap(&map);
    if (!type)
        return strcmp(why, "outofmem") == 0
                   ? mood_error_nomem()
                   : mood_error_set(MOOD_EFORMAT, "style '%s': %s %s in the pack is %s", style,
                                    what, sha256, why);
    *media_type = type;
    return 0;
}

/* The manifest's board entries of style `name` (entries without a style belong to the only
 * style of a one-style pack). */
static int board_rows(importer *m, mood__pack_style_row *row, const char *name)
{
    const cJSON *json = m->ex.manifest.json, *v;
    int single = cJSON_GetArraySize(get(json, "styles")) == 1;
    mood__pack_board_row *rows;
    size_t k = 0;
    int err;
    if (!(rows = own_ptr(
              m, mood_calloc((size_t)cJSON_GetArraySize(get(json, "board")) + 1, sizeof *rows))))
        return mood_error_nomem();
    cJSON_ArrayForEach(v, get(json, "board"))
    {
        const char *style = get_str(v, "style");
        double w = 0, h = 0;
        if (style ? strcasecmp(style, name) != 0 : !single)
            continue;
        num(v, "width", &w);
        num(v, "height", &h);
        rows[k] = (mood__pack_board_row){get_str(v, "sha256"),     extracted(m, get_str(v, "file")),
                                         get_str(v, "media_type"), get_str(v, "name"),
                                         w < 1e6 ? (int)w : 0,     h < 1e6 ? (int)h : 0};
        if ((err = check_image(rows[k].path, &rows[k].media_type, name, "mood board thumbnail",
                               rows[k].sha256)) != 0)
            return err;
        k++;
    }
    row->board = rows;
    row->n_board = k;
    return 0;
}

static int style_row(importer *m, mood__pack_style_row *row, const cJSON *s)
{
    const cJSON *arr, *v;
    size_t k;
    int err;
    mood_style_lora *loras;
    const char **tags;
    mood__pack_preview_row *previews;
    row->name = get_str(s, "name");
    row->description = get_str(s, "description");
    row->notes = get_str(s, "notes");
    row->template_text = get_str(s, "template");
    row->negative = get_str(s, "negative");
    row->has_weight = num(s, "weight", &row->weight);
    if ((err = join_words(m, &row->trigger_words, get(s, "trigger_words"))) != 0)
        return err;
    /* the arrays live in one owned block each */
    arr = get(s, "adapters");
    if (!(loras = own_ptr(m, mood_calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *loras))))
        return mood_error_nomem();
    k = 0;
    cJSON_ArrayForEach(v, arr)
    {
        loras[k++] = (mood_style_lora){get_str(v, "sha256"), get(v, "unet")->valuedouble,
                                       get(v, "te")->valuedouble};
    }
    row->loras = loras;
    row->n_loras = k;
    arr = get(s, "tags");
    if (!(tags = own_ptr(m, mood_calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *tags))))
        return mood_error_nomem();
    k = 0;
    cJSON_ArrayForEach(v, arr)
    {
        tags[k++] = v->valuestring;
    }
    row->tags = tags;
    row->n_tags = k;
    arr = get(s, "previews");
    if (!(previews =
              own_ptr(m, mood_calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *previews))))
        return mood_error_nomem();
    k = 0;
    cJSON_ArrayForEach(v, arr)
    {
        double level = -1;
        num(v, "nsfw_level", &level);
        previews[k] = (mood__pack_preview_row){
            get_str(v, "sha256"), extracted(m, get_str(v, "file")), get_str(v, "media_type"),
            level >= 0 && level <= 1e6 ? (int)level : -1};
        if ((err = check_image(previews[k].path, &previews[k].media_type, row->name, "preview",
                               previews[k].sha256)) != 0)
            return err;
        k++;
    }
    row->previews = previews;
    row->n_previews = k;
    m->previews += (int)k;
    return board_rows(m, row, row->name);
}

/* A LoRA that no style of the pack uses is not stored: nothing would show it (list, search),
 * nothing could remove it (rm), and doctor would not find it an orphan. mood never writes one. */
static void drop_unused_adapters(importer *m)
{
    size_t kept = 0;
    for (size_t i = 0; i < m->n_adapters; i++) {
        int used = 0;
        for (size_t s = 0; s < m->n_styles && !used; s++)
            for (size_t l = 0; l < m->styles[s].n_loras && !used; l++)
                used = m->adapters[i].sha256 && m->styles[s].loras[l].sha256 &&
                       strcmp(m->adapters[i].sha256, m->styles[s].loras[l].sha256) == 0;
        if (used)
            m->adapters[kept++] = m->adapters[i];
    }
    m->n_adapters = kept;
}

static int style_rows(importer *m)
{
    const cJSON *arr = get(m->ex.manifest.json, "styles"), *s;
    size_t i = 0;
    int err = 0;
    m->n_styles = (size_t)cJSON_GetArraySize(arr);
    if (!(m->styles = mood_calloc(m->n_styles + 1, sizeof *m->styles)))
        return mood_error_nomem();
    cJSON_ArrayForEach(s, arr)
    {
        if ((err = style_row(m, &m->styles[i++], s)) != 0)
            break;
    }
    return err;
}

/* --rename: pack styles imported under other names, before any name is checked against the
 * registry; a name the pack does not have, or two styles of the pack ending with one name, is
 * refused. */
/* Every NAME of --rename NAME=NEW is one of the pack's own names: all are found first, then all
 * renamed, so that a=b b=c renames the pack's b to c (not its a, twice) and a=b b=a swaps. */
static int apply_renames(importer *m, const mood_pack_import_options *o)
{
    size_t *at = mood_calloc(o->n_renames ? o->n_renames : 1, sizeof *at);
    if (!at)
        return mood_error_nomem();
    for (size_t k = 0; k < o->n_renames; k++) {
        size_t i = 0;
        for (size_t e = 0; e < k; e++)
            if (strcasecmp(o->rename_from[e], o->rename_from[k]) == 0) {
                mood_free(at);
                return mood_error_set(MOOD_EINVAL, "style '%s' is renamed twice (to '%s' and '%s')",
                                      o->rename_from[k], o->rename_to[e], o->rename_to[k]);
            }
        while (i < m->n_styles && strcasecmp(m->styles[i].name, o->rename_from[k]) != 0)
            i++;
        if (i == m->n_styles) {
            mood_free(at);
            return mood_error_set(MOOD_EINVAL,
                                  "rename %s=%s: the pack has no style named '%s' ('mood pack "
                                  "import FILE --json' into an empty MOOD_HOME lists its styles)",
                                  o->rename_from[k], o->rename_to[k], o->rename_from[k]);
        }
        at[k] = i;
    }
    for (size_t k = 0; k < o->n_renames; k++)
        m->styles[at[k]].name = o->rename_to[k];
    mood_free(at);
    for (size_t i = 0; o->n_renames && i < m->n_styles; i++)
        for (size_t j = 0; j < i; j++)
            if (strcasecmp(m->styles[i].name, m->styles[j].name) == 0)
                return mood_error_set(MOOD_EINVAL,
                                      "two styles of the pack would both be named '%s': rename "
                                      "one of them to another name",
                                      m->styles[i].name);
    return 0;
}

/* The report is built and its buffer allocated before anything is stored, so that nothing can
 * fail once the import is committed: the counts are filled in afterwards without allocating. */
typedef struct report {
    cJSON *json;
    char *text;
    int size;
} report;

static int report_prepare(report *rep, const importer *m, const char *path)
{
    cJSON *o = cJSON_CreateObject(), *names = cJSON_AddArrayToObject(o, "styles");
    const cJSON *json = m->ex.manifest.json;
    char *t;
    rep->json = o;
    if (!o || !names)
        return mood_error_nomem();
    cJSON_AddStringToObject(o, "pack", path);
    for (size_t i = 0; i < m->n_styles; i++)
        cJSON_AddItemToArray(names, cJSON_CreateString(m->styles[i].name));
    cJSON_AddNumberToObject(o, "adapters_added", 0);
    cJSON_AddNumberToObject(o, "adapters_present", 0);
    cJSON_AddNumberToObject(o, "n_previews", m->previews);
    copy_field(o, "attribution", json, "attribution");
    copy_field(o, "license", json, "license");
    copy_field(o, "created_by", json, "created_by");
    if (!(t = cJSON_Print(o)))
        return mood_error_nomem();
    rep->size = (int)strlen(t) * 2 + 160; /* room for the two counts and the merged names */
    cJSON_free(t);
    if (!(rep->text = mood_malloc((size_t)rep->size)))
        return mood_error_nomem();
    return 0;
}

/* The registry's spelling of a style's name (names match without regard to case), else `name`. */
static cJSON *registry_spelling(mood_registry *r, const char *name)
{
    char *json = NULL;
    cJSON *o = NULL, *out;
    const char *own = NULL;
    if (mood_registry_show_json(&json, r, name) == 0 && (o = cJSON_Parse(json)) != NULL)
        own = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "name"));
    else
        mood_error_clear();
    out = cJSON_CreateString(own ? own : name);
    cJSON_Delete(o);
    mood_registry_free_string(json);
    return out;
}

static void report_finish(report *rep, mood_registry *r, const importer *m, int added,
                          const unsigned char *merged)
{
    cJSON *names = cJSON_AddArrayToObject(rep->json, "merged");
    for (size_t i = 0; names && i < m->n_styles; i++)
        if (merged[i])
            cJSON_AddItemToArray(names, registry_spelling(r, m->styles[i].name));
    cJSON_SetNumberValue(cJSON_GetObjectItem(rep->json, "adapters_added"), added);
    cJSON_SetNumberValue(cJSON_GetObjectItem(rep->json, "adapters_present"),
                         (double)m->n_adapters - added);
    if (!cJSON_PrintPreallocated(rep->json, rep->text, rep->size, 1))
        snprintf(rep->text, (size_t)rep->size, "{}");
}

int mood_pack_import(char **report_out, mood_registry *r, const char *path,
                     const mood_pack_import_options *o)
{
    mood_pack_import_options defaults;
    mood__pack_limits lim;
    importer m;
    report rep = {NULL, NULL, 0};
    unsigned char *merged = NULL; /* per style: merged into the registry's style of its name */
    int err, added = 0;
    memset(&m, 0, sizeof m);
    MOOD_ARG_NONNULL(report_out);
    *report_out = NULL;
    MOOD_ARG_NONNULL(r);
    MOOD_ARG_NONNULL(path);
    if (!o) {
        mood_pack_import_options_init(&defaults);
        o = &defaults;
    }
    mood__pack_limits_init(&lim);
    lim.max_total = o->max_total ? o->max_total : lim.max_total;
    lim.max_entry = o->max_entry ? o->max_entry : lim.max_entry;
    if ((err = mood__pack_read(&m.ex, path, mood_registry_home(r), &lim, o->progress,
                               o->payload)) != 0 ||
        (err = adapter_rows(&m)) != 0 || (err = style_rows(&m)) != 0 ||
        (err = apply_renames(&m, o)) != 0)
        goto done;
    drop_unused_adapters(&m);
    if ((err = report_prepare(&rep, &m, path)) != 0)
        goto done;
    if (!(merged = mood_calloc(m.n_styles + 1, 1))) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = mood__reg_pack_store(&added, merged, r, path, m.adapters, m.n_adapters, m.styles,
                                    m.n_styles, o->progress, o->payload)) != 0) {
        if (!strstr(mood_error_last(), path))
            mood_error_prefix("%s", path);
        goto done;
    }
    report_finish(&rep, r, &m, added, merged);
    *report_out = rep.text;
    rep.text = NULL;
done:
    cJSON_Delete(rep.json);
    mood_free(rep.text);
    mood__pack_extract_dispose(&m.ex);
    for (size_t i = 0; i < m.n_owned; i++)
        mood_free(m.owned[i]);
    mood_free(m.owned);
    mood_free(m.adapters);
    mood_free(m.styles);
    mood_free(merged);
    return err;
}
