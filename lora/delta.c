/*
 * delta.c: ΔW of one adapter module in float32, for every algorithm of lora-formats.md §3, and
 * its in-place application to a base weight with a user multiplier (§3–4).
 *
 *   LoRA/LoCon  U·D (Linear, 1x1, kxk; Tucker: Σ U[o,a]·M[a,b,y,x]·D[b,i])      §3.1
 *   LoHa        (W1a·W1b) ⊙ (W2a·W2b), Tucker with transposed *_a factors         §3.2
 *   LoKr        kron(W1, W2), each factor full, a product, or (W2) Tucker         §3.3
 *   GLoRA       B1·B2 + W ×_in (A1·A2) (new layout), B2·B1 + W·A2·A1 (old)       §3.4
 *   DoRA        W + m·(DoRA(W_c) − W), W_c = W + s·ΔW (ComfyUI/A1111); PEFT form  §3.5
 *   IA3         W ⊙ (1 + m·w) along the output or input axis                      §3.6
 *   OFT / BOFT  Cayley blocks, constraint α·out when α > 0, R ← m·R + (1−m)·I,
 *               rescale as LyCORIS applies it                                     §3.7
 *   full, norm  diff / w_norm, plus diff_b / b_norm on the bias                   §3.8
 *
 * Shapes: a module's target is (out, in, kh, kw) in the Linear orientation (kh = kw = 1 for
 * Linear, in = kh = kw = 1 for norms). The result is reshaped by element count (§3 "Always
 * reshape"), so a 2-D proj_in LoRA applies to a 1x1 conv and vice versa. Targets stored
 * transposed (OpenCLIP text_projection) are transposed around the application.
 * Products go through cblas_sgemm, the Cayley solves through LAPACK sgesv (lora/lapack.h).
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "common/args.h"
#include "lora/lapack.h"
#include "lora/lora_internal.h"

/* ----- small helpers ------------------------------------------------------------------------ */

static int alloc_f32(float **out, int64_t n)
{
    uint64_t bytes;
    *out = NULL;
    if (n < 0 || mood_mul_u64(&bytes, (uint64_t)n, sizeof(float)) != 0 || bytes > SIZE_MAX)
        return mood_error_set(MOOD_EINVAL, "tensor of %lld elements is too large", (long long)n);
    *out = mood_malloc(bytes ? (size_t)bytes : 1);
    return *out ? 0 : mood_error_nomem();
}

int mood__tensor_f32(float **out, const mood_st_tensor *t, const char *file)
{
    int64_t n = mood_st_numel(t);
    float *buf = NULL;
    int err = alloc_f32(&buf, n);
    if (!err)
        err = mood_st_to_f32(buf, t);
    for (int64_t i = 0; !err && i < n; i++) {
        if (!isfinite(buf[i]))
            err = mood_error_set(MOOD_EFORMAT,
                                 "%s%stensor \"%s\" holds a non-finite value (%g) "
                                 "at element %lld",
                                 file ? file : "", file ? ": " : "", t->name, (double)buf[i],
                                 (long long)i);
    }
    if (err && file && err == MOOD_EUNSUPPORTED)
        mood_error_prefix("%s", file);
    if (err) {
        mood_free(buf);
        buf = NULL;
    }
    *out = buf;
    return err;
}

static int64_t module_numel(const mood_module *m)
{
    if (m->ndim == 1)
        return m->out;
    return m->out * m->in * m->kh * m->kw;
}

/* Rows and columns of a tensor viewed as flat(X) = (shape[0], prod(shape[1:])). */
static int64_t rows_of(const mood_st_tensor *t)
{
    return t->ndim ? t->shape[0] : 1;
}

static int64_t cols_of(const mood_st_tensor *t)
{
    int64_t r = rows_of(t);
    return r ? mood_st_numel(t) / r : 0;
}

static int load(float **out, const mood_module *m, mood_role role, const char *what)
{
    *out = NULL;
    if (!m->t[role])
        return mood_error_set(MOOD_EFORMAT, "module \"%s\": missing %s", m->name, what);
    return mood__tensor_f32(out, m->t[role], NULL);
}

static int fits_int(int64_t a, int64_t b, int64_t c)
{
    return a >= 0 && b >= 0 && c >= 0 && a <= INT_MAX && b <= INT_MAX && c <= INT_MAX;
}

/* c (M×N) = op(a) · op(b), op(a) M×K, op(b) K×N; row-major. */
static void gemm(float *c, const float *a, int ta, const float *b, int tb, int64_t M, int64_t N,
                 int64_t K)
{
    if (M == 0 || N == 0)
        return;
    if (K == 0) {
        memset(c, 0, (size_t)(M * N) * sizeof *c);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, 1.0f, a, ta ? (int)M : (int)K, b, tb ? (int)K : (int)N,
                0.0f, c, (int)N);
}

static int shape_error(const mood_module *m, const char *what, int64_t got, int64_t want)
{
    return mood_error_set(MOOD_EFORMAT,
                          "module \"%s\" (%s): %s gives %lld elements, the target has %lld",
                          m->name, mood_algo_name(m->algo), what, (long long)got, (long long)want);
}

/* ----- products: plain and Tucker ----------------------------------------------------------- */

/* Keeps the first `keep` of the k columns of the row-major (rows x k) matrix a, packed in place
 * (a DyLoRA cut of an up factor). */
