/*
 * archive_api.h: libarchive loaded at run time (dlopen) on first use, not linked (internal, not
 * installed). Linking libarchive made every `mood` command pay for the dynamic loader mapping it
 * and its dependent libraries (libxml2, ICU, libstdc++, ...) at start-up, about 10 ms together
 * with libcurl, though only the commands that write or read a style pack use it; `mood list` and
 * `mood inspect` have a 50 ms budget.
 *
 * Include this header instead of <archive.h> and <archive_entry.h>: it gives libarchive's types
 * and constants, and turns each archive function mood calls into a call through a table of
 * pointers filled by mood__archive_load(). Code keeps calling archive_read_new() & co unchanged,
 * but must call mood__archive_load() (and check it) before its first archive call: a call before
 * a successful load goes through a NULL pointer. To use another function, add it to
 * MOOD__ARCHIVE_FUNCTIONS and to the list of redirections below.
 */
#ifndef MOOD_STYLES_ARCHIVE_API_H
#define MOOD_STYLES_ARCHIVE_API_H

#include <archive.h>       /* types and constants only: the functions come from the table */
#include <archive_entry.h> /* likewise */

#include "common/common.h"

/* The archive functions mood uses (styles/ and the tests that build hostile archives), without
 * their archive_ prefix. */
#define MOOD__ARCHIVE_FUNCTIONS(X)                                                                 \
    X(error_string)                                                                                \
    X(filter_bytes)                                                                                \
    X(read_data)                                                                                   \
    X(read_free)                                                                                   \
    X(read_new)                                                                                    \
    X(read_next_header)                                                                            \
    X(read_open_fd)                                                                                \
    X(read_open_filename)                                                                          \
    X(read_support_filter_zstd)                                                                    \
    X(read_support_format_tar)                                                                     \
    X(set_error)                                                                                   \
    X(write_add_filter_zstd)                                                                       \
    X(write_close)                                                                                 \
    X(write_data)                                                                                  \
    X(write_free)                                                                                  \
    X(write_header)                                                                                \
    X(write_new)                                                                                   \
    X(write_open2)                                                                                 \
    X(write_open_filename)                                                                         \
    X(write_set_bytes_in_last_block)                                                               \
    X(write_set_filter_option)                                                                     \
    X(write_set_format_pax_restricted)                                                             \
    X(entry_filetype)                                                                              \
    X(entry_free)                                                                                  \
    X(entry_gid)                                                                                   \
    X(entry_hardlink)                                                                              \
    X(entry_mtime)                                                                                 \
    X(entry_new)                                                                                   \
    X(entry_pathname)                                                                              \
    X(entry_perm)                                                                                  \
    X(entry_set_filetype)                                                                          \
    X(entry_set_gid)                                                                               \
    X(entry_set_hardlink)                                                                          \
    X(entry_set_mtime)                                                                             \
    X(entry_set_pathname)                                                                          \
    X(entry_set_perm)                                                                              \
    X(entry_set_rdev)                                                                              \
    X(entry_set_size)                                                                              \
    X(entry_set_symlink)                                                                           \
    X(entry_set_uid)                                                                               \
    X(entry_size)                                                                                  \
    X(entry_size_is_set)                                                                           \
    X(entry_sparse_add_entry)                                                                      \
    X(entry_sparse_count)                                                                          \
    X(entry_symlink)                                                                               \
    X(entry_uid)

/* One pointer per function, of the exact type libarchive's headers declare. */
#define MOOD__ARCHIVE_MEMBER(name) __typeof__(archive_##name) *name;
typedef struct mood__archive_fns {
    MOOD__ARCHIVE_FUNCTIONS(MOOD__ARCHIVE_MEMBER)
} mood__archive_fns;
#undef MOOD__ARCHIVE_MEMBER

/* Loads libarchive.so.13 and fills the table, once per process (thread-safe; later calls return
 * the first call's result at once). MOOD_EBACKEND, naming the library and the loader's reason,
 * when it cannot be loaded. The library stays loaded until the process exits. */
