/*
 * curl_api.h: libcurl loaded at run time (dlopen) on first use, not linked (internal, not
 * installed). Linking libcurl made every `mood` command pay about 10 ms at start-up for the
 * dynamic loader to map it and its ~30 dependent libraries (TLS, Kerberos, LDAP, ...), though only
 * the network commands use it; `mood list` and `mood inspect` have a 50 ms budget.
 *
 * Include this header instead of <curl/curl.h>: it gives curl's types and constants, and turns
 * each curl function the registry calls into a call through a table of pointers filled by
 * mood__curl_load(). Code keeps calling curl_easy_setopt() & co unchanged, but must call
 * mood__curl_load() (and check it) before its first curl call: a call before a successful load
 * goes through a NULL pointer. A function not in MOOD__CURL_FUNCTIONS is not declared usable:
 * add it to the list (and below) to use it.
 */
#ifndef MOOD_REGISTRY_CURL_API_H
#define MOOD_REGISTRY_CURL_API_H

/* No type-checking macros: they would wrap the calls that this header redirects. */
#if defined(CURLINC_CURL_H) && !defined(CURL_DISABLE_TYPECHECK)
#error "include registry/curl_api.h before (instead of) <curl/curl.h>"
#endif
#ifndef CURL_DISABLE_TYPECHECK
#define CURL_DISABLE_TYPECHECK
#endif
#include <curl/curl.h> /* types and constants only: the functions come from the table */

#include "common/common.h"

/* The curl functions mood uses, without their curl_ prefix. */
#define MOOD__CURL_FUNCTIONS(X)                                                                    \
    X(global_init)                                                                                 \
    X(easy_init)                                                                                   \
    X(easy_setopt)                                                                                 \
    X(easy_perform)                                                                                \
    X(easy_getinfo)                                                                                \
    X(easy_cleanup)                                                                                \
    X(easy_strerror)                                                                               \
    X(slist_append)                                                                                \
    X(slist_free_all)

/* One pointer per function, of the exact type <curl/curl.h> declares. */
#define MOOD__CURL_MEMBER(name) __typeof__(curl_##name) *name;
typedef struct mood__curl_fns {
    MOOD__CURL_FUNCTIONS(MOOD__CURL_MEMBER)
} mood__curl_fns;
#undef MOOD__CURL_MEMBER

/* Loads libcurl.so.4 and fills the table, once per process (thread-safe; later calls return
 * the first call's result at once). MOOD_EBACKEND, naming the library and the loader's reason,
 * when it cannot be loaded. The library stays loaded until the process exits. */
MOOD_WARN_UNUSED int mood__curl_load(void);
/* The table; its pointers are NULL until mood__curl_load() has succeeded. */
const mood__curl_fns *mood__curl_api(void);

/* curl_easy_setopt and curl_easy_getinfo are argument-counting macros in <curl/curl.h>. */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#define curl_global_init    (mood__curl_api()->global_init)
#define curl_easy_init      (mood__curl_api()->easy_init)
#define curl_easy_setopt    (mood__curl_api()->easy_setopt)
#define curl_easy_perform   (mood__curl_api()->easy_perform)
#define curl_easy_getinfo   (mood__curl_api()->easy_getinfo)
#define curl_easy_cleanup   (mood__curl_api()->easy_cleanup)
#define curl_easy_strerror  (mood__curl_api()->easy_strerror)
#define curl_slist_append   (mood__curl_api()->slist_append)
#define curl_slist_free_all (mood__curl_api()->slist_free_all)

#endif /* MOOD_REGISTRY_CURL_API_H */
