/*
 * cmd_inspect.c: `mood inspect FILE [--json]`: what a safetensors file is and what it holds.
 *
 * For an adapter (LoRA, LoCon, LyCORIS, DoRA, diffusers/PEFT): algorithms, base family and how it
 * was decided, ranks, alphas, modules per model part, DoRA/Tucker use, dtypes, keys mood could not
 * place, a summary of the training metadata (kohya ss_*, modelspec.*, most frequent training
 * tags) and the hashes A1111/Civitai use. For a checkpoint: family, tensors per part, dtypes,
 * parameter count, metadata size and hashes. Human output and --json carry the same facts; the
 * human one shows the control characters of the file's own text (metadata, tensor names) as
 * escapes (cli_text.h), so that a downloaded file cannot drive the terminal.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "mood/registry.h"
#include "cli/cli_text.h"

const char cmd_inspect_help[] =
    "usage: mood inspect FILE [--json] [--no-hash]\n\n"
    "Describes a safetensors file: a LoRA-style adapter (kohya LoRA/LoCon, LyCORIS LoHa/LoKr/\n"
    "IA3/OFT/BOFT/GLoRA/full/norm, DoRA, diffusers/PEFT) or a single-file checkpoint.\n\n"
    "For an adapter it shows the algorithms, the base family it is made for (sd1, sd2, sdxl)\n"
    "and how that was decided, ranks and alphas, modules per part (unet, te1, te2), DoRA and\n"
    "Tucker use, dtypes, keys that match no module, the training metadata (name, base model,\n"
    "resolution, steps, epochs, network settings, the most frequent training tags, which are\n"
    "usually the trigger words) and the hashes Civitai and A1111 use (AutoV3 identifies LoRAs).\n"
    "For a checkpoint it shows the family, tensors per part, dtypes, parameter count, number of\n"
    "metadata entries and the hashes (AutoV2 identifies checkpoints).\n\n"
    "  --no-hash skip the hashes (they read the whole file: the slow part on big files)\n"
    "  --json    print a JSON object instead. Fields:\n"
    "            file, size, kind (\"adapter\" or \"checkpoint\"), family, hashes {sha256, "
    "autov2,\n"
    "            autov3, autov1, sshs_model_hash, sshs_model_hash_status}, tensors, dtypes\n"
    "            {DTYPE: tensor count}; adapters: family_source, modules, algorithms {algo:\n"
    "            modules}, parts {unet, te1, te2}, ranks [distinct], rank_min, rank_max, alphas\n"
    "            [distinct], dora (modules with DoRA), dora_per_input (of those, per-input norm),\n"
    "            tucker (modules), unmatched {count, keys (first 20), groups {prefix: count}},\n"
    "            metadata {output_name, base_model_version, architecture, title, resolution,\n"
    "            steps, epochs, network_module, network_dim, network_alpha, network_args,\n"
    "            trigger_phrase, sshs_model_hash} (steps, epochs, network_dim and\n"
    "            network_alpha as numbers; kohya's \"Dynamic\" as text), dylora (true for a\n"
    "            DyLoRA: gen's dyn=N cuts it to its first N ranks), trigger_words [{tag,\n"
    "            count}] (top 10 of ss_tag_frequency); checkpoints: parts {unet, te1, te2,\n"
    "            other}, parameters, metadata_keys, inpainting (true for an inpainting\n"
    "            model, whose UNet also takes a mask and the masked picture).\n\n"
    "Exit status: 0 ok, 1 not a usable safetensors file, 2 missing/unreadable file.\n";

#define MAX_DISTINCT 4096 /* more than any adapter has modules */

