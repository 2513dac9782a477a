/*
 * tokenizer.c: the CLIP byte-level BPE tokenizer (OpenAI CLIP simple_tokenizer.py, Hugging
 * Face CLIPTokenizer), ids identical to the reference.
 *
 * Pipeline, as Hugging Face's CLIPTokenizer runs it:
 *   1. the exact strings "<|startoftext|>" and "<|endoftext|>" in the raw text are the special
 *      tokens (matched before normalization, case-sensitive);
 *   2. every other stretch is normalized: NFC, each run of White_Space to one space, then
 *      lower case one character at a time (no final-sigma rule, as the Rust normalizer);
 *   3. it is split with CLIP's pattern 's|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
 *      (spaces are dropped);
 *   4. each piece's UTF-8 bytes become byte symbols (GPT-2's bytes_to_unicode order), the last
 *      one marked "</w>", and BPE merges the adjacent pair of lowest rank until none applies.
 *
 * Vocabulary (49,408 ids): 256 byte symbols, the same with "</w>", one id per merge in file order
 * (merge r makes id 512 + r), then the two special tokens. Merges are kept in an open-addressing
 * table keyed by (left id, right id); encoded words are cached per tokenizer.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "common/args.h"
#include "common/common.h"
#include "engine/unicode_tables.h"
#include "mood/tokenizer.h"
#include "mood_config.h"

#define N_MERGES       48894 /* lines 1 .. 49152-256-2 of the file, as simple_tokenizer.py */
#define MERGE_SLOTS    (1u << 17)
#define CACHE_MAX      65536 /* cached words before the cache is emptied */
#define VOCAB_FILENAME "bpe_simple_vocab_16e6.txt.gz"

static const char start_text[] = "<|startoftext|>";
static const char end_text[] = "<|endoftext|>";

typedef struct cache_entry {
    uint64_t hash;
    char *key; /* the word's bytes, then its ids (one allocation) */
    size_t key_len;
    int32_t *ids;
    size_t n;
} cache_entry;

struct mood_tokenizer {
    char **pieces;        /* id -> vocabulary entry */
    char *pool;           /* storage of the pieces */
    uint32_t *merge_keys; /* (left << 16 | right) + 1, 0 = empty */
    int32_t *merge_ranks; /* rank of the merge in that slot */
    int32_t byte_id[256]; /* byte -> id of its symbol ("</w>" form: + 256) */
    int16_t cp_byte[324]; /* code point of a byte symbol -> byte */
    cache_entry *cache;
    size_t cache_cap, cache_n;
    int32_t *scratch; /* BPE work space for one word */
    size_t scratch_cap;
};

/* ----- Unicode --------------------------------------------------------------------------- */

static int in_ranges(const mood__uc_range *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_letter(uint32_t cp)
{
    if (cp < 0x80)
        return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(mood__uc_letters, mood__uc_letters_count, cp);
}

static int is_number(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    return in_ranges(mood__uc_numbers, mood__uc_numbers_count, cp);
}

/* The White_Space property: what \s matches in the reference's regular expressions. */
static int is_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

uint32_t mood__uc_ccc_of(uint32_t cp)
{
    size_t lo = 0, hi = mood__uc_ccc_count;
    if (cp < 0x300)
        return 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < mood__uc_ccc[mid].lo)
            hi = mid;
        else if (cp > mood__uc_ccc[mid].hi)
            lo = mid + 1;
        else
            return mood__uc_ccc[mid].ccc;
    }
    return 0;
}

static const mood__uc_decomp *find_decomp(uint32_t cp)
{
    size_t lo = 0, hi = mood__uc_decomps_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < mood__uc_decomps[mid].cp)
            hi = mid;
        else if (cp > mood__uc_decomps[mid].cp)
            lo = mid + 1;
        else
            return &mood__uc_decomps[mid];
    }
    return NULL;
}

uint32_t mood__uc_base_letter(uint32_t cp)
{
    const mood__uc_decomp *d;
    while ((d = find_decomp(cp)) != NULL)
        cp = d->a;
    return cp;
}

