/*
 * bench_registry.c: builds a registry of N styles for bench/registry.sh: imports one LoRA, then
 * creates N styles that use it, with varied trigger words, descriptions and tags, so that `mood
 * list` and `mood search` can be timed on a registry of realistic size.
 *
 * usage: bench_registry HOME LORA N
 */
#include <stdio.h>
#include <stdlib.h>

#include "mood/mood.h"

static const char *const words[] = {"ink",    "wash", "film",    "grain",  "neon",   "pastel",
                                    "comic",  "noir", "gouache", "pixel",  "retro",  "anime",
                                    "sketch", "oil",  "matte",   "glossy", "dreamy", "gothic"};
#define N_WORDS (sizeof words / sizeof words[0])

static int create_styles(mood_registry *r, const char *sha, long n)
{
    for (long i = 0; i < n; i++) {
        char name[64], triggers[128], description[256];
        const char *a = words[i % N_WORDS], *b = words[(i / N_WORDS) % N_WORDS];
        mood_style_lora lora = {sha, 1.0, 1.0};
        mood_style_spec spec = {0};
        int err;
        snprintf(name, sizeof name, "style-%05ld", i);
        snprintf(triggers, sizeof triggers, "%s%ld, %s style", a, i, b);
        snprintf(description, sizeof description, "A %s %s look, number %ld of the benchmark", a, b,
                 i);
        spec.trigger_words = triggers;
        spec.description = description;
        spec.loras = &lora;
        spec.n_loras = 1;
        if ((err = mood_registry_style_create(r, name, &spec)) != 0 ||
            (i % 10 == 0 && (err = mood_registry_tag(r, name, a, 1)) != 0)) {
            fprintf(stderr, "bench_registry: %s\n", mood_error_last());
            return err;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    mood_registry *r = NULL;
    mood_import_result imported;
    int err;
    if (argc != 4) {
        fprintf(stderr, "usage: bench_registry HOME LORA N\n");
        return 1;
    }
    if ((err = mood_registry_open(&r, argv[1])) != 0 ||
        (err = mood_registry_import_file(r, &imported, argv[2], NULL, NULL)) != 0) {
        fprintf(stderr, "bench_registry: %s\n", mood_error_last());
        mood_registry_close(r);
        return 2;
    }
    err = create_styles(r, imported.sha256, atol(argv[3]));
    mood_registry_close(r);
    return err ? 2 : 0;
}
