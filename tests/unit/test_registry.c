/*
 * test_registry.c: the style registry (registry/): schema creation, import and de-duplication,
 * sidecars, style names, rm and blob reference counting (doctor: test_registry_doctor.c),
 * clean-up of a half-done import, a damaged registry.db, what mood train registers
 * with its LoRA (previews, board thumbnails, loss curve, training record; migration 4), and the
 * sidecars that are not read (links out of the LoRA's folder, previews that are no image, pipes),
 * and the warning for a sidecar's Civitai record of another base family than the file's.
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

static void test_sidecars(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result res;
    const char *p = copy_into(src, "grain.safetensors", example_lora("film-grain.safetensors"));
    cJSON *o, *src0, *pv;
    write_text(src, "grain.json",
               "{\"activation text\": \"grainy film, 35mm\", \"preferred weight\": 0.6,"
               " \"notes\": \"best at 0.6\", \"description\": \"analog look\","
               " \"negative text\": \"digital\"}");
    write_text(
        src, "grain.civitai.info",
        "{\"id\": 900101, \"modelId\": 900001, \"name\": \"v1.0\", \"baseModel\": \"SD 1.5\","
        " \"trainedWords\": [\"kodak portra\", \"35mm\"], \"model\": {\"name\": \"Film "
        "Grain Deluxe\", \"nsfw\": false}}");
    write_text(src, "grain.txt", "halation\n");
    write_png(src, "grain.preview.png");
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
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
    MOOD_CHECK(src0 && strcmp(str(src0, "model_name"), "Film Grain Deluxe") == 0);
    MOOD_CHECK(src0 && strcmp(str(src0, "base_model"), "SD 1.5") == 0);
    MOOD_CHECK(src0 && cJSON_GetNumberValue(cJSON_GetObjectItem(src0, "version_id")) == 900101);
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
    /* ... the notes, and the Civitai model's name (words in none of the style's own fields) */
    MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "best"));
    MOOD_CHECK(hits && strstr(hits, "\"grain\""));
    mood_registry_free_string(hits);
    MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "delux"));
    MOOD_CHECK(hits && strstr(hits, "\"grain\""));
    mood_registry_free_string(hits);
    /* a damaged sidecar is left out; the LoRA is imported anyway */
    write_text(src, "broken.json", "{not json");
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, copy_into(src, "broken.safetensors", example_lora("inkwash.safetensors")), NULL,
        NULL));
    MOOD_CHECK(res.sidecars == 0 && strcmp(res.name, "broken") == 0);
    MOOD_CHECK_OK(mood_registry_search_json(&hits, r, "nothing-like-it"));
    MOOD_CHECK(hits && strcmp(hits, "[]") == 0);
    mood_registry_free_string(hits);
    mood_registry_close(r);
}

/* dir/name as a symbolic link to target. */
static void link_at(const char *dir, const char *name, const char *target)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    MOOD_CHECK_MSG(symlink(target, path) == 0, "symlink %s", path);
}

/* Sidecars that are links out of the LoRA's folder are not read: a folder from the web must not
 * get /etc/passwd stored as a preview (and shipped by pack export) or a secret read as trigger
 * words. Links within the folder are fine. */
