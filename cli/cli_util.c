/*
 * cli_util.c: shared pieces of the commands: error reporting and exit codes, the progress bar,
 * JSON output, and strict parsing of numbers and "FILE:W" arguments.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/cli_text.h"

static char json_error[4096]; /* the first error said, for the --json error document */

void cli_json_error_note(const char *message)
{
    if (!json_error[0])
        snprintf(json_error, sizeof json_error, "%s", message);
}

int cli_json_error_print(int exit_status)
{
    cJSON *o;
    if (!exit_status || !cli_json_wanted || cli_json_printed || !(o = cJSON_CreateObject()))
        return exit_status;
    cJSON_AddStringToObject(o, "error", json_error[0] ? json_error : "failed (see stderr)");
    cJSON_AddNumberToObject(o, "exit_status", exit_status);
    (void)cli_print_json(o);
    return exit_status;
}

int cli_fail(int code)
{
    const char *msg = mood_error_last()[0] ? mood_error_last() : mood_error_name(code);
    cli_progress_done();
    cli_text_report("error", msg);
    cli_json_error_note(msg);
    return mood_error_is_user(code) ? 1 : 2;
}

const char *cli_device_request;
mood_device cli_device; /* zero: the CPU */

int cli_device_select(mood_device *out)
{
    int rc = mood_device_select(out, cli_device_request);
    if (rc < 0)
        return cli_fail(rc);
    return 0;
}

void cli_device_note(void)
{
    static int said;
    if (cli_device.notice[0] && !said++)
        fprintf(stderr, "mood: note: %s\n", cli_device.notice);
}

int cli_usage_error(const char *command, const char *fmt, ...)
{
    va_list ap;
    char msg[4096], *v;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    v = cli_text_visible(msg, 0); /* the arguments quoted are the user's: shown, not obeyed */
    fprintf(stderr, "mood: error: %s\n(see 'mood help %s')\n", v ? v : msg, command);
    free(v);
    cli_json_error_note(msg);
    return 1;
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    char msg[4096];
    cli_progress_done();
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cli_text_report("warning", msg);
}

static int bar_drawn;
static double bar_start;
static double bar_last;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cli_terminal_columns(int fd)
{
    struct winsize ws;
    const char *env = getenv("COLUMNS");
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return env && atoi(env) > 0 ? atoi(env) : 80;
}

int cli_progress(const mood_progress *p, void *payload)
{
    double now = now_seconds(), frac, elapsed;
    int cols, width, filled, n;
    char line[256];
    (void)payload;
    if (!isatty(STDERR_FILENO) || p->total == 0)
        return 0;
    if (!bar_drawn) {
        bar_start = now;
        bar_last = 0;
    }
    /* Redraw at most 10 times a second, and always at the end. */
    if (bar_drawn && now - bar_last < 0.1 && p->done < p->total)
        return 0;
    bar_last = now;
    frac = (double)p->done / (double)p->total;
    if (frac > 1)
        frac = 1;
    /* the bar shrinks to fit the terminal, and the line is cut at its width: a line that wraps
     * leaves a new line at each redraw */
    cols = cli_terminal_columns(STDERR_FILENO);
    width = cols - 50 < 10 ? 10 : cols - 50 > 30 ? 30 : cols - 50;
    filled = (int)(frac * width);
    elapsed = now - bar_start;
    n = snprintf(line, sizeof line, "%-8.40s [%.*s%.*s] %5.1f%%  %.1fs", p->phase ? p->phase : "",
                 filled, "##############################", width - filled,
                 "..............................", frac * 100, elapsed);
    if (frac > 0.02 && frac < 1 && n > 0 && (size_t)n < sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, "  ~%.0fs left", elapsed / frac - elapsed);
    /* padded to clear what a longer line before left, never to the last column */
    fprintf(stderr, "\r%-*.*s", cols - 1 < 79 ? cols - 1 : 79, cols - 1, line);
    bar_drawn = 1;
    return 0;
}

void cli_progress_done(void)
{
    if (bar_drawn)
        fputc('\n', stderr);
    bar_drawn = 0;
}

int cli_print_json(cJSON *value)
{
    char *text = cJSON_Print(value);
    cJSON_Delete(value);
    if (!text) {
        fprintf(stderr, "mood: error: out of memory\n");
        return 2;
    }
    cli_text_json_puts(text); /* C1, DEL, U+2028/9 escaped: cJSON prints them raw */
    cJSON_free(text);
    return 0;
}

