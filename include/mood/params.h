/*
 * params.h: the AUTOMATIC1111 generation-parameters text ("infotext"), the `parameters` text
 * chunk of PNGs that A1111, Forge, Fooocus and many ComfyUI save nodes write and that Civitai
 * reads to link the models and LoRAs an image used (ecosystem.md §4):
 *
 *   a lighthouse at dusk, <lora:inkwash:0.8>
 *   Negative prompt: blurry
 *   Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512,
 *   Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "inkwash: 0123456789ab",
 *   Version: mood 0.1.0
 *
 * (the last line is one line). mood_params_parse reads it the way A1111 1.10's
 * parse_generation_parameters does (modules/infotext_utils.py):
 *   - the text is stripped and split at "\n"; the last line holds the details only when the
 *     key-value pattern \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$) matches it at least
 *     three times (Python's Unicode \w and \s), else it is one more prompt line;
 *   - the other lines, each stripped, are the prompt until a line starting with "Negative
 *     prompt:"; that line and every one after it are the negative prompt;
 *   - a value that starts and ends with '"' is decoded as a JSON string (kept as written when that
 *     fails); a key that appears twice keeps its first place and its last value; a key with an
 *     empty value is dropped (A1111 fails on it and skips it); "Prompt" and "Negative prompt" keys
 *     replace the prompts, as in A1111 (prompt_from_details tells);
 *   - where A1111 would cut a JSON object or array at its first comma, mood keeps the whole
 *     balanced value when a ',' or the end of the line follows it, as Civitai does for
 *     `Hashes: {...}`, `Civitai resources: [...]` and `Civitai metadata: {...}`; those values stay
 *     raw strings among the extras;
 *   - a text that is not parameters at all is all prompt (has_details = 0), as in A1111; only text
 *     that is not UTF-8 is an error (MOOD_EINVAL).
 * Known keys fill the typed fields below; a known key whose value does not parse as its type
 * (Steps: abc) stays among the extras, so nothing read is lost. Every other key is kept, in order.
 * When "Lora hashes" (or "TI hashes", "Model hash") is absent and a Civitai-style
 * `Hashes: {"model": "...", "lora:NAME": "...", "embed:NAME": "..."}` is present, the fields are
 * filled from it (and marked in from_hashes, so that formatting does not write them twice).
 *
 * What A1111 assumes for absent keys: Clip skip 1 (filled in), Schedule type "Automatic", RNG
 * "GPU" (noise drawn on the GPU), VAE Encoder/Decoder "Full", FP8 weight "Disable", Hires sampler
 * "Use same sampler", Hires checkpoint "Use same checkpoint", Mask mode "Inpaint masked",
 * Masked content "original", Inpaint area "Whole picture"; mood_params_get returns these.
 *
 * mood_params_format writes A1111's layout (processing.py create_infotext): the prompt, a
 * "Negative prompt: " line when there is one, then the details joined by ", " in A1111's key
 * order (Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model, ...,
 * Denoising strength, Clip skip when > 1, then extra keys, Lora hashes, TI hashes, Version),
 * the whole stripped. Extras read from a text keep their place after the known key they
 * followed. Values are quoted as A1111's quote() does (a JSON string when they contain ',', ':'
 * or a newline), and also when they are empty, start with '"', '{' or '[' (unless they are one
 * whole JSON value) or have surrounding white space, so that they read back unchanged; a value that
 * is one whole JSON object or array on one line is written as it is (Civitai reads `Hashes: {...}`
 * only that way). format(parse(x)) == x for every text mood writes, and y = format(parse(x)) comes
 * back unchanged from another round when x ended in a details line that is written back,
 * prompt_from_details is 0 (without details, a prompt's last line may read as details once format
 * has stripped what followed it, as in A1111) and no line of the negative prompt but its first
 * starts with "Negative prompt:" (A1111's layout has no way to write one: the next parse reads it
 * as the start of the negative prompt and drops the marker, as A1111 does); numbers are written
 * in their shortest form (CFG scale 7.0 -> 7).
 */
#ifndef MOOD_PARAMS_H
#define MOOD_PARAMS_H

#include "mood/core.h"
#include "mood/hash.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One "name: hash" entry of "Lora hashes" or "TI hashes". */
typedef struct mood_params_hash {
    char *name;
    char *hash;
} mood_params_hash;

/* A details pair without a field of its own; value unquoted. */
typedef struct mood_params_extra {
    char *key;
    char *value;
    int rank; /* where mood_params_format puts it (internal) */
} mood_params_extra;

/* from_hashes bits: fields filled from a "Hashes" JSON object rather than their own keys. */
enum {
    MOOD_PARAMS_FROM_HASHES_MODEL = 1,
    MOOD_PARAMS_FROM_HASHES_LORA = 2,
    MOOD_PARAMS_FROM_HASHES_TI = 4
};

/* Strings are owned by the struct (set them with mood_params_set*); numbers may be assigned
 * directly. The absent value of each field is given beside it. */
