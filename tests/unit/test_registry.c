/*
 * test_registry.c: the style registry (registry/): schema creation, import and de-duplication,
 * sidecars, style names, rm and blob reference counting, doctor (orphan, missing and damaged
 * blobs), clean-up of a half-done import, a damaged registry.db, and what mood train registers
 * with its LoRA (previews, board thumbnails, loss curve, training record; migration 4).
 *
 * Every test works in its own registry under the scratch directory, on copies of the fixture
 * LoRAs (tests/fixtures/kohya, examples/loras) with sidecars written here. Fault injection writes
 * rows with SQLite directly, the way a killed import leaves them.
 */
#include <cjson/cJSON.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include "common/common.h"
#include "harness.h"
#include "mood/mood.h"

static int counter;

/* A new empty directory under the scratch dir. Static buffer (4 slots). */
static const char *fresh_dir(const char *what)
{
    static char path[4][1024];
    static int slot;
    char name[128];
    slot = (slot + 1) % 4;
    snprintf(name, sizeof name, "%s-%d", what, ++counter);
    snprintf(path[slot], sizeof path[slot], "%s", scratch_path(name));
    mkdir(path[slot], 0755);
    return path[slot];
}

static int copy_file(const char *from, const char *to)
{
    size_t n;
    unsigned char *data = read_file(from, &n);
    int rc = data ? write_file(to, data, n) : -1;
    free(data);
    return rc;
}

static const char *example_lora(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/../../examples/loras/%s",
             getenv("MOOD_FIXTURES") ? getenv("MOOD_FIXTURES") : "tests/fixtures", name);
    return path;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    MOOD_CHECK(write_file(path, text, strlen(text)) == 0);
}

/* dir/name as a copy of src; returns the path (static, 2 slots). */
static const char *place(const char *dir, const char *name, const char *src)
{
    static char path[2][1200];
    static int slot;
    slot = (slot + 1) % 2;
    snprintf(path[slot], sizeof path[slot], "%s/%s", dir, name);
    MOOD_CHECK(copy_file(src, path[slot]) == 0);
    return path[slot];
}

static cJSON *show(mood_registry *r, const char *name)
{
    char *text = NULL;
    cJSON *o = NULL;
    MOOD_CHECK_OK(mood_registry_show_json(&text, r, name));
    if (text)
        o = cJSON_Parse(text);
    mood_registry_free_string(text);
    return o;
}

static const char *str(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
}

static int blob_exists(mood_registry *r, const char *sha)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), sha, sha + 2);
    return access(path, F_OK) == 0;
}

static int doctor(mood_registry *r, int deep, int fix, char **report)
{
    mood_doctor_options o = {deep, fix, NULL, NULL};
    int problems = -1;
    char *text = NULL;
    MOOD_CHECK_OK(mood_registry_doctor(&text, &problems, r, &o));
    if (report)
        *report = text;
    else
        mood_registry_free_string(text);
    return problems;
}

/* ----- tests --------------------------------------------------------------------------------- */

static void test_open_creates_schema(void)
{
    const char *home = fresh_dir("home");
    char path[1200];
    mood_registry *r = NULL;
    char sub[1100];
    snprintf(sub, sizeof sub, "%s/deeper/registry", home);
    MOOD_CHECK_OK(mood_registry_open(&r, sub));
    MOOD_CHECK(r && mood_registry_schema_version(r) >= 1);
    snprintf(path, sizeof path, "%s/registry.db", sub);
    MOOD_CHECK(access(path, F_OK) == 0);
    snprintf(path, sizeof path, "%s/blobs/sha256", sub);
    MOOD_CHECK(access(path, F_OK) == 0);
    mood_registry_close(r);
    r = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, sub)); /* second open: nothing to migrate */
    MOOD_CHECK(r && mood_registry_schema_version(r) >= 1);
    mood_registry_close(r);
}

