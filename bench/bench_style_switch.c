/*
 * bench_style_switch.c: times switching a loaded model between sets of styles, for
 * bench/style_switch.sh. Loads MODEL (mood_model_open), then applies LoRAs A B C at 0.8, 0.5,
 * 0.3 (merge mode: from pristine weights), then switches to D E F, then back to A B C, then to
 * A B C as runtime side paths, and prints the milliseconds of each switch.
 *
 * usage: bench_style_switch MODEL A B C D E F
 */
#include <stdio.h>
#include <time.h>

#include "mood/gen.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Applies three LoRAs and prints how long it took under `label`. */
static int timed_set(mood_model *m, char **paths, mood_lora_mode mode, const char *label)
{
    static const double w[3] = {0.8, 0.5, 0.3};
    mood_weighted_adapter set[3];
    size_t unmatched = 0;
    double t0;
    for (int i = 0; i < 3; i++)
        set[i] = (mood_weighted_adapter){.path = paths[i], .unet = w[i], .te = w[i]};
    t0 = now_ms();
    if (mood_model_set_adapters(m, set, 3, mode, &unmatched) != 0) {
        fprintf(stderr, "bench_style_switch: %s\n", mood_error_last());
        return 2;
    }
    printf("%s %.1f\n", label, now_ms() - t0);
    if (unmatched)
        fprintf(stderr, "bench_style_switch: %zu keys matched nothing\n", unmatched);
    return 0;
}

int main(int argc, char **argv)
{
    mood_model *m = NULL;
    double t0;
    int rc;
    mood_blas_tune_process(argv);
    if (argc != 8) {
        fprintf(stderr, "usage: bench_style_switch MODEL A B C D E F\n");
        return 2;
    }
    t0 = now_ms();
    if (mood_model_open(&m, argv[1], NULL) != 0) {
        fprintf(stderr, "bench_style_switch: %s\n", mood_error_last());
        return 2;
    }
    printf("load_ms %.1f\n", now_ms() - t0);
    rc = timed_set(m, argv + 2, MOOD_LORA_MERGE, "first_set_ms");
    if (!rc)
        rc = timed_set(m, argv + 5, MOOD_LORA_MERGE, "switch_ms");
    if (!rc)
        rc = timed_set(m, argv + 2, MOOD_LORA_MERGE, "switch_back_ms");
    if (!rc)
        rc = timed_set(m, argv + 2, MOOD_LORA_RUNTIME, "runtime_set_ms");
    mood_model_free(m);
    return rc;
}
