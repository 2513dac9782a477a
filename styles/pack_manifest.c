/*
 * pack_manifest.c: validation of a style pack's manifest.json (pack_archive.h has the layout).
 *
 * The manifest is the only thing in a pack that says what the archive may hold, so it is checked
 * before any other entry is extracted: every field's type, required fields, SHA-256s as 64
 * lowercase hex characters, archive file names of the form DIR/NAME (DIR one of adapters,
 * previews, board; NAME of [A-Za-z0-9._-], not starting with '.'), no file listed twice with
 * different contents, and style adapters that the adapter table lists.
 *
 * Document (schema_version 1):
 *   {schema_version, created_by, license?, attribution?,
 *    styles: [{name, description?, notes?, template?, negative?, weight?, trigger_words: [str],
 *              tags: [str], adapters: [{sha256, unet, te}], previews: [{sha256, file,
 *              media_type?, nsfw_level?}]}],
 *    adapters: [{sha256, file_name, size, family, air?, license?, embedded, file (when embedded),
 *                autov3?, family_source?, algorithm?, rank?, alpha?, dtype?, modules?,
 *                metadata?, trigger_words?, civitai?: {model_id?, version_id?, model_name?,
 *                version_name?, base_model?, nsfw?, nsfw_level?}}],
 *    board: [{sha256, file, media_type?, style?, name?, width?, height?}]}
 * board lists mood board thumbnails; "style" names the style of the pack they belong to (without
 * it, the only style of a one-style pack).
 */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "styles/pack_archive.h"

#define MAX_FILES 100000

int mood__pack_hex_ok(const char *s)
{
    size_t n = 0;
    if (!s)
        return 0;
    for (; s[n]; n++) {
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return 0;
    }
    return n == 64;
}

int mood__pack_file_name_ok(const char *name)
{
    static const char *const dirs[] = {"adapters/", "previews/", "board/"};
    const char *base = NULL;
    size_t n;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0] && !base; i++) {
        if (strncmp(name, dirs[i], strlen(dirs[i])) == 0)
            base = name + strlen(dirs[i]);
    }
    if (!base || !*base || *base == '.' || (n = strlen(base)) > 160)
        return 0;
    return strspn(base, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* ----- typed field access; each names the field in its error ------------------------------- */

static const cJSON *field(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static int need_string(const char **out, const cJSON *o, const char *where, const char *key,
                       int required)
{
    const cJSON *v = field(o, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: missing \"%s\"", where, key);
        return 0;
    }
    if (!cJSON_IsString(v))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"%s\" must be a string", where,
                              key);
    *out = v->valuestring;
    return 0;
}

/* A number in [min, max] (what mood itself would store: a LoRA weight within -100..100, a rank
 * a long long holds). */
static int need_number_in(const cJSON *o, const char *where, const char *key, int required,
                          double min, double max)
{
    const cJSON *v = field(o, key);
    if (!v || cJSON_IsNull(v))
        return required
                   ? mood_error_set(MOOD_EFORMAT, "manifest.json: %s: missing \"%s\"", where, key)
                   : 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < min ||
        v->valuedouble > max)
        return mood_error_set(MOOD_EFORMAT,
                              "manifest.json: %s: \"%s\" must be a number from %g to %g", where,
                              key, min, max);
    return 0;
}

static int need_number(const cJSON *o, const char *where, const char *key, int required, double min)
{
    return need_number_in(o, where, key, required, min, INFINITY);
}

static int need_array(const cJSON **out, const cJSON *o, const char *where, const char *key,
                      int required)
{
    const cJSON *v = field(o, key);
    *out = NULL;
    if (!v && !required)
        return 0;
    if (!cJSON_IsArray(v))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"%s\" must be an array", where,
                              key);
    *out = v;
    return 0;
}

static int need_hex(const char **out, const cJSON *o, const char *where)
{
    int err = need_string(out, o, where, "sha256", 1);
    if (!err && !mood__pack_hex_ok(*out))
        err = mood_error_set(MOOD_EFORMAT,
                             "manifest.json: %s: \"sha256\" must be 64 lowercase hex characters",
                             where);
    return err;
}

static int string_array(const cJSON *o, const char *where, const char *key)
{
    const cJSON *arr, *v;
    int err = need_array(&arr, o, where, key, 0);
    cJSON_ArrayForEach(v, arr)
    {
        if (!err && !cJSON_IsString(v))
            err = mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"%s\" must hold only strings",
                                 where, key);
    }
    return err;
}

