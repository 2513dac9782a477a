/*
 * family.c: which base family (SD1, SD2, SDXL) a checkpoint or an adapter is made for, and the
 * names of families, parts and algorithms (lora-formats.md §6.4).
 *
 * Adapters are decided in the order the spec recommends: modelspec.architecture, then
 * ss_base_model_version / ss_v2, then key names (SDXL-only prefixes and blocks, text-encoder
 * layer indices only SD2 has), then shapes (the width attn2.to_k reads: 768 / 1024 / 2048 is the
 * cross-attention context of SD1 / SD2 / SDXL; a 4-D proj_in factor is SD1's 1x1 conv). When the
 * keys and shapes prove another family than the metadata names, they win and the source says
 * what the metadata claimed ("shapes (metadata says sdxl)"): the file is mislabeled.
 * Checkpoints are decided by their text-encoder layout, which differs in every family.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/args.h"
#include "lora/lora_internal.h"

const char *mood_family_name(mood_family f)
{
    switch (f) {
    case MOOD_FAMILY_SD1:
        return "sd1";
    case MOOD_FAMILY_SD2:
        return "sd2";
    case MOOD_FAMILY_SDXL:
        return "sdxl";
    default:
        return "unknown";
    }
}

int mood_family_from_name(mood_family *out, const char *name)
{
    static const struct {
        const char *name;
        mood_family f;
    } names[] = {{"sd1", MOOD_FAMILY_SD1}, {"sd15", MOOD_FAMILY_SD1}, {"sd1.5", MOOD_FAMILY_SD1},
                 {"sd2", MOOD_FAMILY_SD2}, {"sd21", MOOD_FAMILY_SD2}, {"sdxl", MOOD_FAMILY_SDXL}};
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(name);
    /* people write "SDXL" and "SD1.5" as often as the lower-case names mood prints */
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].f;
            return 0;
        }
    }
    return mood_error_set(MOOD_EINVAL, "unknown base family '%s' (expected sd1, sd2 or sdxl)",
                          name);
}

const char *mood_part_name(mood_part p)
{
    static const char *const names[] = {"unet", "te1", "te2"};
    return (unsigned)p < MOOD_PART_COUNT ? names[p] : "other";
}

const char *mood_algo_name(mood_algo a)
{
    static const char *const names[] = {"lora", "loha",  "lokr", "ia3", "oft",
                                        "boft", "glora", "full", "norm"};
    return (unsigned)a < MOOD_ALGO_COUNT ? names[a] : "unknown";
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int has_prefix_key(const mood_st_file *f, const char *prefix)
{
    for (size_t i = 0; i < mood_st_count(f); i++) {
        if (starts(mood_st_at(f, i)->name, prefix))
            return 1;
    }
    return 0;
}

mood_family mood_family_of_checkpoint(const mood_st_file *f)
{
    const mood_st_tensor *p;
    if (has_prefix_key(f, "conditioner.embedders.") ||
        has_prefix_key(f, "model.diffusion_model.label_emb."))
        return MOOD_FAMILY_SDXL;
    if (has_prefix_key(f, "cond_stage_model.model."))
        return MOOD_FAMILY_SD2;
    if (has_prefix_key(f, "cond_stage_model.transformer."))
        return MOOD_FAMILY_SD1;
    /* UNet only: SD1's proj_in is a 1x1 conv, SD2's a Linear; SDXL has no input_blocks.9+. */
    p = mood_st_find(f, "model.diffusion_model.input_blocks.1.1.proj_in.weight");
    if (p)
        return p->ndim == 4 ? MOOD_FAMILY_SD1 : MOOD_FAMILY_SD2;
    return MOOD_FAMILY_UNKNOWN;
}

mood_file_kind mood_file_kind_of(const mood_st_file *f)
{
    static const char *const ckpt[] = {"model.diffusion_model.", "cond_stage_model.",
                                       "conditioner.embedders.", "first_stage_model."};
    for (size_t k = 0; k < sizeof ckpt / sizeof ckpt[0]; k++) {
        if (has_prefix_key(f, ckpt[k]))
            return MOOD_KIND_CHECKPOINT;
    }
    for (size_t i = 0; i < mood_st_count(f); i++) {
        int role;
        /* a bare ".weight" (IA3) alone does not make a file an adapter */
        if (mood__adapter_suffix(mood_st_at(f, i)->name, 0, &role) && role != ROLE_IA3_W)
            return MOOD_KIND_ADAPTER;
    }
    return MOOD_KIND_UNKNOWN;
}

static mood_family family_of_metadata(const mood_st_file *f, const char **source)
{
    const char *arch = mood_st_meta_get(f, "modelspec.architecture");
    const char *ver = mood_st_meta_get(f, "ss_base_model_version");
    const char *v2 = mood_st_meta_get(f, "ss_v2");
    *source = "modelspec.architecture";
    if (arch && starts(arch, "stable-diffusion-xl"))
        return MOOD_FAMILY_SDXL;
    if (arch && starts(arch, "stable-diffusion-v2"))
        return MOOD_FAMILY_SD2;
    if (arch && starts(arch, "stable-diffusion-v1"))
        return MOOD_FAMILY_SD1;
    *source = "ss_base_model_version";
    if (ver && starts(ver, "sdxl"))
        return MOOD_FAMILY_SDXL;
    if (ver && starts(ver, "sd_v2"))
        return MOOD_FAMILY_SD2;
    if (ver && starts(ver, "sd_v1"))
        return MOOD_FAMILY_SD1;
    *source = "ss_v2";
    if (v2 && strcmp(v2, "True") == 0)
        return MOOD_FAMILY_SD2;
    return MOOD_FAMILY_UNKNOWN;
}

/* Evidence collected from the key names and shapes of an adapter. */
typedef struct evidence {
    int sdxl_keys;     /* te1/te2 prefixes, SDXL-only blocks */
    int not_sdxl_keys; /* blocks SDXL lacks */
    int te_layer_max;  /* highest single-TE layer index, -1 if none */
    int64_t ctx_width; /* input width of attn2.to_k's down factor, 0 if none */
    int64_t te_width;  /* input width of a single-TE q_proj down factor */
    int proj_in_4d;
    /* LoKr's input width is the product of its two factors' (w1 or w1_b, w2 or w2_b), seen
     * one tensor at a time: [0] attn2.to_k's, [1] the TE q_proj's */
    int64_t kron_in1[2], kron_in2[2];
} evidence;

static const char *find_any(const char *s, const char *const *needles, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = strstr(s, needles[i]);
        if (p)
            return p + strlen(needles[i]);
    }
    return NULL;
}

