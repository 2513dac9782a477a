/*
 * safetensors_read.c: maps a safetensors file and validates it before anyone touches a tensor.
 *
 * The checks follow the reference implementation (huggingface/safetensors tensor.rs, summarised
 * in lora-formats.md §1.3): header length within the file and at most 100 MB, a UTF-8 JSON
 * object starting with '{', entries with exactly dtype/shape/data_offsets, known dtypes, string
 * metadata, no duplicate names, byte sizes that match the shapes, and offsets that tile the data
 * buffer exactly (no gaps, overlaps or trailing bytes). Every rejection names the file and the
 * tensor or field at fault. Values (NaN, inf) are not checked here; users of the values do that.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "mood/safetensors.h"

struct mood_st_file {
    char *path;
    mood_map map;
    uint8_t *owned; /* in-memory images (mood_st_open_memory) */
    uint64_t size;
    uint64_t header_len;
    mood_st_tensor *tensors; /* sorted by data offset */
    size_t count;
    const mood_st_tensor **by_name; /* the tensors sorted by name */
    char **meta;                    /* key, value, key, value, ... */
    size_t meta_count;
};

static int fail(const mood_st_file *f, const char *fmt, const char *a, const char *b)
{
    char detail[1024];
    snprintf(detail, sizeof detail, fmt, a ? a : "", b ? b : "");
    return mood_error_set(MOOD_EFORMAT, "%s: not a valid safetensors file: %s", f->path, detail);
}

/* Strict UTF-8 (no overlongs, no surrogates), as Rust's str::from_utf8. */
static int utf8_valid(const uint8_t *s, uint64_t n)
{
    uint64_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        int len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + (uint64_t)len > n)
            return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + (uint64_t)k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + (uint64_t)k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += (uint64_t)len;
    }
    return 1;
}

/* A JSON number that is a non-negative integer representable exactly. */
static int json_u64(uint64_t *out, const cJSON *item)
{
    double d;
    if (!cJSON_IsNumber(item))
        return -1;
    d = item->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

static int parse_metadata(mood_st_file *f, const cJSON *obj)
{
    size_t n = 0, i = 0;
    const cJSON *item;
    if (!cJSON_IsObject(obj))
        return fail(f, "__metadata__ is not an object of strings", NULL, NULL);
    cJSON_ArrayForEach(item, obj) n++;
    f->meta = mood_calloc(2 * n + 1, sizeof *f->meta);
    if (!f->meta)
        return mood_error_nomem();
    cJSON_ArrayForEach(item, obj)
    {
        if (!cJSON_IsString(item))
            return fail(f, "__metadata__ value of \"%s\" is not a string", item->string, NULL);
        for (size_t k = 0; k < i; k++) {
            if (strcmp(f->meta[2 * k], item->string) == 0)
                return fail(f, "duplicate __metadata__ key \"%s\"", item->string, NULL);
        }
        f->meta[2 * i] = mood_strdup(item->string);
        f->meta[2 * i + 1] = mood_strdup(item->valuestring);
        f->meta_count = ++i; /* counted before the check so that close frees a half pair */
        if (!f->meta[2 * i - 2] || !f->meta[2 * i - 1])
            return mood_error_nomem();
    }
    return 0;
}

static int parse_shape(mood_st_file *f, mood_st_tensor *t, const cJSON *shape)
{
    const cJSON *dim;
    if (!cJSON_IsArray(shape))
        return fail(f, "tensor \"%s\": shape is not an array", t->name, NULL);
    t->ndim = 0;
    cJSON_ArrayForEach(dim, shape)
    {
        uint64_t d;
        if (t->ndim == MOOD_ST_MAX_DIMS)
            return fail(f, "tensor \"%s\": more than 8 dimensions", t->name, NULL);
        if (json_u64(&d, dim) != 0 || d > (uint64_t)INT64_MAX)
            return fail(f, "tensor \"%s\": shape entries must be non-negative integers", t->name,
                        NULL);
        t->shape[t->ndim++] = (int64_t)d;
    }
    return 0;
}

static int parse_tensor(mood_st_file *f, mood_st_tensor *t, const cJSON *entry)
{
    const cJSON *dtype, *shape, *offsets, *field;
    uint64_t begin, end, numel = 1, bits;
    int err;
    if (!cJSON_IsObject(entry))
        return fail(f, "entry \"%s\" is not an object", t->name, NULL);
    cJSON_ArrayForEach(field, entry)
    {
        if (strcmp(field->string, "dtype") != 0 && strcmp(field->string, "shape") != 0 &&
            strcmp(field->string, "data_offsets") != 0)
            return fail(f, "tensor \"%s\": unexpected field \"%s\"", t->name, field->string);
    }
    dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!dtype || !shape || !offsets)
        return fail(f, "tensor \"%s\": needs dtype, shape and data_offsets", t->name, NULL);
    if (!cJSON_IsString(dtype) || mood_dtype_from_name(&t->dtype, dtype->valuestring) != 0)
        return fail(f, "tensor \"%s\": unknown dtype \"%s\"", t->name,
                    cJSON_IsString(dtype) ? dtype->valuestring : "(not a string)");
    if ((err = parse_shape(f, t, shape)) != 0)
        return err;
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        json_u64(&begin, cJSON_GetArrayItem(offsets, 0)) != 0 ||
        json_u64(&end, cJSON_GetArrayItem(offsets, 1)) != 0)
        return fail(f, "tensor \"%s\": data_offsets must be two non-negative integers", t->name,
                    NULL);
    for (int i = 0; i < t->ndim; i++) {
        if (mood_mul_u64(&numel, numel, (uint64_t)t->shape[i]) != 0)
            return fail(f, "tensor \"%s\": shape overflows", t->name, NULL);
    }
    if (mood_mul_u64(&bits, numel, (uint64_t)mood_dtype_bits(t->dtype)) != 0)
        return fail(f, "tensor \"%s\": shape overflows", t->name, NULL);
    if (bits % 8 != 0)
        return fail(f, "tensor \"%s\": sub-byte tensor does not fill whole bytes", t->name, NULL);
    if (end < begin || end - begin != bits / 8) {
        char detail[160];
        snprintf(detail, sizeof detail, "data_offsets [%llu, %llu] hold %llu bytes but %s",
                 (unsigned long long)begin, (unsigned long long)end,
                 (unsigned long long)(end >= begin ? end - begin : 0), "");
        snprintf(detail + strlen(detail), sizeof detail - strlen(detail),
                 "shape and dtype %s need %llu", mood_dtype_name(t->dtype),
                 (unsigned long long)(bits / 8));
        return fail(f, "tensor \"%s\": %s", t->name, detail);
    }
    t->begin = begin;
    t->end = end;
    return 0;
}