/* Everything inspect reports about an adapter, gathered once for both outputs. */
typedef struct summary {
    size_t algos[MOOD_ALGO_COUNT], parts[MOOD_PART_COUNT], dora, dora_in, tucker;
    int ranks[MAX_DISTINCT];
    size_t n_ranks;
    double alphas[MAX_DISTINCT];
    size_t n_alphas;
    size_t dtypes[MOOD_DTYPE_COUNT];
    uint64_t params;
} summary;

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void add_distinct_int(int *v, size_t *n, int x)
{
    for (size_t i = 0; i < *n; i++) {
        if (v[i] == x)
            return;
    }
    if (*n < MAX_DISTINCT)
        v[(*n)++] = x;
}

static void add_distinct_double(double *v, size_t *n, double x)
{
    for (size_t i = 0; i < *n; i++) {
        if (v[i] == x)
            return;
    }
    if (*n < MAX_DISTINCT)
        v[(*n)++] = x;
}

static void count_tensors(summary *s, const mood_st_file *f)
{
    for (size_t i = 0; i < mood_st_count(f); i++) {
        const mood_st_tensor *t = mood_st_at(f, i);
        s->dtypes[t->dtype]++;
        s->params += (uint64_t)mood_st_numel(t);
    }
}

static void summarize(summary *s, const mood_adapter *a)
{
    memset(s, 0, sizeof *s);
    for (size_t i = 0; i < mood_adapter_module_count(a); i++) {
        mood_module_info m;
        mood_adapter_module(a, i, &m);
        s->algos[m.algo]++;
        s->parts[m.part]++;
        s->dora += m.dora != 0;
        s->dora_in += m.dora == 1;
        s->tucker += m.tucker != 0;
        if (m.rank > 0)
            add_distinct_int(s->ranks, &s->n_ranks, m.rank);
        if (m.has_alpha)
            add_distinct_double(s->alphas, &s->n_alphas, m.alpha);
    }
    qsort(s->ranks, s->n_ranks, sizeof s->ranks[0], cmp_int);
    qsort(s->alphas, s->n_alphas, sizeof s->alphas[0], cmp_double);
    count_tensors(s, mood_adapter_file(a));
}

/* ----- unmatched keys, grouped by their first component ----------------------------------- */

static size_t group_len(const char *key)
{
    static const char *const flat[] = {"lora_", "lycoris_", "oft_"};
    const char *dot = strchr(key, '.');
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(flat[i]);
        const char *us;
        if (strncmp(key, flat[i], k) == 0 && (us = strchr(key + k, '_')) && (!dot || us < dot))
            return (size_t)(us - key) + 1;
    }
    return dot ? (size_t)(dot - key) + 1 : strlen(key);
}

/* {prefix: count} in first-seen order. */
static cJSON *unmatched_groups(const mood_adapter *a)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < mood_adapter_unmatched_count(a); i++) {
        const char *key = mood_adapter_unmatched(a, i);
        char prefix[256];
        cJSON *n;
        snprintf(prefix, sizeof prefix, "%.*s", (int)group_len(key), key);
        if ((n = cJSON_GetObjectItemCaseSensitive(o, prefix)) != NULL)
            cJSON_SetNumberValue(n, n->valuedouble + 1);
        else
            cJSON_AddNumberToObject(o, prefix, 1);
    }
    return o;
}

/* ----- training tags ----------------------------------------------------------------------- */

typedef struct tag_count {
    const char *tag;
    double count;
} tag_count;

static int cmp_tag_name(const void *a, const void *b)
{
    return strcmp(((const tag_count *)a)->tag, ((const tag_count *)b)->tag);
}

static int cmp_tag_count(const void *a, const void *b)
{
    const tag_count *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return strcmp(x->tag, y->tag);
}

