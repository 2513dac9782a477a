/*
 * cmd_demo.c: `mood demo`, mood's main job on a machine with nothing but a CPU: registers the
 * bundled small base model mood-tiny, trains a style LoRA from the bundled five-image Twemoji
 * mood board (mood-tiny learnt its emoji from the glossy Noto set), generates eight subjects the
 * board does not show without and with the style (same seeds), and writes the images, a
 * before/after grid and a one-page HTML report. It runs the same code as `mood train` and
 * `mood gen` (their commands are called with the demo's arguments).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "mood/image.h"
#include "mood/registry.h"
#include "mood/tokenizer.h"

const char cmd_demo_help[] =
    "usage: mood demo [--out DIR] [--steps N] [--model PATH] [--board DIR] [--json]\n\n"
    "Shows what mood is for, on the CPU, in a few minutes:\n"
    "  1. registers mood-tiny, the small base model that ships with mood (it learnt 1,417 emoji\n"
    "     in Google's glossy Noto style), as model 'mood-tiny' in your registry;\n"
    "  2. trains a style LoRA from five emoji in Twitter's flat Twemoji style\n"
    "     (examples/moodboards/twemoji) and registers it as style 'twemoji-demo';\n"
    "  3. generates eight subjects the mood board does not show, without and with the style\n"
    "     (same seeds), and writes them, a before/after grid and a one-page report.\n\n"
    "  --out DIR     where the images and the report go (default mood-demo)\n"
    "  --steps N     training steps of the style (default 300)\n"
    "  --model PATH  another base model folder (default: mood-tiny from mood's data folder)\n"
    "  --board DIR   another mood board (default: the bundled Twemoji board)\n"
    "  --json        print what was written as JSON: out, grid, report, lora, style,\n"
    "                train_s, generate_s (seconds)\n\n"
    "Afterwards: mood gen \"a cat face\" --model mood-tiny --style twemoji-demo\n\n"
    "mood-tiny (data/mood-tiny: what it is, its licence and how well it draws in its README)\n"
    "is made by tools/mood_tiny/train.sh, with mood's own trainer.\n";

#define DEMO_STYLE "twemoji-demo"
#define N_PROMPTS  8
/* The guidance scale mood-tiny draws cleanest at: at mood gen's default 7 its images carry a
 * speckle of over-driven colour (bench/RESULTS.md, session 5: nearest-neighbour top-1 86% at 7,
 * 93% at 3). bench/style_transfer.sh measures the demo's images at this scale (CFG there):
 * change both together. */
#define DEMO_CFG "3"

/* Subjects of the Noto set that the Twemoji board (grinning face, cat face, red apple, rocket,
 * hot beverage) does not show. */
static const char *const prompts[N_PROMPTS] = {"dog face", "banana", "bicycle",    "snowman",
                                               "guitar",   "ghost",  "strawberry", "octopus"};

typedef struct demo {
    const char *out, *model, *board;
    int steps;
    int json;
    char data[4096], model_buf[4200], board_buf[4200], lora[4200];
    double train_s, gen_s;
} demo;

/* mkdir -p. */
static int make_dirs(const char *path)
{
    char buf[4200];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            break;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "mood: error: %s: %s\n", path, strerror(errno));
        return 2;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse_args(demo *d, int argc, char **argv)
{
    d->out = "mood-demo";
    d->steps = 300;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "--json"))
            d->json = 1;
        else if (!v)
            return cli_unknown_option("demo", s);
        else if (!strcmp(s, "--out") && !*v)
            return cli_usage_error("demo", "--out needs a folder name");
        else if (!strcmp(s, "--out"))
            d->out = v, i++;
        else if (!strcmp(s, "--model"))
            d->model = v, i++;
        else if (!strcmp(s, "--board"))
            d->board = v, i++;
        else if (!strcmp(s, "--steps")) {
            const cli_num_opt steps = {"--steps",
                                       CLI_NUM_INT,
                                       &d->steps,
                                       1,
                                       100000,
                                       0,
                                       0,
                                       0,
                                       NULL,
                                       NULL,
                                       "a number of steps, 1 to 100000"};
            if (cli_parse_number("demo", &steps, 1, s, v) != 0)
                return 1;
            i++;
        } else
            return s[0] == '-' ? cli_unknown_option("demo", s)
                               : cli_usage_error("demo", "unexpected argument '%s'", s);
    }
    return 0;
}

