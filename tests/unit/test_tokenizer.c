/*
 * test_tokenizer.c: the CLIP tokenizer and A1111 prompt syntax against the references in
 * tests/fixtures/tokenizer/corpus.json (tools/make_fixtures_tokenizer.py): token ids from
 * transformers' CLIPTokenizer, fragments from A1111's parse_prompt_attention, chunks and counts
 * from its tokenize_line. Every prompt must match exactly. Also: the vocabulary found without
 * configuration and through $MOOD_DATA, pieces, bad input, options, allocation failures.
 */
#include <sys/stat.h>

#include "harness.h"
#include "common/common.h"
#include "mood/tokenizer.h"

static mood_tokenizer *tok;

static mood_tokenizer *get_tokenizer(void)
{
    if (!tok && mood_tokenizer_load(&tok, NULL) != 0)
        fprintf(stderr, "cannot load the tokenizer: %s\n", mood_error_last());
    return tok;
}

static cJSON *corpus(void)
{
    static cJSON *root;
    if (!root)
        root = load_json(fixture("tokenizer/corpus.json"));
    return cJSON_GetObjectItemCaseSensitive(root, "cases");
}

static int same_ids(const mood_token_ids *got, const cJSON *want)
{
    size_t i = 0;
    const cJSON *v;
    if ((size_t)cJSON_GetArraySize(want) != got->n)
        return 0;
    cJSON_ArrayForEach(v, want)
    {
        if (got->ids[i++] != v->valueint)
            return 0;
    }
    return 1;
}

static void test_ids_match_reference(void)
{
    mood_tokenizer *t = get_tokenizer();
    const cJSON *c;
    int total = 0, same = 0;
    MOOD_CHECK(t != NULL && corpus() != NULL);
    if (!t || !corpus())
        return;
    cJSON_ArrayForEach(c, corpus())
    {
        const char *prompt = json_str(c, "prompt");
        mood_token_ids ids;
        mood_token_ids_init(&ids);
        MOOD_CHECK_OK(mood_tokenizer_encode(t, &ids, prompt, strlen(prompt)));
        total++;
        if (same_ids(&ids, cJSON_GetObjectItemCaseSensitive(c, "ids")))
            same++;
        else
            MOOD_CHECK_MSG(0, "ids differ for \"%s\"", prompt);
        mood_token_ids_dispose(&ids);
    }
    printf("     token ids: %d/%d prompts exactly as transformers' CLIPTokenizer\n", same, total);
    MOOD_CHECK(total >= 200);
}

static int same_fragments(const mood_prompt_fragments *f, const cJSON *want)
{
    size_t i = 0;
    const cJSON *v;
    if ((size_t)cJSON_GetArraySize(want) != f->n)
        return 0;
    cJSON_ArrayForEach(v, want)
    {
        const cJSON *text = cJSON_GetArrayItem(v, 0), *w = cJSON_GetArrayItem(v, 1);
        if (strcmp(f->items[i].text, text->valuestring) != 0 ||
            f->items[i].weight != w->valuedouble)
            return 0;
        i++;
    }
    return 1;
}

/* Compares one chunk with the reference: its ids up to the padding, then end tokens, and the
 * weights (listed where not 1). */
static int same_chunk(const mood_prompt_chunk *k, const cJSON *want)
{
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(want, "ids");
    const cJSON *weights = cJSON_GetObjectItemCaseSensitive(want, "weights"), *v;
    double w[MOOD_CLIP_CONTEXT];
    int n = cJSON_GetArraySize(ids), i = 0;
    if (k->ids[0] != MOOD_CLIP_START || k->ids[MOOD_CLIP_CONTEXT - 1] != MOOD_CLIP_END)
        return 0;
    cJSON_ArrayForEach(v, ids)
    {
        if (k->ids[1 + i++] != v->valueint)
            return 0;
    }
    for (i = 1 + n; i < MOOD_CLIP_CONTEXT; i++) {
        if (k->ids[i] != MOOD_CLIP_END)
            return 0;
    }
    for (i = 0; i < MOOD_CLIP_CONTEXT; i++)
        w[i] = 1.0;
    cJSON_ArrayForEach(v, weights)
    {
        w[cJSON_GetArrayItem(v, 0)->valueint] = cJSON_GetArrayItem(v, 1)->valuedouble;
    }
    for (i = 0; i < MOOD_CLIP_CONTEXT; i++) {
        if (k->weights[i] != w[i])
            return 0;
    }
    return 1;
}

