/*
 * cmd_train.c: `mood train`: a style LoRA from a mood board (mood/train.h), written in kohya's
 * format with its loss curve and, when asked, sample previews every N steps; then registered as
 * a style with its trigger word, board thumbnails, final previews, loss curve and training
 * record (cmd_train_record.c) unless --no-register. Ctrl-C saves a checkpoint that --resume
 * continues. The library's warnings (a board's skipped folders) are said once and listed in
 * --json.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli_text.h"
#include "cli/cmd_train.h"

const char cmd_train_help[] =
    "usage: mood train --name NAME --board DIR_OR_FILE... --model BASE [options]\n\n"
    "Trains a style LoRA from a mood board: a folder of images (PNG, JPEG, WebP, BMP) or a list\n"
    "of files that share a look. About five images are enough. Captions come from NAME.txt\n"
    "(or NAME.caption, kohya's default) beside an image, its first line as kohya reads it (an\n"
    "empty file: no caption), else \"TRIGGER, a picture\". A folder\n"
    "laid out for kohya (no images of its own, subfolders N_name such as 10_mystyle/) gives\n"
    "the images of its N_name subfolders, each seen N times per epoch and, without a caption\n"
    "file, captioned with the folder's name part (\"mystyle\") as kohya does; other subfolders\n"
    "are skipped with a warning, and so are pictures in other formats (GIF, TIFF, HEIC, ...:\n"
    "convert them). Images are turned upright by their EXIF orientation, and transparent\n"
    "pixels are laid over white (as the board's thumbnails show). The result is a kohya LoRA\n"
    "(A1111, ComfyUI and diffusers load it) registered as style NAME.\n\n"
    "  --name NAME          the style's name (and the file's)\n"
    "  --board PATH         an image or a folder of images; repeat or list several\n"
    "  --model BASE         the base model: a file, a folder or a name mood gen knows\n"
    "  --trigger WORD       the style's trigger word (default: NAME): in the template captions;\n"
    "                       sidecar captions that never hold it give a style without one\n"
    "  --steps N            optimizer steps (default 600)\n"
    "  --rank N, --alpha A  LoRA rank and alpha (default 16 and 8: scale 0.5)\n"
    "  --lr X               learning rate (default 1e-4), --te-lr for the text encoder\n"
    "  --batch N            images per step (default 1); --accum N micro-batches per step\n"
    "  --res N              training resolution (or --resolution; default: the model's own\n"
    "                       size, as mood gen's: 512, SDXL 1024, mood-tiny 64)\n"
    "  --buckets            aspect-ratio buckets instead of centre crops (kohya's: sides\n"
    "                       256 to 1024 in steps of 64; below 256, half to twice the\n"
    "                       resolution in steps of a quarter of it: 32 to 128 by 16 at 64)\n"
    "  --targets T          attn, attn+ff (default), all, style-blocks\n"
    "  --te                 train the text encoder too (SDXL: both encoders; captions are\n"
    "                       then encoded at every step, not cached)\n"
    "  --schedule S         constant (default), cosine, linear; --warmup N steps\n"
    "  --min-snr G          min-SNR-gamma weighting (default 5; 0 off, the default for\n"
    "                       x0-prediction models such as mood-tiny)\n"
    "  --noise-offset X     (default 0.05; 0 off)\n"
    "  --ip-noise-gamma X   input perturbation (kohya's --ip_noise_gamma; about 0.1): the\n"
    "                       UNet sees extra noise the target leaves out, which counters the\n"
    "                       drift of a model fed its own predictions when sampling\n"
    "                       (default 0, off)\n"
    "  --min-timestep N, --max-timestep N\n"
    "                       train on timesteps in [N, M) only (kohya's options; default\n"
    "                       the whole schedule, 0 to 1000): low ones carry texture and\n"
    "                       rendering, high ones layout and composition\n"
    "  --seed N             (default 0)\n"
    "  --resume             continue from the checkpoint a stopped run left (the same\n"
    "                       command again: the options that shape the run, such as --seed,\n"
    "                       --targets, --rank or --te, are checked against the checkpoint;\n"
    "                       more --steps continue a finished run)\n"
    "  --checkpoint-every N save the training state every N steps (default 100; 0: on stop)\n"
    "  --no-flip            no horizontal flips (they are on by default)\n"
    "  --caption-dropout X  give a sample the empty caption with probability X (default 0)\n"
    "  --full               train every weight of the UNet (and with --te of the text\n"
    "                       encoder) instead of a LoRA: a new base model, written as a\n"
    "                       diffusers folder (-o, default NAME/) and not registered as a style;\n"
    "                       the base must be a diffusers folder (tools/mood_tiny/train.sh), not\n"
    "                       SDXL; --rank, --alpha and --targets (a LoRA's) are refused\n"
    "  --sample-every N     render sample previews every N steps and at the end (default: off,\n"
    "                       see below; 0 off)\n"
    "  --sample-prompt P    a preview prompt; repeat for more (default: \"TRIGGER, a portrait\"\n"
    "                       and \"TRIGGER, a landscape\"; {trigger} is replaced); kohya's\n"
    "                       per-prompt options work: \"a cat --n blurry --w 512 --h 768\n"
    "                       --d 1 --s 28 --l 7 --ss euler_a\" (negative, size, seed, steps,\n"
    "                       cfg, sampler)\n"
    "  --sample-steps S     sampler steps of a preview (default 20)\n"
    "  --device D           cpu, cuda, cuda:N or auto: where the UNet trains (default auto:\n"
    "                       the GPU when there is one)\n"
    "  --precision P        on the GPU: bf16 (default: bf16 weights and products, fp32\n"
    "                       LoRA weights, optimizer and gradients, as diffusers' and kohya's\n"
    "                       --mixed_precision bf16) or fp32; the CPU and --full train in fp32\n"
    "  --gradient-checkpointing on|off|auto\n"
    "                       compute the UNet's activations again in the backward pass\n"
    "                       instead of keeping them: less memory, about 40% more time a\n"
    "                       step; auto (default): on when keeping them would take more\n"
    "                       than half the free memory\n"
    "  -o, --output FILE    where to write the LoRA (default NAME.safetensors, or\n"
    "                       NAME-2.safetensors and so on when an earlier run's is there:\n"
    "                       never over it, and named NAME-2 inside; the trigger word stays\n"
    "                       NAME; --resume continues the latest)\n"
    "  --no-register        do not add the style to the registry\n"
    "  --json               print what was written as JSON: lora (or model), loss_csv,\n"
    "                       loss_plot, checkpoint, trigger, samples, style, n_previews,\n"
    "                       warnings\n\n"
    "Why these defaults: rank 16 with alpha 8 and lr 1e-4 are kohya's documented LoRA settings\n"
    "(docs/train_network.md) with its recommended alpha of half the rank; attention and\n"
    "feed-forward layers carry style (OneTrainer's attn-mlp preset); min-SNR 5 and a small noise\n"
    "offset are kohya's recommendations; 600 steps over five images (with flips) is about 60\n"
    "epochs, where style LoRAs of this size usually converge without burning.\n\n"
    "Example:\n"
    "  mood train --name inkwash --board ~/boards/inkwash --model sd15.safetensors \\\n"
    "             --trigger inkwash\n\n"
    "Sample previews show the style as it trains: each prompt is rendered at the training size\n"
    "with the LoRA being trained applied (Euler a, cfg 7, the same seed for a prompt at every\n"
    "step, from --seed) into OUT.samples/step-NNNNNN-I.png with the parameters text mood gen\n"
    "writes (its Lora hashes on the final previews only: earlier ones were made with weights no\n"
    "file holds). They are off by default because on the CPU one SD1.5 preview costs minutes (a\n"
    "few training steps' time); --sample-every N turns them on, and --sample-prompt or\n"
    "--sample-steps alone render the end only. Their time is not counted in it/s.\n\n"
    "Files beside the output OUT.safetensors (-o; default NAME.safetensors):\n"
    "OUT.checkpoint.safetensors (the training state: --resume continues a stopped run from\n"
    "it, or a finished one with more --steps; delete it when done, as A1111 and ComfyUI would\n"
    "list it as a LoRA), OUT.loss.csv and OUT.loss.png (the loss curve), OUT.samples/\n"
    "(previews), OUT.json (A1111's sidecar: trigger word and weight).\n"
    "The registered style keeps the trigger word, thumbnails of the board, the final previews,\n"
    "the loss curve and a record of the training ('mood show NAME').\n"
    "Exit status: 0 trained, 1 bad input (an image that does not decode, bad option), 2\n"
    "environment; 130 when stopped (a checkpoint is kept).\n";

/* ----- progress ------------------------------------------------------------------------------ */

