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
    CHECK_NULL_ARG(mood_civitai_link_all(&links, &n_links, NULL, NULL, 0, NULL),
                   "mood_civitai_link_all", "r");
    CHECK_NULL_ARG(mood_civitai_link_all(NULL, &n_links, NULL, NULL, 0, NULL),
                   "mood_civitai_link_all", "out");
    CHECK_NULL_ARG(mood_civitai_update_check(&updates, NULL, NULL), "mood_civitai_update_check",
                   "r");
    MOOD_CHECK(mood_output_path_check(NULL) == MOOD_EINVAL);
}

/* Each required pointer of the Civitai client's functions: they dereferenced it. */
static void test_civitai_null_arguments(void)
{
    static const char record[] = "{\"id\": 1, \"modelId\": 2, \"name\": \"v1\"}";
    mood_civitai *c = NULL;
    mood_civitai_version *v = (mood_civitai_version *)1, *ver = NULL;
    mood_civitai_model *mo = (mood_civitai_model *)1, *model = NULL;
    mood_civitai_permissions perm = {1, 1, 1, NULL};
    mood_civitai_ref ref = {2, 1};
    mood_registry *r = NULL;
    mood_import_result ir;
    char *s = (char *)1;
    char dir[1100];
    MOOD_CHECK_OK(mood_civitai_open(&c, "http://127.0.0.1:9"));
    MOOD_CHECK_OK(mood_civitai_version_parse(&ver, record, sizeof record - 1));
    MOOD_CHECK_OK(mood_civitai_model_parse(&model, record, sizeof record - 1));
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("civitai-null")));
    snprintf(dir, sizeof dir, "%s", scratch_fresh_dir("civitai-dl"));
    if (!c || !ver || !model || !r)
        goto done;
    CHECK_NULL_ARG(mood_civitai_version_by_hash(NULL, c, "abcdef12"),
                   "mood_civitai_version_by_hash", "out");
    CHECK_NULL_ARG(mood_civitai_version_by_hash(&v, NULL, "abcdef12"),
                   "mood_civitai_version_by_hash", "c");
    MOOD_CHECK(v == NULL);
    CHECK_NULL_ARG(mood_civitai_version_by_hash(&v, c, NULL), "mood_civitai_version_by_hash",
                   "hash");
    {
        const char *one[] = {"abcdef12"};
        mood_civitai_version *vs = (mood_civitai_version *)1;
        size_t nv = 1;
        CHECK_NULL_ARG(mood_civitai_versions_by_hash(NULL, &nv, c, one, 1),
                       "mood_civitai_versions_by_hash", "out");
        CHECK_NULL_ARG(mood_civitai_versions_by_hash(&vs, &nv, NULL, one, 1),
                       "mood_civitai_versions_by_hash", "c");
        MOOD_CHECK(vs == NULL && nv == 0);
        CHECK_NULL_ARG(mood_civitai_versions_by_hash(&vs, &nv, c, NULL, 1),
                       "mood_civitai_versions_by_hash", "sha256");
        mood_civitai_versions_free(NULL, 3); /* a no-op */
    }
    CHECK_NULL_ARG(mood_civitai_version_get(NULL, c, 1), "mood_civitai_version_get", "out");
    CHECK_NULL_ARG(mood_civitai_version_get(&v, NULL, 1), "mood_civitai_version_get", "c");
    CHECK_NULL_ARG(mood_civitai_model_get(NULL, c, 1), "mood_civitai_model_get", "out");
    CHECK_NULL_ARG(mood_civitai_model_get(&mo, NULL, 1), "mood_civitai_model_get", "c");
    MOOD_CHECK(mo == NULL);
    CHECK_NULL_ARG(mood_civitai_version_add_model(NULL, model), "mood_civitai_version_add_model",
                   "v");
    CHECK_NULL_ARG(mood_civitai_version_add_model(ver, NULL), "mood_civitai_version_add_model",
                   "m");
    CHECK_NULL_ARG(mood_civitai_resolve(NULL, c, &ref), "mood_civitai_resolve", "out");
    CHECK_NULL_ARG(mood_civitai_resolve(&v, NULL, &ref), "mood_civitai_resolve", "c");
    CHECK_NULL_ARG(mood_civitai_resolve(&v, c, NULL), "mood_civitai_resolve", "ref");
    CHECK_NULL_ARG(mood_civitai_download(NULL, c, ver, dir, NULL, NULL), "mood_civitai_download",
                   "path_out");
    CHECK_NULL_ARG(mood_civitai_download(&s, NULL, ver, dir, NULL, NULL), "mood_civitai_download",
                   "c");
    MOOD_CHECK(s == NULL);
    CHECK_NULL_ARG(mood_civitai_download(&s, c, NULL, dir, NULL, NULL), "mood_civitai_download",
                   "v");
    CHECK_NULL_ARG(mood_civitai_download(&s, c, ver, NULL, NULL, NULL), "mood_civitai_download",
                   "dir");
    CHECK_NULL_ARG(
        mood_civitai_download_url(NULL, c, "http://127.0.0.1:9/x", dir, NULL, NULL, NULL),
        "mood_civitai_download_url", "path_out");
    CHECK_NULL_ARG(
        mood_civitai_download_url(&s, NULL, "http://127.0.0.1:9/x", dir, NULL, NULL, NULL),
        "mood_civitai_download_url", "c");
    CHECK_NULL_ARG(mood_civitai_download_url(&s, c, NULL, dir, NULL, NULL, NULL),
                   "mood_civitai_download_url", "url");
    CHECK_NULL_ARG(mood_civitai_download_url(&s, c, "http://127.0.0.1:9/x", NULL, NULL, NULL, NULL),
                   "mood_civitai_download_url", "dir");
    CHECK_NULL_ARG(mood_civitai_version_parse(NULL, record, sizeof record - 1),
                   "mood_civitai_version_parse", "out");
    CHECK_NULL_ARG(mood_civitai_version_parse(&v, NULL, 5), "mood_civitai_version_parse", "json");
    CHECK_NULL_ARG(mood_civitai_model_parse(NULL, record, sizeof record - 1),
                   "mood_civitai_model_parse", "out");
    CHECK_NULL_ARG(mood_civitai_model_parse(&mo, NULL, 5), "mood_civitai_model_parse", "json");
    /* an empty answer stays what it was: not a record */
    MOOD_CHECK(mood_civitai_model_parse(&mo, NULL, 0) == MOOD_EFORMAT && mo == NULL);
    CHECK_NULL_ARG(mood_civitai_license(NULL, &perm), "mood_civitai_license", "out");
    CHECK_NULL_ARG(mood_civitai_license(&s, NULL), "mood_civitai_license", "p");
    CHECK_NULL_ARG(mood_civitai_parse_ref(NULL, "civitai:1"), "mood_civitai_parse_ref", "out");
    CHECK_NULL_ARG(mood_civitai_parse_ref(&ref, NULL), "mood_civitai_parse_ref", "text");
    CHECK_NULL_ARG(mood_civitai_import(NULL, &ir, NULL, c, "civitai:1", NULL),
                   "mood_civitai_import", "r");
    CHECK_NULL_ARG(mood_civitai_import(r, NULL, NULL, c, "civitai:1", NULL), "mood_civitai_import",
                   "out");
    CHECK_NULL_ARG(mood_civitai_import(r, &ir, &v, NULL, "civitai:1", NULL), "mood_civitai_import",
                   "c");
    MOOD_CHECK(v == NULL);
    CHECK_NULL_ARG(mood_civitai_import(r, &ir, NULL, c, NULL, NULL), "mood_civitai_import", "what");