static int same_chunks(const mood_prompt_tokens *p, const cJSON *c)
{
    const cJSON *chunks = cJSON_GetObjectItemCaseSensitive(c, "chunks"), *v;
    size_t i = 0;
    if (p->token_count != cJSON_GetObjectItemCaseSensitive(c, "token_count")->valueint ||
        p->target_count != cJSON_GetObjectItemCaseSensitive(c, "target_count")->valueint ||
        p->n_chunks != (size_t)cJSON_GetArraySize(chunks))
        return 0;
    cJSON_ArrayForEach(v, chunks)
    {
        if (!same_chunk(&p->chunks[i++], v))
            return 0;
    }
    return 1;
}

static void test_a1111_match_reference(void)
{
    mood_tokenizer *t = get_tokenizer();
    const cJSON *c;
    int total = 0, same = 0;
    if (!t || !corpus())
        return;
    cJSON_ArrayForEach(c, corpus())
    {
        const char *prompt = json_str(c, "prompt");
        mood_prompt_fragments f;
        mood_prompt_tokens p;
        int ok, rc_parse = mood_prompt_parse(&f, prompt);
        int rc = mood_prompt_tokenize(&p, t, prompt, NULL);
        total++;
        if (cJSON_GetObjectItemCaseSensitive(c, "a1111_error")) {
            ok = rc_parse == MOOD_EINVAL && rc == MOOD_EINVAL;
        } else {
            ok = rc_parse == 0 && rc == 0 &&
                 same_fragments(&f, cJSON_GetObjectItemCaseSensitive(c, "fragments")) &&
                 same_chunks(&p, c);
        }
        if (ok)
            same++;
        else
            MOOD_CHECK_MSG(0, "A1111 fragments/chunks differ for \"%s\" (rc %d)", prompt, rc);
        mood_prompt_fragments_dispose(&f);
        mood_prompt_tokens_dispose(&p);
    }
    printf("     A1111 fragments, chunks, weights, counts: %d/%d prompts exact\n", same, total);
}

static void test_pieces(void)
{
    mood_tokenizer *t = get_tokenizer();
    char buf[64];
    if (!t)
        return;
    MOOD_CHECK(strcmp(mood_tokenizer_piece(t, 2368), "cat</w>") == 0);
    MOOD_CHECK(strcmp(mood_tokenizer_piece(t, MOOD_CLIP_START), "<|startoftext|>") == 0);
    MOOD_CHECK(strcmp(mood_tokenizer_piece(t, MOOD_CLIP_END), "<|endoftext|>") == 0);
    MOOD_CHECK(mood_tokenizer_piece(t, MOOD_CLIP_VOCAB_SIZE) == NULL);
    MOOD_CHECK(mood_tokenizer_piece(t, -1) == NULL);
    MOOD_CHECK(mood_tokenizer_piece_text(t, 2368, buf, sizeof buf) == 3 && !strcmp(buf, "cat"));
    /* "cafÃ©</w>" is the byte-level form of the bytes of "café". */
    MOOD_CHECK(mood_tokenizer_piece_text(t, 15304, buf, sizeof buf) == 5 &&
               !strcmp(buf, "caf\xc3\xa9"));
    MOOD_CHECK(mood_tokenizer_piece_text(t, 2368, buf, 2) == 3 && !strcmp(buf, "c"));
    MOOD_CHECK(mood_tokenizer_piece_text(t, 99999, buf, sizeof buf) == -1);
}

