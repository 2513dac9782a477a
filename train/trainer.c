/*
 * trainer.c: the training loop (llm.c's train loop, with diffusers' / kohya's LoRA recipe):
 *
 *   for each optimizer step:
 *       zero the gradients
 *       for each of `accum` micro-batches:
 *           next batch of the epoch (a new epoch draws its image order and flips)
 *           draw noise (+ offset) and timesteps; noisy latents, target, min-SNR weights
 *           the model's loss and gradients (mood_train_loss_fn), scaled by 1 / accum
 *       stop on a NaN / infinite loss or gradient (the last checkpoint stays as it was)
 *       clip by global norm; AdamW with lr = base * schedule(step)
 *       record the loss, report progress, checkpoint every N steps
 *   a stop request (signal, callback) saves a checkpoint at the step boundary and returns
 *   MOOD_ECANCELLED; --resume restores everything, so the run ends with the same bits.
 *
 * Epochs: torch.randperm(n) orders the images (then torch.rand(n) < 0.5 picks the flipped ones).
 * A micro-batch takes up to `batch` consecutive images of that order that share one latent size;
 * with buckets the order is first regrouped by size (sizes in order of first appearance), so
 * batches never mix sizes. The last batch of an epoch (or of a bucket) may be smaller, as a
 * DataLoader without drop_last gives it. Without buckets this is exactly a shuffled DataLoader.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "mood/tokenizer.h"
#include "train/train_internal.h"

static volatile sig_atomic_t stop_requested, stop_signal;

void mood_train_request_stop(void)
{
    stop_requested = 1;
}

int mood_train_stop_signal(void)
{
    return stop_signal;
}

int mood__train_stop_requested(void)
{
    return stop_requested != 0;
}

static void on_signal(int sig)
{
    stop_signal = sig;
    stop_requested = 1;
}

typedef struct loop {
    mood__trainer *t;
    const mood_train_options *o;
    const mood__train_data *d;
    mood__adamw opt;
    mood__train_state st;
    mood__train_fingerprint fp;
    int32_t *seq;     /* this epoch's order regrouped by latent size */
    uint8_t *used;    /* scratch for regrouping */
    size_t max_elems; /* largest C x h x w */
    float *x0, *noise, *noisy, *target, *tmp, *tf, *w, *ctx;
    float *pooled, *tids; /* SDXL: B x pooled_dim, B x 6 */
    int64_t *ts;
    int32_t *ids, *ids2; /* B x 77: text encoder 1's, SDXL's text encoder 2's */
    double loss_avg;
    struct timespec t0;
    int64_t first_step; /* step this session started from */
    double hook_s;      /* time after_step spent working (sample previews), kept out of it/s */
    int hook_rounds;    /* calls of after_step that worked */
} loop;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ----- setup ------------------------------------------------------------------------------ */

/* A bad option: MOOD_EINVAL naming it, its value and what it takes. */
#define BAD_OPTION(...) mood_error_set(MOOD_EINVAL, "training option " __VA_ARGS__)

