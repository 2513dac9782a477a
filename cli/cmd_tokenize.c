/*
 * cmd_tokenize.c: `mood tokenize PROMPT [--json]`: how the SD text encoder sees a prompt: the
 * CLIP token ids with their vocabulary pieces, the A1111 emphasis weight of each, and the chunks
 * of 75 tokens with the count A1111 shows above its prompt box ("12/75").
 */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mood/tokenizer.h"

const char cmd_tokenize_help[] =
    "usage: mood tokenize PROMPT [--json] [--plain] [--sd2] [--vocab FILE]\n\n"
    "Shows how Stable Diffusion's CLIP text encoder reads PROMPT: each token's id, its\n"
    "vocabulary piece (\"</w>\" marks the end of a word) and its weight, chunk by chunk.\n"
    "Quote the prompt; several arguments are joined with spaces.\n\n"
    "The prompt is read as AUTOMATIC1111 reads it:\n"
    "  (word)        weight x1.1      ((word)) x1.21, and so on\n"
    "  [word]        weight /1.1\n"
    "  (word:1.3)    weight x1.3\n"
    "  \\( \\) \\[ \\]   literal brackets\n"
    "  BREAK         start a new chunk here\n"
    "  <lora:...>    extra-network tags (<lora:>, <lyco:>, <style:>, <hypernet:>...) are no\n"
    "                text: left out, as gen and A1111 leave them out before encoding\n"
    "  # comment     '#' and the rest of its line are left out (A1111 1.8 and later)\n"
    "  text:1.3      a final :N is the prompt's weight, no text: gen multiplies CFG by it\n"
    "The encoder takes 75 tokens at a time (77 with its start and end tokens); a longer prompt\n"
    "is cut into chunks of 75, moving the words after a comma near the end of a full chunk to\n"
    "the next one. The count is shown as A1111 shows it, e.g. '12/75' or '80/150'.\n\n"
    "  --json        print ids, pieces, weights and counts as JSON (the full 77 ids and\n"
    "                weights of each chunk, and the prompt's tokens with their pieces)\n"
    "  --plain       no emphasis or BREAK: brackets are ordinary text\n"
    "  --sd2         pad with id 0 after the end token, as SD2's OpenCLIP encoder does\n"
    "  --vocab FILE  the BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); by default the one\n"
    "                shipped with mood ($MOOD_DATA/clip/ overrides)\n\n"
    "Example: mood tokenize \"a (red:1.3) fox, [blurry]\"\n"
    "Exit status: 0 ok, 1 bad prompt (not UTF-8, unreadable weight), 2 vocabulary missing.\n";

/* Removes every extra-network tag <word:...> (A1111's re_extra_net "<(\w+):([^>]+)>"), in place:
 * they are no text to the encoder (styles/resolve.c takes them out before gen encodes). */
static void strip_network_tags(char *s)
{
    char *o = s;
    for (const char *p = s; *p;) {
        size_t tag = mood_prompt_network_tag(p, NULL);
        if (tag) {
            p += tag;
            continue;
        }
        *o++ = *p++;
    }
    *o = '\0';
}

/* A JSON number that reads back as exactly d (cJSON prints 15 digits, which loses 1/1.1). */
static cJSON *exact_number(double d)
{
    char buf[32];
    for (int digits = 15; digits <= 17; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return cJSON_CreateRaw(buf);
}

static cJSON *chunk_json(const mood_tokenizer *t, const mood_prompt_chunk *k)
{
    cJSON *o = cJSON_CreateObject(), *tokens = cJSON_CreateArray();
    cJSON *ids = cJSON_CreateArray(), *weights = cJSON_CreateArray();
    char count[32];
    snprintf(count, sizeof count, "%d/%d", k->used, MOOD_CLIP_CHUNK);
    cJSON_AddNumberToObject(o, "used", k->used);
    cJSON_AddStringToObject(o, "count", count);
    for (int i = 0; i < k->used; i++) {
        cJSON *tok = cJSON_CreateObject();
        cJSON_AddNumberToObject(tok, "id", k->ids[1 + i]);
        cJSON_AddStringToObject(tok, "piece", mood_tokenizer_piece(t, k->ids[1 + i]));
        cJSON_AddItemToObject(tok, "weight", exact_number(k->weights[1 + i]));
        cJSON_AddItemToArray(tokens, tok);
    }
    for (int i = 0; i < MOOD_CLIP_CONTEXT; i++) {
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(k->ids[i]));
        cJSON_AddItemToArray(weights, exact_number(k->weights[i]));
    }
    cJSON_AddItemToObject(o, "tokens", tokens);
    cJSON_AddItemToObject(o, "ids", ids);
    cJSON_AddItemToObject(o, "weights", weights);
    return o;
}

/* What A1111 does before it parses the prompt: '#' comments left out (said), and a final ":N"
 * taken as the prompt's weight (gen multiplies CFG by it). Takes prompt over; NULL when out of
 * memory. */
