/*
 * cmd_train_record.c: what `mood train` keeps besides the LoRA. During the run, each sample
 * preview is written as OUT.samples/step-NNNNNN-I.png (step, prompt index) with the A1111
 * parameters text mood gen writes (cmd_gen_png.c), its prompt carrying <lora:NAME:1> so that
 * `mood gen --from-png` and A1111 render it again with the registered style. After the run the
 * style is registered in one import (mood_registry_import_file_ex) with:
 *   - A1111's sidecar (NAME.json: the trigger word), as any A1111 user's file would carry it;
 *   - the final previews as the style's previews (the others stay files, listed in the record);
 *   - the mood board as thumbnails (256 pixels on the longer side, JPEG; role "board");
 *   - the loss curve (roles "loss_csv" and "loss_plot");
 *   - the training record (JSON): base model, board, trigger, every training setting, the files
 *     written and the previews of every step.
 * Losing a thumbnail or a preview (a file removed meanwhile) is warned about, not fatal: the
 * LoRA is what matters.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cmd_gen.h"
#include "cli/cmd_train.h"

#define THUMB_SIDE  256
#define MAX_RECORD  (64u << 20)
#define SAMPLE_NAME "%s/step-%06lld-%zu.png"

char *train_beside(const char *out, const char *suffix)
{
    size_t n = strlen(out);
    char *p;
    if (n > 12 && strcmp(out + n - 12, ".safetensors") == 0)
        n -= 12;
    if (!(p = malloc(n + strlen(suffix) + 1)))
        return NULL;
    memcpy(p, out, n);
    strcpy(p + n, suffix);
    return p;
}

/* The file name part of a path. */
static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* ----- sample previews ----------------------------------------------------------------------- */

static int remember_prompt(train_args *a, const mood_train_sample *s)
{
    if (!a->sample_prompts_used) {
        if (!(a->sample_prompts_used = calloc(s->count, sizeof *a->sample_prompts_used)))
            return MOOD_ENOMEM;
        a->n_sample_prompts_used = s->count;
    }
    if (s->index < a->n_sample_prompts_used && !a->sample_prompts_used[s->index] &&
        !(a->sample_prompts_used[s->index] = strdup(s->gen->prompt)))
        return MOOD_ENOMEM;
    return 0;
}

static int remember_file(train_args *a, const mood_train_sample *s, const char *path)
{
    train_sample_file *f;
    if (a->n_samples == a->cap_samples) {
        size_t cap = a->cap_samples ? 2 * a->cap_samples : 16;
        train_sample_file *grown = realloc(a->samples, cap * sizeof *grown);
        if (!grown)
            return MOOD_ENOMEM;
        a->samples = grown;
        a->cap_samples = cap;
    }
    f = &a->samples[a->n_samples];
    *f = (train_sample_file){s->step, s->final, s->index, s->gen->seed, strdup(path)};
    if (!f->path)
        return MOOD_ENOMEM;
    a->n_samples++;
    return 0;
}

/* The preview's parameters text: as mood gen writes it, plus the LoRA and the training step. */
static int sample_text(char **text, train_args *a, const mood_train_sample *s)
{
    mood_params p;
    char step[32], *prompt;
    size_t n = strlen(s->gen->prompt) + strlen(a->o.name) + 32;
    int err;
    if (!(prompt = malloc(n)))
        return MOOD_ENOMEM;
    snprintf(prompt, n, "%s <lora:%s:1>", s->gen->prompt, a->o.name);
    snprintf(step, sizeof step, "%lld", (long long)s->step);
    mood_params_init(&p);
    err = gen_params_fill(&p, s->gen, s->model, prompt, s->gen->negative, 0);
    if (!err && s->final && !a->lora_hash[0]) {
        mood_file_hashes h;
        if (mood_hash_file(&h, a->output, NULL, NULL) == 0)
            mood_params_lora_hash(a->lora_hash, &h);
    }
    if (!err && s->final && a->lora_hash[0])
        err = mood_params_add_lora_hash(&p, a->o.name, a->lora_hash);
    if (!err)
        err = mood_params_set(&p, "Training step", step);
    if (!err)
        err = mood_params_format(text, &p);
    mood_params_dispose(&p);
    free(prompt);
    return err;
}

