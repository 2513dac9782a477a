/*
 * hash.c: the model-file hashes used by A1111, kohya and Civitai (lora-formats.md §7,
 * ecosystem.md §1), computed in one pass over a mapped file:
 *   - SHA-256 of the whole file (AutoV2 = its first 10 hex characters);
 *   - SHA-256 of the bytes after the safetensors header (AutoV3 / kohya "addnet" hash), when the
 *     file starts with a plausible header: u64 length N with 8 + N <= size and a '{' after it;
 *   - AutoV1: SHA-256 of [1 MiB, 1 MiB + 64 KiB) clipped to the file, first 8 hex characters;
 *   - CRC-32 (zlib's polynomial), printed both as zlib prints it and in Civitai's order (the hex
 *     of the little-endian bytes);
 *   - sshs_model_hash / sshs_legacy_hash copied verbatim from __metadata__.
 * The whole-file digest runs on the calling thread and the data-section digest on a second thread
 * over the same mapping, each with half of the CRC-32, so two cores hash at once (OpenSSL picks
 * SHA-NI where the CPU has it). Both threads walk the file in the same chunks, so each page is read
 * from disk once even when the file is not cached.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <zlib.h>

#include "common/args.h"
#include "common/common.h"
#include "mood/hash.h"

#define CHUNK              (8u << 20)
#define AUTOV1_BEGIN       0x100000u
#define AUTOV1_END         0x110000u
#define CIVITAI_AUTOV1_MIN (2u << 20)

static void to_hex(char *out, const unsigned char *digest, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[digest[i] >> 4];
        out[2 * i + 1] = digits[digest[i] & 15];
    }
    out[2 * n] = '\0';
}

/* One streaming SHA-256 over [begin, end) of the mapping, optionally with the CRC-32 of the
 * whole file. `position` publishes how far it got, so the faster thread can wait for the slower
 * one and the pair stays on the same pages. */
typedef struct stream {
    const uint8_t *data;
    uint64_t size;
    uint64_t begin;              /* first byte hashed by SHA-256 */
    uint64_t crc_begin, crc_end; /* the part of the file's CRC-32 this stream computes */
    EVP_MD_CTX *ctx;
    uLong crc;
    unsigned char digest[32];
    _Atomic uint64_t position;
    _Atomic int *stop; /* set on cancel or failure; both threads check it */
    int failed;
} stream;

/* Length of the part of [at, at + n) inside [lo, hi), and where it starts. */
static uint64_t clip(uint64_t *start, uint64_t at, uint64_t n, uint64_t lo, uint64_t hi)
{
    uint64_t b = at > lo ? at : lo, e = at + n < hi ? at + n : hi;
    *start = b;
    return e > b ? e - b : 0;
}

static int stream_chunk(stream *s, uint64_t at, uint64_t n)
{
    uint64_t start, len = clip(&start, at, n, s->crc_begin, s->crc_end);
    if (len)
        s->crc = crc32_z(s->crc, s->data + start, (z_size_t)len);
    len = clip(&start, at, n, s->begin, s->size);
    return !len || EVP_DigestUpdate(s->ctx, s->data + start, (size_t)len) == 1 ? 0 : -1;
}

static void *stream_run(void *arg)
{
    stream *s = arg;
    for (uint64_t at = 0; at < s->size && !atomic_load(s->stop); at += CHUNK) {
        uint64_t n = s->size - at < CHUNK ? s->size - at : CHUNK;
        if (stream_chunk(s, at, n) != 0) {
            s->failed = 1;
            atomic_store(s->stop, 1);
            break;
        }
        atomic_store(&s->position, at + n);
    }
    if (!s->failed && EVP_DigestFinal_ex(s->ctx, s->digest, NULL) != 1)
        s->failed = 1;
    return NULL;
}

/* The calling thread's loop: whole-file SHA-256, progress, and a loose lock-step with the
 * helper (never more than two chunks ahead) so pages are shared while still resident. */
