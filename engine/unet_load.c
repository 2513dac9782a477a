/*
 * unet_load.c: loading a UNet (mood/unet.h): the diffusers config.json, the weight files of a
 * diffusers folder (single, fp16 variant or sharded), and single-file checkpoints whose
 * configuration is inferred from key names and shapes.
 *
 * Every source is first turned into one table of tensors under their diffusers names: a
 * diffusers file as it is, an LDM/SGM checkpoint ("model.diffusion_model.input_blocks.1.1.
 * proj_in.weight") through the project's one LDM -> diffusers map
 * (mood__keymap_ldm_to_diffusers). The configuration of a single file is then read off that
 * table, the model declares its parameters (mood__unet_build), and each is converted to float32
 * straight from the mapped file into its place, released from the page cache as it goes. A
 * tensor the model does not declare is an error, like one it lacks: a silently ignored tensor
 * would mean a wrong configuration.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/args.h"
#include "engine/unet_internal.h"
#include "engine/weights.h"
#include "lora/lora_internal.h"
#include "mood/safetensors.h"

/* ----- tensor sources ----------------------------------------------------------------------- */

typedef struct src_tensor {
    char *name; /* diffusers name */
    const mood_st_tensor *t;
    const mood_st_file *f;
    int used;
} src_tensor;

typedef struct source {
    mood_st_file **files;
    size_t n_files, cap_files;
    src_tensor *ts;
    size_t n, cap;
    int converted; /* names were mapped from LDM keys */
} source;

static void source_close(source *s)
{
    for (size_t i = 0; i < s->n_files; i++)
        mood_st_close(s->files[i]);
    for (size_t i = 0; i < s->n; i++)
        mood_free(s->ts[i].name);
    mood_free(s->files);
    mood_free(s->ts);
}

static int cmp_src(const void *a, const void *b)
{
    return strcmp(((const src_tensor *)a)->name, ((const src_tensor *)b)->name);
}

static src_tensor *src_find(const source *s, const char *name)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->ts[mid].name, name);
        if (c == 0)
            return &s->ts[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static const mood_st_tensor *src_tensor_of(const source *s, const char *name)
{
    const src_tensor *t = src_find(s, name);
    return t ? t->t : NULL;
}

static int src_add(source *s, const char *name, const mood_st_tensor *t, const mood_st_file *f)
{
    if (mood_array_reserve(&s->ts, &s->cap, s->n, sizeof *s->ts, 1024) < 0)
        return mood_error_nomem();
    s->ts[s->n].name = mood_strdup(name);
    s->ts[s->n].t = t;
    s->ts[s->n].f = f;
    s->ts[s->n].used = 0;
    if (!s->ts[s->n].name)
        return mood_error_nomem();
    s->n++;
    return 0;
}

static int src_open(source *s, const char *path, mood_st_file **out)
{
    int err;
    if (mood_array_reserve(&s->files, &s->cap_files, s->n_files, sizeof *s->files, 4) < 0)
        return mood_error_nomem();
    if ((err = mood_st_open(&s->files[s->n_files], path)) < 0)
        return err;
    *out = s->files[s->n_files++];
    return 0;
}

/* Sorts the table; two tensors of one name (shards, or two LDM keys mapping alike) are an
 * error. */
static int src_finish(source *s, const char *path)
{
    qsort(s->ts, s->n, sizeof *s->ts, cmp_src);
    for (size_t i = 1; i < s->n; i++)
        if (strcmp(s->ts[i - 1].name, s->ts[i].name) == 0)
            return mood_error_set(MOOD_EFORMAT,
                                  "%s: two tensors are the UNet weight \"%s\" (%s, %s)", path,
                                  s->ts[i].name, s->ts[i - 1].t->name, s->ts[i].t->name);
    return 0;
}

/* Adds every tensor of a diffusers-named file f whose name starts with prefix (prefix removed). */
static int add_named(source *s, const mood_st_file *f, const char *prefix)
{
    size_t pl = strlen(prefix);
    int err = 0;
    for (size_t i = 0; !err && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        if (strncmp(t->name, prefix, pl) == 0)
            err = src_add(s, t->name + pl, t, f);
    }
    return err;
}

static int add_diffusers_file(source *s, const char *path)
{
    mood_st_file *f = NULL;
    int err = src_open(s, path, &f);
    return err < 0 ? err : add_named(s, f, "");
}

/* Adds the UNet tensors of an LDM/SGM checkpoint (keys prefix + LDM path + .weight/.bias) under
 * their diffusers names. */
static int add_ldm_file(source *s, mood_st_file *f, const char *prefix)
{
    size_t pl = strlen(prefix);
    char ldm[512], d[512], full[600];
    s->converted = 1;
    for (size_t i = 0; i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        const char *rest = t->name + pl, *dot;
        int err;
        if (strncmp(t->name, prefix, pl) != 0)
            continue;
        dot = strrchr(rest, '.');
        if (!dot || (strcmp(dot, ".weight") && strcmp(dot, ".bias")) ||
            (size_t)(dot - rest) >= sizeof ldm)
            return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is no UNet weight or bias",
                                  mood_st_path(f), t->name);
        snprintf(ldm, sizeof ldm, "%.*s", (int)(dot - rest), rest);
        if (mood__keymap_ldm_to_diffusers(d, sizeof d, ldm) < 0)
            return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is no known UNet tensor",
                                  mood_st_path(f), t->name);
        snprintf(full, sizeof full, "%s%s", d, dot);
        if ((err = src_add(s, full, t, f)) < 0)
            return err;
    }
    return 0;
}

