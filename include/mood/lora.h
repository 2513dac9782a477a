/*
 * lora.h: LoRA adapters of every flavour Civitai carries, the base models they apply to, and the
 * operations on them (specification: ../shared/docs/lora-formats.md).
 *
 * One normalized model: every file (kohya LoRA/LoCon, LyCORIS LoHa/LoKr/IA3/OFT/BOFT/GLoRA/full/
 * norm, DoRA, diffusers and PEFT) is parsed into a list of modules {target tensor, algorithm,
 * factors, alpha, rank}. File keys are resolved through an alias table built from the base
 * model's own tensor names (§2.7): every key is consumed or reported, never silently dropped.
 * ΔW is always computed in float32 and cast once to the destination dtype.
 */
#ifndef MOOD_LORA_H
#define MOOD_LORA_H

#include "mood/core.h"
#include "mood/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----- base families ------------------------------------------------------------------------ */

typedef enum mood_family {
    MOOD_FAMILY_UNKNOWN = 0,
    MOOD_FAMILY_SD1,
    MOOD_FAMILY_SD2,
    MOOD_FAMILY_SDXL
} mood_family;

/* "sd1", "sd2", "sdxl" or "unknown". */
const char *mood_family_name(mood_family f);
/* The family a name gives, in any case: "sd1" (or "sd15", "sd1.5"), "sd2" (or "sd21"), "sdxl".
 * MOOD_EINVAL naming the name and the known ones otherwise (*out unchanged). */
int mood_family_from_name(mood_family *out, const char *name);

/* Which model component a module patches; multipliers are given per component. */
typedef enum mood_part {
    MOOD_PART_UNET = 0,
    MOOD_PART_TE1, /* the only text encoder of SD1/SD2, CLIP ViT-L of SDXL */
    MOOD_PART_TE2, /* OpenCLIP ViT-bigG of SDXL */
    MOOD_PART_COUNT
} mood_part;
const char *mood_part_name(mood_part p); /* "unet", "te1", "te2" */

typedef enum mood_algo {
    MOOD_ALGO_LORA = 0, /* LoRA / LoCon, incl. Tucker (lora_mid) */
    MOOD_ALGO_LOHA,
    MOOD_ALGO_LOKR,
    MOOD_ALGO_IA3,
    MOOD_ALGO_OFT, /* kohya OFT and LyCORIS Diag-OFT */
    MOOD_ALGO_BOFT,
    MOOD_ALGO_GLORA,
    MOOD_ALGO_FULL, /* diff / diff_b */
    MOOD_ALGO_NORM, /* w_norm / b_norm */
    MOOD_ALGO_COUNT
} mood_algo;
const char *mood_algo_name(mood_algo a); /* "lora", "loha", "lokr", ... */

/* ----- base models (checkpoints) ------------------------------------------------------------ */

typedef struct mood_checkpoint mood_checkpoint;

/* Opens a single-file checkpoint (A1111/Civitai LDM/SGM layout) and builds its alias table. */
MOOD_WARN_UNUSED int mood_checkpoint_open(mood_checkpoint **out, const char *path);
void mood_checkpoint_close(mood_checkpoint *c);
mood_family mood_checkpoint_family(const mood_checkpoint *c);
const mood_st_file *mood_checkpoint_file(const mood_checkpoint *c);
/* One weight of a base known by name: a diffusers folder's UNet weight ("conv_in.weight") or
 * text-encoder weight ("text_model.encoder.layers.0.mlp.fc1.weight", part MOOD_PART_TE1). */
typedef struct mood_base_weight {
    const char *name;
    int ndim;
    int64_t shape[4];
    mood_part part;
} mood_base_weight;

/* A base for mood_adapter_open made from the names and shapes of its weights (a diffusers
 * folder, whose modules need not follow the family's release architecture: LoRAs trained on it
 * name its own modules). `file` (borrowed, must outlive the result) is only named in messages;
 * the weights are copied. */
MOOD_WARN_UNUSED int mood_checkpoint_from_names(mood_checkpoint **out, const mood_st_file *file,
                                                mood_family family, const mood_base_weight *w,
                                                size_t n);
/* Number of UNet / text-encoder / other tensors. */
void mood_checkpoint_counts(const mood_checkpoint *c, size_t counts_out[MOOD_PART_COUNT + 1]);

/* What kind of model file a safetensors file holds. */
typedef enum mood_file_kind {
    MOOD_KIND_UNKNOWN = 0,
    MOOD_KIND_CHECKPOINT,
    MOOD_KIND_ADAPTER
} mood_file_kind;
mood_file_kind mood_file_kind_of(const mood_st_file *f);

/* Detects the family of a checkpoint from its keys and shapes. */
mood_family mood_family_of_checkpoint(const mood_st_file *f);

/* ----- adapters ----------------------------------------------------------------------------- */

typedef struct mood_adapter mood_adapter;