MOOD_WARN_UNUSED int mood__archive_load(void);
/* The table; its pointers are NULL until mood__archive_load() has succeeded. */
const mood__archive_fns *mood__archive_api(void);

#define archive_error_string                  (mood__archive_api()->error_string)
#define archive_filter_bytes                  (mood__archive_api()->filter_bytes)
#define archive_read_data                     (mood__archive_api()->read_data)
#define archive_read_free                     (mood__archive_api()->read_free)
#define archive_read_new                      (mood__archive_api()->read_new)
#define archive_read_next_header              (mood__archive_api()->read_next_header)
#define archive_read_open_fd                  (mood__archive_api()->read_open_fd)
#define archive_read_open_filename            (mood__archive_api()->read_open_filename)
#define archive_read_support_filter_zstd      (mood__archive_api()->read_support_filter_zstd)
#define archive_read_support_format_tar       (mood__archive_api()->read_support_format_tar)
#define archive_set_error                     (mood__archive_api()->set_error)
#define archive_write_add_filter_zstd         (mood__archive_api()->write_add_filter_zstd)
#define archive_write_close                   (mood__archive_api()->write_close)
#define archive_write_data                    (mood__archive_api()->write_data)
#define archive_write_free                    (mood__archive_api()->write_free)
#define archive_write_header                  (mood__archive_api()->write_header)
#define archive_write_new                     (mood__archive_api()->write_new)
#define archive_write_open2                   (mood__archive_api()->write_open2)
#define archive_write_open_filename           (mood__archive_api()->write_open_filename)
#define archive_write_set_bytes_in_last_block (mood__archive_api()->write_set_bytes_in_last_block)
#define archive_write_set_filter_option       (mood__archive_api()->write_set_filter_option)
#define archive_write_set_format_pax_restricted                                                    \
    (mood__archive_api()->write_set_format_pax_restricted)
#define archive_entry_filetype         (mood__archive_api()->entry_filetype)
#define archive_entry_free             (mood__archive_api()->entry_free)
#define archive_entry_gid              (mood__archive_api()->entry_gid)
#define archive_entry_hardlink         (mood__archive_api()->entry_hardlink)
#define archive_entry_mtime            (mood__archive_api()->entry_mtime)
#define archive_entry_new              (mood__archive_api()->entry_new)
#define archive_entry_pathname         (mood__archive_api()->entry_pathname)
#define archive_entry_perm             (mood__archive_api()->entry_perm)
#define archive_entry_set_filetype     (mood__archive_api()->entry_set_filetype)
#define archive_entry_set_gid          (mood__archive_api()->entry_set_gid)
#define archive_entry_set_hardlink     (mood__archive_api()->entry_set_hardlink)
#define archive_entry_set_mtime        (mood__archive_api()->entry_set_mtime)
#define archive_entry_set_pathname     (mood__archive_api()->entry_set_pathname)
#define archive_entry_set_perm         (mood__archive_api()->entry_set_perm)
#define archive_entry_set_rdev         (mood__archive_api()->entry_set_rdev)
#define archive_entry_set_size         (mood__archive_api()->entry_set_size)
#define archive_entry_set_symlink      (mood__archive_api()->entry_set_symlink)
#define archive_entry_set_uid          (mood__archive_api()->entry_set_uid)
#define archive_entry_size             (mood__archive_api()->entry_size)
#define archive_entry_size_is_set      (mood__archive_api()->entry_size_is_set)
#define archive_entry_sparse_add_entry (mood__archive_api()->entry_sparse_add_entry)
#define archive_entry_sparse_count     (mood__archive_api()->entry_sparse_count)
#define archive_entry_symlink          (mood__archive_api()->entry_symlink)
#define archive_entry_uid              (mood__archive_api()->entry_uid)

#endif /* MOOD_STYLES_ARCHIVE_API_H */
