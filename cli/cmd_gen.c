/*
 * cmd_gen.c: `mood gen PROMPT`: text-to-image with named styles stacked at chosen weights. It
 * resolves styles and LoRAs (mood/styles.h), loads the model, applies the adapters (merged or as
 * runtime side paths), generates (mood/gen.h) and writes PNGs carrying the AUTOMATIC1111
 * `parameters` text (cmd_gen_png.c), so A1111, Civitai and `mood gen --from-png` read them back.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/cli_text.h"
#include "cli/cmd_gen.h"

const char cmd_gen_help[] =
    "usage: mood gen PROMPT [--model PATH_OR_NAME] [--style NAME[:W]]... [options]\n"
    "       mood gen --from-png IMAGE [options]\n"
    "       mood gen [options] -- PROMPT   (a prompt that starts with '-')\n\n"
    "Generates images from PROMPT with a Stable Diffusion 1.x/2.x/XL model (Playground v2 and\n"
    "v2.5 too) and writes PNGs whose 'parameters' text (AUTOMATIC1111's format, with Model hash\n"
    "and Lora hashes) A1111 and Civitai read (prompt, settings, model and LoRAs by hash) and\n"
    "`mood gen --from-png` reproduces exactly (an image of a batch drawn with --rng mood or\n"
    "torch-cuda: within a level of 255). mood's samplers are diffusers' (step for step),\n"
    "not A1111's k-diffusion ones: the same settings in A1111 make a close image, not the same.\n\n"
    "Model and styles:\n"
    "  --model PATH_OR_NAME  a single-file checkpoint (.safetensors), a diffusers folder, or a\n"
    "                        name found in $MOOD_HOME/models/ (NAME, NAME.safetensors), or\n"
    "                        mood-tiny (the small model that ships with mood); default\n"
    "                        $MOOD_MODEL\n"
    "  --style NAME[:W]      a style of the registry at strength W (default: the style's own\n"
    "                        weight); repeat to stack. Its trigger words, prompt template and\n"
    "                        negative prompt are applied too (once for a style given twice,\n"
    "                        whose LoRAs take the sum of the weights: none when it is 0); W 0\n"
    "                        leaves it out; a negative W subtracts its LoRAs and adds none of\n"
    "                        its words\n"
    "  --lora FILE[:W[:W_TE]]  a LoRA file at UNet strength W and text-encoder strength W_TE\n"
    "  In the prompt: <style:NAME:W> and <lora:NAME_OR_FILE:W> do the same inline;\n"
    "                        <lora:NAME:TE:UNET> is A1111's two-number form (text encoder\n"
    "                        first), te=, unet= and dyn= its named ones; <lora:NAME:W:dyn=N>\n"
    "                        uses a DyLoRA file's first N ranks only, as A1111 does\n"
    "  --lora-mode merge|runtime  merge the adapters into the weights (default; fastest per\n"
    "                        step) or run them as side paths beside the weights\n\n"
    "Sampling:\n"
    "  --negative TEXT       the negative prompt (SDXL: none conditions on zeros)\n"
    "  --steps N             sampling steps (default 20)\n"
    "  --cfg X               classifier-free guidance scale (default 7)\n"
    "  --sampler NAME        euler, euler_a (default), dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde,\n"
    "                        dpmpp_2m_sde_karras, ddim, lcm; A1111 names work too (\"DPM++ 2M\n"
    "                        Karras\"), and \" Karras\" after Euler or Euler a as well\n"
    "  --seed N              the seed, 0 to 2^64-1, or -1 for a random one (the default);\n"
    "                        printed and stored in the PNG\n"
    "  --size WxH            image size, multiples of 8 (4 for mood-tiny); default: the\n"
    "                        model's training size (512x512 for SD1, 1024x1024 for SDXL,\n"
    "                        64x64 for mood-tiny)\n"
    "  --batch N             images from one run (default 1)\n"
    "  --clip-skip N         stop the text encoder N-1 layers early (A1111 numbering, default 1;\n"
    "                        SDXL: 1 and 2 are its penultimate layer, N > 2 as ComfyUI)\n"
    "  --rng KIND            where noise comes from: torch-cpu (default: ComfyUI and diffusers\n"
    "                        with a CPU generator; a batch draws its noise together from SEED),\n"
    "                        torch-cuda (A1111's default GPU noise; image i uses SEED+i),\n"
    "                        mood (torch's CPU generator per image, SEED+i: A1111 'RNG: CPU')\n"
    "  --prediction eps|v|sample  override the model's prediction type (SD2 768-v models\n"
    "                        are v; sample: the model predicts the image, as mood-tiny);\n"
    "                        recorded in the PNG as \"Prediction: v\" for --from-png\n\n"
    "Starting from a picture (img2img, as diffusers' StableDiffusionImg2ImgPipeline):\n"
    "  --init-image FILE     a PNG, JPEG, WebP or BMP to redraw instead of starting from noise:\n"
    "                        its latents are noised to --strength and sampled from there;\n"
    "                        the image's size is the picture's (brought down to the model's\n"
    "                        own area when larger, its shape kept) unless --size or\n"
    "                        --from-png gives one (the picture is then stretched to it, with\n"
    "                        bilinear filtering: A1111 and diffusers use Lanczos; a picture\n"
    "                        of the run's size avoids the difference)\n"
    "  --strength X          how much is redrawn, above 0 to 1 (default 0.75; A1111's\n"
    "                        \"Denoising strength\", recorded so in the PNG): 0.3 keeps the\n"
    "                        picture, 1 keeps little more than its colours; int(steps x X)\n"
    "                        steps run. Not with the LCM sampler. (mood-tiny, which draws\n"
    "                        the picture itself and knows only emoji, redraws a lot even at\n"
    "                        low strengths)\n"
    "  --mask FILE           inpainting: redraw only where FILE is white (at least half\n"
    "                        grey), keep the picture where it is black; the kept part is put\n"
    "                        back after every step (diffusers' StableDiffusionInpaintPipeline;\n"
    "                        an inpainting model, such as sd-v1-5-inpainting, sees the mask\n"
    "                        and the masked picture itself instead, and needs both; no blur:\n"
    "                        soften the mask's edge in the file). At --strength 1 the masked\n"
    "                        part starts from noise. The mask must have the picture's shape\n\n"
    "Output:\n"
    "  -o, --output FILE     the PNG to write (default mood-SEED.png, mood-SEED-v2.png and so\n"
    "                        on when taken: never over an earlier image); a batch adds -1, -2\n"
    "  --preview-every N     write FILE.preview.png with the current estimate every N steps\n"
    "                        (a batch's images side by side), removed when the run ends\n"
    "  --from-png IMAGE      (a PNG, or A1111's JPEG or WebP: its EXIF UserComment)\n"
    "                        take prompt, negative prompt, steps, sampler, CFG, seed, size, clip\n"
    "                        skip, model (by name, from $MOOD_HOME/models) and LoRAs (tagged in\n"
    "                        its prompt, by hash) from IMAGE's parameters text; options given\n"
    "                        with it override (each named); says what it could not match (an\n"
    "                        img2img image also needs its picture: --init-image)\n"
    "  --json                print what was written as JSON: images [{path, seed, parameters}],\n"
    "                        prompt and negative as run, styles [{name, weight}], adapters\n"
    "                        [{name, alias, path, unet, te, dyn (when cut), autov3_short}],\n"
    "                        init_image, strength and mask (img2img), load_s and\n"
    "                        generate_s (seconds), warnings [text] (those said)\n"
    "  --device D            cpu, cuda, cuda:N or auto (also before the command)\n\n"
    "Example:\n"
    "  mood gen \"a lighthouse at dusk\" --model sd15.safetensors --style inkwash:0.8 \\\n"
    "           --style film-grain:0.3 --seed 42 -o lighthouse.png\n\n"
    "Exit status: 0 written, 1 bad input (unknown style, LoRA for another model family, bad\n"
    "option), 2 environment (missing file, disk full).\n";

/* ----- arguments ---------------------------------------------------------------------------- */

