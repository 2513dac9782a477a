/*
 * test_delta.c: ΔW of every algorithm (lora/delta.c) on tiny hand-built modules, each compared
 * with an independent formula written out as plain loops here (explicit sums for Tucker,
 * Kronecker and Hadamard products, closed-form Cayley transforms, permutation matrices for the
 * BOFT butterfly, the DoRA norm formulas of lora-formats.md §3.5), plus the properties the
 * algorithms guarantee (R orthogonal, strength 0 = no change) and the error paths.
 * The conformance against the reference tools' output lives in test_bake.c.
 */
#include "harness.h"
#include "lora/lora_internal.h"

/* ----- building modules by hand ------------------------------------------------------------- */

#define MAXT 16
static mood_st_tensor tensors[MAXT];
static int n_tensors;

/* A float32 tensor over caller-owned data; shape is given as up to 4 dims (0 ends). */
static const mood_st_tensor *tensor(const char *name, const float *data, int64_t d0, int64_t d1,
                                    int64_t d2, int64_t d3)
{
    mood_st_tensor *t = &tensors[n_tensors++ % MAXT];
    int64_t dims[4] = {d0, d1, d2, d3};
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = MOOD_DTYPE_F32;
    for (int i = 0; i < 4 && dims[i] > 0; i++)
        t->shape[t->ndim++] = dims[i];
    t->end = (uint64_t)mood_st_numel(t) * 4;
    t->data = data;
    return t;
}

static mood_module module(mood_algo algo, int ndim, int64_t out, int64_t in, int64_t kh, int64_t kw,
                          double scale)
{
    mood_module m;
    memset(&m, 0, sizeof m);
    m.name = "test_module";
    m.algo = algo;
    m.ndim = ndim;
    m.out = out;
    m.in = in;
    m.kh = kh;
    m.kw = kw;
    m.scale = scale;
    return m;
}

/* Deterministic pseudo-random values in [-1, 1). */
static void fill(float *x, int n, unsigned seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
}

static int all_close(const float *a, const float *b, int n, double tol)
{
    for (int i = 0; i < n; i++) {
        if (!close_enough(a[i], b[i], tol, tol)) {
            fprintf(stderr, "  element %d: %.8g vs %.8g\n", i, a[i], b[i]);
            return 0;
        }
    }
    return 1;
}

/* ----- LoRA --------------------------------------------------------------------------------- */

static void test_lora_linear(void)
{
    float u[3 * 2], d[2 * 4], got[12], want[12];
    mood_module m = module(MOOD_ALGO_LORA, 2, 3, 4, 1, 1, 0.5);
    fill(u, 6, 1);
    fill(d, 8, 2);
    m.t[ROLE_UP] = tensor("m.lora_up.weight", u, 3, 2, 0, 0);
    m.t[ROLE_DOWN] = tensor("m.lora_down.weight", d, 2, 4, 0, 0);
    for (int o = 0; o < 3; o++)
        for (int i = 0; i < 4; i++)
            want[o * 4 + i] = 0.5f * (u[o * 2] * d[i] + u[o * 2 + 1] * d[4 + i]);
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, 12, 1e-6));
}

static void test_lora_conv_and_reshape(void)
{
    enum { O = 3, R = 2, I = 4, K = 9 };
    float u[O * R], d[R * I * K], got[O * I * K], want[O * I * K], w[O * I * K];
    mood_module m = module(MOOD_ALGO_LORA, 4, O, I, 3, 3, 2.0);
    fill(u, O * R, 3);
    fill(d, R * I * K, 4);
    m.t[ROLE_UP] = tensor("up", u, O, R, 1, 1);
    m.t[ROLE_DOWN] = tensor("down", d, R, I, 3, 3);
    for (int o = 0; o < O; o++)
        for (int j = 0; j < I * K; j++) {
            double s = 0;
            for (int r = 0; r < R; r++)
                s += u[o * R + r] * d[r * I * K + j];
            want[o * I * K + j] = (float)(2.0 * s);
        }
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-6));

    /* A 2-D LoRA on a 1x1 conv target: reshaped by element count (§3). */
    m = module(MOOD_ALGO_LORA, 4, O, I, 1, 1, 1.0);
    m.t[ROLE_UP] = tensor("up", u, O, R, 0, 0);
    m.t[ROLE_DOWN] = tensor("down", d, R, I, 0, 0);
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            want[o * I + i] = u[o * R] * d[i] + u[o * R + 1] * d[I + i];
    MOOD_CHECK(all_close(got, want, O * I, 1e-6));

    /* apply: W + m·ΔW */
    fill(w, O * I, 5);
    memcpy(got, w, sizeof(float) * O * I);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, -0.7f));
    for (int i = 0; i < O * I; i++)
        want[i] = w[i] - 0.7f * want[i];
    MOOD_CHECK(all_close(got, want, O * I, 1e-6));

    /* a factor product that does not fit the target is an error naming the module */
    m.in = 5;
    MOOD_CHECK(mood__module_delta(got, &m, NULL) == MOOD_EFORMAT);
    MOOD_CHECK(strstr(mood_error_last(), "test_module") != NULL);
}

