/*
 * safetensors.h: reading and writing safetensors files, the only weight format mood writes.
 *
 * Reading maps the file (zero copy) and validates it as strictly as the reference
 * implementation (lora-formats.md §1.3): header bounds, UTF-8 JSON of the right schema, known
 * dtypes, shapes whose byte sizes match, offsets that tile the data buffer with no gap, overlap
 * or trailing bytes. Writing reproduces the reference layout (§1.4) so hashes match other tools,
 * and is atomic: a temporary file is written, synced and renamed; on any failure nothing is left.
 */
#ifndef MOOD_SAFETENSORS_H
#define MOOD_SAFETENSORS_H

#include "mood/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOOD_ST_MAX_DIMS   8
#define MOOD_ST_MAX_HEADER 100000000ULL /* the reference implementation's limit */

/* In the reference implementation's enum order (increasing alignment); the writer sorts tensors
 * by this order descending, then by name. */
typedef enum mood_dtype {
    MOOD_DTYPE_BOOL,
    MOOD_DTYPE_F4,
    MOOD_DTYPE_F6_E2M3,
    MOOD_DTYPE_F6_E3M2,
    MOOD_DTYPE_U8,
    MOOD_DTYPE_I8,
    MOOD_DTYPE_F8_E5M2,
    MOOD_DTYPE_F8_E4M3,
    MOOD_DTYPE_F8_E8M0,
    MOOD_DTYPE_F8_E4M3FNUZ,
    MOOD_DTYPE_F8_E5M2FNUZ,
    MOOD_DTYPE_I16,
    MOOD_DTYPE_U16,
    MOOD_DTYPE_F16,
    MOOD_DTYPE_BF16,
    MOOD_DTYPE_I32,
    MOOD_DTYPE_U32,
    MOOD_DTYPE_F32,
    MOOD_DTYPE_C64,
    MOOD_DTYPE_F64,
    MOOD_DTYPE_I64,
    MOOD_DTYPE_U64,
    MOOD_DTYPE_COUNT
} mood_dtype;

const char *mood_dtype_name(mood_dtype dt);
/* Returns 0 and sets *out, or MOOD_ENOTFOUND for an unknown name. */
int mood_dtype_from_name(mood_dtype *out, const char *name);
int mood_dtype_bits(mood_dtype dt);
/* True for dtypes that convert to and from float32 (all but C64 and the sub-byte formats). */
int mood_dtype_is_numeric(mood_dtype dt);

/* Converts n elements of `src` (dtype dt, little-endian) to float32. 64-bit integers and F64 lose
 * precision beyond float32's. Fails with MOOD_EUNSUPPORTED for C64, F4 and F6 formats. */
int mood_dtype_to_f32(float *out, const void *src, mood_dtype dt, size_t n);
/* Converts float32 to dtype dt, rounding to nearest even (F16, BF16, F8: like torch's .to()). */
int mood_dtype_from_f32(void *out, const float *src, mood_dtype dt, size_t n);
/* Reads one element as double (for scalars such as `alpha`). */
int mood_dtype_read_f64(double *out, const void *src, mood_dtype dt);

typedef struct mood_st_tensor {
    const char *name;
    mood_dtype dtype;
    int ndim;
    int64_t shape[MOOD_ST_MAX_DIMS];
    uint64_t begin, end; /* offsets in the data buffer */
    const void *data;    /* points into the mapped file */
} mood_st_tensor;

int64_t mood_st_numel(const mood_st_tensor *t);
uint64_t mood_st_nbytes(const mood_st_tensor *t);
/* Converts the whole tensor to float32 into out (numel elements). */
int mood_st_to_f32(float *out, const mood_st_tensor *t);

typedef struct mood_st_file mood_st_file;

