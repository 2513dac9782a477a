/*
 * driver.c: main() for fuzz targets when the build has no libFuzzer (gcc, or MOOD_FUZZ off):
 * `fuzz_x CORPUS_DIR ITERATIONS` runs LLVMFuzzerTestOneInput on every corpus file, then on
 * ITERATIONS random mutations of them (byte flips, truncations, inserted digits/quotes/braces,
 * edits of the 8-byte length field) drawn from a fixed seed, so a run is reproducible. A crash
 * or sanitizer report is the failure; otherwise it prints "N passed, 0 failed".
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct input {
    uint8_t *data;
    size_t size;
} input;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    /* xorshift64*: fixed seed, same sequence on every run */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static int load_file(input *out, const char *path)
{
    FILE *f = fopen(path, "rb");
    long n;
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    out->size = n > 0 ? (size_t)n : 0;
    out->data = malloc(out->size + 1);
    if (!out->data || (out->size && fread(out->data, 1, out->size, f) != out->size)) {
        fclose(f);
        free(out->data);
        return -1;
    }
    fclose(f);
    return 0;
}

static size_t load_corpus(input **out, const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0, cap = 0;
    *out = NULL;
    while (d && (e = readdir(d)) != NULL) {
        char path[4096];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            *out = realloc(*out, cap * sizeof **out);
        }
        if (load_file(&(*out)[n], path) == 0)
            n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* Inserts `c` at position `at` (buffer has room for one more byte). */
static void insert_byte(input *in, size_t at, uint8_t c)
{
    memmove(in->data + at + 1, in->data + at, in->size - at);
    in->data[at] = c;
    in->size++;
}

static void mutate_once(input *in)
{
    static const char specials[] = "0123456789\"{}[],:-.e ";
    size_t at = in->size ? (size_t)(rnd() % in->size) : 0;
    switch (rnd() % 6) {
    case 0: /* flip a bit */
        if (in->size)
            in->data[at] ^= (uint8_t)(1u << (rnd() % 8));
        break;
    case 1: /* truncate */
        in->size = at;
        break;
    case 2: /* insert a digit, quote, brace ... */
        insert_byte(in, at, (uint8_t)specials[rnd() % (sizeof specials - 1)]);
        break;
    case 3: /* nudge the header length by a small amount */
        if (in->size >= 8)
            in->data[0] = (uint8_t)(in->data[0] + (int)(rnd() % 17) - 8);
        break;
    case 4: /* set a byte of the length field to anything */
        if (in->size >= 8)
            in->data[rnd() % 8] = (uint8_t)rnd();
        break;
    default: /* overwrite a digit with another digit (shapes and offsets) */
        if (in->size && in->data[at] >= '0' && in->data[at] <= '9')
            in->data[at] = (uint8_t)('0' + rnd() % 10);
        break;
    }
}

int main(int argc, char **argv)
{
    input *corpus;
    size_t n;
    long iterations, passed = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: %s CORPUS_DIR ITERATIONS\n", argv[0]);
        return 2;
    }
    iterations = strtol(argv[2], NULL, 10);
    n = load_corpus(&corpus, argv[1]);
    if (n == 0) {
        fprintf(stderr, "%s: no corpus files in %s\n", argv[0], argv[1]);
        return 2;
    }
    for (size_t i = 0; i < n; i++, passed++)
        LLVMFuzzerTestOneInput(corpus[i].data, corpus[i].size);
    for (long it = 0; it < iterations; it++, passed++) {
        const input *seed = &corpus[rnd() % n];
        int edits = 1 + (int)(rnd() % 4);
        input m = {malloc(seed->size + (size_t)edits + 1), seed->size};
        memcpy(m.data, seed->data, seed->size);
        for (int k = 0; k < edits; k++)
            mutate_once(&m);
        LLVMFuzzerTestOneInput(m.data, m.size);
        free(m.data);
    }
    for (size_t i = 0; i < n; i++)
        free(corpus[i].data);
    free(corpus);
    printf("%ld passed, 0 failed (%zu corpus files, %ld mutations)\n", passed, n, iterations);
    return 0;
}
