/*
 * rng.c: torch's random number generators, reproduced bit for bit on the CPU (mood/rng.h).
 *
 * CPU generator (aten/src/ATen/CPUGeneratorImpl.cpp, core/MT19937RNGEngine.h): mt19937 seeded
 * with the low 32 bits of the seed (Knuth's 1812433253 recurrence), regenerated lazily ("left"
 * counts down to 0 before the first draw). random() is one 32-bit output, random64() two,
 * the first in the high half. Uniform floats take the low 24 bits times 2^-24, doubles the low
 * 53 bits of random64() times 2^-53 (core/TransformationHelper.h uniform_real).
 *
 * torch.randn on the CPU (native/cpu/DistributionTemplates.h normal_kernel) has two paths:
 *  - numel >= 16 (contiguous): normal_fill. All n uniforms are drawn first, then every block of
 *    16 is turned in place into normals by Box-Muller over the pairs (j, j+8), u1 = 1 - x[j],
 *    u2 = x[j+8]: x[j] = r cos(2 pi u2), x[j+8] = r sin(2 pi u2), r = sqrt(-2 log u1). When n
 *    is not a multiple of 16, 16 more uniforms are drawn into x[n-16..n) and that last block is
 *    transformed again. float32 on AVX2 uses avx_mathfun.h's Cephes log256_ps/sincos256_ps in
 *    float, compiled by GCC with FMA contraction; cephes_log/cephes_sincos below replay those
 *    polynomials lane by lane with fmaf() where GCC contracts a product into its single
 *    add/sub use (the earlier product when both operands of an add are products). That
 *    placement was confirmed against 8.4 million torch 2.15 values, all bit-identical. The
 *    DEFAULT (no AVX2) build and float64 use std::log/cos/sin.
 *  - numel < 16: at::normal_distribution<double> per element: u1, u2 from random64(),
 *    r = sqrt(-2 log1p(-u2)), returns r cos(2 pi u1) and caches r sin(2 pi u1) in the
 *    generator (next_double_normal_sample), which the next small draw returns first. normal_fill
 *    neither reads nor clears that cache.
 *
 * CUDA generator (native/cuda/DistributionTemplates.h, curand_kernel.h, curand_normal.h):
 * each thread t of a grid-stride kernel calls curand_init(seed, subsequence = t, offset), i.e.
 * Philox counter (offset / 4, 0, t_lo, t_hi), key (seed_lo, seed_hi), then one curand4 per
 * loop turn (counter + 1 each time) turned into 4 normals by curand_normal4 (two Box-Mullers,
 * sin first). Turn k of thread t writes elements t + k*4*S + i*S, i = 0..3, S = 256 * grid.
 * The offset then advances by 4 * (turns per thread).
 *
 * Everything is written one IEEE operation per statement with explicit fmaf() so that no
 * compiler contraction (clang's default -ffp-contract=on) changes a bit.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/common.h"
#include "mood/rng.h"

#define MT_N 624
#define MT_M 397

struct mood_rng_torch_cpu {
    uint32_t state[MT_N];
    int left;
    uint32_t next;
    int has_normal; /* next_double_normal_sample is set */
    double normal;
    mood_rng_cpu_kernel kernel;
};

struct mood_rng_torch_cuda {
    uint64_t seed;
    uint64_t offset;
    mood_rng_cuda_layout layout;
};

/* ----- mt19937 ------------------------------------------------------------------------------ */

static void mt_seed(mood_rng_torch_cpu *g, uint64_t seed)
{
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < MT_N; j++) {
        uint32_t prev = g->state[j - 1];
        g->state[j] = 1812433253u * (prev ^ (prev >> 30)) + j;
    }
    g->left = 1;
    g->next = 0;
    g->has_normal = 0;
    g->normal = 0.0;
}