/* Hangul syllables decompose and compose by arithmetic (Unicode §3.12). */
enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7 };
enum { LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

/* Appends the full canonical decomposition of cp to out (room for 4 more is guaranteed by the
 * caller's sizing: decompositions are at most 4 code points long). */
static size_t decompose(uint32_t cp, uint32_t *out)
{
    const mood__uc_decomp *d;
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE, t = s % TCOUNT;
        out[0] = LBASE + s / NCOUNT;
        out[1] = VBASE + (s % NCOUNT) / TCOUNT;
        if (!t)
            return 2;
        out[2] = TBASE + t;
        return 3;
    }
    d = cp >= 0xC0 ? find_decomp(cp) : NULL;
    if (!d) {
        out[0] = cp;
        return 1;
    }
    {
        size_t n = decompose(d->a, out);
        if (d->b)
            n += decompose(d->b, out + n);
        return n;
    }
}

static uint32_t compose(uint32_t a, uint32_t b)
{
    size_t lo = 0, hi = mood__uc_comps_count;
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
        b < TBASE + TCOUNT)
        return a + (b - TBASE);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const mood__uc_decomp *c = &mood__uc_comps[mid];
        if (a < c->a || (a == c->a && b < c->b))
            hi = mid;
        else if (a > c->a || b > c->b)
            lo = mid + 1;
        else
            return c->cp;
    }
    return 0;
}

void mood__uc_nfc(uint32_t *cps, size_t *n, uint32_t *work)
{
    size_t m = 0, out = 1, starter = 0;
    uint32_t last;
    int need = 0;
    for (size_t i = 0; i < *n && !need; i++)
        need = cps[i] >= 0x300;
    if (!need || *n == 0)
        return; /* below U+0300 every text is already NFC */
    for (size_t i = 0; i < *n; i++)
        m += decompose(cps[i], work + m);
    /* Canonical ordering: stable insertion sort of each run of non-starters by class. */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = work[i], cc = mood__uc_ccc_of(c);
        size_t j = i;
        if (!cc)
            continue;
        while (j > 0 && mood__uc_ccc_of(work[j - 1]) > cc) {
            work[j] = work[j - 1];
            j--;
        }
        work[j] = c;
    }
    /* Canonical composition (the algorithm of UAX #15's sample code). */
    last = mood__uc_ccc_of(work[0]) ? 256 : 0;
    for (size_t i = 1; i < m; i++) {
        uint32_t c = work[i], cc = mood__uc_ccc_of(c), comp = compose(work[starter], c);
        if (comp && (last < cc || last == 0)) {
            work[starter] = comp;
            continue;
        }
        if (!cc)
            starter = out;
        last = cc;
        work[out++] = c;
    }
    memcpy(cps, work, out * sizeof *cps);
    *n = out;
}

size_t mood__uc_to_lower(uint32_t cp, uint32_t *out)
{
    size_t lo = 0, hi = mood__uc_lower_count;
    if (cp < 0x80) {
        out[0] = cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
        return 1;
    }
    for (size_t i = 0; i < mood__uc_lower_multi_count; i++) {
        if (mood__uc_lower_multi[i].from == cp) {
            size_t k = 0;
            for (; k < 3 && mood__uc_lower_multi[i].to[k]; k++)
                out[k] = mood__uc_lower_multi[i].to[k];
            return k;
        }
    }
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < mood__uc_lower[mid].from)
            hi = mid;
        else if (cp > mood__uc_lower[mid].from)
            lo = mid + 1;
        else {
            out[0] = mood__uc_lower[mid].to;
            return 1;
        }
    }
    out[0] = cp;
    return 1;
}

size_t mood__utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    uint32_t c = s[0];
    size_t n, i;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        c &= 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        c &= 0x07;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF))) ||
        (n == 4 && (c < 0x10000 || c > 0x10FFFF)))
        return 0;
    *cp = c;
    return n;
}

size_t mood__utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ----- vocabulary ------------------------------------------------------------------------ */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes map
 * to U+0100 onwards in byte order. Fills the byte <-> id <-> code point tables. */
