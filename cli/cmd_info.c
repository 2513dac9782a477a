/*
 * cmd_info.c: `mood info`: version, build options, compute backends (the CUDA backend with its
 * runtime, driver, cuBLAS and cuDNN versions), the GPUs found (name, memory, SM count, compute
 * capability), the device commands would compute on, and where the registry lives ($MOOD_HOME,
 * else $XDG_DATA_HOME/mood, else ~/.local/share/mood).
 */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

const char cmd_info_help[] =
    "usage: mood info [--json]\n\n"
    "Shows mood's version, how it was built, the compute backends compiled in and the GPUs\n"
    "found, the device commands compute on, and where the style registry lives.\n\n"
    "  --json    print the same as a JSON object\n\n"
    "Environment: MOOD_HOME (registry location), MOOD_DEVICE (cpu|cuda|cuda:N|auto; the global\n"
    "option 'mood --device ...' overrides it).\n";

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

/* "13.0" from 13000 (CUDA's encoding: major * 1000 + minor * 10). */
static void cuda_version(char *out, size_t size, int v)
{
    snprintf(out, size, "%d.%d", v / 1000, v % 1000 / 10);
}

/* "13.1.0" from 130100 (major * 10000 + minor * 100 + patch: cuBLAS and cuDNN 9). */
static void lib_version(char *out, size_t size, long v)
{
    snprintf(out, size, "%ld.%ld.%ld", v / 10000, v % 10000 / 100, v % 100);
}

/* The device line: the choice, or why the choice asked for cannot be had. */
static void device_text(char *out, size_t size, int *ok, mood_device *d)
{
    *ok = mood_device_select(d, cli_device_request) == 0;
    if (!*ok)
        snprintf(out, size, "error: %s", mood_error_last());
    else if (d->kind == MOOD_DEVICE_CUDA)
        snprintf(out, size, "cuda:%d (%s)", d->index, d->requested ? "asked for" : "default");
    else
        snprintf(out, size, "cpu (%s)", d->requested ? "asked for" : d->notice);
}

static int info_json(const char *home, const mood_cuda_backend_info *bi, int gpus)
{
    cJSON *o = cJSON_CreateObject(), *backends = cJSON_AddArrayToObject(o, "backends");
    char text[512], gpu_name[256];
    mood_device d;
    int ok;
    cJSON_AddStringToObject(o, "version", mood_version());
    cJSON_AddStringToObject(o, "build", mood_build_info());
    cJSON_AddItemToArray(backends, cJSON_CreateString("cpu"));
    if (bi->compiled) {
        cJSON *c = cJSON_AddObjectToObject(o, "cuda");
        cJSON_AddItemToArray(backends, cJSON_CreateString("cuda"));
        cJSON_AddNumberToObject(c, "runtime_version", bi->runtime_version);
        cJSON_AddNumberToObject(c, "driver_version", bi->driver_version);
        cJSON_AddNumberToObject(c, "cublas_version", bi->cublas_version);
        cJSON_AddNumberToObject(c, "cudnn_version", (double)bi->cudnn_version);
        cJSON_AddStringToObject(c, "archs", bi->archs);
    }
    mood_cuda_device_count(gpu_name, sizeof gpu_name);
    cJSON_AddNumberToObject(o, "cuda_devices", gpus);
    if (gpus)
        cJSON_AddStringToObject(o, "cuda_device_name", gpu_name);
    cJSON *list = cJSON_AddArrayToObject(o, "gpus");
    for (int i = 0; i < gpus; i++) {
        mood_gpu_info g;
        if (mood_gpu_info_get(&g, i) != 0)
            continue;
        cJSON *e = cJSON_CreateObject();
        char cc[16];
        snprintf(cc, sizeof cc, "%d.%d", g.cc_major, g.cc_minor);
        cJSON_AddNumberToObject(e, "index", i);
        cJSON_AddStringToObject(e, "name", g.name);
        cJSON_AddNumberToObject(e, "memory_bytes", (double)g.total_memory);
        cJSON_AddNumberToObject(e, "sm_count", g.sm_count);
        cJSON_AddStringToObject(e, "compute_capability", cc);
        cJSON_AddItemToArray(list, e);
    }
    device_text(text, sizeof text, &ok, &d);
    cJSON *dev = cJSON_AddObjectToObject(o, "device");
    if (ok) {
        cJSON_AddStringToObject(dev, "kind", mood_device_kind_name(d.kind));
        cJSON_AddNumberToObject(dev, "index", d.index);
        cJSON_AddBoolToObject(dev, "requested", d.requested);
        if (d.notice[0])
            cJSON_AddStringToObject(dev, "notice", d.notice);
    } else {
        cJSON_AddStringToObject(dev, "error", mood_error_last());
    }
    cJSON_AddStringToObject(o, "registry", home);
    return cli_print_json(o);
}

static void print_cuda(const mood_cuda_backend_info *bi)
{
    char rt[32], drv[32], blas[32], dnn[32];
    cuda_version(rt, sizeof rt, bi->runtime_version);
    if (bi->driver_version)
        cuda_version(drv, sizeof drv, bi->driver_version);
    else
        snprintf(drv, sizeof drv, "none");
    if (bi->cublas_version)
        lib_version(blas, sizeof blas, bi->cublas_version);
    else
        snprintf(blas, sizeof blas, "not found");
    if (bi->cudnn_version)
        lib_version(dnn, sizeof dnn, (long)bi->cudnn_version);
    else
        snprintf(dnn, sizeof dnn, "not found");
    printf("backends:  cpu, cuda (runtime %s, driver %s, cuBLAS %s, cuDNN %s; sm %s)\n", rt, drv,
           blas, dnn, bi->archs);
}

int cmd_info(int argc, char **argv)
{
    int json = 0, gpus, ok;
    char home[4096], text[512];
    mood_cuda_backend_info bi;
    mood_device d;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] == '-')
            return cli_unknown_option("info", argv[i]);
        else /* a file: inspect describes one */
            return cli_usage_error("info",
                                   "unexpected argument '%s': info describes mood itself ('mood "
                                   "inspect FILE' describes a file)",
                                   argv[i]);
    }
    registry_home(home, sizeof home);
    gpus = mood_cuda_device_count(NULL, 0);
    mood_cuda_backend_info_get(&bi);
    if (json)
        return info_json(home, &bi, gpus);
    printf("mood %s\n", mood_version());
    printf("build:     %s\n", mood_build_info());
    if (bi.compiled)
        print_cuda(&bi);
    else
        printf("backends:  cpu (built without CUDA)\n");
    printf("gpus:      %d\n", gpus);
    for (int i = 0; i < gpus; i++) {
        mood_gpu_info g;
        if (mood_gpu_info_get(&g, i) == 0)
            printf("  gpu %d:   %s, %.1f GiB, %d SMs, compute capability %d.%d\n", i, g.name,
                   (double)g.total_memory / (1 << 30), g.sm_count, g.cc_major, g.cc_minor);
    }
    device_text(text, sizeof text, &ok, &d);
    printf("device:    %s\n", text);
    printf("registry:  %s\n", home);
    return 0;
}
