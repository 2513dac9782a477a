/*
 * test_stack.c: mood_lora_stack is exact: baking the stacked LoRA equals baking its inputs one
 * after the other with their multipliers (within 1e-5 relative), for plain LoRA, LoCon (conv
 * ranks concatenated), LoHa, LoKr and Tucker inputs (stored exactly at the rank their factors
 * bound, below the layer's), with
 * separate UNet and text-encoder multipliers and negative ones. The inputs are the reference
 * tools' fixture files (kohya sd-scripts, LyCORIS). Inputs that depend on the base weight
 * (DoRA, OFT, IA3) or change a bias are refused with an error naming the module and algorithm,
 * leaving no file.
 */
#include "harness.h"
#include "lora/lora_internal.h"

static int bake_to(const char *out, const char *base, const mood_weighted_adapter *a, size_t n)
{
    mood_bake_options o;
    memset(&o, 0, sizeof o);
    o.base = base;
    o.adapters = a;
    o.n_adapters = n;
    o.output = out;
    return mood_bake(&o);
}

/* Number of elements of a and b (same layout) differing by more than atol + rtol·|b|. */
static long compare_files(const char *pa, const char *pb, double atol, double rtol)
{
    mood_st_file *a = NULL, *b = NULL;
    long bad = 0;
    if (mood_st_open(&a, pa) || mood_st_open(&b, pb)) {
        fprintf(stderr, "  %s\n", mood_error_last());
        bad = 1;
    }
    for (size_t i = 0; !bad && i < mood_st_count(b); i++) {
        const mood_st_tensor *tb = mood_st_at(b, i), *ta = mood_st_find(a, tb->name);
        int64_t n = mood_st_numel(tb);
        float *x = malloc((size_t)n * 4 + 4), *y = malloc((size_t)n * 4 + 4);
        if (!ta || mood_st_numel(ta) != n || !x || !y || mood_st_to_f32(x, ta) ||
            mood_st_to_f32(y, tb)) {
            bad++;
        } else {
            for (int64_t k = 0; k < n; k++) {
                if (!close_enough(x[k], y[k], atol, rtol) && bad++ < 3)
                    fprintf(stderr, "  %s[%lld]: %.9g vs %.9g\n", tb->name, (long long)k, x[k],
                            y[k]);
            }
        }
        free(x);
        free(y);
    }
    mood_st_close(a);
    mood_st_close(b);
    return bad;
}

/* stack(a, b) baked == bake(a, then b). */
static void check_stack_equivalent(const char *base, const char *fa, double ua, double ta,
                                   const char *fb, double ub, double tb)
{
    char pa[1024], pb[1024], base_path[1024];
    mood_weighted_adapter in[2] = {{.path = pa, .unet = ua, .te = ta},
                                   {.path = pb, .unet = ub, .te = tb}},
                          stacked = {.path = NULL, .unet = 1, .te = 1};
    mood_lora_write_options o;
    const char *lora = scratch_path("stacked.safetensors");
    char lora_path[1024], direct[1024], via[1024];
    snprintf(base_path, sizeof base_path, "%s", base); /* fixture() reuses its buffers */
    base = base_path;
    snprintf(pa, sizeof pa, "%s", fixture(fa));
    snprintf(pb, sizeof pb, "%s", fixture(fb));
    snprintf(lora_path, sizeof lora_path, "%s", lora);
    snprintf(direct, sizeof direct, "%s", scratch_path("direct.safetensors"));
    snprintf(via, sizeof via, "%s", scratch_path("via_stack.safetensors"));
    memset(&o, 0, sizeof o);
    o.output = lora_path;
    o.dtype = MOOD_DTYPE_F32;
    MOOD_CHECK_OK(mood_lora_stack(in, 2, &o));
    stacked.path = lora_path;
    MOOD_CHECK_OK(bake_to(direct, base, in, 2));
    MOOD_CHECK_OK(bake_to(via, base, &stacked, 1));
    MOOD_CHECK_MSG(compare_files(via, direct, 1e-6, 1e-5) == 0, "%s + %s", fa, fb);
    remove(lora_path);
    remove(direct);
    remove(via);
}