static int parse_size(const char *s, int *w, int *h)
{
    char *end;
    long a = strtol(s, &end, 10), b;
    if (end == s || (*end != 'x' && *end != 'X'))
        return -1;
    s = end + 1;
    b = strtol(s, &end, 10);
    if (end == s || *end || a <= 0 || b <= 0 || a > 4096 || b > 4096)
        return -1;
    *w = (int)a;
    *h = (int)b;
    return 0;
}

static int add_style_arg(gen_args *a, const char *arg)
{
    char *name = NULL;
    double w = 1, w2 = 0;
    int has_w = 0, has_w2 = 0;
    mood_style_arg *grown;
    if (cli_parse_weighted(arg, &name, &w, &has_w, &w2, &has_w2) != 0 || has_w2) {
        free(name);
        return cli_usage_error("gen", "--style %s: expected NAME or NAME:WEIGHT", arg);
    }
    grown = realloc(a->styles, (a->n_styles + 1) * sizeof *grown);
    if (!grown) {
        free(name);
        return 2;
    }
    a->styles = grown;
    a->styles[a->n_styles++] = (mood_style_arg){name, w, has_w};
    return 0;
}

/* gen's numeric options; the ranges are mood_generate's, said here by option name. */
static size_t num_opts(gen_args *a, cli_num_opt *t)
{
    mood_gen_options *o = &a->opts;
    cli_num_opt list[] = {
        {"--steps", CLI_NUM_INT, &o->steps, 1, 1000, 0, 0, 0, &a->set.steps, NULL, "1 to 1000"},
        {"--batch", CLI_NUM_INT, &o->batch, 1, 64, 0, 0, 0, NULL, NULL, "1 to 64"},
        {"--clip-skip", CLI_NUM_INT, &o->clip_skip, 1, 12, 0, 0, 0, &a->set.clip_skip, NULL,
         "1 to 12"},
        {"--preview-every", CLI_NUM_INT, &a->preview_every, 1, 1000, 0, 0, 0, NULL, NULL,
         "a number of steps, 1 to 1000"},
        {"--cfg", CLI_NUM_REAL, &o->cfg, 0, 100, 0, 0, 0, &a->set.cfg, NULL, "a number, 0 to 100"},
        {"--seed", CLI_NUM_U64, &a->seed, 0, 0, 0, 0, 0, &a->set.seed, NULL,
         "a whole number from 0 to 18446744073709551615, or -1 for a random one"},
        {"--strength", CLI_NUM_REAL, &o->strength, 0, 1, 1, 0, 0, &a->set.strength, NULL,
         "a number above 0, at most 1"},
    };
    memcpy(t, list, sizeof list);
    return sizeof list / sizeof list[0];
}

