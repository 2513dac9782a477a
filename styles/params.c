/*
 * params.c: the A1111 generation-parameters text (include/mood/params.h has the rules): the
 * struct, its known fields and their value types, setting and getting pairs, and the hashes
 * written in "Model hash" and "Lora hashes". Reading the text is params_parse.c, writing it
 * params_format.c; params_internal.h has what the three share.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "styles/params_internal.h"

/* ----- code points ------------------------------------------------------------------------- */

/* Decodes one strictly valid UTF-8 character at s[i..n); returns its length, 0 if invalid. */
size_t mood__params_utf8_at(const char *str, size_t n, size_t i, uint32_t *cp)
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

/* Text already validated: decoding cannot fail (a bad byte would read as U+FFFD, one byte). */
size_t mood__params_next_cp(const char *s, size_t n, size_t i, uint32_t *cp)
{
    size_t k = mood__params_utf8_at(s, n, i, cp);
    if (!k)
        *cp = 0xFFFD;
    return k ? k : 1;
}

size_t mood__params_skip_space(const char *s, size_t n, size_t i)
{
    uint32_t cp;
    size_t k;
    while (i < n && (k = mood__params_next_cp(s, n, i, &cp), is_space(cp)))
        i += k;
    return i;
}

/* str.strip() of s[b..e). */
span mood__params_strip(const char *s, span in)
{
    span out = {in.e, in.e};
    size_t i = mood__params_skip_space(s, in.e, in.b);
    out.b = i;
    while (i < in.e) {
        uint32_t cp;
        size_t k = mood__params_next_cp(s, in.e, i, &cp);
        i += k;
        if (!is_space(cp))
            out.e = i;
    }
    if (out.e < out.b)
        out.e = out.b;
    return out;
}

/* ----- the fields -------------------------------------------------------------------------- */

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

int mood__params_canon_index(const char *key)
{
    for (int i = 0; i < (int)N_CANON; i++) {
        if (canon[i].key && !strcmp(canon[i].key, key))
            return i;
    }
    return -1;
}

int mood__params_rank_of_field(enum field f)
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

void mood__params_free_text(char *s)
{
    if (s != no_text)
        mood_free(s);
}

