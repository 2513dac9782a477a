/*
 * pack_store.h: what style-pack import (styles/pack.c) needs from the registry beyond the public
 * API (internal, not installed; no SQLite types): storing the adapters, previews and styles of a
 * pack in one all-or-nothing step, with the blob store's journal protecting the blobs.
 */
#ifndef MOOD_REGISTRY_PACK_STORE_H
#define MOOD_REGISTRY_PACK_STORE_H

#include "mood/registry.h"

/* An adapter of a pack: the file (path) when embedded, else NULL (it must be in the registry). */
typedef struct mood__pack_adapter_row {
    const char *sha256;
    const char *path;
    const char *file_name, *family, *family_source, *algorithm, *dtype, *autov3;
    uint64_t size;
    long long rank, modules;
    int has_rank, has_modules;
    double alpha;
    int has_alpha;
    const char *metadata_json, *trigger_words_json; /* JSON text or NULL */
    const char *air, *license;
    /* the Civitai record (0 / NULL / -1 where unknown); ids come from the AIR when the pack has
     * no record */
    long long civitai_model_id, civitai_version_id;
    const char *model_name, *version_name, *base_model;
    int nsfw, nsfw_level;         /* -1: unknown */
    const char *permissions_json; /* Civitai's permissions object as JSON text, or NULL */
} mood__pack_adapter_row;

typedef struct mood__pack_preview_row {
    const char *sha256;
    const char *path; /* extracted file */
    const char *media_type;
    int nsfw_level; /* -1: unknown */
} mood__pack_preview_row;

/* A mood board thumbnail of a style of the pack. */
typedef struct mood__pack_board_row {
    const char *sha256;
    const char *path; /* extracted file */
    const char *media_type, *name;
    int width, height; /* 0: unknown */
} mood__pack_board_row;

typedef struct mood__pack_style_row {
    const char *name, *description, *notes, *trigger_words, *template_text, *negative;
    double weight;
    int has_weight;
    const mood_style_lora *loras;
    size_t n_loras;
    const char *const *tags;
    size_t n_tags;
    const mood__pack_preview_row *previews;
    size_t n_previews;
    const mood__pack_board_row *board;
    size_t n_board;
} mood__pack_style_row;

/* Stores a pack: refuses (MOOD_ENOTFOUND) when an adapter that is not embedded is missing from
 * the registry, listing every such adapter with its AIR; refuses (MOOD_EINVAL) a style name that
 * is invalid, or taken by a style with other LoRAs. A style of the pack whose name is taken by
 * one with the same LoRAs is merged into it (merged_out[i] non-zero, n_styles entries): the
 * registry's style keeps what it has and gains what it lacks. Then copies the blobs (each
 * verified against its SHA-256) and commits all rows in one transaction: everything or nothing.
 * Adapters already in the registry are kept as they are. *added_out counts the adapters added.
 * `pack_path` is recorded as their source. */
int mood__reg_pack_store(int *added_out, unsigned char *merged_out, mood_registry *r,
                         const char *pack_path, const mood__pack_adapter_row *adapters,
                         size_t n_adapters, const mood__pack_style_row *styles, size_t n_styles,
                         mood_progress_fn progress, void *payload);

#endif /* MOOD_REGISTRY_PACK_STORE_H */