static void test_sidecar_links(void)
{
    const char *src = scratch_fresh_dir("src"), *outside = scratch_fresh_dir("outside");
    const char *p = copy_into(src, "out.safetensors", example_lora("inkwash.safetensors"));
    char target[1200];
    mood_registry *r = NULL;
    mood_import_result res;
    cJSON *o;
    write_text(outside, "secret.txt", "secret words");
    write_png(outside, "secret.png");
    snprintf(target, sizeof target, "%s/secret.txt", outside);
    link_at(src, "out.txt", target);
    snprintf(target, sizeof target, "%s/secret.png", outside);
    link_at(src, "out.preview.png", target);
    link_at(src, "out.json", "../../../../../../../../../../../../etc/passwd");
    write_text(outside, "secret.metadata.json", "{\"civitai\": {\"trainedWords\": [\"secret\"]}}");
    write_text(outside, "secret.cm-info.json", "{\"TrainedWords\": [\"secret\"]}");
    snprintf(target, sizeof target, "%s/secret.metadata.json", outside);
    link_at(src, "out.metadata.json", target);
    snprintf(target, sizeof target, "%s/secret.cm-info.json", outside);
    link_at(src, "out.cm-info.json", target);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, p, NULL, NULL));
    MOOD_CHECK_MSG(res.sidecars == 0 && res.previews == 0, "%d sidecars, %d previews", res.sidecars,
                   res.previews);
    if ((o = show(r, "out")) != NULL) {
        const char *words = str(o, "trigger_words");
        MOOD_CHECK(!words || !strstr(words, "secret"));
        MOOD_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "previews")) == 0);
        cJSON_Delete(o);
    }
    /* links to files in the same folder are read */
    p = copy_into(src, "in.safetensors", example_lora("film-grain.safetensors"));
    write_text(src, "words.txt", "inner words");
    write_png(src, "pic.png");
    link_at(src, "in.txt", "words.txt");
    link_at(src, "in.preview.png", "pic.png");
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, p, NULL, NULL));
    MOOD_CHECK_MSG(res.sidecars == 1 && res.previews == 1, "%d sidecars, %d previews", res.sidecars,
                   res.previews);
    if ((o = show(r, "in")) != NULL) {
        MOOD_CHECK(str(o, "trigger_words") && !strcmp(str(o, "trigger_words"), "inner words"));
        cJSON_Delete(o);
    }
    mood_registry_close(r);
}

/* A preview is kept only when its content is an image, with the type the content says; a text
 * file named .png, a PNG signature with a broken header and a named pipe (whose read would wait
 * forever: alarm() fails the test instead) are left out and the LoRA imported anyway. */
static void test_preview_content(void)
{
    const char *src = scratch_fresh_dir("src");
    const char *p = copy_into(src, "pv.safetensors", example_lora("inkwash.safetensors"));
    char fifo[1200];
    mood_registry *r = NULL;
    mood_import_result res;
    const cJSON *pv;
    cJSON *o;
    write_text(src, "pv.preview.png", "just some text, not an image");
    write_text(src, "pv.png", "\x89PNG\r\n\x1a\nnot really");
    write_png(src, "pv.jpg"); /* a PNG named .jpg */
    snprintf(fifo, sizeof fifo, "%s/pv.webp", src);
    MOOD_CHECK(mkfifo(fifo, 0644) == 0);
    snprintf(fifo, sizeof fifo, "%s/pv.txt", src);
    MOOD_CHECK(mkfifo(fifo, 0644) == 0);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    alarm(60);
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, p, NULL, NULL));
    alarm(0);
    MOOD_CHECK_MSG(res.previews == 1 && res.sidecars == 0, "%d previews, %d sidecars", res.previews,
                   res.sidecars);
    if ((o = show(r, "pv")) != NULL) {
        pv = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "previews"), 0);
        MOOD_CHECK(pv && str(pv, "media_type") && !strcmp(str(pv, "media_type"), "image/png"));
        MOOD_CHECK(pv && str(pv, "origin") && strstr(str(pv, "origin"), "pv.jpg"));
        cJSON_Delete(o);
    }
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

/* Sidecars in Windows-1252 (what Windows tools write) and with a byte-order mark are imported,
 * their text stored as UTF-8; a Windows-1252 file name too. Every report stays valid JSON. */
/* A .civitai.info that lists its files' SHA-256 and not this file's is another file's record
 * (a LoRA replaced by another version beside the old sidecars): left out, its trigger words and
 * Civitai names not taken; one that lists this file's (in Civitai's upper case) is read. */