static int cmp_offset(const void *a, const void *b)
{
    const mood_st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const mood_st_tensor *const *)a)->name,
                  (*(const mood_st_tensor *const *)b)->name);
}

/* Names must be unique; checked before the layout so that a duplicated entry is reported as
 * such rather than as overlapping offsets. */
static int check_names(mood_st_file *f)
{
    f->by_name = mood_malloc((f->count + 1) * sizeof *f->by_name);
    if (!f->by_name)
        return mood_error_nomem();
    for (size_t i = 0; i < f->count; i++)
        f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, f->count, sizeof *f->by_name, cmp_name);
    for (size_t i = 1; i < f->count; i++) {
        if (strcmp(f->by_name[i]->name, f->by_name[i - 1]->name) == 0)
            return fail(f, "duplicate tensor name \"%s\"", f->by_name[i]->name, NULL);
    }
    return 0;
}

/* Offsets must tile [0, data_len) in order: the reference's "no holes" rule. Sorting the tensors
 * in place invalidates the by-name view made by check_names, so it is rebuilt at the end. */
static int check_layout(mood_st_file *f, uint64_t data_len)
{
    uint64_t pos = 0;
    int err = check_names(f);
    if (err)
        return err;
    qsort(f->tensors, f->count, sizeof *f->tensors, cmp_offset);
    for (size_t i = 0; i < f->count; i++) {
        const mood_st_tensor *t = &f->tensors[i];
        if (t->begin != pos) {
            char where[96];
            snprintf(where, sizeof where, "starts at byte %llu where %llu was expected",
                     (unsigned long long)t->begin, (unsigned long long)pos);
            return fail(f, "tensor \"%s\" %s (offsets overlap or leave a gap)", t->name, where);
        }
        pos = t->end;
    }
    if (pos != data_len) {
        char where[128];
        snprintf(where, sizeof where, "tensors cover %llu bytes of a %llu-byte data buffer",
                 (unsigned long long)pos, (unsigned long long)data_len);
        return fail(f, "%s (truncated file or trailing bytes)", where, NULL);
    }
    for (size_t i = 0; i < f->count; i++) {
        f->tensors[i].data = f->map.data + 8 + f->header_len + f->tensors[i].begin;
        f->by_name[i] = &f->tensors[i];
    }
    qsort(f->by_name, f->count, sizeof *f->by_name, cmp_name);
    return 0;
}

