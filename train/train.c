/*
 * train.c: mood_train_run, a whole training run from a model path and a mood board to a LoRA
 * file: check every option and output path that needs no model (no output may be the model, a
 * board file or the checkpoint resumed from), open the model, load the board, make the LoRA modules
 * and initialise them, cache the latents (VAE, latent_dist.sample() * scaling_factor, unflipped
 * then flipped) and the text conditioning (the caption as kohya tokenizes it: start, at most 75
 * tokens, end, padding; the encoder's output at the clip skip, with the final layer norm), run the
 * trainer, then write the LoRA with kohya's metadata and the loss curve.
 *
 * SDXL (as kohya's sdxl_train_network.py): the conditioning is both text encoders' penultimate
 * layer concatenated plus text encoder 2's pooled, projected embedding (cached, unless the text
 * encoders are trained: then both encode every step from the ids of both tokenizers), and every
 * item carries kohya's size ids (original size, crop top-left, target size); check_sdxl lists
 * what is refused.
 *
 * The order of the random draws (mood/train.h "Randomness") is fixed here: LoRA init, then the
 * latent samples, then the trainer's.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/model_impl.h"
#include "mood/hash.h"
#include "mood/registry.h"
#include "lora/lora_internal.h"
#include "engine/unicode_tables.h"
#include "train/train_internal.h"

void mood_train_options_init(mood_train_options *o)
{
    memset(o, 0, sizeof *o);
    mood_board_options_init(&o->board_opts);
    o->board_opts.resolution = 0;
    o->save_dtype = MOOD_DTYPE_F16;
    o->targets = MOOD_TRAIN_ATTN_FF;
    o->rank = 16;
    o->alpha = 8;
    o->steps = 1000;
    o->batch = 1;
    o->accum = 1;
    o->lr = 1e-4;
    o->lr_schedule = MOOD_LR_CONSTANT;
    o->weight_decay = 1e-2;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->max_grad_norm = 1.0;
    o->min_snr_gamma = -1;
    o->noise_offset = 0.05;
    o->checkpointing = -1;
    o->prediction = -1;
    o->flip = 1;
    o->clip_skip = 1;
}

/* What the run holds; freed by run_dispose. */
typedef struct run {
    const mood_train_options *o; /* the caller's, or resolved (defaults that follow the model) */
    mood_train_options resolved;
    mood_model *m;
    mood_board *board;
    mood__lora_params *lp;
    mood_rng_torch_cpu *g;
    mood__train_sched sched;
    mood__train_item *items;       /* one per board image */
    mood__train_item *epoch_items; /* with kohya's repeats: image i's item repeats times */
    mood_board_options bo;         /* the board's options as resolved (size, bucket sizes) */
    float *latents;                /* all cached latents, items point into it */
    int32_t *ids;                  /* n x 77 */
    int32_t *ids2;                 /* SDXL: n x 77, text encoder 2's */
    float *ctx;                    /* n x 77 x D, or NULL */
    float *pooled;                 /* SDXL: n x P pooled text embeddings, else NULL */
    mood__train_data data;
    int clip_skip;
    int resolution; /* the board's training resolution */
    mood_prediction pred;
    time_t started;
    mood__train_samples samples; /* sample previews (sample.c) */
} run;

static int phase(const run *r, const char *name, int64_t done, int64_t total)
{
    mood_train_progress p = {name, done, total, 0, 0, 0, 0, 0, 0};
    if (r->o->progress && r->o->progress(&p, r->o->progress_payload) != 0)
        return mood_error_set(MOOD_ECANCELLED, "training cancelled (%s)", name);
    return 0;
}

static void run_dispose(run *r)
{
    if (r->m && r->lp) { /* the side paths point into lp */
        if (mood_unet_set_side_paths(r->m->unet, NULL, 0) != 0 ||
            mood_clip_set_side_paths(r->m->clip, NULL, 0) != 0 ||
            (r->m->clip2 && mood_clip_set_side_paths(r->m->clip2, NULL, 0) != 0))
            mood_error_clear();
    }
    mood__lora_params_free(r->lp);
    mood_board_free(r->board);
    mood_model_free(r->m);
    mood_rng_torch_cpu_free(r->g);
    mood__train_sched_dispose(&r->sched);
    mood_free(r->items);
    mood_free(r->epoch_items);
    mood_free(r->latents);
    mood_free(r->ids);
    mood_free(r->ids2);
    mood_free(r->ctx);
    mood_free(r->pooled);
    mood__train_samples_dispose(&r->samples);
}

/* ----- model and board -------------------------------------------------------------------- */

/* What SDXL training does not do (yet): full-parameter training, and a clip skip (kohya's SDXL
 * training ignores it and always takes the penultimate layers). */
static int check_sdxl(const mood_train_options *o)
{
    if (o->full)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: full-parameter training (--full) of an SDXL model is not "
                              "supported yet; train a LoRA",
                              o->model);
    if (o->clip_skip > 2)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: clip skip %d: SDXL training always uses both text encoders' "
                              "penultimate layer (clip skip 1 or 2), as kohya's",
                              o->model, o->clip_skip);
    return 0;
}

