/*
 * test_pack.c: style pack export and import through the library (include/mood/pack.h): a round
 * trip between two registries, reference-only packs, and import under allocation failures,
 * which must leave the target registry exactly as it was (no styles, no blobs, no temporary
 * directory).
 */
#include <dirent.h>
#include <sys/stat.h>

#include "harness.h"
#include "common/common.h"
#include "mood/hash.h"
#include "mood/pack.h"
#include "styles/pack_archive.h"

static char home_a[1024], home_b[1024], pack[1024], ref_pack[1024];

/* Number of files under dir, recursively (-1 when it cannot be read). */
static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL) {
        char path[2048];
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            n += count_files(path);
        else
            n++;
    }
    closedir(d);
    return n;
}

static int has_temp_dir(const char *home)
{
    DIR *d = opendir(home);
    struct dirent *e;
    int found = 0;
    while (d && (e = readdir(d)) != NULL)
        found |= strncmp(e->d_name, ".moodpack-", 10) == 0;
    if (d)
        closedir(d);
    return found;
}

static char *show(mood_registry *r, const char *name)
{
    char *text = NULL;
    if (mood_registry_show_json(&text, r, name) != 0)
        return NULL;
    return text;
}

static void test_export(void)
{
    mood_registry *r = NULL;
    mood_import_result res;
    mood_pack_export_options o;
    const char *names[] = {"sd1_locon_fp16", "Combo"};
    mood_style_lora lora = {NULL, 0.7, 0.4};
    mood_style_spec spec = {0};
    snprintf(home_a, sizeof home_a, "%s", scratch_path("a"));
    snprintf(home_b, sizeof home_b, "%s", scratch_path("b"));
    snprintf(pack, sizeof pack, "%s", scratch_path("p.moodpack"));
    snprintf(ref_pack, sizeof ref_pack, "%s", scratch_path("r.moodpack"));
    MOOD_CHECK_OK(mood_registry_open(&r, home_a));
    if (!r)
        return;
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, fixture("kohya/sd1_locon_fp16.safetensors"),
                                            NULL, NULL));
    lora.sha256 = res.sha256;
    spec.loras = &lora;
    spec.n_loras = 1;
    spec.trigger_words = "locon, test";
    spec.template_text = "{prompt}, test";
    spec.weight = 0.75;
    spec.has_weight = 1;
    MOOD_CHECK_OK(mood_registry_style_create(r, "combo", &spec));
    MOOD_CHECK_OK(mood_registry_tag(r, "combo", "mixed", 1));
    mood_pack_export_options_init(&o);
    o.license = "CC0-1.0";
    MOOD_CHECK_OK(mood_pack_export(r, names, 2, pack, &o));
    o.reference_only = 1;
    MOOD_CHECK_OK(mood_pack_export(r, names + 1, 1, ref_pack, &o));
    /* allocation failures: an error, and no pack */
    for (long n = 1; n < 500; n++) {
        int rc;
        mood__alloc_fail_at(n);
        rc = mood_pack_export(r, names, 2, scratch_path("alloc.moodpack"), NULL);
        mood__alloc_fail_at(0);
        if (rc == 0)
            break;
        MOOD_CHECK_MSG(rc == MOOD_ENOMEM || rc == MOOD_EIO, "failure %ld: %d %s", n, rc,
                       mood_error_last());
        MOOD_CHECK(!mood_path_exists(scratch_path("alloc.moodpack")));
    }
    MOOD_CHECK(mood_path_exists(scratch_path("alloc.moodpack")));
    names[0] = "nosuch";
    MOOD_CHECK(mood_pack_export(r, names, 1, scratch_path("x.moodpack"), &o) == MOOD_ENOTFOUND);
    MOOD_CHECK(!mood_path_exists(scratch_path("x.moodpack")));
    mood_registry_close(r);
}

/* Reference-only into an empty registry: refused, naming the adapter; nothing changes. */
static void test_reference_only_missing(void)
{
    mood_registry *r = NULL;
    char *report = NULL, *list = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, home_b));
    if (!r)
        return;
    MOOD_CHECK(mood_pack_import(&report, r, ref_pack, NULL) == MOOD_ENOTFOUND);
    MOOD_CHECK(strstr(mood_error_last(), "1 adapter that is not embedded") != NULL);
    MOOD_CHECK(report == NULL);
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, NULL));
    MOOD_CHECK(list && strcmp(list, "[]") == 0);
    mood_registry_free_string(list);
    mood_registry_close(r);
}

