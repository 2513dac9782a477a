/*
 * test_safetensors.c: the safetensors reader and writer.
 *   (a) every rejection rule of lora-formats.md §1.3, each with a crafted file: the open must fail
 *       with MOOD_EFORMAT and a message naming the file and the problem;
 *   (b) valid edge cases: 0-d scalar, zero-size dimension, metadata only, sub-byte dtypes;
 *   (c) the writer against files written by Python safetensors (tests/fixtures/st/layout_*):
 *       byte-identical output (metadata order aside when a file has several keys) and
 *       mood_st_writer_data_sha256 equal to the file's AutoV3;
 *   (d) allocation-failure injection on open: every failure is MOOD_ENOMEM, never a crash/leak;
 *   (e) the atomic writer under a file-size limit: MOOD_EIO naming the path, nothing left behind.
 */
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "common/common.h"
#include "harness.h"
#include "mood/hash.h"
#include "mood/safetensors.h"

/* Writes u64le(N) + header + `data_len` bytes of data (0, 1, 2, ...) to a scratch file. */
static const char *craft(const char *name, const char *header, uint64_t n_override, size_t data_len)
{
    const char *path = scratch_path(name);
    size_t hlen = strlen(header);
    uint64_t n = n_override ? n_override : hlen;
    unsigned char *buf = malloc(8 + hlen + data_len + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + hlen + i] = (unsigned char)i;
    if (write_file(path, buf, 8 + hlen + data_len) != 0)
        fprintf(stderr, "cannot write %s\n", path);
    free(buf);
    return path;
}

/* Opens `path`, expecting MOOD_EFORMAT and a message with the path and `word`. */
static void expect_reject(const char *path, const char *word)
{
    mood_st_file *f = NULL;
    int rc = mood_st_open(&f, path);
    const char *msg = mood_error_last();
    MOOD_CHECK_MSG(rc == MOOD_EFORMAT, "%s: rc %d (%s)", path, rc, msg);
    MOOD_CHECK_MSG(strstr(msg, path) != NULL, "message lacks the path: %s", msg);
    MOOD_CHECK_MSG(strstr(msg, word) != NULL, "message lacks \"%s\": %s", word, msg);
    MOOD_CHECK(f == NULL);
    mood_st_close(f);
}

#define T1(dt, shape, off)                                                                         \
    "{\"t\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" off "}}"