static int main_loop(stream *whole, stream *helper, const char *path, mood_progress_fn progress,
                     void *payload)
{
    int err = 0;
    for (uint64_t at = 0; at < whole->size && !atomic_load(whole->stop); at += CHUNK) {
        uint64_t n = whole->size - at < CHUNK ? whole->size - at : CHUNK;
        while (helper && atomic_load(&helper->position) + 2 * (uint64_t)CHUNK < at &&
               !atomic_load(whole->stop))
            sched_yield();
        if (stream_chunk(whole, at, n) != 0) {
            err = mood_error_set(MOOD_EIO, "%s: SHA-256 failed", path);
            break;
        }
        if (progress) {
            mood_progress p = {"hash", at + n, whole->size};
            if (progress(&p, payload) != 0) {
                err = mood_error_set(MOOD_ECANCELLED, "%s: hashing cancelled", path);
                break;
            }
        }
    }
    if (err)
        atomic_store(whole->stop, 1);
    else if (EVP_DigestFinal_ex(whole->ctx, whole->digest, NULL) != 1)
        err = mood_error_set(MOOD_EIO, "%s: SHA-256 failed", path);
    return err;
}

/* The header length N when the file looks like safetensors, else 0 with *ok = 0. */
static uint64_t plausible_header(const mood_map *m, int *ok)
{
    uint64_t n = 0;
    *ok = 0;
    if (m->size < 10)
        return 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | m->data[i];
    if (n < 2 || n > m->size - 8 || m->data[8] != '{')
        return 0;
    *ok = 1;
    return n;
}

static void copy_meta(char *dst, size_t cap, const cJSON *meta, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    if (cJSON_IsString(v))
        snprintf(dst, cap, "%s", v->valuestring);
}

/* Reads only the two sshs_* keys; a header that is not valid JSON simply has none. */
static int read_embedded(mood_file_hashes *out, const mood_map *m, uint64_t n)
{
    cJSON *root = cJSON_ParseWithLength((const char *)m->data + 8, (size_t)n);
    const cJSON *meta;
    if (!root)
        return cJSON_GetErrorPtr() ? 0 : mood_error_nomem();
    meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    if (cJSON_IsObject(meta)) {
        copy_meta(out->sshs_model_hash, sizeof out->sshs_model_hash, meta, "sshs_model_hash");
        copy_meta(out->sshs_legacy_hash, sizeof out->sshs_legacy_hash, meta, "sshs_legacy_hash");
    }
    cJSON_Delete(root);
    return 0;
}

static void set_crc(mood_file_hashes *out, uLong crc)
{
    uint32_t c = (uint32_t)crc;
    snprintf(out->crc32_zlib, sizeof out->crc32_zlib, "%08X", (unsigned)c);
    /* Civitai prints the CRC's bytes in memory (little-endian) order. */
    snprintf(out->crc32, sizeof out->crc32, "%02X%02X%02X%02X", (unsigned)(c & 0xFF),
             (unsigned)((c >> 8) & 0xFF), (unsigned)((c >> 16) & 0xFF), (unsigned)(c >> 24));
}

static void set_autov1(mood_file_hashes *out, const mood_map *m)
{
    char hex[65];
    uint64_t b = AUTOV1_BEGIN, e = AUTOV1_END;
    if (b > m->size)
        b = m->size;
    if (e > m->size)
        e = m->size;
    mood_sha256_hex(hex, m->data ? m->data + b : (const uint8_t *)"", (size_t)(e - b));
    memcpy(out->autov1, hex, 8);
    out->autov1[8] = '\0';
    out->autov1_civitai = m->size >= CIVITAI_AUTOV1_MIN;
}

/* Runs both streams: the helper thread when there is a data section to hash separately. */
static int run_streams(stream *whole, stream *data, const char *path, mood_progress_fn progress,
                       void *payload)
{
    pthread_t tid;
    int threaded = pthread_create(&tid, NULL, stream_run, data) == 0;
    int err;
    if (!threaded)
        stream_run(data); /* no thread available: hash the two streams one after the other */
    err = main_loop(whole, threaded ? data : NULL, path, progress, payload);
    if (threaded)
        pthread_join(tid, NULL);
    if (!err && data->failed)
        err = mood_error_set(MOOD_EIO, "%s: SHA-256 failed", path);
    return err;
}

int mood_hash_file(mood_file_hashes *out, const char *path, mood_progress_fn progress,
                   void *payload)
{
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(path);
    return mood_hash_file_ex(out, path, 0, progress, payload);
}

