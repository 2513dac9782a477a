/*
 * test_api_edges.c: the public API at its edges, as a program linking libmood meets them: NULL
 * arguments (MOOD_EINVAL naming the function and the argument, never a crash; every free and
 * dispose takes NULL), indexes out of range, buffers too small, an empty registry folder, values
 * outside an enum, names in another case, and a number printed alike by list, search and show;
 * and two internals every command rests on: error context added once, atomic writes that clean
 * up after killed ones.
 */
#include <errno.h>
#include <signal.h>

#include "common/common.h"
#include "harness.h"
#include "mood/mood.h"

/* rc is MOOD_EINVAL and the message says "FUNC: ARG is NULL". */
#define CHECK_NULL_ARG(call, func, arg)                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        MOOD_CHECK_MSG(rc_ == MOOD_EINVAL && strstr(mood_error_last(), func ": " arg " is NULL"),  \
                       "%s: %d '%s'", #call, rc_, mood_error_last());                              \
    } while (0)

/* A registry in a fresh folder holding kohya/sd1_lora.safetensors as the style "sd1_lora". */
static mood_registry *registry_with_style(void)
{
    mood_registry *r = NULL;
    mood_import_result ir;
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("home")));
    if (r)
        MOOD_CHECK_OK(
            mood_registry_import_file(r, &ir, fixture("kohya/sd1_lora.safetensors"), NULL, NULL));
    return r;
}

static void test_registry_home_empty(void)
{
    mood_registry *r = (mood_registry *)1;
    /* "" made the paths "/registry.db" and "/blobs/sha256": a registry at the filesystem's root */
    MOOD_CHECK(mood_registry_open(&r, "") == MOOD_EINVAL);
    MOOD_CHECK(r == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "home is \"\""), "%s", mood_error_last());
    mood_registry_close(r);
}

static void test_adapter_index_out_of_range(void)
{
    mood_adapter *a = NULL;
    mood_module_info mi;
    int64_t shape[4] = {-7, -7, -7, -7};
    int nd;
    MOOD_CHECK_OK(mood_adapter_open(&a, fixture("kohya/sd1_lora.safetensors"), NULL));
    if (!a)
        return;
    memset(&mi, 0x5a, sizeof mi);
    mood_adapter_module(a, mood_adapter_module_count(a), &mi);
    MOOD_CHECK(mi.name == NULL && mi.target == NULL && mi.rank == 0);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "out of range"), "%s", mood_error_last());
    mood_adapter_module(a, (size_t)-1, &mi);
    MOOD_CHECK(mi.name == NULL);
    mood_adapter_module(a, 0, &mi);
    MOOD_CHECK(mi.name != NULL && mi.target != NULL);
    /* a negative error, not 0 (which read as success with the shape unwritten) */
    MOOD_CHECK(mood_adapter_target_shape(a, 9999, shape) == MOOD_EINVAL);
    MOOD_CHECK(shape[0] == -7);
    nd = mood_adapter_target_shape(a, 0, shape);
    MOOD_CHECK_MSG(nd == 2 || nd == 4, "ndim %d", nd);
    MOOD_CHECK(shape[0] > 0);
    mood_adapter_close(a);
}

static void test_free_and_dispose_take_null(void)
{
    /* each of these dereferenced its argument */
    mood_token_ids_dispose(NULL);
    mood_params_dispose(NULL);
    /* and the rest stay so */
    mood_prompt_fragments_dispose(NULL);
    mood_prompt_tokens_dispose(NULL);
    mood_params_free_string(NULL);
    mood_registry_free_string(NULL);
    mood_registry_close(NULL);
    mood_adapter_close(NULL);
    mood_st_close(NULL);
    mood_model_free(NULL);
    mood_tokenizer_free(NULL);
    mood_civitai_close(NULL);
    mood_civitai_version_free(NULL);
    mood_civitai_model_free(NULL);
    mood_image_free(NULL);
    mood_image_free_string(NULL);
    MOOD_CHECK(1);
}