static void byte_tables(mood_tokenizer *t, uint32_t cps[256])
{
    int id = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if (printable) {
            cps[id] = (uint32_t)b;
            t->byte_id[b] = id++;
        }
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if (!printable) {
            cps[id] = 256u + (uint32_t)extra++;
            t->byte_id[b] = id++;
        }
    }
    for (int i = 0; i < 324; i++)
        t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++)
        t->cp_byte[cps[t->byte_id[b]]] = (int16_t)b;
}

static uint64_t hash_bytes(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* A temporary string -> id table used while loading, to resolve merge halves to ids. */
typedef struct str_index {
    int32_t *slots; /* id + 1, 0 = empty */
    size_t mask;
} str_index;

static int32_t index_find(const str_index *x, char *const *pieces, const char *s, size_t n)
{
    size_t i = (size_t)hash_bytes(s, n) & x->mask;
    for (; x->slots[i]; i = (i + 1) & x->mask) {
        const char *p = pieces[x->slots[i] - 1];
        if (strlen(p) == n && memcmp(p, s, n) == 0)
            return x->slots[i] - 1;
    }
    return -1;
}

static void index_add(str_index *x, char *const *pieces, int32_t id)
{
    size_t i = (size_t)hash_bytes(pieces[id], strlen(pieces[id])) & x->mask;
    while (x->slots[i])
        i = (i + 1) & x->mask;
    x->slots[i] = id + 1;
}

static size_t merge_slot(const mood_tokenizer *t, uint32_t key)
{
    size_t i = (size_t)((key * 2654435761u) >> 15) & (MERGE_SLOTS - 1);
    while (t->merge_keys[i] && t->merge_keys[i] != key)
        i = (i + 1) & (MERGE_SLOTS - 1);
    return i;
}

/* Rank of merging ids a and b, or -1. */
static int32_t merge_rank(const mood_tokenizer *t, int32_t a, int32_t b)
{
    uint32_t key = ((uint32_t)a << 16 | (uint32_t)b) + 1;
    size_t i = merge_slot(t, key);
    return t->merge_keys[i] ? t->merge_ranks[i] : -1;
}

static int read_gz(mood_buf *out, const char *path)
{
    char chunk[65536];
    int n, err = 0;
    gzFile f = gzopen(path, "rb");
    if (!f)
        return mood_error_set(mood_path_exists(path) ? MOOD_EIO : MOOD_ENOTFOUND,
                              "%s: cannot open the CLIP vocabulary", path);
    while ((n = gzread(f, chunk, sizeof chunk)) > 0) {
        if ((err = mood_buf_append(out, chunk, (size_t)n)) < 0)
            break;
    }
    if (!err && n < 0) {
        int zerr;
        const char *msg = gzerror(f, &zerr);
        err = mood_error_set(MOOD_EFORMAT, "%s: not a readable gzip file: %s", path, msg);
    }
    gzclose(f);
    return err;
}

/* Builds the vocabulary strings from the merge lines: bytes, bytes + "</w>", merges, specials.
 * lines[i] points at merge line i, halves separated by a NUL (the space replaced). */
static int build_pieces(mood_tokenizer *t, char **lines, const uint32_t cps[256])
{
    size_t pool_size = 512 * 9 + sizeof start_text + sizeof end_text, used = 0;
    for (size_t i = 0; i < N_MERGES; i++)
        pool_size += strlen(lines[i]) + strlen(lines[i] + strlen(lines[i]) + 1) + 1;
    t->pieces = mood_calloc(MOOD_CLIP_VOCAB_SIZE, sizeof *t->pieces);
    t->pool = mood_malloc(pool_size);
    if (!t->pieces || !t->pool)
        return mood_error_nomem();
    for (int i = 0; i < 512; i++) {
        char *p = t->pool + used;
        size_t n = mood__utf8_encode(cps[i % 256], p);
        if (i >= 256) {
            memcpy(p + n, "</w>", 4);
            n += 4;
        }
        p[n] = '\0';
        t->pieces[i] = p;
        used += n + 1;
    }
    for (size_t i = 0; i < N_MERGES; i++) {
        char *p = t->pool + used;
        size_t a = strlen(lines[i]), b = strlen(lines[i] + a + 1);
        memcpy(p, lines[i], a);
        memcpy(p + a, lines[i] + a + 1, b + 1);
        t->pieces[512 + i] = p;
        used += a + b + 1;
    }
    t->pieces[MOOD_CLIP_START] = memcpy(t->pool + used, start_text, sizeof start_text);
    used += sizeof start_text;
    t->pieces[MOOD_CLIP_END] = memcpy(t->pool + used, end_text, sizeof end_text);
    return 0;
}

/* Enters every merge into the pair table: the halves must be vocabulary entries made earlier. */
static int build_merges(mood_tokenizer *t, char **lines, const char *path)
{
    str_index x = {NULL, (1u << 17) - 1};
    int err = 0;
    t->merge_keys = mood_calloc(MERGE_SLOTS, sizeof *t->merge_keys);
    t->merge_ranks = mood_malloc(MERGE_SLOTS * sizeof *t->merge_ranks);
    x.slots = mood_calloc(x.mask + 1, sizeof *x.slots);
    if (!t->merge_keys || !t->merge_ranks || !x.slots) {
        err = mood_error_nomem();
        goto done;
    }
    for (int32_t id = 0; id < 512 + N_MERGES; id++)
        index_add(&x, t->pieces, id);
    for (size_t i = 0; i < N_MERGES; i++) {
        const char *left = lines[i], *right = left + strlen(left) + 1;
        int32_t a = index_find(&x, t->pieces, left, strlen(left));
        int32_t b = index_find(&x, t->pieces, right, strlen(right));
        uint32_t key;
        size_t slot;
        if (a < 0 || b < 0 || a >= 512 + (int32_t)i || b >= 512 + (int32_t)i) {
            err = mood_error_set(MOOD_EFORMAT, "%s: merge %zu ('%s %s') joins unknown symbols",
                                 path, i + 1, left, right);
            goto done;
        }
        key = ((uint32_t)a << 16 | (uint32_t)b) + 1;
        slot = merge_slot(t, key);
        if (!t->merge_keys[slot]) { /* a repeated pair keeps its first (lowest) rank */
            t->merge_keys[slot] = key;
            t->merge_ranks[slot] = (int32_t)i;
        }
    }
done:
    mood_free(x.slots);
    return err;
}

/* Splits the decompressed file into merge lines (header skipped), halves NUL-separated. */
static int split_lines(char **lines, char *text, const char *path)
{
    char *p = strchr(text, '\n');
    for (size_t i = 0; i < N_MERGES; i++) {
        char *end, *space;
        if (!p)
            return mood_error_set(MOOD_EFORMAT, "%s: %zu merges, expected at least %d", path, i,
                                  N_MERGES);
        p++;
        end = strchr(p, '\n');
        if (end)
            *end = '\0';
        space = strchr(p, ' ');
        if (!space || space == p || !space[1] || strchr(space + 1, ' '))
            return mood_error_set(MOOD_EFORMAT, "%s: line %zu is not 'LEFT RIGHT'", path, i + 2);
        *space = '\0';
        lines[i] = p;
        p = end;
    }
    return 0;
}

static int candidate(char *buf, size_t size, const char *dir, const char *sub)
{
    int n = snprintf(buf, size, "%s%s/clip/" VOCAB_FILENAME, dir, sub);
    return n > 0 && (size_t)n < size && mood_path_exists(buf);
}

/* The path of the vocabulary mood_tokenizer_load(NULL) reads into buf (size bytes); MOOD_ENOTFOUND
 * naming the places searched. */
static int find_vocab(char *buf, size_t size)
{
    const char *env = getenv("MOOD_DATA");
    char exe[4096];
    ssize_t n;
    if (env && env[0]) {
        if (candidate(buf, size, env, ""))
            return 0;
        return mood_error_set(MOOD_ENOTFOUND, "$MOOD_DATA is %s but %s/clip/%s does not exist", env,
                              env, VOCAB_FILENAME);
    }
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        char *slash;
        exe[n] = '\0';
        slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            if (candidate(buf, size, exe, "/../share/mood") || candidate(buf, size, exe, "/data"))
                return 0;
        }
    }
    /* the source tree this library was built from (a build, its tests, a program linking the
     * build), then where `cmake --install` puts the data with the configured prefix (a program
     * linking an installed libmood; after --prefix elsewhere, $MOOD_DATA says where) */
    if (candidate(buf, size, MOOD_DATA_DIR, "") || candidate(buf, size, MOOD_INSTALL_DATA_DIR, ""))
        return 0;
    return mood_error_set(MOOD_ENOTFOUND,
                          "the CLIP vocabulary %s was found neither in <executable>/../share/"
                          "mood/clip nor in %s/clip nor in %s/clip; set MOOD_DATA to the folder "
                          "holding clip/",
                          VOCAB_FILENAME, MOOD_DATA_DIR, MOOD_INSTALL_DATA_DIR);
}