/* All (tag, count) pairs of ss_tag_frequency ({dir: {tag: count}}); NULL when none. */
static tag_count *collect_tags(const cJSON *root, size_t *n_out)
{
    const cJSON *dir, *tag;
    size_t n = 0;
    tag_count *tags;
    cJSON_ArrayForEach(dir, root)
    {
        cJSON_ArrayForEach(tag, dir) n++;
    }
    *n_out = 0;
    if (!n || !(tags = malloc(n * sizeof *tags)))
        return NULL;
    cJSON_ArrayForEach(dir, root)
    {
        cJSON_ArrayForEach(tag, dir)
        {
            if (cJSON_IsNumber(tag) && tag->string)
                tags[(*n_out)++] = (tag_count){tag->string, tag->valuedouble};
        }
    }
    return tags;
}

/* Top 10 tags, counts summed over the dataset folders. */
static cJSON *trigger_words(const mood_st_file *f)
{
    const char *json = mood_st_meta_get(f, "ss_tag_frequency");
    cJSON *root = json ? cJSON_Parse(json) : NULL, *out = cJSON_CreateArray();
    size_t n = 0, m = 0;
    tag_count *tags = collect_tags(root, &n);
    if (!tags)
        n = 0;
    else
        qsort(tags, n, sizeof *tags, cmp_tag_name);
    for (size_t i = 0; i < n; i++) { /* merge equal tags */
        if (m > 0 && strcmp(tags[m - 1].tag, tags[i].tag) == 0)
            tags[m - 1].count += tags[i].count;
        else
            tags[m++] = tags[i];
    }
    if (tags)
        qsort(tags, m, sizeof *tags, cmp_tag_count);
    for (size_t i = 0; i < m && i < 10; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "tag", tags[i].tag);
        cJSON_AddNumberToObject(t, "count", tags[i].count);
        cJSON_AddItemToArray(out, t);
    }
    free(tags);
    cJSON_Delete(root);
    return out;
}

/* ----- metadata and hashes ----------------------------------------------------------------- */

static void add_meta(cJSON *o, const mood_st_file *f, const char *field, const char *key,
                     const char *fallback)
{
    const char *v = mood_st_meta_get(f, key);
    if (!v && fallback)
        v = mood_st_meta_get(f, fallback);
    if (v && *v && strcmp(v, "None") != 0)
        cJSON_AddStringToObject(o, field, v);
}

/* A count or size from the metadata as a JSON number when it is one ("4", "2.0"); kohya's
 * "Dynamic" (ranks or alphas that differ by layer) and other words stay text. */
static void add_meta_number(cJSON *o, const mood_st_file *f, const char *field, const char *key,
                            const char *fallback)
{
    const char *v = mood_st_meta_get(f, key);
    char *end = NULL;
    double d;
    if (!v && fallback)
        v = mood_st_meta_get(f, fallback);
    if (!v || !*v || strcmp(v, "None") == 0)
        return;
    d = strtod(v, &end);
    if (*end == '\0' && isfinite(d))
        cJSON_AddNumberToObject(o, field, d);
    else
        cJSON_AddStringToObject(o, field, v);
}

static cJSON *metadata_summary(const mood_st_file *f)
{
    cJSON *o = cJSON_CreateObject();
    add_meta(o, f, "output_name", "ss_output_name", NULL);
    add_meta(o, f, "base_model_version", "ss_base_model_version", NULL);
    add_meta(o, f, "architecture", "modelspec.architecture", NULL);
    add_meta(o, f, "title", "modelspec.title", NULL);
    add_meta(o, f, "resolution", "ss_resolution", "modelspec.resolution");
    add_meta_number(o, f, "steps", "ss_steps", "ss_max_train_steps");
    add_meta_number(o, f, "epochs", "ss_epoch", "ss_num_epochs");
    add_meta(o, f, "network_module", "ss_network_module", NULL);
    add_meta_number(o, f, "network_dim", "ss_network_dim", NULL);
    add_meta_number(o, f, "network_alpha", "ss_network_alpha", NULL);
    add_meta(o, f, "network_args", "ss_network_args", NULL);
    add_meta(o, f, "trigger_phrase", "modelspec.trigger_phrase", NULL);
    add_meta(o, f, "sshs_model_hash", "sshs_model_hash", NULL);
    return o;
}