/* Import with the n-th allocation failing, until it succeeds. */
static void test_import_alloc_failures(void)
{
    mood_registry *r = NULL;
    char blobs[1100];
    int done = 0;
    long n;
    snprintf(blobs, sizeof blobs, "%s/blobs/sha256", home_b);
    MOOD_CHECK_OK(mood_registry_open(&r, home_b));
    if (!r)
        return;
    /* every failure point of the pack's own code, then a sample of the adapter parser's many */
    for (n = 1; n < 1000000 && !done; n += n < 300 ? 1 : n / 8) {
        char *report = NULL, *list = NULL;
        int rc;
        mood__alloc_fail_at(n);
        rc = mood_pack_import(&report, r, pack, NULL);
        mood__alloc_fail_at(0);
        done = rc == 0;
        mood_registry_free_string(report);
        MOOD_CHECK(!has_temp_dir(home_b));
        if (done)
            break;
        MOOD_CHECK_MSG(rc == MOOD_ENOMEM || rc == MOOD_EIO, "failure %ld: %d %s", n, rc,
                       mood_error_last());
        MOOD_CHECK_MSG(count_files(blobs) == 0, "failure %ld: %d blobs left", n,
                       count_files(blobs));
        MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, NULL));
        MOOD_CHECK_MSG(list && strcmp(list, "[]") == 0, "failure %ld: styles left: %s", n, list);
        mood_registry_free_string(list);
    }
    MOOD_CHECK_MSG(done, "no success after %ld allocation failures", n);
    mood_registry_close(r);
}

/* After the import: the same styles in both registries (but for paths and times). */
static void test_round_trip_identical(void)
{
    static const char *const names[] = {"sd1_locon_fp16", "combo"};
    static const char *const keys[] = {"name",     "description", "trigger_words", "template",
                                       "negative", "weight",      "tags",          "previews"};
    mood_registry *a = NULL, *b = NULL;
    char *report = NULL;
    MOOD_CHECK_OK(mood_registry_open(&a, home_a));
    MOOD_CHECK_OK(mood_registry_open(&b, home_b));
    if (!a || !b)
        goto done;
    for (size_t i = 0; i < 2; i++) {
        char *ta = show(a, names[i]), *tb = show(b, names[i]);
        cJSON *ja = cJSON_Parse(ta ? ta : ""), *jb = cJSON_Parse(tb ? tb : "");
        const cJSON *aa = cJSON_GetObjectItem(ja, "adapters"),
                    *ab = cJSON_GetObjectItem(jb, "adapters");
        MOOD_CHECK(ja && jb);
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            MOOD_CHECK_MSG(cJSON_Compare(cJSON_GetObjectItem(ja, keys[k]),
                                         cJSON_GetObjectItem(jb, keys[k]), 1),
                           "%s: %s differs", names[i], keys[k]);
        MOOD_CHECK(cJSON_GetArraySize(aa) == 1 && cJSON_GetArraySize(ab) == 1);
        static const char *const akeys[] = {"sha256",  "autov3",    "unet",    "te",    "size",
                                            "family",  "algorithm", "rank",    "alpha", "dtype",
                                            "modules", "file_name", "metadata"};
        for (size_t k = 0; k < sizeof akeys / sizeof akeys[0]; k++)
            MOOD_CHECK_MSG(cJSON_Compare(cJSON_GetObjectItem(aa->child, akeys[k]),
                                         cJSON_GetObjectItem(ab->child, akeys[k]), 1),
                           "%s: adapter %s differs", names[i], akeys[k]);
        cJSON_Delete(ja);
        cJSON_Delete(jb);
        mood_registry_free_string(ta);
        mood_registry_free_string(tb);
    }
    /* the reference-only pack now finds its adapter, and its style exists with the same LoRA:
     * merged into it, nothing to add */
    MOOD_CHECK_OK(mood_pack_import(&report, b, ref_pack, NULL));
    MOOD_CHECK_MSG(report && strstr(report, "\"merged\":\t[\"combo\"]"), "%s", report);
    mood_registry_free_string(report);
done:
    mood_registry_close(a);
    mood_registry_close(b);
}

