/*
 * resolve.c: turns a prompt with <style:...>/<lora:...> tags, --style and --lora arguments into
 * the final prompt, negative prompt and adapter list (mood/styles.h). Registry styles are read
 * through mood_registry_show_json, so this file sees the registry only through its public API.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/args.h"
#include "common/common.h"
#include "mood/hash.h"
#include "mood/styles.h"

typedef struct resolver {
    mood_registry *reg;
    mood_buf prompt, negative, used, missing;
    mood_buf suffix_neg; /* styles' negative prompts, appended at the end */
    char **templates;    /* style templates, applied in order after tag removal */
    size_t n_templates, cap_templates;
    char **triggers;
    size_t n_triggers, cap_triggers;
    char **styles_texted; /* styles whose template, triggers and negative are applied already */
    size_t n_styles_texted, cap_styles_texted;
    mood_resolved_styles *out;
    size_t cap_adapters;
    unsigned flags;
    char **tag_of; /* per adapter: the name of the <lora:> tag that brought it, or NULL */
    size_t n_tag_of, cap_tag_of;
} resolver;

/* ----- adapters ---------------------------------------------------------------------------- */

static int add_adapter(resolver *r, const char *path, const char *name, const char *alias,
                       double unet, double te, const char *hash)
{
    mood_resolved_adapter *a;
    if (mood_array_reserve(&r->out->adapters, &r->cap_adapters, r->out->n + 1, sizeof *a, 8) != 0)
        return mood_error_nomem();
    a = &r->out->adapters[r->out->n];
    memset(a, 0, sizeof *a);
    a->path = mood_strdup(path);
    a->name = mood_strdup(name);
    a->alias = mood_strdup(alias); /* made safe and unique by name_aliases */
    a->unet = unet;
    a->te = te;
    snprintf(a->hash, sizeof a->hash, "%.12s", hash ? hash : "");
    r->out->n++;
    return a->path && a->name && a->alias ? 0 : mood_error_nomem();
}

/* "dir/inkwash.safetensors" -> "inkwash" into buf. */
static void file_stem(char *buf, size_t size, const char *path)
{
    const char *base = mood_path_basename(path);
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    snprintf(buf, size, "%.*s", (int)n, base);
}

static int add_file(resolver *r, const char *path, double unet, double te)
{
    mood_file_hashes h;
    char stem[256];
    int err = mood_hash_file_ex(&h, path, MOOD_HASH_SKIP_CRC32, NULL, NULL);
    if (err)
        return err;
    file_stem(stem, sizeof stem, path);
    return add_adapter(r, path, stem, stem, unet, te, h.is_safetensors ? h.autov3 : "");
}

/* ----- registry styles --------------------------------------------------------------------- */

static int push_string(char ***items, size_t *n, size_t *cap, const char *s)
{
    if (mood_array_reserve(items, cap, *n + 1, sizeof **items, 4) != 0)
        return mood_error_nomem();
    if (!((*items)[*n] = mood_strdup(s)))
        return mood_error_nomem();
    (*n)++;
    return 0;
}

static const char *json_str(const cJSON *o, const char *key)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
    return s && *s ? s : NULL;
}

/* A registry adapter's A1111 name: the stem of the file it was imported from, else `style`. */
static void adapter_alias(char *buf, size_t size, const cJSON *a, const char *style)
{
    const char *file = json_str(a, "file_name");
    if (file)
        file_stem(buf, size, file);
    if (!file || !*buf)
        snprintf(buf, size, "%s", style);
}

static int style_adapters(resolver *r, const cJSON *style, const char *name, double w, double w_te)
{
    const cJSON *a, *list = cJSON_GetObjectItemCaseSensitive(style, "adapters");
    int err = 0;
    cJSON_ArrayForEach(a, list)
    {
        const char *path = json_str(a, "path");
        double u = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(a, "unet"));
        double t = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(a, "te"));
        char alias[256];
        if (!path)
            return mood_error_set(MOOD_EFORMAT,
                                  "style \"%s\": an adapter without a stored file "
                                  "(run `mood doctor`)",
                                  name);
        adapter_alias(alias, sizeof alias, a, name);
        if ((err = add_adapter(r, path, name, alias, u * w, t * w_te,
                               json_str(a, "autov3_short"))) != 0)
            break;
    }
    return err;
}

/* A name that resolves to nothing: an error, or noted in r->missing (SKIP_MISSING). */
static int skip_missing(resolver *r, const char *name, int err)
{
    if (!(r->flags & MOOD_STYLES_SKIP_MISSING))
        return err;
    mood_error_clear();
    for (const char *m = r->missing.len ? r->missing.data : ""; *m; m += strspn(m, ", ")) {
        size_t n = strcspn(m, ",");
        if (n == strlen(name) && strncmp(m, name, n) == 0)
            return 0; /* listed once */
        m += n;
    }
    return mood_buf_printf(&r->missing, "%s%s", r->missing.len ? ", " : "", name);
}

