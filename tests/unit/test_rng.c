/*
 * test_rng.c: mood's torch-compatible generators (engine/rng.c) against torch itself.
 *
 *  - CPU generator: every case of tests/fixtures/rng/torch_cpu.safetensors (written by
 *    tools/make_fixtures_rng.py with torch 2.15): seeds 0, 1, 42, 2^32-1, 2^63-1, -1, 2^32+7;
 *    numel 1..16384 on both sides of torch's 16-element threshold; calls in sequence on one
 *    generator; float64; rand; randint; torch's AVX2 and DEFAULT normal kernels. Compared bit for
 *    bit (memcmp per element): mood replays torch's exact float operations, so no tolerance.
 *  - Philox4x32-10: Random123's published known-answer vectors (kat_vectors), and the raw words
 *    of torch's own at::philox_engine (torch_philox.safetensors).
 *  - CUDA generator: the 64 values torch 2.x printed for torch.manual_seed(0);
 *    torch.randn(8, 8, device="cuda") on a real GPU (sm_75), as published to 4 decimals;
 *    AUTOMATIC1111's NumPy re-implementation (a1111_philox.safetensors: 38960 values, seeds up to
 *    2^64-1, calls in a row; within 2e-6, see test_cuda_against_a1111 for what that covers) and
 *    the 8-digit example in its docstring; layout invariants (prefix property below the grid
 *    size, Box-Muller pairing, offset steps).
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>

#include "common/common.h"
#include "mood/rng.h"
#include "mood/safetensors.h"
#include "harness.h"

/* ----- CPU generator against torch ------------------------------------------------------------ */

/* Runs one call of a case on g and compares with the fixture tensor bit for bit. Returns the
 * number of differing elements. */
static size_t run_call(mood_rng_torch_cpu *g, const cJSON *call, const mood_st_tensor *t,
                       const char *label)
{
    const char *op = cJSON_GetStringValue(cJSON_GetObjectItem(call, "op"));
    size_t n = (size_t)mood_st_numel(t);
    size_t width = strcmp(op, "randn_f32") == 0 || strcmp(op, "rand_f32") == 0 ? 4 : 8;
    unsigned char *got = calloc(n ? n : 1, width);
    size_t bad = 0;
    int rc;
    MOOD_CHECK(got != NULL);
    if (!got)
        return 1;
    if (strcmp(op, "randn_f32") == 0)
        rc = mood_rng_torch_cpu_randn(g, (float *)got, n);
    else if (strcmp(op, "randn_f64") == 0)
        rc = mood_rng_torch_cpu_randn_f64(g, (double *)got, n);
    else if (strcmp(op, "rand_f32") == 0)
        rc = mood_rng_torch_cpu_rand(g, (float *)got, n);
    else if (strcmp(op, "rand_f64") == 0)
        rc = mood_rng_torch_cpu_rand_f64(g, (double *)got, n);
    else {
        int64_t low = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(call, "low"));
        int64_t high = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(call, "high"));
        rc = mood_rng_torch_cpu_randint(g, (int64_t *)got, n, low, high);
    }
    MOOD_CHECK_OK(rc);
    MOOD_CHECK_MSG(mood_st_nbytes(t) == n * width, "%s: fixture dtype", label);
    for (size_t i = 0; i < n && mood_st_nbytes(t) == n * width; i++) {
        const unsigned char *want = (const unsigned char *)t->data + i * width;
        if (memcmp(got + i * width, want, width) == 0)
            continue;
        if (bad < 3) {
            double a, b;
            if (width == 4) {
                float fa, fb;
                memcpy(&fa, got + i * width, 4);
                memcpy(&fb, want, 4);
                a = fa;
                b = fb;
            } else {
                memcpy(&a, got + i * width, 8);
                memcpy(&b, want, 8);
            }
            fprintf(stderr, "%s[%zu]: mood %.9g torch %.9g\n", label, i, a, b);
        }
        bad++;
    }
    free(got);
    return bad;
}