static void test_reject_container(void)
{
    const char *p = scratch_path("short.safetensors");
    static const char html[] =
        "<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n";
    static const char pickle[] = "\x80\x02\x8a\x0alZ\xd0\x0c\x00\x00\x00\x00\x00\x00";
    MOOD_CHECK(write_file(p, "\x02\0\0\0", 4) == 0);
    expect_reject(p, "too short");
    /* files that are something else name it (a 'header length' out of a page's bytes did not) */
    {
        static const struct {
            const char *file, *bytes, *says;
            size_t n;
        } other[] = {
            {"page.safetensors", html, "web page", sizeof html - 1},
            {"pickle.safetensors", pickle, "pickle", sizeof pickle - 1},
            {"zip.safetensors", "PK\x03\x04\x14\0\0\0\x08\0", "ZIP", 10},
            {"png.safetensors", "\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "an image", 16},
            {"jpeg.safetensors", "\xff\xd8\xff\xe0\0\x10JFIF\0", "an image", 11},
            {"gguf.safetensors", "GGUF\x03\0\0\0\0\0\0\0", "GGUF", 12},
        };
        for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
            p = scratch_path(other[i].file);
            MOOD_CHECK(write_file(p, other[i].bytes, other[i].n) == 0);
            expect_reject(p, other[i].says);
        }
    }
    expect_reject(craft("huge.safetensors", "{}", 100000001, 0), "100 MB");
    expect_reject(craft("pasteof.safetensors", "{}", 64, 0), "past the end");
    expect_reject(craft("nobrace.safetensors", " {}     ", 0, 0), "'{'");
    expect_reject(craft("array.safetensors", "[{}]    ", 0, 0), "'{'");
    expect_reject(craft("utf8.safetensors", "{\"a\xff\":{}}", 0, 0), "UTF-8");
    expect_reject(craft("overlong.safetensors", "{\"\xc0\xaf\":1}", 0, 0), "UTF-8");
    expect_reject(craft("json.safetensors", "{\"t\":{\"dtype\":\"F32\",}", 0, 0), "JSON");
    expect_reject(craft("trailing.safetensors", "{}  x", 0, 0), "trailing");
    /* a raw control character (here in a name, which it would also have cut short) */
    expect_reject(craft("control.safetensors",
                        "{\"a\x01"
                        "b\":{}}",
                        0, 0),
                  "control character 0x01");
    expect_reject(craft("entry.safetensors", "{\"t\":5}", 0, 0), "not an object");
    expect_reject(craft("metaobj.safetensors", "{\"__metadata__\":[\"a\"]}", 0, 0), "__metadata__");
    expect_reject(craft("metastr.safetensors", "{\"__metadata__\":{\"a\":1}}", 0, 0),
                  "not a string");
    expect_reject(craft("metanested.safetensors", "{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, 0),
                  "not a string");
}

static void test_reject_entries(void)
{
    expect_reject(craft("dtype.safetensors", T1("F17", "[1]", "[0,4]"), 0, 4), "dtype");
    expect_reject(craft("dtypecase.safetensors", T1("f32", "[1]", "[0,4]"), 0, 4), "dtype");
    expect_reject(craft("missing.safetensors", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 4),
                  "data_offsets");
    expect_reject(craft("extra.safetensors",
                        "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
                        0, 4),
                  "unexpected field");
    expect_reject(craft("shapefloat.safetensors", T1("F32", "[1.5]", "[0,4]"), 0, 4), "shape");
    expect_reject(craft("shapeneg.safetensors", T1("F32", "[-1]", "[0,4]"), 0, 4), "shape");
    expect_reject(craft("shapestr.safetensors", T1("F32", "[\"1\"]", "[0,4]"), 0, 4), "shape");
    expect_reject(craft("shapenotarr.safetensors", T1("F32", "1", "[0,4]"), 0, 4), "shape");
    expect_reject(craft("offfloat.safetensors", T1("F32", "[1]", "[0,4.5]"), 0, 4), "data_offsets");
    expect_reject(craft("offneg.safetensors", T1("F32", "[1]", "[-4,0]"), 0, 4), "data_offsets");
    expect_reject(craft("offthree.safetensors", T1("F32", "[1]", "[0,4,8]"), 0, 4), "data_offsets");
    expect_reject(craft("size.safetensors", T1("F32", "[2]", "[0,4]"), 0, 4), "need 8");
    expect_reject(craft("reversed.safetensors", T1("F32", "[0]", "[4,0]"), 0, 4), "data_offsets");
    expect_reject(
        craft("overflow.safetensors", T1("F32", "[4294967296,4294967296]", "[0,4]"), 0, 4),
        "overflow");
    expect_reject(craft("rank.safetensors", T1("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 0, 4),
                  "dimensions");
    expect_reject(craft("subbyte.safetensors", T1("F4", "[3]", "[0,2]"), 0, 2), "whole bytes");
}

#define E(name, b, e)                                                                              \
    "\"" name "\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[" #b "," #e "]}"

static void test_reject_layout(void)
{
    expect_reject(craft("overlap.safetensors", "{" E("a", 0, 4) "," E("b", 2, 6) "}", 0, 6),
                  "overlap");
    expect_reject(craft("gap.safetensors", "{" E("a", 0, 4) "," E("b", 6, 10) "}", 0, 10), "gap");
    expect_reject(craft("start.safetensors", "{" E("a", 2, 6) "}", 0, 6), "gap");
    expect_reject(craft("tail.safetensors", "{" E("a", 0, 4) "}", 0, 7), "trailing bytes");
    expect_reject(craft("truncated.safetensors", "{" E("a", 0, 4) "," E("b", 4, 8) "}", 0, 6),
                  "truncated");
    expect_reject(craft("dup.safetensors", "{" E("a", 0, 4) "," E("a", 4, 8) "}", 0, 8),
                  "duplicate");
    expect_reject(craft("dupsame.safetensors", "{" E("a", 0, 4) "," E("a", 0, 4) "}", 0, 4), "a");
    expect_reject(craft("dupmeta.safetensors",
                        "{\"__metadata__\":{\"k\":\"v\"},\"__metadata__\":{\"k\":\"v\"}}", 0, 0),
                  "duplicate");
}

static mood_st_file *open_ok(const char *path)
{
    mood_st_file *f = NULL;
    MOOD_CHECK_OK(mood_st_open(&f, path));
    return f;
}

static void test_valid_edges(void)
{
    mood_st_file *f;
    const mood_st_tensor *t;
    float v;
    f = open_ok(craft("scalar.safetensors", T1("F32", "[]", "[0,4]") "    ", 0, 4));
    if (f && (t = mood_st_find(f, "t")) != NULL) {
        MOOD_CHECK(t->ndim == 0 && mood_st_numel(t) == 1 && mood_st_nbytes(t) == 4);
        MOOD_CHECK_OK(mood_st_to_f32(&v, t));
        MOOD_CHECK(memcmp(&v, "\0\1\2\3", 4) == 0);
    }
    MOOD_CHECK(f && mood_st_find(f, "t") && !mood_st_find(f, "u"));
    mood_st_close(f);
    f = open_ok(
        craft("zerodim.safetensors",
              "{\"z\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[0,0]}," E("a", 0, 4) "}",
              0, 4));
    MOOD_CHECK(f && mood_st_count(f) == 2);
    if (f) {
        t = mood_st_find(f, "z");
        MOOD_CHECK(t && mood_st_numel(t) == 0 && mood_st_nbytes(t) == 0 && t->shape[1] == 3);
        MOOD_CHECK_OK(mood_st_to_f32(&v, t));
    }
    mood_st_close(f);
    f = open_ok(craft("metaonly.safetensors", "{\"__metadata__\":{\"k\":\"v\",\"e\":\"\"}}", 0, 0));
    MOOD_CHECK(f && mood_st_count(f) == 0 && mood_st_meta_count(f) == 2);
    MOOD_CHECK(f && strcmp(mood_st_meta_get(f, "k"), "v") == 0 && !mood_st_meta_get(f, "x"));
    MOOD_CHECK(f && strcmp(mood_st_meta_key(f, 1), "e") == 0);
    mood_st_close(f);
    f = open_ok(craft("empty.safetensors", "{}", 0, 0));
    MOOD_CHECK(f && mood_st_count(f) == 0 && mood_st_meta_count(f) == 0);
    mood_st_close(f);
    f = open_ok(craft("subbyte_ok.safetensors",
                      "{\"a\":{\"dtype\":\"F4\",\"shape\":[2,2],\"data_offsets\":[0,2]},"
                      "\"b\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[2,5]}}",
                      0, 5));
    MOOD_CHECK(f && mood_st_count(f) == 2);
    if (f) {
        t = mood_st_find(f, "b");
        MOOD_CHECK(t && t->dtype == MOOD_DTYPE_F6_E2M3 && mood_st_nbytes(t) == 3);
        MOOD_CHECK(t && mood_st_to_f32(&v, t) == MOOD_EUNSUPPORTED);
    }
    mood_st_close(f);
}

/* Position just past the "__metadata__" object of a header that starts with it (the reference
 * writer puts it first), found by scanning JSON strings; 0 when the header has no metadata. */
static size_t metadata_end(const unsigned char *h, size_t n)
{
    static const char prefix[] = "{\"__metadata__\":{";
    size_t i = sizeof prefix - 1;
    int in_string = 0;
    if (n < i || memcmp(h, prefix, i) != 0)
        return 0;
    for (; i < n; i++) {
        if (in_string && h[i] == '\\')
            i++;
        else if (h[i] == '"')
            in_string = !in_string;
        else if (!in_string && h[i] == '}')
            return i + 1;
    }
    return 0;
}

/* Rewrites one reference file with mood_st_writer and compares the results. */
static void check_rewrite(const char *path)
{
    mood_st_file *f = open_ok(path);
    mood_st_writer *w = NULL;
    const char *out = scratch_path("rewrite.safetensors");
    unsigned char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0, hlen;
    char hex[65];
    mood_file_hashes h;
    if (!f)
        return;
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    for (size_t i = 0; w && i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        MOOD_CHECK_OK(mood_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data));
    }
    for (size_t i = 0; w && i < mood_st_meta_count(f); i++)
        MOOD_CHECK_OK(mood_st_writer_set_meta(w, mood_st_meta_key(f, i), mood_st_meta_value(f, i)));
    MOOD_CHECK_OK(mood_st_writer_write(w, out, NULL, NULL));
    MOOD_CHECK_OK(mood_st_writer_data_sha256(w, hex));
    MOOD_CHECK_OK(mood_hash_file(&h, path, NULL, NULL));
    MOOD_CHECK_MSG(strcmp(hex, h.autov3) == 0, "%s: writer data sha %s, file AutoV3 %s", path, hex,
                   h.autov3);
    a = read_file(path, &na);
    b = read_file(out, &nb);
    MOOD_CHECK_MSG(a && b && na == nb, "%s: %zu bytes, rewritten %zu", path, na, nb);
    if (a && b && na == nb) {
        hlen = 8 + mood_st_header_len(f);
        size_t skip = mood_st_meta_count(f) > 1 ? metadata_end(a + 8, hlen - 8) : 0;
        MOOD_CHECK_MSG(mood_st_meta_count(f) <= 1 || skip > 0, "%s: metadata not first", path);
        /* Several metadata keys: same bytes outside the metadata object. */
        MOOD_CHECK_MSG(memcmp(a, b, skip ? 8 + 17 : na) == 0 &&
                           memcmp(a + 8 + skip, b + 8 + skip, na - 8 - skip) == 0,
                       "%s: rewritten file differs", path);
    }
    free(a);
    free(b);
    mood_st_writer_free(w);
    mood_st_close(f);
}

static void test_writer_matches_python(void)
{
    const char *dir = fixture("st");
    DIR *d = opendir(dir);
    struct dirent *e;
    int seen = 0;
    if (!d) {
        MOOD_CHECK_MSG(0, "no fixture folder %s", dir);
        return;
    }
    while ((e = readdir(d)) != NULL) {
        char path[1024];
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "layout_", 7) != 0 || n < 12 ||
            strcmp(e->d_name + n - 12, ".safetensors") != 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        check_rewrite(path);
        seen++;
    }
    closedir(d);
    MOOD_CHECK_MSG(seen >= 3, "only %d layout_*.safetensors fixtures", seen);
}

static void test_alloc_failures(void)
{
    const char *path = fixture("kohya/sd1_lora.safetensors");
    long n;
    int rc = -1;
    for (n = 1; n < 100000 && rc != 0; n++) {
        mood_st_file *f = NULL;
        mood__alloc_fail_at(n);
        rc = mood_st_open(&f, path);
        mood__alloc_fail_at(0);
        MOOD_CHECK_MSG(rc == 0 || rc == MOOD_ENOMEM, "allocation %ld: rc %d (%s)", n, rc,
                       mood_error_last());
        MOOD_CHECK(rc == 0 ? f != NULL : f == NULL);
        if (rc != 0 && rc != MOOD_ENOMEM)
            break;
        mood_st_close(f);
    }
    MOOD_CHECK_MSG(rc == 0 && n > 3, "open never succeeded (%ld tries)", n);
}

/* Child process: writes a 1 MiB tensor under a 64 KiB file-size limit; exit 0 when the writer
 * reports MOOD_EIO naming the path. */
static int write_limited(const char *out)
{
    struct rlimit lim = {64 << 10, 64 << 10};
    static unsigned char data[1 << 20];
    int64_t shape[1] = {sizeof data};
    mood_st_writer *w = NULL;
    int rc;
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0 || mood_st_writer_new(&w) != 0 ||
        mood_st_writer_add(w, "big", MOOD_DTYPE_U8, 1, shape, data) != 0)
        return 3;
    rc = mood_st_writer_write(w, out, NULL, NULL);
    mood_st_writer_free(w);
    if (rc != MOOD_EIO || !strstr(mood_error_last(), out)) {
        fprintf(stderr, "writer under RLIMIT_FSIZE: rc %d, %s\n", rc, mood_error_last());
        return 1;
    }
    return 0;
}

