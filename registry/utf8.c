/*
 * utf8.c: text that enters the registry is UTF-8, because every report (--json, pack manifests)
 * is JSON, and one stray byte makes the whole document unreadable.
 *
 *   - Text a person types (tags, trigger words, templates, names) is refused when it is not
 *     valid UTF-8, with a message that names the argument and shows the bytes as \xNN.
 *   - Text from files other programs made (sidecars, pack manifests, file names) is converted:
 *     what is not valid UTF-8 is read as Windows-1252, the code page Windows tools write and a
 *     superset of Latin-1 for printable text, and a leading UTF-8 byte-order mark is dropped.
 *
 * Validity is decided by mood__utf8_validate (engine/tokenizer.c, strict: no overlongs, no
 * surrogates), the check the prompt parser uses, so the registry accepts exactly what
 * generation accepts. The other UTF-8 scanners (common/image.c, lora/safetensors_read.c,
 * styles/params.c) are private to their files.
 */
#include <ctype.h>
#include <string.h>

#include "engine/unicode_tables.h"
#include "common/args.h"
#include "registry/registry_impl.h"

#define SHOWN_MAX 60 /* bytes of a refused value quoted in the message */

/* Windows-1252 0x80..0x9F; the five bytes it leaves undefined keep their Latin-1 (C1) value,
 * as the WHATWG encoding standard decodes them. 0xA0..0xFF are Latin-1. */
static const uint16_t cp1252_high[32] = {
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
};

int mood__reg_is_utf8(const char *text)
{
    /* the validator sets an error message for the prompt; here invalid text is not an error */
    int ok = mood__utf8_validate(text, strlen(text)) == 0;
    if (!ok)
        mood_error_clear();
    return ok;
}

int mood__reg_text_check(const char *text, const char *what)
{
    static const char hex[] = "0123456789ABCDEF";
    char shown[4 * SHOWN_MAX + 4]; /* each byte as \xNN at most, then "..." */
    size_t n = 0, i;
    if (!text || mood__reg_is_utf8(text))
        return 0;
    /* the refused bytes are not echoed as they are: the message itself must stay UTF-8 */
    for (i = 0; text[i] && i < SHOWN_MAX; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x80) {
            shown[n++] = (char)c;
            continue;
        }
        shown[n++] = '\\';
        shown[n++] = 'x';
        shown[n++] = hex[c >> 4];
        shown[n++] = hex[c & 15];
    }
    snprintf(shown + n, sizeof shown - n, "%s", text[i] ? "..." : "");
    return mood_error_set(MOOD_EINVAL,
                          "%s '%s': not valid UTF-8 (non-ASCII bytes shown as \\xNN); text in "
                          "the registry must be UTF-8: set your terminal or editor to UTF-8",
                          what ? what : "text", shown);
}

/* text read as Windows-1252, in UTF-8 (at most 3 bytes per byte: the table stays below
 * U+10000). */
static char *cp1252_to_utf8(const char *text)
{
    size_t n = strlen(text), j = 0;
    char *out = n <= (SIZE_MAX - 1) / 3 ? mood_malloc(3 * n + 1) : NULL;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        uint32_t cp = *p >= 0x80 && *p < 0xA0 ? cp1252_high[*p - 0x80] : *p;
        j += mood__utf8_encode(cp, out + j);
    }
    out[j] = '\0';
    return out;
}

int mood__reg_utf8_copy(char **out, const char *text, int *converted)
{
    static const char bom[] = "\xEF\xBB\xBF";
    *out = NULL;
    if (converted)
        *converted = 0;
    if (!text)
        return 0;
    if (strncmp(text, bom, 3) == 0)
        text += 3; /* Notepad's mark that a file is UTF-8: not part of the text */
    if (mood__reg_is_utf8(text)) {
        *out = mood_strdup(text);
    } else {
        *out = cp1252_to_utf8(text);
        if (converted)
            *converted = 1;
    }
    return *out ? 0 : mood_error_nomem();
}

