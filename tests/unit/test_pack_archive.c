/*
 * test_pack_archive.c: the .moodpack container (styles/pack_archive.h): a valid round trip
 * (deterministic bytes, files as written), manifest validation, and hostile archives built here
 * with libarchive, each of which must be refused with MOOD_EFORMAT, a message naming the entry,
 * and nothing left in the destination.
 */
#include <dirent.h>
#include <sys/stat.h>

#include "harness.h"
#include "mood/hash.h"
#include "styles/archive_api.h" /* libarchive, loaded as the library loads it */
#include "styles/pack_archive.h"

/* ----- fixtures ------------------------------------------------------------------------------ */

static unsigned char adapter[256 << 10];
static unsigned char preview[300];
static char adapter_sha[65], preview_sha[65];
static char adapter_file[128], preview_file[128];

static void init_data(void)
{
    static int done;
    unsigned x = 12345;
    if (done)
        return;
    done = 1;
    for (size_t i = 0; i < sizeof adapter; i++) {
        x = x * 1103515245u + 12345u;
        adapter[i] = (unsigned char)(x >> 16);
    }
    for (size_t i = 0; i < sizeof preview; i++)
        preview[i] = (unsigned char)(i * 7);
    mood_sha256_hex(adapter_sha, adapter, sizeof adapter);
    mood_sha256_hex(preview_sha, preview, sizeof preview);
    snprintf(adapter_file, sizeof adapter_file, "adapters/%s.safetensors", adapter_sha);
    snprintf(preview_file, sizeof preview_file, "previews/%s.png", preview_sha);
}

/* A manifest listing the adapter (declared size `size`) and the preview. Static buffer. */
static const char *manifest_text(unsigned long size)
{
    static char text[4096];
    init_data();
    snprintf(text, sizeof text,
             "{\"schema_version\": 1, \"created_by\": \"test\", \"license\": \"CC-BY-4.0\","
             " \"adapters\": [{\"sha256\": \"%s\", \"file_name\": \"ink.safetensors\","
             " \"size\": %lu, \"family\": \"sd1\", \"air\": \"urn:air:sd1:lora:civitai:1@2\","
             " \"embedded\": true, \"file\": \"%s\"}],"
             " \"styles\": [{\"name\": \"ink\", \"trigger_words\": [\"ink wash\"], \"tags\": [],"
             " \"adapters\": [{\"sha256\": \"%s\", \"unet\": 0.8, \"te\": 0.5}],"
             " \"previews\": [{\"sha256\": \"%s\", \"file\": \"%s\", \"media_type\": "
             "\"image/png\"}]}],"
             " \"board\": []}",
             adapter_sha, size, adapter_file, adapter_sha, preview_sha, preview_file);
    return text;
}

/* One entry of a hand-built archive. */
typedef struct tentry {
    const char *name;
    const void *data;
    size_t size;
    mode_t type;      /* 0: regular file */
    const char *link; /* symlink target, or hardlink target when hard */
    int hard;
    long long sparse; /* > 0: a sparse entry of this real size holding `size` bytes */
} tentry;

/* Writes entries as tar (+ zstd when compress) to path with libarchive. */
static int build(const char *path, const tentry *e, size_t n, int compress)
{
    struct archive *a;
    int rc = 0;
    if (mood__archive_load() != 0 || !(a = archive_write_new()))
        return -1;
    archive_write_set_format_pax_restricted(a);
    if (compress)
        archive_write_add_filter_zstd(a);
    if (archive_write_open_filename(a, path) != ARCHIVE_OK)
        rc = -1;
    for (size_t i = 0; i < n && !rc; i++) {
        struct archive_entry *en = archive_entry_new();
        archive_entry_set_pathname(en, e[i].name);
        archive_entry_set_filetype(en, e[i].type ? e[i].type : AE_IFREG);
        archive_entry_set_perm(en, 0644);
        if (e[i].type == AE_IFCHR)
            archive_entry_set_rdev(en, 0x0103);
        if (e[i].link && e[i].hard)
            archive_entry_set_hardlink(en, e[i].link);
        else if (e[i].link)
            archive_entry_set_symlink(en, e[i].link);
        if (e[i].sparse > 0) {
            archive_entry_set_size(en, e[i].sparse);
            archive_entry_sparse_add_entry(en, 0, (la_int64_t)e[i].size);
        } else {
            archive_entry_set_size(en, (la_int64_t)(e[i].type ? 0 : e[i].size));
        }
        if (archive_write_header(a, en) != ARCHIVE_OK)
            rc = -1;
        else if (e[i].size && archive_write_data(a, e[i].data, e[i].size) < 0)
            rc = -1;
        archive_entry_free(en);
    }
    if (archive_write_close(a) != ARCHIVE_OK)
        rc = -1;
    archive_write_free(a);
    return rc;
}