int mood__train_options_check(const mood_train_options *o)
{
    if (o->steps < 1)
        return BAD_OPTION("steps = %lld: takes 1 or more", (long long)o->steps);
    if (o->batch < 1 || o->batch > 4096)
        return BAD_OPTION("batch = %d: takes 1 to 4096", o->batch);
    if (o->accum < 1 || o->accum > 4096)
        return BAD_OPTION("accum = %d: takes 1 to 4096", o->accum);
    if (!o->full && (o->rank < 1 || o->rank > 4096))
        return BAD_OPTION("rank = %d: takes 1 to 4096", o->rank);
    if (!o->full && !(o->alpha > 0 && isfinite(o->alpha)))
        return BAD_OPTION("alpha = %g: takes a number > 0", o->alpha);
    if ((unsigned)o->targets > MOOD_TRAIN_STYLE_BLOCKS)
        return BAD_OPTION("targets = %d: takes a mood_train_targets (0 to %d)", (int)o->targets,
                          (int)MOOD_TRAIN_STYLE_BLOCKS);
    if (!(o->lr > 0 && isfinite(o->lr)))
        return BAD_OPTION("lr = %g: takes a number > 0", o->lr);
    if (!(o->te_lr >= 0 && isfinite(o->te_lr)))
        return BAD_OPTION("te_lr = %g: takes a number >= 0 (0: lr)", o->te_lr);
    if ((unsigned)o->lr_schedule > MOOD_LR_LINEAR)
        return BAD_OPTION("lr_schedule = %d: takes a mood_lr_schedule (0 to %d)",
                          (int)o->lr_schedule, (int)MOOD_LR_LINEAR);
    if (o->warmup < 0)
        return BAD_OPTION("warmup = %lld: takes 0 or more steps", (long long)o->warmup);
    if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1))
        return BAD_OPTION("beta1, beta2 = %g, %g: take numbers from 0 up to (not including) 1",
                          o->beta1, o->beta2);
    if (!(o->eps >= 0) || !(o->weight_decay >= 0))
        return BAD_OPTION("eps, weight_decay = %g, %g: take numbers >= 0", o->eps, o->weight_decay);
    if (!(o->max_grad_norm >= 0))
        return BAD_OPTION("max_grad_norm = %g: takes a number >= 0 (0: no clipping)",
                          o->max_grad_norm);
    if (isnan(o->min_snr_gamma))
        return BAD_OPTION("min_snr_gamma = %g: takes a number >= 0 (0: off; < 0: by prediction)",
                          o->min_snr_gamma);
    if (!isfinite(o->noise_offset))
        return BAD_OPTION("noise_offset = %g: takes a finite number (0: off)", o->noise_offset);
    if (!(o->ip_noise_gamma >= 0 && o->ip_noise_gamma < 1))
        return BAD_OPTION("ip_noise_gamma = %g: takes a number from 0 up to (not including) 1",
                          o->ip_noise_gamma);
    if (o->min_timestep < 0 || o->max_timestep < 0 ||
        (o->max_timestep > 0 && o->max_timestep <= o->min_timestep))
        return BAD_OPTION("min_timestep, max_timestep = %d, %d: the timestep range [%d, %d) is "
                          "empty or negative: they take 0 <= min < max (max 0: the schedule's end)",
                          o->min_timestep, o->max_timestep, o->min_timestep, o->max_timestep);
    if (!(o->caption_dropout >= 0 && o->caption_dropout < 1))
        return BAD_OPTION("caption_dropout = %g: takes a number from 0 up to (not including) 1",
                          o->caption_dropout);
    if (o->clip_skip < 1)
        return BAD_OPTION("clip_skip = %d: takes 1 or more (A1111 numbering)", o->clip_skip);
    if (o->prediction < -1 || o->prediction > MOOD_PRED_SAMPLE)
        return BAD_OPTION("prediction = %d: takes -1 (the model's) or a mood_prediction (0 to %d)",
                          o->prediction, (int)MOOD_PRED_SAMPLE);
    if (o->save_dtype != MOOD_DTYPE_F16 && o->save_dtype != MOOD_DTYPE_F32 &&
        o->save_dtype != MOOD_DTYPE_BF16)
        return BAD_OPTION("save_dtype = %d: takes MOOD_DTYPE_F16, BF16 or F32", (int)o->save_dtype);
    if (o->checkpoint_every < 0)
        return BAD_OPTION("checkpoint_every = %d: takes 0 or more steps (0: only when stopped)",
                          o->checkpoint_every);
    if (o->resume && !o->checkpoint)
        return BAD_OPTION("resume: needs the checkpoint's path in `checkpoint`");
    return 0;
}

static int check(const mood__trainer *t)
{
    const mood_train_options *o = t->o;
    const mood__train_data *d = t->data;
    int err;
    if (!t->loss || !t->lp || !d || d->n == 0 || !t->sched || !t->g)
        return mood_error_set(MOOD_EINVAL, "trainer: missing model, data or loss");
    if ((err = mood__train_options_check(o)) != 0)
        return err;
    if (!(o->min_snr_gamma >= 0)) /* mood_train_run resolves the default by the prediction */
        return BAD_OPTION("min_snr_gamma = %g: the trainer takes a number >= 0 (0: off)",
                          o->min_snr_gamma);
    if (o->max_timestep > t->sched->T || mood__train_t_max(o, t->sched->T) <= o->min_timestep)
        return mood_error_set(MOOD_EINVAL,
                              "timestep range [%d, %d) is empty or outside the schedule's 0 to %d",
                              o->min_timestep, mood__train_t_max(o, t->sched->T), t->sched->T);
    return 0;
}