static int open_model(run *r)
{
    const mood_train_options *o = r->o;
    mood_board_options bo = o->board_opts;
    int err;
    if ((err = phase(r, "load", 0, 1)) != 0 ||
        (err = mood_model_open(&r->m, o->model, o->model_options)) != 0)
        return err;
    if (r->m->family == MOOD_FAMILY_SDXL && (err = check_sdxl(o)) != 0)
        return err;
    if (r->m->inpaint_unet) /* its UNet also takes a mask and a masked picture */
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s is an inpainting model, which mood does not train on: train on "
                              "its base model (a LoRA of the base applies to it too)",
                              o->model);
    r->m->train_checkpointing = o->checkpointing < 0 ? -1 : o->checkpointing != 0;
    r->pred = o->prediction >= 0 ? (mood_prediction)o->prediction : r->m->sched.prediction;
    if (o->min_snr_gamma < 0) { /* the default follows the prediction (mood/train.h) */
        r->resolved = *o;
        r->resolved.min_snr_gamma = r->pred == MOOD_PRED_SAMPLE ? 0 : 5;
        r->o = &r->resolved;
    }
    r->clip_skip = r->m->fixed_clip_skip ? r->m->fixed_clip_skip : o->clip_skip;
    if (r->m->family == MOOD_FAMILY_SDXL)
        r->clip_skip = 2;     /* both encoders' hidden_states[-2], as kohya's SDXL training */
    if (bo.resolution == 0) { /* the model's own size (mood gen's default): mood-tiny's 64 */
        int h = 0;
        mood_model_default_size(r->m, &bo.resolution, &h);
    }
    r->resolution = bo.resolution;
    mood__board_options_resolve(&bo); /* the bucket sizes the board loads with, for the metadata */
    r->bo = bo;
    if ((err = phase(r, "board", 0, (int64_t)o->n_board)) != 0 ||
        (err = mood_board_load(&r->board, o->board, o->n_board, &bo)) != 0)
        return err;
    return phase(r, "board", (int64_t)mood_board_count(r->board),
                 (int64_t)mood_board_count(r->board));
}

static int make_params(run *r)
{
    const mood_train_options *o = r->o;
    int layers = mood_clip_get_config(r->m->clip)->layers, err;
    /* the layers the conditioning uses: up to the clip skip's; SDXL's text encoder 2 all of them
     * (the pooled embedding is its last layer's) */
    int te_layers = o->train_te ? layers - (r->clip_skip - 1) : 0;
    int te2_layers = o->train_te && r->m->clip2 ? mood_clip_get_config(r->m->clip2)->layers : 0;
    mood_noise_schedule ns = r->m->sched;
    ns.prediction = r->pred;
    if (o->full) /* every weight, no init draws */
        err = mood__full_params_for_model(&r->lp, r->m, o->train_te);
    else
        err = mood__lora_params_for_model(&r->lp, r->m, o->targets, te_layers, te2_layers, o->rank,
                                          o->alpha);
    if (err || (err = mood_rng_torch_cpu_new(&r->g, o->seed)) != 0 ||
        (!o->full && (err = mood__lora_params_init(r->lp, r->g)) != 0))
        return err;
    return mood__train_sched_init(&r->sched, &ns);
}

/* ----- caches ----------------------------------------------------------------------------- */

/* One item's latents: encode, sample (mean + exp(logvar / 2) * randn), scale. */
static int encode_item(run *r, const mood_board_item *it, float *out, size_t e, float *img,
                       float *logvar)
{
    const mood_vae_config *vc = mood_vae_get_config(r->m->vae);
    int err = 0;
    for (int f = 0; f <= r->o->flip && !err; f++) {
        float *z = out + f * e;
        mood_board_item_tensor(img, it, f);
        if ((err = mood_vae_encode(r->m->vae, z, logvar, img, 1, it->height, it->width)) != 0 ||
            (err = mood_rng_torch_cpu_randn(r->g, logvar + e, e)) != 0)
            break;
        for (size_t i = 0; i < e; i++) {
            float sd = expf(0.5f * logvar[i]);
            z[i] = (z[i] + sd * logvar[e + i] - vc->shift_factor) * vc->scaling_factor;
        }
    }
    return err;
}

static int cache_latents(run *r)
{
    const mood_vae_config *vc = mood_vae_get_config(r->m->vae);
    size_t n = mood_board_count(r->board), total = 0, max_px = 0, off = 0;
    int s = mood_vae_scale(r->m->vae), C = vc->latent_channels, nf = r->o->flip ? 2 : 1, err = 0;
    float *img = NULL, *tmp = NULL;
    for (size_t i = 0; i < n; i++) {
        const mood_board_item *it = mood_board_item_at(r->board, i);
        size_t px = (size_t)it->width * it->height;
        total += (size_t)nf * C * (px / ((size_t)s * s));
        max_px = px > max_px ? px : max_px;
    }
    r->latents = mood_malloc(total * sizeof(float));
    img = mood_malloc(3 * max_px * sizeof(float));
    tmp = mood_malloc(2 * (size_t)C * (max_px / ((size_t)s * s)) * sizeof(float));
    if (!r->latents || !img || !tmp)
        err = mood_error_nomem();
    for (size_t i = 0; i < n && !err; i++) {
        const mood_board_item *it = mood_board_item_at(r->board, i);
        mood__train_item *ti = &r->items[i];
        size_t e;
        ti->h = it->height / s;
        ti->w = it->width / s;
        e = (size_t)C * ti->h * ti->w;
        ti->lat[0] = r->latents + off;
        ti->lat[1] = r->o->flip ? r->latents + off + e : NULL;
        err = encode_item(r, it, r->latents + off, e, img, tmp);
        off += (size_t)nf * e;
        if (!err)
            err = phase(r, "cache", (int64_t)i + 1, (int64_t)n);
    }
    r->data.C = C;
    mood_free(img);
    mood_free(tmp);
    return err;
}