static const char *dest_dir(void)
{
    const char *d = scratch_path("dest");
    mkdir(d, 0755);
    return d;
}

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* Reads path expecting MOOD_EFORMAT with `needle` in the message and an empty destination. */
static void expect_refused(const char *path, const mood__pack_limits *lim, const char *needle)
{
    mood__pack_extract x;
    int rc = mood__pack_read(&x, path, dest_dir(), lim, NULL, NULL);
    if (getenv("MOOD_TEST_VERBOSE"))
        printf("  refused: %s\n", mood_error_last());
    MOOD_CHECK_MSG(rc == MOOD_EFORMAT, "rc %d (%s)", rc, mood_error_last());
    MOOD_CHECK_MSG(strstr(mood_error_last(), needle) != NULL, "message '%s' lacks '%s'",
                   mood_error_last(), needle);
    MOOD_CHECK_MSG(dir_entries(dest_dir()) == 0, "%d files left behind", dir_entries(dest_dir()));
    MOOD_CHECK(x.dir == NULL && x.paths == NULL);
}

/* manifest + adapter + preview as regular entries, then `extra`. */
static void build_with(const char *path, const tentry *extra, size_t n_extra)
{
    tentry e[8];
    const char *m = manifest_text(sizeof adapter);
    size_t n = 0;
    e[n++] = (tentry){"manifest.json", m, strlen(m), 0, NULL, 0, 0};
    e[n++] = (tentry){adapter_file, adapter, sizeof adapter, 0, NULL, 0, 0};
    e[n++] = (tentry){preview_file, preview, sizeof preview, 0, NULL, 0, 0};
    for (size_t i = 0; i < n_extra && n < 8; i++)
        e[n++] = extra[i];
    MOOD_CHECK(build(path, e, n, 1) == 0);
}

/* ----- valid packs -----------------------------------------------------------------------------
 */

static void test_round_trip(void)
{
    const char *m = manifest_text(sizeof adapter), *a = scratch_path("a.moodpack"),
               *b = scratch_path("b.moodpack");
    mood__pack_src src[3];
    mood__pack_extract x;
    unsigned char *da, *db;
    size_t na = 0, nb = 0;
    init_data();
    /* given out of order: the writer puts manifest.json first and sorts the rest */
    src[0] = (mood__pack_src){preview_file, NULL, preview, sizeof preview, NULL};
    src[1] = (mood__pack_src){MOOD__PACK_MANIFEST, NULL, m, strlen(m), NULL};
    src[2] = (mood__pack_src){adapter_file, NULL, adapter, sizeof adapter, NULL};
    MOOD_CHECK_OK(mood__pack_write(a, src, 3, NULL, NULL));
    src[0] = (mood__pack_src){adapter_file, NULL, adapter, sizeof adapter, NULL};
    src[2] = (mood__pack_src){preview_file, NULL, preview, sizeof preview, NULL};
    MOOD_CHECK_OK(mood__pack_write(b, src, 3, NULL, NULL));
    da = read_file(a, &na);
    db = read_file(b, &nb);
    MOOD_CHECK(da && db && na == nb && memcmp(da, db, na) == 0);
    free(da);
    free(db);
    MOOD_CHECK_OK(mood__pack_read(&x, a, dest_dir(), NULL, NULL, NULL));
    MOOD_CHECK(x.manifest.n_files == 2);
    for (size_t i = 0; i < x.manifest.n_files; i++) {
        const int is_adapter = strcmp(x.manifest.files[i].name, adapter_file) == 0;
        unsigned char *d = read_file(x.paths[i], &na);
        MOOD_CHECK(d && na == (is_adapter ? sizeof adapter : sizeof preview) &&
                   memcmp(d, is_adapter ? (const void *)adapter : preview, na) == 0);
        free(d);
    }
    MOOD_CHECK(dir_entries(dest_dir()) == 1);
    mood__pack_extract_dispose(&x);
    MOOD_CHECK(dir_entries(dest_dir()) == 0);
}

