/*
 * full_params.c: full-parameter training, where every weight of the UNet (and, with the text
 * encoder, of it) is trained rather than LoRA modules: how mood makes its small base model,
 * mood-tiny (tools/mood_tiny/train.sh).
 *
 * The trainer works on flat fp32 buffers (llm.c's one-allocation idea, as for LoRA): the text
 * encoder's weights in its weight order, then the UNet's. The model keeps its own copy of the
 * weights, which it runs; mood__full_params_sync copies the updated parameters into it after each
 * optimizer step (a memcpy of the model's size, small next to a step), and up to the UNet's GPU
 * copy when it trains there. The backward passes write
 * each weight's gradient straight into its slice of the flat gradient buffer.
 *
 * Output: a copy of the base's diffusers folder (configs, scheduler, tokenizer, VAE) with the
 * trained weights in the UNet's (and text encoder's) safetensors file, built in a temporary
 * folder next to the destination and renamed over it only once complete.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model_impl.h"
#include "mood/hash.h"
#include "train/train_internal.h"

struct mood__full_params {
    mood_model *m;
    size_t n_te, n_unet;  /* weights of each part */
    float **model_w;      /* n_te + n_unet: the model's buffers, in flat order */
    float **grad_w;       /* the same weights' gradients inside lp->grads */
    const char **names;   /* their names (borrowed from the models) */
    int64_t (*shapes)[4]; /* their shapes (torch's) */
    int *ndims;
};

void mood__full_params_free(mood__full_params *fp)
{
    if (!fp)
        return;
    mood_free(fp->model_w);
    mood_free(fp->grad_w);
    mood_free((void *)fp->names);
    mood_free(fp->shapes);
    mood_free(fp->ndims);
    mood_free(fp);
}

static size_t numel(int ndim, const int64_t shape[4])
{
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    return n;
}

/* Weight i of the flat order: its name, buffer and shape. */
static int describe(mood__full_params *fp, size_t i)
{
    mood_model *m = fp->m;
    float *w;
    if (i < fp->n_te) {
        fp->names[i] = mood_clip_weight_name(m->clip, i);
        w = mood_clip_weight(m->clip, fp->names[i], &fp->ndims[i], fp->shapes[i]);
    } else {
        fp->names[i] = mood_unet_weight_name(m->unet, i - fp->n_te);
        w = mood_unet_weight(m->unet, fp->names[i], &fp->ndims[i], fp->shapes[i]);
    }
    if (!w)
        return mood_error_set(MOOD_EINVAL, "full training: weight %zu (%s) not found", i,
                              fp->names[i] ? fp->names[i] : "?");
    fp->model_w[i] = w;
    return 0;
}

static int full_alloc(mood__full_params **out, mood_model *m, int with_te)
{
    mood__full_params *fp = mood_calloc(1, sizeof *fp);
    if (!fp)
        return mood_error_nomem();
    fp->m = m;
    fp->n_te = with_te ? mood_clip_weight_count(m->clip) : 0;
    fp->n_unet = mood_unet_weight_count(m->unet);
    size_t n = fp->n_te + fp->n_unet;
    fp->model_w = mood_calloc(n, sizeof *fp->model_w);
    fp->grad_w = mood_calloc(n, sizeof *fp->grad_w);
    fp->names = mood_calloc(n, sizeof *fp->names);
    fp->shapes = mood_calloc(n, sizeof *fp->shapes);
    fp->ndims = mood_calloc(n, sizeof *fp->ndims);
    *out = fp;
    if (!fp->model_w || !fp->grad_w || !fp->names || !fp->shapes || !fp->ndims)
        return mood_error_nomem();
    return 0;
}

int mood__full_params_for_model(mood__lora_params **out, mood_model *m, int with_te)
{
    mood__lora_params *lp = mood_calloc(1, sizeof *lp);
    int err = lp ? full_alloc(&lp->full, m, with_te) : mood_error_nomem();
    *out = NULL;
    if (err)
        goto done;
    mood__full_params *fp = lp->full;
    size_t n = fp->n_te + fp->n_unet, total = 0;
    if (!(lp->tensor_off = mood_calloc(n + 1, sizeof *lp->tensor_off))) {
        err = mood_error_nomem();
        goto done;
    }
    for (size_t i = 0; i < n && !err; i++) {
        if ((err = describe(fp, i)) != 0)
            break;
        lp->tensor_off[i] = total;
        total += numel(fp->ndims[i], fp->shapes[i]);
        if (i + 1 == fp->n_te)
            lp->te_end = total;
    }
    lp->tensor_off[n] = total;
    lp->n_params = total;
    lp->n_tensors = n;
    if (!err && (!(lp->params = mood_malloc(total * sizeof *lp->params)) ||
                 !(lp->grads = mood_calloc(total, sizeof *lp->grads))))
        err = mood_error_nomem();
    for (size_t i = 0; i < n && !err; i++) {
        size_t k = lp->tensor_off[i + 1] - lp->tensor_off[i];
        memcpy(lp->params + lp->tensor_off[i], fp->model_w[i], k * sizeof *lp->params);
        fp->grad_w[i] = lp->grads + lp->tensor_off[i];
    }
done:
    if (err)
        mood__lora_params_free(lp);
    else
        *out = lp;
    return err;
}