static void keep_columns(float *a, int64_t rows, int64_t k, int64_t keep)
{
    for (int64_t r = 1; r < rows; r++)
        memmove(a + r * keep, a + r * k, (size_t)keep * sizeof *a);
}

int64_t mood__module_ranks_used(const mood_module *m, int64_t k)
{
    return m->dyn > 0 && m->dyn < k ? m->dyn : k;
}

/* out (rows(U) × cols(D)) = flat(U) · flat(D), or the transposed-U variant (U stored (r, out)).
 * `numel` is the size out must have. `cut` (not with trans_u): only the first
 * mood__module_ranks_used(m, K) ranks, as A1111's rebuild_conventional with dyn_dim. */
static int product(float *out, const mood_module *m, mood_role ru, mood_role rd, int trans_u,
                   int cut, int64_t numel, int64_t *rows_out)
{
    const mood_st_tensor *tu = m->t[ru], *td = m->t[rd];
    float *u = NULL, *d = NULL;
    int64_t M, K, N;
    int err;
    if (!tu || !td)
        return mood_error_set(MOOD_EFORMAT, "module \"%s\": missing factor %s", m->name,
                              !tu ? "up" : "down");
    M = trans_u ? cols_of(tu) : rows_of(tu);
    K = trans_u ? rows_of(tu) : cols_of(tu);
    N = cols_of(td);
    if (K != rows_of(td) || !fits_int(M, N, K))
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\": factors \"%s\" and \"%s\" have "
                              "ranks %lld and %lld",
                              m->name, tu->name, td->name, (long long)K, (long long)rows_of(td));
    if (M * N != numel)
        return shape_error(m, "the factor product", M * N, numel);
    if ((err = load(&u, m, ru, "up factor")) == 0 && (err = load(&d, m, rd, "down factor")) == 0) {
        int64_t used = cut && !trans_u ? mood__module_ranks_used(m, K) : K;
        if (used < K)
            keep_columns(u, M, K, used); /* D's first `used` rows are its first used·N values */
        gemm(out, u, trans_u, d, 0, M, N, used);
    }
    if (rows_out)
        *rows_out = M;
    mood_free(u);
    mood_free(d);
    return err;
}

/* Tucker: out[o, i, y, x] = Σ_a Σ_b U[o,a] · T[a,b,y,x] · D[b,i]. U is (out, ra) or, with
 * trans_u, stored (ra, out); T is (ra, rb, kh, kw); D is (rb, in). */
static int tucker(float *out, const mood_module *m, mood_role ru, mood_role rt, mood_role rd,
                  int trans_u, int64_t numel, int64_t *rows_out)
{
    const mood_st_tensor *tu = m->t[ru], *tt = m->t[rt], *td = m->t[rd];
    float *u = NULL, *t = NULL, *d = NULL, *t1 = NULL;
    int64_t ra, rb, kk, o, in;
    int err;
    if (!tu || !tt || !td || tt->ndim < 2)
        return mood_error_set(MOOD_EFORMAT, "module \"%s\": incomplete Tucker factors", m->name);
    ra = tt->shape[0];
    rb = tt->shape[1];
    kk = rb && ra ? mood_st_numel(tt) / (ra * rb) : 0;
    o = trans_u ? cols_of(tu) : rows_of(tu);
    in = cols_of(td);
    if ((trans_u ? rows_of(tu) : cols_of(tu)) != ra || rows_of(td) != rb ||
        !fits_int(o, in * kk, ra) || !fits_int(rb, kk, in))
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\": Tucker factor shapes do not agree "
                              "with \"%s\"",
                              m->name, tt->name);
    if (o * in * kk != numel)
        return shape_error(m, "the Tucker product", o * in * kk, numel);
    if ((err = load(&u, m, ru, "up factor")) || (err = load(&t, m, rt, "Tucker core")) ||
        (err = load(&d, m, rd, "down factor")) || (err = alloc_f32(&t1, ra * in * kk)))
        goto done;
    /* t1[a] (in × kk) = Dᵀ (in × rb) · T[a] (rb × kk) */
    for (int64_t a = 0; a < ra; a++)
        gemm(t1 + a * in * kk, d, 1, t + a * rb * kk, 0, in, kk, rb);
    gemm(out, u, trans_u, t1, 0, o, in * kk, ra);
    if (rows_out)
        *rows_out = o;
done:
    mood_free(u);
    mood_free(t);
    mood_free(d);
    mood_free(t1);
    return err;
}

/* ----- additive algorithms ------------------------------------------------------------------ */

static int delta_lora(float *out, const mood_module *m, int64_t numel)
{
    if (m->t[ROLE_MID])
        return tucker(out, m, ROLE_UP, ROLE_MID, ROLE_DOWN, 0, numel, NULL);
    return product(out, m, ROLE_UP, ROLE_DOWN, 0, 1, numel, NULL);
}

static int delta_loha(float *out, const mood_module *m, int64_t numel)
{
    float *second = NULL;
    int tuck = m->t[ROLE_HADA_T1] != NULL, err;
    if ((err = alloc_f32(&second, numel)) != 0)
        return err;
    if (tuck)
        err = tucker(out, m, ROLE_HADA_W1A, ROLE_HADA_T1, ROLE_HADA_W1B, 1, numel, NULL);
    else
        err = product(out, m, ROLE_HADA_W1A, ROLE_HADA_W1B, 0, 0, numel, NULL);
    if (!err && tuck)
        err = tucker(second, m, ROLE_HADA_W2A, ROLE_HADA_T2, ROLE_HADA_W2B, 1, numel, NULL);
    else if (!err)
        err = product(second, m, ROLE_HADA_W2A, ROLE_HADA_W2B, 0, 0, numel, NULL);
    for (int64_t i = 0; !err && i < numel; i++)
        out[i] *= second[i];
    mood_free(second);
    return err;
}