static uint32_t mt_twist(uint32_t u, uint32_t v)
{
    uint32_t mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mixed >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_regenerate(mood_rng_torch_cpu *g)
{
    uint32_t *s = g->state;
    int j = 0;
    for (; j < MT_N - MT_M; j++)
        s[j] = s[j + MT_M] ^ mt_twist(s[j], s[j + 1]);
    for (; j < MT_N - 1; j++)
        s[j] = s[j + MT_M - MT_N] ^ mt_twist(s[j], s[j + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ mt_twist(s[MT_N - 1], s[0]);
    g->left = MT_N;
    g->next = 0;
}

static uint32_t mt_next(mood_rng_torch_cpu *g)
{
    if (--g->left == 0)
        mt_regenerate(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static uint64_t mt_next64(mood_rng_torch_cpu *g)
{
    uint64_t hi = mt_next(g);
    uint64_t lo = mt_next(g);
    return (hi << 32) | lo;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits, exact in float. */
static float uniform_f32(mood_rng_torch_cpu *g)
{
    return (float)(mt_next(g) & 0xffffffu) * 0x1p-24f;
}

/* uniform_real_distribution<double>(0, 1): 53 random bits of random64(). */
static double uniform_f64(mood_rng_torch_cpu *g)
{
    return (double)(mt_next64(g) & ((UINT64_C(1) << 53) - 1)) * 0x1p-53;
}

/* ----- Cephes log / sincos in float, as avx_mathfun.h computes them per lane ----------------- */

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* log256_ps for x in (0, 1] (u1 = 1 - uniform never leaves it). */
static float cephes_log(float x)
{
    if (x < 0x1p-126f)
        x = 0x1p-126f; /* _mm256_max_ps with the smallest normal */
    uint32_t bits = f32_bits(x);
    int32_t exponent = (int32_t)(bits >> 23) - 0x7f;
    float e = (float)exponent;
    e = e + 1.0f;
    x = f32_from_bits((bits & ~0x7f800000u) | f32_bits(0.5f)); /* mantissa in [0.5, 1) */
    if (x < 0.707106781186547524f) {
        e = e - 1.0f;
        float t = x - 1.0f;
        x = t + x;
    } else {
        x = x - 1.0f;
    }
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, +1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, +2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, +3.3333331174E-1f);
    y = y * x;
    float eq1 = e * -2.12194440e-4f; /* GCC fused the earlier of the two products */
    y = fmaf(y, z, eq1);
    y = fmaf(-z, 0.5f, y);
    float sum = x + y;
    return fmaf(e, 0.693359375f, sum);
}

/* sincos256_ps for x >= 0 (theta = 2 pi u2). */
static void cephes_sincos(float x, float *sin_out, float *cos_out)
{
    float y = x * 1.27323954473516f; /* 4 / pi */
    int32_t j = (int32_t)y;          /* truncation, as _mm256_cvttps_epi32 */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t sign_sin = ((uint32_t)j & 4u) << 29;
    int poly_sin = (j & 2) != 0; /* the sine comes from the cosine polynomial */
    uint32_t sign_cos = (~(uint32_t)(j - 2) & 4u) << 29;
    x = fmaf(y, -0.78515625f, x); /* x - y pi/4 in three parts (Cephes DP1..DP3) */
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float c = 2.443315711809948E-005f;
    c = fmaf(c, z, -1.388731625493765E-003f);
    c = fmaf(c, z, 4.166664568298827E-002f);
    c = c * z;
    float half_z = z * 0.5f;
    c = fmaf(c, z, -half_z);
    c = c + 1.0f;
    float s = -1.9515295891E-4f;
    s = fmaf(s, z, 8.3321608736E-3f);
    s = fmaf(s, z, -1.6666654611E-1f);
    s = s * z;
    s = fmaf(s, x, x);
    float sin_v = poly_sin ? c : s;
    float cos_v = poly_sin ? s : c;
    *sin_out = f32_from_bits(f32_bits(sin_v) ^ sign_sin);
    *cos_out = f32_from_bits(f32_bits(cos_v) ^ sign_cos);
}

/* normal_fill_16 (AVX2): x[0..16) uniforms in, normals out. */
static void fill16_avx2(float *x)
{
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - x[j];
        float u2 = x[j + 8];
        float l = cephes_log(u1);
        float radius = sqrtf(-2.0f * l);
        float theta = two_pi * u2;
        float sn, cs;
        cephes_sincos(theta, &sn, &cs);
        float n1 = radius * cs;
        float n2 = radius * sn;
        x[j] = n1 + 0.0f; /* fmadd(n, std = 1, mean = 0): -0 becomes +0 */
        x[j + 8] = n2 + 0.0f;
    }
}

/* NormalFill16 primary template, float: std::log/cos/sin on floats; theta is computed in double
 * (2.0f * pi<double> * u2) and rounded to float. */
static void fill16_scalar(float *x)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - x[j];
        float u2 = x[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0 * 3.14159265358979323846 * (double)u2);
        float n1 = radius * cosf(theta);
        float n2 = radius * sinf(theta);
        x[j] = n1 + 0.0f;
        x[j + 8] = n2 + 0.0f;
    }
}

/* NormalFill16 primary template, double. */
static void fill16_f64(double *x)
{
    for (int j = 0; j < 8; j++) {
        double u1 = 1.0 - x[j];
        double u2 = x[j + 8];
        double radius = sqrt(-2.0 * log(u1));
        double theta = 2.0 * 3.14159265358979323846 * u2;
        double n1 = radius * cos(theta);
        double n2 = radius * sin(theta);
        x[j] = n1 + 0.0;
        x[j + 8] = n2 + 0.0;
    }
}

/* at::normal_distribution<double>(0, 1) with the generator's cached second value. */
static double normal_scalar(mood_rng_torch_cpu *g)
{
    if (g->has_normal) {
        g->has_normal = 0;
        return g->normal + 0.0;
    }
    double u1 = uniform_f64(g);
    double u2 = uniform_f64(g);
    double r = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->normal = r * sin(theta);
    g->has_normal = 1;
    double ret = r * cos(theta);
    return ret + 0.0;
}

/* ----- public: CPU generator ---------------------------------------------------------------- */

int mood_rng_torch_cpu_new(mood_rng_torch_cpu **out, uint64_t seed)
{
    if (!out)
        return mood_error_set(MOOD_EINVAL, "mood_rng_torch_cpu_new: out is NULL");
    *out = NULL;
    mood_rng_torch_cpu *g = mood_calloc(1, sizeof *g);
    if (!g)
        return mood_error_nomem();
    mt_seed(g, seed);
    g->kernel = MOOD_RNG_CPU_KERNEL_AVX2;
    *out = g;
    return MOOD_OK;
}

void mood_rng_torch_cpu_free(mood_rng_torch_cpu *g)
{
    mood_free(g);
}

void mood_rng_torch_cpu_seed(mood_rng_torch_cpu *g, uint64_t seed)
{
    if (g)
        mt_seed(g, seed);
}

int mood_rng_torch_cpu_set_kernel(mood_rng_torch_cpu *g, mood_rng_cpu_kernel k)
{
    if (!g || (k != MOOD_RNG_CPU_KERNEL_AVX2 && k != MOOD_RNG_CPU_KERNEL_SCALAR))
        return mood_error_set(MOOD_EINVAL, "mood_rng_torch_cpu_set_kernel: bad argument");
    g->kernel = k;
    return MOOD_OK;
}

uint32_t mood_rng_torch_cpu_next_u32(mood_rng_torch_cpu *g)
{
    return mt_next(g);
}

/* ----- state (de)serialisation ------------------------------------------------------------- */

#define STATE_VERSION 1u

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return p + 4;
}

static const uint8_t *get_u32(const uint8_t *p, uint32_t *v)
{
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return p + 4;
}

/* Layout: version, state[624], left, next, has_normal (u32 each), normal (f64 bits, u64),
 * kernel (u32). */
void mood_rng_torch_cpu_get_state(const mood_rng_torch_cpu *g,
                                  uint8_t out[MOOD_RNG_TORCH_CPU_STATE_SIZE])
{
    uint8_t *p = out;
    uint64_t bits;
    p = put_u32(p, STATE_VERSION);
    for (int i = 0; i < MT_N; i++)
        p = put_u32(p, g->state[i]);
    p = put_u32(p, (uint32_t)g->left);
    p = put_u32(p, g->next);
    p = put_u32(p, (uint32_t)g->has_normal);
    memcpy(&bits, &g->normal, sizeof bits);
    p = put_u32(p, (uint32_t)bits);
    p = put_u32(p, (uint32_t)(bits >> 32));
    put_u32(p, (uint32_t)g->kernel);
}

int mood_rng_torch_cpu_set_state(mood_rng_torch_cpu *g, const uint8_t *in, size_t size)
{
    mood_rng_torch_cpu t;
    uint32_t version, left, has_normal, lo, hi, kernel;
    uint64_t bits;
    const uint8_t *p = in;
    if (!g || !in || size != MOOD_RNG_TORCH_CPU_STATE_SIZE)
        return mood_error_set(MOOD_EFORMAT, "random generator state: %zu bytes, expected %d", size,
                              MOOD_RNG_TORCH_CPU_STATE_SIZE);
    p = get_u32(p, &version);
    for (int i = 0; i < MT_N; i++)
        p = get_u32(p, &t.state[i]);
    p = get_u32(p, &left);
    p = get_u32(p, &t.next);
    p = get_u32(p, &has_normal);
    p = get_u32(p, &lo);
    p = get_u32(p, &hi);
    get_u32(p, &kernel);
    /* After seeding left = 1 and next = 0; after any draw left + next = MT_N + 1 (mt_next
     * counts left down before it regenerates). */
    if (version != STATE_VERSION || left < 1 || left > MT_N || t.next > MT_N ||
        (left + t.next != MT_N + 1 && !(left == 1 && t.next == 0)) || has_normal > 1 ||
        (kernel != MOOD_RNG_CPU_KERNEL_AVX2 && kernel != MOOD_RNG_CPU_KERNEL_SCALAR))
        return mood_error_set(MOOD_EFORMAT, "random generator state: invalid (version %u)",
                              version);
    bits = (uint64_t)hi << 32 | lo;
    memcpy(&t.normal, &bits, sizeof bits);
    t.left = (int)left;
    t.has_normal = (int)has_normal;
    t.kernel = (mood_rng_cpu_kernel)kernel;
    *g = t;
    return MOOD_OK;
}

static int check_args(const void *g, const void *out, size_t n, const char *fn)
{
    if (!g || (!out && n > 0))
        return mood_error_set(MOOD_EINVAL, "%s: NULL generator or output", fn);
    return MOOD_OK;
}

int mood_rng_torch_cpu_randn(mood_rng_torch_cpu *g, float *out, size_t n)
{
    int err = check_args(g, out, n, "mood_rng_torch_cpu_randn");
    if (err < 0)
        return err;
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = (float)normal_scalar(g);
        return MOOD_OK;
    }
    void (*fill16)(float *) = g->kernel == MOOD_RNG_CPU_KERNEL_SCALAR ? fill16_scalar : fill16_avx2;
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f32(g);
    for (size_t i = 0; i + 16 <= n; i += 16)
        fill16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(g);
        fill16(tail);
    }
    return MOOD_OK;
}