static void test_entry_metadata(void)
{
    struct archive *r;
    struct archive_entry *e;
    int n = 0;
    if (mood__archive_load() != 0 || !(r = archive_read_new())) {
        MOOD_CHECK_MSG(0, "libarchive: %s", mood_error_last());
        return;
    }
    archive_read_support_filter_zstd(r);
    archive_read_support_format_tar(r);
    MOOD_CHECK(archive_read_open_filename(r, scratch_path("a.moodpack"), 1 << 16) == ARCHIVE_OK);
    while (archive_read_next_header(r, &e) == ARCHIVE_OK) {
        MOOD_CHECK(archive_entry_mtime(e) == 0 && archive_entry_uid(e) == 0 &&
                   archive_entry_gid(e) == 0 && (archive_entry_perm(e) & 07777) == 0644);
        MOOD_CHECK(n > 0 || strcmp(archive_entry_pathname(e), "manifest.json") == 0);
        n++;
    }
    MOOD_CHECK(n == 3);
    archive_read_free(r);
}

static void test_manifest_validation(void)
{
    static const char *const bad[] = {
        "[]",
        "{\"schema_version\": 2, \"created_by\": \"x\", \"adapters\": [], \"styles\": []}",
        "{\"schema_version\": 1, \"adapters\": [], \"styles\": [{\"name\": \"a\"}]}",
        "{\"schema_version\": 1, \"created_by\": \"x\", \"adapters\": [], \"styles\": []}",
        "{\"schema_version\": 1, \"created_by\": \"x\", \"adapters\": [{\"sha256\": \"ABC\","
        " \"file_name\": \"a\", \"size\": 1, \"family\": \"sd1\", \"embedded\": false}],"
        " \"styles\": [{\"name\": \"a\", \"adapters\": [{\"sha256\": \"ABC\", \"unet\": 1,"
        " \"te\": 1}]}]}",
    };
    mood__pack_manifest m;
    char buf[4096];
    init_data();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        MOOD_CHECK_MSG(mood__pack_manifest_parse(&m, bad[i], strlen(bad[i])) == MOOD_EFORMAT,
                       "case %zu accepted", i);
        MOOD_CHECK(strstr(mood_error_last(), "manifest.json") != NULL);
    }
    /* path tricks in file names */
    static const char *const names[] = {"adapters/../../x", "/etc/passwd",  "adapters/.hidden",
                                        "other/x",          "adapters/a/b", "adapters/",
                                        "adapters/a b"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        MOOD_CHECK_MSG(!mood__pack_file_name_ok(names[i]), "%s accepted", names[i]);
        snprintf(buf, sizeof buf,
                 "{\"schema_version\": 1, \"created_by\": \"x\", \"adapters\": [{\"sha256\": "
                 "\"%s\", \"file_name\": \"a\", \"size\": 1, \"family\": \"sd1\", \"embedded\": "
                 "true, \"file\": \"%s\"}], \"styles\": [{\"name\": \"a\", \"adapters\": "
                 "[{\"sha256\": \"%s\", \"unet\": 1, \"te\": 1}]}]}",
                 adapter_sha, names[i], adapter_sha);
        MOOD_CHECK(mood__pack_manifest_parse(&m, buf, strlen(buf)) == MOOD_EFORMAT);
        MOOD_CHECK(strstr(mood_error_last(), "is not allowed") != NULL);
    }
    /* a style adapter missing from the adapter table */
    snprintf(buf, sizeof buf,
             "{\"schema_version\": 1, \"created_by\": \"x\", \"adapters\": [], \"styles\": "
             "[{\"name\": \"a\", \"adapters\": [{\"sha256\": \"%s\", \"unet\": 1, \"te\": 1}]}]}",
             adapter_sha);
    MOOD_CHECK(mood__pack_manifest_parse(&m, buf, strlen(buf)) == MOOD_EFORMAT);
    MOOD_CHECK(strstr(mood_error_last(), "not in the adapter table") != NULL);
    MOOD_CHECK(mood__pack_file_name_ok("previews/abc.png") &&
               mood__pack_file_name_ok("board/1.jpg"));
    MOOD_CHECK_OK(mood__pack_manifest_parse(&m, manifest_text(1), strlen(manifest_text(1))));
    mood__pack_manifest_dispose(&m);
    /* board thumbnails name a style of the pack, and a plain file name */
    static const char *const board[][2] = {
        {"\"style\": \"ink\", \"name\": \"a.png\", \"width\": 40, \"height\": 30", NULL},
        {"\"name\": \"a.png\"", NULL},
        {"\"style\": \"other\"", "style 'other' is not in the pack"},
        {"\"style\": \"ink\", \"name\": \"../x/a.png\"", "must be a file name"},
        {"\"style\": \"ink\", \"width\": -1", "\"width\" must be a number"},
    };
    for (size_t i = 0; i < sizeof board / sizeof board[0]; i++) {
        const char *t = manifest_text(1);
        size_t cut = strlen(t) - strlen("[]}");
        snprintf(buf, sizeof buf, "%.*s[{\"sha256\": \"%s\", \"file\": \"board/%s.jpg\", %s}]}",
                 (int)cut, t, preview_sha, preview_sha, board[i][0]);
        if (!board[i][1]) {
            MOOD_CHECK_MSG(mood__pack_manifest_parse(&m, buf, strlen(buf)) == 0, "board %zu: %s", i,
                           mood_error_last());
            mood__pack_manifest_dispose(&m);
        } else {
            MOOD_CHECK(mood__pack_manifest_parse(&m, buf, strlen(buf)) == MOOD_EFORMAT);
            MOOD_CHECK_MSG(strstr(mood_error_last(), board[i][1]) != NULL, "board %zu: %s", i,
                           mood_error_last());
        }
    }
}

