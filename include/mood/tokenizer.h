/*
 * tokenizer.h: the CLIP byte-level BPE tokenizer of the Stable Diffusion text encoders, and the
 * AUTOMATIC1111 prompt syntax on top of it: emphasis ("(word)", "[word]", "(word:1.3)"), BREAK,
 * and the cutting of long prompts into 75-token chunks of 77 ids with a weight per token.
 *
 * Token ids are those of OpenAI's CLIP and Hugging Face's CLIPTokenizer: 49,408 tokens, start
 * 49406, end 49407. Text is normalized as the reference does (NFC, runs of whitespace to one
 * space, Unicode lower case), split with CLIP's pattern and encoded with the merges of
 * bpe_simple_vocab_16e6.txt.gz, which ships with mood (data/clip/).
 *
 * Thread-safety: a tokenizer keeps a cache of encoded words, so one tokenizer must not be used by
 * two threads at once; load one per thread (loading takes about 30 ms).
 */
#ifndef MOOD_TOKENIZER_H
#define MOOD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MOOD_CLIP_VOCAB_SIZE = 49408,
    MOOD_CLIP_START = 49406, /* <|startoftext|> */
    MOOD_CLIP_END = 49407,   /* <|endoftext|>, also the padding of SD1 */
    MOOD_CLIP_CHUNK = 75,    /* prompt tokens per chunk */
    MOOD_CLIP_CONTEXT = 77   /* ids per chunk: start + 75 + end */
};

typedef struct mood_tokenizer mood_tokenizer;

/* Loads the BPE vocabulary from `path` (bpe_simple_vocab_16e6.txt.gz), or, when path is NULL,
 * from the first of: $MOOD_DATA/clip/, <executable>/../share/mood/clip/, the source tree's
 * data/clip/. Errors: MOOD_ENOTFOUND (names the places searched), MOOD_EIO, MOOD_EFORMAT,
 * MOOD_ENOMEM. Free with mood_tokenizer_free. */
MOOD_WARN_UNUSED int mood_tokenizer_load(mood_tokenizer **out, const char *path);
void mood_tokenizer_free(mood_tokenizer *t);

/* Path of the vocabulary mood_tokenizer_load(NULL) would read, into buf (`size` bytes).
 * MOOD_ENOTFOUND when none exists; MOOD_EINVAL "buffer too small (N bytes needed)" when the path
 * does not fit, with buf left empty (""), never a cut path. */
MOOD_WARN_UNUSED int mood_tokenizer_default_path(char *buf, size_t size);

/* The folder of mood's data (the one holding clip/ and mood-tiny/), found as the vocabulary is.
 * Errors: as mood_tokenizer_default_path. */
MOOD_WARN_UNUSED int mood_data_dir(char *buf, size_t size);

/* A growable list of token ids (caller-owned; zero it or call _init, release with _dispose). */
typedef struct mood_token_ids {
    int32_t *ids;
    size_t n;
    size_t cap;
} mood_token_ids;

void mood_token_ids_init(mood_token_ids *l);
void mood_token_ids_dispose(mood_token_ids *l);

/* Appends the ids of UTF-8 `text` (len bytes) to out, without start or end tokens. Errors:
 * MOOD_EINVAL (text is not valid UTF-8; the message gives the byte offset), MOOD_ENOMEM; out
 * keeps what it had on failure. */
MOOD_WARN_UNUSED int mood_tokenizer_encode(mood_tokenizer *t, mood_token_ids *out, const char *text,
                                           size_t len);

/* The vocabulary entry of id in the tokenizer's byte-level form, e.g. "cat</w>" (borrowed,
 * valid while t lives); NULL for an id out of range. */
const char *mood_tokenizer_piece(const mood_tokenizer *t, int32_t id);

/* The text bytes of id: the piece mapped back from its byte-level form, "</w>" dropped (so it
 * may hold part of a UTF-8 character). Writes at most size-1 bytes and a NUL; returns the
 * length, or -1 for an id out of range. */
int mood_tokenizer_piece_text(const mood_tokenizer *t, int32_t id, char *buf, size_t size);

/* ----- A1111 prompt syntax --------------------------------------------------------------- */

