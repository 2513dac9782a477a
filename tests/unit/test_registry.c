/*
 * test_registry.c: the style registry (registry/): schema creation, import and de-duplication,
 * style names, rm and blob reference counting (doctor: test_registry_doctor.c; the sidecars read
 * on import: test_registry_sidecars.c), clean-up of a half-done import, a damaged registry.db,
 * what mood train registers with its LoRA (previews, board thumbnails, loss curve, training
 * record; migration 4), and search.
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
#include "registry_test.h"

/* ----- tests --------------------------------------------------------------------------------- */

/* Reading a registry that does not exist (a mistyped MOOD_HOME) creates nothing: queries find no
 * style, doctor says there is no registry, and closing says so; the first import creates the
 * folders and registry.db with the whole schema. */
static void test_open_creates_nothing_until_a_change(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    char path[1200], sub[1100], *text = NULL;
    mood_registry *r = NULL;
    mood_import_result a;
    cJSON *rep;
    int problems = -1;
    snprintf(sub, sizeof sub, "%s/deeper/registry", home);
    MOOD_CHECK_OK(mood_registry_open(&r, sub));
    MOOD_CHECK(r && mood_registry_schema_version(r) >= 1 && !mood_registry_exists(r));
    MOOD_CHECK(mood_registry_show_json(&text, r, "ink") == MOOD_ENOTFOUND);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "no registry at"), "%s", mood_error_last());
    rep = doctor_json(r, 1, 1, &problems);
    MOOD_CHECK(problems == 0 && rep && str(rep, "database") &&
               strcmp(str(rep, "database"), "none") == 0);
    cJSON_Delete(rep);
    mood_registry_close(r);
    r = NULL;
    /* a listing finds nothing, and closing says why */
    harness_log_start();
    MOOD_CHECK_OK(mood_registry_open(&r, sub));
    MOOD_CHECK(r && mood_registry_list_json(&text, r, NULL, NULL) == 0);
    MOOD_CHECK(text && strcmp(text, "[]") == 0);
    mood_registry_free_string(text);
    mood_registry_close(r);
    harness_log_stop();
    r = NULL;
    MOOD_CHECK_MSG(strstr(harness_logged, "no registry at") && strstr(harness_logged, sub), "%s",
                   harness_logged);
    snprintf(path, sizeof path, "%s/deeper", home);
    MOOD_CHECK_MSG(access(path, F_OK) != 0, "reading created %s", path);
    /* the first change creates it */
    MOOD_CHECK_OK(mood_registry_open(&r, sub));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK(r && mood_registry_exists(r) && blob_exists(r, a.sha256));
    mood_registry_close(r);
    r = NULL;
    snprintf(path, sizeof path, "%s/registry.db", sub);
    MOOD_CHECK(access(path, F_OK) == 0);
    snprintf(path, sizeof path, "%s/blobs/tmp", sub);
    MOOD_CHECK(access(path, F_OK) == 0);
    MOOD_CHECK_OK(mood_registry_open(&r, sub)); /* second open: nothing to migrate */
    MOOD_CHECK(r && mood_registry_schema_version(r) >= 1 && mood_registry_exists(r));
    MOOD_CHECK(r && (rep = show(r, "ink")) != NULL);
    cJSON_Delete(rep);
    mood_registry_close(r);
}

static void test_import_and_dedupe(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a, b, c;
    const char *p = copy_into(src, "inkwash.safetensors", example_lora("inkwash.safetensors"));
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &a, p, NULL, NULL));
    MOOD_CHECK(!a.already && strcmp(a.name, "inkwash") == 0 && strcmp(a.family, "sd1") == 0);
    MOOD_CHECK(strlen(a.sha256) == 64 && strlen(a.autov3) == 64 && blob_exists(r, a.sha256));
    MOOD_CHECK_OK(mood_registry_import_file(r, &b, p, NULL, NULL));
    MOOD_CHECK(b.already && strcmp(b.name, "inkwash") == 0);
    /* the same bytes under another name: still the same file */
    p = copy_into(src, "copy.safetensors", example_lora("inkwash.safetensors"));
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
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result res;
    const char *p;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    p = copy_into(src, "model.ckpt", example_lora("inkwash.safetensors"));
    MOOD_CHECK(mood_registry_import_file(r, &res, p, NULL, NULL) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "pickle") != NULL);
    p = copy_into(src, "base.safetensors", fixture("bases/sd1_base.safetensors"));
    MOOD_CHECK(mood_registry_import_file(r, &res, p, NULL, NULL) == MOOD_EUNSUPPORTED);
    MOOD_CHECK(strstr(mood_error_last(), "this is a checkpoint, not a LoRA") != NULL);
    MOOD_CHECK(strstr(mood_error_last(), "base.safetensors") != NULL);
    mood_registry_close(r);
}