done:
    mood_registry_close(r);
    mood_civitai_model_free(model);
    mood_civitai_version_free(ver);
    mood_civitai_close(c);
}

/* The text encoder, UNet, VAE, sampler, model and device. A model argument that the others
 * need real is given as a stand-in never read: the argument checks come first. */
static void test_engine_null_arguments(void)
{
    const mood_clip *clip = (const mood_clip *)1;
    mood_clip *cl = (mood_clip *)1;
    mood_clip_tape *ct = NULL;
    mood_unet *un = (mood_unet *)1;
    mood_unet_tape *ut = NULL;
    mood_vae *va = (mood_vae *)1;
    mood_model *mm = (mood_model *)1;
    mood_gpu_info gi;
    mood_noise_schedule ns;
    mood_sample_opts so;
    int32_t ids[1] = {0};
    float buf[64] = {0};
    double t[8];
    char hash[11];
    const char *path = fixture("pipeline/tiny-sd");
    CHECK_NULL_ARG(mood_clip_load(NULL, path, NULL), "mood_clip_load", "out");
    CHECK_NULL_ARG(mood_clip_load(&cl, NULL, NULL), "mood_clip_load", "path");
    MOOD_CHECK(cl == NULL);
    CHECK_NULL_ARG(mood_clip_forward(NULL, ids, 1, 1, 1, 0, buf, NULL), "mood_clip_forward", "m");
    CHECK_NULL_ARG(mood_clip_forward(clip, NULL, 1, 1, 1, 0, buf, NULL), "mood_clip_forward",
                   "ids");
    CHECK_NULL_ARG(mood_clip_project(NULL, buf, 1, buf), "mood_clip_project", "m");
    CHECK_NULL_ARG(mood_clip_project(clip, NULL, 1, buf), "mood_clip_project", "pooled");
    CHECK_NULL_ARG(mood_clip_project(clip, buf, 1, NULL), "mood_clip_project", "out");
    CHECK_NULL_ARG(mood_clip_set_side_paths(NULL, NULL, 0), "mood_clip_set_side_paths", "m");
    CHECK_NULL_ARG(mood_clip_set_side_paths((mood_clip *)1, NULL, 1), "mood_clip_set_side_paths",
                   "paths");
    CHECK_NULL_ARG(mood_clip_tape_new(NULL), "mood_clip_tape_new", "out");
    MOOD_CHECK_OK(mood_clip_tape_new(&ct));
    mood_clip_tape_free(ct);
    CHECK_NULL_ARG(mood_unet_load(NULL, path), "mood_unet_load", "out");
    CHECK_NULL_ARG(mood_unet_load(&un, NULL), "mood_unet_load", "path");
    MOOD_CHECK(un == NULL);
    un = (mood_unet *)1;
    CHECK_NULL_ARG(mood_unet_load_ex(NULL, path, NULL), "mood_unet_load_ex", "out");
    CHECK_NULL_ARG(mood_unet_load_ex(&un, NULL, NULL), "mood_unet_load_ex", "path");
    MOOD_CHECK(un == NULL);
    CHECK_NULL_ARG(mood_unet_set_side_paths(NULL, NULL, 0), "mood_unet_set_side_paths", "m");
    CHECK_NULL_ARG(mood_unet_set_side_paths((mood_unet *)1, NULL, 2), "mood_unet_set_side_paths",
                   "paths");
    CHECK_NULL_ARG(mood_unet_tape_new(NULL, 0), "mood_unet_tape_new", "out");
    MOOD_CHECK_OK(mood_unet_tape_new(&ut, 0));
    mood_unet_tape_free(ut);
    CHECK_NULL_ARG(mood_vae_load(NULL, path), "mood_vae_load", "out");
    CHECK_NULL_ARG(mood_vae_load(&va, NULL), "mood_vae_load", "path");
    MOOD_CHECK(va == NULL);
    va = (mood_vae *)1;
    CHECK_NULL_ARG(mood_vae_load_hint(NULL, path, NULL), "mood_vae_load_hint", "out");
    CHECK_NULL_ARG(mood_vae_load_hint(&va, NULL, NULL), "mood_vae_load_hint", "path");
    MOOD_CHECK(va == NULL);
    va = (mood_vae *)1;
    CHECK_NULL_ARG(mood_vae_decode(NULL, buf, buf, 1, 1, 1), "mood_vae_decode", "m");
    CHECK_NULL_ARG(mood_vae_decode(va, NULL, buf, 1, 1, 1), "mood_vae_decode", "img_out");
    CHECK_NULL_ARG(mood_vae_decode(va, buf, NULL, 1, 1, 1), "mood_vae_decode", "z");
    CHECK_NULL_ARG(mood_vae_encode(NULL, buf, NULL, buf, 1, 8, 8), "mood_vae_encode", "m");
    CHECK_NULL_ARG(mood_vae_encode(va, NULL, NULL, buf, 1, 8, 8), "mood_vae_encode", "mean_out");
    CHECK_NULL_ARG(mood_vae_encode(va, buf, buf, NULL, 1, 8, 8), "mood_vae_encode", "img");
    mood_noise_schedule_sd(&ns);
    mood_sample_opts_init(&so);
    so.steps = 4;
    CHECK_NULL_ARG(mood_sampler_timesteps(NULL, &so, t, NULL, NULL), "mood_sampler_timesteps",
                   "ns");
    CHECK_NULL_ARG(mood_sampler_timesteps(&ns, NULL, t, NULL, NULL), "mood_sampler_timesteps", "o");
    MOOD_CHECK_OK(mood_sampler_timesteps(&ns, &so, t, NULL, NULL));
    CHECK_NULL_ARG(mood_model_set_adapters(NULL, NULL, 0, MOOD_LORA_MERGE, NULL),
                   "mood_model_set_adapters", "m");
    CHECK_NULL_ARG(mood_model_set_adapters(mm, NULL, 1, MOOD_LORA_RUNTIME, NULL),
                   "mood_model_set_adapters", "adapters");
    CHECK_NULL_ARG(mood_model_short_hash(NULL, hash), "mood_model_short_hash", "m");
    CHECK_NULL_ARG(mood_model_short_hash(mm, NULL), "mood_model_short_hash", "out");
    CHECK_NULL_ARG(mood_gpu_info_get(NULL, 0), "mood_gpu_info_get", "out");
    MOOD_CHECK(mood_gpu_info_get(&gi, -1) == MOOD_ENOTFOUND);
}