/* The bundled model and board: <data>/mood-tiny, and <data>/moodboards/twemoji where mood is
 * installed (share/mood) or <data>/../examples/moodboards/twemoji in the source tree. */
static int find_inputs(demo *d)
{
    int err = mood_data_dir(d->data, sizeof d->data);
    if (!d->model || !d->board) {
        if (err)
            return cli_fail(err);
        snprintf(d->model_buf, sizeof d->model_buf, "%s/mood-tiny", d->data);
        snprintf(d->board_buf, sizeof d->board_buf, "%s/moodboards/twemoji", d->data);
        if (access(d->board_buf, R_OK) != 0) {
            char *src = NULL; /* the source tree: printed without the "data/.." detour */
            snprintf(d->board_buf, sizeof d->board_buf, "%s/../examples/moodboards/twemoji",
                     d->data);
            if ((src = realpath(d->board_buf, NULL)) != NULL)
                snprintf(d->board_buf, sizeof d->board_buf, "%s", src);
            free(src);
        }
    }
    d->model = d->model ? d->model : d->model_buf;
    d->board = d->board ? d->board : d->board_buf;
    if (d->model == d->model_buf && access(d->model, R_OK) != 0) {
        fprintf(stderr,
                "mood: error: demo: %s does not exist: mood-tiny is not in this checkout "
                "(tools/mood_tiny/train.sh makes it); give --model DIR\n",
                d->model);
        return 2;
    }
    if (access(d->model, R_OK) != 0 || access(d->board, R_OK) != 0) {
        int model = access(d->model, R_OK) != 0,
            given = model ? d->model != d->model_buf : d->board != d->board_buf;
        if (given) /* what the user typed: no hint about mood's own data */
            fprintf(stderr, "mood: error: demo: --%s %s: %s\n", model ? "model" : "board",
                    model ? d->model : d->board, strerror(errno));
        else
            fprintf(stderr,
                    "mood: error: demo: %s not found (set MOOD_DATA to mood's data folder, or "
                    "give --model and --board)\n",
                    model ? d->model : d->board);
        return 2;
    }
    return 0;
}

/* $MOOD_HOME/models/mood-tiny -> the bundled model (a link, replaced when it points elsewhere),
 * so that `--model mood-tiny` finds it. A model given with --model is used where it is and not
 * registered under mood-tiny's name. */
static int register_model(const demo *d)
{
    char *home = NULL, dir[4200], link[4300], target[4096];
    if (d->model != d->model_buf)
        return 0;
    int err = mood_registry_default_home(&home);
    if (err)
        return cli_fail(err);
    snprintf(dir, sizeof dir, "%s/models", home);
    mood_registry_free_string(home);
    snprintf(link, sizeof link, "%s/mood-tiny", dir);
    if (!realpath(d->model, target))
        return fprintf(stderr, "mood: error: %s: %s\n", d->model, strerror(errno)), 2;
    if (make_dirs(dir) != 0)
        return 2;
    unlink(link); /* an older link (a moved checkout); a real folder is left alone */
    if (symlink(target, link) != 0 && errno != EEXIST)
        return fprintf(stderr, "mood: error: %s: %s\n", link, strerror(errno)), 2;
    fprintf(stderr, "registered model mood-tiny: %s\n", target);
    return 0;
}

/* Runs a mood command with its standard output silenced (the demo prints its own summary). */
static int run_quiet(int (*cmd)(int, char **), int argc, char **argv)
{
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    FILE *null = fopen("/dev/null", "w");
    if (saved >= 0 && null)
        dup2(fileno(null), STDOUT_FILENO);
    int rc = cmd(argc, argv);
    fflush(stdout);
    if (saved >= 0) {
        dup2(saved, STDOUT_FILENO);
        close(saved);
    }
    if (null)
        fclose(null);
    return rc;
}

