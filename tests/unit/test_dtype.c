/*
 * test_dtype.c: dtype names and sizes, and the float32 conversions checked bit for bit against
 * torch (tests/fixtures/st, tools/make_fixtures_safetensors.py):
 *   - decoding: every tensor of dtypes.safetensors against torch's own conversion of it in
 *     dtypes_f32.safetensors (.to(float32); .to(float64) for F64 and integers, which are compared
 *     exactly through mood_dtype_read_f64 and, rounded to float, through mood_st_to_f32);
 *   - encoding: float32 "src" of from_f32.safetensors to F16, BF16, F8_E4M3 and F8_E5M2 against
 *     torch's round-to-nearest-even casts. NaN must stay NaN; its payload bits are not compared.
 */
#include "harness.h"
#include "mood/safetensors.h"

static mood_st_file *open_fixture(const char *rel)
{
    mood_st_file *f = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, fixture(rel)));
    return f;
}

static int same_f32(float a, float b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

static int same_f64(double a, double b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

static void test_names(void)
{
    int seen_bits = 0;
    for (int i = 0; i < MOOD_DTYPE_COUNT; i++) {
        mood_dtype dt;
        MOOD_CHECK(mood_dtype_from_name(&dt, mood_dtype_name((mood_dtype)i)) == 0 && (int)dt == i);
        seen_bits += mood_dtype_bits((mood_dtype)i);
    }
    /* 4 + 6 + 6 + 8 * 8 (8-bit types) + 16 * 4 + 32 * 3 + 64 * 4 */
    MOOD_CHECK(seen_bits == 4 + 6 + 6 + 8 * 8 + 16 * 4 + 32 * 3 + 64 * 4);
    MOOD_CHECK(mood_dtype_bits(MOOD_DTYPE_F8_E4M3) == 8 && mood_dtype_bits(MOOD_DTYPE_C64) == 64);
    {
        mood_dtype dt;
        MOOD_CHECK(mood_dtype_from_name(&dt, "F8_E4M3FN") == MOOD_ENOTFOUND);
        MOOD_CHECK(mood_dtype_from_name(&dt, "f32") == MOOD_ENOTFOUND);
    }
    MOOD_CHECK(!mood_dtype_is_numeric(MOOD_DTYPE_C64) && !mood_dtype_is_numeric(MOOD_DTYPE_F4));
    MOOD_CHECK(mood_dtype_is_numeric(MOOD_DTYPE_F8_E8M0) && mood_dtype_is_numeric(MOOD_DTYPE_BOOL));
}

/* One tensor whose reference is float64 (F64 and integers). */
static void check_via_f64(const mood_st_tensor *t, const mood_st_tensor *ref, float *out)
{
    size_t n = (size_t)mood_st_numel(t), size = (size_t)mood_dtype_bits(t->dtype) / 8;
    const double *want = ref->data;
    for (size_t i = 0; i < n; i++) {
        double got;
        MOOD_CHECK_OK(mood_dtype_read_f64(&got, (const char *)t->data + i * size, t->dtype));
        MOOD_CHECK_MSG(same_f64(got, want[i]), "%s[%zu]: %.17g, torch %.17g", t->name, i, got,
                       want[i]);
        MOOD_CHECK_MSG(same_f32(out[i], (float)want[i]), "%s[%zu] as f32: %.9g, want %.9g", t->name,
                       i, (double)out[i], (double)(float)want[i]);
    }
}

static void check_via_f32(const mood_st_tensor *t, const mood_st_tensor *ref, const float *out)
{
    size_t n = (size_t)mood_st_numel(t), size = (size_t)mood_dtype_bits(t->dtype) / 8;
    const float *want = ref->data;
    for (size_t i = 0; i < n; i++) {
        double one;
        MOOD_CHECK_MSG(same_f32(out[i], want[i]), "%s[%zu]: %.9g, torch %.9g", t->name, i,
                       (double)out[i], (double)want[i]);
        MOOD_CHECK_OK(mood_dtype_read_f64(&one, (const char *)t->data + i * size, t->dtype));
        MOOD_CHECK_MSG(same_f32((float)one, want[i]), "%s[%zu] read_f64 %.9g", t->name, i, one);
    }
}

static void test_decode_against_torch(void)
{
    mood_st_file *src = open_fixture("st/dtypes.safetensors");
    mood_st_file *ref = open_fixture("st/dtypes_f32.safetensors");
    size_t checked = 0;
    int dtypes_seen[MOOD_DTYPE_COUNT] = {0};
    for (size_t i = 0; src && ref && i < mood_st_count(src); i++) {
        const mood_st_tensor *t = mood_st_at(src, i), *r = mood_st_find(ref, t->name);
        size_t n = (size_t)mood_st_numel(t);
        float *out = malloc((n ? n : 1) * sizeof *out);
        MOOD_CHECK_MSG(r && mood_st_numel(r) == (int64_t)n, "%s: no reference", t->name);
        if (!r)
            continue;
        MOOD_CHECK_OK(mood_st_to_f32(out, t));
        if (r->dtype == MOOD_DTYPE_F64)
            check_via_f64(t, r, out);
        else
            check_via_f32(t, r, out);
        dtypes_seen[t->dtype] = 1;
        checked += n;
        free(out);
    }
    MOOD_CHECK(checked > 1000);
    for (int d = 0; d < MOOD_DTYPE_COUNT; d++) {
        MOOD_CHECK_MSG(dtypes_seen[d] || !mood_dtype_is_numeric((mood_dtype)d) ||
                           d == MOOD_DTYPE_F8_E4M3FNUZ || d == MOOD_DTYPE_F8_E5M2FNUZ,
                       "no fixture tensor for %s", mood_dtype_name((mood_dtype)d));
    }
    mood_st_close(src);
    mood_st_close(ref);
}

static void check_encode(const mood_st_tensor *src, const mood_st_tensor *want)
{
    size_t n = (size_t)mood_st_numel(src), size = (size_t)mood_dtype_bits(want->dtype) / 8;
    const float *in = src->data;
    unsigned char *out = malloc(n * size);
    int mismatches = 0;
    MOOD_CHECK_OK(mood_dtype_from_f32(out, in, want->dtype, n));
    for (size_t i = 0; i < n; i++) {
        const unsigned char *a = out + i * size, *b = (const unsigned char *)want->data + i * size;
        float fa, fb;
        MOOD_CHECK_OK(mood_dtype_to_f32(&fa, a, want->dtype, 1));
        MOOD_CHECK_OK(mood_dtype_to_f32(&fb, b, want->dtype, 1));
        if (isnan(in[i]) ? !(isnan(fa) && isnan(fb)) : memcmp(a, b, size) != 0) {
            if (mismatches++ < 8)
                fprintf(stderr, "%s: %.9g -> %.9g (0x%02x%02x), torch %.9g (0x%02x%02x)\n",
                        want->name, (double)in[i], (double)fa, a[size - 1], a[0], (double)fb,
                        b[size - 1], b[0]);
        }
    }
    MOOD_CHECK_MSG(mismatches == 0, "%s: %d of %zu values differ from torch", want->name,
                   mismatches, n);
    free(out);
}

static void test_encode_against_torch(void)
{
    static const char *targets[] = {"F16", "BF16", "F8_E4M3", "F8_E5M2"};
    mood_st_file *f = open_fixture("st/from_f32.safetensors");
    const mood_st_tensor *src = f ? mood_st_find(f, "src") : NULL;
    MOOD_CHECK(src && src->dtype == MOOD_DTYPE_F32 && mood_st_numel(src) > 100);
    for (size_t k = 0; src && k < sizeof targets / sizeof targets[0]; k++) {
        const mood_st_tensor *want = mood_st_find(f, targets[k]);
        mood_dtype dt;
        MOOD_CHECK(want && mood_dtype_from_name(&dt, targets[k]) == 0 && want->dtype == dt);
        if (want && mood_st_numel(want) == mood_st_numel(src))
            check_encode(src, want);
    }
    mood_st_close(f);
}

static void test_unsupported(void)
{
    unsigned char bytes[8] = {0};
    float out[2];
    double d;
    MOOD_CHECK(mood_dtype_to_f32(out, bytes, MOOD_DTYPE_C64, 1) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(mood_dtype_to_f32(out, bytes, MOOD_DTYPE_F4, 2) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(mood_dtype_read_f64(&d, bytes, MOOD_DTYPE_F6_E3M2) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(mood_dtype_from_f32(bytes, out, MOOD_DTYPE_I8, 1) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "I8") != NULL);
}

MOOD_TEST_MAIN(MOOD_T(test_names), MOOD_T(test_decode_against_torch),
               MOOD_T(test_encode_against_torch), MOOD_T(test_unsupported))