static void test_cpu_against_torch(void)
{
    mood_st_file *f = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, fixture("rng/torch_cpu.safetensors")));
    if (!f)
        return;
    cJSON *cases = cJSON_Parse(mood_st_meta_get(f, "cases"));
    MOOD_CHECK(cJSON_IsArray(cases));
    int ncases = 0;
    size_t nvalues = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "case"));
        const char *kernel = cJSON_GetStringValue(cJSON_GetObjectItem(c, "kernel"));
        uint64_t seed = strtoull(cJSON_GetStringValue(cJSON_GetObjectItem(c, "seed")), NULL, 10);
        mood_rng_torch_cpu *g = NULL;
        MOOD_CHECK_OK(mood_rng_torch_cpu_new(&g, seed));
        if (!g)
            break;
        MOOD_CHECK_OK(mood_rng_torch_cpu_set_kernel(g, strcmp(kernel, "scalar") == 0
                                                           ? MOOD_RNG_CPU_KERNEL_SCALAR
                                                           : MOOD_RNG_CPU_KERNEL_AVX2));
        int k = 0;
        const cJSON *call;
        cJSON_ArrayForEach(call, cJSON_GetObjectItem(c, "calls"))
        {
            char label[128];
            snprintf(label, sizeof label, "%s/%d", name, k++);
            const mood_st_tensor *t = mood_st_find(f, label);
            MOOD_CHECK_MSG(t != NULL, "fixture lacks %s", label);
            if (!t)
                continue;
            size_t bad = run_call(g, call, t, label);
            MOOD_CHECK_MSG(bad == 0, "%s: %zu of %lld values differ from torch", label, bad,
                           (long long)mood_st_numel(t));
            nvalues += (size_t)mood_st_numel(t);
        }
        mood_rng_torch_cpu_free(g);
        ncases++;
    }
    MOOD_CHECK(ncases >= 15);
    printf("     %d cases, %zu values equal to torch bit for bit\n", ncases, nvalues);
    cJSON_Delete(cases);
    mood_st_close(f);
}

/* The reference mt19937 (Matsumoto & Nishimura, init_genrand(5489)): 10000th output 4123659995
 * (the C++ standard's check for std::mt19937). */
static void test_mt19937_reference(void)
{
    mood_rng_torch_cpu *g = NULL;
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&g, 5489));
    if (!g)
        return;
    MOOD_CHECK(mood_rng_torch_cpu_next_u32(g) == 3499211612u);
    uint32_t v = 0;
    for (int i = 1; i < 10000; i++)
        v = mood_rng_torch_cpu_next_u32(g);
    MOOD_CHECK(v == 4123659995u);
    /* re-seeding restarts the stream and only the low 32 bits of the seed count */
    mood_rng_torch_cpu_seed(g, 5489 + (UINT64_C(1) << 32));
    MOOD_CHECK(mood_rng_torch_cpu_next_u32(g) == 3499211612u);
    mood_rng_torch_cpu_free(g);
}

/* ----- Philox -----------------------------------------------------------------------------------
 */

/* Random123 1.14 tests/kat_vectors, the three "philox4x32 10" lines: counter, key, expected. */
static void test_philox_kat(void)
{
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        mood_rng_philox(out, kat[i], kat[i] + 4);
        MOOD_CHECK_MSG(memcmp(out, kat[i] + 6, sizeof out) == 0, "kat %d: %08x %08x %08x %08x", i,
                       out[0], out[1], out[2], out[3]);
    }
}

/* at::philox_engine(seed, subsequence, offset): counter = (offset as 2 words, subsequence as 2
 * words), one block per 4 words, counter + 1 (128-bit) after each block. */
