/*
 * styles.h: from what a user asks for (a prompt with inline tags, --style and --lora arguments)
 * to what the engine runs: the final prompt and negative prompt, and the adapter files with
 * their UNet and text-encoder multipliers.
 *
 * Inline tags, removed from the prompt text, read as AUTOMATIC1111 reads its extra-network tags
 * (extensions-builtin/Lora/extra_networks_lora.py; lora-formats.md section 4.2): the arguments
 * are split at ':', an argument holding '=' is a named one, the others are positional:
 *   <lora:NAME_OR_FILE>               a LoRA file (a path, or NAME.safetensors beside the working
 *                                     directory) or else a registry style of that name, at 1
 *                                     (a style: at its preferred weight)
 *   <lora:NAME:W>                     text encoder and UNet at W
 *   <lora:NAME:TE:UNET>               text encoder at TE, UNet at UNET (A1111's order; mood's
 *                                     own --lora FILE:W:W_TE gives the UNet's first)
 *   <lora:NAME:TE:UNET:DYN>           DYN: DyLoRA rank truncation, a whole number from 1: each
 *                                     plain LoRA module uses its first DYN ranks at its full-rank
 *                                     scale (mood_adapter_limit_rank; A1111's dyn_dim)
 *   named forms te=T, unet=U, dyn=D   override the positional ones; UNET defaults to TE
 *   hash=HASH                         (mood's own; A1111 ignores it) the LoRA whose AutoV3 or
 *                                     SHA-256 starts with HASH (8 to 64 hex digits, what "Lora
 *                                     hashes" records), applied at TE/UNET itself rather than
 *                                     through a style; the name is the fallback when the
 *                                     registry has no such LoRA
 *   <lyco:...>                        the same tag (A1111's LyCORIS spelling)
 *   <style:NAME[:W]>                  a style of the registry at strength W (default: its
 *                                     preferred weight, else 1); TE:UNET and te=/unet= as above,
 *                                     and a DYN cut applies to each of its LoRAs
 * Other named arguments and positional ones past DYN are ignored, as A1111 does, with a warning
 * logged (mood_log_set).
 *
 * A registry style contributes its adapters (each adapter's own multipliers times W), its
 * prompt template (every "{prompt}" replaced by the prompt, as A1111's styles; a template
 * without it is appended after ", "), its trigger words (each word or phrase of its
 * ","-separated list appended unless the prompt already holds it as whole words, in any case:
 * CLIP lower-cases the prompt) and its negative prompt (appended to the negative prompt).
 */
#ifndef MOOD_STYLES_H
#define MOOD_STYLES_H

#include <stddef.h>

#include "mood/core.h"
#include "mood/lora.h"
#include "mood/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One --style argument. */
typedef struct mood_style_arg {
    const char *name;
    double weight;
    int has_weight;
} mood_style_arg;

/* One adapter to apply, with what the image's parameters text records about it. */
typedef struct mood_resolved_adapter {
    char *path;      /* the file to open (a registry blob or the user's file) */
    char *name;      /* what the user named: the style, or the file's stem (for messages) */
    char *alias;     /* A1111's name for the LoRA itself: its file's stem (as imported, for a
                        registry LoRA) with every character but [A-Za-z0-9_.-] as '_' (what
                        <lora:...> and "Lora hashes" carry through A1111 and Civitai, ecosystem.md
                        section 4.3); unique among the adapters of one result: two different
                        LoRAs never share one (the second gets "_2"), the same LoRA twice does */
    double unet, te; /* multipliers */
    int dyn;       /* DyLoRA rank cut of the tag that brought it (mood_weighted_adapter), 0: none */
    char hash[13]; /* first 12 hex of AutoV3 (A1111 "Lora hashes"), "" when unknown */
} mood_resolved_adapter;

typedef struct mood_resolved_styles {
    char *prompt;   /* with tags removed, templates and trigger words applied */
    char *negative; /* with the styles' negative prompts appended */
    mood_resolved_adapter *adapters;
    size_t n;
    char *styles_used; /* "inkwash:0.8, film-grain:0.3": registry styles applied, for reports */
    char *missing;     /* MOOD_STYLES_SKIP_MISSING: names not found, ", "-separated ("" none) */
} mood_resolved_styles;

/* Flags of mood_styles_resolve. ADAPTERS_ONLY: styles contribute their adapters but not their
 * template, trigger words or negative prompt (for a prompt that already has them applied, such
 * as one read back from an image's parameters). */
/* SKIP_MISSING: a style or a prompt tag's LoRA that does not exist is listed in `missing` instead
 * of failing (see mood_styles_resolve). */
/* A1111_REPEATS: a LoRA that several tags (or styles, or --lora) apply is applied as A1111 applies
 * a LoRA its prompt tags more than once: every time at the last one's multipliers (A1111 keeps
 * one network object per LoRA and sets its multipliers from each tag in turn), so in all at
 * count times those (for an image read back from A1111's parameters). Without it, their
 * multipliers add up (as two LoRA loaders in a row do in ComfyUI). Either way the result lists
 * the LoRA once, so that the one <lora:> tag written for it gives the same image in A1111. */
enum { MOOD_STYLES_ADAPTERS_ONLY = 1, MOOD_STYLES_SKIP_MISSING = 2, MOOD_STYLES_A1111_REPEATS = 4 };

/* Resolves prompt tags, then `styles` (in order), then `loras` (files, in order). `registry` may
 * be NULL when nothing names a registry style. A file LoRA's hash is computed from the file.
 * Errors, each with a message naming what was asked for:
 *   MOOD_EINVAL     a malformed tag or weight (quoted); a name the registry does not have: a
 *                   <style:NAME> or --style NAME, or a <lora:NAME> that is no file either (the
 *                   user's input, as a typo is: exit 1 in the CLI)
 *   MOOD_ENOTFOUND  what the environment lacks: a --lora file that does not exist, a <lora:NAME>
 *                   that is no file when `registry` is NULL, a style named when `registry` is
 *                   NULL ("no registry is open")
 *   MOOD_EFORMAT    a registry style that cannot be read, or one of its adapters without its
 *                   stored file (`mood doctor` repairs it)
 *   MOOD_EIO        a --lora file that cannot be read; MOOD_ENOMEM.
 * With MOOD_STYLES_SKIP_MISSING, a style or a prompt tag's LoRA that is not there (either code
 * above) is listed in `missing` instead; a missing --lora file still fails.
 * On an error *out is left empty (zeroed). Free with mood_resolved_styles_dispose. */
MOOD_WARN_UNUSED int mood_styles_resolve(mood_resolved_styles *out, mood_registry *registry,
                                         const char *prompt, const char *negative,
                                         const mood_style_arg *styles, size_t n_styles,
                                         const mood_weighted_adapter *loras, size_t n_loras,
                                         unsigned flags);
/* Frees what s holds and zeroes it; s may be NULL, or already disposed. */
void mood_resolved_styles_dispose(mood_resolved_styles *s);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_STYLES_H */
