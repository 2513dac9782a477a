/*
 * output_path.c: checks an output file's path before the work that fills it starts, so that a
 * long run (training, generation) does not end on a path it could never write.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"

int mood_output_path_check(const char *path)
{
    struct stat st;
    char dir[4096];
    const char *base = mood_path_basename(path);
    if (!path || !*base)
        return mood_error_set(MOOD_EINVAL, "%s: an output needs a file name", path ? path : "");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return mood_error_set(MOOD_EINVAL, "%s is a folder: the output needs a file name", path);
    if (base > path)
        snprintf(dir, sizeof dir, "%.*s", (int)(base - path), path);
    else
        snprintf(dir, sizeof dir, ".");
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return mood_error_set(MOOD_ENOTFOUND, "%s: the folder %s does not exist", path, dir);
    if (access(dir, W_OK) != 0)
        return mood_error_set(MOOD_EIO, "%s: the folder %s cannot be written: %s", path, dir,
                              strerror(errno));
    return 0;
}
