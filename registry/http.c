/*
 * http.c: GET, POST of JSON and resumable downloads over libcurl for the registry (contract in
 * http.h).
 *
 * One attempt is one curl_easy_perform(); the header callback tracks the status, Retry-After,
 * Content-Range and Content-Disposition of the last response (redirect responses reset them), and
 * the write callback sends a 2xx body to its sink (memory or the .part file) and anything else to
 * a small error buffer whose JSON "error"/"message" ends up in the error message.
 * A download resumes from its .part only when the part is provably the start of the same file:
 * the first answer's ETag or Last-Modified (kept in PART.valid) goes out as If-Range, and a file
 * that changed comes back whole; without a validator it starts over, unless the caller checks
 * the finished file's SHA-256 (Civitai publishes it).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "mood/hash.h"
#include "registry/curl_api.h"
#include "registry/http.h"

#define DEFAULT_RETRIES  4
#define DEFAULT_UNIT_MS  1000
#define MAX_WAIT_UNITS   60
#define DEFAULT_MAX_BODY ((size_t)32 << 20)
#define ERROR_BODY_MAX   65536
#define NAME_MAX_BYTES   200

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static CURLcode init_rc;

static void global_init(void)
{
    init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* State of one request over its attempts. */
typedef struct transfer {
    /* the last response's headers (reset by each status line) */
    long status;
    long retry_after; /* seconds; -1 when absent */
    long long range_start;
    char *disposition;
    /* sinks */
    mood_buf *body; /* GET */
    size_t max_body;
    FILE *fp; /* download */
    uint64_t offset;
    int started;
    /* resuming a download safely: the response's validator (a strong ETag, else Last-Modified),
     * the one the part was started with (kept in valid_path beside it, for a later run), sent
     * as If-Range so that a changed file comes whole instead of spliced onto the old start */
    char *validator, *if_range;
    const char *valid_path;
    int verified; /* the caller checks the finished file's SHA-256: a resume needs no validator */
    struct curl_slist *headers, *attempt_headers;
    mood_buf errbody;
    /* what went wrong inside a callback */
    int too_big, nomem, bad_range, write_errno, cancelled;
    mood_progress_fn progress;
    void *payload;
} transfer;

/* ----- small helpers -------------------------------------------------------------------------- */

static long env_long(const char *name, long fallback, long lo, long hi)
{
    const char *s = getenv(name);
    char *end;
    long v;
    if (!s || !*s)
        return fallback;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return fallback;
    return v;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

char *mood__http_redact(const char *url)
{
    mood_buf b;
    const char *p = url;
    mood_buf_init(&b);
    while (*p) {
        const char *q = strstr(p, "token=");
        if (!q || (q > url && q[-1] != '?' && q[-1] != '&')) {
            size_t n = q ? (size_t)(q - p) + 6 : strlen(p);
            if (mood_buf_append(&b, p, n))
                goto fail;
            p += n;
            continue;
        }
        if (mood_buf_append(&b, p, (size_t)(q - p) + 6) || mood_buf_puts(&b, "***"))
            goto fail;
        p = q + 6;
        while (*p && *p != '&' && *p != '#')
            p++;
    }
    if (!b.data && mood_buf_puts(&b, ""))
        goto fail;
    return mood_buf_detach(&b);
fail:
    mood_buf_dispose(&b);
    return NULL;
}

/* ----- file names ----------------------------------------------------------------------------- */

char *mood__http_sanitize_name(const char *name, size_t len)
{
    char *out;
    size_t n = 0, i = 0;
    while (i < len && (name[i] == '.' || name[i] == ' '))
        i++;
    if (!(out = mood_malloc(len - i + 1)))
        return NULL;
    for (; i < len && name[i]; i++) {
        unsigned char c = (unsigned char)name[i];
        out[n++] = (c < 0x20 || c == 0x7f || c == '/' || c == '\\' || c == '"') ? '_' : (char)c;
    }
    while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '.'))
        n--;
    if (n > NAME_MAX_BYTES) {
        /* cut at a UTF-8 character boundary */
        n = NAME_MAX_BYTES;
        while (n > 0 && ((unsigned char)out[n] & 0xc0) == 0x80)
            n--;
    }
    out[n] = '\0';
    if (n == 0) {
        mood_free(out);
        return NULL;
    }
    return out;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* RFC 5987 ext-value: charset'lang'pct-encoded. UTF-8 is kept, ISO-8859-1 converted. */