int mood_rng_torch_cpu_randn_f64(mood_rng_torch_cpu *g, double *out, size_t n)
{
    int err = check_args(g, out, n, "mood_rng_torch_cpu_randn_f64");
    if (err < 0)
        return err;
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = normal_scalar(g);
        return MOOD_OK;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f64(g);
    for (size_t i = 0; i + 16 <= n; i += 16)
        fill16_f64(out + i);
    if (n % 16 != 0) {
        double *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f64(g);
        fill16_f64(tail);
    }
    return MOOD_OK;
}

int mood_rng_torch_cpu_rand(mood_rng_torch_cpu *g, float *out, size_t n)
{
    int err = check_args(g, out, n, "mood_rng_torch_cpu_rand");
    if (err < 0)
        return err;
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f32(g);
    return MOOD_OK;
}

int mood_rng_torch_cpu_rand_f64(mood_rng_torch_cpu *g, double *out, size_t n)
{
    int err = check_args(g, out, n, "mood_rng_torch_cpu_rand_f64");
    if (err < 0)
        return err;
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f64(g);
    return MOOD_OK;
}

int mood_rng_torch_cpu_randint(mood_rng_torch_cpu *g, int64_t *out, size_t n, int64_t low,
                               int64_t high)
{
    int err = check_args(g, out, n, "mood_rng_torch_cpu_randint");
    if (err < 0)
        return err;
    if (low >= high)
        return mood_error_set(MOOD_EINVAL, "randint: low (%lld) must be below high (%lld)",
                              (long long)low, (long long)high);
    /* uniform_int_from_to_distribution: range = high - low as uint64; 64-bit draws from 2^28 */
    uint64_t range = (uint64_t)high - (uint64_t)low;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = range >= (UINT64_C(1) << 28) ? mt_next64(g) : mt_next(g);
        out[i] = (int64_t)(v % range + (uint64_t)low);
    }
    return MOOD_OK;
}