/* What the word options of gen take, for the message that refuses another value. */
static const char *accepted_values(const char *opt)
{
    if (strcmp(opt, "--size") == 0)
        return "give WIDTHxHEIGHT, such as 512x768, each a multiple of 8 up to 4096";
    if (strcmp(opt, "--rng") == 0)
        return "torch-cpu, torch-cuda or mood (A1111's CPU, GPU and NV too)";
    if (strcmp(opt, "--lora-mode") == 0)
        return "merge or runtime";
    if (strcmp(opt, "--prediction") == 0)
        return "eps, v or sample";
    return "see the help";
}

/* One option with a value; returns 0, 1 (usage error) or -1 (not this option). */
static int parse_valued(gen_args *a, const char *s, const char *v)
{
    cli_num_opt t[8];
    int rc;
    if (strcmp(s, "--seed") == 0 && strcmp(v, "-1") == 0) { /* A1111's "random" */
        a->seed_random = 1, a->set.seed = 1;
        return 0;
    }
    if ((rc = cli_parse_number("gen", t, num_opts(a, t), s, v)) >= 0) {
        a->seed_random &= strcmp(s, "--seed") != 0;
        return rc;
    }
    if (strcmp(s, "--model") == 0)
        a->model = v;
    else if (strcmp(s, "--negative") == 0)
        a->negative = v, a->set.negative = 1;
    else if (strcmp(s, "-o") == 0 || strcmp(s, "--output") == 0)
        a->output = v;
    else if (strcmp(s, "--from-png") == 0)
        a->from_png = v;
    else if (strcmp(s, "--init-image") == 0)
        a->init_image = v;
    else if (strcmp(s, "--mask") == 0)
        a->mask = v;
    else if (strcmp(s, "--style") == 0)
        return add_style_arg(a, v);
    else if (strcmp(s, "--lora") == 0)
        return cli_adapters_add(&a->loras, v);
    else if (strcmp(s, "--size") == 0 && parse_size(v, &a->opts.width, &a->opts.height) == 0)
        a->set.size = 1;
    else if (strcmp(s, "--sampler") == 0 &&
             mood_sampler_parse(&a->opts.sampler, &a->opts.schedule, v) == 0)
        a->set.sampler = 1;
    else if (strcmp(s, "--sampler") == 0)
        return cli_usage_error("gen", "%s", mood_error_last());
    else if (strcmp(s, "--rng") == 0 && gen_parse_rng(&a->opts.rng, v) == 0)
        a->set.rng = 1;
    else if (strcmp(s, "--lora-mode") == 0 && strcmp(v, "merge") == 0)
        a->mode = MOOD_LORA_MERGE;
    else if (strcmp(s, "--lora-mode") == 0 && strcmp(v, "runtime") == 0)
        a->mode = MOOD_LORA_RUNTIME;
    else if (strcmp(s, "--prediction") == 0 && gen_parse_prediction(v) >= 0)
        a->prediction = gen_parse_prediction(v);
    else if (strcmp(s, "--width") == 0 || strcmp(s, "--height") == 0) /* A1111's API, diffusers */
        return cli_usage_error("gen",
                               "%s: mood takes the size as --size WIDTHxHEIGHT (such as "
                               "--size 512x768)",
                               s);
    else if (strcmp(s, "--model") && strcmp(s, "--size") && strcmp(s, "--rng") &&
             strcmp(s, "--lora-mode") && strcmp(s, "--prediction"))
        return -1;
    else
        return cli_usage_error("gen", "%s %s: not a valid value; %s", s, v, accepted_values(s));
    return 0;
}