static void test_philox_torch_engine(void)
{
    mood_st_file *f = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, fixture("rng/torch_philox.safetensors")));
    if (!f)
        return;
    MOOD_CHECK(mood_st_count(f) >= 6);
    for (size_t i = 0; i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        uint64_t seed, sub, off;
        MOOD_CHECK(sscanf(t->name, "philox/%" SCNu64 "/%" SCNu64 "/%" SCNu64, &seed, &sub, &off) ==
                   3);
        MOOD_CHECK(t->dtype == MOOD_DTYPE_I64 && mood_st_numel(t) == 8);
        uint32_t ctr[4] = {(uint32_t)off, (uint32_t)(off >> 32), (uint32_t)sub,
                           (uint32_t)(sub >> 32)};
        uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t got[8];
        mood_rng_philox(got, ctr, key);
        for (int w = 0; w < 4 && ++ctr[w] == 0; w++)
            ;
        mood_rng_philox(got + 4, ctr, key);
        for (int w = 0; w < 8; w++) {
            int64_t want;
            memcpy(&want, (const char *)t->data + 8 * w, 8);
            MOOD_CHECK_MSG((int64_t)got[w] == want, "%s word %d: %u, torch %lld", t->name, w,
                           got[w], (long long)want);
        }
    }
    mood_st_close(f);
}

/* ----- CUDA generator
 * ----------------------------------------------------------------------------- */

/* torch.manual_seed(0); torch.randn(8, 8, device="cuda") as printed (4 decimals) by torch 2.2 on
 * an sm_75 GPU in a public notebook (kapilsh, "CUDA Mode - Fusing Kernels Talk", 2024). For
 * n <= 256 * grid every thread writes one element, so the values hold on any GPU. */
static const float gpu_seed0_8x8[64] = {
    -0.9247f, -0.4253f, -2.6438f, 0.1452f,  -0.1209f, -0.5797f, -0.6229f, -0.3284f,
    -1.0745f, -0.3631f, -1.6711f, 2.2655f,  0.3117f,  -0.1842f, 1.2866f,  1.1820f,
    -0.1271f, 1.2169f,  1.4353f,  1.0605f,  -0.4941f, -1.4244f, -0.7244f, -1.2973f,
    0.0697f,  -0.0074f, 1.8969f,  0.6878f,  -0.0779f, -0.8373f, 1.3506f,  -0.2879f,
    -0.5965f, -0.3283f, -0.9086f, -0.8059f, -0.7407f, -0.0504f, 0.5435f,  1.5150f,
    0.0141f,  0.4532f,  1.6349f,  0.7124f,  -0.1806f, 1.0252f,  -1.4622f, -0.7554f,
    -0.1836f, 0.3824f,  0.3918f,  -0.0830f, 0.8971f,  -1.1123f, 0.1116f,  0.4863f,
    -0.5499f, -0.3231f, -0.5469f, 0.9049f,  0.2837f,  0.1210f,  0.4730f,  -1.0823f,
};

static void test_cuda_against_gpu_printout(void)
{
    mood_rng_torch_cuda *g = NULL;
    float out[64];
    MOOD_CHECK_OK(mood_rng_torch_cuda_new(&g, 0, NULL));
    if (!g)
        return;
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, out, 64));
    for (int i = 0; i < 64; i++)
        MOOD_CHECK_MSG(fabsf(out[i] - gpu_seed0_8x8[i]) <= 0.00005f + 1e-6f, "[%d] %.6f vs %.4f", i,
                       out[i], gpu_seed0_8x8[i]);
    MOOD_CHECK(mood_rng_torch_cuda_offset(g) == 4);
    mood_rng_torch_cuda_free(g);
}

