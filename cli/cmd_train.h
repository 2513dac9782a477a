/*
 * cmd_train.h: what the two files of `mood train` share. cmd_train.c parses the arguments,
 * shows the progress and runs the training; cmd_train_record.c writes the sample previews and
 * registers the style with what the training made (board thumbnails, final previews, loss curve,
 * the training record).
 */
#ifndef MOOD_CLI_CMD_TRAIN_H
#define MOOD_CLI_CMD_TRAIN_H

#include "cli/cli.h"
#include "mood/train.h"

/* One sample preview written during the run. */
typedef struct train_sample_file {
    int64_t step;
    int final;
    size_t index; /* its prompt */
    uint64_t seed;
    char *path;
} train_sample_file;

typedef struct train_args {
    mood_train_options o;
    mood_model_options mo; /* o.model_options: where the UNet trains */
    const char **board;
    size_t n_board;
    const char *output, *trigger, *device;
    const char *precision; /* --precision bf16|fp32; NULL: bf16 on a GPU */
    int json, no_register;
    char *ckpt, *csv, *png, *out_default;
    char *run_name;   /* NAME-k when this run writes NAME-k.safetensors (ss_output_name) */
    char *model_path; /* --model resolved (cli_find_model: a path, or a registered name) */
    /* sample previews */
    const char **prompts; /* --sample-prompt, in order */
    size_t n_prompts;
    int sample_every_set, sample_asked; /* --sample-every given; any --sample-* given */
    int checkpoint_every_set;           /* --checkpoint-every given */
    const char *lora_option;            /* the first of --rank, --alpha, --targets given */
    char *samples_dir;                  /* OUT.samples */
    char **sample_prompts_used;         /* the prompts as rendered (trigger filled in) */
    size_t n_sample_prompts_used;
    train_sample_file *samples;
    size_t n_samples, cap_samples;
    int sample_failed;  /* a preview could not be written (warned once) */
    char lora_hash[13]; /* AutoV3 (12 digits) of the written LoRA, for the final previews */
    /* the style the run registers as: --name, or for a --resume the style that holds the run
     * continued (NAME-2 when that run wrote NAME-2.safetensors); train_find_style sets it */
    char style[128];
} train_args;

/* OUT.safetensors -> OUT<suffix> (malloc'd), NULL when out of memory. */
char *train_beside(const char *out, const char *suffix);
/* mood_train_sample_fn (payload: the train_args): writes OUT.samples/step-NNNNNN-I.png with the
 * A1111 parameters mood gen writes (the prompt carries <lora:NAME:1>; the final previews also
 * "Lora hashes") and records it. A file that cannot be written is warned about once, not fatal. */
int train_write_sample(const mood_train_sample *s, void *payload);
/* Imports the LoRA with its sidecar, board thumbnails, final previews, loss curve and training
 * record (one all-or-nothing import) as style NAME; when NAME is taken, under a free name, except
 * for a --resume of the run that made style NAME: NAME then gets the continued run and the
 * earlier result keeps its style under NAME-stepN. Returns 0 or an exit status. */
int train_register(train_args *a, mood_import_result *res);
/* With --resume: the steps of style `name` when the registry has it from this run (its training
 * record names this run's output file), else 0. */
long long train_style_steps_of_run(mood_registry *reg, const train_args *a, const char *name);
/* The free name the earlier result of run NAME at `steps` moves to: NAME-stepN (NAME cut to
 * fit), malloc'd (mood_registry_free_string); NULL on error. */
/* Sets a->style, once (before the run: the output is read as it was): --name, or for a
 * --resume the style made of this run's output as it is (found by its SHA-256) when its
 * training record names that file. */
void train_find_style(mood_registry *reg, train_args *a);
char *train_earlier_name(mood_registry *reg, const char *name, long long steps);
/* Writes A1111's sidecar OUT.json beside the LoRA (activation text: the trainer's trigger phrase,
 * preferred weight 1). Returns 0 or 2 (warned about by the caller). */
int train_write_sidecar(const train_args *a);
/* The trigger word the written LoRA learnt (its modelspec.trigger_phrase: "" when the board's
 * captions never hold it), malloc'd; NULL when out of memory. */
char *train_trigger(const train_args *a);
void train_samples_dispose(train_args *a);

#endif /* MOOD_CLI_CMD_TRAIN_H */
