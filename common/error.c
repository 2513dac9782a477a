/*
 * error.c: the thread-local "last error" message, the log sink, and version information.
 * Messages are formatted where the failure happens and name the file, tensor or key involved;
 * callers add context with mood_error_prefix().
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"
#include "mood_config.h"

static _Thread_local char last_error[2048];

const char *mood_error_last(void)
{
    return last_error;
}

void mood_error_clear(void)
{
    last_error[0] = '\0';
}

int mood_error_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

void mood_error_prefix(const char *fmt, ...)
{
    char prefix[512];
    char old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t plen = strlen(prefix);
    if (strncmp(last_error, prefix, plen) == 0 && last_error[plen] == ':')
        return;
    memcpy(old, last_error, sizeof old);
    /* "training checkpoint P" before "P: no space left": P once, not "...P: P: no space" */
    const char *colon = strstr(old, ": ");
    size_t head = colon ? (size_t)(colon - old) : 0, skip = 0;
    if (head > 0 && head <= plen && memcmp(prefix + plen - head, old, head) == 0 &&
        (head == plen || prefix[plen - head - 1] == ' '))
        skip = head + 2;
    /* Built by hand: truncation of an over-long message is intended. */
    if (plen > sizeof last_error - 3)
        plen = sizeof last_error - 3;
    memcpy(last_error, prefix, plen);
    memcpy(last_error + plen, ": ", 2);
    size_t rest = sizeof last_error - plen - 3;
    size_t olen = strnlen(old + skip, rest);
    memcpy(last_error + plen + 2, old + skip, olen);
    last_error[plen + 2 + olen] = '\0';
}

int mood_error_nomem(void)
{
    return mood_error_set(MOOD_ENOMEM, "out of memory");
}

const char *mood_error_name(int code)
{
    switch (code) {
    case MOOD_OK:
        return "ok";
    case MOOD_ENOMEM:
        return "out of memory";
    case MOOD_EINVAL:
        return "invalid argument";
    case MOOD_EIO:
        return "I/O error";
    case MOOD_ENOTFOUND:
        return "not found";
    case MOOD_EFORMAT:
        return "format error";
    case MOOD_EUNSUPPORTED:
        return "unsupported";
    case MOOD_EFAMILY:
        return "wrong base family";
    case MOOD_EBACKEND:
        return "backend error";
    case MOOD_ECANCELLED:
        return "cancelled";
    default:
        return "unknown error";
    }
}

int mood_error_is_user(int code)
{
    return code == MOOD_EINVAL || code == MOOD_EFORMAT || code == MOOD_EUNSUPPORTED ||
           code == MOOD_EFAMILY;
}

static mood_log_fn log_fn;
static void *log_payload;

void mood_log_set(mood_log_fn fn, void *payload)
{
    log_fn = fn;
    log_payload = payload;
}

void mood_log(int level, const char *fmt, ...)
{
    char message[2048];
    va_list ap;
    if (!log_fn)
        return;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    log_fn(level, message, log_payload);
}

const char *mood_version(void)
{
    return MOOD_VERSION_STRING;
}

const char *mood_build_info(void)
{
    return MOOD_BUILD_TYPE " build, sanitizers [" MOOD_SANITIZE_STRING
                           "], cuda archs [" MOOD_CUDA_ARCHS "]";
}
