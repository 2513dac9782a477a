/*
 * test_keymap.c: the alias table (lora/keymap.c) and family detection (lora/family.c).
 *
 * References: the LDM <-> diffusers table and its worked examples in lora-formats.md §2.5
 * (taken from ComfyUI unet_to_diffusers and kohya's conversion map), the module counts of §2.4
 * (attention-only kohya LoRAs: SD1.5 72 TE + 192 UNet, SDXL 72 + 192 + 722), the tiny base
 * checkpoints written by tools/tiny_models.py with kohya's converters, and the names kohya wrote
 * into tests/fixtures/kohya.
 */
#include "harness.h"
#include "lora/lora_internal.h"

static void check_ldm(const char *ldm, const char *want)
{
    char out[256];
    int rc = mood__keymap_ldm_to_diffusers(out, sizeof out, ldm);
    if (!want) {
        MOOD_CHECK_MSG(rc != 0, "%s should have no diffusers name, got %s", ldm, out);
        return;
    }
    MOOD_CHECK_MSG(rc == 0 && strcmp(out, want) == 0, "%s -> %s, expected %s", ldm,
                   rc == 0 ? out : "(none)", want);
}

static void test_ldm_to_diffusers(void)
{
    /* §2.5 "Concrete consequences" */
    check_ldm("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv");
    check_ldm("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv");
    check_ldm("output_blocks.8.2.conv", "up_blocks.2.upsamplers.0.conv");
    check_ldm("input_blocks.9.0.op", "down_blocks.2.downsamplers.0.conv");
    check_ldm("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv");
    check_ldm("input_blocks.6.0.op", "down_blocks.1.downsamplers.0.conv");
    /* §2.5 table rows */
    check_ldm("input_blocks.0.0", "conv_in");
    check_ldm("out.2", "conv_out");
    check_ldm("out.0", "conv_norm_out");
    check_ldm("time_embed.0", "time_embedding.linear_1");
    check_ldm("time_embed.2", "time_embedding.linear_2");
    check_ldm("label_emb.0.0", "add_embedding.linear_1");
    check_ldm("label_emb.0.2", "add_embedding.linear_2");
    check_ldm("input_blocks.4.1.transformer_blocks.0.attn1.to_q",
              "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q");
    check_ldm("input_blocks.8.1.transformer_blocks.9.ff.net.0.proj",
              "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj");
    check_ldm("input_blocks.4.0.skip_connection", "down_blocks.1.resnets.0.conv_shortcut");
    check_ldm("input_blocks.10.0.out_layers.3", "down_blocks.3.resnets.0.conv2");
    check_ldm("input_blocks.1.0.in_layers.0", "down_blocks.0.resnets.0.norm1");
    check_ldm("middle_block.0.emb_layers.1", "mid_block.resnets.0.time_emb_proj");
    check_ldm("middle_block.1.proj_in", "mid_block.attentions.0.proj_in");
    check_ldm("middle_block.2.out_layers.0", "mid_block.resnets.1.norm2");
    check_ldm("output_blocks.3.0.in_layers.2", "up_blocks.1.resnets.0.conv1");
    check_ldm("output_blocks.11.1.proj_out", "up_blocks.3.attentions.2.proj_out");
    check_ldm("output_blocks.0.1.transformer_blocks.3.attn2.to_out.0",
              "up_blocks.0.attentions.0.transformer_blocks.3.attn2.to_out.0");
    /* not UNet modules of any known layout */
    check_ldm("input_blocks.3.1.proj_in", NULL);
    check_ldm("input_blocks.1.0.in_layers.1", NULL);
    check_ldm("foo.0", NULL);
}

/* Attention-module counts of §2.4 for one family table. */
static void count_attention(const mood_keymap *m, size_t *te1, size_t *te2, size_t *unet)
{
    *te1 = *te2 = *unet = 0;
    for (size_t i = 0; i < mood__keymap_target_count(m); i++) {
        const mood_target *t = mood__keymap_target(m, i);
        if (t->ndim < 2)
            continue;
        if (t->part == MOOD_PART_UNET &&
            (strstr(t->key, ".transformer_blocks.") || strstr(t->key, ".proj_in.") ||
             strstr(t->key, ".proj_out.")))
            (*unet)++;
        else if (t->part == MOOD_PART_TE1 && strstr(t->kohya_name, "_encoder_layers_"))
            (*te1)++;
        else if (t->part == MOOD_PART_TE2 && strstr(t->kohya_name, "_encoder_layers_"))
            (*te2)++;
    }
}