/* AUTOMATIC1111's modules/rng_philox.py (stable-diffusion-webui's "NV" noise source, a NumPy
 * re-implementation of torch.randn(..., device="cuda"); fixture rng/a1111_philox.safetensors
 * from tools/make_fixtures_rng_a1111.py). Call k of A1111's Generator(seed) gives element i
 * the Philox block of counter (k, 0, i, 0), key seed (torch: curand_init(seed, i, 4k), one
 * curand4, offset + 4 per call) and then s sin v from its first two words, computed in double
 * and rounded once. This is torch's layout while every GPU thread writes one element (here
 * n <= 16384), so it checks mood's counter, key, subsequence and offset bookkeeping (seeds up to
 * 2^64-1, calls in a row) against an implementation written independently of mood. It does not
 * check mood against a GPU: A1111's Box-Muller is not curand's float one (curand rounds x and y
 * to float and u, v too, then logf/__sincosf). That rounding of v (|dv| <= 2pi 2^-25 +
 * ulp(v)/2) times s = sqrt(-2 ln u) (up to 6.8) makes mood and A1111 differ by up to a few 1e-6
 * where sin v is near 0; on these 38960 values at most 1.54e-6, mean 8e-8. */

/* A1111's float64 Box-Muller on the first two words (CURAND_2POW32_INV(_2PI) are float). */
static float a1111_box_muller(uint32_t x, uint32_t y)
{
    const double inv = (double)0x1p-32f, inv_2pi = (double)(0x1p-32f * 6.2831855f);
    const double half = (double)(0x1p-32f / 2.0f), half_2pi = (double)(0x1p-32f * 6.2831855f / 2);
    double u = (double)x * inv + half;
    double v = (double)y * inv_2pi + half_2pi;
    return (float)(sqrt(-2.0 * log(u)) * sin(v));
}

/* One call: mood against A1111 (|d| <= 2e-6), and A1111's values against its own formula on
 * the Philox words at A1111's counter (equal up to the last float bit, which a libm differing
 * from NumPy's in a double ulp could flip). */
static void a1111_call(mood_rng_torch_cuda *g, uint64_t seed, uint32_t k, const mood_st_tensor *t,
                       double *maxdiff, double *sumdiff, size_t *formula_off)
{
    size_t n = (size_t)mood_st_numel(t);
    float *got = malloc(n * sizeof *got);
    const float *want = (const float *)t->data;
    MOOD_CHECK(got != NULL && mood_st_nbytes(t) == n * sizeof(float));
    if (!got || mood_st_nbytes(t) != n * sizeof(float)) {
        free(got);
        return;
    }
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, got, n));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        *sumdiff += d;
        *maxdiff = d > *maxdiff ? d : *maxdiff;
        if (!(d <= 2e-6) && bad++ < 3)
            fprintf(stderr, "%s[%zu]: mood %.9g A1111 %.9g\n", t->name, i, got[i], want[i]);
        uint32_t ctr[4] = {k, 0, (uint32_t)i, 0}, key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t w[4];
        mood_rng_philox(w, ctr, key);
        float f = a1111_box_muller(w[0], w[1]);
        *formula_off += f != want[i];
        MOOD_CHECK_MSG(fabsf(f - want[i]) <= 1e-7f * (1.0f + fabsf(f)), "%s[%zu]: %.9g vs %.9g",
                       t->name, i, f, want[i]);
    }
    MOOD_CHECK_MSG(bad == 0, "%s: %zu of %zu values differ from A1111 by more than 2e-6", t->name,
                   bad, n);
    free(got);
}

