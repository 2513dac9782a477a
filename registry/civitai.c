/*
 * civitai.c: the Civitai client (contract in include/mood/civitai.h): the lookups, the
 * parsers of model and version records (tolerant: every field may be missing, null or of an
 * older shape, ecosystem.md §1.3-1.5), identifiers (civitai:ID, page URLs, AIR §1.10), the base
 * model to family map, and downloads with the published SHA-256 checked.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "common/args.h"
#include "mood/civitai.h"
#include "registry/civitai_impl.h"
#include "registry/http.h"

#define DEFAULT_BASE "https://civitai.com"
#define MAX_ID       2147483647LL

struct mood_civitai {
    char *base;  /* no trailing slash */
    int retries; /* -1: MOOD_HTTP_RETRIES or the default */
};

/* ----- JSON helpers ----------------------------------------------------------------------------
 */

static int dup_str(char **out, const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!cJSON_IsString(v) || !v->valuestring)
        return 0;
    return (*out = mood_strdup(v->valuestring)) ? 0 : mood_error_nomem();
}

static long long get_id(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble <= (double)MAX_ID)
        return (long long)v->valuedouble;
    return 0;
}

static int get_int(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1e9 ? (int)v->valuedouble
                                                                            : 0;
}

static int get_bool(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : -1;
}

/* An array of strings (non-strings skipped). */
static int dup_strings(char ***out, size_t *n_out, const cJSON *o, const char *key)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key), *it;
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
    *out = NULL;
    *n_out = 0;
    if (n <= 0)
        return 0;
    if (!(*out = mood_calloc((size_t)n, sizeof **out)))
        return mood_error_nomem();
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsString(it) || !it->valuestring)
            continue;
        if (!((*out)[*n_out] = mood_strdup(it->valuestring)))
            return mood_error_nomem();
        (*n_out)++;
    }
    return 0;
}

static void free_strings(char **s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        mood_free(s[i]);
    mood_free(s);
}

/* allowCommercialUse: an array of CommercialUse values, the Postgres literal "{Image,Rent}" or
 * one older plain string (§1.3). Stored as "Image,Rent". */
static int commercial_use(char **out, const cJSON *o)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "allowCommercialUse"), *it;
    mood_buf b;
    *out = NULL;
    mood_buf_init(&b);
    if (cJSON_IsArray(v)) {
        cJSON_ArrayForEach(it, v)
        {
            if (cJSON_IsString(it) &&
                mood_buf_printf(&b, "%s%s", b.len ? "," : "", it->valuestring))
                goto nomem;
        }
        if (!b.data && mood_buf_puts(&b, "None"))
            goto nomem;
    } else if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        size_t n = strlen(s);
        if (n >= 2 && s[0] == '{' && s[n - 1] == '}') {
            s++;
            n -= 2;
        }
        if (mood_buf_append(&b, s, n))
            goto nomem;
    }
    *out = b.data ? mood_buf_detach(&b) : NULL;
    return 0;
nomem:
    mood_buf_dispose(&b);
    return mood_error_nomem();
}

static int parse_permissions(mood_civitai_permissions *p, const cJSON *o)
{
    p->allow_no_credit = get_bool(o, "allowNoCredit");
    p->allow_derivatives = get_bool(o, "allowDerivatives");
    p->allow_different_license = get_bool(o, "allowDifferentLicense");
    return commercial_use(&p->allow_commercial_use, o);
}

/* ----- records ---------------------------------------------------------------------------------
 */

static int parse_file(mood_civitai_file *f, const cJSON *o)
{
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "hashes");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(o, "metadata");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(o, "sizeKB");
    int err;
    f->size_kb = cJSON_IsNumber(size) ? size->valuedouble : 0;
    f->primary = get_bool(o, "primary") == 1;
    if ((err = dup_str(&f->name, o, "name")) || (err = dup_str(&f->type, o, "type")) ||
        (err = dup_str(&f->format, meta, "format")) ||
        (err = dup_str(&f->virus_scan, o, "virusScanResult")) ||
        (err = dup_str(&f->download_url, o, "downloadUrl")) ||
        (err = dup_str(&f->sha256, h, "SHA256")) || (err = dup_str(&f->autov1, h, "AutoV1")) ||
        (err = dup_str(&f->autov2, h, "AutoV2")) || (err = dup_str(&f->autov3, h, "AutoV3")) ||
        (err = dup_str(&f->crc32, h, "CRC32")) || (err = dup_str(&f->blake3, h, "BLAKE3")))
        return err;
    return 0;
}