static int parse_args(gen_args *a, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int rc;
        if (strcmp(s, "--json") == 0) {
            a->json = 1;
            continue;
        }
        if (strcmp(s, "--") == 0 && i + 1 < argc && !a->prompt) { /* a prompt that starts with - */
            s = argv[++i];
            if (i + 1 < argc)
                return cli_usage_error("gen", "after --, only the prompt ('%s' follows it)",
                                       argv[i + 1]);
        } else if (s[0] == '-' && strcmp(s, "-") != 0) {
            if (i + 1 >= argc)
                return cli_unknown_option("gen", s);
            rc = parse_valued(a, s, argv[i + 1]);
            if (rc < 0)
                return cli_unknown_option("gen", s);
            if (rc > 0)
                return rc;
            i++;
            continue;
        }
        if (a->prompt)
            return cli_usage_error("gen", "two prompts given ('%s'); quote the prompt", s);
        a->prompt = s;
        a->set.prompt = 1;
    }
    if (!a->prompt && !a->from_png)
        return cli_usage_error("gen", "no prompt given");
    if (a->mask && !a->init_image)
        return cli_usage_error("gen", "--mask says which part of --init-image's picture is "
                                      "redrawn: give the picture with --init-image");
    if (a->set.strength && !a->init_image)
        return cli_usage_error("gen", "--strength says how much of --init-image's picture is "
                                      "redrawn: give the image with --init-image");
    return 0;
}

/* ----- model ------------------------------------------------------------------------------- */

/* ----- running ----------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1)
        s = (uint64_t)time(NULL) * 2654435761u;
    if (f)
        fclose(f);
    return s % 4294967294u; /* A1111: random.randrange(4294967294) */
}

static int needs_registry(const gen_args *a)
{
    static const char *const tags[] = {"<style:", "<lora:", "<lyco:"};
    const char *p = a->prompt ? a->prompt : "";
    if (a->n_styles > 0)
        return 1;
    for (; *p; p++) /* tags in any case, as the resolver reads them (<LORA:x>, <Lora:x>) */
        for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
            if (strncasecmp(p, tags[i], strlen(tags[i])) == 0)
                return 1;
    return 0;
}