/* kohya's networks.dylora, or LyCORIS's algo dylora (its network args: {"algo": "dylora", ...}
 * or algo=dylora), from the metadata summary. */
static int is_dylora(const cJSON *meta)
{
    const char *module =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(meta, "network_module"));
    const char *args = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(meta, "network_args"));
    return (module && strstr(module, "dylora")) ||
           (args && (strstr(args, "\"dylora\"") || strstr(args, "=dylora")));
}

/* Hashing reads the whole file while parsing reads the header and the factors: the two run in
 * parallel (the hash on its own thread) so that inspect costs about the longer of the two. */
typedef struct hash_job {
    const char *path;
    mood_file_hashes h;
    int err;
} hash_job;

static void *hash_thread(void *arg)
{
    hash_job *job = arg;
    /* CRC-32 is left to `mood hash`: it is a weak id Civitai shows but never looks up by */
    job->err = mood_hash_file_ex(&job->h, job->path, MOOD_HASH_SKIP_CRC32, NULL, NULL);
    return NULL;
}

static void add_hashes(cJSON *o, const mood_file_hashes *hp)
{
    const mood_file_hashes h = *hp;
    char autov2[11];
    cJSON *j = cJSON_AddObjectToObject(o, "hashes");
    snprintf(autov2, sizeof autov2, "%.10s", h.sha256);
    cJSON_AddStringToObject(j, "sha256", h.sha256);
    cJSON_AddStringToObject(j, "autov2", autov2);
    if (h.is_safetensors)
        cJSON_AddStringToObject(j, "autov3", h.autov3);
    cJSON_AddStringToObject(j, "autov1", h.autov1);
    if (h.sshs_model_hash[0]) {
        const char *why, *status = mood_sshs_status(&h, &why);
        cJSON_AddStringToObject(j, "sshs_model_hash", h.sshs_model_hash);
        /* `mood hash --json`'s word and sentence for it */
        cJSON_AddStringToObject(j, "sshs_model_hash_status", status);
        cJSON_AddStringToObject(j, "sshs_model_hash_note", why);
    }
}

static cJSON *dtype_counts(const size_t *dtypes)
{
    cJSON *o = cJSON_CreateObject();
    for (int d = 0; d < MOOD_DTYPE_COUNT; d++) {
        if (dtypes[d])
            cJSON_AddNumberToObject(o, mood_dtype_name((mood_dtype)d), (double)dtypes[d]);
    }
    return o;
}

/* ----- the JSON object (both outputs are made from it) ------------------------------------- */

static void adapter_modules_json(cJSON *o, const summary *s)
{
    cJSON *algos = cJSON_AddObjectToObject(o, "algorithms"), *parts, *ranks, *alphas;
    for (int i = 0; i < MOOD_ALGO_COUNT; i++) {
        if (s->algos[i])
            cJSON_AddNumberToObject(algos, mood_algo_name((mood_algo)i), (double)s->algos[i]);
    }
    parts = cJSON_AddObjectToObject(o, "parts");
    for (int i = 0; i < MOOD_PART_COUNT; i++)
        cJSON_AddNumberToObject(parts, mood_part_name((mood_part)i), (double)s->parts[i]);
    ranks = cJSON_AddArrayToObject(o, "ranks");
    for (size_t i = 0; i < s->n_ranks; i++)
        cJSON_AddItemToArray(ranks, cJSON_CreateNumber(s->ranks[i]));
    if (s->n_ranks) {
        cJSON_AddNumberToObject(o, "rank_min", s->ranks[0]);
        cJSON_AddNumberToObject(o, "rank_max", s->ranks[s->n_ranks - 1]);
    }
    alphas = cJSON_AddArrayToObject(o, "alphas");
    for (size_t i = 0; i < s->n_alphas; i++)
        cJSON_AddItemToArray(alphas, cJSON_CreateNumber(s->alphas[i]));
    cJSON_AddNumberToObject(o, "dora", (double)s->dora);
    cJSON_AddNumberToObject(o, "dora_per_input", (double)s->dora_in);
    cJSON_AddNumberToObject(o, "tucker", (double)s->tucker);
}