/* A reference-only pack's LoRA imported with `mood import` first gets a style of its own; the
 * pack's style of the same name and LoRA is merged into it: what the registry's style has is
 * kept (its weights, with a warning), what it lacks comes from the pack. A style of the name
 * with another LoRA is refused, and nothing changes. */
static void test_merge_into_imported_style(void)
{
    mood_registry *r = NULL;
    mood_import_result res;
    char *report = NULL, *before = NULL, *after = NULL;
    cJSON *o = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_path("merge-home")));
    if (!r)
        return;
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, fixture("kohya/sd1_locon_fp16.safetensors"),
                                            NULL, NULL));
    MOOD_CHECK_OK(mood_registry_rename(r, "sd1_locon_fp16", "combo"));
    MOOD_CHECK_OK(mood_pack_import(&report, r, ref_pack, NULL));
    MOOD_CHECK_MSG(report && strstr(report, "\"merged\":\t[\"combo\"]"), "%s", report);
    mood_registry_free_string(report);
    report = NULL;
    if ((o = cJSON_Parse((before = show(r, "combo")) ? before : "")) != NULL) {
        const cJSON *ad = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0);
        MOOD_CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(o, "template")),
                          "{prompt}, test") == 0);
        MOOD_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(o, "weight")) == 0.75);
        MOOD_CHECK(
            cJSON_GetArraySize(cJSON_GetObjectItem(o, "tags")) == 1 &&
            strcmp(cJSON_GetStringValue(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "tags"), 0)),
                   "mixed") == 0);
        /* its own LoRA weights (1, from the import) stay */
        MOOD_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(ad, "unet")) == 1.0);
        cJSON_Delete(o);
    }
    /* the name taken by a style with another LoRA: refused, the style unchanged */
    MOOD_CHECK_OK(mood_registry_rename(r, "combo", "combo-mine"));
    MOOD_CHECK_OK(
        mood_registry_import_file(r, &res, fixture("kohya/sd1_lora.safetensors"), NULL, NULL));
    MOOD_CHECK_OK(mood_registry_rename(r, res.name, "combo"));
    mood_registry_free_string(before);
    before = show(r, "combo");
    MOOD_CHECK(mood_pack_import(&report, r, ref_pack, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "exists already, with other LoRAs") != NULL);
    after = show(r, "combo");
    MOOD_CHECK(before && after && strcmp(before, after) == 0);
    mood_registry_free_string(before);
    mood_registry_free_string(after);
    mood_registry_close(r);
}

/* A pack whose single adapter is `path`, declared as `family`. */
static int write_pack(const char *out, const char *path, const char *family)
{
    mood_file_hashes h;
    mood__pack_src src[2];
    char manifest[2048], file[128];
    int err = mood_hash_file(&h, path, NULL, NULL);
    if (err)
        return err;
    snprintf(file, sizeof file, "adapters/%s.safetensors", h.sha256);
    snprintf(manifest, sizeof manifest,
             "{\"schema_version\": 1, \"created_by\": \"test\", \"adapters\": [{\"sha256\": "
             "\"%s\", \"file_name\": \"x.safetensors\", \"size\": %llu, \"family\": \"%s\","
             " \"embedded\": true, \"file\": \"%s\"}], \"styles\": [{\"name\": \"x\","
             " \"adapters\": [{\"sha256\": \"%s\", \"unet\": 1, \"te\": 1}]}]}",
             h.sha256, (unsigned long long)h.size, family, file, h.sha256);
    src[0] = (mood__pack_src){MOOD__PACK_MANIFEST, NULL, manifest, strlen(manifest), NULL};
    src[1] = (mood__pack_src){file, path, NULL, 0, NULL};
    return mood__pack_write(out, src, 2, NULL, NULL);
}