static void dispose_file(mood_civitai_file *f)
{
    mood_free(f->name);
    mood_free(f->type);
    mood_free(f->format);
    mood_free(f->virus_scan);
    mood_free(f->download_url);
    mood_free(f->sha256);
    mood_free(f->autov1);
    mood_free(f->autov2);
    mood_free(f->autov3);
    mood_free(f->crc32);
    mood_free(f->blake3);
}

/* nsfwLevel: the numeric flag, or the words the images endpoint uses (§1.9). */
static int nsfw_level(const cJSON *o)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "nsfwLevel");
    static const char *const words[] = {"None", "Soft", "Mature", "X"};
    if (cJSON_IsNumber(v))
        return get_int(o, "nsfwLevel");
    for (int i = 0; cJSON_IsString(v) && i < 4; i++)
        if (strcasecmp(v->valuestring, words[i]) == 0)
            return 1 << i;
    return 0;
}

static int parse_image(mood_civitai_image *im, const cJSON *o)
{
    int err;
    im->nsfw_level = nsfw_level(o);
    im->width = get_int(o, "width");
    im->height = get_int(o, "height");
    if ((err = dup_str(&im->url, o, "url")) || (err = dup_str(&im->type, o, "type")))
        return err;
    return 0;
}

/* Parses the array `key` of o into *items with parse(); items that are not objects skipped. */
#define PARSE_ARRAY(items, n, o, key, parse)                                                       \
    do {                                                                                           \
        const cJSON *arr_ = cJSON_GetObjectItemCaseSensitive(o, key), *it_;                        \
        int cnt_ = cJSON_IsArray(arr_) ? cJSON_GetArraySize(arr_) : 0;                             \
        if (cnt_ > 0 && !((items) = mood_calloc((size_t)cnt_, sizeof *(items)))) {                 \
            err = mood_error_nomem();                                                              \
            break;                                                                                 \
        }                                                                                          \
        cJSON_ArrayForEach(it_, arr_)                                                              \
        {                                                                                          \
            if (!cJSON_IsObject(it_))                                                              \
                continue;                                                                          \
            if ((err = parse(&(items)[(n)++], it_)) != 0)                                          \
                break;                                                                             \
        }                                                                                          \
    } while (0)

/* AIR type names Civitai uses for model types (§1.10). */
static const char *air_type(const char *model_type)
{
    static const char *const map[][2] = {{"LORA", "lora"},
                                         {"LoCon", "lycoris"},
                                         {"DoRA", "dora"},
                                         {"TextualInversion", "embedding"},
                                         {"Checkpoint", "checkpoint"},
                                         {"VAE", "vae"}};
    for (size_t i = 0; model_type && i < sizeof map / sizeof map[0]; i++)
        if (strcmp(model_type, map[i][0]) == 0)
            return map[i][1];
    return "other";
}

/* An AIR from the ids when the server sent none (offline records, the /models shape). */
static int build_air(mood_civitai_version *v)
{
    const char *fam = mood_civitai_family(v->base_model);
    mood_buf b;
    if (v->air || !v->model_id || !v->id)
        return 0;
    mood_buf_init(&b);
    if (mood_buf_printf(&b, "urn:air:%s:%s:civitai:%lld@%lld",
                        strcmp(fam, "unknown") == 0 ? "other" : fam, air_type(v->model_type),
                        v->model_id, v->id)) {
        mood_buf_dispose(&b);
        return mood_error_nomem();
    }
    v->air = mood_buf_detach(&b);
    return 0;
}

static void dispose_version(mood_civitai_version *v)
{
    mood_free(v->name);
    mood_free(v->base_model);
    mood_free(v->air);
    mood_free(v->description);
    mood_free(v->published_at);
    free_strings(v->trained_words, v->n_trained_words);
    mood_free(v->early_access_deadline);
    mood_free(v->model_name);
    mood_free(v->model_type);
    mood_free(v->model_description);
    mood_free(v->permissions.allow_commercial_use);
    free_strings(v->tags, v->n_tags);
    for (size_t i = 0; i < v->n_files; i++)
        dispose_file(&v->files[i]);
    mood_free(v->files);
    for (size_t i = 0; i < v->n_images; i++) {
        mood_free(v->images[i].url);
        mood_free(v->images[i].type);
    }
    mood_free(v->images);
    mood_free(v->json);
}

