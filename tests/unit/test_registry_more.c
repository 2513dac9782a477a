/*
 * test_registry_more.c: registry rules test_registry.c leaves out: a style's LoRAs are all made
 * for one base family (create and edit refuse a mix with MOOD_EFAMILY, naming the files; an
 * adapter of unknown family goes with any), and importing a file whose LoRA is stored but which
 * no style is any more (removed while a composition uses it, or replaced by style edit) makes
 * its style again around the same adapter row and blob, while a style that is the file alone
 * keeps the "already" answer. Changes to a style where there is no registry yet (rm, rename, tag,
 * edit) fail with MOOD_ENOTFOUND naming the folder and create nothing there. A file imported
 * before from the same place, unchanged, is known without being read (import_known.c).
 *
 * Each test works in its own registry under the scratch directory, on copies of the kohya and
 * LyCORIS fixtures.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include "harness.h"
#include "mood/hash.h"
#include "mood/mood.h"
#include "registry/registry_impl.h"
#include "registry_test.h"

/* dir/name as a copy of the fixture rel; returns the path (static, 4 slots). */
static const char *place(const char *dir, const char *name, const char *rel)
{
    static char path[4][1200];
    static int slot;
    size_t n;
    unsigned char *data = read_file(fixture(rel), &n);
    slot = (slot + 1) % 4;
    snprintf(path[slot], sizeof path[slot], "%s/%s", dir, name);
    MOOD_CHECK(data && write_file(path[slot], data, n) == 0);
    free(data);
    return path[slot];
}

/* Imports the fixture rel as dir/name into r; out receives the result. */
static void import_as(mood_registry *r, mood_import_result *out, const char *dir, const char *name,
                      const char *rel)
{
    memset(out, 0, sizeof *out);
    MOOD_CHECK_OK(mood_registry_import_file(r, out, place(dir, name, rel), NULL, NULL));
}

/* Runs one SQL statement on the registry's database, as another program could. */
static void sql(mood_registry *r, const char *text)
{
    char path[1200];
    sqlite3 *db = NULL;
    snprintf(path, sizeof path, "%s/registry.db", mood_registry_home(r));
    MOOD_CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    MOOD_CHECK_MSG(sqlite3_exec(db, text, NULL, NULL, NULL) == SQLITE_OK, "%s", sqlite3_errmsg(db));
    sqlite3_close(db);
}

static size_t count_files(const char *dir)
{
    char cmd[1400];
    size_t n = 0;
    FILE *p;
    snprintf(cmd, sizeof cmd, "find '%s' -type f | wc -l", dir);
    if ((p = popen(cmd, "r")) != NULL) {
        if (fscanf(p, "%zu", &n) != 1)
            n = 0;
        pclose(p);
    }
    return n;
}

/* ----- one base family per style ----------------------------------------------------------- */

static void test_families_not_mixed(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result a, b, c;
    mood_style_lora l[2];
    mood_style_spec spec = {0};
    char *list = NULL;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    import_as(r, &a, src, "one.safetensors", "kohya/sd1_lora.safetensors");
    import_as(r, &b, src, "xl.safetensors", "kohya/sdxl_lora.safetensors");
    import_as(r, &c, src, "three.safetensors", "lycoris/ia3.safetensors");
    l[0] = (mood_style_lora){a.sha256, 1, 1};
    l[1] = (mood_style_lora){b.sha256, 0.5, 0.5};
    spec.loras = l;
    spec.n_loras = 2;
    MOOD_CHECK(mood_registry_style_create(r, "mixed", &spec) == MOOD_EFAMILY);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "one.safetensors is for sd1") &&
                       strstr(mood_error_last(), "xl.safetensors is for sdxl"),
                   "%s", mood_error_last());
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, "sdxl"));
    MOOD_CHECK_MSG(list && !strstr(list, "mixed"), "%s", list ? list : "");
    mood_registry_free_string(list);
    /* edit: the style keeps its LoRAs */
    MOOD_CHECK(mood_registry_style_edit(r, "one", &spec) == MOOD_EFAMILY);
    cJSON *o = show(r, "one");
    MOOD_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "adapters")) == 1);
    cJSON_Delete(o);
    /* an adapter of unknown family goes with any */
    sql(r, "UPDATE adapters SET family = 'unknown' WHERE file_name = 'three.safetensors'");
    l[0] = (mood_style_lora){c.sha256, 1, 1};
    MOOD_CHECK_OK(mood_registry_style_create(r, "xl-mix", &spec));
    l[1] = (mood_style_lora){a.sha256, 1, 1};
    MOOD_CHECK_OK(mood_registry_style_edit(r, "xl-mix", &spec));
    mood_registry_close(r);
}