static char unlink_path[4096];
static volatile int unlink_set;

void cli_signal_unlink_set(const char *path)
{
    unlink_set = 0; /* a signal meanwhile removes nothing, never half a path */
    if (path && strlen(path) < sizeof unlink_path) {
        strcpy(unlink_path, path);
        unlink_set = 1;
    }
}

void cli_signal_unlink_run(void)
{
    if (unlink_set)
        unlink(unlink_path);
}

static char stop_note[1024];
static volatile int stop_note_len;

void cli_stop_note_set(const char *text)
{
    stop_note_len = 0; /* a signal meanwhile writes nothing, never half a note */
    if (!text)
        return;
    snprintf(stop_note, sizeof stop_note, "\nmood: %s\n", text);
    stop_note_len = (int)strlen(stop_note);
}

void cli_stop_note_write(void)
{
    if (stop_note_len > 0 && write(STDERR_FILENO, stop_note, (size_t)stop_note_len) < 0)
        stop_note_len = 0; /* (nothing else to do in a signal handler) */
}

static char claims[64][4096];
static volatile int n_claims;

void cli_claim_add(const char *path)
{
    if (n_claims < 64 && strlen(path) < sizeof claims[0]) {
        strcpy(claims[n_claims], path);
        n_claims++; /* after the copy: a signal between the two sees only whole paths */
    }
}

void cli_claims_remove(void)
{
    static const char text[] = CLI_CLAIM_TEXT;
    for (int i = 0; i < n_claims; i++) {
        char buf[sizeof text - 1];
        int fd = open(claims[i], O_RDONLY | O_CLOEXEC); /* open, read, close, unlink: all safe
                                                            in a signal handler */
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
        if (fd >= 0)
            close(fd);
        if (n == (ssize_t)sizeof buf && memcmp(buf, text, sizeof buf) == 0) /* not the image yet */
            unlink(claims[i]);
    }
}

void cli_claims_clear(void)
{
    n_claims = 0;
}

int cli_parse_double(const char *s, double *out)
{
    char *end;
    double v;
    if (!s || !*s || strpbrk(s, "xX")) /* decimal only: strtod would read 0x10 as 16 */
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int cli_parse_int(const char *s, long *out)
{
    char *end;
    long v;
    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!s || *s < '0' || *s > '9') /* strtoull would take "-1" as 2^64-1 */
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int cli_parse_weighted(const char *arg, char **path_out, double *w1, int *has_w1, double *w2,
                       int *has_w2)
{
    /* Split off up to two trailing ":number" fields; a trailing field that is not a number is
     * part of the path only if the path then exists, else it is an error. */
    char *copy = strdup(arg);
    char *fields[2] = {NULL, NULL};
    int n = 0;
    *has_w1 = *has_w2 = 0;
    if (!copy)
        return 2;
    while (n < 2) {
        char *colon = strrchr(copy, ':');
        double v;
        if (!colon || cli_parse_double(colon + 1, &v) != 0) {
            if (colon && access(copy, F_OK) != 0) {
                fprintf(stderr, "mood: error: '%s': weight '%s' is not a number\n", arg, colon + 1);
                free(copy);
                return 1;
            }
            break;
        }
        fields[n++] = colon + 1;
        *colon = '\0';
    }
    if (n == 2) { /* a third number is no part of a file name either: FILE:0.5:0.2:0.1 */
        char *colon = strrchr(copy, ':');
        double v;
        if (colon && cli_parse_double(colon + 1, &v) == 0 && access(copy, F_OK) != 0) {
            fprintf(stderr,
                    "mood: error: '%s': at most two weights, FILE:W (UNet) and FILE:W:W_TE "
                    "(text encoder)\n",
                    arg);
            free(copy);
            return 1;
        }
    }
    /* fields were collected right to left */
    if (n == 1) {
        cli_parse_double(fields[0], w1);
        *has_w1 = 1;
    } else if (n == 2) {
        cli_parse_double(fields[1], w1);
        cli_parse_double(fields[0], w2);
        *has_w1 = *has_w2 = 1;
    }
    /* the range of a style's weight (style create --weight): beyond it no image survives */
    if ((*has_w1 && fabs(*w1) > 100) || (*has_w2 && fabs(*w2) > 100)) {
        fprintf(stderr, "mood: error: '%s': a weight takes a number from -100 to 100\n", arg);
        free(copy);
        return 1;
    }
    *path_out = copy;
    return 0;
}

size_t cli_drop_repeated_names(const char **names, size_t n)
{
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < kept && strcasecmp(names[j], names[i]) != 0)
            j++;
        if (j == kept)
            names[kept++] = names[i];
    }
    return kept;
}

