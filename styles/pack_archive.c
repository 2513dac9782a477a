/*
 * pack_archive.c: writing and reading .moodpack archives (tar + zstd) with libarchive; the rules
 * are in pack_archive.h.
 *
 * Reading, entry by entry: the header is checked first (name, type, declared size against the
 * limits and the manifest), then the data is decompressed in chunks into DEST/.moodpack-XXXXXX/N
 * while counting and hashing it; the count is checked after every chunk, so a compression bomb
 * or a header that understates its data stops at the limit, not at the end of the disk. Only
 * after the last entry are the hashes compared and the list checked for missing files.
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mood/hash.h"
#include "styles/archive_api.h"
#include "styles/pack_archive.h"

#define CHUNK        (1u << 20)
#define STALE_PREFIX MOOD_PACK_TEMP_PREFIX

void mood__pack_limits_init(mood__pack_limits *l)
{
    l->max_total = MOOD__PACK_DEFAULT_TOTAL;
    l->max_entry = MOOD__PACK_DEFAULT_ENTRY;
    l->max_entries = MOOD__PACK_DEFAULT_ENTRIES;
}

/* ----- writing ------------------------------------------------------------------------------- */

typedef struct writer {
    struct archive *a;
    mood_atomic_file af;
    const char *path;
    mood_progress_fn progress;
    void *payload;
    mood_progress p;
} writer;

static la_ssize_t write_cb(struct archive *a, void *client, const void *buf, size_t n)
{
    writer *w = client;
    if (mood_atomic_write(&w->af, buf, n) != 0) {
        archive_set_error(a, EIO, "%s", mood_error_last());
        return -1;
    }
    return (la_ssize_t)n;
}

