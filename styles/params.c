/*
 * params.c: the A1111 generation-parameters text (include/mood/params.h has the rules): parsing
 * as A1111 1.10's parse_generation_parameters does, with its key-value regular expression
 * re-implemented as a scanner over code points, and formatting in A1111's layout.
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
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "engine/unicode_tables.h"
#include "mood/params.h"

/* ----- code points ------------------------------------------------------------------------- */

/* Decodes one strictly valid UTF-8 character at s[i..n); returns its length, 0 if invalid. */
static size_t utf8_at(const char *str, size_t n, size_t i, uint32_t *cp)
{
    const uint8_t *s = (const uint8_t *)str + i;
    size_t len, avail = n - i;
    uint32_t c = s[0], min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, c &= 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, c &= 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, c &= 0x07, min = 0x10000;
    else
        return 0;
    if (avail < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* Python's str.isspace() (also re's \s for str patterns and what str.strip() removes). */
static int is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

static int is_key_char(uint32_t c)
{
    return c == ' ' || c == '-' || c == '/' || mood__uc_is_word(c);
}

/* Text already validated: decoding cannot fail. */
static size_t next_cp(const char *s, size_t n, size_t i, uint32_t *cp)
{
    size_t k = utf8_at(s, n, i, cp);
    return k ? k : 1;
}

static size_t skip_space(const char *s, size_t n, size_t i)
{
    uint32_t cp;
    size_t k;
    while (i < n && (k = next_cp(s, n, i, &cp), is_space(cp)))
        i += k;
    return i;
}

typedef struct span {
    size_t b, e; /* [b, e) */
} span;

/* str.strip() of s[b..e). */
static span strip(const char *s, span in)
{
    span out = {in.e, in.e};
    size_t i = skip_space(s, in.e, in.b);
    out.b = i;
    while (i < in.e) {
        uint32_t cp;
        size_t k = next_cp(s, in.e, i, &cp);
        i += k;
        if (!is_space(cp))
            out.e = i;
    }
    if (out.e < out.b)
        out.e = out.b;
    return out;
}

/* ----- the key-value pattern --------------------------------------------------------------- */

typedef struct pair {
    span key, value;
} pair;

/* Index after the JSON object or array starting at s[i] ('{' or '['), brackets balanced and
 * matched outside strings; 0 when it does not close on this line. */
static size_t json_extent(const char *s, size_t n, size_t i)
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
    if (v < n && (s[v] == '{' || s[v] == '[') && (e = json_extent(s, n, v)) != 0 &&
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
                q += s[q] == '\\' ? 1 + next_cp(s, n, q + 1, &cp) : next_cp(s, n, q, &cp);
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
    size_t j = skip_space(s, n, i), k, first;
    uint32_t cp;
    if (j >= n) {
        *next = n;
        return 0;
    }
    first = next_cp(s, n, j, &cp);
    if (!mood__uc_is_word(cp)) {
        *next = j + first;
        return 0;
    }
    for (k = j + first; k < n;) {
        size_t len = next_cp(s, n, k, &cp);
        if (!is_key_char(cp))
            break;
        k += len;
    }
    if (k == j + first || k >= n || s[k] != ':') {
        *next = k;
        return 0;
    }
    m->key = (span){j, k};
    m->value = match_value(s, n, skip_space(s, n, k + 1), next);
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
static int valid_key(const char *s, size_t n)
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
    ok = n > 0 && utf8_at(s, n, 0, &(uint32_t){0}) && match_pair(probe, n + 1, 0, &m, &next) &&
         m.key.b == 0 && m.key.e == n;
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

/* ----- the fields -------------------------------------------------------------------------- */

enum field {
    F_NONE = 0,
    F_STEPS,
    F_SAMPLER,
    F_SCHEDULE,
    F_CFG,
    F_SEED,
    F_SIZE,
    F_MODEL_HASH,
    F_MODEL,
    F_DENOISE,
    F_CLIP_SKIP,
    F_LORA_HASHES,
    F_TI_HASHES,
    F_VERSION
};

/* A1111 1.10's key order (processing.py create_infotext; extra_generation_params sit between
 * Tiling and Version). Format orders the details by twice this index; extras read from a text
 * get an odd rank just after the known key they followed. */
static const struct {
    const char *key;
    enum field field;
} canon[] = {
    {"Steps", F_STEPS},
    {"Sampler", F_SAMPLER},
    {"Schedule type", F_SCHEDULE},
    {"CFG scale", F_CFG},
    {"Image CFG scale", F_NONE},
    {"Seed", F_SEED},
    {"Face restoration", F_NONE},
    {"Size", F_SIZE},
    {"Model hash", F_MODEL_HASH},
    {"Model", F_MODEL},
    {"FP8 weight", F_NONE},
    {"Cache FP16 weight for LoRA", F_NONE},
    {"VAE hash", F_NONE},
    {"VAE", F_NONE},
    {"Variation seed", F_NONE},
    {"Variation seed strength", F_NONE},
    {"Seed resize from", F_NONE},
    {"Denoising strength", F_DENOISE},
    {"Conditional mask weight", F_NONE},
    {"Clip skip", F_CLIP_SKIP},
    {"ENSD", F_NONE},
    {"Token merging ratio", F_NONE},
    {"Token merging ratio hr", F_NONE},
    {"Init image hash", F_NONE},
    {"RNG", F_NONE},
    {"NGMS", F_NONE},
    {"Tiling", F_NONE},
    {"Lora hashes", F_LORA_HASHES},
    {"TI hashes", F_TI_HASHES},
    {NULL, F_NONE}, /* any other key set by a caller */
    {"Version", F_VERSION},
    {"User", F_NONE},
};
#define N_CANON     (sizeof canon / sizeof canon[0])
#define RANK_OTHERS 29

/* A1111's values for absent keys (infotext_utils.py), as mood_params_get reports them. */
static const char *const defaults[][2] = {
    {"Schedule type", "Automatic"},
    {"RNG", "GPU"},
    {"VAE Encoder", "Full"},
    {"VAE Decoder", "Full"},
    {"FP8 weight", "Disable"},
    {"Hires sampler", "Use same sampler"},
    {"Hires checkpoint", "Use same checkpoint"},
    {"Mask mode", "Inpaint masked"},
    {"Masked content", "original"},
    {"Inpaint area", "Whole picture"},
};

static int canon_index(const char *key)
{
    for (int i = 0; i < (int)N_CANON; i++) {
        if (canon[i].key && !strcmp(canon[i].key, key))
            return i;
    }
    return -1;
}

static int rank_of_field(enum field f)
{
    for (int i = 0; i < (int)N_CANON; i++) {
        if (canon[i].field == f && canon[i].key)
            return i;
    }
    return RANK_OTHERS;
}

/* ASCII digits with optional surrounding white space (Python's int() of A1111's strings). */
static int parse_u64(uint64_t *out, const char *s)
{
    const char *p = s;
    uint64_t v = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p)
        return -1;
    *out = v;
    return 0;
}

static int parse_int(int *out, const char *s, int min)
{
    uint64_t v;
    if (parse_u64(&v, s) != 0 || v < (uint64_t)min || v > INT32_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

/* A decimal number: [+-] digits [. digits] [e [+-] digits], at least one digit, finite. */
static int parse_double(double *out, const char *s)
{
    const char *p = s;
    char *end;
    int digits = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    s = p;
    if (*p == '+' || *p == '-')
        p++;
    for (; *p >= '0' && *p <= '9'; p++)
        digits++;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            digits++;
    if (!digits)
        return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (*p < '0' || *p > '9')
            return -1;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p)
        return -1;
    *out = strtod(s, &end);
    return isfinite(*out) ? 0 : -1;
}

/* "WxH" exactly (re_imagesize: ^(\d+)x(\d+)$). */
static int parse_size(int *w, int *h, const char *s)
{
    const char *x = strchr(s, 'x');
    char buf[24];
    size_t n = x ? (size_t)(x - s) : 0;
    if (!x || n == 0 || n >= sizeof buf || s[0] == ' ' || x[1] == ' ' || x[1] == '\0' ||
        strchr(x + 1, ' ') || strchr(x + 1, '\t'))
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return parse_int(w, buf, 1) || parse_int(h, x + 1, 1) ? -1 : 0;
}

/* The prompts of an initialized struct point here until set, so that init cannot fail. */
static char no_text[1];

static void free_text(char *s)
{
    if (s != no_text)
        mood_free(s);
}

static int replace_string(char **field, const char *value)
{
    char *copy = mood_strdup(value ? value : "");
    if (!copy)
        return mood_error_nomem();
    free_text(*field);
    *field = copy;
    return 0;
}

static void hashes_clear(mood_params_hash *list, size_t *n)
{
    for (size_t i = 0; i < *n; i++) {
        mood_free(list[i].name);
        mood_free(list[i].hash);
    }
    *n = 0;
}

/* Appends (name, hash) with name as given (already cleaned). */
static int hashes_push(mood_params_hash **list, size_t *n, size_t *cap, const char *name,
                       size_t name_len, const char *hash, size_t hash_len)
{
    mood_params_hash h;
    if (mood_array_reserve(list, cap, *n, sizeof **list, 4) != 0)
        return MOOD_ENOMEM;
    h.name = mood_strndup(name, name_len);
    h.hash = mood_strndup(hash, hash_len);
    if (!h.name || !h.hash) {
        mood_free(h.name);
        mood_free(h.hash);
        return mood_error_nomem();
    }
    (*list)[(*n)++] = h;
    return 0;
}

/* "name: hash, name2: hash2" as A1111's Lora infotext_pasted splits it: at ',' then at the first
 * ':', each side stripped. -1 when an entry has no ':'. Replaces *list on success only. */
static int parse_hash_list(mood_params_hash **list, size_t *n, size_t *cap, const char *value)
{
    mood_params_hash *tmp = NULL;
    size_t tn = 0, tcap = 0, len = strlen(value);
    int err = 0;
    for (size_t b = 0; b <= len && !err;) {
        size_t e = b;
        const char *colon;
        span name, hash;
        while (e < len && value[e] != ',')
            e++;
        colon = memchr(value + b, ':', e - b);
        if (!colon) {
            err = -1;
            break;
        }
        name = strip(value, (span){b, (size_t)(colon - value)});
        hash = strip(value, (span){(size_t)(colon - value) + 1, e});
        err = hashes_push(&tmp, &tn, &tcap, value + name.b, name.e - name.b, value + hash.b,
                          hash.e - hash.b);
        b = e + 1;
    }
    if (err) {
        hashes_clear(tmp, &tn);
        mood_free(tmp);
        return err;
    }
    hashes_clear(*list, n);
    mood_free(*list);
    *list = tmp, *n = tn, *cap = tcap;
    return 0;
}

/* Parses value into field f; -1 when it does not fit the field's type. */
static int set_field(mood_params *p, enum field f, const char *value)
{
    uint64_t u;
    double d;
    int i, j;
    switch (f) {
    case F_STEPS:
        return parse_int(&i, value, 1) ? -1 : (p->steps = i, 0);
    case F_CLIP_SKIP:
        return parse_int(&i, value, 1) ? -1 : (p->clip_skip = i, 0);
    case F_SEED:
        return parse_u64(&u, value) ? -1 : (p->seed = u, p->has_seed = 1, 0);
    case F_CFG:
        return parse_double(&d, value) ? -1 : (p->cfg_scale = d, 0);
    case F_DENOISE:
        return parse_double(&d, value) ? -1 : (p->denoising_strength = d, 0);
    case F_SIZE:
        return parse_size(&i, &j, value) ? -1 : (p->width = i, p->height = j, 0);
    case F_SAMPLER:
        return replace_string(&p->sampler, value);
    case F_SCHEDULE:
        return replace_string(&p->schedule_type, value);
    case F_MODEL_HASH:
        p->from_hashes &= ~(unsigned)MOOD_PARAMS_FROM_HASHES_MODEL;
        return replace_string(&p->model_hash, value);
    case F_MODEL:
        return replace_string(&p->model, value);
    case F_VERSION:
        return replace_string(&p->version, value);
    case F_LORA_HASHES:
        p->from_hashes &= ~(unsigned)MOOD_PARAMS_FROM_HASHES_LORA;
        return parse_hash_list(&p->lora_hashes, &p->n_lora_hashes, &p->cap_lora_hashes, value);
    case F_TI_HASHES:
        p->from_hashes &= ~(unsigned)MOOD_PARAMS_FROM_HASHES_TI;
        return parse_hash_list(&p->ti_hashes, &p->n_ti_hashes, &p->cap_ti_hashes, value);
    case F_NONE:
        break;
    }
    return -1;
}

/* Marks field f absent. */
static void clear_field(mood_params *p, enum field f)
{
    switch (f) {
    case F_STEPS:
        p->steps = 0;
        break;
    case F_CLIP_SKIP:
        p->clip_skip = 1;
        break;
    case F_SEED:
        p->has_seed = 0, p->seed = 0;
        break;
    case F_CFG:
        p->cfg_scale = NAN;
        break;
    case F_DENOISE:
        p->denoising_strength = NAN;
        break;
    case F_SIZE:
        p->width = p->height = 0;
        break;
    case F_SAMPLER:
    case F_SCHEDULE:
    case F_MODEL_HASH:
    case F_MODEL:
    case F_VERSION: {
        char **s = f == F_SAMPLER      ? &p->sampler
                   : f == F_SCHEDULE   ? &p->schedule_type
                   : f == F_MODEL_HASH ? &p->model_hash
                   : f == F_MODEL      ? &p->model
                                       : &p->version;
        mood_free(*s);
        *s = NULL;
        break;
    }
    case F_LORA_HASHES:
        hashes_clear(p->lora_hashes, &p->n_lora_hashes);
        break;
    case F_TI_HASHES:
        hashes_clear(p->ti_hashes, &p->n_ti_hashes);
        break;
    case F_NONE:
        break;
    }
}

static mood_params_extra *find_extra(const mood_params *p, const char *key)
{
    for (size_t i = 0; i < p->n_extras; i++) {
        if (!strcmp(p->extras[i].key, key))
            return &p->extras[i];
    }
    return NULL;
}

static void remove_extra(mood_params *p, const char *key)
{
    mood_params_extra *x = find_extra(p, key);
    if (!x)
        return;
    mood_free(x->key);
    mood_free(x->value);
    memmove(x, x + 1, (size_t)(p->extras + p->n_extras - (x + 1)) * sizeof *x);
    p->n_extras--;
}

/* Sets an extra: a key already there keeps its place (a Python dict), a new one goes last.
 * fresh: the caller knows the key is not there yet (parsing deduplicates first). */
static int set_extra(mood_params *p, const char *key, const char *value, int rank, int fresh)
{
    mood_params_extra *x = fresh ? NULL : find_extra(p, key), e;
    if (x)
        return replace_string(&x->value, value);
    if (mood_array_reserve(&p->extras, &p->cap_extras, p->n_extras, sizeof *p->extras, 8) != 0)
        return MOOD_ENOMEM;
    e.key = mood_strdup(key);
    e.value = mood_strdup(value);
    e.rank = rank;
    if (!e.key || !e.value) {
        mood_free(e.key);
        mood_free(e.value);
        return mood_error_nomem();
    }
    p->extras[p->n_extras++] = e;
    return 0;
}

/* Sets one pair. strict (callers): a value that does not fit its field is MOOD_EINVAL. Parsing
 * (strict 0) sets each key once: a value that does not fit becomes an extra under the same key,
 * at rank extra_rank. *field_out gets the field that took the value (F_NONE for an extra). */
static int set_pair(mood_params *p, const char *key, const char *value, int strict, int extra_rank,
                    enum field *field_out)
{
    int ci = canon_index(key), r;
    enum field f = ci >= 0 ? canon[ci].field : F_NONE;
    *field_out = F_NONE;
    if (!strcmp(key, "Prompt") || !strcmp(key, "Negative prompt")) {
        p->prompt_from_details |= !strict;
        return replace_string(key[0] == 'P' ? &p->prompt : &p->negative_prompt, value);
    }
    if (f != F_NONE) {
        r = set_field(p, f, value);
        if (r == 0) {
            if (strict)
                remove_extra(p, key); /* an earlier unparsable value of this key */
            *field_out = f;
            return 0;
        }
        if (r != -1)
            return r;
        if (strict)
            return mood_error_set(MOOD_EINVAL, "parameters: \"%s: %s\": the value does not parse",
                                  key, value);
        clear_field(p, f); /* an earlier value of the field goes (a dict holds one) */
    }
    if (!strict)
        return set_extra(p, key, value, extra_rank, 1);
    return set_extra(p, key, value, ci >= 0 ? 2 * ci : 2 * RANK_OTHERS, 0);
}

/* ----- the struct -------------------------------------------------------------------------- */

void mood_params_init(mood_params *p)
{
    memset(p, 0, sizeof *p);
    p->prompt = no_text;
    p->negative_prompt = no_text;
    p->cfg_scale = NAN;
    p->denoising_strength = NAN;
    p->clip_skip = 1;
}

void mood_params_dispose(mood_params *p)
{
    free_text(p->prompt);
    free_text(p->negative_prompt);
    mood_free(p->sampler);
    mood_free(p->schedule_type);
    mood_free(p->model_hash);
    mood_free(p->model);
    mood_free(p->version);
    hashes_clear(p->lora_hashes, &p->n_lora_hashes);
    hashes_clear(p->ti_hashes, &p->n_ti_hashes);
    mood_free(p->lora_hashes);
    mood_free(p->ti_hashes);
    for (size_t i = 0; i < p->n_extras; i++) {
        mood_free(p->extras[i].key);
        mood_free(p->extras[i].value);
    }
    mood_free(p->extras);
    mood_params_init(p);
}

static int check_utf8(const char *s, const char *what)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_at(s, n, i, &cp);
        if (!k)
            return mood_error_set(MOOD_EINVAL, "parameters: %s is not valid UTF-8 (byte %zu)", what,
                                  i);
        i += k;
    }
    return 0;
}