/* One run of prompt text with its attention weight, as A1111's parse_prompt_attention returns
 * it. A BREAK keyword is a fragment with text "BREAK" and weight -1. */
typedef struct mood_prompt_fragment {
    char *text; /* NUL-terminated UTF-8, owned by the list */
    double weight;
} mood_prompt_fragment;

typedef struct mood_prompt_fragments {
    mood_prompt_fragment *items;
    size_t n;
} mood_prompt_fragments;

/* Parses emphasis as A1111 does: "(x)" multiplies by 1.1, "[x]" divides by 1.1, "(x:w)" by w,
 * nesting multiplies, "\(" "\)" "\[" "\]" "\\" are literal, a lone "\" is dropped, unclosed
 * brackets apply to the end, runs of equal weight are joined. MOOD_EINVAL for a weight A1111
 * cannot read either ("(x:1.2.3)"). */
MOOD_WARN_UNUSED int mood_prompt_parse(mood_prompt_fragments *out, const char *prompt);
void mood_prompt_fragments_dispose(mood_prompt_fragments *f);

/* A1111's prompt comments (1.8 and later, on by default; modules/processing_scripts/comments.py):
 * a line that starts with '#' goes with its newline, then every other '#' up to the end of its
 * line, each replaced by a newline. A copy (free with mood_prompt_free_string), NULL when out of
 * memory; *removed says whether there was one. */
char *mood_prompt_strip_comments(const char *prompt, int *removed);
void mood_prompt_free_string(char *s);

/* A1111's weight of a whole prompt (prompt_parser.get_multicond_prompt_list): a final ":N"
 * (digits with an optional point, white space around the colon allowed) is no text; it
 * multiplies the prompt's guidance, so that a lone prompt runs at CFG x N. Returns the length of
 * the text before it, trailing white space left out; *weight is N, or 1 when there is none. */
size_t mood_prompt_trailing_weight(const char *prompt, double *weight);

/* The length of the A1111 extra-network tag that starts at s ("<lora:x:0.8>", "<hypernet:y>":
 * re_extra_net "<(\w+):([^>]+)>", \w as Python's: Unicode letters, digits and '_'), 0 when s
 * starts none; *kind_len gets the length of the word after '<' (NULL: not wanted). A1111 takes
 * every such tag out of the prompt, whatever the word ("<😀:1>" is no tag: an emoji is no \w). */
size_t mood_prompt_network_tag(const char *s, size_t *kind_len);

typedef struct mood_prompt_options {
    int emphasis;        /* parse emphasis and BREAK (default 1); 0 takes the text as is */
    int comma_backtrack; /* A1111 "comma_padding_backtrack" (default 20; 0 turns it off) */
    int32_t pad_id;      /* id after the first end token (default 49407; 0 for SD2/OpenCLIP) */
} mood_prompt_options;

void mood_prompt_options_init(mood_prompt_options *o);

/* One chunk: start, 75 tokens (end-padded), end. */
typedef struct mood_prompt_chunk {
    int32_t ids[MOOD_CLIP_CONTEXT];
    double weights[MOOD_CLIP_CONTEXT];
    int used; /* prompt tokens in this chunk (before padding), 0..75 */
} mood_prompt_chunk;

typedef struct mood_prompt_tokens {
    mood_prompt_chunk *chunks;
    size_t n_chunks;
    int token_count;  /* what A1111 shows left of the slash: 75 per full chunk + the last's */
    int target_count; /* what it shows right of it: 75 x chunks */
} mood_prompt_tokens;

/* Tokenizes an A1111 prompt into chunks exactly as A1111's tokenize_line does (without
 * textual-inversion embeddings): each fragment is encoded on its own, BREAK starts a new chunk,
 * a full chunk moves the words after its last comma (if within comma_backtrack tokens) to the
 * next. opts may be NULL for the defaults. Free with mood_prompt_tokens_dispose. */
MOOD_WARN_UNUSED int mood_prompt_tokenize(mood_prompt_tokens *out, mood_tokenizer *t,
                                          const char *prompt, const mood_prompt_options *opts);
void mood_prompt_tokens_dispose(mood_prompt_tokens *p);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_TOKENIZER_H */
