/*
 * dtype.c: the safetensors dtypes: names, sizes, and conversion to and from float32.
 *
 * Encoding rounds to nearest even exactly as torch's Tensor.to() does (c10's Half, BFloat16,
 * Float8_e4m3fn and Float8_e5m2 conversions): F16 and E5M2 overflow to inf, E4M3FN (no inf)
 * saturates to +-448 (inf included), NaN stays NaN. Decoding is exact for every format that fits
 * in float32.
 */
#include <math.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define MOOD_HAVE_F16C_PATH 1
#endif

#include "common/args.h"
#include "common/common.h"
#include "lora/lora_internal.h"
#include "mood/safetensors.h"

static const struct {
    const char *name;
    int bits;
} dtype_info[MOOD_DTYPE_COUNT] = {
    [MOOD_DTYPE_BOOL] = {"BOOL", 8},
    [MOOD_DTYPE_F4] = {"F4", 4},
    [MOOD_DTYPE_F6_E2M3] = {"F6_E2M3", 6},
    [MOOD_DTYPE_F6_E3M2] = {"F6_E3M2", 6},
    [MOOD_DTYPE_U8] = {"U8", 8},
    [MOOD_DTYPE_I8] = {"I8", 8},
    [MOOD_DTYPE_F8_E5M2] = {"F8_E5M2", 8},
    [MOOD_DTYPE_F8_E4M3] = {"F8_E4M3", 8},
    [MOOD_DTYPE_F8_E8M0] = {"F8_E8M0", 8},
    [MOOD_DTYPE_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [MOOD_DTYPE_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [MOOD_DTYPE_I16] = {"I16", 16},
    [MOOD_DTYPE_U16] = {"U16", 16},
    [MOOD_DTYPE_F16] = {"F16", 16},
    [MOOD_DTYPE_BF16] = {"BF16", 16},
    [MOOD_DTYPE_I32] = {"I32", 32},
    [MOOD_DTYPE_U32] = {"U32", 32},
    [MOOD_DTYPE_F32] = {"F32", 32},
    [MOOD_DTYPE_C64] = {"C64", 64},
    [MOOD_DTYPE_F64] = {"F64", 64},
    [MOOD_DTYPE_I64] = {"I64", 64},
    [MOOD_DTYPE_U64] = {"U64", 64},
};

const char *mood_dtype_name(mood_dtype dt)
{
    return (unsigned)dt < MOOD_DTYPE_COUNT ? dtype_info[dt].name : "?";
}

int mood_dtype_from_name(mood_dtype *out, const char *name)
{
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(name);
    for (int i = 0; i < MOOD_DTYPE_COUNT; i++) {
        if (strcmp(dtype_info[i].name, name) == 0) {
            *out = (mood_dtype)i;
            return 0;
        }
    }
    return MOOD_ENOTFOUND;
}

int mood_dtype_bits(mood_dtype dt)
{
    return (unsigned)dt < MOOD_DTYPE_COUNT ? dtype_info[dt].bits : 0;
}

int mood_dtype_is_numeric(mood_dtype dt)
{
    return (unsigned)dt < MOOD_DTYPE_COUNT && dt != MOOD_DTYPE_C64 && dt != MOOD_DTYPE_F4 &&
           dt != MOOD_DTYPE_F6_E2M3 && dt != MOOD_DTYPE_F6_E3M2;
}

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Decodes a small float with `e` exponent bits, `m` mantissa bits and exponent bias `bias`.
 * `has_inf`: the all-ones exponent encodes inf/NaN (IEEE style); otherwise only the NaN pattern
 * given by the caller is special. */
static float decode_minifloat(uint32_t v, int e, int m, int bias, int has_inf)
{
    uint32_t sign = v >> (e + m);
    uint32_t exp = (v >> m) & ((1u << e) - 1);
    uint32_t man = v & ((1u << m) - 1);
    float r;
    if (has_inf && exp == (1u << e) - 1)
        r = man ? NAN : INFINITY;
    else if (exp == 0)
        r = ldexpf((float)man, 1 - bias - m);
    else
        r = ldexpf((float)(man | (1u << m)), (int)exp - bias - m);
    return sign ? -r : r;
}

static float f8_e4m3fn_to_f32(uint8_t v)
{
    if ((v & 0x7F) == 0x7F)
        return NAN;
    return decode_minifloat(v, 4, 3, 7, 0);
}

static float f8_fnuz_to_f32(uint8_t v, int e, int m, int bias)
{
    if (v == 0x80)
        return NAN;
    return decode_minifloat(v, e, m, bias, 0);
}

static float f16_to_f32(uint16_t h)
{
    return decode_minifloat(h, 5, 10, 15, 1);
}

static uint16_t f32_to_f16(float f)
{
    /* Scale into the half range so that the FPU's own round-to-nearest-even does the rounding,
     * including for subnormal halves. */
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w = f32_to_bits(f);
    uint32_t shl1_w = w + w;
    uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    uint32_t bits, exp_bits, mantissa_bits;
    if (bias < 0x71000000u)
        bias = 0x71000000u;
    base = bits_to_f32((bias >> 1) + 0x07800000u) + base;
    bits = f32_to_bits(base);
    exp_bits = (bits >> 13) & 0x00007C00u;
    mantissa_bits = bits & 0x00000FFFu;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : exp_bits + mantissa_bits));
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_to_bits(f);
    if (isnan(f))
        return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static uint8_t f32_to_f8_e4m3fn(float f)
{
    uint32_t u = f32_to_bits(f);
    uint32_t sign = u & 0x80000000u;
    uint32_t result;
    u ^= sign;
    if (u > 0x7F800000u) {
        result = 0x7F; /* NaN */
    } else if (u >= 0x43E00000u) {
        /* |f| >= 448 (the largest finite value), inf included: torch's .to(float8_e4m3fn)
         * saturates to +-448 (checked against torch 2.15, tests/fixtures/st/from_f32). */
        result = 0x7E;
    } else if (u < (121u << 23)) {
        /* Subnormal result: adding 2^14 makes the FPU round at the right bit. */
        float denorm_mask = bits_to_f32(141u << 23);
        result = f32_to_bits(bits_to_f32(u) + denorm_mask) - (141u << 23);
    } else {
        uint32_t mant_odd = (u >> 20) & 1u;
        u += ((uint32_t)(7 - 127) << 23) + 0x7FFFFu;
        u += mant_odd;
        result = u >> 20;
    }
    return (uint8_t)(result | (sign >> 24));
}

static uint8_t f32_to_f8_e5m2(float f)
{
    uint32_t u = f32_to_bits(f);
    uint32_t sign = u & 0x80000000u;
    uint32_t result;
    u ^= sign;
    if (u >= (143u << 23)) {
        result = u > (255u << 23) ? 0x7F : 0x7C;
    } else if (u < (113u << 23)) {
        float denorm_mask = bits_to_f32(134u << 23);
        result = f32_to_bits(bits_to_f32(u) + denorm_mask) - (134u << 23);
    } else {
        uint32_t mant_odd = (u >> 21) & 1u;
        u += ((uint32_t)(15 - 127) << 23) + 0xFFFFFu;
        u += mant_odd;
        result = u >> 21;
    }
    return (uint8_t)(result | (sign >> 24));
}

/* ----- F16 arrays: the bulk of bake's work on fp16 checkpoints ------------------------------
 * x86-64 CPUs with F16C convert 8 values per instruction, rounding to nearest even like the
 * scalar code (and like torch); arrays are split over OpenMP threads in 64K-element chunks. */
#define CHUNK 65536

static void f16_to_f32_scalar(float *out, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        uint32_t exp;
        memcpy(&h, p + 2 * i, 2);
        exp = (h >> 10) & 0x1F;
        if (exp != 0 && exp != 0x1F) /* normal numbers: integer arithmetic, no branches below */
            out[i] = bits_to_f32(((uint32_t)(h & 0x8000) << 16) | ((exp + 112) << 23) |
                                 ((uint32_t)(h & 0x3FF) << 13));
        else
            out[i] = f16_to_f32(h);
    }
}

