/*
 * lora_internal.h: the normalized adapter model shared by the files of lora/ (not installed).
 *
 *   keymap.c   alias table: base tensor key <-> every name a file may use for it (§2.5–2.7)
 *   family.c   base family detection for checkpoints and adapters (§6.4)
 *   adapter.c  parsing a file into modules: suffix grouping, algorithm detection, alpha/rank
 *   delta.c    ΔW per algorithm and in-place application (§3), float32
 *   bake.c     merging adapters into a checkpoint, streamed
 *   stack.c    exact concatenation of LoRAs
 *   svd.c      SVD merge, resize, extract (§5)
 *   lora_write.c  writing kohya-format LoRA files with ss_* and modelspec metadata (§6)
 */
#ifndef MOOD_LORA_INTERNAL_H
#define MOOD_LORA_INTERNAL_H

#include "common/common.h"
#include "mood/lora.h"

/* ----- alias table ------------------------------------------------------------------------- */

/* What a module name resolves to. */
typedef struct mood_target {
    char *key;        /* base weight key, e.g. "model.diffusion_model.out.2.weight" */
    char *bias_key;   /* matching bias key, or NULL */
    char *kohya_name; /* canonical kohya module name, e.g. "lora_unet_conv_out" */
    char *model_name; /* the module in the engine's (diffusers / transformers) naming, e.g.
                         "conv_out", "text_model.encoder.layers.0.self_attn.q_proj"; NULL
                         when it has none */
    mood_part part;
    int slice;        /* -1, or 0/1/2: q/k/v rows of a fused OpenCLIP in_proj weight */
    int transposed;   /* base stores Wᵀ (OpenCLIP text_projection) */
    int ndim;         /* of the (sliced) target: 1 (norm), 2 (Linear) or 4 (Conv); 0 unknown */
    int64_t shape[4]; /* 0 where unknown (synthetic tables know kinds, not sizes) */
} mood_target;

typedef struct mood_keymap mood_keymap;

/* Alias table of a real checkpoint (shapes known). */
int mood__keymap_from_checkpoint(mood_keymap **out, const mood_st_file *f, mood_family family);
/* ----- dtype.c ----------------------------------------------------------------------------------
 */

/* Whether all n elements of dtype dt at data are finite, read from the raw bits (no conversion,
 * vectorized: a factor scan must not dominate `mood inspect`): 1, 0, or -1 for a dtype that
 * cannot hold factors. */
int mood__dtype_all_finite(const void *data, int64_t n, mood_dtype dt);
/* The largest finite value of a floating dtype mood writes (a larger one becomes inf when cast). */
double mood__dtype_max(mood_dtype dt);

/* ----- peft_patterns.c ------------------------------------------------------------------------ */

/* A file's PEFT alpha_pattern keys, per component (unet, text_encoder, text_encoder_2), compiled
 * when first needed; zeroed before use, freed with mood__peft_keys_free. */
typedef struct mood__peft_key mood__peft_key;
typedef struct mood__peft_keys {
    mood__peft_key *k[3];
    size_t n[3];
    int built[3];
} mood__peft_keys;
void mood__peft_keys_free(mood__peft_keys *pk);
/* The first key of `patterns` (component comp's alpha_pattern object) that matches module path
 * `path` as PEFT's get_pattern_key matches it (re.match(rf"(.*\.)?({key})$", path)); a key POSIX
 * cannot compile is compared as text (the path equals it or ends with "." + it). NULL: none. */
const struct cJSON *mood__peft_pattern(mood__peft_keys *pk, int comp, const struct cJSON *patterns,
                                       const char *path);

/* Alias table of a family's architecture, from generated names (shapes unknown except ndim and
 * kernel size): used when no base is given (inspect, stack, merge, resize). */
int mood__keymap_for_family(mood_keymap **out, mood_family family);
/* Alias table of a base known by its engine names (a diffusers folder: UNet names in diffusers
 * naming, text-encoder names in transformers naming with "text_model."), shapes known. */
int mood__keymap_from_names(mood_keymap **out, const mood_base_weight *w, size_t n,
                            mood_family family);
/* Adds to a family's table a UNet module its release architecture lacks, from its kohya name
 * ("lora_unet_up_blocks_0_attentions_0_proj_in": a LoRA trained on a UNet of another layout,
 * such as mood-tiny's): the diffusers path it spells, with its aliases, shape unknown. Names
 * that spell no Linear or Conv layer of a UNet2DConditionModel are left out (returns 0). */
