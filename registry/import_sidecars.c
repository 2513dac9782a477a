/*
 * import_sidecars.c: the sidecars other LoRA managers write beside a LoRA, read for `mood import`
 * (import.c): A1111's NAME.json, Civitai Helper's NAME.civitai.info, ComfyUI-Lora-Manager's
 * NAME.metadata.json, StabilityMatrix's NAME.cm-info.json and NAME.txt (what each gives, and
 * which wins, is described at the top of import.c). A sidecar is read only when it is a regular
 * file really in the LoRA's folder; one that is damaged, too large or not UTF-8 is warned about
 * and the import goes on.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/args.h"
#include "registry/import_impl.h"

static const char *const rec_suffix[N_REC] = {".civitai.info", ".metadata.json", ".cm-info.json"};

/* ----- sidecars ---------------------------------------------------------------------------- */

/* The LoRA's folder (where the path given says it is) with every link resolved. */
static int lora_folder(import_job *j)
{
    const char *slash = strrchr(j->path, '/');
    char *dir;
    int err = 0;
    if (j->folder[0])
        return 0;
    dir = !slash             ? mood_strdup(".")
          : slash == j->path ? mood_strdup("/")
                             : mood_strndup(j->path, (size_t)(slash - j->path));
    if (!dir)
        return mood_error_nomem();
    if (!realpath(dir, j->folder)) {
        err = mood_error_set(MOOD_EIO, "%s: cannot resolve the LoRA's folder: %s", dir,
                             strerror(errno));
        j->folder[0] = '\0';
    }
    mood_free(dir);
    return err;
}

/* Whether the resolved path `real` lies in `folder` (resolved too) or below it. */
static int inside(const char *real, const char *folder)
{
    size_t n = strlen(folder);
    return strncmp(real, folder, n) == 0 && (real[n] == '/' || folder[n - 1] == '/');
}

/* Maps the sidecar at path when there is one that may be read: *found 0 and m left empty when
 * there is none (a dangling link included) or when it is left out with a warning: a link to a
 * file outside the LoRA's folder, or not a regular file (a named pipe would block the read). */
int mood__import_sidecar_map(import_job *j, mood_map *m, int *found, const char *path)
{
    char real[PATH_MAX];
    struct stat st;
    int err;
    *found = 0;
    if (lstat(path, &st) != 0)
        return 0;
    if (!realpath(path, real)) {
        if (errno != ENOENT)
            mood_log(MOOD_LOG_WARN, "%s" SKIPPED "%s", path, strerror(errno));
        return 0;
    }
    if ((err = lora_folder(j)) != 0)
        return err;
    if (!inside(real, j->folder)) {
        mood_log(MOOD_LOG_WARN, "%s" SKIPPED "a link to %s, outside the LoRA's folder", path, real);
        return 0;
    }
    if (stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
        mood_log(MOOD_LOG_WARN, "%s" SKIPPED "not a regular file", path);
        return 0;
    }
    /* the resolved path: what was checked is what is read */
    if ((err = mood_map_file(m, real)) != 0)
        return err;
    *found = 1;
    return 0;
}

/* Reads stem+suffix when there is one to read (NULL otherwise). One over the size limit is left
 * out with a warning, as a malformed one is: it is another tool's file, and the LoRA itself is
 * still good. */
static int read_text(char **out, import_job *j, const char *suffix)
{
    mood_buf p;
    mood_map m = {0};
    int err, found = 0;
    *out = NULL;
    mood_buf_init(&p);
    if ((err = mood_buf_printf(&p, "%s%s", j->stem_path, suffix)) != 0 ||
        (err = mood__import_sidecar_map(j, &m, &found, p.data)) != 0 || !found)
        goto done;
    if (m.size > MAX_SIDECAR)
        mood_log(MOOD_LOG_WARN, "%s" SKIPPED "%g MB, more than the %u MB limit", p.data,
                 ceil((double)m.size / (1 << 20) * 10) / 10, MAX_SIDECAR >> 20);
    else if (!(*out = mood_strndup(m.data ? (const char *)m.data : "", (size_t)m.size)))
        err = mood_error_nomem();
done:
    mood_unmap(&m);
    mood_buf_dispose(&p);
    return err;
}

