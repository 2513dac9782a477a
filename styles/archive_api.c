/*
 * archive_api.c: loads libarchive with dlopen on first use and fills the table of archive_api.h.
 *
 * Why: linked, libarchive and its dependent libraries (libxml2, ICU, libstdc++, ...) cost every
 * `mood` command several ms of dynamic loading at start-up; loaded here, only the commands that
 * write or read a style pack pay it. RTLD_NOW resolves everything at once (a broken install fails
 * here with a clear message, not in the middle of a pack); RTLD_LOCAL keeps libarchive's symbols
 * out of the global namespace. The handle is never closed: the table must stay valid for the life
 * of the process.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "styles/archive_api.h"

#define LIBRARY "libarchive.so.13"

#define SYMBOL(name) {"archive_" #name, offsetof(mood__archive_fns, name)},
static const mood_dynlib_symbol symbols[] = {MOOD__ARCHIVE_FUNCTIONS(SYMBOL)};
#undef SYMBOL

static pthread_once_t once = PTHREAD_ONCE_INIT;
static mood__archive_fns fns;
static int loaded;
static char reason[512]; /* why loading failed */

static void load_once(void)
{
    loaded = mood_dynlib_load(LIBRARY, symbols, sizeof symbols / sizeof symbols[0], &fns,
                              sizeof fns, reason, sizeof reason) == 0;
}

int mood__archive_load(void)
{
    pthread_once(&once, load_once);
    if (loaded)
        return 0;
    return mood_error_set(MOOD_EBACKEND,
                          "style packs need libarchive (Debian package libarchive13): %s", reason);
}

const mood__archive_fns *mood__archive_api(void)
{
    return &fns;
}
