/*
 * fuzz_pack_archive.c: libFuzzer target for the .moodpack reader (styles/pack_archive.c). Each
 * input is written to a file and read into a fresh destination directory with small limits;
 * whether it is accepted or refused, nothing may be left outside the reader's temporary
 * directory, and disposing of the result must leave the destination empty.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "styles/pack_archive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[512], dest[600], input[600];

static void setup(void)
{
    /* thousands of small files are created and removed: memory is much faster than a disk */
    const char *tmp = getenv("TMPDIR");
    if (!tmp && access("/dev/shm", W_OK) == 0)
        tmp = "/dev/shm";
    snprintf(dir, sizeof dir, "%s/mood-fuzz-pack-XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        abort();
    snprintf(dest, sizeof dest, "%s/dest", dir);
    snprintf(input, sizeof input, "%s/input.moodpack", dir);
    if (mkdir(dest, 0755) != 0)
        abort();
}

static void teardown(void)
{
    unlink(input);
    rmdir(dest);
    rmdir(dir);
}

static int entries(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    if (!d)
        abort();
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mood__pack_extract x;
    mood__pack_limits lim;
    FILE *f;
    if (!dir[0]) {
        setup();
        atexit(teardown);
    }
    if (!(f = fopen(input, "wb")) || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0)
        abort();
    mood__pack_limits_init(&lim);
    lim.max_total = 1u << 20;
    lim.max_entry = 1u << 20;
    if (mood__pack_read(&x, input, dest, &lim, NULL, NULL) == 0) {
        if (entries(dest) != 1 || entries(x.dir) != (int)x.manifest.n_files)
            abort();
        mood__pack_extract_dispose(&x);
    } else if (x.dir || x.paths) {
        abort();
    }
    if (entries(dest) != 0 || entries(dir) != 2)
        abort(); /* nothing left behind, nothing written beside the destination */
    return 0;
}