static void test_registry_null_arguments(void)
{
    mood_registry *r = registry_with_style();
    mood_import_result ir;
    char *s = NULL;
    int problems = 0;
    if (!r)
        return;
    CHECK_NULL_ARG(mood_registry_open(NULL, NULL), "mood_registry_open", "out");
    CHECK_NULL_ARG(mood_registry_list_json(NULL, r, NULL, NULL), "mood_registry_list_json", "out");
    CHECK_NULL_ARG(mood_registry_list_json(&s, NULL, NULL, NULL), "mood_registry_list_json", "r");
    CHECK_NULL_ARG(mood_registry_list_sorted_json(NULL, r, NULL, NULL, MOOD_LIST_BY_NAME),
                   "mood_registry_list_sorted_json", "out");
    CHECK_NULL_ARG(mood_registry_list_sorted_json(&s, NULL, NULL, NULL, MOOD_LIST_BY_CREATED),
                   "mood_registry_list_sorted_json", "r");
    CHECK_NULL_ARG(mood_registry_search_json(&s, r, NULL), "mood_registry_search_json", "query");
    CHECK_NULL_ARG(mood_registry_show_json(&s, r, NULL), "mood_registry_show_json", "name");
    CHECK_NULL_ARG(mood_registry_style_by_hash(&s, r, NULL), "mood_registry_style_by_hash", "hash");
    CHECK_NULL_ARG(mood_registry_tag(r, "sd1_lora", NULL, 1), "mood_registry_tag", "tag");
    CHECK_NULL_ARG(mood_registry_rename(r, "sd1_lora", NULL), "mood_registry_rename", "new_name");
    CHECK_NULL_ARG(mood_registry_rm(r, NULL), "mood_registry_rm", "name");
    CHECK_NULL_ARG(mood_registry_name_check(NULL), "mood_registry_name_check", "name");
    CHECK_NULL_ARG(mood_registry_style_create(r, "x", NULL), "mood_registry_style_create", "spec");
    CHECK_NULL_ARG(mood_registry_style_edit(r, "sd1_lora", NULL), "mood_registry_style_edit",
                   "spec");
    CHECK_NULL_ARG(mood_registry_doctor(NULL, &problems, r, NULL), "mood_registry_doctor", "out");
    CHECK_NULL_ARG(
        mood_registry_import_file(r, NULL, fixture("kohya/sd1_lora.safetensors"), NULL, NULL),
        "mood_registry_import_file", "out");
    CHECK_NULL_ARG(mood_registry_import_file(r, &ir, NULL, NULL, NULL), "mood_registry_import_file",
                   "path");
    CHECK_NULL_ARG(mood_registry_text_to_utf8(NULL, "x"), "mood_registry_text_to_utf8", "out");
    /* NULL options of doctor: the defaults */
    MOOD_CHECK_OK(mood_registry_doctor(&s, &problems, r, NULL));
    MOOD_CHECK(s && strstr(s, "\"deep\":false") && problems == 0);
    mood_registry_free_string(s);
    /* the registry is unchanged by all this */
    MOOD_CHECK_OK(mood_registry_show_json(&s, r, "sd1_lora"));
    mood_registry_free_string(s);
    mood_registry_close(r);
}