static void test_stack_lora_and_locon(void)
{
    check_stack_equivalent(fixture("bases/sd1_base.safetensors"), "kohya/sd1_lora.safetensors", 0.7,
                           0.7, "kohya/sd1_locon_fp16.safetensors", -0.4, -0.4);
    /* separate text-encoder multipliers */
    check_stack_equivalent(fixture("bases/sd1_base.safetensors"), "kohya/sd1_lora_bf16.safetensors",
                           0.8, 0.25, "kohya/sd1_lora.safetensors", -0.4, 1.5);
    check_stack_equivalent(fixture("bases/sdxl_base.safetensors"), "kohya/sdxl_lora.safetensors",
                           0.7, 0.7, "kohya/sdxl_locon.safetensors", -0.4, -0.4);
}

static void test_stack_lycoris(void)
{
    char base[1024];
    snprintf(base, sizeof base, "%s", fixture("bases/sd1_base.safetensors"));
    check_stack_equivalent(base, "lycoris/loha.safetensors", 0.7, 0.7, "lycoris/lokr.safetensors",
                           -0.4, -0.4);
    check_stack_equivalent(base, "lycoris/locon_tucker.safetensors", 0.7, 0.5,
                           "lycoris/loha_tucker.safetensors", -0.4, -0.4);
    check_stack_equivalent(base, "lycoris/lokr_tucker.safetensors", 0.7, 0.7,
                           "lycoris/lokr_full.safetensors", -0.4, -0.4);
}

/* A Tucker LoCon whose core is not square, (ra, rb, 3, 3) with ra > rb: ΔW's rank can reach ra,
 * not rb (the stack's rank bound read rb and stored a wrong ΔW); made here, as LyCORIS makes
 * only square cores. */
static void test_stack_tucker_core_not_square(void)
{
    static const char *const mod = "lora_unet_up_blocks_0_upsamplers_0_conv";
    int64_t up_shape[4] = {4, 4, 1, 1}, mid_shape[4] = {4, 1, 3, 3}, down_shape[4] = {1, 4, 1, 1};
    float up[16], mid[36], down[4], alpha = 1;
    char key[128], base[1024], path[1024], lora[1024], direct[1024], via[1024];
    mood_st_writer *w = NULL;
    mood_weighted_adapter in = {.path = path, .unet = 0.7, .te = 0.7},
                          stacked = {.path = lora, .unet = 1, .te = 1};
    mood_lora_write_options o;
    uint32_t x = 12345;
    float *all[3] = {up, mid, down};
    int n[3] = {16, 36, 4};
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < n[t]; i++) {
            x = x * 1664525u + 1013904223u;
            all[t][i] = (float)((double)(x >> 8) / (1 << 24) - 0.5);
        }
    snprintf(base, sizeof base, "%s", fixture("bases/sd1_base.safetensors"));
    snprintf(path, sizeof path, "%s", scratch_path("tucker_ra4_rb1.safetensors"));
    snprintf(lora, sizeof lora, "%s", scratch_path("tucker_stacked.safetensors"));
    snprintf(direct, sizeof direct, "%s", scratch_path("tucker_direct.safetensors"));
    snprintf(via, sizeof via, "%s", scratch_path("tucker_via.safetensors"));
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    if (!w)
        return;
    snprintf(key, sizeof key, "%s.lora_up.weight", mod);
    MOOD_CHECK_OK(mood_st_writer_add(w, key, MOOD_DTYPE_F32, 4, up_shape, up));
    snprintf(key, sizeof key, "%s.lora_mid.weight", mod);
    MOOD_CHECK_OK(mood_st_writer_add(w, key, MOOD_DTYPE_F32, 4, mid_shape, mid));
    snprintf(key, sizeof key, "%s.lora_down.weight", mod);
    MOOD_CHECK_OK(mood_st_writer_add(w, key, MOOD_DTYPE_F32, 4, down_shape, down));
    snprintf(key, sizeof key, "%s.alpha", mod);
    MOOD_CHECK_OK(mood_st_writer_add(w, key, MOOD_DTYPE_F32, 0, NULL, &alpha));
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    mood_st_writer_free(w);
    memset(&o, 0, sizeof o);
    o.output = lora;
    o.dtype = MOOD_DTYPE_F32;
    MOOD_CHECK_OK(mood_lora_stack(&in, 1, &o));
    MOOD_CHECK_OK(bake_to(direct, base, &in, 1));
    MOOD_CHECK_OK(bake_to(via, base, &stacked, 1));
    MOOD_CHECK_MSG(compare_files(via, direct, 1e-6, 1e-5) == 0, "a Tucker core (4, 1, 3, 3)");
}