/* ----- hostile archives ------------------------------------------------------------------------
 */

static void test_absolute_path(void)
{
    tentry x = {"/tmp/mood-evil", "x", 1, 0, NULL, 0, 0};
    build_with(scratch_path("abs.moodpack"), &x, 1);
    expect_refused(scratch_path("abs.moodpack"), NULL, "entry '/tmp/mood-evil': absolute path");
}

static void test_traversal(void)
{
    tentry x = {"adapters/../../evil", "x", 1, 0, NULL, 0, 0};
    build_with(scratch_path("dotdot.moodpack"), &x, 1);
    expect_refused(scratch_path("dotdot.moodpack"), NULL, "entry 'adapters/../../evil': path");
}

static void test_symlink(void)
{
    tentry x = {"board/link.png", NULL, 0, AE_IFLNK, "/etc/passwd", 0, 0};
    build_with(scratch_path("sym.moodpack"), &x, 1);
    expect_refused(scratch_path("sym.moodpack"), NULL, "entry 'board/link.png': symbolic link");
}

static void test_hardlink(void)
{
    tentry x = {"board/hard.png", NULL, 0, 0, "manifest.json", 1, 0};
    build_with(scratch_path("hard.moodpack"), &x, 1);
    expect_refused(scratch_path("hard.moodpack"), NULL, "entry 'board/hard.png': hard link");
}

static void test_device_and_fifo(void)
{
    tentry dev = {"board/dev", NULL, 0, AE_IFCHR, NULL, 0, 0};
    tentry fifo = {"board/fifo", NULL, 0, AE_IFIFO, NULL, 0, 0};
    build_with(scratch_path("dev.moodpack"), &dev, 1);
    expect_refused(scratch_path("dev.moodpack"), NULL, "entry 'board/dev': device file");
    build_with(scratch_path("fifo.moodpack"), &fifo, 1);
    expect_refused(scratch_path("fifo.moodpack"), NULL, "entry 'board/fifo': device file, FIFO");
}