int mood__keymap_add_unet_module(mood_keymap *m, const char *kohya_module);
void mood__keymap_free(mood_keymap *m);
/* Looks a module name up (e.g. "lora_unet_down_blocks_0_attentions_0_proj_in",
 * "unet.down_blocks.0.attentions.0.proj_in", "text_encoder.text_model.encoder.layers.0.mlp.fc1").
 * NULL when unknown. */
const mood_target *mood__keymap_find(const mood_keymap *m, const char *module_name);
size_t mood__keymap_target_count(const mood_keymap *m);
const mood_target *mood__keymap_target(const mood_keymap *m, size_t i);
mood_family mood__keymap_family(const mood_keymap *m);
/* LDM/SGM UNet path -> diffusers path (§2.5), both without ".weight", e.g.
 * "output_blocks.2.1.conv" -> "up_blocks.0.upsamplers.0.conv". 0, or -1 when it has none. */
int mood__keymap_ldm_to_diffusers(char *out, size_t size, const char *ldm);
/* Note on fused OpenCLIP in_proj targets (slice >= 0): key is the fused (3d, d) weight, shape is
 * the slice's (d, d), and bias_key is the fused (3d,) in_proj_bias, of which the same slice
 * applies. */

/* ----- checkpoints ------------------------------------------------------------------------- */

struct mood_checkpoint {
    mood_st_file *file; /* borrowed (not closed) when made by mood_checkpoint_from_names */
    int borrowed_file;
    mood_keymap *keymap;
    mood_family family;
    size_t counts[MOOD_PART_COUNT + 1]; /* tensors per part, then "other" */
};

/* ----- family detection -------------------------------------------------------------------- */

/* From metadata, then keys, then shapes. `source_out` gets a static string saying which. */
mood_family mood__family_of_adapter(const mood_st_file *f, const char **source_out);

/* adapter.c: the parameter suffix a file key ends with (longest known suffix, §2.2): returns
 * its length (0 when none) and the role in *role_out (-1 for keys consumed but never applied,
 * such as LyCORIS sparse-bias tensors). `skip` > 0 asks for the next-shorter match instead. */
size_t mood__adapter_suffix(const char *key, size_t skip, int *role_out);

/* ----- modules ----------------------------------------------------------------------------- */

/* Factor roles: which tensor of a module plays which part in the algorithm's formula. */
typedef enum mood_role {
    ROLE_UP = 0, /* lora_up / lora_B / .up */
    ROLE_DOWN,   /* lora_down / lora_A / .down */
    ROLE_MID,    /* lora_mid (Tucker) */
    ROLE_HADA_W1A,
    ROLE_HADA_W1B,
    ROLE_HADA_W2A,
    ROLE_HADA_W2B,
    ROLE_HADA_T1,
    ROLE_HADA_T2,
    ROLE_LOKR_W1,
    ROLE_LOKR_W1A,
    ROLE_LOKR_W1B,
    ROLE_LOKR_W2,
    ROLE_LOKR_W2A,
    ROLE_LOKR_W2B,
    ROLE_LOKR_T2,
    ROLE_IA3_W,
    ROLE_IA3_ON_INPUT,
    ROLE_OFT_BLOCKS,
    ROLE_OFT_RESCALE,
    ROLE_GLORA_A1,
    ROLE_GLORA_A2,
    ROLE_GLORA_B1,
    ROLE_GLORA_B2,
    ROLE_DIFF,
    ROLE_DIFF_B,
    ROLE_W_NORM,
    ROLE_B_NORM,
    ROLE_ALPHA,
    ROLE_DORA_SCALE, /* dora_scale / lora_magnitude_vector */
    ROLE_SCALE,      /* A1111 <module>.scale: overrides alpha/rank */
    ROLE_COUNT
} mood_role;

