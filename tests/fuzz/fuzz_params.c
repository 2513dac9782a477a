/*
 * fuzz_params.c: libFuzzer target for the A1111 parameters parser and writer
 * (styles/params.c). Each input is a parameters text, NUL-terminated: text that is not UTF-8
 * must be refused with MOOD_EINVAL, anything else parses; what parses formats, and the formatted
 * text parses again. When params.h promises it (the text ended in details that are written back,
 * no details key replaced a prompt, and no later line of the negative prompt starts with
 * "Negative prompt:"), one more round must give the same text.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mood/params.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Details that format writes back (fields set, not derived from Hashes, plus the extras). */
static size_t written(const mood_params *p)
{
    return (p->steps > 0) + !!p->sampler + !!p->schedule_type + !!isfinite(p->cfg_scale) +
           !!p->has_seed + (p->width > 0 && p->height > 0) +
           (p->model_hash && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_MODEL)) + !!p->model +
           !!isfinite(p->denoising_strength) + (p->clip_skip > 1) +
           (p->n_lora_hashes && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_LORA)) +
           (p->n_ti_hashes && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_TI)) + !!p->version +
           p->n_extras;
}

static char *format_or_die(const mood_params *p)
{
    char *out = NULL;
    if (mood_params_format(&out, p) != 0 || !out)
        abort();
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *once, *twice;
    mood_params p, q;
    int err, stable;
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    err = mood_params_parse(&p, text);
    if (err) {
        if (err != MOOD_EINVAL || p.n_extras || p.prompt[0])
            abort();
        free(text);
        return 0;
    }
    if (!p.prompt || !p.negative_prompt || p.clip_skip < 1 || (p.width > 0) != (p.height > 0))
        abort();
    for (size_t i = 0; i < p.n_extras; i++) {
        if (!p.extras[i].key[0] || mood_params_get(&p, p.extras[i].key) != p.extras[i].value)
            abort();
    }
    /* A line of the negative prompt that starts with "Negative prompt:" (after its first) has no
     * spelling in A1111's layout: the next parse takes it for the start and drops the marker. */
    stable = p.has_details && !p.prompt_from_details && written(&p) > 0 &&
             !strstr(p.negative_prompt, "\nNegative prompt:");
    once = format_or_die(&p);
    if (mood_params_parse(&q, once) != 0)
        abort();
    twice = format_or_die(&q);
    if (stable && strcmp(once, twice) != 0)
        abort();
    mood_params_dispose(&q);
    mood_params_dispose(&p);
    mood_params_free_string(once);
    mood_params_free_string(twice);
    free(text);
    return 0;
}
