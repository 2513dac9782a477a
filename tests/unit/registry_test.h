/*
 * registry_test.h: helpers the registry's unit tests (test_registry.c, test_registry_more.c,
 * test_registry_doctor.c) share: fixture paths, copies, blob paths, doctor runs.
 */
#ifndef MOOD_TESTS_REGISTRY_TEST_H
#define MOOD_TESTS_REGISTRY_TEST_H

#include <cjson/cJSON.h>
#include <dirent.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "mood/mood.h"

/* mood_registry_show_json of style `name`, parsed (NULL when it failed; the check says so). */
static inline cJSON *show(mood_registry *r, const char *name)
{
    char *text = NULL;
    cJSON *o = NULL;
    MOOD_CHECK_OK(mood_registry_show_json(&text, r, name));
    if (text)
        o = cJSON_Parse(text);
    mood_registry_free_string(text);
    return o;
}

static inline const char *example_lora(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/../../examples/loras/%s",
             getenv("MOOD_FIXTURES") ? getenv("MOOD_FIXTURES") : "tests/fixtures", name);
    return path;
}

/* dir/name as a copy of src; returns the path (static, 2 slots). */
static inline const char *copy_into(const char *dir, const char *name, const char *src)
{
    static char path[2][1200];
    static int slot;
    slot = (slot + 1) % 2;
    snprintf(path[slot], sizeof path[slot], "%s/%s", dir, name);
    MOOD_CHECK(copy_file(src, path[slot]) == 0);
    return path[slot];
}

static inline const char *str(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItem(o, key));
}

static inline int blob_exists(mood_registry *r, const char *sha)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), sha, sha + 2);
    return access(path, F_OK) == 0;
}

static inline int unlink_blob(mood_registry *r, const char *sha)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/blobs/sha256/%.2s/%s", mood_registry_home(r), sha, sha + 2);
    return unlink(path);
}

static inline int doctor(mood_registry *r, int deep, int fix, char **report)
{
    mood_doctor_options o = {deep, fix, NULL, NULL};
    int problems = -1;
    char *text = NULL;
    MOOD_CHECK_OK(mood_registry_doctor(&text, &problems, r, &o));
    if (report)
        *report = text;
    else
        mood_registry_free_string(text);
    return problems;
}

static inline cJSON *doctor_json(mood_registry *r, int deep, int fix, int *problems)
{
    char *text = NULL;
    cJSON *o;
    *problems = doctor(r, deep, fix, &text);
    o = text ? cJSON_Parse(text) : NULL;
    mood_registry_free_string(text);
    MOOD_CHECK(o != NULL);
    return o;
}

static inline void write_text(const char *dir, const char *name, const char *text)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    MOOD_CHECK(write_file(path, text, strlen(text)) == 0);
}

/* A 1x1 RGBA PNG: a preview sidecar that really is an image. */
static const unsigned char tiny_png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
    0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00,
    0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78,
    0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f, 0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47,
    0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

static inline void write_png(const char *dir, const char *name)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    MOOD_CHECK(write_file(path, tiny_png, sizeof tiny_png) == 0);
}

static inline int str_is(const cJSON *o, const char *key, const char *want)
{
    const char *v = str(o, key);
    return v && strcmp(v, want) == 0;
}

static inline int str_has(const cJSON *o, const char *key, const char *part)
{
    const char *v = str(o, key);
    return v && strstr(v, part) != NULL;
}

/* ----- permissions: tests of files a user cannot read or write ---------------------------------
 */

#define NOBODY_ID 65534 /* the user and group "nobody" of Debian and most Linux systems */

/* chown -R path to uid:gid (links themselves, not what they point to). 0 or -1. */
static inline int chown_tree(const char *path, uid_t uid, gid_t gid)
{
    struct stat st;
    DIR *d;
    struct dirent *e;
    int err = lchown(path, uid, gid);
    if (err || lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return err;
    if (!(d = opendir(path)))
        return -1;
    while (!err && (e = readdir(d)) != NULL) {
        char child[4096];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if ((size_t)snprintf(child, sizeof child, "%s/%s", path, e->d_name) >= sizeof child)
            err = -1;
        else
            err = chown_tree(child, uid, gid);
    }
    closedir(d);
    return err;
}

/* Runs fn(arg) where file permissions hold. An ordinary user runs it here. Root (CI runs the
 * tests as root) reads and writes anything, so it runs in a child process switched to nobody,
 * after `tree` (may be NULL), a folder the test made, is given to nobody. Returns 1 when fn ran
 * (its failed checks are counted), 0 when nobody cannot reach the scratch folder (a TMPDIR
 * under /root): then the caller's checks did not run, and it says so. */
static inline int run_unprivileged(const char *tree, void (*fn)(void *), void *arg)
{
    pid_t pid;
    int status = 0;
    if (geteuid() != 0) {
        fn(arg);
        return 1;
    }
    MOOD_CHECK(chmod(scratch_dir(), 0755) == 0); /* mkdtemp made it 0700 */
    if (tree)
        MOOD_CHECK(chown_tree(tree, NOBODY_ID, NOBODY_ID) == 0);
    fflush(stdout);
    fflush(stderr);
    if ((pid = fork()) == 0) {
        if (setgroups(0, NULL) != 0 || setgid(NOBODY_ID) != 0 || setuid(NOBODY_ID) != 0)
            _exit(3);
        if (access(scratch_dir(), X_OK) != 0)
            _exit(77);
        harness_failures = 0;
        fn(arg);
        fflush(stdout);
        fflush(stderr);
        _exit(harness_failures ? 1 : 0);
    }
    MOOD_CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    if (pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        fprintf(stderr, "  note: user nobody cannot reach %s: a permission check not run\n",
                scratch_dir());
        return 0;
    }
    MOOD_CHECK_MSG(pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                   "the checks run as user nobody failed (wait status %d)", status);
    return 1;
}

#endif /* MOOD_TESTS_REGISTRY_TEST_H */