/* The demo's style of an earlier run is kept under this name while the new one trains: put back
 * if training fails or is stopped, removed once the new style is registered. */
#define DEMO_STYLE_KEPT DEMO_STYLE "-previous"

/* Moves an earlier run's style aside (keep != 0), or after training puts it back (the run
 * failed) or removes it (the run succeeded). Registry errors here lose nothing and are ignored:
 * a first run has no earlier style. */
static void earlier_style(int keep, int trained)
{
    mood_registry *r = NULL;
    if (mood_registry_open(&r, NULL) != 0)
        return;
    if (keep) {
        int stale = mood_registry_rm(r, DEMO_STYLE_KEPT); /* left by a killed run, if any */
        int moved = mood_registry_rename(r, DEMO_STYLE, DEMO_STYLE_KEPT); /* none at first */
        (void)stale, (void)moved;
    } else if (trained) {
        int gone = mood_registry_rm(r, DEMO_STYLE_KEPT);
        (void)gone;
    } else if (mood_registry_rename(r, DEMO_STYLE_KEPT, DEMO_STYLE) == 0) {
        fprintf(stderr, "the style %s of the earlier run is kept\n", DEMO_STYLE);
    }
    mood_registry_close(r);
}

/* Trains the style (replacing the demo's style of an earlier run once the new one is in). */
static int train_style(demo *d)
{
    char steps[32], *argv[32];
    int n = 0;
    earlier_style(1, 0);
    snprintf(d->lora, sizeof d->lora, "%s/%s.safetensors", d->out, DEMO_STYLE);
    snprintf(steps, sizeof steps, "%d", d->steps);
    const char *args[] = {"train",  "--name", DEMO_STYLE, "--board", d->board, "--model",
                          d->model, "--res",  "64",       "--steps", steps,    "--batch",
                          "5",      "--rank", "8",        "--alpha", "8",      "--lr",
                          "1e-3",   "--seed", "0",        "-o",      d->lora};
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++)
        argv[n++] = (char *)args[i];
    fprintf(stderr, "\ntraining style %s from %s (%d step%s)\n", DEMO_STYLE, d->board, d->steps,
            d->steps == 1 ? "" : "s");
    double t0 = now_s();
    int rc = run_quiet(cmd_train, n, argv);
    d->train_s = now_s() - t0;
    earlier_style(0, rc == 0);
    if (rc == 130)
        fprintf(stderr, "stopped: run mood demo again to start over\n");
    return rc;
}

/* out/before-I.png or out/after-I.png for prompt i. */
static void image_path(char *buf, size_t size, const demo *d, int after, int i)
{
    snprintf(buf, size, "%s/%s-%d.png", d->out, after ? "after" : "before", i + 1);
}

static int generate(demo *d)
{
    char path[4200], seed[32];
    double t0 = now_s();
    fprintf(stderr, "\ngenerating %d subjects without and with the style\n", N_PROMPTS);
    for (int i = 0; i < N_PROMPTS; i++)
        for (int after = 0; after < 2; after++) {
            image_path(path, sizeof path, d, after, i);
            snprintf(seed, sizeof seed, "%d", 100 + i);
            char *argv[] = {"gen",     (char *)prompts[i],
                            "--model", (char *)d->model,
                            "--seed",  seed,
                            "--steps", "30",
                            "--cfg",   DEMO_CFG,
                            "--json", /* its report goes to the silenced stdout, not stderr */
                            "-o",      path,
                            "--style", DEMO_STYLE};
            int rc = run_quiet(cmd_gen, after ? 15 : 13, argv);
            if (rc)
                return rc;
            mood_progress p = {"generate", (uint64_t)(2 * i + after + 1), 2 * N_PROMPTS};
            cli_progress(&p, NULL);
        }
    cli_progress_done();
    d->gen_s = now_s() - t0;
    return 0;
}

