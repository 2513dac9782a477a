/*
 * prompt.c: AUTOMATIC1111's prompt syntax on top of the CLIP tokenizer: emphasis parsing
 * (modules/prompt_parser.py, parse_prompt_attention) and the cutting of a prompt into chunks of
 * 75 tokens with per-token weights (modules/sd_hijack_clip.py, tokenize_line), reproduced
 * decision for decision so that ids, weights and the "N/75" count equal A1111's.
 *
 * Parsing walks the prompt with the alternatives of A1111's re_attention in order: escapes
 * "\(" "\)" "\[" "\]" "\\", a lone "\", "(", "[", ":NUMBER)", ")", "]", a text run, ":".
 * Brackets record where their fragments start; closing multiplies the weights of every fragment
 * since then (1.1, 1/1.1 or NUMBER); unclosed ones multiply at the end. Text runs are split at
 * BREAK (whitespace around it dropped), which becomes the fragment ("BREAK", -1). Finally
 * neighbours with equal weights are joined (so "(a)(b)" is one fragment "ab").
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/common.h"
#include "engine/unicode_tables.h"
#include "mood/tokenizer.h"

#define COMMA_ID 267 /* ",</w>" */

typedef struct frag_list {
    mood_prompt_fragment *items;
    size_t n, cap;
} frag_list;

static int frag_push(frag_list *l, const char *text, size_t len, double weight)
{
    char *copy;
    if (mood_array_reserve(&l->items, &l->cap, l->n, sizeof *l->items, 16) != 0)
        return MOOD_ENOMEM;
    copy = mood_strndup(text, len);
    if (!copy)
        return mood_error_nomem();
    l->items[l->n].text = copy;
    l->items[l->n].weight = weight;
    l->n++;
    return 0;
}

typedef struct pos_stack {
    size_t *items;
    size_t n, cap;
} pos_stack;

static int stack_push(pos_stack *s, size_t v)
{
    if (mood_array_reserve(&s->items, &s->cap, s->n, sizeof *s->items, 16) != 0)
        return MOOD_ENOMEM;
    s->items[s->n++] = v;
    return 0;
}

static void multiply_from(frag_list *l, size_t start, double m)
{
    for (size_t i = start; i < l->n; i++)
        l->items[i].weight *= m;
}

/* Code point at s (valid UTF-8 assumed, as A1111 gets Python strings); sets *len. */
static uint32_t peek_cp(const unsigned char *s, size_t *len)
{
    uint32_t c = s[0];
    size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    c = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (size_t i = 1; i < n && s[i]; i++)
        c = (c << 6) | (s[i] & 0x3F);
    *len = n;
    return c;
}

/* Python's str.isspace(), which \s matches in A1111's re_break. */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Python's \w (letters, numbers, '_') for the character ending just before s[i] or starting
 * at s[i]: what decides a \b beside BREAK. */
static int word_before(const char *s, size_t i)
{
    size_t k, start = i;
    if (i == 0)
        return 0;
    do
        start--;
    while (start > 0 && ((unsigned char)s[start] & 0xC0) == 0x80);
    return mood__uc_is_word(peek_cp((const unsigned char *)s + start, &k));
}

static int word_at(const char *s, size_t i, size_t len)
{
    size_t k;
    return i < len && mood__uc_is_word(peek_cp((const unsigned char *)s + i, &k));
}

/* Finds the next \s*\bBREAK\b\s* in s[from..len): returns its start, *end its end; len if none. */
static size_t find_break(const char *s, size_t len, size_t from, size_t *end)
{
    for (size_t i = from; i + 5 <= len; i++) {
        size_t start = i, j = i + 5, k;
        if (memcmp(s + i, "BREAK", 5) != 0)
            continue;
        if (word_before(s, i) || word_at(s, j, len))
            continue;
        /* Extend left over the whitespace just before (not before from). */
        for (size_t p = from; p < i; p += k) {
            uint32_t c = peek_cp((const unsigned char *)s + p, &k);
            if (!py_space(c))
                start = i;
            else if (start == i)
                start = p;
        }
        while (j < len) {
            uint32_t c = peek_cp((const unsigned char *)s + j, &k);
            if (!py_space(c))
                break;
            j += k;
        }
        *end = j;
        return start;
    }
    return len;
}