static void f32_to_f16_scalar(uint8_t *p, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h = f32_to_f16(src[i]);
        memcpy(p + 2 * i, &h, 2);
    }
}

#ifdef MOOD_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) static void f16_to_f32_f16c(float *out, const uint8_t *p,
                                                                size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
    f16_to_f32_scalar(out + i, p + 2 * i, n - i);
}

__attribute__((target("avx,f16c"))) static void f32_to_f16_f16c(uint8_t *p, const float *src,
                                                                size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(p + 2 * i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    f32_to_f16_scalar(p + 2 * i, src + i, n - i);
}

static int have_f16c(void)
{
    static int cached = -1;
    unsigned a, b, c, d;
    /* F16C is CPUID.1:ECX bit 29; "avx" also checks that the OS saves the YMM registers. Not
     * __builtin_cpu_supports("f16c"): clang 14 does not know that name. */
    if (cached < 0)
        cached = __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) &&
                 (c & (1u << 29)) != 0;
    return cached;
}
#endif

static void f16_to_f32_array(float *out, const uint8_t *p, size_t n)
{
    long chunks = (long)((n + CHUNK - 1) / CHUNK);
#pragma omp parallel for schedule(static) if (chunks > 4)
    for (long c = 0; c < chunks; c++) {
        size_t at = (size_t)c * CHUNK, len = n - at < CHUNK ? n - at : CHUNK;
#ifdef MOOD_HAVE_F16C_PATH
        if (have_f16c()) {
            f16_to_f32_f16c(out + at, p + 2 * at, len);
            continue;
        }
#endif
        f16_to_f32_scalar(out + at, p + 2 * at, len);
    }
}