static int fill_zeros(void *dst, uint64_t nbytes, void *payload)
{
    (void)payload;
    memset(dst, 0, (size_t)nbytes);
    return 0;
}

/* Adapters, base checkpoints, dtypes and safetensors reading and writing. */
static void test_lora_null_arguments(void)
{
    const char *lora = fixture("kohya/sd1_lora.safetensors");
    const mood_st_file *file = (const mood_st_file *)1;
    mood_adapter *a = (mood_adapter *)1;
    mood_checkpoint *ck = (mood_checkpoint *)1;
    mood_st_file *f = (mood_st_file *)1;
    mood_st_writer *w = NULL;
    mood_st_tensor tensor;
    mood_weighted_adapter wa = {.path = lora, .unet = 1, .te = 1};
    mood_base_weight bw;
    mood_dtype dt;
    float *down = NULL, *up = NULL, x = 1, vals[4];
    double d;
    int rank;
    int64_t shape[1] = {1}, empty[1] = {0};
    char hex[65];
    unsigned char bytes[16] = {0};
    memset(&tensor, 0, sizeof tensor);
    memset(&bw, 0, sizeof bw);
    CHECK_NULL_ARG(mood_adapter_open_weighted(NULL, &wa, NULL), "mood_adapter_open_weighted",
                   "out");
    CHECK_NULL_ARG(mood_adapter_open_weighted(&a, NULL, NULL), "mood_adapter_open_weighted", "w");
    MOOD_CHECK(a == NULL);
    CHECK_NULL_ARG(mood_adapter_limit_rank(NULL, 1), "mood_adapter_limit_rank", "a");
    CHECK_NULL_ARG(mood_adapter_lowrank(NULL, 0, &down, &up, &rank), "mood_adapter_lowrank", "a");
    CHECK_NULL_ARG(mood_adapter_lowrank((mood_adapter *)1, 0, NULL, &up, &rank),
                   "mood_adapter_lowrank", "down");
    CHECK_NULL_ARG(mood_adapter_lowrank((mood_adapter *)1, 0, &down, NULL, &rank),
                   "mood_adapter_lowrank", "up");
    CHECK_NULL_ARG(mood_adapter_lowrank((mood_adapter *)1, 0, &down, &up, NULL),
                   "mood_adapter_lowrank", "rank");
    CHECK_NULL_ARG(mood_checkpoint_open(NULL, lora), "mood_checkpoint_open", "out");
    CHECK_NULL_ARG(mood_checkpoint_open(&ck, NULL), "mood_checkpoint_open", "path");
    MOOD_CHECK(ck == NULL);
    CHECK_NULL_ARG(mood_checkpoint_from_names(NULL, file, MOOD_FAMILY_SD1, &bw, 1),
                   "mood_checkpoint_from_names", "out");
    CHECK_NULL_ARG(mood_checkpoint_from_names(&ck, NULL, MOOD_FAMILY_SD1, &bw, 1),
                   "mood_checkpoint_from_names", "file");
    CHECK_NULL_ARG(mood_checkpoint_from_names(&ck, file, MOOD_FAMILY_SD1, NULL, 3),
                   "mood_checkpoint_from_names", "w");
    CHECK_NULL_ARG(mood_dtype_from_name(NULL, "F32"), "mood_dtype_from_name", "out");
    CHECK_NULL_ARG(mood_dtype_from_name(&dt, NULL), "mood_dtype_from_name", "name");
    CHECK_NULL_ARG(mood_dtype_read_f64(NULL, &x, MOOD_DTYPE_F32), "mood_dtype_read_f64", "out");
    CHECK_NULL_ARG(mood_dtype_read_f64(&d, NULL, MOOD_DTYPE_F32), "mood_dtype_read_f64", "src");
    CHECK_NULL_ARG(mood_st_open_memory(NULL, bytes, sizeof bytes, "mem"), "mood_st_open_memory",
                   "out");
    CHECK_NULL_ARG(mood_st_open_memory(&f, NULL, sizeof bytes, "mem"), "mood_st_open_memory",
                   "data");
    MOOD_CHECK(f == NULL);
    CHECK_NULL_ARG(mood_st_open_memory(&f, bytes, sizeof bytes, NULL), "mood_st_open_memory",
                   "label");
    CHECK_NULL_ARG(mood_st_to_f32(NULL, &tensor), "mood_st_to_f32", "out");
    CHECK_NULL_ARG(mood_st_to_f32(vals, NULL), "mood_st_to_f32", "t");
    CHECK_NULL_ARG(mood_st_writer_new(NULL), "mood_st_writer_new", "out");
    MOOD_CHECK_OK(mood_st_writer_new(&w));
    if (!w)
        return;
    CHECK_NULL_ARG(mood_st_writer_add(NULL, "t", MOOD_DTYPE_F32, 1, shape, &x),
                   "mood_st_writer_add", "w");
    CHECK_NULL_ARG(mood_st_writer_add(w, NULL, MOOD_DTYPE_F32, 1, shape, &x), "mood_st_writer_add",
                   "name");
    CHECK_NULL_ARG(mood_st_writer_add(w, "t", MOOD_DTYPE_F32, 1, NULL, &x), "mood_st_writer_add",
                   "shape");
    CHECK_NULL_ARG(mood_st_writer_add(w, "t", MOOD_DTYPE_F32, 1, shape, NULL), "mood_st_writer_add",
                   "data");
    CHECK_NULL_ARG(mood_st_writer_add_f32(NULL, "t", MOOD_DTYPE_F16, 1, shape, &x),
                   "mood_st_writer_add_f32", "w");
    CHECK_NULL_ARG(mood_st_writer_add_f32(w, NULL, MOOD_DTYPE_F16, 1, shape, &x),
                   "mood_st_writer_add_f32", "name");
    CHECK_NULL_ARG(mood_st_writer_add_f32(w, "t", MOOD_DTYPE_F16, 1, NULL, &x),
                   "mood_st_writer_add_f32", "shape");
    CHECK_NULL_ARG(mood_st_writer_add_f32(w, "t", MOOD_DTYPE_F16, 1, shape, NULL),
                   "mood_st_writer_add_f32", "data");
    CHECK_NULL_ARG(mood_st_writer_add_lazy(NULL, "t", MOOD_DTYPE_F32, 1, shape, fill_zeros, NULL),
                   "mood_st_writer_add_lazy", "w");
    CHECK_NULL_ARG(mood_st_writer_add_lazy(w, NULL, MOOD_DTYPE_F32, 1, shape, fill_zeros, NULL),
                   "mood_st_writer_add_lazy", "name");
    CHECK_NULL_ARG(mood_st_writer_add_lazy(w, "t", MOOD_DTYPE_F32, 1, NULL, fill_zeros, NULL),
                   "mood_st_writer_add_lazy", "shape");
    CHECK_NULL_ARG(mood_st_writer_add_lazy(w, "t", MOOD_DTYPE_F32, 1, shape, NULL, NULL),
                   "mood_st_writer_add_lazy", "fill");
    CHECK_NULL_ARG(mood_st_writer_set_meta(NULL, "k", "v"), "mood_st_writer_set_meta", "w");
    CHECK_NULL_ARG(mood_st_writer_set_meta(w, NULL, "v"), "mood_st_writer_set_meta", "key");
    CHECK_NULL_ARG(mood_st_writer_set_meta(w, "k", NULL), "mood_st_writer_set_meta", "value");
    CHECK_NULL_ARG(mood_st_writer_data_sha256(NULL, hex), "mood_st_writer_data_sha256", "w");
    CHECK_NULL_ARG(mood_st_writer_data_sha256(w, NULL), "mood_st_writer_data_sha256", "hex_out");
    CHECK_NULL_ARG(mood_st_writer_range_sha256(NULL, 0, 8, hex), "mood_st_writer_range_sha256",
                   "w");
    CHECK_NULL_ARG(mood_st_writer_range_sha256(w, 0, 8, NULL), "mood_st_writer_range_sha256",
                   "hex_out");
    CHECK_NULL_ARG(mood_st_writer_write(NULL, scratch_path("null.safetensors"), NULL, NULL),
                   "mood_st_writer_write", "w");
    CHECK_NULL_ARG(mood_st_writer_write(w, NULL, NULL, NULL), "mood_st_writer_write", "path");
    /* none of that added anything; a tensor without elements needs no data, a scalar no shape */
    MOOD_CHECK_OK(mood_st_writer_add(w, "empty", MOOD_DTYPE_F32, 1, empty, NULL));
    MOOD_CHECK_OK(mood_st_writer_add_f32(w, "scalar", MOOD_DTYPE_F32, 0, NULL, &x));
    MOOD_CHECK_OK(mood_st_writer_add_lazy(w, "t", MOOD_DTYPE_F32, 1, shape, fill_zeros, NULL));
    MOOD_CHECK_OK(mood_st_writer_write(w, scratch_path("null.safetensors"), NULL, NULL));
    mood_st_writer_free(w);
    MOOD_CHECK_OK(mood_st_open(&f, scratch_path("null.safetensors")));
    MOOD_CHECK(f && mood_st_count(f) == 3);
    mood_st_close(f);
}