/* A text run: split at BREAK, each BREAK a ("BREAK", -1) fragment. */
static int push_text(frag_list *l, const char *s, size_t len)
{
    size_t i = 0, end = 0, at;
    int err;
    while ((at = find_break(s, len, i, &end)) < len) {
        if ((err = frag_push(l, s + i, at - i, 1.0)) < 0 ||
            (err = frag_push(l, "BREAK", 5, -1.0)) < 0)
            return err;
        i = end;
    }
    return frag_push(l, s + i, len - i, 1.0);
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Bytes of the white space character at s as Python's \s matches it in a str (ASCII's, the
 * separators U+001C-U+001F, U+0085, no-break and typographic spaces, U+2028/9, U+3000), or 0. */
static size_t space_len(const char *s)
{
    uint32_t cp = 0;
    size_t n;
    if (is_space(s[0]) || (s[0] >= 0x1C && s[0] <= 0x1F))
        return 1;
    if ((unsigned char)s[0] < 0x80 ||
        !(n = mood__utf8_decode((const unsigned char *)s, strnlen(s, 4), &cp)))
        return 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
                   cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000
               ? n
               : 0;
}

/* Length of ":NUMBER)" at s, with white space allowed around NUMBER as A1111 (>= 1.6) allows it
 * (its re_attention: ":\s*([+-]?[.\d]+)\s*\)", \s of Unicode), or 0; *num and *num_len get
 * NUMBER. */
static size_t weight_token(const char *s, const char **num, size_t *num_len)
{
    size_t i = 1, start, digits, n;
    if (s[0] != ':')
        return 0;
    while ((n = space_len(s + i)) > 0)
        i += n;
    start = i;
    if (s[i] == '+' || s[i] == '-')
        i++;
    digits = i;
    while (s[i] == '.' || (s[i] >= '0' && s[i] <= '9'))
        i++;
    *num = s + start;
    *num_len = i - start;
    if (i == digits)
        return 0;
    while ((n = space_len(s + i)) > 0)
        i += n;
    return s[i] == ')' ? i + 1 : 0;
}

static int join_equal(frag_list *l)
{
    size_t i = 0;
    while (i + 1 < l->n) {
        mood_prompt_fragment *a = &l->items[i], *b = &l->items[i + 1];
        size_t la, lb;
        char *joined;
        if (a->weight != b->weight) {
            i++;
            continue;
        }
        la = strlen(a->text);
        lb = strlen(b->text);
        joined = mood_realloc(a->text, la + lb + 1);
        if (!joined)
            return mood_error_nomem();
        memcpy(joined + la, b->text, lb + 1);
        a->text = joined;
        mood_free(b->text);
        memmove(b, b + 1, (l->n - i - 2) * sizeof *b);
        l->n--;
    }
    return 0;
}

void mood_prompt_fragments_dispose(mood_prompt_fragments *f)
{
    for (size_t i = 0; f && i < f->n; i++)
        mood_free(f->items[i].text);
    if (f) {
        mood_free(f->items);
        f->items = NULL;
        f->n = 0;
    }
}

/* Reads NUMBER of ":NUMBER)" as Python's float() would; MOOD_EINVAL when it cannot. */
static int parse_weight(double *out, const char *s, size_t len)
{
    char buf[64], *end;
    if (len >= sizeof buf)
        return mood_error_set(MOOD_EINVAL, "emphasis weight '%.*s' is too long", (int)len, s);
    memcpy(buf, s, len);
    buf[len] = '\0';
    *out = strtod(buf, &end);
    if (end != buf + len)
        return mood_error_set(MOOD_EINVAL, "emphasis weight '%s' is not a number", buf);
    return 0;
}

