/*
 * model.c: loading a base model for generation (mood/gen.h): its text encoder, UNet, VAE,
 * tokenizer and noise schedule, from a single-file checkpoint (A1111/Civitai layout) or a
 * diffusers pipeline folder.
 *
 * Each part's loader (clip.c, unet.c, vae.c) understands both layouts; this file decides which
 * files hold which part, the model family, the tokenizer's padding and the prediction type, and
 * keeps the weights files mapped so merged adapters can be undone by reading the pristine
 * values back (model_adapters.c).
 *
 * SDXL (and Playground v2/v2.5, the same architecture) has two text encoders: CLIP-L
 * ("conditioner.embedders.0.transformer." / text_encoder/) and OpenCLIP bigG with its projection
 * ("conditioner.embedders.1.model." / text_encoder_2/). Its single files get SDXL's scheduler
 * (EulerDiscreteScheduler, leading spacing) and VAE scaling (0.13025), or with "edm_mean" and
 * "edm_std" tensors Playground v2.5's EDM schedule and latent normalisation (scaling 0.5), as
 * diffusers' from_single_file decides. The refiner (one OpenCLIP encoder, aesthetic-score
 * conditioning) is refused.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/args.h"
#include "engine/model_impl.h"
#include "mood/hash.h"

void mood_model_options_init(mood_model_options *o)
{
    memset(o, 0, sizeof *o);
    o->prediction = -1;
    o->cuda_device = -1;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* dir/sub/<first of names that exists> into buf; MOOD_ENOTFOUND naming the folder otherwise. */
static int find_weights(char *buf, size_t size, const char *dir, const char *sub,
                        const char *const *names)
{
    for (size_t i = 0; names[i]; i++) {
        snprintf(buf, size, "%s/%s/%s", dir, sub, names[i]);
        if (is_file(buf))
            return 0;
    }
    return mood_error_set(MOOD_ENOTFOUND, "%s/%s: no %s (safetensors weights are needed)", dir, sub,
                          names[0]);
}

/* "v1-5-pruned-emaonly" from ".../v1-5-pruned-emaonly.safetensors" or ".../name/" (A1111's
 * "Model:"). */
static int set_name(mood_model *m, const char *path)
{
    size_t len = strlen(path);
    const char *end, *base;
    char *dot;
    while (len > 1 && path[len - 1] == '/')
        len--;
    end = path + len;
    for (base = end; base > path && base[-1] != '/'; base--)
        ;
    if (!(m->name = mood_malloc((size_t)(end - base) + 1)))
        return mood_error_nomem();
    memcpy(m->name, base, (size_t)(end - base));
    m->name[end - base] = '\0';
    if ((dot = strrchr(m->name, '.')) && dot != m->name && strcmp(dot, ".safetensors") == 0)
        *dot = '\0';
    return 0;
}

/* The family from the UNet's cross-attention width, or for a small test model of other widths
 * from its structure: SDXL's added time conditioning, SD2's linear projections. */
static mood_family family_of_unet(const mood_unet *u)
{
    const mood_unet_config *c = mood_unet_get_config(u);
    int d = c->cross_attention_dim;
    if (d == 768 || d == 1024 || d == 2048)
        return d == 768 ? MOOD_FAMILY_SD1 : d == 1024 ? MOOD_FAMILY_SD2 : MOOD_FAMILY_SDXL;
    if (c->addition_embed_text_time)
        return MOOD_FAMILY_SDXL;
    return c->use_linear_projection ? MOOD_FAMILY_SD2 : MOOD_FAMILY_SD1;
}

/* The UNet runs on what the VAE makes: their channel counts must agree, or the UNet is an
 * inpainting model's, which takes the latents, a mask and the masked picture's latents. */
static int check_parts(mood_model *m, const char *path)
{
    int u = mood_unet_get_config(m->unet)->in_channels;
    int v = mood_vae_get_config(m->vae)->latent_channels;
    m->inpaint_unet = u == 2 * v + 1;
    if (u != v && !m->inpaint_unet)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: the UNet takes %d channels but the VAE makes latents of %d",
                              path, u, v);
    return 0;
}

