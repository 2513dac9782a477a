/*
 * cli.h: what the command files of `mood` share: the command table entry, error reporting with
 * the documented exit codes (0 ok, 1 bad input, 2 environment), the stderr progress bar, and
 * JSON printing. Commands use only the public API in include/mood/.
 */
#ifndef MOOD_CLI_CLI_H
#define MOOD_CLI_CLI_H

#include <cjson/cJSON.h>
#include <stdio.h>

#include "mood/mood.h"

typedef struct cli_command {
    const char *name;                  /* "inspect", "lora stack", ... */
    const char *summary;               /* one line for `mood help` */
    const char *help;                  /* full text for `mood help NAME` */
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} cli_command;

/* Prints "mood: error: <mood_error_last()>" and returns the exit status for `code`. */
int cli_fail(int code);

/* A file a signal that stops the command should remove (gen's preview: a convenience of the
 * run, not an output); NULL: none. cli_signal_unlink_run is async-signal-safe. */
void cli_signal_unlink_set(const char *path);
void cli_signal_unlink_run(void);

/* What a signal that stops the command now should say ("mood: TEXT" on stderr, from the
 * signal handler): set by a command for a phase whose stop leaves something to do (train's
 * registration); NULL clears it. cli_stop_note_write is async-signal-safe. */
void cli_stop_note_set(const char *text);
void cli_stop_note_write(void);

/* The width of the terminal on fd, else $COLUMNS, else 80. */
int cli_terminal_columns(int fd);

/* Placeholder files a command claimed (gen's default image names; their text starts with
 * CLI_CLAIM_TEXT and the process id) that a signal must not leave behind: cli_claim_add records
 * one (at most 64), cli_claims_remove (async-signal-safe, called by the signal handler) removes
 * those still placeholders, cli_claims_clear forgets them all. */
#define CLI_CLAIM_TEXT "mood gen: this name is taken for an image being made by process "
void cli_claim_add(const char *path);
void cli_claims_remove(void);
void cli_claims_clear(void);
/* Prints "mood: error: ..." for a usage problem and returns 1. */
int cli_usage_error(const char *command, const char *fmt, ...) MOOD_PRINTF(2, 3);
/* Prints a warning line to stderr. */
void cli_warn(const char *fmt, ...) MOOD_PRINTF(1, 2);
/* Whether something (a file, a folder) is at path p. */
int cli_path_exists(const char *p);

/* A progress callback drawing a bar on stderr when it is a terminal (silent otherwise). */
int cli_progress(const mood_progress *p, void *payload);
/* Ends the bar's line, if one was drawn. */
void cli_progress_done(void);

/* Prints a JSON value to stdout (pretty, newline-terminated) and frees it. Returns 0 or 2. */
int cli_print_json(cJSON *value);

/* Parses "PATH[:W[:W2]]" (weights optional). Windows-style drive letters are not a concern
 * here, but a path containing ':' can be given as "PATH::" ... to keep it simple, the weights
 * are taken from the right only when they parse as numbers. Returns 0 or 1 (bad number). */
int cli_parse_weighted(const char *arg, char **path_out, double *w1, int *has_w1, double *w2,
                       int *has_w2);

/* LoRAs given on the command line as FILE[:W[:W_TE]]; the list owns the paths. */
typedef struct cli_adapters {
    mood_weighted_adapter *items;
    size_t n;
} cli_adapters;
/* Appends one argument (W defaults to 1, W_TE to W). Returns 0, or the exit status (1 bad weight,
 * 2 out of memory) after printing the error. */
int cli_adapters_add(cli_adapters *l, const char *arg);
/* Keeps the first of names that the registry takes for one style (its names are unique up to
 * ASCII case: SQLite's NOCASE), so that `rm a A a` or `pack export a A` act on and report the one
 * style once. Returns the new count. */
size_t cli_drop_repeated_names(const char **names, size_t n);
void cli_adapters_dispose(cli_adapters *l);

/* The mood option for a kohya script's spelling (--new_rank: "--rank"), NULL when none. */
const char *cli_kohya_lora_option(const char *opt);
/* The usage error of an option `cmd` does not have, naming mood's for a kohya spelling. */
int cli_unknown_option(const char *cmd, const char *opt);
/* 0 when the output path ends in .safetensors, else a usage error naming `what` it holds. */
int cli_check_safetensors_output(const char *cmd, const char *path, const char *what);
/* "f32"/"fp32"/"float", "f16"/"fp16" or "bf16" (and torch's and safetensors' names: float16,
 * bfloat16, half, F16, ...); returns 0 on success. */
int cli_parse_dtype(mood_dtype *out, const char *s);

/* The base model a --model argument names (malloc'd into *out): a file or folder as given, else a
 * name under $MOOD_HOME/models/ (NAME, NAME.safetensors: what mood demo registers), else
 * "mood-tiny" is the bundled model in mood's data folder; with no argument, $MOOD_MODEL.
 * Returns 0, or the exit status after printing why. */
int cli_find_model(char **out, const char *arg);
/* A model mood knows by name alone (malloc'd): $MOOD_HOME/models/NAME[.safetensors], or the
 * bundled mood-tiny; NULL when none, or when `name` is a path (holds '/' or starts with '.'). */
char *cli_model_by_name(const char *name);