static void test_directory_as_file(void)
{
    const char *m = manifest_text(sizeof adapter);
    tentry e[3] = {{"manifest.json", m, strlen(m), 0, NULL, 0, 0},
                   {adapter_file, NULL, 0, AE_IFDIR, NULL, 0, 0},
                   {preview_file, preview, sizeof preview, 0, NULL, 0, 0}};
    char name[256];
    MOOD_CHECK(build(scratch_path("dir.moodpack"), e, 3, 1) == 0);
    snprintf(name, sizeof name, "entry '%s", adapter_file);
    expect_refused(scratch_path("dir.moodpack"), NULL, name);
    expect_refused(scratch_path("dir.moodpack"), NULL, "directory");
}

static void test_duplicate(void)
{
    tentry x = {preview_file, preview, sizeof preview, 0, NULL, 0, 0};
    char name[256];
    build_with(scratch_path("dup.moodpack"), &x, 1);
    snprintf(name, sizeof name, "entry '%s': duplicate entry", preview_file);
    expect_refused(scratch_path("dup.moodpack"), NULL, name);
}

static void test_not_in_manifest(void)
{
    tentry x = {"board/extra.png", "x", 1, 0, NULL, 0, 0};
    build_with(scratch_path("extra.moodpack"), &x, 1);
    expect_refused(scratch_path("extra.moodpack"), NULL,
                   "entry 'board/extra.png': not listed in manifest.json");
}

static void test_manifest_not_first(void)
{
    const char *m = manifest_text(sizeof adapter);
    tentry e[2] = {{adapter_file, adapter, sizeof adapter, 0, NULL, 0, 0},
                   {"manifest.json", m, strlen(m), 0, NULL, 0, 0}};
    char name[256];
    MOOD_CHECK(build(scratch_path("order.moodpack"), e, 2, 1) == 0);
    snprintf(name, sizeof name, "entry '%s': the first entry", adapter_file);
    expect_refused(scratch_path("order.moodpack"), NULL, name);
}

static void test_missing_file(void)
{
    const char *m = manifest_text(sizeof adapter);
    tentry e[2] = {{"manifest.json", m, strlen(m), 0, NULL, 0, 0},
                   {adapter_file, adapter, sizeof adapter, 0, NULL, 0, 0}};
    char name[256];
    MOOD_CHECK(build(scratch_path("missing.moodpack"), e, 2, 1) == 0);
    snprintf(name, sizeof name, "entry '%s': listed in manifest.json but missing", preview_file);
    expect_refused(scratch_path("missing.moodpack"), NULL, name);
}

static void test_oversized_by_header(void)
{
    mood__pack_limits lim;
    char name[256];
    mood__pack_limits_init(&lim);
    lim.max_entry = 1000; /* the adapter is 256 KiB */
    build_with(scratch_path("big.moodpack"), NULL, 0);
    snprintf(name, sizeof name, "entry '%s': declared size %zu bytes passes the limit",
             adapter_file, sizeof adapter);
    expect_refused(scratch_path("big.moodpack"), &lim, name);
    /* each entry fits, the sum does not */
    mood__pack_limits_init(&lim);
    lim.max_total = strlen(manifest_text(sizeof adapter)) + sizeof adapter + 100;
    snprintf(name, sizeof name, "entry '%s': declared sizes pass the limit", preview_file);
    expect_refused(scratch_path("big.moodpack"), &lim, name);
}

/* A compression bomb: 64 MiB of zeros compress to a few KiB; refused at the limit. */
static void test_compression_bomb(void)
{
    size_t big = 64u << 20;
    unsigned char *zeros = calloc(1, big);
    char m[4096], sha[65], file[128];
    mood__pack_limits lim;
    struct stat st;
    mood_sha256_hex(sha, zeros, big);
    snprintf(file, sizeof file, "adapters/%s.safetensors", sha);
    snprintf(m, sizeof m,
             "{\"schema_version\": 1, \"created_by\": \"x\", \"adapters\": [{\"sha256\": \"%s\","
             " \"file_name\": \"z\", \"size\": %zu, \"family\": \"sd1\", \"embedded\": true,"
             " \"file\": \"%s\"}], \"styles\": [{\"name\": \"z\", \"adapters\": [{\"sha256\":"
             " \"%s\", \"unet\": 1, \"te\": 1}]}]}",
             sha, big, file, sha);
    tentry e[2] = {{"manifest.json", m, strlen(m), 0, NULL, 0, 0},
                   {file, zeros, big, 0, NULL, 0, 0}};
    MOOD_CHECK(build(scratch_path("bomb.moodpack"), e, 2, 1) == 0);
    MOOD_CHECK(stat(scratch_path("bomb.moodpack"), &st) == 0 && st.st_size < (1 << 20));
    mood__pack_limits_init(&lim);
    lim.max_total = 1u << 20;
    expect_refused(scratch_path("bomb.moodpack"), &lim, "pass the limit of 1048576 bytes");
    free(zeros);
}

