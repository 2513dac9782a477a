/*
 * test_device.c: the device selection rule (include/mood/device.h, engine/device.c) for every
 * combination that matters, with the facts given (backend built or not, GPUs present or not), so
 * the rules for machines with a GPU are checked on machines without one; then
 * mood_device_select on this build and machine, and the GPU queries.
 */
#include "harness.h"

#include "mood/device.h"

static void test_default_rule(void)
{
    mood_device d;
    /* nothing asked: a GPU when built and present */
    MOOD_CHECK_OK(mood_device_resolve(&d, NULL, NULL, 1, 2));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CUDA && d.index == 0 && !d.requested && !d.notice[0]);
    /* built, no GPU: the CPU with a notice */
    MOOD_CHECK_OK(mood_device_resolve(&d, NULL, "", 1, 0));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CPU && !d.requested);
    MOOD_CHECK(strstr(d.notice, "no CUDA GPU") != NULL);
    MOOD_CHECK(strchr(d.notice, '\n') == NULL);
    /* not built: the CPU with a notice */
    MOOD_CHECK_OK(mood_device_resolve(&d, "", NULL, 0, 0));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CPU && strstr(d.notice, "no CUDA backend") != NULL);
    /* auto is the default rule */
    MOOD_CHECK_OK(mood_device_resolve(&d, "auto", NULL, 1, 1));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CUDA && !d.requested);
}

static void test_requests(void)
{
    mood_device d;
    MOOD_CHECK_OK(mood_device_resolve(&d, "cpu", NULL, 1, 4));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CPU && d.requested && !d.notice[0]);
    MOOD_CHECK_OK(mood_device_resolve(&d, "CUDA", NULL, 1, 1));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CUDA && d.index == 0 && d.requested);
    MOOD_CHECK_OK(mood_device_resolve(&d, "cuda:1", NULL, 1, 2));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CUDA && d.index == 1);
    /* the option wins over the environment */
    MOOD_CHECK_OK(mood_device_resolve(&d, "cpu", "cuda", 1, 1));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CPU);
    MOOD_CHECK_OK(mood_device_resolve(&d, NULL, "cpu", 1, 1));
    MOOD_CHECK(d.kind == MOOD_DEVICE_CPU && d.requested);
}

static void test_errors(void)
{
    mood_device d;
    /* cuda asked for, none present: an environment error naming the way out */
    MOOD_CHECK(mood_device_resolve(&d, "cuda", NULL, 1, 0) == MOOD_EBACKEND);
    MOOD_CHECK(strstr(mood_error_last(), "--device cuda") != NULL);
    MOOD_CHECK(strstr(mood_error_last(), "no CUDA GPU") != NULL);
    MOOD_CHECK(mood_device_resolve(&d, NULL, "cuda", 1, 0) == MOOD_EBACKEND);
    MOOD_CHECK(strstr(mood_error_last(), "MOOD_DEVICE") != NULL);
    MOOD_CHECK(mood_device_resolve(&d, "cuda:2", NULL, 1, 2) == MOOD_EBACKEND);
    /* a build without the backend */
    MOOD_CHECK(mood_device_resolve(&d, "cuda", NULL, 0, 0) == MOOD_EBACKEND);
    MOOD_CHECK(strstr(mood_error_last(), "no CUDA backend") != NULL);
    /* values that are no device */
    MOOD_CHECK(mood_device_resolve(&d, "tpu", NULL, 1, 1) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "'tpu'") != NULL);
    MOOD_CHECK(mood_device_resolve(&d, NULL, "gpu", 1, 1) == MOOD_EINVAL);
    MOOD_CHECK(strstr(mood_error_last(), "MOOD_DEVICE") != NULL);
    MOOD_CHECK(mood_device_resolve(&d, "cuda:", NULL, 1, 1) == MOOD_EINVAL);
    MOOD_CHECK(mood_device_resolve(&d, "cuda:x", NULL, 1, 1) == MOOD_EINVAL);
    MOOD_CHECK(mood_device_resolve(&d, "cudax", NULL, 1, 1) == MOOD_EINVAL);
}

/* This build on this machine: asking for cuda where there is none is an error, the default the
 * CPU with a notice; with a GPU, the default is the GPU. */
static void test_this_machine(void)
{
    mood_device d;
    int gpus = mood_cuda_device_count(NULL, 0);
    unsetenv("MOOD_DEVICE");
    MOOD_CHECK_OK(mood_device_select(&d, NULL));
    if (gpus > 0) {
        MOOD_CHECK(d.kind == MOOD_DEVICE_CUDA);
        MOOD_CHECK_OK(mood_device_select(&d, "cuda"));
    } else {
        MOOD_CHECK(d.kind == MOOD_DEVICE_CPU && d.notice[0]);
        MOOD_CHECK(mood_device_select(&d, "cuda") < 0);
        setenv("MOOD_DEVICE", "cuda", 1);
        MOOD_CHECK(mood_device_select(&d, NULL) < 0);
        MOOD_CHECK_OK(mood_device_select(&d, "cpu"));
        unsetenv("MOOD_DEVICE");
    }
    MOOD_CHECK(strcmp(mood_device_kind_name(MOOD_DEVICE_CUDA), "cuda") == 0);
    MOOD_CHECK(strcmp(mood_device_kind_name(MOOD_DEVICE_CPU), "cpu") == 0);
}

static void test_gpu_info(void)
{
    mood_cuda_backend_info bi;
    mood_gpu_info gi;
    int gpus = mood_cuda_device_count(NULL, 0);
    mood_cuda_backend_info_get(&bi);
    MOOD_CHECK(bi.compiled == mood_cuda_compiled());
    if (bi.compiled)
        MOOD_CHECK(bi.runtime_version > 0 && bi.archs[0]);
    for (int i = 0; i < gpus; i++) {
        MOOD_CHECK_OK(mood_gpu_info_get(&gi, i));
        MOOD_CHECK(gi.name[0] && gi.total_memory > 0 && gi.sm_count > 0 && gi.cc_major >= 1);
    }
    MOOD_CHECK(mood_gpu_info_get(&gi, gpus) == MOOD_ENOTFOUND);
}

MOOD_TEST_MAIN(MOOD_T(test_default_rule), MOOD_T(test_requests), MOOD_T(test_errors),
               MOOD_T(test_this_machine), MOOD_T(test_gpu_info))
