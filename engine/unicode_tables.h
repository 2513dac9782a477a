/*
 * unicode_tables.h: the Unicode data the CLIP tokenizer needs (internal): general-category
 * letter and number ranges, lower-case mappings, canonical combining classes, canonical
 * decompositions and primary composites. The tables are generated into unicode_tables.c by
 * tools/gen_unicode_tables.py; every table is sorted by its first field.
 */
#ifndef MOOD_ENGINE_UNICODE_TABLES_H
#define MOOD_ENGINE_UNICODE_TABLES_H

#include <stddef.h>
#include <stdint.h>

typedef struct mood__uc_range {
    uint32_t lo, hi;
} mood__uc_range;

typedef struct mood__uc_pair {
    uint32_t from, to;
} mood__uc_pair;

typedef struct mood__uc_multi {
    uint32_t from, to[3];
} mood__uc_multi;

typedef struct mood__uc_class {
    uint32_t lo, hi, ccc;
} mood__uc_class;

/* cp decomposes into (a, b); b is 0 for a singleton. In mood__uc_comps, (a, b) compose to cp. */
typedef struct mood__uc_decomp {
    uint32_t cp, a, b;
} mood__uc_decomp;

extern const char mood__uc_version[];
extern const mood__uc_range mood__uc_letters[], mood__uc_numbers[];
extern const size_t mood__uc_letters_count, mood__uc_numbers_count;
extern const mood__uc_pair mood__uc_lower[];
extern const size_t mood__uc_lower_count;
extern const mood__uc_multi mood__uc_lower_multi[];
extern const size_t mood__uc_lower_multi_count;
extern const mood__uc_class mood__uc_ccc[];
extern const size_t mood__uc_ccc_count;
extern const mood__uc_decomp mood__uc_decomps[], mood__uc_comps[];
extern const size_t mood__uc_decomps_count, mood__uc_comps_count;

/* Python's \\w for one code point: a letter, a number or '_' (defined in tokenizer.c). */
int mood__uc_is_word(uint32_t cp);

/* 0 when text[0..len) is strict UTF-8, else MOOD_EINVAL with the byte offset in the message
 * (engine/tokenizer.c). The prompt parser checks first: its scanner steps by lead bytes. */
int mood__utf8_validate(const char *text, size_t len);
/* Decodes strict UTF-8 (no overlongs, surrogates or values past U+10FFFF). Returns the number
 * of bytes of the character at s (len > 0), or 0 when it is invalid (engine/tokenizer.c). */
size_t mood__utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);
/* The first code point of cp's full canonical decomposition: the letter under its accents
 * (ñ -> n, ấ -> a), cp itself when it has none (engine/tokenizer.c). */
uint32_t mood__uc_base_letter(uint32_t cp);
/* NFC of cps[0..n) in place; *n may shrink. work must hold 4 * n code points
 * (engine/tokenizer.c). */
void mood__uc_nfc(uint32_t *cps, size_t *n, uint32_t *work);
/* Unicode's full lower-case mapping of cp into out (3 code points room; returns how many: "İ"
 * lowers to two), cp itself when it has none (engine/tokenizer.c). */
size_t mood__uc_to_lower(uint32_t cp, uint32_t *out);
/* The canonical combining class of cp (0 for starters; engine/tokenizer.c). */
uint32_t mood__uc_ccc_of(uint32_t cp);
/* Writes code point cp (at most U+10FFFF) as UTF-8 into out (4 bytes room); returns the length
 * (engine/tokenizer.c). */
size_t mood__utf8_encode(uint32_t cp, char *out);

#endif /* MOOD_ENGINE_UNICODE_TABLES_H */