static int parse_header(mood_st_file *f, const char *json, uint64_t len)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)len, &end, 0);
    const cJSON *item;
    size_t n = 0;
    int err = 0;
    /* JSON allows no raw control character but whitespace (serde_json, the reference reader's
     * parser, refuses one in a string too); cJSON would take it, and a NUL would cut a tensor's
     * name short of what the file says */
    for (uint64_t i = 0; root && i < len; i++) {
        unsigned char c = (unsigned char)json[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            cJSON_Delete(root);
            return mood_error_set(MOOD_EFORMAT,
                                  "%s: not a valid safetensors file: header holds the control "
                                  "character 0x%02x at byte %llu",
                                  f->path, c, (unsigned long long)i);
        }
    }
    if (!root) {
        return mood_error_set(MOOD_EFORMAT,
                              "%s: not a valid safetensors file: header is not valid JSON "
                              "(error near byte %ld of the header)",
                              f->path, (long)(cJSON_GetErrorPtr() - json));
    }
    for (const char *p = end; p < json + len; p++) {
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
            err = fail(f, "trailing characters after the header JSON", NULL, NULL);
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        err = fail(f, "header is not a JSON object", NULL, NULL);
        goto done;
    }
    cJSON_ArrayForEach(item, root) n++;
    f->tensors = mood_calloc(n + 1, sizeof *f->tensors);
    if (!f->tensors) {
        err = mood_error_nomem();
        goto done;
    }
    cJSON_ArrayForEach(item, root)
    {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (f->meta) {
                err = fail(f, "duplicate __metadata__", NULL, NULL);
                goto done;
            }
            if ((err = parse_metadata(f, item)) != 0)
                goto done;
            continue;
        }
        mood_st_tensor *t = &f->tensors[f->count];
        if (!(t->name = mood_strdup(item->string))) {
            err = mood_error_nomem();
            goto done;
        }
        f->count++;
        if ((err = parse_tensor(f, t, item)) != 0)
            goto done;
    }
done:
    cJSON_Delete(root);
    return err;
}

/* What a file that is not safetensors at all is, from its first bytes: a web page saved in its
 * place (a download that got a login or error page), a PyTorch/pickle checkpoint, an archive.
 * NULL when it looks like none of those. */
