/*
 * styled_image.c: libmood from a program of your own, in one file: open a base model, apply a
 * LoRA at a strength, generate one image and write it as a PNG.
 *
 *   cc styled_image.c $(pkg-config --cflags --libs --static mood) -o styled_image
 *   ./styled_image MODEL LORA.safetensors 0.8 "a lighthouse at dusk" out.png
 *
 * MODEL is a single-file checkpoint or a diffusers folder (the installed mood-tiny is
 * <prefix>/share/mood/mood-tiny). Every libmood call returns 0 or an error code, and
 * mood_error_last() says what went wrong in words.
 */
#include <stdio.h>
#include <stdlib.h>

#include <mood/mood.h>

static int fail(const char *what)
{
    fprintf(stderr, "styled_image: %s: %s\n", what, mood_error_last());
    return 1;
}

int main(int argc, char **argv)
{
    mood_model *model = NULL;
    mood_gen_options o;
    mood_image *img = NULL;
    float *pixels = NULL;
    int rc = 1;
    if (argc != 6) {
        fprintf(stderr, "usage: styled_image MODEL LORA STRENGTH PROMPT OUT.png\n");
        return 2;
    }
    const mood_weighted_adapter lora = {
        .path = argv[2], .unet = atof(argv[3]), .te = atof(argv[3])};
    if (mood_model_open(&model, argv[1], NULL) != 0)
        return fail("opening the model");
    /* checked against the model first: a LoRA for another family is refused, naming both */
    if (mood_model_set_adapters(model, &lora, 1, MOOD_LORA_MERGE, NULL) != 0) {
        rc = fail("applying the LoRA");
        goto done;
    }
    mood_gen_options_init(&o);
    o.prompt = argv[4];
    o.seed = 42;
    mood_model_default_size(model, &o.width, &o.height);
    if (mood_generate(model, &o, &pixels, NULL) != 0) {
        rc = fail("generating");
        goto done;
    }
    if (mood_image_from_float(&img, pixels, 3, o.width, o.height) != 0 ||
        mood_image_write_png(argv[5], img, NULL, NULL, 0) != 0) {
        rc = fail("writing the image");
        goto done;
    }
    printf("%s: %dx%d, seed %llu\n", argv[5], o.width, o.height, (unsigned long long)o.seed);
    rc = 0;
done:
    mood_image_free(img);
    free(pixels);
    mood_model_free(model);
    return rc;
}