static void test_bad_utf8(void)
{
    mood_tokenizer *t = get_tokenizer();
    static const char *bad[] = {"a\xff", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"};
    mood_token_ids ids;
    if (!t)
        return;
    mood_token_ids_init(&ids);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        MOOD_CHECK(mood_tokenizer_encode(t, &ids, bad[i], strlen(bad[i])) == MOOD_EINVAL);
        MOOD_CHECK(ids.n == 0);
    }
    MOOD_CHECK(strstr(mood_error_last(), "UTF-8") != NULL);
    mood_token_ids_dispose(&ids);
}

static void test_options(void)
{
    mood_tokenizer *t = get_tokenizer();
    mood_prompt_options o;
    mood_prompt_tokens p;
    if (!t)
        return;
    mood_prompt_options_init(&o);
    o.pad_id = 0; /* SD2: padding after the first end token is 0 */
    MOOD_CHECK_OK(mood_prompt_tokenize(&p, t, "a cat", &o));
    MOOD_CHECK(p.n_chunks == 1 && p.chunks[0].used == 2 && p.chunks[0].ids[3] == MOOD_CLIP_END &&
               p.chunks[0].ids[4] == 0 && p.chunks[0].ids[76] == 0);
    MOOD_CHECK(p.token_count == 2 && p.target_count == 75);
    mood_prompt_tokens_dispose(&p);
    mood_prompt_options_init(&o);
    o.emphasis = 0; /* brackets are text then */
    MOOD_CHECK_OK(mood_prompt_tokenize(&p, t, "(cat)", &o));
    MOOD_CHECK(p.chunks[0].used == 3 && p.chunks[0].weights[2] == 1.0);
    mood_prompt_tokens_dispose(&p);
    /* Without backtracking a 76th token simply starts the next chunk. */
    mood_prompt_options_init(&o);
    o.comma_backtrack = 0;
    {
        char text[1024] = "";
        for (int i = 0; i < 70; i++)
            strcat(text, "cat ");
        strcat(text, ", dog dog dog dog dog dog");
        MOOD_CHECK_OK(mood_prompt_tokenize(&p, t, text, &o));
        MOOD_CHECK(p.n_chunks == 2 && p.chunks[0].used == 75 && p.chunks[1].used == 2);
        mood_prompt_tokens_dispose(&p);
        o.comma_backtrack = 20;
        MOOD_CHECK_OK(mood_prompt_tokenize(&p, t, text, &o));
        MOOD_CHECK(p.n_chunks == 2 && p.chunks[0].used == 71 && p.chunks[1].used == 6);
        MOOD_CHECK(p.token_count == 81 && p.target_count == 150);
        mood_prompt_tokens_dispose(&p);
    }
}

static void test_data_lookup(void)
{
    char path[4096];
    mood_tokenizer *t = NULL;
    const char *old = getenv("MOOD_DATA");
    MOOD_CHECK_OK(mood_tokenizer_default_path(path, sizeof path));
    MOOD_CHECK(strstr(path, "clip/bpe_simple_vocab_16e6.txt.gz") != NULL);
    setenv("MOOD_DATA", scratch_dir(), 1);
    MOOD_CHECK(mood_tokenizer_load(&t, NULL) == MOOD_ENOTFOUND && t == NULL);
    MOOD_CHECK(strstr(mood_error_last(), "MOOD_DATA") != NULL);
    /* A folder given by $MOOD_DATA with a damaged vocabulary is used, and rejected. */
    mkdir(scratch_path("clip"), 0755);
    MOOD_CHECK(write_file(scratch_path("clip/bpe_simple_vocab_16e6.txt.gz"), "#v\na b\n", 7) == 0);
    MOOD_CHECK(mood_tokenizer_load(&t, NULL) == MOOD_EFORMAT && t == NULL);
    MOOD_CHECK(write_file(scratch_path("clip/bpe_simple_vocab_16e6.txt.gz"), "#v\nab\n", 6) == 0);
    MOOD_CHECK(mood_tokenizer_load(&t, NULL) == MOOD_EFORMAT && t == NULL);
    if (old)
        setenv("MOOD_DATA", old, 1);
    else
        unsetenv("MOOD_DATA");
    MOOD_CHECK(mood_tokenizer_load(&t, "/nonexistent/vocab.txt.gz") == MOOD_ENOTFOUND);
    remove(scratch_path("clip/bpe_simple_vocab_16e6.txt.gz"));
    rmdir(scratch_path("clip"));
    rmdir(scratch_dir());
}