static void test_import_and_dedupe(void)
{
    const char *src = fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a, b, c;
    const char *p = place(src, "inkwash.safetensors", example_lora("inkwash.safetensors"));
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &a, p, NULL, NULL));
    MOOD_CHECK(!a.already && strcmp(a.name, "inkwash") == 0 && strcmp(a.family, "sd1") == 0);
    MOOD_CHECK(strlen(a.sha256) == 64 && strlen(a.autov3) == 64 && blob_exists(r, a.sha256));
    MOOD_CHECK_OK(mood_registry_import_file(r, &b, p, NULL, NULL));
    MOOD_CHECK(b.already && strcmp(b.name, "inkwash") == 0);
    /* the same bytes under another name: still the same file */
    p = place(src, "copy.safetensors", example_lora("inkwash.safetensors"));
    MOOD_CHECK_OK(mood_registry_import_file(r, &c, p, NULL, NULL));
    MOOD_CHECK(c.already && strcmp(c.name, "inkwash") == 0);
    cJSON *o = show(r, "INKWASH"); /* names are found regardless of case */
    cJSON *ad = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0);
    MOOD_CHECK(ad && strcmp(str(ad, "sha256"), a.sha256) == 0);
    MOOD_CHECK(ad && strcmp(str(ad, "algorithm"), "lora") == 0);
    MOOD_CHECK(ad && cJSON_GetNumberValue(cJSON_GetObjectItem(ad, "rank")) == 4);
    MOOD_CHECK(ad && strlen(str(ad, "autov3_short")) == 12);
    cJSON_Delete(o);
    mood_registry_close(r);
}

static void test_refusals(void)
{
    const char *src = fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result res;
    const char *p;
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    p = place(src, "model.ckpt", example_lora("inkwash.safetensors"));
    MOOD_CHECK(mood_registry_import_file(r, &res, p, NULL, NULL) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "pickle") != NULL);
    p = place(src, "base.safetensors", fixture("bases/sd1_base.safetensors"));
    MOOD_CHECK(mood_registry_import_file(r, &res, p, NULL, NULL) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "this is a checkpoint, not a LoRA") != NULL);
    MOOD_CHECK(strstr(mood_error_last(), "base.safetensors") != NULL);
    mood_registry_close(r);
}

static void test_sidecars(void)
{
    const char *src = fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result res;
    const char *p = place(src, "grain.safetensors", example_lora("film-grain.safetensors"));
    cJSON *o, *src0, *pv;
    write_text(src, "grain.json",
               "{\"activation text\": \"grainy film, 35mm\", \"preferred weight\": 0.6,"
               " \"notes\": \"best at 0.6\", \"description\": \"analog look\","
               " \"negative text\": \"digital\"}");
    write_text(
        src, "grain.civitai.info",
        "{\"id\": 900101, \"modelId\": 900001, \"name\": \"v1.0\", \"baseModel\": \"SD 1.5\","
        " \"trainedWords\": [\"kodak portra\", \"35mm\"], \"model\": {\"name\": \"Film "
        "Grain\", \"nsfw\": false}}");
    write_text(src, "grain.txt", "halation\n");
    write_text(src, "grain.preview.png", "\x89PNG\r\n\x1a\nnot really");
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, p, NULL, NULL));
    MOOD_CHECK(res.sidecars == 3 && res.previews == 1);
    o = show(r, "grain");
    MOOD_CHECK(o &&
               strcmp(str(o, "trigger_words"), "grainy film, 35mm, kodak portra, halation") == 0);
    MOOD_CHECK(o && cJSON_GetNumberValue(cJSON_GetObjectItem(o, "weight")) == 0.6);
    MOOD_CHECK(o && strcmp(str(o, "notes"), "best at 0.6") == 0);
    MOOD_CHECK(o && strcmp(str(o, "description"), "analog look") == 0);
    MOOD_CHECK(o && strcmp(str(o, "negative"), "digital") == 0);
    src0 = cJSON_GetArrayItem(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0), "sources"),
        0);
    MOOD_CHECK(src0 && strcmp(str(src0, "model_name"), "Film Grain") == 0);
    MOOD_CHECK(src0 && strcmp(str(src0, "base_model"), "SD 1.5") == 0);
    MOOD_CHECK(src0 &&
               cJSON_GetNumberValue(cJSON_GetObjectItem(src0, "civitai_version_id")) == 900101);
    MOOD_CHECK(src0 && cJSON_IsObject(cJSON_GetObjectItem(src0, "civitai_info")));
    pv = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "previews"), 0);
    MOOD_CHECK(pv && str(pv, "path") && access(str(pv, "path"), F_OK) == 0);
    cJSON_Delete(o);
    /* search finds the description and the trigger words, as prefixes */
    char *hits = NULL;
    MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "anal"));
    MOOD_CHECK(hits && strstr(hits, "\"grain\""));
    mood_registry_free_string(hits);
    MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "halat"));
    MOOD_CHECK(hits && strstr(hits, "\"grain\""));
    mood_registry_free_string(hits);
    /* a damaged sidecar is left out; the LoRA is imported anyway */
    write_text(src, "broken.json", "{not json");
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, place(src, "broken.safetensors", example_lora("inkwash.safetensors")), NULL,
        NULL));
    MOOD_CHECK(res.sidecars == 0 && strcmp(res.name, "broken") == 0);
    MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "nothing-like-it"));
    MOOD_CHECK(hits && strcmp(hits, "[]") == 0);
    mood_registry_free_string(hits);
    mood_registry_close(r);
}