static void test_lora_tucker(void)
{
    enum { O = 3, RA = 2, RB = 3, I = 4, K = 4 };
    float u[O * RA], mid[RA * RB * K], d[RB * I], got[O * I * K], want[O * I * K];
    mood_module m = module(MOOD_ALGO_LORA, 4, O, I, 2, 2, 0.25);
    fill(u, O * RA, 6);
    fill(mid, RA * RB * K, 7);
    fill(d, RB * I, 8);
    m.t[ROLE_UP] = tensor("up", u, O, RA, 1, 1);
    m.t[ROLE_MID] = tensor("mid", mid, RA, RB, 2, 2);
    m.t[ROLE_DOWN] = tensor("down", d, RB, I, 1, 1);
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int a = 0; a < RA; a++)
                    for (int b = 0; b < RB; b++)
                        s += u[o * RA + a] * mid[(a * RB + b) * K + k] * d[b * I + i];
                want[(o * I + i) * K + k] = (float)(0.25 * s);
            }
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-6));
}

/* A DyLoRA cut (A1111's dyn_dim): the first `dyn` ranks only, at the full-rank scale. */
static void test_dylora_cut(void)
{
    enum { O = 3, R = 4, I = 2, K = 9 };
    float u[O * R], d[R * I * K], got[O * I * K], want[O * I * K], w[O * I * K], before[O * I * K];
    mood_module m = module(MOOD_ALGO_LORA, 4, O, I, 3, 3, 0.5); /* alpha 2 / rank 4 */
    fill(u, O * R, 11);
    fill(d, R * I * K, 12);
    memcpy(before, u, sizeof u);
    m.t[ROLE_UP] = tensor("up", u, O, R, 1, 1);
    m.t[ROLE_DOWN] = tensor("down", d, R, I, 3, 3);
    for (int dyn = 1; dyn <= R + 2; dyn++) {
        for (int o = 0; o < O; o++)
            for (int j = 0; j < I * K; j++) {
                double s = 0;
                for (int r = 0; r < dyn && r < R; r++)
                    s += u[o * R + r] * d[r * I * K + j];
                want[o * I * K + j] = (float)(0.5 * s);
            }
        m.dyn = dyn;
        MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
        MOOD_CHECK_MSG(all_close(got, want, O * I * K, 1e-6), "dyn %d", dyn);
        MOOD_CHECK(memcmp(u, before, sizeof u) == 0); /* the file's factors are not touched */
    }
    /* apply with a multiplier: W + m·ΔW of the cut */
    m.dyn = 1;
    fill(w, O * I * K, 13);
    memcpy(got, w, sizeof w);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 0.8f));
    for (int o = 0; o < O; o++)
        for (int j = 0; j < I * K; j++)
            want[o * I * K + j] = w[o * I * K + j] + 0.8f * 0.5f * u[o * R] * d[j];
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-6));
}

/* ----- LoHa --------------------------------------------------------------------------------- */

