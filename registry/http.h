/*
 * http.h: the HTTP client of the registry (not installed): GET of small JSON answers, POST of a
 * JSON lookup (Civitai's batch by hash), and file downloads, over libcurl. Only registry/ uses
 * it.
 *
 * Every request sends `User-Agent: mood/VERSION` (a plain, honest agent: Civitai answers
 * browser-looking agents with HTML and login redirects, ecosystem.md §1.7). When the caller asks
 * for it and CIVITAI_TOKEN is set, `Authorization: Bearer TOKEN` is sent to the first host only:
 * libcurl does not forward a custom Authorization header across a redirect to another host, so
 * the pre-signed storage URL never sees it. The token is never logged, stored or put in an error
 * message, and URLs in messages have their `token=` query values blanked.
 *
 * Retries: 429, 5xx and transient transfer failures (connection refused or reset, timeouts, a
 * body cut off) are retried up to 4 times with exponential backoff (1, 2, 4, 8 units, or the
 * Retry-After the server gave, capped at 60 units). A unit is 1 s; MOOD_HTTP_RETRY_MS sets it
 * (tests use a few ms). Other statuses fail at once with a message for the common cases:
 * 401 (token needed or refused), 403 (early access or no permission), 404, 410 (removed).
 *
 * Downloads go to DIR/.mood-dl-<hash of URL>.part, locked while in use; a later attempt (a retry
 * or another run) resumes from its size with `Range: bytes=N-` and starts over when the server
 * answers 200 instead of 206. When complete the file is checked against the expected SHA-256
 * (a mismatch removes it: nothing is kept) and renamed to DIR/NAME, NAME taken from
 * Content-Disposition (RFC 6266, filename*=UTF-8'' preferred) or else the URL's last segment,
 * sanitized: no path separators or control characters, no leading dots.
 */
#ifndef MOOD_REGISTRY_HTTP_H
#define MOOD_REGISTRY_HTTP_H

#include "common/common.h"

typedef struct mood__http_options {
    int auth;                    /* send CIVITAI_TOKEN as a bearer token when set */
    const char *expected_sha256; /* downloads: hex, any case; NULL to skip the check */
    size_t max_body;             /* GET, POST: largest body accepted (0: 32 MiB) */
    int retries;                 /* retries after the first attempt; -1: MOOD_HTTP_RETRIES or 4 */
    mood_progress_fn progress;   /* downloads: bytes */
    void *payload;
} mood__http_options;

/* GETs url into body (NUL-terminated). *status_out receives the final HTTP status. A non-2xx
 * answer after retries is an error: MOOD_ENOTFOUND for 404/410, MOOD_EIO otherwise; the message
 * names the URL, the status and the server's "error"/"message" text when it sent JSON. */
MOOD_WARN_UNUSED int mood__http_get(mood_buf *body, long *status_out, const char *url,
                                    const mood__http_options *o);

/* POSTs the JSON text json (NUL-terminated, sent as application/json) to url, the answer into
 * body: as mood__http_get in all else (retries, statuses, errors, *status_out). For lookups,
 * which may be sent again: a retry sends the same body. */
MOOD_WARN_UNUSED int mood__http_post_json(mood_buf *body, long *status_out, const char *url,
                                          const char *json, const mood__http_options *o);

/* Downloads url into directory dir (which must exist). *path_out (caller frees with mood_free)
 * receives the final file's path. Errors as for mood__http_get; a hash mismatch is MOOD_EIO. */
MOOD_WARN_UNUSED int mood__http_download(char **path_out, const char *url, const char *dir,
                                         const mood__http_options *o);

/* The file name a Content-Disposition header value gives, sanitized (NULL when none). Exposed
 * for tests. Caller frees with mood_free. */
char *mood__http_disposition_name(const char *value);
/* A file name made safe: path separators and control characters replaced by '_', leading dots
 * and spaces dropped; NULL when nothing is left. Caller frees with mood_free. */
char *mood__http_sanitize_name(const char *name, size_t len);
/* url with the values of `token=` query parameters replaced by "***". Caller frees. */
char *mood__http_redact(const char *url);

#endif /* MOOD_REGISTRY_HTTP_H */