static void look_at_name(evidence *e, const char *name)
{
    static const char *const tb[] = {"transformer_blocks_", "transformer_blocks."};
    static const char *const te[] = {"lora_te_text_model_encoder_layers_",
                                     "text_encoder.text_model.encoder.layers."};
    static const char *const notxl[] = {"down_blocks_3",
                                        "down_blocks.3",
                                        "up_blocks_3",
                                        "up_blocks.3",
                                        "input_blocks_1_1",
                                        "input_blocks.1.1",
                                        "input_blocks_10",
                                        "input_blocks.10",
                                        "input_blocks_11",
                                        "input_blocks.11",
                                        "output_blocks_11",
                                        "output_blocks.11",
                                        "down_blocks_0_attentions",
                                        "down_blocks.0.attentions"};
    const char *p;
    if (starts(name, "lora_te1_") || starts(name, "lora_te2_") || starts(name, "text_encoder_2.") ||
        strstr(name, "label_emb") || strstr(name, "add_embedding"))
        e->sdxl_keys = 1;
    if ((p = find_any(name, tb, 2)) && strtol(p, NULL, 10) > 0)
        e->sdxl_keys = 1;
    if (find_any(name, notxl, sizeof notxl / sizeof notxl[0]))
        e->not_sdxl_keys = 1;
    if ((p = find_any(name, te, 2))) {
        int layer = (int)strtol(p, NULL, 10);
        if (layer > e->te_layer_max)
            e->te_layer_max = layer;
    }
}

/* Input width of the layer a factor belongs to, when the factor alone gives it: LoRA's down,
 * LoHa's w1_b, a full diff (Linear: [out, in]); 0 otherwise. */
static int64_t down_width(const mood_st_tensor *t, int role)
{
    if ((role == ROLE_DOWN || role == ROLE_HADA_W1B || role == ROLE_DIFF) && t->ndim >= 2)
        return t->shape[1];
    return 0;
}

static void look_at_shape(evidence *e, const mood_st_tensor *t, size_t module_len, int role)
{
    char name[512];
    int64_t w = down_width(t, role);
    int k, te, kron1 = role == ROLE_LOKR_W1 || role == ROLE_LOKR_W1B,
               kron2 = role == ROLE_LOKR_W2 || role == ROLE_LOKR_W2B;
    if ((!w && !kron1 && !kron2) || module_len >= sizeof name)
        return;
    memcpy(name, t->name, module_len);
    name[module_len] = '\0';
    if (strstr(name, "proj_in") && role == ROLE_DOWN && t->ndim == 4)
        e->proj_in_4d = 1;
    if (t->ndim != 2) /* the widths below are Linear layers' */
        return;
    k = strstr(name, "attn2_to_k") || strstr(name, "attn2.to_k");
    te = (starts(name, "lora_te_") || starts(name, "text_encoder.")) && strstr(name, "q_proj");
    if (kron1 || kron2) { /* Linear LoKr factors only (a conv's w2 is 4-D) */
        int64_t *slot = kron1 ? e->kron_in1 : e->kron_in2;
        if (k || te)
            slot[te] = t->shape[1];
        return;
    }
    if (k)
        e->ctx_width = w;
    if (te)
        e->te_width = w;
}

/* The LoKr widths, once both factors of a module were seen. */
static void kron_widths(evidence *e)
{
    if (!e->ctx_width && e->kron_in1[0] && e->kron_in2[0])
        e->ctx_width = e->kron_in1[0] * e->kron_in2[0];
    if (!e->te_width && e->kron_in1[1] && e->kron_in2[1])
        e->te_width = e->kron_in1[1] * e->kron_in2[1];
}