int train_write_sample(const mood_train_sample *s, void *payload)
{
    train_args *a = payload;
    char *text = NULL, *path = NULL;
    size_t n = strlen(a->samples_dir) + 64;
    int err = 0;
    if (mkdir(a->samples_dir, 0755) != 0 && errno != EEXIST)
        err = MOOD_EIO;
    else if (!(path = malloc(n)))
        err = MOOD_ENOMEM;
    if (!err) {
        snprintf(path, n, SAMPLE_NAME, a->samples_dir, (long long)s->step, s->index);
        if ((err = sample_text(&text, a, s)) == 0 &&
            (err = gen_write_png(path, s->image, s->gen->width, s->gen->height, text)) == 0 &&
            (err = remember_file(a, s, path)) == 0)
            err = remember_prompt(a, s);
    }
    if (err && !a->sample_failed) { /* a lost preview does not end hours of training */
        fprintf(stderr, "\n");
        cli_warn("could not write the sample preview %s: %s", path ? path : a->samples_dir,
                 err == MOOD_EIO && !path ? strerror(errno) : mood_error_last());
        a->sample_failed = 1;
    }
    mood_params_free_string(text);
    free(path);
    return 0;
}

void train_samples_dispose(train_args *a)
{
    for (size_t i = 0; i < a->n_samples; i++)
        free(a->samples[i].path);
    free(a->samples);
    for (size_t i = 0; i < a->n_sample_prompts_used; i++)
        free(a->sample_prompts_used[i]);
    free(a->sample_prompts_used);
    free(a->samples_dir);
}

/* ----- what the registry gets ---------------------------------------------------------------- */

typedef struct record {
    mood_style_file previews[64];
    size_t n_previews;
    mood_style_file *files;
    size_t n_files, cap_files;
    void **owned; /* data buffers, freed at the end */
    size_t n_owned;
    char *training;
} record;

/* Keeps data (freed with the record); data NULL (a failed allocation) or no room: MOOD_ENOMEM,
 * data freed. */
