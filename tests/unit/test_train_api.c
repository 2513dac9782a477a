/*
 * test_train_api.c: mood_train_run and mood_board_load as a program using only the umbrella
 * header <mood/mood.h> sees them (a QA program's view): the umbrella includes and lists every
 * public header; every option that needs no model is refused before any work (no progress
 * phase, not even "load", and a model path that does not exist is never opened), with
 * MOOD_EINVAL naming the option and what it takes; and no output of a run may be its base model
 * (its single file, a file of its folder however spelled), a board image or the checkpoint it
 * resumes from: refused up front, with the files left as they were.
 */
#include <dirent.h>
#include <mood/mood.h>

#include "harness.h"

/* ----- the umbrella header ------------------------------------------------------------------ */

/* Every header of include/mood/ is included by mood.h and named in its list of modules. */
static void test_umbrella_lists_every_header(void)
{
    char dir[4096], line[4200];
    snprintf(dir, sizeof dir, "%s/../../include/mood", fixture(""));
    snprintf(line, sizeof line, "%s/mood.h", dir);
    size_t n = 0;
    char *umbrella = (char *)read_file(line, &n);
    DIR *d = opendir(dir);
    struct dirent *e;
    int headers = 0;
    MOOD_CHECK(umbrella && d);
    while (umbrella && d && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 3 || strcmp(e->d_name + len - 2, ".h") || !strcmp(e->d_name, "mood.h"))
            continue;
        headers++;
        snprintf(line, sizeof line, "#include \"mood/%s\"", e->d_name);
        MOOD_CHECK_MSG(strstr(umbrella, line) != NULL, "mood.h does not include mood/%s",
                       e->d_name);
        snprintf(line, sizeof line, " %s", e->d_name); /* in the top comment */
        const char *at = strstr(umbrella, line), *end = strstr(umbrella, "*/");
        MOOD_CHECK_MSG(at && end && at < end, "mood.h's list does not name %s", e->d_name);
    }
    MOOD_CHECK(headers > 15);
    if (d)
        closedir(d);
    free(umbrella);
    /* what a program including only mood.h uses (this file compiles only if it is there) */
    mood_train_options o;
    mood_train_options_init(&o);
    MOOD_CHECK(o.steps == 1000 && o.rank == 16);
}

/* ----- options refused up front --------------------------------------------------------------- */

static int phases;

static int count_phase(const mood_train_progress *p, void *payload)
{
    (void)p;
    (void)payload;
    phases++;
    return 1; /* cancels whatever work started */
}

static int on_sample(const mood_train_sample *s, void *payload)
{
    (void)s;
    (void)payload;
    return 0;
}

static const char *board[1];
static char board_dir[4096], no_model[4096], out_path[4096];

/* Options that would train a LoRA, if the model existed; work cancelled at its first phase. */
static void base_options(mood_train_options *o)
{
    snprintf(board_dir, sizeof board_dir, "%s", fixture("train/board"));
    snprintf(no_model, sizeof no_model, "%s/no-such-model", scratch_dir());
    snprintf(out_path, sizeof out_path, "%s/out.safetensors", scratch_dir());
    board[0] = board_dir;
    mood_train_options_init(o);
    o->model = no_model; /* opened only after the checks */
    o->board = board;
    o->n_board = 1;
    o->output = out_path;
    o->steps = 2;
    o->progress = count_phase;
}

typedef struct bad_case {
    const char *option; /* in the message */
    void (*set)(mood_train_options *o);
} bad_case;

#define CASE(name, body)                                                                           \
    static void set_##name(mood_train_options *o)                                                  \
    {                                                                                              \
        body;                                                                                      \
    }