/* kohya's tokenizer(caption, padding="max_length", truncation=True, max_length=77). */
static int caption_ids(run *r, int32_t *ids, const char *caption, int32_t pad_id)
{
    mood_token_ids t;
    int err;
    size_t k;
    mood_token_ids_init(&t);
    if ((err = mood_tokenizer_encode(r->m->tok, &t, caption, strlen(caption))) != 0) {
        mood_token_ids_dispose(&t);
        mood_error_prefix("caption \"%.60s\"", caption);
        return err;
    }
    ids[0] = MOOD_CLIP_START;
    for (k = 0; k < t.n && k < MOOD_CLIP_CHUNK; k++)
        ids[1 + k] = t.ids[k];
    ids[1 + k] = MOOD_CLIP_END;
    for (k += 2; k < MOOD_CLIP_CONTEXT; k++)
        ids[k] = pad_id;
    mood_token_ids_dispose(&t);
    return 0;
}

/* SDXL's conditioning of one caption, as kohya's get_hidden_states_sdxl: text encoder 1's and
 * text encoder 2's hidden_states[-2] (no final layer norm) concatenated per token into ctx
 * (77 x (C1 + C2)), and text encoder 2's pooled output through its projection into pooled.
 * Text encoder 2's ids are tokenizer_2's, padded with its "!" (pad_id2). */
static int encode_sdxl(run *r, const int32_t *ids1, const int32_t *ids2, float *ctx, float *pooled)
{
    const mood_model *m = r->m;
    size_t T = MOOD_CLIP_CONTEXT, C1 = (size_t)mood_clip_get_config(m->clip)->hidden;
    size_t C2 = (size_t)mood_clip_get_config(m->clip2)->hidden;
    float *z1 = mood_malloc(T * C1 * sizeof *z1), *z2 = mood_malloc(T * C2 * sizeof *z2);
    float *p2 = mood_malloc(C2 * sizeof *p2);
    int err = 0;
    if (!z1 || !z2 || !p2)
        err = mood_error_nomem();
    err = err ? err : mood_clip_forward(m->clip, ids1, 1, (int)T, 2, 0, z1, NULL);
    err = err ? err : mood_clip_forward(m->clip2, ids2, 1, (int)T, 2, 0, z2, p2);
    err = err ? err : mood_clip_project(m->clip2, p2, 1, pooled);
    for (size_t t = 0; t < T && !err; t++) {
        memcpy(ctx + t * (C1 + C2), z1 + t * C1, C1 * sizeof *ctx);
        memcpy(ctx + t * (C1 + C2) + C1, z2 + t * C2, C2 * sizeof *ctx);
    }
    mood_free(z1);
    mood_free(z2);
    mood_free(p2);
    return err;
}

/* kohya's SDXL size ids of an item (train_util.py: BucketManager.get_crop_ltrb on the bucket
 * and the source size, then __getitem__): original size (h, w) = the source image's, crop
 * (top, left) = where the source, fitted inside the bucket, would start (left from the right
 * edge when flipped), target size (h, w) = the training size. In doubles, floored, as Python's
 * float arithmetic and int(). */
static void sdxl_time_ids(float out[2][6], const mood_board_item *it)
{
    double bw = it->width, bh = it->height, ar = (double)it->src_width / it->src_height;
    double rw = bw / bh > ar ? bh * ar : bw, rh = bw / bh > ar ? bh : bw / ar;
    double left = floor((bw - rw) / 2), top = floor((bh - rh) / 2), right = left + rw;
    for (int f = 0; f < 2; f++) {
        out[f][0] = (float)it->src_height;
        out[f][1] = (float)it->src_width;
        out[f][2] = (float)top;
        out[f][3] = (float)(f ? floor(bw - right) : left);
        out[f][4] = (float)it->height;
        out[f][5] = (float)it->width;
    }
}

static int cache_text(run *r)
{
    size_t n = mood_board_count(r->board);
    int D = mood__context_width(r->m), P = mood__pooled_width(r->m), err = 0;
    int sdxl = r->m->clip2 != NULL;
    int cache = !r->o->train_te; /* a trained text encoder encodes at every step */
    size_t per = (size_t)MOOD_CLIP_CONTEXT * D, ni = (n + 1) * MOOD_CLIP_CONTEXT;
    /* item i's ids and context at i; the empty caption's (caption dropout) at n */
    r->ids = mood_malloc(ni * sizeof *r->ids);
    if (!r->ids || (cache && !(r->ctx = mood_malloc((n + 1) * per * sizeof *r->ctx))) ||
        (sdxl && !(r->ids2 = mood_malloc(ni * sizeof *r->ids2))) ||
        (sdxl && cache && !(r->pooled = mood_malloc((n + 1) * (size_t)P * sizeof *r->pooled))))
        return mood_error_nomem();
    for (size_t i = 0; i <= n && !err; i++) {
        int32_t *ids = r->ids + i * MOOD_CLIP_CONTEXT;
        int32_t *ids2 = sdxl ? r->ids2 + i * MOOD_CLIP_CONTEXT : NULL;
        const char *caption = i < n ? mood_board_item_at(r->board, i)->caption : "";
        if (i == n && r->o->caption_dropout <= 0)
            break;
        err = caption_ids(r, ids, caption, r->m->pad_id);
        if (!err && sdxl)
            err = caption_ids(r, ids2, caption, r->m->pad_id2);
        if (!err && sdxl && cache)
            err = encode_sdxl(r, ids, ids2, r->ctx + i * per, r->pooled + i * (size_t)P);
        else if (!err && cache)
            err = mood_clip_forward(r->m->clip, ids, 1, MOOD_CLIP_CONTEXT, r->clip_skip, 1,
                                    r->ctx + i * per, NULL);
        if (i < n) {
            r->items[i].ids = ids;
            r->items[i].ids2 = ids2;
            r->items[i].context = r->ctx ? r->ctx + i * per : NULL;
            r->items[i].pooled = r->pooled ? r->pooled + i * (size_t)P : NULL;
            if (sdxl)
                sdxl_time_ids(r->items[i].time_ids, mood_board_item_at(r->board, i));
        }
    }
    r->data.empty_ids = r->ids + n * MOOD_CLIP_CONTEXT;
    r->data.empty_ids2 = sdxl && r->o->caption_dropout > 0 ? r->ids2 + n * MOOD_CLIP_CONTEXT : NULL;
    r->data.empty_context = r->ctx ? r->ctx + n * per : NULL;
    r->data.ctx_len = MOOD_CLIP_CONTEXT;
    r->data.ctx_dim = D;
    r->data.pooled_dim = sdxl ? P : 0;
    r->data.empty_pooled =
        r->pooled && r->o->caption_dropout > 0 ? r->pooled + n * (size_t)P : NULL;
    return err;
}

