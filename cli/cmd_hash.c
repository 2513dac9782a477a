/*
 * cmd_hash.c: `mood hash FILE [--json]`: the hashes by which A1111, kohya and Civitai know a
 * model file (lora-formats.md §7): AutoV1, AutoV2 (= SHA-256), AutoV3 (SHA-256 of the tensor
 * data), CRC32, and the sshs_* values embedded in the metadata, with a check of the embedded
 * sshs_model_hash against the computed AutoV3. A1111 reports the embedded value verbatim when it
 * is present (§7.6), so a stale, LyCORIS "0x..." or empty-input value makes the file show up
 * under a hash Civitai does not know: that is what the check flags.
 */
#include <ctype.h>
#include <string.h>

#include "cli/cli.h"
#include "mood/hash.h"

const char cmd_hash_help[] =
    "usage: mood hash FILE [--json]\n\n"
    "Computes, in one pass over FILE, the hashes used to identify models and LoRAs:\n"
    "  AutoV1   SHA-256 of bytes [1 MiB, 1 MiB + 64 KiB), 8 hex (Civitai lists it only for\n"
    "           files of at least 2 MiB)\n"
    "  AutoV2   first 10 hex of the SHA-256 of the whole file (A1111 'Model hash')\n"
    "  AutoV3   first 12 hex of the SHA-256 of the bytes after the safetensors header (kohya\n"
    "           addnet hash, A1111 LoRA hash; survives metadata edits)\n"
    "  CRC32    in Civitai's byte order (zlib's order shown beside it)\n"
    "and shows the sshs_model_hash / sshs_legacy_hash stored in the metadata, flagging an\n"
    "sshs_model_hash that differs from the computed AutoV3 (A1111 reports the stored value).\n"
    "Hashes are lower-case hex, as A1111 and kohya write them (Civitai finds them in any case).\n\n"
    "  --json    print the same as a JSON object (autov3: all 64 hex, as mood inspect and\n"
    "            the registry give it; autov3_short: the 12 shown)\n\n"
    "Exit status: 0 ok, 1 bad usage or FILE not a regular file (a folder, a pipe, a device),\n"
    "2 file missing or unreadable.\n";

#define BAR_MIN_BYTES (64u << 20)

/* Draws the bar only for files big enough to take a noticeable time. */
static int hash_progress(const mood_progress *p, void *payload)
{
    return p->total >= BAR_MIN_BYTES ? cli_progress(p, payload) : 0;
}

/* Hex case: one rule for every hash mood computes, in the text and in --json: lower-case. That
 * is how A1111 writes them into infotext ("Model hash: 3b4b65d642", "Lora hashes"), how kohya
 * stores sshs_* in metadata (Python hexdigest(), lora-formats.md section 7), how sha256sum and
 * `mood inspect` / `mood show` print them, and what the registry stores. Civitai's pages and its
 * files[].hashes show them upper-case, but its by-hash lookup upper-cases what it is given
 * (ecosystem.md section 1.6): a lower-case hash finds the same file, so matching Civitai's
 * display is not worth a second rule. The sshs_* values are shown as the file stores them:
 * they are the file's text, and A1111 reports them verbatim. */
