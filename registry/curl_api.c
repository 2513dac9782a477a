/*
 * curl_api.c: loads libcurl with dlopen on first use and fills the table of curl_api.h.
 *
 * Why: linked, libcurl and its ~30 dependent libraries cost every `mood` command about 10 ms of
 * dynamic loading at start-up; loaded here, only the commands that go on the network pay it.
 * RTLD_NOW resolves everything at once (a broken install fails here with a clear message, not in
 * the middle of a transfer); RTLD_LOCAL keeps curl's symbols out of the global namespace. The
 * handle is never closed: the table must stay valid for the life of the process.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "registry/curl_api.h"

#define LIBRARY "libcurl.so.4"

#define SYMBOL(name) {"curl_" #name, offsetof(mood__curl_fns, name)},
static const mood_dynlib_symbol symbols[] = {MOOD__CURL_FUNCTIONS(SYMBOL)};
#undef SYMBOL

static pthread_once_t once = PTHREAD_ONCE_INIT;
static mood__curl_fns fns;
static int loaded;
static char reason[512]; /* why loading failed */

static void load_once(void)
{
    loaded = mood_dynlib_load(LIBRARY, symbols, sizeof symbols / sizeof symbols[0], &fns,
                              sizeof fns, reason, sizeof reason) == 0;
}

int mood__curl_load(void)
{
    pthread_once(&once, load_once);
    if (loaded)
        return 0;
    return mood_error_set(MOOD_EBACKEND,
                          "network features need libcurl (Debian package libcurl4): %s", reason);
}

const mood__curl_fns *mood__curl_api(void)
{
    return &fns;
}