static void test_civitai_sidecar_of_another_file(void)
{
    const char *src = scratch_fresh_dir("src");
    const char *ink = copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    const char *grain = copy_into(src, "grain.safetensors", example_lora("film-grain.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    mood_file_hashes h;
    char text[512], upper[65];
    cJSON *o;
    MOOD_CHECK_OK(mood_hash_file(&h, grain, NULL, NULL));
    for (int i = 0; i < 65; i++)
        upper[i] =
            (char)(h.sha256[i] >= 'a' && h.sha256[i] <= 'f' ? h.sha256[i] - 32 : h.sha256[i]);
    snprintf(text, sizeof text,
             "{\"id\": 11, \"modelId\": 12, \"trainedWords\": [\"zebra stripes\"],"
             " \"model\": {\"name\": \"Zebra Deluxe\"}, \"files\": [{\"hashes\":"
             " {\"AutoV2\": \"0123456789\", \"SHA256\": \"%s\"}}]}",
             upper);
    write_text(src, "ink.civitai.info", text);
    write_text(src, "grain.civitai.info", text);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, ink, NULL, NULL));
    MOOD_CHECK_MSG(res.sidecars == 0, "%d sidecars read", res.sidecars);
    if ((o = show(r, "ink")) != NULL) {
        const cJSON *src0 = cJSON_GetArrayItem(
            cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0),
                                "sources"),
            0);
        MOOD_CHECK(!strstr(str(o, "trigger_words") ? str(o, "trigger_words") : "", "zebra"));
        MOOD_CHECK(src0 && !str(src0, "model_name"));
        cJSON_Delete(o);
    }
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, grain, NULL, NULL));
    MOOD_CHECK_MSG(res.sidecars == 1, "%d sidecars read", res.sidecars);
    if ((o = show(r, "grain")) != NULL) {
        MOOD_CHECK(strstr(str(o, "trigger_words") ? str(o, "trigger_words") : "", "zebra stripes"));
        cJSON_Delete(o);
    }
    mood_registry_close(r);
}

/* The source row of the style's first adapter (NULL when there is none). */
static const cJSON *first_source(const cJSON *o)
{
    return cJSON_GetArrayItem(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0), "sources"),
        0);
}

static double num_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* The tags of a shown style, ", "-joined into buf. */
static const char *tags_of(const cJSON *o, char *buf, size_t size)
{
    const cJSON *t;
    buf[0] = '\0';
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(o, "tags"))
    {
        size_t n = strlen(buf);
        snprintf(buf + n, size - n, "%s%s", n ? ", " : "", cJSON_GetStringValue(t));
    }
    return buf;
}

/* ComfyUI-Lora-Manager's NAME.metadata.json (docs/metadata-json-schema.md): Civitai's version
 * JSON under "civitai", usage_tips a JSON object written as a string, its own notes and tags. */
static void test_lora_manager_sidecar(void)
{
    const char *src = scratch_fresh_dir("src");
    const char *p = copy_into(src, "grain.safetensors", example_lora("film-grain.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    mood_file_hashes h;
    char text[2048], tags[256];
    cJSON *o;
    const cJSON *src0;
    MOOD_CHECK_OK(mood_hash_file(&h, p, NULL, NULL));
    snprintf(text, sizeof text,
             "{\"file_name\": \"grain\", \"model_name\": \"Film Grain LM\", \"file_path\":"
             " \"/loras/grain.safetensors\", \"size\": 1234, \"modified\": 1700000000.5,"
             " \"sha256\": \"%s\", \"base_model\": \"SD 1.5\", \"preview_url\": \"\","
             " \"preview_nsfw_level\": 1, \"notes\": \"soft at 0.7\", \"from_civitai\": true,"
             " \"tags\": [\"film\", \"photo realistic\", \"analog\"], \"favorite\": true,"
             " \"usage_tips\": \"{\\\"strength\\\": 0.7, \\\"clip_strength\\\": 0.5}\","
             " \"civitai\": {\"id\": 800101, \"modelId\": 800001, \"name\": \"v2\","
             " \"baseModel\": \"SD 1.5\", \"trainedWords\": [\"grainy\", \"kodak gold\"],"
             " \"model\": {\"name\": \"Film Grain LM\", \"type\": \"LORA\", \"nsfw\": false},"
             " \"files\": [{\"hashes\": {\"SHA256\": \"%s\"}}]}}",
             h.sha256, h.sha256);
    write_text(src, "grain.metadata.json", text);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, p, NULL, NULL));
    MOOD_CHECK_MSG(res.sidecars == 1, "%d sidecars read", res.sidecars);
    if ((o = show(r, "grain")) != NULL) {
        MOOD_CHECK(str_is(o, "trigger_words", "grainy, kodak gold"));
        MOOD_CHECK(num_of(o, "weight") == 0.7);
        MOOD_CHECK(str_is(o, "notes", "soft at 0.7"));
        MOOD_CHECK_MSG(!strcmp(tags_of(o, tags, sizeof tags), "analog, film"), "tags: %s", tags);
        src0 = first_source(o);
        MOOD_CHECK(src0 && num_of(src0, "model_id") == 800001);
        MOOD_CHECK(src0 && num_of(src0, "version_id") == 800101);
        MOOD_CHECK(src0 && str_is(src0, "model_name", "Film Grain LM"));
        MOOD_CHECK(src0 && str_is(src0, "base_model", "SD 1.5"));
        MOOD_CHECK(src0 && str_is(src0, "air", "urn:air:sd1:lora:civitai:800001@800101"));
        /* the sidecar kept as it is */
        MOOD_CHECK(src0 && cJSON_IsTrue(cJSON_GetObjectItem(
                               cJSON_GetObjectItem(src0, "civitai_info"), "favorite")));
        cJSON_Delete(o);
    }
    mood_registry_close(r);
}

