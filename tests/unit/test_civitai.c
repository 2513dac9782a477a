/*
 * test_civitai.c: the Civitai client and the HTTP layer against tests/mock_civitai.py (a local
 * server on 127.0.0.1 that this program starts and stops): lookups by hash, version and model in
 * the real JSON shapes, the batch lookup by hash, identifiers, the base model map and its
 * mismatch warning, downloads with token handling, retries on 429/503, resume after a cut-off
 * body, and rejection of bytes that do not match the published SHA-256. Skips (77) when python3
 * is missing.
 */
#include <dirent.h>
#include <signal.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "common/common.h"
#include "harness.h"
#include "mood/civitai.h"
#include "mood/hash.h"
#include "registry/civitai_impl.h"
#include "registry/http.h"

#define SHA "3B4B65D6428F8F873A91DB79353C66EA470C0DE01E159CD805DFC4527EA37A59"

static pid_t server_pid;
static char server_url[64];
static char server_log[1024];

static void stop_server(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        waitpid(server_pid, NULL, 0);
        server_pid = 0;
    }
}

/* Starts the mock; returns 0, or 77 when python3 is missing, or 1. */
static int start_server(void)
{
    char port_file[1024], port[32] = "";
    const char *script = fixture("../mock_civitai.py");
    snprintf(port_file, sizeof port_file, "%s", scratch_path("port"));
    snprintf(server_log, sizeof server_log, "%s", scratch_path("server.log"));
    if (system("command -v python3 >/dev/null 2>&1") != 0)
        return 77;
    server_pid = fork();
    if (server_pid == 0) {
        execlp("python3", "python3", script, "--port-file", port_file, "--log", server_log,
               "--lifetime", "120", (char *)NULL);
        _exit(127);
    }
    atexit(stop_server);
    for (int i = 0; i < 200 && !port[0]; i++) { /* up to 10 s */
        FILE *f = fopen(port_file, "r");
        if (f) {
            if (!fgets(port, sizeof port, f))
                port[0] = '\0';
            fclose(f);
        }
        if (!port[0])
            usleep(50000);
    }
    if (!port[0]) {
        fprintf(stderr, "mock_civitai.py did not start\n");
        stop_server();
        return 1;
    }
    port[strcspn(port, "\n")] = '\0';
    snprintf(server_url, sizeof server_url, "http://127.0.0.1:%s", port);
    setenv("MOOD_CIVITAI_URL", server_url, 1);
    setenv("MOOD_HTTP_RETRY_MS", "20", 1);
    setenv("no_proxy", "127.0.0.1,localhost", 1);
    setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    unsetenv("CIVITAI_TOKEN");
    unsetenv("MOOD_HTTP_RETRIES");
    return 0;
}

static int log_has(const char *needle)
{
    size_t n;
    unsigned char *text = read_file(server_log, &n);
    int found = 0;
    if (text) {
        char *s = malloc(n + 1);
        memcpy(s, text, n);
        s[n] = '\0';
        found = strstr(s, needle) != NULL;
        free(s);
        free(text);
    }
    return found;
}

/* A fresh empty directory under the scratch directory. */
static const char *fresh_dir(const char *name)
{
    const char *d = scratch_path(name);
    mkdir(d, 0755);
    return d;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d)
        closedir(d);
    return n;
}

/* ----- offline ---------------------------------------------------------------------------------
 */