/* grid.png: the images without the style on the top row, with it below, each shown 2x. */
static int write_grid(const demo *d, char *grid_path, size_t size)
{
    mood_image *img[2 * N_PROMPTS] = {0}, *grid = NULL;
    char path[4200];
    int err = 0;
    for (int k = 0; k < 2 * N_PROMPTS && !err; k++) {
        image_path(path, sizeof path, d, k >= N_PROMPTS, k % N_PROMPTS);
        err = mood_image_load(&img[k], path);
    }
    if (!err)
        err = mood_image_grid(&grid, (const mood_image *const *)img, 2 * N_PROMPTS, 2);
    snprintf(grid_path, size, "%s/grid.png", d->out);
    if (!err)
        err = mood_image_write_png(grid_path, grid, NULL, NULL, 0);
    for (int k = 0; k < 2 * N_PROMPTS; k++)
        mood_image_free(img[k]);
    mood_image_free(grid);
    return err ? cli_fail(err) : 0;
}

/* The command to try next, as it works from here: this executable by its path (it need not be
 * on PATH) and the registry the demo used when $MOOD_HOME chose it (tools/demo.sh does). */
/* The command to try the style: on the model it was trained on (mood-tiny, or --model's). */
static void try_command(const demo *d, char *buf, size_t size)
{
    char exe[4096];
    const char *home = getenv("MOOD_HOME");
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    snprintf(exe + (n > 0 ? n : 0), sizeof exe - (size_t)(n > 0 ? n : 0), "%s",
             n > 0 ? "" : "mood");
    snprintf(buf, size, "%s%s%s%s gen \"a cat face\" --model %s%s%s --style %s",
             home && *home ? "MOOD_HOME=" : "", home && *home ? home : "", home && *home ? " " : "",
             exe, d->model == d->model_buf ? "" : "'",
             d->model == d->model_buf ? "mood-tiny" : d->model, d->model == d->model_buf ? "" : "'",
             DEMO_STYLE);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Copies the board's images (the folder's PNG, JPEG, WebP and BMP files in name order, at most
 * MAX_BOARD) into the output folder as board-N.png, so that the report travels with its folder;
 * returns how many. */
enum { MAX_BOARD = 12 };
static int copy_board(const demo *d)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".webp", ".bmp"};
    char *names[256], path[8400];
    int n = 0, copied = 0;
    DIR *dir = opendir(d->board);
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL && n < 256) {
        const char *dot = strrchr(e->d_name, '.');
        for (size_t k = 0; dot && k < sizeof ext / sizeof ext[0]; k++)
            if (strcasecmp(dot, ext[k]) == 0 && (names[n] = strdup(e->d_name)) != NULL) {
                n++;
                break;
            }
    }
    if (dir)
        closedir(dir);
    qsort(names, (size_t)n, sizeof names[0], by_name);
    for (int i = 0; i < n; i++) {
        mood_image *img = NULL;
        snprintf(path, sizeof path, "%s/%s", d->board, names[i]);
        if (copied < MAX_BOARD && mood_image_load(&img, path) == 0) {
            snprintf(path, sizeof path, "%s/board-%d.png", d->out, copied + 1);
            copied += mood_image_write_png(path, img, NULL, NULL, 0) == 0;
        }
        mood_image_free(img);
        free(names[i]);
    }
    return copied;
}

