/*
 * hash.h: the file hashes that A1111, kohya and Civitai use to identify models and LoRAs
 * (lora-formats.md §7, ecosystem.md §1), all computed in one pass over the file.
 */
#ifndef MOOD_HASH_H
#define MOOD_HASH_H

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mood_file_hashes {
    uint64_t size;
    char sha256[65];    /* SHA-256 of the whole file, lowercase hex; AutoV2 = first 10 chars */
    char autov1[9];     /* SHA-256 of bytes [1 MiB, 1 MiB + 64 KiB), first 8 hex chars */
    int autov1_civitai; /* Civitai records AutoV1 only for files of at least 2 MiB */
    int is_safetensors; /* the file parsed as a safetensors header (AutoV3 is set) */
    char autov3[65];    /* SHA-256 of the bytes after the safetensors header */
    char crc32[9];      /* CRC-32 in Civitai's byte order (little-endian bytes), uppercase */
    char crc32_zlib[9]; /* the same value as zlib prints it, uppercase */
    char sshs_model_hash[80]; /* embedded in __metadata__, verbatim ("" when absent) */
    char sshs_legacy_hash[80];
} mood_file_hashes;

/* Hashes `path` in one pass (two threads: the whole-file and the data-section digests run in
 * parallel). Progress is reported in bytes. */
MOOD_WARN_UNUSED int mood_hash_file(mood_file_hashes *out, const char *path,
                                    mood_progress_fn progress, void *payload);

/* What mood_hash_file_ex may leave out (its fields are then ""). */
enum { MOOD_HASH_SKIP_CRC32 = 1 };

/* mood_hash_file, minus what `flags` says is not needed (the registry needs no CRC-32). */
MOOD_WARN_UNUSED int mood_hash_file_ex(mood_file_hashes *out, const char *path, unsigned flags,
                                       mood_progress_fn progress, void *payload);

/* What the embedded sshs_model_hash is, against the computed AutoV3: "absent", "match",
 * "empty_input" (the SHA-256 of nothing, which some trainers write), "per_tensor_0x" (the
 * LyCORIS/kohya per-tensor "0x" hash), "malformed" or "mismatch"; *why gets the sentence `mood
 * hash` and `mood inspect` show beside the value ("" when absent). */
const char *mood_sshs_status(const mood_file_hashes *h, const char **why);

/* SHA-256 of a buffer as 64 lowercase hex characters. */
void mood_sha256_hex(char hex_out[65], const void *data, size_t size);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_HASH_H */
