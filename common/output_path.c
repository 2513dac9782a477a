/*
 * output_path.c: checks an output file's path before the work that fills it starts, so that a
 * long run (training, generation) does not end on a path it could never write, and a command
 * never writes over a file it reads (a bake into its own base checkpoint would replace it).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"

/* Whether a file can be created in dir, tried: access() grants root every folder, also those
 * it cannot write (a read-only mount, /sys), where the work would be lost at its end. */
static int can_create_in(const char *dir)
{
    char probe[4200];
    int fd, e;
    snprintf(probe, sizeof probe, "%s/.mood-write-check-%ld", dir, (long)getpid());
    if ((fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return errno == EEXIST; /* EEXIST: a leftover of this pid's; the folder takes files */
    e = errno;
    close(fd);
    unlink(probe);
    errno = e;
    return 1;
}

int mood_output_path_check(const char *path)
{
    struct stat st;
    char dir[4096], *target = NULL;
    const char *base;
    int err;
    if (!path || !*(base = mood_path_basename(path)))
        return mood_error_set(MOOD_EINVAL, "%s: an output needs a file name", path ? path : "");
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return mood_error_set(MOOD_EINVAL, "%s is a folder: the output needs a file name", path);
    /* a device, a FIFO, a broken link; a link's target is what gets written, beside it */
    if ((err = mood_output_target(&target, path)) != 0)
        return err;
    base = mood_path_basename(target);
    if (base > target)
        snprintf(dir, sizeof dir, "%.*s", (int)(base - target), target);
    else
        snprintf(dir, sizeof dir, ".");
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        err = mood_error_set(MOOD_ENOTFOUND, "%s: the folder %s does not exist", path, dir);
    else if (access(dir, W_OK) != 0 || !can_create_in(dir))
        err = mood_error_set(MOOD_EIO, "%s: the folder %s cannot be written: %s", path, dir,
                             strerror(errno));
    mood_free(target);
    return err;
}

/* Same file by device and inode: catches every spelling of one path, links included. */
static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int mood_output_path_check_inputs(const char *path, const char *const *inputs, size_t n)
{
    int err = mood_output_path_check(path);
    for (size_t i = 0; !err && i < n; i++) {
        if (inputs[i] && same_file(path, inputs[i]))
            return mood_error_set(MOOD_EINVAL,
                                  "%s is also an input (%s): write the output to another file",
                                  path, inputs[i]);
    }
    return err;
}