static void test_cuda_against_a1111(void)
{
    mood_st_file *f = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, fixture("rng/a1111_philox.safetensors")));
    if (!f)
        return;
    cJSON *cases = cJSON_Parse(mood_st_meta_get(f, "cases"));
    MOOD_CHECK(cJSON_IsArray(cases));
    size_t nvalues = 0, formula_off = 0;
    double maxdiff = 0, sumdiff = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "case"));
        uint64_t seed = strtoull(cJSON_GetStringValue(cJSON_GetObjectItem(c, "seed")), NULL, 10);
        mood_rng_torch_cuda *g = NULL;
        MOOD_CHECK_OK(mood_rng_torch_cuda_new(&g, seed, NULL));
        if (!g)
            break;
        int ncalls = cJSON_GetArraySize(cJSON_GetObjectItem(c, "shapes"));
        for (int k = 0; k < ncalls; k++) {
            char label[128];
            snprintf(label, sizeof label, "%s/%d", name, k);
            const mood_st_tensor *t = mood_st_find(f, label);
            MOOD_CHECK_MSG(t != NULL, "fixture lacks %s", label);
            if (!t)
                continue;
            a1111_call(g, seed, (uint32_t)k, t, &maxdiff, &sumdiff, &formula_off);
            nvalues += (size_t)mood_st_numel(t);
            MOOD_CHECK(mood_rng_torch_cuda_offset(g) == 4 * (uint64_t)(k + 1));
        }
        mood_rng_torch_cuda_free(g);
    }
    MOOD_CHECK(nvalues >= 38000);
    printf("     %zu values: |mood - A1111| max %.3g, mean %.3g; A1111 = its formula on the Philox "
           "words bit for bit except %zu\n",
           nvalues, maxdiff, nvalues ? sumdiff / (double)nvalues : 0.0, formula_off);
    cJSON_Delete(cases);
    mood_st_close(f);
}

/* The "Expected output" of rng_philox.py's docstring, Generator(seed=0).randn((3, 4)), 8
 * digits. The file's own code does not give these (it differs by up to 2.6e-7); their
 * differences from curand's formula with exact sin, up to 3.6e-7 * s, are the size of
 * __sincosf's error, so they look like a GPU's values, but their source is not stated. */
static const double a1111_doc_seed0_3x4[12] = {
    -0.92466259, -0.42534415, -2.6438457,  0.14518388,  -0.12086647, -0.57972564,
    -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497,
};

static void test_cuda_against_a1111_docstring(void)
{
    mood_rng_torch_cuda *g = NULL;
    float out[12];
    MOOD_CHECK_OK(mood_rng_torch_cuda_new(&g, 0, NULL));
    if (!g)
        return;
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, out, 12));
    for (int i = 0; i < 12; i++) /* measured: at most 6.2e-7 */
        MOOD_CHECK_MSG(fabs(out[i] - a1111_doc_seed0_3x4[i]) <= 1e-6, "[%d] %.9g vs %.8f", i,
                       out[i], a1111_doc_seed0_3x4[i]);
    mood_rng_torch_cuda_free(g);
}

static void test_cuda_layout(void)
{
    mood_rng_torch_cuda *g = NULL, *h = NULL;
    mood_rng_cuda_layout one_block = {.sm_count = 1, .max_threads_per_sm = 256};
    float a[64], *b = malloc(196609 * sizeof *b);
    MOOD_CHECK(b != NULL);
    MOOD_CHECK_OK(mood_rng_torch_cuda_new(&g, 7, NULL));
    MOOD_CHECK_OK(mood_rng_torch_cuda_new(&h, 7, &one_block));
    if (!g || !h || !b)
        goto done;
    /* below 256 * grid, element i is thread i's first normal whatever n is */
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, a, 64));
    mood_rng_torch_cuda_set_offset(g, 0);
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, b, 1000));
    MOOD_CHECK(memcmp(a, b, sizeof a) == 0);
    /* offsets: 4 per loop turn; an RTX 4090 has 128 * 6 * 256 = 196608 threads */
    mood_rng_torch_cuda_set_offset(g, 0);
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, b, 196608));
    MOOD_CHECK(mood_rng_torch_cuda_offset(g) == 4);
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, b, 196609)); /* still one turn per thread */
    MOOD_CHECK(mood_rng_torch_cuda_offset(g) == 8);
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(h, b, 1025)); /* 256 threads: 2 turns */
    MOOD_CHECK(mood_rng_torch_cuda_offset(h) == 8);
    mood_rng_torch_cuda_set_offset(h, 0);
    /* one block of 256 threads: thread t writes t, t+256, t+512, t+768 from one Philox block:
     * the first two are the sin/cos pair of one Box-Muller, so their squares add up to
     * -2 ln u with u from word 0 of Philox(counter (0, 0, t, 0), key 7) */
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(h, b, 1024));
    MOOD_CHECK(mood_rng_torch_cuda_offset(h) == 4);
    for (uint32_t t = 0; t < 256; t += 17) {
        uint32_t ctr[4] = {0, 0, t, 0}, key[2] = {7, 0}, w[4];
        mood_rng_philox(w, ctr, key);
        double u = ((double)w[0] + 0.5) * 0x1p-32;
        double r2 = (double)b[t] * b[t] + (double)b[t + 256] * b[t + 256];
        MOOD_CHECK_MSG(fabs(r2 + 2.0 * log(u)) <= 1e-5 * (1.0 + r2), "thread %u: %g vs %g", t, r2,
                       -2.0 * log(u));
    }