static int alloc_buffers(loop *L)
{
    const mood__train_data *d = L->d;
    size_t B = (size_t)L->o->batch, n = d->n, ctxn = (size_t)d->ctx_len * d->ctx_dim;
    for (size_t i = 0; i < n; i++) {
        size_t e = (size_t)d->C * d->items[i].h * d->items[i].w;
        if (e > L->max_elems)
            L->max_elems = e;
    }
    L->seq = mood_calloc(n, sizeof *L->seq);
    L->used = mood_calloc(n, 1);
    L->x0 = mood_malloc(B * L->max_elems * sizeof(float));
    L->noise = mood_malloc(B * L->max_elems * sizeof(float));
    L->noisy = mood_malloc(B * L->max_elems * sizeof(float));
    L->target = mood_malloc(B * L->max_elems * sizeof(float));
    L->tmp = mood_malloc(B * (size_t)d->C * sizeof(float));
    L->tf = mood_malloc(B * sizeof(float));
    L->w = mood_malloc(B * sizeof(float));
    L->ts = mood_malloc(B * sizeof(int64_t));
    L->ids = mood_malloc(B * MOOD_CLIP_CONTEXT * sizeof(int32_t));
    L->ids2 = mood_malloc(B * MOOD_CLIP_CONTEXT * sizeof(int32_t));
    L->ctx = mood_malloc((B * ctxn > 0 ? B * ctxn : 1) * sizeof(float));
    L->pooled = mood_malloc((B * (size_t)d->pooled_dim + 1) * sizeof(float));
    L->tids = mood_malloc(B * 6 * sizeof(float));
    if (!L->seq || !L->used || !L->x0 || !L->noise || !L->noisy || !L->target || !L->tmp ||
        !L->tf || !L->w || !L->ts || !L->ids || !L->ids2 || !L->ctx || !L->pooled || !L->tids)
        return mood_error_nomem();
    return 0;
}

static void free_buffers(loop *L)
{
    void *p[] = {L->seq, L->used, L->x0,  L->noise, L->noisy, L->target, L->tmp, L->tf,
                 L->w,   L->ts,   L->ids, L->ids2,  L->ctx,   L->pooled, L->tids};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        mood_free(p[i]);
}

/* ----- epochs and batches ----------------------------------------------------------------- */

static int same_size(const mood__train_data *d, int32_t a, int32_t b)
{
    return d->items[a].h == d->items[b].h && d->items[a].w == d->items[b].w;
}

/* seq = order regrouped by latent size, sizes in order of first appearance. */
static void regroup(loop *L)
{
    size_t n = L->d->n, k = 0;
    memset(L->used, 0, n);
    for (size_t i = 0; i < n; i++) {
        if (L->used[i])
            continue;
        for (size_t j = i; j < n; j++) {
            if (!L->used[j] && same_size(L->d, L->st.order[i], L->st.order[j])) {
                L->used[j] = 1;
                L->seq[k++] = L->st.order[j];
            }
        }
    }
}

static int new_epoch(loop *L)
{
    size_t n = L->d->n;
    int err = mood__train_randperm(L->t->g, L->st.order, n);
    if (!err && L->d->flip) {
        float *u = mood_malloc(n * sizeof *u);
        if (!u)
            return mood_error_nomem();
        err = mood_rng_torch_cpu_rand(L->t->g, u, n);
        for (size_t i = 0; !err && i < n; i++)
            L->st.flips[i] = u[i] < 0.5f;
        mood_free(u);
    } else if (!err) {
        memset(L->st.flips, 0, n);
    }
    if (err)
        return err;
    regroup(L);
    L->st.cursor = 0;
    L->st.epoch++;
    return 0;
}

