/*
 * alloc.c: the library's allocator wrappers, with failure injection for tests
 * (c-style.md rule 16: every heap allocation goes through here), the string helpers that
 * allocate or compare, and the memory the system has to give (what the trainer's choice of
 * gradient checkpointing weighs).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/common.h"

/* Countdown to the allocation that fails; 0 = injection off. Tests are single-threaded. */
static long fail_countdown;

void mood__alloc_fail_at(long n)
{
    fail_countdown = n;
}

static int should_fail(void)
{
    if (fail_countdown <= 0)
        return 0;
    return --fail_countdown == 0;
}

void *mood_malloc(size_t size)
{
    if (should_fail())
        return NULL;
    return malloc(size ? size : 1);
}

void *mood_calloc(size_t count, size_t size)
{
    if (should_fail())
        return NULL;
    if (count == 0 || size == 0)
        count = size = 1;
    return calloc(count, size);
}

void *mood_realloc(void *ptr, size_t size)
{
    if (should_fail())
        return NULL;
    return realloc(ptr, size ? size : 1);
}

void mood_free(void *ptr)
{
    free(ptr);
}

char *mood_strndup(const char *s, size_t n)
{
    char *copy = mood_malloc(n + 1);
    if (!copy)
        return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

int mood_str_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A byte that continues a word: a letter, digit or '_' (ASCII), or part of a UTF-8 character. */
static int word_byte(char c)
{
    unsigned char u = (unsigned char)c;
    return isalnum(u) || u == '_' || u >= 0x80;
}

int mood_str_has_words(const char *hay, const char *phrase, size_t n)
{
    for (const char *h = hay; h && *h; h++)
        if (strncasecmp(h, phrase, n) == 0 && (h == hay || !word_byte(h[-1])) && !word_byte(h[n]))
            return 1;
    return 0;
}

char *mood_strdup(const char *s)
{
    return mood_strndup(s, strlen(s));
}

int mood_mul_u64(uint64_t *out, uint64_t a, uint64_t b)
{
    if (a != 0 && b > UINT64_MAX / a)
        return -1;
    *out = a * b;
    return 0;
}

int mood_add_u64(uint64_t *out, uint64_t a, uint64_t b)
{
    if (b > UINT64_MAX - a)
        return -1;
    *out = a + b;
    return 0;
}

int mood_array_reserve(void *items_ptr, size_t *cap, size_t n, size_t elem, size_t first)
{
    void *items, *grown;
    size_t want = *cap ? 2 * *cap : first;
    uint64_t bytes;
    if (n < *cap)
        return 0;
    if (mood_mul_u64(&bytes, want, elem) != 0 || bytes > SIZE_MAX)
        return mood_error_nomem();
    memcpy(&items, items_ptr, sizeof items); /* items_ptr is a T **: read it as a void * */
    if (!(grown = mood_realloc(items, (size_t)bytes)))
        return mood_error_nomem();
    memcpy(items_ptr, &grown, sizeof grown);
    *cap = want;
    return 0;
}

uint64_t mood_memory_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f))
        found = sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
    if (f)
        fclose(f);
    if (found)
        return (uint64_t)kb * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

#define STR_DISTANCE_MAX 100 /* longer strings are no slip of each other: limit + 1 */

size_t mood_str_distance(const char *a, const char *b, size_t limit)
{
    size_t la = strlen(a), lb = strlen(b), row[3][STR_DISTANCE_MAX + 2];
    if (la > STR_DISTANCE_MAX || lb > STR_DISTANCE_MAX || (la > lb ? la - lb : lb - la) > limit)
        return limit + 1;
    for (size_t j = 0; j <= lb; j++)
        row[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t *cur = row[i % 3], *prev = row[(i - 1) % 3], *prev2 = row[(i + 1) % 3], best;
        cur[0] = best = i;
        for (size_t j = 1; j <= lb; j++) {
            int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
            size_t d = prev[j - 1] + (ca != cb);
            d = prev[j] + 1 < d ? prev[j] + 1 : d;
            d = cur[j - 1] + 1 < d ? cur[j - 1] + 1 : d;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == cb && prev2[j - 2] + 1 < d)
                d = prev2[j - 2] + 1;
            cur[j] = d;
            best = d < best ? d : best;
        }
        if (best > limit)
            return limit + 1;
    }
    return row[la % 3][lb];
}