/* path into the caller's buf of `size` bytes: MOOD_EINVAL when it does not fit (buf left ""), not
 * a cut path that names another file. */
static int copy_out(char *buf, size_t size, const char *path, const char *func)
{
    size_t n = strlen(path);
    if (n >= size) {
        if (size)
            buf[0] = '\0';
        return mood_error_set(MOOD_EINVAL, "%s: buffer too small (%zu bytes needed)", func, n + 1);
    }
    memcpy(buf, path, n + 1);
    return 0;
}

int mood_tokenizer_default_path(char *buf, size_t size)
{
    char found[4096];
    int err;
    MOOD_ARG_NONNULL(buf);
    if (size)
        buf[0] = '\0';
    if ((err = find_vocab(found, sizeof found)) != 0)
        return err;
    return copy_out(buf, size, found, __func__);
}

/* The vocabulary's path less its "/clip/<file>": the folder that holds mood's data. */
int mood_data_dir(char *buf, size_t size)
{
    char found[4096];
    size_t n, tail = strlen("/clip/" VOCAB_FILENAME);
    int err;
    MOOD_ARG_NONNULL(buf);
    if (size)
        buf[0] = '\0';
    if ((err = mood_tokenizer_default_path(found, sizeof found)) != 0)
        return err;
    n = strlen(found);
    found[n > tail ? n - tail : 0] = '\0';
    return copy_out(buf, size, found, __func__);
}