/* ----- the file list ------------------------------------------------------------------------ */

/* Adds (name, sha256) to the list of files; the same name twice must mean the same content. */
static int add_file(mood__pack_manifest *m, const char *where, const char *name, const char *sha,
                    const cJSON *size)
{
    mood__pack_file *f;
    if (!mood__pack_file_name_ok(name))
        return mood_error_set(MOOD_EFORMAT,
                              "manifest.json: %s: file name '%s' is not allowed (expected "
                              "adapters/, previews/ or board/ followed by letters, digits, '.', "
                              "'_' or '-')",
                              where, name);
    for (size_t i = 0; i < m->n_files; i++) {
        if (strcmp(m->files[i].name, name) != 0)
            continue;
        if (strcmp(m->files[i].sha256, sha) != 0)
            return mood_error_set(MOOD_EFORMAT,
                                  "manifest.json: %s: file '%s' is listed twice with different "
                                  "SHA-256s",
                                  where, name);
        return 0;
    }
    if (m->n_files >= MAX_FILES)
        return mood_error_set(MOOD_EFORMAT, "manifest.json: more than %d files", MAX_FILES);
    f = mood_realloc(m->files, (m->n_files + 1) * sizeof *f);
    if (!f)
        return mood_error_nomem();
    m->files = f;
    f = &m->files[m->n_files++];
    memset(f, 0, sizeof *f);
    f->name = name;
    memcpy(f->sha256, sha, 65);
    if (size) {
        f->size = (uint64_t)size->valuedouble;
        f->has_size = 1;
    }
    return 0;
}

/* The adapter's Civitai record (optional; packs made before it existed have none). */
static int check_civitai(const cJSON *a, const char *adapter)
{
    const cJSON *c = field(a, "civitai");
    const char *s;
    char where[80];
    int err;
    if (!c || cJSON_IsNull(c))
        return 0;
    snprintf(where, sizeof where, "%s.civitai", adapter);
    if (!cJSON_IsObject(c))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s must be an object", where);
    if ((err = need_number(c, where, "model_id", 0, 1)) ||
        (err = need_number(c, where, "version_id", 0, 1)) ||
        (err = need_number(c, where, "nsfw_level", 0, 0)) ||
        (err = need_string(&s, c, where, "model_name", 0)) ||
        (err = need_string(&s, c, where, "version_name", 0)) ||
        (err = need_string(&s, c, where, "base_model", 0)))
        return err;
    for (int k = 0; k < 3; k++) {
        static const char *const ids[] = {"model_id", "version_id", "nsfw_level"};
        const cJSON *v = field(c, ids[k]);
        if (cJSON_IsNumber(v) &&
            (v->valuedouble > 9.0e15 || v->valuedouble != floor(v->valuedouble)))
            return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"%s\" must be a whole number",
                                  where, ids[k]);
    }
    if (field(c, "nsfw") && !cJSON_IsBool(field(c, "nsfw")) && !cJSON_IsNull(field(c, "nsfw")))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"nsfw\" must be true or false",
                              where);
    return 0;
}

static int check_adapter(mood__pack_manifest *m, const cJSON *a, size_t i)
{
    char where[64];
    const char *sha, *s, *file;
    const cJSON *embedded = field(a, "embedded");
    int err;
    snprintf(where, sizeof where, "adapters[%zu]", i);
    if (!cJSON_IsObject(a))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s must be an object", where);
    if ((err = need_hex(&sha, a, where)) || (err = need_string(&s, a, where, "file_name", 1)) ||
        (err = need_number(a, where, "size", 1, 0)) ||
        (err = need_string(&s, a, where, "family", 1)) ||
        (err = need_string(&s, a, where, "air", 0)) ||
        (err = need_string(&s, a, where, "license", 0)) ||
        (err = need_string(&s, a, where, "autov3", 0)) ||
        (err = need_string(&s, a, where, "algorithm", 0)) ||
        (err = need_string(&s, a, where, "dtype", 0)) ||
        (err = need_string(&s, a, where, "family_source", 0)) ||
        (err = need_number_in(a, where, "rank", 0, 0, 1e9)) ||
        (err = need_number_in(a, where, "modules", 0, 0, 1e9)) ||
        (err = need_number(a, where, "alpha", 0, -INFINITY)) ||
        (err = string_array(a, where, "trigger_words")) || (err = check_civitai(a, where)))
        return err;
    if (field(a, "metadata") && !cJSON_IsObject(field(a, "metadata")) &&
        !cJSON_IsNull(field(a, "metadata")))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"metadata\" must be an object",
                              where);
    if (field(a, "size")->valuedouble > 9.0e15 ||
        field(a, "size")->valuedouble != floor(field(a, "size")->valuedouble))
        return mood_error_set(MOOD_EFORMAT,
                              "manifest.json: %s: \"size\" must be a whole number of bytes", where);
    if (!cJSON_IsBool(embedded))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"embedded\" must be true or false",
                              where);
    for (size_t j = 0; j < i; j++) {
        const char *other = cJSON_GetStringValue(
            field(cJSON_GetArrayItem(field(m->json, "adapters"), (int)j), "sha256"));
        if (other && strcmp(other, sha) == 0)
            return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: adapter %s is listed twice",
                                  where, sha);
    }
    if (!cJSON_IsTrue(embedded))
        return 0;
    if ((err = need_string(&file, a, where, "file", 1)) != 0)
        return err;
    return add_file(m, where, file, sha, field(a, "size"));
}

