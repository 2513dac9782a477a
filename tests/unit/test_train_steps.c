/*
 * test_train_steps.c: a whole training run of mood_train_run with mood's own UNet backward on
 * the tiny SD1 model (tests/fixtures/pipeline/tiny-sd) against the same run re-implemented in
 * torch by tools/make_fixtures_train.py (tests/fixtures/train/steps/): same board, VAE latent
 * samples, noise, noise offset and timesteps from one generator, diffusers' UNet with kohya-style
 * LoRA modules on the attn+ff layers, min-SNR-5, gradient accumulation 2, clipping, AdamW and a
 * cosine schedule with warmup. The per-step losses and the final LoRA factors must match.
 *
 * Tolerances. Both sides compute in float32 with different summation orders (OpenBLAS vs
 * torch's kernels), so the UNet's output differs by ~1e-6 relative on a step (test_unet,
 * test_unet_backward); AdamW's m / sqrt(v) normalisation turns a relative gradient error into
 * about the same relative update error, and ten steps accumulate it. A loss therefore agrees to
 * ~1e-6 relative and 1e-4 leaves room while a real bug (a wrong draw, a missing min-SNR weight,
 * the accumulation scale, a schedule off by one step, a dropped module) moves the losses by 1e-2
 * or more: the test asserts that the fixture's losses with the LoRA frozen (lr 0, same draws)
 * differ from the trained ones by over 100x the tolerance, so it would notice training doing
 * nothing. Measured: 1.0e-7 (the losses are reported as float32, so that is their rounding).
 * The factors are compared relative to each tensor's largest value: measured 6.9e-5 (median
 * 2e-6), largest where an element's gradient is small, as AdamW's first steps divide by sqrt(v)
 * and so magnify its relative error; 5e-4 leaves 7x room and still catches weight decay left
 * out (1e-3 off) or alpha 2.1 instead of 2 (0.13 off).
 *
 * The same program with --cuda runs the UNet on the GPU (test_train_steps_cuda, label cuda), and
 * then once more in bf16 mixed precision (test_bf16_run: the losses within 5e-3 of torch's fp32
 * ones).
 */
#include "harness.h"
#include "train_test.h"
#include "mood/gen.h"
#include "mood/safetensors.h"
#include "mood/train.h"

#define LOSS_RTOL   1e-4
#define FACTOR_RTOL 5e-4
/* bf16 (test_bf16_run) against torch's fp32 run: measured 1.2e-3 in the CPU emulation of the
 * backend (tests/cuda_emu); 5e-3 leaves room for a GPU's other summation orders, and training
 * moves the losses 30x further (a run that trains nothing fails) */
#define LOSS_RTOL_BF16 5e-3
#define MAX_STEPS      64

typedef struct losses {
    double v[MAX_STEPS];
    int n;
} losses;

static int on_progress(const mood_train_progress *p, void *payload)
{
    losses *l = payload;
    if (strcmp(p->phase, "train") == 0 && p->done > 0 && p->done <= MAX_STEPS)
        l->v[p->done - 1] = p->loss, l->n = (int)p->done;
    return 0;
}

/* A tensor of the reference file as floats (F32 or F64); NULL and a failed check if absent. */
static double *ref_values(mood_st_file *f, const char *name, size_t *n)
{
    const mood_st_tensor *t = mood_st_find(f, name);
    double *out;
    MOOD_CHECK_MSG(t != NULL, "reference tensor %s missing", name);
    if (!t)
        return NULL;
    *n = (size_t)mood_st_numel(t);
    out = malloc(*n * sizeof *out + 1);
    for (size_t i = 0; i < *n; i++) {
        if (t->dtype == MOOD_DTYPE_F64) {
            memcpy(&out[i], (const char *)t->data + 8 * i, 8);
        } else {
            float x;
            memcpy(&x, (const char *)t->data + 4 * i, 4);
            out[i] = x;
        }
    }
    return out;
}

static int use_cuda;  /* main: --cuda */
static int cuda_bf16; /* with use_cuda: the UNet in bf16 (test_bf16_run) */

static void set_options(mood_train_options *o, const cJSON *c, const char **board, losses *l)
{
    static mood_model_options mo;
    mood_train_options_init(o);
    mood_model_options_init(&mo);
    if (use_cuda)
        mo.cuda_device = 0, mo.cuda_fp32 = !cuda_bf16;
    o->model_options = &mo;
    o->model = fixture("pipeline/tiny-sd");
    board[0] = fixture("train/steps/board");
    o->board = board;
    o->n_board = 1;
    o->output = scratch_path("steps.safetensors");
    o->save_dtype = MOOD_DTYPE_F32;
    MOOD_CHECK_OK(mood_train_targets_parse(&o->targets, json_str(c, "targets")));
    o->rank = (int)json_num(c, "rank");
    o->alpha = json_num(c, "alpha");
    train_case_options(o, c);
    o->progress = on_progress;
    o->progress_payload = l;
}

/* Per-step losses against torch's, within tol; returns the largest relative difference. */
static double check_losses(mood_st_file *ref, const losses *got, int steps, double tol)
{
    size_t n = 0, nf = 0;
    double *want = ref_values(ref, "loss", &n), *frozen = ref_values(ref, "loss_frozen", &nf);
    double worst = 0, moved = 0;
    MOOD_CHECK_MSG(got->n == steps && n == (size_t)steps, "%d steps reported, %zu in the fixture",
                   got->n, n);
    for (int k = 0; want && k < got->n && k < (int)n; k++) {
        double rel = fabs(got->v[k] - want[k]) / fabs(want[k]);
        worst = fmax(worst, rel);
        printf("     step %2d: mood %.7f  torch %.7f  rel %.2e\n", k + 1, got->v[k], want[k], rel);
    }
    for (size_t k = 0; want && frozen && k < n && k < nf; k++)
        moved = fmax(moved, fabs(want[k] - frozen[k]) / fabs(want[k]));
    MOOD_CHECK_MSG(worst <= tol, "losses differ from torch's by %.3g relative", worst);
    /* the test can fail: training moved the losses far beyond the tolerance */
    MOOD_CHECK_MSG(moved > 100 * LOSS_RTOL, "the fixture's LoRA barely moves the loss (%.3g)",
                   moved);
    printf("     losses: max rel diff %.3g (tolerance %.0e); training moved them by up to %.3g\n",
           worst, tol, moved);
    free(want);
    free(frozen);
    return worst;
}

