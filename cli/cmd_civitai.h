/*
 * cmd_civitai.h: the Civitai commands (`mood civitai link`, `mood update-check`) and what
 * `mood import` uses to import URLs and Civitai references and to look a newly imported file up
 * on Civitai (cmd_civitai.c). Public API only.
 */
#ifndef MOOD_CLI_CMD_CIVITAI_H
#define MOOD_CLI_CMD_CIVITAI_H

#include <cjson/cJSON.h>

#include "mood/civitai.h"

int cmd_civitai_link(int argc, char **argv);
int cmd_update_check(int argc, char **argv);
extern const char cmd_civitai_link_help[], cmd_update_check_help[];

/* What `mood import` passes on from its options. */
typedef struct cli_civitai_flags {
    int json;
    int offline;  /* --offline, or MOOD_OFFLINE=1 in the environment */
    int nsfw_max; /* --nsfw LEVEL */
} cli_civitai_flags;

/* Defaults: not offline unless MOOD_OFFLINE=1, previews up to PG. */
void cli_civitai_flags_init(cli_civitai_flags *f);
/* Parses an --nsfw level: none, pg, pg13, r, x, xxx (or 0, 1, 2, 4, 8, 16). 0 or 1 (usage). */
int cli_parse_nsfw(const char *s, int *out);
/* True when arg is an http(s) URL or a Civitai reference rather than a path. */
int cli_is_remote(const char *arg);
/* Imports a URL or Civitai reference (download with a progress bar, published SHA-256 checked,
 * Civitai data and previews stored). Adds to `o` what cmd_import reports for a file (name,
 * sha256, family, ...) plus "civitai" {model_id, version_id, model_name, version_name,
 * base_model, air}; *already is set when the file was in the registry. Prints a line unless
 * f->json. Returns the exit status: 0, 1 (bad reference) or 2 (network, disk). */
int cli_import_remote(mood_registry *r, const char *what, const cli_civitai_flags *f, cJSON *o,
                      int *already);
/* After a local file was imported as style `name`: looks it up on Civitai by SHA-256 (one try,
 * unless f->offline) and stores what Civitai knows; adds "civitai" to `o` when found. A network
 * failure is only a warning. */
void cli_civitai_after_import(mood_registry *r, const char *name, const cli_civitai_flags *f,
                              cJSON *o);

#endif /* MOOD_CLI_CMD_CIVITAI_H */