/* One LoKr factor as a matrix (rows × cols): full, a product, or (W2 only) Tucker. */
static int lokr_factor(float **out, int64_t *rows, int64_t *cols, const mood_module *m, int first)
{
    mood_role full = first ? ROLE_LOKR_W1 : ROLE_LOKR_W2;
    mood_role ra = first ? ROLE_LOKR_W1A : ROLE_LOKR_W2A;
    mood_role rb = first ? ROLE_LOKR_W1B : ROLE_LOKR_W2B;
    int64_t n;
    int err;
    *out = NULL;
    if (m->t[full]) {
        *rows = rows_of(m->t[full]);
        *cols = cols_of(m->t[full]);
        return load(out, m, full, "Kronecker factor");
    }
    if (!m->t[ra] || !m->t[rb])
        return mood_error_set(MOOD_EFORMAT, "module \"%s\": missing Kronecker factor w%d", m->name,
                              first ? 1 : 2);
    if (!first && m->t[ROLE_LOKR_T2]) {
        const mood_st_tensor *t2 = m->t[ROLE_LOKR_T2];
        *rows = cols_of(m->t[ra]);
        n = *rows * cols_of(m->t[rb]) * (t2->ndim == 4 ? t2->shape[2] * t2->shape[3] : 1);
        *cols = *rows ? n / *rows : 0;
        if ((err = alloc_f32(out, n)) == 0)
            err = tucker(*out, m, ra, ROLE_LOKR_T2, rb, 1, n, NULL);
        return err;
    }
    *rows = rows_of(m->t[ra]);
    *cols = cols_of(m->t[rb]);
    n = *rows * *cols;
    if ((err = alloc_f32(out, n)) == 0)
        err = product(*out, m, ra, rb, 0, 0, n, NULL);
    return err;
}

/* ΔW[i*b + p, j*D2 + q] = W1[i,j] · W2[p,q], W2 flattened to (b, D2 = d*kh*kw). */
static int delta_lokr(float *out, const mood_module *m, int64_t numel)
{
    float *w1 = NULL, *w2 = NULL;
    int64_t a, c, b, d2;
    int err;
    if ((err = lokr_factor(&w1, &a, &c, m, 1)) || (err = lokr_factor(&w2, &b, &d2, m, 0)))
        goto done;
    if (a * b * c * d2 != numel) {
        err = shape_error(m, "the Kronecker product", a * b * c * d2, numel);
        goto done;
    }
    for (int64_t i = 0; i < a; i++)
        for (int64_t p = 0; p < b; p++) {
            float *row = out + (i * b + p) * c * d2;
            for (int64_t j = 0; j < c; j++) {
                float s = w1[i * c + j];
                for (int64_t q = 0; q < d2; q++)
                    row[j * d2 + q] = s * w2[p * d2 + q];
            }
        }
done:
    mood_free(w1);
    mood_free(w2);
    return err;
}

/* A tensor copied as ΔW (diff, w_norm), checked by element count. */
static int delta_copy(float *out, const mood_module *m, mood_role role, int64_t numel)
{
    float *v = NULL;
    int err;
    if (!m->t[role] && m->t[role == ROLE_DIFF ? ROLE_DIFF_B : ROLE_B_NORM]) {
        memset(out, 0, (size_t)numel * sizeof *out); /* bias-only module: no weight change */
        return 0;
    }
    if (m->t[role] && mood_st_numel(m->t[role]) != numel)
        return shape_error(m, m->t[role]->name, mood_st_numel(m->t[role]), numel);
    if ((err = load(&v, m, role, role == ROLE_DIFF ? "diff" : "w_norm")) == 0)
        memcpy(out, v, (size_t)numel * sizeof *out);
    mood_free(v);
    return err;
}

/* ----- algorithms that need W --------------------------------------------------------------- */

/* out = W ×_in A for W (out, in, kk) and A (in, in): contracts the input-channel axis per
 * spatial tap. */
static int contract_in(float *out, const float *w, const float *a, int64_t o, int64_t in,
                       int64_t kk)
{
    float *wt = NULL, *rt = NULL;
    int err;
    if (kk == 1) {
        gemm(out, w, 0, a, 0, o, in, in);
        return 0;
    }
    if ((err = alloc_f32(&wt, o * in * kk)) || (err = alloc_f32(&rt, o * in * kk)))
        goto done;
    /* (o, in, kk) -> (o, kk, in), multiply, back */
    for (int64_t x = 0; x < o; x++)
        for (int64_t i = 0; i < in; i++)
            for (int64_t k = 0; k < kk; k++)
                wt[(x * kk + k) * in + i] = w[(x * in + i) * kk + k];
    gemm(rt, wt, 0, a, 0, o * kk, in, in);
    for (int64_t x = 0; x < o; x++)
        for (int64_t i = 0; i < in; i++)
            for (int64_t k = 0; k < kk; k++)
                out[(x * in + i) * kk + k] = rt[(x * kk + k) * in + i];
done:
    mood_free(wt);
    mood_free(rt);
    return err;
}

