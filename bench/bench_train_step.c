/*
 * bench_train_step.c: times mood's LoRA training step for bench/train_step.sh.
 *
 * `mood train` shows its rate only in a terminal progress line, so this program runs what it
 * runs, mood_train_run, with the same kind of options and its own progress callback, which the
 * trainer calls after every optimizer step: the time between two calls is one step. A step is
 * (train/trainer.c): the noise and timestep draws, the noisy latents and target, the UNet
 * forward on its tape with the LoRA side paths (gradient checkpointing when memory is short,
 * mood__train_tape_flags, or as MOOD_BENCH_CHECKPOINTING=on|off|auto says), the loss, the backward
 * pass into the LoRA factors' gradients, the NaN check, clipping by global norm and AdamW. The
 * latents and the caption's text conditioning were cached before the first step (one VAE encode per
 * image, one text-encoder pass per caption), as mood train always does; `encode` times those two
 * separately.
 *
 * usage: bench_train_step train MODEL BOARD OUT.safetensors RUNS SIZE RANK ALPHA
 *          one warm-up step then RUNS timed ones (mood_train_run, targets attn, AdamW lr 1e-4,
 *          weight decay 1e-2, clipping 1.0, no min-SNR, no noise offset, no flips); prints
 *          mood_step_ms (median), each step, the caching and loading times, the peak resident
 *          memory of the process, and the LoRA's module and parameter count (read back from
 *          the file written)
 *        bench_train_step encode MODEL SIZE RUNS HEADS
 *          the VAE encode of one SIZE x SIZE image and one text-encoder pass of 77 tokens
 *          (HEADS attention heads, 0: inferred), a warm-up then the median of RUNS
 * Device (train): MOOD_BENCH_DEVICE=cuda (or cuda:N) puts the UNet's forward and backward on GPU N
 * in bf16 mixed precision, or float32 with MOOD_BENCH_PRECISION=fp32 (mood_model_options
 * .cuda_device = N, cuda_fp32: what `mood train --device cuda [--precision fp32]` runs; the loss,
 * clipping and AdamW stay on the CPU, so each step ends with its gradients on the host and the step
 * times need no extra synchronisation); unset or "cpu": the CPU. Memory: the GPU's pool
 * (mood_cuda_pool_stats) belongs to the model that mood_train_run opens and frees inside itself,
 * out of reach of the public API, so only the peak RSS is printed here; gpu.sh samples the GPU's
 * used memory from outside for both sides. Threads: OMP_NUM_THREADS. Restarts itself with
 * OPENBLAS_CORETYPE set when OpenBLAS does not recognise the CPU (mood_blas_tune_process).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "mood/clip.h"
#include "mood/safetensors.h"
#include "mood/tokenizer.h"
#include "mood/train.h"
#include "mood/vae.h"

#define MAX_STEPS 1000

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int die(const char *what)
{
    fprintf(stderr, "bench_train_step: %s: %s\n", what, mood_error_last());
    return 2;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double s[MAX_STEPS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return s[(n - 1) / 2];
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* kB on Linux */
}

/* When each phase of the run ended, and when each optimizer step did (index: steps done). */
typedef struct clock_marks {
    double load_start, board_start, board_end, cache_end;
    double step_end[MAX_STEPS + 1];
    int steps;
} clock_marks;

static int on_progress(const mood_train_progress *p, void *payload)
{
    clock_marks *c = payload;
    double t = now_ms();
    if (strcmp(p->phase, "load") == 0)
        c->load_start = t;
    else if (strcmp(p->phase, "board") == 0 && p->done == 0)
        c->board_start = t;
    else if (strcmp(p->phase, "board") == 0)
        c->board_end = t;
    else if (strcmp(p->phase, "cache") == 0)
        c->cache_end = t;
    else if (strcmp(p->phase, "train") == 0 && p->done >= 1 && p->done <= MAX_STEPS) {
        c->step_end[p->done] = t;
        c->steps = (int)p->done;
    }
    return 0;
}

/* The LoRA file's module count (lora_down tensors) and trained values (down and up), and whether
 * the run checkpointed (its ss_gradient_checkpointing, "True" or "False"). */
