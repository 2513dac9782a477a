/*
 * params_parse.c: reading the A1111 generation-parameters text (include/mood/params.h has the
 * rules) as A1111 1.10's parse_generation_parameters does, with its key-value regular expression
 * re-implemented as a scanner over code points.
 *
 * The scanner: re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line)
 * needs no backtracking search. At a start position, \s* skips white space; the key is the
 * longest run of key characters after a \w and matches only when a ':' follows it (a shorter run
 * would be followed by a key character, not ':'); after ':' and white space, the quoted branch
 * matches exactly when the string's closing quote is followed by ',' or the end, else the
 * [^,]* branch takes everything up to the next ','. When a start fails, every start up to where
 * the attempt stopped fails the same way, so the scan resumes there: the whole line is read in
 * linear time.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <string.h>

#include "common/args.h"
#include "engine/unicode_tables.h"
#include "styles/params_internal.h"

/* ----- code points ------------------------------------------------------------------------- */

static int is_key_char(uint32_t c)
{
    return c == ' ' || c == '-' || c == '/' || mood__uc_is_word(c);
}

/* ----- the key-value pattern --------------------------------------------------------------- */

typedef struct pair {
    span key, value;
} pair;

/* Index after the JSON object or array starting at s[i] ('{' or '['), brackets balanced and
 * matched outside strings; 0 when it does not close on this line. */