/* ----- metadata --------------------------------------------------------------------------- */

typedef struct meta {
    char *kv[256];
    size_t n;
    int err;
} meta;

/* Adds key = value (copied). */
static void put(meta *m, const char *key, const char *value)
{
    if (m->err)
        return;
    if (m->n + 2 >= sizeof m->kv / sizeof m->kv[0]) {
        m->err = mood_error_set(MOOD_EINVAL, "training metadata: too many keys");
        return;
    }
    m->kv[m->n] = mood_strdup(key);
    m->kv[m->n + 1] = mood_strdup(value);
    m->n += 2;
    if (!m->kv[m->n - 2] || !m->kv[m->n - 1])
        m->err = mood_error_nomem();
}

static void putf(meta *m, const char *key, const char *fmt, ...) MOOD_PRINTF(3, 4);
static void putf(meta *m, const char *key, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    put(m, key, buf);
}

static const char *py_float(char *buf, size_t size, double v)
{
    mood__lora_py_float(buf, size, v);
    return buf;
}

static const char *py_bool(int v)
{
    return v ? "True" : "False";
}

/* The directory part of path ("board" when it has none), as kohya's dataset keys. */
static void dir_key(char *out, size_t size, const char *path)
{
    /* the real name of the image's folder, however it was typed ("b1/", ".", "../b1": b1) */
    const char *slash = strrchr(path, '/');
    char dir[4096], *real, *utf8 = NULL;
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    real = realpath(dir[0] ? dir : "/", NULL);
    /* the metadata is JSON in a safetensors header, which must be UTF-8: a folder named in
     * another encoding (an old archive's Latin-1) is read as Windows-1252, as the registry
     * reads names */
    if (real && mood_registry_text_to_utf8(&utf8, mood_path_basename(real)) == 0)
        snprintf(out, size, "%s", utf8);
    else
        snprintf(out, size, "%s", real ? mood_path_basename(real) : "board");
    if (!out[0])
        snprintf(out, size, "board");
    mood_registry_free_string(utf8);
    free(real);
}

/* Tags of one folder in first-seen order, as kohya counts them. */
typedef struct tag_count {
    char **tag;
    int *count;
    size_t n, cap;
} tag_count;

/* s[0..len) in lower case, as Python's str.lower() (kohya lowers each tag before counting it),
 * malloc'd; NULL when out of memory. */
static char *lower_tag(const char *s, size_t len)
{
    char *out = mood_malloc(len * 3 + 1), *o = out; /* a code point lowers to 3 at most */
    if (!out)
        return NULL;
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0, low[3];
        size_t k = mood__utf8_decode((const unsigned char *)s + i, len - i, &cp);
        if (!k) { /* captions are checked UTF-8; a byte that is not stays as it is */
            *o++ = s[i++];
            continue;
        }
        for (size_t j = 0, n = mood__uc_to_lower(cp, low); j < n; j++)
            o += mood__utf8_encode(low[j], o);
        i += k;
    }
    *o = '\0';
    return out;
}

static int count_tag(tag_count *tc, const char *s, size_t len)
{
    size_t cap = tc->cap;
    char *tag = lower_tag(s, len);
    if (!tag)
        return mood_error_nomem();
    for (size_t i = 0; i < tc->n; i++) {
        if (strcmp(tc->tag[i], tag) == 0) {
            tc->count[i]++;
            mood_free(tag);
            return 0;
        }
    }
    if (mood_array_reserve(&tc->tag, &tc->cap, tc->n + 1, sizeof *tc->tag, 16) != 0 ||
        mood_array_reserve(&tc->count, &cap, tc->n + 1, sizeof *tc->count, 16) != 0) {
        mood_free(tag);
        return mood_error_nomem();
    }
    tc->tag[tc->n] = tag;
    tc->count[tc->n++] = 1;
    return 0;
}

/* caption.split(","), each stripped and lowered, empty ones skipped (kohya's set_tag_frequency). */
static int count_caption(tag_count *tc, const char *caption)
{
    int err = 0;
    for (const char *p = caption; !err;) {
        const char *c = strchr(p, ','), *e = c ? c : p + strlen(p), *s = p;
        while (s < e && isspace((unsigned char)*s))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        if (e > s)
            err = count_tag(tc, s, (size_t)(e - s));
        if (!c)
            break;
        p = c + 1;
    }
    return err;
}