int mood__reg_utf8_in_place(char **text, int *converted)
{
    char *copy = NULL;
    int err;
    if (converted)
        *converted = 0;
    if (!*text)
        return 0;
    if ((err = mood__reg_utf8_copy(&copy, *text, converted)) != 0)
        return err;
    mood_free(*text);
    *text = copy;
    return 0;
}

int mood__reg_bind_utf8(sqlite3_stmt *st, int i, const char *s)
{
    char *copy = NULL;
    int err, rc;
    if (!s || mood__reg_is_utf8(s))
        return mood__reg_bind_text(st, i, s);
    if ((err = mood__reg_utf8_copy(&copy, s, NULL)) != 0)
        return err;
    rc = sqlite3_bind_text(st, i, copy, -1, SQLITE_TRANSIENT);
    mood_free(copy);
    return rc == SQLITE_OK ? 0 : mood_error_nomem();
}

/* ----- public ---------------------------------------------------------------------------- */

int mood_registry_text_check(const char *text, const char *what)
{
    return mood__reg_text_check(text, what);
}

int mood_registry_text_to_utf8(char **out, const char *text)
{
    MOOD_ARG_NONNULL(out);
    return mood__reg_utf8_copy(out, text ? text : "", NULL);
}

/* What full case folding (Unicode's CaseFolding.txt, C+F) does beyond lower case, for the
 * characters lower case leaves: ß and ẞ are ss, the ﬁ ligatures their letters, a final sigma
 * and the Greek symbol variants their letter. Not here: the Greek letters with iota subscript
 * (rare in tags), and İ, which folds to i and a dot above, apart from I, as Unicode's default
 * (not Turkish) folding has it. */
static const struct {
    uint16_t from, to[3];
} fold_extra[] = {
    {0x00B5, {0x03BC}},           {0x00DF, {0x73, 0x73}},
    {0x0149, {0x02BC, 0x6E}},     {0x017F, {0x73}},
    {0x0345, {0x03B9}},           {0x03C2, {0x03C3}},
    {0x03D0, {0x03B2}},           {0x03D1, {0x03B8}},
    {0x03D5, {0x03C6}},           {0x03D6, {0x03C0}},
    {0x03F0, {0x03BA}},           {0x03F1, {0x03C1}},
    {0x03F5, {0x03B5}},           {0x0587, {0x0565, 0x0582}},
    {0x1C80, {0x0432}},           {0x1C81, {0x0434}},
    {0x1C82, {0x043E}},           {0x1C83, {0x0441}},
    {0x1C84, {0x0442}},           {0x1C85, {0x0442}},
    {0x1C86, {0x044A}},           {0x1C87, {0x0463}},
    {0x1C88, {0xA64B}},           {0x1E9A, {0x61, 0x02BE}},
    {0x1E9B, {0x1E61}},           {0x1FBE, {0x03B9}},
    {0xFB00, {0x66, 0x66}},       {0xFB01, {0x66, 0x69}},
    {0xFB02, {0x66, 0x6C}},       {0xFB03, {0x66, 0x66, 0x69}},
    {0xFB04, {0x66, 0x66, 0x6C}}, {0xFB05, {0x73, 0x74}},
    {0xFB06, {0x73, 0x74}},       {0xFB13, {0x0574, 0x0576}},
    {0xFB14, {0x0574, 0x0565}},   {0xFB15, {0x0574, 0x056B}},
    {0xFB16, {0x057E, 0x0576}},   {0xFB17, {0x0574, 0x056D}},
};

/* Appends the case folding of lower-case code point c to b. */
static int append_folded(mood_buf *b, uint32_t c)
{
    char enc[4];
    for (size_t i = 0; i < sizeof fold_extra / sizeof fold_extra[0]; i++) {
        if (fold_extra[i].from != c)
            continue;
        for (size_t j = 0; j < 3 && fold_extra[i].to[j]; j++) {
            if (mood_buf_append(b, enc, mood__utf8_encode(fold_extra[i].to[j], enc)) != 0)
                return -1;
        }
        return 0;
    }
    return mood_buf_append(b, enc, mood__utf8_encode(c, enc));
}