int mood_hash_file_ex(mood_file_hashes *out, const char *path, unsigned flags,
                      mood_progress_fn progress, void *payload)
{
    int crc = !(flags & MOOD_HASH_SKIP_CRC32);
    mood_map m = {0};
    _Atomic int stop = 0;
    stream whole = {0}, data = {0};
    uint64_t n;
    int err;
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    MOOD_ARG_NONNULL(path);
    if ((err = mood_map_file(&m, path)) != 0)
        goto done;
    if (m.data)
        madvise((void *)m.data, (size_t)m.size, MADV_SEQUENTIAL);
    out->size = m.size;
    n = plausible_header(&m, &out->is_safetensors);
    /* The CRC is split between the threads (the data-section digest is the smaller job when the
     * header is small, so it takes the second half) and joined with crc32_combine. */
    whole =
        (stream){.data = m.data, .size = m.size, .stop = &stop, .crc_end = crc ? m.size / 2 : 0};
    data = (stream){.data = m.data,
                    .size = m.size,
                    .stop = &stop,
                    .begin = out->is_safetensors ? 8 + n : m.size,
                    .crc_begin = m.size / 2,
                    .crc_end = crc ? m.size : m.size / 2};
    whole.crc = data.crc = crc32_z(0L, Z_NULL, 0);
    whole.ctx = EVP_MD_CTX_new();
    data.ctx = EVP_MD_CTX_new();
    if (!whole.ctx || !data.ctx) {
        err = mood_error_nomem();
        goto done;
    }
    if (EVP_DigestInit_ex(whole.ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestInit_ex(data.ctx, EVP_sha256(), NULL) != 1) {
        err = mood_error_set(MOOD_EIO, "%s: SHA-256 is unavailable", path);
        goto done;
    }
    if (out->is_safetensors && (err = read_embedded(out, &m, n)) != 0)
        goto done;
    if ((err = run_streams(&whole, &data, path, progress, payload)) != 0)
        goto done;
    to_hex(out->sha256, whole.digest, 32);
    if (out->is_safetensors)
        to_hex(out->autov3, data.digest, 32);
    if (crc)
        set_crc(out, crc32_combine(whole.crc, data.crc, (z_off_t)(m.size - m.size / 2)));
    set_autov1(out, &m);
done:
    EVP_MD_CTX_free(whole.ctx);
    EVP_MD_CTX_free(data.ctx);
    mood_unmap(&m);
    return err;
}

void mood_sha256_hex(char hex_out[65], const void *data, size_t size)
{
    unsigned char digest[32];
    unsigned int len = 0;
    if (EVP_Digest(size ? data : "", size, digest, &len, EVP_sha256(), NULL) != 1 || len != 32) {
        hex_out[0] = '\0';
        return;
    }
    to_hex(hex_out, digest, 32);
}

/* Whether s[0..n) are hex digits and s ends there. */
static int is_hex_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    }
    return s[n] == '\0';
}

const char *mood_sshs_status(const mood_file_hashes *h, const char **why)
{
    static const char empty_sha[] =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const char *v = h->sshs_model_hash;
    const char *status;
    if (!v[0]) {
        status = "absent";
        *why = "";
    } else if (h->is_safetensors && is_hex_digits(v, 64) && strcasecmp(v, h->autov3) == 0) {
        status = "match";
        *why = "matches the computed AutoV3";
    } else if (strcasecmp(v, empty_sha) == 0) {
        status = "empty_input";
        *why = "MISMATCH: SHA-256 of empty input (a bogus value some trainers write)";
    } else if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X') && is_hex_digits(v + 2, strlen(v + 2))) {
        status = "per_tensor_0x";
        *why = "MISMATCH: LyCORIS/kohya per-tensor \"0x\" hash, not AutoV3 (A1111 shows it, "
               "Civitai does not know it)";
    } else if (!is_hex_digits(v, 64)) {
        status = "malformed";
        *why = "MISMATCH: not a SHA-256 hex digest";
    } else {
        status = "mismatch";
        *why = "MISMATCH: differs from the computed AutoV3 (stale after re-saving?)";
    }
    return status;
}