/* One folder's entries of ss_tag_frequency ({tag: count}) and ss_dataset_dirs. */
static int folder_json(const run *r, const char *key, mood_buf *tags, mood_buf *dirs)
{
    tag_count tc = {0};
    char other[256];
    int count = 0, repeats = 1, err = 0;
    for (size_t j = 0; j < mood_board_count(r->board) && !err; j++) {
        const mood_board_item *it = mood_board_item_at(r->board, j);
        dir_key(other, sizeof other, it->path);
        if (strcmp(key, other) == 0) {
            repeats = mood__board_repeats(r->board, j); /* a folder's images share theirs */
            count++;
            err = count_caption(&tc, it->caption);
        }
    }
    err = err ? err : mood_buf_json_string(tags, key);
    err = err ? err : mood_buf_puts(tags, ": {");
    for (size_t i = 0; i < tc.n && !err; i++) {
        err = mood_buf_puts(tags, i ? ", " : "");
        err = err ? err : mood_buf_json_string(tags, tc.tag[i]);
        err = err ? err : mood_buf_printf(tags, ": %d", tc.count[i]);
    }
    err = err ? err : mood_buf_puts(tags, "}");
    err = err ? err : mood_buf_json_string(dirs, key);
    err = err ? err
              : mood_buf_printf(dirs, ": {\"n_repeats\": %d, \"img_count\": %d}", repeats, count);
    for (size_t i = 0; i < tc.n; i++)
        mood_free(tc.tag[i]);
    mood_free(tc.tag);
    mood_free(tc.count);
    return err;
}

/* ss_tag_frequency {dir: {tag: count}} (each image's caption once) and ss_dataset_dirs
 * {dir: {"n_repeats": N of kohya's N_name folder, else 1, "img_count": images}}, as json.dumps
 * writes them. */
static int tag_json(const run *r, mood_buf *tags, mood_buf *dirs)
{
    size_t n = mood_board_count(r->board);
    char key[256], other[256];
    int err = mood_buf_puts(tags, "{"), k = 0;
    err = err ? err : mood_buf_puts(dirs, "{");
    for (size_t i = 0; i < n && !err; i++) {
        int seen = 0;
        dir_key(key, sizeof key, mood_board_item_at(r->board, i)->path);
        for (size_t j = 0; j < i; j++) {
            dir_key(other, sizeof other, mood_board_item_at(r->board, j)->path);
            seen |= strcmp(key, other) == 0;
        }
        if (seen)
            continue;
        err = mood_buf_puts(tags, k ? ", " : "");
        err = err ? err : mood_buf_puts(dirs, k ? ", " : "");
        err = err ? err : folder_json(r, key, tags, dirs);
        k++;
    }
    err = err ? err : mood_buf_puts(tags, "}");
    return err ? err : mood_buf_puts(dirs, "}");
}

/* Batches per epoch (per size group, ceil(count / batch)) and ss_bucket_info; an image counts
 * its repeats (kohya's BucketManager.add_image per repeat). */
static int bucket_json(const run *r, mood_buf *out, int64_t *batches)
{
    size_t n = mood_board_count(r->board);
    double ar_err = 0;
    int k = 0, err = mood_buf_puts(out, "{\"buckets\": {");
    *batches = 0;
    for (size_t i = 0; i < n && !err; i++) {
        const mood_board_item *it = mood_board_item_at(r->board, i);
        int seen = 0, count = 0;
        ar_err += fabs((double)it->width / it->height - (double)it->src_width / it->src_height);
        for (size_t j = 0; j < i; j++) {
            const mood_board_item *o = mood_board_item_at(r->board, j);
            seen |= o->width == it->width && o->height == it->height;
        }
        if (seen)
            continue;
        for (size_t j = i; j < n; j++) {
            const mood_board_item *o = mood_board_item_at(r->board, j);
            if (o->width == it->width && o->height == it->height)
                count += mood__board_repeats(r->board, j);
        }
        *batches += (count + r->o->batch - 1) / r->o->batch;
        err = mood_buf_printf(out, "%s\"%d\": {\"resolution\": [%d, %d], \"count\": %d}",
                              k ? ", " : "", k, it->width, it->height, count);
        k++;
    }
    return err ? err
               : mood_buf_printf(out, "}, \"mean_img_ar_error\": %.17g}", n ? ar_err / n : 0.0);
}

static const char *schedule_name(const mood_train_options *o)
{
    if (o->lr_schedule == MOOD_LR_COSINE)
        return "cosine";
    if (o->lr_schedule == MOOD_LR_LINEAR)
        return "linear";
    return o->warmup > 0 ? "constant_with_warmup" : "constant";
}

static void put_optimizer(meta *m, const mood_train_options *o)
{
    char a[40], b[40], c[40], d[40];
    if (o->weight_decay == 1e-2 && o->beta1 == 0.9 && o->beta2 == 0.999 && o->eps == 1e-8)
        put(m, "ss_optimizer", "torch.optim.adamw.AdamW");
    else
        putf(m, "ss_optimizer", "torch.optim.adamw.AdamW(weight_decay=%s,betas=(%s, %s),eps=%s)",
             py_float(a, sizeof a, o->weight_decay), py_float(b, sizeof b, o->beta1),
             py_float(c, sizeof c, o->beta2), py_float(d, sizeof d, o->eps));
}