/* report.html: one page with the board, the before/after pairs, the loss curve and timings. */
static int write_report(const demo *d, char *report, size_t size)
{
    char try_line[8400];
    try_command(d, try_line, sizeof try_line);
    snprintf(report, size, "%s/report.html", d->out);
    FILE *f = fopen(report, "w");
    if (!f)
        return fprintf(stderr, "mood: error: %s: %s\n", report, strerror(errno)), 2;
    fprintf(f,
            "<!doctype html><meta charset=utf-8><title>mood demo</title>\n"
            "<style>body{font:15px sans-serif;max-width:60em;margin:2em auto}"
            "img{image-rendering:pixelated;width:128px}td{text-align:center}</style>\n"
            "<h1>mood demo: a style from a mood board</h1>\n"
            "<p>Base model <b>%s</b>. Style <b>%s</b>, a LoRA trained in %.0f s on the CPU for "
            "%d steps from this mood board%s:</p><p>\n",
            d->model == d->model_buf ? "mood-tiny</b> (trained on 1,417 Noto emoji)<b>" : d->model,
            DEMO_STYLE, d->train_s, d->steps,
            d->board == d->board_buf ? " (Twemoji, CC-BY 4.0, Twitter)" : "");
    for (int i = 0, n = copy_board(d); i < n; i++)
        fprintf(f, "<img src=\"board-%d.png\"> ", i + 1);
    fprintf(f, "</p>\n<h2>Subjects the board does not show</h2>\n<table><tr><th></th>");
    for (int i = 0; i < N_PROMPTS; i++)
        fprintf(f, "<th>%s</th>", prompts[i]);
    for (int after = 0; after < 2; after++) {
        fprintf(f, "</tr>\n<tr><th>%s</th>", after ? "with the style" : "base model");
        for (int i = 0; i < N_PROMPTS; i++)
            fprintf(f, "<td><img src=\"%s-%d.png\"></td>", after ? "after" : "before", i + 1);
    }
    fprintf(f,
            "</tr></table>\n<p>Same prompt and seed in each column; 30 Euler a steps, CFG " DEMO_CFG
            "; %d images in %.1f s.</p>\n"
            "<p>What to expect: mood-tiny is small and has seen each subject drawn once, so a "
            "style learnt from five pictures moves its pictures only a little toward the board's "
            "look (the silhouette more than the flat colours) and can blur them; mood's "
            "bench/RESULTS.md measures it. <code>mood train --board DIR --model BASE</code> trains "
            "the same kind of style on a full Stable Diffusion model.</p>\n"
            "<h2>Training loss</h2><p><img style=\"width:480px\" src=\"%s.loss.png\"></p>\n"
            "<p>Try: <code>%s</code></p>\n",
            2 * N_PROMPTS, d->gen_s, DEMO_STYLE, try_line);
    return fclose(f) == 0 ? 0 : (fprintf(stderr, "mood: error: %s: write failed\n", report), 2);
}

static int print_result(const demo *d, const char *grid, const char *report)
{
    if (d->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "out", d->out);
        cJSON_AddStringToObject(o, "grid", grid);
        cJSON_AddStringToObject(o, "report", report);
        cJSON_AddStringToObject(o, "lora", d->lora);
        cJSON_AddStringToObject(o, "style", DEMO_STYLE);
        cJSON_AddNumberToObject(o, "train_s", d->train_s); /* seconds, as gen's load_s */
        cJSON_AddNumberToObject(o, "generate_s", d->gen_s);
        return cli_print_json(o);
    }
    printf("\nstyle %s trained in %.0f s; %d images in %.1f s\n", DEMO_STYLE, d->train_s,
           2 * N_PROMPTS, d->gen_s);
    printf("before/after grid: %s\nreport:            %s\nimages:            %s/before-*.png, "
           "%s/after-*.png\n",
           grid, report, d->out, d->out);
    char try_line[8400];
    try_command(d, try_line, sizeof try_line);
    printf("try:               %s\n", try_line);
    return 0;
}

int cmd_demo(int argc, char **argv)
{
    demo d;
    char grid[4300], report[4300];
    int rc;
    memset(&d, 0, sizeof d);
    if ((rc = parse_args(&d, argc, argv)) != 0 || (rc = find_inputs(&d)) != 0)
        return rc;
    if (make_dirs(d.out) != 0)
        return 2;
    cli_device_note();
    if ((rc = register_model(&d)) != 0 || (rc = train_style(&d)) != 0 || (rc = generate(&d)) != 0 ||
        (rc = write_grid(&d, grid, sizeof grid)) != 0 ||
        (rc = write_report(&d, report, sizeof report)) != 0)
        return rc;
    return print_result(&d, grid, report);
}