static void test_family_counts(void)
{
    mood_keymap *m = NULL;
    size_t te1, te2, unet;
    MOOD_CHECK_OK(mood__keymap_for_family(&m, MOOD_FAMILY_SD1));
    if (m) {
        count_attention(m, &te1, &te2, &unet);
        MOOD_CHECK_MSG(te1 == 72 && te2 == 0 && unet == 192, "sd1: %zu te, %zu unet", te1, unet);
        mood__keymap_free(m);
    }
    MOOD_CHECK_OK(mood__keymap_for_family(&m, MOOD_FAMILY_SDXL));
    if (m) {
        count_attention(m, &te1, &te2, &unet);
        MOOD_CHECK_MSG(te1 == 72 && te2 == 192 && unet == 722, "sdxl: %zu te1, %zu te2, %zu unet",
                       te1, te2, unet);
        mood__keymap_free(m);
    }
    MOOD_CHECK_OK(mood__keymap_for_family(&m, MOOD_FAMILY_SD2));
    if (m) {
        count_attention(m, &te1, &te2, &unet);
        /* 24 checkpoint layers (kohya trains 23) */
        MOOD_CHECK_MSG(te1 == 24 * 6 && unet == 192, "sd2: %zu te, %zu unet", te1, unet);
        mood__keymap_free(m);
    }
    MOOD_CHECK(mood__keymap_for_family(&m, MOOD_FAMILY_UNKNOWN) == MOOD_EINVAL);
}

/* Every alias in `aliases` resolves to the same target, whose key is `key`. */
static const mood_target *check_aliases(const mood_keymap *m, const char *key,
                                        const char *const *aliases)
{
    const mood_target *first = NULL;
    for (size_t i = 0; aliases[i]; i++) {
        const mood_target *t = mood__keymap_find(m, aliases[i]);
        MOOD_CHECK_MSG(t != NULL, "alias %s not found", aliases[i]);
        if (!t)
            continue;
        MOOD_CHECK_MSG(strcmp(t->key, key) == 0, "alias %s -> %s, expected %s", aliases[i], t->key,
                       key);
        MOOD_CHECK_MSG(!first || first == t, "alias %s resolves to another target", aliases[i]);
        first = first ? first : t;
    }
    return first;
}