/* A style's reference to an adapter must name one in the adapter table. */
static int check_style_adapters(const mood__pack_manifest *m, const cJSON *s, const char *where)
{
    const cJSON *arr, *x;
    int err = need_array(&arr, s, where, "adapters", 1), k = 0;
    if (!err && cJSON_GetArraySize(arr) == 0)
        err = mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"adapters\" is empty", where);
    cJSON_ArrayForEach(x, arr)
    {
        char w[96];
        const char *sha;
        int found = 0;
        const cJSON *a;
        snprintf(w, sizeof w, "%s.adapters[%d]", where, k++);
        if (err)
            break;
        if (!cJSON_IsObject(x)) {
            err = mood_error_set(MOOD_EFORMAT, "manifest.json: %s must be an object", w);
            break;
        }
        if ((err = need_hex(&sha, x, w)) || (err = need_number_in(x, w, "unet", 1, -100, 100)) ||
            (err = need_number_in(x, w, "te", 1, -100, 100)))
            break;
        cJSON_ArrayForEach(a, field(m->json, "adapters"))
        {
            found |= strcmp(cJSON_GetStringValue(field(a, "sha256")), sha) == 0;
        }
        if (!found)
            err = mood_error_set(
                MOOD_EFORMAT, "manifest.json: %s: adapter %s is not in the adapter table", w, sha);
    }
    return err;
}

static int check_files(mood__pack_manifest *m, const cJSON *o, const char *where, const char *key)
{
    const cJSON *arr, *x;
    int err = need_array(&arr, o, where, key, 0), k = 0;
    cJSON_ArrayForEach(x, arr)
    {
        char w[96];
        const char *sha, *file, *type;
        snprintf(w, sizeof w, "%s%s%s[%d]", where, *where ? "." : "", key, k++);
        if (err)
            break;
        if (!cJSON_IsObject(x)) {
            err = mood_error_set(MOOD_EFORMAT, "manifest.json: %s must be an object", w);
            break;
        }
        if ((err = need_hex(&sha, x, w)) || (err = need_string(&file, x, w, "file", 1)) ||
            (err = need_string(&type, x, w, "media_type", 0)) ||
            (err = need_number(x, w, "nsfw_level", 0, 0)) ||
            (err = add_file(m, w, file, sha, NULL)))
            break;
    }
    return err;
}

/* Tags as the registry allows them: 1..64 characters, no spaces, commas or control characters,
 * no '#' in front (`mood tag` drops it: a tag is shown with it). */
static int check_tags(const cJSON *s, const char *where)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, field(s, "tags"))
    {
        const unsigned char *c = (const unsigned char *)t->valuestring;
        size_t n = strlen(t->valuestring);
        int control = 0;
        for (size_t i = 0; i < n; i++)
            control |= c[i] < 0x20 || c[i] == 0x7f;
        if (n == 0 || n > 64 || strpbrk(t->valuestring, " ,") || control || c[0] == '#')
            return mood_error_set(MOOD_EFORMAT,
                                  "manifest.json: %s: a tag is not allowed (1 to 64 characters, no "
                                  "spaces, commas, control characters or '#' in front)",
                                  where);
    }
    return 0;
}