/* One step of the scan at prompt[i]: returns the bytes consumed, or a negative error. */
static long parse_step(frag_list *l, pos_stack *round, pos_stack *square, const char *p)
{
    const char *num = NULL;
    size_t num_len = 0, n = weight_token(p, &num, &num_len);
    int err = 0;
    if (p[0] == '\\') {
        int escaped = p[1] == '(' || p[1] == ')' || p[1] == '[' || p[1] == ']' || p[1] == '\\';
        err = frag_push(l, p + 1, escaped ? 1 : 0, 1.0);
        return err < 0 ? err : escaped ? 2 : 1;
    }
    if (p[0] == '(' || p[0] == '[') {
        err = stack_push(p[0] == '(' ? round : square, l->n);
        return err < 0 ? err : 1;
    }
    if (n && round->n) {
        double w = 0;
        if ((err = parse_weight(&w, num, num_len)) < 0)
            return err;
        multiply_from(l, round->items[--round->n], w);
        return (long)n;
    }
    if (p[0] == ')' && round->n) {
        multiply_from(l, round->items[--round->n], 1.1);
        return 1;
    }
    if (p[0] == ']' && square->n) {
        multiply_from(l, square->items[--square->n], 1 / 1.1);
        return 1;
    }
    /* Text: the matched token itself (an unmatched ":N)", ")", "]" or ":"), or a run. */
    if (!n) {
        n = strcspn(p, "\\()[]:");
        if (!n)
            n = 1;
    }
    err = push_text(l, p, n);
    return err < 0 ? err : (long)n;
}

int mood_prompt_parse(mood_prompt_fragments *out, const char *prompt)
{
    frag_list l = {NULL, 0, 0};
    pos_stack round = {NULL, 0, 0}, square = {NULL, 0, 0};
    size_t i = 0;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    out->items = NULL;
    out->n = 0;
    MOOD_ARG_NONNULL(prompt);
    if ((err = mood__utf8_validate(prompt, strlen(prompt))) != 0)
        return err;
    while (prompt[i]) {
        long step = parse_step(&l, &round, &square, prompt + i);
        if (step < 0) {
            err = (int)step;
            goto done;
        }
        i += (size_t)step;
    }
    for (size_t k = 0; k < round.n; k++)
        multiply_from(&l, round.items[k], 1.1);
    for (size_t k = 0; k < square.n; k++)
        multiply_from(&l, square.items[k], 1 / 1.1);
    for (size_t k = 0; k < l.n; k++) {
        /* A1111 would go on with inf (or 0 * inf, NaN) and draw noise; no JSON holds either */
        if (!isfinite(l.items[k].weight) || fabs(l.items[k].weight) > 1e30) {
            err = mood_error_set(MOOD_EINVAL,
                                 "emphasis weight of '%.40s' is %g: nested brackets multiply "
                                 "their weights past any use; weights of 0.5 to 1.5 are usual",
                                 l.items[k].text, l.items[k].weight);
            goto done;
        }
    }
    if (l.n == 0 && (err = frag_push(&l, "", 0, 1.0)) < 0)
        goto done;
    if ((err = join_equal(&l)) < 0)
        goto done;
    out->items = l.items;
    out->n = l.n;
    l.items = NULL;
    l.n = 0;
done:
    for (size_t k = 0; k < l.n; k++)
        mood_free(l.items[k].text);
    mood_free(l.items);
    mood_free(round.items);
    mood_free(square.items);
    return err;
}

/* ----- chunks (sd_hijack_clip.py, tokenize_line) ------------------------------------------ */

void mood_prompt_options_init(mood_prompt_options *o)
{
    o->emphasis = 1;
    o->comma_backtrack = 20;
    o->pad_id = MOOD_CLIP_END;
}

typedef struct chunker {
    mood_prompt_tokens *out;
    size_t cap;
    int32_t ids[MOOD_CLIP_CHUNK]; /* the chunk being filled */
    double weights[MOOD_CLIP_CHUNK];
    int n;
    int last_comma;
} chunker;

/* Closes the current chunk: pads it with end tokens, wraps it in start/end. */
static int next_chunk(chunker *c, int is_last)
{
    mood_prompt_chunk *k;
    if (mood_array_reserve(&c->out->chunks, &c->cap, c->out->n_chunks, sizeof *c->out->chunks, 4) !=
        0)
        return MOOD_ENOMEM;
    k = &c->out->chunks[c->out->n_chunks++];
    c->out->token_count += is_last ? c->n : MOOD_CLIP_CHUNK;
    k->used = c->n;
    k->ids[0] = MOOD_CLIP_START;
    k->weights[0] = 1.0;
    for (int i = 0; i < MOOD_CLIP_CHUNK; i++) {
        k->ids[1 + i] = i < c->n ? c->ids[i] : MOOD_CLIP_END;
        k->weights[1 + i] = i < c->n ? c->weights[i] : 1.0;
    }
    k->ids[MOOD_CLIP_CONTEXT - 1] = MOOD_CLIP_END;
    k->weights[MOOD_CLIP_CONTEXT - 1] = 1.0;
    c->n = 0;
    c->last_comma = -1;
    return 0;
}

