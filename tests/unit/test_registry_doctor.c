/*
 * test_registry_doctor.c: `mood doctor` through the library (registry/doctor.c): orphans, missing
 * and damaged blobs and what --fix does with them; a style built by hand that combines a lost
 * LoRA with others keeps the others; a stored file that cannot be read is reported, never
 * repaired; a LoRA file of the wrong size is damaged without --deep, but an intact one under a
 * row that records the wrong size keeps its file (the row is corrected); an orphan that holds a
 * LoRA is moved to blobs/lost+found, not deleted.
 *
 * Every test works in its own registry under the scratch directory, on copies of the example
 * LoRAs; blobs are damaged, deleted or orphaned by hand, rows with SQLite directly.
 */
#include <cjson/cJSON.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include "common/common.h"
#include "harness.h"
#include "mood/mood.h"
#include "registry_test.h"

/* A fresh registry holding the two example LoRAs, as styles ink (*a) and grain (*b), copied into
 * src first. */
static mood_registry *ink_and_grain(const char *src, mood_import_result *a, mood_import_result *b)
{
    mood_registry *r = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK_OK(mood_registry_import_file(
        r, b, copy_into(src, "grain.safetensors", example_lora("film-grain.safetensors")), NULL,
        NULL));
    return r;
}

/* As a user who cannot read the blob at `arg` (its owner, mode 0): doctor --fix reports it
 * unreadable and changes nothing; readable again, the registry is whole. */
static void doctor_on_unreadable(void *arg)
{
    const char *path = arg;
    char home[1200], *report = NULL;
    mood_registry *r = NULL;
    /* the registry is the folder above blobs/sha256/xx/ */
    snprintf(home, sizeof home, "%.*s", (int)(strstr(path, "/blobs/") - path), path);
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    if (!r)
        return;
    MOOD_CHECK(chmod(path, 0) == 0);
    MOOD_CHECK(doctor(r, 1, 1, &report) == 1);
    MOOD_CHECK_MSG(report && strstr(report, "\"unreadable\":[{\"sha256\":\"") &&
                       strstr(report, "\"missing\":[]") && strstr(report, "\"corrupt\":[]"),
                   "%s", report ? report : "(null)");
    mood_registry_free_string(report);
    MOOD_CHECK(chmod(path, 0644) == 0);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0); /* style and file still there */
    mood_registry_close(r);
}

/* A stored file doctor cannot read is "unreadable", never "missing" or "damaged": --fix leaves the
 * style and the file alone (a registry restored with the wrong owner lost LoRAs to --fix). A
 * LoRA file whose size is not the stored one is damaged without --deep. An orphan that holds a
 * LoRA (its row lost) is moved to lost+found/ by --fix, not deleted. */
static void test_doctor_keeps_what_it_cannot_judge(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r;
    mood_import_result a, b;
    char path[1200], rescued[1200], *report = NULL;
    r = ink_and_grain(src, &a, &b);
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), a.sha256,
             a.sha256 + 2);
    run_unprivileged(mood_registry_home(r), doctor_on_unreadable, path);
    /* a truncated LoRA file: damaged by its size alone */
    MOOD_CHECK(truncate(path, 1000) == 0);
    MOOD_CHECK(doctor(r, 0, 0, &report) == 1);
    MOOD_CHECK(report && strstr(report, "\"corrupt\":[{\"sha256\":\"") && strstr(report, a.sha256));
    mood_registry_free_string(report);
    /* b's rows lost, its file kept: --fix moves it to lost+found/, whence it imports again */
    MOOD_CHECK_OK(mood_registry_rm(r, "ink"));
    {
        sqlite3 *db = NULL;
        char db_path[1200];
        snprintf(db_path, sizeof db_path, "%s/registry.db", mood_registry_home(r));
        MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
        MOOD_CHECK(sqlite3_exec(db,
                                "PRAGMA foreign_keys = ON; DELETE FROM styles WHERE name = 'grain';"
                                " DELETE FROM sources; DELETE FROM adapters;",
                                NULL, NULL, NULL) == SQLITE_OK);
        sqlite3_close(db);
    }
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK(doctor(r, 0, 1, &report) == 1);
    snprintf(rescued, sizeof rescued, "%s/blobs/lost+found/%s.safetensors", mood_registry_home(r),
             b.sha256);
    MOOD_CHECK_MSG(report && strstr(report, "\"rescued\":[{"), "%s", report ? report : "(null)");
    mood_registry_free_string(report);
    MOOD_CHECK(access(rescued, F_OK) == 0 && !blob_exists(r, b.sha256));
    MOOD_CHECK(doctor(r, 0, 0, NULL) == 0);
    MOOD_CHECK_OK(mood_registry_import_file(r, &b, rescued, NULL, NULL));
    /* named as its trainer named it, not by the SHA-256 its rescued file is called */
    MOOD_CHECK_MSG(!b.already && strcmp(b.name, "film-grain") == 0, "style %s", b.name);
    mood_registry_close(r);
}