static char *a1111_text(char *prompt, double *weight)
{
    int removed = 0;
    char *plain = mood_prompt_strip_comments(prompt, &removed), *out;
    free(prompt);
    if (!plain)
        return NULL;
    if (removed)
        cli_warn("the prompt has '#' comments: left out to the end of their lines, as A1111 "
                 "does");
    out = strndup(plain, mood_prompt_trailing_weight(plain, weight));
    mood_prompt_free_string(plain);
    return out;
}

static int print_json(const mood_tokenizer *t, const char *prompt, const mood_prompt_tokens *p,
                      double weight)
{
    cJSON *o = cJSON_CreateObject(), *chunks = cJSON_CreateArray();
    char count[32];
    snprintf(count, sizeof count, "%d/%d", p->token_count, p->target_count);
    cJSON_AddStringToObject(o, "prompt", prompt);
    cJSON_AddNumberToObject(o, "prompt_weight", weight); /* a final ":N": CFG x N */
    cJSON_AddNumberToObject(o, "token_count", p->token_count);
    cJSON_AddNumberToObject(o, "target_count", p->target_count);
    cJSON_AddStringToObject(o, "count", count);
    for (size_t i = 0; i < p->n_chunks; i++)
        cJSON_AddItemToArray(chunks, chunk_json(t, &p->chunks[i]));
    cJSON_AddItemToObject(o, "chunks", chunks);
    return cli_print_json(o);
}

static void print_text(const mood_tokenizer *t, const mood_prompt_tokens *p)
{
    printf("%d/%d tokens, %zu chunk%s of 75 (each sent as 77 ids: start, 75, end)\n",
           p->token_count, p->target_count, p->n_chunks, p->n_chunks == 1 ? "" : "s");
    for (size_t c = 0; c < p->n_chunks; c++) {
        const mood_prompt_chunk *k = &p->chunks[c];
        printf("\nchunk %zu: %d/%d\n   pos     id  weight  piece\n", c + 1, k->used,
               MOOD_CLIP_CHUNK);
        for (int i = 0; i < k->used; i++)
            printf("  %4d  %5d  %6.4g  %s\n", i + 1, k->ids[1 + i], k->weights[1 + i],
                   mood_tokenizer_piece(t, k->ids[1 + i]));
        printf("  (+ start %d, then %d x padding %d and end %d)\n", MOOD_CLIP_START,
               MOOD_CLIP_CHUNK - k->used, k->ids[MOOD_CLIP_CONTEXT - 2], MOOD_CLIP_END);
    }
}

/* The non-option arguments joined with spaces (caller frees); NULL when out of memory. */
static char *join_words(char **words, int n)
{
    size_t len = 1;
    char *out, *p;
    for (int i = 0; i < n; i++)
        len += strlen(words[i]) + 1;
    out = p = malloc(len);
    for (int i = 0; out && i < n; i++) {
        size_t k = strlen(words[i]);
        if (i)
            *p++ = ' ';
        memcpy(p, words[i], k);
        p += k;
    }
    if (out)
        *p = '\0';
    return out;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *vocab = NULL;
    char **words = calloc((size_t)argc, sizeof *words);
    int json = 0, n_words = 0, rc = 0, err = 0;
    mood_prompt_options opts;
    mood_tokenizer *t = NULL;
    mood_prompt_tokens p = {0};
    char *prompt = NULL;
    double weight = 1.0;
    mood_prompt_options_init(&opts);
    if (!words)
        return 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--plain") == 0) {
            opts.emphasis = 0;
        } else if (strcmp(argv[i], "--sd2") == 0) {
            opts.pad_id = 0;
        } else if (strcmp(argv[i], "--vocab") == 0) {
            if (++i == argc) {
                rc = cli_usage_error("tokenize", "option '--vocab' needs a value (a FILE)");
                goto done;
            }
            vocab = argv[i];
        } else if (strcmp(argv[i], "--") == 0) {
            while (++i < argc)
                words[n_words++] = argv[i];
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            rc = cli_usage_error("tokenize", "unknown option '%s'", argv[i]);
            goto done;
        } else {
            words[n_words++] = argv[i];
        }
    }
    if (!n_words) {
        rc = cli_usage_error("tokenize", "missing PROMPT");
        goto done;
    }
    prompt = join_words(words, n_words);
    if (prompt && (prompt = a1111_text(prompt, &weight)) != NULL)
        strip_network_tags(prompt);
    if (!prompt) {
        fprintf(stderr, "mood: error: out of memory\n");
        rc = 2;
        goto done;
    }
    if ((err = mood_tokenizer_load(&t, vocab)) < 0 ||
        (err = mood_prompt_tokenize(&p, t, prompt, &opts)) < 0) {
        rc = cli_fail(err);
        goto done;
    }
    if (json) {
        rc = print_json(t, prompt, &p, weight);
    } else {
        print_text(t, &p);
        if (weight != 1.0)
            printf("prompt weight %g: A1111 multiplies the guidance scale (CFG) by it\n", weight);
    }
done:
    mood_prompt_tokens_dispose(&p);
    mood_tokenizer_free(t);
    free(prompt);
    free(words);
    return rc;
}