/* SQL mood_fold(text): text in NFC and Unicode full case folding (lower case, then
 * fold_extra), for comparing tags: "café" typed composed or decomposed, ΟΔΌΣ and οδός, STRASSE
 * and straße are one tag. Text that is not valid UTF-8 is returned as it is, NULL as NULL. */
static void sql_fold(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const unsigned char *s = sqlite3_value_text(argv[0]);
    size_t n = (size_t)sqlite3_value_bytes(argv[0]), m = 0;
    uint32_t *cps;
    mood_buf b;
    (void)argc;
    if (!s) {
        sqlite3_result_null(ctx);
        return;
    }
    if (!(cps = mood_calloc(n * 5 + 1, sizeof *cps))) { /* the text, then NFC's work room */
        sqlite3_result_error_nomem(ctx);
        return;
    }
    for (size_t at = 0, len; at < n; at += len, m++) {
        if (!(len = mood__utf8_decode(s + at, n - at, &cps[m]))) { /* not UTF-8: byte for byte */
            mood_free(cps);
            sqlite3_result_text(ctx, (const char *)s, (int)n, SQLITE_TRANSIENT);
            return;
        }
    }
    mood__uc_nfc(cps, &m, cps + n);
    mood_buf_init(&b);
    for (size_t i = 0; i < m; i++) {
        uint32_t low[3];
        size_t k = mood__uc_to_lower(cps[i], low);
        for (size_t j = 0; j < k; j++) {
            if (append_folded(&b, low[j]) != 0) {
                mood_buf_dispose(&b);
                mood_free(cps);
                sqlite3_result_error_nomem(ctx);
                return;
            }
        }
    }
    sqlite3_result_text(ctx, b.data ? b.data : "", (int)b.len, SQLITE_TRANSIENT);
    mood_buf_dispose(&b);
    mood_free(cps);
}

/* Collation mood_natural: names as people sort them: letters without regard to ASCII case, runs
 * of digits by their value (s9 before s10), then the bytes, so that no two names tie. */
static int natural_cmp(void *user, int na, const void *va, int nb, const void *vb)
{
    const unsigned char *a = va, *b = vb;
    int i = 0, j = 0, n = na < nb ? na : nb, c;
    (void)user;
    while (i < na && j < nb) {
        if (isdigit(a[i]) && isdigit(b[j])) {
            int si = i, sj = j, ei, ej;
            while (si < na && a[si] == '0')
                si++;
            while (sj < nb && b[sj] == '0')
                sj++;
            for (ei = si; ei < na && isdigit(a[ei]);)
                ei++;
            for (ej = sj; ej < nb && isdigit(b[ej]);)
                ej++;
            if (ei - si != ej - sj)
                return (ei - si) - (ej - sj);
            if ((c = memcmp(a + si, b + sj, (size_t)(ei - si))) != 0)
                return c;
            i = ei;
            j = ej;
            continue;
        }
        if (tolower(a[i]) != tolower(b[j]))
            return tolower(a[i]) - tolower(b[j]);
        i++;
        j++;
    }
    if ((na - i) != (nb - j))
        return (na - i) - (nb - j);
    c = memcmp(a, b, (size_t)n);
    return c ? c : na - nb;
}

int mood__reg_functions(sqlite3 *db)
{
    return sqlite3_create_function(db, "mood_fold", 1,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
                                   sql_fold, NULL, NULL) == SQLITE_OK &&
                   sqlite3_create_collation(db, "mood_natural", SQLITE_UTF8, NULL, natural_cmp) ==
                       SQLITE_OK
               ? 0
               : mood_error_nomem();
}
