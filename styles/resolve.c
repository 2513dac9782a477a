/*
 * resolve.c: turns a prompt with <style:...>/<lora:...> tags, --style and --lora arguments into
 * the final prompt, negative prompt and adapter list (mood/styles.h). Registry styles are read
 * through mood_registry_show_json, so this file sees the registry only through its public API.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    mood_resolved_styles *out;
    size_t cap_adapters;
    unsigned flags;
} resolver;

/* ----- adapters ---------------------------------------------------------------------------- */

static int add_adapter(resolver *r, const char *path, const char *name, double unet, double te,
                       const char *hash)
{
    mood_resolved_adapter *a;
    if (mood_array_reserve(&r->out->adapters, &r->cap_adapters, r->out->n + 1, sizeof *a, 8) != 0)
        return mood_error_nomem();
    a = &r->out->adapters[r->out->n];
    memset(a, 0, sizeof *a);
    a->path = mood_strdup(path);
    a->name = mood_strdup(name);
    a->unet = unet;
    a->te = te;
    snprintf(a->hash, sizeof a->hash, "%.12s", hash ? hash : "");
    r->out->n++;
    return a->path && a->name ? 0 : mood_error_nomem();
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
    return add_adapter(r, path, stem, unet, te, h.is_safetensors ? h.autov3 : "");
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

static int style_adapters(resolver *r, const cJSON *style, const char *name, double w, double w_te)
{
    const cJSON *a, *list = cJSON_GetObjectItemCaseSensitive(style, "adapters");
    int err = 0;
    cJSON_ArrayForEach(a, list)
    {
        const char *path = json_str(a, "path");
        double u = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(a, "unet_weight"));
        double t = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(a, "te_weight"));
        if (!path)
            return mood_error_set(MOOD_EFORMAT,
                                  "style \"%s\": an adapter without a stored file "
                                  "(run `mood doctor`)",
                                  name);
        if ((err = add_adapter(r, path, name, u * w, t * w_te, json_str(a, "autov3_short"))) != 0)
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
    return mood_buf_printf(&r->missing, "%s%s", r->missing.len ? ", " : "", name);
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
    err = style_adapters(r, st, name, w, w_te);
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

/* Reads the parameters of a tag body "name:W:W_TE" / "name:unet=W:te=W" (body is modified). */
static int tag_weights(char *body, const char *tag, char **name, double *w, double *w_te,
                       int *has_w)
{
    char *save = NULL, *p;
    int positional = 0, has_te = 0;
    *name = strtok_r(body, ":", &save);
    *w = *w_te = 1.0;
    *has_w = 0;
    if (!*name || !**name)
        return mood_error_set(MOOD_EINVAL, "prompt tag \"%s\" names nothing", tag);
    while ((p = strtok_r(NULL, ":", &save))) {
        char *eq = strchr(p, '='), *end;
        double v = strtod(eq ? eq + 1 : p, &end);
        if (end == (eq ? eq + 1 : p) || *end)
            return mood_error_set(MOOD_EINVAL, "prompt tag \"%s\": \"%s\" is not a weight", tag, p);
        if (eq && strncmp(p, "te=", 3) == 0) {
            *w_te = v;
            has_te = 1;
        } else if (eq && strncmp(p, "unet=", 5) == 0) {
            *w = v;
            *has_w = 1;
        } else if (!eq && positional == 0) {
            *w = v;
            *has_w = 1;
            positional++;
        } else if (!eq && positional == 1) {
            *w_te = v;
            has_te = 1;
            positional++;
        } else {
            return mood_error_set(MOOD_EINVAL, "prompt tag \"%s\": unexpected \"%s\"", tag, p);
        }
    }
    if (!has_te)
        *w_te = *w;
    return 0;
}

/* A lora tag's target: an existing file (as given, or NAME.safetensors), else a style. */
static int add_lora_tag(resolver *r, const char *name, double w, double w_te, int has_w)
{
    char path[4096];
    if (mood_path_exists(name) && !strchr(name, '\n'))
        return add_file(r, name, w, w_te);
    snprintf(path, sizeof path, "%s.safetensors", name);
    if (mood_path_exists(path))
        return add_file(r, path, w, w_te);
    if (!r->reg)
        return skip_missing(r, name,
                            mood_error_set(MOOD_ENOTFOUND, "<lora:%s>: no such file", name));
    return add_style(r, name, w, w_te, has_w);
}

/* One tag "<kind:body>" (text between the brackets given). */
static int handle_tag(resolver *r, const char *inner, size_t len)
{
    char *copy = mood_malloc(len + 1), *name;
    double w, w_te;
    int has_w, err, style = strncasecmp(inner, "style:", 6) == 0;
    if (!copy)
        return mood_error_nomem();
    memcpy(copy, inner, len);
    copy[len] = '\0';
    err = tag_weights(copy + (style ? 6 : 5), inner, &name, &w, &w_te, &has_w);
    if (!err)
        err = style ? add_style(r, name, w, w_te, has_w) : add_lora_tag(r, name, w, w_te, has_w);
    mood_free(copy);
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
        err = mood_buf_append(&r->prompt, p, 1);
        p++;
    }
    return err;
}

/* ----- prompt assembly --------------------------------------------------------------------- */

/* Trims spaces and dangling commas the removed tags left at the end of the prompt. */
static void trim_end(mood_buf *b)
{
    while (b->len && (isspace((unsigned char)b->data[b->len - 1]) || b->data[b->len - 1] == ','))
        b->data[--b->len] = '\0';
}

/* "{prompt}" in template t replaced by the prompt so far; without it, ", t" appended. */
static int apply_template(mood_buf *prompt, const char *t)
{
    const char *at = strstr(t, "{prompt}");
    mood_buf nb;
    int err;
    if (!at)
        return mood_buf_printf(prompt, "%s%s", prompt->len ? ", " : "", t);
    mood_buf_init(&nb);
    err = mood_buf_printf(&nb, "%.*s%s%s", (int)(at - t), t, prompt->data ? prompt->data : "",
                          at + 8);
    if (!err) {
        mood_buf_dispose(prompt);
        *prompt = nb;
    } else {
        mood_buf_dispose(&nb);
    }
    return err;
}

/* Whether needle occurs in hay, ignoring ASCII case. */
static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return 1;
    return 0;
}

static int apply_triggers(mood_buf *prompt, const char *triggers)
{
    if (prompt->data && contains_nocase(prompt->data, triggers))
        return 0;
    return mood_buf_printf(prompt, "%s%s", prompt->len ? ", " : "", triggers);
}

static int assemble(resolver *r, const char *negative)
{
    int err = 0;
    trim_end(&r->prompt);
    for (size_t i = 0; i < r->n_templates && !err; i++)
        err = apply_template(&r->prompt, r->templates[i]);
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
    for (size_t i = 0; i < n_loras && !err; i++)
        err = add_file(&r, loras[i].path, loras[i].unet, loras[i].te);
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
    if (err)
        mood_resolved_styles_dispose(out);
    return err;
}

void mood_resolved_styles_dispose(mood_resolved_styles *s)
{
    for (size_t i = 0; i < s->n; i++) {
        mood_free(s->adapters[i].path);
        mood_free(s->adapters[i].name);
    }
    mood_free(s->adapters);
    mood_free(s->prompt);
    mood_free(s->negative);
    mood_free(s->styles_used);
    mood_free(s->missing);
    memset(s, 0, sizeof *s);
}