int mood_params_set_prompt(mood_params *p, const char *prompt, const char *negative_prompt)
{
    char *a, *b;
    int err;
    prompt = prompt ? prompt : "";
    negative_prompt = negative_prompt ? negative_prompt : "";
    if ((err = check_utf8(prompt, "the prompt")) != 0 ||
        (err = check_utf8(negative_prompt, "the negative prompt")) != 0)
        return err;
    a = mood_strdup(prompt);
    b = mood_strdup(negative_prompt);
    if (!a || !b) {
        mood_free(a);
        mood_free(b);
        return mood_error_nomem();
    }
    free_text(p->prompt);
    free_text(p->negative_prompt);
    p->prompt = a;
    p->negative_prompt = b;
    return 0;
}

int mood_params_set(mood_params *p, const char *key, const char *value)
{
    enum field f;
    int err;
    if (!p || !key || !value)
        return mood_error_set(MOOD_EINVAL, "mood_params_set: NULL argument");
    if ((err = check_utf8(key, "a key")) != 0 || (err = check_utf8(value, key)) != 0)
        return err;
    if (!valid_key(key, strlen(key)))
        return mood_error_set(MOOD_EINVAL,
                              "parameters: \"%s\" is not a valid key (a letter, "
                              "digit or '_', then one or more of those, ' ', '-', '/')",
                              key);
    return set_pair(p, key, value, 1, 0, &f);
}

