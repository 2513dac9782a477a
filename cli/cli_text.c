/*
 * cli_text.c: control characters in text from files made visible before a person's terminal
 * interprets them, and --json text written with the ones JSON leaves raw escaped (cli_text.h);
 * the errors and warnings every command reports through here (each warning once, all of them
 * kept for --json's "warnings").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli_text.h"
#include "engine/unicode_tables.h"

/* Length of the UTF-8 sequence at s (1-4), or 0 when s does not start a valid one. */
static size_t utf8_len(const unsigned char *s)
{
    size_t n = s[0] < 0xC2 ? 0 : s[0] < 0xE0 ? 2 : s[0] < 0xF0 ? 3 : s[0] < 0xF5 ? 4 : 0;
    unsigned cp;
    if (!n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    }
    cp = s[0] & (0x7Fu >> n);
    for (size_t i = 1; i < n; i++)
        cp = cp << 6 | (s[i] & 0x3Fu);
    /* overlong forms and surrogates would slip a control character past the check */
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || (cp >= 0xD800 && cp <= 0xDFFF) ||
        cp > 0x10FFFF)
        return 0;
    return n;
}

/* Whether the 3-byte sequence at p is a line or paragraph separator (U+2028/9) or a bidi
 * embedding, override or isolate (U+202A-U+202E, U+2066-U+2069): characters that move or break
 * the text around them, so a name could pass for another line or read backwards. */
static int layout_control(const unsigned char *p)
{
    return p[0] == 0xE2 && ((p[1] == 0x80 && p[2] >= 0xA8 && p[2] <= 0xAE) ||
                            (p[1] == 0x81 && p[2] >= 0xA6 && p[2] <= 0xA9));
}

char *cli_text_visible(const char *s, int multiline)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s), at = 0;
    /* the worst case, every byte a 4-character \xNN */
    char *out = malloc(4 * len + 1);
    if (!out)
        return NULL;
    while (*p) {
        size_t n = *p < 0x80 ? 1 : utf8_len(p);
        if (*p == 0x7F || (*p < 0x20 && !(multiline && (*p == '\n' || *p == '\t'))) || n == 0) {
            at += (size_t)sprintf(out + at, "\\x%02x", *p);
            p++;
        } else if (n == 2 && p[0] == 0xC2 && p[1] < 0xA0) { /* C1: U+0080-U+009F */
            at += (size_t)sprintf(out + at, "\\u%04x", p[1]);
            p += 2;
        } else if (n == 3 && layout_control(p)) {
            at += (size_t)sprintf(out + at, "\\u%04x",
                                  0x2000u | (p[1] & 0x3Fu) << 6 | (p[2] & 0x3Fu));
            p += 3;
        } else {
            memcpy(out + at, p, n);
            at += n;
            p += n;
        }
    }
    out[at] = '\0';
    return out;
}

static int listed(const char *key, const char *const *keys)
{
    for (; key && keys && *keys; keys++) {
        if (strcmp(key, *keys) == 0)
            return 1;
    }
    return 0;
}

/* Out of memory: what is not printable ASCII becomes '?' in place (the string never grows), so
 * that nothing is printed raw. */
static void blank(char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7F)
            *s = '?';
    }
}

/* The key of an object member (a tensor name in inspect's unmatched groups, say). */
static void clean_key(cJSON *item)
{
    char *v, *copy = NULL;
    if (!item->string || (item->type & cJSON_StringIsConst))
        return;
    v = cli_text_visible(item->string, 0);
    if (v && strcmp(v, item->string) == 0) {
        free(v);
        return;
    }
    if (v && (copy = cJSON_malloc(strlen(v) + 1)) != NULL) {
        strcpy(copy, v);
        cJSON_free(item->string);
        item->string = copy;
    } else {
        blank(item->string);
    }
    free(v);
}

void cli_text_clean_json(cJSON *v, const char *const *multiline)
{
    for (; v; v = v->next) {
        clean_key(v);
        if (cJSON_IsString(v) && v->valuestring) {
            char *shown = cli_text_visible(v->valuestring, listed(v->string, multiline));
            if (!shown || (strcmp(shown, v->valuestring) != 0 && !cJSON_SetValuestring(v, shown)))
                blank(v->valuestring);
            free(shown);
        }
        cli_text_clean_json(v->child, multiline);
    }
}

static char **warnings_said; /* every warning reported, for --json */
static size_t n_warnings_said;