static void test_names(void)
{
    const char *src = scratch_fresh_dir("src");
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
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_name_suggest(&s, r, "My Style (v2)"));
    MOOD_CHECK(s && strcmp(s, "My_Style_v2") == 0);
    mood_registry_free_string(s);
    /* letters with accents keep their letter, those without one their usual spelling (ß: ss),
     * full-width letters their ASCII; what has none (CJK, emoji) is a gap */
    static const char *const accented[][2] = {
        {"ñandú 水墨", "nandu"},
        {"Crème brûlée", "Creme_brulee"},
        {"Phở bò", "Pho_bo"},
        {"水墨画", "style"},
        {"Straße", "Strasse"},
        {"Ærø Łódź", "AEro_Lodz"},
        {"Œuvre þing", "OEuvre_thing"},
        {"ｆｕｌｌ ｗｉｄｔｈ！", "full_width"},
        /* accents apart from their letters (NFD, as macOS names files) */
        {"Cre\xcc\x80"
         "me bru\xcc\x82"
         "le\xcc\x81"
         "e",
         "Creme_brulee"}};
    for (size_t i = 0; i < sizeof accented / sizeof accented[0]; i++) {
        MOOD_CHECK_OK(mood_registry_name_suggest(&s, r, accented[i][0]));
        MOOD_CHECK_MSG(s && strcmp(s, accented[i][1]) == 0, "'%s' -> '%s'", accented[i][0],
                       s ? s : "(null)");
        mood_registry_free_string(s);
    }
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, copy_into(src, "My Style (v2).safetensors", example_lora("inkwash.safetensors")),
        NULL, NULL));
    MOOD_CHECK(res.renamed && strcmp(res.name, "My_Style_v2") == 0);
    {
        /* a slip in a name (two letters swapped, another case) gets the style it meant */
        char *text = NULL;
        MOOD_CHECK(mood_registry_show_json(&text, r, "my_styel_v2") == MOOD_ENOTFOUND);
        MOOD_CHECK_MSG(strstr(mood_error_last(), "did you mean 'My_Style_v2'?"), "%s",
                       mood_error_last());
        MOOD_CHECK(mood_registry_show_json(&text, r, "entirely_else") == MOOD_ENOTFOUND);
        MOOD_CHECK_MSG(!strstr(mood_error_last(), "did you mean"), "%s", mood_error_last());
    }
    /* a taken name, in another case: the next free suggestion */
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, copy_into(src, "my_style_V2.safetensors", example_lora("film-grain.safetensors")),
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
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a;
    mood_style_lora l;
    mood_style_spec spec = {0};
    char *list = NULL;
    write_png(src, "ink.png");
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
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

/* The conversion helper: Windows-1252 (0x80..0x9F included, the undefined bytes as their C1
 * code points), a byte-order mark dropped, valid UTF-8 kept as it is. */