/* Opens and validates `path`. On failure the message names the file and the problem. */
MOOD_WARN_UNUSED int mood_st_open(mood_st_file **out, const char *path);
/* Validates an in-memory image (copied); `label` names it in messages. Used by the fuzzer. */
MOOD_WARN_UNUSED int mood_st_open_memory(mood_st_file **out, const void *data, size_t size,
                                         const char *label);
void mood_st_close(mood_st_file *f);

const char *mood_st_path(const mood_st_file *f);
uint64_t mood_st_file_size(const mood_st_file *f);
/* N, the header length: the data buffer starts at 8 + N. */
uint64_t mood_st_header_len(const mood_st_file *f);

/* Tensors in file (data offset) order. */
size_t mood_st_count(const mood_st_file *f);
const mood_st_tensor *mood_st_at(const mood_st_file *f, size_t i);
/* NULL when absent. O(log n). */
const mood_st_tensor *mood_st_find(const mood_st_file *f, const char *name);

/* __metadata__ entries, in the order of the file. */
size_t mood_st_meta_count(const mood_st_file *f);
const char *mood_st_meta_key(const mood_st_file *f, size_t i);
const char *mood_st_meta_value(const mood_st_file *f, size_t i);
/* NULL when absent. */
const char *mood_st_meta_get(const mood_st_file *f, const char *key);

/* Hints that the pages of a tensor will not be needed again (keeps resident memory low while
 * streaming a large file). */
void mood_st_release(const mood_st_file *f, const mood_st_tensor *t);

/* ----- writing ------------------------------------------------------------------------------ */

typedef struct mood_st_writer mood_st_writer;

/* Produces the bytes of one tensor into dst (nbytes long) when the writer reaches it. */
typedef int (*mood_st_fill_fn)(void *dst, uint64_t nbytes, void *payload);

MOOD_WARN_UNUSED int mood_st_writer_new(mood_st_writer **out);
void mood_st_writer_free(mood_st_writer *w);
/* Adds a tensor whose bytes are at `data` (borrowed until write). Names must be unique. */
MOOD_WARN_UNUSED int mood_st_writer_add(mood_st_writer *w, const char *name, mood_dtype dt,
                                        int ndim, const int64_t *shape, const void *data);
/* Adds a tensor converted from float32 (copied and converted now). */
MOOD_WARN_UNUSED int mood_st_writer_add_f32(mood_st_writer *w, const char *name, mood_dtype dt,
                                            int ndim, const int64_t *shape, const float *data);
/* Adds a tensor whose bytes are produced by fill(payload) during the write. */
MOOD_WARN_UNUSED int mood_st_writer_add_lazy(mood_st_writer *w, const char *name, mood_dtype dt,
                                             int ndim, const int64_t *shape, mood_st_fill_fn fill,
                                             void *payload);
/* Sets (or replaces) a metadata entry. Metadata keys are written in sorted order. */
MOOD_WARN_UNUSED int mood_st_writer_set_meta(mood_st_writer *w, const char *key, const char *value);
/* SHA-256 of the data section the writer will produce (AutoV3), as 64 lowercase hex, computed
 * without writing; needed to embed sshs_model_hash. Calls lazy fills. */
MOOD_WARN_UNUSED int mood_st_writer_data_sha256(mood_st_writer *w, char hex_out[65]);
/* SHA-256 of the bytes [begin, begin + len) of the file the writer would write now, header
 * included (cut at the file's end; nothing past it), computed without writing: AutoV1 and
 * kohya's sshs_legacy_hash hash such a range. Calls lazy fills up to the range's end. */
MOOD_WARN_UNUSED int mood_st_writer_range_sha256(mood_st_writer *w, uint64_t begin, uint64_t len,
                                                 char hex_out[65]);
/* Writes the file atomically. */
MOOD_WARN_UNUSED int mood_st_writer_write(mood_st_writer *w, const char *path,
                                          mood_progress_fn progress, void *payload);

#ifdef __cplusplus
}
#endif
#endif /* MOOD_SAFETENSORS_H */
