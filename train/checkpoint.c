/*
 * checkpoint.c: the training state of a run in one safetensors file, written atomically (a
 * temporary file renamed over the old checkpoint only when complete and synced, so a full disk
 * or a crash while saving leaves the previous checkpoint intact).
 *
 * Tensors: "lora.params" (F32, the flat LoRA parameters), "adam.m" and "adam.v" (F32),
 * "epoch.order" (I32, this epoch's image order), "epoch.flips" (U8), "rng" (U8, the generator,
 * mood_rng_torch_cpu_get_state), "loss" and "lr" (F32, one value per step done: the loss, the
 * learning rate it ran at). Metadata: format version, step, epoch, cursor, the settings a resumed
 * run may change but is told about (planned steps, learning rate and schedule, the board's
 * digest), and what must not change between the saving and
 * the resuming run (layout digest of the modules, seed, batch, accumulation, flips, number of
 * images); a resumed run restores every value bit for bit, so it continues to the same weights as
 * an uninterrupted one.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "mood/safetensors.h"
#include "train/train_internal.h"

#define VERSION "1"

void mood__train_state_dispose(mood__train_state *st)
{
    mood_free(st->order);
    mood_free(st->flips);
    mood_free(st->losses);
    mood_free(st->lrs);
    st->order = NULL;
    st->flips = NULL;
    st->losses = NULL;
    st->lrs = NULL;
}

static int meta_i64(mood_st_writer *w, const char *key, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return mood_st_writer_set_meta(w, key, buf);
}

static int meta_f64(mood_st_writer *w, const char *key, double v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.17g", v);
    return mood_st_writer_set_meta(w, key, buf);
}

static int write_meta(mood_st_writer *w, const mood__train_fingerprint *fp,
                      const mood__train_state *st)
{
    char seed[32];
    int err;
    snprintf(seed, sizeof seed, "%" PRIu64, fp->seed);
    if ((err = mood_st_writer_set_meta(w, "mood.train.version", VERSION)) != 0 ||
        (err = mood_st_writer_set_meta(w, "mood.train.layout", fp->layout)) != 0 ||
        (err = mood_st_writer_set_meta(w, "mood.train.seed", seed)) != 0 ||
        (err = meta_i64(w, "mood.train.batch", fp->batch)) != 0 ||
        (err = meta_i64(w, "mood.train.accum", fp->accum)) != 0 ||
        (err = meta_i64(w, "mood.train.flip", fp->flip)) != 0 ||
        (err = meta_i64(w, "mood.train.images", (int64_t)fp->n_items)) != 0 ||
        (err = mood_st_writer_set_meta(w, "mood.train.loss", fp->loss)) != 0 ||
        (err = meta_i64(w, "mood.train.step", st->step)) != 0 ||
        (err = meta_i64(w, "mood.train.steps", fp->steps)) != 0 ||
        (err = meta_f64(w, "mood.train.lr", fp->lr)) != 0 ||
        (err = meta_i64(w, "mood.train.schedule", fp->schedule)) != 0 ||
        (err = meta_i64(w, "mood.train.warmup", fp->warmup)) != 0 ||
        (fp->data[0] && (err = mood_st_writer_set_meta(w, "mood.train.data", fp->data)) != 0) ||
        (err = meta_i64(w, "mood.train.epoch", st->epoch)) != 0)
        return err;
    return meta_i64(w, "mood.train.cursor", st->cursor);
}

int mood__checkpoint_save(const char *path, const mood__train_fingerprint *fp,
                          const mood__lora_params *lp, const mood__adamw *opt,
                          const mood__train_state *st)
{
    mood_st_writer *w = NULL;
    int64_t np = (int64_t)lp->n_params, ni = (int64_t)st->n_items, nr = sizeof st->rng,
            ns = st->step;
    int err;
    if ((err = mood_st_writer_new(&w)) != 0)
        return err;
    if ((err = mood_st_writer_add(w, "lora.params", MOOD_DTYPE_F32, 1, &np, lp->params)) != 0 ||
        (err = mood_st_writer_add(w, "adam.m", MOOD_DTYPE_F32, 1, &np, opt->m)) != 0 ||
        (err = mood_st_writer_add(w, "adam.v", MOOD_DTYPE_F32, 1, &np, opt->v)) != 0 ||
        (err = mood_st_writer_add(w, "rng", MOOD_DTYPE_U8, 1, &nr, st->rng)) != 0)
        goto done;
    if (ni > 0 &&
        ((err = mood_st_writer_add(w, "epoch.order", MOOD_DTYPE_I32, 1, &ni, st->order)) != 0 ||
         (err = mood_st_writer_add(w, "epoch.flips", MOOD_DTYPE_U8, 1, &ni, st->flips)) != 0))
        goto done;
    if (ns > 0 && ((err = mood_st_writer_add(w, "loss", MOOD_DTYPE_F32, 1, &ns, st->losses)) != 0 ||
                   (err = mood_st_writer_add(w, "lr", MOOD_DTYPE_F32, 1, &ns, st->lrs)) != 0))
        goto done;
    if ((err = write_meta(w, fp, st)) != 0)
        goto done;
    err = mood_st_writer_write(w, path, NULL, NULL);
done:
    if (err)
        mood_error_prefix("training checkpoint %s", path);
    mood_st_writer_free(w);
    return err;
}

/* ----- loading ---------------------------------------------------------------------------- */