static void f32_to_f16_array(uint8_t *p, const float *src, size_t n)
{
    long chunks = (long)((n + CHUNK - 1) / CHUNK);
#pragma omp parallel for schedule(static) if (chunks > 4)
    for (long c = 0; c < chunks; c++) {
        size_t at = (size_t)c * CHUNK, len = n - at < CHUNK ? n - at : CHUNK;
#ifdef MOOD_HAVE_F16C_PATH
        if (have_f16c()) {
            f32_to_f16_f16c(p + 2 * at, src + at, len);
            continue;
        }
#endif
        f32_to_f16_scalar(p + 2 * at, src + at, len);
    }
}

static double element_f64(const uint8_t *p, mood_dtype dt)
{
    union {
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } v;
    switch (dt) {
    case MOOD_DTYPE_BOOL:
        return p[0] != 0;
    case MOOD_DTYPE_U8:
        return p[0];
    case MOOD_DTYPE_I8:
        return (int8_t)p[0];
    case MOOD_DTYPE_F8_E5M2:
        return f16_to_f32((uint16_t)(p[0] << 8));
    case MOOD_DTYPE_F8_E4M3:
        return f8_e4m3fn_to_f32(p[0]);
    case MOOD_DTYPE_F8_E8M0:
        return p[0] == 0xFF ? NAN : ldexp(1.0, p[0] - 127);
    case MOOD_DTYPE_F8_E4M3FNUZ:
        return f8_fnuz_to_f32(p[0], 4, 3, 8);
    case MOOD_DTYPE_F8_E5M2FNUZ:
        return f8_fnuz_to_f32(p[0], 5, 2, 16);
    case MOOD_DTYPE_I16:
        memcpy(&v.i16, p, 2);
        return v.i16;
    case MOOD_DTYPE_U16:
        memcpy(&v.u16, p, 2);
        return v.u16;
    case MOOD_DTYPE_F16:
        memcpy(&v.u16, p, 2);
        return f16_to_f32(v.u16);
    case MOOD_DTYPE_BF16:
        memcpy(&v.u16, p, 2);
        return bits_to_f32((uint32_t)v.u16 << 16);
    case MOOD_DTYPE_I32:
        memcpy(&v.i32, p, 4);
        return v.i32;
    case MOOD_DTYPE_U32:
        memcpy(&v.u32, p, 4);
        return v.u32;
    case MOOD_DTYPE_F32:
        memcpy(&v.f32, p, 4);
        return v.f32;
    case MOOD_DTYPE_F64:
        memcpy(&v.f64, p, 8);
        return v.f64;
    case MOOD_DTYPE_I64:
        memcpy(&v.i64, p, 8);
        return (double)v.i64;
    case MOOD_DTYPE_U64:
        memcpy(&v.u64, p, 8);
        return (double)v.u64;
    default:
        return NAN;
    }
}

