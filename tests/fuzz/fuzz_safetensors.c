/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors reader. Any byte string goes through
 * mood_st_open_memory; when it validates, every tensor and metadata accessor is exercised and
 * small numeric tensors are converted to float32, so a reader bug that lets a bad offset or
 * shape through shows up as an out-of-bounds access under ASan. Built with -fsanitize=fuzzer
 * (MOOD_FUZZ=ON, clang) or with driver.c, which replays a corpus and random mutations.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "mood/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_CONVERT (1u << 16) /* elements: keeps each input fast */

static void touch_tensor(const mood_st_file *f, const mood_st_tensor *t)
{
    volatile uint8_t sink = 0;
    uint64_t nbytes = mood_st_nbytes(t);
    int64_t numel = mood_st_numel(t);
    const mood_st_tensor *found = mood_st_find(f, t->name);
    if (found != t)
        abort(); /* names are unique, so lookup must find this very entry */
    if (nbytes && t->end > mood_st_file_size(f) - 8 - mood_st_header_len(f))
        abort();
    if (nbytes) {
        sink ^= ((const uint8_t *)t->data)[0];
        sink ^= ((const uint8_t *)t->data)[nbytes - 1];
    }
    (void)mood_dtype_name(t->dtype);
    if (mood_dtype_is_numeric(t->dtype) && numel > 0 && (uint64_t)numel <= MAX_CONVERT) {
        float *buf = mood_malloc((size_t)numel * sizeof *buf);
        double d;
        if (buf && mood_st_to_f32(buf, t) != 0)
            abort(); /* numeric dtypes always convert */
        if (mood_dtype_read_f64(&d, t->data, t->dtype) != 0)
            abort();
        mood_free(buf);
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mood_st_file *f = NULL;
    if (mood_st_open_memory(&f, data, size, "fuzz-input") != 0)
        return 0;
    for (size_t i = 0; i < mood_st_count(f); i++)
        touch_tensor(f, mood_st_at(f, i));
    for (size_t i = 0; i < mood_st_meta_count(f); i++) {
        const char *key = mood_st_meta_key(f, i);
        if (mood_st_meta_get(f, key) == NULL || mood_st_meta_value(f, i) == NULL)
            abort();
    }
    /* a name no tensor has is not found (JSON escapes can spell any name, so look first) */
    const char *absent = "\x01 not a name";
    int present = 0;
    for (size_t i = 0; i < mood_st_count(f); i++)
        present |= strcmp(mood_st_at(f, i)->name, absent) == 0;
    if (mood_st_at(f, mood_st_count(f)) != NULL || (!present && mood_st_find(f, absent) != NULL))
        abort();
    mood_st_close(f);
    return 0;
}