static cJSON *adapter_json(const mood_adapter *a, const char *path)
{
    cJSON *o = cJSON_CreateObject(), *un, *keys;
    const mood_st_file *f = mood_adapter_file(a);
    summary s;
    summarize(&s, a);
    cJSON_AddStringToObject(o, "file", path);
    cJSON_AddNumberToObject(o, "size", (double)mood_st_file_size(f));
    cJSON_AddStringToObject(o, "kind", "adapter");
    cJSON_AddStringToObject(o, "family", mood_family_name(mood_adapter_family(a)));
    cJSON_AddStringToObject(o, "family_source", mood_adapter_family_source(a));
    cJSON_AddNumberToObject(o, "modules", (double)mood_adapter_module_count(a));
    adapter_modules_json(o, &s);
    cJSON_AddNumberToObject(o, "tensors", (double)mood_st_count(f));
    cJSON_AddItemToObject(o, "dtypes", dtype_counts(s.dtypes));
    un = cJSON_AddObjectToObject(o, "unmatched");
    cJSON_AddNumberToObject(un, "count", (double)mood_adapter_unmatched_count(a));
    keys = cJSON_AddArrayToObject(un, "keys");
    for (size_t i = 0; i < mood_adapter_unmatched_count(a) && i < 20; i++)
        cJSON_AddItemToArray(keys, cJSON_CreateString(mood_adapter_unmatched(a, i)));
    cJSON_AddItemToObject(un, "groups", unmatched_groups(a));
    cJSON_AddItemToObject(o, "metadata", metadata_summary(f));
    cJSON_AddBoolToObject(o, "dylora", is_dylora(cJSON_GetObjectItemCaseSensitive(o, "metadata")));
    cJSON_AddItemToObject(o, "trigger_words", trigger_words(f));
    return o;
}

/* The UNet's input channels of a checkpoint (its first convolution's, in A1111's or SGM's layout):
 * 4 for SD, 9 for an inpainting model's (latents, mask, masked picture); 0 when not found. */
static int64_t unet_inputs(const mood_st_file *f)
{
    const mood_st_tensor *t = mood_st_find(f, "model.diffusion_model.input_blocks.0.0.weight");
    return t && t->ndim == 4 ? t->shape[1] : 0;
}

static cJSON *checkpoint_json(const mood_checkpoint *c, const char *path)
{
    cJSON *o = cJSON_CreateObject(), *parts;
    const mood_st_file *f = mood_checkpoint_file(c);
    size_t counts[MOOD_PART_COUNT + 1];
    summary s;
    memset(&s, 0, sizeof s);
    count_tensors(&s, f);
    mood_checkpoint_counts(c, counts);
    cJSON_AddStringToObject(o, "file", path);
    cJSON_AddNumberToObject(o, "size", (double)mood_st_file_size(f));
    cJSON_AddStringToObject(o, "kind", "checkpoint");
    cJSON_AddStringToObject(o, "family", mood_family_name(mood_checkpoint_family(c)));
    cJSON_AddBoolToObject(o, "inpainting", unet_inputs(f) == 9);
    cJSON_AddNumberToObject(o, "tensors", (double)mood_st_count(f));
    parts = cJSON_AddObjectToObject(o, "parts");
    for (int i = 0; i < MOOD_PART_COUNT; i++)
        cJSON_AddNumberToObject(parts, mood_part_name((mood_part)i), (double)counts[i]);
    cJSON_AddNumberToObject(parts, "other", (double)counts[MOOD_PART_COUNT]);
    cJSON_AddItemToObject(o, "dtypes", dtype_counts(s.dtypes));
    cJSON_AddNumberToObject(o, "parameters", (double)s.params);
    cJSON_AddNumberToObject(o, "metadata_keys", (double)mood_st_meta_count(f));
    return o;
}