static void test_loha(void)
{
    enum { O = 4, R = 2, I = 3, K = 4 };
    float w1a[O * R], w1b[R * I * K], w2a[O * R], w2b[R * I * K], got[O * I * K], want[O * I * K];
    float t1[R * R * K], t2[R * R * K];
    mood_module m = module(MOOD_ALGO_LOHA, 4, O, I, 2, 2, 1.5);
    fill(w1a, O * R, 9);
    fill(w1b, R * I * K, 10);
    fill(w2a, O * R, 11);
    fill(w2b, R * I * K, 12);
    m.t[ROLE_HADA_W1A] = tensor("w1a", w1a, O, R, 0, 0);
    m.t[ROLE_HADA_W1B] = tensor("w1b", w1b, R, I * K, 0, 0);
    m.t[ROLE_HADA_W2A] = tensor("w2a", w2a, O, R, 0, 0);
    m.t[ROLE_HADA_W2B] = tensor("w2b", w2b, R, I * K, 0, 0);
    for (int o = 0; o < O; o++)
        for (int j = 0; j < I * K; j++) {
            double s1 = 0, s2 = 0;
            for (int r = 0; r < R; r++) {
                s1 += w1a[o * R + r] * w1b[r * I * K + j];
                s2 += w2a[o * R + r] * w2b[r * I * K + j];
            }
            want[o * I * K + j] = (float)(1.5 * s1 * s2);
        }
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-6));

    /* Tucker: *_a stored (r, out), *_b (r, in), t (r, r, kh, kw) */
    fill(t1, R * R * K, 13);
    fill(t2, R * R * K, 14);
    m.t[ROLE_HADA_W1A] = tensor("w1a", w1a, R, O, 0, 0);
    m.t[ROLE_HADA_W1B] = tensor("w1b", w1b, R, I, 0, 0);
    m.t[ROLE_HADA_W2A] = tensor("w2a", w2a, R, O, 0, 0);
    m.t[ROLE_HADA_W2B] = tensor("w2b", w2b, R, I, 0, 0);
    m.t[ROLE_HADA_T1] = tensor("t1", t1, R, R, 2, 2);
    m.t[ROLE_HADA_T2] = tensor("t2", t2, R, R, 2, 2);
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int k = 0; k < K; k++) {
                double s1 = 0, s2 = 0;
                for (int a = 0; a < R; a++)
                    for (int b = 0; b < R; b++) {
                        s1 += t1[(a * R + b) * K + k] * w1a[a * O + o] * w1b[b * I + i];
                        s2 += t2[(a * R + b) * K + k] * w2a[a * O + o] * w2b[b * I + i];
                    }
                want[(o * I + i) * K + k] = (float)(1.5 * s1 * s2);
            }
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-6));
}

/* ----- LoKr --------------------------------------------------------------------------------- */

/* Explicit Kronecker: ΔW[i*b + p, j*d + q, y, x] = W1[i,j] · W2[p,q,y,x]. */
static void kron_ref(float *out, const float *w1, int a, int c, const float *w2, int b, int d,
                     int kk, double s)
{
    for (int i = 0; i < a; i++)
        for (int j = 0; j < c; j++)
            for (int p = 0; p < b; p++)
                for (int q = 0; q < d; q++)
                    for (int k = 0; k < kk; k++)
                        out[((i * b + p) * (c * d) + (j * d + q)) * kk + k] =
                            (float)(s * w1[i * c + j] * w2[(p * d + q) * kk + k]);
}

static void test_lokr(void)
{
    enum { A = 2, C = 3, B = 2, D = 2, K = 4, R = 2 };
    float w1[A * C], w1a[A * R], w1b[R * C], w2[B * D * K], w2a[B * R], w2b[R * D * K],
        t2[R * R * K], w2full[B * D * K], got[A * B * C * D * K], want[A * B * C * D * K];
    mood_module m = module(MOOD_ALGO_LOKR, 4, A * B, C * D, 2, 2, 1.0);
    fill(w1, A * C, 15);
    fill(w2, B * D * K, 16);
    /* both full, W2 4-D */
    m.t[ROLE_LOKR_W1] = tensor("w1", w1, A, C, 0, 0);
    m.t[ROLE_LOKR_W2] = tensor("w2", w2, B, D, 2, 2);
    kron_ref(want, w1, A, C, w2, B, D, K, 1.0);
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, A * B * C * D * K, 1e-6));

    /* W1 decomposed, W2 decomposed non-Tucker (stored (r, d*kh*kw)), scale 0.5 */
    fill(w1a, A * R, 17);
    fill(w1b, R * C, 18);
    fill(w2a, B * R, 19);
    fill(w2b, R * D * K, 20);
    m = module(MOOD_ALGO_LOKR, 4, A * B, C * D, 2, 2, 0.5);
    m.t[ROLE_LOKR_W1A] = tensor("w1a", w1a, A, R, 0, 0);
    m.t[ROLE_LOKR_W1B] = tensor("w1b", w1b, R, C, 0, 0);
    m.t[ROLE_LOKR_W2A] = tensor("w2a", w2a, B, R, 0, 0);
    m.t[ROLE_LOKR_W2B] = tensor("w2b", w2b, R, D * K, 0, 0);
    {
        float p1[A * C], p2[B * D * K];
        for (int i = 0; i < A; i++)
            for (int j = 0; j < C; j++)
                p1[i * C + j] = w1a[i * R] * w1b[j] + w1a[i * R + 1] * w1b[C + j];
        for (int p = 0; p < B; p++)
            for (int q = 0; q < D * K; q++)
                p2[p * D * K + q] = w2a[p * R] * w2b[q] + w2a[p * R + 1] * w2b[D * K + q];
        kron_ref(want, p1, A, C, p2, B, D, K, 0.5);
    }
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, A * B * C * D * K, 1e-5));

    /* W2 Tucker: W2[p,q,y,x] = Σ t2[a,b,y,x] · w2a[a,p] · w2b[b,q], w2a (r,b), w2b (r,d) */
    fill(t2, R * R * K, 21);
    m.t[ROLE_LOKR_W2A] = tensor("w2a", w2a, R, B, 0, 0);
    m.t[ROLE_LOKR_W2B] = tensor("w2b", w2b, R, D, 0, 0);
    m.t[ROLE_LOKR_T2] = tensor("t2", t2, R, R, 2, 2);
    m.t[ROLE_LOKR_W1A] = NULL;
    m.t[ROLE_LOKR_W1B] = NULL;
    m.t[ROLE_LOKR_W1] = tensor("w1", w1, A, C, 0, 0);
    for (int p = 0; p < B; p++)
        for (int q = 0; q < D; q++)
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int a = 0; a < R; a++)
                    for (int b = 0; b < R; b++)
                        s += t2[(a * R + b) * K + k] * w2a[a * B + p] * w2b[b * D + q];
                w2full[(p * D + q) * K + k] = (float)s;
            }
    kron_ref(want, w1, A, C, w2full, B, D, K, 0.5);
    MOOD_CHECK_OK(mood__module_delta(got, &m, NULL));
    MOOD_CHECK(all_close(got, want, A * B * C * D * K, 1e-5));
}