static char *decode_ext_value(const char *v, size_t len)
{
    const char *q1 = memchr(v, '\'', len), *q2;
    mood_buf b;
    char *name = NULL;
    int latin1;
    if (!q1 || !(q2 = memchr(q1 + 1, '\'', len - (size_t)(q1 + 1 - v))))
        return NULL;
    if ((size_t)(q1 - v) == 5 && strncasecmp(v, "UTF-8", 5) == 0)
        latin1 = 0;
    else if ((size_t)(q1 - v) == 10 && strncasecmp(v, "ISO-8859-1", 10) == 0)
        latin1 = 1;
    else
        return NULL;
    mood_buf_init(&b);
    for (const char *p = q2 + 1; p < v + len; p++) {
        unsigned c = (unsigned char)*p;
        if (c == '%' && p + 2 < v + len + 0 && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            c = (unsigned)(hexval(p[1]) * 16 + hexval(p[2]));
            p += 2;
        }
        if (latin1 && c >= 0x80) {
            char two[2] = {(char)(0xc0 | (c >> 6)), (char)(0x80 | (c & 0x3f))};
            if (mood_buf_append(&b, two, 2))
                goto done;
        } else {
            char one = (char)c;
            if (mood_buf_append(&b, &one, 1))
                goto done;
        }
    }
    if (b.data)
        name = mood__http_sanitize_name(b.data, b.len);
done:
    mood_buf_dispose(&b);
    return name;
}

char *mood__http_disposition_name(const char *value)
{
    char *plain = NULL, *ext = NULL;
    const char *p = value ? strchr(value, ';') : NULL;
    while (p && *p) {
        const char *key, *eq;
        mood_buf v;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        key = p;
        while (*p && *p != '=' && *p != ';')
            p++;
        if (*p != '=')
            continue;
        eq = p++;
        while (eq > key && (eq[-1] == ' ' || eq[-1] == '\t'))
            eq--;
        mood_buf_init(&v);
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (mood_buf_append(&v, p, 1))
                    break;
            }
            if (*p == '"')
                p++;
            while (*p && *p != ';')
                p++;
        } else {
            const char *start = p;
            while (*p && *p != ';')
                p++;
            const char *end = p;
            while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
            if (end > start && mood_buf_append(&v, start, (size_t)(end - start))) {
                mood_buf_dispose(&v);
                break;
            }
        }
        if ((size_t)(eq - key) == 9 && strncasecmp(key, "filename*", 9) == 0 && !ext && v.data)
            ext = decode_ext_value(v.data, v.len);
        else if ((size_t)(eq - key) == 8 && strncasecmp(key, "filename", 8) == 0 && !plain &&
                 v.data)
            plain = mood__http_sanitize_name(v.data, v.len);
        mood_buf_dispose(&v);
    }
    if (ext) {
        mood_free(plain);
        return ext;
    }
    return plain;
}

/* Last path segment of a URL (query and fragment dropped, %XX decoded), sanitized. */
static char *url_name(const char *url)
{
    const char *start, *end = url + strcspn(url, "?#"), *scheme = strstr(url, "://");
    mood_buf b;
    char *name = NULL;
    start = end;
    while (start > url && start[-1] != '/')
        start--;
    if (scheme && start <= scheme + 3)
        return NULL;
    mood_buf_init(&b);
    for (const char *p = start; p < end; p++) {
        char c = *p;
        if (c == '%' && p + 2 < end && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            c = (char)(hexval(p[1]) * 16 + hexval(p[2]));
            p += 2;
        }
        if (mood_buf_append(&b, &c, 1))
            goto done;
    }
    if (b.data)
        name = mood__http_sanitize_name(b.data, b.len);
done:
    mood_buf_dispose(&b);
    return name;
}