static int check_style(mood__pack_manifest *m, const cJSON *s, size_t i)
{
    static const char *const texts[] = {"description", "notes", "template", "negative"};
    char where[64];
    const char *name, *t;
    int err;
    snprintf(where, sizeof where, "styles[%zu]", i);
    if (!cJSON_IsObject(s))
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s must be an object", where);
    if ((err = need_string(&name, s, where, "name", 1)) != 0)
        return err;
    if (!*name || strlen(name) > 100)
        return mood_error_set(MOOD_EFORMAT, "manifest.json: %s: bad style name", where);
    snprintf(where, sizeof where, "style '%.40s'", name);
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        if ((err = need_string(&t, s, where, texts[k], 0)) != 0)
            return err;
    }
    if ((err = need_number(s, where, "weight", 0, -INFINITY)) ||
        (err = string_array(s, where, "trigger_words")) || (err = string_array(s, where, "tags")) ||
        (err = check_tags(s, where)) || (err = check_style_adapters(m, s, where)) ||
        (err = check_files(m, s, where, "previews")))
        return err;
    for (size_t j = 0; j < i; j++) {
        const char *other = cJSON_GetStringValue(
            field(cJSON_GetArrayItem(field(m->json, "styles"), (int)j), "name"));
        if (other && strcasecmp(other, name) == 0)
            return mood_error_set(MOOD_EFORMAT, "manifest.json: style '%s' is listed twice", name);
    }
    return 0;
}

/* The board entries' own fields: a style of the pack, a plain name, sizes. */
static int check_board(const cJSON *json)
{
    const cJSON *x;
    int k = 0, err = 0;
    cJSON_ArrayForEach(x, field(json, "board"))
    {
        char w[48];
        const char *style, *name;
        const cJSON *s;
        int found = 0;
        snprintf(w, sizeof w, "board[%d]", k++);
        if ((err = need_string(&style, x, w, "style", 0)) ||
            (err = need_string(&name, x, w, "name", 0)) ||
            (err = need_number(x, w, "width", 0, 0)) || (err = need_number(x, w, "height", 0, 0)))
            break;
        if (name && (strlen(name) > 255 || strchr(name, '/'))) {
            err =
                mood_error_set(MOOD_EFORMAT, "manifest.json: %s: \"name\" must be a file name", w);
            break;
        }
        cJSON_ArrayForEach(s, field(json, "styles"))
        {
            found |= style && strcasecmp(cJSON_GetStringValue(field(s, "name")), style) == 0;
        }
        if (style && !found) {
            err = mood_error_set(MOOD_EFORMAT,
                                 "manifest.json: %s: style '%.64s' is not in the pack", w, style);
            break;
        }
    }
    return err;
}

int mood__pack_manifest_parse(mood__pack_manifest *out, const char *text, size_t len)
{
    const cJSON *v, *arr;
    const char *s;
    size_t i = 0;
    int err = 0;
    memset(out, 0, sizeof *out);
    if (!(out->json = cJSON_ParseWithLength(text, len)) || !cJSON_IsObject(out->json)) {
        err = mood_error_set(MOOD_EFORMAT, "manifest.json: not a JSON object");
        goto done;
    }
    v = field(out->json, "schema_version");
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)MOOD__PACK_SCHEMA) {
        err = mood_error_set(MOOD_EFORMAT,
                             "manifest.json: schema_version must be %d (this pack was made by a "
                             "newer or different program)",
                             MOOD__PACK_SCHEMA);
        goto done;
    }
    if ((err = need_string(&s, out->json, "top level", "created_by", 1)) ||
        (err = need_string(&s, out->json, "top level", "license", 0)) ||
        (err = need_string(&s, out->json, "top level", "attribution", 0)) ||
        (err = need_array(&arr, out->json, "top level", "adapters", 1)))
        goto done;
    cJSON_ArrayForEach(v, arr)
    {
        if ((err = check_adapter(out, v, i++)) != 0)
            goto done;
    }
    if ((err = need_array(&arr, out->json, "top level", "styles", 1)) != 0)
        goto done;
    if (cJSON_GetArraySize(arr) == 0) {
        err = mood_error_set(MOOD_EFORMAT, "manifest.json: \"styles\" is empty");
        goto done;
    }
    i = 0;
    cJSON_ArrayForEach(v, arr)
    {
        if ((err = check_style(out, v, i++)) != 0)
            goto done;
    }
    if ((err = check_files(out, out->json, "", "board")) == 0)
        err = check_board(out->json);
done:
    if (err)
        mood__pack_manifest_dispose(out);
    return err;
}

void mood__pack_manifest_dispose(mood__pack_manifest *m)
{
    cJSON_Delete(m->json);
    mood_free(m->files);
    memset(m, 0, sizeof *m);
}