static void test_names(void)
{
    const char *src = fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result res;
    char *s = NULL;
    MOOD_CHECK_OK(mood_registry_name_check("ink_wash-2.1"));
    MOOD_CHECK(mood_registry_name_check("ink wash") == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "letters, digits") != NULL);
    MOOD_CHECK(mood_registry_name_check("a:b") == MOOD_EINVAL);
    MOOD_CHECK(mood_registry_name_check("") == MOOD_EINVAL);
    MOOD_CHECK(mood_registry_name_check("-x") == MOOD_EINVAL);
    MOOD_CHECK(mood_registry_name_check("Ünïcode") == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_name_suggest(&s, r, "My Style (v2)"));
    MOOD_CHECK(s && strcmp(s, "My_Style_v2") == 0);
    mood_registry_free_string(s);
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, place(src, "My Style (v2).safetensors", example_lora("inkwash.safetensors")), NULL,
        NULL));
    MOOD_CHECK(res.renamed && strcmp(res.name, "My_Style_v2") == 0);
    /* a taken name, in another case: the next free suggestion */
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, place(src, "my_style_V2.safetensors", example_lora("film-grain.safetensors")),
        NULL, NULL));
    MOOD_CHECK(res.renamed && strcmp(res.name, "my_style_V2-2") == 0);
    MOOD_CHECK(mood_registry_rename(r, "my_style_V2-2", "MY_STYLE_v2") == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "try '") != NULL);
    MOOD_CHECK(mood_registry_rename(r, "my_style_V2-2", "bad name") == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_registry_rename(r, "my_style_V2-2", "grain"));
    MOOD_CHECK_OK(mood_registry_rename(r, "grain", "Grain")); /* a change of case only */
    MOOD_CHECK(mood_registry_rename(r, "nope", "other") == MOOD_ENOTFOUND);
    mood_registry_close(r);
}

static void test_rm_and_refcount(void)
{
    const char *src = fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a;
    mood_style_lora l;
    mood_style_spec spec = {0};
    char *list = NULL;
    write_text(src, "ink.png", "png bytes");
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, place(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    l = (mood_style_lora){a.sha256, 0.8, 0.5};
    spec.loras = &l;
    spec.n_loras = 1;
    spec.template_text = "{prompt}, ink";
    MOOD_CHECK_OK(mood_registry_style_create(r, "ink-strong", &spec));
    MOOD_CHECK(mood_registry_style_create(r, "INK-strong", &spec) == MOOD_EINVAL);
    spec.template_text = "no placeholder";
    MOOD_CHECK(mood_registry_style_create(r, "ink-bad", &spec) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_registry_tag(r, "ink-strong", "mono", 1));
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, "mono", NULL));
    MOOD_CHECK(list && strstr(list, "ink-strong") && !strstr(list, "\"ink\""));
    mood_registry_free_string(list);
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, "sdxl"));
    MOOD_CHECK(list && strcmp(list, "[]") == 0);
    mood_registry_free_string(list);
    MOOD_CHECK_OK(mood_registry_rm(r, "ink"));
    MOOD_CHECK(blob_exists(r, a.sha256)); /* ink-strong still uses it */
    MOOD_CHECK_OK(mood_registry_rm(r, "ink-strong"));
    MOOD_CHECK(!blob_exists(r, a.sha256));
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    MOOD_CHECK(mood_registry_rm(r, "ink") == MOOD_ENOTFOUND);
    mood_registry_close(r);
}

