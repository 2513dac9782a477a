/*
 * model.c: loading a base model for generation (mood/gen.h): its text encoder, UNet, VAE,
 * tokenizer and noise schedule, from a single-file checkpoint (A1111/Civitai layout) or a
 * diffusers pipeline folder.
 *
 * Each part's loader (clip.c, unet.c, vae.c) understands both layouts; this file decides which
 * files hold which part, the model family, the tokenizer's padding and the prediction type, and
 * keeps the weights files mapped so merged adapters can be undone by reading the pristine
 * values back (model_adapters.c).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model_impl.h"
#include "mood/hash.h"

void mood_model_options_init(mood_model_options *o)
{
    memset(o, 0, sizeof *o);
    o->prediction = -1;
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

/* The UNet runs on what the VAE makes: their channel counts must agree. */
static int check_parts(const mood_model *m, const char *path)
{
    int u = mood_unet_get_config(m->unet)->in_channels;
    int v = mood_vae_get_config(m->vae)->latent_channels;
    if (u != v)
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
}

static int report(const mood_model_options *o, const char *phase, uint64_t done)
{
    mood_progress p = {phase, done, 3};
    if (o->progress && o->progress(&p, o->progress_payload) != 0)
        return mood_error_set(MOOD_ECANCELLED, "loading cancelled");
    return 0;
}

static int open_single_file(mood_model *m, const char *path, const mood_model_options *o)
{
    mood_clip_config hint = {0};
    int err;
    if ((err = mood_checkpoint_open(&m->ckpt, path)) != 0)
        return err;
    m->family = mood_checkpoint_family(m->ckpt);
    if (m->family == MOOD_FAMILY_SDXL)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: an SDXL checkpoint; mood generates with SD1.x and SD2.x "
                              "models so far",
                              path);
    if (m->family != MOOD_FAMILY_SD1 && m->family != MOOD_FAMILY_SD2)
        return mood_error_set(MOOD_EFORMAT,
                              "%s: not a Stable Diffusion 1.x/2.x checkpoint (no UNet, text "
                              "encoder and VAE of a known layout)",
                              path);
    m->unet_file = m->te_file = (mood_st_file *)mood_checkpoint_file(m->ckpt);
    if (o->clip_hint)
        hint = *o->clip_hint;
    hint.encoder = MOOD_CLIP_ENCODER_1;
    if ((err = report(o, "text encoder", 0)) != 0 ||
        (err = mood_clip_load(&m->clip, path, &hint)) != 0 || (err = report(o, "unet", 1)) != 0 ||
        (err = mood_unet_load_ex(&m->unet, path, o->unet_hint)) != 0 ||
        (err = report(o, "vae", 2)) != 0 ||
        (err = mood_vae_load_hint(&m->vae, path, o->vae_hint)) != 0)
        return err;
    /* SD2's OpenCLIP conditioning is the penultimate layer, final-normed, whatever the user's
     * clip skip (ldm's FrozenOpenCLIPEmbedder, A1111); the file holds all 24 layers. */
    if (m->family == MOOD_FAMILY_SD2)
        m->fixed_clip_skip = 2;
    mood_noise_schedule_sd(&m->sched);
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
    if (m->family == MOOD_FAMILY_SDXL)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: an SDXL pipeline; mood generates with SD1.x and SD2.x "
                              "models so far",
                              path);
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

int mood_model_open(mood_model **out, const char *path, const mood_model_options *opts)
{
    mood_model_options defaults;
    mood_model *m;
    int err;
    *out = NULL;
    if (!opts) {
        mood_model_options_init(&defaults);
        opts = &defaults;
    }
    if (!(m = mood_calloc(1, sizeof *m)))
        return mood_error_nomem();
    if ((err = set_name(m, path)) == 0 && !(m->path = mood_strdup(path)))
        err = mood_error_nomem();
    if (!err)
        err = is_dir(path) ? open_folder(m, path, opts) : open_single_file(m, path, opts);
    if (!err)
        err = mood_tokenizer_load(&m->tok, NULL);
    if (!err) {
        /* OpenCLIP's tokenizer (SD2) pads with id 0 ("!"), OpenAI CLIP's (SD1) with the end
         * token; diffusers' SD2 tokenizer config says the same. */
        m->pad_id = m->family == MOOD_FAMILY_SD2 ? 0 : 49407;
        set_prediction(m, opts);
        *out = m;
        return 0;
    }
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
    mood_clip_free(m->clip);
    mood_unet_free(m->unet);
    mood_vae_free(m->vae);
    mood_tokenizer_free(m->tok);
    if (m->folder) {
        mood_st_close(m->unet_file);
        mood_st_close(m->te_file);
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