/* A damaged row, not a damaged file: the size recorded for ink is wrong, its file intact. doctor
 * reports the record, --fix corrects it and keeps the file and the style (it removed both, and
 * the file may be a LoRA's only copy). */
static void test_doctor_corrects_a_wrong_size(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r;
    mood_import_result a, b;
    char *report = NULL, db_path[1200];
    sqlite3 *db = NULL;
    r = ink_and_grain(src, &a, &b);
    snprintf(db_path, sizeof db_path, "%s/registry.db", mood_registry_home(r));
    MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    MOOD_CHECK(sqlite3_exec(db, "UPDATE adapters SET size = size + 7", NULL, NULL, NULL) ==
               SQLITE_OK);
    sqlite3_close(db);
    MOOD_CHECK(doctor(r, 0, 0, &report) == 2); /* both rows */
    MOOD_CHECK_MSG(report && strstr(report, "\"wrong_size\":[{\"sha256\":\"") &&
                       strstr(report, "\"corrupt\":[]") && strstr(report, "\"missing\":[]"),
                   "%s", report ? report : "(null)");
    mood_registry_free_string(report);
    MOOD_CHECK(doctor(r, 0, 1, NULL) == 2);
    MOOD_CHECK(blob_exists(r, a.sha256) && blob_exists(r, b.sha256));
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0); /* re-hashed too */
    for (int i = 0; i < 2; i++) {
        cJSON *o = show(r, i ? "grain" : "ink"); /* each style still there, with its LoRA */
        MOOD_CHECK(o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "adapters")) == 1);
        cJSON_Delete(o);
    }
    mood_registry_close(r);
}

static void test_doctor(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r;
    mood_import_result a, b;
    char path[1200], *report = NULL;
    const char *orphan = "00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa";
    r = ink_and_grain(src, &a, &b);
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
    /* a damaged blob: found only by --deep; fixed by storing it again from the file it was
     * imported from while that is there, else by removing its style */
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), b.sha256,
             b.sha256 + 2);
    for (int original = 1; original >= 0; original--) {
        FILE *f = fopen(path, "r+b");
        MOOD_CHECK(f != NULL);
        if (f) {
            fseek(f, 100, SEEK_SET);
            fputc(0x5a, f);
            fclose(f);
        }
        if (!original) {
            char from[1200];
            snprintf(from, sizeof from, "%s/grain.safetensors", src);
            MOOD_CHECK(unlink(from) == 0);
        }
        MOOD_CHECK(doctor(r, 0, 0, NULL) == 0);
        MOOD_CHECK(doctor(r, 1, 0, &report) == 1);
        MOOD_CHECK(report && strstr(report, "\"corrupt\":[{\"sha256\":\"") &&
                   strstr(report, b.sha256));
        mood_registry_free_string(report);
        MOOD_CHECK(doctor(r, 1, 1, &report) == 1);
        MOOD_CHECK(report && (strstr(report, "\"restored\":[{") != NULL) == original);
        mood_registry_free_string(report);
        if (original) {
            MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
            MOOD_CHECK_OK(mood_registry_show_json(&report, r, "grain"));
            mood_registry_free_string(report);
        }
    }
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    MOOD_CHECK(mood_registry_show_json(&report, r, "grain") == MOOD_ENOTFOUND);
    /* a missing blob; when it is the only one the registry stores, every stored file is
     * missing (a drive not mounted?) and --fix refuses, removing nothing; beside another, --fix
     * removes its style */
    MOOD_CHECK(blob_exists(r, a.sha256));
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), a.sha256,
             a.sha256 + 2);
    unlink(path);
    snprintf(path, sizeof path, "%s/ink.safetensors", src); /* the original gone too */
    MOOD_CHECK(unlink(path) == 0);
    MOOD_CHECK(doctor(r, 0, 0, &report) == 1);
    MOOD_CHECK(report && strstr(report, "\"missing\":[{\"sha256\":\"") && strstr(report, a.sha256));
    MOOD_CHECK(report && strstr(report, "\"all_missing\":true"));
    mood_registry_free_string(report);
    {
        mood_doctor_options fix = {0, 1, NULL, NULL};
        int problems = 0;
        MOOD_CHECK(mood_registry_doctor(&report, &problems, r, &fix) == MOOD_EIO && !report);
        MOOD_CHECK(strstr(mood_error_last(), "every one of the 1 file the registry stores is"));
    }
    MOOD_CHECK_OK(mood_registry_show_json(&report, r, "ink"));
    mood_registry_free_string(report);
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &b, copy_into(src, "other.safetensors", fixture("kohya/sd1_lora.safetensors")), NULL,
        NULL));
    MOOD_CHECK(doctor(r, 0, 1, NULL) == 1);
    MOOD_CHECK(doctor(r, 0, 0, NULL) == 0);
    /* re-import works after the repair */
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &a, copy_into(src, "ink.safetensors", example_lora("inkwash.safetensors")), NULL, NULL));
    MOOD_CHECK(!a.already && blob_exists(r, a.sha256));
    mood_registry_close(r);
}