static void put_training(meta *m, const run *r, int64_t steps, int64_t batches)
{
    const mood_train_options *o = r->o;
    char f[40];
    int64_t per_epoch = (batches + o->accum - 1) / o->accum;
    put(m, "ss_learning_rate", py_float(f, sizeof f, o->lr));
    put(m, "ss_unet_lr", py_float(f, sizeof f, o->lr));
    if (o->train_te)
        put(m, "ss_text_encoder_lr", py_float(f, sizeof f, o->te_lr > 0 ? o->te_lr : o->lr));
    else
        put(m, "ss_text_encoder_lr", "None");
    put(m, "ss_network_train_unet_only", py_bool(!o->train_te));
    put(m, "ss_lr_scheduler", schedule_name(o));
    putf(m, "ss_lr_warmup_steps", "%lld", (long long)o->warmup);
    put_optimizer(m, o);
    putf(m, "ss_max_train_steps", "%lld", (long long)o->steps);
    putf(m, "ss_steps", "%lld", (long long)steps);
    putf(m, "ss_num_batches_per_epoch", "%lld", (long long)batches);
    putf(m, "ss_num_epochs", "%lld", (long long)((o->steps + per_epoch - 1) / per_epoch));
    putf(m, "ss_epoch", "%lld", (long long)((steps + per_epoch - 1) / per_epoch));
    putf(m, "ss_batch_size_per_device", "%d", o->batch);
    putf(m, "ss_total_batch_size", "%d", o->batch * o->accum);
    putf(m, "ss_gradient_accumulation_steps", "%d", o->accum);
    put(m, "ss_max_grad_norm", py_float(f, sizeof f, o->max_grad_norm));
    putf(m, "ss_seed", "%llu", (unsigned long long)o->seed);
    put(m, "ss_noise_offset",
        o->noise_offset != 0 ? py_float(f, sizeof f, o->noise_offset) : "None");
    put(m, "ss_ip_noise_gamma",
        o->ip_noise_gamma != 0 ? py_float(f, sizeof f, o->ip_noise_gamma) : "None");
    put(m, "ss_ip_noise_gamma_random_strength", "False");
    if (o->min_timestep || o->max_timestep) /* kohya sai_model_spec: "min,max" when either is set */
        putf(m, "modelspec.timestep_range", "%d,%d", o->min_timestep,
             mood__train_t_max(o, r->m->sched.train_timesteps));
    put(m, "ss_min_snr_gamma",
        o->min_snr_gamma > 0 ? py_float(f, sizeof f, o->min_snr_gamma) : "None");
    put(m, "ss_v_parameterization", py_bool(r->pred == MOOD_PRED_V));
    if (o->clip_skip > 1 && r->m->family != MOOD_FAMILY_SDXL)
        putf(m, "ss_clip_skip", "%d", o->clip_skip);
    else
        put(m, "ss_clip_skip", "None");
}

static void put_data(meta *m, const run *r, const char *tags, const char *dirs, const char *buckets)
{
    const mood_train_options *o = r->o;
    int res = r->resolution;
    size_t images = 0; /* with repeats, as kohya's num_train_images */
    for (size_t i = 0; i < mood_board_count(r->board); i++)
        images += (size_t)mood__board_repeats(r->board, i);
    putf(m, "ss_num_train_images", "%zu", images);
    put(m, "ss_num_reg_images", "0");
    putf(m, "ss_resolution", "(%d, %d)", res, res);
    put(m, "ss_enable_bucket", py_bool(o->board_opts.buckets));
    putf(m, "ss_min_bucket_reso", "%d", r->bo.min_bucket);
    putf(m, "ss_max_bucket_reso", "%d", r->bo.max_bucket);
    put(m, "ss_bucket_no_upscale", "False");
    put(m, "ss_bucket_info", buckets);
    put(m, "ss_tag_frequency", tags);
    put(m, "ss_dataset_dirs", dirs);
    put(m, "ss_flip_aug", py_bool(o->flip));
    put(m, "ss_color_aug", "False");
    put(m, "ss_random_crop", "False");
    put(m, "ss_shuffle_caption", "False");
    put(m, "ss_keep_tokens", "0");
    putf(m, "ss_caption_dropout_rate", "%.17g", r->o->caption_dropout);
    put(m, "ss_caption_dropout_every_n_epochs", "0");
    put(m, "ss_caption_tag_dropout_rate", "0.0");
    put(m, "ss_cache_latents", "True");
    put(m, "ss_gradient_checkpointing", py_bool(r->m->train_checkpointing == 1));
    put(m, "ss_mixed_precision", mood__train_bf16(r->o) ? "bf16" : "no");
    put(m, "ss_full_fp16", "False");
    put(m, "ss_max_token_length", "None");
    put(m, "ss_prior_loss_weight", "1.0");
    put(m, "ss_loss_type", "l2");
    put(m, "ss_zero_terminal_snr", py_bool(r->m->sched.rescale_betas_zero_snr));
    put(m, "ss_network_dropout", "None");
    put(m, "ss_scale_weight_norms", "None");
    putf(m, "modelspec.resolution", "%dx%d", res, res);
}

static void put_identity(meta *m, const run *r)
{
    const mood_train_options *o = r->o;
    char f[40], title[256];
    const char *base = mood_path_basename(o->output), *dot = strrchr(base, '.');
    snprintf(title, sizeof title, "%.*s", (int)(dot && dot != base ? dot - base : 255), base);
    put(m, "ss_output_name", o->name ? o->name : title);
    put(m, "modelspec.title", o->name ? o->name : title);
    if (o->comment)
        put(m, "ss_training_comment", o->comment);
    /* an empty phrase says "no trigger" (importers then add none; mood's does not guess one):
     * an empty --trigger, or one no caption holds */
    if (o->board_opts.trigger)
        put(m, "modelspec.trigger_phrase",
            o->board_opts.trigger[0] && mood_board_uses_trigger(r->board, o->board_opts.trigger)
                ? o->board_opts.trigger
                : "");
    put(m, "ss_sd_model_name", mood_path_basename(o->model));
    putf(m, "ss_session_id", "%u", (unsigned)(o->seed * 2654435761u ^ (uint64_t)r->started));
    put(m, "ss_training_started_at", py_float(f, sizeof f, (double)r->started));
    put(m, "ss_training_finished_at", py_float(f, sizeof f, (double)time(NULL)));
    put(m, "modelspec.prediction_type",
        r->pred == MOOD_PRED_V        ? "v"
        : r->pred == MOOD_PRED_SAMPLE ? "sample"
                                      : "epsilon");
    if (r->m->family == MOOD_FAMILY_SD2 && r->pred != MOOD_PRED_V) {
        put(m, "ss_base_model_version", "sd_v2");
        put(m, "modelspec.architecture", "stable-diffusion-v2-512/lora");
    } else if (r->m->family == MOOD_FAMILY_SD1 && r->pred == MOOD_PRED_V) {
        put(m, "ss_base_model_version", "sd_v1_v");
    }
}