static int delta_glora_old(float *out, const mood_module *m, const float *w, int64_t numel)
{
    float *a1 = NULL, *a2 = NULL, *wa = NULL, *wa2 = NULL;
    int64_t r = rows_of(m->t[ROLE_GLORA_A1]), wc = numel / m->out;
    int err;
    if (rows_of(m->t[ROLE_GLORA_A2]) != wc || cols_of(m->t[ROLE_GLORA_A1]) != wc) {
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "module \"%s\": old-layout GLoRA factors "
                              "do not fit a target of %lld columns",
                              m->name, (long long)wc);
    }
    if ((err = product(out, m, ROLE_GLORA_B2, ROLE_GLORA_B1, 0, 0, numel, NULL)) ||
        (err = load(&a1, m, ROLE_GLORA_A1, "a1")) || (err = load(&a2, m, ROLE_GLORA_A2, "a2")) ||
        (err = alloc_f32(&wa, m->out * r)) || (err = alloc_f32(&wa2, numel)))
        goto done;
    gemm(wa, w, 0, a2, 0, m->out, r, wc);   /* flat(W) · a2 : (out, r) */
    gemm(wa2, wa, 0, a1, 0, m->out, wc, r); /* · a1 : (out, wc) */
    for (int64_t i = 0; i < numel; i++)
        out[i] += wa2[i];
done:
    mood_free(a1);
    mood_free(a2);
    mood_free(wa);
    mood_free(wa2);
    return err;
}

static int delta_glora(float *out, const mood_module *m, const float *w, int64_t numel)
{
    float *a = NULL, *wa = NULL;
    int64_t in = m->ndim == 4 ? m->in : numel / m->out, kk = m->ndim == 4 ? m->kh * m->kw : 1;
    int err;
    if (m->old_glora)
        return delta_glora_old(out, m, w, numel);
    if (!m->t[ROLE_GLORA_A1] || !m->t[ROLE_GLORA_A2] || rows_of(m->t[ROLE_GLORA_A1]) != in ||
        cols_of(m->t[ROLE_GLORA_A2]) != in)
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\": GLoRA a1/a2 do not match the "
                              "target's %lld input channels",
                              m->name, (long long)in);
    if ((err = product(out, m, ROLE_GLORA_B1, ROLE_GLORA_B2, 0, 0, numel, NULL)) ||
        (err = alloc_f32(&a, in * in)) || (err = alloc_f32(&wa, numel)) ||
        (err = product(a, m, ROLE_GLORA_A1, ROLE_GLORA_A2, 0, 0, in * in, NULL)) ||
        (err = contract_in(wa, w, a, m->out, in, kk)))
        goto done;
    for (int64_t i = 0; i < numel; i++)
        out[i] += wa[i];
done:
    mood_free(a);
    mood_free(wa);
    return err;
}

/* Reads IA3's vector and axis; checks the vector fits that axis. */
static int ia3_params(float **vec, int *on_input, const mood_module *m)
{
    double flag = 0;
    int64_t want;
    int err = 0;
    *vec = NULL;
    if (m->t[ROLE_IA3_ON_INPUT])
        err = mood_dtype_read_f64(&flag, m->t[ROLE_IA3_ON_INPUT]->data,
                                  m->t[ROLE_IA3_ON_INPUT]->dtype);
    if (err)
        return err;
    *on_input = flag != 0;
    want = *on_input ? (m->ndim >= 2 ? m->in : 1) : m->out;
    if (!m->t[ROLE_IA3_W] || mood_st_numel(m->t[ROLE_IA3_W]) != want)
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\" (ia3): weight must have %lld "
                              "elements (the target's %s channels)",
                              m->name, (long long)want, *on_input ? "input" : "output");
    return load(vec, m, ROLE_IA3_W, "weight");
}

/* w ← w ⊙ (1 + mult·v) along the IA3 axis; with out != w, writes the scaled part only. */
static int ia3_scale(float *out, const mood_module *m, const float *w, float mult, int delta)
{
    float *v = NULL;
    int on_input = 0, err;
    int64_t numel = module_numel(m), in = m->ndim >= 2 ? m->in : 1, kk = numel / (m->out * in);
    if ((err = ia3_params(&v, &on_input, m)) != 0)
        return err;
    for (int64_t i = 0; i < numel; i++) {
        float s = v[on_input ? (i / kk) % in : i / (in * kk)];
        out[i] = delta ? w[i] * s : w[i] * (1.0f + mult * s);
    }
    mood_free(v);
    return 0;
}

/* ----- OFT and BOFT ------------------------------------------------------------------------- */

/* Cayley transform of every bs×bs block of `blocks` (n blocks): Q = B − Bᵀ, clamped to
 * ‖Q‖_F ≤ c over all blocks together when c > 0, R = (I + Q)(I − Q)⁻¹ = (I − Q)⁻¹(I + Q) (the two
 * factors commute), then R ← mult·R + (1 − mult)·I. */
