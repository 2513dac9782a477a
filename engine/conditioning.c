/*
 * conditioning.c: a prompt to the UNet's cross-attention context, as AUTOMATIC1111 builds it:
 * the prompt is parsed for emphasis and split into 75-token chunks (engine/prompt.c), each chunk
 * of 77 ids runs through the text encoder at the chosen clip skip, then every token's vector is
 * multiplied by its emphasis weight and the chunk rescaled to its original mean ("Original"
 * emphasis mode, A1111's default). Chunks are concatenated along the token axis.
 *
 * For a prompt without emphasis that fits one chunk this is exactly diffusers' encode_prompt
 * (padding to 77 with the tokenizer's pad id, last hidden state with the final layer norm), which
 * is what the conformance tests rely on.
 */
#include <string.h>

#include "engine/model_impl.h"

/* A1111's emphasis: z *= w per token, then z *= mean_before / mean_after. */
static void apply_emphasis(float *z, const double *weights, int T, int C)
{
    double before = 0, after = 0;
    int all_one = 1;
    for (int t = 0; t < T; t++)
        all_one &= weights[t] == 1.0;
    if (all_one)
        return;
    for (size_t i = 0; i < (size_t)T * C; i++)
        before += z[i];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++)
            z[(size_t)t * C + c] *= (float)weights[t];
    for (size_t i = 0; i < (size_t)T * C; i++)
        after += z[i];
    if (after != 0) {
        float r = (float)(before / after);
        for (size_t i = 0; i < (size_t)T * C; i++)
            z[i] *= r;
    }
}

int mood__encode_prompt(mood_model *m, const char *prompt, int clip_skip, float **out,
                        int *n_chunks)
{
    mood_prompt_options po;
    mood_prompt_tokens toks = {0};
    int C = mood_clip_get_config(m->clip)->hidden, err;
    int32_t *ids = NULL;
    float *z = NULL;
    size_t n;
    *out = NULL;
    *n_chunks = 0;
    mood_prompt_options_init(&po);
    po.pad_id = m->pad_id;
    if (m->fixed_clip_skip)
        clip_skip = m->fixed_clip_skip;
    if ((err = mood_prompt_tokenize(&toks, m->tok, prompt ? prompt : "", &po)) != 0)
        return err;
    n = toks.n_chunks;
    ids = mood_malloc(n * MOOD_CLIP_CONTEXT * sizeof *ids);
    z = mood_malloc(n * MOOD_CLIP_CONTEXT * (size_t)C * sizeof *z);
    if (!ids || !z)
        err = mood_error_nomem();
    for (size_t k = 0; k < n && !err; k++)
        memcpy(ids + k * MOOD_CLIP_CONTEXT, toks.chunks[k].ids, sizeof toks.chunks[k].ids);
    if (!err)
        err = mood_clip_forward(m->clip, ids, (int)n, MOOD_CLIP_CONTEXT, clip_skip, 1, z, NULL);
    for (size_t k = 0; k < n && !err; k++)
        apply_emphasis(z + k * MOOD_CLIP_CONTEXT * (size_t)C, toks.chunks[k].weights,
                       MOOD_CLIP_CONTEXT, C);
    mood_prompt_tokens_dispose(&toks);
    mood_free(ids);
    if (err) {
        mood_free(z);
        return err;
    }
    *out = z;
    *n_chunks = (int)n;
    return 0;
}