static void test_doctor(void)
{
    const char *src = fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a, b;
    char path[1200], *report = NULL;
    const char *orphan = "00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa";
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, place(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &b, place(src, "grain.safetensors", example_lora("film-grain.safetensors")), NULL,
        NULL));
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    /* an orphan */
    snprintf(path, sizeof path, "%s/blobs/sha256/00", mood_registry_home(r));
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/blobs/sha256/00/%s", mood_registry_home(r), orphan + 2);
    MOOD_CHECK(write_file(path, "x", 1) == 0);
    MOOD_CHECK(doctor(r, 0, 0, &report) == 1);
    MOOD_CHECK(report && strstr(report, orphan + 2));
    mood_registry_free_string(report);
    MOOD_CHECK(doctor(r, 0, 1, NULL) == 1);
    MOOD_CHECK(access(path, F_OK) != 0);
    MOOD_CHECK(doctor(r, 0, 0, NULL) == 0);
    /* a damaged blob: found only by --deep, fixed by removing its style */
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), b.sha256,
             b.sha256 + 2);
    {
        FILE *f = fopen(path, "r+b");
        MOOD_CHECK(f != NULL);
        if (f) {
            fseek(f, 100, SEEK_SET);
            fputc(0x5a, f);
            fclose(f);
        }
    }
    MOOD_CHECK(doctor(r, 0, 0, NULL) == 0);
    MOOD_CHECK(doctor(r, 1, 0, &report) == 1);
    MOOD_CHECK(report && strstr(report, "\"corrupt\":[{\"sha256\":\"") && strstr(report, b.sha256));
    mood_registry_free_string(report);
    MOOD_CHECK(doctor(r, 1, 1, NULL) == 1);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    MOOD_CHECK(mood_registry_show_json(&report, r, "grain") == MOOD_ENOTFOUND);
    /* a missing blob */
    MOOD_CHECK(blob_exists(r, a.sha256));
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), a.sha256,
             a.sha256 + 2);
    unlink(path);
    MOOD_CHECK(doctor(r, 0, 0, &report) == 1);
    MOOD_CHECK(report && strstr(report, "\"missing\":[{\"sha256\":\"") && strstr(report, a.sha256));
    mood_registry_free_string(report);
    MOOD_CHECK(doctor(r, 0, 1, NULL) == 1);
    MOOD_CHECK(doctor(r, 0, 0, NULL) == 0);
    /* re-import works after the repair */
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, place(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK(!a.already && blob_exists(r, a.sha256));
    mood_registry_close(r);
}

/* What a kill -9 between "blob linked" and "rows committed" leaves: a journal row, the temporary
 * file and the blob, no rows. The next open removes all three and keeps everything else. */