/* Adds one token; a full chunk first moves the words after a near comma to the next chunk. */
static int add_token(chunker *c, int32_t id, double weight, int backtrack)
{
    int err;
    if (id == COMMA_ID) {
        c->last_comma = c->n;
    } else if (backtrack != 0 && c->n == MOOD_CLIP_CHUNK && c->last_comma != -1 &&
               c->n - c->last_comma <= backtrack) {
        int from = c->last_comma + 1, moved = c->n - from;
        int32_t ids[MOOD_CLIP_CHUNK];
        double weights[MOOD_CLIP_CHUNK];
        memcpy(ids, c->ids + from, (size_t)moved * sizeof *ids);
        memcpy(weights, c->weights + from, (size_t)moved * sizeof *weights);
        c->n = from;
        if ((err = next_chunk(c, 0)) < 0)
            return err;
        memcpy(c->ids, ids, (size_t)moved * sizeof *ids);
        memcpy(c->weights, weights, (size_t)moved * sizeof *weights);
        c->n = moved;
    }
    if (c->n == MOOD_CLIP_CHUNK && (err = next_chunk(c, 0)) < 0)
        return err;
    c->ids[c->n] = id;
    c->weights[c->n] = weight;
    c->n++;
    return 0;
}

/* SD2 (OpenCLIP) pads with another id after the first end token of each chunk. */
static void apply_pad(mood_prompt_tokens *p, int32_t pad)
{
    for (size_t k = 0; k < p->n_chunks && pad != MOOD_CLIP_END; k++) {
        int i = 1;
        while (i < MOOD_CLIP_CONTEXT && p->chunks[k].ids[i] != MOOD_CLIP_END)
            i++;
        for (i++; i < MOOD_CLIP_CONTEXT; i++)
            p->chunks[k].ids[i] = pad;
    }
}

static int chunk_fragments(chunker *c, mood_tokenizer *t, const mood_prompt_fragments *f,
                           int backtrack)
{
    mood_token_ids ids;
    int err = 0;
    mood_token_ids_init(&ids);
    for (size_t i = 0; i < f->n && !err; i++) {
        const mood_prompt_fragment *fr = &f->items[i];
        if (fr->weight == -1.0 && strcmp(fr->text, "BREAK") == 0) {
            err = next_chunk(c, 0);
            continue;
        }
        ids.n = 0;
        if ((err = mood_tokenizer_encode(t, &ids, fr->text, strlen(fr->text))) < 0)
            break;
        for (size_t k = 0; k < ids.n && !err; k++)
            err = add_token(c, ids.ids[k], fr->weight, backtrack);
    }
    if (!err && (c->n > 0 || c->out->n_chunks == 0))
        err = next_chunk(c, 1);
    mood_token_ids_dispose(&ids);
    return err;
}

int mood_prompt_tokenize(mood_prompt_tokens *out, mood_tokenizer *t, const char *prompt,
                         const mood_prompt_options *opts)
{
    mood_prompt_options defaults;
    mood_prompt_fragments f = {NULL, 0};
    mood_prompt_fragment whole;
    chunker c;
    int err;
    MOOD_ARG_NONNULL(out);
    memset(out, 0, sizeof *out);
    MOOD_ARG_NONNULL(t);
    MOOD_ARG_NONNULL(prompt);
    if (!opts) {
        mood_prompt_options_init(&defaults);
        opts = &defaults;
    }
    memset(&c, 0, sizeof c);
    c.out = out;
    c.last_comma = -1;
    if (opts->emphasis) {
        if ((err = mood_prompt_parse(&f, prompt)) < 0)
            goto done;
    } else {
        whole.text = (char *)prompt;
        whole.weight = 1.0;
        f.items = &whole;
        f.n = 1;
    }
    if ((err = chunk_fragments(&c, t, &f, opts->comma_backtrack)) < 0)
        goto done;
    apply_pad(out, opts->pad_id);
    out->target_count = ((out->token_count > 1 ? out->token_count : 1) + MOOD_CLIP_CHUNK - 1) /
                        MOOD_CLIP_CHUNK * MOOD_CLIP_CHUNK;
done:
    if (opts->emphasis)
        mood_prompt_fragments_dispose(&f);
    if (err)
        mood_prompt_tokens_dispose(out);
    return err;
}