/* StabilityMatrix's NAME.cm-info.json (ConnectedModelInfo, C# property names). */
static void test_cm_info_sidecar(void)
{
    const char *src = scratch_fresh_dir("src");
    const char *p = copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors"));
    mood_registry *r = NULL;
    mood_import_result res;
    mood_file_hashes h;
    char text[2048], tags[256];
    cJSON *o;
    const cJSON *src0;
    MOOD_CHECK_OK(mood_hash_file(&h, p, NULL, NULL));
    snprintf(text, sizeof text,
             "{\"ModelId\": 700001, \"ModelName\": \"Ink SM\", \"ModelDescription\":"
             " \"<p>Sumi <b>ink</b></p>\", \"Nsfw\": false, \"Tags\": [\"ink\", \"sumi-e\"],"
             " \"ModelType\": \"LORA\", \"VersionId\": 700101, \"VersionName\": \"v3\","
             " \"VersionDescription\": null, \"AuthorUsername\": \"someone\", \"BaseModel\":"
             " \"SDXL 1.0\", \"RemoteFileName\": \"ink.safetensors\", \"RemoteFileId\": 9,"
             " \"ImportedAt\": \"2024-05-01T10:00:00+00:00\", \"Hashes\": {\"SHA256\": \"%s\","
             " \"CRC32\": null, \"BLAKE3\": \"abc\"}, \"TrainedWords\": [\"sumi ink\", \"wash\"],"
             " \"UserTitle\": null, \"Source\": 0}",
             h.sha256);
    write_text(src, "ink.cm-info.json", text);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, p, NULL, NULL));
    MOOD_CHECK_MSG(res.sidecars == 1, "%d sidecars read", res.sidecars);
    if ((o = show(r, "ink")) != NULL) {
        MOOD_CHECK(str_is(o, "trigger_words", "sumi ink, wash"));
        MOOD_CHECK(str_is(o, "description", "Sumi ink"));
        MOOD_CHECK_MSG(!strcmp(tags_of(o, tags, sizeof tags), "ink, sumi-e"), "tags: %s", tags);
        src0 = first_source(o);
        MOOD_CHECK(src0 && num_of(src0, "model_id") == 700001);
        MOOD_CHECK(src0 && num_of(src0, "version_id") == 700101);
        MOOD_CHECK(src0 && str_is(src0, "model_name", "Ink SM"));
        MOOD_CHECK(src0 && str_is(src0, "version_name", "v3"));
        MOOD_CHECK(src0 && str_is(src0, "base_model", "SDXL 1.0"));
        MOOD_CHECK(src0 &&
                   str_is(cJSON_GetObjectItem(src0, "civitai_info"), "BaseModel", "SDXL 1.0"));
        cJSON_Delete(o);
    }
    mood_registry_close(r);
}

/* Imports dir/name (a copy of lora) with the sidecar `sidecar` holding text; what was logged. */
static const char *import_logged(mood_registry *r, const char *dir, const char *name,
                                 const char *lora, const char *sidecar, const char *text)
{
    mood_import_result res;
    char side[256];
    snprintf(side, sizeof side, "%.*s%s", (int)(strlen(name) - strlen(".safetensors")), name,
             sidecar);
    write_text(dir, side, text);
    harness_log_start();
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, copy_into(dir, name, lora), NULL, NULL));
    harness_log_stop();
    return harness_logged;
}

/* A sidecar's Civitai record for another base family than the file's keys and metadata: stored,
 * with a warning naming both (the file's family stays); none when they agree or Civitai's base
 * model is no family mood knows. Each of the three record sidecars, and a copy's. */
