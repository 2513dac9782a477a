/*
 * fuzz_prompt.c: libFuzzer target for the prompt path (engine/tokenizer.c, engine/prompt.c):
 * each input is a prompt, NUL-terminated, tokenized with A1111 emphasis and chunking and encoded
 * as plain text. Invalid UTF-8 and unreadable weights must be refused cleanly; accepted prompts
 * must give well-formed chunks (start, ids in the vocabulary, end) and consistent counts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mood/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mood_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *prompt = malloc(size + 1);
    mood_prompt_tokens p;
    mood_token_ids ids;
    int err;
    if (!prompt)
        return 0;
    if (!tok && mood_tokenizer_load(&tok, NULL) != 0)
        abort();
    memcpy(prompt, data, size);
    prompt[size] = '\0';
    err = mood_prompt_tokenize(&p, tok, prompt, NULL);
    if (err == 0) {
        int sum = 0;
        for (size_t c = 0; c < p.n_chunks; c++) {
            const mood_prompt_chunk *k = &p.chunks[c];
            if (k->ids[0] != MOOD_CLIP_START || k->ids[MOOD_CLIP_CONTEXT - 1] != MOOD_CLIP_END ||
                k->used < 0 || k->used > MOOD_CLIP_CHUNK)
                abort();
            for (int i = 0; i < MOOD_CLIP_CONTEXT; i++) {
                if (k->ids[i] < 0 || k->ids[i] >= MOOD_CLIP_VOCAB_SIZE)
                    abort();
            }
            sum += c + 1 < p.n_chunks ? MOOD_CLIP_CHUNK : k->used;
        }
        /* A1111 counts a chunk ended by BREAK as a full 75, even the last one ("a BREAK" is
         * 75/75), so the count lies between these two. */
        if (p.n_chunks == 0 || p.token_count < sum ||
            p.token_count > (int)p.n_chunks * MOOD_CLIP_CHUNK ||
            p.target_count % MOOD_CLIP_CHUNK != 0)
            abort();
    } else if (err != MOOD_EINVAL) {
        abort();
    }
    mood_prompt_tokens_dispose(&p);
    mood_token_ids_init(&ids);
    err = mood_tokenizer_encode(tok, &ids, (const char *)data, size);
    if (err != 0 && err != MOOD_EINVAL)
        abort();
    mood_token_ids_dispose(&ids);
    free(prompt);
    return 0;
}