/* --lora takes files; a registry name there ("--lora inkwash") is a common slip: say where the
 * registry's styles go instead of "cannot open". Exit 2: a missing file. */
static int check_lora_files(const gen_args *a)
{
    struct stat st;
    for (size_t i = 0; i < a->loras.n; i++) {
        const char *p = a->loras.items[i].path;
        if (stat(p, &st) == 0 || errno != ENOENT)
            continue; /* other problems are said when the file is read */
        fprintf(stderr, "mood: error: --lora %s: no such file%s\n", p,
                strchr(p, '/') ? ""
                               : "; a style or LoRA of the registry is --style NAME[:W] or "
                                 "<lora:NAME:W> in the prompt");
        return 2;
    }
    return 0;
}

static int resolve_styles(gen_run *r)
{
    gen_args *a = &r->args;
    int rc;
    if ((rc = check_lora_files(a)) != 0)
        return rc;
    if (needs_registry(a) && (rc = cli_registry_open(&r->reg)) != 0)
        return rc;
    if (a->from_png && (rc = gen_remap_png_loras(r)) != 0)
        return rc;
    if ((rc = mood_styles_resolve(&r->styles, r->reg, a->prompt, a->negative, a->styles,
                                  a->n_styles, a->loras.items, a->loras.n,
                                  a->from_png
                                      ? MOOD_STYLES_ADAPTERS_ONLY | MOOD_STYLES_SKIP_MISSING |
                                            MOOD_STYLES_A1111_REPEATS
                                      : 0)) != 0)
        return cli_fail(rc);
    if (a->from_png)
        gen_check_png_hashes(r); /* names what is missing with the image's hashes */
    else if (r->styles.missing && *r->styles.missing)
        cli_warn("not in the registry and not a file, left out: %s", r->styles.missing);
    return 0;
}

/* --init-image, read before the model loads: a missing or undecodable file is said at once. */
static int read_picture(mood_image **out, const char *path, const char *option)
{
    int err = mood_image_load(out, path);
    if (err == 0)
        return 0;
    fprintf(stderr, "mood: error: %s: %s\n", option, mood_error_last());
    return err == MOOD_ENOTFOUND || err == MOOD_EBACKEND ? 2 : 1;
}

/* --init-image and --mask, read before the model loads: a missing or undecodable file is said at
 * once. A mask of another shape than the picture would cover another part of it once both are
 * brought to the run's size: refused. */
static int read_init_image(gen_run *r)
{
    int rc = read_picture(&r->init, r->args.init_image, "--init-image");
    if (rc || !r->args.mask || (rc = read_picture(&r->mask, r->args.mask, "--mask")) != 0)
        return rc;
    if (fabs((double)r->mask->width / r->mask->height - (double)r->init->width / r->init->height) >
        0.01 * r->init->width / r->init->height) {
        fprintf(stderr,
                "mood: error: --mask is %dx%d but --init-image %dx%d: the mask must have the "
                "picture's shape\n",
                r->mask->width, r->mask->height, r->init->width, r->init->height);
        return 1;
    }
    return 0;
}

/* Rounds v down to a multiple of k (at least k, at most 4096). */
static int size_step(double v, int k)
{
    int n = (int)v / k * k;
    return n < k ? k : n > 4096 ? 4096 / k * k : n;
}

/* The size of an img2img run: --size or --from-png's (the picture stretched to it, as A1111's
 * "Just resize"), else the picture's own, rounded down to the model's multiple, and brought down
 * to the model's own area when larger (a 12-megapixel photo is not an SD1 size), its shape
 * kept. Then the picture as the run's start image. */