void mood_prompt_tokens_dispose(mood_prompt_tokens *p)
{
    if (!p)
        return;
    mood_free(p->chunks);
    memset(p, 0, sizeof *p);
}

/* ----- comments and a prompt's weight (A1111) ---------------------------------------------- */

/* a copy of s with every match of the comment pattern replaced by "\n"; whole: the pattern
 * "(^|\n)#[^\n]*(\n|$)" (a line that is a comment), else "#[^\n]*(\n|$)" */
static size_t comment_pass(char *out, const char *s, int whole, int *removed)
{
    size_t n = 0;
    for (size_t i = 0; s[i];) {
        int at_line = whole && ((i == 0 && s[0] == '#') || (s[i] == '\n' && s[i + 1] == '#'));
        if (at_line || (!whole && s[i] == '#')) {
            i += s[i] == '\n'; /* the newline before it is part of the match */
            while (s[i] && s[i] != '\n')
                i++;
            i += s[i] == '\n';
            out[n++] = '\n';
            *removed = 1;
            continue;
        }
        out[n++] = s[i++];
    }
    out[n] = '\0';
    return n;
}

char *mood_prompt_strip_comments(const char *prompt, int *removed)
{
    size_t len = strlen(prompt ? prompt : "");
    char *a = mood_malloc(len + 1), *b = mood_malloc(len + 1);
    *removed = 0;
    if (!a || !b) {
        mood_free(a);
        mood_free(b);
        return NULL;
    }
    comment_pass(a, prompt ? prompt : "", 1, removed);
    comment_pass(b, a, 0, removed);
    mood_free(a);
    return b;
}

void mood_prompt_free_string(char *s)
{
    mood_free(s);
}

size_t mood_prompt_network_tag(const char *s, size_t *kind_len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 1, k;
    if (u[0] != '<')
        return 0;
    while (u[i]) {
        uint32_t c = peek_cp(u + i, &k);
        for (size_t j = 1; j < k; j++)
            if ((u[i + j] & 0xC0) != 0x80)
                return 0; /* a broken sequence is no word character */
        if (!mood__uc_is_word(c))
            break;
        i += k;
    }
    if (i == 1 || u[i] != ':' || u[i + 1] == '>' || u[i + 1] == '\0')
        return 0;
    const char *close = strchr(s + i + 1, '>');
    if (!close)
        return 0;
    if (kind_len)
        *kind_len = i - 1;
    return (size_t)(close - s) + 1;
}

size_t mood_prompt_trailing_weight(const char *prompt, double *weight)
{
    size_t end = strlen(prompt), e = end, d, digits = 0, point = 0;
    *weight = 1.0;
    while (e > 0 && isspace((unsigned char)prompt[e - 1]))
        e--;
    d = e; /* [-+]?(\d+\.?|\d*\.\d+) just before e */
    while (d > 0 && (isdigit((unsigned char)prompt[d - 1]) || prompt[d - 1] == '.')) {
        digits += prompt[d - 1] != '.';
        point += prompt[d - 1] == '.';
        d--;
    }
    if (digits == 0 || point > 1 || (point && prompt[d] == '.' && e - d == 1))
        return e;
    if (d > 0 && (prompt[d - 1] == '-' || prompt[d - 1] == '+'))
        d--;
    size_t c = d;
    while (c > 0 && isspace((unsigned char)prompt[c - 1]))
        c--;
    if (c == 0 || prompt[c - 1] != ':')
        return e;
    *weight = strtod(prompt + d, NULL);
    c--; /* the colon, then the white space before it */
    while (c > 0 && isspace((unsigned char)prompt[c - 1]))
        c--;
    return c;
}