/* Whether style `name`'s words (template, triggers, negative) are in the prompt already. */
static int style_texted(const resolver *r, const char *name)
{
    for (size_t i = 0; i < r->n_styles_texted; i++)
        if (strcasecmp(r->styles_texted[i], name) == 0)
            return 1;
    return 0;
}

/* Applies registry style `name` at (w, w_te); has_w 0: the style's preferred weight. */
static int add_style(resolver *r, const char *name, double w, double w_te, int has_w)
{
    char *json = NULL;
    cJSON *st;
    const char *s;
    int err;
    if (!r->reg)
        return skip_missing(
            r, name, mood_error_set(MOOD_ENOTFOUND, "style \"%s\": no registry is open", name));
    if ((err = mood_registry_show_json(&json, r->reg, name)) != 0)
        /* an unknown style name is the user's input, not a missing file: exit status 1 */
        return err == MOOD_ENOTFOUND ? skip_missing(r, name, MOOD_EINVAL) : err;
    st = cJSON_Parse(json);
    mood_registry_free_string(json);
    if (!st)
        return mood_error_set(MOOD_EFORMAT, "style \"%s\": unreadable registry record", name);
    if (!has_w) {
        cJSON *pw = cJSON_GetObjectItemCaseSensitive(st, "weight");
        w = w_te = cJSON_IsNumber(pw) ? pw->valuedouble : 1.0;
    }
    if (w == 0 && w_te == 0) { /* switched off: none of its LoRAs, none of its words */
        cJSON_Delete(st);
        return mood_buf_printf(&r->used, "%s%s:0", r->used.len ? ", " : "", name);
    }
    err = style_adapters(r, st, name, w, w_te);
    if (!err && w <= 0 && w_te <= 0) {
        /* a negative weight takes the style away: its LoRAs subtracted, and none of its words,
         * which would draw the picture toward it */
        err = mood_buf_printf(&r->used, "%s%s:%g", r->used.len ? ", " : "", name, w);
        cJSON_Delete(st);
        return err;
    }
    if (!err && !(r->flags & MOOD_STYLES_ADAPTERS_ONLY) && style_texted(r, name)) {
        /* a style given twice: its LoRAs' weights add up (fold_repeats), its words go in once */
        if (json_str(st, "template") || json_str(st, "trigger_words") || json_str(st, "negative"))
            mood_log(MOOD_LOG_WARN,
                     "style '%s' is given twice: its LoRAs apply at the sum of the weights, its "
                     "template, trigger words and negative prompt once",
                     name);
        err = mood_buf_printf(&r->used, "%s%s:%g", r->used.len ? ", " : "", name, w);
        cJSON_Delete(st);
        return err;
    }
    if (!err && !(r->flags & MOOD_STYLES_ADAPTERS_ONLY))
        err = push_string(&r->styles_texted, &r->n_styles_texted, &r->cap_styles_texted, name);
    if (r->flags & MOOD_STYLES_ADAPTERS_ONLY)
        s = NULL;
    else if (!err && (s = json_str(st, "template")))
        err = push_string(&r->templates, &r->n_templates, &r->cap_templates, s);
    if (!err && !(r->flags & MOOD_STYLES_ADAPTERS_ONLY) && (s = json_str(st, "trigger_words")))
        err = push_string(&r->triggers, &r->n_triggers, &r->cap_triggers, s);
    if (!err && !(r->flags & MOOD_STYLES_ADAPTERS_ONLY) && (s = json_str(st, "negative")))
        err = mood_buf_printf(&r->suffix_neg, "%s%s", r->suffix_neg.len ? ", " : "", s);
    if (!err)
        err = mood_buf_printf(&r->used, "%s%s:%g", r->used.len ? ", " : "", name, w);
    cJSON_Delete(st);
    return err;
}

/* ----- prompt tags ------------------------------------------------------------------------- */

/* What a tag's arguments ask for (lora-formats.md section 4.2). */
typedef struct tag_args {
    char *name;
    double unet, te;
    int has_w;        /* a weight was given (else a style's preferred weight applies) */
    int dyn;          /* DyLoRA rank cut (4th positional or dyn=), 0: none */
    const char *hash; /* hash=, or NULL */
} tag_args;