int mood__full_params_sync(const mood__lora_params *lp)
{
    const mood__full_params *fp = lp->full;
    for (size_t i = 0; i < fp->n_te + fp->n_unet; i++)
        memcpy(fp->model_w[i], lp->params + lp->tensor_off[i],
               (lp->tensor_off[i + 1] - lp->tensor_off[i]) * sizeof *lp->params);
    /* the UNet's GPU copy (train/unet_step_cuda.c) runs the new weights too */
    return fp->m->cuda_unet ? mood_cuda_unet_reload(fp->m->cuda_unet, NULL) : 0;
}

float *const *mood__full_params_unet_grads(const mood__lora_params *lp)
{
    return lp->full->grad_w + lp->full->n_te;
}

float *const *mood__full_params_te_grads(const mood__lora_params *lp)
{
    return lp->full->n_te ? lp->full->grad_w : NULL;
}

mood_model *mood__full_params_model(const mood__lora_params *lp)
{
    return lp->full->m;
}

void mood__full_params_layout(const mood__lora_params *lp, char hex_out[65])
{
    const mood__full_params *fp = lp->full;
    mood_buf b;
    mood_buf_init(&b);
    for (size_t i = 0; i < fp->n_te + fp->n_unet; i++)
        if (mood_buf_printf(&b, "%s %s %zu\n", i < fp->n_te ? "te" : "unet", fp->names[i],
                            lp->tensor_off[i + 1] - lp->tensor_off[i]) != 0)
            break;
    mood_sha256_hex(hex_out, b.data ? b.data : "", b.len);
    mood_buf_dispose(&b);
}

/* ----- output folder ---------------------------------------------------------------------- */

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Marks the weights full training writes, so that only a folder it wrote is ever replaced. */
#define WRITTEN_BY_MOOD "mood.full_training"

/* A folder full training wrote before (its UNet's weights carry the mark): the only kind of
 * existing folder it replaces. A downloaded model, a ComfyUI models/ folder with a unet/ among
 * others, any folder of the user's: never. */
static int written_by_full_training(const char *dir)
{
    char p[4200];
    mood_st_file *f = NULL;
    int marked;
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    marked = mood_st_open(&f, p) == 0 && mood_st_meta_get(f, WRITTEN_BY_MOOD) != NULL;
    mood_st_close(f);
    mood_error_clear();
    return marked;
}

/* Whether path, resolved (links followed; a path that does not exist: its nearest existing
 * parent), is dir or lies inside it. */
static int resolved_inside(const char *path, const char *d)
{
    char p[PATH_MAX], probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s", path);
    while (!realpath(probe, p)) { /* the nearest parent that exists */
        char *slash = strrchr(probe, '/');
        if (slash == probe)
            return 0;
        if (slash)
            *slash = '\0';
        else
            snprintf(probe, sizeof probe, ".");
    }
    size_t n = strlen(d);
    return strncmp(p, d, n) == 0 && (p[n] == '\0' || p[n] == '/');
}

int mood__path_inside(const char *path, const char *dir)
{
    char d[PATH_MAX], parent[PATH_MAX];
    const char *base;
    if (!path || !dir || !realpath(dir, d))
        return 0;
    base = mood_path_basename(path);
    if (resolved_inside(path, d))
        return 1;
    /* the entry itself, where the path is a link out of dir (a model folder of links to blobs,
     * as Hugging Face's cache has): writing it replaces the entry in dir */
    if (base == path)
        return 0;
    snprintf(parent, sizeof parent, "%.*s", (int)(base - path), path);
    return resolved_inside(parent, d);
}

int mood__full_params_check(const char *model, const char *out_dir)
{
    struct stat st;
    if (stat(model, &st) == 0 && !S_ISDIR(st.st_mode))
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "%s: full-parameter training needs a diffusers folder as its base "
                              "(the trained model is written as a copy of it), not a single-file "
                              "checkpoint",
                              model);
    if (mood__path_inside(out_dir, model))
        return mood_error_set(MOOD_EINVAL,
                              "%s is the base model's folder (or inside it): the trained model is "
                              "written as a new folder; choose another path",
                              out_dir);
    if (stat(out_dir, &st) != 0)
        return 0;
    if (!S_ISDIR(st.st_mode) || !written_by_full_training(out_dir))
        return mood_error_set(MOOD_EINVAL,
                              "%s exists and is not a model an earlier 'mood train --full' wrote: "
                              "full-parameter training replaces its output folder as a whole, "
                              "so it writes only a new path or its own earlier output; choose "
                              "another path",
                              out_dir);
    return 0;
}