/* ----- callbacks ------------------------------------------------------------------------------ */

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    transfer *t = arg;
    size_t len = size * n, klen;
    const char *colon;
    char *value;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        const char *sp = memchr(data, ' ', len);
        t->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        t->retry_after = -1;
        t->range_start = -1;
        mood_free(t->disposition);
        t->disposition = NULL;
        mood_free(t->validator);
        t->validator = NULL;
        return len;
    }
    if (!(colon = memchr(data, ':', len)))
        return len;
    klen = (size_t)(colon - data);
    colon++;
    while (colon < data + len && (*colon == ' ' || *colon == '\t'))
        colon++;
    if (!(value = mood_strndup(colon, (size_t)(data + len - colon)))) {
        t->nomem = 1;
        return 0;
    }
    value[strcspn(value, "\r\n")] = '\0';
    if (klen == 11 && strncasecmp(data, "retry-after", 11) == 0 && isdigit((unsigned char)*value))
        t->retry_after = strtol(value, NULL, 10);
    else if (klen == 13 && strncasecmp(data, "content-range", 13) == 0 &&
             strncasecmp(value, "bytes ", 6) == 0)
        t->range_start = strtoll(value + 6, NULL, 10);
    else if (klen == 19 && strncasecmp(data, "content-disposition", 19) == 0) {
        mood_free(t->disposition);
        t->disposition = value;
        value = NULL;
    } else if ((klen == 4 && strncasecmp(data, "etag", 4) == 0 && value[0] == '"') ||
               (klen == 13 && strncasecmp(data, "last-modified", 13) == 0 && !t->validator)) {
        /* a weak ETag (W/"...") may not validate a range (RFC 9110 13.1.5) */
        mood_free(t->validator);
        t->validator = value;
        value = NULL;
    }
    mood_free(value);
    return len;
}

/* The validator of a download that starts from its first byte: kept (memory and valid_path), so
 * that a resume asks for the rest of this very file; none known: the file is removed. */
static int keep_validator(transfer *t)
{
    FILE *f;
    mood_free(t->if_range);
    t->if_range = NULL;
    if (!t->valid_path)
        return 0;
    if (!t->validator)
        return unlink(t->valid_path) == 0 || errno == ENOENT ? 0 : -1;
    if (!(t->if_range = mood_strdup(t->validator)) || !(f = fopen(t->valid_path, "w")))
        return -1;
    return (fputs(t->validator, f) < 0) | (fclose(f) != 0) ? -1 : 0;
}

/* The first body bytes of a download: start over when the server ignored the Range (or, asked
 * with If-Range, sent the whole file because it changed). */
static int start_body(transfer *t)
{
    t->started = 1;
    if (t->status == 200 && keep_validator(t) != 0) {
        t->write_errno = errno ? errno : EIO;
        return -1;
    }
    if (t->status == 200 && t->offset > 0) {
        if (fflush(t->fp) || ftruncate(fileno(t->fp), 0) || fseek(t->fp, 0, SEEK_SET)) {
            t->write_errno = errno ? errno : EIO;
            return -1;
        }
        t->offset = 0;
    } else if (t->status == 206 && t->range_start != (long long)t->offset) {
        t->bad_range = 1;
        return -1;
    }
    return 0;
}