/* Adds one entry, cleaned as A1111 writes it (extra_networks_lora.py: alias without ':' and
 * ','), both sides stripped so that they read back unchanged. */
static int add_hash(mood_params_hash **list, size_t *n, size_t *cap, const char *name,
                    const char *hash)
{
    mood_buf clean;
    span ns, hs;
    int err;
    if (!name || !hash)
        return mood_error_set(MOOD_EINVAL, "parameters: NULL LoRA name or hash");
    if ((err = check_utf8(name, "a LoRA name")) != 0 || (err = check_utf8(hash, "a hash")) != 0)
        return err;
    if (strchr(hash, ','))
        return mood_error_set(MOOD_EINVAL, "parameters: hash \"%s\" holds a ','", hash);
    mood_buf_init(&clean);
    for (const char *c = name; *c && !err; c++) {
        if (*c != ':' && *c != ',')
            err = mood_buf_append(&clean, c, 1);
    }
    if (!err && (err = mood_buf_append(&clean, "", 0)) == 0) {
        ns = strip(clean.data, (span){0, clean.len});
        hs = strip(hash, (span){0, strlen(hash)});
        err = hashes_push(list, n, cap, clean.data + ns.b, ns.e - ns.b, hash + hs.b, hs.e - hs.b);
    }
    mood_buf_dispose(&clean);
    return err;
}