/* The string at o[key] is `want` / holds `part`; false when there is none (no crash). */
static void damage_blob(mood_registry *r, const char *sha)
{
    char path[1200];
    FILE *f;
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), sha, sha + 2);
    f = fopen(path, "r+b");
    MOOD_CHECK(f != NULL);
    if (f) {
        fseek(f, -3, SEEK_END); /* in the tensor data: the file still parses */
        fputc(0x55, f);
        fclose(f);
    }
}

/* The report's entry for style `name` (NULL when none). */
static const cJSON *report_style(const cJSON *report, const char *name)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(report, "styles"))
    {
        if (str_is(e, "name", name))
            return e;
    }
    return NULL;
}

static int entry_is(const cJSON *e, const char *action, int kept, int fixed)
{
    return e && str_is(e, "action", action) &&
           cJSON_GetNumberValue(cJSON_GetObjectItem(e, "kept")) == kept &&
           cJSON_IsTrue(cJSON_GetObjectItem(e, "fixed")) == fixed;
}

/* A combined style (style create) with several LoRAs, one of them damaged: doctor names every
 * style using it; --fix removes the styles that are that LoRA alone and only drops it from the
 * combined one, which keeps its other LoRAs (in order, from position 0), weights, template,
 * negative prompt and tags. A style whose every link is lost goes, by name. The removed styles'
 * previews go with them (no orphans afterwards), and importing the file again brings its style
 * back. Then a missing blob does the same. */
