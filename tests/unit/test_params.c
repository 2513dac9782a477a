/*
 * test_params.c: the A1111 parameters text (styles/params.c) against what A1111 1.10's
 * parse_generation_parameters makes of the same texts, as computed with Python's re and json by
 * tools/make_fixtures_params.py (tests/fixtures/params/expected.json): real-world layouts (A1111,
 * Forge, Civitai, Fooocus), multi-line and missing negative prompts, quoted values, Unicode,
 * texts that are not parameters. Then mood's own layout byte for byte, format(parse(x)) == x for
 * what mood writes, parse∘format as a fixed point for every fixture, quoting, Civitai's Hashes
 * JSON, defaults, errors, the hash helpers, and allocation failures at every step.
 */
#include <math.h>

#include "common/common.h"
#include "harness.h"
#include "mood/hash.h"
#include "mood/params.h"

static char *load_text(const char *name)
{
    char rel[256];
    size_t n = 0;
    unsigned char *data;
    char *text;
    snprintf(rel, sizeof rel, "params/%s.txt", name);
    data = read_file(fixture(rel), &n);
    if (!data)
        return NULL;
    text = malloc(n + 1);
    memcpy(text, data, n);
    text[n] = '\0';
    free(data);
    return text;
}

static char *hash_list(const mood_params_hash *list, size_t n)
{
    static char buf[1024];
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s: %s", i ? ", " : "",
                                list[i].name, list[i].hash);
    return buf;
}

/* Does mood hold (key, value) as A1111 read it? Extras compare as strings, fields by value. */
static int holds(const mood_params *p, const char *key, const char *v)
{
    char buf[64];
    char *end;
    for (size_t i = 0; i < p->n_extras; i++) {
        if (!strcmp(p->extras[i].key, key))
            return !strcmp(p->extras[i].value, v);
    }
    if (!strcmp(key, "Steps"))
        return p->steps == (int)strtol(v, &end, 10) && !*end;
    if (!strcmp(key, "Clip skip"))
        return p->clip_skip == (int)strtol(v, &end, 10) && !*end;
    if (!strcmp(key, "Seed"))
        return p->has_seed && p->seed == strtoull(v, &end, 10) && !*end;
    if (!strcmp(key, "CFG scale"))
        return p->cfg_scale == strtod(v, &end) && !*end;
    if (!strcmp(key, "Denoising strength"))
        return p->denoising_strength == strtod(v, &end) && !*end;
    if (!strcmp(key, "Size")) {
        snprintf(buf, sizeof buf, "%dx%d", p->width, p->height);
        return !strcmp(buf, v);
    }
    if (!strcmp(key, "Lora hashes"))
        return !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_LORA) &&
               !strcmp(hash_list(p->lora_hashes, p->n_lora_hashes), v);
    if (!strcmp(key, "TI hashes"))
        return !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_TI) &&
               !strcmp(hash_list(p->ti_hashes, p->n_ti_hashes), v);
    if (!strcmp(key, "Model hash") && (p->from_hashes & MOOD_PARAMS_FROM_HASHES_MODEL))
        return 0;
    return mood_params_get(p, key) && !strcmp(mood_params_get(p, key), v);
}

/* How many of the details mood keeps in fields (what the text had, not defaults or derived). */
static size_t n_fields(const mood_params *p)
{
    return (p->steps > 0) + !!p->sampler + !!p->schedule_type + !!isfinite(p->cfg_scale) +
           !!p->has_seed + (p->width > 0) +
           (p->model_hash && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_MODEL)) + !!p->model +
           !!isfinite(p->denoising_strength) + (p->clip_skip != 1) +
           (p->n_lora_hashes && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_LORA)) +
           (p->n_ti_hashes && !(p->from_hashes & MOOD_PARAMS_FROM_HASHES_TI)) + !!p->version;
}