done:
    free(b);
    mood_rng_torch_cuda_free(g);
    mood_rng_torch_cuda_free(h);
}

static void test_cuda_f64(void)
{
    mood_rng_torch_cuda *g = NULL;
    double out[1000];
    float f[1000];
    MOOD_CHECK_OK(mood_rng_torch_cuda_new(&g, 0, NULL));
    if (!g)
        return;
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn_f64(g, out, 1000));
    MOOD_CHECK(mood_rng_torch_cuda_offset(g) == 4);
    double sum = 0, sq = 0;
    for (int i = 0; i < 1000; i++) {
        MOOD_CHECK(isfinite(out[i]));
        sum += out[i];
        sq += out[i] * out[i];
    }
    MOOD_CHECK(fabs(sum / 1000) < 0.15 && fabs(sq / 1000 - 1.0) < 0.15);
    MOOD_CHECK_OK(mood_rng_torch_cuda_randn(g, f, 1000));
    MOOD_CHECK(mood_rng_torch_cuda_offset(g) == 8);
    mood_rng_torch_cuda_free(g);
}

static void test_arguments(void)
{
    mood_rng_torch_cpu *g = NULL;
    int64_t v[4];
    float x;
    MOOD_CHECK(mood_rng_torch_cpu_new(NULL, 0) == MOOD_EINVAL);
    MOOD_CHECK(mood_rng_torch_cuda_new(NULL, 0, NULL) == MOOD_EINVAL);
    mood_rng_cuda_layout bad = {.sm_count = 0, .max_threads_per_sm = 1536};
    mood_rng_torch_cuda *c = NULL;
    MOOD_CHECK(mood_rng_torch_cuda_new(&c, 0, &bad) == MOOD_EINVAL && c == NULL);
    mood_rng_torch_cpu_free(NULL);
    mood_rng_torch_cuda_free(NULL);
    MOOD_CHECK_OK(mood_rng_torch_cpu_new(&g, 3));
    if (!g)
        return;
    MOOD_CHECK(mood_rng_torch_cpu_randint(g, v, 4, 5, 5) == MOOD_EINVAL);
    MOOD_CHECK(mood_rng_torch_cpu_randn(g, NULL, 1) == MOOD_EINVAL);
    MOOD_CHECK(mood_rng_torch_cpu_set_kernel(g, (mood_rng_cpu_kernel)9) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_rng_torch_cpu_randn(g, &x, 0));
    mood_error_clear();
    mood_rng_torch_cpu_free(g);
}

MOOD_TEST_MAIN(MOOD_T(test_mt19937_reference), MOOD_T(test_cpu_against_torch),
               MOOD_T(test_philox_kat), MOOD_T(test_philox_torch_engine),
               MOOD_T(test_cuda_against_gpu_printout), MOOD_T(test_cuda_against_a1111),
               MOOD_T(test_cuda_against_a1111_docstring), MOOD_T(test_cuda_layout),
               MOOD_T(test_cuda_f64), MOOD_T(test_arguments))