/* Prediction type: the caller's choice, then the file's modelspec metadata, then the schedule. */
static void set_prediction(mood_model *m, const mood_model_options *o)
{
    const char *p =
        m->ckpt ? mood_st_meta_get(mood_checkpoint_file(m->ckpt), "modelspec.prediction_type")
                : NULL;
    if (o->prediction >= 0)
        m->sched.prediction = (mood_prediction)o->prediction;
    else if (p && (strcmp(p, "v") == 0 || strcmp(p, "v_prediction") == 0))
        m->sched.prediction = MOOD_PRED_V;
    else if (p && strcmp(p, "epsilon") == 0)
        m->sched.prediction = MOOD_PRED_EPSILON;
    else if (p && strcmp(p, "sample") == 0)
        m->sched.prediction = MOOD_PRED_SAMPLE;
}

static int report(const mood_model_options *o, const char *phase, uint64_t done)
{
    mood_progress p = {phase, done, 3};
    if (o->progress && o->progress(&p, o->progress_payload) != 0)
        return mood_error_set(MOOD_ECANCELLED, "loading cancelled");
    return 0;
}

/* The UNet's context is the text encoders' hidden states, its added embedding (SDXL) the
 * pooled projection: their widths must agree. */
static int check_text_widths(const mood_model *m, const char *path)
{
    const mood_unet_config *u = mood_unet_get_config(m->unet);
    int ctx = mood__context_width(m), P = mood__pooled_width(m);
    if (u->cross_attention_dim != ctx)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: the UNet attends to %d-wide text but the text encoder%s %d",
                              path, u->cross_attention_dim, m->clip2 ? "s give" : " gives", ctx);
    if (u->addition_embed_text_time &&
        u->projection_class_embeddings_input_dim - 6 * u->addition_time_embed_dim != P)
        return mood_error_set(
            MOOD_EFORMAT,
            "%s: the UNet's added embedding takes %d text values but text "
            "encoder 2 projects to %d",
            path, u->projection_class_embeddings_input_dim - 6 * u->addition_time_embed_dim, P);
    if (!u->addition_embed_text_time && m->clip2)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: two text encoders but a UNet without SDXL's \"text_time\" "
                              "added embedding",
                              path);
    return 0;
}

/* Playground v2.5's single files carry the latent statistics as "edm_mean" / "edm_std". */
static int read_edm_stats(mood_model *m, const mood_st_file *f, const char *path)
{
    const mood_st_tensor *mean = mood_st_find(f, "edm_mean"), *std = mood_st_find(f, "edm_std");
    int L = mood_vae_get_config(m->vae)->latent_channels, err;
    if (!mean || !std)
        return 0;
    if (mood_st_numel(mean) != L || mood_st_numel(std) != L)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: edm_mean / edm_std hold %lld / %lld values, not %d", path,
                              (long long)mood_st_numel(mean), (long long)mood_st_numel(std), L);
    if ((err = mood_st_to_f32(m->latents_mean, mean)) != 0 ||
        (err = mood_st_to_f32(m->latents_std, std)) != 0)
        return err;
    m->latents_norm = 1;
    return 0;
}

/* SDXL single file: the second text encoder; the scheduler and VAE scaling diffusers'
 * from_single_file picks (SDXL base, or Playground v2.5 when edm_mean/edm_std are there). */
static int open_single_sdxl(mood_model *m, const char *path, const mood_model_options *o,
                            mood_vae_config *vh)
{
    const mood_st_file *f = mood_checkpoint_file(m->ckpt);
    mood_clip_config hint2 = {0};
    int edm = mood_st_find(f, "edm_mean") && mood_st_find(f, "edm_std"), err;
    if (!mood_st_find(f, "conditioner.embedders.0.transformer.text_model.embeddings."
                         "token_embedding.weight"))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: an SDXL checkpoint without the CLIP-L text encoder "
                              "(conditioner.embedders.0.transformer.), e.g. the SDXL refiner: "
                              "mood generates with SDXL base models",
                              path);
    if (o->clip2_hint)
        hint2 = *o->clip2_hint;
    hint2.encoder = MOOD_CLIP_ENCODER_2;
    if ((err = mood_clip_load(&m->clip2, path, &hint2)) != 0)
        return err;
    if (!mood_clip_has_projection(m->clip2))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: SDXL's second text encoder has no text_projection "
                              "(conditioner.embedders.1.model.text_projection)",
                              path);
    if (!(vh->scaling_factor > 0))
        vh->scaling_factor = edm ? 0.5f : 0.13025f;
    if (!(vh->sample_size > 0))
        vh->sample_size = 1024;
    mood_noise_schedule_sd(&m->sched);
    if (edm) { /* playground-v2.5-1024px-aesthetic's EDMDPMSolverMultistepScheduler */
        mood_noise_schedule_init(&m->sched);
        m->sched.edm = 1;
    }
    m->zero_negative = 1;
    return 0;
}