int cli_adapters_add(cli_adapters *l, const char *arg)
{
    double w = 1, wte = 1;
    int has_w, has_wte, rc;
    char *path;
    mood_weighted_adapter *grown = realloc(l->items, (l->n + 1) * sizeof *l->items);
    if (!grown) {
        fprintf(stderr, "mood: error: out of memory\n");
        return 2;
    }
    l->items = grown;
    if ((rc = cli_parse_weighted(arg, &path, &w, &has_w, &wte, &has_wte)) != 0)
        return rc;
    l->items[l->n] = (mood_weighted_adapter){.path = path, .unet = has_w ? w : 1.0};
    l->items[l->n].te = has_wte ? wte : l->items[l->n].unet;
    l->n++;
    return 0;
}

void cli_adapters_dispose(cli_adapters *l)
{
    for (size_t i = 0; i < l->n; i++)
        free((char *)l->items[i].path);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* Whether v is a valid value of option t: *n holds it for whole numbers (exact, as a seed needs),
 * *d for the rest. */
static int num_ok(const cli_num_opt *t, const char *v, long *n, uint64_t *u, double *d)
{
    if (t->kind == CLI_NUM_U64) /* the whole range, as torch.manual_seed and ComfyUI take */
        return cli_parse_u64(v, u) == 0;
    if (t->kind == CLI_NUM_REAL ? cli_parse_double(v, d) != 0 : cli_parse_int(v, n) != 0)
        return 0;
    double x = t->kind == CLI_NUM_REAL ? *d : (double)*n;
    return (t->lo_open ? x > t->lo : x >= t->lo) && (t->hi_open ? x < t->hi : x <= t->hi) &&
           (!t->multiple || *n % t->multiple == 0);
}

int cli_parse_number(const char *cmd, const cli_num_opt *t, size_t count, const char *s,
                     const char *v)
{
    double d = 0;
    long n = 0;
    uint64_t u = 0;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(s, t[i].name) != 0)
            continue;
        if (!num_ok(&t[i], v, &n, &u, &d))
            return cli_usage_error(cmd, "%s %s: takes %s", s, v, t[i].says);
        if (t[i].kind == CLI_NUM_INT)
            *(int *)t[i].dst = (int)n;
        else if (t[i].kind == CLI_NUM_I64)
            *(int64_t *)t[i].dst = (int64_t)n;
        else if (t[i].kind == CLI_NUM_U64)
            *(uint64_t *)t[i].dst = u;
        else
            *(double *)t[i].dst = d;
        if (t[i].given)
            *t[i].given = 1;
        if (t[i].given2)
            *t[i].given2 = 1;
        return 0;
    }
    return -1;
}

