/*
 * import_extras.c: what a caller such as `mood train` hands an import besides the LoRA file
 * (mood_import_extras): previews, files of other roles (the mood board's thumbnails, the loss
 * curve) and the training record. They are checked before anything is stored, stored as blobs
 * under the import's shared lock, and recorded in the import's transaction.
 */
#include <string.h>

#include <cjson/cJSON.h>

#include "common/args.h"
#include "registry/registry_impl.h"

#define MAX_EXTRA_PREVIEWS 64
#define MAX_EXTRA_FILES    1024

static int role_ok(const char *role)
{
    size_t n = role ? strlen(role) : 0;
    return n >= 1 && n <= 32 && strspn(role, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

static int check_file(const mood_style_file *f, const char *what, size_t i, int need_role)
{
    if (!f->data || f->size == 0 || f->size > MOOD__REG_MAX_PREVIEW)
        return mood_error_set(MOOD_EINVAL, "%s %zu (%s): empty or over %u MiB", what, i,
                              f->name ? f->name : "unnamed", MOOD__REG_MAX_PREVIEW >> 20);
    if (need_role && !role_ok(f->role))
        return mood_error_set(MOOD_EINVAL,
                              "%s %zu (%s): role '%s' is not 1-32 characters of a-z, 0-9, '_'",
                              what, i, f->name ? f->name : "unnamed", f->role ? f->role : "");
    if (f->width < 0 || f->height < 0)
        return mood_error_set(MOOD_EINVAL, "%s %zu: negative size", what, i);
    return 0;
}

int mood__reg_check_extras(const mood_import_extras *x)
{
    cJSON *t;
    int err = 0;
    if (!x)
        return 0;
    if (x->n_previews > MAX_EXTRA_PREVIEWS || x->n_files > MAX_EXTRA_FILES ||
        (x->n_previews && !x->previews) || (x->n_files && !x->files))
        return mood_error_set(MOOD_EINVAL, "import extras: at most %d previews and %d files",
                              MAX_EXTRA_PREVIEWS, MAX_EXTRA_FILES);
    for (size_t i = 0; i < x->n_previews && !err; i++)
        err = check_file(&x->previews[i], "preview", i, 0);
    for (size_t i = 0; i < x->n_files && !err; i++)
        err = check_file(&x->files[i], "file", i, 1);
    if (err || !x->training_json)
        return err;
    t = cJSON_Parse(x->training_json);
    if (!cJSON_IsObject(t))
        err =
            mood_error_set(MOOD_EINVAL, "import extras: the training record is not a JSON object");
    cJSON_Delete(t);
    return err;
}

int mood__reg_store_extras(mood_registry *r, const mood_import_extras *x, mood__blob_tx **extra,
                           size_t *n_extra)
{
    size_t n = x ? x->n_previews + x->n_files : 0;
    int err = 0;
    if (!n)
        return 0;
    if (!(*extra = mood_calloc(n, sizeof **extra)))
        return mood_error_nomem();
    for (size_t i = 0; i < n && !err; i++) {
        const mood_style_file *f =
            i < x->n_previews ? &x->previews[i] : &x->files[i - x->n_previews];
        if ((err = mood__blob_put_mem(&(*extra)[i], r, f->data, f->size)) == 0)
            (*n_extra)++;
    }
    return err;
}

static int insert_extra_file(mood_registry *r, const mood_style_file *f, const char *sha,
                             long long style_id, int position)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st,
                                "INSERT INTO style_files(style_id, role, blob_sha256, media_type,"
                                " name, width, height, position) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
                                " ?7, ?8)");
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, style_id);
    mood__reg_bind_text(st, 2, f->role);
    mood__reg_bind_text(st, 3, sha);
    mood__reg_bind_text(st, 4, f->media_type);
    mood__reg_bind_utf8(st, 5, f->name);
    if (f->width > 0 && f->height > 0) {
        sqlite3_bind_int(st, 6, f->width);
        sqlite3_bind_int(st, 7, f->height);
    }
    sqlite3_bind_int(st, 8, position);
    return mood__reg_step_done(r, st, "storing a file of the style");
}

int mood__reg_insert_preview(mood_registry *r, long long style_id, const char *sha256,
                             const char *media_type, const char *origin, int position)
{
    sqlite3_stmt *st = NULL;
    int err = mood__reg_prepare(r, &st,
                                "INSERT INTO previews(style_id, blob_sha256, media_type, origin,"
                                " position) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, style_id);
    mood__reg_bind_text(st, 2, sha256);
    mood__reg_bind_text(st, 3, media_type);
    mood__reg_bind_utf8(st, 4, origin);
    sqlite3_bind_int(st, 5, position);
    return mood__reg_step_done(r, st, "storing a preview");
}

int mood__reg_insert_extras(mood_registry *r, const mood_import_extras *x,
                            const mood__blob_tx *extra, long long style_id)
{
    int err = 0;
    if (!x)
        return 0;
    for (size_t i = 0; i < x->n_previews && !err; i++)
        err = mood__reg_insert_preview(r, style_id, extra[i].sha256, x->previews[i].media_type,
                                       x->previews[i].name, (int)i);
    for (size_t i = 0; i < x->n_files && !err; i++) {
        int position = 0;
        for (size_t k = 0; k < i; k++)
            position += strcmp(x->files[k].role, x->files[i].role) == 0;
        err =
            insert_extra_file(r, &x->files[i], extra[x->n_previews + i].sha256, style_id, position);
    }
    return err;
}