static void test_refs(void)
{
    mood_civitai_ref r;
    MOOD_CHECK_OK(mood_civitai_parse_ref(&r, "civitai:900101"));
    MOOD_CHECK(r.version_id == 900101 && r.model_id == 0);
    MOOD_CHECK_OK(mood_civitai_parse_ref(&r, "https://civitai.com/models/123?modelVersionId=456"));
    MOOD_CHECK(r.model_id == 123 && r.version_id == 456);
    MOOD_CHECK_OK(mood_civitai_parse_ref(&r, "https://civitai.com/models/123/some-slug"));
    MOOD_CHECK(r.model_id == 123 && r.version_id == 0);
    MOOD_CHECK_OK(mood_civitai_parse_ref(&r, "https://www.civitai.red/model-versions/77"));
    MOOD_CHECK(r.model_id == 0 && r.version_id == 77);
    MOOD_CHECK_OK(mood_civitai_parse_ref(&r, "https://civitai.com/api/download/models/99"));
    MOOD_CHECK(r.version_id == 99);
    MOOD_CHECK_OK(mood_civitai_parse_ref(&r, "urn:air:sd1:lora:civitai:123@456"));
    MOOD_CHECK(r.model_id == 123 && r.version_id == 456);
    MOOD_CHECK_OK(mood_civitai_parse_ref(&r, "air:sdxl:lycoris:civitai:5+7.safetensors"));
    MOOD_CHECK(r.model_id == 5 && r.version_id == 0);
    MOOD_CHECK(mood_civitai_parse_ref(&r, "civitai:abc") == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "civitai:VERSION_ID") != NULL);
    MOOD_CHECK(mood_civitai_parse_ref(&r, "urn:air:sd1:lora:huggingface:1@2") == MOOD_EINVAL);
    MOOD_CHECK(mood_civitai_parse_ref(&r, "https://example.com/models/1") == MOOD_EINVAL);
    MOOD_CHECK(mood_civitai_parse_ref(&r, "https://civitai.com/images/1") == MOOD_EINVAL);
    MOOD_CHECK(mood_civitai_parse_ref(&r, "https://civitai.com/models/9999999999") == MOOD_EINVAL);
    MOOD_CHECK(mood_civitai_parse_ref(&r, "urn:air:sd1:lora:civitai:1@2x") == MOOD_EINVAL);
    MOOD_CHECK(mood_civitai_is_ref("civitai:1") && mood_civitai_is_ref("urn:air:a:b:civitai:1"));
    MOOD_CHECK(!mood_civitai_is_ref("https://example.com/a.safetensors"));
    MOOD_CHECK(!mood_civitai_is_ref("some/file.safetensors"));
}

static void test_family(void)
{
    MOOD_CHECK(strcmp(mood_civitai_family("SD 1.5"), "sd1") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("SD 1.4"), "sd1") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("SD 2.1 768"), "sd2") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("SDXL 1.0"), "sdxl") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("Pony"), "sdxl") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("Illustrious"), "sdxl") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("NoobAI"), "sdxl") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("Flux.1 D"), "unknown") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family("SD 3.5"), "unknown") == 0);
    MOOD_CHECK(strcmp(mood_civitai_family(NULL), "unknown") == 0);
}

/* What mood__civitai_check_family says of a record's baseModel against a file's family. */
static const char *family_check(const char *base_model, const char *family, const char *source)
{
    harness_log_start();
    mood__civitai_check_family("x.safetensors", base_model, family, source);
    harness_log_stop();
    return harness_logged;
}

/* A warning only when both sides are families mood knows and they differ; a family that came
 * from Civitai itself is no word of the file's. */
static void test_family_check(void)
{
    MOOD_CHECK_MSG(!strcmp(family_check("SDXL 1.0", "sd1", "keys"),
                           "x.safetensors: Civitai lists it for SDXL 1.0 (baseModel), but the file "
                           "is an SD 1.x LoRA (from its keys); mood uses it as SD 1.x\n"),
                   "%s", harness_logged);
    MOOD_CHECK_MSG(strstr(family_check("SD 1.5", "sdxl", "modelspec.architecture"),
                          "an SDXL LoRA (from its modelspec.architecture); mood uses it as SDXL"),
                   "%s", harness_logged);
    MOOD_CHECK_MSG(strstr(family_check("Pony", "sd2", "ss_v2"), "for Pony (baseModel)"), "%s",
                   harness_logged);
    MOOD_CHECK(!*family_check("Pony", "sdxl", "keys"));      /* Pony is SDXL */
    MOOD_CHECK(!*family_check("SD 1.5 LCM", "sd1", "keys")); /* the same family */
    MOOD_CHECK(!*family_check("Flux.1 D", "sd1", "keys"));   /* Civitai's: unknown */
    MOOD_CHECK(!*family_check("Other", "sdxl", "keys"));
    MOOD_CHECK(!*family_check(NULL, "sd1", "keys"));
    MOOD_CHECK(!*family_check("SDXL 1.0", "unknown", "keys")); /* the file's: unknown */
    MOOD_CHECK(!*family_check("SDXL 1.0", NULL, NULL));
    MOOD_CHECK(!*family_check("SD 1.5", "sdxl", "civitai")); /* Civitai's word for the file */
}

