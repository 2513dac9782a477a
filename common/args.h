/*
 * args.h: the check of a public function's pointer arguments (not installed). core.h promises
 * that NULL where a function needs a value is MOOD_EINVAL, never a crash: one macro says it the
 * same way everywhere, naming the function and the argument ("mood_hash_file: path is NULL").
 */
#ifndef MOOD_COMMON_ARGS_H
#define MOOD_COMMON_ARGS_H

#include "common/common.h"

/* Returns MOOD_EINVAL from the calling function when `arg` is NULL. For a function's first lines,
 * before it has anything to clean up; an out-parameter is checked before it is cleared. */
#define MOOD_ARG_NONNULL(arg)                                                                      \
    do {                                                                                           \
        if (!(arg))                                                                                \
            return mood_error_set(MOOD_EINVAL, "%s: %s is NULL", __func__, #arg);                  \
    } while (0)

#endif /* MOOD_COMMON_ARGS_H */