/* ----- full, norm, IA3, GLoRA --------------------------------------------------------------- */

static void test_full_norm_bias(void)
{
    float diff[6], db[2], w[6], bias[2] = {1, 2}, want[6];
    mood_module m = module(MOOD_ALGO_FULL, 2, 2, 3, 1, 1, 1.0);
    fill(diff, 6, 22);
    fill(db, 2, 23);
    fill(w, 6, 24);
    m.t[ROLE_DIFF] = tensor("diff", diff, 2, 3, 0, 0);
    m.t[ROLE_DIFF_B] = tensor("diff_b", db, 2, 0, 0, 0);
    for (int i = 0; i < 6; i++)
        want[i] = w[i] + 0.3f * diff[i];
    MOOD_CHECK_OK(mood__module_apply(&m, w, bias, 0.3f));
    MOOD_CHECK(all_close(w, want, 6, 1e-6));
    MOOD_CHECK(close_enough(bias[0], 1 + 0.3f * db[0], 1e-6, 1e-6));
    MOOD_CHECK(close_enough(bias[1], 2 + 0.3f * db[1], 1e-6, 1e-6));
    /* a bias delta with no bias in the base is an error */
    MOOD_CHECK(mood__module_apply(&m, w, NULL, 1.0f) == MOOD_EFORMAT);

    m = module(MOOD_ALGO_NORM, 1, 2, 1, 1, 1, 1.0);
    m.t[ROLE_W_NORM] = tensor("w_norm", diff, 2, 0, 0, 0);
    m.t[ROLE_B_NORM] = tensor("b_norm", db, 2, 0, 0, 0);
    bias[0] = 0;
    w[0] = 1;
    w[1] = 1;
    MOOD_CHECK_OK(mood__module_apply(&m, w, bias, 2.0f));
    MOOD_CHECK(close_enough(w[1], 1 + 2 * diff[1], 1e-6, 1e-6));
    MOOD_CHECK(close_enough(bias[0], 2 * db[0], 1e-6, 1e-6));
}

static void test_ia3(void)
{
    enum { O = 2, I = 3, K = 4 };
    float w[O * I * K], v_out[O], v_in[I], got[O * I * K], want[O * I * K], one = 1, zero = 0;
    mood_module m = module(MOOD_ALGO_IA3, 4, O, I, 2, 2, 1.0);
    fill(w, O * I * K, 25);
    fill(v_out, O, 26);
    fill(v_in, I, 27);
    m.t[ROLE_IA3_W] = tensor("weight", v_out, O, 0, 0, 0);
    m.t[ROLE_IA3_ON_INPUT] = tensor("on_input", &zero, 0, 0, 0, 0);
    MOOD_CHECK(mood__module_delta(got, &m, NULL) == MOOD_EINVAL); /* needs W */
    MOOD_CHECK_OK(mood__module_delta(got, &m, w));
    for (int i = 0; i < O * I * K; i++)
        want[i] = w[i] * v_out[i / (I * K)];
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-6));

    m.t[ROLE_IA3_W] = tensor("weight", v_in, 1, I, 1, 1);
    m.t[ROLE_IA3_ON_INPUT] = tensor("on_input", &one, 0, 0, 0, 0);
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 0.5f));
    for (int i = 0; i < O * I * K; i++)
        want[i] = w[i] * (1 + 0.5f * v_in[(i / K) % I]);
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-6));
}