/* One version object: the /model-versions shape, or an item of /models' modelVersions (then
 * `model` is the parent model object, which the item itself does not repeat). */
static int parse_version(mood_civitai_version *v, const cJSON *o, const cJSON *model)
{
    const cJSON *m = model ? model : cJSON_GetObjectItemCaseSensitive(o, "model");
    const cJSON *avail = cJSON_GetObjectItemCaseSensitive(o, "availability");
    int err = 0;
    v->id = get_id(o, "id");
    v->model_id = model ? get_id(model, "id") : get_id(o, "modelId");
    v->nsfw_level = get_int(o, "nsfwLevel");
    v->model_nsfw = get_bool(m, "nsfw");
    v->permissions.allow_no_credit = v->permissions.allow_derivatives = -1;
    v->permissions.allow_different_license = -1;
    if ((err = dup_str(&v->name, o, "name")) || (err = dup_str(&v->base_model, o, "baseModel")) ||
        (err = dup_str(&v->air, o, "air")) || (err = dup_str(&v->description, o, "description")) ||
        (err = dup_str(&v->published_at, o, "publishedAt")) ||
        (err = dup_str(&v->early_access_deadline, o, "earlyAccessDeadline")) ||
        (err = dup_strings(&v->trained_words, &v->n_trained_words, o, "trainedWords")) ||
        (err = dup_str(&v->model_name, m, "name")) || (err = dup_str(&v->model_type, m, "type")))
        return err;
    if (!v->early_access_deadline &&
        (err = dup_str(&v->early_access_deadline, o, "earlyAccessEndsAt")) != 0)
        return err;
    v->early_access = v->early_access_deadline != NULL ||
                      (cJSON_IsString(avail) && strcmp(avail->valuestring, "EarlyAccess") == 0);
    PARSE_ARRAY(v->files, v->n_files, o, "files", parse_file);
    if (err)
        return err;
    PARSE_ARRAY(v->images, v->n_images, o, "images", parse_image);
    if (err)
        return err;
    if (model && (err = parse_permissions(&v->permissions, model)) != 0)
        return err;
    {
        /* the record as text, in mood's allocator (cJSON_free pairs with cJSON's) */
        char *text = cJSON_PrintUnformatted(o);
        v->json = text ? mood_strdup(text) : NULL;
        cJSON_free(text);
        if (!v->json)
            return mood_error_nomem();
    }
    return build_air(v);
}

int mood_civitai_version_parse(mood_civitai_version **out, const char *json, size_t len)
{
    cJSON *root;
    mood_civitai_version *v = NULL;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if (len > 0)
        MOOD_ARG_NONNULL(json); /* an empty answer (NULL, 0) is not a record: MOOD_EFORMAT */
    root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root) || !get_id(root, "id")) {
        err = mood_error_set(MOOD_EFORMAT, "not a Civitai model version record: expected a JSON "
                                           "object with a numeric \"id\"");
        goto done;
    }
    if (!(v = mood_calloc(1, sizeof *v))) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = parse_version(v, root, NULL)) != 0)
        goto done;
    mood_free(v->json);
    if (!(v->json = mood_strndup(json, len))) {
        err = mood_error_nomem();
        goto done;
    }
    *out = v;
    v = NULL;
done:
    mood_civitai_version_free(v);
    cJSON_Delete(root);
    return err;
}

void mood_civitai_version_free(mood_civitai_version *v)
{
    if (!v)
        return;
    dispose_version(v);
    mood_free(v);
}

static int parse_model(mood_civitai_model *m, const cJSON *root)
{
    int err = 0;
    m->id = get_id(root, "id");
    m->nsfw = get_bool(root, "nsfw") == 1;
    m->nsfw_level = get_int(root, "nsfwLevel");
    if ((err = dup_str(&m->name, root, "name")) || (err = dup_str(&m->type, root, "type")) ||
        (err = dup_str(&m->description, root, "description")) ||
        (err = dup_str(&m->mode, root, "mode")) ||
        (err = parse_permissions(&m->permissions, root)) ||
        (err = dup_strings(&m->tags, &m->n_tags, root, "tags")))
        return err;
    {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "modelVersions"), *it;
        int cnt = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
        if (cnt > 0 && !(m->versions = mood_calloc((size_t)cnt, sizeof *m->versions)))
            return mood_error_nomem();
        cJSON_ArrayForEach(it, arr)
        {
            if (!cJSON_IsObject(it))
                continue;
            if ((err = parse_version(&m->versions[m->n_versions++], it, root)) != 0)
                return err;
        }
    }
    return 0;
}

