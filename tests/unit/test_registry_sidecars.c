/*
 * test_registry_sidecars.c: the sidecars `mood import` reads beside a LoRA
 * (registry/import_sidecars.c): A1111's NAME.json, Civitai Helper's NAME.civitai.info,
 * ComfyUI-Lora-Manager's NAME.metadata.json, StabilityMatrix's NAME.cm-info.json, NAME.txt and
 * previews; which wins when several are there; a record of another file left out; text that is not
 * UTF-8; the sidecars that are not read (links out of the LoRA's folder, previews that are no
 * image, pipes); and the warning for a Civitai record of another base family than the file's.
 *
 * Every test works in its own registry under the scratch directory, on copies of the fixture
 * LoRAs (tests/fixtures/kohya, examples/loras) with sidecars written here.
 */
#include <cjson/cJSON.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "harness.h"
#include "mood/mood.h"
#include "registry_test.h"

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

MOOD_TEST_MAIN(MOOD_T(test_sidecars), MOOD_T(test_sidecar_links), MOOD_T(test_preview_content),
               MOOD_T(test_sidecars_not_utf8), MOOD_T(test_civitai_sidecar_of_another_file),
               MOOD_T(test_lora_manager_sidecar), MOOD_T(test_cm_info_sidecar),
               MOOD_T(test_sidecar_base_model_mismatch), MOOD_T(test_sidecar_precedence))