static void test_glora(void)
{
    enum { O = 3, I = 2, R = 2, K = 4 };
    float a1[I * R], a2[R * I], b1[O * R], b2[R * I * K], w[O * I * K], got[O * I * K],
        want[O * I * K];
    mood_module m = module(MOOD_ALGO_GLORA, 4, O, I, 2, 2, 0.5);
    fill(a1, I * R, 28);
    fill(a2, R * I, 29);
    fill(b1, O * R, 30);
    fill(b2, R * I * K, 31);
    fill(w, O * I * K, 32);
    m.t[ROLE_GLORA_A1] = tensor("a1", a1, I, R, 0, 0);
    m.t[ROLE_GLORA_A2] = tensor("a2", a2, R, I, 0, 0);
    m.t[ROLE_GLORA_B1] = tensor("b1", b1, O, R, 0, 0);
    m.t[ROLE_GLORA_B2] = tensor("b2", b2, R, I, 2, 2);
    /* ΔW[o,j,k] = Σ_r b1[o,r] b2[r,j,k] + Σ_i W[o,i,k] (a1·a2)[i,j] */
    for (int o = 0; o < O; o++)
        for (int j = 0; j < I; j++)
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int r = 0; r < R; r++)
                    s += b1[o * R + r] * b2[(r * I + j) * K + k];
                for (int i = 0; i < I; i++) {
                    double aij = 0;
                    for (int r = 0; r < R; r++)
                        aij += a1[i * R + r] * a2[r * I + j];
                    s += w[(o * I + i) * K + k] * aij;
                }
                want[(o * I + j) * K + k] = (float)(0.5 * s);
            }
    MOOD_CHECK_OK(mood__module_delta(got, &m, w));
    MOOD_CHECK(all_close(got, want, O * I * K, 1e-5));

    /* old layout on a Linear: a1 (r,in), a2 (in,r), b1 (r,in), b2 (out,r):
     * ΔW = b2·b1 + W·a2·a1 */
    m = module(MOOD_ALGO_GLORA, 2, O, I, 1, 1, 1.0);
    m.old_glora = 1;
    m.t[ROLE_GLORA_A1] = tensor("a1", a1, R, I, 0, 0);
    m.t[ROLE_GLORA_A2] = tensor("a2", a2, I, R, 0, 0);
    m.t[ROLE_GLORA_B1] = tensor("b1", b2, R, I, 0, 0);
    m.t[ROLE_GLORA_B2] = tensor("b2", b1, O, R, 0, 0);
    for (int o = 0; o < O; o++)
        for (int j = 0; j < I; j++) {
            double s = 0;
            for (int r = 0; r < R; r++)
                s += b1[o * R + r] * b2[r * I + j];
            for (int i = 0; i < I; i++)
                for (int r = 0; r < R; r++)
                    s += w[o * I + i] * a2[i * R + r] * a1[r * I + j];
            want[o * I + j] = (float)s;
        }
    MOOD_CHECK_OK(mood__module_delta(got, &m, w));
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));
}

/* ----- OFT / BOFT --------------------------------------------------------------------------- */

/* Cayley of the 2x2 block [[0,t],[0,0]]: Q = [[0,t],[-t,0]], R = [[1-t², 2t],[-2t, 1-t²]]/(1+t²).
 */
static void cayley2(float r[4], double t)
{
    double n = 1 + t * t;
    r[0] = (float)((1 - t * t) / n);
    r[1] = (float)(2 * t / n);
    r[2] = (float)(-2 * t / n);
    r[3] = r[0];
}