static void check_case(const char *name, const char *text, const cJSON *want)
{
    const cJSON *pairs = cJSON_GetObjectItemCaseSensitive(want, "pairs"), *pr;
    mood_params p;
    long last_extra = -1;
    MOOD_CHECK_MSG(text != NULL, "%s: no text", name);
    if (!text)
        return;
    MOOD_CHECK_OK(mood_params_parse(&p, text));
    MOOD_CHECK_MSG(!strcmp(p.prompt, json_str(want, "prompt")), "%s: prompt [%s]", name, p.prompt);
    MOOD_CHECK_MSG(!strcmp(p.negative_prompt, json_str(want, "negative")), "%s: negative [%s]",
                   name, p.negative_prompt);
    MOOD_CHECK_MSG(p.has_details == cJSON_IsTrue(cJSON_GetObjectItem(want, "has_details")),
                   "%s: has_details %d", name, p.has_details);
    cJSON_ArrayForEach(pr, pairs)
    {
        const char *k = cJSON_GetArrayItem(pr, 0)->valuestring;
        const char *v = cJSON_GetArrayItem(pr, 1)->valuestring;
        MOOD_CHECK_MSG(holds(&p, k, v), "%s: \"%s: %s\" not held", name, k, v);
        /* extras come in the text's order (a repeated key at its first place, as in a dict) */
        for (size_t i = 0; i < p.n_extras; i++) {
            if (!strcmp(p.extras[i].key, k)) {
                MOOD_CHECK_MSG((long)i > last_extra, "%s: extra %s at %zu, after %ld", name, k, i,
                               last_extra);
                last_extra = (long)i;
            }
        }
    }
    MOOD_CHECK_MSG(n_fields(&p) + p.n_extras == (size_t)cJSON_GetArraySize(pairs),
                   "%s: %zu fields + %zu extras for %d pairs", name, n_fields(&p), p.n_extras,
                   cJSON_GetArraySize(pairs));
    mood_params_dispose(&p);
}

static void test_reference_parse(void)
{
    cJSON *root = load_json(fixture("params/expected.json")), *c;
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    int n = 0;
    MOOD_CHECK(cJSON_IsObject(cases));
    cJSON_ArrayForEach(c, cases)
    {
        char *text = load_text(c->string);
        check_case(c->string, text, c);
        free(text);
        n++;
    }
    MOOD_CHECK(n >= 15);
    cJSON_Delete(root);
}

/* Random texts over the characters that steer the pattern, against Python's re. */
static void test_reference_random(void)
{
    cJSON *root = load_json(fixture("params/expected.json")), *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "random"))
    {
        char name[32];
        snprintf(name, sizeof name, "random[%d]", n++);
        check_case(name, json_str(c, "text"), c);
    }
    MOOD_CHECK(n >= 400);
    cJSON_Delete(root);
}

/* format(parse(text)); *stable (may be NULL) tells whether params.h promises that another round
 * changes nothing: the text ended in details that are written back, none of them a prompt. */
static char *round_trip_ex(const char *text, int *stable)
{
    mood_params p;
    char *out = NULL;
    if (mood_params_parse(&p, text) != 0)
        return NULL;
    if (mood_params_format(&out, &p) != 0)
        out = NULL;
    if (stable)
        *stable = p.has_details && !p.prompt_from_details && n_fields(&p) + p.n_extras > 0;
    mood_params_dispose(&p);
    return out;
}

static char *round_trip(const char *text)
{
    return round_trip_ex(text, NULL);
}

/* format(parse(x)) == x for what mood writes. */
static void test_own_round_trip(void)
{
    static const char *const names[] = {"mood_own", "mood_own_full", "ecosystem_a1111", "crlf",
                                        "details_only"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *text = load_text(names[i]), *out = text ? round_trip(text) : NULL;
        /* crlf: mood writes "\n"; the other texts are in mood's layout already */
        if (text && !strcmp(names[i], "crlf"))
            MOOD_CHECK_MSG(out && !strcmp(out, "a cat\nNegative prompt: dog\nSteps: 10, Sampler: "
                                               "Euler, Seed: 3"),
                           "crlf -> [%s]", out ? out : "(null)");
        else
            MOOD_CHECK_MSG(text && out && !strcmp(out, text), "%s:\n  in  [%s]\n  out [%s]",
                           names[i], text ? text : "", out ? out : "(null)");
        mood_params_free_string(out);
        free(text);
    }
}