/* ----- paths -------------------------------------------------------------------------------- */

static char *join(const char *dir, const char *name)
{
    mood_buf b;
    mood_buf_init(&b);
    if (mood_buf_printf(&b, "%s/%s", dir, name) < 0) {
        mood_buf_dispose(&b);
        return NULL;
    }
    return mood_buf_detach(&b);
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Reads a whole (small) text file into a NUL-terminated string. */
static int read_text(char **out, const char *path)
{
    mood_map map;
    int err = mood_map_file(&map, path);
    *out = NULL;
    if (err < 0)
        return err;
    if (!(*out = mood_malloc((size_t)map.size + 1))) {
        mood_unmap(&map);
        return mood_error_nomem();
    }
    if (map.size)
        memcpy(*out, map.data, (size_t)map.size);
    (*out)[map.size] = 0;
    mood_unmap(&map);
    return 0;
}

/* The shard files named by a *.safetensors.index.json ("weight_map": name -> file). */
static int add_sharded(source *s, const char *dir, const char *index)
{
    char *text = NULL, *path = NULL;
    cJSON *root = NULL, *map, *e;
    int err = read_text(&text, index);
    if (err < 0)
        return err;
    root = cJSON_Parse(text);
    map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        err = mood_error_set(MOOD_EFORMAT, "%s: no \"weight_map\" object", index);
        goto done;
    }
    cJSON_ArrayForEach(e, map)
    {
        int seen = 0;
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            err = mood_error_set(MOOD_EFORMAT, "%s: bad file for \"%s\"", index, e->string);
            goto done;
        }
        for (cJSON *p = map->child; p != e && !seen; p = p->next)
            seen = strcmp(p->valuestring, e->valuestring) == 0;
        if (seen)
            continue;
        mood_free(path);
        if (!(path = join(dir, e->valuestring))) {
            err = mood_error_nomem();
            goto done;
        }
        if ((err = add_diffusers_file(s, path)) < 0)
            goto done;
    }
done:
    cJSON_Delete(root);
    mood_free(text);
    mood_free(path);
    return err;
}

/* The weights of a diffusers UNet folder: the plain file, else the fp16 variant, else sharded. */
static int add_diffusers_dir(source *s, const char *dir)
{
    static const char *const names[] = {"diffusion_pytorch_model.safetensors",
                                        "diffusion_pytorch_model.fp16.safetensors",
                                        "diffusion_pytorch_model.safetensors.index.json",
                                        "diffusion_pytorch_model.fp16.safetensors.index.json"};
    int err = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *p = join(dir, names[i]);
        if (!p)
            return mood_error_nomem();
        if (mood_path_exists(p)) {
            err = i < 2 ? add_diffusers_file(s, p) : add_sharded(s, dir, p);
            mood_free(p);
            return err < 0 ? err : src_finish(s, dir);
        }
        mood_free(p);
    }
    return mood_error_set(MOOD_ENOTFOUND, "%s: no diffusion_pytorch_model[.fp16].safetensors", dir);
}