int mood_civitai_model_parse(mood_civitai_model **out, const char *json, size_t len)
{
    cJSON *root;
    mood_civitai_model *m = NULL;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if (len > 0)
        MOOD_ARG_NONNULL(json); /* an empty answer (NULL, 0) is not a record: MOOD_EFORMAT */
    root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root) || !get_id(root, "id")) {
        err = mood_error_set(MOOD_EFORMAT, "not a Civitai model record: expected a JSON object "
                                           "with a numeric \"id\"");
        goto done;
    }
    if (!(m = mood_calloc(1, sizeof *m))) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = parse_model(m, root)) != 0)
        goto done;
    if (!(m->json = mood_strndup(json, len))) {
        err = mood_error_nomem();
        goto done;
    }
    *out = m;
    m = NULL;
done:
    mood_civitai_model_free(m);
    cJSON_Delete(root);
    return err;
}

void mood_civitai_model_free(mood_civitai_model *m)
{
    if (!m)
        return;
    mood_free(m->name);
    mood_free(m->type);
    mood_free(m->description);
    mood_free(m->mode);
    mood_free(m->permissions.allow_commercial_use);
    free_strings(m->tags, m->n_tags);
    for (size_t i = 0; i < m->n_versions; i++)
        dispose_version(&m->versions[i]);
    mood_free(m->versions);
    mood_free(m->json);
    mood_free(m);
}

void mood__civitai_model_slim(mood_civitai_model *m)
{
    for (size_t i = 0; i < m->n_versions; i++)
        dispose_version(&m->versions[i]);
    mood_free(m->versions);
    m->versions = NULL;
    m->n_versions = 0;
    mood_free(m->json);
    m->json = NULL;
}

void mood_civitai_free_string(char *s)
{
    mood_free(s);
}

static int replace_str(char **dst, const char *src)
{
    char *copy = NULL;
    if (src && !(copy = mood_strdup(src)))
        return mood_error_nomem();
    mood_free(*dst);
    *dst = copy;
    return 0;
}

int mood_civitai_version_add_model(mood_civitai_version *v, const mood_civitai_model *m)
{
    int err;
    MOOD_ARG_NONNULL(v);
    MOOD_ARG_NONNULL(m);
    if ((err = replace_str(&v->model_description, m->description)) ||
        (err = replace_str(&v->permissions.allow_commercial_use,
                           m->permissions.allow_commercial_use)))
        return err;
    if (m->name && (err = replace_str(&v->model_name, m->name)))
        return err;
    if (m->type && (err = replace_str(&v->model_type, m->type)))
        return err;
    v->permissions.allow_no_credit = m->permissions.allow_no_credit;
    v->permissions.allow_derivatives = m->permissions.allow_derivatives;
    v->permissions.allow_different_license = m->permissions.allow_different_license;
    v->model_nsfw = m->nsfw;
    free_strings(v->tags, v->n_tags);
    v->tags = NULL;
    v->n_tags = 0;
    if (m->n_tags) {
        if (!(v->tags = mood_calloc(m->n_tags, sizeof *v->tags)))
            return mood_error_nomem();
        for (; v->n_tags < m->n_tags; v->n_tags++)
            if (!(v->tags[v->n_tags] = mood_strdup(m->tags[v->n_tags])))
                return mood_error_nomem();
    }
    return 0;
}

const mood_civitai_file *mood_civitai_primary_file(const mood_civitai_version *v)
{
    for (size_t i = 0; i < v->n_files; i++)
        if (v->files[i].primary)
            return &v->files[i];
    for (size_t i = 0; i < v->n_files; i++)
        if (v->files[i].type && strcmp(v->files[i].type, "Model") == 0)
            return &v->files[i];
    return v->n_files ? &v->files[0] : NULL;
}