/* ----- importing a file whose style is gone -------------------------------------------------- */

static void test_import_restores_removed_style(void)
{
    const char *src = scratch_fresh_dir("src"), *home = scratch_fresh_dir("home");
    mood_registry *r = NULL;
    mood_import_result a, again;
    mood_style_lora l;
    mood_style_spec spec = {0};
    size_t blobs;
    char blob_dir[1200];
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    snprintf(blob_dir, sizeof blob_dir, "%s/blobs/sha256", home);
    import_as(r, &a, src, "good.safetensors", "kohya/sd1_lora.safetensors");
    l = (mood_style_lora){a.sha256, 0.5, 0.5};
    spec.loras = &l;
    spec.n_loras = 1;
    MOOD_CHECK_OK(mood_registry_style_create(r, "mix", &spec));
    MOOD_CHECK_OK(mood_registry_rm(r, "good"));
    blobs = count_files(blob_dir);
    import_as(r, &again, src, "good.safetensors", "kohya/sd1_lora.safetensors");
    MOOD_CHECK_MSG(!again.already && strcmp(again.name, "good") == 0, "already %d, name %s",
                   again.already, again.name);
    MOOD_CHECK(count_files(blob_dir) == blobs);
    cJSON *o = show(r, "good");
    const cJSON *ad = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "adapters"), 0);
    MOOD_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "adapters")) == 1);
    MOOD_CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(ad, "unet")) == 1);
    MOOD_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(ad, "sources")) == 1);
    cJSON_Delete(o);
    /* now a style is the file alone: the answer is "already" */
    import_as(r, &again, src, "good.safetensors", "kohya/sd1_lora.safetensors");
    MOOD_CHECK(again.already && strcmp(again.name, "good") == 0);
    mood_registry_close(r);
}

/* A fresh registry with styles lokr (*k) and ia3, lokr edited to hold ia3's LoRA: lokr's own
 * LoRA, which left its last style, is style lokr-2 now. */
static mood_registry *lokr_replaced(const char *src, mood_import_result *k)
{
    mood_registry *r = NULL;
    mood_import_result i;
    mood_style_lora l;
    mood_style_spec spec = {0};
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    import_as(r, k, src, "lokr.safetensors", "lycoris/lokr.safetensors");
    import_as(r, &i, src, "ia3.safetensors", "lycoris/ia3.safetensors");
    l = (mood_style_lora){i.sha256, 1, 1};
    spec.loras = &l;
    spec.n_loras = 1;
    MOOD_CHECK_OK(mood_registry_style_edit(r, "lokr", &spec));
    return r;
}

/* mood doctor --deep finds nothing. */
static void check_doctor_clean(mood_registry *r)
{
    int problems = -1;
    char *report = NULL;
    mood_doctor_options d = {1, 0, NULL, NULL};
    MOOD_CHECK_OK(mood_registry_doctor(&report, &problems, r, &d));
    MOOD_CHECK_MSG(problems == 0, "%s", report ? report : "");
    mood_registry_free_string(report);
}

/* A LoRA that `style edit` took out of its last style is a style of its own again (it was listed
 * nowhere, and the registry may hold its only copy); one that an older mood left in no style is
 * given one by importing its file again. */