static int get_i64(const mood_st_file *f, const char *key, int64_t *out)
{
    const char *v = mood_st_meta_get(f, key);
    char *end;
    if (!v || !*v)
        return mood_error_set(MOOD_EFORMAT, "%s: not a mood training checkpoint (no %s)",
                              mood_st_path(f), key);
    *out = strtoll(v, &end, 10);
    if (*end)
        return mood_error_set(MOOD_EFORMAT, "%s: bad %s \"%s\"", mood_st_path(f), key, v);
    return 0;
}

int mood__checkpoint_unfinished(const char *path, int64_t *step, int64_t *planned)
{
    mood_st_file *f = NULL;
    int stopped = 0;
    if (!mood_path_exists(path) || mood_st_open(&f, path) != 0) {
        mood_error_clear(); /* not there or not readable: nothing to lose, or check_outputs says */
        return 0;
    }
    if (get_i64(f, "mood.train.step", step) == 0 && get_i64(f, "mood.train.steps", planned) == 0)
        stopped = *step < *planned;
    mood_error_clear();
    mood_st_close(f);
    return stopped;
}

int mood__checkpoint_foreign(const char *path)
{
    mood_st_file *f = NULL;
    int foreign;
    if (!mood_path_exists(path))
        return 0;
    /* a file that cannot be read as safetensors is no checkpoint of ours either */
    foreign = mood_st_open(&f, path) != 0 || !mood_st_meta_get(f, "mood.train.version");
    mood_st_close(f);
    mood_error_clear();
    return foreign;
}

int mood_train_checkpoint_stopped(const char *path, int64_t *step, int64_t *planned)
{
    int64_t s = 0, p = 0;
    int stopped;
    MOOD_ARG_NONNULL(path);
    stopped = mood__checkpoint_unfinished(path, &s, &p);
    if (step)
        *step = s;
    if (planned)
        *planned = p;
    return stopped;
}

