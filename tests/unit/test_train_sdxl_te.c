/*
 * test_train_sdxl_te.c: one SDXL training step with the text encoders' LoRA (mood train --te on
 * an SDXL base) against torch autograd (tools/make_fixtures_train_sdxl_te.py,
 * tests/fixtures/train_sdxl_te/): the modules mood makes for --te --targets attn+ff on the tiny
 * SDXL folder (text encoder 1's layers up to the penultimate, all of text encoder 2's, the UNet's
 * attn+ff; kohya's names and order), set to the fixture's random factors, then mood's loss
 * function (train/unet_loss.c) on the fixture's batch: both encoders on their tapes, the UNet,
 * and the gradient back along both roads — the context's halves to each encoder's penultimate
 * layer, text_embeds' through the UNet's add_embedding, the text projection and text encoder 2's
 * pooled end token. The loss and every factor's gradient must match torch's.
 *
 * Tolerances: loss 1e-5 relative (float32 both sides; measured 9.0e-8). Gradients 2e-4 of each
 * tensor's largest value (measured worst, 1 and 2 threads: te1 2.0e-6, te2 8.4e-6, unet 3.2e-5,
 * float32 summation order). Cutting the pooled road moves text encoder 2's gradients by up to
 * 108% (its last layer's get none): the test checks from the fixture that this is far beyond the
 * tolerance, and it fails when mood's pooled-road gradient is dropped (checked by passing no
 * text_embeds gradient in unet_loss.c: te2 off by 1.08).
 * With --cuda the step runs again with the UNet on the GPU (main).
 */
#include "harness.h"

#include "engine/model_impl.h"
#include "mood/gen.h"
#include "mood/safetensors.h"
#include "mood/train.h"
#include "train/train_internal.h"

#define LOSS_RTOL 1e-5
#define GRAD_RTOL 2e-4

static int use_cuda; /* main: --cuda */

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* A fixture tensor as floats (any float dtype; I32 converted), n elements; NULL if absent. */
static float *ref_f32(mood_st_file *f, const char *name, size_t *n)
{
    const mood_st_tensor *t = mood_st_find(f, name);
    float *p;
    MOOD_CHECK_MSG(t != NULL, "fixture tensor %s missing", name);
    if (!t)
        return NULL;
    *n = (size_t)mood_st_numel(t);
    p = malloc(*n * sizeof *p + 1);
    if (t->dtype == MOOD_DTYPE_I32) {
        for (size_t i = 0; i < *n; i++) {
            int32_t v;
            memcpy(&v, (const char *)t->data + 4 * i, 4);
            p[i] = (float)v;
        }
    } else if (t->dtype == MOOD_DTYPE_F64) {
        for (size_t i = 0; i < *n; i++) {
            double v;
            memcpy(&v, (const char *)t->data + 8 * i, 8);
            p[i] = (float)v;
        }
    } else {
        MOOD_CHECK_OK(mood_st_to_f32(p, t));
    }
    return p;
}

static int32_t *ref_i32(mood_st_file *f, const char *name)
{
    size_t n = 0;
    float *v = ref_f32(f, name, &n);
    int32_t *p = v ? malloc(n * sizeof *p) : NULL;
    for (size_t i = 0; p && i < n; i++)
        p[i] = (int32_t)v[i];
    free(v);
    return p;
}

/* The modules mood makes must be the fixture's, in its order, with its shapes. */
static int check_modules(const mood__lora_params *lp, const cJSON *c)
{
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(c, "modules");
    int n = cJSON_GetArraySize(mods), bad = 0, n1 = 0, n2 = 0;
    MOOD_CHECK_MSG((size_t)n == lp->n, "mood made %zu modules, the fixture %d", lp->n, n);
    for (int i = 0; i < n && (size_t)i < lp->n; i++) {
        const cJSON *e = cJSON_GetArrayItem(mods, i);
        const char *name = cJSON_GetArrayItem(e, 0)->valuestring;
        const mood_train_module *md = &lp->mods[i];
        int same = strcmp(md->kohya, name) == 0 &&
                   md->out == (int64_t)cJSON_GetArrayItem(e, 1)->valuedouble &&
                   md->in == (int64_t)cJSON_GetArrayItem(e, 2)->valuedouble;
        MOOD_CHECK_MSG(same || bad, "module %d: mood %s (%lld x %lld), torch %s", i, md->kohya,
                       (long long)md->out, (long long)md->in, name);
        bad += !same;
        n1 += md->part == MOOD_PART_TE1, n2 += md->part == MOOD_PART_TE2;
    }
    MOOD_CHECK_MSG(n1 == (int)jnum(c, "te1_modules") && n2 == (int)jnum(c, "te2_modules"),
                   "%d text encoder 1 and %d text encoder 2 modules", n1, n2);
    return bad == 0 && (size_t)n == lp->n;
}