/* Every lora_up / lora_down tensor of the reference against mood's output file (one message
 * naming the worst tensor and how many are off). */
static void check_factors(mood_st_file *ref, const char *path, int modules)
{
    mood_st_file *f = NULL;
    const char *worst_name = "";
    double worst = 0;
    int compared = 0, bad = 0;
    MOOD_CHECK_OK(mood_st_open(&f, path));
    if (!f)
        return;
    for (size_t i = 0; i < mood_st_count(ref); i++) {
        const mood_st_tensor *rt = mood_st_at(ref, i), *t;
        size_t n = 0;
        double *want, scale = 1e-30, diff = 0;
        if (strncmp(rt->name, "lora_", 5) != 0)
            continue;
        t = mood_st_find(f, rt->name);
        MOOD_CHECK_MSG(t && t->dtype == MOOD_DTYPE_F32 && mood_st_numel(t) == mood_st_numel(rt),
                       "%s missing or of another shape in mood's LoRA", rt->name);
        if (!t || t->dtype != MOOD_DTYPE_F32 || mood_st_numel(t) != mood_st_numel(rt))
            continue;
        want = ref_values(ref, rt->name, &n);
        for (size_t k = 0; want && k < n; k++) {
            float x;
            memcpy(&x, (const char *)t->data + 4 * k, 4);
            diff = fmax(diff, fabs(x - want[k]));
            scale = fmax(scale, fabs(want[k]));
        }
        bad += diff / scale > FACTOR_RTOL;
        if (diff / scale > worst)
            worst = diff / scale, worst_name = rt->name;
        compared++;
        free(want);
    }
    MOOD_CHECK_MSG(compared == 2 * modules, "%d factors compared, %d expected", compared,
                   2 * modules);
    MOOD_CHECK_MSG(bad == 0, "%d of %d LoRA factors differ from torch's; worst %s by %.3g", bad,
                   compared, worst_name, worst);
    printf("     %d LoRA factors: max diff %.3g relative to each tensor's largest value (%s)\n",
           compared, worst, worst_name);
    mood_st_close(f);
}

static void test_run_matches_torch(void)
{
    cJSON *c = load_json(fixture("train/steps/case.json"));
    mood_st_file *ref = NULL;
    mood_train_options o;
    const char *board[1];
    losses got = {{0}, 0};
    if (!c || mood_st_open(&ref, fixture("train/steps/ref.safetensors")) != 0) {
        MOOD_CHECK_MSG(0, "train/steps fixture missing: %s", mood_error_last());
        cJSON_Delete(c);
        return;
    }
    set_options(&o, c, board, &got);
    MOOD_CHECK_OK(mood_train_run(&o));
    check_losses(ref, &got, (int)o.steps, LOSS_RTOL);
    check_factors(ref, o.output, (int)json_num(c, "modules"));
    mood_st_close(ref);
    cJSON_Delete(c);
}

/* --cuda only: the same run in bf16 mixed precision (the UNet's weights and products' inputs in
 * bf16, everything else fp32) against torch's fp32 run: the losses within LOSS_RTOL_BF16, the
 * metadata saying bf16 as kohya's does. */
static void test_bf16_run(void)
{
    cJSON *c = load_json(fixture("train/steps/case.json"));
    mood_st_file *ref = NULL, *out = NULL;
    mood_train_options o;
    const char *board[1], *mp;
    losses got = {{0}, 0};
    if (!c || mood_st_open(&ref, fixture("train/steps/ref.safetensors")) != 0) {
        MOOD_CHECK_MSG(0, "train/steps fixture missing: %s", mood_error_last());
        cJSON_Delete(c);
        return;
    }
    cuda_bf16 = 1;
    set_options(&o, c, board, &got);
    MOOD_CHECK_OK(mood_train_run(&o));
    cuda_bf16 = 0;
    check_losses(ref, &got, (int)o.steps, LOSS_RTOL_BF16);
    MOOD_CHECK_OK(mood_st_open(&out, o.output));
    mp = out ? mood_st_meta_get(out, "ss_mixed_precision") : NULL;
    MOOD_CHECK_MSG(mp && strcmp(mp, "bf16") == 0, "ss_mixed_precision %s", mp ? mp : "missing");
    mood_st_close(out);
    mood_st_close(ref);
    cJSON_Delete(c);
}

/* With --cuda (ctest's test_train_steps_cuda, label cuda): the same run with the UNet's forward and
 * backward on GPU 0 (train/unet_step_cuda.c, fp32 without TF32) against the same torch fixture
 * and tolerances; exits 77 (skipped) without the CUDA backend or a GPU. */
int main(int argc, char **argv)
{
    static const harness_test tests[] = {MOOD_T(test_run_matches_torch)};
    static const harness_test cuda_tests[] = {MOOD_T(test_run_matches_torch),
                                              MOOD_T(test_bf16_run)};
    return harness_run_cuda_mode(argc, argv, tests, sizeof tests / sizeof tests[0], cuda_tests,
                                 sizeof cuda_tests / sizeof cuda_tests[0], &use_cuda);
}