static size_t on_write(char *data, size_t size, size_t n, void *arg)
{
    transfer *t = arg;
    size_t len = size * n;
    if (t->status < 200 || t->status >= 300 || !t->fp) {
        mood_buf *b = t->fp || t->status < 200 || t->status >= 300 ? &t->errbody : t->body;
        size_t cap = b == t->body ? t->max_body : ERROR_BODY_MAX;
        if (b->len + len > cap) {
            if (b == t->body) {
                t->too_big = 1;
                return 0;
            }
            return len; /* an error body: the start is enough */
        }
        if (mood_buf_append(b, data, len)) {
            t->nomem = 1;
            return 0;
        }
        return len;
    }
    if (!t->started && start_body(t))
        return 0;
    if (fwrite(data, 1, len, t->fp) != len) {
        t->write_errno = errno ? errno : EIO;
        return 0;
    }
    return len;
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    transfer *t = arg;
    mood_progress p = {"download", 0, 0};
    (void)ultotal;
    (void)ulnow;
    if (!t->progress || t->status < 200 || t->status >= 300)
        return 0;
    p.done = t->offset + (uint64_t)dlnow;
    p.total = dltotal > 0 ? t->offset + (uint64_t)dltotal : 0;
    if (t->progress(&p, t->payload)) {
        t->cancelled = 1;
        return 1;
    }
    return 0;
}

/* Headers of one download attempt: the request's, and If-Range with the part's validator. */
static int set_attempt_headers(CURL *h, transfer *t)
{
    struct curl_slist *l = NULL, *l2;
    char *line = NULL;
    curl_slist_free_all(t->attempt_headers);
    t->attempt_headers = NULL;
    for (const struct curl_slist *p = t->headers; p; p = p->next) {
        if (!(l2 = curl_slist_append(l, p->data)))
            goto nomem;
        l = l2;
    }
    if (!(line = mood_malloc(strlen(t->if_range) + 16)))
        goto nomem;
    sprintf(line, "If-Range: %s", t->if_range);
    if (!(l2 = curl_slist_append(l, line)))
        goto nomem;
    mood_free(line);
    t->attempt_headers = l2;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, l2);
    return 0;
nomem:
    mood_free(line);
    curl_slist_free_all(l);
    return mood_error_nomem();
}

/* Where a download attempt starts: at the end of the part when the part can be proven to be the
 * start of the same file (its validator goes as If-Range) or when the finished file's SHA-256
 * is checked; else from the first byte (a server that gave neither ETag nor Last-Modified may
 * have changed the file, and the two halves of two versions would be imported as one). */
static int resume_from_part(CURL *h, transfer *t, const char *url)
{
    long pos;
    if (fflush(t->fp) || fseek(t->fp, 0, SEEK_END) || (pos = ftell(t->fp)) < 0)
        return mood_error_set(MOOD_EIO, "%s: cannot read the partial download: %s", url,
                              strerror(errno));
    if (pos > 0 && !t->if_range && !t->verified) {
        if (ftruncate(fileno(t->fp), 0) || fseek(t->fp, 0, SEEK_SET))
            return mood_error_set(MOOD_EIO, "%s: cannot restart the download: %s", url,
                                  strerror(errno));
        pos = 0;
    }
    t->offset = (uint64_t)pos;
    curl_easy_setopt(h, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)t->offset);
    if (pos > 0 && t->if_range)
        return set_attempt_headers(h, t);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, t->headers);
    return 0;
}

/* ----- one request with retries ----------------------------------------------------------------
 */

static int transient(CURLcode rc)
{
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_OPERATION_TIMEDOUT ||
           rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR ||
           rc == CURLE_GOT_NOTHING || rc == CURLE_HTTP2 || rc == CURLE_HTTP2_STREAM;
}

/* The server's own words from a JSON error body: "error: message (deadline ...)". */
static void server_words(mood_buf *out, const mood_buf *body, int *early_access)
{
    cJSON *j = body->data ? cJSON_ParseWithLength(body->data, body->len) : NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "deadline");
    *early_access = cJSON_IsString(e) && strcasecmp(e->valuestring, "Early Access") == 0;
    if (cJSON_IsString(e) && mood_buf_printf(out, " (server: %s", e->valuestring) == 0) {
        if (cJSON_IsString(m))
            (void)mood_buf_printf(out, ": %s", m->valuestring);
        if (cJSON_IsString(d))
            (void)mood_buf_printf(out, "; early access ends %s", d->valuestring);
        (void)mood_buf_puts(out, ")");
    } else if (cJSON_IsString(m)) {
        (void)mood_buf_printf(out, " (server: %s)", m->valuestring);
    }
    cJSON_Delete(j);
}

