/*
 * peft_patterns.c: PEFT's per-module settings by pattern (lora_adapter_metadata's alpha_pattern,
 * as diffusers writes it): each key is a Python regular expression that PEFT's get_pattern_key
 * matches against a module's path; here they are translated to POSIX ERE and compiled once per
 * file, for adapter.c's scale of every module.
 */
#include <cjson/cJSON.h>
#include <regex.h>
#include <string.h>

#include "lora/lora_internal.h"

/* A PEFT pattern (a Python regular expression) as POSIX ERE: the escapes Python has and ERE
 * lacks (\d \w \s and their negations) spelled out, inside a bracket expression too, (?:...) as
 * (...). 0, or -1 when it does not fit `size` or has what ERE cannot say (\D inside [...]). */
static int python_re_to_ere(char *out, size_t size, const char *re)
{
    static const char *const esc[][3] = {
        /* escape, outside a bracket expression, inside one (NULL: none) */
        {"d", "[0-9]", "0-9"},
        {"D", "[^0-9]", NULL},
        {"w", "[A-Za-z0-9_]", "A-Za-z0-9_"},
        {"W", "[^A-Za-z0-9_]", NULL},
        {"s", "[[:space:]]", "[:space:]"},
        {"S", "[^[:space:]]", NULL}};
    size_t o = 0;
    int in_class = 0;
    for (const char *p = re; *p; p++) {
        const char *rep = NULL;
        char one[3] = {p[0], 0, 0};
        if (p[0] == '\\' && p[1]) {
            for (size_t i = 0; i < sizeof esc / sizeof esc[0] && !rep; i++)
                if (p[1] == esc[i][0][0]) {
                    if (in_class && !esc[i][2])
                        return -1;
                    rep = esc[i][in_class ? 2 : 1];
                }
            if (!rep) { /* an escaped character: itself (in a class, without the backslash) */
                one[0] = in_class ? p[1] : '\\';
                one[1] = in_class ? 0 : p[1];
                rep = one;
            }
            p++;
        } else if (!in_class && p[0] == '(' && p[1] == '?' && p[2] == ':') {
            rep = "(";
            p += 2;
        } else {
            if (p[0] == '[' && !in_class)
                in_class = 1;
            else if (p[0] == ']' && in_class && p[-1] != '[' && !(p[-1] == '^' && p[-2] == '['))
                in_class = 0;
            rep = one;
        }
        if (o + strlen(rep) + 1 > size)
            return -1;
        memcpy(out + o, rep, strlen(rep));
        o += strlen(rep);
    }
    out[o] = '\0';
    return in_class ? -1 : 0;
}

/* A file's alpha_pattern keys, compiled once (a file of every module has one key per module:
 * compiling them for each module cost seconds); ok 0: compared as text. */
struct mood__peft_key {
    const cJSON *item;
    regex_t re;
    int ok;
};

void mood__peft_keys_free(mood__peft_keys *pk)
{
    for (int c = 0; pk && c < 3; c++) {
        for (size_t i = 0; i < pk->n[c]; i++)
            if (pk->k[c][i].ok)
                regfree(&pk->k[c][i].re);
        mood_free(pk->k[c]);
    }
}

static void peft_keys_build(mood__peft_keys *pk, int comp, const cJSON *patterns)
{
    const cJSON *p;
    size_t n = (size_t)cJSON_GetArraySize(patterns), i = 0;
    pk->built[comp] = 1;
    if (!n || !(pk->k[comp] = mood_calloc(n, sizeof *pk->k[comp])))
        return; /* out of memory: no pattern applies, as with none */
    cJSON_ArrayForEach(p, patterns)
    {
        char ere[1024], full[1100];
        mood__peft_key *k = &pk->k[comp][i++];
        k->item = p;
        if (python_re_to_ere(ere, sizeof ere, p->string) == 0) {
            snprintf(full, sizeof full, "^(.*\\.)?(%s)$", ere);
            k->ok = regcomp(&k->re, full, REG_EXTENDED | REG_NOSUB) == 0;
        }
    }
    pk->n[comp] = i;
}

/* PEFT's pattern rule (get_pattern_key: re.match(rf"(.*\.)?({key})$", path), the first key in
 * the file's order that matches): a key is a regular expression, "attn\d\.to_(q|v)" as much as
 * "to_k". A key that is no regular expression POSIX takes is compared as text: the path equals
 * it or ends with "." + it. */
const cJSON *mood__peft_pattern(mood__peft_keys *pk, int comp, const cJSON *patterns,
                                const char *path)
{
    size_t n = strlen(path);
    if (!cJSON_IsObject(patterns)) /* absent, or not PEFT's {key: alpha} (a list has no keys) */
        return NULL;
    if (!pk->built[comp])
        peft_keys_build(pk, comp, patterns);
    for (size_t i = 0; i < pk->n[comp]; i++) {
        const mood__peft_key *k = &pk->k[comp][i];
        size_t m = strlen(k->item->string);
        if (k->ok
                ? regexec(&k->re, path, 0, NULL, 0) == 0
                : (strcmp(path, k->item->string) == 0 ||
                   (n > m && path[n - m - 1] == '.' && strcmp(path + n - m, k->item->string) == 0)))
            return k->item;
    }
    return NULL;
}