int mood_tokenizer_load(mood_tokenizer **out, const char *path)
{
    char found[4096];
    uint32_t cps[256];
    char **lines = NULL;
    mood_buf text;
    mood_tokenizer *t = NULL;
    int err = 0;
    MOOD_ARG_NONNULL(out);
    *out = NULL;
    mood_buf_init(&text);
    if (!path) {
        if ((err = find_vocab(found, sizeof found)) < 0)
            goto done;
        path = found;
    }
    if ((err = read_gz(&text, path)) < 0)
        goto done;
    t = mood_calloc(1, sizeof *t);
    lines = mood_malloc(N_MERGES * sizeof *lines);
    if (!t || !lines || !text.data) {
        err = text.data ? mood_error_nomem() : mood_error_set(MOOD_EFORMAT, "%s: empty", path);
        goto done;
    }
    byte_tables(t, cps);
    if ((err = split_lines(lines, text.data, path)) < 0 ||
        (err = build_pieces(t, lines, cps)) < 0 || (err = build_merges(t, lines, path)) < 0)
        goto done;
    *out = t;
    t = NULL;
done:
    mood_tokenizer_free(t);
    mood_free(lines);
    mood_buf_dispose(&text);
    return err;
}

static void cache_clear(mood_tokenizer *t)
{
    for (size_t i = 0; i < t->cache_cap; i++)
        mood_free(t->cache[i].ids); /* the key lives in the same block */
    memset(t->cache, 0, t->cache_cap * sizeof *t->cache);
    t->cache_n = 0;
}