static void test_other_null_arguments(void)
{
    mood_file_hashes h;
    mood_adapter *a = (mood_adapter *)1;
    mood_st_file *f = (mood_st_file *)1;
    mood_model *m = (mood_model *)1;
    mood_prompt_fragments fr;
    mood_prompt_tokens pt;
    mood_tokenizer *t = NULL;
    mood_family fam;
    mood_params p;
    CHECK_NULL_ARG(mood_hash_file(&h, NULL, NULL, NULL), "mood_hash_file", "path");
    CHECK_NULL_ARG(mood_hash_file(NULL, fixture("kohya/sd1_lora.safetensors"), NULL, NULL),
                   "mood_hash_file", "out");
    CHECK_NULL_ARG(mood_adapter_open(&a, NULL, NULL), "mood_adapter_open", "path");
    MOOD_CHECK(a == NULL);
    CHECK_NULL_ARG(mood_st_open(&f, NULL), "mood_st_open", "path");
    MOOD_CHECK(f == NULL);
    CHECK_NULL_ARG(mood_model_open(&m, NULL, NULL), "mood_model_open", "path");
    MOOD_CHECK(m == NULL);
    CHECK_NULL_ARG(mood_prompt_parse(&fr, NULL), "mood_prompt_parse", "prompt");
    MOOD_CHECK(fr.items == NULL && fr.n == 0);
    MOOD_CHECK_OK(mood_tokenizer_load(&t, NULL));
    CHECK_NULL_ARG(mood_prompt_tokenize(&pt, t, NULL, NULL), "mood_prompt_tokenize", "prompt");
    CHECK_NULL_ARG(mood_prompt_tokenize(&pt, NULL, "a cat", NULL), "mood_prompt_tokenize", "t");
    CHECK_NULL_ARG(mood_prompt_tokenize(NULL, t, "a cat", NULL), "mood_prompt_tokenize", "out");
    mood_tokenizer_free(t);
    CHECK_NULL_ARG(mood_device_resolve(NULL, "cpu", NULL, 0, 0), "mood_device_resolve", "out");
    CHECK_NULL_ARG(mood_family_from_name(&fam, NULL), "mood_family_from_name", "name");
    CHECK_NULL_ARG(mood_params_parse(NULL, "x"), "mood_params_parse", "out");
    mood_params_init(&p);
    CHECK_NULL_ARG(mood_params_set(&p, "Steps", NULL), "mood_params_set", "value");
    mood_params_dispose(&p);
    CHECK_NULL_ARG(mood_styles_resolve(NULL, NULL, "a cat", NULL, NULL, 0, NULL, 0, 0),
                   "mood_styles_resolve", "out");
    const char *board = fixture("train/board");
    mood_board_options bo;
    mood_board_options_init(&bo);
    CHECK_NULL_ARG(mood_board_load(NULL, &board, 1, &bo), "mood_board_load", "out");
    mood_civitai_link_result *links = NULL;
    size_t n_links = 0;
    char *updates = NULL;
    CHECK_NULL_ARG(mood_civitai_link_each(&links, &n_links, NULL, NULL, "x", NULL),
                   "mood_civitai_link_each", "r");
    CHECK_NULL_ARG(mood_civitai_update_check(&updates, NULL, NULL), "mood_civitai_update_check",
                   "r");
    MOOD_CHECK(mood_output_path_check(NULL) == MOOD_EINVAL);
}

static void test_generate_arguments(void)
{
    mood_model *m = NULL;
    mood_gen_options o;
    float *img = NULL;
    MOOD_CHECK_OK(mood_model_open(&m, fixture("pipeline/tiny-sd"), NULL));
    if (!m)
        return;
    mood_gen_options_init(&o);
    o.prompt = "a cat";
    o.width = o.height = 32;
    o.steps = 1;
    CHECK_NULL_ARG(mood_generate(m, &o, NULL, NULL), "mood_generate", "images_out");
    CHECK_NULL_ARG(mood_generate(m, NULL, &img, NULL), "mood_generate", "o");
    /* an rng outside the enum ran as MOOD_RNG_MOOD, where a sampler outside it is refused */
    o.rng = (mood_rng_kind)77;
    MOOD_CHECK(mood_generate(m, &o, &img, NULL) == MOOD_EINVAL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "rng 77"), "%s", mood_error_last());
    MOOD_CHECK(img == NULL);
    mood_model_free(m);
}