/* The file's settings must be this run's. */
static int check_fingerprint(const mood_st_file *f, const mood__train_fingerprint *fp)
{
    const char *path = mood_st_path(f), *layout = mood_st_meta_get(f, "mood.train.layout");
    const char *seed = mood_st_meta_get(f, "mood.train.seed"), *ver, *loss;
    int64_t batch, accum, flip, images;
    char want_seed[32];
    int err;
    ver = mood_st_meta_get(f, "mood.train.version");
    if (!ver || strcmp(ver, VERSION) != 0)
        return mood_error_set(MOOD_EFORMAT, "%s: not a mood training checkpoint of version %s",
                              path, VERSION);
    if ((err = get_i64(f, "mood.train.batch", &batch)) != 0 ||
        (err = get_i64(f, "mood.train.accum", &accum)) != 0 ||
        (err = get_i64(f, "mood.train.flip", &flip)) != 0 ||
        (err = get_i64(f, "mood.train.images", &images)) != 0)
        return err;
    snprintf(want_seed, sizeof want_seed, "%" PRIu64, fp->seed);
    if (!layout || strcmp(layout, fp->layout) != 0)
        return mood_error_set(MOOD_EINVAL,
                              "%s: saved for other LoRA modules (targets, rank, alpha or "
                              "model differ)",
                              path);
    if (!seed || strcmp(seed, want_seed) != 0)
        return mood_error_set(MOOD_EINVAL, "%s: saved with seed %s, this run has %s", path,
                              seed ? seed : "?", want_seed);
    if (batch != fp->batch || accum != fp->accum || flip != fp->flip)
        return mood_error_set(MOOD_EINVAL,
                              "%s: saved with batch %lld, accumulation %lld, flips %lld; this "
                              "run has %d, %d, %d",
                              path, (long long)batch, (long long)accum, (long long)flip, fp->batch,
                              fp->accum, fp->flip);
    if (images != (int64_t)fp->n_items)
        return mood_error_set(MOOD_EINVAL, "%s: saved for %lld images, the board has %zu", path,
                              (long long)images, fp->n_items);
    /* (checkpoints of mood before the key was written are not checked) */
    if ((loss = mood_st_meta_get(f, "mood.train.loss")) != NULL && strcmp(loss, fp->loss) != 0)
        return mood_error_set(MOOD_EINVAL,
                              "%s: the run was trained with %s; this run asks for %s: a resumed "
                              "run keeps the options that shape its loss (give the run's, or "
                              "start a new run)",
                              path, loss, fp->loss);
    return 0;
}

/* The tensor `name` of dtype dt with n elements, or an error naming it. */
static const mood_st_tensor *tensor(const mood_st_file *f, const char *name, mood_dtype dt,
                                    int64_t n, int *err)
{
    const mood_st_tensor *t = mood_st_find(f, name);
    if (!t || t->dtype != dt || mood_st_numel(t) != n) {
        *err = mood_error_set(MOOD_EFORMAT, "%s: tensor %s missing or of the wrong size",
                              mood_st_path(f), name);
        return NULL;
    }
    return t;
}

