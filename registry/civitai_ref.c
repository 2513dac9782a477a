/*
 * civitai_ref.c: Civitai identifiers (civitai:ID, model and version page URLs, download URLs and
 * AIRs, ecosystem.md §1.10) and the map from Civitai base model names to mood families.
 *
 * The base model map is data: Civitai adds base models often, and anything not listed is
 * "unknown" (the adapter's own keys decide then), never a guess. A record stored for a file whose
 * own family is another is warned of here (mood__civitai_check_family), by every path that
 * stores one.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/args.h"
#include "common/common.h"
#include "registry/civitai_impl.h"

#define MAX_ID 2147483647LL

static const char *const known_hosts[] = {"civitai.com", "civitai.red", "civitai.green"};

/* Length of the scheme://host[:port] prefix of url; 0 when url is not http(s). */
static size_t origin_len(const char *url)
{
    size_t skip;
    if (strncasecmp(url, "https://", 8) == 0)
        skip = 8;
    else if (strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else
        return 0;
    return skip + strcspn(url + skip, "/?#");
}

int mood__civitai_known_host(const char *url, const char **path_out)
{
    size_t o = origin_len(url), skip = strncasecmp(url, "https://", 8) == 0 ? 8 : 7;
    const char *host = url + skip;
    size_t n;
    if (!o)
        return 0;
    n = o - skip;
    if (n > 4 && strncasecmp(host, "www.", 4) == 0) {
        host += 4;
        n -= 4;
    }
    for (size_t i = 0; i < sizeof known_hosts / sizeof known_hosts[0]; i++) {
        if (n == strlen(known_hosts[i]) && strncasecmp(host, known_hosts[i], n) == 0) {
            if (path_out)
                *path_out = url + o;
            return 1;
        }
    }
    return 0;
}

/* A URL on a Civitai host or on $MOOD_CIVITAI_URL's origin; *path_out set as above. */
static int civitai_url(const char *url, const char **path_out)
{
    const char *base = getenv("MOOD_CIVITAI_URL");
    size_t o, bo;
    if (mood__civitai_known_host(url, path_out))
        return 1;
    if (!base || !(bo = origin_len(base)) || !(o = origin_len(url)))
        return 0;
    if (o != bo || strncasecmp(url, base, o) != 0)
        return 0;
    *path_out = url + o;
    return 1;
}

static int is_air(const char *text)
{
    if (strncasecmp(text, "urn:", 4) == 0)
        text += 4;
    return strncasecmp(text, "air:", 4) == 0;
}

static int parse_url(mood_civitai_ref *out, const char *text, const char *path);

int mood_civitai_is_ref(const char *text)
{
    const char *path;
    mood_civitai_ref ref;
    if (strncasecmp(text, "civitai:", 8) == 0 || is_air(text) ||
        mood__civitai_known_host(text, &path))
        return 1;
    /* on the API base's origin (a mirror, the test server), only the page and API addresses:
     * anything else there is a plain download */
    if (civitai_url(text, &path) && parse_url(&ref, text, path) == 0)
        return 1;
    mood_error_clear();
    return 0;
}

/* Digits [s, s+n) as an id in 1..2^31-1; 0 otherwise. */
static long long parse_id(const char *s, size_t n)
{
    long long v = 0;
    if (n == 0 || n > 10)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v <= MAX_ID ? v : 0;
}

static int bad_ref(const char *text, const char *why)
{
    return mood_error_set(MOOD_EINVAL,
                          "'%s': %s; expected civitai:VERSION_ID, a Civitai model or version URL "
                          "(https://civitai.com/models/ID[?modelVersionId=V]) or an AIR "
                          "(urn:air:sd1:lora:civitai:MODEL@VERSION)",
                          text, why);
}

/* The value of query parameter `key` in [q, end) as an id (0 when absent). -1 when malformed. */
static long long query_id(const char *q, const char *key)
{
    size_t kn = strlen(key);
    while (q && *q && *q != '#') {
        q++; /* '?' or '&' */
        if (strncmp(q, key, kn) == 0 && q[kn] == '=') {
            long long v = parse_id(q + kn + 1, strcspn(q + kn + 1, "&#"));
            return v ? v : -1;
        }
        q += strcspn(q, "&#");
    }
    return 0;
}

/* Path segment i of path (without slashes); *n its length; NULL past the end. */
static const char *segment(const char *path, int i, size_t *n)
{
    const char *p = path;
    for (;;) {
        while (*p == '/')
            p++;
        if (!*p || *p == '?' || *p == '#')
            return NULL;
        *n = strcspn(p, "/?#");
        if (i-- == 0)
            return p;
        p += *n;
    }
}

static int seg_is(const char *path, int i, const char *word)
{
    size_t n;
    const char *s = segment(path, i, &n);
    return s && n == strlen(word) && strncmp(s, word, n) == 0;
}

static int parse_url(mood_civitai_ref *out, const char *text, const char *path)
{
    const char *s;
    size_t n;
    long long v = query_id(strchr(path, '?'), "modelVersionId");
    int id_at = -1, is_model = 0;
    if (seg_is(path, 0, "models"))
        id_at = 1, is_model = 1;
    else if (seg_is(path, 0, "model-versions"))
        id_at = 1;
    else if (seg_is(path, 0, "api") && seg_is(path, 1, "download") && seg_is(path, 2, "models"))
        id_at = 3;
    else if (seg_is(path, 0, "api") && seg_is(path, 1, "v1") && seg_is(path, 2, "model-versions"))
        id_at = 3;
    else if (seg_is(path, 0, "api") && seg_is(path, 1, "v1") && seg_is(path, 2, "models"))
        id_at = 3, is_model = 1;
    if (id_at < 0 || !(s = segment(path, id_at, &n)) || !parse_id(s, n))
        return bad_ref(text, "not a Civitai model or version address");
    if (v < 0)
        return bad_ref(text, "modelVersionId is not a number");
    out->model_id = is_model ? parse_id(s, n) : 0;
    out->version_id = is_model ? v : parse_id(s, n);
    return 0;
}

/* AIR: [urn:]air:[ecosystem:][type:]source:id[@version][+file][.format] (§1.10). */
static int parse_air(mood_civitai_ref *out, const char *text)
{
    const char *p = text, *last, *src, *id, *end;
    size_t n;
    if (strncasecmp(p, "urn:", 4) == 0)
        p += 4;
    p += 4; /* "air:" */
    if (!(last = strrchr(p, ':')))
        return bad_ref(text, "an AIR needs at least source:id");
    src = last;
    while (src > p && src[-1] != ':')
        src--;
    if ((size_t)(last - src) != 7 || strncasecmp(src, "civitai", 7) != 0)
        return bad_ref(text, "only AIRs whose source is civitai can be fetched");
    id = last + 1;
    n = strspn(id, "0123456789");
    if (!(out->model_id = parse_id(id, n)))
        return bad_ref(text, "the AIR's model id is not a number");
    end = id + n;
    out->version_id = 0;
    if (*end == '@') {
        size_t vn = strspn(end + 1, "0123456789");
        if (!(out->version_id = parse_id(end + 1, vn)))
            return bad_ref(text, "the AIR's version is not a number");
        end += 1 + vn;
    }
    if (*end == '+')
        end += 1 + strspn(end + 1, "0123456789");
    if (*end == '.')
        end +=
            1 + strspn(end + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
    if (*end)
        return bad_ref(text, "unexpected text after the AIR's id");
    return 0;
}

int mood_civitai_parse_ref(mood_civitai_ref *out, const char *text)
{
    const char *path;
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    MOOD_ARG_NONNULL(text);
    if (!*text)
        return bad_ref(text, "empty");
    if (strncasecmp(text, "civitai:", 8) == 0) {
        if (!(out->version_id = parse_id(text + 8, strlen(text + 8))))
            return bad_ref(text, "the version id is not a number");
        return 0;
    }
    if (is_air(text))
        return parse_air(out, text);
    if (civitai_url(text, &path))
        return parse_url(out, text, path);
    return bad_ref(text, "not a Civitai reference");
}

const char *mood_civitai_family(const char *base_model)
{
    static const char *const sdxl_names[] = {"Pony", "Illustrious", "NoobAI"};
    if (!base_model)
        return "unknown";
    if (strncmp(base_model, "SD 1.", 5) == 0)
        return "sd1";
    if (strncmp(base_model, "SD 2.", 5) == 0)
        return "sd2";
    if (strncmp(base_model, "SDXL", 4) == 0)
        return "sdxl";
    for (size_t i = 0; i < sizeof sdxl_names / sizeof sdxl_names[0]; i++)
        if (strcmp(base_model, sdxl_names[i]) == 0)
            return "sdxl";
    return "unknown";
}

/* A family as people write it, for the warning below. */
static const char *family_title(const char *family)
{
    if (strcmp(family, "sd1") == 0)
        return "SD 1.x";
    if (strcmp(family, "sd2") == 0)
        return "SD 2.x";
    return strcmp(family, "sdxl") == 0 ? "SDXL" : family;
}

void mood__civitai_check_family(const char *file, const char *base_model, const char *family,
                                const char *family_source)
{
    const char *listed = mood_civitai_family(base_model);
    /* a family that came from Civitai (an unknown file's, civitai_store.c) says nothing of the
     * file: only its own metadata, keys or shapes can disagree with the record */
    if (strcmp(listed, "unknown") == 0 || !family || strcmp(family, "unknown") == 0 ||
        strcmp(listed, family) == 0 || (family_source && strcmp(family_source, "civitai") == 0))
        return;
    mood_log(MOOD_LOG_WARN,
             "%s: Civitai lists it for %s (baseModel), but the file is an %s LoRA (from its %s); "
             "mood uses it as %s",
             file, base_model, family_title(family), family_source ? family_source : "keys",
             family_title(family));
}