static int open_single_file(mood_model *m, const char *path, const mood_model_options *o)
{
    mood_clip_config hint = {0};
    mood_vae_config vh = {0};
    int err;
    if ((err = mood_checkpoint_open(&m->ckpt, path)) != 0)
        return err;
    m->family = mood_checkpoint_family(m->ckpt);
    if (m->family != MOOD_FAMILY_SD1 && m->family != MOOD_FAMILY_SD2 &&
        m->family != MOOD_FAMILY_SDXL)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: not a Stable Diffusion 1.x/2.x/XL checkpoint (no UNet, text "
                              "encoder and VAE of a known layout)",
                              path);
    m->unet_file = m->te_file = m->te2_file = (mood_st_file *)mood_checkpoint_file(m->ckpt);
    if (o->clip_hint)
        hint = *o->clip_hint;
    if (o->vae_hint)
        vh = *o->vae_hint;
    hint.encoder = MOOD_CLIP_ENCODER_1;
    mood_noise_schedule_sd(&m->sched);
    if (m->family == MOOD_FAMILY_SDXL && (err = open_single_sdxl(m, path, o, &vh)) != 0)
        return err;
    if ((err = report(o, "text encoder", 0)) != 0 ||
        (err = mood_clip_load(&m->clip, path, &hint)) != 0 || (err = report(o, "unet", 1)) != 0 ||
        (err = mood_unet_load_ex(&m->unet, path, o->unet_hint)) != 0 ||
        (err = report(o, "vae", 2)) != 0 || (err = mood_vae_load_hint(&m->vae, path, &vh)) != 0 ||
        (err = check_parts(m, path)) != 0 || (err = check_text_widths(m, path)) != 0 ||
        (err = read_edm_stats(m, mood_checkpoint_file(m->ckpt), path)) != 0)
        return err;
    /* SD2's OpenCLIP conditioning is the penultimate layer, final-normed, whatever the user's
     * clip skip (ldm's FrozenOpenCLIPEmbedder, A1111); the file holds all 24 layers. */
    if (m->family == MOOD_FAMILY_SD2)
        m->fixed_clip_skip = 2;
    return 0;
}

/* text_encoder/config.json (transformers' CLIPTextConfig) into a clip hint: heads, activation,
 * layer norm epsilon. A missing file leaves the hint for inference from shapes. */
static int clip_hint_from_json(mood_clip_config *h, const char *path)
{
    mood_map map;
    cJSON *j, *v;
    const char *act;
    int err = mood_map_file(&map, path);
    if (err == MOOD_ENOTFOUND) {
        mood_error_clear();
        return 0;
    }
    if (err)
        return err;
    j = cJSON_ParseWithLength((const char *)map.data, (size_t)map.size);
    mood_unmap(&map);
    if (!j)
        return mood_error_set(MOOD_EFORMAT, "%s: not valid JSON", path);
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(j, "num_attention_heads")))
        h->heads = v->valueint;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(j, "layer_norm_eps")))
        h->layer_norm_eps = (float)v->valuedouble;
    act = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "hidden_act"));
    if (act && strcmp(act, "quick_gelu") == 0)
        h->act = MOOD_CLIP_ACT_QUICK_GELU;
    else if (act && strcmp(act, "gelu") == 0)
        h->act = MOOD_CLIP_ACT_GELU;
    else if (act)
        err = mood_error_set(MOOD_EUNSUPPORTED,
                             "%s: hidden_act \"%s\" (quick_gelu or gelu "
                             "expected)",
                             path, act);
    cJSON_Delete(j);
    return err;
}

