/*
 * weights.h: loading one named weight of a model file as float32 after checking it is what the
 * model expects, with the error messages every loader (clip.c, unet_load.c, vae.c) gives. Not
 * installed.
 */
#ifndef MOOD_ENGINE_WEIGHTS_H
#define MOOD_ENGINE_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "mood/safetensors.h"

/* "[a, b, ...]" into buf. */
void mood__shape_str(char *buf, size_t size, const int64_t *shape, int ndim);

/* Converts tensor t to float32 at dst after checking that it exists (t not NULL), holds floats
 * and has the shape want (ndim dims); with linear_as_1x1 a Linear weight (want[0], want[1]) may
 * also be stored as a 1x1 convolution (LDM's VAE attention). `where` (the file) and `label` (the
 * tensor as messages show it, quotes included) name it in the MOOD_EFORMAT errors. */
int mood__weight_to_f32(float *dst, const mood_st_tensor *t, const char *where, const char *label,
                        const int64_t *want, int ndim, int linear_as_1x1);

#endif /* MOOD_ENGINE_WEIGHTS_H */