/* Every allocation of loading and of tokenizing a prompt may fail and is cleaned up. */
static void test_alloc_failures(void)
{
    mood_tokenizer *t = get_tokenizer();
    int failed_load = 0, failed_prompt = 0;
    if (!t)
        return;
    for (long n = 1; n < 12; n++) {
        mood_tokenizer *u = NULL;
        mood__alloc_fail_at(n);
        if (mood_tokenizer_load(&u, NULL) == MOOD_ENOMEM) {
            failed_load++;
            MOOD_CHECK(u == NULL);
        }
        mood__alloc_fail_at(0);
        mood_tokenizer_free(u);
    }
    for (long n = 1; n < 40; n++) {
        mood_prompt_tokens p;
        mood__alloc_fail_at(n);
        if (mood_prompt_tokenize(&p, t, "a (fresh:1.2) [word], BREAK zebra-crossing ünïcödé",
                                 NULL) == MOOD_ENOMEM) {
            failed_prompt++;
            MOOD_CHECK(p.chunks == NULL && p.n_chunks == 0);
        }
        mood__alloc_fail_at(0);
        mood_prompt_tokens_dispose(&p);
    }
    MOOD_CHECK(failed_load > 3 && failed_prompt > 3);
}

static void test_cleanup(void)
{
    mood_tokenizer_free(tok);
    tok = NULL;
    mood_tokenizer_free(NULL);
}

/* '#' comments and a prompt's final ":N" weight as A1111's own regular expressions give them
 * (the table is what tools/make_cases_a1111_prompt.py prints: Python's re on A1111's patterns). */