/* ----- human output ------------------------------------------------------------------------ */

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* "name count, name count" for an object of numbers. */
static void print_counts(const char *label, const cJSON *o, const char *unit)
{
    const cJSON *v;
    int first = 1;
    printf("%-14s", label);
    cJSON_ArrayForEach(v, o)
    {
        printf("%s%s %.0f%s", first ? "" : ", ", v->string, v->valuedouble, unit);
        first = 0;
    }
    printf("%s\n", first ? "none" : "");
}

static void print_numbers(const cJSON *arr)
{
    const cJSON *v;
    int first = 1;
    cJSON_ArrayForEach(v, arr)
    {
        printf("%s%g", first ? "" : ", ", v->valuedouble);
        first = 0;
    }
}

static void print_size(double bytes)
{
    if (bytes >= 1 << 20)
        printf(" (%.1f MiB)\n", bytes / (1 << 20));
    else
        printf(" (%.1f KiB)\n", bytes / 1024);
}

static void print_ranks(const cJSON *o)
{
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(o, "ranks");
    const cJSON *alphas = cJSON_GetObjectItemCaseSensitive(o, "alphas");
    int nr = cJSON_GetArraySize(ranks);
    printf("%-14s", "Rank:");
    if (nr == 0)
        printf("none (these algorithms have no rank)");
    else if (nr > 1)
        printf("%g to %g: ", num_of(o, "rank_min"), num_of(o, "rank_max"));
    print_numbers(ranks);
    printf("\n%-14s", "Alpha:");
    if (cJSON_GetArraySize(alphas) == 0)
        printf("none stored (scale 1)");
    print_numbers(alphas);
    printf("\n");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "dylora")))
        printf("%-14strained to work at lower ranks too: <lora:NAME:W:dyn=N> uses the first N "
               "ranks\n",
               "DyLoRA:");
}

static void print_unmatched(const cJSON *o)
{
    const cJSON *un = cJSON_GetObjectItemCaseSensitive(o, "unmatched"), *g, *k;
    double n = num_of(un, "count");
    if (n == 0) {
        printf("%-14snone (every key is used)\n", "Unmatched:");
        return;
    }
    printf("%-14s%.0f key%s match no module and will NOT be applied:\n", "Unmatched:", n,
           n == 1 ? "" : "s");
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(un, "groups"))
    {
        printf("  %-24s %.0f key%s\n", g->string, g->valuedouble, g->valuedouble == 1 ? "" : "s");
    }
    int shown = 0;
    cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(un, "keys"))
    {
        if (shown++ < 5)
            printf("    e.g. %s\n", k->valuestring);
    }
}

static void print_metadata(const cJSON *o)
{
    static const char *const fields[][2] = {
        {"output_name", "Name"},
        {"title", "Title"},
        {"base_model_version", "Trained on"},
        {"architecture", "Architecture"},
        {"resolution", "Resolution"},
        {"steps", "Steps"},
        {"epochs", "Epochs"},
        {"network_module", "Network"},
        {"network_dim", "Network dim"},
        {"network_alpha", "Network alpha"},
        {"network_args", "Network args"},
        {"trigger_phrase", "Trigger phrase"},
    };
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(o, "metadata"), *t;
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(o, "trigger_words");
    int first = 1;
    printf("Training metadata:%s\n",
           cJSON_GetArraySize(meta) == 0 && cJSON_GetArraySize(tags) == 0 ? " none" : "");
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, fields[i][0]);
        if (cJSON_IsString(v))
            printf("  %-16s%s\n", fields[i][1], v->valuestring);
        else if (cJSON_IsNumber(v))
            printf("  %-16s%g\n", fields[i][1], v->valuedouble);
    }
    if (cJSON_GetArraySize(tags) == 0)
        return;
    printf("  %-16s", "Top tags");
    cJSON_ArrayForEach(t, tags)
    {
        printf("%s%s (%g)", first ? "" : ", ", str_of(t, "tag"), num_of(t, "count"));
        first = 0;
    }
    printf("\n  %-16s(the most frequent training tags are usually the trigger words)\n", "");
}

