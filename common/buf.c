/*
 * buf.c: a growable, always NUL-terminated byte buffer, used to build JSON headers, messages
 * and reports without fixed-size arrays.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"

void mood_buf_init(mood_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void mood_buf_dispose(mood_buf *b)
{
    mood_free(b->data);
    mood_buf_init(b);
}

int mood_buf_reserve(mood_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    size_t cap = b->cap ? b->cap : 64;
    char *grown;
    if (need <= b->cap)
        return 0;
    while (cap < need)
        cap *= 2;
    grown = mood_realloc(b->data, cap);
    if (!grown)
        return mood_error_nomem();
    b->data = grown;
    b->cap = cap;
    return 0;
}

int mood_buf_append(mood_buf *b, const void *data, size_t n)
{
    int err = mood_buf_reserve(b, n);
    if (err)
        return err;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int mood_buf_puts(mood_buf *b, const char *s)
{
    return mood_buf_append(b, s, strlen(s));
}

int mood_buf_printf(mood_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n, err;
    /* One vsnprintf when the text fits in the room left (the common case), two otherwise. */
    if ((err = mood_buf_reserve(b, 64)) != 0)
        return err;
    va_start(ap, fmt);
    n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->data[b->len] = '\0';
        return mood_error_set(MOOD_EINVAL, "bad format string");
    }
    if ((size_t)n >= b->cap - b->len) {
        if ((err = mood_buf_reserve(b, (size_t)n)) != 0) {
            b->data[b->len] = '\0';
            return err;
        }
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return 0;
}

/* Characters JSON strings must escape: '"', '\\' and control characters. */
static int json_special(unsigned char c)
{
    return c == '"' || c == '\\' || c < 0x20;
}

int mood_buf_json_string(mood_buf *b, const char *s)
{
    int err = mood_buf_append(b, "\"", 1);
    while (!err && *s) {
        size_t run = 0;
        unsigned char c;
        while (s[run] && !json_special((unsigned char)s[run]))
            run++;
        if (run) { /* copy plain text in one go */
            err = mood_buf_append(b, s, run);
            s += run;
            continue;
        }
        c = (unsigned char)*s++;
        switch (c) {
        case '"':
            err = mood_buf_puts(b, "\\\"");
            break;
        case '\\':
            err = mood_buf_puts(b, "\\\\");
            break;
        case '\n':
            err = mood_buf_puts(b, "\\n");
            break;
        case '\r':
            err = mood_buf_puts(b, "\\r");
            break;
        case '\t':
            err = mood_buf_puts(b, "\\t");
            break;
        case '\b':
            err = mood_buf_puts(b, "\\b");
            break;
        case '\f':
            err = mood_buf_puts(b, "\\f");
            break;
        default:
            err = mood_buf_printf(b, "\\u%04x", c);
        }
    }
    return err ? err : mood_buf_append(b, "\"", 1);
}

char *mood_buf_detach(mood_buf *b)
{
    char *data = b->data;
    if (!data)
        data = mood_strdup("");
    mood_buf_init(b);
    return data;
}