/* The id of a tokenizer folder's pad token (special_tokens_map.json, else
 * tokenizer_config.json): SDXL's tokenizer pads with "<|endoftext|>", tokenizer_2 with "!".
 * *out keeps its value when neither file says. */
static int read_pad_id(int32_t *out, const char *dir, const char *sub)
{
    static const char *const files[] = {"special_tokens_map.json", "tokenizer_config.json"};
    char buf[4096];
    for (int i = 0; i < 2; i++) {
        mood_map map;
        cJSON *j, *v;
        const char *tok;
        int err;
        snprintf(buf, sizeof buf, "%s/%s/%s", dir, sub, files[i]);
        if (!is_file(buf))
            continue;
        if ((err = mood_map_file(&map, buf)) != 0)
            return err;
        j = cJSON_ParseWithLength((const char *)map.data, (size_t)map.size);
        mood_unmap(&map);
        if (!j)
            return mood_error_set(MOOD_EFORMAT, "%s: not valid JSON", buf);
        v = cJSON_GetObjectItemCaseSensitive(j, "pad_token");
        if (cJSON_IsObject(v))
            v = cJSON_GetObjectItemCaseSensitive(v, "content");
        tok = cJSON_GetStringValue(v);
        if (tok && strcmp(tok, "!") == 0)
            *out = 0;
        else if (tok && strcmp(tok, "<|endoftext|>") == 0)
            *out = MOOD_CLIP_END;
        else if (tok)
            err = mood_error_set(MOOD_EUNSUPPORTED,
                                 "%s: pad_token \"%s\" (\"!\" or \"<|endoftext|>\" expected)", buf,
                                 tok);
        cJSON_Delete(j);
        if (err || tok)
            return err;
    }
    return 0;
}

/* model_index.json's force_zeros_for_empty_prompt (absent: diffusers' default, true). */
static int read_force_zeros(mood_model *m, const char *path)
{
    char buf[4096];
    mood_map map;
    cJSON *j, *v;
    int err;
    snprintf(buf, sizeof buf, "%s/model_index.json", path);
    if ((err = mood_map_file(&map, buf)) != 0)
        return err;
    j = cJSON_ParseWithLength((const char *)map.data, (size_t)map.size);
    mood_unmap(&map);
    if (!j)
        return mood_error_set(MOOD_EFORMAT, "%s: not valid JSON", buf);
    v = cJSON_GetObjectItemCaseSensitive(j, "force_zeros_for_empty_prompt");
    m->zero_negative = !cJSON_IsFalse(v);
    cJSON_Delete(j);
    return 0;
}

/* SDXL folder: text_encoder_2 (CLIPTextModelWithProjection), the tokenizers' padding and
 * model_index.json's force_zeros_for_empty_prompt. */
static int open_folder_sdxl(mood_model *m, const char *path, const mood_model_options *o)
{
    static const char *const te_names[] = {"model.safetensors", "model.fp16.safetensors", NULL};
    char buf[4096];
    mood_clip_config hint = {0};
    int err;
    if (o->clip2_hint)
        hint = *o->clip2_hint;
    snprintf(buf, sizeof buf, "%s/text_encoder_2/config.json", path);
    if (!o->clip2_hint && (err = clip_hint_from_json(&hint, buf)) != 0)
        return err;
    if ((err = find_weights(buf, sizeof buf, path, "text_encoder_2", te_names)) != 0 ||
        (err = mood_st_open(&m->te2_file, buf)) != 0 ||
        (err = mood_clip_load(&m->clip2, buf, &hint)) != 0)
        return err;
    if (!mood_clip_has_projection(m->clip2))
        return mood_error_set(MOOD_EFORMAT,
                              "%s: text encoder 2 has no text_projection (SDXL's is a "
                              "CLIPTextModelWithProjection)",
                              buf);
    m->te2_strip_text_model =
        mood_st_find(m->te2_file, "text_model.embeddings.token_embedding.weight") == NULL;
    m->pad_id = MOOD_CLIP_END;
    m->pad_id2 = 0;
    if ((err = read_pad_id(&m->pad_id, path, "tokenizer")) != 0 ||
        (err = read_pad_id(&m->pad_id2, path, "tokenizer_2")) != 0)
        return err;
    return read_force_zeros(m, path);
}