size_t mood__params_json_extent(const char *s, size_t n, size_t i)
{
    char stack[64];
    int depth = 0, in_string = 0;
    for (; i < n; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            if (depth == (int)sizeof stack)
                return 0;
            stack[depth++] = c == '{' ? '}' : ']';
        } else if (c == '}' || c == ']') {
            if (depth == 0 || stack[depth - 1] != c)
                return 0;
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

/* The value after "key:" and white space at v: Civitai's whole JSON value, the quoted branch or
 * the up-to-comma branch. Sets *next past the value and its ','. */
static span match_value(const char *s, size_t n, size_t v, size_t *next)
{
    span value = {v, v};
    size_t e;
    if (v < n && (s[v] == '{' || s[v] == '[') && (e = mood__params_json_extent(s, n, v)) != 0 &&
        (e == n || s[e] == ',')) {
        value.e = e;
    } else {
        size_t q = v + 1;
        int tokens = 0;
        uint32_t cp;
        if (v < n && s[v] == '"') {
            while (q < n && s[q] != '"') {
                if (s[q] == '\\' && q + 1 >= n)
                    break; /* \\. needs a character */
                q += s[q] == '\\' ? 1 + mood__params_next_cp(s, n, q + 1, &cp)
                                  : mood__params_next_cp(s, n, q, &cp);
                tokens++;
            }
        }
        if (v < n && s[v] == '"' && q < n && s[q] == '"' && tokens > 0 &&
            (q + 1 == n || s[q + 1] == ',')) {
            value.e = q + 1;
        } else {
            for (value.e = v; value.e < n && s[value.e] != ',';)
                value.e++;
        }
    }
    *next = value.e < n ? value.e + 1 : n;
    return value;
}

/* One attempt of the pattern at i. Returns 1 with *m on a match; 0 otherwise. Either way *next
 * is where the scan goes on (after a failure, every start before it fails too). */
static int match_pair(const char *s, size_t n, size_t i, pair *m, size_t *next)
{
    size_t j = mood__params_skip_space(s, n, i), k, first;
    uint32_t cp;
    if (j >= n) {
        *next = n;
        return 0;
    }
    first = mood__params_next_cp(s, n, j, &cp);
    if (!mood__uc_is_word(cp)) {
        *next = j + first;
        return 0;
    }
    for (k = j + first; k < n;) {
        size_t len = mood__params_next_cp(s, n, k, &cp);
        if (!is_key_char(cp))
            break;
        k += len;
    }
    if (k == j + first || k >= n || s[k] != ':') {
        *next = k;
        return 0;
    }
    m->key = (span){j, k};
    m->value = match_value(s, n, mood__params_skip_space(s, n, k + 1), next);
    return 1;
}

/* re.findall over one line. */
static int find_pairs(pair **out, size_t *count, const char *s, size_t b, size_t e)
{
    size_t cap = 0, i = b;
    *out = NULL;
    *count = 0;
    while (i < e) {
        pair m;
        if (match_pair(s, e, i, &m, &i)) {
            if (mood_array_reserve(out, &cap, *count, sizeof **out, 16) != 0)
                return MOOD_ENOMEM;
            (*out)[(*count)++] = m;
        }
    }
    return 0;
}

/* True when s[0..n) is exactly a key of the pattern (\w[\w \-/]+). */
int mood__params_valid_key(const char *s, size_t n)
{
    pair m;
    size_t next;
    char *probe = mood_malloc(n + 2);
    int ok;
    if (!probe)
        return 0;
    memcpy(probe, s, n);
    probe[n] = ':';
    probe[n + 1] = '\0';
    ok = n > 0 && mood__params_utf8_at(s, n, 0, &(uint32_t){0}) &&
         match_pair(probe, n + 1, 0, &m, &next) && m.key.b == 0 && m.key.e == n;
    mood_free(probe);
    return ok;
}

/* ----- JSON strings ------------------------------------------------------------------------ */

static int hex4(const char *s, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

static int put_utf8(mood_buf *b, uint32_t c)
{
    char u[4];
    size_t n;
    if (c < 0x80)
        u[0] = (char)c, n = 1;
    else if (c < 0x800)
        u[0] = (char)(0xC0 | c >> 6), u[1] = (char)(0x80 | (c & 0x3F)), n = 2;
    else if (c < 0x10000)
        u[0] = (char)(0xE0 | c >> 12), u[1] = (char)(0x80 | ((c >> 6) & 0x3F)),
        u[2] = (char)(0x80 | (c & 0x3F)), n = 3;
    else
        u[0] = (char)(0xF0 | c >> 18), u[1] = (char)(0x80 | ((c >> 12) & 0x3F)),
        u[2] = (char)(0x80 | ((c >> 6) & 0x3F)), u[3] = (char)(0x80 | (c & 0x3F)), n = 4;
    return mood_buf_append(b, u, n);
}

/* One escape after '\' at s[i]; advances *i. Returns 0, -1 when not valid JSON, or an error. */
static int json_escape(mood_buf *b, const char *s, size_t n, size_t *i)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *hit = *i < n ? strchr(from, s[*i]) : NULL;
    uint32_t c, lo;
    if (hit && *hit) {
        (*i)++;
        return mood_buf_append(b, &to[hit - from], 1);
    }
    if (*i >= n || s[*i] != 'u' || n - *i < 5 || hex4(s + *i + 1, &c) != 0)
        return -1;
    *i += 5;
    if (c >= 0xD800 && c <= 0xDBFF) {
        if (n - *i < 6 || s[*i] != '\\' || s[*i + 1] != 'u' || hex4(s + *i + 2, &lo) != 0 ||
            lo < 0xDC00 || lo > 0xDFFF)
            return -1; /* a lone surrogate has no UTF-8 form */
        *i += 6;
        c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
    } else if ((c >= 0xDC00 && c <= 0xDFFF) || c == 0) {
        return -1; /* lone low surrogate; NUL cannot live in a C string */
    }
    return put_utf8(b, c);
}

/* json.loads of s[0..n) when that is exactly one JSON string (Python's strict rules: no raw
 * control characters). *out is NULL when it is not (A1111 then keeps the text as written). */
static int json_unquote(char **out, const char *s, size_t n)
{
    mood_buf b;
    size_t i = 1;
    int r = 0;
    *out = NULL;
    if (n < 2 || s[0] != '"' || s[n - 1] != '"')
        return 0;
    mood_buf_init(&b);
    if ((r = mood_buf_reserve(&b, n)) != 0)
        return r;
    while (i < n - 1 && r == 0) {
        size_t run = i;
        while (run < n - 1 && s[run] != '"' && s[run] != '\\' && (unsigned char)s[run] >= 0x20)
            run++;
        if (run > i) {
            r = mood_buf_append(&b, s + i, run - i);
            i = run;
        } else if (s[i] == '\\') {
            i++;
            r = json_escape(&b, s, n - 1, &i);
        } else {
            r = -1; /* an unescaped quote before the end, or a control character */
        }
    }
    if (r == 0 && (r = mood_buf_append(&b, "", 0)) == 0)
        *out = mood_buf_detach(&b);
    mood_buf_dispose(&b);
    return r == -1 ? 0 : r;
}

/* ----- parsing ----------------------------------------------------------------------------- */

/* Adds one stripped prompt line: after "Negative prompt:" every line is negative. */
static int add_prompt_line(mood_buf *prompt, mood_buf *negative, int *in_negative, const char *s,
                           span line)
{
    static const char tag[] = "Negative prompt:";
    mood_buf *dst;
    line = mood__params_strip(s, line);
    if (line.e - line.b >= sizeof tag - 1 && !memcmp(s + line.b, tag, sizeof tag - 1)) {
        *in_negative = 1;
        line = mood__params_strip(s, (span){line.b + sizeof tag - 1, line.e});
    }
    dst = *in_negative ? negative : prompt;
    if (dst->len && mood_buf_append(dst, "\n", 1) != 0)
        return MOOD_ENOMEM;
    return mood_buf_append(dst, s + line.b, line.e - line.b);
}

static int set_prompts(mood_params *p, mood_buf *prompt, mood_buf *negative)
{
    if (mood_buf_append(prompt, "", 0) != 0 || mood_buf_append(negative, "", 0) != 0)
        return MOOD_ENOMEM;
    mood__params_free_text(p->prompt);
    mood__params_free_text(p->negative_prompt);
    p->prompt = mood_buf_detach(prompt);
    p->negative_prompt = mood_buf_detach(negative);
    return 0;
}

/* The lines of s[lines) (split at '\n' as str.split does: "a\n" is "a" and ""; none at all
 * when has_lines is 0), then the last line when it holds no details. */
static int parse_prompts(mood_params *p, const char *s, int has_lines, span lines, span last,
                         int last_is_prompt)
{
    mood_buf prompt, negative;
    int in_negative = 0, err = 0;
    mood_buf_init(&prompt);
    mood_buf_init(&negative);
    for (size_t b = lines.b; has_lines && !err;) {
        const char *nl = memchr(s + b, '\n', lines.e - b);
        size_t e = nl ? (size_t)(nl - s) : lines.e;
        err = add_prompt_line(&prompt, &negative, &in_negative, s, (span){b, e});
        has_lines = nl != NULL;
        b = e + 1;
    }
    if (!err && last_is_prompt)
        err = add_prompt_line(&prompt, &negative, &in_negative, s, last);
    if (!err)
        err = set_prompts(p, &prompt, &negative);
    mood_buf_dispose(&prompt);
    mood_buf_dispose(&negative);
    return err;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int same_key(const char *s, span a, span b)
{
    return a.e - a.b == b.e - b.b && !memcmp(s + a.b, s + b.b, a.e - a.b);
}

/* A1111's result dict, in place: pairs with an empty value go (A1111 fails on v[0] and skips
 * them), a repeated key keeps its first place and takes its last value. Hashing keeps hostile
 * texts with many keys linear. */
static int dedupe_pairs(pair *pairs, size_t *n, const char *s)
{
    size_t cap = 16, out = 0, *slots;
    while (cap < 2 * *n)
        cap *= 2;
    if (!(slots = mood_calloc(cap, sizeof *slots)))
        return MOOD_ENOMEM;
    for (size_t i = 0; i < *n; i++) {
        pair m = pairs[i];
        size_t h = (size_t)hash_bytes(s + m.key.b, m.key.e - m.key.b) & (cap - 1);
        if (m.value.e == m.value.b)
            continue;
        while (slots[h] && !same_key(s, pairs[slots[h] - 1].key, m.key))
            h = (h + 1) & (cap - 1);
        if (slots[h]) {
            pairs[slots[h] - 1].value = m.value;
        } else {
            pairs[out++] = m;
            slots[h] = out;
        }
    }
    *n = out;
    mood_free(slots);
    return 0;
}

/* One pair of the details line, value unquoted as A1111 does. */
static int apply_pair(mood_params *p, const char *s, const pair *m, int *prev_rank)
{
    char *key = mood_strndup(s + m->key.b, m->key.e - m->key.b), *raw = NULL, *value = NULL;
    size_t n = m->value.e - m->value.b;
    enum field f = F_NONE;
    int err = 0;
    if (!key || !(raw = mood_strndup(s + m->value.b, n))) {
        err = mood_error_nomem();
        goto done;
    }
    if (raw[0] == '"' && raw[n - 1] == '"' && (err = json_unquote(&value, raw, n)) != 0)
        goto done;
    err = mood__params_set_pair(p, key, value ? value : raw, 0, 2 * *prev_rank + 1, &f);
    if (!err && f != F_NONE)
        *prev_rank = mood__params_canon_index(key);
done:
    mood_free(key);
    mood_free(raw);
    mood_free(value);
    return err;
}

/* Fills absent model/LoRA/TI hashes from Civitai's `Hashes: {...}` object. */
static int derive_from_hashes(mood_params *p)
{
    const mood_params_extra *x = mood__params_find_extra(p, "Hashes");
    int want_model, want_lora, want_ti, err = 0;
    const cJSON *item;
    cJSON *root;
    if (!x || !(root = cJSON_Parse(x->value)))
        return 0;
    want_model = !p->model_hash && !mood__params_find_extra(p, "Model hash");
    want_lora = !p->n_lora_hashes && !mood__params_find_extra(p, "Lora hashes");
    want_ti = !p->n_ti_hashes && !mood__params_find_extra(p, "TI hashes");
    cJSON_ArrayForEach(item, root)
    {
        const char *k = item->string, *v = cJSON_GetStringValue(item);
        if (!k || !v || err)
            continue;
        if (want_model && !strcmp(k, "model")) {
            err = mood__params_replace_string(&p->model_hash, v);
            p->from_hashes |= MOOD_PARAMS_FROM_HASHES_MODEL;
        } else if (want_lora && !strncmp(k, "lora:", 5)) {
            err = mood__params_hashes_push(&p->lora_hashes, &p->n_lora_hashes, &p->cap_lora_hashes,
                                           k + 5, strlen(k + 5), v, strlen(v));
            p->from_hashes |= MOOD_PARAMS_FROM_HASHES_LORA;
        } else if (want_ti && !strncmp(k, "embed:", 6)) {
            err = mood__params_hashes_push(&p->ti_hashes, &p->n_ti_hashes, &p->cap_ti_hashes, k + 6,
                                           strlen(k + 6), v, strlen(v));
            p->from_hashes |= MOOD_PARAMS_FROM_HASHES_TI;
        }
    }
    cJSON_Delete(root);
    return err;
}

/* A1111's reading of text (the last line as the details, see params.h). */
static int parse_a1111(mood_params *out, const char *text)
{
    pair *pairs = NULL;
    size_t n_pairs = 0, n, nl;
    span all, last;
    int err, prev_rank = -1;
    mood_params_init(out);
    n = strlen(text);
    all = mood__params_strip(text, (span){0, n});
    for (nl = all.e; nl > all.b && text[nl - 1] != '\n';)
        nl--;
    last = (span){nl, all.e};
    if ((err = find_pairs(&pairs, &n_pairs, text, last.b, last.e)) != 0)
        goto done;
    out->has_details = n_pairs >= 3;
    if ((err = dedupe_pairs(pairs, &n_pairs, text)) != 0)
        goto done;
    err = parse_prompts(out, text, nl > all.b, (span){all.b, nl > all.b ? nl - 1 : all.b}, last,
                        !out->has_details);
    for (size_t i = 0; out->has_details && i < n_pairs && !err; i++)
        err = apply_pair(out, text, &pairs[i], &prev_rank);
    if (!err)
        err = derive_from_hashes(out);
done:
    mood_free(pairs);
    if (err) {
        mood_params_dispose(out);
        if (err == MOOD_ENOMEM)
            err = mood_error_nomem();
    }
    return err;
}

/* Whether s[i] starts `word` after ", " / "," / ". " / "." (one-line infotext, as Civitai splits
 * it). */
static int after_punct(const char *s, size_t i, const char *word)
{
    size_t j = i;
    if (strncmp(s + i, word, strlen(word)) != 0 || i == 0)
        return 0;
    if (s[j - 1] == ' ')
        j--;
    return j > 0 && (s[j - 1] == ',' || s[j - 1] == '.');
}

/* Civitai's reading of a text A1111's finds no details in (ecosystem.md 4.2): a one-line text is
 * broken before "Negative prompt:" and "Steps:" that follow ',' or '.'; the details line is the
 * first line that starts with "Steps: ", and what follows it (Dynamic Prompts' "Template:" and
 * "Negative Template:" lines) is left out. NULL when there is no such line, else malloc'd. */
static char *civitai_layout(const char *text)
{
    size_t n = strlen(text), o = 0;
    char *t = mood_malloc(2 * n + 1), *line;
    int one_line = !strchr(text, '\n'); /* only a one-line text is broken up */
    if (!t)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (one_line &&
            (after_punct(text, i, "Negative prompt:") || after_punct(text, i, "Steps: "))) {
            while (o > 0 && t[o - 1] == ' ')
                o--;
            t[o++] = '\n';
        }
        t[o++] = text[i];
    }
    t[o] = '\0';
    for (line = t; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, "Steps: ", 7) == 0) {
            char *end = strchr(line, '\n');
            if (end)
                *end = '\0';
            return t;
        }
    }
    mood_free(t);
    return NULL;
}