/* The next micro-batch: its items are seq[*first, *first + *k). */
static int next_batch(loop *L, size_t *first, int *k)
{
    const mood__train_data *d = L->d;
    int err;
    if (L->st.cursor >= (int64_t)d->n && (err = new_epoch(L)) != 0)
        return err;
    *first = (size_t)L->st.cursor;
    *k = 1;
    while (*k < L->o->batch && *first + (size_t)*k < d->n &&
           same_size(d, L->seq[*first], L->seq[*first + (size_t)*k]))
        (*k)++;
    L->st.cursor += *k;
    return 0;
}

/* Fills the micro-batch buffers for items seq[first .. first + k). */
static void gather(loop *L, size_t first, int k)
{
    const mood__train_data *d = L->d;
    size_t ctxn = (size_t)d->ctx_len * d->ctx_dim;
    for (int b = 0; b < k; b++) {
        int32_t i = L->seq[first + (size_t)b];
        const mood__train_item *it = &d->items[i];
        size_t e = (size_t)d->C * it->h * it->w;
        int flip = d->flip && L->st.flips[i];
        memcpy(L->x0 + b * e, it->lat[flip], e * sizeof(float));
        memcpy(L->ids + (size_t)b * MOOD_CLIP_CONTEXT, it->ids,
               MOOD_CLIP_CONTEXT * sizeof(int32_t));
        if (it->ids2) /* SDXL */
            memcpy(L->ids2 + (size_t)b * MOOD_CLIP_CONTEXT, it->ids2,
                   MOOD_CLIP_CONTEXT * sizeof(int32_t));
        if (it->context)
            memcpy(L->ctx + b * ctxn, it->context, ctxn * sizeof(float));
        if (it->pooled) /* SDXL */
            memcpy(L->pooled + (size_t)b * d->pooled_dim, it->pooled,
                   (size_t)d->pooled_dim * sizeof(float));
        memcpy(L->tids + (size_t)b * 6, it->time_ids[flip], 6 * sizeof(float));
    }
}

/* ----- one step --------------------------------------------------------------------------- */

static int bad_number(loop *L, const char *what, double v)
{
    const char *ck = L->o->checkpoint;
    if (L->t->checkpoint_step >= 0)
        return mood_error_set(MOOD_EINVAL,
                              "step %lld: the %s is %g; training stopped. The last checkpoint, "
                              "%s (step %lld), is kept: resume from it with a lower learning "
                              "rate (now %g)",
                              (long long)L->st.step + 1, what, v, ck,
                              (long long)L->t->checkpoint_step, L->o->lr);
    return mood_error_set(MOOD_EINVAL,
                          "step %lld: the %s is %g; training stopped (no checkpoint was written "
                          "yet). Try a lower learning rate (now %g)",
                          (long long)L->st.step + 1, what, v, L->o->lr);
}

/* Caption dropout: torch.rand(k) after the timesteps; sample b gets the empty caption (its ids and,
 * with a frozen text encoder, its cached context) when its value is under the rate. */
static int drop_captions(loop *L, int k, int has_context)
{
    const mood__train_data *d = L->d;
    size_t ctxn = (size_t)d->ctx_len * d->ctx_dim;
    int err;
    if (L->o->caption_dropout <= 0)
        return 0;
    if ((err = mood_rng_torch_cpu_rand(L->t->g, L->tmp, (size_t)k)) != 0)
        return err;
    for (int b = 0; b < k; b++) {
        if (L->tmp[b] >= (float)L->o->caption_dropout)
            continue;
        memcpy(L->ids + (size_t)b * MOOD_CLIP_CONTEXT, d->empty_ids,
               MOOD_CLIP_CONTEXT * sizeof(int32_t));
        if (d->empty_ids2) /* SDXL */
            memcpy(L->ids2 + (size_t)b * MOOD_CLIP_CONTEXT, d->empty_ids2,
                   MOOD_CLIP_CONTEXT * sizeof(int32_t));
        if (has_context)
            memcpy(L->ctx + b * ctxn, d->empty_context, ctxn * sizeof(float));
        if (d->empty_pooled) /* SDXL: the empty caption's pooled embedding too */
            memcpy(L->pooled + (size_t)b * d->pooled_dim, d->empty_pooled,
                   (size_t)d->pooled_dim * sizeof(float));
    }
    return 0;
}