static void test_sidecar_base_model_mismatch(void)
{
    const char *src = scratch_fresh_dir("src"), *ink = example_lora("inkwash.safetensors"), *log;
    char xl[1024], want[1400];
    mood_registry *r = NULL;
    cJSON *o;
    snprintf(xl, sizeof xl, "%s/kohya/sdxl_lora.safetensors",
             getenv("MOOD_FIXTURES") ? getenv("MOOD_FIXTURES") : "tests/fixtures");
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    log = import_logged(r, src, "ink.safetensors", ink, ".civitai.info",
                        "{\"id\": 1, \"modelId\": 2, \"baseModel\": \"SDXL 1.0\"}");
    snprintf(want, sizeof want,
             "%s/ink.safetensors: Civitai lists it for SDXL 1.0 (baseModel), but the file is an "
             "SD 1.x LoRA (from its modelspec.architecture); mood uses it as SD 1.x\n",
             src);
    MOOD_CHECK_MSG(!strcmp(log, want), "%s", log);
    if ((o = show(r, "ink")) != NULL) {
        const cJSON *a = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0);
        MOOD_CHECK(str_is(a, "family", "sd1") && str_is(first_source(o), "base_model", "SDXL 1.0"));
        cJSON_Delete(o);
    }
    /* the other way round, from a Lora Manager record */
    log = import_logged(r, src, "xl.safetensors", xl, ".metadata.json",
                        "{\"civitai\": {\"id\": 3, \"baseModel\": \"SD 1.5\"}}");
    MOOD_CHECK_MSG(strstr(log, "/xl.safetensors: Civitai lists it for SD 1.5 (baseModel), but the "
                               "file is an SDXL LoRA") != NULL,
                   "%s", log);
    /* the same family, and a base model mood does not know (a copy of ink: another source of it):
     * nothing said */
    log = import_logged(r, src, "grain.safetensors", example_lora("film-grain.safetensors"),
                        ".cm-info.json", "{\"VersionId\": 4, \"BaseModel\": \"SD 1.5\"}");
    MOOD_CHECK_MSG(!*log, "%s", log);
    log = import_logged(r, scratch_fresh_dir("src2"), "flux.safetensors", ink, ".civitai.info",
                        "{\"id\": 5, \"baseModel\": \"Flux.1 D\"}");
    MOOD_CHECK_MSG(!*log, "%s", log);
    mood_registry_close(r);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    log = import_logged(r, src, "xl2.safetensors", xl, ".metadata.json",
                        "{\"civitai\": {\"id\": 6, \"baseModel\": \"Pony\"}}");
    MOOD_CHECK_MSG(!*log, "%s", log);
    log = import_logged(r, src, "other.safetensors", ink, ".civitai.info",
                        "{\"id\": 7, \"baseModel\": \"Other\"}");
    MOOD_CHECK_MSG(!*log, "%s", log);
    /* a copy of a stored file, elsewhere: its record is stored as another source, and warned of */
    log = import_logged(r, scratch_fresh_dir("src3"), "ink.safetensors", ink, ".civitai.info",
                        "{\"id\": 8, \"baseModel\": \"Illustrious\"}");
    MOOD_CHECK_MSG(strstr(log, "/ink.safetensors: Civitai lists it for Illustrious (baseModel)"),
                   "%s", log);
    mood_registry_close(r);
}

/* All four sidecars: A1111's .json (the user's own edits) first for the activation text, weight
 * and notes; the Civitai record from .civitai.info, then .metadata.json, then .cm-info.json (the
 * first with a version id); trigger words from all of them. A record of another file is left out
 * with a warning and the next one taken; damaged ones are left out and the LoRA imported. */