int mood_civitai_license(char **out, const mood_civitai_permissions *p)
{
    mood_buf b;
    static const char *const yn[] = {"not allowed", "allowed"};
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(p);
    if (p->allow_no_credit < 0 && p->allow_derivatives < 0 && p->allow_different_license < 0 &&
        !p->allow_commercial_use)
        return 0;
    mood_buf_init(&b);
    if (mood_buf_puts(&b, "Civitai:") ||
        (p->allow_no_credit >= 0 &&
         mood_buf_printf(&b, " credit %s;", p->allow_no_credit ? "not required" : "required")) ||
        (p->allow_commercial_use &&
         mood_buf_printf(&b, " commercial use: %s;", p->allow_commercial_use)) ||
        (p->allow_derivatives >= 0 &&
         mood_buf_printf(&b, " derivatives %s;", yn[p->allow_derivatives])) ||
        (p->allow_different_license >= 0 &&
         mood_buf_printf(&b, " different licence %s;", yn[p->allow_different_license]))) {
        mood_buf_dispose(&b);
        return mood_error_nomem();
    }
    b.data[--b.len] = '\0'; /* the last ';' */
    *out = mood_buf_detach(&b);
    return 0;
}

/* ----- client ----------------------------------------------------------------------------------
 */

int mood_civitai_open(mood_civitai **out, const char *base_url)
{
    const char *base = base_url ? base_url : getenv("MOOD_CIVITAI_URL");
    /* where the URL came from, for the message: the caller's argument or the environment */
    const char *source = base_url ? "mood_civitai_open: base_url" : "MOOD_CIVITAI_URL";
    mood_civitai *c;
    size_t n;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if (!base || !*base)
        base = DEFAULT_BASE;
    if (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0)
        return mood_error_set(MOOD_EINVAL, "%s: '%s' is not an http:// or https:// URL", source,
                              base);
    if (!(c = mood_calloc(1, sizeof *c)) || !(c->base = mood_strdup(base))) {
        mood_free(c);
        return mood_error_nomem();
    }
    c->retries = -1;
    n = strlen(c->base);
    while (n > 0 && c->base[n - 1] == '/')
        c->base[--n] = '\0';
    *out = c;
    return 0;
}

void mood_civitai_close(mood_civitai *c)
{
    if (!c)
        return;
    mood_free(c->base);
    mood_free(c);
}

const char *mood_civitai_base(const mood_civitai *c)
{
    return c->base;
}

void mood_civitai_set_retries(mood_civitai *c, int retries)
{
    c->retries = retries < 0 ? -1 : retries;
}

/* GET base + path into body, or POST the JSON text post_json there (NULL: a GET). */
static int api_request(mood_buf *body, long *status, mood_civitai *c, const char *path,
                       const char *post_json)
{
    mood_buf url;
    mood__http_options o;
    int err;
    memset(&o, 0, sizeof o);
    o.auth = 1;
    o.retries = c->retries;
    mood_buf_init(&url);
    if (mood_buf_printf(&url, "%s%s", c->base, path)) {
        mood_buf_dispose(&url);
        return mood_error_nomem();
    }
    err = post_json ? mood__http_post_json(body, status, url.data, post_json, &o)
                    : mood__http_get(body, status, url.data, &o);
    mood_buf_dispose(&url);
    return err;
}

static int api_get(mood_buf *body, mood_civitai *c, const char *path)
{
    return api_request(body, NULL, c, path, NULL);
}

static int get_version(mood_civitai_version **out, mood_civitai *c, const char *path)
{
    mood_buf body;
    int err;
    *out = NULL;
    mood_buf_init(&body);
    if ((err = api_get(&body, c, path)) == 0 &&
        (err = mood_civitai_version_parse(out, body.data, body.len)) != 0)
        mood_error_prefix("%s%s", c->base, path);
    mood_buf_dispose(&body);
    return err;
}

int mood_civitai_version_by_hash(mood_civitai_version **out, mood_civitai *c, const char *hash)
{
    char path[160];
    size_t n;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(c);
    MOOD_ARG_NONNULL(hash);
    n = strlen(hash);
    if (n < 8 || n > 64 || strspn(hash, "0123456789abcdefABCDEF") != n)
        return mood_error_set(MOOD_EINVAL, "'%s' is not a file hash (8 to 64 hex digits)", hash);
    snprintf(path, sizeof path, "/api/v1/model-versions/by-hash/%s", hash);
    for (char *p = path; *p; p++)
        *p = (char)((p >= path + 31) ? toupper((unsigned char)*p) : *p);
    return get_version(out, c, path);
}