/* Images, board thumbnails, packs and the registry's read-only state. */
static void test_image_null_arguments(void)
{
    mood_image *img = (mood_image *)1, *one = NULL;
    const mood_image *imgs[1];
    mood_registry *r = NULL;
    mood_board_item it;
    uint8_t *jpeg = (uint8_t *)1;
    size_t size = 7;
    char *report = (char *)1;
    float chw[12] = {0};
    memset(&it, 0, sizeof it);
    it.path = "x.png";
    CHECK_NULL_ARG(mood_image_new(NULL, 2, 2, 3), "mood_image_new", "out");
    CHECK_NULL_ARG(mood_image_from_float(NULL, chw, 3, 2, 2), "mood_image_from_float", "out");
    CHECK_NULL_ARG(mood_image_from_float(&img, NULL, 3, 2, 2), "mood_image_from_float", "chw");
    MOOD_CHECK(img == NULL);
    MOOD_CHECK_OK(mood_image_new(&one, 2, 2, 3));
    imgs[0] = one;
    CHECK_NULL_ARG(mood_image_grid(NULL, imgs, 1, 0), "mood_image_grid", "out");
    CHECK_NULL_ARG(mood_image_grid(&img, NULL, 2, 0), "mood_image_grid", "images");
    MOOD_CHECK(mood_image_grid(&img, NULL, 0, 0) == MOOD_EINVAL && img == NULL);
    mood_image_free(one);
    CHECK_NULL_ARG(mood_board_thumbnail(NULL, &size, NULL, NULL, &it, 64), "mood_board_thumbnail",
                   "jpeg_out");
    CHECK_NULL_ARG(mood_board_thumbnail(&jpeg, NULL, NULL, NULL, &it, 64), "mood_board_thumbnail",
                   "size_out");
    CHECK_NULL_ARG(mood_board_thumbnail(&jpeg, &size, NULL, NULL, NULL, 64), "mood_board_thumbnail",
                   "it");
    MOOD_CHECK(jpeg == NULL && size == 0);
    MOOD_CHECK_OK(mood_registry_open(&r, scratch_fresh_dir("pack-null")));
    if (!r)
        return;
    CHECK_NULL_ARG(mood_pack_import(NULL, r, "x.moodpack", NULL), "mood_pack_import", "report_out");
    CHECK_NULL_ARG(mood_pack_import(&report, NULL, "x.moodpack", NULL), "mood_pack_import", "r");
    MOOD_CHECK(report == NULL);
    CHECK_NULL_ARG(mood_pack_import(&report, r, NULL, NULL), "mood_pack_import", "path");
    CHECK_NULL_ARG(mood_registry_read_only_error(NULL), "mood_registry_read_only_error", "r");
    MOOD_CHECK_OK(mood_registry_read_only_error(r));
    mood_registry_close(r);
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
    /* a LoRA mode outside the enum was taken, and then no LoRA was applied at all */
    mood_weighted_adapter wa = {.path = fixture("kohya/sd1_lora.safetensors"), .unet = 1, .te = 1};
    size_t unmatched = 5;
    MOOD_CHECK(mood_model_set_adapters(m, &wa, 1, (mood_lora_mode)7, &unmatched) == MOOD_EINVAL);
    MOOD_CHECK_MSG(strstr(mood_error_last(), "mood_model_set_adapters: mode 7"), "%s",
                   mood_error_last());
    MOOD_CHECK(unmatched == 0);
    MOOD_CHECK(mood_model_set_adapters(m, NULL, 0, (mood_lora_mode)-1, NULL) == MOOD_EINVAL);
    CHECK_NULL_ARG(mood_model_set_adapters(m, NULL, 1, MOOD_LORA_MERGE, NULL),
                   "mood_model_set_adapters", "adapters");
    /* a NULL path inside the array: the opening's error */
    wa.path = NULL;
    CHECK_NULL_ARG(mood_model_set_adapters(m, &wa, 1, MOOD_LORA_MERGE, NULL), "mood_adapter_open",
                   "path");
    CHECK_NULL_ARG(mood_model_short_hash(m, NULL), "mood_model_short_hash", "out");
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
               MOOD_T(test_civitai_null_arguments), MOOD_T(test_engine_null_arguments),
               MOOD_T(test_lora_null_arguments), MOOD_T(test_image_null_arguments),
               MOOD_T(test_generate_arguments), MOOD_T(test_buffer_too_small),
               MOOD_T(test_messages), MOOD_T(test_family_names_any_case),
               MOOD_T(test_weight_printed_alike))