/* A1111's float(): a finite number, white space around it allowed. */
static int parse_weight(double *out, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    while (end != s && isspace((unsigned char)*end))
        end++;
    if (end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* A DyLoRA rank as A1111's int() reads it ([+-]digits, white space around them allowed), and
 * at least 1 (A1111 would slice a negative one from the end); one past INT_MAX keeps every rank,
 * as A1111's slice does. Returns 0, or MOOD_EINVAL naming the tag and the value, given as dyn=
 * when `named`, else as the fourth argument. */
static int parse_rank(int *out, const char *s, const char *tag, int named)
{
    char *end, what[256];
    long v;
    const char *p = s;
    snprintf(what, sizeof what, named ? "dyn=%s" : "\"%s\" (the fourth argument, DyLoRA's rank)",
             s);
    while (isspace((unsigned char)*p))
        p++;
    v = strtol(p, &end, 10);
    while (end != p && isspace((unsigned char)*end))
        end++;
    if (end == p || *end || !isdigit((unsigned char)p[*p == '+' || *p == '-']))
        return mood_error_set(MOOD_EINVAL, "prompt tag <%s>: %s is not a whole number", tag, what);
    if (v < 1) /* strtol's overflow is LONG_MAX, a rank past every file's: all of them */
        return mood_error_set(
            MOOD_EINVAL, "prompt tag <%s>: %s is not a DyLoRA rank (ranks start at 1)", tag, what);
    *out = v > INT_MAX ? INT_MAX : (int)v;
    return 0;
}

/* One named argument KEY=VALUE (eq at the '='). Returns 0, or an error naming the tag. */
static int tag_named(tag_args *t, const char *tag, char *arg, char *eq, int lora, double *te,
                     int *has_te, double *unet, int *has_unet)
{
    const char *v = eq + 1;
    *eq = '\0';
    if (!strcmp(arg, "te") || !strcmp(arg, "unet")) {
        int te_key = arg[0] == 't';
        if (parse_weight(te_key ? te : unet, v) != 0)
            return mood_error_set(MOOD_EINVAL, "prompt tag <%s>: \"%s=%s\" is not a weight", tag,
                                  arg, v);
        *(te_key ? has_te : has_unet) = 1;
    } else if (!strcmp(arg, "dyn")) {
        return parse_rank(&t->dyn, v, tag, 1);
    } else if (!strcmp(arg, "hash") && lora) {
        t->hash = v;
    } else {
        mood_log(MOOD_LOG_WARN, "prompt tag <%s>: \"%s=%s\" is not an argument mood knows; ignored",
                 tag, arg, v);
    }
    return 0;
}

/* Reads a tag body "name:TE:UNET:DYN" / "name:W:te=T:unet=U:dyn=D:hash=H" as A1111's
 * extra_networks_lora.py does (body is modified; tag is the whole text, for messages). */
static int tag_parse(tag_args *t, char *body, const char *tag, int lora)
{
    char *p = body, *next;
    /* positional and named values apart: a named one wins wherever it stands */
    double te = 1.0, unet = 1.0, named_te = 0, named_unet = 0;
    int positional = 0, has_te = 0, has_unet = 0, has_named_te = 0, has_named_unet = 0, err = 0;
    int pos_dyn = 0;
    memset(t, 0, sizeof *t);
    next = strchr(p, ':');
    if (next)
        *next++ = '\0';
    t->name = p;
    if (!*t->name)
        return mood_error_set(MOOD_EINVAL, "prompt tag <%s> names nothing", tag);
    for (p = next; p && !err; p = next) {
        char *eq;
        if ((next = strchr(p, ':')))
            *next++ = '\0';
        eq = strchr(p, '=');
        if (eq && !strchr(eq + 1, '=')) { /* A1111: split('=', 2) gives exactly two parts */
            err = tag_named(t, tag, p, eq, lora, &named_te, &has_named_te, &named_unet,
                            &has_named_unet);
            continue;
        }
        positional++;
        if (positional <= 2 && parse_weight(positional == 1 ? &te : &unet, p) != 0)
            err = mood_error_set(MOOD_EINVAL, "prompt tag <%s>: \"%s\" is not a weight", tag, p);
        else if (positional <= 2)
            *(positional == 1 ? &has_te : &has_unet) = 1;
        else if (positional == 3)
            err = parse_rank(&pos_dyn, p, tag, 0);
        else if (positional > 3)
            mood_log(MOOD_LOG_WARN, "prompt tag <%s>: \"%s\" is one argument too many; ignored",
                     tag, p);
    }
    if (err)
        return err;
    /* A1111: te = positional 1 (else 1), te= overrides; unet = positional 2 (else that te),
     * unet= overrides */
    t->te = has_named_te ? named_te : te;
    t->unet = has_named_unet ? named_unet : has_unet ? unet : t->te;
    t->has_w = has_te || has_unet || has_named_te || has_named_unet;
    if (!t->dyn) /* dyn= (set when given) wins over the fourth argument */
        t->dyn = pos_dyn;
    return 0;
}

/* Whether `full` (a hex hash) starts with `prefix`, ignoring case. */
static int hash_starts(const char *full, const char *prefix)
{
    size_t n = strlen(prefix);
    return full && n && strlen(full) >= n && strncasecmp(full, prefix, n) == 0;
}

/* The registry LoRA whose AutoV3 or SHA-256 starts with t->hash, at the tag's weights. Returns
 * 1 when the registry has none (the tag's name is then the fallback). */
static int add_by_hash(resolver *r, const tag_args *t)
{
    char *style = NULL, *json = NULL;
    cJSON *st = NULL;
    const cJSON *a, *list = NULL;
    int err = mood_registry_style_by_hash(&style, r->reg, t->hash);
    if (err == MOOD_ENOTFOUND || err == MOOD_EINVAL) { /* not there, or not a hash mood reads */
        mood_error_clear();
        return 1;
    }
    if (!err && (err = mood_registry_show_json(&json, r->reg, style)) == 0 &&
        !(st = cJSON_Parse(json)))
        err = mood_error_set(MOOD_EFORMAT, "style \"%s\": unreadable registry record", style);
    if (!err) {
        list = cJSON_GetObjectItemCaseSensitive(st, "adapters");
        err = 1; /* unless an adapter of the style has the hash (it should: the query found it) */
    }
    cJSON_ArrayForEach(a, list)
    {
        if (!hash_starts(json_str(a, "autov3"), t->hash) &&
            !hash_starts(json_str(a, "sha256"), t->hash))
            continue;
        if (!json_str(a, "path")) {
            err = mood_error_set(MOOD_EFORMAT,
                                 "style \"%s\": an adapter without a stored file "
                                 "(run `mood doctor`)",
                                 style);
            break;
        }
        /* the name the tag gave it (an image's), so that the image's text comes back as well */
        err = add_adapter(r, json_str(a, "path"), style, t->name, t->unet, t->te,
                          json_str(a, "autov3_short"));
        if (!err)
            err = mood_buf_printf(&r->used, "%s%s:%g", r->used.len ? ", " : "", style, t->unet);
        break;
    }
    cJSON_Delete(st);
    mood_registry_free_string(json);
    mood_registry_free_string(style);
    return err;
}

/* A lora tag's target: with hash=, the registry LoRA of that hash; else (or when there is none)
 * an existing file (as given, or NAME.safetensors), else a style. */
/* A file named by a <lora:NAME> tag is taken before a registry style of that NAME (A1111's tag
 * names a file): when both exist, the style's template and trigger words are not applied, which
 * is said. */
static int add_tag_file(resolver *r, const tag_args *t, const char *path)
{
    char *json = NULL;
    if (r->reg && mood_registry_show_json(&json, r->reg, t->name) == 0)
        mood_log(MOOD_LOG_WARN,
                 "<lora:%s>: the file %s is used, not the registry style of that name "
                 "(<style:%s> applies the style)",
                 t->name, path, t->name);
    mood_error_clear();
    mood_registry_free_string(json);
    return add_file(r, path, t->unet, t->te);
}

/* A1111 names a LoRA by its file's stem ("<lora:Ink Wash (v2):0.8>", copied from an image); its
 * style has the name import made of that stem. Whether `name` is no style but the stem of the
 * file of style `*alt` (set), which holds that file: only then, since several stems give one
 * name ("水墨画" and "ゴッホ風" both give "style"). */
static int is_file_stem_style(resolver *r, const char *name, char *alt, size_t size)
{
    char *json = NULL, stem[512];
    cJSON *st = NULL;
    const cJSON *a;
    int found = 0;
    mood_registry_name_sanitize(alt, size, name);
    if (strcmp(alt, name) != 0 && mood_registry_show_json(&json, r->reg, name) != 0 &&
        mood_registry_show_json(&json, r->reg, alt) == 0 && (st = cJSON_Parse(json)) != NULL) {
        cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(st, "adapters"))
        {
            const char *file = json_str(a, "file_name");
            if (file) {
                file_stem(stem, sizeof stem, file);
                found |= strcmp(stem, name) == 0;
            }
        }
    }
    cJSON_Delete(st);
    mood_registry_free_string(json);
    mood_error_clear();
    return found;
}

static int add_lora_tag(resolver *r, const tag_args *t)
{
    char path[4096];
    int err;
    if (t->hash && r->reg && (err = add_by_hash(r, t)) <= 0)
        return err;
    if (mood_path_exists(t->name) && !strchr(t->name, '\n'))
        return add_tag_file(r, t, t->name);
    snprintf(path, sizeof path, "%s.safetensors", t->name);
    if (mood_path_exists(path))
        return add_tag_file(r, t, path);
    if (!r->reg)
        return skip_missing(r, t->name,
                            mood_error_set(MOOD_ENOTFOUND, "<lora:%s>: no such file", t->name));
    if (is_file_stem_style(r, t->name, path, sizeof path))
        return add_style(r, path, t->unet, t->te, t->has_w);
    if ((err = add_style(r, t->name, t->unet, t->te, t->has_w)) == MOOD_EINVAL &&
        strncmp(mood_error_last(), "no style named", 14) == 0) {
        char why[512]; /* a <lora:> tag names a file first: say both places were looked in */
        snprintf(why, sizeof why, "%s", mood_error_last());
        err = mood_error_set(MOOD_EINVAL, "<lora:%s>: no such file here, and %s", t->name, why);
    }
    return err;
}

/* Adapters first..n came from the <lora:> tag `name`: A1111 keeps one network per tag name. */
static int note_tag(resolver *r, size_t first, const char *name)
{
    if (mood_array_reserve(&r->tag_of, &r->cap_tag_of, r->out->n, sizeof *r->tag_of, 8) != 0)
        return mood_error_nomem();
    for (; r->n_tag_of < r->out->n; r->n_tag_of++) /* a style's adapters between: none */
        r->tag_of[r->n_tag_of] = NULL;
    for (size_t i = first; i < r->out->n; i++)
        if (!(r->tag_of[i] = mood_strdup(name)))
            return mood_error_nomem();
    return 0;
}

/* One tag "<kind:body>" (text between the brackets given). */
static int handle_tag(resolver *r, const char *inner, size_t len)
{
    char *copy = mood_malloc(len + 1), *tag = mood_malloc(len + 1);
    tag_args t;
    size_t first = r->out->n;
    int err, style = strncasecmp(inner, "style:", 6) == 0;
    if (!copy || !tag) {
        mood_free(copy);
        mood_free(tag);
        return mood_error_nomem();
    }
    memcpy(copy, inner, len);
    copy[len] = '\0';
    memcpy(tag, copy, len + 1);
    err = tag_parse(&t, copy + (style ? 6 : 5), tag, !style);
    if (!err)
        err = style ? add_style(r, t.name, t.unet, t.te, t.has_w) : add_lora_tag(r, &t);
    for (size_t i = first; !err && i < r->out->n; i++)
        r->out->adapters[i].dyn = t.dyn; /* every adapter the tag brought (a style's too) */
    if (!err && !style && r->out->n > first)
        err = note_tag(r, first, t.name);
    mood_free(copy);
    mood_free(tag);
    return err;
}

/* Copies prompt to r->prompt without its tags, handling each. */
static int strip_tags(resolver *r, const char *prompt)
{
    const char *p = prompt;
    int err = 0;
    while (*p && !err) {
        const char *close;
        if (*p == '<' &&
            (strncasecmp(p + 1, "lora:", 5) == 0 || strncasecmp(p + 1, "lyco:", 5) == 0 ||
             strncasecmp(p + 1, "style:", 6) == 0) &&
            (close = strchr(p, '>'))) {
            err = handle_tag(r, p + 1, (size_t)(close - p - 1));
            p = close + 1;
            continue;
        }
        if (*p == '<' && !strchr(p, '>') &&
            (strncasecmp(p + 1, "lora:", 5) == 0 || strncasecmp(p + 1, "lyco:", 5) == 0 ||
             strncasecmp(p + 1, "style:", 6) == 0)) {
            size_t n = strlen(p) < 40 ? strlen(p) : 40;
            while (n > 0 && ((unsigned char)p[n] & 0xC0) == 0x80)
                n--; /* whole characters only */
            mood_log(MOOD_LOG_WARN,
                     "'%.*s' has no closing '>': it is no tag but text of the prompt (as in "
                     "A1111); close it to apply the LoRA",
                     (int)n, p);
        }
        err = mood_buf_append(&r->prompt, p, 1);
        p++;
    }
    return err;
}

/* ----- prompt assembly --------------------------------------------------------------------- */

/* Trims white space at the end of the prompt. A comma stays: A1111 and ComfyUI encode
 * "1girl, solo, <lora:x:0.5>" as "1girl, solo, ", whose comma is a token. */
static void trim_end(mood_buf *b)
{
    while (b->len && isspace((unsigned char)b->data[b->len - 1]))
        b->data[--b->len] = '\0';
}

/* What goes between the prompt and text appended to it: ", ", or " " after a comma it ends with. */
static const char *joiner(const mood_buf *prompt)
{
    if (!prompt->len)
        return "";
    return prompt->data[prompt->len - 1] == ',' ? " " : ", ";
}

/* Template t applied to the prompt as A1111 applies a style (modules/styles.py merge_prompts):
 * every "{prompt}" replaced by the prompt. White space is no token, so the prompt comes without
 * the spaces a removed tag left at its end ("a cat <style:x>" is "a cat", as with --style x),
 * but where A1111 keeps two comma tokens, "1girl, solo, <lora:x>" into "{prompt}, ink" giving
 * "1girl, solo, , ink", one space stays between them: ",," would be one other token. A template
 * without "{prompt}" (the registry refuses those) would follow the prompt after ", ". */
static int apply_template(mood_buf *prompt, const char *t)
{
    static const char key[] = "{prompt}";
    const char *at = strstr(t, key), *p = t;
    mood_buf nb;
    int err = 0;
    trim_end(prompt);
    if (!at)
        return mood_buf_printf(prompt, "%s%s", prompt->len ? ", " : "", t);
    mood_buf_init(&nb);
    for (; at && !err; p = at + sizeof key - 1, at = strstr(p, key)) {
        const char *after = at + sizeof key - 1;
        int keep_apart = prompt->len && prompt->data[prompt->len - 1] == ',' && *after == ',';
        err = mood_buf_printf(&nb, "%.*s%s%s", (int)(at - p), p, prompt->data ? prompt->data : "",
                              keep_apart ? " " : "");
    }
    if (!err)
        err = mood_buf_puts(&nb, p);
    if (!err) {
        mood_buf_dispose(prompt);
        *prompt = nb;
    } else {
        mood_buf_dispose(&nb);
    }
    return err;
}

static int apply_triggers(mood_buf *prompt, const char *triggers)
{
    const char *p = triggers;
    mood_buf add;
    int err = 0;
    mood_buf_init(&add);
    while (*p && !err) {
        size_t n = strcspn(p, ",");
        const char *next = p + n + (p[n] == ',');
        while (n && isspace((unsigned char)*p))
            p++, n--;
        while (n && isspace((unsigned char)p[n - 1]))
            n--;
        if (n && !(prompt->data && mood_str_has_words(prompt->data, p, n)) &&
            !(add.data && mood_str_has_words(add.data, p, n)))
            err = mood_buf_printf(&add, "%s%.*s", add.len ? ", " : "", (int)n, p);
        p = next;
    }
    if (!err && add.len)
        err = mood_buf_printf(prompt, "%s%s", joiner(prompt), add.data);
    mood_buf_dispose(&add);
    return err;
}

/* A style's template may hold tags ("{prompt}, <lora:watercolor:0.6>"): A1111 puts a style's
 * text into the prompt before it reads the tags, so they apply. Each template's tags are handled
 * (their LoRAs added, a <style:> one's template queued: a style's words go in once, so a cycle
 * ends) and the template keeps the rest of its text. */
static int template_tags(resolver *r)
{
    int err = 0;
    for (size_t i = 0; i < r->n_templates && !err; i++) {
        mood_buf outer = r->prompt; /* strip_tags writes to r->prompt */
        mood_buf_init(&r->prompt);
        if (!strchr(r->templates[i], '<')) {
            r->prompt = outer;
            continue;
        }
        err = strip_tags(r, r->templates[i]);
        if (!err)
            err = mood_buf_puts(&r->prompt, "");
        if (!err) {
            mood_free(r->templates[i]);
            r->templates[i] = mood_buf_detach(&r->prompt);
        }
        mood_buf_dispose(&r->prompt);
        r->prompt = outer;
    }
    return err;
}

static int assemble(resolver *r, const char *negative)
{
    int err = 0;
    for (size_t i = 0; i < r->n_templates && !err; i++)
        err = apply_template(&r->prompt, r->templates[i]);
    trim_end(&r->prompt); /* white space is no token: the PNG's text is cleaner */
    for (size_t i = 0; i < r->n_triggers && !err; i++)
        err = apply_triggers(&r->prompt, r->triggers[i]);
    if (!err && negative)
        err = mood_buf_puts(&r->negative, negative);
    if (!err && r->suffix_neg.len)
        err =
            mood_buf_printf(&r->negative, "%s%s", r->negative.len ? ", " : "", r->suffix_neg.data);
    /* empty strings rather than NULL */
    if (!err)
        err = mood_buf_puts(&r->prompt, "");
    if (!err)
        err = mood_buf_puts(&r->negative, "");
    if (!err)
        err = mood_buf_puts(&r->used, "");
    if (!err)
        err = mood_buf_puts(&r->missing, "");
    return err;
}

/* ----- A1111 names ------------------------------------------------------------------------ */

/* s as a style name ([A-Za-z0-9_.-] only): what <lora:NAME:W> carries through A1111 (no ':' or
 * '>') and Civitai's resource pattern, and what "Lora hashes" keeps (no ',' or ':'); the name
 * `mood import` gives the file's style, so that the image's tags name the styles again. */
static char *safe_alias(const char *s)
{
    char name[128];
    mood_registry_name_sanitize(name, sizeof name, s);
    return mood_strdup(name);
}

/* Whether two adapters are the same LoRA: the same content hash, else the same file. */
static int same_lora(const mood_resolved_adapter *a, const mood_resolved_adapter *b)
{
    if (a->hash[0] && b->hash[0])
        return strcasecmp(a->hash, b->hash) == 0;
    return strcmp(a->path, b->path) == 0;
}

/* Whether an adapter before adapters[i] has the alias `cand` (without case, as Civitai's keys). */
static int alias_taken(const mood_resolved_styles *out, size_t i, const char *cand)
{
    for (size_t j = 0; j < i; j++)
        if (strcasecmp(out->adapters[j].alias, cand) == 0)
            return 1;
    return 0;
}

/* Makes every alias safe, and unique per LoRA: a LoRA met before keeps its alias, another LoRA
 * whose alias is taken gets "_2", "_3", ... */
static int name_aliases(mood_resolved_styles *out)
{
    for (size_t i = 0; i < out->n; i++) {
        mood_resolved_adapter *a = &out->adapters[i];
        char *base = NULL, *cand = NULL;
        size_t j, n;
        for (j = 0; j < i && !same_lora(a, &out->adapters[j]); j++)
            ;
        if (j < i) {
            cand = mood_strdup(out->adapters[j].alias);
        } else if ((base = safe_alias(a->alias))) {
            n = strlen(base) + 24;
            if ((cand = mood_malloc(n)))
                snprintf(cand, n, "%s", base);
            for (size_t k = 2; cand && alias_taken(out, i, cand); k++)
                snprintf(cand, n, "%s_%zu", base, k);
        }
        mood_free(base);
        if (!cand)
            return mood_error_nomem();
        mood_free(a->alias);
        a->alias = cand;
    }
    return 0;
}

/* Drops entry i (folded into another): its strings go. */
static void drop_adapter(mood_resolved_adapter *a)
{
    mood_free(a->path);
    mood_free(a->name);
    mood_free(a->alias);
}

/* An image's <lora:> tags as A1111 applies them: one network object per tag name, whose
 * multipliers (and DyLoRA cut) each tag sets in turn, applied once per tag: a name tagged k
 * times is applied at k times the last tag's multipliers, which is said. Only adapters that
 * tags brought (tag_of[i]) take part; the rest keep their places. */
static int fold_a1111_tags(mood_resolved_styles *out, char **tag_of, size_t n_tagged)
{
    size_t kept = 0, *count = mood_calloc(out->n ? out->n : 1, sizeof *count);
    if (!count)
        return mood_error_nomem();
    for (size_t i = 0; i < out->n; i++) {
        mood_resolved_adapter *a = &out->adapters[i];
        const char *tag = i < n_tagged ? tag_of[i] : NULL;
        size_t j = 0;
        while (tag && j < kept &&
               !(j < n_tagged && tag_of[j] && strcmp(tag_of[j], tag) == 0 &&
                 same_lora(a, &out->adapters[j])))
            j++;
        if (!tag || j == kept) {
            out->adapters[kept] = *a;
            if (kept < n_tagged && i < n_tagged) {
                char *keep = tag_of[i];
                tag_of[i] = NULL;
                tag_of[kept] = keep;
            }
            count[kept++] = 1;
            continue;
        }
        mood_resolved_adapter *first = &out->adapters[j];
        count[j]++;
        first->unet = (double)count[j] * a->unet;
        first->te = (double)count[j] * a->te;
        first->dyn = a->dyn;
        drop_adapter(a);
        mood_free(tag_of[i]);
        tag_of[i] = NULL;
    }
    out->n = kept;
    for (size_t j = 0; j < kept; j++) {
        char te[64] = "";
        if (count[j] < 2)
            continue;
        if (out->adapters[j].te != out->adapters[j].unet)
            snprintf(te, sizeof te, " (text encoder %g)", out->adapters[j].te);
        mood_log(MOOD_LOG_WARN,
                 "<lora:%s> is tagged %zu times: applied as A1111 applies that, each time at the "
                 "last tag's multiplier, %g in all%s",
                 tag_of[j], count[j], out->adapters[j].unet, te);
    }
    mood_free(count);
    return 0;
}

/* One adapter per LoRA and DyLoRA cut: a repeat's multipliers are added to the first entry's
 * (as two LoRA loaders in a row do in ComfyUI), so that the one <lora:> tag written for it
 * reproduces the image in A1111. */
static void fold_repeats(mood_resolved_styles *out)
{
    size_t kept = 0;
    for (size_t i = 0; i < out->n; i++) {
        mood_resolved_adapter *a = &out->adapters[i];
        size_t j = 0;
        while (j < kept && !(same_lora(a, &out->adapters[j]) && a->dyn == out->adapters[j].dyn))
            j++;
        if (j == kept) {
            out->adapters[kept++] = *a;
            continue;
        }
        out->adapters[j].unet += a->unet;
        out->adapters[j].te += a->te;
        drop_adapter(a);
    }
    out->n = kept;
    /* repeats that cancel out (inkwash:0.5 and inkwash:-0.5) leave it out, as a weight of 0
     * does: no LoRA applied, none recorded in the image */
    kept = 0;
    for (size_t i = 0; i < out->n; i++) {
        if (out->adapters[i].unet == 0 && out->adapters[i].te == 0)
            drop_adapter(&out->adapters[i]);
        else
            out->adapters[kept++] = out->adapters[i];
    }
    out->n = kept;
}

/* A <lora:> tag name given more than once (for one LoRA) in a prompt typed for mood: its
 * multipliers are added up (fold_repeats), which A1111 does not do: said once per name. */
static void note_summed_tags(const mood_resolved_styles *out, char *const *tag_of, size_t n_tagged)
{
    for (size_t i = 0; i < out->n && i < n_tagged; i++) {
        size_t count = 1, k;
        if (!tag_of[i])
            continue;
        for (k = 0; k < i && !(tag_of[k] && strcmp(tag_of[k], tag_of[i]) == 0); k++)
            ;
        if (k < i)
            continue; /* said at its first tag */
        for (size_t j = i + 1; j < out->n && j < n_tagged; j++)
            count += tag_of[j] && strcmp(tag_of[j], tag_of[i]) == 0 &&
                     same_lora(&out->adapters[i], &out->adapters[j]);
        if (count > 1)
            mood_log(MOOD_LOG_WARN,
                     "<lora:%s> is tagged %zu times: mood applies the sum of their multipliers (as "
                     "LoRA loaders in a row do in ComfyUI); A1111 applies %zu times the last one",
                     tag_of[i], count, count);
    }
}

/* MOOD_STYLES_A1111_REPEATS first folds an image's repeated tags as A1111 applied them. */
static int combine_repeats(resolver *r)
{
    int err = 0;
    if (r->flags & MOOD_STYLES_A1111_REPEATS)
        err = fold_a1111_tags(r->out, r->tag_of, r->n_tag_of);
    else
        note_summed_tags(r->out, r->tag_of, r->n_tag_of);
    if (!err)
        fold_repeats(r->out);
    return err;
}

static void free_strings(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        mood_free(items[i]);
    mood_free(items);
}

int mood_styles_resolve(mood_resolved_styles *out, mood_registry *registry, const char *prompt,
                        const char *negative, const mood_style_arg *styles, size_t n_styles,
                        const mood_weighted_adapter *loras, size_t n_loras, unsigned flags)
{
    resolver r;
    int err;
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    memset(&r, 0, sizeof r);
    r.reg = registry;
    r.flags = flags;
    r.out = out;
    mood_buf_init(&r.prompt);
    mood_buf_init(&r.negative);
    mood_buf_init(&r.used);
    mood_buf_init(&r.missing);
    mood_buf_init(&r.suffix_neg);
    err = strip_tags(&r, prompt ? prompt : "");
    for (size_t i = 0; i < n_styles && !err; i++)
        err =
            add_style(&r, styles[i].name, styles[i].weight, styles[i].weight, styles[i].has_weight);
    for (size_t i = 0; i < n_loras && !err; i++) {
        if (loras[i].dyn < 0)
            err = mood_error_set(MOOD_EINVAL, "%s: a negative DyLoRA rank cut (%d)", loras[i].path,
                                 loras[i].dyn);
        else if ((err = add_file(&r, loras[i].path, loras[i].unet, loras[i].te)) == 0)
            out->adapters[out->n - 1].dyn = loras[i].dyn;
    }
    if (!err)
        err = template_tags(&r);
    if (!err)
        err = name_aliases(out);
    if (!err)
        err = combine_repeats(&r);
    if (!err)
        err = assemble(&r, negative);
    if (!err) {
        out->prompt = mood_buf_detach(&r.prompt);
        out->negative = mood_buf_detach(&r.negative);
        out->styles_used = mood_buf_detach(&r.used);
        out->missing = mood_buf_detach(&r.missing);
    }
    mood_buf_dispose(&r.prompt);
    mood_buf_dispose(&r.negative);
    mood_buf_dispose(&r.used);
    mood_buf_dispose(&r.missing);
    mood_buf_dispose(&r.suffix_neg);
    free_strings(r.templates, r.n_templates);
    free_strings(r.triggers, r.n_triggers);
    free_strings(r.styles_texted, r.n_styles_texted);
    free_strings(r.tag_of, r.n_tag_of);
    if (err)
        mood_resolved_styles_dispose(out);
    return err;
}

void mood_resolved_styles_dispose(mood_resolved_styles *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        mood_free(s->adapters[i].path);
        mood_free(s->adapters[i].name);
        mood_free(s->adapters[i].alias);
    }
    mood_free(s->adapters);
    mood_free(s->prompt);
    mood_free(s->negative);
    mood_free(s->styles_used);
    mood_free(s->missing);
    memset(s, 0, sizeof *s);
}