static void test_a1111_comments_and_weight(void)
{
    static const struct {
        const char *prompt, *uncommented;
        size_t text_len;
        double weight;
    } cases[] = {
        {"a cat", "a cat", 5, 1.0},
        {"a cat # a comment\nsitting", "a cat \nsitting", 25, 1.0},
        {"# whole line\na cat", "\na cat", 18, 1.0},
        {"a\n#b\n#c\nd", "a\n\nd", 9, 1.0},
        {"#only", "\n", 5, 1.0},
        {"a # b # c", "a \n", 9, 1.0},
        {"x#y\nz", "x\nz", 5, 1.0},
        {"", "", 0, 1.0},
        {"a cat:1.3", "a cat:1.3", 5, 1.3},
        {"a cat: 1.3  ", "a cat: 1.3  ", 5, 1.3},
        {"ratio 16:9", "ratio 16:9", 8, 9.0},
        {"(a:1.2", "(a:1.2", 2, 1.2},
        {"a:1.2:1.3", "a:1.2:1.3", 5, 1.3},
        {"a:.5", "a:.5", 1, 0.5},
        {"a:1.", "a:1.", 1, 1.0},
        {"a:.", "a:.", 3, 1.0},
        {"a:1.5.", "a:1.5.", 6, 1.0},
        {"a: -2", "a: -2", 1, -2.0},
        {"a:+0.5", "a:+0.5", 1, 0.5},
        {"no weight here", "no weight here", 14, 1.0},
        {"a (cat):1.3", "a (cat):1.3", 7, 1.3},
        {"a cat\n:1.3", "a cat\n:1.3", 5, 1.3},
        {":5", ":5", 0, 5.0},
        {"a:1e1", "a:1e1", 5, 1.0},
        {"a:1.5x", "a:1.5x", 6, 1.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int removed = -1;
        double w = 0;
        char *u = mood_prompt_strip_comments(cases[i].prompt, &removed);
        size_t n = mood_prompt_trailing_weight(cases[i].prompt, &w);
        MOOD_CHECK_MSG(u && strcmp(u, cases[i].uncommented) == 0, "'%s': '%s'", cases[i].prompt,
                       u ? u : "(null)");
        MOOD_CHECK(removed == (strcmp(cases[i].prompt, cases[i].uncommented) != 0));
        MOOD_CHECK_MSG(n == cases[i].text_len && w == cases[i].weight, "'%s': %zu, %g",
                       cases[i].prompt, n, w);
        mood_prompt_free_string(u);
    }
}

/* A1111 1.6+'s re_attention reads ":\s*N\s*)", and Python's \s in a str is Unicode's white
 * space (no-break space, U+3000...; not U+200B, which is no white space to it). */
static void test_weight_unicode_space(void)
{
    static const struct {
        const char *prompt;
        size_t n;
        double w0;
    } cases[] = {{"(a:\xc2\xa0"
                  "1.5)",
                  1, 1.5},
                 {"(a:\xe3\x80\x80"
                  "1.5\xe3\x80\x80)",
                  1, 1.5},
                 {"(a:\xe2\x80\xaf"
                  "2)",
                  1, 2},
                 {"(a:\xe2\x80\x8b"
                  "1.5)",
                  1, 1.1}}; /* U+200B: text "a:<ZWSP>1.5" at 1.1 */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mood_prompt_fragments f;
        MOOD_CHECK_OK(mood_prompt_parse(&f, cases[i].prompt));
        MOOD_CHECK_MSG(f.n == cases[i].n && f.n && fabs(f.items[0].weight - cases[i].w0) < 1e-12,
                       "case %zu: %zu fragments, '%s' at %g", i, f.n, f.n ? f.items[0].text : "",
                       f.n ? f.items[0].weight : 0);
        mood_prompt_fragments_dispose(&f);
    }
}

/* A1111's re_extra_net "<(\w+):([^>]+)>" with Python's \w (Unicode letters and digits, '_'),
 * as python3 -c 're.match(...)' says for each case. */
static void test_network_tags(void)
{
    static const struct {
        const char *s;
        size_t len, kind;
    } cases[] = {
        {"<lora:x:0.8> rest", 12, 4},
        {"<hypernet:y>", 12, 8},
        {"<\xc3\xa9:2>", 6, 2},         /* é is \w */
        {"<\xd9\xa3:x>", 6, 2},         /* ARABIC-INDIC DIGIT THREE is \w */
        {"<\xf0\x9f\x98\x80:1>", 0, 0}, /* an emoji is not */
        {"<a_1:>", 0, 0},               /* [^>]+ needs a character */
        {"<:x>", 0, 0},
        {"<a b:x>", 0, 0},
        {"<lora:x", 0, 0},
        {"<lora:a\nb>", 10, 4}, /* [^>] takes a newline */
        {"<\xc3:x>", 0, 0},    /* a broken sequence */
        {"x<lora:y>", 0, 0},   /* only at the start */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t kind = 0, n = mood_prompt_network_tag(cases[i].s, &kind);
        MOOD_CHECK_MSG(n == cases[i].len && (!n || kind == cases[i].kind), "case %zu: %zu, %zu", i,
                       n, kind);
    }
}

MOOD_TEST_MAIN(MOOD_T(test_network_tags), MOOD_T(test_weight_unicode_space),
               MOOD_T(test_a1111_comments_and_weight), MOOD_T(test_ids_match_reference),
               MOOD_T(test_a1111_match_reference), MOOD_T(test_pieces), MOOD_T(test_bad_utf8),
               MOOD_T(test_options), MOOD_T(test_data_lookup), MOOD_T(test_alloc_failures),
               MOOD_T(test_cleanup))