void mood_tokenizer_free(mood_tokenizer *t)
{
    if (!t)
        return;
    if (t->cache)
        cache_clear(t);
    mood_free(t->cache);
    mood_free(t->scratch);
    mood_free(t->merge_keys);
    mood_free(t->merge_ranks);
    mood_free(t->pieces);
    mood_free(t->pool);
    mood_free(t);
}

const char *mood_tokenizer_piece(const mood_tokenizer *t, int32_t id)
{
    if (!t || id < 0 || id >= MOOD_CLIP_VOCAB_SIZE)
        return NULL;
    return t->pieces[id];
}

int mood_tokenizer_piece_text(const mood_tokenizer *t, int32_t id, char *buf, size_t size)
{
    const char *p = mood_tokenizer_piece(t, id);
    size_t len, n = 0, i = 0;
    if (!p)
        return -1;
    len = strlen(p);
    if (id >= 256 && len >= 4 && strcmp(p + len - 4, "</w>") == 0 && id != MOOD_CLIP_START &&
        id != MOOD_CLIP_END)
        len -= 4;
    while (i < len) {
        uint32_t cp = 0;
        size_t k = mood__utf8_decode((const unsigned char *)p + i, len - i, &cp);
        int byte = k && cp < 324 ? t->cp_byte[cp] : -1;
        if (!k)
            break;
        if (n + 1 < size)
            buf[n] = byte >= 0 ? (char)byte : '?';
        n++;
        i += k;
    }
    if (size)
        buf[n < size ? n : size - 1] = '\0';
    return (int)n;
}

/* ----- BPE ------------------------------------------------------------------------------- */

void mood_token_ids_init(mood_token_ids *l)
{
    l->ids = NULL;
    l->n = l->cap = 0;
}

void mood_token_ids_dispose(mood_token_ids *l)
{
    if (!l)
        return;
    mood_free(l->ids);
    mood_token_ids_init(l);
}

static int ids_append(mood_token_ids *l, const int32_t *ids, size_t n)
{
    if (l->n + n > l->cap) {
        size_t cap = l->cap ? l->cap : 32;
        int32_t *p;
        while (cap < l->n + n)
            cap *= 2;
        p = mood_realloc(l->ids, cap * sizeof *p);
        if (!p)
            return mood_error_nomem();
        l->ids = p;
        l->cap = cap;
    }
    memcpy(l->ids + l->n, ids, n * sizeof *ids);
    l->n += n;
    return 0;
}

typedef struct heap_item {
    int32_t rank, pos; /* a mergeable pair: its rank and the position of its left symbol */
} heap_item;