static void test_buffer_too_small(void)
{
    char big[4096], small[4] = "abc";
    size_t need;
    MOOD_CHECK_OK(mood_tokenizer_default_path(big, sizeof big));
    need = strlen(big) + 1;
    /* was MOOD_ENOTFOUND "not found" with a cut path in the buffer */
    MOOD_CHECK(mood_tokenizer_default_path(small, sizeof small) == MOOD_EINVAL);
    MOOD_CHECK(small[0] == '\0');
    {
        char want[64];
        snprintf(want, sizeof want, "buffer too small (%zu bytes needed)", need);
        MOOD_CHECK_MSG(strstr(mood_error_last(), want), "%s", mood_error_last());
    }
    /* exactly enough */
    MOOD_CHECK_OK(mood_tokenizer_default_path(big, need));
    MOOD_CHECK(strlen(big) + 1 == need);
    MOOD_CHECK(mood_tokenizer_default_path(big, need - 1) == MOOD_EINVAL && big[0] == '\0');
    MOOD_CHECK(mood_tokenizer_default_path(small, 0) == MOOD_EINVAL);
    memcpy(small, "abc", 4);
    MOOD_CHECK(mood_data_dir(small, sizeof small) == MOOD_EINVAL);
    MOOD_CHECK(small[0] == '\0');
    MOOD_CHECK(strstr(mood_error_last(), "buffer too small") != NULL);
    MOOD_CHECK_OK(mood_data_dir(big, sizeof big));
    MOOD_CHECK_MSG(strlen(big) > 0 && strlen(big) + 1 < need, "%s", big);
}

static void test_messages(void)
{
    mood_civitai *c = (mood_civitai *)1;
    /* the URL was the caller's argument: the environment variable is not to blame */
    MOOD_CHECK(mood_civitai_open(&c, "ftp://x") == MOOD_EINVAL);
    MOOD_CHECK(c == NULL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "base_url") &&
                       !strstr(mood_error_last(), "MOOD_CIVITAI_URL") &&
                       strstr(mood_error_last(), "ftp://x"),
                   "%s", mood_error_last());
    /* `what` NULL was printed through %s */
    MOOD_CHECK(mood_registry_text_check("caf\xe9", NULL) == MOOD_EINVAL);
    MOOD_CHECK_MSG(strncmp(mood_error_last(), "text 'caf\\xE9'", 14) == 0, "%s", mood_error_last());
    /* context added on the way up names a file once, however many callers add it */
    mood_error_set(MOOD_EFORMAT, "a.safetensors: key \"x\" matches no module");
    mood_error_prefix("%s", "a.safetensors");
    MOOD_CHECK_MSG(strcmp(mood_error_last(), "a.safetensors: key \"x\" matches no module") == 0,
                   "%s", mood_error_last());
    mood_error_prefix("%s", "a.safe");
    mood_error_prefix("%s", "lora merge");
    MOOD_CHECK_MSG(strcmp(mood_error_last(),
                          "lora merge: a.safe: a.safetensors: key \"x\" matches no module") == 0,
                   "%s", mood_error_last());
    /* a context that ends with the file the message starts with names it once */
    mood_error_set(MOOD_EIO, "/d/x.ckpt: no space left on device");
    mood_error_prefix("training checkpoint %s", "/d/x.ckpt");
    MOOD_CHECK_MSG(
        strcmp(mood_error_last(), "training checkpoint /d/x.ckpt: no space left on device") == 0,
        "%s", mood_error_last());
    mood_error_set(MOOD_EIO, "b/x.ckpt: full"); /* another file whose name ends so: kept */
    mood_error_prefix("copy of %s", "ab/x.ckpt");
    MOOD_CHECK_MSG(strcmp(mood_error_last(), "copy of ab/x.ckpt: b/x.ckpt: full") == 0, "%s",
                   mood_error_last());
}

/* A write to a file removes the temporary files that killed writes to it left (their process is
 * gone), and keeps those of a live process. */