int mood__params_replace_string(char **field, const char *value)
{
    char *copy = mood_strdup(value ? value : "");
    if (!copy)
        return mood_error_nomem();
    mood__params_free_text(*field);
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
int mood__params_hashes_push(mood_params_hash **list, size_t *n, size_t *cap, const char *name,
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
        name = mood__params_strip(value, (span){b, (size_t)(colon - value)});
        hash = mood__params_strip(value, (span){(size_t)(colon - value) + 1, e});
        err = mood__params_hashes_push(&tmp, &tn, &tcap, value + name.b, name.e - name.b,
                                       value + hash.b, hash.e - hash.b);
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
        return mood__params_replace_string(&p->sampler, value);
    case F_SCHEDULE:
        return mood__params_replace_string(&p->schedule_type, value);
    case F_MODEL_HASH:
        p->from_hashes &= ~(unsigned)MOOD_PARAMS_FROM_HASHES_MODEL;
        return mood__params_replace_string(&p->model_hash, value);
    case F_MODEL:
        return mood__params_replace_string(&p->model, value);
    case F_VERSION:
        return mood__params_replace_string(&p->version, value);
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

mood_params_extra *mood__params_find_extra(const mood_params *p, const char *key)
{
    for (size_t i = 0; i < p->n_extras; i++) {
        if (!strcmp(p->extras[i].key, key))
            return &p->extras[i];
    }
    return NULL;
}

static void remove_extra(mood_params *p, const char *key)
{
    mood_params_extra *x = mood__params_find_extra(p, key);
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
    mood_params_extra *x = fresh ? NULL : mood__params_find_extra(p, key), e;
    if (x)
        return mood__params_replace_string(&x->value, value);
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
int mood__params_set_pair(mood_params *p, const char *key, const char *value, int strict,
                          int extra_rank, enum field *field_out)
{
    int ci = mood__params_canon_index(key), r;
    enum field f = ci >= 0 ? canon[ci].field : F_NONE;
    *field_out = F_NONE;
    if (!strcmp(key, "Prompt") || !strcmp(key, "Negative prompt")) {
        p->prompt_from_details |= !strict;
        return mood__params_replace_string(key[0] == 'P' ? &p->prompt : &p->negative_prompt, value);
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
    if (!p)
        return;
    mood__params_free_text(p->prompt);
    mood__params_free_text(p->negative_prompt);
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

int mood__params_check_utf8(const char *s, const char *what)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = mood__params_utf8_at(s, n, i, &cp);
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
    MOOD_ARG_NONNULL(p);
    prompt = prompt ? prompt : "";
    negative_prompt = negative_prompt ? negative_prompt : "";
    if ((err = mood__params_check_utf8(prompt, "the prompt")) != 0 ||
        (err = mood__params_check_utf8(negative_prompt, "the negative prompt")) != 0)
        return err;
    a = mood_strdup(prompt);
    b = mood_strdup(negative_prompt);
    if (!a || !b) {
        mood_free(a);
        mood_free(b);
        return mood_error_nomem();
    }
    mood__params_free_text(p->prompt);
    mood__params_free_text(p->negative_prompt);
    p->prompt = a;
    p->negative_prompt = b;
    return 0;
}

int mood_params_set(mood_params *p, const char *key, const char *value)
{
    enum field f;
    int err;
    MOOD_ARG_NONNULL(p);
    MOOD_ARG_NONNULL(key);
    MOOD_ARG_NONNULL(value);
    if ((err = mood__params_check_utf8(key, "a key")) != 0 ||
        (err = mood__params_check_utf8(value, key)) != 0)
        return err;
    if (!mood__params_valid_key(key, strlen(key)))
        return mood_error_set(MOOD_EINVAL,
                              "parameters: \"%s\" is not a valid key (a letter, "
                              "digit or '_', then one or more of those, ' ', '-', '/')",
                              key);
    return mood__params_set_pair(p, key, value, 1, 0, &f);
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
    if ((err = mood__params_check_utf8(name, "a LoRA name")) != 0 ||
        (err = mood__params_check_utf8(hash, "a hash")) != 0)
        return err;
    if (strchr(hash, ','))
        return mood_error_set(MOOD_EINVAL, "parameters: hash \"%s\" holds a ','", hash);
    mood_buf_init(&clean);
    for (const char *c = name; *c && !err; c++) {
        if (*c != ':' && *c != ',')
            err = mood_buf_append(&clean, c, 1);
    }
    if (!err && (err = mood_buf_append(&clean, "", 0)) == 0) {
        ns = mood__params_strip(clean.data, (span){0, clean.len});
        hs = mood__params_strip(hash, (span){0, strlen(hash)});
        err = mood__params_hashes_push(list, n, cap, clean.data + ns.b, ns.e - ns.b, hash + hs.b,
                                       hs.e - hs.b);
    }
    mood_buf_dispose(&clean);
    return err;
}

int mood_params_add_lora_hash(mood_params *p, const char *name, const char *hash)
{
    MOOD_ARG_NONNULL(p);
    p->from_hashes &= ~(unsigned)MOOD_PARAMS_FROM_HASHES_LORA;
    remove_extra(p, "Lora hashes");
    return add_hash(&p->lora_hashes, &p->n_lora_hashes, &p->cap_lora_hashes, name, hash);
}

int mood_params_add_ti_hash(mood_params *p, const char *name, const char *hash)
{
    MOOD_ARG_NONNULL(p);
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
    if ((x = mood__params_find_extra(p, key)) != NULL)
        return x->value;
    ci = mood__params_canon_index(key);
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