/* ----- Philox4x32-10 -------------------------------------------------------------------------- */

void mood_rng_philox(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* curandStatePhilox4_32_10_t, the parts torch's kernels use. */
typedef struct curand_state {
    uint32_t ctr[4];
    uint32_t key[2];
    uint32_t output[4];
    uint32_t sub; /* STATE: words of output already used, 0..3 */
} curand_state;

/* ctr += n in the low 64 bits, with curand's carry into the high half. */
static void ctr_add(uint32_t *ctr, uint64_t n)
{
    uint32_t lo = (uint32_t)n;
    uint32_t hi = (uint32_t)(n >> 32);
    ctr[0] += lo;
    if (ctr[0] < lo)
        hi++;
    ctr[1] += hi;
    if (hi <= ctr[1])
        return;
    if (++ctr[2])
        return;
    ++ctr[3];
}

/* curand_init(seed, subsequence, offset) */
static void curand_init_state(curand_state *st, uint64_t seed, uint64_t subsequence,
                              uint64_t offset)
{
    memset(st, 0, sizeof *st);
    st->key[0] = (uint32_t)seed;
    st->key[1] = (uint32_t)(seed >> 32);
    /* skipahead_sequence: the subsequence is the high 64 bits of the counter */
    uint32_t lo = (uint32_t)subsequence;
    uint32_t hi = (uint32_t)(subsequence >> 32);
    st->ctr[2] += lo;
    if (st->ctr[2] < lo)
        hi++;
    st->ctr[3] += hi;
    /* skipahead: offset counts 32-bit words */
    st->sub += (uint32_t)(offset & 3u);
    uint64_t blocks = offset / 4;
    if (st->sub > 3) {
        blocks++;
        st->sub -= 4;
    }
    ctr_add(st->ctr, blocks);
    mood_rng_philox(st->output, st->ctr, st->key);
}

static void curand4(curand_state *st, uint32_t r[4])
{
    uint32_t prev[4];
    memcpy(prev, st->output, sizeof prev);
    ctr_add(st->ctr, 1);
    mood_rng_philox(st->output, st->ctr, st->key);
    for (uint32_t i = 0; i < 4; i++) {
        uint32_t k = i + st->sub;
        r[i] = k < 4 ? prev[k] : st->output[k - 4];
    }
}

/* _curand_box_muller: (s sin v, s cos v) with u = x 2^-32 + 2^-33, v = y 2^-32 2pi + half. The
 * GPU uses logf and __sincosf; here log/sin/cos are evaluated in double and rounded. */
static void box_muller_f32(uint32_t x, uint32_t y, float *first, float *second)
{
    const float inv = 0x1p-32f;
    const float inv_2pi = 0x1p-32f * 6.2831855f;
    float u = fmaf((float)x, inv, inv / 2.0f);
    float v = fmaf((float)y, inv_2pi, inv_2pi / 2.0f);
    float lg = (float)log((double)u);
    float s = sqrtf(-2.0f * lg);
    float sn = (float)sin((double)v);
    float cs = (float)cos((double)v);
    *first = sn * s;
    *second = cs * s;
}

/* _curand_box_muller_double (sincospi on the GPU). */
static void box_muller_f64(const uint32_t r[4], double *first, double *second)
{
    uint64_t zx = (uint64_t)r[0] ^ ((uint64_t)r[1] << 21);
    uint64_t zy = (uint64_t)r[2] ^ ((uint64_t)r[3] << 21);
    double u = fma((double)zx, 0x1p-53, 0x1p-54);
    double v = fma((double)zy, 0x1p-52, 0x1p-53);
    double s = sqrt(-2.0 * log(u));
    double pv = v * 3.14159265358979323846;
    *first = sin(pv) * s;
    *second = cos(pv) * s;
}

/* ----- public: CUDA generator ---------------------------------------------------------------- */

void mood_rng_cuda_layout_init(mood_rng_cuda_layout *layout)
{
    if (!layout)
        return;
    layout->sm_count = 128;
    layout->max_threads_per_sm = 1536;
}

int mood_rng_torch_cuda_new(mood_rng_torch_cuda **out, uint64_t seed,
                            const mood_rng_cuda_layout *layout)
{
    if (!out)
        return mood_error_set(MOOD_EINVAL, "mood_rng_torch_cuda_new: out is NULL");
    *out = NULL;
    mood_rng_cuda_layout l;
    mood_rng_cuda_layout_init(&l);
    if (layout)
        l = *layout;
    if (l.sm_count == 0 || l.max_threads_per_sm < 256)
        return mood_error_set(MOOD_EINVAL,
                              "cuda layout: sm_count %u, max_threads_per_sm %u (need >= 1, >= 256)",
                              l.sm_count, l.max_threads_per_sm);
    mood_rng_torch_cuda *g = mood_calloc(1, sizeof *g);
    if (!g)
        return mood_error_nomem();
    g->seed = seed;
    g->offset = 0;
    g->layout = l;
    *out = g;
    return MOOD_OK;
}

void mood_rng_torch_cuda_free(mood_rng_torch_cuda *g)
{
    mood_free(g);
}

uint64_t mood_rng_torch_cuda_offset(const mood_rng_torch_cuda *g)
{
    return g ? g->offset : 0;
}

void mood_rng_torch_cuda_set_offset(mood_rng_torch_cuda *g, uint64_t offset)
{
    if (g)
        g->offset = offset;
}

/* calc_execution_policy: threads in the grid (256 * grid) and the offset increment. */
static uint64_t cuda_policy(const mood_rng_torch_cuda *g, uint64_t n, uint64_t unroll,
                            uint64_t *offset_step)
{
    const uint64_t block = 256;
    uint64_t grid = (n + block - 1) / block;
    uint64_t max_grid = (uint64_t)g->layout.sm_count * (g->layout.max_threads_per_sm / block);
    if (grid > max_grid)
        grid = max_grid;
    uint64_t threads = block * grid;
    *offset_step = ((n - 1) / (threads * unroll) + 1) * 4;
    return threads;
}

/* What every CUDA draw does first: check the arguments, lay the threads out as torch would for
 * `unroll` values per curand call, and advance the generator's offset past this draw. */
static int cuda_launch(mood_rng_torch_cuda *g, const void *out, size_t n, uint64_t unroll,
                       const char *what, uint64_t *threads, uint64_t *offset)
{
    uint64_t step;
    int err = check_args(g, out, n, what);
    if (err < 0)
        return err;
    if (n > INT32_MAX)
        return mood_error_set(MOOD_EINVAL, "cuda randn: %zu elements need 64-bit indexing", n);
    *threads = n ? cuda_policy(g, n, unroll, &step) : 0;
    *offset = g->offset;
    if (n)
        g->offset += step;
    return 0;
}

int mood_rng_torch_cuda_randn(mood_rng_torch_cuda *g, float *out, size_t n)
{
    uint64_t threads, offset;
    int err = cuda_launch(g, out, n, 4, "mood_rng_torch_cuda_randn", &threads, &offset);
    if (err < 0)
        return err;
    for (uint64_t t = 0; t < threads && t < n; t++) {
        curand_state st;
        curand_init_state(&st, g->seed, t, offset);
        for (uint64_t base = t; base < n; base += 4 * threads) {
            uint32_t r[4];
            float v[4];
            curand4(&st, r);
            box_muller_f32(r[0], r[1], &v[0], &v[1]);
            if (base + 2 * threads < n)
                box_muller_f32(r[2], r[3], &v[2], &v[3]);
            for (uint64_t i = 0; i < 4 && base + i * threads < n; i++)
                out[base + i * threads] = v[i];
        }
    }
    return MOOD_OK;
}

int mood_rng_torch_cuda_randn_f64(mood_rng_torch_cuda *g, double *out, size_t n)
{
    uint64_t threads, offset;
    int err = cuda_launch(g, out, n, 2, "mood_rng_torch_cuda_randn_f64", &threads, &offset);
    if (err < 0)
        return err;
    for (uint64_t t = 0; t < threads && t < n; t++) {
        curand_state st;
        curand_init_state(&st, g->seed, t, offset);
        for (uint64_t base = t; base < n; base += 2 * threads) {
            uint32_t r[4];
            double v[2];
            curand4(&st, r);
            box_muller_f64(r, &v[0], &v[1]);
            out[base] = v[0];
            if (base + threads < n)
                out[base + threads] = v[1];
        }
    }
    return MOOD_OK;
}