static int count_lora(const char *path, size_t *modules, int64_t *values, char *ckpt, size_t n)
{
    mood_st_file *f = NULL;
    if (mood_st_open(&f, path) != 0)
        return -1;
    const char *c = mood_st_meta_get(f, "ss_gradient_checkpointing");
    snprintf(ckpt, n, "%s", c ? c : "?");
    *modules = 0;
    *values = 0;
    for (size_t i = 0; i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        if (strstr(t->name, ".lora_down.weight"))
            (*modules)++;
        if (strstr(t->name, ".lora_down.weight") || strstr(t->name, ".lora_up.weight"))
            *values += mood_st_numel(t);
    }
    mood_st_close(f);
    return 0;
}

/* MOOD_BENCH_DEVICE: -1 the CPU (unset, "", "cpu"), N for "cuda" (0) or "cuda:N"; -2 another
 * value. */
static int bench_device(void)
{
    const char *d = getenv("MOOD_BENCH_DEVICE");
    if (!d || !*d || strcmp(d, "cpu") == 0)
        return -1;
    if (strcmp(d, "cuda") == 0)
        return 0;
    if (strncmp(d, "cuda:", 5) == 0 && d[5] >= '0' && d[5] <= '9')
        return atoi(d + 5);
    return -2;
}

/* MOOD_BENCH_CHECKPOINTING: mood_train_options.checkpointing: -1 for "auto" (unset, ""), 1 "on",
 * 0 "off"; -2 another value. */
static int bench_checkpointing(void)
{
    const char *c = getenv("MOOD_BENCH_CHECKPOINTING");
    if (!c || !*c || strcmp(c, "auto") == 0)
        return -1;
    return strcmp(c, "on") == 0 ? 1 : strcmp(c, "off") == 0 ? 0 : -2;
}

/* MOOD_BENCH_PRECISION: 1 for "fp32", 0 for bf16 (unset, "", "bf16"), -1 another value. */
static int bench_fp32(void)
{
    const char *p = getenv("MOOD_BENCH_PRECISION");
    if (!p || !*p || strcmp(p, "bf16") == 0)
        return 0;
    return strcmp(p, "fp32") == 0 ? 1 : -1;
}

static int run_train(char **argv)
{
    static clock_marks c;
    mood_model_options mo;
    int device = bench_device();
    const char *board[1] = {argv[3]};
    int runs = atoi(argv[5]);
    mood_train_options o;
    double steps[MAX_STEPS];
    size_t modules = 0;
    int64_t values = 0;
    char ckpt[16];
    if (runs < 1 || runs >= MAX_STEPS) {
        fprintf(stderr, "bench_train_step: RUNS must be 1 to %d\n", MAX_STEPS - 1);
        return 1;
    }
    if (bench_fp32() < 0) {
        fprintf(stderr, "bench_train_step: MOOD_BENCH_PRECISION must be bf16 or fp32\n");
        return 1;
    }
    if (bench_checkpointing() == -2) {
        fprintf(stderr, "bench_train_step: MOOD_BENCH_CHECKPOINTING must be auto, on or off\n");
        return 1;
    }
    if (device == -2) {
        fprintf(stderr,
                "bench_train_step: MOOD_BENCH_DEVICE must be cpu, cuda or cuda:N, not "
                "'%s'\n",
                getenv("MOOD_BENCH_DEVICE"));
        return 1;
    }
    mood_model_options_init(&mo);
    mo.cuda_device = device;
    mo.cuda_fp32 = device >= 0 && bench_fp32(); /* default bf16, as mood train's */
    mood_train_options_init(&o);
    o.model = argv[2];
    o.model_options = &mo;
    o.board = board;
    o.n_board = 1;
    o.board_opts.resolution = atoi(argv[6]);
    o.name = "trainbench";
    o.output = argv[4];
    o.targets = MOOD_TRAIN_ATTN; /* diffusers' to_q, to_k, to_v, to_out.0 */
    o.rank = atoi(argv[7]);
    o.alpha = atof(argv[8]);
    o.steps = runs + 1;
    o.min_snr_gamma = 0; /* the recipe's defaults: no snr_gamma, noise offset or flips */
    o.noise_offset = 0;
    o.flip = 0;
    o.checkpointing = bench_checkpointing();
    o.progress = on_progress;
    o.progress_payload = &c;
    if (mood_train_run(&o) != 0)
        return die("mood_train_run");
    double rss = peak_rss_mb();
    if (c.steps != runs + 1) {
        fprintf(stderr, "bench_train_step: %d steps reported, %d expected\n", c.steps, runs + 1);
        return 2;
    }
    for (int i = 0; i < runs; i++) /* step 1 is the warm-up */
        steps[i] = c.step_end[i + 2] - c.step_end[i + 1];
    if (count_lora(o.output, &modules, &values, ckpt, sizeof ckpt) != 0)
        return die(o.output);
    if (device >= 0)
        printf("mood_device cuda:%d %s\n", device, mo.cuda_fp32 ? "fp32" : "bf16");
    else
        printf("mood_device cpu\n");
    printf("mood_step_ms %.1f\nmood_steps_ms ", median(steps, runs));
    for (int i = 0; i < runs; i++)
        printf("%s%.0f", i ? "," : "", steps[i]);
    printf("\nmood_load_ms %.0f\n", c.board_start - c.load_start);
    /* LoRA init and the one image's VAE encode + latent sample */
    printf("mood_cache_ms %.0f\n", c.cache_end - c.board_end);
    /* the caption's text-encoder pass, the trainer's setup and the warm-up step */
    printf("mood_first_step_ms %.0f\n", c.step_end[1] - c.cache_end);
    printf("mood_rss_mb %.0f\n", rss);
    printf("mood_lora_modules %zu\nmood_lora_params %lld\n", modules, (long long)values);
    printf("mood_checkpointing %s\n", ckpt);
    return 0;
}

