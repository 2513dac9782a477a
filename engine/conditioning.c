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
 *
 * SDXL (A1111's sd_models_xl and sgm's GeneralConditioner, diffusers' StableDiffusionXLPipeline):
 * the same chunks go through both text encoders, CLIP-L with its end token as padding and
 * OpenCLIP bigG with its own pad id (0, "!") after the first end token; each encoder's
 * hidden_states[-2] (no final layer norm) gets the emphasis and mean restoration on its own, and
 * the two are concatenated per token (768 + 1280 = 2048 for the real model). The pooled
 * embedding is bigG's final-normed end token through its text projection, of the first chunk
 * (A1111; diffusers has one chunk). Clip skip: 1 and 2 are both the penultimate layer, k > 2 is
 * hidden_states[-k] of both encoders (ComfyUI's CLIPSetLastLayer; diffusers' clip_skip = k - 2;
 * A1111 ignores clip skip for SDXL unless its sdxl_clip_l_skip option is on).
 * One known deviation from diffusers: its tokenizer_2 has "!" as its pad token, and transformers
 * matches special tokens in the text before BPE, so a "!" in the prompt becomes id 0 for bigG.
 * mood tokenizes as open_clip (what SDXL was trained with), A1111 and ComfyUI do: "!</w>" (256).
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

/* ids (n x 77, the chunks' ids); pad_id replaces what follows each chunk's first end token. */
static void chunk_ids(int32_t *ids, const mood_prompt_tokens *toks, int32_t pad_id)
{
    for (size_t k = 0; k < toks->n_chunks; k++) {
        int32_t *row = ids + k * MOOD_CLIP_CONTEXT;
        int t = 0;
        memcpy(row, toks->chunks[k].ids, sizeof toks->chunks[k].ids);
        while (t < MOOD_CLIP_CONTEXT && row[t] != MOOD_CLIP_END)
            t++;
        for (t++; t < MOOD_CLIP_CONTEXT; t++)
            row[t] = pad_id;
    }
}

/* One encoder over every chunk: z (n x 77 x C) at clip_skip, emphasised chunk by chunk; pooled
 * (n x C, may be NULL) its final-normed end token. */
static int encode_chunks(const mood_clip *clip, const mood_prompt_tokens *toks, int32_t pad_id,
                         int clip_skip, int final_norm, float *z, float *pooled)
{
    size_t n = toks->n_chunks, C = (size_t)mood_clip_get_config(clip)->hidden;
    int32_t *ids = mood_malloc(n * MOOD_CLIP_CONTEXT * sizeof *ids);
    int err;
    if (!ids)
        return mood_error_nomem();
    chunk_ids(ids, toks, pad_id);
    err = mood_clip_forward(clip, ids, (int)n, MOOD_CLIP_CONTEXT, clip_skip, final_norm, z, pooled);
    for (size_t k = 0; k < n && !err; k++)
        apply_emphasis(z + k * MOOD_CLIP_CONTEXT * C, toks->chunks[k].weights, MOOD_CLIP_CONTEXT,
                       (int)C);
    mood_free(ids);
    return err;
}

int mood__context_width(const mood_model *m)
{
    int c = mood_clip_get_config(m->clip)->hidden;
    return m->clip2 ? c + mood_clip_get_config(m->clip2)->hidden : c;
}

int mood__pooled_width(const mood_model *m)
{
    return m->clip2 ? mood_clip_get_config(m->clip2)->projection_dim : 0;
}

void mood__sdxl_time_ids(float out[6], int width, int height)
{
    /* original_size (h, w), crops_coords_top_left (0, 0), target_size (h, w) */
    out[0] = out[4] = (float)height;
    out[1] = out[5] = (float)width;
    out[2] = out[3] = 0.0f;
}

/* SDXL: both encoders, concatenated per token, and the pooled embedding of the first chunk. */
static int encode_sdxl(mood_model *m, const mood_prompt_tokens *toks, int clip_skip, float *out,
                       float *pooled)
{
    size_t n = toks->n_chunks, T = n * MOOD_CLIP_CONTEXT;
    size_t C1 = (size_t)mood_clip_get_config(m->clip)->hidden;
    size_t C2 = (size_t)mood_clip_get_config(m->clip2)->hidden;
    int skip = clip_skip < 2 ? 2 : clip_skip, err;
    float *z1 = mood_malloc(T * C1 * sizeof *z1), *z2 = mood_malloc(T * C2 * sizeof *z2);
    float *p2 = mood_malloc(n * C2 * sizeof *p2);
    if (!z1 || !z2 || !p2)
        err = mood_error_nomem();
    else if ((err = encode_chunks(m->clip, toks, m->pad_id, skip, 0, z1, NULL)) == 0 &&
             (err = encode_chunks(m->clip2, toks, m->pad_id2, skip, 0, z2, p2)) == 0)
        err = pooled ? mood_clip_project(m->clip2, p2, 1, pooled) : 0;
    for (size_t t = 0; t < T && !err; t++) {
        memcpy(out + t * (C1 + C2), z1 + t * C1, C1 * sizeof *out);
        memcpy(out + t * (C1 + C2) + C1, z2 + t * C2, C2 * sizeof *out);
    }
    mood_free(z1);
    mood_free(z2);
    mood_free(p2);
    return err;
}

int mood__encode_prompt_ex(mood_model *m, const char *prompt, int clip_skip, float **out,
                           int *n_chunks, float **pooled)
{
    mood_prompt_options po;
    mood_prompt_tokens toks = {0};
    int C = mood__context_width(m), P = mood__pooled_width(m), err;
    float *z = NULL, *pz = NULL;
    size_t n;
    *out = NULL;
    *n_chunks = 0;
    if (pooled)
        *pooled = NULL;
    mood_prompt_options_init(&po);
    po.pad_id = m->pad_id;
    if (m->fixed_clip_skip)
        clip_skip = m->fixed_clip_skip;
    if ((err = mood_prompt_tokenize(&toks, m->tok, prompt ? prompt : "", &po)) != 0)
        return err;
    n = toks.n_chunks;
    z = mood_malloc(n * MOOD_CLIP_CONTEXT * (size_t)C * sizeof *z);
    if (pooled && P > 0)
        pz = mood_malloc((size_t)P * sizeof *pz);
    if (!z || (pooled && P > 0 && !pz))
        err = mood_error_nomem();
    else if (m->clip2)
        err = encode_sdxl(m, &toks, clip_skip, z, pz);
    else
        err = encode_chunks(m->clip, &toks, m->pad_id, clip_skip, 1, z, NULL);
    mood_prompt_tokens_dispose(&toks);
    if (err) {
        mood_free(z);
        mood_free(pz);
        return err;
    }
    *out = z;
    *n_chunks = (int)n;
    if (pooled)
        *pooled = pz;
    return 0;
}

int mood__encode_prompt(mood_model *m, const char *prompt, int clip_skip, float **out,
                        int *n_chunks)
{
    return mood__encode_prompt_ex(m, prompt, clip_skip, out, n_chunks, NULL);
}
