/*
 * registry_test.h: helpers the registry's unit tests (test_registry.c, test_registry_more.c,
 * test_registry_doctor.c) share: fixture paths, copies, blob paths, doctor runs.
 */
#ifndef MOOD_TESTS_REGISTRY_TEST_H
#define MOOD_TESTS_REGISTRY_TEST_H

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "mood/mood.h"

/* mood_registry_show_json of style `name`, parsed (NULL when it failed; the check says so). */
static inline cJSON *show(mood_registry *r, const char *name)
{
    char *text = NULL;
    cJSON *o = NULL;
    MOOD_CHECK_OK(mood_registry_show_json(&text, r, name));
    if (text)
        o = cJSON_Parse(text);
    mood_registry_free_string(text);
    return o;
}

static inline const char *example_lora(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/../../examples/loras/%s",
             getenv("MOOD_FIXTURES") ? getenv("MOOD_FIXTURES") : "tests/fixtures", name);
    return path;
}

/* dir/name as a copy of src; returns the path (static, 2 slots). */
static inline const char *copy_into(const char *dir, const char *name, const char *src)
{
    static char path[2][1200];
    static int slot;
    slot = (slot + 1) % 2;
    snprintf(path[slot], sizeof path[slot], "%s/%s", dir, name);
    MOOD_CHECK(copy_file(src, path[slot]) == 0);
    return path[slot];
}

static inline const char *str(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
}

static inline int blob_exists(mood_registry *r, const char *sha)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), sha, sha + 2);
    return access(path, F_OK) == 0;
}

static inline int unlink_blob(mood_registry *r, const char *sha)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), sha, sha + 2);
    return unlink(path);
}

static inline int doctor(mood_registry *r, int deep, int fix, char **report)
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

static inline cJSON *doctor_json(mood_registry *r, int deep, int fix, int *problems)
{
    char *text = NULL;
    cJSON *o;
    *problems = doctor(r, deep, fix, &text);
    o = text ? cJSON_Parse(text) : NULL;
    mood_registry_free_string(text);
    MOOD_CHECK(o != NULL);
    return o;
}

static inline void write_text(const char *dir, const char *name, const char *text)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    MOOD_CHECK(write_file(path, text, strlen(text)) == 0);
}

/* A 1x1 RGBA PNG: a preview sidecar that really is an image. */
static const unsigned char tiny_png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
    0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00,
    0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78,
    0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f, 0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47,
    0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

static inline void write_png(const char *dir, const char *name)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    MOOD_CHECK(write_file(path, tiny_png, sizeof tiny_png) == 0);
}

static inline int str_is(const cJSON *o, const char *key, const char *want)
{
    const char *v = str(o, key);
    return v && strcmp(v, want) == 0;
}

static inline int str_has(const cJSON *o, const char *key, const char *part)
{
    const char *v = str(o, key);
    return v && strstr(v, part) != NULL;
}

#endif /* MOOD_TESTS_REGISTRY_TEST_H */