static void test_oft(void)
{
    enum { O = 4, I = 3 };
    float blocks[2 * 2 * 2] = {0, 0.3f, 0, 0, 0, -0.8f, 0, 0}, w[O * I], got[O * I], want[O * I],
                         r[2][4], rescale[O] = {1, 2, 0.5f, -1}, eye[16], m_r[4];
    mood_module m = module(MOOD_ALGO_OFT, 2, O, I, 1, 1, 1.0);
    fill(w, O * I, 33);
    m.t[ROLE_OFT_BLOCKS] = tensor("oft_blocks", blocks, 2, 2, 2, 0);
    m.alpha = 0; /* no constraint */
    cayley2(r[0], 0.3);
    cayley2(r[1], -0.8);
    /* W'_k = R_kᵀ · W_k */
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < 2; p++)
            for (int c = 0; c < I; c++)
                want[(2 * k + p) * I + c] =
                    r[k][p] * w[(2 * k) * I + c] + r[k][2 + p] * w[(2 * k + 1) * I + c];
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 1.0f));
    MOOD_CHECK(all_close(got, want, O * I, 1e-6));

    /* strength 0.5: R ← 0.5·R + 0.5·I; and the delta equals W' − W at strength 1 */
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 4; i++)
            m_r[i] = 0.5f * r[k][i] + 0.5f * (i == 0 || i == 3);
        for (int p = 0; p < 2; p++)
            for (int c = 0; c < I; c++)
                want[(2 * k + p) * I + c] =
                    m_r[p] * w[(2 * k) * I + c] + m_r[2 + p] * w[(2 * k + 1) * I + c];
    }
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 0.5f));
    MOOD_CHECK(all_close(got, want, O * I, 1e-6));
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 0.0f));
    MOOD_CHECK(all_close(got, w, O * I, 0));

    /* constraint α·out = 0.1·4 = 0.4 < ‖Q‖_F = sqrt(2·0.09 + 2·0.64): Q scaled as a whole */
    m.alpha = 0.1;
    {
        double norm = sqrt(2 * 0.09 + 2 * 0.64), k = 0.4 / norm;
        cayley2(r[0], 0.3 * k);
        cayley2(r[1], -0.8 * k);
    }
    /* R orthogonal: applied to W = I it gives blockdiag(R)ᵀ, whose columns are orthonormal */
    m.in = O;
    m.t[ROLE_OFT_RESCALE] = tensor("rescale", rescale, O, 1, 0, 0);
    for (int i = 0; i < 16; i++)
        eye[i] = (i / 4 == i % 4);
    MOOD_CHECK_OK(mood__module_apply(&m, eye, NULL, 1.0f));
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < 2; p++)
            for (int q = 0; q < 2; q++)
                MOOD_CHECK(close_enough(eye[(2 * k + p) * 4 + 2 * k + q],
                                        rescale[2 * k + p] * r[k][q * 2 + p], 1e-6, 1e-6));
    m.t[ROLE_OFT_RESCALE] = NULL;
    for (int i = 0; i < 16; i++)
        eye[i] = (i / 4 == i % 4);
    MOOD_CHECK_OK(mood__module_apply(&m, eye, NULL, 1.0f));
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) {
            double dot = 0;
            for (int i = 0; i < 4; i++)
                dot += eye[i * 4 + a] * eye[i * 4 + b];
            MOOD_CHECK(close_enough(dot, a == b, 1e-6, 0));
        }
}

/* The old LyCORIS key oft_diag, as A1111 applies it (lora-formats.md §3.7): the blocks are R
 * itself (no Cayley transform, no constraint, any matrix), W' = W + m·(rescale ⊙ Rᵀ·W − W). */
static void test_oft_diag(void)
{
    enum { O = 4, I = 3 };
    float blocks[2 * 2 * 2], w[O * I], got[O * I], want[O * I], rescale[O] = {1, 2, 0.5f, -1};
    mood_module m = module(MOOD_ALGO_OFT, 2, O, I, 1, 1, 1.0);
    fill(blocks, 8, 36);
    fill(w, O * I, 37);
    m.t[ROLE_OFT_BLOCKS] = tensor("oft_diag", blocks, 2, 2, 2, 0);
    m.t[ROLE_OFT_RESCALE] = tensor("rescale", rescale, O, 1, 0, 0);
    m.oft_direct = 1;
    m.alpha = 1e-6; /* a constraint, which oft_diag ignores */
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < 2; p++)
            for (int c = 0; c < I; c++) {
                const float *r = blocks + 4 * k; /* W'_k[p] = Σ_n R_k[n, p] · W_k[n] */
                float rot = r[p] * w[(2 * k) * I + c] + r[2 + p] * w[(2 * k + 1) * I + c];
                float v = w[(2 * k + p) * I + c];
                want[(2 * k + p) * I + c] = v + 0.6f * (rescale[2 * k + p] * rot - v);
            }
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 0.6f));
    MOOD_CHECK(all_close(got, want, O * I, 1e-6));
}

