/*
 * test_hash.c: mood_hash_file and mood_sha256_hex against values computed by Python hashlib and
 * zlib (tests/fixtures/st/hashes.json, tools/make_fixtures_safetensors.py): every fixture file,
 * two generated files from the recipes in hashes.json (1.05 MiB: AutoV1 over a clipped range;
 * 2.2 MB: AutoV1 recorded by Civitai), the literal values ecosystem.md gives for
 * mock_ink_style.safetensors, the embedded sshs_* values, non-safetensors input, progress and
 * cancellation, a missing file, and inputs that are not regular files (a FIFO, a folder, a
 * device) refused without blocking.
 */
#include <cjson/cJSON.h>
#include <sys/stat.h>
#include <zlib.h>

#include "harness.h"
#include "mood/hash.h"

/* Builds a recipe file: u64le(len(header)) + header + data[i] = ((i * 2654435761) >> 13) & 0xFF
 * with the product taken mod 2^64. */
static const char *make_recipe(const cJSON *entry)
{
    const cJSON *recipe = cJSON_GetObjectItemCaseSensitive(entry, "recipe");
    const char *header = json_str(recipe, "header"), *name = json_str(entry, "name");
    const cJSON *len = cJSON_GetObjectItemCaseSensitive(recipe, "data_len");
    size_t hlen, dlen;
    unsigned char *buf;
    const char *path;
    if (!header || !name || !cJSON_IsNumber(len))
        return NULL;
    hlen = strlen(header);
    dlen = (size_t)len->valuedouble;
    buf = malloc(8 + hlen + dlen);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < dlen; i++)
        buf[8 + hlen + i] = (unsigned char)(((uint64_t)i * 2654435761u) >> 13);
    path = scratch_path(name);
    if (write_file(path, buf, 8 + hlen + dlen) != 0)
        path = NULL;
    free(buf);
    return path;
}

static void check_entry(const cJSON *entry, const char *path)
{
    mood_file_hashes h;
    const char *civ = json_str(entry, "autov1_civitai");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(entry, "size");
    MOOD_CHECK_OK(mood_hash_file(&h, path, NULL, NULL));
    MOOD_CHECK_MSG(cJSON_IsNumber(size) && h.size == (uint64_t)size->valuedouble, "%s", path);
    MOOD_CHECK_MSG(strcmp(h.sha256, json_str(entry, "sha256")) == 0, "%s: sha256 %s", path,
                   h.sha256);
    MOOD_CHECK_MSG(strncmp(h.sha256, json_str(entry, "autov2"), 10) == 0, "%s", path);
    MOOD_CHECK_MSG(strcmp(h.autov3, json_str(entry, "autov3")) == 0, "%s: autov3 %s", path,
                   h.autov3);
    MOOD_CHECK(h.is_safetensors);
    MOOD_CHECK_MSG(strcmp(h.autov1, json_str(entry, "autov1_a1111")) == 0, "%s: autov1 %s", path,
                   h.autov1);
    MOOD_CHECK_MSG(civ ? h.autov1_civitai && strcmp(civ, h.autov1) == 0 : !h.autov1_civitai,
                   "%s: autov1_civitai %d", path, h.autov1_civitai);
    MOOD_CHECK_MSG(strcmp(h.crc32, json_str(entry, "crc32_civitai")) == 0, "%s: crc32 %s", path,
                   h.crc32);
    MOOD_CHECK_MSG(strcmp(h.crc32_zlib, json_str(entry, "crc32_zlib")) == 0, "%s: crc32 zlib %s",
                   path, h.crc32_zlib);
}

static void test_against_python(void)
{
    cJSON *root = load_json(fixture("st/hashes.json"));
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files"), *entry;
    int checked = 0, recipes = 0;
    MOOD_CHECK_MSG(cJSON_IsArray(files), "cannot read %s", fixture("st/hashes.json"));
    cJSON_ArrayForEach(entry, files)
    {
        const char *file = json_str(entry, "file"), *path;
        char rel[512];
        if (file) {
            snprintf(rel, sizeof rel, "st/%s", file);
            path = fixture(rel);
        } else {
            path = make_recipe(entry);
            recipes++;
        }
        MOOD_CHECK_MSG(path != NULL, "entry %d has no file", checked);
        if (path)
            check_entry(entry, path);
        checked++;
    }
    MOOD_CHECK(checked >= 7 && recipes == 2);
    cJSON_Delete(root);
}