static void test_text_to_utf8(void)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"caf\xe9", "caf\xc3\xa9"},
        {"\x93quoted\x94 5\x80 \x85", "\xe2\x80\x9cquoted\xe2\x80\x9d 5\xe2\x82\xac \xe2\x80\xa6"},
        {"\x81\x8d\x8f\x90\x9d", "\xc2\x81\xc2\x8d\xc2\x8f\xc2\x90\xc2\x9d"},
        {"\xff\xa0", "\xc3\xbf\xc2\xa0"},
        {"caf\xc3\xa9 \xe2\x80\x94 ok", "caf\xc3\xa9 \xe2\x80\x94 ok"}, /* UTF-8 already */
        {"\xef\xbb\xbf"
         "bom",
         "bom"},
        {"\xed\xa0\x80", "\xc3\xad\xc2\xa0\xe2\x82\xac"}, /* a surrogate is not UTF-8 */
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        MOOD_CHECK_OK(mood_registry_text_to_utf8(&out, cases[i].in));
        MOOD_CHECK_MSG(out && strcmp(out, cases[i].out) == 0, "case %zu: '%s'", i,
                       out ? out : "(null)");
        mood_registry_free_string(out);
    }
    MOOD_CHECK_OK(mood_registry_text_check("sch\xc3\xb6n", "tag"));
    MOOD_CHECK_OK(mood_registry_text_check(NULL, "tag"));
    MOOD_CHECK(mood_registry_text_check("sch\xf6n", "--template") == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "--template 'sch\\xF6n': not valid UTF-8"));
}

/* Text a person types that is not UTF-8 is refused, naming the field, and changes nothing. */
static void test_typed_text_not_utf8(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a;
    mood_style_lora l;
    mood_style_spec spec = {0};
    cJSON *o;
    char *text;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK(mood_registry_tag(r, "ink", "sch\xf6n", 1) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "tag 'sch\\xF6n': not valid UTF-8"));
    MOOD_CHECK_OK(mood_registry_tag(r, "ink", "sch\xc3\xb6n", 1));
    /* spaces and invisible separators outside ASCII are refused as ASCII spaces are (no-break,
     * zero-width, ideographic); an emoji sequence's joiner is not one; a hashtag's '#' goes */
    MOOD_CHECK(mood_registry_tag(r, "ink",
                                 "a\xc2\xa0"
                                 "b",
                                 1) == MOOD_EINVAL);
    MOOD_CHECK(mood_registry_tag(r, "ink", "zw\xe2\x80\x8bj", 1) == MOOD_EINVAL);
    MOOD_CHECK(mood_registry_tag(r, "ink",
                                 "a\xe3\x80\x80"
                                 "b",
                                 1) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_registry_tag(r, "ink", "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x8e\xa8", 1));
    MOOD_CHECK_OK(mood_registry_tag(r, "ink", "#hash", 1));
    if ((o = show(r, "ink")) != NULL) {
        char *tags = cJSON_PrintUnformatted(cJSON_GetObjectItem(o, "tags"));
        MOOD_CHECK_MSG(tags && strstr(tags, "\"hash\"") && !strstr(tags, "#hash"), "%s", tags);
        cJSON_free(tags);
        cJSON_Delete(o);
    }
    MOOD_CHECK_OK(mood_registry_tag(r, "ink", "#hash", 0));
    /* one '#' is dropped; a bare '#' or a second one is no tag (it was stored as '#') */
    MOOD_CHECK(mood_registry_tag(r, "ink", "#", 1) == MOOD_EINVAL);
    MOOD_CHECK(mood_registry_tag(r, "ink", "##double", 1) == MOOD_EINVAL);
    MOOD_CHECK_OK(mood_registry_tag(r, "ink", "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x8e\xa8", 0));
    l = (mood_style_lora){a.sha256, 1, 1};
    spec.loras = &l;
    spec.n_loras = 1;
    spec.template_text = "{prompt}, caf\xe9";
    MOOD_CHECK(mood_registry_style_create(r, "ink-cafe", &spec) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "template '{prompt}, caf\\xE9'"));
    MOOD_CHECK(mood_registry_show_json(&(char *){NULL}, r, "ink-cafe") == MOOD_ENOTFOUND);
    spec = (mood_style_spec){.trigger_words = "caf\xe9", .negative = "ok"};
    MOOD_CHECK(mood_registry_style_edit(r, "ink", &spec) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "trigger words 'caf\\xE9'"));
    spec = (mood_style_spec){.negative = "fl\xfb"};
    MOOD_CHECK(mood_registry_style_edit(r, "ink", &spec) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "negative prompt"));
    spec = (mood_style_spec){.description = "\x93x\x94"};
    MOOD_CHECK(mood_registry_style_edit(r, "ink", &spec) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "description"));
    MOOD_CHECK(mood_registry_name_check("sch\xf6n") == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "style name 'sch\\xF6n': not valid UTF-8"));
    MOOD_CHECK(mood_registry_name_check("sch\xc3\xb6n") == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "a non-ASCII character at position 4"));
    MOOD_CHECK(mood_registry_rename(r, "ink", "sch\xf6n") == MOOD_EINVAL);
    o = show(r, "ink"); /* nothing of the refused edits was written */
    MOOD_CHECK(o && cJSON_IsNull(cJSON_GetObjectItem(o, "negative")));
    text = o ? cJSON_PrintUnformatted(o) : NULL;
    MOOD_CHECK(text && !strstr(text, "caf") && !strstr(text, "fl"));
    MOOD_CHECK(o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "tags")) == 1);
    cJSON_free(text);
    cJSON_Delete(o);
    mood_registry_close(r);
}