static int own(record *rec, void *data)
{
    void **grown = data ? realloc(rec->owned, (rec->n_owned + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(data);
        return MOOD_ENOMEM;
    }
    rec->owned = grown;
    rec->owned[rec->n_owned++] = data;
    return 0;
}

static void record_dispose(record *rec)
{
    for (size_t i = 0; i < rec->n_owned; i++)
        free(rec->owned[i]);
    free(rec->owned);
    free(rec->files);
    free(rec->training);
}

/* A whole (small) file into memory; NULL when it cannot be read. */
static void *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    void *data = NULL;
    long n;
    *size = 0;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && (size_t)n <= MAX_RECORD &&
        fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)n)) != NULL) {
        if (fread(data, 1, (size_t)n, f) == (size_t)n) {
            *size = (size_t)n;
        } else {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    return data;
}

static int add_file(record *rec, mood_style_file f)
{
    if (rec->n_files == rec->cap_files) {
        size_t cap = rec->cap_files ? 2 * rec->cap_files : 16;
        mood_style_file *grown = realloc(rec->files, cap * sizeof *grown);
        if (!grown)
            return MOOD_ENOMEM;
        rec->files = grown;
        rec->cap_files = cap;
    }
    rec->files[rec->n_files++] = f;
    return 0;
}

/* A file written by the run, as a style file of `role` (warned about and left out if gone). */
static int add_written(record *rec, const char *role, const char *path, const char *type)
{
    size_t size;
    void *data = read_all(path, &size);
    int err;
    if (!data) {
        cli_warn("%s: cannot read it back; the style is registered without it", path);
        return 0;
    }
    if ((err = own(rec, data)) != 0)
        return err;
    return add_file(rec, (mood_style_file){role, data, size, type, base_name(path), 0, 0});
}

/* The board again (the same files in the same order as the run's), one thumbnail per image. */
static int add_board(record *rec, const train_args *a)
{
    mood_board *b = NULL;
    mood_board_options bo;
    int err = 0;
    mood_board_options_init(&bo); /* thumbnails show the whole picture: no crop settings */
    if (mood_board_load(&b, a->board, a->n_board, &bo) != 0) {
        cli_warn("the mood board cannot be read again (%s): no thumbnails", mood_error_last());
        return 0;
    }
    for (size_t i = 0; i < mood_board_count(b) && !err; i++) {
        const mood_board_item *it = mood_board_item_at(b, i);
        uint8_t *jpeg = NULL;
        size_t size = 0;
        int w = 0, h = 0;
        if (mood_board_thumbnail(&jpeg, &size, &w, &h, it, THUMB_SIDE) != 0) {
            cli_warn("%s", mood_error_last());
            continue;
        }
        char *name = strdup(base_name(it->path)); /* the board goes before the import */
        if ((err = own(rec, jpeg)) != 0 || (err = own(rec, name)) != 0)
            break;
        err = add_file(rec, (mood_style_file){"board", jpeg, size, "image/jpeg", name, w, h});
    }
    mood_board_free(b);
    return err;
}

static int add_previews(record *rec, const train_args *a)
{
    int err = 0;
    for (size_t i = 0; i < a->n_samples && !err && rec->n_previews < 64; i++) {
        size_t size;
        void *data;
        if (!a->samples[i].final)
            continue;
        if (!(data = read_all(a->samples[i].path, &size))) {
            cli_warn("%s: cannot read the preview back", a->samples[i].path);
            continue;
        }
        char *origin = realpath(a->samples[i].path, NULL);
        if (!origin)
            origin = strdup(a->samples[i].path);
        if ((err = own(rec, data)) != 0 || (err = own(rec, origin)) != 0)
            break;
        rec->previews[rec->n_previews++] =
            (mood_style_file){"preview", data, size, "image/png", origin, 0, 0};
    }
    return err;
}

/* The absolute form of a path the run wrote or read (the record is read from anywhere); the path
 * as given when it cannot be resolved. Added to o under key. */
static void add_path(cJSON *o, const char *key, const char *path)
{
    char *abs = realpath(path, NULL);
    cJSON_AddStringToObject(o, key, abs ? abs : path);
    free(abs);
}

static void push_path(cJSON *arr, const char *path)
{
    char *abs = realpath(path, NULL);
    cJSON_AddItemToArray(arr, cJSON_CreateString(abs ? abs : path));
    free(abs);
}

/* ----- the training record ------------------------------------------------------------------- */

static const char *schedule_name(mood_lr_schedule s)
{
    return s == MOOD_LR_COSINE ? "cosine" : s == MOOD_LR_LINEAR ? "linear" : "constant";
}

/* The training side the run used (the model's default when --res was not given), as the
 * LoRA's ss_resolution "(W, H)" records it. */
static int trained_resolution(const train_args *a)
{
    mood_st_file *f = NULL;
    const char *v;
    int res = a->o.board_opts.resolution;
    if (mood_st_open(&f, a->output) == 0 && (v = mood_st_meta_get(f, "ss_resolution")) != NULL)
        sscanf(v, "(%d", &res);
    mood_st_close(f);
    return res;
}

/* The min-SNR gamma the run used (its default follows the model's prediction), as the LoRA's
 * ss_min_snr_gamma records it ("None": off). */
static double trained_min_snr(const train_args *a)
{
    mood_st_file *f = NULL;
    const char *v;
    double g = a->o.min_snr_gamma;
    if (mood_st_open(&f, a->output) == 0 && (v = mood_st_meta_get(f, "ss_min_snr_gamma")) != NULL)
        g = strcmp(v, "None") == 0 ? 0 : atof(v);
    mood_st_close(f);
    return g;
}

static void add_settings(cJSON *o, const train_args *a)
{
    const mood_train_options *t = &a->o;
    cJSON_AddStringToObject(o, "trigger", t->board_opts.trigger);
    cJSON_AddNumberToObject(o, "steps", (double)t->steps);
    cJSON_AddNumberToObject(o, "rank", t->rank);
    cJSON_AddNumberToObject(o, "alpha", t->alpha);
    cJSON_AddNumberToObject(o, "lr", t->lr);
    if (t->train_te)
        cJSON_AddNumberToObject(o, "te_lr", t->te_lr > 0 ? t->te_lr : t->lr);
    cJSON_AddBoolToObject(o, "train_te", t->train_te);
    cJSON_AddStringToObject(o, "targets", mood_train_targets_name(t->targets));
    cJSON_AddNumberToObject(o, "batch", t->batch);
    cJSON_AddNumberToObject(o, "accum", t->accum);
    cJSON_AddNumberToObject(o, "resolution", trained_resolution(a));
    cJSON_AddBoolToObject(o, "buckets", t->board_opts.buckets);
    cJSON_AddStringToObject(o, "schedule", schedule_name(t->lr_schedule));
    cJSON_AddNumberToObject(o, "warmup", (double)t->warmup);
    cJSON_AddNumberToObject(o, "min_snr_gamma", trained_min_snr(a));
    cJSON_AddNumberToObject(o, "noise_offset", t->noise_offset);
    cJSON_AddNumberToObject(o, "ip_noise_gamma", t->ip_noise_gamma);
    cJSON_AddStringToObject(o, "gradient_checkpointing",
                            t->checkpointing < 0 ? "auto"
                            : t->checkpointing   ? "on"
                                                 : "off");
    if (t->min_timestep || t->max_timestep) {
        cJSON_AddNumberToObject(o, "min_timestep", t->min_timestep);
        if (t->max_timestep)
            cJSON_AddNumberToObject(o, "max_timestep", t->max_timestep);
    }
    cJSON_AddStringToObject(o, "precision",
                            a->mo.cuda_device >= 0 && !a->mo.cuda_fp32 ? "bf16" : "fp32");
    cJSON_AddNumberToObject(o, "seed", (double)t->seed);
    cJSON_AddBoolToObject(o, "flip", t->flip);
}

static void add_samples(cJSON *o, const train_args *a)
{
    cJSON *s = cJSON_AddObjectToObject(o, "samples");
    cJSON *prompts = cJSON_AddArrayToObject(s, "prompts"), *images;
    cJSON_AddNumberToObject(s, "every", a->o.sample_every);
    cJSON_AddNumberToObject(s, "sampler_steps", a->o.sample_steps);
    cJSON_AddNumberToObject(s, "seed", (double)a->o.sample_seed);
    add_path(s, "folder", a->samples_dir);
    for (size_t i = 0; i < a->n_sample_prompts_used; i++)
        cJSON_AddItemToArray(
            prompts,
            cJSON_CreateString(a->sample_prompts_used[i] ? a->sample_prompts_used[i] : ""));
    images = cJSON_AddArrayToObject(s, "images");
    for (size_t i = 0; i < a->n_samples; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "step", (double)a->samples[i].step);
        cJSON_AddNumberToObject(e, "prompt", (double)a->samples[i].index);
        cJSON_AddNumberToObject(e, "seed", (double)a->samples[i].seed);
        cJSON_AddBoolToObject(e, "final", a->samples[i].final);
        add_path(e, "path", a->samples[i].path);
        cJSON_AddItemToArray(images, e);
    }
}