int mood_params_add_lora_hash(mood_params *p, const char *name, const char *hash)
{
    p->from_hashes &= ~(unsigned)MOOD_PARAMS_FROM_HASHES_LORA;
    remove_extra(p, "Lora hashes");
    return add_hash(&p->lora_hashes, &p->n_lora_hashes, &p->cap_lora_hashes, name, hash);
}

int mood_params_add_ti_hash(mood_params *p, const char *name, const char *hash)
{
    p->from_hashes &= ~(unsigned)MOOD_PARAMS_FROM_HASHES_TI;
    remove_extra(p, "TI hashes");
    return add_hash(&p->ti_hashes, &p->n_ti_hashes, &p->cap_ti_hashes, name, hash);
}

const char *mood_params_get(const mood_params *p, const char *key)
{
    const mood_params_extra *x;
    int ci;
    if (!p || !key)
        return NULL;
    if (!strcmp(key, "Prompt"))
        return p->prompt;
    if (!strcmp(key, "Negative prompt"))
        return p->negative_prompt;
    if ((x = find_extra(p, key)) != NULL)
        return x->value;
    ci = canon_index(key);
    if (ci >= 0) {
        switch (canon[ci].field) {
        case F_SAMPLER:
            return p->sampler;
        case F_SCHEDULE:
            if (p->schedule_type)
                return p->schedule_type;
            break;
        case F_MODEL_HASH:
            return p->model_hash;
        case F_MODEL:
            return p->model;
        case F_VERSION:
            return p->version;
        case F_NONE:
            break;
        default:
            return NULL;
        }
    }
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
        if (!strcmp(defaults[i][0], key))
            return defaults[i][1];
    }
    return NULL;
}

