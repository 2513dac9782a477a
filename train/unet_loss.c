/*
 * unet_loss.c: the model's part of a training step for a mood_model (mood_train_loss_fn, see
 * mood/train.h): the UNet forward with the LoRA side paths, the mean squared error against the
 * target weighted per sample, and the backward pass into the LoRA gradients (plus, with a
 * trained text encoder, its forward and backward from the token ids).
 *
 * Not built yet: it needs the UNet backward for side-path parameters, which is being written
 * (engine/cpu/ops_backward.c holds the layer backward functions it will be made of). Until then
 * it refuses, so a run gets as far as the first step (board, latent cache, LoRA init) and stops
 * with a clear message; programs and tests supply their own mood_train_options.loss.
 */
#include "train/train_internal.h"

int mood__train_model_loss(void *user, const mood_train_batch *batch, mood_train_module *modules,
                           size_t n_modules, double *loss_out)
{
    (void)user;
    (void)batch;
    (void)modules;
    (void)n_modules;
    *loss_out = 0;
    return mood_error_set(MOOD_EUNSUPPORTED,
                          "training needs the UNet backward pass, which is not built yet");
}
