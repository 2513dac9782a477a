/*
 * params_format.c: writing the A1111 generation-parameters text (include/mood/params.h has the
 * rules): the prompt, the negative prompt and the details in A1111's key order, values quoted so
 * that they read back unchanged.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "styles/params_internal.h"

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
/* Whether text reads back as v (as a float when single). */
static int reads_back(const char *text, double v, int single)
{
    double r = strtod(text, NULL);
    return single ? (float)r == (float)v : r == v;
}

void mood_params_format_number(char out[32], double v, int single)
{
    double a = fabs(v);
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (reads_back(out, v, single))
            break;
    }
    if (!strchr(out, 'e') || !(a >= 1e-4 && a < 1e16))
        return;
    for (int decimals = 0; decimals <= 20; decimals++) { /* the same digits, written out */
        snprintf(out, 32, "%.*f", decimals, v);
        if (reads_back(out, v, single))
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
    char buf[32];
    mood_params_format_number(buf, v, 0);
    return mood_strdup(buf);
}

/* The known fields that are set, each with its canonical rank. */
static int typed_items(item *items, size_t *n, const mood_params *p)
{
#define PUSH(f, key, value)                                                                        \
    do {                                                                                           \
        if ((err = push_item(items, n, 2 * mood__params_rank_of_field(f), key, value)) != 0)       \
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
    span s = mood__params_strip(v, (span){0, n});
    int quote;
    if (n && (v[0] == '{' || v[0] == '[') && mood__params_json_extent(v, n, 0) == n &&
        !strchr(v, '\n'))
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
    MOOD_ARG_NONNULL(text_out);
    *text_out = NULL;
    MOOD_ARG_NONNULL(p);
    mood_buf_init(&b);
    err = mood_buf_puts(&b, p->prompt ? p->prompt : "");
    if (!err && p->negative_prompt && p->negative_prompt[0])
        err = mood_buf_printf(&b, "\nNegative prompt: %s", p->negative_prompt);
    if (!err)
        err = mood_buf_append(&b, "\n", 1);
    if (!err)
        err = append_details(&b, p);
    if (!err) {
        s = mood__params_strip(b.data, (span){0, b.len});
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