const char *mood__import_jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

/* A Civitai id of a record: a whole number from 1 (JSON's exact integers); anything else in
 * another tool's file (-5, 1e30, 2.5) is no id, 0. */
long long mood__import_json_id(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= 9007199254740992.0) ||
        v->valuedouble != floor(v->valuedouble))
        return 0;
    return (long long)v->valuedouble;
}

/* Appends comma-separated words to list, skipping ones already in it (case-insensitive). */
static int add_triggers(mood_buf *list, const char *words)
{
    int err = 0;
    char *copy, *save = NULL;
    if (!words || !(copy = mood_strdup(words)))
        return words ? mood_error_nomem() : 0;
    for (char *w = strtok_r(copy, ",\n", &save); w && !err; w = strtok_r(NULL, ",\n", &save)) {
        char *end;
        while (isspace((unsigned char)*w))
            w++;
        end = w + strlen(w);
        while (end > w && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (!*w)
            continue;
        int dup = 0;
        for (const char *s = list->data; s && *s && !dup;) {
            size_t n = strcspn(s, ",");
            dup = n == strlen(w) && strncasecmp(s, w, n) == 0;
            s += n;
            s += strspn(s, ", ");
        }
        if (!dup)
            err = mood_buf_printf(list, "%s%s", list->len ? ", " : "", w);
    }
    mood_free(copy);
    return err;
}

/* A damaged sidecar is another tool's file: it is reported (log) and left out, and the LoRA is
 * imported without it. */
static void parse_sidecar_json(cJSON **out, char **raw, const char *stem, const char *suffix)
{
    *out = NULL;
    if (!*raw)
        return;
    if (!(*out = cJSON_Parse(*raw)) || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        mood_free(*raw);
        *raw = NULL;
        mood_log(MOOD_LOG_WARN, "%s%s" SKIPPED "not a JSON object", stem, suffix);
    }
}

/* Sidecars made on Windows are often Windows-1252 (or carry a UTF-8 byte-order mark): their
 * text is stored and reported as UTF-8, so it is converted before anything reads it. */
static int sidecar_utf8(char **text, const char *stem, const char *suffix)
{
    int converted = 0, err = mood__reg_utf8_in_place(text, &converted);
    if (!err && converted)
        mood_log(MOOD_LOG_WARN, "%s%s: not UTF-8; read as Windows-1252 (Latin-1)", stem, suffix);
    return err;
}

/* The style's trigger words from the sidecars and the file's metadata (read_sidecars). */
static int collect_triggers(import_job *j)
{
    sidecars *s = &j->side;
    const char *trigger_phrase = s->trigger_phrase;
    const cJSON *words;
    int err;
    mood_buf_dispose(&s->triggers);
    mood_buf_init(&s->triggers);
    if ((err = add_triggers(&s->triggers, mood__import_jstr(s->a1111, "activation text"))) != 0)
        return err;
    for (int i = 0; i < N_REC; i++) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(s->rec[i].version, "trainedWords");
        /* Civitai's is a list; a tool that wrote one string of words means the same */
        if (cJSON_IsString(list) && (err = add_triggers(&s->triggers, list->valuestring)) != 0)
            return err;
        cJSON_ArrayForEach(words, list) /* nothing for a string: it has no items */
        {
            if (cJSON_IsString(words) &&
                (err = add_triggers(&s->triggers, words->valuestring)) != 0)
                return err;
        }
    }
    if ((err = add_triggers(&s->triggers, s->txt)) != 0 ||
        (err = add_triggers(&s->triggers, trigger_phrase)) != 0)
        return err;
    /* guessed from the tags only when nothing says; an empty modelspec.trigger_phrase says none */
    if (s->triggers.len == 0 && !(trigger_phrase && !*trigger_phrase))
        err = add_triggers(&s->triggers, j->facts.top_tags.data);
    return err;
}