/* What shapes alone say (the widths the cross-attention and the single text encoder read). */
static mood_family family_of_shapes(const evidence *e)
{
    if (e->ctx_width == 2048)
        return MOOD_FAMILY_SDXL;
    if (e->sdxl_keys)
        return MOOD_FAMILY_UNKNOWN;
    if (e->ctx_width == 768 || e->te_width == 768 || e->proj_in_4d)
        return MOOD_FAMILY_SD1;
    if (e->ctx_width == 1024 || e->te_width == 1024)
        return MOOD_FAMILY_SD2;
    return MOOD_FAMILY_UNKNOWN;
}

/* What keys and shapes say without metadata, and from which ("keys" or "shapes"). */
static mood_family family_of_evidence(const evidence *e, const char **source)
{
    mood_family fam;
    *source = "keys";
    if (e->sdxl_keys && !e->not_sdxl_keys)
        return MOOD_FAMILY_SDXL;
    if (e->te_layer_max >= 12 && !e->sdxl_keys)
        return MOOD_FAMILY_SD2;
    *source = "shapes";
    if ((fam = family_of_shapes(e)) != MOOD_FAMILY_UNKNOWN)
        return fam;
    *source = "unknown";
    return MOOD_FAMILY_UNKNOWN;
}

/* Adds a family one piece of evidence proves to the set seen (a bit per family). */
static void saw(unsigned *set, mood_family f)
{
    *set |= 1u << f;
}

static mood_family width_family(int64_t w)
{
    return w == 768 ? MOOD_FAMILY_SD1 : w == 1024 ? MOOD_FAMILY_SD2 : MOOD_FAMILY_UNKNOWN;
}

/*
 * The family keys and shapes prove, strongly enough to overrule metadata, or UNKNOWN. Proof is
 * SDXL-only names (with no name SDXL lacks), a text-encoder layer index only SD2 has, or the
 * width attn2.to_k or a single text encoder's q_proj reads; every such piece must agree. A 4-D
 * proj_in is left out: it only says the LoRA was made on a conv proj_in, which §3 applies to
 * either layout.
 */
static mood_family proven_family(const evidence *e)
{
    unsigned set = 0;
    mood_family only = MOOD_FAMILY_UNKNOWN;
    if (e->sdxl_keys && !e->not_sdxl_keys)
        saw(&set, MOOD_FAMILY_SDXL);
    if (e->te_layer_max >= 12 && !e->sdxl_keys)
        saw(&set, MOOD_FAMILY_SD2);
    if (e->ctx_width == 2048)
        saw(&set, MOOD_FAMILY_SDXL);
    else if (width_family(e->ctx_width) != MOOD_FAMILY_UNKNOWN)
        saw(&set, width_family(e->ctx_width));
    /* with two text encoders, a te q_proj width is CLIP-L's 768 in every family */
    if (!e->sdxl_keys && width_family(e->te_width) != MOOD_FAMILY_UNKNOWN)
        saw(&set, width_family(e->te_width));
    for (int f = MOOD_FAMILY_SD1; f <= MOOD_FAMILY_SDXL; f++) {
        if (set == 1u << f)
            only = (mood_family)f;
    }
    return only;
}

/* "keys (metadata says sdxl)": the source of a family the keys proved against the metadata. */
static const char *overruled_source(const char *by, mood_family meta)
{
    static const char *const keys[] = {"keys (metadata says sd1)", "keys (metadata says sd2)",
                                       "keys (metadata says sdxl)"};
    static const char *const shapes[] = {"shapes (metadata says sd1)", "shapes (metadata says sd2)",
                                         "shapes (metadata says sdxl)"};
    size_t i = (size_t)(meta - MOOD_FAMILY_SD1);
    return strcmp(by, "keys") == 0 ? keys[i] : shapes[i];
}

/*
 * Metadata decides unless keys and shapes prove another family: then they win, and the source
 * names what the metadata said, so a mislabeled file shows as one (§6.4 puts metadata first, but
 * a file that would fail on every base of its labeled family is better taken for what it is).
 */
mood_family mood__family_of_adapter(const mood_st_file *f, const char **source_out)
{
    evidence e = {0, 0, -1, 0, 0, 0, {0, 0}, {0, 0}};
    const char *meta_source, *by;
    mood_family meta = family_of_metadata(f, &meta_source), fam, proven;
    for (size_t i = 0; i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        int role;
        size_t n = mood__adapter_suffix(t->name, 0, &role);
        look_at_name(&e, t->name);
        if (n)
            look_at_shape(&e, t, strlen(t->name) - n, role);
    }
    kron_widths(&e);
    fam = family_of_evidence(&e, &by);
    if (meta == MOOD_FAMILY_UNKNOWN) {
        *source_out = by;
        return fam;
    }
    proven = proven_family(&e);
    if (proven == MOOD_FAMILY_UNKNOWN || proven == meta) {
        *source_out = meta_source;
        return meta;
    }
    /* name what proved it: the keys when names alone do, else the shapes */
    *source_out = overruled_source(fam == proven ? by : "shapes", meta);
    return proven;
}