/* The compute device: the global option `mood --device cpu|cuda[:N]|auto <command>` (NULL when
 * not given; $MOOD_DEVICE is the fallback, read by the library). */
extern const char *cli_device_request;
/* --json was given (main.c sees it among the command's options), and a JSON document has been
 * printed on stdout (cli_text_json_puts): a command that fails before printing one ends with
 * {"error": MESSAGE, "exit_status": N} on stdout instead, so that a script always reads one
 * document. cli_fail and cli_usage_error note the message (the first one counts). */
extern int cli_json_wanted, cli_json_printed;
void cli_json_error_note(const char *message);
/* Prints that document when --json was given, exit_status is not 0 and nothing was printed;
 * returns exit_status (main.c, as the command returns). */
int cli_json_error_print(int exit_status);
/* Chooses the device (mood_device_select) for a command that computes; returns 0, or the exit
 * status after printing the error (asked for cuda where there is none: 2). The notice of a
 * default that fell back to the CPU waits for cli_device_note. */
int cli_device_select(mood_device *out);
/* Prints cli_device's notice ("no CUDA GPU found; running on the CPU"), once: the commands call
 * it when their arguments are accepted and work begins, so that a usage error comes alone. */
void cli_device_note(void);
/* The device main chose for the command that runs (the CPU until then, and for commands that do
 * not compute). */
extern mood_device cli_device;

/* Parses a double strictly; returns 0 on success. */
int cli_parse_double(const char *s, double *out);
int cli_parse_int(const char *s, long *out);
/* A whole number from 0 to 2^64-1, digits only (no sign, no spaces). 0 or -1. */
int cli_parse_u64(const char *s, uint64_t *out);

/* A numeric option of a command: where its value goes and what it takes. Whole numbers fit in a
 * long, except CLI_NUM_U64's (0 to 2^64-1, lo and hi not used); the bounds are inclusive unless
 * marked open. */
typedef enum { CLI_NUM_INT, CLI_NUM_I64, CLI_NUM_U64, CLI_NUM_REAL } cli_num_kind;
typedef struct cli_num_opt {
    const char *name;
    cli_num_kind kind;
    void *dst;     /* int, int64_t, uint64_t or double, as kind says */
    double lo, hi; /* the range */
    int lo_open, hi_open;
    int multiple;        /* the value is a multiple of this (0: any) */
    int *given, *given2; /* set to 1 when the option is given (may be NULL) */
    const char *says;    /* what it takes, for the error */
} cli_num_opt;
/* Option s with value v, looked up in the table t of count options: 0 stored, 1 a bad value
 * (reported for cmd, saying what the option takes), -1 not an option of the table. */
int cli_parse_number(const char *cmd, const cli_num_opt *t, size_t count, const char *s,
                     const char *v);

extern const cli_command cli_commands[];

/* The commands (one file each: cmd_<name>.c) and their help texts. */
int cmd_info(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_hash(int argc, char **argv);
int cmd_bake(int argc, char **argv);
int cmd_lora_stack(int argc, char **argv);
int cmd_lora_merge(int argc, char **argv);
int cmd_lora_resize(int argc, char **argv);
int cmd_lora_extract(int argc, char **argv);
/* The registry commands (cmd_import.c, cmd_style.c, cmd_doctor.c). */
int cmd_import(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_style_create(int argc, char **argv);
int cmd_style_edit(int argc, char **argv);
int cmd_tag(int argc, char **argv);
int cmd_rename(int argc, char **argv);
int cmd_rm(int argc, char **argv);
int cmd_doctor(int argc, char **argv);
extern const char cmd_import_help[], cmd_list_help[], cmd_show_help[], cmd_search_help[],
    cmd_style_create_help[], cmd_style_edit_help[], cmd_tag_help[], cmd_rename_help[],
    cmd_rm_help[], cmd_doctor_help[];
/* Styles out to a LoRA folder other tools read (cmd_style_export.c). */
int cmd_style_export(int argc, char **argv);
extern const char cmd_style_export_help[];
/* Opens the registry at the default home; returns 0 or the exit status after printing the
 * error. */
int cli_registry_open(mood_registry **out);

/* Style packs (cmd_pack.c). */
int cmd_pack_export(int argc, char **argv);
int cmd_pack_import(int argc, char **argv);
extern const char cmd_pack_export_help[], cmd_pack_import_help[];

/* Text-to-image (cmd_gen.c, cmd_gen_png.c). */
int cmd_gen(int argc, char **argv);
extern const char cmd_gen_help[];

/* The bundled demo: mood-tiny, a style from the Twemoji board, before/after (cmd_demo.c). */
int cmd_demo(int argc, char **argv);
extern const char cmd_demo_help[];

/* Training a style from a mood board (cmd_train.c). */
int cmd_train(int argc, char **argv);
extern const char cmd_train_help[];

/* The CLIP tokenizer and A1111 prompt syntax (cmd_tokenize.c). */
int cmd_tokenize(int argc, char **argv);
extern const char cmd_tokenize_help[];

extern const char cmd_info_help[], cmd_inspect_help[], cmd_hash_help[], cmd_bake_help[],
    cmd_lora_stack_help[], cmd_lora_merge_help[], cmd_lora_resize_help[], cmd_lora_extract_help[];

#endif /* MOOD_CLI_CLI_H */