static void check_name(const char *header, const char *want)
{
    char *got = mood__http_disposition_name(header);
    MOOD_CHECK_MSG((!got && !want) || (got && want && strcmp(got, want) == 0), "%s -> %s", header,
                   got ? got : "(null)");
    mood_free(got);
}

static void test_disposition(void)
{
    check_name("attachment; filename=\"mock_ink_style.safetensors\"", "mock_ink_style.safetensors");
    check_name("attachment; filename=plain.safetensors", "plain.safetensors");
    check_name("attachment; filename=\"a.safetensors\"; filename*=UTF-8''%E2%82%AC%20rates.st",
               "\xe2\x82\xac rates.st");
    check_name("attachment; filename*=iso-8859-1'en'%A3.bin", "\xc2\xa3.bin");
    check_name("attachment; filename=\"../../etc/passwd\"", "_.._etc_passwd");
    check_name("attachment; filename=\"..\\\\x\"", "_x");
    check_name("attachment; filename=\".hidden\"", "hidden");
    check_name("attachment; filename=\"...\"", NULL);
    check_name("attachment", NULL);
    check_name(NULL, NULL);
    char *r = mood__http_redact("https://h/x?a=1&token=SECRET&b=2");
    MOOD_CHECK(r && strcmp(r, "https://h/x?a=1&token=***&b=2") == 0);
    mood_free(r);
    r = mood__http_redact("https://h/x?mytoken=1");
    MOOD_CHECK(r && strcmp(r, "https://h/x?mytoken=1") == 0);
    mood_free(r);
}

static void test_parse_shapes(void)
{
    /* allowCommercialUse in its three shapes; missing fields stay NULL / -1 */
    const char *a = "{\"id\":1,\"name\":\"m\",\"allowCommercialUse\":\"{Image,RentCivit}\","
                    "\"modelVersions\":[{\"id\":2,\"baseModel\":\"Pony\"}]}";
    const char *b = "{\"id\":1,\"allowCommercialUse\":\"Sell\",\"allowNoCredit\":false}";
    mood_civitai_model *m = NULL;
    mood_civitai_version *v = NULL;
    char *lic = NULL;
    MOOD_CHECK_OK(mood_civitai_model_parse(&m, a, strlen(a)));
    if (m) {
        MOOD_CHECK(strcmp(m->permissions.allow_commercial_use, "Image,RentCivit") == 0);
        MOOD_CHECK(m->permissions.allow_no_credit == -1 && m->n_versions == 1);
        MOOD_CHECK(m->versions[0].model_id == 1 && m->versions[0].air &&
                   strcmp(m->versions[0].air, "urn:air:sdxl:other:civitai:1@2") == 0);
    }
    mood_civitai_model_free(m);
    MOOD_CHECK_OK(mood_civitai_model_parse(&m, b, strlen(b)));
    if (m) {
        MOOD_CHECK(strcmp(m->permissions.allow_commercial_use, "Sell") == 0);
        MOOD_CHECK_OK(mood_civitai_license(&lic, &m->permissions));
        MOOD_CHECK(lic && strcmp(lic, "Civitai: credit required; commercial use: Sell") == 0);
        mood_civitai_free_string(lic);
    }
    mood_civitai_model_free(m);
    MOOD_CHECK(mood_civitai_version_parse(&v, "[1]", 3) == MOOD_EFORMAT && !v);
    MOOD_CHECK(mood_civitai_version_parse(&v, "{\"id\":\"x\"}", 10) == MOOD_EFORMAT);
    MOOD_CHECK(mood_civitai_model_parse(&m, "not json", 8) == MOOD_EFORMAT && !m);
}

/* Every allocation of the parsers fails in turn: each must give MOOD_ENOMEM and free what it
 * had (ASan's leak check sees the rest). */