/* One more round changes nothing: format(parse(y)) == y for y = format(parse(x)), for every
 * fixture and for the random texts where params.h promises it. */
static void test_fixed_point(void)
{
    cJSON *root = load_json(fixture("params/expected.json")), *c;
    int n_stable = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "cases"))
    {
        char *text = load_text(c->string), *once = text ? round_trip(text) : NULL;
        char *twice = once ? round_trip(once) : NULL;
        MOOD_CHECK_MSG(once && twice && !strcmp(once, twice), "%s:\n  once  [%s]\n  twice [%s]",
                       c->string, once ? once : "(null)", twice ? twice : "(null)");
        mood_params_free_string(once);
        mood_params_free_string(twice);
        free(text);
    }
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "random"))
    {
        int stable = 0;
        char *once = round_trip_ex(json_str(c, "text"), &stable);
        char *twice = once ? round_trip(once) : NULL;
        n_stable += stable;
        MOOD_CHECK_MSG(once && twice && (!stable || !strcmp(once, twice)),
                       "[%s]:\n  once  [%s]\n  twice [%s]", json_str(c, "text"),
                       once ? once : "(null)", twice ? twice : "(null)");
        mood_params_free_string(once);
        mood_params_free_string(twice);
    }
    MOOD_CHECK_MSG(n_stable >= 100, "%d random texts checked", n_stable);
    cJSON_Delete(root);
}

/* The brief's example, built field by field in a scrambled order: the keys come out in A1111's
 * order, caller extras before Version, a canonical extra (VAE hash) after Model. */
static void test_build_layout(void)
{
    static const char want[] =
        "a lighthouse at dusk\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        "Lora hashes: \"inkwash: 0123456789ab, film-grain: 89abcdef0123\", Version: mood 0.1.0";
    static const char want2[] =
        "a lighthouse at dusk\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 1, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: "
        "735e4c3a44, Denoising strength: 0.3, Clip skip: 2, Lora hashes: \"inkwash: 0123456789ab, "
        "film-grain: 89abcdef0123\", Hashes: {\"model\": \"6ce0161689\"}, Civitai resources: "
        "[{\"type\":\"lora\",\"weight\":0.8,\"air\":\"urn:air:sd1:lora:civitai:900001@900101\"}], "
        "Version: mood 0.1.0";
    mood_params p;
    char *out = NULL;
    mood_params_init(&p);
    MOOD_CHECK_OK(mood_params_set(&p, "Version", "mood 0.1.0"));
    MOOD_CHECK_OK(mood_params_add_lora_hash(&p, "inkwash", "0123456789ab"));
    MOOD_CHECK_OK(mood_params_add_lora_hash(&p, "film-grain", "89abcdef0123"));
    MOOD_CHECK_OK(mood_params_set(&p, "Model", "v1-5-pruned-emaonly"));
    MOOD_CHECK_OK(mood_params_set(&p, "Model hash", "6ce0161689"));
    p.width = 512, p.height = 512;
    p.seed = 1, p.has_seed = 1;
    p.cfg_scale = 7.0;
    MOOD_CHECK_OK(mood_params_set(&p, "Schedule type", "Karras"));
    MOOD_CHECK_OK(mood_params_set(&p, "Sampler", "Euler a"));
    p.steps = 20;
    MOOD_CHECK_OK(mood_params_set_prompt(&p, "a lighthouse at dusk", "blurry"));
    MOOD_CHECK_OK(mood_params_format(&out, &p));
    MOOD_CHECK_MSG(out && !strcmp(out, want), "got [%s]", out ? out : "");
    mood_params_free_string(out);

    MOOD_CHECK_OK(mood_params_set_prompt(&p, "a lighthouse at dusk", NULL));
    MOOD_CHECK_OK(mood_params_set(&p, "Hashes", "{\"model\": \"6ce0161689\"}"));
    MOOD_CHECK_OK(mood_params_set(&p, "Civitai resources",
                                  "[{\"type\":\"lora\",\"weight\":0.8,\"air\":\"urn:air:sd1:lora:"
                                  "civitai:900001@900101\"}]"));
    MOOD_CHECK_OK(mood_params_set(&p, "CFG scale", "7.5"));
    MOOD_CHECK_OK(mood_params_set(&p, "VAE hash", "735e4c3a44"));
    MOOD_CHECK_OK(mood_params_set(&p, "Clip skip", "2"));
    p.denoising_strength = 0.3;
    MOOD_CHECK_OK(mood_params_format(&out, &p));
    MOOD_CHECK_MSG(out && !strcmp(out, want2), "got [%s]", out ? out : "");
    {
        char *again = out ? round_trip(out) : NULL;
        MOOD_CHECK_MSG(again && !strcmp(again, out), "round trip [%s]", again ? again : "");
        mood_params_free_string(again);
    }
    mood_params_free_string(out);
    mood_params_dispose(&p);
}