/* The values ecosystem.md lists for the Civitai mock (computed there with hashlib and zlib). */
static void test_mock_ink_style_literals(void)
{
    mood_file_hashes h;
    MOOD_CHECK_OK(mood_hash_file(&h, fixture("st/mock_ink_style.safetensors"), NULL, NULL));
    MOOD_CHECK(h.size == 220);
    MOOD_CHECK(
        strcmp(h.sha256, "3b4b65d6428f8f873a91db79353c66ea470c0de01e159cd805dfc4527ea37a59") == 0);
    MOOD_CHECK(
        strcmp(h.autov3, "e00e5eb9444182f352323374ef4e08ebcb784725fdd4fd612d7730540b3e0c8c") == 0);
    MOOD_CHECK(strcmp(h.crc32, "D04AE41E") == 0);
    MOOD_CHECK(strcmp(h.crc32_zlib, "1EE44AD0") == 0);
    MOOD_CHECK(strcmp(h.autov1, "e3b0c442") == 0 && !h.autov1_civitai);
    MOOD_CHECK(h.sshs_model_hash[0] == '\0' && h.sshs_legacy_hash[0] == '\0');
}

static void test_sha256_hex(void)
{
    char hex[65];
    mood_sha256_hex(hex, "", 0);
    MOOD_CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") ==
               0);
    mood_sha256_hex(hex, "abc", 3);
    MOOD_CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") ==
               0);
}

static const char *write_st(const char *name, const char *header)
{
    unsigned char buf[512];
    size_t n = strlen(header);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    memcpy(buf + 8 + n, "\0\0\x80\x3f", 4);
    MOOD_CHECK(write_file(scratch_path(name), buf, 8 + n + 4) == 0);
    return scratch_path(name);
}

static void test_embedded(void)
{
    mood_file_hashes h;
    const char *p = write_st(
        "sshs.safetensors",
        "{\"__metadata__\":{\"sshs_model_hash\":\"0xabc123\",\"sshs_legacy_hash\":\"e3b0c442\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}");
    char hex[65];
    MOOD_CHECK_OK(mood_hash_file(&h, p, NULL, NULL));
    MOOD_CHECK(strcmp(h.sshs_model_hash, "0xabc123") == 0);
    MOOD_CHECK(strcmp(h.sshs_legacy_hash, "e3b0c442") == 0);
    mood_sha256_hex(hex, "\0\0\x80\x3f", 4);
    MOOD_CHECK(h.is_safetensors && strcmp(h.autov3, hex) == 0);
    /* A header that is not JSON still gets AutoV3 (A1111 hashes after N regardless). */
    p = write_st("badjson.safetensors", "{not json");
    MOOD_CHECK_OK(mood_hash_file(&h, p, NULL, NULL));
    MOOD_CHECK(h.is_safetensors && strcmp(h.autov3, hex) == 0 && !h.sshs_model_hash[0]);
}

static void test_not_safetensors(void)
{
    mood_file_hashes h;
    const char *p = scratch_path("plain.bin"), *empty = scratch_path("empty.bin");
    char hex[65];
    MOOD_CHECK(write_file(p, "hello world, not a model", 24) == 0);
    MOOD_CHECK(write_file(empty, "", 0) == 0);
    MOOD_CHECK_OK(mood_hash_file(&h, p, NULL, NULL));
    mood_sha256_hex(hex, "hello world, not a model", 24);
    MOOD_CHECK(!h.is_safetensors && h.autov3[0] == '\0' && strcmp(h.sha256, hex) == 0);
    MOOD_CHECK_OK(mood_hash_file(&h, empty, NULL, NULL));
    MOOD_CHECK(h.size == 0 && !h.is_safetensors && strcmp(h.crc32, "00000000") == 0);
    MOOD_CHECK(strncmp(h.sha256, "e3b0c442", 8) == 0 && strcmp(h.autov1, "e3b0c442") == 0);
    MOOD_CHECK(mood_hash_file(&h, scratch_path("missing.bin"), NULL, NULL) == MOOD_ENOTFOUND);
    MOOD_CHECK(strstr(mood_error_last(), "missing.bin") != NULL);
}