static int archive_fail(struct archive *a, const char *path, const char *what)
{
    const char *msg = archive_error_string(a);
    size_t n = strlen(path);
    if (msg && strncmp(msg, path, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ')
        msg += n + 2; /* our write callback's error names the pack already */
    return mood_error_set(MOOD_EIO, "%s: %s: %s", path, what, msg ? msg : "libarchive error");
}

static int write_data(writer *w, const mood__pack_src *s, const uint8_t *data, uint64_t size)
{
    for (uint64_t off = 0; off < size;) {
        size_t n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
        if (archive_write_data(w->a, data + off, n) != (la_ssize_t)n)
            return archive_fail(w->a, w->path, s->name);
        off += n;
        w->p.done += n;
        if (w->progress && w->progress(&w->p, w->payload) != 0)
            return mood_error_set(MOOD_ECANCELLED, "%s: cancelled", w->path);
    }
    return 0;
}

static int write_entry(writer *w, const mood__pack_src *s)
{
    struct archive_entry *e = archive_entry_new();
    mood_map m = {0};
    const uint8_t *data = s->data;
    uint64_t size = s->size;
    int err = 0;
    if (!e)
        return mood_error_nomem();
    if (s->path) {
        char hex[65];
        if ((err = mood_map_file(&m, s->path)) != 0)
            goto done;
        data = m.data;
        size = m.size;
        /* a damaged stored file would make a pack every importer refuses */
        if (s->sha256 && (mood_sha256_hex(hex, data, (size_t)size), strcmp(hex, s->sha256) != 0)) {
            err = mood_error_set(MOOD_EFORMAT,
                                 "%s (for %s) is damaged: its SHA-256 is %s, not %s; nothing "
                                 "was written ('mood doctor --deep' lists what else is)",
                                 s->path, s->name, hex, s->sha256);
            goto done;
        }
    }
    archive_entry_set_pathname(e, s->name);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, (la_int64_t)size);
    archive_entry_set_mtime(e, 0, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    if (archive_write_header(w->a, e) != ARCHIVE_OK)
        err = archive_fail(w->a, w->path, s->name);
    else
        err = write_data(w, s, data, size);
done:
    mood_unmap(&m);
    archive_entry_free(e);
    return err;
}

/* manifest.json first, then by name: the same pack always gives the same bytes. */
static int cmp_src(const void *pa, const void *pb)
{
    const mood__pack_src *a = *(const mood__pack_src *const *)pa;
    const mood__pack_src *b = *(const mood__pack_src *const *)pb;
    int ma = strcmp(a->name, MOOD__PACK_MANIFEST) == 0,
        mb = strcmp(b->name, MOOD__PACK_MANIFEST) == 0;
    if (ma != mb)
        return mb - ma;
    return strcmp(a->name, b->name);
}

static int open_writer(writer *w)
{
    int err;
    if ((err = mood__archive_load()) != 0)
        return err;
    if (!(w->a = archive_write_new()))
        return mood_error_nomem();
    if (archive_write_set_format_pax_restricted(w->a) != ARCHIVE_OK ||
        archive_write_add_filter_zstd(w->a) != ARCHIVE_OK)
        return archive_fail(w->a, w->path, "cannot set up tar + zstd");
    /* no zero padding after the zstd frame (readers would take it for another frame) */
    archive_write_set_bytes_in_last_block(w->a, 1);
    /* zstd's output is the same for any number of workers >= 1, so this stays deterministic */
    (void)archive_write_set_filter_option(w->a, "zstd", "threads", "4");
    if (archive_write_open2(w->a, w, NULL, write_cb, NULL, NULL) != ARCHIVE_OK)
        return archive_fail(w->a, w->path, "cannot start the archive");
    return 0;
}

int mood__pack_write(const char *out_path, const mood__pack_src *src, size_t n,
                     mood_progress_fn progress, void *payload)
{
    writer w;
    const mood__pack_src **order = NULL;
    int err = 0;
    memset(&w, 0, sizeof w);
    w.path = out_path;
    w.progress = progress;
    w.payload = payload;
    w.p.phase = "writing the pack";
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (src[i].path && stat(src[i].path, &st) == 0)
            w.p.total += (uint64_t)st.st_size;
        else if (!src[i].path)
            w.p.total += src[i].size;
    }
    if (!(order = mood_calloc(n ? n : 1, sizeof *order))) {
        err = mood_error_nomem();
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = &src[i];
    qsort(order, n, sizeof *order, cmp_src);
    if ((err = mood_atomic_open(&w.af, out_path)) != 0 || (err = open_writer(&w)) != 0)
        goto done;
    for (size_t i = 0; i < n && !err; i++)
        err = write_entry(&w, order[i]);
    if (!err && archive_write_close(w.a) != ARCHIVE_OK)
        err = archive_fail(w.a, out_path, "cannot finish the archive");
    if (!err)
        err = mood_atomic_commit(&w.af);
done:
    if (w.a)
        archive_write_free(w.a);
    mood_atomic_abort(&w.af);
    mood_free(order);
    return err;
}

/* ----- reading ------------------------------------------------------------------------------- */

typedef struct reader {
    struct archive *a;
    int fd; /* the pack, opened once: what was checked is what is read */
    const char *path;
    const mood__pack_limits *lim;
    mood__pack_extract *x;
    char (*got)[65];   /* SHA-256 of each extracted file, "" until seen */
    uint64_t declared; /* sum of header sizes so far */
    uint64_t actual;   /* bytes decompressed so far */
    uint32_t entries;
    char name[256]; /* current entry, printable */
    uint8_t *buf;
    mood_progress_fn progress;
    void *payload;
    mood_progress p;
} reader;

/* A printable copy of an entry name for messages (control characters become '?'). */
static void set_name(reader *rd, const char *name)
{
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof rd->name; i++)
        rd->name[i] = (unsigned char)name[i] < 0x20 || name[i] == 0x7f ? '?' : name[i];
    rd->name[i] = '\0';
}

static int bad(reader *rd, const char *why)
{
    return mood_error_set(MOOD_EFORMAT, "%s: entry '%s': %s; nothing imported", rd->path, rd->name,
                          why);
}

static int corrupt(reader *rd)
{
    const char *msg = archive_error_string(rd->a);
    if (!msg)
        msg = "unreadable data";
    if (rd->name[0])
        return mood_error_set(MOOD_EFORMAT,
                              "%s: corrupt or truncated archive (at or after entry '%s'): %s; "
                              "nothing imported",
                              rd->path, rd->name, msg);
    return mood_error_set(MOOD_EFORMAT, "%s: not a readable .moodpack (tar + zstd): %s", rd->path,
                          msg);
}

static int has_dotdot(const char *name)
{
    for (const char *p = name; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        p += n;
        p += *p == '/';
    }
    return 0;
}

/* Everything that can be refused from the header alone. */
static int check_header(reader *rd, struct archive_entry *e, const char *name)
{
    mode_t type = archive_entry_filetype(e);
    if (name[0] == '/')
        return bad(rd, "absolute path");
    if (has_dotdot(name))
        return bad(rd, "path with a '..' component");
    if (archive_entry_hardlink(e))
        return bad(rd, "hard link (links are not allowed in a pack)");
    if (type == AE_IFLNK || archive_entry_symlink(e))
        return bad(rd, "symbolic link (links are not allowed in a pack)");
    if (type == AE_IFCHR || type == AE_IFBLK || type == AE_IFIFO || type == AE_IFSOCK)
        return bad(rd, "device file, FIFO or socket (only regular files are allowed)");
    if (type == AE_IFDIR || name[0] == '\0' || name[strlen(name) - 1] == '/')
        return bad(rd, "directory (only regular files are allowed)");
    if (type != AE_IFREG)
        return bad(rd, "not a regular file");
    if (archive_entry_sparse_count(e) > 0)
        return bad(rd, "sparse entry (not allowed: its size on disk is not its real size)");
    if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
        return bad(rd, "no size in its header");
    return 0;
}

/* Adds the header's size to the declared total and checks both limits. */
static int check_declared(reader *rd, uint64_t size, uint64_t entry_limit)
{
    char why[160];
    if (size > entry_limit) {
        snprintf(why, sizeof why, "declared size %llu bytes passes the limit of %llu per entry",
                 (unsigned long long)size, (unsigned long long)entry_limit);
        return bad(rd, why);
    }
    if (mood_add_u64(&rd->declared, rd->declared, size) != 0 || rd->declared > rd->lim->max_total) {
        snprintf(why, sizeof why, "declared sizes pass the limit of %llu bytes for the whole pack",
                 (unsigned long long)rd->lim->max_total);
        return bad(rd, why);
    }
    return 0;
}

/* Checks the running count after every chunk: headers can lie, decompressed bytes cannot. */
static int check_actual(reader *rd, uint64_t entry_bytes, uint64_t declared, uint64_t limit)
{
    char why[160];
    if (entry_bytes > declared) {
        snprintf(why, sizeof why, "holds more data than the %llu bytes its header declares",
                 (unsigned long long)declared);
        return bad(rd, why);
    }
    if (entry_bytes > limit || rd->actual > rd->lim->max_total) {
        snprintf(why, sizeof why, "uncompressed data passes the limit of %llu bytes",
                 (unsigned long long)(entry_bytes > limit ? limit : rd->lim->max_total));
        return bad(rd, why);
    }
    return 0;
}

/* Decompresses the current entry's data: into fd (may be -1) or mem (may be NULL), hashing it. */
static int read_data(reader *rd, int fd, mood_buf *mem, uint64_t declared, uint64_t limit,
                     char hex[65])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char digest[32];
    uint64_t n_entry = 0;
    int err = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return mood_error_nomem();
    }
    for (;;) {
        la_ssize_t n = archive_read_data(rd->a, rd->buf, CHUNK);
        if (n < 0) {
            err = corrupt(rd);
            break;
        }
        if (n == 0)
            break;
        n_entry += (uint64_t)n;
        rd->actual += (uint64_t)n;
        if ((err = check_actual(rd, n_entry, declared, limit)) != 0)
            break;
        EVP_DigestUpdate(md, rd->buf, (size_t)n);
        if (mem && (err = mood_buf_append(mem, rd->buf, (size_t)n)) != 0)
            break;
        for (la_ssize_t off = 0; fd >= 0 && off < n && !err;) {
            ssize_t w = write(fd, rd->buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                err = mood_error_set(
                    MOOD_EIO, "%s: cannot unpack %s into the registry's folder%s: %s", rd->path,
                    rd->name, errno == ENOSPC ? " (its disk is full)" : "", strerror(errno));
            else
                off += w;
        }
        if (err)
            break;
        rd->p.done = (uint64_t)archive_filter_bytes(rd->a, -1);
        if (rd->progress && rd->progress(&rd->p, rd->payload) != 0) {
            err = mood_error_set(MOOD_ECANCELLED, "%s: cancelled", rd->path);
            break;
        }
    }
    if (!err && n_entry != declared)
        err = bad(rd, "holds less data than its header declares (truncated)");
    if (!err) {
        static const char digits[] = "0123456789abcdef";
        EVP_DigestFinal_ex(md, digest, NULL);
        for (int i = 0; i < 32; i++) {
            hex[2 * i] = digits[digest[i] >> 4];
            hex[2 * i + 1] = digits[digest[i] & 15];
        }
        hex[64] = '\0';
    }
    EVP_MD_CTX_free(md);
    return err;
}

