/*
 * file.c: read-only file mappings and atomic file writes.
 *
 * Every file a user names (a LoRA, a checkpoint, a sidecar) is read through mood_map_file, which
 * refuses anything but a regular file without blocking: a FIFO would hang the command, a device
 * would be read forever.
 *
 * Atomic writes create "<dir>/.<name>.tmp-<pid>-<n>" with O_EXCL beside the destination, fsync it,
 * rename it over the destination and fsync the directory. A destination that is a symbolic link
 * is written through (its target replaced, the link kept); one that is a device, a FIFO or a
 * socket is refused: the rename would replace /dev/null itself with a file. Temporary paths in
 * flight are kept in a small table so that a signal handler (Ctrl-C) can remove them with
 * mood_atomic_cleanup_all(): no partial file is ever left under either name.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"

/* What a path that is not a regular file is, for the message refusing it. */
static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode))
        return "a folder";
    if (S_ISFIFO(mode))
        return "a named pipe (FIFO)";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device";
    return "a special file";
}

static int not_regular(const char *path, mode_t mode)
{
    return mood_error_set(MOOD_EINVAL, "%s: not a regular file but %s; mood reads only plain files",
                          path, file_kind(mode));
}

static char *dir_of(const char *path);

/* The kernel's fs.protected_symlinks rule, applied here because realpath() reads links without
 * the kernel's check: a link in a sticky world-writable folder (/tmp) is followed only when its
 * owner is the follower or the folder's owner, so that nobody can plant /tmp/out.png pointing at
 * another user's file for mood to replace. */
static int link_may_be_followed(const char *path, const struct stat *link)
{
    struct stat dir;
    char *parent = dir_of(path);
    int ok = parent && stat(parent, &dir) == 0 &&
             (link->st_uid == geteuid() || !(dir.st_mode & S_ISVTX) || !(dir.st_mode & S_IWOTH) ||
              dir.st_uid == link->st_uid);
    mood_free(parent);
    return ok;
}

int mood_output_target(char **out, const char *path)
{
    struct stat st;
    char *real;
    *out = NULL;
    if (lstat(path, &st) != 0) /* nothing there yet (or the folder is missing: open says) */
        return (*out = mood_strdup(path)) ? 0 : mood_error_nomem();
    if (S_ISREG(st.st_mode))
        return (*out = mood_strdup(path)) ? 0 : mood_error_nomem();
    if (!S_ISLNK(st.st_mode))
        return mood_error_set(MOOD_EINVAL,
                              "%s: not a regular file but %s; mood writes only plain files", path,
                              file_kind(st.st_mode));
    /* a link is written through, as cp and PIL do; the rename then replaces its target */
    if (!link_may_be_followed(path, &st))
        return mood_error_set(MOOD_EINVAL,
                              "%s: a link another user made in a shared folder; mood does not "
                              "write through it (name another file)",
                              path);
    if (!(real = realpath(path, NULL)))
        return mood_error_set(errno == ENOENT ? MOOD_ENOTFOUND : MOOD_EIO,
                              "%s: a link whose target cannot be reached: %s", path,
                              strerror(errno));
    if (stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
        int err = mood_error_set(MOOD_EINVAL,
                                 "%s: a link to %s, which is not a regular file; mood writes "
                                 "only plain files",
                                 path, real);
        free(real);
        return err;
    }
    *out = mood_strdup(real);
    free(real);
    return *out ? 0 : mood_error_nomem();
}

static int open_failed(const char *path, int e)
{
    struct stat st;
    /* a socket cannot be opened at all (ENXIO): say what it is rather than "no such device" */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return not_regular(path, st.st_mode);
    return mood_error_set(e == ENOENT ? MOOD_ENOTFOUND : MOOD_EIO, "%s: cannot open: %s", path,
                          strerror(e));
}