static int micro_batch(loop *L, double *loss)
{
    const mood__train_data *d = L->d;
    const mood__trainer *t = L->t;
    size_t first, hw, e;
    int k, err;
    if ((err = next_batch(L, &first, &k)) != 0)
        return err;
    const mood__train_item *it = &d->items[L->seq[first]];
    const float *input_noise = L->noise;
    hw = (size_t)it->h * it->w;
    e = (size_t)d->C * hw;
    gather(L, first, k);
    if ((err = mood__train_draw(t->g, L->noise, L->ts, L->tmp, k, d->C, hw, L->o->noise_offset,
                                L->o->min_timestep, mood__train_t_max(L->o, t->sched->T))) != 0)
        return err;
    if (L->o->ip_noise_gamma != 0) { /* input perturbation: the UNet's input only */
        if ((err = mood__train_perturb(t->g, L->noisy, L->noise, k * e, L->o->ip_noise_gamma)) != 0)
            return err;
        input_noise = L->noisy; /* noised in place below */
    }
    mood__train_add_noise(t->sched, L->noisy, L->x0, input_noise, L->ts, k, e);
    mood__train_target(t->sched, L->target, L->x0, L->noise, L->ts, k, e);
    mood__train_snr_weights(t->sched, L->w, L->ts, k, L->o->min_snr_gamma);
    if ((err = drop_captions(L, k, it->context != NULL)) != 0)
        return err;
    for (int b = 0; b < k; b++)
        L->tf[b] = (float)L->ts[b];
    mood_train_batch batch = {k,
                              d->C,
                              it->h,
                              it->w,
                              L->x0,
                              L->noise,
                              L->noisy,
                              L->tf,
                              L->target,
                              L->w,
                              L->ids,
                              it->context ? L->ctx : NULL,
                              d->ctx_len,
                              d->ctx_dim,
                              1.0f / (float)L->o->accum,
                              L->o->clip_skip,
                              it->pooled ? L->pooled : NULL,
                              d->pooled_dim > 0 ? L->tids : NULL,
                              d->pooled_dim,
                              it->ids2 ? L->ids2 : NULL};
    return t->loss(t->loss_user, &batch, t->lp->mods, t->lp->n, loss);
}

static int step(loop *L)
{
    const mood_train_options *o = L->o;
    mood__lora_params *lp = L->t->lp;
    double loss = 0, norm, lr, f;
    size_t te_end = lp->te_end;
    int err;
    memset(lp->grads, 0, lp->n_params * sizeof *lp->grads);
    for (int a = 0; a < o->accum; a++) {
        double l = 0;
        if ((err = micro_batch(L, &l)) != 0)
            return err;
        if (!isfinite(l))
            return bad_number(L, "loss", l);
        loss += l;
    }
    loss /= o->accum;
    norm = mood__clip_grad_norm(lp->grads, lp->tensor_off, lp->n_tensors, o->max_grad_norm);
    if (!isfinite(norm))
        return bad_number(L, "gradient norm", norm);
    f = mood_lr_factor(o->lr_schedule, L->st.step, o->warmup, o->steps);
    lr = o->lr * f;
    mood__adamw_update(&L->opt, lp->params, lp->grads, 0, te_end,
                       (o->te_lr > 0 ? o->te_lr : o->lr) * f, L->st.step + 1);
    mood__adamw_update(&L->opt, lp->params, lp->grads, te_end, lp->n_params, lr, L->st.step + 1);
    if (lp->full && (err = mood__full_params_sync(lp)) != 0) /* the model runs its own copy */
        return err;
    L->st.losses[L->st.step] = (float)loss;
    L->st.lrs[L->st.step] = (float)lr;
    L->st.step++;
    L->loss_avg = L->st.step == 1 ? loss : 0.9 * L->loss_avg + 0.1 * loss;
    return 0;
}

/* ----- checkpoints and progress ----------------------------------------------------------- */

static int save(loop *L)
{
    int err;
    if (!L->o->checkpoint)
        return 0;
    mood_rng_torch_cpu_get_state(L->t->g, L->st.rng);
    if ((err = mood__checkpoint_save(L->o->checkpoint, &L->fp, L->t->lp, &L->opt, &L->st)) == 0)
        L->t->checkpoint_step = L->st.step;
    return err;
}