/* ----- parsing ----------------------------------------------------------------------------- */

/* Adds one stripped prompt line: after "Negative prompt:" every line is negative. */
static int add_prompt_line(mood_buf *prompt, mood_buf *negative, int *in_negative, const char *s,
                           span line)
{
    static const char tag[] = "Negative prompt:";
    mood_buf *dst;
    line = strip(s, line);
    if (line.e - line.b >= sizeof tag - 1 && !memcmp(s + line.b, tag, sizeof tag - 1)) {
        *in_negative = 1;
        line = strip(s, (span){line.b + sizeof tag - 1, line.e});
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
    free_text(p->prompt);
    free_text(p->negative_prompt);
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
    err = set_pair(p, key, value ? value : raw, 0, 2 * *prev_rank + 1, &f);
    if (!err && f != F_NONE)
        *prev_rank = canon_index(key);
done:
    mood_free(key);
    mood_free(raw);
    mood_free(value);
    return err;
}

/* Fills absent model/LoRA/TI hashes from Civitai's `Hashes: {...}` object. */
static int derive_from_hashes(mood_params *p)
{
    const mood_params_extra *x = find_extra(p, "Hashes");
    int want_model, want_lora, want_ti, err = 0;
    const cJSON *item;
    cJSON *root;
    if (!x || !(root = cJSON_Parse(x->value)))
        return 0;
    want_model = !p->model_hash && !find_extra(p, "Model hash");
    want_lora = !p->n_lora_hashes && !find_extra(p, "Lora hashes");
    want_ti = !p->n_ti_hashes && !find_extra(p, "TI hashes");
    cJSON_ArrayForEach(item, root)
    {
        const char *k = item->string, *v = cJSON_GetStringValue(item);
        if (!k || !v || err)
            continue;
        if (want_model && !strcmp(k, "model")) {
            err = replace_string(&p->model_hash, v);
            p->from_hashes |= MOOD_PARAMS_FROM_HASHES_MODEL;
        } else if (want_lora && !strncmp(k, "lora:", 5)) {
            err = hashes_push(&p->lora_hashes, &p->n_lora_hashes, &p->cap_lora_hashes, k + 5,
                              strlen(k + 5), v, strlen(v));
            p->from_hashes |= MOOD_PARAMS_FROM_HASHES_LORA;
        } else if (want_ti && !strncmp(k, "embed:", 6)) {
            err = hashes_push(&p->ti_hashes, &p->n_ti_hashes, &p->cap_ti_hashes, k + 6,
                              strlen(k + 6), v, strlen(v));
            p->from_hashes |= MOOD_PARAMS_FROM_HASHES_TI;
        }
    }
    cJSON_Delete(root);
    return err;
}

int mood_params_parse(mood_params *out, const char *text)
{
    pair *pairs = NULL;
    size_t n_pairs = 0, n, nl;
    span all, last;
    int err, prev_rank = -1;
    mood_params_init(out);
    if (!text)
        return mood_error_set(MOOD_EINVAL, "mood_params_parse: NULL text");
    n = strlen(text);
    if ((err = check_utf8(text, "the text")) != 0)
        return err;
    all = strip(text, (span){0, n});
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

/* ----- formatting -------------------------------------------------------------------------- */

typedef struct item {
    int rank;
    size_t seq;
    const char *key;
    char *value; /* owned */
} item;

static int item_cmp(const void *a, const void *b)
{
    const item *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The shortest decimal that reads back as v (Python's repr, without its ".0"). */
static void format_double(char *out, size_t size, double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, size, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static char *format_hash_list(const mood_params_hash *list, size_t n)
{
    mood_buf b;
    int err = 0;
    mood_buf_init(&b);
    for (size_t i = 0; i < n && !err; i++)
        err = mood_buf_printf(&b, "%s%s: %s", i ? ", " : "", list[i].name, list[i].hash);
    if (!err)
        err = mood_buf_append(&b, "", 0);
    if (err) {
        mood_buf_dispose(&b);
        return NULL;
    }
    return mood_buf_detach(&b);
}

/* Adds (key, value) to the item list; value is taken over (NULL: out of memory). */
static int push_item(item *items, size_t *n, int rank, const char *key, char *value)
{
    if (!value)
        return MOOD_ENOMEM;
    items[*n] = (item){rank, *n, key, value};
    (*n)++;
    return 0;
}

static char *dup_u64(uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return mood_strdup(buf);
}

static char *dup_size(int width, int height)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%dx%d", width, height);
    return mood_strdup(buf);
}

static char *dup_double(double v)
{
    char buf[40];
    format_double(buf, sizeof buf, v);
    return mood_strdup(buf);
}

/* The known fields that are set, each with its canonical rank. */
static int typed_items(item *items, size_t *n, const mood_params *p)
{
#define PUSH(f, key, value)                                                                        \
    do {                                                                                           \
        if ((err = push_item(items, n, 2 * rank_of_field(f), key, value)) != 0)                    \
            return err;                                                                            \
    } while (0)
    int err;
    if (p->steps > 0)
        PUSH(F_STEPS, "Steps", dup_u64((uint64_t)p->steps));
    if (p->sampler)
        PUSH(F_SAMPLER, "Sampler", mood_strdup(p->sampler));
    if (p->schedule_type)
        PUSH(F_SCHEDULE, "Schedule type", mood_strdup(p->schedule_type));
    if (isfinite(p->cfg_scale))
        PUSH(F_CFG, "CFG scale", dup_double(p->cfg_scale));
    if (p->has_seed)
        PUSH(F_SEED, "Seed", dup_u64(p->seed));
    if (p->width > 0 && p->height > 0)
        PUSH(F_SIZE, "Size", dup_size(p->width, p->height));
    if (p->model_hash && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_MODEL))
        PUSH(F_MODEL_HASH, "Model hash", mood_strdup(p->model_hash));
    if (p->model)
        PUSH(F_MODEL, "Model", mood_strdup(p->model));
    if (isfinite(p->denoising_strength))
        PUSH(F_DENOISE, "Denoising strength", dup_double(p->denoising_strength));
    if (p->clip_skip > 1)
        PUSH(F_CLIP_SKIP, "Clip skip", dup_u64((uint64_t)p->clip_skip));
    if (p->n_lora_hashes && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_LORA))
        PUSH(F_LORA_HASHES, "Lora hashes", format_hash_list(p->lora_hashes, p->n_lora_hashes));
    if (p->n_ti_hashes && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_TI))
        PUSH(F_TI_HASHES, "TI hashes", format_hash_list(p->ti_hashes, p->n_ti_hashes));
    if (p->version)
        PUSH(F_VERSION, "Version", mood_strdup(p->version));
    return 0;
#undef PUSH
}

/* A1111's quote() (a JSON string when the value holds ',', ':' or a newline), also for values
 * that would not read back as written: empty, surrounding white space, a leading '"' (it would
 * be unquoted), a leading '{' or '[' that does not close at the end (it could close further on
 * the line and swallow the next pairs). A whole one-line JSON object or array stays as it is
 * (Civitai's Hashes / Civitai resources). */
static int append_value(mood_buf *b, const char *v)
{
    size_t n = strlen(v);
    span s = strip(v, (span){0, n});
    int quote;
    if (n && (v[0] == '{' || v[0] == '[') && json_extent(v, n, 0) == n && !strchr(v, '\n'))
        quote = 0;
    else
        quote = !n || strpbrk(v, ",:\n") || strchr("\"{[", v[0]) || s.b != 0 || s.e != n;
    return quote ? mood_buf_json_string(b, v) : mood_buf_append(b, v, n);
}

static int append_details(mood_buf *b, const mood_params *p)
{
    item *items = mood_calloc(16 + p->n_extras, sizeof *items);
    size_t n = 0;
    int err;
    if (!items)
        return MOOD_ENOMEM;
    err = typed_items(items, &n, p);
    for (size_t i = 0; i < p->n_extras && !err; i++)
        err = push_item(items, &n, p->extras[i].rank, p->extras[i].key,
                        mood_strdup(p->extras[i].value));
    if (!err)
        qsort(items, n, sizeof *items, item_cmp);
    for (size_t i = 0; i < n && !err; i++) {
        if ((err = mood_buf_printf(b, "%s%s: ", i ? ", " : "", items[i].key)) == 0)
            err = append_value(b, items[i].value);
    }
    for (size_t i = 0; i < n; i++)
        mood_free(items[i].value);
    mood_free(items);
    return err;
}

int mood_params_format(char **text_out, const mood_params *p)
{
    mood_buf b;
    span s;
    int err = 0;
    if (text_out)
        *text_out = NULL;
    if (!text_out || !p)
        return mood_error_set(MOOD_EINVAL, "mood_params_format: NULL argument");
    mood_buf_init(&b);
    err = mood_buf_puts(&b, p->prompt ? p->prompt : "");
    if (!err && p->negative_prompt && p->negative_prompt[0])
        err = mood_buf_printf(&b, "\nNegative prompt: %s", p->negative_prompt);
    if (!err)
        err = mood_buf_append(&b, "\n", 1);
    if (!err)
        err = append_details(&b, p);
    if (!err) {
        s = strip(b.data, (span){0, b.len});
        if (!(*text_out = mood_strndup(b.data + s.b, s.e - s.b)))
            err = MOOD_ENOMEM;
    }
    mood_buf_dispose(&b);
    return err == MOOD_ENOMEM ? mood_error_nomem() : err;
}

void mood_params_free_string(char *s)
{
    mood_free(s);
}

/* ----- hashes ------------------------------------------------------------------------------ */

void mood_params_model_hash(char out[11], const mood_file_hashes *h)
{
    memcpy(out, h->sha256, 10);
    out[10] = '\0';
}

void mood_params_lora_hash(char out[13], const mood_file_hashes *h)
{
    memcpy(out, h->is_safetensors ? h->autov3 : h->sha256, 12);
    out[12] = '\0';
}