int mood_map_file(mood_map *out, const char *path)
{
    struct stat st;
    void *data;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever, before
     * fstat could tell it apart; it changes nothing for the regular files that are mapped. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    out->data = NULL;
    out->size = 0;
    if (fd < 0)
        return open_failed(path, errno);
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mood_error_set(MOOD_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return not_regular(path, st.st_mode);
    }
    if (st.st_size > 0) {
        data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (data == MAP_FAILED) {
            int e = errno;
            close(fd);
            return mood_error_set(MOOD_EIO, "%s: cannot map: %s", path, strerror(e));
        }
        out->data = data;
    }
    out->size = (uint64_t)st.st_size;
    close(fd);
    return 0;
}

void mood_unmap(mood_map *m)
{
    if (m->data)
        munmap((void *)m->data, (size_t)m->size);
    m->data = NULL;
    m->size = 0;
}

void mood_map_release(const mood_map *m, uint64_t offset, uint64_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t begin, end;
    if (!m->data || page <= 0 || offset >= m->size)
        return;
    if (len > m->size - offset)
        len = m->size - offset;
    /* Only whole pages inside the range: never drop a page a neighbour still needs. */
    begin = (offset + (uint64_t)page - 1) / (uint64_t)page * (uint64_t)page;
    end = (offset + len) / (uint64_t)page * (uint64_t)page;
    if (end > begin)
        madvise((void *)(m->data + begin), (size_t)(end - begin), MADV_DONTNEED);
}

/* ----- temporary paths in flight, for cleanup from a signal handler ----------------------- */
#define MAX_PENDING 16
static char *volatile pending[MAX_PENDING];

static void pending_add(char *path)
{
    for (int i = 0; i < MAX_PENDING; i++) {
        if (!pending[i]) {
            pending[i] = path;
            return;
        }
    }
}

static void pending_remove(const char *path)
{
    for (int i = 0; i < MAX_PENDING; i++) {
        if (pending[i] == path)
            pending[i] = NULL;
    }
}

/* Async-signal-safe: only unlink(). */
void mood_atomic_cleanup_all(void)
{
    for (int i = 0; i < MAX_PENDING; i++) {
        if (pending[i])
            unlink(pending[i]);
    }
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return mood_strdup(".");
    if (slash == path)
        return mood_strdup("/");
    return mood_strndup(path, (size_t)(slash - path));
}

/* Removes (with `remove`) each entry of dir named PREFIX<pid>-... whose process is gone. */
static void remove_dead_entries(const char *dir, const char *prefix, void (*remove)(const char *))
{
    DIR *d = opendir(dir);
    struct dirent *e;
    mood_buf path;
    size_t k = strlen(prefix);
    if (!d)
        return;
    mood_buf_init(&path);
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid;
        if (strncmp(e->d_name, prefix, k) != 0)
            continue;
        pid = strtol(e->d_name + k, &end, 10);
        if (pid <= 0 || *end != '-' || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* alive, or not ours to judge */
        path.len = 0;
        if (mood_buf_printf(&path, "%s/%s", dir, e->d_name) == 0)
            remove(path.data);
    }
    closedir(d);
    mood_buf_dispose(&path);
}

/* Temporary files of earlier writes to this destination whose process is gone (killed before it
 * could remove them: a pack or a model's worth of hidden bytes each) go first. */
static void unlink_path(const char *path)
{
    unlink(path);
}

static void remove_dead_leftovers(const char *dir, const char *base)
{
    char prefix[128];
    snprintf(prefix, sizeof prefix, ".%.100s.tmp-", base);
    remove_dead_entries(dir, prefix, unlink_path);
}