/* Per tensor, max |got - want| / max |want|; the worst of each part into worst[part]. */
static void grad_errors(const mood__lora_params *lp, const float *got, const float *want,
                        double worst[3], const char *names[3])
{
    for (size_t t = 0; t < lp->n_tensors; t++) {
        size_t a = lp->tensor_off[t], n = lp->tensor_off[t + 1] - a;
        const mood_train_module *md = &lp->mods[t / 2];
        double rel = harness_rel_diff(got + a, want + a, n, 1e-30);
        int p = md->part == MOOD_PART_TE1 ? 0 : md->part == MOOD_PART_TE2 ? 1 : 2;
        if (!(rel <= worst[p])) /* NaN too */
            worst[p] = rel, names[p] = md->kohya;
    }
}

typedef struct step_case {
    mood_model *m;
    mood__lora_params *lp;
    mood_st_file *ref;
    float *noisy, *target, *time_ids, *grads;
    int32_t *ids, *ids2;
    float t[2], w[2];
    mood_train_batch b;
} step_case;

/* Model, modules with the fixture's factors attached, and the batch. 0 when ready. */
static int setup(step_case *s, const cJSON *c)
{
    mood_model_options mo;
    size_t n = 0;
    float *f;
    memset(s, 0, sizeof *s);
    if (mood_st_open(&s->ref, fixture("train_sdxl_te/ref.safetensors")) != 0) {
        MOOD_CHECK_MSG(0, "train_sdxl_te fixture missing: %s", mood_error_last());
        return -1;
    }
    mood_model_options_init(&mo);
    if (use_cuda) /* the UNet's forward and backward on GPU 0, in fp32 */
        mo.cuda_device = 0, mo.cuda_fp32 = 1;
    MOOD_CHECK_OK(mood_model_open(&s->m, fixture("sdxl/tiny-sdxl"), &mo));
    if (!s->m)
        return -1;
    MOOD_CHECK_OK(mood__lora_params_for_model(
        &s->lp, s->m, MOOD_TRAIN_ATTN_FF, (int)jnum(c, "te1_layers"), (int)jnum(c, "te2_layers"),
        (int)jnum(c, "rank"), jnum(c, "alpha")));
    if (!s->lp || !check_modules(s->lp, c))
        return -1;
    f = ref_f32(s->ref, "factors", &n);
    MOOD_CHECK_MSG(f && n == s->lp->n_params, "%zu factors in the fixture, %zu in mood", n,
                   s->lp->n_params);
    if (!f || n != s->lp->n_params) {
        free(f);
        return -1;
    }
    memcpy(s->lp->params, f, n * sizeof *f);
    free(f);
    MOOD_CHECK_OK(mood__lora_params_attach(s->lp, s->m));
    s->noisy = ref_f32(s->ref, "noisy", &n);
    s->target = ref_f32(s->ref, "target", &n);
    s->time_ids = ref_f32(s->ref, "time_ids", &n);
    s->ids = ref_i32(s->ref, "ids1");
    s->ids2 = ref_i32(s->ref, "ids2");
    s->grads = ref_f32(s->ref, "grads", &n);
    if (!s->noisy || !s->target || !s->time_ids || !s->ids || !s->ids2 || !s->grads ||
        n != s->lp->n_params)
        return -1;
    for (int i = 0; i < 2; i++) {
        s->t[i] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "timesteps"), i)->valuedouble;
        s->w[i] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "weights"), i)->valuedouble;
    }
    s->b = (mood_train_batch){.B = 2,
                              .C = 4,
                              .h = (int)jnum(c, "size"),
                              .w = (int)jnum(c, "size"),
                              .noisy = s->noisy,
                              .timesteps = s->t,
                              .target = s->target,
                              .weights = s->w,
                              .ids = s->ids,
                              .ctx_len = 77,
                              .ctx_dim = mood__context_width(s->m),
                              .grad_scale = (float)jnum(c, "grad_scale"),
                              .clip_skip = 1,
                              .time_ids = s->time_ids,
                              .pooled_dim = mood__pooled_width(s->m),
                              .ids2 = s->ids2};
    return 0;
}

