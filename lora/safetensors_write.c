/*
 * safetensors_write.c: writes safetensors files with the reference writer's layout
 * (lora-formats.md §1.4) so that the data section, and therefore the AutoV3 hash, is identical
 * to what the Python package writes for the same tensors:
 *   - tensors ordered by dtype (reference enum order, descending), then by name;
 *   - header JSON compact, "__metadata__" first, each entry {"dtype","shape","data_offsets"};
 *   - header padded with spaces so its length is a multiple of 8.
 * The Python package emits metadata keys in hash-map order (random per process); mood sorts
 * them, so files with at most one metadata key are byte-identical and others differ only in the
 * order of metadata entries.
 * Tensor bytes may be borrowed, converted copies, or produced lazily by a callback while the file
 * is streamed out (bake writes multi-GB checkpoints without holding them in memory).
 */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "mood/safetensors.h"

typedef struct entry {
    char *name;
    mood_dtype dtype;
    int ndim;
    int64_t shape[MOOD_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data; /* borrowed or == owned */
    void *owned;
    mood_st_fill_fn fill;
    void *payload;
} entry;

struct mood_st_writer {
    entry *entries;
    size_t count, cap;
    char **meta; /* key, value pairs */
    size_t meta_count, meta_cap;
};

int mood_st_writer_new(mood_st_writer **out)
{
    MOOD_ARG_NONNULL(out);
    *out = mood_calloc(1, sizeof **out);
    return *out ? 0 : mood_error_nomem();
}

void mood_st_writer_free(mood_st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->count; i++) {
        mood_free(w->entries[i].name);
        mood_free(w->entries[i].owned);
    }
    for (size_t i = 0; i < 2 * w->meta_count; i++)
        mood_free(w->meta[i]);
    mood_free(w->entries);
    mood_free(w->meta);
    mood_free(w);
}

/* Whether a tensor of that shape has elements (its data may be NULL when not). */
static int has_elements(int ndim, const int64_t *shape)
{
    for (int i = 0; i < ndim && i < MOOD_ST_MAX_DIMS; i++)
        if (shape[i] == 0)
            return 0;
    return 1;
}

static int new_entry(entry **out, mood_st_writer *w, const char *name, mood_dtype dt, int ndim,
                     const int64_t *shape)
{
    uint64_t bits = (uint64_t)mood_dtype_bits(dt), numel = 1;
    entry *e;
    if ((unsigned)dt >= MOOD_DTYPE_COUNT || ndim < 0 || ndim > MOOD_ST_MAX_DIMS)
        return mood_error_set(MOOD_EINVAL, "tensor \"%s\": bad dtype or rank", name);
    for (size_t i = 0; i < w->count; i++) {
        if (strcmp(w->entries[i].name, name) == 0)
            return mood_error_set(MOOD_EINVAL, "tensor \"%s\" added twice", name);
    }
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || mood_mul_u64(&numel, numel, (uint64_t)shape[i]) != 0)
            return mood_error_set(MOOD_EINVAL, "tensor \"%s\": bad shape", name);
    }
    if (mood_mul_u64(&bits, bits, numel) != 0 || bits % 8 != 0)
        return mood_error_set(MOOD_EINVAL, "tensor \"%s\": size does not fill whole bytes", name);
    if (mood_array_reserve(&w->entries, &w->cap, w->count, sizeof *w->entries, 64) != 0)
        return MOOD_ENOMEM;
    e = &w->entries[w->count];
    memset(e, 0, sizeof *e);
    if (!(e->name = mood_strdup(name)))
        return mood_error_nomem();
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->nbytes = bits / 8;
    w->count++;
    *out = e;
    return 0;
}

/* The arguments every add function needs, named for function fn: the writer, the name, a shape
 * when there are dimensions, and (data_given 0) the data when the shape has elements. */