static int prepare_init_image(gen_run *r)
{
    mood_gen_options *o = &r->args.opts;
    int w = r->init->width, h = r->init->height, k = mood_model_size_multiple(r->model), err;
    if (o->width == 0) { /* no --size, no Size of --from-png's image */
        int dw, dh;
        double s = 1;
        mood_model_default_size(r->model, &dw, &dh);
        if ((double)w * h > (double)dw * dh)
            s = sqrt((double)dw * dh / ((double)w * h));
        o->width = size_step(w * s, k), o->height = size_step(h * s, k);
        if (o->width != w || o->height != h)
            fprintf(stderr,
                    "mood: note: --init-image is %dx%d: the image is made at %dx%d (%s; --size "
                    "chooses)\n",
                    w, h, o->width, o->height,
                    s < 1 ? "the model's own area, the picture's shape kept"
                          : "sizes are multiples of the model's step");
    } else if (o->width != w || o->height != h) {
        int other_shape = fabs((double)o->width / o->height - (double)w / h) > 0.01 * w / h;
        fprintf(stderr, "mood: note: --init-image is %dx%d: %s to %dx%d\n", w, h,
                other_shape ? "stretched" : "resized", o->width, o->height);
    }
    if ((err = mood_gen_init_image(&r->init_pixels, r->init, o->width, o->height)) != 0 ||
        (r->mask && (err = mood_gen_mask(&r->mask_pixels, r->mask, o->width, o->height)) != 0))
        return cli_fail(err);
    o->init_image = r->init_pixels;
    o->mask = r->mask_pixels;
    return 0;
}

static int load_model(gen_run *r)
{
    mood_model_options mo;
    char *path = NULL;
    int rc = gen_find_png_model(&r->args, &path);
    if (rc < 0)
        rc = cli_find_model(&path, r->args.model);
    if (rc)
        return rc;
    double t0 = now_s();
    cli_device_note();
    mood_model_options_init(&mo);
    mo.prediction = r->args.prediction;
    mo.progress = cli_progress;
    if (cli_device.kind == MOOD_DEVICE_CUDA)
        mo.cuda_device = cli_device.index;
    rc = mood_model_open(&r->model, path, &mo);
    if (rc == MOOD_EUNSUPPORTED && mo.cuda_device >= 0 && !cli_device.requested) {
        /* the GPU was only the default: a model it cannot run yet runs on the CPU */
        cli_warn("%s; running on the CPU", mood_error_last());
        mo.cuda_device = -1;
        rc = mood_model_open(&r->model, path, &mo);
    }
    r->load_s = now_s() - t0;
    if (rc != 0) {
        free(path);
        return cli_fail(rc);
    }
    cli_progress_done();
    free(path);
    if (r->init && (rc = prepare_init_image(r)) != 0)
        return rc;
    if (r->args.opts.width == 0)
        mood_model_default_size(r->model, &r->args.opts.width, &r->args.opts.height);
    gen_check_png_model(r);
    return 0;
}

/* Whether the registry has no style `name` any more (removed by another process since gen read
 * it; its LoRA's file went with it). 0 when it has, or when that cannot be told. */
static int style_removed_since(const char *name)
{
    mood_registry *reg = NULL;
    char *text = NULL;
    int gone = 0;
    if (mood_registry_open(&reg, NULL) != 0)
        return 0;
    gone = mood_registry_show_json(&text, reg, name) == MOOD_ENOTFOUND;
    mood_registry_free_string(text);
    mood_registry_close(reg);
    return gone;
}

/* Reports a failure to apply the styles. A registry blob's path in the message means nothing to
 * the user: it is replaced by the style's name. */
