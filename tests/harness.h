/*
 * harness.h: the tiny test harness used by every test program: MOOD_TEST functions registered
 * in a table, MOOD_CHECK assertions that report file:line and keep going, and helpers to find
 * fixtures (MOOD_FIXTURES, set by CTest) and a scratch directory, removed when all passed.
 *
 * A test program's main() is MOOD_TEST_MAIN(tests...). It prints one line per test, then
 * "N passed, N failed" and exits 0 only when nothing failed.
 */
#ifndef MOOD_TESTS_HARNESS_H
#define MOOD_TESTS_HARNESS_H

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mood/core.h"

static int harness_failures;

#define MOOD_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            harness_failures++;                                                                    \
        }                                                                                          \
    } while (0)

#define MOOD_CHECK_MSG(cond, ...)                                                                  \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            harness_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* Checks that a libmood call returned 0, printing mood_error_last() otherwise. */
#define MOOD_CHECK_OK(call)                                                                        \
    do {                                                                                           \
        int check_rc_ = (call);                                                                    \
        if (check_rc_ != 0) {                                                                      \
            fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call, check_rc_,   \
                    mood_error_last());                                                            \
            harness_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* Random test inputs: a seeded xorshift64* generator, the same values on every machine. */
static uint64_t harness_rng_state = 0x9E3779B97F4A7C15ull;

static inline void harness_rng_seed(uint64_t seed)
{
    harness_rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
}

/* Uniform in [-1, 1). */
static inline float harness_rnd(void)
{
    harness_rng_state ^= harness_rng_state >> 12;
    harness_rng_state ^= harness_rng_state << 25;
    harness_rng_state ^= harness_rng_state >> 27;
    uint64_t r = harness_rng_state * 0x2545F4914F6CDD1Dull;
    return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The scratch directory of this test program, made on first use (empty until then). */
static char harness_scratch[512];

/* A fresh scratch directory under $TMPDIR for this test program, removed when every test passed
 * (kept to look at otherwise, or with MOOD_TEST_KEEP set). Static buffer. */
static inline const char *scratch_dir(void)
{
    if (!harness_scratch[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(harness_scratch, sizeof harness_scratch, "%s/mood-test-XXXXXX",
                 tmp ? tmp : "/tmp");
        if (!mkdtemp(harness_scratch)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return harness_scratch;
}

/* Removes the tree at path, links not followed. */
static inline void harness_remove_tree(const char *path)
{
    struct stat st;
    DIR *d;
    if (lstat(path, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode) || (d = opendir(path)) == NULL) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char p[4096];
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", path, e->d_name) < sizeof p)
            harness_remove_tree(p);
    }
    closedir(d);
    rmdir(path);
}

/* At the end of a run: the scratch directory goes when nothing failed (test programs write
 * models and checkpoints there; left behind, runs filled /tmp by gigabytes). */
static inline void harness_scratch_done(int failed)
{
    if (!harness_scratch[0])
        return;
    if (failed || getenv("MOOD_TEST_KEEP"))
        fprintf(stderr, "scratch files kept in %s\n", harness_scratch);
    else
        harness_remove_tree(harness_scratch);
    harness_scratch[0] = '\0'; /* a second run in the program makes a new one */
}

typedef struct {
    const char *name;
    void (*fn)(void);
} harness_test;

#define MOOD_T(fn)                                                                                 \
    {                                                                                              \
#fn, fn                                                                                    \
    }

static inline int harness_run(const harness_test *tests, size_t n)
{
    int passed = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        int before = harness_failures;
        tests[i].fn();
        if (harness_failures == before) {
            passed++;
            printf("ok   %s\n", tests[i].name);
        } else {
            failed++;
            printf("FAIL %s\n", tests[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    harness_scratch_done(failed);
    return failed ? 1 : 0;
}

/* main of a test program with a --cuda mode (it runs again with the UNet on GPU 0): runs
 * `tests`, or with argv[1] "--cuda" sets *use_cuda and runs `cuda_tests`, naming the GPU; 77
 * (skipped, saying why) when the build has no CUDA backend or there is no GPU. */
static inline int harness_run_cuda_mode(int argc, char **argv, const harness_test *tests, size_t n,
                                        const harness_test *cuda_tests, size_t n_cuda,
                                        int *use_cuda)
{
    char name[256];
    *use_cuda = argc > 1 && strcmp(argv[1], "--cuda") == 0;
    if (!*use_cuda)
        return harness_run(tests, n);
    if (!mood_cuda_compiled() || mood_cuda_device_count(name, sizeof name) == 0) {
        printf("skipped: %s\n", mood_cuda_compiled() ? "no CUDA GPU" : "built without CUDA");
        return 77;
    }
    printf("UNet on GPU 0: %s\n", name);
    return harness_run(cuda_tests, n_cuda);
}

#define MOOD_TEST_MAIN(...)                                                                        \
    int main(void)                                                                                 \
    {                                                                                              \
        static const harness_test tests[] = {__VA_ARGS__};                                         \
        return harness_run(tests, sizeof tests / sizeof tests[0]);                                 \
    }

/* The largest |a[i] - b[i]| divided by max(floor, max |b[i]|): the error relative to the
 * reference's scale. A NaN in a gives NaN, which fails every "< tolerance" check. */
static inline double harness_rel_diff(const float *a, const float *b, size_t n, double floor)
{
    double d = 0, scale = floor;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        d = e > d || e != e ? e : d;
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
    }
    return d / scale;
}

/* Path of a fixture file: $MOOD_FIXTURES/rel (tests/fixtures when unset). Static buffer. */
static inline const char *fixture(const char *rel)
{
    static char path[4][4096];
    static int slot;
    const char *root = getenv("MOOD_FIXTURES");
    slot = (slot + 1) % 4;
    snprintf(path[slot], sizeof path[slot], "%s/%s", root ? root : "tests/fixtures", rel);
    return path[slot];
}

static inline const char *scratch_path(const char *name)
{
    static char path[4][1024];
    static int slot;
    slot = (slot + 1) % 4;
    snprintf(path[slot], sizeof path[slot], "%s/%s", scratch_dir(), name);
    return path[slot];
}

/* A new empty directory under the scratch dir: `what` and a counter, so every call gives another
 * (the path in scratch_path's slots). */
static inline const char *scratch_fresh_dir(const char *what)
{
    static int counter;
    char name[128];
    snprintf(name, sizeof name, "%s-%d", what, ++counter);
    const char *path = scratch_path(name);
    mkdir(path, 0755);
    return path;
}

/* Writes bytes to a file; returns 0 on success. */
static inline int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    if (n && fwrite(data, 1, n, f) != n) {
        fclose(f);
        return -1;
    }
    return fclose(f);
}

/* Reads a whole file into a malloc'd buffer; NULL on failure. */
static inline unsigned char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data;
    long n;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc(n > 0 ? (size_t)n : 1);
    if (data && n > 0 && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = (size_t)(n > 0 ? n : 0);
    return data;
}

/* Copies a file (a fixture into the scratch dir, to be changed there); 0 or -1. */
static inline int copy_file(const char *from, const char *to)
{
    size_t n;
    unsigned char *data = read_file(from, &n);
    int rc = data ? write_file(to, data, n) : -1;
    free(data);
    return rc;
}

/* Whether two files hold the same bytes. */
static inline int same_bytes(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    unsigned char *x = read_file(a, &na), *y = read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Parses a JSON file; NULL when it is missing or malformed. Free with cJSON_Delete. */
static inline cJSON *load_json(const char *path)
{
    size_t n = 0;
    unsigned char *text = read_file(path, &n);
    cJSON *root = text ? cJSON_ParseWithLength((const char *)text, n) : NULL;
    free(text);
    return root;
}

/* The string member `key` of o, or NULL. */
static inline const char *json_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The number at key (true counts as 1), 0 when absent: the fixtures' case settings. */
static inline double json_num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : (cJSON_IsTrue(v) ? 1 : 0);
}

/* |a-b| <= atol + rtol*|b| */
static inline int close_enough(double a, double b, double atol, double rtol)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return fabs(a - b) <= atol + rtol * fabs(b);
}

/* What the library logs as errors and warnings between harness_log_start() and
 * harness_log_stop(), one message per line, for checks on what a call said. */
static char harness_logged[4096];

static inline void harness_log_collect(int level, const char *message, void *payload)
{
    size_t n = strlen(harness_logged);
    (void)payload;
    if (level <= 1)
        snprintf(harness_logged + n, sizeof harness_logged - n, "%s\n", message);
}

static inline void harness_log_start(void)
{
    harness_logged[0] = '\0';
    mood_log_set(harness_log_collect, NULL);
}

static inline void harness_log_stop(void)
{
    mood_log_set(NULL, NULL);
}

#endif /* MOOD_TESTS_HARNESS_H */