/* Whether the text's last non-blank line starts with "Steps: ", as every A1111 details line does.
 */
static int steps_last(const char *text)
{
    size_t n = strlen(text);
    while (n > 0 && isspace((unsigned char)text[n - 1]))
        n--;
    while (n > 0 && text[n - 1] != '\n')
        n--;
    while (isspace((unsigned char)text[n]) && text[n] != '\0')
        n++;
    return strncmp(text + n, "Steps: ", 7) == 0;
}

int mood_params_parse(mood_params *out, const char *text)
{
    int err;
    MOOD_ARG_NONNULL(out);
    mood_params_init(out);
    MOOD_ARG_NONNULL(text);
    if ((err = mood__params_check_utf8(text, "the text")) != 0)
        return err;
    return parse_a1111(out, text);
}

int mood_params_parse_lenient(mood_params *out, const char *text)
{
    char *civitai = NULL;
    int err = mood_params_parse(out, text);
    if (err || (out->has_details && steps_last(text)))
        return err;
    if (!strstr(text, "Steps: ") || !(civitai = civitai_layout(text)))
        return 0;
    mood_params_dispose(out);
    err = parse_a1111(out, civitai);
    if (!err && out->has_details)
        out->civitai_layout = 1;
    else if (!err) { /* none there either: as A1111 reads it */
        mood_params_dispose(out);
        err = parse_a1111(out, text);
    }
    mood_free(civitai);
    return err;
}