static void dispose(step_case *s)
{
    if (s->m && s->lp && mood_unet_set_side_paths(s->m->unet, NULL, 0) == 0 &&
        mood_clip_set_side_paths(s->m->clip, NULL, 0) == 0)
        MOOD_CHECK_OK(mood_clip_set_side_paths(s->m->clip2, NULL, 0));
    mood__lora_params_free(s->lp);
    mood_model_free(s->m);
    mood_st_close(s->ref);
    free(s->noisy), free(s->target), free(s->time_ids), free(s->grads);
    free(s->ids), free(s->ids2);
}

/* The pooled road matters in the reference by far more than the tolerance. */
static void check_pooled_road(const step_case *s)
{
    size_t n = 0, t0 = 0, a, b = s->lp->te_end; /* text encoder 2's: params [a, b) */
    float *cut = ref_f32(s->ref, "grads_nopool_te2", &n);
    double moved = 0;
    while (t0 < s->lp->n && s->lp->mods[t0].part != MOOD_PART_TE2)
        t0++;
    a = s->lp->tensor_off[2 * t0];
    MOOD_CHECK_MSG(cut && n == b - a, "%zu cut-road gradients, %zu text encoder 2 ones", n, b - a);
    for (size_t t = 2 * t0; cut && n == b - a && t < 2 * s->lp->n_te; t++) {
        size_t o = s->lp->tensor_off[t], k = s->lp->tensor_off[t + 1] - o;
        double rel = harness_rel_diff(cut + (o - a), s->grads + o, k, 1e-30);
        moved = rel > moved ? rel : moved;
    }
    MOOD_CHECK_MSG(moved > 100 * GRAD_RTOL,
                   "cutting the pooled road moves text encoder 2's gradients by only %.3g", moved);
    printf("     without the pooled road torch's text encoder 2 gradients move by up to %.3g\n",
           moved);
    free(cut);
}

static void test_step_matches_torch(void)
{
    cJSON *c = load_json(fixture("train_sdxl_te/case.json"));
    step_case s;
    double loss = 0, worst[3] = {0, 0, 0};
    const char *names[3] = {"", "", ""};
    size_t n = 0;
    float *want_loss;
    if (!c || setup(&s, c) != 0) {
        MOOD_CHECK_MSG(c != NULL, "train_sdxl_te/case.json missing");
        if (c)
            dispose(&s);
        cJSON_Delete(c);
        return;
    }
    want_loss = ref_f32(s.ref, "loss", &n);
    memset(s.lp->grads, 0, s.lp->n_params * sizeof *s.lp->grads);
    MOOD_CHECK_OK(mood__train_model_loss(s.m, &s.b, s.lp->mods, s.lp->n, &loss));
    if (want_loss) {
        double rel = fabs(loss - want_loss[0]) / fabs(want_loss[0]);
        MOOD_CHECK_MSG(rel <= LOSS_RTOL, "loss %.8g, torch %.8g (rel %.3g)", loss, want_loss[0],
                       rel);
        printf("     loss: mood %.8f torch %.8f rel %.2e\n", loss, want_loss[0], rel);
    }
    grad_errors(s.lp, s.lp->grads, s.grads, worst, names);
    printf("     gradients, worst tensor vs torch (relative to its largest value):\n"
           "       te1 %.2e (%s)\n       te2 %.2e (%s)\n       unet %.2e (%s)\n",
           worst[0], names[0], worst[1], names[1], worst[2], names[2]);
    for (int p = 0; p < 3; p++)
        MOOD_CHECK_MSG(worst[p] <= GRAD_RTOL, "%s: gradient off by %.3g", names[p], worst[p]);
    check_pooled_road(&s);
    /* gradients accumulate: a second call adds the same again */
    MOOD_CHECK_OK(mood__train_model_loss(s.m, &s.b, s.lp->mods, s.lp->n, &loss));
    for (size_t i = 0; i < s.lp->n_params; i++)
        s.lp->grads[i] *= 0.5f;
    worst[0] = worst[1] = worst[2] = 0;
    grad_errors(s.lp, s.lp->grads, s.grads, worst, names);
    MOOD_CHECK_MSG(worst[0] <= GRAD_RTOL && worst[1] <= GRAD_RTOL && worst[2] <= GRAD_RTOL,
                   "accumulated gradients off by %.3g, %.3g, %.3g", worst[0], worst[1], worst[2]);
    free(want_loss);
    dispose(&s);
    cJSON_Delete(c);
}