static int status_error(const char *url, long status, const transfer *t, int tries, int auth)
{
    mood_buf words;
    int early = 0, code = status == 404 || status == 410 ? MOOD_ENOTFOUND : MOOD_EIO;
    const char *why;
    char other[64];
    mood_buf_init(&words);
    server_words(&words, &t->errbody, &early);
    if (status == 401)
        why = auth && getenv("CIVITAI_TOKEN") && *getenv("CIVITAI_TOKEN")
                  ? "401 Unauthorized: the Civitai API token in CIVITAI_TOKEN was refused"
                  : "401 Unauthorized: needs a Civitai API token: set CIVITAI_TOKEN";
    else if (status == 403 && early)
        why = "403 Forbidden: this version is in early access; it can be downloaded only with "
              "early access on the account of CIVITAI_TOKEN, or once early access ends";
    else if (status == 403)
        why = "403 Forbidden: no permission to download this (early access, a private or "
              "blocked resource)";
    else if (status == 404)
        why = "404 Not Found: no such model, version, hash or file";
    else if (status == 410)
        why = "410 Gone: removed or archived, no longer available";
    else if (status == 429)
        why = "429 Too Many Requests: rate limited; try again later";
    else {
        snprintf(other, sizeof other, "%s %ld", status >= 500 ? "server error" : "HTTP status",
                 status);
        why = other;
    }
    mood_error_set(code, "%s: %s%s%s", url, why, words.data ? words.data : "",
                   tries > 1 ? " (after retries)" : "");
    mood_buf_dispose(&words);
    return code;
}

static void reset_attempt(transfer *t)
{
    t->status = 0;
    t->retry_after = -1;
    t->range_start = -1;
    t->started = 0;
    mood_free(t->disposition);
    t->disposition = NULL;
    t->errbody.len = 0;
    if (t->errbody.data)
        t->errbody.data[0] = '\0';
    if (t->body && !t->fp) {
        t->body->len = 0;
        if (t->body->data)
            t->body->data[0] = '\0';
    }
}

static int setup(CURL *h, transfer *t, const char *url, struct curl_slist *headers, char *errbuf)
{
    char agent[64]; /* libcurl keeps its own copy */
    snprintf(agent, sizeof agent, "mood/%s", mood_version());
    if (curl_easy_setopt(h, CURLOPT_URL, url) != CURLE_OK ||
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
        curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK)
        return mood_error_set(MOOD_EINVAL, "%s: not an http or https URL libcurl accepts", url);
    curl_easy_setopt(h, CURLOPT_USERAGENT, agent);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, env_long("MOOD_HTTP_CONNECT_TIMEOUT", 30, 1, 600));
    /* a transfer that stalls (under 1 byte/s for this long) is a timeout, then retried */
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, env_long("MOOD_HTTP_STALL_TIMEOUT", 60, 1, 3600));
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, t);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    return 0;
}

/* The Authorization header (when asked for and CIVITAI_TOKEN is set) plus Accept; a request
 * with a JSON body says so, and without "Expect: 100-continue" (libcurl waits a second for a
 * server that does not answer it, as many do not). */
static int make_headers(struct curl_slist **out, int auth, int json_body)
{
    const char *token = auth ? getenv("CIVITAI_TOKEN") : NULL;
    struct curl_slist *l = curl_slist_append(NULL, "Accept: application/json, */*"), *l1;
    if (l && json_body) {
        if ((l1 = curl_slist_append(l, "Content-Type: application/json")) != NULL)
            l1 = curl_slist_append(l1, "Expect:");
        if (!l1) {
            curl_slist_free_all(l);
            l = NULL;
        }
    }
    if (l && token && *token) {
        size_t n = strlen(token) + 32;
        char *line = mood_malloc(n);
        struct curl_slist *l2 = NULL;
        if (line) {
            snprintf(line, n, "Authorization: Bearer %s", token);
            l2 = curl_slist_append(l, line);
            memset(line, 0, n);
            mood_free(line);
        }
        if (!l2) {
            curl_slist_free_all(l);
            l = NULL;
        }
    }
    *out = l;
    return l ? 0 : mood_error_nomem();
}