static void test_sidecar_precedence(void)
{
    const char *src = scratch_fresh_dir("src");
    char all[1200], next[1200], bad[1200];
    mood_registry *r = NULL;
    mood_import_result res;
    cJSON *o;
    snprintf(all, sizeof all, "%s",
             copy_into(src, "all.safetensors", example_lora("film-grain.safetensors")));
    snprintf(next, sizeof next, "%s",
             copy_into(src, "next.safetensors", example_lora("inkwash.safetensors")));
    snprintf(bad, sizeof bad, "%s",
             copy_into(src, "bad.safetensors", fixture("lycoris/loha.safetensors")));
    write_text(src, "all.json",
               "{\"activation text\": \"own word\", \"preferred weight\": 0.9,"
               " \"notes\": \"own notes\"}");
    write_text(src, "all.civitai.info",
               "{\"id\": 1, \"modelId\": 2, \"trainedWords\": [\"info word\"],"
               " \"model\": {\"name\": \"Info\"}}");
    write_text(src, "all.metadata.json",
               "{\"notes\": \"lm notes\", \"usage_tips\": \"{\\\"strength\\\": 0.5}\","
               " \"civitai\": {\"id\": 3, \"modelId\": 4, \"trainedWords\": [\"lm word\"]}}");
    write_text(src, "all.cm-info.json",
               "{\"VersionId\": 5, \"ModelId\": 6, \"TrainedWords\": [\"sm word\", \"own word\"]}");
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, all, NULL, NULL));
    MOOD_CHECK_MSG(res.sidecars == 4, "%d sidecars read", res.sidecars);
    if ((o = show(r, "all")) != NULL) {
        MOOD_CHECK(str_is(o, "trigger_words", "own word, info word, lm word, sm word"));
        MOOD_CHECK(num_of(o, "weight") == 0.9);
        MOOD_CHECK(str_is(o, "notes", "own notes"));
        MOOD_CHECK(num_of(first_source(o), "version_id") == 1);
        MOOD_CHECK(str_is(first_source(o), "model_name", "Info"));
        cJSON_Delete(o);
    }
    /* a .metadata.json of another file (its Civitai files' SHA-256): skipped, .cm-info.json's
     * record taken; the .civitai.info without ids gives its words but not the record */
    write_text(src, "next.civitai.info", "{\"trainedWords\": [\"hand written\"]}");
    write_text(src, "next.metadata.json",
               "{\"notes\": \"not mine\", \"civitai\": {\"id\": 3, \"modelId\": 4,"
               " \"trainedWords\": [\"other file\"], \"files\": [{\"hashes\": {\"SHA256\":"
               " \"0000000000000000000000000000000000000000000000000000000000000000\"}}]}}");
    write_text(src, "next.cm-info.json", "{\"VersionId\": 5, \"ModelId\": 6}");
    harness_log_start();
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, next, NULL, NULL));
    harness_log_stop();
    MOOD_CHECK_MSG(
        strstr(harness_logged, "next.metadata.json: sidecar skipped: it describes another file"),
        "logged: %s", harness_logged);
    MOOD_CHECK_MSG(res.sidecars == 2, "%d sidecars read", res.sidecars);
    if ((o = show(r, "next")) != NULL) {
        MOOD_CHECK(str_is(o, "trigger_words", "hand written"));
        MOOD_CHECK(!str(o, "notes"));
        MOOD_CHECK(num_of(first_source(o), "version_id") == 5);
        MOOD_CHECK(num_of(first_source(o), "model_id") == 6);
        cJSON_Delete(o);
    }
    /* damaged: not JSON, not an object, wrong types, not UTF-8 */
    write_text(src, "bad.metadata.json", "{\"civitai\": {\"trainedWords\": [");
    write_text(src, "bad.cm-info.json", "[\"TrainedWords\"]");
    harness_log_start();
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, bad, NULL, NULL));
    harness_log_stop();
    MOOD_CHECK_MSG(
        strstr(harness_logged, "bad.metadata.json: sidecar skipped: not a JSON object") &&
            strstr(harness_logged, "bad.cm-info.json: sidecar skipped: not a JSON object"),
        "logged: %s", harness_logged);
    MOOD_CHECK(res.sidecars == 0);
    MOOD_CHECK_OK(mood_registry_rm(r, "bad"));
    write_text(src, "bad.metadata.json",
               "{\"notes\": 5, \"tags\": \"one\", \"usage_tips\": \"{strength\","
               " \"civitai\": {\"trainedWords\": \"caf\xe9\", \"id\": \"7\"}}");
    write_text(src, "bad.cm-info.json",
               "{\"TrainedWords\": [\"caf\xe9\", 3], \"Tags\": {\"a\": 1}, \"VersionId\": \"x\"}");
    harness_log_start();
    MOOD_CHECK_OK(mood_registry_import_file(r, &res, bad, NULL, NULL));
    harness_log_stop();
    MOOD_CHECK_MSG(strstr(harness_logged, "bad.cm-info.json: not UTF-8; read as Windows-1252"),
                   "logged: %s", harness_logged);
    MOOD_CHECK(res.sidecars == 2);
    if ((o = show(r, "bad")) != NULL) {
        MOOD_CHECK(str_is(o, "trigger_words", "caf\xc3\xa9"));
        MOOD_CHECK(!str(o, "notes") && cJSON_IsNull(cJSON_GetObjectItem(o, "weight")));
        MOOD_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "tags")) == 0);
        MOOD_CHECK(cJSON_IsNull(cJSON_GetObjectItem(first_source(o), "version_id")));
        cJSON_Delete(o);
    }
    mood_registry_close(r);
}