/* ----- the engine calls the step adds ----------------------------------------------------- */

/* Text encoder 2 on a tape with its pooled output gives mood_clip_forward's values bit for bit;
 * the new calls refuse what they cannot do. */
static void test_pooled_api(void)
{
    mood_model *m = NULL, *sd = NULL;
    mood_clip_tape *tape = NULL;
    mood_unet_tape *ut = NULL;
    int32_t ids[2 * 77];
    float h1[2 * 77 * 6], p1[2 * 6], h2[2 * 77 * 6], p2[2 * 6], d[2 * 8] = {1, 2, 3};
    MOOD_CHECK_OK(mood_model_open(&m, fixture("sdxl/tiny-sdxl"), NULL));
    MOOD_CHECK_OK(mood_model_open(&sd, fixture("pipeline/tiny-sd"), NULL));
    MOOD_CHECK_OK(mood_clip_tape_new(&tape));
    if (!m || !sd || !tape)
        goto done;
    for (int i = 0; i < 2 * 77; i++) /* a start token, words, the end token at 5 + b, 0s */
        ids[i] = i % 77 == 0            ? 49406
                 : i % 77 < 5 + i / 77  ? 300 + 7 * i
                 : i % 77 == 5 + i / 77 ? 49407
                                        : 0;
    MOOD_CHECK_OK(mood_clip_forward(m->clip2, ids, 2, 77, 2, 0, h1, p1));
    MOOD_CHECK_OK(mood_clip_forward_train_ex(m->clip2, tape, ids, 2, 77, 2, 0, h2, p2));
    MOOD_CHECK(memcmp(h1, h2, sizeof h1) == 0 && memcmp(p1, p2, sizeof p1) == 0);
    MOOD_CHECK_OK(mood_clip_backward_ex(m->clip2, tape, NULL, p1, NULL, 0, NULL));
    MOOD_CHECK(mood_clip_backward_ex(m->clip2, tape, NULL, NULL, NULL, 0, NULL) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_clip_project_backward(m->clip2, d, 2, p1));
    MOOD_CHECK(mood_clip_project_backward(m->clip, d, 2, p1) == MOOD_EINVAL); /* no projection */
    MOOD_CHECK_OK(mood_clip_forward_train(m->clip2, tape, ids, 2, 77, 2, 0, h2));
    MOOD_CHECK(mood_clip_backward_ex(m->clip2, tape, h1, p1, NULL, 0, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "no pooled output") != NULL);
    /* a text_embeds gradient needs SDXL's added embedding */
    MOOD_CHECK_OK(mood_unet_tape_new(&ut, 0));
    {
        const mood_unet_config *c = mood_unet_get_config(sd->unet);
        size_t nx = (size_t)c->in_channels * 8 * 8, nc = (size_t)77 * c->cross_attention_dim;
        float *x = calloc(nx, sizeof *x), *ctx = calloc(nc, sizeof *ctx), t = 10;
        float *y = calloc(nx, sizeof *y), dt[8];
        MOOD_CHECK_OK(
            mood_unet_forward_train(sd->unet, ut, y, x, &t, ctx, 1, 8, 8, 77, NULL, NULL));
        MOOD_CHECK(mood_unet_backward_cond(sd->unet, ut, y, NULL, 0, NULL, dt, NULL) ==
                   MOOD_EINVAL);
        free(x), free(ctx), free(y);
    }
done:
    mood_unet_tape_free(ut);
    mood_clip_tape_free(tape);
    mood_model_free(m);
    mood_model_free(sd);
}