static void test_atomic_write_fsize(void)
{
    const char *out = scratch_path("limited.safetensors");
    int status = -1, leftovers = 0;
    pid_t pid;
    DIR *d;
    struct dirent *e;
    fflush(stdout); /* the child must not print the parent's buffered lines again */
    pid = fork();
    if (pid == 0)
        _exit(write_limited(out));
    MOOD_CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    MOOD_CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    MOOD_CHECK(access(out, F_OK) != 0);
    d = opendir(scratch_dir());
    while (d && (e = readdir(d)) != NULL) {
        if (strstr(e->d_name, "limited.safetensors")) {
            fprintf(stderr, "left behind: %s\n", e->d_name);
            leftovers++;
        }
    }
    if (d)
        closedir(d);
    MOOD_CHECK(leftovers == 0);
}

/* A lazy tensor's bytes: i * 7 + 3, as bytes. */
static int fill_pattern(void *dst, uint64_t nbytes, void *payload)
{
    (void)payload;
    for (uint64_t i = 0; i < nbytes; i++)
        ((unsigned char *)dst)[i] = (unsigned char)(i * 7 + 3);
    return 0;
}

/* mood_st_writer_range_sha256 hashes what mood_st_writer_write writes over the same range
 * (kohya's sshs_legacy_hash of a LoRA is such a range, taken without writing the file): ranges
 * in the header, across the header's end, inside and across tensors, past the end. */