/* The body of a batch lookup: ["SHA256", ...], upper-case; each hash checked. */
static int batch_body(char **out, const char *const *sha256, size_t n)
{
    mood_buf b;
    mood_buf_init(&b);
    *out = NULL;
    if (mood_buf_puts(&b, "["))
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const char *h = sha256[i];
        if (!h || strlen(h) != 64 || strspn(h, "0123456789abcdefABCDEF") != 64) {
            mood_buf_dispose(&b);
            return mood_error_set(MOOD_EINVAL, "'%s' is not a SHA-256 (64 hex digits)",
                                  h ? h : "(null)");
        }
        if (mood_buf_puts(&b, i ? ",\"" : "\""))
            goto nomem;
        for (int k = 0; k < 64; k++) {
            char u = (char)toupper((unsigned char)h[k]);
            if (mood_buf_append(&b, &u, 1))
                goto nomem;
        }
        if (mood_buf_puts(&b, "\""))
            goto nomem;
    }
    if (mood_buf_puts(&b, "]"))
        goto nomem;
    *out = mood_buf_detach(&b);
    return 0;
nomem:
    mood_buf_dispose(&b);
    return mood_error_nomem();
}

/* The answer of a batch lookup: an array of version records (other items skipped). */
static int parse_batch(mood_civitai_version **out, size_t *n_out, const mood_buf *body)
{
    cJSON *root = cJSON_ParseWithLength(body->data, body->len), *it;
    mood_civitai_version *v = NULL;
    size_t n = 0;
    int err = 0, cnt;
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        return mood_error_set(MOOD_EFORMAT,
                              "not an answer of the batch lookup: expected a JSON array of model "
                              "version records");
    }
    cnt = cJSON_GetArraySize(root);
    if (cnt > 0 && !(v = mood_calloc((size_t)cnt, sizeof *v)))
        err = mood_error_nomem();
    cJSON_ArrayForEach(it, root)
    {
        if (err || !cJSON_IsObject(it) || !get_id(it, "id"))
            continue;
        err = parse_version(&v[n++], it, NULL);
    }
    cJSON_Delete(root);
    if (err) {
        mood_civitai_versions_free(v, n);
        return err;
    }
    *out = v;
    *n_out = n;
    return 0;
}

int mood_civitai_versions_by_hash(mood_civitai_version **out, size_t *n_out, mood_civitai *c,
                                  const char *const *sha256, size_t n)
{
    static const char path[] = "/api/v1/model-versions/by-hash";
    char *json = NULL;
    mood_buf body;
    long status = 0;
    int err;
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(n_out);
    *out = NULL;
    *n_out = 0;
    MOOD_ARG_NONNULL(c);
    if (n)
        MOOD_ARG_NONNULL(sha256);
    if (n > MOOD_CIVITAI_BATCH_MAX)
        return mood_error_set(MOOD_EINVAL,
                              "mood_civitai_versions_by_hash: %zu hashes; Civitai takes at most "
                              "%d at a time",
                              n, MOOD_CIVITAI_BATCH_MAX);
    if (n == 0)
        return 0;
    if ((err = batch_body(&json, sha256, n)) != 0)
        return err;
    mood_buf_init(&body);
    err = api_request(&body, &status, c, path, json);
    if (err && (status == 400 || status == 404 || status == 405))
        /* a server without the endpoint (an older one, a proxy): every hash sent was checked */
        err = mood_error_set(MOOD_EUNSUPPORTED, "%s%s: no batch lookup by hash there (HTTP %ld)",
                             c->base, path, status);
    else if (!err && (err = parse_batch(out, n_out, &body)) != 0)
        mood_error_prefix("%s%s", c->base, path);
    mood_buf_dispose(&body);
    mood_free(json);
    return err;
}

void mood_civitai_versions_free(mood_civitai_version *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        dispose_version(&v[i]);
    mood_free(v);
}

int mood_civitai_version_get(mood_civitai_version **out, mood_civitai *c, long long version_id)
{
    char path[96];
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(c);
    if (version_id < 1 || version_id > MAX_ID)
        return mood_error_set(MOOD_EINVAL, "%lld is not a Civitai version id", version_id);
    snprintf(path, sizeof path, "/api/v1/model-versions/%lld", version_id);
    return get_version(out, c, path);
}