static const char *other_kind(const uint8_t *p, uint64_t size)
{
    size_t i = 0;
    while (i < size && i < 64 && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    if (size - i >= 5 &&
        (p[i] == '<' && (p[i + 1] == '!' || p[i + 1] == 'h' || p[i + 1] == 'H' || p[i + 1] == '?')))
        return "it is a web page (HTML or XML): the download got a page (a login, an error or "
               "a 'file not found' page) instead of the file";
    if (size - i >= 1 && (p[i] == '{' || p[i] == '['))
        return "it is JSON text (an API or error answer saved as the file?)";
    if (size >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5)
        return "it is a Python pickle (a PyTorch .ckpt/.pt/.bin): mood reads safetensors only, "
               "which cannot run code; convert it with a trusted tool first";
    if ((size >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) ||
        (size >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) ||
        (size >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0) ||
        (size >= 6 && (memcmp(p, "GIF87a", 6) == 0 || memcmp(p, "GIF89a", 6) == 0)))
        return "it is an image (PNG, JPEG, WebP or GIF), not a model or LoRA file";
    if (size >= 4 && memcmp(p, "GGUF", 4) == 0)
        return "it is a GGUF file (quantised weights for llama.cpp or stable-diffusion.cpp): "
               "mood reads safetensors only";
    if (size >= 4 && p[0] == 'P' && p[1] == 'K' && p[2] == 3 && p[3] == 4)
        return "it is a ZIP archive (a PyTorch .ckpt/.pt, or a zipped download): mood reads "
               "safetensors only; unzip it, or convert a checkpoint with a trusted tool first";
    return NULL;
}

static int validate(mood_st_file *f)
{
    const uint8_t *p = f->map.data;
    uint64_t n = 0, header_end;
    /* only a file that fails as safetensors is named as something else: a header length's
     * bytes may look like anything */
    const char *kind = f->size < 9 || p[8] != '{' ? other_kind(p, f->size) : NULL;
    if (kind)
        return fail(f, "%s", kind, NULL);
    if (f->size < 8) {
        char sz[32];
        snprintf(sz, sizeof sz, "%llu", (unsigned long long)f->size);
        return fail(f, "file is %s bytes long, too short to hold a header length", sz, NULL);
    }
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | p[i];
    if (n > MOOD_ST_MAX_HEADER) {
        char sz[64];
        snprintf(sz, sizeof sz, "%llu bytes", (unsigned long long)n);
        return fail(f,
                    "header length %s is over the 100 MB limit (is it a safetensors file at all?)",
                    sz, NULL);
    }
    if (mood_add_u64(&header_end, 8, n) != 0 || header_end > f->size) {
        char sz[96];
        snprintf(sz, sizeof sz, "%llu bytes runs past the end of the %llu-byte file",
                 (unsigned long long)n, (unsigned long long)f->size);
        return fail(f, "header length %s (truncated file?)", sz, NULL);
    }
    f->header_len = n;
    if (n < 2 || p[8] != '{')
        return fail(f, "header does not start with '{'", NULL, NULL);
    if (!utf8_valid(p + 8, n))
        return fail(f, "header is not valid UTF-8", NULL, NULL);
    int err = parse_header(f, (const char *)p + 8, n);
    if (err)
        return err;
    return check_layout(f, f->size - header_end);
}

static int open_common(mood_st_file **out, mood_st_file *f)
{
    int err = validate(f);
    if (err) {
        mood_st_close(f);
        return err;
    }
    *out = f;
    return 0;
}

int mood_st_open(mood_st_file **out, const char *path)
{
    mood_st_file *f;
    int err;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    MOOD_ARG_NONNULL(path);
    if (!(f = mood_calloc(1, sizeof *f)) || !(f->path = mood_strdup(path))) {
        mood_free(f);
        return mood_error_nomem();
    }
    if ((err = mood_map_file(&f->map, path)) != 0) {
        mood_st_close(f);
        return err;
    }
    f->size = f->map.size;
    return open_common(out, f);
}

int mood_st_open_memory(mood_st_file **out, const void *data, size_t size, const char *label)
{
    mood_st_file *f;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    if (size > 0)
        MOOD_ARG_NONNULL(data);
    MOOD_ARG_NONNULL(label);
    if (!(f = mood_calloc(1, sizeof *f)) || !(f->path = mood_strdup(label)) ||
        !(f->owned = mood_malloc(size))) {
        mood_st_close(f);
        return mood_error_nomem();
    }
    if (size)
        memcpy(f->owned, data, size);
    f->map.data = f->owned;
    f->map.size = size;
    f->size = size;
    return open_common(out, f);
}

void mood_st_close(mood_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->count; i++)
        mood_free((char *)f->tensors[i].name);
    mood_free(f->tensors);
    mood_free(f->by_name);
    for (size_t i = 0; f->meta && i < 2 * f->meta_count; i++)
        mood_free(f->meta[i]);
    mood_free(f->meta);
    if (f->owned)
        mood_free(f->owned);
    else
        mood_unmap(&f->map);
    mood_free(f->path);
    mood_free(f);
}

const char *mood_st_path(const mood_st_file *f)
{
    return f->path;
}

uint64_t mood_st_file_size(const mood_st_file *f)
{
    return f->size;
}

uint64_t mood_st_header_len(const mood_st_file *f)
{
    return f->header_len;
}

size_t mood_st_count(const mood_st_file *f)
{
    return f->count;
}

const mood_st_tensor *mood_st_at(const mood_st_file *f, size_t i)
{
    return i < f->count ? &f->tensors[i] : NULL;
}

const mood_st_tensor *mood_st_find(const mood_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0)
            return f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t mood_st_meta_count(const mood_st_file *f)
{
    return f->meta_count;
}

const char *mood_st_meta_key(const mood_st_file *f, size_t i)
{
    return i < f->meta_count ? f->meta[2 * i] : NULL;
}

const char *mood_st_meta_value(const mood_st_file *f, size_t i)
{
    return i < f->meta_count ? f->meta[2 * i + 1] : NULL;
}

const char *mood_st_meta_get(const mood_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->meta_count; i++) {
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    }
    return NULL;
}

void mood_st_release(const mood_st_file *f, const mood_st_tensor *t)
{
    if (!f->owned)
        mood_map_release(&f->map, 8 + f->header_len + t->begin, t->end - t->begin);
}

int64_t mood_st_numel(const mood_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

uint64_t mood_st_nbytes(const mood_st_tensor *t)
{
    return t->end - t->begin;
}

int mood_st_to_f32(float *out, const mood_st_tensor *t)
{
    int err;
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(t);
    if ((err = mood_dtype_to_f32(out, t->data, t->dtype, (size_t)mood_st_numel(t))) != 0)
        mood_error_prefix("tensor \"%s\"", t->name);
    return err;
}