/* Copies from[key] to to[to_key] when it is there with the type `is` accepts. */
static int copy_item(cJSON *to, const char *to_key, const cJSON *from, const char *key,
                     cJSON_bool (*is)(const cJSON *))
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(from, key);
    cJSON *dup;
    if (!v || !is(v))
        return 0;
    if (!(dup = cJSON_Duplicate(v, 1)) || !cJSON_AddItemToObject(to, to_key, dup)) {
        cJSON_Delete(dup);
        return mood_error_nomem();
    }
    return 0;
}

/* Trigger words as Civitai writes them (a list) or as one string of words (collect_triggers). */
static cJSON_bool is_words(const cJSON *v)
{
    return cJSON_IsArray(v) || cJSON_IsString(v);
}

/* A StabilityMatrix .cm-info.json (ConnectedModelInfo, its properties as C# names them) in the
 * shape of Civitai's version JSON, so that one path reads the records of all three tools. */
static int cm_info_version(cJSON **out, const cJSON *sm)
{
    /* each part made inside its parent: one failure frees all with v */
    cJSON *v = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(v, "model"),
          *files = cJSON_AddArrayToObject(v, "files"), *file = cJSON_CreateObject(), *hashes = NULL;
    int err;
    if (!cJSON_AddItemToArray(files, file)) {
        cJSON_Delete(file);
        file = NULL;
    }
    if (!model || !(hashes = cJSON_AddObjectToObject(file, "hashes"))) {
        cJSON_Delete(v);
        return mood_error_nomem();
    }
    if ((err = copy_item(v, "id", sm, "VersionId", cJSON_IsNumber)) != 0 ||
        (err = copy_item(v, "modelId", sm, "ModelId", cJSON_IsNumber)) != 0 ||
        (err = copy_item(v, "name", sm, "VersionName", cJSON_IsString)) != 0 ||
        (err = copy_item(v, "baseModel", sm, "BaseModel", cJSON_IsString)) != 0 ||
        (err = copy_item(v, "description", sm, "VersionDescription", cJSON_IsString)) != 0 ||
        (err = copy_item(v, "trainedWords", sm, "TrainedWords", is_words)) != 0 ||
        (err = copy_item(model, "name", sm, "ModelName", cJSON_IsString)) != 0 ||
        (err = copy_item(model, "type", sm, "ModelType", cJSON_IsString)) != 0 ||
        (err = copy_item(model, "nsfw", sm, "Nsfw", cJSON_IsBool)) != 0 ||
        (err = copy_item(model, "description", sm, "ModelDescription", cJSON_IsString)) != 0 ||
        (err = copy_item(hashes, "SHA256", cJSON_GetObjectItemCaseSensitive(sm, "Hashes"), "SHA256",
                         cJSON_IsString)) != 0) {
        cJSON_Delete(v);
        return err;
    }
    *out = v;
    return 0;
}

/* Reads one of the sidecars that may carry a Civitai record (rec_suffix[i]). */
static int read_record(import_job *j, int i)
{
    record_sidecar *rs = &j->side.rec[i];
    int err;
    if ((err = read_text(&rs->raw, j, rec_suffix[i])) != 0 ||
        (err = sidecar_utf8(&rs->raw, j->stem_path, rec_suffix[i])) != 0)
        return err;
    parse_sidecar_json(&rs->file, &rs->raw, j->stem_path, rec_suffix[i]);
    if (!rs->file)
        return 0;
    if (i == REC_SM) {
        if ((err = cm_info_version(&rs->made, rs->file)) != 0)
            return err;
        rs->version = rs->made;
    } else {
        /* Lora Manager keeps Civitai's version JSON under "civitai" ({} when it has none) */
        rs->version =
            i == REC_INFO ? rs->file : cJSON_GetObjectItemCaseSensitive(rs->file, "civitai");
        if (!cJSON_IsObject(rs->version))
            rs->version = NULL;
    }
    j->side.count++;
    return 0;
}