static int run_encode(char **argv)
{
    int size = atoi(argv[3]), runs = atoi(argv[4]);
    mood_clip_config hint = {0};
    mood_vae *vae = NULL;
    mood_clip *clip = NULL;
    char path[4096];
    double tv[MAX_STEPS], tt[MAX_STEPS];
    if (runs < 1 || runs >= MAX_STEPS || size < 8) {
        fprintf(stderr, "bench_train_step: bad SIZE or RUNS\n");
        return 1;
    }
    hint.heads = atoi(argv[5]);
    hint.act = MOOD_CLIP_ACT_QUICK_GELU; /* SD1's text encoder */
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", argv[2]);
    if (mood_vae_load(&vae, argv[2]) != 0)
        return die(argv[2]);
    if (mood_clip_load(&clip, path, &hint) != 0)
        return die(path);
    int C = mood_vae_get_config(vae)->latent_channels, s = mood_vae_scale(vae);
    size_t px = (size_t)size * size, lat = (size_t)C * px / ((size_t)s * s);
    size_t ctx = (size_t)MOOD_CLIP_CONTEXT * mood_clip_get_config(clip)->hidden;
    float *img = malloc(3 * px * sizeof *img), *mean = malloc(lat * sizeof *mean);
    float *logvar = malloc(lat * sizeof *logvar), *hidden = malloc(ctx * sizeof *hidden);
    int32_t ids[MOOD_CLIP_CONTEXT];
    if (!img || !mean || !logvar || !hidden)
        return 2;
    for (size_t i = 0; i < 3 * px; i++) /* the cost does not depend on the pixels */
        img[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    for (int i = 0; i < MOOD_CLIP_CONTEXT; i++) /* start, five words, end, padding */
        ids[i] = i == 0 ? MOOD_CLIP_START : i <= 5 ? 320 + i : MOOD_CLIP_END;
    for (int r = 0; r <= runs; r++) {
        double t0 = now_ms();
        if (mood_vae_encode(vae, mean, logvar, img, 1, size, size) != 0)
            return die("mood_vae_encode");
        double t1 = now_ms();
        if (mood_clip_forward(clip, ids, 1, MOOD_CLIP_CONTEXT, 1, 1, hidden, NULL) != 0)
            return die("mood_clip_forward");
        double t2 = now_ms();
        if (r > 0) { /* r 0: the warm-up */
            tv[r - 1] = t1 - t0;
            tt[r - 1] = t2 - t1;
        }
    }
    printf("mood_vae_ms %.1f\nmood_te_ms %.1f\n", median(tv, runs), median(tt, runs));
    free(img);
    free(mean);
    free(logvar);
    free(hidden);
    mood_clip_free(clip);
    mood_vae_free(vae);
    return 0;
}

int main(int argc, char **argv)
{
    mood_blas_tune_process(argv);
    if (argc == 9 && strcmp(argv[1], "train") == 0)
        return run_train(argv);
    if (argc == 6 && strcmp(argv[1], "encode") == 0)
        return run_encode(argv);
    fprintf(stderr, "usage: bench_train_step train MODEL BOARD OUT.safetensors RUNS SIZE RANK "
                    "ALPHA\n"
                    "       bench_train_step encode MODEL SIZE RUNS HEADS\n");
    return 1;
}