static void print_hashes(const cJSON *o, int adapter)
{
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "hashes");
    const char *v3 = str_of(h, "autov3"), *sshs = str_of(h, "sshs_model_hash");
    if (!h)
        return;
    printf("Hashes:\n");
    if (v3)
        printf("  AutoV3          %s%s\n", v3, adapter ? "  (Civitai/A1111 LoRA id)" : "");
    printf("  SHA-256         %s\n", str_of(h, "sha256"));
    printf("  AutoV2          %s%s\n", str_of(h, "autov2"), adapter ? "" : "  (A1111 model hash)");
    if (sshs)
        printf("  sshs_model_hash %s  (embedded; %s)\n", sshs, str_of(h, "sshs_model_hash_note"));
}

static void print_adapter(const cJSON *o)
{
    printf("%-14s%s", "File:", str_of(o, "file"));
    print_size(num_of(o, "size"));
    printf("%-14sadapter (LoRA-style): %.0f modules in %.0f tensors\n",
           "Kind:", num_of(o, "modules"), num_of(o, "tensors"));
    printf("%-14s%s (decided by %s)\n", "Base family:", str_of(o, "family"),
           str_of(o, "family_source"));
    print_counts("Algorithms:", cJSON_GetObjectItemCaseSensitive(o, "algorithms"), " modules");
    print_counts("Modules:", cJSON_GetObjectItemCaseSensitive(o, "parts"), "");
    print_ranks(o);
    printf("%-14s%s", "DoRA:", num_of(o, "dora") ? "" : "no\n");
    if (num_of(o, "dora"))
        printf("yes, %.0f module%s (%.0f with per-input norms, the LyCORIS < 3.2 layout; the rest "
               "per-output)\n",
               num_of(o, "dora"), num_of(o, "dora") == 1 ? "" : "s", num_of(o, "dora_per_input"));
    printf("%-14s%s", "Tucker:", num_of(o, "tucker") ? "" : "no\n");
    if (num_of(o, "tucker"))
        printf("yes, %.0f module%s\n", num_of(o, "tucker"), num_of(o, "tucker") == 1 ? "" : "s");
    print_counts("Dtypes:", cJSON_GetObjectItemCaseSensitive(o, "dtypes"), " tensors");
    print_unmatched(o);
    print_metadata(o);
    print_hashes(o, 1);
}

/* "859520964 (860 M)": the unit people use when they compare models. */
static void print_parameters(double n)
{
    static const struct {
        double size;
        const char *unit;
    } units[] = {{1e9, "B"}, {1e6, "M"}, {1e3, "K"}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (n >= units[i].size) {
            printf("%-14s%.0f (%.3g %s)\n", "Parameters:", n, n / units[i].size, units[i].unit);
            return;
        }
    }
    printf("%-14s%.0f\n", "Parameters:", n);
}

static void print_checkpoint(const cJSON *o)
{
    const cJSON *inpainting = cJSON_GetObjectItemCaseSensitive(o, "inpainting");
    printf("%-14s%s", "File:", str_of(o, "file"));
    print_size(num_of(o, "size"));
    printf("%-14scheckpoint (single file), %.0f tensors\n", "Kind:", num_of(o, "tensors"));
    printf("%-14s%s%s\n", "Base family:", str_of(o, "family"),
           cJSON_IsTrue(inpainting) ? " (an inpainting model: its UNet also takes a mask and the "
                                      "masked picture; 'mood gen --init-image --mask')"
                                    : "");
    print_counts("Tensors:", cJSON_GetObjectItemCaseSensitive(o, "parts"), "");
    print_counts("Dtypes:", cJSON_GetObjectItemCaseSensitive(o, "dtypes"), " tensors");
    print_parameters(num_of(o, "parameters"));
    printf("%-14s%.0f entries\n", "Metadata:", num_of(o, "metadata_keys"));
    print_hashes(o, 0);
}