static void lower(char *dst, const char *src, size_t n)
{
    size_t i = 0;
    for (; i < n && src[i]; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

/* Whether the file at path is a checkpoint (a base model), not a LoRA. */
static int is_checkpoint(const char *path)
{
    mood_st_file *f = NULL;
    int yes = mood_st_open(&f, path) == 0 && mood_file_kind_of(f) == MOOD_KIND_CHECKPOINT;
    mood_st_close(f);
    return yes;
}

/* What A1111 shows as the file's hash: for a checkpoint its "Model hash", the first 10 hex of
 * the SHA-256 (AutoV2); for a LoRA 12 characters, the embedded value when present, else AutoV3. */
static void a1111_shorthash(char out[13], const mood_file_hashes *h, int checkpoint)
{
    const char *src = h->sshs_model_hash[0] ? h->sshs_model_hash
                      : h->is_safetensors   ? h->autov3
                                            : h->sha256;
    if (checkpoint)
        snprintf(out, 13, "%.10s", h->sha256);
    else
        snprintf(out, 13, "%.12s", src);
    for (char *c = out; *c; c++)
        *c = (char)tolower((unsigned char)*c);
}

static int print_json(const char *path, const mood_file_hashes *h, int checkpoint)
{
    cJSON *o = cJSON_CreateObject();
    char buf[65], a1111[13];
    const char *why, *status = mood_sshs_status(h, &why);
    cJSON_AddStringToObject(o, "file", path);
    cJSON_AddNumberToObject(o, "size", (double)h->size);
    lower(buf, h->autov1, 8);
    cJSON_AddStringToObject(o, "autov1", buf);
    cJSON_AddBoolToObject(o, "autov1_civitai", h->autov1_civitai);
    lower(buf, h->sha256, 10);
    cJSON_AddStringToObject(o, "autov2", buf);
    lower(buf, h->sha256, 64);
    cJSON_AddStringToObject(o, "sha256", buf);
    cJSON_AddBoolToObject(o, "is_safetensors", h->is_safetensors);
    if (h->is_safetensors) {
        /* the field names of mood inspect --json and the registry's: full hash, then the 12 hex
         * A1111 and Civitai show */
        lower(buf, h->autov3, 64);
        cJSON_AddStringToObject(o, "autov3", buf);
        lower(buf, h->autov3, 12);
        cJSON_AddStringToObject(o, "autov3_short", buf);
    }
    lower(buf, h->crc32, 8);
    cJSON_AddStringToObject(o, "crc32", buf);
    lower(buf, h->crc32_zlib, 8);
    cJSON_AddStringToObject(o, "crc32_zlib", buf);
    if (h->sshs_model_hash[0])
        cJSON_AddStringToObject(o, "sshs_model_hash", h->sshs_model_hash);
    if (h->sshs_legacy_hash[0])
        cJSON_AddStringToObject(o, "sshs_legacy_hash", h->sshs_legacy_hash);
    cJSON_AddStringToObject(o, "sshs_model_hash_status", status);
    a1111_shorthash(a1111, h, checkpoint);
    cJSON_AddStringToObject(o, "a1111_shorthash", a1111);
    return cli_print_json(o);
}

static void print_text(const char *path, const mood_file_hashes *h, int checkpoint)
{
    char buf[65], zlib[9], a1111[13];
    const char *why;
    (void)mood_sshs_status(h, &why);
    printf("file:             %s\n", path);
    printf("size:             %llu bytes\n", (unsigned long long)h->size);
    lower(buf, h->autov1, 8);
    printf("AutoV1:           %s%s\n", buf,
           h->autov1_civitai ? "" : "  (Civitai lists AutoV1 only for files >= 2 MiB)");
    lower(buf, h->sha256, 10);
    printf("AutoV2:           %s\n", buf);
    lower(buf, h->sha256, 64);
    printf("SHA256:           %s\n", buf);
    if (h->is_safetensors) {
        lower(buf, h->autov3, 12);
        printf("AutoV3:           %s\n", buf);
        lower(buf, h->autov3, 64);
        printf("AutoV3 (full):    %s\n", buf);
    } else {
        printf("AutoV3:           (not a safetensors file)\n");
    }
    lower(buf, h->crc32, 8);
    lower(zlib, h->crc32_zlib, 8);
    printf("CRC32:            %s  (zlib order %s)\n", buf, zlib);
    printf("sshs_model_hash:  %s%s%s\n", h->sshs_model_hash[0] ? h->sshs_model_hash : "(none)",
           why[0] ? "  " : "", why);
    printf("sshs_legacy_hash: %s\n", h->sshs_legacy_hash[0] ? h->sshs_legacy_hash : "(none)");
    a1111_shorthash(a1111, h, checkpoint);
    printf("A1111 shows:      %s%s\n", a1111,
           checkpoint ? "  (a checkpoint: its \"Model hash\", AutoV2)" : "");
}

int cmd_hash(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0, err;
    mood_file_hashes h;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] == '-' && argv[i][1])
            return cli_unknown_option("hash", argv[i]);
        else if (path)
            return cli_usage_error("hash", "expected one FILE, got '%s' too", argv[i]);
        else
            path = argv[i];
    }
    if (!path)
        return cli_usage_error("hash", "missing FILE");
    err = mood_hash_file(&h, path, hash_progress, NULL);
    cli_progress_done();
    if (err)
        return cli_fail(err);
    if (json)
        return print_json(path, &h, is_checkpoint(path));
    print_text(path, &h, is_checkpoint(path));
    return 0;
}