/* Seconds as "42 s", "12:05" or "3:02:09". */
static void format_time(char *out, size_t size, double s)
{
    long t = s > 0 && s < 1e9 ? (long)(s + 0.5) : 0;
    if (t < 60)
        snprintf(out, size, "%ld s", t);
    else if (t < 3600)
        snprintf(out, size, "%ld:%02ld", t / 60, t % 60);
    else
        snprintf(out, size, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

static void print_train(const mood_train_progress *p)
{
    char left[32];
    format_time(left, sizeof left, p->eta_s);
    /* it/s with 3 significant digits: a CPU run does 0.0312 it/s, a GPU one 4.2 */
    fprintf(stderr, "\r\033[Ktrain %lld/%lld  loss %.4f (avg %.4f)  lr %.2g  %.3g it/s  %s left",
            (long long)p->done, (long long)p->total, p->loss, p->loss_avg, p->lr, p->it_per_s,
            p->it_per_s > 0 ? left : "?");
}

/* One line per phase on stderr, redrawn at most 5 times a second (always on a new phase and at
 * its end). Quiet when stderr is not a terminal. */
static int progress(const mood_train_progress *p, void *payload)
{
    static double last;
    static const char *last_phase;
    struct timespec ts;
    double now;
    (void)payload;
    if (!isatty(STDERR_FILENO))
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = ts.tv_sec + ts.tv_nsec * 1e-9;
    if (now - last < 0.2 && p->done != p->total && p->phase == last_phase)
        return 0;
    last = now;
    last_phase = p->phase;
    if (strcmp(p->phase, "train") == 0)
        print_train(p);
    else if (strcmp(p->phase, "sample") == 0)
        fprintf(stderr, "\r\033[Ksample previews %lld/%lld", (long long)p->done,
                (long long)p->total);
    else
        fprintf(stderr, "\r\033[K%s %lld/%lld", p->phase, (long long)p->done, (long long)p->total);
    if (p->done == p->total && strcmp(p->phase, "sample") == 0)
        fputs("\r\033[K", stderr); /* gone: the training line comes back */
    else if (p->done == p->total)
        fputc('\n', stderr);
    return 0;
}

/* The registry, checked before the run rather than after it (minutes of training lost to a
 * registry that cannot take the style): one that cannot be opened (not a database, a newer
 * schema) or is read-only stops here with what to do; a style NAME that exists already is said,
 * as this one will be registered under another name (as an import of a file with a taken name
 * is), or, for a --resume of the run that made it, will take NAME over (train_register).
 * Returns 0 or the exit status. */
static int check_registry_first(train_args *a)
{
    mood_registry *r = NULL;
    char *free_name = NULL;
    long long before;
    int err, rc = 0;
    mood_log_set(NULL, NULL); /* "no registry yet" is no news here: training makes it */
    if ((err = mood_registry_open(&r, NULL)) != 0) {
        rc = cli_fail(err);
        fprintf(stderr, "mood: nothing trained: the style could not be registered (repair or move "
                        "the registry, or train with --no-register and import the file later)\n");
    } else if ((err = mood_registry_read_only_error(r)) != 0) {
        rc = cli_fail(err);
        fprintf(stderr, "mood: nothing trained: the style could not be registered (train with "
                        "--no-register and import the file later)\n");
    } else {
        train_find_style(r, a);
        before = train_style_steps_of_run(r, a, a->style);
        if (before == a->o.steps) {
            /* nothing to train past the checkpoint: train_register says so */
        } else if (before > 0 && (free_name = train_earlier_name(r, a->style, before)) != NULL) {
            fprintf(stderr,
                    "mood: note: style '%s' is this run's result at step %lld; it will hold "
                    "the continued run, and the earlier result becomes style '%s'\n",
                    a->style, before, free_name);
        } else if (mood_registry_name_suggest(&free_name, r, a->style) == 0 &&
                   strcmp(free_name, a->style)) {
            fprintf(stderr,
                    "mood: note: a style named '%s' exists already; this one will be registered "
                    "as '%s' (stop now and give another --name, or 'mood rm %s' first, to "
                    "choose)\n",
                    a->style, free_name, a->style);
        }
    }
    mood_registry_free_string(free_name);
    mood_registry_close(r);
    mood_log_set(cli_log_sink, NULL);
    return rc;
}

/* ----- arguments ----------------------------------------------------------------------------- */

/* kohya sd-scripts' names of the options mood has under another name (its users type them). */
static const char *kohya_name(const char *s)
{
    static const char *const map[][2] = {
        {"--network_dim", "--rank"},
        {"--network_alpha", "--alpha"},
        {"--learning_rate", "--lr"},
        {"--unet_lr", "--lr"},
        {"--text_encoder_lr", "--te-lr (with --te)"},
        {"--max_train_steps", "--steps"},
        {"--train_batch_size", "--batch"},
        {"--gradient_accumulation_steps", "--accum"},
        {"--output_name", "--name"},
        {"--output_dir", "-o"},
        {"--train_data_dir", "--board"},
        {"--pretrained_model_name_or_path", "--model"},
        {"--enable_bucket", "--buckets"},
        {"--lr_warmup_steps", "--warmup"},
        {"--lr_scheduler", "--schedule"},
        {"--min_snr_gamma", "--min-snr"},
        {"--noise_offset", "--noise-offset"},
        {"--ip_noise_gamma", "--ip-noise-gamma"},
        {"--min_timestep", "--min-timestep"},
        {"--max_timestep", "--max-timestep"},
        {"--caption_dropout_rate", "--caption-dropout"},
        {"--save_every_n_steps", "--checkpoint-every"},
        {"--mixed_precision", "--precision"},
        {"--gradient_checkpointing", "--gradient-checkpointing on"},
        {"--network_train_unet_only", "(the default: --te trains the text encoder too)"},
        {"--flip_aug", "(the default: --no-flip turns it off)"},
        {"--sample_every_n_steps", "--sample-every"},
        {"--sample_prompts", "--sample-prompt (one per prompt)"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(s, map[i][0]) == 0)
            return map[i][1];
    return NULL;
}

static int add_board(train_args *a, const char *path)
{
    const char **grown = realloc(a->board, (a->n_board + 1) * sizeof *grown);
    if (!grown)
        return 2;
    a->board = grown;
    a->board[a->n_board++] = path;
    return 0;
}

/* The table of train's numeric options (built per call: the destinations are a's fields). */
static size_t num_opts(train_args *a, cli_num_opt *t)
{
    mood_train_options *o = &a->o;
    const double big = 1e15;
    cli_num_opt list[] = {
        {"--steps", CLI_NUM_I64, &o->steps, 1, big, 0, 0, 0, NULL, NULL, "a whole number >= 1"},
        {"--rank", CLI_NUM_INT, &o->rank, 1, 1024, 0, 0, 0, NULL, NULL, "1 to 1024"},
        {"--alpha", CLI_NUM_REAL, &o->alpha, 0, big, 1, 0, 0, NULL, NULL, "a number > 0"},
        {"--lr", CLI_NUM_REAL, &o->lr, 0, big, 1, 0, 0, NULL, NULL, "a number > 0"},
        {"--te-lr", CLI_NUM_REAL, &o->te_lr, 0, big, 0, 0, 0, NULL, NULL, "a number >= 0"},
        {"--batch", CLI_NUM_INT, &o->batch, 1, 64, 0, 0, 0, NULL, NULL, "1 to 64"},
        {"--accum", CLI_NUM_INT, &o->accum, 1, 1024, 0, 0, 0, NULL, NULL, "1 to 1024"},
        {"--res", CLI_NUM_INT, &o->board_opts.resolution, 64, 2048, 0, 0, 64, NULL, NULL,
         "64 to 2048, a multiple of 64"},
        {"--resolution", CLI_NUM_INT, &o->board_opts.resolution, 64, 2048, 0, 0, 64, NULL, NULL,
         "64 to 2048, a multiple of 64"}, /* kohya's name */
        {"--warmup", CLI_NUM_I64, &o->warmup, 0, big, 0, 0, 0, NULL, NULL, "a whole number >= 0"},
        {"--min-snr", CLI_NUM_REAL, &o->min_snr_gamma, 0, big, 0, 0, 0, NULL, NULL,
         "a number >= 0"},
        {"--noise-offset", CLI_NUM_REAL, &o->noise_offset, 0, 1, 0, 1, 0, NULL, NULL,
         "from 0 up to (not including) 1"},
        {"--ip-noise-gamma", CLI_NUM_REAL, &o->ip_noise_gamma, 0, 1, 0, 1, 0, NULL, NULL,
         "from 0 up to (not including) 1"},
        {"--min-timestep", CLI_NUM_INT, &o->min_timestep, 0, 99999, 0, 0, 0, NULL, NULL,
         "a timestep, 0 to 999 for SD's schedules"},
        {"--max-timestep", CLI_NUM_INT, &o->max_timestep, 1, 100000, 0, 0, 0, NULL, NULL,
         "a timestep, 1 to 1000 for SD's schedules"},
        {"--seed", CLI_NUM_U64, &o->seed, 0, 1e19, 0, 0, 0, NULL, NULL, "a whole number >= 0"},
        {"--sample-every", CLI_NUM_INT, &o->sample_every, 0, INT_MAX, 0, 0, 0, &a->sample_every_set,
         &a->sample_asked, "a number of steps >= 0 (0: off)"},
        {"--sample-steps", CLI_NUM_INT, &o->sample_steps, 1, 1000, 0, 0, 0, &a->sample_asked, NULL,
         "1 to 1000"},
        {"--caption-dropout", CLI_NUM_REAL, &o->caption_dropout, 0, 1, 0, 1, 0, NULL, NULL,
         "from 0 up to (not including) 1"},
        {"--checkpoint-every", CLI_NUM_INT, &o->checkpoint_every, 0, INT_MAX, 0, 0, 0,
         &a->checkpoint_every_set, NULL, "a number of steps >= 0 (0: only when stopped)"},
    };
    memcpy(t, list, sizeof list);
    return sizeof list / sizeof list[0];
}

#define MAX_NUM_OPTS 32

/* Options with a number; returns 0, 1 (bad value) or -1 (not one of them). */
static int parse_number(train_args *a, const char *s, const char *v)
{
    cli_num_opt t[MAX_NUM_OPTS];
    return cli_parse_number("train", t, num_opts(a, t), s, v);
}

static int add_prompt(train_args *a, const char *prompt)
{
    const char **grown = realloc(a->prompts, (a->n_prompts + 1) * sizeof *grown);
    if (!grown)
        return 2;
    a->prompts = grown;
    a->prompts[a->n_prompts++] = prompt;
    a->sample_asked = 1;
    return 0;
}

static int parse_checkpointing(mood_train_options *o, const char *v)
{
    if (strcmp(v, "auto") == 0 || strcmp(v, "on") == 0 || strcmp(v, "off") == 0)
        o->checkpointing = v[0] == 'a' ? -1 : v[1] == 'n';
    else
        return cli_usage_error("train", "--gradient-checkpointing %s: on, off or auto", v);
    return 0;
}

static int parse_valued(train_args *a, const char *s, const char *v)
{
    int rc = parse_number(a, s, v);
    if (rc >= 0)
        return rc;
    if (strcmp(s, "--name") == 0)
        a->o.name = v;
    else if (strcmp(s, "--board") == 0)
        return add_board(a, v);
    else if (strcmp(s, "--model") == 0)
        a->o.model = v;
    else if (strcmp(s, "--trigger") == 0)
        a->trigger = v;
    else if (strcmp(s, "-o") == 0 || strcmp(s, "--output") == 0)
        a->output = v;
    else if (strcmp(s, "--device") == 0)
        a->device = v;
    else if (strcmp(s, "--precision") == 0 && (strcmp(v, "bf16") == 0 || strcmp(v, "fp32") == 0))
        a->precision = v;
    else if (strcmp(s, "--precision") == 0)
        return cli_usage_error("train", "--precision %s: bf16 or fp32", v);
    else if (strcmp(s, "--gradient-checkpointing") == 0)
        return parse_checkpointing(&a->o, v);
    else if (strcmp(s, "--sample-prompt") == 0)
        return add_prompt(a, v);
    else if (strcmp(s, "--targets") == 0 && mood_train_targets_parse(&a->o.targets, v) != 0)
        return cli_usage_error("train", "%s", mood_error_last());
    else if (strcmp(s, "--schedule") == 0 && mood_lr_schedule_parse(&a->o.lr_schedule, v) != 0)
        return cli_usage_error("train", "%s", mood_error_last());
    else if (strcmp(s, "--targets") && strcmp(s, "--schedule"))
        return -1;
    return 0;
}

/* Where the UNet trains: --device when given, else the command's device (main.c: the default
 * rule, $MOOD_DEVICE, the global --device). On a GPU the UNet's forward and backward run there,
 * a LoRA's in bf16 mixed precision unless --precision fp32, full-parameter training's in fp32
 * (the text encoder, the loss and the optimizer stay on the CPU in fp32: train/unet_step_cuda.c).
 * Returns 0 or the exit status. */
static int choose_device(train_args *a)
{
    mood_device d = cli_device;
    int rc;
    if (a->device && (rc = mood_device_select(&d, a->device)) < 0)
        return cli_fail(rc);
    mood_model_options_init(&a->mo);
    a->o.model_options = &a->mo;
    if (a->o.full && a->precision && strcmp(a->precision, "bf16") == 0)
        return cli_usage_error("train", "--full trains in fp32 (--precision fp32)");
    if (d.kind != MOOD_DEVICE_CUDA && a->precision && strcmp(a->precision, "bf16") == 0)
        return cli_usage_error("train", "--precision bf16 trains on a GPU (--device cuda); the "
                                        "CPU trains in fp32");
    if (!a->device)
        cli_device_note();
    if (d.kind != MOOD_DEVICE_CUDA)
        return 0;
    a->mo.cuda_device = d.index;
    a->mo.cuda_fp32 = a->o.full || (a->precision && strcmp(a->precision, "fp32") == 0);
    return 0;
}

static int parse_args(train_args *a, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int rc;
        if (!a->lora_option &&
            (strcmp(s, "--rank") == 0 || strcmp(s, "--alpha") == 0 || strcmp(s, "--targets") == 0))
            a->lora_option = s; /* and read below */
        if (strcmp(s, "--json") == 0)
            a->json = 1;
        else if (strcmp(s, "--te") == 0)
            a->o.train_te = 1;
        else if (strcmp(s, "--resume") == 0)
            a->o.resume = 1;
        else if (strcmp(s, "--buckets") == 0)
            a->o.board_opts.buckets = 1;
        else if (strcmp(s, "--no-flip") == 0)
            a->o.flip = 0;
        else if (strcmp(s, "--full") == 0)
            a->o.full = 1, a->no_register = 1; /* a base model, not a style */
        else if (strcmp(s, "--no-register") == 0)
            a->no_register = 1;
        else if (s[0] != '-' && a->n_board > 0) { /* more files after --board */
            if ((rc = add_board(a, s)) != 0)
                return rc;
        } else if (kohya_name(s))
            return cli_usage_error("train", "%s is kohya's spelling; in mood: %s", s,
                                   kohya_name(s));
        else if (i + 1 >= argc)
            return cli_unknown_option("train", s);
        else if ((rc = parse_valued(a, s, argv[i + 1])) < 0)
            return cli_unknown_option("train", s);
        else if (rc > 0)
            return rc;
        else
            i++;
    }
    if (!a->o.name || !a->n_board || !a->o.model)
        return cli_usage_error("train", "--name, --board and --model are needed");
    /* they shape a LoRA; full-parameter training has none, and ignoring them would leave the
     * user believing a rank or targets chose what was trained */
    if (a->o.full && a->lora_option)
        return cli_usage_error("train",
                               "%s shapes a LoRA; --full trains every weight and makes "
                               "none (leave %s out)",
                               a->lora_option, a->lora_option);
    if (mood_registry_name_check(a->o.name) != 0)
        return cli_usage_error("train", "%s", mood_error_last());
    return choose_device(a);
}

/* ----- files --------------------------------------------------------------------------------- */

/* Previews: off unless asked for (on the CPU, the only device of this build, an SD1.5 preview
 * costs minutes); --sample-prompt or --sample-steps without --sample-every: the end only. */
static void set_samples(train_args *a)
{
    if (!a->sample_asked)
        return;
    if (!a->sample_every_set)
        a->o.sample_every = INT_MAX;
    a->o.sample_prompts = a->prompts;
    a->o.n_sample_prompts = a->n_prompts;
    a->o.sample_seed = a->o.seed;
    a->o.sample = train_write_sample;
    a->o.sample_payload = a;
}

/* Run k's default output: NAME.safetensors, then NAME-2.safetensors, ... (a folder NAME for
 * full training); NULL when out of memory. */
static char *default_output(const train_args *a, int k)
{
    char name[4200];
    snprintf(name, sizeof name, k == 1 ? "%s" : "%s-%d", a->o.name, k);
    return train_beside(name, a->o.full ? "" : ".safetensors");
}

/* When run k's checkpoint was last written, in ns (0: there is none, or out of memory). */
static long long checkpoint_time(const train_args *a, int k)
{
    char *out = default_output(a, k),
         *ckpt = out ? train_beside(out, ".checkpoint.safetensors") : NULL;
    struct stat st;
    long long t = ckpt && stat(ckpt, &st) == 0
                      ? (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec
                      : 0;
    free(out);
    free(ckpt);
    return t;
}

/* The output when -o is not given: a style's run never writes over an earlier finished run's files
 * (as gen never writes over an earlier image), so a second run of NAME writes NAME-2.safetensors;
 * a stopped run's checkpoint is the library's to refuse (it says --resume), the name is kept.
 * --resume continues the latest run of NAME: the one whose checkpoint was written last (runs
 * whose files were deleted leave gaps; 20 empty numbers in a row end the search). */
static int pick_default_output(train_args *a)
{
    int k = 1, there;
    if (a->o.full) {
        /* a model folder: an earlier --full run's is replaced, as mood__full_params_check allows */
    } else if (a->o.resume) {
        long long newest = 0;
        for (int i = 1, gap = 0; i < 1000 && gap < 20; i++) {
            long long t = checkpoint_time(a, i);
            gap = t ? 0 : gap + 1;
            if (t > newest)
                newest = t, k = i;
        }
    } else {
        for (char *out, *ckpt; k < 1000; k++) { /* stopped: the library says --resume */
            if (!(out = default_output(a, k)) ||
                !(ckpt = train_beside(out, ".checkpoint.safetensors"))) {
                free(out);
                return 2;
            }
            there = cli_path_exists(out) && !mood_train_checkpoint_stopped(ckpt, NULL, NULL);
            free(out);
            free(ckpt);
            if (!there)
                break;
        }
    }
    if (!(a->out_default = default_output(a, k)))
        return 2;
    a->output = a->out_default;
    if (k > 1) {
        /* the run is known by its file's stem, as kohya's output_name is: A1111 and ComfyUI call
         * it <lora:NAME-k>, and its ss_output_name and previews' parameters must say so too */
        char stem[4200];
        snprintf(stem, sizeof stem, "%s-%d", a->o.name, k);
        if (!(a->run_name = strdup(stem)))
            return 2;
    }
    if (k > 1 && !a->o.resume) {
        char *first = default_output(a, 1), *last = k > 2 ? default_output(a, k - 1) : NULL;
        if (k > 2)
            fprintf(stderr,
                    "mood: note: %s to %s are earlier runs'; this run writes %s (-o chooses the "
                    "file)\n",
                    first ? first : a->o.name, last ? last : "", a->output);
        else
            fprintf(stderr,
                    "mood: note: %s is an earlier run's; this run writes %s (-o chooses the "
                    "file)\n",
                    first ? first : a->o.name, a->output);
        free(first);
        free(last);
    }
    return 0;
}

static int set_files(train_args *a)
{
    int rc;
    if (a->output && !a->o.full &&
        (rc = cli_check_safetensors_output("train", a->output, "LoRA")) != 0)
        return rc;
    if (!a->output && (rc = pick_default_output(a)) != 0) /* full training: a model folder */
        return rc;
    a->ckpt = train_beside(a->output, ".checkpoint.safetensors");
    a->csv = train_beside(a->output, ".loss.csv");
    a->png = train_beside(a->output, ".loss.png");
    a->samples_dir = train_beside(a->output, ".samples");
    if (!a->ckpt || !a->csv || !a->png || !a->samples_dir)
        return 2;
    a->o.output = a->output;
    a->o.model = a->model_path;
    a->o.checkpoint = a->ckpt;
    if (!a->checkpoint_every_set)
        a->o.checkpoint_every = 100;
    a->o.loss_csv = a->csv;
    a->o.loss_png = a->png;
    a->o.board = a->board;
    a->o.n_board = a->n_board;
    a->o.board_opts.trigger = a->trigger ? a->trigger : a->o.name; /* run NAME-k's too */
    if (a->run_name)
        a->o.name = a->run_name;
    set_samples(a);
    return 0;
}

static int report(const train_args *a, const mood_import_result *res)
{
    cJSON *o;
    if (!a->json) {
        printf("%s\n", a->output);
        if (a->o.full)
            fprintf(stderr, "trained model written to %s: mood gen \"...\" --model %s\n", a->output,
                    a->output);
        if (a->n_samples)
            fprintf(stderr, "%zu sample previews in %s\n", a->n_samples, a->samples_dir);
        if (!a->no_register) /* (already: the registry had this result; said above) */
            fprintf(stderr, "%s style '%s': mood gen \"...\" --style %s\n",
                    res->already ? "it is" : "registered as", res->name, res->name);
        return 0;
    }
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, a->o.full ? "model" : "lora", a->output);
    cJSON_AddStringToObject(o, "loss_csv", a->csv);
    cJSON_AddStringToObject(o, "loss_plot", a->png); /* show's name for it */
    cJSON_AddStringToObject(o, "checkpoint", a->ckpt);
    if (!a->o.full) {
        char *trigger = train_trigger(a);
        cJSON_AddStringToObject(o, "trigger", trigger ? trigger : "");
        free(trigger);
    }
    cli_warnings_json(o);
    if (a->n_samples) {
        cJSON *list = cJSON_AddArrayToObject(o, "samples");
        for (size_t i = 0; i < a->n_samples; i++)
            cJSON_AddItemToArray(list, cJSON_CreateString(a->samples[i].path));
    }
    if (!a->no_register) {
        cJSON_AddStringToObject(o, "style", res->name);
        cJSON_AddNumberToObject(o, "n_previews", res->previews);
    }
    return cli_print_json(o);
}

/* train_register, with what a Ctrl-C meanwhile leaves said: the training is done and written,
 * only its registration is to do. */
static int register_noted(train_args *a, mood_import_result *res)
{
    char note[1024];
    int rc;
    snprintf(note, sizeof note,
             "stopped before the style was registered; the trained LoRA is written to %.800s: "
             "the same command with --resume registers it, with how it was trained",
             a->output);
    cli_stop_note_set(note);
    rc = train_register(a, res);
    cli_stop_note_set(NULL);
    return rc;
}

int cmd_train(int argc, char **argv)
{
    train_args a;
    mood_import_result res;
    int rc, err;
    memset(&a, 0, sizeof a);
    memset(&res, 0, sizeof res);
    mood_train_options_init(&a.o);
    a.o.steps = 600;
    a.o.handle_signals = 1;
    a.o.progress = progress;
    if ((rc = parse_args(&a, argc, argv)) == 0 &&
        (rc = cli_find_model(&a.model_path, a.o.model)) == 0 && (rc = set_files(&a)) == 0) {
        rc = a.no_register ? 0 : check_registry_first(&a);
        /* a Ctrl-C before the trainer takes the signal over (loading the model) says so */
        cli_stop_note_set("stopped before training began: nothing written");
        err = rc ? 0 : mood_train_run(&a.o);
        cli_stop_note_set(NULL);
        if (err == MOOD_ECANCELLED && access(a.ckpt, F_OK) != 0) {
            fprintf(stderr, "\nmood: stopped before the first checkpoint: nothing to resume; run "
                            "the command again to start\n");
            cli_json_error_note("stopped before the first checkpoint: nothing to resume");
            rc = mood_train_stop_signal() ? 128 + mood_train_stop_signal() : 130;
        } else if (err == MOOD_ECANCELLED) {
            char msg[4200];
            snprintf(msg, sizeof msg, "stopped; the checkpoint %s continues with --resume", a.ckpt);
            fprintf(stderr, "\nmood: %s\n", msg);
            cli_json_error_note(msg);
            rc = mood_train_stop_signal() ? 128 + mood_train_stop_signal() : 130;
        } else if (err) {
            rc = cli_fail(err);
        } else if (!rc && !a.no_register && (rc = register_noted(&a, &res)) == 0) {
            rc = report(&a, &res);
        } else if (!rc && a.no_register) {
            if (!a.o.full && train_write_sidecar(&a) != 0) /* A1111 reads it beside the file */
                cli_warn("could not write the sidecar beside %s", a.output);
            rc = report(&a, &res);
        }
    }
    free(a.board);
    free(a.prompts);
    train_samples_dispose(&a);
    free(a.ckpt);
    free(a.csv);
    free(a.png);
    free(a.out_default);
    free(a.run_name);
    free(a.model_path);
    return rc;
}