/* ----- the command ------------------------------------------------------------------------- */

/* Builds the report of path into *out. */
static int inspect_file(cJSON **out, const char *path, int *adapter, int hash)
{
    mood_st_file *f = NULL;
    mood_checkpoint *c = NULL;
    mood_adapter *a = NULL;
    hash_job job = {path, {0}, 0};
    pthread_t thread;
    int err = mood_st_open(&f, path), hashing = 0;
    *out = NULL;
    if (err)
        return err;
    *adapter = mood_file_kind_of(f) != MOOD_KIND_CHECKPOINT;
    if (!*adapter)
        mood_st_close(f);
    hashing = hash && pthread_create(&thread, NULL, hash_thread, &job) == 0;
    if (hash && !hashing)
        hash_thread(&job);
    /* The adapter takes the open file over: its header is parsed once. Factors are still
     * checked for NaN/inf, so a damaged LoRA is reported here too. */
    if (*adapter && (err = mood_adapter_open_file(&a, f, NULL, 0)) == 0)
        *out = adapter_json(a, path);
    else if (!*adapter && (err = mood_checkpoint_open(&c, path)) == 0)
        *out = checkpoint_json(c, path);
    mood_adapter_close(a);
    mood_checkpoint_close(c);
    if (hashing)
        pthread_join(thread, NULL);
    if (!err && hash && job.err) /* again on this thread, for its error message */
        err = mood_hash_file_ex(&job.h, path, MOOD_HASH_SKIP_CRC32, NULL, NULL);
    if (!err && hash)
        add_hashes(*out, &job.h);
    if (err) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return err;
}

/* A missing file named like a style of the registry: the style was meant ('mood inspect
 * inkwash'): says where its facts are. Reads the registry only when it exists. */
static void hint_style(const char *name)
{
    mood_registry *r = NULL;
    char *json = NULL;
    if (mood_registry_open(&r, NULL) == 0 && mood_registry_show_json(&json, r, name) == 0)
        fprintf(stderr,
                "('%s' is a style of the registry: 'mood show %s' describes it and its "
                "LoRA files)\n",
                name, name);
    mood_registry_free_string(json);
    mood_registry_close(r);
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0, adapter = 0, hash = 1, err;
    cJSON *report;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--no-hash") == 0)
            hash = 0;
        else if (argv[i][0] == '-' && argv[i][1])
            return cli_unknown_option("inspect", argv[i]);
        else if (path)
            return cli_usage_error("inspect", "one FILE only ('%s' is extra)", argv[i]);
        else
            path = argv[i];
    }
    if (!path)
        return cli_usage_error("inspect", "missing FILE");
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) { /* a diffusers model is a folder of files */
        fprintf(stderr,
                "mood: error: %s is a folder: inspect reads one .safetensors file, a LoRA or a "
                "single-file checkpoint (a diffusers model's folder is given as it is to --model "
                "and --base)\n",
                path);
        return 1;
    }
    if ((err = inspect_file(&report, path, &adapter, hash)) != 0) {
        int rc = cli_fail(err);
        if (err == MOOD_ENOTFOUND && !strchr(path, '/'))
            hint_style(path);
        return rc;
    }
    if (json)
        return cli_print_json(report);
    cli_text_clean_json(report, NULL);
    if (adapter)
        print_adapter(report);
    else
        print_checkpoint(report);
    cJSON_Delete(report);
    return 0;
}