/* A header that understates what the entry expands to: a sparse entry (tiny in the archive,
 * huge on disk) is refused outright. */
static void test_lying_header(void)
{
    tentry x = {"board/sparse.png", preview, sizeof preview, 0, NULL, 0, 1ll << 40};
    build_with(scratch_path("sparse.moodpack"), &x, 1);
    expect_refused(scratch_path("sparse.moodpack"), NULL, "entry 'board/sparse.png'");
}

static void test_hash_mismatch(void)
{
    const char *m = manifest_text(sizeof adapter);
    unsigned char other[sizeof adapter];
    char name[256];
    memcpy(other, adapter, sizeof other);
    other[100] ^= 1;
    tentry e[3] = {{"manifest.json", m, strlen(m), 0, NULL, 0, 0},
                   {adapter_file, other, sizeof other, 0, NULL, 0, 0},
                   {preview_file, preview, sizeof preview, 0, NULL, 0, 0}};
    MOOD_CHECK(build(scratch_path("hash.moodpack"), e, 3, 1) == 0);
    snprintf(name, sizeof name, "entry '%s': SHA-256", adapter_file);
    expect_refused(scratch_path("hash.moodpack"), NULL, name);
    expect_refused(scratch_path("hash.moodpack"), NULL, "does not match manifest.json");
    /* same content, but the manifest declares another size */
    m = manifest_text(sizeof adapter - 1);
    e[0] = (tentry){"manifest.json", m, strlen(m), 0, NULL, 0, 0};
    e[1] = (tentry){adapter_file, adapter, sizeof adapter, 0, NULL, 0, 0};
    MOOD_CHECK(build(scratch_path("size.moodpack"), e, 3, 1) == 0);
    expect_refused(scratch_path("size.moodpack"), NULL, "manifest.json says");
}

static void test_corrupt_and_truncated(void)
{
    const char *good = scratch_path("good.moodpack"), *bad = scratch_path("corrupt.moodpack");
    unsigned char *d;
    size_t n = 0;
    build_with(good, NULL, 0);
    d = read_file(good, &n);
    MOOD_CHECK(d && n > 200);
    if (!d)
        return;
    /* flip bytes in the middle of the zstd stream */
    for (size_t i = n / 2; i < n / 2 + 16; i++)
        d[i] ^= 0xa5;
    MOOD_CHECK(write_file(bad, d, n) == 0);
    expect_refused(bad, NULL, "entry '");
    for (size_t i = n / 2; i < n / 2 + 16; i++)
        d[i] ^= 0xa5;
    /* damage the first compressed block (the manifest's): refused before any entry is read */
    for (size_t i = 12; i < 40; i++)
        d[i] ^= 0x5a;
    MOOD_CHECK(write_file(scratch_path("corrupt2.moodpack"), d, n) == 0);
    expect_refused(scratch_path("corrupt2.moodpack"), NULL, "corrupt2.moodpack");
    for (size_t i = 12; i < 40; i++)
        d[i] ^= 0x5a;
    /* cut in the middle of the adapter */
    MOOD_CHECK(write_file(scratch_path("cut.moodpack"), d, n * 2 / 3) == 0);
    expect_refused(scratch_path("cut.moodpack"), NULL, "entry '");
    /* not an archive at all, and an empty file */
    MOOD_CHECK(write_file(scratch_path("junk.moodpack"), "hello, world", 12) == 0);
    expect_refused(scratch_path("junk.moodpack"), NULL, "junk.moodpack");
    MOOD_CHECK(write_file(scratch_path("empty.moodpack"), "", 0) == 0);
    expect_refused(scratch_path("empty.moodpack"), NULL, "empty.moodpack");
    free(d);
}

