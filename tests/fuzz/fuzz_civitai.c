/*
 * fuzz_civitai.c: libFuzzer target for what the Civitai client parses from the network and the
 * command line: version and model records (JSON of any shape), identifiers (civitai:ID, URLs,
 * AIRs), Content-Disposition values and URL redaction. The first byte picks the parser; the rest
 * is its input. Built with -fsanitize=fuzzer (MOOD_FUZZ=ON, clang) or with driver.c.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "mood/civitai.h"
#include "registry/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void records(const char *text, size_t n)
{
    mood_civitai_version *v = NULL;
    mood_civitai_model *m = NULL;
    char *lic = NULL;
    if (mood_civitai_version_parse(&v, text, n) == 0) {
        if (!v->json || !mood_civitai_primary_file(v) != !v->n_files)
            abort();
        if (mood_civitai_license(&lic, &v->permissions) == 0)
            mood_civitai_free_string(lic);
    }
    if (mood_civitai_model_parse(&m, text, n) == 0) {
        for (size_t i = 0; i < m->n_versions; i++)
            (void)mood_civitai_family(m->versions[i].base_model);
        if (v && mood_civitai_version_add_model(v, m) != 0)
            abort();
    }
    mood_civitai_version_free(v);
    mood_civitai_model_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text;
    if (size < 1)
        return 0;
    if (!(text = mood_strndup((const char *)data + 1, size - 1)))
        return 0;
    switch (data[0] % 3) {
    case 0:
        records(text, strlen(text));
        break;
    case 1: {
        mood_civitai_ref ref;
        if (mood_civitai_parse_ref(&ref, text) == 0 &&
            (ref.version_id < 0 || ref.model_id < 0 || (!ref.version_id && !ref.model_id)))
            abort();
        (void)mood_civitai_is_ref(text);
        break;
    }
    default: {
        char *name = mood__http_disposition_name(text), *red = mood__http_redact(text);
        if (name && (strchr(name, '/') || name[0] == '.' || !name[0]))
            abort(); /* a sanitized name never escapes its folder */
        mood_free(name);
        mood_free(red);
        break;
    }
    }
    mood_free(text);
    return 0;
}