static void test_alloc_failures(void)
{
    const char *json =
        "{\"id\":9,\"modelId\":8,\"name\":\"v\",\"baseModel\":\"SDXL 1.0\","
        "\"trainedWords\":[\"a\",\"b\"],\"model\":{\"name\":\"m\",\"type\":\"LoCon\"},"
        "\"files\":[{\"name\":\"f\",\"hashes\":{\"SHA256\":\"AA\",\"CRC32\":\"BB\"},"
        "\"metadata\":{\"format\":\"SafeTensor\"}}],\"images\":[{\"url\":\"u\",\"type\":\"image\"}]"
        ","
        "\"allowCommercialUse\":[\"Image\"],\"tags\":[\"t\"],\"modelVersions\":[{\"id\":10}]}";
    int ok = 0;
    for (long n = 1; n < 200 && !ok; n++) {
        mood_civitai_version *v = NULL;
        mood_civitai_model *m = NULL;
        int e1, e2, e3 = 0;
        mood__alloc_fail_at(n);
        e1 = mood_civitai_version_parse(&v, json, strlen(json));
        e2 = mood_civitai_model_parse(&m, json, strlen(json));
        if (!e1 && !e2)
            e3 = mood_civitai_version_add_model(v, m);
        mood__alloc_fail_at(0);
        MOOD_CHECK((e1 == 0 || e1 == MOOD_ENOMEM) && (e2 == 0 || e2 == MOOD_ENOMEM));
        MOOD_CHECK(e3 == 0 || e3 == MOOD_ENOMEM);
        MOOD_CHECK((e1 == 0) == (v != NULL) && (e2 == 0) == (m != NULL));
        ok = !e1 && !e2 && !e3;
        if (ok)
            MOOD_CHECK(v->air && strcmp(v->air, "urn:air:sdxl:lycoris:civitai:8@9") == 0);
        mood_civitai_version_free(v);
        mood_civitai_model_free(m);
    }
    MOOD_CHECK(ok);
}

/* ----- against the mock ------------------------------------------------------------------------
 */

static void check_v1(const mood_civitai_version *v)
{
    const mood_civitai_file *f;
    MOOD_CHECK(v->id == 900101 && v->model_id == 900001);
    MOOD_CHECK(v->name && strcmp(v->name, "v1.0") == 0);
    MOOD_CHECK(v->base_model && strcmp(v->base_model, "SD 1.5") == 0);
    MOOD_CHECK(v->air && strcmp(v->air, "urn:air:sd1:lora:civitai:900001@900101") == 0);
    MOOD_CHECK(v->n_trained_words == 1 && strcmp(v->trained_words[0], "inkwash style") == 0);
    MOOD_CHECK(v->model_name && strcmp(v->model_name, "Mock Ink Wash Style") == 0);
    MOOD_CHECK(v->model_type && strcmp(v->model_type, "LORA") == 0 && v->model_nsfw == 0);
    MOOD_CHECK(v->n_files == 1 && v->n_images == 2 && !v->early_access);
    f = mood_civitai_primary_file(v);
    MOOD_CHECK(f && f->primary && strcmp(f->sha256, SHA) == 0 &&
               strcmp(f->autov2, "3B4B65D642") == 0);
    MOOD_CHECK(f && strcmp(f->autov3, "E00E5EB94441") == 0 && strcmp(f->crc32, "D04AE41E") == 0);
    MOOD_CHECK(f && f->blake3 && !f->autov1 && f->size_kb == 0.21484375);
    MOOD_CHECK(f && strcmp(f->name, "mock_ink_style.safetensors") == 0 && f->download_url);
    MOOD_CHECK(v->images[0].nsfw_level == 1 && v->images[1].nsfw_level == 8);
    MOOD_CHECK(v->images[0].width == 512 && v->images[0].height == 768);
    MOOD_CHECK(v->json && strstr(v->json, "\"trainedWords\""));
}