static void test_half_done_import_cleaned(void)
{
    const char *home = fresh_dir("home"), *src = fresh_dir("src");
    const char *sha = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";
    mood_registry *r = NULL;
    mood_import_result a;
    char db[1200], tmp[1200], blob[1200], other[1200], sql[512];
    sqlite3 *h = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, place(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    mood_registry_close(r);
    r = NULL;
    snprintf(db, sizeof db, "%s/registry.db", home);
    snprintf(tmp, sizeof tmp, "%s/blobs/tmp/import-999999-7.part", home);
    snprintf(other, sizeof other, "%s/blobs/tmp/keep-me.txt", home);
    snprintf(blob, sizeof blob, "%s/blobs/sha256/ab", home);
    mkdir(blob, 0755);
    snprintf(blob, sizeof blob, "%s/blobs/sha256/ab/%s", home, sha + 2);
    MOOD_CHECK(write_file(tmp, "half", 4) == 0 && link(tmp, blob) == 0);
    MOOD_CHECK(write_file(other, "x", 1) == 0);
    snprintf(sql, sizeof sql,
             "INSERT INTO imports_in_progress VALUES('import-999999-7.part', '%s', 999999, 'x');"
             "INSERT INTO imports_in_progress VALUES('import-999999-8.part', '%s', 999999, 'x');",
             sha, a.sha256);
    MOOD_CHECK(sqlite3_open(db, &h) == SQLITE_OK);
    MOOD_CHECK(sqlite3_exec(h, sql, NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(h);
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK(access(tmp, F_OK) != 0 && access(blob, F_OK) != 0);
    MOOD_CHECK(access(other, F_OK) == 0); /* not ours: never deleted */
    MOOD_CHECK(blob_exists(r, a.sha256)); /* a journal row for a stored file keeps the file */
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    mood_registry_close(r);
}

static void test_corrupt_database(void)
{
    const char *home = fresh_dir("home"), *src = fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a;
    char db[1200], garbage[4096];
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, place(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    mood_registry_close(r);
    r = NULL;
    snprintf(db, sizeof db, "%s/registry.db", home);
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (char)(i * 7 + 3);
    MOOD_CHECK(write_file(db, garbage, sizeof garbage) == 0);
    {
        char wal[1300];
        snprintf(wal, sizeof wal, "%s-wal", db);
        unlink(wal);
        snprintf(wal, sizeof wal, "%s-shm", db);
        unlink(wal);
    }
    MOOD_CHECK(mood_registry_open(&r, home) == MOOD_EFORMAT);
    MOOD_CHECK(r == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), db) != NULL, "%s", mood_error_last());
    {
        char blob[1200];
        snprintf(blob, sizeof blob, "%s/blobs/sha256/%.2s/%s", home, a.sha256, a.sha256 + 2);
        MOOD_CHECK(access(blob, F_OK) == 0);
    }
}

/* Every allocation failure during an import ends in MOOD_ENOMEM with nothing left behind: the
 * registry stays clean (doctor) and the same import then succeeds. */
static void test_alloc_failures(void)
{
    const char *src = fresh_dir("src");
    const char *p = place(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    int ok_seen = 0;
    write_text(src, "ink.json", "{\"activation text\": \"ink\"}");
    write_text(src, "ink.png", "png");
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    for (long n = 1; n < 100000 && !ok_seen && r; n += n < 400 ? 1 : 53) {
        int err;
        mood__alloc_fail_at(n);
        err = mood_registry_import_file(r, &res, p, NULL, NULL);
        mood__alloc_fail_at(0);
        MOOD_CHECK_MSG(err == 0 || err == MOOD_ENOMEM, "n=%ld: %d %s", n, err, mood_error_last());
        ok_seen = err == 0 && !res.already;
        if (err)
            MOOD_CHECK_MSG(doctor(r, 0, 0, NULL) == 0, "n=%ld", n);
    }
    MOOD_CHECK(ok_seen);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    mood_registry_close(r);
}

/* ----- what mood train registers with its LoRA --------------------------------------------- */

static const char board_a[] = "jpeg of board image a", board_b[] = "jpeg of board image b";
static const char preview0[] = "png preview 0", preview1[] = "png preview 1";
static const char loss_csv[] = "step,loss,loss_avg,lr\n1,0.5,0.5,0.0001\n";

static void extras_init(mood_import_extras *x, mood_style_file *pv, mood_style_file *files)
{
    pv[0] = (mood_style_file){NULL, preview0, sizeof preview0, "image/png", "p0.png", 0, 0};
    pv[1] = (mood_style_file){NULL, preview1, sizeof preview1, "image/png", "p1.png", 0, 0};
    files[0] = (mood_style_file){"board", board_a, sizeof board_a, "image/jpeg", "a.png", 40, 30};
    files[1] = (mood_style_file){"loss_csv", loss_csv, sizeof loss_csv, "text/csv", NULL, 0, 0};
    files[2] = (mood_style_file){"board", board_b, sizeof board_b, "image/jpeg", "b.webp", 20, 10};
    *x = (mood_import_extras){pv, 2, files, 3, "{\"steps\": 5, \"trigger\": \"ink\"}"};
}

/* A stored file: the blob at its path holds the bytes given. */
static void check_blob(const cJSON *o, const void *data, size_t size)
{
    size_t n = 0;
    unsigned char *got = str(o, "path") ? read_file(str(o, "path"), &n) : NULL;
    MOOD_CHECK_MSG(got && n == size && memcmp(got, data, size) == 0, "blob of %s",
                   str(o, "name") ? str(o, "name") : "?");
    free(got);
}

/* Previews first, board thumbnails in order with their sizes, other files apart, the training
 * record as JSON; all of it in doctor's and rm's reference counting. */
static void test_import_extras(void)
{
    const char *src = fresh_dir("src");
    const char *p = place(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    mood_import_extras x;
    mood_style_file pv[2], files[3];
    const cJSON *b, *f;
    char shas[5][65];
    cJSON *o;
    write_text(src, "ink.png", "sidecar preview");
    extras_init(&x, pv, files);
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    MOOD_CHECK(r && mood_registry_schema_version(r) == 4);
    MOOD_CHECK_OK(mood_registry_import_file_ex(r, &res, p, &x, NULL, NULL));
    MOOD_CHECK(res.previews == 3 && !res.already);
    if (!(o = show(r, "ink"))) {
        mood_registry_close(r);
        return;
    }
    b = cJSON_GetObjectItem(o, "previews");
    MOOD_CHECK(cJSON_GetArraySize(b) == 3);
    MOOD_CHECK(str(cJSON_GetArrayItem(b, 0), "origin") &&
               !strcmp(str(cJSON_GetArrayItem(b, 0), "origin"), "p0.png"));
    check_blob(cJSON_GetArrayItem(b, 1), preview1, sizeof preview1);
    MOOD_CHECK(strstr(str(cJSON_GetArrayItem(b, 2), "origin"), "ink.png") != NULL);
    b = cJSON_GetObjectItem(o, "board");
    MOOD_CHECK(cJSON_GetArraySize(b) == 2);
    MOOD_CHECK(!strcmp(str(cJSON_GetArrayItem(b, 0), "name"), "a.png") &&
               !strcmp(str(cJSON_GetArrayItem(b, 1), "name"), "b.webp"));
    MOOD_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(b, 0), "width")) == 40);
    MOOD_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(b, 1), "height")) == 10);
    check_blob(cJSON_GetArrayItem(b, 0), board_a, sizeof board_a);
    check_blob(cJSON_GetArrayItem(b, 1), board_b, sizeof board_b);
    f = cJSON_GetObjectItem(o, "files");
    MOOD_CHECK(cJSON_GetArraySize(f) == 1 &&
               !strcmp(str(cJSON_GetArrayItem(f, 0), "role"), "loss_csv"));
    check_blob(cJSON_GetArrayItem(f, 0), loss_csv, sizeof loss_csv);
    MOOD_CHECK(cJSON_GetNumberValue(
                   cJSON_GetObjectItem(cJSON_GetObjectItem(o, "training"), "steps")) == 5);
    for (int i = 0; i < 5; i++) {
        const cJSON *it = i < 2   ? cJSON_GetArrayItem(cJSON_GetObjectItem(o, "previews"), i)
                          : i < 4 ? cJSON_GetArrayItem(b, i - 2)
                                  : cJSON_GetArrayItem(f, 0);
        snprintf(shas[i], sizeof shas[i], "%s", str(it, "sha256") ? str(it, "sha256") : "");
    }
    cJSON_Delete(o);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0); /* every blob referenced, none missing */
    /* the same file again: nothing added */
    MOOD_CHECK_OK(mood_registry_import_file_ex(r, &res, p, &x, NULL, NULL));
    MOOD_CHECK(res.already);
    MOOD_CHECK_OK(mood_registry_rm(r, "ink"));
    for (int i = 0; i < 5; i++)
        MOOD_CHECK_MSG(shas[i][0] && !blob_exists(r, shas[i]), "blob %d kept after rm", i);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    mood_registry_close(r);
}