static int load_arrays(const mood_st_file *f, mood__lora_params *lp, mood__adamw *opt,
                       mood__train_state *st)
{
    const mood_st_tensor *t;
    int err = 0;
    int64_t np = (int64_t)lp->n_params, ni = (int64_t)st->n_items;
    if (!(t = tensor(f, "lora.params", MOOD_DTYPE_F32, np, &err)) ||
        (err = mood_st_to_f32(lp->params, t)) != 0)
        return err;
    if (!(t = tensor(f, "adam.m", MOOD_DTYPE_F32, np, &err)) ||
        (err = mood_st_to_f32(opt->m, t)) != 0)
        return err;
    if (!(t = tensor(f, "adam.v", MOOD_DTYPE_F32, np, &err)) ||
        (err = mood_st_to_f32(opt->v, t)) != 0)
        return err;
    if (!(t = tensor(f, "rng", MOOD_DTYPE_U8, (int64_t)sizeof st->rng, &err)))
        return err;
    memcpy(st->rng, t->data, sizeof st->rng);
    if (ni > 0) {
        const uint8_t *p;
        if (!(t = tensor(f, "epoch.order", MOOD_DTYPE_I32, ni, &err)))
            return err;
        p = t->data;
        for (int64_t i = 0; i < ni; i++, p += 4) {
            uint32_t u =
                (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            st->order[i] = (int32_t)u;
            if (st->order[i] < 0 || st->order[i] >= ni)
                return mood_error_set(MOOD_EFORMAT, "%s: bad epoch.order", mood_st_path(f));
        }
        if (!(t = tensor(f, "epoch.flips", MOOD_DTYPE_U8, ni, &err)))
            return err;
        memcpy(st->flips, t->data, (size_t)ni);
    }
    if (st->step > 0) {
        if (!(t = tensor(f, "loss", MOOD_DTYPE_F32, st->step, &err)))
            return err;
        err = mood_st_to_f32(st->losses, t);
    }
    if (!err && st->step > 0 && mood_st_find(f, "lr")) {
        if (!(t = tensor(f, "lr", MOOD_DTYPE_F32, st->step, &err)))
            return err;
        err = mood_st_to_f32(st->lrs, t);
    } else {
        for (int64_t i = 0; i < st->step; i++) /* an earlier version's: the trainer fills them */
            st->lrs[i] = NAN;
    }
    return err;
}

/* Tells of each setting a resumed run changes (the loss record keeps what each step ran at). */
static void note_changes(const mood_st_file *f, const mood__train_fingerprint *fp)
{
    static const char *const schedules[] = {"constant", "cosine", "linear"};
    const char *lr = mood_st_meta_get(f, "mood.train.lr"), *data;
    const char *sched = mood_st_meta_get(f, "mood.train.schedule");
    const char *warmup = mood_st_meta_get(f, "mood.train.warmup");
    if (lr && strtod(lr, NULL) != fp->lr)
        mood_log(MOOD_LOG_WARN, "resuming with learning rate %g; the checkpoint's run had %g",
                 fp->lr, strtod(lr, NULL));
    if (sched && atoi(sched) != fp->schedule && atoi(sched) >= 0 && atoi(sched) < 3 &&
        fp->schedule >= 0 && fp->schedule < 3)
        mood_log(MOOD_LOG_WARN, "resuming with the %s schedule; the checkpoint's run had %s",
                 schedules[fp->schedule], schedules[atoi(sched)]);
    if (warmup && atoll(warmup) != fp->warmup)
        mood_log(MOOD_LOG_WARN, "resuming with %lld warmup steps; the checkpoint's run had %s",
                 (long long)fp->warmup, warmup);
    if ((data = mood_st_meta_get(f, "mood.train.data")) && fp->data[0] && strcmp(data, fp->data))
        mood_log(MOOD_LOG_WARN, "resuming on other pictures, captions or resolution than the "
                                "checkpoint's run (the board changed since)");
}

int mood__checkpoint_load(const char *path, const mood__train_fingerprint *fp,
                          mood__lora_params *lp, mood__adamw *opt, mood__train_state *st)
{
    mood_st_file *f = NULL;
    int err;
    memset(st, 0, sizeof *st);
    if ((err = mood_st_open(&f, path)) != 0)
        return err;
    if ((err = check_fingerprint(f, fp)) != 0 || (err = get_i64(f, "mood.train.step", &st->step)) ||
        (err = get_i64(f, "mood.train.epoch", &st->epoch)) != 0 ||
        (err = get_i64(f, "mood.train.cursor", &st->cursor)) != 0)
        goto done;
    st->n_items = fp->n_items;
    if (st->step < 0 || st->step > ((int64_t)1 << 40) || st->cursor < 0 ||
        st->cursor > (int64_t)st->n_items || st->epoch < 0) {
        err = mood_error_set(MOOD_EFORMAT, "%s: bad step, epoch or cursor", path);
        goto done;
    }
    st->order = mood_calloc(st->n_items ? st->n_items : 1, sizeof *st->order);
    st->flips = mood_calloc(st->n_items ? st->n_items : 1, 1);
    st->losses = mood_calloc(st->step ? (size_t)st->step : 1, sizeof *st->losses);
    st->lrs = mood_calloc(st->step ? (size_t)st->step : 1, sizeof *st->lrs);
    if (!st->order || !st->flips || !st->losses || !st->lrs) {
        err = mood_error_nomem();
        goto done;
    }
    if ((err = load_arrays(f, lp, opt, st)) == 0)
        note_changes(f, fp);
done:
    mood_st_close(f);
    if (err)
        mood__train_state_dispose(st);
    return err;
}