static void test_lookups(mood_civitai *c)
{
    static const char *const hashes[] = {
        SHA,          "3b4b65d6428f8f873a91db79353c66ea470c0de01e159cd805dfc4527ea37a59",
        "3B4B65D642", "e00e5eb94441",
        "D04AE41E",   "06F644A02FCF0BEFD0212B14ABC91ABC9E066D7949E05A8D731526533E7B7C25"};
    mood_civitai_version *v = NULL;
    mood_civitai_model *m = NULL;
    for (size_t i = 0; i < sizeof hashes / sizeof hashes[0]; i++) {
        MOOD_CHECK_OK(mood_civitai_version_by_hash(&v, c, hashes[i]));
        if (v)
            check_v1(v);
        mood_civitai_version_free(v);
        v = NULL;
    }
    MOOD_CHECK(mood_civitai_version_by_hash(&v, c, "0000000000000000") == MOOD_ENOTFOUND && !v);
    MOOD_CHECK(strstr(mood_error_last(), "/api/v1/model-versions/by-hash/0000000000000000") &&
               strstr(mood_error_last(), "404") && strstr(mood_error_last(), "Model not found"));
    MOOD_CHECK(mood_civitai_version_by_hash(&v, c, "xyz") == MOOD_EINVAL);
    MOOD_CHECK(log_has("ua=mood/"));

    MOOD_CHECK_OK(mood_civitai_version_get(&v, c, 900101));
    if (v)
        check_v1(v);
    mood_civitai_version_free(v);
    MOOD_CHECK(mood_civitai_version_get(&v, c, 424242) == MOOD_ENOTFOUND);

    MOOD_CHECK_OK(mood_civitai_model_get(&m, c, 900001));
    if (m) {
        MOOD_CHECK(m->n_versions == 2 && m->versions[0].id == 900107 &&
                   m->versions[1].id == 900101);
        MOOD_CHECK(m->description && strstr(m->description, "Test LoRA"));
        MOOD_CHECK(m->permissions.allow_no_credit == 1 && m->permissions.allow_derivatives == 1);
        MOOD_CHECK(m->permissions.allow_different_license == 0 && m->n_tags == 2);
        MOOD_CHECK(strcmp(m->permissions.allow_commercial_use, "Image") == 0);
    }
    mood_civitai_model_free(m);
    MOOD_CHECK(mood_civitai_model_get(&m, c, 424242) == MOOD_ENOTFOUND);
    MOOD_CHECK(strstr(mood_error_last(), "No model with id 424242"));
}

/* The batch lookup: the records of the hashes Civitai knows, matched by the caller; a hash that
 * is not a full SHA-256 or too many of them refused before any request. */
static void test_batch_lookup(mood_civitai *c)
{
    const char *h[MOOD_CIVITAI_BATCH_MAX + 1];
    mood_civitai_version *v = NULL;
    size_t n = 9;
    h[0] = "0000000000000000000000000000000000000000000000000000000000000000";
    h[1] = "3b4b65d6428f8f873a91db79353c66ea470c0de01e159cd805dfc4527ea37a59"; /* any case */
    MOOD_CHECK_OK(mood_civitai_versions_by_hash(&v, &n, c, h, 2));
    MOOD_CHECK(n == 1 && v && v[0].id == 900101);
    if (n == 1 && v)
        check_v1(&v[0]);
    mood_civitai_versions_free(v, n);
    MOOD_CHECK(log_has("POST /api/v1/model-versions/by-hash n=2 "));
    MOOD_CHECK_OK(mood_civitai_versions_by_hash(&v, &n, c, h, 1));
    MOOD_CHECK(n == 0 && !v); /* unknown: no record, no error */
    MOOD_CHECK_OK(mood_civitai_versions_by_hash(&v, &n, c, h, 0));
    MOOD_CHECK(n == 0 && !v && !log_has("n=0"));
    h[1] = "3B4B65D642";
    MOOD_CHECK(mood_civitai_versions_by_hash(&v, &n, c, h, 2) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "'3B4B65D642' is not a SHA-256"));
    for (int i = 0; i <= MOOD_CIVITAI_BATCH_MAX; i++)
        h[i] = h[0];
    MOOD_CHECK(mood_civitai_versions_by_hash(&v, &n, c, h, MOOD_CIVITAI_BATCH_MAX + 1) ==
               MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "at most 100"));
    MOOD_CHECK(!log_has(" n=101 ") && !log_has(" n=-"));
}

static void test_resolve(mood_civitai *c)
{
    mood_civitai_ref r = {900001, 0};
    mood_civitai_version *v = NULL;
    char *lic = NULL;
    MOOD_CHECK_OK(mood_civitai_resolve(&v, c, &r)); /* the latest */
    MOOD_CHECK(v && v->id == 900107 && v->model_description && v->n_tags == 2);
    if (v) {
        MOOD_CHECK_OK(mood_civitai_license(&lic, &v->permissions));
        MOOD_CHECK(lic && strstr(lic, "credit not required") &&
                   strstr(lic, "commercial use: Image"));
        mood_civitai_free_string(lic);
    }
    mood_civitai_version_free(v);
    r.model_id = 0;
    r.version_id = 900101;
    MOOD_CHECK_OK(mood_civitai_resolve(&v, c, &r));
    MOOD_CHECK(v && v->id == 900101 && v->permissions.allow_no_credit == 1);
    mood_civitai_version_free(v);
    r.model_id = 5;
    MOOD_CHECK(mood_civitai_resolve(&v, c, &r) == MOOD_EINVAL && !v);
}