/* Whether the warning was said before; else it is remembered. */
static int warning_said(const char *message)
{
    char **grown;
    for (size_t i = 0; i < n_warnings_said; i++)
        if (strcmp(warnings_said[i], message) == 0)
            return 1;
    if ((grown = realloc(warnings_said, (n_warnings_said + 1) * sizeof *grown)) == NULL)
        return 0; /* out of memory: said on stderr, not listed */
    warnings_said = grown;
    if ((warnings_said[n_warnings_said] = strdup(message)) != NULL)
        n_warnings_said++;
    return 0;
}

void cli_text_report(const char *kind, const char *message)
{
    char *v;
    if (strcmp(kind, "warning") == 0 && warning_said(message))
        return; /* each warning once: two tags of one LoRA, a board read twice */
    v = cli_text_visible(message, 0); /* one line: a newline in a quoted name shows as \x0A */
    if (isatty(STDERR_FILENO)) /* a progress line being drawn goes: the message starts a line */
        fputs("\r\033[K", stderr);
    fprintf(stderr, "mood: %s: %s\n", kind, v ? v : "(message not shown: out of memory)");
    free(v);
}

void cli_log_sink(int level, const char *message, void *payload)
{
    (void)payload;
    if (level <= 1)
        cli_text_report(level == 0 ? "error" : "warning", message);
    else if (getenv("MOOD_VERBOSE"))
        cli_text_report("info", message);
}

size_t cli_warnings_said(const char *const **list)
{
    *list = (const char *const *)warnings_said;
    return n_warnings_said;
}

void cli_warnings_json(cJSON *o)
{
    cJSON *arr;
    if (n_warnings_said == 0 || !(arr = cJSON_AddArrayToObject(o, "warnings")))
        return;
    for (size_t i = 0; i < n_warnings_said; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(warnings_said[i]));
}

/* The whole text, not string by string: outside its strings JSON text is ASCII (punctuation,
 * numbers, literals), so these bytes can only be inside a string, where \uXXXX stands for the
 * same character. cJSON passes them through (it escapes only below U+0020, " and \). */
int cli_json_wanted, cli_json_printed;

int cli_text_json_puts(const char *json)
{
    const unsigned char *p = (const unsigned char *)json, *run = p;
    int err = 0;
    cli_json_printed = 1;
    for (; *p; p++) {
        unsigned cp;
        size_t n;
        if (p[0] == 0x7F) {
            cp = 0x7F;
            n = 1;
        } else if (p[0] == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F) { /* C1 */
            cp = p[1];
            n = 2;
        } else if (p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
            /* the line and paragraph separators */
            cp = 0x2000u | (p[2] & 0x3Fu);
            n = 3;
        } else {
            continue;
        }
        if (fwrite(run, 1, (size_t)(p - run), stdout) != (size_t)(p - run) ||
            printf("\\u%04x", cp) < 0)
            err = EOF;
        p += n - 1;
        run = p + 1;
    }
    if (fputs((const char *)run, stdout) == EOF || putchar('\n') == EOF)
        err = EOF;
    return err;
}

/* ----- columns ---------------------------------------------------------------------------- */

static int char_width(uint32_t c)
{
    if (c == 0x200D || (c >= 0xFE00 && c <= 0xFE0F) || mood__uc_ccc_of(c)) /* joiners, marks */
        return 0;
    if ((c >= 0x1100 && c <= 0x115F) || (c >= 0x2E80 && c <= 0xA4CF) ||
        (c >= 0xAC00 && c <= 0xD7A3) || (c >= 0xF900 && c <= 0xFAFF) ||
        (c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFF60) ||
        (c >= 0xFFE0 && c <= 0xFFE6) || (c >= 0x1F300 && c <= 0x1FAFF) ||
        (c >= 0x20000 && c <= 0x3FFFD))
        return 2;
    return 1;
}

/* The bytes of s that fit in `width` columns (whole characters), and their columns. */
static size_t fit(const char *s, int width, int *used)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s), at = 0;
    *used = 0;
    while (at < len) {
        uint32_t c = '?';
        size_t n = mood__utf8_decode(p + at, len - at, &c);
        int w = char_width(c);
        if (*used + w > width)
            break;
        *used += w;
        at += n ? n : 1;
    }
    return at;
}

int cli_text_width(const char *s)
{
    int used;
    fit(s, 1 << 30, &used);
    return used;
}

void cli_text_cell(FILE *f, const char *s, int width, int cut)
{
    int used, total = cli_text_width(s);
    if (cut && total > width && width >= 1) {
        size_t n = fit(s, width - 1, &used);
        fprintf(f, "%.*s\u2026%*s", (int)n, s, width - 1 - used, "");
        return;
    }
    fprintf(f, "%s%*s", s, total < width ? width - total : 0, "");
}