static int cayley(float *r, const float *blocks, int64_t n, int64_t bs, double c, float mult,
                  const mood_module *m)
{
    float *a = NULL;
    double norm = 0, k = 1;
    int err = alloc_f32(&a, bs * bs);
    for (int64_t i = 0; !err && i < n * bs * bs; i++) {
        int64_t blk = i / (bs * bs), p = (i / bs) % bs, q = i % bs;
        double v = blocks[i] - blocks[blk * bs * bs + q * bs + p];
        norm += v * v;
    }
    norm = sqrt(norm);
    if (c > 0 && norm > c)
        k = c / norm;
    for (int64_t blk = 0; !err && blk < n; blk++) {
        const float *b = blocks + blk * bs * bs;
        float *x = r + blk * bs * bs;
        for (int64_t p = 0; p < bs; p++)
            for (int64_t q = 0; q < bs; q++) {
                float qv = (float)(k * (b[p * bs + q] - b[q * bs + p])), id = p == q;
                a[p * bs + q] = id - qv;
                x[p * bs + q] = id + qv;
            }
        int info = mood__sgesv_rowmajor((int)bs, (int)bs, a, x);
        if (info == MOOD_LAPACK_NOMEM)
            err = mood_error_nomem();
        else if (info != 0)
            err = mood_error_set(MOOD_EFORMAT, "module \"%s\": OFT block %lld is singular", m->name,
                                 (long long)blk);
        for (int64_t i = 0; !err && i < bs * bs; i++)
            x[i] = mult * x[i] + (1.0f - mult) * (i / bs == i % bs);
    }
    mood_free(a);
    return err;
}

/* The name the file gives the blocks, for messages. */
static const char *oft_key(const mood_module *m)
{
    return m->oft_direct ? "oft_diag" : "oft_blocks";
}

static double oft_constraint(const mood_module *m)
{
    return m->alpha > 0 ? m->alpha * (double)m->out : 0;
}

/* The rotation blocks of an OFT/BOFT module at strength mult: the Cayley transform of the stored
 * blocks, or (old oft_diag) the stored blocks themselves, whose strength transformed() applies. */
static int rotations(float *r, const float *blocks, int64_t n, int64_t bs, float mult,
                     const mood_module *m)
{
    if (m->oft_direct) {
        memcpy(r, blocks, (size_t)(n * bs * bs) * sizeof *r);
        return 0;
    }
    return cayley(r, blocks, n, bs, oft_constraint(m), mult, m);
}

/* Multiplies rows of dst by rescale (out entries), as LyCORIS does after the rotation. */
static int oft_rescale(float *dst, const mood_module *m, int64_t numel)
{
    float *s = NULL;
    int64_t row = numel / m->out;
    int err;
    if (!m->t[ROLE_OFT_RESCALE])
        return 0;
    if (mood_st_numel(m->t[ROLE_OFT_RESCALE]) != m->out)
        return shape_error(m, "rescale", mood_st_numel(m->t[ROLE_OFT_RESCALE]), m->out);
    if ((err = load(&s, m, ROLE_OFT_RESCALE, "rescale")) == 0)
        for (int64_t i = 0; i < numel; i++)
            dst[i] *= s[i / row];
    mood_free(s);
    return err;
}

/* dst = blockdiag(R)ᵀ · w (row blocks of bs), then rescale. */
static int oft_transform(float *dst, const mood_module *m, const float *w, float mult)
{
    const mood_st_tensor *tb = m->t[ROLE_OFT_BLOCKS];
    float *blocks = NULL, *r = NULL;
    int64_t numel = module_numel(m), n, bs, row = numel / m->out;
    int err;
    if (!tb || tb->ndim != 3 || tb->shape[1] != tb->shape[2] ||
        tb->shape[0] * tb->shape[1] != m->out)
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\" (oft): %s must be (n, bs, bs) "
                              "with n·bs = %lld output channels",
                              m->name, oft_key(m), (long long)m->out);
    n = tb->shape[0];
    bs = tb->shape[1];
    if ((err = load(&blocks, m, ROLE_OFT_BLOCKS, "oft_blocks")) ||
        (err = alloc_f32(&r, n * bs * bs)) || (err = rotations(r, blocks, n, bs, mult, m)))
        goto done;
    for (int64_t k = 0; k < n; k++)
        gemm(dst + k * bs * row, r + k * bs * bs, 1, w + k * bs * row, 0, bs, row, bs);
    err = oft_rescale(dst, m, numel);
done:
    mood_free(blocks);
    mood_free(r);
    return err;
}

/* One butterfly stage: rows viewed as (g, c, e) with sizes (out/2k, 2, k) are reordered to
 * (g, e, c), each block of b consecutive rows is multiplied by its R, and the order restored. */
static void boft_stage(float *x, float *y, float *z, const float *r, int64_t out, int64_t b,
                       int64_t k, int64_t row)
{
    for (int64_t old = 0; old < out; old++) {
        int64_t g = old / (2 * k), c = (old / k) % 2, e = old % k;
        memcpy(y + (g * 2 * k + e * 2 + c) * row, x + old * row, (size_t)row * sizeof *x);
    }
    for (int64_t t = 0; t < out / b; t++)
        gemm(z + t * b * row, r + t * b * b, 0, y + t * b * row, 0, b, row, b);
    for (int64_t old = 0; old < out; old++) {
        int64_t g = old / (2 * k), c = (old / k) % 2, e = old % k;
        memcpy(x + old * row, z + (g * 2 * k + e * 2 + c) * row, (size_t)row * sizeof *x);
    }
}