/* Runs the request until it succeeds, fails for good or runs out of retries. For downloads,
 * each attempt resumes from the .part file's size. */
static int run(CURL *h, transfer *t, const char *url, const mood__http_options *o)
{
    int auth = o && o->auth;
    long retries =
        o && o->retries >= 0 ? o->retries : env_long("MOOD_HTTP_RETRIES", DEFAULT_RETRIES, 0, 20);
    long unit = env_long("MOOD_HTTP_RETRY_MS", DEFAULT_UNIT_MS, 0, 60000);
    int err = 0, restarted = 0;
    for (long attempt = 0;; attempt++) {
        char errbuf[CURL_ERROR_SIZE] = "";
        CURLcode rc;
        long wait;
        reset_attempt(t);
        if (t->fp && (err = resume_from_part(h, t, url)) != 0)
            return err;
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        rc = curl_easy_perform(h);
        if (t->cancelled)
            return mood_error_set(MOOD_ECANCELLED, "%s: download cancelled", url);
        if (t->nomem)
            return mood_error_nomem();
        if (t->too_big)
            return mood_error_set(MOOD_EFORMAT, "%s: answer larger than %zu bytes", url,
                                  t->max_body);
        if (t->write_errno)
            return mood_error_set(MOOD_EIO, "%s: writing the download failed: %s", url,
                                  strerror(t->write_errno));
        if (t->fp && t->offset > 0 &&
            (t->bad_range || rc == CURLE_RANGE_ERROR || (rc == CURLE_OK && t->status == 416))) {
            /* the server cannot resume this (no ranges, another offset, a stale part): start
             * over from zero, once without counting it as a retry */
            t->bad_range = 0;
            if (fflush(t->fp) || ftruncate(fileno(t->fp), 0))
                return mood_error_set(MOOD_EIO, "%s: cannot restart the download: %s", url,
                                      strerror(errno));
            if (!restarted++ || attempt < retries) {
                attempt -= restarted == 1;
                continue;
            }
        }
        if (rc == CURLE_OK && t->status >= 200 && t->status < 300) {
            if (t->fp && !t->started && t->status == 200 && t->offset > 0 && start_body(t))
                return mood_error_set(MOOD_EIO, "%s: cannot restart the download", url);
            break;
        }
        if (rc != CURLE_OK && !(transient(rc) && attempt < retries)) {
            err = mood_error_set(MOOD_EIO, "%s: %s%s%s", url, curl_easy_strerror(rc),
                                 errbuf[0] ? ": " : "", errbuf);
            break;
        }
        if (rc == CURLE_OK && !((t->status == 429 || t->status >= 500) && attempt < retries)) {
            err = status_error(url, t->status, t, (int)attempt + 1, auth);
            break;
        }
        wait = (t->retry_after >= 0 && rc == CURLE_OK) ? t->retry_after : (1L << attempt);
        if (wait > MAX_WAIT_UNITS)
            wait = MAX_WAIT_UNITS;
        mood_log(MOOD_LOG_INFO, "%s: %s; retrying in %ld ms", url,
                 rc != CURLE_OK ? curl_easy_strerror(rc) : "server busy", wait * unit);
        sleep_ms(wait * unit);
    }
    return err;
}

static int begin(CURL **h_out, struct curl_slist **headers, transfer *t, const char *url,
                 const mood__http_options *o, int json_body, char *errbuf)
{
    int err;
    if ((err = mood__curl_load()) != 0)
        return err; /* nothing below may call curl */
    pthread_once(&init_once, global_init);
    if (init_rc != CURLE_OK)
        return mood_error_set(MOOD_EIO, "libcurl failed to start: %s", curl_easy_strerror(init_rc));
    if (!(*h_out = curl_easy_init()))
        return mood_error_nomem();
    if ((err = make_headers(headers, o && o->auth, json_body)) != 0)
        return err;
    t->progress = o ? o->progress : NULL;
    t->payload = o ? o->payload : NULL;
    return setup(*h_out, t, url, *headers, errbuf);
}