/* Opens and parses an adapter file. With `base`, keys resolve against the base's tensors (shapes
 * checked, family checked: MOOD_EFAMILY when the adapter is for another family); without, they
 * resolve against the names of the adapter's own family (detected from metadata, keys and
 * shapes). Keys that resolve to nothing are kept in the unmatched list. */
MOOD_WARN_UNUSED int mood_adapter_open(mood_adapter **out, const char *path,
                                       const mood_checkpoint *base);
/* Flags of mood_adapter_open_file. SKIP_VALUE_CHECK: factors are not scanned for NaN/inf (for
 * describing a file; anything that applies the adapter must check). */
enum { MOOD_ADAPTER_SKIP_VALUE_CHECK = 1 };
/* mood_adapter_open on a file already opened; the adapter takes `f` over (also on failure). */
MOOD_WARN_UNUSED int mood_adapter_open_file(mood_adapter **out, mood_st_file *f,
                                            const mood_checkpoint *base, unsigned flags);
void mood_adapter_close(mood_adapter *a);
const mood_st_file *mood_adapter_file(const mood_adapter *a);
mood_family mood_adapter_family(const mood_adapter *a);
/* How the family was decided: "modelspec.architecture", "ss_base_model_version", "ss_v2", "keys",
 * "shapes", "base" or "unknown". */
const char *mood_adapter_family_source(const mood_adapter *a);
/* DyLoRA rank truncation (A1111's <lora:NAME:TE:UNET:DYN> and dyn=, lora-formats.md section 3.1):
 * from now on every plain LoRA/LoCon module (DoRA included, Tucker not: A1111 cuts only
 * network_lora's conventional pairs) uses only its first `rank` ranks (columns of up, rows of
 * down) at its full-rank scale alpha/r, as A1111 applies it (kohya trained each rank b at a
 * larger scale, so lower ranks come out weaker than in training; A1111's images are the
 * reference).
 * rank 0 restores every rank; a rank above a module's own changes nothing there. Returns the
 * number of modules the cut applies to (0: the file has none, so it changes nothing), or
 * MOOD_EINVAL (negative) for a negative rank. */
int mood_adapter_limit_rank(mood_adapter *a, int rank);

typedef struct mood_module_info {
    const char *name;       /* module name as written in the file */
    const char *target;     /* base tensor key it patches (single-file layout), e.g.
                               "model.diffusion_model.input_blocks.1.1.proj_in.weight" */
    const char *kohya_name; /* the kohya-style module name mood writes for it */
    const char *model_name; /* the module in diffusers / transformers naming ("conv_out",
                               "text_model.encoder.layers.0.mlp.fc1"), NULL when unknown */
    mood_part part;
    mood_algo algo;
    int rank;     /* 0 when the algorithm has none */
    double alpha; /* as stored (or the implied default) */
    double scale; /* alpha / rank, or the algorithm's fixed scale */
    int has_alpha;
    int dora;         /* 0 none, 1 per-input (column) norm, 2 per-output (row) norm */
    int tucker;       /* lora_mid / hada_t1 / lokr_t2 present */
    int slice;        /* -1, or q/k/v row slice 0..2 of a fused in_proj weight */
    int conv;         /* target is a convolution with kernel > 1 */
    mood_dtype dtype; /* dtype of the factors */
} mood_module_info;

size_t mood_adapter_module_count(const mood_adapter *a);
/* Describes module i (0 <= i < mood_adapter_module_count). An index out of range zeroes *out
 * (name NULL) and sets the error (MOOD_EINVAL, "module index out of range") for
 * mood_error_last(). */
void mood_adapter_module(const mood_adapter *a, size_t i, mood_module_info *out);

/* File keys not consumed by any module, in file order. */
size_t mood_adapter_unmatched_count(const mood_adapter *a);
const char *mood_adapter_unmatched(const mood_adapter *a, size_t i);

/* Computes module i's ΔW in float32 for the target, already multiplied by the module's scale
 * (alpha/rank), with the target's shape (out, in, kh, kw flattened): `out` holds numel floats.
 * Non-additive algorithms (DoRA, OFT, BOFT, IA3, GLoRA's W·A term) need the base weight `w`
 * (same shape, float32; may be NULL for additive ones). */
MOOD_WARN_UNUSED int mood_adapter_delta(float *out, const mood_adapter *a, size_t i,
                                        const float *w);
/* Module i as a low-rank pair for a runtime side path (mood_side_path): *down (rank x in·kh·kw)
 * and *up (out x rank) in float32, the module's scale (alpha/rank) folded into up, so
 * ΔW = up · down. MOOD_EUNSUPPORTED for modules that are not a plain LoRA/LoCon pair (Tucker,
 * DoRA, other algorithms: use mood_adapter_delta). Free both with free(). */
MOOD_WARN_UNUSED int mood_adapter_lowrank(const mood_adapter *a, size_t i, float **down, float **up,
                                          int *rank);
