/*
 * cmd_gen.h: what the two files of `mood gen` share: the parsed arguments and the run state.
 * cmd_gen.c parses, resolves styles, loads and generates; cmd_gen_png.c reads parameters from an
 * image (--from-png) and writes the images with their parameters text.
 */
#ifndef MOOD_CLI_CMD_GEN_H
#define MOOD_CLI_CMD_GEN_H

#include "cli/cli.h"
#include "mood/gen.h"
#include "mood/params.h"
#include "mood/styles.h"
#include "mood/tokenizer.h"

typedef struct gen_args {
    const char *prompt, *negative, *model, *output, *from_png;
    const char *init_image; /* --init-image: img2img from this picture */
    const char *mask;       /* --mask: inpainting, white where the picture is redrawn */
    mood_style_arg *styles;
    size_t n_styles;
    cli_adapters loras;
    mood_gen_options opts;
    mood_lora_mode mode;
    uint64_t seed;   /* when set.seed and not seed_random */
    int seed_random; /* --seed -1 (A1111's "random"), also over --from-png's seed */
    int prediction;  /* -1: the model's */
    int preview_every;
    int json;
    int keep_index; /* >= 0: write only this image of the batch (--from-png of a batch image) */
    struct {        /* which options the command line set (they win over --from-png) */
        int prompt, negative, steps, cfg, seed, size, sampler, clip_skip, rng, strength;
    } set;
    char *png_text; /* --from-png: the parameters text, and strings taken from it */
    void *png_params;
    char *png_prompt;     /* its prompt with the LoRA tags' hashes added (owned), or NULL */
    char *uncommented[2]; /* the prompt and negative prompt without '#' comments (owned) */
} gen_args;

typedef struct gen_run {
    gen_args args;
    mood_registry *reg;
    mood_resolved_styles styles;
    mood_model *model;
    mood_image *init;          /* --init-image, read before the model loads */
    float *init_pixels;        /* it at the run's size (mood_gen_init_image) */
    mood_image *mask;          /* --mask, read with it */
    float *mask_pixels;        /* it at the run's size (mood_gen_mask) */
    float *images;             /* batch x 3 x H x W in [-1, 1] */
    double load_s, generate_s; /* wall times, reported by --json */
    char default_output[64];   /* without -o: mood-SEED.png, or the first free mood-SEED-vN.png */
    int preview_failed;        /* a preview could not be written: said once, sampling goes on */
    int preview_written;       /* a preview file exists, to remove when the run ends */
    int reserved;              /* default_output's names are claimed (empty files until written) */
} gen_run;

/* Picks r->default_output once the seed is known (no -o given): never an existing file's name,
 * claimed by creating its files empty, so a run at the same time takes another. */
void gen_pick_default_output(gen_run *r);
/* Removes the claims no image replaced (a failed or stopped run). */
void gen_release_default_output(gen_run *r);

/* "torch-cpu", "torch-cuda", "mood" (also A1111's "CPU" / "GPU"). 0, or -1 when unknown. */
int gen_parse_rng(mood_rng_kind *out, const char *s);
/* --prediction's and the image key "Prediction"'s values: "eps" (or "epsilon"), "v", "sample" as
 * MOOD_PRED_*; -1 when unknown. gen_prediction_name gives the spelling written. */
int gen_parse_prediction(const char *s);
const char *gen_prediction_name(int prediction);
/* --from-png: fills what the command line did not set from the image's parameters and warns,
 * naming key and value, about each setting that changes the image and that mood does not
 * reproduce (variation seeds, a separate VAE, hires fix, prompt editing, ...). Returns 0 or an
 * exit status. */
int gen_apply_png(gen_args *a);
/* A typed prompt's A1111 syntax that mood reads as plain text (prompt editing, alternation, AND):
 * a warning each, as --from-png gives for an image's. */
void gen_warn_a1111_syntax(const gen_args *a);
/* A1111 removes every extra-network tag <word:...> from the prompt: the ones mood has no network
 * for (<hypernet:...>) are removed too, each with a warning naming `whose` prompt and ending in
 * `then`. The prompt without them goes to a->png_prompt. Returns 0 or an exit status. */
int gen_strip_networks(gen_args *a, const char *whose, const char *then);
void gen_from_png_dispose(gen_args *a);
/* --from-png, registry open: adds "hash=H" to each LoRA tag whose name "Lora hashes" gives a
 * hash for, so that the registry's LoRA of that hash is applied at the tag's weights (the name
 * is the fallback); notes a LoRA found under another style name.
 * Returns 0 or an exit status. */
int gen_remap_png_loras(gen_run *r);
/* --from-png, styles resolved: warns about LoRAs found nowhere (with the image's hash for each)
 * and about LoRAs found by name whose hash is not the image's. */
void gen_check_png_hashes(const gen_run *r);
/* --from-png without --model: the model the image names ("Model: NAME"), looked up as a name
 * only (cli_model_by_name: never as a path, which a file's text must not choose); when mood
 * does not have it, $MOOD_MODEL with a warning. Returns 0 with *path set, -1 when the usual
 * lookup applies, or an exit status after an error message. */
int gen_find_png_model(const gen_args *a, char **path);
/* After loading: warns when the model's hash is not the image's. */
void gen_check_png_model(gen_run *r);
/* The A1111 parameters of image i (0-based, of o->batch) made with o on model from prompt and
 * negative: every detail mood gen writes ("Steps" ... "Version") but "Lora hashes", which the
 * caller adds. Shared with mood train's sample previews. */
int gen_params_fill(mood_params *p, const mood_gen_options *o, const mood_model *model,
                    const char *prompt, const char *negative, int i);
/* Writes a (3 x h x w) float image (mood_generate's output) as a PNG with the parameters text
 * (NULL: none), atomically. 0 or a MOOD_E* code. */
int gen_write_png(const char *path, const float *chw, int w, int h, const char *text);
/* Writes the images (and prints the JSON or the paths). Returns 0 or an exit status. */
int gen_write_outputs(gen_run *r);
/* mood_preview_fn: writes OUTPUT.preview.png (a batch's images as a grid). */
int gen_write_preview(const float *images, int batch, int width, int height, int step,
                      void *payload);
/* Removes the preview file once the run ends: the images replace it. */
void gen_remove_preview(gen_run *r);

#endif /* MOOD_CLI_CMD_GEN_H */