static int boft_transform(float *dst, const mood_module *m, const float *w, float mult)
{
    const mood_st_tensor *tb = m->t[ROLE_OFT_BLOCKS];
    float *blocks = NULL, *r = NULL, *y = NULL, *z = NULL;
    int64_t numel = module_numel(m), stages, n, b, row = numel / m->out;
    int err;
    if (!tb || tb->ndim != 4 || tb->shape[2] != tb->shape[3] || tb->shape[3] % 2 != 0 ||
        tb->shape[1] * tb->shape[2] != m->out)
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\" (boft): %s must be "
                              "(stages, n, b, b) with b even and n·b = %lld output channels",
                              m->name, oft_key(m), (long long)m->out);
    stages = tb->shape[0];
    n = tb->shape[1];
    b = tb->shape[2];
    for (int64_t i = 0; i < stages; i++) {
        if (m->out % ((int64_t)b << i) != 0)
            return mood_error_set(MOOD_EFORMAT,
                                  "module \"%s\" (boft): %lld stages do not fit "
                                  "%lld output channels",
                                  m->name, (long long)stages, (long long)m->out);
    }
    if ((err = load(&blocks, m, ROLE_OFT_BLOCKS, "oft_blocks")) ||
        (err = alloc_f32(&r, stages * n * b * b)) || (err = alloc_f32(&y, numel)) ||
        (err = alloc_f32(&z, numel)) || (err = rotations(r, blocks, stages * n, b, mult, m)))
        goto done;
    memcpy(dst, w, (size_t)numel * sizeof *dst);
    for (int64_t i = 0; i < stages; i++)
        boft_stage(dst, y, z, r + i * n * b * b, m->out, b, ((int64_t)1 << i) * b / 2, row);
    err = oft_rescale(dst, m, numel);
done:
    mood_free(blocks);
    mood_free(r);
    mood_free(y);
    mood_free(z);
    return err;
}

/* ----- DoRA --------------------------------------------------------------------------------- */

/* wc ← wc ⊙ g / ‖wc‖ along the module's norm axis (1: per input column, 2: per output row). */
static int dora_normalize(float *wc, const mood_module *m, int64_t numel)
{
    const mood_st_tensor *tg = m->t[ROLE_DORA_SCALE];
    int64_t in = m->ndim >= 2 ? m->in : 1, kk = numel / (m->out * in);
    int64_t axis = m->dora == 1 ? in : m->out;
    float *g = NULL;
    double *norm = NULL;
    int err;
    if (!tg || mood_st_numel(tg) != axis)
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\": dora_scale must have %lld elements "
                              "(one per %s channel)",
                              m->name, (long long)axis, m->dora == 1 ? "input" : "output");
    if ((err = load(&g, m, ROLE_DORA_SCALE, "dora_scale")) != 0)
        return err;
    if (!(norm = mood_calloc((size_t)axis, sizeof *norm))) {
        err = mood_error_nomem();
        goto done;
    }
    /* Norms in float32 with no eps, as ComfyUI and A1111 compute them (§3.5). */
    for (int64_t i = 0; i < numel; i++) {
        int64_t j = m->dora == 1 ? (i / kk) % in : i / (in * kk);
        norm[j] += (double)wc[i] * wc[i];
    }
    for (int64_t i = 0; i < numel; i++) {
        int64_t j = m->dora == 1 ? (i / kk) % in : i / (in * kk);
        wc[i] = (float)(wc[i] * (g[j] / (float)sqrt(norm[j])));
    }
done:
    mood_free(g);
    mood_free(norm);
    return err;
}

/* ----- dispatch ----------------------------------------------------------------------------- */

int mood__module_is_additive(const mood_module *m)
{
    if (m->dora)
        return 0;
    return m->algo == MOOD_ALGO_LORA || m->algo == MOOD_ALGO_LOHA || m->algo == MOOD_ALGO_LOKR ||
           m->algo == MOOD_ALGO_FULL || m->algo == MOOD_ALGO_NORM;
}

int mood__module_same_shape(const mood_module *m, const char *path, const mood_module *other,
                            const char *other_path)
{
    /* no division: a module of zero rows has a shape too (refused elsewhere as empty) */
    int64_t cols = m->ndim == 1 ? 1 : m->in * m->kh * m->kw;
    int64_t other_cols = other->ndim == 1 ? 1 : other->in * other->kh * other->kw;
    if (m->out == other->out && cols == other_cols)
        return 0;
    return mood_error_set(MOOD_EFORMAT,
                          "%s: module \"%s\" changes a %lld x %lld weight, but the same target in "
                          "%s is %lld x %lld: these LoRAs are not for one model",
                          path, m->name, (long long)m->out, (long long)cols, other_path,
                          (long long)other->out, (long long)other_cols);
}

static int needs_w(const mood_module *m, const float *w)
{
    if (w || mood__module_is_additive(m))
        return 0;
    return mood_error_set(MOOD_EINVAL,
                          "module \"%s\" (%s%s) depends on the base weight, "
                          "which was not given",
                          m->name, mood_algo_name(m->algo), m->dora ? " with DoRA" : "");
}

/* The ΔW of algorithms that are a function of the factors (and W for GLoRA), before the
 * module's scale. */
static int unscaled_delta(float *out, const mood_module *m, const float *w, int64_t numel)
{
    int err;
    switch (m->algo) {
    case MOOD_ALGO_LORA:
        err = delta_lora(out, m, numel);
        break;
    case MOOD_ALGO_LOHA:
        err = delta_loha(out, m, numel);
        break;
    case MOOD_ALGO_LOKR:
        err = delta_lokr(out, m, numel);
        break;
    case MOOD_ALGO_GLORA:
        err = delta_glora(out, m, w, numel);
        break;
    case MOOD_ALGO_FULL:
        return delta_copy(out, m, ROLE_DIFF, numel);
    case MOOD_ALGO_NORM:
        return delta_copy(out, m, ROLE_W_NORM, numel);
    default:
        return mood_error_set(MOOD_EINVAL, "module \"%s\": %s has no raw ΔW", m->name,
                              mood_algo_name(m->algo));
    }
    return err;
}

