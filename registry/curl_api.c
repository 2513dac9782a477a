/*
 * curl_api.c: loads libcurl with dlopen on first use and fills the table of curl_api.h.
 *
 * Why: linked, libcurl and its ~30 dependent libraries cost every `mood` command about 10 ms of
 * dynamic loading at start-up; loaded here, only the commands that go on the network pay it.
 * RTLD_NOW resolves everything at once (a broken install fails here with a clear message, not in
 * the middle of a transfer); RTLD_LOCAL keeps curl's symbols out of the global namespace. The
 * handle is never closed: the table must stay valid for the life of the process.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "registry/curl_api.h"

#define LIBRARY "libcurl.so.4"

#define SYMBOL(name) {"curl_" #name, offsetof(mood__curl_fns, name)},
static const struct {
    const char *name;
    size_t offset;
} symbols[] = {MOOD__CURL_FUNCTIONS(SYMBOL)};
#undef SYMBOL

static pthread_once_t once = PTHREAD_ONCE_INIT;
static mood__curl_fns fns;
static int loaded;
static char reason[512]; /* why loading failed */

/* Resolves every symbol into a scratch table, so that fns is all or nothing. */
static int resolve(void *lib)
{
    mood__curl_fns all;
    memset(&all, 0, sizeof all);
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        void *sym = dlsym(lib, symbols[i].name);
        if (!sym) {
            const char *why = dlerror();
            snprintf(reason, sizeof reason, "%s", why ? why : symbols[i].name);
            return -1;
        }
        /* POSIX: a data pointer from dlsym may be converted to a function pointer */
        memcpy((char *)&all + symbols[i].offset, &sym, sizeof sym);
    }
    fns = all;
    return 0;
}

static void load_once(void)
{
    void *lib = dlopen(LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        snprintf(reason, sizeof reason, "%s", why ? why : LIBRARY ": cannot be loaded");
        return;
    }
    if (resolve(lib) != 0) {
        dlclose(lib);
        return;
    }
    loaded = 1;
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