static int check_add(const char *fn, const mood_st_writer *w, const char *name, int ndim,
                     const int64_t *shape, const void *data, int data_given)
{
    const char *missing = !w                                   ? "w"
                          : !name                              ? "name"
                          : ndim > 0 && !shape                 ? "shape"
                          : data_given                         ? NULL
                          : has_elements(ndim, shape) && !data ? "data"
                                                               : NULL;
    return missing ? mood_error_set(MOOD_EINVAL, "%s: %s is NULL", fn, missing) : 0;
}

int mood_st_writer_add(mood_st_writer *w, const char *name, mood_dtype dt, int ndim,
                       const int64_t *shape, const void *data)
{
    entry *e;
    int err = check_add(__func__, w, name, ndim, shape, data, 0);
    if (!err && (err = new_entry(&e, w, name, dt, ndim, shape)) == 0)
        e->data = data;
    return err;
}

int mood_st_writer_add_f32(mood_st_writer *w, const char *name, mood_dtype dt, int ndim,
                           const int64_t *shape, const float *data)
{
    entry *e;
    int err = check_add(__func__, w, name, ndim, shape, data, 0);
    if (err || (err = new_entry(&e, w, name, dt, ndim, shape)) != 0)
        return err;
    if (!(e->owned = mood_malloc(e->nbytes)))
        return mood_error_nomem();
    e->data = e->owned;
    return mood_dtype_from_f32(e->owned, data, dt, e->nbytes * 8 / (uint64_t)mood_dtype_bits(dt));
}

int mood_st_writer_add_lazy(mood_st_writer *w, const char *name, mood_dtype dt, int ndim,
                            const int64_t *shape, mood_st_fill_fn fill, void *payload)
{
    entry *e;
    int err = check_add(__func__, w, name, ndim, shape, NULL, 1);
    if (!err && !fill)
        err = mood_error_set(MOOD_EINVAL, "%s: fill is NULL", __func__);
    if (!err && (err = new_entry(&e, w, name, dt, ndim, shape)) == 0) {
        e->fill = fill;
        e->payload = payload;
    }
    return err;
}

int mood_st_writer_set_meta(mood_st_writer *w, const char *key, const char *value)
{
    char *v, *k;
    MOOD_ARG_NONNULL(w);
    MOOD_ARG_NONNULL(key);
    MOOD_ARG_NONNULL(value);
    if (!(v = mood_strdup(value)))
        return mood_error_nomem();
    for (size_t i = 0; i < w->meta_count; i++) {
        if (strcmp(w->meta[2 * i], key) == 0) {
            mood_free(w->meta[2 * i + 1]);
            w->meta[2 * i + 1] = v;
            return 0;
        }
    }
    if (w->meta_count == w->meta_cap) {
        size_t cap = w->meta_cap ? 2 * w->meta_cap : 16;
        char **grown = mood_realloc(w->meta, 2 * cap * sizeof *grown);
        if (!grown) {
            mood_free(v);
            return mood_error_nomem();
        }
        w->meta = grown;
        w->meta_cap = cap;
    }
    if (!(k = mood_strdup(key))) {
        mood_free(v);
        return mood_error_nomem();
    }
    w->meta[2 * w->meta_count] = k;
    w->meta[2 * w->meta_count + 1] = v;
    w->meta_count++;
    return 0;
}