static void test_atomic_write_removes_dead_leftovers(void)
{
    const char *dir = scratch_fresh_dir("atomic");
    char out[1100], dead[1200], live[1200];
    mood_atomic_file af;
    long pid = 999999;
    while (pid > 2 && !(kill((pid_t)pid, 0) != 0 && errno == ESRCH))
        pid--; /* a process id no process has */
    snprintf(out, sizeof out, "%s/out.bin", dir);
    snprintf(dead, sizeof dead, "%s/.out.bin.tmp-%ld-0", dir, pid);
    snprintf(live, sizeof live, "%s/.out.bin.tmp-%ld-0", dir, (long)getpid());
    MOOD_CHECK(write_file(dead, "x", 1) == 0 && write_file(live, "y", 1) == 0);
    MOOD_CHECK_OK(mood_atomic_open(&af, out));
    MOOD_CHECK_OK(mood_atomic_write(&af, "data", 4));
    MOOD_CHECK_OK(mood_atomic_commit(&af));
    MOOD_CHECK(access(dead, F_OK) != 0 && access(live, F_OK) == 0 && access(out, F_OK) == 0);
}

static void test_family_names_any_case(void)
{
    mood_family f = MOOD_FAMILY_UNKNOWN;
    MOOD_CHECK(mood_family_from_name(&f, "SDXL") == 0 && f == MOOD_FAMILY_SDXL);
    MOOD_CHECK(mood_family_from_name(&f, "SD1.5") == 0 && f == MOOD_FAMILY_SD1);
    MOOD_CHECK(mood_family_from_name(&f, "Sd2") == 0 && f == MOOD_FAMILY_SD2);
    f = MOOD_FAMILY_SD2;
    MOOD_CHECK(mood_family_from_name(&f, "flux") == MOOD_EINVAL && f == MOOD_FAMILY_SD2);
    MOOD_CHECK(strstr(mood_error_last(), "'flux'") != NULL);
}

/* The value of "weight" in the first object of a JSON text, as written. */
static void weight_text(char *out, size_t size, const char *json)
{
    const char *w = json ? strstr(json, "\"weight\":") : NULL;
    size_t n = w ? strcspn(w + 9, ",}") : 0;
    snprintf(out, size, "%.*s", (int)n, w ? w + 9 : "");
}

static void test_weight_printed_alike(void)
{
    mood_registry *r = registry_with_style();
    mood_style_spec spec = {0};
    char *list = NULL, *found = NULL, *shown = NULL, *base = NULL;
    char a[64], b[64], c[64];
    if (!r)
        return;
    spec.weight = 0.7;
    spec.has_weight = 1;
    MOOD_CHECK_OK(mood_registry_style_edit(r, "sd1_lora", &spec));
    MOOD_CHECK_OK(mood_registry_list_json(&list, r, NULL, NULL));
    MOOD_CHECK_OK(mood_registry_search_json(&found, r, "sd1"));
    MOOD_CHECK_OK(mood_registry_show_json(&shown, r, "sd1_lora"));
    weight_text(a, sizeof a, list);
    weight_text(b, sizeof b, found);
    weight_text(c, sizeof c, shown);
    MOOD_CHECK_MSG(strcmp(a, "0.7") == 0 && strcmp(b, "0.7") == 0 && strcmp(c, "0.7") == 0,
                   "list %s, search %s, show %s", a, b, c);
    /* the base filter reads family names as mood_family_from_name does */
    MOOD_CHECK_OK(mood_registry_list_json(&base, r, NULL, "SD1.5"));
    MOOD_CHECK_MSG(base && strstr(base, "\"sd1_lora\""), "%s", base ? base : "");
    mood_registry_free_string(list);
    mood_registry_free_string(found);
    mood_registry_free_string(shown);
    mood_registry_free_string(base);
    mood_registry_close(r);
}

MOOD_TEST_MAIN(MOOD_T(test_atomic_write_removes_dead_leftovers), MOOD_T(test_registry_home_empty),
               MOOD_T(test_adapter_index_out_of_range), MOOD_T(test_free_and_dispose_take_null),
               MOOD_T(test_registry_null_arguments), MOOD_T(test_other_null_arguments),
               MOOD_T(test_generate_arguments), MOOD_T(test_buffer_too_small),
               MOOD_T(test_messages), MOOD_T(test_family_names_any_case),
               MOOD_T(test_weight_printed_alike))