/* A GET, or a POST of json_body: the answer into body (API answers: small, compressed). */
static int request(mood_buf *body, long *status_out, const char *url, const char *json_body,
                   const mood__http_options *o)
{
    CURL *h = NULL;
    struct curl_slist *headers = NULL;
    transfer t;
    char errbuf[CURL_ERROR_SIZE];
    char *shown = mood__http_redact(url);
    int err;
    memset(&t, 0, sizeof t);
    mood_buf_init(&t.errbody);
    t.body = body;
    t.max_body = o && o->max_body ? o->max_body : DEFAULT_MAX_BODY;
    if (!shown) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = begin(&h, &headers, &t, url, o, json_body != NULL, errbuf)) != 0)
        goto done;
    t.progress = NULL; /* API answers are small */
    /* libcurl keeps the pointer: the body outlives the transfer, sent again by each retry */
    if (json_body && (curl_easy_setopt(h, CURLOPT_POSTFIELDS, json_body) != CURLE_OK ||
                      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                                       (curl_off_t)strlen(json_body)) != CURLE_OK)) {
        err = mood_error_set(MOOD_EIO, "%s: libcurl refused the request body", shown);
        goto done;
    }
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_TIMEOUT, env_long("MOOD_HTTP_TIMEOUT", 120, 1, 3600));
    err = run(h, &t, shown, o);
    if (status_out)
        *status_out = t.status;
    if (!err && !body->data)
        err = mood_buf_puts(body, "") ? mood_error_nomem() : 0;
done:
    if (headers) /* NULL too when libcurl could not be loaded */
        curl_slist_free_all(headers);
    if (h)
        curl_easy_cleanup(h);
    mood_free(t.validator); /* the answer's ETag, kept by the header callback */
    mood_free(t.disposition);
    mood_buf_dispose(&t.errbody);
    mood_free(shown);
    return err;
}

int mood__http_get(mood_buf *body, long *status_out, const char *url, const mood__http_options *o)
{
    return request(body, status_out, url, NULL, o);
}

int mood__http_post_json(mood_buf *body, long *status_out, const char *url, const char *json,
                         const mood__http_options *o)
{
    return request(body, status_out, url, json, o);
}

/* ----- downloads ------------------------------------------------------------------------------ */

static int join_path(char **out, const char *dir, const char *name)
{
    mood_buf b;
    mood_buf_init(&b);
    if (mood_buf_printf(&b, "%s/%s", dir, name)) {
        mood_buf_dispose(&b);
        return mood_error_nomem();
    }
    *out = mood_buf_detach(&b);
    return 0;
}

/* The validator a part was started with (PART.valid), NULL when none was kept. */
static char *read_validator(const char *path)
{
    char line[512];
    FILE *f = fopen(path, "r");
    char *v = NULL;
    if (!f)
        return NULL;
    if (fgets(line, sizeof line, f) && line[0] && line[strcspn(line, "\r\n")] == '\0')
        v = mood_strdup(line);
    fclose(f);
    return v;
}