/* A named pipe, a folder and a device are refused with MOOD_EINVAL, naming the file and what it
 * is. Opening a FIFO for reading waits for a writer: alarm() fails the test instead of hanging. */
static void test_not_regular(void)
{
    mood_file_hashes h;
    const char *fifo = scratch_path("pipe.safetensors");
    MOOD_CHECK(mkfifo(fifo, 0644) == 0);
    alarm(30);
    MOOD_CHECK(mood_hash_file(&h, fifo, NULL, NULL) == MOOD_EINVAL);
    alarm(0);
    MOOD_CHECK_MSG(
        strstr(mood_error_last(), "pipe.safetensors: not a regular file but a named pipe"), "%s",
        mood_error_last());
    MOOD_CHECK(mood_hash_file(&h, scratch_dir(), NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "not a regular file but a folder") != NULL);
    MOOD_CHECK(mood_hash_file(&h, "/dev/null", NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "/dev/null: not a regular file but a device") != NULL);
}

typedef struct {
    uint64_t last, total;
    int calls, cancel_after;
} progress_log;

static int on_progress(const mood_progress *p, void *payload)
{
    progress_log *log = payload;
    MOOD_CHECK(p->done >= log->last && p->done <= p->total);
    log->last = p->done;
    log->total = p->total;
    log->calls++;
    return log->cancel_after && log->calls >= log->cancel_after;
}

/* A 20 MiB file spans several of the hasher's chunks, and the CRC is split between its two
 * threads in the middle of one: every value must equal the single-shot computation. */
static void test_progress_and_cancel(void)
{
    const char *p = scratch_path("big.safetensors");
    size_t n = (20u << 20) + 12345;
    unsigned char *buf = malloc(n);
    progress_log log = {0};
    mood_file_hashes h;
    char hex[65], crc[9];
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)((i * 2654435761u) >> 13);
    memcpy(buf, "\x08\0\0\0\0\0\0\0{}      ", 16); /* header "{}" padded to 8 bytes */
    MOOD_CHECK(write_file(p, buf, n) == 0);
    MOOD_CHECK_OK(mood_hash_file(&h, p, on_progress, &log));
    MOOD_CHECK(log.calls >= 2 && log.last == n && log.total == n);
    mood_sha256_hex(hex, buf, n);
    MOOD_CHECK(strcmp(h.sha256, hex) == 0);
    mood_sha256_hex(hex, buf + 16, n - 16);
    MOOD_CHECK(h.is_safetensors && strcmp(h.autov3, hex) == 0);
    mood_sha256_hex(hex, buf + 0x100000, 0x10000);
    MOOD_CHECK(h.autov1_civitai && strncmp(h.autov1, hex, 8) == 0);
    snprintf(crc, sizeof crc, "%08lX", crc32(crc32(0L, Z_NULL, 0), buf, (uInt)n));
    MOOD_CHECK_MSG(strcmp(h.crc32_zlib, crc) == 0, "crc %s, zlib %s", h.crc32_zlib, crc);
    free(buf);
    memset(&log, 0, sizeof log);
    log.cancel_after = 1;
    MOOD_CHECK(mood_hash_file(&h, p, on_progress, &log) == MOOD_ECANCELLED);
    MOOD_CHECK(log.calls == 1);
}

MOOD_TEST_MAIN(MOOD_T(test_against_python), MOOD_T(test_mock_ink_style_literals),
               MOOD_T(test_sha256_hex), MOOD_T(test_embedded), MOOD_T(test_not_safetensors),
               MOOD_T(test_not_regular), MOOD_T(test_progress_and_cancel))
