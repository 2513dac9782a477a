/*
 * params_internal.h: what the files of the A1111 parameters text share (not installed):
 * params.c (the struct, fields, code points), params_parse.c (reading; the key-value pattern)
 * and params_format.c (writing).
 */
#ifndef MOOD_STYLES_PARAMS_INTERNAL_H
#define MOOD_STYLES_PARAMS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "mood/params.h"

/* ----- code points (params.c) --------------------------------------------------------------- */

typedef struct span {
    size_t b, e; /* [b, e) */
} span;

/* Decodes one strictly valid UTF-8 character at s[i..n); returns its length, 0 if invalid. */
size_t mood__params_utf8_at(const char *str, size_t n, size_t i, uint32_t *cp);
/* Text already validated: decoding cannot fail (an invalid byte counts as one). */
size_t mood__params_next_cp(const char *s, size_t n, size_t i, uint32_t *cp);
/* The index after the white space (Python's str.isspace()) at s[i..n). */
size_t mood__params_skip_space(const char *s, size_t n, size_t i);
/* str.strip() of s[b..e). */
span mood__params_strip(const char *s, span in);
/* MOOD_EINVAL naming `what` and the byte when s is not valid UTF-8. */
int mood__params_check_utf8(const char *s, const char *what);

/* ----- the fields (params.c) ---------------------------------------------------------------- */

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

/* Index of key in A1111's key order, -1 when it is not one of them. */
int mood__params_canon_index(const char *key);
/* That index for a field's key (the place of other keys when it has none). */
int mood__params_rank_of_field(enum field f);
/* Frees a prompt (which may be the static empty text of an initialized struct). */
void mood__params_free_text(char *s);
/* *field = a copy of value ("" for NULL), the old value freed. */
int mood__params_replace_string(char **field, const char *value);
/* Appends (name, hash) with name as given (already cleaned). */
int mood__params_hashes_push(mood_params_hash **list, size_t *n, size_t *cap, const char *name,
                             size_t name_len, const char *hash, size_t hash_len);
mood_params_extra *mood__params_find_extra(const mood_params *p, const char *key);
/* Sets one pair. strict (callers): a value that does not fit its field is MOOD_EINVAL. Parsing
 * (strict 0) sets each key once: a value that does not fit becomes an extra under the same key,
 * at rank extra_rank. *field_out gets the field that took the value (F_NONE for an extra). */
int mood__params_set_pair(mood_params *p, const char *key, const char *value, int strict,
                          int extra_rank, enum field *field_out);

/* ----- the key-value pattern (params_parse.c) ----------------------------------------------- */

/* Index after the JSON object or array starting at s[i] ('{' or '['), brackets balanced and
 * matched outside strings; 0 when it does not close on this line. */
size_t mood__params_json_extent(const char *s, size_t n, size_t i);
/* True when s[0..n) is exactly a key of the pattern (\w[\w \-/]+). */
int mood__params_valid_key(const char *s, size_t n);

#endif /* MOOD_STYLES_PARAMS_INTERNAL_H */