static void test_doctor_keeps_combined_styles(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a, b, c;
    mood_style_lora mix[3], twice[2];
    mood_style_spec spec = {0};
    cJSON *rep, *o, *ad;
    const cJSON *item;
    char *list = NULL;
    int problems = 0;
    write_png(src, "grain.png"); /* a preview of the damaged LoRA */
    r = ink_and_grain(src, &a, &b);
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &c, copy_into(src, "locon.safetensors", fixture("kohya/sd1_locon_fp16.safetensors")),
        NULL, NULL));
    MOOD_CHECK(b.previews == 1);
    mix[0] = (mood_style_lora){a.sha256, 0.6, 0.5};
    mix[1] = (mood_style_lora){b.sha256, 0.3, 0.3};
    mix[2] = (mood_style_lora){c.sha256, 0.2, 0.1};
    spec = (mood_style_spec){.template_text = "{prompt}, my recipe",
                             .negative = "ugly",
                             .weight = 0.7,
                             .has_weight = 1,
                             .loras = mix,
                             .n_loras = 3};
    MOOD_CHECK_OK(mood_registry_style_create(r, "mymix", &spec));
    MOOD_CHECK_OK(mood_registry_tag(r, "mymix", "keep", 1));
    twice[0] = (mood_style_lora){b.sha256, 0.5, 0.5};
    twice[1] = (mood_style_lora){b.sha256, 0.2, 0.2};
    spec = (mood_style_spec){.loras = twice, .n_loras = 2};
    MOOD_CHECK_OK(mood_registry_style_create(r, "grain-twice", &spec));
    damage_blob(r, b.sha256);
    {
        char from[1200]; /* the original gone: --fix cannot store it again */
        snprintf(from, sizeof from, "%s/grain.safetensors", src);
        MOOD_CHECK(unlink(from) == 0);
    }

    /* without --fix: every style that uses the damaged LoRA, and what --fix would do */
    rep = doctor_json(r, 1, 0, &problems);
    MOOD_CHECK(problems == 1);
    item = cJSON_GetArrayItem(cJSON_GetObjectItem(rep, "corrupt"), 0);
    MOOD_CHECK(item && str_is(item, "file_name", "grain.safetensors"));
    MOOD_CHECK(item && str_has(item, "imported_from", "grain.safetensors"));
    list = item ? cJSON_PrintUnformatted(cJSON_GetObjectItem(item, "styles")) : NULL;
    MOOD_CHECK(list && strcmp(list, "[\"grain\",\"grain-twice\",\"mymix\"]") == 0);
    cJSON_free(list);
    MOOD_CHECK(entry_is(report_style(rep, "grain"), "remove", 0, 0));
    MOOD_CHECK(entry_is(report_style(rep, "grain-twice"), "remove", 0, 0));
    MOOD_CHECK(entry_is(report_style(rep, "mymix"), "drop", 2, 0));
    cJSON_Delete(rep);
    o = show(r, "mymix"); /* nothing changed yet */
    MOOD_CHECK(o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "adapters")) == 3);
    cJSON_Delete(o);

    /* --fix */
    rep = doctor_json(r, 1, 1, &problems);
    MOOD_CHECK(problems == 1);
    MOOD_CHECK(entry_is(report_style(rep, "grain"), "remove", 0, 1));
    MOOD_CHECK(entry_is(report_style(rep, "grain-twice"), "remove", 0, 1));
    MOOD_CHECK(entry_is(report_style(rep, "mymix"), "drop", 2, 1));
    cJSON_Delete(rep);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0); /* the preview went with its style: no orphan */
    MOOD_CHECK(mood_registry_show_json(&list, r, "grain") == MOOD_ENOTFOUND);
    MOOD_CHECK(mood_registry_show_json(&list, r, "grain-twice") == MOOD_ENOTFOUND);
    o = show(r, "mymix");
    MOOD_CHECK(o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "adapters")) == 2);
    ad = o ? cJSON_GetObjectItem(o, "adapters") : NULL;
    MOOD_CHECK(ad && str_is(cJSON_GetArrayItem(ad, 0), "sha256", a.sha256));
    MOOD_CHECK(ad &&
               cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(ad, 0), "te")) == 0.5);
    MOOD_CHECK(ad && str_is(cJSON_GetArrayItem(ad, 1), "sha256", c.sha256));
    MOOD_CHECK(ad &&
               cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(ad, 1), "unet")) == 0.2);
    MOOD_CHECK(o && str_is(o, "template", "{prompt}, my recipe"));
    MOOD_CHECK(o && str_is(o, "negative", "ugly"));
    MOOD_CHECK(o && cJSON_GetNumberValue(cJSON_GetObjectItem(o, "weight")) == 0.7);
    MOOD_CHECK(o && cJSON_GetArraySize(cJSON_GetObjectItem(o, "tags")) == 1);
    cJSON_Delete(o);
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, "keep", NULL));
    MOOD_CHECK(list && strstr(list, "\"n_adapters\":2") && strstr(list, "\"family\":\"sd1\""));
    mood_registry_free_string(list);

    /* as the help says: importing the file again brings its style back */
    MOOD_CHECK_OK(mood_registry_import_file(
        r, &b, copy_into(src, "grain.safetensors", example_lora("film-grain.safetensors")), NULL,
        NULL));
    MOOD_CHECK(!b.already && strcmp(b.name, "grain") == 0);

    /* a missing blob: the same, and the style keeps its last LoRA */
    MOOD_CHECK(unlink_blob(r, c.sha256) == 0);
    {
        char from[1200]; /* and its original */
        snprintf(from, sizeof from, "%s/locon.safetensors", src);
        MOOD_CHECK(unlink(from) == 0);
    }
    rep = doctor_json(r, 0, 1, &problems);
    MOOD_CHECK(problems == 1);
    MOOD_CHECK(entry_is(report_style(rep, "mymix"), "drop", 1, 1));
    MOOD_CHECK(entry_is(report_style(rep, "locon"), "remove", 0, 1));
    cJSON_Delete(rep);
    o = show(r, "mymix");
    ad = o ? cJSON_GetObjectItem(o, "adapters") : NULL;
    MOOD_CHECK(ad && cJSON_GetArraySize(ad) == 1);
    MOOD_CHECK(ad && str_is(cJSON_GetArrayItem(ad, 0), "sha256", a.sha256));
    cJSON_Delete(o);
    MOOD_CHECK(doctor(r, 1, 0, NULL) == 0);
    mood_registry_close(r);
}

MOOD_TEST_MAIN(MOOD_T(test_doctor_corrects_a_wrong_size), MOOD_T(test_doctor),
               MOOD_T(test_doctor_keeps_what_it_cannot_judge),
               MOOD_T(test_doctor_keeps_combined_styles))