static int adapters_failed(const gen_run *r, int err)
{
    char msg[2048]; /* a copy: looking the style up again sets the library's message */
    const char *at = NULL;
    snprintf(msg, sizeof msg, "%s", mood_error_last());
    const mood_resolved_adapter *a = NULL;
    for (size_t i = 0; i < r->styles.n && !at; i++)
        if (strstr(r->styles.adapters[i].path, "/blobs/") &&
            (at = strstr(msg, r->styles.adapters[i].path)))
            a = &r->styles.adapters[i];
    if (!at)
        return cli_fail(err);
    cli_progress_done();
    char line[3072], why[1200] = ""; /* module names in it come from the file: cli_text_report */
    /* the file was whole when it was imported: a file that cannot be read, or is no safetensors
     * file any more, is the registry's problem (a LoRA for another model's sizes is not) */
    if (err == MOOD_ENOTFOUND && style_removed_since(a->name))
        snprintf(why, sizeof why,
                 "; the style was removed from the registry while gen ran ('mood rm' in another "
                 "process)");
    else if (err == MOOD_ENOTFOUND)
        snprintf(why, sizeof why,
                 "; the registry's copy of the file is missing: 'mood doctor' "
                 "checks the registry and says how to repair it");
    else if (err == MOOD_EIO || (err == MOOD_EFORMAT && strstr(msg, "not a valid safetensors")))
        snprintf(why, sizeof why,
                 "; the registry's copy of the file, %s, is damaged or unreadable: 'mood doctor "
                 "--deep' checks every stored file",
                 a->path);
    snprintf(line, sizeof line, "%.*sstyle '%s' (its LoRA)%s%s", (int)(at - msg), msg, a->name,
             at + strlen(a->path), why);
    cli_text_report("error", line);
    return mood_error_is_user(err) ? 1 : 2;
}

static int apply_styles(gen_run *r)
{
    mood_weighted_adapter *w = NULL;
    size_t unmatched = 0;
    int err;
    if (r->styles.n && !(w = calloc(r->styles.n, sizeof *w)))
        return 2;
    for (size_t i = 0; i < r->styles.n; i++)
        w[i] = (mood_weighted_adapter){.path = r->styles.adapters[i].path,
                                       .unet = r->styles.adapters[i].unet,
                                       .te = r->styles.adapters[i].te,
                                       .dyn = r->styles.adapters[i].dyn};
    err = mood_model_set_adapters(r->model, w, r->styles.n, r->args.mode, &unmatched);
    free(w);
    if (err)
        return adapters_failed(r, err);
    if (unmatched)
        cli_warn("%zu LoRA keys match nothing in the model (ignored)", unmatched);
    return 0;
}

/* A1111 reads a final ":N" of the prompt as its weight, which multiplies the guidance of that
 * prompt (CFG x N): the text without it is encoded and the scale multiplied for the sampler,
 * while the PNG keeps both as given (A1111's infotext does), so --from-png does it again. */
static char *prompt_weight(gen_run *r, double *cfg)
{
    double w = 1.0;
    size_t n = mood_prompt_trailing_weight(r->styles.prompt, &w);
    char *text = strndup(r->styles.prompt, n);
    *cfg = r->args.opts.cfg;
    if (w == 1.0)
        return text;
    if (w * *cfg < 0 || w * *cfg > 100) {
        cli_warn("the prompt ends in \":%g\", which A1111 reads as its weight (CFG x %g); mood's "
                 "guidance takes 0 to 100, so it is not applied: the image will differ from "
                 "A1111's",
                 w, w);
        return text;
    }
    cli_warn("the prompt ends in \":%g\", which A1111 reads as the prompt's weight: CFG %g x %g "
             "= %g, as A1111 does (put it in parentheses, (word:%g), to weight a word)",
             w, *cfg, w, *cfg * w, w);
    *cfg *= w;
    return text;
}

static int generate(gen_run *r)
{
    mood_gen_options *o = &r->args.opts;
    double cfg_given = o->cfg, cfg;
    char *text = prompt_weight(r, &cfg);
    if (!text)
        return cli_fail(MOOD_ENOMEM);
    o->prompt = text;
    o->cfg = cfg;
    o->negative = r->styles.negative;
    o->seed = r->args.set.seed && !r->args.seed_random ? r->args.seed : random_seed();
    if (!r->args.output)
        gen_pick_default_output(r);
    o->progress = cli_progress;
    if (r->args.preview_every) {
        o->preview = gen_write_preview;
        o->preview_every = r->args.preview_every;
        o->preview_payload = r;
    }
    double t0 = now_s();
    int err = mood_generate(r->model, o, &r->images, NULL);
    r->generate_s = now_s() - t0;
    o->cfg = cfg_given; /* what the PNG records */
    o->prompt = r->styles.prompt;
    free(text);
    if (err == MOOD_EINVAL && r->args.from_png) { /* a size, step count... the image gave */
        int rc = cli_fail(err);
        fprintf(stderr,
                "(settings not given as options come from %s's parameters: give the "
                "option to replace one)\n",
                r->args.from_png);
        return rc;
    }
    if (err)
        return cli_fail(err);
    cli_progress_done();
    return 0;
}