/* A pack of style "x" (the LoRA at `path`) with one mood board thumbnail, the PNG `png`. */
static int write_pack_board(const char *out, const char *path, const char *png, size_t n)
{
    mood_file_hashes h;
    mood__pack_src src[3];
    char manifest[4096], file[128], bfile[128], bsha[65];
    int err = mood_hash_file(&h, path, NULL, NULL);
    if (err)
        return err;
    mood_sha256_hex(bsha, png, n);
    snprintf(file, sizeof file, "adapters/%s.safetensors", h.sha256);
    snprintf(bfile, sizeof bfile, "board/%s.png", bsha);
    snprintf(manifest, sizeof manifest,
             "{\"schema_version\": 1, \"created_by\": \"test\", \"adapters\": [{\"sha256\": "
             "\"%s\", \"file_name\": \"x.safetensors\", \"size\": %llu, \"family\": \"sd1\","
             " \"embedded\": true, \"file\": \"%s\"}], \"styles\": [{\"name\": \"x\","
             " \"adapters\": [{\"sha256\": \"%s\", \"unet\": 1, \"te\": 1}]}], \"board\": "
             "[{\"sha256\": \"%s\", \"file\": \"%s\", \"media_type\": \"image/png\", \"style\": "
             "\"x\", \"width\": 1, \"height\": 1}]}",
             h.sha256, (unsigned long long)h.size, file, h.sha256, bsha, bfile);
    src[0] = (mood__pack_src){MOOD__PACK_MANIFEST, NULL, manifest, strlen(manifest), NULL};
    src[1] = (mood__pack_src){file, path, NULL, 0, NULL};
    src[2] = (mood__pack_src){bfile, NULL, png, n, NULL};
    return mood__pack_write(out, src, 3, NULL, NULL);
}

/* A pack merged into a style that has its own mood board keeps that board, and stores none of
 * the pack's: no stored file without a row (doctor called the pack's an orphan). */
static void test_merge_keeps_board(void)
{
    static const char red[] = "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52"
                              "\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90\x77\x53"
                              "\xde\x00\x00\x00\x0c\x49\x44\x41\x54\x78\x9c\x63\xf8\xcf\xc0\x00"
                              "\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00\x49\x45\x4e"
                              "\x44\xae\x42\x60\x82";
    static const char blue[] = "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52"
                               "\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90\x77\x53"
                               "\xde\x00\x00\x00\x0c\x49\x44\x41\x54\x78\x9c\x63\x60\x60\xf8\x0f"
                               "\x00\x01\x03\x01\x00\x08\x89\xc2\xec\x00\x00\x00\x00\x49\x45\x4e"
                               "\x44\xae\x42\x60\x82";
    mood_registry *r = NULL;
    mood_doctor_options d = {0, 0, NULL, NULL};
    char *report = NULL, *doc = NULL;
    int problems = -1;
    const char *lora = fixture("kohya/sd1_locon_fp16.safetensors");
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_path("board-home")));
    if (!r)
        return;
    MOOD_CHECK_OK(write_pack_board(pack, lora, red, sizeof red - 1));
    MOOD_CHECK_OK(mood_pack_import(&report, r, pack, NULL));
    mood_registry_free_string(report);
    MOOD_CHECK_OK(write_pack_board(pack, lora, blue, sizeof blue - 1));
    MOOD_CHECK_OK(mood_pack_import(&report, r, pack, NULL));
    MOOD_CHECK(report && strstr(report, "\"merged\":\t[\"x\"]"));
    mood_registry_free_string(report);
    MOOD_CHECK_OK(mood_registry_doctor(&doc, &problems, r, &d));
    MOOD_CHECK_MSG(problems == 0, "%s", doc ? doc : "(null)");
    mood_registry_free_string(doc);
    mood_registry_close(r);
}

/* The hash proves which file it is, not what it is: the adapter itself is checked too. */
static void test_adapter_checked(void)
{
    mood_registry *r = NULL;
    char *report = NULL, home[1024], junk[1024];
    snprintf(home, sizeof home, "%s", scratch_path("checked"));
    snprintf(junk, sizeof junk, "%s", scratch_path("junk.safetensors"));
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    if (!r)
        return;
    MOOD_CHECK_OK(write_pack(pack, fixture("kohya/sd1_locon_fp16.safetensors"), "sdxl"));
    MOOD_CHECK(mood_pack_import(&report, r, pack, NULL) == MOOD_EFORMAT);
    MOOD_CHECK(strstr(mood_error_last(), "says base family 'sdxl', the file is 'sd1'") != NULL);
    MOOD_CHECK(write_file(junk, "not a safetensors file at all", 29) == 0);
    MOOD_CHECK_OK(write_pack(pack, junk, "sd1"));
    MOOD_CHECK(mood_pack_import(&report, r, pack, NULL) == MOOD_EFORMAT);
    MOOD_CHECK(strstr(mood_error_last(), "x.safetensors") != NULL);
    MOOD_CHECK_OK(write_pack(pack, fixture("kohya/sd1_locon_fp16.safetensors"), "sd1"));
    MOOD_CHECK_OK(mood_pack_import(&report, r, pack, NULL));
    mood_registry_free_string(report);
    MOOD_CHECK(count_files(home) > 0 && !has_temp_dir(home));
    mood_registry_close(r);
}