static int open_folder(mood_model *m, const char *path, const mood_model_options *o)
{
    static const char *const te_names[] = {"model.safetensors", "model.fp16.safetensors", NULL};
    static const char *const unet_names[] = {"diffusion_pytorch_model.safetensors",
                                             "diffusion_pytorch_model.fp16.safetensors", NULL};
    char buf[4096];
    mood_clip_config hint = {0};
    int err;
    m->folder = 1;
    if (o->clip_hint)
        hint = *o->clip_hint;
    snprintf(buf, sizeof buf, "%s/model_index.json", path);
    if (!is_file(buf))
        return mood_error_set(MOOD_ENOTFOUND,
                              "%s: a folder without model_index.json (a diffusers pipeline "
                              "folder, or a single .safetensors checkpoint, is expected)",
                              path);
    snprintf(buf, sizeof buf, "%s/text_encoder", path);
    if (!is_dir(buf) && (snprintf(buf, sizeof buf, "%s/text_encoder_2", path), is_dir(buf)))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: a pipeline with text_encoder_2 but no text_encoder, e.g. the "
                              "SDXL refiner: mood generates with SDXL base models",
                              path);
    snprintf(buf, sizeof buf, "%s/text_encoder/config.json", path);
    if (!o->clip_hint && (err = clip_hint_from_json(&hint, buf)) != 0)
        return err;
    if ((err = find_weights(buf, sizeof buf, path, "text_encoder", te_names)) != 0 ||
        (err = mood_st_open(&m->te_file, buf)) != 0 || (err = report(o, "text encoder", 0)) != 0 ||
        (err = mood_clip_load(&m->clip, buf, &hint)) != 0)
        return err;
    m->te_strip_text_model =
        mood_st_find(m->te_file, "text_model.embeddings.token_embedding.weight") == NULL;
    if ((err = find_weights(buf, sizeof buf, path, "unet", unet_names)) != 0 ||
        (err = mood_st_open(&m->unet_file, buf)) != 0 || (err = report(o, "unet", 1)) != 0 ||
        (err = mood_unet_load(&m->unet, path)) != 0 || (err = report(o, "vae", 2)) != 0 ||
        (err = mood_vae_load(&m->vae, path)) != 0 || (err = check_parts(m, path)) != 0)
        return err;
    m->family = family_of_unet(m->unet);
    if (m->family == MOOD_FAMILY_SDXL && (err = open_folder_sdxl(m, path, o)) != 0)
        return err;
    if ((err = check_text_widths(m, path)) != 0)
        return err;
    /* diffusers' SD2 text encoder already ends at the penultimate layer (23 of OpenCLIP's 24),
     * which is what SD2 conditions on: no further clip skip, as A1111 ignores it for SD2 */
    if (m->family == MOOD_FAMILY_SD2)
        m->fixed_clip_skip = 1;
    snprintf(buf, sizeof buf, "%s/scheduler/scheduler_config.json", path);
    if (is_file(buf))
        return mood_noise_schedule_from_json(&m->sched, buf);
    mood_noise_schedule_sd(&m->sched);
    return 0;
}

/* The UNet's copy on GPU `device`: bf16 matrices with fp32 accumulation, as diffusers users run
 * SD on a GPU (fp32 there would only double the memory for no visible difference); fp32 when
 * asked (training: the GPU backward runs fp32 only so far). */
static int open_cuda(mood_model *m, int device, int fp32)
{
    mood_cuda_options co;
    mood_cuda_unet_options uo;
    int err;
    mood_cuda_options_init(&co);
    co.device = device;
    mood_cuda_unet_options_init(&uo);
    uo.dtype = fp32 ? MOOD_CUDA_F32 : MOOD_CUDA_BF16;
    if ((err = mood_cuda_ctx_new(&m->cuda, &co)) != 0)
        return err;
    return mood_cuda_unet_new(&m->cuda_unet, m->cuda, m->unet, &uo);
}