static void run_dispose(gen_run *r)
{
    gen_remove_preview(r);
    gen_release_default_output(r);
    mood_resolved_styles_dispose(&r->styles);
    mood_model_free(r->model);
    mood_image_free(r->init);
    free(r->init_pixels);
    mood_image_free(r->mask);
    free(r->mask_pixels);
    mood_registry_close(r->reg);
    free(r->images);
    for (size_t i = 0; i < r->args.n_styles; i++)
        free((char *)r->args.styles[i].name);
    free(r->args.styles);
    cli_adapters_dispose(&r->args.loras);
    gen_from_png_dispose(&r->args);
    mood_prompt_free_string(r->args.uncommented[0]);
    mood_prompt_free_string(r->args.uncommented[1]);
}

/* A1111 (1.8 and later, by default) leaves out '#' and the rest of its line, in the prompt and
 * the negative prompt, before anything else reads them: so does mood, saying so. */
static int strip_comments(gen_args *a)
{
    const char **text[2] = {&a->prompt, &a->negative};
    static const char *const what[2] = {"prompt", "negative prompt"};
    for (int i = 0; i < 2; i++) {
        int removed = 0;
        if (!*text[i])
            continue;
        if (!(a->uncommented[i] = mood_prompt_strip_comments(*text[i], &removed)))
            return cli_fail(MOOD_ENOMEM);
        if (removed)
            cli_warn("the %s has '#' comments: left out to the end of their lines, as A1111 "
                     "does",
                     what[i]);
        *text[i] = a->uncommented[i];
    }
    return 0;
}

/* -o names a PNG: the parameters travel in a PNG text chunk, and x.jpg holding PNG bytes would
 * mislead every program that trusts the name. */
static int check_output(const char *path)
{
    const char *slash = strrchr(path, '/'), *dot = strrchr(slash ? slash : path, '.');
    int err;
    if (!dot || strcasecmp(dot, ".png") != 0)
        return cli_usage_error("gen",
                               "-o %s: mood writes PNG images (with A1111's parameters in "
                               "them); give a name ending in .png",
                               path);
    err = mood_output_path_check(path);
    return err ? cli_fail(err) : 0;
}

int cmd_gen(int argc, char **argv)
{
    gen_run r;
    int rc;
    memset(&r, 0, sizeof r);
    mood_gen_options_init(&r.args.opts);
    r.args.opts.width = r.args.opts.height = 0; /* the model's own size unless --size says */
    r.args.prediction = -1;
    r.args.keep_index = -1;
    if ((rc = parse_args(&r.args, argc, argv)) == 0 && r.args.from_png) {
        rc = gen_apply_png(&r.args);
        if (rc == 0)
            rc = strip_comments(&r.args);
    } else if (rc == 0 && (rc = strip_comments(&r.args)) == 0) {
        gen_warn_a1111_syntax(&r.args);
        rc = gen_strip_networks(&r.args, "the",
                                ": the image is made, and its PNG written, "
                                "without it");
    }
    if (rc == 0 && r.args.output) /* before the model loads and the images are made */
        rc = check_output(r.args.output);
    if (rc == 0 && r.args.init_image)
        rc = read_init_image(&r);
    /* Ctrl-C before the images are written says so (the signal handler writes it) */
    cli_stop_note_set("stopped: no image written");
    if (rc == 0 && (rc = resolve_styles(&r)) == 0 && (rc = load_model(&r)) == 0 &&
        (rc = apply_styles(&r)) == 0 && (rc = generate(&r)) == 0) {
        cli_stop_note_set(NULL); /* writing: each image whole or not at all (atomic writes) */
        rc = gen_write_outputs(&r);
    }
    cli_stop_note_set(NULL);
    run_dispose(&r);
    return rc;
}
