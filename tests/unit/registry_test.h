/*
 * registry_test.h: helpers the registry's unit tests (test_registry.c, test_registry_more.c)
 * share.
 */
#ifndef MOOD_TESTS_REGISTRY_TEST_H
#define MOOD_TESTS_REGISTRY_TEST_H

#include <cjson/cJSON.h>

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

#endif /* MOOD_TESTS_REGISTRY_TEST_H */