/* A LoHa of rank r stacks at rank r² at most (a Hadamard product's rank is at most the product
 * of its factors'), a Tucker LoCon at rank r (its core folded in), never at the layer's full
 * rank; the bake of check_stack_equivalent shows the factors exact. */
static void check_stacked_ranks(const char *input, int square)
{
    char pa[1024], out[1024];
    mood_weighted_adapter in = {.path = pa, .unet = 0.7, .te = 0.7};
    mood_lora_write_options o;
    mood_adapter *a = NULL, *b = NULL;
    int matched = 0;
    snprintf(pa, sizeof pa, "%s", fixture(input));
    snprintf(out, sizeof out, "%s", scratch_path("ranks.safetensors"));
    memset(&o, 0, sizeof o);
    o.output = out;
    o.dtype = MOOD_DTYPE_F32;
    MOOD_CHECK_OK(mood_lora_stack(&in, 1, &o));
    MOOD_CHECK_OK(mood_adapter_open(&a, pa, NULL));
    MOOD_CHECK_OK(mood_adapter_open(&b, out, NULL));
    for (size_t i = 0; a && b && i < mood_adapter_module_count(a); i++) {
        mood_module_info x, y;
        mood_adapter_module(a, i, &x);
        for (size_t j = 0; j < mood_adapter_module_count(b); j++) {
            mood_adapter_module(b, j, &y);
            if (strcmp(x.kohya_name, y.kohya_name) == 0 && ++matched)
                MOOD_CHECK_MSG(y.rank <= (square ? x.rank * x.rank : x.rank),
                               "%s: %s of rank %d stacked at rank %d", input, x.kohya_name, x.rank,
                               y.rank);
        }
    }
    MOOD_CHECK_MSG(matched > 0, "%s: no module of the stack found again", input);
    mood_adapter_close(a);
    mood_adapter_close(b);
    remove(out);
}

static void test_stack_lycoris_ranks(void)
{
    check_stacked_ranks("lycoris/loha.safetensors", 1);
    check_stacked_ranks("lycoris/loha_tucker.safetensors", 1);
    check_stacked_ranks("lycoris/locon_tucker.safetensors", 0);
}

/* The stacked file of plain LoRAs is plain kohya LoRA: ranks add up, scale 1. */
static void test_stack_is_plain_lora(void)
{
    char pa[1024], out[1024];
    mood_weighted_adapter in[2] = {{.path = pa, .unet = 0.7, .te = 0.7},
                                   {.path = pa, .unet = -0.4, .te = -0.4}};
    mood_lora_write_options o;
    mood_adapter *a = NULL;
    snprintf(pa, sizeof pa, "%s", fixture("kohya/sd1_lora.safetensors"));
    snprintf(out, sizeof out, "%s", scratch_path("plain.safetensors"));
    memset(&o, 0, sizeof o);
    o.output = out;
    o.dtype = MOOD_DTYPE_F16;
    MOOD_CHECK_OK(mood_lora_stack(in, 2, &o));
    MOOD_CHECK_OK(mood_adapter_open(&a, out, NULL));
    MOOD_CHECK(a && mood_adapter_module_count(a) > 0);
    for (size_t i = 0; a && i < mood_adapter_module_count(a); i++) {
        mood_module_info info;
        mood_adapter_module(a, i, &info);
        MOOD_CHECK(info.algo == MOOD_ALGO_LORA && info.rank == 8 && info.scale == 1.0 &&
                   info.dtype == MOOD_DTYPE_F16);
    }
    mood_adapter_close(a);
    remove(out);
}

/* Ranks differ per module (LoRA r4 + block-wise LoCon), yet every module has the same alpha (the
 * largest rank): diffusers mis-scales kohya files whose per-module alphas differ (stack.c). */
