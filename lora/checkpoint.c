/*
 * checkpoint.c: single-file base checkpoints (A1111/Civitai LDM/SGM layout): open, detect the
 * family, build the alias table adapters resolve against, and count tensors per component.
 */
#include <string.h>

#include "common/args.h"
#include "lora/lora_internal.h"

/* Which component a checkpoint key belongs to (MOOD_PART_COUNT = anything else: VAE, ...). */
static int part_of_key(const char *key)
{
    static const struct {
        const char *prefix;
        int part;
    } parts[] = {{"model.diffusion_model.", MOOD_PART_UNET},
                 {"cond_stage_model.", MOOD_PART_TE1},
                 {"conditioner.embedders.0.", MOOD_PART_TE1},
                 {"conditioner.embedders.1.", MOOD_PART_TE2}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (strncmp(key, parts[i].prefix, strlen(parts[i].prefix)) == 0)
            return parts[i].part;
    }
    return MOOD_PART_COUNT;
}

int mood_checkpoint_open(mood_checkpoint **out, const char *path)
{
    mood_checkpoint *c;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    if (!(c = mood_calloc(1, sizeof *c)))
        return mood_error_nomem();
    if ((err = mood_st_open(&c->file, path)) != 0)
        goto done;
    c->family = mood_family_of_checkpoint(c->file);
    if (c->family == MOOD_FAMILY_UNKNOWN) {
        err = mood_error_set(MOOD_EFORMAT, "%s: not an SD1, SD2 or SDXL single-file checkpoint%s",
                             path,
                             mood_file_kind_of(c->file) == MOOD_KIND_ADAPTER
                                 ? " (it is an adapter, e.g. a LoRA)"
                                 : " (no model.diffusion_model. / text encoder keys of a known "
                                   "layout)");
        goto done;
    }
    for (size_t i = 0; i < mood_st_count(c->file); i++)
        c->counts[part_of_key(mood_st_at(c->file, i)->name)]++;
    err = mood__keymap_from_checkpoint(&c->keymap, c->file, c->family);
done:
    if (err)
        mood_checkpoint_close(c);
    else
        *out = c;
    return err;
}

int mood_checkpoint_from_names(mood_checkpoint **out, const mood_st_file *file, mood_family family,
                               const mood_base_weight *w, size_t n)
{
    mood_checkpoint *c;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(file);
    if (n > 0)
        MOOD_ARG_NONNULL(w);
    if (!(c = mood_calloc(1, sizeof *c)))
        return mood_error_nomem();
    c->file = (mood_st_file *)file;
    c->borrowed_file = 1;
    c->family = family;
    for (size_t i = 0; i < n; i++)
        c->counts[(unsigned)w[i].part < MOOD_PART_COUNT ? w[i].part : MOOD_PART_COUNT]++;
    if ((err = mood__keymap_from_names(&c->keymap, w, n, family)) != 0)
        mood_checkpoint_close(c);
    else
        *out = c;
    return err;
}

void mood_checkpoint_close(mood_checkpoint *c)
{
    if (!c)
        return;
    mood__keymap_free(c->keymap);
    if (!c->borrowed_file)
        mood_st_close(c->file);
    mood_free(c);
}

mood_family mood_checkpoint_family(const mood_checkpoint *c)
{
    return c->family;
}

const mood_st_file *mood_checkpoint_file(const mood_checkpoint *c)
{
    return c->file;
}

void mood_checkpoint_counts(const mood_checkpoint *c, size_t counts_out[MOOD_PART_COUNT + 1])
{
    memcpy(counts_out, c->counts, sizeof c->counts);
}