/* A1111's quote(): JSON strings for ',', ':' and newlines; mood also quotes what would not read
 * back (empty, leading '"', surrounding spaces) and leaves whole JSON values alone. */
static void test_quoting(void)
{
    static const char *const cases[][2] = {
        {"a, b", "Note: \"a, b\""},
        {"x:y", "Note: \"x:y\""},
        {"two\nlines", "Note: \"two\\nlines\""},
        {"tab\there", "Note: tab\there"},
        {"say \"hi\"", "Note: say \"hi\""},
        {"\"quoted\"", "Note: \"\\\"quoted\\\"\""},
        {"", "Note: \"\""},
        {" padded ", "Note: \" padded \""},
        {"back\\slash, c", "Note: \"back\\\\slash, c\""},
        {"ctl\x01", "Note: ctl\x01"},
        {"ctl\x01,", "Note: \"ctl\\u0001,\""},
        {"日本, 語", "Note: \"日本, 語\""},
        {"{\"a\": [1, 2], \"b\": \"}\"}", "Note: {\"a\": [1, 2], \"b\": \"}\"}"},
        {"{\"a\": 1}, x", "Note: \"{\\\"a\\\": 1}, x\""},
        {"[1, 2", "Note: \"[1, 2\""},
        {"{a", "Note: \"{a\""},
        {"[x]y", "Note: \"[x]y\""},
        {"{}", "Note: {}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mood_params p, q;
        char *out = NULL;
        char want[256];
        mood_params_init(&p);
        p.steps = 1;
        MOOD_CHECK_OK(mood_params_set(&p, "Note", cases[i][0]));
        MOOD_CHECK_OK(mood_params_set(&p, "Seed resize from", "64x64"));
        MOOD_CHECK_OK(mood_params_format(&out, &p));
        snprintf(want, sizeof want, "Steps: 1, Seed resize from: 64x64, %s", cases[i][1]);
        MOOD_CHECK_MSG(out && !strcmp(out, want), "case %zu: [%s]", i, out ? out : "");
        MOOD_CHECK_OK(mood_params_parse(&q, out ? out : ""));
        MOOD_CHECK_MSG(mood_params_get(&q, "Note") &&
                           !strcmp(mood_params_get(&q, "Note"), cases[i][0]),
                       "case %zu reads back [%s]", i,
                       mood_params_get(&q, "Note") ? mood_params_get(&q, "Note") : "(null)");
        mood_params_dispose(&q);
        mood_params_dispose(&p);
        mood_params_free_string(out);
    }
}

static void test_multiline_and_unicode(void)
{
    static const char prompt[] = "🌊 水墨画の灯台, (mist:1.2)\n\nBREAK reeds\nNegative-ish: no";
    static const char negative[] = "blurry\nlowres, ぼやけ";
    mood_params p, q;
    char *out = NULL;
    mood_params_init(&p);
    MOOD_CHECK_OK(mood_params_set_prompt(&p, prompt, negative));
    p.steps = 4;
    p.has_seed = 1, p.seed = UINT64_MAX;
    MOOD_CHECK_OK(mood_params_set(&p, "Model", "モデル, v2"));
    MOOD_CHECK_OK(mood_params_add_lora_hash(&p, "墨:ink,wash", " abc "));
    MOOD_CHECK_OK(mood_params_format(&out, &p));
    MOOD_CHECK_OK(mood_params_parse(&q, out ? out : ""));
    MOOD_CHECK(!strcmp(q.prompt, prompt));
    MOOD_CHECK(!strcmp(q.negative_prompt, negative));
    MOOD_CHECK(q.steps == 4 && q.has_seed && q.seed == UINT64_MAX);
    MOOD_CHECK(q.model && !strcmp(q.model, "モデル, v2"));
    MOOD_CHECK(q.n_lora_hashes == 1 && !strcmp(q.lora_hashes[0].name, "墨inkwash") &&
               !strcmp(q.lora_hashes[0].hash, "abc"));
    mood_params_dispose(&q);
    mood_params_dispose(&p);
    mood_params_free_string(out);
}

/* A text without a details line is all prompt, as in A1111. */
static void test_not_parameters(void)
{
    mood_params p;
    MOOD_CHECK_OK(mood_params_parse(&p, "  hello world  \n\n"));
    MOOD_CHECK(!p.has_details && !strcmp(p.prompt, "hello world") && !p.negative_prompt[0]);
    MOOD_CHECK(p.n_extras == 0 && p.steps == 0 && !p.has_seed && isnan(p.cfg_scale));
    mood_params_dispose(&p);
    MOOD_CHECK_OK(mood_params_parse(&p, "Negative prompt: only negative"));
    MOOD_CHECK(!p.prompt[0] && !strcmp(p.negative_prompt, "only negative"));
    mood_params_dispose(&p);
}

/* Texts A1111's parser finds no details in but Civitai reads (ecosystem.md 4.2): one line, and
 * Dynamic Prompts' "Template:" lines after the details. A1111's layout is not touched. */
static void test_civitai_layouts(void)
{
    mood_params p;
    MOOD_CHECK_OK(
        mood_params_parse_lenient(&p, "a lighthouse, at dusk. Negative prompt: blurry, lowres. "
                                      "Steps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, "
                                      "Size: 64x64"));
    MOOD_CHECK(p.has_details && p.civitai_layout);
    MOOD_CHECK_MSG(!strcmp(p.prompt, "a lighthouse, at dusk."), "prompt '%s'", p.prompt);
    MOOD_CHECK_MSG(!strcmp(p.negative_prompt, "blurry, lowres."), "negative '%s'",
                   p.negative_prompt);
    MOOD_CHECK(p.steps == 2 && p.has_seed && p.seed == 5 && p.width == 64);
    mood_params_dispose(&p);
    MOOD_CHECK_OK(
        mood_params_parse_lenient(&p, "a cat\nNegative prompt: ugly\nSteps: 4, Sampler: Euler a, "
                                      "CFG scale: 7, Seed: 9, Size: 64x64\nTemplate: a "
                                      "{cat|dog}\nNegative Template: ugly"));
    MOOD_CHECK(p.has_details && p.civitai_layout && p.steps == 4 && p.seed == 9);
    MOOD_CHECK_MSG(!strcmp(p.prompt, "a cat") && !strcmp(p.negative_prompt, "ugly"), "'%s' / '%s'",
                   p.prompt, p.negative_prompt);
    mood_params_dispose(&p);
    /* A1111's own layout: read as A1111 reads it */
    MOOD_CHECK_OK(mood_params_parse_lenient(&p, "a cat\nSteps: 4, Sampler: Euler a, CFG scale: 7, "
                                                "Seed: 9, Size: 64x64"));
    MOOD_CHECK(p.has_details && !p.civitai_layout);
    mood_params_dispose(&p);
    /* a multi-line text A1111 reads (its details do not start with Steps) stays A1111's */
    MOOD_CHECK_OK(mood_params_parse_lenient(&p, "a cat\nNegative prompt: ugly\nSampler: Euler a, "
                                                "Steps: 20, Seed: 1, Size: 64x64"));
    MOOD_CHECK(p.has_details && !p.civitai_layout && p.steps == 20 && p.sampler &&
               !strcmp(p.sampler, "Euler a") && !strcmp(p.negative_prompt, "ugly"));
    mood_params_dispose(&p);
    /* "Steps: " in a text that is still no parameters: all prompt */
    MOOD_CHECK_OK(mood_params_parse_lenient(&p, "my notes. Steps: later"));
    MOOD_CHECK(!p.has_details && !strcmp(p.prompt, "my notes. Steps: later"));
    mood_params_dispose(&p);
    /* the strict parser stays A1111's: the one line is its details, the prompt lost */
    MOOD_CHECK_OK(mood_params_parse(&p, "a cat, Negative prompt: ugly, Steps: 20, Sampler: Euler "
                                        "a, CFG scale: 7"));
    MOOD_CHECK(p.has_details && !p.civitai_layout && !p.prompt[0]);
    mood_params_dispose(&p);
}

static void test_defaults(void)
{
    mood_params p;
    MOOD_CHECK_OK(mood_params_parse(&p, "x\nSteps: 20, Sampler: Euler a, Seed: 1"));
    MOOD_CHECK(p.clip_skip == 1);
    MOOD_CHECK(!p.schedule_type && !strcmp(mood_params_get(&p, "Schedule type"), "Automatic"));
    MOOD_CHECK(!strcmp(mood_params_get(&p, "RNG"), "GPU"));
    MOOD_CHECK(!strcmp(mood_params_get(&p, "VAE Decoder"), "Full"));
    MOOD_CHECK(!strcmp(mood_params_get(&p, "FP8 weight"), "Disable"));
    MOOD_CHECK(!strcmp(mood_params_get(&p, "Sampler"), "Euler a"));
    MOOD_CHECK(mood_params_get(&p, "Steps") == NULL && mood_params_get(&p, "Model") == NULL);
    MOOD_CHECK(mood_params_get(&p, "Whatever") == NULL);
    MOOD_CHECK(isnan(p.denoising_strength) && isnan(p.cfg_scale) && p.width == 0);
    mood_params_dispose(&p);
    MOOD_CHECK_OK(mood_params_parse(&p, "x\nSteps: 20, RNG: CPU, Schedule type: Karras"));
    MOOD_CHECK(!strcmp(mood_params_get(&p, "RNG"), "CPU"));
    MOOD_CHECK(!strcmp(mood_params_get(&p, "Schedule type"), "Karras"));
    mood_params_dispose(&p);
}

/* Civitai's Hashes object fills absent hashes, and formatting does not add them back. */
static void test_civitai_hashes(void)
{
    char *text = load_text("civitai_hashes"), *out = NULL;
    mood_params p;
    MOOD_CHECK_OK(mood_params_parse(&p, text ? text : ""));
    MOOD_CHECK(p.model_hash && !strcmp(p.model_hash, "31e35c80fc"));
    MOOD_CHECK(p.from_hashes == (MOOD_PARAMS_FROM_HASHES_MODEL | MOOD_PARAMS_FROM_HASHES_LORA |
                                 MOOD_PARAMS_FROM_HASHES_TI));
    MOOD_CHECK(p.n_lora_hashes == 1 && !strcmp(p.lora_hashes[0].name, "inkwash") &&
               !strcmp(p.lora_hashes[0].hash, "0123456789"));
    MOOD_CHECK(p.n_ti_hashes == 1 && !strcmp(p.ti_hashes[0].name, "easynegative"));
    MOOD_CHECK(p.clip_skip == 2 && p.width == 768 && p.height == 1024 && p.cfg_scale == 6.5);
    MOOD_CHECK_OK(mood_params_format(&out, &p));
    MOOD_CHECK(out && !strstr(out, "Lora hashes") && !strstr(out, "Model hash") &&
               strstr(out, ", Hashes: {\"vae\": \"c6a580b13a\", \"model\""));
    mood_params_free_string(out);
    mood_params_dispose(&p);

    /* Own keys win over Hashes */
    MOOD_CHECK_OK(mood_params_parse(&p, "x\nSteps: 1, Model hash: aaaa, Lora hashes: \"a: 1\", "
                                        "Hashes: {\"model\": \"bbbb\", \"lora:c\": \"2\"}"));
    MOOD_CHECK(!strcmp(p.model_hash, "aaaa") && p.from_hashes == 0);
    MOOD_CHECK(p.n_lora_hashes == 1 && !strcmp(p.lora_hashes[0].name, "a"));
    mood_params_dispose(&p);
    free(text);
}

static void test_fields_from_text(void)
{
    mood_params p;
    MOOD_CHECK_OK(mood_params_parse(&p, "x\nSteps: 20, Seed: 12, Steps: 31, Size: 1024x768, "
                                        "Seed: 18446744073709551615, CFG scale: 1e1, Denoising "
                                        "strength: .5, Clip skip: 3"));
    MOOD_CHECK(p.steps == 31 && p.seed == UINT64_MAX && p.width == 1024 && p.height == 768);
    MOOD_CHECK(p.cfg_scale == 10.0 && p.denoising_strength == 0.5 && p.clip_skip == 3);
    mood_params_dispose(&p);
    /* values that do not fit stay as extras; a later good value replaces them */
    MOOD_CHECK_OK(mood_params_parse(&p, "x\nSteps: 0, Seed: 18446744073709551616, Size: 0x5, "
                                        "CFG scale: nan, Lora hashes: \"no colon\""));
    MOOD_CHECK(p.steps == 0 && !p.has_seed && p.width == 0 && isnan(p.cfg_scale));
    MOOD_CHECK(p.n_extras == 5 && p.n_lora_hashes == 0);
    MOOD_CHECK(!strcmp(mood_params_get(&p, "Lora hashes"), "no colon"));
    MOOD_CHECK_OK(mood_params_set(&p, "Steps", "12"));
    MOOD_CHECK(p.steps == 12 && p.n_extras == 4);
    mood_params_dispose(&p);
}

static void test_errors(void)
{
    static const char *const bad_utf8[] = {"\xff", "ok \xc3", "\xc0\x80", "\xed\xa0\x80",
                                           "\xf4\x90\x80\x80"};
    mood_params p;
    mood_params_init(&p);
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        mood_params q;
        MOOD_CHECK(mood_params_parse(&q, bad_utf8[i]) == MOOD_EINVAL);
        MOOD_CHECK(!strcmp(q.prompt, "") && q.n_extras == 0);
        MOOD_CHECK(mood_params_set(&p, "Note", bad_utf8[i]) == MOOD_EINVAL);
    }
    MOOD_CHECK(mood_params_parse(&p, NULL) == MOOD_EINVAL);
    MOOD_CHECK(mood_params_set(&p, "a", "1") == MOOD_EINVAL);       /* one character */
    MOOD_CHECK(mood_params_set(&p, " ab", "1") == MOOD_EINVAL);     /* leading space */
    MOOD_CHECK(mood_params_set(&p, "a:b", "1") == MOOD_EINVAL);     /* ':' */
    MOOD_CHECK(mood_params_set(&p, "a,b", "1") == MOOD_EINVAL);     /* ',' */
    MOOD_CHECK(mood_params_set(&p, "-ab", "1") == MOOD_EINVAL);     /* starts with '-' */
    MOOD_CHECK(mood_params_set(&p, "Steps", "abc") == MOOD_EINVAL); /* does not parse */
    MOOD_CHECK(mood_params_set(&p, "Size", "512x") == MOOD_EINVAL); /* does not parse */
    MOOD_CHECK(mood_params_set(&p, "Lora hashes", "x") == MOOD_EINVAL);
    MOOD_CHECK(mood_params_add_lora_hash(&p, "a", "1,2") == MOOD_EINVAL);
    MOOD_CHECK(p.steps == 0 && p.n_extras == 0 && p.n_lora_hashes == 0 && p.width == 0);
    MOOD_CHECK_OK(mood_params_set(&p, "Hires upscaler", "4x-UltraSharp"));
    MOOD_CHECK_OK(mood_params_set(&p, "Token-merge/ratio 2", "0.5"));
    MOOD_CHECK_OK(mood_params_set(&p, "画風", "水墨"));
    MOOD_CHECK(p.n_extras == 3);
    mood_params_dispose(&p);
}