static void test_sd1_aliases(void)
{
    static const char *const q[] = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q",
        "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        NULL};
    static const char *const out0[] = {
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
        "unet.up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor.to_out",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0", NULL};
    static const char *const fc1[] = {"lora_te_text_model_encoder_layers_3_mlp_fc1",
                                      "lora_te1_text_model_encoder_layers_3_mlp_fc1",
                                      "text_encoder.text_model.encoder.layers.3.mlp.fc1", NULL};
    static const char *const up[] = {"lora_unet_up_blocks_0_upsamplers_0_conv",
                                     "lora_unet_output_blocks_2_1_conv", NULL};
    mood_keymap *m = NULL;
    const mood_target *t;
    MOOD_CHECK_OK(mood__keymap_for_family(&m, MOOD_FAMILY_SD1));
    if (!m)
        return;
    t = check_aliases(
        m, "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", q);
    MOOD_CHECK(t && t->ndim == 2 && t->shape[0] == 640 && t->shape[1] == 640 && !t->bias_key);
    MOOD_CHECK(t && strcmp(t->kohya_name, q[0]) == 0 && t->part == MOOD_PART_UNET);
    t = check_aliases(
        m, "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight",
        out0);
    MOOD_CHECK(t && t->bias_key && strstr(t->bias_key, "to_out.0.bias"));
    t = check_aliases(m, "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight",
                      fc1);
    MOOD_CHECK(t && t->part == MOOD_PART_TE1 && t->shape[0] == 3072 && t->shape[1] == 768);
    MOOD_CHECK(t && strcmp(t->kohya_name, fc1[0]) == 0);
    t = check_aliases(m, "model.diffusion_model.output_blocks.2.1.conv.weight", up);
    MOOD_CHECK(t && t->ndim == 4 && t->shape[2] == 3 && t->shape[3] == 3);
    t = mood__keymap_find(m, "lora_unet_down_blocks_0_attentions_0_proj_in");
    MOOD_CHECK(t && t->ndim == 4 && t->shape[2] == 1); /* SD1 proj_in is a 1x1 conv */
    t = mood__keymap_find(m, "lora_unet_down_blocks_1_resnets_0_conv_shortcut");
    MOOD_CHECK(t && t->ndim == 4 && t->shape[0] == 640 && t->shape[1] == 320 && t->shape[2] == 1);
    MOOD_CHECK(mood__keymap_find(m, "lora_unet_down_blocks_0_resnets_0_conv_shortcut") == NULL);
    MOOD_CHECK(mood__keymap_find(m, "lora_te2_text_model_encoder_layers_3_mlp_fc1") == NULL);
    mood__keymap_free(m);
}

static void test_sdxl_aliases(void)
{
    static const char *const k[] = {"lora_te2_text_model_encoder_layers_5_self_attn_k_proj",
                                    "text_encoder_2.text_model.encoder.layers.5.self_attn.k_proj",
                                    NULL};
    static const char *const te1[] = {
        "lora_te1_text_model_encoder_layers_11_self_attn_out_proj",
        "lora_te_text_model_encoder_layers_11_self_attn_out_proj",
        "text_encoder.text_model.encoder.layers.11.self_attn.out_proj", NULL};
    static const char *const q[] = {
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k",
        "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", NULL};
    mood_keymap *m = NULL;
    const mood_target *t;
    MOOD_CHECK_OK(mood__keymap_for_family(&m, MOOD_FAMILY_SDXL));
    if (!m)
        return;
    t = check_aliases(
        m, "conditioner.embedders.1.model.transformer.resblocks.5.attn.in_proj_weight", k);
    MOOD_CHECK(t && t->slice == 1 && t->part == MOOD_PART_TE2 && t->shape[0] == 1280 &&
               t->shape[1] == 1280);
    MOOD_CHECK(t && t->bias_key && strstr(t->bias_key, "in_proj_bias"));
    t = check_aliases(m,
                      "conditioner.embedders.0.transformer.text_model.encoder.layers.11.self_attn."
                      "out_proj.weight",
                      te1);
    MOOD_CHECK(t && t->part == MOOD_PART_TE1);
    t = check_aliases(
        m, "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight", q);
    MOOD_CHECK(t && t->shape[0] == 640 && t->shape[1] == 2048 && strcmp(t->kohya_name, q[0]) == 0);
    t = mood__keymap_find(m, "lora_te2_text_projection");
    MOOD_CHECK(t && t->transposed && t->part == MOOD_PART_TE2);
    t = mood__keymap_find(m, "lora_unet_up_blocks_0_upsamplers_0_conv");
    MOOD_CHECK(t && strcmp(t->key, "model.diffusion_model.output_blocks.2.2.conv.weight") == 0);
    t = mood__keymap_find(m, "lora_unet_down_blocks_0_downsamplers_0_conv");
    MOOD_CHECK(t && strcmp(t->key, "model.diffusion_model.input_blocks.3.0.op.weight") == 0);
    MOOD_CHECK(mood__keymap_find(m, "lora_unet_label_emb_0_0") != NULL);
    MOOD_CHECK(mood__keymap_find(m, "lora_unet_down_blocks_0_attentions_0_proj_in") == NULL);
    mood__keymap_free(m);
}

/* The tiny bases: names and shapes from the file, OpenCLIP slices for SD2. */
static void test_from_checkpoint(void)
{
    mood_checkpoint *c = NULL;
    const mood_target *t;
    MOOD_CHECK_OK(mood_checkpoint_open(&c, fixture("bases/sd1_base.safetensors")));
    if (c) {
        MOOD_CHECK(mood_checkpoint_family(c) == MOOD_FAMILY_SD1);
        t = mood__keymap_find(c->keymap, "lora_unet_up_blocks_0_upsamplers_0_conv");
        MOOD_CHECK(t && strcmp(t->key, "model.diffusion_model.output_blocks.2.1.conv.weight") == 0);
        MOOD_CHECK(t && t->bias_key && t->ndim == 4 && t->shape[0] == 4 && t->shape[2] == 3);
        t = mood__keymap_find(c->keymap, "lora_te_text_model_encoder_layers_1_self_attn_q_proj");
        MOOD_CHECK(t && t->shape[0] == 16 && t->shape[1] == 16 && t->slice == -1);
        MOOD_CHECK(mood__keymap_find(c->keymap, "lora_unet_down_blocks_0_attentions_0_norm") !=
                   NULL);
        mood_checkpoint_close(c);
    }
    MOOD_CHECK_OK(mood_checkpoint_open(&c, fixture("bases/sd2_base.safetensors")));
    if (c) {
        MOOD_CHECK(mood_checkpoint_family(c) == MOOD_FAMILY_SD2);
        t = mood__keymap_find(c->keymap, "lora_te_text_model_encoder_layers_1_self_attn_v_proj");
        MOOD_CHECK(t && t->slice == 2 && strstr(t->key, "resblocks.1.attn.in_proj_weight"));
        MOOD_CHECK(t && strcmp(t->kohya_name,
                               "lora_te_text_model_encoder_layers_1_self_attn_v_proj") == 0);
        mood_checkpoint_close(c);
    }
    MOOD_CHECK_OK(mood_checkpoint_open(&c, fixture("bases/sdxl_base.safetensors")));
    if (c) {
        MOOD_CHECK(mood_checkpoint_family(c) == MOOD_FAMILY_SDXL);
        MOOD_CHECK(mood__keymap_find(c->keymap, "lora_te2_text_projection") != NULL);
        mood_checkpoint_close(c);
    }
    MOOD_CHECK(mood_checkpoint_open(&c, fixture("kohya/sd1_lora.safetensors")) == MOOD_EFORMAT);
    MOOD_CHECK(strstr(mood_error_last(), "adapter") != NULL);
}

/* An SD1 text encoder saved without "text_model." (older checkpoints) resolves the same names. */
static void test_te_without_text_model(void)
{
    const char *path = scratch_path("old_te.safetensors");
    static const float w[16 * 16];
    const int64_t shape[2] = {16, 16};
    mood_st_writer *wr = NULL;
    mood_checkpoint *c = NULL;
    MOOD_CHECK_OK(mood_st_writer_new(&wr));
    MOOD_CHECK_OK(mood_st_writer_add(
        wr, "cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj.weight", MOOD_DTYPE_F32,
        2, shape, w));
    MOOD_CHECK_OK(mood_st_writer_add(wr, "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                                     MOOD_DTYPE_F32, 2, shape, w));
    MOOD_CHECK_OK(mood_st_writer_write(wr, path, NULL, NULL));
    mood_st_writer_free(wr);
    MOOD_CHECK_OK(mood_checkpoint_open(&c, path));
    if (!c)
        return;
    MOOD_CHECK(mood_checkpoint_family(c) == MOOD_FAMILY_SD1);
    const mood_target *t =
        mood__keymap_find(c->keymap, "lora_te_text_model_encoder_layers_0_self_attn_q_proj");
    MOOD_CHECK(
        t && strcmp(t->key,
                    "cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj.weight") == 0);
    MOOD_CHECK(mood__keymap_find(c->keymap,
                                 "text_encoder.text_model.encoder.layers.0.self_attn.q_proj") == t);
    mood_checkpoint_close(c);
}

static void test_names(void)
{
    mood_family f = MOOD_FAMILY_UNKNOWN;
    MOOD_CHECK(strcmp(mood_family_name(MOOD_FAMILY_SDXL), "sdxl") == 0);
    MOOD_CHECK(mood_family_from_name(&f, "sd2") == 0 && f == MOOD_FAMILY_SD2);
    MOOD_CHECK(mood_family_from_name(&f, "flux") == MOOD_EINVAL);
    MOOD_CHECK(strcmp(mood_part_name(MOOD_PART_TE2), "te2") == 0);
    MOOD_CHECK(strcmp(mood_algo_name(MOOD_ALGO_LOKR), "lokr") == 0);
}

MOOD_TEST_MAIN(MOOD_T(test_ldm_to_diffusers), MOOD_T(test_family_counts), MOOD_T(test_sd1_aliases),
               MOOD_T(test_sdxl_aliases), MOOD_T(test_from_checkpoint),
               MOOD_T(test_te_without_text_model), MOOD_T(test_names))