static void test_import_after_lora_replaced(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_import_result k, again;
    mood_registry *r = lokr_replaced(src, &k);
    mood_style_lora *loras = NULL;
    size_t n = 0;
    sqlite3 *db = NULL;
    char db_path[1200];
    MOOD_CHECK_OK(mood_registry_style_loras(&loras, &n, r, "lokr-2"));
    MOOD_CHECK(n == 1 && loras && strcmp(loras[0].sha256, k.sha256) == 0);
    mood_registry_free_string((char *)loras);
    /* as an older mood left it: the LoRA in no style */
    snprintf(db_path, sizeof db_path, "%s/registry.db", mood_registry_home(r));
    MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    MOOD_CHECK(sqlite3_exec(db,
                            "PRAGMA foreign_keys = ON; DELETE FROM styles WHERE name = 'lokr-2'",
                            NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    import_as(r, &again, src, "lokr.safetensors", "lycoris/lokr.safetensors");
    MOOD_CHECK_MSG(!again.already && strcmp(again.name, "lokr-2") == 0 && again.renamed,
                   "already %d, name %s", again.already, again.name);
    MOOD_CHECK(strcmp(again.sha256, k.sha256) == 0);
    import_as(r, &again, src, "lokr.safetensors", "lycoris/lokr.safetensors");
    MOOD_CHECK_MSG(again.already && strcmp(again.name, "lokr-2") == 0, "name %s", again.name);
    check_doctor_clean(r);
    mood_registry_close(r);
}

/* rm of one style leaves the LoRA another style's edit took out (its row and file are kept on
 * purpose) whole: rm deleted every unused adapter row, and the kept file became an orphan. rm
 * leaves no journal rows behind either (it holds the blobs it frees in the journal until their
 * files are gone, so that a crash between the two steps leaves no orphans). */
static void test_rm_keeps_a_replaced_lora(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_import_result k, g;
    long long journal = -1;
    mood_registry *r = lokr_replaced(src, &k); /* lokr's LoRA is style lokr-2 */
    import_as(r, &g, src, "good.safetensors", "kohya/sd1_lora.safetensors");
    MOOD_CHECK_OK(mood_registry_rm(r, "good"));
    MOOD_CHECK(blob_exists(r, k.sha256) && !blob_exists(r, g.sha256));
    check_doctor_clean(r);
    {
        sqlite3 *db = NULL;
        sqlite3_stmt *st = NULL;
        char db_path[1200];
        snprintf(db_path, sizeof db_path, "%s/registry.db", mood_registry_home(r));
        MOOD_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
        MOOD_CHECK(sqlite3_prepare_v2(db, "SELECT count(*) FROM imports_in_progress", -1, &st,
                                      NULL) == SQLITE_OK);
        if (st && sqlite3_step(st) == SQLITE_ROW)
            journal = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
    MOOD_CHECK_MSG(journal == 0, "%lld journal rows", journal);
    mood_registry_close(r);
}

/* Importing the original file again restores a stored copy that was deleted or truncated (the
 * import said "already there" and left it lost; doctor's only remedy removed the style). */
static void test_import_again_restores_stored_copy(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result g, again;
    char blob[1200];
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    import_as(r, &g, src, "good.safetensors", "kohya/sd1_lora.safetensors");
    snprintf(blob, sizeof blob, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), g.sha256,
             g.sha256 + 2);
    for (int round = 0; round < 2; round++) {
        if (round == 0)
            MOOD_CHECK(unlink(blob) == 0);
        else
            MOOD_CHECK(truncate(blob, 100) == 0);
        MOOD_CHECK(doctor(r, 0, 0, NULL) == 1);
        import_as(r, &again, src, "good.safetensors", "kohya/sd1_lora.safetensors");
        MOOD_CHECK(again.already && strcmp(again.name, "good") == 0);
        MOOD_CHECK_MSG(doctor(r, 1, 0, NULL) == 0, "round %d", round);
    }
    mood_registry_close(r);
}

/* ----- changes to a style where there is no registry --------------------------------------- */

/* rm, rename, tag and edit on a folder without a registry (a mistyped MOOD_HOME) fail naming it
 * and create nothing: their transaction is a write that would have made an empty registry. */
static void test_changes_without_registry(void)
{
    char home[1200];
    struct stat st;
    mood_registry *r = NULL;
    mood_style_spec spec = {0};
    snprintf(home, sizeof home, "%s/typo", scratch_fresh_dir("parent"));
    MOOD_CHECK_OK(mood_registry_open(&r, home));
    spec.has_weight = 1;
    spec.weight = 0.5;
    int errs[] = {mood_registry_rm(r, "ink"), mood_registry_rename(r, "ink", "wash"),
                  mood_registry_tag(r, "ink", "sumi", 1),
                  mood_registry_style_edit(r, "ink", &spec)};
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
        MOOD_CHECK_MSG(errs[i] == MOOD_ENOTFOUND, "change %zu: %d", i, errs[i]);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "no registry at") && strstr(mood_error_last(), home) &&
                       strstr(mood_error_last(), "no style 'ink' to edit"),
                   "%s", mood_error_last());
    MOOD_CHECK(!mood_registry_exists(r));
    mood_registry_close(r);
    MOOD_CHECK_MSG(stat(home, &st) != 0, "%s was created", home);
}

/* The shortcut of a second import (mood__reg_known_file): the file unchanged since its import
 * is known; a change of its change time (chmod, a write), its stored copy gone or written to, or
 * its style no longer the file alone sends it the full way (read, hashed, checked, the stored
 * copy repaired), and a full import that finds it "already" records its facts again, so the next
 * one is short again. */