/* Every allocation failure is reported as MOOD_ENOMEM and leaves nothing behind. */
static void test_alloc_failures(void)
{
    const char *m = manifest_text(sizeof adapter);
    char out[1024];
    mood__pack_src src[3] = {{MOOD__PACK_MANIFEST, NULL, m, strlen(m), NULL},
                             {adapter_file, NULL, adapter, sizeof adapter, NULL},
                             {preview_file, NULL, preview, sizeof preview, NULL}};
    int done = 0;
    snprintf(out, sizeof out, "%s", scratch_path("alloc.moodpack")); /* scratch_path rotates */
    for (long n = 1; n < 200 && !done; n++) {
        int rc;
        mood__alloc_fail_at(n);
        rc = mood__pack_write(out, src, 3, NULL, NULL);
        mood__alloc_fail_at(0);
        done = rc == 0;
        MOOD_CHECK_MSG(rc == 0 || rc == MOOD_ENOMEM, "write, failure %ld: %d %s", n, rc,
                       mood_error_last());
        MOOD_CHECK(done || !mood_path_exists(out));
        MOOD_CHECK(dir_entries(scratch_dir()) >= 0);
    }
    MOOD_CHECK(done);
    done = 0;
    for (long n = 1; n < 200 && !done; n++) {
        mood__pack_extract x;
        int rc;
        mood__alloc_fail_at(n);
        rc = mood__pack_read(&x, out, dest_dir(), NULL, NULL, NULL);
        mood__alloc_fail_at(0);
        done = rc == 0;
        MOOD_CHECK_MSG(rc == 0 || rc == MOOD_ENOMEM, "read, failure %ld: %d %s", n, rc,
                       mood_error_last());
        if (rc == 0)
            mood__pack_extract_dispose(&x);
        MOOD_CHECK(dir_entries(dest_dir()) == 0);
    }
    MOOD_CHECK(done);
}

/* What a reader killed mid-way left behind is removed by the next reader; live ones are kept. */
static void test_stale_cleanup(void)
{
    mood__pack_extract x;
    char stale[700], live[700], file[800];
    snprintf(stale, sizeof stale, "%s/.moodpack-999999999-abcdef", dest_dir());
    snprintf(live, sizeof live, "%s/.moodpack-%ld-abcdef", dest_dir(), (long)getpid());
    MOOD_CHECK(mkdir(stale, 0755) == 0 && mkdir(live, 0755) == 0);
    snprintf(file, sizeof file, "%s/0", stale);
    MOOD_CHECK(write_file(file, "x", 1) == 0);
    MOOD_CHECK_OK(mood__pack_read(&x, scratch_path("a.moodpack"), dest_dir(), NULL, NULL, NULL));
    mood__pack_extract_dispose(&x);
    MOOD_CHECK(!mood_path_exists(stale));
    MOOD_CHECK(mood_path_exists(live));
    rmdir(live);
}

static void test_cleanup_scratch(void)
{
    DIR *d;
    struct dirent *e;
    /* the destination must hold nothing after all the refusals above */
    MOOD_CHECK(dir_entries(dest_dir()) == 0);
    rmdir(dest_dir());
    if ((d = opendir(scratch_dir())) != NULL) {
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                unlink(scratch_path(e->d_name));
        }
        closedir(d);
    }
    MOOD_CHECK(rmdir(scratch_dir()) == 0);
}

MOOD_TEST_MAIN(MOOD_T(test_round_trip), MOOD_T(test_entry_metadata),
               MOOD_T(test_manifest_validation), MOOD_T(test_absolute_path), MOOD_T(test_traversal),
               MOOD_T(test_symlink), MOOD_T(test_hardlink), MOOD_T(test_device_and_fifo),
               MOOD_T(test_directory_as_file), MOOD_T(test_duplicate), MOOD_T(test_not_in_manifest),
               MOOD_T(test_manifest_not_first), MOOD_T(test_missing_file),
               MOOD_T(test_oversized_by_header), MOOD_T(test_compression_bomb),
               MOOD_T(test_lying_header), MOOD_T(test_hash_mismatch),
               MOOD_T(test_corrupt_and_truncated), MOOD_T(test_alloc_failures),
               MOOD_T(test_stale_cleanup), MOOD_T(test_cleanup_scratch))