/* A pack of style "x" (the LoRA at `path`) whose manifest says what the file is not (a path for a
 * file name, another AutoV3, rank, algorithm and module count); with `preview`, a preview of n
 * bytes declared as a PNG (as_board: a mood board thumbnail declared as a JPEG). */
static int write_lying_pack(const char *out, const char *path, const char *preview, size_t n,
                            int as_board)
{
    mood_file_hashes h;
    mood__pack_src src[3];
    char manifest[4096], file[128], pfile[128], psha[65], previews[512] = "", board[512] = "";
    int err = mood_hash_file(&h, path, NULL, NULL);
    if (err)
        return err;
    snprintf(file, sizeof file, "adapters/%s.safetensors", h.sha256);
    if (preview) {
        mood_sha256_hex(psha, preview, n);
        snprintf(pfile, sizeof pfile, as_board ? "board/%s.jpg" : "previews/%s.png", psha);
        if (as_board)
            snprintf(board, sizeof board,
                     ", \"board\": [{\"style\": \"x\", \"sha256\": \"%s\", \"media_type\": "
                     "\"image/jpeg\", \"name\": \"a.jpg\", \"width\": 8, \"height\": 8, "
                     "\"file\": \"%s\"}]",
                     psha, pfile);
        else
            snprintf(previews, sizeof previews,
                     ", \"previews\": [{\"sha256\": \"%s\", \"media_type\": \"image/png\", "
                     "\"file\": \"%s\"}]",
                     psha, pfile);
    }
    snprintf(manifest, sizeof manifest,
             "{\"schema_version\": 1, \"created_by\": \"test\", \"adapters\": [{\"sha256\": "
             "\"%s\", \"file_name\": \"../../evil.safetensors\", \"size\": %llu, \"family\": "
             "\"sd1\", \"autov3\": \"%064d\", \"rank\": 99, \"algorithm\": \"loha\", "
             "\"modules\": 3, \"embedded\": true, \"file\": \"%s\"}], \"styles\": [{\"name\": "
             "\"x\", \"adapters\": [{\"sha256\": \"%s\", \"unet\": 1, \"te\": 1}]%s}]%s}",
             h.sha256, (unsigned long long)h.size, 0, file, h.sha256, previews, board);
    src[0] = (mood__pack_src){MOOD__PACK_MANIFEST, NULL, manifest, strlen(manifest), NULL};
    src[1] = (mood__pack_src){file, path, NULL, 0, NULL};
    src[2] = (mood__pack_src){pfile, NULL, preview, n, NULL};
    return mood__pack_write(out, src, preview ? 3 : 2, NULL, NULL);
}

/* What the registry lists of an embedded LoRA is what its file says, not the manifest (its
 * AutoV3 is what images made with it name); a preview or board thumbnail that is no image is
 * refused. */
static void test_manifest_facts_not_trusted(void)
{
    mood_registry *r = NULL;
    mood_file_hashes h;
    char *report = NULL, home[1024], *text;
    const char *lora = fixture("kohya/sd1_locon_fp16.safetensors");
    cJSON *o;
    snprintf(home, sizeof home, "%s", scratch_path("lies"));
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_hash_file(&h, lora, NULL, NULL));
    if (!r)
        return;
    MOOD_CHECK_OK(write_lying_pack(pack, lora, "<html>not a png</html>", 22, 0));
    MOOD_CHECK(mood_pack_import(&report, r, pack, NULL) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "is not a PNG, JPEG or WebP image"), "%s",
                   mood_error_last());
    /* a board thumbnail too (an SVG declared as a JPEG was stored as one) */
    MOOD_CHECK_OK(write_lying_pack(pack, lora, "<svg xmlns='http://www.w3.org/2000/svg'/>", 41, 1));
    MOOD_CHECK(mood_pack_import(&report, r, pack, NULL) == MOOD_EFORMAT);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "mood board thumbnail") &&
                       strstr(mood_error_last(), "is not a PNG, JPEG or WebP image"),
                   "%s", mood_error_last());
    MOOD_CHECK_OK(write_lying_pack(pack, lora, NULL, 0, 0));
    MOOD_CHECK_OK(mood_pack_import(&report, r, pack, NULL));
    mood_registry_free_string(report);
    text = show(r, "x");
    if ((o = cJSON_Parse(text ? text : "")) != NULL) {
        const cJSON *a = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0);
        MOOD_CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(a, "file_name")),
                          "evil.safetensors") == 0);
        MOOD_CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(a, "autov3")), h.autov3) == 0);
        MOOD_CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(a, "algorithm")), "loha") != 0);
        MOOD_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(a, "rank")) != 99);
        cJSON_Delete(o);
    }
    mood_registry_free_string(text);
    mood_registry_close(r);
}