static void test_boft(void)
{
    enum { O = 4, I = 3 };
    /* stages 2, 2 blocks of 2: R[s][t] from t = B01 − B10 */
    float blocks[2 * 2 * 4], w[O * I], got[O * I], want[O * I], x[O * I], y[O * I], r[2][2][4];
    double mat[2][16];
    mood_module m = module(MOOD_ALGO_BOFT, 2, O, I, 1, 1, 1.0);
    fill(blocks, 16, 34);
    fill(w, O * I, 35);
    m.t[ROLE_OFT_BLOCKS] = tensor("oft_blocks", blocks, 2, 2, 2, 2);
    for (int s = 0; s < 2; s++)
        for (int t = 0; t < 2; t++) {
            const float *b = blocks + (s * 2 + t) * 4;
            cayley2(r[s][t], (double)b[1] - b[2]);
        }
    /* stage 0 (k = 1): rows in order, blockdiag(R0) applied as R·X;
     * stage 1 (k = 2): rows permuted (0,2,1,3) ((g,c,e) -> (g,e,c)), blockdiag(R1), back */
    for (int s = 0; s < 2; s++) {
        memset(mat[s], 0, sizeof mat[s]);
        for (int t = 0; t < 2; t++)
            for (int p = 0; p < 2; p++)
                for (int q = 0; q < 2; q++)
                    mat[s][(2 * t + p) * 4 + 2 * t + q] = r[s][t][p * 2 + q];
    }
    {
        static const int perm[4] = {0, 2, 1, 3}; /* new row n holds old row perm[n] */
        for (int i = 0; i < O * I; i++) {
            double acc = 0;
            for (int k = 0; k < 4; k++)
                acc += mat[0][(i / I) * 4 + k] * w[k * I + i % I];
            x[i] = (float)acc;
        }
        for (int n = 0; n < 4; n++)
            memcpy(y + n * I, x + perm[n] * I, sizeof(float) * I);
        for (int i = 0; i < O * I; i++) {
            double acc = 0;
            for (int k = 0; k < 4; k++)
                acc += mat[1][(i / I) * 4 + k] * y[k * I + i % I];
            want[perm[i / I] * I + i % I] = (float)acc;
        }
    }
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 1.0f));
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));
    MOOD_CHECK_OK(mood__module_delta(got, &m, w));
    for (int i = 0; i < O * I; i++)
        want[i] -= w[i];
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));

    /* old LyCORIS oft_diag (A1111): the same rotations stored as R give the same W' at
     * strength 1, and W + m·(W' − W) at strength m */
    for (int s = 0; s < 2; s++)
        for (int t = 0; t < 2; t++)
            memcpy(blocks + (s * 2 + t) * 4, r[s][t], sizeof r[s][t]);
    m.oft_direct = 1;
    MOOD_CHECK_OK(mood__module_delta(got, &m, w));
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 0.5f));
    for (int i = 0; i < O * I; i++)
        want[i] = w[i] + 0.5f * want[i];
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));
}

/* ----- DoRA --------------------------------------------------------------------------------- */

static void test_dora(void)
{
    enum { O = 3, I = 4, R = 2 };
    float u[O * R], d[R * I], w[O * I], g_out[O], g_in[I], got[O * I], want[O * I], wc[O * I];
    double s = 0.5, mult = 0.6;
    mood_module m = module(MOOD_ALGO_LORA, 2, O, I, 1, 1, s);
    fill(u, O * R, 36);
    fill(d, R * I, 37);
    fill(w, O * I, 38);
    fill(g_out, O, 39);
    fill(g_in, I, 40);
    m.t[ROLE_UP] = tensor("up", u, O, R, 0, 0);
    m.t[ROLE_DOWN] = tensor("down", d, R, I, 0, 0);
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            wc[o * I + i] = w[o * I + i] + (float)(s * (u[o * R] * d[i] + u[o * R + 1] * d[I + i]));

    /* per-output: n[o] = ‖W_c[o,:]‖, W' = W + m·(W_c·g/n − W) */
    m.dora = 2;
    m.t[ROLE_DORA_SCALE] = tensor("dora_scale", g_out, O, 1, 0, 0);
    for (int o = 0; o < O; o++) {
        double n = 0;
        for (int i = 0; i < I; i++)
            n += (double)wc[o * I + i] * wc[o * I + i];
        for (int i = 0; i < I; i++)
            want[o * I + i] =
                (float)(w[o * I + i] + mult * (wc[o * I + i] * g_out[o] / sqrt(n) - w[o * I + i]));
    }
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, (float)mult));
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 0.0f));
    MOOD_CHECK(all_close(got, w, O * I, 0)); /* strength 0 = no change (ComfyUI/A1111) */
    MOOD_CHECK(mood__module_delta(got, &m, NULL) == MOOD_EINVAL);

    /* per-input: n[i] = ‖W_c[:,i]‖ */
    m.dora = 1;
    m.t[ROLE_DORA_SCALE] = tensor("dora_scale", g_in, 1, I, 0, 0);
    for (int i = 0; i < I; i++) {
        double n = 0;
        for (int o = 0; o < O; o++)
            n += (double)wc[o * I + i] * wc[o * I + i];
        for (int o = 0; o < O; o++)
            want[o * I + i] = (float)(wc[o * I + i] * g_in[i] / sqrt(n) - w[o * I + i]);
    }
    MOOD_CHECK_OK(mood__module_delta(got, &m, w));
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));
    /* a magnitude vector of the wrong axis is an error, not a broadcast */
    m.t[ROLE_DORA_SCALE] = tensor("dora_scale", g_out, O, 1, 0, 0);
    MOOD_CHECK(mood__module_delta(got, &m, w) == MOOD_EFORMAT);

    /* PEFT: W' = g / ‖W + m·s·ΔW‖_row ⊙ (W + m·s·ΔW) */
    m.dora = 2;
    m.peft_dora = 1;
    m.t[ROLE_DORA_SCALE] = tensor("lora_magnitude_vector", g_out, O, 0, 0, 0);
    for (int o = 0; o < O; o++) {
        double n = 0;
        float row[I];
        for (int i = 0; i < I; i++) {
            row[i] = w[o * I + i] + (float)mult * (wc[o * I + i] - w[o * I + i]);
            n += (double)row[i] * row[i];
        }
        for (int i = 0; i < I; i++)
            want[o * I + i] = (float)(row[i] * g_out[o] / sqrt(n));
    }
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, (float)mult));
    MOOD_CHECK(all_close(got, want, O * I, 1e-5));
}

