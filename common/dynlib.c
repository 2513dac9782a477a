/*
 * dynlib.c: loading an optional library on first use (dlopen + dlsym into a table of function
 * pointers). libcurl and libarchive are loaded this way (registry/curl_api.c,
 * styles/archive_api.c): linked, they and their ~40 dependencies cost every command ~10 ms at
 * start-up, although only network and style-pack commands use them.
 */
#include <dlfcn.h>
#include <string.h>

#include "common/common.h"

int mood_dynlib_load(const char *library, const mood_dynlib_symbol *symbols, size_t n, void *fns,
                     size_t size, char *reason, size_t reason_size)
{
    void *lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    char *all = NULL;
    if (!lib) {
        const char *why = dlerror();
        snprintf(reason, reason_size, "%s", why ? why : library);
        return -1;
    }
    if (!(all = mood_calloc(1, size))) {
        snprintf(reason, reason_size, "out of memory");
        dlclose(lib);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        void *sym = dlsym(lib, symbols[i].name);
        if (!sym) {
            const char *why = dlerror();
            snprintf(reason, reason_size, "%s", why ? why : symbols[i].name);
            mood_free(all);
            dlclose(lib);
            return -1;
        }
        /* POSIX: a data pointer from dlsym may be converted to a function pointer */
        memcpy(all + symbols[i].offset, &sym, sizeof sym);
    }
    memcpy(fns, all, size);
    mood_free(all);
    return 0;
}