/* A LoRA the pack lists but no style of it uses is not stored (nothing could show or remove
 * it); the one its style uses is. */
static void test_unused_adapter_not_stored(void)
{
    mood_registry *r = NULL;
    mood_file_hashes used, unused;
    mood__pack_src src[3];
    char manifest[4096], fu[128], fn[128], home[1024], blob[1400], *report = NULL;
    const char *a = fixture("kohya/sd1_locon_fp16.safetensors");
    const char *b = fixture("kohya/sd1_lora.safetensors");
    struct stat st;
    MOOD_CHECK_OK(mood_hash_file(&used, a, NULL, NULL));
    MOOD_CHECK_OK(mood_hash_file(&unused, b, NULL, NULL));
    snprintf(fu, sizeof fu, "adapters/%s.safetensors", used.sha256);
    snprintf(fn, sizeof fn, "adapters/%s.safetensors", unused.sha256);
    snprintf(manifest, sizeof manifest,
             "{\"schema_version\": 1, \"created_by\": \"test\", \"adapters\": ["
             "{\"sha256\": \"%s\", \"file_name\": \"a.safetensors\", \"size\": %llu, "
             "\"family\": \"sd1\", \"embedded\": true, \"file\": \"%s\"}, "
             "{\"sha256\": \"%s\", \"file_name\": \"b.safetensors\", \"size\": %llu, "
             "\"family\": \"sd1\", \"embedded\": true, \"file\": \"%s\"}], \"styles\": "
             "[{\"name\": \"x\", \"adapters\": [{\"sha256\": \"%s\", \"unet\": 1, \"te\": "
             "1}]}]}",
             used.sha256, (unsigned long long)used.size, fu, unused.sha256,
             (unsigned long long)unused.size, fn, used.sha256);
    src[0] = (mood__pack_src){MOOD__PACK_MANIFEST, NULL, manifest, strlen(manifest), NULL};
    src[1] = (mood__pack_src){fu, a, NULL, 0, NULL};
    src[2] = (mood__pack_src){fn, b, NULL, 0, NULL};
    MOOD_CHECK_OK(mood__pack_write(pack, src, 3, NULL, NULL));
    snprintf(home, sizeof home, "%s", scratch_path("unused"));
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    if (!r)
        return;
    MOOD_CHECK_OK(mood_pack_import(&report, r, pack, NULL));
    mood_registry_free_string(report);
    snprintf(blob, sizeof blob, "%s/blobs/sha256/%.2s/%s", home, used.sha256, used.sha256 + 2);
    MOOD_CHECK(stat(blob, &st) == 0);
    snprintf(blob, sizeof blob, "%s/blobs/sha256/%.2s/%s", home, unused.sha256, unused.sha256 + 2);
    MOOD_CHECK_MSG(stat(blob, &st) != 0, "%s: a LoRA no style uses was stored", blob);
    mood_registry_close(r);
}

MOOD_TEST_MAIN(MOOD_T(test_export), MOOD_T(test_reference_only_missing),
               MOOD_T(test_import_alloc_failures), MOOD_T(test_round_trip_identical),
               MOOD_T(test_merge_into_imported_style), MOOD_T(test_merge_keeps_board),
               MOOD_T(test_adapter_checked), MOOD_T(test_manifest_facts_not_trusted),
               MOOD_T(test_unused_adapter_not_stored))