typedef struct mood_params {
    char *prompt;              /* "" when none, never NULL after init */
    char *negative_prompt;     /* "" when none, never NULL after init */
    int steps;                 /* 0: absent */
    char *sampler;             /* A1111 sampler name ("Euler a", "DPM++ 2M"); NULL: absent */
    char *schedule_type;       /* "Karras", "Automatic", ...; NULL: absent */
    double cfg_scale;          /* NAN: absent */
    int has_seed;              /* seed is set */
    uint64_t seed;             /* A1111 seeds are 0 .. 2^32-1; any 64-bit value is kept */
    int width, height;         /* "Size: WxH"; 0: absent */
    char *model_hash;          /* AutoV2: first 10 hex of the checkpoint's SHA-256; NULL: absent */
    char *model;               /* checkpoint name without extension; NULL: absent */
    int clip_skip;             /* 1 (A1111's default) when absent; written only when > 1 */
    double denoising_strength; /* NAN: absent */
    mood_params_hash *lora_hashes; /* "Lora hashes", in order */
    size_t n_lora_hashes;
    mood_params_hash *ti_hashes; /* "TI hashes" (textual inversions), in order */
    size_t n_ti_hashes;
    char *version; /* "Version"; NULL: absent */
    mood_params_extra *extras;
    size_t n_extras;
    int has_details;    /* parse: the text had a details line */
    int civitai_layout; /* parse_lenient: read as Civitai reads it (a one-line text, or lines
                           such as "Template:" after the details), not as A1111 would */
    /* parse: a "Prompt" or "Negative prompt" key of the details line replaced a prompt (as in
     * A1111); such a text may not come back unchanged from another format(parse()) */
    int prompt_from_details;
    unsigned from_hashes;                              /* parse: MOOD_PARAMS_FROM_HASHES_* */
    size_t cap_lora_hashes, cap_ti_hashes, cap_extras; /* internal */
} mood_params;

/* An empty set of parameters (prompts "", clip_skip 1, everything else absent). */
void mood_params_init(mood_params *p);
/* Frees everything p holds and leaves it as after init. */
void mood_params_dispose(mood_params *p);

/* Replaces both prompts (NULL counts as ""). */
MOOD_WARN_UNUSED int mood_params_set_prompt(mood_params *p, const char *prompt,
                                            const char *negative_prompt);
/* Sets one details pair by its A1111 key, e.g. ("Sampler", "Euler a"), ("Steps", "20"),
 * ("Size", "512x768"), ("Lora hashes", "a: 0123456789ab"), ("Hashes", "{\"model\": ...}"):
 * a known key goes into its field, any other key is added to or replaced among the extras.
 * "Prompt" and "Negative prompt" set the prompts. MOOD_EINVAL when the key is not a valid key
 * (a letter, digit or '_' then one or more of those, ' ', '-', '/') or when the value does not
 * parse for a known key; nothing changes then. */
MOOD_WARN_UNUSED int mood_params_set(mood_params *p, const char *key, const char *value);

/* A number as the parameters text writes it: the shortest decimal that reads back as v (as a
 * float when `single`: the engine's multipliers are floats), in plain notation as Python's repr
 * writes 1e-4 <= |v| < 1e16 ("10", "0.42", not "1e+01"); out holds 32 bytes. */
void mood_params_format_number(char out[32], double v, int single);
/* Appends one "Lora hashes" / "TI hashes" entry. ':' and ',' are removed from the name as A1111
 * does; the hash must not hold a ','. Clears the matching from_hashes bit. */
MOOD_WARN_UNUSED int mood_params_add_lora_hash(mood_params *p, const char *name, const char *hash);
MOOD_WARN_UNUSED int mood_params_add_ti_hash(mood_params *p, const char *name, const char *hash);
/* The value of a string-valued key: the prompts, Sampler, Schedule type, Model hash, Model,
 * Version, any extra; else A1111's default for an absent key (list above); else NULL. Numeric
 * keys (Steps, CFG scale, Seed, Size, Clip skip, Denoising strength) and the hash lists give
 * NULL: read their fields. Borrowed: valid until p changes. */
const char *mood_params_get(const mood_params *p, const char *key);

/* Parses an A1111 parameters text (UTF-8) into *out, which this function initializes (any
 * previous content is not freed). MOOD_EINVAL when text is NULL or not UTF-8; out is then empty. */
MOOD_WARN_UNUSED int mood_params_parse(mood_params *out, const char *text);
/* mood_params_parse, but a text whose last line is no A1111 details line ("Steps: ...") while
 * Civitai would find one is read as Civitai reads it (ecosystem.md 4.2; civitai_layout = 1): a
 * one-line text is broken before "Negative prompt:" and "Steps:" that follow ',' or '.'; the
 * details are the first line starting with "Steps: ", and lines after it (Dynamic Prompts'
 * "Template:" and "Negative Template:") are left out. A1111 would take the one line for the
 * details and lose the prompt. For reading an image to make it again (mood gen --from-png). */
MOOD_WARN_UNUSED int mood_params_parse_lenient(mood_params *out, const char *text);
/* Writes the parameters text; *text_out is freed with mood_params_free_string. */
MOOD_WARN_UNUSED int mood_params_format(char **text_out, const mood_params *p);
void mood_params_free_string(char *s);

/* The hashes A1111 writes, from mood_hash_file's result: "Model hash" is AutoV2, the first 10
 * hex characters of the file's SHA-256; a LoRA's "Lora hashes" entry is the first 12 hex of
 * AutoV3 (the SHA-256 of the safetensors data section, which kohya also stores as
 * sshs_model_hash and Civitai indexes), or of the file's SHA-256 when it is not safetensors.
 * A1111 prints a file's embedded sshs_model_hash verbatim when there is one; mood computes the
 * value itself so that a wrong embedded value (ostris/ai-toolkit#130) does not reach Civitai. */
void mood_params_model_hash(char out[11], const mood_file_hashes *h);
void mood_params_lora_hash(char out[13], const mood_file_hashes *h);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_PARAMS_H */