/* mood_params_lora_hash / model_hash give what A1111 shows (hashes.json, Python hashlib). */
static void test_hash_helpers(void)
{
    mood_file_hashes h;
    char lora[13], model[11];
    MOOD_CHECK_OK(mood_hash_file(&h, fixture("st/mock_ink_style.safetensors"), NULL, NULL));
    mood_params_lora_hash(lora, &h);
    mood_params_model_hash(model, &h);
    MOOD_CHECK_MSG(!strcmp(lora, "e00e5eb94441"), "lora %s", lora);
    MOOD_CHECK_MSG(!strcmp(model, "3b4b65d642"), "model %s", model);
    MOOD_CHECK_OK(mood_hash_file(&h, fixture("params/mood_own.txt"), NULL, NULL));
    mood_params_lora_hash(lora, &h);
    MOOD_CHECK(!h.is_safetensors && strlen(lora) == 12 && !strncmp(lora, h.sha256, 12));
}

/* Every allocation of parse and format can fail: the error is MOOD_ENOMEM, nothing leaks
 * (ASan) and the struct is left empty. */
static void test_alloc_failures(void)
{
    char *text = load_text("mood_own_full");
    int parsed = 0, formatted = 0;
    for (long n = 1; n < 2000 && text && !parsed; n++) {
        mood_params p;
        int rc;
        mood__alloc_fail_at(n);
        rc = mood_params_parse(&p, text);
        mood__alloc_fail_at(0);
        if (rc == 0) {
            parsed = 1;
            for (long m = 1; m < 2000 && !formatted; m++) {
                char *out = NULL;
                mood__alloc_fail_at(m);
                rc = mood_params_format(&out, &p);
                mood__alloc_fail_at(0);
                if (rc == 0) {
                    formatted = 1;
                    MOOD_CHECK(out && !strcmp(out, text));
                } else {
                    MOOD_CHECK_MSG(rc == MOOD_ENOMEM && !out, "format fail at %ld: %d", m, rc);
                }
                mood_params_free_string(out);
            }
        } else {
            MOOD_CHECK_MSG(rc == MOOD_ENOMEM, "parse fail at %ld: %d", n, rc);
            MOOD_CHECK(p.n_extras == 0 && p.prompt && !p.prompt[0]);
        }
        mood_params_dispose(&p);
    }
    MOOD_CHECK(parsed && formatted);
    free(text);
}