static void test_download_auth(mood_civitai *c)
{
    mood_civitai_version *v = NULL;
    const char *dir = fresh_dir("dl-auth");
    char *path = NULL;
    MOOD_CHECK_OK(mood_civitai_version_get(&v, c, 900101));
    if (!v)
        return;
    /* no token */
    MOOD_CHECK(mood_civitai_download(&path, c, v, dir, NULL, NULL) == MOOD_EIO && !path);
    MOOD_CHECK(strstr(mood_error_last(), "needs a Civitai API token: set CIVITAI_TOKEN"));
    MOOD_CHECK(strstr(mood_error_last(), "/api/download/models/900101"));
    MOOD_CHECK(count_entries(dir) == 0);
    /* a wrong token: refused, and never shown */
    setenv("CIVITAI_TOKEN", "SECRET-bad-key", 1);
    MOOD_CHECK(mood_civitai_download(&path, c, v, dir, NULL, NULL) == MOOD_EIO);
    MOOD_CHECK(strstr(mood_error_last(), "was refused") && !strstr(mood_error_last(), "SECRET"));
    /* the right one; storage must not see it (it answers 403 when it does) */
    setenv("CIVITAI_TOKEN", "good-key", 1);
    MOOD_CHECK_OK(mood_civitai_download(&path, c, v, dir, NULL, NULL));
    if (path) {
        mood_file_hashes h;
        MOOD_CHECK(strcmp(mood_path_basename(path), "mock_ink_style.safetensors") == 0);
        MOOD_CHECK_OK(mood_hash_file(&h, path, NULL, NULL));
        MOOD_CHECK(strcasecmp(h.sha256, SHA) == 0);
    }
    MOOD_CHECK(count_entries(dir) == 1);
    MOOD_CHECK(log_has("GET /api/download/models/900101 auth=yes"));
    MOOD_CHECK(log_has("GET /storage/noauth/mock_ink_style.safetensors auth=no"));
    MOOD_CHECK(!log_has("/storage/noauth/mock_ink_style.safetensors auth=yes"));
    mood_free(path);
    mood_civitai_version_free(v);
}

static void expect_download_error(mood_civitai *c, long long id, int code, const char *words)
{
    mood_civitai_version *v = NULL;
    const char *dir = fresh_dir("dl-err");
    char *path = NULL;
    MOOD_CHECK_OK(mood_civitai_version_get(&v, c, id));
    if (!v)
        return;
    MOOD_CHECK_MSG(mood_civitai_download(&path, c, v, dir, NULL, NULL) == code, "%lld", id);
    MOOD_CHECK_MSG(strstr(mood_error_last(), words), "%s", mood_error_last());
    MOOD_CHECK(!path && count_entries(dir) == 0);
    mood_civitai_version_free(v);
}

static void test_download_errors(mood_civitai *c)
{
    setenv("CIVITAI_TOKEN", "good-key", 1);
    expect_download_error(c, 900102, MOOD_EIO, "early access");
    expect_download_error(c, 900102, MOOD_EIO, "2026-12-31");
    expect_download_error(c, 900103, MOOD_ENOTFOUND, "410 Gone");
    /* bytes that do not match the published SHA-256: nothing kept */
    expect_download_error(c, 900104, MOOD_EIO, "SHA-256");
}

static int progress_calls;
static uint64_t progress_last;

static int count_progress(const mood_progress *p, void *payload)
{
    (void)payload;
    progress_calls++;
    progress_last = p->done;
    return 0;
}