CASE(steps, o->steps = 0)
CASE(batch, o->batch = 0)
CASE(accum, o->accum = 5000)
CASE(rank, o->rank = 0)
CASE(alpha, o->alpha = 0)
CASE(lr, o->lr = 0)
CASE(te_lr, o->te_lr = -1)
CASE(warmup, o->warmup = -1)
CASE(beta1, o->beta1 = 1)
CASE(max_grad_norm, o->max_grad_norm = -1)
CASE(min_snr_gamma, o->min_snr_gamma = NAN)
CASE(noise_offset, o->noise_offset = INFINITY)
CASE(ip_noise_gamma, o->ip_noise_gamma = 1)
CASE(timesteps, (o->min_timestep = 600, o->max_timestep = 600))
CASE(caption_dropout, o->caption_dropout = 1)
CASE(clip_skip, o->clip_skip = 0)
CASE(prediction, o->prediction = 7)
CASE(targets, o->targets = (mood_train_targets)9)
CASE(lr_schedule, o->lr_schedule = (mood_lr_schedule)9)
CASE(save_dtype, o->save_dtype = MOOD_DTYPE_I32)
CASE(checkpoint_every, o->checkpoint_every = -1)
CASE(resume, o->resume = 1)
CASE(resolution, o->board_opts.resolution = 65)
CASE(sample_steps, (o->sample = on_sample, o->sample_every = 1, o->sample_steps = -1))
CASE(sample_size, (o->sample = on_sample, o->sample_every = 1, o->sample_size = 60))
static const char *const null_board[1] = {NULL};
CASE(board_entry, o->board = null_board)
#undef CASE

static void test_options_checked_first(void)
{
    static const bad_case cases[] = {
        {"steps", set_steps},
        {"batch", set_batch},
        {"accum", set_accum},
        {"rank", set_rank},
        {"alpha", set_alpha},
        {"lr = 0", set_lr},
        {"te_lr", set_te_lr},
        {"warmup", set_warmup},
        {"beta1", set_beta1},
        {"max_grad_norm", set_max_grad_norm},
        {"min_snr_gamma", set_min_snr_gamma},
        {"noise_offset", set_noise_offset},
        {"ip_noise_gamma", set_ip_noise_gamma},
        {"timestep range [600, 600) is empty", set_timesteps},
        {"caption_dropout", set_caption_dropout},
        {"clip_skip", set_clip_skip},
        {"prediction", set_prediction},
        {"targets", set_targets},
        {"lr_schedule", set_lr_schedule},
        {"save_dtype", set_save_dtype},
        {"checkpoint_every", set_checkpoint_every},
        {"resume", set_resume},
        {"resolution", set_resolution},
        {"sample previews", set_sample_steps},
        {"size 60", set_sample_size},
        {"board[0]", set_board_entry},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mood_train_options o;
        int err;
        base_options(&o);
        cases[i].set(&o);
        phases = 0;
        err = mood_train_run(&o);
        MOOD_CHECK_MSG(
            err == MOOD_EINVAL && phases == 0 && strstr(mood_error_last(), cases[i].option),
            "%s: %d (%s) after %d phases", cases[i].option, err, mood_error_last(), phases);
    }
    MOOD_CHECK(mood_train_run(NULL) == MOOD_EINVAL);
}

/* A board without options says so, not "no paths given". */
static void test_board_without_options(void)
{
    const char *paths[1] = {fixture("train/board")};
    mood_board *b = (mood_board *)paths;
    MOOD_CHECK(mood_board_load(&b, paths, 1, NULL) == MOOD_EINVAL && b == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "no options") && !strstr(mood_error_last(), "paths"),
                   "%s", mood_error_last());
    MOOD_CHECK(mood_board_load(&b, paths, 0, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "no paths given") != NULL);
}

/* ----- outputs that are inputs -------------------------------------------------------------- */

/* A run whose output would replace `victim`: refused as MOOD_EINVAL before any work, the
 * message saying `why`, the file unchanged. */