static void test_sidecars_not_utf8(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result res;
    char *text = NULL, name[64];
    cJSON *o, *src0;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    write_text(src, "latin1.txt", "caf\xe9 style, ink\n");
    write_text(src, "latin1.json",
               "{\"activation text\": \"\x93sumi\x94\", \"notes\": \"5\x80 on Civitai\","
               " \"negative text\": \"fl\xfb\"}");
    write_text(src, "latin1.civitai.info",
               "\xef\xbb\xbf{\"id\": 7, \"trainedWords\": [\"na\xc3\xafve\"],"
               " \"model\": {\"name\": \"Cr\xc3\xa8me\"}}");
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, copy_into(src, "latin1.safetensors", example_lora("inkwash.safetensors")), NULL,
        NULL));
    MOOD_CHECK(res.sidecars == 3);
    o = show(r, "latin1"); /* cJSON_Parse refuses nothing, so check the bytes themselves */
    MOOD_CHECK(o && str_is(o, "trigger_words",
                           "\xe2\x80\x9csumi\xe2\x80\x9d, na\xc3\xafve, caf\xc3\xa9 style, ink"));
    MOOD_CHECK(o && str_is(o, "notes", "5\xe2\x82\xac on Civitai"));
    MOOD_CHECK(o && str_is(o, "negative", "fl\xc3\xbb"));
    src0 = o ? cJSON_GetArrayItem(
                   cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0),
                                       "sources"),
                   0)
             : NULL;
    MOOD_CHECK(src0 && str_is(src0, "model_name", "Cr\xc3\xa8me")); /* BOM dropped */
    MOOD_CHECK(src0 && cJSON_IsObject(cJSON_GetObjectItem(src0, "sidecar")));
    cJSON_Delete(o);
    MOOD_CHECK_OK(mood_registry_show_json(&text, r, "latin1"));
    MOOD_CHECK(text && mood_registry_text_check(text, "show") == 0);
    mood_registry_free_string(text);
    MOOD_CHECK_OK(mood_registry_list_json(&text, r, NULL, NULL));
    MOOD_CHECK(text && mood_registry_text_check(text, "list") == 0);
    mood_registry_free_string(text);
    /* a file name made on Windows */
    snprintf(name, sizeof name, "caf\xe9.safetensors");
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &res, copy_into(src, name, example_lora("film-grain.safetensors")), NULL, NULL));
    MOOD_CHECK(strcmp(res.wanted, "caf\xc3\xa9") == 0 && strcmp(res.name, "cafe") == 0);
    MOOD_CHECK_OK(mood_registry_show_json(&text, r, "cafe"));
    MOOD_CHECK(text && mood_registry_text_check(text, "show") == 0);
    MOOD_CHECK(text && strstr(text, "\"file_name\":\"caf\xc3\xa9.safetensors\""));
    mood_registry_free_string(text);
    mood_registry_close(r);
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
               MOOD_T(test_import_and_dedupe), MOOD_T(test_refusals), MOOD_T(test_sidecars),
               MOOD_T(test_sidecar_links), MOOD_T(test_preview_content), MOOD_T(test_names),
               MOOD_T(test_rm_and_refcount), MOOD_T(test_text_to_utf8),
               MOOD_T(test_sidecars_not_utf8), MOOD_T(test_civitai_sidecar_of_another_file),
               MOOD_T(test_lora_manager_sidecar), MOOD_T(test_cm_info_sidecar),
               MOOD_T(test_sidecar_base_model_mismatch), MOOD_T(test_sidecar_precedence),
               MOOD_T(test_typed_text_not_utf8), MOOD_T(test_half_done_import_cleaned),
               MOOD_T(test_lost_database), MOOD_T(test_corrupt_database),
               MOOD_T(test_import_extras), MOOD_T(test_import_extras_refused),
               MOOD_T(test_migration_4), MOOD_T(test_read_only_schema_4),
               MOOD_T(test_search_beyond_words), MOOD_T(test_search_by_file_name))