static int unsupported(mood_dtype dt, const char *what)
{
    return mood_error_set(MOOD_EUNSUPPORTED, "dtype %s cannot be converted %s float32",
                          mood_dtype_name(dt), what);
}

int mood_dtype_read_f64(double *out, const void *src, mood_dtype dt)
{
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(src);
    if (!mood_dtype_is_numeric(dt))
        return unsupported(dt, "to");
    *out = element_f64(src, dt);
    return 0;
}

/* Elements per OpenMP chunk of a large conversion: big enough that the threads' start-up is
 * noise, small enough that both cores share a 1-2 MB tensor. */
enum { CONVERT_CHUNK = 1 << 18 };

static int to_f32_serial(float *out, const void *src, mood_dtype dt, size_t n);

int mood_dtype_to_f32(float *out, const void *src, mood_dtype dt, size_t n)
{
    size_t chunks = (n + CONVERT_CHUNK - 1) / CONVERT_CHUNK, size;
    if (!mood_dtype_is_numeric(dt))
        return unsupported(dt, "to");
    if (chunks < 2)
        return to_f32_serial(out, src, dt, n);
    size = (size_t)mood_dtype_bits(dt) / 8;
    /* Loading a model converts gigabytes: every element is independent, so split them. */
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        size_t start = c * CONVERT_CHUNK,
               len = n - start < CONVERT_CHUNK ? n - start : CONVERT_CHUNK;
        (void)to_f32_serial(out + start, (const uint8_t *)src + start * size, dt, len);
    }
    return 0;
}

static int to_f32_serial(float *out, const void *src, mood_dtype dt, size_t n)
{
    const uint8_t *p = src;
    size_t size = (size_t)mood_dtype_bits(dt) / 8;
    if (dt == MOOD_DTYPE_F32) {
        memcpy(out, src, n * 4);
    } else if (dt == MOOD_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = bits_to_f32((uint32_t)h << 16);
        }
    } else if (dt == MOOD_DTYPE_F16) {
        f16_to_f32_array(out, p, n);
    } else {
        for (size_t i = 0; i < n; i++)
            out[i] = (float)element_f64(p + i * size, dt);
    }
    return 0;
}

int mood_dtype_from_f32(void *out, const float *src, mood_dtype dt, size_t n)
{
    uint8_t *p = out;
    switch (dt) {
    case MOOD_DTYPE_F32:
        memcpy(out, src, n * 4);
        return 0;
    case MOOD_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d = src[i];
            memcpy(p + 8 * i, &d, 8);
        }
        return 0;
    case MOOD_DTYPE_F16:
        f32_to_f16_array(p, src, n);
        return 0;
    case MOOD_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return 0;
    case MOOD_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            p[i] = f32_to_f8_e4m3fn(src[i]);
        return 0;
    case MOOD_DTYPE_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            p[i] = f32_to_f8_e5m2(src[i]);
        return 0;
    default:
        return unsupported(dt, "from");
    }
}

/* ----- finite values, from the raw bits (adapter.c checks every factor) ---------------------- */