/* What a kill -9 between "blob linked" and "rows committed" leaves: a journal row, the temporary
 * file and the blob, no rows. The next open removes all three and keeps everything else. */
static void test_half_done_import_cleaned(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    const char *sha = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";
    mood_registry *r = NULL;
    mood_import_result a;
    char db[1200], tmp[1200], blob[1200], other[1200], sql[512];
    sqlite3 *h = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
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

/* registry.db gone (deleted, a wrong backup restored, MOOD_HOME pointing at a copy without it)
 * while blobs/ still holds what was imported: those files are no orphans. Doctor reports the
 * lost database once and --fix deletes nothing (MOOD_EINVAL saying how to get them back); the
 * same for a registry.db that holds no rows (what an older mood's `list` created in its place). */
static void test_lost_database(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a, b;
    char db[1200], side[1300], *text = NULL;
    sqlite3 *h = NULL;
    cJSON *rep;
    int problems = -1;
    write_png(src, "ink.png");
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &b, copy_into(src, "grain.safetensors", example_lora("film-grain.safetensors")), NULL,
        NULL));
    mood_registry_close(r);
    r = NULL;
    snprintf(db, sizeof db, "%s/registry.db", home);
    for (int empty = 0; empty < 2; empty++) {
        const char *suffix[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
            snprintf(side, sizeof side, "%s%s", db, suffix[i]);
            unlink(side);
        }
        if (empty) { /* an empty database in its place */
            MOOD_CHECK(sqlite3_open(db, &h) == SQLITE_OK);
            MOOD_CHECK(sqlite3_exec(h, "PRAGMA journal_mode = WAL", NULL, NULL, NULL) == SQLITE_OK);
            sqlite3_close(h);
        }
        harness_log_start();
        MOOD_CHECK_OK(mood_registry_open(&r, home));
        MOOD_CHECK(r && mood_registry_exists(r) == empty);
        MOOD_CHECK(r && mood_registry_list_json(&text, r, NULL, NULL) == 0);
        mood_registry_free_string(text);
        mood_registry_close(r); /* says so, whatever the command */
        harness_log_stop();
        MOOD_CHECK_MSG(strstr(harness_logged, empty ? "holds no LoRAs" : "is missing") &&
                           strstr(harness_logged, "3 stored files remain"),
                       "%s", harness_logged);
        MOOD_CHECK_OK(mood_registry_open(&r, home));
        rep = doctor_json(r, 0, 0, &problems);
        MOOD_CHECK(problems == 1 && rep);
        MOOD_CHECK(rep && str(rep, "database") &&
                   strcmp(str(rep, "database"), empty ? "empty" : "missing") == 0);
        MOOD_CHECK(rep && cJSON_GetNumberValue(cJSON_GetObjectItem(rep, "stored_files")) == 3);
        MOOD_CHECK(rep && cJSON_GetArraySize(cJSON_GetObjectItem(rep, "orphans")) == 0);
        cJSON_Delete(rep);
        {
            mood_doctor_options o = {0, 1, NULL, NULL};
            MOOD_CHECK(mood_registry_doctor(&text, &problems, r, &o) == MOOD_EINVAL);
            MOOD_CHECK_MSG(strstr(mood_error_last(), "restore registry.db from a backup") &&
                               strstr(mood_error_last(), "blobs/sha256"),
                           "%s", mood_error_last());
        }
        MOOD_CHECK(blob_exists(r, a.sha256) && blob_exists(r, b.sha256));
        mood_registry_close(r);
        r = NULL;
    }
    /* importing again brings the style back; the registry has rows: the usual checks apply */
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK(doctor(r, 0, 0, NULL) == 1); /* grain's file, an orphan now */
    MOOD_CHECK(blob_exists(r, b.sha256));
    mood_registry_close(r);
}