static int cmp_layout(const void *a, const void *b)
{
    const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_meta(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Orders the entries as the reference writer does; returns a new array of pointers. */
static int layout(entry ***out, mood_st_writer *w)
{
    entry **order = mood_malloc((w->count + 1) * sizeof *order);
    if (!order)
        return mood_error_nomem();
    for (size_t i = 0; i < w->count; i++)
        order[i] = &w->entries[i];
    qsort(order, w->count, sizeof *order, cmp_layout);
    *out = order;
    return 0;
}

static int build_header(mood_buf *h, mood_st_writer *w, entry **order)
{
    uint64_t offset = 0;
    int err = mood_buf_append(h, "\0\0\0\0\0\0\0\0{", 9);
    char **sorted = NULL;
    if (!err && w->meta_count) {
        /* Sort (key, value) pairs by key: treat each pair as one 2-pointer element. */
        sorted = mood_malloc(2 * w->meta_count * sizeof *sorted);
        if (!sorted)
            return mood_error_nomem();
        memcpy(sorted, w->meta, 2 * w->meta_count * sizeof *sorted);
        qsort(sorted, w->meta_count, 2 * sizeof *sorted, cmp_meta);
        err = mood_buf_puts(h, "\"__metadata__\":{");
        for (size_t i = 0; !err && i < w->meta_count; i++) {
            if (i)
                err = mood_buf_puts(h, ",");
            if (!err)
                err = mood_buf_json_string(h, sorted[2 * i]);
            if (!err)
                err = mood_buf_puts(h, ":");
            if (!err)
                err = mood_buf_json_string(h, sorted[2 * i + 1]);
        }
        if (!err)
            err = mood_buf_puts(h, w->count ? "}," : "}");
        mood_free(sorted);
    }
    for (size_t i = 0; !err && i < w->count; i++) {
        const entry *e = order[i];
        if (i)
            err = mood_buf_puts(h, ",");
        if (!err)
            err = mood_buf_json_string(h, e->name);
        if (!err)
            err = mood_buf_printf(h, ":{\"dtype\":\"%s\",\"shape\":[", mood_dtype_name(e->dtype));
        for (int d = 0; !err && d < e->ndim; d++)
            err = mood_buf_printf(h, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        if (!err)
            err = mood_buf_printf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                                  (unsigned long long)(offset + e->nbytes));
        offset += e->nbytes;
    }
    if (!err)
        err = mood_buf_puts(h, "}");
    while (!err && (h->len - 8) % 8 != 0)
        err = mood_buf_puts(h, " ");
    if (!err) {
        uint64_t n = h->len - 8;
        for (int i = 0; i < 8; i++)
            h->data[i] = (char)((n >> (8 * i)) & 0xFF);
    }
    return err;
}

/* Calls `sink` with the bytes of every tensor in layout order, producing lazy ones into a
 * scratch buffer sized for the largest of them. */
typedef int (*sink_fn)(const void *data, size_t n, void *ctx);

static int stream_tensors(entry **order, size_t count, sink_fn sink, void *ctx,
                          mood_progress_fn progress, void *payload)
{
    uint64_t max_lazy = 0, total = 0, done = 0;
    void *scratch = NULL;
    int err = 0;
    for (size_t i = 0; i < count; i++) {
        total += order[i]->nbytes;
        if (order[i]->fill && order[i]->nbytes > max_lazy)
            max_lazy = order[i]->nbytes;
    }
    if (max_lazy && !(scratch = mood_malloc((size_t)max_lazy)))
        return mood_error_nomem();
    for (size_t i = 0; !err && i < count; i++) {
        const entry *e = order[i];
        const void *bytes = e->data;
        if (e->fill) {
            err = e->fill(scratch, e->nbytes, e->payload);
            bytes = scratch;
        }
        if (!err && e->nbytes)
            err = sink(bytes, (size_t)e->nbytes, ctx);
        done += e->nbytes;
        if (!err && progress) {
            mood_progress p = {"write", done, total};
            if (progress(&p, payload) != 0)
                err = mood_error_set(MOOD_ECANCELLED, "cancelled");
        }
    }
    mood_free(scratch);
    return err;
}

static int sink_sha(const void *data, size_t n, void *ctx)
{
    return EVP_DigestUpdate(ctx, data, n) == 1 ? 0 : mood_error_set(MOOD_EIO, "SHA-256 failed");
}

int mood_st_writer_data_sha256(mood_st_writer *w, char hex_out[65])
{
    entry **order = NULL;
    EVP_MD_CTX *ctx;
    unsigned char digest[32];
    int err;
    MOOD_ARG_NONNULL(w);
    MOOD_ARG_NONNULL(hex_out);
    if (!(ctx = EVP_MD_CTX_new()))
        return mood_error_nomem();
    if ((err = layout(&order, w)) == 0 && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        err = mood_error_set(MOOD_EIO, "SHA-256 unavailable");
    if (!err)
        err = stream_tensors(order, w->count, sink_sha, ctx, NULL, NULL);
    if (!err && EVP_DigestFinal_ex(ctx, digest, NULL) == 1) {
        for (int i = 0; i < 32; i++)
            snprintf(hex_out + 2 * i, 3, "%02x", digest[i]);
    }
    EVP_MD_CTX_free(ctx);
    mood_free(order);
    return err;
}

/* A byte range of the file being hashed: the bytes at [begin, end) of the stream go in. */
typedef struct range_sha {
    EVP_MD_CTX *ctx;
    uint64_t at, begin, end;
} range_sha;

#define RANGE_DONE 1 /* a sink's "past the range": the stream stops there, not an error */

static int sink_range(const void *data, size_t n, void *ctx)
{
    range_sha *r = ctx;
    uint64_t lo = r->at > r->begin ? r->at : r->begin, hi = r->at + n < r->end ? r->at + n : r->end;
    if (lo < hi && EVP_DigestUpdate(r->ctx, (const unsigned char *)data + (lo - r->at),
                                    (size_t)(hi - lo)) != 1)
        return mood_error_set(MOOD_EIO, "SHA-256 failed");
    r->at += n;
    return r->at >= r->end ? RANGE_DONE : 0;
}

int mood_st_writer_range_sha256(mood_st_writer *w, uint64_t begin, uint64_t len, char hex_out[65])
{
    entry **order = NULL;
    mood_buf header;
    range_sha r = {NULL, 0, begin, begin + len};
    unsigned char digest[32];
    int err;
    MOOD_ARG_NONNULL(w);
    MOOD_ARG_NONNULL(hex_out);
    mood_buf_init(&header);
    if (!(r.ctx = EVP_MD_CTX_new()))
        return mood_error_nomem();
    if ((err = layout(&order, w)) == 0 && (err = build_header(&header, w, order)) == 0 &&
        EVP_DigestInit_ex(r.ctx, EVP_sha256(), NULL) != 1)
        err = mood_error_set(MOOD_EIO, "SHA-256 unavailable");
    if (!err)
        err = sink_range(header.data, header.len, &r);
    if (!err)
        err = stream_tensors(order, w->count, sink_range, &r, NULL, NULL);
    if (err == RANGE_DONE)
        err = 0;
    if (!err && EVP_DigestFinal_ex(r.ctx, digest, NULL) == 1) {
        for (int i = 0; i < 32; i++)
            snprintf(hex_out + 2 * i, 3, "%02x", digest[i]);
    }
    EVP_MD_CTX_free(r.ctx);
    mood_buf_dispose(&header);
    mood_free(order);
    return err;
}

static int sink_file(const void *data, size_t n, void *ctx)
{
    return mood_atomic_write(ctx, data, n);
}

int mood_st_writer_write(mood_st_writer *w, const char *path, mood_progress_fn progress,
                         void *payload)
{
    mood_atomic_file af;
    mood_buf header;
    entry **order = NULL;
    int err;
    MOOD_ARG_NONNULL(w);
    MOOD_ARG_NONNULL(path);
    mood_buf_init(&header);
    memset(&af, 0, sizeof af);
    if ((err = layout(&order, w)) != 0 || (err = build_header(&header, w, order)) != 0)
        goto done;
    if ((err = mood_atomic_open(&af, path)) != 0 ||
        (err = mood_atomic_write(&af, header.data, header.len)) != 0 ||
        (err = stream_tensors(order, w->count, sink_file, &af, progress, payload)) != 0)
        goto done;
    err = mood_atomic_commit(&af);
done:
    mood_atomic_abort(&af);
    mood_buf_dispose(&header);
    mood_free(order);
    return err;
}