/* Largest |x| bit pattern of n 16-bit floats: blocks of 64 so the compiler vectorizes the
 * max-reduction (a factor scan must not dominate `mood inspect`). */
static uint16_t max_abs_bits16(const uint8_t *p, int64_t n)
{
    /* The magnitudes fit in int16_t, whose max SSE2 computes 8 at a time (pmaxsw): a signed max
     * lets the compiler vectorize this loop on any x86-64. */
    int16_t buf[64], smx = 0;
    uint16_t mx;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        memcpy(buf, p + 2 * i, sizeof buf);
        for (int k = 0; k < 64; k++) {
            int16_t v = (int16_t)(buf[k] & 0x7FFF);
            smx = v > smx ? v : smx;
        }
    }
    mx = (uint16_t)smx;
    for (; i < n; i++) {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        v &= 0x7FFF;
        mx = v > mx ? v : mx;
    }
    return mx;
}

static uint32_t max_abs_bits32(const uint8_t *p, int64_t n)
{
    uint32_t buf[64], mx = 0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        memcpy(buf, p + 4 * i, sizeof buf);
        for (int k = 0; k < 64; k++) {
            uint32_t v = buf[k] & 0x7FFFFFFFu;
            mx = v > mx ? v : mx;
        }
    }
    for (; i < n; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        v &= 0x7FFFFFFFu;
        mx = v > mx ? v : mx;
    }
    return mx;
}

/* An IEEE-style value is not finite when its exponent bits are all ones, i.e. when its
 * magnitude bits are at least the infinity pattern. */
static int f8_finite(const uint8_t *p, int64_t n, mood_dtype dt)
{
    for (int64_t i = 0; i < n; i++) {
        uint8_t v = p[i];
        if ((dt == MOOD_DTYPE_F8_E4M3 && (v & 0x7F) == 0x7F) ||
            (dt == MOOD_DTYPE_F8_E5M2 && (v & 0x7C) == 0x7C) ||
            (dt == MOOD_DTYPE_F8_E8M0 && v == 0xFF) ||
            ((dt == MOOD_DTYPE_F8_E4M3FNUZ || dt == MOOD_DTYPE_F8_E5M2FNUZ) && v == 0x80))
            return 0;
    }
    return 1;
}

double mood__dtype_max(mood_dtype dt)
{
    switch (dt) {
    case MOOD_DTYPE_F16:
        return 65504.0;
    case MOOD_DTYPE_BF16:
        return 3.3895313892515355e38;
    case MOOD_DTYPE_F8_E4M3:
        return 448.0;
    case MOOD_DTYPE_F8_E5M2:
        return 57344.0;
    default:
        return 3.4028234663852886e38;
    }
}

int mood__dtype_all_finite(const void *data, int64_t n, mood_dtype dt)
{
    const uint8_t *p = data;
    switch (dt) {
    case MOOD_DTYPE_F32:
        return max_abs_bits32(p, n) < 0x7F800000u;
    case MOOD_DTYPE_F16:
        return max_abs_bits16(p, n) < 0x7C00;
    case MOOD_DTYPE_BF16:
        return max_abs_bits16(p, n) < 0x7F80;
    case MOOD_DTYPE_F64:
        for (int64_t i = 0; i < n; i++) {
            uint64_t v;
            memcpy(&v, p + 8 * i, 8);
            if ((v & 0x7FF0000000000000ull) == 0x7FF0000000000000ull)
                return 0;
        }
        return 1;
    case MOOD_DTYPE_F8_E4M3:
    case MOOD_DTYPE_F8_E5M2:
    case MOOD_DTYPE_F8_E4M3FNUZ:
    case MOOD_DTYPE_F8_E5M2FNUZ:
    case MOOD_DTYPE_F8_E8M0:
        return f8_finite(p, n, dt);
    default:
        return mood_dtype_is_numeric(dt) ? 1 : -1;
    }
}
