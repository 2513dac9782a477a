/*
 * cli_text.h: showing text that other programs wrote (sidecars, packs, safetensors metadata,
 * file names) on a terminal. Such text may hold escape sequences that clear or retitle the
 * terminal, or move the cursor to forge lines; the human output of a command passes it through
 * here first. --json output keeps the text exact; cli_text_json_puts writes it with the
 * characters JSON allows raw but terminals and JavaScript do not take as text escaped.
 */
#ifndef MOOD_CLI_CLI_TEXT_H
#define MOOD_CLI_CLI_TEXT_H

#include <cjson/cJSON.h>
#include <stdio.h>

/* A copy of s (malloc'd; NULL when out of memory) with every control character made visible:
 * C0 and DEL as \xNN (tab and newline kept when multiline is non-zero: a field printed on several
 * lines), C1 (U+0080-U+009F) as \u00NN, the line separators and bidi controls (U+2028/9,
 * U+202A-U+202E, U+2066-U+2069) as \uNNNN, and bytes that are not UTF-8 as \xNN. */
char *cli_text_visible(const char *s, int multiline);

/* Applies cli_text_visible to every string value and key of v and below, in place. Values of
 * the keys named in multiline (a NULL-terminated list; NULL: none) keep their tabs and newlines.
 * Out of memory, what is not printable ASCII in a string becomes '?' instead (never shown raw). */
void cli_text_clean_json(cJSON *v, const char *const *multiline);

/* Prints "mood: KIND: MESSAGE\n" on stderr with the message made visible (cli_text_visible,
 * newlines kept): errors and warnings quote file names and metadata. A warning said before in
 * this process is not said again. */
void cli_text_report(const char *kind, const char *message);
/* The library's log sink (mood_log_set): errors and warnings on stderr through cli_text_report
 * (so each warning once), the rest only with MOOD_VERBOSE set. */
void cli_log_sink(int level, const char *message, void *payload);
/* The warnings reported so far by this process (KIND "warning"), each once and in order, for a
 * command's --json "warnings"; borrowed, valid until the next report. */
size_t cli_warnings_said(const char *const **list);
/* Adds them to o as "warnings" [text] when there are any. */
void cli_warnings_json(cJSON *o);

/* Writes JSON text (as cJSON prints it) and a newline to stdout, like puts, with DEL, the C1
 * controls (U+0080-U+009F) and U+2028/U+2029 as \u escapes: JSON allows them raw, but terminals
 * act on C1 and JavaScript before ES2019 ends a string at U+2028. Every consumer decodes the
 * escapes back to the same characters. Returns 0, or EOF when writing failed. */
int cli_text_json_puts(const char *json);

/* The columns s takes on a terminal: East Asian wide characters and emoji 2, combining marks
 * 0, others 1 (a close approximation of wcwidth that needs no locale). */
int cli_text_width(const char *s);
/* Prints s to f in a column of `width` terminal columns, padded with spaces; when cut and s is
 * wider, cut with "…" to fit. */
void cli_text_cell(FILE *f, const char *s, int width, int cut);

#endif /* MOOD_CLI_CLI_TEXT_H */