static char *training_json(const train_args *a)
{
    cJSON *o = cJSON_CreateObject(), *board = cJSON_AddArrayToObject(o, "board");
    char by[64], *text;
    snprintf(by, sizeof by, "mood %s", mood_version());
    cJSON_AddStringToObject(o, "trained_by", by);
    add_path(o, "base_model", a->o.model);
    for (size_t i = 0; i < a->n_board; i++)
        push_path(board, a->board[i]);
    add_settings(o, a);
    add_path(o, "lora", a->output);
    add_path(o, "loss_csv", a->csv);
    add_path(o, "loss_plot", a->png);
    if (a->n_samples)
        add_samples(o, a);
    text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

/* ----- registering --------------------------------------------------------------------------- */

/* A1111's sidecar (NAME.json: "activation text", "preferred weight") beside the LoRA, so the
 * import takes the trigger word as any A1111 user's file would give it: the trainer's
 * modelspec.trigger_phrase, empty when the captions never held the word
 * (mood_board_uses_trigger). */
char *train_trigger(const train_args *a)
{
    mood_st_file *st = NULL;
    const char *phrase;
    char *out;
    if (mood_st_open(&st, a->output) != 0)
        cli_warn("%s", mood_error_last());
    phrase = st ? mood_st_meta_get(st, "modelspec.trigger_phrase") : NULL;
    out = strdup(phrase ? phrase : a->o.board_opts.trigger);
    mood_st_close(st);
    return out;
}

int train_write_sidecar(const train_args *a)
{
    char *path = train_beside(a->output, ".json");
    cJSON *j = cJSON_CreateObject();
    char *text, *phrase = train_trigger(a);
    FILE *f;
    int rc = 2;
    int none = phrase && !*phrase;
    cJSON_AddStringToObject(j, "activation text", phrase ? phrase : "");
    free(phrase);
    if (none && a->o.board_opts.trigger[0]) /* an empty --trigger asked for none */
        fprintf(stderr,
                "mood: note: no caption of the board holds the trigger word '%s': the "
                "style needs none and gets none\n",
                a->o.board_opts.trigger);
    cJSON_AddNumberToObject(j, "preferred weight", 1.0);
    cJSON_AddStringToObject(j, "description", "trained by mood train");
    text = cJSON_Print(j);
    if (path && text && (f = fopen(path, "w"))) {
        rc = fputs(text, f) < 0 ? 2 : 0;
        rc = fclose(f) != 0 ? 2 : rc;
    }
    free(text);
    free(path);
    cJSON_Delete(j);
    return rc;
}

static int build_record(record *rec, const train_args *a)
{
    int err;
    if ((err = add_previews(rec, a)) != 0 || (err = add_board(rec, a)) != 0 ||
        (err = add_written(rec, "loss_csv", a->csv, "text/csv")) != 0 ||
        (err = add_written(rec, "loss_plot", a->png, "image/png")) != 0)
        return err;
    return (rec->training = training_json(a)) ? 0 : MOOD_ENOMEM;
}

long long train_style_steps_of_run(mood_registry *reg, const train_args *a, const char *name)
{
    char *json = NULL, *out = a->o.resume ? realpath(a->output, NULL) : NULL;
    long long steps = 0;
    if (out && mood_registry_show_json(&json, reg, name) == 0) {
        cJSON *root = cJSON_Parse(json), *t = cJSON_GetObjectItemCaseSensitive(root, "training");
        const char *lora = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "lora"));
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(t, "steps");
        if (lora && strcmp(lora, out) == 0 && cJSON_IsNumber(n) && n->valuedouble >= 1)
            steps = (long long)n->valuedouble;
        cJSON_Delete(root);
    }
    mood_registry_free_string(json);
    free(out);
    return steps;
}