/* Copies the regular file src to dst. */
static int copy_file(const char *src, const char *dst)
{
    mood_map map = {0};
    mood_atomic_file af;
    int err = mood_map_file(&map, src);
    if (err)
        return err;
    if ((err = mood_atomic_open(&af, dst)) == 0) {
        if ((err = mood_atomic_write(&af, map.data, (size_t)map.size)) == 0)
            err = mood_atomic_commit(&af);
        else
            mood_atomic_abort(&af);
    }
    mood_unmap(&map);
    return err;
}

/* The weight files training replaces (not copied). */
static int replaced(const char *rel, int with_te)
{
    return !strncmp(rel, "unet/diffusion_pytorch_model", 28) ||
           (with_te && !strncmp(rel, "text_encoder/model", 18));
}

/* Copies the tree src/rel into dst/rel, leaving out the weight files training replaces. */
static int copy_tree(const char *src, const char *dst, const char *rel, int with_te)
{
    char from[4096], to[4096], r[4096];
    int err = 0;
    snprintf(from, sizeof from, "%s%s%s", src, *rel ? "/" : "", rel);
    snprintf(to, sizeof to, "%s%s%s", dst, *rel ? "/" : "", rel);
    if (mkdir(to, 0755) != 0 && errno != EEXIST)
        return mood_error_set(MOOD_EIO, "%s: %s", to, strerror(errno));
    DIR *dir = opendir(from);
    if (!dir)
        return mood_error_set(MOOD_EIO, "%s: %s", from, strerror(errno));
    struct dirent *e;
    while (!err && (e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (snprintf(r, sizeof r, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= (int)sizeof r ||
            snprintf(from, sizeof from, "%s/%s", src, r) >= (int)sizeof from ||
            snprintf(to, sizeof to, "%s/%s", dst, r) >= (int)sizeof to)
            err = mood_error_set(MOOD_EINVAL, "%s/%s: path too long", src, r);
        else if (replaced(r, with_te))
            continue;
        else if (is_dir(from))
            err = copy_tree(src, dst, r, with_te);
        else if (!*rel && strcmp(e->d_name, "model_index.json") != 0)
            continue; /* the base's README, training notes, loss curves: not the new model's */
        else
            err = copy_file(from, to);
    }
    closedir(dir);
    return err;
}

/* Removes the tree at path (best effort: used on a temporary or a replaced folder). */
static void remove_tree(const char *path)
{
    DIR *dir = opendir(path);
    char p[4096];
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            if (is_dir(p))
                remove_tree(p);
            else
                unlink(p);
        }
        closedir(dir);
    }
    rmdir(path);
}

/* Writes weights [i0, i1) of the flat order, in dtype, to path. */
static int write_weights(const mood__lora_params *lp, size_t i0, size_t i1, const char *path,
                         mood_dtype dtype)
{
    const mood__full_params *fp = lp->full;
    mood_st_writer *w = NULL;
    int err = mood_st_writer_new(&w);
    for (size_t i = i0; i < i1 && !err; i++)
        err = mood_st_writer_add_f32(w, fp->names[i], dtype, fp->ndims[i], fp->shapes[i],
                                     lp->params + lp->tensor_off[i]);
    if (!err)
        err = mood_st_writer_set_meta(w, "format", "pt");
    if (!err)
        err = mood_st_writer_set_meta(w, WRITTEN_BY_MOOD, "1");
    if (!err)
        err = mood_st_writer_write(w, path, NULL, NULL);
    mood_st_writer_free(w);
    return err;
}

int mood__full_params_write(const mood__lora_params *lp, const char *src, const char *out_dir,
                            mood_dtype dtype)
{
    const mood__full_params *fp = lp->full;
    char tmp[4096], old[4096], path[4200];
    int err;
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%d", out_dir, (int)getpid()) >= (int)sizeof tmp ||
        snprintf(old, sizeof old, "%s.old-%d", out_dir, (int)getpid()) >= (int)sizeof old)
        return mood_error_set(MOOD_EINVAL, "%s: path too long", out_dir);
    if ((err = mood__full_params_check(src, out_dir)) != 0)
        return err;
    remove_tree(tmp);
    err = copy_tree(src, tmp, "", fp->n_te > 0);
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", tmp);
    if (!err)
        err = write_weights(lp, fp->n_te, fp->n_te + fp->n_unet, path, dtype);
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", tmp);
    if (!err && fp->n_te)
        err = write_weights(lp, 0, fp->n_te, path, dtype);
    if (!err && is_dir(out_dir) && rename(out_dir, old) != 0)
        err = mood_error_set(MOOD_EIO, "%s: %s", out_dir, strerror(errno));
    if (!err && rename(tmp, out_dir) != 0) {
        err = mood_error_set(MOOD_EIO, "%s: %s", out_dir, strerror(errno));
        rename(old, out_dir); /* put the previous model back */
    }
    if (err) {
        mood_error_prefix("writing the trained model %s", out_dir);
        remove_tree(tmp);
        return err;
    }
    remove_tree(old);
    return 0;
}