static void test_range_sha256(void)
{
    const char *path = scratch_path("range.safetensors");
    static float small[5] = {1, 2, 3, 4, 5};
    int64_t big_shape[1] = {1200 * 1024}, small_shape[1] = {5};
    mood_st_writer *w = NULL;
    unsigned char *bytes;
    size_t n = 0;
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    if (!w)
        return;
    MOOD_CHECK_OK(mood_st_writer_set_meta(w, "ss_network_dim", "4"));
    MOOD_CHECK_OK(
        mood_st_writer_add_lazy(w, "a.big", MOOD_DTYPE_U8, 1, big_shape, fill_pattern, NULL));
    MOOD_CHECK_OK(mood_st_writer_add(w, "b.small", MOOD_DTYPE_F32, 1, small_shape, small));
    MOOD_CHECK_OK(mood_st_writer_write(w, path, NULL, NULL));
    bytes = read_file(path, &n);
    MOOD_CHECK(bytes && n > 1200 * 1024);
    if (bytes) {
        uint64_t ranges[][2] = {{0, 100},     {50, 0x200},          {0x100000, 0x10000},
                                {n - 10, 10}, {n - 10, 0x10000},    {n, 0x10000},
                                {0, n},       {n / 2, n / 2 + 999}, {n + 5, 1}};
        for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
            uint64_t b = ranges[i][0], e = b + ranges[i][1];
            char want[65], got[65] = "";
            b = b < n ? b : n;
            e = e < n ? e : n;
            mood_sha256_hex(want, bytes + b, (size_t)(e - b));
            MOOD_CHECK_OK(mood_st_writer_range_sha256(w, ranges[i][0], ranges[i][1], got));
            MOOD_CHECK_MSG(strcmp(want, got) == 0, "range %zu: [%llu, +%llu): %s, file %s", i,
                           (unsigned long long)ranges[i][0], (unsigned long long)ranges[i][1], got,
                           want);
        }
    }
    free(bytes);
    mood_st_writer_free(w);
}

MOOD_TEST_MAIN(MOOD_T(test_reject_container), MOOD_T(test_reject_entries),
               MOOD_T(test_reject_layout), MOOD_T(test_valid_edges),
               MOOD_T(test_writer_matches_python), MOOD_T(test_alloc_failures),
               MOOD_T(test_atomic_write_fsize), MOOD_T(test_range_sha256))