static void test_import_extras_refused(void)
{
    const char *src = fresh_dir("src");
    const char *p = place(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    mood_import_extras x;
    mood_style_file pv[2], files[3];
    char *list = NULL;
    int ok = 0;
    MOOD_CHECK_OK(mood_registry_open(&r, fresh_dir("home")));
    extras_init(&x, pv, files);
    files[2].role = "Board Image";
    MOOD_CHECK(mood_registry_import_file_ex(r, &res, p, &x, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "Board Image") != NULL);
    extras_init(&x, pv, files);
    pv[1].size = 0;
    MOOD_CHECK(mood_registry_import_file_ex(r, &res, p, &x, NULL, NULL) == MOOD_EINVAL);
    extras_init(&x, pv, files);
    x.training_json = "[1, 2]";
    MOOD_CHECK(mood_registry_import_file_ex(r, &res, p, &x, NULL, NULL) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, NULL));
    MOOD_CHECK(list && strcmp(list, "[]") == 0); /* nothing stored */
    mood_registry_free_string(list);
    MOOD_CHECK(doctor(r, 0, 0, NULL) == 0);
    /* allocation failures leave nothing behind either */
    extras_init(&x, pv, files);
    for (long n = 1; n < 100000 && !ok && r; n += n < 300 ? 1 : 37) {
        int err;
        mood__alloc_fail_at(n);
        err = mood_registry_import_file_ex(r, &res, p, &x, NULL, NULL);
        mood__alloc_fail_at(0);
        MOOD_CHECK_MSG(err == 0 || err == MOOD_ENOMEM, "n=%ld: %d %s", n, err, mood_error_last());
        ok = err == 0 && !res.already;
        if (err)
            MOOD_CHECK_MSG(doctor(r, 0, 0, NULL) == 0, "n=%ld", n);
    }
    MOOD_CHECK(ok);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    mood_registry_close(r);
}