static void test_corrupt_database(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a;
    char db[1200], garbage[4096];
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
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
    /* the file is damaged, not the caller's input: an environment error (exit 2) */
    MOOD_CHECK(mood_registry_open(&r, home) == MOOD_EIO);
    MOOD_CHECK(r == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), db) && strstr(mood_error_last(), "damaged"), "%s",
                   mood_error_last());
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
    const char *src = scratch_fresh_dir("src");
    const char *p = copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    int ok_seen = 0;
    write_text(src, "ink.json", "{\"activation text\": \"ink\"}");
    write_png(src, "ink.png");
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
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
    const char *src = scratch_fresh_dir("src");
    const char *p = copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    mood_import_extras x;
    mood_style_file pv[2], files[3];
    const cJSON *b, *f;
    char shas[5][65];
    cJSON *o;
    write_png(src, "ink.png");
    extras_init(&x, pv, files);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK(r && mood_registry_schema_version(r) == 8);
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
    const char *src = scratch_fresh_dir("src");
    const char *p = copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    mood_import_extras x;
    mood_style_file pv[2], files[3];
    char *list = NULL;
    int ok = 0;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
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
/* A registry at home holding the example LoRA inkwash as style ink (copied into src first),
 * closed again; its registry.db's path into db_path, for SQLite to change by hand. */
static void ink_registry(const char *home, const char *src, char *db_path, size_t size)
{
    mood_registry *r = NULL;
    mood_import_result res;
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL,
        NULL));
    mood_registry_close(r);
    snprintf(db_path, size, "%s/registry.db", home);
}

/* What schema 7 added, taken away again (the tests of older registries). */
#define UNDO_SCHEMA_7                                                                              \
    "DROP INDEX sources_location; ALTER TABLE sources DROP COLUMN file_size; ALTER TABLE sources"  \
    " DROP COLUMN file_mtime_ns; ALTER TABLE sources DROP COLUMN file_ctime_ns; ALTER TABLE"       \
    " sources DROP COLUMN file_inode; ALTER TABLE sources DROP COLUMN blob_mtime_ns;"

/* A schema-4 registry its reader cannot write (another user's): read as it is, as migration 5
 * only made the search index again (list, show and gen were refused until its owner ran mood). */
static void list_read_only(void *home)
{
    mood_registry *r = NULL;
    char *list = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK(r && mood_registry_read_only(r));
    if (r)
        MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, NULL));
    MOOD_CHECK(list && strstr(list, "\"ink\""));
    mood_registry_free_string(list);
    mood_registry_close(r);
}