/* ----- config.json -------------------------------------------------------------------------- */

typedef struct jctx {
    const cJSON *root;
    const char *path;
    int n; /* blocks, once known */
} jctx;

static const cJSON *jget(const jctx *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static int bad(const jctx *j, const char *key, const char *want)
{
    return mood_error_set(MOOD_EFORMAT, "%s: \"%s\" is not %s", j->path, key, want);
}

static int j_int(const jctx *j, const char *key, int def, int *out)
{
    const cJSON *v = jget(j, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (int)v->valuedouble)
        return bad(j, key, "an integer");
    *out = (int)v->valuedouble;
    return 0;
}

static int j_float(const jctx *j, const char *key, float def, float *out)
{
    const cJSON *v = jget(j, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v))
        return bad(j, key, "a number");
    *out = (float)v->valuedouble;
    return 0;
}

static int j_bool(const jctx *j, const char *key, int def, int *out)
{
    const cJSON *v = jget(j, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return bad(j, key, "true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

/* True when the list holds one number, repeated (a depth per resnet that mood can run). */
static int uniform(const cJSON *list)
{
    const cJSON *first = cJSON_GetArrayItem(list, 0), *y;
    if (!cJSON_IsNumber(first))
        return 0;
    cJSON_ArrayForEach(y, list)
    {
        if (!cJSON_IsNumber(y) || y->valuedouble != first->valuedouble)
            return 0;
    }
    return 1;
}

/* An int, or a list of j->n ints (a list of lists whose inner values are all equal counts as
 * that value: transformer_layers_per_block per resnet), into out[0..n). */
static int j_ints(const jctx *j, const char *key, int def, int *out)
{
    const cJSON *v = jget(j, key), *e;
    int i = 0;
    if (!v || cJSON_IsNumber(v)) {
        int err = j_int(j, key, def, &out[0]);
        for (i = 1; i < j->n; i++)
            out[i] = out[0];
        return err;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != j->n)
        return bad(j, key, "an integer or a list with one per block");
    cJSON_ArrayForEach(e, v)
    {
        const cJSON *x = cJSON_IsArray(e) ? cJSON_GetArrayItem(e, 0) : e;
        if (cJSON_IsArray(e) && !uniform(e))
            return mood_error_set(MOOD_EUNSUPPORTED,
                                  "%s: \"%s\": different values within one block", j->path, key);
        if (!cJSON_IsNumber(x) || x->valuedouble != (int)x->valuedouble)
            return bad(j, key, "a list of integers");
        out[i++] = (int)x->valuedouble;
    }
    return 0;
}

/* A string field (NULL when absent or null). */
static int j_str(const jctx *j, const char *key, const char **out)
{
    const cJSON *v = jget(j, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!cJSON_IsString(v))
        return bad(j, key, "a string");
    *out = v->valuestring;
    return 0;
}

static int unsupported(const jctx *j, const char *key, const char *what)
{
    return mood_error_set(MOOD_EUNSUPPORTED, "%s: \"%s\" %s is not supported", j->path, key, what);
}

/* Options mood does not implement must keep their diffusers defaults. */
static int check_defaults(const jctx *j)
{
    static const char *const must_be_null[] = {
        "class_embed_type",   "num_class_embeds",  "encoder_hid_dim",       "encoder_hid_dim_type",
        "time_cond_proj_dim", "timestep_post_act", "time_embedding_act_fn", "cross_attention_norm"};
    static const char *const must_be_false[] = {"dual_cross_attention", "resnet_skip_time_act",
                                                "class_embeddings_concat",
                                                "mid_block_only_cross_attention"};
    static const char *const strings[][2] = {{"act_fn", "silu"},
                                             {"resnet_time_scale_shift", "default"},
                                             {"time_embedding_type", "positional"},
                                             {"attention_type", "default"}};
    const cJSON *v, *e;
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++)
        if (jget(j, must_be_null[i]))
            return unsupported(j, must_be_null[i], "other than null");
    for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++)
        if ((v = jget(j, must_be_false[i])) && !cJSON_IsFalse(v))
            return unsupported(j, must_be_false[i], "other than false");
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if ((v = jget(j, strings[i][0])) &&
            (!cJSON_IsString(v) || strcmp(v->valuestring, strings[i][1])))
            return unsupported(j, strings[i][0], "other than the default");
    if ((v = jget(j, "only_cross_attention"))) {
        if (cJSON_IsTrue(v))
            return unsupported(j, "only_cross_attention", "true");
        cJSON_ArrayForEach(e, v)
        {
            if (!cJSON_IsFalse(e))
                return unsupported(j, "only_cross_attention", "true");
        }
    }
    return 0;
}

/* Block type lists: down_block_types and up_block_types, which fix the number of blocks. */
static int j_block_types(jctx *j, mood_unet_config *c)
{
    static const char *const names[] = {"DownBlock2D", "CrossAttnDownBlock2D", "UpBlock2D",
                                        "CrossAttnUpBlock2D"};
    const char *keys[2] = {"down_block_types", "up_block_types"};
    for (int k = 0; k < 2; k++) {
        const cJSON *v = jget(j, keys[k]), *e;
        int i = 0, n = cJSON_GetArraySize(v);
        if (!cJSON_IsArray(v) || n < 1 || n > MOOD_UNET_MAX_BLOCKS || (k && n != j->n))
            return bad(j, keys[k], "a list of 1 to 4 block types, as many down as up");
        j->n = n;
        cJSON_ArrayForEach(e, v)
        {
            int t = -1;
            for (int q = 0; q < 2; q++)
                if (cJSON_IsString(e) && !strcmp(e->valuestring, names[2 * k + q]))
                    t = 2 * k + q;
            if (t < 0)
                return mood_error_set(MOOD_EUNSUPPORTED, "%s: %s entry %d: %s is not supported",
                                      j->path, keys[k], i,
                                      cJSON_IsString(e) ? e->valuestring : "(not a string)");
            if (k)
                c->up_block_types[i++] = (mood_unet_block_type)t;
            else
                c->down_block_types[i++] = (mood_unet_block_type)t;
        }
    }
    c->n_blocks = j->n;
    return 0;
}

/* Heads (num_attention_heads, else attention_head_dim), depths, context width. */
static int j_attention(const jctx *j, mood_unet_config *c)
{
    int err, ctx[MOOD_UNET_MAX_BLOCKS], n = j->n;
    const cJSON *rev = jget(j, "reverse_transformer_layers_per_block");
    if ((err = j_ints(j, "attention_head_dim", 8, c->attention_head_dim)) < 0 ||
        (err = j_ints(j, "num_attention_heads", 0, c->num_attention_heads)) < 0 ||
        (err = j_ints(j, "transformer_layers_per_block", 1, c->transformer_layers_per_block)) < 0 ||
        (err = j_ints(j, "cross_attention_dim", 1280, ctx)) < 0)
        return err;
    for (int i = 0; i < n; i++) {
        if (!jget(j, "num_attention_heads"))
            c->num_attention_heads[i] = c->attention_head_dim[i];
        if (ctx[i] != ctx[0])
            return unsupported(j, "cross_attention_dim", "varying by block");
        c->up_transformer_layers[i] = c->transformer_layers_per_block[n - 1 - i];
    }
    c->cross_attention_dim = ctx[0];
    c->mid_transformer_layers = c->transformer_layers_per_block[n - 1];
    if (rev)
        return j_ints(j, "reverse_transformer_layers_per_block", 1, c->up_transformer_layers);
    return 0;
}

static int j_blocks(const jctx *j, mood_unet_config *c)
{
    const cJSON *v = jget(j, "block_out_channels"), *e;
    int i = 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != j->n)
        return bad(j, "block_out_channels", "a list with one width per block");
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble < 1 || e->valuedouble > 1 << 20)
            return bad(j, "block_out_channels", "a list of positive integers");
        c->block_out_channels[i++] = (int)e->valuedouble;
    }
    return j_ints(j, "layers_per_block", 2, c->layers_per_block);
}