static int read_manifest(reader *rd, struct archive_entry *e, const char *name)
{
    mood_buf text;
    char hex[65];
    uint64_t size = (uint64_t)archive_entry_size(e);
    int err;
    if (strcmp(name, MOOD__PACK_MANIFEST) != 0)
        return bad(rd, "the first entry of a pack must be manifest.json");
    mood_buf_init(&text);
    if ((err = check_declared(rd, size, MOOD__PACK_MAX_MANIFEST)) == 0 &&
        (err = read_data(rd, -1, &text, size, MOOD__PACK_MAX_MANIFEST, hex)) == 0)
        err = mood__pack_manifest_parse(&rd->x->manifest, text.data ? text.data : "", text.len);
    if (!err && !(rd->x->paths = mood_calloc(rd->x->manifest.n_files + 1, sizeof(char *))))
        err = mood_error_nomem();
    if (!err && !(rd->got = mood_calloc(rd->x->manifest.n_files + 1, sizeof *rd->got)))
        err = mood_error_nomem();
    if (err && err != MOOD_ENOMEM && !strstr(mood_error_last(), rd->path))
        mood_error_prefix("%s", rd->path);
    mood_buf_dispose(&text);
    return err;
}

static int find_file(const mood__pack_manifest *m, const char *name)
{
    for (size_t i = 0; i < m->n_files; i++) {
        if (strcmp(m->files[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

static int extract_file(reader *rd, struct archive_entry *e, const char *name)
{
    const mood__pack_manifest *m = &rd->x->manifest;
    uint64_t size = (uint64_t)archive_entry_size(e);
    mood_buf path;
    char why[200];
    int idx = find_file(m, name), fd = -1, err;
    if (strcmp(name, MOOD__PACK_MANIFEST) == 0 || (idx >= 0 && rd->x->paths[idx]))
        return bad(rd, "duplicate entry");
    if (idx < 0)
        return bad(rd, "not listed in manifest.json");
    if (m->files[idx].has_size && m->files[idx].size != size) {
        snprintf(why, sizeof why, "its header says %llu bytes, manifest.json says %llu",
                 (unsigned long long)size, (unsigned long long)m->files[idx].size);
        return bad(rd, why);
    }
    if ((err = check_declared(rd, size, rd->lim->max_entry)) != 0)
        return err;
    mood_buf_init(&path);
    if ((err = mood_buf_printf(&path, "%s/%d", rd->x->dir, idx)) != 0)
        goto done;
    fd = open(path.data, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        err = mood_error_set(MOOD_EIO, "%s: cannot create: %s", path.data, strerror(errno));
        goto done;
    }
    rd->x->paths[idx] = mood_buf_detach(&path);
    err = read_data(rd, fd, NULL, size, rd->lim->max_entry, rd->got[idx]);
    if (!err && close(fd) != 0)
        err = mood_error_set(MOOD_EIO, "%s: cannot write: %s", rd->x->paths[idx], strerror(errno));
    else if (err)
        close(fd);
done:
    mood_buf_dispose(&path);
    return err;
}

/* After the last entry: every listed file present, every hash as the manifest says. */
static int verify_all(reader *rd)
{
    const mood__pack_manifest *m = &rd->x->manifest;
    char why[256];
    for (size_t i = 0; i < m->n_files; i++) {
        set_name(rd, m->files[i].name);
        if (!rd->x->paths[i])
            return bad(rd, "listed in manifest.json but missing from the archive");
        if (strcmp(rd->got[i], m->files[i].sha256) != 0) {
            snprintf(why, sizeof why, "SHA-256 %s does not match manifest.json's %s", rd->got[i],
                     m->files[i].sha256);
            return bad(rd, why);
        }
    }
    return 0;
}

static int read_entries(reader *rd)
{
    struct archive_entry *e;
    int err = 0, rc;
    while (!err) {
        const char *name;
        rc = archive_read_next_header(rd->a, &e);
        if (rc == ARCHIVE_EOF)
            break;
        if (rc != ARCHIVE_OK)
            return corrupt(rd);
        name = archive_entry_pathname(e);
        set_name(rd, name ? name : "(no name)");
        if (!name)
            return bad(rd, "entry without a name");
        if (++rd->entries > rd->lim->max_entries)
            return bad(rd, "too many entries");
        if ((err = check_header(rd, e, name)) != 0)
            break;
        if (rd->entries == 1)
            err = read_manifest(rd, e, name);
        else
            err = extract_file(rd, e, name);
    }
    if (!err && rd->entries == 0)
        err = mood_error_set(MOOD_EFORMAT, "%s: empty archive (no manifest.json)", rd->path);
    if (!err)
        err = verify_all(rd);
    return err;
}

static int open_reader(reader *rd, const char *dest_dir)
{
    mood_buf dir;
    mood_map map;
    struct stat st;
    int err = 0;
    /* Opened once, without blocking, and checked on the descriptor libarchive then reads: a FIFO,
     * folder, device or socket is the wrong input, and a name checked then opened again could
     * have become one in between (libarchive would wait for a FIFO's writer forever). */
    rd->fd = open(rd->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (rd->fd < 0 || fstat(rd->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        /* mood_map_file says what is wrong as for every file a user names (MOOD_EINVAL saying
         * which kind of file, MOOD_ENOTFOUND for a missing one) */
        if ((err = mood_map_file(&map, rd->path)) == 0) {
            mood_unmap(&map);
            err = mood_error_set(MOOD_EIO, "%s: cannot open: %s", rd->path, strerror(errno));
        }
        return err;
    }
    fcntl(rd->fd, F_SETFL, fcntl(rd->fd, F_GETFL) & ~O_NONBLOCK);
    rd->p.total = (uint64_t)st.st_size;
    if ((err = mood__archive_load()) != 0)
        return err;
    if (!(rd->buf = mood_malloc(CHUNK)) || !(rd->a = archive_read_new()))
        return mood_error_nomem();
    archive_read_support_filter_zstd(rd->a);
    archive_read_support_format_tar(rd->a);
    if (archive_read_open_fd(rd->a, rd->fd, 1 << 16) != ARCHIVE_OK)
        return corrupt(rd);
    mood_buf_init(&dir);
    if ((err = mood_buf_printf(&dir, "%s/" STALE_PREFIX "%ld-XXXXXX", dest_dir, (long)getpid())) ==
        0) {
        if (mkdtemp(dir.data))
            rd->x->dir = mood_buf_detach(&dir);
        else
            err = mood_error_set(errno == ENOENT ? MOOD_ENOTFOUND : MOOD_EIO,
                                 "%s: cannot create a temporary directory: %s", dest_dir,
                                 strerror(errno));
    }
    mood_buf_dispose(&dir);
    return err;
}

int mood__pack_read(mood__pack_extract *out, const char *path, const char *dest_dir,
                    const mood__pack_limits *limits, mood_progress_fn progress, void *payload)
{
    mood__pack_limits defaults;
    reader rd;
    int err;
    memset(out, 0, sizeof *out);
    memset(&rd, 0, sizeof rd);
    rd.fd = -1;
    if (!limits) {
        mood__pack_limits_init(&defaults);
        limits = &defaults;
    }
    rd.path = path;
    rd.lim = limits;
    rd.x = out;
    rd.progress = progress;
    rd.payload = payload;
    rd.p.phase = "reading the pack";
    mood_remove_dead_temp_dirs(dest_dir, STALE_PREFIX);
    if ((err = open_reader(&rd, dest_dir)) == 0)
        err = read_entries(&rd);
    if (rd.a)
        archive_read_free(rd.a);
    if (rd.fd >= 0)
        close(rd.fd);
    mood_free(rd.buf);
    mood_free(rd.got);
    if (err)
        mood__pack_extract_dispose(out);
    return err;
}

void mood__pack_extract_dispose(mood__pack_extract *x)
{
    for (size_t i = 0; x->paths && i < x->manifest.n_files; i++) {
        if (x->paths[i])
            unlink(x->paths[i]);
        mood_free(x->paths[i]);
    }
    if (x->dir)
        rmdir(x->dir);
    mood_free(x->paths);
    mood_free(x->dir);
    mood__pack_manifest_dispose(&x->manifest);
    memset(x, 0, sizeof *x);
}