static void test_known_file(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result k, got;
    int known = -1;
    char file[1300], stored[1300];
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    if (!r)
        return;
    import_as(r, &k, src, "k.safetensors", "lycoris/loha.safetensors");
    snprintf(file, sizeof file, "%s/k.safetensors", src);
    memset(&got, 0, sizeof got);
    MOOD_CHECK_OK(mood__reg_known_file(r, file, &got, &known));
    MOOD_CHECK(known == 1 && got.already && !got.elsewhere && strcmp(got.name, "k") == 0 &&
               strcmp(got.sha256, k.sha256) == 0 && strcmp(got.family, k.family) == 0);
    MOOD_CHECK(chmod(file, 0600) == 0); /* the change time moves */
    MOOD_CHECK_OK(mood__reg_known_file(r, file, &got, &known));
    MOOD_CHECK(known == 0);
    MOOD_CHECK_OK(mood_registry_import_file(r, &got, file, NULL, NULL));
    MOOD_CHECK(got.already && !got.elsewhere);
    MOOD_CHECK_OK(mood__reg_known_file(r, file, &got, &known));
    MOOD_CHECK_MSG(known == 1, "the full import recorded the file's facts again");
    sql(r, "UPDATE style_adapters SET unet_weight = 0.5"); /* k is no longer the file alone */
    MOOD_CHECK_OK(mood__reg_known_file(r, file, &got, &known));
    MOOD_CHECK(known == 0);
    sql(r, "UPDATE style_adapters SET unet_weight = 1");
    snprintf(stored, sizeof stored, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), k.sha256,
             k.sha256 + 2);
    MOOD_CHECK(unlink(stored) == 0);
    MOOD_CHECK_OK(mood__reg_known_file(r, file, &got, &known));
    MOOD_CHECK_MSG(known == 0, "a lost stored copy goes the full way, which restores it");
    MOOD_CHECK_OK(mood_registry_import_file(r, &got, file, NULL, NULL));
    MOOD_CHECK(blob_exists(r, k.sha256));
    MOOD_CHECK_OK(mood__reg_known_file(r, file, &got, &known));
    MOOD_CHECK(known == 1);
    { /* the stored copy damaged in place, its size kept: the full way, which repairs it */
        FILE *f = fopen(stored, "r+b");
        mood_file_hashes h;
        MOOD_CHECK(f && fseek(f, 100, SEEK_SET) == 0 && fwrite("XXXX", 1, 4, f) == 4);
        if (f)
            fclose(f);
        MOOD_CHECK_OK(mood__reg_known_file(r, file, &got, &known));
        MOOD_CHECK_MSG(known == 0, "a stored copy written since goes the full way");
        MOOD_CHECK_OK(mood_registry_import_file(r, &got, file, NULL, NULL));
        MOOD_CHECK(got.already);
        MOOD_CHECK_OK(mood_hash_file_ex(&h, stored, MOOD_HASH_SKIP_CRC32, NULL, NULL));
        MOOD_CHECK_MSG(strcmp(h.sha256, k.sha256) == 0, "the damaged copy replaced");
    }
    mood_registry_close(r);
}

/* Import's progress callback runs on the caller's thread only (the hash ran it on a thread of
 * its own, where a GUI may not touch its widgets), and a cancel while hashing stops the import
 * (it was ignored: the file was hashed again without progress and imported). */
typedef struct progress_seen {
    pthread_t caller;
    int calls, other_thread;
} progress_seen;

static int cancel_at_hash(const mood_progress *p, void *payload)
{
    progress_seen *s = payload;
    s->calls++;
    s->other_thread |= !pthread_equal(pthread_self(), s->caller);
    return strcmp(p->phase, "hash") == 0;
}

static void test_import_progress_on_caller_thread(void)
{
    const char *src = scratch_fresh_dir("src");
    mood_registry *r = NULL;
    mood_import_result res;
    char *list = NULL;
    progress_seen seen = {pthread_self(), 0, 0};
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    if (!r)
        return;
    MOOD_CHECK(mood_registry_import_file(
                   r, &res, place(src, "ink.safetensors", "kohya/sd1_lora.safetensors"),
                   cancel_at_hash, &seen) == MOOD_ECANCELLED);
    MOOD_CHECK_MSG(seen.calls >= 1 && !seen.other_thread, "%d calls, %s", seen.calls,
                   seen.other_thread ? "some on another thread" : "all on the caller's");
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, NULL));
    MOOD_CHECK_MSG(list && strcmp(list, "[]") == 0, "%s", list ? list : "(null)");
    mood_registry_free_string(list);
    mood_registry_close(r);
}

MOOD_TEST_MAIN(MOOD_T(test_import_progress_on_caller_thread),
               MOOD_T(test_import_again_restores_stored_copy),
               MOOD_T(test_rm_keeps_a_replaced_lora), MOOD_T(test_families_not_mixed),
               MOOD_T(test_import_restores_removed_style), MOOD_T(test_import_after_lora_replaced),
               MOOD_T(test_changes_without_registry), MOOD_T(test_known_file))