static int write_output(run *r, int64_t steps)
{
    meta m = {{0}, 0, 0};
    mood_buf tags, dirs, buckets;
    int64_t batches = 0;
    int err;
    mood_buf_init(&tags);
    mood_buf_init(&dirs);
    mood_buf_init(&buckets);
    err = tag_json(r, &tags, &dirs);
    err = err ? err : bucket_json(r, &buckets, &batches);
    if (!err) {
        put_identity(&m, r);
        put_training(&m, r, steps, batches);
        put_data(&m, r, tags.data, dirs.data, buckets.data);
        err = m.err;
    }
    if (!err)
        err = phase(r, "save", 0, 1);
    if (!err && r->lp->full)
        err = mood__full_params_write(r->lp, r->o->model, r->o->output, r->o->save_dtype);
    else if (!err)
        err = mood__lora_params_write(r->lp, r->o->output, r->m->family, r->o->save_dtype,
                                      (const char *const *)m.kv);
    if (!err && phase(r, "save", 1, 1) != 0) /* the line finished, not left at 0/1; a stop */
        mood_error_clear();                  /* asked for now is too late: it is written */
    for (size_t i = 0; i < m.n; i++)
        mood_free(m.kv[i]);
    mood_buf_dispose(&tags);
    mood_buf_dispose(&dirs);
    mood_buf_dispose(&buckets);
    return err;
}

/* ----- the run ---------------------------------------------------------------------------- */

/* An output of the run that would write over the base model: a file of the model's folder, or
 * the model's own file or the board's or the checkpoint resumed from (inputs: n of them). */
static int check_output(const char *what, const char *path, const mood_train_options *o,
                        const char *const *inputs, size_t n)
{
    struct stat st;
    int err;
    if (stat(o->model, &st) == 0 && S_ISDIR(st.st_mode) && mood__path_inside(path, o->model))
        return mood_error_set(MOOD_EINVAL,
                              "%s %s is inside the base model's folder %s: the run would write "
                              "over the model it trains on; choose a path outside it",
                              what, path, o->model);
    if ((err = mood_output_path_check_inputs(path, inputs, n)) != 0 && strcmp(what, "output"))
        mood_error_prefix("training option %s", what); /* the message names only the path */
    return err;
}

/* Where the results go, before any work: every file the run writes is writable and none is
 * what it reads (the base model, the board's files, the checkpoint it resumes from). */
static int check_outputs(const mood_train_options *o)
{
    const char **in = mood_calloc(o->n_board + 2, sizeof *in);
    size_t n = 0;
    int err = 0;
    if (!in)
        return mood_error_nomem();
    in[n++] = o->model; /* a single-file checkpoint; a folder never equals a file */
    for (size_t i = 0; i < o->n_board; i++)
        in[n++] = o->board[i];
    if (o->resume && o->checkpoint) /* last: the checkpoint itself is written again */
        in[n++] = o->checkpoint;
    if (o->full) /* the output is a model folder, with its own rules */
        err = mood__full_params_check(o->model, o->output);
    else
        err = check_output("output", o->output, o, in, n);
    if (!err && o->checkpoint)
        err = check_output("checkpoint", o->checkpoint, o, in, o->resume ? n - 1 : n);
    if (!err && o->checkpoint && !o->resume && mood__checkpoint_foreign(o->checkpoint))
        err = mood_error_set(MOOD_EINVAL,
                             "%s is there and is not a training checkpoint (a LoRA of that name?): "
                             "the run would write its checkpoint over it (training option "
                             "checkpoint); give another name or output",
                             o->checkpoint);
    if (!err && o->loss_csv)
        err = check_output("loss_csv", o->loss_csv, o, in, n);
    if (!err && o->loss_png)
        err = check_output("loss_png", o->loss_png, o, in, n);
    mood_free(in);
    return err;
}

/* Every check that needs neither the model nor the board's images, made before any work: the
 * options' ranges, the board options (when the resolution is given), the previews' options, the
 * checkpoint to resume from, and where the results go. */
static int check_options(const mood_train_options *o)
{
    mood__train_samples samples;
    int64_t step, planned;
    int err;
    if (!o)
        return mood_error_set(MOOD_EINVAL, "training: no options (NULL; mood_train_options_init "
                                           "gives the defaults)");
    if (!o->model || !o->board || o->n_board == 0 || !o->output)
        return mood_error_set(MOOD_EINVAL, "training needs a model, a mood board and an output: %s",
                              !o->model                  ? "option model is NULL"
                              : !o->board || !o->n_board ? "option board is NULL or n_board 0"
                                                         : "option output is NULL");
    for (size_t i = 0; i < o->n_board; i++)
        if (!o->board[i])
            return mood_error_set(MOOD_EINVAL, "training option board[%zu] is NULL", i);
    if ((err = mood__train_options_check(o)) != 0)
        return err;
    if (o->board_opts.resolution != 0) { /* else the model's size, known once it is open */
        mood_board_options bo = o->board_opts;
        mood__board_options_resolve(&bo);
        if ((err = mood__board_options_check(&bo)) != 0) {
            mood_error_prefix("training option board_opts");
            return err;
        }
    }
    /* the previews' options; their size once more when the model gives the resolution */
    err = mood__train_samples_init(&samples, o, NULL,
                                   o->board_opts.resolution ? o->board_opts.resolution : 64, 1,
                                   o->board_opts.trigger);
    mood__train_samples_dispose(&samples);
    if (err)
        return err;
    if (o->resume && !mood_path_exists(o->checkpoint))
        return mood_error_set(MOOD_ENOTFOUND,
                              "%s: no checkpoint to resume from (training option resume)",
                              o->checkpoint);
    if (!o->resume && o->checkpoint && mood__checkpoint_unfinished(o->checkpoint, &step, &planned))
        return mood_error_set(MOOD_EINVAL,
                              "%s is the checkpoint of a run stopped at step %lld of %lld, which "
                              "this run would overwrite: continue it with --resume (training "
                              "option resume), or delete it to start again",
                              o->checkpoint, (long long)step, (long long)planned);
    return check_outputs(o);
}

