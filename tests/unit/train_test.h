/*
 * train_test.h: what the training tests share: a fixture case's settings (the JSON the torch
 * scripts under tools/ wrote beside their references) copied into mood_train_options.
 */
#ifndef MOOD_TESTS_TRAIN_TEST_H
#define MOOD_TESTS_TRAIN_TEST_H

#include "harness.h"
#include "mood/train.h"

/* The case's board resolution and trigger, steps, batch, accumulation, learning rate and its
 * schedule, warmup, weight decay, gradient clipping, min-SNR gamma, noise offset, flips and seed
 * (absent ones 0, as the scripts' defaults). */
static inline void train_case_options(mood_train_options *o, const cJSON *c)
{
    o->board_opts.resolution = (int)json_num(c, "resolution");
    o->board_opts.trigger = json_str(c, "trigger");
    o->steps = (int64_t)json_num(c, "steps");
    o->batch = (int)json_num(c, "batch");
    o->accum = (int)json_num(c, "accum");
    o->lr = json_num(c, "lr");
    MOOD_CHECK_OK(mood_lr_schedule_parse(&o->lr_schedule, json_str(c, "schedule")));
    o->warmup = (int64_t)json_num(c, "warmup");
    o->weight_decay = json_num(c, "wd");
    o->max_grad_norm = json_num(c, "max_norm");
    o->min_snr_gamma = json_num(c, "gamma");
    o->noise_offset = json_num(c, "offset");
    o->flip = (int)json_num(c, "flip");
    o->seed = (uint64_t)json_num(c, "seed");
}

#endif /* MOOD_TESTS_TRAIN_TEST_H */