/* A checkpoint on the way or at the end is insurance, not the result: one that cannot be written
 * (a full disk) is said, and training goes on to write the LoRA, which is smaller. */
static void save_or_warn(loop *L)
{
    if (save(L) != 0) {
        mood_log(MOOD_LOG_WARN, "step %lld: the training checkpoint was not written: %s",
                 (long long)L->st.step, mood_error_last());
        mood_error_clear();
    }
}

/* Rounds of sample previews still to come after this step (sample.c: at the multiples of
 * sample_every before the last step, and one after it). */
static int64_t rounds_left(const loop *L)
{
    const mood_train_options *o = L->o;
    int64_t every = o->sample_every, later;
    if (every <= 0 || !o->sample)
        return 0;
    later = (o->steps - 1) / every - L->st.step / every;
    return (later > 0 ? later : 0) + 1;
}

static int report(loop *L)
{
    const mood_train_options *o = L->o;
    double el = now_s() - ((double)L->t0.tv_sec + L->t0.tv_nsec * 1e-9) - L->hook_s;
    double done = (double)(L->st.step - L->first_step);
    mood_train_progress p = {"train", L->st.step, o->steps, (int)L->st.epoch, 0, 0, 0, 0, 0};
    if (!o->progress)
        return 0;
    if (L->st.step > 0) {
        p.loss = L->st.losses[L->st.step - 1];
        p.loss_avg = L->loss_avg;
        p.lr = o->lr * mood_lr_factor(o->lr_schedule, L->st.step - 1, o->warmup, o->steps);
    }
    p.it_per_s = el > 0 && done > 0 ? done / el : 0;
    p.eta_s = p.it_per_s > 0 ? (double)(o->steps - L->st.step) / p.it_per_s : 0;
    if (L->hook_rounds > 0) /* what the previews to come will take, at the rate seen so far */
        p.eta_s += (double)rounds_left(L) * L->hook_s / L->hook_rounds;
    return o->progress(&p, o->progress_payload);
}

/* ----- the run ---------------------------------------------------------------------------- */

static int start(loop *L)
{
    mood__trainer *t = L->t;
    int err;
    size_t n = L->d->n;
    mood__lora_params_layout(t->lp, L->fp.layout);
    L->fp.seed = L->o->seed;
    L->fp.batch = L->o->batch;
    L->fp.accum = L->o->accum;
    L->fp.flip = L->d->flip;
    L->fp.n_items = n;
    snprintf(L->fp.loss, sizeof L->fp.loss,
             "--noise-offset %.9g --min-snr %.9g --min-timestep %d --max-timestep %d "
             "--ip-noise-gamma %.9g --caption-dropout %.9g",
             L->o->noise_offset, L->o->min_snr_gamma, L->o->min_timestep,
             mood__train_t_max(L->o, L->t->sched->T), /* 0 is the schedule's end: one value */
             L->o->ip_noise_gamma, L->o->caption_dropout);
    L->fp.steps = L->o->steps;
    L->fp.lr = L->o->lr;
    L->fp.schedule = (int)L->o->lr_schedule;
    L->fp.warmup = L->o->warmup;
    snprintf(L->fp.data, sizeof L->fp.data, "%s", t->data_digest ? t->data_digest : "");
    if ((err = mood__adamw_init(&L->opt, t->lp->n_params, L->o->beta1, L->o->beta2, L->o->eps,
                                L->o->weight_decay)) != 0 ||
        (err = alloc_buffers(L)) != 0)
        return err;
    if (L->o->resume) {
        mood__train_state st;
        if ((err = mood__checkpoint_load(L->o->checkpoint, &L->fp, t->lp, &L->opt, &st)) != 0)
            return err;
        if (st.step > L->o->steps) {
            mood__train_state_dispose(&st);
            return mood_error_set(MOOD_EINVAL,
                                  "%s: the checkpoint is at step %lld, after the "
                                  "%lld steps asked for",
                                  L->o->checkpoint, (long long)st.step, (long long)L->o->steps);
        }
        if ((err = mood_rng_torch_cpu_set_state(t->g, st.rng, sizeof st.rng)) != 0) {
            mood__train_state_dispose(&st);
            return err;
        }
        L->st = st;
        t->checkpoint_step = st.step;
        if (t->lp->full && (err = mood__full_params_sync(t->lp)) != 0) /* the checkpoint's */
            return err;
        if (L->st.epoch > 0)
            regroup(L);
    } else {
        L->st.n_items = n;
        L->st.cursor = (int64_t)n; /* the first batch starts an epoch */
        L->st.order = mood_calloc(n, sizeof *L->st.order);
        L->st.flips = mood_calloc(n, 1);
        L->st.losses = NULL;
        L->st.lrs = NULL;
        if (!L->st.order || !L->st.flips)
            return mood_error_nomem();
    }
    /* room for every step's loss and learning rate */
    float *grown = mood_realloc(L->st.losses, (size_t)L->o->steps * sizeof *grown);
    if (!grown)
        return mood_error_nomem();
    L->st.losses = grown;
    if (!(grown = mood_realloc(L->st.lrs, (size_t)L->o->steps * sizeof *grown)))
        return mood_error_nomem();
    L->st.lrs = grown;
    for (int64_t i = 0; i < L->st.step; i++) /* a checkpoint of an earlier version has none */
        if (isnan(L->st.lrs[i]))
            L->st.lrs[i] =
                (float)(L->o->lr * mood_lr_factor(L->o->lr_schedule, i, L->o->warmup, L->o->steps));
    L->first_step = L->st.step;
    if (L->st.step > 0)
        L->loss_avg = L->st.losses[L->st.step - 1];
    return 0;
}