/* The board as this run trains on it, for a resumed run to tell whether it changed: SHA-256 of
 * each image's size, caption, repeats and pixels (as resized), one image at a time. */
static void board_digest(const mood_board *b, char hex[65])
{
    mood_buf lines;
    char px[65];
    mood_buf_init(&lines);
    for (size_t i = 0; i < mood_board_count(b); i++) {
        const mood_board_item *it = mood_board_item_at(b, i);
        mood_sha256_hex(px, it->rgb, (size_t)it->width * it->height * 3);
        if (mood_buf_printf(&lines, "%d %d %d %s %s\n", it->width, it->height,
                            mood__board_repeats(b, i), px, it->caption) != 0)
            break;
    }
    mood_sha256_hex(hex, lines.data ? lines.data : "", lines.len);
    mood_buf_dispose(&lines);
}

/* The items an epoch goes through: image i's repeats times (kohya's N_name folders), sharing
 * its cached latents and conditioning as kohya's repeats share an ImageInfo. *n: their count. */
static int repeat_items(run *r, size_t *n)
{
    size_t images = mood_board_count(r->board), k = 0;
    *n = 0;
    for (size_t i = 0; i < images; i++)
        *n += (size_t)mood__board_repeats(r->board, i);
    r->data.items = r->items;
    if (*n == images)
        return 0;
    if (!(r->epoch_items = mood_calloc(*n, sizeof *r->epoch_items)))
        return mood_error_nomem();
    for (size_t i = 0; i < images; i++)
        for (int j = 0; j < mood__board_repeats(r->board, i); j++)
            r->epoch_items[k++] = r->items[i];
    r->data.items = r->epoch_items;
    return 0;
}

static int train(run *r)
{
    const mood_train_options *o;
    size_t n;
    mood__trainer t;
    char digest[65];
    int err;
    if ((err = open_model(r)) != 0 || (err = make_params(r)) != 0)
        return err;
    o = r->o; /* resolved by open_model */
    /* sample previews: bad options fail before the latents are cached */
    /* "{trigger}" is the style's trigger word: none when the board's captions never hold it */
    if ((err = mood__train_samples_init(
             &r->samples, o, r->m, r->resolution, r->clip_skip,
             o->board_opts.trigger && o->board_opts.trigger[0] &&
                     mood_board_uses_trigger(r->board, o->board_opts.trigger)
                 ? o->board_opts.trigger
                 : NULL)) != 0)
        return err;
    n = mood_board_count(r->board);
    if (!(r->items = mood_calloc(n, sizeof *r->items)))
        return mood_error_nomem();
    if ((err = cache_latents(r)) != 0 || (err = cache_text(r)) != 0)
        return err;
    /* full training runs the weights themselves, no side paths */
    if (!r->lp->full && (err = mood__lora_params_attach(r->lp, r->m)) != 0)
        return err;
    if ((err = repeat_items(r, &n)) != 0)
        return err;
    r->data.n = n;
    r->data.flip = o->flip != 0;
    memset(&t, 0, sizeof t);
    t.o = o;
    t.lp = r->lp;
    t.data = &r->data;
    t.sched = &r->sched;
    t.g = r->g;
    t.loss = o->loss ? o->loss : o->full ? mood__train_full_loss : mood__train_model_loss;
    t.loss_user = o->loss ? o->loss_user : o->full ? (void *)r->lp : (void *)r->m;
    board_digest(r->board, digest);
    t.data_digest = digest;
    t.after_step = mood__train_samples_after_step; /* previews every sample_every steps */
    t.after_user = &r->samples;
    err = mood__trainer_run(&t);
    if (!err && (err = write_output(r, t.n_losses)) != 0 && o->checkpoint &&
        t.checkpoint_step >= 0) { /* say what is kept (a full disk fails the file, not the run) */
        char msg[768];
        snprintf(msg, sizeof msg, "%s", mood_error_last());
        mood_error_set(err,
                       "%s; the checkpoint %s (step %lld of %lld) is kept: the same command with "
                       "--resume continues from it and writes the file",
                       msg, o->checkpoint, (long long)t.checkpoint_step, (long long)o->steps);
    }
    if (!err && o->loss_csv)
        err = mood__loss_csv(o->loss_csv, t.losses, t.lrs, t.n_losses);
    if (!err && o->loss_png)
        err = mood__loss_png(o->loss_png, t.losses, t.n_losses, o->name);
    /* the final previews, once the LoRA file is written */
    if (!err && (err = mood__train_samples_render(&r->samples, t.n_losses, 1)) > 0)
        err = 0;
    mood_free(t.losses);
    mood_free(t.lrs);
    return err;
}

int mood_train_run(const mood_train_options *o)
{
    run r;
    int err;
    memset(&r, 0, sizeof r);
    if ((err = check_options(o)) != 0)
        return err;
    r.o = o;
    r.started = time(NULL);
    err = train(&r);
    run_dispose(&r);
    return err;
}