static void test_resume(mood_civitai *c)
{
    mood_civitai_version *v = NULL;
    const char *dir = fresh_dir("dl-cut");
    char *path = NULL;
    setenv("CIVITAI_TOKEN", "good-key", 1);
    MOOD_CHECK_OK(mood_civitai_version_get(&v, c, 900105));
    if (!v)
        return;
    /* no retries: the cut-off leaves the partial file */
    setenv("MOOD_HTTP_RETRIES", "0", 1);
    MOOD_CHECK(mood_civitai_download(&path, c, v, dir, NULL, NULL) == MOOD_EIO);
    MOOD_CHECK(count_entries(dir) == 2); /* the part, and its ETag for the If-Range of a resume */
    unsetenv("MOOD_HTTP_RETRIES");
    /* the next attempt resumes with Range and completes */
    MOOD_CHECK_OK(mood_civitai_download(&path, c, v, dir, count_progress, NULL));
    MOOD_CHECK(log_has("GET /storage/cut/mock_ink_style.safetensors auth=no range=bytes=110-"));
    MOOD_CHECK(count_entries(dir) == 1 && path);
    MOOD_CHECK(progress_calls > 0 && progress_last == 220);
    mood_free(path);
    path = NULL;
    /* within one call, a retry resumes too */
    dir = fresh_dir("dl-cut2");
    MOOD_CHECK_OK(mood_civitai_download(&path, c, v, dir, NULL, NULL));
    MOOD_CHECK(path && count_entries(dir) == 1);
    mood_free(path);
    mood_civitai_version_free(v);
}

/* A stale partial download and a server that ignores Range: the download starts over. */
static void test_range_ignored(mood_civitai *c)
{
    const char *dir = fresh_dir("dl-norange");
    char url[256], hex[65], part[1200], *path = NULL;
    unsetenv("CIVITAI_TOKEN");
    snprintf(url, sizeof url, "%s/storage/norange/mock_ink_style.safetensors", server_url);
    mood_sha256_hex(hex, url, strlen(url));
    snprintf(part, sizeof part, "%s/.mood-dl-%.16s.part", dir, hex);
    MOOD_CHECK(write_file(part, "garbage garbage garbage", 23) == 0);
    MOOD_CHECK_OK(mood_civitai_download_url(&path, c, url, dir, SHA, NULL, NULL));
    MOOD_CHECK(log_has("GET /storage/norange/mock_ink_style.safetensors auth=no range=bytes=23-"));
    MOOD_CHECK(path && count_entries(dir) == 1);
    mood_free(path);
    /* not an http(s) URL */
    MOOD_CHECK(mood_civitai_download_url(&path, c, "ftp://x/y", dir, NULL, NULL, NULL) ==
               MOOD_EINVAL);
}

static void test_retries(mood_civitai *c)
{
    mood_civitai_version *v = NULL;
    const char *dir = fresh_dir("dl-busy");
    char *path = NULL;
    setenv("CIVITAI_TOKEN", "good-key", 1);
    MOOD_CHECK_OK(mood_civitai_version_get(&v, c, 900106)); /* 429, then the record */
    MOOD_CHECK(v && v->id == 900106);
    if (v)
        MOOD_CHECK_OK(mood_civitai_download(&path, c, v, dir, NULL, NULL)); /* 429, then 307 */
    MOOD_CHECK(path != NULL);
    mood_free(path);
    mood_civitai_version_free(v);
    v = NULL;
    MOOD_CHECK_OK(mood_civitai_version_get(&v, c, 900108)); /* 503 twice, then the record */
    MOOD_CHECK(v && v->id == 900108);
    mood_civitai_version_free(v);
    v = NULL;
}

static void test_with_server(void)
{
    mood_civitai *c = NULL;
    int rc = start_server();
    if (rc) {
        if (rc == 77) {
            printf("python3 not found: skipping the mock Civitai tests\n");
            exit(77);
        }
        MOOD_CHECK(rc == 0);
        return;
    }
    MOOD_CHECK_OK(mood_civitai_open(&c, NULL));
    if (c) {
        MOOD_CHECK(strcmp(mood_civitai_base(c), server_url) == 0);
        test_lookups(c);
        test_batch_lookup(c);
        test_resolve(c);
        test_download_auth(c);
        test_download_errors(c);
        test_resume(c);
        test_range_ignored(c);
        test_retries(c);
    }
    mood_civitai_close(c);
    stop_server();
}

MOOD_TEST_MAIN(MOOD_T(test_refs), MOOD_T(test_family), MOOD_T(test_family_check),
               MOOD_T(test_disposition), MOOD_T(test_parse_shapes), MOOD_T(test_alloc_failures),
               MOOD_T(test_with_server))