/* Number of float32 elements of module i's target (the slice, for fused in_proj). */
int64_t mood_adapter_target_numel(const mood_adapter *a, size_t i);
/* The target's shape (out, in, kh, kw; 1 where the target has fewer dimensions) and its number of
 * dimensions as the return value: 2 for Linear, 4 for Conv. MOOD_EINVAL (negative) for an index
 * out of range, with shape_out unwritten. */
int mood_adapter_target_shape(const mood_adapter *a, size_t i, int64_t shape_out[4]);

/* Applies module i to the float32 weight w (target shape) in place with multiplier m, using the
 * ComfyUI/A1111 semantics of lora-formats.md §3–4 (DoRA: W + m·(DoRA(W) − W)). `bias` (may be
 * NULL) receives diff_b / b_norm. */
MOOD_WARN_UNUSED int mood_adapter_apply(const mood_adapter *a, size_t i, float *w, float *bias,
                                        float m);

/* ----- operations --------------------------------------------------------------------------- */

/* An adapter with its multipliers for the UNet and the text encoders. Initialise it whole
 * (designated initialisers or memset): a field left out is then 0, its default. */
typedef struct mood_weighted_adapter {
    const char *path;
    double unet;      /* multiplier for UNet modules */
    double te;        /* multiplier for text-encoder modules */
    int dyn;          /* DyLoRA rank truncation (mood_adapter_limit_rank); 0: every rank */
    const char *name; /* what a stack's record (mood_stacked_from) calls the file; NULL: the
                         path's file name (a registry blob's is its hash, not the LoRA's name) */
} mood_weighted_adapter;

/* mood_adapter_open of w->path, cut to w->dyn ranks when that is set (mood_adapter_limit_rank;
 * a file the cut does not apply to is warned of through mood_log). */
MOOD_WARN_UNUSED int mood_adapter_open_weighted(mood_adapter **out, const mood_weighted_adapter *w,
                                                const mood_checkpoint *base);

typedef struct mood_bake_options {
    const char *base;
    const mood_weighted_adapter *adapters;
    size_t n_adapters;
    const char *output;
    mood_progress_fn progress;
    void *payload;
} mood_bake_options;

/* Writes a copy of the base with the adapters merged (same keys, dtypes and layout), applied in
 * order from pristine weights, ΔW in float32, cast once. Metadata records what was merged. */
MOOD_WARN_UNUSED int mood_bake(const mood_bake_options *opts);

typedef struct mood_lora_write_options {
    const char *output;
    mood_dtype dtype; /* dtype of the written factors (F32 default via init) */
    /* merge and extract: the SVD factors' values are clamped to [-q, q] for q their
     * clamp_quantile quantile, as kohya's scripts do (0.99 via init, their default); 1 leaves
     * them whole (kohya's 1 would still cut negative values beyond the largest one) */
    double clamp_quantile;
    mood_progress_fn progress;
    void *payload;
} mood_lora_write_options;
void mood_lora_write_options_init(mood_lora_write_options *o);

/* One kohya-format LoRA exactly equivalent to applying all inputs (ranks concatenated,
 * multipliers folded in). Non-LoRA modules are re-factorised exactly (to float32 rounding) at
 * the rank their factors bound (LoHa r1·r2, LoKr rank(w1)·rank(w2), Tucker r), full-diff modules
 * at full rank. */
MOOD_WARN_UNUSED int mood_lora_stack(const mood_weighted_adapter *inputs, size_t n,
                                     const mood_lora_write_options *o);

/* SVD merge to rank (and conv_rank for kxk convolutions; 0 = same as rank), kohya
 * svd_merge_lora.py semantics (§5.3). */
MOOD_WARN_UNUSED int mood_lora_merge(const mood_weighted_adapter *inputs, size_t n, int rank,
                                     int conv_rank, const mood_lora_write_options *o);

typedef enum mood_resize_method {
    MOOD_RESIZE_FIXED = 0,
    MOOD_RESIZE_SV_RATIO,
    MOOD_RESIZE_SV_FRO,
    MOOD_RESIZE_SV_CUMULATIVE
} mood_resize_method;

/* Changes the rank of one LoRA, kohya resize_lora.py semantics (§5.4). For dynamic methods,
 * `rank` is the upper bound and `param` the method's parameter. `conv_rank` (0 = same as rank)
 * applies to modules on convolutions, as kohya's --new_conv_rank. */
MOOD_WARN_UNUSED int mood_lora_resize(const char *input, mood_resize_method method, double param,
                                      int rank, int conv_rank, const mood_lora_write_options *o);

/* Extracts a LoRA from the difference of two checkpoints, kohya extract_lora_from_models.py
 * semantics (§5.5): rank for Linear/1x1, conv_rank for kxk convs (0 = skip them). */
MOOD_WARN_UNUSED int mood_lora_extract(const char *base, const char *tuned, int rank, int conv_rank,
                                       double min_diff, const mood_lora_write_options *o);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_LORA_H */