/* The after_step hook (sample previews); its working time is kept apart from the steps'. */
static int after_step(loop *L)
{
    double t0 = now_s();
    int r = L->t->after_step ? L->t->after_step(L->t->after_user, L->st.step) : 0;
    if (r > 0) {
        L->hook_s += now_s() - t0;
        L->hook_rounds++;
    }
    return r < 0 ? r : 0;
}

static int run_steps(loop *L)
{
    const mood_train_options *o = L->o;
    int err = 0;
    clock_gettime(CLOCK_MONOTONIC, &L->t0);
    while (!err && L->st.step < o->steps) {
        if (stop_requested) {
            err = save(L);
            return err ? err
                       : mood_error_set(MOOD_ECANCELLED, "training stopped at step %lld",
                                        (long long)L->st.step);
        }
        if ((err = step(L)) != 0)
            break;
        if (report(L) != 0) {
            err = save(L);
            return err ? err
                       : mood_error_set(MOOD_ECANCELLED, "training cancelled at step %lld",
                                        (long long)L->st.step);
        }
        if ((err = after_step(L)) != 0) { /* kept: a checkpoint of this step */
            int failed = err;
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mood_error_last());
            err = save(L);
            return err ? err : mood_error_set(failed, "%s", msg);
        }
        if (o->checkpoint_every > 0 && L->st.step % o->checkpoint_every == 0 &&
            L->st.step < o->steps)
            save_or_warn(L);
    }
    if (!err)
        save_or_warn(L);
    return err;
}

int mood__trainer_run(mood__trainer *t)
{
    loop L;
    struct sigaction sa, old_int, old_term, old_hup;
    int err;
    memset(&L, 0, sizeof L);
    L.t = t;
    L.o = t->o;
    L.d = t->data;
    t->losses = NULL;
    t->lrs = NULL;
    t->n_losses = 0;
    t->checkpoint_step = -1;
    if ((err = check(t)) != 0)
        return err;
    stop_requested = stop_signal = 0;
    if (L.o->handle_signals) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        sigaction(SIGHUP, &sa, &old_hup); /* a closed terminal or ssh session, as Ctrl-C */
    }
    if ((err = start(&L)) == 0)
        err = run_steps(&L);
    if (L.o->handle_signals) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        sigaction(SIGHUP, &old_hup, NULL);
    }
    t->losses = L.st.losses;
    t->lrs = L.st.lrs;
    t->n_losses = L.st.step;
    L.st.losses = NULL;
    L.st.lrs = NULL;
    mood__train_state_dispose(&L.st);
    mood__adamw_dispose(&L.opt);
    free_buffers(&L);
    return err;
}