static void refused(const mood_train_options *o, const char *victim, const char *why)
{
    size_t n0 = 0, n1 = 0;
    unsigned char *before = read_file(victim, &n0), *after;
    int err;
    phases = 0;
    err = mood_train_run(o);
    after = read_file(victim, &n1);
    MOOD_CHECK_MSG(err == MOOD_EINVAL && phases == 0 && strstr(mood_error_last(), why),
                   "%s: %d (%s) after %d phases", victim, err, mood_error_last(), phases);
    MOOD_CHECK_MSG(before && after && n0 == n1 && memcmp(before, after, n0) == 0, "%s changed",
                   victim);
    free(before);
    free(after);
}

/* path = scratch_dir()/rel (buffers of 4096). */
#define AT(path, rel) snprintf(path, sizeof path, "%s/%s", scratch_dir(), rel)

static void test_outputs_are_not_inputs(void)
{
    char folder[4096], far[4096], unet[4096], blob[4096], linked[4096], single[4096];
    char image[4096], ckpt[4096], dotted[4096], other[4096], png[4096];
    mood_train_options o;
    /* a folder model (only its files matter: nothing is opened) */
    AT(folder, "model");
    AT(unet, "model/unet");
    MOOD_CHECK(mkdir(folder, 0755) == 0 && mkdir(unet, 0755) == 0);
    AT(unet, "model/unet/diffusion_pytorch_model.safetensors");
    MOOD_CHECK(write_file(unet, "unet weights", 12) == 0);
    base_options(&o);
    o.model = folder;
    o.output = unet;
    refused(&o, unet, "inside the base model's folder");
    AT(dotted, "model/../model/unet/../unet/diffusion_pytorch_model.safetensors");
    o.output = dotted;
    refused(&o, unet, "inside the base model's folder");
    AT(other, "model/unet/new.safetensors"); /* a new file inside it too */
    o.output = other;
    refused(&o, unet, "inside the base model's folder");
    AT(other, "elsewhere.safetensors");
    AT(png, "model/loss.png");
    o.output = other;
    o.loss_png = png;
    refused(&o, unet, "loss_png");
    /* a folder of links to blobs elsewhere (as Hugging Face's cache has) */
    AT(far, "linked");
    AT(blob, "linked/unet");
    MOOD_CHECK(mkdir(far, 0755) == 0 && mkdir(blob, 0755) == 0);
    AT(blob, "blob");
    MOOD_CHECK(write_file(blob, "blob weights", 12) == 0);
    AT(linked, "linked/unet/diffusion_pytorch_model.safetensors");
    MOOD_CHECK(symlink(blob, linked) == 0);
    base_options(&o);
    o.model = far;
    o.output = linked;
    refused(&o, blob, "inside the base model's folder");
    /* a single-file model, by another spelling and through a link */
    AT(single, "base.safetensors");
    MOOD_CHECK(write_file(single, "checkpoint", 10) == 0);
    base_options(&o);
    o.model = single;
    AT(dotted, "linked/../base.safetensors");
    o.output = dotted;
    refused(&o, single, "is also an input");
    AT(other, "base-link.safetensors");
    MOOD_CHECK(symlink(single, other) == 0);
    o.output = other;
    refused(&o, single, "is also an input");
    /* the checkpoint resumed from, and a board image */
    AT(ckpt, "run.ckpt");
    MOOD_CHECK(write_file(ckpt, "state", 5) == 0);
    o.output = out_path;
    o.checkpoint = ckpt;
    o.resume = 1;
    o.output = ckpt;
    refused(&o, ckpt, "is also an input");
    o.output = out_path;
    o.loss_csv = ckpt;
    refused(&o, ckpt, "loss_csv");
    AT(image, "a.png");
    MOOD_CHECK(copy_file(fixture("train/board/a.png"), image) == 0);
    board[0] = image;
    o.resume = 0;
    o.loss_csv = NULL;
    o.output = image;
    refused(&o, image, "is also an input");
}

MOOD_TEST_MAIN(MOOD_T(test_umbrella_lists_every_header), MOOD_T(test_options_checked_first),
               MOOD_T(test_board_without_options), MOOD_T(test_outputs_are_not_inputs))