/* ----- transposed targets, conversions ------------------------------------------------------ */

static void test_transposed_target(void)
{
    enum { O = 3, I = 2 };
    float u[O], d[I], w[I * O], got[I * O];
    mood_target target;
    mood_module m = module(MOOD_ALGO_LORA, 2, O, I, 1, 1, 1.0);
    memset(&target, 0, sizeof target);
    target.transposed = 1;
    target.slice = -1;
    m.target = &target;
    fill(u, O, 41);
    fill(d, I, 42);
    fill(w, I * O, 43);
    m.t[ROLE_UP] = tensor("up", u, O, 1, 0, 0);
    m.t[ROLE_DOWN] = tensor("down", d, 1, I, 0, 0);
    memcpy(got, w, sizeof got);
    MOOD_CHECK_OK(mood__module_apply(&m, got, NULL, 2.0f));
    /* stored (in, out): element [i][o] gets 2·ΔW[o][i] */
    for (int i = 0; i < I; i++)
        for (int o = 0; o < O; o++)
            MOOD_CHECK(close_enough(got[i * O + o], w[i * O + o] + 2 * u[o] * d[i], 1e-6, 1e-6));
}

static void test_tensor_f32(void)
{
    static const uint16_t half[3] = {0x3C00, 0xC000, 0x3555}; /* 1, -2, ~1/3 */
    static const uint16_t bf[2] = {0x3F80, 0x4049};           /* 1, ~3.14 */
    float bad[3] = {1, NAN, 2}, *out = NULL;
    mood_st_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "m.lora_up.weight";
    t.dtype = MOOD_DTYPE_F16;
    t.ndim = 1;
    t.shape[0] = 3;
    t.end = 6;
    t.data = half;
    MOOD_CHECK_OK(mood__tensor_f32(&out, &t, "x.safetensors"));
    MOOD_CHECK(out && out[0] == 1.0f && out[1] == -2.0f && fabsf(out[2] - 1.0f / 3) < 1e-3f);
    mood_free(out);
    t.dtype = MOOD_DTYPE_BF16;
    t.shape[0] = 2;
    t.end = 4;
    t.data = bf;
    MOOD_CHECK_OK(mood__tensor_f32(&out, &t, "x.safetensors"));
    MOOD_CHECK(out && out[0] == 1.0f && fabsf(out[1] - 3.140625f) < 1e-6f);
    mood_free(out);
    t.dtype = MOOD_DTYPE_F32;
    t.shape[0] = 3;
    t.end = 12;
    t.data = bad;
    MOOD_CHECK(mood__tensor_f32(&out, &t, "x.safetensors") == MOOD_EFORMAT);
    MOOD_CHECK(out == NULL);
    MOOD_CHECK(strstr(mood_error_last(), "x.safetensors") != NULL);
    MOOD_CHECK(strstr(mood_error_last(), "m.lora_up.weight") != NULL);
}

MOOD_TEST_MAIN(MOOD_T(test_lora_linear), MOOD_T(test_lora_conv_and_reshape),
               MOOD_T(test_lora_tucker), MOOD_T(test_dylora_cut), MOOD_T(test_loha),
               MOOD_T(test_lokr), MOOD_T(test_full_norm_bias), MOOD_T(test_ia3), MOOD_T(test_glora),
               MOOD_T(test_oft), MOOD_T(test_oft_diag), MOOD_T(test_boft), MOOD_T(test_dora),
               MOOD_T(test_transposed_target), MOOD_T(test_tensor_f32))