void train_find_style(mood_registry *reg, train_args *a)
{
    mood_file_hashes h;
    char *name = NULL;
    if (a->style[0]) /* found before the run (its output is the new result now) */
        return;
    snprintf(a->style, sizeof a->style, "%s", a->o.name);
    if (!a->o.resume)
        return;
    /* the style made of the output as it is before this run: found by its SHA-256, whatever its
     * name (NAME-3 when NAME and NAME-2 were taken) */
    if (mood_hash_file(&h, a->output, NULL, NULL) == 0 &&
        mood_registry_style_by_hash(&name, reg, h.sha256) == 0 &&
        train_style_steps_of_run(reg, a, name) > 0)
        snprintf(a->style, sizeof a->style, "%s", name);
    mood_registry_free_string(name);
}

char *train_earlier_name(mood_registry *reg, const char *name, long long steps)
{
    char wanted[128], *out = NULL;
    int suffix = snprintf(wanted, sizeof wanted, "-step%lld", steps);
    /* NAME cut so that NAME-stepN is a valid name (100 characters at most) */
    snprintf(wanted, sizeof wanted, "%.*s-step%lld", 100 - suffix, name, steps);
    return mood_registry_name_suggest(&out, reg, wanted) == 0 ? out : NULL;
}

/* Renames the style just imported (res->name, named after its file) to NAME, or when NAME is
 * taken to `announced`, the free name check_registry_first said (the import may have chosen it
 * already); a --resume of the run that made NAME takes NAME over, the earlier result moving to
 * NAME-stepN (nothing of it is lost: its tags and notes go with it). */