typedef struct mood_module {
    char *name;                /* module name as in the file */
    const mood_target *target; /* borrowed from the adapter's keymap */
    mood_algo algo;
    const mood_st_tensor *t[ROLE_COUNT]; /* NULL where absent; point into the mapped file */
    int rank;
    double alpha; /* from the file, or the default */
    int has_alpha;
    double scale; /* what ΔW is multiplied by: alpha/rank, ROLE_SCALE, or 1 */
    int rslora;   /* PEFT's use_rslora: scale is alpha/sqrt(rank) */
    int dora;     /* 0 none, 1 per-input (column) norm, 2 per-output (row) norm */
    int tucker;
    int old_glora;  /* GLoRA in the old LyCORIS layout (§3.4) */
    int peft_dora;  /* magnitude from PEFT: norm of W + m·s·ΔW (§3.5 PEFT row) */
    int dyn;        /* plain LoRA: ranks used (mood_adapter_limit_rank); 0 = all */
    int oft_direct; /* OFT/BOFT under the old LyCORIS key oft_diag: the blocks are R itself, no
                       Cayley transform, strength linear in W (A1111 network_oft.py, §3.7) */
    /* Target shape, from the base (or inferred from the factors when no base): out, in, kh, kw;
     * ndim 2 for Linear (kh = kw = 1), 4 for Conv, 1 for norms. */
    int ndim;
    int64_t out, in, kh, kw;
} mood_module;

struct mood_adapter {
    mood_st_file *file;
    mood_keymap *own_keymap; /* when no base was given */
    const mood_keymap *keymap;
    mood_family family;
    const char *family_source;
    mood_module *modules;
    size_t n_modules;
    char **unmatched;
    size_t n_unmatched;
};

/* delta.c: ΔW of one module (scaled by m->scale, not by a user multiplier) into out, with the
 * module's target shape. `w` is the current base weight (float32) for algorithms that need it. */
int mood__module_delta(float *out, const mood_module *m, const float *w);
/* The ranks of its k a plain LoRA module uses: its DyLoRA cut (m->dyn) where set and smaller. */
int64_t mood__module_ranks_used(const mood_module *m, int64_t k);
/* In-place application with multiplier mult (ComfyUI/A1111 semantics). */
int mood__module_apply(const mood_module *m, float *w, float *bias, float mult);
/* True when ΔW does not depend on W (LoRA, LoHa, LoKr, full, norm without DoRA). */
int mood__module_is_additive(const mood_module *m);
/* For two inputs' modules of one target: 0 when their ΔW have one shape (out rows, in·kh·kw
 * columns: a 2-D LoRA and a 1x1 conv's agree), else an error naming m (of file `path`), both
 * shapes and `other_path`. Equal element counts are not enough: 8x16 and 16x8 would be summed
 * as one another. */
int mood__module_same_shape(const mood_module *m, const char *path, const mood_module *other,
                            const char *other_path);

/* Loads a factor tensor as float32 (caller frees with mood_free); checks it is finite. */
int mood__tensor_f32(float **out, const mood_st_tensor *t, const char *file);

/* lora_write.c: writes LoRA modules given as float32 up/down(/alpha) in kohya layout. */
typedef struct mood_lora_out_module {
    char *name; /* kohya module name */
    int rank;
    double alpha;
    float *up;   /* (out, rank) ; written as (out, rank, 1, 1) for convs */
    float *down; /* (rank, in*kh*kw) ; written as (rank, in, kh, kw) for convs */
    int ndim;    /* 2 or 4 */
    int64_t out, in, kh, kw;
} mood_lora_out_module;

/* Writes kohya-format modules (`<name>.lora_up.weight`, `.lora_down.weight`, `.alpha`) in
 * `dtype`, with the minimum ss_* metadata (ss_network_module, ss_network_dim, ss_network_alpha,
 * ss_network_args, ss_base_model_version, ss_v2), modelspec.* for the family, sshs_model_hash
 * (AutoV3 of the written data) and sshs_legacy_hash, plus the extra metadata pairs `meta`
 * (key, value, ..., NULL; may be NULL) which override the defaults. Atomic. */
int mood__lora_write(const char *path, const mood_lora_out_module *mods, size_t n,
                     mood_family family, mood_dtype dtype, const char *const *meta,
                     mood_progress_fn progress, void *payload);
void mood__lora_out_module_dispose(mood_lora_out_module *m);
/* Formats v as Python's repr(float) does ("2.0", "0.0001", "1e-05"): kohya writes metadata
 * values with str(). */
void mood__lora_py_float(char *buf, size_t size, double v);

/* The output of a write (bake, stack, merge, resize, extract) checked before any work:
 * writable (mood_output_path_check) and not one of the inputs: the n adapters' files and `also`
 * (a checkpoint; up to two, NULL when none), so that no operation writes over what it reads. */
int mood__output_check(const char *output, const mood_weighted_adapter *adapters, size_t n,
                       const char *also, const char *also2);

#endif /* MOOD_LORA_INTERNAL_H */
