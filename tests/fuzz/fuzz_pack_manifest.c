/*
 * fuzz_pack_manifest.c: libFuzzer target for a style pack's manifest.json validator
 * (styles/pack_manifest.c). Whatever it accepts must hold only file names the archive reader
 * may create and lowercase hex SHA-256s: a validator bug that lets a path trick through aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "styles/pack_archive.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mood__pack_manifest m;
    if (mood__pack_manifest_parse(&m, (const char *)data, size) != 0) {
        if (m.json || m.files)
            abort(); /* a failed parse leaves nothing */
        return 0;
    }
    for (size_t i = 0; i < m.n_files; i++) {
        if (!mood__pack_file_name_ok(m.files[i].name) || !mood__pack_hex_ok(m.files[i].sha256) ||
            strstr(m.files[i].name, "..") == m.files[i].name || m.files[i].name[0] == '/')
            abort();
        for (size_t j = 0; j < i; j++) {
            if (strcmp(m.files[i].name, m.files[j].name) == 0)
                abort(); /* each file listed once */
        }
    }
    mood__pack_manifest_dispose(&m);
    return 0;
}