void mood__import_drop_record(record_sidecar *rs)
{
    cJSON_Delete(rs->file);
    cJSON_Delete(rs->made);
    mood_free(rs->raw);
    memset(rs, 0, sizeof *rs);
}

/* The record stored with the source: the first sidecar's (rec_suffix order) whose record has a
 * version id, else the first one read. */
static void choose_record(sidecars *s)
{
    s->record = NULL;
    for (int i = N_REC - 1; i >= 0; i--) {
        if (s->rec[i].file && (!s->record || mood__import_json_id(s->rec[i].version, "id") ||
                               !mood__import_json_id(s->record->version, "id")))
            s->record = &s->rec[i];
    }
}

int mood__import_read_sidecars(import_job *j)
{
    sidecars *s = &j->side;
    int err;
    if ((err = read_text(&s->a1111_raw, j, ".json")) != 0 ||
        (err = sidecar_utf8(&s->a1111_raw, j->stem_path, ".json")) != 0)
        return err;
    parse_sidecar_json(&s->a1111, &s->a1111_raw, j->stem_path, ".json");
    s->count = !!s->a1111;
    for (int i = 0; i < N_REC; i++) {
        if ((err = read_record(j, i)) != 0)
            return err;
    }
    if ((err = read_text(&s->txt, j, ".txt")) != 0 ||
        (err = sidecar_utf8(&s->txt, j->stem_path, ".txt")) != 0)
        return err;
    s->count += !!s->txt;
    choose_record(s);
    return collect_triggers(j);
}

/* A Civitai record (.civitai.info, and the same in a .metadata.json or .cm-info.json) is the
 * record of one Civitai file: when it lists its files' SHA-256 and none is this file's, it
 * describes another file (a LoRA replaced by another version, or renamed over another's
 * sidecars), and its ids, trigger words and licence would be recorded against the wrong LoRA:
 * the sidecar is left out with a warning, and the trigger words are collected again. */
static int check_record(import_job *j, int i)
{
    record_sidecar *rs = &j->side.rec[i];
    const cJSON *f, *listed = NULL;
    const cJSON *own = i == REC_LM ? cJSON_GetObjectItemCaseSensitive(rs->file, "sha256") : NULL;
    /* Lora Manager's own hash of the file it describes decides, when it gives one */
    if (cJSON_IsString(own) && *own->valuestring) {
        if (strcasecmp(own->valuestring, j->h.sha256) == 0)
            return 0;
        listed = own;
    }
    const cJSON *files = listed ? NULL : cJSON_GetObjectItemCaseSensitive(rs->version, "files");
    cJSON_ArrayForEach(f, files)
    {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(f, "hashes"), "SHA256");
        if (!cJSON_IsString(h))
            continue;
        if (strcasecmp(h->valuestring, j->h.sha256) == 0)
            return 0;
        listed = listed ? listed : h;
    }
    if (!listed)
        return 0;
    mood_log(MOOD_LOG_WARN,
             "%s%s" SKIPPED "it describes another file (Civitai's SHA-256 %.12s..., this "
             "file's %.12s...): the LoRA was replaced or renamed; 'mood civitai link' looks this "
             "one up",
             j->stem_path, rec_suffix[i], listed->valuestring, j->h.sha256);
    mood__import_drop_record(rs);
    j->side.count--;
    return 1;
}

int mood__import_check_records(import_job *j)
{
    int dropped = 0;
    for (int i = 0; i < N_REC; i++)
        dropped |= check_record(j, i);
    if (!dropped)
        return 0;
    choose_record(&j->side);
    return collect_triggers(j);
}