int mood_civitai_model_get(mood_civitai_model **out, mood_civitai *c, long long model_id)
{
    char path[96];
    mood_buf body;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(c);
    if (model_id < 1 || model_id > MAX_ID)
        return mood_error_set(MOOD_EINVAL, "%lld is not a Civitai model id", model_id);
    snprintf(path, sizeof path, "/api/v1/models/%lld", model_id);
    mood_buf_init(&body);
    if ((err = api_get(&body, c, path)) == 0 &&
        (err = mood_civitai_model_parse(out, body.data, body.len)) != 0)
        mood_error_prefix("%s%s", c->base, path);
    mood_buf_dispose(&body);
    return err;
}

int mood_civitai_resolve(mood_civitai_version **out, mood_civitai *c, const mood_civitai_ref *ref)
{
    mood_civitai_model *m = NULL;
    mood_civitai_version *v = NULL;
    long long vid;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(c);
    MOOD_ARG_NONNULL(ref);
    vid = ref->version_id;
    if (!vid) {
        if ((err = mood_civitai_model_get(&m, c, ref->model_id)) != 0)
            goto done;
        if (!m->n_versions || !m->versions[0].id) {
            err = mood_error_set(MOOD_ENOTFOUND,
                                 "%s/api/v1/models/%lld: the model has no "
                                 "published version",
                                 c->base, ref->model_id);
            goto done;
        }
        vid = m->versions[0].id;
    }
    if ((err = mood_civitai_version_get(&v, c, vid)) != 0)
        goto done;
    if (ref->model_id && v->model_id && v->model_id != ref->model_id) {
        err = mood_error_set(MOOD_EINVAL, "Civitai version %lld belongs to model %lld, not %lld",
                             vid, v->model_id, ref->model_id);
        goto done;
    }
    if (!m && v->model_id && (err = mood_civitai_model_get(&m, c, v->model_id)) != 0)
        goto done;
    if (m && (err = mood_civitai_version_add_model(v, m)) != 0)
        goto done;
    *out = v;
    v = NULL;
done:
    mood_civitai_version_free(v);
    mood_civitai_model_free(m);
    return err;
}

/* True when url is on the API's origin (scheme://host[:port] followed by '/' or the end). */
static int same_origin(const mood_civitai *c, const char *url)
{
    const char *host = strstr(c->base, "://");
    size_t n = host ? strcspn(host + 3, "/") + (size_t)(host + 3 - c->base) : strlen(c->base);
    return strncmp(url, c->base, n) == 0 && (url[n] == '/' || url[n] == '\0' || url[n] == '?');
}

int mood_civitai_download_url(char **path_out, mood_civitai *c, const char *url, const char *dir,
                              const char *expected_sha256, mood_progress_fn progress, void *payload)
{
    mood__http_options o;
    MOOD_ARG_NONNULL(path_out);
    *path_out = NULL;
    MOOD_ARG_NONNULL(c);
    MOOD_ARG_NONNULL(url);
    MOOD_ARG_NONNULL(dir);
    memset(&o, 0, sizeof o);
    o.retries = c->retries;
    o.auth = same_origin(c, url) ||
             (strncmp(url, "https://", 8) == 0 && mood__civitai_known_host(url, NULL));
    o.expected_sha256 = expected_sha256;
    o.progress = progress;
    o.payload = payload;
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return mood_error_set(MOOD_EINVAL, "'%s' is not an http:// or https:// URL", url);
    return mood__http_download(path_out, url, dir, &o);
}

int mood_civitai_download(char **path_out, mood_civitai *c, const mood_civitai_version *v,
                          const char *dir, mood_progress_fn progress, void *payload)
{
    const mood_civitai_file *f;
    MOOD_ARG_NONNULL(path_out);
    *path_out = NULL;
    MOOD_ARG_NONNULL(c);
    MOOD_ARG_NONNULL(v);
    MOOD_ARG_NONNULL(dir);
    f = mood_civitai_primary_file(v);
    if (!f || !f->download_url)
        return mood_error_set(MOOD_ENOTFOUND, "Civitai version %lld (%s) has no file to download",
                              v->id, v->name ? v->name : "?");
    if (f->virus_scan && strcmp(f->virus_scan, "Danger") == 0)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: Civitai's scan marked this file as dangerous; not downloaded",
                              f->download_url);
    return mood_civitai_download_url(path_out, c, f->download_url, dir, f->sha256, progress,
                                     payload);
}