/* Numbers as Python's repr writes them (what A1111's text holds): the shortest that reads back,
 * plain between 1e-4 and 1e16 ("10", never "1e+01"). */
static void test_number_format(void)
{
    static const struct {
        double v;
        int single;
        const char *want;
    } cases[] = {
        {10, 0, "10"},          {100, 0, "100"},    {30, 1, "30"},
        {7.5, 0, "7.5"},        {-2, 1, "-2"},      {1234567, 0, "1234567"},
        {0.0001, 0, "0.0001"},  {1e-5, 0, "1e-05"}, {1e20, 0, "1e+20"},
        {0.7 * 0.6, 1, "0.42"}, {0.1, 0, "0.1"},    {1e15, 0, "1000000000000000"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[32];
        mood_params_format_number(out, cases[i].v, cases[i].single);
        MOOD_CHECK_MSG(strcmp(out, cases[i].want) == 0, "%.17g: '%s', not '%s'", cases[i].v, out,
                       cases[i].want);
    }
}

MOOD_TEST_MAIN(MOOD_T(test_number_format), MOOD_T(test_reference_parse),
               MOOD_T(test_reference_random), MOOD_T(test_own_round_trip), MOOD_T(test_fixed_point),
               MOOD_T(test_build_layout), MOOD_T(test_quoting), MOOD_T(test_multiline_and_unicode),
               MOOD_T(test_not_parameters), MOOD_T(test_civitai_layouts), MOOD_T(test_defaults),
               MOOD_T(test_civitai_hashes), MOOD_T(test_fields_from_text), MOOD_T(test_errors),
               MOOD_T(test_hash_helpers), MOOD_T(test_alloc_failures))