static int item_less(heap_item a, heap_item b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(heap_item *h, size_t *n, int32_t rank, int32_t pos)
{
    size_t i = (*n)++;
    heap_item it = {rank, pos};
    while (i > 0 && item_less(it, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = it;
}

static heap_item heap_pop(heap_item *h, size_t *n)
{
    heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && item_less(h[c + 1], h[c]))
            c++;
        if (!item_less(h[c], last))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Pushes the pair starting at symbol i (if there is one and it has a merge). */
static void push_pair(const mood_tokenizer *t, heap_item *h, size_t *hn, const int32_t *id,
                      const int32_t *next, int32_t i)
{
    int32_t r;
    if (i < 0 || next[i] < 0)
        return;
    r = merge_rank(t, id[i], id[next[i]]);
    if (r >= 0)
        heap_push(h, hn, r, i);
}

/* BPE of one word (its UTF-8 bytes) into t->scratch; returns the number of ids. Merges the pair
 * of lowest rank first, leftmost among equals, as the reference's priority queue does; O(n log n)
 * so that a long run of letters stays fast. Symbols form a linked list over positions; a merged
 * right symbol is marked -1, and queued pairs are checked against the current symbols. */
static size_t bpe(mood_tokenizer *t, const unsigned char *word, size_t n)
{
    int32_t *id = t->scratch, *next = id + n, *prev = next + n;
    heap_item *h = (heap_item *)(prev + n);
    size_t hn = 0, out = 0;
    for (size_t i = 0; i < n; i++) {
        id[i] = t->byte_id[word[i]];
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    id[n - 1] += 256; /* the "</w>" form ends the word */
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, h, &hn, id, next, (int32_t)i);
    while (hn) {
        heap_item it = heap_pop(h, &hn);
        int32_t i = it.pos, j = next[i];
        if (id[i] < 0 || j < 0 || merge_rank(t, id[i], id[j]) != it.rank)
            continue; /* stale: a neighbour was merged since */
        id[i] = 512 + it.rank;
        id[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0)
            prev[next[j]] = i;
        push_pair(t, h, &hn, id, next, prev[i]);
        push_pair(t, h, &hn, id, next, i);
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        id[out++] = id[i];
    return out;
}

static int cache_grow(mood_tokenizer *t)
{
    size_t cap = t->cache_cap ? t->cache_cap * 2 : 1024;
    cache_entry *old = t->cache, *fresh = mood_calloc(cap, sizeof *fresh);
    if (!fresh)
        return mood_error_nomem();
    for (size_t i = 0; i < t->cache_cap; i++) {
        size_t j;
        if (!old[i].key)
            continue;
        for (j = (size_t)old[i].hash & (cap - 1); fresh[j].key; j = (j + 1) & (cap - 1))
            ;
        fresh[j] = old[i];
    }
    mood_free(old);
    t->cache = fresh;
    t->cache_cap = cap;
    return 0;
}

/* Appends the ids of one word (a piece of the split, UTF-8 bytes), from the cache or by BPE. */
static int encode_word(mood_tokenizer *t, mood_token_ids *out, const char *w, size_t n)
{
    uint64_t h = hash_bytes(w, n);
    size_t j, k;
    cache_entry *e;
    if (t->cache_n >= CACHE_MAX)
        cache_clear(t);
    if (2 * (t->cache_n + 1) > t->cache_cap && cache_grow(t) < 0)
        return MOOD_ENOMEM;
    for (j = (size_t)h & (t->cache_cap - 1); t->cache[j].key; j = (j + 1) & (t->cache_cap - 1)) {
        e = &t->cache[j];
        if (e->hash == h && e->key_len == n && memcmp(e->key, w, n) == 0)
            return ids_append(out, e->ids, e->n);
    }
    if (n > t->scratch_cap) { /* ids, next, prev, and a heap of up to 3n pairs */
        int32_t *p = mood_realloc(t->scratch, 9 * n * sizeof *p);
        if (!p)
            return mood_error_nomem();
        t->scratch = p;
        t->scratch_cap = n;
    }
    k = bpe(t, (const unsigned char *)w, n);
    e = &t->cache[j];
    /* One allocation: the ids (aligned first), then the key bytes. */
    e->ids = mood_malloc(k * sizeof *e->ids + n);
    if (!e->ids)
        return mood_error_nomem();
    memcpy(e->ids, t->scratch, k * sizeof *e->ids);
    e->key = (char *)(e->ids + k);
    memcpy(e->key, w, n);
    e->key_len = n;
    e->n = k;
    e->hash = h;
    t->cache_n++;
    return ids_append(out, e->ids, k);
}

/* Length of the contraction ('s 't 're 've 'm 'll 'd) at cps[i], or 0. */
static size_t contraction(const uint32_t *cps, size_t i, size_t n)
{
    uint32_t a = i + 1 < n ? cps[i + 1] : 0, b = i + 2 < n ? cps[i + 2] : 0;
    if (cps[i] != '\'')
        return 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* Splits normalized cps[0..n) with CLIP's pattern and encodes each piece. */
static int encode_normalized(mood_tokenizer *t, mood_token_ids *out, const uint32_t *cps, size_t n,
                             mood_buf *word)
{
    size_t i = 0;
    int err = 0;
    while (i < n && !err) {
        size_t j = i + contraction(cps, i, n);
        if (j == i && is_letter(cps[i])) {
            while (j < n && is_letter(cps[j]))
                j++;
        } else if (j == i && is_number(cps[i])) {
            j = i + 1;
        } else if (j == i && !is_space(cps[i])) {
            while (j < n && !is_space(cps[j]) && !is_letter(cps[j]) && !is_number(cps[j]))
                j++;
        } else if (j == i) {
            i++; /* spaces belong to no piece */
            continue;
        }
        word->len = 0;
        for (size_t k = i; k < j; k++) {
            char b[4];
            if ((err = mood_buf_append(word, b, mood__utf8_encode(cps[k], b))) < 0)
                return err;
        }
        err = encode_word(t, out, word->data, word->len);
        i = j;
    }
    return err;
}

/* Normalizes and encodes raw[0..len) (valid UTF-8, no special-token text). */
static int encode_segment(mood_tokenizer *t, mood_token_ids *out, const char *raw, size_t len)
{
    uint32_t *cps = NULL, *work = NULL;
    size_t n = 0, m = 0, i = 0;
    mood_buf word;
    int err = 0;
    mood_buf_init(&word);
    if (!len)
        return 0;
    cps = mood_malloc(len * sizeof *cps);
    work = mood_malloc(4 * len * sizeof *work);
    if (!cps || !work) {
        err = mood_error_nomem();
        goto done;
    }
    while (i < len)
        i += mood__utf8_decode((const unsigned char *)raw + i, len - i, &cps[n++]);
    mood__uc_nfc(cps, &n, work);
    /* Runs of whitespace become one space, then lower case, into work (3 per input at most). */
    for (i = 0; i < n; i++) {
        if (is_space(cps[i])) {
            while (i + 1 < n && is_space(cps[i + 1]))
                i++;
            work[m++] = ' ';
        } else {
            m += mood__uc_to_lower(cps[i], work + m);
        }
    }
    err = encode_normalized(t, out, work, m, &word);
done:
    mood_buf_dispose(&word);
    mood_free(work);
    mood_free(cps);
    return err;
}

/* Position of the next special-token text in s[0..len) at or after from; sets *id. */
static size_t find_special(const char *s, size_t len, size_t from, int32_t *id)
{
    for (size_t i = from; i < len; i++) {
        if (s[i] != '<')
            continue;
        if (len - i >= sizeof start_text - 1 &&
            memcmp(s + i, start_text, sizeof start_text - 1) == 0) {
            *id = MOOD_CLIP_START;
            return i;
        }
        if (len - i >= sizeof end_text - 1 && memcmp(s + i, end_text, sizeof end_text - 1) == 0) {
            *id = MOOD_CLIP_END;
            return i;
        }
    }
    return len;
}

int mood__utf8_validate(const char *text, size_t len)
{
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = mood__utf8_decode((const unsigned char *)text + i, len - i, &cp);
        if (!k)
            return mood_error_set(MOOD_EINVAL, "prompt is not valid UTF-8 (byte %zu: 0x%02X)", i,
                                  (unsigned)(unsigned char)text[i]);
        i += k;
    }
    return 0;
}

int mood_tokenizer_encode(mood_tokenizer *t, mood_token_ids *out, const char *text, size_t len)
{
    size_t before, i;
    int err = 0;
    MOOD_ARG_NONNULL(t);
    MOOD_ARG_NONNULL(out);
    MOOD_ARG_NONNULL(text);
    before = out->n;
    if ((err = mood__utf8_validate(text, len)) != 0)
        return err;
    for (i = 0; i < len && !err;) {
        int32_t id = 0;
        size_t at = find_special(text, len, i, &id);
        err = encode_segment(t, out, text + i, at - i);
        if (!err && at < len) {
            err = ids_append(out, &id, 1);
            at += id == MOOD_CLIP_START ? sizeof start_text - 1 : sizeof end_text - 1;
        }
        i = at;
    }
    if (err)
        out->n = before;
    return err;
}

int mood__uc_is_word(uint32_t cp)
{
    return cp == '_' || is_letter(cp) || is_number(cp);
}