/* Mid block and added embedding types. */
static int j_types(const jctx *j, mood_unet_config *c)
{
    const char *mid, *add;
    int err;
    if ((err = j_str(j, "mid_block_type", &mid)) < 0 ||
        (err = j_str(j, "addition_embed_type", &add)) < 0)
        return err;
    c->mid_block = 1;
    if (!cJSON_GetObjectItemCaseSensitive(j->root, "mid_block_type"))
        mid = "UNetMidBlock2DCrossAttn"; /* the default, absent from old configs */
    if (!mid)
        c->mid_block = 0;
    else if (strcmp(mid, "UNetMidBlock2DCrossAttn"))
        return unsupported(j, "mid_block_type", mid);
    c->addition_embed_text_time = 0;
    if (add && strcmp(add, "text_time"))
        return unsupported(j, "addition_embed_type", add);
    if (add)
        c->addition_embed_text_time = 1;
    return 0;
}

static int j_scalars(const jctx *j, mood_unet_config *c)
{
    int err;
    if ((err = j_int(j, "in_channels", 4, &c->in_channels)) < 0 ||
        (err = j_int(j, "out_channels", 4, &c->out_channels)) < 0 ||
        (err = j_bool(j, "use_linear_projection", 0, &c->use_linear_projection)) < 0 ||
        (err = j_int(j, "norm_num_groups", 32, &c->norm_num_groups)) < 0 ||
        (err = j_float(j, "norm_eps", 1e-5f, &c->norm_eps)) < 0 ||
        (err = j_bool(j, "flip_sin_to_cos", 1, &c->flip_sin_to_cos)) < 0 ||
        (err = j_float(j, "freq_shift", 0.0f, &c->freq_shift)) < 0 ||
        (err = j_bool(j, "upcast_attention", 0, &c->upcast_attention)) < 0 ||
        (err = j_float(j, "mid_block_scale_factor", 1.0f, &c->mid_block_scale_factor)) < 0 ||
        (err = j_float(j, "resnet_out_scale_factor", 1.0f, &c->resnet_out_scale_factor)) < 0 ||
        (err = j_int(j, "downsample_padding", 1, &c->downsample_padding)) < 0 ||
        (err = j_int(j, "conv_in_kernel", 3, &c->conv_in_kernel)) < 0 ||
        (err = j_int(j, "conv_out_kernel", 3, &c->conv_out_kernel)) < 0 ||
        (err = j_bool(j, "center_input_sample", 0, &c->center_input_sample)) < 0 ||
        (err = j_int(j, "time_embedding_dim", 4 * c->block_out_channels[0], &c->time_embed_dim)) <
            0 ||
        (err = j_int(j, "addition_time_embed_dim", 0, &c->addition_time_embed_dim)) < 0 ||
        (err = j_int(j, "projection_class_embeddings_input_dim", 0,
                     &c->projection_class_embeddings_input_dim)) < 0)
        return err;
    if (!jget(j, "norm_num_groups") && cJSON_GetObjectItemCaseSensitive(j->root, "norm_num_groups"))
        return unsupported(j, "norm_num_groups", "null");
    if (c->downsample_padding != 1)
        return unsupported(j, "downsample_padding", "other than 1");
    return 0;
}