/* The scaled ΔW (full and norm deltas are stored scaled). */
static int raw_delta(float *out, const mood_module *m, const float *w, int64_t numel)
{
    int err = unscaled_delta(out, m, w, numel);
    if (err || m->algo == MOOD_ALGO_FULL || m->algo == MOOD_ALGO_NORM)
        return err;
    for (int64_t i = 0; i < numel; i++)
        out[i] = (float)(out[i] * m->scale);
    return 0;
}

/* W' (not ΔW) of the non-additive algorithms at multiplier mult, into dst. */
static int transformed(float *dst, const mood_module *m, const float *w, float mult)
{
    int64_t numel = module_numel(m);
    int err;
    if ((m->algo == MOOD_ALGO_OFT || m->algo == MOOD_ALGO_BOFT) && m->oft_direct) {
        /* A1111: W' = W + mult·(T(W) − W), T the whole transform (rotation, then rescale) */
        err = m->algo == MOOD_ALGO_OFT ? oft_transform(dst, m, w, 1.0f)
                                       : boft_transform(dst, m, w, 1.0f);
        for (int64_t i = 0; !err && i < numel; i++)
            dst[i] = w[i] + mult * (dst[i] - w[i]);
        return err;
    }
    if (m->algo == MOOD_ALGO_OFT)
        return oft_transform(dst, m, w, mult);
    if (m->algo == MOOD_ALGO_BOFT)
        return boft_transform(dst, m, w, mult);
    if (m->algo == MOOD_ALGO_IA3)
        return ia3_scale(dst, m, w, mult, 0);
    /* DoRA on top of an additive algorithm (or GLoRA) */
    if ((err = raw_delta(dst, m, w, numel)) != 0)
        return err;
    if (m->peft_dora) {
        for (int64_t i = 0; i < numel; i++)
            dst[i] = w[i] + mult * dst[i];
        return dora_normalize(dst, m, numel);
    }
    for (int64_t i = 0; i < numel; i++)
        dst[i] += w[i];
    if ((err = dora_normalize(dst, m, numel)) != 0)
        return err;
    for (int64_t i = 0; i < numel; i++)
        dst[i] = w[i] + mult * (dst[i] - w[i]);
    return 0;
}

int mood__module_delta(float *out, const mood_module *m, const float *w)
{
    int64_t numel = module_numel(m);
    int err;
    if ((err = needs_w(m, w)) != 0)
        return err;
    if (m->algo == MOOD_ALGO_IA3)
        return ia3_scale(out, m, w, 1.0f, 1);
    if (!m->dora && m->algo != MOOD_ALGO_OFT && m->algo != MOOD_ALGO_BOFT)
        return raw_delta(out, m, w, numel);
    if ((err = transformed(out, m, w, 1.0f)) != 0)
        return err;
    for (int64_t i = 0; i < numel; i++)
        out[i] -= w[i];
    return 0;
}

/* bias ← bias + mult·(diff_b | b_norm). */
static int apply_bias(const mood_module *m, float *bias, float mult)
{
    mood_role role = m->algo == MOOD_ALGO_FULL ? ROLE_DIFF_B : ROLE_B_NORM;
    const mood_st_tensor *t =
        (m->algo == MOOD_ALGO_FULL || m->algo == MOOD_ALGO_NORM) ? m->t[role] : NULL;
    float *v = NULL;
    int err;
    if (!t)
        return 0;
    if (!bias)
        return mood_error_set(MOOD_EFORMAT,
                              "module \"%s\": \"%s\" patches a bias the base "
                              "does not have",
                              m->name, t->name);
    if (mood_st_numel(t) != m->out)
        return shape_error(m, t->name, mood_st_numel(t), m->out);
    if ((err = load(&v, m, role, "bias delta")) == 0)
        for (int64_t i = 0; i < m->out; i++)
            bias[i] += mult * v[i];
    mood_free(v);
    return err;
}

/* W ← W + mult·ΔW, or W ← f(W, mult) for the non-additive algorithms; w has the logical
 * (Linear-orientation) layout. */
static int apply_logical(const mood_module *m, float *w, float mult)
{
    int64_t numel = module_numel(m);
    float *tmp = NULL;
    int err;
    if ((m->algo == MOOD_ALGO_FULL && !m->t[ROLE_DIFF]) ||
        (m->algo == MOOD_ALGO_NORM && !m->t[ROLE_W_NORM]))
        return 0; /* bias-only module */
    if ((err = alloc_f32(&tmp, numel)) != 0)
        return err;
    if (mood__module_is_additive(m)) {
        /* one pass: scale, multiply and add in place (the arithmetic of raw_delta + add) */
        double scale = (m->algo == MOOD_ALGO_FULL || m->algo == MOOD_ALGO_NORM) ? 1.0 : m->scale;
        if ((err = unscaled_delta(tmp, m, w, numel)) == 0) {
#pragma omp parallel for schedule(static) if (numel > (1 << 20))
            for (int64_t i = 0; i < numel; i++)
                w[i] = w[i] + mult * (float)(tmp[i] * scale);
        }
    } else {
        if (m->algo == MOOD_ALGO_GLORA && !m->dora) {
            if ((err = raw_delta(tmp, m, w, numel)) == 0)
                for (int64_t i = 0; i < numel; i++)
                    tmp[i] = w[i] + mult * tmp[i];
        } else {
            err = transformed(tmp, m, w, mult);
        }
        if (!err)
            memcpy(w, tmp, (size_t)numel * sizeof *w);
    }
    mood_free(tmp);
    return err;
}