int mood_atomic_open(mood_atomic_file *af, const char *path)
{
    static unsigned counter;
    mood_buf name;
    char *dir = NULL;
    int fd = -1, err = 0;
    memset(af, 0, sizeof *af);
    mood_buf_init(&name);
    if ((err = mood_output_target(&af->path, path)) != 0)
        goto done;
    if (!(dir = dir_of(af->path))) {
        err = mood_error_nomem();
        goto done;
    }
    remove_dead_leftovers(dir, mood_path_basename(af->path));
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        name.len = 0;
        /* the name cut to 100 bytes: a destination name near the 255-byte limit must still fit */
        if ((err = mood_buf_printf(&name, "%s/.%.100s.tmp-%ld-%u", dir,
                                   mood_path_basename(af->path), (long)getpid(), counter++)) != 0)
            goto done;
        fd = open(name.data, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST) {
            err = mood_error_set(errno == ENOENT ? MOOD_ENOTFOUND : MOOD_EIO,
                                 "%s: cannot create output file: %s", path, strerror(errno));
            goto done;
        }
    }
    if (fd < 0) {
        err = mood_error_set(MOOD_EIO, "%s: cannot create a temporary file", path);
        goto done;
    }
    af->tmp_path = mood_buf_detach(&name);
    pending_add(af->tmp_path);
    af->fp = fdopen(fd, "wb");
    if (!af->fp) {
        close(fd);
        err = mood_error_set(MOOD_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    setvbuf(af->fp, NULL, _IOFBF, 1 << 20);
done:
    mood_free(dir);
    mood_buf_dispose(&name);
    if (err)
        mood_atomic_abort(af);
    return err;
}

static int write_error(const mood_atomic_file *af, int e)
{
    if (e == ENOSPC || e == EDQUOT)
        return mood_error_set(MOOD_EIO, "%s: no space left on the device while writing", af->path);
    if (e == EFBIG)
        return mood_error_set(MOOD_EIO, "%s: file size limit reached while writing", af->path);
    return mood_error_set(MOOD_EIO, "%s: write failed: %s", af->path, strerror(e));
}

int mood_atomic_write(mood_atomic_file *af, const void *data, size_t n)
{
    if (n && fwrite(data, 1, n, af->fp) != n)
        return write_error(af, errno);
    return 0;
}

static void sync_dir(const char *path)
{
    char *dir = dir_of(path);
    int fd;
    if (!dir)
        return;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    mood_free(dir);
}

int mood_atomic_commit(mood_atomic_file *af)
{
    int err = 0;
    FILE *fp = af->fp;
    af->fp = NULL;
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        err = write_error(af, errno);
        fclose(fp);
    } else if (fclose(fp) != 0) {
        err = write_error(af, errno);
    } else if (rename(af->tmp_path, af->path) != 0) {
        err = mood_error_set(MOOD_EIO, "%s: cannot rename the finished file into place: %s",
                             af->path, strerror(errno));
    } else {
        pending_remove(af->tmp_path);
        mood_free(af->tmp_path);
        af->tmp_path = NULL;
        sync_dir(af->path);
    }
    mood_atomic_abort(af);
    return err;
}

void mood_atomic_abort(mood_atomic_file *af)
{
    if (af->fp)
        fclose(af->fp);
    if (af->tmp_path) {
        unlink(af->tmp_path);
        pending_remove(af->tmp_path);
    }
    mood_free(af->tmp_path);
    mood_free(af->path);
    memset(af, 0, sizeof *af);
}

void mood_remove_digit_named_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    mood_buf path;
    if (!d)
        return;
    mood_buf_init(&path);
    while ((e = readdir(d)) != NULL) {
        if (!e->d_name[0] || strspn(e->d_name, "0123456789") != strlen(e->d_name))
            continue;
        path.len = 0;
        if (mood_buf_printf(&path, "%s/%s", dir, e->d_name) == 0)
            unlink(path.data);
    }
    closedir(d);
    mood_buf_dispose(&path);
    rmdir(dir);
}

void mood_remove_dead_temp_dirs(const char *dir, const char *prefix)
{
    remove_dead_entries(dir, prefix, mood_remove_digit_named_dir);
}

int mood_path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

const char *mood_path_basename(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}