/* ----- what the trainer hands the loss with --te on SDXL ------------------------------------ */

typedef struct seen {
    int calls, bad;
    char why[200];
} seen;

static void bad(seen *s, const char *why)
{
    if (!s->bad++)
        snprintf(s->why, sizeof s->why, "%s", why);
}

/* No cached conditioning, both encoders' ids (tokenizer_2's padding: 0 after the end token),
 * the size ids; text encoder 1's modules, then 2's, then the UNet's. */
static int record_loss(void *user, const mood_train_batch *b, mood_train_module *mods, size_t n,
                       double *loss_out)
{
    seen *s = user;
    size_t k = 0;
    *loss_out = 1.0;
    s->calls++;
    if (b->context || b->text_embeds)
        bad(s, "cached conditioning with --te");
    if (!b->ids || !b->ids2 || !b->time_ids || b->pooled_dim <= 0)
        bad(s, "missing ids, ids2 or time ids");
    for (int i = 0; b->ids && b->ids2 && i < b->B; i++) {
        const int32_t *a = b->ids + 77 * i, *c = b->ids2 + 77 * i;
        int end = 0;
        while (end < 77 && a[end] != MOOD_CLIP_END)
            end++;
        for (int j = 0; j < 77; j++)
            if (c[j] != (j <= end ? a[j] : 0))
                bad(s, "ids2 are not ids1 with 0 after the end token");
    }
    while (k < n && mods[k].part == MOOD_PART_TE1)
        k++;
    if (k == 0 || k == n || mods[k].part != MOOD_PART_TE2 ||
        strncmp(mods[0].kohya, "lora_te1_", 9) || strncmp(mods[k].kohya, "lora_te2_", 9))
        bad(s, "modules not text encoder 1's, then 2's");
    return 0;
}

static void test_trainer_batches(void)
{
    mood_train_options o;
    const char *board[1] = {fixture("train_sdxl/board")};
    seen s;
    memset(&s, 0, sizeof s);
    mood_train_options_init(&o);
    o.model = fixture("sdxl/tiny-sdxl");
    o.board = board;
    o.n_board = 1;
    o.board_opts.resolution = 64;
    o.output = scratch_path("te.safetensors");
    o.train_te = 1;
    o.steps = 3;
    o.batch = 2;
    o.rank = 2;
    o.caption_dropout = 0.5; /* the empty caption's ids2 too */
    o.loss = record_loss;
    o.loss_user = &s;
    MOOD_CHECK_OK(mood_train_run(&o));
    MOOD_CHECK_MSG(s.calls == 3 && s.bad == 0, "%d calls, %d bad: %s", s.calls, s.bad, s.why);
    o.full = 1; /* still refused on SDXL */
    o.output = scratch_path("te-full");
    MOOD_CHECK(mood_train_run(&o) == MOOD_EUNSUPPORTED);
}

/* With --cuda (test_train_sdxl_te_cuda, label cuda; emu_test_train_sdxl_te_cuda on the
 * emulation): the step with the UNet on GPU 0, text_embeds' gradient included
 * (mood_cuda_unet_backward_cond), against the same torch fixture and tolerances; exits 77
 * (skipped) without the CUDA backend or a GPU. */
int main(int argc, char **argv)
{
    static const harness_test tests[] = {MOOD_T(test_step_matches_torch), MOOD_T(test_pooled_api),
                                         MOOD_T(test_trainer_batches)};
    static const harness_test cuda_tests[] = {MOOD_T(test_step_matches_torch)};
    return harness_run_cuda_mode(argc, argv, tests, sizeof tests / sizeof tests[0], cuda_tests,
                                 sizeof cuda_tests / sizeof cuda_tests[0], &use_cuda);
}