/* A registry of schema 3 (before style files) gains them on open, its styles kept. */
static void test_migration_4(void)
{
    const char *home = fresh_dir("home"), *src = fresh_dir("src");
    char db_path[1200];
    mood_registry *r = NULL;
    mood_import_result res;
    sqlite3 *db = NULL;
    cJSON *o;
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, place(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    mood_registry_close(r);
    r = NULL;
    snprintf(db_path, sizeof db_path, "%s/registry.db", home);
    MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    MOOD_CHECK(sqlite3_exec(db,
                            "DROP TABLE style_files; ALTER TABLE styles DROP COLUMN training_json;"
                            " PRAGMA user_version = 3",
                            NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK(r && mood_registry_schema_version(r) == 4);
    if (r && (o = show(r, "ink")) != NULL) {
        MOOD_CHECK(cJSON_IsNull(cJSON_GetObjectItem(o, "training")));
        MOOD_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "board")) == 0);
        cJSON_Delete(o);
    }
    mood_registry_close(r);
}

MOOD_TEST_MAIN(MOOD_T(test_alloc_failures), MOOD_T(test_open_creates_schema),
               MOOD_T(test_import_and_dedupe), MOOD_T(test_refusals), MOOD_T(test_sidecars),
               MOOD_T(test_names), MOOD_T(test_rm_and_refcount), MOOD_T(test_doctor),
               MOOD_T(test_half_done_import_cleaned), MOOD_T(test_corrupt_database),
               MOOD_T(test_import_extras), MOOD_T(test_import_extras_refused),
               MOOD_T(test_migration_4))