int mood_model_open(mood_model **out, const char *path, const mood_model_options *opts)
{
    mood_model_options defaults;
    mood_model *m;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    if (!opts) {
        mood_model_options_init(&defaults);
        opts = &defaults;
    }
    if (!(m = mood_calloc(1, sizeof *m)))
        return mood_error_nomem();
    m->train_checkpointing = -1;
    if ((err = set_name(m, path)) == 0 && !(m->path = mood_strdup(path)))
        err = mood_error_nomem();
    if (!err)
        err = is_dir(path) ? open_folder(m, path, opts) : open_single_file(m, path, opts);
    if (!err)
        err = mood_tokenizer_load(&m->tok, NULL);
    if (!err) {
        const mood_vae_config *vc = mood_vae_get_config(m->vae);
        /* OpenCLIP's tokenizer (SD2) pads with id 0 ("!"), OpenAI CLIP's (SD1) with the end
         * token; diffusers' SD2 tokenizer config says the same. An SDXL folder's tokenizer
         * folders said theirs (open_folder_sdxl); its single files pad as diffusers' SDXL. */
        if (!m->folder || m->family != MOOD_FAMILY_SDXL)
            m->pad_id = m->family == MOOD_FAMILY_SD2 ? 0 : MOOD_CLIP_END;
        if (!m->latents_norm && vc->has_latents_mean) {
            m->latents_norm = 1;
            memcpy(m->latents_mean, vc->latents_mean, sizeof m->latents_mean);
            memcpy(m->latents_std, vc->latents_std, sizeof m->latents_std);
        }
        set_prediction(m, opts);
    }
    if (!err && opts->cuda_device >= 0)
        err = open_cuda(m, opts->cuda_device, opts->cuda_fp32);
    if (!err) {
        *out = m;
        return 0;
    }
    if (strncmp(mood_error_last(), path, strlen(path)) != 0) /* say the path once */
        mood_error_prefix("%s", path);
    mood_model_free(m);
    return err;
}

void mood_model_free(mood_model *m)
{
    if (!m)
        return;
    mood__model_free_adapters(m);
    mood_unet_tape_free(m->tape);
    mood_clip_tape_free(m->clip_tape);
    mood_clip_tape_free(m->clip2_tape);
    mood_clip_free(m->clip);
    mood_clip_free(m->clip2);
    mood_cuda_unet_tape_free(m->cuda_tape); /* device memory: before the context */
    mood_cuda_unet_free(m->cuda_unet);      /* before its context, both before the CPU UNet */
    mood_cuda_ctx_free(m->cuda);
    mood_unet_free(m->unet);
    mood_vae_free(m->vae);
    mood_tokenizer_free(m->tok);
    if (m->folder) {
        mood_st_close(m->unet_file);
        mood_st_close(m->te_file);
        mood_st_close(m->te2_file);
    }
    mood_checkpoint_close(m->ckpt);
    mood_checkpoint_close(m->names_base);
    mood_free(m->path);
    mood_free(m->name);
    mood_free(m);
}

mood_family mood_model_family(const mood_model *m)
{
    return m->family;
}

const char *mood_model_path(const mood_model *m)
{
    return m->path;
}

const char *mood_model_name(const mood_model *m)
{
    return m->name;
}

const mood_noise_schedule *mood_model_schedule(const mood_model *m)
{
    return &m->sched;
}

int mood_model_short_hash(const mood_model *m, char out[11])
{
    mood_model *mm = (mood_model *)m; /* the hash is computed once and cached */
    mood_file_hashes h;
    int err;
    MOOD_ARG_NONNULL(m);
    MOOD_ARG_NONNULL(out);
    if (!mm->short_hash[0]) {
        const char *file = m->folder ? mood_st_path(m->unet_file) : m->path;
        if ((err = mood_hash_file_ex(&h, file, MOOD_HASH_SKIP_CRC32, NULL, NULL)) != 0)
            return err;
        memcpy(mm->short_hash, h.sha256, 10);
        mm->short_hash[10] = '\0';
    }
    memcpy(out, mm->short_hash, 11);
    return 0;
}
