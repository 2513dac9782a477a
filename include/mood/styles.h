/*
 * styles.h: from what a user asks for (a prompt with inline tags, --style and --lora arguments)
 * to what the engine runs: the final prompt and negative prompt, and the adapter files with
 * their UNet and text-encoder multipliers.
 *
 * Inline tags, removed from the prompt text:
 *   <style:NAME[:W]>               a style of the registry at strength W (default: the style's
 *                                  preferred weight, else 1)
 *   <lora:NAME_OR_FILE[:W[:W_TE]]> a LoRA file (a path, or NAME.safetensors beside the working
 *                                  directory) or else a registry style of that name; W applies
 *                                  to the UNet and, unless W_TE is given, to the text encoder.
 *                                  Named forms "unet=W" and "te=W" are read too. <lyco:...> is
 *                                  the same tag (A1111's LyCORIS spelling).
 *                                  Note: AUTOMATIC1111 reads a second number as the UNet
 *                                  strength and the first as the text encoder's; mood's order
 *                                  matches its --lora FILE:W:W_TE. With one number they agree.
 *
 * A registry style contributes its adapters (each adapter's own multipliers times W), its
 * prompt template ("{prompt}" replaced by the prompt; a template without it is appended after
 * ", "), its trigger words (appended unless the prompt already contains them) and its negative
 * prompt (appended to the negative prompt).
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
    char *name;      /* A1111's name for it: the style name or the file's stem */
    double unet, te; /* multipliers */
    char hash[13];   /* first 12 hex of AutoV3 (A1111 "Lora hashes"), "" when unknown */
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
/* SKIP_MISSING: a style or LoRA that does not exist is listed in `missing` instead of failing. */
enum { MOOD_STYLES_ADAPTERS_ONLY = 1, MOOD_STYLES_SKIP_MISSING = 2 };

/* Resolves prompt tags, then `styles` (in order), then `loras` (files, in order). `registry` may
 * be NULL when nothing names a registry style. A file LoRA's hash is computed from the file.
 * Errors: MOOD_ENOTFOUND (a style or file that does not exist, named), MOOD_EINVAL (a malformed
 * tag or weight, quoted), MOOD_ENOMEM. Free with mood_resolved_styles_dispose. */
MOOD_WARN_UNUSED int mood_styles_resolve(mood_resolved_styles *out, mood_registry *registry,
                                         const char *prompt, const char *negative,
                                         const mood_style_arg *styles, size_t n_styles,
                                         const mood_weighted_adapter *loras, size_t n_loras,
                                         unsigned flags);
void mood_resolved_styles_dispose(mood_resolved_styles *s);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_STYLES_H */