static void name_registered(mood_registry *reg, train_args *a, mood_import_result *res,
                            const char *announced)
{
    const char *name = a->style;
    long long before = train_style_steps_of_run(reg, a, name);
    char *earlier;
    if (strcmp(res->name, name) == 0)
        return;
    if (before > 0 && (earlier = train_earlier_name(reg, name, before)) != NULL) {
        if (mood_registry_rename(reg, name, earlier) == 0)
            fprintf(stderr, "mood: note: the run's earlier result (step %lld) is style '%s' now\n",
                    before, earlier);
        mood_registry_free_string(earlier);
    }
    if (mood_registry_rename(reg, res->name, name) == 0)
        snprintf(res->name, sizeof res->name, "%s", name);
    else if (announced && strcmp(announced, res->name) != 0 &&
             mood_registry_rename(reg, res->name, announced) == 0)
        snprintf(res->name, sizeof res->name, "%s", announced);
}

int train_register(train_args *a, mood_import_result *res)
{
    mood_registry *reg = NULL;
    mood_import_extras x;
    record rec;
    int rc, err;
    memset(&rec, 0, sizeof rec);
    if (train_write_sidecar(a) != 0)
        cli_warn("could not write the sidecar beside %s; the style gets no trigger word",
                 a->output);
    if ((err = build_record(&rec, a)) != 0) {
        record_dispose(&rec);
        return cli_fail(err);
    }
    x = (mood_import_extras){rec.previews, rec.n_previews, rec.files, rec.n_files, rec.training};
    if ((rc = cli_registry_open(&reg)) == 0)
        train_find_style(reg, a);
    if (rc == 0 && train_style_steps_of_run(reg, a, a->style) == a->o.steps) {
        /* --resume of a finished run without more --steps: style NAME is this result already */
        fprintf(stderr, "mood: note: style '%s' is this run at step %lld already; nothing added\n",
                a->style, (long long)a->o.steps);
        snprintf(res->name, sizeof res->name, "%s", a->style);
        res->already = 1;
        mood_registry_close(reg);
    } else if (rc == 0) {
        char *announced = NULL; /* NAME, or the free name said when NAME was taken */
        if (mood_registry_name_suggest(&announced, reg, a->style) != 0)
            announced = NULL; /* then NAME or the import's own choice */
        err = mood_registry_import_file_ex(reg, res, a->output, &x, NULL, NULL);
        /* the registry names a style after its file; the style is NAME (-o may name the file
         * otherwise) */
        if (!err && !res->already)
            name_registered(reg, a, res, announced);
        mood_registry_free_string(announced);
        mood_registry_close(reg);
        rc = err ? cli_fail(err) : 0;
        if (err) /* the training is done: its file stays, to be imported once the cause is gone */
            fprintf(stderr,
                    "mood: the style was trained and written to %s, but not registered; "
                    "'mood import %s' adds it later\n",
                    a->output, a->output);
        if (!err && res->already)
            cli_warn("%s is in the registry already, as style '%s': nothing added", a->output,
                     res->name);
    }
    record_dispose(&rec);
    return rc;
}
