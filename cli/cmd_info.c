/*
 * cmd_info.c: `mood info`: version, build options, compute backends and devices, and where the
 * registry lives ($MOOD_HOME, else $XDG_DATA_HOME/mood, else ~/.local/share/mood).
 */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

const char cmd_info_help[] =
    "usage: mood info [--json]\n\n"
    "Shows mood's version, how it was built, the compute backends compiled in and the GPUs\n"
    "found, and where the style registry lives.\n\n"
    "  --json    print the same as a JSON object\n\n"
    "Environment: MOOD_HOME (registry location), MOOD_DEVICE (cpu|cuda).\n";

static void registry_home(char *out, size_t size)
{
    const char *home = getenv("MOOD_HOME"), *xdg = getenv("XDG_DATA_HOME");
    if (home && *home)
        snprintf(out, size, "%s", home);
    else if (xdg && *xdg)
        snprintf(out, size, "%s/mood", xdg);
    else
        snprintf(out, size, "%s/.local/share/mood", getenv("HOME") ? getenv("HOME") : ".");
}

int cmd_info(int argc, char **argv)
{
    int json = 0, gpus;
    char home[4096], gpu_name[256];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else
            return cli_usage_error("info", "unknown option '%s'", argv[i]);
    }
    registry_home(home, sizeof home);
    gpus = mood_cuda_device_count(gpu_name, sizeof gpu_name);
    if (json) {
        cJSON *o = cJSON_CreateObject(), *backends = cJSON_AddArrayToObject(o, "backends");
        cJSON_AddStringToObject(o, "version", mood_version());
        cJSON_AddStringToObject(o, "build", mood_build_info());
        cJSON_AddItemToArray(backends, cJSON_CreateString("cpu"));
        if (mood_cuda_compiled())
            cJSON_AddItemToArray(backends, cJSON_CreateString("cuda"));
        cJSON_AddNumberToObject(o, "cuda_devices", gpus);
        if (gpus)
            cJSON_AddStringToObject(o, "cuda_device_name", gpu_name);
        cJSON_AddStringToObject(o, "registry", home);
        return cli_print_json(o);
    }
    printf("mood %s\n", mood_version());
    printf("build:     %s\n", mood_build_info());
    printf("backends:  cpu%s\n", mood_cuda_compiled() ? ", cuda" : "");
    if (mood_cuda_compiled())
        printf("gpus:      %d%s%s", gpus, gpus ? " (" : " (none found; using the CPU)",
               gpus ? gpu_name : "");
    if (mood_cuda_compiled() && gpus)
        printf(")");
    if (mood_cuda_compiled())
        printf("\n");
    printf("registry:  %s\n", home);
    return 0;
}