/* Opens and locks DIR/.mood-dl-<hash>.part. */
static int open_part(FILE **fp_out, char **part_out, const char *url, const char *shown,
                     const char *dir)
{
    char hex[65], name[64];
    int fd = -1, err;
    mood_sha256_hex(hex, url, strlen(url));
    snprintf(name, sizeof name, ".mood-dl-%.16s.part", hex);
    if ((err = join_path(part_out, dir, name)) != 0)
        return err;
    if ((fd = open(*part_out, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0)
        return mood_error_set(errno == ENOENT ? MOOD_ENOTFOUND : MOOD_EIO,
                              "%s: cannot create %s: %s", shown, *part_out, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return mood_error_set(MOOD_EIO, "%s: another download of this URL into %s is running",
                              shown, dir);
    }
    if (!(*fp_out = fdopen(fd, "r+b"))) {
        close(fd);
        return mood_error_set(MOOD_EIO, "%s: %s: %s", shown, *part_out, strerror(errno));
    }
    return 0;
}

/* The completed .part: hash check, then renamed to DIR/NAME. */
static int finish_part(char **path_out, const char *part, const char *dir, const char *shown,
                       const char *name, const mood__http_options *o)
{
    mood_file_hashes hs;
    int err;
    if (o && o->expected_sha256) {
        if ((err = mood_hash_file(&hs, part, NULL, NULL)) != 0)
            return err;
        if (strcasecmp(hs.sha256, o->expected_sha256) != 0) {
            unlink(part);
            return mood_error_set(MOOD_EIO,
                                  "%s: the downloaded file's SHA-256 is %s but %s was expected "
                                  "(as published); the download was discarded",
                                  shown, hs.sha256, o->expected_sha256);
        }
    }
    if ((err = join_path(path_out, dir, name)) != 0)
        return err;
    if (rename(part, *path_out) != 0) {
        err = mood_error_set(MOOD_EIO, "%s: cannot rename %s to %s: %s", shown, part, *path_out,
                             strerror(errno));
        mood_free(*path_out);
        *path_out = NULL;
    }
    return err;
}

int mood__http_download(char **path_out, const char *url, const char *dir,
                        const mood__http_options *o)
{
    CURL *h = NULL;
    struct curl_slist *headers = NULL;
    transfer t;
    mood_buf unused;
    char errbuf[CURL_ERROR_SIZE];
    char *shown = mood__http_redact(url), *part = NULL, *name = NULL, *effective = NULL;
    char *valid = NULL; /* the part's validator file */
    FILE *fp = NULL;
    int err;
    *path_out = NULL;
    memset(&t, 0, sizeof t);
    mood_buf_init(&t.errbody);
    mood_buf_init(&unused);
    t.body = &unused;
    if (!shown) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = open_part(&fp, &part, url, shown, dir)) != 0)
        goto done;
    t.fp = fp;
    t.verified = o && o->expected_sha256;
    if (!(valid = mood_malloc(strlen(part) + 8))) {
        err = mood_error_nomem();
        goto done;
    }
    sprintf(valid, "%s.valid", part);
    t.valid_path = valid;
    t.if_range = read_validator(valid);
    if ((err = begin(&h, &headers, &t, url, o, 0, errbuf)) != 0)
        goto done;
    t.headers = headers;
    if ((err = run(h, &t, shown, o)) != 0)
        goto done;
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        err = mood_error_set(MOOD_EIO, "%s: writing %s failed: %s", shown, part, strerror(errno));
        goto done;
    }
    name = mood__http_disposition_name(t.disposition);
    if (!name && curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &effective) == CURLE_OK && effective)
        name = url_name(effective);
    if (!name)
        name = url_name(url);
    if (!name && !(name = mood_strdup("download"))) {
        err = mood_error_nomem();
        goto done;
    }
    err = finish_part(path_out, part, dir, shown, name, o);
done:
    if (fp) {
        /* an empty part (nothing received) is not worth keeping for a resume */
        if (err && part && fseek(fp, 0, SEEK_END) == 0 && ftell(fp) == 0)
            unlink(part);
        if (valid && (!err || access(part, F_OK) != 0))
            unlink(valid); /* its part is finished or gone */
        fclose(fp);
    }
    curl_slist_free_all(t.attempt_headers);
    mood_free(t.validator);
    mood_free(t.if_range);
    mood_free(valid);
    if (headers) /* NULL too when libcurl could not be loaded */
        curl_slist_free_all(headers);
    if (h)
        curl_easy_cleanup(h);
    mood_free(t.disposition);
    mood_buf_dispose(&t.errbody);
    mood_buf_dispose(&unused);
    mood_free(name);
    mood_free(part);
    mood_free(shown);
    return err;
}