static void test_read_only_schema_4(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    char db_path[1200];
    sqlite3 *db = NULL;
    ink_registry(home, src, db_path, sizeof db_path);
    MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    MOOD_CHECK(sqlite3_exec(db, "PRAGMA user_version = 4", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    MOOD_CHECK(chmod(db_path, 0444) == 0 && chmod(home, 0555) == 0);
    run_unprivileged(NULL, list_read_only, (void *)home); /* root would write anything */
    MOOD_CHECK(chmod(home, 0755) == 0 && chmod(db_path, 0644) == 0);
}

/* What the search index's tokenizer cannot find by words: emoji and symbols (alone, in a tag,
 * beside a word, with a variation selector the text lacks, adjacent in the query but apart in
 * the text), Chinese and Japanese text inside a longer run; non-ASCII punctuation and spaces
 * separate words; a name match ranks first; bad queries are refused. */
static void test_search_beyond_words(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    char db_path[1200], long_query[1100];
    mood_registry *r = NULL;
    mood_style_spec spec = {.description =
                                "ink \xf0\x9f\x8e\xa8 painting \xe2\x9d\xa4 "
                                "\xe6\x97\xa5\xe6\x9c\xac\xe3\x81\xae\xe6\xb0\xb4\xe5\xa2\xa8"
                                "\xe7\x94\xbb artist's "
                                "\xef\xbd\x97\xef\xbd\x81\xef\xbd\x93\xef\xbd\x88"};
    static const struct {
        const char *query;
        int found;
    } cases[] = {{"\xf0\x9f\x8e\xa8", 1},                 /* 🎨, in the description */
                 {"\xf0\x9f\x94\xa5", 1},                 /* 🔥, a tag */
                 {"\xe2\x9d\xa4\xef\xb8\x8f", 1},         /* ❤️ finds ❤ */
                 {"\xf0\x9f\x94\xa5\xf0\x9f\x8e\xa8", 1}, /* 🔥🎨: both, apart in the text */
                 {"ink\xf0\x9f\x8e\xa8", 1},              /* a word and a symbol, both there */
                 {"grain \xf0\x9f\x8e\xa8", 0},           /* a word that is not */
                 {"\xf0\x9f\x9a\x80", 0},                 /* 🚀, nowhere */
                 {"\xe6\xb0\xb4\xe5\xa2\xa8", 1},         /* 水墨, inside 日本の水墨画 */
                 {"\xe5\xa2\xa8ink", 1},                  /* 墨 and ink */
                 {"artist\xe2\x80\x99s", 1},              /* artist’s: the apostrophe separates */
                 {"ink\xe3\x80\x80painting", 1},          /* a full-width space */
                 {"\xe2\x80\x9cink\xe2\x80\x9d", 1},      /* “ink” */
                 {"WASH", 1},                     /* ｗａｓｈ, full-width in the description */
                 {"\xef\xbd\x97\xef\xbd\x81", 1}, /* ｗａ, as written */
                 {"washes", 0}};
    ink_registry(home, src, db_path, sizeof db_path);
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    if (!r)
        return;
    MOOD_CHECK_OK(mood_registry_style_edit(r, "ink", &spec));
    MOOD_CHECK_OK(mood_registry_tag(r, "ink", "\xf0\x9f\x94\xa5", 1));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *hits = NULL;
        MOOD_CHECK_OK(mood_registry_search_json(&hits, r, cases[i].query));
        MOOD_CHECK_MSG(hits && (strstr(hits, "\"ink\"") != NULL) == cases[i].found, "%s: %s",
                       cases[i].query, hits ? hits : "(null)");
        mood_registry_free_string(hits);
    }
    /* refused: not UTF-8, too long, nothing to look for */
    memset(long_query, 'a', 1050);
    long_query[1050] = '\0';
    {
        const char *bad[] = {"\xff", long_query, "\xe3\x80\x80 --"};
        for (size_t i = 0; i < 3; i++) {
            char *hits = NULL;
            MOOD_CHECK(mood_registry_search_json(&hits, r, bad[i]) == MOOD_EINVAL && !hits);
        }
    }
    /* a name match first: "painting" is ink's description and the name of another style */
    {
        mood_style_lora l = {NULL, 1, 1};
        mood_style_lora *loras = NULL;
        size_t n = 0;
        char *hits = NULL;
        MOOD_CHECK_OK(mood_registry_style_loras(&loras, &n, r, "ink"));
        if (loras) {
            l.sha256 = loras[0].sha256;
            mood_style_spec p = {.loras = &l, .n_loras = 1};
            MOOD_CHECK_OK(mood_registry_style_create(r, "painting", &p));
        }
        MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "painting"));
        MOOD_CHECK_MSG(hits && strstr(hits, "\"painting\"") && strstr(hits, "\"ink\"") &&
                           strstr(hits, "\"painting\"") < strstr(hits, "\"ink\""),
                       "%s", hits ? hits : "(null)");
        mood_registry_free_string(hits);
        mood_registry_free_string((char *)loras);
    }
    mood_registry_close(r);
}