const char *cli_kohya_lora_option(const char *opt)
{
    /* kohya sd-scripts' networks/{svd_merge_lora,resize_lora,extract_lora_from_models,
     * merge_lora}.py */
    static const char *const map[][2] = {
        {"--new_rank", "--rank"},
        {"--new-rank", "--rank"},
        {"--new_conv_rank", "--conv-rank"},
        {"--dim", "--rank"},
        {"--conv_dim", "--conv-rank"},
        {"--save_to", "-o"},
        {"--save_precision", "--dtype"},
        {"--precision", "--dtype (the output's: mood computes in float32)"},
        {"--dynamic_method", "--dynamic METHOD=X"},
        {"--dynamic_param", "--dynamic METHOD=X"},
        {"--models", "the input files, each FILE[:W]"},
        {"--ratios", "FILE:W, the weight after each input"},
        {"--model_org", "--base"},
        {"--model_tuned", "--tuned"},
        {"--sd_model", "--model (bake)"},
        {"--clamp_quantile", "--clamp-quantile Q (merge and extract; default 0.99)"},
        {"--no_metadata", "none (the metadata is always written)"},
        {"--device", "mood --device D COMMAND ... (before the command)"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(opt, map[i][0]) == 0)
            return map[i][1];
    return NULL;
}

/* Whether cmd's help documents opt as taking a value: "  --nsfw LEVEL   ..." or "-o, --output
 * FILE" (a single space, then the value's name), where a flag is followed by two spaces or the
 * end of the line. */
static int documented_with_value(const char *cmd, const char *opt)
{
    size_t n = strlen(opt);
    for (const cli_command *c = cli_commands; c->name; c++) {
        if (strcmp(c->name, cmd) != 0)
            continue;
        for (const char *p = strstr(c->help, opt); p; p = strstr(p + 1, opt)) {
            char before = p == c->help ? ' ' : p[-1];
            const char *after = p + n;
            if (before != ' ' && before != ',' && before != '[' && before != '(')
                continue;
            if (after[0] == ',' && after[1] == ' ') /* "-o, --output FILE": the long name's */
                after += 2 + strcspn(after + 2, " ,;)\n");
            if (after[0] == ';' || after[0] == ')') /* "(or --resolution; ...)": --res's */
                return 1;
            if (after[0] == ' ' && after[1] && after[1] != ' ' && after[1] != '\n')
                return 1;
        }
    }
    return 0;
}

int cli_unknown_option(const char *cmd, const char *opt)
{
    const char *mood = cli_kohya_lora_option(opt);
    if (documented_with_value(cmd, opt)) /* before kohya's names: train has --device itself */
        return cli_usage_error(cmd, "option '%s' needs a value", opt);
    if (mood)
        return cli_usage_error(cmd, "%s is kohya's spelling; in mood: %s", opt, mood);
    return cli_usage_error(cmd, "unknown option '%s'", opt);
}

int cli_check_safetensors_output(const char *cmd, const char *path, const char *what)
{
    size_t n = strlen(path), ext = strlen(".safetensors");
    /* A1111 and ComfyUI list only .safetensors; a .ckpt or .pt name holding safetensors bytes
     * would be torch.load()ed, and -o doc.txt would replace doc.txt */
    if (n > ext && strcasecmp(path + n - ext, ".safetensors") == 0)
        return 0;
    return cli_usage_error(cmd,
                           "-o %s: the %s is a .safetensors file; give a name ending in "
                           ".safetensors",
                           path, what);
}

int cli_parse_dtype(mood_dtype *out, const char *s)
{
    /* mood's and kohya's names, torch's (float16, bfloat16, half) and safetensors' (F16, ...) */
    static const struct {
        const char *name;
        mood_dtype dt;
    } names[] = {{"f32", MOOD_DTYPE_F32},      {"fp32", MOOD_DTYPE_F32}, {"float", MOOD_DTYPE_F32},
                 {"float32", MOOD_DTYPE_F32},  {"f16", MOOD_DTYPE_F16},  {"fp16", MOOD_DTYPE_F16},
                 {"float16", MOOD_DTYPE_F16},  {"half", MOOD_DTYPE_F16}, {"bf16", MOOD_DTYPE_BF16},
                 {"bfloat16", MOOD_DTYPE_BF16}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].dt;
            return 0;
        }
    return -1;
}

int cli_path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

char *cli_model_by_name(const char *name)
{
    char *home = NULL;
    const char *exts[] = {"", ".safetensors"};
    if (!*name || strchr(name, '/') || name[0] == '.')
        return NULL; /* a path, not a name */
    if (mood_registry_default_home(&home) == 0) {
        for (int i = 0; i < 2; i++) {
            size_t n = strlen(home) + strlen(name) + 32;
            char *p = malloc(n);
            if (!p)
                break;
            snprintf(p, n, "%s/models/%s%s", home, name, exts[i]);
            if (cli_path_exists(p)) {
                mood_registry_free_string(home);
                return p;
            }
            free(p);
        }
        mood_registry_free_string(home);
    }
    if (strcmp(name, "mood-tiny") == 0) { /* the bundled model, before `mood demo` links it */
        char data[4096];
        if (mood_data_dir(data, sizeof data) == 0) {
            size_t n = strlen(data) + sizeof "/mood-tiny";
            char *p = malloc(n);
            if (p)
                snprintf(p, n, "%s/mood-tiny", data);
            if (p && cli_path_exists(p))
                return p;
            free(p);
        }
    }
    return NULL;
}

int cli_find_model(char **out, const char *arg)
{
    if (!arg)
        arg = getenv("MOOD_MODEL");
    if (!arg || !*arg) {
        fprintf(stderr, "mood: error: no model: give --model PATH_OR_NAME (or set MOOD_MODEL)\n");
        return 1;
    }
    if (cli_path_exists(arg)) {
        *out = strdup(arg);
        return *out ? 0 : 2;
    }
    if ((*out = cli_model_by_name(arg)) != NULL)
        return 0;
    fprintf(stderr, "mood: error: model '%s': no such file, folder or name in $MOOD_HOME/models\n",
            arg);
    return 2;
}