static void transpose(float *dst, const float *src, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[c * rows + r] = src[r * cols + c];
}

int mood__module_apply(const mood_module *m, float *w, float *bias, float mult)
{
    int64_t numel = module_numel(m);
    float *logical = NULL;
    int err;
    if (!m->target || !m->target->transposed || m->ndim != 2) {
        err = apply_logical(m, w, mult);
    } else if ((err = alloc_f32(&logical, numel)) == 0) {
        /* the base stores Wᵀ (in, out): apply to W and store the transpose back */
        transpose(logical, w, m->in, m->out);
        if ((err = apply_logical(m, logical, mult)) == 0)
            transpose(w, logical, m->out, m->in);
    }
    if (!err)
        err = apply_bias(m, bias, mult);
    mood_free(logical);
    return err;
}

/* ----- public wrappers ---------------------------------------------------------------------- */

static int check_index(const mood_adapter *a, size_t i)
{
    if (!a || i >= a->n_modules)
        return mood_error_set(MOOD_EINVAL, "module index %zu out of range (%zu modules)", i,
                              a ? a->n_modules : 0);
    return 0;
}

int mood_adapter_delta(float *out, const mood_adapter *a, size_t i, const float *w)
{
    int err = check_index(a, i);
    if (!err && (err = mood__module_delta(out, &a->modules[i], w)) != 0)
        mood_error_prefix("%s", mood_st_path(a->file));
    return err;
}

int mood_adapter_lowrank(const mood_adapter *a, size_t i, float **down, float **up, int *rank)
{
    const mood_module *m;
    int64_t o, k, n;
    int err;
    MOOD_ARG_NONNULL(down);
    MOOD_ARG_NONNULL(up);
    MOOD_ARG_NONNULL(rank);
    *down = *up = NULL;
    *rank = 0;
    MOOD_ARG_NONNULL(a);
    if ((err = check_index(a, i)) != 0)
        return err;
    m = &a->modules[i];
    if (m->algo != MOOD_ALGO_LORA || m->dora || m->t[ROLE_MID] || m->t[ROLE_DIFF_B] ||
        m->t[ROLE_B_NORM] || !m->t[ROLE_UP] || !m->t[ROLE_DOWN])
        return mood_error_set(MOOD_EUNSUPPORTED, "module \"%s\" is not a plain low-rank pair",
                              m->name);
    o = rows_of(m->t[ROLE_UP]);
    k = cols_of(m->t[ROLE_UP]);
    n = cols_of(m->t[ROLE_DOWN]);
    /* A side path runs down with the layer's kernel, then up as a 1x1: up must be (out, rank). */
    if (k != rows_of(m->t[ROLE_DOWN]) || o != m->out || o * n != module_numel(m) || k > INT_MAX)
        return mood_error_set(MOOD_EUNSUPPORTED,
                              "module \"%s\": factors are not (out x rank) "
                              "and (rank x in)",
                              m->name);
    if ((err = load(down, m, ROLE_DOWN, "down factor")) == 0 &&
        (err = load(up, m, ROLE_UP, "up factor")) == 0) {
        int64_t used = mood__module_ranks_used(m, k); /* down's first `used` rows lead it already */
        keep_columns(*up, o, k, used);
        for (int64_t j = 0; j < o * used; j++)
            (*up)[j] = (float)((*up)[j] * m->scale);
        *rank = (int)used;
    }
    if (err) {
        mood_free(*down);
        mood_free(*up);
        *down = *up = NULL;
        mood_error_prefix("%s", mood_st_path(a->file));
    }
    return err;
}

int mood_adapter_limit_rank(mood_adapter *a, int rank)
{
    int n = 0;
    MOOD_ARG_NONNULL(a);
    if (rank < 0)
        return mood_error_set(MOOD_EINVAL, "a negative DyLoRA rank cut (%d)", rank);
    for (size_t i = 0; i < a->n_modules; i++) {
        mood_module *m = &a->modules[i];
        if (m->algo != MOOD_ALGO_LORA || m->t[ROLE_MID] || !m->t[ROLE_UP] || !m->t[ROLE_DOWN])
            continue; /* A1111 cuts only the conventional pairs of network_lora */
        m->dyn = rank;
        n++;
    }
    return n;
}

int64_t mood_adapter_target_numel(const mood_adapter *a, size_t i)
{
    if (check_index(a, i) != 0)
        return -1;
    return module_numel(&a->modules[i]);
}

int mood_adapter_target_shape(const mood_adapter *a, size_t i, int64_t shape_out[4])
{
    const mood_module *m;
    int err = check_index(a, i);
    if (err)
        return err;
    m = &a->modules[i];
    shape_out[0] = m->out;
    shape_out[1] = m->ndim >= 2 ? m->in : 1;
    shape_out[2] = m->ndim == 4 ? m->kh : 1;
    shape_out[3] = m->ndim == 4 ? m->kw : 1;
    return m->ndim;
}

int mood_adapter_apply(const mood_adapter *a, size_t i, float *w, float *bias, float m)
{
    int err = check_index(a, i);
    if (!err && (err = mood__module_apply(&a->modules[i], w, bias, m)) != 0)
        mood_error_prefix("%s", mood_st_path(a->file));
    return err;
}