static void test_stack_uniform_alpha(void)
{
    char pa[1024], pb[1024], out[1024];
    mood_weighted_adapter in[2] = {{.path = pa, .unet = 0.7, .te = 0.7},
                                   {.path = pb, .unet = -0.4, .te = -0.4}};
    mood_lora_write_options o;
    mood_adapter *a = NULL;
    int lo = 1 << 30, hi = 0;
    snprintf(pa, sizeof pa, "%s", fixture("kohya/sd1_lora.safetensors"));
    snprintf(pb, sizeof pb, "%s", fixture("kohya/sd1_locon_fp16.safetensors"));
    snprintf(out, sizeof out, "%s", scratch_path("uniform.safetensors"));
    memset(&o, 0, sizeof o);
    o.output = out;
    o.dtype = MOOD_DTYPE_F32;
    MOOD_CHECK_OK(mood_lora_stack(in, 2, &o));
    MOOD_CHECK_OK(mood_adapter_open(&a, out, NULL));
    for (size_t i = 0; a && i < mood_adapter_module_count(a); i++) {
        mood_module_info info;
        mood_adapter_module(a, i, &info);
        lo = info.rank < lo ? info.rank : lo;
        hi = info.rank > hi ? info.rank : hi;
        MOOD_CHECK(info.has_alpha && info.alpha == 8.0);
    }
    MOOD_CHECK(lo < hi && hi == 8);
    mood_adapter_close(a);
    remove(out);
}

static void check_refused(const char *file, const char *words)
{
    char p[1024], out[1024];
    mood_weighted_adapter in[2] = {{.path = NULL, .unet = 1, .te = 1},
                                   {.path = p, .unet = 0.5, .te = 0.5}};
    mood_lora_write_options o;
    char first[1024];
    snprintf(first, sizeof first, "%s", fixture("lycoris/locon.safetensors"));
    in[0].path = first;
    snprintf(p, sizeof p, "%s", fixture(file));
    snprintf(out, sizeof out, "%s", scratch_path("refused.safetensors"));
    memset(&o, 0, sizeof o);
    o.output = out;
    MOOD_CHECK(mood_lora_stack(in, 2, &o) == MOOD_EUNSUPPORTED);
    MOOD_CHECK_MSG(strstr(mood_error_last(), words) != NULL, "%s", mood_error_last());
    MOOD_CHECK(strstr(mood_error_last(), "module") != NULL);
    MOOD_CHECK(!mood_path_exists(out));
}

static void test_stack_refuses_base_dependent(void)
{
    check_refused("lycoris/locon_dora_in.safetensors", "DoRA");
    check_refused("lycoris/diag_oft.safetensors", "oft");
    check_refused("lycoris/ia3.safetensors", "ia3");
    check_refused("lycoris/full.safetensors", "bias"); /* diff_b: a LoRA holds no bias */
}

/* Stacking copies factors whole: a DyLoRA rank cut is refused, not silently dropped. */
static void test_stack_refuses_rank_cut(void)
{
    mood_weighted_adapter in[1] = {{.path = NULL, .unet = 1, .te = 1, .dyn = 2}};
    mood_lora_write_options o;
    char path[1024];
    snprintf(path, sizeof path, "%s", fixture("lycoris/locon.safetensors"));
    in[0].path = path;
    memset(&o, 0, sizeof o);
    o.output = scratch_path("cut.safetensors");
    MOOD_CHECK(mood_lora_stack(in, 1, &o) == MOOD_EINVAL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "DyLoRA"), "%s", mood_error_last());
    MOOD_CHECK(!mood_path_exists(o.output));
}

MOOD_TEST_MAIN(MOOD_T(test_stack_lora_and_locon), MOOD_T(test_stack_lycoris),
               MOOD_T(test_stack_lycoris_ranks), MOOD_T(test_stack_tucker_core_not_square),
               MOOD_T(test_stack_is_plain_lora), MOOD_T(test_stack_uniform_alpha),
               MOOD_T(test_stack_refuses_base_dependent), MOOD_T(test_stack_refuses_rank_cut))