static int parse_config(mood_unet_config *c, const char *path)
{
    char *text = NULL;
    cJSON *root = NULL;
    jctx j = {NULL, path, 0};
    const char *cls;
    int err = read_text(&text, path);
    if (err < 0)
        return err;
    if (!(root = cJSON_Parse(text)) || !cJSON_IsObject(root)) {
        err = mood_error_set(MOOD_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    j.root = root;
    memset(c, 0, sizeof *c);
    if ((err = j_str(&j, "_class_name", &cls)) < 0)
        goto done;
    if (cls && strcmp(cls, "UNet2DConditionModel")) {
        err = mood_error_set(MOOD_EUNSUPPORTED, "%s: a %s, not a UNet2DConditionModel", path, cls);
        goto done;
    }
    if ((err = check_defaults(&j)) < 0 || (err = j_block_types(&j, c)) < 0 ||
        (err = j_blocks(&j, c)) < 0 || (err = j_attention(&j, c)) < 0 ||
        (err = j_types(&j, c)) < 0 || (err = j_scalars(&j, c)) < 0)
        goto done;
done:
    cJSON_Delete(root);
    mood_free(text);
    return err;
}

/* ----- single files: inferring the configuration -------------------------------------------- */

/* Shape entry d of tensor `name`, or -1 when absent (or not that many dims). */
static int64_t dim_of(const source *s, const char *name, int d)
{
    const mood_st_tensor *t = src_tensor_of(s, name);
    return t && d < t->ndim ? t->shape[d] : -1;
}

static int has(const source *s, const char *fmt, int a, int b)
{
    char n[256];
    snprintf(n, sizeof n, fmt, a, b);
    return src_find(s, n) != NULL;
}

/* How many of fmt(a, 0), fmt(a, 1), ... exist. */
static int count(const source *s, const char *fmt, int a)
{
    int k = 0;
    while (k < 64 && has(s, fmt, a, k))
        k++;
    return k;
}

static int depth_of(const source *s, const char *block, int i)
{
    char fmt[128];
    snprintf(fmt, sizeof fmt, "%s.%%d.attentions.0.transformer_blocks.%%d.norm1.weight", block);
    return count(s, fmt, i);
}

/* Widths, levels, resnets, attention and depths of the down and up blocks. */
static int infer_blocks(mood_unet_config *c, const source *s, const char *path)
{
    int n = 0;
    while (n < MOOD_UNET_MAX_BLOCKS && has(s, "down_blocks.%d.resnets.%d.conv1.weight", n, 0)) {
        char name[128];
        snprintf(name, sizeof name, "down_blocks.%d.resnets.0.conv1.weight", n);
        c->block_out_channels[n] = (int)dim_of(s, name, 0);
        c->layers_per_block[n] = count(s, "down_blocks.%d.resnets.%d.conv1.weight", n);
        c->down_block_types[n] = has(s, "down_blocks.%d.attentions.%d.proj_in.weight", n, 0)
                                     ? MOOD_UNET_CROSS_ATTN_DOWN_BLOCK_2D
                                     : MOOD_UNET_DOWN_BLOCK_2D;
        c->transformer_layers_per_block[n] =
            c->down_block_types[n] == MOOD_UNET_CROSS_ATTN_DOWN_BLOCK_2D
                ? depth_of(s, "down_blocks", n)
                : 1;
        n++;
    }
    if (n < 1)
        return mood_error_set(MOOD_EFORMAT, "%s: no UNet down blocks (input_blocks)", path);
    c->n_blocks = n;
    for (int i = 0; i < n; i++) {
        int att = has(s, "up_blocks.%d.attentions.%d.proj_in.weight", i, 0);
        c->up_block_types[i] = att ? MOOD_UNET_CROSS_ATTN_UP_BLOCK_2D : MOOD_UNET_UP_BLOCK_2D;
        c->up_transformer_layers[i] = att ? depth_of(s, "up_blocks", i) : 1;
    }
    c->mid_block = src_find(s, "mid_block.resnets.0.conv1.weight") != NULL;
    if (c->mid_block && !src_find(s, "mid_block.attentions.0.proj_in.weight"))
        return mood_error_set(MOOD_EUNSUPPORTED, "%s: a mid block without attention", path);
    c->mid_transformer_layers = 0;
    while (c->mid_block && has(s, "mid_block.attentions.0.transformer_blocks.%d.norm1.weight",
                               c->mid_transformer_layers, 0))
        c->mid_transformer_layers++;
    return 0;
}

/* Context width and projection kind from the first transformer found. */
static void infer_attention_shapes(mood_unet_config *c, const source *s)
{
    c->cross_attention_dim = 768;
    c->use_linear_projection = 0;
    for (size_t i = 0; i < s->n; i++) {
        const char *nm = s->ts[i].name;
        size_t l = strlen(nm);
        if (l > 17 && !strcmp(nm + l - 17, "attn2.to_k.weight") && s->ts[i].t->ndim == 2)
            c->cross_attention_dim = (int)s->ts[i].t->shape[1];
        if (l > 14 && !strcmp(nm + l - 14, "proj_in.weight"))
            c->use_linear_projection = s->ts[i].t->ndim == 2;
    }
}

/* Heads per block: the hint's, else 8 for a 768-wide context (SD1), else width 64 (SD2, SDXL).
 * Only blocks that have a transformer (down i, up n-1-i, mid for the last) need them. */
static int infer_heads(mood_unet_config *c, const mood_unet_config *hint, const char *path)
{
    int n = c->n_blocks;
    for (int i = 0; i < n; i++) {
        int C = c->block_out_channels[i], h = hint ? hint->num_attention_heads[i] : 0;
        int used = c->down_block_types[i] == MOOD_UNET_CROSS_ATTN_DOWN_BLOCK_2D ||
                   c->up_block_types[n - 1 - i] == MOOD_UNET_CROSS_ATTN_UP_BLOCK_2D ||
                   (i == n - 1 && c->mid_block);
        if (h <= 0)
            h = c->cross_attention_dim == 768 ? 8 : C % 64 == 0 ? C / 64 : 0;
        if (h <= 0 && used)
            return mood_error_set(MOOD_EINVAL,
                                  "%s: cannot infer the attention heads of the %d-wide block %d "
                                  "(context %d); give them in the hint",
                                  path, C, i, c->cross_attention_dim);
        c->num_attention_heads[i] = c->attention_head_dim[i] = h > 0 ? h : 1;
    }
    return 0;
}

/* SDXL's text_time embedding: the input width from add_embedding.linear_1, the width of each
 * time id's embedding from the hint, the real model (2816 = 1280 + 6 x 256), or the second
 * text encoder's projection in the same checkpoint. */
static int infer_text_time(mood_unet_config *c, const source *s, const mood_unet_config *hint,
                           const mood_st_file *f, const char *path)
{
    int64_t P = dim_of(s, "add_embedding.linear_1.weight", 1);
    const mood_st_tensor *proj =
        f ? mood_st_find(f, "conditioner.embedders.1.model.text_projection") : NULL;
    c->addition_embed_text_time = P > 0;
    if (P <= 0)
        return 0;
    c->projection_class_embeddings_input_dim = (int)P;
    if (hint && hint->addition_time_embed_dim > 0)
        c->addition_time_embed_dim = hint->addition_time_embed_dim;
    else if (P == 2816)
        c->addition_time_embed_dim = 256;
    else if (proj && proj->ndim == 2 && P > proj->shape[1] && (P - proj->shape[1]) % 6 == 0)
        c->addition_time_embed_dim = (int)((P - proj->shape[1]) / 6);
    else
        return mood_error_set(MOOD_EINVAL,
                              "%s: cannot infer addition_time_embed_dim from a %lld-wide "
                              "label_emb; give it in the hint",
                              path, (long long)P);
    return 0;
}

static int infer_config(mood_unet_config *c, const source *s, const mood_unet_config *hint,
                        const mood_st_file *f, const char *path)
{
    int err;
    memset(c, 0, sizeof *c);
    if (dim_of(s, "conv_in.weight", 3) < 0 || dim_of(s, "conv_out.weight", 3) < 0 ||
        dim_of(s, "time_embedding.linear_1.weight", 1) < 0)
        return mood_error_set(MOOD_EFORMAT, "%s: no UNet conv_in, conv_out or time embedding",
                              path);
    c->in_channels = (int)dim_of(s, "conv_in.weight", 1);
    c->conv_in_kernel = (int)dim_of(s, "conv_in.weight", 2);
    c->out_channels = (int)dim_of(s, "conv_out.weight", 0);
    c->conv_out_kernel = (int)dim_of(s, "conv_out.weight", 2);
    c->time_embed_dim = (int)dim_of(s, "time_embedding.linear_1.weight", 0);
    if ((err = infer_blocks(c, s, path)) < 0)
        return err;
    infer_attention_shapes(c, s);
    if ((err = infer_heads(c, hint, path)) < 0)
        return err;
    c->norm_num_groups = hint && hint->norm_num_groups > 0 ? hint->norm_num_groups : 32;
    c->norm_eps = hint && hint->norm_eps > 0 ? hint->norm_eps : 1e-5f;
    c->flip_sin_to_cos = 1; /* ldm's timestep_embedding: [cos | sin], no shift */
    c->freq_shift = 0;
    c->mid_block_scale_factor = c->resnet_out_scale_factor = 1.0f;
    c->downsample_padding = 1;
    return infer_text_time(c, s, hint, f, path);
}

/* A single file: LDM/SGM keys under "model.diffusion_model." or bare, or diffusers names. */
static int add_single_file(source *s, const char *path, mood_st_file **f)
{
    int err = src_open(s, path, f);
    if (err < 0)
        return err;
    if (mood_st_find(*f, "model.diffusion_model.input_blocks.0.0.weight"))
        err = add_ldm_file(s, *f, "model.diffusion_model.");
    else if (mood_st_find(*f, "input_blocks.0.0.weight"))
        err = add_ldm_file(s, *f, "");
    else if (mood_st_find(*f, "conv_in.weight"))
        err = add_named(s, *f, "");
    else
        err = mood_error_set(MOOD_EFORMAT,
                             "%s: no UNet in this file (no input_blocks.0.0 or "
                             "conv_in weight)",
                             path);
    return err < 0 ? err : src_finish(s, path);
}

/* ----- loading ------------------------------------------------------------------------------ */

/* "name" or "key (diffusers name)" for messages. */
static void label(char *buf, size_t size, const src_tensor *st, const char *name)
{
    if (st && strcmp(st->t->name, name))
        snprintf(buf, size, "\"%s\" (%s)", st->t->name, name);
    else
        snprintf(buf, size, "\"%s\"", name);
}

static int load_param(unet_param *p, src_tensor *st, const char *where)
{
    char lb[700];
    int err;
    label(lb, sizeof lb, st, p->name);
    if ((err = mood__weight_to_f32(p->data, st ? st->t : NULL, where, lb, p->shape, p->ndim, 0)) <
        0)
        return err;
    mood_st_release(st->f, st->t);
    st->used = 1;
    return 0;
}

static int load_params(mood_unet *m, source *s, const char *where)
{
    char lb[700];
    int err;
    for (size_t i = 0; i < m->n_params; i++)
        if ((err = load_param(&m->params[i], src_find(s, m->params[i].name), where)) < 0)
            return err;
    for (size_t i = 0; i < s->n; i++) {
        if (!s->ts[i].used) {
            label(lb, sizeof lb, &s->ts[i], s->ts[i].name);
            return mood_error_set(MOOD_EFORMAT,
                                  "%s: tensor %s is not part of the UNet its configuration "
                                  "describes",
                                  where, lb);
        }
    }
    return 0;
}

/* The UNet folder of path: path itself or path/unet (a pipeline root), with config.json. */
static int find_folder(char **dir, char **config, const char *path)
{
    *config = join(path, "config.json");
    *dir = NULL;
    if (*config && mood_path_exists(*config) && (*dir = mood_strdup(path)))
        return 0;
    mood_free(*config);
    if (!(*dir = join(path, "unet")) || !(*config = join(*dir, "config.json")))
        return mood_error_nomem();
    if (mood_path_exists(*config))
        return 0;
    return mood_error_set(MOOD_ENOTFOUND, "%s: no config.json here or in unet/", path);
}

int mood_unet_load_ex(mood_unet **out, const char *path, const mood_unet_config *hint)
{
    source s;
    mood_unet *m = NULL;
    mood_st_file *f = NULL;
    char *dir = NULL, *config = NULL;
    const char *where = path;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    memset(&s, 0, sizeof s);
    if (!(m = mood_calloc(1, sizeof *m))) {
        err = mood_error_nomem();
        goto done;
    }
    if (is_dir(path)) {
        if ((err = find_folder(&dir, &config, path)) < 0 ||
            (err = parse_config(&m->cfg, config)) < 0 || (err = add_diffusers_dir(&s, dir)) < 0)
            goto done;
        where = dir;
    } else if ((err = add_single_file(&s, path, &f)) < 0 ||
               (err = infer_config(&m->cfg, &s, hint, f, path)) < 0) {
        goto done;
    }
    if ((err = mood__unet_build(m)) < 0) {
        mood_error_prefix("%s", where);
        goto done;
    }
    err = load_params(m, &s, where);
done:
    source_close(&s);
    mood_free(dir);
    mood_free(config);
    if (err < 0)
        mood_unet_free(m);
    else
        *out = m;
    return err;
}

int mood_unet_load(mood_unet **out, const char *path)
{
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    return mood_unet_load_ex(out, path, NULL);
}