static void test_migration_4(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    char db_path[1200];
    mood_registry *r = NULL;
    sqlite3 *db = NULL;
    cJSON *o;
    ink_registry(home, src, db_path, sizeof db_path);
    MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    MOOD_CHECK(
        sqlite3_exec(db,
                     "DROP TABLE style_files; ALTER TABLE styles DROP COLUMN training_json;"
                     " DROP TRIGGER style_adapters_fts_ai; DROP TRIGGER style_adapters_fts_ad;"
                     " DROP TRIGGER sources_fts_ai; DROP TRIGGER sources_fts_au;"
                     " DROP TRIGGER sources_fts_ad; DROP TRIGGER adapters_fts_au;"
                     " " UNDO_SCHEMA_7 " DROP VIEW style_origin_words;"
                     " PRAGMA user_version = 3",
                     NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK(r && mood_registry_schema_version(r) == 8);
    if (r && (o = show(r, "ink")) != NULL) {
        MOOD_CHECK(cJSON_IsNull(cJSON_GetObjectItem(o, "training")));
        MOOD_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "board")) == 0);
        cJSON_Delete(o);
    }
    if (r) { /* migration 5 made the search index again, with the styles already there */
        char *hits = NULL;
        MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "ink"));
        MOOD_CHECK_MSG(hits && strstr(hits, "\"ink\""), "%s", hits ? hits : "(null)");
        mood_registry_free_string(hits);
    }
    mood_registry_close(r);
}

/* Search finds a style by its LoRA file's name (without ".safetensors"), also in a registry made
 * before the index held it (schema 5), once opened. */
static int finds(mood_registry *r, const char *query, const char *name)
{
    char *hits = NULL, want[128];
    int found;
    snprintf(want, sizeof want, "\"%s\"", name);
    if (mood_registry_search_json(&hits, r, query) != 0)
        return -1;
    found = strstr(hits, want) != NULL;
    mood_registry_free_string(hits);
    return found;
}

static void test_search_by_file_name(void)
{
    const char *home = scratch_fresh_dir("home"), *src = scratch_fresh_dir("src");
    char db_path[1200];
    mood_registry *r = NULL;
    mood_import_result res;
    sqlite3 *db = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, copy_into(src, "gbl_v3.safetensors", example_lora("inkwash.safetensors")), NULL,
        NULL));
    MOOD_CHECK_OK(mood_registry_rename(r, "gbl_v3", "Studio_look"));
    MOOD_CHECK(finds(r, "gbl", "Studio_look") == 1);
    MOOD_CHECK(finds(r, "gbl_v3", "Studio_look") == 1);
    MOOD_CHECK(finds(r, "safetensors", "Studio_look") == 0);
    mood_registry_close(r);
    snprintf(db_path, sizeof db_path, "%s/registry.db", home);
    /* back to schema 5: the view and the trigger gone, the index without the file's name */
    MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    MOOD_CHECK(sqlite3_exec(db,
                            UNDO_SCHEMA_7
                            " DROP TRIGGER adapters_fts_au;"
                            " DROP VIEW style_origin_words; UPDATE styles_fts SET civitai = '';"
                            " PRAGMA user_version = 5",
                            NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    MOOD_CHECK(r && mood_registry_schema_version(r) == 8);
    if (r)
        MOOD_CHECK(finds(r, "gbl", "Studio_look") == 1);
    mood_registry_close(r);
}

MOOD_TEST_MAIN(MOOD_T(test_alloc_failures), MOOD_T(test_open_creates_nothing_until_a_change),
               MOOD_T(test_import_and_dedupe), MOOD_T(test_refusals), MOOD_T(test_names),
               MOOD_T(test_rm_and_refcount), MOOD_T(test_text_to_utf8),
               MOOD_T(test_typed_text_not_utf8), MOOD_T(test_half_done_import_cleaned),
               MOOD_T(test_lost_database), MOOD_T(test_corrupt_database),
               MOOD_T(test_import_extras), MOOD_T(test_import_extras_refused),
               MOOD_T(test_migration_4), MOOD_T(test_read_only_schema_4),
               MOOD_T(test_search_beyond_words), MOOD_T(test_search_by_file_name))
